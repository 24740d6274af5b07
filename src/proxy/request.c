/* proxy/request.c - what a pipeline stage may ask of a request beyond its
 * fields: a header by name, whether an incoming X-Request-Id is acceptable,
 * the worker's HTTP client and event loop, the listener it came in on and its
 * TLS client chain; and the access-log line of a finished request. Reads the
 * connection's fields; calls nothing in conn.c. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/ssl.h>

#include "accesslog.h"
#include "io.h"

struct str request_header(const struct request *r, struct str name, size_t *count)
{
    struct str v = STR_NULL;
    size_t n = 0;

    for (size_t i = 0; i < r->nheaders; i++) {
        if (str_ieq(r->headers[i].name, name)) {
            if (n++ == 0) {
                v = r->headers[i].value;
            }
        }
    }
    if (count) {
        *count = n;
    }
    return v;
}

/* An incoming X-Request-Id is kept (trust_request_id) only when it is short
 * and made of [A-Za-z0-9._-]: it goes into logs and headers as is. */
bool request_id_valid(struct str s)
{
    if (s.len == 0 || s.len > REQUEST_ID_LEN) {
        return false;
    }
    for (size_t i = 0; i < s.len; i++) {
        char ch = s.p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.')) {
            return false;
        }
    }
    return true;
}

bool request_client_addr(const struct request *r, struct policy_ip *out)
{
    const struct conn *c = r->conn;
    if (c == NULL || strcmp(r->client_ip, c->ip) != 0) {
        return false;
    }
    *out = c->addr;
    return true;
}

struct fetcher *request_fetcher(const struct request *r)
{
    const struct conn *c = r->conn;
    return c->w->fetch;
}

struct ev_loop *request_loop(const struct request *r)
{
    const struct conn *c = r->conn;
    return c->w->loop;
}

const struct listener_conf *request_listener(const struct request *r)
{
    const struct conn *c = r->conn;
    return c && c->ls && !c->ls->admin && r->cfg && c->ls->index < r->cfg->nlisteners
               ? &r->cfg->listeners[c->ls->index]
               : NULL;
}

bool request_client_tls(const struct request *r, struct request_client_tls *out)
{
    const struct conn *c = r->conn;
    const struct listener_conf *lc = request_listener(r);

    if (!r->peer_cert || !lc) {
        return false;
    }
    *out =
        (struct request_client_tls){ .chain = c->s.ssl ? SSL_get_peer_cert_chain(c->s.ssl) : NULL,
                                     .listener = c->ls->index,
                                     .verify_depth = (int)lc->verify_depth,
                                     .generation = tls_generation() };
    return true;
}

void request_log(const struct request *r, struct accesslog *alog, uint64_t bytes_in,
                 uint64_t bytes_out, uint64_t end_us)
{
    struct timespec ts;
    char up[300] = "";

    clock_gettime(CLOCK_REALTIME, &ts);
    if (r->upstream_server) {
        snprintf(up, sizeof up, "%s:%u", r->upstream_server->host,
                 (unsigned)r->upstream_server->port);
    }
    struct accesslog_entry e = {
        .ts_us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u,
        .request_id = str_from(r->id),
        .client_ip = str_from(r->client_ip),
        .method = r->method,
        .host = r->host,
        .path = r->raw_target, /* as received: what the client tried */
        .status = (unsigned)r->status,
        .bytes_in = bytes_in,
        .bytes_out = bytes_out,
        .upstream = str_from(up),
        .upstream_us = r->upstream_server ? (int64_t)r->upstream_us : -1,
        .total_us = end_us - r->start_us,
        .route = str_from(r->route ? r->route->name : NULL),
        .user = str_from(r->access_user),
        .device = str_from(r->access_device),
        .decision = str_from(r->access_decision),
        .rule = str_from(r->access_rule),
        .fields = r->cfg ? r->cfg->access_log_fields : 0,
    };
    accesslog_write(alog, &e);
}
