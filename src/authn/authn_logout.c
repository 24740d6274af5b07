/* authn/authn_logout.c - signing out: the sign-out form and its token, the
 * RP-initiated logout at the provider, the SAML single logout endpoint, the
 * signed-out page, switch-user, and OIDC back-channel logout. */
#include "authn.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "authn_int.h"

/* ---- logout ----------------------------------------------------------- */

static enum authn_step signed_out_page(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out)
{
    const char *host = arena_strndup(a, req->host.p ? req->host.p : "", req->host.len);
    if (host == NULL) {
        return an_internal_error(an, req, a, out);
    }
    struct page_var v[] = { { "host", host }, { "sign_in_url", "/.gatehouse/login" } };
    return page_answer(a, out, PAGE_SIGNED_OUT, v, 2, NULL);
}

/* The sign-out form's token: an HMAC of the session cookie under the
 * process's login key, so only a page that Gatehouse rendered for this very
 * session can submit the sign-out. */
static const char *logout_token(const struct authn *an, struct arena *a, struct str cookie)
{
    static const char label[] = "gatehouse-logout-v1:";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    struct sbuf b = { 0 };
    codec_buf_add(&b, label, sizeof label - 1);
    codec_buf_add(&b, cookie.p, cookie.len);
    unsigned char *ok =
        HMAC(EVP_sha256(), an->login_key, 32, (const unsigned char *)b.p, b.len, md, &mdlen);
    OPENSSL_cleanse(b.p, b.len);
    codec_buf_fini(&b);
    if (ok == NULL || mdlen != 32) {
        return NULL;
    }
    char *t = codec_b64url_encode(md, 32);
    const char *out = an_adup(a, t);
    free(t);
    return out;
}

/* A state-changing POST from this origin only: Sec-Fetch-Site (sent by every
 * current browser) must say same-origin, and an Origin header must be ours.
 * Clients that send neither still need the session-bound token. */
static bool same_origin_post(const struct authn_req *req, const char **why)
{
    if (req->sec_fetch_site.len > 0 && !str_ieq_cstr(req->sec_fetch_site, "same-origin")) {
        *why = "Sec-Fetch-Site is not same-origin";
        return false;
    }
    /* "Origin: null" is what a no-referrer page sends for its own forms; with
     * Sec-Fetch-Site same-origin it says nothing more. */
    bool null_origin = str_eq_cstr(req->origin, "null") && req->sec_fetch_site.len > 0;
    if (req->origin.len > 0 && !null_origin &&
        !(req->request_origin != NULL && str_ieq_cstr(req->origin, req->request_origin)) &&
        !(req->public_origin != NULL && str_ieq_cstr(req->origin, req->public_origin))) {
        *why = "Origin is another site";
        return false;
    }
    return true;
}

#define SIGNOUT_AAD "gatehouse-signout-v1"

/* The IdP answered a sign-out: did the user end their session there too, or
 * answer "No, stay signed in"? The return looks the same either way; a
 * prompt=none authorization request tells. The sealed cookie set with the
 * logout request (signout_cookie) names the provider and the state. */
enum authn_step an_signed_out(struct authn *an, const struct authn_req *req, struct arena *a,
                              struct authn_out *out)
{
    const char *state = an_query_value(a, req->query, "state");
    const char *cname = an_login_cookie_name(an, req->tls);
    struct str v = STR_NULL;
    bool found = false;
    struct err err = { 0 };
    if (state == NULL || cname == NULL || !an_on_public_host(req) ||
        cookie_get(req->cookies, req->ncookies, cname, &v, &found, &err) != 0 || !found) {
        return signed_out_page(an, req, a, out);
    }
    size_t n = 0;
    char *pt = codec_unseal(an->login_key, SIGNOUT_AAD, v, &n);
    json_error_t jerr;
    json_t *j = pt ? json_loadb(pt, n, 0, &jerr) : NULL;
    free(pt);
    const char *idp = json_string_value(json_object_get(j, "p"));
    const char *s = json_string_value(json_object_get(j, "s"));
    json_t *e = json_object_get(j, "e");
    struct idp *x = an_idp_by_id(an, idp);
    bool ok = x != NULL && s != NULL && json_is_integer(e) &&
              req->now_ms / 1000 < (int64_t)json_integer_value(e) &&
              codec_ct_eq(str_from(s), str_from(state)) && atomic_load(&x->meta) != NULL;
    json_decref(j);
    if (!ok) {
        an_add_header(out, "Set-Cookie", cookie_format(a, cname, STR(""), req->tls, 0));
        return signed_out_page(an, req, a, out);
    }
    /* Replaces the sign-out cookie with the login cookie of the check. */
    return an_login_redirect(an, req, a, out, x, "/", "none");
}

