/* core/conf.c - YAML (libyaml event API) into a positioned node tree, plus the
 * diagnostics and typed getters every module uses to read its section. */
#include "conf.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "mem.h"
#include "str.h"

/* ---- diagnostics ---- */

static void diag_add(struct conf_diag *d, char *msg)
{
    d->count++;
    if (d->stored < sizeof d->msgs / sizeof d->msgs[0]) {
        d->msgs[d->stored++] = msg;
    } else {
        free(msg);
    }
}

void conf_error(struct conf_diag *d, const struct conf_node *n, const char *fmt, ...)
{
    char body[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (n && n->file) {
        diag_add(d, xasprintf("%s:%d:%d: error: %s", n->file, n->line, n->col, body));
    } else {
        diag_add(d, xasprintf("error: %s", body));
    }
}

void conf_error_raw(struct conf_diag *d, const char *fmt, ...)
{
    char body[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    diag_add(d, xstrdup(body));
}

void conf_diag_print(const struct conf_diag *d, void *file)
{
    FILE *f = file;
    for (size_t i = 0; i < d->stored; i++) {
        fprintf(f, "%s\n", d->msgs[i]);
    }
    if (d->count > d->stored) {
        fprintf(f, "... and %zu more errors\n", d->count - d->stored);
    }
}

void conf_diag_fini(struct conf_diag *d)
{
    for (size_t i = 0; i < d->stored; i++) {
        free(d->msgs[i]);
    }
    memset(d, 0, sizeof *d);
}

/* ---- tree ---- */

static void node_free(struct conf_node *n)
{
    if (!n) {
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        node_free(n->items[i]);
        if (n->keys) {
            node_free(n->keys[i]);
        }
    }
    free(n->items);
    free(n->keys);
    free(n->value);
    free(n);
}

void conf_doc_free(struct conf_doc *doc)
{
    if (!doc) {
        return;
    }
    node_free(doc->root);
    free(doc->file);
    free(doc);
}

struct builder {
    yaml_parser_t parser;
    struct conf_doc *doc;
    struct conf_diag *d;
    int depth;
};

static struct conf_node *node_new(struct builder *b, enum conf_type t, yaml_mark_t mark)
{
    struct conf_node *n = xcalloc(1, sizeof *n);
    n->type = t;
    n->file = b->doc->file;
    n->line = (int)mark.line + 1;
    n->col = (int)mark.column + 1;
    return n;
}

static void node_push(struct conf_node *parent, struct conf_node *key, struct conf_node *val)
{
    parent->items = xrealloc(parent->items, (parent->n + 1) * sizeof *parent->items);
    if (key) {
        parent->keys = xrealloc(parent->keys, (parent->n + 1) * sizeof *parent->keys);
        parent->keys[parent->n] = key;
    }
    parent->items[parent->n++] = val;
}

static void parse_error(struct builder *b)
{
    yaml_parser_t *p = &b->parser;
    yaml_mark_t m = p->problem_mark;
    const char *what = p->problem ? p->problem : "invalid YAML";

    if (p->context) {
        conf_error_raw(b->d, "%s:%zu:%zu: error: %s %s", b->doc->file, m.line + 1, m.column + 1,
                       what, p->context);
    } else {
        conf_error_raw(b->d, "%s:%zu:%zu: error: %s", b->doc->file, m.line + 1, m.column + 1, what);
    }
}

/* Builds the node that starts with event ev (already fetched). Returns NULL on error. */
static struct conf_node *build(struct builder *b, yaml_event_t *ev)
{
    struct conf_node *n = NULL;

    if (++b->depth > 64) {
        conf_error_raw(b->d, "%s:%zu:%zu: error: nesting deeper than 64 levels", b->doc->file,
                       ev->start_mark.line + 1, ev->start_mark.column + 1);
        return NULL;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        n = node_new(b, CONF_SCALAR, ev->start_mark);
        n->len = ev->data.scalar.length;
        n->value = xstrndup((const char *)ev->data.scalar.value, n->len);
        n->quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                    ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
        if (!n->quoted &&
            (strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 || n->len == 0)) {
            n->type = CONF_NULL;
        }
        break;
    case YAML_ALIAS_EVENT:
        conf_error_raw(b->d, "%s:%zu:%zu: error: YAML aliases are not supported", b->doc->file,
                       ev->start_mark.line + 1, ev->start_mark.column + 1);
        break;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        bool is_map = ev->type == YAML_MAPPING_START_EVENT;
        yaml_event_type_t end = is_map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT;
        n = node_new(b, is_map ? CONF_MAP : CONF_SEQ, ev->start_mark);
        for (;;) {
            yaml_event_t e;
            struct conf_node *key = NULL, *val;
            if (!yaml_parser_parse(&b->parser, &e)) {
                parse_error(b);
                goto fail;
            }
            if (e.type == end) {
                yaml_event_delete(&e);
                break;
            }
            if (is_map) {
                key = build(b, &e);
                yaml_event_delete(&e);
                if (!key) {
                    goto fail;
                }
                if (key->type != CONF_SCALAR) {
                    conf_error(b->d, key, "a key must be a plain string");
                    node_free(key);
                    goto fail;
                }
                for (size_t i = 0; i < n->n; i++) {
                    if (strcmp(n->keys[i]->value, key->value) == 0) {
                        conf_error(b->d, key, "duplicate key \"%s\" (first at line %d)", key->value,
                                   n->keys[i]->line);
                    }
                }
                if (!yaml_parser_parse(&b->parser, &e)) {
                    parse_error(b);
                    node_free(key);
                    goto fail;
                }
            }
            val = build(b, &e);
            yaml_event_delete(&e);
            if (!val) {
                node_free(key);
                goto fail;
            }
            node_push(n, key, val);
        }
        break;
    }
    default:
        conf_error_raw(b->d, "%s:%zu:%zu: error: unexpected YAML event", b->doc->file,
                       ev->start_mark.line + 1, ev->start_mark.column + 1);
        break;
    }
    b->depth--;
    return n;
fail:
    node_free(n);
    return NULL;
}

struct conf_doc *conf_doc_parse(const char *name, const char *text, size_t len, struct conf_diag *d)
{
    struct builder b = { .d = d };
    struct conf_node *root = NULL;
    yaml_event_t ev;
    int docs = 0;
    bool ok = true;

    b.doc = xcalloc(1, sizeof *b.doc);
    b.doc->file = xstrdup(name);
    yaml_parser_initialize(&b.parser);
    yaml_parser_set_input_string(&b.parser, (const unsigned char *)text, len);
    for (;;) {
        if (!yaml_parser_parse(&b.parser, &ev)) {
            parse_error(&b);
            ok = false;
            break;
        }
        if (ev.type == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
            conf_error_raw(d, "%s:%zu:%zu: error: only one YAML document is allowed", name,
                           ev.start_mark.line + 1, ev.start_mark.column + 1);
            yaml_event_delete(&ev);
            ok = false;
            break;
        }
        if (ev.type == YAML_SCALAR_EVENT || ev.type == YAML_SEQUENCE_START_EVENT ||
            ev.type == YAML_MAPPING_START_EVENT || ev.type == YAML_ALIAS_EVENT) {
            root = build(&b, &ev);
            if (!root) {
                ok = false;
                yaml_event_delete(&ev);
                break;
            }
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&b.parser);
    if (!ok) {
        node_free(root);
        conf_doc_free(b.doc);
        return NULL;
    }
    if (!root) {
        yaml_mark_t m = { 0 };
        root = node_new(&b, CONF_NULL, m);
    }
    b.doc->root = root;
    return b.doc;
}

struct conf_doc *conf_doc_load(const char *path, struct conf_diag *d)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    struct conf_doc *doc;

    if (!f) {
        conf_error_raw(d, "%s: error: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            if (cap > 16u << 20) {
                conf_error_raw(d, "%s: error: file larger than 16 MiB", path);
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = xrealloc(buf, cap);
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) {
            break;
        }
    }
    if (ferror(f)) {
        conf_error_raw(d, "%s: error: read failed: %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    doc = conf_doc_parse(path, buf ? buf : "", len, d);
    free(buf);
    return doc;
}

/* ---- lookups ---- */

struct conf_node *conf_get(const struct conf_node *m, const char *key)
{
    if (!m || m->type != CONF_MAP) {
        return NULL;
    }
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->keys[i]->value, key) == 0) {
            return m->items[i];
        }
    }
    return NULL;
}

