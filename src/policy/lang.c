/* policy/lang.c - the policy language: reads a policy file through core/conf.c,
 * validates it (every error as file:line:col) and compiles each rule's `when`
 * into a flat pre-order node array with lower-cased strings, pre-split CIDRs,
 * compiled regexes and loaded time zones, so eval.c never allocates. Runs at
 * load and reload only, never on the request path. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

struct compiler {
    struct policy *p;
    struct conf_diag *d;
    const char *rule_id;
    size_t cap;
    bool failed;
};

static const char *const top_keys[] = { "mode", "rules", "description", NULL };
static const char *const rule_keys[] = { "id", "effect", "when", "reason", "description", NULL };
static const char *const criteria[] = { "all",   "any",    "not",       "authenticated",
                                        "user",  "email",  "domain",    "groups",
                                        "claim", "device", "source_ip", "method",
                                        "path",  "host",   "header",    "time",
                                        "opa",   "idp",    NULL };
static const char *const matcher_keys[] = { "is", "prefix", "suffix", "contains",
                                            "in", "glob",   "regex",  NULL };
static const char *const device_keys[] = { "present", "trusted", "owner_is_user",
                                           "id",      "owner",   "subject",
                                           "issuer",  "serial",  "fingerprint",
                                           "san",     NULL };
static const char *const time_keys[] = { "weekdays", "hours", "tz", NULL };
static const char *const http_methods[] = { "GET",       "HEAD",    "POST",  "PUT",   "DELETE",
                                            "CONNECT",   "OPTIONS", "TRACE", "PATCH", "PROPFIND",
                                            "PROPPATCH", "MKCOL",   "COPY",  "MOVE",  "LOCK",
                                            "UNLOCK",    "REPORT",  NULL };
static const char *const weekday_names[] = {
    "sun", "mon", "tue", "wed", "thu", "fri", "sat", NULL
};

static void fail(struct compiler *c, const struct conf_node *n, const char *fmt, ...) PRINTF(3, 4);

static void fail(struct compiler *c, const struct conf_node *n, const char *fmt, ...)
{
    char body[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    conf_error(c->d, n, "%s", body);
    c->failed = true;
}

static void never(struct compiler *c, const struct conf_node *n, const char *fmt, ...) PRINTF(3, 4);

/* "rule "x" can never match: <why>" */
static void never(struct compiler *c, const struct conf_node *n, const char *fmt, ...)
{
    char body[500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    fail(c, n, "rule \"%s\" can never match: %s", c->rule_id, body);
}

static uint32_t node_push(struct compiler *c, enum op op)
{
    struct policy *p = c->p;
    if (p->nnodes == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 64;
        p->nodes = xrealloc(p->nodes, c->cap * sizeof *p->nodes);
    }
    struct pnode *n = &p->nodes[p->nnodes];
    memset(n, 0, sizeof *n);
    n->op = (uint8_t)op;
    return (uint32_t)p->nnodes++;
}

static void node_close(struct compiler *c, uint32_t i)
{
    c->p->nodes[i].end = (uint32_t)c->p->nnodes;
}

static struct str arena_str(struct compiler *c, const char *s, size_t len, bool lower)
{
    char *d = arena_strndup(c->p->arena, s, len);
    if (lower) {
        for (size_t i = 0; i < len; i++) {
            d[i] = (char)tolower((unsigned char)d[i]);
        }
    }
    return (struct str){ d, len };
}

static bool is_scalar(const struct conf_node *n)
{
    return n && n->type == CONF_SCALAR;
}

/* ---- matchers ---- */

static bool glob_valid(const char *g, const char **why)
{
    for (const char *s = g; *s; s++) {
        if (*s == '\\') {
            if (!s[1]) {
                *why = "ends with an escape";
                return false;
            }
            s++;
        } else if (*s == '[' || *s == ']' || *s == '{' || *s == '}') {
            *why = "only *, ? and \\ are special; escape brackets and braces";
            return false;
        }
    }
    return true;
}

static int method_index(const char *m)
{
    for (int i = 0; http_methods[i]; i++) {
        if (strcmp(m, http_methods[i]) == 0) {
            return i;
        }
    }
    return -1;
}

static bool check_method(struct compiler *c, const struct conf_node *v)
{
    if (method_index(v->value) >= 0) {
        return true;
    }
    char up[32];
    size_t n = v->len < sizeof up - 1 ? v->len : sizeof up - 1;
    for (size_t i = 0; i < n; i++) {
        up[i] = (char)toupper((unsigned char)v->value[i]);
    }
    up[n] = '\0';
    if (method_index(up) >= 0) {
        never(c, v,
              "\"%s\" is not an HTTP method (methods are case-sensitive: did you mean "
              "\"%s\"?)",
              v->value, up);
    } else {
        never(c, v, "\"%s\" is not an HTTP method", v->value);
    }
    return false;
}

/* Compiles one matcher kind with its value node; NULL on error (reported). */
static struct matcher *matcher_new(struct compiler *c, enum mkind kind, const struct conf_node *v,
                                   enum field f, const char *what)
{
    bool icase = f == F_EMAIL || f == F_DOMAIN || f == F_HOST || f == F_DEV_SERIAL ||
                 f == F_DEV_FINGERPRINT || f == F_DEV_OWNER;
    struct matcher *m = arena_zalloc(c->p->arena, sizeof *m);
    m->kind = kind;
    m->icase = icase;

    if (kind == M_IN) {
        if (!v || v->type != CONF_SEQ) {
            fail(c, v, "\"in\" of %s must be a list of strings, got %s", what, conf_type_name(v));
            return NULL;
        }
        if (v->n == 0) {
            never(c, v, "empty \"in\" list");
            return NULL;
        }
        m->vals = arena_zalloc(c->p->arena, v->n * sizeof *m->vals);
        for (size_t i = 0; i < v->n; i++) {
            const struct conf_node *it = v->items[i];
            if (!is_scalar(it)) {
                fail(c, it, "\"in\" of %s must be a list of strings, got %s in the list", what,
                     conf_type_name(it));
                return NULL;
            }
            if (f == F_METHOD && !check_method(c, it)) {
                return NULL;
            }
            m->vals[i] = arena_str(c, it->value, it->len, icase);
        }
        m->nvals = v->n;
        return m;
    }
    if (!is_scalar(v)) {
        fail(c, v, "\"%s\" of %s must be a string, got %s", matcher_keys[kind], what,
             conf_type_name(v));
        return NULL;
    }
    if (f == F_METHOD && kind == M_IS && !check_method(c, v)) {
        return NULL;
    }
    m->vals = arena_zalloc(c->p->arena, sizeof *m->vals);
    m->vals[0] = arena_str(c, v->value, v->len, icase && kind != M_REGEX);
    m->nvals = 1;
    if (kind == M_REGEX) {
        char msg[160];
        size_t off = 0;
        m->re = regex_compile(v->value, v->len, icase, msg, sizeof msg, &off);
        if (!m->re) {
            /* A pattern refused for its length is not echoed whole. */
            int shown = v->len > 80 ? 77 : (int)v->len;
            fail(c, v, "bad regex \"%.*s%s\": %s at offset %zu", shown, v->value,
                 v->len > 80 ? "..." : "", msg, off);
            return NULL;
        }
        c->p->regexes = xrealloc(c->p->regexes, (c->p->nregexes + 1) * sizeof *c->p->regexes);
        c->p->regexes[c->p->nregexes++] = m;
    } else if (kind == M_GLOB) {
        const char *why = NULL;
        if (!glob_valid(v->value, &why)) {
            fail(c, v, "bad glob \"%s\": %s", v->value, why);
            return NULL;
        }
    }
    return m;
}

/* A matcher spec: a bare string (= is) or a map of matcher keys (all must hold).
 * Emits one OP_STR node, or an OP_ALL of them. */
static void compile_matcher(struct compiler *c, const struct conf_node *spec, enum field f,
                            struct str name, const char *what, const char *const extra_keys[])
{
    if (is_scalar(spec)) {
        struct matcher *m = matcher_new(c, M_IS, spec, f, what);
        if (m && f == F_GROUPS) {
            m->kind = M_MEMBER;
        }
        uint32_t i = node_push(c, OP_STR);
        c->p->nodes[i].field = (uint8_t)f;
        c->p->nodes[i].m = m;
        c->p->nodes[i].name = name;
        node_close(c, i);
        return;
    }
    if (!spec || spec->type != CONF_MAP) {
        fail(c, spec,
             "\"%s\" must be a string or a map of matchers (is, prefix, suffix, "
             "contains, in, glob, regex), got %s",
             what, conf_type_name(spec));
        return;
    }
    size_t nmatch = 0;
    for (size_t k = 0; k < spec->n; k++) {
        const char *key = spec->keys[k]->value;
        bool extra = false;
        for (size_t e = 0; extra_keys && extra_keys[e]; e++) {
            extra = extra || strcmp(key, extra_keys[e]) == 0;
        }
        if (extra) {
            continue;
        }
        bool known = false;
        for (size_t j = 0; matcher_keys[j]; j++) {
            known = known || strcmp(key, matcher_keys[j]) == 0;
        }
        if (!known) {
            const char *s = conf_suggest(key, matcher_keys);
            if (s) {
                fail(c, spec->keys[k], "unknown matcher \"%s\" in %s (did you mean \"%s\"?)", key,
                     what, s);
            } else {
                fail(c, spec->keys[k],
                     "unknown matcher \"%s\" in %s (expected is, prefix, "
                     "suffix, contains, in, glob or regex)",
                     key, what);
            }
            return;
        }
        nmatch++;
    }
    if (nmatch == 0) {
        fail(c, spec, "%s needs a matcher (is, prefix, suffix, contains, in, glob or regex)", what);
        return;
    }
    uint32_t all = nmatch > 1 ? node_push(c, OP_ALL) : PNODE_NONE;
    for (size_t j = 0; matcher_keys[j]; j++) {
        const struct conf_node *v = conf_get(spec, matcher_keys[j]);
        if (!v) {
            continue;
        }
        enum mkind kind = (enum mkind)j;
        /* On a list of groups, "contains" means membership, not a substring. */
        if (f == F_GROUPS && kind == M_CONTAINS) {
            kind = M_MEMBER;
        }
        struct matcher *m = matcher_new(c, kind == M_MEMBER ? M_IS : kind, v, f, what);
        if (m) {
            m->kind = kind;
        }
        uint32_t i = node_push(c, OP_STR);
        c->p->nodes[i].field = (uint8_t)f;
        c->p->nodes[i].m = m;
        c->p->nodes[i].name = name;
        node_close(c, i);
    }
    if (all != PNODE_NONE) {
        node_close(c, all);
    }
}

/* ---- criteria ---- */

static bool get_bool(struct compiler *c, const struct conf_node *v, const char *what, bool *out)
{
    if (!is_scalar(v) || v->quoted || !conf_parse_bool(v->value, out)) {
        fail(c, v, "\"%s\" must be true or false, got %s%s%s", what,
             is_scalar(v) ? "\"" : conf_type_name(v), is_scalar(v) ? v->value : "",
             is_scalar(v) ? "\"" : "");
        return false;
    }
    return true;
}

static void compile_bool(struct compiler *c, const struct conf_node *v, enum op op,
                         const char *what)
{
    bool b;
    if (!get_bool(c, v, what, &b)) {
        return;
    }
    uint32_t i = node_push(c, op);
    c->p->nodes[i].want = b;
    node_close(c, i);
}

static bool parse_cidr(const char *s, struct cidr *out, bool *host_bits)
{
    char buf[64];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof buf) {
        return false;
    }
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    struct policy_ip ip;
    if (!policy_ip_parse((struct str){ buf, alen }, &ip)) {
        return false;
    }
    /* "::ffff:10.0.0.0/104" would be ambiguous after the v4 mapping: keep v6 spelled as v6. */
    bool v6_text = strchr(buf, ':') != NULL;
    unsigned maxbits = v6_text ? 128 : 32;
    uint64_t bits = maxbits;
    if (slash) {
        struct str b = str_from(slash + 1);
        if (!str_to_u64(b, 0, maxbits, &bits)) {
            return false;
        }
    }
    if (v6_text && ip.family == 4) {
        if (bits < 96) {
            return false;
        }
        bits -= 96;
    }
    out->family = ip.family;
    out->bits = (unsigned)bits;
    memcpy(out->addr, ip.addr, 16);
    *host_bits = false;
    size_t nbytes = ip.family == 4 ? 4 : 16;
    for (size_t i = 0; i < nbytes; i++) {
        unsigned keep = bits >= (i + 1) * 8 ? 8 : (bits > i * 8 ? (unsigned)(bits - i * 8) : 0);
        unsigned char mask = (unsigned char)(keep == 8 ? 0xff : (0xff00 >> keep) & 0xff);
        if (out->addr[i] & ~mask) {
            *host_bits = true;
            out->addr[i] &= mask;
        }
    }
    return true;
}

