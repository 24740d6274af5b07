/* policy/policy_metrics.c - process-wide counters for decisions, OPA and the decision
 * log, rendered in the Prometheus text format by the proxy's /metrics. Updates
 * are lock-free atomics; only the first sighting of a route takes a lock. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "policy_int.h"

#define MAX_ROUTES 256
#define NBUCKETS   8

static const uint64_t bucket_us[NBUCKETS] = { 100, 500, 1000, 5000, 10000, 50000, 200000, 1000000 };

struct route_counts {
    char name[64];
    atomic_ullong allow, deny, shadow_deny;
};

struct histo {
    atomic_ullong buckets[NBUCKETS];
    atomic_ullong count, sum_us;
};

static struct {
    pthread_mutex_t mu;
    struct route_counts routes[MAX_ROUTES];
    atomic_size_t nroutes;
    atomic_ullong opa_calls, opa_errors, opa_cache_hits, regex_errors;
    struct histo opa_latency, log_latency;
    atomic_ullong log_records, log_batches;
    atomic_size_t queue_depth, log_pending, log_spooled;
    atomic_bool log_broken;
    atomic_ullong log_checkpoint_seq, log_checkpoints;
} m = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void observe(struct histo *h, uint64_t us)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        if (us <= bucket_us[i]) {
            atomic_fetch_add(&h->buckets[i], 1);
        }
    }
    atomic_fetch_add(&h->count, 1);
    atomic_fetch_add(&h->sum_us, us);
}

static struct route_counts *route_slot(const char *route)
{
    const char *name = route && *route ? route : "-";
    size_t n = atomic_load(&m.nroutes);
    for (size_t i = 0; i < n; i++) {
        if (strncmp(m.routes[i].name, name, sizeof m.routes[i].name - 1) == 0) {
            return &m.routes[i];
        }
    }
    pthread_mutex_lock(&m.mu);
    n = atomic_load(&m.nroutes);
    for (size_t i = 0; i < n; i++) {
        if (strncmp(m.routes[i].name, name, sizeof m.routes[i].name - 1) == 0) {
            pthread_mutex_unlock(&m.mu);
            return &m.routes[i];
        }
    }
    struct route_counts *rc = NULL;
    if (n < MAX_ROUTES) {
        rc = &m.routes[n];
        snprintf(rc->name, sizeof rc->name, "%s", name);
        atomic_store(&m.nroutes, n + 1);
    }
    pthread_mutex_unlock(&m.mu);
    return rc;
}

void policy_metrics_decision(const char *route, enum policy_decision d, bool shadow)
{
    struct route_counts *rc = route_slot(route);
    if (!rc) {
        return;
    }
    if (d == POLICY_ALLOW) {
        atomic_fetch_add(&rc->allow, 1);
    } else if (shadow) {
        atomic_fetch_add(&rc->shadow_deny, 1);
    } else {
        atomic_fetch_add(&rc->deny, 1);
    }
}

void policy_metrics_opa(uint64_t latency_us, bool error, bool cache_hit)
{
    if (cache_hit) {
        atomic_fetch_add(&m.opa_cache_hits, 1);
        return;
    }
    atomic_fetch_add(&m.opa_calls, 1);
    if (error) {
        atomic_fetch_add(&m.opa_errors, 1);
    }
    observe(&m.opa_latency, latency_us);
}

void policy_metrics_log_write(uint64_t latency_us, size_t records)
{
    atomic_fetch_add(&m.log_batches, 1);
    atomic_fetch_add(&m.log_records, records);
    observe(&m.log_latency, latency_us);
}

void policy_metrics_regex_error(void)
{
    atomic_fetch_add(&m.regex_errors, 1);
}

void policy_metrics_queue_depth(size_t depth)
{
    /* A gauge set on every append: no ordering needed, only the value. */
    atomic_store_explicit(&m.queue_depth, depth, memory_order_relaxed);
}

void policy_metrics_log_state(size_t pending, size_t spooled, bool broken)
{
    atomic_store(&m.log_pending, pending);
    atomic_store(&m.log_spooled, spooled);
    atomic_store(&m.log_broken, broken);
}

void policy_metrics_checkpoint(uint64_t seq)
{
    atomic_store(&m.log_checkpoint_seq, seq);
    atomic_fetch_add(&m.log_checkpoints, 1);
}

struct out {
    char *buf;
    size_t size, len;
};

static void emit(struct out *o, const char *fmt, ...) PRINTF(2, 3);

static void emit(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *dst = o->len < o->size ? o->buf + o->len : NULL;
    int n = vsnprintf(dst, dst ? o->size - o->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        o->len += (size_t)n;
    }
}

