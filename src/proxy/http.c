/* proxy/http.c - HTTP/1.1 framing and header rewriting for the proxy: wraps
 * llhttp (strict) for requests from clients and responses from upstreams,
 * adds the checks llhttp leaves to us (limits, obs-fold, control bytes, Host,
 * absolute-form, Transfer-Encoding), and serialises the heads we send on both
 * sides. Used by conn.c (client side) and forward.c (upstream side). */
#include "http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/normpath.h"

static struct http_in *H(llhttp_t *p)
{
    return p->data;
}

static int fail(struct http_in *h, int status, const char *reason)
{
    if (h->status == 0) {
        h->status = status;
        h->reason = reason;
    }
    return -1;
}

static uint32_t off_of(const struct http_in *h, const char *at)
{
    return (uint32_t)(at - h->base);
}

static int on_message_begin(llhttp_t *p)
{
    struct http_in *h = H(p);

    h->nhdr = 0;
    h->url_off = h->url_len = 0;
    h->status_off = h->status_len = 0;
    h->cur = 0;
    h->in_head = true;
    h->body_bytes = 0;
    h->ext_bytes = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct http_in *h = H(p);
    uint32_t off = off_of(h, at);

    if (h->url_len == 0) {
        h->url_off = off;
    }
    h->url_len += (uint32_t)n;
    if (h->url_len > h->lim.uri_bytes) {
        return fail(h, 414, "request target too long");
    }
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    struct http_in *h = H(p);

    if (h->status_len == 0) {
        h->status_off = off_of(h, at);
    }
    h->status_len += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct http_in *h = H(p);
    uint32_t off = off_of(h, at);

    if (h->cur != 1) {
        if (h->nhdr >= h->lim.headers) {
            return fail(h, h->p.type == HTTP_REQUEST ? 431 : 502, "too many header fields");
        }
        struct http_hdr_off *o = &h->hdr[h->nhdr++];
        o->name_off = off;
        o->name_len = 0;
        o->value_off = off;
        o->value_len = 0;
        h->cur = 1;
    }
    h->hdr[h->nhdr - 1].name_len += (uint32_t)n;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_in *h = H(p);

    /* RFC 9110 §5.1: a field name is a token, never empty (llhttp 8.1 lets
     * ":x" through as a field with no name). */
    if (h->cur != 1 || h->nhdr == 0 || h->hdr[h->nhdr - 1].name_len == 0) {
        return fail(h, h->p.type == HTTP_REQUEST ? 400 : 502, "empty header name");
    }
    h->cur = 2;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct http_in *h = H(p);
    uint32_t off = off_of(h, at);

    if (n == 0) {
        return 0;
    }
    if (h->cur != 2 || h->nhdr == 0) {
        return fail(h, h->p.type == HTTP_REQUEST ? 400 : 502, "header value without a name");
    }
    struct http_hdr_off *o = &h->hdr[h->nhdr - 1];
    if (o->value_len == 0) {
        /* RFC 9112 §5.2: obs-fold is rejected. llhttp accepts it and hands the
         * value over in pieces, so a value that does not follow the colon (after
         * optional whitespace) continues a folded line. */
        uint32_t k = off;
        while (k > 0 && (h->base[k - 1] == ' ' || h->base[k - 1] == '\t')) {
            k--;
        }
        if (k == 0 || h->base[k - 1] != ':') {
            return fail(h, h->p.type == HTTP_REQUEST ? 400 : 502, "obsolete line folding");
        }
        o->value_off = off;
    } else if (off != o->value_off + o->value_len) {
        return fail(h, h->p.type == HTTP_REQUEST ? 400 : 502, "obsolete line folding");
    }
    o->value_len += (uint32_t)n;
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    H(p)->cur = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_in *h = H(p);

    h->in_head = false;
    h->ev = 1;
    if (h->skip_body) {
        /* A response to HEAD: llhttp's "return 1" cannot be combined with a
         * pause, so set the flag it would have set. */
        p->flags |= F_SKIPBODY;
    }
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct http_in *h = H(p);

    h->body_bytes += n;
    if (h->lim.body_bytes && h->body_bytes > h->lim.body_bytes) {
        return fail(h, h->p.type == HTTP_REQUEST ? 413 : 502, "body too large");
    }
    if (h->on_body && h->on_body(h->arg, at, n) != 0) {
        return fail(h, 502, "body sink failed");
    }
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    H(p)->ext_bytes = 0;
    return 0;
}

