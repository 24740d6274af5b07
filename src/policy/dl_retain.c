/* policy/dl_retain.c - the decision log's retention: records older than
 * decision_log.retain leave both stores behind a signed retention record (the new
 * anchor: the first kept record chains to it). With index: inline SQLite decides the
 * cut and the file follows; with index: deferred the file (the log of record)
 * decides it and the index follows. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dl_writer.h"

/* ---- a line's seq, ts and hash, read without parsing the whole line ---- */

#define SCAN_CHUNK (1024 * 1024)

struct line_head {
    uint64_t seq;
    char ts[28];   /* as written: 2026-01-31T12:00:00.000000Z */
    char hash[65]; /* empty when the line does not end with one */
};

/* A record line's seq (after {"v":N,), its ts and its hash (the line's last member).
 * Inside a JSON string a '"' is always escaped, so the first ,"ts":" is the key. */
static bool line_head_read(const char *p, size_t n, struct line_head *h)
{
    static const char ts_key[] = ",\"ts\":\"", hash_key[] = ",\"hash\":\"";
    memset(h, 0, sizeof *h);
    if (n < 16 || memcmp(p, "{\"v\":", 5) != 0) {
        return false;
    }
    const char *q = memchr(p + 5, ',', n - 5);
    if (!q || (size_t)(p + n - q) < 8 || memcmp(q, ",\"seq\":", 7) != 0) {
        return false;
    }
    q += 7;
    uint64_t seq = 0;
    size_t digits = 0;
    for (; q < p + n && *q >= '0' && *q <= '9' && digits < 19; q++, digits++) {
        seq = seq * 10 + (uint64_t)(*q - '0');
    }
    if (digits == 0 || seq == 0) {
        return false;
    }
    h->seq = seq;
    const char *t = memmem(p, n, ts_key, sizeof ts_key - 1);
    if (t && (size_t)(p + n - t) >= sizeof ts_key - 1 + 28) {
        memcpy(h->ts, t + sizeof ts_key - 1, 27);
        h->ts[27] = '\0';
    }
    size_t tail = sizeof hash_key - 1 + 64 + 2; /* ,"hash":"<64>"} */
    if (n >= tail && memcmp(p + n - tail, hash_key, sizeof hash_key - 1) == 0 &&
        memcmp(p + n - 2, "\"}", 2) == 0) {
        memcpy(h->hash, p + n - 66, 64);
        h->hash[64] = '\0';
    }
    return true;
}

/* Calls stop(line) for each complete line from the file's start while it returns
 * false and the file has lines below limit; *end gets the offset past the last line
 * for which it returned false (the lines kept going), *last that line's head.
 * Returns 0, or ERR_IO. */
typedef bool line_stop(const struct line_head *h, bool parsed, const void *arg);

static int scan_lines(int fd, off_t limit, line_stop *stop, const void *arg, off_t *end,
                      struct line_head *last, struct err *err)
{
    char *buf = xmalloc(SCAN_CHUNK);
    off_t off = 0;
    int rc = 0;
    *end = 0;
    memset(last, 0, sizeof *last);
    for (bool done = false; !done && off < limit;) {
        size_t want = limit - off < SCAN_CHUNK ? (size_t)(limit - off) : SCAN_CHUNK;
        ssize_t got = pread(fd, buf, want, off);
        if (got < 0) {
            rc = err_set(err, ERR_IO, "read: %s", strerror(errno));
            break;
        }
        size_t pos = 0;
        const char *nl;
        while ((nl = memchr(buf + pos, '\n', (size_t)got - pos)) != NULL) {
            struct line_head h;
            size_t len = (size_t)(nl - (buf + pos));
            bool parsed = line_head_read(buf + pos, len, &h);
            if (stop(&h, parsed, arg)) {
                done = true;
                break;
            }
            *last = h;
            pos += len + 1;
            *end = off + (off_t)pos;
        }
        if (!done && pos == 0) {
            if ((size_t)got < SCAN_CHUNK) {
                break; /* a torn last line */
            }
            rc = err_set(err, ERR_PARSE, "a line longer than %d bytes", SCAN_CHUNK);
            break;
        }
        off += (off_t)pos;
    }
    free(buf);
    return rc;
}

uint64_t dl_file_first_seq(int fd)
{
    char buf[65536]; /* the first line only */
    struct line_head h;
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    const char *nl = n > 0 ? memchr(buf, '\n', (size_t)n) : NULL;
    return nl && line_head_read(buf, (size_t)(nl - buf), &h) ? h.seq : 0;
}

/* Copies the file from off to its end into a new file put in its place (atomic
 * rename): the kernel copies, nothing is parsed. */
