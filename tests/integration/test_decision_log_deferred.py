"""decision_log.index: deferred - the JSON-lines file is the log of record, SQLite an
index filled from it by the commands that read it.

- decisions made live by the server are in the file at once, not in SQLite until a
  reader (`audit query`) ingests them; then they are found and `audit verify` passes;
- a line edited in the file, a row edited in SQLite, a line removed: each caught;
- kill -9 of a writer mid-load, restart: no gap, the chain continues, verify OK;
  a torn last line is cut off and logged;
- strict: a request is forwarded only once its line is in the file;
- retention: the writer cuts the file's old records behind a signed retention record,
  the index follows, verify passes;
- `gatehouse check` refuses what deferred mode does not support, with file:line:col.
Python stdlib only; everything in a temp dir.
"""
import hashlib
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

from harness import Backend, Gatehouse, SIGNIN_CONFIG_HEAD, basic_config, free_port, \
    gatehouse_bin, read_jsonl, wait_until


def run(*args, check=None):
    p = subprocess.run([gatehouse_bin(), *args], capture_output=True, text=True, timeout=60)
    if "Sanitizer" in p.stderr or "runtime error:" in p.stderr:
        raise AssertionError("sanitizer report:\n" + p.stderr[-4000:])
    if check is not None and p.returncode != check:
        raise AssertionError("%s -> %d\n%s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


def driver_bin():
    return os.path.join(os.path.dirname(gatehouse_bin()), "tests", "unit", "policy", "dl_driver")


def db_rows(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in db.execute("SELECT request_id FROM decisions ORDER BY seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def get(port, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    return r.status, r.getheader("X-Request-Id"), c


class Live(unittest.TestCase):
    """The real server, a public route, index: deferred."""

    def start(self, state=None, **dl):
        self.state = state or tempfile.mkdtemp(prefix="gh-defer-")
        self.backend = Backend("app")
        self.addCleanup(self.backend.stop)
        self.port = free_port()
        log = {"file": os.path.join(self.state, "decisions.jsonl"), "index": "deferred",
               "flush_interval": "20ms"}
        log.update(dl)
        self.gh = Gatehouse(basic_config(
            [{"name": "pub", "match": {"path_prefix": "/"}, "public": True,
              "upstream": {"servers": [self.backend.url]}}],
            listen=[{"address": f"127.0.0.1:{self.port}"}],
            state={"sqlite": os.path.join(self.state, "gatehouse.db")},
            decision_log=log))
        self.addCleanup(self.gh.cleanup)
        self.addCleanup(self.gh.stop)
        self.file = os.path.join(self.state, "decisions.jsonl")
        self.db = os.path.join(self.state, "gatehouse.db")

    def test_live_decisions_found_by_query_and_verified(self):
        self.start()
        ids, c = [], None
        for i in range(30):
            status, rid, c = get(self.port, "/live-%d" % i, c)
            self.assertEqual(status, 200)
            ids.append(rid)
        wait_until(lambda: len(read_jsonl(self.file)) >= 30, timeout=10)
        # The writer appended to the file only: the index lags until a reader ingests.
        self.assertEqual([r for r in db_rows(self.db) if r in ids], [])
        q = run("audit", "query", "-c", self.gh.config_path, "--route", "pub", "--json", check=0)
        got = [json.loads(l)["request_id"] for l in q.stdout.splitlines()]
        self.assertEqual([r for r in ids if r not in got], [])
        self.assertEqual([r for r in ids if r not in db_rows(self.db)], [])
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn("decision log OK", v.stdout)
        recs = read_jsonl(self.file)
        self.assertEqual([r["seq"] for r in recs], list(range(1, len(recs) + 1)))
        # A restart continues the chain from the file's last line.
        self.gh.stop()
        self.gh._stderr = open(self.gh.stderr_path, "ab")
        self.gh.proc = subprocess.Popen([gatehouse_bin(), "serve", "-c", self.gh.config_path],
                                        stdout=self.gh._stderr, stderr=self.gh._stderr,
                                        cwd=self.gh.dir)
        self.gh.wait_ready()
        status, rid, _ = get(self.port, "/after-restart")
        self.assertEqual(status, 200)
        wait_until(lambda: any(r["request_id"] == rid for r in read_jsonl(self.file)), timeout=10)
        recs = read_jsonl(self.file)
        self.assertEqual([r["seq"] for r in recs], list(range(1, len(recs) + 1)))
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def requests(self, prefix, n):
        """n requests on one connection; their ids, once the file holds n lines."""
        ids, c = [], None
        for i in range(n):
            status, rid, c = get(self.port, "%s-%d" % (prefix, i), c)
            self.assertEqual(status, 200)
            ids.append(rid)
        c.close()
        wait_until(lambda: len(read_jsonl(self.file)) >= n, timeout=10)
        return ids

    def test_retention_cuts_the_file_behind_a_signed_record(self):
        # Five decisions, then a server with retain: 2s: its writer cuts them at its first
        # sync (behind a signed retention record); the log goes on, verify passes, and
        # query finds only what is kept.
        self.start(retain="0")
        old = self.requests("/old", 5)
        self.gh.stop()
        time.sleep(2.5)
        self.start(state=self.state, retain="2s")
        wait_until(lambda: read_jsonl(self.file) == [], timeout=10)
        new = self.requests("/new", 3)
        recs = read_jsonl(self.file)
        self.assertEqual([r["seq"] for r in recs], [6, 7, 8])
        db = sqlite3.connect(self.db)
        try:
            (count, upto), = db.execute("SELECT count(*), max(upto_seq) FROM "
                                        "decision_log_retention")
            anchor = dict(db.execute("SELECT key, value FROM decision_log_meta"))
        finally:
            db.close()
        self.assertEqual((count, upto), (1, 5))
        self.assertEqual(recs[0]["prev_hash"], anchor["anchor_hash"])
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        q = run("audit", "query", "-c", self.gh.config_path, "--json", check=0)
        got = [json.loads(l)["request_id"] for l in q.stdout.splitlines()]
        self.assertEqual([r for r in got if r in old], [])
        self.assertEqual([r for r in new if r not in got], [])

    def test_strict_forwards_only_after_the_line_is_written(self):
        self.start(sync="strict")
        c = None
        for i in range(20):
            status, rid, c = get(self.port, "/strict-%d" % i, c)
            self.assertEqual(status, 200)
            # No waiting: strict mode answered only once the line was written and synced.
            with open(self.file) as f:
                self.assertIn('"request_id":"%s"' % rid, f.read())
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)


@unittest.skipUnless(os.geteuid() == 0, "needs root to mount a small tmpfs")
class FullDisk(unittest.TestCase):
    """A failed append is a store refusing commits: held, spooled, 503 past max_pending."""

    def test_full_disk_503_past_bound_and_no_served_record_lost(self):
        state = tempfile.mkdtemp(prefix="gh-dfull-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", state], check=True)
        self.addCleanup(shutil.rmtree, state, True)
        self.addCleanup(subprocess.run, ["umount", "-l", state])
        backend = Backend("app")
        self.addCleanup(backend.stop)
        port = free_port()
        gh = Gatehouse(basic_config(
            [{"name": "pub", "match": {"path_prefix": "/"}, "public": True,
              "upstream": {"servers": [backend.url]}}],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": os.path.join(state, "gatehouse.db")},
            decision_log={"file": os.path.join(state, "decisions.jsonl"), "index": "deferred",
                          "flush_interval": "20ms", "max_pending": 20}))
        self.addCleanup(gh.cleanup)
        self.addCleanup(gh.stop)
        path = os.path.join(state, "decisions.jsonl")
        status, rid, c = get(port, "/warm")
        self.assertEqual(status, 200)
        wait_until(lambda: any(r["request_id"] == rid for r in read_jsonl(path)), timeout=10)
        filler = os.path.join(state, "filler")
        with open(filler, "wb", buffering=0) as f:
            for size in (1 << 16, 4096, 512, 1):
                while True:
                    try:
                        f.write(b"\0" * size)
                    except OSError:
                        break
        served, statuses = [], []
        for i in range(2000):
            status, rid, c = get(port, "/full-%d" % i, c)
            statuses.append(status)
            if status == 200:
                served.append(rid)
            if statuses[-10:] == [503] * 10:
                break
        self.assertIn(503, statuses)
        self.assertGreater(len(served), 0)
        self.assertIn("the store refuses commits", gh.stderr())
        m = http.client.HTTPConnection("127.0.0.1", gh.admin_port, timeout=10)
        m.request("GET", "/metrics")
        self.assertRegex(m.getresponse().read().decode(),
                         r"(?m)^gatehouse_decision_log_broken 1$")
        gh.stop()
        self.assertIn("saved in the spool", gh.stderr())
        os.unlink(filler)
        gh._stderr = open(gh.stderr_path, "ab")
        gh.proc = subprocess.Popen([gatehouse_bin(), "serve", "-c", gh.config_path],
                                   stdout=gh._stderr, stderr=gh._stderr, cwd=gh.dir)
        gh.wait_ready()
        gh.stop()
        ids = [r["request_id"] for r in read_jsonl(path)]
        self.assertEqual([r for r in served if r not in ids], [])
        recs = read_jsonl(path)
        self.assertEqual([r["seq"] for r in recs], list(range(1, len(recs) + 1)))
        v = run("audit", "verify", "-c", gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)


class Tamper(unittest.TestCase):
    """Records written through the library (dl_driver) with index: deferred."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.cfg = os.path.join(self.dir, "gatehouse.yaml")
        with open(self.cfg, "w") as f:
            f.write(SIGNIN_CONFIG_HEAD +
                    "decision_log: {file: decisions.jsonl, queue: 5000, index: deferred}\n"
                    "routes:\n"
                    "  - {name: wiki, match: {host: wiki.example.com}, policy: policies/wiki.yaml,\n"
                    "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n"
                    "  - {name: reports, match: {host: r.example.com}, public: true,\n"
                    "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n")
        os.mkdir(os.path.join(self.dir, "policies"))
        with open(os.path.join(self.dir, "policies", "wiki.yaml"), "w") as f:
            f.write("rules:\n  - id: eng\n    effect: allow\n    when: {groups: eng}\n")
        self.assertTrue(os.access(driver_bin(), os.X_OK), "missing " + driver_bin())
        self.file = os.path.join(self.dir, "decisions.jsonl")

    def tearDown(self):
        self.tmp.cleanup()

    def driver(self, n, tag):
        return subprocess.Popen([driver_bin(), self.cfg, str(n), tag], cwd=self.dir,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, n, tag):
        p = self.driver(n, tag)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        return err

    def db_path(self):
        path = os.path.join(self.dir, "gh.db")
        self.assertTrue(os.path.exists(path))
        return path

    def verify(self, code):
        v = run("audit", "verify", "-c", self.cfg)
        self.assertEqual(v.returncode, code, v.stdout + v.stderr)
        return v.stdout

    def test_line_edited_in_file_is_caught(self):
        self.write(40, "t")
        self.verify(0)  # ingests
        with open(self.file) as f:
            lines = f.readlines()
        lines[10] = lines[10].replace('"decision":"deny"', '"decision":"allow"') \
            .replace('"decision":"allow","rule":"eng"', '"decision":"deny","rule":"eng"')
        with open(self.file, "w") as f:
            f.writelines(lines)
        self.assertIn("FAIL file: record 11 (line 11) was edited", self.verify(1))

    def test_line_edited_before_ingest_is_caught(self):
        self.write(40, "t")
        with open(self.file) as f:
            lines = f.readlines()
        lines[5] = lines[5].replace('"method":"GET"', '"method":"PUT"')
        with open(self.file, "w") as f:
            f.writelines(lines)
        self.assertIn("FAIL file: record 6 (line 6) was edited", self.verify(1))

    def test_row_edited_in_sqlite_is_caught(self):
        self.write(40, "t")
        self.verify(0)
        db = sqlite3.connect(self.db_path())
        db.execute("UPDATE decisions SET decision = 'allow', enforced = 'allow' WHERE seq = 7")
        db.commit()
        db.close()
        out = self.verify(1)
        self.assertIn("FAIL sqlite: record 7", out)

    def test_row_rewritten_with_its_hash_is_caught(self):
        # The row and its own hash changed together (the chain of SQLite alone cut at the
        # end, so that it verifies by itself): the file still disagrees.
        self.write(40, "t")
        self.verify(0)
        db = sqlite3.connect(self.db_path())
        db.execute("DELETE FROM decisions WHERE seq >= 30")
        db.execute("UPDATE decision_log_index SET seq = 0")  # irrelevant to verify
        db.commit()
        db.close()
        out = self.verify(1)
        self.assertRegex(out, r"FAIL (index|file|head)")

    def test_line_removed_is_caught(self):
        self.write(40, "t")
        self.verify(0)
        with open(self.file) as f:
            lines = f.readlines()
        del lines[20]
        with open(self.file, "w") as f:
            f.writelines(lines)
        self.assertIn("FAIL file: record 21 is missing (removed)", self.verify(1))

    def test_last_line_removed_is_caught(self):
        self.write(40, "t")
        self.verify(0)
        with open(self.file) as f:
            lines = f.readlines()
        with open(self.file, "w") as f:
            f.writelines(lines[:-1])
        self.assertRegex(self.verify(1), r"FAIL (file|head)")

    def test_kill_9_mid_load_then_restart_verifies(self):
        def size():
            try:
                return os.path.getsize(self.file)
            except FileNotFoundError:
                return 0
        for attempt in range(2):
            before = size()
            p = self.driver(2000000, "crash%d" % attempt)
            line = p.stdout.readline()
            self.assertTrue(line.startswith("queued"), line)
            # Killed once its records reach the file, long before its two million.
            self.assertTrue(wait_until(lambda: size() > before + 4096, timeout=30),
                            "the driver never wrote a record")
            p.send_signal(signal.SIGKILL)
            p.wait()
            self.assertEqual(p.returncode, -signal.SIGKILL)
            self.write(300, "restart%d" % attempt)
            self.assertIn("decision log OK", self.verify(0))
        recs = read_jsonl(self.file)
        self.assertEqual([r["seq"] for r in recs], list(range(1, len(recs) + 1)))
        self.assertGreater(len(recs), 600)
        self.assertEqual(recs[-1]["request_id"], "restart1-299")
        q = run("audit", "query", "-c", self.cfg, "--json", check=0)
        self.assertEqual(len(q.stdout.splitlines()), len(recs))

    def test_torn_last_line_cut_off_and_chain_continues(self):
        self.write(20, "a")
        with open(self.file, "a") as f:
            f.write('{"v":3,"seq":21,"node":"x","ts":"2026-')
        err = self.write(20, "b")
        self.assertIn("torn line", err)
        recs = read_jsonl(self.file)
        self.assertEqual([r["seq"] for r in recs], list(range(1, 41)))
        self.assertIn("decision log OK", self.verify(0))

    def test_verify_and_query_while_the_writer_appends(self):
        p = self.driver(20000, "live")
        self.addCleanup(p.wait)
        self.addCleanup(p.kill)
        self.assertTrue(p.stdout.readline().startswith("queued"))
        # Right away, while it appends (20000 records take it about 0.1 s, longer
        # under ASan): each reader reads up to the size it finds, the later rounds
        # find more.
        for _ in range(3):
            self.assertIn("decision log OK", self.verify(0))
            q = run("audit", "query", "-c", self.cfg, "--user", "bob", "--json", check=0)
            self.assertTrue(q.stdout.strip())

    def test_switch_to_inline_and_back(self):
        self.write(30, "a")
        with open(self.cfg) as f:
            text = f.read()
        with open(self.cfg, "w") as f:
            f.write(text.replace(", index: deferred}", "}"))
        self.write(20, "b")  # inline: the open indexes the file's 30 records first
        self.assertEqual(len(db_rows(self.db_path())), 50)
        self.assertIn("decision log OK", self.verify(0))
        with open(self.cfg, "w") as f:
            f.write(text)
        self.write(20, "c")
        self.assertIn("decision log OK", self.verify(0))
        q = run("audit", "query", "-c", self.cfg, "--json", check=0)
        self.assertEqual(len(q.stdout.splitlines()), 70)
        recs = read_jsonl(self.file)
        self.assertEqual([r["seq"] for r in recs], list(range(1, 71)))

    def test_query_and_policy_diff_ingest_first(self):
        self.write(40, "d")
        q = run("audit", "query", "-c", self.cfg, "--user", "bob", "--json", check=0)
        self.assertTrue(q.stdout.strip())
        self.write(10, "e")
        new = os.path.join(self.dir, "new")
        os.mkdir(new)
        with open(os.path.join(new, "wiki.yaml"), "w") as f:
            f.write("rules:\n  - id: no-dave\n    effect: deny\n    when: {user: dave}\n")
        d = run("policy", "diff", "-c", self.cfg, "--new", new, "--since", "1h", check=0)
        self.assertRegex(d.stdout, r"replayed 50 decisions|replayed \d+ decisions")
        self.assertEqual(len(db_rows(self.db_path())), 50)


# ---- lines with every kind of escape, ingested by the real binary ----

GENESIS = "0" * 64


def wjstr(s):
    """A JSON string as the writer spells it: '"' and '\\' escaped, control characters
    and DEL as \\u00XX, everything else (UTF-8 included) as it is; None is null."""
    if s is None:
        return "null"
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7f:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def wclaims(claims):
    """{"name":"v"} or {"name":["v1","v2"]} for a repeated name, in first-seen order."""
    names = []
    for n, _ in claims:
        if n not in names:
            names.append(n)
    parts = []
    for n in names:
        vals = [v for m, v in claims if m == n]
        spelt = wjstr(vals[0]) if len(vals) == 1 else "[" + ",".join(map(wjstr, vals)) + "]"
        parts.append(wjstr(n) + ":" + spelt)
    return "{" + ",".join(parts) + "}"


def record_line(seq, prev, f, fmt=3, raw=None):
    """The line the writer makes of the fields f (format 3, 2 or 1), hashed as it hashes
    (SHA-256 over prev_hash, the line up to "hash" and "}"). raw: extra (key, JSON text)
    replacements, spelt as given (escapes the writer never makes)."""
    raw = dict(raw or {})

    def v(k):
        return raw[k] if k in raw else wjstr(f.get(k))
    s = '{"v":%d,"seq":%d' % (fmt, seq)
    if fmt == 3:
        s += ',"node":' + v("node")
    s += ',"ts":"2026-03-10T09:30:%02d.%06dZ"' % (seq // 1000000 % 60, seq % 1000000)
    if fmt >= 2:
        s += ',"kind":' + v("kind")
    for k in ("request_id", "route", "decision", "rule", "reason", "user", "email"):
        s += ',"%s":%s' % (k, v(k))
    s += ',"groups":' + raw.get("groups", "[" + ",".join(map(wjstr, f.get("groups", []))) + "]")
    s += ',"claims":' + raw.get("claims", wclaims(f.get("claims", [])))
    s += ',"idp":%s,"session":%s' % (v("idp"), v("session"))
    s += ',"device":{"present":true,"id":%s,"owner":%s,"trusted":false}' % (v("id"), v("owner"))
    for k in ("client_ip", "method", "host", "path"):
        s += ',"%s":%s' % (k, v(k))
    s += ',"shadow":false'
    if fmt >= 2:
        s += ',"enforced":' + v("enforced")
    s += ',"opa":{"called":true,"result":%s,"ms":%d},"latency_us":%d' % (v("result"), seq % 7,
                                                                          seq * 13)
    if fmt >= 2:
        if any(f.get(k) is not None for k in ("action", "actor", "from", "target")):
            s += ',"admin":{"action":%s,"actor":%s,"from":%s,"target":%s}' % (
                v("action"), v("actor"), v("from"), v("target"))
        else:
            s += ',"admin":null'
    s += ',"prev_hash":"%s"' % prev
    canon = s.encode("utf-8")
    h = hashlib.sha256(prev.encode() + canon + b"}").hexdigest()
    return canon + b',"hash":"' + h.encode() + b'"}', h


# Every escape the writer makes (each control character, DEL, '"', '\\') and what it
# leaves as it is ('/', UTF-8 of two, three and four bytes, empty strings).
TRICKY = [chr(c) for c in range(1, 0x20)] + [
    "\x7f", '"', "\\", "/", "quote \" and back\\slash", "caf\u00e9", "\u20ac \u65e5\u672c",
    "\U0001F600 \U0001F511", "", "tab\tnewline\ncr\r", "a\u2028b", "\\u0041 not an escape",
    "ends with backslash\\", "x" * 3000]


def tricky_fields(i):
    t = lambda k: TRICKY[(i + k) % len(TRICKY)]  # noqa: E731
    f = {"node": "node-\u00e9" if i % 2 else "n1", "kind": "policy", "request_id": "r%d-%s" % (i, t(0)),
         "route": "wiki", "decision": "deny", "rule": t(1) if i % 3 else None, "reason": t(2),
         "user": t(3), "email": None if i % 4 == 0 else t(4), "idp": "corp", "session": t(5),
         "id": t(6), "owner": None, "client_ip": "10.0.0.%d" % (i % 250), "method": "GET",
         "host": t(7), "path": "/p/" + t(8), "enforced": "deny", "result": t(9) if i % 2 else None,
         "groups": [] if i % 5 == 0 else [t(10), "eng", t(11)],
         "claims": [] if i % 6 == 0 else [("amr", t(12)), (t(13), "v"), ("amr", "mfa"),
                                          ("\u00e9", t(14))]}
    if i % 7 == 0:
        f.update(kind="admin", enforced=None, action="session.revoke", actor=t(15),
                 **{"from": None, "target": "session " + t(16)})
    return f


class Escapes(unittest.TestCase):
    """Lines written as the writer writes them, with every escape, through the real
    binary: `audit query --json` gives back each line byte for byte (every value read
    back exactly), `audit verify` passes."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.cfg = os.path.join(self.dir, "gatehouse.yaml")
        self.file = os.path.join(self.dir, "decisions.jsonl")
        with open(self.cfg, "w") as f:
            f.write("listen: [{address: \"127.0.0.1:%d\"}]\n" % free_port() +
                    "state: {sqlite: gh.db}\n"
                    "decision_log: {file: decisions.jsonl, index: deferred, retain: 0}\n"
                    "routes:\n  - {name: wiki, public: true, upstream: {servers: "
                    "[\"http://127.0.0.1:9\"]}}\n")

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, lines):
        with open(self.file, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        # The head file the writer keeps next to the database: its last record.
        last = json.loads(lines[-1])
        with open(os.path.join(self.dir, "decision-log.head"), "w") as f:
            f.write('{"seq":%d,"hash":"%s"}' % (last["seq"], last["hash"]))

    def query(self):
        q = run("audit", "query", "-c", self.cfg, "--json", "--limit", "100000", check=0)
        # Only "\n" ends a line (a record may hold U+2028 and other line breaks).
        return [line.encode("utf-8") for line in q.stdout.split("\n") if line]

    def test_every_escape_read_back_exactly_and_verified(self):
        lines, prev = [], GENESIS
        # Formats 1 and 2 first (older records), then format 3; 301 records, so that
        # both the many-row and the one-row INSERT take some.
        for i in range(301):
            fmt = 1 if i < 5 else 2 if i < 12 else 3
            f = tricky_fields(i)
            if fmt < 3:
                f.pop("node")
            line, prev = record_line(i + 1, prev, f, fmt)
            lines.append(line)
        self.write(lines)
        got = self.query()
        self.assertEqual(len(got), len(lines))
        for want, have in zip(lines, got):
            self.assertEqual(have, want)
        v = run("audit", "verify", "-c", self.cfg)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn("decision log OK", v.stdout)
        # More lines after the first ingest continue the index.
        for i in range(301, 340):
            line, prev = record_line(i + 1, prev, tricky_fields(i))
            lines.append(line)
        self.write(lines)
        self.assertEqual(self.query(), lines)
        v = run("audit", "verify", "-c", self.cfg)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_escapes_the_writer_never_makes_are_decoded(self):
        # \n, \t, \/, \b, \f, \r, \uXXXX (BMP and a surrogate pair) and whitespace in a
        # line: valid JSON, decoded to the same values (not the writer's bytes, so only
        # the values are compared).
        odd = {"reason": r'"a\nb\tc\/d\b\f\r\u00e9\u20ac\ud83d\ude00\u0041"',
               "user": r'"J\u00fcrgen"', "path": r'"\/x\/y"',
               "groups": r'["\u0065ng","a\"b", "spaced"]',
               "claims": r'{"amr":["\u006dfa"],"n":"\\u0041","m":[]}'}
        lines, prev = [], GENESIS
        for i in range(40):
            line, prev = record_line(i + 1, prev, tricky_fields(i), 3,
                                     raw=odd if i % 3 == 1 else None)
            lines.append(line)
        self.write(lines)
        got = self.query()
        self.assertEqual(len(got), len(lines))
        for i, (want, have) in enumerate(zip(lines, got)):
            w, h = json.loads(want), json.loads(have)
            if i % 3 != 1:
                self.assertEqual(have, want)
                continue
            for k in ("reason", "user", "path", "groups"):
                self.assertEqual(h[k], w[k], k)
            self.assertEqual(w["reason"], "a\nb\tc/d\b\f\r\u00e9\u20ac\U0001F600A")
            # A one-value array reads back as that value, an empty one as nothing.
            self.assertEqual(h["claims"], {"amr": "mfa", "n": "\\u0041"})

    def test_line_jansson_refuses_is_refused(self):
        lines, prev = [], GENESIS
        for i in range(10):
            line, prev = record_line(i + 1, prev, tricky_fields(i))
            lines.append(line)
        lines[6] = lines[6].replace(b'"route":"wiki"', b'"route":"wi\tki"')
        self.write(lines)
        # The transaction that met the line is not committed: the index stays where it
        # was (empty), the query says why; verify names the line.
        q = run("audit", "query", "-c", self.cfg, "--json", check=0)
        self.assertIn("byte %d is not a decision record" % sum(len(x) + 1 for x in lines[:6]),
                      q.stderr)
        self.assertEqual(q.stdout.strip(), "")
        v = run("audit", "verify", "-c", self.cfg)
        self.assertEqual(v.returncode, 1, v.stdout + v.stderr)
        self.assertIn("FAIL file: line 7 is not a decision record", v.stdout)


class Check(unittest.TestCase):
    def check(self, extra, state="state: {sqlite: gh.db}\n"):
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "gatehouse.yaml")
            with open(cfg, "w") as f:
                f.write("listen: [{address: \"127.0.0.1:%d\"}]\n" % free_port() + state +
                        "routes:\n  - {name: r, public: true, upstream: {servers: "
                        "[\"http://127.0.0.1:9\"]}}\n" + extra)
            p = run("check", "-c", cfg)
            self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
            return p.stdout + p.stderr

    def test_refused_combinations(self):
        out = self.check("decision_log:\n  index: deferred\n")
        self.assertRegex(out, r"gatehouse\.yaml:\d+:\d+: .*\"index: deferred\" needs \"file\"")
        out = self.check("decision_log:\n  file: d.jsonl\n  index: later\n")
        self.assertRegex(out, r"gatehouse\.yaml:\d+:\d+: .*\"index\" must be inline or deferred")

    def test_retain_accepted(self):
        for retain in ("0", "30d"):
            with tempfile.TemporaryDirectory() as d:
                cfg = os.path.join(d, "gatehouse.yaml")
                with open(cfg, "w") as f:
                    f.write("listen: [{address: \"127.0.0.1:%d\"}]\n" % free_port() +
                            "state: {sqlite: gh.db}\nroutes:\n  - {name: r, public: true, "
                            "upstream: {servers: [\"http://127.0.0.1:9\"]}}\n"
                            "decision_log:\n  file: d.jsonl\n  index: deferred\n  retain: %s\n"
                            % retain)
                p = run("check", "-c", cfg)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
