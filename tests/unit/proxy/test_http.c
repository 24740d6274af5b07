/* Unit tests for proxy/http.c: the request reader's strictness (each case its
 * status and reason), limits, and the header rewriting of both heads:
 * hop-by-hop and Connection-named headers removed, X-Forwarded-*, Via,
 * X-Request-Id, identity headers stripped, framing re-stated. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/http.h"
#include "proxy/io.h"

static const struct http_limits lim = {
    .header_bytes = 4096,
    .headers = 20,
    .uri_bytes = 256,
    .body_bytes = 100,
};

struct parsed {
    struct http_in h;
    struct request r;
    enum http_in_rc rc;
    int status;
    const char *reason;
    char body[256];
    size_t body_len;
    const char *raw;
};

static int sink(void *arg, const char *p, size_t n)
{
    struct parsed *ps = arg;
    if (ps->body_len + n < sizeof ps->body) {
        memcpy(ps->body + ps->body_len, p, n);
    }
    ps->body_len += n;
    return 0;
}

/* Parses raw as one request fed in pieces of `step` bytes. On a complete head,
 * fills r and then reads the body to its end. */
static void parse(struct parsed *ps, const char *raw, size_t step)
{
    size_t len = strlen(raw), avail = 0;

    memset(ps, 0, sizeof *ps);
    ps->raw = raw;
    http_in_init(&ps->h, HTTP_REQUEST, &lim, sink, ps);
    ps->rc = HTTP_IN_MORE;
    while (ps->rc == HTTP_IN_MORE && avail < len) {
        avail = avail + step > len ? len : avail + step;
        ps->rc = http_in_feed(&ps->h, raw, avail);
    }
    if (ps->rc == HTTP_IN_ERROR) {
        ps->status = ps->h.status;
        ps->reason = ps->h.reason;
        return;
    }
    if (ps->rc != HTTP_IN_HEAD) {
        return;
    }
    ps->r.arena = arena_new(0);
    snprintf(ps->r.client_ip, sizeof ps->r.client_ip, "192.0.2.7");
    snprintf(ps->r.id, sizeof ps->r.id, "req-1");
    ps->r.scheme = "https";
    ps->status = http_request_from_head(&ps->h, raw, &ps->r, &ps->reason);
    if (ps->status == 0) {
        size_t pos = ps->h.pos;
        http_in_rebase(&ps->h);
        ps->rc = http_in_feed(&ps->h, raw + pos, len - pos);
        if (ps->rc == HTTP_IN_ERROR) {
            ps->status = ps->h.status;
            ps->reason = ps->h.reason;
        }
    }
}

static void done(struct parsed *ps)
{
    arena_free(ps->r.arena);
    http_in_fini(&ps->h);
}

static void expect_reject(const char *raw, int status, const char *reason)
{
    struct parsed ps;
    size_t steps[] = { 1, 5, 4096 };

    for (size_t i = 0; i < 3; i++) {
        parse(&ps, raw, steps[i]);
        if (ps.status != status) {
            fail_msg("%s: step %zu: status %d (%s), want %d", raw, steps[i], ps.status,
                     ps.reason ? ps.reason : "-", status);
        }
        if (reason) {
            assert_non_null(ps.reason);
            assert_string_equal(ps.reason, reason);
        }
        done(&ps);
    }
}

/* ---- reading -------------------------------------------------------------- */

static void test_valid_get_fields(void **state)
{
    struct parsed ps;
    (void)state;

    parse(&ps, "GET /a/b?x=1 HTTP/1.1\r\nHost: app.test\r\nAccept:  */*  \r\n\r\n", 3);
    assert_int_equal(ps.status, 0);
    assert_int_equal(ps.rc, HTTP_IN_DONE);
    assert_true(str_eq_cstr(ps.r.method, "GET"));
    assert_true(str_eq_cstr(ps.r.target, "/a/b?x=1"));
    assert_true(str_eq_cstr(ps.r.path, "/a/b"));
    assert_true(str_eq_cstr(ps.r.query, "x=1"));
    assert_true(str_eq_cstr(ps.r.host, "app.test"));
    assert_true(str_eq_cstr(request_header(&ps.r, STR("accept"), NULL), "*/*"));
    assert_false(ps.r.has_body);
    assert_true(ps.r.keep_alive);
    done(&ps);
}

