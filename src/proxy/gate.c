/* proxy/gate.c - the access stage of the pipeline (route -> identity -> policy
 * -> forward) and the reserved /.gatehouse/ endpoints. Identity comes from the
 * session cache (never SQLite on the hot path) or a bearer JWT; the route's
 * compiled policy decides, asking OPA through fetch.c when a rule says so; every
 * decision is queued to the decision log. IdP calls (discovery, JWKS, token,
 * userinfo, refresh) run on the worker's loop through fetch.c, with the request
 * suspended meanwhile. */
#include "gate.h"

#include <ev.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "authn/assertion.h"
#include "authn/codec.h"
#include "authn/cookie.h"
#include "authn/jwt.h"
#include "authn/oidc.h"
#include "authn/page.h"
#include "authn/session.h"
#include "fetch.h"
#include "io.h"
#include "policy/policy.h"

#ifndef GATEHOUSE_WEB_DIR
#define GATEHOUSE_WEB_DIR "web/login"
#endif

#define LOGIN_COOKIE "gatehouse_login"
#define MAX_GROUPS 64
#define MAX_CLAIMS 64
#define IDP_FETCH_MAX (1u << 20)

/* ---- configuration (one per config snapshot) ---------------------------- */

struct gate_idp {
    struct oidc_provider *p;
    pthread_mutex_t mu;          /* guards md, keys, keys_fetched_ms */
    struct oidc_metadata *md;
    struct jwks *keys;
    uint64_t keys_fetched_ms;
};

struct gate_route {
    const struct policy *policy; /* borrowed from the policy_conf */
    /* A policy file may test claims; the built-in public and any-signed-in
     * policies never do (see build_input). */
    bool policy_file;
    struct gate_idp **idps;      /* accepted providers (all when the route names none) */
    size_t nidps;
};

struct gate_conf {
    struct gate_idp *idps;
    size_t nidps;
    struct gate_route *routes;   /* index-aligned with config->routes */
    size_t nroutes;
    struct session_conf session;
    bool session_ok;
    char *hdr_user, *hdr_email, *hdr_groups, *hdr_device, *hdr_assertion;
    const char *strip[6];        /* configured identity header names (NULL-terminated) */
    char *assertion_key;         /* resolved path */
    int64_t assertion_ttl_s;
    char *assertion_issuer;
    struct policy_conf *pc;      /* route policies, opa, decision_log */
    const struct opa_conf *opa;  /* borrowed from pc */
    const struct decision_log_conf *dl; /* borrowed from pc; NULL = no decision log */
    bool show_reason;            /* denied page shows the rule's reason */
    char *web_dir;
    bool needs_sessions;         /* some route is not public */
};

static const char *const ident_keys[] = { "headers", "assertion", NULL };
static const char *const header_keys[] = { "user", "email", "groups", "device", NULL };
static const char *const assertion_keys[] = { "header", "key", "ttl", "issuer", NULL };
static const char *const pages_keys[] = { "dir", "show_deny_reason", NULL };

static char *dir_of(const char *file)
{
    const char *slash = strrchr(file, '/');
    return slash ? xstrndup(file, (size_t)(slash - file)) : xstrdup(".");
}

static void read_identity(struct gate_conf *g, struct config *c, struct conf_diag *d)
{
    const struct conf_node *ui = conf_get(c->doc->root, "upstream_identity");
    const struct conf_node *h = conf_get(ui, "headers");
    const struct conf_node *as = conf_get(ui, "assertion");
    const char *user = "X-Gatehouse-User", *email = "X-Gatehouse-Email";
    const char *groups = "X-Gatehouse-Groups", *device = "X-Gatehouse-Device";
    const char *ahdr = "X-Gatehouse-Assertion", *akey = NULL, *aiss = "gatehouse";
    uint64_t ttl_ms = 60000;

    if (ui && conf_check_keys(d, ui, "\"upstream_identity\"", ident_keys)) {
        if (h && conf_check_keys(d, h, "\"upstream_identity.headers\"", header_keys)) {
            conf_string(d, h, "user", &user);
            conf_string(d, h, "email", &email);
            conf_string(d, h, "groups", &groups);
            conf_string(d, h, "device", &device);
        }
        if (as && conf_check_keys(d, as, "\"upstream_identity.assertion\"", assertion_keys)) {
            conf_string(d, as, "header", &ahdr);
            conf_string(d, as, "key", &akey);
            conf_string(d, as, "issuer", &aiss);
            conf_duration_ms(d, as, "ttl", 1000, 3600000, &ttl_ms);
        }
    }
    g->hdr_user = xstrdup(user);
    g->hdr_email = xstrdup(email);
    g->hdr_groups = xstrdup(groups);
    g->hdr_device = xstrdup(device);
    g->hdr_assertion = xstrdup(ahdr);
    g->assertion_ttl_s = (int64_t)(ttl_ms / 1000);
    g->assertion_issuer = xstrdup(aiss);
    if (akey) {
        g->assertion_key = conf_path_resolve(c->file, akey);
    } else if (c->state_sqlite) {
        char *dir = dir_of(c->state_sqlite);
        g->assertion_key = xasprintf("%s/assertion-es256.pem", dir);
        free(dir);
    }
    size_t n = 0;
    const char *names[] = { g->hdr_user, g->hdr_email, g->hdr_groups, g->hdr_device,
                            g->hdr_assertion };
    for (size_t i = 0; i < 5; i++) {
        /* X-Gatehouse-* is stripped by prefix already; list the others. */
        if (strncasecmp(names[i], "X-Gatehouse-", 12) != 0) {
            g->strip[n++] = names[i];
        }
    }
    g->strip[n] = NULL;
}

static void read_idps(struct gate_conf *g, struct config *c, struct conf_diag *d)
{
    const struct conf_node *list = conf_get(c->doc->root, "identity_providers");

    if (!list || list->type != CONF_SEQ) {
        return; /* absent; a wrong type was reported by the proxy loader */
    }
    g->idps = xcalloc(list->n ? list->n : 1, sizeof *g->idps);
    for (size_t i = 0; i < list->n; i++) {
        const struct conf_node *e = list->items[i];
        const char *type = "oidc";
        if (!conf_map(d, e, "an \"identity_providers\" item")) {
            continue;
        }
        conf_string(d, e, "type", &type);
        if (strcmp(type, "oidc") != 0) {
            conf_error(d, conf_get(e, "type"),
                       "identity provider type \"%s\" is not supported (supported: oidc)", type);
            continue;
        }
        struct oidc_provider *p = oidc_provider_parse(d, e, c->file);
        if (!p) {
            continue;
        }
        struct gate_idp *gi = &g->idps[g->nidps++];
        gi->p = p;
        pthread_mutex_init(&gi->mu, NULL);
    }
}

static struct gate_idp *find_idp(struct gate_conf *g, const char *id)
{
    for (size_t i = 0; i < g->nidps; i++) {
        if (strcmp(g->idps[i].p->id, id) == 0) {
            return &g->idps[i];
        }
    }
    return NULL;
}

static void read_routes(struct gate_conf *g, struct config *c, struct conf_diag *d)
{
    g->routes = xcalloc(c->nroutes ? c->nroutes : 1, sizeof *g->routes);
    g->nroutes = c->nroutes;
    for (size_t i = 0; i < c->nroutes; i++) {
        struct route_conf *rc = &c->routes[i];
        struct gate_route *gr = &g->routes[i];
        gr->policy = g->pc ? policy_conf_route(g->pc, rc->name) : NULL;
        gr->policy_file = rc->policy_file != NULL;
        if (!rc->public_) {
            g->needs_sessions = true;
        }
        gr->idps = xcalloc(g->nidps ? g->nidps : 1, sizeof *gr->idps);
        if (rc->nidps) {
            for (size_t j = 0; j < rc->nidps; j++) {
                struct gate_idp *gi = find_idp(g, rc->idps[j]);
                if (gi) {
                    gr->idps[gr->nidps++] = gi;
                }
            }
        } else {
            for (size_t j = 0; j < g->nidps; j++) {
                gr->idps[gr->nidps++] = &g->idps[j];
            }
        }
        rc->policy = (void *)gr->policy;
        rc->authn = gr;
    }
}

struct gate_conf *gate_conf_load(struct config *c, struct conf_diag *d)
{
    struct gate_conf *g = xcalloc(1, sizeof *g);
    const struct conf_node *root = c->doc ? c->doc->root : NULL;
    const struct conf_node *pages = conf_get(root, "pages");
    const char *web = NULL;

    g->show_reason = true;
    g->session_ok = session_conf_parse(d, conf_get(root, "session"), c->file, &g->session);
    read_identity(g, c, d);
    read_idps(g, c, d);
    g->pc = policy_conf_load(root, c->file, d);
    if (g->pc) {
        g->opa = policy_conf_opa(g->pc);
        g->dl = policy_conf_log(g->pc);
    }
    read_routes(g, c, d);
    if (pages && conf_check_keys(d, pages, "\"pages\"", pages_keys)) {
        conf_string(d, pages, "dir", &web);
        conf_bool(d, pages, "show_deny_reason", &g->show_reason);
    }
    if (web) {
        g->web_dir = conf_path_resolve(c->file, web);
    } else {
        const char *env = getenv("GATEHOUSE_WEB_DIR");
        g->web_dir = xstrdup(env && *env ? env : GATEHOUSE_WEB_DIR);
    }
    if (g->needs_sessions && !c->state_sqlite) {
        conf_error(d, root && root->type == CONF_MAP ? root : NULL,
                   "routes that are not public need \"state: {sqlite: FILE}\" for sessions");
    }
    if (g->needs_sessions && g->nidps == 0) {
        /* Bearer-only setups still need a provider to verify tokens against. */
        conf_error(d, conf_get(root, "routes"),
                   "routes that are not public need at least one entry in \"identity_providers\"");
    }
    return g;
}

