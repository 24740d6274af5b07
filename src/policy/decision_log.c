/* policy/decision_log.c - the tamper-evident decision log. Workers queue a copy of
 * each record (never blocking, bounded: past the bound the caller answers 503); one
 * writer thread chains them (hash = SHA-256 over the previous hash and the record's
 * canonical bytes), commits each batch to SQLite in one transaction, then mirrors the
 * lines to the JSON-lines file. SQLite is the source of truth: after a crash the file
 * is cut back to its last complete line and refilled from SQLite. With index: deferred
 * the file is the log of record instead: one write per batch, no SQLite insert, and
 * SQLite filled from the file by the readers (dl_ingest in dl_sinks.c).
 * The parts: record encoding (dl_encode.c), the two sinks and retention
 * (dl_sinks.c), the spool (dl_spool.c), checkpoints (dl_checkpoint.c), the
 * configuration (dl_conf.c), verification (dl_verify.c), the fleet's shared store
 * (dl_store_pg.c). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <stddef.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dl_writer.h"

#define DL_GATHER_NS       (5 * 1000 * 1000) /* batch mode: wait 5 ms for more records */
#define DL_RETAIN_EVERY_US (3600LL * 1000000)
#define DL_RETAIN_CHUNK    5000

/* ---- the writer ---- */

#define REC_FIELDS 22

/* One allocation holding the record, its strings, groups and claims (each string
 * measured once); node: the writer's, stamped on every record it chains. */
static void rec_copy(const struct decision_record *in, struct qrec *q, const char *node)
{
    const char *const fields[REC_FIELDS] = {
        in->request_id,   in->route,       in->decision, in->rule,         in->reason,
        in->user,         in->email,       in->idp,      in->session,      in->device_id,
        in->device_owner, in->client_ip,   in->method,   in->host,         in->path,
        in->opa_result,   in->kind,        in->enforced, in->admin_action, in->admin_actor,
        in->admin_from,   in->admin_target
    };
    size_t flen[REC_FIELDS];
    size_t size = sizeof(struct decision_record) + in->ngroups * sizeof(char *) +
                  in->nclaims * sizeof(struct policy_kv);
    for (size_t i = 0; i < REC_FIELDS; i++) {
        flen[i] = fields[i] ? strlen(fields[i]) : 0;
        size += flen[i] + 1;
    }
    for (size_t i = 0; i < in->ngroups; i++) {
        size += (in->groups[i] ? strlen(in->groups[i]) : 0) + 1;
    }
    for (size_t i = 0; i < in->nclaims; i++) {
        size += in->claims[i].name.len + in->claims[i].value.len + 2;
    }
    q->blob = xmalloc(size);
    struct decision_record *r = (struct decision_record *)(void *)q->blob;
    *r = *in;
    q->rec = r;
    const char **groups = (const char **)(void *)(r + 1);
    struct policy_kv *claims = (struct policy_kv *)(void *)(groups + in->ngroups);
    char *cur = (char *)(claims + in->nclaims);
    const char *copies[REC_FIELDS];
    for (size_t i = 0; i < REC_FIELDS; i++) {
        copies[i] = NULL;
        if (fields[i]) {
            memcpy(cur, fields[i], flen[i] + 1);
            copies[i] = cur;
            cur += flen[i] + 1;
        }
    }
    r->request_id = copies[0], r->route = copies[1], r->decision = copies[2];
    r->rule = copies[3], r->reason = copies[4], r->user = copies[5], r->email = copies[6];
    r->idp = copies[7], r->session = copies[8], r->device_id = copies[9];
    r->device_owner = copies[10], r->client_ip = copies[11], r->method = copies[12];
    r->host = copies[13], r->path = copies[14], r->opa_result = copies[15];
    r->kind = copies[16], r->enforced = copies[17], r->admin_action = copies[18];
    r->admin_actor = copies[19], r->admin_from = copies[20], r->admin_target = copies[21];
    for (size_t i = 0; i < in->ngroups; i++) {
        const char *g = in->groups[i] ? in->groups[i] : "";
        size_t n = strlen(g) + 1;
        memcpy(cur, g, n);
        groups[i] = cur;
        cur += n;
    }
    for (size_t i = 0; i < in->nclaims; i++) {
        struct str nm = in->claims[i].name, v = in->claims[i].value;
        memcpy(cur, nm.p, nm.len);
        claims[i].name = (struct str){ cur, nm.len };
        cur += nm.len;
        *cur++ = '\0';
        memcpy(cur, v.p, v.len);
        claims[i].value = (struct str){ cur, v.len };
        cur += v.len;
        *cur++ = '\0';
    }
    r->groups = groups;
    r->claims = claims;
    r->node = node; /* the writer's own copy: lives as long as the log */
}

/* The appending thread's buffer for a record's body (kept, freed when the thread ends). */
static pthread_key_t body_key;
static pthread_once_t body_once = PTHREAD_ONCE_INIT;

static void body_buf_free(void *p)
{
    dl_sbuf_free(p);
    free(p);
}

static void body_key_make(void)
{
    if (pthread_key_create(&body_key, body_buf_free) != 0) {
        abort();
    }
}

static struct sbuf *body_buf(void)
{
    pthread_once(&body_once, body_key_make);
    struct sbuf *b = pthread_getspecific(body_key);
    if (!b) {
        b = xcalloc(1, sizeof *b);
        (void)pthread_setspecific(body_key, b);
    }
    return b;
}

/* The byte ring's size: about 800 bytes per queued record (a typical record's body
 * is 600-900), within [1 MiB, 64 MiB]; a body that does not fit goes on the heap. */
static size_t bytes_cap(uint64_t queue)
{
    uint64_t cap = queue * 800;
    return cap < ((size_t)1 << 20)    ? (size_t)1 << 20
           : cap > ((size_t)64 << 20) ? (size_t)64 << 20
                                      : (size_t)cap;
}

/* len bytes of the byte ring (under mu), or NULL when they do not fit (the record's
 * body then goes on the heap). Records give their bytes back in the order they took
 * them; a body that does not fit before the end starts again at 0, the gap charged
 * to it. */
static char *bytes_take(struct dl_bytes *q, size_t len, uint32_t *charge)
{
    if (!q->p || len == 0 || len > q->cap / 8) {
        return NULL;
    }
    if (q->used == 0) {
        q->w = q->r = 0;
    }
    size_t at, gap = 0;
    if (q->used == 0 || q->w > q->r) { /* in use: [r, w) */
        if (q->cap - q->w >= len) {
            at = q->w;
        } else if (q->r >= len) {
            gap = q->cap - q->w;
            at = 0;
        } else {
            return NULL;
        }
    } else if (q->r - q->w >= len) { /* in use: [r, cap - gap) and [0, w) */
        at = q->w;
    } else {
        return NULL;
    }
    q->w = at + len;
    q->used += len + gap;
    *charge = (uint32_t)(len + gap);
    return q->p + at;
}

