/* authn/session_cli.c - `gatehouse sessions list|revoke`: reads only the
 * state.sqlite path from the configuration and works on the database
 * directly; the serving process picks revocations up within a second. A
 * revocation is an administrative act: it is recorded in the decision log
 * (through log_admin) with who ran it, from where, and what it ended. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oidc.h"
#include "session.h"

static const char sessions_usage[] =
    "usage: gatehouse sessions list   -c gatehouse.yaml [--user U] [--json]\n"
    "       gatehouse sessions revoke -c gatehouse.yaml (--user U | --id ID)\n"
    "  --user U   user id (<provider id>:<sub>, or the bare sub of the provider with\n"
    "             bare_user_ids), email, or user key (issuer#sub)\n"
    "  --id ID    session id as printed by list (at least 8 hex characters)\n";

/* --user as the store knows it: a user key (issuer#sub) or an email.
 *   "corp:alice"  the user "alice" of identity provider "corp" (split at the
 *                 first ':'; provider ids have none)
 *   "alice"       the user "alice" of the provider with bare_user_ids
 *   "a@b.example" an email (when it is not one of the forms above)
 *   "iss#sub"     a user key, as stored
 * *bare_idp gets the id of the provider with bare_user_ids (list output). */
static char *resolve_user(const struct conf_node *root, const char *user, char **bare_idp,
                          struct err *err)
{
    const struct conf_node *list = conf_get(root, "identity_providers");
    const char *colon = user ? strchr(user, ':') : NULL;
    const char *bare_iss = NULL;
    char *key = NULL;
    struct conf_diag d = { 0 };
    for (size_t i = 0; list != NULL && list->type == CONF_SEQ && i < list->n; i++) {
        const struct conf_node *e = list->items[i];
        const char *id = NULL, *iss = NULL;
        bool bare = false;
        if (e->type != CONF_MAP) {
            continue;
        }
        const char *type = NULL;
        conf_string(&d, e, "id", &id);
        conf_string(&d, e, "issuer", &iss);
        conf_string(&d, e, "type", &type);
        conf_bool(&d, e, "bare_user_ids", &bare);
        if (id != NULL && type != NULL && strcmp(type, "saml") == 0 && colon != NULL &&
            key == NULL && strlen(id) == (size_t)(colon - user) &&
            strncmp(user, id, (size_t)(colon - user)) == 0) {
            /* A SAML provider's user key names its entity id (from its metadata):
             * the qualified id itself is matched against the session's provider
             * and subject (ident_user_match). */
            key = xstrdup(user);
            continue;
        }
        if (id == NULL || iss == NULL) {
            continue;
        }
        if (bare && *bare_idp == NULL) {
            *bare_idp = xstrdup(id);
            bare_iss = iss;
        }
        if (colon != NULL && key == NULL && strlen(id) == (size_t)(colon - user) &&
            strncmp(user, id, (size_t)(colon - user)) == 0) {
            key = xasprintf("%s#%s", iss, colon + 1);
        }
    }
    conf_diag_fini(&d);
    if (user == NULL || key != NULL) {
        return key;
    }
    if (strchr(user, '#') != NULL || strchr(user, '@') != NULL) {
        return xstrdup(user);
    }
    if (colon != NULL) {
        char *idp = xasprintf("%.*s", (int)(colon - user), user);
        bool grammar = oidc_idp_id_ok(idp);
        free(idp);
        if (!grammar) {
            /* Not "<provider id>:<sub>" (ids are [A-Za-z0-9._-]): no user id has
             * this form, so it matches nobody; it is still recorded as asked. */
            return xstrdup(user);
        }
        err_set(err, ERR_PARSE, "--user \"%s\": no identity provider \"%.*s\" is configured", user,
                (int)(colon - user), user);
        return NULL;
    }
    if (bare_iss == NULL) {
        err_set(err, ERR_PARSE,
                "--user \"%s\": no identity provider has bare_user_ids; give "
                "<provider id>:%s or an email",
                user, user);
        return NULL;
    }
    return xasprintf("%s#%s", bare_iss, user);
}

/* The usage on stdout for --help (exit 0), else on stderr (exit 2). */
static int usage_answer(const char *usage, bool help)
{
    fputs(usage, help ? stdout : stderr);
    return help ? 0 : 2;
}

/* The database path: state.sqlite, resolved against the config file; *user
 * replaced by its resolved form (resolve_user). */
