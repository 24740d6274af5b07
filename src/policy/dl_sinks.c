/* policy/dl_sinks.c - the decision log's two sinks: the SQLite table (schema,
 * rows bound and read back, the retention anchor and retention itself) and the
 * JSON-lines mirror (its tail after a crash, catching up with SQLite, dropping
 * lines retention removed). */
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

/* ---- SQLite ---- */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS decisions("
    " seq INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, request_id TEXT, route TEXT,"
    " decision TEXT, rule TEXT, reason TEXT, user TEXT, email TEXT, groups TEXT, claims TEXT,"
    " idp TEXT, session TEXT, device_present INTEGER, device_id TEXT, device_owner TEXT,"
    " device_trusted INTEGER, client_ip TEXT, method TEXT, host TEXT, path TEXT, shadow INTEGER,"
    " opa_called INTEGER, opa_result TEXT, opa_ms INTEGER, latency_us INTEGER,"
    " prev_hash TEXT NOT NULL, hash TEXT NOT NULL, kind TEXT, enforced TEXT, admin_action TEXT,"
    " admin_actor TEXT, admin_from TEXT, admin_target TEXT, node TEXT);"
    "CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts_us);"
    "CREATE TABLE IF NOT EXISTS decision_log_meta(key TEXT PRIMARY KEY, value TEXT);"
    /* Records handed over by command line tools (admin acts) for the writer to chain. */
    "CREATE TABLE IF NOT EXISTS decision_log_pending("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, ts_us INTEGER NOT NULL, request_id TEXT, route TEXT,"
    " decision TEXT, rule TEXT, reason TEXT, user TEXT, email TEXT, groups TEXT, claims TEXT,"
    " idp TEXT, session TEXT, device_present INTEGER, device_id TEXT, device_owner TEXT,"
    " device_trusted INTEGER, client_ip TEXT, method TEXT, host TEXT, path TEXT, shadow INTEGER,"
    " opa_called INTEGER, opa_result TEXT, opa_ms INTEGER, latency_us INTEGER, kind TEXT,"
    " enforced TEXT, admin_action TEXT, admin_actor TEXT, admin_from TEXT, admin_target TEXT,"
    " prev_hash TEXT, hash TEXT, node TEXT);";

/* Columns added by record formats 2 and 3, for databases created before them. */
#define ADD_COLUMN(c) "ALTER TABLE decisions ADD COLUMN " c " TEXT"
static const char *const added_columns[] = {
    ADD_COLUMN("kind"),         ADD_COLUMN("enforced"),
    ADD_COLUMN("admin_action"), ADD_COLUMN("admin_actor"),
    ADD_COLUMN("admin_from"),   ADD_COLUMN("admin_target"),
    ADD_COLUMN("node"),         "ALTER TABLE decision_log_pending ADD COLUMN node TEXT"
};
#undef ADD_COLUMN

/* 1 when table has column name. */
static int has_column(sqlite3 *db, const char *table, const char *name)
{
    sqlite3_stmt *st = NULL;
    int n = 1;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            n = sqlite3_column_int(st, 0);
        }
    }
    sqlite3_finalize(st);
    return n;
}

int dl_db_open(const char *path, bool readonly, sqlite3 **db, struct err *err)
{
    int flags = readonly ? SQLITE_OPEN_READONLY
                         : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, db, flags, NULL) != SQLITE_OK) {
        err_set(err, ERR_IO, "cannot open %s: %s", path, *db ? sqlite3_errmsg(*db) : "?");
        sqlite3_close(*db);
        *db = NULL;
        return ERR_IO;
    }
    sqlite3_busy_timeout(*db, 5000);
    if (!readonly) {
        char *msg = NULL;
        if (sqlite3_exec(*db, "PRAGMA journal_mode=WAL;", NULL, NULL, &msg) != SQLITE_OK ||
            sqlite3_exec(*db, schema, NULL, NULL, &msg) != SQLITE_OK) {
            err_set(err, ERR_IO, "%s: %s", path, msg ? msg : "schema");
            sqlite3_free(msg);
            sqlite3_close(*db);
            *db = NULL;
            return ERR_IO;
        }
        for (size_t i = 0; i < sizeof added_columns / sizeof added_columns[0]; i++) {
            /* fails once it exists */
            (void)sqlite3_exec(*db, added_columns[i], NULL, NULL, NULL);
        }
    } else if (!has_column(*db, "decisions", "kind")) {
        /* A database no writer has opened since format 2 (or 3): read it through a
         * temporary view with the new columns as NULL (format-1 records), without
         * writing to it. */
        (void)sqlite3_exec(*db,
                           "CREATE TEMP VIEW decisions AS SELECT *, NULL AS kind, NULL AS "
                           "enforced, NULL AS admin_action, NULL AS admin_actor, NULL AS "
                           "admin_from, NULL AS admin_target, NULL AS node FROM main.decisions",
                           NULL, NULL, NULL);
    } else if (!has_column(*db, "decisions", "node")) {
        (void)sqlite3_exec(*db,
                           "CREATE TEMP VIEW decisions AS SELECT *, NULL AS node FROM "
                           "main.decisions",
                           NULL, NULL, NULL);
    }
    return 0;
}

