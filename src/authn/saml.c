/* authn/saml.c - SAML 2.0 service provider steps on lasso (see saml.h).
 *
 * The ACS runs in this order, each refusal with its own reason:
 *   form -> base64 -> bytes (size, NUL, DOCTYPE/ENTITY) -> one libxml2 parse
 *   without network, entities or DTD -> structure (root Response, one
 *   Assertion as its child, unique IDs, signatures only on Response/Assertion,
 *   each with one Reference to its parent's ID and allowed algorithms, no
 *   comments) -> login state (cookie) and IdP -> lasso (signature with the
 *   metadata keys, Status, Issuer known, decryption) -> our checks on the same
 *   elements lasso verified (Issuer, Destination, InResponseTo, bearer
 *   SubjectConfirmation with Recipient and NotOnOrAfter, AudienceRestriction,
 *   Conditions times with the skew) -> identity (NameID, attributes).
 * Over 1,200 lines: every check of that order is here, next to the one before it,
 * so that a reviewer reads the whole ACS in one file. */
#include "saml.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <lasso/lasso.h>
#include <lasso/utils.h>
#include <lasso/xml/saml-2.0/saml2_assertion.h>
#include <lasso/xml/saml-2.0/saml2_attribute.h>
#include <lasso/xml/saml-2.0/saml2_attribute_statement.h>
#include <lasso/xml/saml-2.0/saml2_attribute_value.h>
#include <lasso/xml/saml-2.0/saml2_authn_statement.h>
#include <lasso/xml/saml-2.0/saml2_name_id.h>
#include <lasso/xml/saml-2.0/samlp2_authn_request.h>
#include <lasso/xml/saml-2.0/samlp2_logout_request.h>
#include <lasso/xml/saml-2.0/saml2_subject.h>
#include <lasso/xml/saml-2.0/samlp2_name_id_policy.h>
#include <lasso/xml/saml-2.0/samlp2_response.h>
#include <lasso/saml-2.0/saml2_helper.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "codec.h"

#define NS_SAMLP "urn:oasis:names:tc:SAML:2.0:protocol"
#define NS_SAML "urn:oasis:names:tc:SAML:2.0:assertion"
#define NS_DS "http://www.w3.org/2000/09/xmldsig#"
#define NS_MD "urn:oasis:names:tc:SAML:2.0:metadata"
#define CM_BEARER "urn:oasis:names:tc:SAML:2.0:cm:bearer"
#define STATUS_SUCCESS "urn:oasis:names:tc:SAML:2.0:status:Success"
#define LOGIN_AAD "gatehouse-saml-login"
#define XML_MAX (192 * 1024)
#define FILE_MAX (1024 * 1024)

struct saml_idp {
    char *id;
    char *display_name;
    char *entity_id;      /* ours (SP) */
    char *acs_url;
    char *slo_url;
    char *idp_entity_id;
    char *idp_slo_url;    /* the IdP's HTTP-Redirect SingleLogoutService, or NULL */
    char *attr_email, *attr_name, *attr_groups, *attr_user;
    bool want_assertions_signed;
    bool want_assertions_encrypted;
    bool allow_unsolicited;
    bool allow_sha1;
    int64_t clock_skew_s;
    /* The metadata: a file read at start, or a URL fetched by the proxy (never
     * blocking a loop) and refreshed on its cacheDuration / validUntil. The
     * IdP's entity id is learned once: a refresh naming another is refused. */
    char *metadata_url;       /* NULL: the file form */
    char *sp_key_pem, *sp_cert_pem; /* kept to load a fetched metadata */
    pthread_mutex_t mu;   /* guards everything below; lasso objects: one message at a time */
    LassoServer *server;  /* NULL until a metadata is loaded */
    bool sign_requests;   /* the IdP's WantAuthnRequestsSigned */
    char *sp_metadata;
    int64_t expires_s;    /* URL form: refresh after this */
    int64_t retry_s;      /* URL form: after a failed fetch, not before this */
    bool fetching;
    int64_t fetch_started_s;
};

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
static void xml_quiet_thread(void)
{
    static __thread bool done;
    if (!done) {
        xmlSetGenericErrorFunc(NULL, xml_silent);
        done = true;
    }
}

/* ---- small helpers ------------------------------------------------------ */

static bool is_el(const xmlNode *n, const char *ns, const char *name)
{
    return n != NULL && n->type == XML_ELEMENT_NODE && n->ns != NULL && n->ns->href != NULL &&
           strcmp((const char *)n->ns->href, ns) == 0 && strcmp((const char *)n->name, name) == 0;
}

static const xmlNode *child_el(const xmlNode *p, const char *ns, const char *name)
{
    for (const xmlNode *c = p ? p->children : NULL; c != NULL; c = c->next) {
        if (is_el(c, ns, name)) {
            return c;
        }
    }
    return NULL;
}

/* An attribute without namespace, as a malloc'd string, or NULL. */
static char *attr(const xmlNode *n, const char *name)
{
    xmlChar *v = n ? xmlGetNoNsProp((xmlNode *)n, (const xmlChar *)name) : NULL;
    char *s = v ? xstrdup((const char *)v) : NULL;
    xmlFree(v);
    return s;
}

static char *text_of(const xmlNode *n)
{
    xmlChar *v = n ? xmlNodeGetContent(n) : NULL;
    char *s = v ? xstrdup((const char *)v) : NULL;
    xmlFree(v);
    return s;
}

static bool attr_is(const xmlNode *n, const char *name, const char *want)
{
    char *v = attr(n, name);
    bool ok = v != NULL && want != NULL && strcmp(v, want) == 0;
    free(v);
    return ok;
}

/* xs:dateTime in UTC ("2026-12-06T06:00:00Z", optional fraction). -1 when bad. */
static int64_t iso_time(const char *s)
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
        case '&': codec_buf_adds(&b, "&amp;"); break;
        case '<': codec_buf_adds(&b, "&lt;"); break;
        case '>': codec_buf_adds(&b, "&gt;"); break;
        case '"': codec_buf_adds(&b, "&quot;"); break;
        default: codec_buf_add(&b, s, 1);
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
static unsigned char *b64_decode(struct str in, size_t *out_len)
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

