/* core/digest.h - SHA-256 for hot paths: the session cookie on every request,
 * the decision log's hash chain on every record. */
#ifndef GH_CORE_DIGEST_H
#define GH_CORE_DIGEST_H

#include <stddef.h>

/* SHA-256 of the concatenation of n parts into out[32], with no allocation
 * (OpenSSL 3's EVP and one-shot SHA256() allocate on every call: see
 * digest.c). */
void digest_sha256(const void *const parts[], const size_t lens[], size_t n, unsigned char out[32]);

#endif
