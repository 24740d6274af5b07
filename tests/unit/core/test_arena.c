/* Unit tests for core/arena.c: cap, alignment, reset, defers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "core/arena.h"

static void test_arena_alloc_is_aligned_and_capped(void **state)
{
    struct arena *a = arena_new(1024);
    (void)state;
    void *p = arena_alloc(a, 3);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    assert_null(arena_alloc(a, 2000));
    assert_non_null(arena_alloc(a, 500));
    assert_null(arena_alloc(a, 600));
    arena_free(a);
}

static void test_arena_grows_past_one_block_without_cap(void **state)
{
    struct arena *a = arena_new(0);
    (void)state;
    for (int i = 0; i < 100; i++) {
        char *p = arena_alloc(a, 1000);
        assert_non_null(p);
        memset(p, 'x', 1000);
    }
    assert_true(arena_used(a) >= 100000);
    arena_reset(a);
    assert_int_equal(arena_used(a), 0);
    arena_free(a);
}

static int defer_calls;
static void bump(void *arg)
{
    defer_calls += *(int *)arg;
}

static void test_arena_defer_runs_on_reset(void **state)
{
    struct arena *a = arena_new(0);
    int one = 1, ten = 10;
    (void)state;
    defer_calls = 0;
    assert_int_equal(arena_defer(a, bump, &one), 0);
    assert_int_equal(arena_defer(a, bump, &ten), 0);
    arena_reset(a);
    assert_int_equal(defer_calls, 11);
    arena_free(a);
    assert_int_equal(defer_calls, 11);
}

static void test_arena_printf_and_strndup(void **state)
{
    struct arena *a = arena_new(0);
    (void)state;
    assert_string_equal(arena_printf(a, "%s-%d", "req", 7), "req-7");
    assert_string_equal(arena_strndup(a, "abcdef", 3), "abc");
    arena_free(a);
}

/* An arena freed to the thread's cache and taken again starts empty, with
 * the new cap, its defers run once, and a grown arena gives back its blocks. */
static void test_arena_reused_from_cache_starts_fresh(void **state)
{
    (void)state;
    int one = 1;
    for (int round = 0; round < 40; round++) {
        struct arena *a = arena_new(round % 2 ? 4096 : 0);
        defer_calls = 0;
        assert_int_equal(arena_used(a), 0);
        assert_int_equal(arena_defer(a, bump, &one), 0);
        if (round % 2) {
            assert_null(arena_alloc(a, 5000)); /* capped this time */
        } else {
            for (int i = 0; i < 20; i++) {
                assert_non_null(arena_alloc(a, 1000)); /* past the first block */
            }
        }
        char *p = arena_strdup(a, "fresh");
        assert_non_null(p);
        assert_string_equal(p, "fresh");
        arena_free(a);
        assert_int_equal(defer_calls, 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_alloc_is_aligned_and_capped),
        cmocka_unit_test(test_arena_grows_past_one_block_without_cap),
        cmocka_unit_test(test_arena_defer_runs_on_reset),
        cmocka_unit_test(test_arena_printf_and_strndup),
        cmocka_unit_test(test_arena_reused_from_cache_starts_fresh),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