/* A committed record's memory: the copy SQLite bound, a body on the heap; the ring's
 * bytes are given back under mu (bytes_give_back). */
static void qrec_free(struct qrec *q)
{
    free(q->blob);
    q->blob = NULL;
    if (q->body && q->ring_charge == 0) {
        free(q->body);
        q->body = NULL;
    }
}

static void bytes_give_back(struct dl_bytes *b, struct qrec *q)
{
    if (q->body && q->ring_charge > 0) {
        b->r = (size_t)(q->body - b->p) + q->body_len;
        b->used -= q->ring_charge;
        q->body = NULL;
        q->ring_charge = 0;
    }
}

/* Steps a statement without results (BEGIN, COMMIT) and resets it. */
static int step_once(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc;
}

/* Where a record of the batch sits in the batch's lines. */
struct dl_at {
    size_t at, hash_at;
    struct dl_spans sp;
};

/* Inserts records [i, i + rows) of the batch with st, an INSERT of `rows` rows. */
static int insert_rows(struct decision_log *dl, sqlite3_stmt *st, const struct qrec *batch,
                       size_t i, size_t rows)
{
    const char *p = dl->lines.p;
    for (size_t k = 0; k < rows; k++) {
        const struct qrec *q = &batch[i + k];
        const struct dl_at *w = &dl->at[i + k];
        const char *prev = i + k ? p + dl->at[i + k - 1].hash_at : dl->prev;
        dl_bind_rec(st, (int)(k * DL_ROW_PARAMS), q->rec, q->seq, prev, p + w->hash_at,
                    p + w->at + w->sp.groups_off, w->sp.groups_len, p + w->at + w->sp.claims_off,
                    w->sp.claims_len);
    }
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_IO;
    sqlite3_reset(st); /* every parameter is bound again before the next step */
    for (size_t k = 0; rc == 0 && k < rows; k++) {
        if (batch[i + k].pending_id) {
            /* Chained and taken off the pending table in the same transaction: once. */
            sqlite3_bind_int64(dl->del_pending, 1, batch[i + k].pending_id);
            rc = sqlite3_step(dl->del_pending) == SQLITE_DONE ? 0 : ERR_IO;
            sqlite3_reset(dl->del_pending);
        }
    }
    return rc;
}

/* index: deferred. The file is the log of record: the batch's lines go to it in one
 * write (strict: fdatasync before the waiting requests are released); SQLite is
 * filled from the file later by the commands that read it (dl_ingest). A failed
 * append is cut back to the last complete batch and reported as a store refusing
 * commits (the caller spools and retries the same records, which give the same
 * bytes). */
static int write_deferred(struct decision_log *dl, const struct qrec *batch, size_t n,
                          const char *prev, int64_t t0)
{
    struct sbuf *lines = &dl->lines;
    if (dl->fd < 0 || dl_write_all(dl->fd, lines->p, lines->len) != 0 ||
        (dl->conf.sync == DECISION_LOG_STRICT && fdatasync(dl->fd) != 0)) {
        int e = dl->fd < 0 ? EBADF : errno;
        snprintf(dl->errmsg, sizeof dl->errmsg, "%s: %s", dl->conf.file, strerror(e));
        log_error("decision_log", "append failed: %s", dl->errmsg);
        if (dl->fd >= 0 && ftruncate(dl->fd, dl->file_end) != 0) {
            log_error("decision_log", "cannot cut the failed append off %s: %s", dl->conf.file,
                      strerror(errno));
        }
        return ERR_IO;
    }
    dl->file_end += (off_t)lines->len;
    memcpy(dl->prev, prev, 65);
    /* Administrative records handed over by command line tools leave the pending table
     * once their line is written (a crash in between chains such a record twice). */
    for (size_t i = 0; i < n; i++) {
        if (batch[i].pending_id) {
            sqlite3_bind_int64(dl->del_pending, 1, batch[i].pending_id);
            (void)sqlite3_step(dl->del_pending);
            sqlite3_reset(dl->del_pending);
        }
    }
    policy_metrics_log_write((uint64_t)(dl_now_us() - t0), n);
    return 0;
}

/* Commits a batch to SQLite, then mirrors it to the file. Each record's line is
 * built once, straight into the batch's buffer: its canonical bytes are hashed in
 * place; SQLite then gets DL_MULTI rows per statement, the groups and claims JSON
 * and both hashes bound as slices of the lines; the file gets the whole buffer in
 * one write. On a SQLite failure the batch is kept and retried (the queue fills and
 * callers get 503); nothing is lost. */
static int dl_write_batch(struct decision_log *dl, struct qrec *batch, size_t n)
{
    struct sbuf *lines = &dl->lines;
    char prev[65], hash[65];
    int64_t t0 = dl_now_us();
    if (n > dl->at_cap) {
        dl->at_cap = n;
        dl->at = xrealloc(dl->at, n * sizeof *dl->at);
    }
    memcpy(prev, dl->prev, 65);
    lines->len = 0;
    for (size_t i = 0; i < n; i++) {
        const struct qrec *q = &batch[i];
        dl->at[i].at = lines->len;
        if (q->body) {
            dl_line_from_body(lines, q->seq, dl->conf.node, q->body, q->body_len, &q->sp, prev,
                              hash, &dl->at[i].sp);
        } else {
            dl_line_append(lines, q->rec, q->seq, prev, hash, &dl->at[i].sp);
        }
        dl->at[i].hash_at = lines->len - 67; /* ...,"hash":"<64>"}\n */
        memcpy(prev, hash, 65);
    }
    if (dl->conf.deferred) {
        return write_deferred(dl, batch, n, prev, t0);
    }
    int rc = step_once(dl->begin) == SQLITE_DONE ? 0 : ERR_IO;
    size_t i = 0;
    for (; rc == 0 && dl->ins_multi && i + DL_MULTI <= n; i += DL_MULTI) {
        rc = insert_rows(dl, dl->ins_multi, batch, i, DL_MULTI);
    }
    for (; rc == 0 && i < n; i++) {
        rc = insert_rows(dl, dl->ins, batch, i, 1);
    }
    if (rc == 0 && step_once(dl->commit) != SQLITE_DONE) {
        rc = ERR_IO;
    }
    if (rc != 0) {
        snprintf(dl->errmsg, sizeof dl->errmsg, "%s", sqlite3_errmsg(dl->db));
        log_error("decision_log", "commit failed: %s", dl->errmsg);
        if (!sqlite3_get_autocommit(dl->db)) {
            sqlite3_exec(dl->db, "ROLLBACK", NULL, NULL, NULL);
        }
        return rc;
    }
    memcpy(dl->prev, prev, 65);
    if (dl->fd >= 0) {
        if (dl->file_behind || dl_write_all(dl->fd, lines->p, lines->len) != 0) {
            /* The file is a mirror of SQLite: catch it up later rather than lose order. */
            dl->file_behind = true;
        } else if (dl->conf.sync == DECISION_LOG_STRICT && fdatasync(dl->fd) != 0) {
            dl->file_behind = true;
        }
    }
    policy_metrics_log_write((uint64_t)(dl_now_us() - t0), n);
    return 0;
}

