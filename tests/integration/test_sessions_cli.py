"""`gatehouse sessions list|revoke` on a real database: listing (table and
JSON, filtered by user), revocation by user and by id prefix, the revocation
rows a running server polls, and usage errors. Python stdlib only."""
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest

BIN = os.environ.get("GATEHOUSE_BIN", "")


@unittest.skipUnless(BIN and os.path.exists(BIN), "needs GATEHOUSE_BIN")
class SessionsCli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="gh-sessions-")
        self.cfg = os.path.join(self.tmp, "gatehouse.yaml")
        with open(self.cfg, "w") as f:
            f.write("listen:\n  - address: 127.0.0.1:0\nstate: {sqlite: var/state.db}\n"
                    "routes: []\n")
        os.mkdir(os.path.join(self.tmp, "var"))
        self.db = os.path.join(self.tmp, "var", "state.db")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_cli(self, *args):
        return subprocess.run([BIN, "sessions", *args], capture_output=True, text=True, timeout=20)

    def add(self, id_hash, user, email):
        now = int(time.time() * 1000)
        with sqlite3.connect(self.db) as c:
            c.execute("INSERT INTO sessions (id_hash, user_key, email, name, groups, claims, idp,"
                      " sid, created_ms, last_seen_ms, expires_ms) VALUES"
                      " (?, ?, ?, 'N', '[\"eng\"]', '{}', 'corp', NULL, ?, ?, ?)",
                      (id_hash, user, email, now, now, now + 3600_000))

    def test_list_and_revoke(self):
        out = self.run_cli("list", "-c", self.cfg)  # creates the tables
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.startswith("ID "))
        self.add("a" * 64, "https://idp#alice", "alice@example.com")
        self.add("b" * 64, "https://idp#bob", "bob@example.com")
        self.add("bc" + "0" * 62, "https://idp#bob", "bob@example.com")
        out = self.run_cli("list", "-c", self.cfg)
        self.assertIn("aaaaaaaaaaaaaaaa  alice@example.com", out.stdout)
        self.assertNotIn("a" * 17, out.stdout)  # only the 16-char public id is shown
        rows = [json.loads(l) for l in self.run_cli("list", "-c", self.cfg, "--json",
                                                     "--user", "bob@example.com").stdout.splitlines()]
        self.assertEqual(len(rows), 2)
        self.assertEqual(rows[0]["groups"], ["eng"])
        self.assertEqual(rows[0]["user"], "corp:bob")  # the user id, qualified by provider
        self.assertEqual(rows[0]["user_key"], "https://idp#bob")

        out = self.run_cli("revoke", "-c", self.cfg, "--user", "https://idp#bob")
        self.assertEqual(out.stdout.strip(), "revoked 2 session(s)")
        out = self.run_cli("revoke", "-c", self.cfg, "--id", "aaaaaaaa")
        self.assertEqual(out.stdout.strip(), "revoked 1 session(s)")
        with sqlite3.connect(self.db) as c:
            self.assertEqual(c.execute("SELECT count(*) FROM sessions").fetchone()[0], 0)
            kinds = [r[0] for r in c.execute("SELECT kind FROM session_revocations ORDER BY seq")]
        self.assertEqual(kinds, ["id", "id", "user", "id"])

    def test_errors(self):
        self.assertEqual(self.run_cli("list").returncode, 2)
        self.assertEqual(self.run_cli("bogus", "-c", self.cfg).returncode, 2)
        out = self.run_cli("revoke", "-c", self.cfg)
        self.assertEqual(out.returncode, 1)
        self.assertIn("give exactly one of --user or --id", out.stderr)
        self.assertEqual(self.run_cli("list", "-c", self.cfg).returncode, 0)  # creates tables
        self.add("c" * 64, "u1", "x@example.com")
        self.add("c" * 8 + "d" * 56, "u2", "y@example.com")
        out = self.run_cli("revoke", "-c", self.cfg, "--id", "cccccccc")
        self.assertEqual(out.returncode, 1)
        self.assertIn("is ambiguous (2 sessions)", out.stderr)
        out = self.run_cli("revoke", "-c", self.cfg, "--id", "XYZ")
        self.assertIn("8 to 64 lower-case hex", out.stderr)
        with open(self.cfg, "w") as f:
            f.write("listen: []\n")
        out = self.run_cli("list", "-c", self.cfg)
        self.assertEqual(out.returncode, 1)
        self.assertIn("no \"state: {sqlite: ...}\" configured", out.stderr)

    def test_revoke_unknown_id_fails(self):
        self.assertEqual(self.run_cli("list", "-c", self.cfg).returncode, 0)  # creates tables
        self.add("a" * 64, "u1", "x@example.com")
        out = self.run_cli("revoke", "-c", self.cfg, "--id", "deadbeef")
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn("no such session", out.stderr)
        self.assertNotIn("revoked", out.stdout)
        with sqlite3.connect(self.db) as c:
            self.assertEqual(c.execute("SELECT count(*) FROM sessions").fetchone()[0], 1)
            self.assertEqual(
                c.execute("SELECT count(*) FROM session_revocations").fetchone()[0], 0)


if __name__ == "__main__":
    unittest.main()
