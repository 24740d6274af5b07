/* authn/session_writer.c - the session store's writer thread and lifetime:
 * open starts the thread that owns the database connection and, every 500 ms,
 * writes queued inserts/updates/deletes and batched last-seen times in one
 * transaction (SQLite, or PostgreSQL through session_pg.c), flushes one-time
 * values, applies revocations recorded by other processes and purges expired
 * sessions; close drains the queue and stops it. */
#include "session.h"

#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <sqlite3.h>

#include "session_int.h"

/* One-time values not yet on disk, written by the writer cycle. */
static void once_flush(struct session_store *s)
{
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&s->oncemu);
    for (size_t b = 0; b < ONCE_BUCKETS; b++) {
        for (struct once *o = s->once[b]; o != NULL; o = o->next) {
            if (o->flushed) {
                continue;
            }
            if (st == NULL && sqlite3_prepare_v2(s->db,
                                                 "INSERT OR REPLACE INTO once_values "
                                                 "(key_hash, exp_s) VALUES (?, ?)",
                                                 -1, &st, NULL) != SQLITE_OK) {
                pthread_mutex_unlock(&s->oncemu);
                return;
            }
            char hex[65];
            str_hex(o->h, 32, hex);
            sqlite3_bind_text(st, 1, hex, 64, SQLITE_TRANSIENT);
            sqlite3_bind_int64(st, 2, o->exp_s);
            if (sqlite3_step(st) == SQLITE_DONE) {
                o->flushed = true;
            } else {
                log_error("authn", "one-time value not stored: %s", sqlite3_errmsg(s->db));
            }
            sqlite3_reset(st);
        }
    }
    pthread_mutex_unlock(&s->oncemu);
    sqlite3_finalize(st);
}

