/* authn/authn_flow.c - request classification and the continuation machine:
 * the answer and error-page helpers every endpoint uses, identify_caller() (session
 * cookie or bearer), the table of reserved paths below /.gatehouse/, the "me"
 * pages, and authn_check/authn_resume, which start an endpoint or resume the
 * continuation a fetch or a fleet wait left behind. */
#include "authn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "authn_int.h"

static void cont_cleanup(void *arg)
{
    struct cont *c = arg;
    if (c->store != NULL) {
        /* The request ended (client gone) before the refresh answer: release
         * the claim so that a later request refreshes. */
        session_refresh_done(c->store, str_from(c->cookie), false, false, NULL, 0, NULL, NULL,
                             NULL);
    }
    oidc_pending_fini(&c->pd);
    oidc_tokens_fini(&c->tokens);
    spg_once_release(c->once);
}

struct cont *an_cont_new(struct arena *a, struct authn_out *out, enum cont_kind kind,
                         struct idp *idp)
{
    struct cont *c = arena_zalloc(a, sizeof *c);
    if (c == NULL || arena_defer(a, cont_cleanup, c) != 0) {
        return NULL;
    }
    c->kind = kind;
    c->idp = idp;
    out->cont = c;
    return c;
}

const char *an_adup(struct arena *a, const char *s)
{
    return s ? arena_strdup(a, s) : NULL;
}

void an_add_header(struct authn_out *out, const char *name, const char *value)
{
    if (value != NULL && out->resp.nheaders < AUTHN_MAX_HEADERS) {
        out->resp.headers[out->resp.nheaders++] = (struct authn_header){ name, value };
    }
}

/* The answers authn gives are intents (authn.h, enum authn_answer); the proxy
 * renders them. Every one is no-store: the sign-in flow's answers are per user. */
static enum authn_step answer(struct authn_out *out, enum authn_answer kind, int status)
{
    out->resp.kind = kind;
    out->resp.status = status;
    if (kind != AUTHN_ANSWER_SIGNIN && kind != AUTHN_ANSWER_ERROR) {
        an_add_header(out, "Cache-Control", "no-store"); /* those two: the renderer's */
    }
    return AUTHN_RESPOND;
}

/* A document as it is (NULL body: empty). */
enum authn_step an_respond(struct authn_out *out, int status, const char *type, const char *body,
                           size_t len)
{
    out->resp.content_type = type;
    out->resp.body = body ? body : "";
    out->resp.body_len = body ? len : 0;
    return answer(out, AUTHN_ANSWER_CONTENT, status);
}

enum authn_step an_redirect_with(struct authn_out *out, int status, const char *location)
{
    if (location == NULL) {
        out->resp.kind = AUTHN_ANSWER_NONE; /* out of request memory: fails closed */
        return AUTHN_RESPOND;
    }
    out->resp.location = location;
    return answer(out, AUTHN_ANSWER_REDIRECT, status);
}

enum authn_step an_redirect(struct authn_out *out, const char *location)
{
    return an_redirect_with(out, 302, location);
}

/* One of authn's own pages, from its template (vars and their values copied
 * to the arena); json: its form for API clients, or NULL. */
enum authn_step page_answer(struct arena *a, struct authn_out *out, enum page_kind k,
                            const struct page_var *vars, size_t n, const char *json)
{
    struct page_var *v = arena_alloc(a, (n ? n : 1) * sizeof *v);
    if (v == NULL) {
        out->resp.kind = AUTHN_ANSWER_NONE;
        return AUTHN_RESPOND;
    }
    for (size_t i = 0; i < n; i++) {
        /* values may live on the caller's stack: the proxy renders later */
        v[i] = (struct page_var){ vars[i].name, an_adup(a, vars[i].value) };
        if (vars[i].value != NULL && v[i].value == NULL) {
            out->resp.kind = AUTHN_ANSWER_NONE;
            return AUTHN_RESPOND;
        }
    }
    out->resp.page = (int)k;
    out->resp.vars = v;
    out->resp.nvars = n;
    out->resp.json = json;
    return answer(out, AUTHN_ANSWER_PAGE, 200);
}

void an_set_reason(struct authn_out *out, const char *fmt, const char *detail)
{
    snprintf(out->reason, sizeof out->reason, fmt, detail);
}

