/* policy/dl_verify.c - what `gatehouse audit verify` checks beyond the hash chain:
 * that the stores were not cut back behind the head the writer remembers (head file),
 * behind a signed checkpoint or behind a head pinned elsewhere (--anchor); that the
 * tail is covered by recent checkpoints; that every retention anchor has its signed
 * retention record. And `gatehouse audit head`. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "decision_log_int.h"

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The newest record: seq (0 when none), hash and time. */
static uint64_t store_last(sqlite3 *db, char hash[65], int64_t *ts)
{
    sqlite3_stmt *st = NULL;
    uint64_t seq = 0;
    hash[0] = '\0';
    if (sqlite3_prepare_v2(db, "SELECT seq, hash, ts_us FROM decisions ORDER BY seq DESC LIMIT 1",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *h = sqlite3_column_text(st, 1);
        seq = (uint64_t)sqlite3_column_int64(st, 0);
        snprintf(hash, 65, "%s", h ? (const char *)h : "");
        if (ts) {
            *ts = sqlite3_column_int64(st, 2);
        }
    }
    sqlite3_finalize(st);
    return seq;
}

/* The hash of record seq; false when there is no such row. */
static bool hash_of(sqlite3 *db, uint64_t seq, char hash[65])
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db, "SELECT hash FROM decisions WHERE seq = ?1", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
        if (sqlite3_step(st) == SQLITE_ROW) {
            const unsigned char *h = sqlite3_column_text(st, 0);
            snprintf(hash, 65, "%s", h ? (const char *)h : "");
            found = true;
        }
    }
    sqlite3_finalize(st);
    return found;
}

/* The first record after seq: its seq and time (false when none). */
static bool first_after(sqlite3 *db, uint64_t seq, uint64_t *out, int64_t *ts, uint64_t *count)
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(db,
                           "SELECT min(seq), min(ts_us), count(*) FROM decisions "
                           "WHERE seq > ?1",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
            *out = (uint64_t)sqlite3_column_int64(st, 0);
            *ts = sqlite3_column_int64(st, 1);
            *count = (uint64_t)sqlite3_column_int64(st, 2);
            found = true;
        }
    }
    sqlite3_finalize(st);
    return found;
}

struct src_ckpt {
    struct dl_checkpoint c;
    char src[160];
};

static void add(struct src_ckpt **v, size_t *n, const struct dl_checkpoint *c, const char *src)
{
    *v = xrealloc(*v, (*n + 1) * sizeof **v);
    (*v)[*n].c = *c;
    snprintf((*v)[*n].src, sizeof(*v)[*n].src, "%s", src);
    (*n)++;
}

static void read_ckpt_file(const char *path, struct src_ckpt **v, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("note: checkpoint file %s: %s\n", path, strerror(errno));
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        struct dl_checkpoint c;
        lineno++;
        if (dl_ckpt_parse(line, (size_t)len, &c) && !c.retention) {
            char src[160];
            snprintf(src, sizeof src, "%s:%ld", path, lineno);
            add(v, n, &c, src);
        }
    }
    free(line);
    fclose(f);
}

static void fmt_dur(uint64_t ms, char out[32])
{
    if (ms % 86400000 == 0 && ms) {
        snprintf(out, 32, "%llud", (unsigned long long)(ms / 86400000));
    } else if (ms % 1000 == 0) {
        snprintf(out, 32, "%llus", (unsigned long long)(ms / 1000));
    } else {
        snprintf(out, 32, "%llums", (unsigned long long)ms);
    }
}

/* "SEQ:HASH" or a file holding a checkpoint (audit head's output, a checkpoint line). */
static bool load_anchor(const char *arg, struct dl_checkpoint *a, bool *signed_)
{
    const char *colon = strchr(arg, ':');
    uint64_t seq;
    memset(a, 0, sizeof *a);
    *signed_ = false;
    if (colon && strlen(colon + 1) == 64 &&
        str_to_u64((struct str){ arg, (size_t)(colon - arg) }, 1, UINT64_MAX, &seq)) {
        a->seq = seq;
        memcpy(a->hash, colon + 1, 65);
        return true;
    }
    json_error_t je;
    json_t *o = json_load_file(arg, JSON_DISABLE_EOF_CHECK, &je);
    bool ok = json_is_object(o) && dl_ckpt_from_json(o, a) && !a->retention;
    if (!ok && json_is_object(o)) {
        /* An unsigned head: {seq, hash}. */
        json_t *s = json_object_get(o, "seq"), *h = json_object_get(o, "hash");
        ok = json_is_integer(s) && json_integer_value(s) > 0 && json_is_string(h) &&
             json_string_length(h) == 64;
        if (ok) {
            memset(a, 0, sizeof *a);
            a->seq = (uint64_t)json_integer_value(s);
            memcpy(a->hash, json_string_value(h), 65);
        }
    } else if (ok) {
        *signed_ = true;
    }
    json_decref(o);
    return ok;
}

