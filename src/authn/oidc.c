/* authn/oidc.c - OpenID Connect relying party steps: provider config,
 * discovery, login start (PKCE S256, state, nonce in a sealed login cookie),
 * the login cookie, the replay cache, and the open-redirect guard with the
 * redirect URIs. The callback, token, userinfo and claim steps are in
 * oidc_token.c; logout, back-channel logout tokens and bearer JWTs in
 * oidc_bearer.c (oidc_int.h is what the three share). Every IdP call is
 * described as an oidc_http for the proxy to perform; nothing here blocks. */
#include "oidc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "oidc_int.h"

#define LOGIN_AAD    "gatehouse-login-v1"
#define RANDOM_BYTES 32 /* state, nonce, PKCE verifier: 256 bits each */

/* ---- configuration ---------------------------------------------------- */

struct bearer_cache;

static const char *const provider_keys[] = {
    "id",
    "type",
    "issuer",
    "client_id",
    "client_secret",
    "client_secret_file",
    "token_endpoint_auth",
    "private_key",
    "scopes",
    "claims",
    "groups_from_userinfo",
    "allow_insecure_issuer",
    "clock_skew",
    "jwks_refresh_min_interval",
    "redirect_host",
    "audiences",
    "algorithms",
    "post_logout_redirect_uri",
    "accept_id_tokens",
    "require_verified_email",
    "bare_user_ids",
    "display_name",
    "require_certificate_bound_tokens",
    NULL,
};

static const char *const claim_keys[] = { "email", "name", "groups", NULL };

static char *read_secret_file(struct conf_diag *d, const struct conf_node *n, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        conf_error(d, n, "cannot read client_secret_file \"%s\"", path);
        return NULL;
    }
    char buf[1025];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (len == sizeof buf) {
        conf_error(d, n, "client_secret_file \"%s\" is longer than 1024 bytes", path);
        OPENSSL_cleanse(buf, sizeof buf);
        return NULL;
    }
    /* A trailing newline from an editor is not part of the secret. */
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) {
        len--;
    }
    if (len == 0) {
        conf_error(d, n, "client_secret_file \"%s\" is empty", path);
        return NULL;
    }
    char *s = xstrndup(buf, len);
    OPENSSL_cleanse(buf, sizeof buf);
    return s;
}

static bool string_list(struct conf_diag *d, const struct conf_node *m, const char *key,
                        char ***out, size_t *n)
{
    const struct conf_node *v = conf_get(m, key);
    if (v == NULL) {
        return true;
    }
    if (v->type == CONF_SCALAR) {
        *out = xcalloc(1, sizeof **out);
        (*out)[0] = xstrdup(v->value);
        *n = 1;
        return true;
    }
    if (!conf_seq(d, v, key)) {
        return false;
    }
    *out = xcalloc(v->n ? v->n : 1, sizeof **out);
    for (size_t i = 0; i < v->n; i++) {
        if (v->items[i]->type != CONF_SCALAR) {
            conf_error(d, v->items[i], "\"%s\" must be a list of strings", key);
            return false;
        }
        (*out)[(*n)++] = xstrdup(v->items[i]->value);
    }
    return true;
}

static bool url_ok(const char *u, bool insecure)
{
    if (strncmp(u, "https://", 8) == 0) {
        return u[8] != '\0';
    }
    return insecure && strncmp(u, "http://", 7) == 0 && u[7] != '\0';
}

