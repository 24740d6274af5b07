/* authn/cookie.c - RFC 6265 §5.4 cookie-string parsing (as browsers send it:
 * "a=1; b=2", possibly in several headers) and Set-Cookie formatting with
 * HttpOnly, SameSite=Lax, Path=/, and Secure plus the __Host- prefix on TLS. */
#include "cookie.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

bool cookie_wire_name(const char *base, bool tls, char *buf, size_t n)
{
    int w = snprintf(buf, n, "%s%s", tls ? "__Host-" : "", base);
    return w > 0 && (size_t)w < n;
}

/* RFC 6265 §4.1.1 cookie-octet. */
static bool octet_ok(unsigned char c)
{
    return c == 0x21 || (c >= 0x23 && c <= 0x2b) || (c >= 0x2d && c <= 0x3a) ||
           (c >= 0x3c && c <= 0x5b) || (c >= 0x5d && c <= 0x7e);
}

static bool octet_table[256];

static void octet_table_init(void)
{
    for (unsigned c = 0; c < 256; c++) {
        octet_table[c] = octet_ok((unsigned char)c);
    }
}

static bool value_ok(struct str v)
{
    /* Every request with a session cookie checks its value: a table, built once. */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, octet_table_init);
    for (size_t i = 0; i < v.len; i++) {
        if (!octet_table[(unsigned char)v.p[i]]) {
            return false;
        }
    }
    return true;
}

/* Iterates the pairs of one cookie-string. */
struct pair_iter {
    struct str s;
    size_t pos;
};

static bool next_pair(struct pair_iter *it, struct str *name, struct str *value, bool *has_eq)
{
    while (it->pos < it->s.len) {
        size_t start = it->pos;
        const char *semi = memchr(it->s.p + start, ';', it->s.len - start);
        size_t end = semi ? (size_t)(semi - it->s.p) : it->s.len;
        it->pos = end + 1;
        struct str pair = str_trim((struct str){ it->s.p + start, end - start });
        if (pair.len == 0) {
            continue;
        }
        const char *eq = memchr(pair.p, '=', pair.len);
        *has_eq = eq != NULL;
        if (eq == NULL) {
            *name = pair;
            *value = STR_NULL;
        } else {
            *name = str_trim((struct str){ pair.p, (size_t)(eq - pair.p) });
            *value = str_trim((struct str){ eq + 1, pair.len - (size_t)(eq - pair.p) - 1 });
        }
        return true;
    }
    return false;
}

int cookie_get(const struct str *headers, size_t nheaders, const char *name, struct str *value,
               bool *found, struct err *err)
{
    size_t total = 0;
    *found = false;
    *value = STR_NULL;
    for (size_t h = 0; h < nheaders; h++) {
        total += headers[h].len;
        if (total > COOKIE_MAX_HEADER_BYTES) {
            return err_set(err, ERR_LIMIT, "Cookie header longer than %d bytes",
                           COOKIE_MAX_HEADER_BYTES);
        }
        struct pair_iter it = { headers[h], 0 };
        struct str n, v;
        bool has_eq;
        while (next_pair(&it, &n, &v, &has_eq)) {
            if (!has_eq || !str_eq_cstr(n, name)) {
                continue;
            }
            if (*found) {
                return err_set(err, ERR_PARSE, "duplicate cookie \"%s\"", name);
            }
            if (v.len >= 2 && v.p[0] == '"' && v.p[v.len - 1] == '"') {
                v.p++;
                v.len -= 2;
            }
            if (v.len > COOKIE_MAX_VALUE_BYTES || !value_ok(v)) {
                return err_set(err, ERR_PARSE, "cookie \"%s\" has a malformed value", name);
            }
            *value = v;
            *found = true;
        }
    }
    return 0;
}

char *cookie_format(struct arena *a, const char *name, struct str value, bool tls,
                    int64_t max_age_s)
{
    if (!value_ok(value)) {
        return NULL;
    }
    char age[64] = "";
    if (max_age_s == 0) {
        /* Expires too, for clients that ignore Max-Age=0. */
        snprintf(age, sizeof age, "; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
    } else if (max_age_s > 0) {
        snprintf(age, sizeof age, "; Max-Age=%lld", (long long)max_age_s);
    }
    return arena_printf(a, "%s=%.*s; Path=/%s; HttpOnly; SameSite=Lax%s", name, (int)value.len,
                        value.p ? value.p : "", age, tls ? "; Secure" : "");
}

struct str cookie_strip(struct arena *a, struct str header, const char *const names[])
{
    /* "a;b" becomes "a; b": at most one extra byte per separator. */
    char *out = arena_alloc(a, header.len * 2 + 1);
    size_t o = 0;
    if (out == NULL) {
        return STR_NULL;
    }
    struct pair_iter it = { header, 0 };
    struct str n, v;
    bool has_eq;
    while (next_pair(&it, &n, &v, &has_eq)) {
        bool drop = false;
        for (size_t i = 0; names[i] != NULL && !drop; i++) {
            drop = str_eq_cstr(n, names[i]);
        }
        if (drop) {
            continue;
        }
        if (o > 0) {
            out[o++] = ';';
            out[o++] = ' ';
        }
        size_t plen = has_eq ? (size_t)(v.p + v.len - n.p) : n.len;
        memcpy(out + o, n.p, plen);
        o += plen;
    }
    out[o] = '\0';
    return (struct str){ out, o };
}
