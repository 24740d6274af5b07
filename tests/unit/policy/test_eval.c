/* Unit tests for policy/eval.c: every criterion, matcher and combination,
 * deny-wins, default deny, shadow mode, OPA suspension and resumption, traces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "policy/policy.h"

static struct policy *compile(const char *text)
{
    struct conf_diag d = { 0 };
    struct policy *p = policy_parse("t.yaml", text, strlen(text), &d);
    if (!p) {
        conf_diag_print(&d, stderr);
    }
    assert_non_null(p);
    conf_diag_fini(&d);
    return p;
}

/* One allow rule with the given condition. */
static struct policy *when(const char *cond)
{
    char text[2048];
    snprintf(text, sizeof text, "rules:\n  - id: r\n    effect: allow\n    when: %s\n", cond);
    return compile(text);
}

static const struct str alice_groups[] = { { "eng", 3 }, { "Staff", 5 } };
static const struct policy_kv alice_claims[] = {
    { { "department", 10 }, { "R&D", 3 } },
    { { "amr", 3 }, { "pwd", 3 } },
    { { "amr", 3 }, { "mfa", 3 } },
};
static const struct policy_kv alice_headers[] = {
    { { "X-Env", 5 }, { "prod", 4 } },
};

static struct policy_input alice(void)
{
    struct policy_input in = { 0 };
    in.authenticated = true;
    in.user = STR("alice");
    in.email = STR("Alice@Example.com");
    in.idp = STR("corp");
    in.groups = alice_groups;
    in.ngroups = 2;
    in.claims = alice_claims;
    in.nclaims = 3;
    in.headers = alice_headers;
    in.nheaders = 1;
    in.method = STR("GET");
    in.host = STR("wiki.example.com");
    in.path = STR("/docs/intro");
    in.device.present = true;
    in.device.trusted = true;
    in.device.id = STR("dev-42");
    in.device.owner = STR("alice@example.com");
    in.device.serial = STR("0A1B");
    in.device.subject = STR("CN=laptop-42,O=Example");
    assert_true(policy_ip_parse(STR("10.1.2.3"), &in.client_ip));
    in.time_s = 1764583200; /* 2025-12-01T10:00:00Z, a Monday */
    return in;
}

static enum policy_decision decide(const struct policy *p, const struct policy_input *in)
{
    struct policy_result r;
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, in, &r), POLICY_DONE);
    return r.decision;
}

struct crit_case {
    const char *cond;
    bool allow;
};

