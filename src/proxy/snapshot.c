/* proxy/snapshot.c - one configuration snapshot: the proxy's keys (config.c
 * and its section readers) and then, once they are sound, the route table and
 * the access stage's sections (access/access_conf.c). This is the one place
 * where the parts are put together and taken apart: config.c knows nothing of
 * the access stage, and the access stage never frees the proxy's part. */
#include <stdio.h>
#include <stdlib.h>

#include "access/access.h"
#include "config.h"
#include "policy/policy.h"
#include "proxy.h"
#include "route.h"

static void snapshot_free(struct config *c)
{
    /* The table borrows route strings and the access part borrows routes:
     * both go before the proxy's part. */
    route_table_free(c->route_table);
    access_conf_free(c->authn);
    config_proxy_free(c);
}

static struct config *attach(struct config *c, struct conf_diag *d)
{
    size_t before = d->count;

    if (!c) {
        return NULL;
    }
    c->route_table = route_table_new(c->routes, c->nroutes);
    /* Sign-in and policy sections, once the proxy's own keys are sound. */
    c->authn = access_conf_load(c, d);
    if (d->count != before) {
        snapshot_free(c);
        return NULL;
    }
    return c;
}

struct config *config_load(const char *path, struct conf_diag *d)
{
    return attach(config_load_proxy(path, d), d);
}

struct config *config_parse(const char *name, const char *text, size_t len, struct conf_diag *d)
{
    return attach(config_parse_proxy(name, text, len, d), d);
}

struct config *config_ref(struct config *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void config_unref(struct config *c)
{
    if (!c) {
        return;
    }
    /* acq_rel: the last owner must see every other owner's reads finished. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        snapshot_free(c);
    }
}

/* ---- the snapshot as the policy commands see it (policy explain, policy diff) ---- */

static bool policy_cli_load(const char *file, struct policy_cli_conf *out)
{
    struct conf_diag d = { 0 };
    struct config *c = config_load(file, &d);

    conf_diag_print(&d, stderr);
    conf_diag_fini(&d);
    *out = (struct policy_cli_conf){ 0 };
    if (!c) {
        return false;
    }
    struct policy_cli_route *rs = xcalloc(c->nroutes ? c->nroutes : 1, sizeof *rs);
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_conf *rc = &c->routes[i];
        rs[i] = (struct policy_cli_route){
            .name = rc->name,
            .policy = rc->policy,
            .policy_written = rc->policy_at ? rc->policy_at->value : NULL,
            .fold_case = rc->path_case_insensitive,
            .encoded_slashes_pass = rc->encoded_slashes_pass,
        };
    }
    *out = (struct policy_cli_conf){ .file = c->file,
                                     .root = c->doc ? c->doc->root : NULL,
                                     .routes = rs,
                                     .nroutes = c->nroutes,
                                     .snapshot = c };
    return true;
}

static void policy_cli_release(struct policy_cli_conf *cc)
{
    free((void *)cc->routes);
    config_unref(cc->snapshot);
    *cc = (struct policy_cli_conf){ 0 };
}

const struct policy_cli_loader proxy_policy_cli_loader = { policy_cli_load, policy_cli_release };
