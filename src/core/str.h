/* core/str.h - string spans and checked number parsing. A span does not own
 * its bytes and is not NUL-terminated unless said so. */
#ifndef GH_CORE_STR_H
#define GH_CORE_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct str {
    const char *p;
    size_t len;
};

#define STR(lit) ((struct str){ (lit), sizeof(lit) - 1 })
#define STR_NULL ((struct str){ NULL, 0 })

struct str str_from(const char *cstr); /* cstr may be NULL */
bool str_eq(struct str a, struct str b);
bool str_ieq(struct str a, struct str b); /* ASCII case-insensitive */
bool str_eq_cstr(struct str a, const char *b);
bool str_ieq_cstr(struct str a, const char *b);
bool str_has_prefix(struct str s, struct str prefix);
bool str_has_suffix(struct str s, struct str suffix);
bool str_contains(struct str hay, struct str needle);
struct str str_trim(struct str s); /* strips SP and HTAB at both ends */
/* Parses an unsigned decimal in [min, max]; no sign, no spaces. Returns false on error. */
bool str_to_u64(struct str s, uint64_t min, uint64_t max, uint64_t *out);
/* Levenshtein distance, capped at 64-byte inputs (for "did you mean"). */
unsigned str_edit_distance(const char *a, const char *b);
/* Decimal digits of v written at the end of buf[STR_U64_MAX]; returns a span
 * over them (no NUL). For hot paths that must not go through printf. */
#define STR_U64_MAX 20
struct str str_u64(char buf[STR_U64_MAX], uint64_t v);
/* Lower-case hex of n bytes into out (2n+1 bytes). */
void str_hex(const unsigned char *in, size_t n, char *out);
/* A fast 64-bit hash of n bytes, continuing from h (start with STR_HASH_SEED),
 * eight bytes a step. For picking cache slots, not a digest: callers compare
 * the keys themselves. */
#define STR_HASH_SEED 14695981039346656037ull
uint64_t str_hash(uint64_t h, const void *p, size_t n);

#endif
