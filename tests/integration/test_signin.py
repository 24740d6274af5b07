"""Sign-in through the real OpenID Provider: the whole authorization-code flow
with PKCE through Gatehouse, the session cookie, and what the backend sees."""
import unittest

from harness import Backend, Gatehouse, basic_config, free_port, read_jsonl
from oidc import CLIENT_SECRET, IdP, Browser, client_for, idp_conf


class SignInTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = Backend("app")
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.idp = IdP([client_for(cls.base)])
        cfg = basic_config(
            [{"name": "app", "upstream": {"servers": [cls.backend.url]}}],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(cls.idp)],
            decision_log={"file": "var/decisions.jsonl"},
        )
        cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET})

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()

    def test_sign_in_reaches_backend_with_identity(self):
        b = Browser()
        r = b.login(self.base, "/hello?x=1")
        self.assertEqual(r.status, 200, r)
        seen = self.backend.last("/hello")
        self.assertIsNotNone(seen)
        h = {k.lower(): v for k, v in seen["headers"]}
        self.assertEqual(h["x-gatehouse-user"], "alice")
        self.assertEqual(h["x-gatehouse-email"], "alice@example.com")
        self.assertEqual(h["x-gatehouse-groups"], "eng,admins")
        self.assertEqual(len(h["x-gatehouse-assertion"].split(".")), 3)
        # The session cookie never reaches the backend.
        self.assertNotIn("gatehouse_session", h.get("cookie", ""))
        me = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        self.assertEqual(me.status, 200)
        self.assertEqual(me.json()["email"], "alice@example.com")
        self.assertEqual(me.json()["groups"], ["eng", "admins"])

    def test_unauthenticated_browser_is_redirected_api_gets_401(self):
        b = Browser()
        r = b.request(self.base + "/x")
        self.assertEqual(r.status, 302)
        self.assertEqual(r.header("Location"), "/.gatehouse/login?rd=%2Fx")
        api = Browser(accept="application/json")
        r = api.request(self.base + "/x")
        self.assertEqual(r.status, 401)
        self.assertIn("Bearer", r.header("WWW-Authenticate"))
        self.assertEqual(r.json()["error"], "unauthenticated")


if __name__ == "__main__":
    unittest.main()