static const char *const saml_keys[] = {
    "id", "type", "display_name", "metadata", "sp_key", "sp_cert", "entity_id", "attributes",
    "want_assertions_signed", "want_assertions_encrypted", "allow_unsolicited", "clock_skew",
    "allow_sha1", "allow_insecure_metadata", NULL
};
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
    const char *rest = strncmp(u, "https://", 8) == 0 ? u + 8
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
    int64_t valid_until_s;     /* 0: none */
    int64_t cache_duration_s;  /* 0: none */
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
        int64_t mul = *end == 'D' && !t ? 86400 : *end == 'H' && t ? 3600
                      : *end == 'M' && t ? 60 : *end == 'S' && t ? 1 : 0;
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
    } else if (!is_el(root, NS_MD, "EntityDescriptor")) {
        snprintf(why, whylen, "the root is not one md:EntityDescriptor (a federation file "
                              "needs one entity extracted)");
    } else {
        const xmlNode *sso = child_el(root, NS_MD, "IDPSSODescriptor");
        x->entity_id = attr(root, "entityID");
        char *vu = attr(root, "validUntil"), *cd = attr(root, "cacheDuration");
        x->valid_until_s = vu ? iso_time(vu) : 0;
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
                if (is_el(c, NS_MD, "KeyDescriptor") && !attr_is(c, "use", "encryption")) {
                    char *t = text_of(child_el(child_el(child_el(c, NS_DS, "KeyInfo"), NS_DS,
                                                        "X509Data"),
                                               NS_DS, "X509Certificate"));
                    key = key || (t != NULL && t[0] != '\0');
                    free(t);
                }
            }
            if (!key) {
                snprintf(why, whylen, "no signing certificate (KeyDescriptor with "
                                      "X509Certificate) in the IDPSSODescriptor");
                xmlFreeDoc(doc);
                return false;
            }
            x->sign_requests = attr_is(sso, "WantAuthnRequestsSigned", "true") ||
                               attr_is(sso, "WantAuthnRequestsSigned", "1");
            for (const xmlNode *c = sso->children; c != NULL; c = c->next) {
                if (is_el(c, NS_MD, "SingleLogoutService") && x->slo_url == NULL &&
                    attr_is(c, "Binding", "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect")) {
                    x->slo_url = attr(c, "Location");
                }
            }
            ok = true;
        }
    }
    xmlFreeDoc(doc);
    return ok;
}

static char *sp_metadata_build(const struct saml_idp *x, const char *cert_pem,
                               bool sign_requests)
{
    char *cert = pem_body(cert_pem);
    if (cert == NULL) {
        return NULL;
    }
    char *eid = xml_escape(x->entity_id), *acs = xml_escape(x->acs_url),
         *slo = xml_escape(x->slo_url);
    char *kd = xasprintf("<ds:KeyInfo><ds:X509Data><ds:X509Certificate>%s</ds:X509Certificate>"
                         "</ds:X509Data></ds:KeyInfo>", cert);
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
        eid, sign_requests ? "true" : "false", x->want_assertions_signed ? "true" : "false",
        kd, kd, slo, acs);
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
    int lrc = lasso_server_add_provider_from_buffer(srv, LASSO_PROVIDER_ROLE_IDP, mdz, NULL,
                                                    NULL);
    free(mdz);
    if (lrc != 0 || lasso_server_get_provider(srv, mi.entity_id) == NULL) {
        snprintf(why, whylen, "not accepted by the SAML library (signing key or SSO endpoint "
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
    xml_quiet_thread();
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
        conf_error(d, e, "a saml identity provider needs \"entity_id\" (an https URL of this "
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
                       "\"public_url\" for the ACS URL", eid);
        } else {
            x->acs_url = xasprintf("%s/.gatehouse/saml/acs", base);
            x->slo_url = xasprintf("%s/.gatehouse/saml/slo", base);
        }
    }
    free(base);

    const char *mdv = NULL;
    conf_string(d, e, "metadata", &mdv);
    bool url_form = mdv != NULL && (strncmp(mdv, "https://", 8) == 0 ||
                                    strncmp(mdv, "http://", 7) == 0);
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
        conf_error(d, conf_get(e, "sp_key"), "sp_key is not the private key of sp_cert (PEM "
                                             "key and certificate of one pair expected)");
    }
    if (d->count == before && key && cert) {
        x->sp_key_pem = xstrdup(key);
        x->sp_cert_pem = xstrdup(cert);
        char why[200];
        if (md != NULL && md_install(x, md, strlen(md), (int64_t)time(NULL), why,
                                     sizeof why) != 0) {
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
    return rc == 0 ? 0 : err_set(err, ERR_IO, "metadata of %s from %s: %s", x->id,
                                 x->metadata_url, why);
}

/* ---- login -------------------------------------------------------------- */

int saml_login_start(const struct saml_idp *cx, struct str return_path,
                     const unsigned char key[32], int64_t now_s, char **url, char **cookie,
                     struct err *err)
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
    int rc = l ? lasso_login_init_authn_request(l, x->idp_entity_id, LASSO_HTTP_METHOD_REDIRECT)
               : -1;
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
    json_t *j = json_pack("{s:s, s:s, s:s, s:s%, s:I}", "p", x->id, "i", rid, "s", handle, "r",
                          return_path.p, return_path.len, "e",
                          (json_int_t)(now_s + SAML_LOGIN_TTL_S));
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

/* ---- ACS ---------------------------------------------------------------- */

void saml_result_fini(struct saml_result *r)
{
    free(r->user_key);
    free(r->name_id);
    free(r->email);
    free(r->name);
    free(r->groups_json);
    free(r->claims_json);
    free(r->session_index);
    free(r->assertion_id);
    free(r->return_path);
    free(r->login_state);
    memset(r, 0, sizeof *r);
}

struct login_state {
    char *idp, *rid, *handle, *rd;
};

static void login_state_fini(struct login_state *s)
{
    free(s->idp);
    free(s->rid);
    free(s->handle);
    free(s->rd);
}

static bool login_state_open(const unsigned char key[32], struct str c, int64_t now_s,
                             struct login_state *out)
{
    size_t n = 0;
    char *pt = codec_unseal(key, LOGIN_AAD, c, &n);
    json_error_t je;
    json_t *j = pt ? json_loadb(pt, n, 0, &je) : NULL;
    free(pt);
    const char *p = json_string_value(json_object_get(j, "p"));
    const char *i = json_string_value(json_object_get(j, "i"));
    const char *s = json_string_value(json_object_get(j, "s"));
    const char *r = json_string_value(json_object_get(j, "r"));
    json_int_t e = json_integer_value(json_object_get(j, "e"));
    bool ok = p && i && s && r && e >= now_s;
    if (ok) {
        out->idp = xstrdup(p);
        out->rid = xstrdup(i);
        out->handle = xstrdup(s);
        out->rd = xstrdup(r);
    }
    json_decref(j);
    return ok;
}

static const char *const sig_algs[] = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512", NULL
};
static const char *const digest_algs[] = {
    "http://www.w3.org/2001/04/xmlenc#sha256", "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512", NULL
};
static const char *const transforms[] = {
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#", "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    NULL
};

