/* policy/dl_store_pg.c - the decision log of a fleet (state.postgres). Each
 * node keeps its own hash chain in its local SQLite database (nothing on the
 * request path waits for PostgreSQL); a shipper thread copies the committed
 * records, as their exact JSON lines, into the shared table decision_records
 * keyed by (node, seq) (hash-partitioned by node; created by the schema
 * migrations, `gatehouse db migrate`). The local database is the spool: while
 * PostgreSQL is away records stay there and are shipped when it returns, so
 * none is lost. With index: deferred the records are shipped from the JSON-lines
 * file, the log of record, instead. `audit query` reads every node's records from
 * PostgreSQL and `audit verify` checks every node's chain there. Bound parameters
 * only. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "core/pg.h"
#include "decision_log_int.h"

#define SHIP_PERIOD_MS 1000
#define SHIP_BATCH     500

struct dl_ship {
    struct decision_log_conf conf; /* sqlite, pg_conninfo, pg_password_file, node */
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    PGconn *db;
    int64_t shipped;      /* highest seq known in PostgreSQL; -1: unknown */
    int64_t ckpt_shipped; /* highest checkpoint seq there; -1: unknown */
    uint64_t retain_ms;   /* decision_log.retention (0: keep) */
    int64_t last_retain_ms;
    bool down_logged;
    off_t file_at; /* index: deferred: where the line after `shipped` starts, if known */
};

static PGconn *dl_pg_connect(const struct decision_log_conf *c, struct err *err)
{
    return pg_connect_file(c->pg_conninfo, c->pg_password_file, "gatehouse-decision-log", err);
}

static const char *pg_msg(PGconn *db, PGresult *r)
{
    return r ? PQresultErrorMessage(r) : PQerrorMessage(db);
}

/* The exact line the JSON-lines sink writes for a row. */
static void row_line(const struct dl_row *row, struct sbuf *b)
{
    b->len = 0;
    dl_canonical(&row->rec, row->seq, row->prev_hash ? row->prev_hash : DL_GENESIS, b);
    dl_sbuf_printf(b, ",\"hash\":\"%s\"}", row->hash ? row->hash : "");
}

/* Ships this node's signed checkpoints past the last one in PostgreSQL (each
 * once the records it signs are there), so that `audit verify` on any node
 * checks this chain against them. 0, or -1 (tried again next round). */
static int ship_checkpoints(struct dl_ship *s, sqlite3 *ldb)
{
    const char *node = s->conf.node;
    if (s->ckpt_shipped < 0) {
        const char *v[] = { node };
        PGresult *r = PQexecParams(s->db,
                                   "SELECT coalesce(max(seq), 0) FROM decision_checkpoints "
                                   "WHERE node = $1",
                                   1, NULL, v, NULL, NULL, 0);
        bool ok = pg_res_ok(r);
        if (ok) {
            s->ckpt_shipped = pg_col64(r, 0, 0);
        }
        PQclear(r);
        if (!ok) {
            return -1;
        }
    }
    struct dl_checkpoint *list = NULL;
    size_t n = dl_ckpt_load(ldb, false, &list);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const struct dl_checkpoint *c = &list[i];
        if ((int64_t)c->seq <= s->ckpt_shipped || (int64_t)c->seq > s->shipped) {
            continue;
        }
        char *json = dl_ckpt_json(c);
        char seq[24];
        snprintf(seq, sizeof seq, "%llu", (unsigned long long)c->seq);
        const char *v[] = { node, seq, c->hash, json };
        PGresult *r = PQexecParams(s->db,
                                   "INSERT INTO decision_checkpoints (node, seq, hash, line) "
                                   "VALUES ($1, $2::bigint, $3, $4) ON CONFLICT DO NOTHING",
                                   4, NULL, v, NULL, NULL, 0);
        if (pg_res_ok(r)) {
            s->ckpt_shipped = (int64_t)c->seq;
        } else {
            log_warn("policy", "decision log: shipping checkpoint %s: %s", seq, pg_msg(s->db, r));
            rc = -1;
        }
        PQclear(r);
        free(json);
    }
    free(list);
    return rc;
}

