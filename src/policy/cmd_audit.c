/* policy/cmd_audit.c - the security analyst's side of the decision log:
 * `gatehouse audit query` (filters, table or JSON lines), `audit verify` (walks the
 * hash chain in SQLite and in the JSON-lines file and names the first edited,
 * removed or reordered record), `audit retain`, and `gatehouse policy diff`, which
 * replays logged inputs against a changed policy set. Read-only except retain. */
#include <getopt.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "decision_log_int.h"
#include "policy_cli.h"
#include "policy_int.h"
#include "cmd_int.h"

static const char audit_usage[] =
    "usage: gatehouse audit query -c CFG [--user U] [--route R] [--decision D] [--rule ID]\n"
    "                             [--idp ID] [--path PREFIX] [--ip CIDR] [--kind K]\n"
    "                             [--since 1h|TIME] [--until TIME] [--limit N]\n"
    "                             [--format text|json|csv] [--json]\n"
    "         --user: a user id (provider:sub, or a bare id) or an email\n"
    "       gatehouse audit verify -c CFG [--anchor SEQ:HASH|FILE] [--pubkey FILE]\n"
    "       gatehouse audit head -c CFG        (the signed head of the chain, to pin elsewhere)\n"
    "       gatehouse audit retain -c CFG      (offline: the server also runs it hourly)\n";

static bool load_conf(const char *cfg, struct decision_log_conf *out)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(cfg, &d);
    bool ok = doc && d.count == 0 && decision_log_conf_parse(doc->root, cfg, &d, out);
    if (ok && !conf_get(doc->root, "decision_log")) {
        fprintf(stderr, "gatehouse: %s has no decision_log section\n", cfg);
        ok = false;
    }
    conf_diag_print(&d, stderr);
    conf_diag_fini(&d);
    conf_doc_free(doc);
    return ok;
}

static bool ingest_failed; /* audit_open_records: the index could not catch up with the file */

/* load_conf, then the records read-only: the local SQLite store, or with
 * fleet set and state.postgres configured, every node's records between since
 * and until materialised from the shared table. false with the reason printed
 * (prefix: "gatehouse: " on stderr, or "FAIL sqlite: " on stdout for verify). */
bool audit_open_records(const char *cfg, struct decision_log_conf *c, sqlite3 **db, bool verify,
                        bool fleet, int64_t since, int64_t until)
{
    struct err err = { 0 };
    ingest_failed = false;
    if (!load_conf(cfg, c)) {
        return false;
    }
    /* index: deferred: the index catches up with the file before it is read. */
    if (c->deferred && dl_ingest(c, NULL, &err) != 0) {
        fprintf(verify ? stdout : stderr,
                verify ? "FAIL index: %s\n" : "gatehouse: warning: the index lags the file: %s\n",
                err.msg);
        ingest_failed = true;
        err = (struct err){ 0 };
    }
    if ((fleet && c->pg_conninfo ? dl_fleet_materialise(c, since, until, db, &err)
                                 : dl_db_open(c->sqlite, true, db, &err)) != 0) {
        fprintf(verify ? stdout : stderr, verify ? "FAIL sqlite: %s\n" : "gatehouse: %s\n",
                err.msg);
        decision_log_conf_fini(c);
        return false;
    }
    return true;
}

/* The local SQLite store only (verify: the fleet's chains are checked apart). */
static bool open_log(const char *cfg, struct decision_log_conf *c, sqlite3 **db, bool verify)
{
    return audit_open_records(cfg, c, db, verify, false, 0, 0);
}

int64_t audit_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* "1h", "7d" (before now) or an RFC 3339 time. */
bool audit_parse_when(const char *s, int64_t *out_us)
{
    uint64_t ms;
    int64_t t;
    if (conf_parse_duration_ms(s, &ms)) {
        *out_us = audit_wall_us() - (int64_t)ms * 1000;
        return true;
    }
    if (policy_time_parse(s, &t)) {
        *out_us = t * 1000000;
        return true;
    }
    return false;
}

static void print_line(const struct dl_row *row, struct sbuf *b)
{
    dl_canonical(&row->rec, row->seq, row->prev_hash ? row->prev_hash : DL_GENESIS, b);
    dl_sbuf_printf(b, ",\"hash\":\"%s\"}", row->hash ? row->hash : "");
    puts(b->p);
}

const char *audit_nz(const char *s)
{
    return s && *s ? s : "-";
}

