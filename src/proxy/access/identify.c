/* proxy/access/identify.c - who is calling. authn does the protocol work
 * (session cookie, bearer JWT, the sign-in flow); this step adapts the request
 * to it, performs the identity provider calls it asks for (the request
 * suspended meanwhile) and turns its answer, plus every further identity
 * source (identity_sources below), into the struct identity the later steps
 * read. A new source (the TLS client certificate's device, another sign-in
 * protocol) is one more entry in identity_sources: decide, record and forward
 * see it through struct identity and struct policy_input without change. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "access_int.h"
#include "authn/codec.h"
#include "authn/device.h"
#include "authn/oidc.h"
#include "proxy/route.h"

#define IDP_FETCH_TIMEOUT_MS 10000

static bool is_tls(const struct request *r)
{
    return r->scheme && strcmp(r->scheme, "https") == 0;
}

/* Host names as routes spell them: letters, digits, '-', '.', or an IPv6
 * literal in brackets; anything else is not a host we build URLs from. */
static bool plain_host(struct str h)
{
    if (h.len == 0 || h.len > 253) {
        return false;
    }
    bool v6 = h.p[0] == '[';
    for (size_t i = 0; i < h.len; i++) {
        unsigned char ch = (unsigned char)h.p[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
                  (v6 && (ch == ':' || ch == '[' || ch == ']'));
        if (!ok) {
            return false;
        }
    }
    return true;
}

/* Does some route name this host (exactly, or by its wildcard)? */
static bool host_named(const struct config *cfg, struct str host)
{
    for (size_t i = 0; cfg && i < cfg->nroutes; i++) {
        const struct route_conf *rc = &cfg->routes[i];
        if (!rc->host) {
            continue;
        }
        size_t n = strlen(rc->host);
        if (rc->host_wildcard ? host.len > n && str_ieq((struct str){ host.p + host.len - n, n },
                                                        (struct str){ rc->host, n })
                              : str_ieq_cstr(host, rc->host)) {
            return true;
        }
    }
    return false;
}

/* The origin browsers use for this request's route, from configuration (see
 * authn_req.public_origin); NULL when no route names the Host. */
static const char *public_origin(const struct request *r)
{
    const struct route_conf *rc = r->route;
    const struct listener_conf *lc = request_listener(r);
    struct str host = route_host_strip(r->host);
    bool tls = is_tls(r);

    if (rc && rc->public_url) {
        return rc->public_url;
    }
    if (rc && rc->host && !rc->host_wildcard) {
        host = str_from(rc->host);
    } else if (rc && rc->host_wildcard) {
        /* The Host matched the route's wildcard: it is named by it. */
    } else if (lc && lc->public_url) {
        return lc->public_url;
    } else if (!host_named(r->cfg, host)) {
        return NULL;
    }
    if (!plain_host(host)) {
        return NULL;
    }
    uint16_t port = lc ? lc->port : 0;
    char *o =
        (port == 0 || port == (tls ? 443 : 80))
            ? arena_printf(r->arena, "%s://%.*s", tls ? "https" : "http", (int)host.len, host.p)
            : arena_printf(r->arena, "%s://%.*s:%u", tls ? "https" : "http", (int)host.len, host.p,
                           (unsigned)port);
    for (char *p = o ? o + (tls ? 8 : 7) : NULL; p && *p && *p != ':'; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char)(*p - 'A' + 'a');
        }
    }
    return o;
}

static void authn_req_fill(struct exchange *x)
{
    struct request *r = x->r;
    struct authn_req *a = &x->ids.req;
    size_t n = 0;
    /* The headers authn reads, each the first of its name (as request_header
     * finds it), and every Cookie header: one pass, a name compared only when
     * its length matches. */
    struct str *const want[] = { &a->authorization, &a->accept, &a->x_requested_with,
                                 &a->sec_fetch_site, &a->origin };
    static const struct str names[] = {
        { "authorization", sizeof "authorization" - 1 },
        { "accept", sizeof "accept" - 1 },
        { "x-requested-with", sizeof "x-requested-with" - 1 },
        { "sec-fetch-site", sizeof "sec-fetch-site" - 1 },
        { "origin", sizeof "origin" - 1 },
    };
    bool found[sizeof names / sizeof names[0]] = { false };

    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        *want[k] = STR_NULL;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        struct str name = r->headers[i].name;
        if (name.len == 6 && str_ieq(name, STR("cookie"))) {
            if (n < ACCESS_MAX_COOKIES) {
                x->ids.cookies[n++] = r->headers[i].value;
            }
            continue;
        }
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            if (name.len == names[k].len && !found[k] && str_ieq(name, names[k])) {
                *want[k] = r->headers[i].value;
                found[k] = true;
                break;
            }
        }
    }
    a->method = r->method;
    a->host = r->host; /* with the port: the redirect URI needs it */
    a->path = r->path;
    a->query = r->query;
    a->cookies = x->ids.cookies;
    a->ncookies = n;
    a->tls = is_tls(r);
    if (x->reserved) {
        a->request_origin = arena_printf(r->arena, "%s://%.*s", a->tls ? "https" : "http",
                                         (int)r->host.len, r->host.p);
        a->public_origin = public_origin(r);
    }
    a->route_idps = x->route ? x->route->idps : NULL;
    a->nroute_idps = x->route ? x->route->nidps : 0;
    a->request_id = r->id;
    a->client_ip = r->client_ip;
    a->now_ms = access_wall_us() / 1000;
}

