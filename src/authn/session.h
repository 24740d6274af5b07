/* authn/session.h - browser sessions: SQLite (WAL) as the durable store, an
 * in-process cache as the only thing the request path reads. The cookie holds
 * an opaque 256-bit random id; the store keeps only its SHA-256. A writer
 * thread batches inserts, last-seen updates and deletes every 500 ms and polls
 * the revocation table so `gatehouse sessions revoke` reaches every worker
 * within a second. One serving process owns a database file (the cache is
 * authoritative for it); other processes (the CLI) only list and revoke.
 * With state.postgres (session_pg.h) several serving processes share one
 * database: changes travel through a change table announced with
 * LISTEN/NOTIFY, and the cache answers only within state.staleness of the
 * last synchronisation.
 *
 * Hot-path functions (lookup, create, revoke_*, refresh_*) never touch SQLite
 * and only hold a striped mutex for a copy. */
#ifndef GH_AUTHN_SESSION_H
#define GH_AUTHN_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/core.h"
#include "authn.h"
#include "core/ident.h"
#include "session_pg.h"

#define SESSION_COOKIE_LEN 43 /* base64url of 32 random bytes */

struct session_conf {
    char *cookie_name;          /* "gatehouse_session" */
    uint64_t idle_timeout_ms;   /* default 8h */
    uint64_t max_lifetime_ms;   /* default 24h */
    bool refresh;               /* refresh tokens before expiry */
    uint64_t refresh_before_ms; /* how long before expiry (default 60s) */
    char *key_file;             /* resolved path, or NULL = next to the database */
    struct spg_conf pg;         /* state.postgres (pg.conninfo NULL: SQLite), set by the caller */
};

/* Reads the `session:` map (n may be NULL: defaults). Reports to d. The
 * PostgreSQL part (pg) comes from `state:` (spg_conf_parse). */
bool session_conf_parse(struct conf_diag *d, const struct conf_node *n, const char *conf_file,
                        struct session_conf *out);
void session_conf_fini(struct session_conf *c);

struct session_store;

/* Opens an existing database read-only and reads its schema: false (err) when
 * it is not an SQLite database or cannot be read. Creates nothing (check). */
bool session_db_readable(const char *path, struct err *err);
/* Opens (creating) the database and its tables, loads or creates the 32-byte
 * key that encrypts refresh tokens at rest (key_file, or "<db dir>/session.key"),
 * preloads every live session into the cache and starts the writer thread.
 * Blocking: call at start-up. */
struct session_store *session_store_open(const char *db_path, const struct session_conf *c,
                                         struct err *err);
/* With c->pg.conninfo set, the store is PostgreSQL shared by a fleet: db_path
 * may then be NULL (c->key_file is then required), sessions created on other
 * nodes arrive through LISTEN/NOTIFY, and revocations from anywhere apply
 * within a second. */
/* False while a PostgreSQL store cannot reach its database (readiness,
 * new sign-ins). Always true for SQLite. */
bool session_store_ready(struct session_store *s);
/* A 32-byte key derived from the session key (HMAC-SHA256 over label): on a
 * fleet every node that shares session.key_file derives the same one (the
 * login-state key, so a sign-in may start on one node and end on another). */
void session_store_derive_key(struct session_store *s, const char *label, unsigned char out[32]);
/* True when the store is PostgreSQL (state.postgres). */
bool session_store_shared(const struct session_store *s);
/* The PostgreSQL engine (session_pg.h) behind a shared store, else NULL. */
struct spg;
struct spg *session_store_pg(struct session_store *s);
/* The stored id (hex SHA-256) of a session cookie value; false when malformed. */
bool session_cookie_id_hash(struct str cookie, char out[65]);
/* Flushes pending writes, stops the writer thread, closes. NULL is a no-op. */
void session_store_close(struct session_store *s);
/* Writes everything queued now and applies revocations from other processes
 * (the writer does this every 500 ms; tests and shutdown call it directly). */
void session_store_sync(struct session_store *s);

struct session_new {
    const char *user_key; /* iss#sub */
    const char *email, *name;
    const struct authn_attrs *attrs; /* groups and claims (a reference is taken); NULL: none */
    const char *idp, *sid;
    const char *refresh_token; /* may be NULL */
    const char *id_token;      /* may be NULL (kept for the logout hint) */
    int64_t token_exp_s;       /* when the IdP tokens expire (0 = unknown) */
};

/* Creates a session. Writes the cookie value (NUL-terminated) into cookie. */
int session_create(struct session_store *s, const struct session_new *in, int64_t now_ms,
                   char cookie[SESSION_COOKIE_LEN + 1], struct err *err) WARN_UNUSED;

/* Outcomes, not errors: zero (uninitialised) means no session. */
enum session_status {
    SESSION_NONE = 0,
    SESSION_EXPIRED,
    SESSION_VALID,
    /* PostgreSQL unreachable and the cache cannot answer: the cookie is not
     * in it, or it was last synchronised longer ago than state.staleness.
     * Never an allow: the caller answers 503. */
    SESSION_UNAVAILABLE,
};

