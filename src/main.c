/* main.c - argv and subcommands; each verb lives in its module. Help and the
 * "-c is missing" check are answered here, the same way for every command:
 * `gatehouse CMD [SUB] --help` prints that command's usage on stdout and exits 0
 * before the module sees its arguments. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "authn/device.h"
#include "authn/session.h"
#include "policy/policy.h"
#include "proxy/proxy.h"

static const char exit_codes[] =
    "exit status: 0 ok, 1 failure (or the check, test or verification failed),\n"
    "             2 usage error (unknown command or option, missing argument)\n";

static const char usage[] =
    "usage: gatehouse <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve   -c FILE [--log-level debug|info|warn|error]   run the proxy\n"
    "  check   -c FILE [--dump]       validate the configuration and every file it names;\n"
    "                                --dump prints the effective configuration\n"
    "  policy  test DIR|FILE...      run policy test files (wiki.test.yaml beside wiki.yaml)\n"
    "  policy  explain (-c FILE --route R | --policy FILE) --input req.json\n"
    "  policy  explain -c FILE --request-id ID   replay a logged decision with today's policy\n"
    "  policy  diff -c FILE --new DIR [--since 7d]   who gains/loses access with new policies\n"
    "  audit   query -c FILE [--user U] [--route R] [--decision D] [--rule ID] [--idp ID]\n"
    "                [--path PREFIX] [--ip CIDR] [--kind K] [--since 1h|TIME] [--until TIME]\n"
    "                [--limit N] [--format text|json|csv] [--json]\n"
    "  audit   verify -c FILE [--anchor SEQ:HASH|FILE] [--pubkey FILE]\n"
    "                                check the decision log: chain, head, signed checkpoints\n"
    "  audit   head -c FILE           print the signed head of the decision log (to pin)\n"
    "  audit   retain -c FILE         delete decision records older than the retention period\n"
    "  sessions list -c FILE [--user U] [--json]       stored sign-in sessions\n"
    "  sessions revoke -c FILE (--user U | --id ID)    end sessions now\n"
    "  devices enroll -c FILE --cert dev.pem --owner EMAIL [--name N]   enrol a device\n"
    "  devices list -c FILE [--owner EMAIL] [--json]   enrolled devices\n"
    "  devices show -c FILE ID         one device\n"
    "  devices revoke -c FILE ID [--reason TEXT]   stop trusting a device now\n"
    "  db migrate -c FILE                              create/upgrade the PostgreSQL schema\n"
    "\n"
    "options:\n"
    "  -c, --config FILE             the configuration (gatehouse.yaml)\n"
    "  -h, --help                    print help (also: gatehouse COMMAND [SUB] --help)\n"
    "  --version                     print the version\n"
    "\n";

static const char serve_help[] =
    "usage: gatehouse serve -c FILE [--log-level debug|info|warn|error]\n"
    "\n"
    "Runs the proxy. SIGHUP reloads the configuration, SIGTERM drains and stops.\n"
    "  -c, --config FILE    the configuration\n"
    "  --log-level LEVEL    overrides log_level from the configuration\n";

static const char check_help[] =
    "usage: gatehouse check -c FILE [--dump]\n"
    "\n"
    "Loads the configuration the way serve does (templates, keys, certificates,\n"
    "CA and CRL files, policies, secret files), short of binding sockets, and\n"
    "prints every problem as file:line:col. Nothing is created or written.\n"
    "  -c, --config FILE    the configuration\n"
    "  -T, --dump           print the effective configuration (defaults filled in,\n"
    "                       the policy of each route, secrets redacted) as YAML\n";

static const char policy_help[] =
    "usage: gatehouse policy test DIR|FILE...\n"
    "       gatehouse policy explain (-c FILE --route R | --policy FILE) --input req.json\n"
    "       gatehouse policy explain -c FILE --request-id ID\n"
    "       gatehouse policy diff -c FILE --new DIR [--since 7d]\n";

static const char policy_test_help[] =
    "usage: gatehouse policy test DIR|FILE...\n"
    "\n"
    "Runs the test cases kept beside each policy (wiki.test.yaml next to wiki.yaml).\n"
    "A DIR runs every *.test.yaml in it; files that are not policies are skipped.\n";

static const char policy_explain_help[] =
    "usage: gatehouse policy explain (-c FILE --route R | --policy FILE) --input req.json\n"
    "       gatehouse policy explain -c FILE --request-id ID [--route R]\n"
    "\n"
    "Shows every rule's result for one input and the rule that decides.\n"
    "  -c, --config FILE     the configuration (for --route and --request-id)\n"
    "  --route R             the route whose policy to use\n"
    "  --policy FILE         a policy file instead of a route\n"
    "  --input FILE          the request, as YAML or JSON\n"
    "  --request-id ID       a logged decision, replayed against the current policy\n";

static const char policy_diff_help[] =
    "usage: gatehouse policy diff -c FILE --new DIR [--since 7d]\n"
    "\n"
    "Replays logged decisions against the policies in DIR: who gains or loses access.\n"
    "  -c, --config FILE     the configuration (routes and decision log)\n"
    "  --new DIR             the changed policies (same file names as the routes use)\n"
    "  --since 7d|TIME       how far back to replay (default 7d)\n";

static const char audit_help[] =
    "usage: gatehouse audit query -c FILE [--user U] [--route R] [--decision D] [--rule ID]\n"
    "                             [--idp ID] [--path PREFIX] [--ip CIDR] [--kind K]\n"
    "                             [--since 1h|TIME] [--until TIME] [--limit N]\n"
    "                             [--format text|json|csv] [--json]\n"
    "       gatehouse audit verify -c FILE [--anchor SEQ:HASH|FILE] [--pubkey FILE]\n"
    "       gatehouse audit head -c FILE\n"
    "       gatehouse audit retain -c FILE\n";

static const char audit_query_help[] =
    "usage: gatehouse audit query -c FILE [--user U] [--route R] [--decision D] [--rule ID]\n"
    "                             [--idp ID] [--path PREFIX] [--ip CIDR] [--kind K]\n"
    "                             [--since 1h|TIME] [--until TIME] [--limit N]\n"
    "                             [--format text|json|csv] [--json]\n"
    "\n"
    "Prints decision records, oldest first.\n"
    "  -c, --config FILE     the configuration (decision_log section)\n"
    "  --user U              user id (bare, or <idp>:<sub>) or email (any case)\n"
    "  --route R             route name\n"
    "  --decision D          allow, deny, login, error or admin\n"
    "  --rule ID             the rule that decided\n"
    "  --idp ID              the identity provider\n"
    "  --path PREFIX         the normalised path, by segment (/admin, not /administrator);\n"
    "                        a trailing * is a plain prefix\n"
    "  --ip CIDR             client address in this IPv4 or IPv6 network (or this address)\n"
    "  --kind K              policy, signin or admin\n"
    "  --since 1h|TIME       from (a duration before now, or RFC 3339)\n"
    "  --until TIME          up to (a duration before now, or RFC 3339)\n"
    "  --limit N             at most N records (the newest)\n"
    "  --format F            text (default), json (one object per line, with its hash),\n"
    "                        or csv (RFC 4180; formula-like cells neutralised)\n"
    "  --json                the same as --format json\n";

static const char audit_verify_help[] =
    "usage: gatehouse audit verify -c FILE [--anchor SEQ:HASH|FILE] [--pubkey FILE]\n"
    "\n"
    "Walks the decision log's hash chain (SQLite and the JSON-lines file), the head\n"
    "file, the signed checkpoints and retention records, and names the first edited,\n"
    "removed or reordered record, or the missing tail. Exit 1 if it fails.\n"
    "  -c, --config FILE     the configuration (decision_log section)\n"
    "  --anchor SEQ:HASH|FILE  a head pinned earlier (audit head's output, or seq:hash):\n"
    "                        the log must contain it\n"
    "  --pubkey FILE         the checkpoint public key (default: derived from\n"
    "                        decision_log.checkpoint.key)\n";

static const char audit_head_help[] =
    "usage: gatehouse audit head -c FILE\n"
    "\n"
    "Prints the current signed head of the decision log as JSON ({seq, hash, time,\n"
    "key_id, sig}), to keep somewhere the host cannot rewrite.\n";

static const char audit_retain_help[] =
    "usage: gatehouse audit retain -c FILE\n"
    "\n"
    "Deletes decision records older than decision_log.retention (the server also\n"
    "does this hourly).\n";

static const char sessions_help[] =
    "usage: gatehouse sessions list   -c FILE [--user U] [--json]\n"
    "       gatehouse sessions revoke -c FILE (--user U | --id ID)\n";

static const char sessions_list_help[] =
    "usage: gatehouse sessions list -c FILE [--user U] [--json]\n"
    "\n"
    "Lists stored sign-in sessions with their idle and absolute expiry.\n"
    "  -c, --config FILE     the configuration (state.sqlite)\n"
    "  --user U              user id (bare, or <idp>:<sub>), email (any case), or\n"
    "                        stored key (issuer#subject)\n"
    "  --json                one JSON object per line\n";

static const char sessions_revoke_help[] =
    "usage: gatehouse sessions revoke -c FILE (--user U | --id ID)\n"
    "\n"
    "Ends sessions now; the running server notices within a second.\n"
    "  -c, --config FILE     the configuration (state.sqlite)\n"
    "  --user U              every session of this user (user id, email or issuer#subject);\n"
    "                        recorded in the decision log as an administrative act\n"
    "  --id ID               one session, as printed by list (8+ hex characters);\n"
    "                        exit 1 with \"no such session\" if none matches\n";

static const char devices_help[] =
    "usage: gatehouse devices enroll -c FILE --cert dev.pem --owner EMAIL [--name NAME]\n"
    "       gatehouse devices enroll -c FILE --csr dev.csr --out dev.pem --owner EMAIL\n"
    "       gatehouse devices list   -c FILE [--owner EMAIL] [--json]\n"
    "       gatehouse devices show   -c FILE ID [--json]\n"
    "       gatehouse devices revoke -c FILE ID [--reason TEXT]\n";

static const char devices_enroll_help[] =
    "usage: gatehouse devices enroll -c FILE --cert dev.pem --owner EMAIL [--name NAME]\n"
    "       gatehouse devices enroll -c FILE --csr dev.csr --out dev.pem --owner EMAIL\n"
    "                                [--name NAME] [--days N]\n"
    "\n"
    "Enrols the device whose client certificate is dev.pem (PEM), issued by one of the\n"
    "listeners' client_ca; prints its id. Recorded in the decision log. With --csr,\n"
    "first signs the device's certificate request with devices.enroll_ca (a client\n"
    "certificate with the request's subject and subjectAltNames, valid --days, 365 by\n"
    "default) and writes it to --out (a new file).\n"
    "  -c, --config FILE     the configuration (state.sqlite, listeners' client_ca)\n"
    "  --cert FILE           the device's certificate\n"
    "  --owner EMAIL         the user the device belongs to (device: {owner_is_user: true})\n"
    "  --name NAME           a name for people (\"alice-laptop\")\n"
    "  --csr FILE            a PEM certificate request to sign (needs --out)\n"
    "  --out FILE            where the signed certificate goes\n"
    "  --days N              validity of the signed certificate (1-3650, default 365)\n";

static const char devices_list_help[] =
    "usage: gatehouse devices list -c FILE [--owner EMAIL] [--json]\n"
    "\n"
    "Lists enrolled devices: id, name, owner, active or revoked, enrolment, last seen.\n"
    "  --owner EMAIL         only this owner's devices\n"
    "  --json                one JSON object per line\n";

static const char devices_show_help[] =
    "usage: gatehouse devices show -c FILE ID [--json]\n"
    "\n"
    "Shows one device by id or certificate fingerprint (8+ hex characters).\n";

static const char devices_revoke_help[] =
    "usage: gatehouse devices revoke -c FILE ID [--reason TEXT]\n"
    "\n"
    "Stops trusting a device now: every worker of the running server sees it within a\n"
    "second, on open connections and resumed TLS sessions too. Recorded in the decision\n"
    "log with the reason.\n";
static const char db_help[] = "usage: gatehouse db migrate -c FILE\n";

static const char db_migrate_help[] =
    "usage: gatehouse db migrate -c FILE\n"
    "\n"
    "Creates or upgrades the schema of the shared PostgreSQL database\n"
    "(state.postgres) to what this Gatehouse needs, in one transaction; nodes\n"
    "starting at the same time wait for each other. serve does this at start\n"
    "unless state.migrate is false.\n"
    "  -c, --config FILE     the configuration (state.postgres)\n";

/* How a command needs -c: not at all, always, or unless --policy is given. */
enum needs_conf { CONF_NO = 0, CONF_YES, CONF_UNLESS_POLICY };

