/* authn/oidc_bearer.c - OpenID Connect tokens that arrive outside a sign-in:
 * the RP-initiated logout URL, back-channel logout tokens, and bearer JWTs
 * with the cache of those already verified. */
#include "oidc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "oidc_int.h"

/* ---- logout ----------------------------------------------------------- */

char *oidc_logout_url(const struct oidc_provider *p, const struct oidc_metadata *m,
                      const char *id_token_hint, const char *post_logout_redirect_uri)
{
    if (m == NULL || m->end_session_endpoint == NULL) {
        return NULL;
    }
    struct sbuf b = { 0 };
    codec_buf_adds(&b, m->end_session_endpoint);
    codec_buf_adds(&b, strchr(m->end_session_endpoint, '?') ? "&" : "?");
    if (id_token_hint != NULL) {
        codec_buf_adds(&b, "id_token_hint=");
        codec_buf_add_urlenc(&b, str_from(id_token_hint));
        codec_buf_adds(&b, "&");
    }
    codec_buf_adds(&b, "client_id=");
    codec_buf_add_urlenc(&b, str_from(p->client_id));
    const char *post = post_logout_redirect_uri;
    if (post != NULL) {
        codec_buf_adds(&b, "&post_logout_redirect_uri=");
        codec_buf_add_urlenc(&b, str_from(post));
    }
    return codec_buf_take(&b);
}

#define BCL_EVENT "http://schemas.openid.net/event/backchannel-logout"

int oidc_logout_token_verify(const struct oidc_provider *p, const struct jwks *keys,
                             struct str body, struct oidc_replay *replay, int64_t now_s, char **sid,
                             char **sub, struct err *err)
{
    struct str raw;
    bool dup = false;
    json_t *c = NULL;
    char *tok = NULL;
    int rc;

    *sid = *sub = NULL;
    if (!codec_form_get(body, "logout_token", &raw, &dup) || dup) {
        return err_set(err, ERR_PARSE, "request has no single logout_token");
    }
    tok = codec_url_decode(raw, NULL);
    if (tok == NULL) {
        return err_set(err, ERR_PARSE, "logout_token is badly encoded");
    }
    const char *auds[] = { p->client_id };
    struct jwt_rules r = {
        .issuer = p->issuer,
        .audiences = auds,
        .naudiences = 1,
        .forbid_nonce = true, /* §2.6 (7): a nonce means an ID token is being replayed */
        .require_iat = true,
        .algs = p->algs,
        .now_s = now_s,
        .skew_s = p->clock_skew_s,
    };
    rc = jwt_verify(str_from(tok), keys, &r, &c, err);
    if (rc != 0) {
        goto out;
    }
    json_t *ev = json_object_get(json_object_get(c, "events"), BCL_EVENT);
    if (!json_is_object(ev)) {
        rc = err_set(err, ERR_CRYPTO, "logout token has no back-channel logout event");
        goto out;
    }
    const char *s_sid = jwt_claim_str(c, "sid");
    const char *s_sub = jwt_claim_str(c, "sub");
    if (s_sid == NULL && s_sub == NULL) {
        rc = err_set(err, ERR_CRYPTO, "logout token has neither sid nor sub");
        goto out;
    }
    const char *jti = jwt_claim_str(c, "jti");
    if (jti == NULL) {
        rc = err_set(err, ERR_CRYPTO, "logout token has no jti");
        goto out;
    }
    json_t *iat = json_object_get(c, "iat");
    json_t *exp = json_object_get(c, "exp");
    int64_t until = json_is_integer(exp) ? (int64_t)json_integer_value(exp)
                                         : (int64_t)json_integer_value(iat) + 600;
    /* Without exp, bound the token's age so the replay cache can forget it. */
    if (!json_is_integer(exp) && (int64_t)json_integer_value(iat) + 600 < now_s - p->clock_skew_s) {
        rc = err_set(err, ERR_CRYPTO, "logout token is too old");
        goto out;
    }
    char *key = xasprintf("bcl %s %s", p->issuer, jti);
    bool fresh = replay == NULL ||
                 oidc_replay_check_and_add(replay, str_from(key), until + p->clock_skew_s, now_s);
    free(key);
    if (!fresh) {
        rc = err_set(err, ERR_CRYPTO, "logout token was already used (jti replay)");
        goto out;
    }
    *sid = s_sid ? xstrdup(s_sid) : NULL;
    *sub = s_sub ? xstrdup(s_sub) : NULL;
out:
    json_decref(c);
    free(tok);
    return rc;
}

