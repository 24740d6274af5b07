/* proxy/request.h - the protocol-neutral request every pipeline stage sees:
 * parse head -> limits -> route match -> reserved paths (/.gatehouse/ *) ->
 * access check -> forward. HTTP/1 specifics stay in http.c and conn.c, so a
 * second front protocol (HTTP/2) only has to fill this struct and implement
 * request_respond(). Everything a request points to lives in its arena, which
 * request_end() frees in one place. */
#ifndef GH_PROXY_REQUEST_H
#define GH_PROXY_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "../core/core.h"

struct config;
struct route_conf;
struct upstream_server;

struct header {
    struct str name;  /* arena-owned, as received (case kept) */
    struct str value; /* arena-owned, leading/trailing whitespace removed */
};

#define REQUEST_ID_LEN 64

struct request {
    /* public, read-only for the stages */
    struct arena *arena;            /* per-request, capped; freed by request_end() */
    struct config *cfg;             /* snapshot held (config_ref) for the request's life */
    const struct route_conf *route; /* borrowed from cfg; NULL until routed */
    struct str method;              /* "GET" */
    struct str target;              /* path + "?" + query as sent: what the upstream gets */
    struct str path;                /* the normalised path (normpath.h): routing, policy, OPA,
                                   * decision log and upstream all use it */
    struct str query;               /* after '?', without it, as sent; empty when none */
    struct str raw_target;          /* the request target as received (the access log) */
    struct str host;                /* Host header value (or the absolute-form authority), as
                                   * received: forwarded as is */
    struct str hostname;            /* host normalised once: lower case, no port, no trailing
                                   * dot ("[v6]" keeps its brackets): routing, policy, OPA
                                   * and the decision log use it */
    bool path_encoded_slash;        /* path keeps a %2F or %5C: refused unless the route
                                   * has encoded_slashes: pass */
    struct header *headers;         /* arena-owned array */
    size_t nheaders;
    int http_major, http_minor;
    const char *scheme; /* "http" or "https" */
    char client_ip[64]; /* text form */
    uint16_t client_port;
    X509 *peer_cert; /* TLS client certificate (borrowed from the connection), or NULL */
    const char *sni; /* TLS server name (borrowed), or NULL */
    char id[REQUEST_ID_LEN + 1]; /* X-Request-Id: generated, or the trusted incoming one */
    uint64_t start_us;           /* monotonic start time */
    /* framing of the request body (from the HTTP layer) */
    bool has_body;
    bool chunked;
    uint64_t content_length; /* valid when has_content_length */
    bool has_content_length; /* a Content-Length header was sent (even 0) */
    bool expect_continue;    /* "Expect: 100-continue" */
    bool upgrade;            /* Upgrade + Connection: upgrade (WebSocket) */
    bool keep_alive;         /* the client wants to keep the connection */
    bool head_method;        /* HEAD: responses carry no body */
    /* accounting (filled as the request runs; read at request end) */
    int status;                                    /* status sent to the client, 0 before any */
    uint64_t bytes_in, bytes_out;                  /* body bytes from/to the client */
    const struct upstream_server *upstream_server; /* server used (borrowed from cfg), or NULL */
    uint64_t upstream_us;                          /* time to the upstream's response head */
    /* set by the access stage for the access log (static, config or arena
     * strings; NULL = no decision, anonymous) */
    const char *access_decision; /* allow, deny, login, error */
    const char *access_rule;
    const char *access_user;   /* the user id, as policies and the decision log see it */
    const char *access_device; /* enrolled device id of the client certificate */
    /* set by the access stage: headers added to the upstream request (arena) */
    struct header *up_headers;
    size_t nup_headers;
    /* private to the front protocol */
    void *conn;
};

/* Looks up a header by name (ASCII case-insensitive). Returns the first value
 * or STR_NULL; *count (may be NULL) receives the number of occurrences. */
struct str request_header(const struct request *r, struct str name, size_t *count);

/* Sends a complete local response (error pages, reserved paths, authn/policy
 * answers) and ends the request. content_type may be NULL (no body type);
 * extra_headers: NULL or preformatted "Name: value\r\n" lines. The request id
 * is always sent as X-Request-Id. Must be called on the request's worker loop,
 * at most once, and not after forwarding started. */
void request_respond(struct request *r, int status, const char *content_type, struct str body,
                     const char *extra_headers);

/* Every local answer carries Content-Security-Policy (default-src 'none';
 * style-src 'self'; img-src 'self'; form-action 'self' plus the identity
 * providers' origins (struct access_stage's form_action); frame-ancestors
 * 'none'; base-uri 'none'), X-Frame-Options: DENY, X-Content-Type-Options:
 * nosniff, Referrer-Policy: no-referrer and Cache-Control: no-store (unless
 * extra_headers has a Cache-Control). */

