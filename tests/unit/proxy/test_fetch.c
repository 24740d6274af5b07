/* Unit tests for proxy/fetch.c against a real HTTP server on loopback: the
 * worker loop keeps running while a slow answer is pending, timeouts and size
 * caps fail the fetch, POST bodies arrive intact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/fetch.h"

static int listen_fd;
static uint16_t port;

/* One thread per connection: reads the head (and a Content-Length body), answers by path. */
static void *serve_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[8192];
    size_t len = 0;
    char *end = NULL;

    while (len < sizeof buf - 1) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r <= 0) {
            close(fd);
            return NULL;
        }
        len += (size_t)r;
        buf[len] = '\0';
        if ((end = strstr(buf, "\r\n\r\n"))) {
            break;
        }
    }
    if (!end) {
        close(fd);
        return NULL;
    }
    size_t head = (size_t)(end - buf) + 4;
    char *cl = strcasestr(buf, "content-length:");
    size_t body_len = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
    while (len < head + body_len && len < sizeof buf - 1) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r <= 0) {
            break;
        }
        len += (size_t)r;
    }
    char resp[4096 + 256];
    const char *body = "fast";
    char big[4096];
    if (strncmp(buf, "GET /slow ", 10) == 0) {
        usleep(600 * 1000);
        body = "slow";
    } else if (strncmp(buf, "GET /big ", 9) == 0) {
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = '\0';
        body = big;
    } else if (strncmp(buf, "POST /echo ", 11) == 0) {
        buf[head + body_len] = '\0';
        body = buf + head;
    }
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     strlen(body), body);
    ssize_t w = write(fd, resp, (size_t)n);
    (void)w;
    close(fd);
    return NULL;
}

static void *accept_loop(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) {
            return NULL;
        }
        pthread_t t;
        pthread_create(&t, NULL, serve_conn, (void *)(intptr_t)fd);
        pthread_detach(t);
    }
}

static int setup_server(void **state)
{
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t sl = sizeof sa;
    pthread_t t;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (bind(listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(listen_fd, 64) != 0) {
        return -1;
    }
    getsockname(listen_fd, (struct sockaddr *)&sa, &sl);
    port = ntohs(sa.sin_port);
    pthread_create(&t, NULL, accept_loop, NULL);
    pthread_detach(t);
    return 0;
}

struct result {
    int done;
    long status;
    int failed;
    char body[8192];
    char error[256];
    int order;
};

static int finish_counter;

static void on_done(void *arg, const struct fetch_resp *r)
{
    struct result *res = arg;
    res->done = 1;
    res->status = r->status;
    res->failed = r->failed;
    res->order = ++finish_counter;
    snprintf(res->body, sizeof res->body, "%s", r->body);
    snprintf(res->error, sizeof res->error, "%s", r->error);
}

/* Each test gets its own loop and fetcher (state), freed after it. */
struct fixture {
    struct ev_loop *loop;
    struct fetcher *f;
};

static int fixture_up(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    fx->loop = ev_loop_new(EVFLAG_AUTO);
    fx->f = fetcher_new(fx->loop);
    *state = fx;
    return 0;
}

static int fixture_down(void **state)
{
    struct fixture *fx = *state;
    fetcher_free(fx->f);
    ev_loop_destroy(fx->loop);
    free(fx);
    return 0;
}

static int ticks;
static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    ticks++;
}

static void run_until(struct ev_loop *loop, struct result *const *rs, size_t n)
{
    for (int i = 0; i < 2000; i++) {
        size_t done = 0;
        for (size_t j = 0; j < n; j++) {
            done += (size_t)rs[j]->done;
        }
        if (done == n) {
            return;
        }
        ev_run(loop, EVRUN_ONCE);
    }
}

static char *url(const char *path)
{
    static char u[128];
    snprintf(u, sizeof u, "http://127.0.0.1:%u%s", port, path);
    return u;
}

static void test_fetch_slow_response_does_not_block_loop(void **state)
{
    struct fixture *fx = *state;
    struct ev_loop *loop = fx->loop;
    struct fetcher *f = fx->f;
    struct result slow = { 0 }, fast = { 0 };
    struct result *all[] = { &slow, &fast };
    char err[256];
    ev_timer tick;

    finish_counter = 0;
    ticks = 0;
    ev_timer_init(&tick, tick_cb, 0.05, 0.05);
    ev_timer_start(loop, &tick);
    struct fetch_req rs = { .url = url("/slow") };
    assert_non_null(fetch_start(f, &rs, on_done, &slow, err));
    struct fetch_req rf = { .url = url("/fast") };
    assert_non_null(fetch_start(f, &rf, on_done, &fast, err));
    run_until(loop, all, 2);
    assert_int_equal(fast.status, 200);
    assert_string_equal(fast.body, "fast");
    assert_int_equal(slow.status, 200);
    assert_string_equal(slow.body, "slow");
    /* The fast answer came first and the loop kept ticking while the slow one waited. */
    assert_int_equal(fast.order, 1);
    assert_int_equal(slow.order, 2);
    assert_true(ticks >= 5);
    ev_timer_stop(loop, &tick);
}

