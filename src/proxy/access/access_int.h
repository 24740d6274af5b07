/* proxy/access/access_int.h - private to src/proxy/access: the stage's
 * configuration, the identity every step reads, and the exchange (the
 * per-request state that lives across the asynchronous steps). The pipeline
 * is drawn in docs/architecture.md:
 *
 *   stage.c  identify.c -> identity.c -> decide.c (opa_call.c) -> record_decision.c
 *            -> upstream_identity.c (forward) | respond.c (local answer)
 *
 * Steps take the narrow types they need; only stage.c and the asynchronous
 * steps (identify, opa_call) see the exchange. */
#ifndef GH_PROXY_ACCESS_INT_H
#define GH_PROXY_ACCESS_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "authn/authn.h"
#include "policy/policy.h"
#include "proxy/access/access.h"
#include "proxy/fetch.h"
#include "proxy/request.h"

#define ACCESS_MAX_COOKIES 16

/* ---- configuration (one per config snapshot; access_conf.c) ---------------------- */

struct access_route {
    const struct policy *policy; /* borrowed from the policy_conf */
    /* A policy file may test claims; the built-in public and any-signed-in
     * policies never do (see identity_to_input). */
    bool policy_file;
    const char *const *idps; /* accepted providers, borrowed from the route; NULL = all */
    size_t nidps;
};

struct access_conf {
    struct authn *an;            /* identity providers, sessions, assertion, pages */
    struct access_route *routes; /* index-aligned with config->routes */
    size_t nroutes;
    char *hdr_user, *hdr_email, *hdr_groups, *hdr_device;
    const char *strip[5];               /* configured identity header names (NULL-terminated);
                                    * the assertion's is authn_assertion_header() */
    struct policy_conf *pc;             /* route policies, opa, decision_log */
    const struct opa_conf *opa;         /* borrowed from pc */
    const struct decision_log_conf *dl; /* borrowed from pc; NULL = no decision log */
    bool show_reason;                   /* denied page shows the rule's reason */
    bool needs_sessions;                /* some route is not public */
    size_t nidps;                       /* configured identity providers */
};

/* The shared sign-in state outliving snapshots (sessions, keys, pages). */
void access_conf_share_start(const struct access_conf *g);
void access_conf_share_stop(void);
/* Makes the directory of state.sqlite (mode 0700) when missing. */
int access_make_state_dir(const struct config *c, struct err *err);
/* False while the shared session database (state.postgres) is unreachable:
 * /readyz answers 503 and gatehouse_state_up is 0. */
bool access_state_ready(void);

/* ---- the identity (identify.c fills it; every later step reads it) -------- */

struct identity {
    bool authenticated;
    bool bearer;          /* identified, or refused, by a bearer token */
    const char *user;     /* the user id policies, headers and the log see */
    const char *user_key; /* iss#sub */
    const char *email, *name, *idp;
    const char *session;                /* public session id (hash prefix) or NULL */
    const struct authn_identity *authn; /* the signed assertion is made from it */
    struct authn_device device; /* the TLS client certificate's (identify.c); arena strings */
};

/* ---- clocks ----------------------------------------------------------------- */

static inline int64_t access_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline uint64_t access_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- the exchange (exchange.c) ---------------------------------------------- */

struct exchange;
typedef void exchange_next_fn(struct exchange *x, const struct fetch_resp *resp);
/* Where identify.c hands over when authn has answered (stage.c). */
typedef enum access_step identified_fn(struct exchange *x, enum authn_step st);
/* Where opa_call.c hands over once OPA's answer is in x->res (stage.c). */
typedef enum access_step opa_done_fn(struct exchange *x);

/* An OPA question in flight (opa_call.c). */
struct opa_call {
    char *input;           /* malloc'd request body; freed when the call ends */
    uint64_t start_us, us; /* us: time spent waiting, summed over calls */
    const char *result;    /* "allow", "deny", "error"; NULL when OPA was not asked */
    opa_done_fn *done;
};

