/* authn/codec.h - small encoders shared inside src/authn: base64url, form
 * encoding, random bytes, SHA-256. Private to this directory. */
#ifndef GH_AUTHN_CODEC_H
#define GH_AUTHN_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "core/core.h"

/* Unpadded base64url of n bytes. Caller frees with free(). */
char *codec_b64url_encode(const unsigned char *in, size_t n);
/* Decodes unpadded (or padded) base64url; rejects any other character.
 * Returns malloc'd bytes (NUL-terminated for convenience) or NULL. */
unsigned char *codec_b64url_decode(struct str in, size_t *out_len);
/* The same into out (at most cap bytes, no terminator): false when in is not
 * canonical base64url or does not fit. */
bool codec_b64url_decode_to(struct str in, unsigned char *out, size_t cap, size_t *out_len);
/* Standard padded base64 (for HTTP Basic). Caller frees with free(). */
char *codec_b64_encode(const unsigned char *in, size_t n);
/* Fills buf with n bytes from the OpenSSL CSPRNG; returns false on failure. */
bool codec_rand_bytes(unsigned char *buf, size_t n) WARN_UNUSED;
/* SHA-256 of s into out[32]. */
void codec_sha256(const void *p, size_t n, unsigned char out[32]);

/* A growing byte buffer (heap, aborts on OOM). */
struct sbuf {
    char *p;
    size_t len, cap;
};
void codec_buf_add(struct sbuf *b, const char *s, size_t n);
void codec_buf_adds(struct sbuf *b, const char *s);
void codec_buf_printf(struct sbuf *b, const char *fmt, ...) PRINTF(2, 3);
/* Appends s percent-encoded for application/x-www-form-urlencoded and query
 * strings: only ALPHA DIGIT - . _ ~ stay as they are. */
void codec_buf_add_urlenc(struct sbuf *b, struct str s);
/* Returns the NUL-terminated buffer (ownership moves to the caller) and resets b. */
char *codec_buf_take(struct sbuf *b);
void codec_buf_fini(struct sbuf *b);

/* Decodes %XX and '+' (form encoding) of s into a malloc'd NUL-terminated
 * string. Returns NULL on a malformed escape or an embedded NUL. */
char *codec_url_decode(struct str s, size_t *out_len);
/* Finds the first value of name in a query or form string "a=1&b=2" (raw, still
 * encoded). Sets *dup when name occurs more than once. */
bool codec_form_get(struct str form, const char *name, struct str *raw, bool *dup);

/* AES-256-GCM sealing: base64url(iv[12] || ciphertext || tag[16]), bound to
 * aad (a purpose label, so a blob sealed for one use never opens as another).
 * codec_unseal returns malloc'd plaintext (NUL-terminated) or NULL when the blob
 * was altered, truncated, or sealed with another key or label. */
char *codec_seal(const unsigned char key[32], const char *aad, const void *pt, size_t n);
char *codec_unseal(const unsigned char key[32], const char *aad, struct str box, size_t *n);
/* Constant-time equality of two spans (length leaks, content does not). */
bool codec_ct_eq(struct str a, struct str b);

#endif
