/* proxy/config.c - gatehouse.yaml into an immutable, ref-counted struct config.
 * Phase one reads every proxy key with the typed getters of core/conf.h (type,
 * bounds, unknown keys); phase two cross-checks what needs the whole file:
 * duplicate names and addresses, route overlap, certificate files and keys.
 * Every problem is collected (up to 20 shown) so one `gatehouse check` run
 * reports them all. Runs at start and on SIGHUP, never on the request path.
 * Over 1,200 lines: one reader per proxy section, kept in one file so that every
 * key of gatehouse.yaml the proxy owns is found in one place (the access stage's
 * are in access/access_conf.c).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "accesslog.h"
#include "core/normpath.h"

#define MAX_WORKERS 256
#define MAX_ROUTE_NAME 64

static const char *const top_keys[] = {
    "listen", "admin", "workers", "limits", "timeouts", "access_log", "log_level", "state",
    "routes",
    /* Sections validated by the access stage (access/access_conf.c: authn and policy modules). */
    "session", "identity_providers", "upstream_identity", "opa", "decision_log", "devices",
    "pages", NULL,
};
static const char *const listen_keys[] = { "address", "tls", "trust_request_id",
                                           "trust_forwarded", "public_url", NULL };
static const char *const tls_keys[] = { "cert", "key", "certificates", "client_ca",
                                        "client_crl", "client_cert", "verify_depth",
                                        "match_subject_alt_names", NULL };
static const char *const san_match_keys[] = { "dns", "email", "uri", "ip", NULL };
static const char *const cert_keys[] = { "cert", "key", NULL };
static const char *const admin_keys[] = { "address", NULL };
static const char *const limits_keys[] = { "header_bytes", "headers", "body_bytes", "uri_bytes",
                                           "connections", NULL };
static const char *const timeouts_keys[] = { "header", "idle", "body", "upstream_connect",
                                             "upstream_response", "drain", NULL };
static const char *const state_keys[] = { "sqlite", "postgres", "password_file", "migrate",
                                          "staleness", "query_timeout", "node", NULL };
static const char *const access_log_keys[] = { "file", "fields", NULL };
/* The device registry lives in state.sqlite; "devices" tunes its use. */
static const char *const devices_keys[] = { "cache_ttl", "enroll_ca", NULL };
static const char *const route_keys[] = { "name", "match", "upstream", "websocket", "public",
                                          "allow_any_authenticated", "policy",
                                          "identity_providers", "encoded_slashes", "headers",
                                          "public_url",
                                          NULL };
static const char *const route_header_keys[] = { "allow_underscores", "allow_override_headers",
                                                 NULL };
static const char *const match_keys[] = { "host", "path_prefix", "path_case_insensitive",
                                          NULL };
static const char *const encoded_slashes_names[] = { "reject", "pass", NULL };
static const char *const upstream_keys[] = { "servers", "balance", "ca_file", "tls_verify",
                                             "max_idle", "max_conns", "max_fails",
                                             "fail_timeout", "health_check", "retries", "tls",
                                             NULL };
static const char *const upstream_tls_keys[] = { "ca", "cert", "key", "server_name", NULL };
static const char *const health_keys[] = { "path", "interval", NULL };
static const char *const balance_names[] = { "round_robin", "least_conn", "ip_hash", NULL };
static const char *const client_cert_names[] = { "none", "optional", "required", NULL };
static const char *const log_level_names[] = { "debug", "info", "warn", "error", NULL };

/* Open-addressing map from a string to the index that first used it: duplicate
 * checks stay linear for configurations with thousands of routes. */
struct first_seen {
    size_t cap, n;
    char **keys; /* owned */
    size_t *vals;
};

/* Loader state for one file. */
struct loader {
    struct config *c;
    struct conf_diag *d;
    const char *file;
    struct first_seen route_names;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static void first_seen_grow(struct first_seen *t)
{
    struct first_seen bigger = { .cap = t->cap ? t->cap * 2 : 64 };

    bigger.keys = xcalloc(bigger.cap, sizeof *bigger.keys);
    bigger.vals = xcalloc(bigger.cap, sizeof *bigger.vals);
    for (size_t i = 0; i < t->cap; i++) {
        if (t->keys[i]) {
            size_t j = hash_str(t->keys[i]) & (bigger.cap - 1);
            while (bigger.keys[j]) {
                j = (j + 1) & (bigger.cap - 1);
            }
            bigger.keys[j] = t->keys[i];
            bigger.vals[j] = t->vals[i];
        }
    }
    bigger.n = t->n;
    free(t->keys);
    free(t->vals);
    *t = bigger;
}

/* Records key -> val and returns true, or returns false with *first set when
 * key was seen before (the first value is kept). */
static bool first_seen_add(struct first_seen *t, const char *key, size_t val, size_t *first)
{
    size_t i;

    if (2 * (t->n + 1) > t->cap) {
        first_seen_grow(t);
    }
    for (i = hash_str(key) & (t->cap - 1); t->keys[i]; i = (i + 1) & (t->cap - 1)) {
        if (strcmp(t->keys[i], key) == 0) {
            *first = t->vals[i];
            return false;
        }
    }
    t->keys[i] = xstrdup(key);
    t->vals[i] = val;
    t->n++;
    return true;
}

static void first_seen_fini(struct first_seen *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        free(t->keys[i]);
    }
    free(t->keys);
    free(t->vals);
    *t = (struct first_seen){ 0 };
}

/* ---- small helpers ---- */

