/* authn/device_cli.c - `gatehouse devices enroll|list|show|revoke`: reads the
 * configuration for state.sqlite and the listeners' client CAs, and works on
 * the registry directly; serving workers see enrolments and revocations within
 * a second. Enrolment and revocation are administrative acts recorded in the
 * decision log. */
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "device.h"

static const char devices_usage[] =
    "usage: gatehouse devices enroll -c gatehouse.yaml --cert dev.pem --owner EMAIL [--name NAME]\n"
    "       gatehouse devices list   -c gatehouse.yaml [--owner EMAIL] [--json]\n"
    "       gatehouse devices show   -c gatehouse.yaml ID\n"
    "       gatehouse devices revoke -c gatehouse.yaml ID [--reason TEXT]\n";

struct cli_conf {
    char *db;
    char **cas; /* every listener's client_ca, resolved */
    size_t ncas;
};

static void cli_conf_free(struct cli_conf *cc)
{
    free(cc->db);
    for (size_t i = 0; i < cc->ncas; i++) {
        free(cc->cas[i]);
    }
    free(cc->cas);
}

static int read_conf(const char *conf_file, struct cli_conf *cc)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(conf_file, &d);
    memset(cc, 0, sizeof *cc);
    if (doc == NULL) {
        conf_diag_print(&d, stderr);
        conf_diag_fini(&d);
        return -1;
    }
    const char *sqlite = NULL;
    const struct conf_node *state = conf_get(doc->root, "state");
    if (state != NULL && conf_string(&d, state, "sqlite", &sqlite) && sqlite != NULL) {
        cc->db = conf_path_resolve(conf_file, sqlite);
    } else if (d.count == 0) {
        fprintf(stderr, "%s: error: no \"state: {sqlite: ...}\" configured, so there is no "
                        "device registry\n", conf_file);
    }
    const struct conf_node *ls = conf_get(doc->root, "listen");
    for (size_t i = 0; ls && ls->type == CONF_SEQ && i < ls->n; i++) {
        const struct conf_node *tls = conf_get(ls->items[i], "tls");
        const char *ca = NULL;
        if (tls && tls->type == CONF_MAP && conf_string(&d, tls, "client_ca", &ca) && ca) {
            cc->cas = xrealloc(cc->cas, (cc->ncas + 1) * sizeof *cc->cas);
            cc->cas[cc->ncas++] = conf_path_resolve(conf_file, ca);
        }
    }
    conf_diag_print(&d, stderr);
    conf_diag_fini(&d);
    conf_doc_free(doc);
    if (!cc->db) {
        cli_conf_free(cc);
        return -1;
    }
    return 0;
}

/* Whether x verifies against one of the client CAs (any time: a certificate
 * enrolled before it is valid, or when the clock is off, still counts). */
static bool issued_by_client_ca(const struct cli_conf *cc, X509 *x, char *why, size_t cap)
{
    snprintf(why, cap, "no listener has a client_ca");
    for (size_t i = 0; i < cc->ncas; i++) {
        X509_STORE *st = X509_STORE_new();
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        bool ok = false;
        if (st && ctx && X509_STORE_load_file(st, cc->cas[i]) == 1 &&
            X509_STORE_CTX_init(ctx, st, x, NULL) == 1) {
            X509_STORE_CTX_set_default(ctx, "ssl_client");
            X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(ctx), X509_V_FLAG_NO_CHECK_TIME);
            ok = X509_verify_cert(ctx) == 1;
            if (!ok) {
                snprintf(why, cap, "%s (client_ca %s)",
                         X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)),
                         cc->cas[i]);
            }
        }
        X509_STORE_CTX_free(ctx);
        X509_STORE_free(st);
        if (ok) {
            return true;
        }
    }
    return false;
}

static const char *who_runs(void)
{
    const char *s = getenv("SUDO_USER");
    if (s && *s) {
        return s;
    }
    struct passwd *pw = getpwuid(getuid());
    return pw ? pw->pw_name : "?";
}

