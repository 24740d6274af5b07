/* Unit tests for authn/assertion.c and keys.c: key generation on first start,
 * RFC 7638 kid, assertions verified with the published JWKS (through jwt.c),
 * rotation keeping the old key for its keep time, the reuse cache, and the
 * ES256 signing cost (printed, for the benchmark note). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cmocka.h>
#include <cjose/cjose.h>

#include "authn/assertion.h"
#include "authn/jwt.h"
#include "authn/keys.h"

#define NOW 1800000000

static char dir[64];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/gh-assert-XXXXXX");
    assert_non_null(mkdtemp(dir));
    (void)state;
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    (void)state;
    return 0;
}

static json_t *verify(struct assertion_signer *s, const char *tok, const char *aud, int64_t now,
                      struct err *err)
{
    char *doc = assertion_jwks_json(s, now);
    struct jwks *k = jwks_parse(str_from(doc), err);
    free(doc);
    assert_non_null(k);
    const char *auds[] = { aud };
    struct jwt_rules r = { .issuer = "https://gatehouse.example",
                           .audiences = auds,
                           .naudiences = 1,
                           .require_exp = true,
                           .require_iat = true,
                           .algs = JWT_ES256,
                           .now_s = now,
                           .skew_s = 0 };
    json_t *c = NULL;
    int rc = jwt_verify(str_from(tok), k, &r, &c, err);
    jwks_unref(k);
    return rc == 0 ? c : NULL;
}

static void test_rfc7638_thumbprint_vector(void **state)
{
    /* RFC 7638 §3.1 example key and its thumbprint. */
    static const char jwk[] =
        "{\"kty\":\"RSA\",\"e\":\"AQAB\",\"n\":\"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78"
        "LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n"
        "9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qM"
        "QvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls"
        "1jF44-csFCur-kEgU8awapJzKnqDKgw\"}";
    cjose_err cerr;
    cjose_jwk_t *k = cjose_jwk_import(jwk, strlen(jwk), &cerr);
    assert_non_null(k);
    char *tp = keys_thumbprint(k, NULL);
    assert_string_equal(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    free(tp);
    cjose_jwk_release(k);
    (void)state;
}

static void test_key_generated_on_first_start_and_assertion_verifies(void **state)
{
    struct err err = { 0 };
    char *path = xasprintf("%s/assertion.pem", dir);
    struct assertion_signer *s = assertion_signer_open(path, "https://gatehouse.example", 60, &err);
    assert_non_null(s);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char kid1[64];
    assertion_current_kid(s, kid1, sizeof kid1);
    assertion_signer_free(s);
    /* Second start loads the same key: same kid. */
    s = assertion_signer_open(path, "https://gatehouse.example", 60, &err);
    char kid2[64];
    assertion_current_kid(s, kid2, sizeof kid2);
    assert_string_equal(kid1, kid2);
    assert_int_equal(strlen(kid1), 43);

    struct arena *a = arena_new(0);
    struct assertion_claims c = { .aud = "wiki",
                                  .sub = "https://idp#alice",
                                  .email = "alice@example.com",
                                  .groups_json = "[\"eng\"]",
                                  .sid = "0123456789abcdef",
                                  .device = "dev-1" };
    char *tok = assertion_sign(s, &c, NOW, a, &err);
    assert_non_null(tok);
    json_t *claims = verify(s, tok, "wiki", NOW + 1, &err);
    assert_non_null(claims);
    assert_string_equal(jwt_claim_str(claims, "sub"), "https://idp#alice");
    assert_string_equal(jwt_claim_str(claims, "email"), "alice@example.com");
    assert_string_equal(jwt_claim_str(claims, "device"), "dev-1");
    assert_string_equal(jwt_claim_str(claims, "sid"), "0123456789abcdef");
    assert_string_equal(json_string_value(json_array_get(json_object_get(claims, "groups"), 0)),
                        "eng");
    assert_int_equal(json_integer_value(json_object_get(claims, "exp")), NOW + 60);
    assert_non_null(jwt_claim_str(claims, "jti"));
    json_decref(claims);
    /* Another route's audience, or after the ttl: refused. */
    assert_null(verify(s, tok, "payroll", NOW + 1, &err));
    assert_null(verify(s, tok, "wiki", NOW + 60, &err));
    assert_string_equal(err.msg, "token expired 0s ago");
    arena_free(a);
    assertion_signer_free(s);
    free(path);
    (void)state;
}