static void test_fetch_timeout_fails(void **state)
{
    struct fixture *fx = *state;
    struct ev_loop *loop = fx->loop;
    struct fetcher *f = fx->f;
    struct result r = { 0 };
    struct result *all[] = { &r };
    char err[256];

    struct fetch_req req = { .url = url("/slow"), .timeout_ms = 150 };
    assert_non_null(fetch_start(f, &req, on_done, &r, err));
    run_until(loop, all, 1);
    assert_true(r.failed);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.error, "imed out"));
}

static void test_fetch_response_size_cap(void **state)
{
    struct fixture *fx = *state;
    struct ev_loop *loop = fx->loop;
    struct fetcher *f = fx->f;
    struct result r = { 0 };
    struct result *all[] = { &r };
    char err[256];

    struct fetch_req req = { .url = url("/big"), .max_response_bytes = 1000 };
    assert_non_null(fetch_start(f, &req, on_done, &r, err));
    run_until(loop, all, 1);
    assert_true(r.failed);
    assert_string_equal(r.error, "response larger than 1000 bytes");
}

static void test_fetch_post_body_and_headers(void **state)
{
    struct fixture *fx = *state;
    struct ev_loop *loop = fx->loop;
    struct fetcher *f = fx->f;
    struct result r = { 0 };
    struct result *all[] = { &r };
    char err[256];
    const char *hdrs[] = { "Content-Type: application/x-www-form-urlencoded", NULL };
    static const char body[] = "grant_type=authorization_code&code=abc";

    struct fetch_req req = { .method = "POST",
                             .url = url("/echo"),
                             .headers = hdrs,
                             .body = body,
                             .body_len = sizeof body - 1 };
    assert_non_null(fetch_start(f, &req, on_done, &r, err));
    run_until(loop, all, 1);
    assert_false(r.failed);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, body);
}

static void test_fetch_refused_and_bad_scheme(void **state)
{
    struct fixture *fx = *state;
    struct ev_loop *loop = fx->loop;
    struct fetcher *f = fx->f;
    struct result r = { 0 };
    struct result *all[] = { &r };
    char err[256];

    /* A port nobody listens on: bind and close to find one. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t sl = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    char u[64];
    snprintf(u, sizeof u, "http://127.0.0.1:%u/", ntohs(sa.sin_port));
    struct fetch_req req = { .url = u };
    assert_non_null(fetch_start(f, &req, on_done, &r, err));
    run_until(loop, all, 1);
    assert_true(r.failed);

    struct fetch_req bad = { .url = "file:///etc/passwd" };
    assert_null(fetch_start(f, &bad, on_done, &r, err));
    assert_string_equal(err, "only http and https URLs can be fetched");
}

static void test_fetch_cancel_skips_callback(void **state)
{
    struct fixture *fx = *state;
    struct ev_loop *loop = fx->loop;
    struct fetcher *f = fx->f;
    struct result r = { 0 }, other = { 0 };
    struct result *all[] = { &other };
    char err[256];

    struct fetch_req req = { .url = url("/slow") };
    struct fetch *h = fetch_start(f, &req, on_done, &r, err);
    assert_non_null(h);
    struct fetch_req req2 = { .url = url("/fast") };
    assert_non_null(fetch_start(f, &req2, on_done, &other, err));
    fetch_cancel(h);
    run_until(loop, all, 1);
    assert_int_equal(other.status, 200);
    assert_int_equal(r.done, 0);
    assert_int_equal(fetcher_pending(f), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fetch_slow_response_does_not_block_loop, fixture_up,
                                        fixture_down),
        cmocka_unit_test_setup_teardown(test_fetch_timeout_fails, fixture_up, fixture_down),
        cmocka_unit_test_setup_teardown(test_fetch_response_size_cap, fixture_up, fixture_down),
        cmocka_unit_test_setup_teardown(test_fetch_post_body_and_headers, fixture_up, fixture_down),
        cmocka_unit_test_setup_teardown(test_fetch_refused_and_bad_scheme, fixture_up,
                                        fixture_down),
        cmocka_unit_test_setup_teardown(test_fetch_cancel_skips_callback, fixture_up, fixture_down),
    };
    return cmocka_run_group_tests(tests, setup_server, NULL);
}
