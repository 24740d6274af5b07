/* proxy/tls.c - OpenSSL 3 contexts. Server side, per listener: one SSL_CTX per
 * certificate (the first is the default), SNI switches to the certificate
 * whose subjectAltName matches, TLS 1.2/1.3 only, ALPN http/1.1, session
 * cache + tickets with a fixed session id context, optional or required
 * client certificates checked against client_ca (and client_crl). The main
 * thread rebuilds a listener's contexts when the content of any of its files
 * (certificates, keys, client CA, CRL) changes, on SIGHUP and by polling, and
 * swaps them in for new handshakes; a set that does not load keeps the old.
 * Client side, per worker and CA file: verified https upstreams. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "../authn/device.h"
#include "../core/digest.h"
#include "io.h"

#define SID_CTX "gatehouse"

struct tls_vhosts {
    SSL_CTX **ctx; /* [0] is the default */
    size_t n;
};

static int g_vh_index = -1;
static int g_san_index = -1;

/* tls.match_subject_alt_names, owned by each context that checks them. */
struct san_set {
    char **p;
    size_t n;
};

static void san_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct san_set *set = ptr;
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (set) {
        for (size_t i = 0; i < set->n; i++) {
            free(set->p[i]);
        }
        free(set->p);
        free(set);
    }
}

/* The SNI contexts live as long as the default one: an SSL holds a reference to
 * the context it was made from (its session context) until it is freed, so a
 * handshake that switches by SNI after a reload still finds them. */
static void vh_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct tls_vhosts *vh = ptr;
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (!vh) {
        return;
    }
    for (size_t i = 1; i < vh->n; i++) {
        SSL_CTX_free(vh->ctx[i]);
    }
    free(vh->ctx);
    free(vh);
}

static void last_error(struct err *err, const char *what, const char *file)
{
    char buf[200] = "";
    unsigned long e = ERR_get_error();
    if (e) {
        ERR_error_string_n(e, buf, sizeof buf);
    }
    err_set(err, ERR_CONFIG, "%s %s: %s", what, file ? file : "", buf[0] ? buf : "failed");
    ERR_clear_error();
}