static int on_chunk_ext(llhttp_t *p, const char *at, size_t n)
{
    struct http_in *h = H(p);

    (void)at;
    /* llhttp 8.1 does not bound chunk extensions; a stream of them would
     * otherwise cost CPU without ever producing body bytes. */
    h->ext_bytes += (uint32_t)n;
    if (h->ext_bytes > 256) {
        return fail(h, h->p.type == HTTP_REQUEST ? 400 : 502, "chunk extension too long");
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    /* Upgrade: let llhttp stop with HPE_PAUSED_UPGRADE at the first tunnel byte. */
    H(p)->ev = 2;
    if (p->upgrade) {
        return 0;
    }
    return HPE_PAUSED;
}

/* The parser callbacks: the chunk extensions share one; for every other
 * event llhttp's on_<event> is our on_<event> (llhttp_settings_init() would
 * only zero the rest). */
// clang-format off
#define PARSER_EVENTS(X)                                                                           \
    X(message_begin)                                                                               \
    X(message_complete)                                                                            \
    X(url)                                                                                         \
    X(status)                                                                                      \
    X(headers_complete)                                                                            \
    X(header_field)                                                                                \
    X(header_field_complete)                                                                       \
    X(header_value)                                                                                \
    X(header_value_complete)                                                                       \
    X(body)                                                                                        \
    X(chunk_header)
// clang-format on
static const llhttp_settings_t g_settings = { .on_chunk_extension_name = on_chunk_ext,
                                              .on_chunk_extension_value = on_chunk_ext,
#define X(event) .on_##event = on_##event,
                                              PARSER_EVENTS(X)
#undef X
};

/* A connection drops its parser whenever it goes idle: the header tables of
 * this thread's last few parsers wait here for the next request. */
static __thread struct mem_cache hdr_cache;

void http_in_init(struct http_in *h, enum llhttp_type type, const struct http_limits *lim,
                  http_body_fn *on_body_cb, void *arg)
{
    memset(h, 0, sizeof *h);
    h->lim = *lim;
    if (h->lim.headers == 0) {
        h->lim.headers = 100;
    }
    h->on_body = on_body_cb;
    h->arg = arg;
    h->hdr = mem_cache_get(&hdr_cache, h->lim.headers * sizeof *h->hdr);
    llhttp_init(&h->p, type, &g_settings);
    h->p.data = h;
}

void http_in_fini(struct http_in *h)
{
    mem_cache_put(&hdr_cache, h->hdr, h->lim.headers * sizeof *h->hdr);
    h->hdr = NULL;
}

void http_in_next(struct http_in *h)
{
    h->pos = 0;
    h->nhdr = 0;
    h->in_head = false;
    h->status = 0;
    h->reason = NULL;
    h->skip_body = false;
}

enum http_in_rc http_in_feed(struct http_in *h, const char *base, size_t avail)
{
    enum llhttp_errno rc;

    h->base = base;
    h->ev = 0;
    if (h->pos > avail) {
        return HTTP_IN_MORE;
    }
    rc = llhttp_execute(&h->p, base + h->pos, avail - h->pos);
    if (rc == HPE_OK) {
        h->pos = avail;
        if (h->in_head && h->pos > h->lim.header_bytes) {
            fail(h, h->p.type == HTTP_REQUEST ? 431 : 502, "header section too large");
            return HTTP_IN_ERROR;
        }
        return HTTP_IN_MORE;
    }
    if (rc == HPE_PAUSED || rc == HPE_PAUSED_UPGRADE) {
        h->pos = (size_t)(llhttp_get_error_pos(&h->p) - base);
        if (rc == HPE_PAUSED_UPGRADE) {
            return HTTP_IN_UPGRADE;
        }
        llhttp_resume(&h->p);
        if (h->ev == 1) {
            if (h->pos > h->lim.header_bytes) {
                fail(h, h->p.type == HTTP_REQUEST ? 431 : 502, "header section too large");
                return HTTP_IN_ERROR;
            }
            return HTTP_IN_HEAD;
        }
        return HTTP_IN_DONE;
    }
    if (h->status == 0) {
        h->status = h->p.type == HTTP_REQUEST ? 400 : 502;
        h->reason = llhttp_get_error_reason(&h->p);
        if (!h->reason) {
            h->reason = llhttp_errno_name(rc);
        }
    }
    return HTTP_IN_ERROR;
}

enum http_in_rc http_in_eof(struct http_in *h)
{
    enum llhttp_errno rc = llhttp_finish(&h->p);

    if (rc == HPE_OK || rc == HPE_PAUSED) {
        return HTTP_IN_DONE;
    }
    fail(h, h->p.type == HTTP_REQUEST ? 400 : 502, "connection closed mid-message");
    return HTTP_IN_ERROR;
}

struct str http_in_name(const struct http_in *h, const char *base, size_t i)
{
    return (struct str){ base + h->hdr[i].name_off, h->hdr[i].name_len };
}

struct str http_in_value(const struct http_in *h, const char *base, size_t i)
{
    return str_trim((struct str){ base + h->hdr[i].value_off, h->hdr[i].value_len });
}

/* The bytes a Host may hold besides letters and digits: "-._~:[]%!$&'()*+,;=". */
static const bool host_punct[256] = {
    ['-'] = true, ['.'] = true,  ['_'] = true, ['~'] = true, [':'] = true,
    ['['] = true, [']'] = true,  ['%'] = true, ['!'] = true, ['$'] = true,
    ['&'] = true, ['\''] = true, ['('] = true, [')'] = true, ['*'] = true,
    ['+'] = true, [','] = true,  [';'] = true, ['='] = true,
};

static bool valid_host(struct str s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              host_punct[c])) {
            return false;
        }
    }
    return true;
}

