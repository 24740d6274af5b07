"""Upstreams: round_robin, least_conn, ip_hash; retries after a connect failure,
passive and active health; 502/503/504 pages carrying the request id."""
import collections
import os
import shutil
import tempfile
import threading
import time
import unittest

from harness import (Backend, Gatehouse, ProxyCase, RawConn, basic_config, build_request, dead_url,
                     request, route, wait_log_entry, wait_until)


class RoundRobinTest(ProxyCase):
    nbackends = 3

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends, balance="round_robin")])

    def test_even_spread(self):
        for b in self.backends:
            b.reset()
        for i in range(30):
            self.assertEqual(request(self.gh.port, "GET", f"/rr/{i}").status, 200)
        self.assertEqual([b.hits() for b in self.backends], [10, 10, 10])

    def test_balanced_per_request_on_one_connection(self):
        seen = []
        with RawConn(self.gh.port) as c:
            for i in range(6):
                seen.append(c.request("GET", f"/rr-ka/{i}").header("x-backend"))
        self.assertEqual(collections.Counter(seen), {"b1": 2, "b2": 2, "b3": 2})


class LeastConnTest(ProxyCase):
    nbackends = 2

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends, balance="least_conn")])

    def test_busy_server_avoided(self):
        result = {}

        def slow():
            result["r"] = request(self.gh.port, "GET", "/slow?ms=2000")
        t = threading.Thread(target=slow)
        t.start()
        busy = wait_until(lambda: next((b for b in self.backends if b.hits("/slow")), None), 10)
        self.assertIsNotNone(busy, "the slow request never reached a backend")
        other = [b for b in self.backends if b is not busy][0]
        for i in range(6):
            r = request(self.gh.port, "GET", f"/quick/{i}")
            self.assertEqual(r.header("x-backend"), other.name,
                             "least_conn sent a request to the busy server")
        t.join()
        self.assertEqual(result["r"].status, 200)


class MaxConnsTest(ProxyCase):
    """upstream.max_conns: a server with that many requests in flight is not used."""
    nbackends = 2

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends, balance="round_robin", max_conns=1)])

    def test_full_server_skipped(self):
        result = {}

        def slow():
            result["r"] = request(self.gh.port, "GET", "/slow?ms=1500")
        t = threading.Thread(target=slow)
        t.start()
        busy = wait_until(lambda: next((b for b in self.backends if b.hits("/slow")), None), 10)
        self.assertIsNotNone(busy)
        other = [b for b in self.backends if b is not busy][0]
        names = [request(self.gh.port, "GET", f"/mc/{i}").header("x-backend") for i in range(4)]
        self.assertEqual(names, [other.name] * 4)
        t.join()
        self.assertEqual(result["r"].status, 200)


class IpHashTest(ProxyCase):
    nbackends = 3

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends, balance="ip_hash")])

    def test_sticky_per_client_ip_and_spread(self):
        # The whole 127/8 is local on Linux: vary the first three octets so any
        # reasonable hash (including nginx's /24 one) sees distinct clients.
        chosen = {}
        for i in range(1, 21):
            src = f"127.{i * 11 % 250 + 1}.{i * 7 % 250 + 1}.{i + 1}"
            names = {request(self.gh.port, "GET", f"/ip/{j}", source=src).header("x-backend")
                     for j in range(4)}
            self.assertEqual(len(names), 1, f"client {src} was spread over {names}")
            chosen[src] = names.pop()
        self.assertGreater(len(set(chosen.values())), 1,
                           "20 different client addresses all hashed to one server")


class LoggedCase(ProxyCase):
    """A ProxyCase whose access log goes to a known file."""

    @classmethod
    def setUpClass(cls):
        cls.logdir = tempfile.mkdtemp(prefix="gh-it-log-")
        cls.access_log = os.path.join(cls.logdir, "access.jsonl")
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.logdir, ignore_errors=True)

    def assertPageCarriesRequestId(self, r, path):
        """The error page's body contains the request id the access log recorded."""
        # The logged path may carry the query string.
        e = wait_log_entry(self.access_log,
                           lambda e: str(e.get("path", "")).split("?")[0] == path)
        self.assertIsNotNone(e, f"no access log line for {path}")
        self.assertEqual(e["status"], r.status)
        self.assertTrue(e["request_id"])
        self.assertIn(e["request_id"], r.body.decode("utf-8", "replace"))
        hdr = r.header("x-request-id")
        if hdr is not None:
            self.assertEqual(hdr, e["request_id"])


