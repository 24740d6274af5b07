/* bench/dlog/bench_dlog.c - decision log microbenchmark (`make bench`,
 * bench/dlog/run.sh). Pushes N realistic records through the real writer into
 * real SQLite + JSON-lines files in a temporary directory, the way a worker does
 * (decision_record_fill into a request arena, then decision_log_append), and
 * reports CPU microseconds per record: the whole process (getrusage: the
 * appending thread plus the writer thread), and the appending thread alone
 * (CLOCK_THREAD_CPUTIME_ID). RATE records per second are offered in 1 ms
 * bursts (0: as fast as the queue takes them), so that batches are as large as
 * a proxy at that rate would make them.
 * Mode "parts" times the steps alone, on one thread and without the writer: the
 * record filled, its body built, the line framed and hashed, the hash alone.
 * Usage: bench_dlog DIR N RATE batch|strict|parts [checkpoint-key.pem] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "policy/decision_log_int.h"
#include "policy/policy.h"

static double tv_us(struct timeval tv)
{
    return (double)tv.tv_sec * 1e6 + (double)tv.tv_usec;
}

static double clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double proc_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return tv_us(ru.ru_utime) + tv_us(ru.ru_stime);
}

#define S(lit)                                                                                     \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

/* ns per call of each step, on this thread alone. */
static int parts(long n, const struct policy_input *in, const struct policy_result *res,
                 struct arena *a)
{
    static const struct policy_kv claims[] = { { S("amr"), S("mfa") } };
    struct decision_record rec;
    struct sbuf body = { 0 }, line = { 0 };
    struct dl_spans sp, lsp;
    char prev[65] = DL_GENESIS, hash[65];
    double t0 = clock_us(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < n; i++) {
        arena_reset(a);
        if (decision_record_fill(&rec, NULL, in, res, "req-00000001", "wiki", a) != 0) {
            return 1;
        }
    }
    double t1 = clock_us(CLOCK_THREAD_CPUTIME_ID);
    rec.claims = claims;
    rec.nclaims = 1;
    rec.client_ip = "10.1.2.3";
    rec.latency_us = 41;
    for (long i = 0; i < n; i++) {
        body.len = 0;
        dl_body_append(&body, &rec, &sp);
    }
    double t2 = clock_us(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < n; i++) {
        line.len = 0;
        dl_line_from_body(&line, (uint64_t)i + 1, "bench-node", body.p, body.len, &sp, prev, hash,
                          &lsp);
    }
    double t3 = clock_us(CLOCK_THREAD_CPUTIME_ID);
    size_t canon = line.len - 67 - 10 + 1; /* up to the closing quote of prev_hash */
    for (long i = 0; i < n; i++) {
        dl_hash(prev, line.p, canon, hash);
    }
    double t4 = clock_us(CLOCK_THREAD_CPUTIME_ID);
    printf("dlog parts n=%ld, line %zu bytes (body %zu): fill %.0f ns, body %.0f ns, "
           "frame+hash %.0f ns, of which hash %.0f ns\n",
           n, line.len, body.len, (t1 - t0) * 1e3 / (double)n, (t2 - t1) * 1e3 / (double)n,
           (t3 - t2) * 1e3 / (double)n, (t4 - t3) * 1e3 / (double)n);
    dl_sbuf_free(&body);
    dl_sbuf_free(&line);
    arena_free(a);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr,
                "usage: bench_dlog DIR N RATE batch|strict[-deferred] [checkpoint-key.pem]\n");
        return 2;
    }
    long n = strtol(argv[2], NULL, 10), rate = strtol(argv[3], NULL, 10);
    struct decision_log_conf c = { 0 };
    char db[512], file[512];
    snprintf(db, sizeof db, "%s/state.db", argv[1]);
    snprintf(file, sizeof file, "%s/decisions.jsonl", argv[1]);
    c.sqlite = db;
    c.file = file;
    c.sync = strncmp(argv[4], "strict", 6) == 0 ? DECISION_LOG_STRICT : DECISION_LOG_BATCH;
    c.deferred = strstr(argv[4], "-deferred") != NULL; /* decision_log.index: deferred */
    c.queue = 10000;                                   /* the default */
    c.flush_interval_ms = 200;
    c.max_pending = 1000;
    c.ckpt_key = argc > 5 ? argv[5] : NULL;
    c.node = (char *)"bench-node";
    struct err err = { 0 };
    struct decision_log *dl = strcmp(argv[4], "parts") ? decision_log_open(&c, &err) : NULL;
    if (!dl && strcmp(argv[4], "parts") != 0) {
        fprintf(stderr, "bench_dlog: %s\n", err.msg);
        return 1;
    }
    /* A signed-in request on a route whose policy tests groups and one claim. */
    static const struct str groups[] = { S("engineering"), S("staff"), S("vpn-users") };
    static const struct policy_kv claims[] = { { S("amr"), S("mfa") } };
    struct policy_input in = {
        .authenticated = true,
        .user = S("alice"),
        .email = S("alice@example.com"),
        .idp = S("corp"),
        .session = S("3f9a1c0d2b7e"),
        .groups = groups,
        .ngroups = 3,
        .claims = claims,
        .nclaims = 1,
        .device = { .present = true,
                    .trusted = true,
                    .id = S("laptop-0017"),
                    .owner = S("alice@example.com") },
        .client_ip = { .family = 4, .addr = { 10, 1, 2, 3 } },
        .method = S("GET"),
        .host = S("wiki.example.com"),
        .path = S("/docs/runbooks/deploy"),
    };
    struct policy_result res = { .decision = POLICY_ALLOW,
                                 .effective = POLICY_ALLOW,
                                 .rule = "engineers-on-trusted-devices",
                                 .reason = "Engineers on a trusted device." };
    struct arena *a = arena_new(0);
    if (strcmp(argv[4], "parts") == 0) {
        return parts(n, &in, &res, a);
    }
    uint64_t last = 0;
    long burst = rate > 0 ? (rate + 999) / 1000 : n;
    double cpu0 = proc_cpu_us(), th0 = clock_us(CLOCK_THREAD_CPUTIME_ID),
           wall0 = clock_us(CLOCK_MONOTONIC);
    for (long i = 0; i < n;) {
        double t = clock_us(CLOCK_MONOTONIC);
        for (long k = 0; k < burst && i < n; k++, i++) {
            char rid[] = "req-00000000"; /* a request id, without printf's cost */
            for (long v = i, d = 11; d >= 4 && v > 0; d--, v /= 10) {
                rid[d] = (char)('0' + v % 10);
            }
            struct decision_record rec;
            arena_reset(a);
            if (decision_record_fill(&rec, NULL, &in, &res, rid, "wiki", a) != 0) {
                fprintf(stderr, "bench_dlog: fill failed\n");
                return 1;
            }
            rec.claims = claims; /* the claims the route's policy tests */
            rec.nclaims = 1;
            rec.client_ip = "10.1.2.3";
            rec.latency_us = 41;
            int rc;
            while ((rc = decision_log_append(dl, &rec, &last)) == ERR_LIMIT) {
                usleep(200);
            }
            if (rc != 0) {
                return 1;
            }
            if (c.sync == DECISION_LOG_STRICT && decision_log_wait(dl, last) != 0) {
                return 1;
            }
        }
        if (rate > 0) {
            double left = 1000.0 - (clock_us(CLOCK_MONOTONIC) - t);
            if (left > 0) {
                usleep((useconds_t)left);
            }
        }
    }
    double th1 = clock_us(CLOCK_THREAD_CPUTIME_ID);
    if (last && decision_log_wait(dl, last) != 0) {
        fprintf(stderr, "bench_dlog: commit failed\n");
        return 1;
    }
    double cpu1 = proc_cpu_us(), wall1 = clock_us(CLOCK_MONOTONIC);
    decision_log_close(dl);
    arena_free(a);
    printf("dlog %s rate=%ld n=%ld: %.3f us CPU/record (process, writer included), "
           "%.3f us/record appending thread, wall %.0f ms\n",
           argv[4], rate, n, (cpu1 - cpu0) / (double)n, (th1 - th0) / (double)n,
           (wall1 - wall0) / 1e3);
    return 0;
}