struct oidc_provider *oidc_provider_parse(struct conf_diag *d, const struct conf_node *n,
                                          const char *conf_file)
{
    size_t before = d->count;
    const char *id = NULL, *issuer = NULL, *client_id = NULL, *secret = NULL, *secret_file = NULL,
               *auth = NULL, *pkey = NULL, *redirect_host = NULL, *display_name = NULL;
    uint64_t skew_ms = 60000;
    uint64_t jwks_ms = 60000;
    struct oidc_provider *p = xcalloc(1, sizeof *p);

    if (!conf_check_keys(d, n, "identity provider", provider_keys)) {
        goto fail;
    }
    conf_string(d, n, "id", &id);
    conf_string(d, n, "issuer", &issuer);
    conf_string(d, n, "client_id", &client_id);
    conf_string(d, n, "client_secret", &secret);
    conf_string(d, n, "client_secret_file", &secret_file);
    conf_string(d, n, "token_endpoint_auth", &auth);
    conf_string(d, n, "private_key", &pkey);
    conf_string(d, n, "redirect_host", &redirect_host);
    conf_string(d, n, "display_name", &display_name);
    conf_bool(d, n, "groups_from_userinfo", &p->groups_from_userinfo);
    conf_bool(d, n, "allow_insecure_issuer", &p->allow_insecure_issuer);
    p->require_verified_email = true;
    conf_bool(d, n, "accept_id_tokens", &p->accept_id_tokens);
    conf_bool(d, n, "require_verified_email", &p->require_verified_email);
    conf_bool(d, n, "bare_user_ids", &p->bare_user_ids);
    conf_bool(d, n, "require_certificate_bound_tokens", &p->require_bound_tokens);
    conf_duration_ms(d, n, "clock_skew", 0, 600000, &skew_ms);
    conf_duration_ms(d, n, "jwks_refresh_min_interval", 1000, 86400000, &jwks_ms);
    p->clock_skew_s = (int64_t)(skew_ms / 1000);
    p->jwks_refresh_min_interval_ms = jwks_ms;

    if (id == NULL) {
        conf_error(d, n, "identity provider needs an \"id\"");
    } else if (!oidc_idp_id_ok(id)) {
        conf_error(d, conf_get(n, "id"),
                   "identity provider id \"%s\" must be 1-64 letters, digits, '.', '_' or '-'", id);
    } else {
        p->id = xstrdup(id);
    }
    if (issuer == NULL) {
        conf_error(d, n, "identity provider \"%s\" needs an \"issuer\"", id ? id : "?");
    } else if (!url_ok(issuer, p->allow_insecure_issuer)) {
        conf_error(d, conf_get(n, "issuer"), "\"issuer\" must be an https URL, got \"%s\"", issuer);
    } else if (strpbrk(issuer, "?#") != NULL) {
        conf_error(d, conf_get(n, "issuer"),
                   "\"issuer\" must not contain a query or fragment, got \"%s\"", issuer);
    } else {
        p->issuer = xstrdup(issuer);
    }
    if (client_id == NULL) {
        conf_error(d, n, "identity provider \"%s\" needs a \"client_id\"", id ? id : "?");
    } else {
        p->client_id = xstrdup(client_id);
    }

    p->auth = OIDC_AUTH_CLIENT_SECRET_BASIC;
    if (auth != NULL) {
        if (strcmp(auth, "client_secret_basic") == 0) {
            p->auth = OIDC_AUTH_CLIENT_SECRET_BASIC;
        } else if (strcmp(auth, "client_secret_post") == 0) {
            p->auth = OIDC_AUTH_CLIENT_SECRET_POST;
        } else if (strcmp(auth, "private_key_jwt") == 0) {
            p->auth = OIDC_AUTH_PRIVATE_KEY_JWT;
        } else {
            conf_error(d, conf_get(n, "token_endpoint_auth"),
                       "\"token_endpoint_auth\" must be client_secret_basic, "
                       "client_secret_post or private_key_jwt, got \"%s\"",
                       auth);
        }
    }
    if (secret != NULL && secret_file != NULL) {
        conf_error(d, conf_get(n, "client_secret"),
                   "use either \"client_secret\" or \"client_secret_file\", not both");
    } else if (secret_file != NULL) {
        char *path = conf_path_resolve(conf_file, secret_file);
        p->client_secret = read_secret_file(d, conf_get(n, "client_secret_file"), path);
        free(path);
    } else if (secret != NULL) {
        p->client_secret = xstrdup(secret);
    }
    if (p->auth == OIDC_AUTH_PRIVATE_KEY_JWT) {
        if (pkey == NULL) {
            conf_error(d, n, "token_endpoint_auth private_key_jwt needs \"private_key\"");
        } else {
            char *path = conf_path_resolve(conf_file, pkey);
            struct err err = { 0 };
            p->client_key = keys_load_pem(path, &p->client_key_alg, &err);
            if (p->client_key == NULL) {
                conf_error(d, conf_get(n, "private_key"), "%s", err.msg);
            }
            free(path);
        }
    } else if (p->client_secret == NULL && secret == NULL && secret_file == NULL) {
        conf_error(d, n,
                   "identity provider \"%s\" needs \"client_secret_file\" or "
                   "\"client_secret\"",
                   id ? id : "?");
    }

    char **scopes = NULL;
    size_t nscopes = 0;
    if (string_list(d, n, "scopes", &scopes, &nscopes)) {
        struct sbuf b = { 0 };
        bool has_openid = false;
        for (size_t i = 0; i < nscopes; i++) {
            has_openid = has_openid || strcmp(scopes[i], "openid") == 0;
        }
        /* The authorization request is an OIDC one only with the openid scope. */
        if (!has_openid) {
            codec_buf_adds(&b, "openid");
        }
        for (size_t i = 0; i < nscopes; i++) {
            if (b.len > 0) {
                codec_buf_adds(&b, " ");
            }
            codec_buf_adds(&b, scopes[i]);
        }
        if (nscopes == 0) {
            codec_buf_adds(&b, " email profile");
        }
        p->scopes = codec_buf_take(&b);
    }
    for (size_t i = 0; i < nscopes; i++) {
        free(scopes[i]);
    }
    free(scopes);

    const char *ce = "email", *cn = "name", *cg = "groups";
    const struct conf_node *claims = conf_get(n, "claims");
    if (claims != NULL && conf_check_keys(d, claims, "claims", claim_keys)) {
        conf_string(d, claims, "email", &ce);
        conf_string(d, claims, "name", &cn);
        conf_string(d, claims, "groups", &cg);
    }
    p->claim_email = xstrdup(ce);
    p->claim_name = xstrdup(cn);
    p->claim_groups = xstrdup(cg);

    /* Bearer tokens are access tokens for the configured audiences (APIs),
     * never the sign-in client's ID tokens: those travel in logout URLs and
     * browser histories. accept_id_tokens opts in for IdPs that issue nothing
     * else: then client_id is an audience too. */
    string_list(d, n, "audiences", &p->audiences, &p->naudiences);
    for (size_t i = 0; p->client_id != NULL && i < p->naudiences; i++) {
        if (strcmp(p->audiences[i], p->client_id) == 0 && !p->accept_id_tokens) {
            conf_error(d, conf_get(n, "audiences"),
                       "\"audiences\" must not contain the client_id \"%s\": ID tokens carry "
                       "it (set \"accept_id_tokens: true\" to accept them as bearer tokens)",
                       p->client_id);
        }
    }
    if (p->accept_id_tokens && p->client_id != NULL) {
        bool have = false;
        for (size_t i = 0; i < p->naudiences; i++) {
            have = have || strcmp(p->audiences[i], p->client_id) == 0;
        }
        if (!have) {
            p->audiences = xrealloc(p->audiences, (p->naudiences + 1) * sizeof *p->audiences);
            p->audiences[p->naudiences++] = xstrdup(p->client_id);
        }
    }
    char **algs = NULL;
    size_t nalgs = 0;
    p->algs = JWT_ALGS_DEFAULT;
    if (string_list(d, n, "algorithms", &algs, &nalgs) && nalgs > 0) {
        p->algs = 0;
        for (size_t i = 0; i < nalgs; i++) {
            unsigned a = jwt_alg_parse(algs[i]);
            if (a == 0 || a == JWT_HS256) {
                conf_error(d, conf_get(n, "algorithms"),
                           "algorithm \"%s\" is not allowed (use RS256, RS384, RS512, PS256, "
                           "PS384, PS512, ES256, ES384 or ES512)",
                           algs[i]);
            }
            p->algs |= a & ~(unsigned)JWT_HS256;
        }
    }
    for (size_t i = 0; i < nalgs; i++) {
        free(algs[i]);
    }
    free(algs);
    if (redirect_host != NULL) {
        p->redirect_host = xstrdup(redirect_host);
    }
    /* One URI or a list: the one for the origin the user signs out on is sent. */
    if (string_list(d, n, "post_logout_redirect_uri", &p->post_logout_redirect_uris,
                    &p->npost_logout_redirect_uris)) {
        for (size_t i = 0; i < p->npost_logout_redirect_uris; i++) {
            const char *u = p->post_logout_redirect_uris[i];
            if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0) {
                conf_error(d, conf_get(n, "post_logout_redirect_uri"),
                           "\"post_logout_redirect_uri\" must be http:// or https:// URLs, got "
                           "\"%s\"",
                           u);
            }
        }
    }
    if (display_name != NULL) {
        if (display_name[0] == '\0' || strlen(display_name) > 80) {
            conf_error(d, conf_get(n, "display_name"),
                       "\"display_name\" must be 1 to 80 characters");
        } else {
            p->display_name = xstrdup(display_name);
        }
    }
    if (d->count != before) {
        goto fail;
    }
    p->bearer_cache = oidc_bearer_cache_new();
    if (p->allow_insecure_issuer && strncmp(p->issuer, "http://", 7) == 0) {
        log_warn("authn",
                 "identity provider \"%s\" uses an insecure http:// issuer "
                 "(allow_insecure_issuer): for tests only",
                 p->id);
    }
    return p;