static bool in_list(const char *v, const char *const *l)
{
    for (size_t i = 0; v != NULL && l[i] != NULL; i++) {
        if (strcmp(v, l[i]) == 0) {
            return true;
        }
    }
    return false;
}

static bool sha1_alg(const char *v, bool digest)
{
    return v != NULL && strcmp(v, digest ? "http://www.w3.org/2000/09/xmldsig#sha1"
                                         : "http://www.w3.org/2000/09/xmldsig#rsa-sha1") == 0;
}

/* The Algorithm of a SignatureMethod (digest false) or DigestMethod (digest
 * true) element: one of list, or SHA-1 when allowed. false with err set. */
static bool alg_allowed(const xmlNode *n, const char *const *list, bool allow_sha1, bool digest,
                        struct err *err)
{
    char *alg = attr(n, "Algorithm");
    bool ok = in_list(alg, list) || (allow_sha1 && sha1_alg(alg, digest));
    if (!ok) {
        err_set(err, ERR_PARSE, "%s algorithm %s refused%s", digest ? "digest" : "signature",
                alg ? alg : "(none)", sha1_alg(alg, digest) ? " (SHA-1; allow_sha1 is off)" : "");
    }
    free(alg);
    return ok;
}

/* One ds:Signature: one SignedInfo with one Reference to "#<parent ID>", the
 * allowed algorithms and transforms only. */
static bool check_signature(const xmlNode *sig, const char *parent_id, bool allow_sha1,
                            struct err *err)
{
    const xmlNode *si = NULL;
    for (const xmlNode *c = sig->children; c != NULL; c = c->next) {
        if (c->type != XML_ELEMENT_NODE) {
            continue;
        }
        if (is_el(c, NS_DS, "SignedInfo")) {
            if (si != NULL) {
                return err_set(err, ERR_PARSE, "signature with two SignedInfo") == 0;
            }
            si = c;
        } else if (is_el(c, NS_DS, "Object")) {
            return err_set(err, ERR_PARSE, "signature carries an Object (XML signature "
                                           "wrapping)") == 0;
        }
    }
    if (si == NULL) {
        return err_set(err, ERR_PARSE, "signature without SignedInfo") == 0;
    }
    size_t nref = 0;
    for (const xmlNode *c = si->children; c != NULL; c = c->next) {
        if (c->type != XML_ELEMENT_NODE) {
            continue;
        }
        if (is_el(c, NS_DS, "SignatureMethod")) {
            if (!alg_allowed(c, sig_algs, allow_sha1, false, err)) {
                return false;
            }
        } else if (is_el(c, NS_DS, "Reference")) {
            nref++;
            char *uri = attr(c, "URI");
            bool ok = uri != NULL && uri[0] == '#' && parent_id != NULL &&
                      strcmp(uri + 1, parent_id) == 0;
            free(uri);
            if (!ok) {
                return err_set(err, ERR_PARSE, "signature references another element than "
                                               "the one it is in (XML signature wrapping)") == 0;
            }
            for (const xmlNode *r = c->children; r != NULL; r = r->next) {
                if (is_el(r, NS_DS, "DigestMethod")) {
                    if (!alg_allowed(r, digest_algs, allow_sha1, true, err)) {
                        return false;
                    }
                } else if (is_el(r, NS_DS, "Transforms")) {
                    for (const xmlNode *t = r->children; t != NULL; t = t->next) {
                        if (!is_el(t, NS_DS, "Transform")) {
                            continue;
                        }
                        char *alg = attr(t, "Algorithm");
                        bool tok = in_list(alg, transforms);
                        free(alg);
                        if (!tok) {
                            return err_set(err, ERR_PARSE, "signature transform refused") == 0;
                        }
                    }
                }
            }
        }
    }
    if (nref != 1) {
        return err_set(err, ERR_PARSE, "signature with %zu references (one expected)", nref) == 0;
    }
    return true;
}

struct shape {
    const xmlNode *root, *assertion, *encrypted;
    const xmlNode *resp_sig, *assert_sig;
    char *resp_id, *assert_id, *issuer;
};

static void shape_fini(struct shape *s)
{
    free(s->resp_id);
    free(s->assert_id);
    free(s->issuer);
}

/* Every element: IDs unique (any attribute xmlsec may take for an ID), no
 * comment or processing instruction, Assertions and Signatures counted where
 * they are. */
struct walk {
    char **ids;
    size_t nids, cap;
    size_t nassert, nenc, nsig;
    bool comment, pi, dup;
    const char *dup_id;
};

static void walk_tree(const xmlNode *n, struct walk *w)
{
    for (; n != NULL; n = n->next) {
        if (n->type == XML_COMMENT_NODE) {
            w->comment = true;
        } else if (n->type == XML_PI_NODE) {
            w->pi = true;
        } else if (n->type == XML_ENTITY_REF_NODE || n->type == XML_ENTITY_NODE ||
                   n->type == XML_DTD_NODE) {
            w->pi = true;
        }
        if (n->type != XML_ELEMENT_NODE) {
            continue;
        }
        if (is_el(n, NS_SAML, "Assertion")) {
            w->nassert++;
        } else if (is_el(n, NS_SAML, "EncryptedAssertion")) {
            w->nenc++;
        } else if (is_el(n, NS_DS, "Signature")) {
            w->nsig++;
        }
        for (const xmlAttr *a = n->properties; a != NULL; a = a->next) {
            const char *an = (const char *)a->name;
            if (strcmp(an, "ID") != 0 && strcmp(an, "Id") != 0 && strcmp(an, "id") != 0) {
                continue;
            }
            xmlChar *v = xmlNodeListGetString(n->doc, a->children, 1);
            const char *vs = v ? (const char *)v : "";
            for (size_t i = 0; i < w->nids && !w->dup; i++) {
                if (strcmp(w->ids[i], vs) == 0) {
                    w->dup = true;
                }
            }
            if (w->nids == w->cap) {
                w->cap = w->cap ? w->cap * 2 : 16;
                w->ids = xrealloc(w->ids, w->cap * sizeof *w->ids);
            }
            w->ids[w->nids++] = xstrdup(vs);
            xmlFree(v);
        }
        walk_tree(n->children, w);
    }
}

