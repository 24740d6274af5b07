"""Route policies through the real proxy with real identities: alice (groups
eng, admins) and bob (sales) sign in through the real OpenID Provider, then
every criterion that depends on the request (groups, email domain, path,
method, source_ip, header, time) allows or denies; a matching deny wins; the
denied page (HTML and JSON); shadow mode forwards but logs the deny; public
routes need no login but are logged; an anonymous request to a policy that
needs an identity is sent to sign-in. Each decision is checked in the decision
log too (rule, reason, user)."""
import datetime
import json
import os
import re
import unittest
import urllib.parse

from harness import Backend, Gatehouse, basic_config, free_port, read_jsonl, wait_until
from oidc import CLIENT_SECRET, PASSWORDS, IdP, Browser, client_for, idp_conf
from oidc import API_RESOURCE
from test_bearer import API_REDIRECT, real_access_token

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _days_around_now():
    """(days containing now whatever the minute: yesterday, today, tomorrow in
    UTC) and the four other weekdays, which cannot contain now."""
    d = datetime.datetime.now(datetime.timezone.utc).weekday()
    near = [DAYS[(d + k) % 7] for k in (-1, 0, 1)]
    far = [x for x in DAYS if x not in near]
    return near, far


def app_policy():
    near, far = _days_around_now()
    return f"""# Policy of the "app" route for the end-to-end policy tests.
mode: enforce
rules:
  - id: admin-area-admins-only
    effect: deny
    when:
      all:
        - path: {{prefix: /admin}}
        - not: {{groups: {{contains: admins}}}}
    reason: Only admins may open the admin area.
  - id: no-deletes
    effect: deny
    when: {{method: DELETE}}
    reason: Nothing is deleted through Gatehouse.
  - id: no-debug-header
    effect: deny
    when: {{header: {{name: X-Debug, is: "on"}}}}
    reason: Debug requests are refused.
  - id: no-secrets-from-loopback
    effect: deny
    when:
      all:
        - path: {{prefix: /secret}}
        - source_ip: [127.0.0.0/8, "::1/128"]
    reason: Secrets are not served to local clients.
  - id: engineers
    effect: allow
    when: {{groups: {{contains: eng}}}}
  - id: sales-reads-reports
    effect: allow
    when:
      all:
        - domain: {{is: example.com}}
        - groups: {{contains: sales}}
        - path: {{prefix: /reports}}
        - method: {{in: [GET, HEAD]}}
  - id: lab-from-loopback
    effect: allow
    when:
      all:
        - path: {{prefix: /lab}}
        - source_ip: 127.0.0.0/8
  - id: mail-is-bobs
    effect: allow
    when:
      all:
        - path: {{prefix: /mail}}
        - email: {{suffix: "@example.com"}}
        - user: {{is: bob}}
  - id: mail-not-for-alice
    effect: deny
    when:
      all:
        - path: {{prefix: /mail}}
        - email: {{prefix: "alice@"}}
    reason: This mailbox is not yours.
  - id: clock-open-now
    effect: allow
    when:
      all:
        - path: {{prefix: /clock/now}}
        - time: {{weekdays: [{", ".join(near)}], tz: UTC}}
  - id: clock-open-other-days
    effect: allow
    when:
      all:
        - path: {{prefix: /clock/later}}
        - time: {{weekdays: [{", ".join(far)}], tz: UTC}}
  - id: header-opens-beta
    effect: allow
    when:
      all:
        - path: {{prefix: /beta}}
        - header: {{name: X-Beta, in: [yes, please]}}
"""


SHADOW_POLICY = """mode: shadow
rules:
  - id: only-eng-will-see-next
    effect: allow
    when: {groups: {contains: eng}}
"""

ANON_OK_POLICY = """rules:
  - id: status-is-open-to-loopback
    effect: allow
    when: {source_ip: 127.0.0.0/8}
"""


