/* Unit tests for policy/policy_conf.c: a config's routes get their compiled
 * policies (file, public, allow-any-authenticated), policy errors keep their own
 * positions, and a policy asking OPA needs opa.url. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "policy/policy.h"

static char dir[64];

static void write_file(const char *name, const char *text)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static struct policy_conf *load(const char *yaml, struct conf_diag *d)
{
    char cfg[128];
    snprintf(cfg, sizeof cfg, "%s/g.yaml", dir);
    write_file("g.yaml", yaml);
    struct conf_doc *doc = conf_doc_load(cfg, d);
    assert_non_null(doc);
    struct policy_conf *pc = policy_conf_load(doc->root, cfg, d);
    conf_doc_free(doc);
    return pc;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/gh-pc-XXXXXX");
    if (!mkdtemp(dir)) {
        return -1;
    }
    write_file("wiki.yaml",
               "rules:\n  - id: central\n    effect: allow\n    when: {opa: gh/wiki}\n");
    write_file("bad.yaml", "rules:\n  - id: x\n    effect: allow\n    when: {usr: a}\n");
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    (void)state;
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_policy_conf_routes(void **state)
{
    struct conf_diag d = { 0 };
    (void)state;
    struct policy_conf *pc = load("opa: {url: http://127.0.0.1:8181}\n"
                                  "state: {sqlite: gh.db}\n"
                                  "decision_log: {file: d.jsonl, sync: strict}\n"
                                  "routes:\n"
                                  "  - {name: wiki, policy: wiki.yaml}\n"
                                  "  - {name: status, public: true}\n"
                                  "  - {name: app, allow_any_authenticated: true}\n"
                                  "  - {name: plain}\n",
                                  &d);
    if (!pc) {
        conf_diag_print(&d, stderr);
    }
    assert_non_null(pc);
    assert_int_equal(policy_opa_paths(policy_conf_route(pc, "wiki")), 1);
    assert_string_equal(policy_rule_id(policy_conf_route(pc, "status"), 0), "public");
    assert_string_equal(policy_rule_id(policy_conf_route(pc, "app"), 0), "allow-any-authenticated");
    assert_string_equal(policy_rule_id(policy_conf_route(pc, "plain"), 0),
                        "allow-any-authenticated");
    assert_null(policy_conf_route(pc, "nope"));
    assert_string_equal(policy_conf_opa(pc)->url, "http://127.0.0.1:8181");
    assert_non_null(policy_conf_log(pc));
    assert_int_equal(policy_conf_log(pc)->sync, DECISION_LOG_STRICT);
    policy_conf_free(pc);
    conf_diag_fini(&d);
}

static void test_policy_conf_errors(void **state)
{
    struct conf_diag d = { 0 };
    char want[256];
    (void)state;
    assert_null(load("routes:\n  - {name: wiki, policy: wiki.yaml}\n"
                     "  - {name: b, policy: bad.yaml}\n",
                     &d));
    assert_int_equal(d.count, 2);
    snprintf(want, sizeof want, "%s/g.yaml:2:26: error: route \"wiki\": policy wiki.yaml asks OPA "
             "(\"gh/wiki\") but \"opa.url\" is not configured", dir);
    assert_string_equal(d.msgs[0], want);
    snprintf(want, sizeof want, "%s/bad.yaml:4:12: error: unknown criterion \"usr\" (did you mean "
             "\"user\"?)", dir);
    assert_string_equal(d.msgs[1], want);
    conf_diag_fini(&d);
    struct policy_conf *pc = load("routes: []\n", &d);
    assert_non_null(pc);
    assert_null(policy_conf_log(pc));
    assert_null(policy_conf_opa(pc)->url);
    policy_conf_free(pc);
    conf_diag_fini(&d);
}

/* Issue 9.15: the per-route lookup is indexed; every one of many routes finds its
 * own policy, a duplicate name finds the first, and names never seen find none. */
static void test_policy_conf_many_routes(void **state)
{
    struct conf_diag d = { 0 };
    (void)state;
    size_t cap = 64 * 3000 + 256, len = 0;
    char *yaml = malloc(cap);
    assert_non_null(yaml);
    len += (size_t)snprintf(yaml + len, cap - len, "routes:\n");
    for (int i = 0; i < 3000; i++) {
        len += (size_t)snprintf(yaml + len, cap - len, "  - {name: r%d, %s: true}\n", i,
                                i % 2 ? "public" : "allow_any_authenticated");
    }
    snprintf(yaml + len, cap - len, "  - {name: r1, allow_any_authenticated: true}\n");
    struct policy_conf *pc = load(yaml, &d);
    free(yaml);
    assert_non_null(pc);
    for (int i = 0; i < 3000; i++) {
        char name[16];
        snprintf(name, sizeof name, "r%d", i);
        const struct policy *p = policy_conf_route(pc, name);
        assert_non_null(p);
        assert_string_equal(policy_rule_id(p, 0), i % 2 ? "public" : "allow-any-authenticated");
    }
    assert_null(policy_conf_route(pc, "r3000"));
    assert_null(policy_conf_route(pc, "r"));
    assert_null(policy_conf_route(pc, ""));
    assert_null(policy_conf_route(NULL, "r1"));
    policy_conf_free(pc);
    conf_diag_fini(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_conf_routes),
        cmocka_unit_test(test_policy_conf_errors),
        cmocka_unit_test(test_policy_conf_many_routes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
