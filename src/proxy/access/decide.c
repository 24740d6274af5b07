/* proxy/access/decide.c - the decision: the route's compiled policy over the
 * policy input. Pure: no I/O, no clock, no allocation. OPA's answers arrive
 * through policy_opa_answer()/opa_answer_http() (opa_call.c) and decide() is
 * called again with the same result. */
#include "access_int.h"

enum verdict decide(const struct policy *p, const struct policy_input *in,
                    struct policy_result *res)
{
    if (policy_eval(p, in, res) == POLICY_NEED_OPA) {
        return VERDICT_ASK_OPA;
    }
    if (res->effective == POLICY_ALLOW) {
        /* In shadow mode a deny is logged, not enforced: res->shadow says so. */
        return VERDICT_ALLOW;
    }
    return res->need_login && !in->authenticated ? VERDICT_LOGIN : VERDICT_DENY;
}