/* Index of s in a NULL-terminated list, or -1. */
static int name_index(const char *s, const char *const names[])
{
    for (int i = 0; names[i]; i++) {
        if (strcmp(s, names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* "a, b, c" for messages. */
static void join_names(const char *const names[], char *out, size_t cap)
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

/* Reads key from m as one of names; reports "must be one of ..." with a
 * suggestion. Returns the index, -1 when absent, -2 on error. */
static int get_enum(struct loader *L, const struct conf_node *m, const char *key,
                    const char *const names[])
{
    const char *v = NULL;
    const struct conf_node *n;
    char list[128];
    int i;

    if (!conf_string(L->d, m, key, &v)) {
        return -2;
    }
    if (!v) {
        return -1;
    }
    n = conf_get(m, key);
    i = name_index(v, names);
    if (i >= 0) {
        return i;
    }
    join_names(names, list, sizeof list);
    const char *s = conf_suggest(v, names);
    if (s) {
        conf_error(L->d, n, "\"%s\" must be one of %s, got \"%s\" (did you mean \"%s\"?)", key,
                   list, v, s);
    } else {
        conf_error(L->d, n, "\"%s\" must be one of %s, got \"%s\"", key, list, v);
    }
    return -2;
}

/* A non-empty string value or NULL; reports wrong types and empty strings. */
static const char *get_nonempty(struct loader *L, const struct conf_node *m, const char *key)
{
    const char *v = NULL;
    if (!conf_string(L->d, m, key, &v) || !v) {
        return NULL;
    }
    if (v[0] == '\0') {
        conf_error(L->d, conf_get(m, key), "\"%s\" must not be empty", key);
        return NULL;
    }
    return v;
}

static char *resolve(struct loader *L, const char *path)
{
    return conf_path_resolve(L->file, path);
}

/* Parses "ipv4:port" or "[ipv6]:port" with a numeric host. */
static bool parse_address(const char *s, char *host, size_t host_cap, uint16_t *port)
{
    const char *colon, *h = s, *hend;
    unsigned char buf[16];
    uint64_t p;
    char tmp[64];
    bool v6 = false;

    if (s[0] == '[') {
        hend = strchr(s, ']');
        if (!hend || hend[1] != ':') {
            return false;
        }
        h = s + 1;
        colon = hend + 1;
        v6 = true;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            return false;
        }
        hend = colon;
    }
    if ((size_t)(hend - h) >= sizeof tmp || hend == h) {
        return false;
    }
    memcpy(tmp, h, (size_t)(hend - h));
    tmp[hend - h] = '\0';
    if (inet_pton(v6 ? AF_INET6 : AF_INET, tmp, buf) != 1) {
        return false;
    }
    if (!str_to_u64(str_from(colon + 1), 1, 65535, &p)) {
        return false;
    }
    if (strlen(tmp) >= host_cap) {
        return false;
    }
    memcpy(host, tmp, strlen(tmp) + 1);
    *port = (uint16_t)p;
    return true;
}

enum clash { CLASH_NONE = 0, CLASH_SAME, CLASH_OVERLAP };

/* Compares two numeric socket addresses (hosts as parse_address left them):
 * the same address, or one the wildcard (0.0.0.0, ::) of the other's family. */
static enum clash clash(const char *h1, uint16_t p1, const char *h2, uint16_t p2)
{
    unsigned char a[16] = { 0 }, b[16] = { 0 }, zero[16] = { 0 };
    bool v6a = strchr(h1, ':') != NULL, v6b = strchr(h2, ':') != NULL;
    size_t n = v6a ? 16 : 4;

    if (p1 != p2 || v6a != v6b || inet_pton(v6a ? AF_INET6 : AF_INET, h1, a) != 1 ||
        inet_pton(v6b ? AF_INET6 : AF_INET, h2, b) != 1) {
        return CLASH_NONE;
    }
    if (memcmp(a, b, n) == 0) {
        return CLASH_SAME;
    }
    return memcmp(a, zero, n) == 0 || memcmp(b, zero, n) == 0 ? CLASH_OVERLAP : CLASH_NONE;
}

static bool read_address(struct loader *L, const struct conf_node *m, char **addr_out,
                         char *host, size_t host_cap, uint16_t *port)
{
    const char *a = NULL;
    const struct conf_node *n = conf_get(m, "address");

    if (!conf_string(L->d, m, "address", &a)) {
        return false;
    }
    if (!a) {
        conf_error(L->d, m, "missing \"address\" (host:port, such as 127.0.0.1:8080)");
        return false;
    }
    if (!parse_address(a, host, host_cap, port)) {
        conf_error(L->d, n,
                   "\"address\" must be a numeric IPv4 or [IPv6] address and a port from 1 to "
                   "65535, such as 127.0.0.1:8080, got \"%s\"",
                   a);
        return false;
    }
    *addr_out = xstrdup(a);
    return true;
}

/* ---- files and certificates (phase two) ---- */

static int no_password(char *buf, int size, int rwflag, void *u)
{
    /* An encrypted key would otherwise make OpenSSL prompt on the terminal. */
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Reports and returns false when path is not a readable regular file. A FIFO
 * or a device (/dev/zero) would hang or flood the PEM reader. */
static bool check_readable(struct loader *L, const struct conf_node *n, const char *key,
                           const char *written, const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

    if (fd < 0) {
        conf_error(L->d, n, "cannot read \"%s\" file \"%s\": %s", key, written, strerror(errno));
        return false;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        conf_error(L->d, n, "\"%s\" file \"%s\" is not a regular file", key, written);
        return false;
    }
    close(fd);
    return true;
}

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x;
    if (!f) {
        return NULL;
    }
    x = PEM_read_X509(f, NULL, no_password, NULL);
    fclose(f);
    ERR_clear_error();
    return x;
}

static EVP_PKEY *read_key(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k;
    if (!f) {
        return NULL;
    }
    k = PEM_read_PrivateKey(f, NULL, no_password, NULL);
    fclose(f);
    ERR_clear_error();
    return k;
}

/* Count of PEM certificates in path (CA bundles). */
static size_t count_certs(const char *path)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;
    X509 *x;
    if (!f) {
        return 0;
    }
    while ((x = PEM_read_X509(f, NULL, no_password, NULL))) {
        X509_free(x);
        n++;
    }
    fclose(f);
    ERR_clear_error();
    return n;
}

static bool check_ca_file(struct loader *L, const struct conf_node *m, const char *key,
                          const char *path)
{
    const struct conf_node *n = conf_get(m, key);
    if (!check_readable(L, n, key, n->value, path)) {
        return false;
    }
    if (count_certs(path) == 0) {
        conf_error(L->d, n, "\"%s\" file \"%s\" holds no PEM certificate", key, n->value);
        return false;
    }
    return true;
}

static bool check_crl_file(struct loader *L, const struct conf_node *m, const char *path)
{
    const struct conf_node *n = conf_get(m, "client_crl");
    FILE *f;
    X509_CRL *crl;

    if (!check_readable(L, n, "client_crl", n->value, path)) {
        return false;
    }
    f = fopen(path, "r");
    crl = f ? PEM_read_X509_CRL(f, NULL, no_password, NULL) : NULL;
    if (f) {
        fclose(f);
    }
    ERR_clear_error();
    if (!crl) {
        conf_error(L->d, n, "\"client_crl\" file \"%s\" holds no PEM certificate revocation list",
                   n->value);
        return false;
    }
    X509_CRL_free(crl);
    return true;
}

/* m holds "cert" and "key": both readable, PEM, and the key is the certificate's. */
static bool check_cert_pair(struct loader *L, const struct conf_node *m,
                            const struct tls_cert_conf *tc)
{
    const struct conf_node *cn = conf_get(m, "cert"), *kn = conf_get(m, "key");
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    bool ok = true;

    if (!check_readable(L, cn, "cert", cn->value, tc->cert_file)) {
        ok = false;
    } else if (!(x = read_cert(tc->cert_file))) {
        conf_error(L->d, cn, "\"cert\" file \"%s\" holds no PEM certificate", cn->value);
        ok = false;
    }
    if (!check_readable(L, kn, "key", kn->value, tc->key_file)) {
        ok = false;
    } else if (!(k = read_key(tc->key_file))) {
        conf_error(L->d, kn, "\"key\" file \"%s\" holds no unencrypted PEM private key",
                   kn->value);
        ok = false;
    }
    if (x && k && X509_check_private_key(x, k) != 1) {
        conf_error(L->d, kn, "\"key\" file \"%s\" does not match certificate \"%s\"", kn->value,
                   cn->value);
        ok = false;
    }
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    return ok;
}

static bool valid_hostname(const char *s);

/* upstream.tls: {ca, cert, key, server_name}: mTLS towards backends that require
 * Gatehouse's own client certificate. "ca" is ca_file by another name. */
static void read_upstream_tls(struct loader *L, const struct conf_node *m,
                              struct upstream_conf *u)
{
    const struct conf_node *t = conf_get(m, "tls");
    const char *s;
    if (!t || t->type == CONF_NULL) {
        return;
    }
    if (!conf_check_keys(L->d, t, "\"upstream.tls\"", upstream_tls_keys) && t->type != CONF_MAP) {
        return;
    }
    if ((s = get_nonempty(L, t, "ca"))) {
        if (u->ca_file) {
            conf_error(L->d, conf_get(t, "ca"), "give \"ca_file\" or \"tls.ca\", not both");
        } else {
            u->ca_file = resolve(L, s);
            check_ca_file(L, t, "ca", u->ca_file);
        }
    }
    const char *cert = get_nonempty(L, t, "cert"), *key = get_nonempty(L, t, "key");
    if (cert && key) {
        struct tls_cert_conf tc = { resolve(L, cert), resolve(L, key) };
        u->client_cert = tc.cert_file;
        u->client_key = tc.key_file;
        check_cert_pair(L, t, &tc);
    } else if (cert || key) {
        conf_error(L->d, t, "\"upstream.tls\" has \"%s\" but no \"%s\"", cert ? "cert" : "key",
                   cert ? "key" : "cert");
    }
    if ((s = get_nonempty(L, t, "server_name"))) {
        if (!valid_hostname(s)) {
            conf_error(L->d, conf_get(t, "server_name"), "\"server_name\" must be a DNS name");
        } else {
            u->server_name = xstrdup(s);
        }
    }
}

/* ---- public_url ---- */

/* "public_url: https://app.example.com[:port]": the origin browsers use, for
 * the sign-in redirect URI and the post-logout return. Scheme and authority
 * only (one trailing '/' is dropped); the host is kept lowercase. */
static char *read_public_url(struct loader *L, const struct conf_node *m)
{
    const char *v = get_nonempty(L, m, "public_url");
    if (!v) {
        return NULL;
    }
    const struct conf_node *at = conf_get(m, "public_url");
    size_t skip = strncmp(v, "https://", 8) == 0 ? 8 : strncmp(v, "http://", 7) == 0 ? 7 : 0;
    size_t n = strlen(v);
    if (n > skip && v[n - 1] == '/') {
        n--;
    }
    char host[256];
    const char *auth = v + skip;
    size_t alen = n - skip;
    const char *colon = alen > 0 && auth[0] != '[' ? memchr(auth, ':', alen) : NULL;
    const char *close = alen > 0 && auth[0] == '[' ? memchr(auth, ']', alen) : NULL;
    size_t hlen = colon ? (size_t)(colon - auth) : close ? (size_t)(close - auth) + 1 : alen;
    const char *port = colon ? colon + 1 : close && close + 1 < auth + alen ? close + 1 : NULL;
    bool ok = skip > 0 && alen > 0 && hlen > 0 && hlen < sizeof host;
    if (ok) {
        memcpy(host, auth, hlen);
        host[hlen] = '\0';
        ok = host[0] == '[' ? close != NULL : valid_hostname(host);
    }
    if (ok && port != NULL) {
        if (close != NULL && *port == ':') {
            port++;
        } else if (close != NULL) {
            ok = false;
        }
        size_t plen = (size_t)(auth + alen - port);
        ok = ok && plen >= 1 && plen <= 5 && strspn(port, "0123456789") >= plen;
        if (ok) {
            char pbuf[6];
            memcpy(pbuf, port, plen);
            pbuf[plen] = '\0';
            unsigned long pn = strtoul(pbuf, NULL, 10);
            ok = pn >= 1 && pn <= 65535;
        }
    }
    for (size_t i = skip; ok && i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        ok = ch > 0x20 && ch < 0x7f && ch != '/' && ch != '?' && ch != '#' && ch != '@' &&
             ch != '\\';
    }
    if (!ok) {
        conf_error(L->d, at,
                   "\"public_url\" must be http:// or https:// with a host and an optional port "
                   "and nothing else (such as https://app.example.com), got \"%s\"",
                   v);
        return NULL;
    }
    char *out = xstrndup(v, n);
    for (char *p = out + skip; *p && *p != ':'; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char)(*p - 'A' + 'a');
        }
    }
    return out;
}

