/* authn/saml_acs.c - the SAML assertion consumer service (see saml.h).
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
 * Every check of that order is in this file, next to the one before it, so
 * that a reviewer reads the whole ACS in one file. */
#include "saml.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "saml_int.h"

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

const char *const saml_sig_algs[] = { "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
                                      "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
                                      "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
                                      "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
                                      "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
                                      "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
                                      NULL };
static const char *const digest_algs[] = { "http://www.w3.org/2001/04/xmlenc#sha256",
                                           "http://www.w3.org/2001/04/xmldsig-more#sha384",
                                           "http://www.w3.org/2001/04/xmlenc#sha512", NULL };
static const char *const transforms[] = { "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
                                          "http://www.w3.org/2001/10/xml-exc-c14n#",
                                          "http://www.w3.org/TR/2001/REC-xml-c14n-20010315", NULL };

bool saml_in_list(const char *v, const char *const *l)
{
    for (size_t i = 0; v != NULL && l[i] != NULL; i++) {
        if (strcmp(v, l[i]) == 0) {
            return true;
        }
    }
    return false;
}

bool saml_sha1_alg(const char *v, bool digest)
{
    return v != NULL && strcmp(v, digest ? "http://www.w3.org/2000/09/xmldsig#sha1"
                                         : "http://www.w3.org/2000/09/xmldsig#rsa-sha1") == 0;
}

/* The Algorithm of a SignatureMethod (digest false) or DigestMethod (digest
 * true) element: one of list, or SHA-1 when allowed. false with err set. */
