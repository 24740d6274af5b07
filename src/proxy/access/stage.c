/* proxy/access/stage.c - the access stage's pipeline, installed into the data
 * plane as its struct access_stage:
 *
 *   identify (identify.c) -> policy input (identity.c) -> decide (decide.c,
 *   OPA via opa_call.c) -> record (record_decision.c) -> forward with identity
 *   (upstream_identity.c), or a local answer (respond.c)
 *
 * and the reserved /.gatehouse/ endpoints (the table below). This file only
 * sequences the steps; each step is in its own file with narrow inputs. */
#include <string.h>

#include "access_int.h"
#include "authn/device.h"
#include "authn/saml.h" /* SAML_BODY_MAX */
#include "proxy/metrics.h"
#include "proxy/pages.h"

#define BODY_MAX (64 * 1024)

static bool Started;

/* ---- policy -> record -> forward ------------------------------------------------ */

static int record(struct exchange *x, const struct record_args *a, uint64_t *seq)
{
    return record_decision(x->r, x->route ? x->route->policy : NULL, &x->id, &x->in, &x->res,
                           &x->opa, x->start_us, a, seq);
}

static enum access_step log_unavailable(struct request *r)
{
    request_error(r, 503, "decision log unavailable");
    return ACCESS_RESPOND;
}

static enum access_step forward(struct exchange *x, uint64_t seq)
{
    struct request *r = x->r;

    upstream_scrub(r, x->conf);
    if (!upstream_identity(r, x->conf, &x->id, &x->in)) {
        return respond_error(r, x->conf->an, 500, "Identity error",
                             "Gatehouse could not prepare the identity for this app.",
                             "identity headers or assertion failed");
    }
    return record_wait_durable(r, seq);
}

static enum access_step run_policy(struct exchange *x)
{
    struct request *r = x->r;
    const struct policy_result *res = &x->res;
    const char *who = x->id.user ? x->id.user : "anonymous";
    uint64_t seq = 0;

    if (x->ident_incomplete) {
        /* Rules must never see a truncated group or claim list: a deny rule
         * on a dropped group would silently not apply. */
        return respond_error(r, x->conf->an, 500, "Identity too large",
                             "Your identity carries more groups or claims than Gatehouse can "
                             "check.",
                             "identity groups/claims exceed the limits or the request memory");
    }
    enum verdict v = decide(x->route->policy, &x->in, &x->res);
    if (v == VERDICT_ASK_OPA) {
        return opa_call(x, run_policy);
    }
    policy_metrics_decision(r->route->name, res->decision, res->shadow);
    switch (v) {
    case VERDICT_LOGIN: {
        struct record_args a = { "policy", "login", "login", res->rule, "sign-in required" };
        if (record(x, &a, &seq) != 0) {
            return log_unavailable(r);
        }
        return respond_signin(r, x->id.bearer);
    }
    case VERDICT_DENY: {
        struct record_args a = { "policy", "deny", "deny", res->rule, res->reason };
        if (record(x, &a, &seq) != 0) {
            return log_unavailable(r);
        }
        log_emit(LOG_INFO, "policy", r->id, NULL, "denied %s on route %s by rule %s", who,
                 r->route->name, res->rule ? res->rule : "default-deny");
        const struct authn_device *dev = &x->id.device;
        const char *device_hint = NULL;
        if (decide_device_would_help(x->route->policy, &x->in)) {
            device_hint =
                dev->present && dev->why ? dev->why : "no device certificate was presented";
        }
        return respond_denied(r, x->conf->an, x->id.user, x->id.email, res->reason,
                              x->conf->show_reason, device_hint);
    }
    case VERDICT_ALLOW:
    case VERDICT_ASK_OPA:
        break;
    }
    if (res->shadow && res->decision != POLICY_ALLOW) {
        log_emit(LOG_INFO, "policy", r->id, NULL, "shadow mode: rule %s would deny %s on route %s",
                 res->rule, who, r->route->name);
    }
    /* In shadow mode the record keeps what the policy said and that it was allowed. */
    struct record_args a = { "policy", res->decision == POLICY_ALLOW ? "allow" : "deny", "allow",
                             res->rule, res->reason };
    if (record(x, &a, &seq) != 0) {
        return log_unavailable(r);
    }
    return forward(x, seq);
}

