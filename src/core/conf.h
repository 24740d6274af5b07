/* core/conf.h - the one YAML loader (libyaml) for gatehouse.yaml and policy
 * files. It builds a tree whose every node keeps file:line:col, and a
 * diagnostics list that prints compiler-style messages:
 *   gatehouse.yaml:22:5: error: unknown key "client_secrets" (did you mean "client_secret_file"?)
 * Each module then reads its own section with the typed getters below, which
 * report wrong types and bounds themselves. */
#ifndef GH_CORE_CONF_H
#define GH_CORE_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

enum conf_type { CONF_NULL = 0, CONF_SCALAR, CONF_MAP, CONF_SEQ };

struct conf_node {
    enum conf_type type;
    const char *file; /* borrowed from the doc */
    int line, col;    /* 1-based */
    char *value;      /* scalar text (NUL-terminated), NULL otherwise */
    size_t len;       /* scalar length */
    bool quoted;      /* scalar was written in quotes (never a null/bool/number by YAML rules) */
    size_t n;         /* items in a seq, pairs in a map */
    struct conf_node **items; /* seq items, or map values */
    struct conf_node **keys;  /* map keys (scalars), NULL for seq */
};

/* Collected errors; printing order is the order they were found. */
struct conf_diag {
    size_t count; /* errors found (may exceed the stored ones) */
    size_t stored;
    char *msgs[20];
};

/* A loaded document: owns every node. */
struct conf_doc {
    char *file;
    struct conf_node *root; /* CONF_NULL node for an empty file, never NULL after success */
};

/* Loads and parses path. On a syntax error, adds "file:line:col: error: ..." to d
 * and returns NULL. Duplicate keys in a map are reported (and the doc still returned).
 * Caller frees with conf_doc_free(). */
struct conf_doc *conf_doc_load(const char *path, struct conf_diag *d);
/* Same, from memory; name is used in messages. */
struct conf_doc *conf_doc_parse(const char *name, const char *text, size_t len,
                                struct conf_diag *d);
void conf_doc_free(struct conf_doc *doc);

/* Adds "file:line:col: error: <fmt>" for node n (n may be NULL: no position). */
void conf_error(struct conf_diag *d, const struct conf_node *n, const char *fmt, ...) PRINTF(3, 4);
/* Adds a message exactly as given (for errors not tied to a node). */
void conf_error_raw(struct conf_diag *d, const char *fmt, ...) PRINTF(2, 3);
void conf_diag_print(const struct conf_diag *d, void *file /* FILE* */);
void conf_diag_fini(struct conf_diag *d);

/* Map lookup by key; NULL when absent or when m is not a map. */
struct conf_node *conf_get(const struct conf_node *m, const char *key);
/* Key node for a key (for messages about the key itself). */
struct conf_node *conf_get_key(const struct conf_node *m, const char *key);
/* Reports every key of map m not in allowed (NULL-terminated) with a "did you mean"
 * suggestion. Returns false when m is not a map (reported) or has unknown keys. */
bool conf_check_keys(struct conf_diag *d, const struct conf_node *m, const char *what,
                     const char *const allowed[]);
/* Best suggestion among candidates for word, or NULL when nothing is close. */
const char *conf_suggest(const char *word, const char *const candidates[]);

/* Typed getters. Each reports its own error to d (naming the key) and returns false on
 * a wrong type or bound; "absent" leaves *out untouched and returns true. */
bool conf_map(struct conf_diag *d, const struct conf_node *n, const char *what);
bool conf_seq(struct conf_diag *d, const struct conf_node *n, const char *what);
bool conf_string(struct conf_diag *d, const struct conf_node *m, const char *key, const char **out);
bool conf_bool(struct conf_diag *d, const struct conf_node *m, const char *key, bool *out);
bool conf_u64(struct conf_diag *d, const struct conf_node *m, const char *key, uint64_t min,
              uint64_t max, uint64_t *out);
/* "250ms", "10s", "5m", "8h", "7d", or a bare number of seconds. */
bool conf_duration_ms(struct conf_diag *d, const struct conf_node *m, const char *key,
                      uint64_t min_ms, uint64_t max_ms, uint64_t *out);
/* "512", "32k", "10m", "1g" (powers of 1024). */
bool conf_size(struct conf_diag *d, const struct conf_node *m, const char *key, uint64_t min,
               uint64_t max, uint64_t *out);

