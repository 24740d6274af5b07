/* policy/dl_parse.c - a record line as Gatehouse writes it, read back in one pass.
 *
 * The writer emits a fixed key order (formats 1, 2 and 3: dl_canonical_at) and no
 * whitespace. dl_line_parse_fast expects exactly that order and recognises only
 * what it can decode exactly as jansson would (strict UTF-8, the JSON escapes,
 * surrogate pairs, no \u0000, integers without sign, fraction or leading zero);
 * anything else is left to dl_line_parse (jansson), so that every line the
 * jansson path accepts is still accepted with the same struct dl_row. The
 * record's own strings stay in the line: their closing quotes become NULs, once
 * the whole line is known to be good (a refused line is left as it was). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decision_log_int.h"

/* 1: a byte a plain string run may hold (printable ASCII but '"' and '\\'). */
/* clang-format off */
static const unsigned char plain[256] = {
#define R8(x) x, x, x, x, x, x, x, x
    R8(0), R8(0), R8(0), R8(0), /* 0x00-0x1f */
    1, 1, 0, 1, 1, 1, 1, 1,     /* 0x20-0x27: '"' */
    R8(1), R8(1), R8(1),        /* 0x28-0x3f */
    R8(1), R8(1), R8(1),        /* 0x40-0x57 */
    1, 1, 1, 1, 0, 1, 1, 1,     /* 0x58-0x5f: '\\' */
    R8(1), R8(1), R8(1),        /* 0x60-0x77 */
    1, 1, 1, 1, 1, 1, 1, 0,     /* 0x78-0x7f: DEL (valid JSON, escaped by the writer) */
#undef R8
};
/* clang-format on */

struct cur {
    const char *p, *e;
};

static bool lit(struct cur *c, const char *s, size_t n)
{
    if ((size_t)(c->e - c->p) < n || memcmp(c->p, s, n) != 0) {
        return false;
    }
    c->p += n;
    return true;
}
#define LIT(c, s) lit((c), "" s, sizeof(s) - 1)

static int hexv(unsigned char h)
{
    if (h >= '0' && h <= '9') {
        return h - '0';
    }
    h |= 0x20;
    return h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
}

/* The four hex digits at p (bounds checked by the caller); -1 if not hex. */
static long hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv((unsigned char)p[i]);
        if (h < 0) {
            return -1;
        }
        v = v * 16 + h;
    }
    return v;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), as jansson's
 * utf8_check_first/utf8_check_full accept it; 0 if invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *e)
{
    unsigned c = p[0];
    size_t n;
    uint32_t v;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)(e - p) < n) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        v = (v << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))) ||
        (n == 4 && (v < 0x10000 || v > 0x10ffff))) {
        return 0;
    }
    return n;
}

static char *put_utf8(char *d, uint32_t v)
{
    if (v < 0x80) {
        *d++ = (char)v;
    } else if (v < 0x800) {
        *d++ = (char)(0xc0 | (v >> 6));
        *d++ = (char)(0x80 | (v & 0x3f));
    } else if (v < 0x10000) {
        *d++ = (char)(0xe0 | (v >> 12));
        *d++ = (char)(0x80 | ((v >> 6) & 0x3f));
        *d++ = (char)(0x80 | (v & 0x3f));
    } else {
        *d++ = (char)(0xf0 | (v >> 18));
        *d++ = (char)(0x80 | ((v >> 12) & 0x3f));
        *d++ = (char)(0x80 | ((v >> 6) & 0x3f));
        *d++ = (char)(0x80 | (v & 0x3f));
    }
    return d;
}

/* A string's value: where it starts in the line, its length there, and whether it
 * holds escapes (then it must be decoded) or a raw DEL (then the writer would have
 * escaped it: not the canonical bytes). */
struct jstr {
    const char *s; /* after the opening quote */
    size_t n;      /* up to the closing quote */
    bool esc, del;
};

/* Scans the string at c->p (the opening quote) and validates it as jansson does;
 * false when the fast path does not take it. */
