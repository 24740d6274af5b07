/* proxy/access/exchange.c - the per-request state of the access stage that
 * lives across the asynchronous steps (identity provider calls, OPA), like
 * HAProxy's stream: created in the request's arena, it goes with it. A client
 * that goes away cancels the call in flight. */
#include <stddef.h>
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

/* exchange_new zeroes the struct by parts: each part it skips lies where it
 * thinks it does. */
_Static_assert(offsetof(struct exchange, ident_incomplete) >=
                   offsetof(struct exchange, res) + sizeof(struct policy_result),
               "exchange: the fields after res start after it");
_Static_assert(offsetof(struct exchange, res) > offsetof(struct exchange, in),
               "exchange: res follows the zeroed parts");
_Static_assert(offsetof(struct authn_out, event) > offsetof(struct authn_out, reason) &&
                   offsetof(struct authn_out, reason) > offsetof(struct authn_out, cont),
               "authn_out: reason lies between cont and event");

struct exchange *exchange_new(struct request *r, bool reserved)
{
    /* Zeroed field by field, not whole: x->res is set by policy_result_init,
     * the cookie spans are written before they are read (ncookies says how
     * many), and the reason buffer is a string (its first byte is enough).
     * That is about half of the struct the request does not pay for. */
    struct exchange *x = arena_alloc(r->arena, sizeof *x);

    if (!x) {
        return NULL;
    }
    memset(x, 0, offsetof(struct exchange, ids));
    memset(&x->ids.req, 0, sizeof x->ids.req);
    memset(&x->ids.out, 0, offsetof(struct authn_out, reason));
    x->ids.out.reason[0] = '\0';
    memset((char *)&x->ids.out + offsetof(struct authn_out, event), 0,
           sizeof x->ids.out - offsetof(struct authn_out, event));
    memset(&x->ids.device, 0, sizeof x->ids.device);
    x->ids.done = NULL;
    memset(&x->id, 0, sizeof x->id);
    memset(&x->in, 0, sizeof x->in);
    memset(&x->ident_incomplete, 0, sizeof *x - offsetof(struct exchange, ident_incomplete));
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
