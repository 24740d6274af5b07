/* proxy/config.c - gatehouse.yaml into an immutable, ref-counted struct config:
 * the top level and the small sections (workers, limits, timeouts, access_log,
 * log_level, state, devices). Listeners and the admin address are read in
 * config_listen.c, routes in config_routes.c; snapshot.c adds the route table
 * and the access stage's part. Phase one reads every key (key tables or the
 * typed getters of core/conf.h: type, bounds, unknown keys); phase two
 * cross-checks what needs the whole file: duplicate names and addresses, route
 * overlap, certificate files and keys. Every problem is collected (up to 20
 * shown) so one `gatehouse check` run reports them all. Runs at start and on
 * SIGHUP, never on the request path. */
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "accesslog.h"
#include "config_int.h"

#define MAX_WORKERS 256

#define OWN(name)                                                                                  \
    {                                                                                              \
        name, CONF_K_OWN, 0, 0, 0, 0, NULL                                                         \
    }
/* The top level: every section is read by its owner (below, config_listen.c,
 * config_routes.c, core's conf_state_read, and the access stage's modules). */
static const struct conf_key top_table[] = {
    OWN("listen"),
    OWN("admin"),
    OWN("workers"),
    OWN("limits"),
    OWN("timeouts"),
    OWN("access_log"),
    OWN("log_level"),
    OWN("state"),
    OWN("routes"),
    /* Sections validated by the access stage (access/access_conf.c: authn and policy modules). */
    OWN("session"),
    OWN("identity_providers"),
    OWN("upstream_identity"),
    OWN("opa"),
    OWN("decision_log"),
    OWN("devices"),
    OWN("pages"),
};
#define KB     1024ull
#define DAY_MS 86400000ull

/* Key tables (core/conf.h): name, type, where it goes, bounds, default. */
static const struct conf_key limits_table[] = {
    { "header_bytes", CONF_K_SIZE, offsetof(struct limits_conf, header_bytes), KB, KB *KB, 32 * KB,
      NULL },
    { "headers", CONF_K_U64, offsetof(struct limits_conf, headers), 1, 10000, 100, NULL },
    { "body_bytes", CONF_K_SIZE, offsetof(struct limits_conf, body_bytes), 0, 1ull << 40,
      10 * KB *KB, NULL },
    { "uri_bytes", CONF_K_SIZE, offsetof(struct limits_conf, uri_bytes), 256, KB *KB, 8 * KB,
      NULL },
    { "connections", CONF_K_U64, offsetof(struct limits_conf, connections), 1, 10000000, 100000,
      NULL },
};
static const struct conf_key timeouts_table[] = {
    { "header", CONF_K_DURATION, offsetof(struct timeouts_conf, header_ms), 10, 3600000, 10000,
      NULL },
    { "idle", CONF_K_DURATION, offsetof(struct timeouts_conf, idle_ms), 10, DAY_MS, 60000, NULL },
    { "body", CONF_K_DURATION, offsetof(struct timeouts_conf, body_ms), 10, 3600000, 60000, NULL },
    { "upstream_connect", CONF_K_DURATION, offsetof(struct timeouts_conf, upstream_connect_ms), 10,
      600000, 5000, NULL },
    { "upstream_response", CONF_K_DURATION, offsetof(struct timeouts_conf, upstream_response_ms),
      10, DAY_MS, 60000, NULL },
    { "drain", CONF_K_DURATION, offsetof(struct timeouts_conf, drain_ms), 10, 3600000, 30000,
      NULL },
};
static const struct conf_key access_log_table[] = { OWN("file"), OWN("fields") };
static const struct conf_key enroll_ca_table[] = { OWN("cert"), OWN("key") };
/* The device registry lives in state.sqlite; "devices" tunes its use. */
static const struct conf_key devices_table[] = {
    { "cache_ttl", CONF_K_DURATION, offsetof(struct config, devices_cache_ttl_ms), 100, 300000,
      30000, NULL },
    { "enroll_ca", CONF_K_OWN, 0, 0, 0, 0, NULL },
};
static const char *const log_level_names[] = { "debug", "info", "warn", "error", NULL };

