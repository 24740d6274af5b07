/* authn/authn_saml.c - the SAML endpoints' glue: sign-in redirect, the
 * metadata document, the ACS (with its one-time assertion id) and the
 * IdP-metadata fetch they wait on; saml.c holds the protocol itself. */
#include "authn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authn_int.h"

/* ---- SAML: login, /.gatehouse/saml/acs, /.gatehouse/saml/metadata ------ */

/* The SAML login cookie comes back on the IdP's cross-site POST to the ACS:
 * over TLS it is SameSite=None (still __Host-, Secure, HttpOnly, sealed, 10
 * minutes); over plain HTTP (tests, a local set-up) browsers refuse None
 * without Secure, so it stays Lax. */
static const char *saml_login_cookie(struct authn *an, const struct authn_req *req, struct arena *a,
                                     const char *value, int max_age)
{
    const char *name = an_login_cookie_name(an, req->tls);
    if (name == NULL) {
        return NULL;
    }
    if (!req->tls) {
        return cookie_format(a, name, str_from(value), false, max_age);
    }
    return arena_printf(a, "%s=%s; Path=/; Max-Age=%d; HttpOnly; Secure; SameSite=None", name,
                        value, max_age);
}

/* Asks the proxy for sx's metadata; the step `next` runs again with it. */
static enum authn_step saml_md_fetch(struct authn *an, const struct authn_req *req, struct arena *a,
                                     struct authn_out *out, struct saml_idp *sx,
                                     enum saml_next next, const char *rd)
{
    struct cont *c = an_cont_new(a, out, CONT_SAML_METADATA, NULL);
    if (c == NULL) {
        return an_internal_error(an, req, a, out);
    }
    c->saml = sx;
    c->saml_next = (int)next;
    c->rd = rd;
    out->fetch.method = "GET";
    out->fetch.url = an_adup(a, saml_metadata_url(sx));
    out->fetch.headers[0] = "Accept: application/samlmetadata+xml, application/xml;q=0.9";
    out->fetch.headers[1] = NULL;
    out->fetch.body = NULL;
    out->fetch.body_len = 0;
    return out->fetch.url ? AUTHN_NEED_FETCH : an_internal_error(an, req, a, out);
}

/* A SAML IdP whose metadata is a URL: the proxy fetches it when due (never on
 * the loop), then the step `next` runs again. *ready: sx can serve now. */
static enum authn_step saml_md_ready(struct authn *an, const struct authn_req *req, struct arena *a,
                                     struct authn_out *out, struct saml_idp *sx,
                                     enum saml_next next, const char *rd, bool *ready)
{
    bool usable = false;
    *ready = false;
    if (!saml_metadata_need(sx, req->now_ms / 1000, &usable)) {
        if (usable) {
            *ready = true;
            return AUTHN_OK;
        }
        snprintf(out->reason, sizeof out->reason, "SAML metadata of %s not loaded",
                 saml_idp_id(sx));
        return an_idp_down(an, req, a, out);
    }
    return saml_md_fetch(an, req, a, out, sx, next, rd);
}

/* The start of the ACS and SLO endpoints: the method (else 405 with Allow), a
 * SAML IdP and the session store, and every URL-form SAML IdP's metadata at
 * hand (else its fetch comes first). true: go on; false: answer *st. */
bool saml_endpoint_ready(struct authn *an, const struct authn_req *req, struct arena *a,
                         struct authn_out *out, const char *method, enum saml_next next,
                         enum authn_step *st)
{
    if (!str_eq_cstr(req->method, method) || an->nsaml == 0 || an->store == NULL) {
        an_add_header(out, "Allow", method);
        *st = an_respond(out, 405, "text/plain; charset=utf-8", NULL, 0);
        return false;
    }
    for (size_t i = 0; i < an->nsaml; i++) {
        bool usable = false;
        if (saml_metadata_url(an->saml[i]) != NULL &&
            saml_metadata_need(an->saml[i], req->now_ms / 1000, &usable)) {
            *st = saml_md_fetch(an, req, a, out, an->saml[i], next, NULL);
            return false;
        }
    }
    return true;
}

enum authn_step saml_login(struct authn *an, const struct authn_req *req, struct arena *a,
                           struct authn_out *out, struct saml_idp *sx, const char *rd)
{
    bool ready = false;
    enum authn_step st = saml_md_ready(an, req, a, out, sx, SAML_NEXT_LOGIN, rd, &ready);
    if (!ready) {
        return st;
    }
    char *url = NULL, *cookie = NULL;
    struct err err = { 0 };
    if (saml_login_start(sx, str_from(rd), an->login_key, req->now_ms / 1000, &url, &cookie,
                         &err) != 0) {
        an_set_reason(out, "SAML login start failed: %s", err.msg);
        return an_internal_error(an, req, a, out);
    }
    const char *sc = saml_login_cookie(an, req, a, cookie, SAML_LOGIN_TTL_S);
    const char *loc = an_adup(a, url);
    free(url);
    free(cookie);
    if (sc == NULL || loc == NULL) {
        return an_internal_error(an, req, a, out);
    }
    an_add_header(out, "Set-Cookie", sc);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "sign-in started at %s (SAML) from %s",
             saml_idp_id(sx), req->client_ip ? req->client_ip : "?");
    return an_redirect(out, loc);
}

