/* proxy/metrics.c - per-worker counters and their Prometheus rendering. Each
 * worker slot is cache-line aligned and written only by its worker (a relaxed
 * load and store: no locked instruction on the request path); /metrics sums
 * every slot with relaxed loads. Route names are registered once per name, at
 * config load, and never forgotten, so a reload keeps each route's series. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/core.h"
#include "config.h"
#include "io.h"

static const uint64_t bucket_us[METRICS_LATENCY_BUCKETS] = {
    5000,   10000,   25000,   50000,   100000,   250000,
    500000, 1000000, 2500000, 5000000, 10000000, 30000000,
};
static const char *const bucket_le[METRICS_LATENCY_BUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
};
static const char *const error_kind[METRICS_UPSTREAM_NERR] = { "connect", "timeout", "response" };

struct route_counters {
    _Atomic uint64_t requests[5];                         /* 1xx..5xx */
    _Atomic uint64_t bucket[METRICS_LATENCY_BUCKETS + 1]; /* per bucket, last = +Inf only */
    _Atomic uint64_t latency_sum_us;
    _Atomic uint64_t errors[METRICS_UPSTREAM_NERR];
    _Atomic uint64_t retries;
};

struct metrics_worker {
    _Alignas(64) _Atomic int64_t conn_open;
    _Atomic uint64_t conn_total;
    _Atomic uint64_t tls_failures;
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t bytes_out;
    _Atomic int64_t pool_idle;
    _Atomic int64_t pool_active;
    struct route_counters routes[METRICS_MAX_ROUTES];
};

struct metrics {
    unsigned nworkers;
    struct metrics_worker *workers;
    pthread_mutex_t lock; /* serialises registration only */
    char *names[METRICS_MAX_ROUTES];
    _Atomic unsigned nnames; /* names[0..nnames) are published and immutable */
    _Atomic uint64_t reloads_ok;
    _Atomic uint64_t reloads_failed;
};

