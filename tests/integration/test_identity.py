"""Who the caller is, exactly: through the real binary, with the real OpenID
Provider (tests/idp) as "corp" and the stand-in OP (rogue_op.py) as a second
provider "rogue" whose users sign in with whatever sub and email it likes.

- Token confusion: the sign-in client's ID token (it rides in the logout URL as
  id_token_hint) is no bearer token; real JWT access tokens for the API
  audience are, until `sessions revoke --user` refuses those issued before it.
- Unverified email: carol (email_verified false at the real IdP), the stand-in
  claiming alice@example.com unverified, and "x@evil.test@example.com" get no
  email, so `domain:` rules do not let them in and no email header is sent.
- IdP namespacing: the stand-in's sub "alice" is "rogue:alice" in the policy,
  the identity header, the assertion, the decision log and the CLIs, never the
  real alice; one provider may own bare ids (bare_user_ids).
- Header grammar: a group named "sales,admins" is percent-encoded in the groups
  header, so a backend splitting on ',' never sees "admins".

The main suite's config is valid for older Gatehouse versions too (no new
keys), so each test there fails on them for the reason it tests."""
import base64
import http.client
import json
import os
import re
import subprocess
import time
import unittest
import urllib.parse

from harness import gatehouse_bin, read_jsonl, wait_until
from oidc import API_RESOURCE, PASSWORDS, Browser
from test_bearer import API_REDIRECT, real_access_token, real_id_token
from two_idp import TwoProviderCase

ADMINS = "rules:\n  - id: admins\n    effect: allow\n    when: {groups: {contains: admins}}\n"
STAFF = "rules:\n  - id: staff\n    effect: allow\n    when: {domain: {is: example.com}}\n"
CORP_ALICE = ('rules:\n  - id: corp-alice\n    effect: allow\n'
              '    when: {user: "corp:alice"}\n')


def jwt_part(tok, i):
    p = tok.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


def run(*args):
    return subprocess.run([gatehouse_bin(), *args], capture_output=True, text=True, timeout=30)


def json_rows(*args, want=True, timeout=15.0):
    """The CLI's --json lines; sessions reach SQLite within the writer's period."""
    deadline = time.time() + timeout
    while True:
        out = run(*args)
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        if rows or not want or time.time() > deadline:
            return rows
        time.sleep(0.1)


class Helpers:
    def sign_in(self, idp, user=None):
        b = Browser()
        r, url, _ = b.follow(f"{self.base}/.gatehouse/login?idp={idp}&rd=/app/home")
        if idp == "corp":
            self.assertEqual(r.status, 200, r)
            action = urllib.parse.urljoin(url, r.body.split(b'action="')[1].split(b'"')[0]
                                          .decode())
            r, url, _ = b.follow(action, "POST", {"login": user, "password": PASSWORDS[user]})
        self.assertEqual(r.status, 200, (r, url))
        self.assertIsNotNone(b.session_cookie(self.base))
        return b

    def seen(self, b, path, status=200):
        r = b.request(self.base + path, headers={"Accept": "application/json"})
        self.assertEqual(r.status, status, r)
        if status != 200:
            return None
        return {k.lower(): v for k, v in self.backend.last(path)["headers"]}

    def bearer(self, path, tok):
        c = http.client.HTTPConnection("127.0.0.1", self.gh.port, timeout=10)
        c.request("GET", path, headers={"Accept": "application/json",
                                        "Authorization": f"Bearer {tok}"})
        r = c.getresponse()
        r.read()
        c.close()
        return r.status


