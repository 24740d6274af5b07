/* proxy/conn.c - the client half of one connection on a worker loop: TLS
 * handshake, buffers (allocated lazily, released when idle), timeouts, the
 * HTTP/1 request reader, and the request pipeline: parse head -> limits ->
 * route match -> reserved paths -> access check (access_hook.c) -> forward.
 * The upstream half (forward.c) is reached only through the struct
 * upstream_half installed at start, the admin listener's endpoints only
 * through the installed conn_local_fn; sockets are sock.c's. Local responses
 * (error pages, admin) go through request_respond(). request_end() is the one
 * place a request's arena, snapshot reference, log line and metrics end.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "io.h"
#include "metrics.h"
#include "core/mem.h"
#include "core/normpath.h"
#include "route.h"

/* The arena cap per request: headers, ids, and what authn/policy attach. */
#define REQUEST_ARENA_CAP (1024 * 1024)
/* Lingering close: after our last byte, keep reading (and dropping) what the
 * client still sends for this long, so its unread data does not turn our
 * close into a reset that destroys the response in flight. */
#define LINGER_MS 2000
/* Pipelined responses leave together: a response completed while further
 * requests of the client wait in the input buffer is held, up to this many
 * bytes of output and this long, so that one write (one TLS record) carries
 * the answers of a pipelined batch instead of one write each. */
#define PIPELINE_HOLD_BYTES (16 * 1024)
#define PIPELINE_HOLD_MS    5

/* The upstream half (conn_upstream_install): NULL means nothing is
 * forwarded, an allowed request gets 502 (fail closed). Only the half sets
 * c->up, so every other call is made under c->up and needs no NULL check.
 * The admin listener's endpoints (conn_admin_install; NULL: 404). */
static const struct upstream_half *g_up;
static conn_local_fn *g_admin;

/* Open admin listener connections per worker (health checks and scrapes). */
#define ADMIN_CONNS_MAX 64

void conn_upstream_install(const struct upstream_half *up)
{
    g_up = up;
}

void conn_admin_install(conn_local_fn *fn)
{
    g_admin = fn;
}

/* Whether the upstream half takes request body (or tunnel) bytes now. */
static bool up_ready(const struct conn *c)
{
    return c->up && g_up->body_ready(c);
}

/* ---- lifetime --------------------------------------------------------- */

/* An idle keep-alive connection gives its parser back (release_idle) and takes
 * one again with its next request: this thread's last few wait here, so the
 * idle/wake cycle costs no malloc and free, and an idle connection no parser. */
static __thread struct mem_cache hin_cache;

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;

    if (c->prev) {
        c->prev->next = c->next;
    } else if (w->conns == c) {
        w->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    buf_free(&c->in);
    buf_free(&c->out);
    if (c->hin) {
        http_in_fini(c->hin);
        mem_cache_put(&hin_cache, c->hin, sizeof *c->hin);
    }
    arena_free(c->arena);
    free(c);
}

void conn_hold(struct conn *c)
{
    c->refs++;
}

void conn_put(struct conn *c)
{
    if (--c->refs == 0 && c->closed) {
        conn_free(c);
    }
}

static void set_timer(struct conn *c, uint64_t ms)
{
    c->timer.repeat = (ev_tstamp)ms / 1000.0;
    ev_timer_again(c->w->loop, &c->timer);
}

static void request_end(struct conn *c);

void conn_close(struct conn *c)
{
    struct worker *w = c->w;

    if (c->closed) {
        return;
    }
    if (c->up) {
        g_up->abort(c);
    }
    if (c->req) {
        if (c->state == CS_PENDING && c->abort_fn) {
            request_abort_fn *fn = c->abort_fn;
            c->abort_fn = NULL;
            fn(c->abort_arg);
        }
        c->keep_alive = false;
        request_end(c);
    }
    c->closed = true;
    ev_io_stop(w->loop, &c->io);
    ev_timer_stop(w->loop, &c->timer);
    ev_timer_stop(w->loop, &c->hold_timer);
    if (c->s.ssl) {
        SSL_free(c->s.ssl);
        c->s.ssl = NULL;
    }
    close(c->s.fd);
    if (c->ls->admin) {
        w->nadmin--;
    } else {
        w->nconns--;
    }
    if (w->mw) {
        metrics_conn_close(w->mw);
    }
    conn_hold(c);
    conn_put(c);
}

/* ---- I/O readiness ---------------------------------------------------- */

static bool wants_read(const struct conn *c)
{
    if (c->client_eof) {
        return false;
    }
    switch (c->state) {
    case CS_IDLE:
    case CS_HEAD:
        return buf_pending(&c->out) < IO_HIGH_WATER;
    case CS_FORWARD:
        if (c->req_done) {
            /* Keep reading (a bounded amount): it notices a client that
             * goes away, picks up pipelined requests, and avoids re-arming
             * the descriptor on every request. */
            return buf_pending(&c->in) < IO_READ_CHUNK;
        }
        return up_ready(c);
    case CS_TUNNEL:
        return up_ready(c);
    case CS_PENDING:
        return c->collect_cb && !c->req_done;
    case CS_LINGER:
        return true;
    default:
        return false;
    }
}

