/* authn/saml.c - SAML 2.0 service provider steps on lasso (see saml.h): lasso
 * and libxml2 set up once and quietly, the XML helpers, the identity
 * providers' configuration and metadata (read, built, fetched and installed),
 * and the AuthnRequest that starts a sign-in. The ACS is in saml_acs.c, single
 * logout in saml_logout.c (saml_int.h is what the three share). */
#include "saml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "saml_int.h"

#define NS_MD    "urn:oasis:names:tc:SAML:2.0:metadata"
#define FILE_MAX (1024 * 1024)

/* ---- lasso once, quietly ------------------------------------------------ */

static void lasso_quiet(const gchar *domain, GLogLevelFlags level, const gchar *msg, gpointer ud)
{
    (void)domain;
    (void)ud;
    /* lasso's own words go to the debug log only: users and the error page
     * never see them (our reasons say what failed). */
    if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL)) {
        log_debug("saml", "lasso: %s", msg);
    }
}

static pthread_once_t lasso_once = PTHREAD_ONCE_INIT;
static int lasso_rc;

static void lasso_start(void)
{
    lasso_rc = lasso_init();
    g_log_set_handler("Lasso", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL | G_LOG_FLAG_RECURSION,
                      lasso_quiet, NULL);
    /* The algorithm check is ours, per IdP (allow_sha1): this lasso build has
     * no floor of its own and verifies RSA-SHA1 as well. */
}

static void xml_silent(void *ctx, const char *msg, ...)
{
    (void)ctx;
    (void)msg;
}

/* libxml2's error handler is per thread: parse errors of hostile input go
 * nowhere (our refusal says what failed), not to stderr. */
void saml_xml_quiet_thread(void)
{
    static __thread bool done;
    if (!done) {
        xmlSetGenericErrorFunc(NULL, xml_silent);
        done = true;
    }
}

/* ---- small helpers ------------------------------------------------------ */

bool saml_is_el(const xmlNode *n, const char *ns, const char *name)
{
    return n != NULL && n->type == XML_ELEMENT_NODE && n->ns != NULL && n->ns->href != NULL &&
           strcmp((const char *)n->ns->href, ns) == 0 && strcmp((const char *)n->name, name) == 0;
}

const xmlNode *saml_child_el(const xmlNode *p, const char *ns, const char *name)
{
    for (const xmlNode *c = p ? p->children : NULL; c != NULL; c = c->next) {
        if (saml_is_el(c, ns, name)) {
            return c;
        }
    }
    return NULL;
}

/* An attribute without namespace, as a malloc'd string, or NULL. */
char *saml_attr(const xmlNode *n, const char *name)
{
    xmlChar *v = n ? xmlGetNoNsProp((xmlNode *)n, (const xmlChar *)name) : NULL;
    char *s = v ? xstrdup((const char *)v) : NULL;
    xmlFree(v);
    return s;
}

char *saml_text_of(const xmlNode *n)
{
    xmlChar *v = n ? xmlNodeGetContent(n) : NULL;
    char *s = v ? xstrdup((const char *)v) : NULL;
    xmlFree(v);
    return s;
}

bool saml_attr_is(const xmlNode *n, const char *name, const char *want)
{
    char *v = saml_attr(n, name);
    bool ok = v != NULL && want != NULL && strcmp(v, want) == 0;
    free(v);
    return ok;
}

/* xs:dateTime in UTC ("2026-12-06T06:00:00Z", optional fraction). -1 when bad. */
int64_t saml_iso_time(const char *s)
{
    struct tm tm = { 0 };
    if (s == NULL) {
        return -1;
    }
    const char *e = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (e == NULL) {
        return -1;
    }
    if (*e == '.') {
        e++;
        while (*e >= '0' && *e <= '9') {
            e++;
        }
    }
    if (strcmp(e, "Z") != 0 && strcmp(e, "+00:00") != 0) {
        return -1;
    }
    return (int64_t)timegm(&tm);
}

static char *xml_escape(const char *s)
{
    struct sbuf b = { 0 };
    for (; *s; s++) {
        switch (*s) {
        case '&':
            codec_buf_adds(&b, "&amp;");
            break;
        case '<':
            codec_buf_adds(&b, "&lt;");
            break;
        case '>':
            codec_buf_adds(&b, "&gt;");
            break;
        case '"':
            codec_buf_adds(&b, "&quot;");
            break;
        default:
            codec_buf_add(&b, s, 1);
        }
    }
    return codec_buf_take(&b);
}

