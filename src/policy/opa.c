/* policy/opa.c - the OPA criterion's local half: the `opa:` config section, the
 * documented input document POSTed to <url>/v1/data/<path>, the reading of OPA's
 * Data API answer, and a TTL cache keyed by (path, input). The HTTP exchange
 * itself is the proxy's (libcurl multi on the event loop): no sockets here. */
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_int.h"

static const char *const opa_keys[] = { "url", "timeout", "cache_ttl", "on_error", NULL };

bool opa_conf_parse(const struct conf_node *root, struct conf_diag *d, struct opa_conf *out)
{
    memset(out, 0, sizeof *out);
    out->timeout_ms = 200;
    out->cache_ttl_ms = 5000;
    const struct conf_node *o = conf_get(root, "opa");
    if (!o) {
        return true;
    }
    if (!conf_check_keys(d, o, "opa", opa_keys)) {
        return false;
    }
    const char *url = NULL, *on_error = NULL;
    bool ok = conf_string(d, o, "url", &url) &&
              conf_duration_ms(d, o, "timeout", 1, 60000, &out->timeout_ms) &&
              conf_duration_ms(d, o, "cache_ttl", 0, 86400000, &out->cache_ttl_ms) &&
              conf_string(d, o, "on_error", &on_error);
    if (!ok) {
        return false;
    }
    if (!url) {
        conf_error(d, o, "\"opa\" needs a \"url\"");
        return false;
    }
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
        conf_error(d, conf_get(o, "url"), "\"url\" must be an http or https URL, got \"%s\"", url);
        return false;
    }
    if (on_error) {
        if (strcmp(on_error, "deny") == 0) {
            out->on_error = OPA_ON_ERROR_DENY;
        } else if (strcmp(on_error, "allow") == 0) {
            out->on_error = OPA_ON_ERROR_ALLOW;
        } else {
            conf_error(d, conf_get(o, "on_error"), "\"on_error\" must be deny or allow, got \"%s\"",
                       on_error);
            return false;
        }
    }
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/') {
        n--;
    }
    out->url = xstrndup(url, n);
    return true;
}

void opa_conf_fini(struct opa_conf *c)
{
    free(c->url);
    c->url = NULL;
}

char *opa_request_url(const struct opa_conf *c, const char *path)
{
    return xasprintf("%s/v1/data/%s", c->url ? c->url : "", path);
}

static json_t *jstr(struct str s)
{
    return json_stringn(s.p ? s.p : "", s.len);
}

/* Headers that carry credentials or differ on every request (they would defeat the
 * cache) never go to OPA. */
static bool header_sent(struct str name)
{
    static const char *const skip[] = { "authorization", "proxy-authorization", "cookie",
                                        "x-request-id",  "traceparent",         NULL };
    for (size_t i = 0; skip[i]; i++) {
        if (str_ieq_cstr(name, skip[i])) {
            return false;
        }
    }
    return !(name.len >= 12 && strncasecmp(name.p, "x-gatehouse-", 12) == 0);
}

char *opa_input_json(const struct policy_input *in)
{
    json_t *user = json_object();
    json_object_set_new(user, "authenticated", json_boolean(in->authenticated));
    json_object_set_new(user, "id", jstr(in->user));
    json_object_set_new(user, "email", jstr(in->email));
    json_object_set_new(user, "idp", jstr(in->idp));
    json_t *groups = json_array();
    for (size_t i = 0; i < in->ngroups; i++) {
        json_array_append_new(groups, jstr(in->groups[i]));
    }
    json_object_set_new(user, "groups", groups);
    json_t *claims = json_object();
    for (size_t i = 0; i < in->nclaims; i++) {
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)in->claims[i].name.len, in->claims[i].name.p);
        json_t *prev = json_object_get(claims, name);
        json_t *v = jstr(in->claims[i].value);
        if (!prev) {
            json_object_set_new(claims, name, v);
        } else if (json_is_array(prev)) {
            json_array_append_new(prev, v); /* repeated claim: a list of its values */
        } else {
            json_t *arr = json_array();
            json_array_append(arr, prev);
            json_array_append_new(arr, v);
            json_object_set_new(claims, name, arr);
        }
    }
    json_object_set_new(user, "claims", claims);

    json_t *dev = json_object();
    json_object_set_new(dev, "present", json_boolean(in->device.present));
    json_object_set_new(dev, "trusted", json_boolean(in->device.present && in->device.trusted));
    json_object_set_new(dev, "id", jstr(in->device.id));
    json_object_set_new(dev, "owner", jstr(in->device.owner));
    json_object_set_new(dev, "subject", jstr(in->device.subject));
    json_object_set_new(dev, "issuer", jstr(in->device.issuer));
    json_object_set_new(dev, "serial", jstr(in->device.serial));
    json_object_set_new(dev, "fingerprint", jstr(in->device.fingerprint));
    json_object_set_new(dev, "san", jstr(in->device.san));

    json_t *req = json_object();
    json_object_set_new(req, "method", jstr(in->method));
    json_object_set_new(req, "host", jstr(in->host));
    json_object_set_new(req, "path", jstr(in->path));
    char ip[64] = "";
    if (in->client_ip.family) {
        struct cidr c = { .family = in->client_ip.family,
                          .bits = in->client_ip.family == 4 ? 32 : 128 };
        memcpy(c.addr, in->client_ip.addr, 16);
        policy_ip_format_cidr(&c, ip, sizeof ip);
        *strchr(ip, '/') = '\0';
    }
    json_object_set_new(req, "client_ip", json_string(ip));
    json_t *hdrs = json_object();
    for (size_t i = 0; i < in->nheaders; i++) {
        if (!header_sent(in->headers[i].name)) {
            continue;
        }
        char name[128];
        size_t n =
            in->headers[i].name.len < sizeof name - 1 ? in->headers[i].name.len : sizeof name - 1;
        for (size_t k = 0; k < n; k++) {
            char ch = in->headers[i].name.p[k];
            name[k] = (char)((ch >= 'A' && ch <= 'Z') ? ch + 32 : ch);
        }
        name[n] = '\0';
        json_object_set_new(hdrs, name, jstr(in->headers[i].value));
    }
    json_object_set_new(req, "headers", hdrs);

    json_t *input = json_object();
    json_object_set_new(input, "user", user);
    json_object_set_new(input, "device", dev);
    json_object_set_new(input, "request", req);
    json_object_set_new(input, "route", jstr(in->route));
    json_t *doc = json_object();
    json_object_set_new(doc, "input", input);
    /* Sorted and compact: the same input always gives the same bytes (the cache key). */
    char *s = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    if (!s) {
        abort(); /* jansson fails only on OOM here */
    }
    return s;
}