class PolicyThroughProxy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        client = client_for(cls.base)
        client["redirect_uris"].append(API_REDIRECT)  # bearer tokens for API callers
        cls.idp = IdP([client])
        up = {"servers": [cls.backend.url]}
        cfg = basic_config(
            [
                {"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True,
                 "upstream": up},
                {"name": "shadowed", "match": {"path_prefix": "/next/"},
                 "policy": "next.yaml", "upstream": up},
                {"name": "status", "match": {"path_prefix": "/status/"},
                 "policy": "status.yaml", "upstream": up},
                {"name": "app", "policy": "app.yaml", "upstream": up},
            ],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(
                cls.idp, post_logout_redirect_uri=cls.base + "/.gatehouse/signed-out",
                audiences=[API_RESOURCE])],
            decision_log={"file": "var/decisions.jsonl", "flush_interval": "20ms"},
        )
        files = {"oidc-secret": CLIENT_SECRET, "app.yaml": app_policy(),
                 "next.yaml": SHADOW_POLICY, "status.yaml": ANON_OK_POLICY}
        try:
            cls.gh = Gatehouse(cfg, files=files)
        except Exception:
            cls.idp.stop()
            cls.backend.stop()
            raise
        cls.alice = Browser()
        r = cls.alice.login(cls.base, "/hello")
        assert r.status == 200, r
        cls.bob = Browser()
        r = cls.bob.login(cls.base, "/reports/q1", user="bob")
        assert r.status == 200, r

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()

    # -- helpers

    def get(self, who, path, method="GET", headers=None, accept=None):
        h = dict(headers or {})
        if accept:
            h["Accept"] = accept
        return who.request(self.base + path, method=method, headers=h)

    def record(self, request_id):
        path = os.path.join(self.gh.dir, "var", "decisions.jsonl")

        def find():
            for rec in read_jsonl(path):
                if rec["request_id"] == request_id:
                    return rec
            return None
        rec = wait_until(find, timeout=10)
        self.assertIsNotNone(rec, "no decision record for " + request_id)
        return rec

    def backend_ids(self):
        out = set()
        for req in list(self.backend.requests):
            for k, v in req["headers"]:
                if k.lower() == "x-request-id":
                    out.add(v)
        return out

    def assertAllowed(self, r, rule):
        self.assertEqual(r.status, 200, r)
        rid = r.json()["headers"]
        rid = {k.lower(): v for k, v in rid}["x-request-id"]
        rec = self.record(rid)
        self.assertEqual((rec["decision"], rec["rule"]), ("allow", rule), rec)
        return rec

    def assertDenied(self, r, rule, reason=None):
        self.assertEqual(r.status, 403, r)
        body = r.json()
        self.assertEqual(body["error"], "forbidden")
        rec = self.record(body["request_id"])
        self.assertEqual((rec["decision"], rec["rule"]), ("deny", rule), rec)
        if reason is not None:
            self.assertEqual(body["reason"], reason)
            self.assertEqual(rec["reason"], reason)
        self.assertNotIn(body["request_id"], self.backend_ids())
        return rec

    def api(self, who, path, **kw):
        return self.get(who, path, accept="application/json", **kw)

    # -- criteria

    def test_groups_allow_and_default_deny(self):
        rec = self.assertAllowed(self.api(self.alice, "/wiki/page"), "engineers")
        self.assertEqual(rec["user"], "alice")
        self.assertEqual(rec["email"], "alice@example.com")
        self.assertEqual(rec["groups"], ["eng", "admins"])
        self.assertEqual(rec["idp"], "corp")
        self.assertTrue(rec["session"])
        rec = self.assertDenied(self.api(self.bob, "/wiki/page"), "default-deny")
        self.assertEqual(rec["user"], "bob")
        self.assertEqual(rec["groups"], ["sales"])

    def test_domain_groups_path_and_method(self):
        self.assertAllowed(self.api(self.bob, "/reports/q2"), "sales-reads-reports")
        self.assertEqual(self.get(self.bob, "/reports/q2", method="HEAD",
                                  accept="application/json").status, 200)
        self.assertDenied(self.api(self.bob, "/reports/q2", method="POST"), "default-deny")
        self.assertDenied(self.api(self.bob, "/other/q2"), "default-deny")

    def test_deny_wins_over_a_matching_allow(self):
        # alice matches "engineers" but a deny rule matches too.
        self.assertDenied(self.api(self.alice, "/wiki/x", method="DELETE"), "no-deletes",
                          "Nothing is deleted through Gatehouse.")
        self.assertDenied(self.api(self.alice, "/wiki/x", headers={"X-Debug": "on"}),
                          "no-debug-header", "Debug requests are refused.")
        self.assertAllowed(self.api(self.alice, "/wiki/x", headers={"X-Debug": "off"}),
                           "engineers")
        self.assertDenied(self.api(self.alice, "/secret/plans"), "no-secrets-from-loopback",
                          "Secrets are not served to local clients.")

    def test_admin_area_by_groups(self):
        self.assertAllowed(self.api(self.alice, "/admin/users"), "engineers")
        self.assertDenied(self.api(self.bob, "/admin/users"), "admin-area-admins-only",
                          "Only admins may open the admin area.")

    def test_source_ip_and_email(self):
        # bob is not in eng; the lab is open to loopback clients (we are one).
        self.assertAllowed(self.api(self.bob, "/lab/1"), "lab-from-loopback")
        self.assertAllowed(self.api(self.bob, "/mail/inbox"), "mail-is-bobs")
        self.assertDenied(self.api(self.alice, "/mail/inbox"), "mail-not-for-alice",
                          "This mailbox is not yours.")

    def test_header_matcher(self):
        self.assertAllowed(self.api(self.bob, "/beta/x", headers={"X-Beta": "please"}),
                           "header-opens-beta")
        self.assertDenied(self.api(self.bob, "/beta/x", headers={"X-Beta": "no"}),
                          "default-deny")
        self.assertDenied(self.api(self.bob, "/beta/x"), "default-deny")

    def test_time_of_the_request(self):
        self.assertAllowed(self.api(self.bob, "/clock/now"), "clock-open-now")
        self.assertDenied(self.api(self.bob, "/clock/later"), "default-deny")

    def test_bearer_token_identity_is_decided_by_the_same_policy(self):
        # API callers with an access token from the real IdP instead of a session.
        def call(token, path):
            return Browser(accept="application/json").request(
                self.base + path, headers={"Authorization": "Bearer " + token})
        alice, bob = real_access_token(self.idp, "alice"), real_access_token(self.idp, "bob")
        rec = self.assertAllowed(call(alice, "/wiki/api"), "engineers")
        self.assertEqual((rec["user"], rec["groups"]), ("alice", ["eng", "admins"]))
        self.assertIn(rec["session"], (None, ""))
        rec = self.assertDenied(call(bob, "/admin/api"), "admin-area-admins-only",
                                "Only admins may open the admin area.")
        self.assertEqual(rec["user"], "bob")
        self.assertAllowed(call(bob, "/reports/api"), "sales-reads-reports")

    # -- what the user sees

    def test_denied_page_html(self):
        r = self.get(self.bob, "/admin/x")
        self.assertEqual(r.status, 403, r)
        self.assertTrue(r.header("Content-Type").startswith("text/html"))
        body = r.body.decode()
        self.assertIn("Only admins may open the admin area.", body)
        self.assertIn("bob@example.com", body)
        self.assertIn('href="/.gatehouse/login?prompt=select_account&amp;rd=%2Fadmin%2Fx">'
                      'Sign in as someone else</a>', body)
        self.assertIn('href="/.gatehouse/logout">Sign out</a>', body)
        rid = r.header("X-Request-Id")
        self.assertTrue(rid, r)
        self.assertIn(rid, body)
        rec = self.record(rid)
        self.assertEqual(rec["rule"], "admin-area-admins-only")
        self.assertEqual(r.header("Cache-Control"), "no-store")

    def test_sign_in_as_someone_else_comes_back_to_the_denied_page(self):
        b = Browser()
        r = b.login(self.base, "/admin/other", user="bob")
        self.assertEqual(r.status, 403, r)
        link = re.search(rb'href="([^"]+)">Sign in as someone else<', r.body).group(1).decode()
        link = link.replace("&amp;", "&")
        # A sign-in that asks the IdP who signs in (this IdP has no account
        # picker: prompt=login), however signed in bob is there.
        r = b.request(self.base + link)
        self.assertEqual(r.status, 302, r)
        auth = urllib.parse.parse_qs(urllib.parse.urlsplit(r.header("Location")).query)
        self.assertEqual(auth["prompt"], ["login"])
        r, url, _ = b.follow(r.header("Location"))
        self.assertIn(b'name="password"', r.body)
        action = urllib.parse.urljoin(url, re.search(rb'action="([^"]+)"', r.body)
                                      .group(1).decode())
        r, url, _ = b.follow(action, "POST", {"login": "alice",
                                              "password": PASSWORDS["alice"]})
        if b"Submitting Callback" in r.body:
            # The IdP ends bob's session there with a self-submitting form.
            action = re.search(rb'action="([^"]+)"', r.body).group(1).decode()
            fields = {k.decode(): v.decode() for k, v in
                      re.findall(rb'name="([^"]+)" value="([^"]*)"', r.body)}
            r, url, _ = b.follow(urllib.parse.urljoin(url, action.replace("&amp;", "&")),
                                 "POST", fields)
        # One sign-in later: back on the page that was denied, as alice.
        self.assertEqual(url, self.base + "/admin/other")
        self.assertEqual(r.status, 200, r)
        # bob's other browser is still signed in.
        self.assertEqual(self.api(self.bob, "/reports/still-in").status, 200)

    def test_denied_json_for_api_callers(self):
        for headers in ({"Accept": "application/json"},
                        {"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}):
            r = self.bob.request(self.base + "/admin/x", headers=headers)
            self.assertEqual(r.status, 403, r)
            self.assertTrue(r.header("Content-Type").startswith("application/json"))
            body = r.json()
            self.assertEqual(body["reason"], "Only admins may open the admin area.")
            self.assertEqual(body["user"], "bob")
            self.assertEqual(body["request_id"], r.header("X-Request-Id"))

    # -- modes and simple routes

    def test_shadow_mode_logs_the_deny_and_forwards(self):
        r = self.api(self.bob, "/next/page")
        self.assertEqual(r.status, 200, r)
        rid = {k.lower(): v for k, v in r.json()["headers"]}["x-request-id"]
        rec = self.record(rid)
        self.assertEqual((rec["decision"], rec["rule"]), ("deny", "default-deny"), rec)
        self.assertTrue(rec["shadow"])
        self.assertIn("shadow mode: rule default-deny would deny bob",
                      self.gh.stderr())
        r = self.api(self.alice, "/next/page")
        rid = {k.lower(): v for k, v in r.json()["headers"]}["x-request-id"]
        rec = self.record(rid)
        self.assertEqual((rec["decision"], rec["rule"]), ("allow", "only-eng-will-see-next"))

    def test_shadow_mode_still_needs_a_sign_in(self):
        # Shadow mode enforces only "signed in": anonymous callers go to sign-in.
        r = Browser(accept="application/json").request(self.base + "/next/page")
        self.assertEqual(r.status, 401, r)
        rec = self.record(r.json()["request_id"])
        self.assertEqual(rec["decision"], "login")
        self.assertNotIn(r.json()["request_id"], self.backend_ids())

    def test_public_route_needs_no_login_and_is_logged(self):
        anon = Browser()
        r = anon.request(self.base + "/pub/hello")
        self.assertEqual(r.status, 200, r)
        h = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertNotIn("x-gatehouse-user", h)
        rec = self.record(h["x-request-id"])
        self.assertEqual((rec["decision"], rec["rule"], rec["route"]),
                         ("allow", "public", "pub"))
        self.assertIn(rec["user"], (None, ""))
        self.assertEqual(rec["path"], "/pub/hello")
        self.assertEqual(rec["client_ip"], "127.0.0.1")

    def test_policy_without_identity_criteria_lets_anonymous_in(self):
        # A policy that only looks at the source address decides for anonymous
        # callers too: no sign-in needed.
        r = Browser(accept="application/json").request(self.base + "/status/x")
        self.assertEqual(r.status, 200, r)
        rid = {k.lower(): v for k, v in r.json()["headers"]}["x-request-id"]
        self.assertEqual(self.record(rid)["rule"], "status-is-open-to-loopback")

    def test_unauthenticated_is_sent_to_sign_in(self):
        r = Browser().request(self.base + "/wiki/page?a=1")
        self.assertEqual(r.status, 302, r)
        self.assertEqual(r.header("Location"), "/.gatehouse/login?rd=%2Fwiki%2Fpage%3Fa%3D1")
        rec = self.record(r.header("X-Request-Id"))
        self.assertEqual(rec["decision"], "login")
        api = Browser(accept="application/json").request(self.base + "/wiki/page")
        self.assertEqual(api.status, 401)
        self.assertEqual(self.record(api.json()["request_id"])["decision"], "login")

    def test_metrics_count_decisions_by_route(self):
        self.api(self.bob, "/admin/m")
        import harness
        m = harness.http_get(self.gh.admin_port, "/metrics").body.decode()
        self.assertRegex(m, r'gatehouse_policy_decisions_total\{[^}]*route="app"[^}]*\} [1-9]')


if __name__ == "__main__":
    unittest.main()
