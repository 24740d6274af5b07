/* authn/session_pg.c - sessions, revocations and their change feed in
 * PostgreSQL (see session_pg.h): configuration, connections, migrations,
 * the rows and their preload at open, open and close, the writer's
 * statements (used only by session.c's writer thread) and the CLI's list and
 * revoke. The listener thread and the change feed are in session_pg_feed.c,
 * the one-time values and refresh leases in session_pg_once.c
 * (session_pg_int.h is what the three share). Statements are static text
 * with bound parameters. */
#include "session_pg.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "session_pg_int.h"

#define CHANGE_LOCK  "7263001" /* pg_advisory_xact_lock key: appenders of session_changes */
#define MIGRATE_LOCK "7263000" /* pg_advisory_xact_lock key: migrations */
#define OK_WITHIN_MS 3000      /* readiness: synced this recently */

int64_t spg_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t spg_mono_ms(void)
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
        conf_error(d, conf_get(state, "postgres"),
                   "\"postgres\" is not a libpq connection string: %s",
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
        char *base = colon ? xasprintf("%.*s****%s", (int)(colon + 1 - ci), ci, at) : xstrdup(ci);
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

PGconn *spg_connect_db(const struct spg_conf *c, const char *password, struct err *err)
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

bool spg_exec_ok(PGconn *db, const char *sql, struct err *err)
{
    PGresult *r = PQexec(db, sql);
    bool ok = pg_check(db, r, err, "PostgreSQL");
    PQclear(r);
    return ok;
}

PGresult *spg_q(PGconn *db, const char *sql, int n, const char *const *v)
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
    if (!spg_exec_ok(db, "BEGIN", err)) {
        return ERR_IO;
    }
    if (!spg_exec_ok(db, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ")", err) ||
        !spg_exec_ok(db,
                     "CREATE TABLE IF NOT EXISTS gatehouse_schema ("
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
        if (!spg_exec_ok(db, migrations[i], err)) {
            goto fail;
        }
        PGresult *r =
            spg_q(db, "INSERT INTO gatehouse_schema (version) VALUES ($1::integer)", 1, p);
        bool ok = pg_check(db, r, err, "recording the schema version");
        PQclear(r);
        if (!ok) {
            goto fail;
        }
        *to = i + 1;
    }
    if (!spg_exec_ok(db, "COMMIT", err)) {
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

bool spg_row_from(PGresult *r, int i, struct spg_row *out)
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
    int64_t *num[] = { &out->created_ms, &out->last_seen_ms, &out->expires_ms, &out->token_exp_s };
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

static int sdb_preload(struct spg *p, PGconn *db, struct err *err)
{
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)spg_wall_ms());
    const char *v[] = { now };
    PGresult *r =
        spg_q(db, "SELECT " ROW_COLS " FROM sessions WHERE expires_ms > $1::bigint", 1, v);
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
        if (spg_row_from(r, i, &row)) {
            p->hooks.row(p->hooks.arg, &row, false);
        }
    }
    log_info("authn", "loaded %d live session(s) from PostgreSQL", PQntuples(r));
    PQclear(r);
    return 0;
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
    p->wconn = spg_connect_db(&p->conf, p->password, err);
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
    if (sdb_preload(p, p->wconn, err) != 0 ||
        device_mirror_load(p->wconn, c->staleness_ms, err) != 0) {
        goto fail;
    }
    p->last_touch_sync_ms = spg_wall_ms();
    /* Listening before the node serves: no window without revocations. */
    p->lconn = spg_listen_connect(p);
    if (p->lconn == NULL) {
        err_set(err, ERR_IO, "cannot LISTEN on PostgreSQL");
        goto fail;
    }
    atomic_store(&p->listen_ok, true);
    atomic_store(&p->synced_ms, spg_wall_ms());
    if (pthread_create(&p->listener, NULL, spg_listener_main, p) != 0) {
        err_set(err, ERR_IO, "cannot start the PostgreSQL listener thread");
        goto fail;
    }
    p->listener_started = true;
    if (pthread_create(&p->once_thread, NULL, spg_once_main, p) != 0) {
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
        spg_once_finish(j, SPG_ONCE_FAILED, "shutting down");
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
    p->wconn = spg_connect_db(&p->conf, p->password, &e);
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
    PGresult *r = spg_q(db,
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
        const char *v[] = { w->id_hash,
                            w->user_key,
                            w->email,
                            w->name,
                            w->groups ? w->groups : "[]",
                            w->claims ? w->claims : "{}",
                            w->idp,
                            w->sid,
                            c,
                            l,
                            e,
                            t,
                            w->refresh_token,
                            w->id_token };
        r = spg_q(p->wconn,
                  "INSERT INTO sessions (" ROW_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
                  "$9::bigint, $10::bigint, $11::bigint, $12::bigint, $13, $14) "
                  "ON CONFLICT (id_hash) DO NOTHING",
                  14, v);
    } else if (o->kind == SPG_UPDATE) {
        char t[24];
        snprintf(t, sizeof t, "%lld", (long long)w->token_exp_s);
        const char *v[] = { w->refresh_token, t, w->email, w->name, w->groups ? w->groups : "[]",
                            w->id_hash };
        r = spg_q(p->wconn,
                  "UPDATE sessions SET refresh_token = $1, token_exp_s = $2::bigint, email = $3, "
                  "name = $4, groups = $5, refresh_lease_ms = 0 WHERE id_hash = $6",
                  6, v);
    } else {
        const char *v[] = { w->id_hash };
        r = spg_q(p->wconn, "DELETE FROM sessions WHERE id_hash = $1", 1, v);
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
    snprintf(ts, sizeof ts, "%lld", (long long)spg_wall_ms());
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
    bool ok = spg_exec_ok(p->wconn, "BEGIN", &e);
    if (ok && nops > 0) {
        ok = spg_exec_ok(p->wconn, "SELECT pg_advisory_xact_lock(" CHANGE_LOCK ")", &e);
    }
    for (size_t i = 0; ok && i < nops; i++) {
        ok = put_op(p, &ops[i], ts, &e);
    }
    for (size_t i = 0; ok && i < nt; i++) {
        char l[24];
        snprintf(l, sizeof l, "%lld", (long long)t[i].last_seen_ms);
        const char *v[] = { l, t[i].id_hash };
        PGresult *r = spg_q(p->wconn,
                            "UPDATE sessions SET last_seen_ms = greatest(last_seen_ms, $1::bigint) "
                            "WHERE id_hash = $2",
                            2, v);
        ok = pg_check(p->wconn, r, &e, "recording activity");
        PQclear(r);
    }
    if (ok && nops > 0) {
        ok = spg_exec_ok(p->wconn, "SELECT pg_notify('" CHANNEL "', '')", &e);
    }
    if (ok) {
        ok = spg_exec_ok(p->wconn, "COMMIT", &e);
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
    PQclear(spg_q(p->wconn,
                  "DELETE FROM sessions WHERE expires_ms <= $1::bigint OR "
                  "last_seen_ms + $2::bigint + 60000 <= $1::bigint",
                  2, v));
    const char *v2[] = { old };
    PQclear(spg_q(p->wconn, "DELETE FROM session_changes WHERE ts_ms < $1::bigint", 1, v2));
    char nows[24];
    snprintf(nows, sizeof nows, "%lld", (long long)(now_ms / 1000));
    const char *v3[] = { nows };
    PQclear(spg_q(p->wconn, "DELETE FROM once_values WHERE exp_s < $1::bigint", 1, v3));
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
    PGresult *r =
        spg_q(db,
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
    if (!spg_exec_ok(db, "BEGIN", err) ||
        !spg_exec_ok(db, "SELECT pg_advisory_xact_lock(" CHANGE_LOCK ")", err)) {
        goto out;
    }
    if (id != NULL) {
        /* A prefix match without LIKE patterns: id is lower-case hex only. */
        char len[24];
        snprintf(len, sizeof len, "%zu", strlen(id));
        const char *v[] = { len, id };
        r = spg_q(db, "SELECT id_hash FROM sessions WHERE substr(id_hash, 1, $1::integer) = $2", 2,
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
        PGresult *d = spg_q(db, "DELETE FROM sessions WHERE id_hash = $1", 1, v);
        bool ok = pg_check(db, d, err, "deleting a session");
        PQclear(d);
        if (!ok || !change(db, "id", v[0], ts, node, err)) {
            goto out;
        }
    }
    if (user != NULL) {
        /* Also sessions created but not yet written, and bearer tokens. */
        const char *v[] = { user, ts };
        PGresult *u = spg_q(db,
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
    if (!spg_exec_ok(db, "SELECT pg_notify('" CHANNEL "', '')", err) ||
        !spg_exec_ok(db, "COMMIT", err)) {
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
