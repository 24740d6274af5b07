/* policy/cmd_policy.c - `gatehouse policy test|explain`: run the test cases kept
 * beside each policy (wiki.test.yaml next to wiki.yaml) and show, for one input,
 * every rule's result and the rule that decided. Offline tools: no proxy, no OPA
 * (answers to OPA conditions come from the case or the input file). */
#include <dirent.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "decision_log_int.h"
#include "policy_cli.h"

static const char policy_usage[] =
    "usage: gatehouse policy test DIR|FILE...\n"
    "       gatehouse policy explain (-c CFG --route R | --policy FILE) --input req.json\n"
    "       gatehouse policy explain -c CFG --request-id ID   (a logged decision, current policy)\n"
    "       gatehouse policy diff -c CFG --new DIR [--since 7d]\n";

static const char *const test_keys[] = { "policy", "cases", NULL };
static const char *const case_keys[] = { "name", "input", "expect", "rule", NULL };

struct tally {
    unsigned passed, failed;
};

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

static const char *decision_name(enum policy_decision d)
{
    return d == POLICY_ALLOW ? "allow" : "deny";
}

/* Runs one test file; counts cases (a file that cannot run counts as one failure). */
static void run_test_file(const char *test_file, struct tally *t)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(test_file, &d);
    struct policy *p = NULL;
    char *policy_file = NULL;
    struct arena *a = arena_new(0);

    printf("%s\n", test_file);
    if (!doc || d.count) {
        goto broken;
    }
    if (!conf_check_keys(&d, doc->root, "test file", test_keys)) {
        goto broken;
    }
    const char *pf = NULL;
    if (!conf_string(&d, doc->root, "policy", &pf)) {
        goto broken;
    }
    if (pf) {
        policy_file = conf_path_resolve(test_file, pf);
    } else {
        size_t n = strlen(test_file) - strlen(".test.yaml");
        policy_file = xasprintf("%.*s.yaml", (int)n, test_file);
    }
    p = policy_load(policy_file, &d);
    if (!p) {
        goto broken;
    }
    const struct conf_node *cases = conf_get(doc->root, "cases");
    if (!conf_seq(&d, cases, "\"cases\"")) {
        goto broken;
    }
    for (size_t i = 0; i < cases->n; i++) {
        const struct conf_node *c = cases->items[i];
        struct conf_diag cd = { 0 };
        struct policy_input in;
        struct cli_opa opa;
        const char *name = NULL, *expect = NULL, *rule = NULL;
        char label[160];
        snprintf(label, sizeof label, "case %zu", i + 1);
        if (!conf_check_keys(&cd, c, "case", case_keys) || !conf_string(&cd, c, "name", &name) ||
            !conf_string(&cd, c, "expect", &expect) || !conf_string(&cd, c, "rule", &rule)) {
            goto bad_case;
        }
        if (name) {
            snprintf(label, sizeof label, "%s", name);
        }
        if (!expect || (strcmp(expect, "allow") != 0 && strcmp(expect, "deny") != 0 &&
                        strcmp(expect, "login") != 0)) {
            conf_error(&cd, conf_get(c, "expect") ? conf_get(c, "expect") : c,
                       "\"expect\" must be allow, deny or login");
            goto bad_case;
        }
        /* A test file names a policy, not a route: no route options apply. */
        if (!policy_input_from_conf(conf_get(c, "input") ? conf_get(c, "input") : c, a, &cd, &in,
                                    &opa, NULL)) {
            goto bad_case;
        }
        struct policy_result r;
        policy_result_init(&r, NULL);
        if (policy_eval_cli(p, &in, &opa, &r) == POLICY_NEED_OPA) {
            printf("  FAIL %s\n       needs an OPA answer for \"%s\": add opa: {%s: true} to "
                   "the input\n",
                   label, r.opa_path, r.opa_path);
            t->failed++;
            conf_diag_fini(&cd);
            continue;
        }
        /* "login" is a deny that sends an anonymous caller to sign in; "deny" covers both. */
        const char *got = r.need_login ? "login" : decision_name(r.decision);
        bool ok = (strcmp(expect, got) == 0 ||
                   (strcmp(expect, "deny") == 0 && r.decision == POLICY_DENY)) &&
                  (!rule || strcmp(rule, r.rule) == 0);
        if (ok) {
            printf("  ok   %s\n", label);
            t->passed++;
        } else {
            printf("  FAIL %s (%s:%d)\n", label, test_file, c->line);
            printf("       expected: %s%s%s%s\n", expect, rule ? " by rule \"" : "",
                   rule ? rule : "", rule ? "\"" : "");
            printf("       got:      %s by rule \"%s\" (%s)\n", got, r.rule, r.reason);
            t->failed++;
        }
        conf_diag_fini(&cd);
        continue;
    bad_case:
        printf("  FAIL %s\n", label);
        for (size_t k = 0; k < cd.stored; k++) {
            printf("       %s\n", cd.msgs[k]);
        }
        t->failed++;
        conf_diag_fini(&cd);
    }
    goto out;
