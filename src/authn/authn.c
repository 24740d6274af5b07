/* authn/authn.c - the request-level glue of sign-in: the module's lifetime
 * (configuration, providers, the shared state of a process's workers) and its
 * accessors for the proxy (assertion, pages, form-action origins). The reserved
 * endpoints and the continuations that resume them live in the authn_*.c files
 * next to it (authn_int.h is what they share): authn_flow.c classifies a
 * request and resumes continuations, authn_fetch.c holds the discovery, key-set
 * and fleet one-time-value waits, authn_bearer.c identifies by session or
 * bearer JWT, authn_refresh.c refreshes tokens, authn_login.c runs the OIDC
 * sign-in and callback, authn_saml.c the SAML endpoints, authn_logout.c the
 * sign-out and back-channel logout. Discovery, JWKS, token and userinfo
 * fetches are performed by the proxy. */
#include "authn.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "authn_int.h"

#ifndef GATEHOUSE_WEB_DIR
#define GATEHOUSE_WEB_DIR "web/login"
#endif

#define LOGIN_COOKIE "gatehouse_login"

const char *authn_module_name(void)
{
    return "authn";
}

/* ---- configuration ---------------------------------------------------- */

/* Key tables (core/conf.h) of upstream_identity; header names keep their defaults
 * below. */
#define UI_OWN(name)                                                                               \
    {                                                                                              \
        name, CONF_K_OWN, 0, 0, 0, 0, NULL                                                         \
    }
struct assertion_times {
    uint64_t ttl_ms, keep_ms;
};
static const struct conf_key identity_table[] = { UI_OWN("headers"), UI_OWN("assertion") };
static const struct conf_key header_table[] = { UI_OWN("user"), UI_OWN("email"), UI_OWN("groups"),
                                                UI_OWN("device") };
static const struct conf_key assertion_table[] = {
    UI_OWN("header"),
    UI_OWN("key"),
    { "ttl", CONF_K_DURATION, offsetof(struct assertion_times, ttl_ms), 1000, 3600000, 60000,
      NULL },
    UI_OWN("issuer"),
    { "keep", CONF_K_DURATION, offsetof(struct assertion_times, keep_ms), 0, 30ull * 86400000,
      3600000, NULL },
};

/* upstream_identity.headers: the names of the identity headers the backend gets. */
static void parse_identity_headers(struct authn *an, const struct conf_node *root,
                                   struct conf_diag *d)
{
    const struct conf_node *ui = conf_get(root, "upstream_identity");
    const struct conf_node *h = conf_get(ui, "headers");
    const char *v[AUTHN_HDR_COUNT] = { "X-Gatehouse-User", "X-Gatehouse-Email",
                                       "X-Gatehouse-Groups", "X-Gatehouse-Device" };

    if (ui &&
        conf_read_table(d, ui, "\"upstream_identity\"", identity_table,
                        CONF_TABLE_LEN(identity_table), an, NULL) &&
        h &&
        conf_read_table(d, h, "\"upstream_identity.headers\"", header_table,
                        CONF_TABLE_LEN(header_table), an, NULL)) {
        for (size_t i = 0; i < AUTHN_HDR_COUNT; i++) {
            conf_string(d, h, header_table[i].name, &v[i]);
        }
    }
    for (size_t i = 0; i < AUTHN_HDR_COUNT; i++) {
        an->hdr[i] = xstrdup(v[i]);
    }
}

/* The assertion is on whenever there is a key: the configured one, or
 * assertion-es256.pem next to the state database (created when absent). */