void gate_conf_free(struct gate_conf *g)
{
    if (!g) {
        return;
    }
    for (size_t i = 0; i < g->nroutes; i++) {
        free(g->routes[i].idps);
    }
    policy_conf_free(g->pc);
    free(g->routes);
    for (size_t i = 0; i < g->nidps; i++) {
        oidc_provider_free(g->idps[i].p);
        oidc_metadata_free(g->idps[i].md);
        jwks_unref(g->idps[i].keys);
        pthread_mutex_destroy(&g->idps[i].mu);
    }
    free(g->idps);
    if (g->session_ok) {
        session_conf_fini(&g->session);
    }
    free(g->hdr_user);
    free(g->hdr_email);
    free(g->hdr_groups);
    free(g->hdr_device);
    free(g->hdr_assertion);
    free(g->assertion_key);
    free(g->assertion_issuer);
    free(g->web_dir);
    free(g);
}

/* ---- process-wide runtime ------------------------------------------------ */

/* Requests waiting for their decision record to commit (decision_log.sync:
 * strict), per worker loop; the writer thread wakes the loops. */
struct strict_wait {
    struct strict_wait *next;
    struct request *r;
    uint64_t seq;
    bool aborted;
};

struct loop_slot {
    struct ev_loop *loop;
    ev_async wake;
    struct strict_wait *head;    /* loop thread only */
};

#define MAX_LOOPS 256

static struct {
    bool started;
    struct session_store *sessions;
    struct assertion_signer *signer;
    struct decision_log *dl;
    bool dl_strict;
    struct pages *pages;
    struct oidc_replay *replay;
    struct opa_cache *opa_cache;
    unsigned char login_key[32];
    atomic_uint_fast64_t committed;
    pthread_mutex_t slots_mu;
    struct loop_slot *slots[MAX_LOOPS];
    size_t nslots;
    atomic_uint_fast64_t n_login, n_logout, n_idp_errors, n_dl_rejects;
} G = { .slots_mu = PTHREAD_MUTEX_INITIALIZER };

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t mono_us_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void on_commit(uint64_t seq, void *arg)
{
    (void)arg;
    atomic_store(&G.committed, seq);
    pthread_mutex_lock(&G.slots_mu);
    for (size_t i = 0; i < G.nslots; i++) {
        ev_async_send(G.slots[i]->loop, &G.slots[i]->wake);
    }
    pthread_mutex_unlock(&G.slots_mu);
}

static enum access_step gate_access(struct request *r);
static enum access_step gate_reserved(struct request *r);

int gate_start(const struct config *c, struct err *err)
{
    const struct gate_conf *g = c->authn;
    struct err e = { 0 };

    if (G.started) {
        return 0;
    }
    G.pages = pages_load(g->web_dir, &e);
    if (!G.pages) {
        return err_set(err, ERR_CONFIG, "pages in %s: %s", g->web_dir, e.msg);
    }
    if (!codec_rand_bytes(G.login_key, sizeof G.login_key)) {
        return err_set(err, ERR_CRYPTO, "no randomness for the login cookie key");
    }
    G.replay = oidc_replay_new(100000);
    G.opa_cache = opa_cache_new(10000);
    if (c->state_sqlite) {
        char *dir = dir_of(c->state_sqlite);
        mkdir(dir, 0700);
        free(dir);
        G.sessions = session_store_open(c->state_sqlite, &g->session, &e);
        if (!G.sessions) {
            return err_set(err, ERR_IO, "session store %s: %s", c->state_sqlite, e.msg);
        }
    }
    if (g->assertion_key) {
        G.signer = assertion_signer_open(g->assertion_key, g->assertion_issuer,
                                         g->assertion_ttl_s, &e);
        if (!G.signer) {
            return err_set(err, ERR_CRYPTO, "identity assertion key %s: %s", g->assertion_key,
                           e.msg);
        }
    }
    if (g->dl && (g->dl->sqlite || g->dl->file)) {
        G.dl = decision_log_open(g->dl, &e);
        if (!G.dl) {
            return err_set(err, ERR_IO, "decision log: %s", e.msg);
        }
        G.dl_strict = g->dl->sync == DECISION_LOG_STRICT;
        decision_log_set_commit_cb(G.dl, on_commit, NULL);
    }
    access_set_hook(gate_access);
    reserved_set_hook(gate_reserved);
    G.started = true;
    return 0;
}

void gate_stop(void)
{
    if (!G.started) {
        return;
    }
    decision_log_close(G.dl);
    G.dl = NULL;
    session_store_close(G.sessions);
    G.sessions = NULL;
    assertion_signer_free(G.signer);
    G.signer = NULL;
    pages_free(G.pages);
    oidc_replay_free(G.replay);
    opa_cache_free(G.opa_cache);
    for (size_t i = 0; i < G.nslots; i++) {
        free(G.slots[i]);
    }
    G.nslots = 0;
    OPENSSL_cleanse(G.login_key, sizeof G.login_key);
    G.started = false;
}

size_t gate_metrics_render(char *buf, size_t size)
{
    size_t off = 0;
    int n = snprintf(buf, size,
                     "# HELP gatehouse_logins_total Completed sign-ins.\n"
                     "# TYPE gatehouse_logins_total counter\n"
                     "gatehouse_logins_total %llu\n"
                     "# HELP gatehouse_logouts_total Sign-outs (browser and back-channel).\n"
                     "# TYPE gatehouse_logouts_total counter\n"
                     "gatehouse_logouts_total %llu\n"
                     "# HELP gatehouse_idp_errors_total Failed identity provider calls.\n"
                     "# TYPE gatehouse_idp_errors_total counter\n"
                     "gatehouse_idp_errors_total %llu\n"
                     "# HELP gatehouse_decision_log_rejected_total Requests refused (503) "
                     "because the decision log queue was full.\n"
                     "# TYPE gatehouse_decision_log_rejected_total counter\n"
                     "gatehouse_decision_log_rejected_total %llu\n",
                     (unsigned long long)atomic_load(&G.n_login),
                     (unsigned long long)atomic_load(&G.n_logout),
                     (unsigned long long)atomic_load(&G.n_idp_errors),
                     (unsigned long long)atomic_load(&G.n_dl_rejects));
    if (n > 0) {
        off = (size_t)n;
    }
    off += policy_metrics_render(off < size ? buf + off : NULL, off < size ? size - off : 0);
    return off;
}

/* ---- per-request state ---------------------------------------------------- */

struct ident {
    bool authenticated;
    const char *user;      /* sub */
    const char *user_key;  /* iss#sub */
    const char *email, *name, *idp, *sid;
    const char *session;   /* public session id (hash prefix) or NULL */
    const char *groups_json;
    int64_t expires_ms;
    bool bearer;
};

/* What a request waiting for an identity provider's metadata and keys does next. */
enum after_idp { AFTER_NONE = 0, AFTER_BEARER, AFTER_LOGIN, AFTER_CALLBACK };

struct gate_req;
typedef void gate_next_fn(struct gate_req *q, const struct fetch_resp *resp);

struct gate_req {
    struct request *r;
    struct gate_conf *g;
    struct gate_route *gr;
    struct fetch *fetch;      /* in flight, or NULL */
    gate_next_fn *next;
    bool pending;             /* the request is suspended (ACCESS_PENDING given) */
    bool aborted;
    struct ident id;
    /* policy */
    struct policy_input in;
    struct policy_result res;
    struct str groups[MAX_GROUPS];
    struct policy_kv claims[MAX_CLAIMS];
    struct policy_kv *hdrs;
    char *opa_input;
    uint64_t opa_start_us;
    uint64_t opa_us;
    const char *opa_result;
    /* sign-in */
    struct gate_idp *idp;
    struct oidc_pending pd;
    bool have_pd;
    struct oidc_tokens tok;
    bool have_tok;
    bool keys_refetched;
    struct str rd;            /* return path for /.gatehouse/login */
    enum after_idp after_md;  /* what to do once metadata+keys are there */
    struct str bearer;
    char *token_body;         /* kept token response while the JWKS is re-fetched */
    long token_status;
    uint64_t start_us;
};

static struct gate_conf *conf_of(const struct request *r)
{
    return r->cfg->authn;
}

static struct fetcher *fetcher_of(const struct request *r)
{
    const struct conn *c = r->conn;
    return c->w->fetch;
}

static struct ev_loop *loop_of(const struct request *r)
{
    const struct conn *c = r->conn;
    return c->w->loop;
}

static bool is_tls(const struct request *r)
{
    return r->scheme && strcmp(r->scheme, "https") == 0;
}

static bool wants_html(const struct request *r)
{
    struct str accept = request_header(r, STR("accept"), NULL);
    struct str xrw = request_header(r, STR("x-requested-with"), NULL);
    return accept.p && str_contains(accept, STR("text/html")) && !xrw.p;
}

static void on_abort(void *arg)
{
    struct gate_req *q = arg;
    q->aborted = true;
    if (q->fetch) {
        fetch_cancel(q->fetch);
        q->fetch = NULL;
    }
}

/* Sends a response: from inside the hook, or after a suspension. Nothing may
 * touch q or q->r afterwards (the request's arena is gone). */
static enum access_step respond(struct gate_req *q, int status, const char *ctype, struct str body,
                                const char *extra)
{
    request_respond(q->r, status, ctype, body, extra);
    return ACCESS_RESPOND;
}

static enum access_step page(struct gate_req *q, int status, enum page_kind k,
                             const struct page_var *vars, size_t n, const char *extra)
{
    size_t len = 0;
    char *html = pages_render(G.pages, k, vars, n, q->r->arena, &len);
    if (!html) {
        request_error(q->r, 500, "page too large");
        return ACCESS_RESPOND;
    }
    return respond(q, status, "text/html; charset=utf-8", (struct str){ html, len }, extra);
}