void conn_update_io(struct conn *c)
{
    int ev = 0;

    if (c->closed) {
        return;
    }
    if (c->handshaking) {
        ev = c->hs_want;
    } else {
        bool rd = wants_read(c);
        bool wr = buf_pending(&c->out) > 0 && !c->out_held;
        if (rd) {
            ev |= EV_READ;
            if (c->s.rd_wants_write) {
                ev |= EV_WRITE;
            }
        }
        if (wr) {
            ev |= EV_WRITE;
            if (c->s.wr_wants_read) {
                ev |= EV_READ;
            }
        }
        if (rd && sock_has_pending(&c->s)) {
            ev_feed_event(c->w->loop, &c->io, EV_READ);
        }
    }
    if (ev != c->io_events) {
        ev_io_stop(c->w->loop, &c->io);
        ev_io_set(&c->io, c->s.fd, ev);
        if (ev) {
            ev_io_start(c->w->loop, &c->io);
        }
        c->io_events = ev;
    }
}

static void start_linger(struct conn *c)
{
    if (c->s.ssl) {
        ERR_clear_error();
        SSL_shutdown(c->s.ssl);
    }
    shutdown(c->s.fd, SHUT_WR);
    c->state = CS_LINGER;
    buf_free(&c->in);
    set_timer(c, LINGER_MS);
}

/* Writes what is queued. Returns false when the connection was closed. */
static bool flush_out(struct conn *c)
{
    int wrote = sock_flush(&c->s, &c->out);
    if (wrote < 0) {
        conn_close(c);
        return false;
    }
    c->progress = c->progress || wrote > 0;
    if (buf_pending(&c->out) == 0) {
        /* The empty buffer is kept while the connection is busy; an idle
         * one gives it back (release_idle). */
        if (c->out.cap > 4 * IO_READ_CHUNK) {
            buf_free(&c->out);
        } else if (c->state == CS_IDLE && buf_pending(&c->in) == 0) {
            buf_release(&c->out); /* idle keep-alive: no buffer memory */
        }
        if (c->state == CS_CLOSING) {
            start_linger(c);
        }
    }
    return true;
}

/* Ends a pipelined hold (the output may leave now). */
static void hold_end(struct conn *c)
{
    if (c->out_held) {
        c->out_held = false;
        ev_timer_stop(c->w->loop, &c->hold_timer);
    }
}

static void hold_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, hold_timer));

    (void)loop;
    (void)revents;
    hold_end(c); /* stops the timer: ev_timer_again made it a repeating one */
    conn_queue_out(c);
}

void conn_queue_out(struct conn *c)
{
    if (c->closed) {
        return;
    }
    if (c->in_process) {
        return; /* written when the pass over the input ends (conn_process) */
    }
    if (c->out_held) {
        if (buf_pending(&c->out) < PIPELINE_HOLD_BYTES) {
            return; /* written with the answers to the pipelined requests */
        }
        hold_end(c);
    }
    conn_hold(c);
    if (flush_out(c) && !c->closed) {
        if (c->state == CS_FORWARD || c->state == CS_TUNNEL) {
            if (buf_pending(&c->out) < IO_HIGH_WATER) {
                if (c->up) {
                    g_up->client_writable(c);
                }
            }
        }
        conn_update_io(c);
    }
    conn_put(c);
}

/* ---- requests --------------------------------------------------------- */

static int conn_on_body(void *arg, const char *p, size_t n);

/* Starts a request on c; false when its state does not fit in a fresh arena
 * (a cap below sizeof struct request: the connection is closed). */
