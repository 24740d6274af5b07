/* authn/authn_login.c - OIDC sign-in: /.gatehouse/login (origin checks, the
 * redirect to the provider), the callback (state, token request, token and
 * userinfo answers) and the creation of the session that ends it. */
#include "authn.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "authn_int.h"

/* ---- /.gatehouse/login ------------------------------------------------ */

enum authn_step an_login_redirect(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, struct idp *x, const char *rd,
                                  const char *prompt)
{
    const struct oidc_metadata *m = atomic_load(&x->meta);
    if (prompt != NULL && strcmp(prompt, "select_account") == 0 && !m->prompt_select_account) {
        prompt = "login"; /* the IdP has no account picker: it asks who signs in */
    }
    /* From configuration, never from the Host header alone (login() checked
     * that public_origin is set); one redirect URI per provider when there
     * are several, so a response is only ever taken for its own provider. */
    char *redirect_uri = oidc_redirect_uri(x->p, req->public_origin, an->nidps > 1);
    struct oidc_login l;
    struct err err = { 0 };
    int rc = oidc_login_start(x->p, m, redirect_uri, str_from(rd), prompt, an->login_key,
                              req->now_ms / 1000, &l, &err);
    free(redirect_uri);
    if (rc != 0) {
        an_set_reason(out, "login start failed: %s", err.msg);
        return an_internal_error(an, req, a, out);
    }
    const char *cname = an_login_cookie_name(an, req->tls);
    const char *sc =
        cname ? cookie_format(a, cname, str_from(l.cookie_value), req->tls, OIDC_LOGIN_TTL_S)
              : NULL;
    const char *loc = an_adup(a, l.auth_url);
    oidc_login_fini(&l);
    if (sc == NULL || loc == NULL) {
        return an_internal_error(an, req, a, out);
    }
    an_add_header(out, "Set-Cookie", sc);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "sign-in started at %s from %s%s%s", x->p->id,
             req->client_ip ? req->client_ip : "?", prompt ? " with prompt=" : "",
             prompt ? prompt : "");
    return an_redirect(out, loc);
}

/* Is the browser on the configured origin's host and port? (The scheme may
 * differ behind a proxy that terminates TLS.) */
bool an_on_public_host(const struct authn_req *req)
{
    const char *auth = req->public_origin ? strstr(req->public_origin, "://") : NULL;
    return auth != NULL && str_ieq_cstr(req->host, auth + 3);
}

/* Sign-in starts only where configuration says which origin the browser is
 * on: otherwise the redirect URI would come from the Host header. */
static enum authn_step login_origin_check(struct authn *an, const struct authn_req *req,
                                          struct arena *a, struct authn_out *out, bool *done)
{
    *done = true;
    if (req->public_origin == NULL) {
        an_set_reason(out, "%s",
                      "sign-in refused: no route names this host and no public_url is "
                      "configured for it");
        log_emit(LOG_WARN, MOD, req->request_id, NULL,
                 "sign-in refused for Host \"%.*s\" from %s: no route names this host and no "
                 "public_url is configured (set public_url on the listener or route)",
                 (int)(req->host.len > 200 ? 200 : req->host.len), req->host.p,
                 req->client_ip ? req->client_ip : "?");
        return an_error_page(an, req, a, out, 400, "Sign-in is not available at this address",
                             "This address is not configured for sign-in. Use the address your "
                             "administrator gave you.");
    }
    if (!an_on_public_host(req)) {
        /* The login cookie must be set where the callback arrives: continue on
         * the configured origin (a configured value, never the Host header). */
        const char *loc = req->query.len
                              ? arena_printf(a, "%s/.gatehouse/login?%.*s", req->public_origin,
                                             (int)req->query.len, req->query.p)
                              : arena_printf(a, "%s/.gatehouse/login", req->public_origin);
        return loc ? an_redirect(out, loc) : an_internal_error(an, req, a, out);
    }
    *done = false;
    return AUTHN_RESPOND;
}

