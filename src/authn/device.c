/* authn/device.c - device identity from client certificates (see device.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "core/log.h"
#include "device.h"

static void name_text(const X509_NAME *n, char *out, size_t cap)
{
    out[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    if (b && X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253) >= 0) {
        int k = BIO_read(b, out, (int)cap - 1);
        out[k > 0 ? k : 0] = '\0';
    }
    BIO_free(b);
}

static int64_t asn1_time_s(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) {
        return 0;
    }
    return (int64_t)timegm(&tm);
}

/* Appends "<tag>:<value>" to the SAN list; control bytes become '?'. */
static void san_add(char *out, size_t cap, const char *tag, const unsigned char *v, int n)
{
    size_t len = strlen(out);
    int w = snprintf(out + len, cap - len, "%s%s:", len ? ", " : "", tag);
    if (w < 0 || (size_t)w >= cap - len) {
        out[len] = '\0';
        return;
    }
    len += (size_t)w;
    for (int i = 0; i < n && len + 1 < cap; i++) {
        out[len++] = (v[i] < 0x20 || v[i] == 0x7f || v[i] == ',') ? '?' : (char)v[i];
    }
    out[len] = '\0';
}

static void san_copy(char *out, size_t cap, const ASN1_STRING *a)
{
    int n = ASN1_STRING_length(a);
    const unsigned char *p = ASN1_STRING_get0_data(a);
    if (n <= 0 || (size_t)n >= cap || memchr(p, '\0', (size_t)n)) {
        return;
    }
    for (int i = 0; i < n; i++) {
        out[i] = (p[i] < 0x20 || p[i] == 0x7f) ? '?' : (char)p[i];
    }
    out[n] = '\0';
}

int device_identity_from_x509(X509 *x, struct device_identity *out)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    out->fingerprint[0] = out->serial[0] = out->subject[0] = out->issuer[0] = '\0';
    out->san[0] = out->sans[0] = '\0';
    if (!x || X509_digest(x, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32) {
        return -1;
    }
    str_hex(md, 32, out->fingerprint);
    const ASN1_INTEGER *sn = X509_get0_serialNumber(x);
    BIGNUM *bn = sn ? ASN1_INTEGER_to_BN(sn, NULL) : NULL;
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    snprintf(out->serial, sizeof out->serial, "%s", hex ? hex : "");
    OPENSSL_free(hex);
    BN_free(bn);
    name_text(X509_get_subject_name(x), out->subject, sizeof out->subject);
    name_text(X509_get_issuer_name(x), out->issuer, sizeof out->issuer);
    out->not_before = asn1_time_s(X509_get0_notBefore(x));
    out->not_after = asn1_time_s(X509_get0_notAfter(x));
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    char email[512] = "";
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        const ASN1_STRING *a = NULL;
        const char *tag = NULL;
        char ip[64] = "";
        switch (g->type) {
        case GEN_DNS:
            a = g->d.dNSName;
            tag = "DNS";
            break;
        case GEN_URI:
            a = g->d.uniformResourceIdentifier;
            tag = "URI";
            if (!out->san[0]) {
                san_copy(out->san, sizeof out->san, a);
            }
            break;
        case GEN_EMAIL:
            a = g->d.rfc822Name;
            tag = "email";
            if (!email[0]) {
                san_copy(email, sizeof email, a);
            }
            break;
        case GEN_IPADD: {
            const ASN1_OCTET_STRING *o = g->d.iPAddress;
            const unsigned char *p = ASN1_STRING_get0_data(o);
            if (ASN1_STRING_length(o) == 4) {
                snprintf(ip, sizeof ip, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]);
            } else if (ASN1_STRING_length(o) == 16) {
                size_t k = 0;
                for (int j = 0; j < 16; j += 2) {
                    k += (size_t)snprintf(ip + k, sizeof ip - k, "%s%x", j ? ":" : "",
                                          (unsigned)(p[j] << 8 | p[j + 1]));
                }
            }
            if (ip[0]) {
                san_add(out->sans, sizeof out->sans, "IP", (const unsigned char *)ip,
                        (int)strlen(ip));
            }
            break;
        }
        default:
            break;
        }
        if (a && tag) {
            san_add(out->sans, sizeof out->sans, tag, ASN1_STRING_get0_data(a),
                    ASN1_STRING_length(a));
        }
    }
    GENERAL_NAMES_free(names);
    if (!out->san[0]) {
        memcpy(out->san, email, sizeof out->san);
    }
    return 0;
}

/* '*' matches any run (also empty); everything else exactly, ASCII case-insensitive
 * for DNS names and emails. */
