/* policy/eval.c - evaluates a compiled policy against one request's input.
 * Pure: no I/O, no locale, no allocation (but a regex's per-thread match state
 * once); bounded by the node count and nesting depth capped at load and by the
 * regex limits. Four-valued (true, false, unknown, error) so an `opa` condition
 * whose answer is not known yet suspends the decision (POLICY_NEED_OPA) only when
 * the answer can change it, and a condition that could not be evaluated (a regex
 * limit) fails closed whatever wraps it. Default deny; a matching deny rule
 * always wins, and so does a deny rule that could not be evaluated. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "policy_int.h"

/* T_ERROR is absorbing like T_UNKNOWN, but stronger: `not` keeps it, `all` is
 * false only when a conjunct is false, `any` true only when a disjunct is true. */
enum tri { T_FALSE = 0, T_TRUE = 1, T_UNKNOWN = 2, T_ERROR = 3 };

static inline unsigned char lc(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (unsigned char)(ch + 32) : ch;
}

/* pat is lower-cased already when icase. */
static bool bytes_eq(const char *a, const char *pat, size_t n, bool icase)
{
    if (!icase) {
        /* Policy literals are short: a byte loop beats a call into memcmp here. */
        if (n > 32) {
            return memcmp(a, pat, n) == 0;
        }
        for (size_t i = 0; i < n; i++) {
            if (a[i] != pat[i]) {
                return false;
            }
        }
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        if (lc((unsigned char)a[i]) != (unsigned char)pat[i]) {
            return false;
        }
    }
    return true;
}

bool eval_glob_match(struct str pat, struct str s, bool icase)
{
    size_t p = 0, i = 0, star_p = SIZE_MAX, star_i = 0;
    while (i < s.len) {
        if (p < pat.len && pat.p[p] == '*') {
            star_p = ++p;
            star_i = i;
            continue;
        }
        if (p < pat.len) {
            char pc = pat.p[p];
            size_t adv = 1;
            if (pc == '\\' && p + 1 < pat.len) {
                pc = pat.p[p + 1];
                adv = 2;
            } else if (pc == '?') {
                p++;
                i++;
                continue;
            }
            unsigned char sc = (unsigned char)s.p[i];
            if ((icase ? lc(sc) : sc) == (unsigned char)pc) {
                p += adv;
                i++;
                continue;
            }
        }
        if (star_p == SIZE_MAX) {
            return false;
        }
        p = star_p;
        i = ++star_i;
    }
    while (p < pat.len && pat.p[p] == '*') {
        p++;
    }
    return p == pat.len;
}

int eval_matcher_match(const struct matcher *m, struct str s)
{
    if (!m) {
        return 0;
    }
    const struct str v = m->vals[0];
    switch (m->kind) {
    case M_IS:
    case M_MEMBER:
        return s.len == v.len && bytes_eq(s.p, v.p, v.len, m->icase);
    case M_PREFIX:
        return s.len >= v.len && bytes_eq(s.p, v.p, v.len, m->icase);
    case M_SUFFIX:
        return s.len >= v.len && bytes_eq(s.p + s.len - v.len, v.p, v.len, m->icase);
    case M_CONTAINS:
        for (size_t i = 0; i + v.len <= s.len; i++) {
            if (bytes_eq(s.p + i, v.p, v.len, m->icase)) {
                return true;
            }
        }
        return false;
    case M_IN:
        for (size_t k = 0; k < m->nvals; k++) {
            if (s.len == m->vals[k].len && bytes_eq(s.p, m->vals[k].p, s.len, m->icase)) {
                return true;
            }
        }
        return false;
    case M_GLOB:
        return eval_glob_match(v, s, m->icase);
    case M_REGEX: {
        int rc = regex_match(m->re, s);
        if (rc < 0) {
            policy_metrics_regex_error();
        }
        return rc;
    }
    }
    return false;
}

