"""decision_log.index: deferred - the JSON-lines file is the log of record, SQLite an
index filled from it by the commands that read it.

- decisions made live by the server are in the file at once, not in SQLite until a
  reader (`audit query`) ingests them; then they are found and `audit verify` passes;
- a line edited in the file, a row edited in SQLite, a line removed: each caught;
- kill -9 of a writer mid-load, restart: no gap, the chain continues, verify OK;
  a torn last line is cut off and logged;
- strict: a request is forwarded only once its line is in the file;
- `gatehouse check` refuses what deferred mode does not support, with file:line:col.
Python stdlib only; everything in a temp dir.
"""
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

    def start(self, **dl):
        self.state = tempfile.mkdtemp(prefix="gh-defer-")
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
        out = self.check("decision_log:\n  file: d.jsonl\n  index: deferred\n  retain: 30d\n")
        self.assertRegex(out, r"gatehouse\.yaml:8:\d+: .*\"retain\" is not supported with")
        out = self.check("decision_log:\n  file: d.jsonl\n  index: later\n")
        self.assertRegex(out, r"gatehouse\.yaml:\d+:\d+: .*\"index\" must be inline or deferred")
        out = self.check("decision_log:\n  file: d.jsonl\n  index: deferred\n",
                         state="state: {sqlite: gh.db, postgres: \"host=127.0.0.1\", "
                               "node: n1}\n")
        self.assertRegex(out, r"gatehouse\.yaml:2:\d+: .*\"state.postgres\".*not supported")

    def test_retain_zero_accepted(self):
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "gatehouse.yaml")
            with open(cfg, "w") as f:
                f.write("listen: [{address: \"127.0.0.1:%d\"}]\n" % free_port() +
                        "state: {sqlite: gh.db}\nroutes:\n  - {name: r, public: true, upstream: "
                        "{servers: [\"http://127.0.0.1:9\"]}}\n"
                        "decision_log:\n  file: d.jsonl\n  index: deferred\n  retain: 0\n")
            p = run("check", "-c", cfg)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
