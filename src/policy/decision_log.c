/* policy/decision_log.c - the tamper-evident decision log. Workers queue a copy of
 * each record (never blocking, bounded: past the bound the caller answers 503); one
 * writer thread chains them (hash = SHA-256 over the previous hash and the record's
 * canonical bytes), commits each batch to SQLite in one transaction, then mirrors the
 * lines to the JSON-lines file. SQLite is the source of truth: after a crash the file
 * is cut back to its last complete line and refilled from SQLite.
 * Over 1,200 lines: the queue, the writer thread, the chain and both sinks share
 * the writer's state; the store interface for other databases is being drawn
 * inside this file (checkpoints, verification and syslog are already apart).
 */
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

#include "decision_log_int.h"
#include "core/digest.h"

#define DL_BATCH_MAX 1024
#define DL_GATHER_NS (5 * 1000 * 1000) /* batch mode: wait 5 ms for more records */
#define DL_RETAIN_EVERY_US (3600LL * 1000000)
#define DL_RETAIN_CHUNK 5000

static uint64_t file_first_seq(int fd);
static int file_drop_before(const char *file, uint64_t keep_after, struct err *err);

/* ---- small string builder ---- */

void dl_sbuf_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2 < 256 ? 256 : (b->len + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void dl_sbuf_puts(struct sbuf *b, const char *s)
{
    dl_sbuf_put(b, s, strlen(s));
}

void dl_sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof tmp) {
        dl_sbuf_put(b, tmp, (size_t)n);
        return;
    }
    char *big = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    dl_sbuf_put(b, big, (size_t)n);
    free(big);
}

void dl_sbuf_free(struct sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* JSON string (or null for NULL). Bytes >= 0x80 pass through: the input is UTF-8 or
 * is recorded as given; control characters are escaped so a line stays one line. */
static void json_str(struct sbuf *b, const char *s)
{
    if (!s) {
        dl_sbuf_put(b, "null", 4);
        return;
    }
    dl_sbuf_put(b, "\"", 1);
    const unsigned char *c = (const unsigned char *)s, *run = c;
    for (; *c; c++) {
        if (*c != '"' && *c != '\\' && *c >= 0x20 && *c != 0x7f) {
            continue;
        }
        dl_sbuf_put(b, (const char *)run, (size_t)(c - run));
        if (*c == '"' || *c == '\\') {
            char e[2] = { '\\', (char)*c };
            dl_sbuf_put(b, e, 2);
        } else {
            dl_sbuf_printf(b, "\\u%04x", *c);
        }
        run = c + 1;
    }
    dl_sbuf_put(b, (const char *)run, (size_t)(c - run));
    dl_sbuf_put(b, "\"", 1);
}

/* key is a literal without characters to escape. */
static void json_kv_str(struct sbuf *b, const char *key, const char *v)
{
    dl_sbuf_put(b, ",\"", 2);
    dl_sbuf_puts(b, key);
    dl_sbuf_put(b, "\":", 2);
    json_str(b, v);
}

static void put_u64(struct sbuf *b, uint64_t v)
{
    char tmp[STR_U64_MAX];
    struct str d = str_u64(tmp, v);
    dl_sbuf_put(b, d.p, d.len);
}

static void groups_json(struct sbuf *b, const struct decision_record *r)
{
    dl_sbuf_put(b, "[", 1);
    for (size_t i = 0; i < r->ngroups; i++) {
        if (i) {
            dl_sbuf_put(b, ",", 1);
        }
        json_str(b, r->groups[i]);
    }
    dl_sbuf_put(b, "]", 1);
}

static char *kv_dup(const struct str s)
{
    return xstrndup(s.p ? s.p : "", s.len);
}

/* {"name": "v"} or {"name": ["v1", "v2"]} for repeated names, in first-seen order. */
static void claims_json(struct sbuf *b, const struct decision_record *r)
{
    dl_sbuf_put(b, "{", 1);
    bool first = true;
    for (size_t i = 0; i < r->nclaims; i++) {
        bool seen = false;
        size_t count = 0;
        for (size_t j = 0; j < i && !seen; j++) {
            seen = str_eq(r->claims[j].name, r->claims[i].name);
        }
        if (seen) {
            continue;
        }
        for (size_t j = i; j < r->nclaims; j++) {
            count += str_eq(r->claims[j].name, r->claims[i].name);
        }
        char *name = kv_dup(r->claims[i].name);
        if (!first) {
            dl_sbuf_put(b, ",", 1);
        }
        first = false;
        json_str(b, name);
        free(name);
        dl_sbuf_put(b, ":", 1);
        if (count > 1) {
            dl_sbuf_put(b, "[", 1);
        }
        size_t k = 0;
        for (size_t j = i; j < r->nclaims; j++) {
            if (str_eq(r->claims[j].name, r->claims[i].name)) {
                char *v = kv_dup(r->claims[j].value);
                if (k++) {
                    dl_sbuf_put(b, ",", 1);
                }
                json_str(b, v);
                free(v);
            }
        }
        if (count > 1) {
            dl_sbuf_put(b, "]", 1);
        }
    }
    dl_sbuf_put(b, "}", 1);
}

static void format_ts(int64_t ts_us, char out[64])
{
    /* Records come thousands a second: the date and time of day are spelled
     * once per second (per thread), the microseconds every time. */
    static __thread int64_t last_s = -1;
    static __thread char prefix[64];
    if (ts_us < 0) {
        ts_us = 0;
    }
    int64_t sec = ts_us / 1000000;
    if (sec != last_s) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        snprintf(prefix, sizeof prefix, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        last_s = sec;
    }
    size_t n = strlen(prefix);
    unsigned us = (unsigned)(ts_us % 1000000);
    memcpy(out, prefix, n);
    for (int i = 5; i >= 0; i--) {
        out[n + (size_t)i] = (char)('0' + us % 10);
        us /= 10;
    }
    out[n + 6] = 'Z';
    out[n + 7] = '\0';
}

void dl_format_ts(int64_t ts_us, char out[64])
{
    format_ts(ts_us, out);
}

void dl_canonical(const struct decision_record *r, uint64_t seq, const char *prev_hash,
                  struct sbuf *b)
{
    char ts[64];
    format_ts(r->ts_us, ts);
    b->len = 0;
    /* Format 2 adds kind, enforced and admin; a format-1 row (kind NULL) keeps its
     * original bytes so that older records still verify. */
    dl_sbuf_puts(b, r->kind ? "{\"v\":2,\"seq\":" : "{\"v\":1,\"seq\":");
    put_u64(b, seq);
    dl_sbuf_puts(b, ",\"ts\":\"");
    dl_sbuf_puts(b, ts);
    dl_sbuf_put(b, "\"", 1);
    if (r->kind) {
        json_kv_str(b, "kind", r->kind);
    }
    json_kv_str(b, "request_id", r->request_id);
    json_kv_str(b, "route", r->route);
    json_kv_str(b, "decision", r->decision);
    json_kv_str(b, "rule", r->rule);
    json_kv_str(b, "reason", r->reason);
    json_kv_str(b, "user", r->user);
    json_kv_str(b, "email", r->email);
    dl_sbuf_puts(b, ",\"groups\":");
    groups_json(b, r);
    dl_sbuf_puts(b, ",\"claims\":");
    claims_json(b, r);
    json_kv_str(b, "idp", r->idp);
    json_kv_str(b, "session", r->session);
    dl_sbuf_puts(b, r->device_present ? ",\"device\":{\"present\":true"
                                      : ",\"device\":{\"present\":false");
    json_kv_str(b, "id", r->device_id);
    json_kv_str(b, "owner", r->device_owner);
    dl_sbuf_puts(b, r->device_trusted ? ",\"trusted\":true}" : ",\"trusted\":false}");
    json_kv_str(b, "client_ip", r->client_ip);
    json_kv_str(b, "method", r->method);
    json_kv_str(b, "host", r->host);
    json_kv_str(b, "path", r->path);
    dl_sbuf_puts(b, r->shadow ? ",\"shadow\":true" : ",\"shadow\":false");
    if (r->kind) {
        json_kv_str(b, "enforced", r->enforced);
    }
    dl_sbuf_puts(b, r->opa_called ? ",\"opa\":{\"called\":true,\"result\":"
                                  : ",\"opa\":{\"called\":false,\"result\":");
    json_str(b, r->opa_result);
    dl_sbuf_puts(b, ",\"ms\":");
    put_u64(b, r->opa_ms);
    dl_sbuf_puts(b, "},\"latency_us\":");
    put_u64(b, r->latency_us);
    if (r->kind && !r->admin_action && !r->admin_actor && !r->admin_from && !r->admin_target) {
        dl_sbuf_puts(b, ",\"admin\":null");
    } else if (r->kind) {
        dl_sbuf_puts(b, ",\"admin\":{\"action\":");
        json_str(b, r->admin_action);
        json_kv_str(b, "actor", r->admin_actor);
        json_kv_str(b, "from", r->admin_from);
        json_kv_str(b, "target", r->admin_target);
        dl_sbuf_put(b, "}", 1);
    }
    dl_sbuf_puts(b, ",\"prev_hash\":\"");
    dl_sbuf_put(b, prev_hash, strlen(prev_hash));
    dl_sbuf_put(b, "\"", 1);
}

void dl_hash(const char *prev_hash, const char *canon, size_t len, char out[65])
{
    unsigned char md[32];
    const void *parts[] = { prev_hash, canon, "}" };
    const size_t lens[] = { 64, len, 1 };
    digest_sha256(parts, lens, 3, md);
    str_hex(md, 32, out);
}

/* ---- a record line read back (the spool) ---- */

static int digits(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* "2026-03-10T09:30:00.123456Z", as format_ts writes it. */
static bool parse_ts(const char *s, int64_t *out)
{
    if (strlen(s) != 27 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':' || s[19] != '.' || s[26] != 'Z') {
        return false;
    }
    struct tm tm = { 0 };
    int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2), h = digits(s + 11, 2),
        mi = digits(s + 14, 2), se = digits(s + 17, 2), us = digits(s + 20, 6);
    if (y < 0 || mo < 1 || d < 1 || h < 0 || mi < 0 || se < 0 || us < 0) {
        return false;
    }
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    *out = (int64_t)timegm(&tm) * 1000000 + us;
    return true;
}

static const char *jstr(json_t *o, const char *key, struct arena *a)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? arena_strndup(a, json_string_value(v), json_string_length(v))
                              : NULL;
}

