/* Unit tests for proxy/balance.c: the three policies, passive health with its
 * timeout, the all-down fallback, active-check state, max_conns, retries'
 * exclusion set and state carried over a reload. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/balance.h"
#include "proxy/config.h"

static char url_a[] = "http://10.0.0.1:80", url_b[] = "http://10.0.0.2:80",
            url_c[] = "http://10.0.0.3:80", url_d[] = "http://10.0.0.4:80";

static struct upstream_server servers3[3], servers_reload[2];

static struct upstream_conf up3(enum balance b)
{
    servers3[0].url = url_a;
    servers3[1].url = url_b;
    servers3[2].url = url_c;
    return (struct upstream_conf){
        .servers = servers3, .nservers = 3, .balance = b, .max_fails = 2, .fail_timeout_ms = 1000
    };
}

static void test_round_robin_cycles_in_order(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b = balancer_new(&u, NULL);
    (void)state;
    for (int i = 0; i < 7; i++) {
        assert_int_equal(balancer_pick(b, STR(""), NULL, 0), i % 3);
    }
    balancer_free(b);
}

static void test_least_conn_prefers_fewest_in_flight(void **state)
{
    struct upstream_conf u = up3(BALANCE_LEAST_CONN);
    struct balancer *b = balancer_new(&u, NULL);
    (void)state;
    balancer_conn_start(b, 0);
    balancer_conn_start(b, 0);
    balancer_conn_start(b, 1);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 0), 2);
    balancer_conn_start(b, 2);
    balancer_conn_start(b, 2);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 0), 1);
    balancer_conn_end(b, 0);
    balancer_conn_end(b, 0);
    assert_int_equal(balancer_active(b, 0), 0);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 0), 0);
    /* An extra end never underflows. */
    balancer_conn_end(b, 0);
    assert_int_equal(balancer_active(b, 0), 0);
    balancer_free(b);
}

static void test_least_conn_ties_rotate(void **state)
{
    struct upstream_conf u = up3(BALANCE_LEAST_CONN);
    struct balancer *b = balancer_new(&u, NULL);
    int seen[3] = { 0 };
    (void)state;
    for (int i = 0; i < 6; i++) {
        seen[balancer_pick(b, STR(""), NULL, 0)]++;
    }
    assert_int_equal(seen[0], 2);
    assert_int_equal(seen[1], 2);
    assert_int_equal(seen[2], 2);
    balancer_free(b);
}

static void test_ip_hash_is_stable_and_spreads(void **state)
{
    struct upstream_conf u = up3(BALANCE_IP_HASH);
    struct balancer *b = balancer_new(&u, NULL);
    int seen[3] = { 0 };
    char ip[32];
    (void)state;
    int first = balancer_pick(b, STR("192.0.2.7"), NULL, 0);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(balancer_pick(b, STR("192.0.2.7"), NULL, 0), first);
    }
    assert_int_equal(balance_ip_hash(STR("192.0.2.7")), balance_ip_hash(STR("192.0.2.7")));
    assert_int_not_equal(balance_ip_hash(STR("192.0.2.7")), balance_ip_hash(STR("192.0.2.8")));
    for (int i = 0; i < 300; i++) {
        snprintf(ip, sizeof ip, "10.1.%d.%d", i / 256, i % 256);
        seen[balancer_pick(b, str_from(ip), NULL, 0)]++;
    }
    assert_true(seen[0] > 50 && seen[1] > 50 && seen[2] > 50);
    balancer_free(b);
}

static void test_ip_hash_moves_only_while_its_server_is_down(void **state)
{
    struct upstream_conf u = up3(BALANCE_IP_HASH);
    struct balancer *b = balancer_new(&u, NULL);
    (void)state;
    int home = balancer_pick(b, STR("198.51.100.1"), NULL, 0);
    balancer_report(b, (size_t)home, false, 100);
    balancer_report(b, (size_t)home, false, 100);
    int away = balancer_pick(b, STR("198.51.100.1"), NULL, 200);
    assert_true(away >= 0);
    assert_int_not_equal(away, home);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(balancer_pick(b, STR("198.51.100.1"), NULL, 300), away);
    }
    /* After fail_timeout the client goes home again. */
    assert_int_equal(balancer_pick(b, STR("198.51.100.1"), NULL, 1100), home);
    balancer_free(b);
}

