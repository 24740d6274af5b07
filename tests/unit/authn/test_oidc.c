/* Unit tests for authn/oidc.c: provider config, discovery, the login cookie,
 * callback attacks, token/userinfo responses, logout tokens, bearer JWTs and
 * the open-redirect guard. Keys and tokens are made here; no network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjose/cjose.h>

#include "authn/codec.h"
#include "authn/oidc.h"

#define NOW 1800000000
#define ISS "https://idp.example"

static cjose_jwk_t *idp_key;
static struct jwks *keys;
static struct oidc_provider *prov;
static struct oidc_metadata *meta;
static const unsigned char cookie_key[32] = "0123456789abcdef0123456789abcdef";

static const char conf_yaml[] = "identity_providers:\n"
                                "  - id: corp\n"
                                "    type: oidc\n"
                                "    issuer: https://idp.example\n"
                                "    client_id: gatehouse\n"
                                "    client_secret: s3cret/+\n"
                                "    scopes: [email, profile]\n"
                                "    claims: {groups: roles}\n"
                                "    audiences: [https://api.example]\n";

static const char discovery[] = "{\"issuer\":\"https://idp.example\","
                                "\"authorization_endpoint\":\"https://idp.example/auth\","
                                "\"token_endpoint\":\"https://idp.example/token\","
                                "\"userinfo_endpoint\":\"https://idp.example/me\","
                                "\"jwks_uri\":\"https://idp.example/jwks\","
                                "\"end_session_endpoint\":\"https://idp.example/session/end\","
                                "\"code_challenge_methods_supported\":[\"S256\"]}";

static int setup(void **state)
{
    cjose_err cerr;
    struct err err = { 0 };
    struct conf_diag d = { 0 };
    idp_key = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &cerr);
    cjose_jwk_set_kid(idp_key, "k1", 2, &cerr);
    char *pub = cjose_jwk_to_json(idp_key, false, &cerr);
    char *doc = xasprintf("{\"keys\":[%s]}", pub);
    keys = jwks_parse(str_from(doc), &err);
    free(pub);
    free(doc);
    struct conf_doc *cd = conf_doc_parse("t.yaml", conf_yaml, strlen(conf_yaml), &d);
    assert_non_null(cd);
    prov = oidc_provider_parse(&d, conf_get(cd->root, "identity_providers")->items[0], "t.yaml");
    assert_non_null(prov);
    conf_doc_free(cd);
    meta = oidc_metadata_parse(prov, 200, STR(discovery), &err);
    assert_non_null(meta);
    (void)state;
    return 0;
}

static int teardown(void **state)
{
    oidc_metadata_free(meta);
    oidc_provider_free(prov);
    jwks_unref(keys);
    cjose_jwk_release(idp_key);
    (void)state;
    return 0;
}

static char *sign(const char *claims)
{
    cjose_err cerr;
    cjose_header_t *h = cjose_header_new(&cerr);
    cjose_header_set(h, CJOSE_HDR_ALG, "ES256", &cerr);
    cjose_header_set(h, CJOSE_HDR_KID, "k1", &cerr);
    cjose_jws_t *jws = cjose_jws_sign(idp_key, h, (const uint8_t *)claims, strlen(claims), &cerr);
    const char *ser = NULL;
    cjose_jws_export(jws, &ser, &cerr);
    char *out = xstrdup(ser);
    cjose_jws_release(jws);
    cjose_header_release(h);
    return out;
}

static void test_provider_config_defaults_and_errors(void **state)
{
    assert_string_equal(prov->scopes, "openid email profile");
    assert_string_equal(prov->claim_groups, "roles");
    assert_string_equal(prov->claim_email, "email");
    assert_int_equal(prov->clock_skew_s, 60);
    assert_int_equal(prov->naudiences, 1);
    assert_string_equal(prov->audiences[0], "https://api.example");
    assert_false(prov->accept_id_tokens);
    assert_true(prov->require_verified_email);
    assert_false(prov->bare_user_ids);

    static const char bad[] = "- id: x\n  type: oidc\n  issuer: http://idp.example\n"
                              "  client_id: c\n  client_secrets: y\n";
    struct conf_diag d = { 0 };
    struct conf_doc *cd = conf_doc_parse("bad.yaml", bad, strlen(bad), &d);
    assert_null(oidc_provider_parse(&d, cd->root->items[0], "bad.yaml"));
    assert_true(d.stored >= 1);
    assert_string_equal(d.msgs[0],
                        "bad.yaml:5:3: error: unknown key \"client_secrets\" in identity provider "
                        "(did you mean \"client_secret\"?)");
    conf_diag_fini(&d);
    conf_doc_free(cd);

    static const char bad2[] = "- id: x\n  type: oidc\n  issuer: http://idp.example\n"
                               "  client_id: c\n  client_secret: y\n";
    memset(&d, 0, sizeof d);
    cd = conf_doc_parse("bad.yaml", bad2, strlen(bad2), &d);
    assert_null(oidc_provider_parse(&d, cd->root->items[0], "bad.yaml"));
    assert_string_equal(d.msgs[0], "bad.yaml:3:11: error: \"issuer\" must be an https URL, "
                                   "got \"http://idp.example\"");
    conf_diag_fini(&d);
    conf_doc_free(cd);
    (void)state;
}

static void test_discovery_issuer_must_match(void **state)
{
    struct err err = { 0 };
    struct oidc_http h;
    oidc_discovery_request(prov, &h);
    assert_string_equal(h.url, "https://idp.example/.well-known/openid-configuration");
    oidc_http_fini(&h);
    const char *evil = "{\"issuer\":\"https://evil.example\",\"authorization_endpoint\":"
                       "\"https://evil.example/a\",\"token_endpoint\":\"https://evil.example/t\","
                       "\"jwks_uri\":\"https://evil.example/j\"}";
    assert_null(oidc_metadata_parse(prov, 200, str_from(evil), &err));
    assert_string_equal(err.msg, "discovery issuer \"https://evil.example\" is not the "
                                 "configured \"https://idp.example\"");
    const char *insecure = "{\"issuer\":\"https://idp.example\",\"authorization_endpoint\":"
                           "\"http://idp.example/a\",\"token_endpoint\":\"https://idp.example/t\","
                           "\"jwks_uri\":\"https://idp.example/j\"}";
    assert_null(oidc_metadata_parse(prov, 200, str_from(insecure), &err));
    assert_string_equal(err.msg, "discovery \"authorization_endpoint\" is not an https URL");
    assert_null(oidc_metadata_parse(prov, 500, STR("{}"), &err));
    assert_string_equal(err.msg, "discovery answered HTTP 500");
    (void)state;
}

struct login {
    struct oidc_login l;
    struct oidc_pending pd;
    char state[64];
};

static void start(struct login *lg)
{
    struct err err = { 0 };
    assert_int_equal(oidc_login_start(prov, meta, "https://app.example/.gatehouse/oidc/callback",
                                      STR("/wiki?page=1"), NULL, cookie_key, NOW, &lg->l, &err),
                     0);
    assert_int_equal(
        oidc_login_cookie_open(cookie_key, str_from(lg->l.cookie_value), NOW + 5, &lg->pd, &err),
        0);
    snprintf(lg->state, sizeof lg->state, "%s", lg->pd.state);
}

static void test_login_start_builds_pkce_url_and_sealed_cookie(void **state)
{
    struct login lg;
    start(&lg);
    const char *u = lg.l.auth_url;
    assert_true(strncmp(u,
                        "https://idp.example/auth?response_type=code&client_id=gatehouse"
                        "&redirect_uri=https%3A%2F%2Fapp.example%2F.gatehouse%2Foidc%2Fcallback"
                        "&scope=openid%20email%20profile&state=",
                        150) == 0);
    assert_non_null(strstr(u, "&code_challenge_method=S256"));
    assert_int_equal(strlen(lg.pd.state), 43); /* 256 bits */
    assert_int_equal(strlen(lg.pd.nonce), 43);
    assert_int_equal(strlen(lg.pd.code_verifier), 43);
    assert_string_equal(lg.pd.return_path, "/wiki?page=1");
    /* The challenge in the URL is S256 of the verifier in the cookie. */
    unsigned char md[32];
    codec_sha256(lg.pd.code_verifier, strlen(lg.pd.code_verifier), md);
    char *ch = codec_b64url_encode(md, 32);
    char *want = xasprintf("&code_challenge=%s&", ch);
    assert_non_null(strstr(u, want));
    free(ch);
    free(want);
    /* The verifier never appears in the URL. */
    assert_null(strstr(u, lg.pd.code_verifier));

    /* A tampered, expired or foreign-key cookie does not open. */
    struct err err = { 0 };
    struct oidc_pending pd;
    char *c = xstrdup(lg.l.cookie_value);
    c[20] = c[20] == 'A' ? 'B' : 'A';
    assert_int_equal(oidc_login_cookie_open(cookie_key, str_from(c), NOW, &pd, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "login cookie was altered or sealed with another key");
    free(c);
    assert_int_equal(oidc_login_cookie_open(cookie_key, str_from(lg.l.cookie_value),
                                            NOW + OIDC_LOGIN_TTL_S, &pd, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "login took too long (login cookie expired)");
    unsigned char other[32] = { 1 };
    assert_int_equal(oidc_login_cookie_open(other, str_from(lg.l.cookie_value), NOW, &pd, &err),
                     ERR_CRYPTO);
    assert_int_equal(oidc_login_cookie_open(cookie_key, STR(""), NOW, &pd, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "no login in progress (login cookie missing)");
    oidc_pending_fini(&lg.pd);
    oidc_login_fini(&lg.l);
    (void)state;
}

static int callback(struct login *lg, const char *query, struct oidc_replay *rp,
                    struct oidc_http *h, struct err *err)
{
    return oidc_callback(prov, meta, str_from(query), lg ? &lg->pd : NULL, rp, NOW + 10, h, err);
}

static void test_callback_attacks_are_refused(void **state)
{
    struct login lg;
    struct oidc_http h;
    struct err err = { 0 };
    struct oidc_replay *rp = oidc_replay_new(64);
    start(&lg);

    assert_int_equal(callback(&lg, "code=abc", rp, &h, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "callback has no state");
    assert_int_equal(callback(&lg, "code=abc&state=forged", rp, &h, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "callback state does not match the login cookie");
    char *q = xasprintf("code=abc&state=%s", lg.state);
    assert_int_equal(callback(NULL, q, rp, &h, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "no login in progress (login cookie missing)");
    free(q);
    assert_int_equal(
        callback(&lg, "error=access_denied&error_description=User+cancelled", rp, &h, &err),
        ERR_CRYPTO);
    assert_string_equal(err.msg, "identity provider refused the login: access_denied: "
                                 "User cancelled");
    q = xasprintf("state=%s", lg.state);
    assert_int_equal(callback(&lg, q, rp, &h, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "callback has no code");
    free(q);
    q = xasprintf("code=a&code=b&state=%s", lg.state);
    assert_int_equal(callback(&lg, q, rp, &h, &err), ERR_PARSE);
    assert_string_equal(err.msg, "callback repeats the \"code\" parameter");
    free(q);
    q = xasprintf("code=abc&state=%s&iss=https%%3A%%2F%%2Fevil.example", lg.state);
    assert_int_equal(callback(&lg, q, rp, &h, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "callback iss \"https://evil.example\" is not the configured "
                                 "issuer");
    free(q);
    /* RFC 9207 §2.4: a provider that advertises iss must send it. */
    q = xasprintf("code=abc&state=%s", lg.state);
    meta->iss_parameter_supported = true;
    assert_int_equal(callback(&lg, q, rp, &h, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "callback has no iss although identity provider \"corp\" "
                                 "advertises it (RFC 9207)");
    meta->iss_parameter_supported = false;
    free(q);

    /* The good one, then its replay. */
    q = xasprintf("code=c%%2Fd&state=%s&iss=https%%3A%%2F%%2Fidp.example", lg.state);
    assert_int_equal(callback(&lg, q, rp, &h, &err), 0);
    assert_string_equal(h.method, "POST");
    assert_string_equal(h.url, "https://idp.example/token");
    assert_string_equal(h.headers[0], "Content-Type: application/x-www-form-urlencoded");
    /* Basic with form-encoded id and secret: "gatehouse:s3cret%2F%2B". */
    char *b64 = codec_b64_encode((const unsigned char *)"gatehouse:s3cret%2F%2B", 22);
    char *auth = xasprintf("Authorization: Basic %s", b64);
    assert_string_equal(h.headers[2], auth);
    free(b64);
    free(auth);
    char *body = xasprintf("grant_type=authorization_code&code=c%%2Fd&redirect_uri="
                           "https%%3A%%2F%%2Fapp.example%%2F.gatehouse%%2Foidc%%2Fcallback"
                           "&code_verifier=%s",
                           lg.pd.code_verifier);
    assert_string_equal(h.body, body);
    free(body);
    oidc_http_fini(&h);
    assert_int_equal(callback(&lg, q, rp, &h, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "login state was already used (replayed callback)");
    free(q);
    oidc_replay_free(rp);
    oidc_pending_fini(&lg.pd);
    oidc_login_fini(&lg.l);
    (void)state;
}

static char *token_body(const char *nonce, long exp)
{
    char *claims =
        xasprintf("{\"iss\":\"%s\",\"sub\":\"alice\",\"aud\":\"gatehouse\","
                  "\"exp\":%ld,\"iat\":%d,\"nonce\":\"%s\",\"email\":"
                  "\"alice@example.com\",\"email_verified\":true,\"roles\":[\"eng\",\"admins\",7],"
                  "\"sid\":\"S1\"}",
                  ISS, exp, NOW, nonce);
    char *idt = sign(claims);
    char *body = xasprintf("{\"access_token\":\"AT\",\"token_type\":\"Bearer\",\"expires_in\":"
                           "300,\"refresh_token\":\"RT1\",\"id_token\":\"%s\"}",
                           idt);
    free(claims);
    free(idt);
    return body;
}

static void test_token_response_and_identity(void **state)
{
    struct err err = { 0 };
    struct oidc_tokens t;
    char *body = token_body("N1", NOW + 600);
    assert_int_equal(oidc_token_response(prov, keys, 200, str_from(body), "N1", NOW, &t, &err), 0);
    assert_string_equal(t.access_token, "AT");
    assert_string_equal(t.refresh_token, "RT1");
    assert_int_equal(t.expires_at_s, NOW + 300);
    assert_int_equal(t.id_exp_s, NOW + 600);

    json_t *ui = NULL;
    assert_int_equal(
        oidc_userinfo_parse(200, STR("{\"sub\":\"mallory\",\"name\":\"M\"}"), "alice", &ui, &err),
        ERR_CRYPTO);
    assert_string_equal(err.msg, "userinfo sub does not match the ID token");
    assert_int_equal(oidc_userinfo_parse(200,
                                         STR("{\"sub\":\"alice\",\"name\":\"Alice A\","
                                             "\"iss\":\"https://evil\"}"),
                                         "alice", &ui, &err),
                     0);
    struct oidc_identity id;
    assert_int_equal(oidc_identity_build(prov, t.id_claims, ui, &id, &err), 0);
    assert_string_equal(id.user_key, "https://idp.example#alice");
    assert_string_equal(id.email, "alice@example.com");
    assert_string_equal(id.name, "Alice A");
    assert_string_equal(id.sid, "S1");
    assert_int_equal(json_array_size(id.groups), 2);
    assert_string_equal(json_string_value(json_array_get(id.groups, 1)), "admins");
    assert_null(strstr(id.claims, "evil")); /* userinfo cannot override iss */
    oidc_identity_fini(&id);
    json_decref(ui);
    oidc_tokens_fini(&t);

    /* A wrong nonce, an expired token, an error answer. */
    assert_int_equal(oidc_token_response(prov, keys, 200, str_from(body), "N2", NOW, &t, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "token nonce does not match the login");
    free(body);
    body = token_body("N1", NOW - 100);
    assert_int_equal(oidc_token_response(prov, keys, 200, str_from(body), "N1", NOW, &t, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "token expired 100s ago");
    free(body);
    assert_int_equal(oidc_token_response(prov, keys, 400,
                                         STR("{\"error\":\"invalid_grant\",\"error_description\":"
                                             "\"grant request is invalid\"}"),
                                         "N1", NOW, &t, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "token endpoint refused (HTTP 400): invalid_grant: grant "
                                 "request is invalid");
    /* Refresh answers may omit the ID token. */
    assert_int_equal(oidc_token_response(prov, keys, 200,
                                         STR("{\"access_token\":\"AT2\",\"token_type\":\"bearer\","
                                             "\"refresh_token\":\"RT2\"}"),
                                         NULL, NOW, &t, &err),
                     0);
    assert_string_equal(t.refresh_token, "RT2");
    oidc_tokens_fini(&t);
    struct oidc_http h;
    assert_int_equal(oidc_refresh_request(prov, meta, "RT 2", NOW, &h, &err), 0);
    assert_string_equal(h.body, "grant_type=refresh_token&refresh_token=RT%202");
    oidc_http_fini(&h);
    (void)state;
}

static char *logout_body(const char *extra, const char *jti)
{
    char *claims = xasprintf("{\"iss\":\"%s\",\"aud\":\"gatehouse\",\"iat\":%d,\"jti\":\"%s\","
                             "\"events\":{\"http://schemas.openid.net/event/backchannel-logout\""
                             ":{}}%s}",
                             ISS, NOW, jti, extra);
    char *t = sign(claims);
    char *b = xasprintf("logout_token=%s", t);
    free(claims);
    free(t);
    return b;
}

static void test_backchannel_logout_token(void **state)
{
    struct err err = { 0 };
    struct oidc_replay *rp = oidc_replay_new(16);
    char *sid = NULL, *sub = NULL;
    char *b = logout_body(",\"sid\":\"S1\",\"sub\":\"alice\"", "j1");
    assert_int_equal(oidc_logout_token_verify(prov, keys, str_from(b), rp, NOW, &sid, &sub, &err),
                     0);
    assert_string_equal(sid, "S1");
    assert_string_equal(sub, "alice");
    free(sid);
    free(sub);
    assert_int_equal(oidc_logout_token_verify(prov, keys, str_from(b), rp, NOW, &sid, &sub, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "logout token was already used (jti replay)");
    free(b);
    b = logout_body(",\"sid\":\"S1\",\"nonce\":\"x\"", "j2");
    assert_int_equal(oidc_logout_token_verify(prov, keys, str_from(b), rp, NOW, &sid, &sub, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "token must not carry a \"nonce\"");
    free(b);
    b = logout_body("", "j3");
    assert_int_equal(oidc_logout_token_verify(prov, keys, str_from(b), rp, NOW, &sid, &sub, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "logout token has neither sid nor sub");
    free(b);
    assert_int_equal(oidc_logout_token_verify(prov, keys, STR("x=1"), rp, NOW, &sid, &sub, &err),
                     ERR_PARSE);
    oidc_replay_free(rp);
    (void)state;
}

static void test_bearer_and_logout_url(void **state)
{
    struct err err = { 0 };
    struct oidc_identity id;
    char *t =
        sign("{\"iss\":\"https://idp.example\",\"sub\":\"svc\",\"aud\":\"https://api.example\","
             "\"exp\":1800000100,\"roles\":\"robots\"}");
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW, &id, &err), 0);
    assert_string_equal(id.user_key, "https://idp.example#svc");
    assert_string_equal(json_string_value(json_array_get(id.groups, 0)), "robots");
    oidc_identity_fini(&id);
    free(t);
    t = sign("{\"iss\":\"https://idp.example\",\"sub\":\"svc\",\"aud\":\"api\","
             "\"exp\":1800000100}");
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW, &id, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token audience does not include \"https://api.example\"");
    free(t);
    /* The sign-in client's ID token is not an access token. */
    t = sign("{\"iss\":\"https://idp.example\",\"sub\":\"svc\",\"aud\":\"gatehouse\","
             "\"exp\":1800000100}");
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW, &id, &err), ERR_CRYPTO);
    free(t);
    t = sign("{\"iss\":\"https://idp.example\",\"sub\":\"svc\",\"aud\":\"https://api.example\","
             "\"exp\":1800000100,\"nonce\":\"n\"}");
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW, &id, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token must not carry a \"nonce\"");
    free(t);
    t = sign("{\"iss\":\"https://idp.example\",\"sub\":\"svc\",\"aud\":\"https://api.example\","
             "\"exp\":1800000100,\"typ\":\"ID\"}");
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW, &id, &err), ERR_CRYPTO);
    assert_string_equal(err.msg, "token is an ID token (\"typ\": \"ID\")");
    free(t);
    /* Emails: unverified, absent flag, several '@': none is an email. */
    static const char *const bad_mail[] = {
        "{\"iss\":\"i\",\"sub\":\"s\",\"email\":\"a@example.com\",\"email_verified\":false}",
        "{\"iss\":\"i\",\"sub\":\"s\",\"email\":\"a@example.com\"}",
        "{\"iss\":\"i\",\"sub\":\"s\",\"email\":\"x@evil.test@example.com\",\"email_verified\":true}",
        "{\"iss\":\"i\",\"sub\":\"s\",\"email\":\"a b@example.com\",\"email_verified\":true}",
    };
    for (size_t i = 0; i < sizeof bad_mail / sizeof *bad_mail; i++) {
        json_error_t je;
        json_t *c = json_loads(bad_mail[i], 0, &je);
        assert_int_equal(oidc_identity_build(prov, c, NULL, &id, &err), 0);
        assert_null(id.email);
        oidc_identity_fini(&id);
        json_decref(c);
    }
    char *uid = oidc_user_id("corp", false, "alice");
    assert_string_equal(uid, "corp:alice");
    free(uid);
    uid = oidc_user_id("corp", true, "alice");
    assert_string_equal(uid, "alice");
    free(uid);
    uid = oidc_user_id("corp", true, "a:b"); /* a bare id never has ':' */
    assert_string_equal(uid, "corp:a:b");
    free(uid);
    char *u = oidc_logout_url(prov, meta, "ID.T", "https://app.example/.gatehouse/logout?done=1");
    assert_string_equal(u, "https://idp.example/session/end?id_token_hint=ID.T&client_id=gatehouse"
                           "&post_logout_redirect_uri=https%3A%2F%2Fapp.example%2F.gatehouse%2F"
                           "logout%3Fdone%3D1");
    free(u);
    (void)state;
}

static void test_bearer_cache_rechecks_expiry_and_key_set(void **state)
{
    struct err err = { 0 };
    struct oidc_identity id;
    char *t =
        sign("{\"iss\":\"https://idp.example\",\"sub\":\"svc\",\"aud\":\"https://api.example\","
             "\"exp\":1800000100}");
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW, &id, &err), 0);
    oidc_identity_fini(&id);
    /* Cached: same answer. */
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW + 10, &id, &err), 0);
    assert_string_equal(id.user_key, "https://idp.example#svc");
    oidc_identity_fini(&id);
    /* Past exp (+ skew) the cache does not help. */
    assert_int_equal(oidc_bearer_verify(prov, keys, str_from(t), NOW + 100 + 60, &id, &err),
                     ERR_CRYPTO);
    assert_string_equal(err.msg, "token expired 60s ago");
    /* Another key set (rotation): verified again, and this one lacks the key. */
    cjose_err cerr;
    cjose_jwk_t *other = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &cerr);
    cjose_jwk_set_kid(other, "k2", 2, &cerr);
    char *pub = cjose_jwk_to_json(other, false, &cerr);
    char *doc = xasprintf("{\"keys\":[%s]}", pub);
    struct jwks *k2 = jwks_parse(str_from(doc), &err);
    assert_int_equal(oidc_bearer_verify(prov, k2, str_from(t), NOW + 20, &id, &err), ERR_NOTFOUND);
    jwks_unref(k2);
    cjose_jwk_release(other);
    free(pub);
    free(doc);
    free(t);
    (void)state;
}

static void test_return_path_guard(void **state)
{
    static const char *const good[] = { "/",        "/wiki",           "/a/b?x=1&y=https://z",
                                        "/%7Euser", "/search?q=a%20b", "/path#frag" };
    static const char *const bad[] = {
        "",
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "\\\\evil",
        "%2f%2fevil",
        "/%2fevil.example",
        "/%2F%2Fevil",
        "/%5cevil",
        "/%5Cevil",
        "/%252f%252fevil",
        "/a\tb",
        "/\t/evil",
        "/a\r\nSet-Cookie:x",
        "/%0d%0aX:y",
        "/%00",
        "evil.example",
        "javascript:alert(1)",
        "/a b",
        "/ok\\..\\x",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (!oidc_return_path_safe(str_from(good[i]))) {
            fail_msg("rejected good path %s", good[i]);
        }
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (oidc_return_path_safe(str_from(bad[i]))) {
            fail_msg("accepted bad path %s", bad[i]);
        }
    }
    char *big = xmalloc(3000);
    memset(big, 'a', 2999);
    big[0] = '/';
    big[2999] = '\0';
    assert_false(oidc_return_path_safe(str_from(big)));
    free(big);
    (void)state;
}

static void test_replay_cache_expires_and_fills(void **state)
{
    struct oidc_replay *r = oidc_replay_new(2);
    assert_true(oidc_replay_check_and_add(r, STR("a"), NOW + 10, NOW));
    assert_false(oidc_replay_check_and_add(r, STR("a"), NOW + 10, NOW + 5));
    assert_true(oidc_replay_check_and_add(r, STR("b"), NOW + 10, NOW));
    assert_false(oidc_replay_check_and_add(r, STR("c"), NOW + 10, NOW));     /* full: fail closed */
    assert_true(oidc_replay_check_and_add(r, STR("c"), NOW + 30, NOW + 11)); /* a, b expired */
    assert_true(oidc_replay_check_and_add(r, STR("a"), NOW + 30, NOW + 11));
    oidc_replay_free(r);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provider_config_defaults_and_errors),
        cmocka_unit_test(test_discovery_issuer_must_match),
        cmocka_unit_test(test_login_start_builds_pkce_url_and_sealed_cookie),
        cmocka_unit_test(test_callback_attacks_are_refused),
        cmocka_unit_test(test_token_response_and_identity),
        cmocka_unit_test(test_backchannel_logout_token),
        cmocka_unit_test(test_bearer_and_logout_url),
        cmocka_unit_test(test_bearer_cache_rechecks_expiry_and_key_set),
        cmocka_unit_test(test_return_path_guard),
        cmocka_unit_test(test_replay_cache_expires_and_fills),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
