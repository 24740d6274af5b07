/* proxy/route.c - the per-request route lookup. At config load the routes are
 * grouped by host (exact hosts and wildcard suffixes, each sorted for binary
 * search, then the host-less group) and each group's prefixes sorted longest
 * first, so a lookup is one binary search per label of the Host plus a few
 * prefix compares, without allocation, however many routes there are. Called
 * by the connection code once per request head. */
#include "route.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "core/normpath.h"

struct route_entry {
    const struct route_conf *r;
    const char *prefix;
    size_t prefix_len;
};

struct host_group {
    const char *host; /* lower case; for wildcards ".example.com"; NULL = any host */
    size_t host_len;
    struct route_entry *entries; /* longest prefix first */
    size_t n;
};

struct route_table {
    struct host_group *exact; /* sorted by host */
    size_t nexact;
    struct host_group *wild; /* sorted by suffix (".example.com") */
    size_t nwild;
    struct host_group any;
};

static unsigned char lower(unsigned char ch)
{
    return ch >= 'A' && ch <= 'Z' ? (unsigned char)(ch - 'A' + 'a') : ch;
}

/* Compares a request host (any case) with a lower-case table host. */
static int host_cmp(struct str req, const char *host, size_t host_len)
{
    size_t n = req.len < host_len ? req.len : host_len;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = lower((unsigned char)req.p[i]), b = (unsigned char)host[i];
        if (a != b) {
            return a < b ? -1 : 1;
        }
    }
    return req.len < host_len ? -1 : req.len > host_len ? 1 : 0;
}

static int cmp_entry(const void *a, const void *b)
{
    const struct route_entry *x = a, *y = b;
    if (x->prefix_len != y->prefix_len) {
        return x->prefix_len > y->prefix_len ? -1 : 1;
    }
    /* Stable for equal lengths: keep config order. */
    return x->r->index < y->r->index ? -1 : x->r->index > y->r->index;
}

static void group_add(struct host_group *g, const struct route_conf *r)
{
    const char *prefix = r->path_prefix ? r->path_prefix : "/";
    g->entries = xrealloc(g->entries, (g->n + 1) * sizeof *g->entries);
    g->entries[g->n++] =
        (struct route_entry){ .r = r, .prefix = prefix, .prefix_len = strlen(prefix) };
}

