/* proxy/snapshot.c - one configuration snapshot: the proxy's keys (config.c)
 * and then, once they are sound, the access stage's sections (access/access_conf.c),
 * which the snapshot owns from then on. config.c knows nothing of the access
 * stage; this is the one place where the two are put together. */
#include "access/access.h"
#include "config.h"
#include "route.h"

static struct config *attach(struct config *c, struct conf_diag *d)
{
    size_t before = d->count;

    if (!c) {
        return NULL;
    }
    c->route_table = route_table_new(c->routes, c->nroutes);
    c->route_table_free = route_table_free;
    /* Sign-in and policy sections, once the proxy's own keys are sound. */
    c->authn = access_conf_load(c, d);
    c->authn_free = access_conf_free;
    if (d->count != before) {
        config_unref(c);
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