/* One round: ships up to SHIP_BATCH committed records. 1 when more wait, 0 when
 * caught up, -1 on failure (retried next period). */
/* index: deferred: the records come from the file (the log of record) as the very lines
 * it holds, from the line after the last one shipped (found again by its seq when the
 * file was cut by retention or the node restarted). *last gets the highest seq
 * inserted, *n how many. Inside the caller's PostgreSQL transaction. 0 or -1. */
static int ship_from_file(struct dl_ship *s, int64_t *last, int *n, PGresult **res)
{
    int fd = open(s->conf.file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT ? 0 : -1;
    }
    struct stat sb;
    struct err e = { 0 };
    uint64_t seq = 0;
    int64_t ts = 0;
    ssize_t got = 0;
    int rc = fstat(fd, &sb) == 0 ? 0 : -1;
    /* The remembered offset holds if the line there is the next one. */
    off_t off = s->file_at;
    bool hint = false;
    if (rc == 0 && off > 0) {
        char head[512];
        got = pread(fd, head, sizeof head, off);
        hint = got > 0 && dl_line_head(head, (size_t)got, &seq, &ts) &&
               seq == (uint64_t)s->shipped + 1;
    }
    if (rc == 0 && !hint) {
        rc = dl_file_seek_after(fd, sb.st_size, (uint64_t)s->shipped, &off, &e) == 0 ? 0 : -1;
    }
    char *buf = rc == 0 ? xmalloc(1024 * 1024) : NULL;
    while (rc == 0 && *n < SHIP_BATCH && off < sb.st_size) {
        size_t want = sb.st_size - off < 1024 * 1024 ? (size_t)(sb.st_size - off) : 1024 * 1024;
        got = pread(fd, buf, want, off);
        if (got <= 0) {
            rc = got < 0 ? -1 : 0;
            break;
        }
        size_t pos = 0;
        const char *nl;
        while (*n < SHIP_BATCH && (nl = memchr(buf + pos, '\n', (size_t)got - pos)) != NULL) {
            size_t len = (size_t)(nl - (buf + pos));
            if (!dl_line_head(buf + pos, len, &seq, &ts)) {
                if (!s->down_logged) { /* once, until shipping resumes: retried every second */
                    log_error("policy",
                              "decision log shipping: %s: byte %lld is not a decision "
                              "record (run audit verify)",
                              s->conf.file, (long long)(off + (off_t)pos));
                }
                rc = -1;
                break;
            }
            buf[pos + len] = '\0';
            char seqt[24], tst[24];
            snprintf(seqt, sizeof seqt, "%llu", (unsigned long long)seq);
            snprintf(tst, sizeof tst, "%lld", (long long)ts);
            const char *v[] = { s->conf.node, seqt, tst, buf + pos };
            *res = PQexecParams(s->db,
                                "INSERT INTO decision_records (node, seq, ts_us, line) "
                                "VALUES ($1, $2::bigint, $3::bigint, $4) ON CONFLICT DO NOTHING",
                                4, NULL, v, NULL, NULL, 0);
            if (!pg_res_ok(*res)) {
                rc = -1;
                break;
            }
            PQclear(*res);
            *res = NULL;
            *last = (int64_t)seq;
            (*n)++;
            pos += len + 1;
        }
        if (pos == 0) {
            break; /* a torn last line: the writer is still appending it */
        }
        off += (off_t)pos;
    }
    free(buf);
    close(fd);
    s->file_at = rc == 0 ? off : 0;
    return rc;
}

