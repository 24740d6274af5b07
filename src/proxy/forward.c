/* proxy/forward.c - the upstream half of a connection: pick a server through
 * the route's balancer, take a keep-alive connection from the worker's pool or
 * connect (TLS verified against ca_file), send the rewritten head, stream the
 * body both ways with back-pressure, and hand the connection back to the pool
 * only when the exchange ended cleanly. Idempotent requests are retried on
 * another server after a connect failure. The client half (conn.c) knows this
 * file only as forward_half (struct upstream_half); this file calls conn.c's
 * conn_* and request_* functions. Active health checks are health.c's.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "fetch.h"
#include "io.h"
#include "metrics.h"
#include "upgrade.h"

enum up_state { UP_CONNECTING = 0, UP_HANDSHAKE, UP_ACTIVE, UP_IDLE };

struct upconn {
    struct worker *w;
    struct pool *pool;
    struct sock s;
    ev_io io;
    ev_timer timer;
    int io_events;
    enum up_state state;
    struct buf in, out;
    struct http_in *hin;
    struct conn *c;  /* the request using it, or NULL */
    struct wcfg *wc; /* snapshot of the request (for balancer reports) */
    size_t ri, si;   /* route and server index in wc */
    bool counted;    /* balancer_conn_start() was called */
    bool reused;     /* came from the pool */
    bool got_bytes;  /* any response byte for this request */
    bool head_done;  /* final response head forwarded */
    bool done;       /* final response complete */
    bool tunnel;
    bool chunk_up;    /* request body is re-chunked */
    bool head_unsent; /* the request head still waits in out */
    bool closed;
    int refs; /* callbacks on the stack; freed at 0 once closed */
    int hs_want;
    uint64_t sent_us;
    struct upconn *next; /* pool list */
};

static bool idempotent(struct str m)
{
    return str_eq_cstr(m, "GET") || str_eq_cstr(m, "HEAD") || str_eq_cstr(m, "OPTIONS") ||
           str_eq_cstr(m, "PUT") || str_eq_cstr(m, "DELETE") || str_eq_cstr(m, "TRACE");
}

static void up_update_io(struct upconn *u);
static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void up_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static int up_on_body(void *arg, const char *p, size_t n);

static void up_set_timer(struct upconn *u, uint64_t ms)
{
    u->timer.repeat = (ev_tstamp)ms / 1000.0;
    ev_timer_again(u->w->loop, &u->timer);
}

static void up_close(struct upconn *u)
{
    struct worker *w = u->w;

    if (u->closed) {
        return;
    }
    u->closed = true;
    ev_io_stop(w->loop, &u->io);
    ev_timer_stop(w->loop, &u->timer);
    if (u->s.ssl) {
        SSL_free(u->s.ssl);
    }
    close(u->s.fd);
    buf_free(&u->in);
    buf_free(&u->out);
    if (u->hin) {
        http_in_fini(u->hin);
        free(u->hin);
        u->hin = NULL;
    }
    if (u->refs == 0) {
        free(u);
    }
}

static void up_hold(struct upconn *u)
{
    u->refs++;
}

static void up_put(struct upconn *u)
{
    if (--u->refs == 0 && u->closed) {
        free(u);
    }
}

/* Ends the request's use of u: balancer accounting and pool gauges. */
static void up_detach(struct upconn *u)
{
    struct conn *c = u->c;

    if (u->counted) {
        balancer_conn_end(u->wc->bal[u->ri], u->si);
        u->counted = false;
    }
    if (c && c->up == u) {
        c->up = NULL;
    }
    if (u->c && u->w->mw) {
        metrics_pool_add(u->w->mw, 0, -1);
    }
    u->c = NULL;
    u->wc = NULL;
}

static void pool_put(struct upconn *u)
{
    struct worker *w = u->w;
    struct pool *p = u->pool;
    uint32_t max_idle = 64;

    if (u->c && u->c->wc) {
        max_idle = u->c->wc->cfg->routes[u->ri].upstream.max_idle;
    }
    up_detach(u);
    if (!p || p->nidle >= max_idle || w->draining || buf_pending(&u->in) > 0) {
        up_close(u);
        return;
    }
    u->state = UP_IDLE;
    u->got_bytes = u->head_done = u->done = false;
    /* Empty buffers stay with the pooled connection (at most max_idle per
     * server): the next request on it needs them again at once. Large ones
     * (after streaming) are given back. */
    if (u->in.cap > 2 * IO_READ_CHUNK) {
        buf_free(&u->in);
    }
    if (u->out.cap > IO_READ_CHUNK) {
        buf_free(&u->out);
    }
    u->next = p->idle;
    p->idle = u;
    p->nidle++;
    if (w->mw) {
        metrics_pool_add(w->mw, 1, 0);
    }
    /* An idle connection only watches for the server closing it (or sending
     * something unsolicited, which makes it unusable as well). */
    up_update_io(u);
    up_set_timer(u, w->wc->cfg->timeouts.idle_ms);
}

