/* authn/page.c - a deliberately tiny template engine for the sign-in pages:
 * placeholders only, no logic, escaping by default. Templates are validated
 * at load so a typo in web/login fails at start-up, not in front of a user. */
#include "page.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define MAX_TEMPLATE_BYTES (64 * 1024)

struct page_def {
    const char *file;
    const char *const *text_vars;
    const char *const *raw_vars;
};

static const char *const chooser_text[] = { "host", NULL };
static const char *const chooser_raw[] = { "providers", NULL };
static const char *const signed_out_text[] = { "host", "sign_in_url", NULL };
static const char *const denied_text[] = { "reason", "user", "request_id", "switch_user_url",
                                           NULL };
static const char *const logout_text[] = { "host", "user", "csrf_token", NULL };
static const char *const error_text[] = { "title", "message", "request_id", "retry_url", NULL };
static const char *const me_text[] = { "name",   "user",    "email",        "groups", "idp",
                                       "device", "expires", "idle_expires", NULL };
static const char *const none[] = { NULL };

static const struct page_def defs[PAGE_COUNT] = {
    [PAGE_CHOOSER] = { "chooser.html", chooser_text, chooser_raw },
    [PAGE_SIGNED_OUT] = { "signed_out.html", signed_out_text, none },
    [PAGE_DENIED] = { "denied.html", denied_text, none },
    [PAGE_ERROR] = { "error.html", error_text, none },
    [PAGE_ME] = { "me.html", me_text, none },
    [PAGE_LOGOUT] = { "logout.html", logout_text, none },
};

/* A template pre-split into literal text and placeholders. */
struct piece {
    struct str lit;  /* literal text before the placeholder */
    const char *var; /* placeholder name (static, from the page table) or NULL at the end */
    bool raw;
};

struct tmpl {
    char *text;
    struct piece *pieces;
    size_t n;
};

struct pages {
    struct tmpl t[PAGE_COUNT];
    char *css;
    size_t css_len;
};

static const char *lookup(const char *const *names, struct str n)
{
    for (size_t i = 0; names[i] != NULL; i++) {
        if (str_eq_cstr(n, names[i])) {
            return names[i];
        }
    }
    return NULL;
}

static int line_of(const char *text, const char *at)
{
    int line = 1;
    for (const char *p = text; p < at; p++) {
        line += *p == '\n';
    }
    return line;
}

static int compile(struct tmpl *t, const char *path, const struct page_def *d, struct err *err)
{
    size_t cap = 8;
    const char *p = t->text;
    const char *lit = p;

    t->pieces = xcalloc(cap, sizeof *t->pieces);
    for (;;) {
        const char *open = strstr(p, "{{");
        if (open == NULL) {
            break;
        }
        bool raw = strncmp(open, "{{{", 3) == 0;
        const char *name = open + (raw ? 3 : 2);
        const char *close = strstr(name, raw ? "}}}" : "}}");
        if (close == NULL) {
            return err_set(err, ERR_CONFIG, "%s:%d: unclosed placeholder", path,
                           line_of(t->text, open));
        }
        struct str n = str_trim((struct str){ name, (size_t)(close - name) });
        const char *var = lookup(raw ? d->raw_vars : d->text_vars, n);
        if (var == NULL) {
            return err_set(err, ERR_CONFIG, "%s:%d: unknown %splaceholder \"%.*s\"", path,
                           line_of(t->text, open), raw ? "raw " : "", (int)n.len, n.p);
        }
        if (t->n + 2 > cap) {
            cap *= 2;
            t->pieces = xrealloc(t->pieces, cap * sizeof *t->pieces);
        }
        t->pieces[t->n++] = (struct piece){ { lit, (size_t)(open - lit) }, var, raw };
        p = close + (raw ? 3 : 2);
        lit = p;
    }
    t->pieces[t->n++] = (struct piece){ { lit, strlen(lit) }, NULL, false };
    return 0;
}