bool dl_parse_ts(const char *s, int64_t *out_us)
{
    return parse_ts(s, out_us);
}

/* Parses a record line (as the file and the spool hold them) into row. The caller
 * checks the result by recomputing the hash: a line that does not round-trip to the
 * same canonical bytes is refused. */
bool dl_line_parse(const char *line, size_t len, struct dl_row *row)
{
    memset(row, 0, sizeof *row);
    json_t *o = json_loadb(line, len, 0, NULL);
    json_t *seq = json_object_get(o, "seq"), *ts = json_object_get(o, "ts");
    json_t *dev = json_object_get(o, "device"), *opa = json_object_get(o, "opa");
    json_t *g = json_object_get(o, "groups"), *c = json_object_get(o, "claims");
    if (!json_is_object(o) || !json_is_integer(seq) || json_integer_value(seq) < 1 ||
        !json_is_string(ts) || !json_is_object(dev) || !json_is_object(opa) ||
        !json_is_array(g) || !json_is_object(c)) {
        json_decref(o);
        return false;
    }
    struct arena *a = arena_new(0);
    struct decision_record *r = &row->rec;
    row->a = a;
    row->seq = (uint64_t)json_integer_value(seq);
    bool ok = parse_ts(json_string_value(ts), &r->ts_us);
    r->request_id = jstr(o, "request_id", a);
    r->route = jstr(o, "route", a);
    r->decision = jstr(o, "decision", a);
    r->rule = jstr(o, "rule", a);
    r->reason = jstr(o, "reason", a);
    r->user = jstr(o, "user", a);
    r->email = jstr(o, "email", a);
    r->idp = jstr(o, "idp", a);
    r->session = jstr(o, "session", a);
    r->device_present = json_is_true(json_object_get(dev, "present"));
    r->device_id = jstr(dev, "id", a);
    r->device_owner = jstr(dev, "owner", a);
    r->device_trusted = json_is_true(json_object_get(dev, "trusted"));
    r->client_ip = jstr(o, "client_ip", a);
    r->method = jstr(o, "method", a);
    r->host = jstr(o, "host", a);
    r->path = jstr(o, "path", a);
    r->shadow = json_is_true(json_object_get(o, "shadow"));
    /* Format 2: kind, enforced, admin (a format-1 line has no kind). */
    r->kind = jstr(o, "kind", a);
    r->enforced = jstr(o, "enforced", a);
    json_t *adm = json_object_get(o, "admin");
    if (json_is_object(adm)) {
        r->admin_action = jstr(adm, "action", a);
        r->admin_actor = jstr(adm, "actor", a);
        r->admin_from = jstr(adm, "from", a);
        r->admin_target = jstr(adm, "target", a);
    }
    r->opa_called = json_is_true(json_object_get(opa, "called"));
    r->opa_result = jstr(opa, "result", a);
    json_t *ms = json_object_get(opa, "ms"), *lat = json_object_get(o, "latency_us");
    r->opa_ms = json_is_integer(ms) ? (uint32_t)json_integer_value(ms) : 0;
    r->latency_us = json_is_integer(lat) ? (uint64_t)json_integer_value(lat) : 0;
    row->prev_hash = (char *)jstr(o, "prev_hash", a);
    row->hash = (char *)jstr(o, "hash", a);
    const char **gs = arena_zalloc(a, (json_array_size(g) + 1) * sizeof *gs);
    size_t i;
    json_t *v;
    json_array_foreach(g, i, v)
    {
        gs[r->ngroups++] = json_is_string(v) ? arena_strdup(a, json_string_value(v)) : "";
    }
    r->groups = gs;
    size_t total = 0;
    const char *k;
    json_object_foreach(c, k, v)
    {
        total += json_is_array(v) ? json_array_size(v) : 1;
    }
    struct policy_kv *kv = arena_zalloc(a, (total + 1) * sizeof *kv);
    json_object_foreach(c, k, v)
    {
        const char *name = arena_strdup(a, k);
        if (json_is_array(v)) {
            json_t *e;
            json_array_foreach(v, i, e)
            {
                const char *val = json_is_string(e) ? arena_strdup(a, json_string_value(e)) : "";
                kv[r->nclaims++] = (struct policy_kv){ str_from(name), str_from(val) };
            }
        } else {
            const char *val = json_is_string(v) ? arena_strdup(a, json_string_value(v)) : "";
            kv[r->nclaims++] = (struct policy_kv){ str_from(name), str_from(val) };
        }
    }
    r->claims = kv;
    json_decref(o);
    ok = ok && row->prev_hash && strlen(row->prev_hash) == 64 && row->hash &&
         strlen(row->hash) == 64;
    if (!ok) {
        dl_row_fini(row);
    }
    return ok;
}

