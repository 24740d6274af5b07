/* authn/session.c - the session store behind the session cookie. Reads on the
 * request path hit a striped-lock hash table only; a writer thread owns the
 * SQLite connection and, every 500 ms, writes queued inserts/updates/deletes
 * and batched last-seen times in one transaction, applies revocations recorded
 * by other processes, and purges expired sessions. Refresh tokens and ID
 * tokens are sealed with AES-256-GCM before they reach the disk.
 * Over 1,200 lines: the in-memory table, the writer thread and the SQLite store
 * share one lock discipline; the store interface for other databases is being
 * drawn inside this file.
 */
#include "session.h"

#include <errno.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sqlite3.h>

#include "attrs.h"
#include "codec.h"
#include "device_store.h"
#include "core/ident.h"
#include "keys.h"
#include "oidc.h"
#include "state_sqlite.h"

#define NBUCKETS 16384
#define NSTRIPES 64
#define WRITER_PERIOD_MS 500
#define PURGE_PERIOD_MS 60000
#define TOUCH_GRANULARITY_MS 1000
#define ONCE_BUCKETS 4096
#define ONCE_MAX 500000 /* live one-time values; beyond that, fail closed */

struct sess {
    unsigned char h[32];
    char id[17];         /* public id: first 16 hex chars of h */
    char *user_key, *email, *name, *idp, *sid;
    const struct authn_attrs *attrs; /* groups and claims, parsed once (never NULL) */
    char *refresh_token; /* plaintext in memory only */
    char *id_token;
    int64_t created_ms, last_seen_ms, expires_ms, token_exp_s;
    int64_t flushed_last_seen_ms;
    bool refresh_in_flight;
    bool seen;           /* PostgreSQL resync: present in the sessions table */
    bool unwritten;      /* PostgreSQL: created here, its insert not committed yet */
    struct sess *next;
};

enum op_kind { OP_INSERT, OP_UPDATE, OP_DELETE };

struct op {
    enum op_kind kind;
    struct sess *rec; /* a private copy: the writer never reads live cache entries */
    struct op *next;
};

/* A one-time value (SAML assertion id, ...): its SHA-256, kept until exp_s. */
struct once {
    unsigned char h[32];
    int64_t exp_s;
    bool flushed;
    struct once *next;
};

struct session_store {
    struct session_conf conf;
    unsigned char key[32];
    sqlite3 *db;                 /* writer thread only, after open */
    struct spg *pg;              /* or PostgreSQL (state.postgres): db is then NULL */
    pthread_mutex_t stripe[NSTRIPES];
    struct sess *bucket[NBUCKETS];

    pthread_mutex_t qmu;         /* guards the op queue and the flags below */
    pthread_cond_t qcv;
    struct op *qhead, **qtail;
    bool stop;
    pthread_t writer;
    bool writer_started;
    pthread_mutex_t dbmu;        /* serialises writer cycles with session_store_sync */
    int64_t revocation_seq;
    int64_t last_purge_ms;
    /* `sessions revoke --user`: when each user (user key or email) was last
     * revoked. Bearer tokens of that user issued before it are refused. Few
     * entries; read on every bearer request, so an atomic count skips the
     * lock while there are none. */
    pthread_rwlock_t urmu;
    atomic_size_t nuser_revs;
    struct user_rev_entry *user_revs;
    size_t user_revs_cap;
    pthread_mutex_t oncemu;      /* guards once[] and nonce */
    struct once *once[ONCE_BUCKETS];
    size_t nonce;
};

struct user_rev_entry {
    char *value;
    int64_t ts_ms;
};

static void user_rev_note(struct session_store *s, const char *value, int64_t ts_ms)
{
    pthread_rwlock_wrlock(&s->urmu);
    size_t n = atomic_load(&s->nuser_revs);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s->user_revs[i].value, value) == 0) {
            if (ts_ms > s->user_revs[i].ts_ms) {
                s->user_revs[i].ts_ms = ts_ms;
            }
            pthread_rwlock_unlock(&s->urmu);
            return;
        }
    }
    if (n == s->user_revs_cap) {
        s->user_revs_cap = s->user_revs_cap ? s->user_revs_cap * 2 : 16;
        s->user_revs = xrealloc(s->user_revs, s->user_revs_cap * sizeof *s->user_revs);
    }
    s->user_revs[n] = (struct user_rev_entry){ xstrdup(value), ts_ms };
    atomic_store(&s->nuser_revs, n + 1);
    pthread_rwlock_unlock(&s->urmu);
}

int64_t session_user_revoked_ms(struct session_store *s, const char *user_key,
                                const char *email)
{
    if (s == NULL || atomic_load(&s->nuser_revs) == 0) {
        return 0;
    }
    int64_t ts = 0;
    pthread_rwlock_rdlock(&s->urmu);
    size_t n = atomic_load(&s->nuser_revs);
    for (size_t i = 0; i < n; i++) {
        const struct user_rev_entry *e = &s->user_revs[i];
        if (((user_key != NULL && strcmp(e->value, user_key) == 0) ||
             (email != NULL && strcmp(e->value, email) == 0)) &&
            e->ts_ms > ts) {
            ts = e->ts_ms;
        }
    }
    pthread_rwlock_unlock(&s->urmu);
    return ts;
}

static int64_t now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- configuration ---------------------------------------------------- */

static const char *const session_keys[] = { "cookie", "idle_timeout", "max_lifetime", "refresh",
                                            "refresh_before", "key_file", NULL };

bool session_conf_parse(struct conf_diag *d, const struct conf_node *n, const char *conf_file,
                        struct session_conf *out)
{
    size_t before = d->count;
    const char *cookie = "gatehouse_session";
    const char *key_file = NULL;