static void compile_source_ip(struct compiler *c, const struct conf_node *v)
{
    const struct conf_node *one[1];
    const struct conf_node *const *items;
    size_t n;
    if (is_scalar(v)) {
        one[0] = v;
        items = one;
        n = 1;
    } else if (v && v->type == CONF_SEQ) {
        items = (const struct conf_node *const *)v->items;
        n = v->n;
        if (n == 0) {
            never(c, v, "empty \"source_ip\" list");
            return;
        }
    } else {
        fail(c, v, "\"source_ip\" must be a CIDR or a list of CIDRs, got %s", conf_type_name(v));
        return;
    }
    struct cidr *cs = arena_zalloc(c->p->arena, n * sizeof *cs);
    for (size_t i = 0; i < n; i++) {
        bool host_bits;
        if (!is_scalar(items[i]) || !parse_cidr(items[i]->value, &cs[i], &host_bits)) {
            fail(c, items[i], "bad CIDR \"%s\" in source_ip",
                 is_scalar(items[i]) ? items[i]->value : conf_type_name(items[i]));
            return;
        }
        if (host_bits) {
            char ip[64];
            policy_ip_format_cidr(&cs[i], ip, sizeof ip);
            fail(c, items[i],
                 "bad CIDR \"%s\" in source_ip: host bits are set (did you mean "
                 "\"%s\"?)",
                 items[i]->value, ip);
            return;
        }
    }
    uint32_t i = node_push(c, OP_IP);
    c->p->nodes[i].cidrs = cs;
    c->p->nodes[i].ncidrs = n;
    node_close(c, i);
}

