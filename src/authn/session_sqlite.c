/* authn/session_sqlite.c - the SQLite side of the session store: the schema,
 * the sealing of refresh and ID tokens with AES-256-GCM before they reach the
 * disk, the preload of live sessions at start, and the CLI's list and revoke
 * (SQLite, or PostgreSQL through session_pg.c). */
#include "session.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "session_int.h"

/* ---- SQLite ----------------------------------------------------------- */

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS sessions ("
    "  id_hash TEXT PRIMARY KEY,"
    "  user_key TEXT NOT NULL, email TEXT, name TEXT,"
    "  groups TEXT NOT NULL, claims TEXT NOT NULL,"
    "  idp TEXT NOT NULL, sid TEXT,"
    "  created_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"
    "  token_exp_s INTEGER NOT NULL DEFAULT 0,"
    "  refresh_token TEXT, id_token TEXT) STRICT;"
    "CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_key);"
    "CREATE INDEX IF NOT EXISTS sessions_email ON sessions(email);"
    "CREATE INDEX IF NOT EXISTS sessions_sid ON sessions(idp, sid);"
    "CREATE TABLE IF NOT EXISTS session_revocations ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  kind TEXT NOT NULL, value TEXT NOT NULL, ts_ms INTEGER NOT NULL) STRICT;"
    /* One row per revoked user (user key or email), kept: bearer tokens
     * issued before ts_ms stay refused after a restart. */
    "CREATE TABLE IF NOT EXISTS user_revocations ("
    "  value TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL) STRICT;"
    "CREATE TABLE IF NOT EXISTS once_values ("
    "  key_hash TEXT PRIMARY KEY, exp_s INTEGER NOT NULL) STRICT;";

sqlite3 *sdb_db_open(const char *path, struct err *err)
{
    return state_sqlite_open(path, schema, 5000, "session", err);
}

static void aad_for(const unsigned char h[32], const char *what, char *out, size_t n)
{
    char hex[65];
    str_hex(h, 32, hex);
    snprintf(out, n, "gatehouse-session-v1:%s:%s", hex, what);
}

char *sdb_seal_field(struct session_store *s, const unsigned char h[32], const char *what,
                     const char *v)
{
    char aad[128];
    if (v == NULL) {
        return NULL;
    }
    aad_for(h, what, aad, sizeof aad);
    return codec_seal(s->key, aad, v, strlen(v));
}

char *sdb_open_field(struct session_store *s, const unsigned char h[32], const char *what,
                     const unsigned char *v)
{
    char aad[128];
    if (v == NULL) {
        return NULL;
    }
    aad_for(h, what, aad, sizeof aad);
    return codec_unseal(s->key, aad, str_from((const char *)v), NULL);
}

void sdb_bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v != NULL) {
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

/* Binds n texts to the parameters first, first + 1, ... */
void sdb_bind_texts(sqlite3_stmt *st, int first, const char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sdb_bind_text(st, first + (int)i, v[i]);
    }
}

int sdb_hex_to_hash(const char *hex, unsigned char h[32])
{
    if (hex == NULL || strlen(hex) != 64) {
        return -1;
    }
    for (size_t i = 0; i < 32; i++) {
        unsigned v = 0;
        for (size_t k = 0; k < 2; k++) {
            char c = hex[2 * i + k];
            v <<= 4;
            if (c >= '0' && c <= '9') {
                v |= (unsigned)(c - '0');
            } else if (c >= 'a' && c <= 'f') {
                v |= (unsigned)(c - 'a' + 10);
            } else {
                return -1;
            }
        }
        h[i] = (unsigned char)v;
    }
    return 0;
}

