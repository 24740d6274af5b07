/* authn/authn.c - the request-level glue of sign-in: routes reserved paths,
 * identifies callers by bearer JWT or session cookie, and runs the OIDC login,
 * callback, refresh, logout and back-channel logout as small continuations
 * (discovery, JWKS, token, userinfo fetches are performed by the proxy).
 * Provider metadata and key sets are cached per provider; a key set is
 * re-fetched on an unknown kid at most once per jwks_refresh_min_interval.
 * Over 1,200 lines: every reserved endpoint's continuation lives here next to
 * the state machine that resumes it; splitting it per endpoint is planned with
 * the sign-in protocols that add endpoints.
 */
#include "authn.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "assertion.h"
#include "attrs.h"
#include "codec.h"
#include "cookie.h"
#include "jwt.h"
#include "keys.h"
#include "oidc.h"
#include "page.h"
#include "saml.h"
#include "session.h"
#include "session_pg.h"

#ifndef GATEHOUSE_WEB_DIR
#define GATEHOUSE_WEB_DIR "web/login"
#endif

#define LOGIN_COOKIE "gatehouse_login"
#define MOD "authn"

const char *authn_module_name(void)
{
    return "authn";
}

struct idp {
    struct oidc_provider *p;
    _Atomic(struct oidc_metadata *) meta; /* set once, never replaced while serving */
    pthread_mutex_t mu;                    /* guards jwks and jwks_fetched_ms */
    struct jwks *jwks;
    int64_t jwks_fetched_ms;
};

/* What outlives a config snapshot: the session store, the assertion key, the
 * page templates, the replay cache and the login cookie key. A reloaded
 * snapshot shares the running one's (authn_share), so sessions and sign-ins
 * in flight survive a reload. */
struct authn_shared {
    atomic_int refs;
    bool closed;
    struct session_store *store;
    struct assertion_signer *signer;
    char *signer_key;             /* the key file the signer uses now */
    struct pages *pages;
    struct oidc_replay *replay;
    unsigned char login_key[32];  /* seals login cookies; per process start */
};

struct authn {
    struct authn_shared *rt;          /* owned reference; the fields below borrow from it */
    struct idp *idps;
    size_t nidps;
    struct saml_idp **saml;       /* type: saml providers (saml.c) */
    size_t nsaml;
    struct session_conf sconf;
    char *state_db;
    struct session_store *store;  /* rt's */
    char *assertion_key;          /* NULL = no assertion */
    char *assertion_header;
    char *assertion_issuer;
    int64_t assertion_ttl_s;
    int64_t assertion_keep_s;     /* a rotated-out key stays in the JWKS this long */
    struct assertion_signer *signer; /* rt's */
    char *pages_dir;
    bool show_deny_reason;        /* pages.show_deny_reason */
    char *hdr[AUTHN_HDR_COUNT];   /* upstream_identity.headers: user, email, groups, device */
    struct pages *pages;          /* rt's */
    struct oidc_replay *replay;   /* rt's */
    const unsigned char *login_key; /* rt's */
    /* Cookie names as they go on the wire, [plain, TLS] (__Host- prefixed);
     * spelled once here, not on every request. NULL-terminated lists for
     * cookie_strip: this spelling first, then the other one. */
    char *session_name[2];
    char *login_name[2];
    const char *strip_names[2][5];
};

/* ---- configuration ---------------------------------------------------- */

/* Key tables (core/conf.h) of upstream_identity; header names keep their defaults
 * below. */
#define UI_OWN(name) { name, CONF_K_OWN, 0, 0, 0, 0, NULL }
struct assertion_times {
    uint64_t ttl_ms, keep_ms;
};
static const struct conf_key identity_table[] = { UI_OWN("headers"), UI_OWN("assertion") };
static const struct conf_key header_table[] = { UI_OWN("user"), UI_OWN("email"),
                                                UI_OWN("groups"), UI_OWN("device") };
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

    if (ui && conf_read_table(d, ui, "\"upstream_identity\"", identity_table,
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
        an->assertion_key = slash ? xasprintf("%.*s/assertion-es256.pem",
                                              (int)(slash - state_db), state_db)
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
        const char *other = j < an->nidps ? an->idps[j].p->id
                                          : saml_idp_id(an->saml[j - an->nidps]);
        if (strcmp(other, saml_idp_id(x)) == 0) {
            conf_error(d, conf_get(e, "id"), "identity provider id \"%s\" is used twice",
                       other);
        }
    }
    an->saml = xrealloc(an->saml, (an->nsaml + 1) * sizeof *an->saml);
    an->saml[an->nsaml++] = x;
}

