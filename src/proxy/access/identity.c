/* proxy/access/identity.c - the policy input: the identity (identify.c) and the
 * request as policies, OPA and the decision log see them. */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access_int.h"

/* An identity with more groups or claim values than this is refused (fail
 * closed) rather than evaluated on a truncated list. */
#define MAX_GROUPS 4096
#define MAX_CLAIMS 4096

/* What a parse produces: the lists and whether they are complete. */
struct parsed {
    struct arena *a;
    struct str *groups;
    size_t ngroups;
    struct policy_kv *claims;
    size_t nclaims;
    bool incomplete;
};

struct str access_host_only(struct str h)
{
    if (h.len && h.p[0] == '[') {
        const char *end = memchr(h.p, ']', h.len);
        return end ? (struct str){ h.p + 1, (size_t)(end - h.p - 1) } : h;
    }
    const char *colon = memchr(h.p, ':', h.len);
    return colon ? (struct str){ h.p, (size_t)(colon - h.p) } : h;
}

/* Token mechanics, not facts about the user: kept out of policy input and
 * the decision log. */
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

/* The string value of a claim (strings, booleans, integers), or NULL. */
static const char *claim_text(json_t *v, char num[32])
{
    if (json_is_string(v)) {
        return json_string_value(v);
    }
    if (json_is_boolean(v)) {
        return json_is_true(v) ? "true" : "false";
    }
    if (json_is_integer(v)) {
        snprintf(num, 32, "%lld", (long long)json_integer_value(v));
        return num;
    }
    return NULL;
}

/* Adds one (name, value) claim pair to q (arena copies). */
static bool claim_add(struct parsed *q, const char *k, const char *v)
{
    char *kk = arena_strdup(q->a, k), *vv = arena_strdup(q->a, v);
    if (!kk || !vv) {
        return false;
    }
    q->claims[q->nclaims++] = (struct policy_kv){ str_from(kk), str_from(vv) };
    return true;
}

/* Claims as (name, value) pairs for the policy input; an array claim gives
 * one pair per string element. Sets ident_incomplete when they cannot all be
 * kept, so that a rule never sees a truncated list. */
static void claims_from_json(struct parsed *q, const char *json)
{
    json_t *o, *v, *it;
    const char *k;
    size_t n = 0, i;
    char num[32];

    if (!json || !(o = json_loads(json, 0, NULL))) {
        return;
    }
    json_object_foreach(o, k, v)
    {
        n += json_is_array(v) ? json_array_size(v) : 1;
    }
    q->claims = n <= MAX_CLAIMS ? arena_alloc(q->a, (n ? n : 1) * sizeof *q->claims) : NULL;
    if (!q->claims) {
        q->incomplete = true;
        json_decref(o);
        return;
    }
    json_object_foreach(o, k, v)
    {
        if (is_protocol_claim(k)) {
            continue;
        }
        if (json_is_array(v)) {
            json_array_foreach(v, i, it)
            {
                if (json_is_string(it) && !claim_add(q, k, json_string_value(it))) {
                    q->incomplete = true;
                }
            }
            continue;
        }
        const char *s = claim_text(v, num);
        if (s && !claim_add(q, k, s)) {
            q->incomplete = true;
        }
    }
    json_decref(o);
}

static void groups_from_json(struct parsed *q, const char *json)
{
    json_t *arr, *it;
    size_t i, n;

    if (!json || !(arr = json_loads(json, 0, NULL))) {
        return;
    }
    n = json_is_array(arr) ? json_array_size(arr) : 0;
    q->groups = n <= MAX_GROUPS ? arena_alloc(q->a, (n ? n : 1) * sizeof *q->groups) : NULL;
    if (!q->groups) {
        q->incomplete = true;
        json_decref(arr);
        return;
    }
    json_array_foreach(arr, i, it)
    {
        if (json_is_string(it)) {
            char *s = arena_strdup(q->a, json_string_value(it));
            if (!s) {
                q->incomplete = true;
                break;
            }
            q->groups[q->ngroups++] = str_from(s);
        }
    }
    json_decref(arr);
}