static struct str dup_str(struct arena *a, struct str s)
{
    char *p = arena_strndup(a, s.p ? s.p : "", s.len);
    return p ? (struct str){ p, s.len } : STR_NULL;
}

/* Any byte below 0x20 but HTAB, or DEL? Eight bytes a step: a bearer token or
 * a cookie header runs to kilobytes, and this runs on every request. */
static bool has_control(struct str v)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t k = 0;
    for (; k + 8 <= v.len; k += 8) {
        uint64_t w;
        memcpy(&w, v.p + k, 8);
        uint64_t del = w ^ (0x7f * ones);
        /* A high bit where some byte is < 0x20 (or >= 0x80, sorted out below), or 0x7f. */
        if (((w - 0x20 * ones) & ~w & highs) == 0 && ((del - ones) & ~del & highs) == 0) {
            continue;
        }
        break;
    }
    for (; k < v.len; k++) {
        unsigned char c = (unsigned char)v.p[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return true;
        }
    }
    return false;
}

/* Splits a Host value (or absolute-form authority) into its name, without one
 * trailing dot, and its port (STR_NULL when none); "[v6]" keeps its brackets.
 * Refuses what names a host ambiguously: a non-numeric port, empty labels, a
 * lone dot, percent-escapes. */
static bool split_host(struct str h, struct str *name, struct str *port)
{
    size_t n = h.len;

    *port = STR_NULL;
    if (h.len > 0 && h.p[0] == '[') {
        const char *close = memchr(h.p, ']', h.len);
        if (!close) {
            return false;
        }
        n = (size_t)(close - h.p) + 1;
        if (n < h.len && h.p[n] != ':') {
            return false;
        }
    } else {
        const char *colon = h.len ? memchr(h.p, ':', h.len) : NULL;
        if (colon) {
            n = (size_t)(colon - h.p);
        }
    }
    if (n < h.len) {
        *port = (struct str){ h.p + n + 1, h.len - n - 1 };
        if (port->len > 5) {
            return false;
        }
        for (size_t i = 0; i < port->len; i++) {
            if (port->p[i] < '0' || port->p[i] > '9') {
                return false;
            }
        }
    }
    *name = (struct str){ h.p, n };
    if (n == 0 || h.p[0] == '[') {
        return n > 0 || h.len == 0;
    }
    if (h.p[n - 1] == '.') {
        name->len--;
    }
    if (name->len == 0 || name->p[0] == '.' || name->p[name->len - 1] == '.' ||
        memchr(name->p, '%', name->len) || memchr(name->p, '[', name->len) ||
        memchr(name->p, ']', name->len)) {
        return false;
    }
    for (size_t i = 1; i < name->len; i++) {
        if (name->p[i] == '.' && name->p[i - 1] == '.') {
            return false;
        }
    }
    return true;
}

/* s, a span of the head at base, as the same span of its copy head (pos
 * bytes), NUL-terminated there; a span the copy does not hold with a room to
 * spare is copied alone. */
static struct str in_head(struct arena *a, char *head, size_t pos, const char *base, struct str s)
{
    size_t off = (size_t)(s.p - base);
    if (s.p < base || off >= pos || s.len >= pos - off) {
        return dup_str(a, s);
    }
    head[off + s.len] = '\0';
    return (struct str){ head + off, s.len };
}

static struct str lower_dup(struct arena *a, struct str s)
{
    char *p = arena_strndup(a, s.p ? s.p : "", s.len);
    if (!p) {
        return STR_NULL;
    }
    for (size_t i = 0; i < s.len; i++) {
        if (p[i] >= 'A' && p[i] <= 'Z') {
            p[i] = (char)(p[i] - 'A' + 'a');
        }
    }
    return (struct str){ p, s.len };
}

/* The header names the proxy acts on, told apart with one switch on the
 * length and at most two case-insensitive compares: every header of every
 * request and response passes here. */
