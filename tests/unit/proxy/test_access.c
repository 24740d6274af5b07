/* Unit tests for the access stage's seams: the data plane refuses every routed
 * request while no access stage is installed (fail closed), and decide() (the
 * pure decision step, proxy/access/decide.c) over allow, deny, sign-in, OPA
 * allow/deny/error/timeout and shadow mode, and decide_device_would_help()
 * (the denied page's enrolled-device hint); the identity as the policy input
 * gets it (parsed once by authn, never again), and the response module
 * (respond.c: HTML or JSON, the sign-in challenge, authn's intents, escaping).
 * No sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "authn/attrs.h"
#include "authn/page.h"
#include "proxy/access/access_int.h"

/* ---- the data plane's interface ------------------------------------------------- */

static enum access_step always_allow(struct request *r)
{
    (void)r;
    return ACCESS_ALLOW;
}

static void test_no_stage_installed_denies(void **state)
{
    struct request r = { 0 };
    static const struct access_stage allow = { .check = always_allow };
    (void)state;

    assert_int_equal(access_check(&r), ACCESS_RESPOND);
    access_stage_install(&allow);
    assert_int_equal(access_check(&r), ACCESS_ALLOW);
    access_stage_install(NULL);
    assert_int_equal(access_check(&r), ACCESS_RESPOND);
    /* A stage without a check function is no stage either. */
    static const struct access_stage empty = { 0 };
    access_stage_install(&empty);
    assert_int_equal(access_check(&r), ACCESS_RESPOND);
    access_stage_install(NULL);
}

/* ---- decide() ----------------------------------------------------------------------- */

static const struct str eng[] = { { "eng", 3 } };

enum who { ANON, ALICE_ENG, BOB };

static struct policy_input input(enum who w)
{
    struct policy_input in = { 0 };
    in.method = STR("GET");
    in.host = STR("app.example.com");
    in.path = STR("/");
    in.time_s = 1764583200;
    if (w != ANON) {
        in.authenticated = true;
        in.user = w == BOB ? STR("bob") : STR("alice");
        in.groups = w == BOB ? NULL : eng;
        in.ngroups = w == BOB ? 0 : 1;
    }
    return in;
}

/* OPA's answer to each question, in order. */
enum opa_reply { NO_OPA = 0, OPA_TRUE, OPA_FALSE, OPA_500, OPA_TIMEOUT, OPA_GARBAGE };

struct decide_case {
    const char *name;
    const char *policy; /* policy text; NULL: built-in any-signed-in; "public": built-in */
    enum who who;
    enum opa_on_error on_error;
    enum opa_reply opa[2];
    enum verdict want;
    bool want_shadow;
    enum policy_decision want_decision;
};

static const char *const eng_only = "rules:\n  - {id: eng, effect: allow, when: {groups: eng}}\n";
static const char *const with_opa =
    "rules:\n  - id: ask\n    effect: allow\n    when: {opa: gatehouse/allow}\n";
static const char *const shadow =
    "mode: shadow\nrules:\n  - {id: eng, effect: allow, when: {groups: eng}}\n";