/* authn's view of the request and its answer (identify.c). */
struct identify_state {
    struct authn_req req;
    struct authn_out out;
    struct str cookies[ACCESS_MAX_COOKIES];
    struct authn_device device; /* the client certificate's device, read once */
    identified_fn *done;
};

struct exchange {
    struct request *r;
    const struct access_conf *conf;
    const struct access_route *route; /* NULL on a reserved endpoint */
    bool reserved;
    /* asynchronous steps */
    struct fetch *fetch; /* in flight, or NULL */
    exchange_next_fn *next;
    bool pending; /* the request is suspended (ACCESS_PENDING given) */
    bool abort_hooked;
    bool aborted;
    /* the steps' state */
    struct identify_state ids;
    struct identity id;
    struct policy_input in;
    struct policy_result res;
    bool ident_incomplete; /* groups/claims could not all be read: fail closed */
    struct opa_call opa;
    uint64_t start_us;
};

struct exchange *exchange_new(struct request *r, bool reserved);
/* Starts an IdP/OPA call: true when it runs (the request is suspended until
 * next() runs), false with err filled when it could not start. */
bool exchange_fetch(struct exchange *x, const struct fetch_req *fr, exchange_next_fn *next,
                    char err[256]);
/* Waits, suspended, for a shared store's answer: fd readable (status 200) or
 * timeout_ms passed (failed); the same contract as exchange_fetch. */
bool exchange_wait(struct exchange *x, int fd, uint64_t timeout_ms, exchange_next_fn *next,
                   char err[256]);
/* Finishes a suspended request with a step (or returns it when not suspended).
 * After ACCESS_RESPOND the request, and x in its arena, may already be gone. */
enum access_step exchange_finish(struct exchange *x, enum access_step st);

/* ---- identify.c: who is calling ---------------------------------------------- */

/* Asks authn (and the identity providers through fetch.c) who is calling;
 * done() gets authn's final step with x->ids.out filled. body: the POST body
 * of a reserved endpoint that reads one (arena-owned), else empty. */
enum access_step identify(struct exchange *x, struct str body, identified_fn *done);
/* The identity of authn's answer plus the further sources (TLS device). */
void identify_fill(struct exchange *x);
/* Does the Host name another host than the TLS server name (SNI)? A client
 * certificate verified in a handshake for one virtual host is never used for
 * another host's route: the stage answers 421 first. */
bool identify_host_misdirected(const struct request *r);

/* ---- identity.c: the policy input --------------------------------------------- */

/* Fills in from the identity and the request. want_claims: the claims are read
 * (a policy file or the decision log may use them). Returns false when the
 * groups or claims could not all be kept (the caller fails closed). */
bool identity_to_input(const struct identity *id, const struct request *r, bool want_claims,
                       struct policy_input *in);
/* The host part of a Host value (no port, no IPv6 brackets). */
struct str access_host_only(struct str h);

/* ---- decide.c: the decision (pure) ------------------------------------------- */

enum verdict {
    VERDICT_ALLOW = 0, /* forward (also a shadow-mode deny: see res->shadow) */
    VERDICT_DENY,      /* 403 */
    VERDICT_LOGIN,     /* anonymous and the policy wants a user: sign-in challenge */
    VERDICT_ASK_OPA,   /* ask OPA at res->opa_path, then opa_answer() and decide again */
};
enum verdict decide(const struct policy *p, const struct policy_input *in,
                    struct policy_result *res);
/* After a deny without a trusted device: would the same request from a trusted
 * device of this user be allowed? (The denied page then says so.) Pure too. */
bool decide_device_would_help(const struct policy *p, const struct policy_input *in);

/* ---- opa_call.c: the OPA question --------------------------------------------- */

void opa_call_start_runtime(void);
void opa_call_stop_runtime(void);
/* Asks OPA (or its cache) the question decide() returned; done() runs once
 * x->res has the answer (at once on a cache hit or a configuration error). */
enum access_step opa_call(struct exchange *x, opa_done_fn *done);

/* ---- record_decision.c: the decision log ----------------------------------------------- */

