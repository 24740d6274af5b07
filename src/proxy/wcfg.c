/* proxy/wcfg.c - what one worker keeps below both halves of its connections:
 * the config snapshot as the worker adopted it (balancers, resolved upstream
 * addresses, keep-alive pools; a worker-local reference count, so requests
 * keep the snapshot they started on), the loop's clock and request ids.
 * Calls nothing in conn.c, forward.c or worker.c. */
#include <assert.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

uint64_t worker_now_ms(struct worker *w)
{
    return (uint64_t)(ev_now(w->loop) * 1000.0);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoroshiro128+ seeded from getrandom(): request ids need to be unique and
 * unguessable enough for correlation, not secret. */
static uint64_t rng_next(struct worker *w)
{
    uint64_t s0 = w->rng[0], s1 = w->rng[1], r = s0 + s1;
    s1 ^= s0;
    w->rng[0] = rotl(s0, 24) ^ s1 ^ (s1 << 16);
    w->rng[1] = rotl(s1, 37);
    return r;
}

void worker_request_id(struct worker *w, char out[REQUEST_ID_LEN + 1])
{
    /* Big-endian bytes, spelled by the table of digit pairs: the same 32
     * digits as one nibble at a time, in a fifth of the instructions. */
    uint64_t v[2] = { __builtin_bswap64(rng_next(w)), __builtin_bswap64(rng_next(w)) };
    unsigned char b[16];

    memcpy(b, v, sizeof b);
    str_hex(b, sizeof b, out);
}

static struct pool *pool_for(struct worker *w, const struct upstream_conf *uc,
                             const struct upstream_server *sv)
{
    char key[3000];
    snprintf(key, sizeof key, "%s|%s|%s|%s", sv->url, uc->ca_file ? uc->ca_file : "",
             uc->client_cert ? uc->client_cert : "", uc->server_name ? uc->server_name : "");
    for (struct pool *p = w->pools; p; p = p->next) {
        if (strcmp(p->key, key) == 0) {
            return p;
        }
    }
    struct pool *p = xcalloc(1, sizeof *p);
    p->key = xstrdup(key);
    p->next = w->pools;
    w->pools = p;
    return p;
}

static void resolve(struct upaddr *ad, const struct upstream_server *sv)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *ai = NULL;
    char ports[8], host[256];

    snprintf(ports, sizeof ports, "%u", (unsigned)sv->port);
    if (strlen(sv->host) >= sizeof host) {
        /* config.c refuses such names; never resolve a truncated one. */
        log_warn("upstream", "cannot resolve %s: name too long", sv->host);
        ad->ok = false;
        return;
    }
    snprintf(host, sizeof host, "%s", sv->host);
    if (host[0] == '[') {
        size_t n = strcspn(host + 1, "]");
        memmove(host, host + 1, n);
        host[n] = '\0';
    }
    /* Names are resolved once per snapshot (at startup and reload), never on
     * the request path. */
    if (getaddrinfo(host, ports, &hints, &ai) != 0 || !ai) {
        log_warn("upstream", "cannot resolve %s", sv->host);
        ad->ok = false;
        return;
    }
    memcpy(&ad->sa, ai->ai_addr, ai->ai_addrlen);
    ad->salen = ai->ai_addrlen;
    ad->ok = true;
    freeaddrinfo(ai);
}

struct wcfg *wcfg_new(struct worker *w, struct config *cfg, const struct wcfg *prev)
{
    struct wcfg *wc = xcalloc(1, sizeof *wc);

    wc->cfg = cfg; /* takes the reference handed to the worker */
    wc->w = w;
    wc->refs = 1;
    wc->bal = xcalloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *wc->bal);
    wc->addr = xcalloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *wc->addr);
    wc->pools = xcalloc(cfg->nroutes ? cfg->nroutes : 1, sizeof *wc->pools);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct route_conf *rc = &cfg->routes[i];
        const struct balancer *pb = NULL;
        if (prev) {
            /* Health and failure state follow the route by name. */
            for (size_t k = 0; k < prev->cfg->nroutes; k++) {
                if (strcmp(prev->cfg->routes[k].name, rc->name) == 0) {
                    pb = prev->bal[k];
                }
            }
        }
        wc->bal[i] = balancer_new(&rc->upstream, pb);
        wc->addr[i] =
            xcalloc(rc->upstream.nservers ? rc->upstream.nservers : 1, sizeof *wc->addr[i]);
        wc->pools[i] =
            xcalloc(rc->upstream.nservers ? rc->upstream.nservers : 1, sizeof *wc->pools[i]);
        for (size_t s = 0; s < rc->upstream.nservers; s++) {
            resolve(&wc->addr[i][s], &rc->upstream.servers[s]);
            wc->pools[i][s] = pool_for(w, &rc->upstream, &rc->upstream.servers[s]);
        }
    }
    return wc;
}

static void wcfg_free(struct worker *w, struct wcfg *wc)
{
    /* The worker stops a snapshot's health checks (health.c) when it retires
     * it, before it drops its own reference: none runs on a freed one. */
    assert(!wc->health_on && !wc->health_last);
    for (size_t i = 0; i < wc->cfg->nroutes; i++) {
        balancer_free(wc->bal[i]);
        free(wc->addr[i]);
        free(wc->pools[i]);
    }
    free(wc->bal);
    free(wc->addr);
    free(wc->pools);
    config_unref(wc->cfg);
    free(wc);
}

void wcfg_unref(struct worker *w, struct wcfg *wc)
{
    if (!wc || --wc->refs > 0) {
        return;
    }
    for (struct wcfg **pp = &w->retired; *pp; pp = &(*pp)->next) {
        if (*pp == wc) {
            *pp = wc->next;
            break;
        }
    }
    wcfg_free(w, wc);
}