/* A clear error page (HTML) or JSON, with the request id; logs why. */
static enum access_step fail_page(struct gate_req *q, int status, const char *title,
                                  const char *message, const char *log_reason)
{
    struct request *r = q->r;
    log_emit(status >= 500 ? LOG_WARN : LOG_INFO, "authn", r->id, NULL, "%s: %s", title,
             log_reason ? log_reason : message);
    if (wants_html(r)) {
        struct page_var v[] = { { "title", title },
                                { "message", message },
                                { "request_id", r->id },
                                { "retry_url", "/.gatehouse/login" } };
        return page(q, status, PAGE_ERROR, v, 4, NULL);
    }
    json_t *o = json_pack("{s:s, s:s, s:s}", "error", title, "message", message, "request_id",
                          r->id);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    char *body = arena_strdup(r->arena, s ? s : "{}");
    free(s);
    return respond(q, status, "application/json", str_from(body), NULL);
}

/* Finishes a suspended request with a step (or returns it when not suspended).
 * After ACCESS_RESPOND the request, and q in its arena, may already be gone:
 * st is tested first so that q is only read when it is still alive. */
static enum access_step finish(struct gate_req *q, enum access_step st)
{
    if (st == ACCESS_ALLOW && q->pending) {
        request_resume(q->r, st);
    }
    return st;
}

static void on_fetch_done(void *arg, const struct fetch_resp *resp)
{
    struct gate_req *q = arg;
    q->fetch = NULL;
    if (q->aborted) {
        return;
    }
    q->next(q, resp);
}

/* Starts an IdP/OPA call; the request is suspended until next() runs. */
static enum access_step start_fetch(struct gate_req *q, const char *method, const char *url,
                                    const char *const *headers, const char *body,
                                    uint64_t timeout_ms, gate_next_fn *next)
{
    char err[256];
    struct fetch_req fr = { .method = method,
                            .url = url,
                            .headers = headers,
                            .body = body,
                            .body_len = body ? strlen(body) : 0,
                            .timeout_ms = timeout_ms,
                            .max_response_bytes = IDP_FETCH_MAX };
    q->next = next;
    q->fetch = fetch_start(fetcher_of(q->r), &fr, on_fetch_done, q, err);
    if (!q->fetch) {
        atomic_fetch_add(&G.n_idp_errors, 1);
        return finish(q, fail_page(q, 502, "Sign-in is unavailable",
                                   "Gatehouse could not reach the identity provider.", err));
    }
    if (!q->pending) {
        q->pending = true;
        request_on_abort(q->r, on_abort, q);
    }
    return ACCESS_PENDING;
}

static enum access_step oidc_fetch(struct gate_req *q, struct oidc_http *h, gate_next_fn *next)
{
    enum access_step st = start_fetch(q, h->method, h->url, (const char *const *)h->headers,
                                      h->body, 10000, next);
    oidc_http_fini(h);
    return st;
}

/* ---- identity provider metadata and keys ---------------------------------- */

static void idp_snapshot(struct gate_idp *gi, struct oidc_metadata **md, struct jwks **keys)
{
    pthread_mutex_lock(&gi->mu);
    *md = gi->md;
    *keys = gi->keys ? jwks_ref(gi->keys) : NULL;
    pthread_mutex_unlock(&gi->mu);
}

static enum access_step after_idp_ready(struct gate_req *q);

static void got_jwks(struct gate_req *q, const struct fetch_resp *resp)
{
    struct err e = { 0 };
    struct jwks *k = NULL;

    if (!resp->failed && resp->status == 200) {
        k = jwks_parse((struct str){ resp->body, resp->body_len }, &e);
    } else {
        snprintf(e.msg, sizeof e.msg, "JWKS fetch: %.200s",
                 resp->failed ? resp->error : "unexpected status");
    }
    if (!k) {
        atomic_fetch_add(&G.n_idp_errors, 1);
        finish(q, fail_page(q, 502, "Sign-in is unavailable",
                            "The identity provider's signing keys could not be loaded.", e.msg));
        return;
    }
    pthread_mutex_lock(&q->idp->mu);
    jwks_unref(q->idp->keys);
    q->idp->keys = k;
    q->idp->keys_fetched_ms = mono_ms();
    pthread_mutex_unlock(&q->idp->mu);
    after_idp_ready(q);
}

static enum access_step fetch_jwks(struct gate_req *q, const struct oidc_metadata *md)
{
    return start_fetch(q, "GET", md->jwks_uri, NULL, NULL, 10000, got_jwks);
}

static void got_discovery(struct gate_req *q, const struct fetch_resp *resp)
{
    struct err e = { 0 };
    struct oidc_metadata *md = NULL;

    if (!resp->failed) {
        md = oidc_metadata_parse(q->idp->p, (int)resp->status,
                                 (struct str){ resp->body, resp->body_len }, &e);
    } else {
        snprintf(e.msg, sizeof e.msg, "discovery: %.200s", resp->error);
    }
    if (!md) {
        atomic_fetch_add(&G.n_idp_errors, 1);
        finish(q, fail_page(q, 502, "Sign-in is unavailable",
                            "Gatehouse could not read the identity provider's configuration.",
                            e.msg));
        return;
    }
    pthread_mutex_lock(&q->idp->mu);
    if (!q->idp->md) {
        q->idp->md = md;
        md = NULL;
    }
    struct oidc_metadata *cur = q->idp->md;
    pthread_mutex_unlock(&q->idp->mu);
    oidc_metadata_free(md);
    fetch_jwks(q, cur);
}

/* Makes sure the provider's discovery document and keys are loaded, then
 * continues with after_idp_ready(). Metadata, once loaded, lives as long as
 * the config snapshot (a reload fetches it again). */
static enum access_step ensure_idp(struct gate_req *q)
{
    struct oidc_metadata *md;
    struct jwks *keys;

    idp_snapshot(q->idp, &md, &keys);
    if (md && keys) {
        jwks_unref(keys);
        return after_idp_ready(q);
    }
    jwks_unref(keys);
    if (md) {
        return fetch_jwks(q, md);
    }
    struct oidc_http h = { 0 };
    oidc_discovery_request(q->idp->p, &h);
    return oidc_fetch(q, &h, got_discovery);
}

/* An unknown kid: fetch the JWKS again, at most once per interval. */
static bool may_refetch_keys(struct gate_idp *gi)
{
    bool ok;
    pthread_mutex_lock(&gi->mu);
    ok = mono_ms() - gi->keys_fetched_ms >= gi->p->jwks_refresh_min_interval_ms;
    if (ok) {
        gi->keys_fetched_ms = mono_ms(); /* others wait for this fetch's interval */
    }
    pthread_mutex_unlock(&gi->mu);
    return ok;
}

/* ---- decision log ---------------------------------------------------------- */

static void strict_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    struct loop_slot *s = w->data;
    uint64_t committed = atomic_load(&G.committed);
    struct strict_wait **pp = &s->head;
    (void)loop;
    (void)revents;

    while (*pp) {
        struct strict_wait *sw = *pp;
        if (sw->seq <= committed) {
            *pp = sw->next;
            if (!sw->aborted) {
                request_resume(sw->r, ACCESS_ALLOW);
            }
            free(sw);
        } else {
            pp = &sw->next;
        }
    }
}

static struct loop_slot *slot_for(struct ev_loop *loop)
{
    struct loop_slot *s = NULL;

    pthread_mutex_lock(&G.slots_mu);
    for (size_t i = 0; i < G.nslots; i++) {
        if (G.slots[i]->loop == loop) {
            s = G.slots[i];
        }
    }
    if (!s && G.nslots < MAX_LOOPS) {
        s = xcalloc(1, sizeof *s);
        s->loop = loop;
        ev_async_init(&s->wake, strict_wake);
        s->wake.data = s;
        ev_async_start(loop, &s->wake);
        ev_unref(loop); /* a pending wake-up must not keep a draining loop alive */
        G.slots[G.nslots++] = s;
    }
    pthread_mutex_unlock(&G.slots_mu);
    return s;
}

static void strict_abort(void *arg)
{
    struct strict_wait *sw = arg;
    sw->aborted = true;
}

/* Queues the decision record. Returns 0, or ERR_LIMIT when the log is beyond
 * its bound (the caller answers 503: never a silent drop). *seq gets the
 * record's sequence number. */
static int log_decision(struct gate_req *q, const char *decision, const char *rule,
                        const char *reason, uint64_t *seq)
{
    struct request *r = q->r;
    const char *groups[MAX_GROUPS];
    size_t ng = q->in.ngroups < MAX_GROUPS ? q->in.ngroups : MAX_GROUPS;

    if (!G.dl) {
        return 0;
    }
    for (size_t i = 0; i < ng; i++) {
        groups[i] = arena_strndup(r->arena, q->in.groups[i].p, q->in.groups[i].len);
        if (!groups[i]) {
            ng = i;
            break;
        }
    }
    struct decision_record rec = {
        .ts_us = now_us(),
        .request_id = r->id,
        .route = r->route ? r->route->name : "",
        .decision = decision,
        .rule = rule,
        .reason = reason,
        .user = q->id.user,
        .email = q->id.email,
        .idp = q->id.idp,
        .session = q->id.session,
        .groups = groups,
        .ngroups = ng,
        .claims = q->in.claims,
        .nclaims = q->in.nclaims,
        .device_present = q->in.device.present,
        .device_trusted = q->in.device.trusted,
        .client_ip = r->client_ip,
        .method = arena_strndup(r->arena, r->method.p, r->method.len),
        .host = arena_strndup(r->arena, q->in.host.p, q->in.host.len),
        .path = arena_strndup(r->arena, r->path.p, r->path.len),
        .shadow = q->res.shadow,
        .opa_called = q->res.opa_called,
        .opa_result = q->opa_result,
        .opa_ms = (uint32_t)(q->opa_us / 1000),
        .latency_us = mono_us_now() - q->start_us,
    };
    int rc = decision_log_append(G.dl, &rec, seq);
    if (rc != 0) {
        atomic_fetch_add(&G.n_dl_rejects, 1);
        log_emit(LOG_ERROR, "policy", r->id, NULL,
                 "decision log queue full: refusing the request (503)");
    }
    return rc;
}

