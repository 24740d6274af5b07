/* proxy/metrics.h - Prometheus counters for /metrics. Each worker thread owns
 * one cache-line-aligned slot and is the only writer of it (relaxed atomic
 * store, no lock prefix, no sharing of lines); the admin renders the sum over
 * all slots with relaxed atomic loads, so totals are eventually consistent.
 * Routes are keyed by name: a name keeps its series across reloads.
 *
 * Exposed series (text exposition format 0.0.4):
 *   gatehouse_requests_total{route,class}            counter  class = 1xx..5xx
 *   gatehouse_upstream_latency_seconds{route}        histogram (le buckets below)
 *   gatehouse_upstream_errors_total{route,kind}      counter  kind = connect|timeout|response
 *   gatehouse_upstream_retries_total{route}          counter
 *   gatehouse_connections_open                       gauge
 *   gatehouse_connections_total                      counter (accepted)
 *   gatehouse_tls_handshake_failures_total           counter
 *   gatehouse_upstream_pool_idle / _active           gauge   (keep-alive pool)
 *   gatehouse_request_bytes_total / response_bytes_total   counter
 *   gatehouse_config_reloads_total{result}           counter result = ok|failed
 *   gatehouse_workers                                gauge
 * Requests that matched no route use route="". */
#ifndef GH_PROXY_METRICS_H
#define GH_PROXY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct metrics;        /* the registry: one per process */
struct metrics_worker; /* one worker's slot */

/* Distinct route names ever seen by the process (across reloads); names beyond
 * this share the id METRICS_ROUTE_OTHER, rendered as route="_other". */
#define METRICS_MAX_ROUTES  256
#define METRICS_ROUTE_NONE  0 /* id for "no route matched" (route="") */
#define METRICS_ROUTE_OTHER 1 /* overflow */

/* Upstream latency histogram bucket upper bounds, in seconds (+Inf implied). */
#define METRICS_LATENCY_BUCKETS 12

enum metrics_upstream_error {
    METRICS_UPSTREAM_CONNECT = 0, /* connect refused/failed, TLS to upstream failed */
    METRICS_UPSTREAM_TIMEOUT,     /* connect or response timeout */
    METRICS_UPSTREAM_RESPONSE,    /* invalid or truncated response */
    METRICS_UPSTREAM_NERR
};

/* A registry with nworkers slots (>= 1). Allocates; caller frees with
 * metrics_free() after every worker has stopped. */
struct metrics *metrics_new(unsigned nworkers);
void metrics_free(struct metrics *m); /* NULL is a no-op */

/* Worker i's slot (i < nworkers); borrowed, lives as long as m. */
struct metrics_worker *metrics_worker(struct metrics *m, unsigned i);

/* Stable id for a route name, registering it when new. Takes a mutex: call at
 * config load/adoption, not per request. NULL or "" gives METRICS_ROUTE_NONE. */
unsigned metrics_route_id(struct metrics *m, const char *name);
/* Sets routes[i].metrics_id for every route of c. Call after config_load()
 * succeeds and before the snapshot is published to workers. */
void metrics_bind_config(struct metrics *m, struct config *c);

/* Hot path: only the owning worker thread calls these on its slot; no
 * allocation, no lock, never blocks. route_id comes from route_conf.metrics_id
 * (or METRICS_ROUTE_NONE); out-of-range ids count as METRICS_ROUTE_OTHER. */
void metrics_request(struct metrics_worker *w, unsigned route_id, unsigned status,
                     uint64_t bytes_in, uint64_t bytes_out);
void metrics_upstream_latency(struct metrics_worker *w, unsigned route_id, uint64_t usec);
void metrics_upstream_error(struct metrics_worker *w, unsigned route_id,
                            enum metrics_upstream_error kind);
void metrics_upstream_retry(struct metrics_worker *w, unsigned route_id);
void metrics_conn_open(struct metrics_worker *w);  /* accepted: open +1, total +1 */
void metrics_conn_close(struct metrics_worker *w); /* open -1 */
void metrics_tls_failure(struct metrics_worker *w);
/* Keep-alive pool gauges: add deltas (may be negative) as connections move
 * between idle and active. */
void metrics_pool_add(struct metrics_worker *w, int64_t d_idle, int64_t d_active);

/* Any thread (SIGHUP handling): counts a reload attempt. */
void metrics_reload(struct metrics *m, bool ok);

/* A source of further /metrics lines (the TLS certificates, the access
 * stage): writes up to size bytes to buf (buf may be NULL when size is 0) and
 * returns the bytes it would write, like snprintf. Providers are pulled in the
 * order they were added, after the data-path series. Add them before workers
 * start; at most METRICS_MAX_PROVIDERS (a further one is refused: false). */
#define METRICS_MAX_PROVIDERS 8
typedef size_t metrics_provider_fn(char *buf, size_t size);
bool metrics_provider_add(metrics_provider_fn *fn);

/* Renders the exposition text. Any thread, concurrently with the workers;
 * returns a malloc'd NUL-terminated string (caller frees with free()) and its
 * length in *len (len may be NULL). Allocates; does not block beyond the
 * route-name mutex. */
char *metrics_render(struct metrics *m, size_t *len);

#endif