static bool scan_str(struct cur *c, struct jstr *out)
{
    const char *p = c->p, *e = c->e;
    if (p >= e || *p != '"') {
        return false;
    }
    p++;
    out->s = p;
    out->esc = out->del = false;
    for (;;) {
        while (p < e && plain[(unsigned char)*p]) {
            p++;
        }
        if (p >= e) {
            return false;
        }
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            break;
        }
        if (ch == 0x7f) {
            out->del = true;
            p++;
        } else if (ch >= 0x80) {
            size_t n = utf8_len((const unsigned char *)p, (const unsigned char *)e);
            if (!n) {
                return false;
            }
            p += n;
        } else if (ch == '\\') {
            out->esc = true;
            if (e - p < 2) {
                return false;
            }
            switch (p[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p += 2;
                break;
            case 'u': {
                if (e - p < 6) {
                    return false;
                }
                long v = hex4(p + 2);
                if (v <= 0 || (v >= 0xdc00 && v <= 0xdfff)) {
                    return false; /* \u0000, not hex, a lone low surrogate */
                }
                p += 6;
                if (v >= 0xd800 && v <= 0xdbff) {
                    if (e - p < 6 || p[0] != '\\' || p[1] != 'u') {
                        return false;
                    }
                    long lo = hex4(p + 2);
                    if (lo < 0xdc00 || lo > 0xdfff) {
                        return false;
                    }
                    p += 6;
                }
                break;
            }
            default:
                return false;
            }
        } else {
            return false; /* a raw control character */
        }
    }
    out->n = (size_t)(p - out->s);
    c->p = p + 1;
    return true;
}

/* The decoded value of a string that holds escapes (validated by scan_str). */
static char *decode(const struct jstr *j, struct arena *a)
{
    char *out = arena_alloc(a, j->n + 1), *d = out;
    if (!out) {
        return NULL;
    }
    const char *p = j->s, *e = j->s + j->n;
    while (p < e) {
        if (*p != '\\') {
            *d++ = *p++;
            continue;
        }
        char k = p[1];
        p += 2;
        switch (k) {
        case 'b':
            *d++ = '\b';
            break;
        case 'f':
            *d++ = '\f';
            break;
        case 'n':
            *d++ = '\n';
            break;
        case 'r':
            *d++ = '\r';
            break;
        case 't':
            *d++ = '\t';
            break;
        case 'u': {
            uint32_t v = (uint32_t)hex4(p);
            p += 4;
            if (v >= 0xd800 && v <= 0xdbff) {
                uint32_t lo = (uint32_t)hex4(p + 2);
                p += 6;
                v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
            }
            d = put_utf8(d, v);
            break;
        }
        default: /* '"', '\\', '/' */
            *d++ = k;
        }
    }
    *d = '\0';
    return out;
}

/* The parse of one line: the closing quotes to turn into NULs once it is good. */
#define MAX_ENDS 32
struct line {
    struct cur c;
    struct arena *a;
    char *ends[MAX_ENDS];
    size_t nends;
};

/* A string member's value (JSON string; null too when nullable) into *out: in
 * place (the closing quote noted) or decoded into the arena. */
static bool field(struct line *l, const char **out, bool nullable)
{
    if (nullable && LIT(&l->c, "null")) {
        *out = NULL;
        return true;
    }
    struct jstr j;
    if (!scan_str(&l->c, &j)) {
        return false;
    }
    if (j.esc) {
        return (*out = decode(&j, l->a)) != NULL;
    }
    if (l->nends == MAX_ENDS) {
        return false;
    }
    l->ends[l->nends++] = (char *)(uintptr_t)(j.s + j.n);
    *out = j.s;
    return true;
}

/* A string inside groups or claims: a NUL-terminated copy in the arena (the slice
 * itself stays intact, SQLite binds it). *canon: false when its bytes are not the
 * writer's. n: the decoded length. */
static const char *member(struct line *l, bool *canon, size_t *n)
{
    struct jstr j;
    if (!scan_str(&l->c, &j)) {
        return NULL;
    }
    char *s;
    if (j.esc) {
        s = decode(&j, l->a);
        *n = s ? strlen(s) : 0;
    } else {
        s = arena_alloc(l->a, j.n + 1);
        if (s) {
            memcpy(s, j.s, j.n);
            s[j.n] = '\0';
        }
        *n = j.n;
    }
    if (j.esc || j.del) {
        *canon = false;
    }
    return s;
}

/* An unsigned integer as jansson reads one (no sign, no leading zero, no fraction
 * or exponent), up to 18 digits. */
static bool number(struct cur *c, uint64_t *out)
{
    const char *p = c->p;
    uint64_t v = 0;
    size_t n = 0;
    while (p + n < c->e && p[n] >= '0' && p[n] <= '9' && n < 19) {
        v = v * 10 + (uint64_t)(p[n] - '0');
        n++;
    }
    if (n == 0 || n > 18 || (n > 1 && p[0] == '0')) {
        return false;
    }
    p += n;
    if (p < c->e && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9'))) {
        return false;
    }
    c->p = p;
    *out = v;
    return true;
}

