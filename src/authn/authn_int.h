/* authn/authn_int.h - private to the authn_*.c files that make up the
 * request-level glue of sign-in (authn.h is the public side): the module's
 * state (struct authn, its providers), the continuation that resumes a
 * reserved endpoint after a fetch or a fleet wait, and the helpers the
 * endpoint files share. Nothing outside src/authn includes it. */
#ifndef GH_AUTHN_AUTHN_INT_H
#define GH_AUTHN_AUTHN_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <jansson.h>

#include "authn.h"
#include "assertion.h"
#include "attrs.h"
#include "codec.h"
#include "cookie.h"
#include "jwt.h"
#include "keys.h"
#include "oidc.h"
#include "page.h"
#include "saml.h"
#include "session.h"
#include "session_pg.h"

#define MOD "authn"

struct idp {
    struct oidc_provider *p;
    _Atomic(struct oidc_metadata *) meta; /* set once, never replaced while serving */
    pthread_mutex_t mu;                   /* guards jwks and jwks_fetched_ms */
    struct jwks *jwks;
    int64_t jwks_fetched_ms;
};

/* What outlives a config snapshot: the session store, the assertion key, the
 * page templates, the replay cache and the login cookie key. A reloaded
 * snapshot shares the running one's (authn_share), so sessions and sign-ins
 * in flight survive a reload. */
struct authn_shared {
    atomic_int refs;
    bool closed;
    struct session_store *store;
    struct assertion_signer *signer;
    char *signer_key; /* the key file the signer uses now */
    struct pages *pages;
    struct oidc_replay *replay;
    unsigned char login_key[32]; /* seals login cookies; per process start */
};

struct authn {
    struct authn_shared *rt; /* owned reference; the fields below borrow from it */
    struct idp *idps;
    size_t nidps;
    struct saml_idp **saml; /* type: saml providers (saml.c) */
    size_t nsaml;
    struct session_conf sconf;
    char *state_db;
    struct session_store *store; /* rt's */
    char *assertion_key;         /* NULL = no assertion */
    char *assertion_header;
    char *assertion_issuer;
    int64_t assertion_ttl_s;
    int64_t assertion_keep_s;        /* a rotated-out key stays in the JWKS this long */
    struct assertion_signer *signer; /* rt's */
    char *pages_dir;
    bool show_deny_reason;          /* pages.show_deny_reason */
    char *hdr[AUTHN_HDR_COUNT];     /* upstream_identity.headers: user, email, groups, device */
    struct pages *pages;            /* rt's */
    struct oidc_replay *replay;     /* rt's */
    const unsigned char *login_key; /* rt's */
    /* Cookie names as they go on the wire, [plain, TLS] (__Host- prefixed);
     * spelled once here, not on every request. NULL-terminated lists for
     * cookie_strip: this spelling first, then the other one. */
    char *session_name[2];
    char *login_name[2];
    const char *strip_names[2][5];
};

/* ---- small helpers ---------------------------------------------------- */

enum cont_kind {
    CONT_NONE = 0,
    CONT_LOGIN_DISCOVERY,
    CONT_CALLBACK_DISCOVERY,
    CONT_TOKEN,
    CONT_TOKEN_JWKS,
    CONT_USERINFO,
    CONT_REFRESH,
    CONT_BCL_DISCOVERY,
    CONT_BCL_JWKS,
    CONT_BEARER_DISCOVERY,
    CONT_BEARER_JWKS,
    CONT_SAML_METADATA,
    CONT_ONCE, /* a one-time value decided by the fleet's database */
};

struct cont {
    enum cont_kind kind;
    struct idp *idp;
    const char *rd;         /* login: return path */
    const char *prompt;     /* login: prompt= for the IdP, or NULL */
    struct oidc_pending pd; /* callback: heap strings, freed by a deferred cleanup */
    const char *token_body; /* token response kept while the JWKS is fetched */
    size_t token_body_len;
    int token_status;
    bool jwks_refetched;
    struct oidc_tokens tokens;      /* between token and userinfo */
    const char *cookie;             /* refresh: the session cookie value */
    struct session_store *store;    /* refresh: claimed, not yet done (see cont_cleanup) */
    const char *bearer;             /* bearer / logout token */
    struct saml_idp *saml;          /* SAML metadata fetch: for which IdP */
    int saml_next;                  /* ... and what then (enum saml_next) */
    struct spg_once_job *once;      /* CONT_ONCE: the job (released by cont_cleanup) */
    unsigned char once_h[32];       /* ... for this key hash */
    int once_next;                  /* ... and what then (enum once_next) */
    struct authn_fetch token_fetch; /* ONCE_NEXT_TOKEN: the token request, sent once fresh */
    const char *bcl_sid, *bcl_sub;  /* ONCE_NEXT_BCL: whom the logout token names */
};

/* What a step waiting for a one-time value does with the answer. */
enum once_next { ONCE_NEXT_SAML_ACS, ONCE_NEXT_TOKEN, ONCE_NEXT_BCL, ONCE_NEXT_REFRESH };

/* Checks a token of c's provider with its keys. */
typedef int token_check_fn(struct authn *an, const struct authn_req *req, struct cont *c,
                           const struct jwks *k, void *res, struct err *err);

enum saml_next { SAML_NEXT_LOGIN, SAML_NEXT_ACS, SAML_NEXT_METADATA, SAML_NEXT_SLO };

/* A reserved endpoint: what check_step calls for a path below /.gatehouse/. */
typedef enum authn_step endpoint_fn(struct authn *an, const struct authn_req *req, struct arena *a,
                                    struct authn_out *out);

/* authn_flow.c */
struct cont *an_cont_new(struct arena *a, struct authn_out *out, enum cont_kind kind,
                         struct idp *idp);
