/* Unit tests for policy/decision_log.c and `gatehouse audit verify`: records
 * round-trip through SQLite and the JSON-lines file; each kind of tampering
 * (edit, delete, reorder, truncate; in SQLite and in the file) is named exactly;
 * back-pressure refuses records instead of dropping them; crash leftovers (torn
 * line, file behind SQLite) are repaired on open; retention keeps the chain. */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <sqlite3.h>

#include "policy/decision_log_int.h"
#include "policy/dl_writer.h"
#include "policy/policy.h"

struct fixture {
    char dir[128];
    char cfg[192], db[192], file[192];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/gh-dl-XXXXXX");
    if (!mkdtemp(f->dir)) {
        return -1;
    }
    snprintf(f->cfg, sizeof f->cfg, "%s/g.yaml", f->dir);
    snprintf(f->db, sizeof f->db, "%s/gh.db", f->dir);
    snprintf(f->file, sizeof f->file, "%s/decisions.jsonl", f->dir);
    FILE *c = fopen(f->cfg, "w");
    fputs("state: {sqlite: gh.db}\ndecision_log: {file: decisions.jsonl, queue: 4, retain: 30d}\n",
          c);
    fclose(c);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0) {
        return -1;
    }
    free(f);
    return 0;
}

static struct decision_log *open_log(struct fixture *f, struct decision_log_conf *c)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(f->cfg, &d);
    assert_non_null(doc);
    assert_true(decision_log_conf_parse(doc->root, f->cfg, &d, c));
    conf_doc_free(doc);
    struct err err = { 0 };
    struct decision_log *dl = decision_log_open(c, &err);
    if (!dl) {
        fprintf(stderr, "%s\n", err.msg);
    }
    assert_non_null(dl);
    return dl;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Appends n records (waiting for each when the queue is full), ts shifted by age_us. */
static void append_n(struct decision_log *dl, int n, int first, int64_t age_us)
{
    static const char *const groups[] = { "eng", "ops" };
    static const struct policy_kv claims[] = { { { "amr", 3 }, { "mfa", 3 } } };
    uint64_t seq = 0;
    for (int i = first; i < first + n; i++) {
        char rid[32], path[32];
        snprintf(rid, sizeof rid, "req-%d", i);
        snprintf(path, sizeof path, "/p/%d\n\"quoted\"", i);
        struct decision_record r = { .ts_us = now_us() - age_us,
                                     .request_id = rid,
                                     .route = "wiki",
                                     .decision = i % 2 ? "deny" : "allow",
                                     .rule = "r",
                                     .user = "alice",
                                     .email = "alice@example.com",
                                     .groups = groups,
                                     .ngroups = 2,
                                     .claims = claims,
                                     .nclaims = 1,
                                     .client_ip = "10.0.0.1",
                                     .method = "GET",
                                     .host = "wiki.example.com",
                                     .path = path };
        int rc;
        while ((rc = decision_log_append(dl, &r, &seq)) == ERR_LIMIT) {
            usleep(1000);
        }
        assert_int_equal(rc, 0);
    }
    assert_int_equal(decision_log_wait(dl, seq), 0);
}

/* One writer's run: open, n records from seq first (ts shifted by age_us), close. */
static void log_run(struct fixture *f, int n, int first, int64_t age_us)
{
    struct decision_log_conf c;
    struct decision_log *dl = open_log(f, &c);
    append_n(dl, n, first, age_us);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
}

static void make_log(struct fixture *f, int n)
{
    log_run(f, n, 1, 0);
}

static void write_cfg(struct fixture *f, const char *yaml)
{
    FILE *cf = fopen(f->cfg, "w");
    assert_non_null(cf);
    fputs(yaml, cf);
    fclose(cf);
}