static void parse_assertion(struct authn *an, const struct conf_node *root, const char *conf_file,
                            const char *state_db, struct conf_diag *d)
{
    const struct conf_node *ui = conf_get(root, "upstream_identity");
    const struct conf_node *as = ui ? conf_get(ui, "assertion") : NULL;
    const char *header = "X-Gatehouse-Assertion", *key = NULL, *issuer = "gatehouse";
    struct assertion_times t;

    /* The ttl and keep defaults apply without the section too. */
    if (conf_read_table(d, as, "\"upstream_identity.assertion\"", assertion_table,
                        CONF_TABLE_LEN(assertion_table), &t, conf_file) &&
        as != NULL) {
        conf_string(d, as, "header", &header);
        conf_string(d, as, "key", &key);
        conf_string(d, as, "issuer", &issuer);
    }
    uint64_t ttl_ms = t.ttl_ms, keep_ms = t.keep_ms;
    if (key != NULL) {
        an->assertion_key = conf_path_resolve(conf_file, key);
    } else if (state_db != NULL) {
        const char *slash = strrchr(state_db, '/');
        an->assertion_key =
            slash ? xasprintf("%.*s/assertion-es256.pem", (int)(slash - state_db), state_db)
                  : xstrdup("assertion-es256.pem");
    } else {
        return;
    }
    an->assertion_header = xstrdup(header);
    an->assertion_issuer = xstrdup(issuer);
    an->assertion_ttl_s = (int64_t)(ttl_ms / 1000);
    /* A rotated-out key stays published at least as long as its last tokens live. */
    an->assertion_keep_s = (int64_t)(keep_ms / 1000) > an->assertion_ttl_s
                               ? (int64_t)(keep_ms / 1000)
                               : an->assertion_ttl_s;
}

/* One identity_providers[] entry of type saml (saml.c parses it). */
static void saml_parse_entry(struct authn *an, struct conf_diag *d, const struct conf_node *root,
                             const struct conf_node *e, const char *conf_file)
{
    const struct conf_node *pu = conf_get(root, "public_url");
    const char *public_url = pu && pu->type == CONF_SCALAR ? pu->value : NULL;
    struct saml_idp *x = saml_idp_parse(d, e, conf_file, public_url);
    if (x == NULL) {
        return;
    }
    for (size_t j = 0; j < an->nidps + an->nsaml; j++) {
        const char *other =
            j < an->nidps ? an->idps[j].p->id : saml_idp_id(an->saml[j - an->nidps]);
        if (strcmp(other, saml_idp_id(x)) == 0) {
            conf_error(d, conf_get(e, "id"), "identity provider id \"%s\" is used twice", other);
        }
    }
    an->saml = xrealloc(an->saml, (an->nsaml + 1) * sizeof *an->saml);
    an->saml[an->nsaml++] = x;
}

struct authn *authn_new(const struct conf_node *root, const char *conf_file, const char *state_db,
                        struct conf_diag *d)
{
    size_t before = d->count;
    struct authn *an = xcalloc(1, sizeof *an);
    const struct conf_node *list = conf_get(root, "identity_providers");