/* ---- SQLite ---- */

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS decisions("
    " seq INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, request_id TEXT, route TEXT,"
    " decision TEXT, rule TEXT, reason TEXT, user TEXT, email TEXT, groups TEXT, claims TEXT,"
    " idp TEXT, session TEXT, device_present INTEGER, device_id TEXT, device_owner TEXT,"
    " device_trusted INTEGER, client_ip TEXT, method TEXT, host TEXT, path TEXT, shadow INTEGER,"
    " opa_called INTEGER, opa_result TEXT, opa_ms INTEGER, latency_us INTEGER,"
    " prev_hash TEXT NOT NULL, hash TEXT NOT NULL, kind TEXT, enforced TEXT, admin_action TEXT,"
    " admin_actor TEXT, admin_from TEXT, admin_target TEXT);"
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
    " prev_hash TEXT, hash TEXT);";

/* Columns added by record format 2, for databases created before it. */
#define ADD_COLUMN(c) "ALTER TABLE decisions ADD COLUMN " c " TEXT"
static const char *const v2_columns[] = { ADD_COLUMN("kind"),         ADD_COLUMN("enforced"),
                                          ADD_COLUMN("admin_action"), ADD_COLUMN("admin_actor"),
                                          ADD_COLUMN("admin_from"),   ADD_COLUMN("admin_target") };
#undef ADD_COLUMN

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
        for (size_t i = 0; i < sizeof v2_columns / sizeof v2_columns[0]; i++) {
            /* fails once it exists */
            (void)sqlite3_exec(*db, v2_columns[i], NULL, NULL, NULL);
        }
    } else {
        /* A database no writer has opened since format 2: read it through a temporary
         * view with the new columns as NULL (format-1 records), without writing to it. */
        sqlite3_stmt *st = NULL;
        bool old = false;
        if (sqlite3_prepare_v2(*db, "SELECT count(*) FROM pragma_table_info('decisions') "
                                    "WHERE name = 'kind'", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW) {
            old = sqlite3_column_int(st, 0) == 0;
        }
        sqlite3_finalize(st);
        if (old) {
            (void)sqlite3_exec(*db, "CREATE TEMP VIEW decisions AS SELECT *, NULL AS kind, NULL AS "
                                    "enforced, NULL AS admin_action, NULL AS admin_actor, NULL AS "
                                    "admin_from, NULL AS admin_target FROM main.decisions",
                               NULL, NULL, NULL);
        }
    }
    return 0;
}

static const char *col_text(sqlite3_stmt *st, int i, struct arena *a)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? arena_strndup(a, (const char *)t, (size_t)sqlite3_column_bytes(st, i)) : NULL;
}

