/* Unit tests for policy/record.c (policy input + result -> decision record) and
 * policy/metrics.c (counters rendered for /metrics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "policy/decision_log_int.h"
#include "policy/policy.h"

static const struct str groups[] = { { "eng", 3 }, { "ops", 3 } };
static const struct policy_kv claims[] = { { { "amr", 3 }, { "mfa", 3 } },
                                           { { "phone", 5 }, { "+33 6 00", 8 } } };

static struct policy *wiki(void)
{
    const char *t =
        "rules:\n  - id: mfa\n    effect: allow\n    when: {claim: {name: amr, is: mfa}}\n";
    struct conf_diag d = { 0 };
    struct policy *p = policy_parse("w.yaml", t, strlen(t), &d);
    assert_non_null(p);
    return p;
}

static void test_record_fill_copies_what_the_log_needs(void **state)
{
    struct policy *p = wiki();
    struct policy_input in = { 0 };
    struct policy_result r;
    struct decision_record rec;
    struct arena *a = arena_new(0);
    (void)state;
    in.authenticated = true;
    in.user = STR("alice");
    in.email = STR("alice@example.com");
    in.groups = groups;
    in.ngroups = 2;
    in.claims = claims;
    in.nclaims = 2;
    in.method = STR("GET");
    in.host = STR("wiki.example.com");
    in.path = STR("/x");
    in.device.present = true;
    in.device.trusted = true;
    in.device.id = STR("laptop-1");
    assert_true(policy_ip_parse(STR("::ffff:10.1.2.3"), &in.client_ip));
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(decision_record_fill(&rec, p, &in, &r, "req-1", "wiki", a), 0);
    assert_string_equal(rec.decision, "allow");
    assert_string_equal(rec.rule, "mfa");
    assert_string_equal(rec.user, "alice");
    assert_string_equal(rec.client_ip, "10.1.2.3");
    /* IPv4 is spelled without printf: the same text inet_ntop gives. */
    static const char *const ips[] = { "0.0.0.0", "255.255.255.255", "192.168.100.9", "1.20.100.0",
                                       "2001:db8::1" };
    for (size_t i = 0; i < sizeof ips / sizeof ips[0]; i++) {
        struct decision_record r2;
        struct policy_input in2 = in;
        assert_true(policy_ip_parse(str_from(ips[i]), &in2.client_ip));
        assert_int_equal(decision_record_fill(&r2, p, &in2, &r, "req-ip", "wiki", a), 0);
        assert_string_equal(r2.client_ip, ips[i]);
    }
    assert_int_equal(rec.ngroups, 2);
    assert_string_equal(rec.groups[1], "ops");
    assert_int_equal(rec.nclaims, 1); /* only the claim a rule tests: not the phone number */
    assert_true(str_eq_cstr(rec.claims[0].name, "amr"));
    assert_true(rec.device_present && rec.device_trusted);
    assert_string_equal(rec.device_id, "laptop-1");
    assert_null(rec.idp);
    assert_false(rec.opa_called);
    assert_true(policy_uses_claim(p, STR("amr")));
    assert_false(policy_uses_claim(p, STR("phone")));

    /* Anonymous and denied: "login". */
    struct policy_input anon = { 0 };
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &anon, &r), POLICY_DONE);
    assert_int_equal(decision_record_fill(&rec, p, &anon, &r, "req-2", "wiki", a), 0);
    assert_string_equal(rec.decision, "login");
    assert_string_equal(rec.rule, "default-deny");
    assert_null(rec.client_ip);
    arena_free(a);

    /* A full arena is reported, not truncated. */
    a = arena_new(64);
    assert_int_equal(decision_record_fill(&rec, p, &in, &r, "req-3", "wiki", a), ERR_LIMIT);
    arena_free(a);
    policy_free(p);
}