enum hname {
    HN_OTHER,
    HN_HOST,
    HN_EXPECT,
    HN_CONNECTION,
    HN_UPGRADE,
    HN_TRANSFER_ENCODING,
    HN_HOP, /* another hop-by-hop header (RFC 9110 §7.6.1) */
    HN_CONTENT_LENGTH,
    HN_X_FORWARDED_FOR,
    HN_X_REQUEST_ID,
    HN_REPLACED, /* X-Forwarded-Proto, X-Forwarded-Host: the proxy writes its own */
};

/* Eight bytes with their ASCII capitals in lower case (SWAR: a byte's high
 * bit marks 'A'..'Z', shifted down to 0x20). */
static inline uint64_t lower8(uint64_t w)
{
    const uint64_t highs = 0x8080808080808080ull, low7 = 0x7f7f7f7f7f7f7f7full;
    uint64_t h = w & low7;
    uint64_t ge_a = h + 0x3f3f3f3f3f3f3f3full; /* high bit: byte >= 'A' (0x41) */
    uint64_t gt_z = h + 0x2525252525252525ull; /* high bit: byte > 'Z' (0x5a) */
    uint64_t upper = (ge_a ^ gt_z) & ~w & highs;
    return w | (upper >> 2);
}

/* n (as long as lower_lit) equals lower_lit, ASCII case folded. */
static inline bool is_name(struct str n, const char *lower_lit)
{
    size_t i = 0;
    for (; i + 8 <= n.len; i += 8) {
        uint64_t a, b;
        memcpy(&a, n.p + i, 8);
        memcpy(&b, lower_lit + i, 8);
        if (lower8(a) != b) {
            return false;
        }
    }
    for (; i < n.len; i++) {
        unsigned char c = (unsigned char)n.p[i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)lower_lit[i]) {
            return false;
        }
    }
    return true;
}

/* By length, the (at most two) names of that length, in lower case. */
static const struct hname_entry {
    const char *name;
    enum hname kind;
} hnames[20][2] = {
    [2] = { { "te", HN_HOP } },
    [4] = { { "host", HN_HOST } },
    [6] = { { "expect", HN_EXPECT } },
    [7] = { { "upgrade", HN_UPGRADE }, { "trailer", HN_HOP } },
    [10] = { { "connection", HN_CONNECTION }, { "keep-alive", HN_HOP } },
    [12] = { { "x-request-id", HN_X_REQUEST_ID } },
    [14] = { { "content-length", HN_CONTENT_LENGTH } },
    [15] = { { "x-forwarded-for", HN_X_FORWARDED_FOR } },
    [16] = { { "proxy-connection", HN_HOP }, { "x-forwarded-host", HN_REPLACED } },
    [17] = { { "transfer-encoding", HN_TRANSFER_ENCODING }, { "x-forwarded-proto", HN_REPLACED } },
    [18] = { { "proxy-authenticate", HN_HOP } },
    [19] = { { "proxy-authorization", HN_HOP } },
};

static enum hname hname_of(struct str n)
{
    const struct hname_entry *e = n.len < 20 ? hnames[n.len] : NULL;
    for (size_t i = 0; e && i < 2 && e[i].name; i++) {
        /* The first letter, case folded (the names all start with one),
         * turns most other names of the same length away. */
        if (((unsigned char)n.p[0] | 0x20) == (unsigned char)e[i].name[0] &&
            is_name(n, e[i].name)) {
            return e[i].kind;
        }
    }
    return HN_OTHER;
}

static bool hname_hop_by_hop(enum hname k)
{
    return k == HN_CONNECTION || k == HN_UPGRADE || k == HN_TRANSFER_ENCODING || k == HN_HOP;
}