void sdb_preload(struct session_store *s, int64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(s->db,
                       "SELECT id_hash, user_key, email, name, groups, claims, idp, sid, "
                       "created_ms, last_seen_ms, expires_ms, token_exp_s, refresh_token, "
                       "id_token FROM sessions WHERE expires_ms > ?",
                       -1, &st, NULL);
    sqlite3_bind_int64(st, 1, now_ms);
    size_t n = 0;
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        struct sess *e = xcalloc(1, sizeof *e);
        if (sdb_hex_to_hash((const char *)sqlite3_column_text(st, 0), e->h) != 0) {
            free(e);
            continue;
        }
        sess_set_public_id(e);
        e->user_key = sess_dupn((const char *)sqlite3_column_text(st, 1));
        e->email = sess_dupn((const char *)sqlite3_column_text(st, 2));
        e->name = sess_dupn((const char *)sqlite3_column_text(st, 3));
        e->attrs = attrs_parse((const char *)sqlite3_column_text(st, 4),
                               (const char *)sqlite3_column_text(st, 5));
        e->idp = sess_dupn((const char *)sqlite3_column_text(st, 6));
        e->sid = sess_dupn((const char *)sqlite3_column_text(st, 7));
        e->created_ms = sqlite3_column_int64(st, 8);
        e->last_seen_ms = e->flushed_last_seen_ms = sqlite3_column_int64(st, 9);
        e->expires_ms = sqlite3_column_int64(st, 10);
        e->token_exp_s = sqlite3_column_int64(st, 11);
        const unsigned char *rt = sqlite3_column_text(st, 12);
        e->refresh_token = sdb_open_field(s, e->h, "rt", rt);
        e->id_token = sdb_open_field(s, e->h, "idt", sqlite3_column_text(st, 13));
        if (rt != NULL && e->refresh_token == NULL) {
            log_warn("authn", "a stored refresh token does not open with the session key "
                              "(key file replaced?); that session will not refresh");
        }
        if (e->user_key == NULL || e->idp == NULL || sess_expired(s, e, now_ms)) {
            sess_free(e);
            continue;
        }
        size_t b = sess_bucket_of(e->h);
        e->next = s->bucket[b];
        s->bucket[b] = e;
        n++;
    }
    sqlite3_finalize(st);
    sqlite3_prepare_v2(s->db, "SELECT value, ts_ms FROM user_revocations", -1, &st, NULL);
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (v != NULL) {
            sess_user_rev_note(s, v, sqlite3_column_int64(st, 1));
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    sqlite3_prepare_v2(s->db, "SELECT key_hash, exp_s FROM once_values WHERE exp_s >= ?", -1, &st,
                       NULL);
    sqlite3_bind_int64(st, 1, now_ms / 1000);
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        struct once *o = xcalloc(1, sizeof *o);
        if (sdb_hex_to_hash((const char *)sqlite3_column_text(st, 0), o->h) != 0) {
            free(o);
            continue;
        }
        o->exp_s = sqlite3_column_int64(st, 1);
        o->flushed = true;
        size_t b = (size_t)(o->h[0] | (o->h[1] << 8)) % ONCE_BUCKETS;
        o->next = s->once[b];
        s->once[b] = o;
        s->nonce++;
    }
    sqlite3_finalize(st);
    st = NULL;
    sqlite3_prepare_v2(s->db, "SELECT coalesce(max(seq), 0) FROM session_revocations", -1, &st,
                       NULL);
    if (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        s->revocation_seq = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    log_info("authn", "loaded %zu live session(s)", n);
}

bool session_db_readable(const char *path, struct err *err)
{
    /* The header only: even a read-only SQLite open of a WAL database creates
     * its -shm and -wal files, and check writes nothing. */
    static const char magic[16] = "SQLite format 3";
    char head[16] = { 0 };
    FILE *f = fopen(path, "rb");
    if (f == NULL || access(path, R_OK | W_OK) != 0) {
        err_set(err, ERR_IO, "%s", strerror(errno));
        if (f != NULL) {
            fclose(f);
        }
        return false;
    }
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (n != 0 && (n != sizeof head || memcmp(head, magic, sizeof magic) != 0)) {
        err_set(err, ERR_IO, "file is not a database");
        return false;
    }
    return true;
}

/* ---- administration (CLI) --------------------------------------------- */