/* Format-1 records (written before kind and enforced existed) read as format 2. */
static const char *rec_kind(const struct decision_record *r)
{
    if (r->kind) {
        return r->kind;
    }
    return r->rule && strcmp(r->rule, "sign-in") == 0 ? "signin" : "policy";
}

static const char *rec_enforced(const struct decision_record *r)
{
    if (r->kind || !r->decision) {
        return r->enforced;
    }
    /* Shadow mode enforced allow for a signed-in user; a deny was only logged. */
    return r->shadow && strcmp(r->decision, "deny") == 0 ? "allow" : r->decision;
}

/* ---- query ---- */

enum qformat { QF_TEXT, QF_JSON, QF_CSV };

struct qfilter {
    const char *user, *path, *kind;
    bool ip_set;
    struct cidr ip;
};

/* --path: "/admin" is the /admin segment (itself and what is under it, not
 * /administrator); "/admin/" everything under it; a trailing '*' is a plain prefix. */
static bool path_match(const char *want, const char *path)
{
    size_t n = strlen(want);
    if (!path) {
        return false;
    }
    if (n > 0 && want[n - 1] == '*') {
        return strncmp(path, want, n - 1) == 0;
    }
    if (strncmp(path, want, n) != 0) {
        return false;
    }
    return path[n] == '\0' || path[n] == '/' || (n > 0 && want[n - 1] == '/');
}

static bool row_match(const struct qfilter *f, const struct decision_record *r)
{
    if (f->user && !ident_user_match(f->user, r->user, r->email, r->idp)) {
        return false;
    }
    if (f->path && !path_match(f->path, r->path)) {
        return false;
    }
    if (f->kind && strcmp(f->kind, rec_kind(r)) != 0) {
        return false;
    }
    if (f->ip_set) {
        struct policy_ip ip;
        if (!r->client_ip || !policy_ip_parse(str_from(r->client_ip), &ip) ||
            !policy_cidr_match(&f->ip, &ip)) {
            return false;
        }
    }
    return true;
}

/* One CSV cell (RFC 4180): quoted when needed; a text cell that a spreadsheet would
 * run as a formula (it starts with = + - @, a tab or a carriage return) gets a
 * leading apostrophe. Paths, user names and reasons come from outside. */
static void csv_cell(struct sbuf *b, const char *s, bool first)
{
    if (!first) {
        dl_sbuf_put(b, ",", 1);
    }
    if (!s) {
        return;
    }
    bool formula = strchr("=+-@\t\r", s[0]) != NULL && s[0] != '\0';
    bool quote = formula || strpbrk(s, ",\"\r\n") != NULL;
    if (quote) {
        dl_sbuf_put(b, "\"", 1);
    }
    if (formula) {
        dl_sbuf_put(b, "'", 1);
    }
    for (const char *c = s; *c; c++) {
        dl_sbuf_put(b, c, 1);
        if (*c == '"') {
            dl_sbuf_put(b, "\"", 1);
        }
    }
    if (quote) {
        dl_sbuf_put(b, "\"", 1);
    }
}

static const char csv_header[] =
    "seq,ts,kind,decision,enforced,shadow,route,rule,reason,user,email,idp,groups,session,"
    "client_ip,method,host,path,device_present,device_id,device_trusted,opa_result,latency_us,"
    "admin_action,admin_actor,admin_from,admin_target,request_id,hash\r\n";

