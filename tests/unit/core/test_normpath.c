/* Unit tests for core/normpath.c: one table of request paths and their normal
 * form or refusal (the path-ambiguity forms an attacker tries on a proxy that
 * checks one path and forwards another), with and without encoded slashes
 * kept; idempotence of every result; case folding. An encoded slash anywhere
 * in the input counts, even in a segment that a later ".." removes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/normpath.h"

#define K NORMPATH_KEEP_ENCODED_SLASH

struct row {
    const char *in;
    unsigned flags;
    enum normpath_rc rc;
    const char *out; /* when NORMPATH_OK */
    bool enc;        /* encoded slash kept */
};

static const struct row rows[] = {
    /* already normal */
    { "/", 0, NORMPATH_OK, "/", false },
    { "/admin", 0, NORMPATH_OK, "/admin", false },
    { "/a/b/", 0, NORMPATH_OK, "/a/b/", false },
    { "/a-b_c~d.e", 0, NORMPATH_OK, "/a-b_c~d.e", false },
    { "/a:b@c!$&'()*+,=", 0, NORMPATH_OK, "/a:b@c!$&'()*+,=", false },
    /* unreserved escapes decoded, in either case */
    { "/%61dmin", 0, NORMPATH_OK, "/admin", false },
    { "/adm%69n/x", 0, NORMPATH_OK, "/admin/x", false },
    { "/%41%5a%30%2D%2e%5F%7e", 0, NORMPATH_OK, "/AZ0-._~", false },
    { "/%7E%7e", 0, NORMPATH_OK, "/~~", false },
    /* other escapes stay, upper-cased; never decoded twice */
    { "/a%3fb", 0, NORMPATH_OK, "/a%3Fb", false },
    { "/a%23b", 0, NORMPATH_OK, "/a%23b", false },
    { "/%c3%a9", 0, NORMPATH_OK, "/%C3%A9", false },
    { "/%252e%252e/admin", 0, NORMPATH_OK, "/%252e%252e/admin", false },
    { "/%25", 0, NORMPATH_OK, "/%25", false },
    { "/a%20b", 0, NORMPATH_OK, "/a%20b", false },
    { "/%3b", 0, NORMPATH_OK, "/%3B", false },
    /* dot segments (RFC 3986 §5.2.4), raw and encoded */
    { "/./admin", 0, NORMPATH_OK, "/admin", false },
    { "/%2e/admin", 0, NORMPATH_OK, "/admin", false },
    { "/x/../admin", 0, NORMPATH_OK, "/admin", false },
    { "/x/%2e%2e/admin", 0, NORMPATH_OK, "/admin", false },
    { "/x/%2E%2e/admin", 0, NORMPATH_OK, "/admin", false },
    { "/x/.%2e/admin", 0, NORMPATH_OK, "/admin", false },
    { "/static/../admin", 0, NORMPATH_OK, "/admin", false },
    { "/static/%2e%2e/admin", 0, NORMPATH_OK, "/admin", false },
    { "/a/b/c/./../../g", 0, NORMPATH_OK, "/a/g", false },
    { "/a/.", 0, NORMPATH_OK, "/a/", false },
    { "/a/..", 0, NORMPATH_OK, "/", false },
    { "/a/b/..", 0, NORMPATH_OK, "/a/", false },
    { "/.", 0, NORMPATH_OK, "/", false },
    { "/...", 0, NORMPATH_OK, "/...", false },
    { "/..a/.b", 0, NORMPATH_OK, "/..a/.b", false },
    /* repeated slashes merged */
    { "//admin", 0, NORMPATH_OK, "/admin", false },
    { "/a//b///c////", 0, NORMPATH_OK, "/a/b/c/", false },
    { "//", 0, NORMPATH_OK, "/", false },
    { "/x//../admin", 0, NORMPATH_OK, "/admin", false },
    /* ;params stay in their segment */
    { "/admin;x", 0, NORMPATH_OK, "/admin;x", false },
    { "/static;/../admin", 0, NORMPATH_OK, "/admin", false },
    { "/a;x=1/b;y", 0, NORMPATH_OK, "/a;x=1/b;y", false },
    { "/..;/admin", 0, NORMPATH_DOT_PARAMS, NULL, false },
    { "/static/..;/admin", 0, NORMPATH_DOT_PARAMS, NULL, false },
    { "/static/.;x/admin", 0, NORMPATH_DOT_PARAMS, NULL, false },
    { "/static/%2e%2e;/admin", 0, NORMPATH_DOT_PARAMS, NULL, false },
    /* above the root */
    { "/..", 0, NORMPATH_ABOVE_ROOT, NULL, false },
    { "/../admin", 0, NORMPATH_ABOVE_ROOT, NULL, false },
    { "/%2e%2e/admin", 0, NORMPATH_ABOVE_ROOT, NULL, false },
    { "/.%2e/admin", 0, NORMPATH_ABOVE_ROOT, NULL, false },
    { "/a/../../admin", 0, NORMPATH_ABOVE_ROOT, NULL, false },
    { "//../admin", 0, NORMPATH_ABOVE_ROOT, NULL, false },
    /* encoded slashes: refused, or kept opaque and upper-cased */
    { "/static/..%2fadmin", 0, NORMPATH_ENCODED_SLASH, NULL, false },
    { "/a%2Fb", 0, NORMPATH_ENCODED_SLASH, NULL, false },
    { "/a%5cb", 0, NORMPATH_ENCODED_SLASH, NULL, false },
    { "/static/..%2fadmin", K, NORMPATH_OK, "/static/..%2Fadmin", true },
    { "/a%2fb/%5c", K, NORMPATH_OK, "/a%2Fb/%5C", true },
    { "/a%2F..%2F/../b", K, NORMPATH_OK, "/b", true },
    { "/%2e%2e%2fadmin", K, NORMPATH_OK, "/..%2Fadmin", true },
    { "/plain", K, NORMPATH_OK, "/plain", false },
    /* control bytes, raw or encoded; backslash; non-ASCII */
    { "/%00", 0, NORMPATH_CONTROL, NULL, false },
    { "/a%0d%0aX:y", 0, NORMPATH_CONTROL, NULL, false },
    { "/a%7f", 0, NORMPATH_CONTROL, NULL, false },
    { "/a%1F", K, NORMPATH_CONTROL, NULL, false },
    { "/a\tb", 0, NORMPATH_CONTROL, NULL, false },
    { "/a b", 0, NORMPATH_CONTROL, NULL, false },
    { "/a\\b", 0, NORMPATH_BACKSLASH, NULL, false },
    { "/a\\..\\admin", K, NORMPATH_BACKSLASH, NULL, false },
    { "/caf\xc3\xa9", 0, NORMPATH_NON_ASCII, NULL, false },
    /* invalid escapes */
    { "/a%zz", 0, NORMPATH_BAD_ESCAPE, NULL, false },
    { "/a%", 0, NORMPATH_BAD_ESCAPE, NULL, false },
    { "/a%2", 0, NORMPATH_BAD_ESCAPE, NULL, false },
    { "/a%2/b", 0, NORMPATH_BAD_ESCAPE, NULL, false },
    { "/a%%41", 0, NORMPATH_BAD_ESCAPE, NULL, false },
    { "/a%g0", 0, NORMPATH_BAD_ESCAPE, NULL, false },
    /* not a path */
    { "", 0, NORMPATH_NOT_ABSOLUTE, NULL, false },
    { "*", 0, NORMPATH_NOT_ABSOLUTE, NULL, false },
    { "admin", 0, NORMPATH_NOT_ABSOLUTE, NULL, false },
};