static void fmt_time(int64_t ms, char *buf, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* `sessions list`: the rows of either store, one line (or JSON object) each. */
struct list_ctx {
    const char *user, *bare_idp;
    bool json;
    FILE *out;
};

static void list_one(void *arg, const char *hex, const char *uk, const char *email, const char *idp,
                     int64_t created_ms, int64_t last_seen_ms, int64_t expires_ms,
                     const char *groups)
{
    const struct list_ctx *l = arg;
    if (hex == NULL || (l->user != NULL && !sess_user_match(l->user, uk, email, idp))) {
        return;
    }
    const char *hash = uk ? strchr(uk, '#') : NULL;
    char *uid = oidc_user_id(idp ? idp : "?", l->bare_idp && idp && strcmp(idp, l->bare_idp) == 0,
                             hash ? hash + 1 : (uk ? uk : "?"));
    char c[32], ls[32], e[32];
    fmt_time(created_ms, c, sizeof c);
    fmt_time(last_seen_ms, ls, sizeof ls);
    fmt_time(expires_ms, e, sizeof e);
    if (l->json) {
        json_error_t jerr;
        json_t *g = groups ? json_loads(groups, 0, &jerr) : NULL;
        json_t *o = json_pack("{s:s%, s:s, s:s?, s:s, s:s, s:s, s:s, s:o}", "id", hex, 16, "user",
                              uid, "email", email, "idp", idp ? idp : "?", "created", c,
                              "last_seen", ls, "expires", e, "groups", g ? g : json_array());
        if (o != NULL) {
            json_object_set_new(o, "user_key", json_string(uk));
        }
        char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (line != NULL) {
            fprintf(l->out, "%s\n", line);
        }
        free(line);
        json_decref(o);
    } else {
        fprintf(l->out, "%.16s  %-30s  %-8s  %-20s  %-20s  %s\n", hex, email ? email : uid,
                idp ? idp : "?", c, ls, e);
    }
    free(uid);
}

static void list_head(const struct list_ctx *l)
{
    if (!l->json) {
        fprintf(l->out, "%-16s  %-30s  %-8s  %-20s  %-20s  %s\n", "ID", "USER", "IDP", "CREATED",
                "LAST SEEN", "EXPIRES");
    }
}

/* --user or --id, exactly one; an id is 8 to 64 lower-case hex characters. */
static int revoke_args_check(const char *user, const char *id, struct err *err)
{
    if ((user == NULL) == (id == NULL)) {
        return err_set(err, ERR_PARSE, "give exactly one of --user or --id");
    }
    if (id != NULL) {
        size_t n = strlen(id);
        bool ok = n >= 8 && n <= 64;
        for (size_t i = 0; ok && i < n; i++) {
            ok = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
        }
        if (!ok) {
            return err_set(err, ERR_PARSE, "session id must be 8 to 64 lower-case hex characters");
        }
    }
    return 0;
}

int session_admin_list(const char *db_path, const char *user, const char *bare_idp, bool json,
                       FILE *out, struct err *err)
{
    sqlite3 *db = sdb_db_open(db_path, err);
    if (db == NULL) {
        return ERR_IO;
    }
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db,
                       "SELECT id_hash, user_key, email, idp, created_ms, last_seen_ms, "
                       "expires_ms, groups FROM sessions WHERE expires_ms > ?1 ORDER BY created_ms",
                       -1, &st, NULL);
    sqlite3_bind_int64(st, 1, sess_now_wall_ms());
    struct list_ctx l = { user, bare_idp, json, out };
    list_head(&l);
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        list_one(&l, (const char *)sqlite3_column_text(st, 0),
                 (const char *)sqlite3_column_text(st, 1), (const char *)sqlite3_column_text(st, 2),
                 (const char *)sqlite3_column_text(st, 3), sqlite3_column_int64(st, 4),
                 sqlite3_column_int64(st, 5), sqlite3_column_int64(st, 6),
                 (const char *)sqlite3_column_text(st, 7));
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}