static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    unsigned char *o = NULL;

    (void)s;
    (void)arg;
    /* Only http/1.1: advertising h2 without an h2 stack would break clients. */
    if (SSL_select_next_proto(&o, outlen, ours, sizeof ours - 1, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = o;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Whether the leaf certificate of ctx covers name (DNS SANs, "*." wildcards
 * for one label). */
static bool cert_matches(SSL_CTX *ctx, const char *name)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    return x && X509_check_host(x, name, 0, 0, NULL) == 1;
}

static int sni_cb(SSL *s, int *al, void *arg)
{
    struct tls_vhosts *vh = arg;
    const char *name = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);

    (void)al;
    if (!name || vh->n < 2) {
        return SSL_TLSEXT_ERR_OK;
    }
    for (size_t i = 0; i < vh->n; i++) {
        if (cert_matches(vh->ctx[i], name)) {
            if (i > 0) {
                SSL_set_SSL_CTX(s, vh->ctx[i]);
                /* The verify mode was copied at SSL_new and does not follow
                 * the context switch. */
                SSL_set_verify(s, SSL_CTX_get_verify_mode(vh->ctx[i]),
                               SSL_CTX_get_verify_callback(vh->ctx[i]));
            }
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* the default certificate */
}

/* The leaf's subjectAltNames against tls.match_subject_alt_names (any one
 * match passes); a miss is a verification error like any other. */
static int san_check(int ok, X509_STORE_CTX *x)
{
    if (!ok || X509_STORE_CTX_get_error_depth(x) != 0) {
        return ok;
    }
    SSL *s = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct san_set *set = s ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(s), g_san_index) : NULL;
    if (set && !device_san_matches(X509_STORE_CTX_get_current_cert(x), set->p, set->n)) {
        X509_STORE_CTX_set_error(x, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    return 1;
}

static int verify_required(int ok, X509_STORE_CTX *x)
{
    return san_check(ok, x);
}

/* Optional client certificates: a certificate that does not verify must not
 * fail the handshake (the request continues as "no device"), so accept here
 * and let the request see peer_cert only when SSL_get_verify_result is OK (a
 * subjectAltName miss leaves its error there too). */
static int verify_optional(int ok, X509_STORE_CTX *x)
{
    (void)san_check(ok, x);
    return 1;
}

/* An expired CRL makes every client certificate fail (required: the handshake
 * is refused; optional: no device): say so clearly, once per load. */
static void crl_expiry_note(X509_STORE *st, const struct listener_conf *lc)
{
    STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(st);
    for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
        X509_CRL *crl = X509_OBJECT_get0_X509_CRL(sk_X509_OBJECT_value(objs, i));
        const ASN1_TIME *next = crl ? X509_CRL_get0_nextUpdate(crl) : NULL;
        if (next && X509_cmp_current_time(next) < 0) {
            log_error("tls",
                      "listener %s: client CRL %s has expired (nextUpdate passed): "
                      "client certificates are refused until a fresh CRL is installed",
                      lc->address, lc->client_crl);
        }
    }
}

static SSL_CTX *one_ctx(const struct listener_conf *lc, const struct tls_cert_conf *cc,
                        struct err *err)
{
    SSL_CTX *c = SSL_CTX_new_ex(NULL, NULL, TLS_server_method());

    if (!c) {
        last_error(err, "cannot create TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(c, cc->cert_file) != 1) {
        last_error(err, "cannot load certificate", cc->cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c, cc->key_file, SSL_FILETYPE_PEM) != 1) {
        last_error(err, "cannot load key", cc->key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        last_error(err, "key does not match certificate", cc->cert_file);
        goto fail;
    }
    /* Read whole socket buffers instead of header-then-body per record: half
     * the recv calls. Bytes held inside OpenSSL are seen via SSL_has_pending. */
    SSL_CTX_set_read_ahead(c, 1);
    SSL_CTX_set_session_id_context(c, (const unsigned char *)SID_CTX, sizeof SID_CTX - 1);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_timeout(c, 300);
    SSL_CTX_set_num_tickets(c, 1);
    SSL_CTX_set_alpn_select_cb(c, alpn_cb, NULL);
    if (lc->client_cert != TLS_CLIENT_CERT_NONE && lc->client_ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(lc->client_ca);
        if (SSL_CTX_load_verify_locations(c, lc->client_ca, NULL) != 1 || !names) {
            last_error(err, "cannot load client CA", lc->client_ca);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(c, names);
        if (lc->client_crl) {
            X509_STORE *st = SSL_CTX_get_cert_store(c);
            X509_LOOKUP *lk = X509_STORE_add_lookup(st, X509_LOOKUP_file());
            if (!lk || X509_load_crl_file(lk, lc->client_crl, X509_FILETYPE_PEM) <= 0) {
                last_error(err, "cannot load client CRL", lc->client_crl);
                goto fail;
            }
            X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
            crl_expiry_note(st, lc);
        }
        /* verify_depth 1 (the default, as Pomerium): only certificates issued by a
         * client_ca itself. OpenSSL counts the CAs between the leaf and the trust
         * anchor, hence - 1. The per-request device check uses the same depth. */
        SSL_CTX_set_verify_depth(c, (int)(lc->verify_depth ? lc->verify_depth : 1) - 1);
        if (lc->nsan_patterns) {
            struct san_set *set = xcalloc(1, sizeof *set);
            set->p = xcalloc(lc->nsan_patterns, sizeof *set->p);
            for (size_t i = 0; i < lc->nsan_patterns; i++) {
                set->p[i] = xstrdup(lc->san_patterns[i]);
            }
            set->n = lc->nsan_patterns;
            SSL_CTX_set_ex_data(c, g_san_index, set);
        }
        if (lc->client_cert == TLS_CLIENT_CERT_REQUIRED) {
            SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                               verify_required);
        } else {
            SSL_CTX_set_verify(c, SSL_VERIFY_PEER, verify_optional);
        }
    }
    return c;
fail:
    SSL_CTX_free(c);
    return NULL;
}

SSL_CTX *tls_server_ctx(const struct listener_conf *lc, struct err *err)
{
    struct tls_vhosts *vh;

    if (lc->ncerts == 0) {
        err_set(err, ERR_CONFIG, "listener %s: tls needs a certificate", lc->address);
        return NULL;
    }
    if (g_vh_index < 0) {
        g_vh_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, vh_free);
        g_san_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, san_free);
    }
    vh = xcalloc(1, sizeof *vh);
    vh->ctx = xcalloc(lc->ncerts, sizeof *vh->ctx);
    for (size_t i = 0; i < lc->ncerts; i++) {
        vh->ctx[i] = one_ctx(lc, &lc->certs[i], err);
        if (!vh->ctx[i]) {
            for (size_t k = 0; k < i; k++) {
                SSL_CTX_free(vh->ctx[k]);
            }
            free(vh->ctx);
            free(vh);
            return NULL;
        }
        vh->n++;
    }
    SSL_CTX_set_tlsext_servername_callback(vh->ctx[0], sni_cb);
    SSL_CTX_set_tlsext_servername_arg(vh->ctx[0], vh);
    SSL_CTX_set_ex_data(vh->ctx[0], g_vh_index, vh);
    return vh->ctx[0];
}

void tls_server_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx); /* the SNI contexts go with the last reference (vh_free) */
}

