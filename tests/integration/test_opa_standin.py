"""The OPA stand-in (tests/opa_standin/opa_standin.py) that the proxy's OPA tests
use: it must speak the Data API as Gatehouse expects - boolean and object results,
undefined as {}, errors, slow answers, raw bodies, and count queries per path."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

from harness import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "opa_standin"))
import opa_standin  # noqa: E402

RULES = {
    "gatehouse/wiki/allow": [
        {"match": {"user.id": "alice"}, "result": True},
        {"match": {"user.groups": "contractors"},
         "result": {"allow": True, "reason": "contractor on project list"}},
        {"match": {"request.method": "DELETE"}, "result": {"allow": False, "reason": "no deletes"}},
    ],
    "gatehouse/slow": [{"delay_ms": 300, "result": True}],
    "gatehouse/broken": [{"status": 500}],
    "gatehouse/garbage": [{"raw": "{\"result\": tr"}],
}


class OpaStandin(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = opa_standin.make_server(RULES)
        cls.port = cls.srv.server_address[1]
        cls.thread = threading.Thread(target=cls.srv.serve_forever, daemon=True)
        cls.thread.start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.shutdown()
        cls.srv.server_close()

    def query(self, path, inp, timeout=5):
        req = urllib.request.Request("http://127.0.0.1:%d/v1/data/%s" % (self.port, path),
                                     data=json.dumps({"input": inp}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()

    def test_results(self):
        self.assertEqual(self.query("gatehouse/wiki/allow", {"user": {"id": "alice"}}),
                         (200, '{"result": true}'))
        st, body = self.query("gatehouse/wiki/allow",
                              {"user": {"id": "x", "groups": ["eng", "contractors"]}})
        self.assertEqual(json.loads(body)["result"],
                         {"allow": True, "reason": "contractor on project list"})
        st, body = self.query("gatehouse/wiki/allow",
                              {"user": {"id": "x"}, "request": {"method": "DELETE"}})
        self.assertEqual(json.loads(body)["result"]["allow"], False)

    def test_undefined_is_an_empty_object(self):
        self.assertEqual(self.query("gatehouse/wiki/allow", {"user": {"id": "mallory"}}),
                         (200, "{}"))
        self.assertEqual(self.query("no/such/rule", {}), (200, "{}"))

    def test_errors_delays_and_raw_bodies(self):
        with self.assertRaises(urllib.error.HTTPError) as e:
            self.query("gatehouse/broken", {})
        self.assertEqual(e.exception.code, 500)
        t0 = time.monotonic()
        self.assertEqual(self.query("gatehouse/slow", {}), (200, '{"result": true}'))
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        with self.assertRaises(OSError):
            self.query("gatehouse/slow", {}, timeout=0.1)
        self.assertEqual(self.query("gatehouse/garbage", {}), (200, '{"result": tr'))

    def test_stats_count_queries(self):
        before = json.load(urllib.request.urlopen("http://127.0.0.1:%d/stats" % self.port))
        self.query("gatehouse/wiki/allow", {"user": {"id": "alice"}})
        self.query("gatehouse/wiki/allow", {"user": {"id": "alice"}})
        after = json.load(urllib.request.urlopen("http://127.0.0.1:%d/stats" % self.port))
        self.assertEqual(after["gatehouse/wiki/allow"] - before.get("gatehouse/wiki/allow", 0), 2)

    def test_command_line_prints_its_port(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(RULES, f)
        try:
            p = subprocess.Popen([sys.executable,
                                  os.path.join(ROOT, "tests", "opa_standin", "opa_standin.py"),
                                  "--rules", f.name], stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            self.assertRegex(line, r"^listening on 127\.0\.0\.1:\d+$")
            port = int(line.strip().rsplit(":", 1)[1])
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5) as r:
                self.assertEqual(r.status, 200)
            p.terminate()
            p.wait(timeout=5)
            p.stdout.close()
        finally:
            os.unlink(f.name)


if __name__ == "__main__":
    unittest.main()