static const char *col_text(sqlite3_stmt *st, int i, struct arena *a)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? arena_strndup(a, (const char *)t, (size_t)sqlite3_column_bytes(st, i)) : NULL;
}

/* The text columns of DL_COLUMNS (after seq) and the record's fields they fill. */
#define TEXT_COL(n, field)                                                                         \
    {                                                                                              \
        n, offsetof(struct decision_record, field)                                                 \
    }
static const struct {
    int col;
    size_t off;
} text_cols[] = {
    TEXT_COL(2, request_id),    TEXT_COL(3, route),         TEXT_COL(4, decision),
    TEXT_COL(5, rule),          TEXT_COL(6, reason),        TEXT_COL(7, user),
    TEXT_COL(8, email),         TEXT_COL(11, idp),          TEXT_COL(12, session),
    TEXT_COL(14, device_id),    TEXT_COL(15, device_owner), TEXT_COL(17, client_ip),
    TEXT_COL(18, method),       TEXT_COL(19, host),         TEXT_COL(20, path),
    TEXT_COL(23, opa_result),   TEXT_COL(26, kind),         TEXT_COL(27, enforced),
    TEXT_COL(28, admin_action), TEXT_COL(29, admin_actor),  TEXT_COL(30, admin_from),
    TEXT_COL(31, admin_target), TEXT_COL(32, node),
};
#undef TEXT_COL

void dl_row_read(sqlite3_stmt *st, struct dl_row *row)
{
    struct arena *a = arena_new(0);
    struct decision_record *r = &row->rec;
    memset(row, 0, sizeof *row);
    row->a = a;
    row->seq = (uint64_t)sqlite3_column_int64(st, 0);
    r->ts_us = sqlite3_column_int64(st, 1);
    for (size_t i = 0; i < sizeof text_cols / sizeof text_cols[0]; i++) {
        *(const char **)(void *)((char *)r + text_cols[i].off) = col_text(st, text_cols[i].col, a);
    }
    const char *groups = col_text(st, 9, a), *claims = col_text(st, 10, a);
    r->device_present = sqlite3_column_int(st, 13) != 0;
    r->device_trusted = sqlite3_column_int(st, 16) != 0;
    r->shadow = sqlite3_column_int(st, 21) != 0;
    r->opa_called = sqlite3_column_int(st, 22) != 0;
    r->opa_ms = (uint32_t)sqlite3_column_int64(st, 24);
    r->latency_us = (uint64_t)sqlite3_column_int64(st, 25);
    row->prev_hash = (char *)col_text(st, 33, a);
    row->hash = (char *)col_text(st, 34, a);

    /* groups and claims are stored as the JSON the canonical form embeds. An edited,
     * unparsable value reads as something else, which the hash then rejects. */
    json_t *g = groups ? json_loads(groups, 0, NULL) : NULL;
    if (json_is_array(g)) {
        const char **gs = arena_zalloc(a, (json_array_size(g) + 1) * sizeof *gs);
        size_t i;
        json_t *v;
        json_array_foreach(g, i, v)
        {
            gs[r->ngroups++] = arena_strdup(a, json_is_string(v) ? json_string_value(v) : "?");
        }
        r->groups = gs;
    } else if (groups && strcmp(groups, "[]") != 0) {
        const char **gs = arena_zalloc(a, sizeof *gs);
        gs[0] = groups;
        r->groups = gs;
        r->ngroups = 1;
    }
    json_decref(g);
    json_t *c = claims ? json_loads(claims, 0, NULL) : NULL;
    if (json_is_object(c)) {
        size_t total = 0;
        const char *k;
        json_t *v;
        json_object_foreach(c, k, v)
        {
            total += json_is_array(v) ? json_array_size(v) : 1;
        }
        struct policy_kv *kv = arena_zalloc(a, (total + 1) * sizeof *kv);
        json_object_foreach(c, k, v)
        {
            struct str name = str_from(arena_strdup(a, k));
            if (json_is_array(v)) {
                size_t i;
                json_t *e;
                json_array_foreach(v, i, e)
                {
                    kv[r->nclaims].name = name;
                    kv[r->nclaims++].value =
                        str_from(arena_strdup(a, json_is_string(e) ? json_string_value(e) : "?"));
                }
            } else {
                kv[r->nclaims].name = name;
                kv[r->nclaims++].value =
                    str_from(arena_strdup(a, json_is_string(v) ? json_string_value(v) : "?"));
            }
        }
        r->claims = kv;
    }
    json_decref(c);
}

