/* proxy/io.h - private to src/proxy: the worker, client connection and
 * upstream connection structures shared by the data-plane files (sock.c,
 * wcfg.c, conn.c, forward.c, health.c, worker.c, tls.c, admin.c, serve.c).
 * Nothing outside src/proxy includes this. The files call each other only
 * downwards (docs/architecture.md, "The data plane"); the two upward
 * directions are typed interfaces: struct upstream_half and conn_local_fn. */
#ifndef GH_PROXY_IO_H
#define GH_PROXY_IO_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>
#include <openssl/ssl.h>

#include "balance.h"
#include "buf.h"
#include "config.h"
#include "http.h"
#include "pages.h"
#include "request.h"
#include "policy/policy.h"

struct accesslog;
struct fetcher;
struct metrics;
struct metrics_worker;
struct worker;

/* Back-pressure bound: stop reading one side while the other side's
 * unsent bytes exceed this. */
#define IO_HIGH_WATER (64 * 1024)
/* Bytes read per read() call. */
#define IO_READ_CHUNK (16 * 1024)

/* A socket, plain or TLS. */
struct sock {
    int fd;
    SSL *ssl;
    bool rd_wants_write; /* the last SSL read needs the socket writable */
    bool wr_wants_read;  /* the last SSL write needs the socket readable */
};

/* sock.c: the socket layer under both halves of a connection. */
/* Returns bytes read, 0 on EOF, -1 with errno EAGAIN when it would block,
 * -1 with another errno on error. */
ssize_t sock_read(struct sock *s, char *p, size_t n);
/* Returns bytes written (> 0) or -1 (errno EAGAIN when it would block). */
ssize_t sock_write(struct sock *s, const char *p, size_t n);
/* Whether decrypted bytes wait inside the TLS layer (invisible to epoll). */
bool sock_has_pending(const struct sock *s);
/* Writes what b holds until it is empty or the socket would block: 1 when
 * something was written, 0 when nothing could be, -1 on a write error. */
int sock_flush(struct sock *s, struct buf *b);
/* The monotonic clock in microseconds (request and upstream timings). */
uint64_t mono_us(void);

/* A listening socket of one worker. */
struct lsock {
    ev_io io;
    struct worker *w;
    int fd;
    size_t index; /* in cfg->listeners; SIZE_MAX for the admin listener */
    bool admin;
    bool tls;
};

/* A config snapshot as adopted by one worker, with that worker's balancers
 * (one per route) and resolved upstream addresses. Worker-local refcount:
 * requests started on it keep it until they end. */
struct upaddr {
    struct sockaddr_storage sa;
    socklen_t salen;
    bool ok;
};

struct wcfg {
    struct config *cfg;
    struct balancer **bal; /* [cfg->nroutes] */
    struct upaddr **addr;  /* [cfg->nroutes][nservers] */
    struct pool ***pools;  /* [cfg->nroutes][nservers] */
    unsigned refs;         /* the worker's own + requests in flight */
    struct wcfg *next;     /* retired list */
    struct worker *w;
    ev_timer health;       /* active checks */
    uint64_t *health_last; /* [cfg->nroutes]: last check per route (ms) */
    bool health_on;
};

/* Keep-alive pool for one upstream server (per worker, keyed by URL and CA). */
struct upconn;
struct pool {
    char *key;
    struct upconn *idle; /* LIFO */
    uint32_t nidle;
    struct pool *next;
};

enum conn_state {
    CS_IDLE = 0, /* no request bytes yet (new or keep-alive) */
    CS_HEAD,     /* reading a request head */
    CS_PENDING,  /* access check suspended */
    CS_FORWARD,  /* forwarding: body up, response down */
    CS_LOCAL,    /* a local response is being sent */
    CS_TUNNEL,   /* after 101: raw bytes both ways */
    CS_CLOSING,  /* flushing, then close */
    CS_LINGER,   /* output done, write side shut: drop input until EOF or timeout */
};

