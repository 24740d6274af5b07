/* Unit tests for the access stage's seams: the data plane refuses every routed
 * request while no access stage is installed (fail closed), and decide() (the
 * pure decision step, proxy/access/decide.c) over allow, deny, sign-in, OPA
 * allow/deny/error/timeout and shadow mode, and decide_device_would_help()
 * (the denied page's enrolled-device hint). No sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_stage_installed_denies),
        cmocka_unit_test(test_decide_table),
        cmocka_unit_test(test_decide_is_repeatable),
        cmocka_unit_test(test_device_would_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
