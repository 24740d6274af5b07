"""Path and host ambiguity through the real proxy: the request path is
normalised once, before routing, and routing, policy, the decision log and the
upstream all use that one path (the query stays as sent); the host likewise
(lower case, no trailing dot, port split off). Each form an attacker tries is
sent as exact bytes; the test checks the status Gatehouse answers, the path the
backend received (or that it received nothing), and what the decision log
recorded. bob (sales) and alice (eng, admins) sign in through the real OpenID
Provider. Also: the request line takes single spaces only."""
import json
import os
import subprocess
import unittest

from harness import (Backend, Gatehouse, RawConn, basic_config, free_port, gatehouse_bin,
                     raw_exchange,
                     read_jsonl, wait_until)
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf

APP_POLICY = """mode: enforce
rules:
  - id: admin-area-admins-only
    effect: deny
    when:
      all:
        - path: {prefix: /admin}
        - not: {groups: {contains: admins}}
    reason: Only admins may open the admin area.
  - id: no-secret
    effect: deny
    when: {path: {regex: "^/secret(/|$)"}}
    reason: Nobody opens the secret area.
  - id: staff
    effect: allow
    when: {groups: {in: [sales, eng]}}
"""

ADMINS_ONLY = """rules:
  - id: admins
    effect: allow
    when: {groups: {contains: admins}}
"""

LOOPBACK_BUT = """rules:
  - id: not-the-secret-host
    effect: deny
    when: {host: {is: secret.wild.test}}
    reason: The secret host is closed.
  - id: not-admin
    effect: deny
    when: {path: {prefix: /admin}}
    reason: The admin area is closed.
  - id: loopback
    effect: allow
    when: {source_ip: 127.0.0.0/8}
"""


