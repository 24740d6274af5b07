"""HTTP/1.1 forwarding: keep-alive, pipelining, chunked both ways, Expect,
bodiless responses, hop-by-hop headers, Via, X-Forwarded-*, X-Request-Id."""
import hashlib
import os
import socket
import threading
import time
import unittest

from harness import (ConnectionClosed, ProxyCase, RawConn, basic_config, build_request, free_port,
                     http_get, pattern_chunks, pattern_sha, request, route, wait_until)


def hdr(echo, name):
    """Values of header name as the backend received it (echo JSON)."""
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


class ForwardingTest(ProxyCase):
    def test_simple_get(self):
        r = request(self.gh.port, "GET", "/hello?x=1")
        self.assertEqual(r.status, 200, r)
        e = r.json()
        self.assertEqual(e["method"], "GET")
        self.assertEqual(e["target"], "/hello?x=1")
        self.assertEqual(r.header("x-backend"), "b1")

    def test_keep_alive_many_requests_one_connection(self):
        with RawConn(self.gh.port) as c:
            for i in range(20):
                r = c.request("GET", f"/ka/{i}")
                self.assertEqual(r.status, 200)
                self.assertEqual(r.json()["path"], f"/ka/{i}")
            self.assertFalse(c.is_closed(0.2), "keep-alive connection closed by the proxy")

    def test_pipelined_requests_answered_in_order(self):
        reqs = b"".join(build_request("GET", f"/pipe/{i}") for i in range(5))
        reqs += build_request("POST", "/pipe/post", body=b"x" * 1000)
        reqs += build_request("GET", "/slow?ms=300")
        reqs += build_request("GET", "/pipe/after-slow")
        with RawConn(self.gh.port) as c:
            c.send(reqs)
            for i in range(5):
                r = c.read_response()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.json()["path"], f"/pipe/{i}")
            r = c.read_response()
            self.assertEqual(r.json()["path"], "/pipe/post")
            self.assertEqual(r.json()["body_len"], 1000)
            r = c.read_response()
            self.assertEqual(r.json()["path"], "/slow")
            r = c.read_response()
            self.assertEqual(r.json()["path"], "/pipe/after-slow")

    def test_chunked_request_body(self):
        body = os.urandom(200000)
        chunks = [body[i:i + 7000] for i in range(0, len(body), 7000)]
        wire = b"".join(b"%x\r\n" % len(ch) + ch + b"\r\n" for ch in chunks) + b"0\r\n\r\n"
        with RawConn(self.gh.port) as c:
            c.send(build_request("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]))
            # Trickle it so the proxy sees chunk boundaries split across reads.
            for i in range(0, len(wire), 65536):
                c.send(wire[i:i + 65536])
                time.sleep(0.01)
            r = c.read_response()
        self.assertEqual(r.status, 200)
        e = r.json()
        self.assertEqual(e["body_len"], len(body))
        self.assertEqual(e["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_chunked_request_with_extension_and_trailer(self):
        wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        with RawConn(self.gh.port) as c:
            c.send(build_request("POST", "/ext", headers=[("Transfer-Encoding", "chunked")]) + wire)
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["body_len"], 11)
            self.assertEqual(r.json()["body_sha256"], hashlib.sha256(b"hello world").hexdigest())
            # The connection stays usable: the request ended exactly after the trailer.
            r = c.request("GET", "/next")
            self.assertEqual(r.json()["path"], "/next")

    def test_chunked_response(self):
        with RawConn(self.gh.port) as c:
            r = c.request("GET", "/chunked?chunks=7&size=333")
            self.assertEqual(r.status, 200)
            self.assertEqual(len(r.body), 7 * 333)
            self.assertEqual(r.body[:333], b"A" * 333)
            self.assertEqual(r.body[-333:], b"G" * 333)
            r = c.request("GET", "/large?bytes=3000000&chunked=1")
            self.assertEqual(len(r.body), 3000000)
            self.assertEqual(hashlib.sha256(r.body).hexdigest(), pattern_sha(3000000))
            r = c.request("GET", "/after-chunked")
            self.assertEqual(r.json()["path"], "/after-chunked")

    def test_response_delimited_by_close(self):
        r = request(self.gh.port, "GET", "/eof?n=1000")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"until-eof " * 1000)

    def test_content_length_body_both_ways(self):
        body = os.urandom(1 << 20)
        with RawConn(self.gh.port) as c:
            r = c.request("PUT", "/put", body=body)
            self.assertEqual(r.json()["body_len"], len(body))
            self.assertEqual(r.json()["body_sha256"], hashlib.sha256(body).hexdigest())
            r = c.request("GET", "/large?bytes=1048577")
            self.assertEqual(r.header("content-length"), "1048577")
            self.assertEqual(hashlib.sha256(r.body).hexdigest(), pattern_sha(1048577))

    def test_expect_100_continue(self):
        body = b"y" * 5000
        with RawConn(self.gh.port) as c:
            c.send(build_request("POST", "/expect", headers=[("Expect", "100-continue"),
                                                              ("Content-Length", str(len(body)))]))
            start, _ = c.reader.read_head()
            self.assertTrue(start.startswith("HTTP/1.1 100"), start)
            c.send(body)
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["body_len"], len(body))

    def test_head_has_no_body(self):
        with RawConn(self.gh.port) as c:
            r = c.request("HEAD", "/large?bytes=5000")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("content-length"), "5000")
            # Any body bytes leaked after the HEAD response would corrupt this one.
            r = c.request("GET", "/after-head")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["path"], "/after-head")

    def test_204_and_304_have_no_body(self):
        with RawConn(self.gh.port) as c:
            r = c.request("GET", "/status?code=204")
            self.assertEqual(r.status, 204)
            self.assertIsNone(r.header("transfer-encoding"))
            r = c.request("GET", "/status?code=304", headers=[("If-None-Match", '"v1"')])
            self.assertEqual(r.status, 304)
            self.assertIsNone(r.header("transfer-encoding"))
            r = c.request("GET", "/after-304")
            self.assertEqual(r.json()["path"], "/after-304")

    def test_informational_response_then_final(self):
        with RawConn(self.gh.port) as c:
            r = c.request("GET", "/early")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["path"], "/early")
            for status, _ in r.interim:
                self.assertEqual(status, 103)
            r = c.request("GET", "/after-early")
            self.assertEqual(r.json()["path"], "/after-early")

    def test_hop_by_hop_request_headers_removed(self):
        r = request(self.gh.port, "GET", "/hop-req", headers=[
            ("Connection", "X-Private, keep-alive"), ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
            ("TE", "gzip"), ("X-Public", "visible"), ("Upgrade", "h2c")])
        e = r.json()
        self.assertEqual(hdr(e, "X-Private"), [])
        self.assertEqual(hdr(e, "Keep-Alive"), [])
        self.assertEqual(hdr(e, "Upgrade"), [])
        self.assertEqual(hdr(e, "TE"), [])
        self.assertEqual(hdr(e, "X-Public"), ["visible"])
        for v in hdr(e, "Connection"):
            self.assertNotIn("x-private", v.lower())

    def test_hop_by_hop_response_headers_removed(self):
        with RawConn(self.gh.port) as c:
            r = c.request("GET", "/hop")
            self.assertEqual(r.status, 200)
            self.assertIsNone(r.header("x-resp-hop"))
            self.assertIsNone(r.header("keep-alive"))
            self.assertEqual(r.header("x-resp-end"), "kept")
            for v in r.header_all("connection"):
                self.assertNotIn("x-resp-hop", v.lower())

    def test_via_and_forwarded_headers(self):
        r = request(self.gh.port, "GET", "/fwd", host="Shop.Example:8080", headers=[
            ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test")])
        e = r.json()
        via = hdr(e, "Via")
        self.assertEqual(len(via), 1, e["headers"])
        self.assertRegex(via[0], r"^1\.1 \S+")
        # Not trusted by default: the client's claims are replaced, not appended to.
        self.assertEqual(hdr(e, "X-Forwarded-For"), ["127.0.0.1"])
        self.assertEqual(hdr(e, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(hdr(e, "X-Forwarded-Host"), ["Shop.Example:8080"])
        self.assertEqual(hdr(e, "Host"), ["Shop.Example:8080"])

    def test_identity_headers_from_client_removed(self):
        """X-Gatehouse-* from the client never reaches the backend, even on a public route."""
        e = request(self.gh.port, "GET", "/spoof", headers=[
            ("X-Gatehouse-User", "admin"), ("x-gatehouse-groups", "admins"),
            ("X-Gatehouse-Assertion", "forged"), ("X-Other", "kept")]).json()
        names = [k.lower() for k, _ in e["headers"]]
        self.assertFalse([n for n in names if n.startswith("x-gatehouse-")], e["headers"])
        self.assertIn("x-other", names)

    def test_response_streamed_not_buffered(self):
        """The first chunk reaches the client while the backend is still sending:
        the backend holds the rest of the body back until the client has read
        the first chunk, so a proxy that buffers the response never delivers it."""
        with RawConn(self.gh.port, timeout=15) as c:
            c.send(build_request("GET", "/chunked?chunks=5&size=10&gate=streamed"))
            try:
                start, _ = c.reader.read_head()
                self.assertIn(" 200", start)
                first = c.reader.readline()
                self.assertEqual(first.split(b";")[0].strip(), b"a")
                data = c.reader.read_exact(12)
            except (socket.timeout, TimeoutError):
                self.fail("the response was buffered instead of streamed")
            finally:
                self.backend.open_gate("streamed")
            self.assertEqual(data, b"A" * 10 + b"\r\n")
            c.reader.buf = b"a\r\n" + data + c.reader.buf  # put the first chunk back
            body = c.reader.read_chunked()
        self.assertEqual(body, b"".join(bytes([65 + i]) * 10 for i in range(5)))

    def test_request_id_generated_unique_and_replaced(self):
        ids = set()
        for _ in range(5):
            e = request(self.gh.port, "GET", "/rid").json()
            v = hdr(e, "X-Request-Id")
            self.assertEqual(len(v), 1)
            self.assertGreaterEqual(len(v[0]), 8)
            ids.add(v[0])
        self.assertEqual(len(ids), 5, "request ids repeat")
        e = request(self.gh.port, "GET", "/rid", headers=[("X-Request-Id", "client-chosen")]).json()
        v = hdr(e, "X-Request-Id")
        self.assertEqual(len(v), 1)
        self.assertNotEqual(v[0], "client-chosen")

    def test_client_abort_mid_body_does_not_hurt(self):
        with RawConn(self.gh.port) as c:
            c.send(build_request("POST", "/abort", headers=[("Content-Length", "1000000")]))
            c.send(b"z" * 10000)
        with RawConn(self.gh.port) as c:
            c.send(build_request("GET", "/slow?ms=200"))
        r = request(self.gh.port, "GET", "/after-abort")
        self.assertEqual(r.status, 200)
        self.assertAlive()

    def test_absolute_form_for_own_host(self):
        """RFC 9112: a server must accept absolute-form; the backend gets origin-form."""
        with RawConn(self.gh.port) as c:
            c.send(b"GET http://app.test/abs?q=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["target"], "/abs?q=1")

    def test_http10_request(self):
        with RawConn(self.gh.port) as c:
            c.send(b"GET /ten HTTP/1.0\r\nHost: app.test\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["path"], "/ten")
            self.assertTrue(c.is_closed(5), "HTTP/1.0 without keep-alive must close")


class ClientTimeoutsTest(ProxyCase):
    """Idle keep-alive connections close after timeouts.idle; a client that stops
    sending its body is cut off after timeouts.body."""

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)],
                            timeouts={"idle": "1s", "body": "1s", "header": "5s"})

    def test_idle_keep_alive_closed(self):
        with RawConn(self.gh.port) as c:
            self.assertEqual(c.request("GET", "/idle").status, 200)
            t0 = time.time()
            self.assertTrue(c.is_closed(5), "idle keep-alive connection never closed")
            self.assertGreater(time.time() - t0, 0.7)
            self.assertLess(time.time() - t0, 3.5)

    def test_stalled_body_cut_off(self):
        with RawConn(self.gh.port) as c:
            c.send(build_request("POST", "/stall-body", headers=[("Content-Length", "1000")]))
            c.send(b"0123456789")
            t0 = time.time()
            c.sock.settimeout(6)
            try:
                data = c.reader.read_to_eof()
            except (ConnectionResetError, OSError):
                data = b""
            elapsed = time.time() - t0
            self.assertLess(elapsed, 4.0, "a stalled request body was waited for too long")
            self.assertNotIn(b" 200 ", data[:20])
        self.assertAlive()


class ConnectionLimitTest(ProxyCase):
    """limits.connections: connections beyond the limit are closed at once."""

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)], limits={"connections": 4})

    def open_connections(self):
        from test_admin import parse_metrics
        _, samples = parse_metrics(http_get(self.gh.admin_port, "/metrics").body.decode())
        return sum(v for n, _, v in samples if n == "gatehouse_connections_open")

    def only_the_scrape_open(self):
        """The scrape itself is the only open connection."""
        try:
            return self.open_connections() <= 1
        except (ConnectionClosed, OSError):
            return False

    def test_connection_limit(self):
        # The harness's readiness probes (connect, close) may still be counted for a
        # moment; the only connection left open is this metrics scrape itself.
        self.assertTrue(wait_until(self.only_the_scrape_open, 10, 0.05))
        held = []
        try:
            for _ in range(4):
                # A readiness probe still in the accept queue can take a slot for a
                # moment: a refused connection here is retried, it is not the check.
                for _attempt in range(5):
                    c = RawConn(self.gh.port)
                    try:
                        self.assertEqual(c.request("GET", "/held").status, 200)
                        held.append(c)
                        break
                    except (ConnectionClosed, ConnectionResetError):
                        c.close()
                        time.sleep(0.2)
            self.assertEqual(len(held), 4)
            with RawConn(self.gh.port) as extra:
                try:
                    extra.send(build_request("GET", "/extra"))
                    closed = extra.is_closed(5)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                self.assertTrue(closed, "a connection over limits.connections was served")
            # The admin listener has a limit of its own: at the client limit, health
            # checks and scrapes are still answered.
            self.assertEqual(http_get(self.gh.admin_port, "/readyz").status, 200)
            self.assertGreaterEqual(self.open_connections(), 4)
        finally:
            for c in held:
                c.close()
        # The closed connections free their slots once the worker has seen them end.
        self.assertTrue(wait_until(self.only_the_scrape_open, 10, 0.05))
        self.assertEqual(request(self.gh.port, "GET", "/after-limit").status, 200)