static void pool_unlink(struct upconn *u)
{
    struct pool *p = u->pool;

    for (struct upconn **pp = &p->idle; *pp; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            p->nidle--;
            if (u->w->mw) {
                metrics_pool_add(u->w->mw, -1, 0);
            }
            return;
        }
    }
}

void pool_close_all(struct worker *w)
{
    for (struct pool *p = w->pools; p; p = p->next) {
        while (p->idle) {
            struct upconn *u = p->idle;
            pool_unlink(u);
            up_close(u);
        }
    }
}

static bool forward_body_ready(const struct conn *c)
{
    const struct upconn *u = c->up;
    return u && u->state == UP_ACTIVE && !u->done && buf_pending(&u->out) < IO_HIGH_WATER;
}

static bool up_wants_read(const struct upconn *u)
{
    if (u->state == UP_IDLE) {
        return true;
    }
    if (u->state != UP_ACTIVE || !u->c) {
        return false;
    }
    return buf_pending(&u->c->out) < IO_HIGH_WATER;
}

static void up_update_io(struct upconn *u)
{
    int ev = 0;

    if (u->closed) {
        return;
    }
    if (u->state == UP_CONNECTING) {
        ev = EV_WRITE;
    } else if (u->state == UP_HANDSHAKE) {
        ev = u->hs_want;
    } else {
        bool rd = up_wants_read(u);
        bool wr = buf_pending(&u->out) > 0;
        if (rd) {
            ev |= EV_READ | (u->s.rd_wants_write ? EV_WRITE : 0);
        }
        if (wr) {
            ev |= EV_WRITE | (u->s.wr_wants_read ? EV_READ : 0);
        }
        if (rd && sock_has_pending(&u->s)) {
            ev_feed_event(u->w->loop, &u->io, EV_READ);
        }
    }
    if (ev != u->io_events) {
        ev_io_stop(u->w->loop, &u->io);
        ev_io_set(&u->io, u->s.fd, ev);
        if (ev) {
            ev_io_start(u->w->loop, &u->io);
        }
        u->io_events = ev;
    }
}

/* ---- failures and retries -------------------------------------------- */

static void try_server(struct conn *c);
static void forward_tunnel_in(struct conn *c);

/* CONNECT: the server could not be reached (no TCP connection, or the request
 * could not be written); TLS: the handshake or the certificate check failed;
 * RESPONSE: a bad answer (malformed, cut short); TIMEOUT: no answer in time. */
enum fail_kind { FAIL_CONNECT, FAIL_TLS, FAIL_TIMEOUT, FAIL_RESPONSE };

/* No server of the route is left to answer: each was tried by this request or
 * is down (passive or active health). */
static bool none_healthy(const struct conn *c)
{
    const struct request *r = c->req;
    const struct balancer *b = c->wc->bal[r->route->index];
    uint64_t now = worker_now_ms(c->w);
    for (size_t i = 0; i < r->route->upstream.nservers; i++) {
        if (!balance_exclude_has(&c->ex, i) && balancer_is_up(b, i, now)) {
            return false;
        }
    }
    return true;
}

/* The answer when no attempt succeeded (operations.md, "Upstream errors"):
 * 503 with Retry-After when servers could not be reached and none is left
 * healthy, 504 after a timeout, 502 otherwise (a bad answer, a TLS failure, or
 * one unreachable server while others are up). */
static void upstream_failed(struct conn *c, int status)
{
    struct request *r = c->req;
    if (status == 503 && none_healthy(c)) {
        /* Passive health retries a server after fail_timeout: come back then. */
        uint64_t ms = r->route->upstream.fail_timeout_ms;
        unsigned s = (unsigned)((ms + 999) / 1000);
        request_error_retry(r, 503, "no server of this application is available right now",
                            s ? s : 1);
    } else if (status == 504) {
        request_error(r, 504, "the upstream server did not answer in time");
    } else if (status == 503) {
        request_error(r, 502, "the upstream server could not be reached");
    } else {
        request_error(r, 502, "the upstream server sent an invalid response");
    }
}

