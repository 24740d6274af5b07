/* Fuzz target for the IdP answers parsed by authn/oidc.c: any bytes as a
 * discovery document, a token response, a userinfo answer, a callback query,
 * a back-channel logout body, a login cookie, a return path, and claims mapped
 * to an identity. Invariants:
 * nothing is accepted that needs a signature or a key (token response with a
 * nonce, logout token, sealed login cookie), parsers
 * return documented codes, accepted return paths are same-host paths, an
 * identity's email has exactly one '@' and no spaces or control bytes and was
 * verified, and a user id splits back into provider and sub at its first ':'. */
#include <stdlib.h>
#include <string.h>

#include "authn/oidc.h"

#include "replay.h"

static const char conf[] = "- {id: corp, type: oidc, issuer: 'https://idp.example', "
                           "client_id: gatehouse, client_secret: s}\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct oidc_provider *p;
    static struct oidc_metadata *m;
    struct err err = { 0 };
    struct str in = { (const char *)data, size };
    if (p == NULL) {
        struct conf_diag d = { 0 };
        struct conf_doc *doc = conf_doc_parse("f.yaml", conf, sizeof conf - 1, &d);
        p = oidc_provider_parse(&d, doc->root->items[0], "f.yaml");
        CHECK(p != NULL);
        m = oidc_metadata_parse(p, 200,
                                STR("{\"issuer\":\"https://idp.example\",\"authorization_endpoint"
                                    "\":\"https://idp.example/a\",\"token_endpoint\":\"https://"
                                    "idp.example/t\",\"jwks_uri\":\"https://idp.example/j\"}"),
                                &err);
        CHECK(m != NULL);
        conf_doc_free(doc);
    }
    struct oidc_metadata *dm = oidc_metadata_parse(p, 200, in, &err);
    CHECK(dm == NULL || strcmp(dm->issuer, "https://idp.example") == 0);
    oidc_metadata_free(dm);

    struct oidc_tokens t;
    int rc = oidc_token_response(p, NULL, 200, in, "nonce", 1800000000, &t, &err);
    CHECK(rc != 0);
    rc = oidc_token_response(p, NULL, 400, in, NULL, 1800000000, &t, &err);
    CHECK(rc != 0);

    json_t *ui = NULL;
    rc = oidc_userinfo_parse(200, in, "alice", &ui, &err);
    CHECK((rc == 0) == (ui != NULL));
    CHECK(ui == NULL || strcmp(json_string_value(json_object_get(ui, "sub")), "alice") == 0);
    json_decref(ui);

    char idp[] = "corp", st[] = "S", nonce[] = "N", ver[] = "V", rp[] = "/", ru[] = "https://x/cb";
    struct oidc_pending pd = { .idp = idp,
                               .state = st,
                               .nonce = nonce,
                               .code_verifier = ver,
                               .return_path = rp,
                               .redirect_uri = ru,
                               .exp_s = 0 };
    struct oidc_http h;
    rc = oidc_callback(p, m, in, &pd, NULL, 1800000000, &h, &err);
    if (rc == 0) {
        CHECK(h.body != NULL && strncmp(h.body, "grant_type=authorization_code&code=", 35) == 0);
        oidc_http_fini(&h);
    }

    char *sid = NULL, *sub = NULL;
    rc = oidc_logout_token_verify(p, NULL, in, NULL, 1800000000, &sid, &sub, &err);
    CHECK(rc != 0 && sid == NULL && sub == NULL);

    /* No input opens as a login cookie without the key (AES-256-GCM tag). */
    static const unsigned char key[32] = { 1, 2, 3 };
    struct oidc_pending opened;
    CHECK(oidc_login_cookie_open(key, in, 1800000000, &opened, NULL) != 0);

    json_error_t jerr;
    json_t *claims = json_loadb((const char *)data, size, 0, &jerr);
    struct oidc_identity id;
    if (json_is_object(claims) && oidc_identity_build(p, claims, NULL, &id, &err) == 0) {
        if (id.email != NULL) {
            const char *at = strchr(id.email, '@');
            CHECK(at != NULL && at != id.email && at[1] != '\0' && strchr(at + 1, '@') == NULL);
            for (const char *c = id.email; *c; c++) {
                CHECK((unsigned char)*c > 0x20 && *c != 0x7f);
            }
            const json_t *ev = json_object_get(claims, "email_verified");
            CHECK(json_is_true(ev) ||
                  (json_is_string(ev) && strcmp(json_string_value(ev), "true") == 0));
        }
        for (int bare = 0; bare < 2; bare++) {
            char *u = oidc_user_id("corp", bare, id.sub);
            const char *colon = strchr(u, ':');
            if (colon == NULL) {
                CHECK(bare && strcmp(u, id.sub) == 0);
            } else {
                CHECK(colon - u == 4 && strncmp(u, "corp", 4) == 0 &&
                      strcmp(colon + 1, id.sub) == 0);
            }
            free(u);
        }
        oidc_identity_fini(&id);
    }
    json_decref(claims);

    if (oidc_return_path_safe(in)) {
        CHECK(size >= 1 && data[0] == '/');
        CHECK(size == 1 || (data[1] != '/' && data[1] != '\\'));
        CHECK(memchr(data, '\\', size) == NULL);
    }
    return 0;
}
