/* Unit tests for authn/authn.c: the whole browser sign-in as the proxy will
 * drive it (check -> fetch -> resume), with an in-test IdP that signs tokens
 * with a key made here: login redirect, discovery, callback, token, JWKS,
 * session cookie, /.gatehouse/me, assertion, replay and forged state, open
 * redirect, bearer tokens, single-flight refresh, back-channel logout, logout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <cjose/cjose.h>
#include <jansson.h>

#include "authn/authn.h"
#include "authn/jwt.h"
#include "authn/page.h"

#define ISS "https://idp.example"

static char dir[64];
static cjose_jwk_t *idp_key;
static char *jwks_doc;
static struct authn *an;
static struct arena *a;

static const char discovery[] =
    "{\"issuer\":\"https://idp.example\",\"authorization_endpoint\":\"https://idp.example/auth\","
    "\"token_endpoint\":\"https://idp.example/token\",\"jwks_uri\":\"https://idp.example/jwks\","
    "\"userinfo_endpoint\":\"https://idp.example/me\","
    "\"end_session_endpoint\":\"https://idp.example/session/end\"}";

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *sign(const char *kid, const char *claims)
{
    cjose_err cerr;
    cjose_header_t *h = cjose_header_new(&cerr);
    cjose_header_set(h, CJOSE_HDR_ALG, "ES256", &cerr);
    cjose_header_set(h, CJOSE_HDR_KID, kid, &cerr);
    cjose_jws_t *jws = cjose_jws_sign(idp_key, h, (const uint8_t *)claims, strlen(claims), &cerr);
    const char *ser = NULL;
    cjose_jws_export(jws, &ser, &cerr);
    char *out = xstrdup(ser);
    cjose_jws_release(jws);
    cjose_header_release(h);
    return out;
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/gh-authn-XXXXXX");
    assert_non_null(mkdtemp(dir));
    cjose_err cerr;
    idp_key = cjose_jwk_create_EC_random(CJOSE_JWK_EC_P_256, &cerr);
    cjose_jwk_set_kid(idp_key, "k1", 2, &cerr);
    char *pub = cjose_jwk_to_json(idp_key, false, &cerr);
    jwks_doc = xasprintf("{\"keys\":[%s]}", pub);
    free(pub);

    char *yaml = xasprintf("state: {sqlite: %s/state.db}\n"
                           "session: {cookie: gh, idle_timeout: 1h, max_lifetime: 8h, "
                           "refresh: true, refresh_before: 60s}\n"
                           "upstream_identity:\n  assertion: {key: %s/assertion.pem, ttl: 60s, "
                           "issuer: https://gatehouse.example}\n"
                           "identity_providers:\n"
                           "  - {id: corp, type: oidc, issuer: https://idp.example, "
                           "client_id: gatehouse, client_secret: s3cret, bare_user_ids: true, "
                           "audiences: [https://api.example]}\n"
                           "  - {id: other, type: oidc, issuer: https://other.example, "
                           "client_id: gatehouse, client_secret: s3cret}\n",
                           dir, dir);
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_parse("t.yaml", yaml, strlen(yaml), &d);
    char *db = xasprintf("%s/state.db", dir);
    an = authn_new(doc->root, "t.yaml", db, &d);
    if (an == NULL) {
        conf_diag_print(&d, stderr);
    }
    assert_non_null(an);
    struct err err = { 0 };
    assert_int_equal(authn_start(an, &err), 0);
    conf_doc_free(doc);
    free(db);
    free(yaml);
    a = arena_new(0);
    (void)state;
    return 0;
}

static int teardown(void **state)
{
    authn_free(an);
    arena_free(a);
    cjose_jwk_release(idp_key);
    free(jwks_doc);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    (void)state;
    return 0;
}

static const char *const corp_only[] = { "corp" };

struct rq {
    struct authn_req r;
    struct str cookie[1];
};

static void rq_init(struct rq *q, const char *method, const char *path, const char *query,
                    const char *cookie, const char *accept)
{
    memset(q, 0, sizeof *q);
    q->r.method = str_from(method);
    q->r.host = STR("wiki.example.com");
    q->r.request_origin = "http://wiki.example.com";
    q->r.public_origin = "http://wiki.example.com";
    q->r.path = str_from(path);
    q->r.query = str_from(query);
    if (cookie != NULL) {
        q->cookie[0] = str_from(cookie);
        q->r.cookies = q->cookie;
        q->r.ncookies = 1;
    }
    q->r.accept = str_from(accept ? accept : "text/html,application/xhtml+xml");
    q->r.route_idps = corp_only;
    q->r.nroute_idps = 1;
    q->r.request_id = "req-1";
    q->r.now_ms = now_ms();
}

static const char *header(const struct authn_out *o, const char *name, int nth)
{
    if (strcmp(name, "Location") == 0) {
        return o->resp.kind == AUTHN_ANSWER_REDIRECT ? o->resp.location : NULL;
    }
    for (size_t i = 0; i < o->resp.nheaders; i++) {
        if (strcmp(o->resp.headers[i].name, name) == 0 && nth-- == 0) {
            return o->resp.headers[i].value;
        }
    }
    return NULL;
}

/* The body of a document, or one of authn's pages rendered as the proxy does. */
static const char *page_body(const struct authn_out *o)
{
    size_t len = 0;
    if (o->resp.kind == AUTHN_ANSWER_PAGE) {
        return pages_render(authn_pages(an), (enum page_kind)o->resp.page, o->resp.vars,
                            o->resp.nvars, a, &len);
    }
    assert_int_equal(o->resp.kind, AUTHN_ANSWER_CONTENT);
    return o->resp.body;
}