int opa_response_parse(const char *body, size_t len, bool *allow, char *reason, size_t reason_size,
                       struct err *err)
{
    json_error_t je;
    *allow = false;
    if (reason_size) {
        reason[0] = '\0';
    }
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!doc || !json_is_object(doc)) {
        json_decref(doc);
        return err_set(err, ERR_PARSE, "OPA answer is not a JSON object");
    }
    /* No "result": the rule is undefined for this input, which denies. */
    json_t *res = json_object_get(doc, "result");
    if (json_is_boolean(res)) {
        *allow = json_is_true(res);
    } else if (json_is_object(res)) {
        json_t *a = json_object_get(res, "allow");
        json_t *r = json_object_get(res, "reason");
        *allow = json_is_true(a);
        if (json_is_string(r) && reason_size) {
            snprintf(reason, reason_size, "%s", json_string_value(r));
        }
    }
    json_decref(doc);
    return 0;
}

bool opa_answer_http(const struct opa_conf *c, struct policy_result *r, bool transport_error,
                     long status, const char *body, size_t len, bool *allow)
{
    char reason[128];
    bool a = false;
    if (!transport_error && status == 200 &&
        opa_response_parse(body ? body : "", body ? len : 0, &a, reason, sizeof reason, NULL) ==
            0) {
        policy_opa_answer(r, a, reason[0] ? reason : NULL);
        if (allow) {
            *allow = a;
        }
        return false;
    }
    /* Fail closed unless the admin chose otherwise for this deployment. */
    a = c->on_error == OPA_ON_ERROR_ALLOW;
    policy_opa_answer(r, a, a ? "OPA unavailable (on_error: allow)" : "OPA unavailable");
    if (allow) {
        *allow = a;
    }
    return true;
}

/* ---- cache ---- */

struct opa_entry {
    unsigned char key[32];
    bool used, allow;
    uint64_t expires_ms;
    char reason[128];
};

struct opa_cache {
    pthread_mutex_t mu;
    size_t n;
    struct opa_entry *e;
};

struct opa_cache *opa_cache_new(size_t max_entries)
{
    struct opa_cache *c = xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->n = max_entries ? max_entries : 1;
    c->e = xcalloc(c->n, sizeof *c->e);
    return c;
}

void opa_cache_free(struct opa_cache *c)
{
    if (!c) {
        return;
    }
    pthread_mutex_destroy(&c->mu);
    free(c->e);
    free(c);
}

static void cache_key(const char *path, const char *input, unsigned char out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 32;
    if (!md) {
        abort();
    }
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, path, strlen(path) + 1); /* the NUL separates path from input */
    EVP_DigestUpdate(md, input, strlen(input));
    EVP_DigestFinal_ex(md, out, &n);
    EVP_MD_CTX_free(md);
}

/* Direct-mapped: a colliding newer answer replaces the older one. */
static struct opa_entry *slot(struct opa_cache *c, const unsigned char key[32])
{
    uint64_t h;
    memcpy(&h, key, sizeof h);
    return &c->e[h % c->n];
}

bool opa_cache_get(struct opa_cache *c, const char *path, const char *input_json, uint64_t now_ms,
                   bool *allow, char *reason, size_t reason_size)
{
    unsigned char key[32];
    bool hit = false;
    cache_key(path, input_json, key);
    pthread_mutex_lock(&c->mu);
    struct opa_entry *e = slot(c, key);
    if (e->used && memcmp(e->key, key, 32) == 0 && now_ms < e->expires_ms) {
        *allow = e->allow;
        if (reason_size) {
            snprintf(reason, reason_size, "%s", e->reason);
        }
        hit = true;
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

void opa_cache_put(struct opa_cache *c, const char *path, const char *input_json, bool allow,
                   const char *reason, uint64_t now_ms, uint64_t ttl_ms)
{
    unsigned char key[32];
    if (ttl_ms == 0) {
        return;
    }
    cache_key(path, input_json, key);
    pthread_mutex_lock(&c->mu);
    struct opa_entry *e = slot(c, key);
    memcpy(e->key, key, 32);
    e->used = true;
    e->allow = allow;
    e->expires_ms = now_ms + ttl_ms;
    snprintf(e->reason, sizeof e->reason, "%s", reason ? reason : "");
    pthread_mutex_unlock(&c->mu);
}
