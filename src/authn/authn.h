/* authn/authn.h - who is calling: OIDC sign-in, bearer JWTs, and the browser
 * session that remembers the answer, as one request-level API for the proxy.
 * No sockets here: when the IdP must be asked (discovery, JWKS, token,
 * userinfo), authn_check/authn_resume return AUTHN_NEED_FETCH with the HTTP
 * request to perform; the proxy performs it (proxy/fetch.c) and calls
 * authn_resume with the answer. The building blocks have their own headers
 * (jwt.h, oidc.h, session.h, cookie.h, assertion.h, page.h).
 *
 * Reserved paths handled here: /.gatehouse/login, /.gatehouse/oidc/callback
 * (and /.gatehouse/oidc/callback/<idp> with several providers),
 * /.gatehouse/oidc/backchannel-logout, /.gatehouse/logout, /.gatehouse/signed-out,
 * /.gatehouse/me, /.gatehouse/jwks.json, /.gatehouse/static/login.css.
 *
 * authn never decides that a route needs a user: an anonymous caller is
 * AUTHN_OK with id.user_key NULL, and the route's policy decides (the proxy
 * then answers the sign-in challenge). A refused bearer token is logged
 * ("bearer token refused: ...") and the caller is then anonymous with
 * id.bearer set, so that challenge is a 401 (never a redirect for API
 * clients). Only /.gatehouse/me needs someone: it answers AUTHN_ANSWER_SIGNIN. */
#ifndef GH_AUTHN_AUTHN_H
#define GH_AUTHN_AUTHN_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"

const char *authn_module_name(void);

struct authn; /* per config snapshot; thread-safe after authn_start() */

/* Parses and validates identity_providers (type oidc), session, pages and
 * upstream_identity (the sections it owns) from the config root. Reads secret files, makes
 * no network calls. state_db: the resolved state.sqlite path (NULL: sessions
 * are refused at start). Returns NULL with every problem in d. */
struct authn *authn_new(const struct conf_node *root, const char *conf_file, const char *state_db,
                        struct conf_diag *d);
/* Opens the session store (SQLite, writer thread), loads or creates the
 * assertion key, loads the page templates. Blocking: call before serving. */
int authn_start(struct authn *an, struct err *err) WARN_UNUSED;
/* For `gatehouse check`: loads what authn_start would (page templates, the
 * assertion key, the session key, the state database) without creating or
 * writing anything; a file serve would create must be creatable. Problems go to
 * d with the position of the key that names the file. */
void authn_check_files(const struct authn *an, const struct conf_node *root, struct conf_diag *d);
/* The effective settings (defaults filled in), for `gatehouse check --dump`.
 * Borrowed from an. */
struct session_conf;
struct oidc_provider;
/* upstream_identity.headers, in this order (authn_settings.identity_headers). */
enum authn_hdr {
    AUTHN_HDR_USER,
    AUTHN_HDR_EMAIL,
    AUTHN_HDR_GROUPS,
    AUTHN_HDR_DEVICE,
    AUTHN_HDR_COUNT
};
struct authn_settings {
    const char *pages_dir;
    bool show_deny_reason;                         /* pages.show_deny_reason (default true) */
    const char *identity_headers[AUTHN_HDR_COUNT]; /* upstream_identity.headers */
    const char *assertion_key;                     /* NULL: no assertion */
    const char *assertion_header, *assertion_issuer;
    int64_t assertion_ttl_s, assertion_keep_s;
    const struct session_conf *session;
    size_t nidps;
};
void authn_settings(const struct authn *an, struct authn_settings *out);
/* Identity provider i (< nidps), borrowed. */
const struct oidc_provider *authn_provider(const struct authn *an, size_t i);
/* What outlives a snapshot (session store, assertion key, pages, replay
 * cache, login key), reference-counted: a reloaded snapshot shares the
 * running one's (authn_share instead of authn_start), so sessions and sign-ins
 * in flight survive a reload. Its providers' metadata and keys are its own. */
