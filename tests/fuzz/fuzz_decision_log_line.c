/* Fuzz target for what the decision log reads back from disk: a record line of
 * the spool or the JSON-lines file (dl_line_parse) and a checkpoint or retention
 * record (dl_ckpt_parse: the checkpoint file, --anchor FILE, the head file's
 * checkpoint). Invariants: no crash or leak; a parsed record has 64-character
 * hashes and its canonical form is computable; a parsed checkpoint has a 64-char
 * hash and NUL-terminated fields; both parsers are deterministic. Built with
 * -Dfuzzing=true it is a libFuzzer target; otherwise main() replays
 * corpus/decision_log_line/. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "policy/decision_log_int.h"
#include "replay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct dl_row row;
    const char *p = (const char *)data;
    bool ok = dl_line_parse(p, size, &row);
    if (ok) {
        CHECK(row.seq >= 1 && strlen(row.prev_hash) == 64 && strlen(row.hash) == 64);
        struct sbuf b = { 0 };
        char h[65];
        dl_canonical(&row.rec, row.seq, row.prev_hash, &b);
        dl_hash(row.prev_hash, b.p, b.len, h);
        CHECK(strlen(h) == 64);
        dl_sbuf_free(&b);
        dl_row_fini(&row);
    }
    struct dl_row again;
    CHECK(dl_line_parse(p, size, &again) == ok);
    if (ok) {
        dl_row_fini(&again);
    }
    struct dl_checkpoint c, c2;
    bool cok = dl_ckpt_parse(p, size, &c);
    if (cok) {
        CHECK(strlen(c.hash) == 64 && memchr(c.sig, '\0', sizeof c.sig) &&
              memchr(c.time, '\0', sizeof c.time) && memchr(c.key_id, '\0', sizeof c.key_id));
        char *json = dl_ckpt_json(&c);
        CHECK(json != NULL);
        CHECK(dl_ckpt_parse(json, strlen(json), &c2));
        CHECK(c2.seq == c.seq && strcmp(c2.hash, c.hash) == 0 && c2.retention == c.retention);
        free(json);
    }
    CHECK(dl_ckpt_parse(p, size, &c2) == cok);
    return 0;
}