bool policy_ip_parse(struct str s, struct policy_ip *out)
{
    char buf[INET6_ADDRSTRLEN + 1];
    memset(out, 0, sizeof *out);
    if (s.len == 0 || s.len >= sizeof buf) {
        return false;
    }
    memcpy(buf, s.p, s.len);
    buf[s.len] = '\0';
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = 4;
        return true;
    }
    unsigned char a6[16];
    if (inet_pton(AF_INET6, buf, a6) != 1) {
        return false;
    }
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(a6, mapped, 12) == 0) {
        out->family = 4;
        memcpy(out->addr, a6 + 12, 4);
    } else {
        out->family = 6;
        memcpy(out->addr, a6, 16);
    }
    return true;
}

void policy_ip_format_cidr(const struct cidr *c, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN];
    inet_ntop(c->family == 4 ? AF_INET : AF_INET6, c->addr, ip, sizeof ip);
    snprintf(buf, size, "%s/%u", ip, c->bits);
}

static bool cidr_match(const struct cidr *c, const struct policy_ip *ip)
{
    if (c->family != ip->family) {
        return false;
    }
    unsigned full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->addr, ip->addr, full) != 0) {
        return false;
    }
    if (rest) {
        unsigned char mask = (unsigned char)(0xff00 >> rest);
        return (ip->addr[full] & mask) == c->addr[full];
    }
    return true;
}

static struct str host_only(struct str h)
{
    /* Hosts are given without a port (the proxy normalises them); be lenient
     * with "host:port" (not "[v6]") and a trailing dot, which names the same
     * host: a rule on "secret.example.com" must hold for "secret.example.com.". */
    for (size_t i = h.len; i > 0; i--) {
        char ch = h.p[i - 1];
        if (ch == ':') {
            if (h.len && h.p[0] != '[' && i < h.len) {
                h.len = i - 1;
            }
            break;
        }
        if (ch < '0' || ch > '9') {
            break;
        }
    }
    if (h.len > 1 && h.p[h.len - 1] == '.') {
        h.len--;
    }
    return h;
}

static struct str field_value(const struct policy_input *in, enum field f)
{
    switch (f) {
    case F_USER:
        return in->user;
    case F_EMAIL:
        return in->email;
    case F_DOMAIN: {
        /* One '@' exactly: "x@evil.test@example.com" has no domain. */
        const char *at = in->email.len ? memchr(in->email.p, '@', in->email.len) : NULL;
        if (at == NULL || memchr(at + 1, '@', in->email.len - (size_t)(at + 1 - in->email.p))) {
            return STR_NULL;
        }
        return (struct str){ at + 1, in->email.len - (size_t)(at + 1 - in->email.p) };
    }
    case F_METHOD:
        return in->method;
    case F_PATH:
        return in->path;
    case F_HOST:
        return host_only(in->host);
    case F_IDP:
        return in->idp;
    case F_DEV_ID:
        return in->device.id;
    case F_DEV_OWNER:
        return in->device.owner;
    case F_DEV_SUBJECT:
        return in->device.subject;
    case F_DEV_ISSUER:
        return in->device.issuer;
    case F_DEV_SERIAL:
        return in->device.serial;
    case F_DEV_FINGERPRINT:
        return in->device.fingerprint;
    case F_DEV_SAN:
        return in->device.san;
    case F_GROUPS:
    case F_CLAIM:
    case F_HEADER:
        break;
    }
    return STR_NULL;
}

/* Any of several values (groups, repeated claims, headers): one match decides;
 * an error counts only when nothing matched. */
static enum tri any_of(int rc, bool *err)
{
    if (rc > 0) {
        return T_TRUE;
    }
    if (rc < 0) {
        *err = true;
    }
    return T_FALSE;
}