    /* A list of the wrong type is reported by the proxy's loader. */
    if (list != NULL && list->type == CONF_SEQ) {
        an->idps = xcalloc(list->n ? list->n : 1, sizeof *an->idps);
        for (size_t i = 0; i < list->n; i++) {
            const struct conf_node *e = list->items[i];
            const char *type = "oidc";
            if (!conf_map(d, e, "an \"identity_providers\" item")) {
                continue;
            }
            conf_string(d, e, "type", &type);
            if (strcmp(type, "saml") == 0) {
                saml_parse_entry(an, d, root, e, conf_file);
                continue;
            }
            if (strcmp(type, "oidc") != 0) {
                conf_error(d, conf_get(e, "type"),
                           "identity provider type \"%s\" is not supported (supported: oidc, "
                           "saml)",
                           type);
                continue;
            }
            struct oidc_provider *p = oidc_provider_parse(d, e, conf_file);
            if (p == NULL) {
                continue;
            }
            for (size_t j = 0; j < an->nidps + an->nsaml; j++) {
                const char *other =
                    j < an->nidps ? an->idps[j].p->id : saml_idp_id(an->saml[j - an->nidps]);
                if (strcmp(other, p->id) == 0) {
                    conf_error(d, conf_get(e, "id"), "identity provider id \"%s\" is used twice",
                               p->id);
                }
            }
            for (size_t j = 0; p->bare_user_ids && j < an->nidps; j++) {
                if (an->idps[j].p->bare_user_ids) {
                    conf_error(d, conf_get(e, "bare_user_ids"),
                               "\"bare_user_ids\" is already set on identity provider \"%s\": "
                               "at most one provider may own bare user ids",
                               an->idps[j].p->id);
                }
            }
            struct idp *x = &an->idps[an->nidps++];
            x->p = p;
            atomic_init(&x->meta, NULL);
            pthread_mutex_init(&x->mu, NULL);
        }
    }
    const struct conf_node *sess = conf_get(root, "session");
    session_conf_parse(d, sess, conf_file, &an->sconf);
    spg_conf_parse(d, conf_get(root, "state"), conf_file, &an->sconf.pg);
    /* pages: {dir: web/login} - the sign-in page templates. */
    static const char *const pages_keys[] = { "dir", "show_deny_reason", NULL };
    const struct conf_node *pages = conf_get(root, "pages");
    const char *dir = NULL;
    an->show_deny_reason = true;
    if (pages != NULL && conf_check_keys(d, pages, "\"pages\"", pages_keys)) {
        conf_string(d, pages, "dir", &dir);
        conf_bool(d, pages, "show_deny_reason", &an->show_deny_reason);
    }
    if (dir != NULL) {
        an->pages_dir = conf_path_resolve(conf_file, dir);
    } else {
        /* Tests and packages point at their templates without a config key. */
        const char *env = getenv("GATEHOUSE_WEB_DIR");
        an->pages_dir = xstrdup(env && *env ? env : GATEHOUSE_WEB_DIR);
    }
    for (int tls = 0; tls < 2; tls++) {
        /* The configured name is at most 64 characters (session_conf_parse). */
        char buf[96];
        an->session_name[tls] =
            xstrdup(cookie_wire_name(an->sconf.cookie_name, tls, buf, sizeof buf) ? buf : "");
        an->login_name[tls] =
            xstrdup(cookie_wire_name(LOGIN_COOKIE, tls, buf, sizeof buf) ? buf : "");
    }
    for (int tls = 0; tls < 2; tls++) {
        /* Both spellings: a client may send the other one to reach the backend. */
        const char **n = an->strip_names[tls];
        n[0] = an->session_name[tls];
        n[1] = an->login_name[tls];
        n[2] = an->session_name[!tls];
        n[3] = an->login_name[!tls];
        n[4] = NULL;
    }
    parse_identity_headers(an, root, d);
    parse_assertion(an, root, conf_file, state_db, d);
    an->state_db = state_db ? xstrdup(state_db) : NULL;
    if (d->count != before) {
        authn_free(an);
        return NULL;
    }
    return an;
}

static void rt_borrow(struct authn *an, struct authn_shared *rt)
{
    an->rt = rt;
    an->store = rt->store;
    an->signer = rt->signer;
    an->pages = rt->pages;
    an->replay = rt->replay;
    an->login_key = rt->login_key;
}

static void rt_close(struct authn_shared *rt)
{
    if (rt->closed) {
        return;
    }
    rt->closed = true;
    session_store_close(rt->store);
    assertion_signer_free(rt->signer);
    free(rt->signer_key);
    pages_free(rt->pages);
    oidc_replay_free(rt->replay);
    OPENSSL_cleanse(rt->login_key, sizeof rt->login_key);
}

static void rt_unref(struct authn_shared *rt)
{
    if (rt != NULL && atomic_fetch_sub(&rt->refs, 1) == 1) {
        rt_close(rt);
        free(rt);
    }
}