/* u failed before the response head was forwarded, or mid-response. */
static void up_fail(struct upconn *u, enum fail_kind kind, const char *why)
{
    struct conn *c = u->c;
    struct worker *w = u->w;
    bool before_send = u->state == UP_CONNECTING || u->state == UP_HANDSHAKE;
    bool stale = u->reused && !u->got_bytes && kind != FAIL_TIMEOUT;

    if (!c) {
        up_close(u);
        return;
    }
    struct request *r = c->req;
    const struct route_conf *route = r->route;
    unsigned rid = route ? route->metrics_id : METRICS_ROUTE_NONE;
    uint64_t now_ms = worker_now_ms(w);

    /* A pooled connection the server had already closed is not the server's
     * fault: try again on a fresh connection without counting a failure. */
    if (!stale) {
        balancer_report(u->wc->bal[u->ri], u->si, false, now_ms);
        if (w->mw) {
            metrics_upstream_error(w->mw, rid,
                                   kind == FAIL_CONNECT || kind == FAIL_TLS
                                       ? METRICS_UPSTREAM_CONNECT
                                   : kind == FAIL_TIMEOUT ? METRICS_UPSTREAM_TIMEOUT
                                                          : METRICS_UPSTREAM_RESPONSE);
        }
    }
    log_emit(LOG_WARN, "upstream", r->id, NULL, "%s: %s", route->upstream.servers[u->si].url, why);
    conn_hold(c);
    up_detach(u);
    up_close(u);
    c->fail_status = kind == FAIL_TIMEOUT ? 504 : kind == FAIL_CONNECT ? 503 : 502;
    bool body_started = r->bytes_in > 0 || (c->req_done && r->has_body);
    if (!c->resp_started && !body_started &&
        ((stale && idempotent(r->method) && c->tries <= route->upstream.retries + 1u) ||
         (before_send && idempotent(r->method) && c->tries <= route->upstream.retries))) {
        if (w->mw) {
            metrics_upstream_retry(w->mw, rid);
        }
        if (stale) {
            c->retry_same = true;
        }
        try_server(c);
    } else if (!c->resp_started) {
        upstream_failed(c, c->fail_status);
    } else {
        conn_close(c);
    }
    conn_put(c);
}

/* ---- connecting -------------------------------------------------------- */

static bool up_flush(struct upconn *u)
{
    return sock_flush(&u->s, &u->out) >= 0;
}

static void up_push(struct upconn *u);

static void up_became_active(struct upconn *u)
{
    struct conn *c = u->c;

    u->state = UP_ACTIVE;
    u->hs_want = 0;
    u->sent_us = mono_us();
    u->head_unsent = true;
    up_set_timer(u, c->wc->cfg->timeouts.upstream_response_ms);
    if (c->in_process) {
        /* A pooled connection taken in the pass over the client's input: the
         * pass goes on to the body bytes it holds, and its end writes them
         * with the head in one write (forward_body_flush). */
        return;
    }
    up_hold(u);
    if (!c->req_done) {
        /* The request body can flow now: what is read joins the head. */
        conn_process(c);
    }
    if (!u->closed && c->up == u) {
        up_push(u);
    }
    up_put(u);
}

static void up_handshake(struct upconn *u)
{
    ERR_clear_error();
    int r = SSL_do_handshake(u->s.ssl);
    if (r == 1) {
        up_became_active(u);
        return;
    }
    switch (SSL_get_error(u->s.ssl, r)) {
    case SSL_ERROR_WANT_READ:
        u->hs_want = EV_READ;
        up_update_io(u);
        return;
    case SSL_ERROR_WANT_WRITE:
        u->hs_want = EV_WRITE;
        up_update_io(u);
        return;
    default: {
        char why[256] = "TLS handshake failed";
        long vr = SSL_get_verify_result(u->s.ssl);
        if (vr != X509_V_OK) {
            snprintf(why, sizeof why, "TLS verification failed: %s",
                     X509_verify_cert_error_string(vr));
        } else if (ERR_peek_error()) {
            char e[200];
            ERR_error_string_n(ERR_peek_error(), e, sizeof e);
            snprintf(why, sizeof why, "TLS handshake failed: %s", e);
        }
        up_fail(u, FAIL_TLS, why);
    }
    }
}

static void up_connected(struct upconn *u)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(u->s.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
        err = errno;
    }
    if (err != 0) {
        char why[128];
        snprintf(why, sizeof why, "connect failed: %s", strerror(err));
        up_fail(u, FAIL_CONNECT, why);
        return;
    }
    if (u->s.ssl) {
        u->state = UP_HANDSHAKE;
        up_handshake(u);
        return;
    }
    up_became_active(u);
}

static bool is_ip_literal(const char *h)
{
    struct in6_addr a6;
    struct in_addr a4;
    return inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1;
}

/* Opens a new connection to server si of route ri. Returns NULL (why filled)
 * when it fails at once. */
