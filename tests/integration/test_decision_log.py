"""Decision log under crashes, and the audit/policy CLIs end to end.

- kill -9 of a process writing decisions mid-batch, restart, `gatehouse audit
  verify` passes and the chain continues (the writer is tests/policy/dl_driver.c,
  built next to the binary: build*/tests/unit/policy/dl_driver);
- tampering with the JSON-lines file is named by `audit verify` (exit 1);
- `audit query` filters and --json lines; `policy diff` lists who gains and loses;
- `policy explain` with --policy and with -c/--route.
Python stdlib only; everything in a temp dir.
"""
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

from harness import ROOT, gatehouse_bin


def driver_bin():
    return os.path.join(os.path.dirname(gatehouse_bin()), "tests", "unit", "policy", "dl_driver")


def run(*args, check=None):
    p = subprocess.run([gatehouse_bin(), *args], capture_output=True, text=True, timeout=60)
    if check is not None and p.returncode != check:
        raise AssertionError("%s -> %d\n%s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


class DecisionLogCrash(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.cfg = os.path.join(self.dir, "gatehouse.yaml")
        with open(self.cfg, "w") as f:
            f.write("state: {sqlite: gh.db}\n"
                    "decision_log: {file: decisions.jsonl, queue: 5000}\n"
                    "routes:\n"
                    "  - {name: wiki, match: {host: wiki.example.com}, policy: policies/wiki.yaml,\n"
                    "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n"
                    "  - {name: reports, match: {host: r.example.com}, public: true,\n"
                    "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n")
        os.mkdir(os.path.join(self.dir, "policies"))
        with open(os.path.join(self.dir, "policies", "wiki.yaml"), "w") as f:
            f.write("rules:\n  - id: eng\n    effect: allow\n    when: {groups: eng}\n")
        self.assertTrue(os.access(driver_bin(), os.X_OK), "missing " + driver_bin())

    def tearDown(self):
        self.tmp.cleanup()

    def driver(self, n, tag):
        return subprocess.Popen([driver_bin(), self.cfg, str(n), tag], cwd=self.dir,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def lines(self):
        with open(os.path.join(self.dir, "decisions.jsonl")) as f:
            return [json.loads(l) for l in f]

    def test_kill_9_mid_batch_then_restart_verifies(self):
        for attempt in range(3):
            p = self.driver(2000000, "crash%d" % attempt)
            # Wait until it is writing, then kill it without warning.
            line = p.stdout.readline()
            self.assertTrue(line.startswith("queued"), line)
            time.sleep(0.3)
            p.send_signal(signal.SIGKILL)
            p.wait()
            self.assertEqual(p.returncode, -signal.SIGKILL)
            q = self.driver(500, "restart%d" % attempt)
            out, err = q.communicate(timeout=60)
            self.assertEqual(q.returncode, 0, err)
            v = run("audit", "verify", "-c", self.cfg)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
            self.assertIn("decision log OK", v.stdout)
        recs = self.lines()
        self.assertEqual([r["seq"] for r in recs], list(range(1, len(recs) + 1)))
        self.assertGreater(len(recs), 1500)
        self.assertEqual(recs[-1]["request_id"], "restart2-499")

    def test_file_tampering_is_named_and_query_filters(self):
        p = self.driver(40, "t")
        p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0)
        q = run("audit", "query", "-c", self.cfg, "--user", "bob", "--decision", "deny",
                "--json", check=0)
        got = [json.loads(l) for l in q.stdout.splitlines()]
        self.assertTrue(got)
        for r in got:
            self.assertEqual((r["user"], r["decision"]), ("bob", "deny"))
            for key in ("ts", "request_id", "route", "decision", "rule", "reason", "user",
                        "email", "groups", "idp", "session", "device", "client_ip", "method",
                        "host", "path", "opa", "latency_us", "prev_hash", "hash"):
                self.assertIn(key, r)
        table = run("audit", "query", "-c", self.cfg, "--route", "reports", "--since", "1h",
                    check=0).stdout.splitlines()
        self.assertTrue(table[0].startswith("TIME"))
        self.assertTrue(all(" reports " in l for l in table[1:]))
        self.assertEqual(run("audit", "query", "-c", self.cfg, "--since", "2000-01-01T00:00:00Z",
                             "--until", "2000-01-02T00:00:00Z", check=0).stdout.count("\n"), 1)
        path = os.path.join(self.dir, "decisions.jsonl")
        with open(path) as f:
            lines = f.readlines()
        lines[10] = lines[10].replace('"decision":"deny"', '"decision":"allow"')
        with open(path, "w") as f:
            f.writelines(lines)
        v = run("audit", "verify", "-c", self.cfg, check=1)
        self.assertIn("FAIL file: record 11 (line 11) was edited", v.stdout)

    def test_policy_diff_lists_gains_and_losses(self):
        p = self.driver(40, "d")
        p.communicate(timeout=60)
        new = os.path.join(self.dir, "new")
        os.mkdir(new)
        # The driver logs alice/bob/carol/dave with groups rotating eng/sales/admins;
        # the new policy lets admins in and no longer eng.
        with open(os.path.join(new, "wiki.yaml"), "w") as f:
            f.write("rules:\n  - id: admins\n    effect: allow\n    when: {groups: admins}\n"
                    "  - id: no-dave\n    effect: deny\n    when: {user: dave}\n")
        d = run("policy", "diff", "-c", self.cfg, "--new", new, "--since", "1h", check=0)
        self.assertIn("route wiki: policies/wiki.yaml -> " + new + "/wiki.yaml", d.stdout)
        self.assertRegex(d.stdout, r"LOSES  route wiki +dave ")
        self.assertRegex(d.stdout, r"GAINS  route wiki +")
        self.assertRegex(d.stdout, r"replayed \d+ decisions: \d+ \(user, route\) pairs gain access")
        # Only the wiki route changed; reports (public) is not replayed.
        self.assertNotIn("route reports", d.stdout)

    def test_policy_explain_via_config_route(self):
        inp = os.path.join(self.dir, "req.json")
        with open(inp, "w") as f:
            json.dump({"user": "alice", "groups": ["eng"], "path": "/x"}, f)
        e = run("policy", "explain", "-c", self.cfg, "--route", "wiki", "--input", inp, check=0)
        self.assertIn("  allow  eng   match", e.stdout)
        self.assertIn('decision: allow by rule "eng"', e.stdout)
        e = run("policy", "explain", "-c", self.cfg, "--route", "reports", "--input", inp, check=0)
        self.assertIn('decision: allow by rule "public"', e.stdout)
        e = run("policy", "explain", "-c", self.cfg, "--route", "nope", "--input", inp, check=1)
        self.assertIn('no route "nope"', e.stderr)


class PolicyTestCommand(unittest.TestCase):
    def test_shipped_policies_pass(self):
        p = run("policy", "test", os.path.join(ROOT, "policies"), check=0)
        self.assertRegex(p.stdout, r"policy: \d+ passed, 0 failed\n$")

    def test_failure_prints_a_diff_and_exits_1(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "app.yaml"), "w") as f:
                f.write("rules:\n  - id: eng\n    effect: allow\n    when: {groups: eng}\n")
            with open(os.path.join(d, "app.test.yaml"), "w") as f:
                f.write("cases:\n  - name: sales gets in\n    input: {user: s, groups: [sales]}\n"
                        "    expect: allow\n    rule: eng\n")
            p = run("policy", "test", d, check=1)
            self.assertIn("  FAIL sales gets in (%s/app.test.yaml:2)\n" % d, p.stdout)
            self.assertIn('       expected: allow by rule "eng"\n', p.stdout)
            self.assertIn('       got:      deny by rule "default-deny" (No rule allows this '
                          'request.)\n', p.stdout)
            self.assertTrue(p.stdout.endswith("policy: 0 passed, 1 failed\n"))


if __name__ == "__main__":
    unittest.main()
