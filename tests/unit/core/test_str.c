/* Unit tests for core/str.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "core/str.h"

static void test_str_to_u64_accepts_bounds_and_rejects_junk(void **state)
{
    uint64_t v = 0;
    (void)state;
    assert_true(str_to_u64(STR("42"), 0, 100, &v));
    assert_int_equal(v, 42);
    assert_false(str_to_u64(STR("101"), 0, 100, &v));
    assert_false(str_to_u64(STR("-1"), 0, 100, &v));
    assert_false(str_to_u64(STR(""), 0, 100, &v));
    assert_false(str_to_u64(STR("1 "), 0, 100, &v));
    assert_false(str_to_u64(STR("18446744073709551616"), 0, UINT64_MAX, &v));
    assert_true(str_to_u64(STR("18446744073709551615"), 0, UINT64_MAX, &v));
}

static void test_str_ieq_is_ascii_case_insensitive(void **state)
{
    (void)state;
    assert_true(str_ieq(STR("Content-Length"), STR("content-length")));
    assert_false(str_ieq(STR("Content-Length"), STR("content-lengt")));
}

static void test_str_trim_prefix_suffix_contains(void **state)
{
    struct str t = str_trim(STR(" \t chunked \t"));
    (void)state;
    assert_true(str_eq(t, STR("chunked")));
    assert_true(str_has_prefix(STR("/admin/x"), STR("/admin")));
    assert_false(str_has_prefix(STR("/adm"), STR("/admin")));
    assert_true(str_has_suffix(STR("a.example.com"), STR(".example.com")));
    assert_true(str_contains(STR("eng,sales"), STR("sales")));
    assert_false(str_contains(STR("eng"), STR("sales")));
}

static void test_str_edit_distance(void **state)
{
    (void)state;
    assert_int_equal(str_edit_distance("listen", "listne"), 2);
    assert_int_equal(str_edit_distance("routes", "route"), 1);
    assert_int_equal(str_edit_distance("", "abc"), 3);
}

static void test_str_u64_digits(void **state)
{
    char buf[STR_U64_MAX];
    (void)state;
    assert_true(str_eq(str_u64(buf, 0), STR("0")));
    assert_true(str_eq(str_u64(buf, 1234567), STR("1234567")));
    assert_true(str_eq(str_u64(buf, UINT64_MAX), STR("18446744073709551615")));
}

/* Every byte value spelled as two lower-case hex digits, as snprintf spells it. */
static void test_str_hex_every_byte(void **state)
{
    (void)state;
    unsigned char in[256];
    char out[513], want[3];
    for (int i = 0; i < 256; i++) {
        in[i] = (unsigned char)i;
    }
    str_hex(in, 256, out);
    assert_int_equal(strlen(out), 512);
    for (int i = 0; i < 256; i++) {
        snprintf(want, sizeof want, "%02x", i);
        assert_memory_equal(out + 2 * i, want, 2);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_str_to_u64_accepts_bounds_and_rejects_junk),
        cmocka_unit_test(test_str_ieq_is_ascii_case_insensitive),
        cmocka_unit_test(test_str_trim_prefix_suffix_contains),
        cmocka_unit_test(test_str_edit_distance),
        cmocka_unit_test(test_str_u64_digits),
        cmocka_unit_test(test_str_hex_every_byte),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
