/* Fuzz target for what the decision log reads back from disk: a record line of
 * the spool or the JSON-lines file (dl_line_parse) and a checkpoint or retention
 * record (dl_ckpt_parse: the checkpoint file, --anchor FILE, the head file's
 * checkpoint). Invariants: no crash or leak; a parsed record has 64-character
 * hashes and its canonical form is computable; a parsed checkpoint has a 64-char
 * hash and NUL-terminated fields; both parsers are deterministic. The one-pass
 * parser of the writer's own lines (dl_line_parse_fast, what index: deferred
 * ingests with) either leaves a line to dl_line_parse or fills the very same row
 * (dl_row_same.h): when it accepts, jansson accepts and agrees field by field, and
 * groups/claims it calls canonical are the writer's bytes. Built with
 * -Dfuzzing=true it is a libFuzzer target; otherwise main() replays
 * corpus/decision_log_line/. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dl_row_same.h"
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
    bool jok;
    CHECK(dl_parse_both(p, size, &jok) >= 0 && jok == ok);
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
