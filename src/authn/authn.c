/* authn/authn.c - who is calling (placeholder until the sign-in work lands). */
#include "authn.h"

const char *authn_module_name(void)
{
    return "authn";
}
