/* Unit tests for authn/jwt.c: keys are generated here with cjose, tokens are
 * signed here, and every refusal is asserted by code and message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjose/cjose.h>

#include "authn/codec.h"
#include "authn/jwt.h"

#define NOW 1800000000

static cjose_jwk_t *rsa_key;
static cjose_jwk_t *ec_key;
static struct jwks *keys;

static int setup(void **state)
{
    cjose_err cerr;
    rsa_key = cjose_jwk_create_RSA_random(2048, NULL, 0, &cerr);
    ec_key = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &cerr);
    assert_non_null(rsa_key);
    assert_non_null(ec_key);
    assert_true(cjose_jwk_set_kid(rsa_key, "rsa1", 4, &cerr));
    assert_true(cjose_jwk_set_kid(ec_key, "ec1", 3, &cerr));
    char *r = cjose_jwk_to_json(rsa_key, false, &cerr);
    char *e = cjose_jwk_to_json(ec_key, false, &cerr);
    char *doc =
        xasprintf("{\"keys\":[%s,%s,{\"kty\":\"oct\",\"k\":\"AAAA\",\"kid\":\"sym\"}]}", r, e);
    struct err err = { 0 };
    keys = jwks_parse(str_from(doc), &err);
    assert_non_null(keys);
    assert_int_equal(jwks_count(keys), 2); /* the symmetric key is never loaded */
    free(r);
    free(e);
    free(doc);
    (void)state;
    return 0;
}

static int teardown(void **state)
{
    jwks_unref(keys);
    cjose_jwk_release(rsa_key);
    cjose_jwk_release(ec_key);
    (void)state;
    return 0;
}

static char *sign(const cjose_jwk_t *k, const char *alg, const char *kid, const char *claims)
{
    cjose_err cerr;
    cjose_header_t *h = cjose_header_new(&cerr);
    assert_true(cjose_header_set(h, CJOSE_HDR_ALG, alg, &cerr));
    if (kid != NULL) {
        assert_true(cjose_header_set(h, CJOSE_HDR_KID, kid, &cerr));
    }
    cjose_jws_t *jws = cjose_jws_sign(k, h, (const uint8_t *)claims, strlen(claims), &cerr);
    assert_non_null(jws);
    const char *ser = NULL;
    assert_true(cjose_jws_export(jws, &ser, &cerr));
    char *out = xstrdup(ser);
    cjose_jws_release(jws);
    cjose_header_release(h);
    return out;
}

static const char *const auds[] = { "gatehouse" };

static struct jwt_rules rules(void)
{
    struct jwt_rules r = {
        .issuer = "https://idp.example",
        .audiences = auds,
        .naudiences = 1,
        .client_id = "gatehouse",
        .nonce = "n-123",
        .require_iat = true,
        .require_exp = true,
        .now_s = NOW,
        .skew_s = 60,
    };
    return r;
}

static char *claims_fmt(const char *iss, const char *aud, long exp, long iat, const char *nonce,
                        const char *extra)
{
    return xasprintf("{\"iss\":\"%s\",\"sub\":\"u1\",\"aud\":%s,\"exp\":%ld,\"iat\":%ld,"
                     "\"nonce\":\"%s\"%s}",
                     iss, aud, exp, iat, nonce, extra ? extra : "");
}

static int verify(const char *tok, struct jwt_rules *r, struct err *err)
{
    json_t *c = NULL;
    int rc = jwt_verify(str_from(tok), keys, r, &c, err);
    if (rc == 0) {
        assert_non_null(c);
        assert_string_equal(jwt_claim_str(c, "sub"), "u1");
    }
    json_decref(c);
    return rc;
}

static char *good_claims(void)
{
    return claims_fmt("https://idp.example", "\"gatehouse\"", NOW + 300, NOW, "n-123", NULL);
}

static void test_valid_rs256_es256_ps256_are_accepted(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = good_claims();
    char *t1 = sign(rsa_key, "RS256", "rsa1", c);
    char *t2 = sign(ec_key, "ES256", "ec1", c);
    char *t3 = sign(rsa_key, "PS256", "rsa1", c);
    assert_int_equal(verify(t1, &r, &err), 0);
    assert_int_equal(verify(t2, &r, &err), 0);
    assert_int_equal(verify(t3, &r, &err), 0);
    free(t1);
    free(t2);
    free(t3);
    free(c);
    (void)state;
}

static void test_alg_none_is_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = good_claims();
    const char *h = "{\"alg\":\"none\",\"kid\":\"rsa1\"}";
    char *hb = codec_b64url_encode((const unsigned char *)h, strlen(h));
    char *pb = codec_b64url_encode((const unsigned char *)c, strlen(c));
    char *tok = xasprintf("%s.%s.", hb, pb);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO); /* the classic unsigned form */
    assert_string_equal(err.msg, "token algorithm \"none\" is not allowed");
    free(tok);
    tok = xasprintf("%s.%s.c2ln", hb, pb);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token algorithm \"none\" is not allowed");
    free(tok);
    free(hb);
    free(pb);
    free(c);
    (void)state;
}