struct help {
    const char *cmd, *sub; /* sub NULL: the command itself */
    const char *text;
    enum needs_conf conf;
};

static const struct help helps[] = {
    { "serve", NULL, serve_help, CONF_YES },
    { "check", NULL, check_help, CONF_YES }, /* says itself what is missing */
    { "policy", NULL, policy_help, CONF_NO },
    { "policy", "test", policy_test_help, CONF_NO },
    { "policy", "explain", policy_explain_help, CONF_UNLESS_POLICY },
    { "policy", "diff", policy_diff_help, CONF_YES },
    { "audit", NULL, audit_help, CONF_NO },
    { "audit", "query", audit_query_help, CONF_YES },
    { "audit", "verify", audit_verify_help, CONF_YES },
    { "audit", "head", audit_head_help, CONF_YES },
    { "audit", "retain", audit_retain_help, CONF_YES },
    { "sessions", NULL, sessions_help, CONF_NO },
    { "sessions", "list", sessions_list_help, CONF_YES },
    { "sessions", "revoke", sessions_revoke_help, CONF_YES },
    { "devices", NULL, devices_help, CONF_NO },
    { "devices", "enroll", devices_enroll_help, CONF_YES },
    { "devices", "list", devices_list_help, CONF_YES },
    { "devices", "show", devices_show_help, CONF_YES },
    { "devices", "revoke", devices_revoke_help, CONF_YES },
    { "db", NULL, db_help, CONF_NO },
    { "db", "migrate", db_migrate_help, CONF_YES },
};

