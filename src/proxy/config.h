/* proxy/config.h - the loaded gatehouse.yaml as an immutable snapshot.
 * config_load() parses and validates everything (proxy keys here; authn and
 * policy sections through their modules as they land). A snapshot is shared
 * read-only by every worker and swapped atomically on SIGHUP: in-flight
 * requests keep the snapshot they started with (config_ref/config_unref). */
#ifndef GH_PROXY_CONFIG_H
#define GH_PROXY_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

struct route_table;
struct access_conf;
struct policy;

enum tls_client_cert {
    TLS_CLIENT_CERT_NONE = 0,
    TLS_CLIENT_CERT_OPTIONAL,
    TLS_CLIENT_CERT_REQUIRED
};

struct tls_cert_conf {
    char *cert_file; /* resolved path, PEM chain */
    char *key_file;  /* resolved path */
};

struct listener_conf {
    char *address; /* "127.0.0.1:8443" as written */
    char host[64]; /* numeric host part */
    uint16_t port;
    bool tls;
    /* TLS: the first certificate is the default; others are chosen by SNI
     * from their subjectAltName DNS names (tls.certificates list). */
    struct tls_cert_conf *certs;
    size_t ncerts;
    char *client_ca;  /* resolved path or NULL */
    char *client_crl; /* resolved path or NULL */
    enum tls_client_cert client_cert;
    char **san_patterns; /* tls.match_subject_alt_names as "DNS:pattern", "email:..",
                                 * "URI:..", "IP:.." ('*' matches any run); NULL = any */
    size_t nsan_patterns;
    unsigned verify_depth; /* tls.verify_depth: CA certificates above a client
                                 * certificate (default 1: issued by a client_ca itself) */
    bool trust_request_id; /* keep an incoming X-Request-Id */
    bool trust_forwarded;  /* append to an incoming X-Forwarded-For instead of replacing */
    char *public_url;      /* "https://app.example.com[:port]" browsers use, or NULL */
    int line, col;         /* where it was configured (for messages) */
};

/* Servers per route at most (balance.c keeps a bit per server). */
#define UPSTREAM_MAX_SERVERS 256

enum balance { BALANCE_ROUND_ROBIN = 0, BALANCE_LEAST_CONN, BALANCE_IP_HASH };

struct upstream_server {
    char *url; /* as written: http://127.0.0.1:9001 or https://... */
    bool tls;
    char host[256]; /* host as written, IPv6 without brackets (connect, SNI, Host) */
    uint16_t port;
    uint32_t weight; /* reserved, 1 */
};

struct upstream_conf {
    struct upstream_server *servers;
    size_t nservers;
    enum balance balance;
    char *ca_file;      /* resolved path for https upstreams; NULL = system bundle */
    bool tls_verify;    /* default true */
    char *client_cert;  /* upstream.tls.cert: Gatehouse's client certificate (mTLS), or NULL */
    char *client_key;   /* upstream.tls.key */
    char *server_name;  /* upstream.tls.server_name: SNI and the name verified, or NULL =
                                 * the server's host */
    uint32_t max_idle;  /* keep-alive connections kept per server per worker (default 64) */
    uint32_t max_conns; /* per server per worker, 0 = unlimited */
    uint32_t max_fails; /* passive health: consecutive failures (default 3) */
    uint64_t fail_timeout_ms;    /* passive health: skip time (default 10s) */
    char *health_path;           /* active check path, NULL = off */
    uint64_t health_interval_ms; /* default 5s */
    uint32_t retries; /* extra tries on connect failure for idempotent requests (default 1) */
};

/* The policy a route gets, resolved once when the snapshot is built (config_routes.c):
 * its policy file; else the built-in public policy (public: true without
 * allow_any_authenticated); else the built-in "any signed-in user". serve, check
 * --dump and the CLI verbs all read it from here. */
enum route_policy { ROUTE_POLICY_FILE = 0, ROUTE_POLICY_PUBLIC, ROUTE_POLICY_SIGNED_IN };

