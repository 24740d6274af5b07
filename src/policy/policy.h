/* policy/policy.h - what is allowed: route policies (YAML, compiled at load into
 * a flat form evaluated without allocation), the OPA criterion (the evaluator
 * stops with POLICY_NEED_OPA; the proxy performs the HTTP call and resumes),
 * the tamper-evident decision log, metrics counters, and the `policy` and
 * `audit` commands. No sockets here: only local I/O (policy files, SQLite,
 * the JSON-lines decision log). */
#ifndef GH_POLICY_POLICY_H
#define GH_POLICY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "core/ident.h"

/* ---- decisions ---- */

/* Outcomes are not errors; zero denies so anything uninitialised denies. */
enum policy_decision { POLICY_DENY = 0, POLICY_ALLOW };
enum policy_mode { POLICY_ENFORCE = 0, POLICY_SHADOW };
enum policy_step { POLICY_DONE = 0, POLICY_NEED_OPA };
/* Per-rule result in a trace (explain). */
enum policy_rule_result {
    POLICY_RULE_NOT_EVALUATED = 0, /* an earlier rule already decided (fast path) */
    POLICY_RULE_NO_MATCH,
    POLICY_RULE_MATCH,
    POLICY_RULE_UNKNOWN, /* waits for an OPA answer */
    POLICY_RULE_ERROR,   /* a condition could not be evaluated (a regex limit): a deny
                          * rule then denies, an allow rule does not allow */
};

#define POLICY_MAX_OPA 8 /* distinct OPA data paths per policy */

/* ---- input: protocol-neutral, everything borrowed from the caller ---- */

struct policy_kv {
    struct str name, value;
};

struct policy_ip {
    int family;             /* 0 = none, 4 or 6; IPv4-mapped IPv6 is stored as 4 */
    unsigned char addr[16]; /* network order; IPv4 in the first 4 bytes */
};

struct policy_device {
    bool present;               /* a verified client certificate was presented */
    bool trusted;               /* enrolled and not revoked (device registry) */
    struct str id, owner;       /* registry id and owner email */
    struct str subject, issuer; /* RFC 2253 */
    struct str serial;          /* upper-case hex */
    struct str fingerprint;     /* sha256 lower-case hex */
    struct str san;             /* first URI/email SAN (SPIFFE id) */
};

struct policy_input {
    bool authenticated;
    struct str user, email, idp, session;
    const struct str *groups;
    size_t ngroups;
    const struct policy_kv *claims; /* name -> value; repeated names = multi-valued */
    size_t nclaims;
    struct policy_device device;
    struct policy_ip client_ip;
    struct str method, host, path; /* host without port, path without query */
    const struct policy_kv *headers;
    size_t nheaders;
    int64_t time_s;   /* unix seconds of the request */
    struct str route; /* route name (for OPA input and logs) */
};

/* ---- result ---- */

struct policy_opa_answer {
    uint8_t state;    /* 0 unknown, 1 false, 2 true */
    char reason[128]; /* from {"result": {"allow": .., "reason": ..}} */
};

struct policy_result {
    enum policy_decision decision;  /* what the rules say */
    enum policy_decision effective; /* what to enforce: equals decision, except in shadow mode
                                     * (then: allow when authenticated) */
    bool shadow;
    bool need_login;    /* denied and not authenticated: send to sign-in */
    const char *rule;   /* deciding rule id or "default-deny"; borrowed */
    const char *reason; /* rule reason, OPA reason or a default; borrowed */
    /* POLICY_NEED_OPA: ask OPA at opa_path (borrowed from the policy), then call
     * policy_opa_answer() and policy_eval() again. */
    const char *opa_path;
    unsigned opa_index;
    bool opa_called;
    struct policy_opa_answer opa[POLICY_MAX_OPA];
    /* Optional trace: caller points it at policy_rule_count() bytes before eval;
     * it then evaluates every rule (slower) and records each result. */
    uint8_t *trace;
};

