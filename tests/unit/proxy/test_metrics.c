/* Unit tests for proxy/metrics.c: sums over workers, route ids stable across
 * reloads, histogram buckets, label escaping, a concurrent writer, and a
 * line-by-line check of the Prometheus text format. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/config.h"
#include "proxy/metrics.h"

static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len == n && memcmp(p, line, n) == 0) {
            return true;
        }
        p = nl ? nl + 1 : NULL;
    }
    return false;
}

static void assert_line(const char *text, const char *line)
{
    if (!has_line(text, line)) {
        fprintf(stderr, "missing line: %s\n--- in:\n%s", line, text);
        fail();
    }
}

/* Every line is a comment (# HELP/# TYPE) or "name{labels} value" with a
 * numeric value, every sample's family has a TYPE line before it, and the
 * text ends with a newline. */
static void assert_valid_exposition(const char *text)
{
    char typed[64][96];
    size_t ntyped = 0;
    const char *p = text;

    assert_true(strlen(text) > 0);
    assert_int_equal(text[strlen(text) - 1], '\n');
    while (*p) {
        const char *nl = strchr(p, '\n');
        char line[512];
        size_t len = (size_t)(nl - p);
        assert_non_null(nl);
        assert_true(len < sizeof line);
        memcpy(line, p, len);
        line[len] = '\0';
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[96], type[32];
            assert_int_equal(sscanf(line + 7, "%95s %31s", name, type), 2);
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            assert_true(ntyped < 64);
            snprintf(typed[ntyped++], sizeof typed[0], "%s", name);
        } else if (strncmp(line, "# HELP ", 7) == 0) {
            assert_true(len > 8);
        } else {
            char *sp = strrchr(line, ' ');
            char *end;
            size_t name_len = strcspn(line, "{ ");
            bool known = false;
            assert_non_null(sp);
            strtod(sp + 1, &end);
            assert_true(*end == '\0' && end != sp + 1);
            for (size_t i = 0; i < ntyped; i++) {
                static const char *const sfx[] = { "", "_bucket", "_sum", "_count" };
                size_t tl = strlen(typed[i]);
                for (size_t k = 0; k < 4 && !known; k++) {
                    known = name_len == tl + strlen(sfx[k]) && strncmp(line, typed[i], tl) == 0 &&
                            strncmp(line + tl, sfx[k], strlen(sfx[k])) == 0;
                }
            }
            if (!known) {
                fprintf(stderr, "sample without TYPE: %s\n", line);
            }
            assert_true(known);
        }
        p = nl + 1;
    }
}

