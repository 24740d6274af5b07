/* proxy/tls.c - OpenSSL 3 contexts. Server side, per listener: one SSL_CTX per
 * certificate (the first is the default), SNI switches to the certificate
 * whose subjectAltName matches, TLS 1.2/1.3 only, ALPN http/1.1, session
 * cache + tickets with a fixed session id context, optional or required
 * client certificates checked against client_ca (and client_crl). Client
 * side, per worker and CA file: verified https upstreams. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "io.h"

#define SID_CTX "gatehouse"

struct tls_vhosts {
    SSL_CTX **ctx; /* [0] is the default */
    size_t n;
};

static int g_vh_index = -1;

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

/* Optional client certificates: a certificate that does not verify must not
 * fail the handshake (the request continues as "no device"), so accept here
 * and let the request see peer_cert only when SSL_get_verify_result is OK. */
static int verify_optional(int ok, X509_STORE_CTX *x)
{
    (void)ok;
    (void)x;
    return 1;
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
        }
        if (lc->client_cert == TLS_CLIENT_CERT_REQUIRED) {
            SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
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
        g_vh_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
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
    struct tls_vhosts *vh;

    if (!ctx) {
        return;
    }
    vh = SSL_CTX_get_ex_data(ctx, g_vh_index);
    if (!vh) {
        SSL_CTX_free(ctx);
        return;
    }
    for (size_t i = 0; i < vh->n; i++) {
        SSL_CTX_free(vh->ctx[i]);
    }
    free(vh->ctx);
    free(vh);
}

SSL_CTX *tls_client_ctx(struct worker *w, const char *ca_file, struct err *err)
{
    for (struct upctx *u = w->up_ctxs; u; u = u->next) {
        if ((u->ca == NULL && ca_file == NULL) || (u->ca && ca_file && !strcmp(u->ca, ca_file))) {
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
    struct upctx *u = xcalloc(1, sizeof *u);
    u->ca = ca_file ? xstrdup(ca_file) : NULL;
    u->ctx = c;
    u->next = w->up_ctxs;
    w->up_ctxs = u;
    return c;
}
