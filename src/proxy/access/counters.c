/* proxy/access/counters.c - the access stage's metrics: whether the state
 * database is up, sign-ins, sign-outs, identity provider errors, decision-log
 * refusals, and policy's own series.
 * Pulled by the /metrics endpoint through metrics_provider_add(). */
#include <stdatomic.h>
#include <stdio.h>

#include "access_int.h"

static atomic_uint_fast64_t Counters[AC_COUNT];

void access_count(enum access_counter c, uint64_t n)
{
    atomic_fetch_add(&Counters[c], n);
}

static unsigned long long get(enum access_counter c)
{
    return (unsigned long long)atomic_load(&Counters[c]);
}

size_t access_metrics_render(char *buf, size_t size)
{
    size_t off = 0;
    int n = snprintf(buf, size,
                     "# HELP gatehouse_state_up 1 while the state database (sessions) is "
                     "reachable; 0 sends /readyz to 503.\n"
                     "# TYPE gatehouse_state_up gauge\n"
                     "gatehouse_state_up %d\n"
                     "# HELP gatehouse_logins_total Completed sign-ins.\n"
                     "# TYPE gatehouse_logins_total counter\n"
                     "gatehouse_logins_total %llu\n"
                     "# HELP gatehouse_logouts_total Sign-outs (browser and back-channel).\n"
                     "# TYPE gatehouse_logouts_total counter\n"
                     "gatehouse_logouts_total %llu\n"
                     "# HELP gatehouse_idp_errors_total Failed identity provider calls.\n"
                     "# TYPE gatehouse_idp_errors_total counter\n"
                     "gatehouse_idp_errors_total %llu\n"
                     "# HELP gatehouse_decision_log_rejected_total Requests refused (503) "
                     "because the decision log could not take the record.\n"
                     "# TYPE gatehouse_decision_log_rejected_total counter\n"
                     "gatehouse_decision_log_rejected_total %llu\n",
                     access_state_ready() ? 1 : 0, get(AC_LOGIN), get(AC_LOGOUT), get(AC_IDP_ERROR),
                     get(AC_DL_REJECT));
    if (n > 0) {
        off = (size_t)n;
    }
    off += policy_metrics_render(off < size ? buf + off : NULL, off < size ? size - off : 0);
    return off;
}