static void write_op(struct session_store *s, const struct op *o)
{
    char hex[65];
    sqlite3_stmt *st = NULL;
    const struct sess *r = o->rec;

    str_hex(r->h, 32, hex);
    if (o->kind == OP_INSERT) {
        sqlite3_prepare_v2(s->db,
                           "INSERT OR REPLACE INTO sessions (id_hash, user_key, email, name, "
                           "groups, claims, idp, sid, created_ms, last_seen_ms, expires_ms, "
                           "token_exp_s, refresh_token, id_token) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL);
        char *rt = sdb_seal_field(s, r->h, "rt", r->refresh_token);
        char *it = sdb_seal_field(s, r->h, "idt", r->id_token);
        const char *const text[] = {
            hex,    r->user_key, r->email, r->name, r->attrs->groups_json, r->attrs->claims_json,
            r->idp, r->sid
        };
        sdb_bind_texts(st, 1, text, 8);
        sqlite3_bind_int64(st, 9, r->created_ms);
        sqlite3_bind_int64(st, 10, r->last_seen_ms);
        sqlite3_bind_int64(st, 11, r->expires_ms);
        sqlite3_bind_int64(st, 12, r->token_exp_s);
        sdb_bind_text(st, 13, rt);
        sdb_bind_text(st, 14, it);
        free(rt);
        free(it);
    } else if (o->kind == OP_UPDATE) {
        sqlite3_prepare_v2(s->db,
                           "UPDATE sessions SET refresh_token = ?, token_exp_s = ?, "
                           "email = ?, name = ?, groups = ? WHERE id_hash = ?",
                           -1, &st, NULL);
        char *rt = sdb_seal_field(s, r->h, "rt", r->refresh_token);
        sdb_bind_text(st, 1, rt);
        sqlite3_bind_int64(st, 2, r->token_exp_s);
        const char *const text[] = { r->email, r->name, r->attrs->groups_json, hex };
        sdb_bind_texts(st, 3, text, 4);
        free(rt);
    } else {
        sqlite3_prepare_v2(s->db, "DELETE FROM sessions WHERE id_hash = ?", -1, &st, NULL);
        sdb_bind_text(st, 1, hex);
    }
    if (st == NULL || sqlite3_step(st) != SQLITE_DONE) {
        log_error("authn", "session store write failed: %s", sqlite3_errmsg(s->db));
    }
    sqlite3_finalize(st);
}

static void poll_revocations(struct session_store *s)
{
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(s->db,
                       "SELECT seq, kind, value, ts_ms FROM session_revocations WHERE seq > ? "
                       "ORDER BY seq",
                       -1, &st, NULL);
    if (st == NULL) {
        return;
    }
    sqlite3_bind_int64(st, 1, s->revocation_seq);
    while (sqlite3_step(st) == SQLITE_ROW) {
        s->revocation_seq = sqlite3_column_int64(st, 0);
        const char *kind = (const char *)sqlite3_column_text(st, 1);
        const char *value = (const char *)sqlite3_column_text(st, 2);
        if (kind == NULL || value == NULL) {
            continue;
        }
        size_t n = 0;
        if (strcmp(kind, "id") == 0) {
            unsigned char h[32];
            if (sdb_hex_to_hash(value, h) == 0) {
                n = sess_cache_remove_if(s, sess_match_hash, h, true);
            }
        } else if (strcmp(kind, "user") == 0) {
            /* Deleted from SQLite too: a session created just before the
             * revocation may have been written after the CLI's DELETE, and
             * would otherwise come back on restart. */
            struct user_rev u = { value, sqlite3_column_int64(st, 3) };
            n = sess_cache_remove_if(s, sess_match_user_rev, &u, true);
            sess_user_rev_note(s, value, u.ts_ms);
        }
        if (n > 0) {
            log_info("authn", "applied session revocation %s: %zu session(s) ended", kind, n);
        }
    }
    sqlite3_finalize(st);
}

/* Puts a batch back in front of whatever was queued meanwhile. */
static void requeue(struct session_store *s, struct op *ops)
{
    if (ops == NULL) {
        return;
    }
    struct op *last = ops;
    while (last->next != NULL) {
        last = last->next;
    }
    pthread_mutex_lock(&s->qmu);
    last->next = s->qhead;
    if (s->qhead == NULL) {
        s->qtail = &last->next;
    }
    s->qhead = ops;
    pthread_mutex_unlock(&s->qmu);
}

struct touch {
    unsigned char h[32];
    int64_t last_seen_ms;
};

/* ---- PostgreSQL (session_pg.c) ----------------------------------------- */

static void row_of(struct session_store *s, const struct sess *r, struct spg_row *w)
{
    memset(w, 0, sizeof *w);
    str_hex(r->h, 32, w->id_hash);
    w->user_key = r->user_key;
    w->email = r->email;
    w->name = r->name;
    w->groups = r->attrs->groups_json;
    w->claims = r->attrs->claims_json;
    w->idp = r->idp;
    w->sid = r->sid;
    w->refresh_token = sdb_seal_field(s, r->h, "rt", r->refresh_token);
    w->id_token = sdb_seal_field(s, r->h, "idt", r->id_token);
    w->created_ms = r->created_ms;
    w->last_seen_ms = r->last_seen_ms;
    w->expires_ms = r->expires_ms;
    w->token_exp_s = r->token_exp_s;
}

/* Writes a batch in one transaction; on failure the operations go back to
 * the head of the queue (the database may be down: kept until it returns). */
static void pg_cycle(struct session_store *s, struct op *ops, const struct touch *touch,
                     size_t ntouch)
{
    size_t nops = 0;
    for (struct op *o = ops; o != NULL; o = o->next) {
        nops++;
    }
    if (nops == 0 && ntouch == 0) {
        (void)spg_write(s->pg, NULL, 0, NULL, 0); /* recovers the writer after a failure */
        return;
    }
    struct spg_op *w = xcalloc(nops ? nops : 1, sizeof *w);
    struct spg_touch *t = xcalloc(ntouch ? ntouch : 1, sizeof *t);
    size_t i = 0;
    for (struct op *o = ops; o != NULL; o = o->next, i++) {
        w[i].kind = o->kind == OP_INSERT   ? SPG_INSERT
                    : o->kind == OP_UPDATE ? SPG_UPDATE
                                           : SPG_DELETE;
        row_of(s, o->rec, &w[i].row);
    }
    for (size_t k = 0; k < ntouch; k++) {
        str_hex(touch[k].h, 32, t[k].id_hash);
        t[k].last_seen_ms = touch[k].last_seen_ms;
    }
    bool ok = spg_write(s->pg, w, nops, t, ntouch) == 0;
    for (size_t k = 0; k < nops; k++) {
        free((char *)w[k].row.refresh_token);
        free((char *)w[k].row.id_token);
    }
    free(w);
    free(t);
    if (!ok) {
        requeue(s, ops);
        return;
    }
    for (struct op *o = ops; o != NULL; o = o->next) {
        if (o->kind == OP_INSERT) {
            size_t b = sess_bucket_of(o->rec->h);
            pthread_mutex_lock(sess_stripe_of(s, b));
            struct sess **pp = sess_find(s, b, o->rec->h);
            if (pp != NULL) {
                (*pp)->unwritten = false;
            }
            pthread_mutex_unlock(sess_stripe_of(s, b));
        }
    }
    while (ops != NULL) {
        struct op *next = ops->next;
        sess_free(ops->rec);
        free(ops);
        ops = next;
    }
}

static void writer_cycle(struct session_store *s)
{
    pthread_mutex_lock(&s->dbmu);
    pthread_mutex_lock(&s->qmu);
    struct op *ops = s->qhead;
    s->qhead = NULL;
    s->qtail = &s->qhead;
    pthread_mutex_unlock(&s->qmu);

    /* Collect last-seen moves, write them afterwards: each stripe is locked
     * once for all of its buckets (bucket b belongs to stripe b % NSTRIPES),
     * not once per bucket. */
    size_t ntouch = 0, cap = 0;
    struct touch *touch = NULL;
    for (size_t stripe = 0; stripe < NSTRIPES; stripe++) {
        pthread_mutex_t *mu = sess_stripe_of(s, stripe);
        pthread_mutex_lock(mu);
        for (size_t b = stripe; b < NBUCKETS; b += NSTRIPES) {
            for (struct sess *e = s->bucket[b]; e != NULL; e = e->next) {
                if (e->last_seen_ms > e->flushed_last_seen_ms) {
                    if (ntouch == cap) {
                        cap = cap ? cap * 2 : 256;
                        touch = xrealloc(touch, cap * sizeof *touch);
                    }
                    memcpy(touch[ntouch].h, e->h, 32);
                    touch[ntouch++].last_seen_ms = e->last_seen_ms;
                    e->flushed_last_seen_ms = e->last_seen_ms;
                }
            }
        }
        pthread_mutex_unlock(mu);
    }

    bool once_dirty = false;
    pthread_mutex_lock(&s->oncemu);
    for (size_t b = 0; b < ONCE_BUCKETS && !once_dirty; b++) {
        for (struct once *o = s->once[b]; o != NULL && !once_dirty; o = o->next) {
            once_dirty = !o->flushed;
        }
    }
    pthread_mutex_unlock(&s->oncemu);
    if (s->pg != NULL) {
        pg_cycle(s, ops, touch, ntouch);
        ops = NULL;
    } else if (ops != NULL || ntouch > 0 || once_dirty) {
        bool began = true;
        /* BEGIN IMMEDIATE: the CLI may write concurrently (LIBRARIES.md §7).
         * When the database stays locked past the busy timeout, the queued
         * writes go back to the head of the queue for the next cycle. */
        if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
            log_warn("authn", "session store busy, retrying the batch: %s", sqlite3_errmsg(s->db));
            requeue(s, ops);
            ops = NULL;
            began = false;
        }
        for (struct op *o = ops; o != NULL; o = o->next) {
            write_op(s, o);
        }
        if (began) {
            once_flush(s);
        }
        sqlite3_stmt *st = NULL;
        if (began) {
            sqlite3_prepare_v2(s->db,
                               "UPDATE sessions SET last_seen_ms = max(last_seen_ms, ?) "
                               "WHERE id_hash = ?",
                               -1, &st, NULL);
        }
        for (size_t i = 0; st != NULL && i < ntouch; i++) {
            char hex[65];
            str_hex(touch[i].h, 32, hex);
            sqlite3_bind_int64(st, 1, touch[i].last_seen_ms);
            sqlite3_bind_text(st, 2, hex, 64, SQLITE_TRANSIENT);
            sqlite3_step(st);
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
        if (began && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            log_error("authn", "session store commit failed, retrying the batch: %s",
                      sqlite3_errmsg(s->db));
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            requeue(s, ops);
            ops = NULL;
        }
    }
    while (ops != NULL) {
        struct op *next = ops->next;
        sess_free(ops->rec);
        free(ops);
        ops = next;
    }
    free(touch);

    int64_t now = sess_now_wall_ms();
    if (s->pg != NULL) {
        /* Revocations arrive through the listener thread (session_pg.c). */
        if (now - s->last_purge_ms >= PURGE_PERIOD_MS) {
            s->last_purge_ms = now;
            const struct session_store *self = s;
            sess_cache_remove_if(s, sess_match_expired, &self, false);
            spg_purge(s->pg, now, s->conf.idle_timeout_ms);
        }
        pthread_mutex_unlock(&s->dbmu);
        return;
    }
    poll_revocations(s);

    if (now - s->last_purge_ms >= PURGE_PERIOD_MS) {
        s->last_purge_ms = now;
        const struct session_store *self = s;
        sess_cache_remove_if(s, sess_match_expired, &self, false);
        sqlite3_stmt *st = NULL;
        /* The grace keeps rows whose newest last-seen is still in flight. */
        sqlite3_prepare_v2(s->db,
                           "DELETE FROM sessions WHERE expires_ms <= ?1 OR "
                           "last_seen_ms + ?2 + 60000 <= ?1",
                           -1, &st, NULL);
        sqlite3_bind_int64(st, 1, now);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)s->conf.idle_timeout_ms);
        sqlite3_step(st);
        sqlite3_finalize(st);
        sqlite3_prepare_v2(s->db, "DELETE FROM once_values WHERE exp_s < ?", -1, &st, NULL);
        sqlite3_bind_int64(st, 1, now / 1000);
        sqlite3_step(st);
        sqlite3_finalize(st);
        sqlite3_exec(s->db,
                     "DELETE FROM session_revocations WHERE ts_ms < "
                     "strftime('%s','now') * 1000 - 86400000",
                     NULL, NULL, NULL);
        /* Readers (the CLI) can keep the WAL growing; fold it back now and then. */
        sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    }
    pthread_mutex_unlock(&s->dbmu);
}

