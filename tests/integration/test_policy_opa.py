"""The `opa` criterion through the real proxy, against the OPA Data API
stand-in (tests/opa_standin/opa_standin.py: it is NOT Open Policy Agent, it
answers from JSON rules and counts calls). alice (eng, admins) and bob (sales)
sign in through the real OpenID Provider.

Covered: allow, deny, undefined result (deny), timeout and HTTP 500 and a
malformed body with on_error deny and with on_error allow (a second Gatehouse),
the {allow, reason} result with the reason shown, the answer cache (a second
identical request within cache_ttl does not reach OPA), the documented input
document as the stand-in received it, and the opa fields of decision records."""
import os
import sys
import threading
import time
import unittest

from harness import Backend, Gatehouse, basic_config, free_port, read_jsonl, wait_until
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "opa_standin"))
import opa_standin  # noqa: E402

RULES = {
    "gh/alice_only": [{"match": {"user.id": "alice"}, "result": True}, {"result": False}],
    "gh/undefined": [],
    "gh/blocklist": [{"match": {"user.id": "bob"},
                      "result": {"allow": True, "reason": "bob is on the blocklist"}}],
    "gh/with_reason": [{"match": {"user.groups": "eng"},
                        "result": {"allow": True, "reason": "engineering project member"}},
                       {"result": {"allow": False, "reason": "not a project member"}}],
    "gh/slow": [{"delay_ms": 3000, "result": True}],
    "gh/broken": [{"status": 500}],
    "gh/garbage": [{"raw": "<html>not json"}],
    "gh/counted": [{"result": True}],
    "gh/echo": [{"result": True}],
}

# route name -> (path prefix, policy text)
ROUTES = {
    "allow": ("/allow/", "rules:\n  - id: central\n    effect: allow\n"
                         "    when: {opa: gh/alice_only}\n"),
    "undef": ("/undef/", "rules:\n  - id: central\n    effect: allow\n"
                         "    when: {opa: gh/undefined}\n"),
    "block": ("/block/", "rules:\n  - id: opa-blocklist\n    effect: deny\n"
                         "    when: {opa: gh/blocklist}\n"
                         "  - id: everyone\n    effect: allow\n    when: {authenticated: true}\n"),
    "reason": ("/reason/", "rules:\n  - id: project\n    effect: allow\n"
                           "    when: {opa: gh/with_reason}\n"),
    "slow": ("/slow/", "rules:\n  - id: central\n    effect: allow\n    when: {opa: gh/slow}\n"),
    "broken": ("/broken/", "rules:\n  - id: central\n    effect: allow\n"
                           "    when: {opa: gh/broken}\n"),
    "garbage": ("/garbage/", "rules:\n  - id: central\n    effect: allow\n"
                             "    when: {opa: gh/garbage}\n"),
    "counted": ("/counted/", "rules:\n  - id: central\n    effect: allow\n"
                             "    when: {opa: gh/counted}\n"),
    "echo": ("/echo/", "rules:\n  - id: central\n    effect: allow\n    when: {opa: gh/echo}\n"),
}


def start_standin():
    srv = opa_standin.make_server(RULES)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv


def gatehouse(port, idp, backend, opa_url, on_error):
    routes = []
    files = {"oidc-secret": CLIENT_SECRET}
    for name, (prefix, text) in ROUTES.items():
        files[name + ".yaml"] = text
        routes.append({"name": name, "match": {"path_prefix": prefix}, "policy": name + ".yaml",
                       "upstream": {"servers": [backend.url]}})
    # The sign-in endpoints live on a route too: a catch-all for signed-in users.
    routes.append({"name": "home", "allow_any_authenticated": True,
                   "upstream": {"servers": [backend.url]}})
    cfg = basic_config(
        routes,
        listen=[{"address": f"127.0.0.1:{port}"}],
        state={"sqlite": "var/gatehouse.db"},
        identity_providers=[idp_conf(idp)],
        decision_log={"file": "var/decisions.jsonl", "flush_interval": "20ms"},
        opa={"url": opa_url, "timeout": "300ms", "cache_ttl": "5s", "on_error": on_error},
    )
    return Gatehouse(cfg, files=files)


