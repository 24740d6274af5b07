/* proxy/access/respond.c - every answer the access stage gives the user
 * itself: error pages, the access-denied page, the sign-in challenge (302 for
 * a browser, 401 for an API client) and authn's own answers. "HTML or JSON?"
 * is decided here, once. Each function sends the response: nothing may touch
 * the request afterwards (its arena is gone). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "access_int.h"
#include "authn/codec.h"
#include "authn/oidc.h"
#include "authn/page.h"
#include "proxy/http.h"

#define DENIED_DEFAULT "Access to this app is not allowed."

bool respond_wants_html(const struct request *r)
{
    return http_wants_html(request_header(r, STR("accept"), NULL),
                           request_header(r, STR("x-requested-with"), NULL));
}

static enum access_step send(struct request *r, int status, const char *ctype, struct str body,
                             const char *extra)
{
    request_respond(r, status, ctype, body, extra);
    return ACCESS_RESPOND;
}

static enum access_step page(struct request *r, const struct authn *an, int status,
                             enum page_kind k, const struct page_var *vars, size_t n,
                             const char *extra)
{
    size_t len = 0;
    char *html = pages_render(authn_pages(an), k, vars, n, r->arena, &len);
    if (!html) {
        request_error(r, 500, "page too large");
        return ACCESS_RESPOND;
    }
    return send(r, status, "text/html; charset=utf-8", (struct str){ html, len }, extra);
}

/* A JSON object made by jansson (so every value is escaped), as the body. */
static enum access_step send_json(struct request *r, int status, json_t *o, const char *extra)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    char *body = arena_strdup(r->arena, s ? s : "{}");
    free(s);
    if (!body) {
        request_error(r, 500, "response too large");
        return ACCESS_RESPOND;
    }
    return send(r, status, "application/json", str_from(body), extra);
}

enum access_step respond_error(struct request *r, const struct authn *an, int status,
                               const char *title, const char *message, const char *log_reason)
{
    log_emit(status >= 500 ? LOG_WARN : LOG_INFO, "authn", r->id, NULL, "%s: %s", title,
             log_reason ? log_reason : message);
    if (respond_wants_html(r)) {
        struct page_var v[] = { { "title", title },
                                { "message", message },
                                { "request_id", r->id },
                                { "retry_url", "/.gatehouse/login" } };
        return page(r, an, status, PAGE_ERROR, v, 4, NULL);
    }
    return send_json(
        r, status,
        json_pack("{s:s, s:s, s:s}", "error", title, "message", message, "request_id", r->id),
        NULL);
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

enum access_step respond_signin(struct request *r, bool bearer)
{
    if (respond_wants_html(r) && !bearer) {
        /* Only a safe same-host path is carried along (//evil.example/x is
         * a valid request target but not a return URL). */
        char *rd = url_encode(r->arena, oidc_return_path_safe(r->target) ? r->target : STR("/"));
        char *hdr = arena_printf(r->arena,
                                 "Location: /.gatehouse/login?rd=%s\r\n"
                                 "Cache-Control: no-store\r\n",
                                 rd ? rd : "%2F");
        return send(r, 302, "text/plain", STR("sign-in required\n"), hdr);
    }
    /* RFC 6750 §3.1: say when the token itself was refused. */
    return send_json(r, 401,
                     json_pack("{s:s, s:s, s:s}", "error", "unauthenticated", "message",
                               "sign-in or a bearer token is required", "request_id", r->id),
                     bearer ? "WWW-Authenticate: Bearer realm=\"gatehouse\", "
                              "error=\"invalid_token\"\r\nCache-Control: no-store\r\n"
                            : "WWW-Authenticate: Bearer realm=\"gatehouse\"\r\n"
                              "Cache-Control: no-store\r\n");
}

enum access_step respond_denied(struct request *r, const struct authn *an, const char *user,
                                const char *email, const char *reason, bool show_reason,
                                const char *device_hint)
{
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

    if (respond_wants_html(r)) {
        /* "Sign in as someone else" comes back here, to this very URL. */
        const char *here = r->query.len ? arena_printf(r->arena, "%.*s?%.*s", (int)r->path.len,
                                                       r->path.p, (int)r->query.len, r->query.p)
                                        : arena_strndup(r->arena, r->path.p, r->path.len);
        struct page_var v[] = {
            { "reason", shown },
            { "user", email ? email : user },
            { "request_id", r->id },
            { "switch_user_url", authn_switch_user_url(r->arena, here ? str_from(here) : STR("/")) }
        };
        return page(r, an, 403, PAGE_DENIED, v, 4, "Cache-Control: no-store\r\n");
    }
    return send_json(r, 403,
                     json_pack("{s:s, s:s, s:s, s:s?}", "error", "forbidden", "reason", shown,
                               "request_id", r->id, "user", user),
                     NULL);
}

enum access_step respond_authn(struct request *r, const struct authn_resp *rs)
{
    size_t len = 1;

    if (rs->status == 0) {
        request_error(r, 500, "sign-in failed");
        return ACCESS_RESPOND;
    }
    for (size_t i = 0; i < rs->nheaders; i++) {
        len += strlen(rs->headers[i].name) + strlen(rs->headers[i].value) + 4;
    }
    char *extra = arena_alloc(r->arena, len);
    if (!extra) {
        request_error(r, 431, "request too large");
        return ACCESS_RESPOND;
    }
    size_t off = 0;
    for (size_t i = 0; i < rs->nheaders; i++) {
        int n = snprintf(extra + off, len - off, "%s: %s\r\n", rs->headers[i].name,
                         rs->headers[i].value);
        if (n < 0 || (size_t)n >= len - off) {
            request_error(r, 500, "sign-in answer too large");
            return ACCESS_RESPOND;
        }
        off += (size_t)n;
    }
    extra[off] = '\0';
    return send(r, rs->status, rs->content_type ? rs->content_type : "text/plain",
                (struct str){ rs->body ? rs->body : "", rs->body ? rs->body_len : 0 }, extra);
}