/* A command runs on its own, or is handed what it needs from the modules above
 * it: the configuration loader serve and check use (policy), or the decision
 * log's recorder of administrative acts (sessions, devices). */
struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    int (*run_loader)(int argc, char **argv, const struct policy_cli_loader *ld);
    int (*run_admin)(int argc, char **argv, admin_log_fn *log_admin);
};

static const struct command commands[] = {
    { "serve", proxy_cmd_serve, NULL, NULL },     { "check", proxy_cmd_check, NULL, NULL },
    { "policy", NULL, policy_cmd, NULL },         { "sessions", NULL, NULL, authn_cmd_sessions },
    { "devices", NULL, NULL, authn_cmd_devices }, { "audit", audit_cmd, NULL, NULL },
    { "db", authn_cmd_db, NULL, NULL },
};

static int run_command(const struct command *c, int argc, char **argv)
{
    if (c->run_loader) {
        return c->run_loader(argc, argv, &proxy_policy_cli_loader);
    }
    if (c->run_admin) {
        return c->run_admin(argc, argv, policy_admin_log);
    }
    return c->run(argc, argv);
}

static const struct help *find_help(const char *cmd, const char *sub)
{
    for (size_t i = 0; i < sizeof helps / sizeof helps[0]; i++) {
        if (strcmp(helps[i].cmd, cmd) == 0 &&
            (sub ? helps[i].sub && strcmp(helps[i].sub, sub) == 0 : helps[i].sub == NULL)) {
            return &helps[i];
        }
    }
    return NULL;
}

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* -c FILE, -cFILE, --config FILE or --config=FILE among the arguments. */
static bool has_option(int argc, char **argv, const char *shrt, const char *lng)
{
    size_t ll = strlen(lng);
    for (int i = 0; i < argc && strcmp(argv[i], "--") != 0; i++) {
        const char *a = argv[i];
        if ((shrt && strncmp(a, shrt, 2) == 0) || strcmp(a, lng) == 0 ||
            (strncmp(a, lng, ll) == 0 && a[ll] == '=')) {
            return true;
        }
    }
    return false;
}

