/* policy/dl_checkpoint.c - signed statements about the decision log: checkpoints
 * (the chain head {seq, hash, time} signed with the log's own Ed25519 key) and
 * retention records (the cut {up to seq, hash, record time, reason, time}), and the
 * head file that keeps the last head where truncating both stores does not erase it.
 * Shared by the writer (decision_log.c) and the audit commands (cmd_audit.c). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "decision_log_int.h"
#include "core/digest.h"

static int no_passphrase(char *buf, int size, int rw, void *u)
{
    (void)buf;
    (void)size;
    (void)rw;
    (void)u;
    return 0;
}

static bool key_id_of(EVP_PKEY *pk, char out[DL_KEY_ID_LEN + 1])
{
    unsigned char raw[32];
    size_t len = sizeof raw;
    if (EVP_PKEY_get_raw_public_key(pk, raw, &len) != 1 || len != sizeof raw) {
        return false;
    }
    unsigned char md[32];
    const void *parts[] = { raw };
    const size_t lens[] = { len };
    char hex[65];
    digest_sha256(parts, lens, 1, md);
    str_hex(md, 32, hex);
    memcpy(out, hex, DL_KEY_ID_LEN);
    out[DL_KEY_ID_LEN] = '\0';
    return true;
}

int dl_key_load(const char *path, bool need_private, struct dl_key *k, struct err *err)
{
    memset(k, 0, sizeof *k);
    FILE *f = fopen(path, "r");
    if (!f) {
        return err_set(err, ERR_IO, "cannot read the decision log key %s: %s", path,
                       strerror(errno));
    }
    EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
    if (pk) {
        k->priv = true;
    } else if (!need_private) {
        rewind(f);
        ERR_clear_error();
        pk = PEM_read_PUBKEY(f, NULL, no_passphrase, NULL);
    }
    fclose(f);
    ERR_clear_error();
    if (!pk) {
        return err_set(err, ERR_CONFIG, "%s: not a PEM %s key", path,
                       need_private ? "private" : "private or public");
    }
    if (EVP_PKEY_get_id(pk) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(pk);
        return err_set(err, ERR_CONFIG,
                       "%s: the decision log key must be Ed25519 "
                       "(openssl genpkey -algorithm ed25519)",
                       path);
    }
    if (!key_id_of(pk, k->key_id)) {
        EVP_PKEY_free(pk);
        return err_set(err, ERR_CONFIG, "%s: cannot read the public key", path);
    }
    k->pk = pk;
    return 0;
}

void dl_key_free(struct dl_key *k)
{
    EVP_PKEY_free(k->pk);
    memset(k, 0, sizeof *k);
}

/* The signed bytes: a fixed text, so the signature never depends on JSON spelling. */
static char *ckpt_message(const struct dl_checkpoint *c)
{
    if (c->retention) {
        return xasprintf("gatehouse decision log retention v1\nupto_seq=%llu\nupto_hash=%s\n"
                         "upto_ts_us=%lld\nreason=%s\ntime=%s\nkey_id=%s\n",
                         (unsigned long long)c->seq, c->hash, (long long)c->upto_ts_us, c->reason,
                         c->time, c->key_id);
    }
    return xasprintf("gatehouse decision log checkpoint v1\nseq=%llu\nhash=%s\ntime=%s\n"
                     "key_id=%s\n",
                     (unsigned long long)c->seq, c->hash, c->time, c->key_id);
}

int dl_ckpt_sign(const struct dl_key *k, struct dl_checkpoint *c, struct err *err)
{
    if (!k->pk || !k->priv) {
        return err_set(err, ERR_CONFIG, "no private key to sign decision log checkpoints");
    }
    memcpy(c->key_id, k->key_id, sizeof c->key_id);
    char *msg = ckpt_message(c);
    unsigned char sig[64];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->pk) == 1 &&
              EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)msg, strlen(msg)) == 1 &&
              siglen == sizeof sig;
    EVP_MD_CTX_free(ctx);
    free(msg);
    ERR_clear_error();
    if (!ok) {
        return err_set(err, ERR_CRYPTO, "signing the decision log checkpoint failed");
    }
    str_hex(sig, sizeof sig, c->sig);
    return 0;
}

static int unhex(char ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    return -1;
}