/* ---- per-listener contexts, reloaded when their files change ---- */

struct tls_cert_info {
    char sni[256]; /* first DNS subjectAltName, else the CN, else "" */
    int64_t not_after;
};

struct tls_slot {
    SSL_CTX *ctx;              /* one reference held here; NULL for plain */
    unsigned char digest[32];  /* of the file names and contents it was built from */
    unsigned char refused[32]; /* the last content that failed to load */
    uint64_t stamp;            /* files_stamp() when last looked at */
    bool has_refused;
    char address[128];
    struct tls_cert_info *certs;
    size_t ncerts;
};

static atomic_uint_fast64_t g_generation = 1; /* grows with every swap */

uint64_t tls_generation(void)
{
    return atomic_load(&g_generation);
}

static struct {
    pthread_mutex_t mu; /* slots[].ctx and .certs: swapped by the main thread */
    struct tls_slot *slots;
    size_t n;
} T = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* The files a listener's contexts are built from (NULL entries for absent
 * client_ca/client_crl). Caller frees the array. */
static const char **listener_files(const struct listener_conf *lc, size_t *n)
{
    const char **files = xcalloc(2 * lc->ncerts + 2, sizeof *files);
    size_t nf = 0;
    for (size_t i = 0; i < lc->ncerts; i++) {
        files[nf++] = lc->certs[i].cert_file;
        files[nf++] = lc->certs[i].key_file;
    }
    if (lc->client_cert != TLS_CLIENT_CERT_NONE) {
        files[nf++] = lc->client_ca;
        files[nf++] = lc->client_crl;
    }
    *n = nf;
    return files;
}

/* A cheap fingerprint from stat (inode, size, mtime, ctime; following symlinks, so
 * certbot's re-pointed live/ links count): the content is hashed only when it
 * moves. */