/* Parsed groups and claims of recently seen identities, per worker thread. A
 * signed-in user's requests carry the same JSON texts again and again, and
 * parsing them with jansson was the largest single cost of a policy check.
 * Entries are keyed by the exact texts, so a refreshed session (new groups)
 * simply misses; a hit copies the strings into the request's arena, so a
 * suspended request never points into an entry that was replaced since. */
#define IDCACHE_SLOTS 128

struct idcache_span {
    uint32_t off, len;
};

struct idcache_entry {
    uint64_t hash;
    char *key; /* groups JSON, a NUL, claims JSON (malloc'd) */
    size_t key_len;
    char *buf; /* the strings, back to back (malloc'd) */
    size_t buf_len;
    size_t ngroups, nclaims;
    struct idcache_span *groups;      /* ngroups (malloc'd) */
    struct idcache_span *claim_spans; /* 2 * nclaims: name, value (malloc'd) */
};

/* One table per worker thread, freed when the thread ends. */
static pthread_key_t idcache_key;
static pthread_once_t idcache_once = PTHREAD_ONCE_INIT;

static void idcache_free(void *arg)
{
    struct idcache_entry *t = arg;
    for (size_t i = 0; t && i < IDCACHE_SLOTS; i++) {
        free(t[i].key);
        free(t[i].buf);
        free(t[i].groups);
        free(t[i].claim_spans);
    }
    free(t);
}

static bool idcache_ok; /* false: the process is out of thread keys; parse uncached */

static void idcache_key_init(void)
{
    idcache_ok = pthread_key_create(&idcache_key, idcache_free) == 0;
}

static struct idcache_entry *idcache_table(void)
{
    pthread_once(&idcache_once, idcache_key_init);
    if (!idcache_ok) {
        return NULL;
    }
    struct idcache_entry *t = pthread_getspecific(idcache_key);
    if (!t) {
        t = xcalloc(IDCACHE_SLOTS, sizeof *t);
        if (pthread_setspecific(idcache_key, t) != 0) {
            free(t);
            return NULL;
        }
    }
    return t;
}

static struct str span_in(const char *base, struct idcache_span sp)
{
    return (struct str){ base + sp.off, sp.len };
}

/* Copies s to buf at *off and returns where it went. */
static struct idcache_span span_add(char *buf, size_t *off, struct str s)
{
    memcpy(buf + *off, s.p, s.len);
    struct idcache_span sp = { (uint32_t)*off, (uint32_t)s.len };
    *off += s.len;
    return sp;
}

static void idcache_put(struct idcache_entry *e, const struct parsed *q, uint64_t hash,
                        const char *g, size_t gl, const char *c, size_t cl)
{
    size_t key_len = gl + 1 + cl;
    size_t len = 0, off = 0;

    for (size_t i = 0; i < q->ngroups; i++) {
        len += q->groups[i].len;
    }
    for (size_t i = 0; i < q->nclaims; i++) {
        len += q->claims[i].name.len + q->claims[i].value.len;
    }
    free(e->key);
    free(e->buf);
    free(e->groups);
    free(e->claim_spans);
    e->groups = xcalloc(q->ngroups ? q->ngroups : 1, sizeof *e->groups);
    e->claim_spans = xcalloc(q->nclaims ? 2 * q->nclaims : 1, sizeof *e->claim_spans);
    e->hash = hash;
    e->key = xmalloc(key_len);
    memcpy(e->key, g, gl + 1);
    memcpy(e->key + gl + 1, c, cl);
    e->key_len = key_len;
    e->buf = xmalloc(len ? len : 1);
    e->buf_len = len;
    for (size_t i = 0; i < q->ngroups; i++) {
        e->groups[i] = span_add(e->buf, &off, q->groups[i]);
    }
    for (size_t i = 0; i < q->nclaims; i++) {
        e->claim_spans[2 * i] = span_add(e->buf, &off, q->claims[i].name);
        e->claim_spans[2 * i + 1] = span_add(e->buf, &off, q->claims[i].value);
    }
    e->ngroups = q->ngroups;
    e->nclaims = q->nclaims;
}