static void check_row(const struct row *w, const char *in, size_t len)
{
    char out[4096], again[4096];
    size_t n = 99, n2 = 0;
    bool enc = !w->enc, enc2 = false;

    assert_true(len <= sizeof out);
    enum normpath_rc rc = normpath(in, len, out, w->flags, &n, &enc);
    if (rc != w->rc) {
        fail_msg("%s: got %d (%s), want %d", w->in, rc, normpath_reason(rc), w->rc);
    }
    if (rc != NORMPATH_OK) {
        assert_int_equal(n, 0);
        assert_string_not_equal(normpath_reason(rc), "ok");
        return;
    }
    if (n != strlen(w->out) || memcmp(out, w->out, n) != 0) {
        fail_msg("%s: got \"%.*s\", want \"%s\"", w->in, (int)n, out, w->out);
    }
    assert_int_equal(enc, w->enc);
    /* Its own normal form. */
    assert_int_equal(normpath(out, n, again, w->flags, &n2, &enc2), NORMPATH_OK);
    assert_int_equal(n2, n);
    assert_memory_equal(again, out, n);
    /* A slash kept in a segment that ".." removed still counted above. */
    assert_int_equal(enc2, memmem(out, n, "%2F", 3) != NULL || memmem(out, n, "%5C", 3) != NULL);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        check_row(&rows[i], rows[i].in, strlen(rows[i].in));
    }
}

static void test_nul_byte_inside(void **state)
{
    static const char in[] = "/a\0b";
    char out[8];
    size_t n = 0;
    (void)state;
    assert_int_equal(normpath(in, sizeof in - 1, out, K, &n, NULL), NORMPATH_CONTROL);
}

static void test_long_paths(void **state)
{
    (void)state;
    /* 8k of segments climbing down and back up: linear, lands on "/end". */
    size_t cap = 40000, len = 0;
    char *in = malloc(cap), *out = malloc(cap);
    size_t n = 0;
    assert_non_null(in);
    assert_non_null(out);
    for (int i = 0; i < 2000; i++) {
        memcpy(in + len, "/seg", 4);
        len += 4;
    }
    for (int i = 0; i < 2000; i++) {
        memcpy(in + len, "/..", 3);
        len += 3;
    }
    memcpy(in + len, "/end", 4);
    len += 4;
    assert_int_equal(normpath(in, len, out, 0, &n, NULL), NORMPATH_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "/end", 4);
    /* One more ".." climbs above the root. */
    len -= 4;
    memcpy(in + len, "/../end", 7);
    len += 7;
    assert_int_equal(normpath(in, len, out, 0, &n, NULL), NORMPATH_ABOVE_ROOT);
    free(in);
    free(out);
}

static void test_fold_case(void **state)
{
    char p[] = "/ADMIN/%C3%A9/Ab%2F;X=Y";
    (void)state;
    normpath_fold_case(p, strlen(p));
    assert_string_equal(p, "/admin/%C3%A9/ab%2F;x=y");
    assert_true(normpath_is_boundary('/'));
    assert_true(normpath_is_boundary(';'));
    assert_false(normpath_is_boundary('x'));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_nul_byte_inside),
        cmocka_unit_test(test_long_paths),
        cmocka_unit_test(test_fold_case),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
