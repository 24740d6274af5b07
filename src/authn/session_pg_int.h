/* authn/session_pg_int.h - private to session_pg.c, session_pg_feed.c and
 * session_pg_once.c (session_pg.h is the public side): the PostgreSQL
 * store's state, its three threads' connections, and the helpers the three
 * files share. */
#ifndef GH_AUTHN_SESSION_PG_INT_H
#define GH_AUTHN_SESSION_PG_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <libpq-fe.h>

#include "session_pg.h"
#include "codec.h"
#include "core/pg.h"
#include "device_store.h"

#define CHANNEL "gatehouse_sessions"

#define REPLAY_PERIOD_MS     1000
#define TOUCH_SYNC_PERIOD_MS 5000

#define REPLAY_BATCH     500
#define REFRESH_LEASE_MS "30000" /* a node that took the lease and died: others after this */

struct spg {
    struct spg_conf conf;
    char *password; /* from password_file, wiped at close */
    char node[17];  /* random per process: skips its own changes */
    struct spg_hooks hooks;
    PGconn *wconn; /* writer thread */
    atomic_bool writer_ok;
    bool retrying; /* writer thread: the second attempt of spg_write */
    /* listener */
    pthread_t listener;
    bool listener_started;
    atomic_bool stop;
    atomic_llong synced_ms;
    atomic_bool listen_ok;
    PGconn *lconn; /* the listener's, handed over at start */
    int64_t seq;   /* last change applied (listener thread) */
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
    atomic_int refs; /* the queue's and the requester's */
    int fd;          /* eventfd: readable once decided */
    bool lease;      /* a refresh lease (id_hash, exp_s = token expiry) */
    char id_hash[65];
    unsigned char h[32];
    int64_t exp_s;
    int64_t deadline_ms; /* monotonic: past it the job is not run */
    atomic_int state;    /* SPG_ONCE_* */
    char err[256];
    struct spg_once_job *next;
};

/* ---- rows ------------------------------------------------------------- */

#define ROW_COLS                                                                                   \
    "id_hash, user_key, email, name, groups, claims, idp, sid, created_ms, last_seen_ms, "         \
    "expires_ms, token_exp_s, refresh_token, id_token"

/* session_pg.c */
int64_t spg_wall_ms(void);
int64_t spg_mono_ms(void);
PGconn *spg_connect_db(const struct spg_conf *c, const char *password, struct err *err);
bool spg_exec_ok(PGconn *db, const char *sql, struct err *err);
PGresult *spg_q(PGconn *db, const char *sql, int n, const char *const *v);
bool spg_row_from(PGresult *r, int i, struct spg_row *out);

/* session_pg_feed.c */
PGconn *spg_listen_connect(struct spg *p);
void *spg_listener_main(void *arg);

/* session_pg_once.c */
void spg_once_finish(struct spg_once_job *j, int state, const char *why);
void *spg_once_main(void *arg);

#endif
