/* Unit tests for authn/cookie.c: lookup across headers, duplicates, quoting,
 * limits, Set-Cookie flags, and stripping our cookies before the backend. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "authn/cookie.h"

static void test_cookie_get_finds_value_across_headers(void **state)
{
    struct str h[2] = { STR("theme=dark;  lang=en"), STR("gh=abc-_123; other=\"x\"") };
    struct str v;
    bool found;
    struct err err = { 0 };
    assert_int_equal(cookie_get(h, 2, "gh", &v, &found, &err), 0);
    assert_true(found);
    assert_true(str_eq(v, STR("abc-_123")));
    assert_int_equal(cookie_get(h, 2, "other", &v, &found, &err), 0);
    assert_true(str_eq(v, STR("x"))); /* quotes removed */
    assert_int_equal(cookie_get(h, 2, "missing", &v, &found, &err), 0);
    assert_false(found);
    /* Prefix of another name does not match. */
    struct str h2[1] = { STR("ghx=1; xgh=2;gh") };
    assert_int_equal(cookie_get(h2, 1, "gh", &v, &found, &err), 0);
    assert_false(found);
    (void)state;
}

static void test_cookie_parse_rejects_duplicate_session(void **state)
{
    struct str h[1] = { STR("sid=a; sid=b") };
    struct str v;
    bool found;
    struct err err = { 0 };
    assert_int_equal(cookie_get(h, 1, "sid", &v, &found, &err), ERR_PARSE);
    assert_string_equal(err.msg, "duplicate cookie \"sid\"");
    struct str h2[2] = { STR("sid=a"), STR("x=1; sid=a") };
    assert_int_equal(cookie_get(h2, 2, "sid", &v, &found, &err), ERR_PARSE);
    (void)state;
}

static void test_cookie_limits_and_bad_values(void **state)
{
    struct str v;
    bool found;
    struct err err = { 0 };
    char *big = xmalloc(COOKIE_MAX_HEADER_BYTES + 10);
    memset(big, 'a', COOKIE_MAX_HEADER_BYTES + 9);
    big[COOKIE_MAX_HEADER_BYTES + 9] = '\0';
    struct str h[1] = { str_from(big) };
    assert_int_equal(cookie_get(h, 1, "sid", &v, &found, &err), ERR_LIMIT);
    assert_string_equal(err.msg, "Cookie header longer than 8192 bytes");
    free(big);
    struct str h2[1] = { STR("sid=a\\b") };
    assert_int_equal(cookie_get(h2, 1, "sid", &v, &found, &err), ERR_PARSE);
    assert_string_equal(err.msg, "cookie \"sid\" has a malformed value");
    struct str h3[1] = { STR("sid=a,b") };
    assert_int_equal(cookie_get(h3, 1, "sid", &v, &found, &err), ERR_PARSE);
    (void)state;
}

static void test_set_cookie_flags(void **state)
{
    struct arena *a = arena_new(0);
    char name[80];
    assert_true(cookie_wire_name("gatehouse_session", true, name, sizeof name));
    assert_string_equal(name, "__Host-gatehouse_session");
    assert_string_equal(cookie_format(a, name, STR("abc"), true, 3600),
                        "__Host-gatehouse_session=abc; Path=/; Max-Age=3600; HttpOnly; "
                        "SameSite=Lax; Secure");
    assert_true(cookie_wire_name("gatehouse_session", false, name, sizeof name));
    assert_string_equal(cookie_format(a, name, STR("abc"), false, -1),
                        "gatehouse_session=abc; Path=/; HttpOnly; SameSite=Lax");
    assert_string_equal(cookie_format(a, name, STR(""), false, 0),
                        "gatehouse_session=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 "
                        "00:00:00 GMT; HttpOnly; SameSite=Lax");
    /* Header injection through the value is impossible. */
    assert_null(cookie_format(a, name, STR("a\r\nSet-Cookie: x=y"), false, 1));
    assert_null(cookie_format(a, name, STR("a; Domain=evil"), false, 1));
    assert_false(cookie_wire_name("gatehouse_session", true, name, 10));
    arena_free(a);
    (void)state;
}

static void test_strip_removes_our_cookies_only(void **state)
{
    struct arena *a = arena_new(0);
    static const char *const ours[] = { "__Host-gatehouse_session", "gatehouse_login", NULL };
    struct str s = cookie_strip(a, STR("theme=dark;__Host-gatehouse_session=SECRET;lang=en"), ours);
    assert_true(str_eq(s, STR("theme=dark; lang=en")));
    s = cookie_strip(a, STR("__Host-gatehouse_session=SECRET; gatehouse_login=x"), ours);
    assert_int_equal(s.len, 0);
    s = cookie_strip(a, STR("a;b;c"), ours);
    assert_true(str_eq(s, STR("a; b; c")));
    arena_free(a);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cookie_get_finds_value_across_headers),
        cmocka_unit_test(test_cookie_parse_rejects_duplicate_session),
        cmocka_unit_test(test_cookie_limits_and_bad_values),
        cmocka_unit_test(test_set_cookie_flags),
        cmocka_unit_test(test_strip_removes_our_cookies_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