class ConcurrencyTest(ProxyCase):
    """Two workers (each with its own SO_REUSEPORT listener) under concurrent
    keep-alive clients with bodies: every answer belongs to its own request."""
    nbackends = 2

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)], workers=2)

    def test_concurrent_clients(self):
        errors = []

        def client(i):
            try:
                with RawConn(self.gh.port) as c:
                    for j in range(25):
                        body = os.urandom(100 + (i * 31 + j * 17) % 20000)
                        r = c.request("POST", f"/c/{i}/{j}", body=body)
                        e = r.json()
                        if (r.status != 200 or e["path"] != f"/c/{i}/{j}" or
                                e["body_sha256"] != hashlib.sha256(body).hexdigest()):
                            errors.append(f"client {i} request {j}: {r.status} {e['path']}")
            except Exception as ex:  # noqa: BLE001 - any failure is a test failure
                errors.append(f"client {i}: {ex!r}")
        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(sum(b.hits() for b in self.backends), 12 * 25)
        self.assertAlive()


class TrustedRequestIdTest(ProxyCase):
    """A listener with trust_request_id/trust_forwarded keeps the client's values."""

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)], listen=[
            {"address": f"127.0.0.1:{free_port()}"},
            {"address": f"127.0.0.1:{free_port()}", "trust_request_id": True,
             "trust_forwarded": True}])

    def test_untrusted_listener_replaces(self):
        e = request(self.gh.ports()[0], "GET", "/t", headers=[("X-Request-Id", "abc-123")]).json()
        self.assertNotEqual(hdr(e, "X-Request-Id"), ["abc-123"])

    def test_trusted_listener_keeps_request_id(self):
        e = request(self.gh.ports()[1], "GET", "/t", headers=[("X-Request-Id", "abc-123")]).json()
        self.assertEqual(hdr(e, "X-Request-Id"), ["abc-123"])

    def test_trusted_listener_generates_when_absent(self):
        e = request(self.gh.ports()[1], "GET", "/t").json()
        v = hdr(e, "X-Request-Id")
        self.assertEqual(len(v), 1)
        self.assertGreaterEqual(len(v[0]), 8)

    def test_trusted_listener_appends_forwarded_for(self):
        e = request(self.gh.ports()[1], "GET", "/t",
                    headers=[("X-Forwarded-For", "10.1.2.3")]).json()
        xff = ",".join(hdr(e, "X-Forwarded-For")).replace(" ", "")
        self.assertEqual(xff, "10.1.2.3,127.0.0.1")