static bool parse_hhmm(const char *s, size_t len, int *out)
{
    if (len != 5 || s[2] != ':' || !isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) ||
        !isdigit((unsigned char)s[3]) || !isdigit((unsigned char)s[4])) {
        return false;
    }
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 24 || m > 59 || (h == 24 && m != 0)) {
        return false;
    }
    *out = h * 60 + m;
    return true;
}

static int weekday_index(const char *s, size_t len)
{
    if (len < 3) {
        return -1;
    }
    char low[4] = { (char)tolower((unsigned char)s[0]), (char)tolower((unsigned char)s[1]),
                    (char)tolower((unsigned char)s[2]), 0 };
    static const char *const full[] = { "sunday",   "monday", "tuesday", "wednesday",
                                        "thursday", "friday", "saturday" };
    for (int i = 0; i < 7; i++) {
        if (strcmp(low, weekday_names[i]) == 0 &&
            (len == 3 || (len == strlen(full[i]) && strncasecmp(s, full[i], len) == 0))) {
            return i;
        }
    }
    return -1;
}

static struct tzinfo *policy_tz(struct compiler *c, const struct conf_node *v)
{
    struct policy *p = c->p;
    for (size_t i = 0; i < p->ntzs; i++) {
        if (strcmp(tz_name(p->tzs[i]), v->value) == 0) {
            return p->tzs[i];
        }
    }
    struct err err = { 0 };
    struct tzinfo *tz = tz_load(v->value, &err);
    if (!tz) {
        fail(c, v, "%s", err.msg);
        return NULL;
    }
    p->tzs = xrealloc(p->tzs, (p->ntzs + 1) * sizeof *p->tzs);
    p->tzs[p->ntzs++] = tz;
    return tz;
}