static void read_workers(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *w = conf_get(root, "workers");
    uint64_t v;
    long cores;

    /* The CPUs this process may run on (taskset, cpusets), not every CPU online. */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        cores = CPU_COUNT(&set);
    } else {
        cores = sysconf(_SC_NPROCESSORS_ONLN);
    }
    L->c->workers = cores < 1 ? 1 : cores > MAX_WORKERS ? MAX_WORKERS : (unsigned)cores;
    if (!w) {
        return;
    }
    if (w->type == CONF_SCALAR && strcmp(w->value, "auto") == 0) {
        return;
    }
    if (w->type != CONF_SCALAR || !str_to_u64(str_from(w->value), 1, MAX_WORKERS, &v)) {
        conf_error(L->d, w, "\"workers\" must be \"auto\" or a number from 1 to %d, got %s%s%s",
                   MAX_WORKERS, w->type == CONF_SCALAR ? "\"" : "",
                   w->type == CONF_SCALAR ? w->value
                   : w->type == CONF_MAP  ? "a map"
                   : w->type == CONF_SEQ  ? "a list"
                                          : "nothing",
                   w->type == CONF_SCALAR ? "\"" : "");
        return;
    }
    L->c->workers = (unsigned)v;
}

static void read_limits(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *m = conf_get(root, "limits");
    struct limits_conf *l = &L->c->limits;

    if (!conf_read_table(L->d, m, "\"limits\"", limits_table, CONF_TABLE_LEN(limits_table), l,
                         L->file)) {
        return;
    }
    if (l->uri_bytes > l->header_bytes && conf_get(m, "uri_bytes")) {
        conf_error(L->d, conf_get(m, "uri_bytes"),
                   "\"uri_bytes\" (%llu) must not exceed \"header_bytes\" (%llu): the request "
                   "line is part of the header",
                   (unsigned long long)l->uri_bytes, (unsigned long long)l->header_bytes);
    }
}

static void read_timeouts(struct loader *L, const struct conf_node *root)
{
    (void)conf_read_table(L->d, conf_get(root, "timeouts"), "\"timeouts\"", timeouts_table,
                          CONF_TABLE_LEN(timeouts_table), &L->c->timeouts, L->file);
}

/* access_log.fields: names from accesslog.h, each at most once. */
static void read_access_log_fields(struct loader *L, const struct conf_node *m)
{
    const struct conf_node *f = conf_get(m, "fields");
    uint32_t mask = 0;

    if (!f || !conf_seq(L->d, f, "\"access_log.fields\"")) {
        return;
    }
    if (f->n == 0) {
        conf_error(L->d, f, "\"access_log.fields\" is empty (use \"access_log: off\")");
        return;
    }
    for (size_t i = 0; i < f->n; i++) {
        const struct conf_node *it = f->items[i];
        int k = it->type == CONF_SCALAR ? conf_name_index(it->value, accesslog_field_names) : -1;
        if (k < 0) {
            char names[400];
            const char *hint =
                it->type == CONF_SCALAR ? conf_suggest(it->value, accesslog_field_names) : NULL;
            conf_join_names(accesslog_field_names, names, sizeof names);
            if (hint) {
                conf_error(L->d, it, "unknown access log field \"%s\" (did you mean \"%s\"?)",
                           it->value, hint);
            } else {
                conf_error(L->d, it, "unknown access log field \"%s\" (known: %s)",
                           it->type == CONF_SCALAR ? it->value : "?", names);
            }
        } else if (mask & (1u << k)) {
            conf_error(L->d, it, "access log field \"%s\" is listed twice", it->value);
        } else {
            mask |= 1u << k;
        }
    }
    L->c->access_log_fields = mask;
}

static void read_logging(struct loader *L, const struct conf_node *root)
{
    const char *al = NULL;
    int lvl;
    const struct conf_node *m = conf_get(root, "access_log");
    bool ok;

    /* Default: stderr, so a bare config still records every request. */
    L->c->access_log = xstrdup("stderr");
    L->c->access_log_fields = ACCESSLOG_ALL;
    if (m && m->type == CONF_MAP) {
        /* access_log: {file: PATH|stderr|off, fields: [...]} */
        ok = conf_read_table(L->d, m, "\"access_log\"", access_log_table,
                             CONF_TABLE_LEN(access_log_table), L->c, L->file) &&
             conf_string(L->d, m, "file", &al);
        read_access_log_fields(L, m);
    } else {
        ok = conf_string(L->d, root, "access_log", &al);
    }
    if (ok && al) {
        free(L->c->access_log);
        L->c->access_log = NULL;
        const struct conf_node *n = m && m->type == CONF_MAP ? conf_get(m, "file") : m;
        if (al[0] == '\0') {
            conf_error(L->d, n, "\"access_log\" must be a file path, \"stderr\" or \"off\"");
        } else if (strcmp(al, "off") == 0) {
            L->c->access_log = NULL;
        } else if (strcmp(al, "stderr") == 0) {
            L->c->access_log = xstrdup("stderr");
        } else {
            char *p = cfg_resolve(L, al);
            char *slash = strrchr(p, '/');
            char *dir = slash ? xstrndup(p, slash == p ? 1 : (size_t)(slash - p)) : xstrdup(".");
            /* The file itself is created at start; its directory must exist now
             * so a typo fails `check` rather than the first request. */
            struct stat st;
            if (access(dir, W_OK) != 0) {
                conf_error(L->d, n, "cannot write access log \"%s\": directory %s", al,
                           strerror(errno));
            } else if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
                conf_error(L->d, n, "access log \"%s\" is a directory, not a file", al);
            }
            free(dir);
            L->c->access_log = p;
        }
    }
    lvl = conf_enum(L->d, root, "log_level", log_level_names);
    L->c->log_level = xstrdup(lvl >= 0 ? log_level_names[lvl] : "info");
}

