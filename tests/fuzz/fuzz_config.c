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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

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

#ifndef GH_LIBFUZZER
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (!f) {
        perror(path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput((const uint8_t *)buf, (size_t)(n > 0 ? n : 0));
    free(buf);
    return 0;
}

static int run_path(const char *path, size_t *count)
{
    struct stat st;
    DIR *dir;
    struct dirent *e;
    int rc = 0;

    if (stat(path, &st) != 0) {
        perror(path);
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        (*count)++;
        return run_file(path);
    }
    if (!(dir = opendir(path))) {
        perror(path);
        return 1;
    }
    while ((e = readdir(dir))) {
        char sub[4096];
        if (e->d_name[0] == '.') {
            continue;
        }
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        rc |= run_path(sub, count);
    }
    closedir(dir);
    return rc;
}

int main(int argc, char **argv)
{
    size_t count = 0;
    int rc = 0;

    for (int i = 1; i < argc; i++) {
        rc |= run_path(argv[i], &count);
    }
    printf("fuzz_config: %zu inputs replayed\n", count);
    return rc || count == 0;
}
#endif
