/* proxy/proxy.h - the data plane's entry points used by main.c. */
#ifndef GH_PROXY_PROXY_H
#define GH_PROXY_PROXY_H

/* `gatehouse serve -c FILE`: runs until SIGTERM/SIGINT; returns the exit status. */
int proxy_cmd_serve(int argc, char **argv);
/* `gatehouse check -c FILE`: validates config (and policies); prints file:line:col errors;
 * returns 0 when valid, 1 when not, 2 on usage errors. */
int proxy_cmd_check(int argc, char **argv);

/* Loads a configuration for `policy explain` and `policy diff` with the loader
 * serve and check use (snapshot.c): each route with its resolved policy. */
struct policy_cli_loader;
extern const struct policy_cli_loader proxy_policy_cli_loader;

#endif