int http_request_from_head(const struct http_in *h, const char *base, struct request *r,
                           const char **reason)
{
    const llhttp_t *p = &h->p;
    struct str url = { base + h->url_off, h->url_len };
    struct str host = STR_NULL, te = STR_NULL, expect = STR_NULL;
    size_t nhost = 0, nte = 0, nexpect = 0;

#define BAD(st, why)                                                                               \
    do {                                                                                           \
        *reason = (why);                                                                           \
        return (st);                                                                               \
    } while (0)

    /* RFC 9112 §3: method SP request-target SP HTTP-version, one SP each
     * (llhttp lets a run of spaces through on either side of the target). */
    if (h->url_off < 2 || base[h->url_off - 1] != ' ' || base[h->url_off - 2] == ' ' ||
        base[h->url_off + h->url_len] != ' ' || base[h->url_off + h->url_len + 1] == ' ') {
        BAD(400, "request line must use single spaces");
    }
    if (p->http_major != 1 || p->http_minor > 1) {
        BAD(400, "unsupported HTTP version");
    }
    if (p->method == HTTP_CONNECT) {
        BAD(400, "CONNECT is not supported");
    }
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    r->method = str_from(llhttp_method_name((llhttp_method_t)p->method));
    r->head_method = p->method == HTTP_HEAD;

    r->headers = arena_alloc(r->arena, (h->nhdr ? h->nhdr : 1) * sizeof *r->headers);
    /* One copy of the head in the arena instead of one per name and value: the
     * spans point into it, each NUL-terminated in place (over the ':' after a
     * name, the blank or CR after a value: bytes of the copy nobody reads). */
    char *head = arena_alloc(r->arena, h->pos + 1);
    if (!r->headers || !head) {
        BAD(431, "header section too large");
    }
    memcpy(head, base, h->pos);
    head[h->pos] = '\0';
    r->nheaders = 0;
    for (size_t i = 0; i < h->nhdr; i++) {
        struct str name = http_in_name(h, base, i);
        struct str value = http_in_value(h, base, i);
        /* RFC 9110 §5.5: CR, LF and NUL are never valid in a field value;
         * other controls are refused too, as a backend may split on them. */
        if (has_control(value)) {
            BAD(400, "control character in header value");
        }
        struct header *hd = &r->headers[r->nheaders++];
        hd->name = in_head(r->arena, head, h->pos, base, name);
        hd->value = value.len ? in_head(r->arena, head, h->pos, base, value)
                              : (struct str){ hd->name.p + hd->name.len, 0 }; /* its NUL */
        if (!hd->name.p || !hd->value.p) {
            BAD(431, "header section too large");
        }
        switch (hname_of(name)) {
        case HN_HOST:
            host = hd->value;
            nhost++;
            break;
        case HN_TRANSFER_ENCODING:
            te = value;
            nte++;
            break;
        case HN_EXPECT:
            expect = value;
            nexpect++;
            break;
        default:
            break;
        }
    }
    if (nhost > 1) {
        BAD(400, "duplicate Host header");
    }
    if (nhost == 0 && r->http_minor == 1) {
        BAD(400, "missing Host header");
    }
    struct str hname = STR(""), hport = STR_NULL;
    if (nhost == 1 && (!valid_host(host) || (host.len == 0 && r->http_minor == 1) ||
                       !split_host(host, &hname, &hport))) {
        BAD(400, "invalid Host header");
    }
    /* RFC 9112 §6.1: only a final "chunked" frames a request; anything else
     * (other codings, lists, repeats, or any TE in HTTP/1.0) is ambiguous for
     * some backend and is refused rather than normalised. */
    if (nte > 0 && (nte > 1 || !str_ieq_cstr(te, "chunked") || r->http_minor == 0)) {
        BAD(400, "unsupported Transfer-Encoding");
    }
    if (nexpect > 0) {
        if (nexpect > 1 || !str_ieq_cstr(expect, "100-continue")) {
            BAD(417, "unsupported Expect");
        }
        r->expect_continue = r->http_minor == 1;
    }

    /* Target: origin-form, asterisk-form for OPTIONS, or absolute-form whose
     * authority must be the Host (RFC 9112 §3.2.2), never a second opinion. */
    if (url.len == 0) {
        BAD(400, "empty request target");
    }
    if (memchr(url.p, '#', url.len)) {
        BAD(400, "fragment in request target");
    }
    r->raw_target = in_head(r->arena, head, h->pos, base, url);
    struct str rest = url; /* path and query, the path possibly empty */
    bool asterisk = false;
    if (url.p[0] == '/') {
        /* origin-form */
    } else if (url.len == 1 && url.p[0] == '*' && p->method == HTTP_OPTIONS) {
        asterisk = true;
    } else {
        size_t skip;
        if (url.len > 7 && strncasecmp(url.p, "http://", 7) == 0) {
            skip = 7;
        } else if (url.len > 8 && strncasecmp(url.p, "https://", 8) == 0) {
            skip = 8;
        } else {
            BAD(400, "invalid request target");
        }
        size_t e = skip;
        while (e < url.len && url.p[e] != '/' && url.p[e] != '?') {
            e++;
        }
        struct str auth = { url.p + skip, e - skip }, aname, aport;
        if (auth.len == 0 || !valid_host(auth) || memchr(auth.p, '@', auth.len) ||
            !split_host(auth, &aname, &aport)) {
            BAD(400, "invalid authority in request target");
        }
        if (nhost == 1 && !(str_ieq(aname, hname) && str_eq(aport, hport))) {
            BAD(400, "absolute-form target names another host");
        }
        if (nhost == 0) {
            host = dup_str(r->arena, auth);
            hname = aname;
        }
        rest = (struct str){ url.p + e, url.len - e };
    }
    r->host = host.p ? host : STR("");
    r->hostname = lower_dup(r->arena, hname);
    if (!r->raw_target.p || !r->hostname.p) {
        BAD(431, "header section too large");
    }
    if (asterisk) {
        r->target = r->path = STR("*");
        r->query = STR("");
    } else {
        const char *q = memchr(rest.p, '?', rest.len);
        struct str path = { rest.p, q ? (size_t)(q - rest.p) : rest.len };
        size_t qlen = q ? rest.len - path.len : 0; /* with the '?' */
        /* "http://host" and "http://host?q" have the path "/". */
        char *t = arena_alloc(r->arena, (path.len ? path.len : 1) + qlen + 1);
        size_t n = 0;
        if (!t) {
            BAD(431, "header section too large");
        }
        if (path.len == 0) {
            t[0] = '/';
            n = 1;
        } else {
            enum normpath_rc rc = normpath(path.p, path.len, t, NORMPATH_KEEP_ENCODED_SLASH, &n,
                                           &r->path_encoded_slash);
            if (rc != NORMPATH_OK) {
                BAD(400, normpath_reason(rc));
            }
        }
        r->path = (struct str){ t, n };
        if (q) {
            memcpy(t + n, q, qlen);
            r->query = (struct str){ t + n + 1, qlen - 1 };
        } else {
            r->query = STR("");
        }
        t[n + qlen] = '\0';
        r->target = (struct str){ t, n + qlen };
    }

    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
    r->content_length = r->has_content_length ? p->content_length : 0;
    r->has_body = r->chunked || r->content_length > 0;
    if (!r->chunked && h->lim.body_bytes && r->content_length > h->lim.body_bytes) {
        BAD(413, "body too large");
    }
    r->upgrade = p->upgrade != 0;
    r->keep_alive = llhttp_should_keep_alive(p) != 0;
    return 0;
#undef BAD
}

