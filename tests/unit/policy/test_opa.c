/* Unit tests for policy/opa.c: the input document, the Data API answers
 * (boolean, object, undefined, malformed), the TTL cache and the config keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "policy/policy.h"

static void test_opa_input_is_canonical_and_documented(void **state)
{
    static const struct str groups[] = { { "eng", 3 } };
    static const struct policy_kv claims[] = { { { "amr", 3 }, { "pwd", 3 } },
                                               { { "amr", 3 }, { "mfa", 3 } } };
    static const struct policy_kv headers[] = { { { "X-Env", 5 }, { "prod", 4 } },
                                                { { "Cookie", 6 }, { "sid=secret", 10 } },
                                                { { "Authorization", 13 }, { "Bearer x", 8 } },
                                                { { "X-Gatehouse-User", 16 }, { "evil", 4 } } };
    struct policy_input in = { 0 };
    (void)state;
    in.authenticated = true;
    in.user = STR("alice");
    in.email = STR("alice@example.com");
    in.idp = STR("corp");
    in.groups = groups;
    in.ngroups = 1;
    in.claims = claims;
    in.nclaims = 2;
    in.headers = headers;
    in.nheaders = 4;
    in.method = STR("GET");
    in.host = STR("wiki.example.com");
    in.path = STR("/a");
    in.route = STR("wiki");
    assert_true(policy_ip_parse(STR("2001:db8::1"), &in.client_ip));
    char *s = opa_input_json(&in);
    assert_string_equal(
        s, "{\"input\":{\"device\":{\"fingerprint\":\"\",\"id\":\"\",\"issuer\":\"\","
           "\"owner\":\"\","
           "\"present\":false,\"san\":\"\",\"serial\":\"\",\"subject\":\"\",\"trusted\":false},"
           "\"request\":{\"client_ip\":\"2001:db8::1\",\"headers\":{\"x-env\":\"prod\"},"
           "\"host\":\"wiki.example.com\",\"method\":\"GET\",\"path\":\"/a\"},\"route\":\"wiki\","
           "\"user\":{\"authenticated\":true,\"claims\":{\"amr\":[\"pwd\",\"mfa\"]},"
           "\"email\":\"alice@example.com\",\"groups\":[\"eng\"],\"id\":\"alice\","
           "\"idp\":\"corp\"}}}");
    free(s);
}

struct answer {
    const char *body;
    int rc;
    bool allow;
    const char *reason;
};

static const struct answer answers[] = {
    { "{\"result\": true}", 0, true, "" },
    { "{\"result\": false}", 0, false, "" },
    { "{\"result\": {\"allow\": true, \"reason\": \"on the list\"}}", 0, true, "on the list" },
    { "{\"result\": {\"allow\": false, \"reason\": \"locked\"}}", 0, false, "locked" },
    { "{\"result\": {\"allow\": \"yes\"}}", 0, false, "" }, /* only a JSON true allows */
    { "{}", 0, false, "" },                                 /* undefined: deny */
    { "{\"result\": 1}", 0, false, "" },
    { "{\"result\": true, \"result\": false}", ERR_PARSE, false, "" },
    { "not json", ERR_PARSE, false, "" },
    { "[true]", ERR_PARSE, false, "" },
};

static void test_opa_response_parse(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        bool allow = true;
        char reason[64];
        struct err err = { 0 };
        int rc = opa_response_parse(answers[i].body, strlen(answers[i].body), &allow, reason,
                                    sizeof reason, &err);
        assert_int_equal(rc, answers[i].rc);
        assert_int_equal(allow, answers[i].allow);
        if (rc == 0) {
            assert_string_equal(reason, answers[i].reason);
        } else {
            assert_string_equal(err.msg, "OPA answer is not a JSON object");
        }
    }
}

static void test_opa_cache_hits_until_ttl(void **state)
{
    struct opa_cache *c = opa_cache_new(64);
    bool allow = false;
    char reason[32];
    (void)state;
    assert_false(opa_cache_get(c, "a/b", "{}", 1000, &allow, reason, sizeof reason));
    opa_cache_put(c, "a/b", "{}", true, "ok", 1000, 5000);
    assert_true(opa_cache_get(c, "a/b", "{}", 5999, &allow, reason, sizeof reason));
    assert_true(allow);
    assert_string_equal(reason, "ok");
    assert_false(opa_cache_get(c, "a/c", "{}", 2000, &allow, reason, sizeof reason));
    assert_false(opa_cache_get(c, "a/b", "{\"x\":1}", 2000, &allow, reason, sizeof reason));
    assert_false(opa_cache_get(c, "a/b", "{}", 6000, &allow, reason, sizeof reason));
    opa_cache_put(c, "a/z", "{}", true, "ok", 1000, 0); /* ttl 0: not cached */
    assert_false(opa_cache_get(c, "a/z", "{}", 1001, &allow, reason, sizeof reason));
    opa_cache_free(c);
}

