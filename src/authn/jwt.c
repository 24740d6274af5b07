/* authn/jwt.c - compact JWS verification for ID tokens, logout tokens and
 * bearer JWTs. cjose checks the signature; everything cjose leaves to the
 * caller (the header choosing the algorithm, the curve, every claim) is checked
 * here, before or after it, and each refusal gets its own message for the log. */
#include "jwt.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <cjose/cjose.h>
#include <openssl/crypto.h>

#include "codec.h"

#define JWT_MAX_BYTES (16 * 1024)
#define JWKS_MAX_KEYS 64

struct jwks_key {
    cjose_jwk_t *jwk;
    char *kid; /* NULL when the JWK has none */
    cjose_jwk_kty_t kty;
    int crv;      /* EC curve NID, 0 otherwise */
    unsigned alg; /* the JWK's "alg" bit, 0 when absent */
};

struct jwks {
    atomic_int refs;
    uint64_t id;
    size_t n;
    struct jwks_key keys[];
};

static const struct {
    const char *name;
    unsigned bit;
} alg_names[] = {
    { "RS256", JWT_RS256 }, { "RS384", JWT_RS384 }, { "RS512", JWT_RS512 }, { "PS256", JWT_PS256 },
    { "PS384", JWT_PS384 }, { "PS512", JWT_PS512 }, { "ES256", JWT_ES256 }, { "ES384", JWT_ES384 },
    { "ES512", JWT_ES512 }, { "HS256", JWT_HS256 },
};

unsigned jwt_alg_parse(const char *name)
{
    if (name == NULL) {
        return 0;
    }
    for (size_t i = 0; i < sizeof alg_names / sizeof alg_names[0]; i++) {
        if (strcmp(alg_names[i].name, name) == 0) {
            return alg_names[i].bit;
        }
    }
    return 0;
}

static void jwks_free(struct jwks *k)
{
    for (size_t i = 0; i < k->n; i++) {
        cjose_jwk_release(k->keys[i].jwk);
        free(k->keys[i].kid);
    }
    free(k);
}

/* cjose 0.6.2 aborts on some malformed base64url in key members, so each
 * member it decodes is checked with our strict decoder first. */
static bool jwk_members_ok(const json_t *k)
{
    static const char *const b64_members[] = { "n",  "e",  "d", "p", "q", "dp",
                                               "dq", "qi", "x", "y", "k", NULL };
    for (size_t i = 0; b64_members[i] != NULL; i++) {
        json_t *v = json_object_get(k, b64_members[i]);
        if (v == NULL) {
            continue;
        }
        const char *s = json_string_value(v);
        if (s == NULL || strchr(s, '=') != NULL) {
            return false;
        }
        size_t n = 0;
        unsigned char *raw = codec_b64url_decode(str_from(s), &n);
        if (raw == NULL) {
            return false;
        }
        OPENSSL_cleanse(raw, n);
        free(raw);
    }
    return true;
}