bool http_is_hop_by_hop(struct str n)
{
    return hname_hop_by_hop(hname_of(n));
}

bool http_list_has(struct str list, struct str token)
{
    size_t i = 0;

    while (i < list.len) {
        size_t s = i;
        while (i < list.len && list.p[i] != ',') {
            i++;
        }
        if (str_ieq(str_trim((struct str){ list.p + s, i - s }), token)) {
            return true;
        }
        i++;
    }
    return false;
}

/* Whether any Connection header among hdrs names `name`. */
static bool connection_names(const struct header *hdrs, size_t n, struct str name)
{
    for (size_t i = 0; i < n; i++) {
        if (hname_of(hdrs[i].name) == HN_CONNECTION && http_list_has(hdrs[i].value, name)) {
            return true;
        }
    }
    return false;
}

static bool has_prefix_ci(struct str s, const char *prefix)
{
    size_t n = strlen(prefix);
    return s.len >= n && strncasecmp(s.p, prefix, n) == 0;
}

/* A head is written into out with one reservation: the caller adds up an
 * upper bound of its size first, then each piece is a plain copy. */
static char *head_start(struct buf *out, size_t bound)
{
    buf_reserve(out, bound);
    return out->p + out->len;
}

static void head_end(struct buf *out, char *w)
{
    out->len = (size_t)(w - out->p);
}

static void put(char **w, const void *p, size_t n)
{
    if (n) {
        memcpy(*w, p, n);
        *w += n;
    }
}

#define PUT_LIT(w, lit) put((w), (lit), sizeof(lit) - 1)

static void put_str(char **w, struct str s)
{
    put(w, s.p, s.len);
}

/* "Name: value\r\n" */
static void put_field(char **w, struct str name, struct str value)
{
    put_str(w, name);
    PUT_LIT(w, ": ");
    put_str(w, value);
    PUT_LIT(w, "\r\n");
}

static void put_u64(char **w, uint64_t v)
{
    char t[20];
    size_t i = sizeof t;
    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(w, t + i, sizeof t - i);
}

/* Room for the fixed text of a head beside its variable parts (status or
 * request line, framing, Connection, Via, X-Forwarded-*, X-Request-Id). */
#define HEAD_FIXED 256

