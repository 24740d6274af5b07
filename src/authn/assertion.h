/* authn/assertion.h - the identity assertion for backends (ARCHITECTURE.md
 * "Upstream identity"): an ES256 JWT with iss, aud (route), sub, email, groups,
 * sid, device, iat, exp, jti, signed with a P-256 key whose kid is its RFC 7638
 * thumbprint, and the /.gatehouse/jwks.json body that verifies it. Rotation
 * keeps the previous key published for a while. Signing is thread-safe; a
 * per-(session, route) cache reuses a token for half its lifetime. */
#ifndef GH_AUTHN_ASSERTION_H
#define GH_AUTHN_ASSERTION_H

#include <stdint.h>

#include "core/core.h"

struct assertion_signer;

/* Loads key_file (PEM, P-256); when absent, generates one there (mode 0600).
 * issuer goes into "iss"; ttl_s is the token lifetime (exp - iat). Blocking
 * file I/O: start-up only. */
struct assertion_signer *assertion_signer_open(const char *key_file, const char *issuer,
                                               int64_t ttl_s, struct err *err);
/* NULL is a no-op. Callers must have stopped signing. */
void assertion_signer_free(struct assertion_signer *s);

/* Switches to the key in new_key_file (generated when absent) and keeps the
 * current key in the published JWKS until now_s + keep_s. Thread-safe. */
int assertion_signer_rotate(struct assertion_signer *s, const char *new_key_file, int64_t now_s,
                            int64_t keep_s, struct err *err) WARN_UNUSED;

struct assertion_claims {
    const char *aud;         /* route name; required */
    const char *sub;         /* required */
    const char *email;       /* NULL = omitted */
    const char *groups_json; /* JSON array text; NULL = [] */
    const char *sid;         /* session public id; NULL = omitted */
    const char *device;      /* device id; NULL = omitted */
};

/* Signs a fresh assertion. Arena-owned compact JWS, or NULL (err filled). */
char *assertion_sign(struct assertion_signer *s, const struct assertion_claims *c, int64_t now_s,
                     struct arena *a, struct err *err);

/* Like assertion_sign, but reuses a token signed for the same claims while at
 * least half of its lifetime remains (the cache is keyed by every claim). */
char *assertion_get(struct assertion_signer *s, const struct assertion_claims *c, int64_t now_s,
                    struct arena *a, struct err *err);

/* {"keys":[...]} with the current key and every retired key still within its
 * keep time; malloc'd, caller frees. */
char *assertion_jwks_json(struct assertion_signer *s, int64_t now_s);

/* The current kid (RFC 7638 thumbprint), copied into buf. */
void assertion_current_kid(struct assertion_signer *s, char *buf, size_t n);

#endif