static bool boolean(struct cur *c, bool *out)
{
    if (LIT(c, "true")) {
        *out = true;
        return true;
    }
    *out = false;
    return LIT(c, "false");
}

/* Scratch vectors for groups and claims, grown as needed. */
struct vec {
    void *p;
    size_t n, cap, size;
};

static void *vec_push(struct vec *v)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 16;
        v->p = xrealloc(v->p, v->cap * v->size);
    }
    return (char *)v->p + v->n++ * v->size;
}

#define MAX_NAMES 64 /* distinct claim names the fast path compares pairwise */

static bool groups(struct line *l, struct decision_record *r, struct dl_line_json *js,
                   struct vec *gv)
{
    const char *start = l->c.p;
    if (!LIT(&l->c, "[")) {
        return false;
    }
    gv->n = 0;
    if (!LIT(&l->c, "]")) {
        do {
            size_t n;
            const char *s = member(l, &js->canonical, &n);
            if (!s) {
                return false;
            }
            *(const char **)vec_push(gv) = s;
        } while (LIT(&l->c, ","));
        if (!LIT(&l->c, "]")) {
            return false;
        }
    }
    const char **gs = arena_alloc(l->a, (gv->n + 1) * sizeof *gs);
    if (!gs) {
        return false;
    }
    if (gv->n) {
        memcpy(gs, gv->p, gv->n * sizeof *gs);
    }
    gs[gv->n] = NULL;
    r->groups = gs;
    r->ngroups = gv->n;
    js->groups = start;
    js->glen = (size_t)(l->c.p - start);
    return true;
}

static bool claims(struct line *l, struct decision_record *r, struct dl_line_json *js,
                   struct vec *kv)
{
    const char *start = l->c.p;
    if (!LIT(&l->c, "{")) {
        return false;
    }
    kv->n = 0;
    struct str names[MAX_NAMES];
    size_t nnames = 0;
    if (!LIT(&l->c, "}")) {
        do {
            size_t nlen, vlen;
            const char *name = member(l, &js->canonical, &nlen);
            if (!name || !LIT(&l->c, ":") || nnames == MAX_NAMES) {
                return false;
            }
            /* A repeated name: jansson keeps the last value at the first place. */
            struct str nm = { name, nlen };
            for (size_t i = 0; i < nnames; i++) {
                if (str_eq(names[i], nm)) {
                    return false;
                }
            }
            names[nnames++] = nm;
            if (LIT(&l->c, "[")) {
                size_t count = 0;
                if (!LIT(&l->c, "]")) {
                    do {
                        const char *v = member(l, &js->canonical, &vlen);
                        if (!v) {
                            return false;
                        }
                        *(struct policy_kv *)vec_push(kv) = (struct policy_kv){ nm, { v, vlen } };
                        count++;
                    } while (LIT(&l->c, ","));
                    if (!LIT(&l->c, "]")) {
                        return false;
                    }
                }
                if (count < 2) {
                    js->canonical = false; /* the writer spells one value as a string */
                }
            } else {
                const char *v = member(l, &js->canonical, &vlen);
                if (!v) {
                    return false;
                }
                *(struct policy_kv *)vec_push(kv) = (struct policy_kv){ nm, { v, vlen } };
            }
        } while (LIT(&l->c, ","));
        if (!LIT(&l->c, "}")) {
            return false;
        }
    }
    struct policy_kv *out = arena_alloc(l->a, (kv->n + 1) * sizeof *out);
    if (!out) {
        return false;
    }
    if (kv->n) {
        memcpy(out, kv->p, kv->n * sizeof *out);
    }
    memset(&out[kv->n], 0, sizeof *out);
    r->claims = out;
    r->nclaims = kv->n;
    js->claims = start;
    js->clen = (size_t)(l->c.p - start);
    return true;
}

struct dl_fast {
    struct vec gv, kv;
};

struct dl_fast *dl_fast_new(void)
{
    struct dl_fast *f = xcalloc(1, sizeof *f);
    f->gv.size = sizeof(const char *);
    f->kv.size = sizeof(struct policy_kv);
    return f;
}

void dl_fast_free(struct dl_fast *f)
{
    if (f) {
        free(f->gv.p);
        free(f->kv.p);
        free(f);
    }
}