/* The base64 body of the first certificate in a PEM text. */
static char *pem_body(const char *pem)
{
    const char *b = strstr(pem, "-----BEGIN CERTIFICATE-----");
    const char *e = b ? strstr(b, "-----END CERTIFICATE-----") : NULL;
    if (e == NULL) {
        return NULL;
    }
    b += strlen("-----BEGIN CERTIFICATE-----");
    struct sbuf o = { 0 };
    for (; b < e; b++) {
        if (*b != '\r' && *b != '\n' && *b != ' ' && *b != '\t') {
            codec_buf_add(&o, b, 1);
        }
    }
    return codec_buf_take(&o);
}

/* Standard base64 with optional whitespace (the POST binding wraps lines). */
unsigned char *saml_b64_decode(struct str in, size_t *out_len)
{
    unsigned char *out = xmalloc(in.len / 4 * 3 + 4);
    EVP_ENCODE_CTX *c = EVP_ENCODE_CTX_new();
    int n1 = 0, n2 = 0;
    bool ok = c != NULL;
    for (size_t i = 0; ok && i < in.len; i++) {
        char ch = in.p[i];
        bool b64 = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                   (ch >= '0' && ch <= '9') || ch == '+' || ch == '/' || ch == '=';
        ok = b64 || ch == '\r' || ch == '\n' || ch == ' ' || ch == '\t';
    }
    if (ok) {
        EVP_DecodeInit(c);
        ok = EVP_DecodeUpdate(c, out, &n1, (const unsigned char *)in.p, (int)in.len) >= 0 &&
             EVP_DecodeFinal(c, out + n1, &n2) == 1;
    }
    EVP_ENCODE_CTX_free(c);
    if (!ok || n1 + n2 <= 0) {
        free(out);
        return NULL;
    }
    *out_len = (size_t)(n1 + n2);
    out[*out_len] = '\0';
    return out;
}

/* ---- configuration ------------------------------------------------------ */

static const char *const saml_keys[] = { "id",
                                         "type",
                                         "display_name",
                                         "metadata",
                                         "sp_key",
                                         "sp_cert",
                                         "entity_id",
                                         "attributes",
                                         "want_assertions_signed",
                                         "want_assertions_encrypted",
                                         "allow_unsolicited",
                                         "clock_skew",
                                         "allow_sha1",
                                         "allow_insecure_metadata",
                                         NULL };
static const char *const attr_keys[] = { "email", "name", "groups", "user", NULL };

static char *read_conf_file(struct conf_diag *d, const struct conf_node *e, const char *key,
                            const char *conf_file, const char *what)
{
    const char *v = NULL;
    if (!conf_string(d, e, key, &v) || v == NULL) {
        if (v == NULL && conf_get(e, key) == NULL) {
            conf_error(d, e, "a saml identity provider needs \"%s\" (%s)", key, what);
        }
        return NULL;
    }
    char *path = conf_path_resolve(conf_file, v);
    struct err err = { 0 };
    size_t len = 0;
    char *text = conf_read_file(path, FILE_MAX, &len, &err);
    if (text == NULL) {
        conf_error(d, conf_get(e, key), "%s %s: %s", what, path, err.msg);
    }
    free(path);
    return text;
}

/* The scheme://host[:port] of an http(s) URL, or NULL. */
static char *url_origin(const char *u)
{
    const char *rest = strncmp(u, "https://", 8) == 0  ? u + 8
                       : strncmp(u, "http://", 7) == 0 ? u + 7
                                                       : NULL;
    if (rest == NULL || *rest == '\0' || *rest == '/') {
        return NULL;
    }
    size_t n = strcspn(rest, "/?#");
    return xstrndup(u, (size_t)(rest - u) + n);
}

struct md_info {
    char *entity_id, *slo_url;
    bool sign_requests;
    int64_t valid_until_s;    /* 0: none */
    int64_t cache_duration_s; /* 0: none */
};

static void md_info_fini(struct md_info *m)
{
    free(m->entity_id);
    free(m->slo_url);
}

/* xs:duration as metadata use it (PnDTnHnMnS, no years or months): seconds,
 * or -1. */