static void test_hs256_keyed_with_rsa_public_key_is_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    cjose_err cerr;
    char *pub = cjose_jwk_to_json(rsa_key, false, &cerr);
    cjose_jwk_t *oct = cjose_jwk_create_oct_spec((const uint8_t *)pub, strlen(pub), &cerr);
    char *c = good_claims();
    char *tok = sign(oct, "HS256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token algorithm \"HS256\" is not allowed");
    /* Even with HS256 in the allow-list, a JWKS key is never an HMAC secret. */
    r.algs = JWT_ALGS_DEFAULT | JWT_HS256;
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token algorithm \"HS256\" is not allowed");
    /* With an explicitly configured shared secret, HS256 works with that secret only. */
    r.hmac_secret = (const unsigned char *)"a-shared-secret-of-32-bytes-long";
    r.hmac_secret_len = 32;
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token signature is invalid");
    cjose_jwk_t *good = cjose_jwk_create_oct_spec(r.hmac_secret, 32, &cerr);
    char *tok2 = sign(good, "HS256", NULL, c);
    assert_int_equal(verify(tok2, &r, &err), 0);
    cjose_jwk_release(good);
    cjose_jwk_release(oct);
    free(pub);
    free(tok);
    free(tok2);
    free(c);
    (void)state;
}

static void test_expired_token_is_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c =
        claims_fmt("https://idp.example", "\"gatehouse\"", NOW - 75, NOW - 600, "n-123", NULL);
    char *tok = sign(rsa_key, "RS256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token expired 75s ago");
    /* Within the skew it is still accepted. */
    r.skew_s = 120;
    assert_int_equal(verify(tok, &r, &err), 0);
    free(tok);
    free(c);
    (void)state;
}

static void test_nbf_in_future_is_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = claims_fmt("https://idp.example", "\"gatehouse\"", NOW + 900, NOW, "n-123",
                         ",\"nbf\":1800000500");
    char *tok = sign(ec_key, "ES256", "ec1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token not valid before 500s from now");
    free(tok);
    free(c);
    (void)state;
}

static void test_iat_in_future_and_missing_exp_are_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c =
        claims_fmt("https://idp.example", "\"gatehouse\"", NOW + 900, NOW + 400, "n-123", NULL);
    char *tok = sign(ec_key, "ES256", "ec1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token issued 400s in the future");
    free(tok);
    free(c);
    tok = sign(ec_key, "ES256", "ec1",
               "{\"iss\":\"https://idp.example\",\"sub\":\"u1\",\"aud\":\"gatehouse\","
               "\"iat\":1800000000,\"nonce\":\"n-123\"}");
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token has no \"exp\"");
    free(tok);
    (void)state;
}

static void test_wrong_issuer_is_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = claims_fmt("https://evil.example", "\"gatehouse\"", NOW + 300, NOW, "n-123", NULL);
    char *tok = sign(rsa_key, "RS256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token issuer \"https://evil.example\" is not the expected "
                                 "\"https://idp.example\"");
    free(tok);
    free(c);
    (void)state;
}

static void test_wrong_audience_and_azp_are_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = claims_fmt("https://idp.example", "\"other-app\"", NOW + 300, NOW, "n-123", NULL);
    char *tok = sign(rsa_key, "RS256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token audience does not include \"gatehouse\"");
    free(tok);
    free(c);

    /* Several audiences without azp. */
    c = claims_fmt("https://idp.example", "[\"gatehouse\",\"other\"]", NOW + 300, NOW, "n-123",
                   NULL);
    tok = sign(rsa_key, "RS256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token has several audiences but no \"azp\"");
    free(tok);
    free(c);

    /* azp naming another client. */
    c = claims_fmt("https://idp.example", "[\"gatehouse\",\"other\"]", NOW + 300, NOW, "n-123",
                   ",\"azp\":\"other\"");
    tok = sign(rsa_key, "RS256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token \"azp\" \"other\" is not our client");
    free(tok);
    free(c);

    /* Array audience with our azp passes. */
    c = claims_fmt("https://idp.example", "[\"other\",\"gatehouse\"]", NOW + 300, NOW, "n-123",
                   ",\"azp\":\"gatehouse\"");
    tok = sign(rsa_key, "RS256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), 0);
    free(tok);
    free(c);
    (void)state;
}

static void test_unknown_kid_is_notfound(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = good_claims();
    char *tok = sign(rsa_key, "RS256", "rotated-away", c);
    assert_int_equal(verify(tok, &r, &err), ERR_NOTFOUND);
    assert_string_equal(err.msg, "no key with kid \"rotated-away\" in the JWKS");
    char *kid = jwt_peek_kid(str_from(tok));
    assert_string_equal(kid, "rotated-away");
    free(kid);
    free(tok);
    /* A kid naming a key of the wrong type. */
    tok = sign(ec_key, "ES256", "rsa1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "key \"rsa1\" does not fit algorithm ES256");
    free(tok);
    free(c);
    (void)state;
}