static const struct crit_case crit_cases[] = {
    { "{authenticated: true}", true },
    { "{authenticated: false}", false },
    { "{user: alice}", true },
    { "{user: Alice}", false }, /* user ids are case-sensitive */
    { "{user: {prefix: ali}}", true },
    { "{user: {suffix: ice}}", true },
    { "{user: {contains: lic}}", true },
    { "{user: {contains: bob}}", false },
    { "{user: {in: [bob, alice]}}", true },
    { "{user: {in: [bob, carol]}}", false },
    { "{user: {glob: \"a*e\"}}", true },
    { "{user: {glob: \"a?ice\"}}", true },
    { "{user: {glob: \"b*\"}}", false },
    { "{user: {regex: \"^al.c[e]$\"}}", true },
    { "{user: {regex: \"^bob\"}}", false },
    { "{user: {prefix: al, suffix: ce}}", true }, /* several matchers: all must hold */
    { "{user: {prefix: al, suffix: xx}}", false },
    { "{email: alice@example.com}", true }, /* emails compare case-insensitively */
    { "{email: {suffix: \"@EXAMPLE.COM\"}}", true },
    { "{domain: example.com}", true },
    { "{domain: {in: [example.org]}}", false },
    { "{idp: corp}", true },
    { "{groups: eng}", true },
    { "{groups: {contains: eng}}", true },
    { "{groups: {contains: en}}", false },    /* membership, not a substring */
    { "{groups: {contains: staff}}", false }, /* group names are case-sensitive */
    { "{groups: {in: [ops, Staff]}}", true },
    { "{groups: {prefix: St}}", true },
    { "{claim: {name: department, is: R&D}}", true },
    { "{claim: {name: department, is: Sales}}", false },
    { "{claim: {name: amr, contains: mfa}}", true }, /* multi-valued claim: any value */
    { "{claim: {name: missing, prefix: \"\"}}", false },
    { "{device: {present: true}}", true },
    { "{device: {trusted: true}}", true },
    { "{device: {trusted: false}}", false },
    { "{device: {owner_is_user: true}}", true }, /* owner vs email, case-insensitive */
    { "{device: {id: dev-42, serial: 0a1b}}", true },
    { "{device: {subject: {prefix: \"CN=laptop-\"}}}", true },
    { "{device: {issuer: {contains: Example}}}", false },
    { "{source_ip: 10.0.0.0/8}", true },
    { "{source_ip: [192.168.0.0/16, 10.1.2.3]}", true },
    { "{source_ip: [192.168.0.0/16, \"::1/128\"]}", false },
    { "{source_ip: \"10.1.2.0/25\"}", true },
    { "{source_ip: \"10.1.2.128/25\"}", false },
    { "{method: GET}", true },
    { "{method: {in: [POST, PUT]}}", false },
    { "{path: {prefix: /docs/}}", true },
    { "{path: {prefix: /docs/intro/more}}", false }, /* longer than the path */
    { "{path: {prefix: /docs/introX}}", false },
    { "{all: [{path: {prefix: /docs}}, {path: {prefix: /docs/in}}]}", true },
    { "{path: {glob: \"/docs/*\"}}", true },
    { "{path: {is: /docs}}", false },
    { "{host: WIKI.example.com}", true },
    { "{host: {suffix: .example.com}}", true },
    { "{header: {name: x-env, is: prod}}", true }, /* header names are case-insensitive */
    { "{header: {name: X-Env, is: Prod}}", false },
    { "{header: {name: X-Other, prefix: \"\"}}", false },
    { "{time: {weekdays: [mon]}}", true },
    { "{time: {weekdays: [sat, sun]}}", false },
    { "{time: {weekdays: [mon-fri], hours: \"09:00-18:00\"}}", true },
    { "{time: {hours: \"10:00-10:01\"}}", true },
    { "{time: {hours: \"10:01-12:00\"}}", false },
    { "{time: {hours: \"09:00-10:00\"}}", false },                      /* the end is exclusive */
    { "{time: {hours: \"22:00-10:30\"}}", true },                       /* wraps past midnight */
    { "{time: {hours: \"11:00-12:00\", tz: Europe/Paris}}", true },     /* UTC+1 in winter */
    { "{time: {hours: \"05:00-06:00\", tz: America/New_York}}", true }, /* UTC-5 */
    { "{time: {hours: \"19:00-20:00\", tz: Asia/Tokyo}}", true },       /* UTC+9 */
    { "{all: [{user: alice}, {groups: eng}]}", true },
    { "{all: [{user: alice}, {groups: ops}]}", false },
    { "{any: [{user: bob}, {groups: eng}]}", true },
    { "{any: [{user: bob}, {groups: ops}]}", false },
    { "{not: {user: bob}}", true },
    { "{not: {user: alice}}", false },
    { "{all: []}", true },
    { "{user: alice, path: {prefix: /docs}}", true }, /* several criteria: all must hold */
    { "{user: alice, path: {prefix: /admin}}", false },
    { "{any: [{all: [{not: {groups: eng}}]}, {not: {not: {method: GET}}}]}", true },
};

