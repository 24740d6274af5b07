/* Unit tests for policy/lang.c: every bad policy is rejected with its exact
 * file:line:col message, and good policies compile. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "policy/policy.h"

struct bad {
    const char *text;
    const char *msg;
};

#define RULE(when) "rules:\n  - id: r1\n    effect: allow\n    when: " when "\n"

static const struct bad bad_policies[] = {
    { RULE("{grups: {contains: eng}}"),
      "p.yaml:4:12: error: unknown criterion \"grups\" (did you mean \"groups\"?)" },
    { RULE("{frobnicate: 1}"), "p.yaml:4:12: error: unknown criterion \"frobnicate\"" },
    { RULE("{groups: {contain: eng}}"),
      "p.yaml:4:21: error: unknown matcher \"contain\" in groups (did you mean \"contains\"?)" },
    { RULE("{authenticated: maybe}"),
      "p.yaml:4:27: error: \"authenticated\" must be true or false, got \"maybe\"" },
    { RULE("{user: [a, b]}"),
      "p.yaml:4:18: error: \"user\" must be a string or a map of matchers (is, prefix, suffix, "
      "contains, in, glob, regex), got a list" },
    { RULE("{all: {user: a}}"),
      "p.yaml:4:17: error: \"all\" must be a list of conditions, got a map" },
    { RULE("{source_ip: [10.0.0.0/33]}"),
      "p.yaml:4:24: error: bad CIDR \"10.0.0.0/33\" in source_ip" },
    { RULE("{source_ip: [\"fe80::zz/64\"]}"),
      "p.yaml:4:24: error: bad CIDR \"fe80::zz/64\" in source_ip" },
    { RULE("{source_ip: 10.1.2.3/8}"),
      "p.yaml:4:23: error: bad CIDR \"10.1.2.3/8\" in source_ip: host bits are set (did you "
      "mean \"10.0.0.0/8\"?)" },
    { RULE("{path: {regex: \"^/(a\"}}"),
      "p.yaml:4:26: error: bad regex \"^/(a\": missing closing parenthesis at offset 4" },
    /* Issue 9.9: patterns that made glibc's regcomp allocate 725 MB to 2 GB. */
    { RULE("{path: {regex: \"a++++++++++++++++++++\"}}"),
      "p.yaml:4:26: error: bad regex \"a++++++++++++++++++++\": quantifier does not follow a "
      "repeatable item at offset 3" },
    { RULE("{path: {regex: \"((a{1,100}){1,100}){1,100}\"}}"),
      "p.yaml:4:26: error: bad regex \"((a{1,100}){1,100}){1,100}\": regular expression is too "
      "large at offset 26" },
    { RULE("{path: {regex: \"((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
           "(a)))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))\"}}"),
      "p.yaml:4:26: error: bad regex \"((((((((((((((((((((((((((((((((((((((((((((((((((((((((((("
      "(((((((a))))))))))...\": parentheses are too deeply nested at offset 65" },
    { RULE("{path: {glob: \"/a/[bc]\"}}"),
      "p.yaml:4:25: error: bad glob \"/a/[bc]\": only *, ? and \\ are special; escape brackets "
      "and braces" },
    { "rules:\n  - id: r1\n    effect: allow\n  - id: r1\n    effect: deny\n",
      "p.yaml:4:9: error: duplicate rule id \"r1\" (first defined at line 2)" },
    { RULE("{all: [{user: alice}, {not: {user: alice}}]}"),
      "p.yaml:4:17: error: rule \"r1\" can never match: \"all\" contains a condition and its "
      "negation" },
    { RULE("{user: alice, not: {user: alice}}"),
      "p.yaml:4:11: error: rule \"r1\" can never match: \"all\" contains a condition and its "
      "negation" },
    { RULE("{all: [{user: alice}, {user: bob}]}"),
      "p.yaml:4:17: error: rule \"r1\" can never match: \"all\" requires user to be both "
      "\"alice\" and \"bob\"" },
    { RULE("{any: []}"), "p.yaml:4:17: error: rule \"r1\" can never match: empty \"any\"" },
    { RULE("{method: FETCH}"),
      "p.yaml:4:20: error: rule \"r1\" can never match: \"FETCH\" is not an HTTP method" },
    { RULE("{method: {in: [GET, post]}}"),
      "p.yaml:4:31: error: rule \"r1\" can never match: \"post\" is not an HTTP method (methods "
      "are case-sensitive: did you mean \"POST\"?)" },
    { RULE("{time: {hours: \"09:00-25:00\"}}"),
      "p.yaml:4:26: error: rule \"r1\" can never match: hours \"09:00-25:00\" out of range "
      "(expected HH:MM-HH:MM within 00:00-24:00)" },
    { RULE("{time: {hours: \"09:00-09:00\"}}"),
      "p.yaml:4:26: error: rule \"r1\" can never match: hours \"09:00-09:00\" is an empty range" },
    { RULE("{time: {weekdays: []}}"),
      "p.yaml:4:29: error: rule \"r1\" can never match: empty \"weekdays\" list" },
    { RULE("{time: {weekdays: [mon, fry]}}"),
      "p.yaml:4:35: error: bad weekday \"fry\" (expected mon, tue, wed, thu, fri, sat, sun or a "
      "range such as mon-fri)" },
    { RULE("{time: {tz: Mars/Olympus}}"),
      "p.yaml:4:23: error: unknown time zone \"Mars/Olympus\"" },
    { RULE("{time: {hour: \"09:00-10:00\"}}"),
      "p.yaml:4:19: error: unknown key \"hour\" in time (did you mean \"hours\"?)" },
    { RULE("{groups: {in: []}}"),
      "p.yaml:4:25: error: rule \"r1\" can never match: empty \"in\" list" },
    { RULE("{device: {trusted: yes-ish}}"),
      "p.yaml:4:30: error: \"device.trusted\" must be true or false, got \"yes-ish\"" },
    { RULE("{device: {owner_is: true}}"),
      "p.yaml:4:21: error: unknown key \"owner_is\" in device (did you mean \"owner\"?)" },
    { RULE("{claim: {is: eng}}"), "p.yaml:4:19: error: \"claim\" needs a \"name\"" },
    { RULE("{opa: \"../etc\"}"),
      "p.yaml:4:17: error: bad OPA data path \"../etc\" (letters, digits, _ and - separated "
      "by /)" },
    { "rules:\n  - id: r1\n    effect: permit\n",
      "p.yaml:3:13: error: \"effect\" must be allow or deny, got \"permit\"" },
    { "rules:\n  - effect: allow\n", "p.yaml:2:5: error: rule needs an \"id\"" },
    { "rules:\n  - id: default-deny\n    effect: allow\n",
      "p.yaml:2:9: error: rule id \"default-deny\" is reserved" },
    { "mode: audit\nrules: []\n",
      "p.yaml:1:7: error: \"mode\" must be enforce or shadow, got \"audit\"" },
    { "rule: []\n", "p.yaml:1:1: error: unknown key \"rule\" in policy (did you mean \"rules\"?)" },
    { "rules:\n  - id: r1\n    efect: allow\n",
      "p.yaml:3:5: error: unknown key \"efect\" in rule (did you mean \"effect\"?)" },
};

