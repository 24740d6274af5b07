/* policy/policy.h - route policies, OPA, decision log. */
#ifndef GH_POLICY_POLICY_H
#define GH_POLICY_POLICY_H

const char *policy_module_name(void);

#endif
