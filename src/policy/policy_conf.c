/* policy/policy_conf.c - the policy module's share of a config snapshot: every
 * route's compiled policy plus the opa and decision_log sections, loaded and
 * cross-checked in one pass for `gatehouse check`, serve and reload. */
#include <stdlib.h>
#include <string.h>

#include "decision_log_int.h"
#include "policy_int.h"

struct route_policy {
    char *route;
    struct policy *p;
};

struct policy_conf {
    struct route_policy *routes;
    size_t nroutes;
    /* Open-addressing index of routes by name (indices + 1, 0 = empty): a config
     * with tens of thousands of routes looks each one up once at load. */
    uint32_t *slots;
    size_t nslots;
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
        free(pc->routes[i].route);
        policy_free(pc->routes[i].p);
    }
    free(pc->routes);
    free(pc->slots);
    opa_conf_fini(&pc->opa);
    decision_log_conf_fini(&pc->log);
    free(pc);
}

static size_t name_slot(const struct policy_conf *pc, const char *name)
{
    size_t mask = pc->nslots - 1;
    size_t i = policy_hash(name, strlen(name), false) & mask;
    while (pc->slots[i] && strcmp(pc->routes[pc->slots[i] - 1].route, name) != 0) {
        i = (i + 1) & mask;
    }
    return i;
}

/* Duplicate names are the proxy's to report; the first one wins, as before. */
static void index_build(struct policy_conf *pc)
{
    pc->nslots = 16;
    while (pc->nslots < 2 * pc->nroutes) {
        pc->nslots *= 2;
    }
    pc->slots = xcalloc(pc->nslots, sizeof *pc->slots);
    for (size_t k = 0; k < pc->nroutes; k++) {
        size_t i = name_slot(pc, pc->routes[k].route);
        if (!pc->slots[i]) {
            pc->slots[i] = (uint32_t)(k + 1);
        }
    }
}

struct policy_conf *policy_conf_load(const struct conf_node *root, const char *conf_file,
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
    const struct conf_node *routes = conf_get(root, "routes");
    if (routes && routes->type == CONF_SEQ) {
        pc->routes = xcalloc(routes->n ? routes->n : 1, sizeof *pc->routes);
    }
    for (size_t i = 0; routes && routes->type == CONF_SEQ && i < routes->n; i++) {
        const struct conf_node *r = routes->items[i];
        const struct conf_node *name = conf_get(r, "name");
        const struct conf_node *pol = conf_get(r, "policy");
        bool pub = false, any = false;
        /* The proxy reports malformed routes; only what is ours is checked here. */
        if (!name || name->type != CONF_SCALAR) {
            continue;
        }
        const struct conf_node *pubn = conf_get(r, "public");
        const struct conf_node *anyn = conf_get(r, "allow_any_authenticated");
        if (pubn && pubn->type == CONF_SCALAR) {
            (void)conf_parse_bool(pubn->value, &pub);
        }
        if (anyn && anyn->type == CONF_SCALAR) {
            (void)conf_parse_bool(anyn->value, &any);
        }
        struct policy *p = NULL;
        if (pol && pol->type == CONF_SCALAR && pol->len > 0) {
            char *path = conf_path_resolve(conf_file, pol->value);
            p = policy_load(path, d);
            free(path);
            if (p && p->nopa > 0 && !pc->opa.url) {
                conf_error(d, pol, "route \"%s\": policy %s asks OPA (\"%s\") but \"opa.url\" is "
                                   "not configured", name->value, pol->value, p->opa_paths[0]);
            }
        } else if (!pol) {
            p = policy_new_builtin(pub && !any);
        }
        if (p) {
            pc->routes[pc->nroutes].route = xstrdup(name->value);
            pc->routes[pc->nroutes++].p = p;
        }
    }
    if (d->count != before) {
        policy_conf_free(pc);
        return NULL;
    }
    index_build(pc);
    return pc;
}

const struct policy *policy_conf_route(const struct policy_conf *pc, const char *route)
{
    if (!pc || !route || !pc->slots) {
        return NULL;
    }
    uint32_t k = pc->slots[name_slot(pc, route)];
    return k ? pc->routes[k - 1].p : NULL;
}

const struct opa_conf *policy_conf_opa(const struct policy_conf *pc)
{
    return &pc->opa;
}

const struct decision_log_conf *policy_conf_log(const struct policy_conf *pc)
{
    return pc->has_log ? &pc->log : NULL;
}
