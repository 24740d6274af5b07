/* policy/decision_log_int.h - the decision log's record encoding, shared by the
 * writer (decision_log.c) and the audit commands (cmd_audit.c). Private. */
#ifndef GH_POLICY_DECISION_LOG_INT_H
#define GH_POLICY_DECISION_LOG_INT_H

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
/* hex SHA-256 over prev_hash (64 hex chars) and the canonical bytes + "}". */
void dl_hash(const char *prev_hash, const char *canon, size_t len, char out[65]);

/* SQLite schema and helpers. */
int dl_db_open(const char *path, bool readonly, sqlite3 **db, struct err *err);
/* Column list in the order dl_row_read expects (prefixed by "seq, ", followed by
 * ", prev_hash, hash"). */
extern const char DL_COLUMNS[];

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
/* Anchor left by retention: the seq and hash of the last deleted record
 * (seq 0 and DL_GENESIS when nothing was deleted). */
void dl_anchor_get(sqlite3 *db, uint64_t *seq, char hash[65]);
/* Deletes up to max_rows (0: all) of the oldest records older than cutoff_us in one
 * transaction and moves the anchor; *anchor_seq gets the anchor. Returns rows deleted or -1.
 * The file is the caller's (drop its lines up to the anchor once SQLite is done). */
long dl_retain(sqlite3 *db, int64_t cutoff_us, long max_rows, uint64_t *anchor_seq,
               struct err *err);

#endif
