/* authn/authn_bearer.c - identities: from a session's view or an OIDC
 * sign-in, and from a bearer JWT (provider by issuer, revocation, key binding,
 * the per-thread cache of verified tokens, verification with the provider's
 * key set). */
#include "authn.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "authn_int.h"

/* ---- identity from a session or a bearer token ------------------------- */

void an_identity_from_view(struct authn_out *out, const struct session_view *v, struct arena *a)
{
    out->id.user_key = v->user_key;
    out->id.email = v->email;
    out->id.name = v->name;
    out->id.idp = v->idp;
    out->id.attrs = v->attrs;
    out->id.session_id = an_adup(a, v->id);
    out->id.sid = v->sid;
    out->id.session_expires_ms = v->expires_ms;
    out->id.session_idle_expires_ms =
        v->idle_expires_ms < v->expires_ms ? v->idle_expires_ms : v->expires_ms;
    const char *hash = v->user_key ? strchr(v->user_key, '#') : NULL;
    out->id.sub = hash ? hash + 1 : NULL;
    out->id.bearer = false;
}

bool an_identity_from_oidc(struct authn_out *out, const struct oidc_identity *id, const char *idp,
                           struct arena *a)
{
    out->id.user_key = an_adup(a, id->user_key);
    out->id.sub = an_adup(a, id->sub);
    out->id.email = an_adup(a, id->email);
    out->id.name = an_adup(a, id->name);
    out->id.idp = an_adup(a, idp);
    out->id.sid = an_adup(a, id->sid);
    bool held = id->attrs != NULL && attrs_hold(a, id->attrs);
    out->id.attrs = held ? id->attrs : NULL;
    return out->id.user_key != NULL && held;
}

/* Picks the provider of a JWT by its (unverified) iss among those allowed;
 * the signature check that follows uses that provider's keys only. */
struct idp *an_idp_for_token(struct authn *an, const struct authn_req *req, struct str tok)
{
    struct str part = tok;
    const char *d1 = memchr(tok.p, '.', tok.len);
    if (d1 == NULL) {
        return NULL;
    }
    part.p = d1 + 1;
    const char *d2 = memchr(part.p, '.', tok.len - (size_t)(part.p - tok.p));
    if (d2 == NULL) {
        return NULL;
    }
    part.len = (size_t)(d2 - part.p);
    size_t n = 0;
    unsigned char *raw = codec_b64url_decode(part, &n);
    json_error_t jerr;
    json_t *j = raw ? json_loadb((const char *)raw, n, 0, &jerr) : NULL;
    free(raw);
    const char *iss = json_string_value(json_object_get(j, "iss"));
    struct idp *found = NULL;
    for (size_t i = 0; iss != NULL && i < an->nidps && found == NULL; i++) {
        if (strcmp(an->idps[i].p->issuer, iss) == 0 && an_route_accepts(req, an->idps[i].p->id)) {
            found = &an->idps[i];
        }
    }
    json_decref(j);
    return found;
}

/* Was this user revoked (`sessions revoke --user`) after the token was
 * issued? A token without iat cannot show it was issued later: refused too. */
static bool bearer_revoked(struct authn *an, const char *user_key, const char *email, int64_t iat_s)
{
    int64_t rev_ms = session_user_revoked_ms(an->store, user_key, email);
    return rev_ms > 0 && (iat_s <= 0 || iat_s * 1000 < rev_ms);
}

/* RFC 8705 certificate-bound tokens: a token whose claims carry cnf.x5t#S256 is
 * good only on a connection whose client certificate has that thumbprint; a
 * provider with require_certificate_bound_tokens refuses unbound tokens. NULL
 * when fine, else why not. */
