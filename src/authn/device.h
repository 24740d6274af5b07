/* authn/device.h - device identity from a TLS client certificate, and its
 * trust as the registry sees it. Device identity is one more identity source:
 * the proxy hands over the verified leaf certificate and gets back who the
 * device is and whether it is trusted.
 *
 * device_identity_from_x509() is sans-IO (certificate in, fields out).
 * device_trust() is the per-request check: it runs on every request, not once
 * per handshake, so a revocation reaches keep-alive connections and resumed TLS
 * sessions. A small per-thread cache keyed by the certificate's SHA-256 makes it
 * cheap; the cache is dropped when the registry's change sequence moves (polled
 * every 250 ms) or the listener's client CA/CRL set is reloaded. */
#ifndef GH_AUTHN_DEVICE_H
#define GH_AUTHN_DEVICE_H

#include <stdbool.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "core/ident.h"
#include "device_store.h"

struct device_identity {
    bool present;    /* a client certificate that verifies against the client CA (and
                          * the current CRL) was presented */
    bool enrolled;   /* the registry knows its fingerprint */
    bool revoked;    /* ... and it is revoked there */
    bool trusted;    /* present, enrolled, not revoked, within its validity */
    const char *why; /* static: why not trusted ("not enrolled", "revoked"...) or "" */
    char fingerprint[65];
    char serial[130];
    char subject[512], issuer[512];
    char san[512];   /* the first URI SAN (a SPIFFE id), else the first email SAN */
    char sans[1024]; /* every SAN: "DNS:a, URI:spiffe://x, email:b, IP:1.2.3.4" */
    int64_t not_before, not_after;
    /* the registry's view */
    char id[DEVICE_ID_LEN + 1];
    char name[128];
    char owner[256];
};

/* Fills the certificate fields of out (present/enrolled/trusted untouched).
 * Returns 0, or -1 when the certificate cannot be read. */
int device_identity_from_x509(X509 *x, struct device_identity *out);

/* Whether one of x's subjectAltNames matches one of patterns ("DNS:*.corp.example",
 * "email:*@example.com", "URI:spiffe://example.com/dev-*", "IP:10.0.0.*"; '*' matches
 * any run of characters, the tag must be the SAN's type). Sans-IO. */
bool device_san_matches(X509 *x, char *const *patterns, size_t n);

/* Where the registry lives (state.sqlite; NULL: no registry, nothing is
 * enrolled) and how long a worker may keep a registry answer when nothing
 * changed. Call before the workers start. */
void device_registry_configure(const char *sqlite_path, uint64_t cache_ttl_ms);

/* What a listener's client certificates are checked against now. */
struct device_verify {
    /* The listener's current client CA + CRL store, asked for only when the cache
     * misses: get returns it (NULL: do not re-verify) and a reference in *hold
     * that put releases. */
    X509_STORE *(*store_get)(void *arg, void **hold);
    void (*store_put)(void *hold);
    void *arg;
    uint64_t generation;    /* changes whenever the store is rebuilt */
    unsigned listener;      /* index: entries are per listener */
    int depth;              /* verify_depth: 1 = issued by a CA of the store itself */
    STACK_OF(X509) * chain; /* the intermediates the client sent (untrusted), or NULL */
};

/* The trust check for one request on a connection whose handshake verified
 * leaf. Fills out; never fails (an error leaves the device untrusted, with why). */
void device_trust(X509 *leaf, const struct device_verify *v, int64_t now_s,
                  struct device_identity *out);

/* The registry record as one JSON object (for `devices list --json`, show). */
char *device_record_json(const struct device_record *r);

/* `gatehouse devices ...` (argv[0] is "devices"); log_admin records enrolments
 * and revocations in the decision log. */
int authn_cmd_devices(int argc, char **argv, admin_log_fn *log_admin);

#endif
