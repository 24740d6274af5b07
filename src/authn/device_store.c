/* authn/device_store.c - the device registry in SQLite (WAL, the state
 * database shared with sessions). Every enrolment and revocation adds a row to
 * device_changes, whose largest seq is what serving workers poll. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>
#include <sqlite3.h>

#include "device_store.h"

struct device_store {
    sqlite3 *db;
};

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS devices ("
    "  id TEXT PRIMARY KEY,"
    "  fingerprint TEXT NOT NULL UNIQUE,"
    "  serial TEXT NOT NULL, subject TEXT NOT NULL, issuer TEXT NOT NULL,"
    "  owner TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',"
    "  enrolled_at INTEGER NOT NULL, enrolled_by TEXT NOT NULL DEFAULT '',"
    "  not_after INTEGER NOT NULL DEFAULT 0,"
    "  last_seen INTEGER NOT NULL DEFAULT 0,"
    "  revoked_at INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '') STRICT;"
    "CREATE INDEX IF NOT EXISTS devices_owner ON devices(owner);"
    "CREATE TABLE IF NOT EXISTS device_changes ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  device TEXT NOT NULL, kind TEXT NOT NULL, ts INTEGER NOT NULL) STRICT;";

#define COLS "id, fingerprint, serial, subject, issuer, owner, name, enrolled_at, enrolled_by, " \
             "not_after, last_seen, revoked_at, reason"

struct device_store *device_store_open(const char *path, struct err *err)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        err_set(err, ERR_IO, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "no memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 2000);
    char *msg = NULL;
    if (sqlite3_exec(db, schema, NULL, NULL, &msg) != SQLITE_OK) {
        err_set(err, ERR_IO, "cannot create the device tables in %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        sqlite3_close(db);
        return NULL;
    }
    struct device_store *s = xcalloc(1, sizeof *s);
    s->db = db;
    return s;
}

void device_store_close(struct device_store *s)
{
    if (s) {
        sqlite3_close(s->db);
        free(s);
    }
}

static void col(sqlite3_stmt *st, int i, char *out, size_t cap)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    snprintf(out, cap, "%s", v ? v : "");
}

static void row(sqlite3_stmt *st, struct device_record *r)
{
    memset(r, 0, sizeof *r);
    col(st, 0, r->id, sizeof r->id);
    col(st, 1, r->fingerprint, sizeof r->fingerprint);
    col(st, 2, r->serial, sizeof r->serial);
    col(st, 3, r->subject, sizeof r->subject);
    col(st, 4, r->issuer, sizeof r->issuer);
    col(st, 5, r->owner, sizeof r->owner);
    col(st, 6, r->name, sizeof r->name);
    r->enrolled_at = sqlite3_column_int64(st, 7);
    col(st, 8, r->enrolled_by, sizeof r->enrolled_by);
    r->not_after = sqlite3_column_int64(st, 9);
    r->last_seen = sqlite3_column_int64(st, 10);
    r->revoked_at = sqlite3_column_int64(st, 11);
    col(st, 12, r->reason, sizeof r->reason);
}

static int db_error(struct device_store *s, struct err *err, const char *what)
{
    return err_set(err, ERR_IO, "device registry: %s: %s", what, sqlite3_errmsg(s->db));
}

/* Runs sql with one text parameter; at most one row expected into out. */
static int one(struct device_store *s, const char *sql, const char *arg,
               struct device_record *out, struct err *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        return db_error(s, err, "query");
    }
    sqlite3_bind_text(st, 1, arg, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int found = 0;
    while (rc == SQLITE_ROW) {
        if (found == 0) {
            row(st, out);
        }
        found++;
        rc = sqlite3_step(st);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return db_error(s, err, "query");
    }
    if (found == 0) {
        return err_set(err, ERR_NOTFOUND, "no such device \"%s\"", arg);
    }
    if (found > 1) {
        return err_set(err, ERR_NOTFOUND, "\"%s\" names more than one device: give more of it",
                       arg);
    }
    return 0;
}

int device_store_lookup(struct device_store *s, const char *fingerprint,
                        struct device_record *out, struct err *err)
{
    return one(s, "SELECT " COLS " FROM devices WHERE fingerprint = ?", fingerprint, out, err);
}

static bool hexish(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
              c == ':')) {
            return false;
        }
    }
    return n >= 8;
}

/* The fingerprint as stored: lower case, colons dropped. */
static void fp_norm(const char *in, char *out, size_t cap)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 1 < cap; i++) {
        char c = in[i];
        if (c == ':') {
            continue;
        }
        out[j++] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
    }
    out[j] = '\0';
}

