/* Fuzz target for the policy compiler and evaluator (policy/lang.c, eval.c):
 * any bytes as a policy file. Invariants: a rejected policy has at least one
 * message and every message names the file; an accepted policy evaluates a
 * fixed input (with a full trace) to a decision named by one of its rules or
 * "default-deny", answering every OPA question always ends the evaluation, and the
 * fast path decides exactly as the full trace does.
 * Built with -Dfuzzing=true it is a libFuzzer target; otherwise main() replays
 * files and directories (the 'fuzz' suite replays corpus/policy/). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "policy/policy.h"
#include "replay.h"

static const struct str groups[] = { { "eng", 3 }, { "admins", 6 } };
static const struct policy_kv claims[] = { { { "amr", 3 }, { "mfa", 3 } } };
static const struct policy_kv headers[] = { { { "X-Tenant", 8 }, { "acme", 4 } } };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf_diag d = { 0 };
    struct policy *p = policy_parse("fuzz.yaml", (const char *)data, size, &d);

    if (!p) {
        CHECK(d.count > 0);
        for (size_t i = 0; i < d.stored; i++) {
            CHECK(strncmp(d.msgs[i], "fuzz.yaml:", 10) == 0);
        }
        conf_diag_fini(&d);
        return 0;
    }
    CHECK(d.count == 0);
    struct policy_input in = { 0 };
    in.authenticated = true;
    in.user = STR("alice");
    in.email = STR("alice@example.com");
    in.groups = groups;
    in.ngroups = 2;
    in.claims = claims;
    in.nclaims = 1;
    in.headers = headers;
    in.nheaders = 1;
    in.method = STR("GET");
    in.host = STR("wiki.example.com");
    in.path = STR("/admin/x");
    in.time_s = 1764583200;
    (void)policy_ip_parse(STR("10.1.2.3"), &in.client_ip);
    size_t n = policy_rule_count(p);
    uint8_t *trace = calloc(n ? n : 1, 1);
    struct policy_result r;
    policy_result_init(&r, trace);
    unsigned asked = 0;
    while (policy_eval(p, &in, &r) == POLICY_NEED_OPA) {
        CHECK(r.opa_path && r.opa_index < POLICY_MAX_OPA && asked++ < POLICY_MAX_OPA);
        policy_opa_answer(&r, r.opa_index % 2, "fuzz");
    }
    /* The fast path (prefilters, per-host lists, short-circuits) decides exactly as the
     * full trace does, given the same OPA answers. */
    struct policy_result fast;
    policy_result_init(&fast, NULL);
    asked = 0;
    while (policy_eval(p, &in, &fast) == POLICY_NEED_OPA) {
        CHECK(asked++ < POLICY_MAX_OPA);
        policy_opa_answer(&fast, fast.opa_index % 2, "fuzz");
    }
    CHECK(fast.decision == r.decision && strcmp(fast.rule, r.rule) == 0);
    bool named = strcmp(r.rule, "default-deny") == 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(trace[i] <= POLICY_RULE_ERROR);
        named = named || strcmp(r.rule, policy_rule_id(p, i)) == 0;
    }
    CHECK(named && r.reason);
    CHECK(r.decision == POLICY_ALLOW || r.decision == POLICY_DENY);
    free(trace);
    policy_free(p);
    conf_diag_fini(&d);
    return 0;
}
