/* authn/oidc_token.c - OpenID Connect callback and tokens: the callback's
 * checks, the token request (client secret or private_key_jwt), refresh, the
 * token and userinfo responses, and the mapping of claims to an identity. */
#include "oidc.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "oidc_int.h"

/* ---- callback and token request -------------------------------------- */

static int query_param(struct str q, const char *name, char **out, struct err *err)
{
    struct str raw;
    bool dup = false;
    *out = NULL;
    if (!codec_form_get(q, name, &raw, &dup)) {
        return 0;
    }
    /* RFC 6749 §3.1: parameters must not be repeated. */
    if (dup) {
        return err_set(err, ERR_PARSE, "callback repeats the \"%s\" parameter", name);
    }
    *out = codec_url_decode(raw, NULL);
    if (*out == NULL) {
        return err_set(err, ERR_PARSE, "callback \"%s\" parameter is badly encoded", name);
    }
    return 0;
}

static char *client_assertion(const struct oidc_provider *p, const char *aud, int64_t now_s,
                              struct err *err)
{
    cjose_err cerr;
    char *jti = oidc_random_token();
    json_t *c = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "iss", p->client_id, "sub",
                          p->client_id, "aud", aud, "jti", jti ? jti : "", "iat", (json_int_t)now_s,
                          "exp", (json_int_t)(now_s + 60));
    char *claims = c ? json_dumps(c, JSON_COMPACT) : NULL;
    char *kid = keys_thumbprint(p->client_key, NULL);
    cjose_header_t *h = cjose_header_new(&cerr);
    cjose_jws_t *jws = NULL;
    char *out = NULL;

    free(jti);
    json_decref(c);
    if (claims == NULL || h == NULL ||
        !cjose_header_set(h, CJOSE_HDR_ALG, p->client_key_alg, &cerr) ||
        (kid != NULL && !cjose_header_set(h, CJOSE_HDR_KID, kid, &cerr)) ||
        !cjose_header_set(h, "typ", "JWT", &cerr)) {
        err_set(err, ERR_CRYPTO, "cannot build the client assertion");
        goto out;
    }
    jws = cjose_jws_sign(p->client_key, h, (const uint8_t *)claims, strlen(claims), &cerr);
    const char *ser = NULL;
    if (jws == NULL || !cjose_jws_export(jws, &ser, &cerr)) {
        err_set(err, ERR_CRYPTO, "cannot sign the client assertion");
        goto out;
    }
    out = xstrdup(ser);
out:
    cjose_jws_release(jws);
    cjose_header_release(h);
    free(claims);
    free(kid);
    return out;
}

/* Fills headers and the client-authentication part of a token-endpoint POST. */
static int token_post(const struct oidc_provider *p, const struct oidc_metadata *m,
                      struct sbuf *body, int64_t now_s, struct oidc_http *out, struct err *err)
{
    out->method = "POST";
    out->url = xstrdup(m->token_endpoint);
    out->headers[0] = xstrdup("Content-Type: application/x-www-form-urlencoded");
    out->headers[1] = xstrdup("Accept: application/json");
    switch (p->auth) {
    case OIDC_AUTH_CLIENT_SECRET_BASIC: {
        /* RFC 6749 §2.3.1: id and secret are form-encoded before Basic. */
        struct sbuf cred = { 0 };
        codec_buf_add_urlenc(&cred, str_from(p->client_id));
        codec_buf_adds(&cred, ":");
        codec_buf_add_urlenc(&cred, str_from(p->client_secret));
        char *b64 = codec_b64_encode((const unsigned char *)cred.p, cred.len);
        out->headers[2] = xasprintf("Authorization: Basic %s", b64);
        OPENSSL_cleanse(cred.p, cred.len);
        OPENSSL_cleanse(b64, strlen(b64));
        codec_buf_fini(&cred);
        free(b64);
        break;
    }
    case OIDC_AUTH_CLIENT_SECRET_POST:
        codec_buf_adds(body, "&client_id=");
        codec_buf_add_urlenc(body, str_from(p->client_id));
        codec_buf_adds(body, "&client_secret=");
        codec_buf_add_urlenc(body, str_from(p->client_secret));
        break;
    case OIDC_AUTH_PRIVATE_KEY_JWT: {
        char *a = client_assertion(p, m->token_endpoint, now_s, err);
        if (a == NULL) {
            return ERR_CRYPTO;
        }
        codec_buf_adds(body, "&client_id=");
        codec_buf_add_urlenc(body, str_from(p->client_id));
        codec_buf_adds(body,
                       "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-"
                       "type%3Ajwt-bearer&client_assertion=");
        codec_buf_adds(body, a);
        free(a);
        break;
    }
    }
    out->body = codec_buf_take(body);
    return 0;
}

