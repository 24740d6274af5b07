"""TLS listener: SNI picks among two certificates, TLS 1.2/1.3 only, ALPN
http/1.1, session resumption, curl over https. Certificates are made at test
time with the openssl CLI."""
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import unittest
import warnings

from harness import (Backend, CertFactory, Gatehouse, RawConn, basic_config, free_port,
                     route)


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="gh-it-tls-")
        cls.ca = CertFactory(os.path.join(cls.tmp, "pki"))
        a_crt, a_key = cls.ca.leaf("a.test", dns=["a.test"])
        b_crt, b_key = cls.ca.leaf("b.test", dns=["b.test", "*.b.test"])
        cls.backend = Backend("b1")
        cls.tls_port = free_port()
        cfg = basic_config([route("app", [cls.backend])], listen=[
            {"address": f"127.0.0.1:{free_port()}"},
            {"address": f"127.0.0.1:{cls.tls_port}",
             "tls": {"cert": a_crt, "key": a_key,
                     "certificates": [{"cert": b_crt, "key": b_key}]}}])
        try:
            cls.gh = Gatehouse(cfg)
        except Exception:
            cls.backend.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        cls.gh.finish()

    def s_client(self, *args, stdin=b"", timeout=10):
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.tls_port}",
               "-CAfile", self.ca.ca_crt, *args]
        if stdin:
            cmd.append("-ign_eof")  # wait for the server's answer (and TLS 1.3 tickets)
        r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
        return r.returncode, r.stdout.decode("utf-8", "replace") + r.stderr.decode("utf-8",
                                                                                   "replace")

    def served_cn(self, servername):
        args = ["-servername", servername] if servername else ["-noservername"]
        code, out = self.s_client(*args)
        self.assertEqual(code, 0, out)
        for line in out.splitlines():
            if line.strip().startswith("subject="):
                return line.split("CN", 1)[1].lstrip(" =").strip()
        self.fail("no subject in s_client output:\n" + out)

    def test_sni_chooses_certificate(self):
        self.assertEqual(self.served_cn("a.test"), "a.test")
        self.assertEqual(self.served_cn("b.test"), "b.test")
        self.assertEqual(self.served_cn("x.b.test"), "b.test")

    def test_default_certificate_without_or_unknown_sni(self):
        self.assertEqual(self.served_cn(None), "a.test")
        self.assertEqual(self.served_cn("unknown.test"), "a.test")

    def test_verification_succeeds(self):
        code, out = self.s_client("-servername", "b.test", "-verify_return_error",
                                  "-verify_hostname", "b.test")
        self.assertEqual(code, 0, out)
        self.assertIn("Verify return code: 0 (ok)", out)

    def test_tls_1_1_refused(self):
        code, out = self.s_client("-servername", "a.test", "-tls1_1",
                                  "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertNotEqual(code, 0, out)
        # The client did offer TLS 1.1 and the server answered with a protocol_version
        # alert (so this tests the server's refusal, not a client that cannot offer it).
        self.assertNotIn("no protocols available", out)
        self.assertIn("alert protocol version", out)
        self.assertIn("Cipher is (NONE)", out)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca.ca_crt)
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
        with warnings.catch_warnings():  # deprecated on purpose: this is the old client
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as s:
            with self.assertRaises(ssl.SSLError):
                ctx.wrap_socket(s, server_hostname="a.test").close()

    def test_tls_1_2_and_1_3_accepted(self):
        for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            code, out = self.s_client("-servername", "a.test", flag)
            self.assertEqual(code, 0, out)
            self.assertIn(name, out)

    def test_alpn_http11(self):
        code, out = self.s_client("-servername", "a.test", "-alpn", "h2,http/1.1")
        self.assertEqual(code, 0, out)
        self.assertIn("ALPN protocol: http/1.1", out)

    def session_reused(self, version_flag, stdin):
        sess = os.path.join(self.tmp, f"sess{version_flag}.pem")
        code, out = self.s_client("-servername", "a.test", version_flag, "-sess_out", sess,
                                  stdin=stdin)
        self.assertEqual(code, 0, out)
        self.assertTrue(os.path.exists(sess), "no session was saved:\n" + out)
        code, out = self.s_client("-servername", "a.test", version_flag, "-sess_in", sess,
                                  stdin=stdin)
        self.assertEqual(code, 0, out)
        return out

    def test_session_resumption_tls12(self):
        out = self.session_reused("-tls1_2", b"")
        self.assertIn("Reused, TLSv1.2", out)

    def test_session_resumption_tls13(self):
        # TLS 1.3 tickets arrive after the handshake: send a request and read the
        # answer so s_client receives them before it saves the session.
        req = b"GET /resume HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        out = self.session_reused("-tls1_3", req)
        self.assertIn("Reused, TLSv1.3", out)

    def test_curl_over_https(self):
        url = f"https://b.test:{self.tls_port}/via-curl"
        r = subprocess.run(["curl", "-sS", "--cacert", self.ca.ca_crt, "--resolve",
                            f"b.test:{self.tls_port}:127.0.0.1", "-D", "-", url],
                           capture_output=True, timeout=15)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout.decode()
        self.assertTrue(out.startswith("HTTP/1.1 200"), out)
        self.assertIn('"path": "/via-curl"', out)
        # The backend is told the client came over https.
        self.assertIn('["X-Forwarded-Proto", "https"]', out)

    def test_keep_alive_over_tls(self):
        ctx = ssl.create_default_context(cafile=self.ca.ca_crt)
        ctx.set_alpn_protocols(["http/1.1"])
        with RawConn(self.tls_port, tls=ctx, server_hostname="a.test") as c:
            self.assertEqual(c.sock.selected_alpn_protocol(), "http/1.1")
            for i in range(5):
                r = c.request("GET", f"/tls/{i}", host="a.test")
                self.assertEqual(r.json()["path"], f"/tls/{i}")
            r = c.request("GET", "/large?bytes=2000000", host="a.test")
            self.assertEqual(len(r.body), 2000000)

    def test_plain_listener_alongside(self):
        with RawConn(self.gh.ports()[0]) as c:
            self.assertEqual(c.request("GET", "/plain").status, 200)

    def test_plain_http_on_tls_port_refused(self):
        with RawConn(self.tls_port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            c.sock.settimeout(5)
            try:
                data = c.sock.recv(4096)
            except (ConnectionResetError, socket.timeout):
                data = b""
            self.assertNotIn(b"HTTP/1.1 200", data)
        self.assertIsNone(self.gh.proc.poll())


if __name__ == "__main__":
    unittest.main()
