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
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

#ifdef __SSE2__
/* The bytes of v that a JSON string must escape, one bit each. */
static inline unsigned escapes16(__m128i v)
{
    __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v); /* < 0x20 */
    __m128i q = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
    __m128i bs = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
    __m128i del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(ctl, q), _mm_or_si128(bs, del)));
}
#endif

/* Under AddressSanitizer the short-string read below (up to 15 bytes past a string,
 * within its page) would be reported: those builds take the general path. */
#if defined(__SANITIZE_ADDRESS__)
#define DL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DL_ASAN 1
#endif
#endif
#ifndef DL_ASAN
#define DL_ASAN 0
#endif

/* The string's bytes from i on, d being where byte i goes, then the closing quote.
 * Runs without escapes are copied whole. Bytes >= 0x80 pass through: the input is
 * UTF-8 or is recorded as given; control characters are escaped so that a line stays
 * one line. */
static char *w_jstrn_from(char *d, const char *s, size_t n, size_t i)
{
    static const char hex[] = "0123456789abcdef";
#ifdef __SSE2__
    /* Sixteen bytes at a time while none needs escaping, the last sixteen read again
     * at n - 16 (never past the string); the rest goes through the loop below. */
    if (n >= 16) {
        for (; i + 16 <= n; i += 16) {
            __m128i v = _mm_loadu_si128((const void *)(s + i));
            if (escapes16(v)) {
                break;
            }
            _mm_storeu_si128((void *)(d + i), v);
        }
        if (i < n && i + 16 > n) {
            __m128i v = _mm_loadu_si128((const void *)(s + n - 16));
            if (!escapes16(v)) {
                _mm_storeu_si128((void *)(d + n - 16), v);
                i = n;
            }
        }
        d += i;
    }
#endif
    while (i < n) {
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
    return d;
}

/* A JSON string of n bytes written at d (room for JSTR_MAX(n) bytes made by the
 * caller); returns the end. A string shorter than 16 bytes is read as 16 bytes from its
 * page, the bytes past it masked off, and stored whole (the room covers it). */
static inline __attribute__((always_inline)) char *w_jstrn(char *d, const char *s, size_t n)
{
    *d++ = '"';
#if defined(__SSE2__) && !DL_ASAN
    if (n < 16 && ((uintptr_t)s & 4095) <= 4096 - 16) {
        __m128i v = _mm_loadu_si128((const void *)s);
        if (!(escapes16(v) & ((1u << n) - 1))) {
            _mm_storeu_si128((void *)d, v);
            d[n] = '"';
            return d + n + 1;
        }
    }
#endif
    return w_jstrn_from(d, s, n, 0);
}

/* The room w_jstrn needs for n bytes: every byte escaped as \u00XX, the quotes, and
 * sixteen bytes for a short string stored whole. */
#define JSTR_MAX(n) (6 * (n) + 2 + 16)

static void json_strn(struct sbuf *b, const char *s, size_t n)
{
    char *d = sbuf_room(b, JSTR_MAX(n));
    b->len += (size_t)(w_jstrn(d, s, n) - d);
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

/* ,"key":"value" (key: a literal without characters to escape). */
#define KV_STR(b, key, v)                                                                          \
    do {                                                                                           \
        PUT_LIT(b, ",\"" key "\":");                                                               \
        json_str(b, v);                                                                            \
    } while (0)

static void put_u64(struct sbuf *b, uint64_t v)
{
    char tmp[STR_U64_MAX];
    struct str d = str_u64(tmp, v);
    sbuf_put(b, d.p, d.len);
}

/* ---- cursor writers: the caller has made room for the most they write ---- */

#define W_LIT(d, lit) ((void)memcpy((d), "" lit, sizeof(lit) - 1), (d) += sizeof(lit) - 1)

/* A JSON string, or null for NULL (n: its length). */
static char *w_str(char *d, const char *s, size_t n)
{
    if (!s) {
        W_LIT(d, "null");
        return d;
    }
    return w_jstrn(d, s, n);
}

static char *w_u64(char *d, uint64_t v)
{
    char tmp[STR_U64_MAX];
    struct str x = str_u64(tmp, v);
    memcpy(d, x.p, x.len);
    return d + x.len;
}

static char *w_bool(char *d, bool v)
{
    if (v) {
        W_LIT(d, "true");
    } else {
        W_LIT(d, "false");
    }
    return d;
}

/* A claim's name or value: up to its first NUL, as the C string it is copied to. */
static size_t span_len(struct str s)
{
    return s.p ? strnlen(s.p, s.len) : 0;
}

static size_t groups_max(const struct decision_record *r)
{
    size_t n = 2;
    for (size_t i = 0; i < r->ngroups; i++) {
        n += (r->groups[i] ? JSTR_MAX(strlen(r->groups[i])) : 4) + 1;
    }
    return n;
}

static char *w_groups(char *d, const struct decision_record *r)
{
    *d++ = '[';
    for (size_t i = 0; i < r->ngroups; i++) {
        if (i) {
            *d++ = ',';
        }
        const char *g = r->groups[i];
        d = w_str(d, g, g ? strlen(g) : 0);
    }
    *d++ = ']';
    return d;
}

static size_t claims_max(const struct decision_record *r)
{
    size_t n = 2;
    for (size_t i = 0; i < r->nclaims; i++) {
        n += JSTR_MAX(span_len(r->claims[i].name)) + JSTR_MAX(span_len(r->claims[i].value)) + 4;
    }
    return n;
}

/* {"name": "v"} or {"name": ["v1", "v2"]} for repeated names, in first-seen order. */
static char *w_claims(char *d, const struct decision_record *r)
{
    *d++ = '{';
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
            *d++ = ',';
        }
        first = false;
        struct str nm = r->claims[i].name;
        d = w_jstrn(d, nm.p ? nm.p : "", span_len(nm));
        *d++ = ':';
        if (count > 1) {
            *d++ = '[';
        }
        size_t k = 0;
        for (size_t j = i; j < r->nclaims; j++) {
            if (str_eq(r->claims[j].name, r->claims[i].name)) {
                if (k++) {
                    *d++ = ',';
                }
                struct str v = r->claims[j].value;
                d = w_jstrn(d, v.p ? v.p : "", span_len(v));
            }
        }
        if (count > 1) {
            *d++ = ']';
        }
    }
    *d++ = '}';
    return d;
}