static bool glob_match(const char *p, const char *s, bool fold)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        char a = *p, b = *s;
        if (fold) {
            a = (a >= 'A' && a <= 'Z') ? (char)(a + 32) : a;
            b = (b >= 'A' && b <= 'Z') ? (char)(b + 32) : b;
        }
        if (*p == '*') {
            star = p++;
            resume = s;
        } else if (*p && a == b) {
            p++;
            s++;
        } else if (star) {
            p = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*p == '*') {
        p++;
    }
    return *p == '\0';
}

bool device_san_matches(X509 *x, char *const *patterns, size_t n)
{
    struct device_identity d;
    bool hit = false;
    memset(&d, 0, sizeof d);
    if (device_identity_from_x509(x, &d) != 0) {
        return false;
    }
    /* d.sans: "TAG:value, TAG:value" (values never hold ','). */
    char *item = d.sans;
    while (item && *item && !hit) {
        char *comma = strchr(item, ',');
        if (comma) {
            *comma = '\0';
        }
        while (*item == ' ') {
            item++;
        }
        const char *colon = strchr(item, ':');
        size_t tl = colon ? (size_t)(colon - item) : 0;
        for (size_t i = 0; colon && i < n && !hit; i++) {
            if (strncmp(patterns[i], item, tl) == 0 && patterns[i][tl] == ':') {
                bool fold = (tl == 3 && strncmp(item, "DNS", 3) == 0) ||
                            (tl == 5 && strncmp(item, "email", 5) == 0);
                hit = glob_match(patterns[i] + tl + 1, colon + 1, fold);
            }
        }
        item = comma ? comma + 1 : NULL;
    }
    return hit;
}

/* ---- the per-request check ------------------------------------------------ */

static struct {
    char *path;
    uint64_t ttl_ms;
} R;

void device_registry_configure(const char *sqlite_path, uint64_t cache_ttl_ms)
{
    free(R.path);
    R.path = sqlite_path ? xstrdup(sqlite_path) : NULL;
    R.ttl_ms = cache_ttl_ms ? cache_ttl_ms : 30000;
}

#define CACHE_SLOTS 64
#define MEMO_SLOTS  32
#define POLL_MS     250

/* The fingerprint of a certificate object seen before: a keep-alive connection
 * hands the same X509 to every request. The reference held keeps the pointer
 * from being reused by another certificate. */
struct memo {
    X509 *x;
    char fp[65];
};

struct cache_entry {
    bool used;
    unsigned listener;
    uint64_t generation;
    uint64_t filled_ms;
    struct device_identity id;
};

struct worker_cache {
    struct device_store *store;
    bool store_failed;
    int64_t seq;
    uint64_t polled_ms;
    struct cache_entry e[CACHE_SLOTS];
    struct memo memo[MEMO_SLOTS];
};

static __thread struct worker_cache *WC;

static uint64_t spg_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct worker_cache *cache(void)
{
    if (!WC) {
        WC = xcalloc(1, sizeof *WC);
    }
    struct worker_cache *c = WC;
    if (!c->store && !c->store_failed && (R.path || device_store_on_postgres())) {
        struct err e = { 0 };
        c->store = device_store_open(R.path, &e);
        if (!c->store) {
            c->store_failed = true;
            log_error("device", "device registry unavailable (no device is trusted): %s", e.msg);
        } else {
            c->seq = device_store_change_seq(c->store);
            c->polled_ms = spg_mono_ms();
        }
    }
    return c;
}

/* Verifies leaf against the listener's current store (client CA, CRL). */
static const char *reverify(X509 *leaf, X509_STORE *store, const struct device_verify *v)
{
    X509_STORE_CTX *x = X509_STORE_CTX_new();
    const char *why = "certificate check failed";
    if (x && X509_STORE_CTX_init(x, store, leaf, v->chain) == 1) {
        X509_STORE_CTX_set_default(x, "ssl_client");
        if (v->depth >= 1) {
            X509_VERIFY_PARAM_set_depth(X509_STORE_CTX_get0_param(x), v->depth - 1);
        }
        if (X509_verify_cert(x) == 1) {
            why = NULL;
        } else {
            int e = X509_STORE_CTX_get_error(x);
            why = e == X509_V_ERR_CERT_REVOKED         ? "certificate revoked (CRL)"
                  : e == X509_V_ERR_CRL_HAS_EXPIRED    ? "client CRL expired"
                  : e == X509_V_ERR_CERT_HAS_EXPIRED   ? "certificate expired"
                  : e == X509_V_ERR_CERT_NOT_YET_VALID ? "certificate not yet valid"
                                                       : "certificate does not verify";
        }
    }
    X509_STORE_CTX_free(x);
    return why;
}