/* ---- policy input ------------------------------------------------------------ */

static struct str host_only(struct str h)
{
    if (h.len && h.p[0] == '[') {
        const char *end = memchr(h.p, ']', h.len);
        return end ? (struct str){ h.p + 1, (size_t)(end - h.p - 1) } : h;
    }
    const char *colon = memchr(h.p, ':', h.len);
    return colon ? (struct str){ h.p, (size_t)(colon - h.p) } : h;
}

/* Token mechanics, not facts about the user: kept out of policy input and
 * the decision log. */
static bool is_protocol_claim(const char *k)
{
    static const char *const skip[] = { "iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash",
                                        "c_hash", "auth_time", "azp", "jti", "sid", "s_hash",
                                        NULL };
    for (size_t i = 0; skip[i]; i++) {
        if (strcmp(k, skip[i]) == 0) {
            return true;
        }
    }
    return false;
}

static void claims_from_json(struct gate_req *q, const char *json)
{
    struct arena *a = q->r->arena;
    json_t *o;
    const char *k;
    json_t *v;

    if (!json || !(o = json_loads(json, 0, NULL))) {
        return;
    }
    json_object_foreach(o, k, v) {
        if (q->in.nclaims >= MAX_CLAIMS) {
            break;
        }
        if (is_protocol_claim(k)) {
            continue;
        }
        const char *s = NULL;
        char num[32];
        if (json_is_string(v)) {
            s = json_string_value(v);
        } else if (json_is_boolean(v)) {
            s = json_is_true(v) ? "true" : "false";
        } else if (json_is_integer(v)) {
            snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
            s = num;
        } else if (json_is_array(v)) {
            size_t i;
            json_t *it;
            json_array_foreach(v, i, it) {
                if (json_is_string(it) && q->in.nclaims < MAX_CLAIMS) {
                    char *kk = arena_strdup(a, k), *vv = arena_strdup(a, json_string_value(it));
                    if (kk && vv) {
                        q->claims[q->in.nclaims++] = (struct policy_kv){ str_from(kk),
                                                                          str_from(vv) };
                    }
                }
            }
            continue;
        }
        if (s) {
            char *kk = arena_strdup(a, k), *vv = arena_strdup(a, s);
            if (kk && vv) {
                q->claims[q->in.nclaims++] = (struct policy_kv){ str_from(kk), str_from(vv) };
            }
        }
    }
    json_decref(o);
}

static void groups_from_json(struct gate_req *q, const char *json)
{
    json_t *arr;
    size_t i;
    json_t *it;

    if (!json || !(arr = json_loads(json, 0, NULL))) {
        return;
    }
    json_array_foreach(arr, i, it) {
        if (json_is_string(it) && q->in.ngroups < MAX_GROUPS) {
            char *s = arena_strdup(q->r->arena, json_string_value(it));
            if (s) {
                q->groups[q->in.ngroups++] = str_from(s);
            }
        }
    }
    json_decref(arr);
}

static void build_input(struct gate_req *q, const char *claims_json)
{
    struct request *r = q->r;
    struct policy_input *in = &q->in;

    in->authenticated = q->id.authenticated;
    in->user = str_from(q->id.user);
    in->email = str_from(q->id.email);
    in->idp = str_from(q->id.idp);
    in->session = str_from(q->id.session);
    in->groups = q->groups;
    in->claims = q->claims;
    if (q->id.authenticated) {
        groups_from_json(q, q->id.groups_json);
        /* Parsing the claims JSON was about a quarter of a cookie request's CPU:
         * only a policy file or the decision log can read them. */
        if ((q->gr && q->gr->policy_file) || G.dl) {
            claims_from_json(q, claims_json);
        }
    }
    policy_ip_parse(str_from(r->client_ip), &in->client_ip);
    in->method = r->method;
    in->host = host_only(r->host);
    in->path = r->path;
    q->hdrs = arena_alloc(r->arena, (r->nheaders ? r->nheaders : 1) * sizeof *q->hdrs);
    if (q->hdrs) {
        for (size_t i = 0; i < r->nheaders; i++) {
            q->hdrs[i] = (struct policy_kv){ r->headers[i].name, r->headers[i].value };
        }
        in->headers = q->hdrs;
        in->nheaders = r->nheaders;
    }
    in->time_s = now_s();
    in->route = str_from(r->route->name);
}

/* ---- upstream identity --------------------------------------------------------- */

/* Claims are text from the IdP, often typed by users: a CR or LF in a header
 * value would inject headers towards the backend. Control bytes become spaces. */