void dl_row_read(sqlite3_stmt *st, struct dl_row *row)
{
    struct arena *a = arena_new(0);
    struct decision_record *r = &row->rec;
    memset(row, 0, sizeof *row);
    row->a = a;
    row->seq = (uint64_t)sqlite3_column_int64(st, 0);
    r->ts_us = sqlite3_column_int64(st, 1);
    r->request_id = col_text(st, 2, a);
    r->route = col_text(st, 3, a);
    r->decision = col_text(st, 4, a);
    r->rule = col_text(st, 5, a);
    r->reason = col_text(st, 6, a);
    r->user = col_text(st, 7, a);
    r->email = col_text(st, 8, a);
    const char *groups = col_text(st, 9, a), *claims = col_text(st, 10, a);
    r->idp = col_text(st, 11, a);
    r->session = col_text(st, 12, a);
    r->device_present = sqlite3_column_int(st, 13) != 0;
    r->device_id = col_text(st, 14, a);
    r->device_owner = col_text(st, 15, a);
    r->device_trusted = sqlite3_column_int(st, 16) != 0;
    r->client_ip = col_text(st, 17, a);
    r->method = col_text(st, 18, a);
    r->host = col_text(st, 19, a);
    r->path = col_text(st, 20, a);
    r->shadow = sqlite3_column_int(st, 21) != 0;
    r->opa_called = sqlite3_column_int(st, 22) != 0;
    r->opa_result = col_text(st, 23, a);
    r->opa_ms = (uint32_t)sqlite3_column_int64(st, 24);
    r->latency_us = (uint64_t)sqlite3_column_int64(st, 25);
    r->kind = col_text(st, 26, a);
    r->enforced = col_text(st, 27, a);
    r->admin_action = col_text(st, 28, a);
    r->admin_actor = col_text(st, 29, a);
    r->admin_from = col_text(st, 30, a);
    r->admin_target = col_text(st, 31, a);
    row->prev_hash = (char *)col_text(st, 32, a);
    row->hash = (char *)col_text(st, 33, a);

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

void dl_row_fini(struct dl_row *row)
{
    arena_free(row->a);
    memset(row, 0, sizeof *row);
}

void dl_anchor_get(sqlite3 *db, uint64_t *seq, char hash[65])
{
    sqlite3_stmt *st = NULL;
    *seq = 0;
    snprintf(hash, 65, "%s", DL_GENESIS);
    if (sqlite3_prepare_v2(db, "SELECT key, value FROM decision_log_meta WHERE key IN "
                               "('anchor_seq', 'anchor_hash')", -1, &st, NULL) != SQLITE_OK) {
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

/* Cuts a torn last line and returns the seq of the last complete line (0 if none). */
static int file_tail(int fd, uint64_t *last_seq, struct err *err)
{
    struct stat sb;
    *last_seq = 0;
    if (fstat(fd, &sb) != 0) {
        return err_set(err, ERR_IO, "stat: %s", strerror(errno));
    }
    off_t end = sb.st_size;
    char buf[65536];
    /* Find the end of the last complete line. */
    off_t good = 0;
    for (off_t pos = end; pos > 0;) {
        size_t n = (size_t)(pos > (off_t)sizeof buf ? (off_t)sizeof buf : pos);
        pos -= (off_t)n;
        if (pread(fd, buf, n, pos) != (ssize_t)n) {
            return err_set(err, ERR_IO, "read: %s", strerror(errno));
        }
        char *nl = memrchr(buf, '\n', n);
        if (nl) {
            good = pos + (nl - buf) + 1;
            break;
        }
    }
    if (good != end && ftruncate(fd, good) != 0) {
        return err_set(err, ERR_IO, "truncate: %s", strerror(errno));
    }
    if (good == 0) {
        return 0;
    }
    /* Find the start of that line. */
    off_t start = 0;
    for (off_t pos = good - 1; pos > 0;) {
        size_t n = (size_t)(pos > (off_t)sizeof buf ? (off_t)sizeof buf : pos);
        pos -= (off_t)n;
        if (pread(fd, buf, n, pos) != (ssize_t)n) {
            return err_set(err, ERR_IO, "read: %s", strerror(errno));
        }
        char *nl = memrchr(buf, '\n', n);
        if (nl) {
            start = pos + (nl - buf) + 1;
            break;
        }
    }
    size_t len = (size_t)(good - start);
    char *line = xmalloc(len + 1);
    if (pread(fd, line, len, start) != (ssize_t)len) {
        free(line);
        return err_set(err, ERR_IO, "read: %s", strerror(errno));
    }
    line[len] = '\0';
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

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Appends to the file every SQLite record after its last line. */
static int file_catch_up(sqlite3 *db, int fd, struct err *err)
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
        return err_set(err, ERR_IO, "the decision log file has records %llu..%llu that SQLite "
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
        if (write_all(fd, b.p, b.len) != 0) {
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

/* ---- config ---- */

/* Key tables (core/conf.h): the numbers and flags; the strings are read below. */
#define DL(name, type, field, min, max, def) \
    { name, type, offsetof(struct decision_log_conf, field), min, max, def, NULL }
#define DL_OWN(name) { name, CONF_K_OWN, 0, 0, 0, 0, NULL }
static const struct conf_key dl_table[] = {
    DL_OWN("file"),
    DL_OWN("sync"),
    DL("retain", CONF_K_DURATION, retain_ms, 0, 100ULL * 365 * 86400000, 90ULL * 86400000),
    DL("queue", CONF_K_U64, queue, 1, 10000000, 10000),
    DL("flush_interval", CONF_K_DURATION, flush_interval_ms, 1, 60000, 200),
    DL("max_pending", CONF_K_U64, max_pending, 1, 10000000, 1000),
    DL_OWN("checkpoint"),
};
static const struct conf_key ckpt_table[] = {
    DL_OWN("key"),
    DL("every", CONF_K_U64, ckpt_every, 1, 100000000, 1000),
    DL("interval", CONF_K_DURATION, ckpt_interval_ms, 1000, 86400000, 60000),
    DL_OWN("file"),
    DL_OWN("command"),
    DL("syslog", CONF_K_BOOL, ckpt_syslog, 0, 0, false),
};

bool decision_log_conf_parse(const struct conf_node *root, const char *conf_file,
                             struct conf_diag *d, struct decision_log_conf *out)
{
    size_t before = d->count;
    memset(out, 0, sizeof *out);
    conf_table_defaults(ckpt_table, CONF_TABLE_LEN(ckpt_table), out);
    const struct conf_node *n = conf_get(root, "decision_log");
    if (!conf_read_table(d, n, "decision_log", dl_table, CONF_TABLE_LEN(dl_table), out,
                         conf_file) ||
        !n) {
        return d->count == before;
    }
    const char *file = NULL, *sync = NULL, *sqlite = NULL;
    if (!conf_string(d, n, "file", &file) || !conf_string(d, n, "sync", &sync) ||
        d->count != before) {
        return false;
    }
    if (sync && strcmp(sync, "batch") != 0 && strcmp(sync, "strict") != 0) {
        conf_error(d, conf_get(n, "sync"), "\"sync\" must be batch or strict, got \"%s\"", sync);
        return false;
    }
    out->sync = sync && strcmp(sync, "strict") == 0 ? DECISION_LOG_STRICT : DECISION_LOG_BATCH;
    const struct conf_node *cp = conf_get(n, "checkpoint");
    const char *key = NULL, *cfile = NULL, *cmd = NULL;
    if (cp) {
        if (cp->type != CONF_MAP) {
            conf_error(d, cp, "\"checkpoint\" must be a map (key, every, interval, file, "
                              "command, syslog)");
            return false;
        }
        if (!conf_read_table(d, cp, "checkpoint", ckpt_table, CONF_TABLE_LEN(ckpt_table), out,
                             conf_file) ||
            !conf_string(d, cp, "key", &key) || !conf_string(d, cp, "file", &cfile) ||
            !conf_string(d, cp, "command", &cmd) || d->count != before) {
            return false;
        }
        if (!key) {
            conf_error(d, cp, "\"checkpoint\" needs \"key\" (an Ed25519 private key: openssl "
                              "genpkey -algorithm ed25519 -out log-ed25519.pem)");
            return false;
        }
    }
    const struct conf_node *state = conf_get(root, "state");
    if (state && state->type == CONF_MAP && !conf_string(d, state, "sqlite", &sqlite)) {
        return false;
    }
    const char *pg = NULL, *pgpw = NULL, *node = NULL;
    if (state && state->type == CONF_MAP &&
        (!conf_string(d, state, "postgres", &pg) || !conf_string(d, state, "password_file", &pgpw) ||
         !conf_string(d, state, "node", &node))) {
        return false;
    }
    if (pg != NULL) {
        char host[256] = "";
        if (node == NULL && gethostname(host, sizeof host - 1) == 0) {
            node = host;
        }
        size_t nl = node ? strlen(node) : 0;
        bool nok = nl > 0 && nl <= 64;
        for (size_t i = 0; nok && i < nl; i++) {
            char ch = node[i];
            nok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '-' || ch == '_' || ch == '.';
        }
        if (!nok) {
            conf_error(d, conf_get(state, "node") ? conf_get(state, "node") : state,
                       "\"node\" must be 1-64 letters, digits, '-', '_' or '.' (it names this "
                       "node's records in the shared decision log)");
            return false;
        }
        out->pg_conninfo = xstrdup(pg);
        out->pg_password_file = pgpw ? conf_path_resolve(conf_file, pgpw) : NULL;
        out->node = xstrdup(node);
    }
    if (!sqlite) {
        conf_error(d, conf_get_key(root, "decision_log"),
                   "\"decision_log\" needs \"state.sqlite\" (the log's database)");
        return false;
    }
    out->sqlite = conf_path_resolve(conf_file, sqlite);
    out->file = file ? conf_path_resolve(conf_file, file) : NULL;
    out->ckpt_key = key ? conf_path_resolve(conf_file, key) : NULL;
    out->ckpt_file = cfile ? conf_path_resolve(conf_file, cfile) : NULL;
    if (key && !cfile && out->file) {
        /* The JSON-lines store's checkpoints live beside it (every line of the log
         * itself stays a record). */
        out->ckpt_file = xasprintf("%s.checkpoints", out->file);
    }
    out->ckpt_command = cmd ? xstrdup(cmd) : NULL;
    return true;
}

void decision_log_conf_fini(struct decision_log_conf *c)
{
    free(c->sqlite);
    free(c->file);
    free(c->ckpt_key);
    free(c->ckpt_file);
    free(c->ckpt_command);
    free(c->pg_conninfo);
    free(c->pg_password_file);
    free(c->node);
    c->sqlite = c->file = c->ckpt_key = c->ckpt_file = c->ckpt_command = NULL;
    c->pg_conninfo = c->pg_password_file = c->node = NULL;
}

/* ---- the writer ---- */

struct qrec {
    struct decision_record rec; /* strings point into blob */
    uint64_t seq;
    int64_t pending_id;         /* > 0: taken from decision_log_pending */
    char *blob;
};

struct decision_log {
    struct decision_log_conf conf;
    struct dl_ship *ship;          /* state.postgres: ships committed records */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    struct qrec *ring;
    size_t head, count, inflight;
    uint64_t next_seq, committed;
    bool stop, broken;
    decision_log_commit_cb *cb;
    void *cb_arg;
    sqlite3 *db;
    sqlite3_stmt *ins, *del_pending;
    int fd;
    int lock_fd;          /* flock: the one process writing this log */
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
    /* Signed checkpoints. */
    bool ckpt;
    struct dl_key key;
    uint64_t ckpt_seq;
    int64_t ckpt_us;
    struct dl_checkpoint last_ckpt;
    bool have_ckpt;
    char errmsg[256]; /* the store's last error */
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t cstr_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *blob_put(char **cur, const char *s)
{
    if (!s) {
        return NULL;
    }
    size_t n = strlen(s) + 1;
    char *d = *cur;
    memcpy(d, s, n);
    *cur += n;
    return d;
}

/* One allocation holding the record's strings, groups and claims. */
static void rec_copy(const struct decision_record *in, struct qrec *q)
{
    const char *const *fields[] = { &in->request_id, &in->route,     &in->decision,
                                    &in->rule,       &in->reason,    &in->user,
                                    &in->email,      &in->idp,       &in->session,
                                    &in->device_id,  &in->device_owner, &in->client_ip,
                                    &in->method,     &in->host,      &in->path,
                                    &in->opa_result, &in->kind,      &in->enforced,
                                    &in->admin_action, &in->admin_actor, &in->admin_from,
                                    &in->admin_target };
    size_t size = in->ngroups * sizeof(char *) + in->nclaims * sizeof(struct policy_kv) + 16;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        size += cstr_size(*fields[i]);
    }
    for (size_t i = 0; i < in->ngroups; i++) {
        size += cstr_size(in->groups[i]);
    }
    for (size_t i = 0; i < in->nclaims; i++) {
        size += in->claims[i].name.len + in->claims[i].value.len + 2;
    }
    q->blob = xmalloc(size);
    q->rec = *in;
    const char **groups = (const char **)(void *)q->blob;
    struct policy_kv *claims = (struct policy_kv *)(void *)(q->blob + in->ngroups * sizeof(char *));
    char *cur = (char *)(claims + in->nclaims);
    struct decision_record *r = &q->rec;
    const char **out[] = { &r->request_id, &r->route,  &r->decision,  &r->rule,
                           &r->reason,     &r->user,   &r->email,     &r->idp,
                           &r->session,    &r->device_id, &r->device_owner, &r->client_ip,
                           &r->method,     &r->host,   &r->path,      &r->opa_result,
                           &r->kind,       &r->enforced, &r->admin_action, &r->admin_actor,
                           &r->admin_from, &r->admin_target };
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) {
        *out[i] = blob_put(&cur, *fields[i]);
    }
    for (size_t i = 0; i < in->ngroups; i++) {
        groups[i] = blob_put(&cur, in->groups[i] ? in->groups[i] : "");
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
}

/* SQLITE_STATIC: every string outlives the step (the batch's records, the
 * caller's buffers), so SQLite reads it in place instead of copying it. */
static int bind_text(sqlite3_stmt *st, int i, const char *s)
{
    return s ? sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* Binds a record to an INSERT of (seq or id, DL_COLUMNS, prev_hash, hash) with
 * parameters ?1..?34 and steps it; seq 0 binds NULL (the pending table's own id). */
static int bind_row(sqlite3_stmt *st, const struct decision_record *r, uint64_t seq,
                    const char *prev, const char *hash, struct sbuf tmp[2])
{
    sqlite3_reset(st);
    if (seq) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
    } else {
        sqlite3_bind_null(st, 1);
    }
    sqlite3_bind_int64(st, 2, r->ts_us);
    bind_text(st, 3, r->request_id);
    bind_text(st, 4, r->route);
    bind_text(st, 5, r->decision);
    bind_text(st, 6, r->rule);
    bind_text(st, 7, r->reason);
    bind_text(st, 8, r->user);
    bind_text(st, 9, r->email);
    tmp[0].len = 0;
    groups_json(&tmp[0], r);
    bind_text(st, 10, tmp[0].p);
    tmp[1].len = 0;
    claims_json(&tmp[1], r);
    bind_text(st, 11, tmp[1].p);
    bind_text(st, 12, r->idp);
    bind_text(st, 13, r->session);
    sqlite3_bind_int(st, 14, r->device_present);
    bind_text(st, 15, r->device_id);
    bind_text(st, 16, r->device_owner);
    sqlite3_bind_int(st, 17, r->device_trusted);
    bind_text(st, 18, r->client_ip);
    bind_text(st, 19, r->method);
    bind_text(st, 20, r->host);
    bind_text(st, 21, r->path);
    sqlite3_bind_int(st, 22, r->shadow);
    sqlite3_bind_int(st, 23, r->opa_called);
    bind_text(st, 24, r->opa_result);
    sqlite3_bind_int64(st, 25, r->opa_ms);
    sqlite3_bind_int64(st, 26, (sqlite3_int64)r->latency_us);
    bind_text(st, 27, r->kind);
    bind_text(st, 28, r->enforced);
    bind_text(st, 29, r->admin_action);
    bind_text(st, 30, r->admin_actor);
    bind_text(st, 31, r->admin_from);
    bind_text(st, 32, r->admin_target);
    bind_text(st, 33, prev);
    bind_text(st, 34, hash);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_IO;
    /* Nothing bound may point at a freed batch afterwards. */
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int dl_bind_row(sqlite3_stmt *st, const struct decision_record *r, uint64_t seq,
                const char *prev, const char *hash, struct sbuf tmp[2])
{
    return bind_row(st, r, seq, prev, hash, tmp);
}

static int insert_row(struct decision_log *dl, const struct qrec *q, const char *prev,
                      const char *hash, struct sbuf tmp[2])
{
    int rc = bind_row(dl->ins, &q->rec, q->seq, prev, hash, tmp);
    if (rc == 0 && q->pending_id) {
        /* Chained and taken off the pending table in the same transaction: once. */
        sqlite3_reset(dl->del_pending);
        sqlite3_bind_int64(dl->del_pending, 1, q->pending_id);
        rc = sqlite3_step(dl->del_pending) == SQLITE_DONE ? 0 : ERR_IO;
        sqlite3_reset(dl->del_pending);
    }
    return rc;
}

/* Commits a batch to SQLite, then mirrors it to the file. On a SQLite failure the
 * batch is kept and retried (the queue fills and callers get 503); nothing is lost. */
static int write_batch(struct decision_log *dl, struct qrec *batch, size_t n)
{
    struct sbuf canon = { 0 }, lines = { 0 }, tmp[2] = { { 0 }, { 0 } };
    char prev[65], hash[65];
    int64_t t0 = now_us();
    memcpy(prev, dl->prev, 65);
    int rc = sqlite3_exec(dl->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK ? 0 : ERR_IO;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        dl_canonical(&batch[i].rec, batch[i].seq, prev, &canon);
        dl_hash(prev, canon.p, canon.len, hash);
        rc = insert_row(dl, &batch[i], prev, hash, tmp);
        dl_sbuf_put(&lines, canon.p, canon.len);
        dl_sbuf_put(&lines, ",\"hash\":\"", 9);
        dl_sbuf_put(&lines, hash, 64);
        dl_sbuf_put(&lines, "\"}\n", 3);
        memcpy(prev, hash, 65);
    }
    if (rc == 0 && sqlite3_exec(dl->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        rc = ERR_IO;
    }
    if (rc != 0) {
        snprintf(dl->errmsg, sizeof dl->errmsg, "%s", sqlite3_errmsg(dl->db));
        log_error("decision_log", "commit failed: %s", dl->errmsg);
        sqlite3_exec(dl->db, "ROLLBACK", NULL, NULL, NULL);
        goto out;
    }
    memcpy(dl->prev, prev, 65);
    if (dl->fd >= 0) {
        if (dl->file_behind || write_all(dl->fd, lines.p, lines.len) != 0) {
            /* The file is a mirror of SQLite: catch it up later rather than lose order. */
            dl->file_behind = true;
        } else if (dl->conf.sync == DECISION_LOG_STRICT && fdatasync(dl->fd) != 0) {
            dl->file_behind = true;
        }
    }
    policy_metrics_log_write((uint64_t)(now_us() - t0), n);
out:
    dl_sbuf_free(&canon);
    dl_sbuf_free(&lines);
    dl_sbuf_free(&tmp[0]);
    dl_sbuf_free(&tmp[1]);
    return rc;
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
            rec_copy(&row.rec, &dl->ring[tail]);
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

/* ---- the spool: uncommitted records while the store refuses commits ---- */

static int pwrite_all(int fd, const char *p, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

/* Zeroes [from, to) of the spool (the preallocated blocks stay allocated). */
static int spool_zero(int fd, off_t from, off_t to)
{
    static const char zeros[65536];
    while (from < to) {
        size_t n = (size_t)(to - from) < sizeof zeros ? (size_t)(to - from) : sizeof zeros;
        if (pwrite_all(fd, zeros, n, from) != 0) {
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
    off_t reserve = (off_t)(dl->conf.max_pending * 2048 < 65536 ? 65536
                                                                 : dl->conf.max_pending * 2048);
    int e = posix_fallocate(dl->spool_fd, 0, reserve);
    if (e != 0) {
        log_warn("decision_log", "cannot reserve %lld bytes for the spool %s: %s",
                 (long long)reserve, dl->spool_path, strerror(e));
    }
}

static void put_line(struct sbuf *b, const struct qrec *q, const char *prev, char hash[65],
                     struct sbuf *canon)
{
    dl_canonical(&q->rec, q->seq, prev, canon);
    dl_hash(prev, canon->p, canon->len, hash);
    dl_sbuf_put(b, canon->p, canon->len);
    dl_sbuf_put(b, ",\"hash\":\"", 9);
    dl_sbuf_put(b, hash, 64);
    dl_sbuf_put(b, "\"}\n", 3);
}

/* Saves every held record not yet in the spool (the failing batch, then the queue),
 * chained as they will be committed. Writer thread. Returns 0 when all are saved. */
static int spool_pending(struct decision_log *dl, const struct qrec *batch, size_t n)
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
        put_line(&lines, q, prev, hash, &canon);
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
            pwrite_all(dl->spool_fd, lines.p, lines.len, dl->spool_used) == 0 &&
            fdatasync(dl->spool_fd) == 0) {
            rc = 0;
        } else if (dl->spool_fd >= 0) {
            log_error("decision_log", "cannot write %zu records to the spool %s: %s (they stay in "
                                      "memory)", count, dl->spool_path, strerror(errno));
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
static void spool_reset(struct decision_log *dl)
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
static int spool_replay(struct decision_log *dl, struct err *err)
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
            rc = err_set(err, ERR_PARSE, "%s: byte %zu is not a decision record; move the spool "
                                         "aside to start without it", dl->spool_path, off);
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
            rc = err_set(err, ERR_PARSE, "%s: record %llu does not continue the log at record "
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
            qs[i].rec = rows[i].rec;
            qs[i].seq = rows[i].seq;
        }
        for (size_t i = 0; i < nrows && rc == 0; i += DL_BATCH_MAX) {
            size_t k = nrows - i < DL_BATCH_MAX ? nrows - i : DL_BATCH_MAX;
            if (write_batch(dl, qs + i, k) != 0) {
                rc = err_set(err, ERR_IO, "cannot commit the %zu spooled records of %s: %s",
                             nrows, dl->spool_path, dl->errmsg);
            } else {
                dl->last_seq = qs[i + k - 1].seq;
            }
        }
        if (rc == 0) {
            log_warn("decision_log", "committed %zu records saved in the spool %s by an earlier "
                                     "run (records %llu..%llu)", nrows, dl->spool_path,
                     (unsigned long long)qs[0].seq, (unsigned long long)qs[nrows - 1].seq);
        }
    }
    for (size_t i = 0; i < nrows; i++) {
        dl_row_fini(&rows[i]);
    }
    free(rows);
    free(qs);
    if (rc == 0 && (nrows > 0 || skipped > 0 || len > 0)) {
        dl->spool_used = (off_t)len;
        spool_reset(dl);
    }
    return rc;
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
}

static void ckpt_ship(struct decision_log *dl, const char *json)
{
    if (dl->conf.ckpt_file) {
        int fd = open(dl->conf.ckpt_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        size_t n = strlen(json);
        if (fd < 0 || write_all(fd, json, n) != 0 || write_all(fd, "\n", 1) != 0 ||
            fdatasync(fd) != 0) {
            log_error("decision_log", "cannot append the checkpoint to %s: %s",
                      dl->conf.ckpt_file, strerror(errno));
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
    int64_t now = now_us();
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
    head_write(dl);
    policy_metrics_checkpoint(c.seq);
    char *json = dl_ckpt_json(&c);
    ckpt_ship(dl, json);
    free(json);
}

static void periodic(struct decision_log *dl)
{
    dl->last_sync_us = now_us();
    if (dl->lock_fd >= 0) {
        take_pending(dl);
    }
    if (dl->fd >= 0) {
        if (dl->file_behind) {
            struct err err = { 0 };
            if (file_catch_up(dl->db, dl->fd, &err) == 0) {
                dl->file_behind = false;
                log_info("decision_log", "file caught up with SQLite");
            } else {
                log_error("decision_log", "file mirror behind: %s", err.msg);
            }
        }
        (void)fdatasync(dl->fd);
    }
    sqlite3_wal_checkpoint_v2(dl->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    int64_t now = now_us();
    if (dl->ckpt && dl->last_seq > dl->ckpt_seq &&
        now - dl->ckpt_us >= (int64_t)dl->conf.ckpt_interval_ms * 1000) {
        checkpoint(dl);
    } else if (dl->last_seq != dl->head_written) {
        head_write(dl);
    }
    if (dl->conf.retain_ms &&
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
            uint64_t first = file_first_seq(dl->fd);
            if (first > 0 && first <= anchor) {
                if (file_drop_before(dl->conf.file, anchor, &err) != 0) {
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
                dl->head = (dl->head + 1) % cap;
                dl->count--;
            }
            dl->inflight = n;
        }
        pthread_mutex_unlock(&dl->mu);
        int rc = write_batch(dl, batch, n);
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
                log_error("decision_log", "the store refuses commits (%s): holding %zu records; "
                                          "requests are refused once %llu are pending",
                          dl->errmsg, pending,
                          (unsigned long long)dl->conf.max_pending);
            }
            int sp = spool_pending(dl, batch, n);
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
                    log_error("decision_log", "%zu records could not be committed at shutdown: "
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
                        put_line(&line, &batch[i], prev, hash, &canon);
                        memcpy(prev, hash, 65);
                        line.p[line.len - 1] = '\0';
                        log_error("decision_log", "unsaved record: %s", line.p);
                    }
                    dl_sbuf_free(&line);
                    dl_sbuf_free(&canon);
                    log_error("decision_log", "%zu records could not be committed or spooled at "
                                              "shutdown: they are in this log as "
                                              "\"unsaved record\" lines", n);
                }
                for (size_t i = 0; i < n; i++) {
                    free(batch[i].blob);
                }
                n = 0;
                pthread_mutex_lock(&dl->mu);
                dl->inflight = 0;
                pthread_cond_broadcast(&dl->done);
                break;
            }
            sleep(1);
        }
        /* Under steady load the writer never idles: sync on the clock too, so batch mode
         * stays durable within flush_interval. */
        if (rc == 0 && now_us() - dl->last_sync_us >= (int64_t)dl->conf.flush_interval_ms * 1000) {
            periodic(dl);
        }
        if (rc == 0 && dl->ckpt && last - dl->ckpt_seq >= dl->conf.ckpt_every) {
            checkpoint(dl);
        }
        if (rc == 0) {
            for (size_t i = 0; i < n; i++) {
                free(batch[i].blob);
            }
            n = 0;
            if (dl->spooled > 0 && last >= dl->spooled_seq) {
                spool_reset(dl);
            }
        }
        pthread_mutex_lock(&dl->mu);
        policy_metrics_queue_depth(dl->count + n);
        if (rc == 0 && dl->broken) {
            log_warn("decision_log", "the store accepts commits again (up to record %llu); %zu "
                                     "records still queued", (unsigned long long)last, dl->count);
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

/* seq of the file's first line (0 when empty or unreadable). */
static uint64_t file_first_seq(int fd)
{
    char buf[65536];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    char *nl = memchr(buf, '\n', (size_t)n);
    if (!nl) {
        return 0;
    }
    json_t *j = json_loadb(buf, (size_t)(nl - buf), 0, NULL);
    json_t *s = json_object_get(j, "seq");
    uint64_t seq = json_is_integer(s) ? (uint64_t)json_integer_value(s) : 0;
    json_decref(j);
    return seq;
}

/* The writer's lock, next to the database: held by the process that writes the log,
 * so that a command line tool knows whether to hand its record over or chain it
 * itself. Returns the fd, or -1 when another process holds it (busy) or on error. */
static int writer_lock(const char *sqlite, unsigned wait_ms, bool *busy)
{
    char *path = xasprintf("%s-writer.lock", sqlite);
    int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0640);
    free(path);
    *busy = false;
    if (fd < 0) {
        return -1;
    }
    for (unsigned waited = 0;; waited += 20) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            return fd;
        }
        if (errno != EWOULDBLOCK || waited >= wait_ms) {
            *busy = errno == EWOULDBLOCK;
            close(fd);
            return -1;
        }
        usleep(20000);
    }
}

static struct decision_log *dl_open(const struct decision_log_conf *c, bool need_lock,
                                    bool *busy, struct err *err);

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
static struct decision_log *dl_open(const struct decision_log_conf *c, bool need_lock,
                                    bool *busy, struct err *err)
{
    if (!c->sqlite) {
        err_set(err, ERR_CONFIG, "the decision log needs state.sqlite");
        return NULL;
    }
    bool locked_out = false;
    int lock_fd = writer_lock(c->sqlite, need_lock ? 0 : 5000, &locked_out);
    if (need_lock && lock_fd < 0) {
        if (busy) {
            *busy = locked_out;
        }
        err_set(err, ERR_IO, locked_out ? "another process writes the decision log"
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
    dl->conf.node = NULL;
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
    static const char sql[] = "INSERT INTO decisions(seq, " DL_COLUMNS ", prev_hash, hash) "
                              "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, "
                              "?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, "
                              "?28, ?29, ?30, ?31, ?32, ?33, ?34)";
    if (sqlite3_prepare_v3(dl->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &dl->ins, NULL) !=
        SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
        goto fail;
    }
    if (sqlite3_prepare_v3(dl->db, "DELETE FROM decision_log_pending WHERE id = ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &dl->del_pending, NULL) != SQLITE_OK) {
        err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(dl->db));
        goto fail;
    }
    /* The chain continues from the last row, or from the retention anchor. */
    uint64_t anchor_seq;
    dl_anchor_get(dl->db, &anchor_seq, dl->prev);
    dl->next_seq = anchor_seq + 1;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(dl->db, "SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1",
                           -1, &st, NULL) == SQLITE_OK &&
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
            log_error("decision_log", "TAMPERING OR LOSS: the stores end at record %llu but the "
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
        log_error("decision_log", "TAMPERING OR LOSS: the stores end at record %llu but a signed "
                                  "checkpoint covers record %llu; the log continues at record %llu",
                  (unsigned long long)(dl->next_seq - 1), (unsigned long long)dl->ckpt_seq,
                  (unsigned long long)dl->ckpt_seq + 1);
        dl->next_seq = dl->ckpt_seq + 1;
        memcpy(dl->prev, dl->last_ckpt.hash, 65);
    }
    dl->committed = dl->next_seq - 1;
    dl->last_seq = dl->committed;
    dl->head_written = UINT64_MAX;
    dl->ckpt_us = now_us();
    if (c->file) {
        dl->fd = open(c->file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (dl->fd < 0) {
            err_set(err, ERR_IO, "cannot open %s: %s", c->file, strerror(errno));
            goto fail;
        }
        /* A crash between retention's SQLite commit and its file rewrite leaves lines the
         * anchor already covers: finish the rewrite. */
        uint64_t first = file_first_seq(dl->fd);
        if (anchor_seq > 0 && first > 0 && first <= anchor_seq) {
            close(dl->fd);
            dl->fd = -1;
            if (file_drop_before(c->file, anchor_seq, err) != 0) {
                goto fail;
            }
            dl->fd = open(c->file, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
            if (dl->fd < 0) {
                err_set(err, ERR_IO, "cannot open %s: %s", c->file, strerror(errno));
                goto fail;
            }
        }
        if (file_catch_up(dl->db, dl->fd, err) != 0) {
            goto fail;
        }
    }
    /* Records an earlier run accepted but could not commit come first. */
    if (spool_replay(dl, err) != 0) {
        goto fail;
    }
    dl->next_seq = dl->last_seq + 1;
    dl->committed = dl->last_seq;
    checkpoint(dl); /* covers a tail a crash left without one */
    head_write(dl);
    dl->ring = xcalloc(dl->conf.queue, sizeof *dl->ring);
    pthread_mutex_init(&dl->mu, NULL);
    pthread_cond_init(&dl->wake, NULL);
    pthread_cond_init(&dl->done, NULL);
    dl->last_retain_us = 0;
    dl->last_sync_us = now_us();
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
        free(dl->ring[(dl->head + i) % dl->conf.queue].blob);
    }
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
    sqlite3_close(dl->db);
    free(dl->ring);
    decision_log_conf_fini(&dl->conf);
    free(dl);
    return NULL;
}

int decision_log_append(struct decision_log *dl, const struct decision_record *rec, uint64_t *seq)
{
    pthread_mutex_lock(&dl->mu);
    /* Fail closed: a full queue refuses new records (503); so does a failing store
     * once max_pending records are held (strict mode at once: nothing would commit). */
    size_t pending = dl->count + dl->inflight;
    if (pending >= dl->conf.queue || dl->stop ||
        (dl->broken && (pending >= dl->conf.max_pending || dl->conf.sync == DECISION_LOG_STRICT))) {
        pthread_mutex_unlock(&dl->mu);
        return ERR_LIMIT;
    }
    size_t tail = (dl->head + dl->count) % dl->conf.queue;
    rec_copy(rec, &dl->ring[tail]);
    dl->ring[tail].seq = dl->next_seq++;
    dl->ring[tail].pending_id = 0;
    if (seq) {
        *seq = dl->ring[tail].seq;
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
        if (dl->last_seq != dl->head_written) {
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
            (void)file_catch_up(dl->db, dl->fd, &err);
        }
        (void)fdatasync(dl->fd);
        close(dl->fd);
    }
    sqlite3_finalize(dl->ins);
    sqlite3_finalize(dl->del_pending);
    sqlite3_close(dl->db);
    if (dl->lock_fd >= 0) {
        close(dl->lock_fd); /* after SQLite: the writer lock is released last */
    }
    pthread_mutex_destroy(&dl->mu);
    pthread_cond_destroy(&dl->wake);
    pthread_cond_destroy(&dl->done);
    free(dl->ring);
    decision_log_conf_fini(&dl->conf);
    free(dl);
}

/* ---- retention ---- */

/* Rewrites the file keeping lines with seq > keep_after (atomic rename). */
static int file_drop_before(const char *file, uint64_t keep_after, struct err *err)
{
    FILE *in = fopen(file, "r");
    if (!in) {
        return errno == ENOENT ? 0 : err_set(err, ERR_IO, "%s: %s", file, strerror(errno));
    }
    char *tmp = xasprintf("%s.retain", file);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        free(tmp);
        return err_set(err, ERR_IO, "%s: %s", file, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        json_t *j = json_loadb(line, (size_t)n, 0, NULL);
        json_t *s = json_object_get(j, "seq");
        bool keep = !json_is_integer(s) || (uint64_t)json_integer_value(s) > keep_after;
        json_decref(j);
        if (keep) {
            fwrite(line, 1, (size_t)n, out);
        }
    }
    free(line);
    fclose(in);
    int rc = 0;
    if (fflush(out) != 0 || fdatasync(fileno(out)) != 0) {
        rc = err_set(err, ERR_IO, "%s: %s", tmp, strerror(errno));
    }
    fclose(out);
    if (rc == 0 && rename(tmp, file) != 0) {
        rc = err_set(err, ERR_IO, "rename %s: %s", tmp, strerror(errno));
    }
    free(tmp);
    return rc;
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
    if (sqlite3_prepare_v2(db, "SELECT seq, hash, ts_us FROM (SELECT seq, hash, ts_us FROM "
                               "decisions WHERE ts_us < ?1 ORDER BY seq LIMIT ?2) ORDER BY seq "
                               "DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK) {
        goto fail;
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
    st = NULL;
    if (seq == 0) {
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        dl_anchor_get(db, anchor_seq, hash);
        return 0;
    }
    /* The cut is a signed statement (what, up to where, why, when): an anchor without
     * one is truncation, not retention. */
    struct dl_checkpoint rr = { .retention = true, .seq = seq, .upto_ts_us = ts };
    snprintf(rr.hash, sizeof rr.hash, "%s", hash);
    snprintf(rr.reason, sizeof rr.reason, "%s", reason ? reason : "retention");
    dl_format_ts(now_us(), rr.time);
    if (key && dl_ckpt_sign(key, &rr, err) != 0) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
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
    long deleted = (long)sqlite3_changes(db);
    char seqtxt[STR_U64_MAX];
    struct str sq = str_u64(seqtxt, seq);
    if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO decision_log_meta VALUES('anchor_seq', "
                               "?1), ('anchor_hash', ?2)",
                           -1, &st, NULL) != SQLITE_OK) {
        goto fail;
    }
    sqlite3_bind_text(st, 1, sq.p, (int)sq.len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, hash, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (dl_ckpt_store(db, &rr) != 0 || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        goto fail;
    }
    *anchor_seq = seq;
    return deleted;
fail:
    err_set(err, ERR_IO, "sqlite: %s", sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

long decision_log_retain(const struct decision_log_conf *c, int64_t now_us_, struct err *err)
{
    sqlite3 *db = NULL;
    if (!c->retain_ms) {
        return 0;
    }
    struct dl_key key = { 0 };
    if (c->ckpt_key && dl_key_load(c->ckpt_key, true, &key, err) != 0) {
        return -1;
    }
    if (dl_db_open(c->sqlite, false, &db, err) != 0) {
        dl_key_free(&key);
        return -1;
    }
    uint64_t anchor = 0;
    long n = dl_retain(db, now_us_ - (int64_t)c->retain_ms * 1000, 0, &anchor,
                       c->ckpt_key ? &key : NULL, "audit retain", err);
    sqlite3_close(db);
    dl_key_free(&key);
    if (n > 0 && c->file && file_drop_before(c->file, anchor, err) != 0) {
        return -1;
    }
    return n;
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
                              "hash) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, "
                              "?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, "
                              "?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34)";
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK ? 0 : ERR_IO;
    if (rc == 0) {
        rc = bind_row(st, rec, 0, NULL, NULL, tmp);
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
    if (sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM decision_log_pending WHERE id = ?1),"
                               " (SELECT max(seq) FROM decisions WHERE request_id = ?2)",
                           -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_text(q, 2, rec->request_id ? rec->request_id : "", -1, SQLITE_STATIC);
        for (unsigned waited = 0;; waited += 50) {
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
