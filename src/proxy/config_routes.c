/* proxy/config_routes.c - the "routes" section: names, match (host, path_prefix),
 * upstream servers and their TLS, health checks and limits, identity providers,
 * the policy each route gets; then the cross-checks over all routes (duplicate
 * names, the same host and prefix twice), linear in the number of routes. */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_int.h"
#include "core/normpath.h"

#define MAX_ROUTE_NAME 64

static const char *const encoded_slashes_names[] = { "reject", "pass", NULL };
static const char *const balance_names[] = { "round_robin", "least_conn", "ip_hash", NULL };

/* Key tables (core/conf.h): name, type, where it goes, bounds, default. */
#define OWN(name)                                                                                  \
    {                                                                                              \
        name, CONF_K_OWN, 0, 0, 0, 0, NULL                                                         \
    }
#define ROUTE_BOOL(name, field)                                                                    \
    {                                                                                              \
        name, CONF_K_BOOL, offsetof(struct route_conf, field), 0, 0, 0, NULL                       \
    }
static const struct conf_key route_table[] = {
    OWN("name"),
    OWN("match"),
    OWN("upstream"),
    ROUTE_BOOL("websocket", websocket),
    ROUTE_BOOL("public", public_),
    ROUTE_BOOL("allow_any_authenticated", allow_any_authenticated),
    { "policy", CONF_K_PATH, offsetof(struct route_conf, policy_file), 0, 0, 0, NULL },
    OWN("identity_providers"),
    OWN("encoded_slashes"),
    OWN("headers"),
    OWN("public_url"),
};
static const struct conf_key route_headers_table[] = {
    ROUTE_BOOL("allow_underscores", allow_underscores),
    ROUTE_BOOL("allow_override_headers", allow_override_headers),
};
static const struct conf_key match_table[] = {
    OWN("host"),
    OWN("path_prefix"),
    ROUTE_BOOL("path_case_insensitive", path_case_insensitive),
};
#define UP(name, type, field, min, max, def)                                                       \
    {                                                                                              \
        name, type, offsetof(struct upstream_conf, field), min, max, def, NULL                     \
    }
static const struct conf_key upstream_table[] = {
    OWN("servers"),
    { "balance", CONF_K_ENUM, offsetof(struct upstream_conf, balance), 0, 0, BALANCE_ROUND_ROBIN,
      balance_names },
    UP("ca_file", CONF_K_PATH, ca_file, 0, 0, 0),
    UP("tls_verify", CONF_K_BOOL, tls_verify, 0, 0, true),
    UP("max_idle", CONF_K_U32, max_idle, 0, 100000, 64),
    UP("max_conns", CONF_K_U32, max_conns, 0, 1000000, 0),
    UP("max_fails", CONF_K_U32, max_fails, 0, 1000, 3),
    UP("fail_timeout", CONF_K_DURATION, fail_timeout_ms, 0, 3600000, 10000),
    OWN("health_check"),
    UP("retries", CONF_K_U32, retries, 0, 10, 1),
    OWN("tls"),
};
static const struct conf_key upstream_tls_table[] = {
    OWN("ca"), /* ca_file by another name: not both */
    OWN("cert"),
    OWN("key"),
    OWN("server_name"),
};
static const struct conf_key health_table[] = {
    OWN("path"),
    UP("interval", CONF_K_DURATION, health_interval_ms, 100, 3600000, 5000),
};
_Static_assert(sizeof(enum balance) == sizeof(int), "balance is read as an int");

/* upstream.tls: {ca, cert, key, server_name}: mTLS towards backends that require
 * Gatehouse's own client certificate. "ca" is ca_file by another name. */