struct authn_shared;
struct authn_shared *authn_shared_ref(struct authn *an); /* NULL before authn_start */
void authn_shared_unref(struct authn_shared *sh);
/* False while the shared session database (state.postgres) is unreachable:
 * /readyz answers 503 so balancers drain the node. NULL: true. */
bool authn_shared_ready(struct authn_shared *sh);
void authn_share(struct authn *an, struct authn_shared *sh);
/* At exit: flushes and closes the shared state now, even while snapshots
 * still refer to it (no request may run afterwards). */
void authn_shared_shutdown(struct authn_shared *sh);
/* Releases the snapshot; the shared state is closed (writer thread stopped,
 * flushed) with its last snapshot. NULL is a no-op. */
void authn_free(struct authn *an);

/* The device behind the TLS client certificate, as the proxy read it (the
 * identity source "device": authn/device.c checks it against the client CA,
 * the CRL and the device registry on every request). The proxy's policy
 * input, decision record and headers read it; authn shows it on
 * /.gatehouse/me. Strings borrowed, NULL when absent. */
struct authn_device {
    bool present;   /* a certificate that verifies against the client CA (and CRL) */
    bool trusted;   /* present, enrolled, not revoked, within its validity */
    const char *id; /* registry id and owner (email): enrolled devices only */
    const char *owner;
    const char *name; /* registry name (enrolled devices only; may be empty) */
    const char *subject, *issuer, *serial, *fingerprint;
    const char *san; /* first URI (SPIFFE id) or email SAN, or NULL */
    const char *why; /* why not trusted ("not enrolled", "revoked"...), or NULL */
};

/* The request as authn sees it. Every span is borrowed for the call. */
struct authn_req {
    struct str method;
    struct str host;           /* as sent, with the port (redirect URIs need it) */
    struct str path;           /* without the query */
    struct str query;          /* without '?' */
    const struct str *cookies; /* every Cookie header value */
    size_t ncookies;
    struct str authorization; /* Authorization header value (may be empty) */
    struct str accept;
    struct str x_requested_with;
    struct str body;            /* POST body: back-channel logout and logout forms */
    struct str sec_fetch_site;  /* Sec-Fetch-Site header (may be empty) */
    struct str origin;          /* Origin header (may be empty) */
    const char *request_origin; /* "scheme://Host" as the browser sent it */
    /* The origin browsers use for this route, from configuration: the route's
     * public_url, else its match.host (with the listener's scheme and port),
     * else the listener's public_url, else the Host when some route names it.
     * NULL: no route names this Host and no public_url: no sign-in here. */
    const char *public_origin;
    bool tls;
    const char *const *route_idps; /* ids accepted by the route; NULL = all */
    size_t nroute_idps;
    const char *request_id;
    const char *client_ip; /* for the log; may be NULL */
    int64_t now_ms;        /* wall clock */
    /* the client certificate's device for /.gatehouse/me (reserved paths);
     * NULL or not present: none */
    const struct authn_device *device;
    /* RFC 8705: base64url SHA-256 of the verified TLS client certificate (DER), or
     * NULL; a bearer token with cnf.x5t#S256 is accepted only when it matches */
    const char *client_cert_x5t;
};

/* A claim of the identity as policies, OPA and the decision log see it: one
 * (name, value) per value (an array claim gives one per string element), the
 * value as text ("true", "42") with its JSON type. */
enum authn_claim_type { AUTHN_CLAIM_STRING = 0, AUTHN_CLAIM_BOOL, AUTHN_CLAIM_INT };
struct authn_claim {
    struct str name, value;
    enum authn_claim_type type;
};

/* More groups or claim values than this: the lists are not kept and the
 * identity says so (the proxy fails closed rather than evaluate a truncated
 * list). */
#define AUTHN_MAX_GROUPS 4096
#define AUTHN_MAX_CLAIMS 4096