struct authn *authn_new(const struct conf_node *root, const char *conf_file,
                        const char *state_db, struct conf_diag *d)
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
                           "saml)", type);
                continue;
            }
            struct oidc_provider *p = oidc_provider_parse(d, e, conf_file);
            if (p == NULL) {
                continue;
            }
            for (size_t j = 0; j < an->nidps + an->nsaml; j++) {
                const char *other = j < an->nidps ? an->idps[j].p->id
                                                  : saml_idp_id(an->saml[j - an->nidps]);
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
        rt->signer = assertion_signer_open(an->assertion_key, an->assertion_issuer,
                                           an->assertion_ttl_s, &e);
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
        const struct conf_node *n = conf_get(sess, "key_file") ? conf_get(sess, "key_file")
                                                               : state;
        char *copy = xstrdup(an->state_db ? an->state_db : ""), *slash = strrchr(copy, '/');
        char *key = an->sconf.key_file ? xstrdup(an->sconf.key_file)
                                       : slash ? (*slash = '\0', xasprintf("%s/session.key", copy))
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
            log_info("authn", "identity assertion key rotated to %s; the previous key stays "
                              "published for %llds", an->assertion_key,
                     (long long)an->assertion_keep_s);
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

/* ---- small helpers ---------------------------------------------------- */

enum cont_kind {
    CONT_NONE = 0,
    CONT_LOGIN_DISCOVERY,
    CONT_CALLBACK_DISCOVERY,
    CONT_TOKEN,
    CONT_TOKEN_JWKS,
    CONT_USERINFO,
    CONT_REFRESH,
    CONT_BCL_DISCOVERY,
    CONT_BCL_JWKS,
    CONT_BEARER_DISCOVERY,
    CONT_BEARER_JWKS,
    CONT_SAML_METADATA,
    CONT_ONCE,                      /* a one-time value decided by the fleet's database */
};

struct cont {
    enum cont_kind kind;
    struct idp *idp;
    const char *rd;                 /* login: return path */
    const char *prompt;             /* login: prompt= for the IdP, or NULL */
    struct oidc_pending pd;         /* callback: heap strings, freed by a deferred cleanup */
    const char *token_body;         /* token response kept while the JWKS is fetched */
    size_t token_body_len;
    int token_status;
    bool jwks_refetched;
    struct oidc_tokens tokens;      /* between token and userinfo */
    const char *cookie;             /* refresh: the session cookie value */
    struct session_store *store;    /* refresh: claimed, not yet done (see cont_cleanup) */
    const char *bearer;             /* bearer / logout token */
    struct saml_idp *saml;          /* SAML metadata fetch: for which IdP */
    int saml_next;                  /* ... and what then (enum saml_next) */
    struct spg_once_job *once;      /* CONT_ONCE: the job (released by cont_cleanup) */
    unsigned char once_h[32];       /* ... for this key hash */
    int once_next;                  /* ... and what then (enum once_next) */
    struct authn_fetch token_fetch; /* ONCE_NEXT_TOKEN: the token request, sent once fresh */
    const char *bcl_sid, *bcl_sub;  /* ONCE_NEXT_BCL: whom the logout token names */
};

/* What a step waiting for a one-time value does with the answer. */
enum once_next { ONCE_NEXT_SAML_ACS, ONCE_NEXT_TOKEN, ONCE_NEXT_BCL, ONCE_NEXT_REFRESH };

static void cont_cleanup(void *arg)
{
    struct cont *c = arg;
    if (c->store != NULL) {
        /* The request ended (client gone) before the refresh answer: release
         * the claim so that a later request refreshes. */
        session_refresh_done(c->store, str_from(c->cookie), false, false, NULL, 0, NULL, NULL,
                             NULL);
    }
    oidc_pending_fini(&c->pd);
    oidc_tokens_fini(&c->tokens);
    spg_once_release(c->once);
}

static struct cont *cont_new(struct arena *a, struct authn_out *out, enum cont_kind kind,
                             struct idp *idp)
{
    struct cont *c = arena_zalloc(a, sizeof *c);
    if (c == NULL || arena_defer(a, cont_cleanup, c) != 0) {
        return NULL;
    }
    c->kind = kind;
    c->idp = idp;
    out->cont = c;
    return c;
}

static const char *adup(struct arena *a, const char *s)
{
    return s ? arena_strdup(a, s) : NULL;
}

static void add_header(struct authn_out *out, const char *name, const char *value)
{
    if (value != NULL && out->resp.nheaders < AUTHN_MAX_HEADERS) {
        out->resp.headers[out->resp.nheaders++] = (struct authn_header){ name, value };
    }
}

/* The answers authn gives are intents (authn.h, enum authn_answer); the proxy
 * renders them. Every one is no-store: the sign-in flow's answers are per user. */
static enum authn_step answer(struct authn_out *out, enum authn_answer kind, int status)
{
    out->resp.kind = kind;
    out->resp.status = status;
    if (kind != AUTHN_ANSWER_SIGNIN && kind != AUTHN_ANSWER_ERROR) {
        add_header(out, "Cache-Control", "no-store"); /* those two: the renderer's */
    }
    return AUTHN_RESPOND;
}

/* A document as it is (NULL body: empty). */
static enum authn_step respond(struct authn_out *out, int status, const char *type,
                               const char *body, size_t len)
{
    out->resp.content_type = type;
    out->resp.body = body ? body : "";
    out->resp.body_len = body ? len : 0;
    return answer(out, AUTHN_ANSWER_CONTENT, status);
}

static enum authn_step redirect_with(struct authn_out *out, int status, const char *location)
{
    if (location == NULL) {
        out->resp.kind = AUTHN_ANSWER_NONE; /* out of request memory: fails closed */
        return AUTHN_RESPOND;
    }
    out->resp.location = location;
    return answer(out, AUTHN_ANSWER_REDIRECT, status);
}

static enum authn_step redirect(struct authn_out *out, const char *location)
{
    return redirect_with(out, 302, location);
}

/* One of authn's own pages, from its template (vars and their values copied
 * to the arena); json: its form for API clients, or NULL. */
static enum authn_step page_answer(struct arena *a, struct authn_out *out, enum page_kind k,
                                   const struct page_var *vars, size_t n, const char *json)
{
    struct page_var *v = arena_alloc(a, (n ? n : 1) * sizeof *v);
    if (v == NULL) {
        out->resp.kind = AUTHN_ANSWER_NONE;
        return AUTHN_RESPOND;
    }
    for (size_t i = 0; i < n; i++) {
        /* values may live on the caller's stack: the proxy renders later */
        v[i] = (struct page_var){ vars[i].name, adup(a, vars[i].value) };
        if (vars[i].value != NULL && v[i].value == NULL) {
            out->resp.kind = AUTHN_ANSWER_NONE;
            return AUTHN_RESPOND;
        }
    }
    out->resp.page = (int)k;
    out->resp.vars = v;
    out->resp.nvars = n;
    out->resp.json = json;
    return answer(out, AUTHN_ANSWER_PAGE, 200);
}

static void set_reason(struct authn_out *out, const char *fmt, const char *detail)
{
    snprintf(out->reason, sizeof out->reason, fmt, detail);
}

/* An error: what went wrong in words for people (the proxy renders it, with
 * the request id); the details only in the log. */
static enum authn_step error_page(struct authn *an, const struct authn_req *req, struct arena *a,
                                  struct authn_out *out, int status, const char *title,
                                  const char *message)
{
    (void)an;
    (void)a;
    log_emit(status >= 500 ? LOG_WARN : LOG_INFO, MOD, req->request_id, NULL, "%s: %s", title,
             out->reason);
    out->resp.title = title;
    out->resp.message = message;
    return answer(out, AUTHN_ANSWER_ERROR, status);
}

static enum authn_step internal_error(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out)
{
    return error_page(an, req, a, out, 500, "Something went wrong",
                      "Gatehouse could not finish this request.");
}

static struct idp *idp_by_id(struct authn *an, const char *id)
{
    for (size_t i = 0; id != NULL && i < an->nidps; i++) {
        if (strcmp(an->idps[i].p->id, id) == 0) {
            return &an->idps[i];
        }
    }
    return NULL;
}

static bool route_accepts(const struct authn_req *req, const char *idp)
{
    if (req->route_idps == NULL) {
        return true;
    }
    for (size_t i = 0; i < req->nroute_idps; i++) {
        if (strcmp(req->route_idps[i], idp) == 0) {
            return true;
        }
    }
    return false;
}

static char *query_value(struct arena *a, struct str q, const char *name)
{
    struct str raw;
    bool dup = false;
    if (!codec_form_get(q, name, &raw, &dup) || dup) {
        return NULL;
    }
    char *v = codec_url_decode(raw, NULL);
    char *out = v ? arena_strdup(a, v) : NULL;
    free(v);
    return out;
}

static void fill_fetch(struct arena *a, struct authn_out *out, struct oidc_http *h)
{
    out->fetch.method = h->method;
    out->fetch.url = adup(a, h->url);
    size_t k = 0;
    for (size_t i = 0; i < 4 && h->headers[i] != NULL; i++) {
        out->fetch.headers[k++] = adup(a, h->headers[i]);
    }
    out->fetch.headers[k] = NULL;
    out->fetch.body = adup(a, h->body);
    out->fetch.body_len = h->body ? strlen(h->body) : 0;
    oidc_http_fini(h);
}

/* Queues key (a one-time value) on the fleet's database for cont c, which
 * becomes CONT_ONCE; the caller returns AUTHN_NEED_WAIT. False (logged) when
 * the node knows the database is out of reach: the caller fails closed. */
static bool once_submit(const struct authn_req *req, struct authn_out *out, struct spg *pg,
                        struct cont *c, const char *key, int64_t exp_s, enum once_next next)
{
    unsigned char h[32];
    codec_sha256(key, strlen(key), h);
    struct err err = { 0 };
    struct spg_once_job *j = spg_once_submit(pg, h, exp_s, &err);
    if (j == NULL) {
        log_emit(LOG_ERROR, MOD, req->request_id, NULL, "one-time value not checked, refused: %s",
                 err.msg);
        return false;
    }
    spg_once_release(c->once);
    c->kind = CONT_ONCE;
    c->once = j;
    c->once_next = (int)next;
    memcpy(c->once_h, h, 32);
    out->wait.fd = spg_once_fd(j);
    out->wait.timeout_ms = spg_query_timeout_ms(pg);
    return true;
}

/* The fleet's answer for c: 1 first use, 0 used before, -1 not checked. */
static int once_verdict(const struct authn_req *req, const struct cont *c)
{
    const char *why = NULL;
    int state = spg_once_state(c->once, &why);
    if (state == SPG_ONCE_FRESH || state == SPG_ONCE_USED) {
        return state == SPG_ONCE_FRESH;
    }
    log_emit(LOG_ERROR, MOD, req->request_id, NULL, "one-time value not checked, refused: %s",
             why);
    return -1;
}

static enum authn_step fetch_get(struct arena *a, struct authn_out *out, const char *url)
{
    out->fetch.method = "GET";
    out->fetch.url = adup(a, url);
    out->fetch.headers[0] = "Accept: application/json";
    out->fetch.headers[1] = NULL;
    out->fetch.body = NULL;
    out->fetch.body_len = 0;
    return AUTHN_NEED_FETCH;
}

static enum authn_step need_discovery(struct arena *a, struct authn_out *out, struct idp *x)
{
    struct oidc_http h;
    oidc_discovery_request(x->p, &h);
    fill_fetch(a, out, &h);
    return AUTHN_NEED_FETCH;
}

/* Stores the discovery answer. Returns false (reason set) when it is unusable. */
static bool take_discovery(struct idp *x, int status, struct str body, struct authn_out *out)
{
    struct err err = { 0 };
    struct oidc_metadata *m = oidc_metadata_parse(x->p, status, body, &err);
    if (m == NULL) {
        snprintf(out->reason, sizeof out->reason, "discovery at %s failed: %s", x->p->id,
                 status == 0 ? "identity provider unreachable" : err.msg);
        return false;
    }
    struct oidc_metadata *expected = NULL;
    if (!atomic_compare_exchange_strong(&x->meta, &expected, m)) {
        oidc_metadata_free(m); /* another worker got there first */
    }
    return true;
}

static struct jwks *jwks_get(struct idp *x)
{
    pthread_mutex_lock(&x->mu);
    struct jwks *k = x->jwks ? jwks_ref(x->jwks) : NULL;
    pthread_mutex_unlock(&x->mu);
    return k;
}

static bool take_jwks(struct idp *x, int status, struct str body, int64_t now_ms,
                      struct authn_out *out)
{
    struct err err = { 0 };
    if (status != 200) {
        snprintf(out->reason, sizeof out->reason, "JWKS fetch at %s failed: %s", x->p->id,
                 status == 0 ? "unreachable" : "HTTP error");
        return false;
    }
    struct jwks *k = jwks_parse(body, &err);
    if (k == NULL) {
        snprintf(out->reason, sizeof out->reason, "JWKS at %s unusable: %s", x->p->id, err.msg);
        return false;
    }
    pthread_mutex_lock(&x->mu);
    struct jwks *old = x->jwks;
    x->jwks = k;
    x->jwks_fetched_ms = now_ms;
    pthread_mutex_unlock(&x->mu);
    jwks_unref(old);
    return true;
}

/* On an unknown kid, may we fetch the key set again now? Claims the slot. */
static bool jwks_refetch_allowed(struct idp *x, int64_t now_ms)
{
    bool ok = false;
    pthread_mutex_lock(&x->mu);
    if (now_ms - x->jwks_fetched_ms >= (int64_t)x->p->jwks_refresh_min_interval_ms) {
        x->jwks_fetched_ms = now_ms; /* one refetch per interval, across workers */
        ok = true;
    }
    pthread_mutex_unlock(&x->mu);
    return ok;
}

static const char *session_cookie_name(const struct authn *an, bool tls)
{
    return an->session_name[tls];
}

static const char *login_cookie_name(const struct authn *an, bool tls)
{
    return an->login_name[tls];
}

/* 401 for API and XHR callers, 302 to sign-in for browsers. */
static enum authn_step unauthenticated(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out, const char *why)
{
    if (why != NULL && out->reason[0] == '\0') {
        set_reason(out, "%s", why);
    }
    out->event = AUTHN_EV_SIGNIN_REQUIRED;
    /* The proxy answers: a 302 to sign-in for a browser, a 401 for API
     * clients and refused bearer tokens (never a redirect for those). */
    (void)req;
    (void)a;
    out->resp.no_redirect = an->nidps + an->nsaml == 0;
    return answer(out, AUTHN_ANSWER_SIGNIN, 401);
}

/* ---- identity from a session or a bearer token ------------------------- */

static void identity_from_view(struct authn_out *out, const struct session_view *v,
                               struct arena *a)
{
    out->id.user_key = v->user_key;
    out->id.email = v->email;
    out->id.name = v->name;
    out->id.idp = v->idp;
    out->id.attrs = v->attrs;
    out->id.session_id = adup(a, v->id);
    out->id.sid = v->sid;
    out->id.session_expires_ms = v->expires_ms;
    out->id.session_idle_expires_ms = v->idle_expires_ms < v->expires_ms ? v->idle_expires_ms
                                                                         : v->expires_ms;
    const char *hash = v->user_key ? strchr(v->user_key, '#') : NULL;
    out->id.sub = hash ? hash + 1 : NULL;
    out->id.bearer = false;
}

static bool identity_from_oidc(struct authn_out *out, const struct oidc_identity *id,
                               const char *idp, struct arena *a)
{
    out->id.user_key = adup(a, id->user_key);
    out->id.sub = adup(a, id->sub);
    out->id.email = adup(a, id->email);
    out->id.name = adup(a, id->name);
    out->id.idp = adup(a, idp);
    out->id.sid = adup(a, id->sid);
    bool held = id->attrs != NULL && attrs_hold(a, id->attrs);
    out->id.attrs = held ? id->attrs : NULL;
    return out->id.user_key != NULL && held;
}

/* Picks the provider of a JWT by its (unverified) iss among those allowed;
 * the signature check that follows uses that provider's keys only. */
static struct idp *idp_for_token(struct authn *an, const struct authn_req *req, struct str tok)
{
    struct str part = tok;
    const char *d1 = memchr(tok.p, '.', tok.len);
    if (d1 == NULL) {
        return NULL;
    }
    part.p = d1 + 1;
    const char *d2 = memchr(part.p, '.', tok.len - (size_t)(part.p - tok.p));
    if (d2 == NULL) {
        return NULL;
    }
    part.len = (size_t)(d2 - part.p);
    size_t n = 0;
    unsigned char *raw = codec_b64url_decode(part, &n);
    json_error_t jerr;
    json_t *j = raw ? json_loadb((const char *)raw, n, 0, &jerr) : NULL;
    free(raw);
    const char *iss = json_string_value(json_object_get(j, "iss"));
    struct idp *found = NULL;
    for (size_t i = 0; iss != NULL && i < an->nidps && found == NULL; i++) {
        if (strcmp(an->idps[i].p->issuer, iss) == 0 && route_accepts(req, an->idps[i].p->id)) {
            found = &an->idps[i];
        }
    }
    json_decref(j);
    return found;
}

/* Was this user revoked (`sessions revoke --user`) after the token was
 * issued? A token without iat cannot show it was issued later: refused too. */
static bool bearer_revoked(struct authn *an, const char *user_key, const char *email,
                           int64_t iat_s)
{
    int64_t rev_ms = session_user_revoked_ms(an->store, user_key, email);
    return rev_ms > 0 && (iat_s <= 0 || iat_s * 1000 < rev_ms);
}

/* RFC 8705 certificate-bound tokens: a token whose claims carry cnf.x5t#S256 is
 * good only on a connection whose client certificate has that thumbprint; a
 * provider with require_certificate_bound_tokens refuses unbound tokens. NULL
 * when fine, else why not. */
static const char *bearer_binding(const struct idp *x, const struct authn_req *req,
                                  const struct authn_attrs *attrs)
{
    /* cnf was read once, when the token was verified (attrs.c). */
    const char *want = attrs ? attrs->cnf_x5t : NULL;
    const char *why = attrs ? attrs->cnf_error : "the token's claims are missing";
    if (why) {
        /* refused below */
    } else if (want) {
        if (!req->client_cert_x5t) {
            why = "the token is bound to a client certificate and none was presented";
        } else if (strlen(want) != strlen(req->client_cert_x5t) ||
                   CRYPTO_memcmp(want, req->client_cert_x5t, strlen(want)) != 0) {
            why = "the token is bound to another client certificate";
        }
    } else if (x->p->require_bound_tokens) {
        why = "the token is not bound to a client certificate (cnf.x5t#S256)";
    }
    return why;
}

/* An API client's next request with a token verified before: the providers
 * this route accepts are asked for it by its hash, before any parsing. A hit
 * names its provider: it was verified with that provider's keys and issuer. */
static bool bearer_cached(struct authn *an, const struct authn_req *req, struct arena *a,
                          struct authn_out *out, struct str tok)
{
    unsigned char h[32];
    codec_sha256(tok.p, tok.len, h);
    for (size_t i = 0; i < an->nidps; i++) {
        struct idp *x = &an->idps[i];
        if (atomic_load(&x->meta) == NULL || !route_accepts(req, x->p->id)) {
            continue;
        }
        struct oidc_bearer_identity b;
        struct jwks *k = jwks_get(x);
        bool hit = k != NULL && oidc_bearer_cached(x->p, k, h, req->now_ms / 1000, a, &b);
        jwks_unref(k);
        if (hit && bearer_revoked(an, b.user_key, b.email, b.iat_s)) {
            return false; /* verified again, and refused there with the reason */
        }
        if (hit && bearer_binding(x, req, b.attrs) != NULL) {
            return false; /* verified again, and refused there with the reason */
        }
        if (hit) {
            out->id.user_key = b.user_key;
            out->id.sub = b.sub;
            out->id.email = b.email;
            out->id.name = b.name;
            out->id.idp = adup(a, x->p->id);
            out->id.attrs = b.attrs;
            out->id.sid = b.sid;
            out->id.bearer = true;
            return true;
        }
    }
    return false;
}

/* A bearer token that does not verify: logged, then the caller is anonymous,
 * marked bearer: the route's policy decides, and a sign-in challenge for it
 * is a 401 invalid_token, never a redirect. */
static enum authn_step bearer_refused(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out, const char *why)
{
    (void)an;
    (void)a;
    memset(&out->id, 0, sizeof out->id);
    out->id.bearer = true;
    out->cont = NULL;
    set_reason(out, "bearer token refused: %s", why);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "%s", out->reason);
    return AUTHN_OK;
}

/* The provider's metadata and key set for continuation c: true with *k (a
 * reference the caller drops) when both are at hand; else false with *st the
 * fetch to perform first, c resuming at disc (metadata) or jwks (key set). */
static bool keys_ready(struct arena *a, struct authn_out *out, struct cont *c,
                       enum cont_kind disc, enum cont_kind jwks, struct jwks **k,
                       enum authn_step *st)
{
    struct idp *x = c->idp;
    if (atomic_load(&x->meta) == NULL) {
        c->kind = disc;
        *st = need_discovery(a, out, x);
        return false;
    }
    *k = jwks_get(x);
    if (*k == NULL) {
        c->kind = jwks;
        *st = fetch_get(a, out, atomic_load(&x->meta)->jwks_uri);
        return false;
    }
    return true;
}

/* A token signed with a key the set does not have (rotated at the IdP): fetch
 * the set again, once per continuation and per refresh interval; c resumes
 * at kind. false: no refetch now (the token is refused). */
static bool jwks_refetch(struct arena *a, struct authn_out *out, struct cont *c, int64_t now_ms,
                         enum cont_kind kind)
{
    if (c->jwks_refetched || !jwks_refetch_allowed(c->idp, now_ms)) {
        return false;
    }
    c->jwks_refetched = true;
    c->kind = kind;
    fetch_get(a, out, atomic_load(&c->idp->meta)->jwks_uri);
    return true;
}

/* Checks a token of c's provider with its keys. */
typedef int token_check_fn(struct authn *an, const struct authn_req *req, struct cont *c,
                           const struct jwks *k, void *res, struct err *err);

