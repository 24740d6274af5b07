/* Fuzz target for authn/attrs.c: any bytes as the stored groups and claims
 * texts of a session (split at the first NUL). Invariants: a block is always
 * built; every group and claim span lies inside its strings and is
 * NUL-terminated there; protocol claims never appear; an overflowing list is
 * empty; the stored texts are kept as given; the same input gives the same
 * lists; a held reference survives the creator's. */
#include <string.h>

#include "authn/attrs.h"

#include "replay.h"

static void check_spans(const struct authn_attrs *x)
{
    for (size_t i = 0; i < x->ngroups; i++) {
        CHECK(x->groups[i].p != NULL && x->groups[i].p[x->groups[i].len] == '\0');
    }
    for (size_t i = 0; i < x->nclaims; i++) {
        const struct authn_claim *c = &x->claims[i];
        CHECK(c->name.p != NULL && c->name.p[c->name.len] == '\0');
        CHECK(c->value.p != NULL && c->value.p[c->value.len] == '\0');
        CHECK(!str_eq_cstr(c->name, "iss") && !str_eq_cstr(c->name, "nonce") &&
              !str_eq_cstr(c->name, "sid"));
        CHECK(c->type == AUTHN_CLAIM_STRING || c->type == AUTHN_CLAIM_BOOL ||
              c->type == AUTHN_CLAIM_INT);
    }
    CHECK(!x->groups_overflow || x->ngroups == 0);
    CHECK(!x->claims_overflow || x->nclaims == 0);
    CHECK(x->ngroups <= AUTHN_MAX_GROUPS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 2);
    CHECK(buf != NULL);
    memcpy(buf, data, size);
    buf[size] = '\0';
    buf[size + 1] = '\0';
    const char *groups = buf, *claims = buf + strlen(buf) + 1;
    if (claims > buf + size) {
        claims = buf + size + 1; /* no NUL in the input: empty claims text */
    }

    struct authn_attrs *x = attrs_parse(groups, claims);
    CHECK(x != NULL);
    CHECK(strcmp(x->groups_json, groups) == 0 && strcmp(x->claims_json, claims) == 0);
    check_spans(x);
    struct authn_attrs *y = attrs_parse(groups, claims);
    CHECK(y->ngroups == x->ngroups && y->nclaims == x->nclaims);
    for (size_t i = 0; i < x->ngroups; i++) {
        CHECK(str_eq(x->groups[i], y->groups[i]));
    }
    attrs_unref(y);
    struct arena *a = arena_new(0);
    CHECK(attrs_hold(a, x));
    attrs_unref(x); /* the arena's reference keeps it */
    check_spans(x);
    arena_free(a);
    free(buf);
    return 0;
}
