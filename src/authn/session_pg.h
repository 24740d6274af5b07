/* authn/session_pg.h - the PostgreSQL engine behind the session store
 * (state.postgres), for a fleet of Gatehouse nodes sharing one database.
 * Private to src/authn: session.c keeps the cache and calls this from its
 * writer thread; a listener thread of its own keeps one LISTEN connection.
 *
 * Nothing here runs on an event loop: the writer thread and the listener
 * thread block on libpq (bound parameters only), the request path only reads
 * atomics (spg_synced_ms, spg_ok).
 *
 * Every write that other nodes must see appends a row to session_changes
 * (kind new|update|id|user) and NOTIFYs gatehouse_sessions in the same
 * transaction; appenders serialise on a transaction advisory lock so the
 * sequence commits in order and "replay past the last seq" misses nothing. */
#ifndef GH_AUTHN_SESSION_PG_H
#define GH_AUTHN_SESSION_PG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/core.h"

struct spg_conf {
    char *conninfo;            /* postgresql:// URI or key=value string */
    char *password_file;       /* resolved path or NULL */
    bool migrate;              /* run the migrations at start (default true) */
    uint64_t staleness_ms;     /* how long the cache may serve without the database */
    uint64_t query_timeout_ms; /* how long a request waits on the database (default 2 s) */
};

/* Parses state.postgres, password_file, migrate and staleness from the
 * `state:` map (n). Returns false when there is no postgres key (out zeroed);
 * errors go to d. */
bool spg_conf_parse(struct conf_diag *d, const struct conf_node *state, const char *conf_file,
                    struct spg_conf *out);
void spg_conf_fini(struct spg_conf *c);
/* check: the connection string parses and the password file is readable;
 * never connects. */
void spg_conf_check(struct conf_diag *d, const struct conf_node *state, const struct spg_conf *c);
/* The connection string with any password replaced by "****" (malloc'd). */
char *spg_conninfo_redacted(const char *conninfo);

/* A session row as stored; refresh_token and id_token are sealed. */
struct spg_row {
    char id_hash[65];
    const char *user_key, *email, *name, *groups, *claims, *idp, *sid;
    const char *refresh_token, *id_token;
    int64_t created_ms, last_seen_ms, expires_ms, token_exp_s;
};

/* What the listener (and the preload) hands to the cache. Called from the
 * listener thread, or from spg_open's thread during the preload. */
struct spg_hooks {
    void *arg;
    /* A session row: created (update=false: add when absent) or refreshed
     * elsewhere (update=true: replace tokens and identity fields). */
    void (*row)(void *arg, const struct spg_row *r, bool update);
    /* A revocation by session hash (kind "id") or by user ("user", value as
     * given to `sessions revoke --user`, ts_ms when). */
    void (*revoke)(void *arg, const char *kind, const char *value, int64_t ts_ms);
    /* A session was active elsewhere until last_seen_ms. */
    void (*touch)(void *arg, const char *id_hash, int64_t last_seen_ms);
    /* Changes this node never saw were purged (a disconnection longer than
     * their retention): begin, then row(update=true) for every live session,
     * then end(keep=true) drops every cached session not seen since begin. */
    void (*resync)(void *arg, bool end);
};

struct spg;

/* Connects (blocking: start-up only), migrates when c->migrate (else checks
 * the schema version), preloads the live sessions and user revocations
 * through h, and starts the listener thread. */
struct spg *spg_open(const struct spg_conf *c, const struct spg_hooks *h, struct err *err);
void spg_close(struct spg *p);

/* Last time (wall ms) this node was known to have every change applied. */
int64_t spg_synced_ms(const struct spg *p);
/* Both connections work and the last sync is recent: ready for traffic. */
bool spg_ok(const struct spg *p, int64_t now_ms);