class RetryAndPassiveHealthTest(LoggedCase):
    """[dead, live]: GETs are retried on the live server; after max_fails the dead
    one is skipped, so even POSTs (never retried) stop failing."""

    @classmethod
    def config(cls):
        return basic_config([route("app", [dead_url()] + cls.backends, balance="round_robin",
                                   max_fails=1, fail_timeout="60s")],
                            access_log=cls.access_log)

    def test_get_retried_then_dead_server_skipped(self):
        for i in range(6):
            r = request(self.gh.port, "GET", f"/retry/{i}")
            self.assertEqual(r.status, 200, f"GET #{i} failed: {r}")
        for i in range(6):
            r = request(self.gh.port, "POST", f"/post/{i}", body=b"data")
            self.assertEqual(r.status, 200,
                             f"POST #{i} went to a server marked down: {r}")


class PassiveHealthThresholdTest(ProxyCase):
    """max_fails: 3 means the third consecutive failure marks the server down:
    POSTs (never retried) alternate between [dead, live] until then."""

    @classmethod
    def config(cls):
        return basic_config([route("app", [dead_url()] + cls.backends, balance="round_robin",
                                   max_fails=3, fail_timeout="60s")])

    def test_marked_down_after_max_fails(self):
        statuses = [request(self.gh.port, "POST", f"/n/{i}", body=b"x").status
                    for i in range(12)]
        failed = [s for s in statuses if s != 200]
        self.assertEqual(len(failed), 3, statuses)
        self.assertEqual(statuses[-6:], [200] * 6, statuses)


class PassiveHealthRecoveryTest(unittest.TestCase):
    """A server marked down is skipped for fail_timeout, then tried again."""

    def setUp(self):
        self.b1 = Backend("b1")
        self.b2 = Backend("b2")
        self.port2 = self.b2.port
        self.b2.stop()  # down: connections to its port are refused
        self.gh = Gatehouse(basic_config([route("app", [self.b1, f"http://127.0.0.1:{self.port2}"],
                                                balance="round_robin", max_fails=1,
                                                fail_timeout="1s")]))

    def tearDown(self):
        self.b1.stop()
        self.b2.stop()
        self.gh.finish()

    def test_skipped_then_retried(self):
        for i in range(4):
            self.assertEqual(request(self.gh.port, "GET", f"/a/{i}").header("x-backend"), "b1")
        self.b2 = Backend("b2", port=self.port2)  # back up on the same port
        self.assertTrue(wait_until(
            lambda: request(self.gh.port, "GET", "/b").header("x-backend") == "b2", 5, 0.2),
            "the recovered server never got traffic again after fail_timeout")


class NoRetryForPostTest(LoggedCase):
    """A POST is not retried; with health marking effectively off, the ones sent to
    the dead server get a 502 page with the request id."""

    @classmethod
    def config(cls):
        return basic_config([route("app", [dead_url()] + cls.backends, balance="round_robin",
                                   max_fails=1000, retries=1)],
                            access_log=cls.access_log)

    def test_post_502_with_request_id(self):
        statuses = []
        for i in range(4):
            r = request(self.gh.port, "POST", f"/p502/{i}", body=b"data",
                        headers=[("Accept", "text/html")])
            statuses.append(r.status)
            if r.status == 502:
                self.assertPageCarriesRequestId(r, f"/p502/{i}")
        self.assertEqual(sorted(statuses), [200, 200, 502, 502])

    def test_get_always_succeeds(self):
        for i in range(4):
            self.assertEqual(request(self.gh.port, "GET", f"/g/{i}").status, 200)


class AllDownTest(LoggedCase):
    nbackends = 0

    @classmethod
    def config(cls):
        return basic_config([route("app", [dead_url(), dead_url()])], access_log=cls.access_log)

    def test_no_server_available(self):
        for i in range(3):
            r = request(self.gh.port, "GET", f"/down/{i}", headers=[("Accept", "application/json")])
            self.assertIn(r.status, (502, 503))
            self.assertPageCarriesRequestId(r, f"/down/{i}")