/* ---- identity sources ---------------------------------------------------------- */

/* One source of facts about the caller. begin() (optional) runs once per
 * request before authn is asked: it reads the request and may add to authn's
 * request (x->ids.req). fill() sets its part of id from what begin() read and
 * what authn found (x->ids.out); it may run more than once. */
struct identity_source {
    const char *name;
    void (*begin)(struct exchange *x);
    void (*fill)(const struct exchange *x, struct identity *id);
};

/* The user, from authn: session cookie or bearer token. */
static void source_authn(const struct exchange *x, struct identity *id)
{
    const struct authn_identity *a = &x->ids.out.id;

    id->bearer = a->bearer;
    if (!a->user_key) {
        return;
    }
    id->authenticated = true;
    id->user = a->user ? a->user : a->user_key;
    id->user_key = a->user_key;
    id->email = a->email;
    id->name = a->name;
    id->idp = a->idp;
    id->session = a->session_id;
    id->authn = a;
}

/* The device, from the TLS client certificate: checked on every request
 * (client CA, CRL and the device registry, through authn/device.c's
 * per-worker cache), so a revocation reaches keep-alive connections and
 * resumed TLS sessions. Strings are copied into the request's arena. */
static void device_read(struct request *r, struct authn_device *out)
{
    struct request_client_tls t;
    struct device_identity *d;

    if (!request_client_tls(r, &t) || !(d = arena_zalloc(r->arena, sizeof *d))) {
        return;
    }
    struct device_verify v = { .store_get = request_client_ca_get,
                               .store_put = request_client_ca_put,
                               .arg = (void *)(uintptr_t)t.listener,
                               .generation = t.generation,
                               .listener = (unsigned)t.listener,
                               .depth = t.verify_depth,
                               .chain = t.chain };
    device_trust(r->peer_cert, &v, (int64_t)time(NULL), d);
    if (!d->present) {
        log_emit(LOG_INFO, "device", r->id, NULL, "client certificate %.16s not accepted: %s",
                 d->fingerprint, d->why);
        return;
    }
    struct arena *a = r->arena;
    bool enrolled = d->enrolled;
    *out = (struct authn_device){
        .present = true,
        .trusted = d->trusted,
        .id = enrolled ? arena_strdup(a, d->id) : NULL,
        .owner = enrolled ? arena_strdup(a, d->owner) : NULL,
        .name = enrolled ? arena_strdup(a, d->name) : NULL,
        .subject = arena_strdup(a, d->subject),
        .issuer = arena_strdup(a, d->issuer),
        .serial = arena_strdup(a, d->serial),
        .fingerprint = arena_strdup(a, d->fingerprint),
        .san = d->san[0] ? arena_strdup(a, d->san) : NULL,
        .why = d->why && d->why[0] ? d->why : NULL,
    };
    if ((enrolled && (!out->id || !out->owner || !out->name)) || !out->subject || !out->issuer ||
        !out->serial || !out->fingerprint) {
        /* Out of request memory: no device rather than a partial one. */
        *out = (struct authn_device){ 0 };
        log_emit(LOG_WARN, "device", r->id, NULL, "device identity dropped: request too large");
    }
}

/* RFC 8705: base64url SHA-256 of the client certificate's DER (arena), or NULL. */
static const char *cert_x5t(struct request *r)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    if (!r->peer_cert || X509_digest(r->peer_cert, EVP_sha256(), md, &n) != 1) {
        return NULL;
    }
    char *s = codec_b64url_encode(md, n);
    const char *out = s ? arena_strdup(r->arena, s) : NULL;
    free(s);
    return out;
}