static void *writer_main(void *arg)
{
    struct session_store *s = arg;
    pthread_mutex_lock(&s->qmu);
    while (!s->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WRITER_PERIOD_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->qcv, &s->qmu, &ts);
        if (s->stop) {
            break;
        }
        pthread_mutex_unlock(&s->qmu);
        writer_cycle(s);
        pthread_mutex_lock(&s->qmu);
    }
    pthread_mutex_unlock(&s->qmu);
    return NULL;
}

void session_store_sync(struct session_store *s)
{
    writer_cycle(s);
}

struct session_store *session_store_open(const char *db_path, const struct session_conf *c,
                                         struct err *err)
{
    struct session_store *s = xcalloc(1, sizeof *s);
    char *key_file = NULL;

    s->conf.cookie_name = xstrdup(c->cookie_name ? c->cookie_name : "gatehouse_session");
    s->conf.idle_timeout_ms = c->idle_timeout_ms;
    s->conf.max_lifetime_ms = c->max_lifetime_ms;
    s->conf.refresh = c->refresh;
    s->conf.refresh_before_ms = c->refresh_before_ms;
    if (c->key_file != NULL) {
        key_file = xstrdup(c->key_file);
    } else if (db_path == NULL) {
        err_set(err, ERR_CONFIG,
                "state.postgres without state.sqlite needs session.key_file "
                "(the same key on every node)");
        session_conf_fini(&s->conf);
        free(s);
        return NULL;
    } else {
        char *copy = xstrdup(db_path);
        key_file = xasprintf("%s/session.key", dirname(copy));
        free(copy);
    }
    s->conf.key_file = key_file;
    for (size_t i = 0; i < NSTRIPES; i++) {
        pthread_mutex_init(&s->stripe[i], NULL);
    }
    pthread_mutex_init(&s->qmu, NULL);
    pthread_mutex_init(&s->dbmu, NULL);
    pthread_rwlock_init(&s->urmu, NULL);
    atomic_init(&s->nuser_revs, 0);
    pthread_mutex_init(&s->oncemu, NULL);
    pthread_cond_init(&s->qcv, NULL);
    s->qtail = &s->qhead;
    if (keys_load_secret32(key_file, true, s->key, err) != 0) {
        goto fail;
    }
    s->last_purge_ms = sess_now_wall_ms();
    if (c->pg.conninfo != NULL) {
        s->conf.pg.staleness_ms = c->pg.staleness_ms;
        struct spg_hooks h = { .arg = s,
                               .row = sess_hook_row,
                               .revoke = sess_hook_revoke,
                               .touch = sess_hook_touch,
                               .resync = sess_hook_resync };
        device_store_use_postgres(&c->pg); /* the registry is the fleet's too */
        s->pg = spg_open(&c->pg, &h, err);
        if (s->pg == NULL) {
            goto fail;
        }
        /* While this node knows the database is out of reach, the registry's
         * workers do not try it (no worker waits for a connect timeout). */
        device_store_set_ready(sess_store_reachable, s);
    } else {
        s->db = sdb_db_open(db_path, err);
        if (s->db == NULL) {
            goto fail;
        }
        sdb_preload(s, sess_now_wall_ms());
    }
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        err_set(err, ERR_IO, "cannot start the session writer thread");
        goto fail;
    }
    s->writer_started = true;
    return s;
