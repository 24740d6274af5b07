/* Unit tests for authn/page.c: the real web/login templates load and render,
 * text is escaped, raw slots take only our HTML, bad templates are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "authn/page.h"

static struct pages *load_real(void)
{
    struct err err = { 0 };
    char *dir = xasprintf("%s/web/login", GH_SOURCE_ROOT);
    struct pages *p = pages_load(dir, &err);
    if (p == NULL) {
        fail_msg("%s", err.msg);
    }
    free(dir);
    return p;
}

static void test_me_page_escapes_every_value(void **state)
{
    struct pages *p = load_real();
    struct arena *a = arena_new(0);
    struct page_var v[] = {
        { "name", "<script>alert(1)</script>" },
        { "user", "https://idp#alice" },
        { "email", "a\"b@example.com" },
        { "groups", "eng, admins" },
        { "idp", "corp" },
        { "expires", "2026-11-28T08:00:00Z" },
    };
    size_t len = 0;
    char *html = pages_render(p, PAGE_ME, v, sizeof v / sizeof v[0], a, &len);
    assert_non_null(html);
    assert_int_equal(strlen(html), len);
    assert_null(strstr(html, "<script>"));
    assert_non_null(strstr(html, "&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_non_null(strstr(html, "a&quot;b@example.com"));
    assert_non_null(strstr(html, "<dd id=\"me-device\"></dd>")); /* not given: empty */
    assert_null(strstr(html, "{{"));
    assert_true(pages_css(p).len > 100);
    arena_free(a);
    pages_free(p);
    (void)state;
}

static void test_chooser_lists_providers_with_safe_links(void **state)
{
    struct pages *p = load_real();
    struct arena *a = arena_new(0);
    struct page_provider pv[] = { { "corp", "Example Corp" }, { "part\"ners", NULL } };
    char *list = pages_provider_list(a, pv, 2, STR("/wiki?a=1&b=<2>"), NULL);
    assert_non_null(strstr(list, "href=\"/.gatehouse/login?idp=corp&amp;rd=%2Fwiki%3Fa%3D1%26b%3D"
                                 "%3C2%3E\">Sign in with Example Corp</a>"));
    assert_non_null(strstr(list, "idp=part%22ners"));
    assert_non_null(strstr(list, "Sign in with part&quot;ners"));
    struct page_var v[] = { { "host", "wiki.example.com" }, { "providers", list } };
    char *html = pages_render(p, PAGE_CHOOSER, v, 2, a, NULL);
    assert_non_null(strstr(html, "<li><a class=\"button\""));
    assert_non_null(strstr(html, "<title>Sign in - wiki.example.com</title>"));
    arena_free(a);
    pages_free(p);
    (void)state;
}

static void test_bad_template_is_refused_with_line(void **state)
{
    char dir[] = "/tmp/gh-page-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *cmd = xasprintf("cp %s/web/login/* %s/ && printf 'a\\nb {{nmae}}\\n' > %s/me.html",
                          GH_SOURCE_ROOT, dir, dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    struct err err = { 0 };
    assert_null(pages_load(dir, &err));
    char *want = xasprintf("%s/me.html:2: unknown placeholder \"nmae\"", dir);
    assert_string_equal(err.msg, want);
    free(want);
    /* A raw slot on a page that has none. */
    cmd = xasprintf("printf '{{{user}}}' > %s/me.html", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    assert_null(pages_load(dir, &err));
    assert_non_null(strstr(err.msg, "unknown raw placeholder \"user\""));
    cmd = xasprintf("rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_me_page_escapes_every_value),
        cmocka_unit_test(test_chooser_lists_providers_with_safe_links),
        cmocka_unit_test(test_bad_template_is_refused_with_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
