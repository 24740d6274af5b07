/* Fuzz target for OPA answers (policy/opa.c, opa_response_parse): any bytes as
 * the body of an OPA Data API response. Invariants: the result is 0 or ERR_PARSE,
 * a parse error never allows, the reason is always a NUL-terminated string within
 * its buffer, and parsing is deterministic. Built with -Dfuzzing=true it is a
 * libFuzzer target; otherwise main() replays corpus/opa_response/. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "policy/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool allow = true, again = false;
    char reason[16], reason2[16];
    struct err err = { 0 };
    memset(reason, 'x', sizeof reason);
    int rc = opa_response_parse((const char *)data, size, &allow, reason, sizeof reason, &err);
    CHECK(rc == 0 || rc == ERR_PARSE);
    CHECK(memchr(reason, '\0', sizeof reason) != NULL);
    if (rc != 0) {
        CHECK(!allow && err.code == ERR_PARSE);
    }
    int rc2 = opa_response_parse((const char *)data, size, &again, reason2, sizeof reason2, NULL);
    CHECK(rc == rc2 && allow == again && strcmp(reason, reason2) == 0);
    return 0;
}

#ifndef GH_LIBFUZZER
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (!f) {
        perror(path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput((const uint8_t *)buf, (size_t)(n > 0 ? n : 0));
    free(buf);
    return 0;
}

static int run_path(const char *path, size_t *count)
{
    struct stat st;
    DIR *dir;
    struct dirent *e;
    int rc = 0;

    if (stat(path, &st) != 0) {
        perror(path);
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        (*count)++;
        return run_file(path);
    }
    if (!(dir = opendir(path))) {
        perror(path);
        return 1;
    }
    while ((e = readdir(dir))) {
        char sub[4096];
        if (e->d_name[0] == '.') {
            continue;
        }
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        rc |= run_path(sub, count);
    }
    closedir(dir);
    return rc;
}

int main(int argc, char **argv)
{
    size_t count = 0;
    int rc = 0;

    for (int i = 1; i < argc; i++) {
        rc |= run_path(argv[i], &count);
    }
    printf("fuzz_opa_response: %zu inputs replayed\n", count);
    return rc || count == 0;
}
#endif