struct conn {
    struct worker *w;
    struct lsock *ls;
    struct sock s;
    ev_io io;
    ev_timer timer;
    ev_timer hold_timer; /* ends a pipelined hold of the output */
    int io_events;       /* what io currently watches */
    enum conn_state state;
    int refs; /* callbacks on the stack; freed at 0 once closed */
    bool closed;
    bool progress;        /* the last flush wrote something */
    int hs_want;          /* events the TLS handshake waits for */
    bool upgrade_pending; /* the request asked for an Upgrade and has no body */
    bool handshaking;     /* TLS handshake in progress */
    bool req_done;        /* the request (and body) was fully read */
    bool resp_done;       /* the response was fully queued */
    bool resp_started;    /* a response head was queued */
    bool keep_alive;
    bool client_eof;
    bool in_process;      /* re-entrancy guard; output waits for the pass's end */
    bool out_held;        /* answers held for the pipelined requests that wait */
    bool chunk_body_up;   /* re-chunk the request body to the upstream */
    bool chunk_to_client; /* re-chunk the response body to the client */
    bool close_after;     /* response is close-delimited */
    struct buf in, out;
    struct http_in *hin; /* lazily allocated */
    struct arena *arena; /* lazily allocated, reset per request */
    struct request *req; /* in arena */
    struct wcfg *wc;     /* snapshot the current request runs on */
    struct upconn *up;
    request_abort_fn *abort_fn;
    void *abort_arg;
    request_body_fn *collect_cb; /* request_read_body(): body for a local endpoint */
    void *collect_arg;
    struct buf collect;
    size_t collect_max;
    bool collect_over;         /* the body went past collect_max */
    struct balance_exclude ex; /* servers this request already tried */
    unsigned tries;
    int last_server;
    bool retry_same; /* retry the last server (stale pooled connection) */
    int fail_status; /* the last failed attempt: 503 server unreachable, 502 bad
                                * answer (or TLS failure), 504 timeout; 0 if none */
    uint64_t head_bytes_in;
    uint64_t out_total; /* bytes queued to the client for this request */
    char ip[64];
    struct policy_ip addr; /* ip as the policy input has it, parsed once */
    uint16_t port;
    struct conn *prev, *next; /* worker's list */
};

struct worker {
    unsigned id;
    pthread_t th;
    struct ev_loop *loop;
    struct wcfg *wc;                   /* current */
    struct wcfg *retired;              /* still used by in-flight requests */
    _Atomic(struct config *) next_cfg; /* handed over by the main thread */
    ev_async wake;
    atomic_bool stop; /* drain requested */
    bool draining;
    struct lsock *ls; /* [nls] */
    size_t nls;
    struct conn *conns;
    uint64_t nconns; /* client connections (limits.connections) */
    uint64_t nadmin; /* admin listener connections (ADMIN_CONNS_MAX) */
    struct pool *pools;
    SSL_CTX *up_ctx_default; /* upstream TLS, system CA bundle */
    struct upctx {
        char *ca, *cert, *key;
        SSL_CTX *ctx;
        struct upctx *next;
    } * up_ctxs;
    struct accesslog *alog;
    struct metrics_worker *mw;
    struct fetcher *fetch;
    ev_timer tick; /* 1 s: access-log flush, drain check */
    uint64_t drain_deadline_ms;
    uint64_t rng[2];
    atomic_int ready; /* 1 once listening, -1 on failure */
};

/* Process-wide state shared with the main thread (serve.c). */
struct io_global {
    struct metrics *metrics;
    struct worker *workers;
    unsigned nworkers;
    atomic_bool draining;
    const char *access_log; /* target at startup */
};
extern struct io_global io_g;

/* wcfg.c: below both halves; calls nothing in conn.c, forward.c, worker.c. */
struct wcfg *wcfg_new(struct worker *w, struct config *cfg, const struct wcfg *prev);
void wcfg_unref(struct worker *w, struct wcfg *wc);
uint64_t worker_now_ms(struct worker *w);
void worker_request_id(struct worker *w, char out[REQUEST_ID_LEN + 1]);

/* worker.c */
int worker_start(struct worker *w, struct config *cfg, struct err *err);
void worker_adopt(struct worker *w, struct config *cfg); /* on the worker's loop */
int listen_socket(const char *host, uint16_t port, bool reuseport, struct err *err);

/* health.c: active checks of one snapshot's servers (started on adoption,
 * stopped when the worker retires the snapshot). */
