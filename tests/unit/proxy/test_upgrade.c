/* Unit tests for proxy/upgrade.c: which client header names are dropped
 * (look-alikes with '_' for '-', '_' names by default, override headers) and
 * the WebSocket opening handshake on both sides (RFC 6455 §4, §1.3 example). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/upgrade.h"

static const struct hdr_policy strict = { 0 };
static const struct hdr_policy underscores = { .allow_underscores = true };
static const struct hdr_policy overrides = { .allow_override_headers = true };

static bool dropped(const char *name, const struct hdr_policy *p)
{
    return hdr_client_dropped(str_from(name), p);
}

static void test_name_alike(void **state)
{
    (void)state;
    assert_true(http_name_alike(STR("X_Gatehouse_User"), STR("x-gatehouse-user")));
    assert_true(http_name_alike(STR("TRANSFER_ENCODING"), STR("Transfer-Encoding")));
    assert_false(http_name_alike(STR("X_Gatehouse_Use"), STR("x-gatehouse-user")));
    assert_false(http_name_alike(STR("X.Gatehouse.User"), STR("x-gatehouse-user")));
    assert_true(http_name_alike_prefix(STR("x_gatehouse_anything"), STR("X-Gatehouse-")));
    assert_false(http_name_alike_prefix(STR("x_gate"), STR("X-Gatehouse-")));
}

static void test_underscore_names(void **state)
{
    (void)state;
    /* Default: every '_' name goes, as with nginx's underscores_in_headers off. */
    assert_true(dropped("X_Custom", &strict));
    assert_true(dropped("x-gatehouse_groups", &strict));
    assert_false(dropped("X-Custom", &strict));
    assert_false(dropped("Accept", &strict));
    /* Opted in: others pass, look-alikes never do. */
    assert_false(dropped("X_Custom", &underscores));
    const char *always[] = { "X_Gatehouse_User",
                             "x-gatehouse_groups",
                             "X_GATEHOUSE_EMAIL",
                             "_X_Gatehouse_User",
                             "Transfer_Encoding",
                             "Keep_Alive",
                             "Connection_",
                             "_Upgrade",
                             "Upgrade_",
                             "Proxy_Connection",
                             "Proxy_Authorization",
                             "Content_Length",
                             "X_Forwarded_For",
                             "X_Request_Id",
                             "Sec_WebSocket_Key",
                             "HTTP2_Settings",
                             NULL };
    for (size_t i = 0; always[i]; i++) {
        assert_true(dropped(always[i], &underscores));
        assert_true(dropped(always[i], &strict));
    }
}

static void test_override_headers(void **state)
{
    (void)state;
    const char *names[] = { "X-Original-URL", "x-rewrite-url",     "X-HTTP-Method-Override",
                            "X-HTTP-Method",  "X-Method-Override", NULL };
    for (size_t i = 0; names[i]; i++) {
        assert_true(dropped(names[i], &strict));
        assert_false(dropped(names[i], &overrides));
    }
    assert_true(dropped("HTTP2-Settings", &overrides));
}

static void test_key_and_accept(void **state)
{
    char out[29];

    (void)state;
    /* RFC 6455 §1.3. */
    assert_true(ws_accept_for(STR("dGhlIHNhbXBsZSBub25jZQ=="), out));
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_true(ws_key_valid(STR("AAAAAAAAAAAAAAAAAAAAAA==")));
    assert_false(ws_key_valid(STR("dGhlIHNhbXBsZSBub25jZQ")));
    assert_false(ws_key_valid(STR("abc")));
    assert_false(ws_key_valid(STR("dGhlIHNhbXBsZSBub25jZQ=x")));
    assert_false(ws_key_valid(STR("dGhlIHNhbXBsZSBub25j!Q==")));
    assert_false(ws_key_valid(STR("dGhlIHNhbXBsZSBub25jZQ+++")));
    assert_false(ws_accept_for(STR("abc"), out));
}

struct head {
    struct http_in h;
    struct request r;
};

static int no_body(void *arg, const char *p, size_t n)
{
    (void)arg;
    (void)p;
    (void)n;
    return 0;
}

