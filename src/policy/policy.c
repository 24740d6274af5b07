/* policy/policy.c - what is allowed (placeholder until the policy work lands). */
#include "policy.h"

const char *policy_module_name(void)
{
    return "policy";
}
