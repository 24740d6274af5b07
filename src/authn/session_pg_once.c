/* authn/session_pg_once.c - one-time values and refresh leases in
 * PostgreSQL: a thread of its own with its own connection runs the jobs the
 * request path queues, and signals each job's eventfd on the requester's loop
 * once it is decided (no request waits for PostgreSQL on a loop). */
#include "session_pg.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "session_pg_int.h"

/* ---- one-time values -------------------------------------------------- */

void spg_once_release(struct spg_once_job *j)
{
    if (j != NULL && atomic_fetch_sub(&j->refs, 1) == 1) {
        close(j->fd);
        free(j);
    }
}

/* The once thread's answer: the state, then the eventfd, then its reference. */
void spg_once_finish(struct spg_once_job *j, int state, const char *why)
{
    if (why != NULL) {
        snprintf(j->err, sizeof j->err, "%s", why);
    }
    atomic_store(&j->state, state);
    uint64_t one = 1;
    ssize_t n = write(j->fd, &one, sizeof one);
    (void)n; /* an eventfd counter does not fill up with one write */
    spg_once_release(j);
}

static struct spg_once_job *job_submit(struct spg *p, struct spg_once_job *tmpl, struct err *err)
{
    if (!spg_ok(p, spg_wall_ms())) {
        /* Known out of reach (the listener thread says so): refused now. */
        err_set(err, ERR_IO, "PostgreSQL unreachable");
        return NULL;
    }
    struct spg_once_job *j = xcalloc(1, sizeof *j);
    j->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (j->fd < 0) {
        err_set(err, ERR_IO, "eventfd: %s", strerror(errno));
        free(j);
        return NULL;
    }
    atomic_init(&j->refs, 2);
    atomic_init(&j->state, SPG_ONCE_PENDING);
    j->lease = tmpl->lease;
    memcpy(j->id_hash, tmpl->id_hash, sizeof j->id_hash);
    memcpy(j->h, tmpl->h, 32);
    j->exp_s = tmpl->exp_s;
    j->deadline_ms = spg_mono_ms() + (int64_t)p->conf.query_timeout_ms;
    pthread_mutex_lock(&p->omu);
    *p->otail = j;
    p->otail = &j->next;
    pthread_cond_signal(&p->ocv);
    pthread_mutex_unlock(&p->omu);
    return j;
}

struct spg_once_job *spg_once_submit(struct spg *p, const unsigned char h[32], int64_t exp_s,
                                     struct err *err)
{
    struct spg_once_job t = { .exp_s = exp_s };
    memcpy(t.h, h, 32);
    return job_submit(p, &t, err);
}

struct spg_once_job *spg_lease_submit(struct spg *p, const char id_hash[65], int64_t token_exp_s,
                                      struct err *err)
{
    struct spg_once_job t = { .lease = true, .exp_s = token_exp_s };
    snprintf(t.id_hash, sizeof t.id_hash, "%s", id_hash);
    return job_submit(p, &t, err);
}

int spg_once_fd(const struct spg_once_job *j)
{
    return j->fd;
}

int spg_once_state(const struct spg_once_job *j, const char **why)
{
    int st = atomic_load(&((struct spg_once_job *)j)->state);
    if (why != NULL) {
        *why = st == SPG_ONCE_FAILED ? j->err : st == SPG_ONCE_PENDING ? "no answer in time" : "";
    }
    return st;
}

uint64_t spg_query_timeout_ms(const struct spg *p)
{
    return p->conf.query_timeout_ms;
}

/* Waits (poll, never past deadline) until db has a whole answer. 0, -2 when
 * the connection broke, -3 at the deadline. */
static int await_db(PGconn *db, int64_t deadline, struct err *err)
{
    while (PQisBusy(db)) {
        int64_t left = deadline - spg_mono_ms();
        if (left <= 0) {
            err_set(err, ERR_IO, "PostgreSQL did not answer in time");
            return -3;
        }
        struct pollfd pfd = { .fd = PQsocket(db), .events = POLLIN };
        if (pfd.fd < 0 || (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) ||
            PQconsumeInput(db) == 0) {
            err_set(err, ERR_IO, "PostgreSQL: connection lost");
            return -2;
        }
    }
    return 0;
}

/* The first use of the key on any node: INSERT ... ON CONFLICT DO NOTHING
 * decides. 0 with *fresh, -1 refused by the server, -2 connection broken, -3
 * no answer by the deadline. */
