"""SAML 2.0 sign-in through the real SAML IdP (npm samlify, RSA-SHA256): the
SP metadata, the AuthnRequest by HTTP-Redirect, the HTTP-POST Response at the
ACS, the session, identity headers, /.gatehouse/me, the decision log and
logout. Then every known SP attack, each forged by the test IdP with only the
named defect (re-signed with the IdP's key where the defect is not the
signature): refused with 403/400, no session cookie, a plain page without
XML or library text, and a log line that names the check."""
import base64
import json
import os
import re
import shutil
import tempfile
import time
import unittest
import urllib.parse

import subprocess

from harness import Backend, Gatehouse, basic_config, free_port, gatehouse_bin, read_jsonl, to_yaml, \
    wait_until
from oidc import Browser
from saml import SamlIdP, idp_form, make_key_cert, read, saml_conf, sp_files, to_idp


# The SAML identity in policy: the IdP's id, its groups and its attributes.
ADM_POLICY = """rules:
  - id: saml-admins
    effect: allow
    when:
      all:
        - idp: partners
        - groups: {contains: admins}
        - claim: {name: displayName, is: Alice Liddell}
"""


class SamlStack:
    """A backend, the samlify IdP and Gatehouse with one SAML IdP on a port
    picked in advance (the IdP fetches our metadata from it). state_dir keeps
    the database across restart()."""

    def __init__(self, idp_extra=None, want_signed_requests=False, gh_extra=None,
                 state_dir=None, metadata_url=False, second=None):
        self.backend = Backend("app")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.tmp = tempfile.mkdtemp(prefix="gh-saml-")
        self.idp = SamlIdP(self.base + "/.gatehouse/saml/metadata",
                           want_signed_requests=want_signed_requests)
        self.gh = None
        try:
            db = os.path.join(state_dir, "gatehouse.db") if state_dir else "var/gatehouse.db"
            idp_extra = dict(idp_extra or {})
            if metadata_url:
                idp_extra.update(metadata=self.idp.base + "/metadata",
                                 allow_insecure_metadata=True)
            self.cfg = basic_config(
                [{"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True,
                  "upstream": {"servers": [self.backend.url]}},
                 {"name": "adm", "match": {"path_prefix": "/adm/"}, "policy": "adm.yaml",
                  "upstream": {"servers": [self.backend.url]}},
                 {"name": "app", "upstream": {"servers": [self.backend.url]}}],
                listen=[{"address": f"127.0.0.1:{self.port}"}],
                state={"sqlite": db},
                identity_providers=[saml_conf(self.base, **idp_extra)] +
                ([saml_conf(self.base, **second)] if second else []),
                decision_log={"file": os.path.join(state_dir, "decisions.jsonl") if state_dir
                              else "var/decisions.jsonl"},
            )
            self.cfg.update(gh_extra or {})
            self.files = sp_files(self.idp, self.tmp)
            self.files["adm.yaml"] = ADM_POLICY
            self.start_gh()
        except Exception:
            self.stop()
            raise

    def start_gh(self):
        self.gh = Gatehouse(self.cfg, files=self.files)

    def restart(self):
        self.gh.stop()  # SIGTERM: pending writes are flushed
        self.gh.cleanup()
        self.start_gh()

    def log(self):
        return self.gh.stderr().replace('\\"', '"')

    def stop(self):
        if self.gh:
            self.gh.cleanup()
        self.idp.stop()
        self.backend.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class SamlCase(unittest.TestCase):
    stack_args = {}

    def sign_out(self, b):
        """Signs out as a browser does: the confirmation page, then its form (a
        same-origin POST carrying the page's token)."""
        r = b.request(self.base + "/.gatehouse/logout")
        self.assertEqual(r.status, 200, r)
        token = re.search(rb'name="csrf_token" value="([^"]+)"', r.body).group(1).decode()
        return b.request(self.base + "/.gatehouse/logout", "POST", {"csrf_token": token},
                         headers={"Sec-Fetch-Site": "same-origin", "Origin": self.base})

    @classmethod
    def setUpClass(cls):
        cls.s = SamlStack(**cls.stack_args)
        cls.base = cls.s.base

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def sign_in(self, b=None, path="/", **params):
        """The whole walk: Gatehouse -> IdP -> form POST to the ACS. Returns
        (browser, ACS response, form fields)."""
        b = b or Browser()
        sso = to_idp(b, self.base, path)
        action, fields = idp_form(b, sso, **params)
        self.assertEqual(action, self.base + "/.gatehouse/saml/acs")
        r = b.request(action, "POST", fields)
        return b, r, fields

    def assert_refused(self, r, b, reason, status=403):
        """Refused with a clear page, no session, and its own log line."""
        self.assertEqual(r.status, status, r)
        self.assertFalse(any(v.startswith("gatehouse_session=") for v in r.header_all("Set-Cookie")),
                         r.header_all("Set-Cookie"))
        self.assertIsNone(b.session_cookie(self.base))
        body = r.body.decode("utf-8", "replace")
        self.assertIn("Sign-in failed", body)
        for leak in ("lasso", "Lasso", "<saml", "samlp:", "urn:oasis", "xmldsig", "Assertion"):
            self.assertNotIn(leak, body)
        lines = [x for x in self.s.log().splitlines() if "sign-in refused: " in x]
        self.assertTrue(lines and ("sign-in refused: " + reason) in lines[-1],
                        f"expected {reason!r}, last refusal: {lines[-1:]}")
        # and the browser is not let in afterwards
        r2 = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(r2.status, 401)