bool dl_ckpt_verify(const struct dl_key *k, const struct dl_checkpoint *c)
{
    unsigned char sig[64];
    if (!k->pk || strcmp(c->key_id, k->key_id) != 0 || strlen(c->sig) != 128) {
        return false;
    }
    for (size_t i = 0; i < 64; i++) {
        int hi = unhex(c->sig[2 * i]), lo = unhex(c->sig[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        sig[i] = (unsigned char)(hi * 16 + lo);
    }
    char *msg = ckpt_message(c);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, k->pk) == 1 &&
              EVP_DigestVerify(ctx, sig, sizeof sig, (const unsigned char *)msg, strlen(msg)) == 1;
    EVP_MD_CTX_free(ctx);
    free(msg);
    ERR_clear_error();
    return ok;
}

char *dl_ckpt_json(const struct dl_checkpoint *c)
{
    json_t *o = json_object();
    if (c->retention) {
        json_object_set_new(o, "type", json_string("retention"));
        json_object_set_new(o, "upto_seq", json_integer((json_int_t)c->seq));
        json_object_set_new(o, "upto_hash", json_string(c->hash));
        json_object_set_new(o, "upto_ts_us", json_integer((json_int_t)c->upto_ts_us));
        json_object_set_new(o, "reason", json_string(c->reason));
    } else {
        json_object_set_new(o, "type", json_string("checkpoint"));
        json_object_set_new(o, "seq", json_integer((json_int_t)c->seq));
        json_object_set_new(o, "hash", json_string(c->hash));
    }
    json_object_set_new(o, "time", json_string(c->time));
    json_object_set_new(o, "key_id", json_string(c->key_id));
    json_object_set_new(o, "sig", json_string(c->sig));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

static bool copy_str(json_t *o, const char *key, char *out, size_t size)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v) || json_string_length(v) >= size) {
        return false;
    }
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return true;
}

bool dl_ckpt_from_json(json_t *o, struct dl_checkpoint *c)
{
    memset(c, 0, sizeof *c);
    json_t *type = json_object_get(o, "type");
    c->retention = json_is_string(type) && strcmp(json_string_value(type), "retention") == 0;
    json_t *seq = json_object_get(o, c->retention ? "upto_seq" : "seq");
    if (!json_is_integer(seq) || json_integer_value(seq) < 0) {
        return false;
    }
    c->seq = (uint64_t)json_integer_value(seq);
    if (c->retention) {
        json_t *ts = json_object_get(o, "upto_ts_us");
        if (!json_is_integer(ts) || !copy_str(o, "reason", c->reason, sizeof c->reason)) {
            return false;
        }
        c->upto_ts_us = (int64_t)json_integer_value(ts);
    }
    return copy_str(o, c->retention ? "upto_hash" : "hash", c->hash, sizeof c->hash) &&
           strlen(c->hash) == 64 && copy_str(o, "time", c->time, sizeof c->time) &&
           copy_str(o, "key_id", c->key_id, sizeof c->key_id) &&
           copy_str(o, "sig", c->sig, sizeof c->sig);
}

bool dl_ckpt_parse(const char *text, size_t len, struct dl_checkpoint *c)
{
    json_t *o = json_loadb(text, len, 0, NULL);
    bool ok = json_is_object(o) && dl_ckpt_from_json(o, c);
    json_decref(o);
    return ok;
}

/* ---- SQLite ---- */

static const char ckpt_schema[] =
    "CREATE TABLE IF NOT EXISTS decision_log_checkpoints(seq INTEGER NOT NULL, hash TEXT NOT "
    "NULL, time TEXT NOT NULL, key_id TEXT NOT NULL, sig TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS decision_log_retention(upto_seq INTEGER NOT NULL, upto_hash "
    "TEXT NOT NULL, upto_ts_us INTEGER NOT NULL, reason TEXT NOT NULL, time TEXT NOT NULL, "
    "key_id TEXT NOT NULL, sig TEXT NOT NULL);";

int dl_ckpt_schema(sqlite3 *db)
{
    return sqlite3_exec(db, ckpt_schema, NULL, NULL, NULL) == SQLITE_OK ? 0 : ERR_IO;
}

int dl_ckpt_store(sqlite3 *db, const struct dl_checkpoint *c)
{
    sqlite3_stmt *st = NULL;
    const char *sql = c->retention
                          ? "INSERT INTO decision_log_retention VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                          : "INSERT INTO decision_log_checkpoints VALUES(?1, ?2, ?5, ?6, ?7)";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        return ERR_IO;
    }
    sqlite3_bind_int64(st, 1, (sqlite3_int64)c->seq);
    sqlite3_bind_text(st, 2, c->hash, -1, SQLITE_STATIC);
    if (c->retention) {
        sqlite3_bind_int64(st, 3, c->upto_ts_us);
        sqlite3_bind_text(st, 4, c->reason, -1, SQLITE_STATIC);
    }
    sqlite3_bind_text(st, 5, c->time, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, c->key_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, c->sig, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : ERR_IO;
    sqlite3_finalize(st);
    return rc;
}

