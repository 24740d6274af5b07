/* authn/device_store.c - the device registry in SQLite (WAL, the state
 * database shared with sessions). Every enrolment and revocation adds a row to
 * device_changes, whose largest seq is what serving workers poll. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include "core/pg.h"
#include "device_store.h"
#include "session_pg.h"
#include "state_sqlite.h"

/* Announces enrolments and revocations to every node's listener. */
#define DEVICE_CHANNEL "gatehouse_sessions"

struct device_store {
    sqlite3 *db;      /* SQLite, or */
    PGconn *pg;       /* PostgreSQL (state.postgres): reconnected on use */
    int64_t retry_ms; /* PostgreSQL: no reconnect before (a serving thread waits) */
};

/* state.postgres, when set: the registry is the fleet's (tables by
 * session_pg.c's migrations). Set once, before any handle is opened. */
static struct spg_conf PG;

void device_store_use_postgres(const struct spg_conf *c)
{
    if (c != NULL && c->conninfo != NULL && PG.conninfo != NULL &&
        strcmp(c->conninfo, PG.conninfo) == 0) {
        return; /* a reload: serving threads may be reading PG */
    }
    spg_conf_fini(&PG);
    memset(&PG, 0, sizeof PG);
    if (c != NULL && c->conninfo != NULL) {
        PG.conninfo = xstrdup(c->conninfo);
        PG.password_file = c->password_file ? xstrdup(c->password_file) : NULL;
    }
}

/* The node's mirror of the registry: see device_mirror_load below. */
#define MIRROR_BUCKETS  4096u
#define MIRROR_SEEN_MAX 1024u

struct mdev {
    struct device_record rec;
    struct mdev *next;
};

static struct {
    pthread_rwlock_t mu;
    atomic_bool active;
    struct mdev *bucket[MIRROR_BUCKETS];
    atomic_llong seq;       /* last device change applied */
    atomic_llong synced_ms; /* wall clock of the last successful sync */
    uint64_t staleness_ms;
    pthread_mutex_t seen_mu; /* last_seen updates, written by the listener */
    struct {
        char id[DEVICE_ID_LEN + 1];
        int64_t at;
    } seen[MIRROR_SEEN_MAX];
    size_t nseen;
} M = { .mu = PTHREAD_RWLOCK_INITIALIZER, .seen_mu = PTHREAD_MUTEX_INITIALIZER };

/* The session store's view of the database (its listener thread's), or none. */
static bool (*_Atomic READY_FN)(void *);
static void *_Atomic READY_ARG;

void device_store_set_ready(bool (*fn)(void *arg), void *arg)
{
    atomic_store(&READY_ARG, arg);
    atomic_store(&READY_FN, fn);
}

bool device_store_on_postgres(void)
{
    return PG.conninfo != NULL;
}

static int64_t spg_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The handle's connection, reconnecting at most once a second. */
static PGconn *pgc(struct device_store *s, struct err *err)
{
    bool (*ready)(void *) = atomic_load(&READY_FN);
    if (ready != NULL && !ready(atomic_load(&READY_ARG))) {
        /* The node knows the database is out of reach: fail now (no device
         * is trusted) instead of waiting on a connect or a query. */
        err_set(err, ERR_IO, "device registry: PostgreSQL unreachable");
        return NULL;
    }
    if (s->pg != NULL && PQstatus(s->pg) == CONNECTION_OK) {
        return s->pg;
    }
    PQfinish(s->pg);
    s->pg = NULL;
    int64_t now = spg_mono_ms();
    if (now < s->retry_ms) {
        err_set(err, ERR_IO, "device registry: PostgreSQL unreachable");
        return NULL;
    }
    s->retry_ms = now + 1000;
    struct err e = { 0 };
    s->pg = spg_connect(&PG, &e);
    if (s->pg == NULL) {
        err_set(err, ERR_IO, "device registry: %s", e.msg);
    }
    return s->pg;
}

static int pg_error(PGconn *db, PGresult *r, struct err *err, const char *what)
{
    char w[64];
    snprintf(w, sizeof w, "device registry: %s", what);
    return pg_fail(db, r, err, w);
}

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

