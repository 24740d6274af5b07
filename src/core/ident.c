/* core/ident.c - the shared `--user` matcher (see ident.h). */
#include <string.h>
#include <strings.h>

#include "ident.h"

/* s is "<idp>:<rest>" for this idp: returns rest, else NULL. */
static const char *after_idp(const char *s, const char *idp)
{
    size_t n = idp ? strlen(idp) : 0;
    if (n == 0 || strncmp(s, idp, n) != 0 || s[n] != ':') {
        return NULL;
    }
    return s + n + 1;
}

bool ident_user_match(const char *query, const char *user, const char *email, const char *idp)
{
    if (query == NULL || *query == '\0') {
        return false;
    }
    if (email != NULL && *email != '\0' && strchr(query, '@') != NULL &&
        strcasecmp(query, email) == 0) {
        return true;
    }
    if (user == NULL || *user == '\0') {
        return false;
    }
    if (strcmp(query, user) == 0) {
        return true;
    }
    /* "corp:alice" against a bare "alice" recorded with idp "corp" (the provider
     * that owns bare ids, or a record from before ids were qualified). A bare
     * query never matches a qualified id: "alice" is the user of the provider
     * with bare_user_ids, as in policies, not "corp:alice". */
    const char *qsub = after_idp(query, idp);
    return qsub != NULL && strcmp(qsub, user) == 0;
}