class PathAmbiguity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.idp = IdP([client_for(cls.base)])
        up = {"servers": [cls.backend.url]}
        cfg = basic_config(
            [
                # Any host: a public /static, an admins-only /admin, the app.
                {"name": "static", "match": {"path_prefix": "/static"}, "public": True,
                 "upstream": up},
                {"name": "admin", "match": {"path_prefix": "/admin"}, "policy": "admins.yaml",
                 "upstream": up},
                {"name": "app", "policy": "app.yaml", "upstream": up},
                # A public fallback with an admins-only /admin under it.
                {"name": "fb-admin", "match": {"host": "fb.test", "path_prefix": "/admin"},
                 "policy": "admins.yaml", "upstream": up},
                {"name": "fb", "match": {"host": "fb.test"}, "public": True, "upstream": up},
                # Host conditions on a wildcard route.
                {"name": "wild", "match": {"host": "*.wild.test"}, "policy": "loopback.yaml",
                 "upstream": up},
                # The same policy on a case-sensitive route.
                {"name": "cs", "match": {"host": "cs.test"}, "policy": "loopback.yaml",
                 "upstream": up},
            ],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(cls.idp)],
            decision_log={"file": "var/decisions.jsonl", "flush_interval": "20ms"},
            access_log="access.jsonl",
        )
        files = {"oidc-secret": CLIENT_SECRET, "app.yaml": APP_POLICY,
                 "admins.yaml": ADMINS_ONLY, "loopback.yaml": LOOPBACK_BUT}
        try:
            cls.gh = Gatehouse(cfg, files=files)
        except Exception:
            cls.idp.stop()
            cls.backend.stop()
            raise
        cls.port = port
        cls.bob = Browser()
        r = cls.bob.login(cls.base, "/hello", user="bob")
        assert r.status == 200, r
        cls.alice = Browser()
        r = cls.alice.login(cls.base, "/hello", user="alice")
        assert r.status == 200, r

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()

    # -- helpers

    def cookie(self, who):
        jar = who.jar(f"127.0.0.1:{self.port}")
        return "; ".join(f"{k}={v}" for k, v in jar.items())

    def send(self, target, who=None, host=None, method="GET"):
        """One request with this exact target; returns (response, request id)."""
        hdrs = [("Accept", "application/json"), ("Connection", "close")]
        if who is not None:
            hdrs.append(("Cookie", self.cookie(who)))
        with RawConn(self.port) as c:
            r = c.request(method, target, host or f"127.0.0.1:{self.port}", hdrs)
        return r, r.header("X-Request-Id")

    def received(self, rid):
        """The request target the backend received for this request id, or None."""
        for req in list(self.backend.requests):
            for k, v in req["headers"]:
                if k.lower() == "x-request-id" and v == rid:
                    return req["target"]
        return None

    def record(self, rid):
        path = os.path.join(self.gh.dir, "var", "decisions.jsonl")

        def find():
            for rec in read_jsonl(path):
                if rec["request_id"] == rid:
                    return rec
            return None
        rec = wait_until(find, timeout=10)
        self.assertIsNotNone(rec, "no decision record for " + rid)
        return rec

    def assertForwarded(self, target, who, want_path, rule, host=None):
        r, rid = self.send(target, who, host)
        self.assertEqual(r.status, 200, (target, r))
        self.assertEqual(self.received(rid), want_path, target)
        rec = self.record(rid)
        self.assertEqual((rec["decision"], rec["rule"]), ("allow", rule), (target, rec))
        self.assertEqual(rec["path"], want_path.split("?")[0], target)
        return rec

    def assertDenied(self, target, who, want_path, rule, host=None):
        r, rid = self.send(target, who, host)
        self.assertEqual(r.status, 403, (target, r))
        self.assertIsNone(self.received(rid), target)
        rec = self.record(rid)
        self.assertEqual((rec["decision"], rec["rule"]), ("deny", rule), (target, rec))
        self.assertEqual(rec["path"], want_path, target)
        return rec

    def assertRefused(self, target, who=None, host=None, status=400):
        r, rid = self.send(target, who, host)
        self.assertEqual(r.status, status, (target, r))
        self.assertTrue(rid)
        self.assertIsNone(self.received(rid), target)
        return r

    # -- bob, signed in, is denied /admin whatever the spelling

    ADMIN_FORMS = [
        ("/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/adm%69n/x", "/admin/x"),
        ("/./admin", "/admin"),
        ("/%2e/admin", "/admin"),
        ("//admin", "/admin"),
        ("/x/../admin", "/admin"),
        ("/x/%2e%2e/admin", "/admin"),
        ("/x/%2E%2e/admin", "/admin"),
        ("/x/.%2e/admin", "/admin"),
        ("/x//..//admin/", "/admin/"),
        ("/admin;x", "/admin;x"),
        ("/static;/../admin", "/admin"),
    ]

    def test_bob_is_denied_admin_in_every_spelling(self):
        for target, norm in self.ADMIN_FORMS:
            with self.subTest(target=target):
                # Routed to the admins-only /admin route: bob is not an admin.
                r, rid = self.send(target, self.bob)
                self.assertEqual(r.status, 403, (target, r))
                self.assertIsNone(self.received(rid), target)
                rec = self.record(rid)
                self.assertEqual((rec["decision"], rec["route"], rec["path"]),
                                 ("deny", "admin", norm), target)
                self.assertEqual(rec["user"], "bob")

    def test_alice_reaches_admin_and_the_backend_gets_the_normal_path(self):
        for target, norm in self.ADMIN_FORMS:
            with self.subTest(target=target):
                self.assertForwarded(target, self.alice, norm, "admins")
        # The query is passed as sent, after the normalised path.
        self.assertForwarded("/%61dmin/./x?q=%2e%2e/%2f&a=b", self.alice,
                             "/admin/x?q=%2e%2e/%2f&a=b", "admins")

    def test_absolute_form_target(self):
        host = f"127.0.0.1:{self.port}"
        r, rid = self.send(f"http://{host}//admin", self.bob)
        self.assertEqual(r.status, 403, r)
        self.assertIsNone(self.received(rid))
        self.assertEqual(self.record(rid)["path"], "/admin")
        self.assertForwarded(f"http://{host}//admin/./y", self.alice, "/admin/y", "admins")
        self.assertForwarded(f"http://{host}?q=1", self.alice, "/?q=1", "staff")

    def test_path_rules_of_a_catch_all_route(self):
        # The app route's own prefix and regex rules see the normal path too.
        for target in ["/secret", "/%73ecret/x", "//secret", "/x/../secret/", "/./secret"]:
            with self.subTest(target=target):
                r, rid = self.send(target, self.bob)
                self.assertEqual(r.status, 403, (target, r))
                self.assertIsNone(self.received(rid))
                rec = self.record(rid)
                self.assertEqual((rec["decision"], rec["rule"]), ("deny", "no-secret"))
                self.assertTrue(rec["path"].startswith("/secret"), rec["path"])
        self.assertForwarded("/reports/./q1/../q2", self.bob, "/reports/q2", "staff")
        self.assertForwarded("/%7Ebob/%c3%a9", self.bob, "/~bob/%C3%A9", "staff")

    def test_ambiguous_forms_are_refused(self):
        for target in ["/%2e%2e/admin", "/.%2e/admin", "/../admin", "/x/../../admin",
                       "/static/..%2fadmin", "/static/..%5cadmin", "/admin%2fx",
                       "/static/..;/admin", "/static/.;/admin", "/a%00b", "/a%0d%0ab",
                       "/a%zz", "/a%", "/a%2", "/static\\..\\admin"]:
            with self.subTest(target=target):
                self.assertRefused(target, self.bob)

    # -- anonymous callers through the public /static route

    def test_anonymous_cannot_climb_out_of_static(self):
        for target in ["/static/../admin", "/static/%2e%2e/admin", "/static/%2E%2E/admin/x"]:
            with self.subTest(target=target):
                r, rid = self.send(target)
                self.assertEqual(r.status, 401, (target, r))
                self.assertIsNone(self.received(rid))
                rec = self.record(rid)
                self.assertEqual((rec["decision"], rec["route"]), ("login", "admin"))
                self.assertTrue(rec["path"].startswith("/admin"), rec)
        self.assertRefused("/static/..%2fadmin")
        # Inside /static, the backend gets the normal path.
        r, rid = self.send("/static/a/./b/../c")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.received(rid), "/static/a/c")
        self.assertEqual(self.record(rid)["path"], "/static/a/c")

    def test_params_do_not_fall_through_to_a_public_route(self):
        # "/admin;x" is under the admins-only /admin, not the public "/".
        for target in ["/admin;x", "/admin;jsessionid=1/y", "/%61dmin;x", "//admin;"]:
            with self.subTest(target=target):
                r, rid = self.send(target, host="fb.test")
                self.assertEqual(r.status, 401, (target, r))
                self.assertIsNone(self.received(rid))
                self.assertEqual(self.record(rid)["route"], "fb-admin")
        r, rid = self.send("/adminx", host="fb.test")
        self.assertEqual((r.status, self.received(rid)), (200, "/adminx"))

    # -- host

    def test_host_trailing_dot_does_not_skip_a_host_rule(self):
        for host in ["secret.wild.test", "secret.wild.test.", "secret.wild.test.:8080",
                     "SECRET.Wild.Test.", "secret.wild.test:8080"]:
            with self.subTest(host=host):
                r, rid = self.send("/x", self.bob, host=host)
                self.assertEqual(r.status, 403, (host, r))
                self.assertIsNone(self.received(rid))
                rec = self.record(rid)
                self.assertEqual((rec["rule"], rec["host"], rec["route"]),
                                 ("not-the-secret-host", "secret.wild.test", "wild"))
        r, rid = self.send("/x", host="open.wild.test.")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.received(rid), "/x")
        self.assertEqual(self.record(rid)["host"], "open.wild.test")
        for host in ["secret..wild.test", ".secret.wild.test", "secret.wild.test..",
                     "secret.wild.test:x", "secret%2ewild.test", "."]:
            with self.subTest(host=host):
                self.assertRefused("/x", host=host)

    def test_paths_are_case_sensitive_by_default(self):
        # /ADMIN is another path, passed as is (see path_case_insensitive).
        r, rid = self.send("/ADMIN", self.bob, host="cs.test")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.received(rid), "/ADMIN")
        self.assertEqual(self.send("/%61dmin", self.bob, host="cs.test")[0].status, 403)

    def test_policy_test_agrees_with_the_live_proxy(self):
        # The same policy file, the same paths: what `gatehouse policy test`
        # says of each case is what the live proxy did with the request.
        paths = ["/%61dmin", "/x/../admin", "//admin", "/./admin/x", "/%41DMIN", "/docs"]
        live = {}
        for p in paths + ["/%2Fadmin"]:
            live[p] = self.send(p, self.bob, host="cs.test")[0].status
        self.assertEqual([live[p] for p in paths], [403, 403, 403, 403, 200, 200], live)
        self.assertEqual(live["/%2Fadmin"], 400)
        cases = "cases:\n"
        for p in paths:
            expect = "deny" if live[p] == 403 else "allow"
            cases += (f"  - {{name: '{p}', input: {{user: bob, ip: 127.0.0.1, host: cs.test,"
                      f" path: '{p}'}}, expect: {expect}}}\n")
        cases += ("  - name: refused\n"
                  "    input: {user: bob, ip: 127.0.0.1, path: /%2Fadmin}\n"
                  "    expect: allow\n")
        test_file = os.path.join(self.gh.dir, "loopback.test.yaml")
        with open(test_file, "w") as f:
            f.write(cases)
        r = subprocess.run([gatehouse_bin(), "policy", "test", test_file], capture_output=True,
                           timeout=10)
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 1, out)
        self.assertIn(f"policy: {len(paths)} passed, 1 failed", out)
        self.assertRegex(out, r"FAIL refused\n\s+\S+loopback.test.yaml:9:\d+: error: the "
                              r"proxy refuses a request for path \"/%2Fadmin\" with 400")

    # -- logs

    def test_access_log_shows_the_target_as_received(self):
        r, rid = self.send("/static/./%61?q")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.received(rid), "/static/a?q")
        path = os.path.join(self.gh.dir, "access.jsonl")

        def find():
            for e in read_jsonl(path):
                if e.get("request_id") == rid:
                    return e
            return None
        e = wait_until(find, timeout=10)
        self.assertIsNotNone(e)
        self.assertEqual(e["path"], "/static/./%61")  # as received, without the query
        self.assertEqual(self.record(rid)["path"], "/static/a")


