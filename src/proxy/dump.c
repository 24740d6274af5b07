/* proxy/dump.c - `gatehouse check --dump`: the effective configuration as YAML,
 * the way serve will run it (like `nginx -T`): every default filled in, paths
 * resolved, each route's policy named, and no secret. Secrets never leave the
 * process through here: an inline client_secret prints as "(redacted)", a
 * secret or key file prints as its path only, and user:password in a URL is
 * replaced. Strings are written double-quoted with JSON escapes (valid YAML),
 * so a value can never break the document. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "accesslog.h"
#include "authn/authn.h"
#include "authn/oidc.h"
#include "authn/session.h"
#include "config.h"
#include "access/access.h"
#include "policy/policy.h"
#include "proxy.h"

#define REDACTED "(redacted)"

static void quoted(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            fputc('\\', f);
            fputc(*p, f);
        } else if (*p < 0x20 || *p == 0x7f) {
            fprintf(f, "\\u%04x", *p);
        } else {
            fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* "key: " at depth (two spaces a level); item: "- " in place of the last indent. */
static void key(FILE *f, int depth, bool item, const char *k)
{
    for (int i = 0; i < depth - (item ? 1 : 0); i++) {
        fputs("  ", f);
    }
    fputs(item ? "- " : "", f);
    fprintf(f, "%s:", k);
}

static void kv_str(FILE *f, int depth, bool item, const char *k, const char *v)
{
    key(f, depth, item, k);
    fputc(' ', f);
    quoted(f, v);
    fputc('\n', f);
}

static void kv_raw(FILE *f, int depth, bool item, const char *k, const char *fmt, ...) PRINTF(5, 6);
static void kv_raw(FILE *f, int depth, bool item, const char *k, const char *fmt, ...)
{
    va_list ap;
    key(f, depth, item, k);
    fputc(' ', f);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
}

static void kv_bool(FILE *f, int depth, const char *k, bool v)
{
    kv_raw(f, depth, false, k, "%s", v ? "true" : "false");
}

/* The largest unit that divides ms: "8h", "250ms". */
static void kv_dur(FILE *f, int depth, const char *k, uint64_t ms)
{
    static const struct {
        uint64_t ms;
        const char *unit;
    } units[] = { { 86400000, "d" }, { 3600000, "h" }, { 60000, "m" }, { 1000, "s" } };
    for (size_t i = 0; ms && i < sizeof units / sizeof units[0]; i++) {
        if (ms % units[i].ms == 0) {
            kv_raw(f, depth, false, k, "%llu%s", (unsigned long long)(ms / units[i].ms),
                   units[i].unit);
            return;
        }
    }
    kv_raw(f, depth, false, k, "%llums", (unsigned long long)ms);
}

static void kv_size(FILE *f, int depth, const char *k, uint64_t n)
{
    if (n && n % (1024 * 1024) == 0) {
        kv_raw(f, depth, false, k, "%llum", (unsigned long long)(n >> 20));
    } else if (n && n % 1024 == 0) {
        kv_raw(f, depth, false, k, "%lluk", (unsigned long long)(n >> 10));
    } else {
        kv_raw(f, depth, false, k, "%llu", (unsigned long long)n);
    }
}

/* A URL with any user:password@ replaced. */
static void kv_url(FILE *f, int depth, bool item, const char *k, const char *url)
{
    const char *scheme = url ? strstr(url, "://") : NULL;
    const char *host = scheme ? scheme + 3 : NULL;
    size_t hl = host ? strcspn(host, "/?#") : 0;
    const char *at = host ? memrchr(host, '@', hl) : NULL;
    if (!at) {
        kv_str(f, depth, item, k, url);
        return;
    }
    char buf[1024];
    snprintf(buf, sizeof buf, "%.*s" REDACTED "%s", (int)(host - url), url, at);
    kv_str(f, depth, item, k, buf);
}