struct jwks *jwks_parse(struct str json, struct err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(json.p, json.len, JSON_REJECT_DUPLICATES, &jerr);
    struct jwks *set = NULL;

    if (root == NULL) {
        err_set(err, ERR_PARSE, "JWKS is not JSON: %s", jerr.text);
        return NULL;
    }
    json_t *keys = json_object_get(root, "keys");
    if (!json_is_array(keys)) {
        err_set(err, ERR_PARSE, "JWKS has no \"keys\" array");
        goto out;
    }
    size_t n = json_array_size(keys);
    if (n > JWKS_MAX_KEYS) {
        n = JWKS_MAX_KEYS;
    }
    set = xcalloc(1, sizeof *set + n * sizeof set->keys[0]);
    atomic_init(&set->refs, 1);
    static atomic_uint_fast64_t next_id = 1;
    set->id = atomic_fetch_add(&next_id, 1);
    for (size_t i = 0; i < n; i++) {
        json_t *k = json_array_get(keys, i);
        if (!json_is_object(k)) {
            continue;
        }
        const char *use = json_string_value(json_object_get(k, "use"));
        const char *kty = json_string_value(json_object_get(k, "kty"));
        /* Symmetric keys never come from a published key set: accepting one
         * would let anyone who read the JWKS mint tokens. */
        if ((use != NULL && strcmp(use, "sig") != 0) || kty == NULL ||
            (strcmp(kty, "RSA") != 0 && strcmp(kty, "EC") != 0)) {
            continue;
        }
        if (!jwk_members_ok(k)) {
            continue;
        }
        char *text = json_dumps(k, JSON_COMPACT);
        cjose_err cerr;
        cjose_jwk_t *jwk = text ? cjose_jwk_import(text, strlen(text), &cerr) : NULL;
        free(text);
        if (jwk == NULL) {
            continue;
        }
        struct jwks_key *dst = &set->keys[set->n];
        dst->jwk = jwk;
        dst->kty = cjose_jwk_get_kty(jwk, &cerr);
        /* RSA below 2048 bits is breakable; such a key verifies nothing. */
        if (dst->kty == CJOSE_JWK_KTY_RSA && cjose_jwk_get_keysize(jwk, &cerr) < 2048) {
            cjose_jwk_release(jwk);
            memset(dst, 0, sizeof *dst);
            continue;
        }
        dst->crv = dst->kty == CJOSE_JWK_KTY_EC ? (int)cjose_jwk_EC_get_curve(jwk, &cerr) : 0;
        const char *kid = json_string_value(json_object_get(k, "kid"));
        dst->kid = kid ? xstrdup(kid) : NULL;
        const char *alg = json_string_value(json_object_get(k, "alg"));
        dst->alg = alg ? jwt_alg_parse(alg) : 0;
        if (alg != NULL && dst->alg == 0) {
            /* A key pinned to an algorithm we do not accept is unusable. */
            cjose_jwk_release(jwk);
            free(dst->kid);
            memset(dst, 0, sizeof *dst);
            continue;
        }
        set->n++;
    }
    if (set->n == 0) {
        err_set(err, ERR_PARSE, "JWKS has no usable signing key");
        jwks_free(set);
        set = NULL;
    }
out:
    json_decref(root);
    return set;
}

struct jwks *jwks_ref(struct jwks *k)
{
    atomic_fetch_add(&k->refs, 1);
    return k;
}

void jwks_unref(struct jwks *k)
{
    if (k != NULL && atomic_fetch_sub(&k->refs, 1) == 1) {
        jwks_free(k);
    }
}

size_t jwks_count(const struct jwks *k)
{
    return k ? k->n : 0;
}

uint64_t jwks_id(const struct jwks *k)
{
    return k ? k->id : 0;
}

const char *jwt_claim_str(const json_t *c, const char *name)
{
    return json_string_value(json_object_get(c, name));
}

/* Splits a compact JWS into its three parts. */
static bool split3(struct str t, struct str part[3])
{
    size_t start = 0;
    size_t k = 0;
    for (size_t i = 0; i <= t.len; i++) {
        if (i == t.len || t.p[i] == '.') {
            if (k == 3) {
                return false;
            }
            part[k].p = t.p + start;
            part[k].len = i - start;
            k++;
            start = i + 1;
        }
    }
    return k == 3;
}

