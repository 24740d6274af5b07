/* proxy/pages.c - the error pages Gatehouse answers itself (400, 403, 404,
 * 408, 413, 414, 431, 502, 503, 504, ...): HTML for browsers, JSON for API
 * callers, both carrying the request id so users can quote it to admins.
 * Details are short, fixed texts: never echo request input. */
#include <stdio.h>

#include "http.h"
#include "io.h"

/* Details are fixed texts, but some come from llhttp's error table: escape
 * them anyway so no page can ever carry markup or break its JSON. */
static void escaped(struct buf *b, const char *s, bool html)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (html && (c == '<' || c == '>' || c == '&' || c == '"' || c == '\'')) {
            buf_printf(b, "&#%d;", c);
        } else if (!html && (c == '"' || c == '\\')) {
            buf_append(b, "\\", 1);
            buf_append(b, s, 1);
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
        escaped(body, detail, true);
        buf_append_str(body, STR("</p>\n<p>Request ID: <code>"));
        escaped(body, request_id, true);
        buf_append_str(body, STR("</code></p>\n</body></html>\n"));
    } else {
        *ctype = "application/json";
        buf_printf(body, "{\"status\":%d,\"error\":\"%s\",\"detail\":\"", status, reason);
        escaped(body, detail, false);
        buf_append_str(body, STR("\",\"request_id\":\""));
        escaped(body, request_id, false);
        buf_append_str(body, STR("\"}\n"));
    }
}
