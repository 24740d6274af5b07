/* authn/keys.h - private keys from PEM files as cjose JWKs (cjose has no PEM
 * import), P-256 key generation, RFC 7638 thumbprints, and symmetric key files.
 * Local file I/O: call at start-up or rotation, never per request. */
#ifndef GH_AUTHN_KEYS_H
#define GH_AUTHN_KEYS_H

#include <cjose/cjose.h>

#include "core/core.h"

/* Loads a PEM private key (EC P-256/P-384 or RSA >= 2048 bits) as a JWK with
 * its private part. *alg gets the natural JWS algorithm ("ES256", "ES384",
 * "RS256"). Caller releases with cjose_jwk_release(). */
cjose_jwk_t *keys_load_pem(const char *path, const char **alg, struct err *err);
/* Same, from memory. */
cjose_jwk_t *keys_parse_pem(struct str pem, const char **alg, struct err *err);
/* Creates a new P-256 key and writes it as PKCS#8 PEM to path (mode 0600,
 * refuses to overwrite). */
int keys_generate_p256_pem(const char *path, struct err *err) WARN_UNUSED;
/* RFC 7638 SHA-256 thumbprint (base64url) of the public part; malloc'd. */
char *keys_thumbprint(const cjose_jwk_t *jwk, struct err *err);
/* Reads a 32-byte key file; creates it with random bytes (mode 0600) when
 * absent and create is true. */
int keys_load_secret32(const char *path, bool create, unsigned char out[32],
                       struct err *err) WARN_UNUSED;

#endif