static void compile_time(struct compiler *c, const struct conf_node *v)
{
    if (!v || v->type != CONF_MAP) {
        fail(c, v, "\"time\" must be a map (weekdays, hours, tz), got %s", conf_type_name(v));
        return;
    }
    if (!conf_check_keys(c->d, v, "time", time_keys)) {
        c->failed = true;
        return;
    }
    struct ptime *t = arena_zalloc(c->p->arena, sizeof *t);
    t->weekdays = 0x7f;
    t->start_min = -1;
    const struct conf_node *wd = conf_get(v, "weekdays");
    if (wd) {
        if (wd->type != CONF_SEQ) {
            fail(c, wd, "\"weekdays\" must be a list of days (mon, tue, ... or mon-fri), got %s",
                 conf_type_name(wd));
            return;
        }
        if (wd->n == 0) {
            never(c, wd, "empty \"weekdays\" list");
            return;
        }
        t->weekdays = 0;
        for (size_t i = 0; i < wd->n; i++) {
            const struct conf_node *it = wd->items[i];
            const char *dash = is_scalar(it) ? strchr(it->value, '-') : NULL;
            int a, b;
            if (!is_scalar(it)) {
                a = b = -1;
            } else if (dash) {
                a = weekday_index(it->value, (size_t)(dash - it->value));
                b = weekday_index(dash + 1, strlen(dash + 1));
            } else {
                a = b = weekday_index(it->value, it->len);
            }
            if (a < 0 || b < 0) {
                fail(c, it,
                     "bad weekday \"%s\" (expected mon, tue, wed, thu, fri, sat, sun or "
                     "a range such as mon-fri)",
                     is_scalar(it) ? it->value : "");
                return;
            }
            for (int d = a;; d = (d + 1) % 7) {
                t->weekdays |= (uint8_t)(1u << d);
                if (d == b) {
                    break;
                }
            }
        }
    }
    const struct conf_node *h = conf_get(v, "hours");
    if (h) {
        const char *dash = is_scalar(h) ? strchr(h->value, '-') : NULL;
        if (!dash) {
            fail(c, h, "\"hours\" must look like \"09:00-18:00\", got %s%s%s",
                 is_scalar(h) ? "\"" : conf_type_name(h), is_scalar(h) ? h->value : "",
                 is_scalar(h) ? "\"" : "");
            return;
        }
        if (!parse_hhmm(h->value, (size_t)(dash - h->value), &t->start_min) ||
            !parse_hhmm(dash + 1, strlen(dash + 1), &t->end_min)) {
            never(c, h, "hours \"%s\" out of range (expected HH:MM-HH:MM within 00:00-24:00)",
                  h->value);
            return;
        }
        if (t->start_min == t->end_min) {
            never(c, h, "hours \"%s\" is an empty range", h->value);
            return;
        }
    }
    const struct conf_node *z = conf_get(v, "tz");
    if (z) {
        if (!is_scalar(z)) {
            fail(c, z, "\"tz\" must be a time zone name such as Europe/Paris, got %s",
                 conf_type_name(z));
            return;
        }
        if (strcmp(z->value, "UTC") != 0) {
            t->tz = policy_tz(c, z);
            if (!t->tz) {
                return;
            }
        }
    }
    uint32_t i = node_push(c, OP_TIME);
    c->p->nodes[i].tm = t;
    node_close(c, i);
}

static void compile_opa(struct compiler *c, const struct conf_node *v)
{
    if (!is_scalar(v) || v->len == 0) {
        fail(c, v, "\"opa\" must be a data path such as gatehouse/wiki/allow, got %s",
             conf_type_name(v));
        return;
    }
    for (size_t k = 0; k < v->len; k++) {
        char ch = v->value[k];
        if (!(isalnum((unsigned char)ch) || ch == '_' || ch == '/' || ch == '-') ||
            (ch == '/' && (k == 0 || k + 1 == v->len || v->value[k + 1] == '/'))) {
            fail(c, v, "bad OPA data path \"%s\" (letters, digits, _ and - separated by /)",
                 v->value);
            return;
        }
    }
    struct policy *p = c->p;
    size_t idx = 0;
    while (idx < p->nopa && strcmp(p->opa_paths[idx], v->value) != 0) {
        idx++;
    }
    if (idx == p->nopa) {
        if (p->nopa == POLICY_MAX_OPA) {
            fail(c, v, "too many OPA data paths in one policy (at most %d)", POLICY_MAX_OPA);
            return;
        }
        p->opa_paths[p->nopa++] = arena_strdup(p->arena, v->value);
    }
    uint32_t i = node_push(c, OP_OPA);
    p->nodes[i].opa = (unsigned)idx;
    node_close(c, i);
}