static void ts_text(int64_t ts_us, bool micro, char out[64])
{
    time_t s = (time_t)(ts_us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    if (micro) {
        char base[40];
        strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(out, 64, "%s.%06dZ", base, (int)(ts_us % 1000000));
    } else {
        strftime(out, 64, "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
}

static void print_csv(const struct dl_row *row, struct sbuf *b)
{
    const struct decision_record *r = &row->rec;
    char seq[32], ts[64], lat[32];
    snprintf(seq, sizeof seq, "%llu", (unsigned long long)row->seq);
    snprintf(lat, sizeof lat, "%llu", (unsigned long long)r->latency_us);
    ts_text(r->ts_us, true, ts);
    json_t *g = json_array();
    for (size_t i = 0; i < r->ngroups; i++) {
        json_array_append_new(g, json_string(r->groups[i] ? r->groups[i] : ""));
    }
    char *groups = json_dumps(g, JSON_COMPACT);
    json_decref(g);
    const char *cells[] = { seq,
                            ts,
                            rec_kind(r),
                            r->decision,
                            rec_enforced(r),
                            r->shadow ? "true" : "false",
                            r->route,
                            r->rule,
                            r->reason,
                            r->user,
                            r->email,
                            r->idp,
                            groups ? groups : "[]",
                            r->session,
                            r->client_ip,
                            r->method,
                            r->host,
                            r->path,
                            r->device_present ? "true" : "false",
                            r->device_id,
                            r->device_trusted ? "true" : "false",
                            r->opa_result,
                            lat,
                            r->admin_action,
                            r->admin_actor,
                            r->admin_from,
                            r->admin_target,
                            r->request_id,
                            row->hash };
    b->len = 0;
    for (size_t i = 0; i < sizeof cells / sizeof cells[0]; i++) {
        csv_cell(b, cells[i], i == 0);
    }
    dl_sbuf_put(b, "\r\n", 2);
    fwrite(b->p, 1, b->len, stdout);
    free(groups);
}

static void print_text(const struct dl_row *row)
{
    const struct decision_record *r = &row->rec;
    char ts[64], enforced[48];
    char pb[8][512];
    ts_text(r->ts_us, false, ts);
    /* The shadow mark: what the policy said is DECISION, what was done ENFORCED. */
    snprintf(enforced, sizeof enforced, "%s%s", audit_nz(rec_enforced(r)),
             r->shadow ? " (shadow)" : "");
    const char *what;
    char adm[1600];
    if (strcmp(rec_kind(r), "admin") == 0) {
        snprintf(adm, sizeof adm, "%s by %s (%s)", audit_nz(r->admin_target),
                 audit_nz(r->admin_actor), audit_nz(r->admin_from));
        what = policy_printable(adm, pb[6], sizeof pb[6]);
    } else {
        snprintf(adm, sizeof adm, "%s%s", r->host ? r->host : "", audit_nz(r->path));
        what = policy_printable(adm, pb[6], sizeof pb[6]);
    }
    printf(
        "%-27s %-8s %-15s %-12s %-24s %-28s %-7s %s\n", ts,
        policy_printable(audit_nz(r->decision), pb[0], sizeof pb[0]),
        policy_printable(enforced, pb[7], sizeof pb[7]),
        policy_printable(audit_nz(r->route), pb[1], sizeof pb[1]),
        policy_printable(r->user && *r->user ? r->user : audit_nz(r->email), pb[2], sizeof pb[2]),
        policy_printable(audit_nz(r->rule), pb[3], sizeof pb[3]),
        policy_printable(audit_nz(r->method), pb[4], sizeof pb[4]), what);
}

static void print_row(enum qformat fmt, const struct dl_row *row, struct sbuf *b)
{
    if (fmt == QF_JSON) {
        print_line(row, b);
    } else if (fmt == QF_CSV) {
        print_csv(row, b);
    } else {
        print_text(row);
    }
}

static int cmd_query(int argc, char **argv)
{
    static const struct option opts[] = { { "config", required_argument, NULL, 'c' },
                                          { "user", required_argument, NULL, 'u' },
                                          { "route", required_argument, NULL, 'r' },
                                          { "decision", required_argument, NULL, 'd' },
                                          { "since", required_argument, NULL, 's' },
                                          { "until", required_argument, NULL, 't' },
                                          { "limit", required_argument, NULL, 'l' },
                                          { "json", no_argument, NULL, 'j' },
                                          { "path", required_argument, NULL, 'p' },
                                          { "ip", required_argument, NULL, 'i' },
                                          { "rule", required_argument, NULL, 'R' },
                                          { "idp", required_argument, NULL, 'I' },
                                          { "kind", required_argument, NULL, 'k' },
                                          { "format", required_argument, NULL, 'f' },
                                          { NULL, 0, NULL, 0 } };
    const char *cfg = NULL, *route = NULL, *decision = NULL, *rule = NULL, *idp = NULL;
    struct qfilter f = { 0 };
    int64_t since = INT64_MIN, until = INT64_MAX;
    uint64_t limit = 0;
    enum qformat fmt = QF_TEXT;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:u:r:d:s:t:l:j", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            cfg = optarg;
            break;
        case 'u':
            f.user = optarg;
            break;
        case 'r':
            route = optarg;
            break;
        case 'd':
            decision = optarg;
            break;
        case 'p':
            if (optarg[0] != '/') {
                fprintf(stderr, "gatehouse: --path must start with / (got \"%s\")\n", optarg);
                return 2;
            }
            f.path = optarg;
            break;
        case 'i': {
            bool host_bits;
            if (!policy_cidr_parse(optarg, &f.ip, &host_bits)) {
                fprintf(stderr,
                        "gatehouse: bad --ip \"%s\" (use 10.0.0.0/8, 2001:db8::/32 or an "
                        "address)\n",
                        optarg);
                return 2;
            }
            f.ip_set = true;
            break;
        }
        case 'R':
            rule = optarg;
            break;
        case 'I':
            idp = optarg;
            break;
        case 'k':
            if (strcmp(optarg, "policy") != 0 && strcmp(optarg, "signin") != 0 &&
                strcmp(optarg, "admin") != 0) {
                fprintf(stderr, "gatehouse: --kind must be policy, signin or admin\n");
                return 2;
            }
            f.kind = optarg;
            break;
        case 'f':
            if (strcmp(optarg, "text") == 0) {
                fmt = QF_TEXT;
            } else if (strcmp(optarg, "json") == 0) {
                fmt = QF_JSON;
            } else if (strcmp(optarg, "csv") == 0) {
                fmt = QF_CSV;
            } else {
                fprintf(stderr, "gatehouse: --format must be text, json or csv\n");
                return 2;
            }
            break;
        case 's':
        case 't':
            if (!audit_parse_when(optarg, ch == 's' ? &since : &until)) {
                fprintf(stderr, "gatehouse: bad time \"%s\" (use 1h, 7d or 2026-03-10T09:30:00Z)\n",
                        optarg);
                return 2;
            }
            break;
        case 'l':
            if (!str_to_u64(str_from(optarg), 1, UINT32_MAX, &limit)) {
                fprintf(stderr, "gatehouse: bad --limit \"%s\"\n", optarg);
                return 2;
            }
            break;
        case 'j':
            fmt = QF_JSON;
            break;
        default:
            fputs(audit_usage, stderr);
            return 2;
        }
    }
    if (!cfg || optind != argc) {
        fputs(audit_usage, stderr);
        return 2;
    }
    if (decision && strcmp(decision, "allow") != 0 && strcmp(decision, "deny") != 0 &&
        strcmp(decision, "login") != 0 && strcmp(decision, "error") != 0 &&
        strcmp(decision, "admin") != 0) {
        fprintf(stderr, "gatehouse: --decision must be allow, deny, login, error or admin\n");
        return 2;
    }
    struct decision_log_conf c;
    sqlite3 *db = NULL;
    /* A fleet (state.postgres): every node's records, from the shared table. */
    if (!audit_open_records(cfg, &c, &db, false, true, since, until)) {
        return 1;
    }
    /* Exact filters in SQL; user, path, address and kind need code (case, segments,
     * CIDR, format-1 records), so with --limit the newest rows are read first and
     * the matches printed oldest first. */
#define QUERY_SQL(order)                                                                           \
    "SELECT seq, " DL_COLUMNS ", prev_hash, hash FROM decisions WHERE ts_us >= ?1 AND "            \
    "ts_us <= ?2 AND (?3 IS NULL OR route = ?3) AND (?4 IS NULL OR decision = ?4) AND (?5 IS "     \
    "NULL OR rule = ?5) AND (?6 IS NULL OR idp = ?6) ORDER BY " order
    /* A fleet's nodes number their records each on their own: time orders them. */
    const char *sql =
        c.pg_conninfo ? (limit ? QUERY_SQL("ts_us DESC, seq DESC") : QUERY_SQL("ts_us, seq ASC"))
                      : (limit ? QUERY_SQL("seq DESC") : QUERY_SQL("seq ASC"));
#undef QUERY_SQL
    sqlite3_stmt *st = NULL;
    int rc = 1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "gatehouse: %s: %s\n", c.sqlite, sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_bind_int64(st, 1, since);
    sqlite3_bind_int64(st, 2, until);
    const char *binds[] = { route, decision, rule, idp };
    for (int i = 0; i < 4; i++) {
        if (binds[i]) {
            sqlite3_bind_text(st, 3 + i, binds[i], -1, SQLITE_STATIC);
        }
    }
    struct sbuf b = { 0 };
    if (fmt == QF_TEXT) {
        printf("%-27s %-8s %-15s %-12s %-24s %-28s %-7s %s\n", "TIME", "DECISION", "ENFORCED",
               "ROUTE", "USER", "RULE", "METHOD", "HOST+PATH");
    } else if (fmt == QF_CSV) {
        fputs(csv_header, stdout);
    }
    struct dl_row *keep = limit ? xcalloc(limit, sizeof *keep) : NULL;
    size_t nkeep = 0;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        struct dl_row row;
        dl_row_read(st, &row);
        if (!row_match(&f, &row.rec)) {
            dl_row_fini(&row);
            continue;
        }
        if (!limit) {
            print_row(fmt, &row, &b);
            dl_row_fini(&row);
            continue;
        }
        keep[nkeep++] = row;
        if (nkeep == limit) {
            step = SQLITE_DONE;
            break;
        }
    }
    for (size_t i = nkeep; i > 0; i--) {
        print_row(fmt, &keep[i - 1], &b);
        dl_row_fini(&keep[i - 1]);
    }
    free(keep);
    dl_sbuf_free(&b);
    rc = step == SQLITE_DONE ? 0 : 1;
    if (rc) {
        fprintf(stderr, "gatehouse: %s: %s\n", c.sqlite, sqlite3_errmsg(db));
    }
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    decision_log_conf_fini(&c);
    return rc;
}