static struct upconn *up_connect(struct conn *c, size_t ri, size_t si, char why[128])
{
    struct worker *w = c->w;
    struct wcfg *wc = c->wc;
    const struct upstream_conf *uc = &wc->cfg->routes[ri].upstream;
    const struct upstream_server *sv = &uc->servers[si];
    const struct upaddr *ad = &wc->addr[ri][si];
    struct upconn *u;
    int fd, one = 1;

    if (!ad->ok) {
        snprintf(why, 128, "cannot resolve %.100s", sv->host);
        return NULL;
    }
    fd = socket(ad->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, 128, "socket: %s", strerror(errno));
        return NULL;
    }
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        /* Only latency suffers: say so, and go on. */
        log_debug("upstream", "TCP_NODELAY on the connection to %s: %s", sv->host, strerror(errno));
    }
    if (connect(fd, (const struct sockaddr *)&ad->sa, ad->salen) < 0 && errno != EINPROGRESS) {
        snprintf(why, 128, "connect failed: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    u = xcalloc(1, sizeof *u);
    u->w = w;
    u->s.fd = fd;
    u->pool = wc->pools[ri][si];
    ev_init(&u->io, up_io_cb);
    ev_init(&u->timer, up_timer_cb);
    if (sv->tls) {
        struct err e = { 0 };
        SSL_CTX *ctx = tls_client_ctx(w, uc->ca_file, uc->client_cert, uc->client_key, &e);
        if (!ctx) {
            snprintf(why, 128, "%.120s", e.msg);
            close(fd);
            free(u);
            return NULL;
        }
        u->s.ssl = SSL_new(ctx);
        if (!u->s.ssl || SSL_set_fd(u->s.ssl, fd) != 1) {
            snprintf(why, 128, "cannot start TLS: out of memory");
            SSL_free(u->s.ssl);
            close(fd);
            free(u);
            return NULL;
        }
        SSL_set_connect_state(u->s.ssl);
        if (uc->server_name) {
            /* upstream.tls.server_name: the name sent and verified. */
            SSL_set_tlsext_host_name(u->s.ssl, uc->server_name);
        } else if (!is_ip_literal(sv->host)) {
            SSL_set_tlsext_host_name(u->s.ssl, sv->host);
        }
        if (uc->tls_verify) {
            SSL_set_verify(u->s.ssl, SSL_VERIFY_PEER, NULL);
            if (uc->server_name) {
                SSL_set1_host(u->s.ssl, uc->server_name);
            } else if (is_ip_literal(sv->host)) {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(u->s.ssl), sv->host);
            } else {
                SSL_set1_host(u->s.ssl, sv->host);
            }
        } else {
            SSL_set_verify(u->s.ssl, SSL_VERIFY_NONE, NULL);
        }
    }
    u->state = UP_CONNECTING;
    return u;
}

static void send_head(struct conn *c, struct upconn *u)
{
    struct request *r = c->req;
    static const char *const strip[] = { "X-Gatehouse-", NULL };
    const struct listener_conf *lc =
        c->ls->index < c->wc->cfg->nlisteners ? &c->wc->cfg->listeners[c->ls->index] : NULL;
    struct http_fwd_opts o = {
        .trust_forwarded = lc && lc->trust_forwarded,
        .websocket = r->route->websocket,
        .via = "gatehouse",
        .strip_prefixes = strip,
    };
    struct http_limits lim = { .header_bytes = 64 * 1024, .headers = 256, .uri_bytes = 0 };
    const struct upstream_server *sv = r->upstream_server;
    char host[300];

    if (r->host.len == 0) {
        snprintf(host, sizeof host, "%s:%u", sv->host, (unsigned)sv->port);
        o.default_host = host;
    }

    u->out.off = u->out.len = 0; /* empty: a reused connection keeps its buffer */
    http_format_upstream_request(&u->out, r, &o);
    u->chunk_up = r->chunked;
    if (!u->hin) {
        u->hin = xmalloc(sizeof *u->hin);
        http_in_init(u->hin, HTTP_RESPONSE, &lim, up_on_body, u);
    } else {
        llhttp_init(&u->hin->p, HTTP_RESPONSE, u->hin->p.settings);
        u->hin->p.data = u->hin;
        http_in_next(u->hin);
    }
    u->hin->skip_body = r->head_method;
}

