/* proxy/config_common.c - what the section readers share: a linear first-seen
 * map for duplicate checks, paths relative to the config file, the checks of
 * the files a config names (readable, PEM, a key that matches its certificate,
 * CA bundles, CRLs), host names and public_url. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_int.h"

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
bool cfg_first_seen_add(struct first_seen *t, const char *key, size_t val, size_t *first)
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

void cfg_first_seen_fini(struct first_seen *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        free(t->keys[i]);
    }
    free(t->keys);
    free(t->vals);
    *t = (struct first_seen){ 0 };
}

const struct conf_node *cfg_required_list(struct loader *L, const struct conf_node *root,
                                          const char *key, const char *need)
{
    const struct conf_node *n = conf_get(root, key);
    char what[48];

    if (!n) {
        conf_error(L->d, root, "missing \"%s\": %s", key, need);
        return NULL;
    }
    snprintf(what, sizeof what, "\"%s\"", key);
    if (!conf_seq(L->d, n, what)) {
        return NULL;
    }
    if (n->n == 0) {
        conf_error(L->d, n, "\"%s\" is empty: %s", key, need);
        return NULL;
    }
    return n;
}

char *cfg_resolve(struct loader *L, const char *path)
{
    return conf_path_resolve(L->file, path);
}

/* DNS name (letters, digits, '-', '.'; labels 1-63) or an IPv4 literal. */
bool cfg_valid_hostname(const char *s)
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
bool cfg_check_readable(struct loader *L, const struct conf_node *n, const char *key,
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

/* The first PEM certificate (key false) or private key (key true) of path, or NULL. */
static void *read_pem(const char *path, bool key)
{
    FILE *f = fopen(path, "r");
    void *v;
    if (!f) {
        return NULL;
    }
    v = key ? (void *)PEM_read_PrivateKey(f, NULL, no_password, NULL)
            : (void *)PEM_read_X509(f, NULL, no_password, NULL);
    fclose(f);
    ERR_clear_error();
    return v;
}

static X509 *read_cert(const char *path)
{
    return read_pem(path, false);
}

static EVP_PKEY *read_key(const char *path)
{
    return read_pem(path, true);
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

bool cfg_check_ca_file(struct loader *L, const struct conf_node *m, const char *key,
                       const char *path)
{
    const struct conf_node *n = conf_get(m, key);
    if (!cfg_check_readable(L, n, key, n->value, path)) {
        return false;
    }
    if (count_certs(path) == 0) {
        conf_error(L->d, n, "\"%s\" file \"%s\" holds no PEM certificate", key, n->value);
        return false;
    }
    return true;
}

bool cfg_check_crl_file(struct loader *L, const struct conf_node *m, const char *path)
{
    const struct conf_node *n = conf_get(m, "client_crl");
    FILE *f;
    X509_CRL *crl;

    if (!cfg_check_readable(L, n, "client_crl", n->value, path)) {
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
bool cfg_check_cert_pair(struct loader *L, const struct conf_node *m,
                         const struct tls_cert_conf *tc)
{
    const struct conf_node *cn = conf_get(m, "cert"), *kn = conf_get(m, "key");
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    bool ok = true;

    if (!cfg_check_readable(L, cn, "cert", cn->value, tc->cert_file)) {
        ok = false;
    } else if (!(x = read_cert(tc->cert_file))) {
        conf_error(L->d, cn, "\"cert\" file \"%s\" holds no PEM certificate", cn->value);
        ok = false;
    }
    if (!cfg_check_readable(L, kn, "key", kn->value, tc->key_file)) {
        ok = false;
    } else if (!(k = read_key(tc->key_file))) {
        conf_error(L->d, kn, "\"key\" file \"%s\" holds no unencrypted PEM private key", kn->value);
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

/* ---- public_url ---- */

/* "public_url: https://app.example.com[:port]": the origin browsers use, for
 * the sign-in redirect URI and the post-logout return. Scheme and authority
 * only (one trailing '/' is dropped); the host is kept lowercase. */
char *cfg_read_public_url(struct loader *L, const struct conf_node *m)
{
    const char *v = conf_nonempty(L->d, m, "public_url");
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
        ok = host[0] == '[' ? close != NULL : cfg_valid_hostname(host);
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
