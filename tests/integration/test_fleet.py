"""A fleet: two Gatehouse instances sharing sessions in a real PostgreSQL 15
(started here in a temporary directory, loopback only, see pgserver.py).
Sign in on A and the cookie works on B; `sessions revoke` through B's config
refuses on A within a second, also on an open keep-alive connection, and
also when A missed the NOTIFY (replay after a reconnect); PostgreSQL killed
(`pg_ctl -m immediate`): /readyz 503, no crash, cached sessions served only
within state.staleness, unknown cookies and new sign-ins get a 503 page, never
an unchecked allow; PostgreSQL back: healed without a restart."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sqlite3
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

from harness import (Backend, CertFactory, Gatehouse, RawConn, Reader, basic_config, free_port,
                     gatehouse_bin, request)
from oidc import CLIENT_SECRET, Browser, IdP, client_for, idp_conf, wait_for
from rogue_op import RogueOP
from saml import SamlIdP, idp_form, saml_conf, sp_files, to_idp
import pgserver

STALENESS_S = 3


def cli(*args):
    return subprocess.run([gatehouse_bin(), *args], capture_output=True, text=True, timeout=30)


def assert_fleet_verifies(test, config):
    """`audit verify` from one node's configuration passes, both nodes' chains checked."""
    r = cli("audit", "verify", "-c", config)
    test.assertEqual(r.returncode, 0, r.stdout + r.stderr)
    test.assertIn("ok fleet node-a:", r.stdout)
    test.assertIn("ok fleet node-b:", r.stdout)


def readyz(gh):
    try:
        return request(gh.admin_port, path="/readyz", timeout=3).status
    except OSError:
        return None


class FleetServices(unittest.TestCase):
    """What a fleet test class starts and stops: its nodes (each must exit
    cleanly), identity provider, backend, PostgreSQL and temporary folder."""
    nodes = []
    idp = op = backend = pg = None
    tmp = shared = None

    @classmethod
    def tearDownClass(cls):
        failures = []
        for n in cls.nodes:
            try:
                n.finish()  # a clean exit (0) with no sanitizer report
            except AssertionError as e:
                failures.append(str(e))
        cls.nodes = []
        cls._stop_services()
        if failures:
            raise AssertionError("\n".join(failures))

    @classmethod
    def _stop_services(cls):
        for n in cls.nodes:
            n.cleanup()
        for service in (cls.idp, cls.op, cls.backend):
            if service:
                service.stop()
        if cls.pg:
            cls.pg.stop()
        for d in (cls.tmp, cls.shared):
            if d:
                shutil.rmtree(d, ignore_errors=True)

    @classmethod
    def begin_pair(cls, prefix):
        """Before start_pair: a backend, a folder, two ports; then PostgreSQL."""
        cls.nodes = []
        cls.backend = Backend("app")
        cls.tmp = tempfile.mkdtemp(prefix=prefix)
        cls.base = f"http://127.0.0.1:{free_port()}"
        cls.port_b = free_port()
        cls.base_b = f"http://127.0.0.1:{cls.port_b}"
        cls.pg = pgserver.PgServer()

    @classmethod
    def start_pair(cls, tag, idps, session, files):
        """Two nodes on one PostgreSQL that answer for one public URL, as two
        nodes behind one balancer address: A at cls.base, B at cls.port_b with
        A's URL as its public_url."""
        a = urllib.parse.urlsplit(cls.base).netloc
        for i, listen in enumerate([{"address": a},
                                    {"address": f"127.0.0.1:{cls.port_b}",
                                     "public_url": cls.base}]):
            cfg = basic_config(
                [{"name": "app", "upstream": {"servers": [cls.backend.url]}}],
                listen=[listen],
                state={"postgres": cls.pg.uri(application_name=f"gh-{tag}{i}"),
                       "password_file": cls.pg.pwfile, "node": f"{tag}-{'ab'[i]}",
                       "sqlite": "var/gatehouse.db"},
                decision_log={"file": "var/decisions.jsonl"},
                identity_providers=idps,
                session=session,
            )
            cls.nodes.append(Gatehouse(cfg, files=files))