void dl_anchor_get(sqlite3 *db, uint64_t *seq, char hash[65])
{
    sqlite3_stmt *st = NULL;
    *seq = 0;
    snprintf(hash, 65, "%s", DL_GENESIS);
    if (sqlite3_prepare_v2(db,
                           "SELECT key, value FROM decision_log_meta WHERE key IN "
                           "('anchor_seq', 'anchor_hash')",
                           -1, &st, NULL) != SQLITE_OK) {
        return;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        const char *v = (const char *)sqlite3_column_text(st, 1);
        if (k && v && strcmp(k, "anchor_seq") == 0) {
            *seq = strtoull(v, NULL, 10);
        } else if (k && v && strcmp(k, "anchor_hash") == 0 && strlen(v) == 64) {
            snprintf(hash, 65, "%s", v);
        }
    }
    sqlite3_finalize(st);
}

/* ---- the JSON-lines mirror ---- */

/* *after gets the offset just past the last newline before end (0: none). */
static int last_newline(int fd, off_t end, off_t *after, struct err *err)
{
    char buf[65536];
    *after = 0;
    for (off_t pos = end; pos > 0;) {
        size_t n = (size_t)(pos > (off_t)sizeof buf ? (off_t)sizeof buf : pos);
        pos -= (off_t)n;
        if (pread(fd, buf, n, pos) != (ssize_t)n) {
            return err_set(err, ERR_IO, "read: %s", strerror(errno));
        }
        char *nl = memrchr(buf, '\n', n);
        if (nl) {
            *after = pos + (nl - buf) + 1;
            break;
        }
    }
    return 0;
}

/* Cuts a torn last line off fd (saying so when warn is set) and reads the last
 * complete line: *line (xmalloc'd, NUL-terminated, the newline included in *len)
 * starting at byte *start, or NULL when the file holds no complete line. *end gets
 * the file's size after the cut. */
static int last_line(int fd, bool warn, off_t *end, off_t *start, char **line, size_t *len,
                     struct err *err)
{
    struct stat sb;
    *line = NULL;
    *len = 0;
    *start = 0;
    if (fstat(fd, &sb) != 0) {
        return err_set(err, ERR_IO, "stat: %s", strerror(errno));
    }
    off_t good = 0;
    int rc = last_newline(fd, sb.st_size, &good, err);
    if (rc != 0) {
        return rc;
    }
    if (good != sb.st_size) {
        if (warn) {
            log_warn("decision_log",
                     "the decision log file ends with a torn line (%lld bytes "
                     "after the last complete record): cut off",
                     (long long)(sb.st_size - good));
        }
        if (ftruncate(fd, good) != 0) {
            return err_set(err, ERR_IO, "truncate: %s", strerror(errno));
        }
    }
    *end = good;
    if (good == 0) {
        return 0;
    }
    rc = last_newline(fd, good - 1, start, err);
    if (rc != 0) {
        return rc;
    }
    *len = (size_t)(good - *start);
    *line = xmalloc(*len + 1);
    if (pread(fd, *line, *len, *start) != (ssize_t)*len) {
        free(*line);
        *line = NULL;
        return err_set(err, ERR_IO, "read: %s", strerror(errno));
    }
    (*line)[*len] = '\0';
    return 0;
}

