/* policy/dl_spool.c - the spool: records accepted while the store refuses
 * commits, saved chained in a preallocated file (a full disk still has room for
 * it) and committed first on the next start. Writer thread. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
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

/* ---- the spool: uncommitted records while the store refuses commits ---- */

/* Zeroes [from, to) of the spool (the preallocated blocks stay allocated). */
static int spool_zero(int fd, off_t from, off_t to)
{
    static const char zeros[65536];
    while (from < to) {
        size_t n = (size_t)(to - from) < sizeof zeros ? (size_t)(to - from) : sizeof zeros;
        if (dl_write_all_at(fd, zeros, n, from) != 0) {
            return -1;
        }
        from += (off_t)n;
    }
    return 0;
}

static void spool_open(struct decision_log *dl)
{
    if (dl->spool_fd >= 0) {
        return;
    }
    dl->spool_fd = open(dl->spool_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (dl->spool_fd < 0) {
        log_error("decision_log", "cannot open the spool %s: %s", dl->spool_path, strerror(errno));
        return;
    }
    /* Reserve room now, while there is some: records typically take under 1 KiB. */
    off_t reserve =
        (off_t)(dl->conf.max_pending * 2048 < 65536 ? 65536 : dl->conf.max_pending * 2048);
    int e = posix_fallocate(dl->spool_fd, 0, reserve);
    if (e != 0) {
        log_warn("decision_log", "cannot reserve %lld bytes for the spool %s: %s",
                 (long long)reserve, dl->spool_path, strerror(e));
    }
}

void dl_put_line(struct sbuf *b, const struct qrec *q, const char *node, const char *prev,
                 char hash[65], struct sbuf *canon)
{
    if (q->body) {
        dl_line_from_body(b, q->seq, node, q->body, q->body_len, &q->sp, prev, hash, NULL);
        return;
    }
    dl_canonical(q->rec, q->seq, prev, canon);
    dl_hash(prev, canon->p, canon->len, hash);
    dl_sbuf_put(b, canon->p, canon->len);
    dl_sbuf_put(b, ",\"hash\":\"", 9);
    dl_sbuf_put(b, hash, 64);
    dl_sbuf_put(b, "\"}\n", 3);
}

/* Saves every held record not yet in the spool (the failing batch, then the queue),
 * chained as they will be committed. Writer thread. Returns 0 when all are saved. */
int dl_spool_pending(struct decision_log *dl, const struct qrec *batch, size_t n)
{
    pthread_mutex_lock(&dl->mu);
    size_t nq = dl->count, cap = dl->conf.queue;
    struct qrec *queued = xcalloc(nq ? nq : 1, sizeof *queued);
    for (size_t i = 0; i < nq; i++) {
        queued[i] = dl->ring[(dl->head + i) % cap]; /* blobs stay until the writer frees them */
    }
    pthread_mutex_unlock(&dl->mu);
    if (dl->spooled == 0) {
        memcpy(dl->spool_prev, dl->prev, 65);
        dl->spooled_seq = n ? batch[0].seq - 1 : dl->last_seq;
    }
    struct sbuf lines = { 0 }, canon = { 0 };
    char prev[65], hash[65];
    memcpy(prev, dl->spool_prev, 65);
    uint64_t last = dl->spooled_seq;
    size_t count = 0;
    for (size_t i = 0; i < n + nq; i++) {
        const struct qrec *q = i < n ? &batch[i] : &queued[i - n];
        if (q->seq <= last) {
            continue;
        }
        dl_put_line(&lines, q, dl->conf.node, prev, hash, &canon);
        memcpy(prev, hash, 65);
        last = q->seq;
        count++;
    }
    free(queued);
    int rc = 0;
    if (count > 0) {
        spool_open(dl);
        rc = -1;
        if (dl->spool_fd >= 0 &&
            dl_write_all_at(dl->spool_fd, lines.p, lines.len, dl->spool_used) == 0 &&
            fdatasync(dl->spool_fd) == 0) {
            rc = 0;
        } else if (dl->spool_fd >= 0) {
            log_error("decision_log",
                      "cannot write %zu records to the spool %s: %s (they stay in "
                      "memory)",
                      count, dl->spool_path, strerror(errno));
            (void)spool_zero(dl->spool_fd, dl->spool_used, dl->spool_used + (off_t)lines.len);
        }
        if (rc == 0) {
            dl->spool_used += (off_t)lines.len;
            dl->spooled += count;
            dl->spooled_seq = last;
            memcpy(dl->spool_prev, prev, 65);
        }
    }
    dl_sbuf_free(&lines);
    dl_sbuf_free(&canon);
    return rc;
}

/* Everything in the spool is committed: empty it. */
void dl_spool_reset(struct decision_log *dl)
{
    if (dl->spool_fd >= 0 && dl->spool_used > 0) {
        if (spool_zero(dl->spool_fd, 0, dl->spool_used) != 0 || fdatasync(dl->spool_fd) != 0) {
            log_error("decision_log", "cannot empty the spool %s: %s", dl->spool_path,
                      strerror(errno));
            return; /* replay skips committed records: harmless */
        }
    }
    dl->spool_used = 0;
    dl->spooled = 0;
}

/* Commits what an earlier run left in the spool, before anything new. */
int dl_spool_replay(struct decision_log *dl, dl_commit_fn *commit, struct err *err)
{
    spool_open(dl);
    if (dl->spool_fd < 0) {
        return 0;
    }
    struct stat sb;
    if (fstat(dl->spool_fd, &sb) != 0 || sb.st_size == 0) {
        return 0;
    }
    char *buf = xmalloc((size_t)sb.st_size + 1);
    ssize_t got = pread(dl->spool_fd, buf, (size_t)sb.st_size, 0);
    if (got < 0) {
        free(buf);
        return err_set(err, ERR_IO, "%s: %s", dl->spool_path, strerror(errno));
    }
    buf[got] = '\0';
    size_t len = strlen(buf); /* the used part ends at the first zero byte */
    struct dl_row *rows = NULL;
    struct qrec *qs = NULL;
    size_t nrows = 0, skipped = 0;
    int rc = 0;
    char prev[65], hash[65];
    memcpy(prev, dl->prev, 65);
    struct sbuf canon = { 0 };
    for (size_t off = 0; off < len && rc == 0;) {
        char *nl = memchr(buf + off, '\n', len - off);
        if (!nl) {
            log_warn("decision_log", "spool %s: ignoring an unfinished line at byte %zu",
                     dl->spool_path, off);
            break;
        }
        struct dl_row row;
        if (!dl_line_parse(buf + off, (size_t)(nl - buf - (ptrdiff_t)off), &row)) {
            rc = err_set(err, ERR_PARSE,
                         "%s: byte %zu is not a decision record; move the spool "
                         "aside to start without it",
                         dl->spool_path, off);
            break;
        }
        off = (size_t)(nl - buf) + 1;
        if (row.seq <= dl->last_seq) {
            skipped++; /* committed before the spool was emptied */
            dl_row_fini(&row);
            continue;
        }
        dl_canonical(&row.rec, row.seq, prev, &canon);
        dl_hash(prev, canon.p, canon.len, hash);
        if (row.seq != dl->last_seq + nrows + 1 || strcmp(row.prev_hash, prev) != 0 ||
            strcmp(row.hash, hash) != 0) {
            rc = err_set(err, ERR_PARSE,
                         "%s: record %llu does not continue the log at record "
                         "%llu (or was edited); move the spool aside to start "
                         "without it",
                         dl->spool_path, (unsigned long long)row.seq,
                         (unsigned long long)(dl->last_seq + nrows + 1));
            dl_row_fini(&row);
            break;
        }
        memcpy(prev, hash, 65);
        rows = xrealloc(rows, (nrows + 1) * sizeof *rows);
        rows[nrows++] = row;
    }
    dl_sbuf_free(&canon);
    free(buf);
    if (rc == 0 && nrows > 0) {
        qs = xcalloc(nrows, sizeof *qs);
        for (size_t i = 0; i < nrows; i++) {
            qs[i].rec = &rows[i].rec;
            qs[i].seq = rows[i].seq;
        }
        for (size_t i = 0; i < nrows && rc == 0; i += DL_BATCH_MAX) {
            size_t k = nrows - i < DL_BATCH_MAX ? nrows - i : DL_BATCH_MAX;
            if (commit(dl, qs + i, k) != 0) {
                rc = err_set(err, ERR_IO, "cannot commit the %zu spooled records of %s: %s", nrows,
                             dl->spool_path, dl->errmsg);
            } else {
                dl->last_seq = qs[i + k - 1].seq;
            }
        }
        if (rc == 0) {
            log_warn("decision_log",
                     "committed %zu records saved in the spool %s by an earlier "
                     "run (records %llu..%llu)",
                     nrows, dl->spool_path, (unsigned long long)qs[0].seq,
                     (unsigned long long)qs[nrows - 1].seq);
        }
    }
    for (size_t i = 0; i < nrows; i++) {
        dl_row_fini(&rows[i]);
    }
    free(rows);
    free(qs);
    if (rc == 0 && (nrows > 0 || skipped > 0 || len > 0)) {
        dl->spool_used = (off_t)len;
        dl_spool_reset(dl);
    }
    return rc;
}
