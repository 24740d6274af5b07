/* authn/authn_fetch.c - what a continuation waits for: fetches the proxy
 * performs (provider discovery, key sets), the per-provider caches of their
 * answers, the pacing of a key set re-fetch on an unknown kid (at most once per
 * jwks_refresh_min_interval), and the fleet one-time-value waits (a state, a
 * SAML assertion id, a logout token used once across every node). */
#include "authn.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "authn_int.h"

void an_fill_fetch(struct arena *a, struct authn_out *out, struct oidc_http *h)
{
    out->fetch.method = h->method;
    out->fetch.url = an_adup(a, h->url);
    size_t k = 0;
    for (size_t i = 0; i < 4 && h->headers[i] != NULL; i++) {
        out->fetch.headers[k++] = an_adup(a, h->headers[i]);
    }
    out->fetch.headers[k] = NULL;
    out->fetch.body = an_adup(a, h->body);
    out->fetch.body_len = h->body ? strlen(h->body) : 0;
    oidc_http_fini(h);
}

/* Queues key (a one-time value) on the fleet's database for cont c, which
 * becomes CONT_ONCE; the caller returns AUTHN_NEED_WAIT. False (logged) when
 * the node knows the database is out of reach: the caller fails closed. */
bool an_once_submit(const struct authn_req *req, struct authn_out *out, struct spg *pg,
                    struct cont *c, const char *key, int64_t exp_s, enum once_next next)
{
    unsigned char h[32];
    codec_sha256(key, strlen(key), h);
    struct err err = { 0 };
    struct spg_once_job *j = spg_once_submit(pg, h, exp_s, &err);
    if (j == NULL) {
        log_emit(LOG_ERROR, MOD, req->request_id, NULL, "one-time value not checked, refused: %s",
                 err.msg);
        return false;
    }
    spg_once_release(c->once);
    c->kind = CONT_ONCE;
    c->once = j;
    c->once_next = (int)next;
    memcpy(c->once_h, h, 32);
    out->wait.fd = spg_once_fd(j);
    out->wait.timeout_ms = spg_query_timeout_ms(pg);
    return true;
}

/* The fleet's answer for c: 1 first use, 0 used before, -1 not checked. */
int an_once_verdict(const struct authn_req *req, const struct cont *c)
{
    const char *why = NULL;
    int state = spg_once_state(c->once, &why);
    if (state == SPG_ONCE_FRESH || state == SPG_ONCE_USED) {
        return state == SPG_ONCE_FRESH;
    }
    log_emit(LOG_ERROR, MOD, req->request_id, NULL, "one-time value not checked, refused: %s", why);
    return -1;
}

enum authn_step an_fetch_get(struct arena *a, struct authn_out *out, const char *url)
{
    out->fetch.method = "GET";
    out->fetch.url = an_adup(a, url);
    out->fetch.headers[0] = "Accept: application/json";
    out->fetch.headers[1] = NULL;
    out->fetch.body = NULL;
    out->fetch.body_len = 0;
    return AUTHN_NEED_FETCH;
}

enum authn_step an_need_discovery(struct arena *a, struct authn_out *out, struct idp *x)
{
    struct oidc_http h;
    oidc_discovery_request(x->p, &h);
    an_fill_fetch(a, out, &h);
    return AUTHN_NEED_FETCH;
}

/* Stores the discovery answer. Returns false (reason set) when it is unusable. */
bool an_take_discovery(struct idp *x, int status, struct str body, struct authn_out *out)
{
    struct err err = { 0 };
    struct oidc_metadata *m = oidc_metadata_parse(x->p, status, body, &err);
    if (m == NULL) {
        snprintf(out->reason, sizeof out->reason, "discovery at %s failed: %s", x->p->id,
                 status == 0 ? "identity provider unreachable" : err.msg);
        return false;
    }
    struct oidc_metadata *expected = NULL;
    if (!atomic_compare_exchange_strong(&x->meta, &expected, m)) {
        oidc_metadata_free(m); /* another worker got there first */
    }
    return true;
}

struct jwks *an_jwks_get(struct idp *x)
{
    pthread_mutex_lock(&x->mu);
    struct jwks *k = x->jwks ? jwks_ref(x->jwks) : NULL;
    pthread_mutex_unlock(&x->mu);
    return k;
}

bool an_take_jwks(struct idp *x, int status, struct str body, int64_t now_ms, struct authn_out *out)
{
    struct err err = { 0 };
    if (status != 200) {
        snprintf(out->reason, sizeof out->reason, "JWKS fetch at %s failed: %s", x->p->id,
                 status == 0 ? "unreachable" : "HTTP error");
        return false;
    }
    struct jwks *k = jwks_parse(body, &err);
    if (k == NULL) {
        snprintf(out->reason, sizeof out->reason, "JWKS at %s unusable: %s", x->p->id, err.msg);
        return false;
    }
    pthread_mutex_lock(&x->mu);
    struct jwks *old = x->jwks;
    x->jwks = k;
    x->jwks_fetched_ms = now_ms;
    pthread_mutex_unlock(&x->mu);
    jwks_unref(old);
    return true;
}

