/* proxy/fetch.c - libcurl multi on libev (the "multi_socket" API): curl tells us
 * which sockets to watch and when to wake it; libev watches them on the
 * worker's loop and hands events back with curl_multi_socket_action(). */
#include "fetch.h"

#include <curl/curl.h>
#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"

struct fetcher {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer;
    struct fetch *pending; /* doubly linked list of live fetches */
    size_t npending;
};

struct fetch {
    struct fetcher *f;
    struct fetch *prev, *next;
    CURL *easy;
    struct curl_slist *hdrs;
    char *body; /* request body copy */
    size_t body_len;
    char *resp; /* response body */
    size_t resp_len, resp_cap, resp_max;
    char *content_type;
    fetch_done_cb *cb;
    void *arg;
    char curl_err[CURL_ERROR_SIZE];
    uint64_t start_us;
    int too_big;
    /* fetch_wait: no transfer, an fd watched until readable or the timer */
    bool waiting;
    ev_io wio;
    ev_timer wtimer;
};

/* One watcher per socket curl asks us to watch. */
struct sock {
    ev_io io;
    struct fetcher *f;
    curl_socket_t fd;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_global(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void fetch_destroy(struct fetch *h)
{
    struct fetcher *f = h->f;

    if (h->prev) {
        h->prev->next = h->next;
    } else {
        f->pending = h->next;
    }
    if (h->next) {
        h->next->prev = h->prev;
    }
    f->npending--;
    if (h->waiting) {
        ev_io_stop(f->loop, &h->wio);
        ev_timer_stop(f->loop, &h->wtimer);
    } else {
        curl_multi_remove_handle(f->multi, h->easy);
        curl_easy_cleanup(h->easy);
    }
    curl_slist_free_all(h->hdrs);
    if (h->body) {
        explicit_bzero(h->body, h->body_len); /* may hold a client secret */
    }
    free(h->body);
    free(h->resp);
    free(h->content_type);
    free(h);
}

/* Collects finished transfers and reports them. */
static void check_done(struct fetcher *f)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(f->multi, &left))) {
        struct fetch *h = NULL;
        struct fetch_resp r;

        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&h);
        memset(&r, 0, sizeof r);
        r.elapsed_us = now_us() - h->start_us;
        if (msg->data.result == CURLE_OK) {
            curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &r.status);
        } else {
            r.failed = 1;
            if (h->too_big) {
                snprintf(r.error, sizeof r.error, "response larger than %zu bytes", h->resp_max);
            } else {
                snprintf(r.error, sizeof r.error, "%s",
                         h->curl_err[0] ? h->curl_err : curl_easy_strerror(msg->data.result));
            }
        }
        if (!h->resp) {
            h->resp = xcalloc(1, 1);
        }
        r.body = h->resp;
        r.body_len = h->resp_len;
        r.content_type = h->content_type;
        h->cb(h->arg, &r);
        fetch_destroy(h);
    }
}