/* True when the log holds a record of format 2 or 3 (written by a Gatehouse that
 * keeps a head file). A database from before the kind column has none. */
static bool any_format2(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM decisions WHERE kind IS NOT NULL OR node IS NOT "
                           "NULL LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK) {
        sqlite3_finalize(st);
        return false; /* no kind column: only format-1 records */
    }
    bool found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return found;
}

bool dl_verify_integrity(const struct decision_log_conf *c, sqlite3 *db, const char *pubkey,
                         const char *anchor)
{
    bool ok = true;
    struct err err = { 0 };
    uint64_t anchor_seq;
    char anchor_hash[65], last_hash[65], h[65];
    int64_t last_ts = 0;
    /* What the writer stated (head file, checkpoints) is read before the stores: a
     * running writer only states what it has committed, so the stores read after it
     * are never behind it unless records were removed. */
    char *head_path = dl_head_path(c->sqlite);
    struct dl_head head;
    int hrc = dl_head_read(head_path, &head, &err);
    if (c->deferred && hrc == 0) {
        /* The writer states heads of the file: bring the index up to it (errors are
         * the caller's FAIL index). */
        struct err ie = { 0 };
        (void)dl_ingest(c, NULL, &ie);
    }
    struct src_ckpt *cks = NULL;
    size_t ncks = 0;
    struct dl_checkpoint *tab = NULL;
    size_t ntab = dl_ckpt_load(db, false, &tab);
    for (size_t i = 0; i < ntab; i++) {
        add(&cks, &ncks, &tab[i], "sqlite");
    }
    free(tab);
    if (hrc == 0 && head.have_ckpt) {
        add(&cks, &ncks, &head.ckpt, head_path);
    }
    if (c->ckpt_file) {
        read_ckpt_file(c->ckpt_file, &cks, &ncks);
    }
    dl_anchor_get(db, &anchor_seq, anchor_hash);
    uint64_t last = store_last(db, last_hash, &last_ts);
    if (last == 0) {
        last = anchor_seq;
        memcpy(last_hash, anchor_hash, 65);
    }

    /* 1. The head file: the writer's last head, outside both stores. A log that only
     * a Gatehouse from before head files wrote (format-1 records, no checkpoint) has
     * none yet: the first start of this version writes it. */
    if (hrc == 1 && last > 0 && ntab == 0 && !any_format2(db)) {
        printf("note head: %s does not exist yet: this log was written by a Gatehouse "
               "before head files; a cut at its end is detectable once the server has "
               "started with this version\n",
               head_path);
    } else if (hrc == 1) {
        if (last > 0) {
            printf("FAIL head: %s is missing: the writer keeps it next to the database "
                   "(deleted?)\n",
                   head_path);
            ok = false;
        }
    } else if (hrc != 0) {
        printf("FAIL head: %s\n", err.msg);
        ok = false;
    } else if (head.seq > last) {
        printf("FAIL head: the log ends at record %llu but the writer's head file records record "
               "%llu: records %llu..%llu were removed (truncated)\n",
               (unsigned long long)last, (unsigned long long)head.seq, (unsigned long long)last + 1,
               (unsigned long long)head.seq);
        ok = false;
    } else if (head.seq > anchor_seq && hash_of(db, head.seq, h) && strcmp(h, head.hash) != 0) {
        printf("FAIL head: record %llu does not match the writer's head file: the chain was "
               "rewritten\n",
               (unsigned long long)head.seq);
        ok = false;
    }

    /* 2. Signed checkpoints. */
    struct dl_key key = { 0 };
    const char *key_path = pubkey ? pubkey : c->ckpt_key;
    bool have_key = false;
    if (key_path) {
        if (dl_key_load(key_path, false, &key, &err) != 0) {
            printf("FAIL checkpoints: %s\n", err.msg);
            ok = false;
        } else {
            have_key = true;
        }
    }
    if (have_key) {
        const struct src_ckpt *best = NULL;
        size_t valid = 0;
        for (size_t i = 0; i < ncks; i++) {
            const struct dl_checkpoint *k = &cks[i].c;
            if (!dl_ckpt_verify(&key, k)) {
                printf("FAIL checkpoints: the checkpoint of record %llu (%s) has a bad signature "
                       "or another key (forged)\n",
                       (unsigned long long)k->seq, cks[i].src);
                ok = false;
                continue;
            }
            valid++;
            if (!best || k->seq > best->c.seq) {
                best = &cks[i];
            }
            if (k->seq > anchor_seq && k->seq <= last && hash_of(db, k->seq, h) &&
                strcmp(h, k->hash) != 0) {
                printf("FAIL checkpoints: record %llu does not match its signed checkpoint of %s "
                       "(%s): the chain was rewritten\n",
                       (unsigned long long)k->seq, k->time, cks[i].src);
                ok = false;
            }
        }
        if (best && best->c.seq > last) {
            printf("FAIL checkpoints: the log ends at record %llu but a signed checkpoint of %s "
                   "(%s) covers record %llu: records %llu..%llu were removed (truncated)\n",
                   (unsigned long long)last, best->c.time, best->src,
                   (unsigned long long)best->c.seq, (unsigned long long)last + 1,
                   (unsigned long long)best->c.seq);
            ok = false;
        }
        /* The tail: records older than one more interval must be covered. */
        uint64_t covered = best ? best->c.seq : anchor_seq, first = 0, count = 0;
        int64_t first_ts = 0, now = wall_us();
        int64_t slack_us = (int64_t)c->ckpt_interval_ms * 1000 * 2 + 5000000;
        if (first_after(db, covered, &first, &first_ts, &count) &&
            (now - first_ts > slack_us || count > c->ckpt_every + 1024)) {
            char iv[32], ts[64];
            fmt_dur(c->ckpt_interval_ms, iv);
            dl_format_ts(first_ts, ts);
            if (best) {
                printf("FAIL checkpoints: records %llu..%llu (the first from %s) have no signed "
                       "checkpoint; the last one covers record %llu (%s), and one is due every "
                       "%s or %llu records (a writer stopped without one, or the tail was "
                       "rewritten)\n",
                       (unsigned long long)first, (unsigned long long)last, ts,
                       (unsigned long long)best->c.seq, best->c.time, iv,
                       (unsigned long long)c->ckpt_every);
            } else {
                printf("FAIL checkpoints: no signed checkpoint covers records %llu..%llu (the "
                       "first from %s); one is due every %s or %llu records\n",
                       (unsigned long long)first, (unsigned long long)last, ts, iv,
                       (unsigned long long)c->ckpt_every);
            }
            ok = false;
        }
        if (ok && best) {
            printf("checkpoints: %zu signed by key %s verified; the newest covers record %llu "
                   "(%s)\n",
                   valid, key.key_id, (unsigned long long)best->c.seq, best->c.time);
        }
    } else if (ncks > 0 || !c->ckpt_key) {
        printf("note: checkpoints not checked (no decision_log.checkpoint.key and no --pubkey)\n");
    }

    /* 3. Retention: every cut is a signed statement. */
    if (anchor_seq > 0) {
        struct dl_checkpoint *rr = NULL;
        size_t nrr = dl_ckpt_load(db, true, &rr);
        const struct dl_checkpoint *cut = NULL;
        for (size_t i = 0; i < nrr; i++) {
            if (rr[i].seq == anchor_seq && strcmp(rr[i].hash, anchor_hash) == 0) {
                cut = &rr[i];
            }
        }
        int64_t signed_us = 0;
        if (!cut) {
            printf("FAIL retention: records 1..%llu are gone and the log starts after an anchor "
                   "(record %llu) that no retention record states: truncation, not retention\n",
                   (unsigned long long)anchor_seq, (unsigned long long)anchor_seq);
            ok = false;
        } else if (have_key && !dl_ckpt_verify(&key, cut)) {
            printf("FAIL retention: the retention record up to record %llu has a bad signature or "
                   "another key (forged)\n",
                   (unsigned long long)anchor_seq);
            ok = false;
        } else if (!have_key && c->ckpt_key == NULL && !cut->sig[0]) {
            printf("note: retention up to record %llu (%s, %s) is unsigned (no checkpoint key)\n",
                   (unsigned long long)anchor_seq, cut->reason, cut->time);
        } else if (dl_parse_ts(cut->time, &signed_us) &&
                   (c->retain_ms == 0 ||
                    signed_us - cut->upto_ts_us < (int64_t)c->retain_ms * 1000)) {
            char rt[32], ts[64];
            fmt_dur(c->retain_ms, rt);
            dl_format_ts(cut->upto_ts_us, ts);
            printf("FAIL retention: the cut of %s removed record %llu from %s, younger than the "
                   "retention period (retain: %s)\n",
                   cut->time, (unsigned long long)anchor_seq, ts,
                   c->retain_ms ? rt : "0, keep forever");
            ok = false;
        } else {
            printf("retention: records 1..%llu removed by %s on %s (signed)\n",
                   (unsigned long long)anchor_seq, cut->reason, cut->time);
        }
        free(rr);
    }

    /* 4. A head pinned elsewhere. */
    if (anchor) {
        struct dl_checkpoint a;
        bool sig = false;
        if (!load_anchor(anchor, &a, &sig)) {
            printf("FAIL anchor: %s is neither SEQ:HASH nor a file holding a head (audit head)\n",
                   anchor);
            ok = false;
        } else if (sig && have_key && !dl_ckpt_verify(&key, &a)) {
            printf("FAIL anchor: the pinned head (record %llu) has a bad signature or another "
                   "key\n",
                   (unsigned long long)a.seq);
            ok = false;
        } else if (a.seq > last) {
            printf("FAIL anchor: the log ends at record %llu but the pinned head is record %llu: "
                   "records %llu..%llu were removed (truncated)\n",
                   (unsigned long long)last, (unsigned long long)a.seq,
                   (unsigned long long)last + 1, (unsigned long long)a.seq);
            ok = false;
        } else if (a.seq <= anchor_seq) {
            printf("note: the pinned head (record %llu) was removed by retention (up to record "
                   "%llu)\n",
                   (unsigned long long)a.seq, (unsigned long long)anchor_seq);
        } else if (!hash_of(db, a.seq, h) || strcmp(h, a.hash) != 0) {
            printf("FAIL anchor: record %llu does not match the pinned head: the chain was "
                   "rewritten\n",
                   (unsigned long long)a.seq);
            ok = false;
        } else {
            printf("anchor: record %llu matches the pinned head\n", (unsigned long long)a.seq);
        }
    }
    free(cks);
    free(head_path);
    dl_key_free(&key);
    return ok;
}