/* Runs `audit verify` and returns its exit code; out gets its stdout. */
static int verify(struct fixture *f, char *out, size_t size)
{
    char a0[] = "audit", a1[] = "verify", a2[] = "-c";
    char *argv[] = { a0, a1, a2, f->cfg, NULL };
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s/verify.out", f->dir);
    fflush(stdout);
    int saved = dup(1);
    FILE *o = fopen(tmp, "w");
    dup2(fileno(o), 1);
    int rc = audit_cmd(4, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fclose(o);
    o = fopen(tmp, "r");
    size_t n = fread(out, 1, size - 1, o);
    out[n] = '\0';
    fclose(o);
    return rc;
}

/* Runs a gatehouse verb (policy_cmd or audit_cmd) and captures its stdout. */
static int run_cmd(struct fixture *f, int (*cmd)(int, char **), char **argv, char *out, size_t size)
{
    char tmp[256];
    int argc = 0;
    while (argv[argc]) {
        argc++;
    }
    snprintf(tmp, sizeof tmp, "%s/cmd.out", f->dir);
    fflush(stdout);
    int saved = dup(1);
    FILE *o = fopen(tmp, "w");
    dup2(fileno(o), 1);
    int rc = cmd(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fclose(o);
    o = fopen(tmp, "r");
    size_t n = fread(out, 1, size - 1, o);
    out[n] = '\0';
    fclose(o);
    return rc;
}

/* `policy explain` gets its configuration from the loader serve uses (the proxy's);
 * here a stand-in hands over the routes' policy files the same way. */
static const char *pol_value(const struct conf_node *rs, size_t i)
{
    return conf_get(rs->items[i], "policy")->value;
}

struct stand_in {
    struct conf_doc *doc;
    struct policy_conf *pc;
    struct policy_cli_route *routes;
};

static bool stand_in_load(const char *file, struct policy_cli_conf *out)
{
    struct conf_diag d = { 0 };
    struct stand_in *si = calloc(1, sizeof *si);
    assert_non_null(si);
    si->doc = conf_doc_load(file, &d);
    assert_non_null(si->doc);
    const struct conf_node *rs = conf_get(si->doc->root, "routes");
    size_t n = rs ? rs->n : 0;
    struct policy_route_spec *specs = calloc(n + 1, sizeof *specs);
    char **paths = calloc(n + 1, sizeof *paths);
    si->routes = calloc(n + 1, sizeof *si->routes);
    for (size_t i = 0; i < n; i++) {
        const struct conf_node *pol = conf_get(rs->items[i], "policy");
        paths[i] = conf_path_resolve(file, pol->value);
        specs[i] = (struct policy_route_spec){ conf_get(rs->items[i], "name")->value,
                                               POLICY_SOURCE_FILE, paths[i], pol };
    }
    si->pc = policy_conf_load(si->doc->root, file, specs, n, &d);
    assert_non_null(si->pc);
    for (size_t i = 0; i < n; i++) {
        si->routes[i] = (struct policy_cli_route){ .name = specs[i].name,
                                                   .policy = policy_conf_route(si->pc, i),
                                                   .policy_written = pol_value(rs, i) };
        free(paths[i]);
    }
    free(paths);
    free(specs);
    conf_diag_fini(&d);
    *out = (struct policy_cli_conf){ file, si->doc->root, si->routes, n, si };
    return true;
}

static void stand_in_release(struct policy_cli_conf *c)
{
    struct stand_in *si = c->snapshot;
    policy_conf_free(si->pc);
    conf_doc_free(si->doc);
    free(si->routes);
    free(si);
}

static const struct policy_cli_loader stand_in = { stand_in_load, stand_in_release };

static int policy_cmd_stand_in(int argc, char **argv)
{
    return policy_cmd(argc, argv, &stand_in);
}

static void sql(struct fixture *f, const char *stmt)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, stmt, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", stmt, msg);
        fail();
    }
    sqlite3_close(db);
}

/* Rewrites the file through fn(lines, &n). */
static void edit_file(struct fixture *f, void (*fn)(char **lines, size_t *n))
{
    FILE *in = fopen(f->file, "r");
    char *lines[64];
    size_t n = 0, cap = 0;
    char *line = NULL;
    while (getline(&line, &cap, in) > 0 && n < 64) {
        lines[n++] = strdup(line);
    }
    free(line);
    fclose(in);
    fn(lines, &n);
    FILE *out = fopen(f->file, "w");
    for (size_t i = 0; i < n; i++) {
        fputs(lines[i], out);
        free(lines[i]);
    }
    fclose(out);
}

static void expect_fail(struct fixture *f, const char *line)
{
    char out[4096];
    int rc = verify(f, out, sizeof out);
    if (!strstr(out, line)) {
        fprintf(stderr, "expected: %s\ngot:\n%s", line, out);
    }
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, line));
    assert_non_null(strstr(out, "decision log FAILED verification\n"));
}

/* A record's body built where the decision is made, framed by the writer, gives the
 * very bytes (and hash, and spans) of the line built from the record, and those
 * bytes are JSON that reads back as the record's strings: for strings around the
 * encoder's 16-byte steps, with each kind of byte that must be escaped at each place,
 * NULL fields, repeated claims and an administrative record. */