@unittest.skipUnless(pgserver.available(), "needs PostgreSQL 15 (postgresql-15)")
class FleetTest(FleetServices):
    @classmethod
    def setUpClass(cls):
        cls.pg = None
        cls.nodes = []
        cls.idp = None
        cls.backend = Backend("app")
        cls.shared = tempfile.mkdtemp(prefix="gh-fleet-")
        try:
            cls.pg = pgserver.PgServer()
            ports = [free_port(), free_port()]
            cls.bases = [f"http://127.0.0.1:{p}" for p in ports]
            # B also answers for A's public URL, as two nodes behind one
            # balancer address do: a sign-in may start on A and end on B.
            cls.b_as_a = free_port()
            client = client_for(cls.bases[0])
            client["redirect_uris"] += client_for(cls.bases[1])["redirect_uris"]
            cls.idp = IdP([client])
            # The decision log's checkpoint key, shared by the fleet.
            cls.log_key = os.path.join(cls.shared, "log-ed25519.pem")
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", cls.log_key],
                           check=True, capture_output=True)
            for i, port in enumerate(ports):
                cls.nodes.append(Gatehouse(cls.config(i, port), files=cls.files()))
        except Exception:
            cls._stop_services()
            raise

    @classmethod
    def files(cls):
        return {"oidc-secret": CLIENT_SECRET,
                "pol.yaml": "rules:\n  - id: alice-only\n    effect: allow\n"
                            "    when: {user: alice}\n"}

    @classmethod
    def config(cls, i, port):
        state = {"postgres": cls.pg.uri(application_name=f"gh-node{i}"),
                 "password_file": cls.pg.pwfile, "staleness": f"{STALENESS_S}s",
                 "node": f"node-{'ab'[i]}",
                 "sqlite": "var/gatehouse.db"}  # what stays per node: the decision log
        listen = [{"address": f"127.0.0.1:{port}"}]
        if i == 1:
            listen.append({"address": f"127.0.0.1:{cls.b_as_a}", "public_url": cls.bases[0]})
        return basic_config(
            [{"name": "pol", "match": {"path_prefix": "/pol/"}, "policy": "pol.yaml",
              "upstream": {"servers": [cls.backend.url]}},
             {"name": "app", "upstream": {"servers": [cls.backend.url]}}],
            listen=listen,
            state=state,
            decision_log={"file": "var/decisions.jsonl",
                          "checkpoint": {"key": cls.log_key, "every": 2}},
            identity_providers=[idp_conf(cls.idp)],
            # Keys that must match on every node.
            session={"key_file": os.path.join(cls.shared, "session.key")},
            upstream_identity={"assertion": {"key": os.path.join(cls.shared, "assertion.pem")}},
        )


    def setUp(self):
        for n in self.nodes:
            self.assertIsNone(n.proc.poll(), n.stderr())
        if readyz(self.nodes[0]) != 200:  # a test that stopped the database
            try:
                self.pg.start()
            except RuntimeError:
                pass
            for n in self.nodes:
                wait_for(lambda: readyz(n) == 200, 15)

    def sign_in(self, node=0, user="alice"):
        b = Browser()
        r = b.login(self.bases[node], "/", user=user)
        self.assertEqual(r.status, 200, r)
        cookie = b.session_cookie(self.bases[node])
        self.assertTrue(cookie)
        return cookie

    def get(self, node, cookie, path="/", accept="text/html"):
        hdrs = [("Accept", accept)]
        if cookie:
            hdrs.append(("Cookie", f"gatehouse_session={cookie}"))
        return request(self.nodes[node].port, path=path, headers=hdrs)

    def test_schema_check_and_migrate(self):
        for n in self.nodes:
            r = cli("check", "-c", n.config_path)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = cli("db", "migrate", "-c", self.nodes[1].config_path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("up to date (version 6)", r.stdout)
        self.assertEqual(self.pg.sql("SELECT max(version) FROM gatehouse_schema"), "6")

    def test_check_refuses_bad_postgres_settings(self):
        d = tempfile.mkdtemp(prefix="gh-fleet-check-")
        route = ("routes:\n  - {name: a, public: true, upstream: {servers: "
                 "[\"http://127.0.0.1:9\"]}}\n")
        try:
            cfg = os.path.join(d, "g.yaml")
            for setting, error in (("staleness: 1 fortnight",
                                    "5:14: error: \"staleness\" must be a duration"),
                                   ("query_timeout: 10ms", "5:18: error: \"query_timeout\"")):
                with open(cfg, "w") as f:
                    f.write("listen:\n  - address: 127.0.0.1:18080\n"
                            f"state:\n  postgres: \"postgresql://h/db\"\n  {setting}\n" + route)
                r = cli("check", "-c", cfg)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("g.yaml:" + error, r.stderr)
            with open(cfg, "w") as f:
                f.write("listen:\n  - address: 127.0.0.1:18080\n"
                        "state:\n  postgres: \"postgresql://h/db?nosuchparam=1\"\n"
                        "  password_file: missing-pw\n" + route)
            r = cli("check", "-c", cfg)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("g.yaml:4:13: error: \"postgres\" is not a libpq connection string",
                          r.stderr)
            self.assertIn("g.yaml:5:18: error: password_file:", r.stderr)
            self.assertIn("session.key_file", r.stderr)  # no state.sqlite: keys are explicit
            # --dump shows the effective settings, never a password.
            with open(cfg, "w") as f:
                f.write("listen:\n  - address: 127.0.0.1:18080\n"
                        "state:\n  postgres: \"postgresql://gatehouse:s3cret-pw@db.test/gh\"\n"
                        "  migrate: false\nsession: {key_file: s.key}\n" + route)
            r = cli("check", "-c", cfg, "--dump")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertNotIn("s3cret-pw", r.stdout + r.stderr)
            self.assertIn("postgresql://gatehouse:****@db.test/gh", r.stdout)
            self.assertIn("staleness: 10000ms", r.stdout)
            self.assertIn("query_timeout: 2000ms", r.stdout)
            self.assertIn("migrate: false", r.stdout)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_cookie_from_a_works_on_b_and_revoke_through_b_refuses_on_a(self):
        cookie = self.sign_in(0, "alice")
        # Node B learns of the session through the change feed (NOTIFY).
        self.assertTrue(wait_for(lambda: self.get(1, cookie).status == 200, 10),
                        self.nodes[1].stderr())
        before = len(self.backend.requests)
        self.assertEqual(self.get(1, cookie, "/on-b").status, 200)
        self.assertGreater(len(self.backend.requests), before)
        # An open keep-alive connection to A with the cookie.
        hdrs = [("Accept", "text/html"), ("Cookie", f"gatehouse_session={cookie}")]
        with RawConn(self.nodes[0].port) as c:
            self.assertEqual(c.request("GET", "/ka", "app.test", hdrs).status, 200)
            r = cli("sessions", "revoke", "-c", self.nodes[1].config_path, "--user", "alice")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("revoked 1 session(s)", r.stdout)
            # Within a second on an idle machine (NOTIFY); the bound here is below
            # state.staleness (3 s), so that nothing but the change feed can pass it.
            t0 = time.time()
            hits = self.backend.hits("/ka-after")  # a count
            while True:
                resp = c.request("GET", "/ka-after", "app.test", hdrs)
                if resp.status != 200:
                    break
                self.assertLess(time.time() - t0, 2.0, "revocation not applied within 2 s")
                time.sleep(0.02)
            self.assertLess(time.time() - t0, 2.0)
            self.assertIn(resp.status, (302, 401), resp)
        self.assertTrue(wait_for(lambda: self.get(1, cookie).status != 200, 2.0))
        self.assertNotEqual(self.get(0, cookie).status, 200)
        # The session row is gone and the revocation is in the change feed.
        self.assertEqual(self.pg.sql("SELECT count(*) FROM session_changes WHERE kind = 'user' "
                                     "AND value LIKE '%#alice'"), "1")
        self.assertGreaterEqual(self.backend.hits("/ka-after"), hits)

    def test_sign_in_started_on_a_ends_on_b(self):
        """The login state is sealed with a key derived from the shared session
        key: the IdP's answer may reach another node than the one that sent
        the user there."""
        b = Browser()
        url = self.bases[0] + "/started-on-a"
        r = b.request(url)
        while r.status in (302, 303):
            url = urllib.parse.urljoin(url, r.header("Location"))
            if not url.startswith(self.bases[0]):
                break
            r = b.request(url)
        auth_url = url
        self.assertTrue(auth_url.startswith(self.idp.issuer), auth_url)
        callback = b.to_callback(auth_url, self.bases[0], user="alice")
        on_b = callback.replace(self.bases[0], f"http://127.0.0.1:{self.b_as_a}", 1)
        netloc_a = urllib.parse.urlsplit(self.bases[0]).netloc
        b.jar(f"127.0.0.1:{self.b_as_a}").update(b.jar(netloc_a))
        r = b.request(on_b)
        self.assertEqual(r.status, 302, (r, self.nodes[1].stderr()[-2000:]))
        self.assertEqual(r.header("Location"), "/started-on-a")
        cookie = b.jar(f"127.0.0.1:{self.b_as_a}").get("gatehouse_session")
        self.assertTrue(cookie)
        self.assertEqual(self.get(1, cookie).status, 200)
        self.assertTrue(wait_for(lambda: self.get(0, cookie).status == 200, 10))

    def test_sign_out_on_b_ends_the_session_on_a(self):
        b = Browser()
        self.assertEqual(b.login(self.bases[0], "/", user="carol").status, 200)
        cookie = b.session_cookie(self.bases[0])
        self.assertTrue(wait_for(lambda: self.get(1, cookie).status == 200, 10))
        # The same browser signs out through B (cookies go to every port of a host).
        b.jar(urllib.parse.urlsplit(self.bases[1]).netloc)["gatehouse_session"] = cookie
        r = b.request(self.bases[1] + "/.gatehouse/logout")
        self.assertEqual(r.status, 200, r)
        token = re.search(rb'name="csrf_token" value="([^"]+)"', r.body).group(1).decode()
        r = b.request(self.bases[1] + "/.gatehouse/logout", "POST", {"csrf_token": token},
                      headers={"Sec-Fetch-Site": "same-origin", "Origin": self.bases[1]})
        self.assertEqual(r.status, 303, r)
        self.assertNotEqual(self.get(1, cookie).status, 200)
        # B writes the deletion within its 500 ms cycle; A applies it at once.
        self.assertTrue(wait_for(lambda: self.get(0, cookie).status in (302, 401), 2.5),
                        self.nodes[0].stderr()[-2000:])

    def test_restarted_node_loads_the_fleet_sessions(self):
        cookie = self.sign_in(0, "bob")
        b = self.nodes[1]
        self.assertEqual(b.stop(), 0, b.stderr()[-2000:])
        b._stderr = open(b.stderr_path, "ab")
        b.proc = subprocess.Popen([gatehouse_bin(), "serve", "-c", b.config_path],
                                  stdout=b._stderr, stderr=b._stderr, cwd=b.dir)
        b.wait_ready()
        self.assertEqual(self.get(1, cookie).status, 200)
        self.assertIn("loaded", b.stderr())

    def test_migrate_false_refuses_an_old_schema_until_db_migrate(self):
        self.pg.sql("DROP DATABASE IF EXISTS fresh")
        self.pg.sql("CREATE DATABASE fresh")
        cfg = self.config(1, free_port())
        cfg["listen"] = cfg["listen"][:1]
        # PostgreSQL only: no local database (so no decision log either).
        del cfg["state"]["sqlite"]
        del cfg["decision_log"]
        cfg["state"]["postgres"] = self.pg.uri("fresh")
        cfg["state"]["migrate"] = False
        gh = Gatehouse(cfg, files=self.files(), wait=False)
        try:
            self.assertEqual(gh.proc.wait(20), 1)
            self.assertIn('run "gatehouse db migrate"', gh.stderr())
            r = cli("db", "migrate", "-c", gh.config_path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("migrated the schema from version 0 to 6", r.stdout)
            r = cli("db", "migrate", "-c", gh.config_path)
            self.assertIn("up to date (version 6)", r.stdout)
        finally:
            gh.cleanup()
        gh = Gatehouse(cfg, files=self.files())
        try:
            self.assertEqual(readyz(gh), 200)
        finally:
            gh.finish()

    def local_max_seq(self, node):
        db = os.path.join(self.nodes[node].dir, "var", "gatehouse.db")
        with sqlite3.connect(db) as c:
            return c.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0]

    def shipped_max_seq(self, node):
        return int(self.pg.sql("SELECT coalesce(max(seq), 0) FROM decision_records "
                               f"WHERE node = 'node-{'ab'[node]}'"))

    def test_decisions_from_both_nodes_queried_and_verified_from_either(self):
        cookie = self.sign_in(0, "alice")
        self.assertTrue(wait_for(lambda: self.get(1, cookie).status == 200, 10))
        tag = os.urandom(4).hex()
        self.assertEqual(self.get(0, cookie, f"/dl-a-{tag}").status, 200)
        self.assertEqual(self.get(1, cookie, f"/dl-b-{tag}").status, 200)
        for cfg in (self.nodes[0].config_path, self.nodes[1].config_path):
            def both():
                r = cli("audit", "query", "-c", cfg, "--json")
                return r.returncode == 0 and f"/dl-a-{tag}" in r.stdout and \
                    f"/dl-b-{tag}" in r.stdout
            self.assertTrue(wait_for(both, 15), cli("audit", "query", "-c", cfg).stdout[-2000:])
        for n in (0, 1):
            self.assertTrue(wait_for(lambda: self.shipped_max_seq(n) == self.local_max_seq(n),
                                     5))
            assert_fleet_verifies(self, self.nodes[n].config_path)
        # A record edited in PostgreSQL is caught, from either node.
        where = f"node = 'node-b' AND line LIKE '%/dl-b-{tag}%'"
        seq = self.pg.sql(f"SELECT seq FROM decision_records WHERE {where}")
        self.pg.sql(f"UPDATE decision_records SET line = replace(line, '\"allow\"', "
                    f"'\"deny\"') WHERE {where}")
        try:
            for n in (0, 1):
                r = cli("audit", "verify", "-c", self.nodes[n].config_path)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn(f"FAIL fleet node-b: record {seq} was edited", r.stdout)
                self.assertIn("ok fleet node-a:", r.stdout)
        finally:
            self.pg.sql(f"UPDATE decision_records SET line = replace(line, '\"deny\"', "
                        f"'\"allow\"') WHERE node = 'node-b' AND seq = {seq}")
        r = cli("audit", "verify", "-c", self.nodes[0].config_path)
        self.assertEqual(r.returncode, 0, r.stdout)
        # A node's chain rewritten consistently in PostgreSQL (its last record
        # edited and its hash redone) still differs from what that node wrote.
        last = self.pg.sql("SELECT max(seq) FROM decision_records WHERE node = 'node-a'")
        old = self.pg.sql(f"SELECT line FROM decision_records WHERE node = 'node-a' "
                          f"AND seq = {last}")
        head, _, _ = old.rpartition(',"hash":"')
        body = head.replace('"method":"GET"', '"method":"PUT"')
        self.assertNotEqual(body, head)
        h = hashlib.sha256((json.loads(old)["prev_hash"] + body + "}").encode()).hexdigest()
        forged = body + ',"hash":"' + h + '"}'
        self.pg.sql("UPDATE decision_records SET line = $$" + forged + "$$ "
                    f"WHERE node = 'node-a' AND seq = {last}")
        try:
            r = cli("audit", "verify", "-c", self.nodes[1].config_path)
            self.assertIn("ok fleet node-a:", r.stdout)  # B cannot tell: the chain holds
            r = cli("audit", "verify", "-c", self.nodes[0].config_path)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn(f"FAIL fleet node-a: record {last} in PostgreSQL is not the one this "
                          "node wrote", r.stdout)
        finally:
            self.pg.sql("UPDATE decision_records SET line = $$" + old + "$$ "
                        f"WHERE node = 'node-a' AND seq = {last}")
        # Every record names the node that chained it inside its hashed bytes: node
        # A's whole chain filed under another node's name is caught, though every
        # hash and link still holds.
        self.assertEqual(json.loads(old)["node"], "node-a")
        self.pg.sql("UPDATE decision_records SET node = 'node-c' WHERE node = 'node-a'")
        try:
            r = cli("audit", "verify", "-c", self.nodes[1].config_path)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("FAIL fleet node-c: record 1 was chained by node node-a (moved)",
                          r.stdout)
        finally:
            self.pg.sql("UPDATE decision_records SET node = 'node-a' WHERE node = 'node-c'")

    def test_checkpoints_shipped_heads_and_rewritten_chain_caught_from_any_node(self):
        """Each node's signed checkpoints reach PostgreSQL: `audit head` lists
        every node's head and last checkpoint, and `audit verify` on one node
        catches another node's chain rewritten consistently in PostgreSQL (it
        no longer matches that node's checkpoints)."""
        cookie = self.sign_in(0, "carol")
        self.assertTrue(wait_for(lambda: self.get(1, cookie).status == 200, 10))
        for i in range(4):
            self.assertEqual(self.get(0, cookie, f"/ck-a-{i}").status, 200)
            self.assertEqual(self.get(1, cookie, f"/ck-b-{i}").status, 200)
        ck = "SELECT coalesce(max(seq), 0) FROM decision_checkpoints WHERE node = "
        self.assertTrue(wait_for(lambda: int(self.pg.sql(ck + "'node-a'")) > 0 and
                                 int(self.pg.sql(ck + "'node-b'")) > 0, 5))
        for n in (0, 1):
            self.assertTrue(wait_for(lambda: self.shipped_max_seq(n) == self.local_max_seq(n),
                                     5))
        r = cli("audit", "head", "-c", self.nodes[0].config_path)
        self.assertEqual(r.returncode, 0, r.stderr)
        heads = {h["node"]: h for h in map(json.loads, r.stdout.splitlines()[1:])
                 if h.get("type") == "fleet-head"}
        self.assertEqual(sorted(heads), ["node-a", "node-b"])
        self.assertEqual(heads["node-b"]["seq"], self.shipped_max_seq(1))
        self.assertEqual(heads["node-b"]["checkpoint"]["type"], "checkpoint")
        r = cli("audit", "verify", "-c", self.nodes[0].config_path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"ok fleet node-b: \d+ checkpoint\(s\) match the chain, "
                                   r"[1-9]\d* signature\(s\) checked")
        # node-b's chain rewritten in PostgreSQL from a checkpointed record on,
        # every hash redone so that the chain itself still holds.
        k = int(self.pg.sql("SELECT max(seq) FROM decision_checkpoints WHERE node = 'node-b'"))
        rows = self.pg.sql(f"SELECT seq || ' ' || line FROM decision_records WHERE "
                           f"node = 'node-b' AND seq >= {k} ORDER BY seq").splitlines()
        old = [tuple(x.split(" ", 1)) for x in rows]
        prev_old = prev_new = None
        for seq, line in old:
            body, _, _ = line.rpartition(',"hash":"')
            if prev_old is None:
                new_body = body.replace('"method":"GET"', '"method":"PUT"')
                self.assertNotEqual(new_body, body)
                prev = json.loads(line)["prev_hash"]
            else:
                new_body = body.replace(f'"prev_hash":"{prev_old}"', f'"prev_hash":"{prev_new}"')
                prev = prev_new
            h = hashlib.sha256((prev + new_body + "}").encode()).hexdigest()
            prev_old, prev_new = json.loads(line)["hash"], h
            self.pg.sql("UPDATE decision_records SET line = $$" + new_body + ',"hash":"' + h +
                        '"}$$ ' + f"WHERE node = 'node-b' AND seq = {seq}")
        try:
            r = cli("audit", "verify", "-c", self.nodes[0].config_path)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("ok fleet node-b:", r.stdout)  # the chain itself holds
            self.assertIn(f"FAIL fleet node-b: record {k} is not the one checkpoint {k} signed",
                          r.stdout)
        finally:
            for seq, line in old:
                self.pg.sql("UPDATE decision_records SET line = $$" + line + "$$ "
                            f"WHERE node = 'node-b' AND seq = {seq}")
        r = cli("audit", "verify", "-c", self.nodes[0].config_path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_policy_diff_replays_every_nodes_decisions(self):
        cookie = self.sign_in(1, "alice")
        r = self.get(1, cookie, "/pol/report")
        self.assertEqual(r.status, 200, r)
        rid = r.header("X-Request-Id")
        self.assertTrue(wait_for(lambda: self.shipped_max_seq(1) >= self.local_max_seq(1), 15))
        new = tempfile.mkdtemp(prefix="gh-fleet-pol-")
        try:
            with open(os.path.join(new, "pol.yaml"), "w") as f:
                f.write("rules:\n  - id: nobody\n    effect: allow\n    when: {user: nobody}\n")
            # Through A's config: the decision was made on B.
            d = cli("policy", "diff", "-c", self.nodes[0].config_path, "--new", new,
                    "--since", "1h")
            self.assertEqual(d.returncode, 0, d.stdout + d.stderr)
            self.assertRegex(d.stdout, r"LOSES  route pol +alice ")
        finally:
            shutil.rmtree(new, ignore_errors=True)
        r = cli("audit", "query", "-c", self.nodes[0].config_path, "--json", "--route", "pol")
        self.assertIn(rid, r.stdout)

    def test_missed_notify_is_replayed_after_reconnect(self):
        cookie = self.sign_in(1, "bob")
        self.assertTrue(wait_for(lambda: self.get(0, cookie).status == 200, 10))
        a = self.nodes[0]
        a.signal(signal.SIGSTOP)
        try:
            # A's connections are cut while it cannot read: the NOTIFY is lost for A.
            self.pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'gh-node0'")
            r = cli("sessions", "revoke", "-c", self.nodes[1].config_path, "--user", "bob")
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            a.signal(signal.SIGCONT)
        t0 = time.time()
        # A notices the cut connection, reconnects and replays the change
        # feed past the last sequence it saw: refused within a second on an idle
        # machine; the bound is below state.staleness (3 s).
        self.assertTrue(wait_for(lambda: self.get(0, cookie).status in (302, 401), 2.0),
                        a.stderr())
        self.assertLess(time.time() - t0, 2.0)
        for _ in range(10):
            self.assertIn(self.get(0, cookie).status, (302, 401))
            time.sleep(0.05)
        self.assertIn("replayed", a.stderr())

    def test_changes_purged_while_away_rebuild_the_cache(self):
        """Longer away than the change table keeps its rows (a day): the node
        notices the gap in the sequence and rebuilds its cache from the
        sessions table, so a revocation it never saw still holds."""
        cookie = self.sign_in(1, "bob")
        self.assertTrue(wait_for(lambda: self.get(0, cookie).status == 200, 10))
        a = self.nodes[0]
        a.signal(signal.SIGSTOP)
        try:
            self.pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'gh-node0'")
            r = cli("sessions", "revoke", "-c", self.nodes[1].config_path, "--user", "bob")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.pg.sql("DELETE FROM session_changes")  # as the daily purge would
        finally:
            a.signal(signal.SIGCONT)
        self.assertTrue(wait_for(lambda: self.get(0, cookie).status in (302, 401), 2.0),
                        a.stderr()[-2000:])
        self.assertIn("were purged before this node saw them", a.stderr())
        self.assertIn("session cache rebuilt from PostgreSQL", a.stderr())
        # Other sessions survive the rebuild.
        c2 = self.sign_in(0, "carol")
        self.assertEqual(self.get(0, c2).status, 200)

    def test_database_outage(self):
        cookie = self.sign_in(0, "carol")
        self.assertTrue(wait_for(lambda: self.get(1, cookie).status == 200, 10))
        stranger = "A" * 43  # a well-formed cookie no node knows
        self.pg.kill()
        t_kill = time.time()
        # Both nodes drain: readiness 503 within a few seconds; no crash.
        for n in self.nodes:
            self.assertTrue(wait_for(lambda: readyz(n) == 503, 6), n.stderr())
        if time.time() - t_kill < STALENESS_S - 0.5:
            # Within the staleness bound a cached session is still served.
            self.assertEqual(self.get(0, cookie).status, 200)
        spooled_from = self.local_max_seq(0)
        before = len(self.backend.requests)
        r = self.get(0, stranger)
        self.assertEqual(r.status, 503, r)
        self.assertIn(b"try again", r.body.lower())
        # Past the bound: a clear 503, never an allow without a checked identity.
        time.sleep(max(0, STALENESS_S + 0.5 - (time.time() - t_kill)))
        for node in (0, 1):
            r = self.get(node, cookie)
            self.assertEqual(r.status, 503, r)
            self.assertIn(b"try again", r.body.lower())
        r = self.get(0, cookie, accept="application/json")
        self.assertEqual(r.status, 503)
        self.assertEqual(len(self.backend.requests), before)
        # A new sign-in gets a "try again" page.
        b = Browser()
        r = b.login(self.bases[1], "/", user="alice")
        self.assertEqual(r.status, 503, r)
        self.assertIn(b"try again", r.body.lower())
        self.assertIsNone(b.session_cookie(self.bases[1]))
        for n in self.nodes:
            self.assertIsNone(n.proc.poll(), n.stderr())
            self.assertIn("PostgreSQL", n.stderr())
        metrics = request(self.nodes[0].admin_port, path="/metrics").body.decode()
        self.assertIn("gatehouse_state_up 0", metrics)
        # Decisions made meanwhile are kept in the node's own database (written by
        # the decision log's writer a moment after each answer).
        self.assertTrue(wait_for(lambda: self.local_max_seq(0) > spooled_from, 15),
                        (self.local_max_seq(0), spooled_from))
        # The database returns: healed without a restart.
        self.pg.start()
        for n in self.nodes:
            self.assertTrue(wait_for(lambda: readyz(n) == 200, 10), n.stderr())
        self.assertEqual(self.get(0, cookie).status, 200)
        self.assertEqual(self.get(1, cookie).status, 200)
        self.assertIn("gatehouse_state_up 1",
                      request(self.nodes[0].admin_port, path="/metrics").body.decode())
        # Every record made during the outage reaches PostgreSQL: none lost.
        for n in (0, 1):
            self.assertTrue(wait_for(lambda: self.shipped_max_seq(n) >= self.local_max_seq(n),
                                     15), self.nodes[n].stderr()[-2000:])
        r = cli("audit", "verify", "-c", self.nodes[1].config_path)
        self.assertEqual(r.returncode, 0, r.stdout)
        # Sign-in works again, and revocation still reaches the other node.
        c2 = self.sign_in(1, "alice")
        self.assertTrue(wait_for(lambda: self.get(0, c2).status == 200, 10))
        r = cli("sessions", "revoke", "-c", self.nodes[0].config_path, "--user", "alice")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(wait_for(lambda: self.get(1, c2).status != 200, 2.0))
        self.assertTrue(wait_for(lambda: self.get(0, c2).status != 200, 2.0))


@unittest.skipUnless(pgserver.available(), "needs PostgreSQL 15 (postgresql-15)")
class DeferredLogFleetTest(FleetServices):
    """decision_log.index: deferred in a fleet: each node's records are shipped from its
    JSON-lines file (the log of record) as the very lines it holds; `audit query` and
    `audit verify` on either node see and check both chains; an edit in PostgreSQL is
    caught."""

    @classmethod
    def setUpClass(cls):
        cls.begin_pair("gh-fleet-deferred-")
        try:
            key = os.path.join(cls.tmp, "log-ed25519.pem")
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key],
                           check=True, capture_output=True)
            for i, port in enumerate([int(cls.base.rsplit(":", 1)[1]), cls.port_b]):
                cfg = basic_config(
                    [{"name": "pub", "public": True, "upstream": {"servers": [cls.backend.url]}}],
                    listen=[{"address": f"127.0.0.1:{port}"}],
                    state={"postgres": cls.pg.uri(application_name=f"gh-dfl{i}"),
                           "password_file": cls.pg.pwfile, "node": f"node-{'ab'[i]}",
                           "sqlite": "var/gatehouse.db"},
                    decision_log={"file": "var/decisions.jsonl", "index": "deferred",
                                  "checkpoint": {"key": key, "every": 2}})
                cls.nodes.append(Gatehouse(cfg))
        except Exception:
            cls._stop_services()
            raise

    def lines(self, node):
        with open(os.path.join(self.nodes[node].dir, "var", "decisions.jsonl")) as f:
            return [line.rstrip("\n") for line in f if line.endswith("\n")]

    def test_records_shipped_from_the_file_queried_and_verified_from_either(self):
        tag = os.urandom(4).hex()
        for node in (0, 1):
            for i in range(3):
                r = request(self.nodes[node].port, path=f"/dl-{'ab'[node]}-{tag}-{i}")
                self.assertEqual(r.status, 200)
        for node in (0, 1):
            name = f"node-{'ab'[node]}"
            def shipped():
                mine = self.lines(node)
                got = self.pg.sql(f"SELECT count(*) FROM decision_records WHERE node = '{name}'")
                return len(mine) >= 3 and int(got) == len(mine)
            self.assertTrue(wait_for(shipped, 10), self.nodes[node].stderr()[-2000:])
            # Shipped as the very lines of the file.
            last = self.lines(node)[-1]
            seq = json.loads(last)["seq"]
            self.assertEqual(self.pg.sql(f"SELECT line FROM decision_records WHERE node = "
                                         f"'{name}' AND seq = {seq}"), last)
        for n in self.nodes:
            r = cli("audit", "query", "-c", n.config_path, "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            for node in "ab":
                self.assertIn(f"/dl-{node}-{tag}-2", r.stdout)
            assert_fleet_verifies(self, n.config_path)
        where = f"node = 'node-b' AND line LIKE '%/dl-b-{tag}-1%'"
        seq = self.pg.sql(f"SELECT seq FROM decision_records WHERE {where}")
        self.pg.sql(f"UPDATE decision_records SET line = replace(line, '/dl-b-', '/dl-x-') "
                    f"WHERE {where}")
        try:
            r = cli("audit", "verify", "-c", self.nodes[0].config_path)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn(f"FAIL fleet node-b: record {seq} was edited", r.stdout)
        finally:
            self.pg.sql(f"UPDATE decision_records SET line = replace(line, '/dl-x-', '/dl-b-') "
                        f"WHERE node = 'node-b' AND seq = {seq}")


@unittest.skipUnless(pgserver.available(), "needs PostgreSQL 15 (postgresql-15)")
class SamlFleetTest(FleetServices):
    """One-time values are the fleet's: a SAML response accepted by node A is
    refused when replayed on node B (both answer for the same public URL, as
    two nodes behind one balancer address)."""

    @classmethod
    def setUpClass(cls):
        try:
            cls.begin_pair("gh-fleet-saml-")
            cls.idp = SamlIdP(cls.base + "/.gatehouse/saml/metadata")
            cls.start_pair("saml", [saml_conf(cls.base)],
                           {"key_file": os.path.join(cls.tmp, "session.key")},
                           sp_files(cls.idp, cls.tmp))
        except Exception:
            cls._stop_services()
            raise


    def test_saml_response_accepted_on_a_is_refused_on_b(self):
        b = Browser()
        sso = to_idp(b, self.base)
        login_cookie = dict(b.jar(urllib.parse.urlsplit(self.base).netloc))
        action, fields = idp_form(b, sso)
        self.assertEqual(action, self.base + "/.gatehouse/saml/acs")
        r = b.request(action, "POST", fields)
        self.assertEqual(r.status, 303, r)
        self.assertTrue(b.session_cookie(self.base))
        self.assertEqual(self.pg.sql("SELECT count(*) FROM once_values"), "1")
        # The captured POST, with its login cookie, replayed on node B.
        b_base = f"http://127.0.0.1:{self.port_b}"
        again = Browser()
        again.jar(urllib.parse.urlsplit(b_base).netloc).update(login_cookie)
        r = again.request(b_base + "/.gatehouse/saml/acs", "POST", fields)
        self.assertEqual(r.status, 403, r)
        self.assertIsNone(again.session_cookie(b_base))
        self.assertIn("assertion ID already used (replay)",
                      self.nodes[1].stderr().replace('\\"', '"'))
        # A response of its own, started on A, is accepted by B.
        b2 = Browser()
        sso = to_idp(b2, self.base)
        b2.jar(urllib.parse.urlsplit(b_base).netloc).update(
            b2.jar(urllib.parse.urlsplit(self.base).netloc))
        action, fields = idp_form(b2, sso)
        r = b2.request(b_base + "/.gatehouse/saml/acs", "POST", fields)
        self.assertEqual(r.status, 303, r)

    def test_saml_response_unchecked_while_the_database_is_down_is_refused(self):
        b = Browser()
        action, fields = idp_form(b, to_idp(b, self.base))
        self.pg.kill()
        try:
            r = b.request(action, "POST", fields)
            self.assertEqual(r.status, 503, r)
            self.assertIsNone(b.session_cookie(self.base))
            self.assertIn("assertion ID not checked", self.nodes[0].stderr())
        finally:
            self.pg.start()
            for n in self.nodes:
                wait_for(lambda: readyz(n) == 200, 15)

    def test_stalled_database_does_not_stall_the_worker(self):
        """PostgreSQL stalled (every server process SIGSTOPped: connections
        accepted, nothing answered): a SAML sign-in waits for its assertion-ID
        check off the event loop, while the same (only) worker keeps answering
        public and cached-session requests; after state.query_timeout the
        sign-in gets the 503 try-again page, never a session."""
        signed_in = Browser()
        action, fields = idp_form(signed_in, to_idp(signed_in, self.base))
        self.assertEqual(signed_in.request(action, "POST", fields).status, 303)
        self.assertEqual(signed_in.request(self.base + "/").status, 200)
        b = Browser()
        action, fields = idp_form(b, to_idp(b, self.base))
        result = {}

        def sign_in():
            t0 = time.monotonic()
            try:
                result["resp"] = b.request(action, "POST", fields)
            except Exception as e:  # noqa: BLE001 - reported below
                result["error"] = e
            result["elapsed"] = time.monotonic() - t0

        self.pg.pause()
        try:
            t = threading.Thread(target=sign_in)
            t.start()
            time.sleep(0.3)  # the sign-in is waiting on the database now
            served = []
            while t.is_alive() and len(served) < 40:
                t0 = time.monotonic()
                anon = Browser().request(self.base + "/.gatehouse/login?rd=%2F")
                cached = signed_in.request(self.base + "/")
                served.append((anon.status, cached.status, time.monotonic() - t0))
                time.sleep(0.05)
            t.join(15)
            self.assertFalse(t.is_alive(), "the sign-in never got an answer")
            self.assertNotIn("error", result)
            self.assertGreater(len(served), 3, served)
            for anon_status, cached_status, took in served:
                self.assertEqual((anon_status, cached_status), (302, 200), served)
                self.assertLess(took, 1.0, served)
            r = result["resp"]
            self.assertEqual(r.status, 503, r)
            self.assertIn(b"try again", r.body.lower())
            self.assertIsNone(b.session_cookie(self.base))
            # state.query_timeout (default 2 s), not a connect or TCP timeout
            self.assertGreater(result["elapsed"], 1.5, result)
            self.assertLess(result["elapsed"], 4.5, result)
            self.assertIn("assertion ID not checked", self.nodes[0].stderr())
        finally:
            self.pg.resume()
            for n in self.nodes:
                wait_for(lambda: readyz(n) == 200, 15)


@unittest.skipUnless(pgserver.available(), "needs PostgreSQL 15 (postgresql-15)")
class OidcOnceFleetTest(FleetServices):
    """The fleet's one-time values beyond SAML: a login state answered on node
    A is refused on node B (even by an OP that would redeem the code again),
    and a back-channel logout token's jti used on A is refused on B."""

    @classmethod
    def setUpClass(cls):
        try:
            cls.begin_pair("gh-fleet-oidc-")
            cls.op = RogueOP(client_secret=CLIENT_SECRET)
            cls.op.reuse_codes = True
            cls.start_pair("oidc", [{"id": "op", "type": "oidc", "issuer": cls.op.issuer,
                                     "client_id": "gatehouse",
                                     "client_secret_file": "oidc-secret",
                                     "allow_insecure_issuer": True}],
                           {"key_file": os.path.join(cls.tmp, "session.key"), "refresh": True},
                           {"oidc-secret": CLIENT_SECRET})
        except Exception:
            cls._stop_services()
            raise


    def callback_url(self, b):
        """Starts sign-in on A; the OP's redirect back (code and state)."""
        r = b.request(self.base + "/.gatehouse/login?rd=%2F")
        self.assertEqual(r.status, 302, r)
        r = b.request(r.header("Location"))
        self.assertEqual(r.status, 302, r)
        return r.header("Location")

    def test_login_state_answered_on_a_is_refused_on_b(self):
        b = Browser()
        cb = self.callback_url(b)
        login_cookie = dict(b.jar(urllib.parse.urlsplit(self.base).netloc))
        r = b.request(cb)
        self.assertEqual(r.status, 302, r)
        self.assertTrue(b.session_cookie(self.base))
        tokens = len(self.op.token_requests)
        # The same callback, with the captured login cookie, replayed on B.
        again = Browser()
        again.jar(urllib.parse.urlsplit(self.base_b).netloc).update(login_cookie)
        u = urllib.parse.urlsplit(cb)
        r = again.request(self.base_b + u.path + "?" + u.query)
        self.assertEqual(r.status, 400, r)
        self.assertIsNone(again.session_cookie(self.base_b))
        self.assertEqual(len(self.op.token_requests), tokens)  # the code never left B
        self.assertIn("login state was already used (replayed callback)",
                      self.nodes[1].stderr())
        # A sign-in of its own started on A ends on B.
        b2 = Browser()
        cb = self.callback_url(b2)
        b2.jar(urllib.parse.urlsplit(self.base_b).netloc).update(
            b2.jar(urllib.parse.urlsplit(self.base).netloc))
        u = urllib.parse.urlsplit(cb)
        r = b2.request(self.base_b + u.path + "?" + u.query)
        self.assertEqual(r.status, 302, r)
        self.assertTrue(b2.session_cookie(self.base_b))

    def test_refresh_runs_once_across_the_fleet(self):
        """Tokens due for refresh on both nodes at once: one node redeems the
        (rotating) refresh token, the other keeps serving and gets the new
        tokens through the change feed; the session never ends."""
        self.op.refresh = True
        self.op.access_ttl = 62  # due 2 s after sign-in (refresh_before: 60 s)
        self.op.refresh_delay = 0.5  # both nodes see the tokens due meanwhile
        try:
            b = Browser()
            r = b.request(self.callback_url(b))
            self.assertEqual(r.status, 302, r)
            jar_a = b.jar(urllib.parse.urlsplit(self.base).netloc)
            b.jar(urllib.parse.urlsplit(self.base_b).netloc).update(jar_a)
            self.assertTrue(wait_for(lambda: b.request(self.base_b + "/").status == 200, 10))
            # B knows the provider's endpoints too (a sign-in started there).
            r = Browser().request(self.base_b + "/.gatehouse/login?rd=%2F",
                                  headers={"Host": urllib.parse.urlsplit(self.base).netloc})
            self.assertEqual(r.status, 302, r)
            self.assertIn(self.op.issuer + "/authorize?", r.header("Location"))
            time.sleep(2.2)
            before = self.op.refreshes()
            barrier = threading.Barrier(6)
            statuses = []

            def hit(base):
                c = Browser()
                c.jar(urllib.parse.urlsplit(base).netloc).update(jar_a)
                barrier.wait()
                statuses.append(c.request(base + "/").status)

            threads = [threading.Thread(target=hit, args=(base,))
                       for base in [self.base, self.base_b] * 3]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            self.assertEqual(statuses, [200] * 6)
            self.assertTrue(wait_for(lambda: self.op.refreshes() > before, 10))
            time.sleep(1.0)
            self.assertEqual(self.op.refreshes() - before, 1)
            for base in (self.base, self.base_b):
                self.assertEqual(b.request(base + "/").status, 200)
            logs = self.nodes[0].stderr() + self.nodes[1].stderr()
            self.assertNotIn("session ended", logs)
            self.assertIn("session refreshed at op (refresh token rotated)", logs)
        finally:
            self.op.refresh = False
            self.op.access_ttl = 300
            self.op.refresh_delay = 0.0

    def test_logout_token_used_on_a_is_refused_on_b(self):
        tok = self.op.logout_token(sub="nobody-signed-in")
        url = "/.gatehouse/oidc/backchannel-logout"
        r = Browser().request(self.base + url, "POST", {"logout_token": tok})
        self.assertEqual(r.status, 200, r)
        r = Browser().request(self.base_b + url, "POST", {"logout_token": tok})
        self.assertEqual(r.status, 400, r)
        self.assertIn("logout token was already used (jti replay)", self.nodes[1].stderr())
        r = Browser().request(self.base_b + url, "POST",
                              {"logout_token": self.op.logout_token(sub="nobody-signed-in")})
        self.assertEqual(r.status, 200, r)


@unittest.skipUnless(pgserver.available(), "needs PostgreSQL 15 (postgresql-15)")
class DeviceFleetTest(FleetServices):
    """The device registry is the fleet's: a device enrolled through node A's
    config is trusted on node B; revoked through B's, refused on A within a
    second, also on an open keep-alive connection."""

    @classmethod
    def setUpClass(cls):
        cls.pg = None
        cls.idp = None
        cls.nodes = []
        cls.backend = Backend("app")
        cls.tmp = tempfile.mkdtemp(prefix="gh-fleet-dev-")
        try:
            cls.pg = pgserver.PgServer()
            server = CertFactory(os.path.join(cls.tmp, "server"))
            crt, key = server.leaf("a.test", dns=["a.test"], ips=["127.0.0.1"])
            cls.server_ca = server.ca_crt
            dca = CertFactory(os.path.join(cls.tmp, "devices"), "Device CA")
            cls.laptop = dca.leaf("laptop", subject="/CN=laptop", file_name="laptop")
            cls.phone = dca.leaf("phone", subject="/CN=phone", file_name="phone")
            cls.ports = [free_port(), free_port()]
            cls.idp = IdP([client_for(f"https://127.0.0.1:{cls.ports[0]}")])
            for i, port in enumerate(cls.ports):
                cfg = basic_config(
                    [{"name": "dev", "policy": "dev.yaml",
                      "upstream": {"servers": [cls.backend.url]}}],
                    listen=[{"address": f"127.0.0.1:{port}",
                             "tls": {"cert": crt, "key": key, "client_ca": dca.ca_crt,
                                     "client_cert": "required"}}],
                    state={"postgres": cls.pg.uri(application_name=f"gh-dev{i}"),
                           "password_file": cls.pg.pwfile, "node": f"dev-{'ab'[i]}",
                           "sqlite": "var/gatehouse.db"},
                    decision_log={"file": "var/decisions.jsonl"},
                    identity_providers=[idp_conf(cls.idp)],
                    session={"key_file": os.path.join(cls.tmp, "session.key")},
                )
                cls.nodes.append(Gatehouse(cfg, files={
                    "oidc-secret": CLIENT_SECRET,
                    "dev.yaml": "mode: enforce\nrules:\n  - id: trusted-devices\n"
                                "    effect: allow\n    when: {device: {trusted: true}}\n"}))
        except Exception:
            cls._stop_services()
            raise


    def connect(self, node, cert=None):
        c = ssl.create_default_context(cafile=self.server_ca)
        c.load_cert_chain(*(cert or self.laptop))
        s = socket.create_connection(("127.0.0.1", self.ports[node]), timeout=5)
        return c.wrap_socket(s, server_hostname="a.test")

    def on(self, t):
        t.sendall(b"GET /x HTTP/1.1\r\nHost: a.test\r\nAccept: application/json\r\n\r\n")
        return Reader(t).read_response().status

    def get(self, node, cert=None):
        with self.connect(node, cert) as t:
            return self.on(t)

    def devices(self, node, *args):
        return subprocess.run([gatehouse_bin(), "devices", *args, "-c",
                               self.nodes[node].config_path],
                              capture_output=True, text=True, timeout=30)

    def test_enrolled_on_a_trusted_on_b_revoked_on_b_refused_on_a(self):
        self.assertEqual(self.get(1), 401)  # not enrolled yet
        r = self.devices(0, "enroll", "--cert", self.laptop[0], "--owner", "alice@example.com",
                         "--name", "laptop")
        self.assertEqual(r.returncode, 0, r.stderr)
        dev = r.stdout.strip()
        self.assertEqual(self.pg.sql(f"SELECT name FROM devices WHERE id = '{dev}'"), "laptop")
        self.assertTrue(wait_for(lambda: self.get(1) == 200, 10))
        r = self.devices(1, "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(dev, r.stdout)
        with self.connect(0) as t:
            self.assertEqual(self.on(t), 200)
            r = self.devices(1, "revoke", dev, "--reason", "lost")
            self.assertEqual(r.returncode, 0, r.stderr)
            # Applied at the workers' next poll of the change sequence (250 ms; within
            # a second on an idle machine); without it the per-worker cache would
            # keep the answer for devices.cache_ttl (30 s).
            t0 = time.monotonic()
            statuses = []
            while time.monotonic() - t0 < 5:
                statuses.append(self.on(t))
                if statuses[-1] != 200:
                    break
                time.sleep(0.05)
            self.assertEqual(statuses[-1], 401, statuses)
        r = self.devices(0, "show", dev)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("lost", r.stdout)

    def test_stalled_database_device_checks_answered_from_memory(self):
        """Each node keeps the registry in memory: with PostgreSQL stalled
        (SIGSTOP: connections accepted, nothing answered), requests from an
        enrolled device keep being answered at once, on new connections too."""
        r = self.devices(0, "enroll", "--cert", self.phone[0], "--owner", "bob@example.com",
                         "--name", "phone")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(wait_for(lambda: self.get(1, self.phone) == 200, 10))
        self.pg.pause()
        try:
            t0 = time.monotonic()
            took = []
            while time.monotonic() - t0 < 2.5:
                s = time.monotonic()
                self.assertEqual(self.get(1, self.phone), 200, took)
                took.append(time.monotonic() - s)
                time.sleep(0.05)
            self.assertLess(max(took), 1.0, took)
        finally:
            self.pg.resume()
            for n in self.nodes:
                wait_for(lambda: readyz(n) == 200, 15)


if __name__ == "__main__":
    unittest.main()
