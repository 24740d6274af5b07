/* Unit tests for proxy/route.c: host normalisation, exact > wildcard > any,
 * longest prefix on segment boundaries, fall-through between host groups. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/config.h"
#include "proxy/route.h"

static const char yaml[] =
    "listen: [{address: 127.0.0.1:8080}]\n"
    "routes:\n"
    "  - {name: exact, match: {host: a.test}, upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: api, match: {host: a.test, path_prefix: /api}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: apiv2, match: {host: a.test, path_prefix: /api/v2/}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: wild, match: {host: '*.wild.test'}, upstream: {servers: [http://h:1]}, "
    "public: true}\n"
    "  - {name: deeper, match: {host: '*.b.wild.test'}, upstream: {servers: [http://h:1]}, "
    "public: true}\n"
    "  - {name: exactwild, match: {host: exact.wild.test}, upstream: {servers: [http://h:1]}, "
    "public: true}\n"
    "  - {name: only-admin, match: {host: o.test, path_prefix: /admin}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: v6, match: {host: '[::1]'}, upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: deep-only, match: {host: '*.z.wild.test', path_prefix: /only}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: catchall-static, match: {path_prefix: /static}, "
    "upstream: {servers: [http://h:1]}, public: true}\n"
    "  - {name: catchall, upstream: {servers: [http://h:1]}, public: true}\n";

static int setup(void **state)
{
    struct conf_diag d = { 0 };
    struct config *c = config_parse("r.yaml", yaml, sizeof yaml - 1, &d);
    conf_diag_print(&d, stderr);
    conf_diag_fini(&d);
    *state = c;
    return c ? 0 : -1;
}

static int teardown(void **state)
{
    config_unref(*state);
    return 0;
}

static const char *match(void **state, const char *host, const char *path)
{
    const struct route_conf *r = route_match_config(*state, str_from(host), str_from(path));
    return r ? r->name : "(none)";
}

static void test_host_strip_removes_port_and_trailing_dot(void **state)
{
    struct str s;
    (void)state;
    s = route_host_strip(STR("a.test:8080"));
    assert_int_equal(s.len, 6);
    s = route_host_strip(STR("a.test."));
    assert_int_equal(s.len, 6);
    s = route_host_strip(STR("a.test.:80"));
    assert_int_equal(s.len, 6);
    s = route_host_strip(STR("[::1]:8080"));
    assert_int_equal(s.len, 5);
    s = route_host_strip(STR(""));
    assert_int_equal(s.len, 0);
}

static void test_exact_host_case_insensitive_port_ignored(void **state)
{
    assert_string_equal(match(state, "a.test", "/"), "exact");
    assert_string_equal(match(state, "A.TEST", "/x"), "exact");
    assert_string_equal(match(state, "a.test:8443", "/x"), "exact");
    assert_string_equal(match(state, "a.test.", "/x"), "exact");
    assert_string_equal(match(state, "[::1]:80", "/x"), "v6");
}

static void test_longest_prefix_on_segment_boundary(void **state)
{
    assert_string_equal(match(state, "a.test", "/api"), "api");
    assert_string_equal(match(state, "a.test", "/api/"), "api");
    assert_string_equal(match(state, "a.test", "/api/users"), "api");
    assert_string_equal(match(state, "a.test", "/apix"), "exact");
    assert_string_equal(match(state, "a.test", "/ap"), "exact");
    /* A prefix ending in '/' matches what starts with it, not the bare segment. */
    assert_string_equal(match(state, "a.test", "/api/v2/items"), "apiv2");
    assert_string_equal(match(state, "a.test", "/api/v2/"), "apiv2");
    assert_string_equal(match(state, "a.test", "/api/v2"), "api");
    assert_string_equal(match(state, "a.test", "/api/v20"), "api");
    /* ";params" end a segment: "/api;v=1" is under /api (a servlet backend reads
     * it as /api), and never falls through to a route for a shorter prefix. */
    assert_string_equal(match(state, "a.test", "/api;v=1"), "api");
    assert_string_equal(match(state, "a.test", "/api;jsessionid=x/users"), "api");
    assert_string_equal(match(state, "o.test", "/admin;x"), "only-admin");
    assert_string_equal(match(state, "a.test", "/apix;y"), "exact");
}

