/* authn/codec.c - base64url, form encoding, randomness and hashing used by
 * the OIDC, session, cookie and assertion code. Pure functions, no I/O. */
#include "codec.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "core/digest.h"

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_any(const unsigned char *in, size_t n, const char *alpha, bool pad)
{
    char *out = xmalloc(((n + 2) / 3) * 4 + 1);
    size_t o = 0;
    size_t i = 0;

    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        out[o++] = alpha[v >> 6 & 63];
        out[o++] = alpha[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        if (pad) {
            out[o++] = '=';
            out[o++] = '=';
        }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alpha[v >> 18 & 63];
        out[o++] = alpha[v >> 12 & 63];
        out[o++] = alpha[v >> 6 & 63];
        if (pad) {
            out[o++] = '=';
        }
    }
    out[o] = '\0';
    return out;
}

char *codec_b64url_encode(const unsigned char *in, size_t n)
{
    return b64_any(in, n, b64url_chars, false);
}

char *codec_b64_encode(const unsigned char *in, size_t n)
{
    return b64_any(in, n, b64_chars, true);
}

/* base64url digit values plus one: 0 marks anything that is not a digit. */
static const unsigned char b64url_vals[256] = {
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,  ['G'] = 7,  ['H'] = 8,
    ['I'] = 9,  ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15, ['P'] = 16,
    ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22, ['W'] = 23, ['X'] = 24,
    ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32,
    ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40,
    ['o'] = 41, ['p'] = 42, ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48,
    ['w'] = 49, ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
    ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['-'] = 63, ['_'] = 64,
};

bool codec_b64url_decode_to(struct str in, unsigned char *out, size_t cap, size_t *out_len)
{
    const unsigned char *p = (const unsigned char *)in.p;
    size_t n = in.len;

    while (n > 0 && p[n - 1] == '=') {
        n--;
    }
    size_t full = n / 4 * 4, rem = n - full;
    if (in.len - n > 2 || rem == 1 || full / 4 * 3 + (rem ? rem - 1 : 0) > cap) {
        return false;
    }
    size_t o = 0;
    /* Four digits make three bytes; every session cookie goes through here. */
    for (size_t i = 0; i < full; i += 4) {
        unsigned a = b64url_vals[p[i]], b = b64url_vals[p[i + 1]], c = b64url_vals[p[i + 2]],
                 d = b64url_vals[p[i + 3]];
        if (!a || !b || !c || !d) {
            return false;
        }
        uint32_t v = (a - 1) << 18 | (b - 1) << 12 | (c - 1) << 6 | (d - 1);
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    if (rem > 0) {
        unsigned a = b64url_vals[p[full]], b = b64url_vals[p[full + 1]],
                 c = rem == 3 ? b64url_vals[p[full + 2]] : 1;
        if (!a || !b || !c) {
            return false;
        }
        /* Non-canonical trailing bits would let two encodings name one value. */
        if (rem == 2) {
            uint32_t v = (a - 1) << 6 | (b - 1);
            if (v & 0xf) {
                return false;
            }
            out[o++] = (unsigned char)(v >> 4);
        } else {
            uint32_t v = (a - 1) << 12 | (b - 1) << 6 | (c - 1);
            if (v & 0x3) {
                return false;
            }
            out[o++] = (unsigned char)(v >> 10);
            out[o++] = (unsigned char)(v >> 2);
        }
    }
    *out_len = o;
    return true;
}

unsigned char *codec_b64url_decode(struct str in, size_t *out_len)
{
    size_t cap = in.len * 3 / 4 + 1;
    unsigned char *out = xmalloc(cap);

    if (!codec_b64url_decode_to(in, out, cap - 1, out_len)) {
        free(out);
        return NULL;
    }
    out[*out_len] = '\0';
    return out;
}

bool codec_rand_bytes(unsigned char *buf, size_t n)
{
    return RAND_bytes(buf, (int)n) == 1;
}

void codec_sha256(const void *p, size_t n, unsigned char out[32])
{
    const void *parts[] = { p };
    digest_sha256(parts, &n, 1, out);
}

void codec_buf_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n > 0) {
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
}

void codec_buf_adds(struct sbuf *b, const char *s)
{
    codec_buf_add(b, s, strlen(s));
}

