/* authn/session_pg.c - sessions, revocations and their change feed in
 * PostgreSQL (see session_pg.h). Two connections per node: the writer's
 * (used only by session.c's writer thread) and the listener's (its own
 * thread: LISTEN gatehouse_sessions, replay of session_changes past the last
 * sequence seen, on every notification, every second, and after a reconnect).
 * Statements are static text with bound parameters. */
#include "session_pg.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "codec.h"
#include "core/pg.h"
#include "device_store.h"

#define CHANNEL "gatehouse_sessions"
#define CHANGE_LOCK "7263001"      /* pg_advisory_xact_lock key: appenders of session_changes */
#define MIGRATE_LOCK "7263000"     /* pg_advisory_xact_lock key: migrations */
#define REPLAY_PERIOD_MS 1000
#define TOUCH_SYNC_PERIOD_MS 5000
#define OK_WITHIN_MS 3000          /* readiness: synced this recently */
#define REPLAY_BATCH 500
#define REFRESH_LEASE_MS "30000"   /* a node that took the lease and died: others after this */

struct spg {
    struct spg_conf conf;
    char *password;                /* from password_file, wiped at close */
    char node[17];                 /* random per process: skips its own changes */
    struct spg_hooks hooks;
    PGconn *wconn;                 /* writer thread */
    atomic_bool writer_ok;
    bool retrying;                 /* writer thread: the second attempt of spg_write */
    /* listener */
    pthread_t listener;
    bool listener_started;
    atomic_bool stop;
    atomic_llong synced_ms;
    atomic_bool listen_ok;
    PGconn *lconn;                 /* the listener's, handed over at start */
    int64_t seq;                   /* last change applied (listener thread) */
    int64_t last_touch_sync_ms;
    /* one-time values: a thread of their own with its own connection; the
     * request path queues a job and waits for its eventfd on its loop */
    pthread_t once_thread;
    bool once_started;
    pthread_mutex_t omu;
    pthread_cond_t ocv;
    struct spg_once_job *ohead, **otail;
    PGconn *oconn;
};

struct spg_once_job {
    atomic_int refs;               /* the queue's and the requester's */
    int fd;                        /* eventfd: readable once decided */
    bool lease;                    /* a refresh lease (id_hash, exp_s = token expiry) */
    char id_hash[65];
    unsigned char h[32];
    int64_t exp_s;
    int64_t deadline_ms;           /* monotonic: past it the job is not run */
    atomic_int state;              /* SPG_ONCE_* */
    char err[256];
    struct spg_once_job *next;
};

static void once_finish(struct spg_once_job *j, int state, const char *why);
static void *once_main(void *arg);

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- configuration ---------------------------------------------------- */

bool spg_conf_parse(struct conf_diag *d, const struct conf_node *state, const char *conf_file,
                    struct spg_conf *out)
{
    const char *pg = NULL, *pw = NULL;
    memset(out, 0, sizeof *out);
    out->migrate = true;
    out->staleness_ms = 10000;
    out->query_timeout_ms = 2000;
    if (state == NULL || state->type != CONF_MAP || conf_get(state, "postgres") == NULL) {
        return false;
    }
    conf_string(d, state, "postgres", &pg);
    conf_string(d, state, "password_file", &pw);
    conf_bool(d, state, "migrate", &out->migrate);
    conf_duration_ms(d, state, "staleness", 0, 3600000, &out->staleness_ms);
    conf_duration_ms(d, state, "query_timeout", 100, 60000, &out->query_timeout_ms);
    if (pg == NULL) {
        return false;
    }
    out->conninfo = xstrdup(pg);
    if (pw != NULL) {
        out->password_file = conf_path_resolve(conf_file, pw);
    }
    return true;
}

void spg_conf_fini(struct spg_conf *c)
{
    free(c->conninfo);
    free(c->password_file);
    memset(c, 0, sizeof *c);
}

void spg_conf_check(struct conf_diag *d, const struct conf_node *state, const struct spg_conf *c)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(c->conninfo, &msg);
    if (opts == NULL) {
        size_t n = msg ? strlen(msg) : 0;
        while (n > 0 && msg[n - 1] == '\n') {
            msg[--n] = '\0';
        }
        conf_error(d, conf_get(state, "postgres"), "\"postgres\" is not a libpq connection string: %s",
                   msg ? msg : "out of memory");
    }
    PQfreemem(msg);
    PQconninfoFree(opts);
    if (c->password_file != NULL) {
        struct err e = { 0 };
        char *pw = pg_read_password(c->password_file, &e);
        if (pw == NULL) {
            conf_error(d, conf_get(state, "password_file"), "password_file: %s", e.msg);
        }
        pg_password_free(pw);
    }
}

char *spg_conninfo_redacted(const char *ci)
{
    const char *p = strstr(ci, "://");
    if (p != NULL && strncmp(ci, "postgres", 8) == 0) {
        /* URI form: scheme://[user[:password]@]host...: the userinfo ends at
         * the last '@' before the query (a raw '@' may sit in a password). */
        const char *auth = p + 3;
        const char *limit = strchr(auth, '?');
        const char *at = NULL;
        for (const char *q = auth; limit ? q < limit : *q != '\0'; q++) {
            if (*q == '@') {
                at = q;
            }
        }
        const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        char *base = colon ? xasprintf("%.*s****%s", (int)(colon + 1 - ci), ci, at)
                           : xstrdup(ci);
        /* ...and a password=... query parameter. */
        char *pw = strstr(base, "password=");
        if (pw != NULL && (pw[-1] == '?' || pw[-1] == '&')) {
            const char *end = strchr(pw, '&');
            char *out = xasprintf("%.*spassword=****%s", (int)(pw - base), base, end ? end : "");
            free(base);
            return out;
        }
        return base;
    }
    /* key=value form: rebuilt from libpq's own parse, the password masked. */
    PQconninfoOption *opts = PQconninfoParse(ci, NULL);
    if (opts == NULL) {
        return xstrdup("(unparsable)");
    }
    size_t cap = strlen(ci) + 64, len = 0;
    char *out = xcalloc(1, cap);
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL) {
            continue;
        }
        bool secret = strcmp(o->keyword, "password") == 0;
        const char *v = secret ? "****" : o->val;
        size_t need = strlen(o->keyword) + 2 * strlen(v) + 5;
        if (len + need >= cap) {
            cap = (len + need) * 2;
            out = xrealloc(out, cap);
        }
        len += (size_t)snprintf(out + len, cap - len, "%s%s='", len ? " " : "", o->keyword);
        for (const char *c = v; *c != '\0'; c++) {
            if (*c == '\'' || *c == '\\') {
                out[len++] = '\\';
            }
            out[len++] = *c;
        }
        out[len++] = '\'';
        out[len] = '\0';
    }
    PQconninfoFree(opts);
    return out;
}