class SamlFlowTest(SamlCase):
    def test_sp_metadata(self):
        b = Browser()
        r = b.request(self.base + "/.gatehouse/saml/metadata")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Type"), "application/samlmetadata+xml")
        md = r.body.decode()
        self.assertIn(f'entityID="{self.base}/.gatehouse/saml/metadata"', md)
        self.assertIn(f'Location="{self.base}/.gatehouse/saml/acs"', md)
        self.assertIn("HTTP-POST", md)
        self.assertIn('use="signing"', md)
        self.assertIn('use="encryption"', md)
        self.assertIn("SingleLogoutService", md)
        self.assertIn('WantAssertionsSigned="true"', md)
        self.assertIn("<ds:X509Certificate>", md)

    def test_sign_in_reaches_backend_me_and_logout(self):
        b = Browser()
        r = b.request(self.base + "/hello?x=1")
        self.assertEqual(r.status, 302)
        self.assertEqual(r.header("Location"), "/.gatehouse/login?rd=%2Fhello%3Fx%3D1")
        b, r, fields = self.sign_in(b, "/hello?x=1")
        self.assertEqual(r.status, 303, r)
        self.assertEqual(r.header("Location"), "/hello?x=1")
        # RelayState is an opaque handle, never the return URL
        self.assertRegex(fields["RelayState"], r"^[0-9a-f]{32}$")
        self.assertIsNotNone(b.session_cookie(self.base))
        r = b.request(self.base + "/hello?x=1")
        self.assertEqual(r.status, 200, r)
        seen = self.s.backend.last("/hello")
        h = {k.lower(): v for k, v in seen["headers"]}
        # A SAML IdP's users are qualified by its id, as every provider's are.
        self.assertEqual(h["x-gatehouse-user"], "partners:alice@example.com")
        self.assertEqual(h["x-gatehouse-email"], "alice@example.com")
        self.assertEqual(h["x-gatehouse-groups"], "staff,admins")
        self.assertEqual(len(h["x-gatehouse-assertion"].split(".")), 3)
        payload = json.loads(base64.urlsafe_b64decode(
            h["x-gatehouse-assertion"].split(".")[1] + "=="))
        self.assertEqual(payload["email"], "alice@example.com")
        self.assertEqual(payload["groups"], ["staff", "admins"])
        self.assertNotIn("gatehouse_session", h.get("cookie", ""))
        me = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.status, 200)
        j = me.json()
        self.assertEqual(j["user"], "partners:alice@example.com")
        self.assertEqual(j["name"], "Alice Liddell")
        self.assertEqual(j["groups"], ["staff", "admins"])
        self.assertEqual(j["idp"], "partners")
        # the decision log records the sign-in and the request, with idp
        recs = read_jsonl(os.path.join(self.s.gh.dir, "var", "decisions.jsonl"))
        self.assertTrue(any(json.dumps(x).find("alice@example.com") >= 0 for x in recs))
        self.assertIn("signed in alice@example.com via partners (SAML)", self.s.log())
        # logout ends the session
        r = self.sign_out(b)
        self.assertEqual(r.status, 303, r)
        r = b.request(self.base + "/hello", headers={"Accept": "application/json"})
        self.assertEqual(r.status, 401)

    def test_policy_and_decision_log_see_the_saml_identity(self):
        alice, r, _ = self.sign_in()
        self.assertEqual(r.status, 303, r)
        bob, r, _ = self.sign_in(user="bob")
        self.assertEqual(r.status, 303, r)
        self.assertEqual(alice.request(self.base + "/adm/x").status, 200)
        r = bob.request(self.base + "/adm/x")
        self.assertEqual(r.status, 403, r)
        path = os.path.join(self.s.gh.dir, "var", "decisions.jsonl")
        deadline = time.time() + 15
        while time.time() < deadline:
            recs = [e for e in read_jsonl(path) if e.get("route") == "adm"]
            if len(recs) >= 2:
                break
            time.sleep(0.1)
        by_user = {json.dumps(e): e for e in recs}
        text = json.dumps(recs)
        self.assertIn('"saml-admins"', text)
        self.assertIn('"default-deny"', text)
        self.assertIn('"partners"', text)
        self.assertIn("bob@example.com", text)
        self.assertTrue(by_user)

    def test_other_user_and_samlify_message_signature(self):
        b, r, _ = self.sign_in(user="bob", case="message_signed")
        self.assertEqual(r.status, 303, r)
        me = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.json()["user"], "partners:bob@example.com")
        self.assertEqual(me.json()["groups"], ["staff"])

    def test_forged_baseline_is_accepted(self):
        # The forging path with no defect signs in: each attack below differs
        # from this by its one defect only.
        b, r, _ = self.sign_in(case="baseline")
        self.assertEqual(r.status, 303, r)

    def test_return_path_kept_and_open_redirects_not_followed(self):
        for rd in ("//evil.example.com/x", "https://evil.example.com/", "/\\evil.example.com"):
            b = Browser()
            r = b.request(self.base + "/.gatehouse/login?rd=" + urllib.parse.quote(rd, safe=""))
            sso = r.header("Location")
            action, fields = idp_form(b, sso)
            r = b.request(action, "POST", fields)
            self.assertEqual(r.status, 303, r)
            self.assertEqual(r.header("Location"), "/", rd)