static int cmp_route_host(const void *a, const void *b)
{
    const struct route_conf *x = *(const struct route_conf *const *)a;
    const struct route_conf *y = *(const struct route_conf *const *)b;
    int c = strcmp(x->host, y->host);
    if (c != 0) {
        return c;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Groups routes (sorted by host) into groups with one host each; returns the
 * number of groups written to out. Sorting keeps this O(n log n) for configs
 * with thousands of hosts. */
static size_t make_groups(const struct route_conf **sorted, size_t n, struct host_group *out)
{
    size_t ng = 0;
    for (size_t i = 0; i < n; i++) {
        if (ng == 0 || strcmp(out[ng - 1].host, sorted[i]->host) != 0) {
            out[ng].host = sorted[i]->host;
            out[ng].host_len = strlen(sorted[i]->host);
            ng++;
        }
        group_add(&out[ng - 1], sorted[i]);
    }
    return ng;
}

struct route_table *route_table_new(const struct route_conf *routes, size_t n)
{
    struct route_table *t = xcalloc(1, sizeof *t);
    const struct route_conf **exact = xcalloc(n ? n : 1, sizeof *exact);
    const struct route_conf **wild = xcalloc(n ? n : 1, sizeof *wild);
    size_t nexact = 0, nwild = 0;

    for (size_t i = 0; i < n; i++) {
        const struct route_conf *r = &routes[i];
        if (!r->host) {
            group_add(&t->any, r);
        } else if (r->host_wildcard) {
            wild[nwild++] = r;
        } else {
            exact[nexact++] = r;
        }
    }
    qsort(exact, nexact, sizeof *exact, cmp_route_host);
    qsort(wild, nwild, sizeof *wild, cmp_route_host);
    /* n groups at most of each kind; unused slots are harmless. */
    t->exact = xcalloc(nexact ? nexact : 1, sizeof *t->exact);
    t->wild = xcalloc(nwild ? nwild : 1, sizeof *t->wild);
    t->nexact = make_groups(exact, nexact, t->exact);
    t->nwild = make_groups(wild, nwild, t->wild);
    free(exact);
    free(wild);
    /* Both kinds of groups come out in host order, ready for binary search. */
    for (size_t i = 0; i < t->nexact; i++) {
        qsort(t->exact[i].entries, t->exact[i].n, sizeof(struct route_entry), cmp_entry);
    }
    for (size_t i = 0; i < t->nwild; i++) {
        qsort(t->wild[i].entries, t->wild[i].n, sizeof(struct route_entry), cmp_entry);
    }
    if (t->any.n) {
        qsort(t->any.entries, t->any.n, sizeof(struct route_entry), cmp_entry);
    }
    return t;
}

void route_table_free(struct route_table *t)
{
    if (!t) {
        return;
    }
    for (size_t i = 0; i < t->nexact; i++) {
        free(t->exact[i].entries);
    }
    for (size_t i = 0; i < t->nwild; i++) {
        free(t->wild[i].entries);
    }
    free(t->any.entries);
    free(t->exact);
    free(t->wild);
    free(t);
}

struct str route_host_strip(struct str host)
{
    if (host.len > 0 && host.p[0] == '[') {
        const char *close = memchr(host.p, ']', host.len);
        if (close) {
            host.len = (size_t)(close - host.p) + 1;
        }
        return host;
    }
    const char *colon = memchr(host.p ? host.p : "", ':', host.len);
    if (colon) {
        host.len = (size_t)(colon - host.p);
    }
    if (host.len > 0 && host.p[host.len - 1] == '.') {
        host.len--;
    }
    return host;
}

/* Binary search of groups sorted by (lower-case) host for a request host in any case. */
static const struct host_group *find_group(const struct host_group *g, size_t n, struct str host)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = host_cmp(host, g[mid].host, g[mid].host_len);
        if (c == 0) {
            return &g[mid];
        }
        if (c < 0) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return NULL;
}

/* True when prefix matches path on a segment boundary (see route.h). */
static bool prefix_matches(const struct route_entry *e, struct str path)
{
    if (path.len < e->prefix_len) {
        return false;
    }
    if (e->r->path_case_insensitive) {
        /* The prefix is stored folded (config.c); escapes' hex digits are upper
         * case on both sides, so folding the path's letters is enough. */
        for (size_t i = 0; i < e->prefix_len; i++) {
            if (lower((unsigned char)path.p[i]) != lower((unsigned char)e->prefix[i])) {
                return false;
            }
        }
    } else if (memcmp(path.p, e->prefix, e->prefix_len) != 0) {
        return false;
    }
    return path.len == e->prefix_len || e->prefix[e->prefix_len - 1] == '/' ||
           normpath_is_boundary(path.p[e->prefix_len]);
}

static const struct route_conf *group_match(const struct host_group *g, struct str path)
{
    for (size_t i = 0; i < g->n; i++) {
        if (prefix_matches(&g->entries[i], path)) {
            return g->entries[i].r;
        }
    }
    return NULL;
}

const struct route_conf *route_match(const struct route_table *t, struct str host, struct str path)
{
    const struct route_conf *r;

    if (!t) {
        return NULL;
    }
    if (!path.p) {
        path = STR("");
    }
    for (size_t i = 0; i < path.len; i++) {
        if (path.p[i] == '?' || path.p[i] == '#') {
            path.len = i;
            break;
        }
    }
    host = route_host_strip(host);
    if (host.len > 0) {
        const struct host_group *g = find_group(t->exact, t->nexact, host);
        if (g && (r = group_match(g, path))) {
            return r;
        }
        /* Wildcards: try each suffix that starts at a dot, leftmost (longest)
         * first; ".example.com" needs at least one byte of label before it. */
        for (size_t i = 1; t->nwild > 0 && i < host.len; i++) {
            if (host.p[i] != '.') {
                continue;
            }
            g = find_group(t->wild, t->nwild, (struct str){ host.p + i, host.len - i });
            if (g && (r = group_match(g, path))) {
                return r;
            }
        }
    }
    return group_match(&t->any, path);
}

const struct route_conf *route_match_config(const struct config *c, struct str host,
                                            struct str path)
{
    return c ? route_match(c->route_table, host, path) : NULL;
}
