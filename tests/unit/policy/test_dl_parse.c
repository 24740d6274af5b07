/* Unit tests for policy/dl_parse.c: the one-pass parser of the decision log's own
 * lines (index: deferred reads them back) against the jansson parser, field by
 * field: the writer's lines (formats 1, 2 and 3, escapes, non-ASCII, repeated claim
 * names, admin records, long paths) all take the fast path and agree; hand-made
 * lines either agree or are left to jansson, never accepted differently. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../fuzz/dl_row_same.h"
#include "policy/decision_log_int.h"
#include "policy/policy.h"

/* A record line as the writer makes it. */
static size_t line_of(struct sbuf *b, const struct decision_record *r, uint64_t seq)
{
    char h[65];
    b->len = 0;
    dl_line_append(b, r, seq, DL_GENESIS, h, NULL);
    b->len--; /* the newline */
    return b->len;
}

static void expect_fast(const struct decision_record *r, uint64_t seq)
{
    struct sbuf b = { 0 };
    size_t n = line_of(&b, r, seq);
    bool jok;
    int rc = dl_parse_both(b.p, n, &jok);
    if (rc != 1) {
        fprintf(stderr, "line: %s\n", b.p);
    }
    assert_true(jok);
    assert_int_equal(rc, 1);
    dl_sbuf_free(&b);
}

static const char *const grp3[] = { "engineering", "staff", "vpn-users" };

static struct decision_record base(void)
{
    static const struct policy_kv claims[] = { { { "amr", 3 }, { "mfa", 3 } } };
    return (struct decision_record){
        .ts_us = 1765000000123456,
        .request_id = "req-1",
        .route = "wiki",
        .decision = "allow",
        .rule = "eng",
        .reason = "Engineers.",
        .user = "alice",
        .email = "alice@example.com",
        .idp = "corp",
        .session = "3f9a1c0d2b7e",
        .groups = grp3,
        .ngroups = 3,
        .claims = claims,
        .nclaims = 1,
        .device_present = true,
        .device_trusted = true,
        .device_id = "laptop-0017",
        .device_owner = "alice@example.com",
        .client_ip = "10.1.2.3",
        .method = "GET",
        .host = "wiki.example.com",
        .path = "/docs",
        .latency_us = 41,
        .kind = "policy",
        .enforced = "allow",
        .node = "node-a",
    };
}

static void test_writer_formats(void **state)
{
    (void)state;
    struct decision_record r = base();
    expect_fast(&r, 1); /* format 3 */
    r.node = NULL;
    expect_fast(&r, 2); /* format 2 */
    r.kind = NULL;
    r.enforced = NULL;
    expect_fast(&r, 3); /* format 1 */
    r = base();
    r.opa_called = true;
    r.opa_result = "deny";
    r.opa_ms = 4000000000u;
    r.latency_us = 999999999999999999ull;
    r.shadow = true;
    r.device_present = r.device_trusted = false;
    r.device_id = r.device_owner = NULL;
    expect_fast(&r, 123456789012345678ull);
    /* Every string NULL, and every string empty. */
    struct decision_record z = { .ts_us = 0, .kind = "signin", .node = "" };
    expect_fast(&z, 4);
    static const char *const empty[] = { "" };
    static const struct policy_kv ekv[] = { { { "", 0 }, { "", 0 } } };
    struct decision_record e = { .request_id = "",
                                 .route = "",
                                 .decision = "",
                                 .rule = "",
                                 .reason = "",
                                 .user = "",
                                 .email = "",
                                 .idp = "",
                                 .session = "",
                                 .groups = empty,
                                 .ngroups = 1,
                                 .claims = ekv,
                                 .nclaims = 1,
                                 .device_id = "",
                                 .device_owner = "",
                                 .client_ip = "",
                                 .method = "",
                                 .host = "",
                                 .path = "",
                                 .opa_result = "",
                                 .kind = "",
                                 .enforced = "",
                                 .node = "n" };
    expect_fast(&e, 5);
}

static void test_writer_admin(void **state)
{
    (void)state;
    struct decision_record r = { .ts_us = 1765000000000001,
                                 .kind = "admin",
                                 .decision = "allow",
                                 .admin_action = "session.revoke",
                                 .admin_actor = "root",
                                 .admin_from = "tty1",
                                 .admin_target = "session 0123abcd",
                                 .node = "n1" };
    expect_fast(&r, 9);
    r.admin_actor = NULL;
    r.admin_from = NULL;
    expect_fast(&r, 10);
    r.node = NULL;
    expect_fast(&r, 11);
}