class RouteOptions(unittest.TestCase):
    """encoded_slashes: pass and match.path_case_insensitive, with anonymous
    callers: a deny that sign-in cannot lift still answers 401 (sign in
    first), and is never forwarded."""

    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = free_port()
        cls.idp = IdP([client_for(f"http://127.0.0.1:{port}")])
        up = {"servers": [cls.backend.url]}
        cfg = basic_config(
            [
                {"name": "files", "match": {"path_prefix": "/files"}, "public": True,
                 "encoded_slashes": "pass", "upstream": up},
                {"name": "static", "match": {"path_prefix": "/static"}, "public": True,
                 "upstream": up},
                {"name": "iis", "match": {"host": "iis.test", "path_case_insensitive": True},
                 "policy": "loopback.yaml", "upstream": up},
                {"name": "iis-api", "match": {"host": "iis.test", "path_prefix": "/API/V1",
                                              "path_case_insensitive": True},
                 "public": True, "upstream": up},
                {"name": "app", "policy": "loopback.yaml", "upstream": up},
            ],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "gatehouse.db"},
            identity_providers=[idp_conf(cls.idp)],
            decision_log={"file": "decisions.jsonl", "flush_interval": "20ms"},
        )
        try:
            cls.gh = Gatehouse(cfg, files={"loopback.yaml": LOOPBACK_BUT,
                                           "oidc-secret": CLIENT_SECRET})
        except Exception:
            cls.idp.stop()
            cls.backend.stop()
            raise
        cls.port = port

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()

    def send(self, target, host="app.test"):
        with RawConn(self.port) as c:
            r = c.request("GET", target, host, [("Accept", "application/json"),
                                                ("Connection", "close")])
        return r, r.header("X-Request-Id")

    received = PathAmbiguity.received

    def record(self, rid):
        path = os.path.join(self.gh.dir, "decisions.jsonl")
        rec = wait_until(lambda: next((x for x in read_jsonl(path)
                                       if x["request_id"] == rid), None), timeout=10)
        self.assertIsNotNone(rec, "no decision record for " + rid)
        return rec

    def test_encoded_slashes_per_route(self):
        # files: encoded_slashes: pass keeps them opaque, upper-cased; the query as sent.
        r, rid = self.send("/files/a%2fb/..%5cc?x=%2f")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.received(rid), "/files/a%2Fb/..%5Cc?x=%2f")
        rec = self.record(rid)
        self.assertEqual((rec["route"], rec["path"]), ("files", "/files/a%2Fb/..%5Cc"))
        # The choice is made after routing: on other routes they are refused.
        for target in ["/static/a%2fb", "/static/..%2fadmin", "/a%2Fb", "/x%5c..%5cadmin"]:
            with self.subTest(target=target):
                r, rid = self.send(target)
                self.assertEqual(r.status, 400, (target, r))
                self.assertIsNone(self.received(rid))
        # A real dot segment still leaves /files, for the route it lands on.
        r, rid = self.send("/files/%2e%2e/admin")
        self.assertEqual(r.status, 401, r)
        self.assertIsNone(self.received(rid))
        self.assertEqual(self.record(rid)["route"], "app")

    def test_case_insensitive_route(self):
        for target in ["/ADMIN", "/Admin/x", "/%41DMIN", "/x/../aDmIn;y"]:
            with self.subTest(target=target):
                r, rid = self.send(target, host="iis.test")
                self.assertEqual(r.status, 401, (target, r))
                self.assertIsNone(self.received(rid))
                rec = self.record(rid)
                self.assertEqual(rec["route"], "iis")
                self.assertTrue(rec["path"].startswith("/admin"), rec)
        # The prefix matches in any case; the backend gets the folded path, whose
        # escapes keep upper-case hex digits; the query is as sent.
        r, rid = self.send("/api/v1/Docs/%c3%a9/Read.ME?Q=X", host="iis.test")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.received(rid), "/api/v1/docs/%C3%A9/read.me?Q=X")
        self.assertEqual(self.record(rid)["route"], "iis-api")
        r, rid = self.send("/Api/V1", host="IIS.test.")
        self.assertEqual((r.status, self.received(rid)), (200, "/api/v1"))
        # Without the option the same policy sees /ADMIN as another path.
        r, rid = self.send("/ADMIN")
        self.assertEqual((r.status, self.received(rid)), (200, "/ADMIN"))

    def test_path_prefix_must_be_normal(self):
        for prefix in ["/a/../b", "/%61", "//a", "/a/./b", "/a%2f"]:
            with self.subTest(prefix=prefix):
                cfg = basic_config([{"name": "r", "match": {"path_prefix": prefix},
                                     "public": True, "upstream": {"servers": [self.backend.url]}}])
                g = Gatehouse(cfg, wait=False)
                try:
                    code = g.proc.wait(timeout=15)
                    err = g.stderr()
                finally:
                    g.cleanup()
                self.assertNotEqual(code, 0)
                self.assertIn("path_prefix", err)
                self.assertRegex(err, r"gatehouse\.yaml:\d+:\d+")


