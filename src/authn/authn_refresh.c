/* authn/authn_refresh.c - refreshing a session's tokens at the provider when
 * they near expiry, under the fleet's refresh lease so one node refreshes. */
#include "authn.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "authn_int.h"

enum authn_step an_refresh_start(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out, const char *cookie, int64_t token_exp_s)
{
    struct idp *x = an_idp_by_id(an, out->id.idp);
    const struct oidc_metadata *m = x ? atomic_load(&x->meta) : NULL;
    char *rt = NULL;
    if (m == NULL || !session_refresh_claim(an->store, str_from(cookie), req->now_ms, &rt)) {
        return AUTHN_OK; /* someone else refreshes, or nothing to refresh with */
    }
    struct oidc_http h;
    struct err err = { 0 };
    int rc = oidc_refresh_request(x->p, m, rt, req->now_ms / 1000, &h, &err);
    OPENSSL_cleanse(rt, strlen(rt));
    free(rt);
    struct cont *c = rc == 0 ? an_cont_new(a, out, CONT_REFRESH, x) : NULL;
    if (c == NULL) {
        if (rc == 0) {
            oidc_http_fini(&h);
        }
        session_refresh_done(an->store, str_from(cookie), false, false, NULL, 0, NULL, NULL, NULL);
        return AUTHN_OK;
    }
    c->cookie = an_adup(a, cookie);
    if (c->cookie == NULL) {
        oidc_http_fini(&h);
        session_refresh_done(an->store, str_from(cookie), false, false, NULL, 0, NULL, NULL, NULL);
        return AUTHN_OK;
    }
    c->store = an->store;
    an_fill_fetch(a, out, &h);
    struct spg *pg = session_store_pg(an->store);
    char id_hash[65];
    if (pg != NULL && session_cookie_id_hash(str_from(cookie), id_hash)) {
        /* A fleet: one node refreshes (a rotated refresh token redeemed twice
         * would end the session); the others get the new tokens through the
         * change feed. */
        struct err lerr = { 0 };
        struct spg_once_job *j = spg_lease_submit(pg, id_hash, token_exp_s, &lerr);
        if (j == NULL) {
            c->store = NULL;
            out->cont = NULL;
            session_refresh_done(an->store, str_from(cookie), false, false, NULL, 0, NULL, NULL,
                                 NULL);
            return AUTHN_OK; /* the database is out of reach: a later request refreshes */
        }
        c->token_fetch = out->fetch;
        c->kind = CONT_ONCE;
        c->once = j;
        c->once_next = ONCE_NEXT_REFRESH;
        out->wait.fd = spg_once_fd(j);
        out->wait.timeout_ms = spg_query_timeout_ms(pg);
        return AUTHN_NEED_WAIT;
    }
    return AUTHN_NEED_FETCH;
}

/* After the fleet's refresh lease: this node refreshes, or leaves it (and
 * keeps serving the session as it is). */
enum authn_step an_refresh_leased(struct authn *an, const struct authn_req *req,
                                  struct authn_out *out, struct cont *c)
{
    const char *why = NULL;
    if (spg_once_state(c->once, &why) == SPG_ONCE_FRESH) {
        c->kind = CONT_REFRESH;
        out->fetch = c->token_fetch;
        return AUTHN_NEED_FETCH;
    }
    c->store = NULL;
    out->cont = NULL;
    session_refresh_done(an->store, str_from(c->cookie), false, false, NULL, 0, NULL, NULL, NULL);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "session refresh left to another node%s%s",
             why[0] ? ": " : "", why);
    return AUTHN_OK;
}

enum authn_step an_refresh_finish(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, struct cont *c, int status,
                                  struct str body)
{
    struct idp *x = c->idp;
    c->store = NULL; /* answered: every path below ends the claim */
    struct jwks *k = an_jwks_get(x);
    struct oidc_tokens t;
    struct err err = { 0 };
    int rc = oidc_token_response(x->p, k, status, body, NULL, req->now_ms / 1000, &t, &err);
    jwks_unref(k);
    if (rc != 0) {
        /* A 400 from the token endpoint (invalid_grant: the IdP ended the
         * grant) ends the session too. Anything else (IdP down, 5xx): keep the
         * session, try again on a later request. */
        bool ended = status == 400;
        out->idp_error = true;
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "session refresh at %s failed: %s%s",
                 x->p->id, status == 0 ? "identity provider unreachable" : err.msg,
                 ended ? " (session ended)" : "");
        session_refresh_done(an->store, str_from(c->cookie), false, ended, NULL, 0, NULL, NULL,
                             NULL);
        if (ended) {
            memset(&out->id, 0, sizeof out->id);
            return AUTHN_OK; /* anonymous now: the route's policy decides */
        }
        return AUTHN_OK;
    }
    const char *email = NULL, *name = NULL;
    struct authn_attrs *attrs = NULL;
    struct oidc_identity id = { 0 };
    if (t.id_claims != NULL) {
        /* OIDC Core 12.2: the refreshed ID token must be about the same user. */
        if (oidc_identity_build(x->p, t.id_claims, NULL, &id, &err) != 0 ||
            strcmp(id.user_key, out->id.user_key) != 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL,
                     "session refresh at %s: the new ID token names another user "
                     "(session ended)",
                     x->p->id);
            out->idp_error = true;
            session_refresh_done(an->store, str_from(c->cookie), false, true, NULL, 0, NULL, NULL,
                                 NULL);
            oidc_identity_fini(&id);
            oidc_tokens_fini(&t);
            memset(&out->id, 0, sizeof out->id);
            return AUTHN_OK; /* anonymous now: the route's policy decides */
        }
        email = id.email;
        name = id.name;
        /* The new groups, parsed once here; the claims stay the session's. */
        attrs =
            attrs_parse(id.attrs->groups_json, out->id.attrs ? out->id.attrs->claims_json : NULL);
    }
    int64_t exp = t.expires_at_s ? t.expires_at_s : t.id_exp_s;
    session_refresh_done(an->store, str_from(c->cookie), true, false, t.refresh_token, exp, email,
                         name, attrs);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "session refreshed at %s%s", x->p->id,
             t.refresh_token ? " (refresh token rotated)" : "");
    bool held = true;
    if (attrs != NULL) {
        held = attrs_hold(a, attrs);
        out->id.attrs = held ? attrs : NULL;
        out->id.email = an_adup(a, email);
        out->id.name = an_adup(a, name);
    }
    attrs_unref(attrs);
    oidc_identity_fini(&id);
    oidc_tokens_fini(&t);
    return held ? AUTHN_OK : an_internal_error(an, req, a, out);
}
