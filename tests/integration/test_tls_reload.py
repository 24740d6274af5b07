"""Issue 10.5: a certificate renewed at the same path is picked up.

Certbot and cert-manager replace the files in place. Gatehouse reloads a
listener's certificate and key when their content changes, by itself within a
few seconds and on SIGHUP; new handshakes get the new certificate, connections
already open keep theirs; a certificate and key that do not match keep the old
pair with a config file:line:col log line; the new certificate's subject and
expiry are logged, and gatehouse_tls_certificate_expiry_seconds{listener,sni}
follows. Certificates are made at test time with the openssl CLI."""
import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
import time
import unittest

from harness import (Backend, CertFactory, ConnectionClosed, Gatehouse, Reader, basic_config,
                     free_port, http_get, openssl, route, wait_until)


def leaf(ca, name, dns, days):
    """A leaf for CN=name signed by ca, valid for days; returns (crt, key) bytes."""
    d = tempfile.mkdtemp(dir=ca.dir)
    key, csr, crt, ext = (os.path.join(d, n) for n in ("k.pem", "r.csr", "c.pem", "e.ext"))
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "subjectAltName=" + ",".join(f"DNS:{x}" for x in dns) + "\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", csr, "-CA", ca.ca_crt, "-CAkey", ca.ca_key,
            "-CAcreateserial", "-out", crt, "-days", str(days), "-extfile", ext)
    with open(crt, "rb") as f1, open(key, "rb") as f2:
        return f1.read(), f2.read()