static int check_shape(const xmlDoc *doc, const struct saml_idp *x_or_null, bool allow_sha1,
                       struct shape *s, struct err *err)
{
    (void)x_or_null;
    s->root = xmlDocGetRootElement(doc);
    if (!is_el(s->root, NS_SAMLP, "Response")) {
        return err_set(err, ERR_PARSE, "the message is not a samlp:Response");
    }
    /* A failure answer carries no assertion: say that, not "0 assertions". */
    const xmlNode *st = child_el(child_el(s->root, NS_SAMLP, "Status"), NS_SAMLP, "StatusCode");
    if (st == NULL || !attr_is(st, "Value", STATUS_SUCCESS)) {
        char *v = st ? attr(st, "Value") : NULL;
        const char *code = v && strrchr(v, ':') ? strrchr(v, ':') + 1 : "missing";
        err_set(err, ERR_CRYPTO, "Status is not Success (%.40s)", code);
        free(v);
        return -1;
    }
    struct walk w = { 0 };
    walk_tree(doc->children, &w);
    for (size_t i = 0; i < w.nids; i++) {
        free(w.ids[i]);
    }
    free(w.ids);
    if (w.dup) {
        return err_set(err, ERR_PARSE, "two elements share an ID (XML signature wrapping)");
    }
    if (w.comment) {
        return err_set(err, ERR_PARSE, "comment inside the message (NameID truncation attack)");
    }
    if (w.pi) {
        return err_set(err, ERR_PARSE, "processing instruction or entity inside the message");
    }
    if (w.nassert + w.nenc != 1) {
        return err_set(err, ERR_PARSE, "%zu assertions in the message (exactly one expected; "
                                       "XML signature wrapping)", w.nassert + w.nenc);
    }
    /* The one assertion is a child of the Response, nowhere deeper
     * (Extensions, Object, another Assertion). */
    s->assertion = child_el(s->root, NS_SAML, "Assertion");
    s->encrypted = child_el(s->root, NS_SAML, "EncryptedAssertion");
    if (s->assertion == NULL && s->encrypted == NULL) {
        return err_set(err, ERR_PARSE, "the assertion is not a child of the Response (moved "
                                       "into Extensions, Object or another element: XML "
                                       "signature wrapping)");
    }
    s->resp_id = attr(s->root, "ID");
    s->assert_id = s->assertion ? attr(s->assertion, "ID") : NULL;
    size_t placed = 0;
    for (const xmlNode *c = s->root->children; c != NULL; c = c->next) {
        if (is_el(c, NS_DS, "Signature")) {
            if (s->resp_sig != NULL) {
                return err_set(err, ERR_PARSE, "two signatures on the Response");
            }
            s->resp_sig = c;
            placed++;
        }
    }
    for (const xmlNode *c = s->assertion ? s->assertion->children : NULL; c != NULL;
         c = c->next) {
        if (is_el(c, NS_DS, "Signature")) {
            if (s->assert_sig != NULL) {
                return err_set(err, ERR_PARSE, "two signatures on the assertion");
            }
            s->assert_sig = c;
            placed++;
        }
    }
    if (placed != w.nsig) {
        return err_set(err, ERR_PARSE, "a signature outside the Response and Assertion "
                                       "(XML signature wrapping)");
    }
    if (s->resp_sig && !check_signature(s->resp_sig, s->resp_id, allow_sha1, err)) {
        return -1;
    }
    if (s->assert_sig && !check_signature(s->assert_sig, s->assert_id, allow_sha1, err)) {
        return -1;
    }
    const xmlNode *iss = child_el(s->root, NS_SAML, "Issuer");
    if (iss == NULL && s->assertion != NULL) {
        iss = child_el(s->assertion, NS_SAML, "Issuer");
    }
    s->issuer = text_of(iss);
    return 0;
}

/* An EncryptedAssertion, once lasso decrypted it: the same structure rules
 * inside (no nested assertion, unique IDs, no comments), and its own
 * signature when want_assertions_signed (lasso verified it when the Response
 * was not signed; the algorithms are ours to check). */
static int check_decrypted(const struct saml_idp *x, LassoSaml2Assertion *a, struct err *err)
{
    xmlNode *n = lasso_node_get_original_xmlnode(LASSO_NODE(a));
    if (n == NULL || !is_el(n, NS_SAML, "Assertion")) {
        return err_set(err, ERR_CRYPTO, "decrypted assertion unreadable");
    }
    struct walk w = { 0 };
    walk_tree(n->children, &w);
    for (size_t i = 0; i < w.nids; i++) {
        free(w.ids[i]);
    }
    free(w.ids);
    if (w.nassert + w.nenc != 0 || w.dup || w.comment || w.pi) {
        return err_set(err, ERR_CRYPTO, "decrypted assertion: nested assertion, repeated ID, "
                                        "comment or processing instruction");
    }
    const xmlNode *sig = child_el(n, NS_DS, "Signature");
    if (w.nsig > (sig ? 1u : 0u)) {
        return err_set(err, ERR_CRYPTO, "decrypted assertion: a signature out of place");
    }
    if (sig == NULL) {
        return x->want_assertions_signed
                   ? err_set(err, ERR_CRYPTO, "assertion is not signed (want_assertions_signed)")
                   : 0;
    }
    char *id = attr(n, "ID");
    bool ok = check_signature(sig, id, x->allow_sha1, err);
    free(id);
    return ok ? 0 : -1;
}

/* The values of attribute `name` (Name or FriendlyName) as text. */
static json_t *attr_values(LassoSaml2Assertion *a, const char *name)
{
    json_t *out = json_array();
    for (GList *st = a->AttributeStatement; st != NULL; st = st->next) {
        LassoSaml2AttributeStatement *s = st->data;
        for (GList *it = s->Attribute; it != NULL; it = it->next) {
            LassoSaml2Attribute *at = it->data;
            if (!LASSO_IS_SAML2_ATTRIBUTE(at) || name == NULL ||
                ((at->Name == NULL || strcmp(at->Name, name) != 0) &&
                 (at->FriendlyName == NULL || strcmp(at->FriendlyName, name) != 0))) {
                continue;
            }
            for (GList *v = at->AttributeValue; v != NULL; v = v->next) {
                xmlNode *xn = lasso_node_get_xmlNode(LASSO_NODE(v->data), FALSE);
                xmlChar *t = xn ? xmlNodeGetContent(xn) : NULL;
                if (t != NULL) {
                    json_array_append_new(out, json_string((const char *)t));
                }
                xmlFree(t);
                if (xn != NULL) {
                    xmlFreeNode(xn);
                }
            }
        }
    }
    return out;
}

static json_t *all_attributes(LassoSaml2Assertion *a)
{
    json_t *o = json_object();
    for (GList *st = a->AttributeStatement; st != NULL; st = st->next) {
        LassoSaml2AttributeStatement *s = st->data;
        for (GList *it = s->Attribute; it != NULL; it = it->next) {
            LassoSaml2Attribute *at = it->data;
            if (LASSO_IS_SAML2_ATTRIBUTE(at) && at->Name != NULL &&
                json_object_get(o, at->Name) == NULL) {
                json_object_set_new(o, at->Name, attr_values(a, at->Name));
            }
        }
    }
    return o;
}