static char *param(const char *url, const char *name)
{
    char *key = xasprintf("%s=", name);
    const char *p = strstr(url, key);
    assert_non_null(p);
    p += strlen(key);
    size_t n = strcspn(p, "&");
    free(key);
    return xstrndup(p, n);
}

/* "name=value; Path=/..." -> "name=value" */
static char *cookie_pair(const char *set_cookie)
{
    return xstrndup(set_cookie, strcspn(set_cookie, ";"));
}

static char *token_body(const char *nonce, const char *sid, int expires_in, const char *rt)
{
    long now = (long)(now_ms() / 1000);
    char *claims =
        xasprintf("{\"iss\":\"%s\",\"sub\":\"alice\",\"aud\":\"gatehouse\",\"exp\":%ld,"
                  "\"iat\":%ld,%s%s%s\"email\":\"alice@example.com\",\"email_verified\":true,"
                  "\"name\":\"Alice\","
                  "\"groups\":[\"eng\",\"admins\"],\"sid\":\"%s\"}",
                  ISS, now + 300, now, nonce ? "\"nonce\":\"" : "", nonce ? nonce : "",
                  nonce ? "\"," : "", sid);
    char *idt = sign("k1", claims);
    char *body = xasprintf("{\"access_token\":\"AT\",\"token_type\":\"Bearer\",\"expires_in\":%d,"
                           "\"refresh_token\":\"%s\",\"id_token\":\"%s\"}",
                           expires_in, rt, idt);
    free(claims);
    free(idt);
    return body;
}