/* ---- connections ------------------------------------------------------ */

static PGconn *connect_db(const struct spg_conf *c, const char *password, struct err *err)
{
    return pg_connect(c->conninfo, password, "gatehouse", err);
}

static PGconn *connect_conf(const struct spg_conf *c, struct err *err)
{
    return pg_connect_file(c->conninfo, c->password_file, "gatehouse", err);
}

PGconn *spg_connect(const struct spg_conf *c, struct err *err)
{
    PGconn *db = connect_conf(c, err);
    if (db != NULL) {
        PGresult *r = PQexec(db, "SET statement_timeout = 2000");
        bool ok = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok) {
            err_set(err, ERR_IO, "PostgreSQL: cannot set statement_timeout");
            PQfinish(db);
            db = NULL;
        }
    }
    return db;
}

static bool exec_ok(PGconn *db, const char *sql, struct err *err)
{
    PGresult *r = PQexec(db, sql);
    bool ok = pg_check(db, r, err, "PostgreSQL");
    PQclear(r);
    return ok;
}

static PGresult *q(PGconn *db, const char *sql, int n, const char *const *v)
{
    return PQexecParams(db, sql, n, NULL, v, NULL, NULL, 0);
}

/* ---- migrations ------------------------------------------------------- */

/* Append only: a released migration is never edited. */
static const char *const migrations[] = {
    /* 1: sessions, their change feed, user revocations (bearer tokens). */
    "CREATE TABLE sessions ("
    "  id_hash text PRIMARY KEY,"
    "  user_key text NOT NULL, email text, name text,"
    "  groups text NOT NULL, claims text NOT NULL,"
    "  idp text NOT NULL, sid text,"
    "  created_ms bigint NOT NULL, last_seen_ms bigint NOT NULL, expires_ms bigint NOT NULL,"
    "  token_exp_s bigint NOT NULL DEFAULT 0,"
    "  refresh_token text, id_token text);"
    "CREATE INDEX sessions_user ON sessions (user_key);"
    "CREATE INDEX sessions_email ON sessions (email);"
    "CREATE INDEX sessions_sid ON sessions (idp, sid);"
    "CREATE INDEX sessions_last_seen ON sessions (last_seen_ms);"
    "CREATE TABLE session_changes ("
    "  seq bigserial PRIMARY KEY,"
    "  kind text NOT NULL CHECK (kind IN ('new', 'update', 'id', 'user')),"
    "  value text NOT NULL, ts_ms bigint NOT NULL, node text NOT NULL);"
    "CREATE INDEX session_changes_ts ON session_changes (ts_ms);"
    "CREATE TABLE user_revocations (value text PRIMARY KEY, ts_ms bigint NOT NULL);",
    /* 2: the fleet's decision log: every node's records (its own chain, as the
     * JSON lines it wrote), keyed by (node, seq), hash-partitioned by node. */
    "CREATE TABLE decision_records ("
    "  node text NOT NULL, seq bigint NOT NULL, ts_us bigint NOT NULL, line text NOT NULL,"
    "  PRIMARY KEY (node, seq)) PARTITION BY HASH (node);"
    "CREATE TABLE decision_records_0 PARTITION OF decision_records"
    "  FOR VALUES WITH (MODULUS 4, REMAINDER 0);"
    "CREATE TABLE decision_records_1 PARTITION OF decision_records"
    "  FOR VALUES WITH (MODULUS 4, REMAINDER 1);"
    "CREATE TABLE decision_records_2 PARTITION OF decision_records"
    "  FOR VALUES WITH (MODULUS 4, REMAINDER 2);"
    "CREATE TABLE decision_records_3 PARTITION OF decision_records"
    "  FOR VALUES WITH (MODULUS 4, REMAINDER 3);"
    "CREATE INDEX decision_records_ts ON decision_records (ts_us);",
    /* 3: one-time values shared by the fleet (SAML assertion IDs): the first
     * INSERT of a key wins, on whichever node; expired rows are purged. */
    "CREATE TABLE once_values (key_hash bytea PRIMARY KEY, exp_s bigint NOT NULL);"
    "CREATE INDEX once_values_exp ON once_values (exp_s);",
    /* 4: the device registry (device_store.c), as in SQLite: every enrolment
     * and revocation appends to device_changes, whose max(seq) workers poll. */
    "CREATE TABLE devices ("
    "  id text PRIMARY KEY, fingerprint text NOT NULL UNIQUE,"
    "  serial text NOT NULL, subject text NOT NULL, issuer text NOT NULL,"
    "  owner text NOT NULL, name text NOT NULL DEFAULT '',"
    "  enrolled_at bigint NOT NULL, enrolled_by text NOT NULL DEFAULT '',"
    "  not_after bigint NOT NULL DEFAULT 0, last_seen bigint NOT NULL DEFAULT 0,"
    "  revoked_at bigint NOT NULL DEFAULT 0, reason text NOT NULL DEFAULT '',"
    "  ord bigserial);"
    "CREATE INDEX devices_owner ON devices (lower(owner));"
    "CREATE TABLE device_changes ("
    "  seq bigserial PRIMARY KEY, device text NOT NULL, kind text NOT NULL, ts bigint NOT NULL);",
    /* 5: refresh single-flight across the fleet: the node that sets the lease
     * (while it is past and the tokens are still the ones it holds) refreshes;
     * writing the refreshed tokens clears it. */
    "ALTER TABLE sessions ADD COLUMN refresh_lease_ms bigint NOT NULL DEFAULT 0;",
    /* 6: every node's signed checkpoints (the JSON line it signed), shipped
     * after the records they sign: audit verify on any node checks each
     * node's chain against them. */
    "CREATE TABLE decision_checkpoints ("
    "  node text NOT NULL, seq bigint NOT NULL, hash text NOT NULL, line text NOT NULL,"
    "  PRIMARY KEY (node, seq));",
};
#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