class DefaultBearer(Helpers, TwoProviderCase):
    """The providers as configured before bearer audiences were required: no
    "audiences", no new keys. The sign-in ID token must not be a bearer token."""
    backend_name = "defaults"
    extra_redirect_uris = (API_REDIRECT,)

    @classmethod
    def corp_settings(cls):
        return {"bare_user_ids": None}

    @classmethod
    def extra_files(cls):
        return {"admins.yaml": ADMINS}

    @classmethod
    def routes(cls):
        up = {"servers": [cls.backend.url]}
        return [{"name": "admin", "match": {"path_prefix": "/admin/"}, "policy": "admins.yaml",
                 "upstream": up},
                {"name": "app", "upstream": up}]

    def test_id_token_from_logout_url_is_no_bearer_token(self):
        b = self.sign_in("corp", "alice")
        self.assertIsNotNone(self.seen(b, "/admin/ok"))
        r = b.request(self.base + "/.gatehouse/logout")
        self.assertEqual(r.status, 200, r)  # the confirmation page
        token = re.search(rb'name="csrf_token" value="([^"]+)"', r.body).group(1).decode()
        r = b.request(self.base + "/.gatehouse/logout", "POST", {"csrf_token": token},
                      headers={"Sec-Fetch-Site": "same-origin", "Origin": self.base})
        self.assertEqual(r.status, 303, r)
        loc = r.header("Location")
        hint = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query)).get("id_token_hint")
        self.assertTrue(hint, loc)
        self.assertIn("nonce", jwt_part(hint, 1))  # it is the sign-in's ID token
        before = self.backend.hits("/admin/with-id-token")
        self.assertEqual(self.bearer("/admin/with-id-token", hint), 401)
        self.assertEqual(self.backend.hits("/admin/with-id-token"), before)
        # Revoking the user does not bring it back either.
        out = run("sessions", "revoke", "-c", self.gh.config_path, "--user",
                  f"{self.idp.issuer}#alice")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.bearer("/admin/with-id-token", hint), 401)

    def test_id_token_of_an_api_client_is_no_bearer_token(self):
        self.assertEqual(self.bearer("/admin/api-idt", real_id_token(self.idp, "alice")), 401)
        self.assertIn("bearer token refused", self.new_log())


