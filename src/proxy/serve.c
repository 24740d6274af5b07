/* proxy/serve.c - placeholder for `gatehouse serve`: being replaced by the data-plane work. */
#include "proxy.h"

int proxy_cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 1;
}