static void test_eval_each_criterion_and_matcher(void **state)
{
    struct policy_input in = alice();
    (void)state;
    for (size_t i = 0; i < sizeof crit_cases / sizeof crit_cases[0]; i++) {
        struct policy *p = when(crit_cases[i].cond);
        enum policy_decision d = decide(p, &in);
        if ((d == POLICY_ALLOW) != crit_cases[i].allow) {
            print_error("case %zu %s: expected %s\n", i, crit_cases[i].cond,
                        crit_cases[i].allow ? "allow" : "deny");
        }
        assert_int_equal(d == POLICY_ALLOW, crit_cases[i].allow);
        policy_free(p);
    }
}

static void test_eval_absent_values_match_nothing(void **state)
{
    struct policy_input in = { 0 };
    const char *conds[] = { "{user: {prefix: \"\"}}",          "{email: {regex: \".*\"}}",
                            "{device: {owner_is_user: true}}", "{source_ip: \"0.0.0.0/0\"}",
                            "{source_ip: \"::/0\"}",           "{device: {id: {glob: \"*\"}}}" };
    (void)state;
    for (size_t i = 0; i < sizeof conds / sizeof conds[0]; i++) {
        struct policy *p = when(conds[i]);
        assert_int_equal(decide(p, &in), POLICY_DENY);
        policy_free(p);
    }
}

/* The host/group prefilters must agree with the full evaluation. */
static void test_eval_prefilters_agree_with_matchers(void **state)
{
    struct policy_input in = alice();
    struct policy *p = compile("rules:\n  - id: r\n    effect: allow\n    when: {all: [{host: "
                               "Wiki.Example.COM}, {groups: Staff}, {groups: eng}]}\n");
    (void)state;
    in.host = STR("WIKI.example.com:8443");
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    /* A trailing dot names the same host (with or without a port). */
    in.host = STR("wiki.example.com.");
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    in.host = STR("WIKI.example.com.:8443");
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    in.host = STR("wiki.example.org");
    assert_int_equal(decide(p, &in), POLICY_DENY);
    in.host = STR("wiki.example.com");
    in.ngroups = 1; /* eng only */
    assert_int_equal(decide(p, &in), POLICY_DENY);
    in.host = STR("");
    in.ngroups = 2;
    assert_int_equal(decide(p, &in), POLICY_DENY);
    policy_free(p);
}

/* Per-host rule lists keep file order across host-specific and host-less rules, and
 * the fast path decides exactly as the full trace does. */
static void test_eval_host_index_keeps_order_and_agrees_with_trace(void **state)
{
    struct policy *p = compile("rules:\n"
                               "  - {id: a-deny, effect: deny, when: {host: a.test, path: /x}}\n"
                               "  - {id: any-allow, effect: allow, when: {groups: eng}}\n"
                               "  - {id: a-allow, effect: allow, when: {host: A.test}}\n"
                               "  - {id: b-allow, effect: allow, when: {host: b.test}}\n"
                               "  - {id: b-deny, effect: deny, when: {host: b.test, "
                               "user: alice}}\n");
    struct policy_input in = alice();
    struct policy_result r, t;
    uint8_t trace[5];
    (void)state;
    const char *hosts[] = { "a.test", "b.test", "c.test", "A.TEST:80" };
    const char *paths[] = { "/x", "/y" };
    for (size_t h = 0; h < 4; h++) {
        for (size_t g = 0; g < 2; g++) {
            for (size_t k = 0; k < 2; k++) {
                in.host = str_from(hosts[h]);
                in.path = str_from(paths[k]);
                in.ngroups = g ? 2 : 0;
                policy_result_init(&r, NULL);
                policy_result_init(&t, trace);
                assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
                assert_int_equal(policy_eval(p, &in, &t), POLICY_DONE);
                assert_int_equal(r.decision, t.decision);
                assert_string_equal(r.rule, t.rule);
            }
        }
    }
    in.host = STR("a.test");
    in.path = STR("/y");
    in.ngroups = 2;
    policy_result_init(&r, trace);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_string_equal(r.rule, "any-allow"); /* earlier in the file than a-allow */
    assert_int_equal(trace[3], POLICY_RULE_NO_MATCH);
    in.host = STR("b.test");
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_string_equal(r.rule, "b-deny");
    policy_free(p);
}