int authn_start(struct authn *an, struct err *err)
{
    struct authn_shared *rt = xcalloc(1, sizeof *rt);
    atomic_init(&rt->refs, 1);
    rt_borrow(an, rt); /* owned by an from here: authn_free releases it on failure too */
    if (!codec_rand_bytes(rt->login_key, sizeof rt->login_key)) {
        return err_set(err, ERR_CRYPTO, "no randomness for the login cookie key");
    }
    rt->replay = oidc_replay_new(65536);
    struct err e = { 0 };
    rt->pages = pages_load(an->pages_dir, &e);
    if (rt->pages == NULL) {
        return err_set(err, ERR_CONFIG, "pages in %s: %s", an->pages_dir, e.msg);
    }
    /* Opened whenever there is a state database: a reload may add providers. */
    if (an->nidps + an->nsaml > 0 || an->state_db != NULL || an->sconf.pg.conninfo != NULL) {
        if (an->state_db == NULL && an->sconf.pg.conninfo == NULL) {
            return err_set(err, ERR_CONFIG, "sign-in needs \"state: {sqlite: ...}\" for sessions");
        }
        rt->store = session_store_open(an->state_db, &an->sconf, &e);
        if (rt->store == NULL) {
            if (an->sconf.pg.conninfo != NULL) {
                return err_set(err, ERR_IO, "session store (state.postgres): %s", e.msg);
            }
            return err_set(err, ERR_IO, "session store %s: %s", an->state_db, e.msg);
        }
        if (session_store_shared(rt->store)) {
            /* A fleet behind a balancer without affinity: the IdP's answer
             * may reach another node than the one that sent the user there. */
            session_store_derive_key(rt->store, "gatehouse login state v1", rt->login_key);
        }
    }
    if (an->assertion_key != NULL) {
        rt->signer =
            assertion_signer_open(an->assertion_key, an->assertion_issuer, an->assertion_ttl_s, &e);
        if (rt->signer == NULL) {
            return err_set(err, ERR_CRYPTO, "identity assertion key %s: %s", an->assertion_key,
                           e.msg);
        }
        rt->signer_key = xstrdup(an->assertion_key);
    }
    rt_borrow(an, rt);
    return 0;
}

/* `gatehouse check`: exists and loads, or can be created by serve (whose
 * access_start makes the state database's directory, one level). */
static bool check_creatable(struct conf_diag *d, const struct conf_node *n, const char *what,
                            const char *path)
{
    char *copy = xstrdup(path), *slash = strrchr(copy, '/');
    const char *dir = slash ? (slash == copy ? "/" : copy) : ".";
    if (slash && slash != copy) {
        *slash = '\0';
    }
    bool ok = access(dir, W_OK) == 0;
    if (!ok && errno == ENOENT) {
        char *up = xstrdup(dir), *s2 = strrchr(up, '/');
        ok = access(s2 ? (s2 == up ? "/" : (*s2 = '\0', up)) : ".", W_OK) == 0;
        free(up);
    }
    if (!ok) {
        conf_error(d, n, "cannot create %s %s: %s", what, path, strerror(errno));
    }
    free(copy);
    return ok;
}

void authn_check_files(const struct authn *an, const struct conf_node *root, struct conf_diag *d)
{
    struct err e = { 0 };
    const struct conf_node *pages = conf_get(root, "pages");
    const struct conf_node *state = conf_get(conf_get(root, "state"), "sqlite");
    struct pages *p = pages_load(an->pages_dir, &e);
    if (p == NULL) {
        conf_error(d, pages ? conf_get(pages, "dir") : NULL, "pages in %s: %s", an->pages_dir,
                   e.msg);
    }
    pages_free(p);
    if (an->assertion_key != NULL) {
        const struct conf_node *as = conf_get(conf_get(root, "upstream_identity"), "assertion");
        const struct conf_node *n = conf_get(as, "key") ? conf_get(as, "key") : state;
        const char *alg = NULL;
        if (access(an->assertion_key, F_OK) != 0) {
            check_creatable(d, n, "identity assertion key", an->assertion_key);
        } else {
            cjose_jwk_t *k = keys_load_pem(an->assertion_key, &alg, &e);
            if (k == NULL) {
                conf_error(d, n, "identity assertion key %s: %s", an->assertion_key, e.msg);
            } else if (strcmp(alg, "ES256") != 0) {
                conf_error(d, n, "identity assertion key %s: must be an EC P-256 key",
                           an->assertion_key);
            }
            cjose_jwk_release(k);
        }
    }
    if (an->sconf.pg.conninfo != NULL) {
        const struct conf_node *st = conf_get(root, "state");
        spg_conf_check(d, st, &an->sconf.pg);
        if (an->state_db == NULL && an->sconf.key_file == NULL) {
            conf_error(d, conf_get(st, "postgres"),
                       "state.postgres without state.sqlite needs session.key_file (the same "
                       "key on every node)");
        }
    }
    if (an->state_db != NULL || an->sconf.key_file != NULL) {
        const struct conf_node *sess = conf_get(root, "session");
        const struct conf_node *n = conf_get(sess, "key_file") ? conf_get(sess, "key_file") : state;
        char *copy = xstrdup(an->state_db ? an->state_db : ""), *slash = strrchr(copy, '/');
        char *key = an->sconf.key_file ? xstrdup(an->sconf.key_file)
                    : slash            ? (*slash = '\0', xasprintf("%s/session.key", copy))
                                       : xstrdup("session.key");
        unsigned char k32[32];
        if (access(key, F_OK) != 0) {
            check_creatable(d, n, "session key", key);
        } else if (keys_load_secret32(key, false, k32, &e) != 0) {
            conf_error(d, n, "session key: %s", e.msg);
        }
        OPENSSL_cleanse(k32, sizeof k32);
        free(key);
        free(copy);
        if (an->state_db == NULL) {
            /* PostgreSQL only: no local database to check. */
        } else if (access(an->state_db, F_OK) != 0) {
            check_creatable(d, state, "state database", an->state_db);
        } else if (!session_db_readable(an->state_db, &e)) {
            conf_error(d, state, "state database %s: %s", an->state_db, e.msg);
        }
    }
}

