/* proxy/access/respond.c - every answer the access stage gives the user
 * itself: error pages, the access-denied page, the sign-in challenge (302 for
 * a browser, 401 for an API client), and authn's answers, which are intents
 * (struct authn_resp: sign-in needed, error, redirect, one of its pages)
 * rendered here. "HTML or JSON?" is decided here, once (respond_wants_html);
 * JSON bodies get the request id through pages_json_text (proxy/pages.c).
 *
 * Two layers: respond_render_* are pure (a struct respond_ctx in, a struct
 * respond_answer out: unit-tested without sockets), and the respond_* that
 * the stage calls send what they render. Those send the response: nothing
 * may touch the request afterwards (its arena is gone). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access_int.h"
#include "authn/codec.h"
#include "authn/oidc.h"
#include "authn/page.h"
#include "proxy/http.h"
#include "proxy/pages.h"

#define DENIED_DEFAULT "Access to this app is not allowed."
#define HTML_TYPE      "text/html; charset=utf-8"
#define NO_STORE       "Cache-Control: no-store\r\n"

bool respond_wants_html(const struct request *r)
{
    return http_wants_html(request_header(r, STR("accept"), NULL),
                           request_header(r, STR("x-requested-with"), NULL));
}

/* ---- rendering (pure) ---------------------------------------------------------- */

static bool set(struct respond_answer *ans, int status, const char *ctype, struct str body,
                const char *headers)
{
    *ans = (struct respond_answer){ status, ctype, body, headers ? headers : "" };
    return body.p != NULL && headers != NULL;
}

static bool render_page(const struct respond_ctx *c, int status, enum page_kind k,
                        const struct page_var *vars, size_t n, const char *headers,
                        struct respond_answer *ans)
{
    size_t len = 0;
    char *html = c->pages ? pages_render(c->pages, k, vars, n, c->arena, &len) : NULL;
    return set(ans, status, HTML_TYPE, (struct str){ html, len }, headers);
}

/* A JSON object made by jansson, with the request id, as the body. */
static bool render_json(const struct respond_ctx *c, int status, json_t *o, const char *headers,
                        struct respond_answer *ans)
{
    char *s = pages_json_text(o, c->request_id);
    char *body = s ? arena_strdup(c->arena, s) : NULL;
    free(s);
    return set(ans, status, "application/json", str_from(body), headers);
}

bool respond_render_error(const struct respond_ctx *c, int status, const char *title,
                          const char *message, const char *extra, struct respond_answer *ans)
{
    const char *hdr = arena_printf(c->arena, NO_STORE "%s", extra ? extra : "");
    if (!c->html) {
        return render_json(c, status, json_pack("{s:s, s:s}", "error", title, "message", message),
                           hdr, ans);
    }
    if (!c->pages) {
        return set(ans, status, "text/plain; charset=utf-8", str_from(title), hdr);
    }
    struct page_var v[] = { { "title", title },
                            { "message", message },
                            { "request_id", c->request_id },
                            { "retry_url", "/.gatehouse/login" } };
    return render_page(c, status, PAGE_ERROR, v, 4, hdr, ans);
}

static char *url_encode(struct arena *a, struct str s)
{
    struct sbuf b = { 0 };
    codec_buf_add_urlenc(&b, s);
    char *t = codec_buf_take(&b);
    char *out = arena_strdup(a, t ? t : "");
    free(t);
    return out;
}

bool respond_render_signin(const struct respond_ctx *c, bool bearer, bool redirect,
                           const char *extra, struct respond_answer *ans)
{
    if (!extra) {
        extra = "";
    }
    if (redirect && c->html && !bearer) {
        /* Only a safe same-host path is carried along (//evil.example/x is
         * a valid request target but not a return URL). */
        char *rd = url_encode(c->arena, oidc_return_path_safe(c->target) ? c->target : STR("/"));
        char *hdr = arena_printf(c->arena, "Location: /.gatehouse/login?rd=%s\r\n" NO_STORE "%s",
                                 rd ? rd : "%2F", extra);
        return set(ans, 302, "text/plain", STR("sign-in required\n"), hdr);
    }
    /* RFC 6750 §3.1: say when the token itself was refused. */
    char *hdr =
        arena_printf(c->arena, "WWW-Authenticate: Bearer realm=\"gatehouse\"%s\r\n" NO_STORE "%s",
                     bearer ? ", error=\"invalid_token\"" : "", extra);
    return render_json(c, 401,
                       json_pack("{s:s, s:s}", "error", "unauthenticated", "message",
                                 "sign-in or a bearer token is required"),
                       hdr, ans);
}

/* authn's header lines (Set-Cookie, Allow, Cache-Control...) as one string. */
static const char *authn_headers(struct arena *a, const struct authn_resp *rs)
{
    size_t len = 1;
    for (size_t i = 0; i < rs->nheaders; i++) {
        len += strlen(rs->headers[i].name) + strlen(rs->headers[i].value) + 4;
    }
    char *extra = arena_alloc(a, len);
    size_t off = 0;
    for (size_t i = 0; extra && i < rs->nheaders; i++) {
        int n = snprintf(extra + off, len - off, "%s: %s\r\n", rs->headers[i].name,
                         rs->headers[i].value);
        if (n < 0 || (size_t)n >= len - off) {
            return NULL;
        }
        off += (size_t)n;
    }
    if (extra) {
        extra[off] = '\0';
    }
    return extra;
}