static void test_eval_ipv6_and_mapped_ipv4(void **state)
{
    struct policy_input in = alice();
    struct policy *p = when("{source_ip: [\"2001:db8::/32\", 10.0.0.0/8]}");
    (void)state;
    assert_true(policy_ip_parse(STR("2001:db8:1::5"), &in.client_ip));
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    assert_true(policy_ip_parse(STR("2001:db9::5"), &in.client_ip));
    assert_int_equal(decide(p, &in), POLICY_DENY);
    assert_true(policy_ip_parse(STR("::ffff:10.9.9.9"), &in.client_ip));
    assert_int_equal(in.client_ip.family, 4);
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    assert_false(policy_ip_parse(STR("10.0.0.256"), &in.client_ip));
    policy_free(p);
}

static void test_eval_time_zone_follows_daylight_saving(void **state)
{
    struct policy_input in = alice();
    struct policy *p = when("{time: {hours: \"09:00-10:00\", tz: Europe/Paris}}");
    (void)state;
    in.time_s = 1783839600; /* 2026-07-12T07:00:00Z = 09:00 CEST (UTC+2) */
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    in.time_s = 1767254400; /* 2026-01-01T08:00:00Z = 09:00 CET (UTC+1) */
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    in.time_s = 1767250800; /* 07:00Z in January = 08:00 CET */
    assert_int_equal(decide(p, &in), POLICY_DENY);
    in.time_s = 4102390800LL; /* 2099-12-31T09:00:00Z = 10:00 CET: past the table, footer rule */
    assert_int_equal(decide(p, &in), POLICY_DENY);
    in.time_s = 4102387200LL; /* 08:00Z = 09:00 CET */
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    policy_free(p);
}

static const char *const wiki =
    "rules:\n"
    "  - id: admin-only\n"
    "    effect: deny\n"
    "    when: {all: [{path: {prefix: /admin}}, {not: {groups: admins}}]}\n"
    "    reason: Only admins may open the admin area.\n"
    "  - id: eng\n"
    "    effect: allow\n"
    "    when: {groups: eng}\n"
    "  - id: everyone-reads\n"
    "    effect: allow\n"
    "    when: {method: {in: [GET, HEAD]}}\n";

static void test_eval_deny_wins_and_names_the_rule(void **state)
{
    struct policy *p = compile(wiki);
    struct policy_input in = alice();
    struct policy_result r;
    (void)state;
    in.path = STR("/admin/users");
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_int_equal(r.effective, POLICY_DENY);
    assert_string_equal(r.rule, "admin-only");
    assert_string_equal(r.reason, "Only admins may open the admin area.");
    assert_false(r.need_login);

    in.path = STR("/docs");
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_ALLOW);
    assert_string_equal(r.rule, "eng"); /* the first matching allow rule decides */
    policy_free(p);
}

static void test_eval_default_deny_and_login(void **state)
{
    struct policy *p = compile(wiki);
    struct policy_input in = { 0 };
    struct policy_result r;
    (void)state;
    in.method = STR("POST");
    in.path = STR("/docs");
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_string_equal(r.rule, "default-deny");
    assert_true(r.need_login);
    policy_free(p);

    p = compile("rules: []\n");
    in = alice();
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_string_equal(r.rule, "default-deny");
    policy_free(p);
}

static void test_eval_shadow_mode_logs_but_does_not_enforce(void **state)
{
    struct policy *p = compile("mode: shadow\nrules:\n  - id: nobody\n    effect: deny\n");
    struct policy_input in = alice();
    struct policy_result r;
    (void)state;
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_string_equal(r.rule, "nobody");
    assert_true(r.shadow);
    assert_int_equal(r.effective, POLICY_ALLOW);
    in.authenticated = false; /* shadow still requires a signed-in user */
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.effective, POLICY_DENY);
    assert_true(r.need_login);
    policy_free(p);
}