static int once_query(PGconn *db, const char *sql, int n, const char *const *v, int64_t deadline,
                      bool *fresh, struct err *err)
{
    if (!PQsendQueryParams(db, sql, n, NULL, v, NULL, NULL, 0)) {
        err_set(err, ERR_IO, "PostgreSQL: connection lost");
        return -2;
    }
    int rc = -1;
    bool first = true;
    for (;;) {
        int w = await_db(db, deadline, err);
        if (w != 0) {
            return w;
        }
        PGresult *r = PQgetResult(db);
        if (r == NULL) {
            break;
        }
        if (first && pg_check(db, r, err, "recording a one-time value")) {
            const char *rows = PQcmdTuples(r);
            *fresh = rows != NULL && strcmp(rows, "1") == 0;
            rc = 0;
        }
        first = false;
        PQclear(r);
    }
    return rc;
}

static void once_run(struct spg *p, struct spg_once_job *j)
{
    char hex[2 * 32 + 3] = "\\x";
    str_hex(j->h, 32, hex + 2);
    char exps[24], now[24];
    snprintf(exps, sizeof exps, "%lld", (long long)j->exp_s);
    snprintf(now, sizeof now, "%lld", (long long)spg_wall_ms());
    const char *v[] = { hex, exps };
    const char *lv[] = { j->id_hash, now, exps };
    /* A one-time value: the first INSERT of its hash wins. A refresh lease:
     * taken while none is live and the tokens are still those the node holds
     * (another node's refresh moved token_exp_s on). */
    const char *sql = j->lease
                          ? "UPDATE sessions SET refresh_lease_ms = $2::bigint + " REFRESH_LEASE_MS
                            " WHERE id_hash = $1 AND refresh_lease_ms <= $2::bigint "
                            "AND token_exp_s <= $3::bigint"
                          : "INSERT INTO once_values (key_hash, exp_s) VALUES ($1::bytea, "
                            "$2::bigint) ON CONFLICT (key_hash) DO NOTHING";
    int nv = j->lease ? 3 : 2;
    const char *const *vals = j->lease ? lv : v;
    struct err e = { 0 };
    for (int attempt = 0; attempt < 2; attempt++) {
        if (spg_mono_ms() >= j->deadline_ms) {
            spg_once_finish(j, SPG_ONCE_FAILED, "PostgreSQL did not answer in time");
            return;
        }
        if (p->oconn == NULL || PQstatus(p->oconn) != CONNECTION_OK) {
            PQfinish(p->oconn);
            p->oconn = spg_connect_db(&p->conf, p->password, &e);
            if (p->oconn == NULL) {
                spg_once_finish(j, SPG_ONCE_FAILED, e.msg);
                return;
            }
        }
        bool fresh = false;
        int rc = once_query(p->oconn, sql, nv, vals, j->deadline_ms, &fresh, &e);
        if (rc == 0) {
            spg_once_finish(j, fresh ? SPG_ONCE_FRESH : SPG_ONCE_USED, NULL);
            return;
        }
        if (rc != -1) {
            /* Broken, or a server that does not answer: a new connection
             * next time (a dropped one is tried again at once). */
            PQfinish(p->oconn);
            p->oconn = NULL;
            if (rc == -2) {
                continue;
            }
        }
        break;
    }
    spg_once_finish(j, SPG_ONCE_FAILED, e.msg);
}

void *spg_once_main(void *arg)
{
    struct spg *p = arg;
    pthread_mutex_lock(&p->omu);
    while (!atomic_load(&p->stop)) {
        struct spg_once_job *j = p->ohead;
        if (j == NULL) {
            pthread_cond_wait(&p->ocv, &p->omu);
            continue;
        }
        p->ohead = j->next;
        if (p->ohead == NULL) {
            p->otail = &p->ohead;
        }
        j->next = NULL;
        pthread_mutex_unlock(&p->omu);
        once_run(p, j);
        pthread_mutex_lock(&p->omu);
    }
    pthread_mutex_unlock(&p->omu);
    return NULL;
}

int spg_once(struct spg *p, const unsigned char h[32], int64_t exp_s, bool *fresh, struct err *err)
{
    *fresh = false;
    struct spg_once_job *j = spg_once_submit(p, h, exp_s, err);
    if (j == NULL) {
        return -1;
    }
    struct pollfd pfd = { .fd = j->fd, .events = POLLIN };
    int64_t deadline = spg_mono_ms() + (int64_t)p->conf.query_timeout_ms;
    while (spg_once_state(j, NULL) == SPG_ONCE_PENDING && spg_mono_ms() < deadline) {
        (void)poll(&pfd, 1, (int)(deadline - spg_mono_ms()));
    }
    const char *why = NULL;
    int st = spg_once_state(j, &why);
    int rc = st == SPG_ONCE_FRESH || st == SPG_ONCE_USED ? 0 : -1;
    *fresh = st == SPG_ONCE_FRESH;
    if (rc != 0) {
        err_set(err, ERR_IO, "%s", why);
    }
    spg_once_release(j);
    return rc;
}