/* Queues the records command line tools left in decision_log_pending (admin acts):
 * they get the next seq numbers and leave the pending table in the transaction that
 * chains them. Called on the writer thread, or before it starts. */
static void take_pending(struct decision_log *dl)
{
    static const char sql[] = "SELECT id, " DL_COLUMNS ", prev_hash, hash FROM "
                              "decision_log_pending WHERE id > ?1 ORDER BY id LIMIT 64";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(dl->db, sql, -1, &st, NULL) != SQLITE_OK) {
        return;
    }
    sqlite3_bind_int64(st, 1, dl->pending_seen);
    while (sqlite3_step(st) == SQLITE_ROW) {
        struct dl_row row;
        dl_row_read(st, &row);
        bool queued = false;
        if (dl->thread_started) {
            pthread_mutex_lock(&dl->mu);
        }
        if (dl->count + dl->inflight < dl->conf.queue) {
            size_t tail = (dl->head + dl->count) % dl->conf.queue;
            dl->ring[tail] = (struct qrec){ 0 }; /* no body: the line is built from rec */
            rec_copy(&row.rec, &dl->ring[tail], dl->conf.node);
            dl->ring[tail].seq = dl->next_seq++;
            dl->ring[tail].pending_id = (int64_t)row.seq;
            dl->count++;
            queued = true;
        }
        if (dl->thread_started) {
            pthread_mutex_unlock(&dl->mu);
        }
        if (queued) {
            dl->pending_seen = (int64_t)row.seq;
        }
        dl_row_fini(&row);
        if (!queued) {
            break; /* the queue is full: the rest waits for the next call */
        }
    }
    sqlite3_finalize(st);
}

/* ---- the head file and signed checkpoints (writer thread) ---- */

static void head_write(struct decision_log *dl)
{
    struct dl_head h = { .seq = dl->last_seq, .have_ckpt = dl->have_ckpt };
    struct err err = { 0 };
    memcpy(h.hash, dl->prev, 65);
    if (dl->have_ckpt) {
        h.ckpt = dl->last_ckpt;
    }
    if (dl_head_write(dl->head_path, &h, &err) != 0) {
        log_error("decision_log", "cannot write the head file: %s", err.msg);
        return;
    }
    dl->head_written = dl->last_seq;
    dl->head_dirty = false;
}