static void dump_listen(FILE *f, const struct config *c)
{
    static const char *const cc[] = { "none", "optional", "required" };
    fputs("listen:\n", f);
    for (size_t i = 0; i < c->nlisteners; i++) {
        const struct listener_conf *l = &c->listeners[i];
        kv_str(f, 2, true, "address", l->address);
        if (l->tls) {
            key(f, 2, false, "tls");
            fputc('\n', f);
            kv_str(f, 3, false, "cert", l->certs[0].cert_file);
            kv_str(f, 3, false, "key", l->certs[0].key_file);
            key(f, 3, false, "certificates");
            fputs(l->ncerts > 1 ? "\n" : " []\n", f);
            for (size_t k = 1; k < l->ncerts; k++) {
                kv_str(f, 5, true, "cert", l->certs[k].cert_file);
                kv_str(f, 5, false, "key", l->certs[k].key_file);
            }
            kv_str(f, 3, false, "client_ca", l->client_ca);
            kv_str(f, 3, false, "client_crl", l->client_crl);
            kv_raw(f, 3, false, "client_cert", "%s", cc[l->client_cert]);
            kv_raw(f, 3, false, "verify_depth", "%u", l->verify_depth);
            key(f, 3, false, "match_subject_alt_names");
            if (l->nsan_patterns == 0) {
                fputs(" null\n", f);
            } else {
                static const char *const tags[] = { "DNS", "email", "URI", "IP" };
                static const char *const keys[] = { "dns", "email", "uri", "ip" };
                fputc('\n', f);
                for (size_t t = 0; t < 4; t++) {
                    size_t tl = strlen(tags[t]);
                    bool any = false;
                    for (size_t k = 0; k < l->nsan_patterns; k++) {
                        const char *p = l->san_patterns[k];
                        if (strncmp(p, tags[t], tl) == 0 && p[tl] == ':') {
                            if (!any) {
                                key(f, 4, false, keys[t]);
                                fputc('\n', f);
                                any = true;
                            }
                            fputs("          - ", f);
                            quoted(f, p + tl + 1);
                            fputc('\n', f);
                        }
                    }
                }
            }
        } else {
            kv_raw(f, 2, false, "tls", "null");
        }
        kv_str(f, 2, false, "public_url", l->public_url);
        kv_bool(f, 2, "trust_request_id", l->trust_request_id);
        kv_bool(f, 2, "trust_forwarded", l->trust_forwarded);
    }
    if (c->nlisteners == 0) {
        fputs("  []\n", f);
    }
}

static void dump_proxy(FILE *f, const struct config *c)
{
    if (c->admin_address) {
        fputs("admin:\n", f);
        kv_str(f, 1, false, "address", c->admin_address);
    } else {
        fputs("admin: null\n", f);
    }
    kv_raw(f, 0, false, "workers", "%u", c->workers);
    fputs("limits:\n", f);
    kv_size(f, 1, "header_bytes", c->limits.header_bytes);
    kv_raw(f, 1, false, "headers", "%llu", (unsigned long long)c->limits.headers);
    kv_size(f, 1, "body_bytes", c->limits.body_bytes);
    kv_size(f, 1, "uri_bytes", c->limits.uri_bytes);
    kv_raw(f, 1, false, "connections", "%llu", (unsigned long long)c->limits.connections);
    fputs("timeouts:\n", f);
    kv_dur(f, 1, "header", c->timeouts.header_ms);
    kv_dur(f, 1, "idle", c->timeouts.idle_ms);
    kv_dur(f, 1, "body", c->timeouts.body_ms);
    kv_dur(f, 1, "upstream_connect", c->timeouts.upstream_connect_ms);
    kv_dur(f, 1, "upstream_response", c->timeouts.upstream_response_ms);
    kv_dur(f, 1, "drain", c->timeouts.drain_ms);
    fputs("access_log:\n", f);
    kv_str(f, 1, false, "file", c->access_log ? c->access_log : "off");
    key(f, 1, false, "fields");
    fputs(" [", f);
    for (int i = 0, n = 0; i < ACCESSLOG_F_COUNT; i++) {
        if (c->access_log_fields & (1u << i)) {
            fprintf(f, "%s%s", n++ ? ", " : "", accesslog_field_names[i]);
        }
    }
    fputs("]\n", f);
    kv_raw(f, 0, false, "log_level", "%s", c->log_level);
    fputs("state:\n", f);
    kv_str(f, 1, false, "sqlite", c->state_sqlite);
    if (c->state_postgres != NULL) {
        /* Never a password: they belong in state.password_file. */
        char *safe = spg_conninfo_redacted(c->state_postgres);
        kv_str(f, 1, false, "postgres", safe);
        free(safe);
        const struct conf_node *st = conf_get(c->doc ? c->doc->root : NULL, "state");
        struct conf_diag d = { 0 };
        struct spg_conf pg;
        if (spg_conf_parse(&d, st, c->file, &pg)) {
            kv_str(f, 1, false, "password_file", pg.password_file);
            kv_raw(f, 1, false, "migrate", "%s", pg.migrate ? "true" : "false");
            kv_raw(f, 1, false, "staleness", "%llums", (unsigned long long)pg.staleness_ms);
            kv_raw(f, 1, false, "query_timeout", "%llums", (unsigned long long)pg.query_timeout_ms);
        }
        spg_conf_fini(&pg);
        conf_diag_fini(&d);
    }
    fputs("devices:\n", f);
    kv_dur(f, 1, "cache_ttl", c->devices_cache_ttl_ms);
    if (c->devices_ca_cert) {
        fputs("  enroll_ca:\n", f);
        kv_str(f, 2, false, "cert", c->devices_ca_cert);
        kv_str(f, 2, false, "key", c->devices_ca_key);
    } else {
        kv_raw(f, 1, false, "enroll_ca", "null");
    }
}