static int ship_once(struct dl_ship *s)
{
    if (s->db == NULL || PQstatus(s->db) != CONNECTION_OK) {
        PQfinish(s->db);
        struct err e = { 0 };
        s->db = dl_pg_connect(&s->conf, &e);
        if (s->db == NULL) {
            if (!s->down_logged) {
                log_error("policy",
                          "decision log: %s; records stay in %s and are shipped when "
                          "PostgreSQL returns",
                          e.msg, s->conf.sqlite);
                s->down_logged = true;
            }
            return -1;
        }
        s->shipped = -1;
        s->ckpt_shipped = -1;
    }
    const char *node = s->conf.node;
    if (s->shipped < 0) {
        const char *v[] = { node };
        PGresult *r = PQexecParams(s->db,
                                   "SELECT coalesce(max(seq), 0) FROM decision_records "
                                   "WHERE node = $1",
                                   1, NULL, v, NULL, NULL, 0);
        if (!pg_res_ok(r)) {
            if (!s->down_logged) {
                log_error("policy", "decision log shipping: %s", pg_msg(s->db, r));
                s->down_logged = true;
            }
            PQclear(r);
            PQfinish(s->db);
            s->db = NULL;
            return -1;
        }
        s->shipped = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
    }
    sqlite3 *ldb = NULL;
    struct err e = { 0 };
    if (dl_db_open(s->conf.sqlite, true, &ldb, &e) != 0) {
        log_warn("policy", "decision log shipping: %s", e.msg);
        return -1;
    }
    char sql[1024];
    snprintf(sql, sizeof sql,
             "SELECT seq, %s, prev_hash, hash FROM decisions WHERE seq > ?1 ORDER BY seq "
             "LIMIT %d",
             DL_COLUMNS, SHIP_BATCH);
    sqlite3_stmt *st = NULL;
    int rc = -1, n = 0;
    int64_t last = s->shipped;
    struct sbuf line = { 0 };
    PGresult *r = NULL;
    if (sqlite3_prepare_v2(ldb, sql, -1, &st, NULL) != SQLITE_OK) {
        goto out;
    }
    sqlite3_bind_int64(st, 1, s->shipped);
    r = PQexec(s->db, "BEGIN");
    if (!pg_res_ok(r)) {
        goto out;
    }
    PQclear(r);
    r = NULL;
    if (s->conf.deferred && ship_from_file(s, &last, &n, &r) != 0) {
        goto out;
    }
    while (!s->conf.deferred && sqlite3_step(st) == SQLITE_ROW) {
        struct dl_row row;
        dl_row_read(st, &row);
        row_line(&row, &line);
        char seq[24], ts[24];
        snprintf(seq, sizeof seq, "%llu", (unsigned long long)row.seq);
        snprintf(ts, sizeof ts, "%lld", (long long)row.rec.ts_us);
        const char *v[] = { node, seq, ts, line.p };
        r = PQexecParams(s->db,
                         "INSERT INTO decision_records (node, seq, ts_us, line) "
                         "VALUES ($1, $2::bigint, $3::bigint, $4) ON CONFLICT DO NOTHING",
                         4, NULL, v, NULL, NULL, 0);
        last = (int64_t)row.seq;
        dl_row_fini(&row);
        if (!pg_res_ok(r)) {
            goto out;
        }
        PQclear(r);
        r = NULL;
        n++;
    }
    r = PQexec(s->db, "COMMIT");
    if (!pg_res_ok(r)) {
        goto out;
    }
    if (s->down_logged) {
        log_info("policy", "decision log shipping to PostgreSQL resumed");
        s->down_logged = false;
    }
    s->shipped = last;
    rc = n == SHIP_BATCH ? 1 : 0;
    if (rc == 0 && ship_checkpoints(s, ldb) != 0) {
        s->ckpt_shipped = -1;
    }
out:
    if (rc < 0 && s->db != NULL) {
        if (!s->down_logged) {
            log_error("policy", "decision log shipping failed, retrying: %s", pg_msg(s->db, r));
            s->down_logged = true;
        }
        PQclear(r);
        r = NULL;
        if (PQstatus(s->db) == CONNECTION_OK) {
            PQclear(PQexec(s->db, "ROLLBACK"));
        } else {
            PQfinish(s->db);
            s->db = NULL;
        }
        s->shipped = -1;
        s->ckpt_shipped = -1;
    }
    PQclear(r);
    dl_sbuf_free(&line);
    sqlite3_finalize(st);
    sqlite3_close(ldb);
    return rc;
}

/* decision_log.retention applies to this node's shipped records too (hourly). */
static void retain_shipped(struct dl_ship *s)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    if (s->retain_ms == 0 || s->db == NULL || ms - s->last_retain_ms < 3600000) {
        return;
    }
    s->last_retain_ms = ms;
    char cutoff[24];
    snprintf(cutoff, sizeof cutoff, "%lld", (long long)(ms - (int64_t)s->retain_ms) * 1000);
    const char *v[] = { s->conf.node, cutoff };
    PQclear(PQexecParams(s->db,
                         "DELETE FROM decision_records WHERE node = $1 AND ts_us < $2::bigint", 2,
                         NULL, v, NULL, NULL, 0));
}