/* ---- listen ---- */

static bool read_cert_entry(struct loader *L, const struct conf_node *m, const char *what,
                            struct listener_conf *lc)
{
    const char *cert = get_nonempty(L, m, "cert"), *key = get_nonempty(L, m, "key");
    struct tls_cert_conf *tc;

    if (!cert && !key) {
        return false;
    }
    if (!cert || !key) {
        if (conf_get(m, cert ? "key" : "cert") == NULL) {
            conf_error(L->d, m, "%s has \"%s\" but no \"%s\"", what, cert ? "cert" : "key",
                       cert ? "key" : "cert");
        }
        return false;
    }
    lc->certs = xrealloc(lc->certs, (lc->ncerts + 1) * sizeof *lc->certs);
    tc = &lc->certs[lc->ncerts++];
    tc->cert_file = resolve(L, cert);
    tc->key_file = resolve(L, key);
    return check_cert_pair(L, m, tc);
}

static void read_tls(struct loader *L, const struct conf_node *t, struct listener_conf *lc)
{
    const struct conf_node *certs = conf_get(t, "certificates");
    const char *s;
    int cc;

    if (!conf_check_keys(L->d, t, "\"tls\"", tls_keys)) {
        if (t->type != CONF_MAP) {
            return;
        }
    }
    lc->tls = true;
    if (conf_get(t, "cert") || conf_get(t, "key")) {
        read_cert_entry(L, t, "\"tls\"", lc);
    }
    if (certs && conf_seq(L->d, certs, "\"certificates\"")) {
        for (size_t i = 0; i < certs->n; i++) {
            const struct conf_node *e = certs->items[i];
            if (!conf_check_keys(L->d, e, "a \"certificates\" item", cert_keys)) {
                if (e->type != CONF_MAP) {
                    continue;
                }
            }
            if (!conf_get(e, "cert") && !conf_get(e, "key")) {
                conf_error(L->d, e, "a \"certificates\" item needs \"cert\" and \"key\"");
                continue;
            }
            read_cert_entry(L, e, "a \"certificates\" item", lc);
        }
    }
    if (!conf_get(t, "cert") && !conf_get(t, "key") && !(certs && certs->type == CONF_SEQ &&
                                                         certs->n > 0)) {
        conf_error(L->d, t, "\"tls\" needs \"cert\" and \"key\" (or a \"certificates\" list)");
    }
    if ((s = get_nonempty(L, t, "client_ca"))) {
        lc->client_ca = resolve(L, s);
        check_ca_file(L, t, "client_ca", lc->client_ca);
    }
    if ((s = get_nonempty(L, t, "client_crl"))) {
        lc->client_crl = resolve(L, s);
        check_crl_file(L, t, lc->client_crl);
    }
    cc = get_enum(L, t, "client_cert", client_cert_names);
    if (cc >= 0) {
        lc->client_cert = (enum tls_client_cert)cc;
    }
    if (lc->client_cert != TLS_CLIENT_CERT_NONE && !lc->client_ca) {
        conf_error(L->d, conf_get(t, "client_cert"), "\"client_cert: %s\" needs \"client_ca\"",
                   client_cert_names[lc->client_cert]);
    }
    if (lc->client_crl && !lc->client_ca) {
        conf_error(L->d, conf_get(t, "client_crl"), "\"client_crl\" needs \"client_ca\"");
    }
    uint64_t depth = 1;
    if (conf_u64(L->d, t, "verify_depth", 1, 10, &depth) && conf_get(t, "verify_depth") &&
        !lc->client_ca) {
        conf_error(L->d, conf_get(t, "verify_depth"), "\"verify_depth\" needs \"client_ca\"");
    }
    lc->verify_depth = (unsigned)depth;
    const struct conf_node *sm = conf_get(t, "match_subject_alt_names");
    if (sm && sm->type != CONF_NULL) {
        static const char *const tags[] = { "DNS", "email", "URI", "IP" };
        if (!lc->client_ca) {
            conf_error(L->d, sm, "\"match_subject_alt_names\" needs \"client_ca\"");
        }
        if (conf_check_keys(L->d, sm, "\"match_subject_alt_names\"", san_match_keys) ||
            sm->type == CONF_MAP) {
            for (size_t k = 0; san_match_keys[k]; k++) {
                const struct conf_node *l = conf_get(sm, san_match_keys[k]);
                if (!l || !conf_seq(L->d, l, san_match_keys[k])) {
                    continue;
                }
                for (size_t i = 0; i < l->n; i++) {
                    const struct conf_node *v = l->items[i];
                    if (v->type != CONF_SCALAR || !v->value || !v->value[0]) {
                        conf_error(L->d, v, "a \"%s\" pattern must be a non-empty string",
                                   san_match_keys[k]);
                        continue;
                    }
                    lc->san_patterns = xrealloc(lc->san_patterns,
                                                (lc->nsan_patterns + 1) * sizeof(char *));
                    lc->san_patterns[lc->nsan_patterns++] = xasprintf("%s:%s", tags[k], v->value);
                }
            }
            if (lc->nsan_patterns == 0) {
                conf_error(L->d, sm, "\"match_subject_alt_names\" needs at least one pattern "
                                     "(dns, email, uri, ip)");
            }
        }
    }
}