static void test_chunked_body_read_whole(void **state)
{
    struct parsed ps;
    (void)state;

    parse(&ps,
          "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
          "5;n=v\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
          2);
    assert_int_equal(ps.status, 0);
    assert_int_equal(ps.rc, HTTP_IN_DONE);
    assert_true(ps.r.chunked);
    assert_int_equal(ps.body_len, 11);
    assert_memory_equal(ps.body, "hello world", 11);
    done(&ps);
}

static void test_absolute_form_same_host_becomes_origin_form(void **state)
{
    struct parsed ps;
    (void)state;

    parse(&ps, "GET http://App.Test/x?q HTTP/1.1\r\nHost: app.test\r\n\r\n", 4096);
    assert_int_equal(ps.status, 0);
    assert_true(str_eq_cstr(ps.r.target, "/x?q"));
    done(&ps);
}

/* The target is normalised once here: path in normal form, query as sent,
 * the raw target kept for the access log; the host name normalised. */
static void test_target_and_host_normalised(void **state)
{
    static const struct {
        const char *line, *host, *target, *path, *query, *hostname;
        bool enc;
    } ok[] = {
        { "GET /x/%2e%2e/%61dmin?q=%2e%2E/.. HTTP/1.1", "App.Test", "/admin?q=%2e%2E/..", "/admin",
          "q=%2e%2E/..", "app.test", false },
        { "GET //a/./b/../c/ HTTP/1.1", "a.test.:8080", "/a/c/", "/a/c/", "", "a.test", false },
        { "GET http://A.test.//admin? HTTP/1.1", "a.test", "/admin?", "/admin", "", "a.test",
          false },
        { "GET http://a.test:81 HTTP/1.1", "A.TEST.:81", "/", "/", "", "a.test", false },
        { "GET /files/a%2fb HTTP/1.1", "[::1]:8080", "/files/a%2Fb", "/files/a%2Fb", "", "[::1]",
          true },
        { "OPTIONS * HTTP/1.1", "a", "*", "*", "", "a", false },
    };
    (void)state;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char raw[512];
        struct parsed ps;
        snprintf(raw, sizeof raw, "%s\r\nHost: %s\r\n\r\n", ok[i].line, ok[i].host);
        parse(&ps, raw, 7);
        if (ps.status != 0) {
            fail_msg("%s: status %d (%s)", raw, ps.status, ps.reason);
        }
        assert_true(str_eq_cstr(ps.r.target, ok[i].target));
        assert_true(str_eq_cstr(ps.r.path, ok[i].path));
        assert_true(str_eq_cstr(ps.r.query, ok[i].query));
        assert_true(str_eq_cstr(ps.r.hostname, ok[i].hostname));
        assert_true(str_eq_cstr(ps.r.host, ok[i].host)); /* forwarded as received */
        assert_int_equal(ps.r.path_encoded_slash, ok[i].enc);
        const char *sp = strchr(ok[i].line, ' ');
        assert_int_equal(ps.r.raw_target.len, strlen(sp + 1) - strlen(" HTTP/1.1"));
        done(&ps);
    }
    expect_reject("GET /%2e%2e/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                  "path climbs above the root");
    expect_reject("GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "control character in path");
    expect_reject("GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid percent-encoding in path");
    expect_reject("GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "backslash in path");
    expect_reject("GET /..;/a HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                  "dot segment with parameters in path");
    expect_reject("GET http://a//%2e%2e/x HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                  "path climbs above the root");
    expect_reject("GET http://a.test./ HTTP/1.1\r\nHost: b.test\r\n\r\n", 400,
                  "absolute-form target names another host");
    const char *bad_hosts[] = { "a..test",  ".a.test",       "a.test..", ".",   "a.test:x",
                                "a%2etest", "a.test:123456", "[::1]x",   "[::1" };
    for (size_t i = 0; i < sizeof bad_hosts / sizeof bad_hosts[0]; i++) {
        char raw[128];
        snprintf(raw, sizeof raw, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad_hosts[i]);
        expect_reject(raw, 400, "invalid Host header");
    }
}

/* RFC 9112 §3: one SP between the parts of the request line. */
static void test_request_line_single_spaces(void **state)
{
    (void)state;
    expect_reject("GET  /a HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                  "request line must use single spaces");
    expect_reject("GET /a  HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                  "request line must use single spaces");
    expect_reject("\r\nGET   /a   HTTP/1.1\r\nHost: a\r\n\r\n", 400,
                  "request line must use single spaces");
    struct parsed ps;
    parse(&ps, "\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n", 1);
    assert_int_equal(ps.status, 0);
    done(&ps);
}

static void test_smuggling_rejected(void **state)
{
    (void)state;
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                  400, NULL);
    expect_reject(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd", 400,
        NULL);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabcd", 400, NULL);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400,
                  NULL);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400,
                  "obsolete line folding");
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\n\tc\r\n\r\n", 400, "obsolete line folding");
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nX-Abc: \rxTransfer-Encoding: chunked\r\n\r\n", 400,
                  NULL);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400, NULL);
    expect_reject("GET / HTTP/1.1\nHost: a\n\n", 400, NULL);
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n",
                  400, NULL);
    expect_reject("GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", 400,
                  "absolute-form target names another host");
    expect_reject("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, NULL);
    expect_reject("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate Host header");
    expect_reject("GET / HTTP/1.1\r\n\r\n", 400, "missing Host header");
    expect_reject("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                  "unsupported Transfer-Encoding");
}

static void test_nul_in_value_rejected(void **state)
{
    static const char raw[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n";
    struct parsed ps;
    struct http_in h;
    struct request r = { 0 };
    const char *reason = NULL;
    (void)state;
    (void)ps;

    http_in_init(&h, HTTP_REQUEST, &lim, NULL, NULL);
    enum http_in_rc rc = http_in_feed(&h, raw, sizeof raw - 1);
    if (rc == HTTP_IN_HEAD) {
        r.arena = arena_new(0);
        assert_int_equal(http_request_from_head(&h, raw, &r, &reason), 400);
        arena_free(r.arena);
    } else {
        assert_int_equal(rc, HTTP_IN_ERROR);
        assert_int_equal(h.status, 400);
    }
    http_in_fini(&h);
}

static void test_limits(void **state)
{
    char big[600], many[2048];
    size_t off;
    (void)state;

    /* 414 for the target, 431 for the header section and count, 413 for bodies. */
    snprintf(big, sizeof big, "GET /%0300d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    expect_reject(big, 414, "request target too long");
    off = (size_t)snprintf(many, sizeof many, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 25; i++) {
        off += (size_t)snprintf(many + off, sizeof many - off, "X-%d: v\r\n", i);
    }
    snprintf(many + off, sizeof many - off, "\r\n");
    expect_reject(many, 431, "too many header fields");
    expect_reject("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", 413,
                  "body too large");
    expect_reject(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        "65\r\n"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxxxxxxxxx\r\n0\r\n\r\n",
        413, "body too large");
    expect_reject("PUT / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n", 417,
                  "unsupported Expect");
}

static void test_header_bytes_limit(void **state)
{
    char raw[6000];
    (void)state;

    snprintf(raw, sizeof raw, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: %04500d\r\n\r\n", 0);
    expect_reject(raw, 431, "header section too large");
}

/* ---- rewriting ---------------------------------------------------------- */

static char *upstream_head(struct parsed *ps, const char *raw, bool trust, bool ws)
{
    static char out[4096];
    struct buf b = { 0 };
    static const char *const strip[] = { "X-Gatehouse-", NULL };
    struct http_fwd_opts o = { .trust_forwarded = trust,
                               .websocket = ws,
                               .via = "gatehouse",
                               .default_host = "backend:9001",
                               .strip_prefixes = strip };

    parse(ps, raw, 4096);
    assert_int_equal(ps->status, 0);
    http_format_upstream_request(&b, &ps->r, &o);
    snprintf(out, sizeof out, "%.*s", (int)b.len, b.p);
    buf_free(&b);
    return out;
}

static void test_hop_by_hop_and_connection_named_removed(void **state)
{
    struct parsed ps;
    (void)state;

    char *h = upstream_head(&ps,
                            "GET /x HTTP/1.1\r\nHost: app.test\r\n"
                            "Connection: keep-alive, X-Private, Secret\r\nX-Private: 1\r\n"
                            "secret: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
                            "Trailer: X-T\r\nProxy-Authorization: Basic Zm9v\r\n"
                            "Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Keep: yes\r\n\r\n",
                            false, false);
    assert_non_null(strstr(h, "GET /x HTTP/1.1\r\n"));
    assert_non_null(strstr(h, "Host: app.test\r\n"));
    assert_non_null(strstr(h, "X-Keep: yes\r\n"));
    const char *gone[] = {
        "Connection:", "X-Private",           "secret:",          "Keep-Alive", "TE:",
        "Trailer",     "Proxy-Authorization", "Proxy-Connection", "Upgrade"
    };
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
        if (strstr(h, gone[i])) {
            fail_msg("%s was forwarded:\n%s", gone[i], h);
        }
    }
    done(&ps);
}

static void test_forwarded_headers_replaced(void **state)
{
    struct parsed ps;
    (void)state;

    char *h = upstream_head(&ps,
                            "GET / HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
                            "X-Forwarded-Proto: http\r\nX-Forwarded-Host: evil\r\n"
                            "X-Request-Id: chosen-by-client\r\nX-Gatehouse-User: mallory\r\n"
                            "x-gatehouse-groups: admins\r\nVia: 1.0 edge\r\n\r\n",
                            false, false);
    assert_non_null(strstr(h, "X-Forwarded-For: 192.0.2.7\r\n"));
    assert_non_null(strstr(h, "X-Forwarded-Proto: https\r\n"));
    assert_non_null(strstr(h, "X-Forwarded-Host: app.test\r\n"));
    assert_non_null(strstr(h, "X-Request-Id: req-1\r\n"));
    assert_non_null(strstr(h, "Via: 1.0 edge\r\n"));
    assert_non_null(strstr(h, "Via: 1.1 gatehouse\r\n"));
    assert_null(strstr(h, "6.6.6.6"));
    assert_null(strstr(h, "evil"));
    assert_null(strstr(h, "chosen-by-client"));
    assert_null(strstr(h, "mallory"));
    assert_null(strstr(h, "admins"));
    done(&ps);
}

static void test_trusted_listener_appends_forwarded_for(void **state)
{
    struct parsed ps;
    (void)state;

    char *h = upstream_head(
        &ps, "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\r\n", true,
        false);
    assert_non_null(strstr(h, "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n"));
    done(&ps);
}

static void test_framing_restated(void **state)
{
    struct parsed ps;
    (void)state;

    char *h = upstream_head(&ps,
                            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                            "Expect: 100-continue\r\n\r\nabc",
                            false, false);
    assert_non_null(strstr(h, "Content-Length: 3\r\n"));
    assert_null(strstr(h, "Expect"));
    assert_true(ps.r.expect_continue);
    done(&ps);
    h = upstream_head(&ps,
                      "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                      false, false);
    assert_non_null(strstr(h, "Transfer-Encoding: chunked\r\n"));
    assert_null(strstr(h, "Content-Length"));
    done(&ps);
    h = upstream_head(&ps, "GET / HTTP/1.0\r\n\r\n", false, false);
    assert_non_null(strstr(h, "Host: backend:9001\r\n"));
    assert_non_null(strstr(h, "Via: 1.0 gatehouse\r\n"));
    done(&ps);
}

static void test_websocket_upgrade_only_when_allowed(void **state)
{
    static const char raw[] = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n";
    struct parsed ps;
    (void)state;

    char *h = upstream_head(&ps, raw, false, true);
    assert_true(ps.r.upgrade);
    assert_non_null(strstr(h, "Connection: upgrade\r\nUpgrade: websocket\r\n"));
    assert_non_null(strstr(h, "Sec-WebSocket-Key: k\r\n"));
    done(&ps);
    h = upstream_head(&ps, raw, false, false);
    assert_null(strstr(h, "Upgrade"));
    assert_null(strstr(h, "Connection"));
    done(&ps);
}

static char *response_head(const char *raw, struct http_resp_opts *o)
{
    static char out[4096];
    struct http_limits rl = { .header_bytes = 4096, .headers = 50 };
    struct http_in h;
    struct buf b = { 0 };

    http_in_init(&h, HTTP_RESPONSE, &rl, NULL, NULL);
    h.skip_body = o->head_method;
    assert_int_equal(http_in_feed(&h, raw, strlen(raw)), HTTP_IN_HEAD);
    http_format_response(&b, &h, raw, o);
    snprintf(out, sizeof out, "%.*s", (int)b.len, b.p);
    buf_free(&b);
    http_in_fini(&h);
    return out;
}

static void test_response_rewriting(void **state)
{
    struct http_resp_opts o = {
        .client_minor = 1, .keep_alive = true, .request_id = "rid", .via = "gatehouse"
    };
    (void)state;

    char *h = response_head("HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\n"
                            "Keep-Alive: timeout=5\r\nX-Request-Id: upstream-id\r\n"
                            "Content-Length: 5\r\nX-App: yes\r\n\r\nhello",
                            &o);
    assert_non_null(strstr(h, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(h, "Content-Length: 5\r\n"));
    assert_non_null(strstr(h, "X-App: yes\r\n"));
    assert_non_null(strstr(h, "Via: 1.1 gatehouse\r\n"));
    assert_non_null(strstr(h, "X-Request-Id: rid\r\n"));
    assert_null(strstr(h, "X-Internal"));
    assert_null(strstr(h, "Keep-Alive"));
    assert_null(strstr(h, "upstream-id"));
    assert_false(o.chunk_to_client);

    /* No framing from the server: re-chunked for HTTP/1.1, close-delimited for 1.0. */
    h = response_head("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody", &o);
    assert_non_null(strstr(h, "Transfer-Encoding: chunked\r\n"));
    assert_true(o.chunk_to_client);
    o.client_minor = 0;
    h = response_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &o);
    assert_null(strstr(h, "Transfer-Encoding"));
    assert_non_null(strstr(h, "Connection: close\r\n"));
    assert_true(o.close_after);

    /* HEAD keeps the representation's length. */
    o.client_minor = 1;
    o.head_method = true;
    h = response_head("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", &o);
    assert_non_null(strstr(h, "Content-Length: 5000\r\n"));
}

static void test_list_has(void **state)
{
    (void)state;
    assert_true(http_list_has(STR("keep-alive, Upgrade"), STR("upgrade")));
    assert_true(http_list_has(STR(" close "), STR("close")));
    assert_false(http_list_has(STR("closed"), STR("close")));
    assert_false(http_list_has(STR(""), STR("close")));
    assert_true(http_is_hop_by_hop(STR("Transfer-Encoding")));
    assert_false(http_is_hop_by_hop(STR("Content-Type")));
}

/* The names the proxy acts on are recognised in any case, and only they:
 * a byte next to a letter in ASCII ('@', '[', '`', '{') or with the high bit
 * set is another name. */
static void test_header_names_classified_exactly(void **state)
{
    static const char *const hop[] = { "Connection",
                                       "KEEP-ALIVE",
                                       "proxy-Connection",
                                       "tE",
                                       "Trailer",
                                       "transfer-ENCODING",
                                       "UpGrade",
                                       "Proxy-Authenticate",
                                       "PROXY-AUTHORIZATION" };
    static const char *const not_hop[] = {
        "Connectio@",
        "[onnection",
        "connection ",
        "Keep_Alive",
        "T@",
        "trailers",
        "Transfer-Encodin{",
        "Upgrad`",
        "Proxy-Authorizatioo",
        "Content-Length",
        "Host",
        "X-Request-Id",
        "\xc3onnection",
        "Proxy-Authenticat\xc5",
    };
    (void)state;
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++) {
        if (!http_is_hop_by_hop(str_from(hop[i]))) {
            fail_msg("%s is hop-by-hop", hop[i]);
        }
    }
    for (size_t i = 0; i < sizeof not_hop / sizeof not_hop[0]; i++) {
        if (http_is_hop_by_hop(str_from(not_hop[i]))) {
            fail_msg("%s is not hop-by-hop", not_hop[i]);
        }
    }
}

/* More Connection headers than the response writer keeps at hand: every
 * name any of them lists is still dropped. */
static void test_response_many_connection_headers(void **state)
{
    struct http_resp_opts o = { .client_minor = 1, .keep_alive = true, .via = "gatehouse" };
    (void)state;

    char *h = response_head("HTTP/1.1 200 OK\r\nConnection: a\r\nconnection: b\r\n"
                            "CONNECTION: c\r\nConnection: d\r\nConnection: e, f\r\n"
                            "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n"
                            "Content-Length: 0\r\n\r\n",
                            &o);
    const char *gone[] = { "A:", "B:", "C:", "D:", "E:", "F:", "onnection: a" };
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
        if (strstr(h, gone[i])) {
            fail_msg("%s was forwarded:\n%s", gone[i], h);
        }
    }
    assert_non_null(strstr(h, "G: 7\r\n"));
}

static void test_error_pages_escape_and_carry_request_id(void **state)
{
    struct buf b = { 0 };
    const char *ctype = NULL;
    (void)state;

    pages_error(&b, &ctype, 400, "bad \"x\" <script>", "rid-42", false);
    assert_string_equal(ctype, "application/json");
    buf_append(&b, "", 1);
    assert_string_equal(b.p, "{\"status\":400,\"error\":\"Bad Request\",\"detail\":"
                             "\"bad \\\"x\\\" <script>\",\"request_id\":\"rid-42\"}\n");
    buf_free(&b);
    pages_error(&b, &ctype, 502, "<script>alert(1)</script>", "rid-43", true);
    buf_append(&b, "", 1);
    assert_string_equal(ctype, "text/html; charset=utf-8");
    assert_null(strstr(b.p, "<script>"));
    assert_non_null(strstr(b.p, "&#60;script&#62;"));
    assert_non_null(strstr(b.p, "<code>rid-43</code>"));
    assert_non_null(strstr(b.p, "502 Bad Gateway"));
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_get_fields),
        cmocka_unit_test(test_chunked_body_read_whole),
        cmocka_unit_test(test_absolute_form_same_host_becomes_origin_form),
        cmocka_unit_test(test_target_and_host_normalised),
        cmocka_unit_test(test_request_line_single_spaces),
        cmocka_unit_test(test_smuggling_rejected),
        cmocka_unit_test(test_nul_in_value_rejected),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_header_bytes_limit),
        cmocka_unit_test(test_hop_by_hop_and_connection_named_removed),
        cmocka_unit_test(test_header_names_classified_exactly),
        cmocka_unit_test(test_response_many_connection_headers),
        cmocka_unit_test(test_forwarded_headers_replaced),
        cmocka_unit_test(test_trusted_listener_appends_forwarded_for),
        cmocka_unit_test(test_framing_restated),
        cmocka_unit_test(test_websocket_upgrade_only_when_allowed),
        cmocka_unit_test(test_response_rewriting),
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_error_pages_escape_and_carry_request_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