void codec_buf_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) {
        abort();
    }
    codec_buf_add(b, s, (size_t)n);
    free(s);
}

void codec_buf_add_urlenc(struct sbuf *b, struct str s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            codec_buf_add(b, (const char *)&c, 1);
        } else {
            char e[3] = { '%', hex[c >> 4], hex[c & 15] };
            codec_buf_add(b, e, 3);
        }
    }
}

char *codec_buf_take(struct sbuf *b)
{
    if (b->p == NULL) {
        codec_buf_add(b, "", 0);
    }
    char *p = b->p;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

void codec_buf_fini(struct sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

char *codec_url_decode(struct str s, size_t *out_len)
{
    char *out = xmalloc(s.len + 1);
    size_t o = 0;

    for (size_t i = 0; i < s.len; i++) {
        char c = s.p[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (i + 2 >= s.len) {
                free(out);
                return NULL;
            }
            int h = hexval(s.p[i + 1]);
            int l = hexval(s.p[i + 2]);
            if (h < 0 || l < 0) {
                free(out);
                return NULL;
            }
            c = (char)(h << 4 | l);
            i += 2;
        }
        if (c == '\0') {
            free(out);
            return NULL;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    if (out_len != NULL) {
        *out_len = o;
    }
    return out;
}

bool codec_form_get(struct str form, const char *name, struct str *raw, bool *dup)
{
    size_t nlen = strlen(name);
    bool found = false;
    size_t i = 0;

    *dup = false;
    while (i <= form.len) {
        size_t j = i;
        while (j < form.len && form.p[j] != '&') {
            j++;
        }
        struct str part = { form.p + i, j - i };
        if (part.len >= nlen && memcmp(part.p, name, nlen) == 0 &&
            (part.len == nlen || part.p[nlen] == '=')) {
            if (found) {
                *dup = true;
            } else {
                found = true;
                raw->p = part.len == nlen ? part.p + nlen : part.p + nlen + 1;
                raw->len = part.len == nlen ? 0 : part.len - nlen - 1;
            }
        }
        i = j + 1;
    }
    return found;
}

char *codec_seal(const unsigned char key[32], const char *aad, const void *pt, size_t n)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    unsigned char *buf = xmalloc(12 + n + 16);
    char *out = NULL;
    int len = 0;
    int fin = 0;

    if (c == NULL || !codec_rand_bytes(buf, 12) ||
        EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, buf) != 1 ||
        EVP_EncryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
        EVP_EncryptUpdate(c, buf + 12, &len, pt, (int)n) != 1 ||
        EVP_EncryptFinal_ex(c, buf + 12 + len, &fin) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, buf + 12 + n) != 1) {
        goto out;
    }
    out = codec_b64url_encode(buf, 12 + n + 16);
out:
    EVP_CIPHER_CTX_free(c);
    OPENSSL_cleanse(buf, 12 + n + 16);
    free(buf);
    return out;
}

char *codec_unseal(const unsigned char key[32], const char *aad, struct str box, size_t *n)
{
    size_t rawlen = 0;
    unsigned char *raw = codec_b64url_decode(box, &rawlen);
    EVP_CIPHER_CTX *c = NULL;
    char *pt = NULL;
    int len = 0;
    int fin = 0;

    if (raw == NULL || rawlen < 12 + 16) {
        goto out;
    }
    size_t ctlen = rawlen - 28;
    pt = xmalloc(ctlen + 1);
    c = EVP_CIPHER_CTX_new();
    if (c == NULL || EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, raw) != 1 ||
        EVP_DecryptUpdate(c, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
        EVP_DecryptUpdate(c, (unsigned char *)pt, &len, raw + 12, (int)ctlen) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, raw + 12 + ctlen) != 1 ||
        EVP_DecryptFinal_ex(c, (unsigned char *)pt + len, &fin) != 1) {
        OPENSSL_cleanse(pt, ctlen + 1);
        free(pt);
        pt = NULL;
        goto out;
    }
    pt[ctlen] = '\0';
    if (n != NULL) {
        *n = ctlen;
    }
out:
    EVP_CIPHER_CTX_free(c);
    free(raw);
    return pt;
}

bool codec_ct_eq(struct str a, struct str b)
{
    if (a.len != b.len) {
        return false;
    }
    return CRYPTO_memcmp(a.p, b.p, a.len) == 0;
}
