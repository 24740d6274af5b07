/* proxy/config_int.h - shared by the readers of the proxy's sections (config.c,
 * config_listen.c, config_routes.c) and implemented in config_common.c, which
 * calls none of them (no cycle); private to them. */
#ifndef GH_PROXY_CONFIG_INT_H
#define GH_PROXY_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Open-addressing map from a string to the index that first used it: duplicate
 * checks stay linear for configurations with thousands of routes. */
struct first_seen {
    size_t cap, n;
    char **keys; /* owned */
    size_t *vals;
};

/* Loader state for one file. */
struct loader {
    struct config *c;
    struct conf_diag *d;
    const char *file;
    struct first_seen route_names;
};

/* Records key -> val and returns true, or returns false with *first set when
 * key was seen before (the first value is kept). Linear overall. */
bool cfg_first_seen_add(struct first_seen *t, const char *key, size_t val, size_t *first);
void cfg_first_seen_fini(struct first_seen *t);

/* root's list key, which must hold at least one item: NULL when it is missing,
 * not a list or empty (reported: "missing \"routes\": NEED"). */
const struct conf_node *cfg_required_list(struct loader *L, const struct conf_node *root,
                                          const char *key, const char *need);
/* A path from the config, resolved against the config file's directory (xmalloc'd). */
char *cfg_resolve(struct loader *L, const char *path);

/* Phase two: files the snapshot names (reported at the key's position). */
bool cfg_check_readable(struct loader *L, const struct conf_node *n, const char *key,
                        const char *shown, const char *path);
bool cfg_check_ca_file(struct loader *L, const struct conf_node *m, const char *key,
                       const char *path);
bool cfg_check_crl_file(struct loader *L, const struct conf_node *m, const char *path);
/* m holds "cert" and "key": both readable, PEM, and the key is the certificate's. */
bool cfg_check_cert_pair(struct loader *L, const struct conf_node *m,
                         const struct tls_cert_conf *tc);

/* DNS name (letters, digits, '-', '.'; labels 1-63) or an IPv4 literal. */
bool cfg_valid_hostname(const char *s);
/* m's "public_url" in normal form, or NULL (absent or reported). */
char *cfg_read_public_url(struct loader *L, const struct conf_node *m);

/* The sections (config_listen.c, config_routes.c). */
void cfg_read_listen(struct loader *L, const struct conf_node *root);
void cfg_read_admin(struct loader *L, const struct conf_node *root);
void cfg_read_routes(struct loader *L, const struct conf_node *root);
void cfg_free_listener(struct listener_conf *l);
void cfg_free_route(struct route_conf *r);

#endif
