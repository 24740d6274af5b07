/* authn/assertion.c - signs the X-Gatehouse-Assertion JWT (ES256, cjose) and
 * renders /.gatehouse/jwks.json. The key set is an immutable, ref-counted
 * snapshot swapped under a mutex on rotation, so workers sign without holding
 * any lock. A small striped cache avoids an ECDSA signature per request. */
#include "assertion.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjose/cjose.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "codec.h"
#include "keys.h"

#define MAX_RETIRED   4
#define CACHE_SLOTS   4096
#define CACHE_STRIPES 64

struct pubkey {
    char *kid;
    char *jwk_json;  /* public JWK with use/alg/kid */
    int64_t until_s; /* published until (retired keys); 0 = current */
};

struct keyset {
    atomic_int refs;
    cjose_jwk_t *jwk; /* current private key */
    struct pubkey cur;
    struct pubkey old[MAX_RETIRED];
    size_t nold;
};

struct cache_slot {
    uint64_t h; /* str_hash of key */
    char *key;  /* every claim and the kid, length-prefixed (malloc'd) */
    size_t key_len;
    int64_t reuse_until_s;
    char *token;
};

struct assertion_signer {
    char *issuer;
    int64_t ttl_s;
    pthread_mutex_t mu; /* guards ks (the pointer) */
    struct keyset *ks;
    pthread_mutex_t cmu[CACHE_STRIPES];
    struct cache_slot cache[CACHE_SLOTS];
};

static void keyset_unref(struct keyset *k)
{
    if (k == NULL || atomic_fetch_sub(&k->refs, 1) != 1) {
        return;
    }
    cjose_jwk_release(k->jwk);
    free(k->cur.kid);
    free(k->cur.jwk_json);
    for (size_t i = 0; i < k->nold; i++) {
        free(k->old[i].kid);
        free(k->old[i].jwk_json);
    }
    free(k);
}

static struct keyset *keyset_get(struct assertion_signer *s)
{
    pthread_mutex_lock(&s->mu);
    struct keyset *k = s->ks;
    atomic_fetch_add(&k->refs, 1);
    pthread_mutex_unlock(&s->mu);
    return k;
}

static cjose_jwk_t *load_or_create(const char *path, struct err *err)
{
    struct stat st;
    const char *alg = NULL;
    if (stat(path, &st) != 0) {
        if (keys_generate_p256_pem(path, err) != 0) {
            return NULL;
        }
        log_info("authn", "generated a new assertion signing key at %s", path);
    }
    cjose_jwk_t *k = keys_load_pem(path, &alg, err);
    if (k != NULL && strcmp(alg, "ES256") != 0) {
        cjose_jwk_release(k);
        err_set(err, ERR_CONFIG, "%s: the assertion key must be an EC P-256 key", path);
        return NULL;
    }
    return k;
}

static int pubkey_init(cjose_jwk_t *k, struct pubkey *out, struct err *err)
{
    cjose_err cerr;
    out->kid = keys_thumbprint(k, err);
    if (out->kid == NULL || !cjose_jwk_set_kid(k, out->kid, strlen(out->kid), &cerr)) {
        return err_set(err, ERR_CRYPTO, "cannot compute the key id");
    }
    char *pub = cjose_jwk_to_json(k, false, &cerr);
    json_error_t jerr;
    json_t *j = pub ? json_loads(pub, 0, &jerr) : NULL;
    free(pub);
    if (j == NULL) {
        return err_set(err, ERR_CRYPTO, "cannot export the public key");
    }
    json_object_set_new(j, "use", json_string("sig"));
    json_object_set_new(j, "alg", json_string("ES256"));
    json_object_set_new(j, "kid", json_string(out->kid));
    out->jwk_json = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    return 0;
}

struct assertion_signer *assertion_signer_open(const char *key_file, const char *issuer,
                                               int64_t ttl_s, struct err *err)
{
    cjose_jwk_t *k = load_or_create(key_file, err);
    if (k == NULL) {
        return NULL;
    }
    struct keyset *ks = xcalloc(1, sizeof *ks);
    atomic_init(&ks->refs, 1);
    ks->jwk = k;
    if (pubkey_init(k, &ks->cur, err) != 0) {
        keyset_unref(ks);
        return NULL;
    }
    struct assertion_signer *s = xcalloc(1, sizeof *s);
    s->issuer = xstrdup(issuer);
    s->ttl_s = ttl_s > 0 ? ttl_s : 60;
    s->ks = ks;
    pthread_mutex_init(&s->mu, NULL);
    for (size_t i = 0; i < CACHE_STRIPES; i++) {
        pthread_mutex_init(&s->cmu[i], NULL);
    }
    return s;
}

