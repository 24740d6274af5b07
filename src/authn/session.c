/* authn/session.c - the session store behind the session cookie: its
 * configuration, the in-memory table the request path reads (a striped-lock
 * hash table only), create, lookup, revoke and refresh on it, the one-time
 * values, and the hooks through which PostgreSQL's change feed updates it.
 * The writer thread and the store's lifetime are in session_writer.c, the
 * SQLite store and the CLI's list and revoke in session_sqlite.c
 * (session_int.h is what the three share). */
#include "session.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "session_int.h"

#define TOUCH_GRANULARITY_MS 1000
#define ONCE_MAX             500000 /* live one-time values; beyond that, fail closed */

void sess_user_rev_note(struct session_store *s, const char *value, int64_t ts_ms)
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

int64_t session_user_revoked_ms(struct session_store *s, const char *user_key, const char *email)
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

int64_t sess_now_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- configuration ---------------------------------------------------- */

static const char *const session_keys[] = { "cookie",  "idle_timeout",   "max_lifetime",
                                            "refresh", "refresh_before", "key_file",
                                            NULL };

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

char *sess_dupn(const char *s)
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

void sess_free(struct sess *e)
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

void sess_set_public_id(struct sess *e)
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
    c->user_key = sess_dupn(e->user_key);
    c->email = sess_dupn(e->email);
    c->name = sess_dupn(e->name);
    c->attrs = attrs_ref(e->attrs);
    c->idp = sess_dupn(e->idp);
    c->sid = sess_dupn(e->sid);
    c->refresh_token = sess_dupn(e->refresh_token);
    c->id_token = sess_dupn(e->id_token);
    c->created_ms = e->created_ms;
    c->last_seen_ms = e->last_seen_ms;
    c->expires_ms = e->expires_ms;
    c->token_exp_s = e->token_exp_s;
    return c;
}

size_t sess_bucket_of(const unsigned char h[32])
{
    return ((size_t)h[0] << 8 | h[1]) % NBUCKETS;
}

pthread_mutex_t *sess_stripe_of(struct session_store *s, size_t b)
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

bool sess_expired(const struct session_store *s, const struct sess *e, int64_t now_ms)
{
    return now_ms >= e->expires_ms || now_ms >= e->last_seen_ms + (int64_t)s->conf.idle_timeout_ms;
}