static json_t *decode_json_part(struct str part)
{
    size_t n = 0;
    unsigned char *raw = codec_b64url_decode(part, &n);
    if (raw == NULL) {
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, &jerr);
    free(raw);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

char *jwt_peek_kid(struct str token)
{
    struct str part[3];
    if (token.len > JWT_MAX_BYTES || !split3(token, part)) {
        return NULL;
    }
    json_t *h = decode_json_part(part[0]);
    const char *kid = json_string_value(json_object_get(h, "kid"));
    char *out = kid ? xstrdup(kid) : NULL;
    json_decref(h);
    return out;
}

json_t *jwt_peek_claims(struct str token)
{
    struct str part[3];
    if (token.len > JWT_MAX_BYTES || !split3(token, part)) {
        return NULL;
    }
    return decode_json_part(part[1]);
}

/* Does key k fit algorithm alg? RFC 7518 §3: RS and PS need RSA keys, ES256 a
 * P-256 key (cjose 0.6.2 does not check the curve itself), ES384 P-384, ES512 P-521. */
static bool key_fits(const struct jwks_key *k, unsigned alg)
{
    if (k->alg != 0 && k->alg != alg) {
        return false;
    }
    switch (alg) {
    case JWT_RS256:
    case JWT_RS384:
    case JWT_RS512:
    case JWT_PS256:
    case JWT_PS384:
    case JWT_PS512:
        return k->kty == CJOSE_JWK_KTY_RSA;
    case JWT_ES256:
        return k->kty == CJOSE_JWK_KTY_EC && k->crv == CJOSE_JWK_EC_P_256;
    case JWT_ES384:
        return k->kty == CJOSE_JWK_KTY_EC && k->crv == CJOSE_JWK_EC_P_384;
    case JWT_ES512:
        return k->kty == CJOSE_JWK_KTY_EC && k->crv == CJOSE_JWK_EC_P_521;
    default:
        return false;
    }
}

static bool json_int(const json_t *c, const char *name, int64_t *out, bool *present)
{
    json_t *v = json_object_get(c, name);
    *present = v != NULL;
    if (v == NULL) {
        return true;
    }
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d < -1e15 || d > 1e15) {
            return false;
        }
        *out = (int64_t)d;
        return true;
    }
    return false;
}

static int check_claims(const json_t *c, const struct jwt_rules *r, struct err *err)
{
    const char *iss = jwt_claim_str(c, "iss");
    if (iss == NULL) {
        return err_set(err, ERR_CRYPTO, "token has no \"iss\"");
    }
    if (r->issuer == NULL || strcmp(iss, r->issuer) != 0) {
        return err_set(err, ERR_CRYPTO, "token issuer \"%.80s\" is not the expected \"%.80s\"", iss,
                       r->issuer ? r->issuer : "");
    }

    json_t *aud = json_object_get(c, "aud");
    size_t naud = 0;
    bool aud_ok = false;
    if (json_is_string(aud)) {
        naud = 1;
        for (size_t i = 0; i < r->naudiences; i++) {
            aud_ok = aud_ok || strcmp(json_string_value(aud), r->audiences[i]) == 0;
        }
    } else if (json_is_array(aud)) {
        naud = json_array_size(aud);
        for (size_t j = 0; j < naud; j++) {
            const char *a = json_string_value(json_array_get(aud, j));
            if (a == NULL) {
                return err_set(err, ERR_CRYPTO, "token \"aud\" holds a non-string");
            }
            for (size_t i = 0; i < r->naudiences; i++) {
                aud_ok = aud_ok || strcmp(a, r->audiences[i]) == 0;
            }
        }
    } else {
        return err_set(err, ERR_CRYPTO, "token has no \"aud\"");
    }
    if (!aud_ok) {
        return err_set(err, ERR_CRYPTO, "token audience does not include \"%.80s\"",
                       r->naudiences ? r->audiences[0] : "");
    }

    /* OIDC Core 3.1.3.7 (3)-(5): with several audiences azp must be present,
     * and when present it must be our client. */
    const char *azp = jwt_claim_str(c, "azp");
    if (json_object_get(c, "azp") != NULL && azp == NULL) {
        return err_set(err, ERR_CRYPTO, "token \"azp\" is not a string");
    }
    if (r->client_id != NULL) {
        if (naud > 1 && azp == NULL) {
            return err_set(err, ERR_CRYPTO, "token has several audiences but no \"azp\"");
        }
        if (azp != NULL && strcmp(azp, r->client_id) != 0) {
            return err_set(err, ERR_CRYPTO, "token \"azp\" \"%.80s\" is not our client", azp);
        }
    }

    int64_t exp = 0;
    int64_t nbf = 0;
    int64_t iat = 0;
    bool has_exp;
    bool has_nbf;
    bool has_iat;
    if (!json_int(c, "exp", &exp, &has_exp) || !json_int(c, "nbf", &nbf, &has_nbf) ||
        !json_int(c, "iat", &iat, &has_iat)) {
        return err_set(err, ERR_CRYPTO, "token time claim is not a number");
    }
    if (r->require_exp && !has_exp) {
        return err_set(err, ERR_CRYPTO, "token has no \"exp\"");
    }
    if (has_exp && r->now_s >= exp + r->skew_s) {
        return err_set(err, ERR_CRYPTO, "token expired %llds ago", (long long)(r->now_s - exp));
    }
    if (has_nbf && nbf > r->now_s + r->skew_s) {
        return err_set(err, ERR_CRYPTO, "token not valid before %llds from now",
                       (long long)(nbf - r->now_s));
    }
    if (r->require_iat && !has_iat) {
        return err_set(err, ERR_CRYPTO, "token has no \"iat\"");
    }
    if (has_iat && iat > r->now_s + r->skew_s) {
        return err_set(err, ERR_CRYPTO, "token issued %llds in the future",
                       (long long)(iat - r->now_s));
    }

    json_t *nonce = json_object_get(c, "nonce");
    if (r->forbid_nonce && nonce != NULL) {
        return err_set(err, ERR_CRYPTO, "token must not carry a \"nonce\"");
    }
    if (r->nonce != NULL) {
        if (!json_is_string(nonce)) {
            return err_set(err, ERR_CRYPTO, "token has no \"nonce\"");
        }
        if (strcmp(json_string_value(nonce), r->nonce) != 0) {
            return err_set(err, ERR_CRYPTO, "token nonce does not match the login");
        }
    }
    const char *ptyp = jwt_claim_str(c, "typ");
    if (r->access_typ && ptyp != NULL && strcasecmp(ptyp, "ID") == 0) {
        return err_set(err, ERR_CRYPTO, "token is an ID token (\"typ\": \"ID\")");
    }
    const char *sub = jwt_claim_str(c, "sub");
    if (json_object_get(c, "sub") != NULL && (sub == NULL || sub[0] == '\0')) {
        return err_set(err, ERR_CRYPTO, "token \"sub\" is empty or not a string");
    }
    return 0;
}

