"""WebSockets through the proxy: echo on a websocket: true route, refused otherwise."""
import base64
import os
import time
import unittest

from harness import (ProxyCase, RawConn, basic_config, build_request, route, wait_until, ws_accept,
                     ws_frame, ws_read_frame)


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
        self.assertTrue(wait_until(lambda: conn in self.backend.closed_conn_ids, 3),
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


if __name__ == "__main__":
    unittest.main()
