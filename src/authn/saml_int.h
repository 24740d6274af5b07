/* authn/saml_int.h - private to saml.c, saml_acs.c and saml_logout.c
 * (saml.h is the public side): the identity provider's state, the namespaces
 * and limits, and the XML and configuration helpers the three share. */
#ifndef GH_AUTHN_SAML_INT_H
#define GH_AUTHN_SAML_INT_H

#include <pthread.h>

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
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "saml.h"
#include "codec.h"

#define NS_SAMLP "urn:oasis:names:tc:SAML:2.0:protocol"
#define NS_SAML  "urn:oasis:names:tc:SAML:2.0:assertion"
#define NS_DS    "http://www.w3.org/2000/09/xmldsig#"

#define CM_BEARER      "urn:oasis:names:tc:SAML:2.0:cm:bearer"
#define STATUS_SUCCESS "urn:oasis:names:tc:SAML:2.0:status:Success"
#define LOGIN_AAD      "gatehouse-saml-login"
#define XML_MAX        (192 * 1024)

struct saml_idp {
    char *id;
    char *display_name;
    char *entity_id; /* ours (SP) */
    char *acs_url;
    char *slo_url;
    char *idp_entity_id;
    char *idp_slo_url; /* the IdP's HTTP-Redirect SingleLogoutService, or NULL */
    char *attr_email, *attr_name, *attr_groups, *attr_user;
    bool want_assertions_signed;
    bool want_assertions_encrypted;
    bool allow_unsolicited;
    bool allow_sha1;
    int64_t clock_skew_s;
    /* The metadata: a file read at start, or a URL fetched by the proxy (never
     * blocking a loop) and refreshed on its cacheDuration / validUntil. The
     * IdP's entity id is learned once: a refresh naming another is refused. */
    char *metadata_url;             /* NULL: the file form */
    char *sp_key_pem, *sp_cert_pem; /* kept to load a fetched metadata */
    pthread_mutex_t mu;  /* guards everything below; lasso objects: one message at a time */
    LassoServer *server; /* NULL until a metadata is loaded */
    bool sign_requests;  /* the IdP's WantAuthnRequestsSigned */
    char *sp_metadata;
    int64_t expires_s; /* URL form: refresh after this */
    int64_t retry_s;   /* URL form: after a failed fetch, not before this */
    bool fetching;
    int64_t fetch_started_s;
};

/* saml.c */
void saml_xml_quiet_thread(void);
bool saml_is_el(const xmlNode *n, const char *ns, const char *name);
const xmlNode *saml_child_el(const xmlNode *p, const char *ns, const char *name);
char *saml_attr(const xmlNode *n, const char *name);
char *saml_text_of(const xmlNode *n);
bool saml_attr_is(const xmlNode *n, const char *name, const char *want);
int64_t saml_iso_time(const char *s);
unsigned char *saml_b64_decode(struct str in, size_t *out_len);

/* saml_acs.c */
extern const char *const saml_sig_algs[];
bool saml_in_list(const char *v, const char *const *l);
bool saml_sha1_alg(const char *v, bool digest);

#endif