static const char *signout_cookie(const struct authn *an, const struct authn_req *req,
                                  struct arena *a, const char *idp, const char *state)
{
    json_t *j = json_pack("{s:s, s:s, s:I}", "p", idp, "s", state, "e",
                          (json_int_t)(req->now_ms / 1000 + OIDC_LOGIN_TTL_S));
    char *pt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    char *sealed = pt ? codec_seal(an->login_key, SIGNOUT_AAD, pt, strlen(pt)) : NULL;
    free(pt);
    const char *cname = an_login_cookie_name(an, req->tls);
    const char *sc = sealed && cname
                         ? cookie_format(a, cname, str_from(sealed), req->tls, OIDC_LOGIN_TTL_S)
                         : NULL;
    free(sealed);
    return sc;
}

static enum authn_step logout_refused(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out, const char *why)
{
    an_set_reason(out, "sign-out refused: %s", why);
    return an_error_page(an, req, a, out, 403, "Sign-out refused",
                         "This sign-out did not come from Gatehouse's own sign-out page. You are "
                         "still signed in; use the Sign out button to sign out.");
}

/* GET /.gatehouse/logout: the confirmation page (nothing ends on a GET). */
static enum authn_step logout_confirm(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out,
                                      const struct session_view *sv, struct str cookie)
{
    const char *host = arena_strndup(a, req->host.p ? req->host.p : "", req->host.len);
    if (host == NULL) {
        return an_internal_error(an, req, a, out);
    }
    const char *token = logout_token(an, a, cookie);
    const char *user = sv->email ? sv->email : sv->name ? sv->name : sv->user_key;
    struct page_var v[] = { { "host", host }, { "user", user }, { "csrf_token", token } };
    if (token == NULL) {
        return an_internal_error(an, req, a, out);
    }
    /* Never in a frame on another site (a click there would be a sign-out): every
     * answer of Gatehouse's own carries frame-ancestors 'none' and
     * X-Frame-Options: DENY (request_respond). */
    return page_answer(a, out, PAGE_LOGOUT, v, 3, NULL);
}

/* SAML single logout (SP-initiated): the LogoutRequest URL for a session of
 * a SAML IdP with a SingleLogoutService, or NULL. */
static const char *saml_logout_location(struct authn *an, struct arena *a, const char *idp_id,
                                        const struct authn_attrs *attrs, const char *sid)
{
    struct saml_idp *sx = NULL;
    for (size_t i = 0; idp_id != NULL && i < an->nsaml; i++) {
        if (strcmp(saml_idp_id(an->saml[i]), idp_id) == 0) {
            sx = an->saml[i];
        }
    }
    if (sx == NULL || attrs == NULL) {
        return NULL;
    }
    const char *name_id = NULL;
    for (size_t i = 0; i < attrs->nclaims && name_id == NULL; i++) {
        if (str_eq_cstr(attrs->claims[i].name, "nameid")) {
            name_id = attrs->claims[i].value.p;
        }
    }
    char *url = saml_logout_url(sx, name_id, sid);
    const char *loc = an_adup(a, url);
    free(url);
    return loc;
}

/* /.gatehouse/saml/slo: the IdP's LogoutRequest ends the sessions it names
 * and the browser goes back with our LogoutResponse; the IdP's
 * LogoutResponse to ours ends at the signed-out page. */
static enum authn_step signed_out_page(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out);

enum authn_step saml_slo_endpoint(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out)
{
    enum authn_step st;
    if (!saml_endpoint_ready(an, req, a, out, "GET", SAML_NEXT_SLO, &st)) {
        return st;
    }
    struct saml_slo o;
    struct err err = { 0 };
    if (saml_slo(an->saml, an->nsaml, req->query, req->now_ms / 1000, &o, &err) != 0) {
        an_set_reason(out, "SAML logout refused: %s", err.msg);
        return an_error_page(an, req, a, out, 400, "Sign-out failed",
                             "This sign-out request could not be accepted.");
    }
    if (o.is_response) {
        log_emit(LOG_INFO, MOD, req->request_id, NULL, "SAML logout answered by %s",
                 saml_idp_id(o.idp));
        saml_slo_fini(&o);
        return signed_out_page(an, req, a, out);
    }
    const char *idp_id = saml_idp_id(o.idp);
    size_t n = o.session_index ? session_revoke_sid(an->store, idp_id, o.session_index)
                               : session_revoke_user(an->store, o.user_key);
    out->event = AUTHN_EV_LOGOUT;
    out->nlogouts = n;
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "SAML logout from %s ended %zu session(s)",
             idp_id, n);
    const char *sname = session_cookie_name(an, req->tls);
    an_add_header(out, "Set-Cookie", sname ? cookie_format(a, sname, STR(""), req->tls, 0) : NULL);
    const char *loc = an_adup(a, o.reply_url);
    saml_slo_fini(&o);
    return loc ? an_redirect(out, loc) : signed_out_page(an, req, a, out);
}