static uint64_t files_stamp(const struct listener_conf *lc)
{
    size_t nf;
    const char **files = listener_files(lc, &nf);
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < nf; i++) {
        struct stat st;
        uint64_t v[6] = { 0 };
        if (files[i] && stat(files[i], &st) == 0) {
            v[0] = (uint64_t)st.st_ino;
            v[1] = (uint64_t)st.st_size;
            v[2] = (uint64_t)st.st_mtim.tv_sec;
            v[3] = (uint64_t)st.st_mtim.tv_nsec;
            v[4] = (uint64_t)st.st_ctim.tv_sec;
            v[5] = (uint64_t)st.st_ctim.tv_nsec;
        }
        for (size_t k = 0; k < 6; k++) {
            h = (h ^ v[k]) * 1099511628211ULL;
        }
    }
    free(files);
    return h;
}

/* SHA-256 over every file a listener's contexts are built from, names included
 * (a changed client_ca path counts). A file that cannot be read hashes as such;
 * building then reports why. */
static void files_digest(const struct listener_conf *lc, unsigned char out[32])
{
    size_t nf;
    const char **files = listener_files(lc, &nf);
    unsigned char acc[32] = { 0 };
    for (size_t i = 0; i < nf; i++) {
        const char *f = files[i] ? files[i] : "";
        char *data = NULL;
        size_t len = 0;
        FILE *fp = files[i] ? fopen(f, "rb") : NULL;
        if (fp) {
            /* Certificates, keys and CRLs are small; 64 MiB bounds a mistake. */
            size_t cap = 0;
            for (;;) {
                if (len == cap) {
                    if (cap >= (size_t)64 << 20) {
                        break;
                    }
                    cap = cap ? cap * 2 : 8192;
                    data = xrealloc(data, cap);
                }
                size_t got = fread(data + len, 1, cap - len, fp);
                if (got == 0) {
                    break;
                }
                len += got;
            }
            fclose(fp);
        }
        const void *parts[4] = { acc, f, data ? (const void *)data : "", fp ? "1" : "0" };
        const size_t lens[4] = { sizeof acc, strlen(f) + 1, len, 1 };
        digest_sha256(parts, lens, 4, acc);
        free(data);
    }
    free(files);
    memcpy(out, acc, 32);
}

static void cert_describe(X509 *x, char *subject, size_t ssize, char *expiry, size_t esize,
                          struct tls_cert_info *info)
{
    subject[0] = expiry[0] = '\0';
    info->sni[0] = '\0';
    info->not_after = 0;
    if (!x) {
        return;
    }
    BIO *b = BIO_new(BIO_s_mem());
    if (b && X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0) {
        int n = BIO_read(b, subject, (int)ssize - 1);
        subject[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) {
        info->not_after = (int64_t)timegm(&tm);
        strftime(expiry, esize, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type == GEN_DNS) {
            const ASN1_STRING *a = g->d.dNSName;
            int n = ASN1_STRING_length(a);
            if (n > 0 && (size_t)n < sizeof info->sni &&
                memchr(ASN1_STRING_get0_data(a), '\0', (size_t)n) == NULL) {
                memcpy(info->sni, ASN1_STRING_get0_data(a), (size_t)n);
                info->sni[n] = '\0';
                break;
            }
        }
    }
    GENERAL_NAMES_free(names);
    if (!info->sni[0]) {
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, info->sni,
                                  (int)sizeof info->sni);
    }
}

/* Fills certs (ncerts of them) from ctx's default and SNI contexts and logs
 * each certificate's subject and expiry. */
static struct tls_cert_info *describe_all(SSL_CTX *ctx, const struct listener_conf *lc,
                                          size_t *ncerts, const char *verb)
{
    struct tls_vhosts *vh = SSL_CTX_get_ex_data(ctx, g_vh_index);
    size_t n = vh ? vh->n : 1;
    struct tls_cert_info *certs = xcalloc(n, sizeof *certs);
    for (size_t i = 0; i < n; i++) {
        char subject[512], expiry[32];
        SSL_CTX *c = vh ? vh->ctx[i] : ctx;
        cert_describe(SSL_CTX_get0_certificate(c), subject, sizeof subject, expiry, sizeof expiry,
                      &certs[i]);
        log_info("tls", "listener %s: certificate %s %s: subject \"%s\", expires %s", lc->address,
                 i < lc->ncerts ? lc->certs[i].cert_file : "", verb, subject, expiry);
    }
    *ncerts = n;
    return certs;
}

