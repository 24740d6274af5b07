/* proxy/serve.c - `gatehouse serve -c FILE`: loads the config, binds every
 * worker's SO_REUSEPORT sockets (so a bad address fails at startup, exit 1),
 * starts one worker per core, then the main thread only handles signals:
 * SIGHUP reloads (a config that fails validation is refused and the running
 * one stays; listener changes need a restart), so does an edited route policy
 * file (polled every second); certificates, keys, client CA and CRL whose
 * content changed are reloaded on SIGHUP and within two seconds without one
 * (a set that does not load keeps the old), SIGTERM/SIGINT drains:
 * listeners close, in-flight requests get timeouts.drain to finish, exit 0. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "access/access.h"
#include "io.h"
#include "metrics.h"
#include "proxy.h"

static const char serve_usage[] =
    "usage: gatehouse serve -c gatehouse.yaml [--log-level debug|info|warn|error]\n";

static bool same_listeners(const struct config *a, const struct config *b)
{
    if (a->nlisteners != b->nlisteners) {
        return false;
    }
    for (size_t i = 0; i < a->nlisteners; i++) {
        const struct listener_conf *x = &a->listeners[i], *y = &b->listeners[i];
        if (strcmp(x->host, y->host) != 0 || x->port != y->port || x->tls != y->tls ||
            x->ncerts != y->ncerts || x->client_cert != y->client_cert ||
            x->verify_depth != y->verify_depth || x->nsan_patterns != y->nsan_patterns) {
            return false;
        }
        for (size_t k = 0; k < x->nsan_patterns; k++) {
            if (strcmp(x->san_patterns[k], y->san_patterns[k]) != 0) {
                return false;
            }
        }
        for (size_t k = 0; k < x->ncerts; k++) {
            if (strcmp(x->certs[k].cert_file, y->certs[k].cert_file) != 0 ||
                strcmp(x->certs[k].key_file, y->certs[k].key_file) != 0) {
                return false;
            }
        }
    }
    if ((a->admin_address == NULL) != (b->admin_address == NULL)) {
        return false;
    }
    if (a->admin_address &&
        (strcmp(a->admin_host, b->admin_host) != 0 || a->admin_port != b->admin_port)) {
        return false;
    }
    return a->workers == b->workers;
}

/* Which policy files the routes name (their paths, in route order). */
static uint64_t policy_files_named(const struct config *cfg)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const char *f = cfg->routes[i].policy_file;
        for (; f && *f; f++) {
            h = (h ^ (unsigned char)*f) * 1099511628211ULL;
        }
        h = (h ^ 0xff) * 1099511628211ULL;
    }
    return h;
}

/* A fingerprint of every route's policy file (inode, size, mtime; a missing file
 * counts too): when it changes, the main thread reloads as on SIGHUP, so an edited
 * policy takes effect without a signal (and one that fails validation is refused). */
static uint64_t policy_files_stamp(const struct config *cfg)
{
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < cfg->nroutes; i++) {
        const char *f = cfg->routes[i].policy_file;
        struct stat st;
        uint64_t v[4] = { 0 };
        if (!f) {
            continue;
        }
        if (stat(f, &st) == 0) {
            v[0] = (uint64_t)st.st_ino;
            v[1] = (uint64_t)st.st_size;
            v[2] = (uint64_t)st.st_mtim.tv_sec;
            v[3] = (uint64_t)st.st_mtim.tv_nsec;
        }
        for (size_t k = 0; k < 4; k++) {
            h = (h ^ v[k]) * 1099511628211ULL;
        }
    }
    return h;
}

static struct config *reload(struct config *cur)
{
    struct conf_diag d = { 0 };
    struct config *next = config_load(cur->file, &d);

    if (!next) {
        for (size_t i = 0; i < d.stored; i++) {
            log_error("reload", "%s", d.msgs[i]);
        }
        log_error("reload", "configuration %s refused; still serving the previous one", cur->file);
        metrics_reload(io_g.metrics, false);
        conf_diag_fini(&d);
        return cur;
    }
    conf_diag_fini(&d);
    if (!same_listeners(cur, next)) {
        log_error("reload",
                  "listen changes need a restart (listen, admin, tls certificates, "
                  "workers); configuration %s refused, still serving the previous one",
                  cur->file);
        metrics_reload(io_g.metrics, false);
        config_unref(next);
        return cur;
    }
    metrics_bind_config(io_g.metrics, next);
    for (unsigned i = 0; i < io_g.nworkers; i++) {
        struct worker *w = &io_g.workers[i];
        struct config *old = atomic_exchange(&w->next_cfg, config_ref(next));
        config_unref(old);
        ev_async_send(w->loop, &w->wake);
    }
    metrics_reload(io_g.metrics, true);
    log_info("reload", "configuration %s loaded: %zu routes", next->file, next->nroutes);
    config_unref(cur);
    return next;
}