static const struct decide_case cases[] = {
    { "public route, anonymous", "public", ANON, 0, { 0 }, VERDICT_ALLOW, false, POLICY_ALLOW },
    { "any signed-in, anonymous", NULL, ANON, 0, { 0 }, VERDICT_LOGIN, false, POLICY_DENY },
    { "any signed-in, alice", NULL, ALICE_ENG, 0, { 0 }, VERDICT_ALLOW, false, POLICY_ALLOW },
    { "rule allows", eng_only, ALICE_ENG, 0, { 0 }, VERDICT_ALLOW, false, POLICY_ALLOW },
    { "rule denies", eng_only, BOB, 0, { 0 }, VERDICT_DENY, false, POLICY_DENY },
    { "rule wants a user", eng_only, ANON, 0, { 0 }, VERDICT_LOGIN, false, POLICY_DENY },
    { "OPA allows", with_opa, BOB, 0, { OPA_TRUE }, VERDICT_ALLOW, false, POLICY_ALLOW },
    { "OPA denies", with_opa, BOB, 0, { OPA_FALSE }, VERDICT_DENY, false, POLICY_DENY },
    { "OPA error, fail closed",
      with_opa,
      BOB,
      OPA_ON_ERROR_DENY,
      { OPA_500 },
      VERDICT_DENY,
      false,
      POLICY_DENY },
    { "OPA garbage, fail closed",
      with_opa,
      BOB,
      OPA_ON_ERROR_DENY,
      { OPA_GARBAGE },
      VERDICT_DENY,
      false,
      POLICY_DENY },
    { "OPA timeout, fail closed",
      with_opa,
      BOB,
      OPA_ON_ERROR_DENY,
      { OPA_TIMEOUT },
      VERDICT_DENY,
      false,
      POLICY_DENY },
    { "OPA timeout, on_error allow",
      with_opa,
      BOB,
      OPA_ON_ERROR_ALLOW,
      { OPA_TIMEOUT },
      VERDICT_ALLOW,
      false,
      POLICY_ALLOW },
    { "shadow: would deny, allowed", shadow, BOB, 0, { 0 }, VERDICT_ALLOW, true, POLICY_DENY },
    { "shadow: allows", shadow, ALICE_ENG, 0, { 0 }, VERDICT_ALLOW, true, POLICY_ALLOW },
    { "shadow: anonymous still signs in",
      shadow,
      ANON,
      0,
      { 0 },
      VERDICT_LOGIN,
      true,
      POLICY_DENY },
};

static struct policy *make_policy(const char *text)
{
    struct conf_diag d = { 0 };
    struct policy *p;

    if (!text || strcmp(text, "public") == 0) {
        return policy_new_builtin(text != NULL);
    }
    p = policy_parse("t.yaml", text, strlen(text), &d);
    if (!p) {
        conf_diag_print(&d, stderr);
    }
    conf_diag_fini(&d);
    assert_non_null(p);
    return p;
}

/* What opa_call.c does with an HTTP outcome: the same function. */
static void answer(const struct opa_conf *oc, struct policy_result *res, enum opa_reply rep)
{
    static const char *const bodies[] = {
        [OPA_TRUE] = "{\"result\": true}",
        [OPA_FALSE] = "{\"result\": {\"allow\": false, \"reason\": \"not on the list\"}}",
        [OPA_500] = "{\"code\": \"internal_error\"}",
        [OPA_GARBAGE] = "{\"result\": ",
    };
    const char *body = rep == OPA_TIMEOUT ? NULL : bodies[rep];
    long status = rep == OPA_TIMEOUT ? 0 : (rep == OPA_500 ? 500 : 200);
    bool allow;

    (void)opa_answer_http(oc, res, rep == OPA_TIMEOUT, status, body, body ? strlen(body) : 0,
                          &allow);
}

static void test_decide_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct decide_case *c = &cases[i];
        struct policy *p = make_policy(c->policy);
        struct policy_input in = input(c->who);
        char url[] = "http://127.0.0.1:1";
        struct opa_conf oc = { .url = url, .on_error = c->on_error };
        struct policy_result res;
        size_t asked = 0;
        enum verdict v;

        policy_result_init(&res, NULL);
        while ((v = decide(p, &in, &res)) == VERDICT_ASK_OPA) {
            if (asked == 2 || c->opa[asked] == NO_OPA) {
                fail_msg("%s: OPA asked unexpectedly", c->name);
            }
            answer(&oc, &res, c->opa[asked++]);
        }
        if (v != c->want || res.shadow != c->want_shadow || res.decision != c->want_decision) {
            fail_msg("%s: verdict %d shadow %d decision %d", c->name, (int)v, (int)res.shadow,
                     (int)res.decision);
        }
        if (c->opa[0] != NO_OPA) {
            assert_true(res.opa_called);
        }
        policy_free(p);
    }
}

/* Pure: the same input gives the same answer, and the input is not changed. */
static void test_decide_is_repeatable(void **state)
{
    struct policy *p = make_policy(eng_only);
    struct policy_input in = input(BOB), copy = in;
    (void)state;

    for (int i = 0; i < 3; i++) {
        struct policy_result res;
        policy_result_init(&res, NULL);
        assert_int_equal(decide(p, &in, &res), VERDICT_DENY);
        assert_string_equal(res.rule, "default-deny");
    }
    assert_memory_equal(&in, &copy, sizeof in);
    policy_free(p);
}