/* Answers --help and a missing -c for argv[1] (a known command). Returns -1 to
 * let the command run, or the exit status. */
static int common_options(int argc, char **argv)
{
    const char *cmd = argv[1];
    const struct help *h = find_help(cmd, NULL), *hs = NULL;
    int first = 2;

    if (h == NULL) {
        return -1; /* a command without a help entry answers for itself */
    }
    if (argc > 2 && argv[2][0] != '-') {
        hs = find_help(cmd, argv[2]);
        if (hs) {
            h = hs;
            first = 3;
        }
    }
    for (int i = first; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (is_help(argv[i])) {
            fputs(h->text, stdout);
            fputc('\n', stdout);
            fputs(exit_codes, stdout);
            return 0;
        }
    }
    if (h->conf == CONF_NO || strcmp(cmd, "check") == 0) {
        return -1; /* e.g. no subcommand given: the module names what is missing */
    }
    bool need = h->conf == CONF_YES || (h->conf == CONF_UNLESS_POLICY &&
                                        !has_option(argc - first, argv + first, NULL, "--policy"));
    if (need && !has_option(argc - first, argv + first, "-c", "--config")) {
        fprintf(stderr, "gatehouse %s%s%s: missing -c FILE%s\n\n%s", cmd, h->sub ? " " : "",
                h->sub ? h->sub : "",
                h->conf == CONF_UNLESS_POLICY ? " (or --policy FILE)" : " (the configuration)",
                h->text);
        return 2;
    }
    return -1;
}

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
        fputs(exit_codes, stderr);
        return 2;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("gatehouse %s\n", GATEHOUSE_VERSION);
        return 0;
    }
    if (is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
        fputs(usage, stdout);
        fputs(exit_codes, stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            int rc = common_options(argc, argv);
            return rc >= 0 ? rc : run_command(&commands[i], argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "gatehouse: unknown command \"%s\"\n\n%s", argv[1], usage);
    return 2;
}
