/* authn/oidc.h - the OpenID Connect relying party as pure protocol steps.
 * Nothing here touches the network: every step that needs the IdP returns an
 * oidc_http (method, URL, headers, form body) that the proxy performs with
 * libcurl multi, then hands the response (status, body) to the next step.
 *
 *   discovery:  oidc_discovery_request -> oidc_metadata_parse
 *   keys:       m->jwks_uri            -> jwks_parse (jwt.h); refetch on ERR_NOTFOUND
 *   login:      oidc_login_start       -> 302 to out.auth_url + Set-Cookie login cookie
 *   callback:   oidc_login_cookie_open + oidc_callback -> token request
 *               oidc_token_response    -> ID token verified, tokens
 *               oidc_userinfo_request / oidc_userinfo_parse (optional)
 *               oidc_identity_build    -> user key, email, name, groups
 *   refresh:    oidc_refresh_request   -> oidc_token_response(nonce = NULL)
 *   logout:     oidc_logout_url, oidc_logout_token_verify (back-channel)
 *   API:        oidc_bearer_verify
 * All functions are thread-safe on a const provider; the replay cache locks. */
#ifndef GH_AUTHN_OIDC_H
#define GH_AUTHN_OIDC_H

#include <stdbool.h>
#include <stdint.h>

#include <cjose/cjose.h>
#include <jansson.h>

#include "core/core.h"
#include "jwt.h"

struct authn_attrs; /* authn.h */

enum oidc_client_auth {
    OIDC_AUTH_CLIENT_SECRET_BASIC = 0,
    OIDC_AUTH_CLIENT_SECRET_POST,
    OIDC_AUTH_PRIVATE_KEY_JWT,
};

/* One identity_providers[] entry of type oidc. Immutable after parsing. */
struct oidc_provider {
    char *id;
    char *issuer;
    char *client_id;
    char *client_secret; /* NULL with private_key_jwt */
    enum oidc_client_auth auth;
    cjose_jwk_t *client_key;    /* private_key_jwt only */
    const char *client_key_alg; /* "RS256" / "ES256" */
    char *scopes;               /* space-separated, always contains "openid" */
    char *claim_email, *claim_name, *claim_groups;
    bool groups_from_userinfo;
    bool allow_insecure_issuer;
    int64_t clock_skew_s;                  /* default 60 */
    uint64_t jwks_refresh_min_interval_ms; /* default 60s */
    char *redirect_host; /* fixed host for redirect_uri, or NULL = the route's host */
    char **audiences;    /* bearer JWT audiences: the configured ones, plus
                                     * client_id with accept_id_tokens; none = no bearer */
    size_t naudiences;
    bool accept_id_tokens;       /* bearer: ID tokens too (aud client_id, nonce); default off */
    bool require_verified_email; /* email_verified false: no email (default on) */
    bool bare_user_ids;          /* users keep bare sub ids (at most one provider) */
    bool require_bound_tokens;   /* require_certificate_bound_tokens: bearer tokens must
                                     * carry cnf.x5t#S256 (RFC 8705); default off */
    unsigned algs;               /* allowed JWS algorithms */
    char *
        *post_logout_redirect_uris; /* registered returns; the one for the user's origin is sent */
    size_t npost_logout_redirect_uris;
    char *display_name;                /* label on the chooser, or NULL (the id) */
    struct bearer_cache *bearer_cache; /* private: verified bearer tokens (internally locked) */
};

/* Parses one identity_providers[] map (type: oidc). conf_file resolves relative
 * paths. Reports every problem to d (file:line:col) and returns NULL. Reads
 * client_secret_file and private_key (local files, start-up only). */
struct oidc_provider *oidc_provider_parse(struct conf_diag *d, const struct conf_node *n,
                                          const char *conf_file);
void oidc_provider_free(struct oidc_provider *p);

/* An HTTP request for the proxy to perform. Every field is malloc'd. */
struct oidc_http {
    const char *method; /* "GET" or "POST" (static) */
    char *url;
    char *headers[4]; /* "Name: value" lines, NULL-terminated list */
    char *body;       /* form body or NULL */
};
void oidc_http_fini(struct oidc_http *h);

/* Provider metadata from discovery (OpenID Connect Discovery 1.0). */
struct oidc_metadata {
    char *issuer;
    char *authorization_endpoint;
    char *token_endpoint;
    char *userinfo_endpoint; /* may be NULL */
    char *jwks_uri;
    char *end_session_endpoint; /* may be NULL */
    bool backchannel_logout_supported;
    bool iss_parameter_supported; /* RFC 9207: iss in every authorization response */
    bool prompt_select_account;   /* prompt_values_supported lists select_account */
    bool code_challenge_s256;     /* advertised, or not advertised at all */
};