static int schema_version(PGconn *db, int *version, struct err *err)
{
    PGresult *r = PQexec(db, "SELECT coalesce(max(version), 0) FROM gatehouse_schema");
    if (r != NULL && PQresultStatus(r) == PGRES_FATAL_ERROR) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (state != NULL && strcmp(state, "42P01") == 0) { /* undefined_table */
            PQclear(r);
            *version = 0;
            return 0;
        }
    }
    if (!pg_check(db, r, err, "reading the schema version")) {
        PQclear(r);
        return ERR_IO;
    }
    *version = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

/* Applies the missing migrations in one transaction, serialised across nodes
 * starting at once. from and to get the versions before and after. */
static int migrate(PGconn *db, int *from, int *to, struct err *err)
{
    int v = 0;
    if (!exec_ok(db, "BEGIN", err)) {
        return ERR_IO;
    }
    if (!exec_ok(db, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ")", err) ||
        !exec_ok(db, "CREATE TABLE IF NOT EXISTS gatehouse_schema ("
                     "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                 err) ||
        schema_version(db, &v, err) != 0) {
        goto fail;
    }
    *from = *to = v;
    if (v > NMIGRATIONS) {
        err_set(err, ERR_CONFIG,
                "the database schema is version %d, newer than this Gatehouse knows (%d)", v,
                NMIGRATIONS);
        goto fail;
    }
    for (int i = v; i < NMIGRATIONS; i++) {
        char num[16];
        snprintf(num, sizeof num, "%d", i + 1);
        const char *p[] = { num };
        if (!exec_ok(db, migrations[i], err)) {
            goto fail;
        }
        PGresult *r = q(db, "INSERT INTO gatehouse_schema (version) VALUES ($1::integer)", 1, p);
        bool ok = pg_check(db, r, err, "recording the schema version");
        PQclear(r);
        if (!ok) {
            goto fail;
        }
        *to = i + 1;
    }
    if (!exec_ok(db, "COMMIT", err)) {
        return ERR_IO;
    }
    return 0;
fail:
    PQclear(PQexec(db, "ROLLBACK"));
    return err->code ? (int)err->code : ERR_IO;
}

int spg_cmd_migrate(const struct spg_conf *c, FILE *out, struct err *err)
{
    PGconn *db = connect_conf(c, err);
    if (db == NULL) {
        return ERR_IO;
    }
    int from = 0, to = 0;
    int rc = migrate(db, &from, &to, err);
    if (rc == 0) {
        if (from == to) {
            fprintf(out, "schema is up to date (version %d)\n", to);
        } else {
            fprintf(out, "migrated the schema from version %d to %d\n", from, to);
        }
    }
    PQfinish(db);
    return rc;
}

/* ---- rows ------------------------------------------------------------- */

#define ROW_COLS                                                                                   \
    "id_hash, user_key, email, name, groups, claims, idp, sid, created_ms, last_seen_ms, "      \
    "expires_ms, token_exp_s, refresh_token, id_token"

static bool row_from(PGresult *r, int i, struct spg_row *out)
{
    const char *h = pg_col(r, i, 0);
    if (h == NULL || strlen(h) != 64) {
        return false;
    }
    memset(out, 0, sizeof *out);
    memcpy(out->id_hash, h, 65);
    /* The columns of ROW_COLS after id_hash, in order. */
    const char **text[] = { &out->user_key, &out->email, &out->name, &out->groups,
                            &out->claims,   &out->idp,   &out->sid };
    int64_t *num[] = { &out->created_ms, &out->last_seen_ms, &out->expires_ms,
                       &out->token_exp_s };
    int c = 1;
    for (size_t k = 0; k < sizeof text / sizeof text[0]; k++) {
        *text[k] = pg_col(r, i, c++);
    }
    for (size_t k = 0; k < sizeof num / sizeof num[0]; k++) {
        *num[k] = pg_col64(r, i, c++);
    }
    out->refresh_token = pg_col(r, i, c++);
    out->id_token = pg_col(r, i, c);
    return true;
}

static int preload(struct spg *p, PGconn *db, struct err *err)
{
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)wall_ms());
    const char *v[] = { now };
    PGresult *r = q(db, "SELECT " ROW_COLS " FROM sessions WHERE expires_ms > $1::bigint", 1, v);
    if (!pg_check(db, r, err, "loading sessions")) {
        PQclear(r);
        return ERR_IO;
    }
    /* User revocations first: a row loaded after them is checked against them. */
    PGresult *u = PQexec(db, "SELECT value, ts_ms FROM user_revocations");
    if (!pg_check(db, u, err, "loading user revocations")) {
        PQclear(r);
        PQclear(u);
        return ERR_IO;
    }
    for (int i = 0; i < PQntuples(u); i++) {
        p->hooks.revoke(p->hooks.arg, "user-note", PQgetvalue(u, i, 0), pg_col64(u, i, 1));
    }
    PQclear(u);
    for (int i = 0; i < PQntuples(r); i++) {
        struct spg_row row;
        if (row_from(r, i, &row)) {
            p->hooks.row(p->hooks.arg, &row, false);
        }
    }
    log_info("authn", "loaded %d live session(s) from PostgreSQL", PQntuples(r));
    PQclear(r);
    return 0;
}

/* ---- listener --------------------------------------------------------- */

static int load_one(struct spg *p, PGconn *db, const char *hash, bool update)
{
    const char *v[] = { hash };
    PGresult *r = q(db, "SELECT " ROW_COLS " FROM sessions WHERE id_hash = $1", 1, v);
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return -1;
    }
    struct spg_row row;
    if (PQntuples(r) == 1 && row_from(r, 0, &row)) {
        p->hooks.row(p->hooks.arg, &row, update);
    }
    PQclear(r);
    return 0;
}

/* Applies every change past p->seq. 0, or -1 when the connection failed. */
static int replay(struct spg *p, PGconn *db)
{
    for (;;) {
        char seq[24];
        snprintf(seq, sizeof seq, "%lld", (long long)p->seq);
        const char *v[] = { seq };
        PGresult *r = q(db,
                        "SELECT seq, kind, value, ts_ms, node FROM session_changes "
                        "WHERE seq > $1::bigint ORDER BY seq LIMIT 500",
                        1, v);
        if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
            PQclear(r);
            return -1;
        }
        int n = PQntuples(r);
        for (int i = 0; i < n; i++) {
            const char *kind = PQgetvalue(r, i, 1), *value = PQgetvalue(r, i, 2);
            bool mine = strcmp(PQgetvalue(r, i, 4), p->node) == 0;
            if (strcmp(kind, "new") == 0 || strcmp(kind, "update") == 0) {
                if (!mine && load_one(p, db, value, kind[0] == 'u') != 0) {
                    PQclear(r);
                    return -1;
                }
            } else {
                p->hooks.revoke(p->hooks.arg, kind, value, pg_col64(r, i, 3));
            }
            p->seq = pg_col64(r, i, 0);
        }
        PQclear(r);
        if (n < REPLAY_BATCH) {
            return 0;
        }
    }
}

