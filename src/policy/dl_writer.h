/* policy/dl_writer.h - the decision log writer's state, shared by its parts:
 * the queue and writer thread (decision_log.c), the sinks (dl_sinks.c) and the
 * spool (dl_spool.c). Private. */
#ifndef GH_POLICY_DL_WRITER_H
#define GH_POLICY_DL_WRITER_H

#include <pthread.h>
#include <sys/types.h>
#include <time.h>

#include "decision_log_int.h"

#define DL_BATCH_MAX  1024
#define DL_MULTI      32 /* rows per INSERT statement */
#define DL_ROW_PARAMS 35 /* parameters per row (DL_VALUES) */

struct qrec {
    const struct decision_record *rec; /* in blob, with its strings (SQLite binds them);
                                        * NULL with index: deferred when there is a body */
    uint64_t seq;
    int64_t pending_id; /* > 0: taken from decision_log_pending */
    char *blob;
    /* The record's body (dl_body_append), built by the appending thread, in the log's
     * byte ring (ring_charge > 0: its length plus any gap skipped at the ring's end)
     * or on the heap (ring_charge 0). NULL: the line is built from rec. */
    char *body;
    uint32_t body_len, ring_charge;
    struct dl_spans sp; /* in the body */
};

/* The bodies of queued records: one buffer taken and given back in queue order, so
 * that appending a record costs no allocation. */
struct dl_bytes {
    char *p;
    size_t cap, w, r, used;
};

struct decision_log {
    struct decision_log_conf conf;
    struct dl_ship *ship; /* state.postgres: ships committed records */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    struct qrec *ring;
    size_t head, count, inflight;
    struct dl_bytes bytes; /* under mu */
    uint64_t next_seq, committed;
    bool stop, broken;
    decision_log_commit_cb *cb;
    void *cb_arg;
    sqlite3 *db;
    sqlite3_stmt *ins, *ins_multi, *del_pending, *begin, *commit;
    int fd;
    int lock_fd; /* flock: the one process writing this log */
    bool thread_started;
    int64_t pending_seen; /* highest pending id queued */
    bool file_behind;
    char prev[65];
    int64_t last_retain_us;
    int64_t last_sync_us;
    bool retain_pending; /* more old records than one chunk: continue on the next call */
    bool file_reopen;    /* the file could not be reopened after retention */
    /* A store that refuses commits: records are held in memory and saved in the
     * spool file (preallocated, so a full disk still has room for it). */
    char *spool_path, *head_path;
    int spool_fd;
    off_t spool_used;
    uint64_t spooled_seq; /* highest seq in the spool */
    size_t spooled;       /* records in the spool */
    char spool_prev[65];
    /* The head the writer has committed (writer thread). */
    uint64_t last_seq, head_written;
    bool head_dirty; /* a checkpoint the head file does not have yet */
    /* Signed checkpoints. */
    bool ckpt;
    struct dl_key key;
    uint64_t ckpt_seq;
    int64_t ckpt_us;
    struct dl_checkpoint last_ckpt;
    bool have_ckpt;
    char errmsg[256];  /* the store's last error */
    struct sbuf lines; /* the batch's lines (writer thread, kept between batches) */
    struct dl_at *at;  /* where each record of the batch sits in lines */
    size_t at_cap;
    off_t file_end; /* index: deferred: where the file's last complete line ends */
};

static inline int64_t dl_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* dl_lock.c: the writer's lock (the flock next to the database), waiting up to wait_ms:
 * the fd, or -1 (*busy: another process, e.g. a running server, holds it). */
int dl_writer_lock(const char *sqlite, unsigned wait_ms, bool *busy);
/* Commits a batch (decision_log.c's writer hands it to the spool's replay). */
typedef int dl_commit_fn(struct decision_log *dl, struct qrec *batch, size_t n);

/* dl_sinks.c: the JSON-lines mirror. */
int dl_write_all(int fd, const char *p, size_t n);
/* The same at offset off (pwrite), or appended (off < 0). */
int dl_write_all_at(int fd, const char *p, size_t n, off_t off);
/* Appends to the file every SQLite record after its last line (cutting a torn one). */
int dl_file_catch_up(sqlite3 *db, int fd, struct err *err);
/* index: deferred: the file's last complete line (a torn one is cut off and logged):
 * *seq and hash get its seq and hash (0 and DL_GENESIS when empty), *end the file's
 * size after the cut. */
int dl_file_head(int fd, uint64_t *seq, char hash[65], off_t *end, struct err *err);
/* The index's high-water mark table (index: deferred). Its presence also tells a
 * later start with index: inline that the file may be ahead of SQLite. */
int dl_index_schema(sqlite3 *db);
/* seq of the file's first line (0 when empty or unreadable). */
uint64_t dl_file_first_seq(int fd);
/* Rewrites the file keeping lines with seq > keep_after (atomic rename). */
int dl_file_drop_before(const char *file, uint64_t keep_after, struct err *err);
/* dl_retain.c, index: deferred: the newest record of the file's leading run of records
 * older than cutoff_us (*seq 0: none), its hash and time, and *end the offset just
 * past its line (what a cut there removes). Reads only complete lines below limit. */
int dl_file_cut_point(int fd, off_t limit, int64_t cutoff_us, uint64_t *seq, char hash[65],
                      int64_t *ts_us, off_t *end, struct err *err);
/* The same cut in SQLite, in one transaction: the signed retention record and the
 * anchor, the index rows up to seq deleted, the index's mark moved with the file
 * (cut_bytes shorter). The file is cut after it (dl_file_drop_before). Returns the
 * index rows deleted, or -1. */
long dl_retain_file(sqlite3 *db, uint64_t seq, const char *hash, int64_t ts, off_t cut_bytes,
                    const struct dl_key *key, const char *reason, struct err *err);

/* dl_spool.c */
/* The line of q chained to prev (canonical bytes, then its hash) appended to b; node:
 * the writer's (a record with a body is framed with it). */
void dl_put_line(struct sbuf *b, const struct qrec *q, const char *node, const char *prev,
                 char hash[65], struct sbuf *canon);
/* Saves every held record not yet in the spool (the failing batch, then the queue). */
int dl_spool_pending(struct decision_log *dl, const struct qrec *batch, size_t n);
/* Everything in the spool is committed: empty it. */
void dl_spool_reset(struct decision_log *dl);
/* Commits what an earlier run left in the spool, before anything new, with commit. */
int dl_spool_replay(struct decision_log *dl, dl_commit_fn *commit, struct err *err);

#endif
