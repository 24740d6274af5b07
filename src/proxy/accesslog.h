/* proxy/accesslog.h - one JSON line per finished request:
 *   {"ts":"2026-11-28T06:00:00.123Z","request_id":"...","client_ip":"...",
 *    "method":"GET","host":"...","path":"/docs","status":200,"bytes_in":0,
 *    "bytes_out":512,"upstream":"127.0.0.1:9001","upstream_ms":1.234,"total_ms":2.345,
 *    "route":"wiki","user":"https://idp.example.com#alice","decision":"allow",
 *    "rule":"engineers","device":"3f9c0a1be27d4c55"}
 * These fields, in this order (access_log.fields may leave some out; the order
 * stays). "route", "user" (the qualified id, issuer#subject), "decision" and
 * "rule" come from the access stage and are null when it did not decide (no
 * route, a reserved path, an anonymous caller). "path" stops before any '?': queries
 * carry OAuth codes, state and sometimes tokens, which must not reach a log.
 * Strings are JSON-escaped (control bytes as
 * \u00XX, invalid UTF-8 bytes as U+FFFD); "upstream" and "upstream_ms" are null
 * when no upstream was contacted.
 *
 * One struct accesslog per worker thread, each with its own buffer and its own
 * O_APPEND descriptor, so workers never lock. Lines are buffered and written
 * with one write() per flush of whole lines when the buffer passes 64 KiB, or
 * when the worker calls accesslog_flush() (io: from a timer every second and at
 * shutdown). Durability: up to one second (or 64 KiB) of lines per worker may be
 * lost on a crash; nothing is fsync'd. To stderr (or any pipe) each write holds
 * whole lines and at most PIPE_BUF bytes, so lines from several writers do not
 * interleave. A write to a regular file may block briefly on disk; a full pipe
 * may block the worker until the reader drains it. */
#ifndef GH_PROXY_ACCESSLOG_H
#define GH_PROXY_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

struct accesslog; /* per worker, not thread-safe */

/* The fields, in line order; a mask of (1u << ACCESSLOG_F_x) selects some. */
enum accesslog_field {
    ACCESSLOG_F_TS = 0,
    ACCESSLOG_F_REQUEST_ID,
    ACCESSLOG_F_CLIENT_IP,
    ACCESSLOG_F_METHOD,
    ACCESSLOG_F_HOST,
    ACCESSLOG_F_PATH,
    ACCESSLOG_F_STATUS,
    ACCESSLOG_F_BYTES_IN,
    ACCESSLOG_F_BYTES_OUT,
    ACCESSLOG_F_UPSTREAM,
    ACCESSLOG_F_UPSTREAM_MS,
    ACCESSLOG_F_TOTAL_MS,
    ACCESSLOG_F_ROUTE,
    ACCESSLOG_F_USER,
    ACCESSLOG_F_DECISION,
    ACCESSLOG_F_RULE,
    ACCESSLOG_F_DEVICE,
    ACCESSLOG_F_COUNT
};
#define ACCESSLOG_ALL ((1u << ACCESSLOG_F_COUNT) - 1)
/* Their names as in the line and in access_log.fields, NULL-terminated. */
extern const char *const accesslog_field_names[ACCESSLOG_F_COUNT + 1];

struct accesslog_entry {
    uint64_t ts_us; /* wall clock (CLOCK_REALTIME) when the response ended, in us */
    struct str request_id;
    struct str client_ip;
    struct str method;
    struct str host; /* Host header as received */
    struct str path; /* request target as received; logged without its query string */
    unsigned status;
    uint64_t bytes_in;   /* request bytes read from the client (head + body) */
    uint64_t bytes_out;  /* response bytes written to the client (head + body) */
    struct str upstream; /* "host:port" of the server used; empty = null */
    int64_t upstream_us; /* time to the upstream response head; < 0 = null */
    uint64_t total_us;   /* request start to response end */
    struct str route;    /* route name; empty = null */
    struct str user;     /* qualified id (issuer#subject); empty = null (anonymous) */
    struct str decision; /* allow, deny, login, error; empty = null (no decision) */
    struct str rule;     /* the rule that decided; empty = null */
    struct str device;   /* enrolled device id of the client certificate; empty = null */
    uint32_t fields;     /* mask of fields to write; 0 = all */
};

/* Opens target: a file path (created 0640, O_APPEND), or "stderr". Returns NULL
 * with err filled when the file cannot be opened. "off" is the caller's
 * business (don't create one). Caller frees with accesslog_free() (which flushes). */
struct accesslog *accesslog_new(const char *target, struct err *err);
void accesslog_free(struct accesslog *al); /* NULL is a no-op */

/* Appends one line for e (the spans are copied; they may die right after).
 * Flushes when the buffer passes 64 KiB. Never allocates once the buffer has
 * grown to its working size. Write errors are counted and logged (rate
 * limited), never returned: the request is already done. */
void accesslog_write(struct accesslog *al, const struct accesslog_entry *e);
/* Writes out buffered lines now. */
void accesslog_flush(struct accesslog *al);
/* Log rotation (SIGHUP): flushes, then reopens the path so lines go to the new
 * file. Call from the owning worker. Returns 0, or ERR_IO (err filled) with the
 * old descriptor kept. stderr: a no-op. */
int accesslog_reopen(struct accesslog *al, struct err *err);

/* Formats e as one JSON line with the trailing '\n' into buf (cap bytes).
 * Returns the line length, or the length it would need when it does not fit
 * (like snprintf; nothing useful is in buf then). Pure; exported for tests. */
size_t accesslog_format(const struct accesslog_entry *e, char *buf, size_t cap);

#endif
