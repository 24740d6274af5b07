/* policy/cmd_int.h - what the audit commands (cmd_audit.c) share with policy
 * diff (cmd_diff.c): opening the logged records and reading times. */
#ifndef GH_POLICY_CMD_INT_H
#define GH_POLICY_CMD_INT_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "policy.h"

/* The decision-log configuration of cfg, then the records read-only: the local
 * SQLite store (indexed first with index: deferred), or with fleet set and
 * state.postgres configured, every node's records between since and until
 * materialised from the shared table. false with the reason printed (prefix:
 * "gatehouse: " on stderr, or "FAIL sqlite: " on stdout for verify). */
bool audit_open_records(const char *cfg, struct decision_log_conf *c, sqlite3 **db, bool verify,
                        bool fleet, int64_t since, int64_t until);
/* Wall-clock time in microseconds. */
int64_t audit_wall_us(void);
/* "1h", "7d" (before now) or an RFC 3339 time, in microseconds. */
bool audit_parse_when(const char *s, int64_t *out_us);
/* s, or "-" when NULL or empty. */
const char *audit_nz(const char *s);

#endif
