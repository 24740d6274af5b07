/* proxy/access/access.h - the access stage as the rest of src/proxy sees it:
 * its configuration part (loaded with each snapshot, see snapshot.c), its
 * start and stop (serve.c), `gatehouse check` and `check --dump`. The data
 * plane never includes this: it knows the stage only through
 * struct access_stage (request.h), which the stage installs at start. */
#ifndef GH_PROXY_ACCESS_ACCESS_H
#define GH_PROXY_ACCESS_ACCESS_H

#include <stdbool.h>

#include "proxy/config.h"

struct access_conf;

/* Reads the sections that belong to sign-in and policy (identity_providers,
 * session, upstream_identity, opa, decision_log, pages, routes[].policy) of a
 * config being built, reporting problems to d. Returns the part to keep in
 * config->authn (also when d got errors: the caller frees it). */
struct access_conf *access_conf_load(struct config *c, struct conf_diag *d);
void access_conf_free(struct access_conf *g);

/* Opens the process-wide state the first config needs (session store, identity
 * assertion key, decision log, pages), registers the metrics provider and
 * installs the stage (access_stage_install). Blocking: start-up only. Returns 0
 * or an ERR_* with err filled. */
int access_start(const struct config *c, struct err *err);
/* Flushes and closes what access_start opened. Workers must have stopped. */
void access_stop(void);

/* The effective access-stage settings of c, borrowed (check --dump). */
struct authn;
struct opa_conf;
struct decision_log_conf;
struct access_settings {
    const char *hdr_user, *hdr_email, *hdr_groups, *hdr_device;
    bool show_deny_reason;
    const struct authn *an;
    const struct opa_conf *opa;         /* NULL or url NULL: no OPA */
    const struct decision_log_conf *dl; /* NULL: no decision_log section */
};
void access_settings(const struct config *c, struct access_settings *out);
/* `gatehouse check`: loads what access_start would open (pages, keys, state
 * database, decision log sinks) without creating or writing anything. */
void access_check_files(const struct config *c, struct conf_diag *d);

#endif
