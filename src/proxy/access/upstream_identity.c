/* proxy/access/upstream_identity.c - forward with identity: what the backend
 * receives about the caller (identity headers, the signed assertion) and what
 * it must never receive from the client (forged identity headers, Gatehouse's
 * own cookies). */
#include <string.h>

#include "access_int.h"
#include "proxy/http.h"

static bool is_tls(const struct request *r)
{
    return r->scheme && strcmp(r->scheme, "https") == 0;
}

/* Claims are text from the IdP, often typed by users: a CR or LF in a header
 * value would inject headers towards the backend. Control bytes become spaces.
 * The span's length comes from the same scan. */
static struct str header_safe(struct arena *a, const char *v)
{
    size_t i = 0;
    while (v[i] && (unsigned char)v[i] >= 0x20 && v[i] != 0x7f) {
        i++;
    }
    if (!v[i]) {
        return (struct str){ v, i };
    }
    char *s = arena_strdup(a, v);
    if (!s) {
        return STR_NULL;
    }
    for (; s[i]; i++) {
        if (((unsigned char)s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f) {
            s[i] = ' ';
        }
    }
    return (struct str){ s, i };
}

/* Appends an identity header for the backend. The first call makes room for
 * all of them (user, email, groups, device, assertion), so no call copies the
 * array. */
#define IDENTITY_HEADERS 5

static bool add_header_raw(struct request *r, const char *name, struct str value)
{
    if (r->nup_headers % IDENTITY_HEADERS == 0) {
        struct header *h = arena_alloc(r->arena, (r->nup_headers + IDENTITY_HEADERS) * sizeof *h);
        if (!h) {
            return false;
        }
        if (r->nup_headers) {
            memcpy(h, r->up_headers, r->nup_headers * sizeof *h);
        }
        r->up_headers = h;
    }
    r->up_headers[r->nup_headers++] = (struct header){ str_from(name), value };
    return true;
}

/* A header whose value comes from the IdP: neutralised first. */
static bool add_header(struct request *r, const char *name, const char *value)
{
    if (!value) {
        return true;
    }
    struct str v = header_safe(r->arena, value);
    return v.p && add_header_raw(r, name, v);
}

/* Removes client-sent copies of configured identity headers and Gatehouse's own
 * cookies from what reaches the backend. X-Gatehouse-* goes by prefix in http.c.
 * A name compares as a backend reads it: "X_Auth_User" is X-Auth-User to CGI,
 * WSGI, PHP and Rack (even on a route with headers.allow_underscores). */
void upstream_scrub(struct request *r, const struct access_conf *g)
{
    const char *ahdr = authn_assertion_header(g->an);
    struct str assertion = str_from(ahdr), strip[sizeof g->strip / sizeof g->strip[0]];
    size_t nstrip = 0, out = 0;

    /* The names' lengths once per request, not once per header. */
    while (nstrip < sizeof strip / sizeof strip[0] && g->strip[nstrip]) {
        strip[nstrip] = str_from(g->strip[nstrip]);
        nstrip++;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        struct header h = r->headers[i];
        bool drop = ahdr && http_name_alike(h.name, assertion);
        for (size_t j = 0; j < nstrip; j++) {
            if (http_name_alike(h.name, strip[j])) {
                drop = true;
            }
        }
        if (!drop && str_ieq(h.name, STR("cookie"))) {
            h.value = authn_strip_cookies(g->an, h.value, is_tls(r), r->arena);
            drop = h.value.len == 0;
        }
        if (!drop) {
            r->headers[out++] = h;
        }
    }
    r->nheaders = out;
}

/* Must this byte of a group name be percent-encoded in the groups header? The
 * header is a comma-separated list, so ',' and the escape '%' itself are;
 * control bytes (a header cannot carry them); and a space at either end of the
 * name (list parsers trim it). */
static bool group_byte_escaped(const struct str g, size_t i)
{
    unsigned char c = (unsigned char)g.p[i];
    return c == ',' || c == '%' || c < 0x20 || c == 0x7f ||
           (c == ' ' && (i == 0 || i + 1 == g.len));
}

/* X-Gatehouse-Groups: the group names joined by ',', each percent-encoded
 * where group_byte_escaped says so; empty names are left out. Split on ','
 * and percent-decode each item to get the names back exactly. */
static char *groups_csv(struct arena *a, const struct policy_input *in)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = 0;
    for (size_t i = 0; i < in->ngroups; i++) {
        len += in->groups[i].len * 3 + 1;
    }
    char *s = arena_alloc(a, len + 1), *p = s;
    if (!s) {
        return NULL;
    }
    for (size_t i = 0; i < in->ngroups; i++) {
        struct str g = in->groups[i];
        if (g.len == 0) {
            continue;
        }
        if (p != s) {
            *p++ = ',';
        }
        for (size_t k = 0; k < g.len; k++) {
            if (group_byte_escaped(g, k)) {
                unsigned char c = (unsigned char)g.p[k];
                *p++ = '%';
                *p++ = hex[c >> 4];
                *p++ = hex[c & 15];
            } else {
                *p++ = g.p[k];
            }
        }
    }
    *p = '\0';
    return s;
}

bool upstream_identity(struct request *r, const struct access_conf *g, const struct identity *id,
                       const struct policy_input *in)
{
    /* The device header and the assertion's device claim name a trusted device only. */
    const char *device = id->device.trusted ? id->device.id : NULL;

    if (device && !add_header(r, g->hdr_device, device)) {
        return false;
    }
    if (!id->authenticated) {
        return true;
    }
    if (!add_header(r, g->hdr_user, id->user) || !add_header(r, g->hdr_email, id->email) ||
        !add_header(r, g->hdr_groups, groups_csv(r->arena, in))) {
        return false;
    }
    const char *hdr = authn_assertion_header(g->an);
    if (hdr && id->authn) {
        const char *jwt = authn_assertion(g->an, id->authn, r->route->name, device,
                                          access_wall_us() / 1000, r->arena);
        if (!jwt) {
            return false; /* authn logged why */
        }
        return add_header_raw(r, hdr,
                              str_from(jwt)); /* base64url and dots: nothing to neutralise */
    }
    return true;
}