static void ckpt_ship(struct decision_log *dl, const char *json)
{
    if (dl->conf.ckpt_file) {
        int fd = open(dl->conf.ckpt_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        size_t n = strlen(json);
        if (fd < 0 || dl_write_all(fd, json, n) != 0 || dl_write_all(fd, "\n", 1) != 0 ||
            fdatasync(fd) != 0) {
            log_error("decision_log", "cannot append the checkpoint to %s: %s", dl->conf.ckpt_file,
                      strerror(errno));
        }
        if (fd >= 0) {
            close(fd);
        }
    }
    if (dl->conf.ckpt_syslog) {
        dl_syslog_checkpoint(json);
    }
    if (dl->conf.ckpt_command) {
        FILE *p = popen(dl->conf.ckpt_command, "we");
        int st = -1;
        if (p) {
            fputs(json, p);
            fputc('\n', p);
            st = pclose(p);
        }
        if (st != 0) {
            log_error("decision_log", "checkpoint command failed (status %d): %s", st,
                      dl->conf.ckpt_command);
        }
    }
}

/* Signs the committed head, stores the checkpoint in SQLite, the head file and the
 * configured destinations. */
static void checkpoint(struct decision_log *dl)
{
    if (!dl->ckpt || dl->last_seq == 0 || dl->last_seq == dl->ckpt_seq) {
        return;
    }
    struct dl_checkpoint c = { .seq = dl->last_seq };
    struct err err = { 0 };
    int64_t now = dl_now_us();
    memcpy(c.hash, dl->prev, 65);
    dl_format_ts(now, c.time);
    if (dl_ckpt_sign(&dl->key, &c, &err) != 0) {
        log_error("decision_log", "checkpoint: %s", err.msg);
        return;
    }
    if (dl_ckpt_store(dl->db, &c) != 0) {
        log_error("decision_log", "cannot store the checkpoint of record %llu: %s",
                  (unsigned long long)c.seq, sqlite3_errmsg(dl->db));
    }
    dl->last_ckpt = c;
    dl->have_ckpt = true;
    dl->ckpt_seq = c.seq;
    dl->ckpt_us = now;
    /* The head file follows on the next sync (periodic), after the records it names are
     * on disk: one rename and fsync per flush interval, not one per checkpoint. */
    dl->head_dirty = true;
    policy_metrics_checkpoint(c.seq);
    char *json = dl_ckpt_json(&c);
    ckpt_ship(dl, json);
    free(json);
}

/* Reopens the file after it was replaced (retention): appends go to the new file. */
static void file_reopen(struct decision_log *dl)
{
    close(dl->fd);
    dl->fd = open(dl->conf.file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (dl->fd < 0) {
        log_error("decision_log", "cannot reopen %s: %s", dl->conf.file, strerror(errno));
        dl->file_reopen = true;
        return;
    }
    off_t end = lseek(dl->fd, 0, SEEK_END);
    dl->file_end = end > 0 ? end : 0;
}

/* index: deferred: the file is the log of record, so it decides the cut: its leading
 * records older than decision_log.retain go, behind a signed retention record, and the
 * index follows in the same SQLite transaction; then the file is rewritten without
 * them. A crash between the two leaves the file longer than the anchor says: the cut is
 * finished here on the next call (and at the next start). */
static void retain_deferred(struct decision_log *dl, int64_t now)
{
    struct err err = { 0 };
    uint64_t seq = 0, anchor = 0;
    char hash[65], ahash[65];
    int64_t ts = 0;
    off_t end = 0;
    if (dl->fd < 0 ||
        dl_file_cut_point(dl->fd, dl->file_end, now - (int64_t)dl->conf.retain_ms * 1000, &seq,
                          hash, &ts, &end, &err) != 0) {
        if (dl->fd >= 0) {
            log_error("decision_log", "retention: %s: %s", dl->conf.file, err.msg);
        }
        return;
    }
    if (seq > 0) {
        long n = dl_retain_file(dl->db, seq, hash, ts, end, dl->ckpt ? &dl->key : NULL,
                                "automatic retention", &err);
        if (n < 0) {
            log_error("decision_log", "retention failed: %s", err.msg);
            return;
        }
        log_info("decision_log", "retention: records up to %llu leave the log (%lld bytes)",
                 (unsigned long long)seq, (long long)end);
    }
    dl_anchor_get(dl->db, &anchor, ahash);
    uint64_t first = dl_file_first_seq(dl->fd);
    if (anchor > 0 && first > 0 && first <= anchor) {
        if (dl_file_drop_before(dl->conf.file, anchor, &err) != 0) {
            log_error("decision_log", "retention of the file failed: %s", err.msg);
            return;
        }
        file_reopen(dl);
    }
}

static void periodic(struct decision_log *dl)
{
    dl->last_sync_us = dl_now_us();
    if (dl->lock_fd >= 0) {
        take_pending(dl);
    }
    if (dl->fd >= 0) {
        if (dl->file_behind) {
            struct err err = { 0 };
            if (dl_file_catch_up(dl->db, dl->fd, &err) == 0) {
                dl->file_behind = false;
                log_info("decision_log", "file caught up with SQLite");
            } else {
                log_error("decision_log", "file mirror behind: %s", err.msg);
            }
        }
        (void)fdatasync(dl->fd);
    }
    sqlite3_wal_checkpoint_v2(dl->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    int64_t now = dl_now_us();
    if (dl->ckpt && dl->last_seq > dl->ckpt_seq &&
        now - dl->ckpt_us >= (int64_t)dl->conf.ckpt_interval_ms * 1000) {
        checkpoint(dl);
    }
    if (dl->head_dirty || dl->last_seq != dl->head_written) {
        head_write(dl);
    }
    if (dl->conf.retain_ms && dl->conf.deferred && now - dl->last_retain_us > DL_RETAIN_EVERY_US) {
        dl->last_retain_us = now;
        retain_deferred(dl, now);
    } else if (dl->conf.retain_ms &&
               (dl->retain_pending || now - dl->last_retain_us > DL_RETAIN_EVERY_US)) {
        /* A bounded chunk per call: the writer keeps committing new records in between. */
        struct err err = { 0 };
        uint64_t anchor = 0;
        dl->last_retain_us = now;
        long n = dl_retain(dl->db, now - (int64_t)dl->conf.retain_ms * 1000, DL_RETAIN_CHUNK,
                           &anchor, dl->ckpt ? &dl->key : NULL, "automatic retention", &err);
        dl->retain_pending = n == DL_RETAIN_CHUNK;
        if (n < 0) {
            log_error("decision_log", "retention failed: %s", err.msg);
        } else if (n > 0) {
            log_info("decision_log", "retention deleted %ld records (up to record %llu)", n,
                     (unsigned long long)anchor);
        }
        /* Once SQLite is done, drop the same records from the file (one rewrite). */
        if (!dl->retain_pending && dl->fd >= 0 && anchor > 0) {
            uint64_t first = dl_file_first_seq(dl->fd);
            if (first > 0 && first <= anchor) {
                if (dl_file_drop_before(dl->conf.file, anchor, &err) != 0) {
                    log_error("decision_log", "retention of the file failed: %s", err.msg);
                }
                close(dl->fd);
                dl->fd = open(dl->conf.file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
                if (dl->fd < 0) {
                    log_error("decision_log", "cannot reopen %s: %s", dl->conf.file,
                              strerror(errno));
                    dl->file_reopen = true;
                }
            }
        }
    }
    if (dl->file_reopen) {
        dl->fd = open(dl->conf.file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (dl->fd >= 0) {
            dl->file_reopen = false;
            dl->file_behind = true; /* caught up on the next call */
        }
    }
}

static void *writer_main(void *arg)
{
    struct decision_log *dl = arg;
    struct qrec *batch = xcalloc(DL_BATCH_MAX, sizeof *batch);
    size_t n = 0;
    /* A throughput thread: when it wakes it does not preempt a worker that answers
     * requests on the same CPU (it keeps its fair share of the CPU all the same). */
    struct sched_param batch_sched = { 0 };
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch_sched);

    pthread_mutex_lock(&dl->mu);
    for (;;) {
        if (n == 0) {
            while (dl->count == 0 && !dl->stop) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                uint64_t ns = (uint64_t)ts.tv_nsec + dl->conf.flush_interval_ms * 1000000ULL;
                ts.tv_sec += (time_t)(ns / 1000000000ULL);
                ts.tv_nsec = (long)(ns % 1000000000ULL);
                if (pthread_cond_timedwait(&dl->wake, &dl->mu, &ts) != 0) {
                    pthread_mutex_unlock(&dl->mu);
                    periodic(dl);
                    pthread_mutex_lock(&dl->mu);
                }
            }
            if (dl->count == 0 && dl->stop) {
                break;
            }
            /* Batch mode: let a burst gather for a moment so that one transaction
             * carries many records (every commit has a fixed cost); records stay
             * durable within flush_interval. Strict mode commits at once. */
            if (dl->conf.sync == DECISION_LOG_BATCH && !dl->stop && dl->count < DL_BATCH_MAX) {
                struct timespec gather = { 0, DL_GATHER_NS };
                pthread_mutex_unlock(&dl->mu);
                nanosleep(&gather, NULL);
                pthread_mutex_lock(&dl->mu);
            }
            size_t cap = dl->conf.queue;
            /* A batch ends where a checkpoint is due: one every `every` records. */
            uint64_t ckpt_at = dl->ckpt ? dl->ckpt_seq + dl->conf.ckpt_every : UINT64_MAX;
            while (dl->count > 0 && n < DL_BATCH_MAX && (n == 0 || batch[n - 1].seq < ckpt_at)) {
                batch[n++] = dl->ring[dl->head];
                dl->head = dl->head + 1 == cap ? 0 : dl->head + 1;
                dl->count--;
            }
            dl->inflight = n;
        }
        pthread_mutex_unlock(&dl->mu);
        int rc = dl_write_batch(dl, batch, n);
        uint64_t last = batch[n - 1].seq;
        if (rc == 0) {
            dl->last_seq = last;
        } else {
            /* Fail closed at once: past max_pending new requests are refused (503); what
             * was accepted is held and saved in the spool, never dropped. */
            pthread_mutex_lock(&dl->mu);
            bool first = !dl->broken;
            dl->broken = true;
            size_t pending = dl->count + n;
            pthread_mutex_unlock(&dl->mu);
            if (first) {
                log_error("decision_log",
                          "the store refuses commits (%s): holding %zu records; "
                          "requests are refused once %llu are pending",
                          dl->errmsg, pending, (unsigned long long)dl->conf.max_pending);
            }
            int sp = dl_spool_pending(dl, batch, n);
            policy_metrics_log_state(pending, dl->spooled, true);
            if (dl->stop) {
                /* Shutting down with a store that keeps failing: every held record goes to
                 * the spool (replayed on the next start); none is dropped silently. */
                pthread_mutex_lock(&dl->mu);
                size_t cap = dl->conf.queue, nq = dl->count;
                for (size_t i = 0; i < nq; i++) {
                    batch = xrealloc(batch, (n + 1) * sizeof *batch);
                    batch[n++] = dl->ring[dl->head];
                    dl->head = (dl->head + 1) % cap;
                    dl->count--;
                }
                pthread_mutex_unlock(&dl->mu);
                if (sp == 0) {
                    log_error("decision_log",
                              "%zu records could not be committed at shutdown: "
                              "saved in the spool %s (%zu records), committed "
                              "on the next start",
                              n, dl->spool_path, dl->spooled);
                } else {
                    /* Not even the spool: the last place left is the error log. */
                    struct sbuf line = { 0 }, canon = { 0 };
                    char prev[65], hash[65];
                    memcpy(prev, dl->spool_prev, 65);
                    for (size_t i = 0; i < n; i++) {
                        if (batch[i].seq <= dl->spooled_seq) {
                            continue;
                        }
                        line.len = 0;
                        dl_put_line(&line, &batch[i], dl->conf.node, prev, hash, &canon);
                        memcpy(prev, hash, 65);
                        line.p[line.len - 1] = '\0';
                        log_error("decision_log", "unsaved record: %s", line.p);
                    }
                    dl_sbuf_free(&line);
                    dl_sbuf_free(&canon);
                    log_error("decision_log",
                              "%zu records could not be committed or spooled at "
                              "shutdown: they are in this log as "
                              "\"unsaved record\" lines",
                              n);
                }
                pthread_mutex_lock(&dl->mu);
                for (size_t i = 0; i < n; i++) {
                    qrec_free(&batch[i]);
                    bytes_give_back(&dl->bytes, &batch[i]);
                }
                n = 0;
                dl->inflight = 0;
                pthread_cond_broadcast(&dl->done);
                break;
            }
            sleep(1);
        }
        /* Under steady load the writer never idles: sync on the clock too, so batch mode
         * stays durable within flush_interval. */
        if (rc == 0 &&
            dl_now_us() - dl->last_sync_us >= (int64_t)dl->conf.flush_interval_ms * 1000) {
            periodic(dl);
        }
        if (rc == 0 && dl->ckpt && last - dl->ckpt_seq >= dl->conf.ckpt_every) {
            checkpoint(dl);
        }
        if (rc == 0) {
            for (size_t i = 0; i < n; i++) {
                qrec_free(&batch[i]);
            }
            if (dl->spooled > 0 && last >= dl->spooled_seq) {
                dl_spool_reset(dl);
            }
        }
        pthread_mutex_lock(&dl->mu);
        if (rc == 0) {
            for (size_t i = 0; i < n; i++) {
                bytes_give_back(&dl->bytes, &batch[i]);
            }
            n = 0;
        }
        policy_metrics_queue_depth(dl->count + n);
        if (rc == 0 && dl->broken) {
            log_warn("decision_log",
                     "the store accepts commits again (up to record %llu); %zu "
                     "records still queued",
                     (unsigned long long)last, dl->count);
            dl->broken = false;
        }
        policy_metrics_log_state(dl->count + n, dl->spooled, dl->broken);
        if (rc == 0) {
            dl->committed = last;
            dl->inflight = 0;
            pthread_cond_broadcast(&dl->done);
            if (dl->cb) {
                decision_log_commit_cb *cb = dl->cb;
                void *cb_arg = dl->cb_arg;
                pthread_mutex_unlock(&dl->mu);
                cb(last, cb_arg);
                pthread_mutex_lock(&dl->mu);
            }
        } else {
            pthread_cond_broadcast(&dl->done);
        }
    }
    pthread_mutex_unlock(&dl->mu);
    free(batch);
    return NULL;
}

static struct decision_log *dl_open(const struct decision_log_conf *c, bool need_lock, bool *busy,
                                    struct err *err);

struct decision_log *decision_log_open(const struct decision_log_conf *c, struct err *err)
{
    struct decision_log *dl = dl_open(c, false, NULL, err);
    if (dl != NULL && c->pg_conninfo != NULL) {
        dl->ship = dl_ship_start(c);
    }
    return dl;
}

/* need_lock: fail (busy) when another process writes the log. Otherwise the lock is
 * waited for briefly (a command line tool holds it for a moment) and, if another
 * process still holds it, the log is opened anyway as before (with a warning). */
static struct decision_log *dl_open(const struct decision_log_conf *c, bool need_lock, bool *busy,
                                    struct err *err)
{
    if (!c->sqlite) {
        err_set(err, ERR_CONFIG, "the decision log needs state.sqlite");
        return NULL;
    }
    bool locked_out = false;
    int lock_fd = dl_writer_lock(c->sqlite, need_lock ? 0 : 5000, &locked_out);
    if (need_lock && lock_fd < 0) {
        if (busy) {
            *busy = locked_out;
        }
        err_set(err, ERR_IO,
                locked_out ? "another process writes the decision log"
                           : "cannot create the decision log's lock file");
        return NULL;
    }
    if (lock_fd < 0) {
        log_warn("decision_log", "%s: %s", c->sqlite,
                 locked_out ? "another process holds the writer lock: administrative records "
                              "are chained by that process"
                            : "cannot create the writer lock file");
    }
    struct decision_log *dl = xcalloc(1, sizeof *dl);
    dl->lock_fd = lock_fd;
    dl->conf = *c;
    dl->conf.sqlite = xstrdup(c->sqlite);
    dl->conf.file = c->file ? xstrdup(c->file) : NULL;
    dl->conf.queue = c->queue ? c->queue : 10000;
    dl->conf.flush_interval_ms = c->flush_interval_ms ? c->flush_interval_ms : 200;
    dl->conf.max_pending = c->max_pending ? c->max_pending : 1000;
    dl->conf.ckpt_every = c->ckpt_every ? c->ckpt_every : 1000;
    dl->conf.ckpt_interval_ms = c->ckpt_interval_ms ? c->ckpt_interval_ms : 60000;
    dl->conf.ckpt_key = c->ckpt_key ? xstrdup(c->ckpt_key) : NULL;
    dl->conf.ckpt_file = c->ckpt_file ? xstrdup(c->ckpt_file) : NULL;
    dl->conf.ckpt_command = c->ckpt_command ? xstrdup(c->ckpt_command) : NULL;
    dl->conf.pg_conninfo = NULL; /* the shipper keeps its own copy */
    dl->conf.pg_password_file = NULL;
    dl->conf.node = c->node ? xstrdup(c->node) : NULL; /* stamped on every record */
    dl->fd = -1;
    dl->spool_fd = -1;
    dl->spool_path = dl_spool_path(c->sqlite);
    dl->head_path = dl_head_path(c->sqlite);
    if (c->ckpt_key) {
        /* Checkpointing configured: never run without being able to sign. */
        if (dl_key_load(c->ckpt_key, true, &dl->key, err) != 0) {
            goto fail;
        }
        dl->ckpt = true;
    }
    if (dl_db_open(c->sqlite, false, &dl->db, err) != 0) {
        goto fail;
    }
    if (dl_ckpt_schema(dl->db) != 0) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
        goto fail;
    }
    sqlite3_exec(dl->db,
                 c->sync == DECISION_LOG_STRICT ? "PRAGMA synchronous=FULL"
                                                : "PRAGMA synchronous=NORMAL",
                 NULL, NULL, NULL);
    static const char sql[] =
        "INSERT INTO decisions(seq, " DL_COLUMNS ", prev_hash, hash) " DL_VALUES;
    if (sqlite3_prepare_v3(dl->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &dl->ins, NULL) !=
        SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
        goto fail;
    }
    /* DL_MULTI rows per statement: one step for many records. */
    struct sbuf multi = { 0 };
    dl_sbuf_puts(&multi, "INSERT INTO decisions(seq, " DL_COLUMNS ", prev_hash, hash) VALUES");
    for (int r = 0; r < DL_MULTI; r++) {
        dl_sbuf_puts(&multi, r ? ",(" : "(");
        for (int k = 0; k < DL_ROW_PARAMS; k++) {
            dl_sbuf_puts(&multi, k ? ",?" : "?");
        }
        dl_sbuf_puts(&multi, ")");
    }
    int mrc = sqlite3_prepare_v3(dl->db, multi.p, (int)multi.len, SQLITE_PREPARE_PERSISTENT,
                                 &dl->ins_multi, NULL);
    dl_sbuf_free(&multi);
    if (mrc != SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
        goto fail;
    }
    /* Every batch begins and commits: prepared once, not parsed per batch. */
    if (sqlite3_prepare_v3(dl->db, "BEGIN IMMEDIATE", -1, SQLITE_PREPARE_PERSISTENT, &dl->begin,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(dl->db, "COMMIT", -1, SQLITE_PREPARE_PERSISTENT, &dl->commit, NULL) !=
            SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
        goto fail;
    }
    if (sqlite3_prepare_v3(dl->db, "DELETE FROM decision_log_pending WHERE id = ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &dl->del_pending, NULL) != SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
        goto fail;
    }
    if (c->file && !c->deferred &&
        sqlite3_table_column_metadata(dl->db, NULL, "decision_log_index", "offset", NULL, NULL,
                                      NULL, NULL, NULL) == SQLITE_OK) {
        /* Back from index: deferred: the file's records the index does not have yet are
         * indexed first; SQLite is the log of record again from here on. */
        struct decision_log_conf dc = *c;
        dc.deferred = true;
        if (dl_ingest(&dc, NULL, err) != 0) {
            goto fail;
        }
        /* A later switch to deferred starts from SQLite's last row again. */
        sqlite3_exec(dl->db, "DROP TABLE decision_log_index", NULL, NULL, NULL);
    }
    /* The chain continues from the last row, or from the retention anchor. */
    uint64_t anchor_seq;
    dl_anchor_get(dl->db, &anchor_seq, dl->prev);
    dl->next_seq = anchor_seq + 1;
    sqlite3_stmt *st = NULL;
    if (c->deferred) {
        /* The file is the log of record: the chain continues from its last complete
         * line. SQLite ahead of it (a log written with index: inline until now) first
         * gets its missing lines appended. */
        dl->fd = open(c->file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (dl->fd < 0) {
            err_set(err, ERR_IO, "cannot open %s: %s", c->file, strerror(errno));
            goto fail;
        }
        uint64_t fseq = 0, dbseq = 0;
        if (dl_index_schema(dl->db) != 0) {
            err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
            goto fail;
        }
        if (dl_file_head(dl->fd, &fseq, dl->prev, &dl->file_end, err) != 0) {
            goto fail;
        }
        if (sqlite3_prepare_v2(dl->db, "SELECT max(seq) FROM decisions", -1, &st, NULL) ==
                SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
            dbseq = (uint64_t)sqlite3_column_int64(st, 0);
        }
        sqlite3_finalize(st);
        st = NULL;
        if (dbseq > fseq) {
            if (dl_file_catch_up(dl->db, dl->fd, err) != 0 ||
                dl_file_head(dl->fd, &fseq, dl->prev, &dl->file_end, err) != 0) {
                goto fail;
            }
        }
        uint64_t first = dl_file_first_seq(dl->fd);
        if (anchor_seq > 0 && first > 0 && first <= anchor_seq) {
            /* A retention cut that a stop interrupted: SQLite has the signed record,
             * the file still has the records it covers. Finish it. */
            if (dl_file_drop_before(c->file, anchor_seq, err) != 0) {
                goto fail;
            }
            file_reopen(dl);
            if (dl->fd < 0 || dl_file_head(dl->fd, &fseq, dl->prev, &dl->file_end, err) != 0) {
                if (dl->fd < 0) {
                    err_set(err, ERR_IO, "cannot reopen %s", c->file);
                }
                goto fail;
            }
        }
        if (fseq <= anchor_seq) {
            /* Nothing after the anchor yet (retention took every line, or none was
             * written): the chain continues from the anchor. */
            dl_anchor_get(dl->db, &anchor_seq, dl->prev);
        }
        dl->next_seq = (fseq > anchor_seq ? fseq : anchor_seq) + 1;
    } else if (sqlite3_prepare_v2(dl->db,
                                  "SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1", -1,
                                  &st, NULL) == SQLITE_OK &&
               sqlite3_step(st) == SQLITE_ROW) {
        dl->next_seq = (uint64_t)sqlite3_column_int64(st, 0) + 1;
        const unsigned char *h = sqlite3_column_text(st, 1);
        snprintf(dl->prev, sizeof dl->prev, "%s", h ? (const char *)h : "");
    }
    sqlite3_finalize(st);
    /* Sequence numbers never restart: the head file remembers the last head even when
     * both stores were cut back. Continue after it; verify reports the gap. */
    struct dl_head head;
    struct err herr = { 0 };
    int hrc = dl_head_read(dl->head_path, &head, &herr);
    if (hrc < 0 || hrc > 1) {
        log_error("decision_log", "head file unreadable: %s", herr.msg);
    } else if (hrc == 0) {
        if (head.seq >= dl->next_seq) {
            log_error("decision_log",
                      "TAMPERING OR LOSS: the stores end at record %llu but the "
                      "head file %s records %llu: records %llu..%llu were "
                      "removed; the log continues at record %llu",
                      (unsigned long long)(dl->next_seq - 1), dl->head_path,
                      (unsigned long long)head.seq, (unsigned long long)dl->next_seq,
                      (unsigned long long)head.seq, (unsigned long long)head.seq + 1);
            dl->next_seq = head.seq + 1;
            memcpy(dl->prev, head.hash, 65);
        }
        if (head.have_ckpt) {
            dl->last_ckpt = head.ckpt;
            dl->have_ckpt = true;
            dl->ckpt_seq = head.ckpt.seq;
        }
    }
    struct dl_checkpoint *cks = NULL;
    size_t ncks = dl_ckpt_load(dl->db, false, &cks);
    if (ncks > 0 && cks[ncks - 1].seq > dl->ckpt_seq) {
        dl->last_ckpt = cks[ncks - 1];
        dl->have_ckpt = true;
        dl->ckpt_seq = cks[ncks - 1].seq;
    }
    free(cks);
    if (dl->have_ckpt && dl->ckpt_seq >= dl->next_seq) {
        log_error("decision_log",
                  "TAMPERING OR LOSS: the stores end at record %llu but a signed "
                  "checkpoint covers record %llu; the log continues at record %llu",
                  (unsigned long long)(dl->next_seq - 1), (unsigned long long)dl->ckpt_seq,
                  (unsigned long long)dl->ckpt_seq + 1);
        dl->next_seq = dl->ckpt_seq + 1;
        memcpy(dl->prev, dl->last_ckpt.hash, 65);
    }
    dl->committed = dl->next_seq - 1;
    dl->last_seq = dl->committed;
    dl->head_written = UINT64_MAX;
    dl->ckpt_us = dl_now_us();
    if (c->file && !c->deferred) {
        dl->fd = open(c->file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (dl->fd < 0) {
            err_set(err, ERR_IO, "cannot open %s: %s", c->file, strerror(errno));
            goto fail;
        }
        /* A crash between retention's SQLite commit and its file rewrite leaves lines the
         * anchor already covers: finish the rewrite. */
        uint64_t first = dl_file_first_seq(dl->fd);
        if (anchor_seq > 0 && first > 0 && first <= anchor_seq) {
            close(dl->fd);
            dl->fd = -1;
            if (dl_file_drop_before(c->file, anchor_seq, err) != 0) {
                goto fail;
            }
            dl->fd = open(c->file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
            if (dl->fd < 0) {
                err_set(err, ERR_IO, "cannot open %s: %s", c->file, strerror(errno));
                goto fail;
            }
        }
        if (dl_file_catch_up(dl->db, dl->fd, err) != 0) {
            goto fail;
        }
    }
    /* Records an earlier run accepted but could not commit come first. */
    if (dl_spool_replay(dl, dl_write_batch, err) != 0) {
        goto fail;
    }
    dl->next_seq = dl->last_seq + 1;
    dl->committed = dl->last_seq;
    checkpoint(dl); /* covers a tail a crash left without one */
    head_write(dl);
    dl->ring = xcalloc(dl->conf.queue, sizeof *dl->ring);
    dl->bytes.cap = bytes_cap(dl->conf.queue);
    dl->bytes.p = xmalloc(dl->bytes.cap);
    pthread_mutex_init(&dl->mu, NULL);
    pthread_cond_init(&dl->wake, NULL);
    pthread_cond_init(&dl->done, NULL);
    dl->last_retain_us = 0;
    dl->last_sync_us = dl_now_us();
    if (dl->lock_fd >= 0) {
        take_pending(dl); /* left by a tool while no server ran */
    }
    if (pthread_create(&dl->thread, NULL, writer_main, dl) != 0) {
        err_set(err, ERR_IO, "cannot start the decision log writer");
        goto fail;
    }
    dl->thread_started = true;
    return dl;
fail:
    if (dl->fd >= 0) {
        close(dl->fd);
    }
    for (size_t i = 0; dl->ring && i < dl->count; i++) {
        qrec_free(&dl->ring[(dl->head + i) % dl->conf.queue]);
    }
    free(dl->bytes.p);
    if (dl->lock_fd >= 0) {
        close(dl->lock_fd);
    }
    sqlite3_finalize(dl->del_pending);
    if (dl->spool_fd >= 0) {
        close(dl->spool_fd);
    }
    free(dl->spool_path);
    free(dl->head_path);
    dl_key_free(&dl->key);
    sqlite3_finalize(dl->ins);
    sqlite3_finalize(dl->ins_multi);
    sqlite3_finalize(dl->begin);
    sqlite3_finalize(dl->commit);
    sqlite3_close(dl->db);
    dl_sbuf_free(&dl->lines);
    free(dl->at);
    free(dl->ring);
    decision_log_conf_fini(&dl->conf);
    free(dl);
    return NULL;
}

int decision_log_append(struct decision_log *dl, const struct decision_record *rec, uint64_t *seq)
{
    /* The record's bytes are built here, by the appending thread, outside the lock:
     * the writer only frames, chains and writes them. SQLite (index: inline) binds the
     * record's fields, so those are copied too. */
    struct qrec q = { 0 };
    struct sbuf *body = NULL;
    if (dl->conf.node) {
        body = body_buf();
        body->len = 0;
        dl_body_append(body, rec, &q.sp);
    }
    if (!body || !dl->conf.deferred) {
        rec_copy(rec, &q, dl->conf.node);
    }
    pthread_mutex_lock(&dl->mu);
    /* Fail closed: a full queue refuses new records (503); so does a failing store
     * once max_pending records are held (strict mode at once: nothing would commit). */
    size_t pending = dl->count + dl->inflight;
    if (pending >= dl->conf.queue || dl->stop ||
        (dl->broken && (pending >= dl->conf.max_pending || dl->conf.sync == DECISION_LOG_STRICT))) {
        pthread_mutex_unlock(&dl->mu);
        free(q.blob);
        return ERR_LIMIT;
    }
    if (body) {
        q.body = bytes_take(&dl->bytes, body->len, &q.ring_charge);
        if (!q.body) {
            q.body = xmalloc(body->len); /* rare: a very large record, or the ring is full */
        }
        memcpy(q.body, body->p, body->len);
        q.body_len = (uint32_t)body->len;
    }
    size_t tail = dl->head + dl->count; /* < 2 * queue: no division on this path */
    if (tail >= dl->conf.queue) {
        tail -= dl->conf.queue;
    }
    q.seq = dl->next_seq++;
    q.pending_id = 0;
    dl->ring[tail] = q;
    if (seq) {
        *seq = q.seq;
    }
    dl->count++;
    policy_metrics_queue_depth(dl->count + dl->inflight);
    if (dl->broken) {
        policy_metrics_log_state(dl->count + dl->inflight, dl->spooled, true);
    }
    pthread_cond_signal(&dl->wake);
    pthread_mutex_unlock(&dl->mu);
    return 0;
}

int decision_log_wait(struct decision_log *dl, uint64_t seq)
{
    int rc = 0;
    pthread_mutex_lock(&dl->mu);
    while (dl->committed < seq) {
        if (dl->broken) {
            rc = ERR_IO;
            break;
        }
        pthread_cond_wait(&dl->done, &dl->mu);
    }
    pthread_mutex_unlock(&dl->mu);
    return rc;
}

void decision_log_set_commit_cb(struct decision_log *dl, decision_log_commit_cb *cb, void *arg)
{
    pthread_mutex_lock(&dl->mu);
    dl->cb = cb;
    dl->cb_arg = arg;
    pthread_mutex_unlock(&dl->mu);
}

bool decision_log_healthy(struct decision_log *dl)
{
    pthread_mutex_lock(&dl->mu);
    bool ok = !dl->broken;
    pthread_mutex_unlock(&dl->mu);
    return ok;
}

size_t decision_log_queue_depth(struct decision_log *dl)
{
    pthread_mutex_lock(&dl->mu);
    size_t n = dl->count + dl->inflight;
    pthread_mutex_unlock(&dl->mu);
    return n;
}

void decision_log_close(struct decision_log *dl)
{
    if (!dl) {
        return;
    }
    /* What it has not shipped yet stays in SQLite and goes with the next start. */
    dl_ship_stop_free(dl->ship, true);
    dl->ship = NULL;
    pthread_mutex_lock(&dl->mu);
    dl->stop = true;
    pthread_cond_signal(&dl->wake);
    pthread_mutex_unlock(&dl->mu);
    pthread_join(dl->thread, NULL);
    if (!dl->broken) {
        checkpoint(dl);
        if (dl->head_dirty || dl->last_seq != dl->head_written) {
            head_write(dl);
        }
    }
    if (dl->spool_fd >= 0) {
        (void)fdatasync(dl->spool_fd);
        close(dl->spool_fd);
    }
    free(dl->spool_path);
    free(dl->head_path);
    dl_key_free(&dl->key);
    if (dl->fd >= 0) {
        if (dl->file_behind) {
            struct err err = { 0 };
            (void)dl_file_catch_up(dl->db, dl->fd, &err);
        }
        (void)fdatasync(dl->fd);
        close(dl->fd);
    }
    sqlite3_finalize(dl->ins);
    sqlite3_finalize(dl->ins_multi);
    sqlite3_finalize(dl->begin);
    sqlite3_finalize(dl->commit);
    sqlite3_finalize(dl->del_pending);
    sqlite3_close(dl->db);
    dl_sbuf_free(&dl->lines);
    free(dl->at);
    if (dl->lock_fd >= 0) {
        close(dl->lock_fd); /* after SQLite: the writer lock is released last */
    }
    pthread_mutex_destroy(&dl->mu);
    pthread_cond_destroy(&dl->wake);
    pthread_cond_destroy(&dl->done);
    free(dl->ring);
    free(dl->bytes.p);
    decision_log_conf_fini(&dl->conf);
    free(dl);
}

/* ---- administrative records from command line tools ---- */

int decision_log_admin(const struct decision_log_conf *c, const struct decision_record *rec,
                       unsigned wait_ms, uint64_t *seq, struct err *err)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct sbuf tmp[2] = { { 0 }, { 0 } };
    *seq = 0;
    if (dl_db_open(c->sqlite, false, &db, err) != 0) {
        return ERR_IO;
    }
    static const char sql[] = "INSERT INTO decision_log_pending(id, " DL_COLUMNS ", prev_hash, "
                              "hash) " DL_VALUES;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK ? 0 : ERR_IO;
    if (rc == 0) {
        rc = dl_bind_row(st, rec, 0, NULL, NULL, tmp);
    }
    sqlite3_finalize(st);
    dl_sbuf_free(&tmp[0]);
    dl_sbuf_free(&tmp[1]);
    if (rc != 0) {
        err_set(err, ERR_IO, "%s: %s", c->sqlite, sqlite3_errmsg(db));
        sqlite3_close(db);
        return rc;
    }
    int64_t id = sqlite3_last_insert_rowid(db);
    /* No server writing: chain it here, as the writer. */
    bool busy = false;
    struct err oerr = { 0 };
    struct decision_log *dl = dl_open(c, true, &busy, &oerr);
    if (dl) {
        decision_log_close(dl);
    } else if (!busy) {
        sqlite3_close(db);
        return err_set(err, ERR_IO, "%s", oerr.msg);
    }
    /* Either way the record leaves the pending table when it is chained. */
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT (SELECT count(*) FROM decision_log_pending WHERE id = ?1),"
                           " (SELECT max(seq) FROM decisions WHERE request_id = ?2)",
                           -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_text(q, 2, rec->request_id ? rec->request_id : "", -1, SQLITE_STATIC);
        for (unsigned waited = 0;; waited += 50) {
            struct err ie = { 0 };
            if (c->deferred) {
                (void)dl_ingest(c, NULL, &ie); /* the record is a line of the file first */
            }
            sqlite3_reset(q);
            if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int64(q, 0) == 0) {
                *seq = (uint64_t)sqlite3_column_int64(q, 1);
                break;
            }
            if (waited >= wait_ms) {
                break;
            }
            usleep(50000);
        }
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    return 0;
}