int oidc_callback(const struct oidc_provider *p, const struct oidc_metadata *m, struct str query,
                  const struct oidc_pending *pd, struct oidc_replay *replay, int64_t now_s,
                  struct oidc_http *token_req, struct err *err)
{
    char *error = NULL, *desc = NULL, *state = NULL, *code = NULL, *iss = NULL;
    int rc;

    memset(token_req, 0, sizeof *token_req);
    if ((rc = query_param(query, "error", &error, err)) != 0 ||
        (rc = query_param(query, "error_description", &desc, err)) != 0 ||
        (rc = query_param(query, "state", &state, err)) != 0 ||
        (rc = query_param(query, "code", &code, err)) != 0 ||
        (rc = query_param(query, "iss", &iss, err)) != 0) {
        goto out;
    }
    if (error != NULL) {
        rc = err_set(err, ERR_CRYPTO, "identity provider refused the login: %.60s%s%.100s", error,
                     desc ? ": " : "", desc ? desc : "");
        goto out;
    }
    if (state == NULL) {
        rc = err_set(err, ERR_CRYPTO, "callback has no state");
        goto out;
    }
    if (pd == NULL || pd->state == NULL) {
        rc = err_set(err, ERR_CRYPTO, "no login in progress (login cookie missing)");
        goto out;
    }
    if (!codec_ct_eq(str_from(state), str_from(pd->state))) {
        rc = err_set(err, ERR_CRYPTO, "callback state does not match the login cookie");
        goto out;
    }
    if (strcmp(pd->idp, p->id) != 0) {
        rc = err_set(err, ERR_CRYPTO, "login was started for another identity provider");
        goto out;
    }
    /* RFC 9207 §2.4: a provider that advertises the iss parameter must send it
     * (a response without it may come from another provider: mix-up); when the
     * IdP names itself, it must be the one we sent the user to. */
    if (iss == NULL && m != NULL && m->iss_parameter_supported) {
        rc = err_set(err, ERR_CRYPTO,
                     "callback has no iss although identity provider \"%.60s\" "
                     "advertises it (RFC 9207)",
                     p->id);
        goto out;
    }
    if (iss != NULL && strcmp(iss, p->issuer) != 0) {
        rc = err_set(err, ERR_CRYPTO, "callback iss \"%.80s\" is not the configured issuer", iss);
        goto out;
    }
    if (code == NULL || code[0] == '\0') {
        rc = err_set(err, ERR_CRYPTO, "callback has no code");
        goto out;
    }
    if (replay != NULL &&
        !oidc_replay_check_and_add(replay, str_from(pd->state), pd->exp_s, now_s)) {
        rc = err_set(err, ERR_CRYPTO, "login state was already used (replayed callback)");
        goto out;
    }
    struct sbuf b = { 0 };
    codec_buf_adds(&b, "grant_type=authorization_code&code=");
    codec_buf_add_urlenc(&b, str_from(code));
    codec_buf_adds(&b, "&redirect_uri=");
    codec_buf_add_urlenc(&b, str_from(pd->redirect_uri));
    codec_buf_adds(&b, "&code_verifier=");
    codec_buf_add_urlenc(&b, str_from(pd->code_verifier));
    rc = token_post(p, m, &b, now_s, token_req, err);
    if (rc != 0) {
        codec_buf_fini(&b);
        oidc_http_fini(token_req);
    }
out:
    free(error);
    free(desc);
    free(state);
    if (code != NULL) {
        OPENSSL_cleanse(code, strlen(code));
    }
    free(code);
    free(iss);
    return rc;
}

int oidc_refresh_request(const struct oidc_provider *p, const struct oidc_metadata *m,
                         const char *refresh_token, int64_t now_s, struct oidc_http *out,
                         struct err *err)
{
    memset(out, 0, sizeof *out);
    struct sbuf b = { 0 };
    codec_buf_adds(&b, "grant_type=refresh_token&refresh_token=");
    codec_buf_add_urlenc(&b, str_from(refresh_token));
    int rc = token_post(p, m, &b, now_s, out, err);
    if (rc != 0) {
        codec_buf_fini(&b);
        oidc_http_fini(out);
    }
    return rc;
}

