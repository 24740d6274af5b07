"""SIGHUP reload during a load run with zero failed requests; an invalid config
on SIGHUP is refused and the old one keeps serving; SIGTERM drains in-flight
requests, refuses new connections and exits 0."""
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import unittest

from harness import (Backend, ConnectionClosed, Gatehouse, RawConn, basic_config, http_get,
                     read_jsonl, request, route, wait_log_entry, wait_until)
from test_admin import parse_metrics


class LoadRun:
    """Threads issuing keep-alive requests continuously; every non-200 answer or
    broken exchange is a failure. A reused connection the proxy closed before
    sending any byte is reopened and the request sent again (what HTTP clients
    do with idempotent requests); those are counted separately."""

    def __init__(self, port, nthreads=3, path="/load"):
        self.port = port
        self.path = path
        self.ok = 0
        self.failures = []
        self.reopened = 0
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(nthreads)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        conn = None
        n = 0
        while self.running:
            n += 1
            fresh = conn is None
            try:
                if conn is None:
                    conn = RawConn(self.port)
                r = conn.request("GET", f"{self.path}/{i}/{n}")
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError) as e:
                if conn is not None:
                    conn.close()
                conn = None
                if fresh:
                    with self.lock:
                        self.failures.append(f"fresh connection: {e!r}")
                    continue
                else:
                    with self.lock:
                        self.reopened += 1
                    try:
                        conn = RawConn(self.port)
                        r = conn.request("GET", f"{self.path}/{i}/{n}")
                    except OSError as e2:
                        with self.lock:
                            self.failures.append(f"retry after close: {e2!r}")
                        conn = None
                        continue
            except OSError as e:
                with self.lock:
                    self.failures.append(repr(e))
                conn = None
                continue
            with self.lock:
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {r.status}")
            if (r.header("connection") or "").lower() == "close":
                conn.close()
                conn = None
        if conn:
            conn.close()

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(15)


class ReloadTest(unittest.TestCase):
    def setUp(self):
        self.b1 = Backend("b1")
        self.b2 = Backend("b2")
        self.cfg = basic_config([route("app", [self.b1])])
        self.gh = Gatehouse(self.cfg)

    def tearDown(self):
        self.b1.stop()
        self.b2.stop()
        self.gh.finish()

    def test_reload_under_load_zero_failures(self):
        load = LoadRun(self.gh.port)
        self.assertTrue(wait_until(lambda: load.ok >= 30, 15), "the load never got going")
        cfg2 = dict(self.cfg)
        cfg2["routes"] = [route("app", [self.b1]), route("new", [self.b2], path_prefix="/new")]
        self.gh.write_config(cfg2)
        self.gh.signal(signal.SIGHUP)

        def new_route_live():
            return request(self.gh.port, "GET", "/new/x").header("x-backend") == "b2"
        visible = wait_until(new_route_live, 5, 0.1)
        after = load.ok
        # The load goes on past the switch (every worker on the new config).
        wait_until(lambda: load.ok >= after + 50, 10)
        load.stop()
        self.assertTrue(visible, "the new route never became visible after SIGHUP")
        self.assertEqual(load.failures, [], f"{len(load.failures)} failed requests")
        self.assertGreater(load.ok, 50)
        self.assertIsNone(self.gh.proc.poll())

    def test_invalid_config_refused_old_keeps_serving(self):
        self.gh.write_config("listen:\n  - address: 127.0.0.1:1\nroutez: []\n")
        self.gh.signal(signal.SIGHUP)
        logged = wait_until(lambda: "routez" in self.gh.stderr(), 5, 0.1)
        self.assertTrue(logged, "no log line about the rejected config:\n" + self.gh.stderr())
        time.sleep(0.3)
        self.assertIsNone(self.gh.proc.poll(), "gatehouse exited on an invalid reload")
        _, samples = parse_metrics(http_get(self.gh.admin_port, "/metrics").body.decode())
        failed = [v for n, lab, v in samples
                  if n == "gatehouse_config_reloads_total" and lab.get("result") == "failed"]
        self.assertEqual(failed, [1.0])
        for i in range(5):
            r = request(self.gh.port, "GET", f"/still/{i}")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("x-backend"), "b1")
        # A later valid reload still works.
        cfg2 = dict(self.cfg)
        cfg2["routes"] = [route("app", [self.b2])]
        self.gh.write_config(cfg2)
        self.gh.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: request(self.gh.port, "GET", "/")
                                   .header("x-backend") == "b2", 5, 0.1))

    def test_open_keep_alive_connection_sees_new_config(self):
        with RawConn(self.gh.port) as c:
            self.assertEqual(c.request("GET", "/ka").header("x-backend"), "b1")
            cfg2 = dict(self.cfg)
            cfg2["routes"] = [route("app", [self.b2])]
            self.gh.write_config(cfg2)
            self.gh.signal(signal.SIGHUP)
            self.assertTrue(wait_until(lambda: request(self.gh.port, "GET", "/")
                                       .header("x-backend") == "b2", 5, 0.1))
            # The next request on the connection opened before the reload.
            self.assertEqual(c.request("GET", "/ka").header("x-backend"), "b2")

    def test_in_flight_request_finishes_on_old_config(self):
        result = {}

        def slow():
            result["r"] = request(self.gh.port, "GET", "/slow?ms=1500")
        t = threading.Thread(target=slow)
        t.start()
        self.assertTrue(wait_until(lambda: self.b1.hits("/slow") == 1, 10))
        cfg2 = dict(self.cfg)
        cfg2["routes"] = [route("app", [self.b2])]
        self.gh.write_config(cfg2)
        self.gh.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: request(self.gh.port, "GET", "/")
                                   .header("x-backend") == "b2", 5, 0.1))
        t.join(10)
        self.assertEqual(result["r"].status, 200)
        self.assertEqual(result["r"].header("x-backend"), "b1")