#define COLS                                                                                       \
    "id, fingerprint, serial, subject, issuer, owner, name, enrolled_at, enrolled_by, "            \
    "not_after, last_seen, revoked_at, reason"

struct device_store *device_store_open(const char *path, struct err *err)
{
    if (PG.conninfo != NULL) {
        struct device_store *s = xcalloc(1, sizeof *s);
        if (atomic_load(&M.active)) {
            return s; /* serving: the mirror answers; a connection only when asked */
        }
        if (pgc(s, err) == NULL) {
            free(s);
            return NULL;
        }
        return s;
    }
    sqlite3 *db = state_sqlite_open(path, schema, 2000, "device", err);
    if (db == NULL) {
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
        PQfinish(s->pg);
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

static void pcol(PGresult *r, int i, int c, char *out, size_t cap)
{
    const char *v = pg_col(r, i, c);
    snprintf(out, cap, "%s", v ? v : "");
}

static void prow(PGresult *r, int i, struct device_record *d)
{
    memset(d, 0, sizeof *d);
    pcol(r, i, 0, d->id, sizeof d->id);
    pcol(r, i, 1, d->fingerprint, sizeof d->fingerprint);
    pcol(r, i, 2, d->serial, sizeof d->serial);
    pcol(r, i, 3, d->subject, sizeof d->subject);
    pcol(r, i, 4, d->issuer, sizeof d->issuer);
    pcol(r, i, 5, d->owner, sizeof d->owner);
    pcol(r, i, 6, d->name, sizeof d->name);
    d->enrolled_at = pg_col64(r, i, 7);
    pcol(r, i, 8, d->enrolled_by, sizeof d->enrolled_by);
    d->not_after = pg_col64(r, i, 9);
    d->last_seen = pg_col64(r, i, 10);
    d->revoked_at = pg_col64(r, i, 11);
    pcol(r, i, 12, d->reason, sizeof d->reason);
}

/* PostgreSQL: sql with n text parameters; res gets the result on success. */
static int pq(struct device_store *s, const char *sql, int n, const char *const *v, PGresult **res,
              struct err *err, const char *what)
{
    PGconn *db = pgc(s, err);
    if (db == NULL) {
        return ERR_IO;
    }
    PGresult *r = PQexecParams(db, sql, n, NULL, v, NULL, NULL, 0);
    if (!pg_res_ok(r)) {
        int rc = pg_error(db, r, err, what);
        PQclear(r);
        return rc;
    }
    *res = r;
    return 0;
}

/* ---- the node's mirror (PostgreSQL, serving) -------------------------- */

/* A serving node keeps every device in memory: loaded when the session store
 * opens, brought up to date by its listener thread (device_mirror_sync) on
 * every notification, every second and after a reconnect, from the changes
 * past the last sequence it applied. Lookups, the change sequence and
 * "last seen" never touch PostgreSQL on a serving thread. */
static int64_t spg_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t mbucket(const char *fp)
{
    return (size_t)(str_hash(STR_HASH_SEED, fp, strlen(fp)) % MIRROR_BUCKETS);
}

/* Under the write lock: insert or replace d (by fingerprint). */
static void mirror_put(const struct device_record *d)
{
    struct mdev **pp = &M.bucket[mbucket(d->fingerprint)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->rec.fingerprint, d->fingerprint) == 0) {
            int64_t seen = (*pp)->rec.last_seen;
            (*pp)->rec = *d;
            if (seen > d->last_seen) {
                (*pp)->rec.last_seen = seen;
            }
            return;
        }
    }
    struct mdev *m = xcalloc(1, sizeof *m);
    m->rec = *d;
    *pp = m;
}

static void mirror_clear(void)
{
    for (size_t b = 0; b < MIRROR_BUCKETS; b++) {
        while (M.bucket[b] != NULL) {
            struct mdev *m = M.bucket[b];
            M.bucket[b] = m->next;
            free(m);
        }
    }
}