/* ---- verify ---- */

struct verify_end {
    uint64_t last_seq, records;
    uint64_t newer; /* file lines after want_seq, not checked this run */
    char last_hash[65];
    char mark_hash[65]; /* verify_file: the hash of record mark_seq ("" if not reached) */
};

/* A record whose hash matches its content under another seq was moved there. */
static long moved_from(const struct dl_row *row, struct sbuf *b)
{
    char h[65];
    if (!row->prev_hash || strlen(row->prev_hash) != 64) {
        return -1;
    }
    for (long delta = -64; delta <= 64; delta++) {
        if (delta == 0 || (delta < 0 && (uint64_t)-delta >= row->seq)) {
            continue;
        }
        uint64_t s = row->seq + (uint64_t)delta;
        dl_canonical(&row->rec, s, row->prev_hash, b);
        dl_hash(row->prev_hash, b->p, b->len, h);
        if (row->hash && strcmp(h, row->hash) == 0) {
            return (long)s;
        }
    }
    return -1;
}

static bool verify_sqlite(sqlite3 *db, struct verify_end *end)
{
    uint64_t expect;
    char prev[65], h[65];
    dl_anchor_get(db, &expect, prev);
    expect++;
    memset(end, 0, sizeof *end);
    end->last_seq = expect - 1;
    snprintf(end->last_hash, sizeof end->last_hash, "%s", prev);
    static const char sql[] = "SELECT seq, " DL_COLUMNS ", prev_hash, hash FROM decisions "
                              "ORDER BY seq";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        printf("FAIL sqlite: %s\n", sqlite3_errmsg(db));
        return false;
    }
    struct sbuf b = { 0 };
    bool ok = true;
    int step;
    while (ok && (step = sqlite3_step(st)) == SQLITE_ROW) {
        struct dl_row row;
        dl_row_read(st, &row);
        const char *rp = row.prev_hash ? row.prev_hash : "";
        if (row.seq != expect) {
            printf("FAIL sqlite: record %llu is missing (removed): the next row is record %llu\n",
                   (unsigned long long)expect, (unsigned long long)row.seq);
            ok = false;
        } else {
            dl_canonical(&row.rec, row.seq, rp, &b);
            if (strlen(rp) == 64) {
                dl_hash(rp, b.p, b.len, h);
            } else {
                h[0] = '\0';
            }
            if (!row.hash || strcmp(h, row.hash) != 0) {
                long from = moved_from(&row, &b);
                if (from > 0) {
                    printf("FAIL sqlite: record %llu is out of order: it holds record %ld "
                           "(reordered)\n",
                           (unsigned long long)row.seq, from);
                } else {
                    printf("FAIL sqlite: record %llu (request %s) was edited: its hash does not "
                           "match its content\n",
                           (unsigned long long)row.seq, audit_nz(row.rec.request_id));
                }
                ok = false;
            } else if (strcmp(rp, prev) != 0) {
                printf("FAIL sqlite: record %llu does not chain to record %llu: record %llu was "
                       "edited, replaced or reordered\n",
                       (unsigned long long)row.seq, (unsigned long long)(row.seq - 1),
                       (unsigned long long)(row.seq - 1));
                ok = false;
            }
        }
        if (ok) {
            snprintf(prev, sizeof prev, "%s", row.hash);
            end->last_seq = row.seq;
            end->records++;
            expect++;
        }
        dl_row_fini(&row);
    }
    snprintf(end->last_hash, sizeof end->last_hash, "%s", prev);
    dl_sbuf_free(&b);
    sqlite3_finalize(st);
    return ok;
}

