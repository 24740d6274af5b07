/* authn/attrs.c - the groups and claims of an identity, parsed once (see
 * struct authn_attrs in authn.h). One block per identity: the lists, the
 * strings they point into, and the stored JSON texts, freed with the last
 * reference. */
#include "attrs.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct block {
    struct authn_attrs pub; /* first: a struct authn_attrs * is a struct block * */
    _Atomic size_t refs;
    char *groups_json, *claims_json, *cnf_x5t;
    struct str *groups;
    struct authn_claim *claims;
    char *buf; /* every group and claim string, back to back, NUL-terminated */
    size_t buf_len, buf_cap;
};

/* Token mechanics, not facts about the user: kept out of the claims list. */
static bool is_protocol_claim(const char *k)
{
    static const char *const skip[] = { "iss",   "aud",     "exp",    "iat",       "nbf",
                                        "nonce", "at_hash", "c_hash", "auth_time", "azp",
                                        "jti",   "sid",     "s_hash", NULL };
    for (size_t i = 0; skip[i]; i++) {
        if (strcmp(k, skip[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* The text of a claim value kept in the list (strings, booleans, integers),
 * or NULL for anything else (objects, reals, null). */
static const char *claim_text(const json_t *v, char num[32], enum authn_claim_type *type)
{
    if (json_is_string(v)) {
        *type = AUTHN_CLAIM_STRING;
        return json_string_value(v);
    }
    if (json_is_boolean(v)) {
        *type = AUTHN_CLAIM_BOOL;
        return json_is_true(v) ? "true" : "false";
    }
    if (json_is_integer(v)) {
        *type = AUTHN_CLAIM_INT;
        snprintf(num, 32, "%lld", (long long)json_integer_value(v));
        return num;
    }
    return NULL;
}

/* Pass one sizes buf (b->buf NULL), pass two fills it: the spans stay valid
 * because buf is never reallocated after pass one. */
static struct str keep(struct block *b, const char *s)
{
    size_t n = strlen(s);
    struct str out = { b->buf ? b->buf + b->buf_len : NULL, n };
    if (b->buf) {
        memcpy(b->buf + b->buf_len, s, n + 1);
    }
    b->buf_len += n + 1;
    return out;
}

static void add_claim(struct block *b, const char *k, const char *v, enum authn_claim_type t)
{
    struct str name = keep(b, k), value = keep(b, v);
    if (b->claims) {
        b->claims[b->pub.nclaims] = (struct authn_claim){ name, value, t };
    }
    b->pub.nclaims++;
}

/* Walks groups and claims: counts (pass one) or fills (pass two). */
static void walk(struct block *b, const json_t *groups, const json_t *claims)
{
    const char *k;
    json_t *v, *it;
    size_t i;
    char num[32];
    enum authn_claim_type t;

    b->buf_len = 0;
    b->pub.ngroups = b->pub.nclaims = 0;
    if (!b->pub.groups_overflow) {
        json_array_foreach(groups, i, it)
        {
            if (json_is_string(it)) {
                struct str g = keep(b, json_string_value(it));
                if (b->groups) {
                    b->groups[b->pub.ngroups] = g;
                }
                b->pub.ngroups++;
            }
        }
    }
    if (b->pub.claims_overflow || !json_is_object(claims)) {
        return;
    }
    json_object_foreach((json_t *)claims, k, v)
    {
        if (is_protocol_claim(k)) {
            continue;
        }
        if (json_is_array(v)) {
            json_array_foreach(v, i, it)
            {
                if (json_is_string(it)) {
                    add_claim(b, k, json_string_value(it), AUTHN_CLAIM_STRING);
                }
            }
            continue;
        }
        const char *s = claim_text(v, num, &t);
        if (s) {
            add_claim(b, k, s, t);
        }
    }
}

/* RFC 8705: the certificate thumbprint a bearer token is bound to. */
static void read_cnf(struct block *b, const json_t *claims)
{
    json_t *cnf = json_is_object(claims) ? json_object_get(claims, "cnf") : NULL;
    json_t *t = json_is_object(cnf) ? json_object_get(cnf, "x5t#S256") : NULL;
    if (cnf && !json_is_object(cnf)) {
        b->pub.cnf_error = "the token's cnf claim is not an object";
    } else if (t && !json_is_string(t)) {
        b->pub.cnf_error = "the token's cnf.x5t#S256 is not a string";
    } else if (t) {
        b->cnf_x5t = xstrdup(json_string_value(t));
        b->pub.cnf_x5t = b->cnf_x5t;
    }
}

static struct authn_attrs *build(const json_t *groups, const json_t *claims, char *groups_json,
                                 char *claims_json)
{
    struct block *b = xcalloc(1, sizeof *b);
    size_t nclaims = 0;
    const char *k;
    json_t *v;

    atomic_init(&b->refs, 1);
    b->groups_json = groups_json;
    b->claims_json = claims_json;
    b->pub.groups_json = groups_json;
    b->pub.claims_json = claims_json;
    /* An identity over the limits keeps no list at all and says so: a rule
     * must never see a truncated one. */
    b->pub.groups_overflow = json_array_size(groups) > AUTHN_MAX_GROUPS;
    if (json_is_object(claims)) {
        json_object_foreach((json_t *)claims, k, v)
        {
            nclaims += json_is_array(v) ? json_array_size(v) : 1;
        }
    }
    b->pub.claims_overflow = nclaims > AUTHN_MAX_CLAIMS;
    walk(b, groups, claims); /* pass one: sizes */
    b->buf = xmalloc(b->buf_len ? b->buf_len : 1);
    b->groups = xcalloc(b->pub.ngroups ? b->pub.ngroups : 1, sizeof *b->groups);
    b->claims = xcalloc(b->pub.nclaims ? b->pub.nclaims : 1, sizeof *b->claims);
    walk(b, groups, claims); /* pass two: fills */
    b->pub.groups = b->groups;
    b->pub.claims = b->claims;
    read_cnf(b, claims);
    return &b->pub;
}

static char *dumps_or(const json_t *v, const char *dflt)
{
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    return s ? s : xstrdup(dflt);
}

struct authn_attrs *attrs_from_json(const json_t *groups, const json_t *claims)
{
    return build(groups, claims, dumps_or(json_is_array(groups) ? groups : NULL, "[]"),
                 dumps_or(json_is_object(claims) ? claims : NULL, "{}"));
}

struct authn_attrs *attrs_parse(const char *groups_json, const char *claims_json)
{
    json_error_t jerr;
    const char *gt = groups_json ? groups_json : "[]", *ct = claims_json ? claims_json : "{}";
    json_t *g = json_loads(gt, 0, &jerr), *c = json_loads(ct, 0, &jerr);
    struct authn_attrs *x =
        build(json_is_array(g) ? g : NULL, json_is_object(c) ? c : NULL, xstrdup(gt), xstrdup(ct));
    json_decref(g);
    json_decref(c);
    return x;
}

struct authn_attrs *attrs_ref(const struct authn_attrs *x)
{
    struct block *b = (struct block *)x;
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return &b->pub;
}

void attrs_unref(const struct authn_attrs *x)
{
    struct block *b = (struct block *)x;
    if (b == NULL || atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    void *owned[] = { b->groups_json, b->claims_json, b->cnf_x5t, b->groups, b->claims, b->buf, b };
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) {
        free(owned[i]);
    }
}

static void hold_release(void *arg)
{
    attrs_unref(arg);
}

bool attrs_hold(struct arena *a, const struct authn_attrs *x)
{
    if (arena_defer(a, hold_release, (void *)x) != 0) {
        return false;
    }
    attrs_ref(x);
    return true;
}