fail:
    session_store_close(s);
    return NULL;
}

void session_store_close(struct session_store *s)
{
    if (s == NULL) {
        return;
    }
    if (s->pg != NULL) {
        device_store_set_ready(NULL, NULL);
    }
    if (s->writer_started) {
        pthread_mutex_lock(&s->qmu);
        s->stop = true;
        pthread_cond_signal(&s->qcv);
        pthread_mutex_unlock(&s->qmu);
        pthread_join(s->writer, NULL);
    }
    if (s->db != NULL) {
        writer_cycle(s);
        sqlite3_close(s->db);
    }
    if (s->pg != NULL) {
        writer_cycle(s); /* a last try; what the database does not take is lost */
        spg_close(s->pg);
    }
    for (size_t b = 0; b < NBUCKETS; b++) {
        while (s->bucket[b] != NULL) {
            struct sess *e = s->bucket[b];
            s->bucket[b] = e->next;
            sess_free(e);
        }
    }
    while (s->qhead != NULL) {
        struct op *o = s->qhead;
        s->qhead = o->next;
        sess_free(o->rec);
        free(o);
    }
    for (size_t i = 0; i < NSTRIPES; i++) {
        pthread_mutex_destroy(&s->stripe[i]);
    }
    for (size_t b = 0; b < ONCE_BUCKETS; b++) {
        while (s->once[b] != NULL) {
            struct once *o = s->once[b];
            s->once[b] = o->next;
            free(o);
        }
    }
    pthread_mutex_destroy(&s->oncemu);
    pthread_mutex_destroy(&s->qmu);
    pthread_mutex_destroy(&s->dbmu);
    for (size_t i = 0; i < atomic_load(&s->nuser_revs); i++) {
        free(s->user_revs[i].value);
    }
    free(s->user_revs);
    pthread_rwlock_destroy(&s->urmu);
    pthread_cond_destroy(&s->qcv);
    OPENSSL_cleanse(s->key, sizeof s->key);
    session_conf_fini(&s->conf);
    free(s);
}
