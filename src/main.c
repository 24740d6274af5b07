/* main.c - argv and subcommands; each verb lives in its module. */
#include <stdio.h>
#include <string.h>

#include "authn/session.h"
#include "policy/policy.h"
#include "proxy/proxy.h"

static const char usage[] =
    "usage: gatehouse <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve   -c gatehouse.yaml     run the proxy\n"
    "  check   -c gatehouse.yaml     validate the configuration, exit 0 (valid) or 1\n"
    "  policy  test DIR|FILE         run policy test files (wiki.test.yaml beside wiki.yaml)\n"
    "  policy  explain -c CFG --route R --input req.json   every rule's result for an input\n"
    "  policy  diff -c CFG --new DIR [--since 7d]   who gains/loses access with new policies\n"
    "  audit   query -c CFG [--user U] [--route R] [--decision D] [--since 1h] [--json]\n"
    "  audit   verify -c CFG [--anchor SEQ:HASH|FILE] [--pubkey FILE]\n"
    "                                check the decision log: chain, head, signed checkpoints\n"
    "  audit   head -c CFG           print the signed head of the decision log (to pin)\n"
    "  sessions list|revoke -c CFG [--user U | --id ID]   stored sign-in sessions\n"
    "  --version                     print the version\n"
    "  --help                        print this help\n";

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
};

static const struct command commands[] = {
    { "serve", proxy_cmd_serve },
    { "check", proxy_cmd_check },
    { "policy", policy_cmd },
    { "sessions", authn_cmd_sessions },
    { "audit", audit_cmd },
};

int main(int argc, char **argv)
{
#ifdef GH_NEEDS_SSE42
    /* The HTTP parser was built with SSE4.2: say so rather than die of SIGILL. */
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("sse4.2")) {
        fputs("gatehouse: this build needs a CPU with SSE4.2; rebuild with "
              "meson configure -Dllhttp_sse42=disabled\n",
              stderr);
        return 2;
    }
#endif
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