/* Runs check with c's provider's keys: its metadata and key set are fetched
 * first when missing (c resumes at disc or jwks), and the key set once more
 * on an unknown kid. true with *rc what check said; false with *st the fetch. */
static bool check_with_keys(struct authn *an, const struct authn_req *req, struct arena *a,
                            struct authn_out *out, struct cont *c, enum cont_kind disc,
                            enum cont_kind jwks, token_check_fn *check, void *res, int *rc,
                            struct err *err, enum authn_step *st)
{
    struct jwks *k = NULL;
    if (!keys_ready(a, out, c, disc, jwks, &k, st)) {
        return false;
    }
    *rc = check(an, req, c, k, res, err);
    jwks_unref(k);
    if (*rc == ERR_NOTFOUND && jwks_refetch(a, out, c, req->now_ms, jwks)) {
        *st = AUTHN_NEED_FETCH;
        return false;
    }
    return true;
}

static int bearer_check(struct authn *an, const struct authn_req *req, struct cont *c,
                        const struct jwks *k, void *res, struct err *err)
{
    (void)an;
    return oidc_bearer_verify(c->idp->p, k, str_from(c->bearer), req->now_ms / 1000, res, err);
}

static enum authn_step bearer_continue(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out, struct cont *c)
{
    struct oidc_identity id;
    struct err err = { 0 };
    enum authn_step st;
    int rc = 0;
    if (!check_with_keys(an, req, a, out, c, CONT_BEARER_DISCOVERY, CONT_BEARER_JWKS,
                         bearer_check, &id, &rc, &err, &st)) {
        return st;
    }
    struct idp *x = c->idp;
    if (rc != 0) {
        return bearer_refused(an, req, a, out, err.msg);
    }
    if (bearer_revoked(an, id.user_key, id.email, id.iat_s)) {
        oidc_identity_fini(&id);
        return bearer_refused(an, req, a, out,
                              "the user's tokens were revoked after this one was issued");
    }
    const char *unbound = bearer_binding(x, req, id.attrs);
    if (unbound != NULL) {
        oidc_identity_fini(&id);
        return bearer_refused(an, req, a, out, unbound);
    }
    bool ok = identity_from_oidc(out, &id, x->p->id, a);
    oidc_identity_fini(&id);
    out->id.bearer = true;
    return ok ? AUTHN_OK : internal_error(an, req, a, out);
}

static enum authn_step refresh_start(struct authn *an, const struct authn_req *req,
                                     struct arena *a, struct authn_out *out, const char *cookie,
                                     int64_t token_exp_s)
{
    struct idp *x = idp_by_id(an, out->id.idp);
    const struct oidc_metadata *m = x ? atomic_load(&x->meta) : NULL;
    char *rt = NULL;
    if (m == NULL || !session_refresh_claim(an->store, str_from(cookie), req->now_ms, &rt)) {
        return AUTHN_OK; /* someone else refreshes, or nothing to refresh with */
    }
    struct oidc_http h;
    struct err err = { 0 };
    int rc = oidc_refresh_request(x->p, m, rt, req->now_ms / 1000, &h, &err);
    OPENSSL_cleanse(rt, strlen(rt));
    free(rt);
    struct cont *c = rc == 0 ? cont_new(a, out, CONT_REFRESH, x) : NULL;
    if (c == NULL) {
        if (rc == 0) {
            oidc_http_fini(&h);
        }
        session_refresh_done(an->store, str_from(cookie), false, false, NULL, 0, NULL, NULL,
                             NULL);
        return AUTHN_OK;
    }
    c->cookie = adup(a, cookie);
    if (c->cookie == NULL) {
        oidc_http_fini(&h);
        session_refresh_done(an->store, str_from(cookie), false, false, NULL, 0, NULL, NULL,
                             NULL);
        return AUTHN_OK;
    }
    c->store = an->store;
    fill_fetch(a, out, &h);
    struct spg *pg = session_store_pg(an->store);
    char id_hash[65];
    if (pg != NULL && session_cookie_id_hash(str_from(cookie), id_hash)) {
        /* A fleet: one node refreshes (a rotated refresh token redeemed twice
         * would end the session); the others get the new tokens through the
         * change feed. */
        struct err lerr = { 0 };
        struct spg_once_job *j = spg_lease_submit(pg, id_hash, token_exp_s, &lerr);
        if (j == NULL) {
            c->store = NULL;
            out->cont = NULL;
            session_refresh_done(an->store, str_from(cookie), false, false, NULL, 0, NULL, NULL,
                                 NULL);
            return AUTHN_OK; /* the database is out of reach: a later request refreshes */
        }
        c->token_fetch = out->fetch;
        c->kind = CONT_ONCE;
        c->once = j;
        c->once_next = ONCE_NEXT_REFRESH;
        out->wait.fd = spg_once_fd(j);
        out->wait.timeout_ms = spg_query_timeout_ms(pg);
        return AUTHN_NEED_WAIT;
    }
    return AUTHN_NEED_FETCH;
}

/* After the fleet's refresh lease: this node refreshes, or leaves it (and
 * keeps serving the session as it is). */
static enum authn_step refresh_leased(struct authn *an, const struct authn_req *req,
                                      struct authn_out *out, struct cont *c)
{
    const char *why = NULL;
    if (spg_once_state(c->once, &why) == SPG_ONCE_FRESH) {
        c->kind = CONT_REFRESH;
        out->fetch = c->token_fetch;
        return AUTHN_NEED_FETCH;
    }
    c->store = NULL;
    out->cont = NULL;
    session_refresh_done(an->store, str_from(c->cookie), false, false, NULL, 0, NULL, NULL, NULL);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "session refresh left to another node%s%s",
             why[0] ? ": " : "", why);
    return AUTHN_OK;
}

static enum authn_step refresh_finish(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out, struct cont *c,
                                      int status, struct str body)
{
    struct idp *x = c->idp;
    c->store = NULL; /* answered: every path below ends the claim */
    struct jwks *k = jwks_get(x);
    struct oidc_tokens t;
    struct err err = { 0 };
    int rc = oidc_token_response(x->p, k, status, body, NULL, req->now_ms / 1000, &t, &err);
    jwks_unref(k);
    if (rc != 0) {
        /* A 400 from the token endpoint (invalid_grant: the IdP ended the
         * grant) ends the session too. Anything else (IdP down, 5xx): keep the
         * session, try again on a later request. */
        bool ended = status == 400;
        out->idp_error = true;
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "session refresh at %s failed: %s%s",
                 x->p->id, status == 0 ? "identity provider unreachable" : err.msg,
                 ended ? " (session ended)" : "");
        session_refresh_done(an->store, str_from(c->cookie), false, ended, NULL, 0, NULL, NULL,
                             NULL);
        if (ended) {
            memset(&out->id, 0, sizeof out->id);
            return AUTHN_OK; /* anonymous now: the route's policy decides */
        }
        return AUTHN_OK;
    }
    const char *email = NULL, *name = NULL;
    struct authn_attrs *attrs = NULL;
    struct oidc_identity id = { 0 };
    if (t.id_claims != NULL) {
        /* OIDC Core 12.2: the refreshed ID token must be about the same user. */
        if (oidc_identity_build(x->p, t.id_claims, NULL, &id, &err) != 0 ||
            strcmp(id.user_key, out->id.user_key) != 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL,
                     "session refresh at %s: the new ID token names another user "
                     "(session ended)", x->p->id);
            out->idp_error = true;
            session_refresh_done(an->store, str_from(c->cookie), false, true, NULL, 0, NULL,
                                 NULL, NULL);
            oidc_identity_fini(&id);
            oidc_tokens_fini(&t);
            memset(&out->id, 0, sizeof out->id);
            return AUTHN_OK; /* anonymous now: the route's policy decides */
        }
        email = id.email;
        name = id.name;
        /* The new groups, parsed once here; the claims stay the session's. */
        attrs = attrs_parse(id.attrs->groups_json,
                            out->id.attrs ? out->id.attrs->claims_json : NULL);
    }
    int64_t exp = t.expires_at_s ? t.expires_at_s : t.id_exp_s;
    session_refresh_done(an->store, str_from(c->cookie), true, false, t.refresh_token, exp, email,
                         name, attrs);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "session refreshed at %s%s", x->p->id,
             t.refresh_token ? " (refresh token rotated)" : "");
    bool held = true;
    if (attrs != NULL) {
        held = attrs_hold(a, attrs);
        out->id.attrs = held ? attrs : NULL;
        out->id.email = adup(a, email);
        out->id.name = adup(a, name);
    }
    attrs_unref(attrs);
    oidc_identity_fini(&id);
    oidc_tokens_fini(&t);
    return held ? AUTHN_OK : internal_error(an, req, a, out);
}

static enum authn_step identify(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, bool *anonymous)
{
    *anonymous = false;
    /* Other schemes (Basic for the backend itself, say) are not ours: the
     * session cookie decides then. */
    if (req->authorization.len > 7 &&
        str_ieq((struct str){ req->authorization.p, 7 }, STR("Bearer "))) {
        struct str tok = str_trim((struct str){ req->authorization.p + 7,
                                                req->authorization.len - 7 });
        if (bearer_cached(an, req, a, out, tok)) {
            return AUTHN_OK;
        }
        struct idp *x = idp_for_token(an, req, tok);
        if (x == NULL) {
            return bearer_refused(an, req, a, out,
                                  "not a JWT from an identity provider this route accepts");
        }
        if (x->p->naudiences == 0) {
            /* Before any fetch: such a token never verifies. */
            return bearer_refused(an, req, a, out,
                                  "its identity provider has no bearer \"audiences\" configured");
        }
        struct cont *c = cont_new(a, out, CONT_BEARER_JWKS, x);
        if (c == NULL || (c->bearer = arena_strndup(a, tok.p, tok.len)) == NULL) {
            return internal_error(an, req, a, out);
        }
        return bearer_continue(an, req, a, out, c);
    }
    if (an->store != NULL) {
        const char *name = session_cookie_name(an, req->tls);
        struct str v;
        bool found = false;
        struct err err = { 0 };
        if (name != NULL && cookie_get(req->cookies, req->ncookies, name, &v, &found, &err) != 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL, "session cookie ignored: %s", err.msg);
            found = false;
        }
        if (found) {
            struct session_view sv;
            enum session_status st = session_lookup(an->store, v, req->now_ms, a, &sv);
            if (st == SESSION_UNAVAILABLE) {
                /* Never an allow without a checked identity, nor a sign-in
                 * loop: the balancer drains this node (/readyz). */
                set_reason(out, "%s", "session database unreachable and the cache is not "
                                      "fresh enough to answer");
                return error_page(an, req, a, out, 503, "Temporarily unavailable",
                                  "Gatehouse cannot check your session right now. Please try "
                                  "again in a moment.");
            }
            if (st == SESSION_VALID && route_accepts(req, sv.idp)) {
                identity_from_view(out, &sv, a);
                if (sv.refresh_due) {
                    const char *ck = arena_strndup(a, v.p, v.len);
                    return ck ? refresh_start(an, req, a, out, ck, sv.token_exp_s) : AUTHN_OK;
                }
                return AUTHN_OK;
            }
            log_emit(LOG_INFO, MOD, req->request_id, NULL, "%s session cookie from %s",
                     st == SESSION_EXPIRED ? "expired"
                     : st == SESSION_VALID ? "refused identity provider's"
                                           : "unknown or revoked",
                     req->client_ip ? req->client_ip : "?");
        }
    }
    *anonymous = true;
    return AUTHN_RESPOND;
}

/* ---- /.gatehouse/login ------------------------------------------------ */

static enum authn_step saml_login(struct authn *an, const struct authn_req *req,
                                  struct arena *a, struct authn_out *out, struct saml_idp *sx,
                                  const char *rd);

static enum authn_step login_redirect(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out, struct idp *x,
                                      const char *rd, const char *prompt)
{
    const struct oidc_metadata *m = atomic_load(&x->meta);
    if (prompt != NULL && strcmp(prompt, "select_account") == 0 && !m->prompt_select_account) {
        prompt = "login"; /* the IdP has no account picker: it asks who signs in */
    }
    /* From configuration, never from the Host header alone (login() checked
     * that public_origin is set); one redirect URI per provider when there
     * are several, so a response is only ever taken for its own provider. */
    char *redirect_uri = oidc_redirect_uri(x->p, req->public_origin, an->nidps > 1);
    struct oidc_login l;
    struct err err = { 0 };
    int rc = oidc_login_start(x->p, m, redirect_uri, str_from(rd), prompt, an->login_key,
                              req->now_ms / 1000, &l, &err);
    free(redirect_uri);
    if (rc != 0) {
        set_reason(out, "login start failed: %s", err.msg);
        return internal_error(an, req, a, out);
    }
    const char *cname = login_cookie_name(an, req->tls);
    const char *sc = cname ? cookie_format(a, cname, str_from(l.cookie_value), req->tls,
                                           OIDC_LOGIN_TTL_S)
                           : NULL;
    const char *loc = adup(a, l.auth_url);
    oidc_login_fini(&l);
    if (sc == NULL || loc == NULL) {
        return internal_error(an, req, a, out);
    }
    add_header(out, "Set-Cookie", sc);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "sign-in started at %s from %s%s%s", x->p->id,
             req->client_ip ? req->client_ip : "?", prompt ? " with prompt=" : "",
             prompt ? prompt : "");
    return redirect(out, loc);
}

