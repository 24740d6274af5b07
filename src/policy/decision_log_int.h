/* policy/decision_log_int.h - the decision log's record encoding, shared by the
 * writer (decision_log.c) and the audit commands (cmd_audit.c). Private. */
#ifndef GH_POLICY_DECISION_LOG_INT_H
#define GH_POLICY_DECISION_LOG_INT_H

#include <jansson.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "policy.h"

#define DL_GENESIS "0000000000000000000000000000000000000000000000000000000000000000"

struct sbuf {
    char *p;
    size_t len, cap;
};

void dl_sbuf_put(struct sbuf *b, const char *s, size_t n);
void dl_sbuf_puts(struct sbuf *b, const char *s);
void dl_sbuf_printf(struct sbuf *b, const char *fmt, ...) PRINTF(2, 3);
void dl_sbuf_free(struct sbuf *b);

/* The canonical bytes of a record: one JSON object with fixed key order, ending
 * with "prev_hash", without the final '}' (the line adds ,"hash":"..."}). */
void dl_canonical(const struct decision_record *r, uint64_t seq, const char *prev_hash,
                  struct sbuf *out);
/* Where the groups and claims JSON sit in a record's bytes, from its first byte
 * (SQLite stores them as such). */
struct dl_spans {
    size_t groups_off, groups_len, claims_off, claims_len;
};
/* The same bytes appended to out (not reset); sp (may be NULL) gets the spans. */
void dl_canonical_at(const struct decision_record *r, uint64_t seq, const char *prev_hash,
                     struct sbuf *out, struct dl_spans *sp);
/* The whole line appended to out: the canonical bytes built once, hashed in place,
 * then ,"hash":"..."} and a newline. hash gets the record's hash. */
void dl_line_append(struct sbuf *out, const struct decision_record *r, uint64_t seq,
                    const char *prev, char hash[65], struct dl_spans *sp);
/* A record's body: its canonical bytes from ,"ts" to the admin object, the part that
 * depends on neither seq, node nor the chain (format 3). Appended to out; sp gets
 * the spans counted from the body's first byte. Built where the decision is made,
 * so that the writer only frames, hashes and writes it. */
void dl_body_append(struct sbuf *out, const struct decision_record *r, struct dl_spans *sp);
/* The whole line of a format-3 record from its body: the same bytes as
 * dl_line_append with r->node = node. sp (may be NULL) gets the spans counted from
 * the line's first byte (bsp: the body's). */
void dl_line_from_body(struct sbuf *out, uint64_t seq, const char *node, const char *body,
                       size_t blen, const struct dl_spans *bsp, const char *prev, char hash[65],
                       struct dl_spans *sp);
/* The JSON of a record's groups and claims, as the canonical bytes embed them. */
void dl_groups_json(struct sbuf *b, const struct decision_record *r);
void dl_claims_json(struct sbuf *b, const struct decision_record *r);
/* hex SHA-256 over prev_hash (64 hex chars) and the canonical bytes + "}". */
void dl_hash(const char *prev_hash, const char *canon, size_t len, char out[65]);

/* SQLite schema and helpers. */
int dl_db_open(const char *path, bool readonly, sqlite3 **db, struct err *err);
/* Column list in the order dl_row_read expects (prefixed by "seq, ", followed by
 * ", prev_hash, hash"). A string literal: every statement is a constant, and
 * every value in it a bound parameter. */
#define DL_COLUMNS                                                                                 \
    "ts_us, request_id, route, decision, rule, reason, user, email, groups, claims, idp, "         \
    "session, device_present, device_id, device_owner, device_trusted, client_ip, method, host, "  \
    "path, shadow, opa_called, opa_result, opa_ms, latency_us, kind, enforced, admin_action, "     \
    "admin_actor, admin_from, admin_target, node"
/* The parameters of an INSERT of (seq, DL_COLUMNS, prev_hash, hash), as dl_bind_row
 * binds them. */
#define DL_VALUES                                                                                  \
    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, "     \
    "?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35)"