enum authn_step logout_endpoint(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out)
{
    bool post = str_eq_cstr(req->method, "POST");
    if (!post && !str_eq_cstr(req->method, "GET") && !str_eq_cstr(req->method, "HEAD")) {
        an_add_header(out, "Allow", "GET, POST");
        return an_respond(out, 405, "text/plain; charset=utf-8", NULL, 0);
    }
    const char *why = NULL;
    if (post && !same_origin_post(req, &why)) {
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "cross-site sign-out refused from %s: %s",
                 req->client_ip ? req->client_ip : "?", why);
        return logout_refused(an, req, a, out, why);
    }
    const char *sname = session_cookie_name(an, req->tls);
    struct str v;
    bool found = false;
    struct err err = { 0 };
    struct session_view sv;
    bool valid = false;
    const struct authn_attrs *saml_attrs = NULL;
    const char *saml_sid = NULL;
    if (an->store != NULL && sname != NULL &&
        cookie_get(req->cookies, req->ncookies, sname, &v, &found, &err) == 0 && found) {
        valid = session_lookup(an->store, v, req->now_ms, a, &sv) == SESSION_VALID;
    }
    if (!post) {
        /* Nothing to end: say so (a GET never ends anything). */
        return valid ? logout_confirm(an, req, a, out, &sv, v) : signed_out_page(an, req, a, out);
    }
    if (found) {
        struct str raw;
        bool dup = false;
        char *given = codec_form_get(req->body, "csrf_token", &raw, &dup) && !dup
                          ? codec_url_decode(raw, NULL)
                          : NULL;
        const char *want = logout_token(an, a, v);
        bool ok = given != NULL && want != NULL && codec_ct_eq(str_from(given), str_from(want));
        free(given);
        if (!ok) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL,
                     "sign-out refused from %s: missing or wrong csrf_token",
                     req->client_ip ? req->client_ip : "?");
            return logout_refused(an, req, a, out, "missing or wrong csrf_token");
        }
    }
    char *hint = NULL;
    const char *idp_id = NULL;
    if (found) {
        if (valid) {
            an_identity_from_view(out, &sv, a);
            idp_id = sv.idp;
            saml_attrs = sv.attrs;
            saml_sid = sv.sid;
            hint = session_id_token(an->store, v);
            out->event = AUTHN_EV_LOGOUT;
            out->nlogouts = 1;
            if (sv.sid != NULL) {
                /* The IdP's back-channel logout for this sid follows and finds
                 * no session left: remember that it ended here, so that token
                 * is not widened to every session of the user (bcl_continue's
                 * fallback to sub). */
                char *k = arena_printf(a, "ended-sid:%s#%s", sv.idp, sv.sid);
                int64_t now_s = req->now_ms / 1000;
                if (k != NULL) {
                    (void)oidc_replay_check_and_add(an->replay, str_from(k), now_s + 3600, now_s);
                }
            }
            log_emit(LOG_INFO, MOD, req->request_id, NULL, "signed out %s",
                     out->id.sub ? out->id.sub : sv.user_key);
        }
        session_revoke_cookie(an->store, v);
    }
    const char *clear = sname ? cookie_format(a, sname, STR(""), req->tls, 0) : NULL;
    an_add_header(out, "Set-Cookie", clear);
    const char *saml_loc = saml_logout_location(an, a, idp_id, saml_attrs, saml_sid);
    if (saml_loc != NULL) {
        free(hint);
        /* 303: the browser follows a POST's answer with a GET. */
        return an_redirect_with(out, 303, saml_loc);
    }
    struct idp *x = an_idp_by_id(an, idp_id);
    const struct oidc_metadata *m = x ? atomic_load(&x->meta) : NULL;
    if (m != NULL && m->end_session_endpoint != NULL) {
        /* RP-initiated logout: back to the signed-out page of the origin the
         * user is on, when that URI is one of the configured (registered)
         * post_logout_redirect_uri; otherwise the IdP's own page. */
        const char *want = req->public_origin
                               ? arena_printf(a, "%s/.gatehouse/signed-out", req->public_origin)
                               : NULL;
        const char *post_uri = oidc_post_logout_uri(x->p, want);
        if (post_uri == NULL && x->p->npost_logout_redirect_uris > 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL,
                     "post-logout return %s is not among identity provider %s's "
                     "post_logout_redirect_uri: none sent",
                     want ? want : "(no public origin)", x->p->id);
        }
        char *url = oidc_logout_url(x->p, m, hint, post_uri);
        const char *loc = an_adup(a, url);
        free(url);
        if (loc != NULL && post_uri != NULL) {
            /* A state to recognise the IdP's answer (see signed_out). */
            unsigned char rnd[16];
            char *st =
                codec_rand_bytes(rnd, sizeof rnd) ? codec_b64url_encode(rnd, sizeof rnd) : NULL;
            const char *sc = st ? signout_cookie(an, req, a, x->p->id, st) : NULL;
            if (sc != NULL) {
                loc = arena_printf(a, "%s&state=%s", loc, st);
                an_add_header(out, "Set-Cookie", sc);
            }
            free(st);
        }
        if (hint != NULL) {
            OPENSSL_cleanse(hint, strlen(hint));
            free(hint);
        }
        if (loc == NULL) {
            return an_internal_error(an, req, a, out);
        }
        /* 303: the browser follows a POST's answer with a GET. */
        return an_redirect_with(out, 303, loc);
    }
    if (hint != NULL) {
        OPENSSL_cleanse(hint, strlen(hint));
        free(hint);
    }
    return signed_out_page(an, req, a, out);
}