/* Signs alice in; returns the "gh=..." cookie pair. */
static char *sign_in(const char *sid, int expires_in)
{
    struct rq q;
    struct authn_out o;
    rq_init(&q, "GET", "/.gatehouse/login", "rd=%2Fwiki%3Fx%3D1", NULL, NULL);
    enum authn_step st = authn_check(an, &q.r, a, &o);
    if (st == AUTHN_NEED_FETCH) {
        assert_string_equal(o.fetch.url, "https://idp.example/.well-known/openid-configuration");
        st = authn_resume(an, &q.r, a, &o, 200, STR(discovery));
    }
    assert_int_equal(st, AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 302);
    const char *loc = header(&o, "Location", 0);
    assert_true(strncmp(loc, "https://idp.example/auth?response_type=code", 43) == 0);
    assert_non_null(strstr(loc, "redirect_uri=http%3A%2F%2Fwiki.example.com%2F.gatehouse%2Foidc"
                                "%2Fcallback%2Fcorp"));
    const char *sc = header(&o, "Set-Cookie", 0);
    assert_true(strncmp(sc, "gatehouse_login=", 16) == 0);
    assert_non_null(strstr(sc, "; Max-Age=600; HttpOnly; SameSite=Lax"));
    char *login_cookie = cookie_pair(sc);
    char *state = param(loc, "state");
    char *nonce = param(loc, "nonce");

    char *query = xasprintf("code=CODE1&state=%s&iss=https%%3A%%2F%%2Fidp.example", state);
    rq_init(&q, "GET", "/.gatehouse/oidc/callback/corp", query, login_cookie, NULL);
    st = authn_check(an, &q.r, a, &o);
    assert_int_equal(st, AUTHN_NEED_FETCH);
    assert_string_equal(o.fetch.method, "POST");
    assert_string_equal(o.fetch.url, "https://idp.example/token");
    assert_true(strncmp(o.fetch.body, "grant_type=authorization_code&code=CODE1&", 41) == 0);
    char *tb = token_body(nonce, sid, expires_in, "RT1");
    st = authn_resume(an, &q.r, a, &o, 200, str_from(tb));
    if (st == AUTHN_NEED_FETCH) {
        assert_string_equal(o.fetch.url, "https://idp.example/jwks");
        st = authn_resume(an, &q.r, a, &o, 200, str_from(jwks_doc));
    }
    assert_int_equal(st, AUTHN_RESPOND);
    if (o.resp.status != 302) {
        fail_msg("callback failed: %d %s", o.resp.status, o.reason);
    }
    assert_string_equal(header(&o, "Location", 0), "/wiki?x=1");
    /* The caller's login record names the new user. */
    assert_int_equal(o.event, AUTHN_EV_LOGIN);
    assert_string_equal(o.id.sub, "alice");
    assert_string_equal(o.id.idp, "corp");
    const char *set = header(&o, "Set-Cookie", 0);
    assert_true(strncmp(set, "gh=", 3) == 0);
    assert_non_null(strstr(set, "; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax"));
    assert_null(strstr(set, "Secure")); /* plain HTTP listener */
    assert_true(strncmp(header(&o, "Set-Cookie", 1), "gatehouse_login=; Path=/; Max-Age=0", 35) ==
                0);

    /* The same callback again: the state was consumed. */
    rq_init(&q, "GET", "/.gatehouse/oidc/callback/corp", query, login_cookie, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 400);
    assert_string_equal(o.reason, "sign-in refused: login state was already used (replayed "
                                  "callback)");
    assert_int_equal(o.event, AUTHN_EV_LOGIN_FAILED);
    char *gh = cookie_pair(set);
    free(tb);
    free(query);
    free(state);
    free(nonce);
    free(login_cookie);
    return gh;
}

static void test_unauthenticated_browser_and_api(void **state)
{
    struct rq q;
    struct authn_out o;
    /* An anonymous caller of a route is nobody, not a refusal: the route's
     * policy decides, and the proxy challenges (tests/unit/proxy/test_access.c). */
    rq_init(&q, "GET", "/wiki/page", "a=1&b=2", NULL, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    assert_null(o.id.user_key);
    assert_false(o.id.bearer);
    assert_int_equal(o.event, AUTHN_EV_NONE);
    /* /.gatehouse/me needs someone: the sign-in intent, the same for browsers
     * and API clients (the proxy answers with a 302 or a 401). */
    rq_init(&q, "GET", "/.gatehouse/me", "", NULL, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.kind, AUTHN_ANSWER_SIGNIN);
    assert_false(o.resp.no_redirect);
    assert_false(o.id.bearer);
    assert_null(header(&o, "WWW-Authenticate", 0));
    assert_null(o.resp.body);
    assert_int_equal(o.resp.status, 401);
    assert_int_equal(o.event, AUTHN_EV_SIGNIN_REQUIRED);
    /* Two providers for the route: the chooser page. */
    rq_init(&q, "GET", "/.gatehouse/login", "rd=%2Fx", NULL, NULL);
    q.r.route_idps = NULL;
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 200);
    assert_non_null(strstr(page_body(&o), "/.gatehouse/login?idp=corp&amp;rd=%2Fx"));
    assert_non_null(strstr(page_body(&o), "/.gatehouse/login?idp=other&amp;rd=%2Fx"));
    /* An idp the route does not offer: 400, not the chooser. */
    rq_init(&q, "GET", "/.gatehouse/login", "idp=nope", NULL, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 400);
    /* Where the IdP sends the browser after its sign-out. */
    rq_init(&q, "GET", "/.gatehouse/signed-out", "", NULL, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 200);
    assert_non_null(strstr(page_body(&o), "You are signed out"));
    /* Anonymous /me: sign in first (recorded as such by the caller). */
    rq_init(&q, "GET", "/.gatehouse/me", "", NULL, "application/json");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 401);
    assert_int_equal(o.event, AUTHN_EV_SIGNIN_REQUIRED);
    (void)state;
}