static void test_eval_trace_records_every_rule(void **state)
{
    struct policy *p = compile(wiki);
    struct policy_input in = alice();
    struct policy_result r;
    uint8_t trace[3];
    (void)state;
    policy_result_init(&r, trace);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(trace[0], POLICY_RULE_NO_MATCH);
    assert_int_equal(trace[1], POLICY_RULE_MATCH);
    assert_int_equal(trace[2], POLICY_RULE_MATCH); /* evaluated even though eng decided */
    assert_string_equal(r.rule, "eng");
    policy_free(p);
}

static const char *const with_opa =
    "rules:\n"
    "  - id: blocked\n"
    "    effect: deny\n"
    "    when: {opa: gatehouse/blocked}\n"
    "  - id: central\n"
    "    effect: allow\n"
    "    when: {all: [{groups: eng}, {opa: gatehouse/wiki/allow}]}\n";

static void test_eval_opa_suspends_and_resumes(void **state)
{
    struct policy *p = compile(with_opa);
    struct policy_input in = alice();
    struct policy_result r;
    (void)state;
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_NEED_OPA);
    assert_string_equal(r.opa_path, "gatehouse/blocked");
    policy_opa_answer(&r, false, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_NEED_OPA);
    assert_string_equal(r.opa_path, "gatehouse/wiki/allow");
    policy_opa_answer(&r, true, "on the allow list");
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_ALLOW);
    assert_string_equal(r.rule, "central");
    assert_string_equal(r.reason, "on the allow list");
    assert_true(r.opa_called);

    /* OPA says "blocked": deny with OPA's reason. */
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_NEED_OPA);
    policy_opa_answer(&r, true, "account locked");
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_string_equal(r.rule, "blocked");
    assert_string_equal(r.reason, "account locked");
    policy_free(p);
}

static void test_eval_opa_not_asked_when_it_cannot_change_the_decision(void **state)
{
    struct policy *p = compile(with_opa);
    struct policy_input in = alice();
    struct policy_result r;
    (void)state;
    in.groups = NULL; /* no allow rule can match: default deny without asking OPA */
    in.ngroups = 0;
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_string_equal(r.rule, "default-deny");
    assert_false(r.opa_called);
    policy_free(p);
}

