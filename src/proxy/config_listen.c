/* proxy/config_listen.c - the "listen" and "admin" sections: numeric addresses
 * and their clashes, TLS certificates (checked to load and to match their keys),
 * client CAs and CRLs, public_url; and the file checks the other sections share. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_int.h"

/* Key tables (core/conf.h): name, type, where it goes, bounds, default. */
static const struct conf_key listen_table[] = {
    { "address", CONF_K_OWN, 0, 0, 0, 0, NULL },
    { "tls", CONF_K_OWN, 0, 0, 0, 0, NULL },
    { "trust_request_id", CONF_K_BOOL, offsetof(struct listener_conf, trust_request_id), 0, 0, 0,
      NULL },
    { "trust_forwarded", CONF_K_BOOL, offsetof(struct listener_conf, trust_forwarded), 0, 0, 0,
      NULL },
    { "public_url", CONF_K_OWN, 0, 0, 0, 0, NULL },
};
static const char *const san_match_keys[] = { "dns", "email", "uri", "ip", NULL };
static const char *const cert_keys[] = { "cert", "key", NULL };
static const char *const client_cert_names[] = { "none", "optional", "required", NULL };

#define OWN(name)                                                                                  \
    {                                                                                              \
        name, CONF_K_OWN, 0, 0, 0, 0, NULL                                                         \
    }
static const struct conf_key tls_table[] = {
    OWN("cert"),
    OWN("key"),
    OWN("certificates"),
    { "client_ca", CONF_K_PATH, offsetof(struct listener_conf, client_ca), 0, 0, 0, NULL },
    { "client_crl", CONF_K_PATH, offsetof(struct listener_conf, client_crl), 0, 0, 0, NULL },
    { "client_cert", CONF_K_ENUM, offsetof(struct listener_conf, client_cert), 0, 0,
      TLS_CLIENT_CERT_NONE, client_cert_names },
    OWN("verify_depth"), /* checked against client_ca below */
    OWN("match_subject_alt_names"),
};
static const struct conf_key admin_table[] = { OWN("address") };
_Static_assert(sizeof(enum tls_client_cert) == sizeof(int), "client_cert is read as an int");

/* Parses "ipv4:port" or "[ipv6]:port" with a numeric host. */
static bool parse_address(const char *s, char *host, size_t host_cap, uint16_t *port)
{
    const char *colon, *h = s, *hend;
    unsigned char buf[16];
    uint64_t p;
    char tmp[64];
    bool v6 = false;

    if (s[0] == '[') {
        hend = strchr(s, ']');
        if (!hend || hend[1] != ':') {
            return false;
        }
        h = s + 1;
        colon = hend + 1;
        v6 = true;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            return false;
        }
        hend = colon;
    }
    if ((size_t)(hend - h) >= sizeof tmp || hend == h) {
        return false;
    }
    memcpy(tmp, h, (size_t)(hend - h));
    tmp[hend - h] = '\0';
    if (inet_pton(v6 ? AF_INET6 : AF_INET, tmp, buf) != 1) {
        return false;
    }
    if (!str_to_u64(str_from(colon + 1), 1, 65535, &p)) {
        return false;
    }
    if (strlen(tmp) >= host_cap) {
        return false;
    }
    memcpy(host, tmp, strlen(tmp) + 1);
    *port = (uint16_t)p;
    return true;
}

enum clash { CLASH_NONE = 0, CLASH_SAME, CLASH_OVERLAP };

/* Compares two numeric socket addresses (hosts as parse_address left them):
 * the same address, or one the wildcard (0.0.0.0, ::) of the other's family. */
static enum clash clash(const char *h1, uint16_t p1, const char *h2, uint16_t p2)
{
    unsigned char a[16] = { 0 }, b[16] = { 0 }, zero[16] = { 0 };
    bool v6a = strchr(h1, ':') != NULL, v6b = strchr(h2, ':') != NULL;
    size_t n = v6a ? 16 : 4;

    if (p1 != p2 || v6a != v6b || inet_pton(v6a ? AF_INET6 : AF_INET, h1, a) != 1 ||
        inet_pton(v6b ? AF_INET6 : AF_INET, h2, b) != 1) {
        return CLASH_NONE;
    }
    if (memcmp(a, b, n) == 0) {
        return CLASH_SAME;
    }
    return memcmp(a, zero, n) == 0 || memcmp(b, zero, n) == 0 ? CLASH_OVERLAP : CLASH_NONE;
}

