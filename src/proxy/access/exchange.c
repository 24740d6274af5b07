/* proxy/access/exchange.c - the per-request state of the access stage that
 * lives across the asynchronous steps (identity provider calls, OPA), like
 * HAProxy's stream: created in the request's arena, it goes with it. A client
 * that goes away cancels the call in flight. */
#include <stdlib.h>
#include <string.h>

#include "access_int.h"

#define FETCH_MAX_BYTES (1u << 20)

static void on_abort(void *arg)
{
    struct exchange *x = arg;
    x->aborted = true;
    if (x->fetch) {
        fetch_cancel(x->fetch);
        x->fetch = NULL;
    }
    /* The OPA body is malloc'd: it would outlive the arena. */
    free(x->opa.input);
    x->opa.input = NULL;
}

static void on_fetch_done(void *arg, const struct fetch_resp *resp)
{
    struct exchange *x = arg;
    x->fetch = NULL;
    if (x->aborted) {
        return;
    }
    x->next(x, resp);
}

struct exchange *exchange_new(struct request *r, bool reserved)
{
    struct exchange *x = arena_zalloc(r->arena, sizeof *x);

    if (!x) {
        return NULL;
    }
    x->r = r;
    x->conf = r->cfg->authn;
    x->route = r->route ? r->route->authn : NULL;
    x->reserved = reserved;
    x->start_us = access_mono_us();
    policy_result_init(&x->res, NULL);
    return x;
}

/* The request waits for x->fetch (started by the caller) until next(). */
static bool exchange_suspend(struct exchange *x)
{
    if (!x->fetch) {
        return false;
    }
    x->pending = true;
    if (!x->abort_hooked) {
        x->abort_hooked = true;
        request_on_abort(x->r, on_abort, x);
    }
    return true;
}

bool exchange_fetch(struct exchange *x, const struct fetch_req *req, exchange_next_fn *next,
                    char err[256])
{
    struct fetch_req fr = *req;
    if (!fr.max_response_bytes) {
        fr.max_response_bytes = FETCH_MAX_BYTES;
    }
    x->next = next;
    x->fetch = fetch_start(request_fetcher(x->r), &fr, on_fetch_done, x, err);
    return exchange_suspend(x);
}

bool exchange_wait(struct exchange *x, int fd, uint64_t timeout_ms, exchange_next_fn *next,
                   char err[256])
{
    x->next = next;
    x->fetch = fetch_wait(request_fetcher(x->r), fd, timeout_ms, on_fetch_done, x, err);
    return exchange_suspend(x);
}

enum access_step exchange_finish(struct exchange *x, enum access_step st)
{
    /* st is tested first so that x is only read when it is still alive. */
    if (st == ACCESS_ALLOW && x->pending) {
        request_resume(x->r, st);
    }
    return st;
}