/* A session as one request sees it. Strings are arena-owned copies; the
 * groups and claims are the cache's parsed ones, held until the arena is
 * released. */
struct session_view {
    char id[17]; /* public id: first 16 hex chars of the hash (logs, CLI) */
    const char *user_key, *email, *name, *idp, *sid;
    const struct authn_attrs *attrs; /* parsed once, held by the arena */
    int64_t created_ms, last_seen_ms, expires_ms, idle_expires_ms;
    int64_t token_exp_s;
    bool has_refresh_token;
    bool refresh_due; /* refresh enabled, token near expiry, none in flight */
};

/* Looks the cookie value up in the cache; on SESSION_VALID fills out (arena
 * copies) and records the activity (idle timer). An expired session is dropped.
 * Returns SESSION_NONE on a malformed value or when the arena is full. */
enum session_status session_lookup(struct session_store *s, struct str cookie, int64_t now_ms,
                                   struct arena *a, struct session_view *out);

/* Ends sessions. Each returns how many were ended; all take effect at once in
 * this process and are written to the database by the writer thread. */
size_t session_revoke_cookie(struct session_store *s, struct str cookie);
size_t session_revoke_user(struct session_store *s, const char *user_key);
size_t session_revoke_sid(struct session_store *s, const char *idp, const char *sid);

/* When user_key or email was last revoked by `sessions revoke --user`
 * (milliseconds since the epoch), 0 when never: the caller refuses bearer
 * tokens of that user issued before it. Seen here within a second of the CLI. */
int64_t session_user_revoked_ms(struct session_store *s, const char *user_key, const char *email);

/* One-time values (SAML assertion ids; the store interface the PostgreSQL
 * back end shares): records key until exp_s and returns true, or returns
 * false when key was recorded before (a replay) or the table is full of live
 * values (fail closed). Checked in memory, written by the writer thread,
 * reloaded at start: a restart does not forget them. */
bool session_once(struct session_store *s, struct str key, int64_t exp_s, int64_t now_s);
/* The same, telling why: 1 first use, 0 used before (or the table is full),
 * -1 not checked (state.postgres did not answer: refuse, and say so). */
int session_once_check(struct session_store *s, struct str key, int64_t exp_s, int64_t now_s);

/* Refresh coordination: the first caller for a due session gets true and the
 * decrypted refresh token (caller frees, wipes); every other caller gets false
 * until session_refresh_done(). */
bool session_refresh_claim(struct session_store *s, struct str cookie, int64_t now_ms,
                           char **refresh_token);
/* Ends the refresh. ok=false ends the session when end_on_failure (invalid_grant),
 * else just clears the flag. refresh_token NULL keeps the old one (no rotation).
 * attrs (the new groups, parsed, with the session's claims; a reference is
 * taken) and name may be NULL to keep the current values; email replaces the
 * current one (NULL: none) whenever attrs is given (a new ID token).  token_exp_s is
 * the new token expiry; 0 (unknown) stops further refreshes of this session. */
void session_refresh_done(struct session_store *s, struct str cookie, bool ok, bool end_on_failure,
                          const char *refresh_token, int64_t token_exp_s, const char *email,
                          const char *name, const struct authn_attrs *attrs);
/* The id_token kept for the RP-initiated logout hint (malloc'd) or NULL. */
char *session_id_token(struct session_store *s, struct str cookie);

/* --- offline administration (CLI), directly on the database --------------- */
/* Prints sessions (all, or those --user names: see ident_user_match; the stored
 * key issuer#subject also matches) to out, with the user id as policies see it
 * (bare_idp: the provider with bare_user_ids). */
int session_admin_list(const char *db_path, const char *user, const char *bare_idp, bool json,
                       FILE *out, struct err *err) WARN_UNUSED;
/* Deletes sessions by user (as for list) or by id (hex prefix of at least
 * 8 chars, must be unambiguous) and records the revocation for the serving
 * process. *count gets how many ended. */
int session_admin_revoke(const char *db_path, const char *user, const char *id, size_t *count,
                         struct err *err) WARN_UNUSED;

/* The same on a PostgreSQL store (state.postgres); revocations are announced
 * to every node in the same transaction. */
int session_admin_list_pg(const struct spg_conf *pg, const char *user, const char *bare_idp,
                          bool json, FILE *out, struct err *err) WARN_UNUSED;
int session_admin_revoke_pg(const struct spg_conf *pg, const char *user, const char *id,
                            size_t *count, struct err *err) WARN_UNUSED;

/* `gatehouse sessions list|revoke -c CFG [--user U | --id ID] [--json]` */
/* log_admin (may be NULL) records each revocation in the decision log. */
int authn_cmd_sessions(int argc, char **argv, admin_log_fn *log_admin);
/* `gatehouse db migrate -c CFG`: the PostgreSQL schema (state.postgres). */
int authn_cmd_db(int argc, char **argv);

#endif
