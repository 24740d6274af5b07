/* Fuzz target for the configuration loader (proxy/config.c over core/conf.c):
 * any bytes as gatehouse.yaml. Invariants: a rejected file has at least one
 * message and every message names the file; an accepted file has listeners
 * and routes, every route has servers, and each exact-host or host-less route
 * is what route_match() returns for its own host and prefix. Built with
 * -Dfuzzing=true it is a libFuzzer target; otherwise main() replays files and
 * directories given as arguments (the 'fuzz' suite replays the corpus). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proxy/config.h"
#include "proxy/route.h"
#include "replay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf_diag d = { 0 };
    struct config *c = config_parse("fuzz.yaml", (const char *)data, size, &d);

    if (!c) {
        CHECK(d.count > 0);
        for (size_t i = 0; i < d.stored; i++) {
            CHECK(strncmp(d.msgs[i], "fuzz.yaml:", 10) == 0);
        }
        conf_diag_fini(&d);
        return 0;
    }
    CHECK(d.count == 0);
    CHECK(c->nlisteners > 0 && c->nroutes > 0 && c->route_table);
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_conf *r = &c->routes[i];
        CHECK(r->name && r->path_prefix && r->path_prefix[0] == '/');
        CHECK(r->upstream.nservers > 0 && r->index == i);
        for (size_t s = 0; s < r->upstream.nservers; s++) {
            CHECK(r->upstream.servers[s].port > 0 && r->upstream.servers[s].host[0]);
        }
        if (!r->host) {
            CHECK(route_match_config(c, STR(""), str_from(r->path_prefix)) == r);
        } else if (!r->host_wildcard) {
            CHECK(route_match_config(c, str_from(r->host), str_from(r->path_prefix)) == r);
        }
    }
    config_unref(c);
    conf_diag_fini(&d);
    return 0;
}