/* Activity on other nodes moves the idle deadline here too. */
static int touch_sync(struct spg *p, PGconn *db, int64_t now)
{
    char since[24];
    snprintf(since, sizeof since, "%lld",
             (long long)(p->last_touch_sync_ms - 3 * TOUCH_SYNC_PERIOD_MS));
    const char *v[] = { since };
    PGresult *r = q(db, "SELECT id_hash, last_seen_ms FROM sessions WHERE last_seen_ms > $1::bigint",
                    1, v);
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        p->hooks.touch(p->hooks.arg, PQgetvalue(r, i, 0), pg_col64(r, i, 1));
    }
    PQclear(r);
    p->last_touch_sync_ms = now;
    return 0;
}

/* After a reconnect: were changes past p->seq purged before this node saw
 * them? Then the cache is rebuilt from the sessions table. */
static int check_gap(struct spg *p, PGconn *db)
{
    PGresult *r = PQexec(db, "SELECT (SELECT min(seq) FROM session_changes), "
                             "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                             "FROM session_changes_seq_seq)");
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return -1;
    }
    int64_t min = PQgetisnull(r, 0, 0) ? 0 : pg_col64(r, 0, 0);
    int64_t last = pg_col64(r, 0, 1);
    PQclear(r);
    bool gap = min > 0 ? min > p->seq + 1 : last > p->seq;
    if (!gap) {
        return 0;
    }
    log_warn("authn", "session changes %lld.. were purged before this node saw them: "
                      "reloading every session from PostgreSQL",
             (long long)p->seq + 1);
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)wall_ms());
    const char *v[] = { now };
    r = q(db, "SELECT " ROW_COLS " FROM sessions WHERE expires_ms > $1::bigint", 1, v);
    PGresult *u = PQexec(db, "SELECT value, ts_ms FROM user_revocations");
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK || u == NULL ||
        PQresultStatus(u) != PGRES_TUPLES_OK) {
        PQclear(r);
        PQclear(u);
        return -1;
    }
    for (int i = 0; i < PQntuples(u); i++) {
        p->hooks.revoke(p->hooks.arg, "user-note", PQgetvalue(u, i, 0), pg_col64(u, i, 1));
    }
    p->hooks.resync(p->hooks.arg, false);
    for (int i = 0; i < PQntuples(r); i++) {
        struct spg_row row;
        if (row_from(r, i, &row)) {
            p->hooks.row(p->hooks.arg, &row, true);
        }
    }
    p->hooks.resync(p->hooks.arg, true);
    PQclear(r);
    PQclear(u);
    p->seq = min > 0 ? min - 1 : last;
    return 0;
}

static PGconn *listen_connect(struct spg *p)
{
    struct err e = { 0 };
    PGconn *db = connect_db(&p->conf, p->password, &e);
    if (db == NULL) {
        return NULL;
    }
    /* LISTEN before the replay: a change committed in between is both
     * replayed and announced, never neither. */
    if (!exec_ok(db, "LISTEN " CHANNEL, &e) || check_gap(p, db) != 0 || replay(p, db) != 0 ||
        device_mirror_sync(db) != 0) {
        log_warn("authn", "PostgreSQL listener: %s", e.msg[0] ? e.msg : PQerrorMessage(db));
        PQfinish(db);
        return NULL;
    }
    return db;
}

static void *listener_main(void *arg)
{
    struct spg *p = arg;
    PGconn *db = p->lconn; /* connected and listening since spg_open */
    int64_t last_replay = wall_ms();
    bool was_down = false;

    p->lconn = NULL;
    while (!atomic_load(&p->stop)) {
        int64_t now = wall_ms();
        if (db == NULL) {
            db = listen_connect(p);
            if (db == NULL) {
                if (!was_down) {
                    log_error("authn", "PostgreSQL unreachable: sessions are served from the "
                                       "cache for at most %llu ms, sign-ins are refused",
                              (unsigned long long)p->conf.staleness_ms);
                }
                was_down = true;
                atomic_store(&p->listen_ok, false);
                for (int i = 0; i < 5 && !atomic_load(&p->stop); i++) {
                    usleep(100000);
                }
                continue;
            }
            if (was_down) {
                log_info("authn", "PostgreSQL reachable again: revocations replayed up to "
                                  "change %lld",
                         (long long)p->seq);
            }
            was_down = false;
            last_replay = now;
            atomic_store(&p->synced_ms, now);
            atomic_store(&p->listen_ok, true);
        }
        struct pollfd pfd = { .fd = PQsocket(db), .events = POLLIN };
        int pr = pfd.fd >= 0 ? poll(&pfd, 1, 200) : -1;
        bool fail = pr < 0 && errno != EINTR;
        bool notified = false;
        if (!fail && pr > 0) {
            fail = PQconsumeInput(db) == 0;
            PGnotify *nf;
            while (!fail && (nf = PQnotifies(db)) != NULL) {
                notified = true;
                PQfreemem(nf);
            }
        }
        now = wall_ms();
        if (!fail && (notified || now - last_replay >= REPLAY_PERIOD_MS)) {
            fail = replay(p, db) != 0 || device_mirror_sync(db) != 0;
            if (!fail && now - p->last_touch_sync_ms >= TOUCH_SYNC_PERIOD_MS) {
                fail = touch_sync(p, db, now) != 0;
            }
            if (!fail) {
                last_replay = now;
                atomic_store(&p->synced_ms, now);
            }
        }
        if (fail || PQstatus(db) != CONNECTION_OK) {
            log_error("authn", "PostgreSQL listener connection lost: %s",
                      PQerrorMessage(db)[0] ? PQerrorMessage(db) : "?");
            PQfinish(db);
            db = NULL;
            was_down = true;
            atomic_store(&p->listen_ok, false);
        }
    }
    PQfinish(db);
    return NULL;
}

/* ---- open / close ----------------------------------------------------- */