static void read_listen(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *ls = conf_get(root, "listen");

    if (!ls) {
        conf_error(L->d, root, "missing \"listen\": at least one listener is required");
        return;
    }
    if (!conf_seq(L->d, ls, "\"listen\"")) {
        return;
    }
    if (ls->n == 0) {
        conf_error(L->d, ls, "\"listen\" is empty: at least one listener is required");
        return;
    }
    L->c->listeners = xcalloc(ls->n, sizeof *L->c->listeners);
    for (size_t i = 0; i < ls->n; i++) {
        const struct conf_node *m = ls->items[i];
        struct listener_conf *lc = &L->c->listeners[L->c->nlisteners];
        const struct conf_node *t;

        if (m->type == CONF_SCALAR) {
            /* "listen: [127.0.0.1:8080]" is the likely slip: say what to write. */
            conf_error(L->d, m,
                       "a \"listen\" item must be a map such as {address: %s}, got \"%s\"",
                       m->value, m->value);
            continue;
        }
        if (!conf_check_keys(L->d, m, "a \"listen\" item", listen_keys) && m->type != CONF_MAP) {
            continue;
        }
        L->c->nlisteners++;
        lc->line = m->line;
        lc->col = m->col;
        read_address(L, m, &lc->address, lc->host, sizeof lc->host, &lc->port);
        conf_bool(L->d, m, "trust_request_id", &lc->trust_request_id);
        conf_bool(L->d, m, "trust_forwarded", &lc->trust_forwarded);
        lc->public_url = read_public_url(L, m);
        t = conf_get(m, "tls");
        if (t) {
            read_tls(L, t, lc);
        }
        /* Two sockets on one address (or a specific address under a wildcard
         * one) would split traffic silently between configurations; refuse it. */
        for (size_t j = 0; lc->address && j + 1 < L->c->nlisteners; j++) {
            const struct listener_conf *o = &L->c->listeners[j];
            enum clash k = o->address ? clash(o->host, o->port, lc->host, lc->port) : CLASH_NONE;
            if (k == CLASH_SAME) {
                conf_error(L->d, conf_get(m, "address"),
                           "duplicate listen address \"%s\" (first at line %d)", lc->address,
                           o->line);
                break;
            }
            if (k == CLASH_OVERLAP) {
                conf_error(L->d, conf_get(m, "address"),
                           "listen address \"%s\" overlaps \"%s\" (line %d)", lc->address,
                           o->address, o->line);
                break;
            }
        }
    }
}