/* ---- identify -> (sign-in records) -> policy ------------------------------------- */

/* The decision log and metrics for what authn did. Returns false when the
 * answer must be a 503 instead (the decision log is full). */
static bool record_authn_event(struct exchange *x)
{
    const struct authn_out *o = &x->ids.out;
    uint64_t seq;

    if (o->idp_error) {
        access_count(AC_IDP_ERROR, 1);
    }
    switch (o->event) {
    case AUTHN_EV_SIGNIN_REQUIRED: {
        identify_fill(x);
        (void)identity_to_input(&x->id, x->r, false, &x->in);
        x->res.rule = "sign-in";
        struct record_args a = { "signin", "login", "login", "sign-in", "sign-in required" };
        return record(x, &a, &seq) == 0;
    }
    case AUTHN_EV_LOGIN: {
        /* The login record names the new user; the browser comes back with the cookie. */
        identify_fill(x);
        (void)identity_to_input(&x->id, x->r, false, &x->in);
        struct record_args a = { "signin", "login", "login", "sign-in", "signed in" };
        if (record(x, &a, &seq) != 0) {
            return false;
        }
        access_count(AC_LOGIN, 1);
        return true;
    }
    case AUTHN_EV_LOGIN_FAILED: {
        /* A failed sign-in is a decision too (decision "error"): the log shows the
         * attempt and why it failed. A full log is counted and logged by
         * record_decision; the answer is a failure either way. */
        (void)identity_to_input(&x->id, x->r, false, &x->in);
        struct record_args a = { "signin", "error", "error", "sign-in", o->reason };
        (void)record(x, &a, &seq);
        return true;
    }
    case AUTHN_EV_LOGOUT:
        access_count(AC_LOGOUT, o->nlogouts);
        return true;
    case AUTHN_EV_NONE:
        break;
    }
    return true;
}

static enum access_step identified(struct exchange *x, enum authn_step st)
{
    struct request *r = x->r;
    bool logged = record_authn_event(x);

    if (st == AUTHN_RESPOND) {
        if (logged) {
            return respond_authn(r, x->conf->an, &x->ids.out);
        }
        if (x->ids.out.event == AUTHN_EV_LOGIN) {
            return respond_error(r, x->conf->an, 503, "Sign-in unavailable",
                                 "Gatehouse cannot record decisions right now.",
                                 "decision log queue full");
        }
        return log_unavailable(r);
    }
    if (st != AUTHN_OK || x->reserved) {
        /* Fail closed: a reserved endpoint always answers itself. */
        request_error(r, 500, "unexpected sign-in state");
        return ACCESS_RESPOND;
    }
    identify_fill(x);
    /* Only a policy file or the decision log can read the claims. */
    bool want_claims = x->route->policy_file || record_enabled();
    x->ident_incomplete = !identity_to_input(&x->id, r, want_claims, &x->in);
    return run_policy(x);
}

/* Host must name the TLS server name: see identify_host_misdirected. */
static bool misdirected(struct request *r)
{
    if (!identify_host_misdirected(r)) {
        return false;
    }
    request_error(r, 421, "the Host header names another host than the TLS server name");
    return true;
}

static enum access_step stage_check(struct request *r)
{
    if (misdirected(r)) {
        return ACCESS_RESPOND;
    }
    struct exchange *x = r->route && r->cfg->authn ? exchange_new(r, false) : NULL;

    if (!x || !x->route) {
        request_error(r, x ? 403 : 431, x ? "access denied" : "request too large");
        return ACCESS_RESPOND;
    }
    return identify(x, STR_NULL, identified);
}

/* ---- reserved endpoints ------------------------------------------------------------ */

