"""Identity header look-alikes: a client header whose name differs from an
identity or hop-by-hop header only by '_' for '-' (or case) reaches CGI-style
backends (WSGI, CGI, PHP, Rack) as the same variable: X_Gatehouse_User and
X-Gatehouse-User are both HTTP_X_GATEHOUSE_USER. Gatehouse drops every client
header with '_' in its name unless the route sets headers.allow_underscores,
and even then never a look-alike of an identity, hop-by-hop or forwarding
header. X-Original-URL, X-Rewrite-URL and the method overrides are dropped
unless the route sets headers.allow_override_headers.

Checked with the recording Backend (exact names received) and with a real
WSGI application (Python's wsgiref) that reports its environ, anonymous on a
public route and signed in through the real OpenID Provider."""
import json
import threading
import unittest
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from harness import Backend, Gatehouse, ProxyCase, basic_config, free_port, request, route
from oidc import CLIENT_SECRET, Browser, IdP, client_for, idp_conf

IDENTITY_LOOKALIKES = [
    ("X_Gatehouse_User", "alice"),
    ("x-gatehouse_groups", "admins"),
    ("X_GATEHOUSE_EMAIL", "alice@example.com"),
    ("X-Gatehouse_Device", "trusted"),
    ("X_Gatehouse_Assertion", "forged.jwt.here"),
]
HOP_LOOKALIKES = [
    ("Transfer_Encoding", "chunked"),
    ("Connection_", "close"),
    ("Keep_Alive", "timeout=1"),
    ("Upgrade_", "h2c"),
    ("_Upgrade", "websocket"),
    ("Proxy_Connection", "keep-alive"),
    ("Proxy_Authorization", "Basic YWxpY2U6cHc="),
    ("Content_Length", "5"),
    ("X_Forwarded_For", "10.0.0.1"),
    ("X_Request_Id", "forged-id"),
    ("HTTP2_Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
]
OVERRIDES = [
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
]
# What a CGI-style backend must never see from the client.
FORBIDDEN_ENV_PREFIXES = ("HTTP_TRANSFER_ENCODING", "HTTP_CONNECTION", "HTTP_KEEP_ALIVE",
                          "HTTP_UPGRADE", "HTTP__UPGRADE", "HTTP_PROXY_", "HTTP_CONTENT_LENGTH",
                          "HTTP_HTTP2_SETTINGS", "HTTP_X_ORIGINAL_URL", "HTTP_X_REWRITE_URL",
                          "HTTP_X_HTTP_METHOD", "HTTP_X_METHOD_OVERRIDE")


def names(rec):
    return [k for k, _ in rec["headers"]]


def lower_names(rec):
    return {k.lower() for k, _ in rec["headers"]}


class LookalikesDroppedByDefault(ProxyCase):
    """A route without headers: settings: no '_' name reaches the backend."""

    def send(self, headers, path="/echo"):
        r = request(self.gh.port, "GET", path, headers=headers)
        self.assertEqual(r.status, 200, r)
        return self.backend.last(path)

    def test_identity_lookalikes_never_reach_the_backend(self):
        rec = self.send(IDENTITY_LOOKALIKES)
        for name, _ in IDENTITY_LOOKALIKES:
            self.assertNotIn(name, names(rec))
        self.assertFalse([k for k in lower_names(rec)
                          if k.replace("_", "-").startswith("x-gatehouse-")], rec["headers"])

    def test_hop_by_hop_lookalikes_never_reach_the_backend(self):
        rec = self.send(HOP_LOOKALIKES)
        for name, _ in HOP_LOOKALIKES:
            self.assertNotIn(name, names(rec))
        self.assertFalse([k for k in names(rec) if "_" in k], rec["headers"])

    def test_other_underscore_names_are_dropped_too(self):
        rec = self.send([("X_Custom_Thing", "1"), ("X-Custom-Ok", "2")])
        self.assertNotIn("X_Custom_Thing", names(rec))
        self.assertIn("X-Custom-Ok", names(rec))

    def test_url_and_method_overrides_are_dropped(self):
        rec = self.send(OVERRIDES + [("x-original-url", "/x")])
        self.assertFalse(lower_names(rec) & {n.lower() for n, _ in OVERRIDES}, rec["headers"])
        self.assertEqual(rec["method"], "GET")


class UnderscoreOptIn(ProxyCase):
    """headers.allow_underscores lets other '_' names through, never the
    look-alikes; a custom identity header name is matched the same way."""

    @classmethod
    def config(cls):
        opt = route("opt", cls.backends, host="opt.test")
        opt["headers"] = {"allow_underscores": True, "allow_override_headers": True}
        plain = route("plain", cls.backends, host="app.test")
        return basic_config([opt, plain], upstream_identity={
            "headers": {"user": "Remote-User", "groups": "Remote-Groups"}})

    def send(self, headers, host="opt.test", path="/echo"):
        r = request(self.gh.port, "GET", path, host=host, headers=headers)
        self.assertEqual(r.status, 200, r)
        return self.backend.last(path)

    def test_opt_in_passes_other_underscore_names(self):
        rec = self.send([("X_Custom_Thing", "1")])
        self.assertIn("X_Custom_Thing", names(rec))

    def test_opt_in_still_drops_identity_lookalikes(self):
        rec = self.send(IDENTITY_LOOKALIKES + [("Remote_User", "alice"),
                                               ("remote_groups", "admins"),
                                               ("REMOTE-USER", "alice")])
        got = {k.lower().replace("_", "-") for k in names(rec)}
        for name in ("x-gatehouse-user", "x-gatehouse-groups", "x-gatehouse-email",
                     "x-gatehouse-device", "x-gatehouse-assertion", "remote-user",
                     "remote-groups"):
            self.assertNotIn(name, got, rec["headers"])

    def test_opt_in_still_drops_hop_by_hop_lookalikes(self):
        rec = self.send(HOP_LOOKALIKES)
        for name, _ in HOP_LOOKALIKES:
            self.assertNotIn(name, names(rec))

    def test_override_headers_opt_in(self):
        rec = self.send(OVERRIDES)
        self.assertTrue({n.lower() for n, _ in OVERRIDES} <= lower_names(rec), rec["headers"])
        rec = self.send(OVERRIDES, host="app.test")
        self.assertFalse(lower_names(rec) & {n.lower() for n, _ in OVERRIDES}, rec["headers"])

    def test_unknown_headers_key_is_a_config_error(self):
        cfg = basic_config([dict(route("x", [self.backend]),
                                 headers={"allow_underscore": True})])
        with self.assertRaises(Exception) as cm:
            Gatehouse(cfg).cleanup()
        self.assertIn("allow_underscores", str(cm.exception))


# ---------------------------------------------------------------- a real WSGI backend

def wsgi_app(environ, start_response):
    body = json.dumps({
        "method": environ["REQUEST_METHOD"],
        "path": environ.get("PATH_INFO", ""),
        "env": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *a):
        pass


class WSGIBackend:
    """wsgiref.simple_server on 127.0.0.1: the environ a WSGI app gets."""

    def __init__(self):
        self.server = make_server("127.0.0.1", 0, wsgi_app, server_class=_ThreadingWSGIServer,
                                  handler_class=_QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class _WSGIStack:
    """The real OpenID Provider, a WSGI app and Gatehouse in front of it, with
    bob signed in. Subclasses add routes."""
    extra_routes = []

    @classmethod
    def setUpClass(cls):
        cls.wsgi = WSGIBackend()
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.idp = IdP([client_for(cls.base)])
        up = {"servers": [cls.wsgi.url]}
        routes = [dict(r, upstream=up) for r in cls.extra_routes] + [
            {"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True, "upstream": up},
            {"name": "app", "upstream": up},
        ]
        cfg = basic_config(routes, listen=[{"address": f"127.0.0.1:{port}"}],
                           state={"sqlite": "var/gatehouse.db"},
                           identity_providers=[idp_conf(cls.idp)])
        try:
            cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET})
        except Exception:
            cls.idp.stop()
            cls.wsgi.stop()
            raise
        cls.bob = Browser()
        r = cls.bob.login(cls.base, "/app/", user="bob")
        assert r.status == 200, r

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.wsgi.stop()

    FORGED = [("X_Gatehouse_User", "alice"), ("x-gatehouse_groups", "admins"),
              ("X_Gatehouse_Email", "alice@example.com")] + HOP_LOOKALIKES + OVERRIDES

    def env_of(self, who, path):
        r = who.request(self.base + path, headers=dict(self.FORGED + [("X_Custom_Thing", "1")]))
        self.assertEqual(r.status, 200, r)
        return r.json()["env"]

    def assertNoHopLookalikes(self, env):
        bad = [k for k in env if k.startswith(FORBIDDEN_ENV_PREFIXES)]
        self.assertEqual(bad, [], env)

    def assertOnlyBob(self, env):
        self.assertEqual(env.get("HTTP_X_GATEHOUSE_GROUPS"), "sales", env)
        self.assertEqual(env.get("HTTP_X_GATEHOUSE_EMAIL"), "bob@example.com", env)
        user = env.get("HTTP_X_GATEHOUSE_USER", "")
        self.assertTrue(user and "alice" not in user and "," not in user, env)
        self.assertNoHopLookalikes(env)


class WSGIIdentityForgery(_WSGIStack, unittest.TestCase):
    """The issue's attack against a real WSGI app: an anonymous caller on a
    public route, and signed-in bob (groups: sales), each send X_Gatehouse_User,
    x-gatehouse_groups and friends; the app's environ holds only what
    Gatehouse vouches for."""

    def test_anonymous_caller_cannot_become_alice(self):
        env = self.env_of(Browser(accept="application/json"), "/pub/x")
        self.assertNotIn("HTTP_X_GATEHOUSE_USER", env)
        self.assertNotIn("HTTP_X_GATEHOUSE_GROUPS", env)
        self.assertNotIn("HTTP_X_GATEHOUSE_EMAIL", env)
        self.assertNotIn("HTTP_X_CUSTOM_THING", env)
        self.assertNoHopLookalikes(env)

    def test_signed_in_bob_cannot_add_groups_or_become_alice(self):
        self.assertOnlyBob(self.env_of(self.bob, "/app/x"))


class WSGIUnderscoreOptIn(_WSGIStack, unittest.TestCase):
    """headers.allow_underscores on a signed-in route: the app gets the
    client's other '_' headers, and still only bob's identity."""
    extra_routes = [{"name": "opt", "match": {"path_prefix": "/opt/"},
                     "headers": {"allow_underscores": True}}]

    def test_opt_in_route_still_vouches_only_for_bob(self):
        env = self.env_of(self.bob, "/opt/x")
        self.assertEqual(env.get("HTTP_X_CUSTOM_THING"), "1", env)  # the opt-in works
        self.assertOnlyBob(env)


if __name__ == "__main__":
    unittest.main()
