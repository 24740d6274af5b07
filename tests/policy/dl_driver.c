/* tests/policy/dl_driver.c - test driver for the decision log: opens it from a
 * gatehouse.yaml and appends N realistic records as fast as the queue allows
 * (retrying on a full queue), so tests can kill -9 it mid-batch and check that
 * a restart continues the chain. Usage: dl_driver CFG N [TAG] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "policy/policy.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: dl_driver CFG N [TAG]\n");
        return 2;
    }
    const char *tag = argc > 3 ? argv[3] : "run";
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(argv[1], &d);
    struct decision_log_conf c;
    if (!doc || !decision_log_conf_parse(doc->root, argv[1], &d, &c)) {
        conf_diag_print(&d, stderr);
        return 1;
    }
    struct err err = { 0 };
    struct decision_log *dl = decision_log_open(&c, &err);
    if (!dl) {
        fprintf(stderr, "dl_driver: %s\n", err.msg);
        return 1;
    }
    long n = strtol(argv[2], NULL, 10);
    static const char *const users[] = { "alice", "bob", "carol", "dave" };
    static const char *const groups[] = { "eng", "sales", "admins" };
    static const struct policy_kv claims[] = { { { "amr", 3 }, { "pwd", 3 } },
                                               { { "amr", 3 }, { "mfa", 3 } },
                                               { { "department", 10 }, { "R&D \"x\"", 8 } } };
    uint64_t last = 0;
    for (long i = 0; i < n; i++) {
        char rid[64], path[64], email[64];
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(rid, sizeof rid, "%s-%ld", tag, i);
        snprintf(path, sizeof path, "/docs/%ld", i);
        snprintf(email, sizeof email, "%s@example.com", users[i % 4]);
        struct decision_record r = {
            .ts_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
            .request_id = rid,
            .route = i % 3 ? "wiki" : "reports",
            .decision = i % 5 ? "allow" : "deny",
            .rule = i % 5 ? "eng" : "default-deny",
            .reason = i % 5 ? "Allowed." : "No rule allows this request.",
            .user = users[i % 4],
            .email = email,
            .idp = "corp",
            .session = "sha256:0123456789ab",
            .groups = groups + (i % 3),
            .ngroups = 3 - (size_t)(i % 3),
            .claims = claims,
            .nclaims = 3,
            .device_present = i % 2,
            .device_trusted = i % 4 == 1,
            .device_id = i % 2 ? "laptop-17" : NULL,
            .device_owner = i % 2 ? email : NULL,
            .client_ip = "10.1.2.3",
            .method = "GET",
            .host = "wiki.example.com",
            .path = path,
            .latency_us = 120 + (uint64_t)i,
        };
        int rc;
        while ((rc = decision_log_append(dl, &r, &last)) == ERR_LIMIT) {
            usleep(1000); /* a proxy would answer 503 here; the driver waits */
        }
        if (rc != 0) {
            fprintf(stderr, "dl_driver: append failed\n");
            return 1;
        }
        if (i % 1000 == 0) {
            printf("queued %ld (seq %llu)\n", i, (unsigned long long)last);
            fflush(stdout);
        }
    }
    int rc = last ? decision_log_wait(dl, last) : 0;
    decision_log_close(dl);
    decision_log_conf_fini(&c);
    conf_doc_free(doc);
    printf("appended %ld, last seq %llu\n", n, (unsigned long long)last);
    return rc ? 1 : 0;
}