struct pages *pages_load(const char *dir, struct err *err)
{
    struct pages *p = xcalloc(1, sizeof *p);
    for (size_t k = 0; k < PAGE_COUNT; k++) {
        char *path = xasprintf("%s/%s", dir, defs[k].file);
        size_t len = 0;
        p->t[k].text = conf_read_file(path, MAX_TEMPLATE_BYTES, &len, err);
        int rc = p->t[k].text ? compile(&p->t[k], path, &defs[k], err) : ERR_IO;
        free(path);
        if (rc != 0) {
            pages_free(p);
            return NULL;
        }
    }
    char *css = xasprintf("%s/login.css", dir);
    p->css = conf_read_file(css, MAX_TEMPLATE_BYTES, &p->css_len, err);
    free(css);
    if (p->css == NULL) {
        pages_free(p);
        return NULL;
    }
    return p;
}

void pages_free(struct pages *p)
{
    if (p == NULL) {
        return;
    }
    for (size_t k = 0; k < PAGE_COUNT; k++) {
        free(p->t[k].text);
        free(p->t[k].pieces);
    }
    free(p->css);
    free(p);
}

struct str pages_css(const struct pages *p)
{
    return (struct str){ p->css, p->css_len };
}

static void escape_into(struct sbuf *b, struct str s)
{
    for (size_t i = 0; i < s.len; i++) {
        switch (s.p[i]) {
        case '&':
            codec_buf_adds(b, "&amp;");
            break;
        case '<':
            codec_buf_adds(b, "&lt;");
            break;
        case '>':
            codec_buf_adds(b, "&gt;");
            break;
        case '"':
            codec_buf_adds(b, "&quot;");
            break;
        case '\'':
            codec_buf_adds(b, "&#39;");
            break;
        default:
            codec_buf_add(b, s.p + i, 1);
        }
    }
}

static char *to_arena(struct arena *a, struct sbuf *b, size_t *len)
{
    char *out = arena_strndup(a, b->p ? b->p : "", b->len);
    if (len != NULL) {
        *len = b->len;
    }
    codec_buf_fini(b);
    return out;
}

char *html_escape(struct arena *a, struct str s)
{
    struct sbuf b = { 0 };
    escape_into(&b, s);
    return to_arena(a, &b, NULL);
}

char *pages_render(const struct pages *p, enum page_kind k, const struct page_var *vars,
                   size_t nvars, struct arena *a, size_t *len)
{
    const struct tmpl *t = &p->t[k];
    struct sbuf b = { 0 };
    for (size_t i = 0; i < t->n; i++) {
        codec_buf_add(&b, t->pieces[i].lit.p, t->pieces[i].lit.len);
        if (t->pieces[i].var == NULL) {
            continue;
        }
        const char *v = NULL;
        for (size_t j = 0; j < nvars; j++) {
            if (strcmp(vars[j].name, t->pieces[i].var) == 0) {
                v = vars[j].value;
                break;
            }
        }
        if (v == NULL) {
            continue;
        }
        if (t->pieces[i].raw) {
            codec_buf_adds(&b, v);
        } else {
            escape_into(&b, str_from(v));
        }
    }
    return to_arena(a, &b, len);
}

char *pages_provider_list(struct arena *a, const struct page_provider *pv, size_t n, struct str rd,
                          const char *prompt)
{
    struct sbuf b = { 0 };
    for (size_t i = 0; i < n; i++) {
        struct sbuf href = { 0 };
        codec_buf_adds(&href, "/.gatehouse/login?idp=");
        codec_buf_add_urlenc(&href, str_from(pv[i].id));
        codec_buf_adds(&href, "&rd=");
        codec_buf_add_urlenc(&href, rd);
        if (prompt != NULL) {
            codec_buf_adds(&href, "&prompt=");
            codec_buf_add_urlenc(&href, str_from(prompt));
        }
        codec_buf_adds(&b, "<li><a class=\"button\" href=\"");
        escape_into(&b, (struct str){ href.p, href.len });
        codec_buf_adds(&b, "\">Sign in with ");
        escape_into(&b, str_from(pv[i].name ? pv[i].name : pv[i].id));
        codec_buf_adds(&b, "</a></li>\n");
        codec_buf_fini(&href);
    }
    return to_arena(a, &b, NULL);
}
