/* proxy/check.c - `gatehouse check -c FILE`: loads the configuration the way
 * `serve` would (both phases: keys, then files and cross-references), prints
 * every problem in compiler format and exits 0 (valid), 1 (invalid) or 2
 * (wrong arguments). Nothing is bound, opened for writing or started. */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "access/access.h"
#include "proxy.h"

static const char check_usage[] =
    "usage: gatehouse check -c FILE [--dump]\n"
    "\n"
    "Validates the configuration FILE and the files it names; prints\n"
    "file:line:col errors. --dump prints the effective configuration (defaults\n"
    "filled in, each route's policy, secrets redacted) as YAML on stdout.\n"
    "Exit status: 0 valid, 1 invalid, 2 usage error.\n";

int proxy_cmd_check(int argc, char **argv)
{
    const char *file = NULL;
    struct conf_diag d = { 0 };
    struct config *c;
    bool dump = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(check_usage, stdout);
            return 0;
        }
        if (strcmp(a, "--dump") == 0 || strcmp(a, "-T") == 0) {
            dump = true;
            continue;
        }
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "gatehouse check: option %s needs a FILE\n\n%s", a, check_usage);
                return 2;
            }
            v = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            v = a + 9;
        } else {
            fprintf(stderr, "gatehouse check: unexpected argument \"%s\"\n\n%s", a, check_usage);
            return 2;
        }
        if (file) {
            fprintf(stderr, "gatehouse check: only one -c FILE is allowed\n\n%s", check_usage);
            return 2;
        }
        file = v;
    }
    if (!file || !file[0]) {
        fprintf(stderr, "gatehouse check: missing -c FILE\n\n%s", check_usage);
        return 2;
    }
    c = config_load(file, &d);
    if (c) {
        /* What serve opens at start (access_start), read-only. */
        access_check_files(c, &d);
        if (d.count) {
            config_unref(c);
            c = NULL;
        }
    }
    if (!c) {
        conf_diag_print(&d, stderr);
        conf_diag_fini(&d);
        return 1;
    }
    conf_diag_fini(&d);
    if (dump) {
        proxy_dump_config(c, stdout);
    } else {
        printf("%s: ok\n", file);
    }
    config_unref(c);
    return fflush(stdout) == 0 ? 0 : 1;
}