void authn_settings(const struct authn *an, struct authn_settings *out)
{
    *out = (struct authn_settings){
        .pages_dir = an->pages_dir,
        .assertion_key = an->assertion_key,
        .assertion_header = an->assertion_header,
        .assertion_issuer = an->assertion_issuer,
        .assertion_ttl_s = an->assertion_ttl_s,
        .assertion_keep_s = an->assertion_keep_s,
        .session = &an->sconf,
        .nidps = an->nidps,
        .show_deny_reason = an->show_deny_reason,
    };
    for (size_t i = 0; i < AUTHN_HDR_COUNT; i++) {
        out->identity_headers[i] = an->hdr[i];
    }
}

const struct oidc_provider *authn_provider(const struct authn *an, size_t i)
{
    return i < an->nidps ? an->idps[i].p : NULL;
}

struct authn_shared *authn_shared_ref(struct authn *an)
{
    if (an->rt == NULL) {
        return NULL;
    }
    atomic_fetch_add(&an->rt->refs, 1);
    return an->rt;
}

bool authn_shared_ready(struct authn_shared *sh)
{
    return sh == NULL || session_store_ready(sh->store);
}

void authn_shared_unref(struct authn_shared *sh)
{
    rt_unref(sh);
}

void authn_share(struct authn *an, struct authn_shared *sh)
{
    if (sh == NULL || an->rt != NULL) {
        return;
    }
    /* Key rotation: a reload that names another assertion key file switches to
     * it; the previous key stays in /.gatehouse/jwks.json for `keep`, so
     * backends still verify the assertions it signed. */
    if (sh->signer != NULL && an->assertion_key != NULL &&
        strcmp(an->assertion_key, sh->signer_key) != 0) {
        struct err e = { 0 };
        if (assertion_signer_rotate(sh->signer, an->assertion_key, (int64_t)time(NULL),
                                    an->assertion_keep_s, &e) == 0) {
            log_info("authn",
                     "identity assertion key rotated to %s; the previous key stays "
                     "published for %llds",
                     an->assertion_key, (long long)an->assertion_keep_s);
            free(sh->signer_key);
            sh->signer_key = xstrdup(an->assertion_key);
        } else {
            log_error("authn", "identity assertion key %s refused, still signing with %s: %s",
                      an->assertion_key, sh->signer_key, e.msg);
        }
    }
    atomic_fetch_add(&sh->refs, 1);
    rt_borrow(an, sh);
}

void authn_shared_shutdown(struct authn_shared *sh)
{
    if (sh != NULL) {
        rt_close(sh);
    }
}