static void test_ip_hash_spreads_the_clients_of_a_down_server(void **state)
{
    struct upstream_conf u = up3(BALANCE_IP_HASH);
    struct balancer *b = balancer_new(&u, NULL);
    int seen[3] = { 0 };
    char ip[32];
    (void)state;
    balancer_set_healthy(b, 0, false);
    for (int i = 0; i < 600; i++) {
        snprintf(ip, sizeof ip, "10.2.%d.%d", i / 256, i % 256);
        seen[balancer_pick(b, str_from(ip), NULL, 0)]++;
    }
    /* Server 0's third of the clients is shared by 1 and 2, not dumped on 1. */
    assert_int_equal(seen[0], 0);
    assert_true(seen[1] > 240 && seen[2] > 240);
    balancer_free(b);
}

static void test_max_fails_consecutive_marks_down_for_fail_timeout(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b = balancer_new(&u, NULL);
    (void)state;
    balancer_report(b, 1, false, 10);
    assert_true(balancer_is_up(b, 1, 10)); /* one failure of two */
    balancer_report(b, 1, true, 11);       /* a success resets the count */
    balancer_report(b, 1, false, 12);
    assert_true(balancer_is_up(b, 1, 12));
    balancer_report(b, 1, false, 13);
    assert_false(balancer_is_up(b, 1, 13));
    assert_false(balancer_is_up(b, 1, 1012));
    assert_true(balancer_is_up(b, 1, 1013));
    for (int i = 0; i < 6; i++) {
        assert_int_not_equal(balancer_pick(b, STR(""), NULL, 500), 1);
    }
    /* Back after the timeout, and a single new failure takes it out again. */
    assert_true(balancer_is_up(b, 1, 2000));
    balancer_report(b, 1, false, 2000);
    assert_false(balancer_is_up(b, 1, 2001));
    balancer_free(b);
}

static void test_max_fails_zero_disables_passive_health(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b;
    (void)state;
    u.max_fails = 0;
    b = balancer_new(&u, NULL);
    for (int i = 0; i < 10; i++) {
        balancer_report(b, 0, false, 5);
    }
    assert_true(balancer_is_up(b, 0, 5));
    balancer_free(b);
}

static void test_all_down_picks_the_one_back_first(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b = balancer_new(&u, NULL);
    (void)state;
    for (size_t i = 0; i < 3; i++) {
        /* Server 2 fails first, so its timeout ends first. */
        uint64_t t = 100 * (3 - i);
        balancer_report(b, i, false, t);
        balancer_report(b, i, false, t);
    }
    assert_int_equal(balancer_pick(b, STR(""), NULL, 400), 2);
    balancer_free(b);
}

static void test_active_check_down_is_skipped_and_comes_last(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b = balancer_new(&u, NULL);
    (void)state;
    balancer_set_healthy(b, 0, false);
    balancer_set_healthy(b, 1, false);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(balancer_pick(b, STR(""), NULL, 0), 2);
    }
    /* Everything down: a passively-down server beats an actively-down one. */
    balancer_report(b, 2, false, 0);
    balancer_report(b, 2, false, 0);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 1), 2);
    balancer_set_healthy(b, 0, true);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 1), 0);
    balancer_free(b);
}

static void test_exclusion_set_skips_tried_servers(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b = balancer_new(&u, NULL);
    struct balance_exclude ex = { 0 };
    (void)state;
    int first = balancer_pick(b, STR(""), &ex, 0);
    balance_exclude_add(&ex, (size_t)first);
    int second = balancer_pick(b, STR(""), &ex, 0);
    assert_int_not_equal(second, first);
    balance_exclude_add(&ex, (size_t)second);
    int third = balancer_pick(b, STR(""), &ex, 0);
    assert_int_not_equal(third, first);
    assert_int_not_equal(third, second);
    balance_exclude_add(&ex, (size_t)third);
    assert_int_equal(balancer_pick(b, STR(""), &ex, 0), -1);
    assert_true(balance_exclude_has(&ex, 2));
    assert_false(balance_exclude_has(&ex, 200));
    assert_false(balance_exclude_has(NULL, 0));
    balancer_free(b);
}

