/* proxy/access/identity.c - the policy input: the identity (identify.c) and the
 * request as policies, OPA and the decision log see them. */
#include <string.h>

#include "access_int.h"

struct str access_host_only(struct str h)
{
    if (h.len && h.p[0] == '[') {
        const char *end = memchr(h.p, ']', h.len);
        return end ? (struct str){ h.p + 1, (size_t)(end - h.p - 1) } : h;
    }
    const char *colon = memchr(h.p, ':', h.len);
    return colon ? (struct str){ h.p, (size_t)(colon - h.p) } : h;
}

bool identity_to_input(const struct identity *id, const struct request *r, bool want_claims,
                       struct policy_input *in)
{
    bool complete = true;

    in->authenticated = id->authenticated;
    in->user = str_from(id->user);
    in->email = str_from(id->email);
    in->idp = str_from(id->idp);
    in->session = str_from(id->session);
    const struct authn_attrs *at = id->authenticated && id->authn ? id->authn->attrs : NULL;
    if (at) {
        /* Parsed once by authn (sign-in, refresh, bearer verification): the
         * groups are used as they are, the claims pointed at. */
        in->groups = at->groups;
        in->ngroups = at->ngroups;
        complete = !at->groups_overflow && !(want_claims && at->claims_overflow);
        struct policy_kv *kv =
            want_claims ? arena_alloc(r->arena, (at->nclaims ? at->nclaims : 1) * sizeof *kv)
                        : NULL;
        for (size_t i = 0; kv && i < at->nclaims; i++) {
            kv[i] = (struct policy_kv){ at->claims[i].name, at->claims[i].value };
        }
        in->claims = kv;
        in->nclaims = kv ? at->nclaims : 0;
        complete = complete && (kv || !want_claims);
    }
    /* The device: what the certificate and the registry say, live. */
    const struct authn_device *d = &id->device;
    in->device = (struct policy_device){ 0 };
    if (d->present) {
        in->device = (struct policy_device){ .present = true,
                                             .trusted = d->trusted,
                                             .id = str_from(d->id),
                                             .owner = str_from(d->owner),
                                             .subject = str_from(d->subject),
                                             .issuer = str_from(d->issuer),
                                             .serial = str_from(d->serial),
                                             .fingerprint = str_from(d->fingerprint),
                                             .san = str_from(d->san) };
    }
    if (!request_client_addr(r, &in->client_ip)) {
        policy_ip_parse(str_from(r->client_ip), &in->client_ip);
    }
    in->method = r->method;
    in->host = access_host_only(r->hostname);
    in->path = r->path;
    struct policy_kv *hdrs = arena_alloc(r->arena, (r->nheaders ? r->nheaders : 1) * sizeof *hdrs);
    if (hdrs) {
        for (size_t i = 0; i < r->nheaders; i++) {
            hdrs[i] = (struct policy_kv){ r->headers[i].name, r->headers[i].value };
        }
        in->headers = hdrs;
        in->nheaders = r->nheaders;
    }
    in->time_s = (int64_t)time(NULL);
    in->route = str_from(r->route ? r->route->name : NULL);
    return complete;
}
