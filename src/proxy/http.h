/* proxy/http.h - HTTP/1.1 message framing on llhttp (strict mode, every
 * lenient flag off) plus the checks llhttp leaves to us: size limits, obs-fold,
 * control bytes in values, Host rules, absolute-form targets, Transfer-Encoding
 * other than exactly "chunked". And the header rewriting of a proxy: hop-by-hop
 * headers and those named in Connection removed, X-Forwarded-*, Via,
 * X-Request-Id, identity headers stripped. No sockets here. */
#ifndef GH_PROXY_HTTP_H
#define GH_PROXY_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "buf.h"
#include "request.h"

struct http_limits {
    size_t header_bytes; /* request line + headers */
    size_t headers;      /* header count */
    size_t uri_bytes;    /* request target */
    uint64_t body_bytes; /* 0 = unlimited */
};

enum http_in_rc {
    HTTP_IN_MORE = 0, /* everything was parsed, feed more bytes */
    HTTP_IN_HEAD,     /* the head is complete (paused): inspect, then continue */
    HTTP_IN_DONE,     /* the message is complete (paused) */
    HTTP_IN_UPGRADE,  /* the message is complete and the rest is another protocol */
    HTTP_IN_ERROR,    /* h->status and h->reason say why; close after answering */
};

struct http_hdr_off {
    uint32_t name_off, name_len, value_off, value_len;
};

/* Return nonzero to stop parsing (error). */
typedef int http_body_fn(void *arg, const char *p, size_t n);

/* One message reader (request or response side). The head's bytes must stay
 * at the same offsets from the base passed to http_in_feed() until
 * HTTP_IN_HEAD is returned (offsets, not pointers, so the buffer may move). */
struct http_in {
    llhttp_t p;
    struct http_limits lim;
    http_body_fn *on_body;
    void *arg;
    size_t pos;               /* parsed bytes from base */
    const char *base;         /* valid during a feed call */
    struct http_hdr_off *hdr; /* xmalloc'd, lim.headers entries */
    uint32_t nhdr;
    uint32_t url_off, url_len;
    uint32_t status_off, status_len; /* reason phrase (responses) */
    uint32_t ext_bytes;              /* chunk extension bytes of the current chunk */
    uint8_t cur;                     /* 0 none, 1 in a field, 2 in a value */
    bool in_head;
    bool skip_body; /* response to HEAD */
    uint8_t ev;     /* 1: head done, 2: message done (last pause) */
    uint64_t body_bytes;
    int status;         /* on HTTP_IN_ERROR: 400, 413, 414, 431 (502 for responses) */
    const char *reason; /* on HTTP_IN_ERROR: static text for logs */
};

/* type: HTTP_REQUEST or HTTP_RESPONSE. */
void http_in_init(struct http_in *h, enum llhttp_type type, const struct http_limits *lim,
                  http_body_fn *on_body, void *arg);
void http_in_fini(struct http_in *h);
/* Prepares for the next message on the same connection (pos = 0). */
void http_in_next(struct http_in *h);
/* Parses base[h->pos, avail). After HTTP_IN_HEAD/DONE/UPGRADE, h->pos is where
 * parsing stopped. In the body phase callers consume h->pos bytes and call
 * http_in_rebase(). */
enum http_in_rc http_in_feed(struct http_in *h, const char *base, size_t avail);
static inline void http_in_rebase(struct http_in *h)
{
    h->pos = 0;
}
/* The peer closed: completes a read-until-EOF body (responses). */
enum http_in_rc http_in_eof(struct http_in *h);
/* Header i of the head just parsed, as spans into base. */
struct str http_in_name(const struct http_in *h, const char *base, size_t i);
struct str http_in_value(const struct http_in *h, const char *base, size_t i);

/* Fills r's method, target, path, query, host, headers, version and body
 * framing from a complete request head (copies into r->arena), enforcing the
 * rules llhttp leaves to us. Returns 0, or an HTTP status (400, 414, 417, 431
 * or 501) with *reason set to a static text. */
int http_request_from_head(const struct http_in *h, const char *base, struct request *r,
                           const char **reason);

/* RFC 9110 §7.6.1: hop-by-hop headers a proxy never forwards. */
bool http_is_hop_by_hop(struct str name);
/* Whether two header names are the same for a CGI-style backend (WSGI, CGI,
 * PHP, Rack map both "X-A" and "X_A" to HTTP_X_A): equal once '_' is read as
 * '-' and case is folded. */
bool http_name_alike(struct str a, struct str b);
/* The same, for a prefix of name. */
bool http_name_alike_prefix(struct str name, struct str prefix);
/* Whether the comma-separated Connection value names token (case-insensitive). */
bool http_list_has(struct str list, struct str token);

struct http_fwd_opts {
    bool trust_forwarded;     /* append to an incoming X-Forwarded-For */
    bool websocket;           /* the route allows Upgrade: pass it on */
    const char *via;          /* pseudonym for Via, e.g. "gatehouse" */
    const char *default_host; /* Host to send when the client sent none (HTTP/1.0), or NULL */
    const char *const *strip_prefixes; /* NULL-terminated header-name prefixes to drop
                                        * (identity headers: "X-Gatehouse-") */
};

/* Writes the upstream request head for r to out: request line (origin-form,
 * HTTP/1.1), the client's end-to-end headers minus hop-by-hop ones, those
 * named in Connection, Expect, identity headers and client-sent
 * X-Forwarded-* and X-Request-Id; then framing (Content-Length or chunked),
 * X-Forwarded-For/Proto/Host, X-Request-Id, Via, and Upgrade when allowed. */
void http_format_upstream_request(struct buf *out, const struct request *r,
                                  const struct http_fwd_opts *o);

struct http_resp_opts {
    int client_minor;     /* client's HTTP/1.x minor version */
    bool head_method;     /* response to HEAD */
    bool keep_alive;      /* the client connection stays open */
    bool chunk_to_client; /* out: the body is re-chunked toward the client */
    bool close_after;     /* out: body delimited by close toward the client */
    const char *request_id;
    const char *via;
};

/* Writes the response head for the client from a parsed upstream response
 * head (h, base), dropping hop-by-hop headers and those named in Connection,
 * choosing framing toward the client (Content-Length as received, chunked for
 * HTTP/1.1 when the length is unknown, close-delimited for HTTP/1.0), and
 * adding Via and X-Request-Id. For 101 the Upgrade/Connection pair is kept. */
void http_format_response(struct buf *out, const struct http_in *h, const char *base,
                          struct http_resp_opts *o);

/* Reason phrase for our own responses. */
const char *http_reason(int status);

/* Does a client want an HTML page rather than JSON? Accept names text/html and
 * the request is no script's (no X-Requested-With). The one rule for every
 * answer Gatehouse writes itself (error pages, denied page, sign-in challenge). */
bool http_wants_html(struct str accept, struct str x_requested_with);

#endif