/* An error: what went wrong in words for people (the proxy renders it, with
 * the request id); the details only in the log. */
enum authn_step an_error_page(struct authn *an, const struct authn_req *req, struct arena *a,
                              struct authn_out *out, int status, const char *title,
                              const char *message)
{
    (void)an;
    (void)a;
    log_emit(status >= 500 ? LOG_WARN : LOG_INFO, MOD, req->request_id, NULL, "%s: %s", title,
             out->reason);
    out->resp.title = title;
    out->resp.message = message;
    return answer(out, AUTHN_ANSWER_ERROR, status);
}

enum authn_step an_internal_error(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out)
{
    return an_error_page(an, req, a, out, 500, "Something went wrong",
                         "Gatehouse could not finish this request.");
}

struct idp *an_idp_by_id(struct authn *an, const char *id)
{
    for (size_t i = 0; id != NULL && i < an->nidps; i++) {
        if (strcmp(an->idps[i].p->id, id) == 0) {
            return &an->idps[i];
        }
    }
    return NULL;
}

bool an_route_accepts(const struct authn_req *req, const char *idp)
{
    if (req->route_idps == NULL) {
        return true;
    }
    for (size_t i = 0; i < req->nroute_idps; i++) {
        if (strcmp(req->route_idps[i], idp) == 0) {
            return true;
        }
    }
    return false;
}

char *an_query_value(struct arena *a, struct str q, const char *name)
{
    struct str raw;
    bool dup = false;
    if (!codec_form_get(q, name, &raw, &dup) || dup) {
        return NULL;
    }
    char *v = codec_url_decode(raw, NULL);
    char *out = v ? arena_strdup(a, v) : NULL;
    free(v);
    return out;
}

const char *session_cookie_name(const struct authn *an, bool tls)
{
    return an->session_name[tls];
}

const char *an_login_cookie_name(const struct authn *an, bool tls)
{
    return an->login_name[tls];
}

/* 401 for API and XHR callers, 302 to sign-in for browsers. */
static enum authn_step unauthenticated(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out, const char *why)
{
    if (why != NULL && out->reason[0] == '\0') {
        an_set_reason(out, "%s", why);
    }
    out->event = AUTHN_EV_SIGNIN_REQUIRED;
    /* The proxy answers: a 302 to sign-in for a browser, a 401 for API
     * clients and refused bearer tokens (never a redirect for those). */
    (void)req;
    (void)a;
    out->resp.no_redirect = an->nidps + an->nsaml == 0;
    return answer(out, AUTHN_ANSWER_SIGNIN, 401);
}

static enum authn_step identify_caller(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out, bool *anonymous)
{
    *anonymous = false;
    /* Other schemes (Basic for the backend itself, say) are not ours: the
     * session cookie decides then. */
    if (req->authorization.len > 7 &&
        str_ieq((struct str){ req->authorization.p, 7 }, STR("Bearer "))) {
        struct str tok =
            str_trim((struct str){ req->authorization.p + 7, req->authorization.len - 7 });
        if (an_bearer_cached(an, req, a, out, tok)) {
            return AUTHN_OK;
        }
        struct idp *x = an_idp_for_token(an, req, tok);
        if (x == NULL) {
            return an_bearer_refused(an, req, a, out,
                                     "not a JWT from an identity provider this route accepts");
        }
        if (x->p->naudiences == 0) {
            /* Before any fetch: such a token never verifies. */
            return an_bearer_refused(
                an, req, a, out, "its identity provider has no bearer \"audiences\" configured");
        }
        struct cont *c = an_cont_new(a, out, CONT_BEARER_JWKS, x);
        if (c == NULL || (c->bearer = arena_strndup(a, tok.p, tok.len)) == NULL) {
            return an_internal_error(an, req, a, out);
        }
        return an_bearer_continue(an, req, a, out, c);
    }
    if (an->store != NULL) {
        const char *name = session_cookie_name(an, req->tls);
        struct str v;
        bool found = false;
        struct err err = { 0 };
        if (name != NULL && cookie_get(req->cookies, req->ncookies, name, &v, &found, &err) != 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL, "session cookie ignored: %s", err.msg);
            found = false;
        }
        if (found) {
            struct session_view sv;
            enum session_status st = session_lookup(an->store, v, req->now_ms, a, &sv);
            if (st == SESSION_UNAVAILABLE) {
                /* Never an allow without a checked identity, nor a sign-in
                 * loop: the balancer drains this node (/readyz). */
                an_set_reason(out, "%s",
                              "session database unreachable and the cache is not "
                              "fresh enough to answer");
                return an_error_page(an, req, a, out, 503, "Temporarily unavailable",
                                     "Gatehouse cannot check your session right now. Please try "
                                     "again in a moment.");
            }
            if (st == SESSION_VALID && an_route_accepts(req, sv.idp)) {
                an_identity_from_view(out, &sv, a);
                if (sv.refresh_due) {
                    const char *ck = arena_strndup(a, v.p, v.len);
                    return ck ? an_refresh_start(an, req, a, out, ck, sv.token_exp_s) : AUTHN_OK;
                }
                return AUTHN_OK;
            }
            log_emit(LOG_INFO, MOD, req->request_id, NULL, "%s session cookie from %s",
                     st == SESSION_EXPIRED ? "expired"
                     : st == SESSION_VALID ? "refused identity provider's"
                                           : "unknown or revoked",
                     req->client_ip ? req->client_ip : "?");
        }
    }
    *anonymous = true;
    return AUTHN_RESPOND;
}

