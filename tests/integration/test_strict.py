"""Request smuggling and desync attempts as raw bytes: each gets 400 and the
connection closes, and nothing reaches the backend. Limits: 431, 413, 414.
Slow clients: 408."""
import random
import time
import unittest

from harness import ProxyCase, RawConn, basic_config, raw_exchange, route

H = "Host: app.test\r\n"


def req(head, body=b""):
    if isinstance(head, str):
        head = head.encode("latin-1")
    return head + body


# name -> raw bytes; every one must be refused with 400 and a closed connection.
BAD = {
    "cl_and_te": req("POST /s HTTP/1.1\r\n" + H + "Content-Length: 5\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n"),
    "te_and_cl": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n"
                     "Content-Length: 5\r\n\r\n", b"0\r\n\r\n"),
    "duplicate_cl_same": req("POST /s HTTP/1.1\r\n" + H + "Content-Length: 5\r\n"
                             "Content-Length: 5\r\n\r\n", b"hello"),
    "conflicting_cl": req("POST /s HTTP/1.1\r\n" + H + "Content-Length: 5\r\n"
                          "Content-Length: 6\r\n\r\n", b"hello!"),
    "cl_list": req("POST /s HTTP/1.1\r\n" + H + "Content-Length: 5, 5\r\n\r\n", b"hello"),
    "cl_plus_sign": req("POST /s HTTP/1.1\r\n" + H + "Content-Length: +5\r\n\r\n", b"hello"),
    "cl_negative": req("POST /s HTTP/1.1\r\n" + H + "Content-Length: -1\r\n\r\n"),
    "cl_not_number": req("POST /s HTTP/1.1\r\n" + H + "Content-Length: 5a\r\n\r\n", b"hello"),
    "te_gzip_only": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: gzip\r\n\r\n", b"x"),
    "te_chunked_not_final": req("POST /s HTTP/1.1\r\n" + H +
                                "Transfer-Encoding: chunked, gzip\r\n\r\n", b"0\r\n\r\n"),
    "te_unknown": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: xchunked\r\n\r\n",
                      b"0\r\n\r\n"),
    "te_identity": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: identity\r\n\r\n"),
    "obs_fold": req("GET /s HTTP/1.1\r\n" + H + "X-Folded: a\r\n  b\r\n\r\n"),
    "obs_fold_tab": req("GET /s HTTP/1.1\r\n" + H + "X-Folded: a\r\n\tb\r\n\r\n"),
    "cr_in_value": req("GET /s HTTP/1.1\r\n" + H + "X-Bad: a\rb\r\n\r\n"),
    "lf_in_value": req("GET /s HTTP/1.1\r\n" + H + "X-Bad: a\nX-Injected: b\r\n\r\n"),
    "nul_in_value": req("GET /s HTTP/1.1\r\n" + H + "X-Bad: a\x00b\r\n\r\n"),
    "nul_in_name": req("GET /s HTTP/1.1\r\n" + H + "X-B\x00ad: a\r\n\r\n"),
    "cr_in_name": req("GET /s HTTP/1.1\r\n" + H + "X-B\rad: a\r\n\r\n"),
    "space_in_name": req("GET /s HTTP/1.1\r\n" + H + "X Bad: a\r\n\r\n"),
    "space_before_colon": req("GET /s HTTP/1.1\r\n" + H + "X-Bad : a\r\n\r\n"),
    "space_before_colon_cl": req("POST /s HTTP/1.1\r\n" + H + "Content-Length : 5\r\n\r\n",
                                 b"hello"),
    "tab_before_colon_te": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding\t: chunked\r\n\r\n",
                               b"0\r\n\r\n"),
    "chunk_size_not_hex": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
                              b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_0x": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
                         b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_overflow": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
                               b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunk_size_negative": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
                               b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk_missing_crlf": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
                              b"5\r\nhelloXX0\r\n\r\n"),
    "chunk_size_lf_only": req("POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
                              b"5\nhello\r\n0\r\n\r\n"),
    "chunk_ext_unterminated_quote": req(
        "POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
        b"5;a=\"open\r\nhello\r\n0\r\n\r\n"),
    "chunk_ext_control_char": req(
        "POST /s HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n",
        b"5;a\x01b\r\nhello\r\n0\r\n\r\n"),
    "absolute_form_other_host": req("GET http://other.test/s HTTP/1.1\r\n" + H + "\r\n"),
    "invalid_method_char": req("G@T /s HTTP/1.1\r\n" + H + "\r\n"),
    "invalid_method_ctl": req("G\x01T /s HTTP/1.1\r\n" + H + "\r\n"),
    "space_in_target": req("GET /a b HTTP/1.1\r\n" + H + "\r\n"),
    "missing_host": req("GET /s HTTP/1.1\r\nX-A: b\r\n\r\n"),
    "two_hosts": req("GET /s HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n"),
    "bad_version": req("GET /s HTTP/1.7x\r\n" + H + "\r\n"),
}