static void *ship_main(void *arg)
{
    struct dl_ship *s = arg;
    while (!atomic_load(&s->stop)) {
        int rc = ship_once(s);
        if (rc == 1) {
            continue;
        }
        if (rc == 0) {
            retain_shipped(s);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SHIP_PERIOD_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&s->mu);
        if (!atomic_load(&s->stop)) {
            pthread_cond_timedwait(&s->wake, &s->mu, &ts);
        }
        pthread_mutex_unlock(&s->mu);
    }
    /* A last round so a clean stop leaves nothing behind when the database is up. */
    (void)ship_once(s);
    return NULL;
}

struct dl_ship *dl_ship_start(const struct decision_log_conf *c)
{
    struct dl_ship *s = xcalloc(1, sizeof *s);
    s->conf.sqlite = xstrdup(c->sqlite);
    s->conf.pg_conninfo = xstrdup(c->pg_conninfo);
    s->conf.pg_password_file = c->pg_password_file ? xstrdup(c->pg_password_file) : NULL;
    s->conf.node = xstrdup(c->node);
    s->conf.file = c->file ? xstrdup(c->file) : NULL;
    s->conf.deferred = c->deferred && c->file; /* the file is the log of record */
    s->retain_ms = c->retain_ms;
    s->shipped = -1;
    s->ckpt_shipped = -1;
    atomic_init(&s->stop, false);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    if (pthread_create(&s->thread, NULL, ship_main, s) != 0) {
        log_error("policy", "cannot start the decision log shipper thread");
        dl_ship_stop_free(s, false);
        return NULL;
    }
    return s;
}

