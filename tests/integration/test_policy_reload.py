"""Hot reload of route policies through the real proxy, with alice (eng,
admins) and bob (sales) signed in through the real OpenID Provider:

- a policy file changed + SIGHUP takes effect;
- a policy file changed without a signal takes effect too (the main thread
  polls policy files every second);
- an invalid policy is refused with a file:line:col log line and the running
  policy keeps deciding (on SIGHUP and on the file change);
- requests in flight during many reloads all get a decision (200 or 403,
  never an error);
- `gatehouse check` reports policy errors with file:line:col."""
import os
import re
import signal
import subprocess
import threading
import time
import unittest
import http.client

from harness import Backend, Gatehouse, basic_config, free_port, gatehouse_bin, wait_until
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf

ENG = "rules:\n  - id: eng\n    effect: allow\n    when: {groups: {contains: eng}}\n"
SALES = "rules:\n  - id: sales\n    effect: allow\n    when: {groups: {contains: sales}}\n"
# Line 4, column 12: the unknown criterion.
BAD = ("rules:\n  - id: eng\n    effect: allow\n    when: {grups: {contains: eng}}\n")


class PolicyReload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.idp = IdP([client_for(cls.base)])
        cfg = basic_config(
            [{"name": "app", "policy": "app.yaml", "upstream": {"servers": [cls.backend.url]}}],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(cls.idp)],
        )
        try:
            cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET, "app.yaml": ENG})
        except Exception:
            cls.idp.stop()
            cls.backend.stop()
            raise
        cls.pdir = cls.gh.dir
        cls.alice = Browser(accept="application/json")
        cls.bob = Browser(accept="application/json")
        for b, user in ((cls.alice, "alice"), (cls.bob, "bob")):
            b.accept = "text/html"
            r = b.login(cls.base, "/start", user=user)
            b.accept = "application/json"
            assert r.status in (200, 403), r

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()

    @classmethod
    def write(cls, text):
        # Write then rename, as deployment tools do (never a half-written file).
        path = os.path.join(cls.pdir, "app.yaml")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        # Each version gets a later mtime, whole seconds apart: a distinct stamp even
        # on file systems with coarse times, without waiting for the clock.
        cls._mtime = max(time.time(), getattr(cls, "_mtime", 0) + 2)
        os.utime(tmp, (cls._mtime, cls._mtime))
        os.replace(tmp, path)

    def status(self, who):
        return who.request(self.base + "/doc").status

    def statuses(self):
        return (self.status(self.alice), self.status(self.bob))

    def reloads(self):
        """Reloads the server has finished (loaded or refused)."""
        log = self.gh.stderr()
        path = self.gh.config_path
        return (log.count("configuration %s loaded" % path)
                + log.count("configuration %s refused" % path))

    def set_policy(self, text, want, hup=True):
        done = self.reloads()
        self.write(text)
        if hup:
            self.gh.signal(signal.SIGHUP)
            # Wait for the reload itself, not only for the answers: they may be
            # right already (the policy in force gives them), and a file written
            # while this reload runs is not a change it would notice later.
            self.assertTrue(wait_until(lambda: self.reloads() > done, 15),
                            self.gh.stderr()[-2000:])
        got = wait_until(lambda: self.statuses() == want, timeout=8, interval=0.2)
        self.assertTrue(got, "policy did not take effect: %s != %s\n%s"
                        % (self.statuses(), want, self.gh.stderr()[-2000:]))

    def setUp(self):
        self.set_policy(ENG, (200, 403))
        self.log_mark = len(self.gh.stderr())

    def new_log(self):
        return self.gh.stderr()[self.log_mark:]

    def test_sighup_applies_a_changed_policy(self):
        self.set_policy(SALES, (403, 200))
        self.assertIn("configuration %s loaded" % self.gh.config_path, self.new_log())

    def test_changed_file_is_picked_up_without_a_signal(self):
        self.set_policy(SALES, (403, 200), hup=False)
        self.assertIn("a policy file changed: reloading", self.new_log())

    def assertRefused(self, log):
        path = os.path.join(self.pdir, "app.yaml")
        # The log line is logfmt: quotes inside msg are escaped.
        self.assertIn(f'{path}:4:12: error: unknown criterion \\"grups\\" '
                      '(did you mean \\"groups\\"?)', log)
        self.assertIn("refused; still serving the previous one", log)

    def test_invalid_policy_on_sighup_keeps_the_old_one(self):
        self.write(BAD)
        self.gh.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "refused" in self.new_log(), timeout=15),
                        self.new_log())
        self.assertRefused(self.new_log())
        for _ in range(3):
            self.assertEqual(self.statuses(), (200, 403))
        self.assertIsNone(self.gh.proc.poll())

    def test_invalid_policy_file_change_keeps_the_old_one(self):
        self.write(BAD)
        self.assertTrue(wait_until(lambda: "refused" in self.new_log(), timeout=15),
                        self.new_log())
        self.assertRefused(self.new_log())
        self.assertEqual(self.statuses(), (200, 403))
        # Refused once, not again every second while the file stays bad.
        time.sleep(2.5)
        self.assertEqual(self.new_log().count("unknown criterion"), 1, self.new_log())

    def test_requests_during_reloads_always_get_a_decision(self):
        cookie = "; ".join(f"{k}={v}" for k, v in
                           self.alice.jar(self.base.split("//")[1]).items())
        stop = threading.Event()
        seen = []

        def load():
            while not stop.is_set():
                try:
                    c = http.client.HTTPConnection("127.0.0.1", int(self.base.rsplit(":", 1)[1]),
                                                   timeout=5)
                    for _ in range(20):
                        c.request("GET", "/doc", headers={"Cookie": cookie,
                                                          "Accept": "application/json"})
                        r = c.getresponse()
                        r.read()
                        seen.append(r.status)
                    c.close()
                except (OSError, http.client.HTTPException) as e:
                    seen.append(repr(e))
        threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for i in range(6):
            self.write(SALES if i % 2 == 0 else ENG)
            self.gh.signal(signal.SIGHUP)
            time.sleep(0.25)
        stop.set()
        for t in threads:
            t.join(10)
        self.assertGreater(len(seen), 50)
        self.assertEqual(set(seen) - {200, 403}, set(), seen)
        self.assertIn(200, seen)
        self.assertIn(403, seen)


