/* authn/authn.h - who is calling: OIDC, SAML, bearer JWT, mTLS device
 * identity, and the browser session that remembers the answer. */
#ifndef GH_AUTHN_AUTHN_H
#define GH_AUTHN_AUTHN_H

const char *authn_module_name(void);

#endif
