/* authn/device_store.h - the device registry behind a narrow interface: look a
 * device up by certificate fingerprint, enrol, list, show, revoke, and a change
 * sequence that grows with every enrolment and revocation (workers poll it to
 * drop their cached answers). This file is the SQLite implementation's contract;
 * another backend (PostgreSQL) implements the same functions. One handle per
 * thread: a handle is not shared. */
#ifndef GH_AUTHN_DEVICE_STORE_H
#define GH_AUTHN_DEVICE_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"

#define DEVICE_ID_LEN 16 /* hex characters */

struct device_record {
    char id[DEVICE_ID_LEN + 1];
    char fingerprint[65]; /* SHA-256 of the DER certificate, lower-case hex */
    char serial[130];     /* upper-case hex */
    char subject[512];    /* RFC 2253 */
    char issuer[512];
    char owner[256]; /* the owner's email */
    char name[128];
    char enrolled_by[128];
    int64_t enrolled_at; /* unix seconds */
    int64_t not_after;   /* the certificate's, unix seconds */
    int64_t last_seen;   /* 0 = never */
    int64_t revoked_at;  /* 0 = not revoked */
    char reason[256];    /* revocation reason */
};

struct device_store;
struct spg_conf;

/* With state.postgres (c->conninfo set), every handle opened afterwards is
 * the fleet's registry in PostgreSQL (path is then ignored); NULL: SQLite.
 * Each handle has its own blocking connection (2 s statement timeout,
 * reconnected at most once a second): as with SQLite, a serving thread waits
 * for a lookup on a cache miss and for the change-sequence poll. */
void device_store_use_postgres(const struct spg_conf *c);
/* ready(arg) false: the database is known to be out of reach (the session
 * store's listener thread); lookups then fail at once instead of waiting. */
void device_store_set_ready(bool (*ready)(void *arg), void *arg);
bool device_store_on_postgres(void);

/* A serving node on PostgreSQL keeps the registry in memory: the session
 * store's listener thread loads it (device_mirror_load, at start, blocking)
 * and keeps it current (device_mirror_sync: activity written, changes past
 * the last applied sequence read; 0, or -1 when the connection failed) on
 * every notification, every second and after a reconnect. Lookups, the change
 * sequence and device_store_seen then never touch PostgreSQL; a mirror not
 * synchronised for longer than staleness_ms trusts no device.
 * device_mirror_stop drops it (the session store closing). */
struct pg_conn;
int device_mirror_load(struct pg_conn *db, uint64_t staleness_ms, struct err *err);
int device_mirror_sync(struct pg_conn *db);
void device_mirror_stop(void);

/* Opens (creating the tables when missing) the registry in the SQLite file. */
struct device_store *device_store_open(const char *path, struct err *err);
void device_store_close(struct device_store *s);

/* 0 and *out filled, ERR_NOTFOUND, or another ERR_* with err. */
int device_store_lookup(struct device_store *s, const char *fingerprint, struct device_record *out,
                        struct err *err);
/* By id, or by fingerprint (full, or a unique prefix of 8+ hex characters). */
int device_store_show(struct device_store *s, const char *id, struct device_record *out,
                      struct err *err);
/* Stores rec (fingerprint, serial, subject, issuer, owner, name, enrolled_by,
 * not_after): a fresh id goes into rec->id and enrolled_at is set. A certificate
 * already enrolled (even revoked) is refused with its id in err. */
int device_store_enroll(struct device_store *s, struct device_record *rec, struct err *err);
typedef void device_store_each_fn(const struct device_record *rec, void *arg);
/* Every device (of owner, when not NULL), oldest first. */
int device_store_list(struct device_store *s, const char *owner, device_store_each_fn *fn,
                      void *arg, struct err *err);
/* Revokes device id (or fingerprint): ERR_NOTFOUND when none; a device revoked
 * before keeps its first revocation (0, *out shows it). */
int device_store_revoke(struct device_store *s, const char *id, const char *reason,
                        struct device_record *out, struct err *err);
/* Grows with every enrolment and revocation; 0 when unreadable. */
int64_t device_store_change_seq(struct device_store *s);
/* Best effort: last_seen = now for device id. */
void device_store_seen(struct device_store *s, const char *id, int64_t now);

#endif