void http_format_upstream_request(struct buf *out, const struct request *r,
                                  const struct http_fwd_opts *o)
{
    struct str upgrade = STR_NULL;
    bool host_sent = false;
    size_t nconn = 0;
    const char *scheme = r->scheme ? r->scheme : "http", *via = o->via ? o->via : "gatehouse";
    size_t ip_len = strlen(r->client_ip), id_len = strlen(r->id);
    size_t scheme_len = strlen(scheme), via_len = strlen(via);
    size_t bound = HEAD_FIXED + r->method.len + r->target.len + 2 * r->host.len + ip_len + id_len +
                   scheme_len + via_len + (o->default_host ? strlen(o->default_host) : 0);

    for (size_t i = 0; i < r->nheaders; i++) {
        struct str n = r->headers[i].name;
        /* Each header at most once: as itself, or as part of X-Forwarded-For,
         * or as the Upgrade value. */
        bound += n.len + 2 * r->headers[i].value.len + 4;
        if (n.len == 10 && hname_of(n) == HN_CONNECTION) {
            nconn++;
        }
    }
    for (size_t i = 0; i < r->nup_headers; i++) {
        bound += r->up_headers[i].name.len + r->up_headers[i].value.len + 4;
    }

    char *w = head_start(out, bound);
    put_str(&w, r->method);
    PUT_LIT(&w, " ");
    put_str(&w, r->target);
    PUT_LIT(&w, " HTTP/1.1\r\n");
    for (size_t i = 0; i < r->nheaders; i++) {
        struct str n = r->headers[i].name;
        enum hname k = hname_of(n);
        if (k == HN_UPGRADE) {
            upgrade = r->headers[i].value;
        }
        /* Hop-by-hop, those the proxy replaces or consumes (Content-Length,
         * Expect, X-Forwarded-*, X-Request-Id), those named in Connection. */
        if (hname_hop_by_hop(k) || k == HN_CONTENT_LENGTH || k == HN_EXPECT ||
            k == HN_X_FORWARDED_FOR || k == HN_REPLACED || k == HN_X_REQUEST_ID ||
            (nconn > 0 && connection_names(r->headers, r->nheaders, n))) {
            continue;
        }
        bool strip = false;
        for (const char *const *pp = o->strip_prefixes; pp && *pp; pp++) {
            if (has_prefix_ci(n, *pp)) {
                strip = true;
            }
        }
        if (strip) {
            continue;
        }
        if (k == HN_HOST) {
            if (r->headers[i].value.len == 0) {
                continue; /* HTTP/1.0 "Host:" with nothing: replaced below */
            }
            host_sent = true;
        }
        put_field(&w, n, r->headers[i].value);
    }
    if (!host_sent) {
        /* HTTP/1.0 without Host (maybe with an absolute-form target): HTTP/1.1
         * upstreams require one (RFC 9112 §3.2). */
        if (r->host.len > 0) {
            put_field(&w, STR("Host"), r->host);
        } else if (o->default_host) {
            put_field(&w, STR("Host"), str_from(o->default_host));
        }
    }
    if (r->chunked) {
        PUT_LIT(&w, "Transfer-Encoding: chunked\r\n");
    } else if (r->has_content_length) {
        PUT_LIT(&w, "Content-Length: ");
        put_u64(&w, r->content_length);
        PUT_LIT(&w, "\r\n");
    }
    PUT_LIT(&w, "X-Forwarded-For: ");
    if (o->trust_forwarded) {
        for (size_t i = 0; i < r->nheaders; i++) {
            if (hname_of(r->headers[i].name) == HN_X_FORWARDED_FOR &&
                !connection_names(r->headers, r->nheaders, r->headers[i].name) &&
                r->headers[i].value.len > 0) {
                put_str(&w, r->headers[i].value);
                PUT_LIT(&w, ", ");
            }
        }
    }
    put(&w, r->client_ip, ip_len);
    PUT_LIT(&w, "\r\nX-Forwarded-Proto: ");
    put(&w, scheme, scheme_len);
    PUT_LIT(&w, "\r\nX-Forwarded-Host: ");
    put_str(&w, r->host);
    PUT_LIT(&w, "\r\nX-Request-Id: ");
    put(&w, r->id, id_len);
    if (r->http_minor == 0) {
        PUT_LIT(&w, "\r\nVia: 1.0 ");
    } else {
        PUT_LIT(&w, "\r\nVia: 1.1 ");
    }
    put(&w, via, via_len);
    PUT_LIT(&w, "\r\n");
    /* Identity headers added by the access stage (after the client's copies
     * were stripped above). */
    for (size_t i = 0; i < r->nup_headers; i++) {
        put_field(&w, r->up_headers[i].name, r->up_headers[i].value);
    }
    if (r->upgrade && o->websocket && upgrade.p) {
        PUT_LIT(&w, "Connection: upgrade\r\nUpgrade: ");
        put_str(&w, upgrade);
        PUT_LIT(&w, "\r\n");
    }
    PUT_LIT(&w, "\r\n");
    head_end(out, w);
}

void http_format_response(struct buf *out, const struct http_in *h, const char *base,
                          struct http_resp_opts *o)
{
    const llhttp_t *p = &h->p;
    int status = p->status_code;
    bool interim = status >= 100 && status < 200;
    bool no_body = interim || status == 204 || status == 304 || o->head_method;
    struct str reason = { base + h->status_off, h->status_len };
    struct str upgrade = STR_NULL;
    size_t nconn = 0;
    const char *via = o->via ? o->via : "gatehouse";
    size_t via_len = strlen(via), id_len = o->request_id ? strlen(o->request_id) : 0;

