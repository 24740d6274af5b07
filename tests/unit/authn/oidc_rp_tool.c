/* oidc_rp_tool - drives authn/oidc.c one step at a time from a script, so
 * tests/integration/test_oidc_rp_offline.py can run the real code flow against
 * the real OpenID Provider (tests/idp) while the script does the HTTP. Each
 * step prints one JSON object on stdout. Test tool only; not installed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "authn/oidc.h"

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    char *buf = xmalloc(1 << 20);
    *n = fread(buf, 1, (1 << 20) - 1, f);
    buf[*n] = '\0';
    fclose(f);
    return buf;
}

static struct oidc_provider *provider(const char *conf)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(conf, &d);
    struct conf_node *list = doc ? conf_get(doc->root, "identity_providers") : NULL;
    struct oidc_provider *p =
        list && list->n ? oidc_provider_parse(&d, list->items[0], conf) : NULL;
    if (p == NULL) {
        conf_diag_print(&d, stderr);
        exit(2);
    }
    conf_diag_fini(&d);
    conf_doc_free(doc);
    return p;
}

static struct oidc_metadata *metadata(const struct oidc_provider *p, const char *file)
{
    size_t n;
    char *body = slurp(file, &n);
    struct err err = { 0 };
    struct oidc_metadata *m = oidc_metadata_parse(p, 200, (struct str){ body, n }, &err);
    free(body);
    if (m == NULL) {
        fprintf(stderr, "discovery: %s\n", err.msg);
        exit(2);
    }
    return m;
}

static struct jwks *keyset(const char *file)
{
    size_t n;
    char *body = slurp(file, &n);
    struct err err = { 0 };
    struct jwks *k = jwks_parse((struct str){ body, n }, &err);
    free(body);
    if (k == NULL) {
        fprintf(stderr, "jwks: %s\n", err.msg);
        exit(2);
    }
    return k;
}

static void hexkey(const char *hex, unsigned char key[32])
{
    for (size_t i = 0; i < 32; i++) {
        unsigned v = 0;
        if (strlen(hex) != 64 || sscanf(hex + 2 * i, "%2x", &v) != 1) {
            fprintf(stderr, "key must be 64 hex chars\n");
            exit(2);
        }
        key[i] = (unsigned char)v;
    }
}

static int emit(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(j);
    return 0;
}

static int fail(const struct err *err)
{
    return emit(json_pack("{s:b, s:s}", "ok", 0, "error", err->msg));
}

static int emit_http(const struct oidc_http *h)
{
    json_t *hd = json_array();
    for (size_t i = 0; i < 4 && h->headers[i] != NULL; i++) {
        json_array_append_new(hd, json_string(h->headers[i]));
    }
    return emit(json_pack("{s:b, s:s, s:s, s:o, s:s?}", "ok", 1, "method", h->method, "url", h->url,
                          "headers", hd, "body", h->body));
}

static json_t *identity_json(const struct oidc_identity *id)
{
    return json_pack("{s:s, s:s, s:s?, s:s?, s:O, s:s?}", "user_key", id->user_key, "sub", id->sub,
                     "email", id->email, "name", id->name, "groups", id->groups, "sid", id->sid);
}

int main(int argc, char **argv)
{
    struct err err = { 0 };
    int64_t now = (int64_t)time(NULL);
    unsigned char key[32];
    const char *cmd = argc > 1 ? argv[1] : "";

    if (strcmp(cmd, "login") == 0 && argc == 7) {
        struct oidc_provider *p = provider(argv[2]);
        struct oidc_metadata *m = metadata(p, argv[3]);
        hexkey(argv[4], key);
        struct oidc_login l;
        if (!oidc_return_path_safe(str_from(argv[6]))) {
            err_set(&err, ERR_PARSE, "unsafe return path");
            return fail(&err);
        }
        if (oidc_login_start(p, m, argv[5], str_from(argv[6]), NULL, key, now, &l, &err) != 0) {
            return fail(&err);
        }
        emit(json_pack("{s:b, s:s, s:s}", "ok", 1, "auth_url", l.auth_url, "cookie",
                       l.cookie_value));
        oidc_login_fini(&l);
        oidc_metadata_free(m);
        oidc_provider_free(p);
        return 0;
    }
    if (strcmp(cmd, "callback") == 0 && argc == 7) {
        struct oidc_provider *p = provider(argv[2]);
        struct oidc_metadata *m = metadata(p, argv[3]);
        hexkey(argv[4], key);
        struct oidc_pending pd;
        struct oidc_http h;
        if (oidc_login_cookie_open(key, str_from(argv[5]), now, &pd, &err) != 0) {
            return fail(&err);
        }
        if (oidc_callback(p, m, str_from(argv[6]), &pd, NULL, now, &h, &err) != 0) {
            return fail(&err);
        }
        emit_http(&h);
        oidc_http_fini(&h);
        oidc_pending_fini(&pd);
        oidc_metadata_free(m);
        oidc_provider_free(p);
        return 0;
    }
    if ((strcmp(cmd, "token") == 0 && argc == 8) || (strcmp(cmd, "refresh") == 0 && argc == 6)) {
        bool login = strcmp(cmd, "token") == 0;
        struct oidc_provider *p = provider(argv[2]);
        struct jwks *k = keyset(argv[3]);
        struct oidc_pending pd = { 0 };
        const char *status = login ? argv[6] : argv[4];
        const char *file = login ? argv[7] : argv[5];
        if (login) {
            hexkey(argv[4], key);
            if (oidc_login_cookie_open(key, str_from(argv[5]), now, &pd, &err) != 0) {
                return fail(&err);
            }
        }
        size_t n;
        char *body = slurp(file, &n);
        struct oidc_tokens t;
        if (oidc_token_response(p, k, atoi(status), (struct str){ body, n },
                                login ? pd.nonce : NULL, now, &t, &err) != 0) {
            return fail(&err);
        }
        json_t *out =
            json_pack("{s:b, s:s, s:s?, s:s?, s:I, s:I}", "ok", 1, "access_token", t.access_token,
                      "refresh_token", t.refresh_token, "id_token", t.id_token, "expires_at",
                      (json_int_t)t.expires_at_s, "id_exp", (json_int_t)t.id_exp_s);
        if (t.id_claims != NULL) {
            struct oidc_identity id;
            if (oidc_identity_build(p, t.id_claims, NULL, &id, &err) != 0) {
                return fail(&err);
            }
            json_object_set_new(out, "identity", identity_json(&id));
            oidc_identity_fini(&id);
        }
        if (login) {
            json_object_set_new(out, "return_path", json_string(pd.return_path));
        }
        emit(out);
        free(body);
        oidc_tokens_fini(&t);
        oidc_pending_fini(&pd);
        jwks_unref(k);
        oidc_provider_free(p);
        return 0;
    }
    if (strcmp(cmd, "userinfo-req") == 0 && argc == 5) {
        struct oidc_provider *p = provider(argv[2]);
        struct oidc_metadata *m = metadata(p, argv[3]);
        struct oidc_http h;
        if (oidc_userinfo_request(m, argv[4], &h, &err) != 0) {
            return fail(&err);
        }
        return emit_http(&h);
    }
    if (strcmp(cmd, "userinfo") == 0 && argc == 6) {
        size_t n;
        char *body = slurp(argv[4], &n);
        json_t *ui = NULL;
        (void)argv[2];
        if (oidc_userinfo_parse(atoi(argv[3]), (struct str){ body, n }, argv[5], &ui, &err) != 0) {
            return fail(&err);
        }
        return emit(json_pack("{s:b, s:o}", "ok", 1, "userinfo", ui));
    }
    if (strcmp(cmd, "refresh-req") == 0 && argc == 5) {
        struct oidc_provider *p = provider(argv[2]);
        struct oidc_metadata *m = metadata(p, argv[3]);
        struct oidc_http h;
        if (oidc_refresh_request(p, m, argv[4], now, &h, &err) != 0) {
            return fail(&err);
        }
        return emit_http(&h);
    }
    if (strcmp(cmd, "logout-url") == 0 && argc == 6) {
        struct oidc_provider *p = provider(argv[2]);
        struct oidc_metadata *m = metadata(p, argv[3]);
        char *u = oidc_logout_url(p, m, argv[4], argv[5]);
        return emit(json_pack("{s:b, s:s?}", "ok", 1, "url", u));
    }
    if (strcmp(cmd, "logout-token") == 0 && argc == 5) {
        struct oidc_provider *p = provider(argv[2]);
        struct jwks *k = keyset(argv[3]);
        size_t n;
        char *body = slurp(argv[4], &n);
        char *sid = NULL, *sub = NULL;
        struct oidc_replay *rp = oidc_replay_new(16);
        if (oidc_logout_token_verify(p, k, (struct str){ body, n }, rp, now, &sid, &sub, &err) !=
            0) {
            return fail(&err);
        }
        /* The same token a second time is a replay. */
        char *s2 = NULL, *u2 = NULL;
        struct err err2 = { 0 };
        int again =
            oidc_logout_token_verify(p, k, (struct str){ body, n }, rp, now, &s2, &u2, &err2);
        return emit(json_pack("{s:b, s:s?, s:s?, s:s}", "ok", 1, "sid", sid, "sub", sub, "replay",
                              again == 0 ? "accepted" : err2.msg));
    }
    if (strcmp(cmd, "bearer") == 0 && argc == 5) {
        struct oidc_provider *p = provider(argv[2]);
        struct jwks *k = keyset(argv[3]);
        struct oidc_identity id;
        if (oidc_bearer_verify(p, k, str_from(argv[4]), now, &id, &err) != 0) {
            return fail(&err);
        }
        return emit(json_pack("{s:b, s:o}", "ok", 1, "identity", identity_json(&id)));
    }
    fprintf(stderr, "usage: oidc_rp_tool login|callback|token|userinfo-req|userinfo|"
                    "refresh-req|refresh|logout-url|logout-token|bearer ...\n");
    return 2;
}
