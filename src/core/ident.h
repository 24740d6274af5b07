/* core/ident.h - one meaning of `--user` for every command that selects by user
 * (`gatehouse sessions`, `gatehouse audit query`). */
#ifndef GH_CORE_IDENT_H
#define GH_CORE_IDENT_H

#include <stdbool.h>

/* True when query names the identity (user id as recorded, email, IdP id; each
 * may be NULL). query may be:
 *  - an email: compared with email, ignoring case;
 *  - the user id exactly as recorded (bare "alice", or qualified "corp:alice");
 *  - a qualified id "<idp>:<sub>": the user <sub> signed in through IdP <idp>,
 *    whether the record spells the id bare (with idp "corp") or qualified;
 *  - a bare id "<sub>": only a record whose user id is that bare id (the user of
 *    the provider with bare_user_ids), never a qualified "corp:alice".
 * Never a substring or prefix match. */
bool ident_user_match(const char *query, const char *user, const char *email, const char *idp);

/* An administrative act to record in the decision log (session revocation, device
 * enrolment...). Strings are borrowed. */
struct admin_act {
    const char *action;             /* "session.revoke" */
    const char *target;             /* "user bob", "session 0123abcd" */
    const char *reason;             /* one line for people: "revoked 2 session(s)" */
    const char *user, *email, *idp; /* the user concerned, when there is one */
};
/* Records act in the decision log configured in conf_file. Returns 0 (note gets a
 * line for the operator, e.g. "logged as decision record 17"), 1 when the config has
 * no decision log (nothing recorded), or -1 with the reason in note. */
typedef int admin_log_fn(const char *conf_file, const struct admin_act *act, char *note,
                         size_t note_size);

#endif
