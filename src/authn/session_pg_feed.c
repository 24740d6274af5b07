/* authn/session_pg_feed.c - the listener's side of the PostgreSQL session
 * store: its own thread and connection, LISTEN gatehouse_sessions, and the
 * replay of session_changes past the last sequence seen (on every
 * notification, every second, and after a reconnect), with the touch
 * synchronisation and the gap check. */
#include "session_pg.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "session_pg_int.h"

/* ---- listener --------------------------------------------------------- */

static int load_one(struct spg *p, PGconn *db, const char *hash, bool update)
{
    const char *v[] = { hash };
    PGresult *r = spg_q(db, "SELECT " ROW_COLS " FROM sessions WHERE id_hash = $1", 1, v);
    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
        PQclear(r);
        return -1;
    }
    struct spg_row row;
    if (PQntuples(r) == 1 && spg_row_from(r, 0, &row)) {
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
        PGresult *r = spg_q(db,
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
    PGresult *r = spg_q(
        db, "SELECT id_hash, last_seen_ms FROM sessions WHERE last_seen_ms > $1::bigint", 1, v);
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
    log_warn("authn",
             "session changes %lld.. were purged before this node saw them: "
             "reloading every session from PostgreSQL",
             (long long)p->seq + 1);
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)spg_wall_ms());
    const char *v[] = { now };
    r = spg_q(db, "SELECT " ROW_COLS " FROM sessions WHERE expires_ms > $1::bigint", 1, v);
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
        if (spg_row_from(r, i, &row)) {
            p->hooks.row(p->hooks.arg, &row, true);
        }
    }
    p->hooks.resync(p->hooks.arg, true);
    PQclear(r);
    PQclear(u);
    p->seq = min > 0 ? min - 1 : last;
    return 0;
}

PGconn *spg_listen_connect(struct spg *p)
{
    struct err e = { 0 };
    PGconn *db = spg_connect_db(&p->conf, p->password, &e);
    if (db == NULL) {
        return NULL;
    }
    /* LISTEN before the replay: a change committed in between is both
     * replayed and announced, never neither. */
    if (!spg_exec_ok(db, "LISTEN " CHANNEL, &e) || check_gap(p, db) != 0 || replay(p, db) != 0 ||
        device_mirror_sync(db) != 0) {
        log_warn("authn", "PostgreSQL listener: %s", e.msg[0] ? e.msg : PQerrorMessage(db));
        PQfinish(db);
        return NULL;
    }
    return db;
}

void *spg_listener_main(void *arg)
{
    struct spg *p = arg;
    PGconn *db = p->lconn; /* connected and listening since spg_open */
    int64_t last_replay = spg_wall_ms();
    bool was_down = false;

    p->lconn = NULL;
    while (!atomic_load(&p->stop)) {
        int64_t now = spg_wall_ms();
        if (db == NULL) {
            db = spg_listen_connect(p);
            if (db == NULL) {
                if (!was_down) {
                    log_error("authn",
                              "PostgreSQL unreachable: sessions are served from the "
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
                log_info("authn",
                         "PostgreSQL reachable again: revocations replayed up to "
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
        now = spg_wall_ms();
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