    if (reason.len == 0) {
        reason = str_from(http_reason(status));
    }
    size_t bound = HEAD_FIXED + reason.len + via_len + id_len;
    /* The Connection headers' options, split and trimmed once (as
     * http_list_has splits them): each header name is compared with them,
     * length first. Beyond CONN_TOKENS of them, the rare head is searched
     * again for each header. */
    enum { CONN_TOKENS = 8 };
    struct str conn[CONN_TOKENS];
    for (size_t i = 0; i < h->nhdr; i++) {
        /* Each header at most once, as itself or as the Upgrade value. */
        bound += h->hdr[i].name_len + h->hdr[i].value_len + 4;
        if (h->hdr[i].name_len == 10 && hname_of(http_in_name(h, base, i)) == HN_CONNECTION) {
            struct str v = http_in_value(h, base, i);
            for (size_t k = 0; k < v.len; k++) {
                size_t s = k;
                while (k < v.len && v.p[k] != ',') {
                    k++;
                }
                if (nconn < CONN_TOKENS) {
                    conn[nconn] = str_trim((struct str){ v.p + s, k - s });
                }
                nconn++;
            }
        }
    }

    o->chunk_to_client = false;
    o->close_after = false;
    char *w = head_start(out, bound);
    PUT_LIT(&w, "HTTP/1.1 ");
    put_u64(&w, (uint64_t)status);
    PUT_LIT(&w, " ");
    put_str(&w, reason);
    PUT_LIT(&w, "\r\n");
    for (size_t i = 0; i < h->nhdr; i++) {
        struct str n = http_in_name(h, base, i);
        enum hname k = hname_of(n);
        bool named = false;
        if (k == HN_UPGRADE) {
            upgrade = http_in_value(h, base, i);
        }
        for (size_t j = 0; j < nconn && j < CONN_TOKENS && !named; j++) {
            named = conn[j].len == n.len && str_ieq(conn[j], n);
        }
        for (size_t j = 0; j < h->nhdr && !named && nconn > CONN_TOKENS; j++) {
            if (hname_of(http_in_name(h, base, j)) == HN_CONNECTION &&
                http_list_has(http_in_value(h, base, j), n)) {
                named = true;
            }
        }
        if (named || hname_hop_by_hop(k) || k == HN_CONTENT_LENGTH || k == HN_X_REQUEST_ID) {
            continue;
        }
        put_field(&w, n, http_in_value(h, base, i));
    }
    if (status == 101) {
        PUT_LIT(&w, "Connection: upgrade\r\nUpgrade: ");
        put_str(&w, upgrade);
        PUT_LIT(&w, "\r\n");
    } else if (!interim) {
        if (no_body) {
            /* HEAD and 304 keep the representation's length; 204 has none. */
            if ((o->head_method || status == 304) && (p->flags & F_CONTENT_LENGTH) &&
                !(p->flags & F_CHUNKED)) {
                PUT_LIT(&w, "Content-Length: ");
                put_u64(&w, p->content_length);
                PUT_LIT(&w, "\r\n");
            }
        } else if (!(p->flags & F_CHUNKED) && (p->flags & F_CONTENT_LENGTH)) {
            PUT_LIT(&w, "Content-Length: ");
            put_u64(&w, p->content_length);
            PUT_LIT(&w, "\r\n");
        } else if (o->client_minor >= 1) {
            PUT_LIT(&w, "Transfer-Encoding: chunked\r\n");
            o->chunk_to_client = true;
        } else {
            o->close_after = true;
        }
        if (!o->keep_alive || o->close_after) {
            PUT_LIT(&w, "Connection: close\r\n");
        } else if (o->client_minor == 0) {
            PUT_LIT(&w, "Connection: keep-alive\r\n");
        }
    }
    PUT_LIT(&w, "Via: 1.1 ");
    put(&w, via, via_len);
    PUT_LIT(&w, "\r\n");
    if (o->request_id && !interim) {
        PUT_LIT(&w, "X-Request-Id: ");
        put(&w, o->request_id, id_len);
        PUT_LIT(&w, "\r\n");
    }
    PUT_LIT(&w, "\r\n");
    head_end(out, w);
}

const char *http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static inline unsigned char name_fold(unsigned char c)
{
    return c == '_' ? '-' : (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

bool http_name_alike_prefix(struct str name, struct str prefix)
{
    if (name.len < prefix.len) {
        return false;
    }
    for (size_t i = 0; i < prefix.len; i++) {
        if (name_fold((unsigned char)name.p[i]) != name_fold((unsigned char)prefix.p[i])) {
            return false;
        }
    }
    return true;
}

bool http_name_alike(struct str a, struct str b)
{
    return a.len == b.len && http_name_alike_prefix(a, b);
}

bool http_wants_html(struct str accept, struct str x_requested_with)
{
    return accept.p && str_contains(accept, STR("text/html")) && !x_requested_with.p;
}