enum authn_step login_endpoint(struct authn *an, const struct authn_req *req, struct arena *a,
                               struct authn_out *out)
{
    bool done = false;
    enum authn_step st = login_origin_check(an, req, a, out, &done);
    if (done) {
        return st;
    }
    /* "Sign in as someone else": the IdP shows its account picker (or asks
     * for a password again); any other value is ignored. */
    const char *prompt = an_query_value(a, req->query, "prompt");
    if (prompt != NULL && strcmp(prompt, "select_account") != 0 && strcmp(prompt, "login") != 0) {
        prompt = NULL;
    }
    const char *rd = an_query_value(a, req->query, "rd");
    if (rd == NULL || !oidc_return_path_safe(str_from(rd))) {
        if (rd != NULL && rd[0] != '\0') {
            log_emit(LOG_WARN, MOD, req->request_id, NULL, "unsafe return path refused from %s",
                     req->client_ip ? req->client_ip : "?");
        }
        rd = "/";
    }
    const char *want = an_query_value(a, req->query, "idp");
    /* Every provider the route accepts is offered: no cap. */
    struct idp **cands = arena_alloc(a, (an->nidps ? an->nidps : 1) * sizeof *cands);
    size_t n = 0;
    if (cands == NULL) {
        return an_internal_error(an, req, a, out);
    }
    for (size_t i = 0; i < an->nidps; i++) {
        if (an_route_accepts(req, an->idps[i].p->id)) {
            cands[n++] = &an->idps[i];
        }
    }
    struct idp *x = NULL;
    for (size_t i = 0; want != NULL && i < n; i++) {
        if (strcmp(cands[i]->p->id, want) == 0) {
            x = cands[i];
        }
    }
    struct saml_idp **scands = arena_alloc(a, (an->nsaml ? an->nsaml : 1) * sizeof *scands);
    size_t ns = 0;
    struct saml_idp *sx = NULL;
    if (scands == NULL) {
        return an_internal_error(an, req, a, out);
    }
    for (size_t i = 0; i < an->nsaml; i++) {
        if (an_route_accepts(req, saml_idp_id(an->saml[i]))) {
            scands[ns++] = an->saml[i];
            if (want != NULL && strcmp(saml_idp_id(an->saml[i]), want) == 0) {
                sx = an->saml[i];
            }
        }
    }
    if (n + ns == 1 && want == NULL && ns == 1) {
        sx = scands[0];
    }
    if (sx != NULL) {
        return saml_login(an, req, a, out, sx, rd);
    }
    if (n + ns == 0) {
        an_set_reason(out, "%s", "login on a route without identity providers");
        return an_error_page(an, req, a, out, 404, "No sign-in here",
                             "This app does not use sign-in.");
    }
    if (want != NULL && x == NULL && sx == NULL) {
        an_set_reason(out, "%s", "unknown idp parameter");
        return an_error_page(an, req, a, out, 400, "Unknown identity provider",
                             "That identity provider is not offered for this app.");
    }
    if (x == NULL && n == 1 && ns == 0) {
        x = cands[0];
    }
    if (x == NULL) {
        struct page_provider *pv = arena_alloc(a, (n + ns ? n + ns : 1) * sizeof *pv);
        const char *host = arena_strndup(a, req->host.p ? req->host.p : "", req->host.len);
        if (pv == NULL || host == NULL) {
            return an_internal_error(an, req, a, out);
        }
        for (size_t i = 0; i < n; i++) {
            pv[i] = (struct page_provider){ cands[i]->p->id, cands[i]->p->display_name };
        }
        for (size_t i = 0; i < ns; i++) {
            pv[n + i] =
                (struct page_provider){ saml_idp_id(scands[i]), saml_idp_display_name(scands[i]) };
        }
        n += ns;
        const char *list = pages_provider_list(a, pv, n, str_from(rd), prompt);
        struct page_var v[] = { { "host", host }, { "providers", list } };
        return list ? page_answer(a, out, PAGE_CHOOSER, v, 2, NULL)
                    : an_internal_error(an, req, a, out);
    }
    if (atomic_load(&x->meta) == NULL) {
        struct cont *c = an_cont_new(a, out, CONT_LOGIN_DISCOVERY, x);
        if (c == NULL) {
            return an_internal_error(an, req, a, out);
        }
        c->rd = rd;
        c->prompt = prompt;
        return an_need_discovery(a, out, x);
    }
    return an_login_redirect(an, req, a, out, x, rd, prompt);
}

