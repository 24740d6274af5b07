/* Fuzz target for route matching (proxy/route.c): the Host header and the
 * request path both come from the client. Input: host bytes, a NUL, path
 * bytes. Invariants: the chosen route's prefix really matches the path on a
 * segment boundary ('/' or the ';' of parameters), its host fits the request host, and an exact-host route
 * is never passed over for a wildcard or host-less one that matched. Replays
 * corpus/route/ under gcc; libFuzzer target with -Dfuzzing=true. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "proxy/config.h"
#include "proxy/route.h"
#include "replay.h"

static const char yaml[] =
    "listen: [{address: 127.0.0.1:8080}]\n"
    "routes:\n"
    "  - {name: a, match: {host: a.test}, upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: a-api, match: {host: a.test, path_prefix: /api}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: a-v2, match: {host: a.test, path_prefix: /api/v2/}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: w, match: {host: '*.w.test'}, upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: w-deep, match: {host: '*.x.w.test', path_prefix: /d}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: e, match: {host: e.w.test, path_prefix: /only}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: v6, match: {host: '[::1]'}, upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: any-static, match: {path_prefix: /static}, upstream: {servers: [http://h:1]}, "
    "public: true}\n";

static struct config *cfg;

static bool ieq(struct str a, const char *b)
{
    return a.len == strlen(b) && strncasecmp(a.p, b, a.len) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *nul = memchr(p, '\0', size);
    struct str host, path, bare;
    const struct route_conf *r;
    size_t plen;

    if (!cfg) {
        struct conf_diag d = { 0 };
        cfg = config_parse("route.yaml", yaml, sizeof yaml - 1, &d);
        CHECK(cfg);
        conf_diag_fini(&d);
    }
    host = (struct str){ p, nul ? (size_t)(nul - p) : size };
    path = nul ? (struct str){ nul + 1, size - host.len - 1 } : STR("/");
    r = route_match_config(cfg, host, path);
    if (!r) {
        return 0;
    }
    plen = strlen(r->path_prefix);
    CHECK(path.len >= plen && memcmp(path.p, r->path_prefix, plen) == 0);
    CHECK(path.len == plen || r->path_prefix[plen - 1] == '/' || path.p[plen] == '/' ||
          path.p[plen] == ';' || path.p[plen] == '?' || path.p[plen] == '#');
    for (size_t i = 0; i < plen; i++) {
        CHECK(path.p[i] != '?' && path.p[i] != '#');
    }
    bare = route_host_strip(host);
    if (r->host && !r->host_wildcard) {
        CHECK(ieq(bare, r->host));
    } else if (r->host) {
        size_t hl = strlen(r->host);
        CHECK(bare.len > hl && strncasecmp(bare.p + bare.len - hl, r->host, hl) == 0);
    }
    /* a.test has a "/" route: any a.test request lands on an a.test route. */
    if (ieq(bare, "a.test") && path.len > 0 && path.p[0] == '/') {
        CHECK(r->host && strcmp(r->host, "a.test") == 0);
    }
    return 0;
}