broken:
    for (size_t k = 0; k < d.stored; k++) {
        printf("  %s\n", d.msgs[k]);
    }
    printf("  FAIL %s cannot run\n", test_file);
    t->failed++;
out:
    policy_free(p);
    free(policy_file);
    conf_doc_free(doc);
    conf_diag_fini(&d);
    arena_free(a);
}

/* A policy is a map with "rules" (lang.c refuses anything else); a file that
 * does not parse as YAML is reported by its test run, not here. */
static bool looks_like_policy(const char *file)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(file, &d);
    bool yes = doc && doc->root && doc->root->type == CONF_MAP && conf_get(doc->root, "rules");
    conf_doc_free(doc);
    conf_diag_fini(&d);
    return yes;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_test_dir(const char *dir, struct tally *t)
{
    DIR *dp = opendir(dir);
    if (!dp) {
        printf("%s: cannot open directory\n", dir);
        t->failed++;
        return;
    }
    char **names = NULL;
    size_t n = 0, dlen = strlen(dir);
    struct dirent *e;
    while (dlen > 1 && dir[dlen - 1] == '/') {
        dlen--;
    }
    while ((e = readdir(dp))) {
        if (has_suffix(e->d_name, ".test.yaml")) {
            names = xrealloc(names, (n + 1) * sizeof *names);
            names[n++] = xasprintf("%.*s/%s", (int)dlen, dir, e->d_name);
        } else if (has_suffix(e->d_name, ".yaml")) {
            /* A policy without tests is allowed but worth a note; other YAML
             * (gatehouse.yaml, inputs) is not a policy and is skipped. */
            size_t l = strlen(e->d_name) - 5;
            char *tf = xasprintf("%.*s/%.*s.test.yaml", (int)dlen, dir, (int)l, e->d_name);
            char *pf = xasprintf("%.*s/%s", (int)dlen, dir, e->d_name);
            bool policy = looks_like_policy(pf);
            free(pf);
            struct stat st;
            if (policy && stat(tf, &st) != 0) {
                printf("%.*s/%s: note: no test file %s\n", (int)dlen, dir, e->d_name, tf);
            }
            free(tf);
        }
    }
    closedir(dp);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        run_test_file(names[i], t);
        free(names[i]);
    }
    free(names);
    if (n == 0) {
        printf("%s: no *.test.yaml files\n", dir);
    }
}

static int cmd_test(int argc, char **argv)
{
    struct tally t = { 0 };
    if (argc < 2) {
        fputs(policy_usage, stderr);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            printf("%s: not found\n", argv[i]);
            t.failed++;
        } else if (S_ISDIR(st.st_mode)) {
            run_test_dir(argv[i], &t);
        } else if (has_suffix(argv[i], ".test.yaml")) {
            run_test_file(argv[i], &t);
        } else {
            size_t l = strlen(argv[i]) - (has_suffix(argv[i], ".yaml") ? 5 : 0);
            char *tf = xasprintf("%.*s.test.yaml", (int)l, argv[i]);
            run_test_file(tf, &t);
            free(tf);
        }
    }
    printf("policy: %u passed, %u failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
}

/* Route name of the loaded configuration, or NULL with a message on stderr. One
 * lookup for one command: a scan is fine. */
static const struct policy_cli_route *find_route(const struct policy_cli_conf *cc,
                                                 const char *route)
{
    for (size_t i = 0; i < cc->nroutes; i++) {
        if (strcmp(cc->routes[i].name, route) == 0) {
            return &cc->routes[i];
        }
    }
    fprintf(stderr, "gatehouse: no route \"%s\" in %s\n", route, cc->file);
    return NULL;
}

static const char *rule_result_name(uint8_t v)
{
    switch (v) {
    case POLICY_RULE_MATCH:
        return "match";
    case POLICY_RULE_NO_MATCH:
        return "no match";
    case POLICY_RULE_UNKNOWN:
        return "unknown (needs OPA)";
    case POLICY_RULE_ERROR:
        return "error (a regex limit: fails closed)";
    default:
        return "not evaluated";
    }
}

