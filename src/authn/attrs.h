/* authn/attrs.h - private to src/authn: builds the parsed groups and claims
 * of an identity (struct authn_attrs, authn.h) once, from the IdP's JSON. */
#ifndef GH_AUTHN_ATTRS_H
#define GH_AUTHN_ATTRS_H

#include <jansson.h>

#include "authn.h"

/* From JSON values: groups an array of strings (anything else: none), claims
 * an object (NULL: none). The stored texts are made from them. Never NULL
 * (aborts on OOM like xmalloc); the caller holds one reference. */
struct authn_attrs *attrs_from_json(const json_t *groups, const json_t *claims);
/* From the stored texts (session database): they are kept as given. Text
 * that does not parse gives empty lists. NULL means "[]" / "{}". */
struct authn_attrs *attrs_parse(const char *groups_json, const char *claims_json);
struct authn_attrs *attrs_ref(const struct authn_attrs *x);
void attrs_unref(const struct authn_attrs *x); /* NULL is a no-op */
/* A reference held until a's next reset (the request's end). false at the
 * arena's cap (no reference taken). */
bool attrs_hold(struct arena *a, const struct authn_attrs *x);

#endif