class UpstreamErrorPagesTest(ProxyCase):
    """503 with Retry-After when no server of the pool can answer, 502 for a bad
    answer (or one unreachable server while others are up); for browsers, the
    page is the sign-in pages' error template (web/login/error.html and its
    stylesheet), for API callers JSON, chosen by Accept."""
    nbackends = 1

    @classmethod
    def config(cls):
        return basic_config([
            route("down", [dead_url(), dead_url()], host="down.test", fail_timeout="7s"),
            route("bad", cls.backends, host="bad.test"),
            route("half", [dead_url()] + cls.backends, host="half.test", balance="round_robin",
                  max_fails=1000, retries=1),
        ])

    HTML = [("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")]
    JSON = [("Accept", "application/json")]

    def assertTemplatePage(self, r, status, path):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.header("content-type").startswith("text/html"))
        body = r.body.decode()
        self.assertIn('<link rel="stylesheet" href="/.gatehouse/static/login.css">', body)
        self.assertIn('<div class="brand">Gatehouse</div>', body)
        self.assertIn(f"<title>{status} {'Service Unavailable' if status == 503 else 'Bad Gateway'}"
                      " - Gatehouse</title>", body)
        self.assertIn(f"<code>{r.header('x-request-id')}</code>", body)
        self.assertIn(f'href="{path}"', body)  # "Try again" reloads the page asked for

    def test_every_server_down_is_503_with_retry_after(self):
        for i in range(5):  # first connect failures, then servers marked down
            with self.subTest(i=i):
                r = request(self.gh.port, "GET", f"/d/{i}", host="down.test", headers=self.HTML)
                self.assertTemplatePage(r, 503, f"/d/{i}")
                self.assertEqual(r.header("retry-after"), "7")

    def test_every_server_down_json(self):
        r = request(self.gh.port, "GET", "/api", host="down.test", headers=self.JSON)
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("retry-after"), "7")
        self.assertEqual(r.header("content-type"), "application/json")
        j = r.json()
        self.assertEqual((j["status"], j["request_id"]), (503, r.header("x-request-id")))

    def test_bad_answer_is_502_without_retry_after(self):
        r = request(self.gh.port, "GET", "/garbage", host="bad.test", headers=self.HTML)
        self.assertTemplatePage(r, 502, "/garbage")
        self.assertIsNone(r.header("retry-after"))
        r = request(self.gh.port, "GET", "/garbage", host="bad.test", headers=self.JSON)
        self.assertEqual(r.status, 502)
        self.assertEqual(r.json()["status"], 502)
        self.assertIsNone(r.header("retry-after"))

    def test_one_unreachable_server_among_healthy_ones_is_502(self):
        statuses = []
        for i in range(2):  # round robin: one POST to each; a POST is never retried
            r = request(self.gh.port, "POST", f"/p/{i}", host="half.test", body=b"x",
                        headers=self.JSON)
            statuses.append(r.status)
            if r.status != 200:
                self.assertIsNone(r.header("retry-after"))
        self.assertEqual(sorted(statuses), [200, 502])


class TimeoutTest(LoggedCase):
    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)], access_log=cls.access_log,
                            timeouts={"upstream_response": "1s"})

    def test_upstream_timeout_504(self):
        t0 = time.time()
        r = request(self.gh.port, "GET", "/slow?ms=3000", headers=[("Accept", "text/html")])
        elapsed = time.time() - t0
        self.assertEqual(r.status, 504)
        self.assertLess(elapsed, 2.9)
        self.assertGreater(elapsed, 0.8)
        self.assertPageCarriesRequestId(r, "/slow")
        # The timed-out upstream connection is not reused: the next request is answered
        # by a fresh exchange (not the late answer of the slow one).
        r = request(self.gh.port, "GET", "/after-timeout")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["path"], "/after-timeout")
        conn = self.backend.last("/slow")["conn"]
        self.assertTrue(wait_until(lambda: conn in self.backend.closed_conn_ids, 15),
                        "the timed-out upstream connection was kept open")

    def test_upstream_closes_without_response_502(self):
        r = request(self.gh.port, "POST", "/close", body=b"x")
        self.assertEqual(r.status, 502)
        self.assertPageCarriesRequestId(r, "/close")
        self.assertEqual(request(self.gh.port, "GET", "/after-close").status, 200)


class ActiveHealthTest(ProxyCase):
    nbackends = 2

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends, balance="round_robin",
                                   health_check={"path": "/health", "interval": "300ms"})])

    def tearDown(self):
        for b in self.backends:
            b.health_status = 200

    def test_checks_run_and_mark_servers(self):
        b1, b2 = self.backends
        self.assertTrue(wait_until(lambda: b1.hits("/health") >= 2 and b2.hits("/health") >= 2,
                                   5), "active health checks did not run every interval")
        b2.health_status = 503
        checks = b2.hits("/health")
        # One failed check marks the server down: every check received from here on
        # answers 503, and the first of them has been answered when the next arrives
        # (checks of a server do not overlap).
        self.assertTrue(wait_until(lambda: b2.hits("/health") >= checks + 2, 10),
                        "active health checks stopped")
        names = [request(self.gh.port, "GET", f"/h/{i}").header("x-backend") for i in range(8)]
        self.assertEqual(names, ["b1"] * 8, "a server failing its health check still got traffic")
        b2.health_status = 200

        def back():
            return "b2" in {request(self.gh.port, "GET", "/h").header("x-backend")
                            for _ in range(4)}
        self.assertTrue(wait_until(back, 5, 0.3), "the server never came back after recovering")