/* ---- "Sign in as someone else" ---------------------------------------- */

const char *authn_switch_user_url(struct arena *a, struct str target)
{
    if (!oidc_return_path_safe(target)) {
        target = STR("/");
    }
    struct sbuf b = { 0 };
    codec_buf_adds(&b, "/.gatehouse/login?prompt=select_account&rd=");
    codec_buf_add_urlenc(&b, target);
    const char *out = arena_strndup(a, b.p ? b.p : "", b.len);
    codec_buf_fini(&b);
    return out;
}

static char *bcl_once_key(const struct idp *x, const struct authn_req *req, int64_t *exp_s);
static enum authn_step bcl_end(struct authn *an, const struct authn_req *req, struct authn_out *out,
                               const struct idp *x, const char *sid, const char *sub);

/* The logout token's sid and sub (malloc'd, either may be NULL). */
struct bcl_ids {
    char *sid, *sub;
};

static int bcl_check(struct authn *an, const struct authn_req *req, struct cont *c,
                     const struct jwks *k, void *res, struct err *err)
{
    struct bcl_ids *ids = res;
    return oidc_logout_token_verify(c->idp->p, k, req->body, an->replay, req->now_ms / 1000,
                                    &ids->sid, &ids->sub, err);
}

enum authn_step an_bcl_continue(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, struct cont *c)
{
    struct bcl_ids ids = { NULL, NULL };
    struct err err = { 0 };
    enum authn_step st;
    int rc = 0;
    if (!an_check_with_keys(an, req, a, out, c, CONT_BCL_DISCOVERY, CONT_BCL_JWKS, bcl_check, &ids,
                            &rc, &err, &st)) {
        return st;
    }
    struct idp *x = c->idp;
    char *sid = ids.sid, *sub = ids.sub;
    if (rc != 0) {
        an_set_reason(out, "back-channel logout refused: %s", err.msg);
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", out->reason);
        static const char body[] = "{\"error\":\"invalid_request\"}\n";
        return an_respond(out, 400, "application/json", body, sizeof body - 1);
    }
    struct spg *pg = session_store_pg(an->store);
    if (pg != NULL) {
        /* A fleet: the token's jti is used once on any node (the check in
         * oidc_logout_token_verify spares the database repeats here). */
        c->bcl_sid = an_adup(a, sid);
        c->bcl_sub = an_adup(a, sub);
        free(sid);
        free(sub);
        bool queued = false;
        int64_t exp_s = 0;
        char *key = bcl_once_key(x, req, &exp_s);
        if (key != NULL) {
            queued = an_once_submit(req, out, pg, c, key, exp_s, ONCE_NEXT_BCL);
            free(key);
        }
        if (!queued) {
            an_set_reason(out, "%s",
                          "back-channel logout not checked: the session database is "
                          "unreachable");
            return an_respond(out, 503, "text/plain; charset=utf-8", NULL, 0);
        }
        return AUTHN_NEED_WAIT;
    }
    enum authn_step done = bcl_end(an, req, out, x, sid, sub);
    free(sid);
    free(sub);
    return done;
}

