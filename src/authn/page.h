/* authn/page.h - the sign-in chooser, signed-out, access-denied, error and
 * "me" pages from the web/login templates. Templates are read once at start-up and
 * checked: {{name}} inserts HTML-escaped text, {{{name}}} inserts HTML that our
 * own code built (only names listed as raw for that page are accepted). */
#ifndef GH_AUTHN_PAGE_H
#define GH_AUTHN_PAGE_H

#include "core/core.h"

enum page_kind {
    PAGE_CHOOSER = 0,
    PAGE_SIGNED_OUT,
    PAGE_DENIED,
    PAGE_ERROR,
    PAGE_ME,
    PAGE_LOGOUT, /* "Sign out?" confirmation: a POST form with the session's token */
    PAGE_COUNT
};

struct pages;

/* Loads every template and login.css from dir (web/login). Unknown or
 * unbalanced placeholders are reported with file:line. Blocking file I/O. */
struct pages *pages_load(const char *dir, struct err *err);
void pages_free(struct pages *p);

struct page_var {
    const char *name;
    const char *value; /* NULL renders as empty */
};

/* Renders page k. Text variables are HTML-escaped; a variable the page does not
 * use is ignored, one it uses but is not given renders empty. Arena-owned
 * NUL-terminated HTML, or NULL at the arena cap. */
char *pages_render(const struct pages *p, enum page_kind k, const struct page_var *vars,
                   size_t nvars, struct arena *a, size_t *len);

/* The stylesheet for /.gatehouse/static/login.css (borrowed). */
struct str pages_css(const struct pages *p);

struct page_provider {
    const char *id;   /* identity provider id */
    const char *name; /* label; NULL = id */
};

/* The chooser's list items: one link per provider to
 * /.gatehouse/login?idp=<id>&rd=<rd>[&prompt=<prompt>], labelled with its
 * name, every part escaped. rd must already be a safe return path; prompt is
 * NULL or a checked value. Arena-owned. */
char *pages_provider_list(struct arena *a, const struct page_provider *pv, size_t n, struct str rd,
                          const char *prompt);

/* HTML-escapes s (& < > " ') into the arena. */
char *html_escape(struct arena *a, struct str s);

#endif