/* Removes from the cache every entry matching; returns the count. */
size_t sess_cache_remove_if(struct session_store *s,
                            bool (*match)(const struct sess *, const void *), const void *arg,
                            bool queue_delete)
{
    size_t n = 0;
    for (size_t b = 0; b < NBUCKETS; b++) {
        pthread_mutex_t *mu = sess_stripe_of(s, b);
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

/* --user of `sessions list|revoke`: the stored key (issuer#subject) exactly, or
 * whatever ident_user_match accepts for the subject, email and IdP. */
bool sess_user_match(const char *query, const char *user_key, const char *email, const char *idp)
{
    if (query == NULL || user_key == NULL) {
        return false;
    }
    const char *hash = strrchr(user_key, '#');
    return strcmp(query, user_key) == 0 ||
           ident_user_match(query, hash ? hash + 1 : user_key, email, idp);
}

bool sess_match_user_rev(const struct sess *e, const void *arg)
{
    const struct user_rev *u = arg;
    return e->created_ms <= u->ts_ms && sess_user_match(u->value, e->user_key, e->email, e->idp);
}

bool sess_match_hash(const struct sess *e, const void *arg)
{
    return memcmp(e->h, arg, 32) == 0;
}

bool sess_match_expired(const struct sess *e, const void *arg)
{
    const struct session_store *s = *(const struct session_store *const *)arg;
    return sess_expired(s, e, sess_now_wall_ms());
}

static bool user_revoked_at_creation(struct session_store *s, const struct sess *e)
{
    bool dead = false;
    pthread_rwlock_rdlock(&s->urmu);
    size_t n = atomic_load(&s->nuser_revs);
    for (size_t i = 0; i < n && !dead; i++) {
        struct user_rev u = { s->user_revs[i].value, s->user_revs[i].ts_ms };
        dead = sess_match_user_rev(e, &u);
    }
    pthread_rwlock_unlock(&s->urmu);
    return dead;
}

/* A session row from the database (created or refreshed on another node). */
void sess_hook_row(void *arg, const struct spg_row *r, bool update)
{
    struct session_store *s = arg;
    struct sess *e = xcalloc(1, sizeof *e);
    if (sdb_hex_to_hash(r->id_hash, e->h) != 0 || r->user_key == NULL || r->idp == NULL) {
        free(e);
        return;
    }
    sess_set_public_id(e);
    e->user_key = xstrdup(r->user_key);
    e->email = sess_dupn(r->email);
    e->name = sess_dupn(r->name);
    e->attrs = attrs_parse(r->groups, r->claims);
    e->idp = xstrdup(r->idp);
    e->sid = sess_dupn(r->sid);
    e->refresh_token = sdb_open_field(s, e->h, "rt", (const unsigned char *)r->refresh_token);
    e->id_token = sdb_open_field(s, e->h, "idt", (const unsigned char *)r->id_token);
    if (r->refresh_token != NULL && e->refresh_token == NULL) {
        log_warn("authn", "a stored refresh token does not open with the session key "
                          "(session.key_file differs between nodes?); that session will not "
                          "refresh");
    }
    e->created_ms = r->created_ms;
    e->last_seen_ms = e->flushed_last_seen_ms = r->last_seen_ms;
    e->expires_ms = r->expires_ms;
    e->token_exp_s = r->token_exp_s;
    if (sess_expired(s, e, sess_now_wall_ms()) || user_revoked_at_creation(s, e)) {
        sess_free(e);
        return;
    }
    size_t b = sess_bucket_of(e->h);
    pthread_mutex_lock(sess_stripe_of(s, b));
    struct sess **pp = sess_find(s, b, e->h);
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
    pthread_mutex_unlock(sess_stripe_of(s, b));
    sess_free(e);
}

/* Takes the session with hash h out of the cache: the caller frees or
 * deletes it. NULL when there is none. */
static struct sess *cache_unlink(struct session_store *s, const unsigned char h[32])
{
    size_t b = sess_bucket_of(h);
    struct sess *dead = NULL;
    pthread_mutex_lock(sess_stripe_of(s, b));
    struct sess **pp = sess_find(s, b, h);
    if (pp != NULL) {
        dead = *pp;
        *pp = dead->next;
    }
    pthread_mutex_unlock(sess_stripe_of(s, b));
    return dead;
}

void sess_hook_revoke(void *arg, const char *kind, const char *value, int64_t ts_ms)
{
    struct session_store *s = arg;
    size_t n = 0;
    if (strcmp(kind, "id") == 0) {
        unsigned char h[32];
        if (sdb_hex_to_hash(value, h) == 0) {
            /* One bucket, not a scan: every sign-out in the fleet comes here. */
            struct sess *dead = cache_unlink(s, h);
            n = dead != NULL;
            sess_free(dead);
        }
    } else if (strcmp(kind, "user") == 0) {
        /* Also deleted from the database: a session created here just
         * before the revocation may have been written after its DELETE. */
        struct user_rev u = { value, ts_ms };
        sess_user_rev_note(s, value, ts_ms);
        n = sess_cache_remove_if(s, sess_match_user_rev, &u, true);
    } else if (strcmp(kind, "user-note") == 0) {
        sess_user_rev_note(s, value, ts_ms);
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

void sess_hook_resync(void *arg, bool end)
{
    struct session_store *s = arg;
    if (end) {
        size_t n = sess_cache_remove_if(s, match_unseen, NULL, false);
        log_info("authn",
                 "session cache rebuilt from PostgreSQL: %zu session(s) no longer "
                 "there ended",
                 n);
        return;
    }
    /* Sessions made here and not written yet are not in the table yet. */
    for (size_t b = 0; b < NBUCKETS; b++) {
        pthread_mutex_lock(sess_stripe_of(s, b));
        for (struct sess *e = s->bucket[b]; e != NULL; e = e->next) {
            e->seen = e->unwritten;
        }
        pthread_mutex_unlock(sess_stripe_of(s, b));
    }
}

void sess_hook_touch(void *arg, const char *id_hash, int64_t last_seen_ms)
{
    struct session_store *s = arg;
    unsigned char h[32];
    if (sdb_hex_to_hash(id_hash, h) != 0) {
        return;
    }
    size_t b = sess_bucket_of(h);
    pthread_mutex_lock(sess_stripe_of(s, b));
    struct sess **pp = sess_find(s, b, h);
    if (pp != NULL && (*pp)->last_seen_ms < last_seen_ms) {
        (*pp)->last_seen_ms = last_seen_ms;
        if ((*pp)->flushed_last_seen_ms < last_seen_ms) {
            (*pp)->flushed_last_seen_ms = last_seen_ms;
        }
    }
    pthread_mutex_unlock(sess_stripe_of(s, b));
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
    return s == NULL || s->pg == NULL || spg_ok(s->pg, sess_now_wall_ms());
}

bool sess_store_reachable(void *arg)
{
    return session_store_ready(arg);
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
        if (!spg_ok(s->pg, sess_now_wall_ms())) {
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
    sess_set_public_id(e);
    OPENSSL_cleanse(raw, sizeof raw);
    e->user_key = xstrdup(in->user_key);
    e->email = sess_dupn(in->email);
    e->name = sess_dupn(in->name);
    e->attrs = in->attrs ? attrs_ref(in->attrs) : attrs_parse(NULL, NULL);
    e->idp = xstrdup(in->idp);
    e->sid = sess_dupn(in->sid);
    e->refresh_token = sess_dupn(in->refresh_token);
    e->id_token = sess_dupn(in->id_token);
    e->created_ms = now_ms;
    e->last_seen_ms = e->flushed_last_seen_ms = now_ms;
    e->expires_ms = now_ms + (int64_t)s->conf.max_lifetime_ms;
    e->token_exp_s = in->token_exp_s;
    e->unwritten = s->pg != NULL;

    struct sess *copy = sess_copy(e);
    size_t b = sess_bucket_of(e->h);
    pthread_mutex_lock(sess_stripe_of(s, b));
    e->next = s->bucket[b];
    s->bucket[b] = e;
    pthread_mutex_unlock(sess_stripe_of(s, b));
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
struct sess **sess_find(struct session_store *s, size_t b, const unsigned char h[32])
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
    size_t b = sess_bucket_of(h);
    pthread_mutex_t *mu = sess_stripe_of(s, b);
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
    struct sess **pp = sess_find(s, b, h);
    if (pp == NULL) {
        st = unsure ? SESSION_UNAVAILABLE : SESSION_NONE;
        goto out;
    }
    struct sess *e = *pp;
    if (stale) {
        st = SESSION_UNAVAILABLE;
        goto out;
    }
    if (sess_expired(s, e, now_ms)) {
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
    return sess_cache_remove_if(s, match_user, user_key, true);
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
    return sess_cache_remove_if(s, match_sid, &m, true);
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
    size_t b = sess_bucket_of(h);
    pthread_mutex_lock(sess_stripe_of(s, b));
    struct sess **pp = sess_find(s, b, h);
    if (pp != NULL && !(*pp)->refresh_in_flight && (*pp)->refresh_token != NULL &&
        !sess_expired(s, *pp, now_ms)) {
        (*pp)->refresh_in_flight = true;
        *refresh_token = xstrdup((*pp)->refresh_token);
        mine = true;
    }
    pthread_mutex_unlock(sess_stripe_of(s, b));
    return mine;
}

static void replace(char **dst, const char *v)
{
    if (v != NULL) {
        wipe_free(*dst);
        *dst = xstrdup(v);
    }
}

void session_refresh_done(struct session_store *s, struct str cookie, bool ok, bool end_on_failure,
                          const char *refresh_token, int64_t token_exp_s, const char *email,
                          const char *name, const struct authn_attrs *attrs)
{
    unsigned char h[32];
    if (!cookie_hash(cookie, h)) {
        return;
    }
    size_t b = sess_bucket_of(h);
    struct sess *copy = NULL;
    struct sess *dead = NULL;
    pthread_mutex_lock(sess_stripe_of(s, b));
    struct sess **pp = sess_find(s, b, h);
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
    pthread_mutex_unlock(sess_stripe_of(s, b));
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
    size_t b = sess_bucket_of(h);
    pthread_mutex_lock(sess_stripe_of(s, b));
    struct sess **pp = sess_find(s, b, h);
    if (pp != NULL && (*pp)->id_token != NULL) {
        out = xstrdup((*pp)->id_token);
    }
    pthread_mutex_unlock(sess_stripe_of(s, b));
    return out;
}
