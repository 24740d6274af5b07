"""Pipelined requests on one connection, plain and TLS: every response comes back
in order and whole (proxied, answered locally, HEAD, large bodies, a request body,
Connection: close ending the batch), and the answers to one pipelined batch leave
together: the write() calls of the gatehouse process (its /proc/<pid>/io syscw,
which counts write(2) and therefore SSL_write on a TLS connection) stay far below
one per response."""
import os
import shutil
import ssl
import tempfile
import unittest

from harness import CertFactory, ProxyCase, RawConn, basic_config, build_request, free_port, route


def write_calls(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    raise AssertionError("no syscw in /proc/<pid>/io")


class PipeliningTest(ProxyCase):
    @classmethod
    def config(cls):
        cls.tmp = tempfile.mkdtemp(prefix="gh-it-pipe-")
        cls.ca = CertFactory(os.path.join(cls.tmp, "pki"))
        crt, key = cls.ca.leaf("app.test", dns=["app.test"])
        cls.plain_port, cls.tls_port = free_port(), free_port()
        # Only app.test has a route: other hosts are answered locally (404).
        return basic_config([route("app", cls.backends, host="app.test")], listen=[
            {"address": f"127.0.0.1:{cls.plain_port}"},
            {"address": f"127.0.0.1:{cls.tls_port}", "tls": {"cert": crt, "key": key}}])

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def conn(self, tls):
        if not tls:
            return RawConn(self.plain_port)
        ctx = ssl.create_default_context(cafile=self.ca.ca_crt)
        return RawConn(self.tls_port, tls=ctx, server_hostname="app.test")

    def mixed_batch(self, tls):
        """One write of 40 requests of every kind; the answers, checked one by one."""
        plan = []  # (method, request bytes, check)
        for i in range(40):
            if i == 7:
                plan.append(("POST", build_request("POST", f"/p/{i}", body=b"b" * 5000),
                             ("echo", f"/p/{i}")))
            elif i == 11:
                plan.append(("GET", build_request("GET", f"/p/{i}", host="other.test"),
                             ("status", 404)))
            elif i == 17:
                plan.append(("HEAD", build_request("HEAD", f"/p/{i}"), ("status", 200)))
            elif i == 23:
                plan.append(("GET", build_request("GET", "/large?bytes=300000"),
                             ("length", 300000)))
            else:
                plan.append(("GET", build_request("GET", f"/p/{i}"), ("echo", f"/p/{i}")))
        with self.conn(tls) as c:
            c.send(b"".join(p[1] for p in plan))
            for i, (method, _, (kind, want)) in enumerate(plan):
                r = c.read_response(method)
                if kind == "echo":
                    self.assertEqual(r.status, 200, (i, r))
                    self.assertEqual(r.json()["path"], want, i)
                elif kind == "status":
                    self.assertEqual(r.status, want, (i, r))
                    if method == "HEAD":
                        self.assertEqual(r.body, b"", i)
                else:
                    self.assertEqual(r.status, 200, (i, r))
                    self.assertEqual(len(r.body), want, i)
            self.assertEqual(self.backend.last("/p/7")["body_len"], 5000)
            # Still a keep-alive connection after the batch.
            self.assertEqual(c.request("GET", "/p/after").json()["path"], "/p/after")

    def test_mixed_batch_in_order_plain(self):
        self.mixed_batch(tls=False)

    def test_mixed_batch_in_order_tls(self):
        self.mixed_batch(tls=True)

    def close_ends_batch(self, tls):
        """Connection: close in the middle: the requests before it are answered, in
        order, the close one says so, and nothing after it is answered or forwarded."""
        reqs = b"".join(build_request("GET", f"/c/{i}") for i in range(5))
        reqs += build_request("GET", "/c/last", headers=[("Connection", "close")])
        reqs += b"".join(build_request("GET", f"/c/never-{i}") for i in range(3))
        before = self.backend.hits("/c/never-0")
        with self.conn(tls) as c:
            c.send(reqs)
            for i in range(5):
                self.assertEqual(c.read_response().json()["path"], f"/c/{i}")
            r = c.read_response()
            self.assertEqual(r.json()["path"], "/c/last")
            self.assertEqual((r.header("connection") or "").lower(), "close")
            self.assertTrue(c.is_closed(5.0), "connection not closed after Connection: close")
        self.assertEqual(self.backend.hits("/c/never-0"), before)

    def test_connection_close_ends_batch_plain(self):
        self.close_ends_batch(tls=False)

    def test_connection_close_ends_batch_tls(self):
        self.close_ends_batch(tls=True)

    def test_local_answers_of_a_batch_leave_in_few_writes(self):
        """50 pipelined requests answered by Gatehouse itself (no route for the
        host) in one TLS record: they are answered in one pass, so they leave in
        a handful of write() calls, not one per response."""
        n = 50
        reqs = b"".join(build_request("GET", f"/none/{i}", host="other.test") for i in range(n))
        with self.conn(tls=True) as c:
            self.assertEqual(c.request("GET", "/warm").status, 200)  # handshake done
            w0 = write_calls(self.gh.pid)
            c.send(reqs)
            for i in range(n):
                r = c.read_response()
                self.assertEqual(r.status, 404, (i, r))
            w1 = write_calls(self.gh.pid)
        self.assertLess(w1 - w0, 10, f"{w1 - w0} write() calls for {n} pipelined answers")

    def test_proxied_batch_in_order_both_listeners(self):
        """Many proxied requests pipelined at once, on TLS and plain, twice each:
        every answer matches its request."""
        for tls in (True, False, True, False):
            with self.conn(tls) as c:
                c.send(b"".join(build_request("GET", f"/q/{tls}/{i}") for i in range(64)))
                for i in range(64):
                    self.assertEqual(c.read_response().json()["path"], f"/q/{tls}/{i}")


if __name__ == "__main__":
    unittest.main()