static void dump_identity(FILE *f, const struct config *c, const struct access_settings *g)
{
    struct authn_settings a = { 0 };
    const struct conf_node *root = c->doc ? c->doc->root : NULL;
    const struct conf_node *idps = conf_get(root, "identity_providers");
    static const char *const auth_names[] = { "client_secret_basic", "client_secret_post",
                                              "private_key_jwt" };

    if (g->an) {
        authn_settings(g->an, &a);
    }
    if (a.session) {
        const struct session_conf *s = a.session;
        fputs("session:\n", f);
        kv_str(f, 1, false, "cookie", s->cookie_name ? s->cookie_name : "gatehouse_session");
        kv_dur(f, 1, "idle_timeout", s->idle_timeout_ms);
        kv_dur(f, 1, "max_lifetime", s->max_lifetime_ms);
        kv_bool(f, 1, "refresh", s->refresh);
        kv_dur(f, 1, "refresh_before", s->refresh_before_ms);
        /* The key's path only: its 32 bytes stay in the file. */
        if (s->key_file) {
            kv_str(f, 1, false, "key_file", s->key_file);
        } else if (c->state_sqlite) {
            /* session_store_open's default: next to the database. */
            const char *slash = strrchr(c->state_sqlite, '/');
            char *path = slash ? xasprintf("%.*s/session.key", (int)(slash - c->state_sqlite),
                                           c->state_sqlite)
                               : xstrdup("./session.key");
            kv_str(f, 1, false, "key_file", path);
            free(path);
        } else {
            kv_raw(f, 1, false, "key_file", "null");
        }
    }
    fputs(a.nidps ? "identity_providers:\n" : "identity_providers: []\n", f);
    for (size_t i = 0; i < a.nidps; i++) {
        const struct oidc_provider *p = authn_provider(g->an, i);
        const struct conf_node *n =
            idps && idps->type == CONF_SEQ && i < idps->n ? idps->items[i] : NULL;
        const struct conf_node *sf = conf_get(n, "client_secret_file");
        const struct conf_node *pk = conf_get(n, "private_key");
        kv_str(f, 2, true, "id", p->id);
        kv_raw(f, 2, false, "type", "oidc");
        kv_url(f, 2, false, "issuer", p->issuer);
        kv_str(f, 2, false, "client_id", p->client_id);
        if (sf && sf->type == CONF_SCALAR) {
            char *path = conf_path_resolve(c->file, sf->value);
            kv_str(f, 2, false, "client_secret_file", path);
            free(path);
        } else if (p->client_secret) {
            kv_str(f, 2, false, "client_secret", REDACTED);
        }
        kv_raw(f, 2, false, "token_endpoint_auth", "%s", auth_names[p->auth]);
        if (pk && pk->type == CONF_SCALAR) {
            char *path = conf_path_resolve(c->file, pk->value);
            kv_str(f, 2, false, "private_key", path);
            free(path);
        }
        kv_str(f, 2, false, "scopes", p->scopes);
        key(f, 2, false, "claims");
        fputc('\n', f);
        kv_str(f, 3, false, "email", p->claim_email);
        kv_str(f, 3, false, "name", p->claim_name);
        kv_str(f, 3, false, "groups", p->claim_groups);
        kv_bool(f, 2, "groups_from_userinfo", p->groups_from_userinfo);
        kv_dur(f, 2, "clock_skew", (uint64_t)p->clock_skew_s * 1000);
        kv_str(f, 2, false, "redirect_host", p->redirect_host);
        key(f, 2, false, "post_logout_redirect_uri");
        fputs(" [", f);
        for (size_t k = 0; k < p->npost_logout_redirect_uris; k++) {
            fputs(k ? ", " : "", f);
            quoted(f, p->post_logout_redirect_uris[k]);
        }
        fputs("]\n", f);
        kv_str(f, 2, false, "display_name", p->display_name);
        kv_bool(f, 2, "accept_id_tokens", p->accept_id_tokens);
        kv_bool(f, 2, "require_verified_email", p->require_verified_email);
        kv_bool(f, 2, "bare_user_ids", p->bare_user_ids);
        kv_bool(f, 2, "require_certificate_bound_tokens", p->require_bound_tokens);
        key(f, 2, false, "audiences");
        fputs(" [", f);
        for (size_t k = 0; k < p->naudiences; k++) {
            fputs(k ? ", " : "", f);
            quoted(f, p->audiences[k]);
        }
        fputs("]\n", f);
        kv_bool(f, 2, "allow_insecure_issuer", p->allow_insecure_issuer);
    }
    fputs("upstream_identity:\n", f);
    fputs("  headers:\n", f);
    kv_str(f, 2, false, "user", g->hdr_user);
    kv_str(f, 2, false, "email", g->hdr_email);
    kv_str(f, 2, false, "groups", g->hdr_groups);
    kv_str(f, 2, false, "device", g->hdr_device);
    if (a.assertion_key) {
        fputs("  assertion:\n", f);
        kv_str(f, 2, false, "header", a.assertion_header);
        kv_str(f, 2, false, "key", a.assertion_key); /* the path, never the key */
        kv_str(f, 2, false, "issuer", a.assertion_issuer);
        kv_dur(f, 2, "ttl", (uint64_t)a.assertion_ttl_s * 1000);
        kv_dur(f, 2, "keep", (uint64_t)a.assertion_keep_s * 1000);
    } else {
        fputs("  assertion: null  # no key and no state.sqlite: no assertion\n", f);
    }
    if (g->opa && g->opa->url) {
        fputs("opa:\n", f);
        kv_url(f, 1, false, "url", g->opa->url);
        kv_dur(f, 1, "timeout", g->opa->timeout_ms);
        kv_dur(f, 1, "cache_ttl", g->opa->cache_ttl_ms);
        kv_raw(f, 1, false, "on_error", "%s",
               g->opa->on_error == OPA_ON_ERROR_ALLOW ? "allow" : "deny");
    } else {
        fputs("opa: null\n", f);
    }
    if (g->dl) {
        fputs("decision_log:\n", f);
        kv_str(f, 1, false, "file", g->dl->file);
        kv_str(f, 1, false, "sqlite", g->dl->sqlite);
        kv_raw(f, 1, false, "sync", "%s", g->dl->sync == DECISION_LOG_STRICT ? "strict" : "batch");
        kv_dur(f, 1, "retain", g->dl->retain_ms);
        kv_raw(f, 1, false, "queue", "%llu", (unsigned long long)g->dl->queue);
        kv_dur(f, 1, "flush_interval", g->dl->flush_interval_ms);
        kv_raw(f, 1, false, "max_pending", "%llu", (unsigned long long)g->dl->max_pending);
        if (g->dl->ckpt_key) {
            fputs("  checkpoint:\n", f);
            kv_str(f, 2, false, "key", g->dl->ckpt_key); /* the path, never the key */
            kv_raw(f, 2, false, "every", "%llu", (unsigned long long)g->dl->ckpt_every);
            kv_dur(f, 2, "interval", g->dl->ckpt_interval_ms);
            kv_str(f, 2, false, "file", g->dl->ckpt_file);
            kv_str(f, 2, false, "command", g->dl->ckpt_command);
            kv_bool(f, 2, "syslog", g->dl->ckpt_syslog);
        } else {
            fputs("  checkpoint: null  # no signed checkpoints\n", f);
        }
    } else {
        fputs("decision_log: null\n", f);
    }
    fputs("pages:\n", f);
    kv_str(f, 1, false, "dir", a.pages_dir);
    kv_bool(f, 1, "show_deny_reason", g->show_deny_reason);
}

