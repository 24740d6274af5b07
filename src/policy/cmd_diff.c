/* policy/cmd_diff.c - `gatehouse policy diff` and the record lookups `policy
 * explain --request-id` uses: logged decisions replayed against a changed policy
 * set, with who would gain or lose access on which route. Read-only. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "decision_log_int.h"
#include "policy_cli.h"
#include "policy_int.h"
#include "cmd_int.h"

struct route_pol {
    char *name;
    struct policy *p; /* the new policy, NULL = unchanged or not policy-driven */
};

struct change {
    char *route, *who;
    bool gains;
    unsigned count;
    char *example;
    uint64_t hash;
};

/* The (route, user, gains) pairs already listed, found by hash: a diff over a
 * large log stays linear in the number of records. slot[i] is an index into
 * the list plus one; 0 is empty. */
struct change_index {
    size_t *slot;
    size_t cap; /* a power of two, at least twice the entries */
};

static uint64_t change_hash(const char *route, const char *who, bool gains)
{
    uint64_t h = str_hash(STR_HASH_SEED, route, strlen(route) + 1);
    h = str_hash(h, who, strlen(who) + 1);
    return str_hash(h, &gains, sizeof gains);
}

/* The entry for (route, who, gains), or n (not listed). */
static size_t change_find(const struct change_index *ix, const struct change *list, size_t n,
                          uint64_t h, const char *route, const char *who, bool gains)
{
    for (size_t i = (size_t)h & (ix->cap - 1); ix->cap && ix->slot[i];
         i = (i + 1) & (ix->cap - 1)) {
        const struct change *c = &list[ix->slot[i] - 1];
        if (c->hash == h && c->gains == gains && strcmp(c->route, route) == 0 &&
            strcmp(c->who, who) == 0) {
            return ix->slot[i] - 1;
        }
    }
    return n;
}

static void change_index_insert(struct change_index *ix, uint64_t h, size_t entry)
{
    size_t i = (size_t)h & (ix->cap - 1);
    while (ix->slot[i]) {
        i = (i + 1) & (ix->cap - 1);
    }
    ix->slot[i] = entry + 1;
}

/* Indexes list[n - 1], the entry just added. */
static void change_index_put(struct change_index *ix, const struct change *list, size_t n)
{
    if (2 * n > ix->cap) {
        ix->cap = ix->cap ? 2 * ix->cap : 64;
        free(ix->slot);
        ix->slot = xcalloc(ix->cap, sizeof *ix->slot);
        for (size_t k = 0; k + 1 < n; k++) {
            change_index_insert(ix, list[k].hash, k);
        }
    }
    change_index_insert(ix, list[n - 1].hash, n - 1);
}

static struct str s_or_empty(const char *s)
{
    return s ? str_from(s) : STR_NULL;
}

struct str *policy_input_from_record(const struct decision_record *r, struct policy_input *in)
{
    struct str *groups = xcalloc(r->ngroups + 1, sizeof *groups);
    memset(in, 0, sizeof *in);
    for (size_t i = 0; i < r->ngroups; i++) {
        groups[i] = str_from(r->groups[i]);
    }
    in->user = s_or_empty(r->user);
    in->email = s_or_empty(r->email);
    in->idp = s_or_empty(r->idp);
    in->authenticated = in->user.len > 0 || in->email.len > 0;
    in->groups = groups;
    in->ngroups = r->ngroups;
    in->claims = r->claims;
    in->nclaims = r->nclaims;
    in->device.present = r->device_present;
    in->device.trusted = r->device_trusted;
    in->device.id = s_or_empty(r->device_id);
    in->device.owner = s_or_empty(r->device_owner);
    if (r->client_ip) {
        (void)policy_ip_parse(str_from(r->client_ip), &in->client_ip);
    }
    in->method = s_or_empty(r->method);
    in->host = s_or_empty(r->host);
    in->path = s_or_empty(r->path);
    in->time_s = r->ts_us / 1000000;
    in->route = s_or_empty(r->route);
    return groups;
}

