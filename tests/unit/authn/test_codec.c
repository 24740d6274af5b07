/* Unit tests for authn/codec.c's base64url: round trips of every length, and
 * refusal of foreign characters, bad lengths, non-canonical trailing bits and
 * output that does not fit. The decoder reads four digits at a time, so every
 * case is tried at each offset within a quad. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "authn/codec.h"

static void test_round_trip_every_length(void **state)
{
    unsigned char in[80], out[80];
    (void)state;
    for (size_t n = 0; n <= sizeof in; n++) {
        for (size_t i = 0; i < n; i++) {
            in[i] = (unsigned char)(i * 151 + n * 7 + 3);
        }
        char *enc = codec_b64url_encode(in, n);
        size_t got = 0;
        assert_true(codec_b64url_decode_to(str_from(enc), out, sizeof out, &got));
        assert_int_equal(got, n);
        assert_memory_equal(in, out, n);
        unsigned char *heap = codec_b64url_decode(str_from(enc), &got);
        assert_non_null(heap);
        assert_int_equal(got, n);
        assert_memory_equal(in, heap, n);
        assert_int_equal(heap[n], 0); /* NUL-terminated for convenience */
        free(heap);
        free(enc);
    }
}

static void test_known_values_and_padding(void **state)
{
    unsigned char out[16];
    size_t n = 0;
    (void)state;
    assert_true(codec_b64url_decode_to(STR("-_8"), out, sizeof out, &n));
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    assert_true(codec_b64url_decode_to(STR("AAA="), out, sizeof out, &n));
    assert_int_equal(n, 2);
    assert_true(codec_b64url_decode_to(STR("AA=="), out, sizeof out, &n));
    assert_int_equal(n, 1);
    assert_true(codec_b64url_decode_to(STR(""), out, sizeof out, &n));
    assert_int_equal(n, 0);
}

static void test_refuses_foreign_characters_at_every_offset(void **state)
{
    const char *bad = "+/=.!\x80 \t";
    char text[13];
    unsigned char out[16];
    size_t n;
    (void)state;
    for (const char *b = bad; *b; b++) {
        for (size_t at = 0; at < 12; at++) {
            memcpy(text, "QUJDREVGR0hJ", 12); /* "ABCDEFGHI" */
            text[at] = *b;
            text[12] = '\0';
            if (*b == '=' && at >= 10) {
                continue; /* trailing padding is allowed */
            }
            assert_false(codec_b64url_decode_to((struct str){ text, 12 }, out, sizeof out, &n));
        }
    }
}

static void test_refuses_bad_lengths_and_non_canonical_bits(void **state)
{
    unsigned char out[16];
    size_t n;
    (void)state;
    assert_false(codec_b64url_decode_to(STR("A"), out, sizeof out, &n));
    assert_false(codec_b64url_decode_to(STR("AAAAA"), out, sizeof out, &n));
    assert_false(codec_b64url_decode_to(STR("AA==="), out, sizeof out, &n));
    /* "AB" and "AAB" leave bits set past the last byte: two spellings of one value. */
    assert_false(codec_b64url_decode_to(STR("AB"), out, sizeof out, &n));
    assert_false(codec_b64url_decode_to(STR("AAB"), out, sizeof out, &n));
    assert_true(codec_b64url_decode_to(STR("AQ"), out, sizeof out, &n));
    assert_true(codec_b64url_decode_to(STR("AAE"), out, sizeof out, &n));
    assert_null(codec_b64url_decode(STR("AB"), &n));
}

static void test_decode_to_respects_capacity(void **state)
{
    unsigned char out[32];
    size_t n;
    (void)state;
    /* 43 digits = 32 bytes: a session cookie. */
    struct str cookie = STR("KWBM-Gxs9RsrPP9w2tRzYC9SklpH8m0Wj6vuNQy46oE");
    assert_true(codec_b64url_decode_to(cookie, out, 32, &n));
    assert_int_equal(n, 32);
    assert_false(codec_b64url_decode_to(cookie, out, 31, &n));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_length),
        cmocka_unit_test(test_known_values_and_padding),
        cmocka_unit_test(test_refuses_foreign_characters_at_every_offset),
        cmocka_unit_test(test_refuses_bad_lengths_and_non_canonical_bits),
        cmocka_unit_test(test_decode_to_respects_capacity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