static void parse_request(struct head *hd, const char *raw)
{
    static const struct http_limits lim = { .header_bytes = 4096, .headers = 20, .uri_bytes = 256 };
    const char *reason = NULL;

    memset(hd, 0, sizeof *hd);
    http_in_init(&hd->h, HTTP_REQUEST, &lim, no_body, NULL);
    assert_int_equal(http_in_feed(&hd->h, raw, strlen(raw)), HTTP_IN_HEAD);
    hd->r.arena = arena_new(0);
    assert_int_equal(http_request_from_head(&hd->h, raw, &hd->r, &reason), 0);
}

static void head_free(struct head *hd)
{
    arena_free(hd->r.arena);
    http_in_fini(&hd->h);
}

static enum ws_check check(const char *raw)
{
    struct head hd;
    const char *why = NULL;

    parse_request(&hd, raw);
    enum ws_check wc = ws_check_request(&hd.r, &why);
    if (wc == WS_BAD) {
        assert_non_null(why);
    }
    head_free(&hd);
    return wc;
}

#define WS_HEAD(method, upgrade, key, version)                                                     \
    method " /ws HTTP/1.1\r\nHost: a\r\nUpgrade: " upgrade "\r\nConnection: Upgrade\r\n"           \
           "Sec-WebSocket-Key: " key "\r\nSec-WebSocket-Version: " version "\r\n\r\n"

static void test_request_check(void **state)
{
    (void)state;
    assert_int_equal(check(WS_HEAD("GET", "websocket", "dGhlIHNhbXBsZSBub25jZQ==", "13")), WS_OK);
    assert_int_equal(check(WS_HEAD("GET", "WebSocket", "dGhlIHNhbXBsZSBub25jZQ==", "13")), WS_OK);
    assert_int_equal(check(WS_HEAD("GET", "websocket", "abc", "13")), WS_BAD);
    assert_int_equal(check(WS_HEAD("GET", "websocket", "dGhlIHNhbXBsZSBub25jZQ==", "8")), WS_BAD);
    assert_int_equal(check(WS_HEAD("GET", "WebSocket, h2c", "dGhlIHNhbXBsZSBub25jZQ==", "13")),
                     WS_BAD);
    assert_int_equal(check(WS_HEAD("PUT", "websocket", "dGhlIHNhbXBsZSBub25jZQ==", "13")), WS_BAD);
    assert_int_equal(check(WS_HEAD("GET", "h2c", "dGhlIHNhbXBsZSBub25jZQ==", "13")),
                     WS_NOT_WEBSOCKET);
    assert_int_equal(check("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n"
                           "Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMA\r\n\r\n"),
                     WS_NOT_WEBSOCKET);
    assert_int_equal(check("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"),
                     WS_BAD);
    assert_int_equal(check("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                           "Upgrade: h2c\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n"),
                     WS_BAD);
}

static bool answer(const char *resp)
{
    static const struct http_limits lim = { .header_bytes = 4096, .headers = 20 };
    struct head hd;
    struct http_in h;

    parse_request(&hd, WS_HEAD("GET", "websocket", "dGhlIHNhbXBsZSBub25jZQ==", "13"));
    http_in_init(&h, HTTP_RESPONSE, &lim, no_body, NULL);
    assert_int_equal(http_in_feed(&h, resp, strlen(resp)), HTTP_IN_HEAD);
    bool ok = ws_check_response(&hd.r, &h, resp);
    http_in_fini(&h);
    head_free(&hd);
    return ok;
}

static void test_response_check(void **state)
{
    (void)state;
    assert_true(answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
                       "\r\n\r\n"));
    assert_false(answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="
                        "\r\n\r\n"));
    assert_false(answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
                        "\r\n\r\n"));
    assert_false(answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\n\r\n"));
    assert_false(answer("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_alike),       cmocka_unit_test(test_underscore_names),
        cmocka_unit_test(test_override_headers), cmocka_unit_test(test_key_and_accept),
        cmocka_unit_test(test_request_check),    cmocka_unit_test(test_response_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