int device_mirror_load(struct pg_conn *db, uint64_t staleness_ms, struct err *err)
{
    PGresult *r = PQexec(db, "SELECT coalesce(max(seq), 0) FROM device_changes");
    if (!pg_res_ok(r)) {
        int rc = pg_error(db, r, err, "loading the registry");
        PQclear(r);
        return rc;
    }
    int64_t seq = pg_col64(r, 0, 0);
    PQclear(r);
    r = PQexec(db, "SELECT " COLS " FROM devices");
    if (!pg_res_ok(r)) {
        int rc = pg_error(db, r, err, "loading the registry");
        PQclear(r);
        return rc;
    }
    pthread_rwlock_wrlock(&M.mu);
    mirror_clear();
    for (int i = 0; i < PQntuples(r); i++) {
        struct device_record d;
        prow(r, i, &d);
        mirror_put(&d);
    }
    M.staleness_ms = staleness_ms;
    atomic_store(&M.seq, seq);
    atomic_store(&M.synced_ms, spg_wall_ms());
    atomic_store(&M.active, true);
    pthread_rwlock_unlock(&M.mu);
    log_info("device", "loaded %d device(s) from PostgreSQL", PQntuples(r));
    PQclear(r);
    return 0;
}

int device_mirror_sync(struct pg_conn *db)
{
    if (!atomic_load(&M.active)) {
        return 0;
    }
    /* Activity first (best effort, what does not go through is kept). */
    pthread_mutex_lock(&M.seen_mu);
    size_t n = M.nseen;
    for (size_t i = 0; i < n; i++) {
        char at[24];
        snprintf(at, sizeof at, "%lld", (long long)M.seen[i].at);
        const char *v[] = { at, M.seen[i].id };
        PGresult *r = PQexecParams(db,
                                   "UPDATE devices SET last_seen = greatest(last_seen, $1::bigint) "
                                   "WHERE id = $2",
                                   2, NULL, v, NULL, NULL, 0);
        bool ok = pg_res_ok(r);
        PQclear(r);
        if (!ok) {
            pthread_mutex_unlock(&M.seen_mu);
            return -1;
        }
    }
    M.nseen = 0;
    pthread_mutex_unlock(&M.seen_mu);
    char seq[24];
    snprintf(seq, sizeof seq, "%lld", (long long)atomic_load(&M.seq));
    const char *v[] = { seq };
    /* Every changed device with the last change that touched it. */
    PGresult *r = PQexecParams(db,
                               "SELECT " COLS ", c.seq FROM devices d JOIN "
                               "(SELECT device, max(seq) AS seq FROM device_changes "
                               "WHERE seq > $1::bigint GROUP BY device) c ON c.device = d.id",
                               1, NULL, v, NULL, NULL, 0);
    if (!pg_res_ok(r)) {
        PQclear(r);
        return -1;
    }
    int64_t top = atomic_load(&M.seq);
    if (PQntuples(r) > 0) {
        pthread_rwlock_wrlock(&M.mu);
        for (int i = 0; i < PQntuples(r); i++) {
            struct device_record d;
            prow(r, i, &d);
            mirror_put(&d);
            int64_t s = pg_col64(r, i, 13);
            top = s > top ? s : top;
        }
        atomic_store(&M.seq, top);
        pthread_rwlock_unlock(&M.mu);
    }
    PQclear(r);
    atomic_store(&M.synced_ms, spg_wall_ms());
    return 0;
}

void device_mirror_stop(void)
{
    atomic_store(&M.active, false);
    pthread_rwlock_wrlock(&M.mu);
    mirror_clear();
    pthread_rwlock_unlock(&M.mu);
    pthread_mutex_lock(&M.seen_mu);
    M.nseen = 0;
    pthread_mutex_unlock(&M.seen_mu);
}

/* 0, ERR_NOTFOUND, or ERR_IO when the mirror is older than state.staleness
 * (the database out of reach that long: no device is trusted). */