struct spg *spg_open(const struct spg_conf *c, const struct spg_hooks *h, struct err *err)
{
    struct spg *p = xcalloc(1, sizeof *p);
    unsigned char rnd[8];
    p->conf.conninfo = xstrdup(c->conninfo);
    p->conf.password_file = c->password_file ? xstrdup(c->password_file) : NULL;
    p->conf.migrate = c->migrate;
    p->conf.staleness_ms = c->staleness_ms;
    p->conf.query_timeout_ms = c->query_timeout_ms ? c->query_timeout_ms : 2000;
    p->hooks = *h;
    atomic_init(&p->stop, false);
    atomic_init(&p->synced_ms, 0);
    atomic_init(&p->listen_ok, false);
    atomic_init(&p->writer_ok, true);
    pthread_mutex_init(&p->omu, NULL);
    pthread_cond_init(&p->ocv, NULL);
    p->otail = &p->ohead;
    if (!codec_rand_bytes(rnd, sizeof rnd)) {
        err_set(err, ERR_CRYPTO, "no randomness for the node id");
        goto fail;
    }
    str_hex(rnd, sizeof rnd, p->node);
    if (c->password_file != NULL &&
        (p->password = pg_read_password(c->password_file, err)) == NULL) {
        goto fail;
    }
    p->wconn = connect_db(&p->conf, p->password, err);
    if (p->wconn == NULL) {
        goto fail;
    }
    int from = 0, to = 0;
    if (c->migrate) {
        if (migrate(p->wconn, &from, &to, err) != 0) {
            goto fail;
        }
        if (from != to) {
            log_info("authn", "PostgreSQL schema migrated from version %d to %d", from, to);
        }
    } else if (schema_version(p->wconn, &to, err) != 0) {
        goto fail;
    } else if (to != NMIGRATIONS) {
        err_set(err, ERR_CONFIG,
                "the database schema is version %d, this Gatehouse needs %d: run "
                "\"gatehouse db migrate\" (state.migrate is false)",
                to, NMIGRATIONS);
        goto fail;
    }
    /* The sequence first, then the rows: a change in between is replayed. */
    PGresult *r = PQexec(p->wconn, "SELECT coalesce(max(seq), 0) FROM session_changes");
    if (!pg_check(p->wconn, r, err, "reading the change sequence")) {
        PQclear(r);
        goto fail;
    }
    p->seq = pg_col64(r, 0, 0);
    PQclear(r);
    if (preload(p, p->wconn, err) != 0 ||
        device_mirror_load(p->wconn, c->staleness_ms, err) != 0) {
        goto fail;
    }
    p->last_touch_sync_ms = wall_ms();
    /* Listening before the node serves: no window without revocations. */
    p->lconn = listen_connect(p);
    if (p->lconn == NULL) {
        err_set(err, ERR_IO, "cannot LISTEN on PostgreSQL");
        goto fail;
    }
    atomic_store(&p->listen_ok, true);
    atomic_store(&p->synced_ms, wall_ms());
    if (pthread_create(&p->listener, NULL, listener_main, p) != 0) {
        err_set(err, ERR_IO, "cannot start the PostgreSQL listener thread");
        goto fail;
    }
    p->listener_started = true;
    if (pthread_create(&p->once_thread, NULL, once_main, p) != 0) {
        err_set(err, ERR_IO, "cannot start the PostgreSQL one-time value thread");
        goto fail;
    }
    p->once_started = true;
    return p;
fail:
    spg_close(p);
    return NULL;
}

void spg_close(struct spg *p)
{
    if (p == NULL) {
        return;
    }
    if (p->listener_started) {
        atomic_store(&p->stop, true);
        pthread_join(p->listener, NULL);
        device_mirror_stop();
    }
    if (p->once_started) {
        pthread_mutex_lock(&p->omu);
        atomic_store(&p->stop, true);
        pthread_cond_signal(&p->ocv);
        pthread_mutex_unlock(&p->omu);
        pthread_join(p->once_thread, NULL);
    }
    while (p->ohead != NULL) { /* never run: their requesters hear "failed" */
        struct spg_once_job *j = p->ohead;
        p->ohead = j->next;
        once_finish(j, SPG_ONCE_FAILED, "shutting down");
    }
    PQfinish(p->wconn);
    PQfinish(p->lconn);
    PQfinish(p->oconn);
    pthread_mutex_destroy(&p->omu);
    pthread_cond_destroy(&p->ocv);
    pg_password_free(p->password);
    spg_conf_fini(&p->conf);
    free(p);
}

int64_t spg_synced_ms(const struct spg *p)
{
    return atomic_load(&((struct spg *)p)->synced_ms);
}

bool spg_ok(const struct spg *p, int64_t now_ms)
{
    struct spg *m = (struct spg *)p;
    return atomic_load(&m->listen_ok) && atomic_load(&m->writer_ok) &&
           now_ms - atomic_load(&m->synced_ms) <= OK_WITHIN_MS;
}

/* ---- writer ----------------------------------------------------------- */

static bool writer_conn(struct spg *p)
{
    if (p->wconn != NULL && PQstatus(p->wconn) == CONNECTION_OK) {
        return true;
    }
    PQfinish(p->wconn);
    struct err e = { 0 };
    p->wconn = connect_db(&p->conf, p->password, &e);
    if (p->wconn == NULL) {
        return false;
    }
    log_info("authn", "PostgreSQL writer connection restored");
    return true;
}

static bool change(PGconn *db, const char *kind, const char *value, const char *ts,
                   const char *node, struct err *err)
{
    const char *v[] = { kind, value, ts, node };
    PGresult *r = q(db,
                    "INSERT INTO session_changes (kind, value, ts_ms, node) "
                    "VALUES ($1, $2, $3::bigint, $4)",
                    4, v);
    bool ok = pg_check(db, r, err, "appending a session change");
    PQclear(r);
    return ok;
}