static void test_sign_in_session_me_and_assertion(void **state)
{
    char *gh = sign_in("SID-1", 300);
    struct rq q;
    struct authn_out o;
    rq_init(&q, "GET", "/wiki", "", gh, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    assert_string_equal(o.id.user_key, "https://idp.example#alice");
    assert_string_equal(o.id.sub, "alice");
    assert_string_equal(o.id.email, "alice@example.com");
    assert_string_equal(o.id.attrs->groups_json, "[\"eng\",\"admins\"]");
    assert_int_equal(o.id.attrs->ngroups, 2);
    assert_true(str_eq_cstr(o.id.attrs->groups[1], "admins"));
    assert_string_equal(o.id.idp, "corp");
    assert_int_equal(strlen(o.id.session_id), 16);

    const char *tok = authn_assertion(an, &o.id, "wiki", "dev-1", now_ms(), a);
    assert_non_null(tok);
    assert_string_equal(authn_assertion_header(an), "X-Gatehouse-Assertion");
    struct authn_out j;
    rq_init(&q, "GET", "/.gatehouse/jwks.json", "", NULL, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &j), AUTHN_RESPOND);
    assert_int_equal(j.resp.status, 200);
    struct err err = { 0 };
    struct jwks *k = jwks_parse(str_from(page_body(&j)), &err);
    const char *auds[] = { "wiki" };
    struct jwt_rules r = { .issuer = "https://gatehouse.example",
                           .audiences = auds,
                           .naudiences = 1,
                           .require_exp = true,
                           .now_s = now_ms() / 1000 };
    json_t *claims = NULL;
    assert_int_equal(jwt_verify(str_from(tok), k, &r, &claims, &err), 0);
    assert_string_equal(jwt_claim_str(claims, "device"), "dev-1");
    assert_string_equal(jwt_claim_str(claims, "sid"), o.id.session_id);
    json_decref(claims);
    jwks_unref(k);

    /* The backend never sees our cookies. */
    char *hdr = xasprintf("theme=1; %s", gh);
    struct str kept = authn_strip_cookies(an, str_from(hdr), false, a);
    assert_true(str_eq(kept, STR("theme=1")));
    free(hdr);

    rq_init(&q, "GET", "/.gatehouse/me", "", gh, "application/json");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 200);
    json_error_t jerr;
    /* One page, both forms: the proxy picks the JSON for an API client. */
    assert_int_equal(o.resp.kind, AUTHN_ANSWER_PAGE);
    json_t *me = json_loads(o.resp.json, 0, &jerr);
    assert_string_equal(json_string_value(json_object_get(me, "email")), "alice@example.com");
    assert_string_equal(json_string_value(json_object_get(me, "idp")), "corp");
    /* "user" is the subject, as in the identity headers and the decision log. */
    assert_string_equal(json_string_value(json_object_get(me, "user")), "alice");
    assert_non_null(json_string_value(json_object_get(me, "expires")));
    json_decref(me);
    rq_init(&q, "GET", "/.gatehouse/me", "", gh, NULL);
    authn_check(an, &q.r, a, &o);
    assert_non_null(strstr(page_body(&o), "<dd id=\"me-groups\">eng, admins</dd>"));
    /* the session's ends, rendered after authn returned (values kept in the arena) */
    assert_non_null(strstr(page_body(&o), "<time datetime=\"20"));

    /* A Basic header meant for the backend does not hide the session. */
    rq_init(&q, "GET", "/wiki", "", gh, NULL);
    q.r.authorization = STR("Basic YTpi");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    assert_string_equal(o.id.email, "alice@example.com");

    /* A tampered cookie is no session. */
    char *bad = xstrdup(gh);
    bad[5] = bad[5] == 'A' ? 'B' : 'A';
    rq_init(&q, "GET", "/wiki", "", bad, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    assert_null(o.id.user_key);
    free(bad);
    free(gh);
    (void)state;
}