static int mirror_lookup(const char *fp, struct device_record *out, struct err *err)
{
    int64_t age = spg_wall_ms() - atomic_load(&M.synced_ms);
    if (age > (int64_t)M.staleness_ms) {
        return err_set(err, ERR_IO, "device registry: not synchronised with PostgreSQL for %lld ms",
                       (long long)age);
    }
    int rc = ERR_NOTFOUND;
    pthread_rwlock_rdlock(&M.mu);
    for (struct mdev *m = M.bucket[mbucket(fp)]; m != NULL; m = m->next) {
        if (strcmp(m->rec.fingerprint, fp) == 0) {
            *out = m->rec;
            rc = 0;
            break;
        }
    }
    pthread_rwlock_unlock(&M.mu);
    if (rc != 0) {
        err_set(err, ERR_NOTFOUND, "no such device \"%s\"", fp);
    }
    return rc;
}

static void mirror_seen(const char *id, int64_t now)
{
    pthread_mutex_lock(&M.seen_mu);
    if (M.nseen < MIRROR_SEEN_MAX) {
        snprintf(M.seen[M.nseen].id, sizeof M.seen[M.nseen].id, "%s", id);
        M.seen[M.nseen].at = now;
        M.nseen++;
    }
    pthread_mutex_unlock(&M.seen_mu);
}

static int db_error(struct device_store *s, struct err *err, const char *what)
{
    return err_set(err, ERR_IO, "device registry: %s: %s", what, sqlite3_errmsg(s->db));
}