struct record_args {
    const char *kind;     /* "policy" or "signin" */
    const char *decision; /* what the policy said */
    const char *enforced; /* what was done (they differ in shadow mode) */
    const char *rule, *reason;
};
int record_start(const struct decision_log_conf *dl, struct err *err);
void record_stop(void);
bool record_enabled(void);
/* Queues the decision record; the access log gets the outcome too. Returns 0,
 * or ERR_LIMIT when the log is beyond its bound (the caller answers 503: never a
 * silent drop). *seq gets the record's sequence number. */
int record_decision(struct request *r, const struct policy *p, const struct identity *id,
                    const struct policy_input *in, const struct policy_result *res,
                    const struct opa_call *opa, uint64_t start_us, const struct record_args *a,
                    uint64_t *seq);
/* decision_log.sync: strict: ACCESS_PENDING until record seq is durable (the
 * request is resumed then), ACCESS_ALLOW when it already is, ACCESS_RESPOND
 * after a 503. */
enum access_step record_wait_durable(struct request *r, uint64_t seq);

/* ---- upstream_identity.c: forward with identity -------------------------------- */

/* Removes client-sent copies of the identity headers and Gatehouse's cookies. */
void upstream_scrub(struct request *r, const struct access_conf *g);
/* Adds the identity headers and the signed assertion. false on failure. */
bool upstream_identity(struct request *r, const struct access_conf *g, const struct identity *id,
                       const struct policy_input *in);

/* ---- respond.c: every answer to the user ---------------------------------------- */

/* Does the client want an HTML page (else JSON)? The one definition. */
bool respond_wants_html(const struct request *r);
/* A clear error page (HTML) or JSON, with the request id; logs why. */
enum access_step respond_error(struct request *r, const struct authn *an, int status,
                               const char *title, const char *message, const char *log_reason);
/* The sign-in challenge: a 302 to the sign-in page for a browser, else a 401
 * (invalid_token when a bearer token was refused). */
enum access_step respond_signin(struct request *r, bool bearer);
/* The access-denied page (HTML) or JSON. device_hint: not NULL when an
 * enrolled device would have been allowed; the page says so, with this (why
 * the device presented is not trusted, or that none was). */
enum access_step respond_denied(struct request *r, const struct authn *an, const char *user,
                                const char *email, const char *reason, bool show_reason,
                                const char *device_hint);
/* The pure layer under the respond_* functions (unit-tested): what to send,
 * rendered into ctx->arena. Each returns false when the answer could not be
 * made (out of request memory, no page): the caller sends a plain 500. */
struct pages;
struct respond_ctx {
    struct arena *arena;
    const char *request_id;
    bool html;                 /* respond_wants_html: decided once per request */
    const struct pages *pages; /* the templates (authn_pages), NULL: none */
    struct str target;         /* the request target (the sign-in return path) */
};
struct respond_answer {
    int status;
    const char *ctype;
    struct str body;
    const char *headers; /* extra header lines, "" when none */
};
bool respond_render_error(const struct respond_ctx *c, int status, const char *title,
                          const char *message, const char *extra, struct respond_answer *ans);
bool respond_render_signin(const struct respond_ctx *c, bool bearer, bool redirect,
                           const char *extra, struct respond_answer *ans);
bool respond_render_authn(const struct respond_ctx *c, const struct authn_out *o,
                          struct respond_answer *ans);
/* authn's answer: its intent (o->resp: sign-in needed, error, redirect, one of
 * its pages or a document) rendered, with its header lines (cookies). */
enum access_step respond_authn(struct request *r, const struct authn *an,
                               const struct authn_out *o);

/* ---- counters.c: metrics --------------------------------------------------------- */

enum access_counter { AC_LOGIN, AC_LOGOUT, AC_IDP_ERROR, AC_DL_REJECT, AC_COUNT };
void access_count(enum access_counter c, uint64_t n);
/* The metrics provider (metrics_provider_add). */
size_t access_metrics_render(char *buf, size_t size);

#endif
