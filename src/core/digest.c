/* core/digest.c - SHA-256 without an allocation per hash.
 *
 * OpenSSL 3.0's EVP_DigestInit_ex frees and re-creates the provider's context
 * on every init, even on a reused EVP_MD_CTX with a fetched-once EVP_MD (one
 * malloc and free and about 550 instructions per hash; EVP_Digest and SHA256()
 * allocate more). The SHA256_* functions hash in a context on the stack with
 * the same assembly (SHA-NI where the CPU has it). They are deprecated in
 * OpenSSL 3 but present; should a later OpenSSL drop them, the EVP form (one
 * context per thread) is the fallback. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "digest.h"

#include <stdlib.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

void digest_sha256(const void *const parts[], const size_t lens[], size_t n, unsigned char out[32])
{
    SHA256_CTX ctx;
    int ok = SHA256_Init(&ctx) == 1;

    for (size_t i = 0; ok && i < n; i++) {
        ok = SHA256_Update(&ctx, parts[i], lens[i]) == 1;
    }
    if (!ok || SHA256_Final(out, &ctx) != 1) {
        abort(); /* SHA-256 cannot fail short of a broken library */
    }
    OPENSSL_cleanse(&ctx, sizeof ctx); /* it held the session cookie */
}