static bool begin_request(struct conn *c)
{
    struct worker *w = c->w;
    struct request *r;

    if (!c->arena) {
        c->arena = arena_new(REQUEST_ARENA_CAP);
    }
    if (!c->hin) {
        const struct config *cfg = w->wc->cfg;
        struct http_limits lim = {
            .header_bytes = cfg->limits.header_bytes,
            .headers = cfg->limits.headers,
            .uri_bytes = cfg->limits.uri_bytes ? cfg->limits.uri_bytes : 8192,
            .body_bytes = c->ls->admin ? 0 : cfg->limits.body_bytes,
        };
        c->hin = mem_cache_get(&hin_cache, sizeof *c->hin);
        http_in_init(c->hin, HTTP_REQUEST, &lim, conn_on_body, c);
    }
    r = arena_zalloc(c->arena, sizeof *r);
    if (!r) {
        log_error("conn", "worker %u: the request arena cannot hold a request: closing %s", w->id,
                  c->ip);
        return false;
    }
    c->wc = w->wc;
    c->wc->refs++;
    r->arena = c->arena;
    r->cfg = c->wc->cfg;
    r->scheme = c->s.ssl ? "https" : "http";
    memcpy(r->client_ip, c->ip, sizeof r->client_ip);
    r->client_port = c->port;
    if (c->s.ssl) {
        /* Fail closed: an optional client certificate that did not verify is
         * as good as none. */
        if (SSL_get_verify_result(c->s.ssl) == X509_V_OK) {
            r->peer_cert = SSL_get0_peer_certificate(c->s.ssl);
        }
        r->sni = SSL_get_servername(c->s.ssl, TLSEXT_NAMETYPE_host_name);
    }
    worker_request_id(w, r->id);
    r->start_us = mono_us();
    r->conn = c;
    r->method = STR("");
    r->target = r->path = r->query = r->host = r->hostname = r->raw_target = STR("");
    r->path_encoded_slash = false;
    c->req = r;
    c->req_done = c->resp_done = c->resp_started = false;
    c->chunk_to_client = c->close_after = false;
    c->out_total = 0;
    c->head_bytes_in = 0;
    c->abort_fn = NULL;
    c->state = CS_HEAD;
    set_timer(c, c->wc->cfg->timeouts.header_ms);
    return true;
}

static void request_end(struct conn *c)
{
    struct worker *w = c->w;
    struct request *r = c->req;
    unsigned route_id = r->route ? r->route->metrics_id : METRICS_ROUTE_NONE;
    uint64_t end = mono_us();

    if (w->mw && !c->ls->admin && r->status != 0) {
        metrics_request(w->mw, route_id, (unsigned)r->status, c->head_bytes_in + r->bytes_in,
                        c->out_total);
    }
    if (w->alog && r->status != 0 && !c->ls->admin) {
        request_log(r, w->alog, c->head_bytes_in + r->bytes_in, c->out_total, end);
    }
    /* Nothing of this request may outlive it: a stale abort or body callback
     * would point into the freed arena. */
    c->abort_fn = NULL;
    c->collect_cb = NULL;
    buf_free(&c->collect);
    c->req = NULL;
    c->abort_fn = NULL;
    arena_reset(c->arena);
    wcfg_unref(w, c->wc);
    c->wc = NULL;
}

/* Frees what an idle keep-alive connection does not need. */
static void release_idle(struct conn *c)
{
    buf_release(&c->in);
    buf_release(&c->out);
    arena_free(c->arena);
    c->arena = NULL;
    if (c->hin) {
        http_in_fini(c->hin);
        mem_cache_put(&hin_cache, c->hin, sizeof *c->hin);
        c->hin = NULL;
    }
}

/* The response is complete and the request fully read (or abandoned). */
static void finish(struct conn *c)
{
    struct worker *w = c->w;
    bool clean = c->req_done;

    request_end(c);
    if (c->closed) {
        return;
    }
    if (!c->keep_alive || !clean || w->draining || c->close_after) {
        c->state = CS_CLOSING;
        if (buf_pending(&c->out) == 0) {
            start_linger(c);
        } else {
            /* A client that stops reading our last bytes is dropped. */
            set_timer(c, w->wc->cfg->timeouts.idle_ms);
        }
        conn_update_io(c);
        return;
    }
    c->state = CS_IDLE;
    if (c->upgrade_pending) {
        /* The Upgrade was not taken (no 101): HTTP/1.1 continues. */
        llhttp_resume_after_upgrade(&c->hin->p);
        c->upgrade_pending = false;
    }
    http_in_next(c->hin);
    if (buf_pending(&c->in) == 0) {
        /* Idle keep-alive: give the memory back until the next request, so
         * idle connections cost no buffer memory (allocating again is cheaper
         * than holding 20 KiB per idle connection; measured). */
        release_idle(c);
        set_timer(c, w->wc->cfg->timeouts.idle_ms);
    }
    conn_update_io(c);
}

/* Whether the input buffer holds the whole head of a next (pipelined) request:
 * its answer can follow at once. */
static bool next_head_buffered(const struct conn *c)
{
    size_t n = buf_pending(&c->in);
    return n >= 4 && memmem(c->in.p + c->in.off, n, "\r\n\r\n", 4) != NULL;
}

