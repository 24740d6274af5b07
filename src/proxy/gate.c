/* proxy/gate.c - the access stage of the pipeline (route -> identity -> policy
 * -> forward) and the reserved /.gatehouse/ endpoints. Who is calling, and the
 * whole sign-in flow, is authn's (authn_check/authn_resume); this file adapts a
 * request to it, performs the identity provider calls authn asks for on the
 * worker's loop through fetch.c (the request suspended meanwhile), runs the
 * route's compiled policy (asking OPA through fetch.c when a rule says so),
 * queues every decision to the decision log, and sets the identity headers. */
#include "gate.h"

#include <errno.h>
#include <ev.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "authn/authn.h"
#include "authn/codec.h"
#include "authn/device.h"
#include "authn/oidc.h"
#include "authn/page.h"
#include "authn/saml.h"
#include "fetch.h"
#include "io.h"
#include "policy/policy.h"
#include "route.h"

/* An identity with more groups or claim values than this is refused (fail
 * closed) rather than evaluated on a truncated list. */
#define MAX_GROUPS 4096
#define MAX_CLAIMS 4096
#define MAX_COOKIES 16
#define IDP_FETCH_MAX (1u << 20)
#define IDP_FETCH_TIMEOUT_MS 10000
#define BCL_BODY_MAX (64 * 1024)

/* ---- configuration (one per config snapshot) ---------------------------- */

struct gate_route {
    const struct policy *policy;   /* borrowed from the policy_conf */
    /* A policy file may test claims; the built-in public and any-signed-in
     * policies never do (see build_input). */
    bool policy_file;
    const char *const *idps;       /* accepted providers, borrowed from the route; NULL = all */
    size_t nidps;
};

struct gate_conf {
    struct authn *an;              /* identity providers, sessions, assertion, pages */
    struct gate_route *routes;     /* index-aligned with config->routes */
    size_t nroutes;
    char *hdr_user, *hdr_email, *hdr_groups, *hdr_device;
    const char *strip[5];          /* configured identity header names (NULL-terminated);
                                    * the assertion's is authn_assertion_header() */
    struct policy_conf *pc;        /* route policies, opa, decision_log */
    const struct opa_conf *opa;    /* borrowed from pc */
    const struct decision_log_conf *dl; /* borrowed from pc; NULL = no decision log */
    bool show_reason;              /* denied page shows the rule's reason */
    bool needs_sessions;           /* some route is not public */
    size_t nidps;                  /* configured identity providers */
};

/* upstream_identity.assertion and pages.dir are authn's (checked there). */
static const char *const ident_keys[] = { "headers", "assertion", NULL };
static const char *const header_keys[] = { "user", "email", "groups", "device", NULL };

static void read_identity(struct gate_conf *g, struct config *c, struct conf_diag *d)
{
    const struct conf_node *ui = conf_get(c->doc ? c->doc->root : NULL, "upstream_identity");
    const struct conf_node *h = conf_get(ui, "headers");
    const char *user = "X-Gatehouse-User", *email = "X-Gatehouse-Email";
    const char *groups = "X-Gatehouse-Groups", *device = "X-Gatehouse-Device";

    if (ui && conf_check_keys(d, ui, "\"upstream_identity\"", ident_keys)) {
        if (h && conf_check_keys(d, h, "\"upstream_identity.headers\"", header_keys)) {
            conf_string(d, h, "user", &user);
            conf_string(d, h, "email", &email);
            conf_string(d, h, "groups", &groups);
            conf_string(d, h, "device", &device);
        }
    }
    g->hdr_user = xstrdup(user);
    g->hdr_email = xstrdup(email);
    g->hdr_groups = xstrdup(groups);
    g->hdr_device = xstrdup(device);
    size_t n = 0;
    const char *names[] = { g->hdr_user, g->hdr_email, g->hdr_groups, g->hdr_device };
    for (size_t i = 0; i < 4; i++) {
        /* X-Gatehouse-* is stripped by prefix already; list the others. */
        if (strncasecmp(names[i], "X-Gatehouse-", 12) != 0) {
            g->strip[n++] = names[i];
        }
    }
    g->strip[n] = NULL;
}

static void read_routes(struct gate_conf *g, struct config *c)
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
        if (rc->nidps) {
            gr->idps = (const char *const *)rc->idps;
            gr->nidps = rc->nidps;
        }
        rc->policy = (void *)gr->policy;
        rc->authn = gr;
    }
}

/* The shared sign-in state of the running process (set by gate_start): a
 * reloaded snapshot shares it. */
static struct {
    pthread_mutex_t mu;
    struct authn_shared *sh;
} Shared = { .mu = PTHREAD_MUTEX_INITIALIZER };

struct gate_conf *gate_conf_load(struct config *c, struct conf_diag *d)
{
    struct gate_conf *g = xcalloc(1, sizeof *g);
    const struct conf_node *root = c->doc ? c->doc->root : NULL;
    const struct conf_node *pages = conf_get(root, "pages");
    const struct conf_node *idps = conf_get(root, "identity_providers");

    g->show_reason = true;
    g->an = authn_new(root, c->file, c->state_sqlite, d);
    g->nidps = idps && idps->type == CONF_SEQ ? idps->n : 0;
    read_identity(g, c, d);
    g->pc = policy_conf_load(root, c->file, d);
    if (g->pc) {
        g->opa = policy_conf_opa(g->pc);
        g->dl = policy_conf_log(g->pc);
    }
    read_routes(g, c);
    if (pages && pages->type == CONF_MAP) {
        conf_bool(d, pages, "show_deny_reason", &g->show_reason);
    }
    if (g->needs_sessions && !c->state_sqlite && !c->state_postgres) {
        conf_error(d, root && root->type == CONF_MAP ? root : NULL,
                   "routes that are not public need \"state: {sqlite: FILE}\" for sessions");
    }
    if (g->needs_sessions && g->nidps == 0) {
        /* Bearer-only setups still need a provider to verify tokens against. */
        conf_error(d, conf_get(root, "routes"),
                   "routes that are not public need at least one entry in \"identity_providers\"");
    }
    pthread_mutex_lock(&Shared.mu);
    if (g->an) {
        authn_share(g->an, Shared.sh);
    }
    pthread_mutex_unlock(&Shared.mu);
    return g;
}