/* The denied page's question: would a trusted device of this user have been allowed? */
static void test_device_would_help(void **state)
{
    static const char *const laptops = "rules:\n  - id: laptops\n    effect: allow\n"
                                       "    when: {groups: eng, device: {trusted: true, "
                                       "owner_is_user: true}}\n";
    struct policy *p = make_policy(laptops);
    struct policy_input alice = input(ALICE_ENG), bob = input(BOB), copy;
    struct policy_result res;
    (void)state;

    alice.email = STR("alice@example.com");
    copy = alice;
    policy_result_init(&res, NULL);
    assert_int_equal(decide(p, &alice, &res), VERDICT_DENY);
    assert_true(decide_device_would_help(p, &alice));
    assert_memory_equal(&alice, &copy, sizeof alice);
    /* bob is not in eng: no device would help him */
    assert_false(decide_device_would_help(p, &bob));
    /* an untrusted device presented: a trusted one would help */
    alice.device.present = true;
    alice.device.fingerprint = STR("ab");
    assert_true(decide_device_would_help(p, &alice));
    /* with a trusted device the deny has another reason (someone else's laptop) */
    alice.device.trusted = true;
    alice.device.owner = STR("mallory@example.com");
    policy_result_init(&res, NULL);
    assert_int_equal(decide(p, &alice, &res), VERDICT_DENY);
    assert_false(decide_device_would_help(p, &alice));
    /* no policy at all: nothing to say */
    assert_false(decide_device_would_help(NULL, &alice));
    policy_free(p);
}

/* ---- the identity: parsed once, used as it is ---------------------------------------- */

static void test_attrs_parsed_once(void **state)
{
    (void)state;
    struct authn_attrs *x =
        attrs_parse("[\"eng\",\"admins\",7]",
                    "{\"iss\":\"https://idp\",\"aud\":\"gh\",\"sub\":\"alice\",\"dept\":\"R&D\","
                    "\"roles\":[\"a\",\"b\",{\"x\":1}],\"admin\":true,\"level\":42,\"ratio\":0.5,"
                    "\"addr\":{\"c\":\"x\"},\"cnf\":{\"x5t#S256\":\"THUMB\"}}");
    /* groups: the strings, in order (a number is not a group) */
    assert_int_equal(x->ngroups, 2);
    assert_true(str_eq_cstr(x->groups[0], "eng"));
    assert_true(str_eq_cstr(x->groups[1], "admins"));
    /* claims: protocol claims left out, arrays one pair per string, typed scalars;
     * objects and reals are not claims a rule can test */
    const char *want[][2] = { { "sub", "alice" }, { "dept", "R&D" },   { "roles", "a" },
                              { "roles", "b" },   { "admin", "true" }, { "level", "42" } };
    const enum authn_claim_type types[] = { AUTHN_CLAIM_STRING, AUTHN_CLAIM_STRING,
                                            AUTHN_CLAIM_STRING, AUTHN_CLAIM_STRING,
                                            AUTHN_CLAIM_BOOL,   AUTHN_CLAIM_INT };
    assert_int_equal(x->nclaims, 6);
    for (size_t i = 0; i < 6; i++) {
        assert_true(str_eq_cstr(x->claims[i].name, want[i][0]));
        assert_true(str_eq_cstr(x->claims[i].value, want[i][1]));
        assert_int_equal(x->claims[i].type, types[i]);
    }
    assert_false(x->groups_overflow);
    assert_false(x->claims_overflow);
    assert_string_equal(x->cnf_x5t, "THUMB"); /* RFC 8705, read at verification */
    assert_null(x->cnf_error);
    /* the stored texts stay as given (session database, assertion) */
    assert_string_equal(x->groups_json, "[\"eng\",\"admins\",7]");
    attrs_unref(x);

    /* over the limit: no truncated list, and it says so */
    json_t *g = json_array();
    for (int i = 0; i <= AUTHN_MAX_GROUPS; i++) {
        json_array_append_new(g, json_string("g"));
    }
    x = attrs_from_json(g, NULL);
    json_decref(g);
    assert_true(x->groups_overflow);
    assert_int_equal(x->ngroups, 0);
    attrs_unref(x);
    /* broken text: empty lists, never a crash; a cnf that is not an object */
    x = attrs_parse("[\"eng\"", "{\"cnf\":\"nope\"}");
    assert_int_equal(x->ngroups, 0);
    assert_non_null(x->cnf_error);
    attrs_unref(x);
}