static bool put_op(struct spg *p, const struct spg_op *o, const char *ts, struct err *err)
{
    const struct spg_row *w = &o->row;
    PGresult *r;
    if (o->kind == SPG_INSERT) {
        char c[24], l[24], e[24], t[24];
        snprintf(c, sizeof c, "%lld", (long long)w->created_ms);
        snprintf(l, sizeof l, "%lld", (long long)w->last_seen_ms);
        snprintf(e, sizeof e, "%lld", (long long)w->expires_ms);
        snprintf(t, sizeof t, "%lld", (long long)w->token_exp_s);
        const char *v[] = { w->id_hash, w->user_key, w->email, w->name,
                            w->groups ? w->groups : "[]", w->claims ? w->claims : "{}",
                            w->idp, w->sid, c, l, e, t, w->refresh_token, w->id_token };
        r = q(p->wconn,
              "INSERT INTO sessions (" ROW_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
              "$9::bigint, $10::bigint, $11::bigint, $12::bigint, $13, $14) "
              "ON CONFLICT (id_hash) DO NOTHING",
              14, v);
    } else if (o->kind == SPG_UPDATE) {
        char t[24];
        snprintf(t, sizeof t, "%lld", (long long)w->token_exp_s);
        const char *v[] = { w->refresh_token, t, w->email, w->name,
                            w->groups ? w->groups : "[]", w->id_hash };
        r = q(p->wconn,
              "UPDATE sessions SET refresh_token = $1, token_exp_s = $2::bigint, email = $3, "
              "name = $4, groups = $5, refresh_lease_ms = 0 WHERE id_hash = $6",
              6, v);
    } else {
        const char *v[] = { w->id_hash };
        r = q(p->wconn, "DELETE FROM sessions WHERE id_hash = $1", 1, v);
    }
    bool ok = pg_check(p->wconn, r, err, "writing a session");
    PQclear(r);
    if (!ok) {
        return false;
    }
    const char *kind = o->kind == SPG_INSERT ? "new" : o->kind == SPG_UPDATE ? "update" : "id";
    return change(p->wconn, kind, w->id_hash, ts, p->node, err);
}

static int write_once(struct spg *p, const struct spg_op *ops, size_t nops,
                      const struct spg_touch *t, size_t nt);

/* A connection the server dropped (restart, failover) still looks fine until
 * it is used: one retry on a fresh connection hides that from the callers. */
int spg_write(struct spg *p, const struct spg_op *ops, size_t nops, const struct spg_touch *t,
              size_t nt)
{
    p->retrying = false;
    int rc = write_once(p, ops, nops, t, nt);
    if (rc != 0 && p->wconn == NULL) {
        p->retrying = true;
        rc = write_once(p, ops, nops, t, nt);
    }
    return rc;
}

static int write_once(struct spg *p, const struct spg_op *ops, size_t nops,
                      const struct spg_touch *t, size_t nt)
{
    struct err e = { 0 };
    char ts[24];
    snprintf(ts, sizeof ts, "%lld", (long long)wall_ms());
    if (!writer_conn(p)) {
        if (atomic_exchange(&p->writer_ok, false)) {
            log_error("authn", "PostgreSQL writer unreachable: session writes are kept and "
                               "retried");
        }
        return -1;
    }
    if (nops == 0 && nt == 0) {
        /* Nothing to write: after a failure, check that the database answers
         * again so readiness comes back without waiting for traffic. */
        if (atomic_load(&p->writer_ok)) {
            return 0;
        }
        PGresult *r = PQexec(p->wconn, "SELECT 1");
        bool ok = pg_check(p->wconn, r, &e, "PostgreSQL");
        PQclear(r);
        if (!ok) {
            PQfinish(p->wconn);
            p->wconn = NULL;
            return -1;
        }
        atomic_store(&p->writer_ok, true);
        log_info("authn", "PostgreSQL session writes resumed");
        return 0;
    }
    bool ok = exec_ok(p->wconn, "BEGIN", &e);
    if (ok && nops > 0) {
        ok = exec_ok(p->wconn, "SELECT pg_advisory_xact_lock(" CHANGE_LOCK ")", &e);
    }
    for (size_t i = 0; ok && i < nops; i++) {
        ok = put_op(p, &ops[i], ts, &e);
    }
    for (size_t i = 0; ok && i < nt; i++) {
        char l[24];
        snprintf(l, sizeof l, "%lld", (long long)t[i].last_seen_ms);
        const char *v[] = { l, t[i].id_hash };
        PGresult *r = q(p->wconn,
                        "UPDATE sessions SET last_seen_ms = greatest(last_seen_ms, $1::bigint) "
                        "WHERE id_hash = $2",
                        2, v);
        ok = pg_check(p->wconn, r, &e, "recording activity");
        PQclear(r);
    }
    if (ok && nops > 0) {
        ok = exec_ok(p->wconn, "SELECT pg_notify('" CHANNEL "', '')", &e);
    }
    if (ok) {
        ok = exec_ok(p->wconn, "COMMIT", &e);
    } else {
        PQclear(PQexec(p->wconn, "ROLLBACK"));
    }
    if (!ok) {
        if (PQstatus(p->wconn) != CONNECTION_OK) {
            PQfinish(p->wconn);
            p->wconn = NULL;
            if (!p->retrying) {
                return -1; /* spg_write retries once on a fresh connection */
            }
        }
        if (atomic_exchange(&p->writer_ok, false)) {
            log_error("authn", "PostgreSQL session write failed, kept for retry: %s", e.msg);
        }
        return -1;
    }
    if (!atomic_exchange(&p->writer_ok, true)) {
        log_info("authn", "PostgreSQL session writes resumed");
    }
    return 0;
}

void spg_purge(struct spg *p, int64_t now_ms, uint64_t idle_timeout_ms)
{
    if (p->wconn == NULL || PQstatus(p->wconn) != CONNECTION_OK) {
        return;
    }
    char now[24], idle[24], old[24];
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    snprintf(idle, sizeof idle, "%llu", (unsigned long long)idle_timeout_ms);
    snprintf(old, sizeof old, "%lld", (long long)(now_ms - 86400000));
    const char *v[] = { now, idle };
    PQclear(q(p->wconn,
              "DELETE FROM sessions WHERE expires_ms <= $1::bigint OR "
              "last_seen_ms + $2::bigint + 60000 <= $1::bigint",
              2, v));
    const char *v2[] = { old };
    PQclear(q(p->wconn, "DELETE FROM session_changes WHERE ts_ms < $1::bigint", 1, v2));
    char nows[24];
    snprintf(nows, sizeof nows, "%lld", (long long)(now_ms / 1000));
    const char *v3[] = { nows };
    PQclear(q(p->wconn, "DELETE FROM once_values WHERE exp_s < $1::bigint", 1, v3));
}

/* ---- one-time values -------------------------------------------------- */

void spg_once_release(struct spg_once_job *j)
{
    if (j != NULL && atomic_fetch_sub(&j->refs, 1) == 1) {
        close(j->fd);
        free(j);
    }
}