static void test_writer_escapes_and_utf8(void **state)
{
    (void)state;
    static const char *const grp[] = { "a\"b",
                                       "back\\slash",
                                       "tab\tnl\nnul-free\x01\x1f\x7f",
                                       "caf\xc3\xa9",
                                       "\xe2\x82\xac",
                                       "\xf0\x9f\x98\x80",
                                       "" };
    static const struct policy_kv claims[] = {
        { { "groups", 6 }, { "x\"y", 3 } },
        { { "amr", 3 }, { "pwd", 3 } },
        { { "groups", 6 }, { "\xc3\xa9t\xc3\xa9", 6 } },
        { { "amr", 3 }, { "mfa", 3 } },
        { { "amr", 3 }, { "hwk\n", 4 } },
        { { "n\\ame", 5 }, { "", 0 } },
    };
    struct decision_record r = base();
    r.groups = grp;
    r.ngroups = sizeof grp / sizeof grp[0];
    r.claims = claims;
    r.nclaims = sizeof claims / sizeof claims[0];
    r.reason = "quote \" backslash \\ slash / ctl \b\f\n\r\t \x01 del \x7f";
    r.user = "J\xc3\xbcrgen \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x94\x91";
    r.path = "/a%20b/\"q\"?x=1&y=\\";
    expect_fast(&r, 7);
    /* A long path. */
    char *longp = malloc(70000);
    for (size_t i = 0; i < 69999; i++) {
        longp[i] = (char)('a' + i % 26);
    }
    longp[0] = '/';
    longp[69999] = '\0';
    r = base();
    r.path = longp;
    expect_fast(&r, 8);
    free(longp);
    /* No groups, no claims; repeated claim names only. */
    static const struct policy_kv rep[] = { { { "r", 1 }, { "1", 1 } },
                                            { { "r", 1 }, { "2", 1 } },
                                            { { "r", 1 }, { "3", 1 } } };
    r = base();
    r.ngroups = 0;
    r.nclaims = 0;
    expect_fast(&r, 12);
    r.claims = rep;
    r.nclaims = 3;
    expect_fast(&r, 13);
}

#define H64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define HEAD                                                                                       \
    "{\"v\":3,\"seq\":5,\"node\":\"n\",\"ts\":\"2026-03-10T09:30:00.123456Z\",\"kind\":\"policy\","
#define MID                                                                                        \
    "\"request_id\":\"r\",\"route\":\"w\",\"decision\":\"allow\",\"rule\":null,\"reason\":null,"   \
    "\"user\":\"u\",\"email\":null,"
#define TAIL                                                                                       \
    ",\"idp\":null,\"session\":null,\"device\":{\"present\":false,\"id\":null,\"owner\":null,"     \
    "\"trusted\":false},\"client_ip\":\"1.2.3.4\",\"method\":\"GET\",\"host\":\"h\",\"path\":"     \
    "\"/\",\"shadow\":false,\"enforced\":\"allow\",\"opa\":{\"called\":false,\"result\":null,"     \
    "\"ms\":0},\"latency_us\":1,\"admin\":null,\"prev_hash\":\"" H64 "\",\"hash\":\"" H64 "\"}"
#define LINE(groups, claims) HEAD MID "\"groups\":" groups ",\"claims\":" claims TAIL