/* Finds the line number holding record seq, scanning from the current position. */
static long find_seq_line(FILE *f, uint64_t seq, long lineno)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long found = -1;
    long pos = ftell(f);
    while (found < 0 && (n = getline(&line, &cap, f)) > 0) {
        lineno++;
        json_t *j = json_loadb(line, (size_t)n, 0, NULL);
        json_t *s = json_object_get(j, "seq");
        if (json_is_integer(s) && (uint64_t)json_integer_value(s) == seq) {
            found = lineno;
        }
        json_decref(j);
    }
    free(line);
    fseek(f, pos, SEEK_SET);
    return found;
}

/* want_seq: where SQLite ended. A running writer commits to SQLite before it appends
 * to the file, so at EOF the file may be a few records short for a moment: keep
 * following it (as tail -f does) for up to two seconds before calling it truncated. */
static bool verify_file(const char *file, uint64_t anchor_seq, const char *anchor_hash,
                        uint64_t want_seq, uint64_t mark_seq, struct verify_end *end)
{
    FILE *f = fopen(file, "r");
    memset(end, 0, sizeof *end);
    end->last_seq = anchor_seq;
    snprintf(end->last_hash, sizeof end->last_hash, "%s", anchor_hash);
    if (mark_seq == anchor_seq) {
        snprintf(end->mark_hash, sizeof end->mark_hash, "%s", anchor_hash);
    }
    /* index: deferred: up to the size the file has now (a live writer is not chased). */
    bool deferred = want_seq == UINT64_MAX && mark_seq != UINT64_MAX;
    struct stat sb;
    long limit = deferred && f && fstat(fileno(f), &sb) == 0 ? (long)sb.st_size : -1;
    if (!f) {
        printf("FAIL file: cannot open %s\n", file);
        return false;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    uint64_t expect = anchor_seq + 1;
    char prev[65], h[65];
    snprintf(prev, sizeof prev, "%s", anchor_hash);
    bool ok = true;
    static const char tail_key[] = ",\"hash\":\"";
    unsigned waited_ms = 0;
    for (;;) {
        long start = ftell(f);
        if (limit >= 0 && start >= limit) {
            break;
        }
        n = ok ? getline(&line, &cap, f) : -1;
        if (ok && (n <= 0 || line[n - 1] != '\n') && want_seq != UINT64_MAX && expect <= want_seq &&
            waited_ms < 2000) {
            /* At the end, or on a line still being written: wait for the writer. */
            usleep(50000);
            waited_ms += 50;
            clearerr(f);
            fseek(f, start, SEEK_SET);
            continue;
        }
        if (!ok || n <= 0) {
            break;
        }
        if (deferred && line[n - 1] != '\n') {
            /* index: deferred, a live writer: its batch is still being written. */
            printf("note: the file's last line is still being written (not checked)\n");
            break;
        }
        if (expect > want_seq) {
            /* Newer than the SQLite pass: the caller decides whether the log is live. */
            end->newer++;
            continue;
        }
        lineno++;
        size_t len = (size_t)n;
        if (line[len - 1] == '\n') {
            len--;
        }
        json_error_t je;
        json_t *j = json_loadb(line, len, 0, &je);
        json_t *js = json_object_get(j, "seq"), *jh = json_object_get(j, "hash"),
               *jp = json_object_get(j, "prev_hash");
        size_t tl = sizeof tail_key - 1;
        /* The hash covers the line's bytes up to the "hash" member, plus the closing brace. */
        bool shape = json_is_integer(js) && json_is_string(jh) && json_is_string(jp) &&
                     strlen(json_string_value(jh)) == 64 && len > tl + 66 &&
                     memcmp(line + len - tl - 66, tail_key, tl) == 0 &&
                     memcmp(line + len - 2, "\"}", 2) == 0;
        if (!shape) {
            printf("FAIL file: line %ld is not a decision record (edited)\n", lineno);
            ok = false;
        } else {
            uint64_t seq = (uint64_t)json_integer_value(js);
            const char *hash = json_string_value(jh);
            if (seq != expect) {
                long at = find_seq_line(f, expect, lineno);
                if (at > 0) {
                    printf("FAIL file: line %ld holds record %llu where record %llu belongs; "
                           "record %llu is at line %ld (reordered)\n",
                           lineno, (unsigned long long)seq, (unsigned long long)expect,
                           (unsigned long long)expect, at);
                } else {
                    printf("FAIL file: record %llu is missing (removed) before line %ld\n",
                           (unsigned long long)expect, lineno);
                }
                ok = false;
            } else {
                /* dl_hash reads 64 characters of prev_hash: check an edited one first. */
                bool prev_ok = strlen(json_string_value(jp)) == 64;
                if (prev_ok) {
                    dl_hash(json_string_value(jp), line, len - tl - 66, h);
                }
                if (!prev_ok || strcmp(h, hash) != 0) {
                    printf("FAIL file: record %llu (line %ld) was edited: its hash does not "
                           "match its content\n",
                           (unsigned long long)seq, lineno);
                    ok = false;
                } else if (strcmp(json_string_value(jp), prev) != 0) {
                    printf("FAIL file: record %llu (line %ld) does not chain to record %llu: "
                           "record %llu was edited or replaced\n",
                           (unsigned long long)seq, lineno, (unsigned long long)(seq - 1),
                           (unsigned long long)(seq - 1));
                    ok = false;
                } else {
                    snprintf(prev, sizeof prev, "%s", hash);
                    if (seq == mark_seq) {
                        snprintf(end->mark_hash, sizeof end->mark_hash, "%s", hash);
                    }
                    end->last_seq = seq;
                    end->records++;
                    expect++;
                }
            }
        }
        json_decref(j);
    }
    snprintf(end->last_hash, sizeof end->last_hash, "%s", prev);
    free(line);
    fclose(f);
    return ok;
}

static int cmd_verify(int argc, char **argv)
{
    const char *cfg = NULL, *anchor = NULL, *pubkey = NULL;
    static const struct option opts[] = { { "config", required_argument, NULL, 'c' },
                                          { "anchor", required_argument, NULL, 'a' },
                                          { "pubkey", required_argument, NULL, 'p' },
                                          { NULL, 0, NULL, 0 } };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:a:p:", opts, NULL)) != -1) {
        if (ch == 'a') {
            anchor = optarg;
        } else if (ch == 'p') {
            pubkey = optarg;
        } else if (ch == 'c') {
            cfg = optarg;
        } else {
            fputs(audit_usage, stderr);
            return 2;
        }
    }
    if (!cfg) {
        fputs(audit_usage, stderr);
        return 2;
    }
    struct decision_log_conf c;
    sqlite3 *db = NULL;
    if (!open_log(cfg, &c, &db, true)) {
        return 1;
    }
    uint64_t anchor_seq;
    char anchor_hash[65];
    dl_anchor_get(db, &anchor_seq, anchor_hash);
    struct verify_end se, fe;
    bool ok = verify_sqlite(db, &se);
    uint64_t want = ok ? se.last_seq : UINT64_MAX;
    if (ok) {
        printf("sqlite: %llu records verified (records %llu..%llu)\n",
               (unsigned long long)se.records, (unsigned long long)anchor_seq + 1,
               (unsigned long long)se.last_seq);
    }
    if (ingest_failed) {
        ok = false; /* FAIL index: printed by open_log */
    }
    if (c.file && c.deferred) {
        /* The file is the log of record: its whole chain is checked, and the index must
         * be its prefix (every row equal to its line: same chain, same hash at the
         * index's last record). The file may run ahead (a live writer). */
        bool fok = verify_file(c.file, anchor_seq, anchor_hash, UINT64_MAX, se.last_seq, &fe);
        if (fok) {
            printf("file: %llu records verified (%s)\n", (unsigned long long)fe.records, c.file);
        }
        if (fok && se.last_seq > fe.last_seq) {
            printf("FAIL file: ends at record %llu but the index has records up to %llu "
                   "(records %llu.. removed from the file)\n",
                   (unsigned long long)fe.last_seq, (unsigned long long)se.last_seq,
                   (unsigned long long)fe.last_seq + 1);
            fok = false;
        } else if (fok && ok && strcmp(fe.mark_hash, se.last_hash) != 0) {
            printf("FAIL index: the index and the file disagree about record %llu (a row or a "
                   "line was edited)\n",
                   (unsigned long long)se.last_seq);
            fok = false;
        } else if (fok && fe.last_seq > se.last_seq) {
            printf("note: %llu records in the file are newer than the index (the log is being "
                   "written)\n",
                   (unsigned long long)(fe.last_seq - se.last_seq));
        }
        ok = ok && fok;
    } else if (c.file) {
        bool fok = verify_file(c.file, anchor_seq, anchor_hash, want, want, &fe);
        if (fok) {
            printf("file: %llu records verified (%s)\n", (unsigned long long)fe.records, c.file);
        }
        if (ok && fok && fe.newer > 0) {
            /* Live log: SQLite has moved on since its pass. Otherwise SQLite lost its tail. */
            sqlite3_stmt *st = NULL;
            uint64_t now_max = 0;
            if (sqlite3_prepare_v2(db, "SELECT max(seq) FROM decisions", -1, &st, NULL) ==
                    SQLITE_OK &&
                sqlite3_step(st) == SQLITE_ROW) {
                now_max = (uint64_t)sqlite3_column_int64(st, 0);
            }
            sqlite3_finalize(st);
            if (now_max > se.last_seq) {
                printf("note: %llu newer records arrived while verifying (the log is being "
                       "written); run verify again to check them\n",
                       (unsigned long long)fe.newer);
            } else {
                fe.last_seq = se.last_seq + fe.newer;
            }
        }
        /* Cutting records off the end keeps a chain valid: compare both ends. */
        if (ok && fok && fe.last_seq != se.last_seq) {
            if (fe.last_seq < se.last_seq) {
                printf("FAIL file: ends at record %llu but SQLite has records up to %llu "
                       "(records %llu.. removed from the file)\n",
                       (unsigned long long)fe.last_seq, (unsigned long long)se.last_seq,
                       (unsigned long long)fe.last_seq + 1);
            } else {
                printf("FAIL sqlite: ends at record %llu but the file has records up to %llu "
                       "(records %llu.. removed from SQLite)\n",
                       (unsigned long long)se.last_seq, (unsigned long long)fe.last_seq,
                       (unsigned long long)se.last_seq + 1);
            }
            fok = false;
        } else if (ok && fok && strcmp(fe.last_hash, se.last_hash) != 0) {
            printf("FAIL file: the file and SQLite disagree about record %llu\n",
                   (unsigned long long)se.last_seq);
            fok = false;
        }
        ok = ok && fok;
    }
    /* Truncation keeps a chain valid: the head file, checkpoints, retention, --anchor. */
    ok = dl_verify_integrity(&c, db, pubkey, anchor) && ok;
    if (c.pg_conninfo) {
        /* A fleet: every node's chain as shipped to PostgreSQL. */
        bool fok = true;
        struct err pe = { 0 };
        if (dl_fleet_verify(&c, stdout, &fok, &pe) != 0) {
            printf("FAIL fleet: %s\n", pe.msg);
            fok = false;
        }
        ok = ok && fok;
    }
    sqlite3_close(db);
    decision_log_conf_fini(&c);
    printf("%s\n", ok ? "decision log OK" : "decision log FAILED verification");
    return ok ? 0 : 1;
}

