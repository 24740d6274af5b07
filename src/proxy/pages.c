/* proxy/pages.c - the error pages Gatehouse answers itself (400, 403, 404,
 * 408, 413, 414, 431, 502, 503, 504, ...): HTML for browsers, JSON for API
 * callers, both carrying the request id so users can quote it to admins.
 * Details are short, fixed texts: never echo request input. */
#include <stdio.h>

#include "http.h"
#include "io.h"

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
                   "<title>%d %s</title></head>\n<body><h1>%d %s</h1>\n<p>%s</p>\n"
                   "<p>Request ID: <code>%s</code></p>\n</body></html>\n",
                   status, reason, status, reason, detail, request_id);
    } else {
        *ctype = "application/json";
        buf_printf(body, "{\"status\":%d,\"error\":\"%s\",\"detail\":\"%s\",\"request_id\":\"%s\"}\n",
                   status, reason, detail, request_id);
    }
}