const char *an_adup(struct arena *a, const char *s);
void an_add_header(struct authn_out *out, const char *name, const char *value);
enum authn_step an_respond(struct authn_out *out, int status, const char *type, const char *body,
                           size_t len);
enum authn_step an_redirect_with(struct authn_out *out, int status, const char *location);
enum authn_step an_redirect(struct authn_out *out, const char *location);
enum authn_step page_answer(struct arena *a, struct authn_out *out, enum page_kind k,
                            const struct page_var *vars, size_t n, const char *json);
void an_set_reason(struct authn_out *out, const char *fmt, const char *detail);
enum authn_step an_error_page(struct authn *an, const struct authn_req *req, struct arena *a,
                              struct authn_out *out, int status, const char *title,
                              const char *message);
endpoint_fn an_internal_error;
struct idp *an_idp_by_id(struct authn *an, const char *id);
bool an_route_accepts(const struct authn_req *req, const char *idp);
char *an_query_value(struct arena *a, struct str q, const char *name);
const char *session_cookie_name(const struct authn *an, bool tls);
const char *an_login_cookie_name(const struct authn *an, bool tls);

/* authn_fetch.c */
void an_fill_fetch(struct arena *a, struct authn_out *out, struct oidc_http *h);
bool an_once_submit(const struct authn_req *req, struct authn_out *out, struct spg *pg,
                    struct cont *c, const char *key, int64_t exp_s, enum once_next next);
int an_once_verdict(const struct authn_req *req, const struct cont *c);
enum authn_step an_fetch_get(struct arena *a, struct authn_out *out, const char *url);
enum authn_step an_need_discovery(struct arena *a, struct authn_out *out, struct idp *x);
bool an_take_discovery(struct idp *x, int status, struct str body, struct authn_out *out);
struct jwks *an_jwks_get(struct idp *x);
bool an_take_jwks(struct idp *x, int status, struct str body, int64_t now_ms,
                  struct authn_out *out);
bool an_jwks_refetch(struct arena *a, struct authn_out *out, struct cont *c, int64_t now_ms,
                     enum cont_kind kind);
bool an_check_with_keys(struct authn *an, const struct authn_req *req, struct arena *a,
                        struct authn_out *out, struct cont *c, enum cont_kind disc,
                        enum cont_kind jwks, token_check_fn *check, void *res, int *rc,
                        struct err *err, enum authn_step *st);
int an_once_gate(struct authn *an, const struct authn_req *req, struct arena *a,
                 struct authn_out *out, const char *key, int64_t exp_s, enum authn_step *st);

/* authn_bearer.c */
void an_identity_from_view(struct authn_out *out, const struct session_view *v, struct arena *a);
bool an_identity_from_oidc(struct authn_out *out, const struct oidc_identity *id, const char *idp,
                           struct arena *a);
struct idp *an_idp_for_token(struct authn *an, const struct authn_req *req, struct str tok);
bool an_bearer_cached(struct authn *an, const struct authn_req *req, struct arena *a,
                      struct authn_out *out, struct str tok);
enum authn_step an_bearer_refused(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, const char *why);
enum authn_step an_bearer_continue(struct authn *an, const struct authn_req *req, struct arena *a,
                                   struct authn_out *out, struct cont *c);

/* authn_refresh.c */
enum authn_step an_refresh_start(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out, const char *cookie, int64_t token_exp_s);
enum authn_step an_refresh_leased(struct authn *an, const struct authn_req *req,
                                  struct authn_out *out, struct cont *c);
enum authn_step an_refresh_finish(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, struct cont *c, int status,
                                  struct str body);

/* authn_login.c */
enum authn_step an_login_redirect(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, struct idp *x, const char *rd,
                                  const char *prompt);
bool an_on_public_host(const struct authn_req *req);
endpoint_fn login_endpoint;
enum authn_step an_callback_fail(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out, int status, const char *why);
enum authn_step an_callback_error(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, const char *why);
endpoint_fn an_state_unchecked;
endpoint_fn an_idp_down;
enum authn_step an_callback_token_request(struct authn *an, const struct authn_req *req,
                                          struct arena *a, struct authn_out *out, struct cont *c);
bool an_login_cookie_read(struct authn *an, const struct authn_req *req, struct arena *a,
                          struct authn_out *out, struct str *v, bool *found, enum authn_step *st);
enum authn_step an_callback(struct authn *an, const struct authn_req *req, struct arena *a,
                            struct authn_out *out, struct str path_idp);
enum authn_step an_signed_in(struct authn *an, const struct authn_req *req, struct arena *a,
                             struct authn_out *out, char *cookie, const char *clear, const char *rd,
                             int status);
enum authn_step an_finish_login(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, struct cont *c, const json_t *userinfo);
enum authn_step an_token_answer(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, struct cont *c);

/* authn_saml.c */
bool saml_endpoint_ready(struct authn *an, const struct authn_req *req, struct arena *a,
                         struct authn_out *out, const char *method, enum saml_next next,
                         enum authn_step *st);
enum authn_step saml_login(struct authn *an, const struct authn_req *req, struct arena *a,
                           struct authn_out *out, struct saml_idp *sx, const char *rd);
endpoint_fn saml_metadata;
endpoint_fn saml_acs_endpoint;

/* authn_logout.c */
endpoint_fn an_signed_out;
endpoint_fn saml_slo_endpoint;
endpoint_fn logout_endpoint;
enum authn_step an_bcl_continue(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, struct cont *c);
enum authn_step an_bcl_decided(struct authn *an, const struct authn_req *req, struct arena *a,
                               struct authn_out *out, struct cont *c);
endpoint_fn an_backchannel_logout;

#endif