/* Is the browser on the configured origin's host and port? (The scheme may
 * differ behind a proxy that terminates TLS.) */
static bool on_public_host(const struct authn_req *req)
{
    const char *auth = req->public_origin ? strstr(req->public_origin, "://") : NULL;
    return auth != NULL && str_ieq_cstr(req->host, auth + 3);
}

/* Sign-in starts only where configuration says which origin the browser is
 * on: otherwise the redirect URI would come from the Host header. */
static enum authn_step login_origin_check(struct authn *an, const struct authn_req *req,
                                          struct arena *a, struct authn_out *out, bool *done)
{
    *done = true;
    if (req->public_origin == NULL) {
        set_reason(out, "%s", "sign-in refused: no route names this host and no public_url is "
                              "configured for it");
        log_emit(LOG_WARN, MOD, req->request_id, NULL,
                 "sign-in refused for Host \"%.*s\" from %s: no route names this host and no "
                 "public_url is configured (set public_url on the listener or route)",
                 (int)(req->host.len > 200 ? 200 : req->host.len), req->host.p,
                 req->client_ip ? req->client_ip : "?");
        return error_page(an, req, a, out, 400, "Sign-in is not available at this address",
                          "This address is not configured for sign-in. Use the address your "
                          "administrator gave you.");
    }
    if (!on_public_host(req)) {
        /* The login cookie must be set where the callback arrives: continue on
         * the configured origin (a configured value, never the Host header). */
        const char *loc = req->query.len
                              ? arena_printf(a, "%s/.gatehouse/login?%.*s", req->public_origin,
                                             (int)req->query.len, req->query.p)
                              : arena_printf(a, "%s/.gatehouse/login", req->public_origin);
        return loc ? redirect(out, loc) : internal_error(an, req, a, out);
    }
    *done = false;
    return AUTHN_RESPOND;
}

static enum authn_step login(struct authn *an, const struct authn_req *req, struct arena *a,
                             struct authn_out *out)
{
    bool done = false;
    enum authn_step st = login_origin_check(an, req, a, out, &done);
    if (done) {
        return st;
    }
    /* "Sign in as someone else": the IdP shows its account picker (or asks
     * for a password again); any other value is ignored. */
    const char *prompt = query_value(a, req->query, "prompt");
    if (prompt != NULL && strcmp(prompt, "select_account") != 0 && strcmp(prompt, "login") != 0) {
        prompt = NULL;
    }
    const char *rd = query_value(a, req->query, "rd");
    if (rd == NULL || !oidc_return_path_safe(str_from(rd))) {
        if (rd != NULL && rd[0] != '\0') {
            log_emit(LOG_WARN, MOD, req->request_id, NULL, "unsafe return path refused from %s",
                     req->client_ip ? req->client_ip : "?");
        }
        rd = "/";
    }
    const char *want = query_value(a, req->query, "idp");
    /* Every provider the route accepts is offered: no cap. */
    struct idp **cands = arena_alloc(a, (an->nidps ? an->nidps : 1) * sizeof *cands);
    size_t n = 0;
    if (cands == NULL) {
        return internal_error(an, req, a, out);
    }
    for (size_t i = 0; i < an->nidps; i++) {
        if (route_accepts(req, an->idps[i].p->id)) {
            cands[n++] = &an->idps[i];
        }
    }
    struct idp *x = NULL;
    for (size_t i = 0; want != NULL && i < n; i++) {
        if (strcmp(cands[i]->p->id, want) == 0) {
            x = cands[i];
        }
    }
    struct saml_idp **scands = arena_alloc(a, (an->nsaml ? an->nsaml : 1) * sizeof *scands);
    size_t ns = 0;
    struct saml_idp *sx = NULL;
    if (scands == NULL) {
        return internal_error(an, req, a, out);
    }
    for (size_t i = 0; i < an->nsaml; i++) {
        if (route_accepts(req, saml_idp_id(an->saml[i]))) {
            scands[ns++] = an->saml[i];
            if (want != NULL && strcmp(saml_idp_id(an->saml[i]), want) == 0) {
                sx = an->saml[i];
            }
        }
    }
    if (n + ns == 1 && want == NULL && ns == 1) {
        sx = scands[0];
    }
    if (sx != NULL) {
        return saml_login(an, req, a, out, sx, rd);
    }
    if (n + ns == 0) {
        set_reason(out, "%s", "login on a route without identity providers");
        return error_page(an, req, a, out, 404, "No sign-in here",
                          "This app does not use sign-in.");
    }
    if (want != NULL && x == NULL && sx == NULL) {
        set_reason(out, "%s", "unknown idp parameter");
        return error_page(an, req, a, out, 400, "Unknown identity provider",
                          "That identity provider is not offered for this app.");
    }
    if (x == NULL && n == 1 && ns == 0) {
        x = cands[0];
    }
    if (x == NULL) {
        struct page_provider *pv = arena_alloc(a, (n + ns ? n + ns : 1) * sizeof *pv);
        const char *host = arena_strndup(a, req->host.p ? req->host.p : "", req->host.len);
        if (pv == NULL || host == NULL) {
            return internal_error(an, req, a, out);
        }
        for (size_t i = 0; i < n; i++) {
            pv[i] = (struct page_provider){ cands[i]->p->id, cands[i]->p->display_name };
        }
        for (size_t i = 0; i < ns; i++) {
            pv[n + i] = (struct page_provider){ saml_idp_id(scands[i]),
                                                saml_idp_display_name(scands[i]) };
        }
        n += ns;
        const char *list = pages_provider_list(a, pv, n, str_from(rd), prompt);
        struct page_var v[] = { { "host", host }, { "providers", list } };
        return list ? page_answer(a, out, PAGE_CHOOSER, v, 2, NULL)
                    : internal_error(an, req, a, out);
    }
    if (atomic_load(&x->meta) == NULL) {
        struct cont *c = cont_new(a, out, CONT_LOGIN_DISCOVERY, x);
        if (c == NULL) {
            return internal_error(an, req, a, out);
        }
        c->rd = rd;
        c->prompt = prompt;
        return need_discovery(a, out, x);
    }
    return login_redirect(an, req, a, out, x, rd, prompt);
}

/* ---- /.gatehouse/oidc/callback ---------------------------------------- */

static enum authn_step signed_out_page(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out);

/* A failed callback: the caller records it (AUTHN_EV_LOGIN_FAILED, with the
 * reason) as well as answering. 400: state or cookie; 403: the tokens or the
 * identity were refused; 502: the provider failed; 500: ours. */
static enum authn_step callback_fail(struct authn *an, const struct authn_req *req,
                                     struct arena *a, struct authn_out *out, int status,
                                     const char *why)
{
    char buf[sizeof out->reason - 20]; /* why may be out->reason itself */
    snprintf(buf, sizeof buf, "%s", why);
    snprintf(out->reason, sizeof out->reason, "sign-in refused: %s", buf);
    out->event = AUTHN_EV_LOGIN_FAILED;
    out->idp_error = status == 502;
    out->cont = NULL;
    memset(&out->id, 0, sizeof out->id);
    return error_page(an, req, a, out, status, "Sign-in failed",
                      "Sign-in could not be completed. Please try again.");
}

static enum authn_step callback_error(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out, const char *why)
{
    return callback_fail(an, req, a, out, 400, why);
}

/* A fleet's database that did not decide whether the login state was used:
 * the try-again page, never a sign-in unchecked. */
static enum authn_step state_unchecked(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out)
{
    return callback_fail(an, req, a, out, 503,
                         "the session database is unreachable (login state not checked)");
}

static enum authn_step idp_down(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out)
{
    out->idp_error = true;
    return error_page(an, req, a, out, 502, "Sign-in is unavailable",
                      "Gatehouse could not reach the identity provider. Please try again in a "
                      "moment.");
}

static enum authn_step callback_token_request(struct authn *an, const struct authn_req *req,
                                              struct arena *a, struct authn_out *out,
                                              struct cont *c)
{
    struct oidc_http h;
    struct err err = { 0 };
    if (oidc_callback(c->idp->p, atomic_load(&c->idp->meta), req->query, &c->pd, an->replay,
                      req->now_ms / 1000, &h, &err) != 0) {
        return callback_error(an, req, a, out, err.msg);
    }
    c->kind = CONT_TOKEN;
    fill_fetch(a, out, &h);
    struct spg *pg = session_store_pg(an->store);
    if (pg != NULL) {
        /* A fleet: the login state is used once on any node (the local check
         * above only spares the database repeats here); the code goes to the
         * IdP only after that. */
        c->token_fetch = out->fetch;
        char *key = xasprintf("oidc-state:%s", c->pd.state);
        bool queued = once_submit(req, out, pg, c, key, c->pd.exp_s, ONCE_NEXT_TOKEN);
        free(key);
        return queued ? AUTHN_NEED_WAIT : state_unchecked(an, req, a, out);
    }
    return AUTHN_NEED_FETCH;
}

/* The login cookie of a sign-in in flight (OIDC callback, SAML ACS): true
 * with *v (*found false when there is none); false with *st the answer when
 * the Cookie header cannot be read. */
static bool login_cookie_read(struct authn *an, const struct authn_req *req, struct arena *a,
                              struct authn_out *out, struct str *v, bool *found,
                              enum authn_step *st)
{
    const char *cname = login_cookie_name(an, req->tls);
    struct err err = { 0 };
    *v = STR_NULL;
    *found = false;
    if (cname == NULL || cookie_get(req->cookies, req->ncookies, cname, v, found, &err) != 0) {
        *st = callback_error(an, req, a, out, err.msg[0] ? err.msg : "bad login cookie");
        return false;
    }
    return true;
}

static enum authn_step callback(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, struct str path_idp)
{
    struct str v;
    bool found;
    enum authn_step step;
    struct err err = { 0 };
    if (!login_cookie_read(an, req, a, out, &v, &found, &step)) {
        return step;
    }
    if (!found && query_value(a, req->query, "error") == NULL) {
        return callback_error(an, req, a, out, "no login cookie: state cannot be checked");
    }
    struct cont *c = cont_new(a, out, CONT_CALLBACK_DISCOVERY, NULL);
    if (c == NULL) {
        return internal_error(an, req, a, out);
    }
    /* An IdP error (error=access_denied) is reported even without a cookie. */
    char *e = query_value(a, req->query, "error");
    if (e != NULL && !found) {
        return callback_error(an, req, a, out, "identity provider returned an error");
    }
    if (oidc_login_cookie_open(an->login_key, v, req->now_ms / 1000, &c->pd, &err) != 0) {
        return callback_error(an, req, a, out, err.msg);
    }
    if (e != NULL && c->pd.prompt != NULL && strcmp(c->pd.prompt, "none") == 0) {
        /* The check after a sign-out (signed_out): the IdP has no session for
         * the user any more, so they are signed out everywhere. */
        const char *st = query_value(a, req->query, "state");
        if (st != NULL && codec_ct_eq(str_from(st), str_from(c->pd.state))) {
            out->cont = NULL;
            add_header(out, "Set-Cookie",
                       cookie_format(a, login_cookie_name(an, req->tls), STR(""), req->tls, 0));
            log_emit(LOG_INFO, MOD, req->request_id, NULL,
                     "signed out at %s too (its answer to prompt=none: %s)", c->pd.idp, e);
            return redirect(out, "/.gatehouse/signed-out");
        }
    }
    /* Each provider answers at its own redirect URI when there are several:
     * a response at one provider's path is only ever taken for that provider,
     * whatever the state says (IdP mix-up, RFC 9207 §1). */
    if (path_idp.p == NULL && an->nidps > 1) {
        return callback_error(an, req, a, out, "callback at the shared path while several "
                                               "identity providers are configured (each has "
                                               "/.gatehouse/oidc/callback/<id>)");
    }
    if (path_idp.p != NULL && !str_eq_cstr(path_idp, c->pd.idp)) {
        char why[200];
        snprintf(why, sizeof why, "login state was issued for identity provider \"%.40s\", "
                 "not \"%.*s\" whose callback this is", c->pd.idp,
                 (int)(path_idp.len > 40 ? 40 : path_idp.len), path_idp.p);
        return callback_error(an, req, a, out, why);
    }
    c->idp = idp_by_id(an, c->pd.idp);
    if (c->idp == NULL || !route_accepts(req, c->pd.idp)) {
        return callback_error(an, req, a, out, "login for an identity provider not accepted here");
    }
    if (atomic_load(&c->idp->meta) == NULL) {
        return need_discovery(a, out, c->idp);
    }
    return callback_token_request(an, req, a, out, c);
}

/* The end of a sign-in (OIDC or SAML): the session cookie set (cookie is
 * wiped), the login cookie cleared (clear: its Set-Cookie value), the browser
 * sent back to rd with status. out->id names the new user for the caller's
 * login record; the browser itself comes back with the cookie. */
static enum authn_step signed_in(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out, char *cookie, const char *clear,
                                 const char *rd, int status)
{
    const char *sname = session_cookie_name(an, req->tls);
    const char *set = sname ? cookie_format(a, sname, str_from(cookie), req->tls,
                                            (int64_t)(an->sconf.max_lifetime_ms / 1000))
                            : NULL;
    OPENSSL_cleanse(cookie, SESSION_COOKIE_LEN + 1);
    if (set == NULL || clear == NULL || rd == NULL) {
        return internal_error(an, req, a, out);
    }
    add_header(out, "Set-Cookie", set);
    add_header(out, "Set-Cookie", clear);
    out->event = AUTHN_EV_LOGIN;
    out->cont = NULL;
    return redirect_with(out, status, rd);
}