class TlsReload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="gh-it-tlsr-")
        cls.ca = CertFactory(os.path.join(cls.tmp, "pki"))
        cls.live = os.path.join(cls.tmp, "live")
        os.makedirs(cls.live)
        cls.crt = os.path.join(cls.live, "fullchain.pem")
        cls.key = os.path.join(cls.live, "privkey.pem")
        cls.first = leaf(cls.ca, "first", ["a.test"], 2)
        cls.put(cls.first)
        cls.backend = Backend("b1")
        cls.port = free_port()
        cfg = basic_config([route("app", [cls.backend])], listen=[
            {"address": f"127.0.0.1:{cls.port}", "tls": {"cert": cls.crt, "key": cls.key}}])
        try:
            cls.gh = Gatehouse(cfg)
        except Exception:
            cls.backend.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()
        cls.gh.finish()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def put(cls, pair, in_place=False):
        """Installs (crt, key): renamed over the old files as certbot does, or
        rewritten in place."""
        for path, data in ((cls.key, pair[1]), (cls.crt, pair[0])):
            if in_place:
                with open(path, "r+b" if os.path.exists(path) else "wb") as f:
                    f.truncate(0)
                    f.write(data)
            else:
                with open(path + ".new", "wb") as f:
                    f.write(data)
                os.replace(path + ".new", path)

    def context(self):
        ctx = ssl.create_default_context(cafile=self.ca.ca_crt)
        return ctx

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return self.context().wrap_socket(s, server_hostname="a.test")

    def served_cn(self):
        with self.connect() as s:
            cert = s.getpeercert()
        return dict(x[0] for x in cert["subject"])["commonName"]

    def setUp(self):
        # Each test starts from the first certificate being served.
        if self.served_cn() != "first":
            self.put(self.first)
            self.assertTrue(wait_until(lambda: self.served_cn() == "first", timeout=8))
        self.mark = len(self.gh.stderr())

    def new_log(self):
        return self.gh.stderr()[self.mark:]

    def expiry_metric(self):
        body = http_get(self.gh.admin_port, "/metrics").body.decode()
        m = re.search(r'^gatehouse_tls_certificate_expiry_seconds\{listener="127\.0\.0\.1:%d",'
                      r'sni="a\.test"\} (-?\d+)$' % self.port, body, re.M)
        self.assertIsNotNone(m, body[-3000:])
        return int(m.group(1))

    def test_issue_10_5_renamed_over_is_served_without_a_signal(self):
        # An open connection keeps the certificate it was made with.
        old = self.connect()
        rd = Reader(old)
        old.sendall(b"GET /keep HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.assertEqual(rd.read_response().status, 200)
        self.put(leaf(self.ca, "renewed", ["a.test"], 30))
        self.assertTrue(wait_until(lambda: self.served_cn() == "renewed", timeout=8),
                        self.new_log())
        self.assertRegex(self.new_log(), r'certificate %s reloaded: subject \\"CN=renewed\\", '
                         r'expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ' % re.escape(self.crt))
        old.sendall(b"GET /keep HTTP/1.1\r\nHost: a.test\r\n\r\n")
        self.assertEqual(rd.read_response().status, 200)
        self.assertEqual(dict(x[0] for x in old.getpeercert()["subject"])["commonName"],
                         "first")
        old.close()
        # 30 days ahead now, not 2.
        self.assertGreater(self.expiry_metric(), 29 * 86400)

    def test_issue_10_5_written_in_place_is_served_without_a_signal(self):
        self.put(leaf(self.ca, "inplace", ["a.test"], 10), in_place=True)
        self.assertTrue(wait_until(lambda: self.served_cn() == "inplace", timeout=8),
                        self.new_log())
        self.assertGreater(self.expiry_metric(), 9 * 86400)
        self.assertLess(self.expiry_metric(), 10 * 86400 + 60)

    def test_issue_10_5_a_bad_pair_keeps_the_old_one(self):
        a = leaf(self.ca, "bad-a", ["a.test"], 30)
        b = leaf(self.ca, "bad-b", ["a.test"], 30)
        self.put((a[0], b[1]))  # a certificate with another key
        self.assertTrue(wait_until(lambda: "still serving the previous certificate"
                                   in self.new_log(), timeout=8), self.new_log())
        log = self.new_log()
        self.assertRegex(log, re.escape(self.gh.config_path) + r":\d+:\d+: error: listener "
                         r"127\.0\.0\.1:%d: cannot load key %s: "
                         % (self.port, re.escape(self.key)))
        self.assertIn("key values mismatch", log)
        for _ in range(3):
            self.assertEqual(self.served_cn(), "first")
        # Refused once, not again every poll while the files stay the same.
        time.sleep(4.5)
        self.assertEqual(self.new_log().count("still serving the previous certificate"), 1,
                         self.new_log())
        self.assertEqual(self.served_cn(), "first")
        self.assertLess(self.expiry_metric(), 2 * 86400 + 60)
        self.assertIsNone(self.gh.proc.poll())

    def test_issue_10_5_sighup_reloads_the_certificate(self):
        a = leaf(self.ca, "hup-a", ["a.test"], 30)
        b = leaf(self.ca, "hup-b", ["a.test"], 30)
        self.put((a[0], b[1]))
        self.assertTrue(wait_until(lambda: "still serving the previous certificate"
                                   in self.new_log(), timeout=8), self.new_log())
        # SIGHUP tries the same (bad) content again, and says so.
        self.gh.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.new_log().count(
            "still serving the previous certificate") == 2, timeout=5), self.new_log())
        self.put(a)
        self.gh.signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.served_cn() == "hup-a", timeout=15),
                        self.new_log())
        self.assertIn('subject \\"CN=hup-a\\"', self.new_log())


if __name__ == "__main__":
    unittest.main()