void assertion_signer_free(struct assertion_signer *s)
{
    if (s == NULL) {
        return;
    }
    keyset_unref(s->ks);
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        free(s->cache[i].token);
        free(s->cache[i].key);
    }
    for (size_t i = 0; i < CACHE_STRIPES; i++) {
        pthread_mutex_destroy(&s->cmu[i]);
    }
    pthread_mutex_destroy(&s->mu);
    free(s->issuer);
    free(s);
}

int assertion_signer_rotate(struct assertion_signer *s, const char *new_key_file, int64_t now_s,
                            int64_t keep_s, struct err *err)
{
    cjose_jwk_t *k = load_or_create(new_key_file, err);
    if (k == NULL) {
        return err ? err->code : ERR_CRYPTO;
    }
    struct keyset *ks = xcalloc(1, sizeof *ks);
    atomic_init(&ks->refs, 1);
    ks->jwk = k;
    if (pubkey_init(k, &ks->cur, err) != 0) {
        keyset_unref(ks);
        return ERR_CRYPTO;
    }
    pthread_mutex_lock(&s->mu);
    struct keyset *prev = s->ks;
    /* The previous key stays published so assertions already in flight verify. */
    ks->old[ks->nold].kid = xstrdup(prev->cur.kid);
    ks->old[ks->nold].jwk_json = xstrdup(prev->cur.jwk_json);
    ks->old[ks->nold++].until_s = now_s + keep_s;
    for (size_t i = 0; i < prev->nold && ks->nold < MAX_RETIRED; i++) {
        if (prev->old[i].until_s > now_s) {
            ks->old[ks->nold].kid = xstrdup(prev->old[i].kid);
            ks->old[ks->nold].jwk_json = xstrdup(prev->old[i].jwk_json);
            ks->old[ks->nold++].until_s = prev->old[i].until_s;
        }
    }
    s->ks = ks;
    pthread_mutex_unlock(&s->mu);
    keyset_unref(prev);
    log_info("authn", "assertion key rotated to kid %s", ks->cur.kid);
    return 0;
}

void assertion_current_kid(struct assertion_signer *s, char *buf, size_t n)
{
    struct keyset *k = keyset_get(s);
    snprintf(buf, n, "%s", k->cur.kid);
    keyset_unref(k);
}

char *assertion_jwks_json(struct assertion_signer *s, int64_t now_s)
{
    struct keyset *k = keyset_get(s);
    struct sbuf b = { 0 };
    codec_buf_adds(&b, "{\"keys\":[");
    codec_buf_adds(&b, k->cur.jwk_json);
    for (size_t i = 0; i < k->nold; i++) {
        if (k->old[i].until_s > now_s) {
            codec_buf_adds(&b, ",");
            codec_buf_adds(&b, k->old[i].jwk_json);
        }
    }
    codec_buf_adds(&b, "]}");
    keyset_unref(k);
    return codec_buf_take(&b);
}

static char *sign_with(struct assertion_signer *s, struct keyset *k,
                       const struct assertion_claims *c, int64_t now_s, struct arena *a,
                       struct err *err)
{
    unsigned char rnd[16];
    cjose_err cerr;
    char *out = NULL;
    char *payload = NULL;
    cjose_header_t *h = NULL;
    cjose_jws_t *jws = NULL;
    json_t *groups = NULL;

    if (c->aud == NULL || c->sub == NULL) {
        err_set(err, ERR_PARSE, "assertion needs aud and sub");
        return NULL;
    }
    if (!codec_rand_bytes(rnd, sizeof rnd)) {
        err_set(err, ERR_CRYPTO, "no randomness for the assertion jti");
        return NULL;
    }
    char *jti = codec_b64url_encode(rnd, sizeof rnd);
    if (c->groups_json != NULL) {
        json_error_t jerr;
        groups = json_loads(c->groups_json, 0, &jerr);
    }
    if (!json_is_array(groups)) {
        json_decref(groups);
        groups = json_array();
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:o, s:I, s:I, s:s}", "iss", s->issuer, "aud", c->aud,
                          "sub", c->sub, "groups", groups, "iat", (json_int_t)now_s, "exp",
                          (json_int_t)(now_s + s->ttl_s), "jti", jti);
    free(jti);
    if (j == NULL) {
        err_set(err, ERR_NOMEM, "cannot build the assertion claims");
        return NULL;
    }
    if (c->email != NULL) {
        json_object_set_new(j, "email", json_string(c->email));
    }
    if (c->sid != NULL) {
        json_object_set_new(j, "sid", json_string(c->sid));
    }
    if (c->device != NULL) {
        json_object_set_new(j, "device", json_string(c->device));
    }
    payload = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    h = cjose_header_new(&cerr);
    if (payload == NULL || h == NULL || !cjose_header_set(h, CJOSE_HDR_ALG, "ES256", &cerr) ||
        !cjose_header_set(h, CJOSE_HDR_KID, k->cur.kid, &cerr) ||
        !cjose_header_set(h, "typ", "JWT", &cerr)) {
        err_set(err, ERR_CRYPTO, "cannot build the assertion header");
        goto out;
    }
    jws = cjose_jws_sign(k->jwk, h, (const uint8_t *)payload, strlen(payload), &cerr);
    const char *ser = NULL;
    if (jws == NULL || !cjose_jws_export(jws, &ser, &cerr)) {
        err_set(err, ERR_CRYPTO, "cannot sign the assertion");
        goto out;
    }
    out = arena_strdup(a, ser);
    if (out == NULL) {
        err_set(err, ERR_LIMIT, "request arena full");
    }