    memset(out, 0, sizeof *out);
    out->idle_timeout_ms = 8 * 3600 * 1000ULL;
    out->max_lifetime_ms = 24 * 3600 * 1000ULL;
    out->refresh_before_ms = 60000;
    if (n != NULL && conf_check_keys(d, n, "session", session_keys)) {
        conf_string(d, n, "cookie", &cookie);
        conf_duration_ms(d, n, "idle_timeout", 1000, 365ULL * 86400000, &out->idle_timeout_ms);
        conf_duration_ms(d, n, "max_lifetime", 1000, 365ULL * 86400000, &out->max_lifetime_ms);
        conf_bool(d, n, "refresh", &out->refresh);
        conf_duration_ms(d, n, "refresh_before", 0, 86400000, &out->refresh_before_ms);
        conf_string(d, n, "key_file", &key_file);
        /* RFC 6265 token characters only, and room for the __Host- prefix. */
        size_t len = strlen(cookie);
        bool ok = len > 0 && len <= 64;
        for (size_t i = 0; ok && i < len; i++) {
            char c = cookie[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-' || c == '.';
        }
        if (!ok) {
            conf_error(d, conf_get(n, "cookie"),
                       "\"cookie\" must be 1-64 letters, digits, '_', '-' or '.', got \"%s\"",
                       cookie);
        }
    }
    out->cookie_name = xstrdup(cookie);
    if (key_file != NULL) {
        out->key_file = conf_path_resolve(conf_file, key_file);
    }
    return d->count == before;
}

void session_conf_fini(struct session_conf *c)
{
    free(c->cookie_name);
    free(c->key_file);
    spg_conf_fini(&c->pg);
    memset(c, 0, sizeof *c);
}

/* ---- records ---------------------------------------------------------- */

static char *dupn(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void wipe_free(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

static void sess_free(struct sess *e)
{
    if (e == NULL) {
        return;
    }
    free(e->user_key);
    free(e->email);
    free(e->name);
    attrs_unref(e->attrs);
    free(e->idp);
    free(e->sid);
    wipe_free(e->refresh_token);
    wipe_free(e->id_token);
    free(e);
}

static void set_public_id(struct sess *e)
{
    char hex[65];
    str_hex(e->h, 32, hex);
    memcpy(e->id, hex, 16);
    e->id[16] = '\0';
}

static struct sess *sess_copy(const struct sess *e)
{
    struct sess *c = xcalloc(1, sizeof *c);
    memcpy(c->h, e->h, sizeof c->h);
    memcpy(c->id, e->id, sizeof c->id);
    c->user_key = dupn(e->user_key);
    c->email = dupn(e->email);
    c->name = dupn(e->name);
    c->attrs = attrs_ref(e->attrs);
    c->idp = dupn(e->idp);
    c->sid = dupn(e->sid);
    c->refresh_token = dupn(e->refresh_token);
    c->id_token = dupn(e->id_token);
    c->created_ms = e->created_ms;
    c->last_seen_ms = e->last_seen_ms;
    c->expires_ms = e->expires_ms;
    c->token_exp_s = e->token_exp_s;
    return c;
}

static size_t bucket_of(const unsigned char h[32])
{
    return ((size_t)h[0] << 8 | h[1]) % NBUCKETS;
}

static pthread_mutex_t *stripe_of(struct session_store *s, size_t b)
{
    return &s->stripe[b % NSTRIPES];
}

/* Cookie value -> SHA-256 of the 32 random bytes it encodes. */
static bool cookie_hash(struct str cookie, unsigned char h[32])
{
    if (cookie.len != SESSION_COOKIE_LEN) {
        return false;
    }
    size_t n = 0;
    unsigned char raw[32];
    if (!codec_b64url_decode_to(cookie, raw, sizeof raw, &n) || n != sizeof raw) {
        OPENSSL_cleanse(raw, sizeof raw);
        return false;
    }
    codec_sha256(raw, n, h);
    OPENSSL_cleanse(raw, sizeof raw);
    return true;
}

static void enqueue(struct session_store *s, enum op_kind kind, struct sess *rec)
{
    struct op *o = xcalloc(1, sizeof *o);
    o->kind = kind;
    o->rec = rec;
    pthread_mutex_lock(&s->qmu);
    *s->qtail = o;
    s->qtail = &o->next;
    pthread_mutex_unlock(&s->qmu);
}

static bool expired(const struct session_store *s, const struct sess *e, int64_t now_ms)
{
    return now_ms >= e->expires_ms ||
           now_ms >= e->last_seen_ms + (int64_t)s->conf.idle_timeout_ms;
}

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
            if (st == NULL && sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO once_values "
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

static sqlite3 *db_open(const char *path, struct err *err)
{
    return state_sqlite_open(path, schema, 5000, "session", err);
}

static void aad_for(const unsigned char h[32], const char *what, char *out, size_t n)
{
    char hex[65];
    str_hex(h, 32, hex);
    snprintf(out, n, "gatehouse-session-v1:%s:%s", hex, what);
}

static char *seal_field(struct session_store *s, const unsigned char h[32], const char *what,
                        const char *v)
{
    char aad[128];
    if (v == NULL) {
        return NULL;
    }
    aad_for(h, what, aad, sizeof aad);
    return codec_seal(s->key, aad, v, strlen(v));
}

static char *open_field(struct session_store *s, const unsigned char h[32], const char *what,
                        const unsigned char *v)
{
    char aad[128];
    if (v == NULL) {
        return NULL;
    }
    aad_for(h, what, aad, sizeof aad);
    return codec_unseal(s->key, aad, str_from((const char *)v), NULL);
}

static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v != NULL) {
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_null(st, i);
    }
}

/* Binds n texts to the parameters first, first + 1, ... */
static void bind_texts(sqlite3_stmt *st, int first, const char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bind_text(st, first + (int)i, v[i]);
    }
}

static int hex_to_hash(const char *hex, unsigned char h[32])
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
        char *rt = seal_field(s, r->h, "rt", r->refresh_token);
        char *it = seal_field(s, r->h, "idt", r->id_token);
        const char *const text[] = { hex,   r->user_key, r->email,
                                     r->name, r->attrs->groups_json, r->attrs->claims_json,
                                     r->idp, r->sid };
        bind_texts(st, 1, text, 8);
        sqlite3_bind_int64(st, 9, r->created_ms);
        sqlite3_bind_int64(st, 10, r->last_seen_ms);
        sqlite3_bind_int64(st, 11, r->expires_ms);
        sqlite3_bind_int64(st, 12, r->token_exp_s);
        bind_text(st, 13, rt);
        bind_text(st, 14, it);
        free(rt);
        free(it);
    } else if (o->kind == OP_UPDATE) {
        sqlite3_prepare_v2(s->db,
                           "UPDATE sessions SET refresh_token = ?, token_exp_s = ?, "
                           "email = ?, name = ?, groups = ? WHERE id_hash = ?",
                           -1, &st, NULL);
        char *rt = seal_field(s, r->h, "rt", r->refresh_token);
        bind_text(st, 1, rt);
        sqlite3_bind_int64(st, 2, r->token_exp_s);
        const char *const text[] = { r->email, r->name, r->attrs->groups_json, hex };
        bind_texts(st, 3, text, 4);
        free(rt);
    } else {
        sqlite3_prepare_v2(s->db, "DELETE FROM sessions WHERE id_hash = ?", -1, &st, NULL);
        bind_text(st, 1, hex);
    }
    if (st == NULL || sqlite3_step(st) != SQLITE_DONE) {
        log_error("authn", "session store write failed: %s", sqlite3_errmsg(s->db));
    }
    sqlite3_finalize(st);
}