int tls_listeners_start(const struct config *cfg, struct err *err, size_t *bad)
{
    T.slots = xcalloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof *T.slots);
    T.n = cfg->nlisteners;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct listener_conf *lc = &cfg->listeners[i];
        struct tls_slot *sl = &T.slots[i];
        snprintf(sl->address, sizeof sl->address, "%s", lc->address);
        if (!lc->tls) {
            continue;
        }
        sl->stamp = files_stamp(lc);
        files_digest(lc, sl->digest);
        sl->ctx = tls_server_ctx(lc, err);
        if (!sl->ctx) {
            *bad = i;
            return -1;
        }
        sl->certs = describe_all(sl->ctx, lc, &sl->ncerts, "loaded");
    }
    return 0;
}

SSL_CTX *tls_listener_ctx(size_t index)
{
    SSL_CTX *ctx = NULL;
    pthread_mutex_lock(&T.mu);
    if (index < T.n && T.slots[index].ctx) {
        ctx = T.slots[index].ctx;
        SSL_CTX_up_ref(ctx);
    }
    pthread_mutex_unlock(&T.mu);
    return ctx;
}

void tls_listeners_check(const struct config *cfg, bool retry_refused)
{
    /* Two same-size writes within one timestamp tick leave stat unchanged: hash
     * the content anyway every fifteenth call (30 s when polled). */
    static unsigned calls;
    bool hash_anyway = retry_refused || ++calls % 15 == 0;
    for (size_t i = 0; i < cfg->nlisteners && i < T.n; i++) {
        const struct listener_conf *lc = &cfg->listeners[i];
        struct tls_slot *sl = &T.slots[i];
        unsigned char d[32];
        if (!lc->tls || !sl->ctx) {
            continue;
        }
        uint64_t stamp = files_stamp(lc);
        if (!hash_anyway && stamp == sl->stamp) {
            continue;
        }
        sl->stamp = stamp;
        files_digest(lc, d);
        if (memcmp(d, sl->digest, 32) == 0 ||
            (!retry_refused && sl->has_refused && memcmp(d, sl->refused, 32) == 0)) {
            continue;
        }
        struct err err = { 0 };
        SSL_CTX *next = tls_server_ctx(lc, &err);
        if (!next) {
            /* A renewal written in place or a key renamed before its certificate is
             * seen half-done: the next change (or SIGHUP) tries again. */
            log_error("tls",
                      "%s:%d:%d: error: listener %s: %s; still serving the previous "
                      "certificate",
                      cfg->file, lc->line, lc->col, lc->address, err.msg);
            memcpy(sl->refused, d, 32);
            sl->has_refused = true;
            continue;
        }
        size_t ncerts = 0;
        struct tls_cert_info *certs = describe_all(next, lc, &ncerts, "reloaded");
        pthread_mutex_lock(&T.mu);
        SSL_CTX *old = sl->ctx;
        struct tls_cert_info *old_certs = sl->certs;
        sl->ctx = next;
        sl->certs = certs;
        sl->ncerts = ncerts;
        atomic_fetch_add(&g_generation, 1); /* device checks re-verify with the new store */
        pthread_mutex_unlock(&T.mu);
        memcpy(sl->digest, d, 32);
        sl->has_refused = false;
        /* Connections made from the old context keep it (and its SNI contexts)
         * until they close. */
        SSL_CTX_free(old);
        free(old_certs);
    }
}

