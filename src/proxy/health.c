/* proxy/health.c - active health checks: per snapshot and route, a GET of
 * health_path on every server through the worker's HTTP client (fetch.c) at
 * the route's interval; the answer marks the server up or down in the
 * snapshot's balancer. The worker starts them when it adopts a snapshot and
 * stops them when it retires it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch.h"
#include "io.h"

struct hc {
    struct worker *w;
    struct wcfg *wc;
    size_t ri, si;
};

static void hc_done(void *arg, const struct fetch_resp *resp)
{
    struct hc *h = arg;
    bool ok = !resp->failed && resp->status >= 200 && resp->status < 400;

    if (h->wc->bal) {
        bool was = balancer_is_up(h->wc->bal[h->ri], h->si, worker_now_ms(h->w));
        balancer_set_healthy(h->wc->bal[h->ri], h->si, ok);
        if (!ok && was) {
            log_emit(LOG_WARN, "health", NULL, NULL, "%s%s failed: %s",
                     h->wc->cfg->routes[h->ri].upstream.servers[h->si].url,
                     h->wc->cfg->routes[h->ri].upstream.health_path,
                     resp->failed ? resp->error : "bad status");
        }
    }
    wcfg_unref(h->w, h->wc);
    free(h);
}

static void health_tick(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct wcfg *wc = (struct wcfg *)((char *)t - offsetof(struct wcfg, health));
    struct worker *w = ev_userdata(loop);

    (void)revents;
    if (!w->fetch || w->draining) {
        return;
    }
    uint64_t now = worker_now_ms(w);
    for (size_t ri = 0; ri < wc->cfg->nroutes; ri++) {
        const struct upstream_conf *uc = &wc->cfg->routes[ri].upstream;
        uint64_t iv = uc->health_interval_ms ? uc->health_interval_ms : 5000;
        if (!uc->health_path) {
            continue;
        }
        /* The timer runs at the shortest interval; each route keeps its own. */
        if (wc->health_last[ri] != 0 && now - wc->health_last[ri] + 50 < iv) {
            continue;
        }
        wc->health_last[ri] = now;
        for (size_t si = 0; si < uc->nservers; si++) {
            char url[1024], err[256];
            const char *su = uc->servers[si].url;
            size_t n = strlen(su);
            while (n > 0 && su[n - 1] == '/') {
                n--;
            }
            int ul = snprintf(url, sizeof url, "%.*s%s", (int)n, su, uc->health_path);
            if (ul < 0 || (size_t)ul >= sizeof url) {
                log_warn("health",
                         "route %s: health check URL of %s is longer than %zu bytes: "
                         "not checked",
                         wc->cfg->routes[ri].name, su, sizeof url - 1);
                continue;
            }
            struct hc *h = xcalloc(1, sizeof *h);
            h->w = w;
            h->wc = wc;
            h->ri = ri;
            h->si = si;
            wc->refs++;
            struct fetch_req fr = {
                .url = url,
                .timeout_ms = wc->cfg->timeouts.upstream_connect_ms +
                              wc->cfg->timeouts.upstream_response_ms / 10,
                .ca_file = uc->ca_file,
                .client_cert = uc->client_cert,
                .client_key = uc->client_key,
                .max_response_bytes = 64 * 1024,
            };
            if (!fetch_start(w->fetch, &fr, hc_done, h, err)) {
                log_warn("health", "%s: %s", url, err);
                wc->refs--;
                free(h);
            }
        }
    }
}

void health_start(struct worker *w, struct wcfg *wc)
{
    uint64_t interval = 0;

    for (size_t ri = 0; ri < wc->cfg->nroutes; ri++) {
        const struct upstream_conf *uc = &wc->cfg->routes[ri].upstream;
        if (uc->health_path) {
            uint64_t iv = uc->health_interval_ms ? uc->health_interval_ms : 5000;
            if (interval == 0 || iv < interval) {
                interval = iv;
            }
        }
    }
    if (interval == 0) {
        return;
    }
    wc->health_last = xcalloc(wc->cfg->nroutes, sizeof *wc->health_last);
    ev_timer_init(&wc->health, health_tick, 0.05, (ev_tstamp)interval / 1000.0);
    ev_timer_start(w->loop, &wc->health);
    wc->health_on = true;
}

void health_stop(struct worker *w, struct wcfg *wc)
{
    if (wc->health_on) {
        ev_timer_stop(w->loop, &wc->health);
        wc->health_on = false;
    }
    free(wc->health_last);
    wc->health_last = NULL;
}
