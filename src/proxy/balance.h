/* proxy/balance.h - choosing an upstream server for a route: round_robin,
 * least_conn, ip_hash, plus passive health (max_fails consecutive failures
 * take a server out for fail_timeout), active-check state, per-server
 * in-flight counts (for least_conn and max_conns) and an exclusion set for
 * retries. One balancer per route per worker thread: it is not thread-safe
 * and needs no locks because only its worker touches it. Nothing blocks. */
#ifndef GH_PROXY_BALANCE_H
#define GH_PROXY_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "config.h"

struct upstream_conf;
struct balancer; /* opaque, per worker */

/* config_load rejects routes with more servers than this. */
#define BALANCE_MAX_SERVERS UPSTREAM_MAX_SERVERS

/* Servers already tried by this request (retries skip them). Zero-initialise
 * ("struct balance_exclude ex = {0};"), then balance_exclude_add() each tried index. */
struct balance_exclude {
    uint64_t bits[BALANCE_MAX_SERVERS / 64];
};

void balance_exclude_add(struct balance_exclude *ex, size_t idx);
bool balance_exclude_has(const struct balance_exclude *ex, size_t idx);

/* A balancer for up (borrowed: must outlive the balancer; it lives in the config
 * snapshot the worker holds). prev may be NULL; otherwise the passive-health and
 * active-check state of servers with the same URL is carried over from prev (used
 * when a worker adopts a reloaded config), and prev stays owned by the caller.
 * Caller frees with balancer_free(). Allocates; call at config adoption, not per request. */
struct balancer *balancer_new(const struct upstream_conf *up, const struct balancer *prev);
/* NULL is a no-op. The caller must not free it while requests still report into it. */
void balancer_free(struct balancer *b);

/* Picks a server index in [0, up->nservers) for a request, or -1 when none can be
 * used (every server excluded, or at max_conns): answer 502/503.
 * client_ip: the client address as text (only ip_hash uses it; may be empty).
 * ex: may be NULL. now_ms: a monotonic clock in ms (ev_now * 1000 is fine).
 * Servers that are down (passive: max_fails failures in a row, for fail_timeout;
 * active: last health check failed) are skipped. When every non-excluded server
 * is down, the one that comes back first is returned anyway (as nginx does: the
 * attempt doubles as a probe); servers down by active check come last.
 * ip_hash maps the same client IP to the same server while that server is up;
 * if it is not usable, a further hash of the IP picks another (so the clients
 * of a server that is out spread over the rest, each to a fixed one).
 * The pick does NOT count as in flight: call balancer_conn_start() when the
 * request is actually sent to the server. */
int balancer_pick(struct balancer *b, struct str client_ip, const struct balance_exclude *ex,
                  uint64_t now_ms);

/* In-flight accounting for least_conn and max_conns: start when a request is
 * assigned to server idx, end exactly once when it is done with it. */
void balancer_conn_start(struct balancer *b, size_t idx);
void balancer_conn_end(struct balancer *b, size_t idx);

/* Passive health: ok=false for a connect failure, timeout or invalid response;
 * ok=true for any response from the server (even a 5xx). max_fails consecutive
 * failures mark the server down until now_ms + fail_timeout_ms; a success
 * resets the count. max_fails 0 disables passive health. */
void balancer_report(struct balancer *b, size_t idx, bool ok, uint64_t now_ms);

/* Active health check result (health_check: {path, interval}): a server whose
 * last check failed is skipped until a check succeeds. */
void balancer_set_healthy(struct balancer *b, size_t idx, bool healthy);

/* Introspection (tests, metrics, admin). */
bool balancer_is_up(const struct balancer *b, size_t idx, uint64_t now_ms);
uint32_t balancer_active(const struct balancer *b, size_t idx);
size_t balancer_count(const struct balancer *b);

/* Stable 32-bit hash of a client IP text (FNV-1a); exported for tests. */
uint32_t balance_ip_hash(struct str client_ip);

#endif