/* ---- policies ---- */

struct policy; /* immutable after load, shareable read-only across threads */

/* Loads, validates and compiles a policy file. Every problem is reported to d as
 * "file:line:col: error: ..." and NULL is returned. Caller frees with policy_free(). */
struct policy *policy_load(const char *file, struct conf_diag *d);
/* Same from memory (name is used in messages). */
struct policy *policy_parse(const char *name, const char *text, size_t len, struct conf_diag *d);
/* The simple route cases: "public" (allow everyone, rule id "public") and
 * "allow-any-authenticated" (rule id of that name). Never NULL. */
struct policy *policy_new_builtin(bool public_route);
void policy_free(struct policy *p);

const char *policy_file(const struct policy *p);
enum policy_mode policy_mode(const struct policy *p);
size_t policy_rule_count(const struct policy *p);
const char *policy_rule_id(const struct policy *p, size_t i);
const char *policy_rule_effect(const struct policy *p, size_t i); /* "allow" | "deny" */

/* Resets r for a new evaluation. trace: NULL for the fast path, or policy_rule_count()
 * bytes that receive each rule's enum policy_rule_result (every rule is then evaluated). */
void policy_result_init(struct policy_result *r, uint8_t *trace);
/* Evaluates in against p. Pure, allocation-free and bounded (nesting depth and
 * node count are capped at load). Returns POLICY_DONE with r filled in, or
 * POLICY_NEED_OPA with r->opa_path set: perform the query, record it with
 * policy_opa_answer() and call policy_eval() again with the same r. */
enum policy_step policy_eval(const struct policy *p, const struct policy_input *in,
                             struct policy_result *r);
/* Records OPA's answer for r->opa_index (reason may be NULL). */
void policy_opa_answer(struct policy_result *r, bool allow, const char *reason);

/* Parses an IPv4/IPv6 literal ("::ffff:1.2.3.4" becomes IPv4). */
bool policy_ip_parse(struct str s, struct policy_ip *out);

/* ---- OPA client helpers (the HTTP call itself belongs to the proxy) ---- */

enum opa_on_error { OPA_ON_ERROR_DENY = 0, OPA_ON_ERROR_ALLOW };

struct opa_conf {
    char *url;             /* base URL, e.g. http://127.0.0.1:8181; NULL = not configured */
    uint64_t timeout_ms;   /* default 200ms */
    uint64_t cache_ttl_ms; /* default 5s; 0 disables the cache */
    enum opa_on_error on_error;
};

/* Reads the `opa:` section of a gatehouse.yaml root (absent: url NULL, defaults).
 * Returns false with messages in d. Caller frees with opa_conf_fini(). */
bool opa_conf_parse(const struct conf_node *root, struct conf_diag *d, struct opa_conf *out);
void opa_conf_fini(struct opa_conf *c);
/* The URL to POST to: <url>/v1/data/<path>. Caller frees (free()). */
char *opa_request_url(const struct opa_conf *c, const char *path);
/* The documented request body {"input": {...}} (docs/policy.md). Caller frees (free()). */
char *opa_input_json(const struct policy_input *in);
/* Interprets an OPA Data API response body: {"result": true|false} or
 * {"result": {"allow": bool, "reason": "..."}}; no/other result = deny (undefined).
 * Returns 0 or ERR_PARSE (malformed JSON: the caller applies on_error). */
int opa_response_parse(const char *body, size_t len, bool *allow, char *reason, size_t reason_size,
                       struct err *err);

/* Applies the outcome of the HTTP exchange for r->opa_path to r: a 200 with a parsable
 * body gives OPA's answer (undefined = deny); a transport error (timeout, refused),
 * another status or a malformed body applies c->on_error. Returns true when it was
 * an error (count it in policy_metrics_opa and log it). On success *allow and reason
 * (may be NULL) tell what to put in the cache. */