/* ---- simple sections ---- */

static void read_admin(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *a = conf_get(root, "admin");
    struct config *c = L->c;

    if (!a || a->type == CONF_NULL) {
        return;
    }
    if (!conf_check_keys(L->d, a, "\"admin\"", admin_keys) && a->type != CONF_MAP) {
        return;
    }
    if (!read_address(L, a, &c->admin_address, c->admin_host, sizeof c->admin_host,
                      &c->admin_port)) {
        return;
    }
    for (size_t j = 0; j < c->nlisteners; j++) {
        const struct listener_conf *o = &c->listeners[j];
        enum clash k =
            o->address ? clash(o->host, o->port, c->admin_host, c->admin_port) : CLASH_NONE;
        if (k == CLASH_SAME) {
            conf_error(L->d, conf_get(a, "address"),
                       "admin address \"%s\" is also a listen address (line %d)",
                       c->admin_address, o->line);
            break;
        }
        if (k == CLASH_OVERLAP) {
            conf_error(L->d, conf_get(a, "address"),
                       "admin address \"%s\" overlaps listen address \"%s\" (line %d)",
                       c->admin_address, o->address, o->line);
            break;
        }
    }
}

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

    l->header_bytes = 32 * 1024;
    l->headers = 100;
    l->body_bytes = 10 * 1024 * 1024;
    l->uri_bytes = 8 * 1024;
    l->connections = 100000;
    if (!m) {
        return;
    }
    if (!conf_check_keys(L->d, m, "\"limits\"", limits_keys) && m->type != CONF_MAP) {
        return;
    }
    conf_size(L->d, m, "header_bytes", 1024, 1024 * 1024, &l->header_bytes);
    conf_u64(L->d, m, "headers", 1, 10000, &l->headers);
    conf_size(L->d, m, "body_bytes", 0, 1ull << 40, &l->body_bytes);
    conf_size(L->d, m, "uri_bytes", 256, 1024 * 1024, &l->uri_bytes);
    conf_u64(L->d, m, "connections", 1, 10000000, &l->connections);
    if (l->uri_bytes > l->header_bytes && conf_get(m, "uri_bytes")) {
        conf_error(L->d, conf_get(m, "uri_bytes"),
                   "\"uri_bytes\" (%llu) must not exceed \"header_bytes\" (%llu): the request "
                   "line is part of the header",
                   (unsigned long long)l->uri_bytes, (unsigned long long)l->header_bytes);
    }
}

static void read_timeouts(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *m = conf_get(root, "timeouts");
    struct timeouts_conf *t = &L->c->timeouts;
    const uint64_t day = 86400000;

    t->header_ms = 10000;
    t->idle_ms = 60000;
    t->body_ms = 60000;
    t->upstream_connect_ms = 5000;
    t->upstream_response_ms = 60000;
    t->drain_ms = 30000;
    if (!m) {
        return;
    }
    if (!conf_check_keys(L->d, m, "\"timeouts\"", timeouts_keys) && m->type != CONF_MAP) {
        return;
    }
    conf_duration_ms(L->d, m, "header", 10, 3600000, &t->header_ms);
    conf_duration_ms(L->d, m, "idle", 10, day, &t->idle_ms);
    conf_duration_ms(L->d, m, "body", 10, 3600000, &t->body_ms);
    conf_duration_ms(L->d, m, "upstream_connect", 10, 600000, &t->upstream_connect_ms);
    conf_duration_ms(L->d, m, "upstream_response", 10, day, &t->upstream_response_ms);
    conf_duration_ms(L->d, m, "drain", 10, 3600000, &t->drain_ms);
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
        int k = it->type == CONF_SCALAR ? name_index(it->value, accesslog_field_names) : -1;
        if (k < 0) {
            char names[400];
            const char *hint = it->type == CONF_SCALAR
                                   ? conf_suggest(it->value, accesslog_field_names)
                                   : NULL;
            join_names(accesslog_field_names, names, sizeof names);
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
        ok = conf_check_keys(L->d, m, "\"access_log\"", access_log_keys) &&
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
            char *p = resolve(L, al);
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
    lvl = get_enum(L, root, "log_level", log_level_names);
    L->c->log_level = xstrdup(lvl >= 0 ? log_level_names[lvl] : "info");
}

static void read_state(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *m = conf_get(root, "state");
    const char *s;

    if (!m) {
        return;
    }
    if (!conf_check_keys(L->d, m, "\"state\"", state_keys) && m->type != CONF_MAP) {
        return;
    }
    if ((s = get_nonempty(L, m, "sqlite"))) {
        L->c->state_sqlite = resolve(L, s);
    }
    if ((s = get_nonempty(L, m, "postgres"))) {
        L->c->state_postgres = xstrdup(s); /* parsed and checked by authn (spg_conf_parse) */
    }
}

/* ---- devices ---- */

static void read_devices(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *dv = conf_get(root, "devices");
    L->c->devices_cache_ttl_ms = 30000;
    if (!dv || dv->type == CONF_NULL) {
        return;
    }
    if (!conf_check_keys(L->d, dv, "\"devices\"", devices_keys) && dv->type != CONF_MAP) {
        return;
    }
    conf_duration_ms(L->d, dv, "cache_ttl", 100, 300000, &L->c->devices_cache_ttl_ms);
    /* enroll_ca: {cert, key}: the CA `gatehouse devices enroll --csr` signs with. */
    const struct conf_node *ca = conf_get(dv, "enroll_ca");
    if (ca && ca->type != CONF_NULL) {
        if (!conf_check_keys(L->d, ca, "\"enroll_ca\"", cert_keys) && ca->type != CONF_MAP) {
            return;
        }
        const char *cert = get_nonempty(L, ca, "cert"), *key = get_nonempty(L, ca, "key");
        if (!cert || !key) {
            conf_error(L->d, ca, "\"enroll_ca\" needs \"cert\" and \"key\"");
            return;
        }
        struct tls_cert_conf tc = { resolve(L, cert), resolve(L, key) };
        L->c->devices_ca_cert = tc.cert_file;
        L->c->devices_ca_key = tc.key_file;
        check_cert_pair(L, ca, &tc);
    }
}

/* ---- routes ---- */

static bool valid_route_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_ROUTE_NAME) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.')) {
            return false;
        }
    }
    return true;
}

