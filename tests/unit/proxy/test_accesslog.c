/* Unit tests for proxy/accesslog.c: the exact JSON line, escaping of hostile
 * bytes, buffering and flushing to a file, reopen after rotation, pipes. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "proxy/accesslog.h"

static struct accesslog_entry sample(void)
{
    return (struct accesslog_entry){
        .ts_us = 1795845600123456ull, /* 2026-11-28T06:00:00.123Z */
        .request_id = STR("7f3a9c"),
        .client_ip = STR("192.0.2.1"),
        .method = STR("GET"),
        .host = STR("wiki.example.com"),
        .path = STR("/docs?q=1"),
        .status = 200,
        .bytes_in = 312,
        .bytes_out = 5120,
        .upstream = STR("127.0.0.1:9001"),
        .upstream_us = 1234,
        .total_us = 2005,
        .route = STR("wiki"),
        .user = STR("https://idp.example.com#alice"),
        .decision = STR("allow"),
        .rule = STR("engineers"),
        .device = STR("3f9c0a1be27d4c55"),
    };
}

static char *format(const struct accesslog_entry *e)
{
    size_t need = accesslog_format(e, NULL, 0);
    char *buf = malloc(need + 1);
    assert_non_null(buf);
    assert_int_equal(accesslog_format(e, buf, need), need);
    buf[need] = '\0';
    return buf;
}

static void test_line_has_exactly_the_documented_fields(void **state)
{
    struct accesslog_entry e = sample();
    char *line = format(&e);
    (void)state;
    assert_string_equal(line, "{\"ts\":\"2026-11-28T06:00:00.123Z\",\"request_id\":\"7f3a9c\","
                              "\"client_ip\":\"192.0.2.1\",\"method\":\"GET\",\"host\":"
                              "\"wiki.example.com\",\"path\":\"/docs\",\"status\":200,"
                              "\"bytes_in\":312,\"bytes_out\":5120,\"upstream\":\"127.0.0.1:9001\","
                              "\"upstream_ms\":1.234,\"total_ms\":2.005,\"route\":\"wiki\","
                              "\"user\":\"https://idp.example.com#alice\",\"decision\":\"allow\","
                              "\"rule\":\"engineers\",\"device\":\"3f9c0a1be27d4c55\"}\n");
    free(line);
}

/* access_log.fields: the chosen ones, in line order, commas right. */
static void test_fields_mask_chooses_fields(void **state)
{
    struct accesslog_entry e = sample();
    char *line;
    (void)state;
    e.fields = (1u << ACCESSLOG_F_RULE) | (1u << ACCESSLOG_F_REQUEST_ID) | (1u << ACCESSLOG_F_USER);
    line = format(&e);
    assert_string_equal(line, "{\"request_id\":\"7f3a9c\",\"user\":"
                              "\"https://idp.example.com#alice\",\"rule\":\"engineers\"}\n");
    free(line);
    e.fields = 1u << ACCESSLOG_F_DECISION;
    e.decision = STR_NULL;
    line = format(&e);
    assert_string_equal(line, "{\"decision\":null}\n");
    free(line);
    assert_string_equal(accesslog_field_names[ACCESSLOG_F_ROUTE], "route");
    assert_null(accesslog_field_names[ACCESSLOG_F_COUNT]);
}

/* No access decision (unrouted, reserved path), anonymous: nulls. */
static void test_no_decision_gives_nulls(void **state)
{
    struct accesslog_entry e = sample();
    char *line;
    (void)state;
    e.route = e.user = e.decision = e.rule = e.device = STR_NULL;
    line = format(&e);
    assert_non_null(strstr(line, ",\"route\":null,\"user\":null,\"decision\":null,"
                                 "\"rule\":null,\"device\":null}\n"));
    free(line);
}

static void test_no_upstream_gives_nulls(void **state)
{
    struct accesslog_entry e = sample();
    char *line;
    (void)state;
    e.upstream = STR_NULL;
    e.upstream_us = -1;
    e.status = 404;
    e.total_us = 0;
    line = format(&e);
    assert_non_null(strstr(line, ",\"status\":404,"));
    assert_non_null(strstr(line, ",\"upstream\":null,\"upstream_ms\":null,\"total_ms\":0.000,"));
    free(line);
}