fail:
    oidc_provider_free(p);
    return NULL;
}

void oidc_provider_free(struct oidc_provider *p)
{
    if (p == NULL) {
        return;
    }
    free(p->id);
    free(p->issuer);
    free(p->client_id);
    if (p->client_secret != NULL) {
        OPENSSL_cleanse(p->client_secret, strlen(p->client_secret));
        free(p->client_secret);
    }
    if (p->client_key != NULL) {
        cjose_jwk_release(p->client_key);
    }
    free(p->scopes);
    free(p->claim_email);
    free(p->claim_name);
    free(p->claim_groups);
    free(p->redirect_host);
    for (size_t i = 0; i < p->naudiences; i++) {
        free(p->audiences[i]);
    }
    free(p->audiences);
    for (size_t i = 0; i < p->npost_logout_redirect_uris; i++) {
        free(p->post_logout_redirect_uris[i]);
    }
    free(p->post_logout_redirect_uris);
    free(p->display_name);
    oidc_bearer_cache_free(p->bearer_cache);
    free(p);
}

void oidc_http_fini(struct oidc_http *h)
{
    free(h->url);
    for (size_t i = 0; i < sizeof h->headers / sizeof h->headers[0]; i++) {
        free(h->headers[i]);
    }
    if (h->body != NULL) {
        OPENSSL_cleanse(h->body, strlen(h->body));
        free(h->body);
    }
    memset(h, 0, sizeof *h);
}

