"""Gatehouse's own pages and JSON answers (error pages 400/404/502/503, the
sign-in chooser, me, signed-out, denied, the redirect to sign-in, the 401 for
API clients, jwks.json, the admin listener) carry the security headers: a
Content-Security-Policy that loads nothing but Gatehouse's stylesheet, never
lets the page be framed, and lets its forms go only to Gatehouse and the
identity providers; X-Frame-Options: DENY; X-Content-Type-Options: nosniff;
Referrer-Policy: no-referrer; Cache-Control: no-store. A backend's answers
are left as the backend sent them."""
import threading
import unittest
import urllib.parse

from harness import (Backend, Gatehouse, basic_config, dead_url, free_port, http_get,
                     raw_exchange, wait_until)
from oidc import CLIENT_SECRET, Browser, IdP, client_for, idp_conf
from rogue_op import RogueOP

DENY_ALL = """rules:
  - id: nobody
    effect: deny
    when: {path: {prefix: /}}
    reason: Nobody may open this.
"""


def origin(url):
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


def csp_directives(value):
    out = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


class OwnPagesSecurityHeaders(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        cls.busy = Backend("busy")
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.idp = IdP([client_for(cls.base)])
        cls.rogue = RogueOP(client_secret=CLIENT_SECRET)
        rogue_conf = {"id": "rogue", "type": "oidc", "issuer": cls.rogue.issuer,
                      "client_id": "gatehouse", "client_secret_file": "oidc-secret",
                      "allow_insecure_issuer": True}
        up = {"servers": [cls.backend.url]}
        cfg = basic_config(
            [
                {"name": "dead", "match": {"host": "127.0.0.1", "path_prefix": "/dead/"},
                 "public": True, "upstream": {"servers": [dead_url()], "retries": 0}},
                {"name": "busy", "match": {"host": "busy.test"},
                 "public": True, "upstream": {"servers": [cls.busy.url], "max_conns": 1}},
                {"name": "pub", "match": {"host": "127.0.0.1", "path_prefix": "/pub/"},
                 "public": True, "upstream": up},
                {"name": "denied", "match": {"host": "127.0.0.1", "path_prefix": "/denied/"},
                 "policy": "deny.yaml", "upstream": up},
                {"name": "app", "match": {"host": "127.0.0.1"}, "upstream": up},
            ],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[
                idp_conf(cls.idp, post_logout_redirect_uri=cls.base + "/.gatehouse/signed-out"),
                rogue_conf],
        )
        try:
            cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET, "deny.yaml": DENY_ALL})
        except Exception:
            for s in (cls.idp, cls.rogue, cls.backend, cls.busy):
                s.stop()
            raise
        cls.alice = Browser()
        r = cls.alice.login(cls.base, "/.gatehouse/login?idp=corp&rd=%2Fhello")
        assert r.status == 200, r

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        for s in (cls.idp, cls.rogue, cls.backend, cls.busy):
            s.stop()

    def assertSecured(self, r, cache="no-store"):
        csp = r.header("Content-Security-Policy")
        self.assertIsNotNone(csp, r)
        d = csp_directives(csp)
        self.assertEqual(d.get("default-src"), ["'none'"], csp)
        self.assertEqual(d.get("style-src"), ["'self'"], csp)
        self.assertEqual(d.get("img-src"), ["'self'"], csp)
        self.assertEqual(d.get("frame-ancestors"), ["'none'"], csp)
        fa = d.get("form-action") or []
        self.assertIn("'self'", fa, csp)
        # The sign-in pages send the browser on to the providers.
        self.assertIn(origin(self.idp.issuer), fa, csp)
        self.assertIn(origin(self.rogue.issuer), fa, csp)
        self.assertEqual(r.header("X-Frame-Options"), "DENY", r)
        self.assertEqual(r.header("X-Content-Type-Options"), "nosniff", r)
        self.assertEqual(r.header("Referrer-Policy"), "no-referrer", r)
        self.assertEqual(r.header_all("Cache-Control"), [cache], r)

    def get(self, path, who=None, accept="text/html", host=None):
        b = who or Browser(accept=accept)
        h = {"Accept": accept}
        if host:
            h["Host"] = host
        return b.request(self.base + path, headers=h)

    def test_error_page_400(self):
        r, _ = raw_exchange(self.gh.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n"
                                          b"Accept: text/html\r\n\r\n")
        self.assertEqual(r.status, 400, r)
        self.assertSecured(r)

    def test_error_pages_404_html_and_json(self):
        for accept in ("text/html", "application/json"):
            with self.subTest(accept=accept):
                r = self.get("/x", accept=accept, host="nowhere.test")
                self.assertEqual(r.status, 404, r)
                self.assertSecured(r)
                r = self.get("/.gatehouse/nothing-here", accept=accept)
                self.assertEqual(r.status, 404, r)
                self.assertSecured(r)

    def test_error_page_502(self):
        # A bad upstream answer is 502 (the only server down is 503, below).
        r = self.get("/garbage", host="busy.test")
        self.assertEqual(r.status, 502, r)
        self.assertSecured(r)

    def test_error_page_no_server_is_503(self):
        r = self.get("/dead/x")
        self.assertEqual(r.status, 503, r)
        self.assertIsNotNone(r.header("Retry-After"), r)
        self.assertSecured(r)

    def test_error_page_503(self):
        # The only server's one connection is busy: no server is available.
        slow = threading.Thread(target=self.get, args=("/slow?ms=1500",),
                                kwargs={"host": "busy.test"}, daemon=True)
        slow.start()
        self.assertTrue(wait_until(lambda: self.busy.open_conns > 0, 15))
        r = self.get("/x", host="busy.test")
        slow.join(5)
        self.assertEqual(r.status, 503, r)
        self.assertSecured(r)

    def test_sign_in_chooser_and_redirect(self):
        r = self.get("/.gatehouse/login?rd=%2Fdocs")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"/.gatehouse/login?idp=corp", r.body)
        self.assertSecured(r)
        r = self.get("/docs")
        self.assertEqual(r.status, 302, r)
        self.assertSecured(r)
        r = self.get("/.gatehouse/login?idp=corp&rd=%2Fdocs")
        self.assertEqual(r.status, 302, r)
        self.assertTrue(r.header("Location").startswith(origin(self.idp.issuer)), r)
        self.assertSecured(r)

    def test_me_signed_out_and_denied_pages(self):
        r = self.get("/.gatehouse/me", who=self.alice)
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"alice@example.com", r.body)
        self.assertSecured(r)
        r = self.get("/.gatehouse/signed-out")
        self.assertEqual(r.status, 200, r)
        self.assertSecured(r)
        for accept in ("text/html", "application/json"):
            with self.subTest(accept=accept):
                r = self.get("/denied/x", who=self.alice, accept=accept)
                self.assertEqual(r.status, 403, r)
                self.assertSecured(r)

    def test_json_answers(self):
        r = self.get("/api", accept="application/json")
        self.assertEqual(r.status, 401, r)
        self.assertSecured(r)
        r = self.get("/.gatehouse/jwks.json", accept="application/json")
        self.assertEqual(r.status, 200, r)
        self.assertIn("keys", r.json())
        self.assertSecured(r)

    def test_one_rule_for_html_or_json(self):
        # Whether a client gets a page (and a redirect to sign-in) or JSON (and
        # a 401) is decided the same way for authn's answers as for the rest:
        # a script (any X-Requested-With) gets JSON even when it accepts HTML.
        # authn used to redirect such a script to sign-in from /.gatehouse/me.
        script = {"Accept": "text/html", "X-Requested-With": "fetch"}
        for path in ("/docs", "/.gatehouse/me"):
            with self.subTest(path=path):
                r = Browser().request(self.base + path, headers=script)
                self.assertEqual(r.status, 401, r)
                self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="gatehouse"', r)
                j = r.json()
                self.assertEqual(j["error"], "unauthenticated")
                self.assertEqual(j["request_id"], r.header("X-Request-Id"))
                self.assertSecured(r)
                r = Browser().request(self.base + path, headers={"Accept": "text/html"})
                self.assertEqual(r.status, 302, r)
                self.assertEqual(r.header("Location"),
                                 "/.gatehouse/login?rd=" + urllib.parse.quote(path, safe=""))
        # A sign-in error: the error page for a browser, JSON (with the request
        # id) for a script.
        bad = "/.gatehouse/oidc/callback/corp?code=c&state=s"
        r = Browser().request(self.base + bad, headers=script)
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json()["request_id"], r.header("X-Request-Id"))
        self.assertSecured(r)
        r = Browser().request(self.base + bad, headers={"Accept": "text/html"})
        self.assertEqual(r.status, 400, r)
        self.assertIn("text/html", r.header("Content-Type"))
        self.assertIn(r.header("X-Request-Id").encode(), r.body)
        # /.gatehouse/me: the page for a browser, JSON for an API client.
        r = self.alice.request(self.base + "/.gatehouse/me", headers={"Accept": "*/*"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["email"], "alice@example.com")
        r = self.alice.request(self.base + "/.gatehouse/me", headers={"Accept": "text/html"})
        self.assertIn("text/html", r.header("Content-Type"))

    def test_stylesheet_is_not_sniffed_and_stays_cacheable(self):
        r = self.get("/.gatehouse/static/login.css", accept="text/css")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("X-Content-Type-Options"), "nosniff", r)
        self.assertSecured(r, cache="public, max-age=3600")

    def test_admin_listener_answers(self):
        r = http_get(self.gh.admin_port, "/healthz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("X-Content-Type-Options"), "nosniff", r)
        self.assertEqual(r.header("Cache-Control"), "no-store", r)

    def test_backend_answers_are_left_alone(self):
        r = self.get("/pub/x")
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("Content-Security-Policy"), r)
        self.assertIsNone(r.header("X-Frame-Options"), r)


if __name__ == "__main__":
    unittest.main()