/* Picks a server and starts (or retries) the exchange. */
static void try_server(struct conn *c)
{
    struct worker *w = c->w;
    struct request *r = c->req;
    const struct route_conf *route = r->route;
    struct balancer *b = c->wc->bal[route->index];
    char why[128];
    int idx;

    for (;;) {
        if (c->retry_same && c->last_server >= 0) {
            idx = c->last_server;
            c->retry_same = false;
        } else {
            idx = balancer_pick(b, str_from(r->client_ip), &c->ex, worker_now_ms(w));
        }
        if (idx < 0 && c->tries > 0) {
            /* Every server was tried: report what went wrong, not availability. */
            upstream_failed(c, c->fail_status ? c->fail_status : 503);
            return;
        }
        if (idx < 0) {
            /* Nothing tried and nothing to pick: every server is at max_conns. */
            request_error_retry(r, 503, "no server of this application is available right now", 1);
            return;
        }
        balance_exclude_add(&c->ex, (size_t)idx);
        c->tries++;
        c->last_server = idx;
        struct upconn *u = NULL;
        struct pool *p = c->wc->pools[route->index][idx];
        if (p && p->idle) {
            u = p->idle;
            pool_unlink(u);
            u->reused = true;
            ev_timer_stop(w->loop, &u->timer);
        } else {
            u = up_connect(c, route->index, (size_t)idx, why);
            if (!u) {
                balancer_report(b, (size_t)idx, false, worker_now_ms(w));
                if (w->mw) {
                    metrics_upstream_error(w->mw, route->metrics_id, METRICS_UPSTREAM_CONNECT);
                }
                log_emit(LOG_WARN, "upstream", r->id, NULL, "%s: %s",
                         route->upstream.servers[idx].url, why);
                c->fail_status = 503;
                if (idempotent(r->method) && c->tries <= route->upstream.retries) {
                    continue;
                }
                upstream_failed(c, 503);
                return;
            }
        }
        u->c = c;
        u->wc = c->wc;
        u->ri = route->index;
        u->si = (size_t)idx;
        c->up = u;
        balancer_conn_start(b, (size_t)idx);
        u->counted = true;
        if (w->mw) {
            metrics_pool_add(w->mw, 0, 1);
        }
        r->upstream_server = &route->upstream.servers[idx];
        send_head(c, u);
        if (u->state == UP_IDLE) {
            up_became_active(u);
        } else {
            up_set_timer(u, c->wc->cfg->timeouts.upstream_connect_ms);
            up_update_io(u);
        }
        return;
    }
}

/* Drops the client headers the route's policy keeps from the backend
 * (upgrade.c says which). */
static void scrub_client_headers(struct request *r)
{
    const struct hdr_policy hp = {
        .allow_underscores = r->route->allow_underscores,
        .allow_override_headers = r->route->allow_override_headers,
    };
    size_t out = 0;

    for (size_t i = 0; i < r->nheaders; i++) {
        if (!hdr_client_dropped(r->headers[i].name, &hp)) {
            r->headers[out++] = r->headers[i];
        }
    }
    r->nheaders = out;
}

static void forward_start(struct conn *c)
{
    struct request *r = c->req;

    c->state = CS_FORWARD;
    memset(&c->ex, 0, sizeof c->ex);
    c->tries = 0;
    c->fail_status = 0;
    c->last_server = -1;
    c->retry_same = false;
    scrub_client_headers(r);
    if (r->upgrade && r->route->websocket) {
        const char *why = NULL;
        enum ws_check wc = ws_check_request(r, &why);
        if (wc == WS_BAD) {
            log_emit(LOG_INFO, "http", r->id, NULL, "WebSocket handshake refused: %s", why);
            c->keep_alive = false;
            request_error(r, 400, why);
            return;
        }
        if (wc == WS_NOT_WEBSOCKET) {
            r->upgrade = false; /* h2c and the like: never a tunnel past policy */
        }
    }
    if (r->upgrade && !r->route->websocket) {
        /* Not a WebSocket route: an ordinary request; Upgrade is dropped. */
        r->upgrade = false;
    }
    if (!r->upgrade) {
        if (c->upgrade_pending) {
            llhttp_resume_after_upgrade(&c->hin->p);
            c->upgrade_pending = false;
        }
    }
    if (r->expect_continue && r->has_body) {
        /* We read the body only once an upstream connection is ready; tell
         * the client to go ahead (RFC 9110 §10.1.1). */
        buf_append_str(&c->out, STR("HTTP/1.1 100 Continue\r\n\r\n"));
        conn_queue_out(c);
    }
    try_server(c);
}

/* ---- request body -------------------------------------------------------- */

static void forward_body(struct conn *c, const char *p, size_t n)
{
    struct upconn *u = c->up;

    if (!u || n == 0) {
        return;
    }
    if (u->chunk_up) {
        buf_append_hex(&u->out, n);
        buf_append(&u->out, "\r\n", 2);
        buf_append(&u->out, p, n);
        buf_append(&u->out, "\r\n", 2);
    } else {
        buf_append(&u->out, p, n);
    }
}

