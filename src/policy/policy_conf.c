/* policy/policy_conf.c - the policy module's share of a config snapshot: every
 * route's compiled policy plus the opa and decision_log sections, loaded and
 * cross-checked in one pass for `gatehouse check`, serve, reload and the CLI
 * verbs. The routes themselves are the proxy's section: the loader hands over
 * each route's resolved policy source, index-aligned, so nothing here reads
 * routes[] or looks a route up by name. */
#include <stdlib.h>
#include <string.h>

#include "decision_log_int.h"
#include "policy_int.h"

struct policy_conf {
    struct policy **routes; /* index-aligned with the loader's routes */
    size_t nroutes;
    struct opa_conf opa;
    struct decision_log_conf log;
    bool has_log;
};

size_t policy_opa_paths(const struct policy *p)
{
    return p ? p->nopa : 0;
}

void policy_conf_free(struct policy_conf *pc)
{
    if (!pc) {
        return;
    }
    for (size_t i = 0; i < pc->nroutes; i++) {
        policy_free(pc->routes[i]);
    }
    free(pc->routes);
    opa_conf_fini(&pc->opa);
    decision_log_conf_fini(&pc->log);
    free(pc);
}

static struct policy *route_policy(struct policy_conf *pc, const struct policy_route_spec *r,
                                   struct conf_diag *d)
{
    if (r->source == POLICY_SOURCE_PUBLIC || r->source == POLICY_SOURCE_SIGNED_IN) {
        return policy_new_builtin(r->source == POLICY_SOURCE_PUBLIC);
    }
    struct policy *p = r->file ? policy_load(r->file, d) : NULL;
    if (p && p->nopa > 0 && !pc->opa.url) {
        conf_error(d, r->at,
                   "route \"%s\": policy %s asks OPA (\"%s\") but \"opa.url\" is not "
                   "configured",
                   r->name, r->at && r->at->value ? r->at->value : r->file, p->opa_paths[0]);
    }
    return p;
}

struct policy_conf *policy_conf_load(const struct conf_node *root, const char *conf_file,
                                     const struct policy_route_spec *routes, size_t nroutes,
                                     struct conf_diag *d)
{
    size_t before = d->count;
    struct policy_conf *pc = xcalloc(1, sizeof *pc);
    (void)opa_conf_parse(root, d, &pc->opa);
    pc->has_log = conf_get(root, "decision_log") != NULL;
    if (decision_log_conf_parse(root, conf_file, d, &pc->log) && pc->log.ckpt_key) {
        /* Checkpointing configured: a key that cannot sign stops check and serve here,
         * with its position (audit verify reads only the public half, later). */
        struct dl_key key;
        struct err err = { 0 };
        if (dl_key_load(pc->log.ckpt_key, true, &key, &err) != 0) {
            const struct conf_node *cp = conf_get(conf_get(root, "decision_log"), "checkpoint");
            conf_error(d, conf_get(cp, "key"), "%s", err.msg);
        }
        dl_key_free(&key);
    }
    pc->routes = xcalloc(nroutes ? nroutes : 1, sizeof *pc->routes);
    for (size_t i = 0; i < nroutes; i++) {
        pc->routes[pc->nroutes++] = route_policy(pc, &routes[i], d);
    }
    if (d->count != before) {
        policy_conf_free(pc);
        return NULL;
    }
    return pc;
}

const struct policy *policy_conf_route(const struct policy_conf *pc, size_t i)
{
    return pc && i < pc->nroutes ? pc->routes[i] : NULL;
}

const struct opa_conf *policy_conf_opa(const struct policy_conf *pc)
{
    return &pc->opa;
}

const struct decision_log_conf *policy_conf_log(const struct policy_conf *pc)
{
    return pc->has_log ? &pc->log : NULL;
}