static void test_callback_attacks(void **state)
{
    struct rq q;
    struct authn_out o;
    rq_init(&q, "GET", "/.gatehouse/login", "", NULL, NULL);
    authn_check(an, &q.r, a, &o);
    char *login_cookie = cookie_pair(header(&o, "Set-Cookie", 0));
    rq_init(&q, "GET", "/.gatehouse/oidc/callback/corp", "code=C&state=forged", login_cookie, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 400);
    assert_string_equal(o.reason, "sign-in refused: callback state does not match the login "
                                  "cookie");
    /* An error intent: words for people; the details only in the log (the
     * proxy adds the request id). */
    assert_int_equal(o.resp.kind, AUTHN_ANSWER_ERROR);
    assert_null(strstr(o.resp.message, "state"));
    assert_null(strstr(o.resp.title, "state"));
    rq_init(&q, "GET", "/.gatehouse/oidc/callback/corp", "code=C&state=x", NULL, NULL);
    authn_check(an, &q.r, a, &o);
    assert_string_equal(o.reason, "sign-in refused: no login cookie: state cannot be checked");
    assert_int_equal(o.event, AUTHN_EV_LOGIN_FAILED);
    /* An open redirect in rd is replaced by "/". */
    rq_init(&q, "GET", "/.gatehouse/login", "rd=%2F%2Fevil.example", NULL, NULL);
    authn_check(an, &q.r, a, &o);
    assert_int_equal(o.resp.status, 302);
    /* IdP unreachable during the token exchange: a clear 502 page. */
    char *state_v = param(header(&o, "Location", 0), "state");
    char *lc = cookie_pair(header(&o, "Set-Cookie", 0));
    char *qs = xasprintf("code=C&state=%s", state_v);
    rq_init(&q, "GET", "/.gatehouse/oidc/callback/corp", qs, lc, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_NEED_FETCH);
    assert_int_equal(authn_resume(an, &q.r, a, &o, 0, STR_NULL), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 502);
    assert_string_equal(o.reason, "token endpoint unreachable");
    assert_int_equal(o.event, AUTHN_EV_LOGIN_FAILED);
    assert_true(o.idp_error);
    free(qs);
    free(lc);
    free(state_v);
    free(login_cookie);
    (void)state;
}

static void test_bearer_tokens(void **state)
{
    long now = (long)(now_ms() / 1000);
    char *c = xasprintf("{\"iss\":\"%s\",\"sub\":\"svc\",\"aud\":\"https://api.example\","
                        "\"exp\":%ld}",
                        ISS, now + 60);
    char *t = sign("k1", c);
    char *auth = xasprintf("Bearer %s", t);
    struct rq q;
    struct authn_out o;
    rq_init(&q, "GET", "/api/x", "", NULL, "application/json");
    q.r.authorization = str_from(auth);
    enum authn_step st = authn_check(an, &q.r, a, &o);
    while (st == AUTHN_NEED_FETCH) {
        st = authn_resume(an, &q.r, a, &o, 200,
                          strstr(o.fetch.url, "jwks") ? str_from(jwks_doc) : STR(discovery));
    }
    assert_int_equal(st, AUTHN_OK);
    assert_true(o.id.bearer);
    assert_string_equal(o.id.user_key, "https://idp.example#svc");
    assert_string_equal(o.id.user, "svc"); /* corp owns bare user ids */
    free(auth);
    free(t);
    /* Unknown kid: the key set was fetched just now, so no refetch: 401. */
    t = sign("rotated", c);
    auth = xasprintf("Bearer %s", t);
    q.r.authorization = str_from(auth);
    /* refused: anonymous, marked bearer (a challenge is a 401 invalid_token) */
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    assert_null(o.id.user_key);
    assert_true(o.id.bearer);
    assert_string_equal(o.reason, "bearer token refused: no key with kid \"rotated\" in the JWKS");
    free(auth);
    free(t);
    free(c);
    /* alg none. */
    q.r.authorization = STR("Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIn0.");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    assert_null(o.id.user_key);
    assert_true(o.id.bearer);
    assert_string_equal(o.reason, "bearer token refused: token algorithm \"none\" is not allowed");
    /* A token from an issuer the route does not accept: refused the same way. */
    q.r.authorization = STR("Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2V2aWwifQ.c2ln");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    assert_null(o.id.user_key);
    assert_true(o.id.bearer);
    assert_non_null(strstr(o.reason, "bearer token refused: "));
    /* /.gatehouse/me with a refused token: the challenge, marked bearer. */
    q.r.path = STR("/.gatehouse/me");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.kind, AUTHN_ANSWER_SIGNIN);
    assert_true(o.id.bearer);
    (void)state;
}