static void up_push(struct upconn *u)
{
    if (!up_flush(u)) {
        /* The head not written: the server could not be reached. */
        if (u->head_unsent) {
            up_fail(u, FAIL_CONNECT, "write failed");
        } else {
            up_fail(u, FAIL_RESPONSE, "write to upstream failed");
        }
        return;
    }
    if (buf_pending(&u->out) == 0) {
        u->head_unsent = false;
    }
    up_update_io(u);
}

static void forward_body_flush(struct conn *c)
{
    if (c->up && c->up->state == UP_ACTIVE && buf_pending(&c->up->out) > 0) {
        up_push(c->up);
    }
}

static void forward_body_end(struct conn *c)
{
    struct upconn *u = c->up;

    if (!u) {
        return;
    }
    if (u->chunk_up) {
        buf_append_str(&u->out, STR("0\r\n\r\n"));
    }
    up_set_timer(u, c->wc->cfg->timeouts.upstream_response_ms);
    up_push(u);
}

static void forward_client_writable(struct conn *c)
{
    if (c->up) {
        up_update_io(c->up);
        /* Bytes may already wait in our buffer. */
        if (buf_pending(&c->up->in) > 0 && !c->up->tunnel) {
            ev_feed_event(c->w->loop, &c->up->io, EV_READ);
        }
    }
}

static void forward_abort(struct conn *c)
{
    struct upconn *u = c->up;

    if (!u) {
        return;
    }
    up_detach(u);
    up_close(u);
}

static void forward_tunnel_in(struct conn *c)
{
    struct upconn *u = c->up;

    if (!u) {
        return;
    }
    buf_append(&u->out, c->in.p + c->in.off, buf_pending(&c->in));
    if (c->req) {
        c->req->bytes_in += buf_pending(&c->in);
    }
    buf_consume(&c->in, buf_pending(&c->in));
    up_set_timer(u, c->wc->cfg->timeouts.idle_ms);
    up_push(u);
}

static void forward_tunnel_eof(struct conn *c)
{
    struct upconn *u = c->up;

    if (u) {
        up_flush(u);
        up_detach(u);
        up_close(u);
    }
    conn_close(c);
}

/* ---- response ---------------------------------------------------------- */

static int up_on_body(void *arg, const char *p, size_t n)
{
    struct upconn *u = arg;
    struct conn *c = u->c;

    if (!c || n == 0) {
        return 0;
    }
    if (c->chunk_to_client) {
        buf_append_hex(&c->out, n);
        buf_append(&c->out, "\r\n", 2);
        buf_append(&c->out, p, n);
        buf_append(&c->out, "\r\n", 2);
        c->out_total += n + 4;
    } else {
        buf_append(&c->out, p, n);
        c->out_total += n;
    }
    c->req->bytes_out += n;
    return 0;
}

/* A response head is parsed. Returns false when u was closed. */
static bool on_resp_head(struct upconn *u)
{
    struct conn *c = u->c;
    struct request *r = c->req;
    const char *base = u->in.p + u->in.off;
    int status = u->hin->p.status_code;
    size_t before = buf_pending(&c->out);

    if (status >= 100 && status < 200 && status != 101) {
        /* Interim: 100 was already sent by us when the client asked; pass
         * others (103) to HTTP/1.1 clients. */
        if (status != 100 && r->http_minor >= 1) {
            struct http_resp_opts o = { .client_minor = 1, .via = "gatehouse" };
            http_format_response(&c->out, u->hin, base, &o);
            c->out_total += buf_pending(&c->out) - before;
        }
        return true;
    }
    if (status == 101 && !(r->upgrade && r->route->websocket)) {
        c->keep_alive = false;
        up_fail(u, FAIL_RESPONSE, "101 Switching Protocols to a request without Upgrade");
        return false;
    }
    if (status == 101 && !ws_check_response(r, u->hin, base)) {
        /* Not the answer to our handshake (another protocol, or a server that
         * never read the key): no tunnel, and the connection cannot continue. */
        c->keep_alive = false;
        up_fail(u, FAIL_RESPONSE,
                "101 Switching Protocols without a matching "
                "Sec-WebSocket-Accept");
        return false;
    }
    u->head_done = true;
    r->upstream_us = mono_us() - u->sent_us;
    if (u->w->mw) {
        metrics_upstream_latency(u->w->mw, r->route->metrics_id, r->upstream_us);
    }
    balancer_report(u->wc->bal[u->ri], u->si, true, worker_now_ms(u->w));
    struct http_resp_opts o = {
        .client_minor = r->http_minor,
        .head_method = r->head_method,
        .keep_alive = c->keep_alive && !c->w->draining,
        .request_id = r->id,
        .via = "gatehouse",
    };
    http_format_response(&c->out, u->hin, base, &o);
    c->out_total += buf_pending(&c->out) - before;
    c->chunk_to_client = o.chunk_to_client;
    c->close_after = o.close_after;
    c->resp_started = true;
    r->status = status;
    return true;
}