static void test_dl_body_frames_to_the_same_line(void **state)
{
    (void)state;
    static const char esc[] = { '"', '\\', '\n', 0x01, 0x1f, 0x7f, (char)0xc3, 'x' };
    char *bufs[8];
    for (size_t i = 0; i < 8; i++) {
        bufs[i] = malloc(64);
    }
    size_t checked = 0;
    for (size_t n = 0; n <= 40; n++) {
        for (size_t e = 0; e < sizeof esc; e++) {
            for (size_t at = 0; at <= n; at += n > 20 ? 7 : 1) {
                /* path: n bytes with esc[e] at `at` (none when at == n); the same at the
                 * end of a 64-byte buffer for the page-local read. */
                char *path = bufs[0], *tail = bufs[1] + 63 - n;
                for (size_t k = 0; k < n; k++) {
                    path[k] = (char)('a' + k % 26);
                }
                if (at < n) {
                    path[at] = esc[e];
                }
                path[n] = '\0';
                memcpy(tail, path, n + 1);
                const char *groups[] = { tail, "eng", path };
                struct str cn = { "amr", 3 };
                struct policy_kv claims[] = { { cn, { path, n } },
                                              { { "acr", 3 }, { "1", 1 } },
                                              { cn, { "pwd", 3 } } };
                struct decision_record r = {
                    .ts_us = 1767225600123456LL + (int64_t)n,
                    .kind = "policy",
                    .request_id = "req-1",
                    .route = tail,
                    .decision = "allow",
                    .rule = e % 2 ? NULL : "r1",
                    .reason = path,
                    .user = "alice",
                    .groups = groups,
                    .ngroups = 3,
                    .claims = claims,
                    .nclaims = 3,
                    .device_present = true,
                    .device_id = e % 3 ? "laptop-1" : NULL,
                    .client_ip = "10.0.0.1",
                    .method = "GET",
                    .host = tail,
                    .path = path,
                    .enforced = "allow",
                    .opa_result = e % 2 ? "allow" : NULL,
                    .latency_us = n,
                    .admin_action = n % 5 == 0 ? "session.revoke" : NULL,
                    .admin_target = n % 5 == 0 ? path : NULL,
                    .node = "node-a",
                };
                struct sbuf a = { 0 }, body = { 0 }, b = { 0 };
                struct dl_spans sa, sbody, sb;
                char ha[65], hb[65];
                dl_line_append(&a, &r, n + 1, DL_GENESIS, ha, &sa);
                dl_body_append(&body, &r, &sbody);
                dl_line_from_body(&b, n + 1, "node-a", body.p, body.len, &sbody, DL_GENESIS, hb,
                                  &sb);
                assert_int_equal(a.len, b.len);
                assert_memory_equal(a.p, b.p, a.len);
                assert_string_equal(ha, hb);
                assert_memory_equal(&sa, &sb, sizeof sa);
                if (at < n && esc[e] == (char)0xc3) {
                    /* A lone 0xc3 is passed through as given: not UTF-8, so not JSON. */
                    dl_sbuf_free(&a);
                    dl_sbuf_free(&body);
                    dl_sbuf_free(&b);
                    checked++;
                    continue;
                }
                json_error_t je;
                json_t *o = json_loadb(a.p, a.len, JSON_ALLOW_NUL, &je);
                if (!o) {
                    fail_msg("%s: %s", je.text, a.p);
                }
                assert_string_equal(json_string_value(json_object_get(o, "path")), path);
                assert_string_equal(json_string_value(json_object_get(o, "host")), tail);
                assert_string_equal(
                    json_string_value(json_array_get(json_object_get(o, "groups"), 0)), tail);
                assert_string_equal(json_string_value(json_array_get(
                                        json_object_get(json_object_get(o, "claims"), "amr"), 0)),
                                    path);
                assert_memory_equal(a.p + sa.groups_off, "[", 1);
                assert_memory_equal(a.p + sa.claims_off, "{", 1);
                json_decref(o);
                dl_sbuf_free(&a);
                dl_sbuf_free(&body);
                dl_sbuf_free(&b);
                checked++;
            }
        }
    }
    assert_true(checked > 1000);
    for (size_t i = 0; i < 8; i++) {
        free(bufs[i]);
    }
}

static void test_dl_round_trip_verifies(void **state)
{
    struct fixture *f = *state;
    char out[4096];
    make_log(f, 20);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 20 records verified (records 1..20)\n"));
    assert_non_null(strstr(out, "file: 20 records verified"));
    assert_non_null(strstr(out, "decision log OK\n"));
    /* Reopening continues the same chain. */
    struct decision_log_conf c;
    struct decision_log *dl = open_log(f, &c);
    append_n(dl, 5, 21, 0);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 25 records verified (records 1..25)\n"));
}

static void test_dl_sqlite_edit(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "UPDATE decisions SET decision = 'allow' WHERE seq = 5");
    expect_fail(f, "FAIL sqlite: record 5 (request req-5) was edited: its hash does not match its "
                   "content\n");
}