static void test_counters_sum_over_workers(void **state)
{
    struct metrics *m = metrics_new(2);
    unsigned wiki = metrics_route_id(m, "wiki");
    char *text;
    (void)state;

    metrics_request(metrics_worker(m, 0), wiki, 200, 100, 1000);
    metrics_request(metrics_worker(m, 1), wiki, 204, 10, 20);
    metrics_request(metrics_worker(m, 1), wiki, 503, 1, 2);
    metrics_request(metrics_worker(m, 0), METRICS_ROUTE_NONE, 404, 5, 6);
    metrics_request(metrics_worker(m, 0), wiki, 999, 0, 0); /* nonsense counts as 5xx */
    metrics_conn_open(metrics_worker(m, 0));
    metrics_conn_open(metrics_worker(m, 1));
    metrics_conn_open(metrics_worker(m, 1));
    metrics_conn_close(metrics_worker(m, 1));
    metrics_pool_add(metrics_worker(m, 0), 3, 1);
    metrics_pool_add(metrics_worker(m, 1), 1, 0);
    metrics_pool_add(metrics_worker(m, 0), -1, 1);
    metrics_upstream_error(metrics_worker(m, 1), wiki, METRICS_UPSTREAM_TIMEOUT);
    metrics_upstream_retry(metrics_worker(m, 0), wiki);
    metrics_tls_failure(metrics_worker(m, 1));
    metrics_reload(m, true);
    metrics_reload(m, false);
    metrics_reload(m, false);

    text = metrics_render(m, NULL);
    assert_valid_exposition(text);
    assert_line(text, "# TYPE gatehouse_requests_total counter");
    assert_line(text, "gatehouse_requests_total{route=\"wiki\",class=\"2xx\"} 2");
    assert_line(text, "gatehouse_requests_total{route=\"wiki\",class=\"5xx\"} 2");
    assert_line(text, "gatehouse_requests_total{route=\"\",class=\"4xx\"} 1");
    assert_line(text, "gatehouse_connections_open 2");
    assert_line(text, "gatehouse_connections_total 3");
    assert_line(text, "gatehouse_upstream_pool_idle 3");
    assert_line(text, "gatehouse_upstream_pool_active 2");
    assert_line(text, "gatehouse_request_bytes_total 116");
    assert_line(text, "gatehouse_response_bytes_total 1028");
    assert_line(text, "gatehouse_upstream_errors_total{route=\"wiki\",kind=\"timeout\"} 1");
    assert_line(text, "gatehouse_upstream_retries_total{route=\"wiki\"} 1");
    assert_line(text, "gatehouse_tls_handshake_failures_total 1");
    assert_line(text, "gatehouse_config_reloads_total{result=\"ok\"} 1");
    assert_line(text, "gatehouse_config_reloads_total{result=\"failed\"} 2");
    assert_line(text, "gatehouse_workers 2");
    assert_false(has_line(text, "gatehouse_requests_total{route=\"wiki\",class=\"3xx\"} 0"));
    free(text);
    metrics_free(m);
}

static void test_latency_histogram_is_cumulative(void **state)
{
    struct metrics *m = metrics_new(1);
    unsigned r = metrics_route_id(m, "api");
    struct metrics_worker *w = metrics_worker(m, 0);
    char *text;
    size_t len;
    (void)state;

    metrics_upstream_latency(w, r, 4000);     /* <= 5ms */
    metrics_upstream_latency(w, r, 5000);     /* boundary: le is inclusive */
    metrics_upstream_latency(w, r, 70000);    /* 0.1 */
    metrics_upstream_latency(w, r, 60000000); /* beyond 30s: +Inf only */
    text = metrics_render(m, &len);
    assert_int_equal(len, strlen(text));
    assert_valid_exposition(text);
    assert_line(text, "# TYPE gatehouse_upstream_latency_seconds histogram");
    assert_line(text, "gatehouse_upstream_latency_seconds_bucket{route=\"api\",le=\"0.005\"} 2");
    assert_line(text, "gatehouse_upstream_latency_seconds_bucket{route=\"api\",le=\"0.05\"} 2");
    assert_line(text, "gatehouse_upstream_latency_seconds_bucket{route=\"api\",le=\"0.1\"} 3");
    assert_line(text, "gatehouse_upstream_latency_seconds_bucket{route=\"api\",le=\"30\"} 3");
    assert_line(text, "gatehouse_upstream_latency_seconds_bucket{route=\"api\",le=\"+Inf\"} 4");
    assert_line(text, "gatehouse_upstream_latency_seconds_sum{route=\"api\"} 60.079000");
    assert_line(text, "gatehouse_upstream_latency_seconds_count{route=\"api\"} 4");
    free(text);
    metrics_free(m);
}