int jwt_verify(struct str token, const struct jwks *keys, const struct jwt_rules *r,
               json_t **claims, struct err *err)
{
    struct str part[3];
    json_t *hdr = NULL;
    json_t *payload = NULL;
    cjose_jws_t *jws = NULL;
    cjose_jwk_t *hmac = NULL;
    cjose_err cerr;
    int rc;

    *claims = NULL;
    if (token.len == 0 || token.len > JWT_MAX_BYTES) {
        return err_set(err, ERR_PARSE, "token is empty or longer than %d bytes", JWT_MAX_BYTES);
    }
    if (!split3(token, part) || part[0].len == 0 || part[1].len == 0) {
        return err_set(err, ERR_PARSE, "token is not a compact JWS (three dot-separated parts)");
    }
    /* cjose 0.6.2's base64url decoder asserts (aborts the process) on some
     * malformed input, so every part is checked here first: unpadded base64url
     * only (RFC 7515 §2), canonical, decodable. */
    for (size_t i = 0; i < 3; i++) {
        size_t n = 0;
        unsigned char *raw =
            memchr(part[i].p, '=', part[i].len) ? NULL : codec_b64url_decode(part[i], &n);
        if (raw == NULL) {
            return err_set(err, ERR_PARSE, "token part %zu is not unpadded base64url", i + 1);
        }
        free(raw);
    }
    hdr = decode_json_part(part[0]);
    if (hdr == NULL) {
        return err_set(err, ERR_PARSE, "token header is not base64url JSON");
    }
    const char *alg_name = jwt_claim_str(hdr, "alg");
    if (alg_name == NULL) {
        rc = err_set(err, ERR_CRYPTO, "token header has no \"alg\"");
        goto out;
    }
    unsigned alg = jwt_alg_parse(alg_name);
    unsigned allowed = r->algs ? r->algs : JWT_ALGS_DEFAULT;
    if (r->hmac_secret == NULL) {
        /* HMAC only with an explicitly configured shared secret, so a public
         * key can never be used as an HMAC secret. */
        allowed &= ~(unsigned)JWT_HS256;
    }
    if (alg == 0 || (alg & allowed) == 0) {
        rc = err_set(err, ERR_CRYPTO, "token algorithm \"%.20s\" is not allowed", alg_name);
        goto out;
    }
    if (json_object_get(hdr, "crit") != NULL) {
        rc = err_set(err, ERR_CRYPTO, "token header has unsupported \"crit\" extensions");
        goto out;
    }
    if (r->typ != NULL) {
        const char *typ = jwt_claim_str(hdr, "typ");
        if (typ == NULL || strcasecmp(typ, r->typ) != 0) {
            rc = err_set(err, ERR_CRYPTO, "token type is not \"%s\"", r->typ);
            goto out;
        }
    }
    if (r->access_typ) {
        const char *typ = jwt_claim_str(hdr, "typ");
        if (json_object_get(hdr, "typ") != NULL &&
            (typ == NULL ||
             (strcasecmp(typ, "at+jwt") != 0 && strcasecmp(typ, "application/at+jwt") != 0 &&
              strcasecmp(typ, "JWT") != 0))) {
            rc = err_set(err, ERR_CRYPTO, "token type \"%.40s\" is not an access token",
                         typ ? typ : "?");
            goto out;
        }
    }

    const cjose_jwk_t *key = NULL;
    if (alg == JWT_HS256) {
        hmac = cjose_jwk_create_oct_spec(r->hmac_secret, r->hmac_secret_len, &cerr);
        if (hmac == NULL) {
            rc = err_set(err, ERR_CRYPTO, "cannot load the HMAC secret");
            goto out;
        }
        key = hmac;
    } else {
        const char *kid = jwt_claim_str(hdr, "kid");
        size_t nfit = 0;
        for (size_t i = 0; keys != NULL && i < keys->n; i++) {
            const struct jwks_key *k = &keys->keys[i];
            if (kid != NULL) {
                if (k->kid != NULL && strcmp(k->kid, kid) == 0) {
                    if (!key_fits(k, alg)) {
                        rc = err_set(err, ERR_CRYPTO, "key \"%.60s\" does not fit algorithm %s",
                                     kid, alg_name);
                        goto out;
                    }
                    key = k->jwk;
                    nfit = 1;
                    break;
                }
            } else if (key_fits(k, alg)) {
                key = k->jwk;
                nfit++;
            }
        }
        if (key == NULL) {
            if (kid != NULL) {
                rc = err_set(err, ERR_NOTFOUND, "no key with kid \"%.60s\" in the JWKS", kid);
            } else {
                rc = err_set(err, ERR_NOTFOUND, "no %s key in the JWKS", alg_name);
            }
            goto out;
        }
        if (nfit > 1) {
            rc = err_set(err, ERR_CRYPTO, "token has no kid and the JWKS has several %s keys",
                         alg_name);
            goto out;
        }
    }

    jws = cjose_jws_import(token.p, token.len, &cerr);
    if (jws == NULL) {
        rc = err_set(err, ERR_PARSE, "token rejected by the JWS parser: %s", cerr.message);
        goto out;
    }
    if (!cjose_jws_verify(jws, key, &cerr)) {
        rc = err_set(err, ERR_CRYPTO, "token signature is invalid");
        goto out;
    }
    uint8_t *pt = NULL;
    size_t ptlen = 0;
    if (!cjose_jws_get_plaintext(jws, &pt, &ptlen, &cerr)) {
        rc = err_set(err, ERR_PARSE, "token payload unreadable");
        goto out;
    }
    json_error_t jerr;
    payload = json_loadb((const char *)pt, ptlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(payload)) {
        rc = err_set(err, ERR_PARSE, "token payload is not a JSON object");
        goto out;
    }
    rc = check_claims(payload, r, err);
    if (rc == 0) {
        *claims = payload;
        payload = NULL;
    }
out:
    json_decref(hdr);
    json_decref(payload);
    cjose_jws_release(jws);
    if (hmac != NULL) {
        cjose_jwk_release(hmac);
    }
    return rc;
}