static enum tri eval_str(const struct pnode *n, const struct policy_input *in)
{
    bool err = false;
    switch ((enum field)n->field) {
    case F_GROUPS:
        for (size_t i = 0; i < in->ngroups; i++) {
            if (any_of(eval_matcher_match(n->m, in->groups[i]), &err) == T_TRUE) {
                return T_TRUE;
            }
        }
        return err ? T_ERROR : T_FALSE;
    case F_CLAIM:
        for (size_t i = 0; i < in->nclaims; i++) {
            if (str_eq(in->claims[i].name, n->name) && in->claims[i].value.len &&
                any_of(eval_matcher_match(n->m, in->claims[i].value), &err) == T_TRUE) {
                return T_TRUE;
            }
        }
        return err ? T_ERROR : T_FALSE;
    case F_HEADER:
        for (size_t i = 0; i < in->nheaders; i++) {
            const struct str hn = in->headers[i].name;
            if (hn.len == n->name.len && bytes_eq(hn.p, n->name.p, hn.len, true) &&
                any_of(eval_matcher_match(n->m, in->headers[i].value), &err) == T_TRUE) {
                return T_TRUE;
            }
        }
        return err ? T_ERROR : T_FALSE;
    default:
        break;
    }
    if (n->field >= F_DEV_ID && n->field <= F_DEV_SAN && !in->device.present) {
        return T_FALSE;
    }
    struct str v = field_value(in, (enum field)n->field);
    /* An absent value matches nothing (not even an empty prefix). */
    if (v.len == 0) {
        return T_FALSE;
    }
    int rc = eval_matcher_match(n->m, v);
    return rc < 0 ? T_ERROR : rc ? T_TRUE : T_FALSE;
}

static bool owner_is_user(const struct policy_input *in)
{
    const struct str o = in->device.owner;
    if (!in->device.present || o.len == 0) {
        return false;
    }
    if (in->email.len) {
        return str_ieq(o, in->email);
    }
    return in->user.len && str_eq(o, in->user);
}

static bool eval_time(const struct ptime *t, int64_t now)
{
    int64_t local = now + tz_offset(t->tz, now);
    int64_t days = local >= 0 ? local / 86400 : (local - 86399) / 86400;
    int wday = (int)(((days % 7) + 11) % 7); /* 1970-01-01 was a Thursday */
    int min = (int)((local - days * 86400) / 60);
    if (!(t->weekdays & (1u << wday))) {
        return false;
    }
    if (t->start_min < 0) {
        return true;
    }
    if (t->start_min < t->end_min) {
        return min >= t->start_min && min < t->end_min;
    }
    return min >= t->start_min || min < t->end_min; /* wraps past midnight */
}

static enum tri eval_node(const struct policy *p, uint32_t i, const struct policy_input *in,
                          const struct policy_result *r, int *need)
{
    const struct pnode *n = &p->nodes[i];
    switch ((enum op)n->op) {
    case OP_ALL: {
        enum tri acc = T_TRUE;
        for (uint32_t c = i + 1; c < n->end; c = p->nodes[c].end) {
            enum tri v = eval_node(p, c, in, r, need);
            if (v == T_FALSE) {
                return T_FALSE;
            }
            if (v == T_ERROR || (v == T_UNKNOWN && acc != T_ERROR)) {
                acc = v;
            }
        }
        return acc;
    }
    case OP_ANY: {
        enum tri acc = T_FALSE;
        for (uint32_t c = i + 1; c < n->end; c = p->nodes[c].end) {
            enum tri v = eval_node(p, c, in, r, need);
            if (v == T_TRUE) {
                return T_TRUE;
            }
            if (v == T_ERROR || (v == T_UNKNOWN && acc != T_ERROR)) {
                acc = v;
            }
        }
        return acc;
    }
    case OP_NOT: {
        /* An error stays an error: `not: {regex}` must not allow what the regex
         * could not decide. */
        enum tri v = i + 1 < n->end ? eval_node(p, i + 1, in, r, need) : T_FALSE;
        return v == T_UNKNOWN || v == T_ERROR ? v : (v == T_TRUE ? T_FALSE : T_TRUE);
    }
    case OP_AUTH:
        return in->authenticated == n->want ? T_TRUE : T_FALSE;
    case OP_STR:
        return eval_str(n, in);
    case OP_DEV_PRESENT:
        return in->device.present == n->want ? T_TRUE : T_FALSE;
    case OP_DEV_TRUSTED:
        return (in->device.present && in->device.trusted) == n->want ? T_TRUE : T_FALSE;
    case OP_DEV_OWNER_IS_USER:
        return owner_is_user(in) == n->want ? T_TRUE : T_FALSE;
    case OP_IP:
        for (size_t k = 0; k < n->ncidrs; k++) {
            if (cidr_match(&n->cidrs[k], &in->client_ip)) {
                return T_TRUE;
            }
        }
        return T_FALSE;
    case OP_TIME:
        return eval_time(n->tm, in->time_s) ? T_TRUE : T_FALSE;
    case OP_OPA:
        switch (r->opa[n->opa].state) {
        case 1:
            return T_FALSE;
        case 2:
            return T_TRUE;
        default:
            if (*need < 0) {
                *need = (int)n->opa;
            }
            return T_UNKNOWN;
        }
    }
    return T_FALSE;
}

