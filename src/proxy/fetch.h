/* proxy/fetch.h - outbound HTTP(S) for a worker: IdP discovery, JWKS, token and
 * userinfo calls, OPA queries. libcurl's multi interface driven by the worker's
 * own libev loop, so a slow IdP never stalls other requests on that worker.
 * Only this file talks to libcurl; authn and policy describe the request they
 * need and get the response back through a callback. */
#ifndef GH_PROXY_FETCH_H
#define GH_PROXY_FETCH_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct fetcher;
struct fetch;

struct fetch_req {
    const char *method;         /* "GET" or "POST" (NULL = GET) */
    const char *url;            /* http:// or https:// only; redirects are not followed */
    const char *const *headers; /* NULL-terminated "Name: value" lines, or NULL */
    const char *body;           /* request body (POST), may be NULL */
    size_t body_len;
    uint64_t timeout_ms;     /* whole transfer; 0 = 10 s */
    const char *ca_file;     /* CA bundle for https, NULL = system default */
    const char *client_cert; /* client certificate (PEM) for mTLS, or NULL */
    const char *client_key;
    size_t max_response_bytes; /* 0 = 1 MiB; a larger body fails the fetch */
};

struct fetch_resp {
    long status;      /* HTTP status, 0 when no response was received */
    const char *body; /* NUL-terminated, borrowed until the callback returns */
    size_t body_len;
    const char *content_type; /* borrowed, may be NULL */
    int failed;               /* nonzero on transport failure (then error says why) */
    char error[256];
    uint64_t elapsed_us;
};

/* Called once on the loop's thread when the fetch ends (success or failure),
 * unless fetch_cancel() was called first. */
typedef void fetch_done_cb(void *arg, const struct fetch_resp *resp);

/* One fetcher per worker loop. Never blocks. Aborts on OOM. */
struct fetcher *fetcher_new(struct ev_loop *loop);
/* Cancels every pending fetch without calling callbacks. NULL is a no-op. */
void fetcher_free(struct fetcher *f);
/* Starts req (every field is copied). Returns a handle for fetch_cancel(), or NULL
 * when the request cannot be started (err says why; the callback is not called). */
struct fetch *fetch_start(struct fetcher *f, const struct fetch_req *req, fetch_done_cb *cb,
                          void *arg, char err[256]);
/* No transfer: waits on the loop until fd is readable (the callback gets
 * status 200) or timeout_ms passed (failed, "no answer within ..."), e.g. a
 * store thread's answer posted through an eventfd. The fd stays the caller's;
 * fetch_cancel stops watching it. */
struct fetch *fetch_wait(struct fetcher *f, int fd, uint64_t timeout_ms, fetch_done_cb *cb,
                         void *arg, char err[256]);
/* Abandons a pending fetch: its callback will not be called. */
void fetch_cancel(struct fetch *h);
/* Fetches in flight (for metrics and tests). */
size_t fetcher_pending(const struct fetcher *f);

#endif
