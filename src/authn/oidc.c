/* authn/oidc.c - OpenID Connect relying party steps: provider config,
 * discovery, login start (PKCE S256, state, nonce in a sealed login cookie),
 * callback, token and userinfo responses, claim mapping, refresh, logout and
 * back-channel logout, bearer JWTs, and the open-redirect guard. Every IdP call
 * is described as an oidc_http for the proxy to perform; nothing here blocks.
 * Over 1,200 lines: the relying party's steps share the provider state and the
 * sealed login cookie; each step is a small function.
 */
#include "oidc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "attrs.h"
#include "codec.h"
#include "keys.h"

#define LOGIN_AAD "gatehouse-login-v1"
#define RANDOM_BYTES 32 /* state, nonce, PKCE verifier: 256 bits each */
#define MAX_GROUPS 256

/* ---- configuration ---------------------------------------------------- */

struct bearer_cache;
static struct bearer_cache *bearer_cache_new(void);
static void bearer_cache_free(struct bearer_cache *c);

static const char *const provider_keys[] = {
    "id", "type", "issuer", "client_id", "client_secret", "client_secret_file",
    "token_endpoint_auth", "private_key", "scopes", "claims", "groups_from_userinfo",
    "allow_insecure_issuer", "clock_skew", "jwks_refresh_min_interval", "redirect_host",
    "audiences", "algorithms", "post_logout_redirect_uri", "accept_id_tokens",
    "require_verified_email", "bare_user_ids", "display_name",
    "require_certificate_bound_tokens", NULL,
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
    const char *id = NULL, *issuer = NULL, *client_id = NULL, *secret = NULL,
               *secret_file = NULL, *auth = NULL, *pkey = NULL, *redirect_host = NULL,
               *display_name = NULL;
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
                   "identity provider id \"%s\" must be 1-64 letters, digits, '.', '_' or '-'",
                   id);
    } else {
        p->id = xstrdup(id);
    }
    if (issuer == NULL) {
        conf_error(d, n, "identity provider \"%s\" needs an \"issuer\"", id ? id : "?");
    } else if (!url_ok(issuer, p->allow_insecure_issuer)) {
        conf_error(d, conf_get(n, "issuer"), "\"issuer\" must be an https URL, got \"%s\"",
                   issuer);
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
        conf_error(d, n, "identity provider \"%s\" needs \"client_secret_file\" or "
                   "\"client_secret\"", id ? id : "?");
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
    p->bearer_cache = bearer_cache_new();
    if (p->allow_insecure_issuer && strncmp(p->issuer, "http://", 7) == 0) {
        log_warn("authn", "identity provider \"%s\" uses an insecure http:// issuer "
                 "(allow_insecure_issuer): for tests only", p->id);
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
    bearer_cache_free(p->bearer_cache);
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
        m->prompt_select_account = m->prompt_select_account ||
                                   (s != NULL && strcmp(s, "select_account") == 0);
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

static char *random_token(void)
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
    char *state = random_token();
    char *nonce = random_token();
    char *verifier = random_token();
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

static char *dup_field(const json_t *j, const char *k)
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
    out->idp = dup_field(j, "p");
    out->state = dup_field(j, "s");
    out->nonce = dup_field(j, "n");
    out->code_verifier = dup_field(j, "v");
    out->return_path = dup_field(j, "r");
    out->redirect_uri = dup_field(j, "u");
    out->prompt = dup_field(j, "q");
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

bool oidc_replay_check_and_add(struct oidc_replay *r, struct str key, int64_t exp_s,
                               int64_t now_s)
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
    char *jti = random_token();
    json_t *c = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "iss", p->client_id, "sub",
                          p->client_id, "aud", aud, "jti", jti ? jti : "", "iat",
                          (json_int_t)now_s, "exp", (json_int_t)(now_s + 60));
    char *claims = c ? json_dumps(c, JSON_COMPACT) : NULL;
    char *kid = keys_thumbprint(p->client_key, NULL);
    cjose_header_t *h = cjose_header_new(&cerr);
    cjose_jws_t *jws = NULL;
    char *out = NULL;

    free(jti);
    json_decref(c);
    if (claims == NULL || h == NULL || !cjose_header_set(h, CJOSE_HDR_ALG, p->client_key_alg, &cerr) ||
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
        codec_buf_adds(body, "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-"
                        "type%3Ajwt-bearer&client_assertion=");
        codec_buf_adds(body, a);
        free(a);
        break;
    }
    }
    out->body = codec_buf_take(body);
    return 0;
}