static void test_lang_rejects_each_bad_policy_with_its_message(void **state)
{
    size_t failures = 0;
    (void)state;
    for (size_t i = 0; i < sizeof bad_policies / sizeof bad_policies[0]; i++) {
        struct conf_diag d = { 0 };
        const struct bad *b = &bad_policies[i];
        struct policy *p = policy_parse("p.yaml", b->text, strlen(b->text), &d);
        if (p || d.stored == 0 || strcmp(d.msgs[0], b->msg) != 0) {
            print_error("case %zu:\n%s\nexpected: %s\n     got: %s\n", i, b->text, b->msg,
                        d.stored ? d.msgs[0] : "(no error)");
            failures++;
        }
        policy_free(p);
        conf_diag_fini(&d);
    }
    assert_int_equal(failures, 0);
}

static void test_lang_reports_several_errors_at_once(void **state)
{
    const char *text = "rules:\n  - id: a\n    effect: allow\n    when: {usr: x}\n"
                       "  - id: b\n    effect: allow\n    when: {source_ip: nope}\n";
    struct conf_diag d = { 0 };
    (void)state;
    assert_null(policy_parse("p.yaml", text, strlen(text), &d));
    assert_int_equal(d.count, 2);
    assert_string_equal(d.msgs[0], "p.yaml:4:12: error: unknown criterion \"usr\" (did you mean "
                                   "\"user\"?)");
    assert_string_equal(d.msgs[1], "p.yaml:7:23: error: bad CIDR \"nope\" in source_ip");
    conf_diag_fini(&d);
}

static void test_lang_compiles_the_architecture_example(void **state)
{
    const char *text =
        "mode: shadow\n"
        "rules:\n"
        "  - id: admin-area-admins-only\n"
        "    effect: deny\n"
        "    when:\n"
        "      all:\n"
        "        - path: {prefix: /admin}\n"
        "        - not: {groups: {contains: admins}}\n"
        "    reason: Only admins may open the admin area.\n"
        "  - id: engineers-on-trusted-devices\n"
        "    effect: allow\n"
        "    when: {all: [{groups: {contains: eng}}, {device: {trusted: true}}]}\n"
        "  - id: sales-reads-reports\n"
        "    effect: allow\n"
        "    when:\n"
        "      all:\n"
        "        - domain: {is: example.com}\n"
        "        - groups: {contains: sales}\n"
        "        - path: {prefix: /reports}\n"
        "        - method: {in: [GET, HEAD]}\n"
        "  - id: office-hours\n"
        "    effect: allow\n"
        "    when: {time: {weekdays: [mon-fri], hours: \"09:00-18:00\", tz: Europe/Paris}}\n"
        "  - id: central-policy\n"
        "    effect: allow\n"
        "    when: {opa: gatehouse/wiki/allow}\n";
    struct conf_diag d = { 0 };
    (void)state;
    struct policy *p = policy_parse("p.yaml", text, strlen(text), &d);
    if (!p) {
        conf_diag_print(&d, stderr);
    }
    assert_non_null(p);
    assert_int_equal(policy_mode(p), POLICY_SHADOW);
    assert_int_equal(policy_rule_count(p), 5);
    assert_string_equal(policy_rule_id(p, 0), "admin-area-admins-only");
    assert_string_equal(policy_rule_effect(p, 0), "deny");
    assert_string_equal(policy_rule_effect(p, 4), "allow");
    policy_free(p);
    conf_diag_fini(&d);
}

static void test_lang_loads_shipped_policies(void **state)
{
    const char *files[] = { "wiki.yaml", "admin.yaml", "admin-next.yaml", "reports.yaml" };
    (void)state;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", getenv("GH_POLICIES"), files[i]);
        struct conf_diag d = { 0 };
        struct policy *p = policy_load(path, &d);
        if (!p) {
            conf_diag_print(&d, stderr);
        }
        assert_non_null(p);
        policy_free(p);
        conf_diag_fini(&d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lang_rejects_each_bad_policy_with_its_message),
        cmocka_unit_test(test_lang_reports_several_errors_at_once),
        cmocka_unit_test(test_lang_compiles_the_architecture_example),
        cmocka_unit_test(test_lang_loads_shipped_policies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