static void test_tampered_payload_is_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = good_claims();
    char *tok = sign(rsa_key, "RS256", "rsa1", c);
    /* Swap the payload for one naming another user, keep the signature. */
    char *c2 = xstrdup(c);
    c2[strstr(c2, "\"u1\"") - c2 + 2] = '2';
    char *pb = codec_b64url_encode((const unsigned char *)c2, strlen(c2));
    char *dot1 = strchr(tok, '.');
    char *dot2 = strchr(dot1 + 1, '.');
    char *forged = xasprintf("%.*s.%s%s", (int)(dot1 - tok), tok, pb, dot2);
    assert_int_equal(verify(forged, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token signature is invalid");
    free(forged);
    free(pb);
    free(c2);
    free(tok);
    free(c);
    (void)state;
}

static void test_bad_nonce_is_rejected(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    char *c = claims_fmt("https://idp.example", "\"gatehouse\"", NOW + 300, NOW, "n-999", NULL);
    char *tok = sign(ec_key, "ES256", "ec1", c);
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token nonce does not match the login");
    /* Logout tokens must carry no nonce at all. */
    r.nonce = NULL;
    r.forbid_nonce = true;
    assert_int_equal(verify(tok, &r, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token must not carry a \"nonce\"");
    free(tok);
    free(c);
    (void)state;
}

/* Found by fuzz_jwt: cjose_jws_import() hit an assert() (process abort) on a
 * payload with '=' inside and a length of 4n+1. Must be a plain ERR_PARSE. */
static void test_malformed_base64_does_not_abort(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    assert_int_equal(
        verify("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJpiOivLXhwIjoxOTAwM=DAwfQ.AAAA", &r, &err),
        ERR_PARSE);
    assert_string_equal(err.msg, "token part 2 is not unpadded base64url");
    assert_int_equal(verify("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJ4In0xy.AAAA", &r, &err),
                     ERR_PARSE);
    assert_int_equal(verify("eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.AAAA=", &r, &err), ERR_PARSE);
    /* The same cjose assert through a key member of a JWKS. */
    assert_null(
        jwks_parse(STR("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"A=AB\",\"e\":\"AQAB\"}]}"), &err));
    assert_null(jwks_parse(STR("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAAA\","
                               "\"y\":\"AA\"}]}"),
                           &err));
    (void)state;
}

static void test_weak_rsa_keys_are_not_loaded(void **state)
{
    cjose_err cerr;
    struct err err = { 0 };
    cjose_jwk_t *weak = cjose_jwk_create_RSA_random(1024, NULL, 0, &cerr);
    char *pub = cjose_jwk_to_json(weak, false, &cerr);
    char *doc = xasprintf("{\"keys\":[%s]}", pub);
    assert_null(jwks_parse(str_from(doc), &err));
    assert_string_equal(err.msg, "JWKS has no usable signing key");
    free(doc);
    free(pub);
    cjose_jwk_release(weak);
    (void)state;
}

static void test_malformed_tokens_and_jwks(void **state)
{
    struct jwt_rules r = rules();
    struct err err = { 0 };
    assert_int_equal(verify("abc", &r, &err), ERR_PARSE);
    assert_int_equal(verify("a.b.c.d", &r, &err), ERR_PARSE);
    assert_int_equal(verify("!!!.e30.c2ln", &r, &err), ERR_PARSE);
    assert_string_equal(err.msg, "token part 1 is not unpadded base64url");
    assert_int_equal(verify("e30.e30.c2ln", &r, &err), ERR_CRYPTO); /* decodes, but no alg */
    assert_int_equal(verify("YQ.e30.c2ln", &r, &err), ERR_PARSE);
    assert_string_equal(err.msg, "token header is not base64url JSON");
    assert_null(jwks_parse(STR("{\"keys\":[]}"), &err));
    assert_string_equal(err.msg, "JWKS has no usable signing key");
    assert_null(jwks_parse(STR("[1]"), &err));
    assert_string_equal(err.msg, "JWKS has no \"keys\" array");
    assert_null(jwks_parse(STR("{"), &err));
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_rs256_es256_ps256_are_accepted),
        cmocka_unit_test(test_alg_none_is_rejected),
        cmocka_unit_test(test_hs256_keyed_with_rsa_public_key_is_rejected),
        cmocka_unit_test(test_expired_token_is_rejected),
        cmocka_unit_test(test_nbf_in_future_is_rejected),
        cmocka_unit_test(test_iat_in_future_and_missing_exp_are_rejected),
        cmocka_unit_test(test_wrong_issuer_is_rejected),
        cmocka_unit_test(test_wrong_audience_and_azp_are_rejected),
        cmocka_unit_test(test_unknown_kid_is_notfound),
        cmocka_unit_test(test_tampered_payload_is_rejected),
        cmocka_unit_test(test_bad_nonce_is_rejected),
        cmocka_unit_test(test_malformed_base64_does_not_abort),
        cmocka_unit_test(test_weak_rsa_keys_are_not_loaded),
        cmocka_unit_test(test_malformed_tokens_and_jwks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