void dl_ship_stop_free(struct dl_ship *s, bool started)
{
    if (s == NULL) {
        return;
    }
    if (started) {
        pthread_mutex_lock(&s->mu);
        atomic_store(&s->stop, true);
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    PQfinish(s->db);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    free(s->conf.sqlite);
    free(s->conf.pg_conninfo);
    free(s->conf.pg_password_file);
    free(s->conf.node);
    free(s->conf.file);
    free(s);
}

/* ---- audit across the fleet --------------------------------------------- */

int dl_fleet_materialise(const struct decision_log_conf *c, int64_t since_us, int64_t until_us,
                         sqlite3 **out, struct err *err)
{
    *out = NULL;
    PGconn *db = dl_pg_connect(c, err);
    if (db == NULL) {
        return ERR_IO;
    }
    char since[24], until[24];
    snprintf(since, sizeof since, "%lld", (long long)since_us);
    snprintf(until, sizeof until, "%lld", (long long)until_us);
    const char *v[] = { since, until };
    PGresult *r = PQexecParams(db,
                               "SELECT node, seq, line FROM decision_records WHERE ts_us >= "
                               "$1::bigint AND ts_us <= $2::bigint ORDER BY ts_us, node, seq",
                               2, NULL, v, NULL, NULL, 0);
    if (!pg_res_ok(r)) {
        err_set(err, ERR_IO, "reading decision_records: %s", pg_msg(db, r));
        PQclear(r);
        PQfinish(db);
        return ERR_IO;
    }
    sqlite3 *m = NULL;
    int rc = 0;
    char sql[1024];
    /* Each node's own seq is kept (no primary key: nodes share numbers), so the
     * lines printed are the records as their node chained them. */
    snprintf(sql, sizeof sql,
             "CREATE TABLE decisions(seq, %s, prev_hash, hash);"
             "CREATE INDEX decisions_ts ON decisions(ts_us)",
             DL_COLUMNS);
    if (sqlite3_open(":memory:", &m) != SQLITE_OK ||
        sqlite3_exec(m, sql, NULL, NULL, NULL) != SQLITE_OK) {
        rc = err_set(err, ERR_IO, "sqlite: %s", m ? sqlite3_errmsg(m) : "out of memory");
    }
    sqlite3_stmt *ins = NULL;
    snprintf(sql, sizeof sql, "INSERT INTO decisions(seq, %s, prev_hash, hash) " DL_VALUES,
             DL_COLUMNS);
    if (rc == 0 && sqlite3_prepare_v2(m, sql, -1, &ins, NULL) != SQLITE_OK) {
        rc = err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(m));
    }
    struct sbuf tmp[2] = { { 0 }, { 0 } };
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *line = PQgetvalue(r, i, 2);
        struct dl_row row;
        if (!dl_line_parse(line, strlen(line), &row)) {
            log_warn("policy", "decision_records: node %s record %s is not a record (edited?)",
                     PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
            continue;
        }
        if (dl_bind_row(ins, &row.rec, row.seq, row.prev_hash, row.hash, tmp) != 0) {
            rc = err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(m));
        }
        dl_row_fini(&row);
    }
    dl_sbuf_free(&tmp[0]);
    dl_sbuf_free(&tmp[1]);
    sqlite3_finalize(ins);
    PQclear(r);
    PQfinish(db);
    if (rc != 0) {
        sqlite3_close(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* Checks one node's chain as shipped: every line hashes to its hash, links to
 * the one before, and no sequence number is missing. */
/* This node's own records in PostgreSQL must be the ones in its database: a
 * chain rewritten consistently in PostgreSQL still differs from the original. */
static bool same_as_local(sqlite3 *local, long long seq, const char *hash, const char *node,
                          FILE *out)
{
    sqlite3_stmt *st = NULL;
    bool ok = true;
    if (sqlite3_prepare_v2(local, "SELECT hash FROM decisions WHERE seq = ?1", -1, &st, NULL) !=
        SQLITE_OK) {
        return true; /* the local pass reports an unreadable database */
    }
    sqlite3_bind_int64(st, 1, seq);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(st, 0);
        if (h == NULL || strcmp(h, hash) != 0) {
            fprintf(out,
                    "FAIL fleet %s: record %lld in PostgreSQL is not the one this node "
                    "wrote (replaced there)\n",
                    node, seq);
            ok = false;
        }
    } else {
        sqlite3_stmt *mx = NULL;
        long long last = 0;
        if (sqlite3_prepare_v2(local, "SELECT coalesce(max(seq), 0) FROM decisions", -1, &mx,
                               NULL) == SQLITE_OK &&
            sqlite3_step(mx) == SQLITE_ROW) {
            last = sqlite3_column_int64(mx, 0);
        }
        sqlite3_finalize(mx);
        if (seq > last) {
            fprintf(out,
                    "FAIL fleet %s: record %lld is in PostgreSQL but this node never "
                    "wrote it (added there)\n",
                    node, seq);
            ok = false;
        }
        /* Older ones: removed here by retention, nothing to compare. */
    }
    sqlite3_finalize(st);
    return ok;
}

/* The node's shipped checkpoints against its shipped chain: each names the
 * hash the chain has at its seq (hashes[seq - first], n records), and is
 * signed by the key that made it: checked when that is this node's key (a
 * fleet sharing decision_log.checkpoint.key checks every node's). */
static bool verify_checkpoints(PGconn *db, const char *node, const char (*hashes)[65],
                               long long first, int n, const struct dl_key *key, FILE *out)
{
    const char *v[] = { node };
    PGresult *r = PQexecParams(db,
                               "SELECT seq, line FROM decision_checkpoints WHERE node = $1 "
                               "ORDER BY seq",
                               1, NULL, v, NULL, NULL, 0);
    if (!pg_res_ok(r)) {
        fprintf(out, "FAIL fleet %s: checkpoints: %s", node, pg_msg(db, r));
        PQclear(r);
        return false;
    }
    bool ok = true;
    int matched = 0, signed_here = 0, older = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        long long seq = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        const char *line = PQgetvalue(r, i, 1);
        struct dl_checkpoint c;
        if (!dl_ckpt_parse(line, strlen(line), &c) || c.retention || (long long)c.seq != seq) {
            fprintf(out, "FAIL fleet %s: checkpoint %lld is not a checkpoint (edited)\n", node,
                    seq);
            ok = false;
            continue;
        }
        if (key != NULL && strcmp(key->key_id, c.key_id) == 0) {
            if (!dl_ckpt_verify(key, &c)) {
                fprintf(out,
                        "FAIL fleet %s: checkpoint %lld has a bad signature (forged or "
                        "edited)\n",
                        node, seq);
                ok = false;
                continue;
            }
            signed_here++;
        }
        if (seq < first) {
            older++; /* its records were removed by retention */
        } else if (seq >= first + n) {
            fprintf(out,
                    "FAIL fleet %s: checkpoint %lld signs record %lld, which is not in "
                    "PostgreSQL (removed)\n",
                    node, seq, seq);
            ok = false;
        } else if (strcmp(hashes[seq - first], c.hash) != 0) {
            fprintf(out,
                    "FAIL fleet %s: record %lld is not the one checkpoint %lld signed: the "
                    "chain was rewritten up to it\n",
                    node, seq, seq);
            ok = false;
        } else {
            matched++;
        }
    }
    if (ok && PQntuples(r) > 0) {
        fprintf(out,
                "ok fleet %s: %d checkpoint(s) match the chain, %d signature(s) checked "
                "with this node's key%s\n",
                node, matched, signed_here,
                older ? " (older ones sign records removed by retention)" : "");
    }
    PQclear(r);
    return ok;
}