/* Cuts a torn last line and returns the seq of the last complete line (0 if none). */
static int file_tail(int fd, uint64_t *last_seq, struct err *err)
{
    off_t end, start;
    char *line;
    size_t len;
    *last_seq = 0;
    int rc = last_line(fd, false, &end, &start, &line, &len, err);
    if (rc != 0 || line == NULL) {
        return rc;
    }
    json_t *j = json_loads(line, 0, NULL);
    free(line);
    json_t *s = json_object_get(j, "seq");
    if (!json_is_integer(s)) {
        json_decref(j);
        return err_set(err, ERR_PARSE, "last line of the decision log file is not a record");
    }
    *last_seq = (uint64_t)json_integer_value(s);
    json_decref(j);
    return 0;
}

int dl_file_head(int fd, uint64_t *seq, char hash[65], off_t *end, struct err *err)
{
    off_t start;
    char *line;
    size_t len;
    *seq = 0;
    int rc = last_line(fd, true, end, &start, &line, &len, err);
    if (rc != 0 || line == NULL) {
        return rc;
    }
    struct dl_row row;
    bool parsed = dl_line_parse(line, len - 1, &row);
    free(line);
    if (!parsed || !row.hash || strlen(row.hash) != 64) {
        if (parsed) {
            dl_row_fini(&row);
        }
        return err_set(err, ERR_PARSE,
                       "the last line of the decision log file is not a record "
                       "(byte %lld): move the file aside or repair it",
                       (long long)start);
    }
    *seq = row.seq;
    memcpy(hash, row.hash, 65);
    dl_row_fini(&row);
    return 0;
}

/* ---- index: deferred: SQLite filled from the file ---- */

#define DL_INGEST_TXN   5000          /* lines per transaction */
#define DL_INGEST_CHUNK (1024 * 1024) /* bytes read at a time */

int dl_index_schema(sqlite3 *db)
{
    return sqlite3_exec(db,
                        "CREATE TABLE IF NOT EXISTS decision_log_index(id INTEGER PRIMARY "
                        "KEY CHECK(id = 1), offset INTEGER NOT NULL, seq INTEGER NOT NULL, "
                        "hash TEXT NOT NULL)",
                        NULL, NULL, NULL) == SQLITE_OK
               ? 0
               : ERR_IO;
}

static int ingest_mark(sqlite3 *db, int64_t off, uint64_t seq, const char *hash)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "INSERT OR REPLACE INTO decision_log_index(id, offset, seq, "
                                "hash) VALUES(1, ?1, ?2, ?3)",
                                -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, off);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
        sqlite3_bind_text(st, 3, hash, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : -1;
}

/* Where the index stands: the stored high-water mark, or (first ingest of a log)
 * the last indexed row, found by scanning the file from its start. */