/* Label value escaping per the exposition format: \\, \" and \n. */
static void label_esc(const char *s, char *buf, size_t cap)
{
    size_t j = 0;
    for (; *s && j + 3 < cap; s++) {
        if (*s == '\\' || *s == '"' || *s == '\n') {
            buf[j++] = '\\';
            buf[j++] = *s == '\n' ? 'n' : *s;
        } else {
            buf[j++] = *s;
        }
    }
    buf[j] = '\0';
}

size_t tls_expiry_render(char *buf, size_t size)
{
    size_t off = 0;
    int64_t now = (int64_t)time(NULL);
    int n = snprintf(buf, size,
                     "# HELP gatehouse_tls_certificate_expiry_seconds Seconds until the "
                     "served certificate's notAfter, by listener and SNI name.\n"
                     "# TYPE gatehouse_tls_certificate_expiry_seconds gauge\n");
    off += n > 0 ? (size_t)n : 0;
    pthread_mutex_lock(&T.mu);
    for (size_t i = 0; i < T.n; i++) {
        const struct tls_slot *sl = &T.slots[i];
        for (size_t k = 0; sl->ctx && k < sl->ncerts; k++) {
            char l1[3 * 128 + 1], l2[3 * 256 + 1];
            label_esc(sl->address, l1, sizeof l1);
            label_esc(sl->certs[k].sni, l2, sizeof l2);
            n = snprintf(off < size ? buf + off : NULL, off < size ? size - off : 0,
                         "gatehouse_tls_certificate_expiry_seconds{listener=\"%s\",sni=\"%s\"} "
                         "%lld\n",
                         l1, l2, (long long)(sl->certs[k].not_after - now));
            off += n > 0 ? (size_t)n : 0;
        }
    }
    pthread_mutex_unlock(&T.mu);
    return off;
}

static bool same_path(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

SSL_CTX *tls_client_ctx(struct worker *w, const char *ca_file, const char *cert_file,
                        const char *key_file, struct err *err)
{
    for (struct upctx *u = w->up_ctxs; u; u = u->next) {
        if (same_path(u->ca, ca_file) && same_path(u->cert, cert_file) &&
            same_path(u->key, key_file)) {
            return u->ctx;
        }
    }
    SSL_CTX *c = SSL_CTX_new_ex(NULL, NULL, TLS_client_method());
    if (!c) {
        last_error(err, "cannot create TLS client context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_alpn_protos(c, (const unsigned char *)"\x08http/1.1", 9);
    SSL_CTX_set_read_ahead(c, 1);
    if (ca_file ? SSL_CTX_load_verify_locations(c, ca_file, NULL) != 1
                : SSL_CTX_set_default_verify_paths(c) != 1) {
        last_error(err, "cannot load CA bundle", ca_file ? ca_file : "(system)");
        SSL_CTX_free(c);
        return NULL;
    }
    /* upstream.tls.cert/key: Gatehouse's own client certificate (mTLS). */
    if (cert_file && (SSL_CTX_use_certificate_chain_file(c, cert_file) != 1 ||
                      SSL_CTX_use_PrivateKey_file(c, key_file, SSL_FILETYPE_PEM) != 1 ||
                      SSL_CTX_check_private_key(c) != 1)) {
        last_error(err, "cannot load upstream client certificate", cert_file);
        SSL_CTX_free(c);
        return NULL;
    }
    struct upctx *u = xcalloc(1, sizeof *u);
    u->ca = ca_file ? xstrdup(ca_file) : NULL;
    u->cert = cert_file ? xstrdup(cert_file) : NULL;
    u->key = key_file ? xstrdup(key_file) : NULL;
    u->ctx = c;
    u->next = w->up_ctxs;
    w->up_ctxs = u;
    return c;
}

X509_STORE *request_client_ca_get(void *arg, void **hold)
{
    SSL_CTX *ctx = tls_listener_ctx((size_t)(uintptr_t)arg);
    *hold = ctx;
    return ctx ? SSL_CTX_get_cert_store(ctx) : NULL;
}

void request_client_ca_put(void *hold)
{
    SSL_CTX_free(hold);
}
