/* Unit tests for policy/policy_conf.c: the routes the loader hands over get their
 * compiled policies index-aligned (file, public, any signed-in user), policy errors
 * keep their own positions, and a policy asking OPA needs opa.url. Which source a
 * route gets is the loader's decision (tests/unit/proxy/test_config.c). */
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

/* Loads yaml's sections with the routes given as the loader would hand them over:
 * a route with "policy" gets that file (and its key's position), others the
 * source named by src (public or signed-in). */
static struct policy_conf *load_routes(const char *yaml, const enum policy_source *src,
                                       struct conf_diag *d)
{
    char cfg[128];
    snprintf(cfg, sizeof cfg, "%s/g.yaml", dir);
    write_file("g.yaml", yaml);
    struct conf_doc *doc = conf_doc_load(cfg, d);
    assert_non_null(doc);
    const struct conf_node *rs = conf_get(doc->root, "routes");
    size_t n = rs ? rs->n : 0;
    struct policy_route_spec *specs = calloc(n + 1, sizeof *specs);
    char **paths = calloc(n + 1, sizeof *paths);
    assert_true(specs && paths);
    for (size_t i = 0; i < n; i++) {
        const struct conf_node *pol = conf_get(rs->items[i], "policy");
        specs[i].name = conf_get(rs->items[i], "name")->value;
        specs[i].source = pol ? POLICY_SOURCE_FILE : src ? src[i] : POLICY_SOURCE_SIGNED_IN;
        if (pol) {
            paths[i] = conf_path_resolve(cfg, pol->value);
            specs[i].file = paths[i];
            specs[i].at = pol;
        }
    }
    struct policy_conf *pc = policy_conf_load(doc->root, cfg, specs, n, d);
    for (size_t i = 0; i < n; i++) {
        free(paths[i]);
    }
    free(paths);
    free(specs);
    conf_doc_free(doc);
    return pc;
}

static struct policy_conf *load(const char *yaml, struct conf_diag *d)
{
    return load_routes(yaml, NULL, d);
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
    static const enum policy_source src[] = { POLICY_SOURCE_FILE, POLICY_SOURCE_PUBLIC,
                                              POLICY_SOURCE_SIGNED_IN, POLICY_SOURCE_SIGNED_IN };
    struct policy_conf *pc = load_routes("opa: {url: http://127.0.0.1:8181}\n"
                                         "state: {sqlite: gh.db}\n"
                                         "decision_log: {file: d.jsonl, sync: strict}\n"
                                         "routes:\n"
                                         "  - {name: wiki, policy: wiki.yaml}\n"
                                         "  - {name: status, public: true}\n"
                                         "  - {name: app, allow_any_authenticated: true}\n"
                                         "  - {name: plain}\n",
                                         src, &d);
    if (!pc) {
        conf_diag_print(&d, stderr);
    }
    assert_non_null(pc);
    assert_int_equal(policy_opa_paths(policy_conf_route(pc, 0)), 1);
    assert_string_equal(policy_rule_id(policy_conf_route(pc, 1), 0), "public");
    assert_string_equal(policy_rule_id(policy_conf_route(pc, 2), 0), "allow-any-authenticated");
    assert_string_equal(policy_rule_id(policy_conf_route(pc, 3), 0), "allow-any-authenticated");
    assert_null(policy_conf_route(pc, 4));
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
    snprintf(want, sizeof want,
             "%s/g.yaml:2:26: error: route \"wiki\": policy wiki.yaml asks OPA "
             "(\"gh/wiki\") but \"opa.url\" is not configured",
             dir);
    assert_string_equal(d.msgs[0], want);
    snprintf(want, sizeof want,
             "%s/bad.yaml:4:12: error: unknown criterion \"usr\" (did you mean "
             "\"user\"?)",
             dir);
    assert_string_equal(d.msgs[1], want);
    conf_diag_fini(&d);
    struct policy_conf *pc = load("routes: []\n", &d);
    assert_non_null(pc);
    assert_null(policy_conf_log(pc));
    assert_null(policy_conf_opa(pc)->url);
    policy_conf_free(pc);
    conf_diag_fini(&d);
}

/* Issue 9.15 and 11: policies are index-aligned with the routes (no lookup by
 * name); every one of many routes gets its own, a duplicate name its own too. */
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
    enum policy_source *src = calloc(3001, sizeof *src);
    assert_non_null(src);
    for (int i = 0; i < 3001; i++) {
        src[i] = i % 2 && i < 3000 ? POLICY_SOURCE_PUBLIC : POLICY_SOURCE_SIGNED_IN;
    }
    struct policy_conf *pc = load_routes(yaml, src, &d);
    free(src);
    free(yaml);
    assert_non_null(pc);
    for (size_t i = 0; i < 3000; i++) {
        const struct policy *p = policy_conf_route(pc, i);
        assert_non_null(p);
        assert_string_equal(policy_rule_id(p, 0), i % 2 ? "public" : "allow-any-authenticated");
    }
    assert_string_equal(policy_rule_id(policy_conf_route(pc, 3000), 0), "allow-any-authenticated");
    assert_null(policy_conf_route(pc, 3001));
    assert_null(policy_conf_route(NULL, 1));
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