/* ---- discovery -------------------------------------------------------- */

void oidc_discovery_request(const struct oidc_provider *p, struct oidc_http *out)
{
    size_t n = strlen(p->issuer);
    memset(out, 0, sizeof *out);
    out->method = "GET";
    /* OIDC Discovery §4: the path is appended, without doubling a trailing slash. */
    out->url = xasprintf("%.*s/.well-known/openid-configuration",
                         (int)(n > 0 && p->issuer[n - 1] == '/' ? n - 1 : n), p->issuer);
    out->headers[0] = xstrdup("Accept: application/json");
}

static char *meta_url(const json_t *j, const char *name, bool required, bool insecure,
                      struct err *err, bool *bad)
{
    json_t *v = json_object_get(j, name);
    if (v == NULL) {
        if (required) {
            err_set(err, ERR_PARSE, "discovery document has no \"%s\"", name);
            *bad = true;
        }
        return NULL;
    }
    const char *s = json_string_value(v);
    if (s == NULL || !url_ok(s, insecure)) {
        err_set(err, ERR_PARSE, "discovery \"%s\" is not an https URL", name);
        *bad = true;
        return NULL;
    }
    return xstrdup(s);
}

struct oidc_metadata *oidc_metadata_parse(const struct oidc_provider *p, int status,
                                          struct str body, struct err *err)
{
    if (status != 200) {
        err_set(err, ERR_IO, "discovery answered HTTP %d", status);
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb(body.p, body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        err_set(err, ERR_PARSE, "discovery document is not a JSON object");
        return NULL;
    }
    struct oidc_metadata *m = xcalloc(1, sizeof *m);
    bool bad = false;
    const char *iss = json_string_value(json_object_get(j, "issuer"));
    /* Discovery §4.3: the issuer must be exactly the one we asked; this stops
     * one provider from impersonating another. */
    if (iss == NULL || strcmp(iss, p->issuer) != 0) {
        err_set(err, ERR_CRYPTO, "discovery issuer \"%.80s\" is not the configured \"%.80s\"",
                iss ? iss : "", p->issuer);
        bad = true;
        goto out;
    }
    m->issuer = xstrdup(iss);
    bool ins = p->allow_insecure_issuer;
    m->authorization_endpoint = meta_url(j, "authorization_endpoint", true, ins, err, &bad);
    if (!bad) {
        m->token_endpoint = meta_url(j, "token_endpoint", true, ins, err, &bad);
    }
    if (!bad) {
        m->jwks_uri = meta_url(j, "jwks_uri", true, ins, err, &bad);
    }
    if (!bad) {
        m->userinfo_endpoint = meta_url(j, "userinfo_endpoint", false, ins, err, &bad);
    }
    if (!bad) {
        m->end_session_endpoint = meta_url(j, "end_session_endpoint", false, ins, err, &bad);
    }
    if (bad) {
        goto out;
    }
    m->backchannel_logout_supported =
        json_is_true(json_object_get(j, "backchannel_logout_supported"));
    m->iss_parameter_supported =
        json_is_true(json_object_get(j, "authorization_response_iss_parameter_supported"));
    json_t *pv = json_object_get(j, "prompt_values_supported");
    for (size_t i = 0; json_is_array(pv) && i < json_array_size(pv); i++) {
        const char *s = json_string_value(json_array_get(pv, i));
        m->prompt_select_account =
            m->prompt_select_account || (s != NULL && strcmp(s, "select_account") == 0);
    }
    json_t *ccm = json_object_get(j, "code_challenge_methods_supported");
    m->code_challenge_s256 = ccm == NULL;
    for (size_t i = 0; json_is_array(ccm) && i < json_array_size(ccm); i++) {
        const char *s = json_string_value(json_array_get(ccm, i));
        m->code_challenge_s256 = m->code_challenge_s256 || (s && strcmp(s, "S256") == 0);
    }
    if (!m->code_challenge_s256) {
        err_set(err, ERR_CONFIG, "identity provider does not support PKCE S256");
        bad = true;
    }
out:
    json_decref(j);
    if (bad) {
        oidc_metadata_free(m);
        return NULL;
    }
    return m;
}

void oidc_metadata_free(struct oidc_metadata *m)
{
    if (m == NULL) {
        return;
    }
    free(m->issuer);
    free(m->authorization_endpoint);
    free(m->token_endpoint);
    free(m->userinfo_endpoint);
    free(m->jwks_uri);
    free(m->end_session_endpoint);
    free(m);
}

/* ---- login ------------------------------------------------------------ */

char *oidc_random_token(void)
{
    unsigned char b[RANDOM_BYTES];
    if (!codec_rand_bytes(b, sizeof b)) {
        return NULL;
    }
    return codec_b64url_encode(b, sizeof b);
}

void oidc_pending_fini(struct oidc_pending *pd)
{
    free(pd->idp);
    free(pd->state);
    free(pd->nonce);
    if (pd->code_verifier != NULL) {
        OPENSSL_cleanse(pd->code_verifier, strlen(pd->code_verifier));
        free(pd->code_verifier);
    }
    free(pd->return_path);
    free(pd->redirect_uri);
    free(pd->prompt);
    memset(pd, 0, sizeof *pd);
}

void oidc_login_fini(struct oidc_login *l)
{
    free(l->auth_url);
    free(l->cookie_value);
    memset(l, 0, sizeof *l);
}

int oidc_login_start(const struct oidc_provider *p, const struct oidc_metadata *m,
                     const char *redirect_uri, struct str return_path, const char *prompt,
                     const unsigned char key[32], int64_t now_s, struct oidc_login *out,
                     struct err *err)
{
    char *state = oidc_random_token();
    char *nonce = oidc_random_token();
    char *verifier = oidc_random_token();
    int rc = 0;