enum authn_step saml_metadata(struct authn *an, const struct authn_req *req, struct arena *a,
                              struct authn_out *out)
{
    const char *want = an_query_value(a, req->query, "idp");
    struct saml_idp *sx = an->nsaml ? an->saml[0] : NULL;
    for (size_t i = 0; want != NULL && i < an->nsaml; i++) {
        sx = strcmp(saml_idp_id(an->saml[i]), want) == 0 ? an->saml[i] : NULL;
        if (sx != NULL) {
            break;
        }
    }
    if (sx == NULL) {
        return an_respond(out, 404, "text/plain; charset=utf-8", "not found\n", 10);
    }
    bool ready = false;
    enum authn_step st = saml_md_ready(an, req, a, out, sx, SAML_NEXT_METADATA, NULL, &ready);
    if (!ready) {
        return st;
    }
    char *spmd = saml_sp_metadata(sx);
    const char *md = an_adup(a, spmd);
    free(spmd);
    if (md == NULL) {
        return an_internal_error(an, req, a, out);
    }
    an_respond(out, 200, "application/samlmetadata+xml", md, strlen(md));
    out->resp.headers[0].value = "public, max-age=300";
    return AUTHN_RESPOND;
}

enum authn_step saml_acs_endpoint(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out)
{
    enum authn_step st;
    struct str v;
    bool found;
    if (!saml_endpoint_ready(an, req, a, out, "POST", SAML_NEXT_ACS, &st) ||
        !an_login_cookie_read(an, req, a, out, &v, &found, &st)) {
        return st;
    }
    struct err err = { 0 };
    struct saml_result r;
    int64_t now_s = req->now_ms / 1000;
    if (saml_acs(an->saml, an->nsaml, req->body, found ? v : STR_NULL, an->login_key, now_s, &r,
                 &err) != 0) {
        return an_callback_fail(an, req, a, out, 403,
                                err.msg[0] ? err.msg : "SAML response refused");
    }
    const char *idp_id = saml_idp_id(r.idp);
    if (!an_route_accepts(req, idp_id)) {
        saml_result_fini(&r);
        return an_callback_fail(an, req, a, out, 403,
                                "SAML sign-in for an identity provider not "
                                "accepted here");
    }
    /* Replay: an assertion ID is accepted once (kept until it expires), and a
     * login state answers one response. */
    char *ka = xasprintf("saml-assertion:%s#%s", idp_id, r.assertion_id);
    enum authn_step wait_st = AUTHN_RESPOND;
    int once = an_once_gate(an, req, a, out, ka, r.assertion_exp_s, &wait_st);
    free(ka);
    if (once == 2) { /* decided off the loop: this step runs again with the answer */
        saml_result_fini(&r);
        return wait_st;
    }
    if (once < 0) { /* a fleet whose database did not answer: not accepted unchecked */
        saml_result_fini(&r);
        return an_callback_fail(an, req, a, out, 503,
                                "the session database is unreachable (assertion ID not checked)");
    }
    bool fresh = once == 1;
    if (!fresh) {
        saml_result_fini(&r);
        return an_callback_fail(an, req, a, out, 403, "assertion ID already used (replay)");
    }
    if (r.login_state != NULL) {
        char *kl = xasprintf("saml-login:%s", r.login_state);
        fresh =
            oidc_replay_check_and_add(an->replay, str_from(kl), now_s + SAML_LOGIN_TTL_S, now_s);
        free(kl);
        if (!fresh) {
            saml_result_fini(&r);
            return an_callback_fail(an, req, a, out, 403, "login state already answered (replay)");
        }
    }
    /* The SAML attributes become the same parsed groups and claims as an
     * OIDC identity's, once, here. */
    struct authn_attrs *attrs = attrs_parse(r.groups_json, r.claims_json);
    struct session_new sn = {
        .user_key = r.user_key,
        .email = r.email,
        .name = r.name,
        .attrs = attrs,
        .idp = idp_id,
        .sid = r.session_index,
    };
    char cookie[SESSION_COOKIE_LEN + 1];
    int rc = session_create(an->store, &sn, req->now_ms, cookie, &err);
    if (rc == 0 && !attrs_hold(a, attrs)) {
        rc = ERR_LIMIT;
    }
    attrs_unref(attrs);
    if (rc == 0) {
        const char *hash = strchr(r.user_key, '#');
        out->id.user_key = an_adup(a, r.user_key);
        out->id.sub = an_adup(a, hash ? hash + 1 : r.user_key);
        out->id.email = an_adup(a, r.email);
        out->id.name = an_adup(a, r.name);
        out->id.idp = an_adup(a, idp_id);
        out->id.attrs = attrs;
        out->id.sid = an_adup(a, r.session_index);
    }
    log_emit(rc == 0 ? LOG_INFO : LOG_ERROR, MOD, req->request_id, NULL,
             rc == 0 ? "signed in %s via %s (SAML)" : "session not created for %s via %s",
             r.email ? r.email : r.user_key, idp_id);
    const char *rd = r.return_path && oidc_return_path_safe(str_from(r.return_path))
                         ? an_adup(a, r.return_path)
                         : "/";
    saml_result_fini(&r);
    if (rc != 0) {
        return an_callback_fail(an, req, a, out, 500, err.msg);
    }
    /* 303: the browser follows a POST answer with a GET. */
    return an_signed_in(an, req, a, out, cookie, saml_login_cookie(an, req, a, "", 0), rd, 303);
}