static void test_identity_to_input(void **state)
{
    (void)state;
    struct arena *a = arena_new(0);
    struct authn_attrs *x = attrs_parse("[\"eng\"]", "{\"sub\":\"alice\",\"dept\":\"R&D\"}");
    assert_true(attrs_hold(a, x)); /* the request's reference */
    attrs_unref(x);
    struct authn_identity aid = { .user_key = "https://idp#alice",
                                  .user = "corp:alice",
                                  .attrs = x };
    struct identity id = { .authenticated = true,
                           .user = "corp:alice",
                           .email = "a@example.com",
                           .idp = "corp",
                           .session = "0123456789abcdef",
                           .authn = &aid };
    struct header h[] = { { STR("accept"), STR("*/*") } };
    struct request r = { .arena = a,
                         .method = STR("GET"),
                         .path = STR("/x"),
                         .hostname = STR("app.example"),
                         .headers = h,
                         .nheaders = 1 };
    memcpy(r.client_ip, "10.0.0.1", 9);
    struct policy_input in = { 0 };

    assert_true(identity_to_input(&id, &r, true, &in));
    assert_true(str_eq_cstr(in.user, "corp:alice"));
    assert_true(str_eq_cstr(in.email, "a@example.com"));
    /* the groups are authn's parsed list itself (the headers and the record read
     * them from here): no copy, no parse */
    assert_ptr_equal(in.groups, x->groups);
    assert_int_equal(in.ngroups, 1);
    assert_int_equal(in.nclaims, 2);
    assert_true(str_eq_cstr(in.claims[1].name, "dept"));
    assert_ptr_equal(in.claims[1].value.p, x->claims[1].value.p);
    /* without a policy file or a decision log the claims are not read */
    memset(&in, 0, sizeof in);
    assert_true(identity_to_input(&id, &r, false, &in));
    assert_int_equal(in.nclaims, 0);
    assert_int_equal(in.ngroups, 1);
    /* anonymous: nothing from authn */
    struct identity anon = { 0 };
    memset(&in, 0, sizeof in);
    assert_true(identity_to_input(&anon, &r, true, &in));
    assert_false(in.authenticated);
    assert_int_equal(in.ngroups, 0);
    /* an identity over the limits fails closed */
    json_t *c = json_object();
    json_t *many = json_array();
    for (int i = 0; i <= AUTHN_MAX_CLAIMS; i++) {
        json_array_append_new(many, json_string("v"));
    }
    json_object_set_new(c, "many", many);
    struct authn_attrs *big = attrs_from_json(NULL, c);
    json_decref(c);
    aid.attrs = big;
    assert_false(identity_to_input(&id, &r, true, &in));
    assert_true(identity_to_input(&id, &r, false, &in)); /* unless claims are not read */
    attrs_unref(big);
    arena_free(a); /* releases the request's reference */
}

/* ---- the response module ----------------------------------------------------------- */

static struct pages *templates(void)
{
    const char *data = getenv("GH_TEST_DATA");
    char dir[1024];
    struct err err = { 0 };
    assert_non_null(data);
    snprintf(dir, sizeof dir, "%s/../../web/login", data);
    struct pages *p = pages_load(dir, &err);
    assert_non_null(p);
    return p;
}

/* What each response test gets: a request arena and the page templates. */
struct fixture {
    struct arena *a;
    struct pages *p;
};

static int fixture_up(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->a = arena_new(0);
    f->p = templates();
    *state = f;
    return 0;
}

static int fixture_down(void **state)
{
    struct fixture *f = *state;
    pages_free(f->p);
    arena_free(f->a);
    free(f);
    return 0;
}

static bool has(const struct respond_answer *ans, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= ans->body.len; i++) {
        if (memcmp(ans->body.p + i, s, n) == 0) {
            return true;
        }
    }
    return false;
}