static int cmd_explain(int argc, char **argv, const struct policy_cli_loader *ld)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },     { "route", required_argument, NULL, 'r' },
        { "policy", required_argument, NULL, 'p' },     { "input", required_argument, NULL, 'i' },
        { "request-id", required_argument, NULL, 'q' }, { NULL, 0, NULL, 0 }
    };
    const char *cfg = NULL, *route = NULL, *pfile = NULL, *input = NULL, *reqid = NULL;
    int ch, rc = 1;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:r:p:i:q:", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            cfg = optarg;
            break;
        case 'r':
            route = optarg;
            break;
        case 'p':
            pfile = optarg;
            break;
        case 'i':
            input = optarg;
            break;
        case 'q':
            reqid = optarg;
            break;
        default:
            fputs(policy_usage, stderr);
            return 2;
        }
    }
    struct dl_row row = { 0 };
    struct str *rec_groups = NULL;
    if (reqid) {
        if (!cfg || input) {
            fputs(policy_usage, stderr);
            return 2;
        }
        if (!policy_record_by_request(cfg, reqid, &row)) {
            return 1;
        }
        route = route ? route : row.rec.route;
    }
    if ((!input && !reqid) || (!pfile && (!cfg || !route))) {
        dl_row_fini(&row);
        fputs(policy_usage, stderr);
        return 2;
    }
    struct policy *own = NULL;
    struct policy_cli_conf cc = { 0 };
    bool loaded = false;
    const struct policy *p = NULL;
    const struct policy_cli_route *cr = NULL;
    if (pfile) {
        struct conf_diag d = { 0 };
        p = own = policy_load(pfile, &d);
        conf_diag_print(&d, stderr);
        conf_diag_fini(&d);
    } else if ((loaded = ld->load(cfg, &cc)) && (cr = find_route(&cc, route))) {
        /* The policy serve enforces for this route: resolved once by the loader. */
        p = cr->policy;
    }
    if (!p) {
        if (loaded) {
            ld->release(&cc);
        }
        dl_row_fini(&row);
        return 1;
    }
    struct conf_diag d = { 0 };
    struct arena *a = arena_new(0);
    struct conf_doc *doc = NULL;
    struct policy_input in;
    struct cli_opa opa = { 0 };
    if (reqid) {
        rec_groups = policy_input_from_record(&row.rec, &in);
        char b1[64], b2[128], b3[256], b4[16], b5[256], b6[1024];
        printf("request %s: %s by rule \"%s\" when logged (user %s, %s %s%s)\n",
               policy_printable(reqid, b1, sizeof b1),
               policy_printable(row.rec.decision, b2, sizeof b2),
               policy_printable(row.rec.rule, b3, sizeof b3),
               policy_printable(row.rec.user, b5, sizeof b5),
               policy_printable(row.rec.method, b4, sizeof b4),
               policy_printable(row.rec.host ? row.rec.host : "", b6, 512),
               policy_printable(row.rec.path, b6 + 512, 512));
    } else {
        doc = conf_doc_load(input, &d);
        struct cli_route_path rp = { 0 };
        if (cr) {
            rp = (struct cli_route_path){ cr->fold_case, cr->encoded_slashes_pass };
        }
        if (!doc || d.count ||
            !policy_input_from_conf(doc->root, a, &d, &in, &opa, pfile ? NULL : &rp)) {
            conf_diag_print(&d, stderr);
            goto out;
        }
    }
    if (route && !in.route.len) {
        in.route = str_from(route);
    }
    size_t n = policy_rule_count(p);
    uint8_t *trace = xcalloc(n ? n : 1, 1);
    struct policy_result r;
    policy_result_init(&r, trace);
    enum policy_step st = policy_eval_cli(p, &in, &opa, &r);
    printf("policy %s (mode %s)\n", policy_file(p),
           policy_mode(p) == POLICY_SHADOW ? "shadow" : "enforce");
    size_t w = 4;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(policy_rule_id(p, i));
        w = l > w ? l : w;
    }
    for (size_t i = 0; i < n; i++) {
        printf("  %-5s  %-*s  %s\n", policy_rule_effect(p, i), (int)w, policy_rule_id(p, i),
               rule_result_name(trace[i]));
    }
    if (st == POLICY_NEED_OPA) {
        printf("undecided: needs an OPA answer for \"%s\" (add \"opa\": {\"%s\": true} to the "
               "input)\n",
               r.opa_path, r.opa_path);
    } else {
        printf("decision: %s by rule \"%s\"%s\n", decision_name(r.decision), r.rule,
               r.shadow ? " (shadow mode: not enforced)" : "");
        printf("reason: %s\n", r.reason);
        if (r.shadow) {
            printf("enforced: %s\n", decision_name(r.effective));
        }
        rc = 0;
    }
    free(trace);
out:
    free(rec_groups);
    dl_row_fini(&row);
    conf_diag_fini(&d);
    conf_doc_free(doc);
    arena_free(a);
    policy_free(own);
    if (loaded) {
        ld->release(&cc);
    }
    return rc;
}

int policy_cmd(int argc, char **argv, const struct policy_cli_loader *ld)
{
    if (argc < 2) {
        fputs(policy_usage, stderr);
        return 2;
    }
    if (strcmp(argv[1], "test") == 0) {
        return cmd_test(argc - 1, argv + 1);
    }
    if (strcmp(argv[1], "explain") == 0) {
        return cmd_explain(argc - 1, argv + 1, ld);
    }
    if (strcmp(argv[1], "diff") == 0) {
        return policy_cmd_diff(argc - 1, argv + 1, ld);
    }
    fprintf(stderr, "gatehouse policy: unknown subcommand \"%s\"\n%s", argv[1], policy_usage);
    return 2;
}