static enum authn_step finish_login(struct authn *an, const struct authn_req *req,
                                    struct arena *a, struct authn_out *out, struct cont *c,
                                    const json_t *userinfo)
{
    struct oidc_identity id;
    struct err err = { 0 };
    if (oidc_identity_build(c->idp->p, c->tokens.id_claims, userinfo, &id, &err) != 0) {
        return callback_fail(an, req, a, out, 403, err.msg);
    }
    struct session_new sn = {
        .user_key = id.user_key, .email = id.email, .name = id.name, .attrs = id.attrs,
        .idp = c->idp->p->id, .sid = id.sid,
        .refresh_token = c->tokens.refresh_token, .id_token = c->tokens.id_token,
        .token_exp_s = c->tokens.expires_at_s ? c->tokens.expires_at_s : c->tokens.id_exp_s,
    };
    char cookie[SESSION_COOKIE_LEN + 1];
    if (!session_store_ready(an->store)) {
        oidc_identity_fini(&id);
        snprintf(out->reason, sizeof out->reason,
                 "sign-in refused: the session database is unreachable");
        out->event = AUTHN_EV_LOGIN_FAILED;
        out->cont = NULL;
        memset(&out->id, 0, sizeof out->id);
        return error_page(an, req, a, out, 503, "Sign-in is temporarily unavailable",
                          "Gatehouse cannot store new sign-ins right now. Please try again in a "
                          "moment.");
    }
    int rc = session_create(an->store, &sn, req->now_ms, cookie, &err);
    bool ok = rc == 0 && identity_from_oidc(out, &id, c->idp->p->id, a);
    log_emit(ok ? LOG_INFO : LOG_ERROR, MOD, req->request_id, NULL,
             ok ? "signed in %s via %s" : "session not created for %s via %s",
             id.email ? id.email : id.user_key, c->idp->p->id);
    oidc_identity_fini(&id);
    if (!ok) {
        return callback_fail(an, req, a, out, 500, rc != 0 ? err.msg : "out of request memory");
    }
    const char *lname = login_cookie_name(an, req->tls);
    const char *clear = lname ? cookie_format(a, lname, STR(""), req->tls, 0) : NULL;
    const char *rd = c->pd.return_path && oidc_return_path_safe(str_from(c->pd.return_path))
                         ? adup(a, c->pd.return_path)
                         : "/";
    if (c->pd.prompt != NULL && strcmp(c->pd.prompt, "none") == 0) {
        log_emit(LOG_INFO, MOD, req->request_id, NULL,
                 "%s stayed signed in at %s when signing out: signed in again",
                 out->id.email ? out->id.email : out->id.user_key, c->idp->p->id);
    }
    return signed_in(an, req, a, out, cookie, clear, rd, 302);
}

/* ---- SAML: login, /.gatehouse/saml/acs, /.gatehouse/saml/metadata ------ */

/* The SAML login cookie comes back on the IdP's cross-site POST to the ACS:
 * over TLS it is SameSite=None (still __Host-, Secure, HttpOnly, sealed, 10
 * minutes); over plain HTTP (tests, a local set-up) browsers refuse None
 * without Secure, so it stays Lax. */
static const char *saml_login_cookie(struct authn *an, const struct authn_req *req,
                                     struct arena *a, const char *value, int max_age)
{
    const char *name = login_cookie_name(an, req->tls);
    if (name == NULL) {
        return NULL;
    }
    if (!req->tls) {
        return cookie_format(a, name, str_from(value), false, max_age);
    }
    return arena_printf(a, "%s=%s; Path=/; Max-Age=%d; HttpOnly; Secure; SameSite=None", name,
                        value, max_age);
}

enum saml_next { SAML_NEXT_LOGIN, SAML_NEXT_ACS, SAML_NEXT_METADATA, SAML_NEXT_SLO };

/* Asks the proxy for sx's metadata; the step `next` runs again with it. */
static enum authn_step saml_md_fetch(struct authn *an, const struct authn_req *req,
                                     struct arena *a, struct authn_out *out,
                                     struct saml_idp *sx, enum saml_next next, const char *rd)
{
    struct cont *c = cont_new(a, out, CONT_SAML_METADATA, NULL);
    if (c == NULL) {
        return internal_error(an, req, a, out);
    }
    c->saml = sx;
    c->saml_next = (int)next;
    c->rd = rd;
    out->fetch.method = "GET";
    out->fetch.url = adup(a, saml_metadata_url(sx));
    out->fetch.headers[0] = "Accept: application/samlmetadata+xml, application/xml;q=0.9";
    out->fetch.headers[1] = NULL;
    out->fetch.body = NULL;
    out->fetch.body_len = 0;
    return out->fetch.url ? AUTHN_NEED_FETCH : internal_error(an, req, a, out);
}

/* A SAML IdP whose metadata is a URL: the proxy fetches it when due (never on
 * the loop), then the step `next` runs again. *ready: sx can serve now. */
static enum authn_step saml_md_ready(struct authn *an, const struct authn_req *req,
                                     struct arena *a, struct authn_out *out,
                                     struct saml_idp *sx, enum saml_next next, const char *rd,
                                     bool *ready)
{
    bool usable = false;
    *ready = false;
    if (!saml_metadata_need(sx, req->now_ms / 1000, &usable)) {
        if (usable) {
            *ready = true;
            return AUTHN_OK;
        }
        snprintf(out->reason, sizeof out->reason, "SAML metadata of %s not loaded",
                 saml_idp_id(sx));
        return idp_down(an, req, a, out);
    }
    return saml_md_fetch(an, req, a, out, sx, next, rd);
}

/* The start of the ACS and SLO endpoints: the method (else 405 with Allow), a
 * SAML IdP and the session store, and every URL-form SAML IdP's metadata at
 * hand (else its fetch comes first). true: go on; false: answer *st. */
static bool saml_endpoint_ready(struct authn *an, const struct authn_req *req, struct arena *a,
                                struct authn_out *out, const char *method, enum saml_next next,
                                enum authn_step *st)
{
    if (!str_eq_cstr(req->method, method) || an->nsaml == 0 || an->store == NULL) {
        add_header(out, "Allow", method);
        *st = respond(out, 405, "text/plain; charset=utf-8", NULL, 0);
        return false;
    }
    for (size_t i = 0; i < an->nsaml; i++) {
        bool usable = false;
        if (saml_metadata_url(an->saml[i]) != NULL &&
            saml_metadata_need(an->saml[i], req->now_ms / 1000, &usable)) {
            *st = saml_md_fetch(an, req, a, out, an->saml[i], next, NULL);
            return false;
        }
    }
    return true;
}

static enum authn_step saml_login(struct authn *an, const struct authn_req *req,
                                  struct arena *a, struct authn_out *out, struct saml_idp *sx,
                                  const char *rd)
{
    bool ready = false;
    enum authn_step st = saml_md_ready(an, req, a, out, sx, SAML_NEXT_LOGIN, rd, &ready);
    if (!ready) {
        return st;
    }
    char *url = NULL, *cookie = NULL;
    struct err err = { 0 };
    if (saml_login_start(sx, str_from(rd), an->login_key, req->now_ms / 1000, &url, &cookie,
                         &err) != 0) {
        set_reason(out, "SAML login start failed: %s", err.msg);
        return internal_error(an, req, a, out);
    }
    const char *sc = saml_login_cookie(an, req, a, cookie, SAML_LOGIN_TTL_S);
    const char *loc = adup(a, url);
    free(url);
    free(cookie);
    if (sc == NULL || loc == NULL) {
        return internal_error(an, req, a, out);
    }
    add_header(out, "Set-Cookie", sc);
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "sign-in started at %s (SAML) from %s",
             saml_idp_id(sx), req->client_ip ? req->client_ip : "?");
    return redirect(out, loc);
}

static enum authn_step saml_metadata(struct authn *an, const struct authn_req *req,
                                     struct arena *a, struct authn_out *out)
{
    const char *want = query_value(a, req->query, "idp");
    struct saml_idp *sx = an->nsaml ? an->saml[0] : NULL;
    for (size_t i = 0; want != NULL && i < an->nsaml; i++) {
        sx = strcmp(saml_idp_id(an->saml[i]), want) == 0 ? an->saml[i] : NULL;
        if (sx != NULL) {
            break;
        }
    }
    if (sx == NULL) {
        return respond(out, 404, "text/plain; charset=utf-8", "not found\n", 10);
    }
    bool ready = false;
    enum authn_step st = saml_md_ready(an, req, a, out, sx, SAML_NEXT_METADATA, NULL, &ready);
    if (!ready) {
        return st;
    }
    char *spmd = saml_sp_metadata(sx);
    const char *md = adup(a, spmd);
    free(spmd);
    if (md == NULL) {
        return internal_error(an, req, a, out);
    }
    respond(out, 200, "application/samlmetadata+xml", md, strlen(md));
    out->resp.headers[0].value = "public, max-age=300";
    return AUTHN_RESPOND;
}

/* A one-time value: 1 first use, 0 used before, -1 not checked (a fleet's
 * database that did not answer: the caller fails closed). On a fleet's
 * database the answer comes off the loop: 2 with *st = AUTHN_NEED_WAIT (or an
 * error step), and the calling step, run again by authn_resume, finds it in
 * out->cont. */
static int once_gate(struct authn *an, const struct authn_req *req, struct arena *a,
                     struct authn_out *out, const char *key, int64_t exp_s,
                     enum authn_step *st)
{
    int64_t now_s = req->now_ms / 1000;
    struct spg *pg = session_store_pg(an->store);
    if (pg == NULL) {
        return session_once_check(an->store, str_from(key), exp_s, now_s);
    }
    unsigned char h[32];
    codec_sha256(key, strlen(key), h);
    struct cont *c = out->cont;
    if (c != NULL && c->kind == CONT_ONCE && c->once != NULL && memcmp(c->once_h, h, 32) == 0) {
        out->cont = NULL;
        return once_verdict(req, c);
    }
    c = cont_new(a, out, CONT_ONCE, NULL);
    if (c == NULL) {
        *st = internal_error(an, req, a, out);
        return 2;
    }
    if (!once_submit(req, out, pg, c, key, exp_s, ONCE_NEXT_SAML_ACS)) {
        out->cont = NULL;
        return -1;
    }
    *st = AUTHN_NEED_WAIT;
    return 2;
}

static enum authn_step saml_acs_endpoint(struct authn *an, const struct authn_req *req,
                                         struct arena *a, struct authn_out *out)
{
    enum authn_step st;
    struct str v;
    bool found;
    if (!saml_endpoint_ready(an, req, a, out, "POST", SAML_NEXT_ACS, &st) ||
        !login_cookie_read(an, req, a, out, &v, &found, &st)) {
        return st;
    }
    struct err err = { 0 };
    struct saml_result r;
    int64_t now_s = req->now_ms / 1000;
    if (saml_acs(an->saml, an->nsaml, req->body, found ? v : STR_NULL, an->login_key, now_s, &r,
                 &err) != 0) {
        return callback_fail(an, req, a, out, 403, err.msg[0] ? err.msg : "SAML response refused");
    }
    const char *idp_id = saml_idp_id(r.idp);
    if (!route_accepts(req, idp_id)) {
        saml_result_fini(&r);
        return callback_fail(an, req, a, out, 403, "SAML sign-in for an identity provider not "
                                                   "accepted here");
    }
    /* Replay: an assertion ID is accepted once (kept until it expires), and a
     * login state answers one response. */
    char *ka = xasprintf("saml-assertion:%s#%s", idp_id, r.assertion_id);
    enum authn_step wait_st = AUTHN_RESPOND;
    int once = once_gate(an, req, a, out, ka, r.assertion_exp_s, &wait_st);
    free(ka);
    if (once == 2) { /* decided off the loop: this step runs again with the answer */
        saml_result_fini(&r);
        return wait_st;
    }
    if (once < 0) { /* a fleet whose database did not answer: not accepted unchecked */
        saml_result_fini(&r);
        return callback_fail(an, req, a, out, 503,
                             "the session database is unreachable (assertion ID not checked)");
    }
    bool fresh = once == 1;
    if (!fresh) {
        saml_result_fini(&r);
        return callback_fail(an, req, a, out, 403, "assertion ID already used (replay)");
    }
    if (r.login_state != NULL) {
        char *kl = xasprintf("saml-login:%s", r.login_state);
        fresh = oidc_replay_check_and_add(an->replay, str_from(kl), now_s + SAML_LOGIN_TTL_S,
                                          now_s);
        free(kl);
        if (!fresh) {
            saml_result_fini(&r);
            return callback_fail(an, req, a, out, 403, "login state already answered (replay)");
        }
    }
    /* The SAML attributes become the same parsed groups and claims as an
     * OIDC identity's, once, here. */
    struct authn_attrs *attrs = attrs_parse(r.groups_json, r.claims_json);
    struct session_new sn = {
        .user_key = r.user_key, .email = r.email, .name = r.name, .attrs = attrs,
        .idp = idp_id, .sid = r.session_index,
    };
    char cookie[SESSION_COOKIE_LEN + 1];
    int rc = session_create(an->store, &sn, req->now_ms, cookie, &err);
    if (rc == 0 && !attrs_hold(a, attrs)) {
        rc = ERR_LIMIT;
    }
    attrs_unref(attrs);
    if (rc == 0) {
        const char *hash = strchr(r.user_key, '#');
        out->id.user_key = adup(a, r.user_key);
        out->id.sub = adup(a, hash ? hash + 1 : r.user_key);
        out->id.email = adup(a, r.email);
        out->id.name = adup(a, r.name);
        out->id.idp = adup(a, idp_id);
        out->id.attrs = attrs;
        out->id.sid = adup(a, r.session_index);
    }
    log_emit(rc == 0 ? LOG_INFO : LOG_ERROR, MOD, req->request_id, NULL,
             rc == 0 ? "signed in %s via %s (SAML)" : "session not created for %s via %s",
             r.email ? r.email : r.user_key, idp_id);
    const char *rd = r.return_path && oidc_return_path_safe(str_from(r.return_path))
                         ? adup(a, r.return_path)
                         : "/";
    saml_result_fini(&r);
    if (rc != 0) {
        return callback_fail(an, req, a, out, 500, err.msg);
    }
    /* 303: the browser follows a POST answer with a GET. */
    return signed_in(an, req, a, out, cookie, saml_login_cookie(an, req, a, "", 0), rd, 303);
}