static bool fingerprint(struct worker_cache *c, X509 *leaf, char fp[65])
{
    struct memo *m = &c->memo[((uintptr_t)leaf >> 4) % MEMO_SLOTS];
    if (m->x == leaf) {
        memcpy(fp, m->fp, 65);
        return true;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(leaf, EVP_sha256(), md, &n) != 1 || n != 32) {
        return false;
    }
    str_hex(md, 32, fp);
    X509_free(m->x);
    X509_up_ref(leaf);
    m->x = leaf;
    memcpy(m->fp, fp, 65);
    return true;
}

void device_trust(X509 *leaf, const struct device_verify *v, int64_t now_s,
                  struct device_identity *out)
{
    char fp[65];
    if (!leaf) {
        memset(out, 0, sizeof *out);
        out->why = "no client certificate";
        return;
    }
    struct worker_cache *c = cache();
    if (!fingerprint(c, leaf, fp)) {
        memset(out, 0, sizeof *out);
        out->why = "unreadable client certificate";
        return;
    }
    uint64_t now = spg_mono_ms();
    if (c->store && now - c->polled_ms >= POLL_MS) {
        int64_t seq = device_store_change_seq(c->store);
        c->polled_ms = now;
        if (seq != c->seq) {
            c->seq = seq;
            memset(c->e, 0, sizeof c->e); /* an enrolment or revocation: ask again */
        }
    }
    uint64_t h = str_hash(STR_HASH_SEED, fp, 64);
    struct cache_entry *e = &c->e[h % CACHE_SLOTS];
    if (!(e->used && e->listener == v->listener && e->generation == v->generation &&
          now - e->filled_ms < R.ttl_ms && strcmp(e->id.fingerprint, fp) == 0)) {
        struct device_identity d;
        memset(&d, 0, sizeof d);
        if (device_identity_from_x509(leaf, &d) != 0) {
            memset(out, 0, sizeof *out);
            out->why = "unreadable client certificate";
            return;
        }
        void *hold = NULL;
        X509_STORE *store = v->store_get ? v->store_get(v->arg, &hold) : NULL;
        const char *bad = store ? reverify(leaf, store, v) : NULL;
        if (v->store_put) {
            v->store_put(hold);
        }
        d.present = bad == NULL;
        d.why = bad ? bad : "";
        if (d.present) {
            struct device_record rec;
            struct err err = { 0 };
            int rc =
                c->store ? device_store_lookup(c->store, d.fingerprint, &rec, &err) : ERR_NOTFOUND;
            if (rc == 0) {
                d.enrolled = true;
                d.revoked = rec.revoked_at != 0;
                memcpy(d.id, rec.id, sizeof d.id);
                memcpy(d.name, rec.name, sizeof d.name);
                memcpy(d.owner, rec.owner, sizeof d.owner);
                if (!d.revoked && now_s - rec.last_seen >= 60) {
                    device_store_seen(c->store, rec.id, now_s);
                }
            } else if (rc != ERR_NOTFOUND) {
                log_error("device", "%s", err.msg);
                d.why = "device registry unavailable";
            } else {
                d.why = c->store ? "not enrolled" : "no device registry (state.sqlite)";
            }
            if (d.revoked) {
                d.why = "revoked";
            }
        }
        e->used = true;
        e->listener = v->listener;
        e->generation = v->generation;
        e->filled_ms = now;
        e->id = d;
    }
    *out = e->id;
    /* Validity is checked on every request: a certificate expiring on an open
     * connection stops counting at its notAfter. */
    if (out->present && (now_s < out->not_before || now_s > out->not_after)) {
        out->present = false;
        out->why = now_s > out->not_after ? "certificate expired" : "certificate not yet valid";
    }
    out->trusted = out->present && out->enrolled && !out->revoked;
    if (!out->present) {
        /* Not a device at all: nothing of the registry's is shown. */
        out->enrolled = out->revoked = false;
        out->id[0] = out->name[0] = out->owner[0] = '\0';
    }
}

char *device_record_json(const struct device_record *r)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:s, s:I, s:I, s:b}", "id",
                          r->id, "name", r->name, "owner", r->owner, "fingerprint", r->fingerprint,
                          "serial", r->serial, "subject", r->subject, "issuer", r->issuer,
                          "enrolled_at", (json_int_t)r->enrolled_at, "enrolled_by", r->enrolled_by,
                          "not_after", (json_int_t)r->not_after, "last_seen",
                          (json_int_t)r->last_seen, "revoked", r->revoked_at != 0);
    if (o && r->revoked_at) {
        json_object_set_new(o, "revoked_at", json_integer(r->revoked_at));
        json_object_set_new(o, "reason", json_string(r->reason));
    }
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}
