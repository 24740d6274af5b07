/* bench/policy/bench_eval.c - microbenchmark of the policy evaluator: a realistic
 * 100-rule policy (policy-100.yaml) against a rotating set of inputs (allowed
 * late in the rule list, denied by a deny rule, denied by default). Prints the
 * median, p10 and p90 of the ns per decision over many timed runs.
 * Usage: bench_eval POLICY [runs] [decisions-per-run] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy/policy.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_eval POLICY [runs] [decisions-per-run]\n");
        return 2;
    }
    int runs = argc > 2 ? atoi(argv[2]) : 101;
    int per = argc > 3 ? atoi(argv[3]) : 20000;
    struct conf_diag d = { 0 };
    struct policy *p = policy_load(argv[1], &d);
    if (!p) {
        conf_diag_print(&d, stderr);
        return 1;
    }
    static const char *const apps[] = { "wiki", "jira",    "ci",  "grafana", "vault",
                                        "hr",   "payroll", "crm", "docs",    "git" };
    static const char *const teams[] = { "eng",   "sales",   "ops",    "finance", "hr",
                                         "legal", "support", "design", "data",    "security" };
    enum { NIN = 64 };
    struct policy_input in[NIN];
    static struct str groups[NIN][2];
    static struct policy_kv claims[NIN][2];
    static struct policy_kv headers[NIN][3];
    static char hosts[NIN][64], paths[NIN][96], emails[NIN][64];
    for (int i = 0; i < NIN; i++) {
        const char *app = apps[(i * 7) % 10];
        memset(&in[i], 0, sizeof in[i]);
        snprintf(hosts[i], sizeof hosts[i], "%s.example.com", app);
        switch (i % 4) {
        case 0: /* allowed by a late rule */
            snprintf(paths[i], sizeof paths[i], "/%s/projects/gatehouse-%d", app, i);
            break;
        case 1: /* hits a deny rule */
            snprintf(paths[i], sizeof paths[i], "/%s/admin/users", app);
            break;
        default: /* ordinary page */
            snprintf(paths[i], sizeof paths[i], "/%s/%s/page/%d", app, teams[i % 10], i);
        }
        snprintf(emails[i], sizeof emails[i], "user%d@example.com", i);
        groups[i][0] = str_from(teams[i % 10]);
        groups[i][1] = str_from(teams[(i + 3) % 10]);
        claims[i][0] = (struct policy_kv){ STR("amr"), i % 2 ? STR("mfa") : STR("pwd") };
        claims[i][1] = (struct policy_kv){ STR("department"), STR("R&D") };
        headers[i][0] = (struct policy_kv){ STR("User-Agent"), STR("Mozilla/5.0") };
        headers[i][1] = (struct policy_kv){ STR("Accept"), STR("text/html") };
        headers[i][2] = (struct policy_kv){ STR("X-Tenant"), STR("acme") };
        in[i].authenticated = true;
        in[i].user = str_from(emails[i]);
        in[i].email = str_from(emails[i]);
        in[i].groups = groups[i];
        in[i].ngroups = 2;
        in[i].claims = claims[i];
        in[i].nclaims = 2;
        in[i].headers = headers[i];
        in[i].nheaders = 3;
        in[i].method = i % 3 ? STR("GET") : STR("POST");
        in[i].host = str_from(hosts[i]);
        in[i].path = str_from(paths[i]);
        in[i].device.present = i % 2 == 0;
        in[i].device.trusted = i % 4 == 0;
        in[i].device.owner = in[i].email;
        (void)policy_ip_parse(i % 5 ? STR("10.20.30.40") : STR("2001:db8:1::7"), &in[i].client_ip);
        in[i].time_s = 1764583200 + i * 3600;
    }
    /* CPU time of this thread is the evaluator's cost even on a busy shared machine;
     * wall time is printed too. */
    double *ns = calloc((size_t)runs, sizeof *ns);
    double *wall = calloc((size_t)runs, sizeof *wall);
    unsigned allow = 0, deny = 0;
    struct policy_result r;
    for (int k = 0; k < per; k++) { /* warm-up */
        policy_result_init(&r, NULL);
        (void)policy_eval(p, &in[k % NIN], &r);
    }
    for (int run = 0; run < runs; run++) {
        double t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID), w0 = clock_ns(CLOCK_MONOTONIC);
        for (int k = 0; k < per; k++) {
            policy_result_init(&r, NULL);
            (void)policy_eval(p, &in[k % NIN], &r);
            if (r.decision == POLICY_ALLOW) {
                allow++;
            } else {
                deny++;
            }
        }
        ns[run] = (clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0) / per;
        wall[run] = (clock_ns(CLOCK_MONOTONIC) - w0) / per;
    }
    qsort(ns, (size_t)runs, sizeof *ns, cmp_double);
    qsort(wall, (size_t)runs, sizeof *wall, cmp_double);
    printf("policy eval: %zu rules, %d inputs (%.0f%% allowed), %d runs x %d decisions\n",
           policy_rule_count(p), NIN, 100.0 * allow / (allow + deny), runs, per);
    printf("policy eval: median %.0f ns/decision CPU time (p10 %.0f, p90 %.0f); wall median %.0f "
           "ns\n",
           ns[runs / 2], ns[runs / 10], ns[runs * 9 / 10], wall[runs / 2]);
    free(ns);
    free(wall);
    policy_free(p);
    return 0;
}