static char *first_value(LassoSaml2Assertion *a, const char *name)
{
    json_t *v = attr_values(a, name);
    const char *s = json_string_value(json_array_get(v, 0));
    char *out = s && *s ? xstrdup(s) : NULL;
    json_decref(v);
    return out;
}

/* Checks on the verified assertion that lasso leaves to us. */
static int check_assertion(const struct saml_idp *x, LassoSamlp2Response *r,
                           LassoSaml2Assertion *a, const char *want_rid, int64_t now_s,
                           struct err *err)
{
    const char *dest = r->parent.Destination;
    if (dest != NULL && strcmp(dest, x->acs_url) != 0) {
        return err_set(err, ERR_CRYPTO, "Destination is not our ACS URL");
    }
    const char *riss = r->parent.Issuer ? r->parent.Issuer->content : NULL;
    const char *aiss = a->Issuer ? a->Issuer->content : NULL;
    if ((riss != NULL && strcmp(riss, x->idp_entity_id) != 0) || aiss == NULL ||
        strcmp(aiss, x->idp_entity_id) != 0) {
        return err_set(err, ERR_CRYPTO, "Issuer is not the identity provider's entity id");
    }
    const char *irt = r->parent.InResponseTo;
    if (want_rid != NULL) {
        if (irt == NULL || strcmp(irt, want_rid) != 0) {
            return err_set(err, ERR_CRYPTO, irt ? "InResponseTo does not match the request sent "
                                                "for this browser"
                                              : "response without InResponseTo to a request "
                                                "sent for this browser");
        }
    } else if (irt != NULL) {
        return err_set(err, ERR_CRYPTO, "InResponseTo names a request this browser did not make "
                                      "(no login state)");
    }
    /* Conditions: times with the skew, an AudienceRestriction naming us. */
    if (a->Conditions == NULL) {
        return err_set(err, ERR_CRYPTO, "assertion without Conditions");
    }
    int64_t nb = a->Conditions->NotBefore ? iso_time(a->Conditions->NotBefore) : 0;
    int64_t na = a->Conditions->NotOnOrAfter ? iso_time(a->Conditions->NotOnOrAfter) : 0;
    if (nb < 0 || na < 0) {
        return err_set(err, ERR_CRYPTO, "Conditions with an unreadable time");
    }
    if (nb > 0 && now_s + x->clock_skew_s < nb) {
        return err_set(err, ERR_CRYPTO, "assertion is not yet valid (NotBefore)");
    }
    if (na > 0 && now_s >= na + x->clock_skew_s) {
        return err_set(err, ERR_CRYPTO, "assertion has expired (NotOnOrAfter)");
    }
    if (lasso_saml2_assertion_validate_time_checks(a, (unsigned)x->clock_skew_s, 0) !=
        LASSO_SAML2_ASSERTION_VALID) {
        return err_set(err, ERR_CRYPTO, "assertion is outside its validity period");
    }
    /* Subject: a bearer confirmation for our ACS, in time, for this request. */
    LassoSaml2Subject *sub = a->Subject;
    LassoSaml2SubjectConfirmation *sc = sub ? sub->SubjectConfirmation : NULL;
    bool bearer = sc != NULL && sc->Method != NULL && strcmp(sc->Method, CM_BEARER) == 0;
    if (!bearer) {
        return err_set(err, ERR_CRYPTO, "SubjectConfirmation method is not bearer");
    }
    LassoSaml2SubjectConfirmationData *scd =
        lasso_saml2_assertion_get_subject_confirmation_data(a, FALSE);
    if (scd == NULL || scd->Recipient == NULL || strcmp(scd->Recipient, x->acs_url) != 0) {
        return err_set(err, ERR_CRYPTO, "SubjectConfirmationData Recipient is not our ACS URL");
    }
    int64_t scd_exp = iso_time(scd->NotOnOrAfter);
    if (scd_exp < 0 || now_s >= scd_exp + x->clock_skew_s) {
        return err_set(err, ERR_CRYPTO, "SubjectConfirmationData has expired (NotOnOrAfter)");
    }
    int64_t scd_nb = scd->NotBefore ? iso_time(scd->NotBefore) : 0;
    if (scd_nb < 0 || now_s + x->clock_skew_s < scd_nb) {
        return err_set(err, ERR_CRYPTO, "SubjectConfirmationData is not yet valid (NotBefore)");
    }
    if (scd->InResponseTo != NULL && (want_rid == NULL || strcmp(scd->InResponseTo, want_rid))) {
        return err_set(err, ERR_CRYPTO, "SubjectConfirmationData InResponseTo does not match");
    }
    if (!lasso_saml2_assertion_has_audience_restriction(a)) {
        return err_set(err, ERR_CRYPTO, "assertion without AudienceRestriction");
    }
    if (lasso_saml2_assertion_validate_audience(a, x->entity_id) != LASSO_SAML2_ASSERTION_VALID) {
        return err_set(err, ERR_CRYPTO, "AudienceRestriction does not name our entity id");
    }
    return 0;
}

static struct saml_idp *idp_by(struct saml_idp *const *idps, size_t n, const char *id,
                               bool by_entity)
{
    for (size_t i = 0; id != NULL && i < n; i++) {
        const char *v = by_entity ? idps[i]->idp_entity_id : idps[i]->id;
        if (v != NULL && strcmp(v, id) == 0) {
            return idps[i];
        }
    }
    return NULL;
}

static char *form_value(struct str body, const char *name, bool *dup)
{
    struct str raw;
    *dup = false;
    if (!codec_form_get(body, name, &raw, dup) || *dup) {
        return NULL;
    }
    char *v = codec_url_decode(raw, NULL);
    *dup = v == NULL; /* present but not URL-encoded: as bad as twice */
    return v;
}

/* lasso's error code as our words (the code itself goes to the log). */
static int lasso_refusal(int rc, struct err *err)
{
    switch (rc) {
    case LASSO_DS_ERROR_SIGNATURE_NOT_FOUND:
        return err_set(err, ERR_CRYPTO, "response is not signed (lasso %d)", rc);
    case LASSO_DS_ERROR_INVALID_SIGNATURE:
    case LASSO_DS_ERROR_SIGNATURE_VERIFICATION_FAILED:
        return err_set(err, ERR_CRYPTO, "signature does not verify with the identity provider's "
                                      "metadata keys (lasso %d)", rc);
    case LASSO_PROFILE_ERROR_STATUS_NOT_SUCCESS:
        return err_set(err, ERR_CRYPTO, "Status is not Success (lasso %d)", rc);
    case LASSO_PROFILE_ERROR_MISSING_ISSUER:
    case LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND:
        return err_set(err, ERR_CRYPTO, "Issuer is not the identity provider (lasso %d)", rc);
    default:
        return err_set(err, ERR_CRYPTO, "response refused by the SAML library (lasso %d)", rc);
    }
}