int session_admin_revoke(const char *db_path, const char *user, const char *id, size_t *count,
                         struct err *err)
{
    *count = 0;
    int bad = revoke_args_check(user, id, err);
    if (bad != 0) {
        return bad;
    }
    sqlite3 *db = sdb_db_open(db_path, err);
    if (db == NULL) {
        return ERR_IO;
    }
    int rc = 0;
    int64_t now = sess_now_wall_ms();
    sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    sqlite3_stmt *sel = NULL;
    if (id != NULL) {
        sqlite3_prepare_v2(db, "SELECT id_hash FROM sessions WHERE substr(id_hash, 1, ?1) = ?2", -1,
                           &sel, NULL);
        sqlite3_bind_int(sel, 1, (int)strlen(id));
        sdb_bind_text(sel, 2, id);
    } else {
        sqlite3_prepare_v2(db, "SELECT id_hash, user_key, email, idp FROM sessions", -1, &sel,
                           NULL);
    }
    char **hashes = NULL;
    size_t n = 0;
    while (sel != NULL && sqlite3_step(sel) == SQLITE_ROW) {
        if (user != NULL && !sess_user_match(user, (const char *)sqlite3_column_text(sel, 1),
                                             (const char *)sqlite3_column_text(sel, 2),
                                             (const char *)sqlite3_column_text(sel, 3))) {
            continue;
        }
        hashes = xrealloc(hashes, (n + 1) * sizeof *hashes);
        hashes[n++] = xstrdup((const char *)sqlite3_column_text(sel, 0));
    }
    sqlite3_finalize(sel);
    if (id != NULL && n > 1) {
        rc = err_set(err, ERR_PARSE, "session id \"%s\" is ambiguous (%zu sessions)", id, n);
        goto done;
    }
    sqlite3_stmt *del = NULL, *rev = NULL;
    sqlite3_prepare_v2(db, "DELETE FROM sessions WHERE id_hash = ?", -1, &del, NULL);
    sqlite3_prepare_v2(db, "INSERT INTO session_revocations (kind, value, ts_ms) VALUES (?, ?, ?)",
                       -1, &rev, NULL);
    for (size_t i = 0; del && rev && i < n; i++) {
        sdb_bind_text(del, 1, hashes[i]);
        sqlite3_step(del);
        sqlite3_reset(del);
        sdb_bind_text(rev, 1, "id");
        sdb_bind_text(rev, 2, hashes[i]);
        sqlite3_bind_int64(rev, 3, now);
        sqlite3_step(rev);
        sqlite3_reset(rev);
    }
    /* Also catch sessions the server created but has not written yet; and
     * the user's bearer tokens issued until now (user_revocations). */
    if (user != NULL && rev != NULL) {
        sdb_bind_text(rev, 1, "user");
        sdb_bind_text(rev, 2, user);
        sqlite3_bind_int64(rev, 3, now);
        if (sqlite3_step(rev) != SQLITE_DONE) {
            rc = err_set(err, ERR_IO, "cannot record the revocation: %s", sqlite3_errmsg(db));
        }
        sqlite3_stmt *ur = NULL;
        sqlite3_prepare_v2(db,
                           "INSERT INTO user_revocations (value, ts_ms) VALUES (?1, ?2) "
                           "ON CONFLICT(value) DO UPDATE SET ts_ms = max(ts_ms, ?2)",
                           -1, &ur, NULL);
        sdb_bind_text(ur, 1, user);
        sqlite3_bind_int64(ur, 2, now);
        if (ur == NULL || sqlite3_step(ur) != SQLITE_DONE) {
            rc = err_set(err, ERR_IO, "cannot record the revocation: %s", sqlite3_errmsg(db));
        }
        sqlite3_finalize(ur);
    }
    sqlite3_finalize(del);
    sqlite3_finalize(rev);
    *count = n;
done:
    if (sqlite3_exec(db, rc == 0 ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK &&
        rc == 0) {
        rc = err_set(err, ERR_IO, "cannot record the revocation: %s", sqlite3_errmsg(db));
    }
    for (size_t i = 0; i < n; i++) {
        free(hashes[i]);
    }
    free(hashes);
    sqlite3_close(db);
    return rc;
}

/* ---- administration on PostgreSQL -------------------------------------- */

int session_admin_list_pg(const struct spg_conf *pg, const char *user, const char *bare_idp,
                          bool json, FILE *out, struct err *err)
{
    struct list_ctx l = { user, bare_idp, json, out };
    list_head(&l);
    return spg_admin_list(pg, sess_now_wall_ms(), list_one, &l, err);
}

int session_admin_revoke_pg(const struct spg_conf *pg, const char *user, const char *id,
                            size_t *count, struct err *err)
{
    *count = 0;
    int bad = revoke_args_check(user, id, err);
    if (bad != 0) {
        return bad;
    }
    return spg_admin_revoke(pg, user, id, sess_user_match, sess_now_wall_ms(), count, err);
}