struct conf_node *conf_get_key(const struct conf_node *m, const char *key)
{
    if (!m || m->type != CONF_MAP) {
        return NULL;
    }
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->keys[i]->value, key) == 0) {
            return m->keys[i];
        }
    }
    return NULL;
}

const char *conf_suggest(const char *word, const char *const candidates[])
{
    const char *best = NULL;
    unsigned best_d = ~0u;
    size_t wl = strlen(word);

    for (size_t i = 0; candidates[i]; i++) {
        unsigned dist = str_edit_distance(word, candidates[i]);
        size_t cl = strlen(candidates[i]);
        size_t longer = wl > cl ? wl : cl;
        /* Close enough: at most a third of the longer word differs, or one is a prefix. */
        bool prefix = (wl >= 3 && strncmp(word, candidates[i], wl) == 0) ||
                      (cl >= 3 && wl > cl && strncmp(word, candidates[i], cl) == 0);
        if ((dist * 3 <= longer || prefix) && dist < best_d) {
            best = candidates[i];
            best_d = dist;
        }
    }
    return best;
}

const char *conf_type_name(const struct conf_node *n)
{
    switch (n ? n->type : CONF_NULL) {
    case CONF_NULL:
        return "nothing";
    case CONF_SCALAR:
        return "a scalar";
    case CONF_MAP:
        return "a map";
    case CONF_SEQ:
        return "a list";
    }
    return "?";
}

