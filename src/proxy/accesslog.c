/* proxy/accesslog.c - the JSON access log. Each worker formats lines into its
 * own buffer and writes whole lines with one write() per flush, to its own
 * O_APPEND descriptor (or stderr), so workers never share a lock or a buffer.
 * Called once per finished request by the connection code; reopened on SIGHUP
 * for log rotation. */
#include "accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FLUSH_AT (64 * 1024)

struct accesslog {
    char *path; /* NULL for stderr */
    int fd;
    bool is_pipe; /* not a regular file: keep writes <= PIPE_BUF */
    char *buf;
    size_t len, cap;
    uint64_t write_errors;
    time_t last_error_log;
};

/* ---- formatting ---- */

struct w {
    char *p;
    size_t len, cap;
};

static void put(struct w *w, const char *s, size_t n)
{
    if (w->len < w->cap) {
        size_t room = w->cap - w->len;
        memcpy(w->p + w->len, s, n < room ? n : room);
    }
    w->len += n;
}

static void putc_(struct w *w, char ch)
{
    put(w, &ch, 1);
}

static void put_u64(struct w *w, uint64_t v)
{
    char tmp[STR_U64_MAX];
    struct str d = str_u64(tmp, v);
    put(w, d.p, d.len);
}

/* Microseconds as milliseconds with three decimals: 1234 -> 1.234. */
static void put_ms(struct w *w, uint64_t us)
{
    char frac[3];
    put_u64(w, us / 1000);
    frac[0] = (char)('0' + (us / 100) % 10);
    frac[1] = (char)('0' + (us / 10) % 10);
    frac[2] = (char)('0' + us % 10);
    putc_(w, '.');
    put(w, frac, 3);
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;

    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Overlong forms, surrogates and values past U+10FFFF are not UTF-8. */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return len;
}

/* A JSON string (with quotes) for a span that may hold anything a client sent. */
static void put_json_str(struct w *w, struct str s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s.p;

    putc_(w, '"');
    for (size_t i = 0; i < s.len;) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            put(w, e, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            put(w, e, 6);
            i++;
        } else if (c < 0x80) {
            putc_(w, (char)c);
            i++;
        } else {
            size_t n = utf8_len(p + i, s.len - i);
            if (n) {
                put(w, (const char *)p + i, n);
                i += n;
            } else {
                put(w, "\\ufffd", 6);
                i++;
            }
        }
    }
    putc_(w, '"');
}

static void put_ts(struct w *w, uint64_t ts_us)
{
    time_t secs = (time_t)(ts_us / 1000000);
    struct tm tm;
    char buf[40];
    int n;

    gmtime_r(&secs, &tm);
    n = snprintf(buf, sizeof buf, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\"", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (unsigned)((ts_us / 1000) % 1000));
    if (n > 0 && (size_t)n < sizeof buf) {
        put(w, buf, (size_t)n);
    }
}

#define LIT(w, s) put((w), (s), sizeof(s) - 1)

const char *const accesslog_field_names[ACCESSLOG_F_COUNT + 1] = {
    "ts",     "request_id", "client_ip", "method",   "host",        "path",
    "status", "bytes_in",   "bytes_out", "upstream", "upstream_ms", "total_ms",
    "route",  "user",       "decision",  "rule",     "device",      NULL,
};

/* ,"name": (no comma before the first field written); false when f is not chosen. */
static bool field(struct w *w, uint32_t mask, enum accesslog_field f, bool *first)
{
    if (!(mask & (1u << f))) {
        return false;
    }
    putc_(w, *first ? '{' : ',');
    *first = false;
    putc_(w, '"');
    put(w, accesslog_field_names[f], strlen(accesslog_field_names[f]));
    LIT(w, "\":");
    return true;
}

static void put_str_or_null(struct w *w, struct str s)
{
    if (s.len) {
        put_json_str(w, s);
    } else {
        LIT(w, "null");
    }
}

