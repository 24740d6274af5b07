/* proxy/buf.h - growable byte buffers for connection I/O. A buffer holds
 * unread/unsent bytes in [off, len); memory is allocated on first use and
 * released with buf_release() when a connection goes idle, so an idle
 * keep-alive connection costs no buffer memory (nginx-style). */
#ifndef GH_PROXY_BUF_H
#define GH_PROXY_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../core/core.h"

struct buf {
    char *p;
    size_t off; /* first unconsumed byte */
    size_t len; /* end of data */
    size_t cap;
};

/* Bytes waiting in b. */
static inline size_t buf_pending(const struct buf *b)
{
    return b->len - b->off;
}

/* Makes room for at least n more bytes at the end (compacting or growing). */
void buf_reserve(struct buf *b, size_t n);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_append_str(struct buf *b, struct str s);
void buf_printf(struct buf *b, const char *fmt, ...) PRINTF(2, 3);
/* Hot-path helpers (no format parsing): a C string, a decimal, a hex number. */
void buf_append_cstr(struct buf *b, const char *s);
void buf_append_u64(struct buf *b, uint64_t v);
void buf_append_hex(struct buf *b, uint64_t v);
/* Marks n bytes as consumed; when empty, rewinds to the start. */
void buf_consume(struct buf *b, size_t n);
/* Frees the memory when nothing is pending (idle connection). */
void buf_release(struct buf *b);
/* Frees unconditionally. */
void buf_free(struct buf *b);

#endif
