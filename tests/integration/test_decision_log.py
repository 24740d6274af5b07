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

from harness import ROOT, SIGNIN_CONFIG_HEAD, gatehouse_bin, wait_until


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
            f.write(SIGNIN_CONFIG_HEAD +
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
        path = os.path.join(self.dir, "decisions.jsonl")

        def size():
            try:
                return os.path.getsize(path)
            except FileNotFoundError:
                return 0
        for attempt in range(3):
            before = size()
            p = self.driver(2000000, "crash%d" % attempt)
            # Wait until it is writing (its records reach the file), then kill it
            # without warning, long before it is through its two million.
            line = p.stdout.readline()
            self.assertTrue(line.startswith("queued"), line)
            self.assertTrue(wait_until(lambda: size() > before + 4096, timeout=30),
                            "the driver never wrote a record")
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

    def test_policy_explain_resolves_routes_as_serve_does(self):
        # public + allow_any_authenticated is allow-any-authenticated in serve (the
        # stricter flag wins); a route with neither flag nor a policy lets any
        # signed-in user in. explain must say the same, not "public" and an error.
        cfg = os.path.join(self.dir, "both.yaml")
        with open(cfg, "w") as f:
            f.write(SIGNIN_CONFIG_HEAD +
                    "routes:\n"
                    "  - {name: both, match: {host: b.example.com}, public: true,\n"
                    "     allow_any_authenticated: true,\n"
                    "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n"
                    "  - {name: plain, match: {host: p.example.com},\n"
                    "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n")
        anon = os.path.join(self.dir, "anon.json")
        with open(anon, "w") as f:
            json.dump({"path": "/x"}, f)
        alice = os.path.join(self.dir, "alice.json")
        with open(alice, "w") as f:
            json.dump({"user": "alice", "path": "/x"}, f)
        for route in ("both", "plain"):
            e = run("policy", "explain", "-c", cfg, "--route", route, "--input", anon, check=0)
            self.assertNotIn('by rule "public"', e.stdout)
            self.assertIn("decision: deny", e.stdout)
            e = run("policy", "explain", "-c", cfg, "--route", route, "--input", alice, check=0)
            self.assertIn('decision: allow by rule "allow-any-authenticated"', e.stdout)


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



# ---------------------------------------------------------------------------
# The decision log written by the real proxy, with identities signed in through
# the real OpenID Provider (alice: eng, admins; bob: sales).

import shutil  # noqa: E402
import sqlite3  # noqa: E402
import threading  # noqa: E402
import http.client  # noqa: E402

from harness import Backend, Gatehouse, basic_config, free_port, read_jsonl, wait_until  # noqa
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf  # noqa: E402

RECORD_KEYS = ("ts", "request_id", "route", "decision", "rule", "reason", "user", "email",
               "groups", "idp", "session", "device", "client_ip", "method", "host", "path", "opa",
               "latency_us", "prev_hash", "hash")
APP_POLICY = ("rules:\n"
              "  - id: admins-only-admin\n    effect: deny\n"
              "    when: {all: [{path: {prefix: /admin}}, {not: {groups: {contains: admins}}}]}\n"
              "    reason: Only admins may open the admin area.\n"
              "  - id: eng\n    effect: allow\n    when: {groups: {contains: eng}}\n"
              "  - id: sales-reports\n    effect: allow\n"
              "    when: {all: [{groups: {contains: sales}}, {path: {prefix: /reports}}]}\n")

_IDP = None
_PORTS = {}


def setUpModule():
    global _IDP
    for name in ("main", "tamper", "crash", "strict", "queue"):
        _PORTS[name] = free_port()
    bases = [f"http://127.0.0.1:{p}" for p in _PORTS.values()]
    client = client_for(bases[0])
    del client["backchannel_logout_uri"]
    for b in bases[1:]:
        client["redirect_uris"].append(f"{b}/.gatehouse/oidc/callback")
        client["post_logout_redirect_uris"].append(f"{b}/.gatehouse/signed-out")
    _IDP = IdP([client])


def tearDownModule():
    if _IDP:
        _IDP.stop()


def proxy_config(port, backend, **dl):
    log = {"file": "var/decisions.jsonl", "flush_interval": "20ms"}
    log.update(dl)
    return basic_config(
        [{"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True,
          "upstream": {"servers": [backend.url]}},
         {"name": "app", "policy": "app.yaml", "upstream": {"servers": [backend.url]}}],
        listen=[{"address": f"127.0.0.1:{port}"}],
        state={"sqlite": "var/gatehouse.db"},
        identity_providers=[idp_conf(_IDP)],
        decision_log=log,
    )


def start_gatehouse(port, backend, **dl):
    return Gatehouse(proxy_config(port, backend, **dl),
                     files={"oidc-secret": CLIENT_SECRET, "app.yaml": APP_POLICY})


def restart(gh):
    """Starts the binary again on the same directory, config and port (state,
    sessions and the decision log are kept)."""
    gh._stderr = open(gh.stderr_path, "ab")
    gh.proc = subprocess.Popen([gatehouse_bin(), "serve", "-c", gh.config_path],
                               stdout=gh._stderr, stderr=gh._stderr, cwd=gh.dir)
    gh.wait_ready()


def sign_in(port, user):
    b = Browser(accept="application/json")
    b.accept = "text/html"
    r = b.login(f"http://127.0.0.1:{port}", "/start", user=user)
    b.accept = "application/json"
    if r.status not in (200, 403):
        raise AssertionError(r)
    return b


def cookie_header(browser, port):
    jar = browser.jar(f"127.0.0.1:{port}")
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def rid_of(resp):
    return resp.header("X-Request-Id")


def file_records(gh):
    return read_jsonl(os.path.join(gh.dir, "var", "decisions.jsonl"))


def sqlite_rows(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM decisions ORDER BY seq")]
    finally:
        db.close()


def backend_request_ids(backend):
    out = []
    with backend.lock:
        for req in backend.requests:
            for k, v in req["headers"]:
                if k.lower() == "x-request-id":
                    out.append(v)
    return out


class DecisionLogThroughProxy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        cls.port = _PORTS["main"]
        cls.base = f"http://127.0.0.1:{cls.port}"
        cls.gh = start_gatehouse(cls.port, cls.backend)
        cls.alice = sign_in(cls.port, "alice")
        cls.bob = sign_in(cls.port, "bob")

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.backend.stop()

    def wait_records(self, rids):
        def have():
            got = {r["request_id"]: r for r in file_records(self.gh)}
            return got if all(r in got for r in rids) else None
        got = wait_until(have, timeout=10)
        self.assertIsNotNone(got, "records missing for %s" % rids)
        return got

    def test_every_request_has_its_record_in_both_sinks(self):
        rs = {
            "alice-allow": self.alice.request(self.base + "/doc?x=1"),
            "bob-deny": self.bob.request(self.base + "/admin/x", method="POST", body="a=1"),
            "bob-allow": self.bob.request(self.base + "/reports/q1"),
            "anon-public": Browser().request(self.base + "/pub/hello"),
            "anon-login": Browser(accept="application/json").request(self.base + "/doc"),
        }
        want = {"alice-allow": (200, "allow", "eng", "alice"),
                "bob-deny": (403, "deny", "admins-only-admin", "bob"),
                "bob-allow": (200, "allow", "sales-reports", "bob"),
                "anon-public": (200, "allow", "public", None),
                "anon-login": (401, "login", None, None)}
        rids = {k: rid_of(r) for k, r in rs.items()}
        got = self.wait_records(list(rids.values()))
        for k, (status, decision, rule, user) in want.items():
            self.assertEqual(rs[k].status, status, (k, rs[k]))
            rec = got[rids[k]]
            for key in RECORD_KEYS:
                self.assertIn(key, rec, (k, key))
            self.assertEqual(rec["decision"], decision, (k, rec))
            if rule:
                self.assertEqual(rec["rule"], rule, (k, rec))
            self.assertEqual(rec["user"] or None, user, (k, rec))
            self.assertEqual(rec["client_ip"], "127.0.0.1")
            self.assertEqual(rec["host"], "127.0.0.1")
            self.assertIsInstance(rec["latency_us"], int)
            self.assertEqual(len(rec["hash"]), 64)
        bob = got[rids["bob-deny"]]
        self.assertEqual((bob["method"], bob["path"], bob["route"]), ("POST", "/admin/x", "app"))
        self.assertEqual(bob["reason"], "Only admins may open the admin area.")
        self.assertEqual((bob["email"], bob["groups"], bob["idp"]),
                         ("bob@example.com", ["sales"], "corp"))
        self.assertTrue(bob["session"])
        # The session field is a hash prefix, never the cookie value.
        self.assertNotIn(bob["session"], cookie_header(self.bob, self.port))
        self.assertEqual(got[rids["alice-allow"]]["path"], "/doc")
        self.assertEqual(got[rids["anon-public"]]["route"], "pub")
        # The chain links every record to the previous one.
        recs = file_records(self.gh)
        for a, b in zip(recs, recs[1:]):
            self.assertEqual(b["prev_hash"], a["hash"])
            self.assertEqual(b["seq"], a["seq"] + 1)
        # SQLite holds the same records (same hashes, same fields).
        rows = {r["request_id"]: r for r in
                sqlite_rows(os.path.join(self.gh.dir, "var", "gatehouse.db"))}
        for k, rid in rids.items():
            row, rec = rows[rid], got[rid]
            self.assertEqual(row["hash"], rec["hash"], k)
            self.assertEqual(row["prev_hash"], rec["prev_hash"], k)
            for f in ("route", "decision", "rule", "user", "email", "client_ip", "method",
                      "host", "path", "latency_us"):
                self.assertEqual(row[f] or None, rec[f] or None, (k, f))
            self.assertEqual(json.loads(row["groups"] or "[]"), rec["groups"] or [], k)

    def test_audit_query_filters(self):
        deny = self.bob.request(self.base + "/admin/q")
        allow = self.alice.request(self.base + "/doc/q")
        pub = Browser().request(self.base + "/pub/q")
        self.wait_records([rid_of(deny), rid_of(allow), rid_of(pub)])
        q = run("audit", "query", "-c", self.gh.config_path, "--user", "bob", "--decision",
                "deny", "--json", check=0)
        got = [json.loads(line) for line in q.stdout.splitlines()]
        self.assertIn(rid_of(deny), [r["request_id"] for r in got])
        for r in got:
            self.assertEqual((r["user"], r["decision"]), ("bob", "deny"))
        q = run("audit", "query", "-c", self.gh.config_path, "--route", "pub", "--since", "1h",
                "--json", check=0)
        got = [json.loads(line) for line in q.stdout.splitlines()]
        self.assertIn(rid_of(pub), [r["request_id"] for r in got])
        self.assertEqual({r["route"] for r in got}, {"pub"})
        table = run("audit", "query", "-c", self.gh.config_path, "--user", "alice",
                    check=0).stdout.splitlines()
        self.assertTrue(table[0].startswith("TIME"), table[:2])
        self.assertGreater(len(table), 1, table)
        self.assertTrue(all(" alice " in line for line in table[1:]), table)
        self.assertFalse(any(" bob " in line for line in table[1:]))
        # since/until select by time: nothing from the year 2000.
        q = run("audit", "query", "-c", self.gh.config_path, "--until", "2000-01-01T00:00:00Z",
                "--json", check=0)
        self.assertEqual(q.stdout, "")
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn("decision log OK", v.stdout)

    def test_audit_retain_refuses_under_a_running_server(self):
        # The server's writer appends to the file audit retain would rewrite: a retain
        # run beside it would send the server's next lines to the replaced file.
        before = len(file_records(self.gh))
        r = run("audit", "retain", "-c", self.gh.config_path, check=1)
        self.assertIn("a running server writes this decision log", r.stderr)
        pub = Browser().request(self.base + "/pub/after-retain")
        self.wait_records([rid_of(pub)])
        self.assertGreater(len(file_records(self.gh)), before)
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_failed_sign_in_is_an_error_record(self):
        # A callback without the login cookie (forged or replayed from elsewhere).
        r = Browser().request(self.base + "/.gatehouse/oidc/callback?code=abc&state=xyz")
        self.assertEqual(r.status, 400, r)
        rec = self.wait_records([rid_of(r)])[rid_of(r)]
        self.assertEqual((rec["decision"], rec["rule"]), ("error", "sign-in"), rec)
        self.assertIn("no login cookie", rec["reason"])
        self.assertEqual(rec["path"], "/.gatehouse/oidc/callback")

    def test_metrics_show_the_writer(self):
        r = self.alice.request(self.base + "/doc/metrics")
        self.wait_records([rid_of(r)])
        m = http_get_metrics(self.gh)
        self.assertRegex(m, r"(?m)^gatehouse_decision_log_records_total [1-9]\d*$")
        self.assertRegex(m, r"(?m)^gatehouse_decision_log_queue_depth \d+$")
        self.assertRegex(m, r"(?m)^gatehouse_decision_log_write_seconds_count [1-9]\d*$")
        self.assertRegex(m, r'(?m)^gatehouse_policy_decisions_total\{route="app",'
                         r'result="allow"\} [1-9]\d*$')


class DecisionLogTampering(unittest.TestCase):
    """audit verify names an edited, a deleted and a reordered record, in the
    SQLite table and in the JSON-lines file (each on its own copy)."""

    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = _PORTS["tamper"]
        cls.gh = start_gatehouse(port, cls.backend)
        base = f"http://127.0.0.1:{port}"
        alice = sign_in(port, "alice")
        bob = sign_in(port, "bob")
        for i in range(6):
            alice.request(base + f"/doc/{i}")
            bob.request(base + f"/admin/{i}")
        cls.gh.stop()  # SIGTERM: everything queued is committed
        cls.n = len(file_records(cls.gh))

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.backend.stop()

    def copy(self):
        d = tempfile.mkdtemp(prefix="gh-dl-copy-")
        self.addCleanup(shutil.rmtree, d, True)
        dst = os.path.join(d, "gh")
        shutil.copytree(self.gh.dir, dst)
        return dst

    def verify(self, d, code):
        return run("audit", "verify", "-c", os.path.join(d, "gatehouse.yaml"), check=code).stdout

    def test_untouched_log_verifies(self):
        self.assertGreaterEqual(self.n, 14)
        out = self.verify(self.copy(), 0)
        self.assertIn("decision log OK", out)

    def sql(self, d, *stmts):
        db = sqlite3.connect(os.path.join(d, "var", "gatehouse.db"))
        for s in stmts:
            db.execute(s)
        db.commit()
        db.close()

    def test_sqlite_edited(self):
        d = self.copy()
        rid = sqlite_rows(os.path.join(d, "var", "gatehouse.db"))[5]["request_id"]
        self.sql(d, "UPDATE decisions SET decision='allow', rule='eng' WHERE seq=6")
        out = self.verify(d, 1)
        self.assertIn("FAIL sqlite: record 6 (request %s) was edited" % rid, out)

    def test_sqlite_deleted(self):
        d = self.copy()
        self.sql(d, "DELETE FROM decisions WHERE seq=7")
        out = self.verify(d, 1)
        self.assertIn("FAIL sqlite: record 7 is missing (removed)", out)

    def test_sqlite_reordered(self):
        d = self.copy()
        cols = [c for c in sqlite_rows(os.path.join(d, "var", "gatehouse.db"))[0] if c != "seq"]
        self.sql(d, "CREATE TABLE t AS SELECT * FROM decisions WHERE seq IN (8, 9)",
                 "UPDATE decisions SET " + ", ".join(
                     f"{c}=(SELECT {c} FROM t WHERE t.seq=17-decisions.seq)" for c in cols)
                 + " WHERE seq IN (8, 9)", "DROP TABLE t")
        out = self.verify(d, 1)
        self.assertIn("FAIL sqlite: record 8 is out of order: it holds record 9", out)

    def lines(self, d):
        with open(os.path.join(d, "var", "decisions.jsonl")) as f:
            return f.readlines()

    def write_lines(self, d, lines):
        with open(os.path.join(d, "var", "decisions.jsonl"), "w") as f:
            f.writelines(lines)

    def test_file_edited(self):
        d = self.copy()
        lines = self.lines(d)
        rec = json.loads(lines[4])
        rec["path"] = "/somewhere-else"
        lines[4] = json.dumps(rec, separators=(",", ":")) + "\n"
        self.write_lines(d, lines)
        out = self.verify(d, 1)
        self.assertIn("FAIL file: record 5 (line 5) was edited", out)

    def test_file_deleted(self):
        d = self.copy()
        lines = self.lines(d)
        del lines[6]
        self.write_lines(d, lines)
        out = self.verify(d, 1)
        self.assertIn("FAIL file: record 7 is missing (removed) before line 7", out)

    def test_file_reordered(self):
        d = self.copy()
        lines = self.lines(d)
        lines[7], lines[8] = lines[8], lines[7]
        self.write_lines(d, lines)
        out = self.verify(d, 1)
        self.assertIn("FAIL file: line 8 holds record 9 where record 8 belongs", out)


class _Load:
    """Threads sending requests with a session cookie until stopped; keeps the
    request ids of the responses they got."""

    def __init__(self, port, cookie, nthreads=4):
        self.port, self.cookie = port, cookie
        self.stop_ev = threading.Event()
        self.statuses = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(nthreads)]
        for t in self.threads:
            t.start()

    def run(self, i):
        n = 0
        while not self.stop_ev.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                for _ in range(50):
                    if self.stop_ev.is_set():
                        break
                    path = "/pub/%d-%d" % (i, n) if n % 3 == 0 else "/doc/%d-%d" % (i, n)
                    c.request("GET", path, headers={"Cookie": self.cookie,
                                                    "Accept": "application/json"})
                    r = c.getresponse()
                    r.read()
                    with self.lock:
                        self.statuses.append(r.status)
                    n += 1
                c.close()
            except (OSError, http.client.HTTPException):
                time.sleep(0.01)

    def finish(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)


class DecisionLogKill9(unittest.TestCase):
    def kill_under_load(self, name, **dl):
        backend = Backend("app")
        self.addCleanup(backend.stop)
        port = _PORTS[name]
        gh = start_gatehouse(port, backend, **dl)
        self.addCleanup(gh.cleanup)
        alice = sign_in(port, "alice")
        cookie = cookie_header(alice, port)
        # New sessions reach SQLite within the session writer's period (500 ms):
        # let alice's be durable before the crash, so she is still signed in after it.
        def durable():
            p = run("sessions", "list", "-c", gh.config_path, "--json", "--user", "alice")
            return p.returncode == 0 and "alice@example.com" in p.stdout
        self.assertTrue(wait_until(durable, timeout=20, interval=0.2),
                        "alice's session never reached the database")
        for attempt in range(2):
            load = _Load(port, cookie)
            wait_until(lambda: len(load.statuses) > 300, timeout=20)
            gh.proc.send_signal(signal.SIGKILL)
            gh.proc.wait()
            load.finish()
            self.assertGreater(load.statuses.count(200), 100)
            seen = backend_request_ids(backend)
            restart(gh)
            r = alice.request(f"http://127.0.0.1:{port}/doc/after-restart-{attempt}")
            self.assertEqual(r.status, 200, r)
            v = run("audit", "verify", "-c", gh.config_path)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
            self.assertIn("decision log OK", v.stdout)
        gh.stop()
        v = run("audit", "verify", "-c", gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        recs = file_records(gh)
        self.assertEqual([r["seq"] for r in recs], list(range(1, len(recs) + 1)))
        return gh, backend, seen, recs

    def test_batch_kill_9_restart_verifies(self):
        self.kill_under_load("crash")

    def test_strict_every_forwarded_request_has_its_record(self):
        gh, backend, _, recs = self.kill_under_load("strict", sync="strict")
        logged = {r["request_id"] for r in recs}
        seen = [rid for rid in backend_request_ids(backend) if rid]
        self.assertGreater(len(seen), 100)
        missing = [rid for rid in seen if rid not in logged]
        self.assertEqual(missing, [], "%d of %d forwarded requests have no record"
                         % (len(missing), len(seen)))


class DecisionLogQueueFull(unittest.TestCase):
    def test_full_queue_answers_503_never_drops(self):
        backend = Backend("app")
        self.addCleanup(backend.stop)
        port = _PORTS["queue"]
        gh = start_gatehouse(port, backend, queue=4)
        self.addCleanup(gh.cleanup)
        base = f"http://127.0.0.1:{port}"
        alice = sign_in(port, "alice")
        self.assertEqual(alice.request(base + "/doc/warm").status, 200)
        # Another process holds the database's write lock: the writer cannot
        # commit, the queue fills up, and requests are refused.
        db = sqlite3.connect(os.path.join(gh.dir, "var", "gatehouse.db"), timeout=10,
                             isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        # Only the requests run while the lock is held: held longer than the
        # writer's busy timeout (5 s), the store would count as failing, which is
        # another path (its backlog, another log line) than a full queue.
        held_from = time.monotonic()
        try:
            statuses, ok_ids = [], []
            for i in range(12):
                r = alice.request(base + f"/doc/held-{i}")
                statuses.append(r.status)
                if r.status == 200:
                    ok_ids.append(rid_of(r))
        finally:
            held = time.monotonic() - held_from
            db.execute("ROLLBACK")
            db.close()
        self.assertLess(held, 4.5, "the machine is too slow for this test: the lock was held "
                        "past the writer's busy timeout")
        self.assertIn(503, statuses, statuses)
        self.assertLessEqual(statuses.count(200), 4, statuses)
        m = http_get_metrics(gh)
        self.assertRegex(m, r"gatehouse_decision_log_rejected_total [1-9]")
        # The log line is written by the logging path, maybe a moment after the 503.
        self.assertTrue(wait_until(lambda: "decision log queue full" in gh.stderr(), 10),
                        gh.stderr()[-3000:])
        # Once the store is writable again the queued records are committed and
        # requests go through again.
        def recovered():
            return alice.request(base + "/doc/after").status == 200
        self.assertTrue(wait_until(recovered, timeout=15, interval=0.3))
        logged = {}

        def have_all():
            logged.update({r["request_id"]: r for r in file_records(gh)})
            return all(rid in logged for rid in ok_ids)
        self.assertTrue(wait_until(have_all, timeout=10), "an accepted request lost its record")
        gh.stop()
        v = run("audit", "verify", "-c", gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)


def http_get_metrics(gh):
    import harness
    return harness.http_get(gh.admin_port, "/metrics").body.decode()


if __name__ == "__main__":
    unittest.main()