/* Hand-made lines: fast 1 (taken, agrees), 0 (left to jansson), whatever jansson says. */
static const struct {
    const char *line;
    int fast;
} cases[] = {
    { LINE("[]", "{}"), 1 },
    { LINE("[\"a\",\"b\"]", "{\"x\":[\"1\",\"2\"]}"), 1 },
    /* Escapes the writer never makes: taken, decoded, groups/claims re-encoded. */
    { LINE("[\"\\/\\u0041\\u00e9\\u20ac\\ud83d\\ude00\"]", "{\"\\u0061\":\"\\b\\f\\r\"}"), 1 },
    { LINE("[\"x\"]", "{\"one\":[\"1\"],\"none\":[]}"), 1 },
    { LINE("[\"raw\x7f\"]", "{}"), 1 },
    /* Left to jansson: whitespace, other types, duplicate names, bad escapes. */
    { LINE("[ \"a\"]", "{}"), 0 },
    { LINE("[null,1,true]", "{}"), 0 },
    { LINE("[]", "{\"a\":\"1\",\"a\":\"2\"}"), 0 },
    { LINE("[]", "{\"a\":\"1\",\"\\u0061\":\"2\"}"), 0 },
    { LINE("[]", "{\"a\":1}"), 0 },
    { LINE("[\"\\u0000\"]", "{}"), 0 },
    { LINE("[\"\\ud800\"]", "{}"), 0 },
    { LINE("[\"\\udc00\"]", "{}"), 0 },
    { LINE("[\"\\ud800\\u0041\"]", "{}"), 0 },
    { LINE("[\"\\x\"]", "{}"), 0 },
    { LINE("[\"\\u12g4\"]", "{}"), 0 },
    { LINE("[\"\xc0\xaf\"]", "{}"), 0 },
    { LINE("[\"\xed\xa0\x80\"]", "{}"), 0 },
    { LINE("[\"\xf4\x90\x80\x80\"]", "{}"), 0 },
    { LINE("[\"\xe2\x82\"]", "{}"), 0 },
    { LINE("[\"tab\there\"]", "{}"), 0 },
    { HEAD MID "\"groups\":[],\"claims\":{}" TAIL " ", 0 },
    { HEAD MID "\"groups\":[],\"claims\":{}" TAIL "x", 0 },
    { "{\"v\":3,\"seq\":05,\"ts\":\"2026-03-10T09:30:00.123456Z\"}", 0 },
    { "{\"v\":3,\"seq\":-5}", 0 },
    { "{\"v\":3,\"seq\":1.0}", 0 },
    { "{\"v\":3,\"seq\":0}", 0 },
    { "{\"v\":3,\"seq\":99999999999999999999}", 0 },
    { "", 0 },
    { "{", 0 },
    { "{\"v\":3,\"seq\":5,\"node\":\"n\",\"ts\":\"2026-03-10T09:30:00.123456Z\"", 0 },
    /* A format-1 line (no kind, enforced, admin, node). */
    { "{\"v\":1,\"seq\":5,\"ts\":\"2026-03-10T09:30:00.123456Z\"," MID
      "\"groups\":[],\"claims\":{},\"idp\":null,\"session\":null,\"device\":{\"present\":true,"
      "\"id\":\"d\",\"owner\":\"o\",\"trusted\":true},\"client_ip\":\"1.2.3.4\",\"method\":\"GET\","
      "\"host\":\"h\",\"path\":\"/\",\"shadow\":true,\"opa\":{\"called\":true,\"result\":\"allow\","
      "\"ms\":12},\"latency_us\":1,\"prev_hash\":\"" H64 "\",\"hash\":\"" H64 "\"}",
      1 },
    /* A short hash, an escaped hash, an odd ts: jansson refuses or agrees. */
    { HEAD MID
      "\"groups\":[],\"claims\":{}"
      ",\"idp\":null,\"session\":null,\"device\":{"
      "\"present\":false,\"id\":null,\"owner\":null,\"trusted\":false},\"client_ip\":null,"
      "\"method\":null,\"host\":null,\"path\":null,\"shadow\":false,\"enforced\":null,\"opa\":{"
      "\"called\":false,\"result\":null,\"ms\":0},\"latency_us\":0,\"admin\":{\"action\":\"a\","
      "\"actor\":null,\"from\":\"f\",\"target\":\"t\"},\"prev_hash\":\"" H64 "\",\"hash\":\"abc\"}",
      0 },
    { HEAD MID
      "\"groups\":[],\"claims\":{}"
      ",\"idp\":null,\"session\":null,\"device\":{"
      "\"present\":false,\"id\":null,\"owner\":null,\"trusted\":false},\"client_ip\":null,"
      "\"method\":null,\"host\":null,\"path\":null,\"shadow\":false,\"enforced\":null,\"opa\":{"
      "\"called\":false,\"result\":null,\"ms\":0},\"latency_us\":0,\"admin\":{\"action\":\"a\","
      "\"actor\":null,\"from\":\"f\",\"target\":\"t\"},\"prev_hash\":\"" H64
      "\",\"hash\":\"\\u0030123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}",
      1 },
};

static void test_hand_made(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool jok;
        int rc = dl_parse_both(cases[i].line, strlen(cases[i].line), &jok);
        if (rc != cases[i].fast) {
            fprintf(stderr, "case %zu: fast %d, expected %d (jansson %d)\n", i, rc, cases[i].fast,
                    jok);
        }
        assert_int_equal(rc, cases[i].fast);
    }
}

/* Every prefix and every one-byte change of a writer line: never a disagreement. */
static void test_mutations(void **state)
{
    (void)state;
    static const struct policy_kv claims[] = { { { "amr", 3 }, { "mfa", 3 } },
                                               { { "amr", 3 }, { "pwd", 3 } } };
    struct decision_record r = base();
    r.claims = claims;
    r.nclaims = 2;
    r.reason = "a \"quoted\" reason\n\xc3\xa9";
    struct sbuf b = { 0 };
    size_t n = line_of(&b, &r, 77);
    char *m = malloc(n + 1);
    static const char subst[] = "\"\\,:{}[]0 -nu\x7f\x80\xc3";
    for (size_t i = 0; i <= n; i++) {
        assert_true(dl_parse_both(b.p, i, NULL) >= 0);
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof subst - 1; k++) {
            memcpy(m, b.p, n);
            m[i] = subst[k];
            assert_true(dl_parse_both(m, n, NULL) >= 0);
        }
    }
    free(m);
    dl_sbuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_formats),
        cmocka_unit_test(test_writer_admin),
        cmocka_unit_test(test_writer_escapes_and_utf8),
        cmocka_unit_test(test_hand_made),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