static int keep_from(const char *file, int in, off_t off, struct err *err)
{
    struct stat sb;
    if (fstat(in, &sb) != 0) {
        return err_set(err, ERR_IO, "%s: %s", file, strerror(errno));
    }
    char *tmp = xasprintf("%s.retain", file);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, sb.st_mode & 0777);
    int rc = 0;
    if (out < 0) {
        rc = err_set(err, ERR_IO, "%s: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    loff_t from = off;
    while (rc == 0 && from < sb.st_size) {
        ssize_t n = copy_file_range(in, &from, out, NULL, (size_t)(sb.st_size - from), 0);
        if (n <= 0) {
            rc = err_set(err, ERR_IO, "%s: %s", tmp, n < 0 ? strerror(errno) : "short copy");
        }
    }
    if (rc == 0 && fdatasync(out) != 0) {
        rc = err_set(err, ERR_IO, "%s: %s", tmp, strerror(errno));
    }
    close(out);
    if (rc == 0 && rename(tmp, file) != 0) {
        rc = err_set(err, ERR_IO, "rename %s: %s", tmp, strerror(errno));
    }
    if (rc != 0) {
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

static bool past_seq(const struct line_head *h, bool parsed, const void *arg)
{
    return parsed && h->seq > *(const uint64_t *)arg;
}

/* Rewrites the file without its lines up to record keep_after (the lines are in seq
 * order: the first line past it and everything after are kept as they are). */
int dl_file_drop_before(const char *file, uint64_t keep_after, struct err *err)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT ? 0 : err_set(err, ERR_IO, "%s: %s", file, strerror(errno));
    }
    struct stat sb;
    off_t end = 0;
    struct line_head last;
    int rc = fstat(fd, &sb) != 0
                 ? err_set(err, ERR_IO, "%s: %s", file, strerror(errno))
                 : scan_lines(fd, sb.st_size, past_seq, &keep_after, &end, &last, err);
    if (rc == 0 && end > 0) {
        rc = keep_from(file, fd, end, err);
    }
    close(fd);
    return rc;
}

int dl_file_seek_after(int fd, off_t limit, uint64_t after, off_t *off, struct err *err)
{
    struct line_head last;
    return scan_lines(fd, limit, past_seq, &after, off, &last, err);
}

bool dl_line_head(const char *p, size_t n, uint64_t *seq, int64_t *ts_us)
{
    struct line_head h;
    if (!line_head_read(p, n, &h) || !dl_parse_ts(h.ts, ts_us)) {
        return false;
    }
    *seq = h.seq;
    return true;
}

static bool not_before(const struct line_head *h, bool parsed, const void *arg)
{
    /* The ts strings have one fixed width: they compare as the times they spell. */
    return !parsed || !h->hash[0] || strlen(h->ts) != 27 || strcmp(h->ts, arg) >= 0;
}

int dl_file_cut_point(int fd, off_t limit, int64_t cutoff_us, uint64_t *seq, char hash[65],
                      int64_t *ts_us, off_t *end, struct err *err)
{
    char cut[64];
    struct line_head last;
    dl_format_ts(cutoff_us, cut);
    *seq = 0;
    int rc = scan_lines(fd, limit, not_before, cut, end, &last, err);
    if (rc != 0 || *end == 0) {
        return rc;
    }
    if (!dl_parse_ts(last.ts, ts_us)) {
        return err_set(err, ERR_PARSE, "record %llu has no time", (unsigned long long)last.seq);
    }
    *seq = last.seq;
    memcpy(hash, last.hash, 65);
    return 0;
}

/* The cut itself, inside the caller's transaction: the signed retention record (what,
 * up to where, why, when), the anchor, and the index rows up to it deleted. Returns
 * the rows deleted or -1. An anchor without a signed record is truncation, not
 * retention. */
static long retain_upto(sqlite3 *db, uint64_t seq, const char *hash, int64_t ts,
                        const struct dl_key *key, const char *reason, struct err *err)
{
    struct dl_checkpoint rr = { .retention = true, .seq = seq, .upto_ts_us = ts };
    snprintf(rr.hash, sizeof rr.hash, "%s", hash);
    snprintf(rr.reason, sizeof rr.reason, "%s", reason ? reason : "retention");
    dl_format_ts(dl_now_us(), rr.time);
    if (key && dl_ckpt_sign(key, &rr, err) != 0) {
        return -1;
    }
    sqlite3_stmt *st = NULL;
    long deleted = -1;
    if (sqlite3_prepare_v2(db, "DELETE FROM decisions WHERE seq <= ?1", -1, &st, NULL) !=
        SQLITE_OK) {
        goto fail;
    }
    sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    if (sqlite3_step(st) != SQLITE_DONE) {
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    deleted = (long)sqlite3_changes(db);
    char seqtxt[STR_U64_MAX];
    struct str sq = str_u64(seqtxt, seq);
    if (sqlite3_prepare_v2(db,
                           "INSERT OR REPLACE INTO decision_log_meta VALUES('anchor_seq', "
                           "?1), ('anchor_hash', ?2)",
                           -1, &st, NULL) != SQLITE_OK) {
        goto fail;
    }
    sqlite3_bind_text(st, 1, sq.p, (int)sq.len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, hash, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE || dl_ckpt_store(db, &rr) != 0) {
        goto fail;
    }
    sqlite3_finalize(st);
    return deleted;
fail:
    err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return -1;
}

long dl_retain(sqlite3 *db, int64_t cutoff_us, long max_rows, uint64_t *anchor_seq,
               const struct dl_key *key, const char *reason, struct err *err)
{
    sqlite3_stmt *st = NULL;
    uint64_t seq = 0;
    int64_t ts = 0;
    char hash[65] = "";
    if (dl_ckpt_schema(db) != 0 ||
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
        return -1;
    }
    /* The anchor is the newest deleted record: the first kept one chains to it. */
    if (sqlite3_prepare_v2(db,
                           "SELECT seq, hash, ts_us FROM (SELECT seq, hash, ts_us FROM "
                           "decisions WHERE ts_us < ?1 ORDER BY seq LIMIT ?2) ORDER BY seq "
                           "DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    sqlite3_bind_int64(st, 1, cutoff_us);
    sqlite3_bind_int64(st, 2, max_rows > 0 ? max_rows : -1);
    if (sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *h = sqlite3_column_text(st, 1);
        seq = (uint64_t)sqlite3_column_int64(st, 0);
        ts = sqlite3_column_int64(st, 2);
        snprintf(hash, sizeof hash, "%s", h ? (const char *)h : "");
    }
    sqlite3_finalize(st);
    if (seq == 0) {
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        dl_anchor_get(db, anchor_seq, hash);
        return 0;
    }
    long deleted = retain_upto(db, seq, hash, ts, key, reason, err);
    if (deleted < 0 || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        if (deleted >= 0) {
            err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
        }
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    *anchor_seq = seq;
    return deleted;
}

long dl_retain_file(sqlite3 *db, uint64_t seq, const char *hash, int64_t ts, off_t cut_bytes,
                    const struct dl_key *key, const char *reason, struct err *err)
{
    if (dl_ckpt_schema(db) != 0 || dl_index_schema(db) != 0 ||
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
        return -1;
    }
    long deleted = retain_upto(db, seq, hash, ts, key, reason, err);
    /* The index's mark follows the cut: past it, the same line cut_bytes earlier;
     * behind it, the first line of the cut file (which chains to the anchor). */
    sqlite3_stmt *st = NULL;
    if (deleted >= 0 &&
        (sqlite3_prepare_v2(db,
                            "UPDATE decision_log_index SET offset = CASE WHEN seq > ?1 THEN "
                            "offset - ?2 ELSE 0 END, hash = CASE WHEN seq > ?1 THEN hash ELSE "
                            "?3 END, seq = max(seq, ?1) WHERE id = 1",
                            -1, &st, NULL) != SQLITE_OK ||
         (sqlite3_bind_int64(st, 1, (sqlite3_int64)seq),
          sqlite3_bind_int64(st, 2, (sqlite3_int64)cut_bytes),
          sqlite3_bind_text(st, 3, hash, -1, SQLITE_STATIC), sqlite3_step(st) != SQLITE_DONE) ||
         sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
        deleted = -1;
    }
    sqlite3_finalize(st);
    if (deleted < 0) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    return deleted;
}

long decision_log_retain(const struct decision_log_conf *c, int64_t now_us_, struct err *err)
{
    sqlite3 *db = NULL;
    if (!c->retain_ms) {
        return 0;
    }
    /* Never under a running server: its writer appends to the file this rewrites (its
     * appends would go to the replaced file) and applies retain itself, hourly. */
    bool busy = false;
    int lock = dl_writer_lock(c->sqlite, 0, &busy);
    if (lock < 0) {
        err_set(err, ERR_IO,
                busy ? "a running server writes this decision log and applies "
                       "decision_log.retain itself every hour; run audit retain only while "
                       "it is stopped"
                     : "cannot create the decision log's lock file");
        return -1;
    }
    struct dl_key key = { 0 };
    if (c->ckpt_key && dl_key_load(c->ckpt_key, true, &key, err) != 0) {
        close(lock);
        return -1;
    }
    if (dl_db_open(c->sqlite, false, &db, err) != 0) {
        dl_key_free(&key);
        close(lock);
        return -1;
    }
    uint64_t anchor = 0;
    long n = dl_retain(db, now_us_ - (int64_t)c->retain_ms * 1000, 0, &anchor,
                       c->ckpt_key ? &key : NULL, "audit retain", err);
    sqlite3_close(db);
    dl_key_free(&key);
    if (n > 0 && c->file && dl_file_drop_before(c->file, anchor, err) != 0) {
        n = -1;
    }
    close(lock);
    return n;
}