static bool alg_allowed(const xmlNode *n, const char *const *list, bool allow_sha1, bool digest,
                        struct err *err)
{
    char *alg = saml_attr(n, "Algorithm");
    bool ok = saml_in_list(alg, list) || (allow_sha1 && saml_sha1_alg(alg, digest));
    if (!ok) {
        err_set(err, ERR_PARSE, "%s algorithm %s refused%s", digest ? "digest" : "signature",
                alg ? alg : "(none)",
                saml_sha1_alg(alg, digest) ? " (SHA-1; allow_sha1 is off)" : "");
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
        if (saml_is_el(c, NS_DS, "SignedInfo")) {
            if (si != NULL) {
                return err_set(err, ERR_PARSE, "signature with two SignedInfo") == 0;
            }
            si = c;
        } else if (saml_is_el(c, NS_DS, "Object")) {
            return err_set(err, ERR_PARSE,
                           "signature carries an Object (XML signature "
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
        if (saml_is_el(c, NS_DS, "SignatureMethod")) {
            if (!alg_allowed(c, saml_sig_algs, allow_sha1, false, err)) {
                return false;
            }
        } else if (saml_is_el(c, NS_DS, "Reference")) {
            nref++;
            char *uri = saml_attr(c, "URI");
            bool ok = uri != NULL && uri[0] == '#' && parent_id != NULL &&
                      strcmp(uri + 1, parent_id) == 0;
            free(uri);
            if (!ok) {
                return err_set(err, ERR_PARSE,
                               "signature references another element than "
                               "the one it is in (XML signature wrapping)") == 0;
            }
            for (const xmlNode *r = c->children; r != NULL; r = r->next) {
                if (saml_is_el(r, NS_DS, "DigestMethod")) {
                    if (!alg_allowed(r, digest_algs, allow_sha1, true, err)) {
                        return false;
                    }
                } else if (saml_is_el(r, NS_DS, "Transforms")) {
                    for (const xmlNode *t = r->children; t != NULL; t = t->next) {
                        if (!saml_is_el(t, NS_DS, "Transform")) {
                            continue;
                        }
                        char *alg = saml_attr(t, "Algorithm");
                        bool tok = saml_in_list(alg, transforms);
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
        if (saml_is_el(n, NS_SAML, "Assertion")) {
            w->nassert++;
        } else if (saml_is_el(n, NS_SAML, "EncryptedAssertion")) {
            w->nenc++;
        } else if (saml_is_el(n, NS_DS, "Signature")) {
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
    if (!saml_is_el(s->root, NS_SAMLP, "Response")) {
        return err_set(err, ERR_PARSE, "the message is not a samlp:Response");
    }
    /* A failure answer carries no assertion: say that, not "0 assertions". */
    const xmlNode *st =
        saml_child_el(saml_child_el(s->root, NS_SAMLP, "Status"), NS_SAMLP, "StatusCode");
    if (st == NULL || !saml_attr_is(st, "Value", STATUS_SUCCESS)) {
        char *v = st ? saml_attr(st, "Value") : NULL;
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
        return err_set(err, ERR_PARSE,
                       "%zu assertions in the message (exactly one expected; "
                       "XML signature wrapping)",
                       w.nassert + w.nenc);
    }
    /* The one assertion is a child of the Response, nowhere deeper
     * (Extensions, Object, another Assertion). */
    s->assertion = saml_child_el(s->root, NS_SAML, "Assertion");
    s->encrypted = saml_child_el(s->root, NS_SAML, "EncryptedAssertion");
    if (s->assertion == NULL && s->encrypted == NULL) {
        return err_set(err, ERR_PARSE,
                       "the assertion is not a child of the Response (moved "
                       "into Extensions, Object or another element: XML "
                       "signature wrapping)");
    }
    s->resp_id = saml_attr(s->root, "ID");
    s->assert_id = s->assertion ? saml_attr(s->assertion, "ID") : NULL;
    size_t placed = 0;
    for (const xmlNode *c = s->root->children; c != NULL; c = c->next) {
        if (saml_is_el(c, NS_DS, "Signature")) {
            if (s->resp_sig != NULL) {
                return err_set(err, ERR_PARSE, "two signatures on the Response");
            }
            s->resp_sig = c;
            placed++;
        }
    }
    for (const xmlNode *c = s->assertion ? s->assertion->children : NULL; c != NULL; c = c->next) {
        if (saml_is_el(c, NS_DS, "Signature")) {
            if (s->assert_sig != NULL) {
                return err_set(err, ERR_PARSE, "two signatures on the assertion");
            }
            s->assert_sig = c;
            placed++;
        }
    }
    if (placed != w.nsig) {
        return err_set(err, ERR_PARSE,
                       "a signature outside the Response and Assertion "
                       "(XML signature wrapping)");
    }
    if (s->resp_sig && !check_signature(s->resp_sig, s->resp_id, allow_sha1, err)) {
        return -1;
    }
    if (s->assert_sig && !check_signature(s->assert_sig, s->assert_id, allow_sha1, err)) {
        return -1;
    }
    const xmlNode *iss = saml_child_el(s->root, NS_SAML, "Issuer");
    if (iss == NULL && s->assertion != NULL) {
        iss = saml_child_el(s->assertion, NS_SAML, "Issuer");
    }
    s->issuer = saml_text_of(iss);
    return 0;
}

/* An EncryptedAssertion, once lasso decrypted it: the same structure rules
 * inside (no nested assertion, unique IDs, no comments), and its own
 * signature when want_assertions_signed (lasso verified it when the Response
 * was not signed; the algorithms are ours to check). */
static int check_decrypted(const struct saml_idp *x, LassoSaml2Assertion *a, struct err *err)
{
    xmlNode *n = lasso_node_get_original_xmlnode(LASSO_NODE(a));
    if (n == NULL || !saml_is_el(n, NS_SAML, "Assertion")) {
        return err_set(err, ERR_CRYPTO, "decrypted assertion unreadable");
    }
    struct walk w = { 0 };
    walk_tree(n->children, &w);
    for (size_t i = 0; i < w.nids; i++) {
        free(w.ids[i]);
    }
    free(w.ids);
    if (w.nassert + w.nenc != 0 || w.dup || w.comment || w.pi) {
        return err_set(err, ERR_CRYPTO,
                       "decrypted assertion: nested assertion, repeated ID, "
                       "comment or processing instruction");
    }
    const xmlNode *sig = saml_child_el(n, NS_DS, "Signature");
    if (w.nsig > (sig ? 1u : 0u)) {
        return err_set(err, ERR_CRYPTO, "decrypted assertion: a signature out of place");
    }
    if (sig == NULL) {
        return x->want_assertions_signed
                   ? err_set(err, ERR_CRYPTO, "assertion is not signed (want_assertions_signed)")
                   : 0;
    }
    char *id = saml_attr(n, "ID");
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
static int check_assertion(const struct saml_idp *x, LassoSamlp2Response *r, LassoSaml2Assertion *a,
                           const char *want_rid, int64_t now_s, struct err *err)
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
            return err_set(err, ERR_CRYPTO,
                           irt ? "InResponseTo does not match the request sent "
                                 "for this browser"
                               : "response without InResponseTo to a request "
                                 "sent for this browser");
        }
    } else if (irt != NULL) {
        return err_set(err, ERR_CRYPTO,
                       "InResponseTo names a request this browser did not make "
                       "(no login state)");
    }
    /* Conditions: times with the skew, an AudienceRestriction naming us. */
    if (a->Conditions == NULL) {
        return err_set(err, ERR_CRYPTO, "assertion without Conditions");
    }
    int64_t nb = a->Conditions->NotBefore ? saml_iso_time(a->Conditions->NotBefore) : 0;
    int64_t na = a->Conditions->NotOnOrAfter ? saml_iso_time(a->Conditions->NotOnOrAfter) : 0;
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
    int64_t scd_exp = saml_iso_time(scd->NotOnOrAfter);
    if (scd_exp < 0 || now_s >= scd_exp + x->clock_skew_s) {
        return err_set(err, ERR_CRYPTO, "SubjectConfirmationData has expired (NotOnOrAfter)");
    }
    int64_t scd_nb = scd->NotBefore ? saml_iso_time(scd->NotBefore) : 0;
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
        return err_set(err, ERR_CRYPTO,
                       "signature does not verify with the identity provider's "
                       "metadata keys (lasso %d)",
                       rc);
    case LASSO_PROFILE_ERROR_STATUS_NOT_SUCCESS:
        return err_set(err, ERR_CRYPTO, "Status is not Success (lasso %d)", rc);
    case LASSO_PROFILE_ERROR_MISSING_ISSUER:
    case LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND:
        return err_set(err, ERR_CRYPTO, "Issuer is not the identity provider (lasso %d)", rc);
    default:
        return err_set(err, ERR_CRYPTO, "response refused by the SAML library (lasso %d)", rc);
    }
}

int saml_acs(struct saml_idp *const *idps, size_t nidps, struct str body, struct str login_cookie,
             const unsigned char key[32], int64_t now_s, struct saml_result *out, struct err *err)
{
    memset(out, 0, sizeof *out);
    saml_xml_quiet_thread();
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
        rc = err_set(err, ERR_PARSE,
                     dup || dup2 ? "SAMLResponse or RelayState given twice or "
                                   "badly encoded"
                                 : "no SAMLResponse in the POST");
        goto out;
    }
    xml = saml_b64_decode(str_from(b64), &xlen);
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
            rc = err_set(err, ERR_CRYPTO,
                         "unsolicited response (no login state in this browser; "
                         "allow_unsolicited is off at %s)",
                         x->id);
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
            rc = err_set(err, ERR_CRYPTO,
                         "RelayState does not match this browser's sign-in "
                         "(open redirect or login CSRF)");
            goto out;
        }
    } else if (relay != NULL && relay[0] != '\0') {
        rc = err_set(err, ERR_CRYPTO,
                     "RelayState in an unsolicited response is not followed "
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
    LassoSamlp2Response *r = l && LASSO_IS_SAMLP2_RESPONSE(LASSO_PROFILE(l)->response)
                                 ? LASSO_SAMLP2_RESPONSE(LASSO_PROFILE(l)->response)
                                 : NULL;
    if (lrc == 0 && r != NULL && LASSO_PROFILE(l)->signature_status != 0 && sh.assertion != NULL &&
        sh.assert_sig == NULL) {
        lrc = LASSO_DS_ERROR_SIGNATURE_NOT_FOUND;
    }
    GList *as = r ? r->Assertion : NULL;
    if (lrc != 0) {
        rc = lasso_refusal(lrc, err);
    } else if (r == NULL || as == NULL || as->next != NULL || !LASSO_IS_SAML2_ASSERTION(as->data)) {
        rc = err_set(err, ERR_CRYPTO, "not exactly one assertion after verification");
    } else if (sh.assertion != NULL &&
               (sh.assert_id == NULL || LASSO_SAML2_ASSERTION(as->data)->ID == NULL ||
                strcmp(sh.assert_id, LASSO_SAML2_ASSERTION(as->data)->ID) != 0)) {
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
            LassoSaml2AuthnStatement *st = a->AuthnStatement ? a->AuthnStatement->data : NULL;
            out->session_index = st && LASSO_IS_SAML2_AUTHN_STATEMENT(st) && st->SessionIndex
                                     ? xstrdup(st->SessionIndex)
                                     : NULL;
            out->assertion_id = xstrdup(a->ID);
            int64_t na = a->Conditions ? saml_iso_time(a->Conditions->NotOnOrAfter) : -1;
            LassoSaml2SubjectConfirmationData *scd =
                lasso_saml2_assertion_get_subject_confirmation_data(a, FALSE);
            int64_t sna = scd ? saml_iso_time(scd->NotOnOrAfter) : -1;
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