/* A record read back from SQLite, owning its strings. */
struct dl_row {
    uint64_t seq;
    struct decision_record rec;
    char *prev_hash, *hash;
    struct arena *a;
};
/* Reads the current row of a statement selecting DL_COLUMNS. */
void dl_row_read(sqlite3_stmt *st, struct dl_row *row);
void dl_row_fini(struct dl_row *row);
/* Parses a JSON record line (file, spool) into row; false when it is not one. */
bool dl_line_parse(const char *line, size_t len, struct dl_row *row);
/* dl_parse.c: a line as Gatehouse writes it (fixed key order, no whitespace), read
 * in one pass. Where the line's groups and claims JSON sit; canonical: they are the
 * bytes the writer makes of the parsed values (dl_groups_json, dl_claims_json), so
 * that SQLite may bind them as they are. */
struct dl_line_json {
    const char *groups, *claims;
    size_t glen, clen;
    bool canonical;
};
/* Scratch reused from line to line. */
struct dl_fast;
struct dl_fast *dl_fast_new(void);
void dl_fast_free(struct dl_fast *f);
/* Parses line into row as dl_line_parse does, or returns false (row zeroed, line
 * unchanged) when the line is not exactly as the writer makes it: then dl_line_parse
 * decides. On success the line is changed in place (its strings' closing quotes
 * become NULs, the groups and claims JSON stay intact): row's strings point into it
 * or into a (row->a is NULL, nothing to free), valid while both are. */
bool dl_line_parse_fast(char *line, size_t len, struct dl_row *row, struct arena *a,
                        struct dl_line_json *js, struct dl_fast *f);
/* Anchor left by retention: the seq and hash of the last deleted record
 * (seq 0 and DL_GENESIS when nothing was deleted). */
void dl_anchor_get(sqlite3 *db, uint64_t *seq, char hash[65]);
/* Deletes up to max_rows (0: all) of the oldest records older than cutoff_us in one
 * transaction and moves the anchor; *anchor_seq gets the anchor. Returns rows deleted or -1.
 * The file is the caller's (drop its lines up to the anchor once SQLite is done). */
struct dl_key;
/* dl_retain.c: where the file's first line with seq > after starts (*off; the end of the
 * complete lines below limit when none), reading only each line's seq. 0 or ERR_*. */
int dl_file_seek_after(int fd, off_t limit, uint64_t after, off_t *off, struct err *err);
/* A record line's seq and time, read without parsing the rest of it. */
bool dl_line_head(const char *p, size_t n, uint64_t *seq, int64_t *ts_us);
long dl_retain(sqlite3 *db, int64_t cutoff_us, long max_rows, uint64_t *anchor_seq,
               const struct dl_key *key, const char *reason, struct err *err);
/* Binds a record to an INSERT of (seq, DL_COLUMNS, prev_hash, hash) (DL_VALUES) and
 * steps it. tmp: scratch buffers. */
int dl_bind_row(sqlite3_stmt *st, const struct decision_record *r, uint64_t seq, const char *prev,
                const char *hash, struct sbuf tmp[2]);
/* The same with the groups and claims JSON given (slices of the canonical bytes). */
void dl_bind_rec(sqlite3_stmt *st, int base, const struct decision_record *r, uint64_t seq,
                 const char *prev, const char *hash, const char *groups, size_t glen,
                 const char *claims, size_t clen);
int dl_bind_row_json(sqlite3_stmt *st, const struct decision_record *r, uint64_t seq,
                     const char *prev, const char *hash, const char *groups, size_t glen,
                     const char *claims, size_t clen);

/* index: deferred: brings SQLite up to date with the file (the log of record), from
 * the stored high-water mark, in transactions of many lines. Every command that reads
 * SQLite calls it first. *added (may be NULL) gets the lines indexed. A file that
 * does not continue the index is an error (audit verify says where). */
int dl_ingest(const struct decision_log_conf *c, uint64_t *added, struct err *err);

/* dl_store_pg.c: a fleet's decision log (state.postgres). The shipper copies
 * committed records to decision_records in PostgreSQL, from a thread. */