static void compile_device(struct compiler *c, const struct conf_node *v)
{
    if (!v || v->type != CONF_MAP) {
        fail(c, v,
             "\"device\" must be a map (present, trusted, owner_is_user, id, owner, "
             "subject, issuer, serial, fingerprint, san), got %s",
             conf_type_name(v));
        return;
    }
    if (!conf_check_keys(c->d, v, "device", device_keys)) {
        c->failed = true;
        return;
    }
    if (v->n == 0) {
        fail(c, v,
             "\"device\" needs at least one of present, trusted, owner_is_user, id, "
             "owner, subject, issuer, serial, fingerprint, san");
        return;
    }
    uint32_t all = v->n > 1 ? node_push(c, OP_ALL) : PNODE_NONE;
    static const enum field fields[] = { F_DEV_ID,     F_DEV_OWNER,  F_DEV_SUBJECT,
                                         F_DEV_ISSUER, F_DEV_SERIAL, F_DEV_FINGERPRINT,
                                         F_DEV_SAN };
    for (size_t k = 0; k < v->n; k++) {
        const char *key = v->keys[k]->value;
        const struct conf_node *val = v->items[k];
        char what[48];
        snprintf(what, sizeof what, "device.%s", key);
        if (strcmp(key, "present") == 0) {
            compile_bool(c, val, OP_DEV_PRESENT, what);
        } else if (strcmp(key, "trusted") == 0) {
            compile_bool(c, val, OP_DEV_TRUSTED, what);
        } else if (strcmp(key, "owner_is_user") == 0) {
            compile_bool(c, val, OP_DEV_OWNER_IS_USER, what);
        } else {
            for (size_t j = 3; device_keys[j]; j++) {
                if (strcmp(key, device_keys[j]) == 0) {
                    compile_matcher(c, val, fields[j - 3], STR_NULL, what, NULL);
                }
            }
        }
    }
    if (all != PNODE_NONE) {
        node_close(c, all);
    }
}

static void compile_cond(struct compiler *c, const struct conf_node *n, unsigned depth);

static void compile_named(struct compiler *c, const struct conf_node *spec, enum field f,
                          const char *what)
{
    static const char *const name_key[] = { "name", NULL };
    if (!spec || spec->type != CONF_MAP) {
        fail(c, spec, "\"%s\" must be a map with \"name\" and a matcher, got %s", what,
             conf_type_name(spec));
        return;
    }
    const struct conf_node *nm = conf_get(spec, "name");
    if (!is_scalar(nm) || nm->len == 0) {
        fail(c, nm ? nm : spec, "\"%s\" needs a \"name\"", what);
        return;
    }
    struct str name = arena_str(c, nm->value, nm->len, f == F_HEADER);
    compile_matcher(c, spec, f, name, what, name_key);
}

static bool same_matcher(const struct matcher *a, const struct matcher *b)
{
    if (!a || !b || a->kind != b->kind || a->nvals != b->nvals) {
        return false;
    }
    for (size_t i = 0; i < a->nvals; i++) {
        if (!str_eq(a->vals[i], b->vals[i])) {
            return false;
        }
    }
    return true;
}

/* Structural equality of two compiled subtrees. */
static bool same_tree(const struct policy *p, uint32_t a, uint32_t b)
{
    if (p->nodes[a].end - a != p->nodes[b].end - b) {
        return false;
    }
    for (uint32_t i = 0; i < p->nodes[a].end - a; i++) {
        const struct pnode *x = &p->nodes[a + i], *y = &p->nodes[b + i];
        if (x->op != y->op || x->field != y->field || x->want != y->want ||
            !str_eq(x->name, y->name) || x->opa != y->opa || x->ncidrs != y->ncidrs ||
            (x->end - (a + i)) != (y->end - (b + i))) {
            return false;
        }
        if (x->op == OP_STR && !same_matcher(x->m, y->m)) {
            return false;
        }
        if (x->op == OP_IP && memcmp(x->cidrs, y->cidrs, x->ncidrs * sizeof *x->cidrs) != 0) {
            return false;
        }
        if (x->op == OP_TIME && memcmp(x->tm, y->tm, sizeof *x->tm) != 0) {
            return false;
        }
    }
    return true;
}

/* Rules whose `all` can never hold: X and not X, or two different exact values for one
 * single-valued field (user, email, domain, method, path, host, idp). */
static void check_all(struct compiler *c, uint32_t all, const struct conf_node *where)
{
    const struct policy *p = c->p;
    for (uint32_t x = all + 1; x < p->nodes[all].end; x = p->nodes[x].end) {
        for (uint32_t y = all + 1; y < p->nodes[all].end; y = p->nodes[y].end) {
            if (x == y) {
                continue;
            }
            const struct pnode *ny = &p->nodes[y], *nx = &p->nodes[x];
            if (ny->op == OP_NOT && same_tree(p, x, y + 1)) {
                never(c, where, "\"all\" contains a condition and its negation");
                return;
            }
            if (x < y && nx->op == OP_STR && ny->op == OP_STR && nx->field == ny->field &&
                nx->field <= F_IDP && nx->m && ny->m && nx->m->kind == M_IS &&
                ny->m->kind == M_IS && !str_eq(nx->m->vals[0], ny->m->vals[0])) {
                static const char *const fname[] = { "user", "email", "domain", "method",
                                                     "path", "host",  "idp" };
                never(c, where, "\"all\" requires %s to be both \"%.*s\" and \"%.*s\"",
                      fname[nx->field], (int)nx->m->vals[0].len, nx->m->vals[0].p,
                      (int)ny->m->vals[0].len, ny->m->vals[0].p);
                return;
            }
        }
    }
}