class CheckReportsPolicyErrors(unittest.TestCase):
    def test_check_names_file_line_col(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, "policies"))
            with open(os.path.join(d, "policies", "app.yaml"), "w") as f:
                f.write(BAD + "  - id: eng\n    effect: allow\n    when: {user: bob}\n"
                        "  - id: lab\n    effect: allow\n    when: {source_ip: 10.1.2.3/8}\n")
            with open(os.path.join(d, "oidc-secret"), "w") as f:
                f.write(CLIENT_SECRET)
            cfg = os.path.join(d, "gatehouse.yaml")
            with open(cfg, "w") as f:
                f.write("listen: [{address: 127.0.0.1:%d}]\n"
                        "state: {sqlite: var/gh.db}\n"
                        "identity_providers:\n"
                        "  - {id: corp, issuer: http://127.0.0.1:9, client_id: gatehouse,\n"
                        "     client_secret_file: oidc-secret, allow_insecure_issuer: true}\n"
                        "routes:\n"
                        "  - {name: app, policy: policies/app.yaml,\n"
                        "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n" % free_port())
            p = subprocess.run([gatehouse_bin(), "check", "-c", cfg], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            out = p.stdout + p.stderr
            pol = os.path.join(d, "policies", "app.yaml")
            self.assertRegex(out, re.escape(pol) + r':4:12: error: unknown criterion "grups" '
                             r'\(did you mean "groups"\?\)')
            self.assertRegex(out, re.escape(pol) + r':5:9: error: duplicate rule id "eng"')
            self.assertRegex(out, re.escape(pol) + r':10:\d+: error: bad CIDR "10.1.2.3/8" in '
                             r'source_ip: host bits are set \(did you mean "10.0.0.0/8"\?\)')


if __name__ == "__main__":
    unittest.main()
