/* Unit tests for core/ident.c: the one meaning of --user. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/ident.h"

static void test_bare_qualified_and_email(void **state)
{
    (void)state;
    /* Recorded bare, IdP "corp". */
    assert_true(ident_user_match("alice", "alice", "alice@example.com", "corp"));
    assert_true(ident_user_match("corp:alice", "alice", "alice@example.com", "corp"));
    assert_true(ident_user_match("Alice@EXAMPLE.com", "alice", "alice@example.com", "corp"));
    assert_false(ident_user_match("other:alice", "alice", "alice@example.com", "corp"));
    /* Recorded qualified ("<idp>:<sub>" once several IdPs are configured). */
    assert_false(ident_user_match("alice", "corp:alice", NULL, "corp")); /* bare is not qualified */
    assert_true(ident_user_match("corp:alice", "corp:alice", NULL, "corp"));
    assert_false(ident_user_match("other:alice", "corp:alice", NULL, "corp"));
    assert_false(ident_user_match("alice", "other:alice", NULL, "corp"));
}

static void test_never_partial_or_case_folded_ids(void **state)
{
    (void)state;
    assert_false(ident_user_match("ali", "alice", "alice@example.com", "corp"));
    assert_false(ident_user_match("ALICE", "alice", NULL, "corp")); /* ids are exact */
    assert_false(ident_user_match("lice@example.com", "alice", "alice@example.com", "corp"));
    assert_false(ident_user_match("corp:", "alice", NULL, "corp"));
    assert_false(ident_user_match(":alice", "alice", NULL, ""));
    assert_false(ident_user_match("", "", "", ""));
    assert_false(ident_user_match(NULL, "alice", NULL, NULL));
    assert_false(ident_user_match("alice", NULL, NULL, NULL));
    /* An email query never matches a different address that only shares a case fold
     * with the user id. */
    assert_false(ident_user_match("bob@example.com", "alice", "alice@example.com", "corp"));
    /* Subjects may hold ':' themselves. */
    assert_true(ident_user_match("corp:a:b", "a:b", NULL, "corp"));
    assert_true(ident_user_match("a:b", "a:b", NULL, "corp"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bare_qualified_and_email),
        cmocka_unit_test(test_never_partial_or_case_folded_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