int dl_print_head(const struct decision_log_conf *c)
{
    sqlite3 *db = NULL;
    struct err err = { 0 };
    if (dl_db_open(c->sqlite, true, &db, &err) != 0) {
        fprintf(stderr, "gatehouse: %s\n", err.msg);
        return 1;
    }
    struct dl_checkpoint h = { 0 };
    uint64_t anchor_seq;
    dl_anchor_get(db, &anchor_seq, h.hash);
    h.seq = store_last(db, h.hash, NULL);
    if (h.seq == 0) {
        h.seq = anchor_seq;
        dl_anchor_get(db, &anchor_seq, h.hash);
    }
    sqlite3_close(db);
    char *head_path = dl_head_path(c->sqlite);
    struct dl_head fh;
    if (dl_head_read(head_path, &fh, &err) == 0 && fh.seq > h.seq) {
        fprintf(stderr,
                "gatehouse: warning: the head file records record %llu but the log ends "
                "at %llu (run audit verify)\n",
                (unsigned long long)fh.seq, (unsigned long long)h.seq);
    }
    free(head_path);
    dl_format_ts(wall_us(), h.time);
    char *json;
    if (c->ckpt_key) {
        struct dl_key key;
        if (dl_key_load(c->ckpt_key, true, &key, &err) != 0 || dl_ckpt_sign(&key, &h, &err) != 0) {
            fprintf(stderr, "gatehouse: %s\n", err.msg);
            dl_key_free(&key);
            return 1;
        }
        dl_key_free(&key);
        json = dl_ckpt_json(&h);
    } else {
        fprintf(stderr, "gatehouse: no decision_log.checkpoint.key: the head is not signed\n");
        json_t *o = json_pack("{s:s, s:I, s:s, s:s}", "type", "head", "seq", (json_int_t)h.seq,
                              "hash", h.hash, "time", h.time);
        json = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
    }
    puts(json);
    free(json);
    return 0;
}