out:
    cjose_jws_release(jws);
    cjose_header_release(h);
    free(payload);
    return out;
}

char *assertion_sign(struct assertion_signer *s, const struct assertion_claims *c, int64_t now_s,
                     struct arena *a, struct err *err)
{
    struct keyset *k = keyset_get(s);
    char *t = sign_with(s, k, c, now_s, a, err);
    keyset_unref(k);
    return t;
}

/* The cache key: the kid and every claim, each length-prefixed so ("ab","c")
 * and ("a","bc") differ. */
static size_t key_field(char *buf, size_t cap, size_t o, const char *v)
{
    uint32_t n = v ? (uint32_t)strlen(v) + 1 : 0;
    if (o + sizeof n + n <= cap) {
        memcpy(buf + o, &n, sizeof n);
        if (n > 0) {
            memcpy(buf + o + sizeof n, v, n - 1);
        }
    }
    return o + sizeof n + (n ? n - 1 : 0);
}

static size_t claims_key(char *buf, size_t cap, const char *kid, const struct assertion_claims *c)
{
    size_t o = key_field(buf, cap, 0, kid);
    o = key_field(buf, cap, o, c->aud);
    o = key_field(buf, cap, o, c->sub);
    o = key_field(buf, cap, o, c->email);
    o = key_field(buf, cap, o, c->groups_json);
    o = key_field(buf, cap, o, c->sid);
    return key_field(buf, cap, o, c->device);
}

char *assertion_get(struct assertion_signer *s, const struct assertion_claims *c, int64_t now_s,
                    struct arena *a, struct err *err)
{
    struct keyset *k = keyset_get(s);
    char stack[2048];
    size_t len = claims_key(stack, sizeof stack, k->cur.kid, c);
    char *key = stack;
    if (len > sizeof stack) {
        key = xmalloc(len);
        claims_key(key, len, k->cur.kid, c);
    }
    /* A slot by a fast hash; a hit compares the whole key, so a collision can
     * cost a signature, never hand one user's assertion to another. */
    uint64_t h = str_hash(STR_HASH_SEED, key, len);
    size_t slot = (size_t)(h % CACHE_SLOTS);
    pthread_mutex_t *mu = &s->cmu[slot % CACHE_STRIPES];
    char *out = NULL;
    pthread_mutex_lock(mu);
    struct cache_slot *cs = &s->cache[slot];
    if (cs->token != NULL && cs->h == h && cs->key_len == len && memcmp(cs->key, key, len) == 0 &&
        now_s < cs->reuse_until_s) {
        out = arena_strdup(a, cs->token);
    }
    pthread_mutex_unlock(mu);
    bool hit = out != NULL;
    if (!hit) {
        out = sign_with(s, k, c, now_s, a, err);
    }
    if (out != NULL && !hit) {
        char *copy = xstrdup(out), *kcopy = xmalloc(len);
        memcpy(kcopy, key, len);
        pthread_mutex_lock(mu);
        char *old = cs->token, *oldkey = cs->key;
        cs->token = copy;
        cs->key = kcopy;
        cs->key_len = len;
        cs->h = h;
        /* Reuse for half the lifetime: a backend always sees >= ttl/2 left. */
        cs->reuse_until_s = now_s + s->ttl_s / 2;
        pthread_mutex_unlock(mu);
        free(old);
        free(oldkey);
    }
    keyset_unref(k);
    if (key != stack) {
        free(key);
    }
    return out;
}