/* Runs sql with one text parameter; at most one row expected into out. */
static int one(struct device_store *s, const char *sql, const char *arg, struct device_record *out,
               struct err *err)
{
    if (s->db == NULL) {
        PGresult *r = NULL;
        const char *v[] = { arg };
        int rc = pq(s, sql, 1, v, &r, err, "query");
        if (rc != 0) {
            return rc;
        }
        int found = PQntuples(r);
        if (found > 0) {
            prow(r, 0, out);
        }
        PQclear(r);
        if (found == 0) {
            return err_set(err, ERR_NOTFOUND, "no such device \"%s\"", arg);
        }
        if (found > 1) {
            return err_set(err, ERR_NOTFOUND, "\"%s\" names more than one device: give more of it",
                           arg);
        }
        return 0;
    }
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

int device_store_lookup(struct device_store *s, const char *fingerprint, struct device_record *out,
                        struct err *err)
{
    if (s->db == NULL && atomic_load(&M.active)) {
        return mirror_lookup(fingerprint, out, err);
    }
    return one(s,
               s->db ? "SELECT " COLS " FROM devices WHERE fingerprint = ?"
                     : "SELECT " COLS " FROM devices WHERE fingerprint = $1",
               fingerprint, out, err);
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
    int rc = one(s,
                 s->db ? "SELECT " COLS " FROM devices WHERE id = ?"
                       : "SELECT " COLS " FROM devices WHERE id = $1",
                 id, out, err);
    if (rc != ERR_NOTFOUND || !hexish(id)) {
        return rc;
    }
    char fp[130], like[140];
    fp_norm(id, fp, sizeof fp);
    snprintf(like, sizeof like, "%s%%", fp);
    rc = one(s,
             s->db ? "SELECT " COLS " FROM devices WHERE fingerprint LIKE ?"
                   : "SELECT " COLS " FROM devices WHERE fingerprint LIKE $1",
             like, out, err);
    if (rc == ERR_NOTFOUND) {
        err_set(err, ERR_NOTFOUND, "no such device \"%s\"", id);
    }
    return rc;
}

static int change(struct device_store *s, const char *id, const char *kind, int64_t now)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "INSERT INTO device_changes(device, kind, ts) VALUES (?,?,?)", -1,
                           &st, NULL) != SQLITE_OK) {
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
    if (s->db == NULL) {
        char at[24], na[24];
        snprintf(at, sizeof at, "%lld", (long long)rec->enrolled_at);
        snprintf(na, sizeof na, "%lld", (long long)rec->not_after);
        const char *v[] = {
            rec->id,    rec->fingerprint, rec->serial, rec->subject,     rec->issuer,
            rec->owner, rec->name,        at,          rec->enrolled_by, na
        };
        PGresult *r = NULL;
        /* One statement, so one transaction: the row and its change. */
        int rc = pq(s,
                    "WITH d AS (INSERT INTO devices (" COLS ") VALUES ($1, $2, $3, $4, $5, $6, "
                    "$7, $8::bigint, $9, $10::bigint, 0, 0, '') RETURNING id), "
                    "c AS (INSERT INTO device_changes (device, kind, ts) "
                    "SELECT id, 'enroll', $8::bigint FROM d RETURNING seq) "
                    "SELECT pg_notify('" DEVICE_CHANNEL "', '') FROM c",
                    10, v, &r, err, "enrol");
        PQclear(r);
        return rc;
    }
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        return db_error(s, err, "begin");
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO devices(" COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,0,0,'')", -1,
                           &st, NULL) != SQLITE_OK) {
        db_error(s, err, "enrol");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return ERR_IO;
    }
    const char *t[] = { rec->id,     rec->fingerprint, rec->serial, rec->subject,
                        rec->issuer, rec->owner,       rec->name };
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
    if (s->db == NULL) {
        PGresult *r = NULL;
        const char *v[] = { owner };
        int rc = pq(s,
                    owner ? "SELECT " COLS " FROM devices WHERE lower(owner) = lower($1) "
                            "ORDER BY enrolled_at, ord"
                          : "SELECT " COLS " FROM devices ORDER BY enrolled_at, ord",
                    owner ? 1 : 0, v, &r, err, "list");
        if (rc != 0) {
            return rc;
        }
        for (int i = 0; i < PQntuples(r); i++) {
            struct device_record d;
            prow(r, i, &d);
            fn(&d, arg);
        }
        PQclear(r);
        return 0;
    }
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
    if (s->db == NULL) {
        char ts[24];
        snprintf(ts, sizeof ts, "%lld", (long long)now);
        const char *v[] = { ts, reason ? reason : "", out->id };
        PGresult *r = NULL;
        rc = pq(s,
                "WITH d AS (UPDATE devices SET revoked_at = $1::bigint, reason = $2 "
                "WHERE id = $3 AND revoked_at = 0 RETURNING id), "
                "c AS (INSERT INTO device_changes (device, kind, ts) "
                "SELECT id, 'revoke', $1::bigint FROM d RETURNING seq) "
                "SELECT pg_notify('" DEVICE_CHANNEL "', '') FROM c",
                3, v, &r, err, "revoke");
        PQclear(r);
        if (rc != 0) {
            return rc;
        }
        out->revoked_at = now;
        snprintf(out->reason, sizeof out->reason, "%s", reason ? reason : "");
        return 0;
    }
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
    if (s->db == NULL && atomic_load(&M.active)) {
        return atomic_load(&M.seq);
    }
    if (s->db == NULL) {
        struct err e = { 0 };
        PGresult *r = NULL;
        if (pq(s, "SELECT coalesce(max(seq), 0) FROM device_changes", 0, NULL, &r, &e,
               "change sequence") != 0) {
            return 0;
        }
        int64_t v = pg_col64(r, 0, 0);
        PQclear(r);
        return v;
    }
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
    if (s->db == NULL && atomic_load(&M.active)) {
        mirror_seen(id, now);
        return;
    }
    if (s->db == NULL) {
        char ts[24];
        snprintf(ts, sizeof ts, "%lld", (long long)now);
        const char *v[] = { ts, id };
        struct err e = { 0 };
        PGresult *r = NULL;
        if (pq(s, "UPDATE devices SET last_seen = $1::bigint WHERE id = $2", 2, v, &r, &e,
               "last seen") == 0) {
            PQclear(r);
        }
        return;
    }
    sqlite3_stmt *st = NULL;
    sqlite3_busy_timeout(s->db, 0); /* a serving thread never waits for this */
    if (sqlite3_prepare_v2(s->db, "UPDATE devices SET last_seen = ? WHERE id = ?", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, now);
        sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
    sqlite3_busy_timeout(s->db, 2000);
}
