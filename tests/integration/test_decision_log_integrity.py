"""Decision log integrity: a store that refuses commits (full disk) and truncation.

- Full disk (the state on a small tmpfs, filled up): requests past
  decision_log.max_pending get 503, the store is reported broken in /metrics and the
  log, and no record of a served request is lost: SIGTERM saves them in the spool and
  the next start commits them (needs root for the tmpfs mount; skipped otherwise).
- Truncation: cutting the last records (or all of them) from both stores, forging a
  retention anchor, rewriting the whole chain: `audit verify` names each, sequence
  numbers never restart, signed checkpoints are written every N records and every T
  seconds, `audit head` / `verify --anchor` check against a pinned head.
Python stdlib only; real binary, real sockets.
"""
import errno
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

from harness import Backend, Gatehouse, basic_config, free_port, read_jsonl, wait_until, \
    gatehouse_bin
import harness


def clean(text):
    """Fails on a sanitizer report (under the ASan/UBSan build)."""
    if "Sanitizer" in text or "runtime error:" in text:
        raise AssertionError("sanitizer report:\n" + text[-4000:])


def run(*args, check=None):
    p = subprocess.run([gatehouse_bin(), *args], capture_output=True, text=True, timeout=60)
    clean(p.stderr)
    if check is not None and p.returncode != check:
        raise AssertionError("%s -> %d\n%s%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


def get(port, path, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    return r.status, r.getheader("X-Request-Id"), body, c


def metrics(gh):
    return harness.http_get(gh.admin_port, "/metrics").body.decode()


def config(port, backend, state_dir, **dl):
    log = {"file": os.path.join(state_dir, "decisions.jsonl"), "flush_interval": "20ms"}
    log.update(dl)
    return basic_config(
        [{"name": "pub", "match": {"path_prefix": "/"}, "public": True,
          "upstream": {"servers": [backend.url]}}],
        listen=[{"address": f"127.0.0.1:{port}"}],
        state={"sqlite": os.path.join(state_dir, "gatehouse.db")},
        decision_log=log)


def restart(gh):
    # A start refused on purpose (or stopped while starting) is not checked for leaks.
    gh.clean_from = len(gh.stderr())
    gh._stderr = open(gh.stderr_path, "ab")
    gh.proc = subprocess.Popen([gatehouse_bin(), "serve", "-c", gh.config_path],
                               stdout=gh._stderr, stderr=gh._stderr, cwd=gh.dir)
    gh.wait_ready()


def fill(path):
    """Writes zeros to path until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break


def fill_state(state, filler):
    """Empties SQLite's write-ahead log (a full disk must not find room left in it),
    then fills the file system."""
    db = sqlite3.connect(os.path.join(state, "gatehouse.db"), timeout=10)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.close()
    fill(filler)


def rows(db_path):
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in db.execute("SELECT request_id FROM decisions ORDER BY seq")]
    finally:
        db.close()


@unittest.skipUnless(os.geteuid() == 0, "needs root to mount a small tmpfs")
class FullDisk(unittest.TestCase):
    def setUp(self):
        self.state = tempfile.mkdtemp(prefix="gh-full-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", self.state],
                       check=True)
        self.addCleanup(shutil.rmtree, self.state, True)
        self.addCleanup(subprocess.run, ["umount", "-l", self.state])
        self.backend = Backend("app")
        self.addCleanup(self.backend.stop)
        self.port = free_port()
        self.gh = Gatehouse(config(self.port, self.backend, self.state, max_pending=20))
        self.addCleanup(self.gh.cleanup)
        self.addCleanup(lambda: clean(self.gh.stderr()))
        self.addCleanup(self.gh.stop)
        self.filler = os.path.join(self.state, "filler")

    def drive(self, c, tag, limit=400):
        """Requests until ten in a row are refused (or limit): (served ids, statuses)."""
        served, statuses = [], []
        for i in range(limit):
            status, rid, _, c = get(self.port, "/%s-%d" % (tag, i), c)
            statuses.append(status)
            if status == 200:
                served.append(rid)
            if statuses[-10:] == [503] * 10:
                break
        # Past the bound (20 held records) requests are refused, not served unlogged
        # (more may be accepted while the first failing commit is under way: the store
        # is known to be broken only then), and stay refused while the disk is full.
        self.assertIn(503, statuses, statuses)
        first = statuses.index(503)
        self.assertEqual(set(statuses[first:]), {503}, statuses)
        return served, statuses

    def test_full_disk_503_past_bound_and_no_served_record_lost(self):
        status, rid, _, c = get(self.port, "/warm")
        self.assertEqual(status, 200)
        wait_until(lambda: rid in rows(os.path.join(self.state, "gatehouse.db")), timeout=10)
        fill_state(self.state, self.filler)
        served, statuses = self.drive(c, "full")
        self.assertGreater(len(served), 0, statuses)
        m = metrics(self.gh)
        self.assertRegex(m, r"(?m)^gatehouse_decision_log_broken 1$")
        self.assertRegex(m, r"(?m)^gatehouse_decision_log_pending ([1-9]\d*)$")
        self.assertIn("the store refuses commits", self.gh.stderr())
        self.assertIn("store failing and its backlog is full", self.gh.stderr())
        # SIGTERM while the disk is still full: the held records go to the spool.
        self.gh.stop()
        self.assertIn("saved in the spool", self.gh.stderr())
        os.unlink(self.filler)
        restart(self.gh)
        logged = rows(os.path.join(self.state, "gatehouse.db"))
        missing = [r for r in served if r not in logged]
        self.assertEqual(missing, [], "%d of %d served requests lost their record"
                         % (len(missing), len(served)))
        status, rid, _, _ = get(self.port, "/after")
        self.assertEqual(status, 200)
        self.gh.stop()
        file_ids = [r["request_id"] for r in
                    read_jsonl(os.path.join(self.state, "decisions.jsonl"))]
        self.assertEqual([r for r in served if r not in file_ids], [])
        v = run("audit", "verify", "-c", self.gh.config_path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_space_returns_backlog_committed_and_serving_resumes(self):
        status, rid, _, c = get(self.port, "/warm")
        wait_until(lambda: rid in rows(os.path.join(self.state, "gatehouse.db")), timeout=10)
        fill_state(self.state, self.filler)
        served, _ = self.drive(c, "held")
        os.unlink(self.filler)
        self.assertTrue(wait_until(lambda: get(self.port, "/again")[0] == 200, timeout=15,
                                   interval=0.3))
        self.assertTrue(wait_until(lambda: all(
            r in rows(os.path.join(self.state, "gatehouse.db")) for r in served), timeout=10))
        self.assertTrue(wait_until(
            lambda: "gatehouse_decision_log_broken 0" in metrics(self.gh), timeout=5))
        self.assertIn("accepts commits again", self.gh.stderr())


# ---------------------------------------------------------------------------
# Truncation, checkpoints, retention, pinned heads.

import hashlib  # noqa: E402


def ckpt_config(port, backend, **dl):
    log = {"file": "var/decisions.jsonl", "flush_interval": "20ms",
           "checkpoint": {"key": "log-ed25519.pem", "every": 5, "interval": "60s",
                          "file": "var/checkpoints.log"}}
    log.update(dl)
    return basic_config(
        [{"name": "pub", "match": {"path_prefix": "/"}, "public": True,
          "upstream": {"servers": [backend.url]}}],
        listen=[{"address": f"127.0.0.1:{port}"}],
        state={"sqlite": "var/gatehouse.db"},
        decision_log=log)


def make_key(d):
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out",
                    os.path.join(d, "log-ed25519.pem")], check=True, capture_output=True)


class Truncation(unittest.TestCase):
    N = 12
    CKPT = True  # signed checkpoints configured

    def need_ckpt(self):
        if not self.CKPT:
            self.skipTest("needs signed checkpoints")

    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        cls.port = free_port()
        cls.cfg = ckpt_config(cls.port, cls.backend)
        if not cls.CKPT:
            del cls.cfg["decision_log"]["checkpoint"]
        cls.gh = Gatehouse(cls.cfg, wait=not cls.CKPT)
        if cls.CKPT:
            cls.start_code = cls.gh.proc.wait(10)  # no key yet: refused
            cls.gh.stop()
            cls.start_err = cls.gh.stderr()
            make_key(cls.gh.dir)
            restart(cls.gh)
        c = None
        for i in range(cls.N):
            status, _, _, c = get(cls.port, "/r%d" % i, c)
            assert status == 200, status
        c.close()
        cls.gh.stop()  # SIGTERM: committed, checkpointed

    @classmethod
    def tearDownClass(cls):
        cls.gh.stop()
        err = cls.gh.stderr()[getattr(cls.gh, "clean_from", 0):]
        cls.gh.cleanup()
        cls.backend.stop()
        clean(err)

    def copy(self):
        d = tempfile.mkdtemp(prefix="gh-trunc-")
        self.addCleanup(shutil.rmtree, d, True)
        dst = os.path.join(d, "gh")
        shutil.copytree(self.gh.dir, dst)
        return dst

    def verify(self, d, code, *extra):
        p = run("audit", "verify", "-c", os.path.join(d, "gatehouse.yaml"), *extra)
        self.assertEqual(p.returncode, code, p.stdout + p.stderr)
        return p.stdout

    def sql(self, d, *stmts):
        db = sqlite3.connect(os.path.join(d, "var", "gatehouse.db"))
        for st in stmts:
            db.execute(st)
        db.commit()
        db.close()

    def lines(self, d):
        with open(os.path.join(d, "var", "decisions.jsonl")) as f:
            return f.readlines()

    def write_lines(self, d, lines):
        with open(os.path.join(d, "var", "decisions.jsonl"), "w") as f:
            f.writelines(lines)

    def cut(self, d, k, checkpoints_too=True):
        """Removes the last k records from both stores (and the checkpoints that name
        them from SQLite, as an attacker with write access would)."""
        keep = self.N - k
        self.sql(d, "DELETE FROM decisions WHERE seq > %d" % keep,
                 *(["DELETE FROM decision_log_checkpoints WHERE seq > %d" % keep]
                   if checkpoints_too and self.CKPT else []))
        self.write_lines(d, self.lines(d)[:keep])

    def test_untouched_log_verifies_with_checkpoints(self):
        out = self.verify(self.copy(), 0)
        self.assertIn("decision log OK", out)
        if self.CKPT:
            self.assertRegex(out, r"checkpoints: \d+ signed by key [0-9a-f]{16} verified; the newest "
                              r"covers record 12")
            # An auditor needs only the public key.
            d = self.copy()
            pub = os.path.join(d, "log.pub.pem")
            subprocess.run(["openssl", "pkey", "-in", os.path.join(d, "log-ed25519.pem"),
                            "-pubout", "-out", pub], check=True, capture_output=True)
            os.unlink(os.path.join(d, "log-ed25519.pem"))
            cfg = json.loads(json.dumps(self.cfg))
            del cfg["decision_log"]["checkpoint"]
            with open(os.path.join(d, "gatehouse.yaml"), "w") as f:
                f.write(harness.to_yaml(cfg))
            out = self.verify(d, 0, "--pubkey", pub)
            self.assertRegex(out, r"checkpoints: \d+ signed by key [0-9a-f]{16} verified")
            other = os.path.join(d, "other.pem")
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", other],
                           check=True, capture_output=True)
            out = self.verify(d, 1, "--pubkey", other)
            self.assertIn("has a bad signature or another key (forged)", out)

    def test_checkpoints_every_n_records_in_both_places(self):
        self.need_ckpt()
        d = self.copy()
        db = sqlite3.connect(os.path.join(d, "var", "gatehouse.db"))
        seqs = [r[0] for r in db.execute("SELECT seq FROM decision_log_checkpoints ORDER BY seq")]
        db.close()
        # every: 5 -> records 5 and 10; the shutdown checkpoint covers 12.
        for want in (5, 10, 12):
            self.assertIn(want, seqs)
        with open(os.path.join(d, "var", "checkpoints.log")) as f:
            shipped = [json.loads(line) for line in f]
        self.assertEqual([c["seq"] for c in shipped], seqs)
        for c in shipped:
            self.assertEqual(set(c), {"type", "seq", "hash", "time", "key_id", "sig"})
            self.assertEqual(len(c["sig"]), 128)
        with open(os.path.join(d, "var", "decision-log.head")) as f:
            head = json.load(f)
        self.assertEqual((head["seq"], head["checkpoint"]["seq"]), (12, 12))

    def test_cut_last_record(self):
        d = self.copy()
        self.cut(d, 1)
        out = self.verify(d, 1)
        self.assertIn("FAIL head: the log ends at record 11 but the writer's head file records "
                      "record 12: records 12..12 were removed (truncated)", out)
        if self.CKPT:
            self.assertIn("FAIL checkpoints: the log ends at record 11 but a signed checkpoint",
                          out)

    def test_cut_last_five(self):
        d = self.copy()
        self.cut(d, 5)
        out = self.verify(d, 1)
        self.assertIn("records 8..12 were removed (truncated)", out)

    def test_cut_every_record(self):
        d = self.copy()
        self.cut(d, self.N)
        out = self.verify(d, 1)
        self.assertIn("FAIL head: the log ends at record 0 but the writer's head file records "
                      "record 12: records 1..12 were removed (truncated)", out)

    def test_cut_and_head_file_deleted_caught_by_shipped_checkpoints(self):
        self.need_ckpt()
        d = self.copy()
        self.cut(d, 5)
        os.unlink(os.path.join(d, "var", "decision-log.head"))
        out = self.verify(d, 1)
        self.assertIn("FAIL head: %s is missing" % os.path.join(d, "var", "decision-log.head"), out)
        self.assertRegex(out, r"FAIL checkpoints: the log ends at record 7 but a signed checkpoint "
                              r"of \S+ \(.*checkpoints.log:\d+\) covers record 12: records 8..12 "
                              r"were removed")

    def test_restart_after_cut_never_reuses_sequence_numbers(self):
        d = self.copy()
        self.cut(d, 5)
        gh = Gatehouse(open(os.path.join(d, "gatehouse.yaml")).read(), wait=False)
        self.addCleanup(gh.cleanup)
        gh.stop()  # a second dir for the copy to run in
        shutil.rmtree(gh.dir)
        shutil.copytree(d, gh.dir)
        gh.config = self.cfg
        restart(gh)
        status, rid, _, _ = get(self.port, "/after-cut")
        self.assertEqual(status, 200)
        gh.stop()
        clean(gh.stderr()[gh.clean_from:])
        self.assertIn("TAMPERING OR LOSS: the stores end at record 7 but the head file", gh.stderr())
        recs = read_jsonl(os.path.join(gh.dir, "var", "decisions.jsonl"))
        self.assertEqual(recs[-1]["request_id"], rid)
        self.assertEqual(recs[-1]["seq"], 13)
        out = self.verify(gh.dir, 1)
        self.assertIn("FAIL sqlite: record 8 is missing (removed): the next row is record 13", out)

    def test_forged_anchor_without_retention_record(self):
        d = self.copy()
        lines = self.lines(d)
        h3 = json.loads(lines[2])["hash"]
        self.sql(d, "DELETE FROM decisions WHERE seq <= 3",
                 "INSERT OR REPLACE INTO decision_log_meta VALUES('anchor_seq', '3'), "
                 "('anchor_hash', '%s')" % h3)
        self.write_lines(d, lines[3:])
        out = self.verify(d, 1)
        self.assertIn("FAIL retention: records 1..3 are gone and the log starts after an anchor "
                      "(record 3) that no retention record states: truncation, not retention",
                      out)

    def set_retain(self, d, retain):
        cfg = json.loads(json.dumps(self.cfg))
        cfg["decision_log"]["retain"] = retain
        with open(os.path.join(d, "gatehouse.yaml"), "w") as f:
            f.write(harness.to_yaml(cfg))

    def test_real_retention_passes_and_a_younger_cut_fails(self):
        d = self.copy()
        time.sleep(1.1)
        self.set_retain(d, "1s")
        r = run("audit", "retain", "-c", os.path.join(d, "gatehouse.yaml"), check=0)
        self.assertIn("deleted 12 records", r.stdout)
        out = self.verify(d, 0)
        if not self.CKPT:
            self.assertIn("note: retention up to record 12 (audit retain, ", out)
            return
        self.assertIn("retention: records 1..12 removed by audit retain on ", out)
        db = sqlite3.connect(os.path.join(d, "var", "gatehouse.db"))
        rr = db.execute("SELECT upto_seq, key_id, length(sig) FROM decision_log_retention").fetchall()
        db.close()
        self.assertEqual(rr[0][0], 12)
        self.assertEqual(rr[0][2], 128)
        # The same cut under a 90-day retention period is not retention.
        self.set_retain(d, "90d")
        out = self.verify(d, 1)
        self.assertRegex(out, r"FAIL retention: the cut of \S+ removed record 12 from \S+, younger "
                              r"than the retention period \(retain: 90d\)")

    def test_forged_checkpoint_signature(self):
        self.need_ckpt()
        d = self.copy()
        self.sql(d, "UPDATE decision_log_checkpoints SET sig = replace(sig, substr(sig, 1, 2), "
                    "CASE WHEN substr(sig, 1, 2) = '00' THEN '11' ELSE '00' END) WHERE seq = 10")
        out = self.verify(d, 1)
        self.assertIn("FAIL checkpoints: the checkpoint of record 10 (sqlite) has a bad signature",
                      out)

    def rewrite_chain(self, d):
        """A full rewrite: record 3 edited, every hash after it recomputed in both stores,
        the head file rewritten, the checkpoints the attacker cannot forge removed."""
        lines = self.lines(d)
        prev = "0" * 64
        out = []
        db = sqlite3.connect(os.path.join(d, "var", "gatehouse.db"))
        for i, line in enumerate(lines):
            canon = line[:line.index(',"hash":"')]
            rec = json.loads(line)
            canon = canon.replace('"prev_hash":"%s"' % rec["prev_hash"], '"prev_hash":"%s"' % prev)
            if i == 2:
                canon = canon.replace('"path":"/r2"', '"path":"/nothing-to-see"')
            h = hashlib.sha256((prev + canon + "}").encode()).hexdigest()
            out.append(canon + ',"hash":"%s"}\n' % h)
            db.execute("UPDATE decisions SET prev_hash=?, hash=?, path=? WHERE seq=?",
                       (prev, h, json.loads(canon + "}")["path"], rec["seq"]))
            prev = h
        db.execute("DELETE FROM decision_log_checkpoints")
        db.commit()
        db.close()
        self.write_lines(d, out)
        with open(os.path.join(d, "var", "decision-log.head"), "w") as f:
            json.dump({"seq": len(out), "hash": prev}, f)
        os.unlink(os.path.join(d, "var", "checkpoints.log"))
        return prev

    def test_audit_head_and_verify_anchor_catch_a_full_rewrite(self):
        self.need_ckpt()
        d = self.copy()
        cfg = os.path.join(d, "gatehouse.yaml")
        head = run("audit", "head", "-c", cfg, check=0).stdout
        pinned = json.loads(head)
        self.assertEqual(pinned["seq"], 12)
        self.assertEqual(set(pinned), {"type", "seq", "hash", "time", "key_id", "sig"})
        pin = os.path.join(d, "pinned.json")
        with open(pin, "w") as f:
            f.write(head)
        self.assertIn("anchor: record 12 matches the pinned head",
                      self.verify(d, 0, "--anchor", pin))
        self.rewrite_chain(d)
        # The rewritten chain is self-consistent...
        out = self.verify(d, 1, "--anchor", pin)
        self.assertIn("FAIL anchor: record 12 does not match the pinned head: the chain was "
                      "rewritten", out)
        out = self.verify(d, 1, "--anchor", "12:" + pinned["hash"])
        self.assertIn("FAIL anchor: record 12 does not match the pinned head", out)
        # A pinned head beyond the end of the log.
        out = self.verify(d, 1, "--anchor", "20:" + pinned["hash"])
        self.assertIn("FAIL anchor: the log ends at record 12 but the pinned head is record 20", out)

    def test_unreadable_key_refuses_start(self):
        self.need_ckpt()
        self.assertNotEqual(self.start_code, 0)
        self.assertRegex(self.start_err, r"gatehouse.yaml:\d+:\d+: error: cannot read the decision "
                         r"log key %s" % os.path.join(self.gh.dir, "log-ed25519.pem"))



class TruncationHeadFileOnly(Truncation):
    """The same cuts without checkpoints configured: the head file alone catches them
    (and the configuration is one the base release reads too)."""
    CKPT = False


class CheckpointInterval(unittest.TestCase):
    def test_checkpoint_every_interval_while_idle(self):
        backend = Backend("app")
        self.addCleanup(backend.stop)
        port = free_port()
        gh = Gatehouse(ckpt_config(port, backend, checkpoint={
            "key": "log-ed25519.pem", "every": 1000, "interval": "1s",
            "file": "var/checkpoints.log", "command": "cat >> var/command.log"}), wait=False)
        self.addCleanup(gh.cleanup)
        gh.proc.wait(10)
        gh.stop()
        make_key(gh.dir)
        restart(gh)
        for i in range(3):
            self.assertEqual(get(port, "/t%d" % i)[0], 200)
        path = os.path.join(gh.dir, "var", "checkpoints.log")

        def shipped():
            try:
                with open(path) as f:
                    return [json.loads(line)["seq"] for line in f]
            except FileNotFoundError:
                return []
        # Far fewer than `every` records: the interval alone brings the checkpoint.
        self.assertTrue(wait_until(lambda: 3 in shipped(), timeout=15), shipped())
        self.assertTrue(wait_until(
            lambda: "\ngatehouse_decision_log_checkpoint_seq 3\n" in metrics(gh), timeout=15))
        command_log = os.path.join(gh.dir, "var", "command.log")

        def sent():
            try:
                with open(command_log) as f:
                    return [json.loads(line) for line in f if line.endswith("\n")]
            except FileNotFoundError:
                return []
        # The command runs as its own process, a moment after the file is written.
        self.assertTrue(wait_until(lambda: any(c["seq"] == 3 for c in sent()), timeout=15),
                        gh.stderr()[-2000:])
        gh.stop()
        clean(gh.stderr()[gh.clean_from:])
        sent = sent()
        with open(path) as f:
            self.assertEqual(sent, [json.loads(line) for line in f])

    def test_tail_without_recent_checkpoint_fails_until_restart(self):
        backend = Backend("app")
        self.addCleanup(backend.stop)
        port = free_port()
        gh = Gatehouse(ckpt_config(port, backend, checkpoint={
            # 3 s: the four requests below and the kill must come before the next
            # checkpoint, also on a loaded machine.
            "key": "log-ed25519.pem", "every": 1000, "interval": "3s"}), wait=False)
        self.addCleanup(gh.cleanup)
        gh.proc.wait(10)
        gh.stop()
        make_key(gh.dir)
        restart(gh)
        for i in range(3):
            self.assertEqual(get(port, "/a%d" % i)[0], 200)
        self.assertTrue(wait_until(
            lambda: "\ngatehouse_decision_log_checkpoint_seq 3\n" in metrics(gh), timeout=10))
        for i in range(4):
            self.assertEqual(get(port, "/b%d" % i)[0], 200)
        # Killed before the next checkpoint was due: records 4..7 are not covered.
        self.assertTrue(wait_until(lambda: len(rows(os.path.join(gh.dir, "var",
                                                                  "gatehouse.db"))) == 7,
                                   timeout=5))
        gh.proc.send_signal(signal.SIGKILL)
        gh.proc.wait()
        time.sleep(11.5)  # past twice the interval plus 5 s
        v = run("audit", "verify", "-c", gh.config_path, check=1)
        self.assertRegex(v.stdout, r"FAIL checkpoints: records 4..7 \(the first from \S+\) have "
                                   r"no signed checkpoint; the last one covers record 3 \(\S+\), "
                                   r"and one is due every 3s or 1000 records")
        # The next start signs the tail first.
        restart(gh)
        gh.stop()
        v = run("audit", "verify", "-c", gh.config_path, check=0)
        self.assertRegex(v.stdout, r"the newest covers record 7 ")


if __name__ == "__main__":
    unittest.main()