static char *db_path_from_config(const char *conf_file, char **user, char **bare_idp,
                                 struct spg_conf *pg)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(conf_file, &d);
    char *path = NULL;
    if (doc == NULL) {
        conf_diag_print(&d, stderr);
        conf_diag_fini(&d);
        return NULL;
    }
    struct err err = { 0 };
    char *resolved = resolve_user(doc->root, *user, bare_idp, &err);
    if (*user != NULL && resolved == NULL) {
        fprintf(stderr, "gatehouse sessions: %s\n", err.msg);
        conf_diag_fini(&d);
        conf_doc_free(doc);
        return NULL;
    }
    *user = resolved;
    struct conf_state st = { 0 };
    if (spg_conf_parse(&d, conf_get(doc->root, "state"), conf_file, pg)) {
        /* PostgreSQL holds the sessions even when state.sqlite is there too. */
        path = d.count == 0 ? xstrdup(pg->conninfo) : NULL;
    } else if (conf_state_read(&d, doc->root, conf_file, &st) && st.sqlite != NULL) {
        path = st.sqlite; /* the state section's one reader (core/conf.c) */
        st.sqlite = NULL;
    } else if (d.count == 0) {
        fprintf(stderr,
                "%s: error: no \"state: {sqlite: ...}\" configured (nor state.postgres), "
                "so there are no "
                "stored sessions\n",
                conf_file);
    }
    conf_state_fini(&st);
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
        default: /* -h, --help or a wrong option */
            return usage_answer(sessions_usage, c == 'h');
        }
    }
    if (conf == NULL || optind != argc) {
        return usage_answer(sessions_usage, false);
    }
    char *ukey = (char *)user, *bare_idp = NULL;
    struct spg_conf pg = { 0 };
    char *db = db_path_from_config(conf, &ukey, &bare_idp, &pg);
    if (db == NULL) {
        free(bare_idp);
        spg_conf_fini(&pg);
        return 1;
    }
    struct err err = { 0 };
    int rc;
    if (strcmp(verb, "list") == 0) {
        rc = id != NULL    ? err_set(&err, ERR_PARSE, "list takes --user, not --id")
             : pg.conninfo ? session_admin_list_pg(&pg, ukey, bare_idp, json, stdout, &err)
                           : session_admin_list(db, ukey, bare_idp, json, stdout, &err);
    } else {
        size_t n = 0;
        rc = pg.conninfo ? session_admin_revoke_pg(&pg, ukey, id, &n, &err)
                         : session_admin_revoke(db, ukey, id, &n, &err);
        if (rc == 0 && id != NULL && n == 0) {
            /* A mistyped id must not look like a successful revocation. */
            rc = err_set(&err, ERR_NOTFOUND, "no such session \"%s\"", id);
        } else if (rc == 0) {
            printf("revoked %zu session(s)\n", n);
        }
        /* Also when nothing matched: the attempt is an administrative act too. */
        if (rc == 0 && log_admin != NULL) {
            char target[320], reason[64], note[512];
            snprintf(target, sizeof target, "%s %.256s", user ? "user" : "session",
                     user ? user : id);
            snprintf(reason, sizeof reason, "revoked %zu session(s)", n);
            struct admin_act act = {
                .action = "session.revoke", .target = target, .reason = reason, .user = user
            };
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
                fprintf(stderr,
                        "gatehouse sessions: the revocation is NOT in the decision "
                        "log: %s\n",
                        note);
                rc = ERR_IO;
                err_set(&err, ERR_IO, "decision log record failed");
            }
        }
    }
    free(db);
    spg_conf_fini(&pg);
    free(ukey);
    free(bare_idp);
    if (rc != 0) {
        fprintf(stderr, "gatehouse sessions: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static const char db_usage[] = "usage: gatehouse db migrate -c gatehouse.yaml\n";

int authn_cmd_db(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *conf = NULL;
    int c;
    if (argc < 2 || strcmp(argv[1], "migrate") != 0) {
        fputs(db_usage, stderr);
        return 2;
    }
    optind = 2;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            conf = optarg;
            break;
        default: /* -h, --help or a wrong option */
            return usage_answer(db_usage, c == 'h');
        }
    }
    if (conf == NULL || optind != argc) {
        return usage_answer(db_usage, false);
    }
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(conf, &d);
    struct spg_conf pg = { 0 };
    int rc = 1;
    if (doc != NULL && !spg_conf_parse(&d, conf_get(doc->root, "state"), conf, &pg) &&
        d.count == 0) {
        fprintf(stderr,
                "%s: error: no \"state: {postgres: ...}\" configured (SQLite creates its "
                "tables itself)\n",
                conf);
    } else if (doc != NULL && d.count == 0) {
        spg_conf_check(&d, conf_get(doc->root, "state"), &pg);
    }
    if (d.count > 0) {
        conf_diag_print(&d, stderr);
    } else if (pg.conninfo != NULL) {
        struct err err = { 0 };
        if (spg_cmd_migrate(&pg, stdout, &err) != 0) {
            fprintf(stderr, "gatehouse db migrate: %s\n", err.msg);
        } else {
            rc = 0;
        }
    }
    spg_conf_fini(&pg);
    conf_diag_fini(&d);
    conf_doc_free(doc);
    return rc;
}