int oidc_callback(const struct oidc_provider *p, const struct oidc_metadata *m,
                  struct str query, const struct oidc_pending *pd, struct oidc_replay *replay,
                  int64_t now_s, struct oidc_http *token_req, struct err *err)
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
        rc = err_set(err, ERR_CRYPTO, "identity provider refused the login: %.60s%s%.100s",
                     error, desc ? ": " : "", desc ? desc : "");
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
        rc = err_set(err, ERR_CRYPTO, "callback has no iss although identity provider \"%.60s\" "
                     "advertises it (RFC 9207)", p->id);
        goto out;
    }
    if (iss != NULL && strcmp(iss, p->issuer) != 0) {
        rc = err_set(err, ERR_CRYPTO, "callback iss \"%.80s\" is not the configured issuer",
                     iss);
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
                        struct str body, const char *nonce, int64_t now_s,
                        struct oidc_tokens *out, struct err *err)
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
    out->refresh_token = dup_field(j, "refresh_token");
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

static const char *const protected_claims[] = { "iss", "sub", "aud", "exp", "iat", "nbf",
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
        json_object_foreach((json_t *)userinfo, k, v) {
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
    out->email = dup_field(merged, p->claim_email);
    const char *why = email_refused(p, merged, out->email);
    if (why != NULL) {
        log_info("authn", "identity provider \"%s\", user \"%.200s\": email ignored (%s)",
                 p->id, sub, why);
        free(out->email);
        out->email = NULL;
    }
    json_t *iat = json_object_get(id_claims, "iat");
    out->iat_s = json_is_integer(iat) ? (int64_t)json_integer_value(iat) : 0;
    out->name = dup_field(merged, p->claim_name);
    const json_t *gsrc = p->groups_from_userinfo ? userinfo : merged;
    out->groups = groups_of(gsrc ? json_object_get(gsrc, p->claim_groups) : NULL);
    out->sid = dup_field(id_claims, "sid");
    out->claims = json_dumps(merged, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(merged);
    /* Groups and claims parsed once, here: every request of the session or
     * of a cached bearer token uses these lists. */
    char *groups = json_dumps(out->groups, JSON_COMPACT);
    out->attrs = attrs_parse(groups ? groups : "[]", out->claims);
    free(groups);
    return 0;
}

/* ---- logout ----------------------------------------------------------- */

char *oidc_logout_url(const struct oidc_provider *p, const struct oidc_metadata *m,
                      const char *id_token_hint, const char *post_logout_redirect_uri)
{
    if (m == NULL || m->end_session_endpoint == NULL) {
        return NULL;
    }
    struct sbuf b = { 0 };
    codec_buf_adds(&b, m->end_session_endpoint);
    codec_buf_adds(&b, strchr(m->end_session_endpoint, '?') ? "&" : "?");
    if (id_token_hint != NULL) {
        codec_buf_adds(&b, "id_token_hint=");
        codec_buf_add_urlenc(&b, str_from(id_token_hint));
        codec_buf_adds(&b, "&");
    }
    codec_buf_adds(&b, "client_id=");
    codec_buf_add_urlenc(&b, str_from(p->client_id));
    const char *post = post_logout_redirect_uri;
    if (post != NULL) {
        codec_buf_adds(&b, "&post_logout_redirect_uri=");
        codec_buf_add_urlenc(&b, str_from(post));
    }
    return codec_buf_take(&b);
}

#define BCL_EVENT "http://schemas.openid.net/event/backchannel-logout"

int oidc_logout_token_verify(const struct oidc_provider *p, const struct jwks *keys,
                             struct str body, struct oidc_replay *replay, int64_t now_s,
                             char **sid, char **sub, struct err *err)
{
    struct str raw;
    bool dup = false;
    json_t *c = NULL;
    char *tok = NULL;
    int rc;

    *sid = *sub = NULL;
    if (!codec_form_get(body, "logout_token", &raw, &dup) || dup) {
        return err_set(err, ERR_PARSE, "request has no single logout_token");
    }
    tok = codec_url_decode(raw, NULL);
    if (tok == NULL) {
        return err_set(err, ERR_PARSE, "logout_token is badly encoded");
    }
    const char *auds[] = { p->client_id };
    struct jwt_rules r = {
        .issuer = p->issuer,
        .audiences = auds,
        .naudiences = 1,
        .forbid_nonce = true, /* §2.6 (7): a nonce means an ID token is being replayed */
        .require_iat = true,
        .algs = p->algs,
        .now_s = now_s,
        .skew_s = p->clock_skew_s,
    };
    rc = jwt_verify(str_from(tok), keys, &r, &c, err);
    if (rc != 0) {
        goto out;
    }
    json_t *ev = json_object_get(json_object_get(c, "events"), BCL_EVENT);
    if (!json_is_object(ev)) {
        rc = err_set(err, ERR_CRYPTO, "logout token has no back-channel logout event");
        goto out;
    }
    const char *s_sid = jwt_claim_str(c, "sid");
    const char *s_sub = jwt_claim_str(c, "sub");
    if (s_sid == NULL && s_sub == NULL) {
        rc = err_set(err, ERR_CRYPTO, "logout token has neither sid nor sub");
        goto out;
    }
    const char *jti = jwt_claim_str(c, "jti");
    if (jti == NULL) {
        rc = err_set(err, ERR_CRYPTO, "logout token has no jti");
        goto out;
    }
    json_t *iat = json_object_get(c, "iat");
    json_t *exp = json_object_get(c, "exp");
    int64_t until = json_is_integer(exp) ? (int64_t)json_integer_value(exp)
                                         : (int64_t)json_integer_value(iat) + 600;
    /* Without exp, bound the token's age so the replay cache can forget it. */
    if (!json_is_integer(exp) && (int64_t)json_integer_value(iat) + 600 < now_s - p->clock_skew_s) {
        rc = err_set(err, ERR_CRYPTO, "logout token is too old");
        goto out;
    }
    char *key = xasprintf("bcl %s %s", p->issuer, jti);
    bool fresh = replay == NULL ||
                 oidc_replay_check_and_add(replay, str_from(key), until + p->clock_skew_s, now_s);
    free(key);
    if (!fresh) {
        rc = err_set(err, ERR_CRYPTO, "logout token was already used (jti replay)");
        goto out;
    }
    *sid = s_sid ? xstrdup(s_sid) : NULL;
    *sub = s_sub ? xstrdup(s_sub) : NULL;
out:
    json_decref(c);
    free(tok);
    return rc;
}

#define BEARER_SLOTS 4096
#define BEARER_STRIPES 64
#define BEARER_MAX_AGE_S 300

struct bearer_slot {
    unsigned char h[32];
    uint64_t keys_id;
    int64_t until_s;             /* min(exp + skew, verified + BEARER_MAX_AGE_S) */
    bool used;
    struct oidc_identity id;     /* the identity built when the token was verified */
};

struct bearer_cache {
    pthread_mutex_t mu[BEARER_STRIPES];
    struct bearer_slot slot[BEARER_SLOTS];
};

static struct bearer_cache *bearer_cache_new(void)
{
    struct bearer_cache *c = xcalloc(1, sizeof *c);
    for (size_t i = 0; i < BEARER_STRIPES; i++) {
        pthread_mutex_init(&c->mu[i], NULL);
    }
    return c;
}

static void bearer_cache_free(struct bearer_cache *c)
{
    if (c == NULL) {
        return;
    }
    for (size_t i = 0; i < BEARER_SLOTS; i++) {
        oidc_identity_fini(&c->slot[i].id);
    }
    for (size_t i = 0; i < BEARER_STRIPES; i++) {
        pthread_mutex_destroy(&c->mu[i]);
    }
    free(c);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void identity_copy(struct oidc_identity *dst, const struct oidc_identity *src)
{
    dst->user_key = dup_or_null(src->user_key);
    dst->sub = dup_or_null(src->sub);
    dst->email = dup_or_null(src->email);
    dst->name = dup_or_null(src->name);
    dst->groups = json_deep_copy(src->groups);
    dst->sid = dup_or_null(src->sid);
    dst->claims = dup_or_null(src->claims);
    dst->iat_s = src->iat_s;
    dst->attrs = src->attrs ? attrs_ref(src->attrs) : NULL;
}

/* Copies the cached identity into out and returns true on a live hit. */
static bool bearer_cache_get(struct bearer_cache *c, const unsigned char h[32], uint64_t keys_id,
                             int64_t now_s, struct oidc_identity *out)
{
    size_t i = ((size_t)h[0] << 8 | h[1]) % BEARER_SLOTS;
    bool hit = false;
    pthread_mutex_lock(&c->mu[i % BEARER_STRIPES]);
    struct bearer_slot *s = &c->slot[i];
    if (s->used && s->keys_id == keys_id && memcmp(s->h, h, 32) == 0 && now_s < s->until_s) {
        identity_copy(out, &s->id);
        hit = true;
    }
    pthread_mutex_unlock(&c->mu[i % BEARER_STRIPES]);
    return hit;
}

static void bearer_cache_put(struct bearer_cache *c, const unsigned char h[32], uint64_t keys_id,
                             const struct oidc_identity *id, int64_t until_s)
{
    struct oidc_identity copy = { 0 };
    identity_copy(&copy, id);
    size_t i = ((size_t)h[0] << 8 | h[1]) % BEARER_SLOTS;
    pthread_mutex_lock(&c->mu[i % BEARER_STRIPES]);
    struct bearer_slot *s = &c->slot[i];
    struct oidc_identity old = s->id;
    memcpy(s->h, h, 32);
    s->keys_id = keys_id;
    s->until_s = until_s;
    s->id = copy;
    s->used = copy.attrs != NULL;
    pthread_mutex_unlock(&c->mu[i % BEARER_STRIPES]);
    oidc_identity_fini(&old);
}

static const char *acopy(struct arena *a, const char *v, bool *ok)
{
    if (v == NULL) {
        return NULL;
    }
    const char *c = arena_strdup(a, v);
    *ok = *ok && c != NULL;
    return c;
}

bool oidc_bearer_cached(const struct oidc_provider *p, const struct jwks *keys,
                        const unsigned char h[32], int64_t now_s, struct arena *a,
                        struct oidc_bearer_identity *out)
{
    struct bearer_cache *c = p->bearer_cache;
    if (c == NULL || keys == NULL) {
        return false;
    }
    size_t i = ((size_t)h[0] << 8 | h[1]) % BEARER_SLOTS;
    bool hit = false, ok = true;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->mu[i % BEARER_STRIPES]);
    struct bearer_slot *s = &c->slot[i];
    if (s->used && s->keys_id == jwks_id(keys) && memcmp(s->h, h, 32) == 0 && now_s < s->until_s) {
        out->user_key = acopy(a, s->id.user_key, &ok);
        out->sub = acopy(a, s->id.sub, &ok);
        out->email = acopy(a, s->id.email, &ok);
        out->name = acopy(a, s->id.name, &ok);
        out->sid = acopy(a, s->id.sid, &ok);
        ok = ok && s->id.attrs != NULL && attrs_hold(a, s->id.attrs);
        out->attrs = s->id.attrs; /* parsed when verified; held until the request ends */
        out->iat_s = s->id.iat_s;
        hit = ok; /* an arena at its cap: verify the slow way, which fails closed */
    }
    pthread_mutex_unlock(&c->mu[i % BEARER_STRIPES]);
    return hit;
}

int oidc_bearer_verify(const struct oidc_provider *p, const struct jwks *keys, struct str token,
                       int64_t now_s, struct oidc_identity *out, struct err *err)
{
    json_t *c = NULL;
    unsigned char h[32];
    codec_sha256(token.p, token.len, h);
    memset(out, 0, sizeof *out);
    /* A hit is a token whose signature and claims were checked with this very
     * key set; the entry ends at its exp (plus skew), so expiry still holds. */
    if (p->bearer_cache != NULL && keys != NULL &&
        bearer_cache_get(p->bearer_cache, h, jwks_id(keys), now_s, out)) {
        return 0;
    }
    if (p->naudiences == 0) {
        return err_set(err, ERR_CRYPTO, "identity provider \"%s\" has no bearer \"audiences\" "
                       "configured", p->id);
    }
    /* Access tokens only, unless accept_id_tokens: an ID token carries the
     * sign-in nonce and (where the IdP types its tokens) is not at+jwt. */
    struct jwt_rules r = {
        .issuer = p->issuer,
        .audiences = (const char *const *)p->audiences,
        .naudiences = p->naudiences,
        .require_exp = true,
        .forbid_nonce = !p->accept_id_tokens,
        .access_typ = !p->accept_id_tokens,
        .algs = p->algs,
        .now_s = now_s,
        .skew_s = p->clock_skew_s,
    };
    int rc = jwt_verify(token, keys, &r, &c, err);
    if (rc != 0) {
        return rc;
    }
    if (jwt_claim_str(c, "sub") == NULL) {
        json_decref(c);
        return err_set(err, ERR_CRYPTO, "bearer token has no \"sub\"");
    }
    rc = oidc_identity_build(p, c, NULL, out, err);
    json_t *exp = json_object_get(c, "exp");
    if (rc == 0 && p->bearer_cache != NULL && keys != NULL && json_is_integer(exp)) {
        int64_t until = (int64_t)json_integer_value(exp) + p->clock_skew_s;
        if (until > now_s + BEARER_MAX_AGE_S) {
            until = now_s + BEARER_MAX_AGE_S;
        }
        bearer_cache_put(p->bearer_cache, h, jwks_id(keys), out, until);
    }
    json_decref(c);
    return rc;
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
