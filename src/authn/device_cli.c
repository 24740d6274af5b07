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
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "device.h"
#include "device_store.h"
#include "session_pg.h"

static const char devices_usage[] =
    "usage: gatehouse devices enroll -c gatehouse.yaml --cert dev.pem --owner EMAIL [--name NAME]\n"
    "       gatehouse devices enroll -c gatehouse.yaml --csr dev.csr --out dev.pem --owner EMAIL\n"
    "                                [--name NAME] [--days N]\n"
    "       gatehouse devices list   -c gatehouse.yaml [--owner EMAIL] [--json]\n"
    "       gatehouse devices show   -c gatehouse.yaml ID\n"
    "       gatehouse devices revoke -c gatehouse.yaml ID [--reason TEXT]\n";

struct cli_conf {
    char *db;
    char *ca_cert, *ca_key; /* devices.enroll_ca, or NULL */
    char **cas;             /* every listener's client_ca, resolved */
    size_t ncas;
};

static void cli_conf_free(struct cli_conf *cc)
{
    free(cc->db);
    free(cc->ca_cert);
    free(cc->ca_key);
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
    const struct conf_node *state = conf_get(doc->root, "state");
    struct spg_conf pg;
    struct conf_state st = { 0 };
    memset(&pg, 0, sizeof pg);
    if (state != NULL && spg_conf_parse(&d, state, conf_file, &pg) && pg.conninfo != NULL) {
        /* A fleet: the registry is in PostgreSQL (state.sqlite, if any, is not it). */
        device_store_use_postgres(&pg);
        cc->db = xstrdup("postgres");
    } else if (conf_state_read(&d, doc->root, conf_file, &st) && st.sqlite != NULL) {
        cc->db = st.sqlite; /* the state section's one reader (core/conf.c) */
        st.sqlite = NULL;
    } else if (d.count == 0) {
        fprintf(stderr,
                "%s: error: no \"state: {sqlite: ...}\" configured, so there is no "
                "device registry\n",
                conf_file);
    }
    const struct conf_node *eca = conf_get(conf_get(doc->root, "devices"), "enroll_ca");
    const char *ecert = NULL, *ekey = NULL;
    if (eca && eca->type == CONF_MAP && conf_string(&d, eca, "cert", &ecert) &&
        conf_string(&d, eca, "key", &ekey) && ecert && ekey) {
        cc->ca_cert = conf_path_resolve(conf_file, ecert);
        cc->ca_key = conf_path_resolve(conf_file, ekey);
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
    spg_conf_fini(&pg);
    conf_state_fini(&st);
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
                         X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)), cc->cas[i]);
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
    struct admin_act act = {
        .action = action, .target = target, .reason = reason, .email = r->owner
    };
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

/* --csr: signs the request with devices.enroll_ca for `days` days as a client
 * certificate (the CSR's subject and subjectAltNames, nothing else of it) and
 * writes it to out. 0, or 1 with the reason on stderr. */
