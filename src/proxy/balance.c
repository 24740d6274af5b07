/* proxy/balance.c - upstream server choice for one route in one worker:
 * round_robin, least_conn, ip_hash, skipping servers that failed max_fails
 * times in a row (for fail_timeout), that an active check found down, that are
 * at max_conns or that this request already tried. State is per worker, so
 * nothing here locks. Called by the forwarding code once per attempt. */
#include "balance.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"

struct server_state {
    uint32_t fails;      /* consecutive failures */
    uint64_t down_until; /* monotonic ms; 0 = up (passive) */
    bool check_down;     /* last active check failed */
    uint32_t active;     /* requests in flight from this worker */
};

struct balancer {
    const struct upstream_conf *up;
    size_t n;
    size_t rr; /* next round-robin position */
    struct server_state *s;
};

void balance_exclude_add(struct balance_exclude *ex, size_t idx)
{
    if (idx < BALANCE_MAX_SERVERS) {
        ex->bits[idx / 64] |= 1ull << (idx % 64);
    }
}

bool balance_exclude_has(const struct balance_exclude *ex, size_t idx)
{
    return ex && idx < BALANCE_MAX_SERVERS && (ex->bits[idx / 64] >> (idx % 64)) & 1u;
}

uint32_t balance_ip_hash(struct str client_ip)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < client_ip.len; i++) {
        h ^= (unsigned char)client_ip.p[i];
        h *= 16777619u;
    }
    return h;
}

struct balancer *balancer_new(const struct upstream_conf *up, const struct balancer *prev)
{
    struct balancer *b = xcalloc(1, sizeof *b);

    b->up = up;
    b->n = up->nservers < BALANCE_MAX_SERVERS ? up->nservers : BALANCE_MAX_SERVERS;
    b->s = xcalloc(b->n ? b->n : 1, sizeof *b->s);
    if (prev) {
        /* Health belongs to the server, not to the config that named it: a
         * reload must not send traffic to a server known to be failing. In-flight
         * counts stay with prev, whose requests will end there. */
        for (size_t i = 0; i < b->n; i++) {
            for (size_t j = 0; j < prev->n; j++) {
                if (strcmp(up->servers[i].url, prev->up->servers[j].url) == 0) {
                    b->s[i].fails = prev->s[j].fails;
                    b->s[i].down_until = prev->s[j].down_until;
                    b->s[i].check_down = prev->s[j].check_down;
                    break;
                }
            }
        }
        b->rr = b->n ? prev->rr % b->n : 0;
    }
    return b;
}

void balancer_free(struct balancer *b)
{
    if (!b) {
        return;
    }
    free(b->s);
    free(b);
}

size_t balancer_count(const struct balancer *b)
{
    return b->n;
}

static bool passive_down(const struct server_state *s, uint64_t now_ms)
{
    return s->down_until != 0 && now_ms < s->down_until;
}

bool balancer_is_up(const struct balancer *b, size_t idx, uint64_t now_ms)
{
    return idx < b->n && !b->s[idx].check_down && !passive_down(&b->s[idx], now_ms);
}

uint32_t balancer_active(const struct balancer *b, size_t idx)
{
    return idx < b->n ? b->s[idx].active : 0;
}

static bool full(const struct balancer *b, size_t i)
{
    return b->up->max_conns != 0 && b->s[i].active >= b->up->max_conns;
}

/* Usable now: not excluded, not full, up. */
static bool usable(const struct balancer *b, size_t i, const struct balance_exclude *ex,
                   uint64_t now_ms)
{
    return !balance_exclude_has(ex, i) && !full(b, i) && balancer_is_up(b, i, now_ms);
}

/* Every candidate is down: pick the one back first, active-check-down last. */
static int pick_fallback(const struct balancer *b, const struct balance_exclude *ex)
{
    int best = -1;
    for (size_t i = 0; i < b->n; i++) {
        if (balance_exclude_has(ex, i) || full(b, i)) {
            continue;
        }
        if (best < 0) {
            best = (int)i;
            continue;
        }
        const struct server_state *x = &b->s[i], *y = &b->s[best];
        if (x->check_down != y->check_down) {
            if (!x->check_down) {
                best = (int)i;
            }
        } else if (x->down_until < y->down_until) {
            best = (int)i;
        }
    }
    return best;
}

int balancer_pick(struct balancer *b, struct str client_ip, const struct balance_exclude *ex,
                  uint64_t now_ms)
{
    int best = -1;

    if (b->n == 0) {
        return -1;
    }
    switch (b->up->balance) {
    case BALANCE_LEAST_CONN: {
        /* Ties go round-robin so equal servers share the load. */
        for (size_t k = 0; k < b->n; k++) {
            size_t i = (b->rr + k) % b->n;
            if (usable(b, i, ex, now_ms) && (best < 0 || b->s[i].active < b->s[best].active)) {
                best = (int)i;
            }
        }
        if (best >= 0) {
            b->rr = ((size_t)best + 1) % b->n;
        }
        break;
    }
    case BALANCE_IP_HASH: {
        /* Probe a hash sequence first, so the clients of a server that is out
         * spread over the others instead of all landing on its neighbour; the
         * sequence depends only on the IP, so they stay put while it is out. */
        uint32_t h = balance_ip_hash(client_ip);
        for (unsigned k = 0; k < 20 && best < 0; k++) {
            size_t i = h % b->n;
            if (usable(b, i, ex, now_ms)) {
                best = (int)i;
            }
            h = (h ^ (k + 1)) * 16777619u;
            h ^= h >> 15;
        }
        for (size_t k = 0; k < b->n && best < 0; k++) {
            size_t i = (balance_ip_hash(client_ip) + k) % b->n;
            if (usable(b, i, ex, now_ms)) {
                best = (int)i;
            }
        }
        break;
    }
    case BALANCE_ROUND_ROBIN:
    default:
        for (size_t k = 0; k < b->n; k++) {
            size_t i = (b->rr + k) % b->n;
            if (usable(b, i, ex, now_ms)) {
                best = (int)i;
                b->rr = (i + 1) % b->n;
                break;
            }
        }
        break;
    }
    if (best < 0) {
        best = pick_fallback(b, ex);
    }
    return best;
}

void balancer_conn_start(struct balancer *b, size_t idx)
{
    if (idx < b->n) {
        b->s[idx].active++;
    }
}

void balancer_conn_end(struct balancer *b, size_t idx)
{
    if (idx < b->n && b->s[idx].active > 0) {
        b->s[idx].active--;
    }
}

void balancer_report(struct balancer *b, size_t idx, bool ok, uint64_t now_ms)
{
    struct server_state *s;

    if (idx >= b->n) {
        return;
    }
    s = &b->s[idx];
    if (ok) {
        s->fails = 0;
        s->down_until = 0;
        return;
    }
    if (b->up->max_fails == 0) {
        return;
    }
    /* A server picked as the fallback probe that fails again goes back down
     * for another full fail_timeout. */
    if (++s->fails >= b->up->max_fails) {
        s->down_until = now_ms + (b->up->fail_timeout_ms ? b->up->fail_timeout_ms : 1);
    }
}

void balancer_set_healthy(struct balancer *b, size_t idx, bool healthy)
{
    if (idx < b->n) {
        b->s[idx].check_down = !healthy;
    }
}