void dl_groups_json(struct sbuf *b, const struct decision_record *r)
{
    char *d = sbuf_room(b, groups_max(r));
    b->len += (size_t)(w_groups(d, r) - d);
    b->p[b->len] = '\0';
}

void dl_claims_json(struct sbuf *b, const struct decision_record *r)
{
    char *d = sbuf_room(b, claims_max(r));
    b->len += (size_t)(w_claims(d, r) - d);
    b->p[b->len] = '\0';
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

/* The record's fields, from ,"ts" to the admin object: the part of the canonical
 * bytes that does not depend on the chain. v2: format 2 or later (kind, enforced
 * and admin present). sp (may be NULL) gets the spans, counted from start. */
static void canonical_fields(const struct decision_record *r, bool v2, struct sbuf *b, size_t start,
                             struct dl_spans *sp)
{
    enum {
        KIND,
        RID,
        ROUTE,
        DECISION,
        RULE,
        REASON,
        USER,
        EMAIL,
        IDP,
        SESSION,
        DEV_ID,
        DEV_OWNER,
        IP,
        METHOD,
        HOST,
        PATH,
        ENFORCED,
        OPA,
        A_ACTION,
        A_ACTOR,
        A_FROM,
        A_TARGET,
        NF
    };
    const char *const f[NF] = { r->kind,       r->request_id,  r->route,        r->decision,
                                r->rule,       r->reason,      r->user,         r->email,
                                r->idp,        r->session,     r->device_id,    r->device_owner,
                                r->client_ip,  r->method,      r->host,         r->path,
                                r->enforced,   r->opa_result,  r->admin_action, r->admin_actor,
                                r->admin_from, r->admin_target };
    size_t len[NF];
    /* One reservation for the worst case: the keys, time and numbers fit in 1 KiB. */
    size_t max = 1024 + groups_max(r) + claims_max(r);
    for (size_t i = 0; i < NF; i++) {
        len[i] = f[i] ? strlen(f[i]) : 0;
        max += JSTR_MAX(len[i]) + 4;
    }
    char *d0 = sbuf_room(b, max), *d = d0;
#define KV(key, i)                                                                                 \
    do {                                                                                           \
        W_LIT(d, ",\"" key "\":");                                                                 \
        d = w_str(d, f[i], len[i]);                                                                \
    } while (0)
    W_LIT(d, ",\"ts\":\"");
    d += format_ts(r->ts_us, d);
    *d++ = '"';
    if (v2) {
        KV("kind", KIND);
    }
    KV("request_id", RID);
    KV("route", ROUTE);
    KV("decision", DECISION);
    KV("rule", RULE);
    KV("reason", REASON);
    KV("user", USER);
    KV("email", EMAIL);
    W_LIT(d, ",\"groups\":");
    size_t g0 = b->len + (size_t)(d - d0) - start;
    d = w_groups(d, r);
    size_t g1 = b->len + (size_t)(d - d0) - start;
    W_LIT(d, ",\"claims\":");
    size_t c0 = b->len + (size_t)(d - d0) - start;
    d = w_claims(d, r);
    if (sp) {
        *sp = (struct dl_spans){ g0, g1 - g0, c0, b->len + (size_t)(d - d0) - start - c0 };
    }
    KV("idp", IDP);
    KV("session", SESSION);
    W_LIT(d, ",\"device\":{\"present\":");
    d = w_bool(d, r->device_present);
    KV("id", DEV_ID);
    KV("owner", DEV_OWNER);
    W_LIT(d, ",\"trusted\":");
    d = w_bool(d, r->device_trusted);
    *d++ = '}';
    KV("client_ip", IP);
    KV("method", METHOD);
    KV("host", HOST);
    KV("path", PATH);
    W_LIT(d, ",\"shadow\":");
    d = w_bool(d, r->shadow);
    if (v2) {
        KV("enforced", ENFORCED);
    }
    W_LIT(d, ",\"opa\":{\"called\":");
    d = w_bool(d, r->opa_called);
    W_LIT(d, ",\"result\":");
    d = w_str(d, f[OPA], len[OPA]);
    W_LIT(d, ",\"ms\":");
    d = w_u64(d, r->opa_ms);
    W_LIT(d, "},\"latency_us\":");
    d = w_u64(d, r->latency_us);
    if (v2 && !r->admin_action && !r->admin_actor && !r->admin_from && !r->admin_target) {
        W_LIT(d, ",\"admin\":null");
    } else if (v2) {
        W_LIT(d, ",\"admin\":{\"action\":");
        d = w_str(d, f[A_ACTION], len[A_ACTION]);
        KV("actor", A_ACTOR);
        KV("from", A_FROM);
        KV("target", A_TARGET);
        *d++ = '}';
    }
#undef KV
    b->len += (size_t)(d - d0);
    b->p[b->len] = '\0';
}

/* {"v":3,"seq":N,"node":"..." (format 3: the node that chained the record). */
static void head_v3(struct sbuf *b, uint64_t seq, const char *node)
{
    PUT_LIT(b, "{\"v\":3,\"seq\":");
    put_u64(b, seq);
    KV_STR(b, "node", node);
}

void dl_canonical_at(const struct decision_record *r, uint64_t seq, const char *prev_hash,
                     struct sbuf *b, struct dl_spans *sp)
{
    size_t start = b->len;
    /* Format 2 adds kind, enforced and admin; format 3 (every record a writer with
     * a node name chains) the node, right after seq. An older row (node NULL:
     * format 2; kind NULL too: format 1) keeps its original bytes so that older
     * records still verify. */
    if (r->node) {
        head_v3(b, seq, r->node);
    } else {
        if (r->kind) {
            PUT_LIT(b, "{\"v\":2,\"seq\":");
        } else {
            PUT_LIT(b, "{\"v\":1,\"seq\":");
        }
        put_u64(b, seq);
    }
    canonical_fields(r, r->kind || r->node, b, start, sp);
    PUT_LIT(b, ",\"prev_hash\":\"");
    sbuf_put(b, prev_hash, strlen(prev_hash));
    PUT_LIT(b, "\"");
}

void dl_body_append(struct sbuf *b, const struct decision_record *r, struct dl_spans *sp)
{
    canonical_fields(r, true, b, b->len, sp);
}

void dl_line_from_body(struct sbuf *b, uint64_t seq, const char *node, const char *body,
                       size_t blen, const struct dl_spans *bsp, const char *prev, char hash[65],
                       struct dl_spans *sp)
{
    size_t start = b->len;
    head_v3(b, seq, node);
    size_t head = b->len - start;
    /* The body, the chain's part and room for the hash in one reservation. */
    static const char ph[] = ",\"prev_hash\":\"", hk[] = "\",\"hash\":\"";
    const size_t phn = sizeof ph - 1, hkn = sizeof hk - 1;
    char *d = sbuf_room(b, blen + phn + 64 + hkn + 64 + 3);
    memcpy(d, body, blen);
    memcpy(d + blen, ph, phn);
    memcpy(d + blen + phn, prev, 64);
    d[blen + phn + 64] = '"';
    b->len += blen + phn + 64 + 1;
    dl_hash(prev, b->p + start, b->len - start, hash);
    d = b->p + b->len - 1; /* the closing quote of prev_hash is hk's first byte */
    memcpy(d, hk, hkn);
    memcpy(d + hkn, hash, 64);
    memcpy(d + hkn + 64, "\"}\n", 3);
    b->len += hkn + 64 + 3 - 1;
    b->p[b->len] = '\0';
    if (sp && bsp) {
        *sp = (struct dl_spans){ bsp->groups_off + head, bsp->groups_len, bsp->claims_off + head,
                                 bsp->claims_len };
    }
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