#define BEARER_SLOTS     4096
#define BEARER_STRIPES   64
#define BEARER_MAX_AGE_S 300
#define BEARER_MAX_TOKEN 4096 /* longer tokens are verified every time */

/* A slot holds the token's own bytes: a hit is the exact token verified
 * before, compared whole (never a digest of it, so no collision can stand in
 * for it). The 64-bit hash, keyed with a random seed per cache, picks the slot
 * and filters before the comparison: a request is compared with another
 * caller's token only when their keyed hashes match, which the caller can
 * neither aim for nor observe. */
struct bearer_slot {
    uint64_t h;
    char *tok; /* malloc'd, tok_len bytes */
    size_t tok_len;
    uint64_t keys_id;
    int64_t until_s; /* min(exp + skew, verified + BEARER_MAX_AGE_S) */
    bool used;
    struct oidc_identity id; /* the identity built when the token was verified */
};

struct bearer_cache {
    uint64_t seed;
    pthread_mutex_t mu[BEARER_STRIPES];
    struct bearer_slot slot[BEARER_SLOTS];
};

struct bearer_cache *oidc_bearer_cache_new(void)
{
    uint64_t seed;
    if (!codec_rand_bytes((unsigned char *)&seed, sizeof seed)) {
        log_warn("oidc", "no randomness for the bearer token cache: every token is verified");
        return NULL;
    }
    struct bearer_cache *c = xcalloc(1, sizeof *c);
    c->seed = seed;
    for (size_t i = 0; i < BEARER_STRIPES; i++) {
        pthread_mutex_init(&c->mu[i], NULL);
    }
    return c;
}

void oidc_bearer_cache_free(struct bearer_cache *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < BEARER_SLOTS; i++) {
        oidc_identity_fini(&c->slot[i].id);
        free(c->slot[i].tok);
    }
    for (size_t i = 0; i < BEARER_STRIPES; i++) {
        pthread_mutex_destroy(&c->mu[i]);
    }
    free(c);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void identity_copy(struct oidc_identity *dst, const struct oidc_identity *src)
{
    dst->user_key = dup_or_null(src->user_key);
    dst->sub = dup_or_null(src->sub);
    dst->email = dup_or_null(src->email);
    dst->name = dup_or_null(src->name);
    dst->groups = json_deep_copy(src->groups);
    dst->sid = dup_or_null(src->sid);
    dst->claims = dup_or_null(src->claims);
    dst->iat_s = src->iat_s;
    dst->attrs = src->attrs ? attrs_ref(src->attrs) : NULL;
}

static uint64_t token_hash(const struct bearer_cache *c, struct str tok)
{
    return str_hash(c->seed, tok.p, tok.len);
}

/* The live slot holding exactly this token, verified with this key set; the
 * caller holds the slot's stripe lock. */
static struct bearer_slot *slot_hit(struct bearer_cache *c, size_t i, uint64_t h, struct str tok,
                                    uint64_t keys_id, int64_t now_s)
{
    struct bearer_slot *s = &c->slot[i];
    bool hit = s->used && s->h == h && s->tok_len == tok.len && s->keys_id == keys_id &&
               now_s < s->until_s && memcmp(s->tok, tok.p, tok.len) == 0;
    return hit ? s : NULL;
}

/* Copies the cached identity into out and returns true on a live hit. */
static bool bearer_cache_get(struct bearer_cache *c, struct str tok, uint64_t keys_id,
                             int64_t now_s, struct oidc_identity *out)
{
    uint64_t h = token_hash(c, tok);
    size_t i = (size_t)(h % BEARER_SLOTS);
    pthread_mutex_lock(&c->mu[i % BEARER_STRIPES]);
    struct bearer_slot *s = slot_hit(c, i, h, tok, keys_id, now_s);
    if (s != NULL) {
        identity_copy(out, &s->id);
    }
    pthread_mutex_unlock(&c->mu[i % BEARER_STRIPES]);
    return s != NULL;
}

static void bearer_cache_put(struct bearer_cache *c, struct str tok, uint64_t keys_id,
                             const struct oidc_identity *id, int64_t until_s)
{
    if (tok.len == 0 || tok.len > BEARER_MAX_TOKEN) {
        return;
    }
    struct oidc_identity copy = { 0 };
    identity_copy(&copy, id);
    char *bytes = xmalloc(tok.len);
    memcpy(bytes, tok.p, tok.len);
    uint64_t h = token_hash(c, tok);
    size_t i = (size_t)(h % BEARER_SLOTS);
    pthread_mutex_lock(&c->mu[i % BEARER_STRIPES]);
    struct bearer_slot *s = &c->slot[i];
    struct oidc_identity old = s->id;
    char *old_tok = s->tok;
    s->h = h;
    s->tok = bytes;
    s->tok_len = tok.len;
    s->keys_id = keys_id;
    s->until_s = until_s;
    s->id = copy;
    s->used = copy.attrs != NULL;
    pthread_mutex_unlock(&c->mu[i % BEARER_STRIPES]);
    oidc_identity_fini(&old);
    free(old_tok);
}

