/* proxy/gate.h - the access stage: who is calling (session cookie, bearer JWT),
 * whether the route's policy allows it (local rules, OPA), what lands in the
 * decision log, and the reserved /.gatehouse/ endpoints (sign-in, callback,
 * logout, me, jwks). It glues authn and policy into the request pipeline; the
 * protocol logic lives in those modules, the network calls in fetch.c. */
#ifndef GH_PROXY_GATE_H
#define GH_PROXY_GATE_H

#include "config.h"
#include "request.h"

struct gate_conf;

/* Reads the sections that belong to sign-in and policy (identity_providers,
 * session, upstream_identity, opa, decision_log, routes[].policy) of a config
 * being built, reporting problems to d. Returns the part to keep in
 * config->authn (also when d got errors: the caller frees it). */
struct gate_conf *gate_conf_load(struct config *c, struct conf_diag *d);
void gate_conf_free(struct gate_conf *g);

/* Opens the process-wide state the first config needs (session store, identity
 * assertion key, decision log, pages) and installs the access and reserved-path
 * hooks. Blocking: start-up only. Returns 0 or an ERR_* with err filled. */
int gate_start(const struct config *c, struct err *err);
/* The effective access-stage settings of c, borrowed (check --dump). */
struct authn;
struct opa_conf;
struct decision_log_conf;
struct gate_settings {
    const char *hdr_user, *hdr_email, *hdr_groups, *hdr_device;
    bool show_deny_reason;
    const struct authn *an;
    const struct opa_conf *opa;          /* NULL or url NULL: no OPA */
    const struct decision_log_conf *dl;  /* NULL: no decision_log section */
};
void gate_settings(const struct config *c, struct gate_settings *out);
/* `gatehouse check`: loads what gate_start would open (pages, keys, state
 * database, decision log sinks) without creating or writing anything. */
void gate_check(const struct config *c, struct conf_diag *d);
/* Flushes and closes what gate_start opened. Workers must have stopped. */
void gate_stop(void);

/* False while the shared session database (state.postgres) is unreachable. */
bool gate_state_ready(void);

/* The /metrics lines of the gate (decisions, OPA, decision log); appended to buf. */
size_t gate_metrics_render(char *buf, size_t size);

#endif