/* Fills q's groups (and claims, when claims_json is not NULL) from the
 * identity's JSON texts, through the per-thread cache. */
static void identity_parse(struct parsed *q, const char *groups_json, const char *claims_json)
{
    const char *g = groups_json ? groups_json : "", *c = claims_json ? claims_json : "";
    size_t gl = strlen(g), cl = strlen(c);
    size_t key_len = gl + 1 + cl;
    uint64_t hash = str_hash(str_hash(STR_HASH_SEED, g, gl), c, cl);
    struct idcache_entry *e;

    struct idcache_entry *table = idcache_table();
    if (!table) {
        groups_from_json(q, groups_json);
        if (claims_json) {
            claims_from_json(q, claims_json);
        }
        return;
    }
    e = &table[hash % IDCACHE_SLOTS];
    if (e->key && e->hash == hash && e->key_len == key_len && memcmp(e->key, g, gl + 1) == 0 &&
        memcmp(e->key + gl + 1, c, cl) == 0) {
        char *buf = arena_alloc(q->a, e->buf_len ? e->buf_len : 1);
        q->groups = arena_alloc(q->a, (e->ngroups ? e->ngroups : 1) * sizeof *q->groups);
        q->claims = arena_alloc(q->a, (e->nclaims ? e->nclaims : 1) * sizeof *q->claims);
        if (!buf || !q->groups || !q->claims) {
            q->incomplete = true;
            return;
        }
        memcpy(buf, e->buf, e->buf_len);
        for (size_t i = 0; i < e->ngroups; i++) {
            q->groups[i] = span_in(buf, e->groups[i]);
        }
        for (size_t i = 0; i < e->nclaims; i++) {
            q->claims[i] = (struct policy_kv){ span_in(buf, e->claim_spans[2 * i]),
                                               span_in(buf, e->claim_spans[2 * i + 1]) };
        }
        q->ngroups = e->ngroups;
        q->nclaims = e->nclaims;
        return;
    }
    groups_from_json(q, groups_json);
    if (claims_json) {
        claims_from_json(q, claims_json);
    }
    if (!q->incomplete) {
        idcache_put(e, q, hash, g, gl, c, cl);
    }
}

bool identity_to_input(const struct identity *id, const struct request *r, bool want_claims,
                       struct policy_input *in)
{
    struct parsed q = { .a = r->arena };

    in->authenticated = id->authenticated;
    in->user = str_from(id->user);
    in->email = str_from(id->email);
    in->idp = str_from(id->idp);
    in->session = str_from(id->session);
    if (id->authenticated && id->authn) {
        identity_parse(&q, id->authn->groups_json, want_claims ? id->authn->claims_json : NULL);
        in->groups = q.groups;
        in->ngroups = q.ngroups;
        in->claims = q.claims;
        in->nclaims = q.nclaims;
    }
    /* The device: what the certificate and the registry say, live. */
    const struct identity_device *d = &id->device;
    in->device = (struct policy_device){ 0 };
    if (d->present) {
        in->device = (struct policy_device){ .present = true,
                                             .trusted = d->trusted,
                                             .id = str_from(d->id),
                                             .owner = str_from(d->owner),
                                             .subject = str_from(d->subject),
                                             .issuer = str_from(d->issuer),
                                             .serial = str_from(d->serial),
                                             .fingerprint = str_from(d->fingerprint),
                                             .san = str_from(d->san) };
    }
    policy_ip_parse(str_from(r->client_ip), &in->client_ip);
    in->method = r->method;
    in->host = access_host_only(r->hostname);
    in->path = r->path;
    struct policy_kv *hdrs = arena_alloc(r->arena, (r->nheaders ? r->nheaders : 1) * sizeof *hdrs);
    if (hdrs) {
        for (size_t i = 0; i < r->nheaders; i++) {
            hdrs[i] = (struct policy_kv){ r->headers[i].name, r->headers[i].value };
        }
        in->headers = hdrs;
        in->nheaders = r->nheaders;
    }
    in->time_s = (int64_t)time(NULL);
    in->route = str_from(r->route ? r->route->name : NULL);
    return !q.incomplete;
}