    memset(out, 0, sizeof *out);
    if (state == NULL || nonce == NULL || verifier == NULL) {
        rc = err_set(err, ERR_CRYPTO, "no randomness for the login state");
        goto out;
    }
    if (!oidc_return_path_safe(return_path)) {
        return_path = STR("/");
    }
    unsigned char md[32];
    codec_sha256(verifier, strlen(verifier), md);
    char *challenge = codec_b64url_encode(md, sizeof md);

    struct sbuf b = { 0 };
    codec_buf_adds(&b, m->authorization_endpoint);
    codec_buf_adds(&b, strchr(m->authorization_endpoint, '?') ? "&" : "?");
    codec_buf_adds(&b, "response_type=code&client_id=");
    codec_buf_add_urlenc(&b, str_from(p->client_id));
    codec_buf_adds(&b, "&redirect_uri=");
    codec_buf_add_urlenc(&b, str_from(redirect_uri));
    codec_buf_adds(&b, "&scope=");
    codec_buf_add_urlenc(&b, str_from(p->scopes));
    codec_buf_adds(&b, "&state=");
    codec_buf_adds(&b, state);
    codec_buf_adds(&b, "&nonce=");
    codec_buf_adds(&b, nonce);
    codec_buf_adds(&b, "&code_challenge=");
    codec_buf_adds(&b, challenge);
    codec_buf_adds(&b, "&code_challenge_method=S256");
    if (prompt != NULL) {
        codec_buf_adds(&b, "&prompt=");
        codec_buf_add_urlenc(&b, str_from(prompt));
    }
    free(challenge);
    out->auth_url = codec_buf_take(&b);

    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s%, s:s, s:I}", "p", p->id, "s", state, "n",
                          nonce, "v", verifier, "r", return_path.p, return_path.len, "u",
                          redirect_uri, "e", (json_int_t)(now_s + OIDC_LOGIN_TTL_S));
    if (j != NULL && prompt != NULL) {
        json_object_set_new(j, "q", json_string(prompt));
    }
    char *pt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (pt == NULL) {
        rc = err_set(err, ERR_NOMEM, "cannot encode the login state");
        oidc_login_fini(out);
        goto out;
    }
    out->cookie_value = codec_seal(key, LOGIN_AAD, pt, strlen(pt));
    OPENSSL_cleanse(pt, strlen(pt));
    free(pt);
    if (out->cookie_value == NULL) {
        rc = err_set(err, ERR_CRYPTO, "cannot seal the login state");
        oidc_login_fini(out);
    }