static void read_state(struct loader *L, const struct conf_node *root)
{
    struct conf_state st;
    (void)conf_state_read(L->d, root, L->file, &st);
    L->c->state_sqlite = st.sqlite; /* the snapshot owns them from here */
    L->c->state_postgres = st.postgres;
}

/* ---- devices ---- */

static void read_devices(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *dv = conf_get(root, "devices");
    if (dv && dv->type == CONF_NULL) {
        dv = NULL;
    }
    if (!conf_read_table(L->d, dv, "\"devices\"", devices_table, CONF_TABLE_LEN(devices_table),
                         L->c, L->file) ||
        !dv) {
        return;
    }
    /* enroll_ca: {cert, key}: the CA `gatehouse devices enroll --csr` signs with. */
    const struct conf_node *ca = conf_get(dv, "enroll_ca");
    if (ca && ca->type != CONF_NULL) {
        if (!conf_read_table(L->d, ca, "\"enroll_ca\"", enroll_ca_table,
                             CONF_TABLE_LEN(enroll_ca_table), L->c, L->file)) {
            return;
        }
        const char *cert = conf_nonempty(L->d, ca, "cert"), *key = conf_nonempty(L->d, ca, "key");
        if (!cert || !key) {
            conf_error(L->d, ca, "\"enroll_ca\" needs \"cert\" and \"key\"");
            return;
        }
        struct tls_cert_conf tc = { cfg_resolve(L, cert), cfg_resolve(L, key) };
        L->c->devices_ca_cert = tc.cert_file;
        L->c->devices_ca_key = tc.key_file;
        cfg_check_cert_pair(L, ca, &tc);
    }
}

void config_proxy_free(struct config *c)
{
    if (!c) {
        return;
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
        cfg_free_listener(&c->listeners[i]);
    }
    free(c->listeners);
    for (size_t i = 0; i < c->nroutes; i++) {
        cfg_free_route(&c->routes[i]);
    }
    free(c->routes);
    free(c->admin_address);
    free(c->access_log);
    free(c->log_level);
    free(c->state_sqlite);
    free(c->devices_ca_cert);
    free(c->devices_ca_key);
    free(c->state_postgres);
    conf_doc_free(c->doc);
    free(c->file);
    free(c);
}

static struct config *build(struct conf_doc *doc, struct conf_diag *d)
{
    struct config *c;
    struct loader L;
    size_t before = d->count;
    const struct conf_node *root;

    if (!doc) {
        return NULL;
    }
    c = xcalloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    c->doc = doc;
    c->file = xstrdup(doc->file);
    L = (struct loader){ .c = c, .d = d, .file = c->file };
    root = doc->root;
    if (!root || root->type == CONF_NULL) {
        conf_error_raw(d, "%s: error: the configuration is empty", c->file);
        config_proxy_free(c);
        return NULL;
    }
    if (!conf_read_table(d, root, "the configuration", top_table, CONF_TABLE_LEN(top_table), c,
                         c->file)) {
        config_proxy_free(c);
        return NULL;
    }
    cfg_read_listen(&L, root);
    cfg_read_admin(&L, root);
    read_workers(&L, root);
    read_limits(&L, root);
    read_timeouts(&L, root);
    read_logging(&L, root);
    read_state(&L, root);
    cfg_read_routes(&L, root);
    read_devices(&L, root);
    cfg_first_seen_fini(&L.route_names);
    if (d->count != before) {
        config_proxy_free(c);
        return NULL;
    }
    return c;
}

struct config *config_load_proxy(const char *path, struct conf_diag *d)
{
    size_t before = d->count;
    struct conf_doc *doc = conf_doc_load(path, d);

    /* A file with YAML errors (even duplicate keys, which still give a doc)
     * is not read further: its tree may not be what the admin meant. */
    if (doc && d->count != before) {
        conf_doc_free(doc);
        return NULL;
    }
    return build(doc, d);
}

struct config *config_parse_proxy(const char *name, const char *text, size_t len,
                                  struct conf_diag *d)
{
    size_t before = d->count;
    struct conf_doc *doc = conf_doc_parse(name, text, len, d);

    if (doc && d->count != before) {
        conf_doc_free(doc);
        return NULL;
    }
    return build(doc, d);
}
