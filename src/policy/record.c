/* policy/record.c - turns one request's policy input and result into a decision
 * log record (the proxy calls it once per decision, then decision_log_append).
 * Everything is copied into the request's arena as C strings. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "policy_int.h"

bool policy_uses_claim(const struct policy *p, struct str name)
{
    for (size_t i = 0; p && i < p->nclaim_names; i++) {
        if (str_eq(p->claim_names[i], name)) {
            return true;
        }
    }
    return false;
}

/* "10.1.2.3" (as inet_ntop writes it) into out (16 bytes). */
static void ipv4_text(const unsigned char addr[4], char out[16])
{
    char *d = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = addr[i];
        if (v >= 100) {
            *d++ = (char)('0' + v / 100);
        }
        if (v >= 10) {
            *d++ = (char)('0' + v / 10 % 10);
        }
        *d++ = (char)('0' + v % 10);
        *d++ = i < 3 ? '.' : '\0';
    }
}

/* NULL for an absent value, so the log tells "none" from "empty". */
static int dup_span(struct arena *a, struct str s, const char **out)
{
    *out = NULL;
    if (!s.p) {
        return 0;
    }
    *out = arena_strndup(a, s.p, s.len);
    return *out ? 0 : ERR_LIMIT;
}

int decision_record_fill(struct decision_record *rec, const struct policy *p,
                         const struct policy_input *in, const struct policy_result *r,
                         const char *request_id, const char *route, struct arena *a)
{
    struct timespec ts;
    memset(rec, 0, sizeof *rec);
    clock_gettime(CLOCK_REALTIME, &ts);
    rec->ts_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    rec->request_id = request_id;
    rec->route = route;
    rec->decision = r->need_login ? "login" : (r->decision == POLICY_ALLOW ? "allow" : "deny");
    rec->rule = r->rule;
    rec->reason = r->reason;
    rec->shadow = r->shadow;
    rec->kind = "policy";
    /* What was done: in shadow mode the policy's deny is logged, not enforced. */
    rec->enforced = r->need_login && r->effective != POLICY_ALLOW
                        ? "login"
                        : (r->effective == POLICY_ALLOW ? "allow" : "deny");
    rec->opa_called = r->opa_called;
    if (r->opa_called) {
        /* The answer that counted: the last one recorded. */
        for (size_t i = 0; i < POLICY_MAX_OPA; i++) {
            if (r->opa[i].state) {
                rec->opa_result = r->opa[i].state == 2 ? "allow" : "deny";
            }
        }
    }
    if (dup_span(a, in->user, &rec->user) || dup_span(a, in->email, &rec->email) ||
        dup_span(a, in->idp, &rec->idp) || dup_span(a, in->session, &rec->session) ||
        dup_span(a, in->method, &rec->method) || dup_span(a, in->host, &rec->host) ||
        dup_span(a, in->path, &rec->path)) {
        return ERR_LIMIT;
    }
    if (in->ngroups) {
        const char **g = arena_alloc(a, in->ngroups * sizeof *g);
        if (!g) {
            return ERR_LIMIT;
        }
        for (size_t i = 0; i < in->ngroups; i++) {
            if (dup_span(a, in->groups[i], &g[i]) != 0) {
                return ERR_LIMIT;
            }
            g[i] = g[i] ? g[i] : "";
        }
        rec->groups = g;
        rec->ngroups = in->ngroups;
    }
    size_t nkeep = 0;
    for (size_t i = 0; i < in->nclaims; i++) {
        nkeep += policy_uses_claim(p, in->claims[i].name);
    }
    if (nkeep) {
        struct policy_kv *kv = arena_alloc(a, nkeep * sizeof *kv);
        if (!kv) {
            return ERR_LIMIT;
        }
        for (size_t i = 0; i < in->nclaims; i++) {
            if (policy_uses_claim(p, in->claims[i].name)) {
                kv[rec->nclaims++] = in->claims[i]; /* copied by decision_log_append */
            }
        }
        rec->claims = kv;
    }
    rec->device_present = in->device.present;
    rec->device_trusted = in->device.present && in->device.trusted;
    if (in->device.present && (dup_span(a, in->device.id, &rec->device_id) ||
                               dup_span(a, in->device.owner, &rec->device_owner))) {
        return ERR_LIMIT;
    }
    if (in->client_ip.family) {
        char ip[INET6_ADDRSTRLEN];
        if (in->client_ip.family == 4) {
            ipv4_text(in->client_ip.addr, ip); /* every request: no printf */
        } else {
            inet_ntop(AF_INET6, in->client_ip.addr, ip, sizeof ip);
        }
        rec->client_ip = arena_strdup(a, ip);
        if (!rec->client_ip) {
            return ERR_LIMIT;
        }
    }
    return 0;
}