void oidc_tokens_fini(struct oidc_tokens *t)
{
    char *secrets[] = { t->id_token, t->access_token, t->refresh_token };
    for (size_t i = 0; i < 3; i++) {
        if (secrets[i] != NULL) {
            OPENSSL_cleanse(secrets[i], strlen(secrets[i]));
            free(secrets[i]);
        }
    }
    json_decref(t->id_claims);
    memset(t, 0, sizeof *t);
}

int oidc_token_response(const struct oidc_provider *p, const struct jwks *keys, int status,
                        struct str body, const char *nonce, int64_t now_s, struct oidc_tokens *out,
                        struct err *err)
{
    json_error_t jerr;
    json_t *j = json_loadb(body.p, body.len, 0, &jerr);
    int rc = 0;

    memset(out, 0, sizeof *out);
    if (!json_is_object(j)) {
        rc = err_set(err, status == 200 ? ERR_PARSE : ERR_IO,
                     "token endpoint answered HTTP %d without a JSON object", status);
        goto out;
    }
    if (status != 200) {
        const char *e = jwt_claim_str(j, "error");
        const char *d = jwt_claim_str(j, "error_description");
        rc = err_set(err, ERR_CRYPTO, "token endpoint refused (HTTP %d): %.60s%s%.100s", status,
                     e ? e : "no error code", d ? ": " : "", d ? d : "");
        goto out;
    }
    const char *tt = jwt_claim_str(j, "token_type");
    const char *at = jwt_claim_str(j, "access_token");
    if (at == NULL || tt == NULL || strcasecmp(tt, "Bearer") != 0) {
        rc = err_set(err, ERR_PARSE, "token response has no Bearer access_token");
        goto out;
    }
    out->access_token = xstrdup(at);
    out->refresh_token = oidc_dup_field(j, "refresh_token");
    json_t *ei = json_object_get(j, "expires_in");
    if (json_is_integer(ei) && json_integer_value(ei) > 0) {
        out->expires_at_s = now_s + (int64_t)json_integer_value(ei);
    }
    const char *idt = jwt_claim_str(j, "id_token");
    if (idt == NULL) {
        if (nonce != NULL) {
            rc = err_set(err, ERR_PARSE, "token response has no id_token");
        }
        goto out;
    }
    out->id_token = xstrdup(idt);
    const char *auds[] = { p->client_id };
    struct jwt_rules r = {
        .issuer = p->issuer,
        .audiences = auds,
        .naudiences = 1,
        .client_id = p->client_id,
        .nonce = nonce,
        .require_iat = true,
        .require_exp = true,
        .algs = p->algs,
        .now_s = now_s,
        .skew_s = p->clock_skew_s,
    };
    rc = jwt_verify(str_from(idt), keys, &r, &out->id_claims, err);
    if (rc == 0) {
        json_t *exp = json_object_get(out->id_claims, "exp");
        out->id_exp_s = json_is_integer(exp) ? (int64_t)json_integer_value(exp) : 0;
        if (jwt_claim_str(out->id_claims, "sub") == NULL) {
            rc = err_set(err, ERR_CRYPTO, "ID token has no \"sub\"");
        }
    }
out:
    json_decref(j);
    if (rc != 0) {
        oidc_tokens_fini(out);
    }
    return rc;
}

int oidc_userinfo_request(const struct oidc_metadata *m, const char *access_token,
                          struct oidc_http *out, struct err *err)
{
    memset(out, 0, sizeof *out);
    if (m->userinfo_endpoint == NULL) {
        return err_set(err, ERR_NOTFOUND, "identity provider has no userinfo endpoint");
    }
    out->method = "GET";
    out->url = xstrdup(m->userinfo_endpoint);
    out->headers[0] = xstrdup("Accept: application/json");
    out->headers[1] = xasprintf("Authorization: Bearer %s", access_token);
    return 0;
}

int oidc_userinfo_parse(int status, struct str body, const char *expected_sub, json_t **out,
                        struct err *err)
{
    *out = NULL;
    if (status != 200) {
        return err_set(err, ERR_IO, "userinfo answered HTTP %d", status);
    }
    json_error_t jerr;
    json_t *j = json_loadb(body.p, body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        return err_set(err, ERR_PARSE, "userinfo is not a JSON object");
    }
    const char *sub = jwt_claim_str(j, "sub");
    /* OIDC Core 5.3.2: a userinfo sub other than the ID token's is a substitution attack. */
    if (sub == NULL || expected_sub == NULL || strcmp(sub, expected_sub) != 0) {
        json_decref(j);
        return err_set(err, ERR_CRYPTO, "userinfo sub does not match the ID token");
    }
    *out = j;
    return 0;
}