static void fmt_time(int64_t t, char *buf, size_t cap)
{
    if (t <= 0) {
        snprintf(buf, cap, "-");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

struct list_ctx {
    bool json;
    size_t n;
};

static void print_one(const struct device_record *r, void *arg)
{
    struct list_ctx *lc = arg;
    lc->n++;
    if (lc->json) {
        char *s = device_record_json(r);
        printf("%s\n", s ? s : "{}");
        free(s);
        return;
    }
    char en[32], seen[32];
    fmt_time(r->enrolled_at, en, sizeof en);
    fmt_time(r->last_seen, seen, sizeof seen);
    printf("%-16s  %-24s  %-28s  %-7s  %s  %s  %.16s\n", r->id, r->name[0] ? r->name : "-",
           r->owner, r->revoked_at ? "revoked" : "active", en, seen, r->fingerprint);
}

static void show_one(const struct device_record *r)
{
    char en[32], seen[32], na[32], rv[32];
    fmt_time(r->enrolled_at, en, sizeof en);
    fmt_time(r->last_seen, seen, sizeof seen);
    fmt_time(r->not_after, na, sizeof na);
    fmt_time(r->revoked_at, rv, sizeof rv);
    printf("id:           %s\nname:         %s\nowner:        %s\nfingerprint:  %s\n"
           "serial:       %s\nsubject:      %s\nissuer:       %s\nnot after:    %s\n"
           "enrolled at:  %s\nenrolled by:  %s\nlast seen:    %s\n",
           r->id, r->name, r->owner, r->fingerprint, r->serial, r->subject, r->issuer, na, en,
           r->enrolled_by, seen);
    if (r->revoked_at) {
        printf("revoked at:   %s\nreason:       %s\n", rv, r->reason);
    } else {
        printf("status:       active\n");
    }
}

static int log_act(admin_log_fn *log_admin, const char *conf, const char *action,
                   const struct device_record *r, const char *reason)
{
    if (!log_admin) {
        return 0;
    }
    char target[64], note[512];
    snprintf(target, sizeof target, "device %s", r->id);
    struct admin_act act = { .action = action, .target = target, .reason = reason,
                             .email = r->owner };
    int lr = log_admin(conf, &act, note, sizeof note);
    if (lr == 0) {
        fprintf(stderr, "gatehouse devices: %s\n", note);
    } else if (lr < 0) {
        fprintf(stderr, "gatehouse devices: the %s is NOT in the decision log: %s\n",
                strcmp(action, "device.enroll") == 0 ? "enrolment" : "revocation", note);
        return -1;
    }
    return 0;
}

static int enroll(struct device_store *s, const struct cli_conf *cc, const char *conf,
                  const char *cert, const char *owner, const char *name, admin_log_fn *log_admin)
{
    FILE *f = fopen(cert, "r");
    if (!f) {
        fprintf(stderr, "gatehouse devices: cannot read %s\n", cert);
        return 1;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x) {
        fprintf(stderr, "gatehouse devices: %s holds no PEM certificate\n", cert);
        return 1;
    }
    char why[512];
    if (!issued_by_client_ca(cc, x, why, sizeof why)) {
        fprintf(stderr, "gatehouse devices: %s is not issued by a configured client CA: %s\n",
                cert, why);
        X509_free(x);
        return 1;
    }
    struct device_identity di;
    memset(&di, 0, sizeof di);
    int rc = device_identity_from_x509(x, &di);
    X509_free(x);
    if (rc != 0) {
        fprintf(stderr, "gatehouse devices: cannot read %s\n", cert);
        return 1;
    }
    struct device_record r;
    memset(&r, 0, sizeof r);
    memcpy(r.fingerprint, di.fingerprint, sizeof r.fingerprint);
    memcpy(r.serial, di.serial, sizeof r.serial);
    memcpy(r.subject, di.subject, sizeof r.subject);
    memcpy(r.issuer, di.issuer, sizeof r.issuer);
    snprintf(r.owner, sizeof r.owner, "%s", owner);
    snprintf(r.name, sizeof r.name, "%s", name ? name : "");
    snprintf(r.enrolled_by, sizeof r.enrolled_by, "%s", who_runs());
    r.not_after = di.not_after;
    struct err err = { 0 };
    if (device_store_enroll(s, &r, &err) != 0) {
        fprintf(stderr, "gatehouse devices: %s\n", err.msg);
        return 1;
    }
    printf("%s\n", r.id);
    char reason[400];
    snprintf(reason, sizeof reason, "enrolled %.64s for %.200s", r.fingerprint, r.owner);
    return log_act(log_admin, conf, "device.enroll", &r, reason) == 0 ? 0 : 1;
}

int authn_cmd_devices(int argc, char **argv, admin_log_fn *log_admin)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "cert", required_argument, NULL, 'C' },
        { "owner", required_argument, NULL, 'o' },  { "name", required_argument, NULL, 'n' },
        { "reason", required_argument, NULL, 'r' }, { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },         { NULL, 0, NULL, 0 },
    };
    const char *conf = NULL, *cert = NULL, *owner = NULL, *name = NULL, *reason = NULL;
    bool json = false;
    int c;
    static const char *const verbs[] = { "enroll", "list", "show", "revoke", NULL };
    bool known = false;
    for (size_t i = 0; argc >= 2 && verbs[i]; i++) {
        known = known || strcmp(argv[1], verbs[i]) == 0;
    }
    if (!known) {
        fputs(devices_usage, stderr);
        return 2;
    }
    const char *verb = argv[1];
    optind = 2;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': conf = optarg; break;
        case 'C': cert = optarg; break;
        case 'o': owner = optarg; break;
        case 'n': name = optarg; break;
        case 'r': reason = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(devices_usage, stdout); return 0;
        default: fputs(devices_usage, stderr); return 2;
        }
    }
    bool wants_id = strcmp(verb, "show") == 0 || strcmp(verb, "revoke") == 0;
    if (conf == NULL || (wants_id ? optind != argc - 1 : optind != argc) ||
        (strcmp(verb, "enroll") == 0 && (!cert || !owner)) ||
        (strcmp(verb, "enroll") != 0 && cert) ||
        (strcmp(verb, "enroll") != 0 && strcmp(verb, "list") != 0 && owner)) {
        fputs(devices_usage, stderr);
        return 2;
    }
    if (owner && (strlen(owner) >= 256 || !strchr(owner, '@'))) {
        fprintf(stderr, "gatehouse devices: --owner takes the owner's email\n");
        return 2;
    }
    if ((name && strlen(name) >= 128) || (reason && strlen(reason) >= 256)) {
        fprintf(stderr, "gatehouse devices: --name is at most 127 bytes, --reason 255\n");
        return 2;
    }
    struct cli_conf cc;
    if (read_conf(conf, &cc) != 0) {
        return 1;
    }
    struct err err = { 0 };
    struct device_store *s = device_store_open(cc.db, &err);
    if (!s) {
        fprintf(stderr, "gatehouse devices: %s\n", err.msg);
        cli_conf_free(&cc);
        return 1;
    }
    int rc = 0;
    if (strcmp(verb, "enroll") == 0) {
        rc = enroll(s, &cc, conf, cert, owner, name, log_admin);
    } else if (strcmp(verb, "list") == 0) {
        struct list_ctx lc = { .json = json };
        if (!json) {
            printf("%-16s  %-24s  %-28s  %-7s  %-20s  %-20s  %s\n", "ID", "NAME", "OWNER",
                   "STATUS", "ENROLLED", "LAST SEEN", "FINGERPRINT");
        }
        if (device_store_list(s, owner, print_one, &lc, &err) != 0) {
            fprintf(stderr, "gatehouse devices: %s\n", err.msg);
            rc = 1;
        }
    } else {
        struct device_record r;
        const char *id = argv[optind];
        if (strcmp(verb, "show") == 0) {
            if (device_store_show(s, id, &r, &err) != 0) {
                fprintf(stderr, "gatehouse devices: %s\n", err.msg);
                rc = 1;
            } else if (json) {
                char *j = device_record_json(&r);
                printf("%s\n", j ? j : "{}");
                free(j);
            } else {
                show_one(&r);
            }
        } else if (device_store_revoke(s, id, reason, &r, &err) != 0) {
            fprintf(stderr, "gatehouse devices: %s\n", err.msg);
            rc = 1;
        } else {
            printf("revoked device %s\n", r.id);
            char why[400];
            snprintf(why, sizeof why, "revoked: %.255s", reason && *reason ? reason : "no reason given");
            rc = log_act(log_admin, conf, "device.revoke", &r, why) == 0 ? 0 : 1;
        }
    }
    device_store_close(s);
    cli_conf_free(&cc);
    return rc;
}