out:
    free(state);
    free(nonce);
    if (verifier != NULL) {
        OPENSSL_cleanse(verifier, strlen(verifier));
    }
    free(verifier);
    return rc;
}

char *oidc_dup_field(const json_t *j, const char *k)
{
    const char *s = json_string_value(json_object_get(j, k));
    return s ? xstrdup(s) : NULL;
}

int oidc_login_cookie_open(const unsigned char key[32], struct str cookie, int64_t now_s,
                           struct oidc_pending *out, struct err *err)
{
    size_t n = 0;
    memset(out, 0, sizeof *out);
    if (cookie.len == 0) {
        return err_set(err, ERR_CRYPTO, "no login in progress (login cookie missing)");
    }
    char *pt = codec_unseal(key, LOGIN_AAD, cookie, &n);
    if (pt == NULL) {
        return err_set(err, ERR_CRYPTO, "login cookie was altered or sealed with another key");
    }
    json_error_t jerr;
    json_t *j = json_loadb(pt, n, 0, &jerr);
    OPENSSL_cleanse(pt, n);
    free(pt);
    json_t *e = json_object_get(j, "e");
    out->idp = oidc_dup_field(j, "p");
    out->state = oidc_dup_field(j, "s");
    out->nonce = oidc_dup_field(j, "n");
    out->code_verifier = oidc_dup_field(j, "v");
    out->return_path = oidc_dup_field(j, "r");
    out->redirect_uri = oidc_dup_field(j, "u");
    out->prompt = oidc_dup_field(j, "q");
    out->exp_s = json_is_integer(e) ? (int64_t)json_integer_value(e) : 0;
    json_decref(j);
    if (out->idp == NULL || out->state == NULL || out->nonce == NULL ||
        out->code_verifier == NULL || out->return_path == NULL || out->redirect_uri == NULL) {
        oidc_pending_fini(out);
        return err_set(err, ERR_PARSE, "login cookie content is incomplete");
    }
    if (now_s >= out->exp_s) {
        oidc_pending_fini(out);
        return err_set(err, ERR_CRYPTO, "login took too long (login cookie expired)");
    }
    return 0;
}

/* ---- replay cache ----------------------------------------------------- */

struct replay_entry {
    unsigned char h[32];
    int64_t exp_s;
};

struct oidc_replay {
    pthread_mutex_t mu;
    size_t cap;
    struct replay_entry *e;
};

struct oidc_replay *oidc_replay_new(size_t max_entries)
{
    struct oidc_replay *r = xcalloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->cap = max_entries ? max_entries : 1;
    r->e = xcalloc(r->cap, sizeof *r->e);
    return r;
}

void oidc_replay_free(struct oidc_replay *r)
{
    if (r == NULL) {
        return;
    }
    pthread_mutex_destroy(&r->mu);
    free(r->e);
    free(r);
}