static const char *acopy(struct arena *a, const char *v, bool *ok)
{
    if (v == NULL) {
        return NULL;
    }
    const char *c = arena_strdup(a, v);
    *ok = *ok && c != NULL;
    return c;
}

bool oidc_bearer_cached(const struct oidc_provider *p, const struct jwks *keys, struct str token,
                        int64_t now_s, struct arena *a, struct oidc_bearer_identity *out)
{
    struct bearer_cache *c = p->bearer_cache;
    memset(out, 0, sizeof *out);
    if (c == NULL || keys == NULL || token.len == 0 || token.len > BEARER_MAX_TOKEN) {
        return false;
    }
    uint64_t h = token_hash(c, token);
    size_t i = (size_t)(h % BEARER_SLOTS);
    bool hit = false, ok = true;
    pthread_mutex_lock(&c->mu[i % BEARER_STRIPES]);
    struct bearer_slot *s = slot_hit(c, i, h, token, jwks_id(keys), now_s);
    if (s != NULL) {
        out->user_key = acopy(a, s->id.user_key, &ok);
        out->sub = acopy(a, s->id.sub, &ok);
        out->email = acopy(a, s->id.email, &ok);
        out->name = acopy(a, s->id.name, &ok);
        out->sid = acopy(a, s->id.sid, &ok);
        ok = ok && s->id.attrs != NULL && attrs_hold(a, s->id.attrs);
        out->attrs = s->id.attrs; /* parsed when verified; held until the request ends */
        out->iat_s = s->id.iat_s;
        hit = ok; /* an arena at its cap: verify the slow way, which fails closed */
    }
    pthread_mutex_unlock(&c->mu[i % BEARER_STRIPES]);
    return hit;
}

int oidc_bearer_verify(const struct oidc_provider *p, const struct jwks *keys, struct str token,
                       int64_t now_s, struct oidc_identity *out, struct err *err)
{
    json_t *c = NULL;
    memset(out, 0, sizeof *out);
    /* A hit is this very token, its signature and claims checked with this
     * very key set; the entry ends at its exp (plus skew), so expiry still
     * holds. */
    if (p->bearer_cache != NULL && keys != NULL && token.len <= BEARER_MAX_TOKEN &&
        bearer_cache_get(p->bearer_cache, token, jwks_id(keys), now_s, out)) {
        return 0;
    }
    if (p->naudiences == 0) {
        return err_set(err, ERR_CRYPTO,
                       "identity provider \"%s\" has no bearer \"audiences\" "
                       "configured",
                       p->id);
    }
    /* Access tokens only, unless accept_id_tokens: an ID token carries the
     * sign-in nonce and (where the IdP types its tokens) is not at+jwt. */
    struct jwt_rules r = {
        .issuer = p->issuer,
        .audiences = (const char *const *)p->audiences,
        .naudiences = p->naudiences,
        .require_exp = true,
        .forbid_nonce = !p->accept_id_tokens,
        .access_typ = !p->accept_id_tokens,
        .algs = p->algs,
        .now_s = now_s,
        .skew_s = p->clock_skew_s,
    };
    int rc = jwt_verify(token, keys, &r, &c, err);
    if (rc != 0) {
        return rc;
    }
    if (jwt_claim_str(c, "sub") == NULL) {
        json_decref(c);
        return err_set(err, ERR_CRYPTO, "bearer token has no \"sub\"");
    }
    rc = oidc_identity_build(p, c, NULL, out, err);
    json_t *exp = json_object_get(c, "exp");
    if (rc == 0 && p->bearer_cache != NULL && keys != NULL && json_is_integer(exp)) {
        int64_t until = (int64_t)json_integer_value(exp) + p->clock_skew_s;
        if (until > now_s + BEARER_MAX_AGE_S) {
            until = now_s + BEARER_MAX_AGE_S;
        }
        bearer_cache_put(p->bearer_cache, token, jwks_id(keys), out, until);
    }
    json_decref(c);
    return rc;
}
