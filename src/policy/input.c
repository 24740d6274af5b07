/* policy/input.c - builds a struct policy_input from a YAML/JSON description
 * (policy test cases, `policy explain --input req.json`), for the CLI only: the
 * proxy fills struct policy_input directly from the request. JSON is read through
 * the same YAML loader (a JSON document is a YAML flow document). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/normpath.h"
#include "policy_cli.h"

static const char *const input_keys[] = { "authenticated", "user",    "email", "idp",    "groups",
                                          "claims",        "device",  "ip",    "method", "host",
                                          "path",          "headers", "time",  "route",  "opa",
                                          "session",       NULL };
static const char *const device_keys[] = { "present", "trusted", "id",          "owner", "subject",
                                           "issuer",  "serial",  "fingerprint", "san",   NULL };

const char *policy_printable(const char *s, char *buf, size_t size)
{
    size_t i = 0;
    if (!s) {
        s = "-";
    }
    for (; s[i] && i + 1 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (char)(c < 0x20 || c == 0x7f ? '?' : c);
    }
    buf[i] = '\0';
    return buf;
}

bool policy_time_parse(const char *s, int64_t *out)
{
    int y, mo, d, h, mi, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19) {
        if (sscanf(s, "%4d-%2d-%2d %2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 ||
            n != 19) {
            return false;
        }
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) {
        return false;
    }
    const char *rest = s + n;
    if (*rest == '.') {
        rest++;
        while (isdigit((unsigned char)*rest)) {
            rest++;
        }
    }
    long off = 0;
    if (*rest == 'Z' || *rest == 'z') {
        rest++;
    } else if (*rest == '+' || *rest == '-') {
        int oh, om, k = 0;
        if (sscanf(rest + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5 || oh > 23 || om > 59) {
            return false;
        }
        off = (*rest == '-' ? -1 : 1) * (oh * 3600L + om * 60L);
        rest += 6;
    } else {
        return false;
    }
    if (*rest) {
        return false;
    }
    struct tm tm = { .tm_year = y - 1900,
                     .tm_mon = mo - 1,
                     .tm_mday = d,
                     .tm_hour = h,
                     .tm_min = mi,
                     .tm_sec = sec };
    *out = (int64_t)timegm(&tm) - off;
    return true;
}

static struct str span(struct arena *a, const struct conf_node *n)
{
    if (!n || n->type != CONF_SCALAR) {
        return STR_NULL;
    }
    char *s = arena_strndup(a, n->value, n->len);
    return (struct str){ s, n->len };
}

static bool scalar(struct conf_diag *d, const struct conf_node *n, const char *what)
{
    if (n && n->type == CONF_SCALAR) {
        return true;
    }
    conf_error(d, n, "\"%s\" must be a string", what);
    return false;
}

/* A map of name -> string or list of strings into kv pairs. */
static bool kv_list(struct arena *a, struct conf_diag *d, const struct conf_node *m,
                    const char *what, const struct policy_kv **out, size_t *nout)
{
    if (!conf_map(d, m, what)) {
        return false;
    }
    size_t total = 0;
    for (size_t i = 0; i < m->n; i++) {
        total += m->items[i]->type == CONF_SEQ ? m->items[i]->n : 1;
    }
    struct policy_kv *kv = arena_zalloc(a, (total ? total : 1) * sizeof *kv);
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++) {
        const struct conf_node *v = m->items[i];
        if (v->type == CONF_SEQ) {
            for (size_t j = 0; j < v->n; j++) {
                if (!scalar(d, v->items[j], what)) {
                    return false;
                }
                kv[k].name = span(a, m->keys[i]);
                kv[k++].value = span(a, v->items[j]);
            }
        } else {
            if (!scalar(d, v, what)) {
                return false;
            }
            kv[k].name = span(a, m->keys[i]);
            kv[k++].value = span(a, v);
        }
    }
    *out = kv;
    *nout = k;
    return true;
}

/* The host as the proxy hands it to the policy: lower case, without a port
 * and without one trailing dot ("Example.COM.:443" is "example.com", "[::1]:8443"
 * is "[::1]"). A host the proxy would refuse is not checked here. */
static struct str host_form(struct str h)
{
    if (!h.p || h.len == 0) {
        return h;
    }
    char *p = (char *)h.p; /* span() made it a copy in the arena */
    size_t n = h.len;
    if (p[0] == '[') { /* "[v6]" keeps its brackets */
        const char *close = memchr(p, ']', n);
        n = close ? (size_t)(close - p) + 1 : n;
    } else {
        const char *colon = memchr(p, ':', n);
        if (colon) {
            n = (size_t)(colon - p);
        }
        if (n > 1 && p[n - 1] == '.') {
            n--;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] >= 'A' && p[i] <= 'Z') {
            p[i] = (char)(p[i] - 'A' + 'a');
        }
    }
    p[n] = '\0';
    return (struct str){ p, n };
}

/* The request path as the proxy feeds it to the policy: in its normal form
 * (core/normpath.h), the query cut off, folded to lower case on a
 * case-insensitive route. A path the proxy answers with 400 is an error of the
 * input, never evaluated. Without a route (rp NULL) an encoded slash is
 * refused as on a route without encoded_slashes: pass, and the path keeps
 * its case (see docs/policy.md). */
