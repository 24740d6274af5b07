/* Unit tests for core/conf.c: positions, duplicate keys, typed getters, messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/conf.h"

static struct conf_doc *parse(const char *text, struct conf_diag *d)
{
    return conf_doc_parse("t.yaml", text, strlen(text), d);
}

static void test_conf_keeps_line_and_column(void **state)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = parse("a: 1\nb:\n  c: [x, y]\n", &d);
    (void)state;
    assert_non_null(doc);
    assert_int_equal(d.count, 0);
    struct conf_node *c = conf_get(conf_get(doc->root, "b"), "c");
    assert_non_null(c);
    assert_int_equal(c->type, CONF_SEQ);
    assert_int_equal(c->items[1]->line, 3);
    assert_int_equal(c->items[1]->col, 10);
    conf_doc_free(doc);
}

static void test_conf_reports_duplicate_key(void **state)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = parse("a: 1\na: 2\n", &d);
    (void)state;
    assert_non_null(doc);
    assert_int_equal(d.count, 1);
    assert_string_equal(d.msgs[0], "t.yaml:2:1: error: duplicate key \"a\" (first at line 1)");
    conf_doc_free(doc);
    conf_diag_fini(&d);
}

static void test_conf_syntax_error_has_position(void **state)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = parse("a: [1, 2\nb: 3\n", &d);
    (void)state;
    assert_null(doc);
    assert_int_equal(d.count, 1);
    assert_true(strncmp(d.msgs[0], "t.yaml:", 7) == 0);
    assert_non_null(strstr(d.msgs[0], "error:"));
    conf_diag_fini(&d);
}

static void test_conf_unknown_key_suggests(void **state)
{
    static const char *const keys[] = { "listen", "routes", "workers", NULL };
    struct conf_diag d = { 0 };
    struct conf_doc *doc = parse("listne: x\nroutes: []\nzzz: 1\n", &d);
    (void)state;
    assert_false(conf_check_keys(&d, doc->root, "the top level", keys));
    assert_int_equal(d.count, 2);
    assert_string_equal(d.msgs[0],
                        "t.yaml:1:1: error: unknown key \"listne\" in the top level (did you "
                        "mean \"listen\"?)");
    assert_string_equal(d.msgs[1], "t.yaml:3:1: error: unknown key \"zzz\" in the top level");
    conf_doc_free(doc);
    conf_diag_fini(&d);
}

static void test_conf_typed_getters(void **state)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc =
        parse("t: 250ms\nu: 8h\ns: 32k\nb: true\nn: 7\nbad: 10x\nbb: maybe\n", &d);
    uint64_t v = 0;
    bool b = false;
    (void)state;
    assert_true(conf_duration_ms(&d, doc->root, "t", 0, UINT64_MAX, &v));
    assert_int_equal(v, 250);
    assert_true(conf_duration_ms(&d, doc->root, "u", 0, UINT64_MAX, &v));
    assert_int_equal(v, 8 * 3600 * 1000);
    assert_true(conf_size(&d, doc->root, "s", 0, UINT64_MAX, &v));
    assert_int_equal(v, 32 * 1024);
    assert_true(conf_bool(&d, doc->root, "b", &b));
    assert_true(b);
    assert_true(conf_u64(&d, doc->root, "n", 1, 10, &v));
    assert_int_equal(v, 7);
    assert_int_equal(d.count, 0);
    assert_false(conf_duration_ms(&d, doc->root, "bad", 0, UINT64_MAX, &v));
    assert_string_equal(d.msgs[0], "t.yaml:6:6: error: \"bad\" must be a duration such as "
                                   "250ms, 10s, 5m, 8h or 7d, got \"10x\"");
    assert_false(conf_bool(&d, doc->root, "bb", &b));
    assert_string_equal(d.msgs[1],
                        "t.yaml:7:5: error: \"bb\" must be true or false, got \"maybe\"");
    assert_false(conf_u64(&d, doc->root, "n", 8, 10, &v));
    assert_string_equal(d.msgs[2], "t.yaml:5:4: error: \"n\" must be between 8 and 10, got 7");
    conf_doc_free(doc);
    conf_diag_fini(&d);
}

static void test_conf_path_resolve(void **state)
{
    (void)state;
    char *p = conf_path_resolve("/etc/gh/gatehouse.yaml", "tls/a.pem");
    assert_string_equal(p, "/etc/gh/tls/a.pem");
    free(p);
    p = conf_path_resolve("gatehouse.yaml", "tls/a.pem");
    assert_string_equal(p, "tls/a.pem");
    free(p);
    p = conf_path_resolve("/etc/gh/gatehouse.yaml", "/abs.pem");
    assert_string_equal(p, "/abs.pem");
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conf_keeps_line_and_column),
        cmocka_unit_test(test_conf_reports_duplicate_key),
        cmocka_unit_test(test_conf_syntax_error_has_position),
        cmocka_unit_test(test_conf_unknown_key_suggests),
        cmocka_unit_test(test_conf_typed_getters),
        cmocka_unit_test(test_conf_path_resolve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