/* Single-writer increment: only the owning worker stores, readers load. */
static inline void bump(_Atomic uint64_t *c, uint64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

static inline void bump_signed(_Atomic int64_t *c, int64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

struct metrics *metrics_new(unsigned nworkers)
{
    struct metrics *m = xcalloc(1, sizeof *m);

    m->nworkers = nworkers ? nworkers : 1;
    m->workers = aligned_alloc(64, m->nworkers * sizeof *m->workers);
    if (!m->workers) {
        abort(); /* like xmalloc: process-lifetime state, no recovery */
    }
    memset(m->workers, 0, m->nworkers * sizeof *m->workers);
    pthread_mutex_init(&m->lock, NULL);
    m->names[METRICS_ROUTE_NONE] = xstrdup("");
    m->names[METRICS_ROUTE_OTHER] = xstrdup("_other");
    atomic_init(&m->nnames, 2);
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m) {
        return;
    }
    for (unsigned i = 0; i < atomic_load(&m->nnames); i++) {
        free(m->names[i]);
    }
    pthread_mutex_destroy(&m->lock);
    free(m->workers);
    free(m);
}

struct metrics_worker *metrics_worker(struct metrics *m, unsigned i)
{
    return &m->workers[i < m->nworkers ? i : 0];
}

unsigned metrics_route_id(struct metrics *m, const char *name)
{
    unsigned n, id = METRICS_ROUTE_OTHER;

    if (!name || !name[0]) {
        return METRICS_ROUTE_NONE;
    }
    pthread_mutex_lock(&m->lock);
    n = atomic_load_explicit(&m->nnames, memory_order_relaxed);
    for (unsigned i = 2; i < n; i++) {
        if (strcmp(m->names[i], name) == 0) {
            id = i;
            goto out;
        }
    }
    if (n < METRICS_MAX_ROUTES) {
        m->names[n] = xstrdup(name);
        /* Release: a renderer that sees the count sees the name. */
        atomic_store_explicit(&m->nnames, n + 1, memory_order_release);
        id = n;
    }
out:
    pthread_mutex_unlock(&m->lock);
    return id;
}

void metrics_bind_config(struct metrics *m, struct config *c)
{
    for (size_t i = 0; i < c->nroutes; i++) {
        c->routes[i].metrics_id = metrics_route_id(m, c->routes[i].name);
    }
}

static struct route_counters *route_slot(struct metrics_worker *w, unsigned route_id)
{
    return &w->routes[route_id < METRICS_MAX_ROUTES ? route_id : METRICS_ROUTE_OTHER];
}

void metrics_request(struct metrics_worker *w, unsigned route_id, unsigned status,
                     uint64_t bytes_in, uint64_t bytes_out)
{
    unsigned cls = status / 100;
    /* Anything outside 1xx-5xx is our own bug or a broken upstream: count it as 5xx. */
    if (cls < 1 || cls > 5) {
        cls = 5;
    }
    bump(&route_slot(w, route_id)->requests[cls - 1], 1);
    bump(&w->bytes_in, bytes_in);
    bump(&w->bytes_out, bytes_out);
}

void metrics_upstream_latency(struct metrics_worker *w, unsigned route_id, uint64_t usec)
{
    struct route_counters *r = route_slot(w, route_id);
    size_t b = 0;
    while (b < METRICS_LATENCY_BUCKETS && usec > bucket_us[b]) {
        b++;
    }
    bump(&r->bucket[b], 1);
    bump(&r->latency_sum_us, usec);
}

void metrics_upstream_error(struct metrics_worker *w, unsigned route_id,
                            enum metrics_upstream_error kind)
{
    if ((unsigned)kind < METRICS_UPSTREAM_NERR) {
        bump(&route_slot(w, route_id)->errors[kind], 1);
    }
}

void metrics_upstream_retry(struct metrics_worker *w, unsigned route_id)
{
    bump(&route_slot(w, route_id)->retries, 1);
}

void metrics_conn_open(struct metrics_worker *w)
{
    bump_signed(&w->conn_open, 1);
    bump(&w->conn_total, 1);
}

void metrics_conn_close(struct metrics_worker *w)
{
    bump_signed(&w->conn_open, -1);
}

void metrics_tls_failure(struct metrics_worker *w)
{
    bump(&w->tls_failures, 1);
}

void metrics_pool_add(struct metrics_worker *w, int64_t d_idle, int64_t d_active)
{
    bump_signed(&w->pool_idle, d_idle);
    bump_signed(&w->pool_active, d_active);
}

void metrics_reload(struct metrics *m, bool ok)
{
    atomic_fetch_add_explicit(ok ? &m->reloads_ok : &m->reloads_failed, 1, memory_order_relaxed);
}

/* ---- rendering ---- */

struct out {
    char *p;
    size_t len, cap;
};

static void PRINTF(2, 3) emit(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        o->cap = (o->cap + (size_t)n + 1) * 2;
        o->p = xrealloc(o->p, o->cap);
    }
}

/* Label value escaping per the exposition format: \\, \" and \n. */
static void label(const char *s, char *buf, size_t cap)
{
    size_t j = 0;
    for (; *s && j + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            buf[j++] = '\\';
            buf[j++] = *s;
        } else if (*s == '\n') {
            buf[j++] = '\\';
            buf[j++] = 'n';
        } else {
            buf[j++] = *s;
        }
    }
    buf[j] = '\0';
}