static void test_route_ids_are_stable_by_name_across_reloads(void **state)
{
    const char y1[] = "listen: [{address: 127.0.0.1:8080}]\nroutes:\n"
                      "  - {name: a, upstream: {servers: [http://h:1]}, public: true}\n"
                      "  - {name: b, match: {path_prefix: /b}, "
                      "upstream: {servers: [http://h:1]}, public: true}\n";
    const char y2[] = "listen: [{address: 127.0.0.1:8080}]\nroutes:\n"
                      "  - {name: c, upstream: {servers: [http://h:1]}, public: true}\n"
                      "  - {name: a, match: {path_prefix: /a}, "
                      "upstream: {servers: [http://h:1]}, public: true}\n";
    struct conf_diag d = { 0 };
    struct metrics *m = metrics_new(1);
    struct config *c1 = config_parse("m.yaml", y1, sizeof y1 - 1, &d);
    struct config *c2 = config_parse("m.yaml", y2, sizeof y2 - 1, &d);
    (void)state;

    assert_non_null(c1);
    assert_non_null(c2);
    metrics_bind_config(m, c1);
    metrics_bind_config(m, c2);
    assert_int_equal(c1->routes[0].metrics_id, c2->routes[1].metrics_id);
    assert_int_not_equal(c1->routes[1].metrics_id, c2->routes[0].metrics_id);
    assert_int_not_equal(c1->routes[0].metrics_id, METRICS_ROUTE_NONE);
    assert_int_not_equal(c1->routes[0].metrics_id, METRICS_ROUTE_OTHER);
    assert_int_equal(metrics_route_id(m, ""), METRICS_ROUTE_NONE);
    assert_int_equal(metrics_route_id(m, NULL), METRICS_ROUTE_NONE);
    config_unref(c1);
    config_unref(c2);
    conf_diag_fini(&d);
    metrics_free(m);
}

static void test_route_overflow_shares_other(void **state)
{
    struct metrics *m = metrics_new(1);
    char name[32];
    unsigned id = 0;
    char *text;
    (void)state;
    for (int i = 0; i < METRICS_MAX_ROUTES + 5; i++) {
        snprintf(name, sizeof name, "r%d", i);
        id = metrics_route_id(m, name);
    }
    assert_int_equal(id, METRICS_ROUTE_OTHER);
    metrics_request(metrics_worker(m, 0), id, 200, 0, 0);
    metrics_request(metrics_worker(m, 0), 100000, 200, 0, 0); /* out of range id */
    text = metrics_render(m, NULL);
    assert_line(text, "gatehouse_requests_total{route=\"_other\",class=\"2xx\"} 2");
    free(text);
    metrics_free(m);
}

static void test_label_values_are_escaped(void **state)
{
    struct metrics *m = metrics_new(1);
    unsigned id = metrics_route_id(m, "we\"ird\\na\nme");
    char *text;
    (void)state;
    metrics_request(metrics_worker(m, 0), id, 301, 0, 0);
    text = metrics_render(m, NULL);
    assert_line(text, "gatehouse_requests_total{route=\"we\\\"ird\\\\na\\nme\",class=\"3xx\"} 1");
    free(text);
    metrics_free(m);
}

struct writer_arg {
    struct metrics_worker *w;
    unsigned route;
};

static void *writer(void *p)
{
    struct writer_arg *a = p;
    for (int i = 0; i < 100000; i++) {
        metrics_request(a->w, a->route, 200, 1, 1);
    }
    return NULL;
}

static void test_render_while_workers_write(void **state)
{
    struct metrics *m = metrics_new(2);
    struct writer_arg a0 = { metrics_worker(m, 0), metrics_route_id(m, "x") };
    struct writer_arg a1 = { metrics_worker(m, 1), a0.route };
    pthread_t t0, t1;
    char *text;
    (void)state;

    assert_true(((uintptr_t)a0.w % 64) == 0);
    assert_true(((uintptr_t)a1.w % 64) == 0);
    pthread_create(&t0, NULL, writer, &a0);
    pthread_create(&t1, NULL, writer, &a1);
    for (int i = 0; i < 20; i++) {
        text = metrics_render(m, NULL);
        assert_valid_exposition(text);
        free(text);
    }
    pthread_join(t0, NULL);
    pthread_join(t1, NULL);
    text = metrics_render(m, NULL);
    assert_line(text, "gatehouse_requests_total{route=\"x\",class=\"2xx\"} 200000");
    free(text);
    metrics_free(m);
    metrics_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters_sum_over_workers),
        cmocka_unit_test(test_latency_histogram_is_cumulative),
        cmocka_unit_test(test_route_ids_are_stable_by_name_across_reloads),
        cmocka_unit_test(test_route_overflow_shares_other),
        cmocka_unit_test(test_label_values_are_escaped),
        cmocka_unit_test(test_render_while_workers_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