/* Writer thread: one transaction of changes. */
enum spg_op_kind { SPG_INSERT, SPG_UPDATE, SPG_DELETE };
struct spg_op {
    enum spg_op_kind kind;
    struct spg_row row; /* DELETE: id_hash only */
};
struct spg_touch {
    char id_hash[65];
    int64_t last_seen_ms;
};
/* 0, or -1 when the database cannot take it now (the caller retries later). */
int spg_write(struct spg *p, const struct spg_op *ops, size_t nops, const struct spg_touch *t,
              size_t nt);
/* Deletes expired sessions, changes older than a day and expired one-time
 * values. */
void spg_purge(struct spg *p, int64_t now_ms, uint64_t idle_timeout_ms);

/* A one-time value (the SHA-256 h of its key) shared by the fleet, decided
 * off the event loop: spg_once_submit queues it for the node's one-time value
 * thread (its own connection; INSERT ... ON CONFLICT DO NOTHING decides first
 * use on any node) and returns at once. The job's eventfd (spg_once_fd)
 * becomes readable when spg_once_state is no longer PENDING; the requester
 * waits for it on its loop for at most spg_query_timeout_ms, then drops its
 * reference (spg_once_release), decided or not. NULL and err when the node
 * knows the database is out of reach (the caller fails closed at once). */
enum { SPG_ONCE_FAILED = -1, SPG_ONCE_PENDING = 0, SPG_ONCE_FRESH = 1, SPG_ONCE_USED = 2 };
struct spg_once_job;
struct spg_once_job *spg_once_submit(struct spg *p, const unsigned char h[32], int64_t exp_s,
                                     struct err *err);
/* Refresh single-flight: the same job, answered FRESH when this node took the
 * session's refresh lease (none live, and the row's token_exp_s is not past
 * token_exp_s, the expiry of the tokens this node holds), USED when another
 * node refreshes or has refreshed (its new tokens reach this node through the
 * change feed), FAILED when the database did not answer. */
struct spg_once_job *spg_lease_submit(struct spg *p, const char id_hash[65], int64_t token_exp_s,
                                      struct err *err);
int spg_once_fd(const struct spg_once_job *j);
/* SPG_ONCE_*; why (borrowed from j) says what failed. */
int spg_once_state(const struct spg_once_job *j, const char **why);
void spg_once_release(struct spg_once_job *j);
uint64_t spg_query_timeout_ms(const struct spg *p);
/* The same, waiting in the calling thread (never on an event loop): *fresh is
 * true on first use; -1 when the database did not answer in time. */
int spg_once(struct spg *p, const unsigned char h[32], int64_t exp_s, bool *fresh,
             struct err *err) WARN_UNUSED;

/* A blocking connection with a 2 s statement_timeout (the device registry's
 * per-thread handles), or NULL and err. */
struct pg_conn *spg_connect(const struct spg_conf *c, struct err *err);

/* --- commands (blocking) ------------------------------------------------ */
/* `gatehouse db migrate`: prints what it did to out. */
int spg_cmd_migrate(const struct spg_conf *c, FILE *out, struct err *err) WARN_UNUSED;

typedef bool spg_user_match_fn(const char *query, const char *user_key, const char *email,
                               const char *idp);
/* Listing: calls each for every live session (match filtering by the caller). */
typedef void spg_list_fn(void *arg, const char *id_hash, const char *user_key, const char *email,
                         const char *idp, int64_t created_ms, int64_t last_seen_ms,
                         int64_t expires_ms, const char *groups);
int spg_admin_list(const struct spg_conf *c, int64_t now_ms, spg_list_fn *each, void *arg,
                   struct err *err) WARN_UNUSED;
/* Revokes by user (matched with match) or by id prefix, announcing it to
 * every node in the same transaction. */
int spg_admin_revoke(const struct spg_conf *c, const char *user, const char *id,
                     spg_user_match_fn *match, int64_t now_ms, size_t *count,
                     struct err *err) WARN_UNUSED;

#endif
