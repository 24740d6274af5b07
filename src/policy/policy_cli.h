/* policy/policy_cli.h - helpers shared by the `policy` and `audit` commands.
 * Private to src/policy. */
#ifndef GH_POLICY_POLICY_CLI_H
#define GH_POLICY_POLICY_CLI_H

#include "policy.h"

/* OPA answers given in a test case or an explain input ("opa: {path: true}"). */
struct cli_opa {
    const char *path[POLICY_MAX_OPA]; /* borrowed from the conf doc */
    bool allow[POLICY_MAX_OPA];
    size_t n;
};

/* RFC 3339 ("2026-03-10T09:30:00Z", "...+01:00") to unix seconds. */
bool policy_time_parse(const char *s, int64_t *out);
/* The options of a route that change the path the proxy feeds its policy
 * (match.path_case_insensitive, encoded_slashes: pass). */
struct cli_route_path {
    bool fold_case;
    bool encoded_slashes_pass;
};
/* Fills in from a test-case/explain input map; strings are copied into a.
 * The path and host are put in the form the proxy gives the policy (a path
 * the proxy refuses with 400 is an error); rp is the route's options, NULL
 * without a route (case kept, encoded slashes refused). Errors go to d with
 * positions. opa may be NULL. */
bool policy_input_from_conf(const struct conf_node *n, struct arena *a, struct conf_diag *d,
                            struct policy_input *in, struct cli_opa *opa,
                            const struct cli_route_path *rp);
/* policy_eval, answering OPA from opa; returns POLICY_NEED_OPA when an answer is missing. */
enum policy_step policy_eval_cli(const struct policy *p, const struct policy_input *in,
                                 const struct cli_opa *opa, struct policy_result *r);
int policy_cmd_diff(int argc, char **argv, const struct policy_cli_loader *ld);

/* s with control characters replaced by '?' (logged data must not drive a terminal);
 * "-" for NULL. Returns buf. */
const char *policy_printable(const char *s, char *buf, size_t size);

struct dl_row;
/* The input a logged decision was made on (what the record keeps of it). Spans point
 * into r; returns the groups array to free() after use. */
struct str *policy_input_from_record(const struct decision_record *r, struct policy_input *in);
/* Reads the newest record of request_id from cfg's decision log (message on stderr if
 * not found). Free with dl_row_fini(). */
bool policy_record_by_request(const char *cfg, const char *request_id, struct dl_row *row);

#endif