static void read_upstream_tls(struct loader *L, const struct conf_node *m, struct upstream_conf *u)
{
    const struct conf_node *t = conf_get(m, "tls");
    const char *s;
    if (!t || t->type == CONF_NULL) {
        return;
    }
    if (!conf_read_table(L->d, t, "\"upstream.tls\"", upstream_tls_table,
                         CONF_TABLE_LEN(upstream_tls_table), u, L->file)) {
        return;
    }
    if ((s = conf_nonempty(L->d, t, "ca"))) {
        if (u->ca_file) {
            conf_error(L->d, conf_get(t, "ca"), "give \"ca_file\" or \"tls.ca\", not both");
        } else {
            u->ca_file = cfg_resolve(L, s);
            cfg_check_ca_file(L, t, "ca", u->ca_file);
        }
    }
    const char *cert = conf_nonempty(L->d, t, "cert"), *key = conf_nonempty(L->d, t, "key");
    if (cert && key) {
        struct tls_cert_conf tc = { cfg_resolve(L, cert), cfg_resolve(L, key) };
        u->client_cert = tc.cert_file;
        u->client_key = tc.key_file;
        cfg_check_cert_pair(L, t, &tc);
    } else if (cert || key) {
        conf_error(L->d, t, "\"upstream.tls\" has \"%s\" but no \"%s\"", cert ? "cert" : "key",
                   cert ? "key" : "cert");
    }
    if ((s = conf_nonempty(L->d, t, "server_name"))) {
        if (!cfg_valid_hostname(s)) {
            conf_error(L->d, conf_get(t, "server_name"), "\"server_name\" must be a DNS name");
        } else {
            u->server_name = xstrdup(s);
        }
    }
}

/* ---- routes ---- */

static bool valid_route_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_ROUTE_NAME) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.')) {
            return false;
        }
    }
    return true;
}

static bool valid_match_host(const char *s)
{
    unsigned char buf[16];
    size_t n = strlen(s);

    if (n > 2 && s[0] == '[' && s[n - 1] == ']') {
        char tmp[64];
        if (n - 2 >= sizeof tmp) {
            return false;
        }
        memcpy(tmp, s + 1, n - 2);
        tmp[n - 2] = '\0';
        return inet_pton(AF_INET6, tmp, buf) == 1;
    }
    if (s[0] == '*' && s[1] == '.') {
        return cfg_valid_hostname(s + 2);
    }
    return cfg_valid_hostname(s);
}

static bool valid_path_prefix(const char *s)
{
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '?' || *p == '#') {
            return false;
        }
    }
    return s[0] == '/';
}

/* A health-check target: a path, optionally with a query, that can go on a
 * request line as is. */
static bool valid_request_target(const char *s)
{
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '#') {
            return false;
        }
    }
    return s[0] == '/';
}

/* A prefix the normalised request path can start with: its own normal form
 * (a prefix "/a/../b" or "/%61" would never match). */
static bool normal_path_prefix(const char *s)
{
    size_t len = strlen(s), n = 0;
    char *out = xmalloc(len + 1);
    bool ok = normpath(s, len, out, NORMPATH_KEEP_ENCODED_SLASH, &n, NULL) == NORMPATH_OK &&
              n == len && memcmp(out, s, len) == 0;
    free(out);
    return ok;
}

static char *lower_dup(const char *s)
{
    char *r = xstrdup(s);
    for (char *p = r; *p; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char)(*p - 'A' + 'a');
        }
    }
    return r;
}

static void read_match(struct loader *L, const struct conf_node *m, struct route_conf *r)
{
    const char *host = NULL, *prefix = NULL;

    if (!conf_read_table(L->d, m, "\"match\"", match_table, CONF_TABLE_LEN(match_table), r,
                         L->file)) {
        return;
    }
    if (conf_string(L->d, m, "host", &host) && host) {
        if (!valid_match_host(host)) {
            conf_error(L->d, conf_get(m, "host"),
                       "\"host\" must be a host name such as app.example.com or *.example.com "
                       "(no port), got \"%s\"",
                       host);
        } else if (host[0] == '*') {
            r->host = lower_dup(host + 1);
            r->host_wildcard = true;
        } else {
            r->host = lower_dup(host);
        }
    }
    if (conf_string(L->d, m, "path_prefix", &prefix) && prefix) {
        if (!valid_path_prefix(prefix)) {
            conf_error(L->d, conf_get(m, "path_prefix"),
                       "\"path_prefix\" must start with \"/\" and hold no spaces, \"?\" or \"#\", "
                       "got \"%s\"",
                       prefix);
        } else if (!normal_path_prefix(prefix)) {
            conf_error(L->d, conf_get(m, "path_prefix"),
                       "\"path_prefix\" must be a normalised path (no \".\" or \"..\" "
                       "segments, no \"//\", no %%-escape of a letter, digit or \"-._~\", "
                       "escapes in upper case), got \"%s\"",
                       prefix);
        } else {
            free(r->path_prefix);
            r->path_prefix = xstrdup(prefix);
        }
    }
    if (r->path_case_insensitive && r->path_prefix) {
        normpath_fold_case(r->path_prefix, strlen(r->path_prefix));
    }
}