void authn_free(struct authn *an)
{
    if (an == NULL) {
        return;
    }
    for (size_t i = 0; i < an->nidps; i++) {
        oidc_provider_free(an->idps[i].p);
        oidc_metadata_free(atomic_load(&an->idps[i].meta));
        jwks_unref(an->idps[i].jwks);
        pthread_mutex_destroy(&an->idps[i].mu);
    }
    free(an->idps);
    for (size_t i = 0; i < an->nsaml; i++) {
        saml_idp_free(an->saml[i]);
    }
    free(an->saml);
    rt_unref(an->rt);
    session_conf_fini(&an->sconf);
    free(an->state_db);
    free(an->assertion_key);
    free(an->assertion_header);
    free(an->assertion_issuer);
    free(an->pages_dir);
    for (size_t i = 0; i < AUTHN_HDR_COUNT; i++) {
        free(an->hdr[i]);
    }
    for (int tls = 0; tls < 2; tls++) {
        free(an->session_name[tls]);
        free(an->login_name[tls]);
    }
    free(an);
}

/* ---- upstream identity ------------------------------------------------ */

const char *authn_assertion(struct authn *an, const struct authn_identity *id, const char *route,
                            const char *device, int64_t now_ms, struct arena *a)
{
    if (an->signer == NULL || id == NULL || id->user_key == NULL) {
        return NULL;
    }
    struct assertion_claims c = { .aud = route,
                                  .sub = id->user ? id->user : id->user_key,
                                  .email = id->email,
                                  .groups_json = id->attrs ? id->attrs->groups_json : NULL,
                                  .sid = id->session_id,
                                  .device = device };
    struct err err = { 0 };
    const char *t = assertion_get(an->signer, &c, now_ms / 1000, a, &err);
    if (t == NULL) {
        log_error(MOD, "identity assertion not signed: %s", err.msg);
    }
    return t;
}

const struct pages *authn_pages(const struct authn *an)
{
    return an->pages;
}

/* Appends url's origin to b unless b has it already. Only characters that
 * cannot end a CSP source expression are taken (a URL with others is left
 * out: the policy then refuses that destination rather than break). */
static void add_origin(struct sbuf *b, const char *url)
{
    const char *sep = url ? strstr(url, "://") : NULL;

    if (!sep) {
        return;
    }
    size_t n = (size_t)(sep - url) + 3;
    while (url[n] && url[n] != '/' && url[n] != '?' && url[n] != '#') {
        char ch = url[n];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']')) {
            return;
        }
        n++;
    }
    if (n == (size_t)(sep - url) + 3) {
        return;
    }
    for (size_t i = 0; i + n <= b->len; i++) {
        if ((i == 0 || b->p[i - 1] == ' ') && memcmp(b->p + i, url, n) == 0 &&
            (i + n == b->len || b->p[i + n] == ' ')) {
            return;
        }
    }
    if (b->len > 0) {
        codec_buf_add(b, " ", 1);
    }
    codec_buf_add(b, url, n);
}

const char *authn_form_action_origins(const struct authn *an, struct arena *a)
{
    struct sbuf b = { 0 };

    for (size_t i = 0; an && i < an->nidps; i++) {
        const struct oidc_metadata *m = atomic_load(&an->idps[i].meta);
        add_origin(&b, an->idps[i].p->issuer);
        if (m) {
            add_origin(&b, m->authorization_endpoint);
            add_origin(&b, m->end_session_endpoint);
        }
    }
    /* A sign-out form's answer sends the browser on to a SAML IdP's logout
     * service: form-action covers redirects after a submission too. */
    for (size_t i = 0; an && i < an->nsaml; i++) {
        char *slo = saml_idp_slo_url_dup(an->saml[i]);
        add_origin(&b, slo);
        free(slo);
    }
    const char *s = arena_strndup(a, b.p ? b.p : "", b.len);
    codec_buf_fini(&b);
    return s;
}

const char *authn_assertion_header(const struct authn *an)
{
    return an->signer ? an->assertion_header : NULL;
}

struct str authn_strip_cookies(const struct authn *an, struct str cookie_header, bool tls,
                               struct arena *a)
{
    return cookie_strip(a, cookie_header, an->strip_names[tls]);
}