class SamlSessionsCliTest(SamlCase):
    def test_sessions_user_takes_the_saml_qualified_id(self):
        b, r, _ = self.sign_in(user="bob")
        self.assertEqual(r.status, 303, r)
        cfg = self.s.gh.config_path

        def cli(*args):
            return subprocess.run([gatehouse_bin(), "sessions", *args, "-c", cfg],
                                  capture_output=True, text=True, timeout=30)

        def listed():
            out = cli("list", "--json", "--user", "partners:bob@example.com")
            return [json.loads(l) for l in out.stdout.splitlines()]
        deadline = time.time() + 15
        while not listed() and time.time() < deadline:
            time.sleep(0.1)  # the writer thread stores new sessions
        rows = listed()
        self.assertEqual([x["user"] for x in rows], ["partners:bob@example.com"], rows)
        self.assertEqual(cli("list", "--json", "--user", "partners:alice@example.com").stdout, "")
        out = cli("revoke", "--user", "partners:bob@example.com")
        self.assertEqual((out.returncode, out.stdout), (0, "revoked 1 session(s)\n"), out.stderr)
        deadline = time.time() + 15
        while time.time() < deadline:
            r = b.request(self.base + "/hello", headers={"Accept": "application/json"})
            if r.status == 401:
                break
            time.sleep(0.1)
        self.assertEqual(r.status, 401)