class OpaThroughProxy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.opa = start_standin()
        cls.backend = Backend("app")
        ports = [free_port(), free_port(), free_port()]
        cls.bases = [f"http://127.0.0.1:{p}" for p in ports]
        client = client_for(cls.bases[0])
        for base in cls.bases[1:]:
            client["redirect_uris"].append(f"{base}/.gatehouse/oidc/callback")
            client["post_logout_redirect_uris"].append(f"{base}/.gatehouse/signed-out")
        del client["backchannel_logout_uri"]
        cls.idp = IdP([client])
        opa_url = "http://127.0.0.1:%d" % cls.opa.server_address[1]
        cls.ghs = []
        try:
            cls.ghs.append(gatehouse(ports[0], cls.idp, cls.backend, opa_url, "deny"))
            cls.ghs.append(gatehouse(ports[1], cls.idp, cls.backend, opa_url, "allow"))
            cls.ghs.append(gatehouse(ports[2], cls.idp, cls.backend,
                                     f"http://127.0.0.1:{free_port()}", "deny"))
        except Exception:
            cls.tearDownClass()
            raise
        cls.gh = cls.ghs[0]
        cls.base = cls.bases[0]
        cls.alice = Browser(accept="application/json")
        cls.bob = Browser(accept="application/json")
        cls.alice_open = Browser(accept="application/json")
        cls.alice_down = Browser(accept="application/json")
        # Sign in on the catch-all route (no OPA answer needed).
        for b, user, base in ((cls.alice, "alice", cls.bases[0]), (cls.bob, "bob", cls.bases[0]),
                              (cls.alice_open, "alice", cls.bases[1]),
                              (cls.alice_down, "alice", cls.bases[2])):
            b.accept = "text/html"
            r = b.login(base, "/start", user=user)
            b.accept = "application/json"
            assert r.status == 200, r

    @classmethod
    def tearDownClass(cls):
        for g in cls.ghs:
            g.cleanup()
        cls.idp.stop()
        cls.backend.stop()
        cls.opa.shutdown()
        cls.opa.server_close()

    def calls(self, path):
        with self.opa.lock:
            return self.opa.stats.get(path, 0)

    def record(self, gh, request_id):
        path = os.path.join(gh.dir, "var", "decisions.jsonl")

        def find():
            for rec in read_jsonl(path):
                if rec["request_id"] == request_id:
                    return rec
            return None
        rec = wait_until(find, timeout=10)
        self.assertIsNotNone(rec, "no decision record for " + request_id)
        return rec

    def get(self, who, path, base=None, gh=None, headers=None):
        r = who.request((base or self.base) + path, headers=headers)
        rid = r.header("X-Request-Id")
        self.assertTrue(rid, r)
        return r, self.record(gh or self.gh, rid)

    def test_allow_and_deny(self):
        r, rec = self.get(self.alice, "/allow/a")
        self.assertEqual(r.status, 200, r)
        self.assertEqual((rec["decision"], rec["rule"]), ("allow", "central"))
        self.assertEqual(rec["opa"]["called"], True)
        self.assertEqual(rec["opa"]["result"], "allow")
        r, rec = self.get(self.bob, "/allow/a")
        self.assertEqual(r.status, 403, r)
        self.assertEqual((rec["decision"], rec["rule"]), ("deny", "default-deny"))
        self.assertEqual(rec["opa"]["result"], "deny")

    def test_undefined_result_is_a_deny(self):
        before = self.calls("gh/undefined")
        r, rec = self.get(self.alice, "/undef/x")
        self.assertEqual(r.status, 403, r)
        self.assertEqual(rec["opa"]["result"], "deny")
        self.assertEqual(self.calls("gh/undefined"), before + 1)

    def test_reason_from_opa_is_shown(self):
        r, rec = self.get(self.bob, "/block/x")
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json()["reason"], "bob is on the blocklist")
        self.assertEqual((rec["rule"], rec["reason"]), ("opa-blocklist", "bob is on the blocklist"))
        # The HTML page shows it too.
        r = self.bob.request(self.base + "/block/y", headers={"Accept": "text/html"})
        self.assertEqual(r.status, 403)
        self.assertIn(b"bob is on the blocklist", r.body)
        # An allow answer with a reason explains the allow in the log.
        r, rec = self.get(self.alice, "/reason/x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual((rec["rule"], rec["reason"]), ("project", "engineering project member"))
        r, rec = self.get(self.alice, "/block/x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(rec["rule"], "everyone")

    def test_timeout_applies_on_error(self):
        t0 = time.monotonic()
        r, rec = self.get(self.alice, "/slow/x")
        took = time.monotonic() - t0
        self.assertEqual(r.status, 403, r)
        # OPA answers after 3 s; the 300 ms timeout must have decided long before.
        self.assertLess(took, 2.5, "the OPA timeout (300ms) was not applied")
        self.assertEqual(rec["opa"]["result"], "error")
        self.assertIn("OPA query gh/slow failed", self.gh.stderr())
        r, rec = self.get(self.alice_open, "/slow/x", base=self.bases[1], gh=self.ghs[1])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(rec["opa"]["result"], "error")

    def test_http_error_and_malformed_answer_apply_on_error(self):
        for path in ("/broken/x", "/garbage/x"):
            r, rec = self.get(self.alice, path)
            self.assertEqual(r.status, 403, (path, r))
            self.assertEqual(rec["opa"]["result"], "error")
            r, rec = self.get(self.alice_open, path, base=self.bases[1], gh=self.ghs[1])
            self.assertEqual(r.status, 200, (path, r))
            self.assertEqual(rec["decision"], "allow")
            self.assertEqual(rec["opa"]["result"], "error")

    def test_opa_down_applies_on_error(self):
        # The third Gatehouse points at a port where nothing listens.
        r, rec = self.get(self.alice_down, "/allow/x", base=self.bases[2], gh=self.ghs[2])
        self.assertEqual(r.status, 403, r)
        self.assertEqual((rec["decision"], rec["opa"]["result"]), ("deny", "error"))
        self.assertIn("OPA query gh/alice_only failed", self.ghs[2].stderr())

    def test_cache_hit_skips_the_call(self):
        before = self.calls("gh/counted")
        r1, rec1 = self.get(self.alice, "/counted/same")
        r2, rec2 = self.get(self.alice, "/counted/same")
        self.assertEqual((r1.status, r2.status), (200, 200))
        self.assertEqual(self.calls("gh/counted"), before + 1)
        self.assertEqual(rec2["opa"]["result"], "allow")
        # A different input (another path) is another cache entry.
        self.get(self.alice, "/counted/other")
        self.assertEqual(self.calls("gh/counted"), before + 2)

    def test_input_document_as_received(self):
        with self.opa.lock:
            start = len(self.opa.inputs)
        r, _ = self.get(self.alice, "/echo/docs?q=1",
                        headers={"X-Env": "prod", "Authorization": "Basic c2VjcmV0",
                                 "X-Gatehouse-User": "mallory"})
        self.assertEqual(r.status, 200, r)
        with self.opa.lock:
            got = [e for e in self.opa.inputs[start:] if e["path"] == "gh/echo"]
        self.assertEqual(len(got), 1)
        inp = got[0]["input"]
        self.assertEqual(sorted(inp), ["device", "request", "route", "user"])
        u = inp["user"]
        self.assertEqual(u["authenticated"], True)
        self.assertEqual(u["id"], "alice")
        self.assertEqual(u["email"], "alice@example.com")
        self.assertEqual(u["idp"], "corp")
        self.assertEqual(u["groups"], ["eng", "admins"])
        self.assertEqual(u["claims"].get("name"), "Alice Example")
        for k in ("iss", "aud", "exp", "nonce"):
            self.assertNotIn(k, u["claims"])
        req = inp["request"]
        self.assertEqual(req["method"], "GET")
        self.assertEqual(req["host"], "127.0.0.1")
        self.assertEqual(req["path"], "/echo/docs")
        self.assertEqual(req["client_ip"], "127.0.0.1")
        self.assertEqual(req["headers"].get("x-env"), "prod")
        for h in ("authorization", "cookie", "x-gatehouse-user", "x-request-id"):
            self.assertNotIn(h, req["headers"])
        self.assertEqual(inp["route"], "echo")
        self.assertEqual(inp["device"]["present"], False)

    def test_metrics_count_opa_calls(self):
        import harness
        self.get(self.alice, "/allow/metrics")
        m = harness.http_get(self.gh.admin_port, "/metrics").body.decode()
        self.assertRegex(m, r"gatehouse_opa_\w+ [1-9]")


if __name__ == "__main__":
    unittest.main()