/* The string member key of the JSON body. */
static const char *json_field(const struct respond_answer *ans, const char *key)
{
    static char value[256];
    json_error_t jerr;
    json_t *j = json_loadb(ans->body.p, ans->body.len, 0, &jerr);
    assert_non_null(j);
    const char *v = json_string_value(json_object_get(j, key));
    snprintf(value, sizeof value, "%s", v ? v : "(none)");
    json_decref(j);
    return value;
}

static void test_respond_signin(void **state)
{
    struct fixture *f = *state;
    struct arena *a = f->a;
    struct respond_answer ans;
    struct respond_ctx c = {
        .arena = a, .request_id = "req\"1\\<x>", .html = true, .target = STR("/wiki/page?a=1&b=2")
    };

    /* a browser: 302 to sign-in, carrying the page asked for */
    assert_true(respond_render_signin(&c, false, true, NULL, &ans));
    assert_int_equal(ans.status, 302);
    assert_non_null(strstr(ans.headers, "Location: /.gatehouse/login?rd=%2Fwiki%2Fpage%3Fa%3D1%26b%"
                                        "3D2\r\n"));
    assert_non_null(strstr(ans.headers, "Cache-Control: no-store\r\n"));
    /* a network-path target is never a return URL */
    c.target = STR("//evil.example/x");
    assert_true(respond_render_signin(&c, false, true, NULL, &ans));
    assert_non_null(strstr(ans.headers, "Location: /.gatehouse/login?rd=%2F\r\n"));
    /* a refused bearer token from a browser: 401 invalid_token, never a redirect */
    assert_true(respond_render_signin(&c, true, true, "Set-Cookie: a=b\r\n", &ans));
    assert_int_equal(ans.status, 401);
    assert_non_null(strstr(
        ans.headers, "WWW-Authenticate: Bearer realm=\"gatehouse\", error=\"invalid_token\""));
    assert_non_null(strstr(ans.headers, "Set-Cookie: a=b\r\n"));
    /* no provider to sign in with: 401 for everyone */
    assert_true(respond_render_signin(&c, false, false, NULL, &ans));
    assert_int_equal(ans.status, 401);
    /* an API client: 401 JSON, the request id escaped by jansson */
    c.html = false;
    assert_true(respond_render_signin(&c, false, true, NULL, &ans));
    assert_int_equal(ans.status, 401);
    assert_string_equal(ans.ctype, "application/json");
    assert_non_null(strstr(ans.headers, "WWW-Authenticate: Bearer realm=\"gatehouse\"\r\n"));
    assert_string_equal(json_field(&ans, "error"), "unauthenticated");
    assert_string_equal(json_field(&ans, "request_id"), "req\"1\\<x>");
}

static void test_respond_error_html_and_json(void **state)
{
    struct fixture *f = *state;
    struct respond_answer ans;
    struct respond_ctx c = { .arena = f->a, .request_id = "<req\"1>", .html = true, .pages = f->p };

    assert_true(respond_render_error(&c, 503, "Sign-in unavailable", "Try <again>.", NULL, &ans));
    assert_int_equal(ans.status, 503);
    assert_string_equal(ans.ctype, "text/html; charset=utf-8");
    assert_true(has(&ans, "Sign-in unavailable"));
    assert_true(has(&ans, "Try &lt;again&gt;."));
    assert_true(has(&ans, "&lt;req&quot;1&gt;")); /* the request id, HTML-escaped */
    assert_false(has(&ans, "<req"));
    assert_non_null(strstr(ans.headers, "Cache-Control: no-store\r\n"));
    c.html = false;
    assert_true(respond_render_error(&c, 503, "Sign-in unavailable", "Try again.",
                                     "Set-Cookie: x=; Max-Age=0\r\n", &ans));
    assert_string_equal(ans.ctype, "application/json");
    assert_non_null(strstr(ans.headers, "Set-Cookie: x=; Max-Age=0\r\n"));
    assert_string_equal(json_field(&ans, "error"), "Sign-in unavailable");
    assert_string_equal(json_field(&ans, "message"), "Try again.");
    assert_string_equal(json_field(&ans, "request_id"), "<req\"1>");
    /* no templates: a plain page rather than none */
    c.html = true;
    c.pages = NULL;
    assert_true(respond_render_error(&c, 500, "Broken", "x", NULL, &ans));
    assert_string_equal(ans.ctype, "text/plain; charset=utf-8");
}