static void test_metrics_render(void **state)
{
    char buf[8192];
    (void)state;
    policy_metrics_decision("wiki", POLICY_ALLOW, false);
    policy_metrics_decision("wiki", POLICY_ALLOW, false);
    policy_metrics_decision("wiki", POLICY_DENY, false);
    policy_metrics_decision("wiki", POLICY_DENY, true);
    policy_metrics_opa(1500, false, false);
    policy_metrics_opa(250000, true, false);
    policy_metrics_opa(0, false, true);
    policy_metrics_log_write(800, 12);
    policy_metrics_queue_depth(3);
    size_t n = policy_metrics_render(buf, sizeof buf);
    assert_true(n > 0 && n < sizeof buf);
    assert_int_equal(strlen(buf), n);
    assert_non_null(strstr(buf, "decisions_total{route=\"wiki\",result=\"allow\"} 2\n"));
    assert_non_null(strstr(buf, "decisions_total{route=\"wiki\",result=\"deny\"} 1\n"));
    assert_non_null(strstr(buf, "{route=\"wiki\",result=\"shadow_deny\"} 1\n"));
    assert_non_null(strstr(buf, "gatehouse_opa_requests_total 2\n"));
    assert_non_null(strstr(buf, "gatehouse_opa_errors_total 1\n"));
    assert_non_null(strstr(buf, "gatehouse_opa_cache_hits_total 1\n"));
    assert_non_null(strstr(buf, "gatehouse_opa_latency_seconds_bucket{le=\"0.005\"} 1\n"));
    assert_non_null(strstr(buf, "gatehouse_opa_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
    assert_non_null(strstr(buf, "gatehouse_decision_log_queue_depth 3\n"));
    assert_non_null(strstr(buf, "gatehouse_decision_log_records_total 12\n"));
    /* A short buffer reports the size it needs and stays NUL-terminated. */
    char small[32];
    assert_int_equal(policy_metrics_render(small, sizeof small), n);
    assert_true(strlen(small) < sizeof small);
}

/* Format 2 carries kind, enforced and admin inside the hashed bytes; a record
 * without kind (read from a row written before them) keeps its format-1 bytes. */
static void test_canonical_forms(void **state)
{
    (void)state;
    struct sbuf b = { 0 };
    struct decision_record r = { .ts_us = 1,
                                 .request_id = "r1",
                                 .route = "reports",
                                 .decision = "deny",
                                 .rule = "default-deny",
                                 .shadow = true };
    dl_canonical(&r, 7, DL_GENESIS, &b);
    assert_true(strncmp(b.p, "{\"v\":1,\"seq\":7,", 15) == 0);
    assert_null(strstr(b.p, "\"kind\""));
    assert_null(strstr(b.p, "\"enforced\""));
    assert_null(strstr(b.p, "\"admin\""));
    char h1[65], h2[65];
    dl_hash(DL_GENESIS, b.p, b.len, h1);
    r.kind = "policy";
    r.enforced = "allow";
    dl_canonical(&r, 7, DL_GENESIS, &b);
    assert_true(strncmp(b.p,
                        "{\"v\":2,\"seq\":7,\"ts\":\"1970-01-01T00:00:00.000001Z\","
                        "\"kind\":\"policy\",\"request_id\"",
                        75) == 0);
    assert_non_null(strstr(b.p, "\"shadow\":true,\"enforced\":\"allow\",\"opa\""));
    assert_non_null(strstr(b.p, "\"latency_us\":0,\"admin\":null,\"prev_hash\""));
    dl_hash(DL_GENESIS, b.p, b.len, h2);
    assert_string_not_equal(h1, h2);
    r.enforced = "deny"; /* the shadow mark is hashed */
    dl_canonical(&r, 7, DL_GENESIS, &b);
    dl_hash(DL_GENESIS, b.p, b.len, h1);
    assert_string_not_equal(h1, h2);
    r.kind = "admin";
    r.enforced = NULL;
    r.admin_action = "session.revoke";
    r.admin_actor = "alice";
    r.admin_from = "host h, no tty";
    r.admin_target = "user \"bob\"";
    dl_canonical(&r, 7, DL_GENESIS, &b);
    assert_non_null(strstr(b.p, ",\"enforced\":null,"));
    assert_non_null(strstr(b.p, ",\"admin\":{\"action\":\"session.revoke\",\"actor\":\"alice\","
                                "\"from\":\"host h, no tty\",\"target\":\"user \\\"bob\\\"\"},"
                                "\"prev_hash\""));
    /* Format 3: the node right after seq, hashed; without kind the format-2 keys
     * are there too (null). */
    dl_hash(DL_GENESIS, b.p, b.len, h1);
    r.node = "gh-1";
    dl_canonical(&r, 7, DL_GENESIS, &b);
    assert_true(strncmp(b.p, "{\"v\":3,\"seq\":7,\"node\":\"gh-1\",\"ts\":", 34) == 0);
    dl_hash(DL_GENESIS, b.p, b.len, h2);
    assert_string_not_equal(h1, h2);
    r.node = "gh-2";
    dl_canonical(&r, 7, DL_GENESIS, &b);
    dl_hash(DL_GENESIS, b.p, b.len, h1);
    assert_string_not_equal(h1, h2);
    r.kind = NULL;
    dl_canonical(&r, 7, DL_GENESIS, &b);
    assert_non_null(strstr(b.p, "\"ts\":\"1970-01-01T00:00:00.000001Z\",\"kind\":null,"));
    /* Control characters and DEL are escaped, other bytes kept. */
    r.path = "/a\x01\x1f\x7f\"\\\xc3\xa9";
    dl_canonical(&r, 7, DL_GENESIS, &b);
    assert_non_null(strstr(b.p, "\"path\":\"/a\\u0001\\u001f\\u007f\\\"\\\\\xc3\xa9\""));
    dl_sbuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_fill_copies_what_the_log_needs),
        cmocka_unit_test(test_metrics_render),
        cmocka_unit_test(test_canonical_forms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