/* DNS name (letters, digits, '-', '.'; labels 1-63) or an IPv4 literal. */
static bool valid_hostname(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.') {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-')) {
            return false;
        }
        if (++label > 63) {
            return false;
        }
    }
    return true;
}

static bool valid_match_host(const char *s)
{
    unsigned char buf[16];
    size_t n = strlen(s);

    if (n > 2 && s[0] == '[' && s[n - 1] == ']') {
        char tmp[64];
        if (n - 2 >= sizeof tmp) {
            return false;
        }
        memcpy(tmp, s + 1, n - 2);
        tmp[n - 2] = '\0';
        return inet_pton(AF_INET6, tmp, buf) == 1;
    }
    if (s[0] == '*' && s[1] == '.') {
        return valid_hostname(s + 2);
    }
    return valid_hostname(s);
}

static bool valid_path_prefix(const char *s)
{
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '?' || *p == '#') {
            return false;
        }
    }
    return s[0] == '/';
}

/* A health-check target: a path, optionally with a query, that can go on a
 * request line as is. */
static bool valid_request_target(const char *s)
{
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '#') {
            return false;
        }
    }
    return s[0] == '/';
}

/* A prefix the normalised request path can start with: its own normal form
 * (a prefix "/a/../b" or "/%61" would never match). */
static bool normal_path_prefix(const char *s)
{
    size_t len = strlen(s), n = 0;
    char *out = xmalloc(len + 1);
    bool ok = normpath(s, len, out, NORMPATH_KEEP_ENCODED_SLASH, &n, NULL) == NORMPATH_OK &&
              n == len && memcmp(out, s, len) == 0;
    free(out);
    return ok;
}

static char *lower_dup(const char *s)
{
    char *r = xstrdup(s);
    for (char *p = r; *p; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char)(*p - 'A' + 'a');
        }
    }
    return r;
}

static void read_match(struct loader *L, const struct conf_node *m, struct route_conf *r)
{
    const char *host = NULL, *prefix = NULL;

    if (!conf_check_keys(L->d, m, "\"match\"", match_keys) && m->type != CONF_MAP) {
        return;
    }
    if (conf_string(L->d, m, "host", &host) && host) {
        if (!valid_match_host(host)) {
            conf_error(L->d, conf_get(m, "host"),
                       "\"host\" must be a host name such as app.example.com or *.example.com "
                       "(no port), got \"%s\"",
                       host);
        } else if (host[0] == '*') {
            r->host = lower_dup(host + 1);
            r->host_wildcard = true;
        } else {
            r->host = lower_dup(host);
        }
    }
    if (conf_string(L->d, m, "path_prefix", &prefix) && prefix) {
        if (!valid_path_prefix(prefix)) {
            conf_error(L->d, conf_get(m, "path_prefix"),
                       "\"path_prefix\" must start with \"/\" and hold no spaces, \"?\" or \"#\", "
                       "got \"%s\"",
                       prefix);
        } else if (!normal_path_prefix(prefix)) {
            conf_error(L->d, conf_get(m, "path_prefix"),
                       "\"path_prefix\" must be a normalised path (no \".\" or \"..\" "
                       "segments, no \"//\", no %%-escape of a letter, digit or \"-._~\", "
                       "escapes in upper case), got \"%s\"",
                       prefix);
        } else {
            free(r->path_prefix);
            r->path_prefix = xstrdup(prefix);
        }
    }
    conf_bool(L->d, m, "path_case_insensitive", &r->path_case_insensitive);
    if (r->path_case_insensitive && r->path_prefix) {
        normpath_fold_case(r->path_prefix, strlen(r->path_prefix));
    }
}

/* Parses an upstream URL: http(s)://host[:port][/]. Returns NULL or a reason. */
static const char *parse_upstream_url(const char *url, struct upstream_server *s)
{
    const char *p, *hstart, *hend, *end;
    unsigned char buf[16];
    uint64_t port;
    size_t hlen;

    if (strncmp(url, "http://", 7) == 0) {
        s->tls = false;
        p = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        s->tls = true;
        p = url + 8;
    } else {
        return "must start with http:// or https://";
    }
    end = p + strlen(p);
    if (end > p && end[-1] == '/') {
        end--;
    }
    if (memchr(p, '/', (size_t)(end - p)) || memchr(p, '?', (size_t)(end - p)) ||
        memchr(p, '#', (size_t)(end - p)) || memchr(p, '@', (size_t)(end - p))) {
        return "must not have a path, query or user info (only scheme, host and port)";
    }
    hstart = p;
    if (*p == '[') {
        hend = memchr(p, ']', (size_t)(end - p));
        if (!hend) {
            return "has an unterminated IPv6 address";
        }
        hstart = p + 1;
        p = hend + 1;
    } else {
        hend = memchr(p, ':', (size_t)(end - p));
        if (!hend) {
            hend = end;
        }
        p = hend;
    }
    hlen = (size_t)(hend - hstart);
    if (hlen == 0) {
        return "has no host";
    }
    if (hlen >= sizeof s->host) {
        return "has a host name that is too long";
    }
    memcpy(s->host, hstart, hlen);
    s->host[hlen] = '\0';
    if (hstart != url && hstart[-1] == '[') {
        if (inet_pton(AF_INET6, s->host, buf) != 1) {
            return "has an invalid IPv6 address";
        }
    } else if (!valid_hostname(s->host)) {
        return "has an invalid host name";
    }
    if (p == end) {
        s->port = s->tls ? 443 : 80;
        return NULL;
    }
    if (*p != ':' || !str_to_u64((struct str){ p + 1, (size_t)(end - p - 1) }, 1, 65535, &port)) {
        return "has an invalid port (expected 1 to 65535)";
    }
    s->port = (uint16_t)port;
    return NULL;
}