static void drain(struct config *cfg)
{
    struct timespec deadline;
    uint64_t ms = cfg->timeouts.drain_ms ? cfg->timeouts.drain_ms : 30000;

    log_info("serve", "draining: no new connections, %llu ms for in-flight requests",
             (unsigned long long)ms);
    atomic_store(&io_g.draining, true);
    for (unsigned i = 0; i < io_g.nworkers; i++) {
        atomic_store(&io_g.workers[i].stop, true);
        ev_async_send(io_g.workers[i].loop, &io_g.workers[i].wake);
    }
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)(ms / 1000);
    deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    for (unsigned i = 0; i < io_g.nworkers; i++) {
        if (pthread_timedjoin_np(io_g.workers[i].th, NULL, &deadline) != 0) {
            log_warn("serve", "drain timeout: closing the remaining connections");
            return;
        }
    }
    log_info("serve", "drained");
}

int proxy_cmd_serve(int argc, char **argv)
{
    const char *file = NULL, *level = NULL;
    struct conf_diag d = { 0 };
    struct config *cfg;
    struct err err = { 0 };
    sigset_t sigs;

    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            file = argv[++i];
        } else if (!strcmp(argv[i], "--log-level") && i + 1 < argc) {
            level = argv[++i];
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(serve_usage, stdout);
            return 0;
        } else {
            fprintf(stderr, "gatehouse serve: unexpected argument \"%s\"\n%s", argv[i],
                    serve_usage);
            return 2;
        }
    }
    if (!file) {
        fputs(serve_usage, stderr);
        return 2;
    }
    if (level && log_level_parse(level) < 0) {
        fprintf(stderr, "gatehouse serve: unknown log level \"%s\"\n%s", level, serve_usage);
        return 2;
    }
    cfg = config_load(file, &d);
    if (!cfg) {
        conf_diag_print(&d, stderr);
        conf_diag_fini(&d);
        return 1;
    }
    conf_diag_fini(&d);
    /* Sessions, the assertion key, the decision log and the sign-in pages:
     * opened once, before any worker serves. */
    metrics_provider_add(tls_expiry_render); /* after the data-path series */
    /* The two halves of a connection meet through struct upstream_half; the
     * admin listener's endpoints are a handler of the connection layer. */
    conn_upstream_install(&forward_half);
    conn_admin_install(admin_handle);
    if (access_start(cfg, &err) != 0) {
        fprintf(stderr, "gatehouse: %s\n", err.msg);
        return 1;
    }
    if (level) {
        log_set_level((enum log_level)log_level_parse(level));
    } else if (cfg->log_level && log_level_parse(cfg->log_level) >= 0) {
        log_set_level((enum log_level)log_level_parse(cfg->log_level));
    }

    /* Signals are handled synchronously by this thread; workers inherit the
     * blocked mask. A peer closing mid-write must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    unsigned nw = cfg->workers ? cfg->workers : 1;
    io_g.nworkers = nw;
    io_g.workers = xcalloc(nw, sizeof *io_g.workers);
    io_g.metrics = metrics_new(nw);
    metrics_bind_config(io_g.metrics, cfg);

    size_t bad = 0;
    if (tls_listeners_start(cfg, &err, &bad) != 0) {
        fprintf(stderr, "%s:%d:%d: error: %s\n", cfg->file, cfg->listeners[bad].line,
                cfg->listeners[bad].col, err.msg);
        return 1;
    }
    /* SO_REUSEPORT would let a second Gatehouse (or anything else with the
     * option) share a port and silently take half the connections: bind each
     * address once without it first, so a port in use is a clear error. */
    for (size_t k = 0; k < cfg->nlisteners; k++) {
        const struct listener_conf *lc = &cfg->listeners[k];
        int probe = listen_socket(lc->host, lc->port, false, &err);
        if (probe < 0) {
            fprintf(stderr, "%s:%d:%d: error: %s\n", cfg->file, lc->line, lc->col, err.msg);
            return 1;
        }
        close(probe);
    }
    int admin_fd = -1;
    if (cfg->admin_address) {
        admin_fd = listen_socket(cfg->admin_host, cfg->admin_port, false, &err);
        if (admin_fd < 0) {
            fprintf(stderr, "gatehouse: %s\n", err.msg);
            return 1;
        }
    }
    for (unsigned i = 0; i < nw; i++) {
        struct worker *w = &io_g.workers[i];
        w->id = i;
        w->nls = cfg->nlisteners + (i == 0 && admin_fd >= 0 ? 1 : 0);
        w->ls = xcalloc(w->nls ? w->nls : 1, sizeof *w->ls);
        for (size_t k = 0; k < cfg->nlisteners; k++) {
            const struct listener_conf *lc = &cfg->listeners[k];
            int fd = listen_socket(lc->host, lc->port, true, &err);
            if (fd < 0) {
                fprintf(stderr, "%s:%d:%d: error: %s\n", cfg->file, lc->line, lc->col, err.msg);
                return 1;
            }
            w->ls[k].fd = fd;
            w->ls[k].index = k;
            w->ls[k].tls = lc->tls;
        }
        if (i == 0 && admin_fd >= 0) {
            struct lsock *a = &w->ls[cfg->nlisteners];
            a->fd = admin_fd;
            a->index = SIZE_MAX;
            a->admin = true;
        }
    }
    for (unsigned i = 0; i < nw; i++) {
        if (worker_start(&io_g.workers[i], config_ref(cfg), &err) != 0) {
            fprintf(stderr, "gatehouse: %s\n", err.msg);
            return 1;
        }
    }
    {
        char lines[1024] = "";
        size_t off = 0;
        for (size_t k = 0; k < cfg->nlisteners && off < sizeof lines; k++) {
            off += (size_t)snprintf(lines + off, sizeof lines - off, "%s%s%s", off ? "," : "",
                                    cfg->listeners[k].tls ? "https://" : "http://",
                                    cfg->listeners[k].address);
        }
        char extra[1400];
        snprintf(extra, sizeof extra, " listen=%s admin=%s workers=%u routes=%zu", lines,
                 cfg->admin_address ? cfg->admin_address : "off", nw, cfg->nroutes);
        log_emit(LOG_INFO, "serve", NULL, extra, "gatehouse %s serving", GATEHOUSE_VERSION);
    }

    uint64_t stamp = policy_files_stamp(cfg);
    unsigned ticks = 0;
    for (;;) {
        /* Wakes at least once a second to notice edited policy files, and every
         * other second renewed certificates (replaced in place by certbot or
         * cert-manager: same path, new content). */
        const struct timespec tick = { 1, 0 };
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig < 0) {
            if (errno == EAGAIN && ++ticks % 2 == 0) {
                tls_listeners_check(cfg, false);
            }
            uint64_t now = errno == EAGAIN ? policy_files_stamp(cfg) : stamp;
            if (now != stamp) {
                log_info("serve", "a policy file changed: reloading %s", cfg->file);
                /* The files as they were before the reload read them: one replaced
                 * while it runs is seen on the next tick. A refused reload is retried
                 * on the next change, not every second. */
                uint64_t named = policy_files_named(cfg);
                cfg = reload(cfg);
                stamp = policy_files_named(cfg) == named ? now : policy_files_stamp(cfg);
            }
            continue;
        }
        if (sig == SIGHUP) {
            log_info("serve", "SIGHUP: reloading %s", cfg->file);
            uint64_t named = policy_files_named(cfg), before = policy_files_stamp(cfg);
            cfg = reload(cfg);
            /* Certificates too, even when the configuration was refused. */
            tls_listeners_check(cfg, true);
            stamp = policy_files_named(cfg) == named ? before : policy_files_stamp(cfg);
            continue;
        }
        log_info("serve", "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
        break;
    }
    drain(cfg);
    /* Decision records and session writes still queued reach the disk. */
    access_stop();
    /* Workers past the deadline are abandoned with their connections: the
     * process exits and the kernel closes them. */
    _exit(0);
}