/* Parses an upstream URL: http(s)://host[:port][/]. Returns NULL or a reason. */
static const char *parse_upstream_url(const char *url, struct upstream_server *s)
{
    const char *p, *hstart, *hend, *end;
    unsigned char buf[16];
    uint64_t port;
    size_t hlen;

    if (strncmp(url, "http://", 7) == 0) {
        s->tls = false;
        p = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        s->tls = true;
        p = url + 8;
    } else {
        return "must start with http:// or https://";
    }
    end = p + strlen(p);
    if (end > p && end[-1] == '/') {
        end--;
    }
    if (memchr(p, '/', (size_t)(end - p)) || memchr(p, '?', (size_t)(end - p)) ||
        memchr(p, '#', (size_t)(end - p)) || memchr(p, '@', (size_t)(end - p))) {
        return "must not have a path, query or user info (only scheme, host and port)";
    }
    hstart = p;
    if (*p == '[') {
        hend = memchr(p, ']', (size_t)(end - p));
        if (!hend) {
            return "has an unterminated IPv6 address";
        }
        hstart = p + 1;
        p = hend + 1;
    } else {
        hend = memchr(p, ':', (size_t)(end - p));
        if (!hend) {
            hend = end;
        }
        p = hend;
    }
    hlen = (size_t)(hend - hstart);
    if (hlen == 0) {
        return "has no host";
    }
    if (hlen >= sizeof s->host) {
        return "has a host name that is too long";
    }
    memcpy(s->host, hstart, hlen);
    s->host[hlen] = '\0';
    if (hstart != url && hstart[-1] == '[') {
        if (inet_pton(AF_INET6, s->host, buf) != 1) {
            return "has an invalid IPv6 address";
        }
    } else if (!cfg_valid_hostname(s->host)) {
        return "has an invalid host name";
    }
    if (p == end) {
        s->port = s->tls ? 443 : 80;
        return NULL;
    }
    if (*p != ':' || !str_to_u64((struct str){ p + 1, (size_t)(end - p - 1) }, 1, 65535, &port)) {
        return "has an invalid port (expected 1 to 65535)";
    }
    s->port = (uint16_t)port;
    return NULL;
}