static void test_respond_authn_intents(void **state)
{
    struct fixture *f = *state;
    struct respond_answer ans;
    struct respond_ctx c = { .arena = f->a,
                             .request_id = "r1",
                             .html = true,
                             .pages = f->p,
                             .target = STR("/.gatehouse/me") };
    struct authn_out o = { 0 };

    /* nothing set: fails closed */
    assert_false(respond_render_authn(&c, &o, &ans));
    /* a redirect with its cookies */
    o.resp = (struct authn_resp){ .kind = AUTHN_ANSWER_REDIRECT,
                                  .status = 303,
                                  .location = "/wiki",
                                  .headers = { { "Set-Cookie", "gh=v; Path=/" },
                                               { "Cache-Control", "no-store" } },
                                  .nheaders = 2 };
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_int_equal(ans.status, 303);
    assert_string_equal(
        ans.headers, "Location: /wiki\r\nSet-Cookie: gh=v; Path=/\r\nCache-Control: no-store\r\n");
    /* sign-in needed: the same challenge as the policy's */
    o.resp = (struct authn_resp){ .kind = AUTHN_ANSWER_SIGNIN, .status = 401 };
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_int_equal(ans.status, 302);
    assert_non_null(strstr(ans.headers, "Location: /.gatehouse/login?rd=%2F.gatehouse%2Fme\r\n"));
    o.id.bearer = true;
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_int_equal(ans.status, 401);
    o.id.bearer = false;
    /* an error: the page with the request id */
    o.resp = (struct authn_resp){ .kind = AUTHN_ANSWER_ERROR,
                                  .status = 400,
                                  .title = "Sign-in failed",
                                  .message = "Start again." };
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_int_equal(ans.status, 400);
    assert_true(has(&ans, "Start again."));
    assert_true(has(&ans, "r1"));
    /* one of authn's pages: HTML for a browser, its JSON form for an API client */
    static const struct page_var v[] = { { "name", "Alice <A>" }, { "groups", "eng" } };
    o.resp = (struct authn_resp){ .kind = AUTHN_ANSWER_PAGE,
                                  .status = 200,
                                  .page = PAGE_ME,
                                  .vars = v,
                                  .nvars = 2,
                                  .json = "{\"user\":\"alice\"}" };
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_string_equal(ans.ctype, "text/html; charset=utf-8");
    assert_true(has(&ans, "Alice &lt;A&gt;"));
    c.html = false;
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_string_equal(ans.ctype, "application/json");
    assert_true(has(&ans, "\"alice\""));
    /* a page without a JSON form is HTML for everyone (the sign-in chooser) */
    o.resp.json = NULL;
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_string_equal(ans.ctype, "text/html; charset=utf-8");
    /* a page number out of range fails closed */
    o.resp.page = PAGE_COUNT;
    assert_false(respond_render_authn(&c, &o, &ans));
    /* a document as it is */
    o.resp = (struct authn_resp){ .kind = AUTHN_ANSWER_CONTENT,
                                  .status = 200,
                                  .content_type = "application/jwk-set+json",
                                  .body = "{}",
                                  .body_len = 2 };
    assert_true(respond_render_authn(&c, &o, &ans));
    assert_string_equal(ans.ctype, "application/jwk-set+json");
    assert_int_equal(ans.body.len, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_stage_installed_denies),
        cmocka_unit_test(test_decide_table),
        cmocka_unit_test(test_decide_is_repeatable),
        cmocka_unit_test(test_device_would_help),
        cmocka_unit_test(test_attrs_parsed_once),
        cmocka_unit_test(test_identity_to_input),
        cmocka_unit_test_setup_teardown(test_respond_signin, fixture_up, fixture_down),
        cmocka_unit_test_setup_teardown(test_respond_error_html_and_json, fixture_up, fixture_down),
        cmocka_unit_test_setup_teardown(test_respond_authn_intents, fixture_up, fixture_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