class AccessLogReopenTest(unittest.TestCase):
    """SIGHUP reopens the access log, so a rotated file is not written forever."""

    def setUp(self):
        self.b1 = Backend("b1")
        self.dir = tempfile.mkdtemp(prefix="gh-it-rot-")
        self.log = os.path.join(self.dir, "access.jsonl")
        self.cfg = basic_config([route("app", [self.b1])], access_log=self.log)
        self.gh = Gatehouse(self.cfg)

    def tearDown(self):
        self.b1.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.gh.finish()

    def test_rotate_then_sighup(self):
        self.assertEqual(request(self.gh.port, "GET", "/before-rotate").status, 200)
        self.assertIsNotNone(wait_log_entry(self.log, lambda e: e["path"] == "/before-rotate"))
        os.rename(self.log, self.log + ".1")
        self.gh.signal(signal.SIGHUP)

        def logged_in_new_file():
            request(self.gh.port, "GET", "/after-rotate")
            return any(e["path"] == "/after-rotate" for e in read_jsonl(self.log))
        self.assertTrue(wait_until(logged_in_new_file, 5, 0.3),
                        "after SIGHUP the access log was not reopened at its path")
        old = [e["path"] for e in read_jsonl(self.log + ".1")]
        self.assertIn("/before-rotate", old)


class DrainTest(unittest.TestCase):
    def setUp(self):
        self.b1 = Backend("b1")

    def tearDown(self):
        self.gh.cleanup()
        self.b1.stop()

    def start(self, drain="10s"):
        self.gh = Gatehouse(basic_config([route("app", [self.b1])], timeouts={"drain": drain}))

    def test_sigterm_drains_in_flight_and_refuses_new(self):
        self.start()
        idle = RawConn(self.gh.port)
        self.assertEqual(idle.request("GET", "/idle").status, 200)
        result = {}

        def slow():
            result["r"] = request(self.gh.port, "GET", "/slow?ms=2000")
        t = threading.Thread(target=slow)
        t.start()
        self.assertTrue(wait_until(lambda: self.b1.hits("/slow") == 1, 10))
        t0 = time.time()
        self.gh.signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", self.gh.port), timeout=1).close()
                return False
            except (ConnectionRefusedError, ConnectionResetError):
                # Reset: the connect raced with the listener closing (backlog dropped).
                return True
        self.assertTrue(wait_until(refused, 1.5, 0.05), "still accepting after SIGTERM")
        # Not ready while draining: /readyz answers 503 (or the admin port is gone).
        try:
            ready = http_get(self.gh.admin_port, "/readyz", timeout=2).status
        except (OSError, ConnectionClosed):
            ready = None
        self.assertNotEqual(ready, 200, "/readyz still 200 while draining")
        # An idle keep-alive connection is closed rather than waited for.
        self.assertTrue(idle.is_closed(2), "idle keep-alive connection kept open while draining")
        idle.close()
        t.join(10)
        self.assertEqual(result["r"].status, 200, "in-flight request cut by SIGTERM")
        self.assertEqual(result["r"].json()["path"], "/slow")
        self.gh.proc.wait(10)
        self.assertEqual(self.gh.proc.returncode, 0, self.gh.stderr())
        self.assertGreater(time.time() - t0, 1.0)

    def test_drain_timeout_bounds_shutdown(self):
        self.start(drain="1s")
        t = threading.Thread(target=lambda: self._swallow(
            lambda: request(self.gh.port, "GET", "/slow?ms=8000", timeout=15)), daemon=True)
        t.start()
        self.assertTrue(wait_until(lambda: self.b1.hits("/slow") == 1, 10))
        t0 = time.time()
        self.gh.signal(signal.SIGTERM)
        self.gh.proc.wait(10)
        self.assertLess(time.time() - t0, 4.0, "drain timeout not enforced")
        self.assertEqual(self.gh.proc.returncode, 0)

    @staticmethod
    def _swallow(fn):
        try:
            fn()
        except (OSError, ConnectionClosed):
            pass

    def test_idle_server_exits_promptly(self):
        self.start()
        t0 = time.time()
        self.gh.signal(signal.SIGTERM)
        self.gh.proc.wait(10)
        self.assertLess(time.time() - t0, 5.0)  # not the drain timeout (10 s)
        self.assertEqual(self.gh.proc.returncode, 0)


if __name__ == "__main__":
    unittest.main()