class StrictnessTest(ProxyCase):
    @classmethod
    def config(cls):
        return basic_config([route("app", cls.backends)],
                            limits={"header_bytes": "4k", "headers": 20, "body_bytes": "1m",
                                    "uri_bytes": "1k"},
                            timeouts={"header": "1s"})

    def expect_refused(self, data, status=400):
        self.backend.reset()
        resp, closed = raw_exchange(self.gh.port, data)
        self.assertIsNotNone(resp, "no response at all (connection dropped without a status)")
        self.assertEqual(resp.status, status, resp)
        self.assertTrue(closed, "connection left open after a rejected request")
        # Whatever the framing, no request may have reached the backend.
        self.assertEqual(self.backend.hits(), 0,
                         [r["target"] for r in self.backend.requests])
        return resp

    def test_valid_request_passes(self):
        # The baseline the bad cases are compared against.
        resp, _ = raw_exchange(self.gh.port, b"GET /ok HTTP/1.1\r\n" + H.encode() +
                               b"Connection: close\r\n\r\n")
        self.assertEqual(resp.status, 200)

    def test_control_bytes_in_header_values(self):
        # Header values are checked eight bytes at a time: a control byte (or
        # DEL) anywhere in a long value, at every offset within a word, is a 400;
        # tabs and bytes >= 0x80 are allowed.
        base = "v" * 40
        for bad in (b"\x01", b"\x1f", b"\x7f", b"\x0b", b"\x00"):
            for at in (0, 1, 7, 8, 9, 15, 16, 23, 39):
                value = base[:at].encode() + bad + base[at + 1:].encode()
                with self.subTest(byte=bad, at=at):
                    self.expect_refused(b"GET /ctl HTTP/1.1\r\n" + H.encode() +
                                        b"X-Long: " + value + b"\r\n\r\n")
        for ok in (b"\t", b"\x80", b"\xff", b" "):
            value = b"w" * 13 + ok + b"w" * 20
            resp, _ = raw_exchange(self.gh.port, b"GET /ok HTTP/1.1\r\n" + H.encode() +
                                   b"X-Long: " + value + b"\r\nConnection: close\r\n\r\n")
            self.assertEqual(resp.status, 200, (ok, resp))

    def test_smuggled_pipeline_never_reaches_backend(self):
        data = (b"POST /front HTTP/1.1\r\nHost: app.test\r\nContent-Length: 44\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.backend.reset()
        resp, closed = raw_exchange(self.gh.port, data)
        self.assertEqual(resp.status, 400)
        self.assertTrue(closed)
        time.sleep(0.2)
        self.assertEqual(self.backend.hits("/smuggled"), 0)
        self.assertEqual(self.backend.hits("/front"), 0)

    def test_mutated_requests_never_crash(self):
        """Deterministic mutations of valid and smuggling requests, all at once on
        concurrent connections; afterwards the proxy still serves (the ASan build
        turns any memory error into a failure here)."""
        rnd = random.Random(2026)
        seeds = [b"GET /m HTTP/1.1\r\nHost: app.test\r\nX-A: b\r\n\r\n",
                 b"POST /m HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5;a=b\r\nhello\r\n0\r\nT: x\r\n\r\n",
                 b"POST /m HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello"
                 b"GET /n HTTP/1.1\r\nHost: app.test\r\n\r\n"] + list(BAD.values())
        conns = []
        try:
            for i in range(150):
                data = bytearray(rnd.choice(seeds))
                for _ in range(rnd.randint(1, 4)):
                    op = rnd.randint(0, 3)
                    pos = rnd.randrange(len(data))
                    if op == 0:
                        data[pos] = rnd.randrange(256)
                    elif op == 1:
                        data[pos:pos] = bytes(rnd.choice(b"\r\n :;\x00\t,\"0f") for _ in
                                              range(rnd.randint(1, 3)))
                    elif op == 2:
                        del data[pos:pos + rnd.randint(1, 4)]
                    else:
                        data = data[:pos] + data[pos:] * 2
                c = RawConn(self.gh.port)
                try:
                    c.send(bytes(data))
                except OSError:
                    pass
                conns.append(c)
            time.sleep(0.5)
        finally:
            for c in conns:
                c.close()
        self.assertAlive()
        resp, _ = raw_exchange(self.gh.port, b"GET /ok HTTP/1.1\r\n" + H.encode() +
                               b"Connection: close\r\n\r\n")
        self.assertEqual(resp.status, 200)

    # 431/414/413
    def test_header_bytes_limit_431(self):
        self.expect_refused(b"GET /big HTTP/1.1\r\n" + H.encode() + b"X-Big: " + b"a" * 5000 +
                            b"\r\n\r\n", 431)

    def test_header_count_limit_431(self):
        hs = b"".join(b"X-H%d: v\r\n" % i for i in range(25))
        self.expect_refused(b"GET /many HTTP/1.1\r\n" + H.encode() + hs + b"\r\n", 431)

    def test_header_count_at_limit_passes(self):
        hs = b"".join(b"X-H%d: v\r\n" % i for i in range(15))
        resp, _ = raw_exchange(self.gh.port, b"GET /some HTTP/1.1\r\n" + H.encode() + hs +
                               b"Connection: close\r\n\r\n")
        self.assertEqual(resp.status, 200)

    def test_uri_limit_414(self):
        self.expect_refused(b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\n" + H.encode() + b"\r\n", 414)

    def test_body_limit_413_content_length(self):
        self.expect_refused(b"POST /up HTTP/1.1\r\n" + H.encode() +
                            b"Content-Length: 2000000\r\n\r\n" + b"x" * 1000, 413)

    def test_body_limit_413_with_expect_no_continue(self):
        with RawConn(self.gh.port) as c:
            c.send(b"POST /up HTTP/1.1\r\n" + H.encode() + b"Expect: 100-continue\r\n"
                   b"Content-Length: 2000000\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 413)
            self.assertEqual(r.interim, [], "100 Continue sent for a body that is refused")

    def test_body_limit_413_chunked(self):
        with RawConn(self.gh.port) as c:
            c.send(b"POST /up HTTP/1.1\r\n" + H.encode() + b"Transfer-Encoding: chunked\r\n\r\n")
            try:
                for _ in range(30):  # 30 x 64 KiB = 1.9 MiB > 1m
                    c.send(b"10000\r\n" + b"c" * 65536 + b"\r\n")
                c.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = c.read_response()
            self.assertEqual(r.status, 413)

    # 408
    def test_stalled_header_408(self):
        t0 = time.time()
        with RawConn(self.gh.port) as c:
            c.send(b"GET /stall HTTP/1.1\r\nHost: app.test\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 408)
            self.assertTrue(c.is_closed(5))
        self.assertLess(time.time() - t0, 4.0)

    def test_slowloris_header_408(self):
        """Trickling header bytes does not extend the header timeout."""
        t0 = time.time()
        with RawConn(self.gh.port) as c:
            c.send(b"GET /drip HTTP/1.1\r\nHost: app.test\r\n")
            got = None
            for i in range(40):
                try:
                    c.send(b"X-D%d: v\r\n" % i)
                except (BrokenPipeError, ConnectionResetError):
                    break
                c.sock.settimeout(0.25)
                try:
                    got = c.read_response()
                    break
                except OSError:
                    continue
            self.assertIsNotNone(got, "no 408 while trickling headers for 10 s")
            self.assertEqual(got.status, 408)
        self.assertLess(time.time() - t0, 4.0)


def _make_case(name, data):
    def test(self):
        self.expect_refused(data)
    test.__name__ = f"test_bad_{name}"
    return test


for _n, _d in BAD.items():
    setattr(StrictnessTest, f"test_bad_{_n}", _make_case(_n, _d))


if __name__ == "__main__":
    unittest.main()