static bool request_path(struct arena *a, struct conf_diag *d, const struct conf_node *pn,
                         const struct cli_route_path *rp, struct str *out)
{
    char shown[256];
    if (!scalar(d, pn, "path")) {
        return false;
    }
    const char *q = memchr(pn->value, '?', pn->len);
    size_t len = q ? (size_t)(q - pn->value) : pn->len;
    if (len == 0) {
        *out = STR("/");
        return true;
    }
    char *t = arena_alloc(a, len + 1);
    size_t n = 0;
    if (!t) {
        conf_error(d, pn, "out of memory");
        return false;
    }
    unsigned flags = rp && rp->encoded_slashes_pass ? NORMPATH_KEEP_ENCODED_SLASH : 0;
    enum normpath_rc rc = normpath(pn->value, len, t, flags, &n, NULL);
    if (rc != NORMPATH_OK) {
        conf_error(d, pn,
                   "the proxy refuses a request for path \"%s\" with 400 (%s): this input "
                   "never reaches the policy",
                   policy_printable(pn->value, shown, sizeof shown), normpath_reason(rc));
        return false;
    }
    if (rp && rp->fold_case) {
        normpath_fold_case(t, n);
    }
    t[n] = '\0';
    *out = (struct str){ t, n };
    return true;
}

bool policy_input_from_conf(const struct conf_node *n, struct arena *a, struct conf_diag *d,
                            struct policy_input *in, struct cli_opa *opa,
                            const struct cli_route_path *rp)
{
    memset(in, 0, sizeof *in);
    if (opa) {
        memset(opa, 0, sizeof *opa);
    }
    if (!conf_check_keys(d, n, "input", input_keys)) {
        return false;
    }
    in->user = span(a, conf_get(n, "user"));
    in->email = span(a, conf_get(n, "email"));
    in->idp = span(a, conf_get(n, "idp"));
    in->session = span(a, conf_get(n, "session"));
    in->route = span(a, conf_get(n, "route"));
    in->host = host_form(span(a, conf_get(n, "host")));
    in->method = conf_get(n, "method") ? span(a, conf_get(n, "method")) : STR("GET");
    in->path = STR("/");
    const struct conf_node *pn = conf_get(n, "path");
    if (pn && !request_path(a, d, pn, rp, &in->path)) {
        return false;
    }
    in->authenticated = in->user.len > 0 || in->email.len > 0;
    if (!conf_bool(d, n, "authenticated", &in->authenticated)) {
        return false;
    }
    const struct conf_node *g = conf_get(n, "groups");
    if (g) {
        if (!conf_seq(d, g, "\"groups\"")) {
            return false;
        }
        struct str *gs = arena_zalloc(a, (g->n ? g->n : 1) * sizeof *gs);
        for (size_t i = 0; i < g->n; i++) {
            if (!scalar(d, g->items[i], "groups")) {
                return false;
            }
            gs[i] = span(a, g->items[i]);
        }
        in->groups = gs;
        in->ngroups = g->n;
    }
    const struct conf_node *c = conf_get(n, "claims");
    if (c && !kv_list(a, d, c, "claims", &in->claims, &in->nclaims)) {
        return false;
    }
    const struct conf_node *h = conf_get(n, "headers");
    if (h && !kv_list(a, d, h, "headers", &in->headers, &in->nheaders)) {
        return false;
    }
    const struct conf_node *dev = conf_get(n, "device");
    if (dev) {
        if (!conf_check_keys(d, dev, "device", device_keys)) {
            return false;
        }
        in->device.present = true;
        if (!conf_bool(d, dev, "present", &in->device.present) ||
            !conf_bool(d, dev, "trusted", &in->device.trusted)) {
            return false;
        }
        in->device.id = span(a, conf_get(dev, "id"));
        in->device.owner = span(a, conf_get(dev, "owner"));
        in->device.subject = span(a, conf_get(dev, "subject"));
        in->device.issuer = span(a, conf_get(dev, "issuer"));
        in->device.serial = span(a, conf_get(dev, "serial"));
        in->device.fingerprint = span(a, conf_get(dev, "fingerprint"));
        in->device.san = span(a, conf_get(dev, "san"));
    }
    const struct conf_node *ip = conf_get(n, "ip");
    if (ip) {
        if (!scalar(d, ip, "ip") ||
            !policy_ip_parse((struct str){ ip->value, ip->len }, &in->client_ip)) {
            conf_error(d, ip, "bad IP address \"%s\"", ip->value ? ip->value : "");
            return false;
        }
    }
    const struct conf_node *t = conf_get(n, "time");
    if (t) {
        if (!scalar(d, t, "time") || !policy_time_parse(t->value, &in->time_s)) {
            conf_error(d, t, "bad time \"%s\" (expected RFC 3339, e.g. 2026-03-10T09:30:00Z)",
                       t->value ? t->value : "");
            return false;
        }
    } else {
        in->time_s = (int64_t)time(NULL);
    }
    const struct conf_node *o = conf_get(n, "opa");
    if (o) {
        if (!conf_map(d, o, "\"opa\"") || !opa) {
            return false;
        }
        for (size_t i = 0; i < o->n && opa->n < POLICY_MAX_OPA; i++) {
            bool b;
            if (o->items[i]->type != CONF_SCALAR || !conf_parse_bool(o->items[i]->value, &b)) {
                conf_error(d, o->items[i], "OPA answer for \"%s\" must be true or false",
                           o->keys[i]->value);
                return false;
            }
            opa->path[opa->n] = o->keys[i]->value;
            opa->allow[opa->n++] = b;
        }
    }
    return true;
}

enum policy_step policy_eval_cli(const struct policy *p, const struct policy_input *in,
                                 const struct cli_opa *opa, struct policy_result *r)
{
    for (;;) {
        enum policy_step st = policy_eval(p, in, r);
        if (st == POLICY_DONE) {
            return st;
        }
        size_t i = 0;
        while (opa && i < opa->n && strcmp(opa->path[i], r->opa_path) != 0) {
            i++;
        }
        if (!opa || i == opa->n) {
            return st;
        }
        policy_opa_answer(r, opa->allow[i], NULL);
    }
}
