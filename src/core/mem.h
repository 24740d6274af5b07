/* core/mem.h - process-lifetime allocations that abort on OOM (no NULL checks). */
#ifndef GH_CORE_MEM_H
#define GH_CORE_MEM_H

#include <stdbool.h>
#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A per-thread stack of freed blocks of one size. Memory a keep-alive
 * connection gives back whenever it goes idle (its request arena, its parser's
 * header table) is taken from here for its next request instead of malloc.
 * Declare one `static __thread struct mem_cache c;` per kind of block: it
 * keeps at most MEM_CACHE_MAX blocks, of the size first put, and is emptied
 * when the thread exits. Off under AddressSanitizer (every get is a malloc).
 * 64: one turn of the event loop often ends (and the next wakes) dozens of
 * keep-alive requests at once; with 12, most of a busy loop's blocks still
 * went back to malloc and came out again on every turn. */
#define MEM_CACHE_MAX 64

struct mem_cache {
    void *head; /* private */
    size_t size;
    unsigned n;
    bool registered;
    struct mem_cache *next;
};

/* A block of size bytes (aborts on OOM). */
void *mem_cache_get(struct mem_cache *c, size_t size);
/* Gives back p, a block of size bytes from mem_cache_get (NULL is a no-op). */
void mem_cache_put(struct mem_cache *c, void *p, size_t size);

#endif
