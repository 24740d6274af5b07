"""Admin listener (/healthz, /readyz, /metrics in Prometheus text format) and the
JSON access log."""
import os
import re
import shutil
import tempfile
import unittest

from harness import (ProxyCase, RawConn, basic_config, dead_url, http_get, read_jsonl, request,
                     route, wait_log_entry, wait_until)

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_metrics(text):
    """Parses the Prometheus text format strictly. Returns (types, samples) with
    samples a list of (name, labels dict, float)."""
    types, samples = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = typ
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        labels = {}
        if m.group(3):
            rest = m.group(3)
            pos = 0
            while pos < len(rest):
                lm = LABEL.match(rest, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        v = m.group(4)
        value = float("inf") if v == "+Inf" else float(v)
        samples.append((m.group(1), labels, value))
    return types, samples


def family(name, types):
    for suffix in ("_bucket", "_sum", "_count", "_total", ""):
        if suffix and name.endswith(suffix) and name[: -len(suffix)] in types:
            return name[: -len(suffix)]
    return name if name in types else None


class AdminTest(ProxyCase):
    @classmethod
    def setUpClass(cls):
        cls.logdir = tempfile.mkdtemp(prefix="gh-it-admin-")
        cls.access_log = os.path.join(cls.logdir, "access.jsonl")
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.logdir, ignore_errors=True)

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends, host="app.test"),
                             route("broken", [dead_url()], host="broken.test")],
                            access_log=cls.access_log)

    def metrics(self):
        r = http_get(self.gh.admin_port, "/metrics")
        self.assertEqual(r.status, 200)
        self.assertIn("text/plain", r.header("content-type", ""))
        return parse_metrics(r.body.decode())

    def value(self, samples, name, **labels):
        total = None
        for n, lab, v in samples:
            if n == name and all(lab.get(k) == val for k, val in labels.items()):
                total = (total or 0) + v
        return total

    def test_healthz_and_readyz(self):
        r = http_get(self.gh.admin_port, "/healthz")
        self.assertEqual(r.status, 200)
        self.assertIn(b"ok", r.body.lower())
        self.assertEqual(http_get(self.gh.admin_port, "/readyz").status, 200)
        self.assertEqual(http_get(self.gh.admin_port, "/no-such-admin-page").status, 404)

    def test_metrics_format_and_families(self):
        types, samples = self.metrics()
        for name, _, _ in samples:
            self.assertIsNotNone(family(name, types), f"sample {name} has no TYPE line")
        self.assertEqual(types.get("gatehouse_requests_total"), "counter")
        self.assertEqual(types.get("gatehouse_upstream_latency_seconds"), "histogram")
        self.assertEqual(types.get("gatehouse_connections_open"), "gauge")
        self.assertTrue(any(n.startswith("gatehouse_upstream_pool_") for n in types),
                        "no upstream pool metrics")

    def test_request_counters_move(self):
        _, before = self.metrics()
        ok0 = self.value(before, "gatehouse_requests_total", route="app", **{"class": "2xx"}) or 0
        bad0 = self.value(before, "gatehouse_requests_total", route="broken",
                          **{"class": "5xx"}) or 0
        lat0 = self.value(before, "gatehouse_upstream_latency_seconds_count") or 0
        for i in range(7):
            self.assertEqual(request(self.gh.port, "GET", f"/m/{i}", host="app.test").status, 200)
        for i in range(2):
            # 502, or 503 once passive health marks the only server down.
            self.assertIn(request(self.gh.port, "GET", "/m", host="broken.test").status,
                          (502, 503))

        def moved():
            _, s = self.metrics()
            ok = self.value(s, "gatehouse_requests_total", route="app", **{"class": "2xx"})
            return s if ok is not None and ok - ok0 >= 7 else None
        after = wait_until(moved, 10, 0.1)
        self.assertIsNotNone(after, "gatehouse_requests_total{route=app,class=2xx} did not move")
        self.assertEqual(self.value(after, "gatehouse_requests_total", route="app",
                                    **{"class": "2xx"}) - ok0, 7)
        self.assertEqual(self.value(after, "gatehouse_requests_total", route="broken",
                                    **{"class": "5xx"}) - bad0, 2)
        self.assertGreaterEqual(self.value(after, "gatehouse_upstream_latency_seconds_count")
                                - lat0, 7)
        # Histogram buckets are cumulative and end with +Inf == _count.
        buckets = [(lab, v) for n, lab, v in after
                   if n == "gatehouse_upstream_latency_seconds_bucket"]
        self.assertTrue(buckets)
        series = {}
        for lab, v in buckets:
            key = tuple(sorted((k, x) for k, x in lab.items() if k != "le"))
            series.setdefault(key, []).append((float("inf") if lab["le"] == "+Inf"
                                               else float(lab["le"]), v))
        for key, pts in series.items():
            pts.sort()
            self.assertEqual(pts[-1][0], float("inf"))
            vals = [v for _, v in pts]
            self.assertEqual(vals, sorted(vals), f"buckets not cumulative for {key}")
            count = self.value(after, "gatehouse_upstream_latency_seconds_count", **dict(key))
            self.assertEqual(pts[-1][1], count)

    def test_upstream_error_and_unmatched_series(self):
        _, before = self.metrics()
        c0 = self.value(before, "gatehouse_upstream_errors_total", route="broken",
                        kind="connect") or 0
        n0 = self.value(before, "gatehouse_requests_total", route="", **{"class": "4xx"}) or 0
        request(self.gh.port, "GET", "/e", host="broken.test")
        request(self.gh.port, "GET", "/e", host="unmatched.test")

        def moved():
            _, s = self.metrics()
            c = self.value(s, "gatehouse_upstream_errors_total", route="broken", kind="connect")
            n = self.value(s, "gatehouse_requests_total", route="", **{"class": "4xx"})
            return (c or 0) > c0 and (n or 0) == n0 + 1
        self.assertTrue(wait_until(moved, 10, 0.1),
                        "upstream_errors_total{kind=connect} or the route=\"\" series did not move")

    def test_pool_gauges(self):
        for i in range(3):
            request(self.gh.port, "GET", f"/pool/{i}", host="app.test")

        def idle():
            _, s = self.metrics()
            return (self.value(s, "gatehouse_upstream_pool_idle") or 0) >= 1 and \
                self.value(s, "gatehouse_upstream_pool_active") is not None
        self.assertTrue(wait_until(idle, 10, 0.1),
                        "no idle pooled upstream connection reported after requests")

    def test_open_connections_gauge(self):
        # Settle first: earlier tests' connections (and readiness probes) may still be
        # closing; the scrape itself is the one connection that stays counted.
        wait_until(lambda: self.value(self.metrics()[1], "gatehouse_connections_open") <= 1,
                   3, 0.1)
        _, s = self.metrics()
        base = self.value(s, "gatehouse_connections_open")
        conns = [RawConn(self.gh.port) for _ in range(5)]
        try:
            for c in conns:  # make sure each was accepted
                self.assertEqual(c.request("GET", "/hold", host="app.test").status, 200)
            _, s = self.metrics()
            self.assertGreaterEqual(self.value(s, "gatehouse_connections_open"), base + 5)
        finally:
            for c in conns:
                c.close()

        def dropped():
            _, s2 = self.metrics()
            return self.value(s2, "gatehouse_connections_open") <= base
        self.assertTrue(wait_until(dropped, 10, 0.1), "closed connections still counted as open")

    def test_access_log_fields(self):
        body = b"b" * 123
        r = request(self.gh.port, "POST", "/logme?q=1", host="app.test", body=body)
        self.assertEqual(r.status, 200)
        rid = [v for k, v in r.json()["headers"] if k.lower() == "x-request-id"][0]
        e = wait_log_entry(self.access_log, lambda e: e.get("request_id") == rid)
        self.assertIsNotNone(e, "no access log line carrying the forwarded X-Request-Id")
        self.assertEqual(list(e), ["ts", "request_id", "client_ip", "method", "host", "path",
                                   "status", "bytes_in", "bytes_out", "upstream", "upstream_ms",
                                   "total_ms", "route", "user", "decision", "rule", "device"])
        self.assertEqual(e["method"], "POST")
        self.assertEqual(e["host"], "app.test")
        # Never the query string: it can carry sign-in codes and tokens.
        self.assertEqual(e["path"], "/logme")
        self.assertRegex(e["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(e["status"], 200)
        self.assertEqual(e["client_ip"], "127.0.0.1")
        self.assertGreaterEqual(e["bytes_in"], 123)
        self.assertGreaterEqual(e["bytes_out"], len(r.body))
        self.assertIn(str(self.backend.port), str(e["upstream"]))
        self.assertIsInstance(e["upstream_ms"], (int, float))
        self.assertIsInstance(e["total_ms"], (int, float))
        self.assertGreaterEqual(e["total_ms"], e["upstream_ms"])
        self.assertTrue(e["ts"])

    def test_access_log_local_response_and_escaping(self):
        r = request(self.gh.port, "GET", '/q"uo\\te?token=secret', host="nohost.test")
        e = wait_log_entry(self.access_log, lambda e: e.get("host") == "nohost.test")
        self.assertIsNotNone(e)
        self.assertEqual(e["status"], r.status)
        # A raw backslash is a separator for some backends: refused (400), and
        # the access log shows the target as received.
        self.assertEqual(r.status, 400)
        self.assertEqual(e["path"], '/q"uo\\te')
        self.assertIsNone(e["upstream"])
        self.assertIsNone(e["upstream_ms"])
        # Bytes that are not UTF-8 cannot break the line (read_jsonl decodes strictly).
        request(self.gh.port, "GET", "/bin", host=b"bad\xffhost.test".decode("latin-1"))
        wait_until(lambda: any("\ufffd" in str(x.get("host")) or "bad" in str(x.get("host"))
                               for x in read_jsonl(self.access_log)), 3, 0.1)
        # Every line of the file is a valid JSON object.
        for entry in read_jsonl(self.access_log):
            self.assertIsInstance(entry, dict)

    def test_admin_is_separate_from_proxy_listener(self):
        before = self.backend.hits("/metrics")
        r = request(self.gh.port, "GET", "/metrics", host="app.test")
        self.assertEqual(r.header("x-backend"), "b1")
        self.assertEqual(self.backend.hits("/metrics"), before + 1)


if __name__ == "__main__":
    unittest.main()