static void on_resp_done(struct upconn *u)
{
    struct conn *c = u->c;
    bool reusable = llhttp_should_keep_alive(&u->hin->p) && c->req_done && !c->close_after &&
                    !llhttp_message_needs_eof(&u->hin->p) && buf_pending(&u->in) == 0;

    if (c->chunk_to_client) {
        buf_append_str(&c->out, STR("0\r\n\r\n"));
        c->out_total += 5;
    }
    u->done = true;
    conn_hold(c);
    if (reusable) {
        pool_put(u);
    } else {
        up_detach(u);
        up_close(u);
    }
    /* The client half writes it now, or with the answers to the pipelined
     * requests that wait behind it. */
    conn_response_done(c);
    conn_put(c);
}

static void start_tunnel(struct upconn *u)
{
    struct conn *c = u->c;

    u->tunnel = true;
    c->state = CS_TUNNEL;
    c->req_done = true;
    /* Bytes the server sent after its 101 belong to the new protocol. */
    if (buf_pending(&u->in) > 0) {
        buf_append(&c->out, u->in.p + u->in.off, buf_pending(&u->in));
        c->out_total += buf_pending(&u->in);
        buf_consume(&u->in, buf_pending(&u->in));
    }
    up_set_timer(u, c->wc->cfg->timeouts.idle_ms);
    ev_timer_stop(c->w->loop, &c->timer);
    c->timer.repeat = (ev_tstamp)c->wc->cfg->timeouts.idle_ms / 1000.0;
    ev_timer_again(c->w->loop, &c->timer);
    conn_queue_out(c);
    if (!c->closed && buf_pending(&c->in) > 0) {
        forward_tunnel_in(c);
    }
}

/* Parses what u->in holds. Returns false when u was closed. */
static bool up_parse(struct upconn *u)
{
    bool after_head = false;

    while (u->c && !u->done && (buf_pending(&u->in) > 0 || after_head)) {
        struct conn *c = u->c;
        after_head = false;
        if (buf_pending(&c->out) >= IO_HIGH_WATER) {
            return true;
        }
        /* Feed at most one read's worth at a time so a fast server cannot
         * grow the client's buffer far past the bound. */
        size_t avail = buf_pending(&u->in);
        if (u->head_done && avail > IO_READ_CHUNK) {
            avail = IO_READ_CHUNK;
        }
        enum http_in_rc rc = http_in_feed(u->hin, u->in.p + u->in.off, avail);
        switch (rc) {
        case HTTP_IN_MORE:
            if (u->head_done || !u->hin->in_head) {
                buf_consume(&u->in, u->hin->pos);
                http_in_rebase(u->hin);
            }
            if (avail == buf_pending(&u->in) || avail == 0) {
                return true;
            }
            continue;
        case HTTP_IN_HEAD:
            if (!on_resp_head(u)) {
                return false;
            }
            buf_consume(&u->in, u->hin->pos);
            http_in_rebase(u->hin);
            /* A message without a body completes on the next feed, even
             * with no further bytes. */
            after_head = true;
            continue;
        case HTTP_IN_DONE:
            buf_consume(&u->in, u->hin->pos);
            http_in_rebase(u->hin);
            if (!u->head_done) {
                continue; /* an interim response ended; the final one follows */
            }
            on_resp_done(u);
            return false;
        case HTTP_IN_UPGRADE:
            buf_consume(&u->in, u->hin->pos);
            http_in_rebase(u->hin);
            start_tunnel(u);
            return !u->closed;
        case HTTP_IN_ERROR:
        default: {
            char why[160];
            snprintf(why, sizeof why, "invalid response: %s",
                     u->hin->reason ? u->hin->reason : "?");
            if (u->head_done) {
                /* Part of the response is already with the client: the only
                 * honest signal left is to cut the connection. */
                u->c->keep_alive = false;
            }
            up_fail(u, FAIL_RESPONSE, why);
            return false;
        }
        }
    }
    return true;
}