static void read_upstream(struct loader *L, const struct conf_node *m, struct route_conf *r,
                          const struct conf_node *route_node)
{
    struct upstream_conf *u = &r->upstream;
    const struct conf_node *servers, *hc;
    const char *s;
    uint64_t v;
    int b;

    if (!conf_check_keys(L->d, m, "\"upstream\"", upstream_keys) && m->type != CONF_MAP) {
        return;
    }
    servers = conf_get(m, "servers");
    if (!servers || (servers->type == CONF_SEQ && servers->n == 0)) {
        conf_error(L->d, servers ? servers : m, "route \"%s\" has no upstream servers",
                   r->name ? r->name : "?");
    } else if (servers->type == CONF_SCALAR) {
        /* A single server written without brackets is a common slip; accept it. */
        u->servers = xcalloc(1, sizeof *u->servers);
        const char *why = parse_upstream_url(servers->value, &u->servers[0]);
        if (why) {
            conf_error(L->d, servers, "upstream server \"%s\" %s", servers->value, why);
            free(u->servers);
            u->servers = NULL;
        } else {
            u->servers[0].url = xstrdup(servers->value);
            u->servers[0].weight = 1;
            u->nservers = 1;
        }
    } else if (conf_seq(L->d, servers, "\"servers\"")) {
        if (servers->n > UPSTREAM_MAX_SERVERS) {
            conf_error(L->d, servers, "route \"%s\" has %zu upstream servers, at most %d are "
                       "supported", r->name ? r->name : "?", servers->n, UPSTREAM_MAX_SERVERS);
        } else {
            u->servers = xcalloc(servers->n, sizeof *u->servers);
            for (size_t i = 0; i < servers->n; i++) {
                const struct conf_node *sn = servers->items[i];
                struct upstream_server *us = &u->servers[u->nservers];
                const char *why;
                if (sn->type != CONF_SCALAR) {
                    conf_error(L->d, sn, "an upstream server must be a URL such as "
                               "http://127.0.0.1:9001, got %s",
                               sn->type == CONF_MAP ? "a map" : sn->type == CONF_SEQ ? "a list"
                                                                                    : "nothing");
                    continue;
                }
                why = parse_upstream_url(sn->value, us);
                if (why) {
                    conf_error(L->d, sn, "upstream server \"%s\" %s", sn->value, why);
                    continue;
                }
                for (size_t j = 0; j < u->nservers; j++) {
                    if (u->servers[j].tls == us->tls && u->servers[j].port == us->port &&
                        strcasecmp(u->servers[j].host, us->host) == 0) {
                        conf_error(L->d, sn, "upstream server \"%s\" is listed twice in route "
                                   "\"%s\"", sn->value, r->name ? r->name : "?");
                        why = "dup";
                        break;
                    }
                }
                if (why) {
                    continue;
                }
                us->url = xstrdup(sn->value);
                us->weight = 1;
                u->nservers++;
            }
        }
    }
    (void)route_node;
    b = get_enum(L, m, "balance", balance_names);
    if (b >= 0) {
        u->balance = (enum balance)b;
    }
    if ((s = get_nonempty(L, m, "ca_file"))) {
        u->ca_file = resolve(L, s);
        check_ca_file(L, m, "ca_file", u->ca_file);
    }
    conf_bool(L->d, m, "tls_verify", &u->tls_verify);
    read_upstream_tls(L, m, u);
    v = u->max_idle;
    if (conf_u64(L->d, m, "max_idle", 0, 100000, &v)) {
        u->max_idle = (uint32_t)v;
    }
    v = u->max_conns;
    if (conf_u64(L->d, m, "max_conns", 0, 1000000, &v)) {
        u->max_conns = (uint32_t)v;
    }
    v = u->max_fails;
    if (conf_u64(L->d, m, "max_fails", 0, 1000, &v)) {
        u->max_fails = (uint32_t)v;
    }
    conf_duration_ms(L->d, m, "fail_timeout", 0, 3600000, &u->fail_timeout_ms);
    v = u->retries;
    if (conf_u64(L->d, m, "retries", 0, 10, &v)) {
        u->retries = (uint32_t)v;
    }
    hc = conf_get(m, "health_check");
    if (hc && (conf_check_keys(L->d, hc, "\"health_check\"", health_keys) ||
               hc->type == CONF_MAP)) {
        const char *path = NULL;
        if (conf_string(L->d, hc, "path", &path)) {
            if (!path) {
                conf_error(L->d, hc, "\"health_check\" needs \"path\", such as /healthz");
            } else if (!valid_request_target(path)) {
                conf_error(L->d, conf_get(hc, "path"),
                           "\"path\" must start with \"/\" and hold no spaces or control "
                           "characters, got \"%s\"",
                           path);
            } else {
                u->health_path = xstrdup(path);
            }
        }
        conf_duration_ms(L->d, hc, "interval", 100, 3600000, &u->health_interval_ms);
    }
}

static void read_route_idps(struct loader *L, const struct conf_node *n, struct route_conf *r,
                            const struct conf_node *root)
{
    const struct conf_node *defined = conf_get(root, "identity_providers");

    if (!conf_seq(L->d, n, "\"identity_providers\"")) {
        return;
    }
    r->idps = xcalloc(n->n ? n->n : 1, sizeof *r->idps);
    for (size_t i = 0; i < n->n; i++) {
        const struct conf_node *e = n->items[i];
        bool found = false;
        if (e->type != CONF_SCALAR) {
            conf_error(L->d, e, "an \"identity_providers\" item must be an identity provider id");
            continue;
        }
        /* Only ids are cross-checked here; the providers themselves are the
         * authn module's to validate. */
        if (defined && defined->type == CONF_SEQ) {
            for (size_t j = 0; j < defined->n && !found; j++) {
                const struct conf_node *id = conf_get(defined->items[j], "id");
                found = id && id->type == CONF_SCALAR && strcmp(id->value, e->value) == 0;
            }
        }
        if (!found) {
            conf_error(L->d, e, "route \"%s\" uses identity provider \"%s\", which is not defined",
                       r->name ? r->name : "?", e->value);
            continue;
        }
        r->idps[r->nidps++] = xstrdup(e->value);
    }
}

