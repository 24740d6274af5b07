/* main.c - argv and subcommands; each verb lives in its module. */
#include <stdio.h>
#include <string.h>

#include "proxy/proxy.h"

static const char usage[] =
    "usage: gatehouse <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve   -c gatehouse.yaml     run the proxy\n"
    "  check   -c gatehouse.yaml     validate the configuration, exit 0 (valid) or 1\n"
    "  --version                     print the version\n"
    "  --help                        print this help\n";

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
};

static const struct command commands[] = {
    { "serve", proxy_cmd_serve },
    { "check", proxy_cmd_check },
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("gatehouse %s\n", GATEHOUSE_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            return commands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "gatehouse: unknown command \"%s\"\n\n%s", argv[1], usage);
    return 2;
}