/* The groups and claims of an identity, parsed once: when the session is
 * created, refreshed or loaded, and when a bearer token is verified. Immutable
 * and reference-counted: the session cache and the bearer cache hold one, and
 * a request holds one until its arena is released, so no request parses or
 * copies them. Protocol claims (iss, aud, exp, nonce, sid, ...) are left out:
 * they are token mechanics, not facts about the user. */
struct authn_attrs {
    const struct str *groups; /* read-only */
    size_t ngroups;
    const struct authn_claim *claims;
    size_t nclaims;
    bool groups_overflow, claims_overflow; /* over AUTHN_MAX_*: the list is empty */
    /* The stored form (session database, the assertion's groups): the JSON
     * texts the lists were parsed from. Never parsed per request. */
    const char *groups_json, *claims_json;
    /* RFC 8705 (bearer tokens): cnf.x5t#S256, or NULL; cnf_error: why the
     * cnf claim is unusable (not an object, thumbprint not a string), or NULL */
    const char *cnf_x5t, *cnf_error;
};

/* Who is calling. Strings are arena-owned. */
struct authn_identity {
    const char *user_key; /* iss#sub; NULL = anonymous (public route) */
    const char *user;     /* the user id policy, headers, assertion and log see:
                                 * "<idp id>:<sub>", or the bare sub for the provider
                                 * with bare_user_ids (see oidc_user_id) */
    const char *sub, *email, *name, *idp;
    const struct authn_attrs *attrs; /* groups and claims; NULL when anonymous */
    const char *sid;                 /* the IdP's session id (sid claim), or NULL */
    const char *session_id;          /* 16-hex public session id; NULL for bearer */
    int64_t session_expires_ms;      /* absolute end of the session (max_lifetime), 0 for bearer */
    int64_t session_idle_expires_ms; /* end if no request comes first (idle_timeout) */
    bool bearer;                     /* identified, or refused, by a bearer token */
};

#define AUTHN_MAX_HEADERS 6

struct authn_header {
    const char *name;
    const char *value;
};

/* What the user should get: an intent, never a rendered error or challenge.
 * The proxy renders it (src/proxy/access/respond.c), which decides "HTML or
 * JSON?" once for every answer Gatehouse gives itself. */
enum authn_answer {
    AUTHN_ANSWER_NONE = 0, /* nothing set: fails closed (500) */
    AUTHN_ANSWER_SIGNIN,   /* sign-in needed: a 302 to /.gatehouse/login?rd=<this URL> for a
                            * browser, else a 401 with WWW-Authenticate (invalid_token when
                            * out->id.bearer: a refused token) */
    AUTHN_ANSWER_ERROR,    /* {status, title, message}: the error page or JSON; the details
                            * are in the log (authn logged them), never here */
    AUTHN_ANSWER_REDIRECT, /* status (302, 303) to location */
    AUTHN_ANSWER_PAGE,     /* one of authn's own pages (enum page_kind, authn/page.h) from
                            * its template with vars; json: the form for API clients (the
                            * /.gatehouse/me answer), NULL when the page is HTML only */
    AUTHN_ANSWER_CONTENT,  /* a document as it is: JWKS, login.css, SAML metadata, an empty
                            * 200/404/405/503, the back-channel logout's JSON error */
};

struct page_var; /* authn/page.h */

struct authn_resp {
    enum authn_answer kind;
    int status;
    const char *title, *message; /* ERROR */
    bool no_redirect;            /* SIGNIN: a 401 even for a browser (no provider) */
    const char *location;        /* REDIRECT */
    int page;                    /* PAGE: enum page_kind */
    const struct page_var *vars; /* PAGE: arena-owned */
    size_t nvars;
    const char *json;         /* PAGE: JSON form, or NULL */
    const char *content_type; /* CONTENT */
    const char *body;
    size_t body_len;
    struct authn_header headers[AUTHN_MAX_HEADERS]; /* Set-Cookie, Allow, Cache-Control, ... */
    size_t nheaders;
};