void conn_response_done(struct conn *c)
{
    c->resp_done = true;
    if (!c->req_done) {
        /* The body was not read to its end: the connection cannot carry
         * another request. */
        c->keep_alive = false;
    }
    if (c->keep_alive && !c->close_after && !c->w->draining && next_head_buffered(c) &&
        buf_pending(&c->out) < PIPELINE_HOLD_BYTES) {
        /* Pipelined requests wait: answer them first, then write the lot. */
        if (!c->out_held) {
            c->out_held = true;
            c->hold_timer.repeat = PIPELINE_HOLD_MS / 1000.0;
            ev_timer_again(c->w->loop, &c->hold_timer);
        }
    } else {
        /* Write first: the response usually leaves in one send, and the
         * client's descriptor then needs no EV_WRITE round trip. */
        hold_end(c);
        conn_queue_out(c);
        if (c->closed) {
            return;
        }
    }
    finish(c);
    if (!c->closed && c->state == CS_IDLE && buf_pending(&c->in) > 0 && !c->in_process) {
        conn_process(c);
    }
}

/* Whether the preformatted header lines in extra start one named name. */
static bool extra_has(const char *extra, struct str name)
{
    for (const char *p = extra; p && *p;) {
        /* strncasecmp stops at a shorter line's NUL, so p[name.len] is in bounds. */
        if (strncasecmp(p, name.p, name.len) == 0 && p[name.len] == ':') {
            return true;
        }
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : NULL;
    }
    return false;
}

/* Gatehouse's own pages are never framed, sniffed, cached, or a referrer;
 * they load nothing but their own stylesheet and images. */
static void security_headers(struct conn *c, struct request *r, const char *extra)
{
    const char *fa = access_form_action(r);

    buf_append_str(&c->out, STR("Content-Security-Policy: default-src 'none'; style-src 'self'; "
                                "img-src 'self'; form-action 'self'"));
    if (fa && *fa) {
        buf_append(&c->out, " ", 1);
        buf_append_cstr(&c->out, fa);
    }
    buf_append_str(&c->out, STR("; frame-ancestors 'none'; base-uri 'none'\r\n"
                                "X-Frame-Options: DENY\r\n"
                                "X-Content-Type-Options: nosniff\r\n"
                                "Referrer-Policy: no-referrer\r\n"));
    if (!extra_has(extra, STR("cache-control"))) {
        buf_append_str(&c->out, STR("Cache-Control: no-store\r\n"));
    }
}

void request_respond(struct request *r, int status, const char *content_type, struct str body,
                     const char *extra_headers)
{
    struct conn *c = r->conn;
    bool no_body = r->head_method || status == 204 || status == 304 || status < 200;
    size_t before = c->out.len - c->out.off;

    if (c->resp_started || c->closed) {
        return;
    }
    if (!c->req_done) {
        c->keep_alive = false;
    }
    c->state = CS_LOCAL;
    c->resp_started = true;
    r->status = status;
    buf_printf(&c->out, "HTTP/1.1 %d %s\r\n", status, http_reason(status));
    if (content_type) {
        buf_printf(&c->out, "Content-Type: %s\r\n", content_type);
    }
    if (status >= 200 && status != 204 && status != 304) {
        buf_printf(&c->out, "Content-Length: %zu\r\n", body.len);
    }
    buf_printf(&c->out, "X-Request-Id: %s\r\n", r->id);
    if (extra_headers) {
        buf_append_str(&c->out, str_from(extra_headers));
    }
    security_headers(c, r, extra_headers);
    if (!c->keep_alive || c->w->draining) {
        buf_append_str(&c->out, STR("Connection: close\r\n"));
    } else if (r->http_minor == 0) {
        buf_append_str(&c->out, STR("Connection: keep-alive\r\n"));
    }
    buf_append(&c->out, "\r\n", 2);
    if (!no_body) {
        buf_append_str(&c->out, body);
    }
    c->out_total += buf_pending(&c->out) - before;
    conn_hold(c);
    conn_response_done(c);
    conn_put(c);
}

void request_error(struct request *r, int status, const char *detail)
{
    request_error_retry(r, status, detail, 0);
}

void request_error_retry(struct request *r, int status, const char *detail, unsigned retry_after_s)
{
    char extra[40] = "";
    struct conn *c = r->conn;
    struct buf body = { 0 };
    const char *ctype = NULL;
    struct str accept = request_header(r, STR("accept"), NULL);
    struct str xrw = request_header(r, STR("x-requested-with"), NULL);

    if (!accept.p && r->nheaders == 0 && c->hin && c->state != CS_IDLE) {
        /* The head failed to parse: its bytes are still unconsumed in the
         * input buffer, so the Accept header (if it came) can still pick the
         * page format. */
        size_t avail = buf_pending(&c->in);
        for (size_t i = 0; i < c->hin->nhdr; i++) {
            const struct http_hdr_off *o = &c->hin->hdr[i];
            if ((size_t)o->name_off + o->name_len > avail ||
                (size_t)o->value_off + o->value_len > avail) {
                break;
            }
            struct str name = http_in_name(c->hin, c->in.p + c->in.off, i);
            if (str_ieq(name, STR("accept"))) {
                accept = http_in_value(c->hin, c->in.p + c->in.off, i);
            } else if (str_ieq(name, STR("x-requested-with"))) {
                xrw = http_in_value(c->hin, c->in.p + c->in.off, i);
            }
        }
    }
    bool html = http_wants_html(accept, xrw);

    /* Framing errors and timeouts leave the byte stream in an unknown state:
     * answer and close (RFC 9112 §11.2). */
    if (status == 400 || status == 408 || status == 413 || status == 414 || status == 431 ||
        status == 417) {
        c->keep_alive = false;
    }
    if (retry_after_s) {
        snprintf(extra, sizeof extra, "Retry-After: %u\r\n", retry_after_s);
    }
    /* 5xx pages for browsers: the sign-in pages' error template and style. */
    if (!html || status < 500 ||
        !pages_error_template(&body, status, detail, r->id, r->path, r->arena)) {
        pages_error(&body, &ctype, status, detail, r->id, html);
    } else {
        ctype = "text/html; charset=utf-8";
    }
    request_respond(r, status, ctype, (struct str){ body.p, buf_pending(&body) },
                    extra[0] ? extra : NULL);
    buf_free(&body);
}