/* On an unknown kid, may we fetch the key set again now? Claims the slot. */
static bool jwks_refetch_allowed(struct idp *x, int64_t now_ms)
{
    bool ok = false;
    pthread_mutex_lock(&x->mu);
    if (now_ms - x->jwks_fetched_ms >= (int64_t)x->p->jwks_refresh_min_interval_ms) {
        x->jwks_fetched_ms = now_ms; /* one refetch per interval, across workers */
        ok = true;
    }
    pthread_mutex_unlock(&x->mu);
    return ok;
}

/* The provider's metadata and key set for continuation c: true with *k (a
 * reference the caller drops) when both are at hand; else false with *st the
 * fetch to perform first, c resuming at disc (metadata) or jwks (key set). */
static bool keys_ready(struct arena *a, struct authn_out *out, struct cont *c, enum cont_kind disc,
                       enum cont_kind jwks, struct jwks **k, enum authn_step *st)
{
    struct idp *x = c->idp;
    if (atomic_load(&x->meta) == NULL) {
        c->kind = disc;
        *st = an_need_discovery(a, out, x);
        return false;
    }
    *k = an_jwks_get(x);
    if (*k == NULL) {
        c->kind = jwks;
        *st = an_fetch_get(a, out, atomic_load(&x->meta)->jwks_uri);
        return false;
    }
    return true;
}

/* A token signed with a key the set does not have (rotated at the IdP): fetch
 * the set again, once per continuation and per refresh interval; c resumes
 * at kind. false: no refetch now (the token is refused). */
bool an_jwks_refetch(struct arena *a, struct authn_out *out, struct cont *c, int64_t now_ms,
                     enum cont_kind kind)
{
    if (c->jwks_refetched || !jwks_refetch_allowed(c->idp, now_ms)) {
        return false;
    }
    c->jwks_refetched = true;
    c->kind = kind;
    an_fetch_get(a, out, atomic_load(&c->idp->meta)->jwks_uri);
    return true;
}

/* Runs check with c's provider's keys: its metadata and key set are fetched
 * first when missing (c resumes at disc or jwks), and the key set once more
 * on an unknown kid. true with *rc what check said; false with *st the fetch. */
bool an_check_with_keys(struct authn *an, const struct authn_req *req, struct arena *a,
                        struct authn_out *out, struct cont *c, enum cont_kind disc,
                        enum cont_kind jwks, token_check_fn *check, void *res, int *rc,
                        struct err *err, enum authn_step *st)
{
    struct jwks *k = NULL;
    if (!keys_ready(a, out, c, disc, jwks, &k, st)) {
        return false;
    }
    *rc = check(an, req, c, k, res, err);
    jwks_unref(k);
    if (*rc == ERR_NOTFOUND && an_jwks_refetch(a, out, c, req->now_ms, jwks)) {
        *st = AUTHN_NEED_FETCH;
        return false;
    }
    return true;
}

/* A one-time value: 1 first use, 0 used before, -1 not checked (a fleet's
 * database that did not answer: the caller fails closed). On a fleet's
 * database the answer comes off the loop: 2 with *st = AUTHN_NEED_WAIT (or an
 * error step), and the calling step, run again by authn_resume, finds it in
 * out->cont. */
int an_once_gate(struct authn *an, const struct authn_req *req, struct arena *a,
                 struct authn_out *out, const char *key, int64_t exp_s, enum authn_step *st)
{
    int64_t now_s = req->now_ms / 1000;
    struct spg *pg = session_store_pg(an->store);
    if (pg == NULL) {
        return session_once_check(an->store, str_from(key), exp_s, now_s);
    }
    unsigned char h[32];
    codec_sha256(key, strlen(key), h);
    struct cont *c = out->cont;
    if (c != NULL && c->kind == CONT_ONCE && c->once != NULL && memcmp(c->once_h, h, 32) == 0) {
        out->cont = NULL;
        return an_once_verdict(req, c);
    }
    c = an_cont_new(a, out, CONT_ONCE, NULL);
    if (c == NULL) {
        *st = an_internal_error(an, req, a, out);
        return 2;
    }
    if (!an_once_submit(req, out, pg, c, key, exp_s, ONCE_NEXT_SAML_ACS)) {
        out->cont = NULL;
        return -1;
    }
    *st = AUTHN_NEED_WAIT;
    return 2;
}