class RssSampler(threading.Thread):
    def __init__(self, gh):
        super().__init__(daemon=True)
        self.gh = gh
        self.peak = 0
        self.running = True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, self.gh.rss_kb())
            except OSError:
                return
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.join()
        return self.peak


class LargeBodyTest(ProxyCase):
    """100 MB each way, with a slow consumer on the other side; RSS stays flat."""
    # Under ASan a small quarantine keeps freed buffers from looking like growth.
    gh_env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=4"}
    SIZE = 100 * 1024 * 1024
    MAX_GROWTH_KB = 30 * 1024

    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)], limits={"body_bytes": "200m"},
                            timeouts={"upstream_response": "120s", "body": "60s"})

    def warm(self):
        # Allocate whatever a first request allocates before taking the baseline.
        with RawConn(self.gh.port) as c:
            c.request("POST", "/warm", body=b"w" * 300000)
            c.request("GET", "/large?bytes=300000")
        time.sleep(0.2)
        return self.gh.rss_kb()

    def test_100mb_upload_rss_flat(self):
        base = self.warm()
        sampler = RssSampler(self.gh)
        sampler.start()
        with RawConn(self.gh.port, timeout=120) as c:
            # The backend waits 1 s before reading: the proxy must apply back-pressure.
            c.send(build_request("POST", "/upload?read_delay_ms=1000",
                                 headers=[("Content-Length", str(self.SIZE))]))
            for chunk in pattern_chunks(self.SIZE, 1 << 20):
                c.send(chunk)
            r = c.read_response()
        peak = sampler.stop()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["body_len"], self.SIZE)
        self.assertEqual(r.json()["body_sha256"], pattern_sha(self.SIZE))
        self.assertLess(peak - base, self.MAX_GROWTH_KB,
                        f"RSS grew from {base} kB to {peak} kB during a 100 MB upload")

    def test_100mb_download_rss_flat(self):
        base = self.warm()
        sampler = RssSampler(self.gh)
        sampler.start()
        h = hashlib.sha256()
        with RawConn(self.gh.port, timeout=120) as c:
            c.send(build_request("GET", f"/large?bytes={self.SIZE}"))
            start, headers = c.reader.read_head()
            self.assertIn(" 200 ", start + " ")
            time.sleep(1.0)  # a slow client: the proxy must stop reading the backend
            n = 0
            while n < self.SIZE:
                d = c.reader.read_some(min(1 << 20, self.SIZE - n))
                h.update(d)
                n += len(d)
        peak = sampler.stop()
        self.assertEqual(h.hexdigest(), pattern_sha(self.SIZE))
        self.assertLess(peak - base, self.MAX_GROWTH_KB,
                        f"RSS grew from {base} kB to {peak} kB during a 100 MB download")

    def test_100mb_chunked_upload(self):
        base = self.warm()
        sampler = RssSampler(self.gh)
        sampler.start()
        with RawConn(self.gh.port, timeout=120) as c:
            c.send(build_request("POST", "/upload-chunked",
                                 headers=[("Transfer-Encoding", "chunked")]))
            for chunk in pattern_chunks(self.SIZE, 1 << 20):
                c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            c.send(b"0\r\n\r\n")
            r = c.read_response()
        peak = sampler.stop()
        self.assertEqual(r.json()["body_len"], self.SIZE)
        self.assertEqual(r.json()["body_sha256"], pattern_sha(self.SIZE))
        self.assertLess(peak - base, self.MAX_GROWTH_KB)


if __name__ == "__main__":
    unittest.main()