static void compile_list(struct compiler *c, const struct conf_node *v, enum op op,
                         const char *what, unsigned depth)
{
    if (!v || v->type != CONF_SEQ) {
        fail(c, v, "\"%s\" must be a list of conditions, got %s", what, conf_type_name(v));
        return;
    }
    if (v->n == 0 && op == OP_ANY) {
        never(c, v, "empty \"any\"");
        return;
    }
    uint32_t i = node_push(c, op);
    for (size_t k = 0; k < v->n; k++) {
        compile_cond(c, v->items[k], depth + 1);
    }
    node_close(c, i);
    if (op == OP_ALL && !c->failed) {
        check_all(c, i, v);
    }
}

static void compile_criterion(struct compiler *c, const struct conf_node *key,
                              const struct conf_node *v, unsigned depth)
{
    const char *k = key->value;
    if (strcmp(k, "all") == 0) {
        compile_list(c, v, OP_ALL, "all", depth);
    } else if (strcmp(k, "any") == 0) {
        compile_list(c, v, OP_ANY, "any", depth);
    } else if (strcmp(k, "not") == 0) {
        uint32_t i = node_push(c, OP_NOT);
        compile_cond(c, v, depth + 1);
        node_close(c, i);
    } else if (strcmp(k, "authenticated") == 0) {
        compile_bool(c, v, OP_AUTH, "authenticated");
    } else if (strcmp(k, "user") == 0) {
        compile_matcher(c, v, F_USER, STR_NULL, "user", NULL);
    } else if (strcmp(k, "email") == 0) {
        compile_matcher(c, v, F_EMAIL, STR_NULL, "email", NULL);
    } else if (strcmp(k, "domain") == 0) {
        compile_matcher(c, v, F_DOMAIN, STR_NULL, "domain", NULL);
    } else if (strcmp(k, "idp") == 0) {
        compile_matcher(c, v, F_IDP, STR_NULL, "idp", NULL);
    } else if (strcmp(k, "groups") == 0) {
        compile_matcher(c, v, F_GROUPS, STR_NULL, "groups", NULL);
    } else if (strcmp(k, "method") == 0) {
        compile_matcher(c, v, F_METHOD, STR_NULL, "method", NULL);
    } else if (strcmp(k, "path") == 0) {
        compile_matcher(c, v, F_PATH, STR_NULL, "path", NULL);
    } else if (strcmp(k, "host") == 0) {
        compile_matcher(c, v, F_HOST, STR_NULL, "host", NULL);
    } else if (strcmp(k, "claim") == 0) {
        compile_named(c, v, F_CLAIM, "claim");
    } else if (strcmp(k, "header") == 0) {
        compile_named(c, v, F_HEADER, "header");
    } else if (strcmp(k, "device") == 0) {
        compile_device(c, v);
    } else if (strcmp(k, "source_ip") == 0) {
        compile_source_ip(c, v);
    } else if (strcmp(k, "time") == 0) {
        compile_time(c, v);
    } else if (strcmp(k, "opa") == 0) {
        compile_opa(c, v);
    } else {
        const char *s = conf_suggest(k, criteria);
        if (s) {
            fail(c, key, "unknown criterion \"%s\" (did you mean \"%s\"?)", k, s);
        } else {
            fail(c, key, "unknown criterion \"%s\"", k);
        }
    }
}

/* A condition is a map of criteria; several keys in one map must all hold. */
static void compile_cond(struct compiler *c, const struct conf_node *n, unsigned depth)
{
    if (depth > POLICY_MAX_DEPTH) {
        fail(c, n, "conditions nested deeper than %d levels", POLICY_MAX_DEPTH);
        return;
    }
    if (c->p->nnodes > POLICY_MAX_NODES) {
        fail(c, n, "policy too large (more than %d conditions)", POLICY_MAX_NODES);
        return;
    }
    if (!n || n->type != CONF_MAP || n->n == 0) {
        fail(c, n,
             "a condition must be a map with a criterion such as user, groups or path, "
             "got %s",
             n && n->type == CONF_MAP ? "an empty map" : conf_type_name(n));
        return;
    }
    uint32_t all = n->n > 1 ? node_push(c, OP_ALL) : PNODE_NONE;
    for (size_t k = 0; k < n->n; k++) {
        compile_criterion(c, n->keys[k], n->items[k], depth);
    }
    if (all != PNODE_NONE) {
        node_close(c, all);
        if (!c->failed) {
            check_all(c, all, n);
        }
    }
}

/* Only conjuncts at the top of the rule qualify: each must hold for the rule to match. */
static void set_prefilters(struct policy *p, struct prule *pr)
{
    uint32_t first = pr->root, end = p->nodes[pr->root].end;
    if (p->nodes[pr->root].op == OP_ALL) {
        first = pr->root + 1;
    } else {
        first = pr->root;
        end = p->nodes[pr->root].end;
    }
    for (uint32_t i = first; i < end; i = p->nodes[i].end) {
        const struct pnode *n = &p->nodes[i];
        if (n->op != OP_STR || !n->m) {
            continue;
        }
        if (n->field == F_HOST && n->m->kind == M_IS && !pr->has_host) {
            pr->has_host = true;
            pr->host_hash = policy_hash(n->m->vals[0].p, n->m->vals[0].len, true);
        } else if (n->field == F_PATH && n->m->kind == M_PREFIX && !pr->path_prefix.len) {
            pr->path_prefix = n->m->vals[0];
        } else if (n->field == F_GROUPS && n->m->kind == M_MEMBER) {
            pr->group_mask |= 1ULL << (policy_hash(n->m->vals[0].p, n->m->vals[0].len, false) & 63);
        }
        if (p->nodes[pr->root].op != OP_ALL) {
            break;
        }
    }
}