static void col_copy(sqlite3_stmt *st, int i, char *out, size_t size)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, size, "%s", t ? (const char *)t : "");
}

size_t dl_ckpt_load(sqlite3 *db, bool retention, struct dl_checkpoint **out)
{
    sqlite3_stmt *st = NULL;
    size_t n = 0;
    *out = NULL;
    const char *sql = retention ? "SELECT upto_seq, upto_hash, time, key_id, sig, upto_ts_us, "
                                  "reason FROM decision_log_retention ORDER BY upto_seq"
                                : "SELECT seq, hash, time, key_id, sig FROM "
                                  "decision_log_checkpoints ORDER BY seq";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        return 0; /* an older database: no table yet */
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        *out = xrealloc(*out, (n + 1) * sizeof **out);
        struct dl_checkpoint *c = &(*out)[n++];
        memset(c, 0, sizeof *c);
        c->retention = retention;
        c->seq = (uint64_t)sqlite3_column_int64(st, 0);
        col_copy(st, 1, c->hash, sizeof c->hash);
        col_copy(st, 2, c->time, sizeof c->time);
        col_copy(st, 3, c->key_id, sizeof c->key_id);
        col_copy(st, 4, c->sig, sizeof c->sig);
        if (retention) {
            c->upto_ts_us = sqlite3_column_int64(st, 5);
            col_copy(st, 6, c->reason, sizeof c->reason);
        }
    }
    sqlite3_finalize(st);
    return n;
}

/* ---- the head file ---- */

char *dl_head_path(const char *sqlite_path)
{
    const char *slash = strrchr(sqlite_path, '/');
    return slash ? xasprintf("%.*s/decision-log.head", (int)(slash - sqlite_path), sqlite_path)
                 : xstrdup("decision-log.head");
}

char *dl_spool_path(const char *sqlite_path)
{
    const char *slash = strrchr(sqlite_path, '/');
    return slash ? xasprintf("%.*s/decision-log.spool", (int)(slash - sqlite_path), sqlite_path)
                 : xstrdup("decision-log.spool");
}

int dl_head_write(const char *path, const struct dl_head *h, struct err *err)
{
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer((json_int_t)h->seq));
    json_object_set_new(o, "hash", json_string(h->hash));
    if (h->have_ckpt) {
        char *c = dl_ckpt_json(&h->ckpt);
        json_object_set_new(o, "checkpoint", json_loads(c, 0, NULL));
        free(c);
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    char *tmp = xasprintf("%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    int rc = 0;
    size_t len = strlen(text);
    if (fd < 0) {
        rc = err_set(err, ERR_IO, "%s: %s", tmp, strerror(errno));
    } else {
        if (write(fd, text, len) != (ssize_t)len || write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
            rc = err_set(err, ERR_IO, "%s: %s", tmp, strerror(errno));
        }
        close(fd);
        if (rc == 0 && rename(tmp, path) != 0) {
            rc = err_set(err, ERR_IO, "rename %s: %s", tmp, strerror(errno));
        }
        if (rc != 0) {
            unlink(tmp);
        }
    }
    free(tmp);
    free(text);
    return rc;
}

/* 0 and *h filled; 1 when the file does not exist; ERR_* when it is unreadable. */
int dl_head_read(const char *path, struct dl_head *h, struct err *err)
{
    memset(h, 0, sizeof *h);
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) {
        if (access(path, F_OK) != 0 && errno == ENOENT) {
            return 1;
        }
        return err_set(err, ERR_PARSE, "%s: %s", path, je.text);
    }
    json_t *seq = json_object_get(o, "seq"), *hash = json_object_get(o, "hash");
    int rc = 0;
    if (!json_is_integer(seq) || json_integer_value(seq) < 0 || !json_is_string(hash) ||
        json_string_length(hash) != 64) {
        rc = err_set(err, ERR_PARSE, "%s: not a decision log head", path);
    } else {
        h->seq = (uint64_t)json_integer_value(seq);
        memcpy(h->hash, json_string_value(hash), 65);
        json_t *c = json_object_get(o, "checkpoint");
        h->have_ckpt = json_is_object(c) && dl_ckpt_from_json(c, &h->ckpt);
    }
    json_decref(o);
    return rc;
}
