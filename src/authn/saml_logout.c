/* authn/saml_logout.c - SAML single logout (see saml.h): the LogoutRequest
 * that signs a user out at the identity provider, and the IdP's LogoutRequest
 * or LogoutResponse arriving at /.gatehouse/saml/slo. */
#include "saml.h"

#include <stdlib.h>
#include <string.h>

#include "saml_int.h"

/* ---- logout ------------------------------------------------------------- */

/* A lasso session holding what the SLO messages name: the NameID and the
 * SessionIndex of our sign-in (we keep these, not the assertion). */
static LassoSession *slo_session(const struct saml_idp *x, const char *name_id,
                                 const char *session_index)
{
    LassoSession *se = lasso_session_new();
    LassoSaml2Assertion *as = LASSO_SAML2_ASSERTION(lasso_saml2_assertion_new());
    as->Subject = LASSO_SAML2_SUBJECT(lasso_saml2_subject_new());
    as->Subject->NameID = LASSO_SAML2_NAME_ID(lasso_saml2_name_id_new_with_string((char *)name_id));
    if (session_index != NULL) {
        LassoSaml2AuthnStatement *st =
            LASSO_SAML2_AUTHN_STATEMENT(lasso_saml2_authn_statement_new());
        lasso_assign_string(st->SessionIndex, session_index);
        as->AuthnStatement = g_list_append(NULL, st);
    }
    lasso_session_add_assertion(se, x->idp_entity_id, LASSO_NODE(as));
    g_object_unref(as);
    return se;
}

static void slo_set_session(LassoProfile *p, const struct saml_idp *x, const char *name_id,
                            const char *session_index)
{
    LassoSession *se = slo_session(x, name_id, session_index);
    gchar *dump = lasso_session_dump(se);
    lasso_profile_set_session_from_dump(p, dump);
    g_free(dump);
    lasso_session_destroy(se);
}

char *saml_logout_url(const struct saml_idp *cx, const char *name_id, const char *session_index)
{
    struct saml_idp *x = (struct saml_idp *)cx;
    if (name_id == NULL) {
        return NULL;
    }
    char *url = NULL;
    pthread_mutex_lock(&x->mu);
    if (x->idp_slo_url == NULL || x->server == NULL) {
        pthread_mutex_unlock(&x->mu);
        return NULL;
    }
    LassoLogout *lo = lasso_logout_new(x->server);
    if (lo != NULL) {
        slo_set_session(LASSO_PROFILE(lo), x, name_id, session_index);
        lasso_profile_set_signature_hint(LASSO_PROFILE(lo), LASSO_PROFILE_SIGNATURE_HINT_FORCE);
        int rc = lasso_logout_init_request(lo, x->idp_entity_id, LASSO_HTTP_METHOD_REDIRECT);
        if (rc == 0) {
            rc = lasso_logout_build_request_msg(lo);
        }
        if (rc == 0 && LASSO_PROFILE(lo)->msg_url != NULL) {
            url = xstrdup(LASSO_PROFILE(lo)->msg_url);
        } else {
            log_warn("saml", "LogoutRequest to %s not built (lasso %d)", x->id, rc);
        }
    }
    if (lo != NULL) {
        lasso_logout_destroy(lo);
    }
    pthread_mutex_unlock(&x->mu);
    return url;
}

void saml_slo_fini(struct saml_slo *o)
{
    free(o->name_id);
    free(o->session_index);
    free(o->reply_url);
    free(o->user_key);
    memset(o, 0, sizeof *o);
}

/* The SAMLRequest or SAMLResponse of an HTTP-Redirect query, to lasso as the
 * whole query (it checks Signature over SAMLRequest/RelayState/SigAlg). */
/* Why lasso refused a logout message, in words for the log. */
static const char *logout_refusal(int lrc)
{
    if (lrc == LASSO_DS_ERROR_SIGNATURE_NOT_FOUND || lrc == LASSO_DS_ERROR_INVALID_SIGALG) {
        return "not signed";
    }
    if (lrc == LASSO_DS_ERROR_INVALID_SIGNATURE ||
        lrc == LASSO_DS_ERROR_SIGNATURE_VERIFICATION_FAILED) {
        return "bad signature";
    }
    return "malformed";
}