class SamlLogoutTest(SamlCase):
    def test_confirmation_form_may_lead_to_the_idp(self):
        # The sign-out form's answer redirects to the IdP's logout service: a
        # browser enforces form-action on that redirect too (Chromium aborts it).
        b, r, _ = self.sign_in()
        r = b.request(self.base + "/.gatehouse/logout")
        self.assertEqual(r.status, 200, r)
        csp = r.header("Content-Security-Policy")
        fa = [d for d in csp.split(";") if d.strip().startswith("form-action")][0].split()
        idp = urllib.parse.urlsplit(self.s.idp.base)
        self.assertIn(f"{idp.scheme}://{idp.netloc}", fa, csp)

    def test_sp_initiated_single_logout(self):
        b, r, _ = self.sign_in()
        self.assertEqual(r.status, 303, r)
        r = self.sign_out(b)
        self.assertEqual(r.status, 303, r)
        loc = r.header("Location")
        self.assertTrue(loc.startswith(self.s.idp.base + "/slo?SAMLRequest="), loc)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
        self.assertEqual(q["SigAlg"], ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"])
        # the IdP checks our signature, ends its session and answers
        r = b.request(loc)
        self.assertEqual(r.status, 302, r)
        # (the IdP's output is read by another thread: the line may trail the answer)
        self.assertTrue(wait_until(lambda: "GH_SAML_LOGOUT nameid=alice@example.com session=_s"
                                   in self.s.idp.log(), 10), self.s.idp.log())
        back = r.header("Location")
        self.assertTrue(back.startswith(self.base + "/.gatehouse/saml/slo?SAMLResponse="), back)
        r = b.request(back)
        self.assertEqual(r.status, 200, r)
        self.assertIn("SAML logout answered by partners", self.s.log())
        me = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.status, 401)

    def test_idp_initiated_single_logout_ends_the_named_session(self):
        sid_a, sid_b = "_sa" + os.urandom(6).hex(), "_sb" + os.urandom(6).hex()
        a, r, _ = self.sign_in(case="baseline", sid=sid_a)
        self.assertEqual(r.status, 303, r)
        b, r, _ = self.sign_in(case="baseline", sid=sid_b)
        self.assertEqual(r.status, 303, r)
        # unsigned: refused, nothing ended
        x = Browser()
        r = x.request(self.s.idp.base + "/initiate-logout?" + urllib.parse.urlencode(
            {"nameid": "alice@example.com", "session": sid_a, "unsigned": "1"}))
        r = x.request(r.header("Location"))
        self.assertEqual(r.status, 400, r)
        self.assertIn("SAML logout refused: LogoutRequest refused: not signed", self.s.log())
        self.assertNotIn(b"lasso", r.body)
        me = a.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.status, 200)
        # signed, for session A only
        r = x.request(self.s.idp.base + "/initiate-logout?" + urllib.parse.urlencode(
            {"nameid": "alice@example.com", "session": sid_a}))
        r = x.request(r.header("Location"))
        self.assertEqual(r.status, 302, r)
        self.assertTrue(r.header("Location").startswith(self.s.idp.base + "/slo?SAMLResponse="))
        self.assertIn("SAML logout from partners ended 1 session(s)", self.s.log())
        me = a.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.status, 401)
        me = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.status, 200)