static bool valid_id(const char *s)
{
    if (!*s || strlen(s) > 100) {
        return false;
    }
    for (; *s; s++) {
        if (!(isalnum((unsigned char)*s) || *s == '-' || *s == '_' || *s == '.')) {
            return false;
        }
    }
    return true;
}

static void compile_rule(struct compiler *c, const struct conf_node *r, size_t idx)
{
    struct policy *p = c->p;
    struct prule *pr = &p->rules[idx];
    pr->root = PNODE_NONE;
    if (!conf_check_keys(c->d, r, "rule", rule_keys)) {
        c->failed = true;
        return;
    }
    pr->line = r->line;
    const struct conf_node *id = conf_get(r, "id");
    if (!id) {
        fail(c, r, "rule needs an \"id\"");
        return;
    }
    if (!is_scalar(id) || !valid_id(id->value)) {
        fail(c, id, "bad rule id %s%s%s (letters, digits, '-', '_' and '.')",
             is_scalar(id) ? "\"" : "", is_scalar(id) ? id->value : conf_type_name(id),
             is_scalar(id) ? "\"" : "");
        return;
    }
    if (strcmp(id->value, "default-deny") == 0 || strcmp(id->value, "public") == 0 ||
        strcmp(id->value, "allow-any-authenticated") == 0) {
        fail(c, id, "rule id \"%s\" is reserved", id->value);
        return;
    }
    for (size_t i = 0; i < idx; i++) {
        if (p->rules[i].id && strcmp(p->rules[i].id, id->value) == 0) {
            fail(c, id, "duplicate rule id \"%s\" (first defined at line %d)", id->value,
                 p->rules[i].line);
            return;
        }
    }
    pr->id = arena_strdup(p->arena, id->value);
    c->rule_id = pr->id;
    const struct conf_node *eff = conf_get(r, "effect");
    if (!eff) {
        fail(c, r, "rule \"%s\" needs an \"effect\" (allow or deny)", pr->id);
        return;
    }
    if (!is_scalar(eff) || (strcmp(eff->value, "allow") != 0 && strcmp(eff->value, "deny") != 0)) {
        fail(c, eff, "\"effect\" must be allow or deny, got %s%s%s", is_scalar(eff) ? "\"" : "",
             is_scalar(eff) ? eff->value : conf_type_name(eff), is_scalar(eff) ? "\"" : "");
        return;
    }
    pr->deny = strcmp(eff->value, "deny") == 0;
    const char *reason = NULL;
    if (!conf_string(c->d, r, "reason", &reason)) {
        c->failed = true;
        return;
    }
    pr->reason = reason ? arena_strdup(p->arena, reason) : NULL;
    const struct conf_node *when = conf_get(r, "when");
    if (when) {
        pr->root = (uint32_t)p->nnodes;
        compile_cond(c, when, 1);
    }
    if (!c->failed && pr->root != PNODE_NONE) {
        set_prefilters(p, pr);
    }
}

static void host_rules_add(struct host_rules *h, const struct prule *r, uint32_t k, size_t cap)
{
    if (!h->deny) {
        h->deny = xcalloc(cap, sizeof *h->deny);
        h->allow = xcalloc(cap, sizeof *h->allow);
    }
    if (r->deny) {
        h->deny[h->ndeny++] = k;
    } else {
        h->allow[h->nallow++] = k;
    }
}

static void host_rules_fini(struct host_rules *h)
{
    free(h->deny);
    free(h->allow);
}

static int cmp_hash(const void *a, const void *b)
{
    uint32_t x = ((const struct host_rules *)a)->hash, y = ((const struct host_rules *)b)->hash;
    return x < y ? -1 : x > y;
}

void policy_index_build(struct policy *p)
{
    size_t cap = p->nrules ? p->nrules : 1;
    p->by_host = xcalloc(cap, sizeof *p->by_host);
    for (uint32_t k = 0; k < p->nrules; k++) {
        const struct prule *r = &p->rules[k];
        host_rules_add(&p->all, r, k, cap);
        if (!r->has_host) {
            host_rules_add(&p->any_host, r, k, cap);
            continue;
        }
        size_t h = 0;
        while (h < p->nhosts && p->by_host[h].hash != r->host_hash) {
            h++;
        }
        if (h == p->nhosts) {
            p->by_host[p->nhosts++].hash = r->host_hash;
        }
    }
    /* Each host's lists: its own rules and the host-less ones, in file order. */
    for (size_t h = 0; h < p->nhosts; h++) {
        for (uint32_t k = 0; k < p->nrules; k++) {
            const struct prule *r = &p->rules[k];
            if (!r->has_host || r->host_hash == p->by_host[h].hash) {
                host_rules_add(&p->by_host[h], r, k, cap);
            }
        }
    }
    qsort(p->by_host, p->nhosts, sizeof *p->by_host, cmp_hash);
    /* The claims a decision record keeps: asked for every claim of every
     * request, so listed once here rather than found among all the nodes. */
    p->claim_names = xcalloc(p->nnodes ? p->nnodes : 1, sizeof *p->claim_names);
    for (size_t i = 0; i < p->nnodes; i++) {
        const struct pnode *n = &p->nodes[i];
        if (n->op != OP_STR || n->field != F_CLAIM) {
            continue;
        }
        size_t j = 0;
        while (j < p->nclaim_names && !str_eq(p->claim_names[j], n->name)) {
            j++;
        }
        if (j == p->nclaim_names) {
            p->claim_names[p->nclaim_names++] = n->name;
        }
    }
}

