/* proxy/access/opa_call.c - asks OPA the question decide() returned: from the
 * answer cache, or over HTTP through fetch.c with the request suspended. The
 * HTTP outcome is read by opa_answer_http() (policy/opa.c), the same function
 * the unit tests call. */
#include <stdlib.h>
#include <string.h>

#include "access_int.h"

static struct opa_cache *Cache;

void opa_call_start_runtime(void)
{
    if (!Cache) {
        Cache = opa_cache_new(10000);
    }
}

void opa_call_stop_runtime(void)
{
    opa_cache_free(Cache);
    Cache = NULL;
}

static uint64_t mono_ms(void)
{
    return access_mono_us() / 1000u;
}

static void opa_input_drop(struct opa_call *o)
{
    free(o->input);
    o->input = NULL;
}

static void got_opa(struct exchange *x, const struct fetch_resp *resp)
{
    const struct opa_conf *oc = x->conf->opa;
    uint64_t spent = access_mono_us() - x->opa.start_us;
    bool allow = false;
    bool error = opa_answer_http(oc, &x->res, resp->failed != 0, resp->status, resp->body,
                                 resp->body_len, &allow);

    x->opa.us += spent;
    policy_metrics_opa(spent, error, false);
    if (error) {
        log_emit(LOG_WARN, "policy", x->r->id, NULL, "OPA query %s failed: %s (on_error: %s)",
                 x->res.opa_path,
                 resp->failed ? resp->error
                              : (resp->status != 200 ? "unexpected status" : "malformed answer"),
                 oc->on_error == OPA_ON_ERROR_ALLOW ? "allow" : "deny");
        x->opa.result = "error";
    } else {
        const struct policy_opa_answer *a = &x->res.opa[x->res.opa_index];
        x->opa.result = allow ? "allow" : "deny";
        opa_cache_put(Cache, x->res.opa_path, x->opa.input, allow, a->reason, mono_ms(),
                      oc->cache_ttl_ms);
    }
    opa_input_drop(&x->opa);
    exchange_finish(x, x->opa.done(x));
}

enum access_step opa_call(struct exchange *x, opa_done_fn *done)
{
    const struct opa_conf *oc = x->conf->opa;
    static const char *const hdrs[] = { "Content-Type: application/json", NULL };
    bool allow;
    char reason[128];
    char err[256] = "out of memory";

    x->opa.done = done;
    if (!oc || !oc->url) {
        /* Checked at load when possible; fail closed at run time. */
        x->opa.result = "error";
        policy_opa_answer(&x->res, false, "no OPA is configured");
        return done(x);
    }
    opa_input_drop(&x->opa);
    x->opa.input = opa_input_json(&x->in);
    if (oc->cache_ttl_ms && x->opa.input &&
        opa_cache_get(Cache, x->res.opa_path, x->opa.input, mono_ms(), &allow, reason,
                      sizeof reason)) {
        policy_metrics_opa(0, false, true);
        x->opa.result = allow ? "allow" : "deny";
        policy_opa_answer(&x->res, allow, reason[0] ? reason : NULL);
        opa_input_drop(&x->opa);
        return done(x);
    }
    char *url = opa_request_url(oc, x->res.opa_path);
    /* opa_input_json() already gives the whole request body {"input": {...}}. */
    struct fetch_req fr = { .method = "POST",
                            .url = url,
                            .headers = hdrs,
                            .body = x->opa.input,
                            .body_len = x->opa.input ? strlen(x->opa.input) : 0,
                            .timeout_ms = oc->timeout_ms };
    x->opa.start_us = access_mono_us();
    bool started = url && x->opa.input && exchange_fetch(x, &fr, got_opa, err);
    free(url);
    if (!started) {
        opa_input_drop(&x->opa);
        return respond_error(x->r, x->conf->an, 502, "Policy service unavailable",
                             "Gatehouse could not reach the policy service.", err);
    }
    return ACCESS_PENDING;
}