void gate_conf_free(struct gate_conf *g)
{
    if (!g) {
        return;
    }
    authn_free(g->an);
    policy_conf_free(g->pc);
    free(g->routes);
    free(g->hdr_user);
    free(g->hdr_email);
    free(g->hdr_groups);
    free(g->hdr_device);
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
    struct decision_log *dl;
    bool dl_strict;
    struct opa_cache *opa_cache;
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

static char *dir_of(const char *file)
{
    const char *slash = strrchr(file, '/');
    return slash ? xstrndup(file, (size_t)(slash - file)) : xstrdup(".");
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

/* CSP form-action for Gatehouse's own pages: the sign-in pages send the
 * browser on to the providers (authorization, end-session endpoints). */
static const char *gate_form_action(struct request *r)
{
    const struct gate_conf *g = r->cfg ? r->cfg->authn : NULL;
    return g && g->an ? authn_form_action_origins(g->an, r->arena) : NULL;
}

int gate_start(const struct config *c, struct err *err)
{
    const struct gate_conf *g = c->authn;
    struct err e = { 0 };

    if (G.started) {
        return 0;
    }
    if (!g->an) {
        return err_set(err, ERR_CONFIG, "sign-in configuration missing");
    }
    G.opa_cache = opa_cache_new(10000);
    if (c->state_sqlite) {
        char *dir = dir_of(c->state_sqlite);
        mkdir(dir, 0700);
        free(dir);
    }
    /* Sessions, the assertion key, the pages and the login key: authn's. */
    int rc = authn_start(g->an, &e);
    if (rc != 0) {
        return err_set(err, (enum err_code)rc, "%s", e.msg);
    }
    pthread_mutex_lock(&Shared.mu);
    Shared.sh = authn_shared_ref(g->an);
    pthread_mutex_unlock(&Shared.mu);
    pages_use_templates(authn_pages(g->an)); /* 5xx pages share the sign-in style */
    if (g->dl && (g->dl->sqlite || g->dl->file)) {
        G.dl = decision_log_open(g->dl, &e);
        if (!G.dl) {
            return err_set(err, ERR_IO, "decision log: %s", e.msg);
        }
        G.dl_strict = g->dl->sync == DECISION_LOG_STRICT;
        decision_log_set_commit_cb(G.dl, on_commit, NULL);
    }
    /* device identity: the registry shares state.sqlite; made here so that a
     * broken database shows at start, not at the first device's request */
    device_registry_configure(c->state_sqlite, c->devices_cache_ttl_ms);
    if (c->state_sqlite) {
        struct device_store *ds = device_store_open(c->state_sqlite, &e);
        if (!ds) {
            return err_set(err, ERR_IO, "device registry: %s", e.msg);
        }
        device_store_close(ds);
    }
    access_set_hook(gate_access);
    reserved_set_hook(gate_reserved);
    page_form_action_set_hook(gate_form_action);
    G.started = true;
    return 0;
}

void gate_settings(const struct config *c, struct gate_settings *out)
{
    const struct gate_conf *g = c->authn;
    *out = (struct gate_settings){ 0 };
    if (g) {
        *out = (struct gate_settings){ g->hdr_user, g->hdr_email, g->hdr_groups, g->hdr_device,
                                       g->show_reason, g->an, g->opa, g->dl };
    }
}

void gate_check(const struct config *c, struct conf_diag *d)
{
    const struct gate_conf *g = c->authn;
    const struct conf_node *root = c->doc ? c->doc->root : NULL;
    if (g && g->an) {
        authn_check_files(g->an, root, d);
    }
    if (g && g->dl && g->dl->file) {
        /* The JSON-lines sink is opened for appending; its directory is not made. */
        const struct conf_node *n = conf_get(conf_get(root, "decision_log"), "file");
        char *dir = dir_of(g->dl->file);
        char *sdir = c->state_sqlite ? dir_of(c->state_sqlite) : NULL;
        bool bad = access(g->dl->file, F_OK) == 0 ? access(g->dl->file, W_OK) != 0
                                                  : access(dir, W_OK) != 0;
        if (bad && errno == ENOENT && sdir && strcmp(dir, sdir) == 0) {
            /* gate_start makes the state directory first. */
            char *up = dir_of(dir);
            bad = access(up, W_OK) != 0;
            free(up);
        }
        if (bad) {
            conf_error(d, n, "cannot write decision log %s: %s", g->dl->file, strerror(errno));
        }
        free(sdir);
        free(dir);
    }
}

void gate_stop(void)
{
    if (!G.started) {
        return;
    }
    decision_log_close(G.dl);
    G.dl = NULL;
    pages_use_templates(NULL);
    pthread_mutex_lock(&Shared.mu);
    /* Session writes still queued reach the disk, even though config
     * snapshots still refer to the shared state (no request runs any more). */
    authn_shared_shutdown(Shared.sh);
    authn_shared_unref(Shared.sh);
    Shared.sh = NULL;
    pthread_mutex_unlock(&Shared.mu);
    opa_cache_free(G.opa_cache);
    for (size_t i = 0; i < G.nslots; i++) {
        free(G.slots[i]);
    }
    G.nslots = 0;
    G.started = false;
}

bool gate_state_ready(void)
{
    pthread_mutex_lock(&Shared.mu);
    bool ok = authn_shared_ready(Shared.sh);
    pthread_mutex_unlock(&Shared.mu);
    return ok;
}

size_t gate_metrics_render(char *buf, size_t size)
{
    size_t off = 0;
    int n = snprintf(buf, size,
                     "# HELP gatehouse_state_up 1 while the state database (sessions) is "
                     "reachable; 0 sends /readyz to 503.\n"
                     "# TYPE gatehouse_state_up gauge\n"
                     "gatehouse_state_up %d\n"
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
                     "because the decision log could not take the record.\n"
                     "# TYPE gatehouse_decision_log_rejected_total counter\n"
                     "gatehouse_decision_log_rejected_total %llu\n",
                     gate_state_ready() ? 1 : 0, (unsigned long long)atomic_load(&G.n_login),
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

/* Who is calling, as policy and the decision log see it (from authn's identity). */
struct ident {
    bool authenticated;
    const char *user;      /* sub */
    const char *user_key;  /* iss#sub */
    const char *email, *name, *idp;
    const char *session;   /* public session id (hash prefix) or NULL */
    const char *groups_json;
    bool bearer;
};

struct gate_req;
typedef void gate_next_fn(struct gate_req *q, const struct fetch_resp *resp);

struct gate_req {
    struct request *r;
    struct gate_conf *g;
    struct gate_route *gr;
    struct fetch *fetch;      /* in flight, or NULL */
    gate_next_fn *next;
    bool pending;             /* the request is suspended (ACCESS_PENDING given) */
    bool abort_hooked;        /* request_on_abort(on_abort) registered */
    bool aborted;
    struct ident id;
    /* policy */
    struct policy_input in;
    struct policy_result res;
    struct str *groups;       /* arena, in.ngroups long */
    struct policy_kv *claims; /* arena, in.nclaims long */
    bool ident_incomplete;    /* groups/claims could not all be read: fail closed */
    struct policy_kv *hdrs;
    char *opa_input;
    uint64_t opa_start_us;
    uint64_t opa_us;
    const char *opa_result;
    /* identity (authn) */
    struct authn *an;
    struct authn_req areq;
    struct authn_out aout;
    bool reserved;            /* a /.gatehouse/ endpoint, not a routed request */
    struct device_identity *dev; /* device identity (client certificate), or NULL */
    struct str cookies[MAX_COOKIES];
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
    char *html = pages_render(authn_pages(q->an), k, vars, n, q->r->arena, &len);
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

/* Starts an IdP/OPA call: true when it runs (the request is suspended until
 * next() runs), false with err filled when it could not start. */
static bool fetch_begin(struct gate_req *q, const char *method, const char *url,
                        const char *const *headers, const char *body, size_t body_len,
                        uint64_t timeout_ms, gate_next_fn *next, char err[256])
{
    struct fetch_req fr = { .method = method,
                            .url = url,
                            .headers = headers,
                            .body = body,
                            .body_len = body_len,
                            .timeout_ms = timeout_ms,
                            .max_response_bytes = IDP_FETCH_MAX };
    q->next = next;
    q->fetch = fetch_start(fetcher_of(q->r), &fr, on_fetch_done, q, err);
    if (!q->fetch) {
        return false;
    }
    q->pending = true;
    if (!q->abort_hooked) {
        q->abort_hooked = true;
        request_on_abort(q->r, on_abort, q);
    }
    return true;
}

/* An OPA call (fails closed with a 502 page when it cannot start). */
static enum access_step start_fetch(struct gate_req *q, const char *method, const char *url,
                                    const char *const *headers, const char *body,
                                    uint64_t timeout_ms, gate_next_fn *next)
{
    char err[256];
    if (!fetch_begin(q, method, url, headers, body, body ? strlen(body) : 0, timeout_ms, next,
                     err)) {
        return finish(q, fail_page(q, 502, "Policy service unavailable",
                                   "Gatehouse could not reach the policy service.", err));
    }
    return ACCESS_PENDING;
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

/* Queues the decision record. kind: "policy" (the route's policy decided) or
 * "signin" (the sign-in flow); decision is what the policy said, enforced what
 * was done (they differ in shadow mode). Returns 0, or ERR_LIMIT when the log is
 * beyond its bound (the caller answers 503: never a silent drop). *seq gets the
 * record's sequence number. */
static int log_decision(struct gate_req *q, const char *kind, const char *decision,
                        const char *enforced, const char *rule, const char *reason,
                        uint64_t *seq)
{
    struct request *r = q->r;
    size_t ng = q->in.ngroups;
    const char **groups;

    /* The access log carries the outcome too (accesslog.h). */
    r->access_decision = decision;
    r->access_rule = rule;
    r->access_user = q->id.user; /* the user id as policies and the decision log see it */
    r->access_device = q->dev && q->dev->present && q->dev->enrolled ? q->dev->id : NULL;
    if (!G.dl) {
        return 0;
    }
    groups = arena_alloc(r->arena, (ng ? ng : 1) * sizeof *groups);
    if (!groups) {
        ng = 0;
    }
    /* Only the claims the route's policy tests are kept: enough for `policy
     * diff` to replay the decision, and no more personal data than that. */
    struct policy_kv *claims = arena_alloc(r->arena, (q->in.nclaims ? q->in.nclaims : 1) *
                                                         sizeof *claims);
    size_t nclaims = 0;
    for (size_t i = 0; claims && i < q->in.nclaims; i++) {
        if (q->gr && policy_uses_claim(q->gr->policy, q->in.claims[i].name)) {
            claims[nclaims++] = q->in.claims[i];
        }
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
        .claims = claims,
        .nclaims = nclaims,
        /* device identity: the record names the device */
        .device_present = q->in.device.present,
        .device_trusted = q->in.device.present && q->in.device.trusted,
        .device_id = q->dev && q->dev->present && q->dev->enrolled ? q->dev->id : NULL,
        .device_owner = q->dev && q->dev->present && q->dev->enrolled ? q->dev->owner : NULL,
        .client_ip = r->client_ip,
        .method = arena_strndup(r->arena, r->method.p, r->method.len),
        .host = arena_strndup(r->arena, q->in.host.p, q->in.host.len),
        .path = arena_strndup(r->arena, r->path.p, r->path.len),
        .shadow = q->res.shadow,
        .opa_called = q->res.opa_called,
        .opa_result = q->opa_result,
        .opa_ms = (uint32_t)(q->opa_us / 1000),
        .latency_us = mono_us_now() - q->start_us,
        .kind = kind,
        .enforced = enforced,
    };
    int rc = decision_log_append(G.dl, &rec, seq);
    if (rc != 0) {
        atomic_fetch_add(&G.n_dl_rejects, 1);
        log_emit(LOG_ERROR, "policy", r->id, NULL,
                 decision_log_healthy(G.dl)
                     ? "decision log queue full: refusing the request (503)"
                     : "decision log store failing and its backlog is full: refusing the "
                       "request (503)");
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

/* The string value of a claim (strings, booleans, integers), or NULL. */
static const char *claim_text(json_t *v, char num[32])
{
    if (json_is_string(v)) {
        return json_string_value(v);
    }
    if (json_is_boolean(v)) {
        return json_is_true(v) ? "true" : "false";
    }
    if (json_is_integer(v)) {
        snprintf(num, 32, "%lld", (long long)json_integer_value(v));
        return num;
    }
    return NULL;
}

/* Adds one (name, value) claim pair to q (arena copies). */
static bool claim_add(struct gate_req *q, const char *k, const char *v)
{
    char *kk = arena_strdup(q->r->arena, k), *vv = arena_strdup(q->r->arena, v);
    if (!kk || !vv) {
        return false;
    }
    q->claims[q->in.nclaims++] = (struct policy_kv){ str_from(kk), str_from(vv) };
    return true;
}

/* Claims as (name, value) pairs for the policy input; an array claim gives
 * one pair per string element. Sets ident_incomplete when they cannot all be
 * kept, so that a rule never sees a truncated list. */
static void claims_from_json(struct gate_req *q, const char *json)
{
    json_t *o, *v, *it;
    const char *k;
    size_t n = 0, i;
    char num[32];

    if (!json || !(o = json_loads(json, 0, NULL))) {
        return;
    }
    json_object_foreach(o, k, v) {
        n += json_is_array(v) ? json_array_size(v) : 1;
    }
    q->claims = n <= MAX_CLAIMS ? arena_alloc(q->r->arena, (n ? n : 1) * sizeof *q->claims) : NULL;
    if (!q->claims) {
        q->ident_incomplete = true;
        json_decref(o);
        return;
    }
    q->in.claims = q->claims;
    json_object_foreach(o, k, v) {
        if (is_protocol_claim(k)) {
            continue;
        }
        if (json_is_array(v)) {
            json_array_foreach(v, i, it) {
                if (json_is_string(it) && !claim_add(q, k, json_string_value(it))) {
                    q->ident_incomplete = true;
                }
            }
            continue;
        }
        const char *s = claim_text(v, num);
        if (s && !claim_add(q, k, s)) {
            q->ident_incomplete = true;
        }
    }
    json_decref(o);
}

static void groups_from_json(struct gate_req *q, const char *json)
{
    json_t *arr, *it;
    size_t i, n;

    if (!json || !(arr = json_loads(json, 0, NULL))) {
        return;
    }
    n = json_is_array(arr) ? json_array_size(arr) : 0;
    q->groups = n <= MAX_GROUPS ? arena_alloc(q->r->arena, (n ? n : 1) * sizeof *q->groups) : NULL;
    if (!q->groups) {
        q->ident_incomplete = true;
        json_decref(arr);
        return;
    }
    q->in.groups = q->groups;
    json_array_foreach(arr, i, it) {
        if (json_is_string(it)) {
            char *s = arena_strdup(q->r->arena, json_string_value(it));
            if (!s) {
                q->ident_incomplete = true;
                break;
            }
            q->groups[q->in.ngroups++] = str_from(s);
        }
    }
    json_decref(arr);
}

/* Parsed groups and claims of recently seen identities, per worker thread. A
 * signed-in user's requests carry the same JSON texts again and again, and
 * parsing them with jansson was the largest single cost of a policy check.
 * Entries are keyed by the exact texts, so a refreshed session (new groups)
 * simply misses; a hit copies the strings into the request's arena, so a
 * suspended request never points into an entry that was replaced since. */
#define IDCACHE_SLOTS 128

struct idcache_span {
    uint32_t off, len;
};

struct idcache_entry {
    uint64_t hash;
    char *key;                   /* groups JSON, a NUL, claims JSON (malloc'd) */
    size_t key_len;
    char *buf;                   /* the strings, back to back (malloc'd) */
    size_t buf_len;
    size_t ngroups, nclaims;
    struct idcache_span *groups;      /* ngroups (malloc'd) */
    struct idcache_span *claim_spans; /* 2 * nclaims: name, value (malloc'd) */
};

static __thread struct idcache_entry *idcache;

static struct str span_in(const char *base, struct idcache_span sp)
{
    return (struct str){ base + sp.off, sp.len };
}

static void idcache_put(struct idcache_entry *e, struct gate_req *q, uint64_t hash,
                        const char *g, size_t gl, const char *c, size_t cl)
{
    size_t key_len = gl + 1 + cl;
    size_t len = 0, off = 0;

    for (size_t i = 0; i < q->in.ngroups; i++) {
        len += q->groups[i].len;
    }
    for (size_t i = 0; i < q->in.nclaims; i++) {
        len += q->claims[i].name.len + q->claims[i].value.len;
    }
    free(e->key);
    free(e->buf);
    free(e->groups);
    free(e->claim_spans);
    e->groups = xcalloc(q->in.ngroups ? q->in.ngroups : 1, sizeof *e->groups);
    e->claim_spans = xcalloc(q->in.nclaims ? 2 * q->in.nclaims : 1, sizeof *e->claim_spans);
    e->hash = hash;
    e->key = xmalloc(key_len);
    memcpy(e->key, g, gl + 1);
    memcpy(e->key + gl + 1, c, cl);
    e->key_len = key_len;
    e->buf = xmalloc(len ? len : 1);
    e->buf_len = len;
#define IDCACHE_ADD(sp, s)                                                                             do {                                                                                                   memcpy(e->buf + off, (s).p, (s).len);                                                              (sp) = (struct idcache_span){ (uint32_t)off, (uint32_t)(s).len };                                  off += (s).len;                                                                                } while (0)
    for (size_t i = 0; i < q->in.ngroups; i++) {
        IDCACHE_ADD(e->groups[i], q->groups[i]);
    }
    for (size_t i = 0; i < q->in.nclaims; i++) {
        IDCACHE_ADD(e->claim_spans[2 * i], q->claims[i].name);
        IDCACHE_ADD(e->claim_spans[2 * i + 1], q->claims[i].value);
    }
#undef IDCACHE_ADD
    e->ngroups = q->in.ngroups;
    e->nclaims = q->in.nclaims;
}

/* Fills q's groups (and claims, when claims_json is not NULL) from the
 * identity's JSON texts, through the per-thread cache. */
static void identity_parse(struct gate_req *q, const char *groups_json, const char *claims_json)
{
    const char *g = groups_json ? groups_json : "", *c = claims_json ? claims_json : "";
    size_t gl = strlen(g), cl = strlen(c);
    size_t key_len = gl + 1 + cl;
    uint64_t hash = str_hash(str_hash(STR_HASH_SEED, g, gl), c, cl);
    struct idcache_entry *e;

    if (!idcache) {
        idcache = xcalloc(IDCACHE_SLOTS, sizeof *idcache);
    }
    e = &idcache[hash % IDCACHE_SLOTS];
    if (e->key && e->hash == hash && e->key_len == key_len && memcmp(e->key, g, gl + 1) == 0 &&
        memcmp(e->key + gl + 1, c, cl) == 0) {
        char *buf = arena_alloc(q->r->arena, e->buf_len ? e->buf_len : 1);
        q->groups = arena_alloc(q->r->arena, (e->ngroups ? e->ngroups : 1) * sizeof *q->groups);
        q->claims = arena_alloc(q->r->arena, (e->nclaims ? e->nclaims : 1) * sizeof *q->claims);
        if (!buf || !q->groups || !q->claims) {
            q->ident_incomplete = true;
            return;
        }
        memcpy(buf, e->buf, e->buf_len);
        for (size_t i = 0; i < e->ngroups; i++) {
            q->groups[i] = span_in(buf, e->groups[i]);
        }
        for (size_t i = 0; i < e->nclaims; i++) {
            q->claims[i] = (struct policy_kv){ span_in(buf, e->claim_spans[2 * i]),
                                               span_in(buf, e->claim_spans[2 * i + 1]) };
        }
        q->in.groups = q->groups;
        q->in.claims = q->claims;
        q->in.ngroups = e->ngroups;
        q->in.nclaims = e->nclaims;
        return;
    }
    groups_from_json(q, groups_json);
    if (claims_json) {
        claims_from_json(q, claims_json);
    }
    if (!q->ident_incomplete) {
        idcache_put(e, q, hash, g, gl, c, cl);
    }
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
    if (q->id.authenticated) {
        /* Only a policy file or the decision log can read the claims. */
        bool want_claims = (q->gr && q->gr->policy_file) || G.dl;
        identity_parse(q, q->id.groups_json, want_claims ? claims_json : NULL);
    }
    policy_ip_parse(str_from(r->client_ip), &in->client_ip);
    in->method = r->method;
    in->host = host_only(r->hostname);
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
    /* device identity: what the certificate and the registry say, live */
    if (q->dev && q->dev->present) {
        struct device_identity *d = q->dev;
        in->device = (struct policy_device){
            .present = true, .trusted = d->trusted,
            .id = d->enrolled ? str_from(d->id) : STR_NULL,
            .owner = d->enrolled ? str_from(d->owner) : STR_NULL,
            .subject = str_from(d->subject), .issuer = str_from(d->issuer),
            .serial = str_from(d->serial), .fingerprint = str_from(d->fingerprint),
            .san = d->san[0] ? str_from(d->san) : STR_NULL,
        };
    }
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

/* Appends an identity header for the backend. The first call makes room for
 * all of them (user, email, groups, assertion), so no call copies the array. */
#define IDENTITY_HEADERS 4

static bool add_header_raw(struct request *r, const char *name, const char *value)
{
    if (r->nup_headers % IDENTITY_HEADERS == 0) {
        struct header *h = arena_alloc(r->arena, (r->nup_headers + IDENTITY_HEADERS) * sizeof *h);
        if (!h) {
            return false;
        }
        if (r->nup_headers) {
            memcpy(h, r->up_headers, r->nup_headers * sizeof *h);
        }
        r->up_headers = h;
    }
    r->up_headers[r->nup_headers++] = (struct header){ str_from(name), str_from(value) };
    return true;
}

/* A header whose value comes from the IdP: neutralised first. */
static bool add_header(struct request *r, const char *name, const char *value)
{
    if (!value) {
        return true;
    }
    value = header_safe(r->arena, value);
    return value && add_header_raw(r, name, value);
}

/* Removes client-sent copies of configured identity headers and Gatehouse's own
 * cookies from what reaches the backend. X-Gatehouse-* goes by prefix in http.c.
 * A name compares as a backend reads it: "X_Auth_User" is X-Auth-User to CGI,
 * WSGI, PHP and Rack (even on a route with headers.allow_underscores). */
static void scrub_request(struct gate_req *q)
{
    struct request *r = q->r;
    const char *ahdr = authn_assertion_header(q->an);
    size_t out = 0;

    for (size_t i = 0; i < r->nheaders; i++) {
        struct header h = r->headers[i];
        bool drop = ahdr && http_name_alike(h.name, str_from(ahdr));
        for (size_t j = 0; q->g->strip[j]; j++) {
            if (http_name_alike(h.name, str_from(q->g->strip[j]))) {
                drop = true;
            }
        }
        if (!drop && str_ieq(h.name, STR("cookie"))) {
            h.value = authn_strip_cookies(q->an, h.value, is_tls(r), r->arena);
            drop = h.value.len == 0;
        }
        if (!drop) {
            r->headers[out++] = h;
        }
    }
    r->nheaders = out;
}

/* Must this byte of a group name be percent-encoded in the groups header? The
 * header is a comma-separated list, so ',' and the escape '%' itself are;
 * control bytes (a header cannot carry them); and a space at either end of the
 * name (list parsers trim it). */
static bool group_byte_escaped(const struct str g, size_t i)
{
    unsigned char c = (unsigned char)g.p[i];
    return c == ',' || c == '%' || c < 0x20 || c == 0x7f ||
           (c == ' ' && (i == 0 || i + 1 == g.len));
}

/* X-Gatehouse-Groups: the group names joined by ',', each percent-encoded
 * where group_byte_escaped says so; empty names are left out. Split on ','
 * and percent-decode each item to get the names back exactly. */
static char *groups_csv(struct gate_req *q)
{
    static const char hex[] = "0123456789ABCDEF";
    struct arena *a = q->r->arena;
    size_t len = 0;
    for (size_t i = 0; i < q->in.ngroups; i++) {
        len += q->in.groups[i].len * 3 + 1;
    }
    char *s = arena_alloc(a, len + 1), *p = s;
    if (!s) {
        return NULL;
    }
    for (size_t i = 0; i < q->in.ngroups; i++) {
        struct str g = q->in.groups[i];
        if (g.len == 0) {
            continue;
        }
        if (p != s) {
            *p++ = ',';
        }
        for (size_t k = 0; k < g.len; k++) {
            if (group_byte_escaped(g, k)) {
                unsigned char c = (unsigned char)g.p[k];
                *p++ = '%';
                *p++ = hex[c >> 4];
                *p++ = hex[c & 15];
            } else {
                *p++ = g.p[k];
            }
        }
    }
    *p = '\0';
    return s;
}

static bool add_identity(struct gate_req *q)
{
    struct request *r = q->r;
    /* device identity: the id of a trusted device only */
    const char *device = q->dev && q->dev->trusted ? q->dev->id : NULL;

    if (device && !add_header_raw(r, q->g->hdr_device, device)) {
        return false;
    }
    if (!q->id.authenticated) {
        return true;
    }
    if (!add_header(r, q->g->hdr_user, q->id.user) ||
        !add_header(r, q->g->hdr_email, q->id.email) ||
        !add_header(r, q->g->hdr_groups, groups_csv(q))) {
        return false;
    }
    const char *hdr = authn_assertion_header(q->an);
    if (hdr) {
        const char *jwt = authn_assertion(q->an, &q->aout.id, r->route->name, device, now_ms(),
                                          r->arena);
        if (!jwt) {
            return false; /* authn logged why */
        }
        return add_header_raw(r, hdr, jwt); /* base64url and dots: nothing to neutralise */
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

    if (log_decision(q, "policy", "login", "login", q->res.rule, "sign-in required", &seq) !=
        0) {
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

/* device identity: would the same request from a trusted device of this user be
 * allowed? Then the denied page says what to do. */
static bool device_would_help(struct gate_req *q)
{
    if (q->in.device.trusted || !q->gr || !q->gr->policy) {
        return false;
    }
    struct policy_input in = q->in;
    struct policy_result res;
    in.device.present = in.device.trusted = true;
    in.device.owner = in.email;
    policy_result_init(&res, NULL);
    return policy_eval(q->gr->policy, &in, &res) == POLICY_DONE && res.decision == POLICY_ALLOW;
}

static enum access_step denied(struct gate_req *q)
{
    struct request *r = q->r;
    const char *reason = q->res.reason ? q->res.reason : "Access to this app is not allowed.";
    const char *shown = q->g->show_reason ? reason : "Access to this app is not allowed.";
    if (device_would_help(q)) {
        shown = arena_printf(r->arena, "%s This app needs an enrolled device: open it from "
                             "your company laptop with its device certificate installed, or "
                             "ask your administrator to enrol this device (%s).", shown,
                             q->dev && q->dev->present ? q->dev->why
                                                       : "no device certificate was presented");
        if (!shown) {
            shown = "This app needs an enrolled device.";
        }
    }

    log_emit(LOG_INFO, "policy", r->id, NULL, "denied %s on route %s by rule %s",
             q->id.user ? q->id.user : "anonymous", r->route->name,
             q->res.rule ? q->res.rule : "default-deny");
    if (wants_html(r)) {
        /* "Sign in as someone else" comes back here, to this very URL. */
        const char *here = r->query.len ? arena_printf(r->arena, "%.*s?%.*s", (int)r->path.len,
                                                       r->path.p, (int)r->query.len, r->query.p)
                                        : arena_strndup(r->arena, r->path.p, r->path.len);
        struct page_var v[] = { { "reason", shown },
                                { "user", q->id.email ? q->id.email : q->id.user },
                                { "request_id", r->id },
                                { "switch_user_url",
                                  authn_switch_user_url(r->arena, here ? str_from(here)
                                                                       : STR("/")) } };
        return page(q, 403, PAGE_DENIED, v, 4, "Cache-Control: no-store\r\n");
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
    enum policy_step st;
    uint64_t seq = 0;

    if (q->ident_incomplete) {
        /* Rules must never see a truncated group or claim list: a deny rule
         * on a dropped group would silently not apply. */
        return fail_page(q, 500, "Identity too large",
                         "Your identity carries more groups or claims than Gatehouse can check.",
                         "identity groups/claims exceed the limits or the request memory");
    }
    st = policy_eval(q->gr->policy, &q->in, &q->res);

    if (st == POLICY_NEED_OPA) {
        return ask_opa(q);
    }
    policy_metrics_decision(r->route->name, q->res.decision, q->res.shadow);
    if (q->res.effective != POLICY_ALLOW) {
        if (q->res.need_login && !q->id.authenticated) {
            return login_needed(q);
        }
        if (log_decision(q, "policy", "deny", "deny", q->res.rule, q->res.reason, &seq) != 0) {
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
    /* In shadow mode the record keeps what the policy said and that it was allowed. */
    if (log_decision(q, "policy", q->res.decision == POLICY_ALLOW ? "allow" : "deny", "allow",
                     q->res.rule, q->res.reason, &seq) != 0) {
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

/* ---- identity: the adapter to authn ------------------------------------------------ */

static const struct listener_conf *listener_of(const struct request *r)
{
    const struct conn *c = r->conn;
    return c && c->ls && !c->ls->admin && r->cfg && c->ls->index < r->cfg->nlisteners
               ? &r->cfg->listeners[c->ls->index]
               : NULL;
}

/* Host names as routes spell them: letters, digits, '-', '.', or an IPv6
 * literal in brackets; anything else is not a host we build URLs from. */
static bool plain_host(struct str h)
{
    if (h.len == 0 || h.len > 253) {
        return false;
    }
    bool v6 = h.p[0] == '[';
    for (size_t i = 0; i < h.len; i++) {
        unsigned char ch = (unsigned char)h.p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
                  (v6 && (ch == ':' || ch == '[' || ch == ']'));
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* Does some route name this host (exactly, or by its wildcard)? */
static bool host_named(const struct config *cfg, struct str host)
{
    for (size_t i = 0; cfg && i < cfg->nroutes; i++) {
        const struct route_conf *rc = &cfg->routes[i];
        if (!rc->host) {
            continue;
        }
        size_t n = strlen(rc->host);
        if (rc->host_wildcard ? host.len > n &&
                                    str_ieq((struct str){ host.p + host.len - n, n },
                                            (struct str){ rc->host, n })
                              : str_ieq_cstr(host, rc->host)) {
            return true;
        }
    }
    return false;
}

/* The origin browsers use for this request's route, from configuration (see
 * authn_req.public_origin); NULL when no route names the Host. */
static const char *public_origin(const struct request *r)
{
    const struct route_conf *rc = r->route;
    const struct listener_conf *lc = listener_of(r);
    struct str host = route_host_strip(r->host);
    bool tls = is_tls(r);

    if (rc && rc->public_url) {
        return rc->public_url;
    }
    if (rc && rc->host && !rc->host_wildcard) {
        host = str_from(rc->host);
    } else if (rc && rc->host_wildcard) {
        /* The Host matched the route's wildcard: it is named by it. */
    } else if (lc && lc->public_url) {
        return lc->public_url;
    } else if (!host_named(r->cfg, host)) {
        return NULL;
    }
    if (!plain_host(host)) {
        return NULL;
    }
    uint16_t port = lc ? lc->port : 0;
    char *o = (port == 0 || port == (tls ? 443 : 80))
                  ? arena_printf(r->arena, "%s://%.*s", tls ? "https" : "http", (int)host.len,
                                 host.p)
                  : arena_printf(r->arena, "%s://%.*s:%u", tls ? "https" : "http",
                                 (int)host.len, host.p, (unsigned)port);
    for (char *p = o ? o + (tls ? 8 : 7) : NULL; p && *p && *p != ':'; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char)(*p - 'A' + 'a');
        }
    }
    return o;
}

static void authn_req_fill(struct gate_req *q)
{
    struct request *r = q->r;
    struct authn_req *a = &q->areq;
    size_t n = 0;

    for (size_t i = 0; i < r->nheaders && n < MAX_COOKIES; i++) {
        if (str_ieq(r->headers[i].name, STR("cookie"))) {
            q->cookies[n++] = r->headers[i].value;
        }
    }
    a->method = r->method;
    a->host = r->host; /* with the port: the redirect URI needs it */
    a->path = r->path;
    a->query = r->query;
    a->cookies = q->cookies;
    a->ncookies = n;
    a->authorization = request_header(r, STR("authorization"), NULL);
    a->accept = request_header(r, STR("accept"), NULL);
    a->x_requested_with = request_header(r, STR("x-requested-with"), NULL);
    a->sec_fetch_site = request_header(r, STR("sec-fetch-site"), NULL);
    a->origin = request_header(r, STR("origin"), NULL);
    a->tls = is_tls(r);
    if (q->reserved) {
        a->request_origin = arena_printf(r->arena, "%s://%.*s", a->tls ? "https" : "http",
                                         (int)r->host.len, r->host.p);
        a->public_origin = public_origin(r);
    }
    /* The route's policy decides who must sign in (rules may allow anonymous
     * callers), so authn never refuses an anonymous caller here. */
    a->route_public = true;
    a->route_idps = q->gr ? q->gr->idps : NULL;
    a->nroute_idps = q->gr ? q->gr->nidps : 0;
    a->request_id = r->id;
    a->client_ip = r->client_ip;
    a->now_ms = now_ms();
}

static void ident_from_authn(struct gate_req *q)
{
    const struct authn_identity *id = &q->aout.id;

    memset(&q->id, 0, sizeof q->id);
    q->id.bearer = id->bearer;
    if (!id->user_key) {
        return;
    }
    q->id.authenticated = true;
    q->id.user = id->user ? id->user : id->user_key;
    q->id.user_key = id->user_key;
    q->id.email = id->email;
    q->id.name = id->name;
    q->id.idp = id->idp;
    q->id.session = id->session_id;
    q->id.groups_json = id->groups_json;
}

/* authn's answer as the response: status, type, its headers, body. */
static enum access_step send_authn_resp(struct gate_req *q)
{
    struct request *r = q->r;
    const struct authn_resp *rs = &q->aout.resp;
    size_t len = 1;

    if (rs->status == 0) {
        request_error(r, 500, "sign-in failed");
        return ACCESS_RESPOND;
    }
    for (size_t i = 0; i < rs->nheaders; i++) {
        len += strlen(rs->headers[i].name) + strlen(rs->headers[i].value) + 4;
    }
    char *extra = arena_alloc(r->arena, len), *p = extra;
    if (!extra) {
        request_error(r, 431, "request too large");
        return ACCESS_RESPOND;
    }
    for (size_t i = 0; i < rs->nheaders; i++) {
        p += sprintf(p, "%s: %s\r\n", rs->headers[i].name, rs->headers[i].value);
    }
    *p = '\0';
    return respond(q, rs->status, rs->content_type ? rs->content_type : "text/plain",
                   (struct str){ rs->body ? rs->body : "", rs->body ? rs->body_len : 0 }, extra);
}

/* The decision log and metrics for what authn did. Returns false when the
 * answer must be a 503 instead (the decision log is full). */
static bool record_authn_event(struct gate_req *q)
{
    struct authn_out *o = &q->aout;
    uint64_t seq;

    if (o->idp_error) {
        atomic_fetch_add(&G.n_idp_errors, 1);
    }
    switch (o->event) {
    case AUTHN_EV_SIGNIN_REQUIRED:
        ident_from_authn(q);
        build_input(q, NULL);
        q->res.rule = "sign-in";
        return log_decision(q, "signin", "login", "login", "sign-in", "sign-in required",
                            &seq) == 0;
    case AUTHN_EV_LOGIN:
        /* The login record names the new user; the browser comes back with the cookie. */
        ident_from_authn(q);
        build_input(q, NULL);
        if (log_decision(q, "signin", "login", "login", "sign-in", "signed in", &seq) != 0) {
            return false;
        }
        atomic_fetch_add(&G.n_login, 1);
        return true;
    case AUTHN_EV_LOGIN_FAILED:
        /* A failed sign-in is a decision too (decision "error"): the log shows the
         * attempt and why it failed. A full log is counted and logged by
         * log_decision; the answer is a failure either way. */
        build_input(q, NULL);
        (void)log_decision(q, "signin", "error", "error", "sign-in", o->reason, &seq);
        return true;
    case AUTHN_EV_LOGOUT:
        atomic_fetch_add(&G.n_logout, o->nlogouts);
        return true;
    case AUTHN_EV_NONE:
        break;
    }
    return true;
}

static enum access_step idp_fetch(struct gate_req *q);

/* Acts on authn's step: fetch for it, answer for it, or go on to the policy
 * with the identity it found. */
static enum access_step authn_step_done(struct gate_req *q, enum authn_step st)
{
    struct request *r = q->r;

    if (st == AUTHN_NEED_FETCH) {
        return idp_fetch(q);
    }
    bool logged = record_authn_event(q);
    if (st == AUTHN_RESPOND) {
        if (!logged) {
            if (q->aout.event == AUTHN_EV_LOGIN) {
                return fail_page(q, 503, "Sign-in unavailable",
                                 "Gatehouse cannot record decisions right now.",
                                 "decision log queue full");
            }
            request_error(r, 503, "decision log unavailable");
            return ACCESS_RESPOND;
        }
        return send_authn_resp(q);
    }
    if (st != AUTHN_OK || q->reserved) {
        /* Fail closed: a reserved endpoint always answers itself. */
        request_error(r, 500, "unexpected sign-in state");
        return ACCESS_RESPOND;
    }
    ident_from_authn(q);
    build_input(q, q->id.authenticated ? q->aout.id.claims_json : NULL);
    return decide(q);
}

static void got_idp(struct gate_req *q, const struct fetch_resp *resp)
{
    struct str body = resp->failed ? STR_NULL : (struct str){ resp->body, resp->body_len };

    if (resp->failed) {
        log_emit(LOG_WARN, "authn", q->r->id, NULL, "identity provider call failed: %s",
                 resp->error);
    }
    enum authn_step st = authn_resume(q->an, &q->areq, q->r->arena, &q->aout,
                                      resp->failed ? 0 : (int)resp->status, body);
    finish(q, authn_step_done(q, st));
}

/* Performs the identity provider call authn asked for; its answer goes back
 * to authn_resume on this loop. One that cannot start is a failed call. */
static enum access_step idp_fetch(struct gate_req *q)
{
    const struct authn_fetch *f = &q->aout.fetch;
    char err[256];

    if (fetch_begin(q, f->method, f->url, f->headers, f->body, f->body ? f->body_len : 0,
                    IDP_FETCH_TIMEOUT_MS, got_idp, err)) {
        return ACCESS_PENDING;
    }
    log_emit(LOG_WARN, "authn", q->r->id, NULL, "identity provider call not started: %s", err);
    enum authn_step st = authn_resume(q->an, &q->areq, q->r->arena, &q->aout, 0, STR_NULL);
    return authn_step_done(q, st);
}

/* ---- device identity: one more identity source (client certificates) ---- */

/* The listener's current client CA + CRL store (after a reload: the new one). */
static X509_STORE *device_store_get(void *arg, void **hold)
{
    SSL_CTX *ctx = tls_listener_ctx((size_t)(uintptr_t)arg);
    *hold = ctx;
    return ctx ? SSL_CTX_get_cert_store(ctx) : NULL;
}

static void device_store_put(void *hold)
{
    SSL_CTX_free(hold);
}

/* The device behind the request's client certificate, checked on every request
 * (registry and CRL through device.c's per-worker cache). NULL without one. */
static struct device_identity *device_identify(struct request *r)
{
    const struct conn *c = r->conn;
    const struct listener_conf *lc = listener_of(r);
    if (!r->peer_cert || !lc) {
        return NULL;
    }
    struct device_identity *d = arena_alloc(r->arena, sizeof *d);
    if (!d) {
        return NULL;
    }
    struct device_verify v = { .store_get = device_store_get, .store_put = device_store_put,
                               .arg = (void *)(uintptr_t)c->ls->index,
                               .generation = tls_generation(), .listener = c->ls->index,
                               .depth = (int)lc->verify_depth,
                               .chain = c->s.ssl ? SSL_get_peer_cert_chain(c->s.ssl) : NULL };
    device_trust(r->peer_cert, &v, now_s(), d);
    if (!d->present) {
        log_emit(LOG_INFO, "device", r->id, NULL, "client certificate %.16s not accepted: %s",
                 d->fingerprint, d->why);
    }
    return d;
}

/* RFC 8705: base64url SHA-256 of the client certificate's DER (arena), or NULL. */
static const char *cert_x5t(struct request *r)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!r->peer_cert || X509_digest(r->peer_cert, EVP_sha256(), md, &n) != 1) {
        return NULL;
    }
    char *s = codec_b64url_encode(md, n);
    const char *out = s ? arena_strdup(r->arena, s) : NULL;
    free(s);
    return out;
}

/* For /.gatehouse/me: the device as JSON and as a line for people. */
static void device_for_me(struct gate_req *q)
{
    const struct device_identity *d = q->dev;
    struct authn_req *a = &q->areq;
    if (!d || !d->present) {
        a->device_text = "none";
        return;
    }
    json_t *o = json_pack("{s:b, s:b, s:s?, s:s?, s:s?, s:s, s:s, s:s, s:s}", "present", 1,
                          "trusted", d->trusted, "id", d->enrolled ? d->id : NULL, "name",
                          d->enrolled ? d->name : NULL, "owner", d->enrolled ? d->owner : NULL,
                          "fingerprint", d->fingerprint, "serial", d->serial, "subject",
                          d->subject, "issuer", d->issuer);
    char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    a->device_json = js ? arena_strdup(q->r->arena, js) : NULL;
    free(js);
    a->device_text = d->trusted ? arena_printf(q->r->arena, "%s (%s), trusted",
                                               d->name[0] ? d->name : d->id, d->id)
                                : arena_printf(q->r->arena, "%s, not trusted: %s", d->subject,
                                               d->why);
}

/* Host must name the TLS server name (SNI): a certificate verified in a
 * handshake for one virtual host is never used for another host's route. */
static bool host_misdirected(const struct request *r)
{
    if (!r->sni || !is_tls(r) || r->hostname.len == 0) {
        return false;
    }
    struct str h = host_only(r->hostname), sni = str_from(r->sni);
    if (sni.len && sni.p[sni.len - 1] == '.') {
        sni.len--;
    }
    return !str_ieq(h, sni);
}

static struct gate_req *gate_req_new(struct request *r, bool reserved)
{
    struct gate_req *q = arena_zalloc(r->arena, sizeof *q);

    if (!q) {
        return NULL;
    }
    q->r = r;
    q->g = conf_of(r);
    q->gr = r->route ? r->route->authn : NULL;
    q->an = q->g->an;
    q->reserved = reserved;
    q->start_us = mono_us_now();
    q->in.host = host_only(r->hostname);
    policy_result_init(&q->res, NULL);
    q->dev = device_identify(r); /* device identity */
    authn_req_fill(q);
    if (q->areq.authorization.len) {
        q->areq.client_cert_x5t = cert_x5t(r); /* RFC 8705 bound tokens */
    }
    if (reserved) {
        device_for_me(q);
    }
    return q;
}

static enum access_step gate_access(struct request *r)
{
    if (host_misdirected(r)) {
        request_error(r, 421, "the Host header names another host than the TLS server name");
        return ACCESS_RESPOND;
    }
    struct gate_req *q = gate_req_new(r, false);

    if (!q) {
        request_error(r, 431, "request too large");
        return ACCESS_RESPOND;
    }
    return authn_step_done(q, authn_check(q->an, &q->areq, r->arena, &q->aout));
}

/* ---- reserved endpoints: authn's, with the back-channel logout body read here ---- */

static void backchannel_body(struct request *r, struct str body, void *arg)
{
    struct gate_req *q = arg;
    /* Kept in the arena: authn may need the provider's keys first and resume later. */
    char *copy = arena_strndup(r->arena, body.p ? body.p : "", body.len);

    if (!copy) {
        request_error(r, 413, "back-channel logout body too large");
        return;
    }
    q->areq.body = (struct str){ copy, body.len };
    finish(q, authn_step_done(q, authn_check(q->an, &q->areq, r->arena, &q->aout)));
}

static enum access_step gate_reserved(struct request *r)
{
    if (host_misdirected(r)) {
        request_error(r, 421, "the Host header names another host than the TLS server name");
        return ACCESS_RESPOND;
    }
    struct gate_req *q = gate_req_new(r, true);

    if (!q) {
        request_error(r, 431, "request too large");
        return ACCESS_RESPOND;
    }
    if ((str_eq_cstr(r->path, "/.gatehouse/oidc/backchannel-logout") ||
         str_eq_cstr(r->path, "/.gatehouse/logout")) &&
        str_eq_cstr(r->method, "POST")) {
        q->pending = true;
        return request_read_body(r, BCL_BODY_MAX, backchannel_body, q);
    }
    /* The SAML ACS (HTTP-POST binding) is read the same way; authn checks it. */
    if (str_eq_cstr(r->path, "/.gatehouse/saml/acs") && str_eq_cstr(r->method, "POST")) {
        q->pending = true;
        return request_read_body(r, SAML_BODY_MAX, backchannel_body, q);
    }
    return authn_step_done(q, authn_check(q->an, &q->areq, r->arena, &q->aout));
}