/* ---- identity --------------------------------------------------------- */

void oidc_identity_fini(struct oidc_identity *id)
{
    free(id->user_key);
    free(id->sub);
    free(id->email);
    free(id->name);
    json_decref(id->groups);
    free(id->sid);
    free(id->claims);
    attrs_unref(id->attrs);
    memset(id, 0, sizeof *id);
}

static json_t *groups_of(const json_t *v)
{
    json_t *g = json_array();
    if (json_is_string(v)) {
        json_array_append_new(g, json_string(json_string_value(v)));
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v) && json_array_size(g) < MAX_GROUPS; i++) {
            json_t *e = json_array_get(v, i);
            if (json_is_string(e)) {
                json_array_append_new(g, json_string(json_string_value(e)));
            }
        }
    }
    return g;
}

/* Why an email claim is not an email, or NULL when it is one. An address
 * the IdP says it has not verified proves nothing about the caller (anyone
 * can type alice@example.com into a sign-up form); one with several '@'
 * ("x@evil.test@example.com") has no single domain. */
static const char *email_refused(const struct oidc_provider *p, const json_t *claims,
                                 const char *email)
{
    if (email == NULL) {
        return NULL;
    }
    size_t at = 0;
    for (const char *c = email; *c != '\0'; c++) {
        if (*c == '@') {
            at++;
        } else if ((unsigned char)*c < 0x21 || *c == 0x7f) {
            return "it has spaces or control characters";
        }
    }
    if (at != 1 || email[0] == '@' || email[strlen(email) - 1] == '@') {
        return "it is not one address with one '@'";
    }
    if (!p->require_verified_email) {
        return NULL;
    }
    const json_t *v = json_object_get(claims, "email_verified");
    if (json_is_true(v)) {
        return NULL;
    }
    /* Some IdPs send the flag as a string. */
    if (json_is_string(v) && strcmp(json_string_value(v), "true") == 0) {
        return NULL;
    }
    return v == NULL ? "the IdP did not say it is verified (email_verified is absent; "
                       "set require_verified_email: false for IdPs that never send it)"
                     : "email_verified is not true";
}

static const char *const protected_claims[] = { "iss",   "sub", "aud", "exp", "iat", "nbf",
                                                "nonce", "azp", "jti", "sid", NULL };

int oidc_identity_build(const struct oidc_provider *p, const json_t *id_claims,
                        const json_t *userinfo, struct oidc_identity *out, struct err *err)
{
    memset(out, 0, sizeof *out);
    const char *iss = jwt_claim_str(id_claims, "iss");
    const char *sub = jwt_claim_str(id_claims, "sub");
    if (iss == NULL || sub == NULL || sub[0] == '\0') {
        return err_set(err, ERR_CRYPTO, "claims have no iss/sub");
    }
    json_t *merged = json_deep_copy(id_claims);
    if (userinfo != NULL) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)userinfo, k, v)
        {
            bool prot = false;
            for (size_t i = 0; protected_claims[i] != NULL; i++) {
                prot = prot || strcmp(k, protected_claims[i]) == 0;
            }
            if (!prot) {
                json_object_set(merged, k, v);
            }
        }
    }
    out->user_key = xasprintf("%s#%s", iss, sub);
    out->sub = xstrdup(sub);
    out->email = oidc_dup_field(merged, p->claim_email);
    const char *why = email_refused(p, merged, out->email);
    if (why != NULL) {
        log_info("authn", "identity provider \"%s\", user \"%.200s\": email ignored (%s)", p->id,
                 sub, why);
        free(out->email);
        out->email = NULL;
    }
    json_t *iat = json_object_get(id_claims, "iat");
    out->iat_s = json_is_integer(iat) ? (int64_t)json_integer_value(iat) : 0;
    out->name = oidc_dup_field(merged, p->claim_name);
    const json_t *gsrc = p->groups_from_userinfo ? userinfo : merged;
    out->groups = groups_of(gsrc ? json_object_get(gsrc, p->claim_groups) : NULL);
    out->sid = oidc_dup_field(id_claims, "sid");
    out->claims = json_dumps(merged, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(merged);
    /* Groups and claims parsed once, here: every request of the session or
     * of a cached bearer token uses these lists. */
    char *groups = json_dumps(out->groups, JSON_COMPACT);
    out->attrs = attrs_parse(groups ? groups : "[]", out->claims);
    free(groups);
    return 0;
}