class SamlAttackTest(SamlCase):
    def attack(self, reason, status=403, **params):
        b, r, _ = self.sign_in(**params)
        self.assert_refused(r, b, reason, status)

    def test_unsigned_response(self):
        self.attack("assertion is not signed", case="unsigned")

    def test_signature_by_another_key(self):
        self.attack("signature does not verify", case="otherkey")

    def test_xsw_evil_assertion_before(self):
        self.attack("2 assertions in the message", case="xsw_before")

    def test_xsw_evil_assertion_after(self):
        self.attack("2 assertions in the message", case="xsw_after")

    def test_xsw_duplicate_id(self):
        self.attack("two elements share an ID", case="xsw_dupid")

    def test_xsw_signed_assertion_in_extensions(self):
        self.attack("2 assertions in the message", case="xsw_extensions")

    def test_xsw_signed_assertion_in_object(self):
        self.attack("2 assertions in the message", case="xsw_object")

    def test_xsw_wrapped(self):
        self.attack("2 assertions in the message", case="xsw_wrapped")

    def test_extra_signature_in_extensions(self):
        self.attack("a signature outside the Response and Assertion", case="extra_signature")

    def test_signature_moved_to_the_response(self):
        self.attack("signature references another element than the one it is in",
                    case="sig_moved_to_response")

    def test_tampered_attribute(self):
        self.attack("signature does not verify", case="tamper_attr")

    def test_wrong_audience(self):
        self.attack("AudienceRestriction does not name our entity id", case="wrong_audience")

    def test_missing_audience_restriction(self):
        self.attack("assertion without AudienceRestriction", case="no_audience")

    def test_wrong_destination(self):
        self.attack("Destination is not our ACS URL", case="wrong_destination")

    def test_wrong_recipient(self):
        self.attack("SubjectConfirmationData Recipient is not our ACS URL", case="wrong_recipient")

    def test_wrong_issuer(self):
        self.attack("Issuer is not the identity provider's entity id", case="wrong_issuer")

    def test_not_bearer(self):
        self.attack("SubjectConfirmation method is not bearer", case="wrong_method")

    def test_expired(self):
        self.attack("assertion has expired", case="expired")

    def test_not_yet_valid(self):
        self.attack("assertion is not yet valid", case="not_yet_valid")

    def test_in_response_to_mismatch(self):
        self.attack("InResponseTo does not match the request sent for this browser",
                    case="irt_other")

    def test_sha1_signature(self):
        self.attack("signature algorithm http://www.w3.org/2000/09/xmldsig#rsa-sha1 refused",
                    case="sha1")

    def test_hmac_signature_keyed_with_the_public_certificate(self):
        self.attack("signature algorithm http://www.w3.org/2000/09/xmldsig#hmac-sha1 refused",
                    case="hmac")

    def test_doctype_external_entity(self):
        self.attack("DOCTYPE or ENTITY declaration in the message (XXE)", case="doctype")

    def test_comment_in_nameid(self):
        self.attack("comment inside the message", case="nameid_comment")

    def test_status_not_success(self):
        self.attack("Status is not Success", case="status_fail")

    def test_relaystate_open_redirect(self):
        for evil in ("//evil.example.com", "https://evil.example.com", "/\\evil.example.com"):
            b, r, _ = self.sign_in(relay=evil)
            self.assert_refused(r, b, "RelayState does not match this browser's sign-in")
            self.assertIsNone(r.header("Location"))

    def test_unsolicited_response(self):
        # A response to no request of this browser (no login state).
        b = Browser()
        sso = to_idp(b, self.base)
        action, fields = idp_form(b, sso, case="unsolicited")
        fields.pop("RelayState", None)
        fresh = Browser()
        r = fresh.request(action, "POST", fields)
        self.assert_refused(r, fresh, "unsolicited response")

    def test_response_for_another_browser(self):
        # Login CSRF / session fixation: a response obtained by the attacker's
        # browser posted from the victim's, who has a sign-in of its own.
        attacker = Browser()
        action, fields = idp_form(attacker, to_idp(attacker, self.base))
        victim = Browser()
        to_idp(victim, self.base)
        r = victim.request(action, "POST", fields)
        self.assert_refused(r, victim, "RelayState does not match")

    def test_replayed_response(self):
        b = Browser()
        sso = to_idp(b, self.base)
        login_cookie = dict(b.jar(urllib.parse.urlsplit(self.base).netloc))
        action, fields = idp_form(b, sso)
        r = b.request(action, "POST", fields)
        self.assertEqual(r.status, 303, r)
        # the same POST again, with the same login cookie (a captured request)
        again = Browser()
        again.jar(urllib.parse.urlsplit(self.base).netloc).update(login_cookie)
        r = again.request(action, "POST", fields)
        self.assert_refused(r, again, "assertion ID already used (replay)")

    def test_replayed_assertion_id_in_fresh_response(self):
        aid = "_replayed" + os.urandom(8).hex()
        b, r, _ = self.sign_in(case="baseline", aid=aid)
        self.assertEqual(r.status, 303, r)
        b2, r, _ = self.sign_in(case="baseline", aid=aid)
        self.assert_refused(r, b2, "assertion ID already used (replay)")

    def test_replayed_assertion_id_after_restart(self):
        # The assertion ids are kept in the state database, not only in memory.
        tmp = tempfile.mkdtemp(prefix="gh-saml-restart-")
        st = SamlStack(state_dir=tmp)
        try:
            aid = "_restart" + os.urandom(8).hex()
            b = Browser()
            action, fields = idp_form(b, to_idp(b, st.base), case="baseline", aid=aid)
            self.assertEqual(b.request(action, "POST", fields).status, 303)
            st.restart()
            b2 = Browser()
            action, fields = idp_form(b2, to_idp(b2, st.base), case="baseline", aid=aid)
            r = b2.request(action, "POST", fields)
            self.assertEqual(r.status, 403, r)
            self.assertIn("assertion ID already used (replay)", st.log())
            self.assertIsNone(b2.session_cookie(st.base))
            # the first browser's session survived the restart too
            me = b.request(st.base + "/.gatehouse/me", headers={"Accept": "application/json"})
            self.assertEqual(me.status, 200)
        finally:
            st.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    def test_garbage_and_oversized_posts(self):
        b = Browser()
        for body, reason in ((b"SAMLResponse=!!!", "SAMLResponse is not base64"),
                             (b"SAMLResponse=%zz", "SAMLResponse or RelayState given twice or"),
                             (urllib.parse.urlencode({"SAMLResponse": base64.b64encode(b"<a/>")}).encode(),
                              "the message is not a samlp:Response"),
                             (b"RelayState=x", "no SAMLResponse in the POST")):
            r = b.request(self.base + "/.gatehouse/saml/acs", "POST", body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
            self.assertIn(r.status, (400, 403), r)
            self.assertIn(reason, self.s.log().splitlines()[-1])
        r = b.request(self.base + "/.gatehouse/saml/acs", "POST", b"SAMLResponse=" + b"A" * 300000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(r.status, 413)
        r = b.request(self.base + "/.gatehouse/saml/acs")
        self.assertEqual(r.status, 405)


class SamlSignedRequestTest(SamlCase):
    """An IdP whose metadata says WantAuthnRequestsSigned: the AuthnRequest is
    signed (RSA-SHA256) and samlify verifies it with our metadata's key."""
    stack_args = {"want_signed_requests": True}

    def test_signed_authn_request(self):
        b = Browser()
        sso = to_idp(b, self.base)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(sso).query)
        self.assertEqual(q["SigAlg"], ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"])
        self.assertIn("Signature", q)
        md = b.request(self.base + "/.gatehouse/saml/metadata").body.decode()
        self.assertIn('AuthnRequestsSigned="true"', md)
        action, fields = idp_form(b, sso)
        r = b.request(action, "POST", fields)
        self.assertEqual(r.status, 303, r)
        # a tampered request is refused by the IdP: the signature is real
        bad = sso.replace("RelayState=", "RelayState=0")
        r = b.request(bad)
        self.assertEqual(r.status, 400, r)


class SamlUnsolicitedAllowedTest(SamlCase):
    stack_args = {"idp_extra": {"allow_unsolicited": True}}

    def test_unsolicited_allowed_but_relaystate_not_followed(self):
        b = Browser()
        action, fields = idp_form(b, to_idp(b, self.base), case="unsolicited")
        fields.pop("RelayState", None)
        fresh = Browser()
        r = fresh.request(action, "POST", fields)
        self.assertEqual(r.status, 303, r)
        self.assertEqual(r.header("Location"), "/")
        # with a RelayState that is a URL: refused, never followed
        action, fields = idp_form(b, to_idp(b, self.base), case="unsolicited",
                                  relay="https://evil.example.com/")
        other = Browser()
        r = other.request(action, "POST", fields)
        self.assert_refused(r, other, "RelayState in an unsolicited response is not followed")


class SamlEncryptedTest(SamlCase):
    """want_assertions_encrypted: the IdP encrypts to our metadata's certificate
    (AES-256-GCM, RSA-OAEP); a plain assertion is refused."""
    stack_args = {"idp_extra": {"want_assertions_encrypted": True}}

    def test_encrypted_assertion_signs_in(self):
        for case in ("encrypted", "encrypted_message_signed"):
            b, r, fields = self.sign_in(case=case)
            self.assertIn(b"EncryptedAssertion", base64.b64decode(fields["SAMLResponse"]))
            self.assertEqual(r.status, 303, (case, r, self.s.log()[-600:]))
            me = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
            self.assertEqual(me.json()["email"], "alice@example.com")

    def test_plain_assertion_refused(self):
        b, r, _ = self.sign_in(case="baseline")
        self.assert_refused(r, b, "plain assertion refused (want_assertions_encrypted)")

    def test_encrypted_but_unsigned_assertion_refused(self):
        b, r, _ = self.sign_in(case="encrypted_unsigned")
        self.assert_refused(r, b, "response is not signed")


class SamlChooserTest(SamlCase):
    """Two SAML IdPs: the chooser lists them by display_name; each sign-in
    is recorded with its own IdP id."""
    stack_args = {"idp_extra": {"display_name": "Partner login"},
                  "second": {"id": "suppliers", "display_name": "Supplier <login>"}}

    def test_chooser_then_the_chosen_idp(self):
        b = Browser()
        r = b.request(self.base + "/.gatehouse/login?rd=%2Fx")
        self.assertEqual(r.status, 200, r)
        page = r.body.decode()
        self.assertIn("Partner login", page)
        self.assertIn("Supplier &lt;login&gt;", page)
        self.assertIn("idp=suppliers", page)
        r = b.request(self.base + "/.gatehouse/login?idp=suppliers&rd=%2Fx")
        self.assertEqual(r.status, 302)
        action, fields = idp_form(b, r.header("Location"))
        r = b.request(action, "POST", fields)
        self.assertEqual(r.status, 303, r)
        me = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.json()["idp"], "suppliers")
        self.assertIn("signed in alice@example.com via suppliers (SAML)", self.s.log())
        r = b.request(self.base + "/.gatehouse/saml/metadata?idp=suppliers")
        self.assertEqual(r.status, 200)
        r = b.request(self.base + "/.gatehouse/login?idp=nope&rd=%2F")
        self.assertEqual(r.status, 400)


class SamlMetadataUrlTest(SamlCase):
    """metadata: a URL, fetched by the proxy on first use (never blocking the
    loop), then every sign-in and logout works as with the file."""
    stack_args = {"metadata_url": True}

    def test_fetched_then_sign_in_and_logout(self):
        self.assertNotIn("SAML metadata of partners loaded", self.s.log())
        b, r, _ = self.sign_in()
        self.assertEqual(r.status, 303, r)
        self.assertEqual(self.s.log().count("SAML metadata of partners loaded from "
                                            + self.s.idp.base + "/metadata"), 1)
        md = b.request(self.base + "/.gatehouse/saml/metadata")
        self.assertEqual(md.status, 200)
        self.assertIn(b"AssertionConsumerService", md.body)
        r = self.sign_out(b)
        self.assertTrue(r.header("Location", "").startswith(self.s.idp.base + "/slo?"), r)
        # one fetch served everything (refreshed after its cache duration)
        b2, r, _ = self.sign_in(case="xsw_before")
        self.assert_refused(r, b2, "2 assertions in the message")
        self.assertEqual(self.s.log().count("SAML metadata of partners loaded"), 1)


class SamlMetadataUrlDownTest(unittest.TestCase):
    def test_unreachable_metadata_gives_a_clear_page_then_recovers(self):
        st = SamlStack(metadata_url=True)
        try:
            # the IdP's metadata is unreachable: point it at a closed port
            st.gh.stop()
            st.gh.cleanup()
            good = st.cfg["identity_providers"][0]["metadata"]
            dead = f"http://127.0.0.1:{free_port()}/metadata"
            st.cfg["identity_providers"][0]["metadata"] = dead
            st.start_gh()
            b = Browser()
            r = b.request(st.base + "/.gatehouse/login?rd=%2F")
            self.assertEqual(r.status, 502, r)
            self.assertIn(b"Sign-in is unavailable", r.body)
            self.assertIn("metadata of partners from " + dead + ": unreachable", st.log())
            self.assertIsNone(b.session_cookie(st.base))
            st.gh.stop()
            st.gh.cleanup()
            st.cfg["identity_providers"][0]["metadata"] = good
            st.start_gh()
            b = Browser()
            action, fields = idp_form(b, to_idp(b, st.base))
            self.assertEqual(b.request(action, "POST", fields).status, 303)
        finally:
            st.stop()


class SamlConfigTest(unittest.TestCase):
    """`gatehouse check` loads the metadata and the keys of a saml IdP and
    reports each problem with file:line:col."""

    @classmethod
    def setUpClass(cls):  # the tests only read these files: made once (RSA keys are slow)
        self = cls
        self.dir = tempfile.mkdtemp(prefix="gh-saml-conf-")
        key, crt = make_key_cert(self.dir, "sp", "sp")
        make_key_cert(self.dir, "other", "other")
        idp_key, idp_crt = make_key_cert(self.dir, "idp", "idp")
        body = "".join(l for l in read(idp_crt).splitlines() if "-----" not in l)
        self.md = ('<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
                   'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="https://idp.example/md">'
                   '<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
                   '%s<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
                   'Location="https://idp.example/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>')
        self.key_desc = ('<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
                         + body + '</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>')
        with open(os.path.join(self.dir, "idp.xml"), "w") as f:
            f.write(self.md % self.key_desc)
        with open(os.path.join(self.dir, "nokey.xml"), "w") as f:
            f.write(self.md % "")
        with open(os.path.join(self.dir, "doctype.xml"), "w") as f:
            f.write('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + self.md % self.key_desc)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def check(self, idp_lines):
        text = ("listen: [{address: 127.0.0.1:18080}]\n"
                "state: {sqlite: var/gh.db}\n"
                "identity_providers:\n" + idp_lines +
                "routes:\n  - {name: app, upstream: {servers: [http://127.0.0.1:9]}}\n")
        path = os.path.join(self.dir, "gh.yaml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([gatehouse_bin(), "check", "-c", path], capture_output=True, text=True,
                           timeout=60)
        return r.returncode, (r.stdout + r.stderr).replace(path, "gh.yaml")

    def entry(self, **over):
        d = {"metadata": "idp.xml", "sp_key": "sp.key", "sp_cert": "sp.crt",
             "entity_id": "https://app.example.com/.gatehouse/saml/metadata"}
        d.update(over)
        lines = "  - id: partners\n    type: saml\n"
        for k, v in d.items():
            lines += f"    {k}: {v}\n"
        return lines

    def test_good_metadata_url_is_not_fetched_by_check(self):
        rc, out = self.check(self.entry(metadata="https://idp.invalid/metadata"))
        self.assertEqual(rc, 0, out)

    def test_good(self):
        rc, out = self.check(self.entry(display_name="Partners", clock_skew="5m",
                                        allow_sha1="false", want_assertions_signed="true",
                                        allow_unsolicited="false"))
        self.assertEqual(rc, 0, out)
        self.assertIn("ok", out)

    def test_errors_with_positions(self):
        cases = [
            (self.entry(clock_skew="20m"), 'gh.yaml:10:17: error: "clock_skew" must be between'),
            (self.entry(attribute="{email: mail}"),
             'gh.yaml:10:5: error: unknown key "attribute" in a saml identity provider (did you mean "attributes"?)'),
            (self.entry(metadata="missing.xml"), "gh.yaml:6:15: error: IdP metadata "),
            (self.entry(metadata="nokey.xml"),
             "gh.yaml:6:15: error: IdP metadata: no signing certificate"),
            (self.entry(metadata="doctype.xml"), "gh.yaml:6:15: error: IdP metadata: a DOCTYPE is not allowed"),
            (self.entry(sp_key="other.key"),
             "gh.yaml:7:13: error: sp_key is not the private key of sp_cert"),
            (self.entry(sp_key="sp.crt"), "gh.yaml:7:13: error: sp_key is not the private key of sp_cert"),
            (self.entry(entity_id="urn:example:sp"),
             'gh.yaml:9:16: error: entity_id "urn:example:sp" is not an http(s) URL'),
            ("  - {id: p, type: saml, metadata: idp.xml, sp_cert: sp.crt, entity_id: 'https://a.example/m'}\n",
             'gh.yaml:4:5: error: a saml identity provider needs "sp_key"'),
            (self.entry(metadata="http://idp.example/md"),
             "gh.yaml:6:15: error: metadata URL must be https (allow_insecure_metadata: true permits http, for tests)"),
            ("  - {id: p, type: sam1}\n",
             'gh.yaml:4:19: error: identity provider type "sam1" is not supported (supported: oidc, saml)'),
        ]
        for lines, want in cases:
            rc, out = self.check(lines)
            self.assertEqual(rc, 1, out)
            self.assertIn(want, out)


if __name__ == "__main__":
    unittest.main()