static void read_upstream(struct loader *L, const struct conf_node *m, struct route_conf *r,
                          const struct conf_node *route_node)
{
    struct upstream_conf *u = &r->upstream;
    const struct conf_node *servers, *hc;

    if (!conf_read_table(L->d, m, "\"upstream\"", upstream_table, CONF_TABLE_LEN(upstream_table), u,
                         L->file)) {
        return;
    }
    if (u->ca_file) {
        cfg_check_ca_file(L, m, "ca_file", u->ca_file);
    }
    servers = conf_get(m, "servers");
    if (!servers || (servers->type == CONF_SEQ && servers->n == 0)) {
        conf_error(L->d, servers ? servers : m, "route \"%s\" has no upstream servers",
                   r->name ? r->name : "?");
    } else if (servers->type == CONF_SCALAR) {
        /* A single server written without brackets is a common slip; accept it. */
        u->servers = xcalloc(1, sizeof *u->servers);
        const char *why = parse_upstream_url(servers->value, &u->servers[0]);
        if (why) {
            conf_error(L->d, servers, "upstream server \"%s\" %s", servers->value, why);
            free(u->servers);
            u->servers = NULL;
        } else {
            u->servers[0].url = xstrdup(servers->value);
            u->servers[0].weight = 1;
            u->nservers = 1;
        }
    } else if (conf_seq(L->d, servers, "\"servers\"")) {
        if (servers->n > UPSTREAM_MAX_SERVERS) {
            conf_error(L->d, servers,
                       "route \"%s\" has %zu upstream servers, at most %d are "
                       "supported",
                       r->name ? r->name : "?", servers->n, UPSTREAM_MAX_SERVERS);
        } else {
            u->servers = xcalloc(servers->n, sizeof *u->servers);
            for (size_t i = 0; i < servers->n; i++) {
                const struct conf_node *sn = servers->items[i];
                struct upstream_server *us = &u->servers[u->nservers];
                const char *why;
                if (sn->type != CONF_SCALAR) {
                    conf_error(L->d, sn,
                               "an upstream server must be a URL such as "
                               "http://127.0.0.1:9001, got %s",
                               sn->type == CONF_MAP   ? "a map"
                               : sn->type == CONF_SEQ ? "a list"
                                                      : "nothing");
                    continue;
                }
                why = parse_upstream_url(sn->value, us);
                if (why) {
                    conf_error(L->d, sn, "upstream server \"%s\" %s", sn->value, why);
                    continue;
                }
                for (size_t j = 0; j < u->nservers; j++) {
                    if (u->servers[j].tls == us->tls && u->servers[j].port == us->port &&
                        strcasecmp(u->servers[j].host, us->host) == 0) {
                        conf_error(L->d, sn,
                                   "upstream server \"%s\" is listed twice in route "
                                   "\"%s\"",
                                   sn->value, r->name ? r->name : "?");
                        why = "dup";
                        break;
                    }
                }
                if (why) {
                    continue;
                }
                us->url = xstrdup(sn->value);
                us->weight = 1;
                u->nservers++;
            }
        }
    }
    (void)route_node;
    read_upstream_tls(L, m, u);
    hc = conf_get(m, "health_check");
    /* The interval's default applies without a health_check too. */
    if (conf_read_table(L->d, hc, "\"health_check\"", health_table, CONF_TABLE_LEN(health_table), u,
                        L->file) &&
        hc) {
        const char *path = NULL;
        if (conf_string(L->d, hc, "path", &path)) {
            if (!path) {
                conf_error(L->d, hc, "\"health_check\" needs \"path\", such as /healthz");
            } else if (!valid_request_target(path)) {
                conf_error(L->d, conf_get(hc, "path"),
                           "\"path\" must start with \"/\" and hold no spaces or control "
                           "characters, got \"%s\"",
                           path);
            } else {
                u->health_path = xstrdup(path);
            }
        }
    }
}

static void read_route_idps(struct loader *L, const struct conf_node *n, struct route_conf *r,
                            const struct conf_node *root)
{
    const struct conf_node *defined = conf_get(root, "identity_providers");

    if (!conf_seq(L->d, n, "\"identity_providers\"")) {
        return;
    }
    r->idps = xcalloc(n->n ? n->n : 1, sizeof *r->idps);
    for (size_t i = 0; i < n->n; i++) {
        const struct conf_node *e = n->items[i];
        bool found = false;
        if (e->type != CONF_SCALAR) {
            conf_error(L->d, e, "an \"identity_providers\" item must be an identity provider id");
            continue;
        }
        /* Only ids are cross-checked here; the providers themselves are the
         * authn module's to validate. */
        if (defined && defined->type == CONF_SEQ) {
            for (size_t j = 0; j < defined->n && !found; j++) {
                const struct conf_node *id = conf_get(defined->items[j], "id");
                found = id && id->type == CONF_SCALAR && strcmp(id->value, e->value) == 0;
            }
        }
        if (!found) {
            conf_error(L->d, e, "route \"%s\" uses identity provider \"%s\", which is not defined",
                       r->name ? r->name : "?", e->value);
            continue;
        }
        r->idps[r->nidps++] = xstrdup(e->value);
    }
}