struct prefix {
    uint32_t host_hash;
    uint64_t group_mask;
};

static enum tri eval_rule(const struct policy *p, size_t k, const struct policy_input *in,
                          const struct policy_result *r, int *need, const struct prefix *pf)
{
    const struct prule *pr = &p->rules[k];
    if (pr->root == PNODE_NONE) {
        return T_TRUE;
    }
    /* Hash mismatches prove a required conjunct false; a match still evaluates fully. */
    if ((pr->has_host && pr->host_hash != pf->host_hash) ||
        (pr->group_mask & pf->group_mask) != pr->group_mask) {
        return T_FALSE;
    }
    const struct str pp = pr->path_prefix;
    if (pp.len && (in->path.len < pp.len || in->path.p[pp.len - 1] != pp.p[pp.len - 1] ||
                   memcmp(in->path.p, pp.p, pp.len) != 0)) {
        return T_FALSE;
    }
    return eval_node(p, pr->root, in, r, need);
}

static void set_trace(struct policy_result *r, size_t k, enum tri v)
{
    if (r->trace) {
        r->trace[k] = (uint8_t)(v == T_TRUE    ? POLICY_RULE_MATCH
                                : v == T_FALSE ? POLICY_RULE_NO_MATCH
                                : v == T_ERROR ? POLICY_RULE_ERROR
                                               : POLICY_RULE_UNKNOWN);
    }
}

void policy_result_init(struct policy_result *r, uint8_t *trace)
{
    /* Field by field: the OPA reason buffers are read only once their state is set. */
    r->decision = POLICY_DENY;
    r->effective = POLICY_DENY;
    r->shadow = false;
    r->need_login = false;
    r->opa_path = NULL;
    r->opa_index = 0;
    r->opa_called = false;
    for (size_t i = 0; i < POLICY_MAX_OPA; i++) {
        r->opa[i].state = 0;
        r->opa[i].reason[0] = '\0';
    }
    r->trace = trace;
    r->rule = "default-deny";
    r->reason = "No rule allows this request.";
}

void policy_opa_answer(struct policy_result *r, bool allow, const char *reason)
{
    if (r->opa_index >= POLICY_MAX_OPA) {
        return;
    }
    struct policy_opa_answer *a = &r->opa[r->opa_index];
    a->state = allow ? 2 : 1;
    snprintf(a->reason, sizeof a->reason, "%s", reason ? reason : "");
}

/* An OPA reason explains a decision only when the rule asked OPA. */
static const char *opa_reason(const struct policy *p, size_t k, const struct policy_result *r)
{
    const struct prule *pr = &p->rules[k];
    if (pr->root == PNODE_NONE) {
        return NULL;
    }
    for (uint32_t i = pr->root; i < p->nodes[pr->root].end; i++) {
        if (p->nodes[i].op == OP_OPA && r->opa[p->nodes[i].opa].reason[0]) {
            return r->opa[p->nodes[i].opa].reason;
        }
    }
    return NULL;
}

#define EVAL_ERROR_REASON "A condition of this rule could not be evaluated (regex limit); denied."