static bool parse(struct line *l, struct dl_row *row, struct dl_line_json *js, struct dl_fast *f)
{
    struct cur *c = &l->c;
    struct decision_record *r = &row->rec;
    uint64_t u;
    /* "v" is not read back (the fields present say the format). */
    if (!LIT(c, "{\"v\":") || c->p >= c->e || *c->p < '1' || *c->p > '9') {
        return false;
    }
    c->p++;
    if (!LIT(c, ",\"seq\":") || !number(c, &row->seq) || row->seq < 1) {
        return false;
    }
    if (LIT(c, ",\"node\":") && !field(l, &r->node, true)) {
        return false;
    }
    struct jstr ts;
    char tsb[28];
    if (!LIT(c, ",\"ts\":\"")) {
        return false;
    }
    c->p--;
    if (!scan_str(c, &ts) || ts.esc || ts.n != 27) {
        return false;
    }
    memcpy(tsb, ts.s, 27);
    tsb[27] = '\0';
    if (!dl_parse_ts(tsb, &r->ts_us)) {
        return false;
    }
    if (LIT(c, ",\"kind\":") && !field(l, &r->kind, true)) {
        return false;
    }
#define F(key, dst) (LIT(c, ",\"" key "\":") && field(l, &r->dst, true))
    if (!F("request_id", request_id) || !F("route", route) || !F("decision", decision) ||
        !F("rule", rule) || !F("reason", reason) || !F("user", user) || !F("email", email) ||
        !LIT(c, ",\"groups\":") || !groups(l, r, js, &f->gv) || !LIT(c, ",\"claims\":") ||
        !claims(l, r, js, &f->kv) || !F("idp", idp) || !F("session", session) ||
        !LIT(c, ",\"device\":{\"present\":") || !boolean(c, &r->device_present) ||
        !F("id", device_id) || !F("owner", device_owner) || !LIT(c, ",\"trusted\":") ||
        !boolean(c, &r->device_trusted) || !LIT(c, "}") || !F("client_ip", client_ip) ||
        !F("method", method) || !F("host", host) || !F("path", path) || !LIT(c, ",\"shadow\":") ||
        !boolean(c, &r->shadow)) {
        return false;
    }
    if (LIT(c, ",\"enforced\":") && !field(l, &r->enforced, true)) {
        return false;
    }
    if (!LIT(c, ",\"opa\":{\"called\":") || !boolean(c, &r->opa_called) ||
        !F("result", opa_result) || !LIT(c, ",\"ms\":") || !number(c, &u)) {
        return false;
    }
    r->opa_ms = (uint32_t)u;
    if (!LIT(c, "},\"latency_us\":") || !number(c, &r->latency_us)) {
        return false;
    }
    if (LIT(c, ",\"admin\":")) {
        if (!LIT(c, "null") && (!LIT(c, "{\"action\":") || !field(l, &r->admin_action, true) ||
                                !F("actor", admin_actor) || !F("from", admin_from) ||
                                !F("target", admin_target) || !LIT(c, "}"))) {
            return false;
        }
    }
#undef F
    const char *prev, *hash;
    if (!LIT(c, ",\"prev_hash\":") || !field(l, &prev, false) || !LIT(c, ",\"hash\":") ||
        !field(l, &hash, false) || !LIT(c, "}") || c->p != c->e) {
        return false;
    }
    row->prev_hash = (char *)(uintptr_t)prev;
    row->hash = (char *)(uintptr_t)hash;
    return true;
}

bool dl_line_parse_fast(char *line, size_t len, struct dl_row *row, struct arena *a,
                        struct dl_line_json *js, struct dl_fast *f)
{
    memset(row, 0, sizeof *row);
    *js = (struct dl_line_json){ .canonical = true };
    struct line l = { .c = { line, line + len }, .a = a };
    if (!parse(&l, row, js, f)) {
        memset(row, 0, sizeof *row);
        return false;
    }
    /* The line is good: its plain strings end where their closing quotes were.
     * (The hashes are compared by length once terminated.) */
    for (size_t i = 0; i < l.nends; i++) {
        *l.ends[i] = '\0';
    }
    if (strlen(row->prev_hash) != 64 || strlen(row->hash) != 64) {
        /* jansson refuses it too; give the line back as it was. */
        for (size_t i = 0; i < l.nends; i++) {
            *l.ends[i] = '"';
        }
        memset(row, 0, sizeof *row);
        return false;
    }
    return true;
}
