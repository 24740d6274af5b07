/* fuzz_http_head.c - the request-head path a client controls: http_in (llhttp
 * strict + our checks) fed in arbitrary pieces, http_request_from_head(), and
 * the upstream head we would send. Invariants: an accepted head has no CR, LF
 * or NUL in any name or value and an origin-form (or "*") target; the head we
 * forward parses again, to the same method, target and Host (parse -> format
 * -> parse is stable); the path is its own normal form (normpath.h) and the
 * host name is lower case without port or trailing dot; errors always carry
 * a 4xx status and a reason. */
#include <assert.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proxy/http.h"
#include "core/normpath.h"
#include "replay.h"

static int count_body(void *arg, const char *p, size_t n)
{
    (void)p;
    *(size_t *)arg += n;
    return 0;
}

static bool has_ctl(struct str s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c == '\r' || c == '\n' || c == '\0') {
            return true;
        }
    }
    return false;
}

/* The path is in normal form and starts the target; the host name is lower
 * case, without port or trailing dot. */
static void check_normal(const struct request *r)
{
    assert(r->path.len <= r->target.len && memcmp(r->path.p, r->target.p, r->path.len) == 0);
    if (r->path.len > 0 && r->path.p[0] == '/') {
        char *again = malloc(r->path.len);
        size_t n = 0;
        bool enc = false;
        assert(again);
        assert(normpath(r->path.p, r->path.len, again, NORMPATH_KEEP_ENCODED_SLASH, &n, &enc) ==
               NORMPATH_OK);
        assert(n == r->path.len && memcmp(again, r->path.p, n) == 0);
        assert(!enc || r->path_encoded_slash);
        free(again);
    }
    struct str hn = r->hostname;
    assert(hn.len == 0 || hn.p[hn.len - 1] != '.');
    for (size_t i = 0; i < hn.len; i++) {
        assert(!(hn.p[i] >= 'A' && hn.p[i] <= 'Z'));
        assert(hn.p[i] != ':' || hn.p[0] == '[');
    }
}

/* Re-parses the head we would forward; it must be accepted and agree. */
static void check_forwarded(const struct request *r)
{
    struct buf out = { 0 };
    struct http_fwd_opts o = { .via = "gatehouse", .default_host = "upstream.test:80" };
    struct http_limits lim = { .header_bytes = 1 << 20, .headers = 1000, .uri_bytes = 1 << 20 };
    struct http_in h;
    struct request r2 = { 0 };
    const char *reason = NULL;
    size_t body = 0;

    http_format_upstream_request(&out, r, &o);
    http_in_init(&h, HTTP_REQUEST, &lim, count_body, &body);
    enum http_in_rc rc = http_in_feed(&h, out.p, out.len);
    assert(rc == HTTP_IN_HEAD);
    r2.arena = arena_new(0);
    int st = http_request_from_head(&h, out.p, &r2, &reason);
    assert(st == 0);
    assert(str_eq(r2.method, r->method));
    assert(str_eq(r2.target, r->target));
    assert(r->host.len == 0 || str_eq(r2.host, r->host));
    assert(r2.chunked == r->chunked);
    assert(r2.content_length == r->content_length);
    arena_free(r2.arena);
    http_in_fini(&h);
    buf_free(&out);
}

static void run_one(const uint8_t *data, size_t size, size_t step)
{
    struct http_limits lim = {
        .header_bytes = 8192, .headers = 50, .uri_bytes = 2048, .body_bytes = 1 << 16
    };
    struct http_in h;
    size_t body = 0, avail = 0;
    const char *base = (const char *)data;
    enum http_in_rc rc = HTTP_IN_MORE;

    http_in_init(&h, HTTP_REQUEST, &lim, count_body, &body);
    while (avail < size && rc == HTTP_IN_MORE) {
        avail = avail + step > size ? size : avail + step;
        rc = http_in_feed(&h, base, avail);
    }
    if (rc == HTTP_IN_ERROR) {
        assert(h.status >= 400 && h.status < 500);
        assert(h.reason != NULL);
    } else if (rc == HTTP_IN_HEAD) {
        struct request r = { 0 };
        const char *reason = NULL;
        r.arena = arena_new(64 * 1024);
        snprintf(r.client_ip, sizeof r.client_ip, "192.0.2.1");
        snprintf(r.id, sizeof r.id, "fuzz");
        r.scheme = "http";
        int st = http_request_from_head(&h, base, &r, &reason);
        if (st != 0) {
            assert(st >= 400 && st < 600 && reason);
        } else {
            assert(r.target.len > 0 && (r.target.p[0] == '/' || str_eq_cstr(r.target, "*")));
            assert(!has_ctl(r.target) && !has_ctl(r.host));
            check_normal(&r);
            for (size_t i = 0; i < r.nheaders; i++) {
                assert(r.headers[i].name.len > 0);
                assert(!has_ctl(r.headers[i].name) && !has_ctl(r.headers[i].value));
            }
            check_forwarded(&r);
            /* The body (and anything after it) goes through the same reader. */
            size_t pos = h.pos;
            http_in_rebase(&h);
            if (pos <= size) {
                (void)http_in_feed(&h, base + pos, size - pos);
            }
        }
        arena_free(r.arena);
    }
    http_in_fini(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 0) {
        /* The last byte picks the piece size, so split points get explored. */
        run_one(data, size, (size_t)(data[size - 1] % 16) + 1);
    }
    return 0;
}