static void up_read(struct upconn *u)
{
    for (int i = 0; i < 4 && !u->closed; i++) {
        if (u->state == UP_ACTIVE && u->c && buf_pending(&u->c->out) >= IO_HIGH_WATER) {
            return;
        }
        buf_reserve(&u->in, IO_READ_CHUNK);
        size_t room = u->in.cap - u->in.len;
        ssize_t n = sock_read(&u->s, u->in.p + u->in.len, room);
        if (n > 0) {
            u->in.len += (size_t)n;
            /* A short read with nothing buffered in TLS drained the socket. */
            bool drained = (size_t)n < room && !sock_has_pending(&u->s);
            if (u->state == UP_IDLE) {
                /* Unsolicited bytes on an idle connection: never reuse it. */
                pool_unlink(u);
                up_close(u);
                return;
            }
            u->got_bytes = true;
            if (u->tunnel) {
                struct conn *c = u->c;
                buf_append(&c->out, u->in.p + u->in.off, buf_pending(&u->in));
                c->out_total += buf_pending(&u->in);
                buf_consume(&u->in, buf_pending(&u->in));
                up_set_timer(u, c->wc->cfg->timeouts.idle_ms);
                conn_queue_out(c);
                if (drained) {
                    break;
                }
                continue;
            }
            up_set_timer(u, u->c->wc->cfg->timeouts.upstream_response_ms);
            if (!up_parse(u)) {
                return;
            }
            if (u->c) {
                conn_queue_out(u->c);
            }
            if (drained) {
                break;
            }
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            if (u->state == UP_IDLE) {
                pool_unlink(u);
                up_close(u);
                return;
            }
            struct conn *c = u->c;
            if (u->tunnel) {
                conn_hold(c);
                up_detach(u);
                up_close(u);
                c->keep_alive = false;
                c->state = CS_CLOSING;
                conn_queue_out(c);
                conn_put(c);
                return;
            }
            if (n == 0 && u->got_bytes && u->hin->p.finish != HTTP_FINISH_SAFE) {
                if (http_in_eof(u->hin) == HTTP_IN_DONE && u->head_done) {
                    /* Close-delimited body: complete, never reusable. */
                    u->hin->p.flags &= (uint16_t)~F_CONNECTION_KEEP_ALIVE;
                    c->close_after = c->close_after || !c->chunk_to_client;
                    on_resp_done(u);
                    return;
                }
            }
            up_fail(u, FAIL_RESPONSE,
                    n == 0 ? "connection closed before a complete response" : strerror(errno));
            return;
        }
        break;
    }
}

static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct upconn *u = (struct upconn *)((char *)io - offsetof(struct upconn, io));
    struct conn *c = u->c;

    (void)loop;
    up_hold(u);
    if (c) {
        conn_hold(c);
    }
    switch (u->state) {
    case UP_CONNECTING:
        up_connected(u);
        break;
    case UP_HANDSHAKE:
        up_handshake(u);
        break;
    case UP_IDLE:
        up_read(u);
        break;
    case UP_ACTIVE:
        if (revents & EV_WRITE || (u->s.wr_wants_read && (revents & EV_READ))) {
            if (!up_flush(u)) {
                up_fail(u, FAIL_RESPONSE, "write to upstream failed");
                break;
            }
            if (c && !c->closed && buf_pending(&u->out) < IO_HIGH_WATER) {
                /* Room again: pull more request body (or tunnel bytes). */
                conn_process(c);
            }
        }
        if (!u->closed && u->c == c && (revents & EV_READ || u->s.rd_wants_write)) {
            up_read(u);
        }
        break;
    }
    if (c) {
        if (!c->closed && c->up && c->up == u && !u->closed) {
            up_update_io(u);
        }
        if (!c->closed) {
            conn_update_io(c);
        }
        conn_put(c);
    } else if (!u->closed && u->state == UP_IDLE) {
        up_update_io(u);
    }
    up_put(u);
}

static void up_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct upconn *u = (struct upconn *)((char *)t - offsetof(struct upconn, timer));

    (void)loop;
    (void)revents;
    ev_timer_stop(u->w->loop, &u->timer);
    if (u->state == UP_IDLE) {
        pool_unlink(u);
        up_close(u);
        return;
    }
    if (u->tunnel && u->c) {
        struct conn *c = u->c;
        conn_hold(c);
        up_detach(u);
        up_close(u);
        conn_close(c);
        conn_put(c);
        return;
    }
    up_fail(u, FAIL_TIMEOUT, u->state == UP_ACTIVE ? "response timed out" : "connect timed out");
}

const struct upstream_half forward_half = {
    .start = forward_start,
    .body = forward_body,
    .body_flush = forward_body_flush,
    .body_end = forward_body_end,
    .body_ready = forward_body_ready,
    .client_writable = forward_client_writable,
    .tunnel_in = forward_tunnel_in,
    .tunnel_eof = forward_tunnel_eof,
    .abort = forward_abort,
};