/* ---- /.gatehouse/oidc/callback ---------------------------------------- */

/* A failed callback: the caller records it (AUTHN_EV_LOGIN_FAILED, with the
 * reason) as well as answering. 400: state or cookie; 403: the tokens or the
 * identity were refused; 502: the provider failed; 500: ours. */
enum authn_step an_callback_fail(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out, int status, const char *why)
{
    char buf[sizeof out->reason - 20]; /* why may be out->reason itself */
    snprintf(buf, sizeof buf, "%s", why);
    snprintf(out->reason, sizeof out->reason, "sign-in refused: %s", buf);
    out->event = AUTHN_EV_LOGIN_FAILED;
    out->idp_error = status == 502;
    out->cont = NULL;
    memset(&out->id, 0, sizeof out->id);
    return an_error_page(an, req, a, out, status, "Sign-in failed",
                         "Sign-in could not be completed. Please try again.");
}

enum authn_step an_callback_error(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, const char *why)
{
    return an_callback_fail(an, req, a, out, 400, why);
}

/* A fleet's database that did not decide whether the login state was used:
 * the try-again page, never a sign-in unchecked. */
enum authn_step an_state_unchecked(struct authn *an, const struct authn_req *req, struct arena *a,
                                   struct authn_out *out)
{
    return an_callback_fail(an, req, a, out, 503,
                            "the session database is unreachable (login state not checked)");
}

enum authn_step an_idp_down(struct authn *an, const struct authn_req *req, struct arena *a,
                            struct authn_out *out)
{
    out->idp_error = true;
    return an_error_page(an, req, a, out, 502, "Sign-in is unavailable",
                         "Gatehouse could not reach the identity provider. Please try again in a "
                         "moment.");
}

enum authn_step an_callback_token_request(struct authn *an, const struct authn_req *req,
                                          struct arena *a, struct authn_out *out, struct cont *c)
{
    struct oidc_http h;
    struct err err = { 0 };
    if (oidc_callback(c->idp->p, atomic_load(&c->idp->meta), req->query, &c->pd, an->replay,
                      req->now_ms / 1000, &h, &err) != 0) {
        return an_callback_error(an, req, a, out, err.msg);
    }
    c->kind = CONT_TOKEN;
    an_fill_fetch(a, out, &h);
    struct spg *pg = session_store_pg(an->store);
    if (pg != NULL) {
        /* A fleet: the login state is used once on any node (the local check
         * above only spares the database repeats here); the code goes to the
         * IdP only after that. */
        c->token_fetch = out->fetch;
        char *key = xasprintf("oidc-state:%s", c->pd.state);
        bool queued = an_once_submit(req, out, pg, c, key, c->pd.exp_s, ONCE_NEXT_TOKEN);
        free(key);
        return queued ? AUTHN_NEED_WAIT : an_state_unchecked(an, req, a, out);
    }
    return AUTHN_NEED_FETCH;
}

/* The login cookie of a sign-in in flight (OIDC callback, SAML ACS): true
 * with *v (*found false when there is none); false with *st the answer when
 * the Cookie header cannot be read. */
bool an_login_cookie_read(struct authn *an, const struct authn_req *req, struct arena *a,
                          struct authn_out *out, struct str *v, bool *found, enum authn_step *st)
{
    const char *cname = an_login_cookie_name(an, req->tls);
    struct err err = { 0 };
    *v = STR_NULL;
    *found = false;
    if (cname == NULL || cookie_get(req->cookies, req->ncookies, cname, v, found, &err) != 0) {
        *st = an_callback_error(an, req, a, out, err.msg[0] ? err.msg : "bad login cookie");
        return false;
    }
    return true;
}