static void conf_case(const char *yaml, const char *msg)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_parse("g.yaml", yaml, strlen(yaml), &d);
    struct opa_conf oc;
    assert_non_null(doc);
    bool ok = opa_conf_parse(doc->root, &d, &oc);
    if (msg) {
        assert_false(ok);
        assert_string_equal(d.msgs[0], msg);
    } else {
        assert_true(ok);
    }
    opa_conf_fini(&oc);
    conf_doc_free(doc);
    conf_diag_fini(&d);
}

static void test_opa_conf(void **state)
{
    struct conf_diag d = { 0 };
    const char *y = "opa: {url: \"http://127.0.0.1:8181/\", timeout: 150ms, on_error: allow}\n";
    struct conf_doc *doc = conf_doc_parse("g.yaml", y, strlen(y), &d);
    struct opa_conf oc;
    (void)state;
    assert_true(opa_conf_parse(doc->root, &d, &oc));
    assert_int_equal(oc.timeout_ms, 150);
    assert_int_equal(oc.cache_ttl_ms, 5000);
    assert_int_equal(oc.on_error, OPA_ON_ERROR_ALLOW);
    char *url = opa_request_url(&oc, "gatehouse/wiki/allow");
    assert_string_equal(url, "http://127.0.0.1:8181/v1/data/gatehouse/wiki/allow");
    free(url);
    opa_conf_fini(&oc);
    conf_doc_free(doc);
    conf_case("opa: {url: ftp://x}\n",
              "g.yaml:1:12: error: \"url\" must be an http or https URL, got \"ftp://x\"");
    conf_case("opa: {url: http://x, on_error: ignore}\n",
              "g.yaml:1:32: error: \"on_error\" must be deny or allow, got \"ignore\"");
    conf_case("opa: {url: http://x, cache: 1s}\n",
              "g.yaml:1:22: error: unknown key \"cache\" in opa (did you mean \"cache_ttl\"?)");
    conf_case("listen: []\n", NULL);
}

static void test_opa_answer_http_applies_on_error(void **state)
{
    const char *t = "rules:\n  - id: central\n    effect: allow\n    when: {opa: gh/allow}\n";
    struct conf_diag d = { 0 };
    struct policy *p = policy_parse("p.yaml", t, strlen(t), &d);
    struct policy_input in = { 0 };
    struct opa_conf deny = { .on_error = OPA_ON_ERROR_DENY };
    struct opa_conf allow = { .on_error = OPA_ON_ERROR_ALLOW };
    struct policy_result r;
    bool a;
    (void)state;
    assert_non_null(p);
    struct {
        const struct opa_conf *c;
        bool transport;
        long status;
        const char *body;
        bool err, allowed;
        const char *rule_reason;
    } cases[] = {
        { &deny, false, 200, "{\"result\": true}", false, true, "Allowed." },
        { &deny, false, 200, "{\"result\": {\"allow\": false, \"reason\": \"locked\"}}", false,
          false, "No rule allows this request." },
        { &deny, false, 200, "{}", false, false, "No rule allows this request." },
        { &deny, true, 0, NULL, true, false, "No rule allows this request." },
        { &deny, false, 500, "{\"code\": \"internal_error\"}", true, false, NULL },
        { &deny, false, 200, "{\"result\": tr", true, false, NULL },
        { &allow, true, 0, NULL, true, true, "OPA unavailable (on_error: allow)" },
        { &allow, false, 200, "{\"result\": false}", false, false, NULL },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        policy_result_init(&r, NULL);
        assert_int_equal(policy_eval(p, &in, &r), POLICY_NEED_OPA);
        bool e = opa_answer_http(cases[i].c, &r, cases[i].transport, cases[i].status, cases[i].body,
                                 cases[i].body ? strlen(cases[i].body) : 0, &a);
        assert_int_equal(e, cases[i].err);
        assert_int_equal(a, cases[i].allowed);
        assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
        assert_int_equal(r.decision == POLICY_ALLOW, cases[i].allowed);
        if (cases[i].rule_reason) {
            assert_string_equal(r.reason, cases[i].rule_reason);
        }
    }
    policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opa_input_is_canonical_and_documented),
        cmocka_unit_test(test_opa_response_parse),
        cmocka_unit_test(test_opa_cache_hits_until_ttl),
        cmocka_unit_test(test_opa_conf),
        cmocka_unit_test(test_opa_answer_http_applies_on_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