enum access_step request_read_body(struct request *r, size_t max_bytes, request_body_fn *cb,
                                   void *arg)
{
    struct conn *c = r->conn;

    if (!r->has_body || c->req_done) {
        cb(r, STR(""), arg);
        return ACCESS_RESPOND;
    }
    if (r->has_content_length && r->content_length > max_bytes) {
        request_error(r, 413, "request body too large for this endpoint");
        return ACCESS_RESPOND;
    }
    c->collect_cb = cb;
    c->collect_arg = arg;
    c->collect_max = max_bytes;
    c->collect_over = false;
    return ACCESS_PENDING;
}

/* Feeds the body of a request whose local endpoint collects it (state
 * CS_PENDING with collect_cb set). Returns false when processing must stop. */
static bool collect_body(struct conn *c)
{
    enum http_in_rc rc = http_in_feed(c->hin, c->in.p + c->in.off, buf_pending(&c->in));

    buf_consume(&c->in, c->hin->pos);
    http_in_rebase(c->hin);
    if (c->closed) {
        return false;
    }
    if (rc == HTTP_IN_MORE) {
        return false;
    }
    request_body_fn *cb = c->collect_cb;
    c->collect_cb = NULL;
    c->abort_fn = NULL;
    if (rc == HTTP_IN_ERROR) {
        c->keep_alive = false;
        request_error(c->req, c->hin->status ? c->hin->status : 400, c->hin->reason);
    } else {
        c->req_done = true;
        if (c->collect_over) {
            request_error(c->req, 413, "request body too large for this endpoint");
        } else {
            cb(c->req,
               (struct str){ c->collect.p ? c->collect.p + c->collect.off : "",
                             buf_pending(&c->collect) },
               c->collect_arg);
        }
    }
    buf_free(&c->collect);
    return !c->closed;
}

void request_on_abort(struct request *r, request_abort_fn *fn, void *arg)
{
    struct conn *c = r->conn;
    c->abort_fn = fn;
    c->abort_arg = arg;
}

static void after_access(struct conn *c, enum access_step step)
{
    struct request *r = c->req;

    switch (step) {
    case ACCESS_ALLOW:
        if (g_up) {
            g_up->start(c);
        } else {
            request_error(r, 502, "this server forwards no requests");
        }
        break;
    case ACCESS_PENDING:
        c->state = CS_PENDING;
        set_timer(c, c->wc->cfg->timeouts.upstream_response_ms);
        break;
    case ACCESS_RESPOND:
    default:
        if (!c->resp_started) {
            request_error(r, 403, "access denied");
        }
        break;
    }
}

void request_resume(struct request *r, enum access_step step)
{
    struct conn *c = r->conn;

    if (c->closed || c->req != r || c->state != CS_PENDING) {
        return;
    }
    conn_hold(c);
    c->abort_fn = NULL;
    c->state = CS_HEAD; /* not forwarding yet; after_access decides */
    if (step == ACCESS_PENDING) {
        step = ACCESS_RESPOND;
    }
    after_access(c, step);
    if (!c->closed) {
        conn_process(c);
        conn_update_io(c);
    }
    conn_put(c);
}

