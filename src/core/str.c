/* core/str.c - span helpers shared by every module. */
#include "str.h"

#include <string.h>

struct str str_from(const char *cstr)
{
    return cstr ? (struct str){ cstr, strlen(cstr) } : STR_NULL;
}

bool str_eq(struct str a, struct str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

bool str_ieq(struct str a, struct str b)
{
    if (a.len != b.len) {
        return false;
    }
    for (size_t i = 0; i < a.len; i++) {
        if (lower((unsigned char)a.p[i]) != lower((unsigned char)b.p[i])) {
            return false;
        }
    }
    return true;
}

bool str_eq_cstr(struct str a, const char *b)
{
    return str_eq(a, str_from(b));
}

bool str_ieq_cstr(struct str a, const char *b)
{
    return str_ieq(a, str_from(b));
}

bool str_has_prefix(struct str s, struct str prefix)
{
    return s.len >= prefix.len && (prefix.len == 0 || memcmp(s.p, prefix.p, prefix.len) == 0);
}

bool str_has_suffix(struct str s, struct str suffix)
{
    return s.len >= suffix.len &&
           (suffix.len == 0 || memcmp(s.p + s.len - suffix.len, suffix.p, suffix.len) == 0);
}

bool str_contains(struct str hay, struct str needle)
{
    if (needle.len == 0) {
        return true;
    }
    if (hay.len < needle.len) {
        return false;
    }
    return memmem(hay.p, hay.len, needle.p, needle.len) != NULL;
}

struct str str_trim(struct str s)
{
    while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) {
        s.p++;
        s.len--;
    }
    while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t')) {
        s.len--;
    }
    return s;
}

bool str_to_u64(struct str s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (s.len == 0 || s.len > 20) {
        return false;
    }
    for (size_t i = 0; i < s.len; i++) {
        unsigned d = (unsigned char)s.p[i] - '0';
        if (d > 9) {
            return false;
        }
        if (v > (UINT64_MAX - d) / 10) {
            return false;
        }
        v = v * 10 + d;
    }
    if (v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

unsigned str_edit_distance(const char *a, const char *b)
{
    unsigned row[65];
    size_t la = strlen(a), lb = strlen(b);

    if (la > 64 || lb > 64) {
        return 64;
    }
    for (size_t j = 0; j <= lb; j++) {
        row[j] = (unsigned)j;
    }
    for (size_t i = 1; i <= la; i++) {
        unsigned prev = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned cur = row[j];
            unsigned cost = a[i - 1] == b[j - 1] ? 0 : 1;
            unsigned best = prev + cost;
            if (row[j] + 1 < best) {
                best = row[j] + 1;
            }
            if (row[j - 1] + 1 < best) {
                best = row[j - 1] + 1;
            }
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

struct str str_u64(char buf[STR_U64_MAX], uint64_t v)
{
    size_t i = STR_U64_MAX;

    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return (struct str){ buf + i, STR_U64_MAX - i };
}

/* Both hex digits of every byte, so that a byte is spelled with one load and store
 * (each decision log record spells two SHA-256 hashes). */
#define HEXD(v) ((char)((v) < 10 ? '0' + (v) : 'a' + (v)-10))
#define HEX2(b)                                                                                    \
    {                                                                                              \
        HEXD((b) >> 4), HEXD((b)&15)                                                               \
    }
#define HEX4(b)  HEX2(b), HEX2((b) + 1), HEX2((b) + 2), HEX2((b) + 3)
#define HEX16(b) HEX4(b), HEX4((b) + 4), HEX4((b) + 8), HEX4((b) + 12)
#define HEX64(b) HEX16(b), HEX16((b) + 16), HEX16((b) + 32), HEX16((b) + 48)
static const char hex_pairs[256][2] = { HEX64(0), HEX64(64), HEX64(128), HEX64(192) };

void str_hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        memcpy(out + 2 * i, hex_pairs[in[i]], 2);
    }
    out[2 * n] = '\0';
}

uint64_t str_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t w;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) {
        h = (h ^ s[i]) * 0x100000001b3ull;
    }
    return h ^ h >> 32;
}