class PoolTest(ProxyCase):
    """Upstream keep-alive pool: connections are reused, stale ones are detected,
    and a connection that carried an ambiguous response is never reused."""

    def setUp(self):
        # Let the previous test's connections settle, then count from here.
        time.sleep(0.2)

    def test_connections_reused(self):
        before = self.backend.conns_accepted
        for i in range(20):
            self.assertEqual(request(self.gh.port, "GET", f"/pool/{i}").status, 200)
        self.assertLessEqual(self.backend.conns_accepted - before, 2,
                             "upstream connections are not kept alive and reused")

    def test_idle_connection_closed_by_upstream(self):
        for i in range(3):
            self.assertEqual(request(self.gh.port, "GET", "/then-close").status, 200)
            time.sleep(0.3)  # the backend has closed the pooled connection by now
            r = request(self.gh.port, "GET", f"/after-close/{i}")
            self.assertEqual(r.status, 200, "a stale pooled connection surfaced to the client")

    def test_ambiguous_response_502_and_not_reused(self):
        r = request(self.gh.port, "GET", "/ambiguous")
        self.assertEqual(r.status, 502)
        self.assertNotEqual(r.body, b"hello")
        # The upstream connection that carried it is closed, not returned to the pool.
        conn = self.backend.last("/ambiguous")["conn"]
        self.assertTrue(wait_until(lambda: conn in self.backend.closed_conn_ids, 3),
                        "the connection with the ambiguous response was kept")
        self.assertEqual(request(self.gh.port, "GET", "/after-ambiguous").status, 200)


    def test_malformed_response_502_and_not_reused(self):
        r = request(self.gh.port, "GET", "/garbage")
        self.assertEqual(r.status, 502)
        conn = self.backend.last("/garbage")["conn"]
        self.assertTrue(wait_until(lambda: conn in self.backend.closed_conn_ids, 3),
                        "the connection with the malformed response was kept")
        self.assertEqual(request(self.gh.port, "GET", "/after-garbage").status, 200)

    def test_truncated_response_closes_client_connection(self):
        """Once the head is forwarded the client can only learn of the truncation by
        the connection closing: it must not hang or be reused."""
        with RawConn(self.gh.port) as c:
            c.send(build_request("GET", "/truncated"))
            start, headers = c.reader.read_head()
            self.assertIn(" 200", start)
            t0 = time.time()
            try:
                rest = c.reader.read_to_eof()
            except (ConnectionResetError, OSError):
                rest = b""
            self.assertLess(time.time() - t0, 5)
            self.assertLess(len(rest), 1000)
        self.assertEqual(request(self.gh.port, "GET", "/after-truncated").status, 200)


class HttpsUpstreamTest(unittest.TestCase):
    """An https:// upstream verified against a CA file; a wrong CA fails closed."""

    @classmethod
    def setUpClass(cls):
        from harness import CertFactory
        cls.tmp = tempfile.mkdtemp(prefix="gh-it-up-")
        ca = CertFactory(os.path.join(cls.tmp, "ca"))
        crt, key = ca.leaf("localhost", dns=["localhost"], ips=["127.0.0.1"])
        cls.other_ca = CertFactory(os.path.join(cls.tmp, "other"), "Unrelated CA")
        cls.backend = Backend("tls1", tls_cert=crt, tls_key=key)
        # Same CA, but the certificate names another host: the chain verifies, the name not.
        wcrt, wkey = ca.leaf("other.test", dns=["other.test"])
        cls.wrong_name = Backend("tls2", tls_cert=wcrt, tls_key=wkey)
        url = f"https://localhost:{cls.backend.port}"
        cls.gh = Gatehouse(basic_config([
            route("good", [url], host="good.test", ca_file=ca.ca_crt),
            route("bad", [url], host="bad.test", ca_file=cls.other_ca.ca_crt),
            route("name", [f"https://localhost:{cls.wrong_name.port}"], host="name.test",
                  ca_file=ca.ca_crt)]))

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()
        cls.wrong_name.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        cls.gh.finish()

    def test_verified_upstream(self):
        r = request(self.gh.port, "GET", "/secure", host="good.test")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["path"], "/secure")
        with RawConn(self.gh.port) as c:  # pooled TLS connection reused
            for i in range(3):
                self.assertEqual(c.request("GET", f"/s{i}", host="good.test").status, 200)

    def test_upstream_hostname_checked(self):
        r = request(self.gh.port, "GET", "/wrong-name", host="name.test")
        self.assertIn(r.status, (502, 503))
        self.assertEqual(self.wrong_name.hits(), 0)

    def test_unverifiable_upstream_refused(self):
        before = self.backend.hits()
        r = request(self.gh.port, "GET", "/insecure", host="bad.test")
        # 502 (bad gateway) or 503 (the only server is now marked down): either way the
        # request fails closed and never reaches the backend.
        self.assertIn(r.status, (502, 503))
        self.assertEqual(self.backend.hits(), before)


if __name__ == "__main__":
    unittest.main()