static void test_hostile_bytes_are_escaped(void **state)
{
    struct accesslog_entry e = sample();
    char *line;
    (void)state;
    /* Quote, backslash, CR/LF (log injection), NUL, DEL, valid UTF-8, a lone
     * continuation byte, an overlong slash and a truncated sequence. */
    static const char path[] = "/a\"b\\c\r\n{\"x\":1}\0\x7f\xc3\xa9\x80\xc0\xaf\xe2\x82";
    e.path = (struct str){ path, sizeof path - 1 };
    e.host = STR("h\tx");
    line = format(&e);
    assert_non_null(strstr(line, "\"path\":\"/a\\\"b\\\\c\\u000d\\u000a{\\\"x\\\":1}\\u0000"
                                 "\\u007f\xc3\xa9\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\","));
    assert_non_null(strstr(line, "\"host\":\"h\\u0009x\""));
    /* One line: the only newline is the last byte. */
    assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
    free(line);
}

static void test_query_string_is_never_logged(void **state)
{
    struct accesslog_entry e = sample();
    char *line;
    (void)state;
    e.path = STR("/.gatehouse/oidc/callback?code=SECRETCODE&state=xyz");
    line = format(&e);
    assert_non_null(strstr(line, ",\"path\":\"/.gatehouse/oidc/callback\","));
    assert_null(strstr(line, "SECRETCODE"));
    free(line);
    e.path = STR("?only");
    line = format(&e);
    assert_non_null(strstr(line, ",\"path\":\"\","));
    free(line);
}

/* Any bytes in any string field still give one line of valid JSON with exactly
 * the seventeen fields (checked with a real parser). */
static void test_random_bytes_always_give_valid_json(void **state)
{
    static const char *const keys[] = { "ts",        "request_id", "client_ip",   "method",
                                        "host",      "path",       "status",      "bytes_in",
                                        "bytes_out", "upstream",   "upstream_ms", "total_ms",
                                        "route",     "user",       "decision",    "rule",
                                        "device" };
    unsigned seed = 12345;
    char raw[5][64];
    (void)state;

    for (int round = 0; round < 3000; round++) {
        struct accesslog_entry e = sample();
        struct str *fields[5] = { &e.request_id, &e.method, &e.host, &e.path, &e.user };
        json_error_t jerr;
        json_t *j;
        char *line;
        for (int f = 0; f < 5; f++) {
            size_t n = (size_t)(rand_r(&seed) % 64);
            for (size_t i = 0; i < n; i++) {
                raw[f][i] = (char)(rand_r(&seed) & 0xff);
            }
            *fields[f] = (struct str){ raw[f], n };
        }
        line = format(&e);
        assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
        j = json_loads(line, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
        if (!j) {
            fprintf(stderr, "invalid JSON (%s): %s", jerr.text, line);
        }
        assert_non_null(j);
        assert_int_equal(json_object_size(j), 17);
        for (size_t k = 0; k < 17; k++) {
            assert_non_null(json_object_get(j, keys[k]));
        }
        assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
        json_decref(j);
        free(line);
    }
}

static void test_format_reports_needed_size_when_short(void **state)
{
    struct accesslog_entry e = sample();
    char small[16];
    size_t need = accesslog_format(&e, NULL, 0);
    (void)state;
    assert_int_equal(accesslog_format(&e, small, sizeof small), need);
    assert_true(need > sizeof small);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++) {
        n += *s == '\n';
    }
    return n;
}

static void test_file_buffering_flush_and_reopen(void **state)
{
    char dir[] = "/tmp/gh-al-XXXXXX", path[256], rotated[256];
    struct accesslog_entry e = sample();
    struct err err = { 0 };
    struct accesslog *al;
    char *text;
    (void)state;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/access.log", dir);
    snprintf(rotated, sizeof rotated, "%s/access.log.1", dir);
    al = accesslog_new(path, &err);
    assert_non_null(al);
    accesslog_write(al, &e);
    accesslog_write(al, &e);
    text = slurp(path);
    assert_string_equal(text, ""); /* buffered */
    free(text);
    accesslog_flush(al);
    text = slurp(path);
    assert_int_equal(count_lines(text), 2);
    free(text);

    /* Rotation: the old file keeps what was written, new lines go to a new file. */
    assert_int_equal(rename(path, rotated), 0);
    accesslog_write(al, &e);
    assert_int_equal(accesslog_reopen(al, &err), 0);
    accesslog_write(al, &e);
    accesslog_free(al);
    text = slurp(rotated);
    assert_int_equal(count_lines(text), 3);
    free(text);
    text = slurp(path);
    assert_int_equal(count_lines(text), 1);
    free(text);
    unlink(path);
    unlink(rotated);
    rmdir(dir);
}

static void test_buffer_flushes_itself_past_64k(void **state)
{
    char path[] = "/tmp/gh-al-big-XXXXXX";
    struct accesslog_entry e = sample();
    struct err err = { 0 };
    struct accesslog *al;
    int fd = mkstemp(path);
    struct stat st;
    (void)state;

    assert_true(fd >= 0);
    close(fd);
    al = accesslog_new(path, &err);
    assert_non_null(al);
    for (int i = 0; i < 2000; i++) {
        accesslog_write(al, &e);
    }
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size >= 64 * 1024);
    /* Whole lines only. */
    char *text = slurp(path);
    assert_int_equal(text[st.st_size - 1], '\n');
    free(text);
    accesslog_free(al);
    unlink(path);
}

