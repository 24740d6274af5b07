/* proxy/worker.c - worker threads: one libev loop each, with its own
 * SO_REUSEPORT listening sockets (the kernel spreads connections, no accept
 * lock), its own balancers, upstream pools, access log and metrics slot. The
 * main thread hands over a reloaded config through an atomic pointer and an
 * ev_async; the worker adopts it for new requests while in-flight ones keep
 * the snapshot they started with. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "accesslog.h"
#include "fetch.h"
#include "io.h"
#include "metrics.h"

struct io_global io_g;

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
    static const char digits[] = "0123456789abcdef";
    uint64_t v[2] = { rng_next(w), rng_next(w) };

    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 16; i++) {
            out[k * 16 + i] = digits[(v[k] >> (60 - 4 * i)) & 15];
        }
    }
    out[32] = '\0';
}

int listen_socket(const char *host, uint16_t port, bool reuseport, struct err *err)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICHOST | AI_PASSIVE };
    struct addrinfo *ai = NULL;
    char ports[8];
    int fd, one = 1;

    snprintf(ports, sizeof ports, "%u", (unsigned)port);
    const char *h = host;
    char tmp[64];
    if (host[0] == '[') {
        size_t n = strcspn(host + 1, "]");
        snprintf(tmp, sizeof tmp, "%.*s", (int)n, host + 1);
        h = tmp;
    }
    if (getaddrinfo(h[0] ? h : NULL, ports, &hints, &ai) != 0 || !ai) {
        return -err_set(err, ERR_CONFIG, "cannot parse listen address %s", host);
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return -err_set(err, ERR_IO, "socket: %s", strerror(errno));
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)) {
        int e = errno;
        close(fd);
        freeaddrinfo(ai);
        return -err_set(err, ERR_IO, "cannot listen on %s:%u: %s %s", host, (unsigned)port,
                        reuseport ? "SO_REUSEADDR/SO_REUSEPORT:" : "SO_REUSEADDR:",
                        strerror(e));
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        freeaddrinfo(ai);
        return -err_set(err, ERR_IO, "cannot listen on %s:%u: %s", host, (unsigned)port,
                        strerror(e));
    }
    freeaddrinfo(ai);
    return fd;
}

/* ---- snapshots ---------------------------------------------------------- */

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

static struct wcfg *wcfg_new(struct worker *w, struct config *cfg, const struct wcfg *prev)
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
        wc->addr[i] = xcalloc(rc->upstream.nservers ? rc->upstream.nservers : 1,
                              sizeof *wc->addr[i]);
        wc->pools[i] = xcalloc(rc->upstream.nservers ? rc->upstream.nservers : 1,
                               sizeof *wc->pools[i]);
        for (size_t s = 0; s < rc->upstream.nservers; s++) {
            resolve(&wc->addr[i][s], &rc->upstream.servers[s]);
            wc->pools[i][s] = pool_for(w, &rc->upstream, &rc->upstream.servers[s]);
        }
    }
    health_start(w, wc);
    return wc;
}

static void wcfg_free(struct worker *w, struct wcfg *wc)
{
    health_stop(w, wc);
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

void worker_adopt(struct worker *w, struct config *cfg)
{
    struct wcfg *old = w->wc;

    w->wc = wcfg_new(w, cfg, old);
    if (old) {
        health_stop(w, old);
        old->next = w->retired;
        w->retired = old;
        wcfg_unref(w, old);
    }
    if (w->alog) {
        struct err e = { 0 };
        if (accesslog_reopen(w->alog, &e) != 0) {
            log_warn("accesslog", "%s", e.msg);
        }
    }
}

/* ---- events ------------------------------------------------------------- */

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct lsock *ls = (struct lsock *)io;
    struct worker *w = ls->w;

    (void)loop;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(ls->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                log_warn("listener", "accept: %s", strerror(errno));
            }
            return;
        }
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
            int one = 1;
            if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
                /* Only latency suffers: say so, and serve the connection. */
                log_debug("listener", "TCP_NODELAY: %s", strerror(errno));
            }
        }
        conn_accept(w, ls, fd, (struct sockaddr *)&ss);
    }
}