static void emit_histo(struct out *o, const char *name, const char *help, struct histo *h)
{
    emit(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t i = 0; i < NBUCKETS; i++) {
        emit(o, "%s_bucket{le=\"%g\"} %llu\n", name, (double)bucket_us[i] / 1e6,
             (unsigned long long)atomic_load(&h->buckets[i]));
    }
    emit(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %g\n%s_count %llu\n", name,
         (unsigned long long)atomic_load(&h->count), name, (double)atomic_load(&h->sum_us) / 1e6,
         name, (unsigned long long)atomic_load(&h->count));
}

size_t policy_metrics_render(char *buf, size_t size)
{
    struct out o = { buf, size, 0 };
    if (size) {
        buf[0] = '\0';
    }
    emit(&o, "# HELP gatehouse_policy_decisions_total Policy decisions by route and result.\n"
             "# TYPE gatehouse_policy_decisions_total counter\n");
    size_t n = atomic_load(&m.nroutes);
    for (size_t i = 0; i < n; i++) {
        struct route_counts *rc = &m.routes[i];
        emit(&o, "gatehouse_policy_decisions_total{route=\"%s\",result=\"allow\"} %llu\n", rc->name,
             (unsigned long long)atomic_load(&rc->allow));
        emit(&o, "gatehouse_policy_decisions_total{route=\"%s\",result=\"deny\"} %llu\n", rc->name,
             (unsigned long long)atomic_load(&rc->deny));
        emit(&o, "gatehouse_policy_decisions_total{route=\"%s\",result=\"shadow_deny\"} %llu\n",
             rc->name, (unsigned long long)atomic_load(&rc->shadow_deny));
    }
    emit(&o,
         "# HELP gatehouse_opa_requests_total Queries sent to OPA.\n"
         "# TYPE gatehouse_opa_requests_total counter\n"
         "gatehouse_opa_requests_total %llu\n"
         "# HELP gatehouse_opa_errors_total OPA queries that failed (timeout, HTTP, JSON).\n"
         "# TYPE gatehouse_opa_errors_total counter\n"
         "gatehouse_opa_errors_total %llu\n"
         "# HELP gatehouse_opa_cache_hits_total OPA answers served from the cache.\n"
         "# TYPE gatehouse_opa_cache_hits_total counter\n"
         "gatehouse_opa_cache_hits_total %llu\n",
         (unsigned long long)atomic_load(&m.opa_calls),
         (unsigned long long)atomic_load(&m.opa_errors),
         (unsigned long long)atomic_load(&m.opa_cache_hits));
    emit_histo(&o, "gatehouse_opa_latency_seconds", "OPA query latency.", &m.opa_latency);
    emit(&o,
         "# HELP gatehouse_policy_regex_errors_total Regex conditions that hit a match "
         "limit or the input cap (each failed closed).\n"
         "# TYPE gatehouse_policy_regex_errors_total counter\n"
         "gatehouse_policy_regex_errors_total %llu\n",
         (unsigned long long)atomic_load(&m.regex_errors));
    emit(&o,
         "# HELP gatehouse_decision_log_queue_depth Records waiting for the writer.\n"
         "# TYPE gatehouse_decision_log_queue_depth gauge\n"
         "gatehouse_decision_log_queue_depth %zu\n"
         "# HELP gatehouse_decision_log_records_total Records committed.\n"
         "# TYPE gatehouse_decision_log_records_total counter\n"
         "gatehouse_decision_log_records_total %llu\n",
         atomic_load(&m.queue_depth), (unsigned long long)atomic_load(&m.log_records));
    emit(&o,
         "# HELP gatehouse_decision_log_pending Records accepted but not yet committed.\n"
         "# TYPE gatehouse_decision_log_pending gauge\n"
         "gatehouse_decision_log_pending %zu\n"
         "# HELP gatehouse_decision_log_spooled Uncommitted records saved in the spool file.\n"
         "# TYPE gatehouse_decision_log_spooled gauge\n"
         "gatehouse_decision_log_spooled %zu\n"
         "# HELP gatehouse_decision_log_broken 1 while the store refuses commits.\n"
         "# TYPE gatehouse_decision_log_broken gauge\n"
         "gatehouse_decision_log_broken %d\n"
         "# HELP gatehouse_decision_log_checkpoints_total Signed checkpoints written.\n"
         "# TYPE gatehouse_decision_log_checkpoints_total counter\n"
         "gatehouse_decision_log_checkpoints_total %llu\n"
         "# HELP gatehouse_decision_log_checkpoint_seq Record covered by the last checkpoint.\n"
         "# TYPE gatehouse_decision_log_checkpoint_seq gauge\n"
         "gatehouse_decision_log_checkpoint_seq %llu\n",
         atomic_load(&m.log_pending), atomic_load(&m.log_spooled),
         atomic_load(&m.log_broken) ? 1 : 0, (unsigned long long)atomic_load(&m.log_checkpoints),
         (unsigned long long)atomic_load(&m.log_checkpoint_seq));
    emit_histo(&o, "gatehouse_decision_log_write_seconds", "Time to commit one batch.",
               &m.log_latency);
    return o.len;
}