static void test_huge_path_grows_the_buffer(void **state)
{
    char path[] = "/tmp/gh-al-huge-XXXXXX";
    struct accesslog_entry e = sample();
    struct err err = { 0 };
    struct accesslog *al;
    char *big = malloc(100000), *text;
    int fd = mkstemp(path);
    (void)state;

    assert_true(fd >= 0);
    close(fd);
    memset(big, '\n', 100000); /* each becomes \u000a: 600 KB of JSON */
    e.path = (struct str){ big, 100000 };
    al = accesslog_new(path, &err);
    accesslog_write(al, &e);
    accesslog_write(al, &e);
    accesslog_free(al);
    text = slurp(path);
    assert_int_equal(count_lines(text), 2);
    assert_true(strlen(text) > 1200000);
    free(text);
    free(big);
    unlink(path);
}

static void test_pipe_writes_are_whole_lines(void **state)
{
    int p[2], saved;
    struct accesslog_entry e = sample();
    struct err err = { 0 };
    struct accesslog *al;
    char buf[65536];
    ssize_t n;
    size_t total = 0, lines = 0;
    (void)state;

    /* Point stderr at a pipe to see the writes as a reader would. */
    assert_int_equal(pipe(p), 0);
    saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    al = accesslog_new("stderr", &err);
    assert_non_null(al);
    for (int i = 0; i < 100; i++) {
        accesslog_write(al, &e);
    }
    accesslog_free(al);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    /* Each read returns what one write put in (at most PIPE_BUF), ending on a line. */
    while ((n = read(p[0], buf, sizeof buf)) > 0) {
        total += (size_t)n;
        for (ssize_t i = 0; i < n; i++) {
            lines += buf[i] == '\n';
        }
    }
    close(p[0]);
    assert_int_equal(lines, 100);
    assert_int_equal(total, 100 * accesslog_format(&e, NULL, 0));
}

static void test_write_errors_are_logged_once_per_minute(void **state)
{
    struct accesslog_entry e = sample();
    struct err err = { 0 };
    struct accesslog *al;
    int p[2], saved;
    char buf[8192];
    ssize_t n;
    (void)state;

    /* /dev/full accepts the open and fails every write with ENOSPC. */
    al = accesslog_new("/dev/full", &err);
    assert_non_null(al);
    assert_int_equal(pipe(p), 0);
    saved = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    for (int i = 0; i < 3; i++) {
        accesslog_write(al, &e);
        accesslog_flush(al);
    }
    accesslog_free(al);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(p[1]);
    n = read(p[0], buf, sizeof buf - 1);
    close(p[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    /* Rate limited: three failed flushes, one warning line. */
    assert_non_null(strstr(buf, "level=warn"));
    assert_non_null(strstr(buf, "/dev/full"));
    assert_non_null(strstr(buf, "No space left on device"));
    assert_ptr_equal(strchr(buf, '\n'), buf + strlen(buf) - 1);
}

static void test_open_failure_is_reported(void **state)
{
    struct err err = { 0 };
    (void)state;
    assert_null(accesslog_new("/nonexistent-dir/access.log", &err));
    assert_int_equal(err.code, ERR_IO);
    assert_string_equal(err.msg, "cannot open access log \"/nonexistent-dir/access.log\": No "
                                 "such file or directory");
    accesslog_free(NULL);
    accesslog_flush(NULL);
    assert_int_equal(accesslog_reopen(NULL, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_has_exactly_the_documented_fields),
        cmocka_unit_test(test_no_upstream_gives_nulls),
        cmocka_unit_test(test_fields_mask_chooses_fields),
        cmocka_unit_test(test_no_decision_gives_nulls),
        cmocka_unit_test(test_hostile_bytes_are_escaped),
        cmocka_unit_test(test_query_string_is_never_logged),
        cmocka_unit_test(test_random_bytes_always_give_valid_json),
        cmocka_unit_test(test_format_reports_needed_size_when_short),
        cmocka_unit_test(test_file_buffering_flush_and_reopen),
        cmocka_unit_test(test_buffer_flushes_itself_past_64k),
        cmocka_unit_test(test_huge_path_grows_the_buffer),
        cmocka_unit_test(test_pipe_writes_are_whole_lines),
        cmocka_unit_test(test_write_errors_are_logged_once_per_minute),
        cmocka_unit_test(test_open_failure_is_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