bool respond_render_authn(const struct respond_ctx *c, const struct authn_out *o,
                          struct respond_answer *ans)
{
    const struct authn_resp *rs = &o->resp;
    const char *extra = authn_headers(c->arena, rs);

    if (!extra) {
        return set(ans, 500, NULL, STR_NULL, NULL);
    }
    switch (rs->kind) {
    case AUTHN_ANSWER_SIGNIN:
        return respond_render_signin(c, o->id.bearer, !rs->no_redirect, extra, ans);
    case AUTHN_ANSWER_ERROR:
        return respond_render_error(c, rs->status, rs->title ? rs->title : "Sign-in failed",
                                    rs->message ? rs->message : "", extra, ans);
    case AUTHN_ANSWER_REDIRECT:
        return set(ans, rs->status, "text/plain; charset=utf-8", STR(""),
                   rs->location ? arena_printf(c->arena, "Location: %s\r\n%s", rs->location, extra)
                                : NULL);
    case AUTHN_ANSWER_PAGE:
        /* One of authn's own pages: its template, or its JSON form for API clients. */
        if (rs->json && !c->html) {
            return set(ans, rs->status, "application/json", str_from(rs->json), extra);
        }
        if (rs->page < 0 || rs->page >= PAGE_COUNT) {
            break;
        }
        return render_page(c, rs->status, (enum page_kind)rs->page, rs->vars, rs->nvars, extra,
                           ans);
    case AUTHN_ANSWER_CONTENT:
        return set(ans, rs->status, rs->content_type ? rs->content_type : "text/plain",
                   (struct str){ rs->body ? rs->body : "", rs->body ? rs->body_len : 0 }, extra);
    case AUTHN_ANSWER_NONE:
        break;
    }
    return set(ans, 500, NULL, STR_NULL, NULL); /* nothing set: fail closed */
}

/* ---- sending ---------------------------------------------------------------------- */

static struct respond_ctx ctx_of(struct request *r, const struct authn *an)
{
    return (struct respond_ctx){ .arena = r->arena,
                                 .request_id = r->id,
                                 .html = respond_wants_html(r),
                                 .pages = an ? authn_pages(an) : NULL,
                                 .target = r->target };
}

/* Sends what was rendered; a render that failed (out of request memory, no
 * page) is a plain 500. */
static enum access_step send(struct request *r, bool ok, const struct respond_answer *ans)
{
    if (!ok) {
        request_error(r, 500, "response too large");
        return ACCESS_RESPOND;
    }
    request_respond(r, ans->status, ans->ctype, ans->body, ans->headers[0] ? ans->headers : NULL);
    return ACCESS_RESPOND;
}

enum access_step respond_error(struct request *r, const struct authn *an, int status,
                               const char *title, const char *message, const char *log_reason)
{
    struct respond_ctx c = ctx_of(r, an);
    struct respond_answer ans;

    log_emit(status >= 500 ? LOG_WARN : LOG_INFO, "authn", r->id, NULL, "%s: %s", title,
             log_reason ? log_reason : message);
    return send(r, respond_render_error(&c, status, title, message, NULL, &ans), &ans);
}

enum access_step respond_signin(struct request *r, bool bearer)
{
    struct respond_ctx c = ctx_of(r, NULL);
    struct respond_answer ans;

    return send(r, respond_render_signin(&c, bearer, true, NULL, &ans), &ans);
}

enum access_step respond_authn(struct request *r, const struct authn *an, const struct authn_out *o)
{
    struct respond_ctx c = ctx_of(r, an);
    struct respond_answer ans;

    return send(r, respond_render_authn(&c, o, &ans), &ans);
}

enum access_step respond_denied(struct request *r, const struct authn *an, const char *user,
                                const char *email, const char *reason, bool show_reason,
                                const char *device_hint)
{
    struct respond_ctx c = ctx_of(r, an);
    struct respond_answer ans;
    const char *shown = show_reason && reason ? reason : DENIED_DEFAULT;

    if (device_hint) {
        /* An enrolled device would have been allowed: say what to do. */
        const char *s = arena_printf(r->arena,
                                     "%s This app needs an enrolled device: open it from your "
                                     "company laptop with its device certificate installed, or "
                                     "ask your administrator to enrol this device (%s).",
                                     shown, device_hint);
        shown = s ? s : "This app needs an enrolled device.";
    }
    if (!c.html) {
        return send(r,
                    render_json(&c, 403,
                                json_pack("{s:s, s:s, s:s?}", "error", "forbidden", "reason", shown,
                                          "user", user),
                                "", &ans),
                    &ans);
    }
    /* "Sign in as someone else" comes back here, to this very URL. */
    const char *here = r->query.len ? arena_printf(r->arena, "%.*s?%.*s", (int)r->path.len,
                                                   r->path.p, (int)r->query.len, r->query.p)
                                    : arena_strndup(r->arena, r->path.p, r->path.len);
    struct page_var v[] = { { "reason", shown },
                            { "user", email ? email : user },
                            { "request_id", r->id },
                            { "switch_user_url",
                              authn_switch_user_url(r->arena, here ? str_from(here) : STR("/")) } };
    return send(r, render_page(&c, 403, PAGE_DENIED, v, 4, NO_STORE, &ans), &ans);
}