static void ingest_from(sqlite3 *db, int64_t *off, uint64_t *seq, char hash[65])
{
    sqlite3_stmt *st = NULL;
    *off = -1;
    if (sqlite3_prepare_v2(db, "SELECT offset, seq, hash FROM decision_log_index WHERE id = 1", -1,
                           &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 2)) {
        *off = sqlite3_column_int64(st, 0);
        *seq = (uint64_t)sqlite3_column_int64(st, 1);
        snprintf(hash, 65, "%s", (const char *)sqlite3_column_text(st, 2));
    }
    sqlite3_finalize(st);
    if (*off >= 0) {
        return;
    }
    dl_anchor_get(db, seq, hash);
    if (sqlite3_prepare_v2(db, "SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 1)) {
        *seq = (uint64_t)sqlite3_column_int64(st, 0);
        snprintf(hash, 65, "%s", (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_finalize(st);
}

/* Lines parsed but not yet inserted: DL_MULTI go in one statement. Their strings
 * point into the read buffer and the batch arena, both kept until the rows are in. */
struct ingest_batch {
    sqlite3_stmt *one, *multi;
    struct arena *a;
    struct sbuf tmp;
    size_t n;
    struct {
        struct dl_row row; /* row.a set: parsed by dl_line_parse, to free */
        const char *groups, *claims;
        size_t glen, clen;
    } r[DL_MULTI];
};

/* A line's groups and claims JSON as dl_bind_row would bind them: the line's own
 * bytes when they are the writer's, else encoded again (into the arena). */
static int ingest_json(struct ingest_batch *b, size_t i, const struct dl_line_json *js)
{
    const struct decision_record *r = &b->r[i].row.rec;
    if (js && js->canonical) {
        b->r[i].groups = js->groups;
        b->r[i].glen = js->glen;
        b->r[i].claims = js->claims;
        b->r[i].clen = js->clen;
        return 0;
    }
    b->tmp.len = 0;
    dl_groups_json(&b->tmp, r);
    b->r[i].glen = b->tmp.len;
    dl_claims_json(&b->tmp, r);
    b->r[i].clen = b->tmp.len - b->r[i].glen;
    char *copy = arena_alloc(b->a, b->tmp.len + 1);
    if (!copy) {
        return -1;
    }
    memcpy(copy, b->tmp.p, b->tmp.len + 1);
    b->r[i].groups = copy;
    b->r[i].claims = copy + b->r[i].glen;
    return 0;
}

/* Inserts the batch's rows (one statement for DL_MULTI, else one each), frees
 * them and resets the arena. keep false: only frees (the transaction rolls back). */
static int ingest_flush(struct ingest_batch *b, bool keep)
{
    int rc = 0;
    if (keep && b->n == DL_MULTI && b->multi) {
        for (size_t i = 0; i < b->n; i++) {
            const struct dl_row *w = &b->r[i].row;
            dl_bind_rec(b->multi, (int)i * DL_ROW_PARAMS, &w->rec, w->seq, w->prev_hash, w->hash,
                        b->r[i].groups, b->r[i].glen, b->r[i].claims, b->r[i].clen);
        }
        rc = sqlite3_step(b->multi) == SQLITE_DONE ? 0 : ERR_IO;
        sqlite3_reset(b->multi);
    } else if (keep) {
        for (size_t i = 0; i < b->n && rc == 0; i++) {
            const struct dl_row *w = &b->r[i].row;
            rc = dl_bind_row_json(b->one, &w->rec, w->seq, w->prev_hash, w->hash, b->r[i].groups,
                                  b->r[i].glen, b->r[i].claims, b->r[i].clen);
        }
    }
    for (size_t i = 0; i < b->n; i++) {
        if (b->r[i].row.a) {
            dl_row_fini(&b->r[i].row);
        }
    }
    b->n = 0;
    arena_reset(b->a);
    return rc;
}

int dl_ingest(const struct decision_log_conf *c, uint64_t *added, struct err *err)
{
    sqlite3 *db = NULL;
    if (added) {
        *added = 0;
    }
    if (!c->deferred || !c->file) {
        return 0;
    }
    int fd = open(c->file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno == ENOENT ? 0 : err_set(err, ERR_IO, "%s: %s", c->file, strerror(errno));
    }
    if (dl_db_open(c->sqlite, false, &db, err) != 0) {
        close(fd);
        return ERR_IO;
    }
    sqlite3_busy_timeout(db, 10000);
    /* The index can always be rebuilt from the file: a commit lost to a power cut is
     * ingested again by the next reader (the mark moves with the rows). */
    (void)sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    int rc = dl_index_schema(db);
    static const char sql[] =
        "INSERT INTO decisions(seq, " DL_COLUMNS ", prev_hash, hash) " DL_VALUES;
    struct ingest_batch *b = xcalloc(1, sizeof *b);
    if (rc == 0 && sqlite3_prepare_v2(db, sql, -1, &b->one, NULL) != SQLITE_OK) {
        rc = ERR_IO;
    }
    if (rc == 0) {
        /* DL_MULTI rows per statement, as the writer inserts them. */
        struct sbuf m = { 0 };
        dl_sbuf_puts(&m, "INSERT INTO decisions(seq, " DL_COLUMNS ", prev_hash, hash) VALUES");
        for (int r = 0; r < DL_MULTI; r++) {
            dl_sbuf_puts(&m, r ? ",(" : "(");
            for (int k = 0; k < DL_ROW_PARAMS; k++) {
                dl_sbuf_puts(&m, k ? ",?" : "?");
            }
            dl_sbuf_puts(&m, ")");
        }
        if (sqlite3_prepare_v2(db, m.p, (int)m.len, &b->multi, NULL) != SQLITE_OK) {
            rc = ERR_IO;
        }
        dl_sbuf_free(&m);
    }
    if (rc != 0) {
        err_set(err, ERR_IO, "%s: %s", c->sqlite, sqlite3_errmsg(db));
    }
    b->a = arena_new(0);
    struct dl_fast *fast = dl_fast_new();
    /* Up to the size the file has now: a writer appending faster than lines are indexed
     * is not chased (the next reader takes the rest). */
    struct stat sb;
    int64_t limit = fstat(fd, &sb) == 0 ? (int64_t)sb.st_size : 0;
    char *buf = rc == 0 ? xmalloc(DL_INGEST_CHUNK) : NULL;
    bool more = rc == 0;
    while (more && rc == 0) {
        /* One transaction per DL_INGEST_TXN lines; the mark moves with the rows. Two
         * readers ingesting at once take turns (BEGIN IMMEDIATE) and the second finds
         * the mark already moved. */
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
            rc = err_set(err, ERR_IO, "%s: %s", c->sqlite, sqlite3_errmsg(db));
            break;
        }
        int64_t off;
        uint64_t seq;
        char hash[65];
        ingest_from(db, &off, &seq, hash);
        bool scan = off < 0; /* no mark yet: skip what is already indexed */
        if (off < 0) {
            off = 0;
        }
        size_t lines = 0;
        more = false;
        for (;;) {
            size_t want = limit - off < DL_INGEST_CHUNK ? (size_t)(limit > off ? limit - off : 0)
                                                        : DL_INGEST_CHUNK;
            ssize_t got = want ? pread(fd, buf, want, off) : 0;
            if (got < 0) {
                rc = err_set(err, ERR_IO, "%s: %s", c->file, strerror(errno));
                break;
            }
            size_t pos = 0;
            const char *nl;
            while (rc == 0 && lines < DL_INGEST_TXN &&
                   (nl = memchr(buf + pos, '\n', (size_t)got - pos)) != NULL) {
                size_t len = (size_t)(nl - (buf + pos));
                struct dl_line_json js;
                struct dl_row *row = &b->r[b->n].row;
                /* The writer's own lines in one pass; anything else through jansson. */
                bool fast_ok = dl_line_parse_fast(buf + pos, len, row, b->a, &js, fast);
                if (!fast_ok &&
                    (!dl_line_parse(buf + pos, len, row) || !row->hash || !row->prev_hash)) {
                    rc = err_set(err, ERR_PARSE,
                                 "%s: byte %lld is not a decision record (run "
                                 "audit verify)",
                                 c->file, (long long)(off + (int64_t)pos));
                    break;
                }
                bool keep = false;
                if (scan && row->seq <= seq) {
                    if (row->seq == seq && strcmp(row->hash, hash) != 0) {
                        rc = err_set(err, ERR_PARSE,
                                     "%s: record %llu differs from the index "
                                     "(run audit verify)",
                                     c->file, (unsigned long long)seq);
                    }
                } else if (row->seq != seq + 1 || strcmp(row->prev_hash, hash) != 0) {
                    rc = err_set(err, ERR_PARSE,
                                 "%s: the record at byte %lld (record %llu) does "
                                 "not continue the index at record %llu: the file "
                                 "was edited or rewritten (run audit verify)",
                                 c->file, (long long)(off + (int64_t)pos),
                                 (unsigned long long)row->seq, (unsigned long long)seq + 1);
                } else if (ingest_json(b, b->n, fast_ok ? &js : NULL) != 0) {
                    rc = err_set(err, ERR_IO, "%s: out of memory", c->file);
                } else {
                    seq = row->seq;
                    memcpy(hash, row->hash, 64);
                    hash[64] = '\0';
                    lines++;
                    keep = true;
                }
                if (keep) {
                    b->n++;
                } else if (row->a) {
                    dl_row_fini(row);
                }
                if (rc == 0 && b->n == DL_MULTI && ingest_flush(b, true) != 0) {
                    rc = err_set(err, ERR_IO, "%s: %s", c->sqlite, sqlite3_errmsg(db));
                }
                pos += len + 1;
            }
            /* The rows point into buf: in before it is read again. */
            if (ingest_flush(b, rc == 0) != 0 && rc == 0) {
                rc = err_set(err, ERR_IO, "%s: %s", c->sqlite, sqlite3_errmsg(db));
            }
            off += (int64_t)pos;
            if (rc != 0 || lines >= DL_INGEST_TXN) {
                more = rc == 0;
                break;
            }
            if (pos == 0) {
                if ((size_t)got == DL_INGEST_CHUNK && off + got < limit) {
                    rc = err_set(err, ERR_PARSE, "%s: a line longer than %d bytes at byte %lld",
                                 c->file, DL_INGEST_CHUNK, (long long)off);
                }
                break; /* the end, or a line still being written */
            }
        }
        if (rc == 0 && ingest_mark(db, off, seq, hash) != 0) {
            rc = err_set(err, ERR_IO, "%s: %s", c->sqlite, sqlite3_errmsg(db));
        }
        if (rc == 0 && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            rc = err_set(err, ERR_IO, "%s: %s", c->sqlite, sqlite3_errmsg(db));
        }
        if (rc != 0) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        } else if (added) {
            *added += lines;
        }
    }
    ingest_flush(b, false);
    dl_sbuf_free(&b->tmp);
    arena_free(b->a);
    dl_fast_free(fast);
    free(buf);
    sqlite3_finalize(b->one);
    sqlite3_finalize(b->multi);
    free(b);
    sqlite3_close(db);
    close(fd);
    return rc;
}

int dl_write_all_at(int fd, const char *p, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t w = off < 0 ? write(fd, p, n) : pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += off < 0 ? 0 : w;
    }
    return 0;
}

int dl_write_all(int fd, const char *p, size_t n)
{
    return dl_write_all_at(fd, p, n, -1);
}

/* Appends to the file every SQLite record after its last line. */
int dl_file_catch_up(sqlite3 *db, int fd, struct err *err)
{
    uint64_t last, db_last = 0;
    int rc = file_tail(fd, &last, err);
    if (rc) {
        return rc;
    }
    sqlite3_stmt *mx = NULL;
    if (sqlite3_prepare_v2(db, "SELECT max(seq) FROM decisions", -1, &mx, NULL) == SQLITE_OK &&
        sqlite3_step(mx) == SQLITE_ROW) {
        db_last = (uint64_t)sqlite3_column_int64(mx, 0);
    }
    sqlite3_finalize(mx);
    if (db_last > 0 && last > db_last) {
        /* SQLite lost commits the file still has (e.g. power loss in batch mode). Writing
         * on would give two records the same seq: stop and let an operator decide. */
        return err_set(err, ERR_IO,
                       "the decision log file has records %llu..%llu that SQLite "
                       "does not: restore the database or move the file aside",
                       (unsigned long long)db_last + 1, (unsigned long long)last);
    }
    static const char sql[] = "SELECT seq, " DL_COLUMNS ", prev_hash, hash FROM decisions "
                              "WHERE seq > ? ORDER BY seq";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        return err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
    }
    sqlite3_bind_int64(st, 1, (sqlite3_int64)last);
    struct sbuf b = { 0 };
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct dl_row row;
        dl_row_read(st, &row);
        dl_canonical(&row.rec, row.seq, row.prev_hash ? row.prev_hash : DL_GENESIS, &b);
        dl_sbuf_printf(&b, ",\"hash\":\"%s\"}\n", row.hash ? row.hash : "");
        dl_row_fini(&row);
        if (dl_write_all(fd, b.p, b.len) != 0) {
            dl_sbuf_free(&b);
            sqlite3_finalize(st);
            return err_set(err, ERR_IO, "write: %s", strerror(errno));
        }
    }
    dl_sbuf_free(&b);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
    }
    return 0;
}