/* The once thread's answer: the state, then the eventfd, then its reference. */
static void once_finish(struct spg_once_job *j, int state, const char *why)
{
    if (why != NULL) {
        snprintf(j->err, sizeof j->err, "%s", why);
    }
    atomic_store(&j->state, state);
    uint64_t one = 1;
    ssize_t n = write(j->fd, &one, sizeof one);
    (void)n; /* an eventfd counter does not fill up with one write */
    spg_once_release(j);
}

static struct spg_once_job *job_submit(struct spg *p, struct spg_once_job *tmpl,
                                       struct err *err)
{
    if (!spg_ok(p, wall_ms())) {
        /* Known out of reach (the listener thread says so): refused now. */
        err_set(err, ERR_IO, "PostgreSQL unreachable");
        return NULL;
    }
    struct spg_once_job *j = xcalloc(1, sizeof *j);
    j->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (j->fd < 0) {
        err_set(err, ERR_IO, "eventfd: %s", strerror(errno));
        free(j);
        return NULL;
    }
    atomic_init(&j->refs, 2);
    atomic_init(&j->state, SPG_ONCE_PENDING);
    j->lease = tmpl->lease;
    memcpy(j->id_hash, tmpl->id_hash, sizeof j->id_hash);
    memcpy(j->h, tmpl->h, 32);
    j->exp_s = tmpl->exp_s;
    j->deadline_ms = mono_ms() + (int64_t)p->conf.query_timeout_ms;
    pthread_mutex_lock(&p->omu);
    *p->otail = j;
    p->otail = &j->next;
    pthread_cond_signal(&p->ocv);
    pthread_mutex_unlock(&p->omu);
    return j;
}

struct spg_once_job *spg_once_submit(struct spg *p, const unsigned char h[32], int64_t exp_s,
                                     struct err *err)
{
    struct spg_once_job t = { .exp_s = exp_s };
    memcpy(t.h, h, 32);
    return job_submit(p, &t, err);
}

struct spg_once_job *spg_lease_submit(struct spg *p, const char id_hash[65], int64_t token_exp_s,
                                      struct err *err)
{
    struct spg_once_job t = { .lease = true, .exp_s = token_exp_s };
    snprintf(t.id_hash, sizeof t.id_hash, "%s", id_hash);
    return job_submit(p, &t, err);
}

int spg_once_fd(const struct spg_once_job *j)
{
    return j->fd;
}

int spg_once_state(const struct spg_once_job *j, const char **why)
{
    int st = atomic_load(&((struct spg_once_job *)j)->state);
    if (why != NULL) {
        *why = st == SPG_ONCE_FAILED ? j->err : st == SPG_ONCE_PENDING ? "no answer in time" : "";
    }
    return st;
}

uint64_t spg_query_timeout_ms(const struct spg *p)
{
    return p->conf.query_timeout_ms;
}

/* Waits (poll, never past deadline) until db has a whole answer. 0, -2 when
 * the connection broke, -3 at the deadline. */
static int await_db(PGconn *db, int64_t deadline, struct err *err)
{
    while (PQisBusy(db)) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            err_set(err, ERR_IO, "PostgreSQL did not answer in time");
            return -3;
        }
        struct pollfd pfd = { .fd = PQsocket(db), .events = POLLIN };
        if (pfd.fd < 0 || (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) ||
            PQconsumeInput(db) == 0) {
            err_set(err, ERR_IO, "PostgreSQL: connection lost");
            return -2;
        }
    }
    return 0;
}

/* The first use of the key on any node: INSERT ... ON CONFLICT DO NOTHING
 * decides. 0 with *fresh, -1 refused by the server, -2 connection broken, -3
 * no answer by the deadline. */
static int once_query(PGconn *db, const char *sql, int n, const char *const *v, int64_t deadline,
                      bool *fresh, struct err *err)
{
    if (!PQsendQueryParams(db, sql, n, NULL, v, NULL, NULL, 0)) {
        err_set(err, ERR_IO, "PostgreSQL: connection lost");
        return -2;
    }
    int rc = -1;
    bool first = true;
    for (;;) {
        int w = await_db(db, deadline, err);
        if (w != 0) {
            return w;
        }
        PGresult *r = PQgetResult(db);
        if (r == NULL) {
            break;
        }
        if (first && pg_check(db, r, err, "recording a one-time value")) {
            const char *rows = PQcmdTuples(r);
            *fresh = rows != NULL && strcmp(rows, "1") == 0;
            rc = 0;
        }
        first = false;
        PQclear(r);
    }
    return rc;
}

static void once_run(struct spg *p, struct spg_once_job *j)
{
    char hex[2 * 32 + 3] = "\\x";
    str_hex(j->h, 32, hex + 2);
    char exps[24], now[24];
    snprintf(exps, sizeof exps, "%lld", (long long)j->exp_s);
    snprintf(now, sizeof now, "%lld", (long long)wall_ms());
    const char *v[] = { hex, exps };
    const char *lv[] = { j->id_hash, now, exps };
    /* A one-time value: the first INSERT of its hash wins. A refresh lease:
     * taken while none is live and the tokens are still those the node holds
     * (another node's refresh moved token_exp_s on). */
    const char *sql = j->lease
                          ? "UPDATE sessions SET refresh_lease_ms = $2::bigint + " REFRESH_LEASE_MS
                            " WHERE id_hash = $1 AND refresh_lease_ms <= $2::bigint "
                            "AND token_exp_s <= $3::bigint"
                          : "INSERT INTO once_values (key_hash, exp_s) VALUES ($1::bytea, "
                            "$2::bigint) ON CONFLICT (key_hash) DO NOTHING";
    int nv = j->lease ? 3 : 2;
    const char *const *vals = j->lease ? lv : v;
    struct err e = { 0 };
    for (int attempt = 0; attempt < 2; attempt++) {
        if (mono_ms() >= j->deadline_ms) {
            once_finish(j, SPG_ONCE_FAILED, "PostgreSQL did not answer in time");
            return;
        }
        if (p->oconn == NULL || PQstatus(p->oconn) != CONNECTION_OK) {
            PQfinish(p->oconn);
            p->oconn = connect_db(&p->conf, p->password, &e);
            if (p->oconn == NULL) {
                once_finish(j, SPG_ONCE_FAILED, e.msg);
                return;
            }
        }
        bool fresh = false;
        int rc = once_query(p->oconn, sql, nv, vals, j->deadline_ms, &fresh, &e);
        if (rc == 0) {
            once_finish(j, fresh ? SPG_ONCE_FRESH : SPG_ONCE_USED, NULL);
            return;
        }
        if (rc != -1) {
            /* Broken, or a server that does not answer: a new connection
             * next time (a dropped one is tried again at once). */
            PQfinish(p->oconn);
            p->oconn = NULL;
            if (rc == -2) {
                continue;
            }
        }
        break;
    }
    once_finish(j, SPG_ONCE_FAILED, e.msg);
}