char *conf_read_file(const char *path, size_t max, size_t *len, struct err *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        err_set(err, ERR_IO, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = xmalloc(max + 1);
    size_t n = fread(buf, 1, max + 1, f);
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        err_set(err, ERR_IO, "cannot read %s", path);
        return NULL;
    }
    if (n > max) {
        free(buf);
        err_set(err, ERR_LIMIT, "%s is larger than %zu bytes", path, max);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

bool conf_map(struct conf_diag *d, const struct conf_node *n, const char *what)
{
    if (n && n->type == CONF_MAP) {
        return true;
    }
    conf_error(d, n, "%s must be a map, got %s", what, conf_type_name(n));
    return false;
}

bool conf_seq(struct conf_diag *d, const struct conf_node *n, const char *what)
{
    if (n && n->type == CONF_SEQ) {
        return true;
    }
    conf_error(d, n, "%s must be a list, got %s", what, conf_type_name(n));
    return false;
}

bool conf_check_keys(struct conf_diag *d, const struct conf_node *m, const char *what,
                     const char *const allowed[])
{
    bool ok = true;

    if (!conf_map(d, m, what)) {
        return false;
    }
    for (size_t i = 0; i < m->n; i++) {
        const char *k = m->keys[i]->value;
        bool known = false;
        for (size_t j = 0; allowed[j]; j++) {
            if (strcmp(k, allowed[j]) == 0) {
                known = true;
                break;
            }
        }
        if (!known) {
            const char *s = conf_suggest(k, allowed);
            if (s) {
                conf_error(d, m->keys[i], "unknown key \"%s\" in %s (did you mean \"%s\"?)", k,
                           what, s);
            } else {
                conf_error(d, m->keys[i], "unknown key \"%s\" in %s", k, what);
            }
            ok = false;
        }
    }
    return ok;
}

static const struct conf_node *scalar_or_report(struct conf_diag *d, const struct conf_node *m,
                                                const char *key, const char *expected)
{
    const struct conf_node *n = conf_get(m, key);
    if (!n) {
        return NULL;
    }
    if (n->type != CONF_SCALAR) {
        conf_error(d, n, "\"%s\" must be %s, got %s", key, expected, conf_type_name(n));
        return (const struct conf_node *)-1;
    }
    return n;
}

#define BAD ((const struct conf_node *)-1)

bool conf_string(struct conf_diag *d, const struct conf_node *m, const char *key, const char **out)
{
    const struct conf_node *n = scalar_or_report(d, m, key, "a string");
    if (n == BAD) {
        return false;
    }
    if (n) {
        *out = n->value;
    }
    return true;
}

bool conf_parse_bool(const char *s, bool *out)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0 || strcmp(s, "on") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "no") == 0 || strcmp(s, "off") == 0) {
        *out = false;
        return true;
    }
    return false;
}