enum authn_step an_callback(struct authn *an, const struct authn_req *req, struct arena *a,
                            struct authn_out *out, struct str path_idp)
{
    struct str v;
    bool found;
    enum authn_step step;
    struct err err = { 0 };
    if (!an_login_cookie_read(an, req, a, out, &v, &found, &step)) {
        return step;
    }
    if (!found && an_query_value(a, req->query, "error") == NULL) {
        return an_callback_error(an, req, a, out, "no login cookie: state cannot be checked");
    }
    struct cont *c = an_cont_new(a, out, CONT_CALLBACK_DISCOVERY, NULL);
    if (c == NULL) {
        return an_internal_error(an, req, a, out);
    }
    /* An IdP error (error=access_denied) is reported even without a cookie. */
    char *e = an_query_value(a, req->query, "error");
    if (e != NULL && !found) {
        return an_callback_error(an, req, a, out, "identity provider returned an error");
    }
    if (oidc_login_cookie_open(an->login_key, v, req->now_ms / 1000, &c->pd, &err) != 0) {
        return an_callback_error(an, req, a, out, err.msg);
    }
    if (e != NULL && c->pd.prompt != NULL && strcmp(c->pd.prompt, "none") == 0) {
        /* The check after a sign-out (signed_out): the IdP has no session for
         * the user any more, so they are signed out everywhere. */
        const char *st = an_query_value(a, req->query, "state");
        if (st != NULL && codec_ct_eq(str_from(st), str_from(c->pd.state))) {
            out->cont = NULL;
            an_add_header(
                out, "Set-Cookie",
                cookie_format(a, an_login_cookie_name(an, req->tls), STR(""), req->tls, 0));
            log_emit(LOG_INFO, MOD, req->request_id, NULL,
                     "signed out at %s too (its answer to prompt=none: %s)", c->pd.idp, e);
            return an_redirect(out, "/.gatehouse/signed-out");
        }
    }
    /* Each provider answers at its own redirect URI when there are several:
     * a response at one provider's path is only ever taken for that provider,
     * whatever the state says (IdP mix-up, RFC 9207 §1). */
    if (path_idp.p == NULL && an->nidps > 1) {
        return an_callback_error(an, req, a, out,
                                 "callback at the shared path while several "
                                 "identity providers are configured (each has "
                                 "/.gatehouse/oidc/callback/<id>)");
    }
    if (path_idp.p != NULL && !str_eq_cstr(path_idp, c->pd.idp)) {
        char why[200];
        snprintf(why, sizeof why,
                 "login state was issued for identity provider \"%.40s\", "
                 "not \"%.*s\" whose callback this is",
                 c->pd.idp, (int)(path_idp.len > 40 ? 40 : path_idp.len), path_idp.p);
        return an_callback_error(an, req, a, out, why);
    }
    c->idp = an_idp_by_id(an, c->pd.idp);
    if (c->idp == NULL || !an_route_accepts(req, c->pd.idp)) {
        return an_callback_error(an, req, a, out,
                                 "login for an identity provider not accepted here");
    }
    if (atomic_load(&c->idp->meta) == NULL) {
        return an_need_discovery(a, out, c->idp);
    }
    return an_callback_token_request(an, req, a, out, c);
}

/* The end of a sign-in (OIDC or SAML): the session cookie set (cookie is
 * wiped), the login cookie cleared (clear: its Set-Cookie value), the browser
 * sent back to rd with status. out->id names the new user for the caller's
 * login record; the browser itself comes back with the cookie. */
enum authn_step an_signed_in(struct authn *an, const struct authn_req *req, struct arena *a,
                             struct authn_out *out, char *cookie, const char *clear, const char *rd,
                             int status)
{
    const char *sname = session_cookie_name(an, req->tls);
    const char *set = sname ? cookie_format(a, sname, str_from(cookie), req->tls,
                                            (int64_t)(an->sconf.max_lifetime_ms / 1000))
                            : NULL;
    OPENSSL_cleanse(cookie, SESSION_COOKIE_LEN + 1);
    if (set == NULL || clear == NULL || rd == NULL) {
        return an_internal_error(an, req, a, out);
    }
    an_add_header(out, "Set-Cookie", set);
    an_add_header(out, "Set-Cookie", clear);
    out->event = AUTHN_EV_LOGIN;
    out->cont = NULL;
    return an_redirect_with(out, status, rd);
}