static void test_rotation_keeps_old_key_for_its_ttl(void **state)
{
    struct err err = { 0 };
    char *p1 = xasprintf("%s/k1.pem", dir);
    char *p2 = xasprintf("%s/k2.pem", dir);
    struct assertion_signer *s = assertion_signer_open(p1, "https://gatehouse.example", 60, &err);
    struct arena *a = arena_new(0);
    struct assertion_claims c = { .aud = "wiki", .sub = "alice" };
    char *old_tok = assertion_sign(s, &c, NOW, a, &err);
    assert_int_equal(assertion_signer_rotate(s, p2, NOW, 120, &err), 0);
    char *new_tok = assertion_sign(s, &c, NOW, a, &err);
    char *doc = assertion_jwks_json(s, NOW + 10);
    json_error_t jerr;
    json_t *j = json_loads(doc, 0, &jerr);
    assert_int_equal(json_array_size(json_object_get(j, "keys")), 2);
    json_decref(j);
    free(doc);
    json_t *cl = verify(s, old_tok, "wiki", NOW + 10, &err);
    assert_non_null(cl);
    json_decref(cl);
    cl = verify(s, new_tok, "wiki", NOW + 10, &err);
    assert_non_null(cl);
    json_decref(cl);
    /* After the keep time the old key is gone from the JWKS. */
    doc = assertion_jwks_json(s, NOW + 121);
    j = json_loads(doc, 0, &jerr);
    assert_int_equal(json_array_size(json_object_get(j, "keys")), 1);
    json_decref(j);
    free(doc);
    arena_free(a);
    assertion_signer_free(s);
    free(p1);
    free(p2);
    (void)state;
}

static void test_cache_reuses_for_half_ttl_and_reports_cost(void **state)
{
    struct err err = { 0 };
    char *p = xasprintf("%s/k.pem", dir);
    struct assertion_signer *s = assertion_signer_open(p, "https://gatehouse.example", 60, &err);
    struct arena *a = arena_new(0);
    struct assertion_claims c = { .aud = "wiki", .sub = "alice", .sid = "s1" };
    char *t1 = assertion_get(s, &c, NOW, a, &err);
    char *t2 = assertion_get(s, &c, NOW + 29, a, &err);
    assert_string_equal(t1, t2);
    char *t3 = assertion_get(s, &c, NOW + 30, a, &err);
    assert_string_not_equal(t1, t3);
    c.aud = "payroll";
    char *t4 = assertion_get(s, &c, NOW + 30, a, &err);
    assert_string_not_equal(t3, t4);

    struct timespec b, e;
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (int i = 0; i < 200; i++) {
        arena_reset(a);
        assert_non_null(assertion_sign(s, &c, NOW, a, &err));
    }
    clock_gettime(CLOCK_MONOTONIC, &e);
    double sign_us = ((e.tv_sec - b.tv_sec) * 1e9 + (e.tv_nsec - b.tv_nsec)) / 200 / 1e3;
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (int i = 0; i < 2000; i++) {
        arena_reset(a);
        assert_non_null(assertion_get(s, &c, NOW + 30, a, &err));
    }
    clock_gettime(CLOCK_MONOTONIC, &e);
    double cached_us = ((e.tv_sec - b.tv_sec) * 1e9 + (e.tv_nsec - b.tv_nsec)) / 2000 / 1e3;
    print_message("ES256 assertion: %.1f us per signature, %.2f us from the cache\n", sign_us,
                  cached_us);
    assert_true(cached_us < sign_us);
    arena_free(a);
    assertion_signer_free(s);
    free(p);
    (void)state;
}

static void test_non_p256_key_is_refused(void **state)
{
    struct err err = { 0 };
    char *p = xasprintf("%s/rsa.pem", dir);
    char *cmd = xasprintf("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s "
                          "2>/dev/null",
                          p);
    assert_int_equal(system(cmd), 0);
    assert_null(assertion_signer_open(p, "x", 60, &err));
    assert_non_null(strstr(err.msg, "must be an EC P-256 key"));
    /* The RSA PEM itself converts fine (used by private_key_jwt). */
    const char *alg = NULL;
    cjose_jwk_t *k = keys_load_pem(p, &alg, &err);
    assert_non_null(k);
    assert_string_equal(alg, "RS256");
    cjose_jwk_release(k);
    assert_null(keys_load_pem("/nonexistent/key.pem", &alg, &err));
    /* An encrypted key is refused, never a passphrase prompt on the terminal. */
    char *enc = xasprintf("%s/enc.pem", dir);
    char *cmd2 = xasprintf("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 "
                           "-aes256 -pass pass:secret -out %s 2>/dev/null",
                           enc);
    assert_int_equal(system(cmd2), 0);
    assert_null(keys_load_pem(enc, &alg, &err));
    assert_non_null(strstr(err.msg, "encrypted private keys are not supported"));
    free(cmd2);
    free(enc);
    free(cmd);
    free(p);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc7638_thumbprint_vector),
        cmocka_unit_test_setup_teardown(test_key_generated_on_first_start_and_assertion_verifies,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_keeps_old_key_for_its_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_reuses_for_half_ttl_and_reports_cost, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_non_p256_key_is_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
