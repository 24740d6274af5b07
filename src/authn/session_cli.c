/* authn/session_cli.c - `gatehouse sessions list|revoke`: reads only the
 * state.sqlite path from the configuration and works on the database
 * directly; the serving process picks revocations up within a second. A
 * revocation is an administrative act: it is recorded in the decision log
 * (through log_admin) with who ran it, from where, and what it ended. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"

static const char sessions_usage[] =
    "usage: gatehouse sessions list   -c gatehouse.yaml [--user U] [--json]\n"
    "       gatehouse sessions revoke -c gatehouse.yaml (--user U | --id ID)\n"
    "  --user U   user id (bare \"alice\" or IdP-qualified \"corp:alice\"), email (any case)\n"
    "             or stored key (issuer#subject)\n"
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

int authn_cmd_sessions(int argc, char **argv, admin_log_fn *log_admin)
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
        if (rc == 0) {
            printf("revoked %zu session(s)\n", n);
        }
        /* Also when nothing matched: the attempt is an administrative act too. */
        if (rc == 0 && log_admin != NULL) {
            char target[320], reason[64], note[512];
            snprintf(target, sizeof target, "%s %.256s", user ? "user" : "session",
                     user ? user : id);
            snprintf(reason, sizeof reason, "revoked %zu session(s)", n);
            struct admin_act act = { .action = "session.revoke", .target = target,
                                     .reason = reason, .user = user };
            if (user != NULL && strchr(user, '@') != NULL) {
                act.user = NULL;
                act.email = user;
            }
            int lr = log_admin(conf, &act, note, sizeof note);
            if (lr == 0) {
                /* stdout keeps the one result line scripts read. */
                fprintf(stderr, "gatehouse sessions: %s\n", note);
            } else if (lr < 0) {
                /* The revocation stands (it is already committed); say loudly that
                 * the decision log does not show it. */
                fprintf(stderr, "gatehouse sessions: the revocation is NOT in the decision "
                                "log: %s\n", note);
                rc = ERR_IO;
                err_set(&err, ERR_IO, "decision log record failed");
            }
        }
    }
    free(db);
    if (rc != 0) {
        fprintf(stderr, "gatehouse sessions: %s\n", err.msg);
        return 1;
    }
    return 0;
}