static uint64_t load(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static int64_t load_signed(_Atomic int64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Sum of one per-route counter over workers; off is the byte offset in struct route_counters. */
static uint64_t sum_route(struct metrics *m, unsigned r, size_t off)
{
    uint64_t s = 0;
    for (unsigned w = 0; w < m->nworkers; w++) {
        s += load((_Atomic uint64_t *)((char *)&m->workers[w].routes[r] + off));
    }
    return s;
}

static uint64_t sum_worker(struct metrics *m, size_t off)
{
    uint64_t s = 0;
    for (unsigned w = 0; w < m->nworkers; w++) {
        s += load((_Atomic uint64_t *)((char *)&m->workers[w] + off));
    }
    return s;
}

static int64_t sum_worker_signed(struct metrics *m, size_t off)
{
    int64_t s = 0;
    for (unsigned w = 0; w < m->nworkers; w++) {
        s += load_signed((_Atomic int64_t *)((char *)&m->workers[w] + off));
    }
    /* Workers update open/close on different slots only when a connection
     * migrates; a transiently negative sum is never shown. */
    return s < 0 ? 0 : s;
}

#define RC_OFF(field) offsetof(struct route_counters, field)
#define W_OFF(field)  offsetof(struct metrics_worker, field)

/* The series summed over the workers' slots, in the order they are rendered:
 * gauges are signed (_Atomic int64_t), counters unsigned. */
static const struct worker_series {
    const char *name;
    bool gauge;
    size_t off;
    const char *help;
} worker_series[] = {
    { "gatehouse_connections_open", true, W_OFF(conn_open), "Client connections open now." },
    { "gatehouse_connections_total", false, W_OFF(conn_total), "Client connections accepted." },
    { "gatehouse_tls_handshake_failures_total", false, W_OFF(tls_failures),
      "Client TLS handshakes that failed." },
    { "gatehouse_upstream_pool_idle", true, W_OFF(pool_idle),
      "Idle keep-alive connections to upstream servers." },
    { "gatehouse_upstream_pool_active", true, W_OFF(pool_active),
      "Upstream connections carrying a request now." },
    { "gatehouse_request_bytes_total", false, W_OFF(bytes_in), "Bytes read from clients." },
    { "gatehouse_response_bytes_total", false, W_OFF(bytes_out), "Bytes written to clients." },
};

static void header(struct out *o, const char *name, const char *type, const char *help)
{
    emit(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static metrics_provider_fn *Providers[METRICS_MAX_PROVIDERS];
static atomic_size_t Nproviders;

bool metrics_provider_add(metrics_provider_fn *fn)
{
    size_t n = atomic_load(&Nproviders);
    for (size_t i = 0; i < n; i++) {
        if (Providers[i] == fn) {
            return true;
        }
    }
    if (n == METRICS_MAX_PROVIDERS) {
        return false;
    }
    Providers[n] = fn;
    atomic_store(&Nproviders, n + 1);
    return true;
}

char *metrics_render(struct metrics *m, size_t *len)
{
    struct out o = { .p = xmalloc(4096), .len = 0, .cap = 4096 };
    unsigned nn = atomic_load_explicit(&m->nnames, memory_order_acquire);
    char lbl[3 * 64 + 1];

    o.p[0] = '\0';
    header(&o, "gatehouse_requests_total", "counter",
           "Requests answered, by route and status class.");
    for (unsigned r = 0; r < nn; r++) {
        label(m->names[r], lbl, sizeof lbl);
        for (unsigned c = 0; c < 5; c++) {
            uint64_t v = sum_route(m, r, RC_OFF(requests) + c * sizeof(_Atomic uint64_t));
            if (v) {
                emit(&o, "gatehouse_requests_total{route=\"%s\",class=\"%uxx\"} %llu\n", lbl, c + 1,
                     (unsigned long long)v);
            }
        }
    }
    header(&o, "gatehouse_upstream_latency_seconds", "histogram",
           "Time from sending a request upstream to its response head.");
    for (unsigned r = 0; r < nn; r++) {
        uint64_t cum = 0, b[METRICS_LATENCY_BUCKETS + 1];
        uint64_t total = 0;
        for (unsigned i = 0; i <= METRICS_LATENCY_BUCKETS; i++) {
            b[i] = sum_route(m, r, RC_OFF(bucket) + i * sizeof(_Atomic uint64_t));
            total += b[i];
        }
        if (total == 0) {
            continue;
        }
        label(m->names[r], lbl, sizeof lbl);
        for (unsigned i = 0; i < METRICS_LATENCY_BUCKETS; i++) {
            cum += b[i];
            emit(&o, "gatehouse_upstream_latency_seconds_bucket{route=\"%s\",le=\"%s\"} %llu\n",
                 lbl, bucket_le[i], (unsigned long long)cum);
        }
        emit(&o, "gatehouse_upstream_latency_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n", lbl,
             (unsigned long long)total);
        uint64_t sum_us = sum_route(m, r, RC_OFF(latency_sum_us));
        emit(&o, "gatehouse_upstream_latency_seconds_sum{route=\"%s\"} %llu.%06llu\n", lbl,
             (unsigned long long)(sum_us / 1000000), (unsigned long long)(sum_us % 1000000));
        emit(&o, "gatehouse_upstream_latency_seconds_count{route=\"%s\"} %llu\n", lbl,
             (unsigned long long)total);
    }
    header(&o, "gatehouse_upstream_errors_total", "counter",
           "Failed upstream attempts, by route and kind (connect, timeout, response).");
    for (unsigned r = 0; r < nn; r++) {
        label(m->names[r], lbl, sizeof lbl);
        for (unsigned k = 0; k < METRICS_UPSTREAM_NERR; k++) {
            uint64_t v = sum_route(m, r, RC_OFF(errors) + k * sizeof(_Atomic uint64_t));
            if (v) {
                emit(&o, "gatehouse_upstream_errors_total{route=\"%s\",kind=\"%s\"} %llu\n", lbl,
                     error_kind[k], (unsigned long long)v);
            }
        }
    }
    header(&o, "gatehouse_upstream_retries_total", "counter",
           "Requests sent again to another server after a failed attempt.");
    for (unsigned r = 0; r < nn; r++) {
        uint64_t v = sum_route(m, r, RC_OFF(retries));
        if (v) {
            label(m->names[r], lbl, sizeof lbl);
            emit(&o, "gatehouse_upstream_retries_total{route=\"%s\"} %llu\n", lbl,
                 (unsigned long long)v);
        }
    }
    for (size_t i = 0; i < sizeof worker_series / sizeof worker_series[0]; i++) {
        const struct worker_series *ws = &worker_series[i];
        header(&o, ws->name, ws->gauge ? "gauge" : "counter", ws->help);
        if (ws->gauge) {
            emit(&o, "%s %lld\n", ws->name, (long long)sum_worker_signed(m, ws->off));
        } else {
            emit(&o, "%s %llu\n", ws->name, (unsigned long long)sum_worker(m, ws->off));
        }
    }
    header(&o, "gatehouse_config_reloads_total", "counter",
           "Configuration reloads, by result (ok, failed).");
    emit(&o, "gatehouse_config_reloads_total{result=\"ok\"} %llu\n",
         (unsigned long long)load(&m->reloads_ok));
    emit(&o, "gatehouse_config_reloads_total{result=\"failed\"} %llu\n",
         (unsigned long long)load(&m->reloads_failed));
    header(&o, "gatehouse_workers", "gauge", "Event-loop worker threads.");
    emit(&o, "gatehouse_workers %u\n", m->nworkers);
    size_t nprov = atomic_load(&Nproviders);
    for (size_t i = 0; i < nprov; i++) {
        for (;;) {
            /* A reload between sizing and writing may add lines: size again. */
            size_t need = Providers[i](o.p + o.len, o.cap - o.len);
            if (need < o.cap - o.len) {
                o.len += need;
                break;
            }
            o.cap = (o.cap + need + 1) * 2;
            o.p = xrealloc(o.p, o.cap);
        }
    }
    if (len) {
        *len = o.len;
    }
    return o.p;
}