bool conf_bool(struct conf_diag *d, const struct conf_node *m, const char *key, bool *out)
{
    const struct conf_node *n = scalar_or_report(d, m, key, "true or false");
    if (n == BAD) {
        return false;
    }
    /* A quoted "true" is a string to YAML, but nobody means anything else by it. */
    if (n && !conf_parse_bool(n->value, out)) {
        conf_error(d, n, "\"%s\" must be true or false, got \"%s\"", key, n->value);
        return false;
    }
    return true;
}

bool conf_u64(struct conf_diag *d, const struct conf_node *m, const char *key, uint64_t min,
              uint64_t max, uint64_t *out)
{
    const struct conf_node *n = scalar_or_report(d, m, key, "a number");
    uint64_t v;
    if (n == BAD) {
        return false;
    }
    if (!n) {
        return true;
    }
    if (!str_to_u64(str_from(n->value), 0, UINT64_MAX, &v)) {
        conf_error(d, n, "\"%s\" must be a whole number, got \"%s\"", key, n->value);
        return false;
    }
    if (v < min || v > max) {
        conf_error(d, n, "\"%s\" must be between %llu and %llu, got %llu", key,
                   (unsigned long long)min, (unsigned long long)max, (unsigned long long)v);
        return false;
    }
    *out = v;
    return true;
}

/* Splits "<digits><suffix>" and returns the suffix; false when no digits. */
static bool split_num(const char *s, uint64_t *num, const char **suffix)
{
    size_t i = 0;
    while (s[i] >= '0' && s[i] <= '9') {
        i++;
    }
    if (i == 0 || !str_to_u64((struct str){ s, i }, 0, UINT64_MAX / 1000000, num)) {
        return false;
    }
    *suffix = s + i;
    return true;
}

bool conf_parse_duration_ms(const char *s, uint64_t *out)
{
    static const struct {
        const char *sfx;
        uint64_t ms;
    } units[] = { { "ms", 1 },    { "s", 1000 },    { "", 1000 },
                  { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 } };
    uint64_t v;
    const char *sfx;

    if (!split_num(s, &v, &sfx)) {
        return false;
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(sfx, units[i].sfx) == 0) {
            if (v > UINT64_MAX / units[i].ms) {
                return false;
            }
            *out = v * units[i].ms;
            return true;
        }
    }
    return false;
}

bool conf_parse_size(const char *s, uint64_t *out)
{
    uint64_t v, mul;
    const char *sfx;

    if (!split_num(s, &v, &sfx)) {
        return false;
    }
    if (*sfx == '\0' || strcmp(sfx, "b") == 0) {
        mul = 1;
    } else if (strcmp(sfx, "k") == 0 || strcmp(sfx, "K") == 0 || strcmp(sfx, "kb") == 0) {
        mul = 1024;
    } else if (strcmp(sfx, "m") == 0 || strcmp(sfx, "M") == 0 || strcmp(sfx, "mb") == 0) {
        mul = 1024 * 1024;
    } else if (strcmp(sfx, "g") == 0 || strcmp(sfx, "G") == 0 || strcmp(sfx, "gb") == 0) {
        mul = 1024ull * 1024 * 1024;
    } else {
        return false;
    }
    *out = v * mul;
    return true;
}