static void read_route(struct loader *L, const struct conf_node *m, const struct conf_node *root)
{
    struct config *c = L->c;
    struct route_conf *r = &c->routes[c->nroutes];
    const struct conf_node *n;
    const char *name = NULL, *policy;

    if (!conf_check_keys(L->d, m, "a route", route_keys) && m->type != CONF_MAP) {
        return;
    }
    r->index = c->nroutes++;
    r->line = m->line;
    r->col = m->col;
    r->path_prefix = xstrdup("/");
    r->upstream.tls_verify = true;
    r->upstream.max_idle = 64;
    r->upstream.max_fails = 3;
    r->upstream.fail_timeout_ms = 10000;
    r->upstream.health_interval_ms = 5000;
    r->upstream.retries = 1;

    if (conf_string(L->d, m, "name", &name)) {
        n = conf_get(m, "name");
        if (!name) {
            conf_error(L->d, m, "route is missing \"name\"");
        } else if (!valid_route_name(name)) {
            conf_error(L->d, n,
                       "route \"name\" must be 1 to %d letters, digits, '.', '_' or '-', got "
                       "\"%s\"",
                       MAX_ROUTE_NAME, name);
        } else {
            size_t first;
            r->name = xstrdup(name);
            if (!first_seen_add(&L->route_names, name, r->index, &first)) {
                conf_error(L->d, n, "duplicate route name \"%s\" (first at line %d)", name,
                           c->routes[first].line);
            }
        }
    }
    if ((n = conf_get(m, "match")) && n->type != CONF_NULL) {
        read_match(L, n, r);
    }
    n = conf_get(m, "upstream");
    if (!n || n->type == CONF_NULL) {
        conf_error(L->d, m, "route \"%s\" has no upstream servers", r->name ? r->name : "?");
    } else {
        read_upstream(L, n, r, m);
    }
    conf_bool(L->d, m, "websocket", &r->websocket);
    r->encoded_slashes_pass = get_enum(L, m, "encoded_slashes", encoded_slashes_names) == 1;
    conf_bool(L->d, m, "public", &r->public_);
    conf_bool(L->d, m, "allow_any_authenticated", &r->allow_any_authenticated);
    if ((n = conf_get(m, "headers")) && n->type != CONF_NULL &&
        (conf_check_keys(L->d, n, "\"headers\"", route_header_keys) || n->type == CONF_MAP)) {
        conf_bool(L->d, n, "allow_underscores", &r->allow_underscores);
        conf_bool(L->d, n, "allow_override_headers", &r->allow_override_headers);
    }
    if ((policy = get_nonempty(L, m, "policy"))) {
        r->policy_file = resolve(L, policy);
        check_readable(L, conf_get(m, "policy"), "policy", policy, r->policy_file);
    }
    if ((n = conf_get(m, "identity_providers"))) {
        read_route_idps(L, n, r, root);
    }
    r->public_url = read_public_url(L, m);
}

static void read_routes(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *rs = conf_get(root, "routes");
    struct config *c = L->c;

    if (!rs) {
        conf_error(L->d, root, "missing \"routes\": at least one route is required");
        return;
    }
    if (!conf_seq(L->d, rs, "\"routes\"")) {
        return;
    }
    if (rs->n == 0) {
        conf_error(L->d, rs, "\"routes\" is empty: at least one route is required");
        return;
    }
    c->routes = xcalloc(rs->n, sizeof *c->routes);
    for (size_t i = 0; i < rs->n; i++) {
        read_route(L, rs->items[i], root);
    }
    /* Two routes on the same host and prefix: the second could never match. */
    struct first_seen seen = { 0 };
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_conf *r = &c->routes[i];
        size_t first;
        /* Host names hold no '|' (validated), so the key is unambiguous. */
        char *key = xasprintf("%c|%s|%s", r->host_wildcard ? 'w' : r->host ? 'h' : '-',
                              r->host ? r->host : "", r->path_prefix ? r->path_prefix : "/");
        if (!first_seen_add(&seen, key, i, &first)) {
            const struct route_conf *o = &c->routes[first];
            /* Same name too: already reported as a duplicate name. */
            if (!(r->name && o->name && strcmp(r->name, o->name) == 0)) {
                /* Point at the route itself; items and routes differ when an item
                 * was not a map. */
                struct conf_node pos = { .file = rs->file, .line = r->line, .col = r->col };
                conf_error(L->d, &pos,
                           "route \"%s\" has the same host and path_prefix as route \"%s\" "
                           "(line %d)",
                           r->name ? r->name : "?", o->name ? o->name : "?", o->line);
            }
        }
        free(key);
    }
    first_seen_fini(&seen);
}

/* ---- snapshot lifetime ---- */

static void free_listener(struct listener_conf *l)
{
    free(l->address);
    for (size_t i = 0; i < l->ncerts; i++) {
        free(l->certs[i].cert_file);
        free(l->certs[i].key_file);
    }
    free(l->certs);
    free(l->client_ca);
    free(l->client_crl);
    for (size_t k = 0; k < l->nsan_patterns; k++) {
        free(l->san_patterns[k]);
    }
    free(l->san_patterns);
    free(l->public_url);
}

static void free_route(struct route_conf *r)
{
    free(r->name);
    free(r->host);
    free(r->path_prefix);
    free(r->public_url);
    for (size_t i = 0; i < r->upstream.nservers; i++) {
        free(r->upstream.servers[i].url);
    }
    free(r->upstream.servers);
    free(r->upstream.ca_file);
    free(r->upstream.client_cert);
    free(r->upstream.client_key);
    free(r->upstream.server_name);
    free(r->upstream.health_path);
    free(r->policy_file);
    for (size_t i = 0; i < r->nidps; i++) {
        free(r->idps[i]);
    }
    free(r->idps);
}

static void config_free(struct config *c)
{
    if (!c) {
        return;
    }
    /* The table borrows route strings: it goes first. */
    if (c->route_table_free) {
        c->route_table_free(c->route_table);
    }
    if (c->authn_free) {
        c->authn_free(c->authn);
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
        free_listener(&c->listeners[i]);
    }
    free(c->listeners);
    for (size_t i = 0; i < c->nroutes; i++) {
        free_route(&c->routes[i]);
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
        config_free(c);
        return NULL;
    }
    if (!conf_check_keys(d, root, "the configuration", top_keys) && root->type != CONF_MAP) {
        config_free(c);
        return NULL;
    }
    read_listen(&L, root);
    read_admin(&L, root);
    read_workers(&L, root);
    read_limits(&L, root);
    read_timeouts(&L, root);
    read_logging(&L, root);
    read_state(&L, root);
    read_routes(&L, root);
    read_devices(&L, root);
    first_seen_fini(&L.route_names);
    if (d->count != before) {
        config_free(c);
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

struct config *config_ref(struct config *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void config_unref(struct config *c)
{
    if (!c) {
        return;
    }
    /* acq_rel: the last owner must see every other owner's reads finished. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        config_free(c);
    }
}
