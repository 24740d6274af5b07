"""One configuration model (issue 11): `policy explain` and the live server give
a route the same policy, because both take it from the one loader. A server runs
on a config with every way a route gets its policy: public: true and
allow_any_authenticated: true together, neither flag, public alone,
allow_any_authenticated alone, and a policy file. Anonymous and signed-in users
(alice: eng, bob: sales) request every route; then, for every decision the
server logged, `policy explain -c THE-SAME-CONFIG --request-id ID` replays it with
the policy explain resolves, and must come to the decision the server made."""
import os
import re
import subprocess
import unittest

from harness import Backend, Gatehouse, basic_config, free_port, gatehouse_bin, read_jsonl
from harness import wait_until
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf

ENG_ONLY = """rules:
  - id: engineers
    effect: allow
    when: {groups: {contains: eng}}
"""

# name -> the route's own keys (besides name, match and upstream)
ROUTES = {
    "both": {"public": True, "allow_any_authenticated": True},
    "neither": {},
    "pub": {"public": True},
    "anyone": {"allow_any_authenticated": True},
    "file": {"policy": "eng.yaml"},
}


class ExplainAgreesWithServe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.idp = IdP([client_for(cls.base)])
        up = {"servers": [cls.backend.url]}
        routes = [dict(name=n, match={"path_prefix": f"/{n}/"}, upstream=up, **keys)
                  for n, keys in ROUTES.items()]
        # The sign-in endpoints are served under a route of the host.
        routes.append({"name": "home", "allow_any_authenticated": True, "upstream": up})
        cfg = basic_config(
            routes,
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(cls.idp)],
            decision_log={"file": "var/decisions.jsonl", "flush_interval": "20ms"},
        )
        try:
            cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET, "eng.yaml": ENG_ONLY})
        except Exception:
            cls.idp.stop()
            cls.backend.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()

    def explain(self, request_id):
        p = subprocess.run([gatehouse_bin(), "policy", "explain", "-c", self.gh.config_path,
                            "--request-id", request_id], capture_output=True, text=True,
                           timeout=30, cwd=self.gh.dir)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        m = re.search(r"^decision: (allow|deny) by rule \"([^\"]*)\"", p.stdout, re.M)
        self.assertIsNotNone(m, p.stdout)
        return m.group(1), m.group(2)

    def test_explain_and_serve_decide_alike(self):
        alice = Browser()
        self.assertEqual(alice.login(self.base, "/anyone/start").status, 200)
        bob = Browser()
        self.assertEqual(bob.login(self.base, "/anyone/start", user="bob").status, 200)
        anon = Browser(accept="application/json")
        served = {}
        for name in ROUTES:
            for who, b in (("anon", anon), ("alice", alice), ("bob", bob)):
                r = b.request(f"{self.base}/{name}/x")
                served[(name, who)] = r.status
        # The server's own answers, as a user sees them.
        self.assertEqual(served[("pub", "anon")], 200)
        for name in ("both", "neither", "anyone", "file"):
            self.assertIn(served[(name, "anon")], (401, 302), name)
        for name in ("both", "neither", "anyone"):
            self.assertEqual(served[(name, "bob")], 200, name)
        self.assertEqual(served[("file", "alice")], 200)
        self.assertEqual(served[("file", "bob")], 403)

        log = os.path.join(self.gh.dir, "var", "decisions.jsonl")

        def records():
            return [r for r in read_jsonl(log)
                    if r.get("route") in ROUTES and r.get("kind", "policy") == "policy"]

        # Every route's three requests logged (sign-ins add records of their own, so a
        # total count could be reached before the last route's batch is written).
        def all_logged():
            recs = records()
            return all(sum(r["route"] == n for r in recs) >= 3 for n in ROUTES)

        self.assertTrue(wait_until(all_logged, timeout=10), records())
        seen = set()
        for rec in records():
            logged = "allow" if rec["decision"] == "allow" else "deny"  # login is a deny
            got, rule = self.explain(rec["request_id"])
            self.assertEqual((got, rule), (logged, rec["rule"]),
                             f"route {rec['route']} user {rec.get('user')}: the server "
                             f"decided {rec['decision']} by {rec['rule']}, explain {got} by {rule}")
            seen.add(rec["route"])
        self.assertEqual(seen, set(ROUTES))
        # public + allow_any_authenticated is any signed-in user, everywhere.
        both = [r for r in records() if r["route"] == "both"]
        self.assertTrue(all(r["rule"] != "public" for r in both), both)


if __name__ == "__main__":
    unittest.main()