void policy_free(struct policy *p)
{
    if (!p) {
        return;
    }
    host_rules_fini(&p->all);
    host_rules_fini(&p->any_host);
    for (size_t h = 0; h < p->nhosts; h++) {
        host_rules_fini(&p->by_host[h]);
    }
    free(p->by_host);
    free(p->claim_names);
    for (size_t i = 0; i < p->nregexes; i++) {
        regex_free(p->regexes[i]->re);
    }
    for (size_t i = 0; i < p->ntzs; i++) {
        tz_free(p->tzs[i]);
    }
    free(p->regexes);
    free(p->tzs);
    free(p->nodes);
    free(p->rules);
    free(p->file);
    arena_free(p->arena);
    free(p);
}

static struct policy *policy_alloc(const char *file)
{
    struct policy *p = xcalloc(1, sizeof *p);
    p->file = xstrdup(file);
    p->arena = arena_new(0);
    return p;
}

static struct policy *compile_doc(const struct conf_doc *doc, struct conf_diag *d)
{
    struct compiler c = { 0 };
    struct policy *p = policy_alloc(doc->file);
    size_t before = d->count;
    c.p = p;
    c.d = d;
    const struct conf_node *root = doc->root;
    if (!root || root->type != CONF_MAP) {
        conf_error(d, root, "a policy must be a map with \"rules\", got %s", conf_type_name(root));
        goto fail;
    }
    if (!conf_check_keys(d, root, "policy", top_keys)) {
        goto fail;
    }
    const struct conf_node *mode = conf_get(root, "mode");
    if (mode) {
        if (is_scalar(mode) && strcmp(mode->value, "enforce") == 0) {
            p->mode = POLICY_ENFORCE;
        } else if (is_scalar(mode) && strcmp(mode->value, "shadow") == 0) {
            p->mode = POLICY_SHADOW;
        } else {
            conf_error(d, mode, "\"mode\" must be enforce or shadow, got %s%s%s",
                       is_scalar(mode) ? "\"" : "",
                       is_scalar(mode) ? mode->value : conf_type_name(mode),
                       is_scalar(mode) ? "\"" : "");
            goto fail;
        }
    }
    const struct conf_node *rules = conf_get(root, "rules");
    if (!rules) {
        conf_error(d, root, "a policy needs \"rules\"");
        goto fail;
    }
    if (!conf_seq(d, rules, "\"rules\"")) {
        goto fail;
    }
    p->rules = xcalloc(rules->n ? rules->n : 1, sizeof *p->rules);
    p->nrules = rules->n;
    for (size_t i = 0; i < rules->n; i++) {
        c.failed = false;
        c.rule_id = "?";
        compile_rule(&c, rules->items[i], i);
    }
    if (d->count != before) {
        goto fail;
    }
    policy_index_build(p);
    return p;
fail:
    policy_free(p);
    return NULL;
}

struct policy *policy_load(const char *file, struct conf_diag *d)
{
    struct conf_doc *doc = conf_doc_load(file, d);
    if (!doc) {
        return NULL;
    }
    size_t before = d->count;
    struct policy *p = before == 0 || d->count == before ? compile_doc(doc, d) : NULL;
    conf_doc_free(doc);
    return p;
}

struct policy *policy_parse(const char *name, const char *text, size_t len, struct conf_diag *d)
{
    size_t before = d->count;
    struct conf_doc *doc = conf_doc_parse(name, text, len, d);
    if (!doc) {
        return NULL;
    }
    struct policy *p = d->count == before ? compile_doc(doc, d) : NULL;
    conf_doc_free(doc);
    return p;
}

struct policy *policy_new_builtin(bool public_route)
{
    struct policy *p = policy_alloc(public_route ? "(public)" : "(allow_any_authenticated)");
    p->rules = xcalloc(1, sizeof *p->rules);
    p->nrules = 1;
    p->rules[0].id = arena_strdup(p->arena, public_route ? "public" : "allow-any-authenticated");
    p->rules[0].root = PNODE_NONE;
    if (!public_route) {
        struct compiler c = { .p = p };
        uint32_t i = node_push(&c, OP_AUTH);
        p->nodes[i].want = true;
        node_close(&c, i);
        p->rules[0].root = i;
    }
    policy_index_build(p);
    return p;
}

const char *policy_file(const struct policy *p)
{
    return p->file;
}

enum policy_mode policy_mode(const struct policy *p)
{
    return p->mode;
}

size_t policy_rule_count(const struct policy *p)
{
    return p->nrules;
}

const char *policy_rule_id(const struct policy *p, size_t i)
{
    return i < p->nrules ? p->rules[i].id : NULL;
}

const char *policy_rule_effect(const struct policy *p, size_t i)
{
    return i < p->nrules && p->rules[i].deny ? "deny" : "allow";
}

bool policy_cidr_parse(const char *s, struct cidr *out, bool *host_bits)
{
    return parse_cidr(s, out, host_bits);
}