static bool verify_node(PGconn *db, const char *node, sqlite3 *local, const struct dl_key *key,
                        FILE *out)
{
    const char *v[] = { node };
    PGresult *r = PQexecParams(db,
                               "SELECT seq, line FROM decision_records WHERE node = $1 "
                               "ORDER BY seq",
                               1, NULL, v, NULL, NULL, 0);
    if (!pg_res_ok(r)) {
        fprintf(out, "FAIL fleet %s: %s", node, pg_msg(db, r));
        PQclear(r);
        return false;
    }
    static const char tail_key[] = ",\"hash\":\"";
    size_t tl = sizeof tail_key - 1;
    char prev[65] = "", h[65];
    long long expect = -1, first = 0;
    bool ok = true;
    int n = PQntuples(r);
    char(*hashes)[65] = xcalloc((size_t)n + 1, sizeof *hashes);
    for (int i = 0; ok && i < n; i++) {
        long long seq = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        const char *line = PQgetvalue(r, i, 1);
        size_t len = strlen(line);
        json_error_t je;
        json_t *j = json_loadb(line, len, 0, &je);
        json_t *js = json_object_get(j, "seq"), *jh = json_object_get(j, "hash"),
               *jp = json_object_get(j, "prev_hash");
        bool shape = json_is_integer(js) && json_is_string(jh) && json_is_string(jp) &&
                     strlen(json_string_value(jh)) == 64 && strlen(json_string_value(jp)) == 64 &&
                     len > tl + 66 && memcmp(line + len - tl - 66, tail_key, tl) == 0 &&
                     memcmp(line + len - 2, "\"}", 2) == 0 && json_integer_value(js) == seq;
        if (!shape) {
            fprintf(out, "FAIL fleet %s: record %lld is not a decision record (edited)\n", node,
                    seq);
            ok = false;
        } else if (expect >= 0 && seq != expect) {
            fprintf(out, "FAIL fleet %s: record %lld is missing (removed)\n", node, expect);
            ok = false;
        } else if (json_is_string(json_object_get(j, "node")) &&
                   strcmp(json_string_value(json_object_get(j, "node")), node) != 0) {
            /* Format 3: the chaining node is inside the hashed bytes. */
            fprintf(out, "FAIL fleet %s: record %lld was chained by node %s (moved)\n", node, seq,
                    json_string_value(json_object_get(j, "node")));
            ok = false;
        } else {
            dl_hash(json_string_value(jp), line, len - tl - 66, h);
            if (strcmp(h, json_string_value(jh)) != 0) {
                fprintf(out,
                        "FAIL fleet %s: record %lld was edited: its hash does not match "
                        "its content\n",
                        node, seq);
                ok = false;
            } else if (expect >= 0 ? strcmp(json_string_value(jp), prev) != 0
                                   : seq == 1 && strcmp(json_string_value(jp), DL_GENESIS) != 0) {
                fprintf(out,
                        "FAIL fleet %s: record %lld does not chain to record %lld: that "
                        "record was edited or replaced\n",
                        node, seq, seq - 1);
                ok = false;
            } else if (local != NULL &&
                       !same_as_local(local, seq, json_string_value(jh), node, out)) {
                ok = false;
            } else {
                snprintf(prev, sizeof prev, "%s", json_string_value(jh));
                memcpy(hashes[i], prev, sizeof prev);
                if (expect < 0) {
                    first = seq;
                }
                expect = seq + 1;
            }
        }
        json_decref(j);
    }
    if (ok) {
        fprintf(out, "ok fleet %s: %d record(s) chained%s%s\n", node, n, n ? ", head " : "",
                n ? prev : "");
        ok = verify_checkpoints(db, node, (const char(*)[65])hashes, first, n, key, out);
    }
    free(hashes);
    PQclear(r);
    return ok;
}