static enum policy_step decide_first(const struct policy *p, const struct policy_input *in,
                                     struct policy_result *r, enum policy_decision d, long k)
{
    r->decision = d;
    if (k >= 0) {
        r->rule = p->rules[k].id;
        const char *oreason = opa_reason(p, (size_t)k, r);
        r->reason = p->rules[k].reason  ? p->rules[k].reason
                    : oreason           ? oreason
                    : d == POLICY_ALLOW ? "Allowed."
                                        : "Denied by policy.";
    } else {
        r->rule = "default-deny";
        r->reason = "No rule allows this request.";
    }
    r->shadow = p->mode == POLICY_SHADOW;
    /* Shadow mode logs the rules' verdict but enforces only "signed in". */
    r->effective = r->shadow ? (in->authenticated ? POLICY_ALLOW : POLICY_DENY) : d;
    r->need_login = r->effective == POLICY_DENY && !in->authenticated;
    r->opa_path = NULL;
    return POLICY_DONE;
}

enum policy_step policy_eval(const struct policy *p, const struct policy_input *in,
                             struct policy_result *r)
{
    bool full = r->trace != NULL;
    int need_deny = -1, need_allow = -1;
    long deny_k = -1, allow_k = -1, allow_err_k = -1;
    bool deny_unknown = false, allow_unknown = false, deny_err = false;

    struct prefix pf = { 0, 0 };
    struct str host = host_only(in->host);
    pf.host_hash = policy_hash(host.p ? host.p : "", host.len, true);
    for (size_t i = 0; i < in->ngroups; i++) {
        pf.group_mask |= 1ULL << (policy_hash(in->groups[i].p, in->groups[i].len, false) & 63);
    }
    /* The trace walks every rule; a decision only those that can match this host. */
    const struct host_rules *hr = &p->all;
    if (full) {
        memset(r->trace, POLICY_RULE_NOT_EVALUATED, p->nrules);
    } else {
        hr = &p->any_host;
        size_t lo = 0, hi = p->nhosts;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (p->by_host[mid].hash < pf.host_hash) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if (lo < p->nhosts && p->by_host[lo].hash == pf.host_hash) {
            hr = &p->by_host[lo];
        }
    }
    for (size_t i = 0; i < hr->ndeny && (deny_k < 0 || full); i++) {
        size_t k = hr->deny[i];
        enum tri v = eval_rule(p, k, in, r, &need_deny, &pf);
        set_trace(r, k, v);
        if ((v == T_TRUE || v == T_ERROR) && deny_k < 0) {
            /* Fail closed: a deny rule that could not be evaluated denies. */
            deny_k = (long)k;
            deny_err = v == T_ERROR;
        } else if (v == T_UNKNOWN) {
            deny_unknown = true;
        }
    }
    for (size_t i = 0; i < hr->nallow && ((allow_k < 0 && deny_k < 0) || full); i++) {
        size_t k = hr->allow[i];
        enum tri v = eval_rule(p, k, in, r, &need_allow, &pf);
        set_trace(r, k, v);
        if (v == T_TRUE && allow_k < 0) {
            allow_k = (long)k;
        } else if (v == T_UNKNOWN) {
            allow_unknown = true;
        } else if (v == T_ERROR && allow_err_k < 0) {
            allow_err_k = (long)k; /* it does not allow; named if nothing else does */
        }
    }
    if (deny_k >= 0) {
        decide_first(p, in, r, POLICY_DENY, deny_k);
        if (deny_err) {
            r->reason = EVAL_ERROR_REASON;
        }
        return POLICY_DONE;
    }
    if (allow_k < 0 && !allow_unknown) {
        decide_first(p, in, r, POLICY_DENY, -1); /* an unknown deny cannot change this */
        if (allow_err_k >= 0) {
            r->rule = p->rules[allow_err_k].id;
            r->reason = EVAL_ERROR_REASON;
        }
        return POLICY_DONE;
    }
    int need = deny_unknown ? need_deny : (allow_k < 0 ? need_allow : -1);
    if (need >= 0) {
        r->opa_index = (unsigned)need;
        r->opa_path = p->opa_paths[need];
        r->opa_called = true;
        return POLICY_NEED_OPA;
    }
    return decide_first(p, in, r, POLICY_ALLOW, allow_k);
}

bool policy_cidr_match(const struct cidr *c, const struct policy_ip *ip)
{
    return cidr_match(c, ip);
}