static void test_dl_sqlite_edit_of_groups(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "UPDATE decisions SET groups = '[\"eng\",\"admins\"]' WHERE seq = 9");
    expect_fail(f, "FAIL sqlite: record 9 (request req-9) was edited");
}

/* Format 3: the node that chained a record is in its hashed bytes, so moving a
 * record to another node (or stripping the node to pass it off as format 2) is an
 * edit like any other. */
static void test_dl_sqlite_edit_of_node(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT count(*) FROM decisions WHERE node IS NULL", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    sql(f, "UPDATE decisions SET node = 'other-node' WHERE seq = 7");
    expect_fail(f, "FAIL sqlite: record 7 (request req-7) was edited");
}

static void test_dl_sqlite_node_stripped(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "UPDATE decisions SET node = NULL WHERE seq = 8");
    expect_fail(f, "FAIL sqlite: record 8 (request req-8) was edited");
}

/* An attacker who knows the algorithm edits a record and recomputes its hash: the
 * next record no longer chains to it. */
static void test_dl_sqlite_edit_with_recomputed_hash(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "UPDATE decisions SET user = 'mallory' WHERE seq = 5");
    sqlite3 *db;
    sqlite3_stmt *st;
    char q[512], h[65];
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    snprintf(q, sizeof q, "SELECT seq, %s, prev_hash, hash FROM decisions WHERE seq = 5",
             DL_COLUMNS);
    assert_int_equal(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    struct dl_row row;
    struct sbuf b = { 0 };
    dl_row_read(st, &row);
    dl_canonical(&row.rec, row.seq, row.prev_hash, &b);
    dl_hash(row.prev_hash, b.p, b.len, h);
    dl_row_fini(&row);
    dl_sbuf_free(&b);
    sqlite3_finalize(st);
    sqlite3_close(db);
    snprintf(q, sizeof q, "UPDATE decisions SET hash = '%s' WHERE seq = 5", h);
    sql(f, q);
    expect_fail(f, "FAIL sqlite: record 6 does not chain to record 5: record 5 was edited, "
                   "replaced or reordered\n");
}

/* Edited hash fields of the wrong length are reported, never read past their end. */
static void test_dl_short_hashes_are_edits(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "UPDATE decisions SET prev_hash = 'abc', hash = 'x' WHERE seq = 4");
    expect_fail(f, "FAIL sqlite: record 4 (request req-4) was edited");
}

static void short_prev_in_line3(char **lines, size_t *n)
{
    (void)n;
    char *p = strstr(lines[2], "\"prev_hash\":\"");
    memmove(p + 13, p + 13 + 60, strlen(p + 13 + 60) + 1); /* keep 4 of 64 characters */
}

static void test_dl_file_short_prev_hash(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    edit_file(f, short_prev_in_line3);
    expect_fail(f, "FAIL file: record 3 (line 3) was edited: its hash does not match its "
                   "content\n");
}

static void test_dl_sqlite_delete(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "DELETE FROM decisions WHERE seq = 7");
    expect_fail(f, "FAIL sqlite: record 7 is missing (removed): the next row is record 8\n");
}

static void test_dl_sqlite_reorder(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "UPDATE decisions SET seq = -1 WHERE seq = 3; UPDATE decisions SET seq = 3 WHERE seq = "
           "4; UPDATE decisions SET seq = 4 WHERE seq = -1");
    expect_fail(f, "FAIL sqlite: record 3 is out of order: it holds record 4 (reordered)\n");
}

static void test_dl_sqlite_delete_last(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    sql(f, "DELETE FROM decisions WHERE seq = 20");
    expect_fail(f, "FAIL sqlite: ends at record 19 but the file has records up to 20 (records 20.. "
                   "removed from SQLite)\n");
}

static void drop_first_line(char **lines, size_t *n)
{
    free(lines[0]);
    memmove(lines, lines + 1, (*n - 1) * sizeof *lines);
    (*n)--;
}

static void edit_line5(char **lines, size_t *n)
{
    (void)n;
    char *p = strstr(lines[4], "\"user\":\"alice\"");
    p[9] = 'X';
}

static void remove_line7(char **lines, size_t *n)
{
    free(lines[6]);
    memmove(&lines[6], &lines[7], (*n - 7) * sizeof *lines);
    (*n)--;
}

static void swap_lines3_4(char **lines, size_t *n)
{
    (void)n;
    char *t = lines[2];
    lines[2] = lines[3];
    lines[3] = t;
}

static void drop_last(char **lines, size_t *n)
{
    free(lines[--*n]);
}

