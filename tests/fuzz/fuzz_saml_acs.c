/* Fuzz target for the SAML ACS and SLO inputs of authn/saml.c: any bytes as
 * the ACS POST body, as the Response XML itself (base64 in a SAMLResponse
 * form, with and without a login state), and as the SLO query. The key pair
 * and the IdP metadata are made at start (OpenSSL), so no input can carry a
 * valid signature. Invariants: nothing is ever accepted (no session could be
 * made from these bytes), every refusal has a reason, no crash or leak. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "authn/codec.h"
#include "authn/saml.h"

#include "replay.h"

static char *pem_of(EVP_PKEY *k, X509 *c)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (k != NULL) {
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    } else {
        PEM_write_bio_X509(b, c);
    }
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    char *out = strndup(p, (size_t)n);
    BIO_free(b);
    return out;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(text, f);
    fclose(f);
}

static struct saml_idp *idps[2];
static char tmpdir[] = "/tmp/gh-fuzz-saml-XXXXXX";

static void cleanup(void)
{
    static const char *const names[] = { "sp.key", "sp.crt", "idp.xml" };
    char path[512];
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
        unlink(path);
    }
    rmdir(tmpdir);
}

static void setup(void)
{
    EVP_PKEY *k = EVP_RSA_gen(2048);
    X509 *c = X509_new();
    CHECK(k != NULL && c != NULL);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 1);
    X509_gmtime_adj(X509_getm_notBefore(c), 0);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400);
    X509_set_pubkey(c, k);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC,
                               (const unsigned char *)"fuzz", -1, -1, 0);
    X509_set_issuer_name(c, X509_get_subject_name(c));
    CHECK(X509_sign(c, k, EVP_sha256()) > 0);
    char *key = pem_of(k, NULL), *crt = pem_of(NULL, c);
    char *dir = tmpdir;
    CHECK(mkdtemp(dir) != NULL);
    atexit(cleanup);
    write_file(dir, "sp.key", key);
    write_file(dir, "sp.crt", crt);
    const char *b = strstr(crt, "-----\n") + 6, *e = strstr(crt, "-----END");
    char *md = NULL;
    size_t mdlen = 0;
    FILE *m = open_memstream(&md, &mdlen);
    fprintf(m,
            "<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" "
            "xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" "
            "entityID=\"https://idp.example/metadata\"><md:IDPSSODescriptor "
            "protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">"
            "<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>"
            "%.*s</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
            "<md:SingleLogoutService "
            "Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" "
            "Location=\"https://idp.example/slo\"/>"
            "<md:SingleSignOnService "
            "Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" "
            "Location=\"https://idp.example/sso\"/></md:IDPSSODescriptor></md:EntityDescriptor>",
            (int)(e - b), b);
    fclose(m);
    write_file(dir, "idp.xml", md);
    free(md);
    free(key);
    free(crt);
    EVP_PKEY_free(k);
    X509_free(c);
    static const char conf[] =
        "- {id: a, type: saml, metadata: idp.xml, sp_key: sp.key, sp_cert: sp.crt, "
        "entity_id: 'https://app.example/.gatehouse/saml/metadata'}\n"
        "- {id: b, type: saml, metadata: idp.xml, sp_key: sp.key, sp_cert: sp.crt, "
        "entity_id: 'https://app.example/.gatehouse/saml/metadata', allow_unsolicited: true, "
        "allow_sha1: true, want_assertions_signed: false}\n";
    char cf[600];
    snprintf(cf, sizeof cf, "%s/gatehouse.yaml", dir);
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_parse(cf, conf, sizeof conf - 1, &d);
    CHECK(doc != NULL);
    for (int i = 0; i < 2; i++) {
        idps[i] = saml_idp_parse(&d, doc->root->items[i], cf, NULL);
        if (idps[i] == NULL) {
            conf_diag_print(&d, stderr);
        }
        CHECK(idps[i] != NULL);
    }
    conf_doc_free(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char key[32] = { 1 };
    if (idps[0] == NULL) {
        setup();
    }
    struct str in = { (const char *)data, size };
    struct saml_result r;
    struct err err = { 0 };

    /* 1. The bytes as the POST body, with no login state. */
    int rc = saml_acs(idps, 2, in, STR_NULL, key, 1800000000, &r, &err);
    CHECK(rc != 0 && err.msg[0] != '\0');

    /* 2. The bytes as the Response XML, in a form, with and without a login
     * state of this process (sealed with key: as a browser would bring). */
    char *b64 = codec_b64_encode(data, size);
    struct sbuf f = { 0 };
    codec_buf_adds(&f, "SAMLResponse=");
    codec_buf_add_urlenc(&f, str_from(b64));
    free(b64);
    memset(&err, 0, sizeof err);
    rc = saml_acs(idps, 2, (struct str){ f.p, f.len }, STR_NULL, key, 1800000000, &r, &err);
    CHECK(rc != 0 && err.msg[0] != '\0');
    char *url = NULL, *cookie = NULL;
    CHECK(saml_login_start(idps[0], STR("/"), key, 1800000000, &url, &cookie, &err) == 0);
    memset(&err, 0, sizeof err);
    rc = saml_acs(idps, 2, (struct str){ f.p, f.len }, str_from(cookie), key, 1800000000, &r, &err);
    CHECK(rc != 0 && err.msg[0] != '\0');
    free(url);
    free(cookie);
    codec_buf_fini(&f);

    /* 3. The bytes as the single logout query. */
    struct saml_slo o;
    memset(&err, 0, sizeof err);
    rc = saml_slo(idps, 2, in, 1800000000, &o, &err);
    CHECK(rc != 0);
    return 0;
}
