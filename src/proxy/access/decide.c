/* proxy/access/decide.c - the decision: the route's compiled policy over the
 * policy input. Pure: no I/O, no clock, no allocation. OPA's answers arrive
 * through policy_opa_answer()/opa_answer_http() (opa_call.c) and decide() is
 * called again with the same result. decide_device_would_help() is the denied
 * page's question: would a trusted device have changed the answer? */
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

bool decide_device_would_help(const struct policy *p, const struct policy_input *in)
{
    if (!p || in->device.trusted) {
        return false;
    }
    struct policy_input as_trusted = *in;
    struct policy_result res;
    as_trusted.device.present = as_trusted.device.trusted = true;
    as_trusted.device.owner = in->email;
    policy_result_init(&res, NULL);
    return policy_eval(p, &as_trusted, &res) == POLICY_DONE && res.decision == POLICY_ALLOW;
}