/* The head is parsed: run the pipeline stages up to forwarding. */
static void handle_head(struct conn *c)
{
    struct request *r = c->req;
    const struct config *cfg = c->wc->cfg;
    const char *reason = NULL;
    int st = http_request_from_head(c->hin, c->in.p + c->in.off, r, &reason);

    c->head_bytes_in = c->hin->pos;
    if (st != 0) {
        /* Answered before the head's bytes are consumed (the page format may
         * come from them); the connection closes. */
        c->keep_alive = false;
        r->nheaders = 0;
        log_emit(LOG_INFO, "http", r->id, NULL, "bad request from %s: %s", c->ip, reason);
        request_error(r, st, reason);
        return;
    }
    buf_consume(&c->in, c->hin->pos);
    http_in_rebase(c->hin);
    c->keep_alive = r->keep_alive && !c->w->draining;
    if (!c->ls->admin && c->ls->index < cfg->nlisteners &&
        cfg->listeners[c->ls->index].trust_request_id) {
        struct str in = request_header(r, STR("x-request-id"), NULL);
        if (request_id_valid(in)) {
            memcpy(r->id, in.p, in.len);
            r->id[in.len] = '\0';
        }
    }
    /* A request without a body is complete once its head is: let the parser
     * reach message-complete now so the next pipelined request starts clean. */
    if (!r->has_body) {
        enum http_in_rc rc = http_in_feed(c->hin, c->in.p + c->in.off, 0);
        if (rc == HTTP_IN_UPGRADE) {
            c->upgrade_pending = true;
        }
        c->req_done = true;
    }
    c->state = CS_FORWARD; /* provisional: stages below may answer locally */
    ev_timer_stop(c->w->loop, &c->timer);

    if (c->ls->admin) {
        if (g_admin) {
            g_admin(r);
        } else {
            request_error(r, 404, "no admin endpoints");
        }
        return;
    }
    r->route = route_match_config(cfg, r->hostname, r->path);
    if (!r->route) {
        request_error(r, 404, "no route for this host and path");
        return;
    }
    /* The path was normalised keeping %2F and %5C opaque so that the route
     * could be found; only a route that asks for them takes them. */
    if (r->path_encoded_slash && !r->route->encoded_slashes_pass) {
        log_emit(LOG_INFO, "http", r->id, NULL, "bad request from %s: encoded slash in path",
                 c->ip);
        request_error(r, 400, "encoded slash or backslash in path");
        return;
    }
    if (r->route->path_case_insensitive && r->path.len > 0 && r->path.p[0] == '/') {
        /* One case for policy, OPA, the decision log and the upstream: a
         * case-insensitive backend serves /ADMIN as /admin. */
        normpath_fold_case((char *)r->path.p, r->path.len);
    }
    /* Reserved paths belong to Gatehouse on every host (sign-in, me, jwks):
     * never forwarded. */
    if (str_has_prefix(r->path, STR("/.gatehouse/")) || str_eq_cstr(r->path, "/.gatehouse")) {
        enum access_step step;
        if (!access_reserved(r, &step)) {
            request_error(r, 404, "unknown Gatehouse endpoint");
            return;
        }
        after_access(c, step);
        return;
    }
    after_access(c, access_check(r));
}

static int conn_on_body(void *arg, const char *p, size_t n)
{
    struct conn *c = arg;

    if (c->req) {
        c->req->bytes_in += n;
    }
    if (c->collect_cb) {
        if (buf_pending(&c->collect) + n > c->collect_max) {
            c->collect_over = true;
        } else {
            buf_append(&c->collect, p, n);
        }
        return 0;
    }
    if (c->up) {
        g_up->body(c, p, n);
    }
    return 0;
}