static const char *bearer_binding(const struct idp *x, const struct authn_req *req,
                                  const struct authn_attrs *attrs)
{
    /* cnf was read once, when the token was verified (attrs.c). */
    const char *want = attrs ? attrs->cnf_x5t : NULL;
    const char *why = attrs ? attrs->cnf_error : "the token's claims are missing";
    if (why) {
        /* refused below */
    } else if (want) {
        if (!req->client_cert_x5t) {
            why = "the token is bound to a client certificate and none was presented";
        } else if (strlen(want) != strlen(req->client_cert_x5t) ||
                   CRYPTO_memcmp(want, req->client_cert_x5t, strlen(want)) != 0) {
            why = "the token is bound to another client certificate";
        }
    } else if (x->p->require_bound_tokens) {
        why = "the token is not bound to a client certificate (cnf.x5t#S256)";
    }
    return why;
}

/* An API client's next request with a token verified before: the providers
 * this route accepts are asked for it, before any parsing. A hit names its
 * provider: it was verified with that provider's keys and issuer. */
bool an_bearer_cached(struct authn *an, const struct authn_req *req, struct arena *a,
                      struct authn_out *out, struct str tok)
{
    for (size_t i = 0; i < an->nidps; i++) {
        struct idp *x = &an->idps[i];
        if (atomic_load(&x->meta) == NULL || !an_route_accepts(req, x->p->id)) {
            continue;
        }
        struct oidc_bearer_identity b;
        struct jwks *k = an_jwks_get(x);
        bool hit = k != NULL && oidc_bearer_cached(x->p, k, tok, req->now_ms / 1000, a, &b);
        jwks_unref(k);
        if (hit && bearer_revoked(an, b.user_key, b.email, b.iat_s)) {
            return false; /* verified again, and refused there with the reason */
        }
        if (hit && bearer_binding(x, req, b.attrs) != NULL) {
            return false; /* verified again, and refused there with the reason */
        }
        if (hit) {
            out->id.user_key = b.user_key;
            out->id.sub = b.sub;
            out->id.email = b.email;
            out->id.name = b.name;
            out->id.idp = an_adup(a, x->p->id);
            out->id.attrs = b.attrs;
            out->id.sid = b.sid;
            out->id.bearer = true;
            return true;
        }
    }
    return false;
}

/* A bearer token that does not verify: logged, then the caller is anonymous,
 * marked bearer: the route's policy decides, and a sign-in challenge for it
 * is a 401 invalid_token, never a redirect. */
enum authn_step an_bearer_refused(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, const char *why)
{
    (void)an;
    (void)a;
    memset(&out->id, 0, sizeof out->id);
    out->id.bearer = true;
    out->cont = NULL;
    an_set_reason(out, "bearer token refused: %s", why);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "%s", out->reason);
    return AUTHN_OK;
}

static int bearer_check(struct authn *an, const struct authn_req *req, struct cont *c,
                        const struct jwks *k, void *res, struct err *err)
{
    (void)an;
    return oidc_bearer_verify(c->idp->p, k, str_from(c->bearer), req->now_ms / 1000, res, err);
}

enum authn_step an_bearer_continue(struct authn *an, const struct authn_req *req, struct arena *a,
                                   struct authn_out *out, struct cont *c)
{
    struct oidc_identity id;
    struct err err = { 0 };
    enum authn_step st;
    int rc = 0;
    if (!an_check_with_keys(an, req, a, out, c, CONT_BEARER_DISCOVERY, CONT_BEARER_JWKS,
                            bearer_check, &id, &rc, &err, &st)) {
        return st;
    }
    struct idp *x = c->idp;
    if (rc != 0) {
        return an_bearer_refused(an, req, a, out, err.msg);
    }
    if (bearer_revoked(an, id.user_key, id.email, id.iat_s)) {
        oidc_identity_fini(&id);
        return an_bearer_refused(an, req, a, out,
                                 "the user's tokens were revoked after this one was issued");
    }
    const char *unbound = bearer_binding(x, req, id.attrs);
    if (unbound != NULL) {
        oidc_identity_fini(&id);
        return an_bearer_refused(an, req, a, out, unbound);
    }
    bool ok = an_identity_from_oidc(out, &id, x->p->id, a);
    oidc_identity_fini(&id);
    out->id.bearer = true;
    return ok ? AUTHN_OK : an_internal_error(an, req, a, out);
}