static void dump_routes(FILE *f, const struct config *c)
{
    static const char *const bal[] = { "round_robin", "least_conn", "ip_hash" };
    fputs(c->nroutes ? "routes:\n" : "routes: []\n", f);
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_conf *r = &c->routes[i];
        const struct upstream_conf *u = &r->upstream;
        char host[300];
        kv_str(f, 2, true, "name", r->name);
        fputs("    match:\n", f);
        if (r->host) {
            snprintf(host, sizeof host, "%s%s", r->host_wildcard ? "*" : "", r->host);
        }
        kv_str(f, 3, false, "host", r->host ? host : NULL);
        kv_str(f, 3, false, "path_prefix", r->path_prefix ? r->path_prefix : "/");
        kv_bool(f, 3, "path_case_insensitive", r->path_case_insensitive);
        fputs("    upstream:\n", f);
        fputs("      servers:\n", f);
        for (size_t k = 0; k < u->nservers; k++) {
            fputs("        - ", f);
            quoted(f, u->servers[k].url);
            fputc('\n', f);
        }
        kv_raw(f, 3, false, "balance", "%s", bal[u->balance]);
        kv_str(f, 3, false, "ca_file", u->ca_file);
        kv_bool(f, 3, "tls_verify", u->tls_verify);
        if (u->client_cert || u->server_name) {
            fputs("      tls:\n", f);
            kv_str(f, 4, false, "cert", u->client_cert);
            kv_str(f, 4, false, "key", u->client_key);
            kv_str(f, 4, false, "server_name", u->server_name);
        } else {
            kv_raw(f, 3, false, "tls", "null");
        }
        kv_raw(f, 3, false, "max_idle", "%u", u->max_idle);
        kv_raw(f, 3, false, "max_conns", "%u", u->max_conns);
        kv_raw(f, 3, false, "max_fails", "%u", u->max_fails);
        kv_dur(f, 3, "fail_timeout", u->fail_timeout_ms);
        if (u->health_path) {
            fputs("      health_check:\n", f);
            kv_str(f, 4, false, "path", u->health_path);
            kv_dur(f, 4, "interval", u->health_interval_ms);
        } else {
            fputs("      health_check: null\n", f);
        }
        kv_raw(f, 3, false, "retries", "%u", u->retries);
        kv_bool(f, 2, "websocket", r->websocket);
        kv_raw(f, 2, false, "encoded_slashes", "%s", r->encoded_slashes_pass ? "pass" : "reject");
        fputs("    headers:\n", f);
        kv_bool(f, 3, "allow_underscores", r->allow_underscores);
        kv_bool(f, 3, "allow_override_headers", r->allow_override_headers);
        kv_str(f, 2, false, "public_url", r->public_url);
        /* The policy that decides, as the loader resolved it (serve's). */
        fputs("    policy:\n", f);
        if (r->policy_kind == ROUTE_POLICY_FILE) {
            kv_str(f, 3, false, "file", r->policy_file);
        } else if (r->policy_kind == ROUTE_POLICY_PUBLIC) {
            kv_raw(f, 3, false, "builtin", "public  # everyone, no sign-in");
        } else {
            kv_raw(f, 3, false, "builtin", "any-signed-in  # %s",
                   r->allow_any_authenticated ? "allow_any_authenticated: true"
                                              : "no policy file: any signed-in user");
        }
        key(f, 2, false, "identity_providers");
        if (r->nidps == 0) {
            fputs(" all\n", f);
        } else {
            fputs(" [", f);
            for (size_t k = 0; k < r->nidps; k++) {
                fputs(k ? ", " : "", f);
                quoted(f, r->idps[k]);
            }
            fputs("]\n", f);
        }
    }
}

void proxy_dump_config(const struct config *c, void *out)
{
    FILE *f = out;
    struct access_settings g;
    access_settings(c, &g);
    fputs("# gatehouse check --dump: the effective configuration of ", f);
    quoted(f, c->file);
    fputs("\n# (defaults filled in, paths resolved, secrets redacted)\n", f);
    dump_listen(f, c);
    dump_proxy(f, c);
    dump_identity(f, c, &g);
    dump_routes(f, c);
}