static void test_dl_file_edit(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    edit_file(f, edit_line5);
    expect_fail(f, "FAIL file: record 5 (line 5) was edited: its hash does not match its "
                   "content\n");
}

static void test_dl_file_delete(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    edit_file(f, remove_line7);
    expect_fail(f, "FAIL file: record 7 is missing (removed) before line 7\n");
}

static void test_dl_file_reorder(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    edit_file(f, swap_lines3_4);
    expect_fail(f, "FAIL file: line 3 holds record 4 where record 3 belongs; record 3 is at line 4 "
                   "(reordered)\n");
}

static void test_dl_file_truncated(void **state)
{
    struct fixture *f = *state;
    make_log(f, 20);
    edit_file(f, drop_last);
    expect_fail(f, "FAIL file: ends at record 19 but SQLite has records up to 20 (records 20.. "
                   "removed from the file)\n");
}

static void test_dl_reopen_repairs_torn_line_and_catches_up(void **state)
{
    struct fixture *f = *state;
    char out[4096];
    make_log(f, 20);
    /* A crash after the SQLite commit but before the file write, mid-line. */
    edit_file(f, drop_last);
    edit_file(f, drop_last);
    FILE *a = fopen(f->file, "a");
    fputs("{\"v\":1,\"seq\":19,\"ts\":\"2026", a);
    fclose(a);
    struct decision_log_conf c;
    struct decision_log *dl = open_log(f, &c);
    append_n(dl, 3, 21, 0);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "file: 23 records verified"));
}

/* SQLite lost its last commits (power loss) but the file has them: refuse to open
 * rather than write two records with one seq. */
static void test_dl_open_refuses_a_file_ahead_of_sqlite(void **state)
{
    struct fixture *f = *state;
    struct decision_log_conf c;
    make_log(f, 10);
    sql(f, "DELETE FROM decisions WHERE seq > 8");
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(f->cfg, &d);
    assert_true(decision_log_conf_parse(doc->root, f->cfg, &d, &c));
    conf_doc_free(doc);
    struct err err = { 0 };
    assert_null(decision_log_open(&c, &err));
    assert_string_equal(err.msg, "the decision log file has records 9..10 that SQLite does not: "
                                 "restore the database or move the file aside");
    decision_log_conf_fini(&c);
}

static void test_dl_full_queue_refuses_instead_of_dropping(void **state)
{
    struct fixture *f = *state;
    struct decision_log_conf c;
    struct decision_log *dl = open_log(f, &c);
    sqlite3 *db;
    char out[4096];
    /* Hold the write lock: the writer blocks and the queue (bound 4) fills. */
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    struct decision_record r = { .ts_us = now_us(), .request_id = "x", .decision = "allow" };
    uint64_t seq = 0;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(decision_log_append(dl, &r, &seq), 0);
    }
    assert_int_equal(decision_log_append(dl, &r, NULL), ERR_LIMIT);
    assert_int_equal(decision_log_queue_depth(dl), 4);
    assert_int_equal(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(decision_log_wait(dl, seq), 0);
    assert_int_equal(seq, 4);
    assert_int_equal(decision_log_append(dl, &r, &seq), 0);
    assert_int_equal(decision_log_wait(dl, seq), 0);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 5 records verified (records 1..5)\n"));
}

static void append_one_more(struct fixture *f)
{
    struct decision_log_conf c;
    struct decision_log *dl = open_log(f, &c);
    append_n(dl, 1, 17, 0);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
}