struct dl_ship;
struct dl_ship *dl_ship_start(const struct decision_log_conf *c);
void dl_ship_stop_free(struct dl_ship *s, bool started);
/* Every node's records from PostgreSQL in an in-memory database with the
 * decisions table (each node's own seq kept), for audit query. */
int dl_fleet_materialise(const struct decision_log_conf *c, int64_t since_us, int64_t until_us,
                         sqlite3 **out, struct err *err);
/* Checks every node's chain in PostgreSQL; prints "ok fleet NODE"/"FAIL fleet NODE". */
int dl_fleet_verify(const struct decision_log_conf *c, FILE *out, bool *ok, struct err *err);
/* audit head in a fleet: one JSON line per node with its last shipped record
 * and its last shipped checkpoint. */
int dl_fleet_heads(const struct decision_log_conf *c, FILE *out, struct err *err);

/* "2026-03-10T09:30:00.123456Z" for a time in microseconds. */
void dl_format_ts(int64_t ts_us, char out[64]);
bool dl_parse_ts(const char *s, int64_t *out_us);

/* audit verify's checks beyond the chain itself: the head file, signed checkpoints
 * (key: --pubkey or the configured key), retention records and a pinned head
 * (anchor: "SEQ:HASH" or a file holding a checkpoint). Prints a line per failure. */
bool dl_verify_integrity(const struct decision_log_conf *c, sqlite3 *db, const char *pubkey,
                         const char *anchor);
/* audit head: prints the current head, signed with the checkpoint key. */
int dl_print_head(const struct decision_log_conf *c);

/* ---- signed checkpoints, retention records, the head file (dl_checkpoint.c) ---- */

#define DL_KEY_ID_LEN 16

struct dl_key {
    EVP_PKEY *pk; /* Ed25519 */
    bool priv;
    char key_id[DL_KEY_ID_LEN + 1]; /* hex SHA-256 of the raw public key, prefix */
};
/* Loads an Ed25519 PEM key: a private key, or (need_private false) a public one. */
int dl_key_load(const char *path, bool need_private, struct dl_key *k, struct err *err);
void dl_key_free(struct dl_key *k);

/* A checkpoint signs the chain head {seq, hash, time, key_id}; a retention record
 * signs a cut {up to seq and hash, that record's time, reason, time, key_id}. */
struct dl_checkpoint {
    bool retention;
    uint64_t seq; /* checkpoint: the head; retention: the last removed record */
    char hash[65];
    int64_t upto_ts_us; /* retention: time of the last removed record */
    char reason[128];   /* retention */
    char time[64];      /* when it was signed (RFC 3339, UTC) */
    char key_id[DL_KEY_ID_LEN + 1];
    char sig[129]; /* hex Ed25519 signature */
};
int dl_ckpt_sign(const struct dl_key *k, struct dl_checkpoint *c, struct err *err);
bool dl_ckpt_verify(const struct dl_key *k, const struct dl_checkpoint *c);
char *dl_ckpt_json(const struct dl_checkpoint *c); /* one line, free() */
bool dl_ckpt_from_json(json_t *o, struct dl_checkpoint *c);
bool dl_ckpt_parse(const char *text, size_t len, struct dl_checkpoint *c);
int dl_ckpt_schema(sqlite3 *db);
int dl_ckpt_store(sqlite3 *db, const struct dl_checkpoint *c);
/* All checkpoints (or retention records), by seq; returns the count, *out to free(). */
size_t dl_ckpt_load(sqlite3 *db, bool retention, struct dl_checkpoint **out);

/* The head file next to the database: the last committed (seq, hash) and the last
 * checkpoint, written atomically; it survives truncating both stores. */
struct dl_head {
    uint64_t seq;
    char hash[65];
    bool have_ckpt;
    struct dl_checkpoint ckpt;
};
char *dl_head_path(const char *sqlite_path);
char *dl_spool_path(const char *sqlite_path);
int dl_head_write(const char *path, const struct dl_head *h, struct err *err);
int dl_head_read(const char *path, struct dl_head *h, struct err *err);
void dl_syslog_checkpoint(const char *json);

#endif
