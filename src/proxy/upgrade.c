/* proxy/upgrade.c - what of a client's request head may reach a backend:
 * the client header names dropped on the way and the WebSocket opening
 * handshake (RFC 6455 §4), checked on the request and on the 101 answering it.
 * Used by forward.c; no sockets here. */
#include "upgrade.h"

#include <string.h>

#include <openssl/evp.h>

/* ---- client header names ------------------------------------------------ */

/* A constant span for static tables. */
#define SPAN(lit)                                                                                  \
    {                                                                                              \
        (lit), sizeof(lit) - 1                                                                     \
    }

/* Headers the backend must only ever get from Gatehouse (or not at all), which
 * CGI-style backends (WSGI, CGI, PHP, Rack) cannot tell from a look-alike with
 * '_' for '-': both become HTTP_TRANSFER_ENCODING. http.c drops the exact names. */
static const struct str lookalike_names[] = {
    SPAN("connection"),
    SPAN("keep-alive"),
    SPAN("proxy-connection"),
    SPAN("te"),
    SPAN("trailer"),
    SPAN("transfer-encoding"),
    SPAN("upgrade"),
    SPAN("proxy-authenticate"),
    SPAN("proxy-authorization"),
    SPAN("http2-settings"),
    SPAN("content-length"),
    SPAN("expect"),
    SPAN("host"),
    SPAN("x-forwarded-for"),
    SPAN("x-forwarded-proto"),
    SPAN("x-forwarded-host"),
    SPAN("x-request-id"),
    SPAN("sec-websocket-key"),
    SPAN("sec-websocket-version"),
    SPAN("sec-websocket-accept"),
    SPAN("sec-websocket-protocol"),
    SPAN("sec-websocket-extensions"),
};

/* Headers many frameworks honour over the request line (IIS, Symfony, Laravel,
 * Rails and Express method overrides): a policy checked on one path or method
 * would let the backend serve another. */
static const struct str override_names[] = {
    SPAN("x-original-url"), SPAN("x-rewrite-url"),     SPAN("x-http-method-override"),
    SPAN("x-http-method"),  SPAN("x-method-override"),
};

static bool in_table(struct str n, const struct str *t, size_t nt)
{
    for (size_t i = 0; i < nt; i++) {
        if (http_name_alike(n, t[i])) {
            return true;
        }
    }
    return false;
}

bool hdr_client_dropped(struct str n, const struct hdr_policy *p)
{
    bool underscore = n.len > 0 && memchr(n.p, '_', n.len) != NULL;

    if (!p->allow_override_headers &&
        in_table(n, override_names, sizeof override_names / sizeof override_names[0])) {
        return true;
    }
    if (http_name_alike(n, STR("http2-settings"))) {
        return true; /* only meaningful with Upgrade: h2c, which is never forwarded */
    }
    if (!underscore) {
        return false; /* exact hop-by-hop and X-Gatehouse-* names: http.c */
    }
    /* nginx's underscores_in_headers off: a name with '_' is dropped unless the
     * route opts in; even then never one that reads as a name above. */
    if (!p->allow_underscores) {
        return true;
    }
    /* "Connection_" and "_Upgrade" as well: some servers trim the ends. */
    struct str t = n;
    while (t.len > 0 && (t.p[0] == '_' || t.p[0] == '-')) {
        t.p++;
        t.len--;
    }
    while (t.len > 0 && (t.p[t.len - 1] == '_' || t.p[t.len - 1] == '-')) {
        t.len--;
    }
    return http_name_alike_prefix(n, STR("x-gatehouse-")) ||
           http_name_alike_prefix(t, STR("x-gatehouse-")) ||
           in_table(t, lookalike_names, sizeof lookalike_names / sizeof lookalike_names[0]);
}

/* ---- WebSocket handshake (RFC 6455 §4) --------------------------------- */

/* The value of the one header named name, or STR_NULL when it is absent or
 * repeated. */
static struct str only_header(const struct request *r, const char *name)
{
    struct str v = STR_NULL, n = str_from(name);
    size_t count = 0;

    for (size_t i = 0; i < r->nheaders; i++) {
        if (str_ieq(r->headers[i].name, n)) {
            v = r->headers[i].value;
            count++;
        }
    }
    return count == 1 ? v : STR_NULL;
}

bool ws_key_valid(struct str key)
{
    unsigned char raw[24];

    if (key.len != 24 || key.p[22] != '=' || key.p[23] != '=') {
        return false;
    }
    for (size_t i = 0; i < 22; i++) {
        char ch = key.p[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '+' || ch == '/')) {
            return false;
        }
    }
    /* 24 base64 characters give 18 bytes, the last two of them padding. */
    return EVP_DecodeBlock(raw, (const unsigned char *)key.p, 24) == 18;
}

enum ws_check ws_check_request(const struct request *r, const char **why)
{
    bool websocket = false;
    size_t tokens = 0;

    for (size_t i = 0; i < r->nheaders; i++) {
        if (!str_ieq(r->headers[i].name, STR("upgrade"))) {
            continue;
        }
        struct str v = r->headers[i].value;
        size_t k = 0;
        while (k <= v.len) {
            size_t s = k;
            while (k < v.len && v.p[k] != ',') {
                k++;
            }
            struct str tok = str_trim((struct str){ v.p + s, k - s });
            if (tok.len > 0) {
                tokens++;
                websocket = websocket || str_ieq(tok, STR("websocket"));
            }
            k++;
        }
    }
    if (!websocket) {
        return WS_NOT_WEBSOCKET;
    }
    if (tokens != 1) {
        *why = "Upgrade must name websocket alone";
        return WS_BAD;
    }
    if (!str_eq_cstr(r->method, "GET") || r->http_minor != 1 || r->has_body) {
        *why = "a WebSocket handshake is a GET over HTTP/1.1 without a body";
        return WS_BAD;
    }
    if (!ws_key_valid(only_header(r, "sec-websocket-key"))) {
        *why = "missing or invalid Sec-WebSocket-Key";
        return WS_BAD;
    }
    if (!str_eq_cstr(only_header(r, "sec-websocket-version"), "13")) {
        *why = "unsupported Sec-WebSocket-Version (13 is)";
        return WS_BAD;
    }
    return WS_OK;
}

bool ws_accept_for(struct str key, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char in[24 + sizeof guid - 1], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (!ws_key_valid(key)) {
        return false;
    }
    memcpy(in, key.p, 24);
    memcpy(in + 24, guid, sizeof guid - 1);
    if (!EVP_Digest(in, sizeof in, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) {
        return false;
    }
    return EVP_EncodeBlock((unsigned char *)out, md, 20) == 28;
}

bool ws_check_response(const struct request *r, const struct http_in *h, const char *base)
{
    struct str accept = STR_NULL, upgrade = STR_NULL;
    size_t naccept = 0, nupgrade = 0;
    char want[29];

    /* llhttp sets upgrade on a 101 only with Upgrade and Connection: upgrade. */
    if (!h->p.upgrade || !ws_accept_for(only_header(r, "sec-websocket-key"), want)) {
        return false;
    }
    for (size_t i = 0; i < h->nhdr; i++) {
        struct str name = http_in_name(h, base, i);
        if (str_ieq(name, STR("sec-websocket-accept"))) {
            accept = http_in_value(h, base, i);
            naccept++;
        } else if (str_ieq(name, STR("upgrade"))) {
            upgrade = http_in_value(h, base, i);
            nupgrade++;
        }
    }
    return naccept == 1 && nupgrade == 1 && str_ieq(str_trim(upgrade), STR("websocket")) &&
           str_eq(str_trim(accept), (struct str){ want, 28 });
}