static void *once_main(void *arg)
{
    struct spg *p = arg;
    pthread_mutex_lock(&p->omu);
    while (!atomic_load(&p->stop)) {
        struct spg_once_job *j = p->ohead;
        if (j == NULL) {
            pthread_cond_wait(&p->ocv, &p->omu);
            continue;
        }
        p->ohead = j->next;
        if (p->ohead == NULL) {
            p->otail = &p->ohead;
        }
        j->next = NULL;
        pthread_mutex_unlock(&p->omu);
        once_run(p, j);
        pthread_mutex_lock(&p->omu);
    }
    pthread_mutex_unlock(&p->omu);
    return NULL;
}

int spg_once(struct spg *p, const unsigned char h[32], int64_t exp_s, bool *fresh,
             struct err *err)
{
    *fresh = false;
    struct spg_once_job *j = spg_once_submit(p, h, exp_s, err);
    if (j == NULL) {
        return -1;
    }
    struct pollfd pfd = { .fd = j->fd, .events = POLLIN };
    int64_t deadline = mono_ms() + (int64_t)p->conf.query_timeout_ms;
    while (spg_once_state(j, NULL) == SPG_ONCE_PENDING && mono_ms() < deadline) {
        (void)poll(&pfd, 1, (int)(deadline - mono_ms()));
    }
    const char *why = NULL;
    int st = spg_once_state(j, &why);
    int rc = st == SPG_ONCE_FRESH || st == SPG_ONCE_USED ? 0 : -1;
    *fresh = st == SPG_ONCE_FRESH;
    if (rc != 0) {
        err_set(err, ERR_IO, "%s", why);
    }
    spg_once_release(j);
    return rc;
}

/* ---- administration --------------------------------------------------- */

int spg_admin_list(const struct spg_conf *c, int64_t now_ms, spg_list_fn *each, void *arg,
                   struct err *err)
{
    PGconn *db = connect_conf(c, err);
    if (db == NULL) {
        return ERR_IO;
    }
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    const char *v[] = { now };
    PGresult *r = q(db,
                    "SELECT id_hash, user_key, email, idp, created_ms, last_seen_ms, expires_ms, "
                    "groups FROM sessions WHERE expires_ms > $1::bigint ORDER BY created_ms",
                    1, v);
    int rc = 0;
    if (!pg_check(db, r, err, "listing sessions")) {
        rc = ERR_IO;
    }
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        each(arg, pg_col(r, i, 0), pg_col(r, i, 1), pg_col(r, i, 2), pg_col(r, i, 3),
             pg_col64(r, i, 4), pg_col64(r, i, 5), pg_col64(r, i, 6), pg_col(r, i, 7));
    }
    PQclear(r);
    PQfinish(db);
    return rc;
}

int spg_admin_revoke(const struct spg_conf *c, const char *user, const char *id,
                     spg_user_match_fn *match, int64_t now_ms, size_t *count, struct err *err)
{
    *count = 0;
    PGconn *db = connect_conf(c, err);
    if (db == NULL) {
        return ERR_IO;
    }
    char ts[24], node[] = "cli";
    snprintf(ts, sizeof ts, "%lld", (long long)now_ms);
    int rc = ERR_IO;
    PGresult *r = NULL;
    if (!exec_ok(db, "BEGIN", err) ||
        !exec_ok(db, "SELECT pg_advisory_xact_lock(" CHANGE_LOCK ")", err)) {
        goto out;
    }
    if (id != NULL) {
        /* A prefix match without LIKE patterns: id is lower-case hex only. */
        char len[24];
        snprintf(len, sizeof len, "%zu", strlen(id));
        const char *v[] = { len, id };
        r = q(db, "SELECT id_hash FROM sessions WHERE substr(id_hash, 1, $1::integer) = $2", 2,
              v);
    } else {
        r = PQexec(db, "SELECT id_hash, user_key, email, idp FROM sessions");
    }
    if (!pg_check(db, r, err, "finding sessions")) {
        goto out;
    }
    size_t n = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        if (user == NULL || match(user, pg_col(r, i, 1), pg_col(r, i, 2), pg_col(r, i, 3))) {
            n++;
        }
    }
    if (id != NULL && n > 1) {
        rc = err_set(err, ERR_PARSE, "session id \"%s\" is ambiguous (%zu sessions)", id, n);
        goto out;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        if (user != NULL && !match(user, pg_col(r, i, 1), pg_col(r, i, 2), pg_col(r, i, 3))) {
            continue;
        }
        const char *v[] = { PQgetvalue(r, i, 0) };
        PGresult *d = q(db, "DELETE FROM sessions WHERE id_hash = $1", 1, v);
        bool ok = pg_check(db, d, err, "deleting a session");
        PQclear(d);
        if (!ok || !change(db, "id", v[0], ts, node, err)) {
            goto out;
        }
    }
    if (user != NULL) {
        /* Also sessions created but not yet written, and bearer tokens. */
        const char *v[] = { user, ts };
        PGresult *u = q(db,
                        "INSERT INTO user_revocations (value, ts_ms) VALUES ($1, $2::bigint) "
                        "ON CONFLICT (value) DO UPDATE SET ts_ms = "
                        "greatest(user_revocations.ts_ms, EXCLUDED.ts_ms)",
                        2, v);
        bool ok = pg_check(db, u, err, "recording the revocation");
        PQclear(u);
        if (!ok || !change(db, "user", user, ts, node, err)) {
            goto out;
        }
    }
    if (!exec_ok(db, "SELECT pg_notify('" CHANNEL "', '')", err) ||
        !exec_ok(db, "COMMIT", err)) {
        goto out;
    }
    *count = n;
    rc = 0;
out:
    if (rc != 0 && PQstatus(db) == CONNECTION_OK) {
        PQclear(PQexec(db, "ROLLBACK"));
    }
    PQclear(r);
    PQfinish(db);
    return rc;
}