/* ---- /.gatehouse/me --------------------------------------------------- */

/* The client certificate's device as /.gatehouse/me shows it: a JSON object
 * (null without one), and one line for people. */
static json_t *device_json(const struct authn_device *d)
{
    if (d == NULL || !d->present) {
        return json_null();
    }
    json_t *o =
        json_pack("{s:b, s:b, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?}", "present", 1, "trusted",
                  d->trusted, "id", d->id, "name", d->name, "owner", d->owner, "fingerprint",
                  d->fingerprint, "serial", d->serial, "subject", d->subject, "issuer", d->issuer);
    return o ? o : json_null();
}

static const char *device_line(struct arena *a, const struct authn_device *d)
{
    if (d == NULL || !d->present) {
        return "none";
    }
    return d->trusted
               ? arena_printf(a, "%s (%s), trusted", d->name && d->name[0] ? d->name : d->id, d->id)
               : arena_printf(a, "%s, not trusted: %s", d->subject, d->why ? d->why : "");
}

static enum authn_step me(struct authn *an, const struct authn_req *req, struct arena *a,
                          struct authn_out *out)
{
    const struct authn_identity *id = &out->id;
    /* Both ends of a session, labelled: the idle one moves with every request,
     * the absolute one (what `sessions list` shows) never does. */
    char expires[32] = "", idle[32] = "";
    const int64_t ends[2] = { id->session_expires_ms, id->session_idle_expires_ms };
    char *const outs[2] = { expires, idle };
    for (int i = 0; i < 2; i++) {
        if (ends[i] > 0) {
            time_t t = (time_t)(ends[i] / 1000);
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(outs[i], sizeof expires, "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
    }
    /* Both forms: the proxy picks the one the client wants. */
    const char *json = NULL;
    {
        json_t *g = json_array();
        for (size_t i = 0; g && id->attrs && i < id->attrs->ngroups; i++) {
            json_array_append_new(g,
                                  json_stringn(id->attrs->groups[i].p, id->attrs->groups[i].len));
        }
        /* "user" is the subject, as in the identity headers and the decision log. */
        json_t *j =
            json_pack("{s:s, s:s?, s:s?, s:o, s:s?, s:s?, s:s?, s:s?, s:s?}", "user",
                      id->user ? id->user : id->user_key, "email", id->email, "name", id->name,
                      "groups", g ? g : json_array(), "idp", id->idp, "expires",
                      expires[0] ? expires : NULL, "idle_expires", idle[0] ? idle : NULL,
                      "absolute_expires", expires[0] ? expires : NULL, "session", id->session_id);
        if (j) {
            json_object_set_new(j, "device", device_json(req->device));
        }
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        json = an_adup(a, s);
        free(s);
        if (json == NULL) {
            return an_internal_error(an, req, a, out);
        }
    }
    /* Groups as "a, b" for people. */
    struct sbuf gb = { 0 };
    for (size_t i = 0; id->attrs && i < id->attrs->ngroups; i++) {
        codec_buf_adds(&gb, i ? ", " : "");
        codec_buf_add(&gb, id->attrs->groups[i].p, id->attrs->groups[i].len);
    }
    const char *groups = an_adup(a, gb.p ? gb.p : "");
    codec_buf_fini(&gb);
    struct page_var v[] = {
        { "name", id->name ? id->name : (id->email ? id->email : id->user_key) },
        { "user", id->user ? id->user : id->user_key },
        { "email", id->email },
        { "groups", groups },
        { "idp", id->idp },
        { "device", device_line(a, req->device) },
        { "expires", expires },
        { "idle_expires", idle },
    };
    return page_answer(a, out, PAGE_ME, v, sizeof v / sizeof v[0], json);
}

/* The user id as everything downstream sees it (authn_identity.user). */
static void set_user_id(struct authn *an, struct arena *a, struct authn_out *out)
{
    if (out->id.user_key == NULL || out->id.user != NULL) {
        return;
    }
    const char *sub = out->id.sub;
    if (sub == NULL) {
        const char *hash = strchr(out->id.user_key, '#');
        sub = hash ? hash + 1 : out->id.user_key;
    }
    struct idp *x = an_idp_by_id(an, out->id.idp);
    /* oidc_user_id's rule, without its malloc and copy: a bare id is the sub
     * itself (it lives as long as out->id does), else idp ":" sub in the arena. */
    if (x && x->p->bare_user_ids && strchr(sub, ':') == NULL) {
        out->id.user = sub;
        return;
    }
    const char *idp = out->id.idp ? out->id.idp : "?";
    size_t ni = strlen(idp), ns = strlen(sub);
    char *u = arena_alloc(a, ni + 1 + ns + 1);
    if (u != NULL) {
        memcpy(u, idp, ni);
        u[ni] = ':';
        memcpy(u + ni + 1, sub, ns + 1);
    }
    out->id.user = u;
    if (out->id.user == NULL) {
        out->id.user = out->id.user_key; /* arena full: the unambiguous iss#sub */
    }
}

/* After identify_caller (maybe through a key fetch or a refresh): the page, or sign-in. */
static enum authn_step me_or_sign_in(struct authn *an, const struct authn_req *req, struct arena *a,
                                     struct authn_out *out)
{
    if (out->id.user_key == NULL) {
        return unauthenticated(an, req, a, out, "no session");
    }
    set_user_id(an, a, out);
    return me(an, req, a, out);
}

/* ---- entry points ----------------------------------------------------- */

static enum authn_step check_step(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out);

enum authn_step authn_check(struct authn *an, const struct authn_req *req, struct arena *a,
                            struct authn_out *out)
{
    enum authn_step st = check_step(an, req, a, out);
    set_user_id(an, a, out);
    return st;
}

static enum authn_step login_css(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out)
{
    (void)req;
    (void)a;
    if (an->pages == NULL) {
        return an_respond(out, 404, "text/plain; charset=utf-8", "not found\n", 10);
    }
    struct str css = pages_css(an->pages);
    an_respond(out, 200, "text/css; charset=utf-8", css.p, css.len);
    out->resp.headers[0].value = "public, max-age=3600";
    return AUTHN_RESPOND;
}

static enum authn_step jwks_json(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out)
{
    if (an->signer == NULL) {
        return an_respond(out, 404, "text/plain; charset=utf-8", NULL, 0);
    }
    char *j = assertion_jwks_json(an->signer, req->now_ms / 1000);
    const char *body = an_adup(a, j);
    free(j);
    /* no-store like every answer of Gatehouse's own (a verifier keeps
     * the keys it fetched; a rotated key must be seen at once). */
    return an_respond(out, 200, "application/jwk-set+json", body, body ? strlen(body) : 0);
}

/* /.gatehouse/oidc/callback: the one provider's (several have callback/<id>). */
static enum authn_step callback_single(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out)
{
    return an_callback(an, req, a, out, STR_NULL);
}

/* /.gatehouse/me: who am I needs someone, so it is never public. */
static enum authn_step me_endpoint(struct authn *an, const struct authn_req *req, struct arena *a,
                                   struct authn_out *out)
{
    bool anonymous = false;
    enum authn_step st = identify_caller(an, req, a, out, &anonymous);
    if (anonymous) {
        return unauthenticated(an, req, a, out, "no session");
    }
    return st == AUTHN_OK ? me_or_sign_in(an, req, a, out) : st;
}

/* The reserved paths below /.gatehouse/ (authn.h lists them). */
static const struct {
    const char *path;
    endpoint_fn *fn;
} Endpoints[] = {
    { "static/login.css", login_css },
    { "jwks.json", jwks_json },
    { "login", login_endpoint },
    { "oidc/callback", callback_single },
    { "logout", logout_endpoint },
    /* Where the IdP sends the browser after an RP-initiated logout. */
    { "signed-out", an_signed_out },
    { "saml/acs", saml_acs_endpoint },
    { "saml/slo", saml_slo_endpoint },
    { "saml/metadata", saml_metadata },
    { "oidc/backchannel-logout", an_backchannel_logout },
    { "me", me_endpoint },
};

static enum authn_step check_step(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out)
{
    memset(out, 0, sizeof *out);
    if (str_has_prefix(req->path, STR("/.gatehouse/"))) {
        struct str p = { req->path.p + 12, req->path.len - 12 };
        for (size_t i = 0; i < sizeof Endpoints / sizeof Endpoints[0]; i++) {
            if (str_eq_cstr(p, Endpoints[i].path)) {
                return Endpoints[i].fn(an, req, a, out);
            }
        }
        if (str_has_prefix(p, STR("oidc/callback/")) && p.len > 14) {
            struct str id = { p.p + 14, p.len - 14 };
            bool known = false;
            for (size_t i = 0; i < an->nidps && !known; i++) {
                known = str_eq_cstr(id, an->idps[i].p->id);
            }
            if (!known) {
                return an_callback_error(an, req, a, out,
                                         "callback for an unknown identity provider");
            }
            return an_callback(an, req, a, out, id);
        }
        return an_respond(out, 404, "text/plain; charset=utf-8", "not found\n", 10);
    }
    /* Who is calling, or nobody: the route's policy decides whether that is
     * enough (it may allow anonymous callers), and the proxy challenges. */
    bool anonymous = false;
    enum authn_step st = identify_caller(an, req, a, out, &anonymous);
    return anonymous ? AUTHN_OK : st;
}

static enum authn_step resume_step(struct authn *an, const struct authn_req *req, struct arena *a,
                                   struct authn_out *out, int status, struct str body)
{
    struct cont *c = out->cont;
    memset(&out->resp, 0, sizeof out->resp);
    memset(&out->fetch, 0, sizeof out->fetch);
    memset(&out->wait, 0, sizeof out->wait);
    if (c == NULL) {
        an_set_reason(out, "%s", "resume without a pending step");
        return an_internal_error(an, req, a, out);
    }
    switch (c->kind) {
    case CONT_LOGIN_DISCOVERY:
        if (!an_take_discovery(c->idp, status, body, out)) {
            return an_idp_down(an, req, a, out);
        }
        return an_login_redirect(an, req, a, out, c->idp, c->rd, c->prompt);
    case CONT_CALLBACK_DISCOVERY:
        if (!an_take_discovery(c->idp, status, body, out)) {
            return an_callback_fail(an, req, a, out, 502, out->reason);
        }
        return an_callback_token_request(an, req, a, out, c);
    case CONT_TOKEN:
        if (status == 0) {
            an_callback_fail(an, req, a, out, 502, "token endpoint unreachable");
            an_set_reason(out, "%s", "token endpoint unreachable");
            return AUTHN_RESPOND;
        }
        c->token_status = status;
        c->token_body = arena_strndup(a, body.p ? body.p : "", body.len);
        c->token_body_len = body.len;
        if (c->token_body == NULL) {
            return an_internal_error(an, req, a, out);
        }
        return an_token_answer(an, req, a, out, c);
    case CONT_TOKEN_JWKS:
        if (!an_take_jwks(c->idp, status, body, req->now_ms, out)) {
            return an_callback_fail(an, req, a, out, 502, out->reason);
        }
        return an_token_answer(an, req, a, out, c);
    case CONT_USERINFO: {
        json_t *ui = NULL;
        struct err err = { 0 };
        const char *sub = jwt_claim_str(c->tokens.id_claims, "sub");
        if (oidc_userinfo_parse(status, body, sub, &ui, &err) != 0) {
            return an_callback_fail(an, req, a, out, 502,
                                    status == 0 ? "userinfo endpoint unreachable" : err.msg);
        }
        enum authn_step st = an_finish_login(an, req, a, out, c, ui);
        json_decref(ui);
        return st;
    }
    case CONT_REFRESH:
        return an_refresh_finish(an, req, a, out, c, status, body);
    case CONT_BCL_DISCOVERY:
    case CONT_BEARER_DISCOVERY:
        if (!an_take_discovery(c->idp, status, body, out)) {
            return c->kind == CONT_BCL_DISCOVERY
                       ? an_respond(out, 503, "text/plain; charset=utf-8", NULL, 0)
                       : an_idp_down(an, req, a, out);
        }
        return c->kind == CONT_BCL_DISCOVERY ? an_bcl_continue(an, req, a, out, c)
                                             : an_bearer_continue(an, req, a, out, c);
    case CONT_BCL_JWKS:
    case CONT_BEARER_JWKS:
        if (!an_take_jwks(c->idp, status, body, req->now_ms, out)) {
            return c->kind == CONT_BCL_JWKS
                       ? an_respond(out, 503, "text/plain; charset=utf-8", NULL, 0)
                       : an_idp_down(an, req, a, out);
        }
        return c->kind == CONT_BCL_JWKS ? an_bcl_continue(an, req, a, out, c)
                                        : an_bearer_continue(an, req, a, out, c);
    case CONT_SAML_METADATA: {
        struct err err = { 0 };
        if (saml_metadata_take(c->saml, status, body, req->now_ms / 1000, &err) != 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", err.msg);
            out->idp_error = true;
        } else {
            log_emit(LOG_INFO, MOD, req->request_id, NULL, "SAML metadata of %s loaded from %s",
                     saml_idp_id(c->saml), saml_metadata_url(c->saml));
        }
        out->cont = NULL;
        switch ((enum saml_next)c->saml_next) {
        case SAML_NEXT_LOGIN:
            return saml_login(an, req, a, out, c->saml, c->rd);
        case SAML_NEXT_ACS:
            return saml_acs_endpoint(an, req, a, out);
        case SAML_NEXT_METADATA:
            return saml_metadata(an, req, a, out);
        case SAML_NEXT_SLO:
            return saml_slo_endpoint(an, req, a, out);
        }
        break;
    }
    case CONT_ONCE:
        /* status 0: no answer in time, refused as unchecked. */
        switch ((enum once_next)c->once_next) {
        case ONCE_NEXT_SAML_ACS: /* the ACS again: it finds the answer in out->cont */
            return saml_acs_endpoint(an, req, a, out);
        case ONCE_NEXT_TOKEN: {
            int fresh = an_once_verdict(req, c);
            if (fresh < 0) {
                return an_state_unchecked(an, req, a, out);
            }
            if (fresh == 0) {
                return an_callback_error(an, req, a, out,
                                         "login state was already used (replayed callback)");
            }
            c->kind = CONT_TOKEN;
            out->fetch = c->token_fetch;
            return AUTHN_NEED_FETCH;
        }
        case ONCE_NEXT_BCL:
            return an_bcl_decided(an, req, a, out, c);
        case ONCE_NEXT_REFRESH:
            return an_refresh_leased(an, req, out, c);
        }
        break;
    case CONT_NONE:
        break;
    }
    an_set_reason(out, "%s", "unknown pending step");
    return an_internal_error(an, req, a, out);
}

enum authn_step authn_resume(struct authn *an, const struct authn_req *req, struct arena *a,
                             struct authn_out *out, int status, struct str body)
{
    enum authn_step st = resume_step(an, req, a, out, status, body);
    set_user_id(an, a, out);
    if (st == AUTHN_OK && str_eq_cstr(req->path, "/.gatehouse/me")) {
        return me_or_sign_in(an, req, a, out);
    }
    return st;
}