static void test_dl_retention_keeps_the_chain(void **state)
{
    struct fixture *f = *state;
    struct decision_log_conf c;
    char out[4096];
    /* The writer keeps its hands off (retain: 0); retention is run here explicitly. */
    FILE *cf = fopen(f->cfg, "w");
    fputs("state: {sqlite: gh.db}\ndecision_log: {file: decisions.jsonl, queue: 4, retain: 0}\n",
          cf);
    fclose(cf);
    struct decision_log *dl = open_log(f, &c);
    append_n(dl, 6, 1, 40LL * 86400 * 1000000); /* 40 days old: past retain: 30d */
    append_n(dl, 4, 7, 0);
    decision_log_close(dl);
    struct err err = { 0 };
    c.retain_ms = 30ULL * 86400000;
    assert_int_equal(decision_log_retain(&c, now_us(), &err), 6);
    assert_int_equal(decision_log_retain(&c, now_us(), &err), 0);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 4 records verified (records 7..10)\n"));
    assert_non_null(strstr(out, "file: 4 records verified"));
    decision_log_conf_fini(&c);
    dl = open_log(f, &c);
    append_n(dl, 2, 11, 0);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 6 records verified (records 7..12)\n"));
    /* A crash between the SQLite part of retention and the file rewrite: the next open
     * finishes the rewrite. */
    dl = open_log(f, &c);
    append_n(dl, 3, 13, 40LL * 86400 * 1000000);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    /* What retention's transaction does, without the file rewrite that follows it. */
    assert_int_equal(sqlite3_exec(db,
                                  "BEGIN; UPDATE decision_log_meta SET value = (SELECT hash "
                                  "FROM decisions WHERE seq = 15) WHERE key = 'anchor_hash'; "
                                  "UPDATE decision_log_meta SET value = '15' WHERE key = "
                                  "'anchor_seq'; INSERT INTO decision_log_retention "
                                  "SELECT seq, hash, ts_us, 'test', 'now', '', '' FROM "
                                  "decisions WHERE seq = 15; DELETE FROM decisions WHERE "
                                  "seq <= 15; COMMIT;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    dl = open_log(f, &c);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    /* Nothing is left after seq 15 unless a record came later; add one and verify. */
    dl = open_log(f, &c);
    append_n(dl, 1, 16, 0);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 1 records verified (records 16..16)\n"));
    assert_non_null(strstr(out, "file: 1 records verified"));
    /* Removing the first kept record is still caught. */
    append_one_more(f);
    sql(f, "DELETE FROM decisions WHERE seq = 16");
    expect_fail(f, "FAIL sqlite: record 16 is missing (removed): the next row is record 17\n");
}

/* index: deferred with retain: the file (the log of record) decides the cut, behind a
 * signed retention record; the index follows; verify passes before and after; a cut
 * interrupted between SQLite and the file is finished at the next open, and the chain
 * then continues from the anchor even when no line is left. */
static void test_dl_deferred_retention_cuts_the_file(void **state)
{
    struct fixture *f = *state;
    struct decision_log_conf c;
    char out[4096];
    write_cfg(f, "state: {sqlite: gh.db}\ndecision_log: {file: decisions.jsonl, index: deferred, "
                 "retain: 0, flush_interval: 50ms}\n");
    struct decision_log *dl = open_log(f, &c);
    append_n(dl, 6, 1, 40LL * 86400 * 1000000); /* 40 days old: past retain: 30d */
    append_n(dl, 4, 7, 0);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0); /* indexes 1..10: the mark moves */
    write_cfg(f, "state: {sqlite: gh.db}\ndecision_log: {file: decisions.jsonl, index: deferred, "
                 "retain: 30d, flush_interval: 50ms}\n");
    /* A new writer runs retention at its first sync. */
    dl = open_log(f, &c);
    usleep(400 * 1000);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    int fd = open(f->file, O_RDONLY);
    char first[64] = "";
    assert_true(read(fd, first, sizeof first - 1) > 0);
    close(fd);
    assert_non_null(strstr(first, "\"seq\":7,"));
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 4 records verified (records 7..10)\n"));
    assert_non_null(strstr(out, "file: 4 records verified"));
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT count(*), max(upto_seq) FROM "
                                        "decision_log_retention",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    assert_int_equal(sqlite3_column_int(st, 1), 6);
    sqlite3_finalize(st);
    /* The log goes on after the cut. */
    log_run(f, 2, 11, 0);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 6 records verified (records 7..12)\n"));
    /* A stop between the SQLite part of a cut (every record, up to 12) and the file's
     * rewrite: the next open finishes the rewrite; nothing is left, so the next record
     * chains to the anchor. */
    fd = open(f->file, O_RDONLY);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    uint64_t seq = 0;
    char hash[65];
    int64_t ts = 0;
    off_t end = 0;
    struct err err = { 0 };
    assert_int_equal(
        dl_file_cut_point(fd, sb.st_size, now_us() + 3600LL * 1000000, &seq, hash, &ts, &end, &err),
        0);
    close(fd);
    assert_int_equal(seq, 12);
    assert_int_equal(end, sb.st_size);
    assert_int_equal(dl_retain_file(db, seq, hash, ts, end, NULL, "test", &err), 6);
    sqlite3_close(db);
    dl = open_log(f, &c);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(stat(f->file, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    log_run(f, 2, 13, 0);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 2 records verified (records 13..14)\n"));
    assert_non_null(strstr(out, "file: 2 records verified"));
    /* Cutting the first kept line without a retention record is caught. */
    edit_file(f, drop_first_line);
    assert_int_not_equal(verify(f, out, sizeof out), 0);
}

/* Bodies too large for the byte ring go on the heap, between ring ones, in both index
 * modes: every record is written once, in order, and the log verifies. */
static void test_dl_large_bodies_between_small_ones(void **state)
{
    struct fixture *f = *state;
    static const char *const modes[] = { "inline", "deferred" };
    size_t big = 300 * 1024; /* over an eighth of the smallest ring (1 MiB) */
    char *path = malloc(big + 1);
    memset(path, 'p', big);
    path[0] = '/';
    path[big] = '\0';
    for (size_t m = 0; m < 2; m++) {
        char yaml[256], out[4096], file[256];
        /* Each mode in its own folder (the head file sits next to the database). */
        snprintf(yaml, sizeof yaml,
                 "state: {sqlite: %s/gh.db}\ndecision_log: {file: %s/d.jsonl, queue: 8, "
                 "index: %s}\n",
                 modes[m], modes[m], modes[m]);
        snprintf(file, sizeof file, "%s/%s", f->dir, modes[m]);
        assert_int_equal(mkdir(file, 0700), 0);
        snprintf(file, sizeof file, "%s/%s/d.jsonl", f->dir, modes[m]);
        write_cfg(f, yaml);
        struct decision_log_conf c;
        struct decision_log *dl = open_log(f, &c);
        uint64_t seq = 0;
        for (int i = 0; i < 40; i++) {
            struct decision_record r = { .ts_us = now_us(),
                                         .request_id = "req",
                                         .route = "wiki",
                                         .decision = "allow",
                                         .client_ip = "10.0.0.1",
                                         .method = "GET",
                                         .host = "wiki.example.com",
                                         .path = i % 3 == 0 ? path : "/small" };
            int rc;
            while ((rc = decision_log_append(dl, &r, &seq)) == ERR_LIMIT) {
                usleep(1000);
            }
            assert_int_equal(rc, 0);
        }
        assert_int_equal(decision_log_wait(dl, seq), 0);
        decision_log_close(dl);
        decision_log_conf_fini(&c);
        assert_int_equal(verify(f, out, sizeof out), 0);
        assert_non_null(strstr(out, "file: "));
        struct stat sb;
        assert_int_equal(stat(file, &sb), 0);
        assert_true((size_t)sb.st_size > 14 * big);
    }
    free(path);
}

struct writer_arg {
    struct decision_log *dl;
    int n;
};

static void *writer_thread(void *p)
{
    struct writer_arg *w = p;
    append_n(w->dl, w->n, 1, 0);
    return NULL;
}

/* verify on a log that is being written must not report the moving tail as tampering. */
static void test_dl_verify_while_writing(void **state)
{
    struct fixture *f = *state;
    struct decision_log_conf c;
    char out[4096];
    struct decision_log *dl = open_log(f, &c);
    struct writer_arg w = { dl, 3000 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, writer_thread, &w), 0);
    usleep(50000);
    for (int i = 0; i < 3; i++) {
        int rc = verify(f, out, sizeof out);
        if (rc != 0) {
            fprintf(stderr, "%s", out);
        }
        assert_int_equal(rc, 0);
    }
    pthread_join(t, NULL);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 3000 records verified (records 1..3000)\n"));
}

/* `policy explain --request-id` replays a logged decision against the current policy. */
static void test_dl_explain_a_logged_request(void **state)
{
    struct fixture *f = *state;
    char path[256], out[4096];
    snprintf(path, sizeof path, "%s/wiki.yaml", f->dir);
    FILE *pf = fopen(path, "w");
    fputs("rules:\n  - id: no-odd\n    effect: deny\n"
          "    when: {path: {suffix: \"\\\"quoted\\\"\"}}\n"
          "  - id: eng\n    effect: allow\n    when: {groups: eng}\n",
          pf);
    fclose(pf);
    FILE *c = fopen(f->cfg, "a");
    fputs("routes:\n  - {name: wiki, policy: wiki.yaml}\n", c);
    fclose(c);
    make_log(f, 3);
    char a0[] = "policy", a1[] = "explain", a2[] = "-c", a4[] = "--request-id", a5[] = "req-2";
    char *argv[] = { a0, a1, a2, f->cfg, a4, a5, NULL };
    assert_int_equal(run_cmd(f, policy_cmd_stand_in, argv + 0, out, sizeof out), 0);
    /* The logged path holds a newline: shown as '?' so logged data cannot drive the terminal. */
    assert_non_null(strstr(out, "request req-2: allow by rule \"r\" when logged (user alice, GET "
                                "wiki.example.com/p/2?\"quoted\")\n"));
    assert_non_null(strstr(out, "  deny   no-odd  match\n"));
    assert_non_null(strstr(out, "  allow  eng     match\n"));
    assert_non_null(strstr(out, "decision: deny by rule \"no-odd\"\n"));
    char a5b[] = "req-404";
    argv[5] = a5b;
    assert_int_equal(run_cmd(f, policy_cmd_stand_in, argv, out, sizeof out), 1);
}

static long count_rows(struct fixture *f)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    long n = -1;
    assert_int_equal(sqlite3_open(f->db, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM decisions", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        n = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

/* The running writer deletes old records in chunks between batches, then trims the file. */
static void test_dl_writer_runs_retention_in_chunks(void **state)
{
    struct fixture *f = *state;
    struct decision_log_conf c;
    char out[4096];
    /* Old records written while retention was off (retain: 0)... */
    FILE *cf = fopen(f->cfg, "w");
    fputs("state: {sqlite: gh.db}\ndecision_log: {file: decisions.jsonl, queue: 20000, "
          "retain: 0}\n",
          cf);
    fclose(cf);
    struct decision_log *dl = open_log(f, &c);
    append_n(dl, 12000, 1, 40LL * 86400 * 1000000);
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    /* ...then a restart with retain: 30d clears them in chunks of 5000. */
    cf = fopen(f->cfg, "w");
    fputs("state: {sqlite: gh.db}\ndecision_log: {file: decisions.jsonl, queue: 20000, "
          "retain: 30d, flush_interval: 20ms}\n",
          cf);
    fclose(cf);
    dl = open_log(f, &c);
    append_n(dl, 10, 12001, 0);
    for (int i = 0; i < 250 && count_rows(f) != 10; i++) {
        usleep(20000);
    }
    assert_int_equal(count_rows(f), 10);
    usleep(100000); /* the file trim follows the last chunk */
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    assert_int_equal(verify(f, out, sizeof out), 0);
    assert_non_null(strstr(out, "sqlite: 10 records verified (records 12001..12010)\n"));
    assert_non_null(strstr(out, "file: 10 records verified"));
}

static void test_dl_conf_messages(void **state)
{
    const char *y = "decision_log: {file: d.jsonl, sync: sometimes}\nstate: {sqlite: x.db}\n";
    struct conf_diag d = { 0 };
    struct decision_log_conf c;
    (void)state;
    struct conf_doc *doc = conf_doc_parse("g.yaml", y, strlen(y), &d);
    assert_false(decision_log_conf_parse(doc->root, "g.yaml", &d, &c));
    assert_string_equal(d.msgs[0], "g.yaml:1:37: error: \"sync\" must be batch or strict, got "
                                   "\"sometimes\"");
    conf_doc_free(doc);
    conf_diag_fini(&d);
    y = "decision_log: {file: d.jsonl}\n";
    doc = conf_doc_parse("g.yaml", y, strlen(y), &d);
    assert_false(decision_log_conf_parse(doc->root, "g.yaml", &d, &c));
    assert_string_equal(d.msgs[0], "g.yaml:1:1: error: \"decision_log\" needs \"state.sqlite\" "
                                   "(the log's database)");
    conf_doc_free(doc);
    conf_diag_fini(&d);
    y = "decision_log: {file: d.jsonl, sync: strict, retain: 7d, queue: 50}\n"
        "state: {sqlite: var/x.db}\n";
    doc = conf_doc_parse("/etc/gh/g.yaml", y, strlen(y), &d);
    assert_true(decision_log_conf_parse(doc->root, "/etc/gh/g.yaml", &d, &c));
    assert_int_equal(c.sync, DECISION_LOG_STRICT);
    assert_int_equal(c.retain_ms, 7ULL * 86400000);
    assert_int_equal(c.queue, 50);
    assert_string_equal(c.sqlite, "/etc/gh/var/x.db");
    assert_string_equal(c.file, "/etc/gh/d.jsonl");
    decision_log_conf_fini(&c);
    conf_doc_free(doc);
    conf_diag_fini(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dl_body_frames_to_the_same_line),
        cmocka_unit_test_setup_teardown(test_dl_large_bodies_between_small_ones, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_round_trip_verifies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_edit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_edit_of_groups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_edit_of_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_node_stripped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_edit_with_recomputed_hash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_short_hashes_are_edits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_file_short_prev_hash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_reorder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_sqlite_delete_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_file_edit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_file_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_file_reorder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_file_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_reopen_repairs_torn_line_and_catches_up, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dl_open_refuses_a_file_ahead_of_sqlite, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dl_full_queue_refuses_instead_of_dropping, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dl_retention_keeps_the_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_deferred_retention_cuts_the_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_verify_while_writing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_explain_a_logged_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dl_writer_runs_retention_in_chunks, setup, teardown),
        cmocka_unit_test(test_dl_conf_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