struct route_conf {
    char *name;
    char *host;                 /* exact host, "*.example.com", or NULL = any host */
    bool host_wildcard;         /* host starts with "*." (host holds ".example.com") */
    char *path_prefix;          /* default "/"; in normal form (normpath.h) */
    bool path_case_insensitive; /* match.path_case_insensitive: the prefix matches in any
                                 * case and the path is folded to lower case for policy
                                 * and upstream */
    bool encoded_slashes_pass;  /* encoded_slashes: pass (default reject: 400) */
    struct upstream_conf upstream;
    bool websocket;
    bool public_; /* "public: true" */
    bool allow_any_authenticated;
    bool allow_underscores;            /* headers.allow_underscores: pass names with '_' */
    bool allow_override_headers;       /* headers.allow_override_headers: X-Original-URL & co. */
    char *policy_file;                 /* resolved path or NULL */
    enum route_policy policy_kind;     /* which policy decides, resolved once at load */
    const struct conf_node *policy_at; /* the "policy" key (borrowed from doc), or NULL */
    char *public_url; /* origin for sign-in redirects (wins over the listener's), or NULL */
    char **idps;      /* identity provider ids this route accepts (NULL = all) */
    size_t nidps;
    int line, col;
    void *authn;                 /* owned by authn module once wired in (NULL until then) */
    const struct policy *policy; /* the compiled policy_kind (owned by the access part) */
    unsigned metrics_id;         /* set by metrics_bind_config() before the snapshot is published */
    size_t index;                /* position in config.routes (per-route arrays, e.g. balancers) */
};

struct limits_conf {
    uint64_t header_bytes; /* default 32k */
    uint64_t headers;      /* default 100 */
    uint64_t body_bytes;   /* default 10m; 0 = unlimited */
    uint64_t uri_bytes;    /* default 8k */
    uint64_t connections;  /* per worker, default 100000 */
};

struct timeouts_conf {
    uint64_t header_ms;            /* default 10s */
    uint64_t idle_ms;              /* default 60s: keep-alive and websocket idle */
    uint64_t body_ms;              /* default 60s: between body reads */
    uint64_t upstream_connect_ms;  /* default 5s */
    uint64_t upstream_response_ms; /* default 60s */
    uint64_t drain_ms;             /* default 30s: SIGTERM grace */
};

struct config {
    atomic_int refs;
    char *file; /* path it was loaded from */
    struct listener_conf *listeners;
    size_t nlisteners;
    char *admin_address; /* NULL = no admin listener */
    char admin_host[64];
    uint16_t admin_port;
    unsigned workers; /* resolved: "auto" = number of cores */
    struct limits_conf limits;
    struct timeouts_conf timeouts;
    char *access_log;              /* path, "stderr", or NULL = off */
    uint32_t access_log_fields;    /* access_log.fields: mask of accesslog.h fields (default all) */
    char *log_level;               /* "info" default */
    char *state_sqlite;            /* resolved path or NULL */
    uint64_t devices_cache_ttl_ms; /* devices.cache_ttl: how long a worker keeps a registry
                                    * answer when nothing changed (default 30s) */
    char *devices_ca_cert;         /* devices.enroll_ca: the CA `devices enroll --csr` signs */
    char *devices_ca_key;          /* with (resolved paths), or NULL */
    char *state_postgres;          /* connection string or NULL (authn owns the details) */
    struct route_conf *routes;
    size_t nroutes;
    struct conf_doc *doc;            /* kept for the authn/policy modules' sections */
    struct access_conf *authn;       /* the access stage's part (access/access_conf.c), or NULL;
                                 * snapshot.c loads and frees it */
    struct route_table *route_table; /* built by config_load for route_match() (route.h) */
};

/* Loads and validates path: the proxy's keys, then the access stage's sections
 * (snapshot.c). Returns a snapshot with one reference, or NULL with every
 * problem in d (file:line:col messages, up to 20). serve, check and the CLI
 * verbs that read gatehouse.yaml all load it through here. */
struct config *config_load(const char *path, struct conf_diag *d);
/* Same, from YAML text in memory; name is the file name used in messages and
 * for resolving relative paths. */
struct config *config_parse(const char *name, const char *text, size_t len, struct conf_diag *d);
/* The proxy's own keys only (config.c); config_load adds the rest. */
struct config *config_load_proxy(const char *path, struct conf_diag *d);
struct config *config_parse_proxy(const char *name, const char *text, size_t len,
                                  struct conf_diag *d);
/* Frees what config_parse_proxy built (config.c), nothing of the other parts:
 * snapshot.c, which put them together, takes them apart (config_unref). */
void config_proxy_free(struct config *c);
/* Adds a reference (any thread) and returns c. */
struct config *config_ref(struct config *c);
/* Drops a reference; frees at zero. NULL is a no-op. */
void config_unref(struct config *c);
/* `gatehouse check --dump`: the effective configuration as YAML on f (a FILE *):
 * defaults filled in, paths resolved, each route's policy, secrets redacted
 * (dump.c). */
void proxy_dump_config(const struct config *c, void *f);

#endif
