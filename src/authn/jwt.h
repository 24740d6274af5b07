/* authn/jwt.h - JWS/JWT verification (cjose + jansson) with every check done
 * here: algorithm allow-list, kid and key-type fit, iss, aud, azp, exp/iat/nbf
 * with clock skew, nonce. Used for ID tokens, logout tokens and bearer JWTs.
 * Pure CPU work, no I/O, safe to call from any worker thread. */
#ifndef GH_AUTHN_JWT_H
#define GH_AUTHN_JWT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "core/core.h"

/* Algorithms, as a bit set. */
enum jwt_alg {
    JWT_RS256 = 1u << 0,
    JWT_RS384 = 1u << 1,
    JWT_RS512 = 1u << 2,
    JWT_PS256 = 1u << 3,
    JWT_PS384 = 1u << 4,
    JWT_PS512 = 1u << 5,
    JWT_ES256 = 1u << 6,
    JWT_ES384 = 1u << 7,
    JWT_ES512 = 1u << 8,
    JWT_HS256 = 1u << 9, /* only ever with jwt_rules.hmac_secret, never with a JWKS key */
};
#define JWT_ALGS_DEFAULT (JWT_RS256 | JWT_PS256 | JWT_ES256)

/* Parses "RS256" etc. into its bit; 0 for unknown names and for "none". */
unsigned jwt_alg_parse(const char *name);

/* An immutable, ref-counted key set parsed once from a JWKS document. Shared
 * read-only by every worker; swap the pointer to refresh. */
struct jwks;

/* Parses {"keys":[...]}. Keys meant for encryption ("use":"enc") and key types
 * we cannot use are skipped; a set with no usable key is an error. Returns a set
 * with one reference, or NULL with err filled. */
struct jwks *jwks_parse(struct str json, struct err *err);
struct jwks *jwks_ref(struct jwks *k);
/* NULL is a no-op. */
void jwks_unref(struct jwks *k);
size_t jwks_count(const struct jwks *k);
/* A process-unique number for this parsed set (caches key on it; never reused). */
uint64_t jwks_id(const struct jwks *k);

struct jwt_rules {
    const char *issuer;           /* required: exact match of "iss" */
    const char *const *audiences; /* "aud" must contain at least one of these */
    size_t naudiences;
    const char *client_id;            /* when set: checks azp (OIDC Core 3.1.3.7) */
    const char *nonce;                /* when set: "nonce" must equal it */
    bool forbid_nonce;                /* logout tokens must not carry a nonce */
    bool require_iat;                 /* ID tokens and logout tokens */
    bool require_exp;                 /* default-true is spelled out by callers */
    unsigned algs;                    /* allowed algorithms; 0 = JWT_ALGS_DEFAULT */
    const unsigned char *hmac_secret; /* enables HS256 with this shared secret only */
    size_t hmac_secret_len;
    int64_t now_s;   /* current time, seconds since the epoch */
    int64_t skew_s;  /* tolerated clock skew */
    const char *typ; /* when set: header "typ" must equal it (case-insensitive) */
    bool access_typ; /* header "typ", when present, must say access token:
                                      * at+jwt, application/at+jwt (RFC 9068) or the
                                      * uninformative JWT; a payload "typ" of "ID"
                                      * (an ID token, as Keycloak marks it) is refused */
};

/* Verifies a compact JWS and its claims. On success stores the claims object in
 * *claims (caller json_decref()s) and returns 0. Otherwise returns ERR_PARSE
 * (malformed), ERR_NOTFOUND (no key with that kid: the caller may re-fetch the
 * JWKS, at most once per interval) or ERR_CRYPTO (any failed check), with a
 * precise message in err such as "token expired 75s ago". keys may be NULL when
 * only HS256 with hmac_secret is expected. Never logs the token. */
int jwt_verify(struct str token, const struct jwks *keys, const struct jwt_rules *rules,
               json_t **claims, struct err *err) WARN_UNUSED;

/* Reads the header's "kid" without verifying anything (to pick a key set).
 * Returns a malloc'd string or NULL. */
char *jwt_peek_kid(struct str token);

/* The payload's claims without verifying anything (for a token verified
 * already), or NULL. The caller json_decref()s it. */
json_t *jwt_peek_claims(struct str token);

/* Reads a string claim; NULL when absent or not a string. Borrowed from c. */
const char *jwt_claim_str(const json_t *c, const char *name);

#endif