/* Sends the standard error page for status (400, 403, 404, 408, 413, 414, 431,
 * 502, 503, 504...): HTML when the client accepts text/html, JSON otherwise,
 * both carrying the request id. detail (may be NULL) is a short, non-secret
 * explanation. */
void request_error(struct request *r, int status, const char *detail);
/* Same, with "Retry-After: retry_after_s" (503 when no server can answer). */
void request_error_retry(struct request *r, int status, const char *detail, unsigned retry_after_s);

/* Access decision for a routed request. ACCESS_RESPOND is 0 so that an
 * uninitialised result never lets a request through (fail closed). */
enum access_step {
    ACCESS_RESPOND = 0, /* a local response was sent (or must be: 403 if none was) */
    ACCESS_ALLOW,       /* forward to the upstream */
    ACCESS_PENDING,     /* suspended: someone calls request_resume() later on this loop */
};

/* The access stage as the data plane knows it: one typed interface, installed
 * by the stage at start (proxy/access/stage.c). With nothing installed every
 * routed request is refused with a 403 (fail closed) and /.gatehouse/ paths
 * answer 404 (proxy/access_hook.c). Install before workers start; NULL
 * uninstalls. */
struct access_stage {
    enum access_step (*check)(struct request *r);    /* a routed request */
    enum access_step (*reserved)(struct request *r); /* a /.gatehouse/ path; NULL: 404 */
    /* CSP form-action origins beyond 'self' for local pages (see
     * page_form_action_set_hook); NULL: none. */
    const char *(*form_action)(struct request *r);
    /* false while the stage cannot answer (the shared session database is
     * unreachable): /readyz says 503. NULL: always ready. Any thread. */
    bool (*ready)(void);
};
void access_stage_install(const struct access_stage *stage);

/* The installed stage's readiness (true when none is installed or it has no
 * ready hook): the admin listener's /readyz. */
bool access_ready(void);

/* Runs the installed stage's check on a routed request (ACCESS_RESPOND when
 * none is installed: the caller sends the 403). */
enum access_step access_check(struct request *r);
/* Runs the installed stage's reserved-path handler on a /.gatehouse/ request
 * and gives its step in *step; false when there is none (the caller answers
 * 404). */
bool access_reserved(struct request *r, enum access_step *step);
/* The stage's extra CSP form-action origins for a local page, or NULL. */
const char *access_form_action(struct request *r);

/* What the asynchronous steps of the stage need of the request's worker: the
 * outbound HTTP client and the event loop it runs on; and the listener the
 * request came in on (NULL for the admin listener). */
struct fetcher;
struct ev_loop;
struct listener_conf;
/* The client's address as the policy input has it (policy_ip_parse of
 * client_ip), parsed when the connection was accepted: false when the
 * request has no connection or another client_ip (parse it then). */
struct policy_ip;
bool request_client_addr(const struct request *r, struct policy_ip *out);
struct fetcher *request_fetcher(const struct request *r);
struct ev_loop *request_loop(const struct request *r);
const struct listener_conf *request_listener(const struct request *r);

/* What a per-request re-check of the TLS client certificate (r->peer_cert)
 * needs: the intermediates the client sent (untrusted, or NULL), the listener
 * (index and verify_depth) and the generation of its client CA + CRL store,
 * which grows whenever a reload swaps that store. false for a request without
 * a client certificate or not on a TLS listener. */
struct request_client_tls {
    STACK_OF(X509) * chain;
    size_t listener;
    int verify_depth;
    uint64_t generation;
};
bool request_client_tls(const struct request *r, struct request_client_tls *out);
/* The current client CA + CRL store of listener (size_t)(uintptr_t)arg, with a
 * reference in *hold that request_client_ca_put() releases; NULL when the
 * listener has none. Any thread. */
X509_STORE *request_client_ca_get(void *arg, void **hold);
void request_client_ca_put(void *hold);

/* Reads the request body (up to max_bytes, else 413) for a local endpoint and
 * calls cb on the worker loop once it is complete; the body span is valid
 * during the call. The caller returns the ACCESS_PENDING this gives; cb must
 * answer with request_respond() (or request_error()). A request without a
 * body calls cb with an empty body before returning. */
typedef void request_body_fn(struct request *r, struct str body, void *arg);
enum access_step request_read_body(struct request *r, size_t max_bytes, request_body_fn *cb,
                                   void *arg);

/* Continues a request suspended by ACCESS_PENDING with the final step
 * (ACCESS_ALLOW forwards; ACCESS_RESPOND means a response was sent or a 403 is
 * due). Must run on the request's worker loop. If the client went away in the
 * meantime, the request was already ended and must not be resumed: the
 * suspending code is told through request_on_abort(). */
void request_resume(struct request *r, enum access_step step);

/* Registers fn(arg) to run if a suspended request is aborted (client closed,
 * timeout, shutdown) before request_resume(); one per request. */
typedef void request_abort_fn(void *arg);
void request_on_abort(struct request *r, request_abort_fn *fn, void *arg);

#endif
