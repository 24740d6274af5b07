/* Unit tests for authn/session_pg.c without a server: the connection string
 * shown by `check --dump` never carries a password, in either libpq form. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "authn/session_pg.h"

static void expect(const char *in, const char *want)
{
    char *got = spg_conninfo_redacted(in);
    assert_string_equal(got, want);
    free(got);
}

static void test_uri(void **state)
{
    (void)state;
    expect("postgresql://gh@db:5432/gh", "postgresql://gh@db:5432/gh");
    expect("postgresql://db/gh?sslmode=verify-full", "postgresql://db/gh?sslmode=verify-full");
    expect("postgresql://gh:s3cret@db/gh", "postgresql://gh:****@db/gh");
    expect("postgres://gh:p@ss@db/gh?sslmode=require", "postgres://gh:****@db/gh?sslmode=require");
    expect("postgresql://gh@db/gh?password=s3cret&sslmode=require",
           "postgresql://gh@db/gh?password=****&sslmode=require");
    expect("postgresql://gh@db/gh?sslmode=require&password=s3cret",
           "postgresql://gh@db/gh?sslmode=require&password=****");
}

static void test_key_value(void **state)
{
    (void)state;
    expect("host=db dbname=gh", "dbname='gh' host='db'");
    char *got = spg_conninfo_redacted("host=db password = 'it\\'s s3cret' user=gh");
    /* libpq's own parse; whatever the order, the secret is gone. */
    assert_null(strstr(got, "s3cret"));
    assert_non_null(strstr(got, "password='****'"));
    assert_non_null(strstr(got, "user='gh'"));
    free(got);
    got = spg_conninfo_redacted("host=db password=s3cret");
    assert_null(strstr(got, "s3cret"));
    free(got);
    expect("host='unterminated", "(unparsable)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri),
        cmocka_unit_test(test_key_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
