/* dl_row_same.h - the differential check of the decision log's two line parsers,
 * shared by the fuzz target (fuzz_decision_log_line.c) and the unit test
 * (tests/unit/policy/test_dl_parse.c): dl_line_parse_fast must either leave a line
 * to dl_line_parse or fill the very same struct dl_row (every field, NULL vs ""),
 * and when it calls the line's groups and claims canonical they are the bytes the
 * writer makes of them. */
#ifndef GH_DL_ROW_SAME_H
#define GH_DL_ROW_SAME_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/decision_log_int.h"

/* Both NULL, or both strings with the same bytes. */
static bool dl_same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool dl_same_span(struct str a, struct str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0) &&
           strnlen(a.p ? a.p : "", a.len) == a.len;
}

/* NULL when equal, else the first field that differs. */
static const char *dl_row_diff(const struct dl_row *x, const struct dl_row *y)
{
    const struct decision_record *a = &x->rec, *b = &y->rec;
#define S(f)                                                                                       \
    do {                                                                                           \
        if (!dl_same_str(a->f, b->f)) {                                                            \
            return #f;                                                                             \
        }                                                                                          \
    } while (0)
#define V(f)                                                                                       \
    do {                                                                                           \
        if (a->f != b->f) {                                                                        \
            return #f;                                                                             \
        }                                                                                          \
    } while (0)
    if (x->seq != y->seq) {
        return "seq";
    }
    if (!dl_same_str(x->prev_hash, y->prev_hash)) {
        return "prev_hash";
    }
    if (!dl_same_str(x->hash, y->hash)) {
        return "hash";
    }
    V(ts_us);
    S(request_id);
    S(route);
    S(decision);
    S(rule);
    S(reason);
    S(user);
    S(email);
    S(idp);
    S(session);
    V(device_present);
    V(device_trusted);
    S(device_id);
    S(device_owner);
    S(client_ip);
    S(method);
    S(host);
    S(path);
    V(shadow);
    V(opa_called);
    S(opa_result);
    V(opa_ms);
    V(latency_us);
    S(kind);
    S(enforced);
    S(admin_action);
    S(admin_actor);
    S(admin_from);
    S(admin_target);
    S(node);
    V(ngroups);
    V(nclaims);
#undef S
#undef V
    for (size_t i = 0; i < a->ngroups; i++) {
        if (!dl_same_str(a->groups[i], b->groups[i])) {
            return "groups[i]";
        }
    }
    if (a->groups[a->ngroups] || b->groups[b->ngroups]) {
        return "groups[n]";
    }
    for (size_t i = 0; i < a->nclaims; i++) {
        if (!dl_same_span(a->claims[i].name, b->claims[i].name)) {
            return "claims[i].name";
        }
        if (!dl_same_span(a->claims[i].value, b->claims[i].value)) {
            return "claims[i].value";
        }
    }
    return NULL;
}

/* Parses line both ways (the fast parser on a copy, since it writes into it).
 * Returns 1 when the fast parser took it (and agreed), 0 when it left it to
 * jansson, -1 (and prints why) when they disagree. *jansson_ok gets whether
 * dl_line_parse accepts the line. */
static int dl_parse_both(const char *line, size_t len, bool *jansson_ok)
{
    struct dl_row slow, fast;
    bool sok = dl_line_parse(line, len, &slow);
    if (jansson_ok) {
        *jansson_ok = sok;
    }
    char *copy = malloc(len + 1);
    if (!copy) {
        abort();
    }
    memcpy(copy, line, len);
    copy[len] = 'x'; /* nothing past the line is read */
    struct arena *a = arena_new(0);
    struct dl_fast *f = dl_fast_new();
    struct dl_line_json js;
    bool fok = dl_line_parse_fast(copy, len, &fast, a, &js, f);
    int ret = fok ? 1 : 0;
    if (!fok && memcmp(copy, line, len) != 0) {
        fprintf(stderr, "fast parser changed a line it refused\n");
        ret = -1;
    }
    if (fok && !sok) {
        fprintf(stderr, "fast parser accepts a line jansson refuses: %.*s\n", (int)len, line);
        ret = -1;
    } else if (fok) {
        const char *d = dl_row_diff(&fast, &slow);
        if (d) {
            fprintf(stderr, "parsers differ in %s: %.*s\n", d, (int)len, line);
            ret = -1;
        }
        if (js.canonical) {
            struct sbuf g = { 0 }, c = { 0 };
            dl_groups_json(&g, &fast.rec);
            dl_claims_json(&c, &fast.rec);
            if (g.len != js.glen || memcmp(g.p, js.groups, g.len) != 0 || c.len != js.clen ||
                memcmp(c.p, js.claims, c.len) != 0) {
                fprintf(stderr, "groups/claims called canonical but are not: %.*s\n", (int)len,
                        line);
                ret = -1;
            }
            dl_sbuf_free(&g);
            dl_sbuf_free(&c);
        }
    }
    if (sok) {
        dl_row_fini(&slow);
    }
    dl_fast_free(f);
    arena_free(a);
    free(copy);
    return ret;
}

#endif
