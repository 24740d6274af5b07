/* proxy/access/record_decision.c - the decision log step: every decision becomes one
 * record (decision_record_fill, the function the unit tests call), queued to
 * the hash-chained log. With decision_log.sync: strict a request is forwarded
 * only once its record is durable: it waits here, per worker loop, until the
 * writer thread says so. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include <ev.h>

#include "access_int.h"

/* Requests waiting for their record to commit, per worker loop. */
struct strict_wait {
    struct strict_wait *next;
    struct request *r;
    uint64_t seq;
    bool aborted;
};

struct loop_slot {
    struct loop_slot *next;
    struct ev_loop *loop;
    ev_async wake;
    struct strict_wait *head; /* loop thread only */
};

static struct {
    struct decision_log *dl;
    bool strict;
    atomic_uint_fast64_t committed;
    pthread_mutex_t mu;
    struct loop_slot *slots;
} L = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void on_commit(uint64_t seq, void *arg)
{
    (void)arg;
    atomic_store(&L.committed, seq);
    pthread_mutex_lock(&L.mu);
    for (struct loop_slot *s = L.slots; s; s = s->next) {
        ev_async_send(s->loop, &s->wake);
    }
    pthread_mutex_unlock(&L.mu);
}

int record_start(const struct decision_log_conf *dl, struct err *err)
{
    struct err e = { 0 };

    if (!dl || (!dl->sqlite && !dl->file)) {
        return 0;
    }
    L.dl = decision_log_open(dl, &e);
    if (!L.dl) {
        return err_set(err, ERR_IO, "decision log: %s", e.msg);
    }
    L.strict = dl->sync == DECISION_LOG_STRICT;
    decision_log_set_commit_cb(L.dl, on_commit, NULL);
    return 0;
}

void record_stop(void)
{
    decision_log_close(L.dl);
    L.dl = NULL;
    pthread_mutex_lock(&L.mu);
    while (L.slots) {
        struct loop_slot *s = L.slots;
        L.slots = s->next;
        free(s);
    }
    pthread_mutex_unlock(&L.mu);
}

bool record_enabled(void)
{
    return L.dl != NULL;
}

int record_decision(struct request *r, const struct policy *p, const struct identity *id,
                    const struct policy_input *in, const struct policy_result *res,
                    const struct opa_call *opa, uint64_t start_us, const struct record_args *a,
                    uint64_t *seq)
{
    struct decision_record rec;

    /* The access log carries the outcome too (accesslog.h). */
    r->access_decision = a->decision;
    r->access_rule = a->rule;
    r->access_user = id->user; /* the user id as policies and the decision log see it */
    r->access_device = id->device.present ? id->device.id : NULL; /* enrolled devices only */
    if (!L.dl) {
        return 0;
    }
    /* Only the claims the route's policy tests are kept: enough for `policy
     * diff` to replay the decision, and no more personal data than that. */
    int rc =
        decision_record_fill(&rec, p, in, res, r->id, r->route ? r->route->name : "", r->arena);
    if (rc == 0) {
        rec.decision = a->decision;
        rec.enforced = a->enforced;
        rec.kind = a->kind;
        rec.rule = a->rule;
        rec.reason = a->reason;
        rec.client_ip = r->client_ip; /* as received, like the access log */
        rec.opa_result = opa->result;
        rec.opa_ms = (uint32_t)(opa->us / 1000);
        rec.latency_us = access_mono_us() - start_us;
        rc = decision_log_append(L.dl, &rec, seq);
    }
    if (rc != 0) {
        access_count(AC_DL_REJECT, 1);
        log_emit(LOG_ERROR, "policy", r->id, NULL,
                 decision_log_healthy(L.dl)
                     ? "decision log queue full: refusing the request (503)"
                     : "decision log store failing and its backlog is full: refusing the "
                       "request (503)");
    }
    return rc;
}

static void strict_wake(struct ev_loop *loop, ev_async *w, int revents)
{
    struct loop_slot *s = w->data;
    uint64_t committed = atomic_load(&L.committed);
    struct strict_wait **pp = &s->head;
    (void)loop;
    (void)revents;

    while (*pp) {
        struct strict_wait *sw = *pp;
        if (sw->seq <= committed) {
            *pp = sw->next;
            if (!sw->aborted) {
                request_resume(sw->r, ACCESS_ALLOW);
            }
            free(sw);
        } else {
            pp = &sw->next;
        }
    }
}

static struct loop_slot *slot_for(struct ev_loop *loop)
{
    struct loop_slot *s;

    pthread_mutex_lock(&L.mu);
    for (s = L.slots; s && s->loop != loop; s = s->next) {
    }
    if (!s) {
        s = xcalloc(1, sizeof *s);
        s->loop = loop;
        ev_async_init(&s->wake, strict_wake);
        s->wake.data = s;
        ev_async_start(loop, &s->wake);
        ev_unref(loop); /* a pending wake-up must not keep a draining loop alive */
        s->next = L.slots;
        L.slots = s;
    }
    pthread_mutex_unlock(&L.mu);
    return s;
}

static void strict_abort(void *arg)
{
    struct strict_wait *sw = arg;
    sw->aborted = true;
}

enum access_step record_wait_durable(struct request *r, uint64_t seq)
{
    if (!L.dl || !L.strict || seq <= atomic_load(&L.committed)) {
        return ACCESS_ALLOW;
    }
    /* decision_log.sync: strict: forward only once the record is durable. */
    struct loop_slot *s = slot_for(request_loop(r));
    struct strict_wait *sw = xcalloc(1, sizeof *sw);
    sw->r = r;
    sw->seq = seq;
    sw->next = s->head;
    s->head = sw;
    request_on_abort(r, strict_abort, sw);
    if (seq <= atomic_load(&L.committed)) {
        ev_async_send(s->loop, &s->wake); /* committed while we queued */
    }
    return ACCESS_PENDING;
}