static const char *header_safe(struct arena *a, const char *v)
{
    size_t i = 0;
    while (v[i] && (unsigned char)v[i] >= 0x20 && v[i] != 0x7f) {
        i++;
    }
    if (!v[i]) {
        return v;
    }
    char *s = arena_strdup(a, v);
    for (; s && s[i]; i++) {
        if (((unsigned char)s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f) {
            s[i] = ' ';
        }
    }
    return s;
}

static bool add_header(struct request *r, const char *name, const char *value)
{
    struct header *h;
    if (!value) {
        return true;
    }
    value = header_safe(r->arena, value);
    if (!value) {
        return false;
    }
    h = arena_alloc(r->arena, (r->nup_headers + 1) * sizeof *h);
    if (!h) {
        return false;
    }
    if (r->nup_headers) {
        memcpy(h, r->up_headers, r->nup_headers * sizeof *h);
    }
    h[r->nup_headers] = (struct header){ str_from(name), str_from(value) };
    r->up_headers = h;
    r->nup_headers++;
    return true;
}

/* Removes client-sent copies of configured identity headers and Gatehouse's own
 * cookies from what reaches the backend. X-Gatehouse-* goes by prefix in http.c. */
static void scrub_request(struct gate_req *q)
{
    struct request *r = q->r;
    char sess[128], login[128];
    const char *names[3] = { sess, login, NULL };
    size_t out = 0;

    cookie_wire_name(q->g->session.cookie_name, is_tls(r), sess, sizeof sess);
    cookie_wire_name(LOGIN_COOKIE, is_tls(r), login, sizeof login);
    for (size_t i = 0; i < r->nheaders; i++) {
        struct header h = r->headers[i];
        bool drop = false;
        for (size_t j = 0; q->g->strip[j]; j++) {
            if (str_ieq_cstr(h.name, q->g->strip[j])) {
                drop = true;
            }
        }
        if (!drop && str_ieq(h.name, STR("cookie"))) {
            h.value = cookie_strip(r->arena, h.value, names);
            drop = h.value.len == 0;
        }
        if (!drop) {
            r->headers[out++] = h;
        }
    }
    r->nheaders = out;
}

static char *groups_csv(struct gate_req *q)
{
    struct arena *a = q->r->arena;
    size_t len = 0;
    for (size_t i = 0; i < q->in.ngroups; i++) {
        len += q->in.groups[i].len + 1;
    }
    char *s = arena_alloc(a, len + 1), *p = s;
    if (!s) {
        return NULL;
    }
    for (size_t i = 0; i < q->in.ngroups; i++) {
        if (i) {
            *p++ = ',';
        }
        memcpy(p, q->in.groups[i].p, q->in.groups[i].len);
        p += q->in.groups[i].len;
    }
    *p = '\0';
    return s;
}

static bool add_identity(struct gate_req *q)
{
    struct request *r = q->r;
    struct err e = { 0 };

    if (!q->id.authenticated) {
        return true;
    }
    if (!add_header(r, q->g->hdr_user, q->id.user) ||
        !add_header(r, q->g->hdr_email, q->id.email) ||
        !add_header(r, q->g->hdr_groups, groups_csv(q))) {
        return false;
    }
    if (G.signer) {
        struct assertion_claims ac = { .aud = r->route->name,
                                       .sub = q->id.user,
                                       .email = q->id.email,
                                       .groups_json = q->id.groups_json,
                                       .sid = q->id.session };
        char *jwt = assertion_get(G.signer, &ac, now_s(), r->arena, &e);
        if (!jwt) {
            log_emit(LOG_ERROR, "authn", r->id, NULL, "identity assertion: %s", e.msg);
            return false;
        }
        return add_header(r, q->g->hdr_assertion, jwt);
    }
    return true;
}

/* ---- the decision ------------------------------------------------------------- */

static enum access_step decide(struct gate_req *q);

static void got_opa(struct gate_req *q, const struct fetch_resp *resp)
{
    bool allow = false;
    char reason[128] = "";
    struct err e = { 0 };
    bool error = resp->failed || resp->status != 200 ||
                 opa_response_parse(resp->body, resp->body_len, &allow, reason, sizeof reason,
                                    &e) != 0;

    q->opa_us += mono_us_now() - q->opa_start_us;
    policy_metrics_opa(mono_us_now() - q->opa_start_us, error, false);
    if (error) {
        log_emit(LOG_WARN, "policy", q->r->id, NULL, "OPA query %s failed: %s (on_error: %s)",
                 q->res.opa_path,
                 resp->failed ? resp->error : (resp->status != 200 ? "unexpected status" : e.msg),
                 q->g->opa->on_error == OPA_ON_ERROR_ALLOW ? "allow" : "deny");
        allow = q->g->opa->on_error == OPA_ON_ERROR_ALLOW;
        q->opa_result = "error";
        policy_opa_answer(&q->res, allow, "the policy service could not be reached");
    } else {
        q->opa_result = allow ? "allow" : "deny";
        opa_cache_put(G.opa_cache, q->res.opa_path, q->opa_input, allow, reason, mono_ms(),
                      q->g->opa->cache_ttl_ms);
        policy_opa_answer(&q->res, allow, reason[0] ? reason : NULL);
    }
    free(q->opa_input);
    q->opa_input = NULL;
    finish(q, decide(q));
}

static enum access_step ask_opa(struct gate_req *q)
{
    bool allow;
    char reason[128];
    const char *hdrs[] = { "Content-Type: application/json", NULL };

    if (!q->g->opa->url) {
        /* Checked at load when possible; fail closed at run time. */
        q->opa_result = "error";
        policy_opa_answer(&q->res, false, "no OPA is configured");
        return decide(q);
    }
    free(q->opa_input);
    q->opa_input = opa_input_json(&q->in);
    if (q->g->opa->cache_ttl_ms &&
        opa_cache_get(G.opa_cache, q->res.opa_path, q->opa_input, mono_ms(), &allow, reason,
                      sizeof reason)) {
        policy_metrics_opa(0, false, true);
        q->opa_result = allow ? "allow" : "deny";
        policy_opa_answer(&q->res, allow, reason[0] ? reason : NULL);
        free(q->opa_input);
        q->opa_input = NULL;
        return decide(q);
    }
    char *url = opa_request_url(q->g->opa, q->res.opa_path);
    q->opa_start_us = mono_us_now();
    /* opa_input_json() already gives the whole request body {"input": {...}}. */
    enum access_step st = start_fetch(q, "POST", url, hdrs, q->opa_input, q->g->opa->timeout_ms,
                                      got_opa);
    free(url);
    return st;
}

static char *url_encode(struct arena *a, struct str s)
{
    struct sbuf b = { 0 };
    codec_buf_add_urlenc(&b, s);
    char *t = codec_buf_take(&b);
    char *out = arena_strdup(a, t ? t : "");
    free(t);
    return out;
}

static enum access_step login_needed(struct gate_req *q)
{
    struct request *r = q->r;
    uint64_t seq;

    if (log_decision(q, "login", q->res.rule, "sign-in required", &seq) != 0) {
        request_error(r, 503, "decision log unavailable");
        return ACCESS_RESPOND;
    }
    if (wants_html(r) && !q->id.bearer) {
        /* Only a safe same-host path is carried along (//evil.example/x is
         * a valid request target but not a return URL). */
        char *rd = url_encode(r->arena, oidc_return_path_safe(r->target) ? r->target : STR("/"));
        char *hdr = arena_printf(r->arena, "Location: /.gatehouse/login?rd=%s\r\n"
                                           "Cache-Control: no-store\r\n", rd ? rd : "%2F");
        return respond(q, 302, "text/plain", STR("sign-in required\n"), hdr);
    }
    return respond(q, 401, "application/json",
                   str_from(arena_printf(r->arena,
                                         "{\"error\":\"unauthenticated\",\"message\":\"sign-in "
                                         "or a bearer token is required\",\"request_id\":\"%s\"}",
                                         r->id)),
                   /* RFC 6750 §3.1: say when the token itself was refused. */
                   q->id.bearer ? "WWW-Authenticate: Bearer realm=\"gatehouse\", "
                                  "error=\"invalid_token\"\r\nCache-Control: no-store\r\n"
                                : "WWW-Authenticate: Bearer realm=\"gatehouse\"\r\n"
                                  "Cache-Control: no-store\r\n");
}

static enum access_step denied(struct gate_req *q)
{
    struct request *r = q->r;
    const char *reason = q->res.reason ? q->res.reason : "Access to this app is not allowed.";
    const char *shown = q->g->show_reason ? reason : "Access to this app is not allowed.";

    log_emit(LOG_INFO, "policy", r->id, NULL, "denied %s on route %s by rule %s",
             q->id.user ? q->id.user : "anonymous", r->route->name,
             q->res.rule ? q->res.rule : "default-deny");
    if (wants_html(r)) {
        struct page_var v[] = { { "reason", shown },
                                { "user", q->id.email ? q->id.email : q->id.user },
                                { "request_id", r->id } };
        return page(q, 403, PAGE_DENIED, v, 3, "Cache-Control: no-store\r\n");
    }
    json_t *o = json_pack("{s:s, s:s, s:s, s:s?}", "error", "forbidden", "reason", shown,
                          "request_id", r->id, "user", q->id.user);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    char *body = arena_strdup(r->arena, s ? s : "{}");
    free(s);
    return respond(q, 403, "application/json", str_from(body), NULL);
}

static enum access_step decide(struct gate_req *q)
{
    struct request *r = q->r;
    enum policy_step st = policy_eval(q->gr->policy, &q->in, &q->res);
    uint64_t seq = 0;

    if (st == POLICY_NEED_OPA) {
        return ask_opa(q);
    }
    policy_metrics_decision(r->route->name, q->res.decision, q->res.shadow);
    if (q->res.effective != POLICY_ALLOW) {
        if (q->res.need_login && !q->id.authenticated) {
            return login_needed(q);
        }
        if (log_decision(q, "deny", q->res.rule, q->res.reason, &seq) != 0) {
            request_error(r, 503, "decision log unavailable");
            return ACCESS_RESPOND;
        }
        return denied(q);
    }
    if (q->res.shadow && q->res.decision != POLICY_ALLOW) {
        log_emit(LOG_INFO, "policy", r->id, NULL,
                 "shadow mode: rule %s would deny %s on route %s", q->res.rule,
                 q->id.user ? q->id.user : "anonymous", r->route->name);
    }
    if (log_decision(q, q->res.decision == POLICY_ALLOW ? "allow" : "deny", q->res.rule,
                     q->res.reason, &seq) != 0) {
        request_error(r, 503, "decision log unavailable");
        return ACCESS_RESPOND;
    }
    scrub_request(q);
    if (!add_identity(q)) {
        return fail_page(q, 500, "Identity error",
                         "Gatehouse could not prepare the identity for this app.",
                         "identity headers or assertion failed");
    }
    if (G.dl && G.dl_strict && seq > atomic_load(&G.committed)) {
        /* decision_log.sync: strict: forward only once the record is durable. */
        struct loop_slot *s = slot_for(loop_of(r));
        struct strict_wait *sw = xcalloc(1, sizeof *sw);
        if (!s) {
            free(sw);
            request_error(r, 503, "decision log unavailable");
            return ACCESS_RESPOND;
        }
        sw->r = r;
        sw->seq = seq;
        sw->next = s->head;
        s->head = sw;
        request_on_abort(r, strict_abort, sw);
        if (seq <= atomic_load(&G.committed)) {
            ev_async_send(s->loop, &s->wake); /* committed while we queued */
        }
        return ACCESS_PENDING;
    }
    return ACCESS_ALLOW;
}

/* ---- refresh (in the background of a request) ------------------------------- */

struct refresh {
    struct gate_idp *idp;
    char cookie[SESSION_COOKIE_LEN + 1];
    char *user_key; /* the session's user: a refreshed ID token must name it */
    struct fetch *fetch;
};

static void got_refresh(void *arg, const struct fetch_resp *resp)
{
    struct refresh *rf = arg;
    struct oidc_tokens t = { 0 };
    struct err e = { 0 };
    struct oidc_metadata *md;
    struct jwks *keys;
    struct str cookie = str_from(rf->cookie);

    idp_snapshot(rf->idp, &md, &keys);
    int rc = resp->failed ? ERR_IO
                          : oidc_token_response(rf->idp->p, keys, (int)resp->status,
                                                (struct str){ resp->body, resp->body_len }, NULL,
                                                now_s(), &t, &e);
    jwks_unref(keys);
    struct oidc_identity oi = { 0 };
    char *groups = NULL;
    if (rc == 0 && t.id_claims) {
        /* OIDC Core 12.2: the refreshed ID token must be about the same user;
         * its claims (email, name, groups) are the current ones. */
        if (oidc_identity_build(rf->idp->p, t.id_claims, NULL, &oi, &e) != 0 ||
            strcmp(oi.user_key, rf->user_key) != 0) {
            session_refresh_done(G.sessions, cookie, false, true, NULL, 0, NULL, NULL, NULL);
            atomic_fetch_add(&G.n_idp_errors, 1);
            log_warn("authn", "session refresh at %s: the new ID token names another user "
                              "(session ended)", rf->idp->p->id);
            rc = -1;
            goto done;
        }
        groups = json_dumps(oi.groups, JSON_COMPACT);
    }
    if (rc == 0) {
        session_refresh_done(G.sessions, cookie, true, false, t.refresh_token, t.expires_at_s,
                             oi.email, oi.name, groups);
        log_info("authn", "session refreshed at %s", rf->idp->p->id);
    } else {
        /* invalid_grant (a 400 from the token endpoint) ends the session; a
         * transport error keeps it and tries again on a later request. */
        bool end = !resp->failed && resp->status == 400;
        session_refresh_done(G.sessions, cookie, false, end, NULL, 0, NULL, NULL, NULL);
        atomic_fetch_add(&G.n_idp_errors, 1);
        log_warn("authn", "session refresh at %s failed: %s%s", rf->idp->p->id,
                 resp->failed ? resp->error : e.msg, end ? " (session ended)" : "");
    }
done:
    free(groups);
    oidc_identity_fini(&oi);
    oidc_tokens_fini(&t);
    OPENSSL_cleanse(rf->cookie, sizeof rf->cookie);
    free(rf->user_key);
    free(rf);
}

static void start_refresh(struct gate_req *q, struct str cookie, const char *idp_id)
{
    struct gate_idp *gi = find_idp(q->g, idp_id);
    struct oidc_metadata *md;
    struct jwks *keys;
    char *rt = NULL;
    struct err e = { 0 };
    char err[256];

    if (!gi) {
        return;
    }
    idp_snapshot(gi, &md, &keys);
    jwks_unref(keys);
    if (!md || !session_refresh_claim(G.sessions, cookie, now_ms(), &rt)) {
        return;
    }
    struct oidc_http h = { 0 };
    if (oidc_refresh_request(gi->p, md, rt, now_s(), &h, &e) != 0) {
        session_refresh_done(G.sessions, cookie, false, false, NULL, 0, NULL, NULL, NULL);
        OPENSSL_cleanse(rt, strlen(rt));
        free(rt);
        return;
    }
    OPENSSL_cleanse(rt, strlen(rt));
    free(rt);
    struct refresh *rf = xcalloc(1, sizeof *rf);
    rf->idp = gi;
    rf->user_key = xstrdup(q->id.user_key ? q->id.user_key : "");
    memcpy(rf->cookie, cookie.p, cookie.len < SESSION_COOKIE_LEN ? cookie.len : SESSION_COOKIE_LEN);
    struct fetch_req fr = { .method = h.method,
                            .url = h.url,
                            .headers = (const char *const *)h.headers,
                            .body = h.body,
                            .body_len = h.body ? strlen(h.body) : 0,
                            .timeout_ms = 10000,
                            .max_response_bytes = IDP_FETCH_MAX };
    rf->fetch = fetch_start(fetcher_of(q->r), &fr, got_refresh, rf, err);
    oidc_http_fini(&h);
    if (!rf->fetch) {
        session_refresh_done(G.sessions, cookie, false, false, NULL, 0, NULL, NULL, NULL);
        free(rf->user_key);
        free(rf);
    }
}

/* ---- identity -------------------------------------------------------------------- */

/* The session cookie, when the request carries one: fills q->id. Returns the
 * session's claims JSON (arena) or NULL. A malformed Cookie header is treated
 * as no session (and logged). */
static const char *identify_session(struct gate_req *q, struct str *cookie_out)
{
    struct request *r = q->r;
    struct str vals[16];
    size_t n = 0;
    char name[128];
    struct str v;
    bool found = false;
    struct err e = { 0 };
    struct session_view sv;

    if (!G.sessions) {
        return NULL;
    }
    for (size_t i = 0; i < r->nheaders && n < 16; i++) {
        if (str_ieq(r->headers[i].name, STR("cookie"))) {
            vals[n++] = r->headers[i].value;
        }
    }
    if (n == 0) {
        return NULL;
    }
    cookie_wire_name(q->g->session.cookie_name, is_tls(r), name, sizeof name);
    if (cookie_get(vals, n, name, &v, &found, &e) != 0) {
        log_emit(LOG_INFO, "authn", r->id, NULL, "session cookie ignored: %s", e.msg);
        return NULL;
    }
    if (!found) {
        return NULL;
    }
    memset(&sv, 0, sizeof sv);
    enum session_status st = session_lookup(G.sessions, v, now_ms(), r->arena, &sv);
    if (st != SESSION_VALID) {
        log_emit(LOG_INFO, "authn", r->id, NULL, "%s session cookie from %s",
                 st == SESSION_EXPIRED ? "expired" : "unknown or revoked", r->client_ip);
        return NULL;
    }
    const char *hash = strchr(sv.user_key, '#');
    q->id.authenticated = true;
    q->id.user_key = sv.user_key;
    q->id.user = hash ? hash + 1 : sv.user_key;
    q->id.email = sv.email;
    q->id.name = sv.name;
    q->id.idp = sv.idp;
    q->id.sid = sv.sid;
    q->id.groups_json = sv.groups_json;
    q->id.expires_ms = sv.expires_ms < sv.idle_expires_ms ? sv.expires_ms : sv.idle_expires_ms;
    q->id.session = arena_strdup(r->arena, sv.id);
    *cookie_out = v;
    if (sv.refresh_due) {
        start_refresh(q, v, sv.idp);
    }
    return sv.claims_json;
}

static enum access_step check_with_identity(struct gate_req *q, const char *claims_json)
{
    build_input(q, claims_json);
    return decide(q);
}

/* Verifies the bearer JWT against the route's providers (keys loaded by
 * ensure_idp first). */
static enum access_step verify_bearer(struct gate_req *q)
{
    struct request *r = q->r;
    struct err e = { 0 };
    /* The reason to log: a provider that held the token's key and refused it
     * says more than the others' "no key with kid". */
    struct err why = { 0 };

    for (size_t i = 0; i < q->gr->nidps; i++) {
        struct gate_idp *gi = q->gr->idps[i];
        struct oidc_metadata *md;
        struct jwks *keys;
        struct oidc_identity oi = { 0 };

        idp_snapshot(gi, &md, &keys);
        if (!keys) {
            continue;
        }
        int rc = oidc_bearer_verify(gi->p, keys, q->bearer, now_s(), &oi, &e);
        jwks_unref(keys);
        if (rc == ERR_NOTFOUND && !q->keys_refetched && may_refetch_keys(gi)) {
            q->keys_refetched = true;
            q->idp = gi;
            q->after_md = AFTER_BEARER;
            return fetch_jwks(q, md);
        }
        if (rc != 0) {
            if (rc != ERR_NOTFOUND || !why.msg[0]) {
                why = e;
            }
            continue;
        }
        char *gj = json_dumps(oi.groups, JSON_COMPACT);
        q->id.authenticated = true;
        q->id.bearer = true;
        q->id.user = arena_strdup(r->arena, oi.sub);
        q->id.user_key = arena_strdup(r->arena, oi.user_key);
        q->id.email = oi.email ? arena_strdup(r->arena, oi.email) : NULL;
        q->id.name = oi.name ? arena_strdup(r->arena, oi.name) : NULL;
        q->id.idp = gi->p->id;
        q->id.groups_json = arena_strdup(r->arena, gj ? gj : "[]");
        const char *claims = oi.claims ? arena_strdup(r->arena, oi.claims) : NULL;
        free(gj);
        oidc_identity_fini(&oi);
        return finish(q, check_with_identity(q, claims));
    }
    log_emit(LOG_INFO, "authn", r->id, NULL, "bearer token refused: %s",
             why.msg[0] ? why.msg : "no identity provider keys");
    q->id.bearer = true;
    q->id.authenticated = false;
    return finish(q, check_with_identity(q, NULL));
}

/* Verifies the bearer token once every accepted provider's keys are loaded
 * (loading the first missing one; after_idp_ready() comes back here). */
static enum access_step bearer_with_keys(struct gate_req *q)
{
    for (size_t i = 0; i < q->gr->nidps; i++) {
        struct oidc_metadata *md;
        struct jwks *keys;
        idp_snapshot(q->gr->idps[i], &md, &keys);
        jwks_unref(keys);
        if (!keys) {
            q->idp = q->gr->idps[i];
            return ensure_idp(q);
        }
    }
    return verify_bearer(q);
}

static enum access_step gate_access(struct request *r)
{
    struct gate_req *q = arena_zalloc(r->arena, sizeof *q);
    struct str cookie = STR_NULL;
    const char *claims = NULL;

    if (!q) {
        request_error(r, 431, "request too large");
        return ACCESS_RESPOND;
    }
    q->r = r;
    q->g = conf_of(r);
    q->gr = r->route->authn;
    q->start_us = mono_us_now();
    policy_result_init(&q->res, NULL);
    claims = identify_session(q, &cookie);
    if (!q->id.authenticated) {
        struct str auth = request_header(r, STR("authorization"), NULL);
        if (auth.len > 7 && str_ieq((struct str){ auth.p, 7 }, STR("bearer "))) {
            q->bearer = str_trim((struct str){ auth.p + 7, auth.len - 7 });
            if (q->gr->nidps) {
                q->after_md = AFTER_BEARER;
                return bearer_with_keys(q);
            }
        }
    }
    return check_with_identity(q, claims);
}

/* ---- reserved endpoints ------------------------------------------------------------ */

static enum access_step start_login(struct gate_req *q);
static enum access_step callback_exchange(struct gate_req *q);

static enum access_step after_idp_ready(struct gate_req *q)
{
    switch (q->after_md) {
    case AFTER_BEARER:
        return bearer_with_keys(q);
    case AFTER_LOGIN:
        return start_login(q);
    case AFTER_CALLBACK:
        return callback_exchange(q);
    case AFTER_NONE:
        break;
    }
    return finish(q, fail_page(q, 500, "Sign-in failed", "Unexpected sign-in state.",
                               "unknown continuation"));
}

static struct str query_param(struct request *r, const char *name)
{
    struct str raw;
    bool dup = false;
    size_t n;

    if (!codec_form_get(r->query, name, &raw, &dup) || dup) {
        return STR_NULL;
    }
    char *dec = codec_url_decode(raw, &n);
    if (!dec) {
        return STR_NULL;
    }
    char *s = arena_strndup(r->arena, dec, n);
    free(dec);
    return s ? (struct str){ s, n } : STR_NULL;
}

static enum access_step start_login(struct gate_req *q)
{
    struct request *r = q->r;
    struct oidc_metadata *md;
    struct jwks *keys;
    struct oidc_login lo = { 0 };
    struct err e = { 0 };
    char cname[128];

    idp_snapshot(q->idp, &md, &keys);
    jwks_unref(keys);
    char *host = arena_strndup(r->arena, r->host.p, r->host.len);
    char *redirect = oidc_redirect_uri(q->idp->p, is_tls(r), host);
    int rc = oidc_login_start(q->idp->p, md, redirect, q->rd, G.login_key, now_s(), &lo, &e);
    free(redirect);
    if (rc != 0) {
        return finish(q, fail_page(q, 500, "Sign-in failed", "Gatehouse could not start sign-in.",
                                   e.msg));
    }
    cookie_wire_name(LOGIN_COOKIE, is_tls(r), cname, sizeof cname);
    char *setc = cookie_format(r->arena, cname, str_from(lo.cookie_value), is_tls(r),
                               OIDC_LOGIN_TTL_S);
    char *hdr = setc ? arena_printf(r->arena,
                                    "Location: %s\r\nSet-Cookie: %s\r\nCache-Control: no-store\r\n",
                                    lo.auth_url, setc)
                     : NULL;
    oidc_login_fini(&lo);
    if (!hdr) {
        return finish(q, fail_page(q, 500, "Sign-in failed", "Gatehouse could not start sign-in.",
                                   "login cookie too large"));
    }
    log_emit(LOG_INFO, "authn", r->id, NULL, "sign-in started at %s from %s", q->idp->p->id,
             r->client_ip);
    return finish(q, respond(q, 302, "text/plain", STR("redirecting to sign-in\n"), hdr));
}

static enum access_step ep_login(struct gate_req *q)
{
    struct request *r = q->r;
    struct str rd = query_param(r, "rd");
    struct str idp = query_param(r, "idp");

    q->rd = rd.len && oidc_return_path_safe(rd) ? rd : STR("/");
    if (rd.len && !oidc_return_path_safe(rd)) {
        log_emit(LOG_WARN, "authn", r->id, NULL, "unsafe return path refused from %s",
                 r->client_ip);
    }
    if (q->gr->nidps == 0) {
        return fail_page(q, 404, "No sign-in here", "This app does not use sign-in.",
                         "login on a route without identity providers");
    }
    if (idp.len) {
        for (size_t i = 0; i < q->gr->nidps; i++) {
            if (str_eq_cstr(idp, q->gr->idps[i]->p->id)) {
                q->idp = q->gr->idps[i];
            }
        }
        if (!q->idp) {
            return fail_page(q, 400, "Unknown identity provider",
                             "That identity provider is not offered for this app.",
                             "unknown idp parameter");
        }
    } else if (q->gr->nidps == 1) {
        q->idp = q->gr->idps[0];
    } else {
        struct page_provider pv[32];
        size_t n = q->gr->nidps < 32 ? q->gr->nidps : 32;
        for (size_t i = 0; i < n; i++) {
            pv[i] = (struct page_provider){ q->gr->idps[i]->p->id, NULL };
        }
        char *list = pages_provider_list(r->arena, pv, n, q->rd);
        char *host = arena_strndup(r->arena, r->host.p, r->host.len);
        struct page_var v[] = { { "host", host }, { "providers", list } };
        return page(q, 200, PAGE_CHOOSER, v, 2, "Cache-Control: no-store\r\n");
    }
    q->after_md = AFTER_LOGIN;
    return ensure_idp(q);
}

static enum access_step callback_fail(struct gate_req *q, int status, const char *why)
{
    uint64_t seq;

    atomic_fetch_add(&G.n_idp_errors, status >= 500);
    /* A failed sign-in is a decision too (decision "error"): the log shows the attempt
     * and why it failed. A full log is counted and logged by log_decision; the answer
     * is a failure either way. */
    (void)log_decision(q, "error", "sign-in", why, &seq);
    return finish(q, fail_page(q, status, "Sign-in failed",
                               "Sign-in could not be completed. Please try again.", why));
}

static enum access_step create_session(struct gate_req *q, const json_t *userinfo)
{
    struct request *r = q->r;
    struct oidc_identity oi = { 0 };
    struct err e = { 0 };
    char cookie[SESSION_COOKIE_LEN + 1];
    char cname[128], lname[128];

    if (oidc_identity_build(q->idp->p, q->tok.id_claims, userinfo, &oi, &e) != 0) {
        return callback_fail(q, 403, e.msg);
    }
    char *groups = json_dumps(oi.groups, JSON_COMPACT);
    struct session_new sn = { .user_key = oi.user_key,
                              .email = oi.email,
                              .name = oi.name,
                              .groups_json = groups ? groups : "[]",
                              .claims_json = oi.claims,
                              .idp = q->idp->p->id,
                              .sid = oi.sid,
                              .refresh_token = q->tok.refresh_token,
                              .id_token = q->tok.id_token,
                              .token_exp_s = q->tok.expires_at_s };
    int rc = session_create(G.sessions, &sn, now_ms(), cookie, &e);
    free(groups);
    /* The login record for the decision log. */
    q->id.authenticated = true;
    q->id.user = arena_strdup(r->arena, oi.sub);
    q->id.email = oi.email ? arena_strdup(r->arena, oi.email) : NULL;
    q->id.idp = q->idp->p->id;
    oidc_identity_fini(&oi);
    if (rc != 0) {
        return callback_fail(q, 500, e.msg);
    }
    uint64_t seq;
    q->in.route = str_from(r->route->name);
    if (log_decision(q, "login", "sign-in", "signed in", &seq) != 0) {
        OPENSSL_cleanse(cookie, sizeof cookie);
        return finish(q, fail_page(q, 503, "Sign-in unavailable",
                                   "Gatehouse cannot record decisions right now.",
                                   "decision log queue full"));
    }
    atomic_fetch_add(&G.n_login, 1);
    cookie_wire_name(q->g->session.cookie_name, is_tls(r), cname, sizeof cname);
    cookie_wire_name(LOGIN_COOKIE, is_tls(r), lname, sizeof lname);
    /* A browser-session cookie: the server-side record enforces idle and
     * absolute expiry, and revocation. */
    char *setc = cookie_format(r->arena, cname, str_from(cookie), is_tls(r), -1);
    char *delc = cookie_format(r->arena, lname, STR("x"), is_tls(r), 0);
    OPENSSL_cleanse(cookie, sizeof cookie);
    const char *rd = q->pd.return_path && oidc_return_path_safe(str_from(q->pd.return_path))
                         ? q->pd.return_path
                         : "/";
    char *hdr = arena_printf(r->arena,
                             "Location: %s\r\nSet-Cookie: %s\r\nSet-Cookie: %s\r\n"
                             "Cache-Control: no-store\r\n",
                             rd, setc ? setc : "", delc ? delc : "");
    log_emit(LOG_INFO, "authn", r->id, NULL, "signed in %s at %s from %s",
             q->id.user ? q->id.user : "?", q->idp->p->id, r->client_ip);
    return finish(q, respond(q, 302, "text/plain", STR("signed in\n"), hdr));
}

static void got_userinfo(struct gate_req *q, const struct fetch_resp *resp)
{
    json_t *ui = NULL;
    struct err e = { 0 };
    const char *sub = jwt_claim_str(q->tok.id_claims, "sub");

    if (resp->failed || oidc_userinfo_parse((int)resp->status,
                                            (struct str){ resp->body, resp->body_len }, sub, &ui,
                                            &e) != 0) {
        callback_fail(q, 502, resp->failed ? resp->error : e.msg);
        return;
    }
    create_session(q, ui);
    json_decref(ui);
}

static enum access_step tokens_ready(struct gate_req *q)
{
    struct oidc_metadata *md;
    struct jwks *keys;
    struct oidc_http h = { 0 };
    struct err e = { 0 };

    idp_snapshot(q->idp, &md, &keys);
    jwks_unref(keys);
    if (q->idp->p->groups_from_userinfo) {
        if (oidc_userinfo_request(md, q->tok.access_token, &h, &e) != 0) {
            return callback_fail(q, 502, e.msg);
        }
        return oidc_fetch(q, &h, got_userinfo);
    }
    return create_session(q, NULL);
}

static void got_token(struct gate_req *q, const struct fetch_resp *resp);

static void got_keys_for_token(struct gate_req *q, const struct fetch_resp *resp)
{
    /* JWKS re-fetched for an unknown kid: store it, then verify the kept token
     * response again (once: keys_refetched is set). */
    struct err e = { 0 };
    struct jwks *k = NULL;
    if (!resp->failed && resp->status == 200) {
        k = jwks_parse((struct str){ resp->body, resp->body_len }, &e);
    }
    if (k) {
        pthread_mutex_lock(&q->idp->mu);
        jwks_unref(q->idp->keys);
        q->idp->keys = k;
        pthread_mutex_unlock(&q->idp->mu);
    }
    struct fetch_resp again = { .status = q->token_status,
                                .body = q->token_body,
                                .body_len = strlen(q->token_body) };
    got_token(q, &again);
}

static void got_token(struct gate_req *q, const struct fetch_resp *resp)
{
    struct oidc_metadata *md;
    struct jwks *keys;
    struct err e = { 0 };

    if (resp->failed) {
        callback_fail(q, 502, resp->error);
        return;
    }
    idp_snapshot(q->idp, &md, &keys);
    int rc = oidc_token_response(q->idp->p, keys, (int)resp->status,
                                 (struct str){ resp->body, resp->body_len }, q->pd.nonce, now_s(),
                                 &q->tok, &e);
    jwks_unref(keys);
    if (rc == ERR_NOTFOUND && !q->keys_refetched && may_refetch_keys(q->idp)) {
        /* Keep the raw response (in the access_token slot, unused until parsed)
         * and verify again once the keys are fresh. */
        q->keys_refetched = true;
        oidc_tokens_fini(&q->tok);
        memset(&q->tok, 0, sizeof q->tok);
        q->token_body = arena_strndup(q->r->arena, resp->body, resp->body_len);
        q->token_status = resp->status;
        if (!q->token_body) {
            callback_fail(q, 431, "token response too large");
            return;
        }
        start_fetch(q, "GET", md->jwks_uri, NULL, NULL, 10000, got_keys_for_token);
        return;
    }
    if (rc != 0) {
        callback_fail(q, 403, e.msg);
        return;
    }
    q->have_tok = true;
    tokens_ready(q);
}

static enum access_step ep_callback(struct gate_req *q)
{
    struct request *r = q->r;
    struct str vals[16];
    size_t n = 0;
    char lname[128];
    struct str v;
    bool found = false;
    struct err e = { 0 };

    for (size_t i = 0; i < r->nheaders && n < 16; i++) {
        if (str_ieq(r->headers[i].name, STR("cookie"))) {
            vals[n++] = r->headers[i].value;
        }
    }
    cookie_wire_name(LOGIN_COOKIE, is_tls(r), lname, sizeof lname);
    if (cookie_get(vals, n, lname, &v, &found, &e) != 0 || !found) {
        return callback_fail(q, 400, found ? e.msg : "no login cookie: state cannot be checked");
    }
    if (oidc_login_cookie_open(G.login_key, v, now_s(), &q->pd, &e) != 0) {
        return callback_fail(q, 400, e.msg);
    }
    q->have_pd = true;
    q->idp = find_idp(q->g, q->pd.idp);
    if (!q->idp) {
        return callback_fail(q, 400, "login cookie names an unknown identity provider");
    }
    /* After a restart or reload the provider may not be loaded yet. */
    q->after_md = AFTER_CALLBACK;
    return ensure_idp(q);
}

static enum access_step callback_exchange(struct gate_req *q)
{
    struct request *r = q->r;
    struct err e = { 0 };
    struct oidc_metadata *md;
    struct jwks *keys;

    idp_snapshot(q->idp, &md, &keys);
    jwks_unref(keys);
    struct oidc_http h = { 0 };
    if (oidc_callback(q->idp->p, md, r->query, &q->pd, G.replay, now_s(), &h, &e) != 0) {
        return callback_fail(q, 400, e.msg);
    }
    return oidc_fetch(q, &h, got_token);
}

static enum access_step ep_me(struct gate_req *q)
{
    struct request *r = q->r;
    struct str cookie = STR_NULL;

    identify_session(q, &cookie);
    if (!q->id.authenticated) {
        q->res.rule = "sign-in";
        build_input(q, NULL);
        return login_needed(q);
    }
    build_input(q, NULL);
    char expires[64];
    time_t t = (time_t)(q->id.expires_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(expires, sizeof expires, "%Y-%m-%dT%H:%M:%SZ", &tm);
    struct str accept = request_header(r, STR("accept"), NULL);
    if (accept.p && str_contains(accept, STR("application/json"))) {
        json_t *groups = json_loads(q->id.groups_json ? q->id.groups_json : "[]", 0, NULL);
        json_t *o = json_pack("{s:s?, s:s?, s:s?, s:o, s:s?, s:s, s:s?}", "user", q->id.user,
                              "email", q->id.email, "name", q->id.name, "groups",
                              groups ? groups : json_array(), "idp", q->id.idp, "expires",
                              expires, "session", q->id.session);
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        char *body = arena_strdup(r->arena, s ? s : "{}");
        free(s);
        return respond(q, 200, "application/json", str_from(body), "Cache-Control: no-store\r\n");
    }
    char *groups = groups_csv(q);
    struct page_var v[] = { { "user", q->id.user },     { "email", q->id.email },
                            { "name", q->id.name },     { "groups", groups },
                            { "idp", q->id.idp },       { "expires", expires },
                            { "device", "none" } };
    return page(q, 200, PAGE_ME, v, 7, "Cache-Control: no-store\r\n");
}

static enum access_step ep_logout(struct gate_req *q)
{
    struct request *r = q->r;
    struct str cookie = STR_NULL;
    char cname[128];
    char *logout_url = NULL;

    identify_session(q, &cookie);
    cookie_wire_name(q->g->session.cookie_name, is_tls(r), cname, sizeof cname);
    char *delc = cookie_format(r->arena, cname, STR("x"), is_tls(r), 0);
    if (q->id.authenticated) {
        struct gate_idp *gi = find_idp(q->g, q->id.idp);
        char *hint = session_id_token(G.sessions, cookie);
        session_revoke_cookie(G.sessions, cookie);
        if (q->id.sid) {
            /* The IdP's back-channel logout for this sid follows and finds no session
             * left: remember that it ended here, so that token is not widened to every
             * session of the user (backchannel_body's fallback to sub). */
            char *k = arena_printf(r->arena, "ended-sid:%s#%s", q->id.idp, q->id.sid);
            if (k) {
                (void)oidc_replay_check_and_add(G.replay, str_from(k), now_s() + 3600, now_s());
            }
        }
        atomic_fetch_add(&G.n_logout, 1);
        log_emit(LOG_INFO, "authn", r->id, NULL, "signed out %s", q->id.user);
        if (gi) {
            struct oidc_metadata *md;
            struct jwks *keys;
            idp_snapshot(gi, &md, &keys);
            jwks_unref(keys);
            if (md && md->end_session_endpoint) {
                logout_url = oidc_logout_url(gi->p, md, hint, gi->p->post_logout_redirect_uri);
            }
        }
        if (hint) {
            OPENSSL_cleanse(hint, strlen(hint));
            free(hint);
        }
    }
    if (logout_url) {
        char *hdr = arena_printf(r->arena, "Location: %s\r\nSet-Cookie: %s\r\n"
                                           "Cache-Control: no-store\r\n",
                                 logout_url, delc ? delc : "");
        free(logout_url);
        return respond(q, 302, "text/plain", STR("signed out\n"), hdr);
    }
    char *host = arena_strndup(r->arena, r->host.p, r->host.len);
    struct page_var v[] = { { "host", host }, { "sign_in_url", "/.gatehouse/login" } };
    char *hdr = arena_printf(r->arena, "Set-Cookie: %s\r\nCache-Control: no-store\r\n",
                             delc ? delc : "");
    return page(q, 200, PAGE_SIGNED_OUT, v, 2, hdr);
}

static void backchannel_body(struct request *r, struct str body, void *arg)
{
    struct gate_req *q = arg;
    struct err e = { 0 };

    (void)r;
    for (size_t i = 0; i < q->g->nidps; i++) {
        struct gate_idp *gi = &q->g->idps[i];
        struct oidc_metadata *md;
        struct jwks *keys;
        char *sid = NULL, *sub = NULL;

        idp_snapshot(gi, &md, &keys);
        if (!keys) {
            continue;
        }
        int rc = oidc_logout_token_verify(gi->p, keys, body, G.replay, now_s(), &sid, &sub, &e);
        jwks_unref(keys);
        if (rc != 0) {
            continue;
        }
        size_t n = 0;
        bool ended_here = false;
        if (sid) {
            n = session_revoke_sid(G.sessions, gi->p->id, sid);
        }
        if (n == 0 && sid) {
            char *k = xasprintf("ended-sid:%s#%s", gi->p->id, sid);
            ended_here = !oidc_replay_check_and_add(G.replay, str_from(k), now_s() + 3600,
                                                    now_s());
            free(k);
        }
        if (n == 0 && sub && !ended_here) {
            char *key = xasprintf("%s#%s", gi->p->issuer, sub);
            n = session_revoke_user(G.sessions, key);
            free(key);
        }
        atomic_fetch_add(&G.n_logout, n);
        log_emit(LOG_INFO, "authn", q->r->id, NULL,
                 "back-channel logout from %s ended %zu session(s)", gi->p->id, n);
        free(sid);
        free(sub);
        respond(q, 200, "text/plain", STR(""), "Cache-Control: no-store\r\n");
        return;
    }
    log_emit(LOG_WARN, "authn", q->r->id, NULL, "back-channel logout refused: %s",
             e.msg[0] ? e.msg : "no identity provider keys loaded");
    respond(q, 400, "application/json", STR("{\"error\":\"invalid_request\"}"),
            "Cache-Control: no-store\r\n");
}

static enum access_step gate_reserved(struct request *r)
{
    struct gate_req *q = arena_zalloc(r->arena, sizeof *q);
    struct str p = r->path;

    if (!q) {
        request_error(r, 431, "request too large");
        return ACCESS_RESPOND;
    }
    q->r = r;
    q->g = conf_of(r);
    q->gr = r->route->authn;
    q->start_us = mono_us_now();
    q->in.host = host_only(r->host);
    policy_result_init(&q->res, NULL);
    if (str_eq_cstr(p, "/.gatehouse/jwks.json")) {
        if (!G.signer) {
            return respond(q, 404, "application/json", STR("{\"keys\":[]}"), NULL);
        }
        char *j = assertion_jwks_json(G.signer, now_s());
        char *body = arena_strdup(r->arena, j);
        free(j);
        return respond(q, 200, "application/json", str_from(body),
                       "Cache-Control: public, max-age=300\r\n");
    }
    if (str_eq_cstr(p, "/.gatehouse/static/login.css")) {
        return respond(q, 200, "text/css; charset=utf-8", pages_css(G.pages),
                       "Cache-Control: public, max-age=3600\r\n");
    }
    if (str_eq_cstr(p, "/.gatehouse/login")) {
        return ep_login(q);
    }
    if (str_eq_cstr(p, "/.gatehouse/oidc/callback")) {
        return ep_callback(q);
    }
    if (str_eq_cstr(p, "/.gatehouse/me")) {
        return ep_me(q);
    }
    if (str_eq_cstr(p, "/.gatehouse/logout")) {
        return ep_logout(q);
    }
    if (str_eq_cstr(p, "/.gatehouse/signed-out")) {
        char *host = arena_strndup(r->arena, r->host.p, r->host.len);
        struct page_var v[] = { { "host", host }, { "sign_in_url", "/.gatehouse/login" } };
        return page(q, 200, PAGE_SIGNED_OUT, v, 2, "Cache-Control: no-store\r\n");
    }
    if (str_eq_cstr(p, "/.gatehouse/oidc/backchannel-logout")) {
        if (!str_eq_cstr(r->method, "POST")) {
            return respond(q, 405, "text/plain", STR("method not allowed\n"), "Allow: POST\r\n");
        }
        q->pending = true;
        return request_read_body(r, 64 * 1024, backchannel_body, q);
    }
    request_error(r, 404, "unknown Gatehouse endpoint");
    return ACCESS_RESPOND;
}