/* Removes from the cache every entry matching; returns the count. */
static size_t cache_remove_if(struct session_store *s,
                              bool (*match)(const struct sess *, const void *), const void *arg,
                              bool queue_delete)
{
    size_t n = 0;
    for (size_t b = 0; b < NBUCKETS; b++) {
        pthread_mutex_t *mu = stripe_of(s, b);
        struct sess *dead = NULL;
        pthread_mutex_lock(mu);
        for (struct sess **pp = &s->bucket[b]; *pp != NULL;) {
            struct sess *e = *pp;
            if (match(e, arg)) {
                *pp = e->next;
                e->next = dead;
                dead = e;
                n++;
            } else {
                pp = &e->next;
            }
        }
        pthread_mutex_unlock(mu);
        while (dead != NULL) {
            struct sess *next = dead->next;
            if (queue_delete) {
                enqueue(s, OP_DELETE, dead);
            } else {
                sess_free(dead);
            }
            dead = next;
        }
    }
    return n;
}

struct user_rev {
    const char *value;
    int64_t ts_ms;
};

/* --user of `sessions list|revoke`: the stored key (issuer#subject) exactly, or
 * whatever ident_user_match accepts for the subject, email and IdP. */
static bool sess_user_match(const char *query, const char *user_key, const char *email,
                            const char *idp)
{
    if (query == NULL || user_key == NULL) {
        return false;
    }
    const char *hash = strrchr(user_key, '#');
    return strcmp(query, user_key) == 0 ||
           ident_user_match(query, hash ? hash + 1 : user_key, email, idp);
}

static bool match_user_rev(const struct sess *e, const void *arg)
{
    const struct user_rev *u = arg;
    return e->created_ms <= u->ts_ms && sess_user_match(u->value, e->user_key, e->email, e->idp);
}

static bool match_hash(const struct sess *e, const void *arg)
{
    return memcmp(e->h, arg, 32) == 0;
}

static bool match_expired(const struct sess *e, const void *arg)
{
    const struct session_store *s = *(const struct session_store *const *)arg;
    return expired(s, e, now_wall_ms());
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
            if (hex_to_hash(value, h) == 0) {
                n = cache_remove_if(s, match_hash, h, true);
            }
        } else if (strcmp(kind, "user") == 0) {
            /* Deleted from SQLite too: a session created just before the
             * revocation may have been written after the CLI's DELETE, and
             * would otherwise come back on restart. */
            struct user_rev u = { value, sqlite3_column_int64(st, 3) };
            n = cache_remove_if(s, match_user_rev, &u, true);
            user_rev_note(s, value, u.ts_ms);
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
    w->refresh_token = seal_field(s, r->h, "rt", r->refresh_token);
    w->id_token = seal_field(s, r->h, "idt", r->id_token);
    w->created_ms = r->created_ms;
    w->last_seen_ms = r->last_seen_ms;
    w->expires_ms = r->expires_ms;
    w->token_exp_s = r->token_exp_s;
}

static struct sess **find(struct session_store *s, size_t b, const unsigned char h[32]);

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
        w[i].kind = o->kind == OP_INSERT ? SPG_INSERT : o->kind == OP_UPDATE ? SPG_UPDATE
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
            size_t b = bucket_of(o->rec->h);
            pthread_mutex_lock(stripe_of(s, b));
            struct sess **pp = find(s, b, o->rec->h);
            if (pp != NULL) {
                (*pp)->unwritten = false;
            }
            pthread_mutex_unlock(stripe_of(s, b));
        }
    }
    while (ops != NULL) {
        struct op *next = ops->next;
        sess_free(ops->rec);
        free(ops);
        ops = next;
    }
}

