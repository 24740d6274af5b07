/* Unit tests for authn/session.c: cache lookups, idle and absolute expiry,
 * hashing and encryption at rest, restart, CLI revocation reaching a running
 * store, and single-flight refresh under 50 threads. Uses a temp directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>
#include <sqlite3.h>

#include "authn/attrs.h"
#include "authn/session.h"

static char dir[64];
static char db[128];

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/gh-session-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(db, sizeof db, "%s/state.db", dir);
    (void)state;
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    (void)state;
    return 0;
}

static struct session_conf conf(void)
{
    struct session_conf c = {
        .cookie_name = (char *)"gatehouse_session",
        .idle_timeout_ms = 60000,
        .max_lifetime_ms = 3600000,
        .refresh = true,
        .refresh_before_ms = 30000,
    };
    return c;
}

static struct authn_attrs *alice_attrs;

static struct session_new alice(void)
{
    if (!alice_attrs) {
        alice_attrs = attrs_parse("[\"eng\",\"admins\"]", "{\"sub\":\"alice\"}");
    }
    struct session_new n = {
        .user_key = "https://idp#alice",
        .email = "alice@example.com",
        .name = "Alice",
        .attrs = alice_attrs,
        .idp = "corp",
        .sid = "SID-A",
        .refresh_token = "RT-plaintext-1",
        .id_token = "ID-TOKEN-A",
        .token_exp_s = 0,
    };
    return n;
}

static void test_create_lookup_expiry(void **state)
{
    struct err err = { 0 };
    struct session_conf c = conf();
    struct session_store *s = session_store_open(db, &c, &err);
    assert_non_null(s);
    struct arena *a = arena_new(0);
    char cookie[SESSION_COOKIE_LEN + 1];
    struct session_new n = alice();
    int64_t t0 = now_ms();
    assert_int_equal(session_create(s, &n, t0, cookie, &err), 0);
    assert_int_equal(strlen(cookie), SESSION_COOKIE_LEN);

    struct session_view v;
    assert_int_equal(session_lookup(s, str_from(cookie), t0 + 10, a, &v), SESSION_VALID);
    assert_string_equal(v.user_key, "https://idp#alice");
    /* The cache keeps them parsed: the request gets the lists, no JSON. */
    assert_string_equal(v.attrs->groups_json, "[\"eng\",\"admins\"]");
    assert_int_equal(v.attrs->ngroups, 2);
    assert_true(str_eq_cstr(v.attrs->groups[0], "eng"));
    assert_true(str_eq_cstr(v.attrs->groups[1], "admins"));
    assert_int_equal(v.attrs->nclaims, 1);
    assert_true(str_eq_cstr(v.attrs->claims[0].name, "sub"));
    assert_int_equal(v.expires_ms, t0 + 3600000);
    assert_int_equal(strlen(v.id), 16);
    assert_false(v.refresh_due); /* token expiry unknown */

    /* A flipped character or a wrong length is no session. */
    char bad[SESSION_COOKIE_LEN + 1];
    memcpy(bad, cookie, sizeof bad);
    bad[5] = bad[5] == 'A' ? 'B' : 'A';
    assert_int_equal(session_lookup(s, str_from(bad), t0, a, &v), SESSION_NONE);
    assert_int_equal(session_lookup(s, STR("short"), t0, a, &v), SESSION_NONE);

    /* Activity keeps it alive past the first idle deadline... */
    assert_int_equal(session_lookup(s, str_from(cookie), t0 + 50000, a, &v), SESSION_VALID);
    assert_int_equal(session_lookup(s, str_from(cookie), t0 + 100000, a, &v), SESSION_VALID);
    /* ...but a gap longer than idle_timeout ends it. */
    assert_int_equal(session_lookup(s, str_from(cookie), t0 + 170000, a, &v), SESSION_EXPIRED);
    assert_int_equal(session_lookup(s, str_from(cookie), t0 + 170001, a, &v), SESSION_NONE);

    /* Absolute lifetime ends even an active session. */
    assert_int_equal(session_create(s, &n, t0, cookie, &err), 0);
    for (int64_t t = t0; t < t0 + 3600000; t += 50000) {
        assert_int_equal(session_lookup(s, str_from(cookie), t, a, &v), SESSION_VALID);
    }
    assert_int_equal(session_lookup(s, str_from(cookie), t0 + 3600000, a, &v), SESSION_EXPIRED);

    /* A tiny arena fails closed. */
    struct arena *tiny = arena_new(8);
    assert_int_equal(session_create(s, &n, t0, cookie, &err), 0);
    assert_int_equal(session_lookup(s, str_from(cookie), t0, tiny, &v), SESSION_NONE);
    arena_free(tiny);
    arena_free(a);
    session_store_close(s);
    (void)state;
}