enum authn_step an_finish_login(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, struct cont *c, const json_t *userinfo)
{
    struct oidc_identity id;
    struct err err = { 0 };
    if (oidc_identity_build(c->idp->p, c->tokens.id_claims, userinfo, &id, &err) != 0) {
        return an_callback_fail(an, req, a, out, 403, err.msg);
    }
    struct session_new sn = {
        .user_key = id.user_key,
        .email = id.email,
        .name = id.name,
        .attrs = id.attrs,
        .idp = c->idp->p->id,
        .sid = id.sid,
        .refresh_token = c->tokens.refresh_token,
        .id_token = c->tokens.id_token,
        .token_exp_s = c->tokens.expires_at_s ? c->tokens.expires_at_s : c->tokens.id_exp_s,
    };
    char cookie[SESSION_COOKIE_LEN + 1];
    if (!session_store_ready(an->store)) {
        oidc_identity_fini(&id);
        snprintf(out->reason, sizeof out->reason,
                 "sign-in refused: the session database is unreachable");
        out->event = AUTHN_EV_LOGIN_FAILED;
        out->cont = NULL;
        memset(&out->id, 0, sizeof out->id);
        return an_error_page(an, req, a, out, 503, "Sign-in is temporarily unavailable",
                             "Gatehouse cannot store new sign-ins right now. Please try again in a "
                             "moment.");
    }
    int rc = session_create(an->store, &sn, req->now_ms, cookie, &err);
    bool ok = rc == 0 && an_identity_from_oidc(out, &id, c->idp->p->id, a);
    log_emit(ok ? LOG_INFO : LOG_ERROR, MOD, req->request_id, NULL,
             ok ? "signed in %s via %s" : "session not created for %s via %s",
             id.email ? id.email : id.user_key, c->idp->p->id);
    oidc_identity_fini(&id);
    if (!ok) {
        return an_callback_fail(an, req, a, out, 500, rc != 0 ? err.msg : "out of request memory");
    }
    const char *lname = an_login_cookie_name(an, req->tls);
    const char *clear = lname ? cookie_format(a, lname, STR(""), req->tls, 0) : NULL;
    const char *rd = c->pd.return_path && oidc_return_path_safe(str_from(c->pd.return_path))
                         ? an_adup(a, c->pd.return_path)
                         : "/";
    if (c->pd.prompt != NULL && strcmp(c->pd.prompt, "none") == 0) {
        log_emit(LOG_INFO, MOD, req->request_id, NULL,
                 "%s stayed signed in at %s when signing out: signed in again",
                 out->id.email ? out->id.email : out->id.user_key, c->idp->p->id);
    }
    return an_signed_in(an, req, a, out, cookie, clear, rd, 302);
}

enum authn_step an_token_answer(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, struct cont *c)
{
    struct idp *x = c->idp;
    struct jwks *k = an_jwks_get(x);
    if (k == NULL) {
        c->kind = CONT_TOKEN_JWKS;
        return an_fetch_get(a, out, atomic_load(&x->meta)->jwks_uri);
    }
    struct err err = { 0 };
    oidc_tokens_fini(&c->tokens);
    int rc = oidc_token_response(x->p, k, c->token_status,
                                 (struct str){ c->token_body, c->token_body_len }, c->pd.nonce,
                                 req->now_ms / 1000, &c->tokens, &err);
    jwks_unref(k);
    if (rc == ERR_NOTFOUND && an_jwks_refetch(a, out, c, req->now_ms, CONT_TOKEN_JWKS)) {
        return AUTHN_NEED_FETCH;
    }
    if (rc != 0) {
        return an_callback_fail(an, req, a, out, 403, err.msg);
    }
    struct oidc_http h;
    if (x->p->groups_from_userinfo &&
        oidc_userinfo_request(atomic_load(&x->meta), c->tokens.access_token, &h, &err) == 0) {
        c->kind = CONT_USERINFO;
        an_fill_fetch(a, out, &h);
        return AUTHN_NEED_FETCH;
    }
    return an_finish_login(an, req, a, out, c, NULL);
}