static bool user_revoked_at_creation(struct session_store *s, const struct sess *e)
{
    bool dead = false;
    pthread_rwlock_rdlock(&s->urmu);
    size_t n = atomic_load(&s->nuser_revs);
    for (size_t i = 0; i < n && !dead; i++) {
        struct user_rev u = { s->user_revs[i].value, s->user_revs[i].ts_ms };
        dead = match_user_rev(e, &u);
    }
    pthread_rwlock_unlock(&s->urmu);
    return dead;
}


/* A session row from the database (created or refreshed on another node). */
static void hook_row(void *arg, const struct spg_row *r, bool update)
{
    struct session_store *s = arg;
    struct sess *e = xcalloc(1, sizeof *e);
    if (hex_to_hash(r->id_hash, e->h) != 0 || r->user_key == NULL || r->idp == NULL) {
        free(e);
        return;
    }
    set_public_id(e);
    e->user_key = xstrdup(r->user_key);
    e->email = dupn(r->email);
    e->name = dupn(r->name);
    e->attrs = attrs_parse(r->groups, r->claims);
    e->idp = xstrdup(r->idp);
    e->sid = dupn(r->sid);
    e->refresh_token = open_field(s, e->h, "rt", (const unsigned char *)r->refresh_token);
    e->id_token = open_field(s, e->h, "idt", (const unsigned char *)r->id_token);
    if (r->refresh_token != NULL && e->refresh_token == NULL) {
        log_warn("authn", "a stored refresh token does not open with the session key "
                          "(session.key_file differs between nodes?); that session will not "
                          "refresh");
    }
    e->created_ms = r->created_ms;
    e->last_seen_ms = e->flushed_last_seen_ms = r->last_seen_ms;
    e->expires_ms = r->expires_ms;
    e->token_exp_s = r->token_exp_s;
    if (expired(s, e, now_wall_ms()) || user_revoked_at_creation(s, e)) {
        sess_free(e);
        return;
    }
    size_t b = bucket_of(e->h);
    pthread_mutex_lock(stripe_of(s, b));
    struct sess **pp = find(s, b, e->h);
    if (pp == NULL) {
        e->seen = true;
        e->next = s->bucket[b];
        s->bucket[b] = e;
        e = NULL;
    } else if (update) {
        struct sess *c = *pp;
        c->seen = true;
        wipe_free(c->refresh_token);
        c->refresh_token = e->refresh_token;
        e->refresh_token = NULL;
        c->token_exp_s = e->token_exp_s;
        free(c->email);
        c->email = e->email;
        e->email = NULL;
        free(c->name);
        c->name = e->name;
        e->name = NULL;
        const struct authn_attrs *old = c->attrs; /* e frees it */
        c->attrs = e->attrs;
        e->attrs = old;
    }
    pthread_mutex_unlock(stripe_of(s, b));
    sess_free(e);
}

/* Takes the session with hash h out of the cache: the caller frees or
 * deletes it. NULL when there is none. */
static struct sess *cache_unlink(struct session_store *s, const unsigned char h[32])
{
    size_t b = bucket_of(h);
    struct sess *dead = NULL;
    pthread_mutex_lock(stripe_of(s, b));
    struct sess **pp = find(s, b, h);
    if (pp != NULL) {
        dead = *pp;
        *pp = dead->next;
    }
    pthread_mutex_unlock(stripe_of(s, b));
    return dead;
}

static void hook_revoke(void *arg, const char *kind, const char *value, int64_t ts_ms)
{
    struct session_store *s = arg;
    size_t n = 0;
    if (strcmp(kind, "id") == 0) {
        unsigned char h[32];
        if (hex_to_hash(value, h) == 0) {
            /* One bucket, not a scan: every sign-out in the fleet comes here. */
            struct sess *dead = cache_unlink(s, h);
            n = dead != NULL;
            sess_free(dead);
        }
    } else if (strcmp(kind, "user") == 0) {
        /* Also deleted from the database: a session created here just
         * before the revocation may have been written after its DELETE. */
        struct user_rev u = { value, ts_ms };
        user_rev_note(s, value, ts_ms);
        n = cache_remove_if(s, match_user_rev, &u, true);
    } else if (strcmp(kind, "user-note") == 0) {
        user_rev_note(s, value, ts_ms);
    }
    if (n > 0) {
        log_info("authn", "applied session revocation %s: %zu session(s) ended", kind, n);
    }
}

static bool match_unseen(const struct sess *e, const void *arg)
{
    (void)arg;
    return !e->seen;
}

static void hook_resync(void *arg, bool end)
{
    struct session_store *s = arg;
    if (end) {
        size_t n = cache_remove_if(s, match_unseen, NULL, false);
        log_info("authn", "session cache rebuilt from PostgreSQL: %zu session(s) no longer "
                          "there ended", n);
        return;
    }
    /* Sessions made here and not written yet are not in the table yet. */
    for (size_t b = 0; b < NBUCKETS; b++) {
        pthread_mutex_lock(stripe_of(s, b));
        for (struct sess *e = s->bucket[b]; e != NULL; e = e->next) {
            e->seen = e->unwritten;
        }
        pthread_mutex_unlock(stripe_of(s, b));
    }
}

static void hook_touch(void *arg, const char *id_hash, int64_t last_seen_ms)
{
    struct session_store *s = arg;
    unsigned char h[32];
    if (hex_to_hash(id_hash, h) != 0) {
        return;
    }
    size_t b = bucket_of(h);
    pthread_mutex_lock(stripe_of(s, b));
    struct sess **pp = find(s, b, h);
    if (pp != NULL && (*pp)->last_seen_ms < last_seen_ms) {
        (*pp)->last_seen_ms = last_seen_ms;
        if ((*pp)->flushed_last_seen_ms < last_seen_ms) {
            (*pp)->flushed_last_seen_ms = last_seen_ms;
        }
    }
    pthread_mutex_unlock(stripe_of(s, b));
}