/* GET <issuer>/.well-known/openid-configuration. */
void oidc_discovery_request(const struct oidc_provider *p, struct oidc_http *out);
/* Validates the discovery response: status 200, JSON, issuer equal to the
 * configured one, https endpoints (unless allow_insecure_issuer), S256 support.
 * Caller frees with oidc_metadata_free(). */
struct oidc_metadata *oidc_metadata_parse(const struct oidc_provider *p, int status,
                                          struct str body, struct err *err);
void oidc_metadata_free(struct oidc_metadata *m);

/* State kept in the short-lived login cookie between /.gatehouse/login and
 * the callback. Fields are malloc'd; release with oidc_pending_fini(). */
struct oidc_pending {
    char *idp;
    char *state;
    char *nonce;
    char *code_verifier;
    char *return_path;
    char *redirect_uri;
    char *prompt; /* prompt= sent, or NULL; "none": the check after a sign-out */
    int64_t exp_s;
};
void oidc_pending_fini(struct oidc_pending *pd);

#define OIDC_LOGIN_TTL_S 600

struct oidc_login {
    char *auth_url;     /* 302 Location */
    char *cookie_value; /* sealed oidc_pending, for the login cookie */
};

/* Starts a login: fresh state, nonce and PKCE verifier (256 bits each), the
 * authorization URL and the sealed login cookie. return_path must already be
 * checked with oidc_return_path_safe(). key seals the cookie. */
int oidc_login_start(const struct oidc_provider *p, const struct oidc_metadata *m,
                     const char *redirect_uri, struct str return_path, const char *prompt,
                     const unsigned char key[32], int64_t now_s, struct oidc_login *out,
                     struct err *err) WARN_UNUSED;
void oidc_login_fini(struct oidc_login *l);

/* Opens the login cookie (authenticated decryption, expiry). */
int oidc_login_cookie_open(const unsigned char key[32], struct str cookie, int64_t now_s,
                           struct oidc_pending *out, struct err *err) WARN_UNUSED;

/* Seen-once cache for logout-token jti and consumed login states. */
struct oidc_replay;
struct oidc_replay *oidc_replay_new(size_t max_entries);
void oidc_replay_free(struct oidc_replay *r);
/* Records key until exp_s; returns false when it was already recorded (replay)
 * or when the cache is full of live entries (fail closed). */
bool oidc_replay_check_and_add(struct oidc_replay *r, struct str key, int64_t exp_s, int64_t now_s);

/* Handles the callback query string against the pending login: error=,
 * missing or mismatched state, missing code, RFC 9207 iss. replay (may be NULL)
 * refuses a second use of the same state. Fills the token request. */
int oidc_callback(const struct oidc_provider *p, const struct oidc_metadata *m, struct str query,
                  const struct oidc_pending *pd, struct oidc_replay *replay, int64_t now_s,
                  struct oidc_http *token_req, struct err *err) WARN_UNUSED;

struct oidc_tokens {
    char *id_token; /* may be NULL on refresh */
    char *access_token;
    char *refresh_token;  /* NULL when none was issued (or rotated) */
    int64_t expires_at_s; /* access token expiry; 0 = unknown */
    int64_t id_exp_s;     /* id token exp, 0 when no id token */
    json_t *id_claims;    /* verified ID token claims, or NULL */
};
void oidc_tokens_fini(struct oidc_tokens *t);

/* Parses and validates a token endpoint response. nonce: the login's nonce; NULL
 * for a refresh, where the ID token is optional. ERR_NOTFOUND: the ID token
 * names a kid absent from keys (re-fetch the JWKS, then call again). */
int oidc_token_response(const struct oidc_provider *p, const struct jwks *keys, int status,
                        struct str body, const char *nonce, int64_t now_s, struct oidc_tokens *out,
                        struct err *err) WARN_UNUSED;

/* grant_type=refresh_token request. */
int oidc_refresh_request(const struct oidc_provider *p, const struct oidc_metadata *m,
                         const char *refresh_token, int64_t now_s, struct oidc_http *out,
                         struct err *err) WARN_UNUSED;

/* GET userinfo with the access token; ERR_NOTFOUND when there is no endpoint. */
int oidc_userinfo_request(const struct oidc_metadata *m, const char *access_token,
                          struct oidc_http *out, struct err *err) WARN_UNUSED;