bool conf_duration_ms(struct conf_diag *d, const struct conf_node *m, const char *key,
                      uint64_t min_ms, uint64_t max_ms, uint64_t *out)
{
    const struct conf_node *n = scalar_or_report(d, m, key, "a duration");
    uint64_t v;
    if (n == BAD) {
        return false;
    }
    if (!n) {
        return true;
    }
    if (!conf_parse_duration_ms(n->value, &v)) {
        conf_error(d, n, "\"%s\" must be a duration such as 250ms, 10s, 5m, 8h or 7d, got \"%s\"",
                   key, n->value);
        return false;
    }
    if (v < min_ms || v > max_ms) {
        conf_error(d, n, "\"%s\" must be between %llums and %llums, got \"%s\"", key,
                   (unsigned long long)min_ms, (unsigned long long)max_ms, n->value);
        return false;
    }
    *out = v;
    return true;
}

bool conf_size(struct conf_diag *d, const struct conf_node *m, const char *key, uint64_t min,
               uint64_t max, uint64_t *out)
{
    const struct conf_node *n = scalar_or_report(d, m, key, "a size");
    uint64_t v;
    if (n == BAD) {
        return false;
    }
    if (!n) {
        return true;
    }
    if (!conf_parse_size(n->value, &v)) {
        conf_error(d, n, "\"%s\" must be a size such as 512, 32k, 10m or 1g, got \"%s\"", key,
                   n->value);
        return false;
    }
    if (v < min || v > max) {
        conf_error(d, n, "\"%s\" must be between %llu and %llu bytes, got \"%s\"", key,
                   (unsigned long long)min, (unsigned long long)max, n->value);
        return false;
    }
    *out = v;
    return true;
}

char *conf_path_resolve(const char *conf_file, const char *path)
{
    const char *slash;

    if (path[0] == '/' || !conf_file || !(slash = strrchr(conf_file, '/'))) {
        return xstrdup(path);
    }
    return xasprintf("%.*s/%s", (int)(slash - conf_file), conf_file, path);
}

/* ---- enums, non-empty strings ---- */