static int64_t xs_duration(const char *s)
{
    if (s == NULL || *s++ != 'P') {
        return -1;
    }
    int64_t total = 0;
    bool t = false, any = false;
    while (*s) {
        if (*s == 'T') {
            t = true;
            s++;
            continue;
        }
        char *end = NULL;
        double v = strtod(s, &end);
        if (end == s || v < 0 || v > 1e9) {
            return -1;
        }
        int64_t mul = *end == 'D' && !t  ? 86400
                      : *end == 'H' && t ? 3600
                      : *end == 'M' && t ? 60
                      : *end == 'S' && t ? 1
                                         : 0;
        if (mul == 0) {
            return -1;
        }
        total += (int64_t)(v * (double)mul);
        any = true;
        s = end + 1;
    }
    return any ? total : -1;
}

/* Reads entityID, WantAuthnRequestsSigned and the Redirect SLO endpoint from
 * the IdP's metadata (one EntityDescriptor with an IDPSSODescriptor). */
static bool idp_metadata_read(struct md_info *x, const char *md, size_t len, char *why,
                              size_t whylen)
{
    xmlDoc *doc = xmlReadMemory(md, (int)len, "metadata.xml", NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    const xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
    bool ok = false;
    if (doc == NULL) {
        snprintf(why, whylen, "not well-formed XML");
    } else if (doc->intSubset != NULL) {
        snprintf(why, whylen, "a DOCTYPE is not allowed");
    } else if (!saml_is_el(root, NS_MD, "EntityDescriptor")) {
        snprintf(why, whylen,
                 "the root is not one md:EntityDescriptor (a federation file "
                 "needs one entity extracted)");
    } else {
        const xmlNode *sso = saml_child_el(root, NS_MD, "IDPSSODescriptor");
        x->entity_id = saml_attr(root, "entityID");
        char *vu = saml_attr(root, "validUntil"), *cd = saml_attr(root, "cacheDuration");
        x->valid_until_s = vu ? saml_iso_time(vu) : 0;
        x->cache_duration_s = cd ? xs_duration(cd) : 0;
        free(vu);
        free(cd);
        if (x->valid_until_s < 0 || x->cache_duration_s < 0) {
            snprintf(why, whylen, "unreadable validUntil or cacheDuration");
        } else if (sso == NULL || x->entity_id == NULL) {
            snprintf(why, whylen, "no IDPSSODescriptor or entityID");
        } else {
            bool key = false;
            for (const xmlNode *c = sso->children; c != NULL; c = c->next) {
                if (saml_is_el(c, NS_MD, "KeyDescriptor") &&
                    !saml_attr_is(c, "use", "encryption")) {
                    char *t = saml_text_of(saml_child_el(
                        saml_child_el(saml_child_el(c, NS_DS, "KeyInfo"), NS_DS, "X509Data"), NS_DS,
                        "X509Certificate"));
                    key = key || (t != NULL && t[0] != '\0');
                    free(t);
                }
            }
            if (!key) {
                snprintf(why, whylen,
                         "no signing certificate (KeyDescriptor with "
                         "X509Certificate) in the IDPSSODescriptor");
                xmlFreeDoc(doc);
                return false;
            }
            x->sign_requests = saml_attr_is(sso, "WantAuthnRequestsSigned", "true") ||
                               saml_attr_is(sso, "WantAuthnRequestsSigned", "1");
            for (const xmlNode *c = sso->children; c != NULL; c = c->next) {
                if (saml_is_el(c, NS_MD, "SingleLogoutService") && x->slo_url == NULL &&
                    saml_attr_is(c, "Binding",
                                 "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect")) {
                    x->slo_url = saml_attr(c, "Location");
                }
            }
            ok = true;
        }
    }
    xmlFreeDoc(doc);
    return ok;
}

static char *sp_metadata_build(const struct saml_idp *x, const char *cert_pem, bool sign_requests)
{
    char *cert = pem_body(cert_pem);
    if (cert == NULL) {
        return NULL;
    }
    char *eid = xml_escape(x->entity_id), *acs = xml_escape(x->acs_url),
         *slo = xml_escape(x->slo_url);
    char *kd = xasprintf("<ds:KeyInfo><ds:X509Data><ds:X509Certificate>%s</ds:X509Certificate>"
                         "</ds:X509Data></ds:KeyInfo>",
                         cert);
    char *md = xasprintf(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<md:EntityDescriptor xmlns:md=\"" NS_MD "\" xmlns:ds=\"" NS_DS "\" entityID=\"%s\">\n"
        "  <md:SPSSODescriptor AuthnRequestsSigned=\"%s\" WantAssertionsSigned=\"%s\" "
        "protocolSupportEnumeration=\"" NS_SAMLP "\">\n"
        "    <md:KeyDescriptor use=\"signing\">%s</md:KeyDescriptor>\n"
        "    <md:KeyDescriptor use=\"encryption\">%s</md:KeyDescriptor>\n"
        "    <md:SingleLogoutService "
        "Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"%s\"/>\n"
        "    <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
        "</md:NameIDFormat>\n"
        "    <md:AssertionConsumerService "
        "Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" "
        "Location=\"%s\" index=\"0\" isDefault=\"true\"/>\n"
        "  </md:SPSSODescriptor>\n"
        "</md:EntityDescriptor>\n",
        eid, sign_requests ? "true" : "false", x->want_assertions_signed ? "true" : "false", kd, kd,
        slo, acs);
    free(cert);
    free(eid);
    free(acs);
    free(slo);
    free(kd);
    return md;
}

/* sp_key is the private key of sp_cert (lasso would sign with a key our
 * metadata does not publish). */
static bool key_pair_ok(const char *key_pem, const char *cert_pem)
{
    BIO *kb = BIO_new_mem_buf(key_pem, -1), *cb = BIO_new_mem_buf(cert_pem, -1);
    EVP_PKEY *k = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    X509 *c = cb ? PEM_read_bio_X509(cb, NULL, NULL, NULL) : NULL;
    bool ok = k != NULL && c != NULL && X509_check_private_key(c, k) == 1;
    EVP_PKEY_free(k);
    X509_free(c);
    BIO_free(kb);
    BIO_free(cb);
    return ok;
}

/* Loads a metadata document into a new lasso server and, when every check
 * passes, swaps it in (under x->mu). The IdP's entity id is fixed by the
 * first load. Returns 0, or -1 with why. */
static int md_install(struct saml_idp *x, const char *md, size_t len, int64_t now_s, char *why,
                      size_t whylen)
{
    struct md_info mi = { 0 };
    int rc = -1;
    char *spmd = NULL;
    LassoServer *srv = NULL;
    if (!idp_metadata_read(&mi, md, len, why, whylen)) {
        goto out;
    }
    if (mi.valid_until_s > 0 && mi.valid_until_s <= now_s) {
        snprintf(why, whylen, "expired (validUntil is past)");
        goto out;
    }
    if (x->idp_entity_id != NULL && strcmp(x->idp_entity_id, mi.entity_id) != 0) {
        snprintf(why, whylen, "names another entity (%.60s) than before", mi.entity_id);
        goto out;
    }
    spmd = sp_metadata_build(x, x->sp_cert_pem, mi.sign_requests);
    if (spmd == NULL) {
        snprintf(why, whylen, "sp_cert holds no PEM certificate");
        goto out;
    }
    /* No certificate for lasso: our metadata publishes it, and with one lasso
     * (through xmlsec) first tries it as a file name and leaks a BIO on every
     * AuthnRequest it builds. */
    srv = lasso_server_new_from_buffers(spmd, x->sp_key_pem, NULL, NULL);
    if (srv == NULL) {
        snprintf(why, whylen, "sp_key and sp_cert are not a usable key pair");
        goto out;
    }
    srv->signature_method = LASSO_SIGNATURE_METHOD_RSA_SHA256;
    char *mdz = xstrndup(md, len);
    int lrc = lasso_server_add_provider_from_buffer(srv, LASSO_PROVIDER_ROLE_IDP, mdz, NULL, NULL);
    free(mdz);
    if (lrc != 0 || lasso_server_get_provider(srv, mi.entity_id) == NULL) {
        snprintf(why, whylen,
                 "not accepted by the SAML library (signing key or SSO endpoint "
                 "missing?)");
        goto out;
    }
    /* Refresh: cacheDuration, capped by validUntil; between 5 minutes and a
     * day, an hour when the metadata says nothing. */
    int64_t ttl = mi.cache_duration_s > 0 ? mi.cache_duration_s : 3600;
    if (mi.valid_until_s > 0 && mi.valid_until_s - now_s < ttl) {
        ttl = mi.valid_until_s - now_s;
    }
    ttl = ttl < 300 ? 300 : ttl > 86400 ? 86400 : ttl;
    pthread_mutex_lock(&x->mu);
    if (x->idp_entity_id == NULL) {
        x->idp_entity_id = mi.entity_id;
        mi.entity_id = NULL;
    }
    LassoServer *old = x->server;
    x->server = srv;
    srv = NULL;
    free(x->sp_metadata);
    x->sp_metadata = spmd;
    spmd = NULL;
    free(x->idp_slo_url);
    x->idp_slo_url = mi.slo_url;
    mi.slo_url = NULL;
    x->sign_requests = mi.sign_requests;
    x->expires_s = now_s + ttl;
    pthread_mutex_unlock(&x->mu);
    if (old != NULL) {
        lasso_server_destroy(old);
    }
    rc = 0;
out:
    if (srv != NULL) {
        lasso_server_destroy(srv);
    }
    free(spmd);
    md_info_fini(&mi);
    return rc;
}

struct saml_idp *saml_idp_parse(struct conf_diag *d, const struct conf_node *e,
                                const char *conf_file, const char *public_url)
{
    size_t before = d->count;
    pthread_once(&lasso_once, lasso_start);
    saml_xml_quiet_thread();
    if (lasso_rc != 0) {
        conf_error(d, e, "SAML library (lasso) failed to start");
        return NULL;
    }
    conf_check_keys(d, e, "a saml identity provider", saml_keys); /* go on: report all */
    struct saml_idp *x = xcalloc(1, sizeof *x);
    pthread_mutex_init(&x->mu, NULL);
    const char *id = NULL, *dn = NULL, *eid = NULL;
    conf_string(d, e, "id", &id);
    conf_string(d, e, "display_name", &dn);
    conf_string(d, e, "entity_id", &eid);
    if (id == NULL || id[0] == '\0') {
        conf_error(d, e, "an identity provider needs an \"id\"");
    }
    x->id = xstrdup(id ? id : "");
    x->display_name = dn ? xstrdup(dn) : NULL;
    x->want_assertions_signed = true;
    conf_bool(d, e, "want_assertions_signed", &x->want_assertions_signed);
    conf_bool(d, e, "want_assertions_encrypted", &x->want_assertions_encrypted);
    conf_bool(d, e, "allow_unsolicited", &x->allow_unsolicited);
    conf_bool(d, e, "allow_sha1", &x->allow_sha1);
    uint64_t skew = 180000;
    conf_duration_ms(d, e, "clock_skew", 0, 600000, &skew);
    x->clock_skew_s = (int64_t)(skew / 1000);
    const char *ae = "email", *an = "displayName", *ag = "groups", *au = NULL;
    const struct conf_node *attrs = conf_get(e, "attributes");
    if (attrs != NULL && conf_check_keys(d, attrs, "\"attributes\"", attr_keys)) {
        conf_string(d, attrs, "email", &ae);
        conf_string(d, attrs, "name", &an);
        conf_string(d, attrs, "groups", &ag);
        conf_string(d, attrs, "user", &au);
    }
    x->attr_email = xstrdup(ae);
    x->attr_name = xstrdup(an);
    x->attr_groups = xstrdup(ag);
    x->attr_user = au ? xstrdup(au) : NULL;

    /* Where we are: the entity id (default <public_url>/.gatehouse/saml/metadata)
     * and the ACS on the same origin. */
    char *base = public_url ? url_origin(public_url) : NULL;
    if (eid == NULL && base == NULL) {
        conf_error(d, e,
                   "a saml identity provider needs \"entity_id\" (an https URL of this "
                   "service, e.g. https://app.example.com/.gatehouse/saml/metadata) "
                   "or a top-level \"public_url\"");
    } else {
        x->entity_id = eid ? xstrdup(eid) : xasprintf("%s/.gatehouse/saml/metadata", base);
        if (base == NULL) {
            base = url_origin(x->entity_id);
        }
        if (base == NULL) {
            conf_error(d, conf_get(e, "entity_id"),
                       "entity_id \"%s\" is not an http(s) URL: set a top-level "
                       "\"public_url\" for the ACS URL",
                       eid);
        } else {
            x->acs_url = xasprintf("%s/.gatehouse/saml/acs", base);
            x->slo_url = xasprintf("%s/.gatehouse/saml/slo", base);
        }
    }
    free(base);

    const char *mdv = NULL;
    conf_string(d, e, "metadata", &mdv);
    bool url_form =
        mdv != NULL && (strncmp(mdv, "https://", 8) == 0 || strncmp(mdv, "http://", 7) == 0);
    bool insecure = false;
    conf_bool(d, e, "allow_insecure_metadata", &insecure);
    char *md = NULL;
    if (url_form) {
        char *origin = url_origin(mdv);
        if (origin == NULL || (strncmp(mdv, "http://", 7) == 0 && !insecure)) {
            conf_error(d, conf_get(e, "metadata"),
                       origin ? "metadata URL must be https (allow_insecure_metadata: true "
                                "permits http, for tests)"
                              : "metadata URL has no host");
        }
        free(origin);
        x->metadata_url = xstrdup(mdv);
    } else {
        md = read_conf_file(d, e, "metadata", conf_file, "IdP metadata");
    }
    char *key = read_conf_file(d, e, "sp_key", conf_file, "SP private key");
    char *cert = read_conf_file(d, e, "sp_cert", conf_file, "SP certificate");
    if (d->count == before && key && cert && !key_pair_ok(key, cert)) {
        conf_error(d, conf_get(e, "sp_key"),
                   "sp_key is not the private key of sp_cert (PEM "
                   "key and certificate of one pair expected)");
    }
    if (d->count == before && key && cert) {
        x->sp_key_pem = xstrdup(key);
        x->sp_cert_pem = xstrdup(cert);
        char why[200];
        if (md != NULL &&
            md_install(x, md, strlen(md), (int64_t)time(NULL), why, sizeof why) != 0) {
            conf_error(d, conf_get(e, "metadata"), "IdP metadata: %s", why);
        }
    }
    if (key != NULL) {
        OPENSSL_cleanse(key, strlen(key));
    }
    free(md);
    free(key);
    free(cert);
    if (d->count != before) {
        saml_idp_free(x);
        return NULL;
    }
    return x;
}

void saml_idp_free(struct saml_idp *x)
{
    if (x == NULL) {
        return;
    }
    if (x->server != NULL) {
        lasso_server_destroy(x->server);
    }
    pthread_mutex_destroy(&x->mu);
    free(x->id);
    free(x->display_name);
    free(x->entity_id);
    free(x->acs_url);
    free(x->slo_url);
    free(x->idp_entity_id);
    free(x->idp_slo_url);
    free(x->attr_email);
    free(x->attr_name);
    free(x->attr_groups);
    free(x->attr_user);
    free(x->sp_metadata);
    free(x->metadata_url);
    if (x->sp_key_pem != NULL) {
        OPENSSL_cleanse(x->sp_key_pem, strlen(x->sp_key_pem));
    }
    free(x->sp_key_pem);
    free(x->sp_cert_pem);
    free(x);
}

/* A copy of a field that a metadata refresh may replace, taken under x->mu. */
static char *dup_locked(struct saml_idp *x, char *const *field)
{
    pthread_mutex_lock(&x->mu);
    char *v = *field ? xstrdup(*field) : NULL;
    pthread_mutex_unlock(&x->mu);
    return v;
}

char *saml_idp_slo_url_dup(struct saml_idp *x)
{
    return dup_locked(x, &x->idp_slo_url);
}

const char *saml_idp_id(const struct saml_idp *x)
{
    return x->id;
}

const char *saml_idp_display_name(const struct saml_idp *x)
{
    return x->display_name;
}

const char *saml_idp_acs_url(const struct saml_idp *x)
{
    return x->acs_url;
}

char *saml_sp_metadata(const struct saml_idp *cx)
{
    struct saml_idp *x = (struct saml_idp *)cx;
    return dup_locked(x, &x->sp_metadata);
}

const char *saml_metadata_url(const struct saml_idp *x)
{
    return x->metadata_url;
}

bool saml_metadata_need(struct saml_idp *x, int64_t now_s, bool *usable)
{
    pthread_mutex_lock(&x->mu);
    *usable = x->server != NULL;
    bool due = x->metadata_url != NULL && (x->server == NULL || now_s >= x->expires_s) &&
               now_s >= x->retry_s && (!x->fetching || now_s >= x->fetch_started_s + 30);
    if (due) {
        x->fetching = true;
        x->fetch_started_s = now_s;
    }
    pthread_mutex_unlock(&x->mu);
    return due;
}

int saml_metadata_take(struct saml_idp *x, int status, struct str body, int64_t now_s,
                       struct err *err)
{
    char why[200] = "";
    int rc = -1;
    if (status != 200) {
        snprintf(why, sizeof why, status == 0 ? "unreachable" : "HTTP %d", status);
    } else {
        rc = md_install(x, body.p ? body.p : "", body.len, now_s, why, sizeof why);
    }
    pthread_mutex_lock(&x->mu);
    x->fetching = false;
    if (rc != 0) {
        x->retry_s = now_s + 60; /* the old metadata (if any) serves meanwhile */
    }
    pthread_mutex_unlock(&x->mu);
    return rc == 0
               ? 0
               : err_set(err, ERR_IO, "metadata of %s from %s: %s", x->id, x->metadata_url, why);
}

/* ---- login -------------------------------------------------------------- */

int saml_login_start(const struct saml_idp *cx, struct str return_path, const unsigned char key[32],
                     int64_t now_s, char **url, char **cookie, struct err *err)
{
    struct saml_idp *x = (struct saml_idp *)cx;
    unsigned char rnd[16];
    char handle[33];
    if (!codec_rand_bytes(rnd, sizeof rnd)) {
        return err_set(err, ERR_CRYPTO, "no randomness");
    }
    str_hex(rnd, sizeof rnd, handle);
    pthread_mutex_lock(&x->mu);
    LassoLogin *l = x->server ? lasso_login_new(x->server) : NULL;
    int rc =
        l ? lasso_login_init_authn_request(l, x->idp_entity_id, LASSO_HTTP_METHOD_REDIRECT) : -1;
    char *rid = NULL;
    if (rc == 0) {
        LassoSamlp2AuthnRequest *rq = LASSO_SAMLP2_AUTHN_REQUEST(LASSO_PROFILE(l)->request);
        if (rq->NameIDPolicy != NULL) {
            rq->NameIDPolicy->AllowCreate = TRUE;
            lasso_assign_string(rq->NameIDPolicy->Format,
                                LASSO_SAML2_NAME_IDENTIFIER_FORMAT_UNSPECIFIED);
        }
        lasso_assign_string(rq->ProtocolBinding, LASSO_SAML2_METADATA_BINDING_POST);
        lasso_assign_string(rq->AssertionConsumerServiceURL, x->acs_url);
        lasso_assign_string(LASSO_PROFILE(l)->msg_relayState, handle);
        lasso_profile_set_signature_hint(LASSO_PROFILE(l),
                                         x->sign_requests ? LASSO_PROFILE_SIGNATURE_HINT_FORCE
                                                          : LASSO_PROFILE_SIGNATURE_HINT_FORBID);
        rc = lasso_login_build_authn_request_msg(l);
        if (rc == 0 && LASSO_PROFILE(l)->msg_url != NULL &&
            LASSO_SAMLP2_REQUEST_ABSTRACT(rq)->ID != NULL) {
            *url = xstrdup(LASSO_PROFILE(l)->msg_url);
            rid = xstrdup(LASSO_SAMLP2_REQUEST_ABSTRACT(rq)->ID);
        } else if (rc == 0) {
            rc = -1;
        }
    }
    if (l != NULL) {
        lasso_login_destroy(l);
    }
    pthread_mutex_unlock(&x->mu);
    if (rc != 0) {
        return err_set(err, ERR_NOMEM, "AuthnRequest not built (lasso %d)", rc);
    }
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:s%, s:I}", "p", x->id, "i", rid, "s", handle, "r",
                  return_path.p, return_path.len, "e", (json_int_t)(now_s + SAML_LOGIN_TTL_S));
    char *pt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    free(rid);
    *cookie = pt ? codec_seal(key, LOGIN_AAD, pt, strlen(pt)) : NULL;
    free(pt);
    if (*cookie == NULL) {
        free(*url);
        *url = NULL;
        return err_set(err, ERR_NOMEM, "login state not sealed");
    }
    return 0;
}