struct authn_fetch {
    const char *method;
    const char *url;
    const char *headers[5]; /* "Name: value", NULL-terminated */
    const char *body;       /* NULL for GET */
    size_t body_len;
};

/* What happened, for the caller's decision log and metrics (the step says
 * what to do next; the event says what to record). */
enum authn_event {
    AUTHN_EV_NONE = 0,
    AUTHN_EV_SIGNIN_REQUIRED, /* anonymous caller sent to sign-in (or 401) */
    AUTHN_EV_LOGIN,           /* sign-in completed: out->id is the new user */
    AUTHN_EV_LOGIN_FAILED,    /* callback refused: out->reason says why */
    AUTHN_EV_LOGOUT,          /* out->nlogouts sessions ended (browser or back-channel) */
};

enum authn_step {
    AUTHN_RESPOND = 0, /* answer out->resp (an intent: see enum authn_answer) */
    AUTHN_OK,          /* proceed; out->id says who (user_key NULL = anonymous) */
    AUTHN_NEED_FETCH,  /* perform out->fetch, then authn_resume() */
    AUTHN_NEED_WAIT,   /* a shared store answers off the loop: wait until out->wait.fd
                                 * is readable (status 200) or out->wait.timeout_ms passed
                                 * (status 0), then authn_resume() with an empty body */
};

/* AUTHN_NEED_WAIT: a one-time value (SAML assertion ID) decided by the fleet's
 * database on a thread of its own. The fd stays open until the request's
 * arena is freed; the caller only watches it. */
struct authn_wait {
    int fd;
    uint64_t timeout_ms;
};

struct authn_out {
    struct authn_identity id;
    struct authn_resp resp;
    struct authn_fetch fetch;
    struct authn_wait wait;
    void *cont;       /* private: where to continue */
    char reason[320]; /* why a request was refused or failed, for the log */
    enum authn_event event;
    size_t nlogouts; /* AUTHN_EV_LOGOUT: sessions ended */
    bool idp_error;  /* an identity provider call failed (metrics) */
};

/* Classifies req: reserved path, bearer token, session cookie, or anonymous.
 * Everything in out lives in a (the request arena) until request end. Never
 * blocks; never touches SQLite. */
enum authn_step authn_check(struct authn *an, const struct authn_req *req, struct arena *a,
                            struct authn_out *out);
/* Continues after AUTHN_NEED_FETCH with the IdP's answer: status 0 means the
 * fetch failed (unreachable, timeout). req must describe the same request. */
enum authn_step authn_resume(struct authn *an, const struct authn_req *req, struct arena *a,
                             struct authn_out *out, int status, struct str body);

/* The identity assertion for the upstream (ES256 JWT, cached for half its
 * ttl), or NULL when no assertion is configured or id is anonymous. */
const char *authn_assertion(struct authn *an, const struct authn_identity *id, const char *route,
                            const char *device, int64_t now_ms, struct arena *a);
/* The "Sign in as someone else" URL for the denied page: a sign-in that asks
 * the IdP for the account picker and returns to target (path?query), or to
 * "/" when target is not a safe return path. Arena-owned. */
const char *authn_switch_user_url(struct arena *a, struct str target);
/* The sign-in page templates (for the proxy's own pages: denied, errors). */
const struct pages *authn_pages(const struct authn *an);
/* Where a Gatehouse page may send the browser with a form, or a redirect
 * after one (CSP form-action): each provider's issuer origin and, once
 * discovered, the origins of its authorization and end-session endpoints.
 * Space-separated "scheme://host[:port]", arena-owned; "" when none. */
const char *authn_form_action_origins(const struct authn *an, struct arena *a);
/* The header that carries it ("X-Gatehouse-Assertion"), or NULL when off. */
const char *authn_assertion_header(const struct authn *an);
/* The Cookie header without Gatehouse's own cookies (so the session id never
 * reaches a backend). Empty result: drop the header. */
struct str authn_strip_cookies(const struct authn *an, struct str cookie_header, bool tls,
                               struct arena *a);

#endif