void session_store_derive_key(struct session_store *s, const char *label, unsigned char out[32])
{
    unsigned int n = 32;
    if (HMAC(EVP_sha256(), s->key, sizeof s->key, (const unsigned char *)label, strlen(label), out,
             &n) == NULL) {
        /* Cannot happen with SHA-256 in OpenSSL 3; never leave a guessable key. */
        abort();
    }
}

bool session_store_shared(const struct session_store *s)
{
    return s != NULL && s->pg != NULL;
}

struct spg *session_store_pg(struct session_store *s)
{
    return s != NULL ? s->pg : NULL;
}

bool session_cookie_id_hash(struct str cookie, char out[65])
{
    unsigned char h[32];
    if (!cookie_hash(cookie, h)) {
        return false;
    }
    str_hex(h, 32, out);
    return true;
}

bool session_store_ready(struct session_store *s)
{
    return s == NULL || s->pg == NULL || spg_ok(s->pg, now_wall_ms());
}

static bool store_reachable(void *arg)
{
    return session_store_ready(arg);
}

static void writer_cycle(struct session_store *s)
{
    pthread_mutex_lock(&s->dbmu);
    pthread_mutex_lock(&s->qmu);
    struct op *ops = s->qhead;
    s->qhead = NULL;
    s->qtail = &s->qhead;
    pthread_mutex_unlock(&s->qmu);

    /* Collect last-seen moves under each stripe lock, write them afterwards. */
    size_t ntouch = 0, cap = 0;
    struct touch *touch = NULL;
    for (size_t b = 0; b < NBUCKETS; b++) {
        pthread_mutex_t *mu = stripe_of(s, b);
        pthread_mutex_lock(mu);
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
            log_warn("authn", "session store busy, retrying the batch: %s",
                     sqlite3_errmsg(s->db));
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

    int64_t now = now_wall_ms();
    if (s->pg != NULL) {
        /* Revocations arrive through the listener thread (session_pg.c). */
        if (now - s->last_purge_ms >= PURGE_PERIOD_MS) {
            s->last_purge_ms = now;
            const struct session_store *self = s;
            cache_remove_if(s, match_expired, &self, false);
            spg_purge(s->pg, now, s->conf.idle_timeout_ms);
        }
        pthread_mutex_unlock(&s->dbmu);
        return;
    }
    poll_revocations(s);

    if (now - s->last_purge_ms >= PURGE_PERIOD_MS) {
        s->last_purge_ms = now;
        const struct session_store *self = s;
        cache_remove_if(s, match_expired, &self, false);
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
        sqlite3_exec(s->db, "DELETE FROM session_revocations WHERE ts_ms < "
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

static void preload(struct session_store *s, int64_t now_ms)
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
        if (hex_to_hash((const char *)sqlite3_column_text(st, 0), e->h) != 0) {
            free(e);
            continue;
        }
        set_public_id(e);
        e->user_key = dupn((const char *)sqlite3_column_text(st, 1));
        e->email = dupn((const char *)sqlite3_column_text(st, 2));
        e->name = dupn((const char *)sqlite3_column_text(st, 3));
        e->attrs = attrs_parse((const char *)sqlite3_column_text(st, 4),
                               (const char *)sqlite3_column_text(st, 5));
        e->idp = dupn((const char *)sqlite3_column_text(st, 6));
        e->sid = dupn((const char *)sqlite3_column_text(st, 7));
        e->created_ms = sqlite3_column_int64(st, 8);
        e->last_seen_ms = e->flushed_last_seen_ms = sqlite3_column_int64(st, 9);
        e->expires_ms = sqlite3_column_int64(st, 10);
        e->token_exp_s = sqlite3_column_int64(st, 11);
        const unsigned char *rt = sqlite3_column_text(st, 12);
        e->refresh_token = open_field(s, e->h, "rt", rt);
        e->id_token = open_field(s, e->h, "idt", sqlite3_column_text(st, 13));
        if (rt != NULL && e->refresh_token == NULL) {
            log_warn("authn", "a stored refresh token does not open with the session key "
                     "(key file replaced?); that session will not refresh");
        }
        if (e->user_key == NULL || e->idp == NULL || expired(s, e, now_ms)) {
            sess_free(e);
            continue;
        }
        size_t b = bucket_of(e->h);
        e->next = s->bucket[b];
        s->bucket[b] = e;
        n++;
    }
    sqlite3_finalize(st);
    sqlite3_prepare_v2(s->db, "SELECT value, ts_ms FROM user_revocations", -1, &st, NULL);
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (v != NULL) {
            user_rev_note(s, v, sqlite3_column_int64(st, 1));
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    sqlite3_prepare_v2(s->db, "SELECT key_hash, exp_s FROM once_values WHERE exp_s >= ?", -1,
                       &st, NULL);
    sqlite3_bind_int64(st, 1, now_ms / 1000);
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        struct once *o = xcalloc(1, sizeof *o);
        if (hex_to_hash((const char *)sqlite3_column_text(st, 0), o->h) != 0) {
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
        err_set(err, ERR_CONFIG, "state.postgres without state.sqlite needs session.key_file "
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
    s->last_purge_ms = now_wall_ms();
    if (c->pg.conninfo != NULL) {
        s->conf.pg.staleness_ms = c->pg.staleness_ms;
        struct spg_hooks h = { .arg = s, .row = hook_row, .revoke = hook_revoke,
                               .touch = hook_touch, .resync = hook_resync };
        device_store_use_postgres(&c->pg); /* the registry is the fleet's too */
        s->pg = spg_open(&c->pg, &h, err);
        if (s->pg == NULL) {
            goto fail;
        }
        /* While this node knows the database is out of reach, the registry's
         * workers do not try it (no worker waits for a connect timeout). */
        device_store_set_ready(store_reachable, s);
    } else {
        s->db = db_open(db_path, err);
        if (s->db == NULL) {
            goto fail;
        }
        preload(s, now_wall_ms());
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

/* ---- request path ----------------------------------------------------- */

bool session_once(struct session_store *s, struct str key, int64_t exp_s, int64_t now_s)
{
    return session_once_check(s, key, exp_s, now_s) == 1;
}

int session_once_check(struct session_store *s, struct str key, int64_t exp_s, int64_t now_s)
{
    int unchecked = 0;
    unsigned char h[32];
    codec_sha256(key.p, key.len, h);
    size_t b = (size_t)(h[0] | (h[1] << 8)) % ONCE_BUCKETS;
    bool fresh = true;
    pthread_mutex_lock(&s->oncemu);
    for (struct once **pp = &s->once[b]; *pp != NULL;) {
        struct once *o = *pp;
        if (memcmp(o->h, h, 32) == 0) {
            fresh = false;
            break;
        }
        if (o->exp_s < now_s && o->flushed) { /* expired: the purge drops its row */
            *pp = o->next;
            free(o);
            s->nonce--;
            continue;
        }
        pp = &o->next;
    }
    if (fresh && s->nonce >= ONCE_MAX) {
        fresh = false; /* full of live values: fail closed */
    }
    if (fresh && s->pg != NULL) {
        /* A fleet: the database decides first use across nodes (the local
         * entry below only spares it repeats on this node). Unreachable
         * database: refused, never a replay accepted. */
        struct err err = { 0 };
        bool shared = false;
        int rc;
        pthread_mutex_unlock(&s->oncemu); /* other workers do not wait on it */
        if (!spg_ok(s->pg, now_wall_ms())) {
            /* Known out of reach (the listener thread says so): refuse at once
             * rather than make this worker wait for a timeout. */
            rc = err_set(&err, ERR_IO, "PostgreSQL unreachable");
        } else {
            rc = spg_once(s->pg, h, exp_s, &shared, &err);
        }
        pthread_mutex_lock(&s->oncemu);
        if (rc != 0) {
            log_error("authn", "one-time value not checked, refused: %s", err.msg);
            fresh = false;
            unchecked = -1;
        } else if (!shared) {
            fresh = false;
        }
    }
    if (fresh) {
        struct once *o = xcalloc(1, sizeof *o);
        memcpy(o->h, h, 32);
        o->exp_s = exp_s;
        /* On PostgreSQL the row is written already (spg_once), and purged
         * there when it expires. */
        o->flushed = s->pg != NULL;
        o->next = s->once[b];
        s->once[b] = o;
        s->nonce++;
    }
    pthread_mutex_unlock(&s->oncemu);
    return fresh ? 1 : unchecked;
}

int session_create(struct session_store *s, const struct session_new *in, int64_t now_ms,
                   char cookie[SESSION_COOKIE_LEN + 1], struct err *err)
{
    unsigned char raw[32];
    if (in->user_key == NULL || in->idp == NULL) {
        return err_set(err, ERR_PARSE, "session needs a user key and an identity provider");
    }
    if (!session_store_ready(s)) {
        /* Other nodes could not learn of it, nor revoke it. */
        return err_set(err, ERR_IO, "the session database is unreachable");
    }
    if (!codec_rand_bytes(raw, sizeof raw)) {
        return err_set(err, ERR_CRYPTO, "no randomness for a session id");
    }
    char *v = codec_b64url_encode(raw, sizeof raw);
    memcpy(cookie, v, SESSION_COOKIE_LEN + 1);
    OPENSSL_cleanse(v, strlen(v));
    free(v);

    struct sess *e = xcalloc(1, sizeof *e);
    codec_sha256(raw, sizeof raw, e->h);
    set_public_id(e);
    OPENSSL_cleanse(raw, sizeof raw);
    e->user_key = xstrdup(in->user_key);
    e->email = dupn(in->email);
    e->name = dupn(in->name);
    e->attrs = in->attrs ? attrs_ref(in->attrs) : attrs_parse(NULL, NULL);
    e->idp = xstrdup(in->idp);
    e->sid = dupn(in->sid);
    e->refresh_token = dupn(in->refresh_token);
    e->id_token = dupn(in->id_token);
    e->created_ms = now_ms;
    e->last_seen_ms = e->flushed_last_seen_ms = now_ms;
    e->expires_ms = now_ms + (int64_t)s->conf.max_lifetime_ms;
    e->token_exp_s = in->token_exp_s;
    e->unwritten = s->pg != NULL;

    struct sess *copy = sess_copy(e);
    size_t b = bucket_of(e->h);
    pthread_mutex_lock(stripe_of(s, b));
    e->next = s->bucket[b];
    s->bucket[b] = e;
    pthread_mutex_unlock(stripe_of(s, b));
    enqueue(s, OP_INSERT, copy);
    if (s->pg != NULL) {
        /* The other nodes learn of it once it is written: now, not in 500 ms. */
        pthread_mutex_lock(&s->qmu);
        pthread_cond_signal(&s->qcv);
        pthread_mutex_unlock(&s->qmu);
    }
    return 0;
}

/* Finds the entry for h in its bucket; the stripe lock must be held. */
static struct sess **find(struct session_store *s, size_t b, const unsigned char h[32])
{
    for (struct sess **pp = &s->bucket[b]; *pp != NULL; pp = &(*pp)->next) {
        if (memcmp((*pp)->h, h, 32) == 0) {
            return pp;
        }
    }
    return NULL;
}

enum session_status session_lookup(struct session_store *s, struct str cookie, int64_t now_ms,
                                   struct arena *a, struct session_view *out)
{
    unsigned char h[32];
    memset(out, 0, sizeof *out);
    if (!cookie_hash(cookie, h)) {
        return SESSION_NONE;
    }
    size_t b = bucket_of(h);
    pthread_mutex_t *mu = stripe_of(s, b);
    enum session_status st = SESSION_NONE;
    struct sess *dead = NULL;

    /* PostgreSQL: the cache answers only while it is known to be fresh. A
     * cookie it does not know may be a session made on another node while
     * the database was out of reach: unavailable, not signed out. */
    bool stale = false, unsure = false;
    if (s->pg != NULL) {
        stale = now_ms - spg_synced_ms(s->pg) > (int64_t)s->conf.pg.staleness_ms;
        unsure = stale || !spg_ok(s->pg, now_ms);
    }
    pthread_mutex_lock(mu);
    struct sess **pp = find(s, b, h);
    if (pp == NULL) {
        st = unsure ? SESSION_UNAVAILABLE : SESSION_NONE;
        goto out;
    }
    struct sess *e = *pp;
    if (stale) {
        st = SESSION_UNAVAILABLE;
        goto out;
    }
    if (expired(s, e, now_ms)) {
        *pp = e->next;
        dead = e;
        st = SESSION_EXPIRED;
        goto out;
    }
    /* The strings are copied out (a refresh may replace them while the request
     * runs), in one block of the request's arena. */
    const char *src[] = { e->user_key, e->email, e->name, e->idp, e->sid };
    const char **dst[] = { &out->user_key, &out->email, &out->name, &out->idp, &out->sid };
    size_t len[sizeof src / sizeof src[0]], total = 0;
    for (size_t i = 0; i < sizeof src / sizeof src[0]; i++) {
        len[i] = src[i] ? strlen(src[i]) + 1 : 0;
        total += len[i];
    }
    char *block = arena_alloc(a, total ? total : 1);
    if (block == NULL || !attrs_hold(a, e->attrs)) {
        goto out; /* arena cap: fail closed */
    }
    out->attrs = e->attrs; /* parsed once; held until the request ends */
    for (size_t i = 0; i < sizeof src / sizeof src[0]; i++) {
        *dst[i] = src[i] ? memcpy(block, src[i], len[i]) : NULL;
        block += len[i];
    }
    memcpy(out->id, e->id, sizeof out->id);
    /* Activity moves the idle deadline; the writer flushes it in batches. */
    if (now_ms >= e->last_seen_ms + TOUCH_GRANULARITY_MS) {
        e->last_seen_ms = now_ms;
    }
    out->created_ms = e->created_ms;
    out->last_seen_ms = e->last_seen_ms;
    out->expires_ms = e->expires_ms;
    out->idle_expires_ms = e->last_seen_ms + (int64_t)s->conf.idle_timeout_ms;
    out->token_exp_s = e->token_exp_s;
    out->has_refresh_token = e->refresh_token != NULL;
    out->refresh_due = s->conf.refresh && e->refresh_token != NULL && !e->refresh_in_flight &&
                       e->token_exp_s > 0 &&
                       now_ms + (int64_t)s->conf.refresh_before_ms >= e->token_exp_s * 1000;
    st = SESSION_VALID;
out:
    pthread_mutex_unlock(mu);
    if (dead != NULL) {
        enqueue(s, OP_DELETE, dead);
    }
    return st;
}

size_t session_revoke_cookie(struct session_store *s, struct str cookie)
{
    unsigned char h[32];
    if (!cookie_hash(cookie, h)) {
        return 0;
    }
    struct sess *dead = cache_unlink(s, h);
    if (dead == NULL) {
        return 0;
    }
    enqueue(s, OP_DELETE, dead);
    return 1;
}

static bool match_user(const struct sess *e, const void *arg)
{
    return strcmp(e->user_key, arg) == 0;
}

size_t session_revoke_user(struct session_store *s, const char *user_key)
{
    return cache_remove_if(s, match_user, user_key, true);
}

struct sid_match {
    const char *idp, *sid;
};

static bool match_sid(const struct sess *e, const void *arg)
{
    const struct sid_match *m = arg;
    return e->sid != NULL && strcmp(e->sid, m->sid) == 0 && strcmp(e->idp, m->idp) == 0;
}

size_t session_revoke_sid(struct session_store *s, const char *idp, const char *sid)
{
    struct sid_match m = { idp, sid };
    return cache_remove_if(s, match_sid, &m, true);
}

bool session_refresh_claim(struct session_store *s, struct str cookie, int64_t now_ms,
                           char **refresh_token)
{
    unsigned char h[32];
    bool mine = false;
    *refresh_token = NULL;
    if (!cookie_hash(cookie, h)) {
        return false;
    }
    size_t b = bucket_of(h);
    pthread_mutex_lock(stripe_of(s, b));
    struct sess **pp = find(s, b, h);
    if (pp != NULL && !(*pp)->refresh_in_flight && (*pp)->refresh_token != NULL &&
        !expired(s, *pp, now_ms)) {
        (*pp)->refresh_in_flight = true;
        *refresh_token = xstrdup((*pp)->refresh_token);
        mine = true;
    }
    pthread_mutex_unlock(stripe_of(s, b));
    return mine;
}

static void replace(char **dst, const char *v)
{
    if (v != NULL) {
        wipe_free(*dst);
        *dst = xstrdup(v);
    }
}

void session_refresh_done(struct session_store *s, struct str cookie, bool ok,
                          bool end_on_failure, const char *refresh_token, int64_t token_exp_s,
                          const char *email, const char *name,
                          const struct authn_attrs *attrs)
{
    unsigned char h[32];
    if (!cookie_hash(cookie, h)) {
        return;
    }
    size_t b = bucket_of(h);
    struct sess *copy = NULL;
    struct sess *dead = NULL;
    pthread_mutex_lock(stripe_of(s, b));
    struct sess **pp = find(s, b, h);
    if (pp != NULL) {
        struct sess *e = *pp;
        e->refresh_in_flight = false;
        if (ok) {
            replace(&e->refresh_token, refresh_token);
            if (attrs != NULL) {
                /* A new ID token's identity: an email it no longer carries
                 * (or no longer as verified) is gone, not kept. */
                wipe_free(e->email);
                e->email = email ? xstrdup(email) : NULL;
            }
            replace(&e->name, name);
            if (attrs != NULL) {
                attrs_unref(e->attrs);
                e->attrs = attrs_ref(attrs);
            }
            /* 0 = the IdP did not say: stop refreshing rather than refresh on
             * every request with a stale expiry. */
            e->token_exp_s = token_exp_s > 0 ? token_exp_s : 0;
            copy = sess_copy(e);
        } else if (end_on_failure) {
            *pp = e->next;
            dead = e;
        }
    }
    pthread_mutex_unlock(stripe_of(s, b));
    if (copy != NULL) {
        enqueue(s, OP_UPDATE, copy);
    }
    if (dead != NULL) {
        enqueue(s, OP_DELETE, dead);
    }
}

char *session_id_token(struct session_store *s, struct str cookie)
{
    unsigned char h[32];
    char *out = NULL;
    if (!cookie_hash(cookie, h)) {
        return NULL;
    }
    size_t b = bucket_of(h);
    pthread_mutex_lock(stripe_of(s, b));
    struct sess **pp = find(s, b, h);
    if (pp != NULL && (*pp)->id_token != NULL) {
        out = xstrdup((*pp)->id_token);
    }
    pthread_mutex_unlock(stripe_of(s, b));
    return out;
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

static void list_one(void *arg, const char *hex, const char *uk, const char *email,
                        const char *idp, int64_t created_ms, int64_t last_seen_ms,
                        int64_t expires_ms, const char *groups)
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
    sqlite3 *db = db_open(db_path, err);
    if (db == NULL) {
        return ERR_IO;
    }
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db,
                       "SELECT id_hash, user_key, email, idp, created_ms, last_seen_ms, "
                       "expires_ms, groups FROM sessions WHERE expires_ms > ?1 ORDER BY created_ms",
                       -1, &st, NULL);
    sqlite3_bind_int64(st, 1, now_wall_ms());
    struct list_ctx l = { user, bare_idp, json, out };
    list_head(&l);
    while (st != NULL && sqlite3_step(st) == SQLITE_ROW) {
        list_one(&l, (const char *)sqlite3_column_text(st, 0),
                 (const char *)sqlite3_column_text(st, 1),
                 (const char *)sqlite3_column_text(st, 2),
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
    sqlite3 *db = db_open(db_path, err);
    if (db == NULL) {
        return ERR_IO;
    }
    int rc = 0;
    int64_t now = now_wall_ms();
    sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    sqlite3_stmt *sel = NULL;
    if (id != NULL) {
        sqlite3_prepare_v2(db, "SELECT id_hash FROM sessions WHERE substr(id_hash, 1, ?1) = ?2",
                           -1, &sel, NULL);
        sqlite3_bind_int(sel, 1, (int)strlen(id));
        bind_text(sel, 2, id);
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
    sqlite3_prepare_v2(db,
                       "INSERT INTO session_revocations (kind, value, ts_ms) VALUES (?, ?, ?)",
                       -1, &rev, NULL);
    for (size_t i = 0; del && rev && i < n; i++) {
        bind_text(del, 1, hashes[i]);
        sqlite3_step(del);
        sqlite3_reset(del);
        bind_text(rev, 1, "id");
        bind_text(rev, 2, hashes[i]);
        sqlite3_bind_int64(rev, 3, now);
        sqlite3_step(rev);
        sqlite3_reset(rev);
    }
    /* Also catch sessions the server created but has not written yet; and
     * the user's bearer tokens issued until now (user_revocations). */
    if (user != NULL && rev != NULL) {
        bind_text(rev, 1, "user");
        bind_text(rev, 2, user);
        sqlite3_bind_int64(rev, 3, now);
        if (sqlite3_step(rev) != SQLITE_DONE) {
            rc = err_set(err, ERR_IO, "cannot record the revocation: %s", sqlite3_errmsg(db));
        }
        sqlite3_stmt *ur = NULL;
        sqlite3_prepare_v2(db,
                           "INSERT INTO user_revocations (value, ts_ms) VALUES (?1, ?2) "
                           "ON CONFLICT(value) DO UPDATE SET ts_ms = max(ts_ms, ?2)",
                           -1, &ur, NULL);
        bind_text(ur, 1, user);
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
    return spg_admin_list(pg, now_wall_ms(), list_one, &l, err);
}

int session_admin_revoke_pg(const struct spg_conf *pg, const char *user, const char *id,
                            size_t *count, struct err *err)
{
    *count = 0;
    int bad = revoke_args_check(user, id, err);
    if (bad != 0) {
        return bad;
    }
    return spg_admin_revoke(pg, user, id, sess_user_match, now_wall_ms(), count, err);
}
