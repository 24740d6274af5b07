/* core/digest.h - SHA-256 for hot paths: the session cookie on every request,
 * the decision log's hash chain on every record. */
#ifndef GH_CORE_DIGEST_H
#define GH_CORE_DIGEST_H

#include <stddef.h>

/* SHA-256 of the concatenation of n parts into out[32]. The algorithm is
 * fetched once and each thread reuses one digest context: OpenSSL 3's one-shot
 * SHA256() fetches the algorithm on every call, and a new context per call cost
 * more than hashing a cookie. */
void digest_sha256(const void *const parts[], const size_t lens[], size_t n, unsigned char out[32]);

#endif