static enum authn_step token_answer(struct authn *an, const struct authn_req *req,
                                    struct arena *a, struct authn_out *out, struct cont *c)
{
    struct idp *x = c->idp;
    struct jwks *k = jwks_get(x);
    if (k == NULL) {
        c->kind = CONT_TOKEN_JWKS;
        return fetch_get(a, out, atomic_load(&x->meta)->jwks_uri);
    }
    struct err err = { 0 };
    oidc_tokens_fini(&c->tokens);
    int rc = oidc_token_response(x->p, k, c->token_status,
                                 (struct str){ c->token_body, c->token_body_len }, c->pd.nonce,
                                 req->now_ms / 1000, &c->tokens, &err);
    jwks_unref(k);
    if (rc == ERR_NOTFOUND && jwks_refetch(a, out, c, req->now_ms, CONT_TOKEN_JWKS)) {
        return AUTHN_NEED_FETCH;
    }
    if (rc != 0) {
        return callback_fail(an, req, a, out, 403, err.msg);
    }
    struct oidc_http h;
    if (x->p->groups_from_userinfo &&
        oidc_userinfo_request(atomic_load(&x->meta), c->tokens.access_token, &h, &err) == 0) {
        c->kind = CONT_USERINFO;
        fill_fetch(a, out, &h);
        return AUTHN_NEED_FETCH;
    }
    return finish_login(an, req, a, out, c, NULL);
}

/* ---- logout ----------------------------------------------------------- */

static enum authn_step signed_out_page(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out)
{
    const char *host = arena_strndup(a, req->host.p ? req->host.p : "", req->host.len);
    if (host == NULL) {
        return internal_error(an, req, a, out);
    }
    struct page_var v[] = { { "host", host }, { "sign_in_url", "/.gatehouse/login" } };
    return page_answer(a, out, PAGE_SIGNED_OUT, v, 2, NULL);
}

/* The sign-out form's token: an HMAC of the session cookie under the
 * process's login key, so only a page that Gatehouse rendered for this very
 * session can submit the sign-out. */
static const char *logout_token(const struct authn *an, struct arena *a, struct str cookie)
{
    static const char label[] = "gatehouse-logout-v1:";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    struct sbuf b = { 0 };
    codec_buf_add(&b, label, sizeof label - 1);
    codec_buf_add(&b, cookie.p, cookie.len);
    unsigned char *ok = HMAC(EVP_sha256(), an->login_key, 32, (const unsigned char *)b.p, b.len,
                             md, &mdlen);
    OPENSSL_cleanse(b.p, b.len);
    codec_buf_fini(&b);
    if (ok == NULL || mdlen != 32) {
        return NULL;
    }
    char *t = codec_b64url_encode(md, 32);
    const char *out = adup(a, t);
    free(t);
    return out;
}

/* A state-changing POST from this origin only: Sec-Fetch-Site (sent by every
 * current browser) must say same-origin, and an Origin header must be ours.
 * Clients that send neither still need the session-bound token. */
static bool same_origin_post(const struct authn_req *req, const char **why)
{
    if (req->sec_fetch_site.len > 0 && !str_ieq_cstr(req->sec_fetch_site, "same-origin")) {
        *why = "Sec-Fetch-Site is not same-origin";
        return false;
    }
    /* "Origin: null" is what a no-referrer page sends for its own forms; with
     * Sec-Fetch-Site same-origin it says nothing more. */
    bool null_origin = str_eq_cstr(req->origin, "null") && req->sec_fetch_site.len > 0;
    if (req->origin.len > 0 && !null_origin &&
        !(req->request_origin != NULL && str_ieq_cstr(req->origin, req->request_origin)) &&
        !(req->public_origin != NULL && str_ieq_cstr(req->origin, req->public_origin))) {
        *why = "Origin is another site";
        return false;
    }
    return true;
}

#define SIGNOUT_AAD "gatehouse-signout-v1"

/* The IdP answered a sign-out: did the user end their session there too, or
 * answer "No, stay signed in"? The return looks the same either way; a
 * prompt=none authorization request tells. The sealed cookie set with the
 * logout request (signout_cookie) names the provider and the state. */
static enum authn_step signed_out(struct authn *an, const struct authn_req *req,
                                  struct arena *a, struct authn_out *out)
{
    const char *state = query_value(a, req->query, "state");
    const char *cname = login_cookie_name(an, req->tls);
    struct str v = STR_NULL;
    bool found = false;
    struct err err = { 0 };
    if (state == NULL || cname == NULL || !on_public_host(req) ||
        cookie_get(req->cookies, req->ncookies, cname, &v, &found, &err) != 0 || !found) {
        return signed_out_page(an, req, a, out);
    }
    size_t n = 0;
    char *pt = codec_unseal(an->login_key, SIGNOUT_AAD, v, &n);
    json_error_t jerr;
    json_t *j = pt ? json_loadb(pt, n, 0, &jerr) : NULL;
    free(pt);
    const char *idp = json_string_value(json_object_get(j, "p"));
    const char *s = json_string_value(json_object_get(j, "s"));
    json_t *e = json_object_get(j, "e");
    struct idp *x = idp_by_id(an, idp);
    bool ok = x != NULL && s != NULL && json_is_integer(e) &&
              req->now_ms / 1000 < (int64_t)json_integer_value(e) &&
              codec_ct_eq(str_from(s), str_from(state)) && atomic_load(&x->meta) != NULL;
    json_decref(j);
    if (!ok) {
        add_header(out, "Set-Cookie", cookie_format(a, cname, STR(""), req->tls, 0));
        return signed_out_page(an, req, a, out);
    }
    /* Replaces the sign-out cookie with the login cookie of the check. */
    return login_redirect(an, req, a, out, x, "/", "none");
}

static const char *signout_cookie(const struct authn *an, const struct authn_req *req,
                                  struct arena *a, const char *idp, const char *state)
{
    json_t *j = json_pack("{s:s, s:s, s:I}", "p", idp, "s", state, "e",
                          (json_int_t)(req->now_ms / 1000 + OIDC_LOGIN_TTL_S));
    char *pt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    char *sealed = pt ? codec_seal(an->login_key, SIGNOUT_AAD, pt, strlen(pt)) : NULL;
    free(pt);
    const char *cname = login_cookie_name(an, req->tls);
    const char *sc = sealed && cname ? cookie_format(a, cname, str_from(sealed), req->tls,
                                                     OIDC_LOGIN_TTL_S)
                                     : NULL;
    free(sealed);
    return sc;
}

static enum authn_step logout_refused(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out, const char *why)
{
    set_reason(out, "sign-out refused: %s", why);
    return error_page(an, req, a, out, 403, "Sign-out refused",
                      "This sign-out did not come from Gatehouse's own sign-out page. You are "
                      "still signed in; use the Sign out button to sign out.");
}

/* GET /.gatehouse/logout: the confirmation page (nothing ends on a GET). */
static enum authn_step logout_confirm(struct authn *an, const struct authn_req *req,
                                      struct arena *a, struct authn_out *out,
                                      const struct session_view *sv, struct str cookie)
{
    const char *host = arena_strndup(a, req->host.p ? req->host.p : "", req->host.len);
    if (host == NULL) {
        return internal_error(an, req, a, out);
    }
    const char *token = logout_token(an, a, cookie);
    const char *user = sv->email ? sv->email : sv->name ? sv->name : sv->user_key;
    struct page_var v[] = { { "host", host }, { "user", user }, { "csrf_token", token } };
    if (token == NULL) {
        return internal_error(an, req, a, out);
    }
    /* Never in a frame on another site (a click there would be a sign-out): every
     * answer of Gatehouse's own carries frame-ancestors 'none' and
     * X-Frame-Options: DENY (request_respond). */
    return page_answer(a, out, PAGE_LOGOUT, v, 3, NULL);
}

/* SAML single logout (SP-initiated): the LogoutRequest URL for a session of
 * a SAML IdP with a SingleLogoutService, or NULL. */
static const char *saml_logout_location(struct authn *an, struct arena *a, const char *idp_id,
                                        const struct authn_attrs *attrs, const char *sid)
{
    struct saml_idp *sx = NULL;
    for (size_t i = 0; idp_id != NULL && i < an->nsaml; i++) {
        if (strcmp(saml_idp_id(an->saml[i]), idp_id) == 0) {
            sx = an->saml[i];
        }
    }
    if (sx == NULL || attrs == NULL) {
        return NULL;
    }
    const char *name_id = NULL;
    for (size_t i = 0; i < attrs->nclaims && name_id == NULL; i++) {
        if (str_eq_cstr(attrs->claims[i].name, "nameid")) {
            name_id = attrs->claims[i].value.p;
        }
    }
    char *url = saml_logout_url(sx, name_id, sid);
    const char *loc = adup(a, url);
    free(url);
    return loc;
}

/* /.gatehouse/saml/slo: the IdP's LogoutRequest ends the sessions it names
 * and the browser goes back with our LogoutResponse; the IdP's
 * LogoutResponse to ours ends at the signed-out page. */
static enum authn_step signed_out_page(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out);

static enum authn_step saml_slo_endpoint(struct authn *an, const struct authn_req *req,
                                         struct arena *a, struct authn_out *out)
{
    enum authn_step st;
    if (!saml_endpoint_ready(an, req, a, out, "GET", SAML_NEXT_SLO, &st)) {
        return st;
    }
    struct saml_slo o;
    struct err err = { 0 };
    if (saml_slo(an->saml, an->nsaml, req->query, req->now_ms / 1000, &o, &err) != 0) {
        set_reason(out, "SAML logout refused: %s", err.msg);
        return error_page(an, req, a, out, 400, "Sign-out failed",
                          "This sign-out request could not be accepted.");
    }
    if (o.is_response) {
        log_emit(LOG_INFO, MOD, req->request_id, NULL, "SAML logout answered by %s",
                 saml_idp_id(o.idp));
        saml_slo_fini(&o);
        return signed_out_page(an, req, a, out);
    }
    const char *idp_id = saml_idp_id(o.idp);
    size_t n = o.session_index ? session_revoke_sid(an->store, idp_id, o.session_index)
                               : session_revoke_user(an->store, o.user_key);
    out->event = AUTHN_EV_LOGOUT;
    out->nlogouts = n;
    log_emit(LOG_INFO, MOD, req->request_id, NULL, "SAML logout from %s ended %zu session(s)",
             idp_id, n);
    const char *sname = session_cookie_name(an, req->tls);
    add_header(out, "Set-Cookie", sname ? cookie_format(a, sname, STR(""), req->tls, 0) : NULL);
    const char *loc = adup(a, o.reply_url);
    saml_slo_fini(&o);
    return loc ? redirect(out, loc) : signed_out_page(an, req, a, out);
}