/* Parses the userinfo JSON; its sub must equal expected_sub (OIDC Core 5.3.2). */
int oidc_userinfo_parse(int status, struct str body, const char *expected_sub, json_t **out,
                        struct err *err) WARN_UNUSED;

/* Who signed in. Fields malloc'd; release with oidc_identity_fini(). */
struct oidc_identity {
    char *user_key; /* iss + "#" + sub: '#' cannot occur in an issuer */
    char *sub;
    char *email;                     /* may be NULL: absent, unverified, or not one address */
    char *name;                      /* may be NULL */
    json_t *groups;                  /* array of strings, never NULL */
    char *sid;                       /* IdP session id, may be NULL */
    char *claims;                    /* compact JSON of the merged claims */
    int64_t iat_s;                   /* the token's iat, 0 when absent (bearer revocation) */
    const struct authn_attrs *attrs; /* groups and claims parsed (one reference) */
};
void oidc_identity_fini(struct oidc_identity *id);

/* Maps verified ID token claims (plus userinfo, may be NULL) to an identity with
 * the configured claim names. Groups may be a string or an array of strings. */
int oidc_identity_build(const struct oidc_provider *p, const json_t *id_claims,
                        const json_t *userinfo, struct oidc_identity *out,
                        struct err *err) WARN_UNUSED;

/* RP-initiated logout URL at end_session_endpoint, or NULL when the IdP has none.
 * id_token_hint may be NULL (client_id is sent then). malloc'd. */
char *oidc_logout_url(const struct oidc_provider *p, const struct oidc_metadata *m,
                      const char *id_token_hint, const char *post_logout_redirect_uri);

/* Back-Channel Logout 1.0 §2.6: body is the POST form (logout_token=...). On
 * success *sid and/or *sub are set (malloc'd, either may be NULL, not both). */
int oidc_logout_token_verify(const struct oidc_provider *p, const struct jwks *keys,
                             struct str body, struct oidc_replay *replay, int64_t now_s, char **sid,
                             char **sub, struct err *err) WARN_UNUSED;

/* Verifies "Authorization: Bearer <jwt>" (just the token) for API clients
 * against the configured audiences. A token verified once (up to 4 KiB) is
 * remembered (its exact bytes, with the key set it was verified with) for at
 * most 5 minutes and never past its exp: a hit skips the signature but still
 * checks exp. */
int oidc_bearer_verify(const struct oidc_provider *p, const struct jwks *keys, struct str token,
                       int64_t now_s, struct oidc_identity *out, struct err *err) WARN_UNUSED;

/* The identity of a cached bearer token, as text copied into a request's arena. */
struct oidc_bearer_identity {
    const char *user_key, *sub, *email, *name, *sid;
    const struct authn_attrs *attrs; /* held by the arena */
    int64_t iat_s;
};

/* The user id Gatehouse shows for (provider, sub): policy `user`, identity
 * header, assertion sub, decision log. "<provider id>:<sub>", or the bare sub
 * for the provider with bare_user_ids when that sub has no ':' (a bare id
 * never contains ':', and a provider id never does, so the first ':' splits a
 * qualified id). malloc'd. */
char *oidc_user_id(const char *idp_id, bool bare, const char *sub);
/* Is s a valid identity provider id: 1-64 of letters, digits, '.', '_', '-'? */
bool oidc_idp_id_ok(const char *s);

/* A token (byte for byte) that oidc_bearer_verify accepted with this very key
 * set and that is still live: true, with its identity copied into a. No
 * parsing, no digest and no signature: the per-request cost of an API client. */
bool oidc_bearer_cached(const struct oidc_provider *p, const struct jwks *keys, struct str token,
                        int64_t now_s, struct arena *a, struct oidc_bearer_identity *out);

/* Is rd a safe same-host return path? Only "/..." relative paths: rejects
 * "//host", "/\host", "https://host", their percent-encoded forms (%2f, %5c),
 * backslashes and control characters anywhere, and anything over 2 KiB. */
bool oidc_return_path_safe(struct str rd);

/* "<origin>/.gatehouse/oidc/callback", or ".../callback/<id>" when per_idp
 * (several providers: each has its own redirect URI, so a response from one
 * can never be taken for another's). origin: "https://host[:port]". malloc'd. */
char *oidc_redirect_uri(const struct oidc_provider *p, const char *origin, bool per_idp);
/* The configured post_logout_redirect_uri equal to wanted, or NULL when it is
 * not one of them (nothing is sent then: an unregistered URI is refused). */
const char *oidc_post_logout_uri(const struct oidc_provider *p, const char *wanted);

#endif