static int count_rows(const char *sql)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    int n = -1;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW) {
        n = sqlite3_column_int(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    return n;
}

static void test_at_rest_restart_and_cli_revoke(void **state)
{
    struct err err = { 0 };
    struct session_conf c = conf();
    struct session_store *s = session_store_open(db, &c, &err);
    assert_non_null(s);
    struct arena *a = arena_new(0);
    struct session_new n = alice();
    struct session_new b = alice();
    b.user_key = "https://idp#bob";
    b.email = "bob@example.com";
    b.sid = "SID-B";
    char ca[SESSION_COOKIE_LEN + 1], cb[SESSION_COOKIE_LEN + 1], cb2[SESSION_COOKIE_LEN + 1];
    int64_t t0 = now_ms();
    assert_int_equal(session_create(s, &n, t0, ca, &err), 0);
    assert_int_equal(session_create(s, &b, t0, cb, &err), 0);
    assert_int_equal(session_create(s, &b, t0, cb2, &err), 0);
    session_store_sync(s);

    /* Only hashes and sealed tokens reach the disk. */
    char *q = xasprintf("SELECT count(*) FROM sessions WHERE id_hash = '%s' OR "
                        "refresh_token LIKE '%%RT-plaintext%%' OR id_token LIKE '%%ID-TOKEN%%'",
                        ca);
    assert_int_equal(count_rows(q), 0);
    free(q);
    assert_int_equal(count_rows("SELECT count(*) FROM sessions WHERE length(id_hash) = 64 AND "
                                "refresh_token IS NOT NULL"),
                     3);

    /* Restart: the sessions are still there, tokens decrypt. */
    session_store_close(s);
    s = session_store_open(db, &c, &err);
    assert_non_null(s);
    struct session_view v;
    assert_int_equal(session_lookup(s, str_from(ca), now_ms(), a, &v), SESSION_VALID);
    assert_string_equal(v.email, "alice@example.com");
    char *idt = session_id_token(s, str_from(ca));
    assert_string_equal(idt, "ID-TOKEN-A");
    free(idt);

    /* The CLI revokes bob in the database; the running store drops him. */
    size_t count = 0;
    assert_int_equal(session_admin_revoke(db, "bob@example.com", NULL, &count, &err), 0);
    assert_int_equal(count, 2);
    assert_int_equal(session_lookup(s, str_from(cb), now_ms(), a, &v), SESSION_VALID);
    session_store_sync(s);
    assert_int_equal(session_lookup(s, str_from(cb), now_ms(), a, &v), SESSION_NONE);
    assert_int_equal(session_lookup(s, str_from(cb2), now_ms(), a, &v), SESSION_NONE);
    assert_int_equal(session_lookup(s, str_from(ca), now_ms(), a, &v), SESSION_VALID);

    /* By id prefix, through the writer thread's own polling (<= 1 s). */
    assert_int_equal(session_admin_revoke(db, NULL, "zz", &count, &err), ERR_PARSE);
    assert_int_equal(session_admin_revoke(db, NULL, v.id, &count, &err), 0);
    assert_int_equal(count, 1);
    usleep(1100 * 1000);
    assert_int_equal(session_lookup(s, str_from(ca), now_ms(), a, &v), SESSION_NONE);

    /* Listing works on what is left. */
    FILE *out = tmpfile();
    assert_int_equal(session_admin_list(db, NULL, NULL, true, out, &err), 0);
    assert_int_equal(ftell(out), 0);
    fclose(out);
    arena_free(a);
    session_store_close(s);
    (void)state;
}

static void test_revoke_by_sid_user_and_cookie(void **state)
{
    struct err err = { 0 };
    struct session_conf c = conf();
    struct session_store *s = session_store_open(db, &c, &err);
    struct arena *a = arena_new(0);
    struct session_view v;
    struct session_new n = alice();
    char c1[SESSION_COOKIE_LEN + 1], c2[SESSION_COOKIE_LEN + 1], c3[SESSION_COOKIE_LEN + 1];
    assert_int_equal(session_create(s, &n, now_ms(), c1, &err), 0);
    n.sid = "SID-OTHER";
    assert_int_equal(session_create(s, &n, now_ms(), c2, &err), 0);
    assert_int_equal(session_create(s, &n, now_ms(), c3, &err), 0);
    assert_int_equal(session_revoke_sid(s, "corp", "SID-A"), 1);
    assert_int_equal(session_revoke_sid(s, "other-idp", "SID-OTHER"), 0);
    assert_int_equal(session_lookup(s, str_from(c1), now_ms(), a, &v), SESSION_NONE);
    assert_int_equal(session_revoke_cookie(s, str_from(c2)), 1);
    assert_int_equal(session_lookup(s, str_from(c2), now_ms(), a, &v), SESSION_NONE);
    assert_int_equal(session_revoke_user(s, "https://idp#alice"), 1);
    assert_int_equal(session_lookup(s, str_from(c3), now_ms(), a, &v), SESSION_NONE);
    session_store_sync(s);
    assert_int_equal(count_rows("SELECT count(*) FROM sessions"), 0);
    arena_free(a);
    session_store_close(s);
    (void)state;
}

/* Every session's last-seen move reaches the database, whichever bucket and
 * stripe it sits in (the writer locks a stripe once for all its buckets). */
static void test_last_seen_flushed_from_every_stripe(void **state)
{
    enum { N = 300 };
    struct err err = { 0 };
    struct session_conf c = conf();
    struct session_store *s = session_store_open(db, &c, &err);
    assert_non_null(s);
    struct arena *a = arena_new(0);
    struct session_new n = alice();
    static char cookies[N][SESSION_COOKIE_LEN + 1];
    int64_t t0 = now_ms();
    for (int i = 0; i < N; i++) {
        assert_int_equal(session_create(s, &n, t0, cookies[i], &err), 0);
    }
    session_store_sync(s);
    assert_int_equal(count_rows("SELECT count(*) FROM sessions"), N);
    int64_t later = t0 + 5000;
    for (int i = 0; i < N; i++) {
        struct session_view v;
        arena_reset(a);
        assert_int_equal(session_lookup(s, str_from(cookies[i]), later, a, &v), SESSION_VALID);
    }
    session_store_sync(s);
    char sql[128];
    assert_true(snprintf(sql, sizeof sql, "SELECT count(*) FROM sessions WHERE last_seen_ms = %lld",
                         (long long)later) < (int)sizeof sql);
    assert_int_equal(count_rows(sql), N);
    arena_free(a);
    session_store_close(s);
    (void)state;
}

struct racer {
    struct session_store *s;
    const char *cookie;
    int won;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    char *rt = NULL;
    if (session_refresh_claim(r->s, str_from(r->cookie), now_ms(), &rt)) {
        r->won = 1;
        free(rt);
    }
    return NULL;
}

static void test_refresh_single_flight_and_rotation(void **state)
{
    struct err err = { 0 };
    struct session_conf c = conf();
    struct session_store *s = session_store_open(db, &c, &err);
    struct arena *a = arena_new(0);
    struct session_view v;
    struct session_new n = alice();
    n.token_exp_s = now_ms() / 1000 + 10; /* within refresh_before */
    char ck[SESSION_COOKIE_LEN + 1];
    assert_int_equal(session_create(s, &n, now_ms(), ck, &err), 0);
    assert_int_equal(session_lookup(s, str_from(ck), now_ms(), a, &v), SESSION_VALID);
    assert_true(v.refresh_due);

    pthread_t th[50];
    struct racer r[50];
    for (int i = 0; i < 50; i++) {
        r[i] = (struct racer){ s, ck, 0 };
        pthread_create(&th[i], NULL, race, &r[i]);
    }
    int winners = 0;
    for (int i = 0; i < 50; i++) {
        pthread_join(th[i], NULL);
        winners += r[i].won;
    }
    assert_int_equal(winners, 1);
    assert_int_equal(session_lookup(s, str_from(ck), now_ms(), a, &v), SESSION_VALID);
    assert_false(v.refresh_due); /* in flight */

    int64_t new_exp = now_ms() / 1000 + 3600;
    struct authn_attrs *eng = attrs_parse("[\"eng\"]", NULL);
    session_refresh_done(s, str_from(ck), true, true, "RT-rotated-2", new_exp, NULL, NULL, eng);
    attrs_unref(eng);
    assert_int_equal(session_lookup(s, str_from(ck), now_ms(), a, &v), SESSION_VALID);
    assert_false(v.refresh_due);
    assert_string_equal(v.attrs->groups_json, "[\"eng\"]");
    assert_int_equal(v.attrs->ngroups, 1);
    assert_int_equal(v.token_exp_s, new_exp);
    session_store_close(s);

    /* The rotated token survived the restart. */
    s = session_store_open(db, &c, &err);
    char *rt = NULL;
    assert_true(session_refresh_claim(s, str_from(ck), now_ms(), &rt));
    assert_string_equal(rt, "RT-rotated-2");
    free(rt);
    /* An answer without an expiry must not make every request refresh again. */
    session_refresh_done(s, str_from(ck), true, false, NULL, 0, NULL, NULL, NULL);
    assert_int_equal(session_lookup(s, str_from(ck), now_ms(), a, &v), SESSION_VALID);
    assert_false(v.refresh_due);
    assert_true(session_refresh_claim(s, str_from(ck), now_ms(), &rt));
    free(rt);
    /* A failed refresh with invalid_grant ends the session. */
    session_refresh_done(s, str_from(ck), false, true, NULL, 0, NULL, NULL, NULL);
    assert_int_equal(session_lookup(s, str_from(ck), now_ms(), a, &v), SESSION_NONE);
    arena_free(a);
    session_store_close(s);
    (void)state;
}

static void test_short_key_file_is_refused(void **state)
{
    struct err err = { 0 };
    struct session_conf c = conf();
    char *bad = xasprintf("%s/short.key", dir);
    FILE *f = fopen(bad, "w");
    fputs("short", f);
    fclose(f);
    c.key_file = bad;
    assert_null(session_store_open(db, &c, &err));
    assert_non_null(strstr(err.msg, "must hold exactly 32 bytes"));
    free(bad);
    (void)state;
}

static void test_locked_database_keeps_the_batch(void **state)
{
    struct err err = { 0 };
    struct session_conf c = conf();
    struct session_store *s = session_store_open(db, &c, &err);
    assert_non_null(s);
    session_store_sync(s);
    /* Another process holds the write lock past the busy timeout (5 s). */
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct session_new n = alice();
    char ck[SESSION_COOKIE_LEN + 1];
    assert_int_equal(session_create(s, &n, now_ms(), ck, &err), 0);
    session_store_sync(s); /* busy: the insert goes back to the queue */
    assert_int_equal(sqlite3_exec(h, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    /* Without the retry the batch would be gone for good: no row ever. */
    session_store_sync(s);
    assert_int_equal(count_rows("SELECT count(*) FROM sessions"), 1);
    session_store_close(s);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_lookup_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_at_rest_restart_and_cli_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoke_by_sid_user_and_cookie, setup, teardown),
        cmocka_unit_test_setup_teardown(test_last_seen_flushed_from_every_stripe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh_single_flight_and_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_key_file_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locked_database_keeps_the_batch, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
