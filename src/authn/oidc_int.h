/* authn/oidc_int.h - private to oidc.c, oidc_token.c and oidc_bearer.c
 * (oidc.h is the public side): the helpers and the bearer cache's
 * constructor the three share. */
#ifndef GH_AUTHN_OIDC_INT_H
#define GH_AUTHN_OIDC_INT_H

#include "oidc.h"
#include "attrs.h"
#include "codec.h"
#include "keys.h"

#define MAX_GROUPS 256

/* oidc.c */
char *oidc_random_token(void);
char *oidc_dup_field(const json_t *j, const char *k);

/* oidc_bearer.c */
struct bearer_cache *oidc_bearer_cache_new(void);
void oidc_bearer_cache_free(struct bearer_cache *c);

#endif
