/* fuzz_upgrade.c - what a client controls on the way to the backend beyond
 * framing: a request head (read as fuzz_http_head does) goes through the
 * header-name policy and the WebSocket handshake check, and the rest of the
 * input is offered as the backend's 101 answering it. Invariants: a name with
 * '_' is dropped unless underscores are allowed; a name that reads as
 * X-Gatehouse-* or Transfer-Encoding once '_' is '-' is always dropped; the
 * name comparison is symmetric; WS_OK only for exactly one "websocket" token
 * with a valid key and version 13 on a GET over HTTP/1.1; WS_BAD always names
 * a reason; a 101 is accepted only with the Sec-WebSocket-Accept computed for
 * the request's key. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "proxy/upgrade.h"
#include "replay.h"

static int no_body(void *arg, const char *p, size_t n)
{
    (void)arg;
    (void)p;
    (void)n;
    return 0;
}

static bool has_underscore(struct str s)
{
    return s.len > 0 && memchr(s.p, '_', s.len) != NULL;
}

static void check_names(const struct request *r)
{
    const struct hdr_policy strict = { 0 }, open = { true, true };

    for (size_t i = 0; i < r->nheaders; i++) {
        struct str n = r->headers[i].name;
        bool d_strict = hdr_client_dropped(n, &strict);
        bool d_open = hdr_client_dropped(n, &open);
        if (has_underscore(n)) {
            CHECK(d_strict);
        }
        if (d_open) {
            CHECK(d_strict); /* opting in never drops more */
        }
        if (has_underscore(n) && (http_name_alike_prefix(n, STR("x-gatehouse-")) ||
                                  http_name_alike(n, STR("transfer-encoding")))) {
            CHECK(d_open);
        }
        for (size_t k = 0; k < r->nheaders; k++) {
            struct str m = r->headers[k].name;
            CHECK(http_name_alike(n, m) == http_name_alike(m, n));
        }
    }
}

static void check_ws(const struct request *r, const char *rest, size_t rest_len)
{
    const char *why = NULL;
    enum ws_check wc = ws_check_request(r, &why);
    size_t nkey = 0;
    struct str key = STR_NULL;

    for (size_t i = 0; i < r->nheaders; i++) {
        if (str_ieq(r->headers[i].name, STR("sec-websocket-key"))) {
            key = r->headers[i].value;
            nkey++;
        }
    }
    if (wc == WS_BAD) {
        CHECK(why != NULL);
    }
    if (wc == WS_OK) {
        char acc[29];
        CHECK(str_eq_cstr(r->method, "GET") && r->http_minor == 1 && !r->has_body);
        CHECK(nkey == 1 && ws_key_valid(key) && ws_accept_for(key, acc));
        CHECK(strlen(acc) == 28);
    }
    /* The rest as the backend's answer. */
    struct http_limits lim = { .header_bytes = 8192, .headers = 50, .uri_bytes = 0 };
    struct http_in h;
    http_in_init(&h, HTTP_RESPONSE, &lim, no_body, NULL);
    if (http_in_feed(&h, rest, rest_len) == HTTP_IN_HEAD && h.p.status_code == 101 &&
        ws_check_response(r, &h, rest)) {
        char acc[29];
        bool found = false;
        CHECK(nkey == 1 && ws_accept_for(key, acc));
        for (size_t i = 0; i < h.nhdr; i++) {
            if (str_ieq(http_in_name(&h, rest, i), STR("sec-websocket-accept"))) {
                found = str_eq(str_trim(http_in_value(&h, rest, i)), (struct str){ acc, 28 });
            }
        }
        CHECK(found);
    }
    http_in_fini(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_limits lim = {
        .header_bytes = 8192, .headers = 50, .uri_bytes = 2048, .body_bytes = 1 << 16
    };
    struct http_in h;
    const char *base = (const char *)data;

    /* The first "\r\n\r\n" ends the request head; what follows is the 101. */
    http_in_init(&h, HTTP_REQUEST, &lim, no_body, NULL);
    if (http_in_feed(&h, base, size) == HTTP_IN_HEAD) {
        struct request r = { 0 };
        const char *reason = NULL;
        r.arena = arena_new(64 * 1024);
        if (http_request_from_head(&h, base, &r, &reason) == 0) {
            check_names(&r);
            check_ws(&r, base + h.pos, size - h.pos);
        }
        arena_free(r.arena);
    }
    http_in_fini(&h);
    return 0;
}