bool opa_answer_http(const struct opa_conf *c, struct policy_result *r, bool transport_error,
                     long status, const char *body, size_t len, bool *allow);

/* A thread-safe TTL cache of OPA answers keyed by (path, input JSON). */
struct opa_cache;
struct opa_cache *opa_cache_new(size_t max_entries);
void opa_cache_free(struct opa_cache *c);
/* Returns true and fills allow/reason on a fresh hit. now_ms: monotonic clock. */
bool opa_cache_get(struct opa_cache *c, const char *path, const char *input_json, uint64_t now_ms,
                   bool *allow, char *reason, size_t reason_size);
void opa_cache_put(struct opa_cache *c, const char *path, const char *input_json, bool allow,
                   const char *reason, uint64_t now_ms, uint64_t ttl_ms);

/* ---- decision log ---- */

struct decision_record {
    int64_t ts_us; /* unix microseconds */
    const char *request_id, *route;
    const char *decision; /* "allow" | "deny" | "login" | "error" */
    const char *rule, *reason;
    const char *user, *email, *idp;
    const char *session; /* hash prefix, never the session id */
    const char *const *groups;
    size_t ngroups;
    const struct policy_kv *claims; /* replayed by `policy diff` */
    size_t nclaims;
    bool device_present, device_trusted;
    const char *device_id, *device_owner;
    const char *client_ip, *method, *host, *path;
    bool shadow;
    bool opa_called;
    const char *opa_result; /* "allow" | "deny" | "error" | NULL */
    uint32_t opa_ms;
    uint64_t latency_us;
    /* Record format 2 (NULL kind: a format-1 record, as written before these fields). */
    const char *kind;         /* "policy" (a route's policy decided), "signin" (the sign-in
                                 * flow) or "admin" (an administrative act) */
    const char *enforced;     /* what was done to the request: "allow" | "deny" | "login" |
                                 * "error"; differs from decision in shadow mode. NULL: admin */
    const char *admin_action; /* kind "admin": e.g. "session.revoke" */
    const char *admin_actor;  /* the OS account that ran the command */
    const char *admin_from;   /* where from: host, terminal, SSH client */
    const char *admin_target; /* what it was done to: "user bob", "session 0123abcd" */
    /* Record format 3: the node whose writer chained the record (state.node, default
     * the host name), inside the hashed bytes. Set by the writer; NULL: format 2. */
    const char *node;
};

/* Fills rec for a finished evaluation: copies what the record needs from in (as
 * NUL-terminated strings, into a), the decision ("allow", "deny", or "login" when
 * r->need_login), rule, reason, shadow flag and OPA fields. Only the claims that
 * p's rules reference are kept (enough for `policy diff`, no more personal data).
 * p may be NULL (no claims kept). request_id and route are borrowed. ts_us is now.
 * Returns 0 or ERR_LIMIT when the arena is full. */
int decision_record_fill(struct decision_record *rec, const struct policy *p,
                         const struct policy_input *in, const struct policy_result *r,
                         const char *request_id, const char *route, struct arena *a) WARN_UNUSED;
/* True when one of p's rules tests claim `name`. */
bool policy_uses_claim(const struct policy *p, struct str name);

enum decision_log_sync { DECISION_LOG_BATCH = 0, DECISION_LOG_STRICT };

