/* authn/session_cli.c - `gatehouse sessions list|revoke`: reads only the
 * state.sqlite path from the configuration and works on the database
 * directly; the serving process picks revocations up within a second. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"

static const char sessions_usage[] =
    "usage: gatehouse sessions list   -c gatehouse.yaml [--user U] [--json]\n"
    "       gatehouse sessions revoke -c gatehouse.yaml (--user U | --id ID)\n"
    "  --user U   user key (issuer#subject) or email\n"
    "  --id ID    session id as printed by list (at least 8 hex characters)\n";

/* The database path: state.sqlite, resolved against the config file. */
static char *db_path_from_config(const char *conf_file)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(conf_file, &d);
    char *path = NULL;
    if (doc == NULL) {
        conf_diag_print(&d, stderr);
        conf_diag_fini(&d);
        return NULL;
    }
    const char *sqlite = NULL;
    const struct conf_node *state = conf_get(doc->root, "state");
    if (state != NULL && conf_string(&d, state, "sqlite", &sqlite) && sqlite != NULL) {
        path = conf_path_resolve(conf_file, sqlite);
    } else if (d.count == 0) {
        fprintf(stderr, "%s: error: no \"state: {sqlite: ...}\" configured, so there are no "
                        "stored sessions\n",
                conf_file);
    }
    conf_diag_print(&d, stderr);
    conf_diag_fini(&d);
    conf_doc_free(doc);
    return path;
}

int authn_cmd_sessions(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "user", required_argument, NULL, 'u' },
        { "id", required_argument, NULL, 'i' },     { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },         { NULL, 0, NULL, 0 },
    };
    const char *conf = NULL, *user = NULL, *id = NULL;
    bool json = false;
    int c;

    if (argc < 2 || (strcmp(argv[1], "list") != 0 && strcmp(argv[1], "revoke") != 0)) {
        fputs(sessions_usage, stderr);
        return 2;
    }
    const char *verb = argv[1];
    optind = 2;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        case 'u':
            user = optarg;
            break;
        case 'i':
            id = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'h':
            fputs(sessions_usage, stdout);
            return 0;
        default:
            fputs(sessions_usage, stderr);
            return 2;
        }
    }
    if (conf == NULL || optind != argc) {
        fputs(sessions_usage, stderr);
        return 2;
    }
    char *db = db_path_from_config(conf);
    if (db == NULL) {
        return 1;
    }
    struct err err = { 0 };
    int rc;
    if (strcmp(verb, "list") == 0) {
        rc = id != NULL ? err_set(&err, ERR_PARSE, "list takes --user, not --id")
                        : session_admin_list(db, user, json, stdout, &err);
    } else {
        size_t n = 0;
        rc = session_admin_revoke(db, user, id, &n, &err);
        if (rc == 0 && id != NULL && n == 0) {
            /* A mistyped id must not look like a successful revocation. */
            rc = err_set(&err, ERR_NOTFOUND, "no such session \"%s\"", id);
        } else if (rc == 0) {
            printf("revoked %zu session(s)\n", n);
        }
    }
    free(db);
    if (rc != 0) {
        fprintf(stderr, "gatehouse sessions: %s\n", err.msg);
        return 1;
    }
    return 0;
}