static int cmd_retain(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "-c") != 0) {
        fputs(audit_usage, stderr);
        return 2;
    }
    struct decision_log_conf c;
    if (!load_conf(argv[2], &c)) {
        return 1;
    }
    if (c.deferred) {
        fprintf(stderr, "gatehouse: with decision_log.index: deferred the server applies "
                        "decision_log.retain itself (the file is the log of record: its "
                        "writer cuts it)\n");
        decision_log_conf_fini(&c);
        return 1;
    }
    struct err err = { 0 };
    long n = decision_log_retain(&c, audit_wall_us(), &err);
    decision_log_conf_fini(&c);
    if (n < 0) {
        fprintf(stderr, "gatehouse: retention failed: %s\n", err.msg);
        return 1;
    }
    printf("deleted %ld records older than the retention period\n", n);
    return 0;
}

int audit_cmd(int argc, char **argv)
{
    if (argc < 2) {
        fputs(audit_usage, stderr);
        return 2;
    }
    if (strcmp(argv[1], "query") == 0) {
        return cmd_query(argc - 1, argv + 1);
    }
    if (strcmp(argv[1], "verify") == 0) {
        return cmd_verify(argc - 1, argv + 1);
    }
    if (strcmp(argv[1], "retain") == 0) {
        return cmd_retain(argc - 1, argv + 1);
    }
    if (strcmp(argv[1], "head") == 0) {
        struct decision_log_conf c;
        if (argc != 4 || strcmp(argv[2], "-c") != 0) {
            fputs(audit_usage, stderr);
            return 2;
        }
        if (!load_conf(argv[3], &c)) {
            return 1;
        }
        struct err ie = { 0 };
        if (c.deferred && dl_ingest(&c, NULL, &ie) != 0) {
            fprintf(stderr, "gatehouse: warning: the index lags the file: %s\n", ie.msg);
        }
        int rc = dl_print_head(&c);
        struct err fe = { 0 };
        if (rc == 0 && c.pg_conninfo != NULL && dl_fleet_heads(&c, stdout, &fe) != 0) {
            fprintf(stderr, "gatehouse: %s\n", fe.msg);
            rc = 1;
        }
        decision_log_conf_fini(&c);
        return rc;
    }
    fprintf(stderr, "gatehouse audit: unknown subcommand \"%s\"\n%s", argv[1], audit_usage);
    return 2;
}