struct decision_log_conf {
    char *sqlite; /* state.sqlite, resolved; NULL = no SQLite sink */
    char *file;   /* decision_log.file, resolved; NULL = no JSONL sink */
    enum decision_log_sync sync;
    uint64_t retain_ms;         /* default 90d; 0 = keep forever */
    uint64_t queue;             /* bound of pending records, default 10000 */
    uint64_t flush_interval_ms; /* batch mode: longest time before a commit, default 200ms */
    uint64_t max_pending;       /* store failing: records held (spooled) before 503, default 1000 */
    /* decision_log.checkpoint: signed chain heads (NULL key = no checkpoints). */
    char *ckpt_key;            /* Ed25519 private key (PEM), resolved */
    uint64_t ckpt_every;       /* records between checkpoints, default 1000 */
    uint64_t ckpt_interval_ms; /* longest time between checkpoints, default 60s */
    char *ckpt_file;           /* also append each checkpoint here (one JSON line) */
    char *ckpt_command;        /* also run this with the checkpoint on stdin */
    bool ckpt_syslog;          /* also send each checkpoint to syslog */
    /* state.postgres: records are also shipped to the fleet's shared table. */
    char *pg_conninfo;      /* NULL: one node, SQLite only */
    char *pg_password_file; /* resolved */
    char *node;             /* state.node, default the host name */
    /* decision_log.index: deferred = the file is the log of record, SQLite an index
     * filled from it by the commands that read it (dl_ingest). */
    bool deferred;
};

/* Reads `decision_log:` and `state.sqlite` from a gatehouse.yaml root (paths relative
 * to conf_file). Returns false with messages in d. Free with decision_log_conf_fini(). */
bool decision_log_conf_parse(const struct conf_node *root, const char *conf_file,
                             struct conf_diag *d, struct decision_log_conf *out);
void decision_log_conf_fini(struct decision_log_conf *c);

struct decision_log;
/* Opens both sinks, recovers the chain head (re-appending to the file whatever a
 * crash left only in SQLite) and starts the writer thread. NULL on error (err). */
struct decision_log *decision_log_open(const struct decision_log_conf *c, struct err *err);
/* Queues a copy of rec; never blocks. Returns ERR_LIMIT when the queue is beyond its
 * bound (answer 503: records are never dropped silently). *seq (may be NULL) gets the
 * record's sequence number for decision_log_wait(). */
int decision_log_append(struct decision_log *dl, const struct decision_record *rec,
                        uint64_t *seq) WARN_UNUSED;
/* Blocks until record seq is committed to both sinks (sync: strict; group commit).
 * Returns 0 or ERR_IO. Call from a thread that may block (not an event loop). */
int decision_log_wait(struct decision_log *dl, uint64_t seq) WARN_UNUSED;
/* Called on the writer thread after each commit with the highest committed seq. */
typedef void decision_log_commit_cb(uint64_t committed_seq, void *arg);
void decision_log_set_commit_cb(struct decision_log *dl, decision_log_commit_cb *cb, void *arg);
/* Writes everything queued, stops the thread, closes. NULL is a no-op. */
void decision_log_close(struct decision_log *dl);
/* Deletes records older than now - retain_ms, keeping an anchor so verify still works.
 * Returns the number deleted or -1. Runs in the writer thread periodically too. */
long decision_log_retain(const struct decision_log_conf *c, int64_t now_us, struct err *err);
size_t decision_log_queue_depth(struct decision_log *dl);
/* admin_log_fn (core/ident.h) for the command line tools: records act with the OS
 * account, host, terminal and SSH client that ran the command. */
int policy_admin_log(const char *conf_file, const struct admin_act *act, char *note,
                     size_t note_size);
/* Appends an administrative record (rec->kind "admin") to the log of c from a command
 * line tool. The record first goes to the database's pending table, in one transaction;
 * the running server's writer (or, when none runs, this call itself) moves it into the
 * chain, so there is one writer and the chain stays whole. Waits up to wait_ms for the
 * server. *seq gets the record's position, or 0 when it is still pending (it is then
 * chained as soon as a server opens the log). Returns 0 or an error (err). */
int decision_log_admin(const struct decision_log_conf *c, const struct decision_record *rec,
                       unsigned wait_ms, uint64_t *seq, struct err *err) WARN_UNUSED;
/* false while the store refuses commits (records are held and spooled). */
bool decision_log_healthy(struct decision_log *dl);

/* ---- metrics (rendered by the proxy's /metrics) ---- */