int dl_fleet_verify(const struct decision_log_conf *c, FILE *out, bool *ok, struct err *err)
{
    *ok = true;
    PGconn *db = dl_pg_connect(c, err);
    if (db == NULL) {
        return ERR_IO;
    }
    PGresult *r = PQexec(db, "SELECT DISTINCT node FROM decision_records ORDER BY node");
    if (!pg_res_ok(r)) {
        err_set(err, ERR_IO, "reading decision_records: %s", pg_msg(db, r));
        PQclear(r);
        PQfinish(db);
        return ERR_IO;
    }
    sqlite3 *local = NULL;
    struct err le = { 0 };
    if (c->sqlite != NULL && dl_db_open(c->sqlite, true, &local, &le) != 0) {
        local = NULL;
    }
    struct dl_key key;
    bool have_key = c->ckpt_key != NULL && dl_key_load(c->ckpt_key, false, &key, &le) == 0;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *node = PQgetvalue(r, i, 0);
        bool mine = c->node != NULL && strcmp(node, c->node) == 0;
        if (!verify_node(db, node, mine ? local : NULL, have_key ? &key : NULL, out)) {
            *ok = false;
        }
    }
    if (have_key) {
        dl_key_free(&key);
    }
    sqlite3_close(local);
    if (PQntuples(r) == 0) {
        fprintf(out, "ok fleet: no records shipped yet\n");
    }
    PQclear(r);
    PQfinish(db);
    return 0;
}

int dl_fleet_heads(const struct decision_log_conf *c, FILE *out, struct err *err)
{
    PGconn *db = dl_pg_connect(c, err);
    if (db == NULL) {
        return ERR_IO;
    }
    PGresult *r =
        PQexec(db, "SELECT r.node, r.seq, r.line, (SELECT k.line FROM decision_checkpoints k "
                   "WHERE k.node = r.node ORDER BY k.seq DESC LIMIT 1) "
                   "FROM decision_records r JOIN (SELECT node, max(seq) AS seq FROM "
                   "decision_records GROUP BY node) m ON m.node = r.node AND m.seq = r.seq "
                   "ORDER BY r.node");
    if (!pg_res_ok(r)) {
        err_set(err, ERR_IO, "reading decision_records: %s", pg_msg(db, r));
        PQclear(r);
        PQfinish(db);
        return ERR_IO;
    }
    /* One line per node: its last shipped record and its last shipped
     * checkpoint (each node signs its own chain; `audit verify` checks them). */
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *rec = json_loads(PQgetvalue(r, i, 2), 0, NULL);
        const char *ck = pg_col(r, i, 3);
        json_t *ckpt = ck ? json_loads(ck, 0, NULL) : NULL;
        const char *hash = json_string_value(json_object_get(rec, "hash"));
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o}", "type", "fleet-head", "node",
                              PQgetvalue(r, i, 0), "seq", (json_int_t)pg_col64(r, i, 1), "hash",
                              hash ? hash : "", "checkpoint", ckpt ? ckpt : json_null());
        char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        if (line != NULL) {
            fprintf(out, "%s\n", line);
        }
        free(line);
        json_decref(o);
        json_decref(rec);
    }
    PQclear(r);
    PQfinish(db);
    return 0;
}