static void test_refresh_once_then_rotated(void **state)
{
    char *gh = sign_in("SID-R", 30); /* expires within refresh_before */
    struct rq q1, q2;
    struct authn_out o1, o2;
    rq_init(&q1, "GET", "/wiki", "", gh, NULL);
    assert_int_equal(authn_check(an, &q1.r, a, &o1), AUTHN_NEED_FETCH);
    assert_string_equal(o1.fetch.body, "grant_type=refresh_token&refresh_token=RT1");
    /* Meanwhile other requests go through on the current session. */
    rq_init(&q2, "GET", "/wiki", "", gh, NULL);
    assert_int_equal(authn_check(an, &q2.r, a, &o2), AUTHN_OK);
    char *tb = token_body(NULL, "SID-R", 3600, "RT2");
    assert_int_equal(authn_resume(an, &q1.r, a, &o1, 200, str_from(tb)), AUTHN_OK);
    assert_string_equal(o1.id.email, "alice@example.com");
    free(tb);
    /* Fresh for an hour now: no refresh. */
    assert_int_equal(authn_check(an, &q2.r, a, &o2), AUTHN_OK);
    free(gh);
    (void)state;
}

/* A request that ends while its refresh is in flight (the client left) gives
 * the refresh back: the next request refreshes instead of never again. */
static void test_refresh_released_when_request_ends(void **state)
{
    char *gh = sign_in("SID-A", 30);
    struct rq q;
    struct authn_out o;
    struct arena *gone = arena_new(0);
    rq_init(&q, "GET", "/wiki", "", gh, NULL);
    assert_int_equal(authn_check(an, &q.r, gone, &o), AUTHN_NEED_FETCH);
    arena_free(gone);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_NEED_FETCH);
    char *tb = token_body(NULL, "SID-A", 3600, "RT3");
    assert_int_equal(authn_resume(an, &q.r, a, &o, 200, str_from(tb)), AUTHN_OK);
    free(tb);
    free(gh);
    (void)state;
}