static void test_exclusion_beats_the_all_down_fallback(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b = balancer_new(&u, NULL);
    struct balance_exclude ex = { 0 };
    (void)state;
    balancer_report(b, 1, false, 0);
    balancer_report(b, 1, false, 0);
    balancer_report(b, 2, false, 0);
    balancer_report(b, 2, false, 0);
    balance_exclude_add(&ex, 0);
    /* Only down servers remain: the fallback still never returns an excluded one. */
    int p = balancer_pick(b, STR(""), &ex, 10);
    assert_true(p == 1 || p == 2);
    balance_exclude_add(&ex, 1);
    balance_exclude_add(&ex, 2);
    assert_int_equal(balancer_pick(b, STR(""), &ex, 10), -1);
    balancer_free(b);
}

static void test_max_conns_caps_in_flight_per_server(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN);
    struct balancer *b;
    (void)state;
    u.max_conns = 1;
    b = balancer_new(&u, NULL);
    for (int i = 0; i < 3; i++) {
        int p = balancer_pick(b, STR(""), NULL, 0);
        assert_true(p >= 0);
        balancer_conn_start(b, (size_t)p);
    }
    assert_int_equal(balancer_pick(b, STR(""), NULL, 0), -1);
    balancer_conn_end(b, 1);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 0), 1);
    balancer_free(b);
}

static void test_reload_carries_health_by_url(void **state)
{
    struct upstream_conf u = up3(BALANCE_ROUND_ROBIN), u2;
    struct balancer *old = balancer_new(&u, NULL), *b;
    (void)state;
    balancer_report(old, 1, false, 0);
    balancer_report(old, 1, false, 0);   /* url_b down until 1000 */
    balancer_set_healthy(old, 2, false); /* url_c down by check */
    servers_reload[0].url = url_d;
    servers_reload[1].url = url_b;
    u2 = (struct upstream_conf){ .servers = servers_reload,
                                 .nservers = 2,
                                 .balance = BALANCE_ROUND_ROBIN,
                                 .max_fails = 2,
                                 .fail_timeout_ms = 1000 };
    b = balancer_new(&u2, old);
    assert_true(balancer_is_up(b, 0, 10));
    assert_false(balancer_is_up(b, 1, 10));
    assert_int_equal(balancer_count(b), 2);
    balancer_free(old);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 10), 0);
    assert_int_equal(balancer_pick(b, STR(""), NULL, 10), 0);
    balancer_free(b);
    balancer_free(NULL);
}

static void test_no_servers_gives_none(void **state)
{
    struct upstream_conf u = { 0 };
    struct balancer *b = balancer_new(&u, NULL);
    (void)state;
    assert_int_equal(balancer_pick(b, STR("1.2.3.4"), NULL, 0), -1);
    balancer_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin_cycles_in_order),
        cmocka_unit_test(test_least_conn_prefers_fewest_in_flight),
        cmocka_unit_test(test_least_conn_ties_rotate),
        cmocka_unit_test(test_ip_hash_is_stable_and_spreads),
        cmocka_unit_test(test_ip_hash_moves_only_while_its_server_is_down),
        cmocka_unit_test(test_ip_hash_spreads_the_clients_of_a_down_server),
        cmocka_unit_test(test_max_fails_consecutive_marks_down_for_fail_timeout),
        cmocka_unit_test(test_max_fails_zero_disables_passive_health),
        cmocka_unit_test(test_all_down_picks_the_one_back_first),
        cmocka_unit_test(test_active_check_down_is_skipped_and_comes_last),
        cmocka_unit_test(test_exclusion_set_skips_tried_servers),
        cmocka_unit_test(test_exclusion_beats_the_all_down_fallback),
        cmocka_unit_test(test_max_conns_caps_in_flight_per_server),
        cmocka_unit_test(test_reload_carries_health_by_url),
        cmocka_unit_test(test_no_servers_gives_none),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