static enum authn_step logout(struct authn *an, const struct authn_req *req, struct arena *a,
                              struct authn_out *out)
{
    bool post = str_eq_cstr(req->method, "POST");
    if (!post && !str_eq_cstr(req->method, "GET") && !str_eq_cstr(req->method, "HEAD")) {
        add_header(out, "Allow", "GET, POST");
        return respond(out, 405, "text/plain; charset=utf-8", NULL, 0);
    }
    const char *why = NULL;
    if (post && !same_origin_post(req, &why)) {
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "cross-site sign-out refused from %s: %s",
                 req->client_ip ? req->client_ip : "?", why);
        return logout_refused(an, req, a, out, why);
    }
    const char *sname = session_cookie_name(an, req->tls);
    struct str v;
    bool found = false;
    struct err err = { 0 };
    struct session_view sv;
    bool valid = false;
    const struct authn_attrs *saml_attrs = NULL;
    const char *saml_sid = NULL;
    if (an->store != NULL && sname != NULL &&
        cookie_get(req->cookies, req->ncookies, sname, &v, &found, &err) == 0 && found) {
        valid = session_lookup(an->store, v, req->now_ms, a, &sv) == SESSION_VALID;
    }
    if (!post) {
        /* Nothing to end: say so (a GET never ends anything). */
        return valid ? logout_confirm(an, req, a, out, &sv, v) : signed_out_page(an, req, a, out);
    }
    if (found) {
        struct str raw;
        bool dup = false;
        char *given = codec_form_get(req->body, "csrf_token", &raw, &dup) && !dup
                          ? codec_url_decode(raw, NULL)
                          : NULL;
        const char *want = logout_token(an, a, v);
        bool ok = given != NULL && want != NULL && codec_ct_eq(str_from(given), str_from(want));
        free(given);
        if (!ok) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL,
                     "sign-out refused from %s: missing or wrong csrf_token",
                     req->client_ip ? req->client_ip : "?");
            return logout_refused(an, req, a, out, "missing or wrong csrf_token");
        }
    }
    char *hint = NULL;
    const char *idp_id = NULL;
    if (found) {
        if (valid) {
            identity_from_view(out, &sv, a);
            idp_id = sv.idp;
            saml_attrs = sv.attrs;
            saml_sid = sv.sid;
            hint = session_id_token(an->store, v);
            out->event = AUTHN_EV_LOGOUT;
            out->nlogouts = 1;
            if (sv.sid != NULL) {
                /* The IdP's back-channel logout for this sid follows and finds
                 * no session left: remember that it ended here, so that token
                 * is not widened to every session of the user (bcl_continue's
                 * fallback to sub). */
                char *k = arena_printf(a, "ended-sid:%s#%s", sv.idp, sv.sid);
                int64_t now_s = req->now_ms / 1000;
                if (k != NULL) {
                    (void)oidc_replay_check_and_add(an->replay, str_from(k), now_s + 3600, now_s);
                }
            }
            log_emit(LOG_INFO, MOD, req->request_id, NULL, "signed out %s",
                     out->id.sub ? out->id.sub : sv.user_key);
        }
        session_revoke_cookie(an->store, v);
    }
    const char *clear = sname ? cookie_format(a, sname, STR(""), req->tls, 0) : NULL;
    add_header(out, "Set-Cookie", clear);
    const char *saml_loc = saml_logout_location(an, a, idp_id, saml_attrs, saml_sid);
    if (saml_loc != NULL) {
        free(hint);
        /* 303: the browser follows a POST's answer with a GET. */
        return redirect_with(out, 303, saml_loc);
    }
    struct idp *x = idp_by_id(an, idp_id);
    const struct oidc_metadata *m = x ? atomic_load(&x->meta) : NULL;
    if (m != NULL && m->end_session_endpoint != NULL) {
        /* RP-initiated logout: back to the signed-out page of the origin the
         * user is on, when that URI is one of the configured (registered)
         * post_logout_redirect_uri; otherwise the IdP's own page. */
        const char *want = req->public_origin
                               ? arena_printf(a, "%s/.gatehouse/signed-out", req->public_origin)
                               : NULL;
        const char *post_uri = oidc_post_logout_uri(x->p, want);
        if (post_uri == NULL && x->p->npost_logout_redirect_uris > 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL,
                     "post-logout return %s is not among identity provider %s's "
                     "post_logout_redirect_uri: none sent",
                     want ? want : "(no public origin)", x->p->id);
        }
        char *url = oidc_logout_url(x->p, m, hint, post_uri);
        const char *loc = adup(a, url);
        free(url);
        if (loc != NULL && post_uri != NULL) {
            /* A state to recognise the IdP's answer (see signed_out). */
            unsigned char rnd[16];
            char *st = codec_rand_bytes(rnd, sizeof rnd) ? codec_b64url_encode(rnd, sizeof rnd)
                                                         : NULL;
            const char *sc = st ? signout_cookie(an, req, a, x->p->id, st) : NULL;
            if (sc != NULL) {
                loc = arena_printf(a, "%s&state=%s", loc, st);
                add_header(out, "Set-Cookie", sc);
            }
            free(st);
        }
        if (hint != NULL) {
            OPENSSL_cleanse(hint, strlen(hint));
            free(hint);
        }
        if (loc == NULL) {
            return internal_error(an, req, a, out);
        }
        /* 303: the browser follows a POST's answer with a GET. */
        return redirect_with(out, 303, loc);
    }
    if (hint != NULL) {
        OPENSSL_cleanse(hint, strlen(hint));
        free(hint);
    }
    return signed_out_page(an, req, a, out);
}

/* ---- "Sign in as someone else" ---------------------------------------- */

const char *authn_switch_user_url(struct arena *a, struct str target)
{
    if (!oidc_return_path_safe(target)) {
        target = STR("/");
    }
    struct sbuf b = { 0 };
    codec_buf_adds(&b, "/.gatehouse/login?prompt=select_account&rd=");
    codec_buf_add_urlenc(&b, target);
    const char *out = arena_strndup(a, b.p ? b.p : "", b.len);
    codec_buf_fini(&b);
    return out;
}

static char *bcl_once_key(const struct idp *x, const struct authn_req *req, int64_t *exp_s);
static enum authn_step bcl_decided(struct authn *an, const struct authn_req *req,
                                   struct arena *a, struct authn_out *out, struct cont *c);
static enum authn_step bcl_end(struct authn *an, const struct authn_req *req,
                               struct authn_out *out, const struct idp *x, const char *sid,
                               const char *sub);

/* The logout token's sid and sub (malloc'd, either may be NULL). */
struct bcl_ids {
    char *sid, *sub;
};

static int bcl_check(struct authn *an, const struct authn_req *req, struct cont *c,
                     const struct jwks *k, void *res, struct err *err)
{
    struct bcl_ids *ids = res;
    return oidc_logout_token_verify(c->idp->p, k, req->body, an->replay, req->now_ms / 1000,
                                    &ids->sid, &ids->sub, err);
}

static enum authn_step bcl_continue(struct authn *an, const struct authn_req *req,
                                    struct arena *a, struct authn_out *out, struct cont *c)
{
    struct bcl_ids ids = { NULL, NULL };
    struct err err = { 0 };
    enum authn_step st;
    int rc = 0;
    if (!check_with_keys(an, req, a, out, c, CONT_BCL_DISCOVERY, CONT_BCL_JWKS, bcl_check, &ids,
                         &rc, &err, &st)) {
        return st;
    }
    struct idp *x = c->idp;
    char *sid = ids.sid, *sub = ids.sub;
    if (rc != 0) {
        set_reason(out, "back-channel logout refused: %s", err.msg);
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", out->reason);
        static const char body[] = "{\"error\":\"invalid_request\"}\n";
        return respond(out, 400, "application/json", body, sizeof body - 1);
    }
    struct spg *pg = session_store_pg(an->store);
    if (pg != NULL) {
        /* A fleet: the token's jti is used once on any node (the check in
         * oidc_logout_token_verify spares the database repeats here). */
        c->bcl_sid = adup(a, sid);
        c->bcl_sub = adup(a, sub);
        free(sid);
        free(sub);
        bool queued = false;
        int64_t exp_s = 0;
        char *key = bcl_once_key(x, req, &exp_s);
        if (key != NULL) {
            queued = once_submit(req, out, pg, c, key, exp_s, ONCE_NEXT_BCL);
            free(key);
        }
        if (!queued) {
            set_reason(out, "%s", "back-channel logout not checked: the session database is "
                                  "unreachable");
            return respond(out, 503, "text/plain; charset=utf-8", NULL, 0);
        }
        return AUTHN_NEED_WAIT;
    }
    enum authn_step done = bcl_end(an, req, out, x, sid, sub);
    free(sid);
    free(sub);
    return done;
}

/* The fleet's key for a verified logout token ("bcl <iss> <jti>", as the
 * node's own replay cache keys it) and until when it is kept. */
static char *bcl_once_key(const struct idp *x, const struct authn_req *req, int64_t *exp_s)
{
    struct str raw;
    bool dup = false;
    char *tok = codec_form_get(req->body, "logout_token", &raw, &dup) && !dup
                    ? codec_url_decode(raw, NULL)
                    : NULL;
    json_t *cl = tok ? jwt_peek_claims(str_from(tok)) : NULL;
    free(tok);
    const char *jti = jwt_claim_str(cl, "jti");
    json_t *exp = json_object_get(cl, "exp");
    json_t *iat = json_object_get(cl, "iat");
    *exp_s = (json_is_integer(exp) ? (int64_t)json_integer_value(exp)
                                   : (int64_t)json_integer_value(iat) + 600) +
             x->p->clock_skew_s;
    char *key = jti ? xasprintf("bcl %s %s", x->p->issuer, jti) : NULL;
    json_decref(cl);
    return key;
}

static enum authn_step bcl_decided(struct authn *an, const struct authn_req *req,
                                   struct arena *a, struct authn_out *out, struct cont *c)
{
    (void)a;
    int fresh = once_verdict(req, c);
    if (fresh < 0) {
        set_reason(out, "%s", "back-channel logout not checked: the session database is "
                              "unreachable");
        return respond(out, 503, "text/plain; charset=utf-8", NULL, 0);
    }
    if (fresh == 0) {
        set_reason(out, "%s", "back-channel logout refused: logout token was already used "
                              "(jti replay)");
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", out->reason);
        static const char body[] = "{\"error\":\"invalid_request\"}\n";
        return respond(out, 400, "application/json", body, sizeof body - 1);
    }
    return bcl_end(an, req, out, c->idp, c->bcl_sid, c->bcl_sub);
}

/* Ends the sessions a verified, first-used logout token names. */
static enum authn_step bcl_end(struct authn *an, const struct authn_req *req,
                               struct authn_out *out, const struct idp *x, const char *sid,
                               const char *sub)
{
    size_t n = 0;
    bool ended_here = false;
    int64_t now_s = req->now_ms / 1000;
    if (sid != NULL) {
        n = session_revoke_sid(an->store, x->p->id, sid);
    }
    if (n == 0 && sid != NULL) {
        /* Signed out through Gatehouse already (logout() remembered the sid):
         * not a reason to end the user's other sessions. */
        char *key = xasprintf("ended-sid:%s#%s", x->p->id, sid);
        ended_here = !oidc_replay_check_and_add(an->replay, str_from(key), now_s + 3600, now_s);
        free(key);
    }
    if (n == 0 && sub != NULL && !ended_here) {
        char *uk = xasprintf("%s#%s", x->p->issuer, sub);
        n = session_revoke_user(an->store, uk);
        free(uk);
    }
    out->event = AUTHN_EV_LOGOUT;
    out->nlogouts = n;
    log_emit(LOG_INFO, MOD, req->request_id, NULL,
             "back-channel logout from %s ended %zu session(s)", x->p->id, n);
    return respond(out, 200, "text/plain; charset=utf-8", NULL, 0);
}

static enum authn_step backchannel_logout(struct authn *an, const struct authn_req *req,
                                          struct arena *a, struct authn_out *out)
{
    if (!str_eq_cstr(req->method, "POST") || an->store == NULL) {
        add_header(out, "Allow", "POST");
        return respond(out, 405, "text/plain; charset=utf-8", NULL, 0);
    }
    struct str raw;
    bool dup = false;
    char *tok = codec_form_get(req->body, "logout_token", &raw, &dup) && !dup
                    ? codec_url_decode(raw, NULL)
                    : NULL;
    struct idp *x = NULL;
    for (size_t i = 0; tok != NULL && i < an->nidps && x == NULL; i++) {
        struct authn_req any = *req;
        any.route_idps = NULL;
        x = idp_for_token(an, &any, str_from(tok));
    }
    free(tok);
    if (x == NULL) {
        set_reason(out, "%s",
                   "back-channel logout refused: token missing or from an unknown issuer");
        log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", out->reason);
        static const char body[] = "{\"error\":\"invalid_request\"}\n";
        return respond(out, 400, "application/json", body, sizeof body - 1);
    }
    struct cont *c = cont_new(a, out, CONT_BCL_JWKS, x);
    return c ? bcl_continue(an, req, a, out, c) : internal_error(an, req, a, out);
}

/* ---- /.gatehouse/me --------------------------------------------------- */

/* The client certificate's device as /.gatehouse/me shows it: a JSON object
 * (null without one), and one line for people. */
static json_t *device_json(const struct authn_device *d)
{
    if (d == NULL || !d->present) {
        return json_null();
    }
    json_t *o = json_pack("{s:b, s:b, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?, s:s?}", "present", 1,
                          "trusted", d->trusted, "id", d->id, "name", d->name, "owner", d->owner,
                          "fingerprint", d->fingerprint, "serial", d->serial, "subject",
                          d->subject, "issuer", d->issuer);
    return o ? o : json_null();
}

static const char *device_line(struct arena *a, const struct authn_device *d)
{
    if (d == NULL || !d->present) {
        return "none";
    }
    return d->trusted ? arena_printf(a, "%s (%s), trusted", d->name && d->name[0] ? d->name : d->id,
                                     d->id)
                      : arena_printf(a, "%s, not trusted: %s", d->subject, d->why ? d->why : "");
}

