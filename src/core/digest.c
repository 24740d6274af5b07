/* core/digest.c - SHA-256 with the algorithm fetched once and a reusable
 * digest context per thread (freed when the thread exits). */
#include "digest.h"

#include <pthread.h>
#include <stdlib.h>

#include <openssl/evp.h>

static EVP_MD *sha256;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t ctx_key;

static void ctx_free(void *ctx)
{
    EVP_MD_CTX_free(ctx);
}

static void init(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    pthread_key_create(&ctx_key, ctx_free);
}

void digest_sha256(const void *const parts[], const size_t lens[], size_t n, unsigned char out[32])
{
    EVP_MD_CTX *ctx;
    unsigned int len = 0;
    int ok;

    pthread_once(&once, init);
    ctx = pthread_getspecific(ctx_key);
    if (ctx == NULL && (ctx = EVP_MD_CTX_new()) != NULL) {
        pthread_setspecific(ctx_key, ctx);
    }
    if (ctx == NULL) {
        abort(); /* out of memory: as xmalloc does */
    }
    ok = EVP_DigestInit_ex(ctx, sha256 != NULL ? sha256 : EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++) {
        ok = EVP_DigestUpdate(ctx, parts[i], lens[i]) == 1;
    }
    if (!ok || EVP_DigestFinal_ex(ctx, out, &len) != 1) {
        abort(); /* SHA-256 cannot fail short of a broken library */
    }
}