/* A reserved endpoint whose request body must be read before authn sees it.
 * Every other /.gatehouse/ path goes to authn (authn.h lists them). Adding an
 * endpoint that reads a body (a SAML assertion consumer, say) is one line. */
struct reserved_endpoint {
    const char *path;
    const char *method;
    size_t body_max;
};

static const struct reserved_endpoint Reserved[] = {
    { "/.gatehouse/oidc/backchannel-logout", "POST", BODY_MAX },
    { "/.gatehouse/logout", "POST", BODY_MAX },
    /* The SAML ACS (HTTP-POST binding) is read the same way; authn checks it. */
    { "/.gatehouse/saml/acs", "POST", SAML_BODY_MAX },
};

static void reserved_body(struct request *r, struct str body, void *arg)
{
    struct exchange *x = arg;
    /* Kept in the arena: authn may need the provider's keys first and resume later. */
    char *copy = arena_strndup(r->arena, body.p ? body.p : "", body.len);

    if (!copy) {
        request_error(r, 413, "request body too large");
        return;
    }
    exchange_finish(x, identify(x, (struct str){ copy, body.len }, identified));
}

static enum access_step stage_reserved(struct request *r)
{
    if (misdirected(r)) {
        return ACCESS_RESPOND;
    }
    struct exchange *x = r->cfg->authn ? exchange_new(r, true) : NULL;

    if (!x) {
        request_error(r, 431, "request too large");
        return ACCESS_RESPOND;
    }
    for (size_t i = 0; i < sizeof Reserved / sizeof Reserved[0]; i++) {
        if (str_eq_cstr(r->path, Reserved[i].path) && str_eq_cstr(r->method, Reserved[i].method)) {
            x->pending = true;
            return request_read_body(r, Reserved[i].body_max, reserved_body, x);
        }
    }
    return identify(x, STR_NULL, identified);
}

/* CSP form-action for Gatehouse's own pages: the sign-in pages send the
 * browser on to the providers (authorization, end-session endpoints). */
static const char *stage_form_action(struct request *r)
{
    const struct access_conf *g = r->cfg ? r->cfg->authn : NULL;
    return g && g->an ? authn_form_action_origins(g->an, r->arena) : NULL;
}

static const struct access_stage Stage = {
    .check = stage_check,
    .reserved = stage_reserved,
    .form_action = stage_form_action,
    .ready = access_state_ready,
};

/* ---- start and stop ------------------------------------------------------------------ */

int access_start(const struct config *c, struct err *err)
{
    const struct access_conf *g = c->authn;
    struct err e = { 0 };

    if (Started) {
        return 0;
    }
    if (!g || !g->an) {
        return err_set(err, ERR_CONFIG, "sign-in configuration missing");
    }
    int rc = access_make_state_dir(c, err);
    if (rc != 0) {
        return rc;
    }
    /* Sessions, the assertion key, the pages and the login key: authn's. */
    rc = authn_start(g->an, &e);
    if (rc != 0) {
        return err_set(err, (enum err_code)rc, "%s", e.msg);
    }
    access_conf_share_start(g);
    pages_use_templates(authn_pages(g->an)); /* 5xx pages share the sign-in style */
    rc = record_start(g->dl, err);
    if (rc != 0) {
        return rc;
    }
    /* The device registry shares state.sqlite; opened here so that a broken
     * database shows at start, not at the first device's request. */
    device_registry_configure(c->state_sqlite, c->devices_cache_ttl_ms);
    if (c->state_sqlite) {
        struct device_store *ds = device_store_open(c->state_sqlite, &e);
        if (!ds) {
            return err_set(err, ERR_IO, "device registry: %s", e.msg);
        }
        device_store_close(ds);
    }
    opa_call_start_runtime();
    metrics_provider_add(access_metrics_render);
    access_stage_install(&Stage);
    Started = true;
    return 0;
}

void access_stop(void)
{
    if (!Started) {
        return;
    }
    access_stage_install(NULL);
    record_stop();
    pages_use_templates(NULL);
    access_conf_share_stop();
    opa_call_stop_runtime();
    Started = false;
}