/* Reads key from m as one of names (NULL-terminated); reports "must be one of ...,
 * got ..." with a suggestion. Returns the index, -1 when absent, -2 on error. */
int conf_enum(struct conf_diag *d, const struct conf_node *m, const char *key,
              const char *const names[]);
/* A non-empty string value or NULL; reports wrong types and empty strings. */
const char *conf_nonempty(struct conf_diag *d, const struct conf_node *m, const char *key);
/* Index of s in a NULL-terminated list, or -1. */
int conf_name_index(const char *s, const char *const names[]);
/* "a, b, c" into out (truncated at cap), for messages. */
void conf_join_names(const char *const names[], char *out, size_t cap);

/* ---- key tables ----
 * A section is described by a table of keys: name, type, where the value goes
 * (offset into the section's struct), bounds and default. conf_read_table() is
 * the one pass that fills the defaults, reports unknown keys (with "did you
 * mean"), and reads every key with the typed getters above, so every section
 * reports wrong types and bounds with the same words and file:line:col.
 * Keys of type CONF_K_OWN are known (not "unknown") but read by the section's
 * own code: nested maps, lists, cross-checks, or keys another module owns. */
enum conf_key_type {
    CONF_K_OWN = 0,  /* known; read elsewhere */
    CONF_K_BOOL,     /* bool */
    CONF_K_U64,      /* uint64_t, min..max */
    CONF_K_U32,      /* uint32_t, min..max */
    CONF_K_SIZE,     /* uint64_t bytes ("32k"), min..max */
    CONF_K_DURATION, /* uint64_t milliseconds ("10s"), min..max */
    CONF_K_STRING,   /* char * (xstrdup'd, owned by the struct), non-empty; NULL = absent */
    CONF_K_PATH,     /* char *, non-empty, resolved against the config file's directory */
    CONF_K_ENUM,     /* int: index in names */
};

struct conf_key {
    const char *name;
    enum conf_key_type type;
    size_t offset;            /* offsetof(the section's struct, field) */
    uint64_t min, max;        /* numbers, sizes and durations (ms) */
    uint64_t def;             /* default of numbers, bools and enums (index) */
    const char *const *names; /* CONF_K_ENUM: NULL-terminated */
};

/* Fills the defaults of keys[0..n) into base. */
void conf_table_defaults(const struct conf_key *keys, size_t n, void *base);
/* Fills the defaults, then reads map m (what names it in messages, e.g.
 * "\"limits\"") into base: unknown keys are reported but the known ones are still
 * read; conf_file resolves CONF_K_PATH values. m NULL (section absent): defaults
 * only, true. Returns false when m is not a map (reported); problems with single
 * keys go to d. */
bool conf_read_table(struct conf_diag *d, const struct conf_node *m, const char *what,
                     const struct conf_key *keys, size_t n, void *base, const char *conf_file);
#define CONF_TABLE_LEN(t) (sizeof(t) / sizeof((t)[0]))

/* The "state" section's own keys, read by one table for the snapshot (proxy) and
 * the offline commands (sessions, devices): state.sqlite resolved against
 * conf_file, state.postgres as written (its details, password_file, migrate,
 * staleness and node, are authn's: spg_conf_parse). Unknown keys are reported.
 * Returns false when state is not a map. Free with conf_state_fini(). */
struct conf_state {
    char *sqlite;   /* resolved path, or NULL */
    char *postgres; /* connection string, or NULL */
};
bool conf_state_read(struct conf_diag *d, const struct conf_node *root, const char *conf_file,
                     struct conf_state *out);
void conf_state_fini(struct conf_state *s);

/* "a map", "a list", "a scalar" or "nothing" (n may be NULL), for messages. */
const char *conf_type_name(const struct conf_node *n);

/* Reads a whole file of at most max bytes into a NUL-terminated xmalloc'd
 * buffer (caller frees); *len gets its size. NULL with err (ERR_IO, or
 * ERR_LIMIT when larger than max) otherwise. Blocking: start-up only. */
char *conf_read_file(const char *path, size_t max, size_t *len, struct err *err);

/* Raw parsers for scalars (no diagnostics). */
bool conf_parse_duration_ms(const char *s, uint64_t *out);
bool conf_parse_size(const char *s, uint64_t *out);
bool conf_parse_bool(const char *s, bool *out);

/* Resolves a path from a config file relative to that file's directory.
 * Returns a malloc'd string (xmalloc). */
char *conf_path_resolve(const char *conf_file, const char *path);

#endif