static int sign_csr(const struct cli_conf *cc, const char *csr_file, const char *out, long days)
{
    int rc = 1;
    X509_REQ *req = NULL;
    X509 *ca = NULL, *x = NULL;
    EVP_PKEY *cakey = NULL, *pub = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    FILE *f;

    if (!cc->ca_cert) {
        fprintf(stderr, "gatehouse devices: --csr needs \"devices: {enroll_ca: {cert, key}}\" in "
                        "the configuration\n");
        return 1;
    }
    if ((f = fopen(csr_file, "r"))) {
        req = PEM_read_X509_REQ(f, NULL, NULL, NULL);
        fclose(f);
    }
    if ((f = fopen(cc->ca_cert, "r"))) {
        ca = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    }
    if ((f = fopen(cc->ca_key, "r"))) {
        cakey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (!req) {
        fprintf(stderr, "gatehouse devices: %s holds no PEM certificate request\n", csr_file);
        goto out;
    }
    if (!ca || !cakey || X509_check_private_key(ca, cakey) != 1) {
        fprintf(stderr, "gatehouse devices: cannot load devices.enroll_ca (%s, %s)\n", cc->ca_cert,
                cc->ca_key);
        goto out;
    }
    pub = X509_REQ_get_pubkey(req);
    if (!pub || X509_REQ_verify(req, pub) != 1) {
        fprintf(stderr, "gatehouse devices: the signature of %s does not verify\n", csr_file);
        goto out;
    }
    unsigned char sn[16];
    BIGNUM *bn = NULL;
    x = X509_new();
    if (!x || RAND_bytes(sn, sizeof sn) != 1 || !(bn = BN_bin2bn(sn, sizeof sn, NULL))) {
        BN_free(bn);
        goto fail;
    }
    sn[0] &= 0x7f; /* positive */
    BN_free(bn);
    bn = BN_bin2bn(sn, sizeof sn, NULL);
    int ok = bn && X509_set_version(x, 2) == 1 &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL &&
             X509_set_issuer_name(x, X509_get_subject_name(ca)) == 1 &&
             X509_set_subject_name(x, X509_REQ_get_subject_name(req)) == 1 &&
             X509_set_pubkey(x, pub) == 1 && X509_gmtime_adj(X509_getm_notBefore(x), -300) &&
             X509_gmtime_adj(X509_getm_notAfter(x), days * 86400L);
    BN_free(bn);
    if (!ok) {
        goto fail;
    }
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);
    static const struct {
        int nid;
        const char *value;
    } std_exts[] = {
        { NID_basic_constraints, "critical,CA:FALSE" },
        { NID_key_usage, "critical,digitalSignature" },
        { NID_ext_key_usage, "clientAuth" },
        { NID_subject_key_identifier, "hash" },
        { NID_authority_key_identifier, "keyid:always" },
    };
    for (size_t i = 0; i < sizeof std_exts / sizeof std_exts[0]; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, std_exts[i].nid, std_exts[i].value);
        if (!e || X509_add_ext(x, e, -1) != 1) {
            X509_EXTENSION_free(e);
            goto fail;
        }
        X509_EXTENSION_free(e);
    }
    exts = X509_REQ_get_extensions(req);
    for (int i = 0; exts && i < sk_X509_EXTENSION_num(exts); i++) {
        X509_EXTENSION *e = sk_X509_EXTENSION_value(exts, i);
        if (OBJ_obj2nid(X509_EXTENSION_get_object(e)) == NID_subject_alt_name &&
            X509_add_ext(x, e, -1) != 1) {
            goto fail;
        }
    }
    int kt = EVP_PKEY_get_base_id(cakey);
    if (X509_sign(x, cakey, kt == EVP_PKEY_ED25519 || kt == EVP_PKEY_ED448 ? NULL : EVP_sha256()) <=
        0) {
        goto fail;
    }
    f = fopen(out, "wx");
    if (!f) {
        fprintf(stderr, "gatehouse devices: cannot create %s (it must not exist)\n", out);
        goto out;
    }
    if (PEM_write_X509(f, x) != 1) {
        fclose(f);
        fprintf(stderr, "gatehouse devices: cannot write %s\n", out);
        goto out;
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "gatehouse devices: cannot write %s\n", out);
        goto out;
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "gatehouse devices: cannot sign %s\n", csr_file);
out:
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);
    X509_free(ca);
    X509_free(x);
    EVP_PKEY_free(cakey);
    EVP_PKEY_free(pub);
    return rc;
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
        fprintf(stderr, "gatehouse devices: %s is not issued by a configured client CA: %s\n", cert,
                why);
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
        { "config", required_argument, NULL, 'c' },
        { "cert", required_argument, NULL, 'C' },
        { "owner", required_argument, NULL, 'o' },
        { "name", required_argument, NULL, 'n' },
        { "reason", required_argument, NULL, 'r' },
        { "json", no_argument, NULL, 'j' },
        { "csr", required_argument, NULL, 'R' },
        { "out", required_argument, NULL, 'O' },
        { "days", required_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *conf = NULL, *cert = NULL, *owner = NULL, *name = NULL, *reason = NULL;
    const char *csr = NULL, *out = NULL;
    long days = 365;
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
        case 'c':
            conf = optarg;
            break;
        case 'C':
            cert = optarg;
            break;
        case 'o':
            owner = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 'r':
            reason = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'R':
            csr = optarg;
            break;
        case 'O':
            out = optarg;
            break;
        case 'D': {
            uint64_t v = 0;
            if (!str_to_u64(str_from(optarg), 1, 3650, &v)) {
                fprintf(stderr, "gatehouse devices: --days takes 1 to 3650\n");
                return 2;
            }
            days = (long)v;
            break;
        }
        case 'h':
            fputs(devices_usage, stdout);
            return 0;
        default:
            fputs(devices_usage, stderr);
            return 2;
        }
    }
    bool wants_id = strcmp(verb, "show") == 0 || strcmp(verb, "revoke") == 0;
    if (conf == NULL || (wants_id ? optind != argc - 1 : optind != argc) ||
        (strcmp(verb, "enroll") == 0 && (!owner || (cert ? csr != NULL : !csr || !out))) ||
        (strcmp(verb, "enroll") != 0 && (cert || csr || out)) || (out && !csr) ||
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
    if (strcmp(verb, "enroll") == 0 && csr) {
        rc = sign_csr(&cc, csr, out, days);
        if (rc == 0) {
            rc = enroll(s, &cc, conf, out, owner, name, log_admin);
            if (rc != 0) {
                unlink(out); /* not enrolled: no certificate left behind */
            }
        }
    } else if (strcmp(verb, "enroll") == 0) {
        rc = enroll(s, &cc, conf, cert, owner, name, log_admin);
    } else if (strcmp(verb, "list") == 0) {
        struct list_ctx lc = { .json = json };
        if (!json) {
            printf("%-16s  %-24s  %-28s  %-7s  %-20s  %-20s  %s\n", "ID", "NAME", "OWNER", "STATUS",
                   "ENROLLED", "LAST SEEN", "FINGERPRINT");
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
            snprintf(why, sizeof why, "revoked: %.255s",
                     reason && *reason ? reason : "no reason given");
            rc = log_act(log_admin, conf, "device.revoke", &r, why) == 0 ? 0 : 1;
        }
    }
    device_store_close(s);
    cli_conf_free(&cc);
    return rc;
}