class IdentityTest(Helpers, TwoProviderCase):
    backend_name = "ident"
    extra_redirect_uris = (API_REDIRECT,)

    @classmethod
    def corp_settings(cls):
        # No bare_user_ids: every user id is qualified here.
        return {"audiences": [API_RESOURCE], "bare_user_ids": None}

    @classmethod
    def extra_files(cls):
        return {"admins.yaml": ADMINS, "staff.yaml": STAFF, "corp-alice.yaml": CORP_ALICE}

    @classmethod
    def extra_config(cls):
        return {"decision_log": {"file": "var/decisions.jsonl", "flush_interval": "20ms"}}

    @classmethod
    def routes(cls):
        up = {"servers": [cls.backend.url]}
        return [{"name": "admin", "match": {"path_prefix": "/admin/"}, "policy": "admins.yaml",
                 "upstream": up},
                {"name": "staff", "match": {"path_prefix": "/staff/"}, "policy": "staff.yaml",
                 "upstream": up},
                {"name": "corp-alice", "match": {"path_prefix": "/alice/"},
                 "policy": "corp-alice.yaml", "upstream": up},
                {"name": "app", "upstream": up}]

    def setUp(self):
        super().setUp()
        self.rogue.scenario = "good"
        self.rogue.sub, self.rogue.email, self.rogue.email_verified = (
            "mallory", "mallory@example.com", True)

    # -- helpers

    def records(self, route=None, paths=()):
        """Decision records (of one route), once those of every path in paths
        have been written (the writer flushes a moment after the answer)."""
        path = os.path.join(self.gh.dir, "var", "decisions.jsonl")

        def have():
            recs = [r for r in read_jsonl(path) if route is None or r["route"] == route]
            return recs if set(paths) <= {r["path"] for r in recs} else None
        recs = wait_until(have, timeout=10, interval=0.1)
        self.assertIsNotNone(recs, "no decision record for %s" % (paths,))
        return recs

    # -- item 6: token confusion

    def test_access_token_accepted_until_user_revoked(self):
        tok = real_access_token(self.idp, "bob")
        self.assertEqual(jwt_part(tok, 0)["typ"], "at+jwt")
        self.assertEqual(self.bearer("/app/api", tok), 200)
        time.sleep(1.1)  # iat has whole seconds: the revocation comes after it
        # The user key form, which every version of the CLI takes.
        out = run("sessions", "revoke", "-c", self.gh.config_path, "--user",
                  f"{self.idp.issuer}#bob")
        self.assertEqual(out.returncode, 0, out.stderr)
        # Workers poll the revocations every 250 ms (applied within a second on an
        # idle machine); the verified-token cache would keep the token for minutes.
        self.assertTrue(wait_until(lambda: self.bearer("/app/api", tok) != 200, 5),
                        "a revoked user's token still works")
        # Refused from the verified-token cache too, every time.
        self.assertEqual(self.bearer("/app/api", tok), 401)
        self.assertIn("revoked after this one was issued", self.new_log())
        # A token issued after the revocation works.
        time.sleep(1.1)
        fresh = real_access_token(self.idp, "bob")
        self.assertEqual(self.bearer("/app/api2", fresh), 200)

    # -- item 7: unverified email

    def test_unverified_email_is_no_email(self):
        carol = self.sign_in("corp", "carol")
        seen = self.seen(carol, "/app/carol")
        self.assertNotIn("x-gatehouse-email", seen)
        self.seen(carol, "/staff/carol", 403)
        self.assertIn("email_verified is not true", self.new_log())
        rec = [r for r in self.records("staff", ["/staff/carol"])
               if r["path"] == "/staff/carol"][-1]
        self.assertEqual((rec["decision"], rec["email"] or None), ("deny", None))
        # The control: a verified address of the same domain gets in.
        alice = self.sign_in("corp", "alice")
        self.assertEqual(self.seen(alice, "/staff/alice")["x-gatehouse-email"],
                         "alice@example.com")

    def test_rogue_unverified_email_and_double_at(self):
        self.rogue.sub, self.rogue.email, self.rogue.email_verified = (
            "eve", "alice@example.com", False)
        eve = self.sign_in("rogue")
        self.seen(eve, "/staff/eve", 403)
        self.assertNotIn("x-gatehouse-email", self.seen(eve, "/app/eve"))
        self.rogue.sub, self.rogue.email, self.rogue.email_verified = (
            "eve2", "x@evil.test@example.com", True)
        eve2 = self.sign_in("rogue")
        self.seen(eve2, "/staff/eve2", 403)
        self.assertNotIn("x-gatehouse-email", self.seen(eve2, "/app/eve2"))

    # -- item 8: the same sub at another IdP

    def test_same_sub_at_another_idp_is_another_user(self):
        self.rogue.sub, self.rogue.email = "alice", "alice@rogue.test"
        fake = self.sign_in("rogue")
        seen = self.seen(fake, "/app/fake")
        self.assertEqual(seen["x-gatehouse-user"], "rogue:alice")
        self.assertEqual(jwt_part(seen["x-gatehouse-assertion"], 1)["sub"], "rogue:alice")
        self.seen(fake, "/alice/fake", 403)
        real = self.sign_in("corp", "alice")
        seen = self.seen(real, "/alice/real")
        self.assertEqual(seen["x-gatehouse-user"], "corp:alice")
        self.assertEqual(jwt_part(seen["x-gatehouse-assertion"], 1)["sub"], "corp:alice")
        recs = {r["path"]: r for r in self.records(paths=["/app/fake", "/alice/real"])}
        self.assertEqual((recs["/app/fake"]["user"], recs["/app/fake"]["idp"]),
                         ("rogue:alice", "rogue"))
        self.assertEqual(recs["/alice/real"]["user"], "corp:alice")
        # The CLIs tell them apart too.
        rows = json_rows("sessions", "list", "-c", self.gh.config_path, "--user", "rogue:alice",
                         "--json")
        self.assertTrue(rows)
        self.assertEqual({(r["user"], r["idp"]) for r in rows}, {("rogue:alice", "rogue")})
        rows = json_rows("audit", "query", "-c", self.gh.config_path, "--user", "rogue:alice",
                         "--json")
        self.assertTrue(rows)
        self.assertEqual({r["idp"] for r in rows}, {"rogue"})
        out = run("sessions", "revoke", "-c", self.gh.config_path, "--user", "rogue:alice")
        self.assertEqual(out.returncode, 0, out.stderr)
        # Revocations reach the workers through a poll (every 250 ms).
        self.assertTrue(wait_until(lambda: fake.request(
            self.base + "/app/after", headers={"Accept": "application/json"}).status == 401, 5))
        self.assertIsNotNone(self.seen(real, "/app/still"))  # the real alice keeps hers

    # -- item 12: the groups header

    def test_group_with_comma_is_escaped(self):
        carol = self.sign_in("corp", "carol")
        seen = self.seen(carol, "/app/groups")
        self.assertEqual(seen["x-gatehouse-groups"], "eng,sales%2Cadmins")
        names = [urllib.parse.unquote(g) for g in seen["x-gatehouse-groups"].split(",")]
        self.assertEqual(names, ["eng", "sales,admins"])
        self.assertEqual(jwt_part(seen["x-gatehouse-assertion"], 1)["groups"],
                         ["eng", "sales,admins"])
        self.seen(carol, "/admin/carol", 403)