static bool read_address(struct loader *L, const struct conf_node *m, char **addr_out, char *host,
                         size_t host_cap, uint16_t *port)
{
    const char *a = NULL;
    const struct conf_node *n = conf_get(m, "address");

    if (!conf_string(L->d, m, "address", &a)) {
        return false;
    }
    if (!a) {
        conf_error(L->d, m, "missing \"address\" (host:port, such as 127.0.0.1:8080)");
        return false;
    }
    if (!parse_address(a, host, host_cap, port)) {
        conf_error(L->d, n,
                   "\"address\" must be a numeric IPv4 or [IPv6] address and a port from 1 to "
                   "65535, such as 127.0.0.1:8080, got \"%s\"",
                   a);
        return false;
    }
    *addr_out = xstrdup(a);
    return true;
}

/* ---- listen ---- */

static bool read_cert_entry(struct loader *L, const struct conf_node *m, const char *what,
                            struct listener_conf *lc)
{
    const char *cert = conf_nonempty(L->d, m, "cert"), *key = conf_nonempty(L->d, m, "key");
    struct tls_cert_conf *tc;

    if (!cert && !key) {
        return false;
    }
    if (!cert || !key) {
        if (conf_get(m, cert ? "key" : "cert") == NULL) {
            conf_error(L->d, m, "%s has \"%s\" but no \"%s\"", what, cert ? "cert" : "key",
                       cert ? "key" : "cert");
        }
        return false;
    }
    lc->certs = xrealloc(lc->certs, (lc->ncerts + 1) * sizeof *lc->certs);
    tc = &lc->certs[lc->ncerts++];
    tc->cert_file = cfg_resolve(L, cert);
    tc->key_file = cfg_resolve(L, key);
    return cfg_check_cert_pair(L, m, tc);
}

static void read_tls(struct loader *L, const struct conf_node *t, struct listener_conf *lc)
{
    const struct conf_node *certs = conf_get(t, "certificates");

    if (!conf_read_table(L->d, t, "\"tls\"", tls_table, CONF_TABLE_LEN(tls_table), lc, L->file)) {
        return;
    }
    lc->tls = true;
    if (conf_get(t, "cert") || conf_get(t, "key")) {
        read_cert_entry(L, t, "\"tls\"", lc);
    }
    if (certs && conf_seq(L->d, certs, "\"certificates\"")) {
        for (size_t i = 0; i < certs->n; i++) {
            const struct conf_node *e = certs->items[i];
            if (!conf_check_keys(L->d, e, "a \"certificates\" item", cert_keys)) {
                if (e->type != CONF_MAP) {
                    continue;
                }
            }
            if (!conf_get(e, "cert") && !conf_get(e, "key")) {
                conf_error(L->d, e, "a \"certificates\" item needs \"cert\" and \"key\"");
                continue;
            }
            read_cert_entry(L, e, "a \"certificates\" item", lc);
        }
    }
    if (!conf_get(t, "cert") && !conf_get(t, "key") &&
        !(certs && certs->type == CONF_SEQ && certs->n > 0)) {
        conf_error(L->d, t, "\"tls\" needs \"cert\" and \"key\" (or a \"certificates\" list)");
    }
    if (lc->client_ca) {
        cfg_check_ca_file(L, t, "client_ca", lc->client_ca);
    }
    if (lc->client_crl) {
        cfg_check_crl_file(L, t, lc->client_crl);
    }
    if (lc->client_cert != TLS_CLIENT_CERT_NONE && !lc->client_ca) {
        conf_error(L->d, conf_get(t, "client_cert"), "\"client_cert: %s\" needs \"client_ca\"",
                   client_cert_names[lc->client_cert]);
    }
    if (lc->client_crl && !lc->client_ca) {
        conf_error(L->d, conf_get(t, "client_crl"), "\"client_crl\" needs \"client_ca\"");
    }
    uint64_t depth = 1;
    if (conf_u64(L->d, t, "verify_depth", 1, 10, &depth) && conf_get(t, "verify_depth") &&
        !lc->client_ca) {
        conf_error(L->d, conf_get(t, "verify_depth"), "\"verify_depth\" needs \"client_ca\"");
    }
    lc->verify_depth = (unsigned)depth;
    const struct conf_node *sm = conf_get(t, "match_subject_alt_names");
    if (sm && sm->type != CONF_NULL) {
        static const char *const tags[] = { "DNS", "email", "URI", "IP" };
        if (!lc->client_ca) {
            conf_error(L->d, sm, "\"match_subject_alt_names\" needs \"client_ca\"");
        }
        if (conf_check_keys(L->d, sm, "\"match_subject_alt_names\"", san_match_keys) ||
            sm->type == CONF_MAP) {
            for (size_t k = 0; san_match_keys[k]; k++) {
                const struct conf_node *l = conf_get(sm, san_match_keys[k]);
                if (!l || !conf_seq(L->d, l, san_match_keys[k])) {
                    continue;
                }
                for (size_t i = 0; i < l->n; i++) {
                    const struct conf_node *v = l->items[i];
                    if (v->type != CONF_SCALAR || !v->value || !v->value[0]) {
                        conf_error(L->d, v, "a \"%s\" pattern must be a non-empty string",
                                   san_match_keys[k]);
                        continue;
                    }
                    lc->san_patterns =
                        xrealloc(lc->san_patterns, (lc->nsan_patterns + 1) * sizeof(char *));
                    lc->san_patterns[lc->nsan_patterns++] = xasprintf("%s:%s", tags[k], v->value);
                }
            }
            if (lc->nsan_patterns == 0) {
                conf_error(L->d, sm,
                           "\"match_subject_alt_names\" needs at least one pattern "
                           "(dns, email, uri, ip)");
            }
        }
    }
}