/* SQLITE_STATIC: every string outlives the step (the batch's records, the
 * caller's buffers), so SQLite reads it in place instead of copying it. */
static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

static int bind_textn(sqlite3_stmt *st, int i, const char *s, size_t n)
{
    return sqlite3_bind_text(st, i, s, (int)n, SQLITE_STATIC);
}

/* Binds a record to parameters base+1..base+35 of an INSERT of (seq or id,
 * DL_COLUMNS, prev_hash, hash); seq 0 binds NULL (the pending table's own id).
 * groups and claims: their JSON, as the canonical bytes hold it. */
void dl_bind_rec(sqlite3_stmt *st, int base, const struct decision_record *r, uint64_t seq,
                 const char *prev, const char *hash, const char *groups, size_t glen,
                 const char *claims, size_t clen)
{
    if (seq) {
        sqlite3_bind_int64(st, base + 1, (sqlite3_int64)seq);
    } else {
        sqlite3_bind_null(st, base + 1);
    }
    sqlite3_bind_int64(st, base + 2, r->ts_us);
    bind_text(st, base + 3, r->request_id);
    bind_text(st, base + 4, r->route);
    bind_text(st, base + 5, r->decision);
    bind_text(st, base + 6, r->rule);
    bind_text(st, base + 7, r->reason);
    bind_text(st, base + 8, r->user);
    bind_text(st, base + 9, r->email);
    bind_textn(st, base + 10, groups, glen);
    bind_textn(st, base + 11, claims, clen);
    bind_text(st, base + 12, r->idp);
    bind_text(st, base + 13, r->session);
    sqlite3_bind_int(st, base + 14, r->device_present);
    bind_text(st, base + 15, r->device_id);
    bind_text(st, base + 16, r->device_owner);
    sqlite3_bind_int(st, base + 17, r->device_trusted);
    bind_text(st, base + 18, r->client_ip);
    bind_text(st, base + 19, r->method);
    bind_text(st, base + 20, r->host);
    bind_text(st, base + 21, r->path);
    sqlite3_bind_int(st, base + 22, r->shadow);
    sqlite3_bind_int(st, base + 23, r->opa_called);
    bind_text(st, base + 24, r->opa_result);
    sqlite3_bind_int64(st, base + 25, r->opa_ms);
    sqlite3_bind_int64(st, base + 26, (sqlite3_int64)r->latency_us);
    bind_text(st, base + 27, r->kind);
    bind_text(st, base + 28, r->enforced);
    bind_text(st, base + 29, r->admin_action);
    bind_text(st, base + 30, r->admin_actor);
    bind_text(st, base + 31, r->admin_from);
    bind_text(st, base + 32, r->admin_target);
    bind_text(st, base + 33, r->node);
    /* prev and hash may be slices of a line: 64 characters, no NUL after them. */
    if (prev) {
        bind_textn(st, base + 34, prev, strnlen(prev, 64));
    } else {
        sqlite3_bind_null(st, base + 34);
    }
    if (hash) {
        bind_textn(st, base + 35, hash, strnlen(hash, 64));
    } else {
        sqlite3_bind_null(st, base + 35);
    }
}

/* dl_bind_rec as the only row of st, then steps it. */
int dl_bind_row_json(sqlite3_stmt *st, const struct decision_record *r, uint64_t seq,
                     const char *prev, const char *hash, const char *groups, size_t glen,
                     const char *claims, size_t clen)
{
    dl_bind_rec(st, 0, r, seq, prev, hash, groups, glen, claims, clen);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_IO;
    /* Every parameter is bound again before the next step: the pointers left
     * behind (SQLITE_STATIC) are never read. */
    sqlite3_reset(st);
    return rc;
}

int dl_bind_row(sqlite3_stmt *st, const struct decision_record *r, uint64_t seq, const char *prev,
                const char *hash, struct sbuf tmp[2])
{
    tmp[0].len = 0;
    dl_groups_json(&tmp[0], r);
    tmp[1].len = 0;
    dl_claims_json(&tmp[1], r);
    return dl_bind_row_json(st, r, seq, prev, hash, tmp[0].p, tmp[0].len, tmp[1].p, tmp[1].len);
}
