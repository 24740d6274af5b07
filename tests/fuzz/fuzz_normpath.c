/* Fuzz target for the request path's normal form (core/normpath.c): the path
 * comes from the client and decides the route and the policy. Input: the path
 * bytes. Invariants: the output is never longer than the input, starts with
 * '/', holds no "//", "." or ".." segment, no raw byte outside printable ASCII,
 * no '\', only upper-case escapes of characters that are not unreserved; it
 * is its own normal form (normalising it again gives the same bytes); with
 * encoded slashes refused, the answer is the kept-slash answer unless one was
 * kept. Replays corpus/normpath/ under gcc; libFuzzer target with
 * -Dfuzzing=true. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/normpath.h"
#include "replay.h"

static bool upper_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static int hexval(char c)
{
    return c <= '9' ? c - '0' : c - 'A' + 10;
}

static void check_normal(const char *o, size_t n)
{
    CHECK(n >= 1 && o[0] == '/');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)o[i];
        CHECK(c > 0x20 && c < 0x7f && c != '\\');
        if (c == '%') {
            CHECK(i + 2 < n && upper_hex(o[i + 1]) && upper_hex(o[i + 2]));
            int v = hexval(o[i + 1]) * 16 + hexval(o[i + 2]);
            CHECK(!((v >= 'a' && v <= 'z') || (v >= 'A' && v <= 'Z') || (v >= '0' && v <= '9') ||
                    v == '-' || v == '.' || v == '_' || v == '~'));
            CHECK(v >= 0x20 && v != 0x7f);
        }
        if (c == '/') {
            /* The segment after this slash: never empty (but at the end), ".", "..". */
            size_t e = i + 1;
            while (e < n && o[e] != '/') {
                e++;
            }
            size_t len = e - (i + 1);
            CHECK(len > 0 || e == n);
            CHECK(!(len == 1 && o[i + 1] == '.'));
            CHECK(!(len == 2 && o[i + 1] == '.' && o[i + 2] == '.'));
            CHECK(!(len >= 2 && o[i + 1] == '.' && o[i + 2] == ';'));
            CHECK(!(len >= 3 && o[i + 1] == '.' && o[i + 2] == '.' && o[i + 3] == ';'));
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    char *out = malloc(size ? size : 1), *again = malloc(size ? size : 1);
    char *strict = malloc(size ? size : 1);
    size_t n = 0, n2 = 0, n3 = 0;
    bool enc = false, enc2 = true, enc3 = true;

    CHECK(out && again && strict);
    enum normpath_rc rc = normpath(in, size, out, NORMPATH_KEEP_ENCODED_SLASH, &n, &enc);
    enum normpath_rc rs = normpath(in, size, strict, 0, &n3, &enc3);
    if (rc != NORMPATH_OK) {
        CHECK(n == 0 && !enc);
        CHECK(rs != NORMPATH_OK); /* the first problem found may differ */
        CHECK(normpath_reason(rc)[0] != '\0');
        goto out;
    }
    CHECK(n <= size);
    check_normal(out, n);
    /* Kept slashes are reported (also one in a segment that ".." removed). */
    bool kept = memmem(out, n, "%2F", 3) != NULL || memmem(out, n, "%5C", 3) != NULL;
    CHECK(!kept || enc);
    /* Idempotent. */
    CHECK(normpath(out, n, again, NORMPATH_KEEP_ENCODED_SLASH, &n2, &enc2) == NORMPATH_OK);
    CHECK(n2 == n && memcmp(again, out, n) == 0 && enc2 == kept);
    /* Refusing encoded slashes changes nothing else. */
    if (enc) {
        CHECK(rs == NORMPATH_ENCODED_SLASH);
    } else {
        CHECK(rs == NORMPATH_OK && n3 == n && memcmp(strict, out, n) == 0 && !enc3);
    }
    /* Case folding keeps the form and is idempotent. */
    memcpy(again, out, n);
    normpath_fold_case(again, n);
    check_normal(again, n);
    CHECK(normpath(again, n, strict, NORMPATH_KEEP_ENCODED_SLASH, &n3, &enc3) == NORMPATH_OK);
    CHECK(n3 == n && memcmp(strict, again, n) == 0);
    for (size_t i = 0; i < n; i++) {
        CHECK(!(again[i] >= 'a' && again[i] <= 'z') || out[i] == again[i] ||
              out[i] == again[i] - 32);
    }
out:
    free(out);
    free(again);
    free(strict);
    return 0;
}