class BareUserIds(TwoProviderCase):
    """corp owns bare user ids: its alice is "alice", the stand-in's "rogue:alice"."""
    backend_name = "bare"

    @classmethod
    def extra_files(cls):
        return {"alice.yaml": "rules:\n  - id: alice\n    effect: allow\n    when: {user: alice}\n"}

    @classmethod
    def routes(cls):
        up = {"servers": [cls.backend.url]}
        return [{"name": "alice", "match": {"path_prefix": "/alice/"}, "policy": "alice.yaml",
                 "upstream": up},
                {"name": "app", "upstream": up}]

    def test_bare_names_belong_to_one_provider(self):
        self.rogue.sub = "alice"
        b = Browser()
        r, _, _ = b.follow(f"{self.base}/.gatehouse/login?idp=rogue&rd=/app/x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(b.request(self.base + "/alice/x").status, 403)
        seen = {k.lower(): v for k, v in self.backend.last("/app/x")["headers"]}
        self.assertEqual(seen["x-gatehouse-user"], "rogue:alice")
        real = Browser()
        r, url, _ = real.follow(f"{self.base}/.gatehouse/login?idp=corp&rd=/alice/y")
        action = urllib.parse.urljoin(url, r.body.split(b'action="')[1].split(b'"')[0].decode())
        r, _, _ = real.follow(action, "POST", {"login": "alice", "password": PASSWORDS["alice"]})
        self.assertEqual(r.status, 200, r)
        seen = {k.lower(): v for k, v in self.backend.last("/alice/y")["headers"]}
        self.assertEqual(seen["x-gatehouse-user"], "alice")
        # `sessions list --user alice` is corp's alice only.
        rows = json_rows("sessions", "list", "-c", self.gh.config_path, "--user", "alice",
                         "--json")
        self.assertEqual({(r["user"], r["idp"]) for r in rows}, {("alice", "corp")})

    def test_two_owners_of_bare_ids_is_a_config_error(self):
        path = os.path.join(self.gh.dir, "two-bare.yaml")
        with open(path, "w") as f:
            f.write("listen: [{address: 127.0.0.1:1}]\nstate: {sqlite: var/x.db}\n"
                    "identity_providers:\n"
                    "  - {id: a, issuer: https://a.example, client_id: c, client_secret: s,\n"
                    "     bare_user_ids: true}\n"
                    "  - {id: b, issuer: https://b.example, client_id: c, client_secret: s,\n"
                    "     bare_user_ids: true}\n"
                    "routes: [{name: app, upstream: {servers: [http://127.0.0.1:9]}}]\n")
        out = run("check", "-c", path)
        self.assertEqual(out.returncode, 1, out)
        self.assertIn("two-bare.yaml:7:21: error: \"bare_user_ids\" is already set on identity "
                      "provider \"a\"", out.stderr)


if __name__ == "__main__":
    unittest.main()