static void source_device_begin(struct exchange *x)
{
    struct request *r = x->r;

    device_read(r, &x->ids.device);
    if (x->ids.req.authorization.len) {
        x->ids.req.client_cert_x5t = cert_x5t(r); /* RFC 8705 certificate-bound tokens */
    }
    if (x->reserved) {
        x->ids.req.device = &x->ids.device; /* /.gatehouse/me shows it */
    }
}

static void source_device(const struct exchange *x, struct identity *id)
{
    id->device = x->ids.device;
}

static const struct identity_source identity_sources[] = {
    { "authn", NULL, source_authn },
    { "device", source_device_begin, source_device },
};

void identify_fill(struct exchange *x)
{
    memset(&x->id, 0, sizeof x->id);
    for (size_t i = 0; i < sizeof identity_sources / sizeof identity_sources[0]; i++) {
        identity_sources[i].fill(x, &x->id);
    }
}

bool identify_host_misdirected(const struct request *r)
{
    if (!r->sni || !is_tls(r) || r->hostname.len == 0) {
        return false;
    }
    struct str h = access_host_only(r->hostname), sni = str_from(r->sni);
    if (sni.len && sni.p[sni.len - 1] == '.') {
        sni.len--;
    }
    return !str_ieq(h, sni);
}

/* ---- the authn exchange ---------------------------------------------------------- */

static enum access_step idp_fetch(struct exchange *x);
static enum access_step store_wait(struct exchange *x);

static enum access_step step_done(struct exchange *x, enum authn_step st)
{
    if (st == AUTHN_NEED_FETCH) {
        return idp_fetch(x);
    }
    if (st == AUTHN_NEED_WAIT) {
        return store_wait(x);
    }
    return x->ids.done(x, st);
}

static void got_idp(struct exchange *x, const struct fetch_resp *resp)
{
    struct str body = resp->failed ? STR_NULL : (struct str){ resp->body, resp->body_len };

    if (resp->failed) {
        log_emit(LOG_WARN, "authn", x->r->id, NULL, "identity provider call failed: %s",
                 resp->error);
    }
    enum authn_step st = authn_resume(x->conf->an, &x->ids.req, x->r->arena, &x->ids.out,
                                      resp->failed ? 0 : (int)resp->status, body);
    exchange_finish(x, step_done(x, st));
}

/* Performs the identity provider call authn asked for; its answer goes back
 * to authn_resume on this loop. One that cannot start is a failed call. */
static enum access_step idp_fetch(struct exchange *x)
{
    const struct authn_fetch *f = &x->ids.out.fetch;
    struct fetch_req fr = { .method = f->method,
                            .url = f->url,
                            .headers = f->headers,
                            .body = f->body,
                            .body_len = f->body ? f->body_len : 0,
                            .timeout_ms = IDP_FETCH_TIMEOUT_MS };
    char err[256];

    if (exchange_fetch(x, &fr, got_idp, err)) {
        return ACCESS_PENDING;
    }
    log_emit(LOG_WARN, "authn", x->r->id, NULL, "identity provider call not started: %s", err);
    enum authn_step st =
        authn_resume(x->conf->an, &x->ids.req, x->r->arena, &x->ids.out, 0, STR_NULL);
    return step_done(x, st);
}

static void got_store(struct exchange *x, const struct fetch_resp *resp)
{
    if (resp->failed) {
        log_emit(LOG_WARN, "authn", x->r->id, NULL, "shared state store: %s", resp->error);
    }
    enum authn_step st = authn_resume(x->conf->an, &x->ids.req, x->r->arena, &x->ids.out,
                                      resp->failed ? 0 : 200, STR_NULL);
    exchange_finish(x, step_done(x, st));
}

/* authn waits for the fleet's database (a one-time value), answered on a
 * thread of its own: the request is suspended, the loop serves the others. */
static enum access_step store_wait(struct exchange *x)
{
    char err[256];

    if (exchange_wait(x, x->ids.out.wait.fd, x->ids.out.wait.timeout_ms, got_store, err)) {
        return ACCESS_PENDING;
    }
    log_emit(LOG_WARN, "authn", x->r->id, NULL, "shared state store wait not started: %s", err);
    enum authn_step st =
        authn_resume(x->conf->an, &x->ids.req, x->r->arena, &x->ids.out, 0, STR_NULL);
    return step_done(x, st);
}

enum access_step identify(struct exchange *x, struct str body, identified_fn *done)
{
    authn_req_fill(x);
    for (size_t i = 0; i < sizeof identity_sources / sizeof identity_sources[0]; i++) {
        if (identity_sources[i].begin) {
            identity_sources[i].begin(x);
        }
    }
    x->ids.req.body = body;
    x->ids.done = done;
    return step_done(x, authn_check(x->conf->an, &x->ids.req, x->r->arena, &x->ids.out));
}
