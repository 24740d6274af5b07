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

int listen_socket(const char *host, uint16_t port, bool reuseport, struct err *err)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
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
                        reuseport ? "SO_REUSEADDR/SO_REUSEPORT:" : "SO_REUSEADDR:", strerror(e));
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

void worker_adopt(struct worker *w, struct config *cfg)
{
    struct wcfg *old = w->wc;

    w->wc = wcfg_new(w, cfg, old);
    health_start(w, w->wc);
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
    health_start(w, w->wc);
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