int conf_name_index(const char *s, const char *const names[])
{
    for (int i = 0; names[i]; i++) {
        if (strcmp(s, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

void conf_join_names(const char *const names[], char *out, size_t cap)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; names[i]; i++) {
        int n = snprintf(out + used, cap - used, "%s%s", i ? ", " : "", names[i]);
        if (n < 0 || (size_t)n >= cap - used) {
            return;
        }
        used += (size_t)n;
    }
}

int conf_enum(struct conf_diag *d, const struct conf_node *m, const char *key,
              const char *const names[])
{
    const char *v = NULL;
    char list[128];

    if (!conf_string(d, m, key, &v)) {
        return -2;
    }
    if (!v) {
        return -1;
    }
    int i = conf_name_index(v, names);
    if (i >= 0) {
        return i;
    }
    const struct conf_node *n = conf_get(m, key);
    conf_join_names(names, list, sizeof list);
    const char *s = conf_suggest(v, names);
    if (s) {
        conf_error(d, n, "\"%s\" must be one of %s, got \"%s\" (did you mean \"%s\"?)", key, list,
                   v, s);
    } else {
        conf_error(d, n, "\"%s\" must be one of %s, got \"%s\"", key, list, v);
    }
    return -2;
}

const char *conf_nonempty(struct conf_diag *d, const struct conf_node *m, const char *key)
{
    const char *v = NULL;
    if (!conf_string(d, m, key, &v) || !v) {
        return NULL;
    }
    if (v[0] == '\0') {
        conf_error(d, conf_get(m, key), "\"%s\" must not be empty", key);
        return NULL;
    }
    return v;
}

/* ---- key tables ---- */

void conf_table_defaults(const struct conf_key *keys, size_t n, void *base)
{
    char *b = base;
    for (size_t i = 0; i < n; i++) {
        const struct conf_key *k = &keys[i];
        switch (k->type) {
        case CONF_K_BOOL:
            *(bool *)(b + k->offset) = k->def != 0;
            break;
        case CONF_K_U64:
        case CONF_K_SIZE:
        case CONF_K_DURATION:
            *(uint64_t *)(b + k->offset) = k->def;
            break;
        case CONF_K_U32:
            *(uint32_t *)(b + k->offset) = (uint32_t)k->def;
            break;
        case CONF_K_ENUM:
            *(int *)(b + k->offset) = (int)k->def;
            break;
        case CONF_K_OWN:
        case CONF_K_STRING:
        case CONF_K_PATH:
            break;
        }
    }
}

static void read_key(struct conf_diag *d, const struct conf_node *m, const struct conf_key *k,
                     char *b, const char *conf_file)
{
    void *field = b + k->offset;
    uint64_t v;
    const char *s;
    int e;

    switch (k->type) {
    case CONF_K_OWN:
        break;
    case CONF_K_BOOL:
        (void)conf_bool(d, m, k->name, field);
        break;
    case CONF_K_U64:
        (void)conf_u64(d, m, k->name, k->min, k->max, field);
        break;
    case CONF_K_U32:
        v = *(uint32_t *)field;
        if (conf_u64(d, m, k->name, k->min, k->max, &v)) {
            *(uint32_t *)field = (uint32_t)v;
        }
        break;
    case CONF_K_SIZE:
        (void)conf_size(d, m, k->name, k->min, k->max, field);
        break;
    case CONF_K_DURATION:
        (void)conf_duration_ms(d, m, k->name, k->min, k->max, field);
        break;
    case CONF_K_STRING:
    case CONF_K_PATH:
        if ((s = conf_nonempty(d, m, k->name))) {
            free(*(char **)field);
            *(char **)field = k->type == CONF_K_PATH ? conf_path_resolve(conf_file, s) : xstrdup(s);
        }
        break;
    case CONF_K_ENUM:
        if ((e = conf_enum(d, m, k->name, k->names)) >= 0) {
            *(int *)field = e;
        }
        break;
    }
}

bool conf_read_table(struct conf_diag *d, const struct conf_node *m, const char *what,
                     const struct conf_key *keys, size_t n, void *base, const char *conf_file)
{
    conf_table_defaults(keys, n, base);
    if (!m) {
        return true;
    }
    const char **allowed = xcalloc(n + 1, sizeof *allowed);
    for (size_t i = 0; i < n; i++) {
        allowed[i] = keys[i].name;
    }
    /* Unknown keys are reported and the known ones still read, so one run
     * shows every problem of the section. */
    bool known = conf_check_keys(d, m, what, allowed);
    free(allowed);
    if (!known && m->type != CONF_MAP) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        read_key(d, m, &keys[i], base, conf_file);
    }
    return true;
}

/* ---- the state section ---- */

static const struct conf_key state_table[] = {
    { "sqlite", CONF_K_PATH, offsetof(struct conf_state, sqlite), 0, 0, 0, NULL },
    { "postgres", CONF_K_STRING, offsetof(struct conf_state, postgres), 0, 0, 0, NULL },
    { "password_file", CONF_K_OWN, 0, 0, 0, 0, NULL },
    { "migrate", CONF_K_OWN, 0, 0, 0, 0, NULL },
    { "staleness", CONF_K_OWN, 0, 0, 0, 0, NULL },
    { "query_timeout", CONF_K_OWN, 0, 0, 0, 0, NULL },
    { "node", CONF_K_OWN, 0, 0, 0, 0, NULL },
};

bool conf_state_read(struct conf_diag *d, const struct conf_node *root, const char *conf_file,
                     struct conf_state *out)
{
    *out = (struct conf_state){ 0 };
    return conf_read_table(d, conf_get(root, "state"), "\"state\"", state_table,
                           CONF_TABLE_LEN(state_table), out, conf_file);
}

void conf_state_fini(struct conf_state *s)
{
    free(s->sqlite);
    free(s->postgres);
    *s = (struct conf_state){ 0 };
}