int saml_acs(struct saml_idp *const *idps, size_t nidps, struct str body,
             struct str login_cookie, const unsigned char key[32], int64_t now_s,
             struct saml_result *out, struct err *err)
{
    memset(out, 0, sizeof *out);
    xml_quiet_thread();
    if (body.len > SAML_BODY_MAX) {
        return err_set(err, ERR_LIMIT, "ACS body over %d bytes", SAML_BODY_MAX);
    }
    bool dup = false, dup2 = false;
    char *b64 = form_value(body, "SAMLResponse", &dup);
    char *relay = form_value(body, "RelayState", &dup2);
    int rc = 0;
    size_t xlen = 0;
    unsigned char *xml = NULL;
    xmlDoc *doc = NULL;
    struct shape sh = { 0 };
    struct login_state ls = { 0 };
    bool have_state = false;
    struct saml_idp *x = NULL;
    LassoLogin *l = NULL;
    char *clean = NULL;

    if (b64 == NULL || dup2) {
        rc = err_set(err, ERR_PARSE, dup || dup2 ? "SAMLResponse or RelayState given twice or "
                                                   "badly encoded"
                                                 : "no SAMLResponse in the POST");
        goto out;
    }
    xml = b64_decode(str_from(b64), &xlen);
    if (xml == NULL) {
        rc = err_set(err, ERR_PARSE, "SAMLResponse is not base64");
        goto out;
    }
    if (xlen > XML_MAX || memchr(xml, '\0', xlen) != NULL) {
        rc = err_set(err, ERR_PARSE, "SAMLResponse too large or binary");
        goto out;
    }
    /* XXE: no DOCTYPE at all, whatever it declares (checked on the bytes and
     * on the tree; the parser never loads a DTD, substitutes an entity or
     * touches the network). */
    if (strstr((const char *)xml, "<!DOCTYPE") || strstr((const char *)xml, "<!ENTITY")) {
        rc = err_set(err, ERR_PARSE, "DOCTYPE or ENTITY declaration in the message (XXE)");
        goto out;
    }
    doc = xmlReadMemory((const char *)xml, (int)xlen, "response.xml", NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (doc == NULL) {
        rc = err_set(err, ERR_PARSE, "SAMLResponse is not well-formed XML");
        goto out;
    }
    if (doc->intSubset != NULL || doc->extSubset != NULL) {
        rc = err_set(err, ERR_PARSE, "DOCTYPE in the message (XXE)");
        goto out;
    }
    /* The login state of this browser picks the IdP; without one, only an
     * IdP that allows unsolicited responses (found by the Issuer). */
    if (login_cookie.len > 0) {
        have_state = login_state_open(key, login_cookie, now_s, &ls);
        if (!have_state) {
            rc = err_set(err, ERR_CRYPTO, "login state expired or not ours");
            goto out;
        }
        x = idp_by(idps, nidps, ls.idp, false);
        if (x == NULL) {
            rc = err_set(err, ERR_CRYPTO, "login state for an identity provider not configured");
            goto out;
        }
    }
    if (x != NULL && x->idp_entity_id == NULL) {
        rc = err_set(err, ERR_IO, "metadata of %s not loaded yet", x->id);
        goto out;
    }
    if (check_shape(doc, x, x ? x->allow_sha1 : false, &sh, err) != 0) {
        if (x == NULL) {
            /* The algorithm verdict needs the IdP: retry with its setting. */
            struct saml_idp *y = idp_by(idps, nidps, sh.issuer, true);
            if (y != NULL && y->allow_sha1) {
                shape_fini(&sh);
                memset(&sh, 0, sizeof sh);
                memset(err, 0, sizeof *err);
                if (check_shape(doc, y, true, &sh, err) == 0) {
                    goto shaped;
                }
            }
        }
        rc = -1;
        goto out;
    }
shaped:
    if (x == NULL) {
        x = idp_by(idps, nidps, sh.issuer, true);
        if (x == NULL) {
            rc = err_set(err, ERR_CRYPTO, "unsolicited response from an unknown Issuer");
            goto out;
        }
        if (!x->allow_unsolicited) {
            rc = err_set(err, ERR_CRYPTO, "unsolicited response (no login state in this browser; "
                                        "allow_unsolicited is off at %s)", x->id);
            goto out;
        }
    }
    if (sh.issuer == NULL || strcmp(sh.issuer, x->idp_entity_id) != 0) {
        rc = err_set(err, ERR_CRYPTO, "Issuer is not the identity provider's entity id");
        goto out;
    }
    /* RelayState: the opaque handle of this login; never a URL we follow. */
    if (have_state) {
        if (relay == NULL || strcmp(relay, ls.handle) != 0) {
            rc = err_set(err, ERR_CRYPTO, "RelayState does not match this browser's sign-in "
                                        "(open redirect or login CSRF)");
            goto out;
        }
    } else if (relay != NULL && relay[0] != '\0') {
        rc = err_set(err, ERR_CRYPTO, "RelayState in an unsolicited response is not followed "
                                    "(open redirect)");
        goto out;
    }
    if (x->want_assertions_encrypted && sh.encrypted == NULL) {
        rc = err_set(err, ERR_CRYPTO, "plain assertion refused (want_assertions_encrypted)");
        goto out;
    }
    if (sh.assertion != NULL) {
        if (x->want_assertions_signed && sh.assert_sig == NULL) {
            rc = err_set(err, ERR_CRYPTO, "assertion is not signed (want_assertions_signed)");
            goto out;
        }
        if (sh.assert_sig == NULL && sh.resp_sig == NULL) {
            rc = err_set(err, ERR_CRYPTO, "response is not signed");
            goto out;
        }
    }
    /* lasso reads the very bytes we checked. */
    clean = codec_b64_encode(xml, xlen);
    pthread_mutex_lock(&x->mu);
    l = x->server ? lasso_login_new(x->server) : NULL;
    int lrc = l ? lasso_login_process_authn_response_msg(l, clean) : -1;
    LassoSamlp2Response *r =
        l && LASSO_IS_SAMLP2_RESPONSE(LASSO_PROFILE(l)->response)
            ? LASSO_SAMLP2_RESPONSE(LASSO_PROFILE(l)->response)
            : NULL;
    if (lrc == 0 && r != NULL && LASSO_PROFILE(l)->signature_status != 0 &&
        sh.assertion != NULL && sh.assert_sig == NULL) {
        lrc = LASSO_DS_ERROR_SIGNATURE_NOT_FOUND;
    }
    GList *as = r ? r->Assertion : NULL;
    if (lrc != 0) {
        rc = lasso_refusal(lrc, err);
    } else if (r == NULL || as == NULL || as->next != NULL ||
               !LASSO_IS_SAML2_ASSERTION(as->data)) {
        rc = err_set(err, ERR_CRYPTO, "not exactly one assertion after verification");
    } else if (sh.assertion != NULL && (sh.assert_id == NULL ||
                                         LASSO_SAML2_ASSERTION(as->data)->ID == NULL ||
                                         strcmp(sh.assert_id,
                                                LASSO_SAML2_ASSERTION(as->data)->ID) != 0)) {
        rc = err_set(err, ERR_CRYPTO, "verified assertion is not the one in the message");
    } else if (sh.encrypted != NULL &&
               check_decrypted(x, LASSO_SAML2_ASSERTION(as->data), err) != 0) {
        rc = -1;
    } else {
        LassoSaml2Assertion *a = LASSO_SAML2_ASSERTION(as->data);
        rc = check_assertion(x, r, a, have_state ? ls.rid : NULL, now_s, err);
        LassoSaml2NameID *nid = a->Subject ? a->Subject->NameID : NULL;
        if (rc == 0 && (nid == NULL || nid->content == NULL || nid->content[0] == '\0')) {
            rc = err_set(err, ERR_CRYPTO, "assertion without NameID");
        }
        if (rc == 0 && a->ID == NULL) {
            rc = err_set(err, ERR_CRYPTO, "assertion without ID");
        }
        if (rc == 0) {
            out->idp = x;
            out->name_id = xstrdup(nid->content);
            char *uattr = x->attr_user ? first_value(a, x->attr_user) : NULL;
            const char *user = uattr ? uattr : out->name_id;
            out->user_key = xasprintf("%s#%s", x->idp_entity_id, user);
            free(uattr);
            out->email = first_value(a, x->attr_email);
            out->name = first_value(a, x->attr_name);
            json_t *g = attr_values(a, x->attr_groups);
            out->groups_json = json_dumps(g, JSON_COMPACT);
            json_decref(g);
            json_t *c = all_attributes(a);
            json_object_set_new(c, "nameid", json_string(out->name_id));
            json_object_set_new(c, "sub", json_string(user));
            json_object_set_new(c, "iss", json_string(x->idp_entity_id));
            if (out->email) {
                json_object_set_new(c, "email", json_string(out->email));
            }
            if (out->name) {
                json_object_set_new(c, "name", json_string(out->name));
            }
            out->claims_json = json_dumps(c, JSON_COMPACT);
            json_decref(c);
            LassoSaml2AuthnStatement *st =
                a->AuthnStatement ? a->AuthnStatement->data : NULL;
            out->session_index =
                st && LASSO_IS_SAML2_AUTHN_STATEMENT(st) && st->SessionIndex
                    ? xstrdup(st->SessionIndex)
                    : NULL;
            out->assertion_id = xstrdup(a->ID);
            int64_t na = a->Conditions ? iso_time(a->Conditions->NotOnOrAfter) : -1;
            LassoSaml2SubjectConfirmationData *scd =
                lasso_saml2_assertion_get_subject_confirmation_data(a, FALSE);
            int64_t sna = scd ? iso_time(scd->NotOnOrAfter) : -1;
            int64_t exp = na > sna ? na : sna;
            out->assertion_exp_s = (exp > 0 ? exp : now_s + 3600) + x->clock_skew_s;
            out->return_path = xstrdup(have_state ? ls.rd : "/");
            out->login_state = have_state ? xstrdup(ls.rid) : NULL;
            if (out->groups_json == NULL || out->claims_json == NULL) {
                rc = err_set(err, ERR_NOMEM, "out of memory");
            }
        }
    }
    if (l != NULL) {
        lasso_login_destroy(l);
    }
    pthread_mutex_unlock(&x->mu);
out:
    if (rc != 0) {
        saml_result_fini(out);
    }
    free(clean);
    shape_fini(&sh);
    login_state_fini(&ls);
    xmlFreeDoc(doc);
    free(xml);
    free(b64);
    free(relay);
    return rc != 0 ? -1 : 0;
}

/* ---- logout ------------------------------------------------------------- */

/* A lasso session holding what the SLO messages name: the NameID and the
 * SessionIndex of our sign-in (we keep these, not the assertion). */
static LassoSession *slo_session(const struct saml_idp *x, const char *name_id,
                                 const char *session_index)
{
    LassoSession *se = lasso_session_new();
    LassoSaml2Assertion *as = LASSO_SAML2_ASSERTION(lasso_saml2_assertion_new());
    as->Subject = LASSO_SAML2_SUBJECT(lasso_saml2_subject_new());
    as->Subject->NameID =
        LASSO_SAML2_NAME_ID(lasso_saml2_name_id_new_with_string((char *)name_id));
    if (session_index != NULL) {
        LassoSaml2AuthnStatement *st =
            LASSO_SAML2_AUTHN_STATEMENT(lasso_saml2_authn_statement_new());
        lasso_assign_string(st->SessionIndex, session_index);
        as->AuthnStatement = g_list_append(NULL, st);
    }
    lasso_session_add_assertion(se, x->idp_entity_id, LASSO_NODE(as));
    g_object_unref(as);
    return se;
}

static void slo_set_session(LassoProfile *p, const struct saml_idp *x, const char *name_id,
                            const char *session_index)
{
    LassoSession *se = slo_session(x, name_id, session_index);
    gchar *dump = lasso_session_dump(se);
    lasso_profile_set_session_from_dump(p, dump);
    g_free(dump);
    lasso_session_destroy(se);
}

char *saml_logout_url(const struct saml_idp *cx, const char *name_id, const char *session_index)
{
    struct saml_idp *x = (struct saml_idp *)cx;
    if (name_id == NULL) {
        return NULL;
    }
    char *url = NULL;
    pthread_mutex_lock(&x->mu);
    if (x->idp_slo_url == NULL || x->server == NULL) {
        pthread_mutex_unlock(&x->mu);
        return NULL;
    }
    LassoLogout *lo = lasso_logout_new(x->server);
    if (lo != NULL) {
        slo_set_session(LASSO_PROFILE(lo), x, name_id, session_index);
        lasso_profile_set_signature_hint(LASSO_PROFILE(lo), LASSO_PROFILE_SIGNATURE_HINT_FORCE);
        int rc = lasso_logout_init_request(lo, x->idp_entity_id, LASSO_HTTP_METHOD_REDIRECT);
        if (rc == 0) {
            rc = lasso_logout_build_request_msg(lo);
        }
        if (rc == 0 && LASSO_PROFILE(lo)->msg_url != NULL) {
            url = xstrdup(LASSO_PROFILE(lo)->msg_url);
        } else {
            log_warn("saml", "LogoutRequest to %s not built (lasso %d)", x->id, rc);
        }
    }
    if (lo != NULL) {
        lasso_logout_destroy(lo);
    }
    pthread_mutex_unlock(&x->mu);
    return url;
}

void saml_slo_fini(struct saml_slo *o)
{
    free(o->name_id);
    free(o->session_index);
    free(o->reply_url);
    free(o->user_key);
    memset(o, 0, sizeof *o);
}

/* The SAMLRequest or SAMLResponse of an HTTP-Redirect query, to lasso as the
 * whole query (it checks Signature over SAMLRequest/RelayState/SigAlg). */
/* Why lasso refused a logout message, in words for the log. */
static const char *logout_refusal(int lrc)
{
    if (lrc == LASSO_DS_ERROR_SIGNATURE_NOT_FOUND || lrc == LASSO_DS_ERROR_INVALID_SIGALG) {
        return "not signed";
    }
    if (lrc == LASSO_DS_ERROR_INVALID_SIGNATURE ||
        lrc == LASSO_DS_ERROR_SIGNATURE_VERIFICATION_FAILED) {
        return "bad signature";
    }
    return "malformed";
}

int saml_slo(struct saml_idp *const *idps, size_t nidps, struct str query, int64_t now_s,
             struct saml_slo *out, struct err *err)
{
    memset(out, 0, sizeof *out);
    xml_quiet_thread();
    if (query.len == 0 || query.len > 64 * 1024) {
        return err_set(err, ERR_PARSE, "no SAML message in the query");
    }
    struct str raw;
    bool dup = false;
    bool is_req = codec_form_get(query, "SAMLRequest", &raw, &dup) && !dup;
    bool is_resp = !is_req && codec_form_get(query, "SAMLResponse", &raw, &dup) && !dup;
    if (!is_req && !is_resp) {
        return err_set(err, ERR_PARSE, "no single SAMLRequest or SAMLResponse in the query");
    }
    /* The redirect binding's algorithm, as for the ACS (SHA-1 only with
     * allow_sha1, checked per IdP below). */
    char *sigalg = NULL;
    if (codec_form_get(query, "SigAlg", &raw, &dup) && !dup) {
        sigalg = codec_url_decode(raw, NULL);
    }
    char *q = xstrndup(query.p, query.len);
    int rc = -1, lrc = LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND;
    for (size_t i = 0; i < nidps && lrc == LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND; i++) {
        struct saml_idp *x = idps[i];
        pthread_mutex_lock(&x->mu);
        LassoLogout *lo = x->server ? lasso_logout_new(x->server) : NULL;
        if (lo == NULL) {
            pthread_mutex_unlock(&x->mu);
            continue;
        }
        lasso_profile_set_signature_verify_hint(LASSO_PROFILE(lo),
                                                LASSO_PROFILE_SIGNATURE_VERIFY_HINT_FORCE);
        lasso_profile_set_signature_hint(LASSO_PROFILE(lo), LASSO_PROFILE_SIGNATURE_HINT_FORCE);
        lrc = is_req ? lasso_logout_process_request_msg(lo, q)
                     : lasso_logout_process_response_msg(lo, q);
        if (lrc == LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND ||
            lrc == LASSO_PROFILE_ERROR_MISSING_ISSUER) {
            lrc = LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND;
        } else if (sigalg != NULL && !in_list(sigalg, sig_algs) &&
                   !(x->allow_sha1 && sha1_alg(sigalg, false))) {
            err_set(err, ERR_CRYPTO, "logout message signature algorithm %.80s refused", sigalg);
        } else if (is_resp) {
            /* Our session ended before we asked the IdP: its answer only says
             * how the IdP fared (lasso keeps no request state here); it must
             * still be well-formed and signed by the IdP. */
            out->idp = x;
            out->is_response = true;
            if (lrc == 0 || lrc == LASSO_PROFILE_ERROR_STATUS_NOT_SUCCESS) {
                rc = 0; /* a failure at the IdP still ends here (ours is gone) */
            } else {
                err_set(err, ERR_CRYPTO, "LogoutResponse refused: %s (lasso %d)",
                        logout_refusal(lrc), lrc);
            }
        } else if (lrc != 0) {
            err_set(err, ERR_CRYPTO, "LogoutRequest refused: %s (lasso %d)",
                    logout_refusal(lrc), lrc);
        } else {
            LassoSamlp2LogoutRequest *lr =
                LASSO_IS_SAMLP2_LOGOUT_REQUEST(LASSO_PROFILE(lo)->request)
                    ? LASSO_SAMLP2_LOGOUT_REQUEST(LASSO_PROFILE(lo)->request)
                    : NULL;
            const char *dest = lr ? lr->parent.Destination : NULL;
            int64_t noa = lr && lr->NotOnOrAfter ? iso_time(lr->NotOnOrAfter) : 0;
            if (lr == NULL || lr->NameID == NULL || lr->NameID->content == NULL) {
                err_set(err, ERR_PARSE, "LogoutRequest without NameID");
            } else if (dest != NULL && strcmp(dest, x->slo_url) != 0) {
                err_set(err, ERR_CRYPTO, "LogoutRequest Destination is not our SLO URL");
            } else if (noa < 0 || (noa > 0 && now_s >= noa + x->clock_skew_s)) {
                err_set(err, ERR_CRYPTO, "LogoutRequest has expired");
            } else {
                out->idp = x;
                out->name_id = xstrdup(lr->NameID->content);
                GList *sx = lasso_samlp2_logout_request_get_session_indexes(lr);
                const char *si = sx ? sx->data : lr->SessionIndex;
                out->session_index = si ? xstrdup(si) : NULL;
                g_list_free_full(sx, g_free);
                out->user_key = xasprintf("%s#%s", x->idp_entity_id, out->name_id);
                /* Our answer: a signed LogoutResponse back to the IdP. */
                slo_set_session(LASSO_PROFILE(lo), x, out->name_id, out->session_index);
                int vrc = lasso_logout_validate_request(lo);
                if (lasso_logout_build_response_msg(lo) == 0 && LASSO_PROFILE(lo)->msg_url) {
                    out->reply_url = xstrdup(LASSO_PROFILE(lo)->msg_url);
                } else {
                    log_warn("saml", "LogoutResponse to %s not built (lasso %d)", x->id, vrc);
                }
                rc = 0;
            }
        }
        lasso_logout_destroy(lo);
        pthread_mutex_unlock(&x->mu);
    }
    if (rc != 0 && lrc == LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND) {
        err_set(err, ERR_CRYPTO, "SAML logout message from an unknown Issuer");
    }
    free(q);
    free(sigalg);
    if (rc != 0) {
        saml_slo_fini(out);
    }
    return rc;
}