void health_start(struct worker *w, struct wcfg *wc);
void health_stop(struct worker *w, struct wcfg *wc);

/* conn.c: the client half. The upstream half calls these; conn.c reaches the
 * upstream half only through struct upstream_half. */
void conn_accept(struct worker *w, struct lsock *ls, int fd, const struct sockaddr *sa);
void conn_update_io(struct conn *c);
void conn_process(struct conn *c);
void conn_close(struct conn *c);
void conn_response_done(struct conn *c); /* the response was fully queued */
void conn_drain(struct conn *c);         /* SIGTERM: close if idle, else after this request */
void conn_queue_out(struct conn *c);     /* out changed: try to write */
void conn_hold(struct conn *c);          /* keep c allocated across a callback */
void conn_put(struct conn *c);

/* The upstream half of a connection as the client half knows it: one typed
 * interface, filled by forward.c (forward_half) and installed by serve.c
 * before workers start. With none installed an allowed request gets 502 and
 * nothing is forwarded. Every call but start is made only while c->up is set
 * (the half sets and clears c->up itself). */
struct upstream_half {
    void (*start)(struct conn *c);                         /* access allowed: connect, send head */
    void (*body)(struct conn *c, const char *p, size_t n); /* request body bytes: queue them */
    void (*body_flush)(struct conn *c);                    /* send what body() queued */
    void (*body_end)(struct conn *c);                      /* the request body is complete */
    bool (*body_ready)(const struct conn *c);              /* takes body (or tunnel) bytes now */
    void (*client_writable)(struct conn *c);               /* c->out drained below the mark */
    void (*tunnel_in)(struct conn *c);                     /* client bytes in c->in (tunnel) */
    void (*tunnel_eof)(struct conn *c);                    /* the client closed the tunnel */
    void (*abort)(struct conn *c);                         /* the client half ends: drop it */
};
void conn_upstream_install(const struct upstream_half *up);

/* The admin listener's endpoints as a handler of the connection layer
 * (admin.c's admin_handle, installed by serve.c): it answers every request
 * of that listener with request_respond(). With none installed: 404. */
typedef void conn_local_fn(struct request *r);
void conn_admin_install(conn_local_fn *fn);

/* forward.c: the upstream half. */
extern const struct upstream_half forward_half;
void pool_close_all(struct worker *w);

/* tls.c */
SSL_CTX *tls_server_ctx(const struct listener_conf *lc, struct err *err);
void tls_server_ctx_free(SSL_CTX *ctx);
/* Builds every TLS listener's contexts at start (main thread) and logs each
 * certificate's subject and expiry. -1 with the reason in err and the listener
 * index in *bad. */
int tls_listeners_start(const struct config *cfg, struct err *err, size_t *bad);
/* The current context of listener index, with a reference for the caller (SSL_new,
 * then SSL_CTX_free); NULL for a plain listener. Any thread. */
SSL_CTX *tls_listener_ctx(size_t index);
/* Grows every time a listener's contexts are swapped (new certificates, client
 * CA or CRL): cached device checks made against an older store are stale. */
uint64_t tls_generation(void);
/* Main thread: rebuilds the contexts of every TLS listener whose certificate, key,
 * client CA or CRL content changed, and swaps them in for new handshakes. A set
 * that fails to load is logged (config file:line:col of the listener) and the old
 * one kept; that same content is tried again only when retry_refused (SIGHUP). */
void tls_listeners_check(const struct config *cfg, bool retry_refused);
/* gatehouse_tls_certificate_expiry_seconds{listener,sni} in the Prometheus text
 * format; returns the bytes that would be written (snprintf-like). */
size_t tls_expiry_render(char *buf, size_t size);
SSL_CTX *tls_client_ctx(struct worker *w, const char *ca_file, const char *cert_file,
                        const char *key_file, struct err *err);

/* request.c */
bool request_id_valid(struct str s);
/* Writes the access-log line of a finished request (bytes counted by the
 * connection, end_us from mono_us()). */
void request_log(const struct request *r, struct accesslog *alog, uint64_t bytes_in,
                 uint64_t bytes_out, uint64_t end_us);

/* admin.c: /healthz, /readyz, /metrics. */
void admin_handle(struct request *r);

#endif