int device_store_show(struct device_store *s, const char *id, struct device_record *out,
                      struct err *err)
{
    int rc = one(s, "SELECT " COLS " FROM devices WHERE id = ?", id, out, err);
    if (rc != ERR_NOTFOUND || !hexish(id)) {
        return rc;
    }
    char fp[130], like[140];
    fp_norm(id, fp, sizeof fp);
    snprintf(like, sizeof like, "%s%%", fp);
    rc = one(s, "SELECT " COLS " FROM devices WHERE fingerprint LIKE ?", like, out, err);
    if (rc == ERR_NOTFOUND) {
        err_set(err, ERR_NOTFOUND, "no such device \"%s\"", id);
    }
    return rc;
}

static int change(struct device_store *s, const char *id, const char *kind, int64_t now)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "INSERT INTO device_changes(device, kind, ts) VALUES (?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        return -1;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    return rc;
}

int device_store_enroll(struct device_store *s, struct device_record *rec, struct err *err)
{
    unsigned char rnd[DEVICE_ID_LEN / 2];
    struct device_record old;
    struct err e2 = { 0 };

    if (device_store_lookup(s, rec->fingerprint, &old, &e2) == 0) {
        return err_set(err, ERR_CONFIG, "this certificate is already enrolled as device %s%s",
                       old.id, old.revoked_at ? " (revoked: issue a new certificate)" : "");
    }
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        return err_set(err, ERR_CRYPTO, "no random bytes for a device id");
    }
    str_hex(rnd, sizeof rnd, rec->id);
    rec->enrolled_at = (int64_t)time(NULL);
    rec->last_seen = rec->revoked_at = 0;
    rec->reason[0] = '\0';
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        return db_error(s, err, "begin");
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "INSERT INTO devices(" COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,0,0,'')",
                           -1, &st, NULL) != SQLITE_OK) {
        db_error(s, err, "enrol");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return ERR_IO;
    }
    const char *t[] = { rec->id, rec->fingerprint, rec->serial, rec->subject, rec->issuer,
                        rec->owner, rec->name };
    for (int i = 0; i < 7; i++) {
        sqlite3_bind_text(st, i + 1, t[i], -1, SQLITE_TRANSIENT);
    }
    sqlite3_bind_int64(st, 8, rec->enrolled_at);
    sqlite3_bind_text(st, 9, rec->enrolled_by, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 10, rec->not_after);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE || change(s, rec->id, "enroll", rec->enrolled_at) != 0 ||
        sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        db_error(s, err, "enrol");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return ERR_IO;
    }
    return 0;
}

int device_store_list(struct device_store *s, const char *owner, device_store_each_fn *fn,
                      void *arg, struct err *err)
{
    sqlite3_stmt *st = NULL;
    const char *sql = owner ? "SELECT " COLS " FROM devices WHERE owner = ? COLLATE NOCASE "
                              "ORDER BY enrolled_at, rowid"
                            : "SELECT " COLS " FROM devices ORDER BY enrolled_at, rowid";
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        return db_error(s, err, "list");
    }
    if (owner) {
        sqlite3_bind_text(st, 1, owner, -1, SQLITE_TRANSIENT);
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct device_record r;
        row(st, &r);
        fn(&r, arg);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : db_error(s, err, "list");
}

int device_store_revoke(struct device_store *s, const char *id, const char *reason,
                        struct device_record *out, struct err *err)
{
    int rc = device_store_show(s, id, out, err);
    if (rc != 0) {
        return rc;
    }
    if (out->revoked_at) {
        return 0;
    }
    int64_t now = (int64_t)time(NULL);
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        return db_error(s, err, "begin");
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE devices SET revoked_at = ?, reason = ? WHERE id = ? AND "
                           "revoked_at = 0",
                           -1, &st, NULL) != SQLITE_OK) {
        db_error(s, err, "revoke");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return ERR_IO;
    }
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, reason ? reason : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, out->id, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE || change(s, out->id, "revoke", now) != 0 ||
        sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        db_error(s, err, "revoke");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return ERR_IO;
    }
    out->revoked_at = now;
    snprintf(out->reason, sizeof out->reason, "%s", reason ? reason : "");
    return 0;
}

int64_t device_store_change_seq(struct device_store *s)
{
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(seq), 0) FROM device_changes", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    return v;
}

void device_store_seen(struct device_store *s, const char *id, int64_t now)
{
    sqlite3_stmt *st = NULL;
    sqlite3_busy_timeout(s->db, 0); /* a serving thread never waits for this */
    if (sqlite3_prepare_v2(s->db, "UPDATE devices SET last_seen = ? WHERE id = ?", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, now);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
    sqlite3_busy_timeout(s->db, 2000);
}
