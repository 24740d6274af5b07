/* authn/saml.h - the SAML 2.0 service provider (lasso) as pure protocol steps.
 * Nothing here touches the network or the session store:
 *
 *   config:   saml_idp_parse          one identity_providers[] entry of type saml
 *   metadata: saml_sp_metadata        the SP metadata XML we publish
 *   login:    saml_login_start        AuthnRequest by HTTP-Redirect + the sealed login state
 *   ACS:      saml_acs                the HTTP-POST Response -> an identity, or a refusal
 *                                      with its own reason (never lasso's text for users)
 *   logout:   saml_logout_url         SP-initiated LogoutRequest by HTTP-Redirect
 *             saml_slo                the IdP's LogoutRequest / LogoutResponse
 *
 * lasso verifies the XML signature with the IdP's metadata keys, the Status and
 * decrypts; this module adds what lasso leaves to us: the structure of the
 * message (one Assertion, unique IDs, signatures only where they belong and
 * referencing their parent: no XML signature wrapping), no DOCTYPE or
 * comments, the algorithms, Destination, Recipient, bearer method,
 * InResponseTo against the login state of this browser, audience, times with
 * the clock skew. The caller records the assertion id as used (replay) and
 * creates the session. Thread-safe on a const saml_idp. */
#ifndef GH_AUTHN_SAML_H
#define GH_AUTHN_SAML_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"

#define SAML_LOGIN_TTL_S 600
#define SAML_BODY_MAX    (256 * 1024) /* the ACS POST body */

struct saml_idp;

/* Parses one identity_providers[] map of type saml (conf_file resolves paths;
 * public_url, when set, gives the default entity id and the ACS URL). Reads the
 * metadata and key files and loads them into lasso (start-up only; `gatehouse
 * check` runs this too). Reports every problem to d with file:line:col. */
struct saml_idp *saml_idp_parse(struct conf_diag *d, const struct conf_node *n,
                                const char *conf_file, const char *public_url);
void saml_idp_free(struct saml_idp *x);

const char *saml_idp_id(const struct saml_idp *x);
/* The IdP's HTTP-Redirect SingleLogoutService (a copy the caller frees), or NULL. */
char *saml_idp_slo_url_dup(struct saml_idp *x);
const char *saml_idp_display_name(const struct saml_idp *x); /* NULL when not set */
const char *saml_idp_acs_url(const struct saml_idp *x);
/* Our SP metadata (entity id, ACS, signing/encryption certificate, SLO),
 * malloc'd; NULL until the IdP's metadata is loaded. */
char *saml_sp_metadata(const struct saml_idp *x);

/* The metadata URL (NULL: a file, loaded at start). The proxy fetches it:
 * saml_metadata_need says whether this caller must fetch it now (it claims
 * the fetch; *usable says whether a loaded metadata can serve meanwhile),
 * saml_metadata_take loads the answer (a failed fetch keeps the old one and
 * is retried after a minute). Refreshed on its cacheDuration, capped by
 * validUntil (5 minutes to a day; an hour by default). */
const char *saml_metadata_url(const struct saml_idp *x);
bool saml_metadata_need(struct saml_idp *x, int64_t now_s, bool *usable);
int saml_metadata_take(struct saml_idp *x, int status, struct str body, int64_t now_s,
                       struct err *err) WARN_UNUSED;

/* Starts a sign-in: an AuthnRequest by HTTP-Redirect (signed with RSA-SHA256
 * when the IdP's metadata asks for signed requests), a RelayState that is an
 * opaque random handle, and the login state sealed with key for the login
 * cookie (IdP, request ID, handle, return path, expiry). return_path must
 * already be a safe same-host path. *url and *cookie are malloc'd. */
int saml_login_start(const struct saml_idp *x, struct str return_path, const unsigned char key[32],
                     int64_t now_s, char **url, char **cookie, struct err *err) WARN_UNUSED;

/* What a verified Response says. Strings are malloc'd (saml_result_fini). */
struct saml_result {
    const struct saml_idp *idp;
    char *user_key; /* "<idp entity id>#<NameID>" */
    char *name_id;
    char *email, *name;
    char *groups_json;       /* JSON array of strings */
    char *claims_json;       /* every attribute: {"name": [values...]} plus nameid */
    char *session_index;     /* AuthnStatement SessionIndex, or NULL */
    char *assertion_id;      /* for the replay cache */
    int64_t assertion_exp_s; /* keep the assertion id until then */
    char *return_path;       /* where to go after sign-in (safe same-host path) */
    char *login_state;       /* the request ID the login cookie named (consumed once), or NULL */
};
void saml_result_fini(struct saml_result *r);

/* The ACS: body is the form (SAMLResponse, RelayState); login_cookie the
 * sealed state from saml_login_start (STR_NULL when the browser has none: an
 * unsolicited response, accepted only with allow_unsolicited). On failure,
 * err->msg says which check refused the message (for the log; never shown
 * to the user) and the return is non-zero. */
int saml_acs(struct saml_idp *const *idps, size_t nidps, struct str body, struct str login_cookie,
             const unsigned char key[32], int64_t now_s, struct saml_result *out,
             struct err *err) WARN_UNUSED;

/* SP-initiated single logout: a LogoutRequest by HTTP-Redirect for the
 * session's NameID and SessionIndex, or NULL when the IdP has no
 * SingleLogoutService (malloc'd). */
char *saml_logout_url(const struct saml_idp *x, const char *name_id, const char *session_index);

/* /.gatehouse/saml/slo (HTTP-Redirect): an IdP's LogoutRequest (signature
 * checked with its metadata keys, Destination, NotOnOrAfter) names the
 * sessions to end (user_key, and session_index when given) and gives the
 * signed LogoutResponse URL to send the browser back with; an IdP's
 * LogoutResponse (is_response) only needs a good signature. */
struct saml_slo {
    const struct saml_idp *idp;
    bool is_response;
    char *name_id, *session_index, *user_key;
    char *reply_url; /* the LogoutResponse to the IdP, or NULL */
};
int saml_slo(struct saml_idp *const *idps, size_t nidps, struct str query, int64_t now_s,
             struct saml_slo *out, struct err *err) WARN_UNUSED;
void saml_slo_fini(struct saml_slo *o);

#endif
