/* authn/session_int.h - private to session.c, session_writer.c and
 * session_sqlite.c (session.h is the public side): the store's state (the
 * striped table, the write queue, the one-time values, the user revocations)
 * and the helpers the three files share. */
#ifndef GH_AUTHN_SESSION_INT_H
#define GH_AUTHN_SESSION_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <sqlite3.h>

#include "session.h"
#include "attrs.h"
#include "codec.h"
#include "device_store.h"
#include "core/ident.h"
#include "keys.h"
#include "oidc.h"
#include "state_sqlite.h"

#define NBUCKETS         16384
#define NSTRIPES         64
#define WRITER_PERIOD_MS 500
#define PURGE_PERIOD_MS  60000

#define ONCE_BUCKETS 4096

struct sess {
    unsigned char h[32];
    char id[17]; /* public id: first 16 hex chars of h */
    char *user_key, *email, *name, *idp, *sid;
    const struct authn_attrs *attrs; /* groups and claims, parsed once (never NULL) */
    char *refresh_token;             /* plaintext in memory only */
    char *id_token;
    int64_t created_ms, last_seen_ms, expires_ms, token_exp_s;
    int64_t flushed_last_seen_ms;
    bool refresh_in_flight;
    bool seen;      /* PostgreSQL resync: present in the sessions table */
    bool unwritten; /* PostgreSQL: created here, its insert not committed yet */
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
    sqlite3 *db;    /* writer thread only, after open */
    struct spg *pg; /* or PostgreSQL (state.postgres): db is then NULL */
    pthread_mutex_t stripe[NSTRIPES];
    struct sess *bucket[NBUCKETS];

    pthread_mutex_t qmu; /* guards the op queue and the flags below */
    pthread_cond_t qcv;
    struct op *qhead, **qtail;
    bool stop;
    pthread_t writer;
    bool writer_started;
    pthread_mutex_t dbmu; /* serialises writer cycles with session_store_sync */
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
    pthread_mutex_t oncemu; /* guards once[] and nonce */
    struct once *once[ONCE_BUCKETS];
    size_t nonce;
};
struct user_rev_entry {
    char *value;
    int64_t ts_ms;
};

struct user_rev {
    const char *value;
    int64_t ts_ms;
};

/* session.c */
void sess_user_rev_note(struct session_store *s, const char *value, int64_t ts_ms);
int64_t sess_now_wall_ms(void);
char *sess_dupn(const char *s);
void sess_free(struct sess *e);
void sess_set_public_id(struct sess *e);
size_t sess_bucket_of(const unsigned char h[32]);
pthread_mutex_t *sess_stripe_of(struct session_store *s, size_t b);
bool sess_expired(const struct session_store *s, const struct sess *e, int64_t now_ms);
size_t sess_cache_remove_if(struct session_store *s,
                            bool (*match)(const struct sess *, const void *), const void *arg,
                            bool queue_delete);
bool sess_user_match(const char *query, const char *user_key, const char *email, const char *idp);
bool sess_match_user_rev(const struct sess *e, const void *arg);
bool sess_match_hash(const struct sess *e, const void *arg);
bool sess_match_expired(const struct sess *e, const void *arg);
void sess_hook_row(void *arg, const struct spg_row *r, bool update);
void sess_hook_revoke(void *arg, const char *kind, const char *value, int64_t ts_ms);
void sess_hook_resync(void *arg, bool end);
void sess_hook_touch(void *arg, const char *id_hash, int64_t last_seen_ms);
bool sess_store_reachable(void *arg);
struct sess **sess_find(struct session_store *s, size_t b, const unsigned char h[32]);

/* session_sqlite.c */
sqlite3 *sdb_db_open(const char *path, struct err *err);
char *sdb_seal_field(struct session_store *s, const unsigned char h[32], const char *what,
                     const char *v);
char *sdb_open_field(struct session_store *s, const unsigned char h[32], const char *what,
                     const unsigned char *v);
void sdb_bind_text(sqlite3_stmt *st, int i, const char *v);
void sdb_bind_texts(sqlite3_stmt *st, int first, const char *const *v, size_t n);
int sdb_hex_to_hash(const char *hex, unsigned char h[32]);
void sdb_preload(struct session_store *s, int64_t now_ms);

#endif