class StrictRequestLine(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("b")
        cls.gh = Gatehouse(basic_config([{"name": "r", "public": True,
                                          "upstream": {"servers": [cls.backend.url]}}]))

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.backend.stop()

    def test_single_spaces_only(self):
        for line in [b"GET  /a HTTP/1.1", b"GET /a  HTTP/1.1", b"GET   /a   HTTP/1.1",
                     b"GET\t/a HTTP/1.1", b"GET /a\tHTTP/1.1", b"GET /a HTTP/1.1 "]:
            with self.subTest(line=line):
                before = len(self.backend.requests)
                r, closed = raw_exchange(self.gh.port, line + b"\r\nHost: app.test\r\n\r\n")
                self.assertEqual(r.status, 400, r)
                self.assertTrue(closed)
                self.assertEqual(len(self.backend.requests), before)
        r, _ = raw_exchange(self.gh.port, b"GET /a HTTP/1.1\r\nHost: app.test\r\n"
                                          b"Connection: close\r\n\r\n")
        self.assertEqual(r.status, 200)
        # An empty line before the request line is still tolerated (RFC 9112 §2.2).
        r, _ = raw_exchange(self.gh.port, b"\r\nGET /b HTTP/1.1\r\nHost: app.test\r\n"
                                          b"Connection: close\r\n\r\n")
        self.assertEqual(r.status, 200)


if __name__ == "__main__":
    unittest.main()