/* The fleet's key for a verified logout token ("bcl <iss> <jti>", as the
 * node's own replay cache keys it) and until when it is kept. */
static char *bcl_once_key(const struct idp *x, const struct authn_req *req, int64_t *exp_s)
{
    struct str raw;
    bool dup = false;
    char *tok = codec_form_get(req->body, "logout_token", &raw, &dup) && !dup
                    ? codec_url_decode(raw, NULL)
                    : NULL;
    json_t *cl = tok ? jwt_peek_claims(str_from(tok)) : NULL;
    free(tok);
    const char *jti = jwt_claim_str(cl, "jti");
    json_t *exp = json_object_get(cl, "exp");
    json_t *iat = json_object_get(cl, "iat");
    *exp_s = (json_is_integer(exp) ? (int64_t)json_integer_value(exp)
                                   : (int64_t)json_integer_value(iat) + 600) +
             x->p->clock_skew_s;
    char *key = jti ? xasprintf("bcl %s %s", x->p->issuer, jti) : NULL;
    json_decref(cl);
    return key;
}

enum authn_step an_bcl_decided(struct authn *an, const struct authn_req *req, struct arena *a,
                               struct authn_out *out, struct cont *c)
{
    (void)a;
    int fresh = an_once_verdict(req, c);
    if (fresh < 0) {
        an_set_reason(out, "%s",
                      "back-channel logout not checked: the session database is "
                      "unreachable");
        return an_respond(out, 503, "text/plain; charset=utf-8", NULL, 0);
    }
    if (fresh == 0) {
        an_set_reason(out, "%s",
                      "back-channel logout refused: logout token was already used "
                      "(jti replay)");
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", out->reason);
        static const char body[] = "{\"error\":\"invalid_request\"}\n";
        return an_respond(out, 400, "application/json", body, sizeof body - 1);
    }
    return bcl_end(an, req, out, c->idp, c->bcl_sid, c->bcl_sub);
}

/* Ends the sessions a verified, first-used logout token names. */
static enum authn_step bcl_end(struct authn *an, const struct authn_req *req, struct authn_out *out,
                               const struct idp *x, const char *sid, const char *sub)
{
    size_t n = 0;
    bool ended_here = false;
    int64_t now_s = req->now_ms / 1000;
    if (sid != NULL) {
        n = session_revoke_sid(an->store, x->p->id, sid);
    }
    if (n == 0 && sid != NULL) {
        /* Signed out through Gatehouse already (logout() remembered the sid):
         * not a reason to end the user's other sessions. */
        char *key = xasprintf("ended-sid:%s#%s", x->p->id, sid);
        ended_here = !oidc_replay_check_and_add(an->replay, str_from(key), now_s + 3600, now_s);
        free(key);
    }
    if (n == 0 && sub != NULL && !ended_here) {
        char *uk = xasprintf("%s#%s", x->p->issuer, sub);
        n = session_revoke_user(an->store, uk);
        free(uk);
    }
    out->event = AUTHN_EV_LOGOUT;
    out->nlogouts = n;
    log_emit(LOG_INFO, MOD, req->request_id, NULL,
             "back-channel logout from %s ended %zu session(s)", x->p->id, n);
    return an_respond(out, 200, "text/plain; charset=utf-8", NULL, 0);
}

enum authn_step an_backchannel_logout(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out)
{
    if (!str_eq_cstr(req->method, "POST") || an->store == NULL) {
        an_add_header(out, "Allow", "POST");
        return an_respond(out, 405, "text/plain; charset=utf-8", NULL, 0);
    }
    struct str raw;
    bool dup = false;
    char *tok = codec_form_get(req->body, "logout_token", &raw, &dup) && !dup
                    ? codec_url_decode(raw, NULL)
                    : NULL;
    struct idp *x = NULL;
    for (size_t i = 0; tok != NULL && i < an->nidps && x == NULL; i++) {
        struct authn_req any = *req;
        any.route_idps = NULL;
        x = an_idp_for_token(an, &any, str_from(tok));
    }
    free(tok);
    if (x == NULL) {
        an_set_reason(out, "%s",
                      "back-channel logout refused: token missing or from an unknown issuer");
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", out->reason);
        static const char body[] = "{\"error\":\"invalid_request\"}\n";
        return an_respond(out, 400, "application/json", body, sizeof body - 1);
    }
    struct cont *c = an_cont_new(a, out, CONT_BCL_JWKS, x);
    return c ? an_bcl_continue(an, req, a, out, c) : an_internal_error(an, req, a, out);
}