static void test_backchannel_logout_and_logout(void **state)
{
    char *gh1 = sign_in("SID-BCL", 300);
    char *gh2 = sign_in("SID-KEEP", 300);
    long now = (long)(now_ms() / 1000);
    char *c = xasprintf("{\"iss\":\"%s\",\"aud\":\"gatehouse\",\"iat\":%ld,\"exp\":%ld,"
                        "\"jti\":\"j-1\",\"sid\":\"SID-BCL\",\"events\":{\"http://schemas.openid."
                        "net/event/backchannel-logout\":{}}}",
                        ISS, now, now + 120);
    char *t = sign("k1", c);
    char *body = xasprintf("logout_token=%s", t);
    struct rq q;
    struct authn_out o;
    rq_init(&q, "POST", "/.gatehouse/oidc/backchannel-logout", "", NULL, NULL);
    q.r.body = str_from(body);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 200);
    assert_int_equal(o.event, AUTHN_EV_LOGOUT);
    assert_int_equal(o.nlogouts, 1);
    /* Replay of the same logout token. */
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 400);
    assert_string_equal(o.reason, "back-channel logout refused: logout token was already used "
                                  "(jti replay)");
    rq_init(&q, "GET", "/wiki", "", gh1, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK); /* ended: nobody */
    assert_null(o.id.user_key);
    rq_init(&q, "GET", "/wiki", "", gh2, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK); /* other session kept */

    /* GET asks first: a confirmation page with the session's token, nothing ends. */
    rq_init(&q, "GET", "/.gatehouse/logout", "", gh2, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 200);
    assert_int_equal(o.event, AUTHN_EV_NONE);
    const char *tv = strstr(page_body(&o), "name=\"csrf_token\" value=\"");
    assert_non_null(tv);
    tv += 25;
    char *form = xasprintf("csrf_token=%.*s", (int)strcspn(tv, "\""), tv);
    /* A POST from another site, or without the token, is refused. */
    rq_init(&q, "POST", "/.gatehouse/logout", "", gh2, NULL);
    q.r.body = str_from(form);
    q.r.sec_fetch_site = STR("cross-site");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 403);
    rq_init(&q, "POST", "/.gatehouse/logout", "", gh2, NULL);
    q.r.body = STR("csrf_token=forged");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 403);
    /* RP-initiated logout: cookie cleared, IdP told, with the id_token hint. */
    rq_init(&q, "POST", "/.gatehouse/logout", "", gh2, NULL);
    q.r.body = str_from(form);
    q.r.sec_fetch_site = STR("same-origin");
    q.r.origin = STR("http://wiki.example.com");
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    free(form);
    assert_int_equal(o.resp.status, 303);
    const char *loc = header(&o, "Location", 0);
    assert_true(strncmp(loc, "https://idp.example/session/end?id_token_hint=", 46) == 0);
    /* No post_logout_redirect_uri configured: none sent (an unregistered one is refused). */
    assert_null(strstr(loc, "post_logout_redirect_uri"));
    assert_int_equal(o.event, AUTHN_EV_LOGOUT);
    assert_true(strncmp(header(&o, "Set-Cookie", 0), "gh=; Path=/; Max-Age=0", 22) == 0);
    rq_init(&q, "GET", "/wiki", "", gh2, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK); /* signed out: nobody */
    assert_null(o.id.user_key);
    /* Coming back from the IdP: the signed-out page. */
    rq_init(&q, "GET", "/.gatehouse/logout", "", NULL, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 200);
    assert_non_null(strstr(page_body(&o), "You are signed out"));

    /* The IdP's back-channel logout for a session signed out here already
     * (sid SID-KEEP) does not widen to the user's other sessions by sub. */
    char *gh3 = sign_in("SID-OTHER", 300);
    char *c2 = xasprintf("{\"iss\":\"%s\",\"aud\":\"gatehouse\",\"iat\":%ld,\"exp\":%ld,"
                         "\"jti\":\"j-2\",\"sid\":\"SID-KEEP\",\"sub\":\"alice\",\"events\":"
                         "{\"http://schemas.openid.net/event/backchannel-logout\":{}}}",
                         ISS, now, now + 120);
    char *t2 = sign("k1", c2);
    char *body2 = xasprintf("logout_token=%s", t2);
    rq_init(&q, "POST", "/.gatehouse/oidc/backchannel-logout", "", NULL, NULL);
    q.r.body = str_from(body2);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_RESPOND);
    assert_int_equal(o.resp.status, 200);
    assert_int_equal(o.nlogouts, 0);
    rq_init(&q, "GET", "/wiki", "", gh3, NULL);
    assert_int_equal(authn_check(an, &q.r, a, &o), AUTHN_OK);
    free(gh3);
    free(c2);
    free(t2);
    free(body2);
    free(body);
    free(t);
    free(c);
    free(gh1);
    free(gh2);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unauthenticated_browser_and_api),
        cmocka_unit_test(test_sign_in_session_me_and_assertion),
        cmocka_unit_test(test_callback_attacks),
        cmocka_unit_test(test_bearer_tokens),
        cmocka_unit_test(test_refresh_once_then_rotated),
        cmocka_unit_test(test_refresh_released_when_request_ends),
        cmocka_unit_test(test_backchannel_logout_and_logout),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