int saml_slo(struct saml_idp *const *idps, size_t nidps, struct str query, int64_t now_s,
             struct saml_slo *out, struct err *err)
{
    memset(out, 0, sizeof *out);
    saml_xml_quiet_thread();
    if (query.len == 0 || query.len > 64 * 1024) {
        return err_set(err, ERR_PARSE, "no SAML message in the query");
    }
    struct str raw;
    bool dup = false;
    bool is_req = codec_form_get(query, "SAMLRequest", &raw, &dup) && !dup;
    bool is_resp = !is_req && codec_form_get(query, "SAMLResponse", &raw, &dup) && !dup;
    if (!is_req && !is_resp) {
        return err_set(err, ERR_PARSE, "no single SAMLRequest or SAMLResponse in the query");
    }
    /* The redirect binding's algorithm, as for the ACS (SHA-1 only with
     * allow_sha1, checked per IdP below). */
    char *sigalg = NULL;
    if (codec_form_get(query, "SigAlg", &raw, &dup) && !dup) {
        sigalg = codec_url_decode(raw, NULL);
    }
    char *q = xstrndup(query.p, query.len);
    int rc = -1, lrc = LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND;
    for (size_t i = 0; i < nidps && lrc == LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND; i++) {
        struct saml_idp *x = idps[i];
        pthread_mutex_lock(&x->mu);
        LassoLogout *lo = x->server ? lasso_logout_new(x->server) : NULL;
        if (lo == NULL) {
            pthread_mutex_unlock(&x->mu);
            continue;
        }
        lasso_profile_set_signature_verify_hint(LASSO_PROFILE(lo),
                                                LASSO_PROFILE_SIGNATURE_VERIFY_HINT_FORCE);
        lasso_profile_set_signature_hint(LASSO_PROFILE(lo), LASSO_PROFILE_SIGNATURE_HINT_FORCE);
        lrc = is_req ? lasso_logout_process_request_msg(lo, q)
                     : lasso_logout_process_response_msg(lo, q);
        if (lrc == LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND ||
            lrc == LASSO_PROFILE_ERROR_MISSING_ISSUER) {
            lrc = LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND;
        } else if (sigalg != NULL && !saml_in_list(sigalg, saml_sig_algs) &&
                   !(x->allow_sha1 && saml_sha1_alg(sigalg, false))) {
            err_set(err, ERR_CRYPTO, "logout message signature algorithm %.80s refused", sigalg);
        } else if (is_resp) {
            /* Our session ended before we asked the IdP: its answer only says
             * how the IdP fared (lasso keeps no request state here); it must
             * still be well-formed and signed by the IdP. */
            out->idp = x;
            out->is_response = true;
            if (lrc == 0 || lrc == LASSO_PROFILE_ERROR_STATUS_NOT_SUCCESS) {
                rc = 0; /* a failure at the IdP still ends here (ours is gone) */
            } else {
                err_set(err, ERR_CRYPTO, "LogoutResponse refused: %s (lasso %d)",
                        logout_refusal(lrc), lrc);
            }
        } else if (lrc != 0) {
            err_set(err, ERR_CRYPTO, "LogoutRequest refused: %s (lasso %d)", logout_refusal(lrc),
                    lrc);
        } else {
            LassoSamlp2LogoutRequest *lr =
                LASSO_IS_SAMLP2_LOGOUT_REQUEST(LASSO_PROFILE(lo)->request)
                    ? LASSO_SAMLP2_LOGOUT_REQUEST(LASSO_PROFILE(lo)->request)
                    : NULL;
            const char *dest = lr ? lr->parent.Destination : NULL;
            int64_t noa = lr && lr->NotOnOrAfter ? saml_iso_time(lr->NotOnOrAfter) : 0;
            if (lr == NULL || lr->NameID == NULL || lr->NameID->content == NULL) {
                err_set(err, ERR_PARSE, "LogoutRequest without NameID");
            } else if (dest != NULL && strcmp(dest, x->slo_url) != 0) {
                err_set(err, ERR_CRYPTO, "LogoutRequest Destination is not our SLO URL");
            } else if (noa < 0 || (noa > 0 && now_s >= noa + x->clock_skew_s)) {
                err_set(err, ERR_CRYPTO, "LogoutRequest has expired");
            } else {
                out->idp = x;
                out->name_id = xstrdup(lr->NameID->content);
                GList *sx = lasso_samlp2_logout_request_get_session_indexes(lr);
                const char *si = sx ? sx->data : lr->SessionIndex;
                out->session_index = si ? xstrdup(si) : NULL;
                g_list_free_full(sx, g_free);
                out->user_key = xasprintf("%s#%s", x->idp_entity_id, out->name_id);
                /* Our answer: a signed LogoutResponse back to the IdP. */
                slo_set_session(LASSO_PROFILE(lo), x, out->name_id, out->session_index);
                int vrc = lasso_logout_validate_request(lo);
                if (lasso_logout_build_response_msg(lo) == 0 && LASSO_PROFILE(lo)->msg_url) {
                    out->reply_url = xstrdup(LASSO_PROFILE(lo)->msg_url);
                } else {
                    log_warn("saml", "LogoutResponse to %s not built (lasso %d)", x->id, vrc);
                }
                rc = 0;
            }
        }
        lasso_logout_destroy(lo);
        pthread_mutex_unlock(&x->mu);
    }
    if (rc != 0 && lrc == LASSO_SERVER_ERROR_PROVIDER_NOT_FOUND) {
        err_set(err, ERR_CRYPTO, "SAML logout message from an unknown Issuer");
    }
    free(q);
    free(sigalg);
    if (rc != 0) {
        saml_slo_fini(out);
    }
    return rc;
}