void policy_metrics_decision(const char *route, enum policy_decision d, bool shadow);
void policy_metrics_opa(uint64_t latency_us, bool error, bool cache_hit);
void policy_metrics_log_write(uint64_t latency_us, size_t records);
void policy_metrics_queue_depth(size_t depth); /* set by the decision log */
void policy_metrics_regex_error(void);         /* a regex hit a limit or its input cap */
/* Records accepted but not committed, and whether the store refuses commits. */
void policy_metrics_log_state(size_t pending, size_t spooled, bool broken);
void policy_metrics_checkpoint(uint64_t seq);
/* Appends Prometheus text exposition to buf; returns bytes that would be written. */
size_t policy_metrics_render(char *buf, size_t size);

/* ---- the policy part of a config snapshot ---- */

/* Everything the policy module reads from gatehouse.yaml: each route's compiled
 * policy, the `opa` and `decision_log` sections. Immutable once loaded; build a new
 * one on reload and swap it with the config snapshot (a failed load never replaces
 * the running one). */
struct policy_conf;

/* Where a route's policy comes from, as the configuration loader resolved it
 * (once, for serve, check and every CLI verb): its policy file; else the built-in
 * public policy; else the built-in "any signed-in user". */
enum policy_source { POLICY_SOURCE_FILE = 0, POLICY_SOURCE_PUBLIC, POLICY_SOURCE_SIGNED_IN };

/* One route as the loader hands it over (strings and nodes borrowed for the call). */
struct policy_route_spec {
    const char *name; /* for messages */
    enum policy_source source;
    const char *file;           /* POLICY_SOURCE_FILE: the resolved path */
    const struct conf_node *at; /* the route's "policy" key (messages), or NULL */
};

/* Compiles routes[0..nroutes) (policy i for route i: no lookup by name, linear in
 * the routes) and reads the opa/decision_log sections of root. Reports every
 * problem to d (policy errors keep their own file:line:col) and returns NULL if
 * any. Caller frees with policy_conf_free(). */
struct policy_conf *policy_conf_load(const struct conf_node *root, const char *conf_file,
                                     const struct policy_route_spec *routes, size_t nroutes,
                                     struct conf_diag *d);
void policy_conf_free(struct policy_conf *pc);
/* The policy of route i (borrowed, valid while pc lives); NULL when out of range. */
const struct policy *policy_conf_route(const struct policy_conf *pc, size_t i);
const struct opa_conf *policy_conf_opa(const struct policy_conf *pc);
/* NULL when the config has no decision_log section. */
const struct decision_log_conf *policy_conf_log(const struct policy_conf *pc);
/* Number of distinct OPA data paths p uses (0: never asks OPA). */
size_t policy_opa_paths(const struct policy *p);

/* ---- commands (src/main.c) ---- */

/* The configuration as `policy explain` and `policy diff` see it: the snapshot
 * serve and check build (one loader, proxy/snapshot.c, fills this in), so a
 * route's policy is the one the server enforces; nothing here reads routes[]. */
struct policy_cli_route {
    const char *name;
    const struct policy *policy; /* resolved and compiled by the loader */
    const char *policy_written;  /* routes[].policy as written, or NULL (a built-in) */
    bool fold_case;              /* match.path_case_insensitive */
    bool encoded_slashes_pass;   /* encoded_slashes: pass */
};
struct policy_cli_conf {
    const char *file;
    const struct conf_node *root; /* the loaded document, for a section's owner (decision_log) */
    const struct policy_cli_route *routes;
    size_t nroutes;
    void *snapshot; /* the loader's */
};
struct policy_cli_loader {
    /* Loads file as serve does; false with every problem printed on stderr. */
    bool (*load)(const char *file, struct policy_cli_conf *out);
    void (*release)(struct policy_cli_conf *c);
};
/* gatehouse policy test|explain|diff; ld loads -c FILE. */
int policy_cmd(int argc, char **argv, const struct policy_cli_loader *ld);
int audit_cmd(int argc, char **argv); /* gatehouse audit query|verify|retain */

#endif
