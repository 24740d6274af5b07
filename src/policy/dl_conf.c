/* policy/dl_conf.c - the decision_log section of gatehouse.yaml (and the state
 * keys the log needs: its database and this node's name), read into struct
 * decision_log_conf with file:line:col diagnostics. Start-up and reload only. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "decision_log_int.h"

/* Key tables (core/conf.h): the numbers and flags; the strings are read below. */
#define DL(name, type, field, min, max, def)                                                       \
    {                                                                                              \
        name, type, offsetof(struct decision_log_conf, field), min, max, def, NULL                 \
    }
#define DL_OWN(name)                                                                               \
    {                                                                                              \
        name, CONF_K_OWN, 0, 0, 0, 0, NULL                                                         \
    }
static const struct conf_key dl_table[] = {
    DL_OWN("file"),
    DL_OWN("sync"),
    DL_OWN("index"),
    DL("retain", CONF_K_DURATION, retain_ms, 0, 100ULL * 365 * 86400000, 90ULL * 86400000),
    DL("queue", CONF_K_U64, queue, 1, 10000000, 10000),
    DL("flush_interval", CONF_K_DURATION, flush_interval_ms, 1, 60000, 200),
    DL("max_pending", CONF_K_U64, max_pending, 1, 10000000, 1000),
    DL_OWN("checkpoint"),
};
static const struct conf_key ckpt_table[] = {
    DL_OWN("key"),
    DL("every", CONF_K_U64, ckpt_every, 1, 100000000, 1000),
    DL("interval", CONF_K_DURATION, ckpt_interval_ms, 1000, 86400000, 60000),
    DL_OWN("file"),
    DL_OWN("command"),
    DL("syslog", CONF_K_BOOL, ckpt_syslog, 0, 0, false),
};

bool decision_log_conf_parse(const struct conf_node *root, const char *conf_file,
                             struct conf_diag *d, struct decision_log_conf *out)
{
    size_t before = d->count;
    memset(out, 0, sizeof *out);
    conf_table_defaults(ckpt_table, CONF_TABLE_LEN(ckpt_table), out);
    const struct conf_node *n = conf_get(root, "decision_log");
    if (!conf_read_table(d, n, "decision_log", dl_table, CONF_TABLE_LEN(dl_table), out,
                         conf_file) ||
        !n) {
        return d->count == before;
    }
    const char *file = NULL, *sync = NULL, *sqlite = NULL, *index = NULL;
    if (!conf_string(d, n, "file", &file) || !conf_string(d, n, "sync", &sync) ||
        !conf_string(d, n, "index", &index) || d->count != before) {
        return false;
    }
    if (index && strcmp(index, "inline") != 0 && strcmp(index, "deferred") != 0) {
        conf_error(d, conf_get(n, "index"), "\"index\" must be inline or deferred, got \"%s\"",
                   index);
        return false;
    }
    out->deferred = index && strcmp(index, "deferred") == 0;
    if (out->deferred && !file) {
        conf_error(d, conf_get(n, "index"),
                   "\"index: deferred\" needs \"file\" (the JSON-lines "
                   "file is then the log of record)");
        return false;
    }
    if (sync && strcmp(sync, "batch") != 0 && strcmp(sync, "strict") != 0) {
        conf_error(d, conf_get(n, "sync"), "\"sync\" must be batch or strict, got \"%s\"", sync);
        return false;
    }
    out->sync = sync && strcmp(sync, "strict") == 0 ? DECISION_LOG_STRICT : DECISION_LOG_BATCH;
    const struct conf_node *cp = conf_get(n, "checkpoint");
    const char *key = NULL, *cfile = NULL, *cmd = NULL;
    if (cp) {
        if (cp->type != CONF_MAP) {
            conf_error(d, cp,
                       "\"checkpoint\" must be a map (key, every, interval, file, "
                       "command, syslog)");
            return false;
        }
        if (!conf_read_table(d, cp, "checkpoint", ckpt_table, CONF_TABLE_LEN(ckpt_table), out,
                             conf_file) ||
            !conf_string(d, cp, "key", &key) || !conf_string(d, cp, "file", &cfile) ||
            !conf_string(d, cp, "command", &cmd) || d->count != before) {
            return false;
        }
        if (!key) {
            conf_error(d, cp,
                       "\"checkpoint\" needs \"key\" (an Ed25519 private key: openssl "
                       "genpkey -algorithm ed25519 -out log-ed25519.pem)");
            return false;
        }
    }
    const struct conf_node *state = conf_get(root, "state");
    if (state && state->type == CONF_MAP && !conf_string(d, state, "sqlite", &sqlite)) {
        return false;
    }
    const char *pg = NULL, *pgpw = NULL, *node = NULL;
    if (state && state->type == CONF_MAP &&
        (!conf_string(d, state, "postgres", &pg) ||
         !conf_string(d, state, "password_file", &pgpw) || !conf_string(d, state, "node", &node))) {
        return false;
    }
    /* The node's name goes into every record (format 3): state.node, or the host
     * name. A fleet needs one; a single node whose host name is not a valid name
     * (and no state.node) writes format-2 records, as before. */
    char host[256] = "";
    bool named = node != NULL;
    if (node == NULL && gethostname(host, sizeof host - 1) == 0) {
        node = host;
    }
    size_t nl = node ? strlen(node) : 0;
    bool nok = nl > 0 && nl <= 64;
    for (size_t i = 0; nok && i < nl; i++) {
        char ch = node[i];
        nok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.';
    }
    if (!nok && (pg != NULL || named)) {
        conf_error(d, conf_get(state, "node") ? conf_get(state, "node") : state,
                   "\"node\" must be 1-64 letters, digits, '-', '_' or '.' (it names this "
                   "node's records in the decision log)");
        return false;
    }
    if (!sqlite) {
        conf_error(d, conf_get_key(root, "decision_log"),
                   "\"decision_log\" needs \"state.sqlite\" (the log's database)");
        return false;
    }
    if (pg != NULL) {
        out->pg_conninfo = xstrdup(pg);
        out->pg_password_file = pgpw ? conf_path_resolve(conf_file, pgpw) : NULL;
    }
    out->node = nok ? xstrdup(node) : NULL;
    out->sqlite = conf_path_resolve(conf_file, sqlite);
    out->file = file ? conf_path_resolve(conf_file, file) : NULL;
    out->ckpt_key = key ? conf_path_resolve(conf_file, key) : NULL;
    out->ckpt_file = cfile ? conf_path_resolve(conf_file, cfile) : NULL;
    if (key && !cfile && out->file) {
        /* The JSON-lines store's checkpoints live beside it (every line of the log
         * itself stays a record). */
        out->ckpt_file = xasprintf("%s.checkpoints", out->file);
    }
    out->ckpt_command = cmd ? xstrdup(cmd) : NULL;
    return true;
}

void decision_log_conf_fini(struct decision_log_conf *c)
{
    free(c->sqlite);
    free(c->file);
    free(c->ckpt_key);
    free(c->ckpt_file);
    free(c->ckpt_command);
    free(c->pg_conninfo);
    free(c->pg_password_file);
    free(c->node);
    c->sqlite = c->file = c->ckpt_key = c->ckpt_file = c->ckpt_command = NULL;
    c->pg_conninfo = c->pg_password_file = c->node = NULL;
}