static void test_case_insensitive_prefix(void **state)
{
    static const char y[] =
        "listen: [{address: 127.0.0.1:8080}]\n"
        "routes:\n"
        "  - {name: ci, match: {host: ci.test, path_prefix: /Admin, path_case_insensitive: true}, "
        "upstream: {servers: [http://h:1]}, public: true}\n"
        "  - {name: cs, match: {host: cs.test, path_prefix: /Admin}, "
        "upstream: {servers: [http://h:1]}, public: true}\n"
        "  - {name: any, upstream: {servers: [http://h:1]}, public: true}\n";
    struct conf_diag d = { 0 };
    struct config *c = config_parse("r.yaml", y, sizeof y - 1, &d);
    (void)state;
    assert_non_null(c);
    conf_diag_fini(&d);
    assert_string_equal(c->routes[0].path_prefix, "/admin");
    assert_string_equal(route_match_config(c, STR("ci.test"), STR("/ADMIN/x"))->name, "ci");
    assert_string_equal(route_match_config(c, STR("ci.test"), STR("/admin;x"))->name, "ci");
    assert_string_equal(route_match_config(c, STR("ci.test"), STR("/aDmIn"))->name, "ci");
    assert_string_equal(route_match_config(c, STR("ci.test"), STR("/ADMINX"))->name, "any");
    assert_string_equal(route_match_config(c, STR("cs.test"), STR("/Admin"))->name, "cs");
    assert_string_equal(route_match_config(c, STR("cs.test"), STR("/admin"))->name, "any");
    config_unref(c);
}

static void test_query_and_fragment_are_not_part_of_the_path(void **state)
{
    assert_string_equal(match(state, "a.test", "/api?x=/api/v2/"), "api");
    assert_string_equal(match(state, "a.test", "/apix?/api"), "exact");
    assert_string_equal(match(state, "a.test", "/api#frag"), "api");
}

static void test_wildcard_matches_any_depth_but_not_the_bare_domain(void **state)
{
    assert_string_equal(match(state, "x.wild.test", "/"), "wild");
    assert_string_equal(match(state, "X.Y.Wild.Test:81", "/"), "wild");
    assert_string_equal(match(state, "wild.test", "/"), "catchall");
    assert_string_equal(match(state, "xwild.test", "/"), "catchall");
    assert_string_equal(match(state, ".wild.test", "/"), "catchall");
}

static void test_longest_wildcard_suffix_wins(void **state)
{
    assert_string_equal(match(state, "c.b.wild.test", "/"), "deeper");
    assert_string_equal(match(state, "b.wild.test", "/"), "wild");
}

static void test_exact_beats_wildcard(void **state)
{
    assert_string_equal(match(state, "exact.wild.test", "/"), "exactwild");
    assert_string_equal(match(state, "EXACT.wild.test", "/a"), "exactwild");
}

static void test_no_prefix_match_in_host_group_falls_to_next_group(void **state)
{
    assert_string_equal(match(state, "o.test", "/admin/x"), "only-admin");
    assert_string_equal(match(state, "o.test", "/static/a.css"), "catchall-static");
    assert_string_equal(match(state, "o.test", "/"), "catchall");
    /* Between wildcards too: the longer suffix has no match for /x, the shorter does. */
    assert_string_equal(match(state, "q.z.wild.test", "/only/1"), "deep-only");
    assert_string_equal(match(state, "q.z.wild.test", "/x"), "wild");
    assert_string_equal(match(state, "z.wild.test", "/only"), "wild");
}