static void sock_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct sock *s = (struct sock *)w;
    struct fetcher *f = s->f;
    int running;
    int action =
        (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    (void)loop;

    curl_multi_socket_action(f->multi, s->fd, action, &running);
    check_done(f);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct fetcher *f = w->data;
    int running;
    (void)loop;
    (void)revents;

    curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(f);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching a socket. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp)
{
    struct fetcher *f = userp;
    struct sock *s = sockp;
    (void)e;

    if (what == CURL_POLL_REMOVE) {
        if (s) {
            ev_io_stop(f->loop, &s->io);
            free(s);
            curl_multi_assign(f->multi, fd, NULL);
        }
        return 0;
    }
    int ev = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (!s) {
        s = xcalloc(1, sizeof *s);
        s->f = f;
        s->fd = fd;
        curl_multi_assign(f->multi, fd, s);
    } else {
        ev_io_stop(f->loop, &s->io);
    }
    ev_io_init(&s->io, sock_cb, fd, ev);
    ev_io_start(f->loop, &s->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl wants to be called after timeout_ms (-1 = never). */
static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
    struct fetcher *f = userp;
    (void)m;

    ev_timer_stop(f->loop, &f->timer);
    if (timeout_ms >= 0) {
        /* 0 means "as soon as possible": run from the loop, never recursively. */
        ev_timer_set(&f->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(f->loop, &f->timer);
    }
    return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *userp)
{
    struct fetch *h = userp;
    size_t len = size * n;

    if (h->resp_len + len > h->resp_max) {
        h->too_big = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (h->resp_cap - h->resp_len < len + 1) {
        size_t cap = h->resp_cap ? h->resp_cap : 4096;
        while (cap - h->resp_len < len + 1) {
            cap *= 2;
        }
        h->resp = xrealloc(h->resp, cap);
        h->resp_cap = cap;
    }
    memcpy(h->resp + h->resp_len, p, len);
    h->resp_len += len;
    h->resp[h->resp_len] = '\0';
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *userp)
{
    struct fetch *h = userp;
    size_t len = size * n;
    static const char ct[] = "content-type:";

    if (len > sizeof ct - 1 && strncasecmp(p, ct, sizeof ct - 1) == 0) {
        struct str v = str_trim((struct str){ p + sizeof ct - 1, len - (sizeof ct - 1) });
        while (v.len && (v.p[v.len - 1] == '\r' || v.p[v.len - 1] == '\n')) {
            v.len--;
        }
        free(h->content_type);
        h->content_type = xstrndup(v.p, v.len);
    }
    return len;
}

struct fetcher *fetcher_new(struct ev_loop *loop)
{
    struct fetcher *f = xcalloc(1, sizeof *f);

    pthread_once(&curl_once, curl_global);
    f->loop = loop;
    f->multi = curl_multi_init();
    if (!f->multi) {
        log_error("fetch", "curl_multi_init failed");
        abort();
    }
    ev_init(&f->timer, timer_cb);
    f->timer.data = f;
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
    return f;
}

void fetcher_free(struct fetcher *f)
{
    if (!f) {
        return;
    }
    while (f->pending) {
        fetch_destroy(f->pending);
    }
    ev_timer_stop(f->loop, &f->timer);
    curl_multi_cleanup(f->multi);
    free(f);
}

struct fetch *fetch_start(struct fetcher *f, const struct fetch_req *req, fetch_done_cb *cb,
                          void *arg, char err[256])
{
    struct fetch *h;
    const char *method = req->method ? req->method : "GET";

    if (strncmp(req->url, "http://", 7) != 0 && strncmp(req->url, "https://", 8) != 0) {
        snprintf(err, 256, "only http and https URLs can be fetched");
        return NULL;
    }
    h = xcalloc(1, sizeof *h);
    h->f = f;
    h->cb = cb;
    h->arg = arg;
    h->resp_max = req->max_response_bytes ? req->max_response_bytes : 1u << 20;
    h->start_us = now_us();
    h->easy = curl_easy_init();
    if (!h->easy) {
        free(h);
        snprintf(err, 256, "curl_easy_init failed");
        return NULL;
    }
    for (const char *const *p = req->headers; p && *p; p++) {
        h->hdrs = curl_slist_append(h->hdrs, *p);
    }
    /* No "Expect: 100-continue" round trip on POSTs to IdPs and OPA. */
    h->hdrs = curl_slist_append(h->hdrs, "Expect:");
    curl_easy_setopt(h->easy, CURLOPT_URL, req->url);
    curl_easy_setopt(h->easy, CURLOPT_PRIVATE, h);
    curl_easy_setopt(h->easy, CURLOPT_HTTPHEADER, h->hdrs);
    curl_easy_setopt(h->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h->easy, CURLOPT_WRITEDATA, h);
    curl_easy_setopt(h->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h->easy, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(h->easy, CURLOPT_ERRORBUFFER, h->curl_err);
    curl_easy_setopt(h->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h->easy, CURLOPT_TIMEOUT_MS,
                     (long)(req->timeout_ms ? req->timeout_ms : 10000));
    curl_easy_setopt(h->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)(req->timeout_ms ? req->timeout_ms : 10000));
    curl_easy_setopt(h->easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h->easy, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(h->easy, CURLOPT_USERAGENT, "Gatehouse/" GATEHOUSE_VERSION);
    if (req->client_cert && req->client_key) {
        curl_easy_setopt(h->easy, CURLOPT_SSLCERT, req->client_cert);
        curl_easy_setopt(h->easy, CURLOPT_SSLKEY, req->client_key);
    }
    if (req->ca_file) {
        curl_easy_setopt(h->easy, CURLOPT_CAINFO, req->ca_file);
    }
    if (strcmp(method, "POST") == 0) {
        h->body = xmalloc(req->body_len + 1);
        if (req->body_len) {
            memcpy(h->body, req->body, req->body_len);
        }
        h->body[req->body_len] = '\0';
        h->body_len = req->body_len;
        curl_easy_setopt(h->easy, CURLOPT_POST, 1L);
        curl_easy_setopt(h->easy, CURLOPT_POSTFIELDS, h->body);
        curl_easy_setopt(h->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(h->easy, CURLOPT_CUSTOMREQUEST, method);
    }
    h->next = f->pending;
    if (f->pending) {
        f->pending->prev = h;
    }
    f->pending = h;
    f->npending++;
    CURLMcode mc = curl_multi_add_handle(f->multi, h->easy);
    if (mc != CURLM_OK) {
        snprintf(err, 256, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
        fetch_destroy(h);
        return NULL;
    }
    return h;
}

/* fetch_wait: the fd is readable (status 200) or the time is up (failed). */
static void wait_done(struct fetch *h, bool ready)
{
    /* Stopped before the callback: it may end the request, whose arena
     * owns the fd. */
    ev_io_stop(h->f->loop, &h->wio);
    ev_timer_stop(h->f->loop, &h->wtimer);
    struct fetch_resp r;
    memset(&r, 0, sizeof r);
    r.elapsed_us = now_us() - h->start_us;
    r.body = "";
    if (ready) {
        r.status = 200;
    } else {
        r.failed = 1;
        snprintf(r.error, sizeof r.error, "no answer within %llu ms",
                 (unsigned long long)(r.elapsed_us / 1000));
    }
    h->cb(h->arg, &r);
    fetch_destroy(h);
}

static void wait_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    wait_done(w->data, true);
}

static void wait_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    wait_done(w->data, false);
}

struct fetch *fetch_wait(struct fetcher *f, int fd, uint64_t timeout_ms, fetch_done_cb *cb,
                         void *arg, char err[256])
{
    if (fd < 0) {
        snprintf(err, 256, "nothing to wait for");
        return NULL;
    }
    struct fetch *h = xcalloc(1, sizeof *h);
    h->f = f;
    h->cb = cb;
    h->arg = arg;
    h->start_us = now_us();
    h->waiting = true;
    ev_io_init(&h->wio, wait_io_cb, fd, EV_READ);
    h->wio.data = h;
    ev_timer_init(&h->wtimer, wait_timer_cb, (double)(timeout_ms ? timeout_ms : 10000) / 1000.0,
                  0.);
    h->wtimer.data = h;
    h->next = f->pending;
    if (f->pending) {
        f->pending->prev = h;
    }
    f->pending = h;
    f->npending++;
    ev_io_start(f->loop, &h->wio);
    ev_timer_start(f->loop, &h->wtimer);
    return h;
}

void fetch_cancel(struct fetch *h)
{
    if (h) {
        fetch_destroy(h);
    }
}

size_t fetcher_pending(const struct fetcher *f)
{
    return f->npending;
}