bool policy_record_by_request(const char *cfg, const char *request_id, struct dl_row *row)
{
    struct decision_log_conf c;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    bool found = false;
    /* A fleet: the request may have been decided on any node. */
    if (!audit_open_records(cfg, &c, &db, false, true, INT64_MIN, INT64_MAX)) {
        return false;
    }
    static const char sql[] = "SELECT seq, " DL_COLUMNS ", prev_hash, hash FROM decisions "
                              "WHERE request_id = ? ORDER BY seq DESC LIMIT 1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, request_id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            dl_row_read(st, row);
            found = true;
        }
    }
    if (!found) {
        fprintf(stderr, "gatehouse: no decision with request id \"%s\" in %s\n", request_id,
                c.sqlite);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    decision_log_conf_fini(&c);
    return found;
}

int policy_cmd_diff(int argc, char **argv, const struct policy_cli_loader *ld)
{
    static const struct option opts[] = { { "config", required_argument, NULL, 'c' },
                                          { "new", required_argument, NULL, 'n' },
                                          { "since", required_argument, NULL, 's' },
                                          { NULL, 0, NULL, 0 } };
    const char *cfg = NULL, *newdir = NULL;
    int64_t since = audit_wall_us() - 7LL * 86400 * 1000000;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:n:s:", opts, NULL)) != -1) {
        if (ch == 'c') {
            cfg = optarg;
        } else if (ch == 'n') {
            newdir = optarg;
        } else if (ch == 's' && audit_parse_when(optarg, &since)) {
            continue;
        } else {
            fputs("usage: gatehouse policy diff -c CFG --new DIR [--since 7d]\n", stderr);
            return 2;
        }
    }
    if (!cfg || !newdir) {
        fputs("usage: gatehouse policy diff -c CFG --new DIR [--since 7d]\n", stderr);
        return 2;
    }
    struct conf_diag d = { 0 };
    struct policy_cli_conf cc = { 0 };
    bool loaded = ld->load(cfg, &cc);
    struct decision_log_conf c = { 0 };
    struct route_pol *rp = NULL;
    size_t nrp = 0;
    struct change *ch_list = NULL;
    size_t ch_cap = 0;
    struct change_index ch_ix = { 0 };
    size_t nch = 0;
    sqlite3 *db = NULL;
    int rc = 1;
    /* The routes and their policies as serve resolves them (one loader); the
     * decision_log section read by its owner from the same loaded document. */
    if (!loaded || !decision_log_conf_parse(cc.root, cfg, &d, &c) || !c.sqlite) {
        if (loaded && !d.count) {
            fprintf(stderr, "gatehouse: %s has no decision log (state.sqlite)\n", cfg);
        }
        conf_diag_print(&d, stderr);
        goto out;
    }
    for (size_t i = 0; i < cc.nroutes; i++) {
        const char *name = cc.routes[i].name, *file = cc.routes[i].policy_written;
        if (!file) {
            continue; /* a built-in policy: nothing in DIR replaces it */
        }
        char *base = xstrdup(file);
        size_t nl = strlen(newdir);
        while (nl > 1 && newdir[nl - 1] == '/') {
            nl--;
        }
        char *path = xasprintf("%.*s/%s", (int)nl, newdir, basename(base));
        free(base);
        struct stat st;
        rp = xrealloc(rp, (nrp + 1) * sizeof *rp);
        rp[nrp].name = xstrdup(name);
        rp[nrp].p = NULL;
        if (stat(path, &st) == 0) {
            rp[nrp].p = policy_load(path, &d);
            if (!rp[nrp].p) {
                conf_diag_print(&d, stderr);
                free(path);
                nrp++;
                goto out;
            }
            printf("route %s: %s -> %s\n", name, file, path);
        }
        free(path);
        nrp++;
    }
    struct err err = { 0 };
    if (c.deferred && dl_ingest(&c, NULL, &err) != 0) {
        fprintf(stderr, "gatehouse: warning: the index lags the file: %s\n", err.msg);
        err = (struct err){ 0 };
    }
    /* A fleet: replay every node's decisions (state.postgres). */
    if ((c.pg_conninfo ? dl_fleet_materialise(&c, since, INT64_MAX, &db, &err)
                       : dl_db_open(c.sqlite, true, &db, &err)) != 0) {
        fprintf(stderr, "gatehouse: %s\n", err.msg);
        goto out;
    }
    static const char sql[] = "SELECT seq, " DL_COLUMNS ", prev_hash, hash FROM decisions "
                              "WHERE ts_us >= ? ORDER BY seq";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "gatehouse: %s\n", sqlite3_errmsg(db));
        goto out;
    }
    sqlite3_bind_int64(st, 1, since);
    unsigned replayed = 0, undecided = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        struct dl_row row;
        dl_row_read(st, &row);
        const struct decision_record *r = &row.rec;
        struct policy *np = NULL;
        for (size_t i = 0; i < nrp && r->route; i++) {
            if (strcmp(rp[i].name, r->route) == 0) {
                np = rp[i].p;
            }
        }
        /* Only the route policy's own decisions are replayed: not the sign-in flow's
         * records (a callback's "signed in" is no policy decision) nor admin acts.
         * Format-1 records have no kind: the sign-in flow's carry rule "sign-in". */
        bool policy_rec = r->kind ? strcmp(r->kind, "policy") == 0
                                  : !(r->rule && strcmp(r->rule, "sign-in") == 0);
        if (!np || !policy_rec || !r->decision ||
            (strcmp(r->decision, "allow") != 0 && strcmp(r->decision, "deny") != 0 &&
             strcmp(r->decision, "login") != 0)) {
            dl_row_fini(&row);
            continue;
        }
        struct policy_input in;
        struct str *groups = policy_input_from_record(r, &in);
        struct policy_result res;
        policy_result_init(&res, NULL);
        replayed++;
        if (policy_eval(np, &in, &res) == POLICY_NEED_OPA) {
            undecided++;
        } else {
            bool was = strcmp(r->decision, "allow") == 0;
            bool now = res.decision == POLICY_ALLOW;
            if (was != now) {
                const char *who = r->user && *r->user ? r->user : (r->email ? r->email : "-");
                uint64_t h = change_hash(r->route, who, now);
                size_t k = change_find(&ch_ix, ch_list, nch, h, r->route, who, now);
                if (k == nch) {
                    if (nch == ch_cap) {
                        ch_cap = ch_cap ? 2 * ch_cap : 16;
                        ch_list = xrealloc(ch_list, ch_cap * sizeof *ch_list);
                    }
                    ch_list[nch] = (struct change){
                        .route = xstrdup(r->route),
                        .who = xstrdup(who),
                        .gains = now,
                        .hash = h,
                        .example = xasprintf("%s %s%s: was %s by \"%s\"%s%s%s, now %s by "
                                             "\"%s\"%s",
                                             audit_nz(r->method), r->host ? r->host : "",
                                             audit_nz(r->path), r->decision, audit_nz(r->rule),
                                             r->shadow ? " (shadow policy; enforced " : "",
                                             r->shadow ? (r->enforced ? r->enforced : "allow") : "",
                                             r->shadow ? ")" : "", now ? "allow" : "deny", res.rule,
                                             policy_mode(np) == POLICY_SHADOW
                                                 ? " (shadow policy: not enforced)"
                                                 : "")
                    };
                    nch++;
                    change_index_put(&ch_ix, ch_list, nch);
                }
                ch_list[k].count++;
            }
        }
        free(groups);
        dl_row_fini(&row);
    }
    sqlite3_finalize(st);
    unsigned gains = 0, losses = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < nch; k++) {
            if (ch_list[k].gains != (pass == 0)) {
                continue;
            }
            char pr[256], pw[256], pe[1024];
            printf("%s  route %-12s %-28s %u request%s, e.g. %s\n", pass == 0 ? "GAINS" : "LOSES",
                   policy_printable(ch_list[k].route, pr, sizeof pr),
                   policy_printable(ch_list[k].who, pw, sizeof pw), ch_list[k].count,
                   ch_list[k].count == 1 ? "" : "s",
                   policy_printable(ch_list[k].example, pe, sizeof pe));
            if (pass == 0) {
                gains++;
            } else {
                losses++;
            }
        }
    }
    printf("replayed %u decisions: %u (user, route) pairs gain access, %u lose access", replayed,
           gains, losses);
    if (undecided) {
        printf(", %u undecided (need OPA)", undecided);
    }
    printf("\n");
    rc = 0;
out:
    for (size_t i = 0; i < nrp; i++) {
        free(rp[i].name);
        policy_free(rp[i].p);
    }
    free(rp);
    for (size_t k = 0; k < nch; k++) {
        free(ch_list[k].route);
        free(ch_list[k].who);
        free(ch_list[k].example);
    }
    free(ch_list);
    free(ch_ix.slot);
    sqlite3_close(db);
    decision_log_conf_fini(&c);
    conf_diag_fini(&d);
    if (loaded) {
        ld->release(&cc);
    }
    return rc;
}