bool oidc_replay_check_and_add(struct oidc_replay *r, struct str key, int64_t exp_s, int64_t now_s)
{
    unsigned char h[32];
    codec_sha256(key.p, key.len, h);
    /* Open addressing over a fixed table; expired slots are free again. */
    size_t start = ((size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3]) % r->cap;
    size_t free_slot = r->cap;
    bool ok = true;

    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->cap; i++) {
        struct replay_entry *e = &r->e[(start + i) % r->cap];
        if (e->exp_s <= now_s) {
            if (free_slot == r->cap) {
                free_slot = (start + i) % r->cap;
            }
            if (e->exp_s == 0) {
                break; /* never used: the key cannot be further along */
            }
            continue;
        }
        if (memcmp(e->h, h, sizeof h) == 0) {
            ok = false;
            break;
        }
    }
    if (ok) {
        if (free_slot == r->cap) {
            ok = false; /* full of live entries: refuse rather than forget */
        } else {
            memcpy(r->e[free_slot].h, h, sizeof h);
            r->e[free_slot].exp_s = exp_s > now_s ? exp_s : now_s + 1;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return ok;
}

/* ---- return path and redirect URI ------------------------------------- */

static bool path_chars_ok(struct str s, bool decoded)
{
    if (s.len == 0 || s.p[0] != '/') {
        return false;
    }
    /* "//host" and "/\host" are network-path references to browsers. */
    if (s.len > 1 && (s.p[1] == '/' || s.p[1] == '\\')) {
        return false;
    }
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        /* Browsers strip tabs and newlines inside URLs and read '\' as '/'. */
        if (c < 0x20 || c == 0x7f || c == '\\' || (c == ' ' && !decoded)) {
            return false;
        }
    }
    return true;
}

bool oidc_return_path_safe(struct str rd)
{
    if (rd.len == 0 || rd.len > 2048 || !path_chars_ok(rd, false)) {
        return false;
    }
    /* The path may be decoded again by a later hop or a browser quirk: the
     * decoded form must be just as harmless (%2f%2f, %5c, %09, %00...). */
    struct str cur = rd;
    char *prev = NULL;
    for (int round = 0; round < 3; round++) {
        if (memchr(cur.p, '%', cur.len) == NULL) {
            break;
        }
        size_t n = 0;
        struct sbuf b = { 0 };
        /* '+' stays '+' here: this is a path, not a form. */
        for (size_t i = 0; i < cur.len; i++) {
            if (cur.p[i] == '+') {
                codec_buf_adds(&b, "%2B");
            } else {
                codec_buf_add(&b, cur.p + i, 1);
            }
        }
        char *dec = codec_url_decode((struct str){ b.p, b.len }, &n);
        codec_buf_fini(&b);
        free(prev);
        prev = dec;
        if (dec == NULL || !path_chars_ok((struct str){ dec, n }, true)) {
            free(dec);
            return false;
        }
        cur = (struct str){ dec, n };
    }
    free(prev);
    return true;
}

char *oidc_redirect_uri(const struct oidc_provider *p, const char *origin, bool per_idp)
{
    const char *auth = strstr(origin, "://");
    if (p->redirect_host != NULL && auth != NULL) {
        /* A fixed host for every route (an older setting): keep the scheme. */
        return xasprintf("%.*s://%s/.gatehouse/oidc/callback%s%s", (int)(auth - origin), origin,
                         p->redirect_host, per_idp ? "/" : "", per_idp ? p->id : "");
    }
    return xasprintf("%s/.gatehouse/oidc/callback%s%s", origin, per_idp ? "/" : "",
                     per_idp ? p->id : "");
}

const char *oidc_post_logout_uri(const struct oidc_provider *p, const char *wanted)
{
    for (size_t i = 0; wanted != NULL && i < p->npost_logout_redirect_uris; i++) {
        if (strcmp(p->post_logout_redirect_uris[i], wanted) == 0) {
            return p->post_logout_redirect_uris[i];
        }
    }
    return NULL;
}

bool oidc_idp_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-')) {
            return false;
        }
    }
    return true;
}

char *oidc_user_id(const char *idp_id, bool bare, const char *sub)
{
    if (bare && strchr(sub, ':') == NULL) {
        return xstrdup(sub);
    }
    return xasprintf("%s:%s", idp_id, sub);
}