static void test_unknown_and_empty_hosts_use_hostless_routes(void **state)
{
    assert_string_equal(match(state, "nobody.test", "/static"), "catchall-static");
    assert_string_equal(match(state, "", "/"), "catchall");
    assert_string_equal(match(state, "", ""), "(none)");
}

static void test_no_route_returns_null(void **state)
{
    const char y[] = "listen: [{address: 127.0.0.1:8080}]\n"
                     "routes:\n"
                     "  - {name: a, match: {host: a.test}, upstream: {servers: [http://h:1]}, "
                     "public: true}\n";
    struct conf_diag d = { 0 };
    struct config *c = config_parse("r.yaml", y, sizeof y - 1, &d);
    (void)state;
    assert_non_null(c);
    assert_null(route_match_config(c, STR("b.test"), STR("/")));
    assert_null(route_match_config(c, STR(""), STR("/")));
    assert_non_null(route_match_config(c, STR("a.test"), STR("/")));
    assert_null(route_match(NULL, STR("a.test"), STR("/")));
    config_unref(c);
    conf_diag_fini(&d);
}

/* Thousands of hosts, several routes per host, in shuffled order: every route
 * is found for its own host and prefix (the table groups by sorting). */
static void test_many_hosts_each_route_finds_itself(void **state)
{
    enum { N = 3000 };
    size_t cap = 64 + N * 120, len = 0;
    char *y = malloc(cap);
    struct conf_diag d = { 0 };
    struct config *c;
    (void)state;

    assert_non_null(y);
    len += (size_t)snprintf(y + len, cap - len, "listen: [{address: 127.0.0.1:8080}]\nroutes:\n");
    for (unsigned i = 0; i < N; i++) {
        unsigned h = (i * 7919u) % 1000; /* hosts revisited out of order */
        len += (size_t)snprintf(y + len, cap - len,
                                "  - {name: r%u, match: {host: '%sh%u.test', path_prefix: /p%u}, "
                                "upstream: {servers: [http://h:1]}, public: true}\n",
                                i, i % 3 == 0 ? "*." : "", h, i);
    }
    c = config_parse("many.yaml", y, len, &d);
    conf_diag_print(&d, stderr);
    assert_non_null(c);
    for (unsigned i = 0; i < N; i++) {
        const struct route_conf *r = &c->routes[i];
        char host[64], path[32];
        snprintf(host, sizeof host, "%s%s", r->host_wildcard ? "x" : "", r->host);
        snprintf(path, sizeof path, "/p%u/z", i);
        assert_ptr_equal(route_match_config(c, str_from(host), str_from(path)), r);
    }
    config_unref(c);
    conf_diag_fini(&d);
    free(y);
}

static void test_empty_table(void **state)
{
    struct route_table *t = route_table_new(NULL, 0);
    (void)state;
    assert_null(route_match(t, STR("a"), STR("/")));
    route_table_free(t);
    route_table_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_strip_removes_port_and_trailing_dot),
        cmocka_unit_test(test_exact_host_case_insensitive_port_ignored),
        cmocka_unit_test(test_longest_prefix_on_segment_boundary),
        cmocka_unit_test(test_query_and_fragment_are_not_part_of_the_path),
        cmocka_unit_test(test_case_insensitive_prefix),
        cmocka_unit_test(test_wildcard_matches_any_depth_but_not_the_bare_domain),
        cmocka_unit_test(test_longest_wildcard_suffix_wins),
        cmocka_unit_test(test_exact_beats_wildcard),
        cmocka_unit_test(test_no_prefix_match_in_host_group_falls_to_next_group),
        cmocka_unit_test(test_unknown_and_empty_hosts_use_hostless_routes),
        cmocka_unit_test(test_no_route_returns_null),
        cmocka_unit_test(test_many_hosts_each_route_finds_itself),
        cmocka_unit_test(test_empty_table),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
