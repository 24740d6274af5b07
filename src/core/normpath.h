/* core/normpath.h - the one normal form of a request path, computed once
 * before routing so that routing, policy, OPA, the decision log and the
 * upstream all see the same bytes (what Envoy calls normalize_path +
 * merge_slashes + an escaped-slash action). Pure functions, no allocation. */
#ifndef GH_CORE_NORMPATH_H
#define GH_CORE_NORMPATH_H

#include <stdbool.h>
#include <stddef.h>

/* Keep %2F and %5C as opaque bytes of their segment (uppercased) instead of
 * refusing them; the caller then decides per route (encoded_slashes: pass). */
#define NORMPATH_KEEP_ENCODED_SLASH 1u

enum normpath_rc {
    NORMPATH_OK = 0,
    NORMPATH_NOT_ABSOLUTE,  /* does not start with '/' */
    NORMPATH_BAD_ESCAPE,    /* '%' not followed by two hex digits */
    NORMPATH_ENCODED_SLASH, /* %2F or %5C without NORMPATH_KEEP_ENCODED_SLASH */
    NORMPATH_CONTROL,       /* NUL, another control byte or DEL, sent raw or encoded */
    NORMPATH_BACKSLASH,     /* a raw '\' (a separator for some backends) */
    NORMPATH_NON_ASCII,     /* a raw byte >= 0x80 (must be percent-encoded) */
    NORMPATH_ABOVE_ROOT,    /* a ".." segment would climb above "/" */
    NORMPATH_DOT_PARAMS,    /* "." or ".." with ";params" (Tomcat reads "..;x" as "..") */
};

/* Normalises the path in[0..len) (no query) into out, which has room for at
 * least len bytes (the result is never longer than the input):
 *   - %XX of an unreserved character (ALPHA DIGIT - . _ ~) is decoded; every
 *     other escape stays, with upper-case hex digits; %25 is never decoded
 *     twice;
 *   - "." and ".." segments are removed as in RFC 3986 §5.2.4, after decoding
 *     (so "%2e%2E" is ".."); a ".." that would climb above the root refuses;
 *   - repeated slashes are merged; a trailing slash is kept;
 *   - ";params" stay part of their segment ("/a;x/../b" is "/b").
 * On success returns NORMPATH_OK with *out_len set and *encoded_slash telling
 * whether the input held a %2F or %5C (only with NORMPATH_KEEP_ENCODED_SLASH;
 * also one in a segment that a later ".." removed).
 * The output is its own normal form: normalising it again gives it back. */
enum normpath_rc normpath(const char *in, size_t len, char *out, unsigned flags, size_t *out_len,
                          bool *encoded_slash);

/* A short, non-secret reason for a refusal ("encoded slash in path"). */
const char *normpath_reason(enum normpath_rc rc);

/* Folds a normalised path to ASCII lower case in place, leaving the hex
 * digits of %XX escapes upper case (the case-insensitive route matcher). */
void normpath_fold_case(char *p, size_t len);

/* True when a byte follows a path prefix on a segment boundary: '/' or the
 * ';' that starts a segment's parameters ("/admin;x" is under "/admin"). */
static inline bool normpath_is_boundary(char c)
{
    return c == '/' || c == ';';
}

#endif
