/* core/normpath.c - the request path's normal form (see normpath.h). One pass
 * over the input, segment by segment; the output is written behind a cursor
 * that never overtakes the input, and always ends with '/' between segments,
 * so a ".." only has to step back to the previous '/'. */
#include "normpath.h"

#include <string.h>

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static const char HEX[] = "0123456789ABCDEF";

/* Decodes the segment in[0..n) (no '/') into out; returns its length or -rc. */
static long decode_segment(const char *in, size_t n, char *out, unsigned flags, bool *enc_slash)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '%') {
            if (n - i < 3) {
                return -(long)NORMPATH_BAD_ESCAPE;
            }
            int h1 = hexval((unsigned char)in[i + 1]), h2 = hexval((unsigned char)in[i + 2]);
            if (h1 < 0 || h2 < 0) {
                return -(long)NORMPATH_BAD_ESCAPE;
            }
            unsigned char v = (unsigned char)(h1 * 16 + h2);
            i += 2;
            if (unreserved(v)) {
                out[w++] = (char)v;
                continue;
            }
            if (v < 0x20 || v == 0x7f) {
                return -(long)NORMPATH_CONTROL;
            }
            if ((v == '/' || v == '\\') && !(flags & NORMPATH_KEEP_ENCODED_SLASH)) {
                return -(long)NORMPATH_ENCODED_SLASH;
            }
            if (v == '/' || v == '\\') {
                *enc_slash = true;
            }
            out[w++] = '%';
            out[w++] = HEX[v >> 4];
            out[w++] = HEX[v & 15];
            continue;
        }
        if (c <= 0x20 || c == 0x7f) {
            return -(long)NORMPATH_CONTROL;
        }
        if (c == '\\') {
            return -(long)NORMPATH_BACKSLASH;
        }
        if (c >= 0x80) {
            return -(long)NORMPATH_NON_ASCII;
        }
        out[w++] = (char)c;
    }
    return (long)w;
}

enum normpath_rc normpath(const char *in, size_t len, char *out, unsigned flags, size_t *out_len,
                          bool *encoded_slash)
{
    size_t w = 1, i = 1;
    bool enc = false;

    *out_len = 0;
    if (encoded_slash) {
        *encoded_slash = false;
    }
    if (len == 0 || in[0] != '/') {
        return NORMPATH_NOT_ABSOLUTE;
    }
    out[0] = '/';
    /* Invariant: out[0..w) ends with '/'; w <= i. */
    while (i <= len) {
        size_t s = i;
        while (i < len && in[i] != '/') {
            i++;
        }
        bool last = i >= len;
        long k = decode_segment(in + s, i - s, out + w, flags, &enc);
        if (k < 0) {
            return (enum normpath_rc)(-k);
        }
        const char *seg = out + w;
        size_t n = (size_t)k;
        /* The segment's name before any ";params". */
        const char *semi = memchr(seg, ';', n);
        size_t name = semi ? (size_t)(semi - seg) : n;
        bool dot = name == 1 && seg[0] == '.';
        bool dotdot = name == 2 && seg[0] == '.' && seg[1] == '.';
        if ((dot || dotdot) && semi) {
            return NORMPATH_DOT_PARAMS;
        }
        if (dotdot) {
            if (w == 1) {
                return NORMPATH_ABOVE_ROOT;
            }
            w--; /* the '/' after the previous segment */
            while (out[w - 1] != '/') {
                w--;
            }
        } else if (n > 0 && !dot) {
            w += n;
            if (!last) {
                out[w++] = '/';
            }
        }
        i++; /* past the '/' (or the end) */
    }
    *out_len = w;
    if (encoded_slash) {
        *encoded_slash = enc;
    }
    return NORMPATH_OK;
}

const char *normpath_reason(enum normpath_rc rc)
{
    switch (rc) {
    case NORMPATH_OK:
        return "ok";
    case NORMPATH_NOT_ABSOLUTE:
        return "request path does not start with /";
    case NORMPATH_BAD_ESCAPE:
        return "invalid percent-encoding in path";
    case NORMPATH_ENCODED_SLASH:
        return "encoded slash or backslash in path";
    case NORMPATH_CONTROL:
        return "control character in path";
    case NORMPATH_BACKSLASH:
        return "backslash in path";
    case NORMPATH_NON_ASCII:
        return "non-ASCII byte in path";
    case NORMPATH_ABOVE_ROOT:
        return "path climbs above the root";
    case NORMPATH_DOT_PARAMS:
        return "dot segment with parameters in path";
    }
    return "invalid path";
}

void normpath_fold_case(char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '%' && i + 2 < len) {
            i += 2;
        } else if (p[i] >= 'A' && p[i] <= 'Z') {
            p[i] = (char)(p[i] - 'A' + 'a');
        }
    }
}
