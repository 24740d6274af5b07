"""WebSockets through the proxy: echo on a websocket: true route, refused otherwise.
Only a valid RFC 6455 handshake is upgraded, and only a 101 that answers it
(Sec-WebSocket-Accept) opens a tunnel: h2c and other upgrades never carry
requests past the policy."""
import base64
import os
import time
import unittest

from harness import (ProxyCase, RawConn, basic_config, build_request, route, wait_until,
                     ws_accept, ws_frame, ws_read_frame)


def upgrade_request(host, key):
    return build_request("GET", "/ws", host=host, headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13")])


class WebSocketTest(ProxyCase):
    @classmethod
    def config(cls):
        r1 = route("ws", cls.backends, host="ws.test")
        r1["websocket"] = True
        r2 = route("plain", cls.backends, host="plain.test")
        return basic_config([r1, r2], timeouts={"idle": "2s"})

    def open_ws(self):
        key = base64.b64encode(os.urandom(16)).decode()
        c = RawConn(self.gh.port)
        c.send(upgrade_request("ws.test", key))
        r = c.read_response()
        self.assertEqual(r.status, 101, r)
        self.assertEqual(r.header("sec-websocket-accept"), ws_accept(key))
        self.assertEqual((r.header("upgrade") or "").lower(), "websocket")
        return c

    def test_echo_text_and_binary(self):
        with self.open_ws() as c:
            for msg in (b"hello", b"x" * 200, "h\u00e9llo \u2603".encode()):
                c.send(ws_frame(0x1, msg))
                self.assertEqual(ws_read_frame(c.reader), (True, 0x1, msg))
            big = os.urandom(300000)
            c.send(ws_frame(0x2, big))
            fin, op, payload = ws_read_frame(c.reader)
            self.assertEqual((fin, op), (True, 0x2))
            self.assertEqual(payload, big)

    def test_ping_and_close_handshake(self):
        with self.open_ws() as c:
            c.send(ws_frame(0x9, b"pingdata"))
            self.assertEqual(ws_read_frame(c.reader), (True, 0xA, b"pingdata"))
            c.send(ws_frame(0x8, b"\x03\xe8"))
            fin, op, payload = ws_read_frame(c.reader)
            self.assertEqual(op, 0x8)
            self.assertEqual(payload, b"\x03\xe8")
            self.assertTrue(c.is_closed(5), "tunnel not closed after the backend closed")

    def test_many_messages_interleaved(self):
        with self.open_ws() as c:
            msgs = [f"message {i}".encode() for i in range(100)]
            c.send(b"".join(ws_frame(0x1, m) for m in msgs))
            for m in msgs:
                self.assertEqual(ws_read_frame(c.reader)[2], m)

    def test_idle_tunnel_closed_after_idle_timeout(self):
        with self.open_ws() as c:
            c.send(ws_frame(0x1, b"once"))
            ws_read_frame(c.reader)
            t0 = time.time()
            self.assertTrue(c.is_closed(6), "idle websocket tunnel was never closed")
            self.assertLess(time.time() - t0, 5.5)

    def test_client_close_closes_upstream(self):
        c = self.open_ws()
        c.send(ws_frame(0x1, b"bye"))
        self.assertEqual(ws_read_frame(c.reader)[2], b"bye")
        conn = self.backend.last("/ws")["conn"]
        c.close()  # TCP close without a close frame
        self.assertTrue(wait_until(lambda: conn in self.backend.closed_conn_ids, 10),
                        "the upstream side of the tunnel stayed open after the client left")

    def test_upgrade_refused_without_websocket_flag(self):
        key = base64.b64encode(os.urandom(16)).decode()
        with self.backend.lock:
            before = len(self.backend.requests)
        with RawConn(self.gh.port) as c:
            c.send(upgrade_request("plain.test", key))
            r = c.read_response()
            self.assertNotEqual(r.status, 101)
            self.assertIsNone(r.header("sec-websocket-accept"))
        # If it reached the backend at all, it was as a plain request, not an upgrade.
        for rec in self.backend.requests[before:]:
            self.assertNotIn("upgrade", [k.lower() for k, _ in rec["headers"]])


H2C_SETTINGS = "AAMAAABkAARAAAAAAAIAAAAA"


class UpgradeOnlyWebSocketTest(ProxyCase):
    """A websocket: true route forwards Upgrade: websocket with a valid handshake
    and nothing else; the tunnel opens only on the 101 that answers it."""

    @classmethod
    def config(cls):
        r1 = route("ws", cls.backends, host="ws.test")
        r1["websocket"] = True
        return basic_config([r1], timeouts={"idle": "5s"})

    def send(self, path, headers, conn=None):
        c = conn or RawConn(self.gh.port)
        c.send(build_request("GET", path, host="ws.test", headers=headers))
        return c, c.read_response()

    def ws_headers(self, key=None, version="13", upgrade="websocket", drop=()):
        h = [("Upgrade", upgrade), ("Connection", "Upgrade"),
             ("Sec-WebSocket-Key", key or base64.b64encode(os.urandom(16)).decode()),
             ("Sec-WebSocket-Version", version)]
        return [(k, v) for k, v in h if k not in drop]

    def assertRefused(self, headers, path="/ws"):
        before = self.backend.hits(path)
        c, r = self.send(path, headers)
        with c:
            self.assertEqual(r.status, 400, r)
            self.assertIsNone(r.header("sec-websocket-accept"))
            self.assertTrue(c.is_closed(5), "connection left open after a refused handshake")
        self.assertEqual(self.backend.hits(path), before, "refused handshake reached the backend")
        return r

    def test_h2c_upgrade_is_forwarded_as_a_plain_request(self):
        c, r = self.send("/echo", [("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"),
                                   ("HTTP2-Settings", H2C_SETTINGS)])
        with c:
            self.assertEqual(r.status, 200, r)
        got = {k.lower() for k, _ in self.backend.last("/echo")["headers"]}
        self.assertNotIn("upgrade", got)
        self.assertNotIn("http2-settings", got)
        self.assertNotIn("connection", got)

    def test_backend_switching_to_h2c_opens_no_tunnel(self):
        # A backend that answers 101 to the h2c request: no tunnel may open, or
        # a request sent inside it would never be checked or logged.
        c, r = self.send("/switch", [("Upgrade", "h2c"),
                                     ("Connection", "Upgrade, HTTP2-Settings"),
                                     ("HTTP2-Settings", H2C_SETTINGS)])
        with c:
            self.assertEqual(r.status, 502, r)
            try:
                c.send(b"GET /admin HTTP/1.1\r\nHost: ws.test\r\n\r\n")
            except OSError:
                pass
            self.assertTrue(c.is_closed(5), "connection left open after a 101 to h2c")
        time.sleep(0.3)
        self.assertEqual(self.backend.hits("/admin"), 0, "a request went through a tunnel")
        self.assertAlive()

    def test_websocket_without_key_is_refused(self):
        self.assertRefused(self.ws_headers(drop=("Sec-WebSocket-Key",)))

    def test_websocket_with_a_bad_key_is_refused(self):
        for key in ("abc", "dGhlIHNhbXBsZSBub25jZQ", base64.b64encode(os.urandom(17)).decode(),
                    "!!!!!!!!!!!!!!!!!!!!!!=="):
            with self.subTest(key=key):
                self.assertRefused(self.ws_headers(key=key))

    def test_websocket_with_a_wrong_or_missing_version_is_refused(self):
        self.assertRefused(self.ws_headers(version="8"))
        self.assertRefused(self.ws_headers(drop=("Sec-WebSocket-Version",)))

    def test_websocket_listed_with_h2c_is_refused(self):
        self.assertRefused(self.ws_headers(upgrade="WebSocket, h2c"))
        self.assertRefused(self.ws_headers(upgrade="h2c, websocket"))

    def test_101_with_a_wrong_accept_opens_no_tunnel(self):
        c, r = self.send("/ws-badaccept", self.ws_headers())
        with c:
            self.assertEqual(r.status, 502, r)
            self.assertIsNone(r.header("sec-websocket-accept"))
            try:
                c.send(ws_frame(0x1, b"through?"))
            except OSError:
                pass
            self.assertTrue(c.is_closed(5), "connection left open after a bad 101")

    def test_genuine_websocket_still_works(self):
        key = base64.b64encode(os.urandom(16)).decode()
        # Firefox's spelling: "keep-alive, Upgrade" and a capitalised token.
        c, r = self.send("/ws", [("Upgrade", "WebSocket"), ("Connection", "keep-alive, Upgrade"),
                                 ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
        with c:
            self.assertEqual(r.status, 101, r)
            self.assertEqual(r.header("sec-websocket-accept"), ws_accept(key))
            c.send(ws_frame(0x1, b"still works"))
            self.assertEqual(ws_read_frame(c.reader), (True, 0x1, b"still works"))


if __name__ == "__main__":
    unittest.main()
