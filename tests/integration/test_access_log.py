"""The JSON access log carries the access stage's outcome: route, user (the
user id as policies and the decision log see it), decision and rule, so operators can correlate
without the decision log; access_log.fields chooses the fields. Real IdP,
real sign-in, real backend."""
import json
import os
import subprocess
import tempfile
import unittest

from harness import (Backend, Gatehouse, basic_config, free_port, gatehouse_bin,
                     wait_log_entry)
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf

POLICY = """rules:
  - id: admin-area-admins-only
    effect: deny
    when:
      all:
        - path: {prefix: /admin}
        - not: {groups: {contains: admins}}
    reason: Only admins may open the admin area.
  - id: engineers
    effect: allow
    when: {groups: {contains: eng}}
  - id: sales
    effect: allow
    when: {groups: {contains: sales}}
"""

FIELDS = ["ts", "request_id", "client_ip", "method", "host", "path", "status", "bytes_in",
          "bytes_out", "upstream", "upstream_ms", "total_ms", "route", "user", "decision",
          "rule", "device"]


class AccessLogDecisionFields(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.idp = IdP([client_for(cls.base)])
        up = {"servers": [cls.backend.url]}
        cls.logdir = tempfile.mkdtemp(prefix="gh-alog-")
        cls.log = os.path.join(cls.logdir, "access.jsonl")
        cfg = basic_config(
            [{"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True, "upstream": up},
             {"name": "app", "policy": "app.yaml", "upstream": up}],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(cls.idp)],
            access_log=cls.log,
        )
        try:
            cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET, "app.yaml": POLICY})
        except Exception:
            cls.idp.stop()
            cls.backend.stop()
            raise
        cls.bob = Browser()
        r = cls.bob.login(cls.base, "/hello", user="bob")
        assert r.status == 200, r

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()

    def entry(self, r):
        rid = r.header("X-Request-Id")
        self.assertTrue(rid)
        e = wait_log_entry(self.log, lambda e: e.get("request_id") == rid, timeout=10)
        self.assertIsNotNone(e, "no access log line for " + rid)
        return e

    def test_allow_names_route_user_decision_rule(self):
        r = self.bob.request(self.base + "/reports")
        self.assertEqual(r.status, 200)
        e = self.entry(r)
        self.assertEqual(list(e), FIELDS)
        self.assertEqual((e["route"], e["decision"], e["rule"]), ("app", "allow", "sales"))
        self.assertEqual(e["user"], "bob")  # the user id, as in the decision log

    def test_deny_names_the_deny_rule(self):
        r = self.bob.request(self.base + "/admin/x")
        self.assertEqual(r.status, 403)
        e = self.entry(r)
        self.assertEqual((e["route"], e["decision"], e["rule"], e["status"]),
                         ("app", "deny", "admin-area-admins-only", 403))
        self.assertEqual(e["user"], "bob")  # the user id, as in the decision log

    def test_anonymous_is_sent_to_sign_in(self):
        r = Browser().request(self.base + "/reports")
        self.assertEqual(r.status, 302)
        e = self.entry(r)
        self.assertEqual((e["route"], e["decision"], e["user"]), ("app", "login", None))

    def test_public_route_is_an_anonymous_allow(self):
        r = Browser().request(self.base + "/pub/x")
        self.assertEqual(r.status, 200)
        e = self.entry(r)
        self.assertEqual((e["route"], e["decision"], e["user"]), ("pub", "allow", None))
        self.assertTrue(e["rule"])

    def test_reserved_path_has_no_decision(self):
        r = Browser().request(self.base + "/.gatehouse/jwks.json")
        self.assertEqual(r.status, 200)
        e = self.entry(r)
        self.assertIsNone(e["decision"])
        self.assertIsNone(e["rule"])


class AccessLogFieldsChoice(unittest.TestCase):
    def test_fields_choose_and_keep_line_order(self):
        backend = Backend("b")
        d = tempfile.mkdtemp(prefix="gh-alog-")
        log = os.path.join(d, "a.jsonl")
        cfg = basic_config([{"name": "open", "public": True,
                             "upstream": {"servers": [backend.url]}}],
                           access_log={"file": log,
                                       "fields": ["decision", "request_id", "route", "status"]})
        gh = Gatehouse(cfg)
        try:
            r = Browser().request(f"http://127.0.0.1:{gh.port}/x?token=secret")
            self.assertEqual(r.status, 200)
            rid = r.header("X-Request-Id")
            e = wait_log_entry(log, lambda e: e.get("request_id") == rid, timeout=10)
            self.assertIsNotNone(e)
            self.assertEqual(list(e), ["request_id", "status", "route", "decision"])
            self.assertEqual((e["route"], e["decision"], e["status"]), ("open", "allow", 200))
        finally:
            gh.cleanup()
            backend.stop()

    def check(self, text):
        d = tempfile.mkdtemp(prefix="gh-alog-")
        with open(os.path.join(d, "g.yaml"), "w") as f:
            f.write("listen: [{address: 127.0.0.1:1}]\n"
                    "routes:\n  - {name: a, public: true, upstream: {servers: [http://127.0.0.1:2]}}\n"
                    + text)
        return subprocess.run([gatehouse_bin(), "check", "-c", "g.yaml"], cwd=d,
                              capture_output=True, text=True, timeout=30)

    def test_unknown_field_is_an_error_with_position(self):
        r = self.check("access_log:\n  file: stderr\n  fields: [route, usr, decision]\n")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.strip(),
                         'g.yaml:6:19: error: unknown access log field "usr" (did you mean "user"?)')

    def test_bad_field_lists(self):
        for text, msg in (
                ("access_log: {fields: []}\n", 'g.yaml:4:22: error: "access_log.fields" is empty'),
                ("access_log: {fields: [rule, rule]}\n",
                 'g.yaml:4:29: error: access log field "rule" is listed twice'),
                ("access_log: {file: stderr, colour: red}\n",
                 'g.yaml:4:28: error: unknown key "colour" in "access_log"'),
        ):
            with self.subTest(text=text):
                r = self.check(text)
                self.assertEqual(r.returncode, 1)
                self.assertTrue(r.stderr.startswith(msg), r.stderr)

    def test_map_form_is_valid(self):
        r = self.check("access_log: {file: stderr, fields: [ts, route, user, decision, rule]}\n")
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
