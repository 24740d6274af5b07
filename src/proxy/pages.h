/* proxy/pages.h - the proxy's own error pages (pages.c): built in, or from the
 * sign-in templates once the access stage installs them. */
#ifndef GH_PROXY_PAGES_H
#define GH_PROXY_PAGES_H

#include <stdbool.h>

#include <jansson.h>

#include "buf.h"

/* The built-in error page: HTML, or JSON {"status", "error", "detail",
 * "request_id"} (html false). */
void pages_error(struct buf *body, const char **ctype, int status, const char *detail,
                 const char *request_id, bool html);
/* The HTML error page from the sign-in templates (web/login/error.html, see
 * pages_use_templates), with a "Try again" link to path (when it is a local
 * path). false when no templates are installed or the page does not fit. */
struct pages;
bool pages_error_template(struct buf *body, int status, const char *detail, const char *request_id,
                          struct str path, struct arena *a);
/* Installs the templates (owned by the caller, alive until replaced; NULL
 * removes them). Any thread; the pages stay valid while installed. */
void pages_use_templates(const struct pages *t);
/* The JSON body of an answer Gatehouse gives itself: o (its reference is
 * taken) with "request_id" added (NULL: left out), compact. Every value is
 * escaped by jansson: the one place a request id goes into JSON. malloc'd, or
 * NULL when o is NULL or does not encode. */
char *pages_json_text(json_t *o, const char *request_id);

#endif
