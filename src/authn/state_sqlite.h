/* authn/state_sqlite.h - opening the SQLite state database (state.sqlite),
 * shared by the session store and the device registry. */
#ifndef GH_AUTHN_STATE_SQLITE_H
#define GH_AUTHN_STATE_SQLITE_H

#include <sqlite3.h>

#include "core/core.h"

/* Opens path (created when missing; one thread per handle), waits up to
 * busy_ms for a lock, and runs schema (CREATE ... IF NOT EXISTS). NULL with
 * err ("cannot create the <what> tables in <path>: ...") on failure. */
sqlite3 *state_sqlite_open(const char *path, const char *schema, int busy_ms, const char *what,
                           struct err *err);

#endif
