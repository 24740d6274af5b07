/* core/pg.h - what every PostgreSQL client in Gatehouse shares (the session
 * store and its listener, the device registry, the decision log's shipper,
 * the CLI): reading the password file, connecting with fail-fast defaults,
 * and libpq's results and errors in Gatehouse's terms. Blocking: never call
 * these on an event loop. */
#ifndef GH_CORE_PG_H
#define GH_CORE_PG_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "err.h"

/* The password on the file's one line (trailing newline dropped), malloc'd:
 * release it with pg_password_free. NULL with err when unreadable or not one
 * non-empty line. */
char *pg_read_password(const char *path, struct err *err);
/* Wipes and frees a password. NULL is a no-op. */
void pg_password_free(char *pw);

/* Connects (blocking) to conninfo (URI or key=value) with password (may be
 * NULL) as application_name app. Gatehouse's defaults come first, so the
 * configured string overrides them: connect_timeout=3, TCP keep-alives and
 * tcp_user_timeout=5000 (a dead server is noticed in seconds, not the kernel's
 * minutes). Server notices are dropped. NULL with err ("cannot connect to
 * PostgreSQL: ..."). */
PGconn *pg_connect(const char *conninfo, const char *password, const char *app, struct err *err);
/* The same, reading the password from password_file (NULL: none). */
PGconn *pg_connect_file(const char *conninfo, const char *password_file, const char *app,
                        struct err *err);

/* A command or query that succeeded (r may be NULL: failed). */
bool pg_res_ok(const PGresult *r);
/* err_set(ERR_IO) with "what: <libpq's message>" (the result's, else the
 * connection's, without its trailing newline); returns ERR_IO. */
int pg_fail(PGconn *db, const PGresult *r, struct err *err, const char *what);
/* pg_res_ok, else pg_fail and false. */
bool pg_check(PGconn *db, const PGresult *r, struct err *err, const char *what);

/* Column c of row i: the text (NULL when SQL NULL), or as an integer (0 when
 * NULL). */
const char *pg_col(const PGresult *r, int i, int c);
int64_t pg_col64(const PGresult *r, int i, int c);

#endif
