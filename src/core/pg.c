/* core/pg.c - see pg.h. */
#include "pg.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "conf.h"

char *pg_read_password(const char *path, struct err *err)
{
    size_t len = 0;
    char *s = conf_read_file(path, 4096, &len, err);
    if (s == NULL) {
        return NULL;
    }
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r')) {
        s[--len] = '\0';
    }
    if (len == 0 || memchr(s, '\n', len) != NULL) {
        pg_password_free(s);
        err_set(err, ERR_CONFIG, "%s must hold the password on one line", path);
        return NULL;
    }
    return s;
}

void pg_password_free(char *pw)
{
    if (pw != NULL) {
        OPENSSL_cleanse(pw, strlen(pw));
        free(pw);
    }
}

static void notice_none(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

/* libpq's message without its trailing newline: "%.*s", len, m. */
static const char *trimmed(const char *m, int *len)
{
    size_t n = strlen(m);
    while (n > 0 && m[n - 1] == '\n') {
        n--;
    }
    *len = (int)n;
    return m;
}

PGconn *pg_connect(const char *conninfo, const char *password, const char *app, struct err *err)
{
    const char *keys[12], *vals[12];
    size_t n = 0;
    keys[n] = "connect_timeout", vals[n++] = "3";
    keys[n] = "keepalives_idle", vals[n++] = "5";
    keys[n] = "keepalives_interval", vals[n++] = "2";
    keys[n] = "keepalives_count", vals[n++] = "2";
    keys[n] = "tcp_user_timeout", vals[n++] = "5000";
    keys[n] = "application_name", vals[n++] = app;
    if (password != NULL) {
        keys[n] = "password", vals[n++] = password;
    }
    keys[n] = "dbname", vals[n++] = conninfo;
    keys[n] = NULL, vals[n] = NULL;
    PGconn *db = PQconnectdbParams(keys, vals, 1);
    if (db == NULL || PQstatus(db) != CONNECTION_OK) {
        int len = 0;
        const char *m = trimmed(db ? PQerrorMessage(db) : "out of memory", &len);
        err_set(err, ERR_IO, "cannot connect to PostgreSQL: %.*s", len, m);
        PQfinish(db);
        return NULL;
    }
    PQsetNoticeProcessor(db, notice_none, NULL);
    return db;
}

PGconn *pg_connect_file(const char *conninfo, const char *password_file, const char *app,
                        struct err *err)
{
    char *pw = NULL;
    if (password_file != NULL && (pw = pg_read_password(password_file, err)) == NULL) {
        return NULL;
    }
    PGconn *db = pg_connect(conninfo, pw, app, err);
    pg_password_free(pw);
    return db;
}

bool pg_res_ok(const PGresult *r)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

int pg_fail(PGconn *db, const PGresult *r, struct err *err, const char *what)
{
    int len = 0;
    const char *m = trimmed(r ? PQresultErrorMessage(r) : PQerrorMessage(db), &len);
    return err_set(err, ERR_IO, "%s: %.*s", what, len, m);
}

bool pg_check(PGconn *db, const PGresult *r, struct err *err, const char *what)
{
    if (pg_res_ok(r)) {
        return true;
    }
    pg_fail(db, r, err, what);
    return false;
}

const char *pg_col(const PGresult *r, int i, int c)
{
    return PQgetisnull(r, i, c) ? NULL : PQgetvalue(r, i, c);
}

int64_t pg_col64(const PGresult *r, int i, int c)
{
    return PQgetisnull(r, i, c) ? 0 : strtoll(PQgetvalue(r, i, c), NULL, 10);
}
