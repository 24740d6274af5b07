/* core/arena.c - block-chained bump allocator used per request. */
#include "arena.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mem.h"

/* A signed-in request (session strings, identity headers, the assertion)
 * needs about 5 KiB: one block holds it without a second malloc. An idle
 * keep-alive connection frees its arena, so this is per request in flight. */
#define ARENA_BLOCK 8192

struct block {
    struct block *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

struct deferred {
    struct deferred *next;
    arena_defer_fn *fn;
    void *arg;
};

struct arena {
    struct block *head; /* current block; older ones follow */
    struct deferred *defers;
    size_t cap, used;
};

/* The first block lives in the arena's own allocation, right after it. */
#define FIRST_OFF ((sizeof(struct arena) + 15) & ~(size_t)15)
#define FIRST(a)  ((struct block *)((char *)(a) + FIRST_OFF))

/* A keep-alive connection frees its arena whenever it goes idle and makes a
 * new one for its next request: the allocation comes from a per-thread cache. */
#define ARENA_ALLOC (FIRST_OFF + sizeof(struct block) + ARENA_BLOCK)
static __thread struct mem_cache cache;

static struct block *block_new(size_t size)
{
    struct block *b = xmalloc(sizeof *b + size);
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

struct arena *arena_new(size_t cap_bytes)
{
    struct arena *a = mem_cache_get(&cache, ARENA_ALLOC);

    a->head = FIRST(a);
    a->head->next = NULL;
    a->head->size = ARENA_BLOCK;
    a->head->used = 0;
    a->defers = NULL;
    a->cap = cap_bytes;
    a->used = 0;
    return a;
}

static void run_defers(struct arena *a)
{
    while (a->defers) {
        struct deferred *d = a->defers;
        a->defers = d->next;
        d->fn(d->arg);
    }
}

void arena_reset(struct arena *a)
{
    struct block *b;

    run_defers(a);
    /* Keep only the oldest (first allocated) block, which is the last in the chain. */
    b = a->head;
    while (b->next) {
        struct block *n = b->next;
        free(b);
        b = n;
    }
    b->used = 0;
    a->head = b;
    a->used = 0;
}

void arena_free(struct arena *a)
{
    if (!a) {
        return;
    }
    arena_reset(a);
    mem_cache_put(&cache, a, ARENA_ALLOC);
}

void *arena_alloc(struct arena *a, size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    struct block *b = a->head;

    if (need < n || (a->cap && a->used + need > a->cap)) {
        return NULL;
    }
    if (b->size - b->used < need) {
        size_t size = need > ARENA_BLOCK ? need : ARENA_BLOCK;
        b = block_new(size);
        b->next = a->head;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += need;
    a->used += need;
    return p;
}

void *arena_zalloc(struct arena *a, size_t n)
{
    void *p = arena_alloc(a, n);
    if (p) {
        memset(p, 0, n);
    }
    return p;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p) {
        if (n) {
            memcpy(p, s, n);
        }
        p[n] = '\0';
    }
    return p;
}

char *arena_strdup(struct arena *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}

char *arena_printf(struct arena *a, const char *fmt, ...)
{
    va_list ap;
    int n;
    char *p;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !(p = arena_alloc(a, (size_t)n + 1))) {
        return NULL;
    }
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

int arena_defer(struct arena *a, arena_defer_fn *fn, void *arg)
{
    struct deferred *d = arena_alloc(a, sizeof *d);
    if (!d) {
        return ERR_LIMIT;
    }
    d->fn = fn;
    d->arg = arg;
    d->next = a->defers;
    a->defers = d;
    return 0;
}

size_t arena_used(const struct arena *a)
{
    return a->used;
}
