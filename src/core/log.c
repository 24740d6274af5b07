/* core/log.c - logfmt lines on stderr, written with one write(2) each so that
 * lines from several worker threads never interleave. */
#include "log.h"

#include <stdatomic.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Set by the main thread (start, SIGHUP), read by every worker. */
static atomic_int g_level = LOG_INFO;
static const char *const names[] = { "debug", "info", "warn", "error" };

void log_set_level(enum log_level lvl)
{
    atomic_store_explicit(&g_level, (int)lvl, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&g_level, memory_order_relaxed);
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* Appends src to buf as a logfmt quoted value, escaping quotes, backslashes and controls. */
static size_t quote(char *buf, size_t off, size_t cap, const char *src)
{
    if (off < cap) {
        buf[off++] = '"';
    }
    for (const unsigned char *s = (const unsigned char *)src; *s && off + 4 < cap; s++) {
        if (*s == '"' || *s == '\\') {
            buf[off++] = '\\';
            buf[off++] = (char)*s;
        } else if (*s < 0x20 || *s == 0x7f) {
            off += (size_t)snprintf(buf + off, cap - off, "\\x%02x", *s);
        } else {
            buf[off++] = (char)*s;
        }
    }
    if (off < cap) {
        buf[off++] = '"';
    }
    return off;
}

void log_emit(enum log_level lvl, const char *mod, const char *req, const char *extra,
              const char *fmt, ...)
{
    char msg[1024], line[2048];
    struct timeval tv;
    struct tm tm;
    size_t off;
    va_list ap;

    if ((int)lvl < atomic_load_explicit(&g_level, memory_order_relaxed)) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    off = strftime(line, sizeof line, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    off += (size_t)snprintf(line + off, sizeof line - off, ".%03ldZ level=%s mod=%s",
                            (long)(tv.tv_usec / 1000), names[lvl], mod ? mod : "-");
    if (req && off < sizeof line) {
        off += (size_t)snprintf(line + off, sizeof line - off, " req=%s", req);
    }
    if (off + 5 < sizeof line) {
        memcpy(line + off, " msg=", 5);
        off += 5;
        off = quote(line, off, sizeof line - 2, msg);
    }
    if (extra && off < sizeof line - 2) {
        size_t n = strlen(extra);
        if (n > sizeof line - 2 - off) {
            n = sizeof line - 2 - off;
        }
        memcpy(line + off, extra, n);
        off += n;
    }
    if (off > sizeof line - 1) {
        off = sizeof line - 1;
    }
    line[off++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, off);
    (void)w;
}
