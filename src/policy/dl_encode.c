/* policy/dl_encode.c - the decision log's record encoding: the canonical bytes
 * (hashed, and the JSON line itself), the hash, and a line read back. */
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

/* ---- small string builder ---- */

/* Room for n more bytes and the terminating NUL; returns where they go. */
static char *sbuf_room(struct sbuf *b, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2 < 256 ? 256 : (b->len + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    return b->p + b->len;
}

/* dl_sbuf_put, inlined where the record is built (dozens of calls per record). */
static inline void sbuf_put(struct sbuf *b, const char *s, size_t n)
{
    memcpy(sbuf_room(b, n), s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void dl_sbuf_put(struct sbuf *b, const char *s, size_t n)
{
    sbuf_put(b, s, n);
}

void dl_sbuf_puts(struct sbuf *b, const char *s)
{
    sbuf_put(b, s, strlen(s));
}

/* A string literal, its length known at compile time. */
#define PUT_LIT(b, lit) sbuf_put((b), "" lit, sizeof(lit) - 1)

void dl_sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof tmp) {
        sbuf_put(b, tmp, (size_t)n);
        return;
    }
    char *big = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sbuf_put(b, big, (size_t)n);
    free(big);
}

void dl_sbuf_free(struct sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Bytes a JSON string must escape: '"', '\\', controls and DEL. */
static const unsigned char must_escape[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1,
    [0x07] = 1, [0x08] = 1, [0x09] = 1, [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1,
    [0x0e] = 1, [0x0f] = 1, [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1,
    [0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, [0x19] = 1, [0x1a] = 1, [0x1b] = 1,
    [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, ['"'] = 1,  ['\\'] = 1, [0x7f] = 1,
};

/* A JSON string of n bytes, written in place (room for the worst case is made
 * once; runs without escapes are copied whole). Bytes >= 0x80 pass through: the
 * input is UTF-8 or is recorded as given; control characters are escaped so a line
 * stays one line. */
static void json_strn(struct sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *d = sbuf_room(b, 6 * n + 2), *d0 = d;
    *d++ = '"';
    for (size_t i = 0; i < n;) {
        size_t run = i;
        /* Eight bytes at a time while none needs escaping (< 0x20, '"', '\\', 0x7f);
         * the exact byte is then found one by one. */
        for (; run + 8 <= n; run += 8) {
            uint64_t w;
            memcpy(&w, s + run, 8);
            const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
            uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\'), del = w ^ (ones * 0x7f);
            if (((w - ones * 0x20) & ~w & high) | ((q - ones) & ~q & high) |
                ((bs - ones) & ~bs & high) | ((del - ones) & ~del & high)) {
                break;
            }
        }
        while (run < n && !must_escape[(unsigned char)s[run]]) {
            run++;
        }
        memcpy(d, s + i, run - i);
        d += run - i;
        if (run == n) {
            break;
        }
        unsigned char c = (unsigned char)s[run];
        if (c == '"' || c == '\\') {
            *d++ = '\\';
            *d++ = (char)c;
        } else {
            memcpy(d, "\\u00", 4);
            d[4] = hex[c >> 4];
            d[5] = hex[c & 15];
            d += 6;
        }
        i = run + 1;
    }
    *d++ = '"';
    b->len += (size_t)(d - d0);
    b->p[b->len] = '\0';
}

/* JSON string, or null for NULL. */
static void json_str(struct sbuf *b, const char *s)
{
    if (!s) {
        PUT_LIT(b, "null");
        return;
    }
    json_strn(b, s, strlen(s));
}

/* A claim's name or value: up to its first NUL, as the C string it is copied to. */
static void json_span(struct sbuf *b, struct str s)
{
    json_strn(b, s.p ? s.p : "", s.p ? strnlen(s.p, s.len) : 0);
}

/* ,"key":"value" (key: a literal without characters to escape). */
#define KV_STR(b, key, v)                                                                          \
    do {                                                                                           \
        PUT_LIT(b, ",\"" key "\":");                                                               \
        json_str(b, v);                                                                            \
    } while (0)

static void put_bool(struct sbuf *b, bool v)
{
    sbuf_put(b, v ? "true" : "false", v ? 4 : 5);
}

static void put_u64(struct sbuf *b, uint64_t v)
{
    char tmp[STR_U64_MAX];
    struct str d = str_u64(tmp, v);
    sbuf_put(b, d.p, d.len);
}

void dl_groups_json(struct sbuf *b, const struct decision_record *r)
{
    PUT_LIT(b, "[");
    for (size_t i = 0; i < r->ngroups; i++) {
        if (i) {
            PUT_LIT(b, ",");
        }
        json_str(b, r->groups[i]);
    }
    PUT_LIT(b, "]");
}

/* {"name": "v"} or {"name": ["v1", "v2"]} for repeated names, in first-seen order. */
void dl_claims_json(struct sbuf *b, const struct decision_record *r)
{
    PUT_LIT(b, "{");
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
        if (!first) {
            PUT_LIT(b, ",");
        }
        first = false;
        json_span(b, r->claims[i].name);
        PUT_LIT(b, ":");
        if (count > 1) {
            PUT_LIT(b, "[");
        }
        size_t k = 0;
        for (size_t j = i; j < r->nclaims; j++) {
            if (str_eq(r->claims[j].name, r->claims[i].name)) {
                if (k++) {
                    PUT_LIT(b, ",");
                }
                json_span(b, r->claims[j].value);
            }
        }
        if (count > 1) {
            PUT_LIT(b, "]");
        }
    }
    PUT_LIT(b, "}");
}

static size_t format_ts(int64_t ts_us, char out[64])
{
    /* Records come thousands a second: the date and time of day are spelled
     * once per second (per thread), the microseconds every time. */
    static __thread int64_t last_s = -1;
    static __thread char prefix[64];
    static __thread size_t prefix_len;
    if (ts_us < 0) {
        ts_us = 0;
    }
    int64_t sec = ts_us / 1000000;
    if (sec != last_s) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        int n = snprintf(prefix, sizeof prefix, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        prefix_len = n > 0 && (size_t)n < sizeof prefix ? (size_t)n : 0;
        last_s = sec;
    }
    size_t n = prefix_len;
    unsigned us = (unsigned)(ts_us % 1000000);
    memcpy(out, prefix, n);
    for (int i = 5; i >= 0; i--) {
        out[n + (size_t)i] = (char)('0' + us % 10);
        us /= 10;
    }
    out[n + 6] = 'Z';
    out[n + 7] = '\0';
    return n + 7;
}

void dl_format_ts(int64_t ts_us, char out[64])
{
    (void)format_ts(ts_us, out);
}

void dl_canonical_at(const struct decision_record *r, uint64_t seq, const char *prev_hash,
                     struct sbuf *b, struct dl_spans *sp)
{
    char ts[64];
    size_t tslen = format_ts(r->ts_us, ts), start = b->len;
    /* Format 2 adds kind, enforced and admin; format 3 (every record a writer with
     * a node name chains) the node, right after seq. An older row (node NULL:
     * format 2; kind NULL too: format 1) keeps its original bytes so that older
     * records still verify. */
    bool v2 = r->kind || r->node;
    if (r->node) {
        PUT_LIT(b, "{\"v\":3,\"seq\":");
        put_u64(b, seq);
        KV_STR(b, "node", r->node);
    } else {
        if (r->kind) {
            PUT_LIT(b, "{\"v\":2,\"seq\":");
        } else {
            PUT_LIT(b, "{\"v\":1,\"seq\":");
        }
        put_u64(b, seq);
    }
    PUT_LIT(b, ",\"ts\":\"");
    sbuf_put(b, ts, tslen);
    PUT_LIT(b, "\"");
    if (v2) {
        KV_STR(b, "kind", r->kind);
    }
    KV_STR(b, "request_id", r->request_id);
    KV_STR(b, "route", r->route);
    KV_STR(b, "decision", r->decision);
    KV_STR(b, "rule", r->rule);
    KV_STR(b, "reason", r->reason);
    KV_STR(b, "user", r->user);
    KV_STR(b, "email", r->email);
    PUT_LIT(b, ",\"groups\":");
    size_t g0 = b->len;
    dl_groups_json(b, r);
    size_t g1 = b->len;
    PUT_LIT(b, ",\"claims\":");
    size_t c0 = b->len;
    dl_claims_json(b, r);
    if (sp) {
        *sp = (struct dl_spans){ g0 - start, g1 - g0, c0 - start, b->len - c0 };
    }
    KV_STR(b, "idp", r->idp);
    KV_STR(b, "session", r->session);
    PUT_LIT(b, ",\"device\":{\"present\":");
    put_bool(b, r->device_present);
    KV_STR(b, "id", r->device_id);
    KV_STR(b, "owner", r->device_owner);
    PUT_LIT(b, ",\"trusted\":");
    put_bool(b, r->device_trusted);
    PUT_LIT(b, "}");
    KV_STR(b, "client_ip", r->client_ip);
    KV_STR(b, "method", r->method);
    KV_STR(b, "host", r->host);
    KV_STR(b, "path", r->path);
    PUT_LIT(b, ",\"shadow\":");
    put_bool(b, r->shadow);
    if (v2) {
        KV_STR(b, "enforced", r->enforced);
    }
    PUT_LIT(b, ",\"opa\":{\"called\":");
    put_bool(b, r->opa_called);
    PUT_LIT(b, ",\"result\":");
    json_str(b, r->opa_result);
    PUT_LIT(b, ",\"ms\":");
    put_u64(b, r->opa_ms);
    PUT_LIT(b, "},\"latency_us\":");
    put_u64(b, r->latency_us);
    if (v2 && !r->admin_action && !r->admin_actor && !r->admin_from && !r->admin_target) {
        PUT_LIT(b, ",\"admin\":null");
    } else if (v2) {
        PUT_LIT(b, ",\"admin\":{\"action\":");
        json_str(b, r->admin_action);
        KV_STR(b, "actor", r->admin_actor);
        KV_STR(b, "from", r->admin_from);
        KV_STR(b, "target", r->admin_target);
        PUT_LIT(b, "}");
    }
    PUT_LIT(b, ",\"prev_hash\":\"");
    sbuf_put(b, prev_hash, strlen(prev_hash));
    PUT_LIT(b, "\"");
}

void dl_canonical(const struct decision_record *r, uint64_t seq, const char *prev_hash,
                  struct sbuf *b)
{
    b->len = 0;
    dl_canonical_at(r, seq, prev_hash, b, NULL);
}

void dl_hash(const char *prev_hash, const char *canon, size_t len, char out[65])
{
    unsigned char md[32];
    const void *parts[] = { prev_hash, canon, "}" };
    const size_t lens[] = { 64, len, 1 };
    digest_sha256(parts, lens, 3, md);
    str_hex(md, 32, out);
}

void dl_line_append(struct sbuf *b, const struct decision_record *r, uint64_t seq, const char *prev,
                    char hash[65], struct dl_spans *sp)
{
    size_t start = b->len;
    dl_canonical_at(r, seq, prev, b, sp);
    dl_hash(prev, b->p + start, b->len - start, hash);
    PUT_LIT(b, ",\"hash\":\"");
    sbuf_put(b, hash, 64);
    PUT_LIT(b, "\"}\n");
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
    return json_is_string(v) ? arena_strndup(a, json_string_value(v), json_string_length(v)) : NULL;
}

bool dl_parse_ts(const char *s, int64_t *out_us)
{
    return parse_ts(s, out_us);
}

/* The string members of a line and the record's fields they fill; in: 0 the
 * record, 1 its "device", 2 its "admin". */
#define LINE_STR(in, key, field)                                                                   \
    {                                                                                              \
        in, key, offsetof(struct decision_record, field)                                           \
    }
static const struct {
    int in;
    const char *key;
    size_t off;
} line_strs[] = {
    LINE_STR(0, "request_id", request_id),
    LINE_STR(0, "route", route),
    LINE_STR(0, "decision", decision),
    LINE_STR(0, "rule", rule),
    LINE_STR(0, "reason", reason),
    LINE_STR(0, "user", user),
    LINE_STR(0, "email", email),
    LINE_STR(0, "idp", idp),
    LINE_STR(0, "session", session),
    LINE_STR(1, "id", device_id),
    LINE_STR(1, "owner", device_owner),
    LINE_STR(0, "client_ip", client_ip),
    LINE_STR(0, "method", method),
    LINE_STR(0, "host", host),
    LINE_STR(0, "path", path),
    LINE_STR(0, "kind", kind),
    LINE_STR(0, "enforced", enforced),
    LINE_STR(2, "action", admin_action),
    LINE_STR(2, "actor", admin_actor),
    LINE_STR(2, "from", admin_from),
    LINE_STR(2, "target", admin_target),
    LINE_STR(0, "node", node),
};
#undef LINE_STR

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
        !json_is_string(ts) || !json_is_object(dev) || !json_is_object(opa) || !json_is_array(g) ||
        !json_is_object(c)) {
        json_decref(o);
        return false;
    }
    struct arena *a = arena_new(0);
    struct decision_record *r = &row->rec;
    row->a = a;
    row->seq = (uint64_t)json_integer_value(seq);
    bool ok = parse_ts(json_string_value(ts), &r->ts_us);
    /* Format 2 adds kind, enforced, admin (a format-1 line has no kind); format 3
     * node. */
    json_t *adm = json_object_get(o, "admin");
    for (size_t i = 0; i < sizeof line_strs / sizeof line_strs[0]; i++) {
        json_t *from = line_strs[i].in == 0 ? o : line_strs[i].in == 1 ? dev : adm;
        *(const char **)(void *)((char *)r + line_strs[i].off) =
            json_is_object(from) ? jstr(from, line_strs[i].key, a) : NULL;
    }
    r->device_present = json_is_true(json_object_get(dev, "present"));
    r->device_trusted = json_is_true(json_object_get(dev, "trusted"));
    r->shadow = json_is_true(json_object_get(o, "shadow"));
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

void dl_row_fini(struct dl_row *row)
{
    arena_free(row->a);
    memset(row, 0, sizeof *row);
}
