/* proxy/buf.c - growable I/O buffers (see buf.h). */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* A connection's buffers go back whenever it is idle: the sizes most
 * requests need (a read takes IO_READ_CHUNK, 16 KiB; a signed-in request's
 * upstream head, with the identity headers and the assertion, 2 KiB) wait in
 * per-thread caches, so taking, growing and dropping them on every idle/wake
 * cycle of a keep-alive connection costs no malloc and free. Each cache keeps
 * at most MEM_CACHE_MAX blocks: about 2 MiB per thread in all. */
#define BUF_FIRST_LOG 10 /* 1 KiB */
#define BUF_FIRST     ((size_t)1 << BUF_FIRST_LOG)
#define BUF_CACHED    5 /* 1, 2, 4, 8 and 16 KiB */
static __thread struct mem_cache bufs[BUF_CACHED];

/* The cache of blocks of cap bytes, or NULL. */
static struct mem_cache *cache_of(size_t cap)
{
    if (cap < BUF_FIRST || cap > BUF_FIRST << (BUF_CACHED - 1) || (cap & (cap - 1)) != 0) {
        return NULL;
    }
    return &bufs[__builtin_ctzll(cap) - BUF_FIRST_LOG];
}

void buf_reserve(struct buf *b, size_t n)
{
    if (b->off > 0 && b->off == b->len) {
        b->off = b->len = 0;
    }
    if (b->cap - b->len >= n) {
        return;
    }
    /* Compact first: pipelined or partially sent data keeps its order. */
    if (b->off > 0) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= n) {
            return;
        }
    }
    size_t cap = b->cap ? b->cap : BUF_FIRST;
    while (cap - b->len < n) {
        cap *= 2;
    }
    struct mem_cache *from = cache_of(b->cap), *to = cache_of(cap);
    if (to == NULL && from == NULL) {
        b->p = xrealloc(b->p, cap);
    } else {
        char *p = to ? mem_cache_get(to, cap) : xmalloc(cap);
        if (b->len > 0) {
            memcpy(p, b->p, b->len); /* off is 0: compacted above */
        }
        if (from) {
            mem_cache_put(from, b->p, b->cap);
        } else {
            free(b->p);
        }
        b->p = p;
    }
    b->cap = cap;
}

void buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0) {
        return;
    }
    buf_reserve(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

void buf_append_str(struct buf *b, struct str s)
{
    buf_append(b, s.p, s.len);
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    buf_reserve(b, 128);
    va_start(ap, fmt);
    n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        buf_reserve(b, (size_t)n + 1);
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            return;
        }
    }
    b->len += (size_t)n;
}

void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len) {
        b->off = b->len = 0;
    }
}

void buf_release(struct buf *b)
{
    if (buf_pending(b) == 0) {
        buf_free(b);
    }
}

void buf_free(struct buf *b)
{
    struct mem_cache *c = cache_of(b->cap);
    if (c) {
        mem_cache_put(c, b->p, b->cap);
    } else {
        free(b->p);
    }
    b->p = NULL;
    b->off = b->len = b->cap = 0;
}

void buf_append_cstr(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_append_u64(struct buf *b, uint64_t v)
{
    char tmp[STR_U64_MAX];
    buf_append_str(b, str_u64(tmp, v));
}

void buf_append_hex(struct buf *b, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[20];
    size_t i = sizeof tmp;

    do {
        tmp[--i] = digits[v & 15];
        v >>= 4;
    } while (v);
    buf_append(b, tmp + i, sizeof tmp - i);
}