static void read_route(struct loader *L, const struct conf_node *m, const struct conf_node *root)
{
    struct config *c = L->c;
    struct route_conf *r = &c->routes[c->nroutes];
    const struct conf_node *n;
    const char *name = NULL;

    if (!conf_read_table(L->d, m, "a route", route_table, CONF_TABLE_LEN(route_table), r,
                         L->file)) {
        return;
    }
    r->index = c->nroutes++;
    r->line = m->line;
    r->col = m->col;
    r->path_prefix = xstrdup("/");

    if (conf_string(L->d, m, "name", &name)) {
        n = conf_get(m, "name");
        if (!name) {
            conf_error(L->d, m, "route is missing \"name\"");
        } else if (!valid_route_name(name)) {
            conf_error(L->d, n,
                       "route \"name\" must be 1 to %d letters, digits, '.', '_' or '-', got "
                       "\"%s\"",
                       MAX_ROUTE_NAME, name);
        } else {
            size_t first;
            r->name = xstrdup(name);
            if (!cfg_first_seen_add(&L->route_names, name, r->index, &first)) {
                conf_error(L->d, n, "duplicate route name \"%s\" (first at line %d)", name,
                           c->routes[first].line);
            }
        }
    }
    if ((n = conf_get(m, "match")) && n->type != CONF_NULL) {
        read_match(L, n, r);
    }
    n = conf_get(m, "upstream");
    if (!n || n->type == CONF_NULL) {
        conf_error(L->d, m, "route \"%s\" has no upstream servers", r->name ? r->name : "?");
    } else {
        read_upstream(L, n, r, m);
    }
    r->encoded_slashes_pass = conf_enum(L->d, m, "encoded_slashes", encoded_slashes_names) == 1;
    if ((n = conf_get(m, "headers")) && n->type != CONF_NULL) {
        (void)conf_read_table(L->d, n, "\"headers\"", route_headers_table,
                              CONF_TABLE_LEN(route_headers_table), r, L->file);
    }
    if (r->policy_file) {
        n = r->policy_at = conf_get(m, "policy");
        cfg_check_readable(L, n, "policy", n->value, r->policy_file);
    }
    /* The policy this route gets, decided here once for serve, check and
     * every CLI verb: a policy file; else the built-in public policy, unless
     * allow_any_authenticated asks for more; else any signed-in user. */
    r->policy_kind = r->policy_file                              ? ROUTE_POLICY_FILE
                     : r->public_ && !r->allow_any_authenticated ? ROUTE_POLICY_PUBLIC
                                                                 : ROUTE_POLICY_SIGNED_IN;
    if ((n = conf_get(m, "identity_providers"))) {
        read_route_idps(L, n, r, root);
    }
    r->public_url = cfg_read_public_url(L, m);
}

void cfg_read_routes(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *rs =
        cfg_required_list(L, root, "routes", "at least one route is required");
    struct config *c = L->c;

    if (!rs) {
        return;
    }
    c->routes = xcalloc(rs->n, sizeof *c->routes);
    for (size_t i = 0; i < rs->n; i++) {
        read_route(L, rs->items[i], root);
    }
    /* Two routes on the same host and prefix: the second could never match. */
    struct first_seen seen = { 0 };
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_conf *r = &c->routes[i];
        size_t first;
        /* Host names hold no '|' (validated), so the key is unambiguous. */
        char *key = xasprintf("%c|%s|%s",
                              r->host_wildcard ? 'w'
                              : r->host        ? 'h'
                                               : '-',
                              r->host ? r->host : "", r->path_prefix ? r->path_prefix : "/");
        if (!cfg_first_seen_add(&seen, key, i, &first)) {
            const struct route_conf *o = &c->routes[first];
            /* Same name too: already reported as a duplicate name. */
            if (!(r->name && o->name && strcmp(r->name, o->name) == 0)) {
                /* Point at the route itself; items and routes differ when an item
                 * was not a map. */
                struct conf_node pos = { .file = rs->file, .line = r->line, .col = r->col };
                conf_error(L->d, &pos,
                           "route \"%s\" has the same host and path_prefix as route \"%s\" "
                           "(line %d)",
                           r->name ? r->name : "?", o->name ? o->name : "?", o->line);
            }
        }
        free(key);
    }
    cfg_first_seen_fini(&seen);
}

void cfg_free_route(struct route_conf *r)
{
    free(r->name);
    free(r->host);
    free(r->path_prefix);
    free(r->public_url);
    for (size_t i = 0; i < r->upstream.nservers; i++) {
        free(r->upstream.servers[i].url);
    }
    free(r->upstream.servers);
    free(r->upstream.ca_file);
    free(r->upstream.client_cert);
    free(r->upstream.client_key);
    free(r->upstream.server_name);
    free(r->upstream.health_path);
    free(r->policy_file);
    for (size_t i = 0; i < r->nidps; i++) {
        free(r->idps[i]);
    }
    free(r->idps);
}
