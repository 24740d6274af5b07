/* core/arena.h - per-request bump allocator with a cap. Everything a request
 * needs (headers, claims, identity, policy input, decision record) lives here
 * and is released at once by arena_reset()/arena_free(). */
#ifndef GH_CORE_ARENA_H
#define GH_CORE_ARENA_H

#include <stddef.h>

#include "str.h"

struct arena;

typedef void arena_defer_fn(void *arg);

/* New arena that refuses to grow past cap_bytes (0 = unlimited). Aborts on OOM. */
struct arena *arena_new(size_t cap_bytes);
/* Frees everything, runs deferred cleanups. NULL is a no-op. */
void arena_free(struct arena *a);
/* Returns to empty (keeps the first block) for the next keep-alive request. */
void arena_reset(struct arena *a);
/* 16-byte aligned memory, or NULL when the cap would be exceeded. */
void *arena_alloc(struct arena *a, size_t n);
void *arena_zalloc(struct arena *a, size_t n);
/* NUL-terminated copy; NULL at the cap. */
char *arena_strndup(struct arena *a, const char *s, size_t n);
char *arena_strdup(struct arena *a, const char *s);
/* printf into the arena; NULL at the cap. */
char *arena_printf(struct arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Runs fn(arg) at reset/free, in reverse order of registration. Returns 0 or ERR_LIMIT. */
int arena_defer(struct arena *a, arena_defer_fn *fn, void *arg);
/* Bytes handed out since the last reset. */
size_t arena_used(const struct arena *a);

#endif