size_t accesslog_format(const struct accesslog_entry *e, char *buf, size_t cap)
{
    struct w w = { .p = buf, .len = 0, .cap = cap };
    struct str path;
    uint32_t m = e->fields ? e->fields : ACCESSLOG_ALL;
    bool first = true;

    if (field(&w, m, ACCESSLOG_F_TS, &first)) {
        put_ts(&w, e->ts_us);
    }
    if (field(&w, m, ACCESSLOG_F_REQUEST_ID, &first)) {
        put_json_str(&w, e->request_id);
    }
    if (field(&w, m, ACCESSLOG_F_CLIENT_IP, &first)) {
        put_json_str(&w, e->client_ip);
    }
    if (field(&w, m, ACCESSLOG_F_METHOD, &first)) {
        put_json_str(&w, e->method);
    }
    if (field(&w, m, ACCESSLOG_F_HOST, &first)) {
        put_json_str(&w, e->host);
    }
    if (field(&w, m, ACCESSLOG_F_PATH, &first)) {
        path = e->path;
        for (size_t i = 0; i < path.len; i++) {
            /* The query may hold an OAuth code or a token: never log it. */
            if (path.p[i] == '?') {
                path.len = i;
                break;
            }
        }
        put_json_str(&w, path);
    }
    if (field(&w, m, ACCESSLOG_F_STATUS, &first)) {
        put_u64(&w, e->status);
    }
    if (field(&w, m, ACCESSLOG_F_BYTES_IN, &first)) {
        put_u64(&w, e->bytes_in);
    }
    if (field(&w, m, ACCESSLOG_F_BYTES_OUT, &first)) {
        put_u64(&w, e->bytes_out);
    }
    if (field(&w, m, ACCESSLOG_F_UPSTREAM, &first)) {
        put_str_or_null(&w, e->upstream);
    }
    if (field(&w, m, ACCESSLOG_F_UPSTREAM_MS, &first)) {
        if (e->upstream_us >= 0) {
            put_ms(&w, (uint64_t)e->upstream_us);
        } else {
            LIT(&w, "null");
        }
    }
    if (field(&w, m, ACCESSLOG_F_TOTAL_MS, &first)) {
        put_ms(&w, e->total_us);
    }
    if (field(&w, m, ACCESSLOG_F_ROUTE, &first)) {
        put_str_or_null(&w, e->route);
    }
    if (field(&w, m, ACCESSLOG_F_USER, &first)) {
        put_str_or_null(&w, e->user);
    }
    if (field(&w, m, ACCESSLOG_F_DECISION, &first)) {
        put_str_or_null(&w, e->decision);
    }
    if (field(&w, m, ACCESSLOG_F_RULE, &first)) {
        put_str_or_null(&w, e->rule);
    }
    if (field(&w, m, ACCESSLOG_F_DEVICE, &first)) {
        put_str_or_null(&w, e->device);
    }
    if (first) {
        putc_(&w, '{');
    }
    LIT(&w, "}\n");
    return w.len;
}

/* ---- the sink ---- */

static int open_file(const char *path, bool *is_pipe, struct err *err)
{
    struct stat st;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        return err_set(err, ERR_IO, "cannot open access log \"%s\": %s", path, strerror(errno)), -1;
    }
    *is_pipe = fstat(fd, &st) == 0 && !S_ISREG(st.st_mode);
    return fd;
}

struct accesslog *accesslog_new(const char *target, struct err *err)
{
    struct accesslog *al;
    bool is_pipe = true;
    int fd;

    if (!target || strcmp(target, "stderr") == 0) {
        fd = STDERR_FILENO;
    } else if ((fd = open_file(target, &is_pipe, err)) < 0) {
        return NULL;
    }
    al = xcalloc(1, sizeof *al);
    al->fd = fd;
    al->is_pipe = is_pipe;
    al->path = fd == STDERR_FILENO ? NULL : xstrdup(target);
    al->cap = FLUSH_AT + 4096;
    al->buf = xmalloc(al->cap);
    return al;
}

static void write_error(struct accesslog *al, int e)
{
    time_t now = time(NULL);
    al->write_errors++;
    /* One line per minute at most: a full disk must not flood stderr too. */
    if (now - al->last_error_log >= 60) {
        al->last_error_log = now;
        log_warn("accesslog", "write to %s failed (%llu lines lost so far): %s",
                 al->path ? al->path : "stderr", (unsigned long long)al->write_errors, strerror(e));
    }
}

/* Writes buf[0..n) whole, retrying short writes and EINTR. */
static bool write_all(struct accesslog *al, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(al->fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            write_error(al, errno);
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

void accesslog_flush(struct accesslog *al)
{
    size_t off = 0;

    if (!al || al->len == 0) {
        return;
    }
    if (!al->is_pipe) {
        /* O_APPEND: one write of whole lines lands contiguously in the file. */
        write_all(al, al->buf, al->len);
        al->len = 0;
        return;
    }
    /* Pipes: writes of at most PIPE_BUF bytes are atomic, so cut at line ends. */
    while (off < al->len) {
        size_t n = al->len - off;
        if (n > PIPE_BUF) {
            size_t cut = PIPE_BUF;
            while (cut > 0 && al->buf[off + cut - 1] != '\n') {
                cut--;
            }
            n = cut ? cut : PIPE_BUF; /* a single line longer than PIPE_BUF */
        }
        if (!write_all(al, al->buf + off, n)) {
            break;
        }
        off += n;
    }
    al->len = 0;
}

void accesslog_write(struct accesslog *al, const struct accesslog_entry *e)
{
    size_t need;

    if (!al) {
        return;
    }
    need = accesslog_format(e, al->buf + al->len, al->cap - al->len);
    if (need > al->cap - al->len) {
        accesslog_flush(al);
        if (need > al->cap) {
            /* A huge path: grow once; the buffer keeps its size afterwards. */
            al->cap = need + 4096;
            al->buf = xrealloc(al->buf, al->cap);
        }
        need = accesslog_format(e, al->buf, al->cap);
    }
    al->len += need;
    if (al->len >= FLUSH_AT) {
        accesslog_flush(al);
    }
}

int accesslog_reopen(struct accesslog *al, struct err *err)
{
    bool is_pipe = true;
    int fd;

    if (!al) {
        return 0;
    }
    accesslog_flush(al);
    if (!al->path) {
        return 0;
    }
    if ((fd = open_file(al->path, &is_pipe, err)) < 0) {
        return ERR_IO;
    }
    close(al->fd);
    al->fd = fd;
    al->is_pipe = is_pipe;
    return 0;
}

void accesslog_free(struct accesslog *al)
{
    if (!al) {
        return;
    }
    accesslog_flush(al);
    if (al->fd != STDERR_FILENO) {
        close(al->fd);
    }
    free(al->path);
    free(al->buf);
    free(al);
}
