"""The OIDC relying-party code (src/authn/oidc.c) against the real OpenID
Provider (tests/idp/oidc_idp.mjs on npm oidc-provider), without the proxy:
tests/unit/authn/oidc_rp_tool runs each protocol step, this script does the
HTTP a browser and the proxy would do. Covers sign-in through the login form,
claims, replayed code, mismatched state, wrong nonce, userinfo, rotating
refresh, bearer verification with the IdP's JWKS, RP-initiated logout and a
back-channel logout token. Python stdlib only; loopback, ephemeral ports."""
import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_tool():
    if os.environ.get("GH_OIDC_RP_TOOL"):
        return os.environ["GH_OIDC_RP_TOOL"]
    binary = os.environ.get("GATEHOUSE_BIN", "")
    if binary:
        cand = os.path.join(os.path.dirname(binary), "tests", "unit", "authn", "oidc_rp_tool")
        if os.path.exists(cand):
            return cand
    return None


TOOL = find_tool()
NODE = shutil.which("node")
HAVE_IDP = NODE and os.path.isdir(os.path.join(ROOT, "tests", "node_modules", "oidc-provider"))


def request(method, url, headers=None, body=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    path = u.path + ("?" + u.query if u.query else "")
    conn.request(method, path or "/", body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheaders(), data


class Browser:
    """Follows redirects at the IdP and keeps its cookies; stops at redirect_uri."""

    def __init__(self, stop_prefix):
        self.cookies = {}
        self.stop_prefix = stop_prefix

    def _cookie_header(self):
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def go(self, method, url, form=None):
        for _ in range(10):
            headers = {"Cookie": self._cookie_header()} if self.cookies else {}
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            status, hdrs, data = request(method, url, headers, body)
            for k, v in hdrs:
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    self.cookies[name.strip()] = rest.split(";", 1)[0]
            loc = next((v for k, v in hdrs if k.lower() == "location"), None)
            if status in (301, 302, 303, 307) and loc:
                url = urllib.parse.urljoin(url, loc)
                if url.startswith(self.stop_prefix):
                    return status, url, data
                method, form = "GET", None
                continue
            return status, url, data
        raise AssertionError("too many redirects")


class Catcher(http.server.BaseHTTPRequestHandler):
    """Receives back-channel logout POSTs from the IdP."""
    got = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        Catcher.got.append(self.rfile.read(n))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@unittest.skipUnless(TOOL and HAVE_IDP, "needs oidc_rp_tool and node + tests/node_modules")
class OidcRpAgainstRealProvider(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="gh-oidc-")
        cls.catcher = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Catcher)
        threading.Thread(target=cls.catcher.serve_forever, daemon=True).start()
        rp = f"http://127.0.0.1:{cls.catcher.server_address[1]}"
        cls.redirect_uri = rp + "/.gatehouse/oidc/callback"
        cls.post_logout = rp + "/.gatehouse/logout"
        client = {
            "client_id": "gatehouse",
            "client_secret": "s3cret-for-tests",
            "redirect_uris": [cls.redirect_uri],
            "post_logout_redirect_uris": [cls.post_logout],
            "backchannel_logout_uri": rp + "/.gatehouse/oidc/backchannel-logout",
        }
        # A second and third client: client_secret_post, and private_key_jwt with
        # an EC key made here (public JWK via node, which the IdP runs on anyway).
        cls.client_pem = os.path.join(cls.tmp, "client.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", cls.client_pem], check=True,
                       capture_output=True)
        pub = subprocess.run([NODE, "-e", "const c=require('crypto');const fs=require('fs');"
                              "const k=c.createPublicKey(fs.readFileSync(process.argv[1]));"
                              "console.log(JSON.stringify(k.export({format:'jwk'})))",
                              cls.client_pem], check=True, capture_output=True, text=True)
        jwk = json.loads(pub.stdout)
        # Gatehouse names its key by the RFC 7638 thumbprint; register it under that kid.
        canon = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"),
                           sort_keys=True)
        jwk["kid"] = base64.urlsafe_b64encode(
            hashlib.sha256(canon.encode()).digest()).rstrip(b"=").decode()
        post_client = dict(client, client_id="gatehouse-post", client_secret="post-secret",
                           token_endpoint_auth_method="client_secret_post")
        del post_client["backchannel_logout_uri"]
        jwt_client = {"client_id": "gatehouse-pkjwt", "redirect_uris": [cls.redirect_uri],
                      "token_endpoint_auth_method": "private_key_jwt",
                      "token_endpoint_auth_signing_alg": "ES256",
                      "jwks": {"keys": [dict(jwk, use="sig", alg="ES256")]}}
        env = dict(os.environ, GH_IDP_CLIENT=json.dumps([client, post_client, jwt_client]),
                   GH_IDP_ALICE_PASSWORD="alice-pw")
        cls.idp = subprocess.Popen([NODE, os.path.join(ROOT, "tests", "idp", "oidc_idp.mjs")],
                                   cwd=os.path.join(ROOT, "tests"), env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Its output is read by a thread from the start, and the READY line waited
        # for with a deadline: a start that never says READY fails the class
        # instead of hanging the suite (seen once under ASan, two modules at a time).
        cls.idp_log = []
        got = threading.Event()

        def read_output():
            for x in cls.idp.stdout:
                cls.idp_log.append(x)
                if x.startswith("GH_IDP_READY "):
                    got.set()
        threading.Thread(target=read_output, daemon=True).start()
        if not got.wait(30):
            cls.idp.kill()
            raise RuntimeError("IdP did not start:\n" + "".join(cls.idp_log[-20:]))
        ready = json.loads([x for x in cls.idp_log
                            if x.startswith("GH_IDP_READY ")][0].split(" ", 1)[1])
        cls.issuer = ready["issuer"]
        cls.users = ready["users"]
        cls.conf = os.path.join(cls.tmp, "idp.yaml")
        with open(cls.conf, "w") as f:
            f.write("identity_providers:\n"
                    "  - id: corp\n    type: oidc\n"
                    f"    issuer: {cls.issuer}\n"
                    "    allow_insecure_issuer: true\n"
                    "    client_id: gatehouse\n    client_secret: s3cret-for-tests\n"
                    "    scopes: [openid, email, profile, groups, offline_access]\n"
                    # the bearer step below checks an ID token: opt in
                    "    accept_id_tokens: true\n")
        cls.conf_post = cls.save("idp-post.yaml", (
            "identity_providers:\n  - id: corp\n    type: oidc\n"
            f"    issuer: {cls.issuer}\n    allow_insecure_issuer: true\n"
            "    client_id: gatehouse-post\n    client_secret: post-secret\n"
            "    token_endpoint_auth: client_secret_post\n").encode())
        cls.conf_pkjwt = cls.save("idp-pkjwt.yaml", (
            "identity_providers:\n  - id: corp\n    type: oidc\n"
            f"    issuer: {cls.issuer}\n    allow_insecure_issuer: true\n"
            "    client_id: gatehouse-pkjwt\n    token_endpoint_auth: private_key_jwt\n"
            f"    private_key: {cls.client_pem}\n").encode())
        cls.discovery = cls.save("discovery.json", request(
            "GET", cls.issuer + "/.well-known/openid-configuration")[2])
        with open(cls.discovery) as f:
            meta = json.load(f)
        cls.jwks = cls.save("jwks.json", request("GET", meta["jwks_uri"])[2])
        cls.key = os.urandom(32).hex()

    @classmethod
    def tearDownClass(cls):
        cls.idp.terminate()
        cls.idp.wait(10)
        cls.catcher.shutdown()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def save(cls, name, data):
        path = os.path.join(cls.tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def tool(self, *args):
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
        out = subprocess.run([TOOL, *args], capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        return json.loads(out.stdout)

    def perform(self, req):
        headers = dict(h.split(": ", 1) for h in req["headers"])
        status, _, body = request(req["method"], req["url"], headers, req.get("body"))
        return status, self.save("resp-%d.json" % id(body), body)

    def sign_in(self, user="alice", password=None, rd="/wiki/page?x=1", conf=None):
        start = self.tool("login", conf or self.conf, self.discovery, self.key, self.redirect_uri,
                          rd)
        self.assertTrue(start["ok"], start)
        b = Browser(self.redirect_uri)
        status, url, body = b.go("GET", start["auth_url"])
        self.assertEqual(status, 200)
        self.assertIn(b'name="password"', body)
        action = re.search(rb'action="([^"]+)"', body).group(1).decode()
        status, url, body = b.go("POST", urllib.parse.urljoin(url, action),
                                 {"login": user, "password": password or self.users[user]})
        return start, b, status, url, body

    def full_login(self, conf=None):
        conf = conf or self.conf
        start, b, status, url, _ = self.sign_in(conf=conf)
        self.assertTrue(url.startswith(self.redirect_uri + "?"), url)
        query = urllib.parse.urlsplit(url).query
        treq = self.tool("callback", conf, self.discovery, self.key, start["cookie"], query)
        self.assertTrue(treq["ok"], treq)
        status, resp = self.perform(treq)
        toks = self.tool("token", conf, self.jwks, self.key, start["cookie"], str(status), resp)
        return start, b, query, treq, toks

    def test_client_secret_post_and_private_key_jwt(self):
        _, _, _, treq, toks = self.full_login(self.conf_post)
        self.assertTrue(toks["ok"], toks)
        self.assertIn("client_secret=post-secret", treq["body"])
        self.assertFalse(any(h.startswith("Authorization:") for h in treq["headers"]))
        _, _, _, treq, toks = self.full_login(self.conf_pkjwt)
        self.assertTrue(toks["ok"], (toks, self.idp_log[-5:]))
        self.assertEqual(toks["identity"]["email"], "alice@example.com")
        self.assertIn("client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type"
                      "%3Ajwt-bearer&client_assertion=", treq["body"])

    def test_sign_in_maps_identity(self):
        _, _, _, treq, toks = self.full_login()
        self.assertTrue(toks["ok"], toks)
        ident = toks["identity"]
        self.assertEqual(ident["user_key"], self.issuer + "#alice")
        self.assertEqual(ident["email"], "alice@example.com")
        self.assertEqual(ident["groups"], ["eng", "admins"])
        self.assertTrue(ident["sid"])
        self.assertEqual(toks["return_path"], "/wiki/page?x=1")
        self.assertTrue(toks["refresh_token"])
        # client_secret_basic was used: the secret is not in the body.
        self.assertNotIn("s3cret", treq["body"])
        self.assertIn("code_verifier=", treq["body"])

    def test_wrong_password_is_refused_by_the_form(self):
        _, _, status, _, body = self.sign_in(password="not-it")
        self.assertEqual(status, 401)
        self.assertIn(b"Wrong username or password", body)

    def test_replayed_code_is_refused(self):
        start, _, _, treq, toks = self.full_login()
        self.assertTrue(toks["ok"])
        status, resp = self.perform(treq)
        again = self.tool("token", self.conf, self.jwks, self.key, start["cookie"], str(status), resp)
        self.assertFalse(again["ok"])
        self.assertTrue(again["error"].startswith("token endpoint refused (HTTP 400): invalid_grant"),
                        again["error"])

    def test_mismatched_state_and_wrong_nonce(self):
        start, _, status, url, _ = self.sign_in()
        query = urllib.parse.urlsplit(url).query
        params = urllib.parse.parse_qs(query)
        forged = query.replace(params["state"][0], "forged-state")
        res = self.tool("callback", self.conf, self.discovery, self.key, start["cookie"], forged)
        self.assertEqual(res, {"ok": False, "error": "callback state does not match the login cookie"})
        # The right state, but the ID token is checked against another login's nonce.
        treq = self.tool("callback", self.conf, self.discovery, self.key, start["cookie"], query)
        status, resp = self.perform(treq)
        other = self.tool("login", self.conf, self.discovery, self.key, self.redirect_uri, "/")
        res = self.tool("token", self.conf, self.jwks, self.key, other["cookie"], str(status), resp)
        self.assertEqual(res, {"ok": False, "error": "token nonce does not match the login"})

    def test_userinfo_refresh_rotation_and_bearer(self):
        _, _, _, _, toks = self.full_login()
        ureq = self.tool("userinfo-req", self.conf, self.discovery, toks["access_token"])
        status, resp = self.perform(ureq)
        ui = self.tool("userinfo", self.conf, str(status), resp, "alice")
        self.assertEqual(ui["userinfo"]["groups"], ["eng", "admins"])
        bad = self.tool("userinfo", self.conf, str(status), resp, "bob")
        self.assertEqual(bad["error"], "userinfo sub does not match the ID token")

        rreq = self.tool("refresh-req", self.conf, self.discovery, toks["refresh_token"])
        status, resp = self.perform(rreq)
        fresh = self.tool("refresh", self.conf, self.jwks, str(status), resp)
        self.assertTrue(fresh["ok"], fresh)
        self.assertTrue(fresh["refresh_token"])
        self.assertNotEqual(fresh["refresh_token"], toks["refresh_token"])  # rotated
        status, resp = self.perform(rreq)  # the old refresh token again
        stale = self.tool("refresh", self.conf, self.jwks, str(status), resp)
        self.assertFalse(stale["ok"])

        bearer = self.tool("bearer", self.conf, self.jwks, toks["id_token"])
        self.assertEqual(bearer["identity"]["sub"], "alice")
        tampered = toks["id_token"][:-4] + ("AAAA" if not toks["id_token"].endswith("AAAA") else "BBBB")
        res = self.tool("bearer", self.conf, self.jwks, tampered)
        self.assertFalse(res["ok"])

    def test_rp_logout_sends_verifiable_backchannel_token(self):
        _, b, _, _, toks = self.full_login()
        Catcher.got.clear()
        url = self.tool("logout-url", self.conf, self.discovery, toks["id_token"], self.post_logout)["url"]
        self.assertTrue(url.startswith(self.issuer + "/session/end?id_token_hint="))
        status, page_url, body = b.go("GET", url)
        self.assertEqual(status, 200)
        action = re.search(rb'action="([^"]+)"', body).group(1).decode()
        form = dict(re.findall(rb'name="([^"]+)" value="([^"]*)"', body))
        form = {k.decode(): v.decode() for k, v in form.items()}
        form["logout"] = "yes"
        status, final, _ = b.go("POST", urllib.parse.urljoin(page_url, action), form)
        self.assertTrue(final.startswith(self.post_logout), final)
        for _ in range(150):  # the IdP posts the logout token asynchronously
            if Catcher.got:
                break
            time.sleep(0.1)
        self.assertEqual(len(Catcher.got), 1, "".join(self.idp_log[-10:]))
        body_file = self.save("bcl.txt", Catcher.got[0])
        res = self.tool("logout-token", self.conf, self.jwks, body_file)
        self.assertTrue(res["ok"], res)
        self.assertEqual(res["sid"], toks["identity"]["sid"])
        self.assertEqual(res["sub"], "alice")
        self.assertEqual(res["replay"], "logout token was already used (jti replay)")


if __name__ == "__main__":
    unittest.main()
