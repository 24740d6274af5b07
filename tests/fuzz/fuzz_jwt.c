/* Fuzz target for authn/jwt.c: any bytes as a compact JWS and, split off at the
 * first NUL, as a JWKS. Invariants: verification never succeeds (no input can
 * carry a valid signature of our fixed test key), results are one of the
 * documented codes, messages are NUL-terminated, and jwt_peek_kid never reads
 * outside the input. */
#include <string.h>

#include "authn/jwt.h"

#include "replay.h"

static const char test_jwks[] = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"k1\","
                                "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    struct str tok = { (const char *)data, nul ? (size_t)(nul - data) : size };
    struct err err = { 0 };
    static struct jwks *fixed;
    if (fixed == NULL) {
        fixed = jwks_parse(STR(test_jwks), &err);
        CHECK(fixed != NULL);
    }
    if (nul != NULL) {
        struct jwks *k =
            jwks_parse((struct str){ (const char *)nul + 1, size - tok.len - 1 }, &err);
        CHECK(k != NULL || err.code == ERR_PARSE);
        jwks_unref(k);
    }
    const char *auds[] = { "gatehouse" };
    struct jwt_rules r = { .issuer = "https://idp.example",
                           .audiences = auds,
                           .naudiences = 1,
                           .client_id = "gatehouse",
                           .require_exp = true,
                           .now_s = 1800000000,
                           .skew_s = 60 };
    json_t *c = NULL;
    int rc = jwt_verify(tok, fixed, &r, &c, &err);
    CHECK(rc == ERR_PARSE || rc == ERR_CRYPTO || rc == ERR_NOTFOUND);
    CHECK(c == NULL);
    CHECK(memchr(err.msg, '\0', sizeof err.msg) != NULL);
    free(jwt_peek_kid(tok));
    return 0;
}