void conn_process(struct conn *c)
{
    enum http_in_rc rc;

    if (c->in_process || c->closed) {
        return;
    }
    c->in_process = true;
    conn_hold(c);
    for (;;) {
        if (c->closed) {
            break;
        }
        if (c->state == CS_IDLE) {
            if (buf_pending(&c->in) == 0 || c->w->draining) {
                break;
            }
            if (buf_pending(&c->out) >= IO_HIGH_WATER) {
                break; /* pipelined: let earlier responses drain first */
            }
            if (!begin_request(c)) {
                conn_close(c);
                break;
            }
        }
        if (c->state == CS_HEAD) {
            rc = http_in_feed(c->hin, c->in.p + c->in.off, buf_pending(&c->in));
            if (rc == HTTP_IN_MORE) {
                break;
            }
            if (rc == HTTP_IN_ERROR || rc == HTTP_IN_DONE || rc == HTTP_IN_UPGRADE) {
                int st = c->hin->status ? c->hin->status : 400;
                const char *why = c->hin->reason ? c->hin->reason : "malformed request";
                log_emit(LOG_INFO, "http", c->req->id, NULL, "bad request from %s: %s", c->ip, why);
                c->keep_alive = false;
                c->state = CS_FORWARD;
                request_error(c->req, st, why);
                continue;
            }
            handle_head(c);
            continue;
        }
        if (c->state == CS_PENDING && c->collect_cb && !c->req_done) {
            if (!collect_body(c)) {
                break;
            }
            continue;
        }
        if (c->state == CS_FORWARD && !c->req_done) {
            if (!up_ready(c)) {
                break;
            }
            rc = http_in_feed(c->hin, c->in.p + c->in.off, buf_pending(&c->in));
            buf_consume(&c->in, c->hin->pos);
            http_in_rebase(c->hin);
            if (c->closed) {
                break;
            }
            if (c->up) {
                g_up->body_flush(c);
            }
            if (c->closed) {
                break;
            }
            if (rc == HTTP_IN_MORE) {
                if (c->hin->p.error == HPE_OK) {
                    set_timer(c, c->wc->cfg->timeouts.body_ms);
                }
                break;
            }
            if (rc == HTTP_IN_ERROR) {
                int st = c->hin->status ? c->hin->status : 400;
                log_emit(LOG_INFO, "http", c->req->id, NULL, "bad request body from %s: %s", c->ip,
                         c->hin->reason ? c->hin->reason : "?");
                c->keep_alive = false;
                if (!c->resp_started) {
                    if (c->up) {
                        g_up->abort(c);
                    }
                    request_error(c->req, st, c->hin->reason);
                } else {
                    conn_close(c);
                }
                break;
            }
            c->req_done = true;
            ev_timer_stop(c->w->loop, &c->timer);
            if (c->up) {
                g_up->body_end(c);
            }
            continue;
        }
        if (c->state == CS_TUNNEL) {
            if (buf_pending(&c->in) > 0) {
                if (c->up) {
                    g_up->tunnel_in(c);
                }
            }
            break;
        }
        break;
    }
    c->in_process = false;
    /* What the pass queued leaves now, one write each way: the upstream's
     * first (a request head with the body bytes read so far), then the
     * client's answers (unless held for the pipelined requests). */
    if (!c->closed && c->up) {
        g_up->body_flush(c);
    }
    if (!c->closed && buf_pending(&c->out) > 0) {
        conn_queue_out(c);
    }
    if (!c->closed) {
        conn_update_io(c);
    }
    conn_put(c);
}

/* ---- events ------------------------------------------------------------ */

static void do_read(struct conn *c)
{
    for (int i = 0; i < 4 && !c->closed && wants_read(c); i++) {
        size_t room = IO_READ_CHUNK;
        if (c->state == CS_IDLE || c->state == CS_HEAD) {
            /* Never hold more than a maximal head plus one read. */
            size_t cap = c->w->wc->cfg->limits.header_bytes + IO_READ_CHUNK;
            if (buf_pending(&c->in) >= cap) {
                break;
            }
        }
        buf_reserve(&c->in, room);
        room = c->in.cap - c->in.len;
        ssize_t n = sock_read(&c->s, c->in.p + c->in.len, room);
        if (n > 0) {
            c->in.len += (size_t)n;
            /* A short read with nothing buffered inside TLS drained the
             * socket: skip the EAGAIN read (epoll is level-triggered and
             * reports the next bytes). */
            bool drained = (size_t)n < room && !sock_has_pending(&c->s);
            if (c->state == CS_LINGER) {
                buf_consume(&c->in, (size_t)n);
                continue;
            }
            if (c->state == CS_IDLE) {
                ev_timer_stop(c->w->loop, &c->timer);
            }
            conn_process(c);
            if (drained) {
                break;
            }
            continue;
        }
        if (n == 0) {
            c->client_eof = true;
            switch (c->state) {
            case CS_FORWARD:
                if (c->req_done) {
                    c->keep_alive = false; /* half-closed: answer, then close */
                    break;
                }
                conn_close(c);
                return;
            case CS_TUNNEL:
                if (c->up) {
                    g_up->tunnel_eof(c);
                } else {
                    conn_close(c);
                }
                return;
            case CS_PENDING:
            case CS_LOCAL:
            case CS_CLOSING:
                c->keep_alive = false;
                break;
            default:
                conn_close(c);
                return;
            }
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (c->state == CS_IDLE && buf_pending(&c->in) == 0) {
                buf_release(&c->in);
            }
            break;
        }
        conn_close(c);
        return;
    }
}

