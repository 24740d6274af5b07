/* proxy/access/access_conf.c - the access stage's part of a configuration snapshot,
 * put together from the sections' owners: authn (identity_providers, session,
 * pages, upstream_identity) and policy (the route policies, opa, decision_log);
 * and what `gatehouse check` and `check --dump` need of it. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access_int.h"

/* The identity headers (upstream_identity.headers, authn's section). */
static void take_identity(struct access_conf *g)
{
    struct authn_settings st;
    authn_settings(g->an, &st);
    g->show_reason = st.show_deny_reason;
    g->hdr_user = xstrdup(st.identity_headers[AUTHN_HDR_USER]);
    g->hdr_email = xstrdup(st.identity_headers[AUTHN_HDR_EMAIL]);
    g->hdr_groups = xstrdup(st.identity_headers[AUTHN_HDR_GROUPS]);
    g->hdr_device = xstrdup(st.identity_headers[AUTHN_HDR_DEVICE]);
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

/* The routes' policies as the loader resolved them (route_conf.policy_kind),
 * index-aligned: compiled once, no lookup by name. */
static struct policy_conf *load_policies(const struct config *c, struct conf_diag *d)
{
    struct policy_route_spec *specs = xcalloc(c->nroutes ? c->nroutes : 1, sizeof *specs);
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_conf *rc = &c->routes[i];
        specs[i] = (struct policy_route_spec){
            .name = rc->name,
            .source = rc->policy_kind == ROUTE_POLICY_FILE     ? POLICY_SOURCE_FILE
                      : rc->policy_kind == ROUTE_POLICY_PUBLIC ? POLICY_SOURCE_PUBLIC
                                                               : POLICY_SOURCE_SIGNED_IN,
            .file = rc->policy_file,
            .at = rc->policy_at,
        };
    }
    struct policy_conf *pc =
        policy_conf_load(c->doc ? c->doc->root : NULL, c->file, specs, c->nroutes, d);
    free(specs);
    return pc;
}

static void read_routes(struct access_conf *g, struct config *c)
{
    g->routes = xcalloc(c->nroutes ? c->nroutes : 1, sizeof *g->routes);
    g->nroutes = c->nroutes;
    for (size_t i = 0; i < c->nroutes; i++) {
        struct route_conf *rc = &c->routes[i];
        struct access_route *gr = &g->routes[i];
        gr->policy = policy_conf_route(g->pc, i);
        gr->policy_file = rc->policy_file != NULL;
        /* Sign-in is needed unless the resolved policy is the built-in public
         * one (public: true with allow_any_authenticated is any signed-in user);
         * a policy file on a public: true route decides without sessions. */
        if (rc->policy_kind == ROUTE_POLICY_SIGNED_IN ||
            (rc->policy_kind == ROUTE_POLICY_FILE && !rc->public_)) {
            g->needs_sessions = true;
        }
        if (rc->nidps) {
            gr->idps = (const char *const *)rc->idps;
            gr->nidps = rc->nidps;
        }
        rc->policy = gr->policy;
        rc->authn = gr;
    }
}

/* The shared sign-in state of the running process (set by access_start): a
 * reloaded snapshot shares it. */
static struct {
    pthread_mutex_t mu;
    struct authn_shared *sh;
} Shared = { .mu = PTHREAD_MUTEX_INITIALIZER };

void access_conf_share_start(const struct access_conf *g)
{
    pthread_mutex_lock(&Shared.mu);
    Shared.sh = authn_shared_ref(g->an);
    pthread_mutex_unlock(&Shared.mu);
}

void access_conf_share_stop(void)
{
    pthread_mutex_lock(&Shared.mu);
    /* Session writes still queued reach the disk, even though config
     * snapshots still refer to the shared state (no request runs any more). */
    authn_shared_shutdown(Shared.sh);
    authn_shared_unref(Shared.sh);
    Shared.sh = NULL;
    pthread_mutex_unlock(&Shared.mu);
}

bool access_state_ready(void)
{
    pthread_mutex_lock(&Shared.mu);
    bool ok = authn_shared_ready(Shared.sh);
    pthread_mutex_unlock(&Shared.mu);
    return ok;
}

struct access_conf *access_conf_load(struct config *c, struct conf_diag *d)
{
    struct access_conf *g = xcalloc(1, sizeof *g);
    const struct conf_node *root = c->doc ? c->doc->root : NULL;
    const struct conf_node *idps = conf_get(root, "identity_providers");

    g->an = authn_new(root, c->file, c->state_sqlite, d);
    g->nidps = idps && idps->type == CONF_SEQ ? idps->n : 0;
    if (g->an) {
        take_identity(g);
    }
    g->pc = load_policies(c, d);
    if (g->pc) {
        g->opa = policy_conf_opa(g->pc);
        g->dl = policy_conf_log(g->pc);
    }
    read_routes(g, c);
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

void access_conf_free(struct access_conf *g)
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

static char *dir_of(const char *file)
{
    const char *slash = strrchr(file, '/');
    return slash ? xstrndup(file, (size_t)(slash - file)) : xstrdup(".");
}

void access_settings(const struct config *c, struct access_settings *out)
{
    const struct access_conf *g = c->authn;
    *out = (struct access_settings){ 0 };
    if (g) {
        *out = (struct access_settings){ g->hdr_user,    g->hdr_email, g->hdr_groups, g->hdr_device,
                                         g->show_reason, g->an,        g->opa,        g->dl };
    }
}

void access_check_files(const struct config *c, struct conf_diag *d)
{
    const struct access_conf *g = c->authn;
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
            /* access_start makes the state directory first. */
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

int access_make_state_dir(const struct config *c, struct err *err)
{
    if (!c->state_sqlite) {
        return 0;
    }
    char *dir = dir_of(c->state_sqlite);
    int rc = 0;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = err_set(err, ERR_IO, "cannot create the state directory %s: %s", dir, strerror(errno));
    }
    free(dir);
    return rc;
}