static enum authn_step me(struct authn *an, const struct authn_req *req, struct arena *a,
                          struct authn_out *out)
{
    const struct authn_identity *id = &out->id;
    /* Both ends of a session, labelled: the idle one moves with every request,
     * the absolute one (what `sessions list` shows) never does. */
    char expires[32] = "", idle[32] = "";
    const int64_t ends[2] = { id->session_expires_ms, id->session_idle_expires_ms };
    char *const outs[2] = { expires, idle };
    for (int i = 0; i < 2; i++) {
        if (ends[i] > 0) {
            time_t t = (time_t)(ends[i] / 1000);
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(outs[i], sizeof expires, "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
    }
    /* Both forms: the proxy picks the one the client wants. */
    const char *json = NULL;
    {
        json_t *g = json_array();
        for (size_t i = 0; g && id->attrs && i < id->attrs->ngroups; i++) {
            json_array_append_new(g, json_stringn(id->attrs->groups[i].p, id->attrs->groups[i].len));
        }
        /* "user" is the subject, as in the identity headers and the decision log. */
        json_t *j = json_pack("{s:s, s:s?, s:s?, s:o, s:s?, s:s?, s:s?, s:s?, s:s?}", "user",
                              id->user ? id->user : id->user_key, "email", id->email, "name",
                              id->name, "groups", g ? g : json_array(), "idp", id->idp,
                              "expires", expires[0] ? expires : NULL, "idle_expires",
                              idle[0] ? idle : NULL, "absolute_expires",
                              expires[0] ? expires : NULL, "session", id->session_id);
        if (j) {
            json_object_set_new(j, "device", device_json(req->device));
        }
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        json = adup(a, s);
        free(s);
        if (json == NULL) {
            return internal_error(an, req, a, out);
        }
    }
    /* Groups as "a, b" for people. */
    struct sbuf gb = { 0 };
    for (size_t i = 0; id->attrs && i < id->attrs->ngroups; i++) {
        codec_buf_adds(&gb, i ? ", " : "");
        codec_buf_add(&gb, id->attrs->groups[i].p, id->attrs->groups[i].len);
    }
    const char *groups = adup(a, gb.p ? gb.p : "");
    codec_buf_fini(&gb);
    struct page_var v[] = {
        { "name", id->name ? id->name : (id->email ? id->email : id->user_key) },
        { "user", id->user ? id->user : id->user_key }, { "email", id->email }, { "groups", groups },
        { "idp", id->idp }, { "device", device_line(a, req->device) }, { "expires", expires },
        { "idle_expires", idle },
    };
    return page_answer(a, out, PAGE_ME, v, sizeof v / sizeof v[0], json);
}

/* The user id as everything downstream sees it (authn_identity.user). */
static void set_user_id(struct authn *an, struct arena *a, struct authn_out *out)
{
    if (out->id.user_key == NULL || out->id.user != NULL) {
        return;
    }
    const char *sub = out->id.sub;
    if (sub == NULL) {
        const char *hash = strchr(out->id.user_key, '#');
        sub = hash ? hash + 1 : out->id.user_key;
    }
    struct idp *x = idp_by_id(an, out->id.idp);
    char *u = oidc_user_id(out->id.idp ? out->id.idp : "?", x && x->p->bare_user_ids, sub);
    out->id.user = adup(a, u);
    free(u);
    if (out->id.user == NULL) {
        out->id.user = out->id.user_key; /* arena full: the unambiguous iss#sub */
    }
}

/* After identify (maybe through a key fetch or a refresh): the page, or sign-in. */
static enum authn_step me_or_sign_in(struct authn *an, const struct authn_req *req,
                                     struct arena *a, struct authn_out *out)
{
    if (out->id.user_key == NULL) {
        return unauthenticated(an, req, a, out, "no session");
    }
    set_user_id(an, a, out);
    return me(an, req, a, out);
}

/* ---- entry points ----------------------------------------------------- */

static enum authn_step check_step(struct authn *an, const struct authn_req *req,
                                  struct arena *a, struct authn_out *out);

enum authn_step authn_check(struct authn *an, const struct authn_req *req, struct arena *a,
                            struct authn_out *out)
{
    enum authn_step st = check_step(an, req, a, out);
    set_user_id(an, a, out);
    return st;
}

static enum authn_step login_css(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out)
{
    (void)req;
    (void)a;
    if (an->pages == NULL) {
        return respond(out, 404, "text/plain; charset=utf-8", "not found\n", 10);
    }
    struct str css = pages_css(an->pages);
    respond(out, 200, "text/css; charset=utf-8", css.p, css.len);
    out->resp.headers[0].value = "public, max-age=3600";
    return AUTHN_RESPOND;
}

static enum authn_step jwks_json(struct authn *an, const struct authn_req *req, struct arena *a,
                                 struct authn_out *out)
{
    if (an->signer == NULL) {
        return respond(out, 404, "text/plain; charset=utf-8", NULL, 0);
    }
    char *j = assertion_jwks_json(an->signer, req->now_ms / 1000);
    const char *body = adup(a, j);
    free(j);
    /* no-store like every answer of Gatehouse's own (a verifier keeps
     * the keys it fetched; a rotated key must be seen at once). */
    return respond(out, 200, "application/jwk-set+json", body, body ? strlen(body) : 0);
}

/* /.gatehouse/oidc/callback: the one provider's (several have callback/<id>). */
static enum authn_step callback_single(struct authn *an, const struct authn_req *req,
                                       struct arena *a, struct authn_out *out)
{
    return callback(an, req, a, out, STR_NULL);
}

/* /.gatehouse/me: who am I needs someone, so it is never public. */
static enum authn_step me_endpoint(struct authn *an, const struct authn_req *req,
                                   struct arena *a, struct authn_out *out)
{
    bool anonymous = false;
    enum authn_step st = identify(an, req, a, out, &anonymous);
    if (anonymous) {
        return unauthenticated(an, req, a, out, "no session");
    }
    return st == AUTHN_OK ? me_or_sign_in(an, req, a, out) : st;
}

typedef enum authn_step endpoint_fn(struct authn *an, const struct authn_req *req,
                                    struct arena *a, struct authn_out *out);

/* The reserved paths below /.gatehouse/ (authn.h lists them). */
static const struct {
    const char *path;
    endpoint_fn *fn;
} Endpoints[] = {
    { "static/login.css", login_css },
    { "jwks.json", jwks_json },
    { "login", login },
    { "oidc/callback", callback_single },
    { "logout", logout },
    /* Where the IdP sends the browser after an RP-initiated logout. */
    { "signed-out", signed_out },
    { "saml/acs", saml_acs_endpoint },
    { "saml/slo", saml_slo_endpoint },
    { "saml/metadata", saml_metadata },
    { "oidc/backchannel-logout", backchannel_logout },
    { "me", me_endpoint },
};

static enum authn_step check_step(struct authn *an, const struct authn_req *req,
                                  struct arena *a, struct authn_out *out)
{
    memset(out, 0, sizeof *out);
    if (str_has_prefix(req->path, STR("/.gatehouse/"))) {
        struct str p = { req->path.p + 12, req->path.len - 12 };
        for (size_t i = 0; i < sizeof Endpoints / sizeof Endpoints[0]; i++) {
            if (str_eq_cstr(p, Endpoints[i].path)) {
                return Endpoints[i].fn(an, req, a, out);
            }
        }
        if (str_has_prefix(p, STR("oidc/callback/")) && p.len > 14) {
            struct str id = { p.p + 14, p.len - 14 };
            bool known = false;
            for (size_t i = 0; i < an->nidps && !known; i++) {
                known = str_eq_cstr(id, an->idps[i].p->id);
            }
            if (!known) {
                return callback_error(an, req, a, out, "callback for an unknown identity provider");
            }
            return callback(an, req, a, out, id);
        }
        return respond(out, 404, "text/plain; charset=utf-8", "not found\n", 10);
    }
    /* Who is calling, or nobody: the route's policy decides whether that is
     * enough (it may allow anonymous callers), and the proxy challenges. */
    bool anonymous = false;
    enum authn_step st = identify(an, req, a, out, &anonymous);
    return anonymous ? AUTHN_OK : st;
}

static enum authn_step resume_step(struct authn *an, const struct authn_req *req,
                                   struct arena *a, struct authn_out *out, int status,
                                   struct str body)
{
    struct cont *c = out->cont;
    memset(&out->resp, 0, sizeof out->resp);
    memset(&out->fetch, 0, sizeof out->fetch);
    memset(&out->wait, 0, sizeof out->wait);
    if (c == NULL) {
        set_reason(out, "%s", "resume without a pending step");
        return internal_error(an, req, a, out);
    }
    switch (c->kind) {
    case CONT_LOGIN_DISCOVERY:
        if (!take_discovery(c->idp, status, body, out)) {
            return idp_down(an, req, a, out);
        }
        return login_redirect(an, req, a, out, c->idp, c->rd, c->prompt);
    case CONT_CALLBACK_DISCOVERY:
        if (!take_discovery(c->idp, status, body, out)) {
            return callback_fail(an, req, a, out, 502, out->reason);
        }
        return callback_token_request(an, req, a, out, c);
    case CONT_TOKEN:
        if (status == 0) {
            callback_fail(an, req, a, out, 502, "token endpoint unreachable");
            set_reason(out, "%s", "token endpoint unreachable");
            return AUTHN_RESPOND;
        }
        c->token_status = status;
        c->token_body = arena_strndup(a, body.p ? body.p : "", body.len);
        c->token_body_len = body.len;
        if (c->token_body == NULL) {
            return internal_error(an, req, a, out);
        }
        return token_answer(an, req, a, out, c);
    case CONT_TOKEN_JWKS:
        if (!take_jwks(c->idp, status, body, req->now_ms, out)) {
            return callback_fail(an, req, a, out, 502, out->reason);
        }
        return token_answer(an, req, a, out, c);
    case CONT_USERINFO: {
        json_t *ui = NULL;
        struct err err = { 0 };
        const char *sub = jwt_claim_str(c->tokens.id_claims, "sub");
        if (oidc_userinfo_parse(status, body, sub, &ui, &err) != 0) {
            return callback_fail(an, req, a, out, 502,
                                 status == 0 ? "userinfo endpoint unreachable" : err.msg);
        }
        enum authn_step st = finish_login(an, req, a, out, c, ui);
        json_decref(ui);
        return st;
    }
    case CONT_REFRESH:
        return refresh_finish(an, req, a, out, c, status, body);
    case CONT_BCL_DISCOVERY:
    case CONT_BEARER_DISCOVERY:
        if (!take_discovery(c->idp, status, body, out)) {
            return c->kind == CONT_BCL_DISCOVERY
                       ? respond(out, 503, "text/plain; charset=utf-8", NULL, 0)
                       : idp_down(an, req, a, out);
        }
        return c->kind == CONT_BCL_DISCOVERY ? bcl_continue(an, req, a, out, c)
                                             : bearer_continue(an, req, a, out, c);
    case CONT_BCL_JWKS:
    case CONT_BEARER_JWKS:
        if (!take_jwks(c->idp, status, body, req->now_ms, out)) {
            return c->kind == CONT_BCL_JWKS
                       ? respond(out, 503, "text/plain; charset=utf-8", NULL, 0)
                       : idp_down(an, req, a, out);
        }
        return c->kind == CONT_BCL_JWKS ? bcl_continue(an, req, a, out, c)
                                        : bearer_continue(an, req, a, out, c);
    case CONT_SAML_METADATA: {
        struct err err = { 0 };
        if (saml_metadata_take(c->saml, status, body, req->now_ms / 1000, &err) != 0) {
            log_emit(LOG_WARN, MOD, req->request_id, NULL, "%s", err.msg);
            out->idp_error = true;
        } else {
            log_emit(LOG_INFO, MOD, req->request_id, NULL, "SAML metadata of %s loaded from %s",
                     saml_idp_id(c->saml), saml_metadata_url(c->saml));
        }
        out->cont = NULL;
        switch ((enum saml_next)c->saml_next) {
        case SAML_NEXT_LOGIN:
            return saml_login(an, req, a, out, c->saml, c->rd);
        case SAML_NEXT_ACS:
            return saml_acs_endpoint(an, req, a, out);
        case SAML_NEXT_METADATA:
            return saml_metadata(an, req, a, out);
        case SAML_NEXT_SLO:
            return saml_slo_endpoint(an, req, a, out);
        }
        break;
    }
    case CONT_ONCE:
        /* status 0: no answer in time, refused as unchecked. */
        switch ((enum once_next)c->once_next) {
        case ONCE_NEXT_SAML_ACS: /* the ACS again: it finds the answer in out->cont */
            return saml_acs_endpoint(an, req, a, out);
        case ONCE_NEXT_TOKEN: {
            int fresh = once_verdict(req, c);
            if (fresh < 0) {
                return state_unchecked(an, req, a, out);
            }
            if (fresh == 0) {
                return callback_error(an, req, a, out,
                                      "login state was already used (replayed callback)");
            }
            c->kind = CONT_TOKEN;
            out->fetch = c->token_fetch;
            return AUTHN_NEED_FETCH;
        }
        case ONCE_NEXT_BCL:
            return bcl_decided(an, req, a, out, c);
        case ONCE_NEXT_REFRESH:
            return refresh_leased(an, req, out, c);
        }
        break;
    case CONT_NONE:
        break;
    }
    set_reason(out, "%s", "unknown pending step");
    return internal_error(an, req, a, out);
}

enum authn_step authn_resume(struct authn *an, const struct authn_req *req, struct arena *a,
                             struct authn_out *out, int status, struct str body)
{
    enum authn_step st = resume_step(an, req, a, out, status, body);
    set_user_id(an, a, out);
    if (st == AUTHN_OK && str_eq_cstr(req->path, "/.gatehouse/me")) {
        return me_or_sign_in(an, req, a, out);
    }
    return st;
}

/* ---- upstream identity ------------------------------------------------ */

const char *authn_assertion(struct authn *an, const struct authn_identity *id, const char *route,
                            const char *device, int64_t now_ms, struct arena *a)
{
    if (an->signer == NULL || id == NULL || id->user_key == NULL) {
        return NULL;
    }
    struct assertion_claims c = { .aud = route, .sub = id->user ? id->user : id->user_key,
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