class ClientCaReload(unittest.TestCase):
    """The client (device) CA file is watched like the certificate: a replaced CA
    bundle decides the next handshakes."""

    def test_issue_10_5_replaced_client_ca_is_used_without_a_signal(self):
        tmp = tempfile.mkdtemp(prefix="gh-it-tlsca-")
        self.addCleanup(shutil.rmtree, tmp, True)
        server_ca = CertFactory(os.path.join(tmp, "server"))
        crt, key = server_ca.leaf("a.test", dns=["a.test"])
        devices_a = CertFactory(os.path.join(tmp, "devices-a"), "Devices A")
        devices_b = CertFactory(os.path.join(tmp, "devices-b"), "Devices B")
        dev_crt, dev_key = devices_b.leaf("laptop-b")
        client_ca = os.path.join(tmp, "devices-ca.pem")
        shutil.copy(devices_a.ca_crt, client_ca)
        backend = Backend("b1")
        self.addCleanup(backend.stop)
        port = free_port()
        cfg = basic_config([route("app", [backend])], listen=[
            {"address": f"127.0.0.1:{port}",
             "tls": {"cert": crt, "key": key, "client_ca": client_ca,
                     "client_cert": "required"}}])
        gh = Gatehouse(cfg)
        self.addCleanup(gh.cleanup)

        def status():
            ctx = ssl.create_default_context(cafile=server_ca.ca_crt)
            ctx.load_cert_chain(dev_crt, dev_key)
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                with ctx.wrap_socket(s, server_hostname="a.test") as t:
                    t.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                    return Reader(t).read_response().status
            except (ssl.SSLError, OSError, ConnectionClosed):
                return None

        self.assertIsNone(status())  # signed by B, only A is trusted
        with open(client_ca + ".new", "wb") as f:
            with open(devices_b.ca_crt, "rb") as src:
                f.write(src.read())
        os.replace(client_ca + ".new", client_ca)
        self.assertTrue(wait_until(lambda: status() == 200, timeout=8), gh.stderr()[-2000:])


class ClientCrlReload(unittest.TestCase):
    """A new CRL at the same path revokes for the next handshakes, without a signal."""

    def test_issue_10_5_replaced_crl_revokes_without_a_signal(self):
        tmp = tempfile.mkdtemp(prefix="gh-it-tlscrl-")
        self.addCleanup(shutil.rmtree, tmp, True)
        server_ca = CertFactory(os.path.join(tmp, "server"))
        crt, key = server_ca.leaf("a.test", dns=["a.test"])
        devices = CertFactory(os.path.join(tmp, "devices"), "Devices")
        dev_crt, dev_key = devices.leaf("laptop")
        cnf = os.path.join(devices.dir, "ca.cnf")
        with open(cnf, "w") as f:
            f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
                    "default_md = sha256\ndefault_crl_days = 2\n")
        open(os.path.join(devices.dir, "index.txt"), "w").close()
        with open(os.path.join(devices.dir, "crlnumber"), "w") as f:
            f.write("1000\n")

        def gencrl(out):
            openssl("ca", "-config", cnf, "-keyfile", devices.ca_key, "-cert", devices.ca_crt,
                    "-gencrl", "-out", out, cwd=devices.dir)

        crl = os.path.join(tmp, "devices.crl")
        gencrl(crl)
        backend = Backend("b1")
        self.addCleanup(backend.stop)
        port = free_port()
        cfg = basic_config([route("app", [backend])], listen=[
            {"address": f"127.0.0.1:{port}",
             "tls": {"cert": crt, "key": key, "client_ca": devices.ca_crt,
                     "client_crl": crl, "client_cert": "required"}}])
        gh = Gatehouse(cfg)
        self.addCleanup(gh.cleanup)

        def status():
            ctx = ssl.create_default_context(cafile=server_ca.ca_crt)
            ctx.load_cert_chain(dev_crt, dev_key)
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                with ctx.wrap_socket(s, server_hostname="a.test") as t:
                    t.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                    return Reader(t).read_response().status
            except (ssl.SSLError, OSError, ConnectionClosed):
                return None

        self.assertEqual(status(), 200)
        openssl("ca", "-config", cnf, "-keyfile", devices.ca_key, "-cert", devices.ca_crt,
                "-revoke", dev_crt, cwd=devices.dir)
        gencrl(crl + ".new")
        os.replace(crl + ".new", crl)
        self.assertTrue(wait_until(lambda: status() is None, timeout=8), gh.stderr()[-2000:])
        self.assertIn("reloaded", gh.stderr())
