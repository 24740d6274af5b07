/* core/mem.c - aborting allocators for process-lifetime state. */
#include "mem.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(void)
{
    fputs("gatehouse: out of memory\n", stderr);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        oom();
    }
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        oom();
    }
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        oom();
    }
    return p;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *p = NULL;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0) {
        oom();
    }
    return p;
}

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CACHE_ON 0
#endif
#endif
#ifndef CACHE_ON
#define CACHE_ON 1
#endif

/* A thread's caches, for the destructor of caches_key. */
static __thread struct mem_cache *caches;
static pthread_key_t caches_key;
static pthread_once_t caches_once = PTHREAD_ONCE_INIT;

static void caches_drain(void *unused)
{
    (void)unused;
    for (struct mem_cache *c = caches; c; c = c->next) {
        while (c->head) {
            void *p = c->head;
            memcpy(&c->head, p, sizeof c->head);
            free(p);
        }
        c->n = 0;
    }
}

static void caches_init(void)
{
    (void)pthread_key_create(&caches_key, caches_drain);
}

void *mem_cache_get(struct mem_cache *c, size_t size)
{
    void *p = c->head;
    if (p && size == c->size) {
        memcpy(&c->head, p, sizeof c->head);
        c->n--;
        return p;
    }
    return xmalloc(size < sizeof(void *) ? sizeof(void *) : size);
}

void mem_cache_put(struct mem_cache *c, void *p, size_t size)
{
    if (!p) {
        return;
    }
    if (c->n == 0) {
        c->size = size;
    }
    if (!CACHE_ON || size != c->size || c->n >= MEM_CACHE_MAX) {
        free(p);
        return;
    }
    if (!c->registered) {
        /* The key's value only has to be non-NULL for the destructor to run. */
        pthread_once(&caches_once, caches_init);
        (void)pthread_setspecific(caches_key, c);
        c->next = caches;
        caches = c;
        c->registered = true;
    }
    memcpy(p, &c->head, sizeof c->head);
    c->head = p;
    c->n++;
}
