/* proxy/pages.c - the error pages Gatehouse answers itself (400, 403, 404,
 * 408, 413, 414, 431, 502, 503, 504, ...): HTML for browsers, JSON for API
 * callers, both carrying the request id so users can quote it to admins.
 * Details are short, fixed texts: never echo request input. */
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authn/page.h"
#include "http.h"
#include "io.h"
#include "pages.h"

/* The sign-in page templates of the running process (access_start installs
 * them): 5xx pages for browsers look like the rest of Gatehouse. */
static _Atomic(const struct pages *) g_templates;

void pages_use_templates(const struct pages *t)
{
    atomic_store(&g_templates, t);
}

bool pages_error_template(struct buf *body, int status, const char *detail, const char *request_id,
                          struct str path, struct arena *a)
{
    const struct pages *t = atomic_load(&g_templates);
    char title[64], *message;
    const char *retry;
    size_t len = 0;

    if (!t) {
        return false;
    }
    snprintf(title, sizeof title, "%d %s", status, http_reason(status));
    detail = detail ? detail : http_reason(status);
    /* A sentence for people: capital first letter, final full stop. */
    size_t n = strlen(detail);
    message = arena_alloc(a, n + 2);
    if (!message) {
        return false;
    }
    memcpy(message, detail, n + 1);
    message[0] = (char)toupper((unsigned char)message[0]);
    if (n > 0 && message[n - 1] != '.') {
        message[n] = '.';
        message[n + 1] = '\0';
    }
    /* "Try again" reloads the page asked for: a local path only (never
     * "//host", which a browser would take for another site). */
    bool local = path.len > 0 && path.p[0] == '/' && (path.len == 1 || path.p[1] != '/') &&
                 !memchr(path.p, '\\', path.len);
    retry = local ? arena_strndup(a, path.p, path.len) : "/";
    struct page_var v[] = { { "title", title },
                            { "message", message },
                            { "request_id", request_id },
                            { "retry_url", retry ? retry : "/" } };
    char *html = pages_render(t, PAGE_ERROR, v, sizeof v / sizeof v[0], a, &len);
    if (!html) {
        return false;
    }
    buf_append(body, html, len);
    return true;
}

/* Details are fixed texts, but some come from llhttp's error table: escape
 * them anyway so no page can ever carry markup (JSON: pages_json_text). */
static void escaped(struct buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '<' || c == '>' || c == '&' || c == '"' || c == '\'') {
            buf_printf(b, "&#%d;", c);
        } else if (c < 0x20 || c == 0x7f) {
            buf_append(b, " ", 1);
        } else {
            buf_append(b, s, 1);
        }
    }
}

void pages_error(struct buf *body, const char **ctype, int status, const char *detail,
                 const char *request_id, bool html)
{
    const char *reason = http_reason(status);

    if (!detail) {
        detail = reason;
    }
    if (html) {
        *ctype = "text/html; charset=utf-8";
        buf_printf(body,
                   "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                   "<title>%d %s</title></head>\n<body><h1>%d %s</h1>\n<p>",
                   status, reason, status, reason);
        escaped(body, detail);
        buf_append_str(body, STR("</p>\n<p>Request ID: <code>"));
        escaped(body, request_id);
        buf_append_str(body, STR("</code></p>\n</body></html>\n"));
    } else {
        *ctype = "application/json";
        char *js = pages_json_text(
            json_pack("{s:i, s:s, s:s}", "status", status, "error", reason, "detail", detail),
            request_id);
        buf_append_str(body, str_from(js ? js : "{}"));
        buf_append_str(body, STR("\n"));
        free(js);
    }
}

char *pages_json_text(json_t *o, const char *request_id)
{
    if (o && request_id) {
        json_object_set_new(o, "request_id", json_string(request_id));
    }
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}