static void test_eval_builtins(void **state)
{
    struct policy *pub = policy_new_builtin(true);
    struct policy *any = policy_new_builtin(false);
    struct policy_input in = { 0 };
    struct policy_result r;
    (void)state;
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(pub, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_ALLOW);
    assert_string_equal(r.rule, "public");
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(any, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_true(r.need_login);
    in.authenticated = true;
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(any, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_ALLOW);
    assert_string_equal(r.rule, "allow-any-authenticated");
    policy_free(pub);
    policy_free(any);
}

/* Issue 9.9: a regex that backtracks catastrophically hits PCRE2's match limit in
 * well under a millisecond, and the condition then fails closed whatever wraps it. */
static void test_eval_regex_limit_fails_closed(void **state)
{
    (void)state;
    static char evil[8002];
    evil[0] = '/';
    memset(evil + 1, 'a', 7999);
    evil[8000] = '!';
    struct policy_input in = alice();
    in.path = (struct str){ evil, 8001 };

    /* A deny rule that cannot be evaluated denies, and says why. */
    const char *deny_text = "rules:\n  - id: no-aaa\n    effect: deny\n"
                            "    when: {path: {regex: \"(a+)+$\"}}\n"
                            "  - id: all\n    effect: allow\n    when: {user: alice}\n";
    struct policy *p = compile(deny_text);
    struct policy_result r;
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_string_equal(r.rule, "no-aaa");
    assert_non_null(strstr(r.reason, "could not be evaluated"));
    uint8_t trace[2];
    policy_result_init(&r, trace);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_int_equal(trace[0], POLICY_RULE_ERROR);
    assert_int_equal(trace[1], POLICY_RULE_MATCH);
    policy_free(p);

    /* `not` must not turn an error into an allow. */
    p = when("{not: {path: {regex: \"(a+)+$\"}}}");
    policy_result_init(&r, NULL);
    assert_int_equal(policy_eval(p, &in, &r), POLICY_DONE);
    assert_int_equal(r.decision, POLICY_DENY);
    assert_string_equal(r.rule, "r");
    assert_non_null(strstr(r.reason, "could not be evaluated"));
    policy_free(p);
    p = when("{not: {not: {path: {regex: \"(a+)+$\"}}}}");
    assert_int_equal(decide(p, &in), POLICY_DENY);
    policy_free(p);
    p = when("{all: [{user: alice}, {not: {any: [{user: bob}, {path: {regex: \"(a+)+$\"}}]}}]}");
    assert_int_equal(decide(p, &in), POLICY_DENY);
    policy_free(p);

    /* What the error cannot change is still decided: one true disjunct, one false
     * conjunct. */
    p = when("{any: [{path: {regex: \"(a+)+$\"}}, {user: alice}]}");
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    policy_free(p);
    p = when("{not: {all: [{path: {regex: \"(a+)+$\"}}, {user: bob}]}}");
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    policy_free(p);

    /* The same pattern on a short path decides normally. */
    in.path = STR("/aaab");
    p = when("{not: {path: {regex: \"(a+)+$\"}}}");
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    policy_free(p);
}

/* Issue 9.9: a regex sees at most 8 KiB; a longer value is an error (fail closed),
 * while a simple pattern over a full 8 KiB value still matches. */
static void test_eval_regex_input_is_capped(void **state)
{
    (void)state;
    static char path[8194];
    path[0] = '/';
    memset(path + 1, 'a', sizeof path - 1);
    struct policy_input in = alice();
    struct policy *p = when("{path: {regex: \"^/a+$\"}}");
    in.path = (struct str){ path, 8192 };
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    in.path = (struct str){ path, 8193 };
    assert_int_equal(decide(p, &in), POLICY_DENY);
    policy_free(p);
    p = when("{not: {path: {regex: \"^/b\"}}}");
    assert_int_equal(decide(p, &in), POLICY_DENY);
    policy_free(p);
    /* A header value too: one matching value of several still decides. */
    p = when("{header: {name: X-Env, regex: \"^pr\"}}");
    struct policy_kv hs[] = { { STR("X-Env"), { path, 8193 } }, { STR("X-Env"), STR("prod") } };
    in.headers = hs;
    in.nheaders = 2;
    assert_int_equal(decide(p, &in), POLICY_ALLOW);
    in.nheaders = 1;
    assert_int_equal(decide(p, &in), POLICY_DENY);
    policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_each_criterion_and_matcher),
        cmocka_unit_test(test_eval_absent_values_match_nothing),
        cmocka_unit_test(test_eval_prefilters_agree_with_matchers),
        cmocka_unit_test(test_eval_host_index_keeps_order_and_agrees_with_trace),
        cmocka_unit_test(test_eval_ipv6_and_mapped_ipv4),
        cmocka_unit_test(test_eval_time_zone_follows_daylight_saving),
        cmocka_unit_test(test_eval_deny_wins_and_names_the_rule),
        cmocka_unit_test(test_eval_default_deny_and_login),
        cmocka_unit_test(test_eval_shadow_mode_logs_but_does_not_enforce),
        cmocka_unit_test(test_eval_trace_records_every_rule),
        cmocka_unit_test(test_eval_opa_suspends_and_resumes),
        cmocka_unit_test(test_eval_opa_not_asked_when_it_cannot_change_the_decision),
        cmocka_unit_test(test_eval_builtins),
        cmocka_unit_test(test_eval_regex_limit_fails_closed),
        cmocka_unit_test(test_eval_regex_input_is_capped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