static void do_handshake(struct conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->s.ssl);
    if (r == 1) {
        c->handshaking = false;
        c->hs_want = 0;
        set_timer(c, c->w->wc->cfg->timeouts.idle_ms);
        return;
    }
    switch (SSL_get_error(c->s.ssl, r)) {
    case SSL_ERROR_WANT_READ:
        c->hs_want = EV_READ;
        return;
    case SSL_ERROR_WANT_WRITE:
        c->hs_want = EV_WRITE;
        return;
    default: {
        unsigned long e = ERR_peek_error();
        char buf[200] = "";
        if (e) {
            ERR_error_string_n(e, buf, sizeof buf);
        }
        log_emit(LOG_DEBUG, "tls", NULL, NULL, "handshake with %s failed: %s", c->ip,
                 buf[0] ? buf : "connection closed");
        if (c->w->mw) {
            metrics_tls_failure(c->w->mw);
        }
        conn_close(c);
    }
    }
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, io));

    (void)loop;
    conn_hold(c);
    if (c->handshaking) {
        do_handshake(c);
        if (!c->closed && !c->handshaking) {
            do_read(c);
        }
    } else {
        if (!c->out_held && ((revents & EV_WRITE) || (c->s.wr_wants_read && (revents & EV_READ)))) {
            c->progress = false;
            if (flush_out(c) && !c->closed && c->progress &&
                (c->state == CS_FORWARD || c->state == CS_TUNNEL)) {
                if (buf_pending(&c->out) < IO_HIGH_WATER) {
                    if (c->up) {
                        g_up->client_writable(c);
                    }
                }
                if (!c->closed && c->req_done) {
                    set_timer(c, c->wc ? c->wc->cfg->timeouts.idle_ms : 60000);
                }
            }
            if (!c->closed && c->state == CS_IDLE && buf_pending(&c->in) > 0) {
                conn_process(c);
            }
        }
        if (!c->closed && ((revents & EV_READ) || (c->s.rd_wants_write && (revents & EV_WRITE)))) {
            do_read(c);
        }
    }
    if (!c->closed) {
        conn_update_io(c);
    }
    conn_put(c);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, timer));

    (void)loop;
    (void)revents;
    conn_hold(c);
    ev_timer_stop(c->w->loop, &c->timer);
    switch (c->state) {
    case CS_HEAD:
        if (c->req && !c->handshaking) {
            c->keep_alive = false;
            request_error(c->req, 408, "the request head did not arrive in time");
            break;
        }
        conn_close(c);
        break;
    case CS_FORWARD:
        if (!c->req_done && !c->resp_started) {
            if (c->up) {
                g_up->abort(c);
            }
            request_error(c->req, 408, "the request body stalled");
            break;
        }
        conn_close(c);
        break;
    case CS_PENDING:
        if (c->abort_fn) {
            request_abort_fn *fn = c->abort_fn;
            c->abort_fn = NULL;
            fn(c->abort_arg);
        }
        c->state = CS_HEAD;
        request_error(c->req, 503, "access check timed out");
        break;
    default:
        conn_close(c);
        break;
    }
    conn_put(c);
}

void conn_accept(struct worker *w, struct lsock *ls, int fd, const struct sockaddr *sa)
{
    struct conn *c = xcalloc(1, sizeof *c);
    const struct config *cfg = w->wc->cfg;

    c->w = w;
    c->ls = ls;
    c->s.fd = fd;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, c->ip, sizeof c->ip);
        c->port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, c->ip, sizeof c->ip);
        c->port = ntohs(in6->sin6_port);
    }
    policy_ip_parse(str_from(c->ip), &c->addr);
    c->next = w->conns;
    if (w->conns) {
        w->conns->prev = c;
    }
    w->conns = c;
    if (ls->admin) {
        w->nadmin++;
    } else {
        w->nconns++;
    }
    if (w->mw) {
        metrics_conn_open(w->mw);
    }
    ev_init(&c->io, io_cb);
    ev_init(&c->timer, timer_cb);
    ev_init(&c->hold_timer, hold_timer_cb);
    c->state = CS_IDLE;
    SSL_CTX *tctx = ls->tls ? tls_listener_ctx(ls->index) : NULL;
    if (tctx) {
        /* The SSL keeps its own reference: a reload swaps the listener's context
         * for new handshakes only. */
        c->s.ssl = SSL_new(tctx);
        SSL_CTX_free(tctx);
        if (!c->s.ssl || SSL_set_fd(c->s.ssl, fd) != 1) {
            log_warn("conn", "worker %u: cannot start TLS for %s: out of memory", w->id, c->ip);
            conn_close(c);
            return;
        }
        SSL_set_accept_state(c->s.ssl);
        c->handshaking = true;
        c->hs_want = EV_READ;
        set_timer(c, cfg->timeouts.header_ms);
    } else {
        set_timer(c, cfg->timeouts.idle_ms);
    }
    /* Client connections count against limits.connections; the admin listener's
     * against a small limit of their own, so that a flood of clients never turns
     * /readyz, /healthz and /metrics away. */
    if (ls->admin ? w->nadmin > ADMIN_CONNS_MAX
                  : cfg->limits.connections && w->nconns > cfg->limits.connections) {
        log_warn("conn", "worker %u: %s connection limit %llu reached, refusing %s", w->id,
                 ls->admin ? "admin" : "client",
                 (unsigned long long)(ls->admin ? ADMIN_CONNS_MAX : cfg->limits.connections),
                 c->ip);
        conn_close(c);
        return;
    }
    conn_update_io(c);
}

void conn_drain(struct conn *c)
{
    if (c->closed) {
        return;
    }
    c->keep_alive = false;
    if (c->state == CS_IDLE && buf_pending(&c->in) == 0) {
        conn_close(c);
    }
}