static size_t busy_conns(struct worker *w)
{
    size_t n = 0;
    for (struct conn *c = w->conns; c; c = c->next) {
        if (!c->ls->admin) {
            n++;
        }
    }
    return n;
}

static void start_drain(struct worker *w)
{
    if (w->draining) {
        return;
    }
    w->draining = true;
    /* Stop accepting: the kernel hands new connections to no one once every
     * worker closed its socket, and clients see a refused connection rather
     * than a hang. The admin listener stays for /readyz (503). */
    for (size_t i = 0; i < w->nls; i++) {
        if (!w->ls[i].admin && w->ls[i].fd >= 0) {
            ev_io_stop(w->loop, &w->ls[i].io);
            close(w->ls[i].fd);
            w->ls[i].fd = -1;
        }
    }
    pool_close_all(w);
    for (struct conn *c = w->conns, *n; c; c = n) {
        n = c->next;
        if (!c->ls->admin) {
            conn_drain(c);
        }
    }
}

static void wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    struct worker *w = (struct worker *)((char *)a - offsetof(struct worker, wake));
    struct config *next = atomic_exchange(&w->next_cfg, NULL);

    (void)loop;
    (void)revents;
    if (next) {
        worker_adopt(w, next);
    }
    if (atomic_load(&w->stop)) {
        start_drain(w);
        if (busy_conns(w) == 0) {
            ev_break(w->loop, EVBREAK_ALL);
        }
    }
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = (struct worker *)((char *)t - offsetof(struct worker, tick));

    (void)loop;
    (void)revents;
    if (w->alog) {
        accesslog_flush(w->alog);
    }
    if (w->draining && busy_conns(w) == 0) {
        ev_break(w->loop, EVBREAK_ALL);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    ev_run(w->loop, 0);

    /* Shutdown: whatever is left is past the drain deadline or idle. */
    for (struct conn *c = w->conns, *n; c; c = n) {
        n = c->next;
        conn_close(c);
    }
    pool_close_all(w);
    if (w->alog) {
        accesslog_flush(w->alog);
    }
    return NULL;
}

int worker_start(struct worker *w, struct config *cfg, struct err *err)
{
    sigset_t all, old;

    if (getrandom(w->rng, sizeof w->rng, 0) != (ssize_t)sizeof w->rng) {
        w->rng[0] = (uint64_t)time(NULL) ^ ((uint64_t)w->id << 32);
        w->rng[1] = (uint64_t)getpid() | 1u;
    }
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    if (!w->loop) {
        return err_set(err, ERR_IO, "cannot create event loop");
    }
    ev_set_userdata(w->loop, w);
    if (io_g.metrics) {
        w->mw = metrics_worker(io_g.metrics, w->id);
    }
    if (cfg->access_log) {
        w->alog = accesslog_new(cfg->access_log, err);
        if (!w->alog) {
            return err->code ? err->code : ERR_IO;
        }
    }
    w->fetch = fetcher_new(w->loop);
    w->wc = wcfg_new(w, cfg, NULL);
    for (size_t i = 0; i < w->nls; i++) {
        w->ls[i].w = w;
        ev_io_init(&w->ls[i].io, accept_cb, w->ls[i].fd, EV_READ);
        ev_io_start(w->loop, &w->ls[i].io);
    }
    ev_async_init(&w->wake, wake_cb);
    ev_async_start(w->loop, &w->wake);
    ev_timer_init(&w->tick, tick_cb, 1.0, 1.0);
    ev_timer_start(w->loop, &w->tick);

    /* Signals belong to the main thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&w->th, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        return err_set(err, ERR_IO, "cannot start worker thread: %s", strerror(rc));
    }
    return 0;
}