void cfg_read_listen(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *ls =
        cfg_required_list(L, root, "listen", "at least one listener is required");

    if (!ls) {
        return;
    }
    L->c->listeners = xcalloc(ls->n, sizeof *L->c->listeners);
    for (size_t i = 0; i < ls->n; i++) {
        const struct conf_node *m = ls->items[i];
        struct listener_conf *lc = &L->c->listeners[L->c->nlisteners];
        const struct conf_node *t;

        if (m->type == CONF_SCALAR) {
            /* "listen: [127.0.0.1:8080]" is the likely slip: say what to write. */
            conf_error(L->d, m, "a \"listen\" item must be a map such as {address: %s}, got \"%s\"",
                       m->value, m->value);
            continue;
        }
        if (!conf_read_table(L->d, m, "a \"listen\" item", listen_table,
                             CONF_TABLE_LEN(listen_table), lc, L->file)) {
            continue;
        }
        L->c->nlisteners++;
        lc->line = m->line;
        lc->col = m->col;
        read_address(L, m, &lc->address, lc->host, sizeof lc->host, &lc->port);
        lc->public_url = cfg_read_public_url(L, m);
        t = conf_get(m, "tls");
        if (t) {
            read_tls(L, t, lc);
        }
        /* Two sockets on one address (or a specific address under a wildcard
         * one) would split traffic silently between configurations; refuse it. */
        for (size_t j = 0; lc->address && j + 1 < L->c->nlisteners; j++) {
            const struct listener_conf *o = &L->c->listeners[j];
            enum clash k = o->address ? clash(o->host, o->port, lc->host, lc->port) : CLASH_NONE;
            if (k == CLASH_SAME) {
                conf_error(L->d, conf_get(m, "address"),
                           "duplicate listen address \"%s\" (first at line %d)", lc->address,
                           o->line);
                break;
            }
            if (k == CLASH_OVERLAP) {
                conf_error(L->d, conf_get(m, "address"),
                           "listen address \"%s\" overlaps \"%s\" (line %d)", lc->address,
                           o->address, o->line);
                break;
            }
        }
    }
}

/* ---- admin ---- */

void cfg_read_admin(struct loader *L, const struct conf_node *root)
{
    const struct conf_node *a = conf_get(root, "admin");
    struct config *c = L->c;

    if (!a || a->type == CONF_NULL) {
        return;
    }
    if (!conf_read_table(L->d, a, "\"admin\"", admin_table, CONF_TABLE_LEN(admin_table), c,
                         L->file)) {
        return;
    }
    if (!read_address(L, a, &c->admin_address, c->admin_host, sizeof c->admin_host,
                      &c->admin_port)) {
        return;
    }
    for (size_t j = 0; j < c->nlisteners; j++) {
        const struct listener_conf *o = &c->listeners[j];
        enum clash k =
            o->address ? clash(o->host, o->port, c->admin_host, c->admin_port) : CLASH_NONE;
        if (k == CLASH_SAME) {
            conf_error(L->d, conf_get(a, "address"),
                       "admin address \"%s\" is also a listen address (line %d)", c->admin_address,
                       o->line);
            break;
        }
        if (k == CLASH_OVERLAP) {
            conf_error(L->d, conf_get(a, "address"),
                       "admin address \"%s\" overlaps listen address \"%s\" (line %d)",
                       c->admin_address, o->address, o->line);
            break;
        }
    }
}

void cfg_free_listener(struct listener_conf *l)
{
    free(l->address);
    for (size_t i = 0; i < l->ncerts; i++) {
        free(l->certs[i].cert_file);
        free(l->certs[i].key_file);
    }
    free(l->certs);
    free(l->client_ca);
    free(l->client_crl);
    for (size_t k = 0; k < l->nsan_patterns; k++) {
        free(l->san_patterns[k]);
    }
    free(l->san_patterns);
    free(l->public_url);
}
