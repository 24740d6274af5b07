/* proxy/route.h - which route serves a request: host (exact, then "*.suffix"
 * wildcard, then routes without a host) and the longest path_prefix on a
 * segment boundary. The table is built once per config snapshot by
 * config_load() and is owned by that snapshot; matching never allocates. */
#ifndef GH_PROXY_ROUTE_H
#define GH_PROXY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "../core/core.h"

struct config;
struct route_conf;
struct route_table; /* opaque, immutable after build, shared read-only by all workers */

/* Builds the lookup table for routes[0..n). The table borrows routes (their
 * host/path_prefix strings must outlive it; config_load guarantees that by
 * freeing the table first). Never fails except on OOM (aborts). Caller frees
 * with route_table_free(). Called at config load, not per request. */
struct route_table *route_table_new(const struct route_conf *routes, size_t n);
/* NULL is a no-op. */
void route_table_free(struct route_table *t);

/* Finds the route for a request. host: the Host header (or the authority of an
 * absolute-form target) as received: compared ASCII case-insensitively, a
 * ":port" suffix and one trailing dot are ignored, "[v6]:port" keeps "[v6]".
 * An empty host only matches routes without a host. path: the request target's
 * path; anything from the first '?' or '#' on is ignored.
 *
 * Order: routes whose host equals the request host, then wildcard routes
 * ("*.example.com" matches "a.example.com" and "a.b.example.com", never
 * "example.com"; the longest suffix first), then routes without a host. In the
 * first of those groups that has a route whose path_prefix matches, the
 * longest matching prefix wins. A prefix matches when the path equals it, or
 * starts with it and the prefix ends with '/' or the next path byte is '/' or
 * the ';' of segment parameters (so "/api" matches "/api", "/api/x" and
 * "/api;v=1", not "/apix"). A route with match.path_case_insensitive compares
 * the prefix in any ASCII case. path is the normalised path (normpath.h).
 *
 * Returns a route borrowed from the snapshot (valid while the caller holds a
 * reference to it), or NULL: no route (answer 404). Thread-safe (read-only),
 * never blocks, never allocates. */
const struct route_conf *route_match(const struct route_table *t, struct str host, struct str path);

/* route_match on c's table (c->route_table). */
const struct route_conf *route_match_config(const struct config *c, struct str host,
                                            struct str path);

/* The host part of a Host header value: strips ":port" and one trailing dot;
 * "[::1]:8080" gives "[::1]". Returns a span into host (no copy). */
struct str route_host_strip(struct str host);

#endif
