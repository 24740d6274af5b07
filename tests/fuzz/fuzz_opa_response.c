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
#include "replay.h"

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
