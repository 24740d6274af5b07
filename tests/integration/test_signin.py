"""Sign-in through the real OpenID Provider: the whole authorization-code flow
with PKCE through Gatehouse, the session cookie, and what the backend sees.
Also: cookie flags (plain and TLS), the identity assertion verified with
/.gatehouse/jwks.json (openssl CLI), /.gatehouse/me, logout (local and at the
IdP), back-channel logout, `gatehouse sessions list|revoke`, restart, idle and
absolute expiry, refresh under 50 concurrent requests with rotating refresh
tokens, a slow IdP that does not stall the worker, and an unreachable IdP."""
import calendar
import base64
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

from harness import (Backend, CertFactory, Gatehouse, basic_config, free_port, gatehouse_bin,
                     read_jsonl)
from oidc import CLIENT_SECRET, IdP, Browser, Resp, client_for, idp_conf, wait_for


def b64u_dec(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_parts(tok):
    h, p, s = tok.split(".")
    return json.loads(b64u_dec(h)), json.loads(b64u_dec(p)), b64u_dec(s)


def der_len(n):
    if n < 128:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der_int(raw):
    raw = raw.lstrip(b"\0") or b"\0"
    if raw[0] & 0x80:
        raw = b"\0" + raw
    return b"\x02" + der_len(len(raw)) + raw


def es256_verify(jwk, token, tmpdir):
    """Verifies a compact ES256 JWS with the openssl CLI: the JWK's x/y become
    a SubjectPublicKeyInfo PEM, the raw R||S signature becomes DER."""
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256", jwk
    x, y = b64u_dec(jwk["x"]), b64u_dec(jwk["y"])
    assert len(x) == 32 and len(y) == 32
    # SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING 04||x||y }
    spki = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04" + x + y
    pem = b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(spki) + b"-----END PUBLIC KEY-----\n"
    head, payload, sig = token.split(".")
    raw = b64u_dec(sig)
    assert len(raw) == 64, len(raw)
    body = der_int(raw[:32]) + der_int(raw[32:])
    der = b"\x30" + der_len(len(body)) + body
    pub, sigf, data = (os.path.join(tmpdir, n) for n in ("pub.pem", "sig.der", "data"))
    for path, content in ((pub, pem), (sigf, der), (data, f"{head}.{payload}".encode())):
        with open(path, "wb") as f:
            f.write(content)
    r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", pub, "-signature", sigf, data],
                       capture_output=True)
    return r.returncode == 0 and b"Verified OK" in r.stdout


def cookie_attrs(set_cookie):
    name, _, rest = set_cookie.partition("=")
    parts = [p.strip() for p in rest.split(";")]
    attrs = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        attrs[k.lower()] = v
    return name, parts[0], attrs


def run_cli(*args):
    return subprocess.run([gatehouse_bin(), "sessions", *args], capture_output=True, text=True,
                          timeout=20)


class Stack:
    """A backend, the real IdP and Gatehouse with one protected route (and a
    public one at /pub/) on a port picked in advance so the IdP knows the
    redirect URI. session, idp_env, idp_extra and gh_extra tune it."""

    def __init__(self, session=None, idp_env=None, idp_extra=None, gh_extra=None, state_dir=None,
                 workers=1):
        self.backend = Backend("app")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        client = client_for(self.base)
        self.idp = IdP([client], env=idp_env)
        self.idp_extra = dict(post_logout_redirect_uri=self.base + "/.gatehouse/signed-out",
                              **(idp_extra or {}))
        self.session = session
        self.gh_extra = gh_extra or {}
        self.state_dir = state_dir
        self.workers = workers
        self.gh = None
        try:
            self.start_gh()
        except Exception:
            self.stop()
            raise

    def config(self):
        db = os.path.join(self.state_dir, "gatehouse.db") if self.state_dir else "var/gatehouse.db"
        cfg = basic_config(
            [{"name": "pub", "match": {"path_prefix": "/pub/"}, "public": True,
              "upstream": {"servers": [self.backend.url]}},
             {"name": "app", "upstream": {"servers": [self.backend.url]}}],
            listen=[{"address": f"127.0.0.1:{self.port}"}],
            state={"sqlite": db},
            identity_providers=[idp_conf(self.idp, **self.idp_extra)],
            workers=self.workers,
        )
        if self.session:
            cfg["session"] = self.session
        cfg.update(self.gh_extra)
        return cfg

    def start_gh(self):
        self.gh = Gatehouse(self.config(), files={"oidc-secret": CLIENT_SECRET})

    def log(self):
        return self.gh.stderr().replace('\\"', '"')

    def stop(self):
        if self.gh:
            self.gh.cleanup()
        self.idp.stop()
        self.backend.stop()


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
            identity_providers=[idp_conf(
                cls.idp, post_logout_redirect_uri=cls.base + "/.gatehouse/signed-out")],
            decision_log={"file": "var/decisions.jsonl"},
        )
        cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET})
        cls.tmp = tempfile.mkdtemp(prefix="gh-signin-")

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def log(self):
        return self.gh.stderr().replace('\\"', '"')

    def signed_in(self, user="alice", path="/"):
        b = Browser()
        r = b.login(self.base, path, user)
        self.assertEqual(r.status, 200, r)
        return b

    def test_sign_in_reaches_backend_with_identity(self):
        b = Browser()
        r = b.login(self.base, "/hello?x=1")
        self.assertEqual(r.status, 200, r)
        seen = self.backend.last("/hello")
        self.assertIsNotNone(seen)
        self.assertEqual(seen["target"], "/hello?x=1")  # the original URL was kept
        h = {k.lower(): v for k, v in seen["headers"]}
        self.assertEqual(h["x-gatehouse-user"], "alice")
        self.assertEqual(h["x-gatehouse-email"], "alice@example.com")
        self.assertEqual(h["x-gatehouse-groups"], "eng,admins")
        self.assertEqual(len(h["x-gatehouse-assertion"].split(".")), 3)
        self.assertEqual(h["x-forwarded-proto"], "http")
        self.assertTrue(h.get("x-request-id"))
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

    def test_cookie_flags_plain_http(self):
        b = Browser()
        r = b.request(self.base + "/.gatehouse/login?rd=%2F")
        self.assertEqual(r.status, 302)
        name, _, attrs = cookie_attrs(r.header("Set-Cookie"))
        self.assertEqual(name, "gatehouse_login")
        self.assertIn("httponly", attrs)
        self.assertEqual(attrs["samesite"], "Lax")
        self.assertEqual(attrs["path"], "/")
        self.assertNotIn("secure", attrs)
        # Walk to the callback, then look at the session cookie it sets.
        callback = b.to_callback(urllib.parse.urljoin(self.base, r.header("Location")),
                                 self.base + "/.gatehouse/oidc/callback")
        r = b.request(callback)
        self.assertEqual(r.status, 302)
        cookies = {cookie_attrs(v)[0]: cookie_attrs(v) for v in r.header_all("Set-Cookie")}
        _, value, attrs = cookies["gatehouse_session"]
        self.assertGreaterEqual(len(value), 43)  # 256 random bits, encoded
        self.assertIn("httponly", attrs)
        self.assertEqual(attrs["samesite"], "Lax")
        self.assertEqual(attrs["path"], "/")
        self.assertNotIn("secure", attrs)
        self.assertNotIn("domain", attrs)
        # The login cookie is cleared once used.
        self.assertEqual(cookies["gatehouse_login"][2].get("max-age"), "0")
        # The cookie holds only an opaque id: nothing about the user in it.
        self.assertNotIn("alice", base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
                         .decode("latin-1"))

    def test_assertion_verified_with_published_jwks(self):
        b = self.signed_in("alice", "/assert")
        seen = self.backend.last("/assert")
        h = {k.lower(): v for k, v in seen["headers"]}
        tok = h["x-gatehouse-assertion"]
        header, claims, _ = jwt_parts(tok)
        self.assertEqual(header["alg"], "ES256")
        jwks = b.request(self.base + "/.gatehouse/jwks.json",
                         headers={"Accept": "application/json"}).json()
        keys = [k for k in jwks["keys"] if k.get("kid") == header["kid"]]
        self.assertEqual(len(keys), 1, jwks)
        self.assertNotIn("d", keys[0])  # public part only
        self.assertTrue(es256_verify(keys[0], tok, self.tmp))
        # A forged claim breaks the signature.
        _, p, s = tok.split(".")
        forged_claims = dict(claims, email="mallory@example.com")
        forged = tok.split(".")[0] + "." + base64.urlsafe_b64encode(
            json.dumps(forged_claims).encode()).rstrip(b"=").decode() + "." + s
        self.assertFalse(es256_verify(keys[0], forged, self.tmp))
        now = time.time()
        self.assertEqual(claims["iss"], "gatehouse")
        self.assertEqual(claims["aud"], "app")
        self.assertIn("alice", claims["sub"])
        self.assertEqual(claims["email"], "alice@example.com")
        self.assertEqual(claims["groups"], ["eng", "admins"])
        self.assertTrue(claims["sid"])
        self.assertTrue(claims["jti"])
        self.assertLessEqual(abs(claims["iat"] - now), 5)
        self.assertGreater(claims["exp"], now)
        self.assertLessEqual(claims["exp"] - claims["iat"], 60)

    def test_me_html_and_json(self):
        b = self.signed_in("bob")
        r = b.request(self.base + "/.gatehouse/me")
        self.assertEqual(r.status, 200)
        self.assertIn("text/html", r.header("Content-Type"))
        for s in (b"bob@example.com", b"sales", b"corp"):
            self.assertIn(s, r.body)
        r = b.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        j = r.json()
        self.assertEqual((j["user"], j["email"], j["groups"], j["idp"]),
                         ("bob", "bob@example.com", ["sales"], "corp"))
        exp = time.mktime(time.strptime(j["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        self.assertGreater(exp, time.time())
        # Both ends, labelled: idle (default 8h) and absolute (default 24h, as
        # `sessions list` shows it).
        ts = lambda k: calendar.timegm(time.strptime(j[k], "%Y-%m-%dT%H:%M:%SZ"))
        self.assertEqual(j["absolute_expires"], j["expires"])
        self.assertAlmostEqual(ts("idle_expires") - time.time(), 8 * 3600, delta=60)
        self.assertAlmostEqual(ts("absolute_expires") - time.time(), 24 * 3600, delta=60)
        r = b.request(self.base + "/.gatehouse/me")
        self.assertIn(b"Session ends if idle", r.body)
        self.assertIn(('datetime="%s"' % j["idle_expires"]).encode(), r.body)
        self.assertIn(('datetime="%s"' % j["absolute_expires"]).encode(), r.body)
        r = Browser().request(self.base + "/.gatehouse/me")
        self.assertEqual(r.status, 302)

    def test_logout_ends_session_and_signs_out_at_idp(self):
        b = self.signed_in("alice")
        jar = b.jar(urllib.parse.urlsplit(self.base).netloc)
        old = jar["gatehouse_session"]
        r = b.request(self.base + "/.gatehouse/logout")
        self.assertEqual(r.status, 200, r)  # the confirmation page
        token = re.search(rb'name="csrf_token" value="([^"]+)"', r.body).group(1).decode()
        r = b.request(self.base + "/.gatehouse/logout", "POST", {"csrf_token": token},
                      headers={"Sec-Fetch-Site": "same-origin", "Origin": self.base})
        self.assertEqual(r.status, 303, r)
        loc = r.header("Location")
        self.assertTrue(loc.startswith(self.idp.issuer + "/session/end?"), loc)
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query))
        self.assertIn("id_token_hint", q)
        self.assertEqual(q["post_logout_redirect_uri"], self.base + "/.gatehouse/signed-out")
        self.assertNotIn("gatehouse_session", jar)  # cleared in the browser
        # The old cookie no longer works: the session ended server-side.
        jar["gatehouse_session"] = old
        self.assertEqual(b.request(self.base + "/after-logout").status, 302)
        self.assertIn("signed out alice", self.log())
        # The IdP's confirmation page, confirmed: back to the signed-out page.
        r = b.request(loc)
        self.assertEqual(r.status, 200, r)
        form = dict(re.findall(rb'name="([^"]+)" value="([^"]*)"', r.body))
        action = re.search(rb'action="([^"]+)"', r.body).group(1).decode()
        body = {k.decode(): v.decode() for k, v in form.items()}
        body["logout"] = "yes"
        r, final, _ = b.follow(urllib.parse.urljoin(loc, action), "POST", body)
        self.assertTrue(final.startswith(self.base + "/.gatehouse/signed-out"), final)
        self.assertEqual(r.status, 200)
        self.assertIn(b"You are signed out", r.body)
        # Signed out at the IdP too: signing in asks for the password again.
        r, url, _ = b.follow(self.base + "/again")
        self.assertIn(b"<form", r.body)

    def test_backchannel_logout_from_idp(self):
        b = self.signed_in("alice", "/bcl")
        jar = b.jar(urllib.parse.urlsplit(self.base).netloc)
        self.assertEqual(b.request(self.base + "/bcl").status, 200)
        other = self.signed_in("alice", "/bcl")  # another browser: a separate IdP session
        # End the IdP session directly at the IdP (not through Gatehouse).
        idp_url = self.idp.issuer + "/session/end"
        r = b.request(idp_url)
        self.assertEqual(r.status, 200, r)
        action = re.search(rb'action="([^"]+)"', r.body).group(1).decode()
        body = {k.decode(): v.decode()
                for k, v in re.findall(rb'name="([^"]+)" value="([^"]*)"', r.body)}
        body["logout"] = "yes"
        b.follow(urllib.parse.urljoin(idp_url, action), "POST", body)
        self.assertTrue(wait_for(lambda: "idp backchannel logout sent" in self.idp.log(), 15),
                        self.idp.log()[-2000:])
        self.assertTrue(wait_for(lambda: "back-channel logout from corp ended 1 session(s)"
                                 in self.log(), 5), self.log()[-2000:])
        self.assertIn("gatehouse_session", jar)
        r = b.request(self.base + "/bcl")
        self.assertEqual(r.status, 302, r)
        # Only that IdP session (sid) ended: the other browser is still in.
        self.assertEqual(other.request(self.base + "/bcl").status, 200)

    def test_backchannel_logout_forged_token_refused(self):
        b = self.signed_in("alice")
        tok = "eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(json.dumps(
            {"iss": self.idp.issuer, "aud": "gatehouse", "sub": "alice", "jti": "x",
             "iat": int(time.time()),
             "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})
            .encode()).rstrip(b"=").decode() + "."
        r = Browser().request(self.base + "/.gatehouse/oidc/backchannel-logout", "POST",
                              {"logout_token": tok})
        self.assertEqual(r.status, 400)
        self.assertTrue(wait_for(lambda: "back-channel logout refused" in self.log(), 10))
        self.assertEqual(b.request(self.base + "/still").status, 200)

    def test_sessions_cli_list_and_revoke_within_1s(self):
        b = self.signed_in("bob", "/cli")
        a = self.signed_in("alice", "/cli")
        # Sessions reach SQLite off the hot path; list shows them once written.
        out = wait_for(lambda: "bob@example.com" in run_cli("list", "-c", self.gh.config_path)
                       .stdout, 15)
        self.assertTrue(out)
        listed = run_cli("list", "-c", self.gh.config_path, "--json", "--user", "bob@example.com")
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        self.assertGreaterEqual(len(rows), 1)
        self.assertTrue(all(r["email"] == "bob@example.com" for r in rows))
        self.assertEqual(rows[0]["groups"], ["sales"])
        self.assertEqual(b.request(self.base + "/cli").status, 200)
        out = run_cli("revoke", "-c", self.gh.config_path, "--user", "bob@example.com")
        done = time.time()
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"revoked [1-9]\d* session\(s\)")
        while b.request(self.base + "/cli").status == 200:
            self.assertLess(time.time() - done, 1.0, "revocation not applied within 1 s")
            time.sleep(0.05)
        self.assertLess(time.time() - done, 1.0)
        self.assertEqual(a.request(self.base + "/cli").status, 200)  # alice untouched
        # Rows the server wrote just after the CLI's DELETE go on its next cycle.
        self.assertTrue(wait_for(lambda: "bob@example.com" not in run_cli(
            "list", "-c", self.gh.config_path).stdout, 10, 0.2))
        # Revoke by id (the 16-char public id from the list).
        rows = [json.loads(line) for line in run_cli(
            "list", "-c", self.gh.config_path, "--json", "--user", "alice@example.com")
            .stdout.splitlines()]
        me = a.request(self.base + "/.gatehouse/me", headers={"Accept": "application/json"})
        mine = [r for r in rows if me.json()["session"].startswith(r["id"][:8])
                or r["id"].startswith(me.json()["session"][:8])]
        self.assertEqual(len(mine), 1, (rows, me.json()))
        out = run_cli("revoke", "-c", self.gh.config_path, "--id", mine[0]["id"])
        self.assertEqual(out.stdout.strip(), "revoked 1 session(s)", out.stderr)
        done = time.time()
        while a.request(self.base + "/cli").status == 200:
            self.assertLess(time.time() - done, 1.0, "revocation by id not applied within 1 s")
            time.sleep(0.05)

    def test_decision_log_records_sign_in(self):
        self.signed_in("alice", "/dl")
        path = os.path.join(self.gh.dir, "var", "decisions.jsonl")
        rec = wait_for(lambda: [e for e in read_jsonl(path)
                                if "alice" in json.dumps(e) and "login" in json.dumps(e)], 5)
        self.assertTrue(rec)


class RestartKeepsSessions(unittest.TestCase):
    def test_restart(self):
        tmp = tempfile.mkdtemp(prefix="gh-restart-")
        s = Stack(state_dir=tmp)
        try:
            b = Browser()
            self.assertEqual(b.login(s.base, "/r1").status, 200)
            self.assertEqual(b.request(s.base + "/r1").status, 200)
            s.gh.stop()  # SIGTERM: pending session writes are flushed
            s.gh.cleanup()
            s.start_gh()
            self.assertIn("loaded 1 live session(s)", s.log())
            r = b.request(s.base + "/r2")
            self.assertEqual(r.status, 200, r)
            h = {k.lower(): v for k, v in s.backend.last("/r2")["headers"]}
            self.assertEqual(h["x-gatehouse-email"], "alice@example.com")
            # The assertion key survives too: the new JWKS verifies it.
            jwks = b.request(s.base + "/.gatehouse/jwks.json").json()
            kid = jwt_parts(h["x-gatehouse-assertion"])[0]["kid"]
            key = [k for k in jwks["keys"] if k["kid"] == kid][0]
            self.assertTrue(es256_verify(key, h["x-gatehouse-assertion"], tmp))
        finally:
            s.stop()
            shutil.rmtree(tmp, ignore_errors=True)


class RevokeFreshSession(unittest.TestCase):
    def test_revoke_before_the_session_is_written_stays_revoked(self):
        # A session the server holds only in memory (written off the hot
        # path) is revoked by user at once; it must not come back from SQLite
        # later, nor after a restart.
        tmp = tempfile.mkdtemp(prefix="gh-revoke-")
        s = Stack(state_dir=tmp)
        try:
            b = Browser()
            self.assertEqual(b.login(s.base, "/fresh", "bob").status, 200)
            out = run_cli("revoke", "-c", s.gh.config_path, "--user", "bob@example.com")
            self.assertEqual(out.returncode, 0, out.stderr)
            done = time.time()
            while b.request(s.base + "/fresh").status == 200:
                self.assertLess(time.time() - done, 1.0, "revocation not applied within 1 s")
                time.sleep(0.05)
            self.assertTrue(wait_for(lambda: "bob@example.com" not in run_cli(
                "list", "-c", s.gh.config_path).stdout, 10, 0.2))
            self.assertEqual(b.request(s.base + "/fresh").status, 302)
            s.gh.stop()
            s.gh.cleanup()
            s.start_gh()
            self.assertEqual(b.request(s.base + "/fresh").status, 302)
        finally:
            s.stop()
            shutil.rmtree(tmp, ignore_errors=True)


class Expiry(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Stack(session={"idle_timeout": "2s", "max_lifetime": "4s"})

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_idle_timeout(self):
        b = Browser()
        self.assertEqual(b.login(self.s.base, "/i").status, 200)
        time.sleep(1.2)
        self.assertEqual(b.request(self.s.base + "/i").status, 200)  # activity extends it
        time.sleep(1.2)
        self.assertEqual(b.request(self.s.base + "/i").status, 200)
        time.sleep(2.6)
        r = b.request(self.s.base + "/i")
        self.assertEqual(r.status, 302, r)
        self.assertIn("expired session cookie", self.s.log())

    def test_absolute_lifetime(self):
        # The session is made somewhere during the sign-in (which takes a while on
        # a loaded machine): a request is judged by the session's least and
        # greatest possible age when the server saw it.
        b = Browser()
        t_login = time.time()
        self.assertEqual(b.login(self.s.base, "/a").status, 200)
        t_made = time.time()
        codes = []  # (least age, greatest age, status)
        while time.time() - t_made < 5.5:
            sent = time.time()
            st = b.request(self.s.base + "/a").status
            codes.append((round(sent - t_made, 2), round(time.time() - t_login, 2), st))
            time.sleep(0.3)
        early = [c for least, most, c in codes if most < 3.7]
        late = [c for least, most, c in codes if least > 4.3]
        self.assertTrue(early and all(c == 200 for c in early), codes)
        self.assertTrue(late and all(c == 302 for c in late), codes)


class Refresh(unittest.TestCase):
    """Access tokens live 4 s; Gatehouse refreshes 2 s before expiry. 50
    concurrent requests when a refresh is due make exactly one token request,
    and the rotating refresh token keeps the session alive across rounds."""

    def test_refresh_once_per_due_period_under_50_concurrent(self):
        s = Stack(session={"refresh": True, "refresh_before": "2s"},
                  idp_env={"GH_IDP_ACCESS_TTL": "4", "GH_IDP_ID_TTL": "4"}, workers=2)
        try:
            b = Browser()
            self.assertEqual(b.login(s.base, "/f").status, 200)
            cookie = b.session_cookie(s.base)

            def one(i):
                c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=15)
                c.request("GET", f"/f?i={i}", headers={"Cookie": f"gatehouse_session={cookie}",
                                                      "Accept": "application/json"})
                st = c.getresponse().status
                c.close()
                return st

            def refreshes():
                return s.idp.log().count("idp token grant refresh_token ok")

            self.assertEqual(refreshes(), 0)
            with concurrent.futures.ThreadPoolExecutor(50) as ex:
                for rnd in range(1, 4):
                    time.sleep(2.6)  # the token is now due for refresh
                    codes = list(ex.map(one, range(50)))
                    self.assertEqual(codes, [200] * 50, f"round {rnd}")
                    self.assertTrue(wait_for(lambda: refreshes() >= rnd, 15), s.idp.log())
                    time.sleep(0.5)
                    self.assertEqual(refreshes(), rnd, f"round {rnd}:\n" + s.idp.log())
            self.assertNotIn("grant refresh_token failed", s.idp.log())
            self.assertIn("session refreshed at corp", s.log())
            self.assertEqual(b.request(s.base + "/f").status, 200)
        finally:
            s.stop()


class RefreshFailures(unittest.TestCase):
    """A refresh the IdP cannot answer keeps the session; a refresh the IdP
    refuses (invalid_grant: its grants are gone) ends it."""

    def test_idp_down_keeps_session_then_refused_grant_ends_it(self):
        s = Stack(session={"refresh": True, "refresh_before": "2s"},
                  idp_env={"GH_IDP_ACCESS_TTL": "3", "GH_IDP_ID_TTL": "3"})
        try:
            b = Browser()
            self.assertEqual(b.login(s.base, "/rf").status, 200)
            port = s.idp.port
            s.idp.stop()
            time.sleep(1.5)  # refresh due now; the IdP is away
            for _ in range(3):
                self.assertEqual(b.request(s.base + "/rf").status, 200)
                time.sleep(0.2)
            self.assertTrue(wait_for(lambda: "session refresh at corp failed" in s.log(), 15),
                            s.log()[-2000:])
            self.assertNotIn("(session ended)", s.log())
            self.assertEqual(b.request(s.base + "/rf").status, 200)
            # The IdP is back but remembers no grant: the refresh token is refused.
            s.idp = IdP([client_for(s.base)], env={"GH_IDP_ACCESS_TTL": "3"}, port=port)
            ended = wait_for(lambda: b.request(s.base + "/rf").status == 302, 6, 0.3)
            self.assertTrue(ended, s.log()[-2000:])
            self.assertIn("(session ended)", s.log())
            # The refresh runs within the request that found it due, so the IdP's
            # log line may trail the answer a little.
            self.assertTrue(wait_for(lambda: "idp token grant refresh_token failed"
                                     in s.idp.log(), 15), s.idp.log())
        finally:
            s.stop()


class SlowIdP(unittest.TestCase):
    """The token endpoint answers after 3 s; with one worker, other requests
    keep flowing meanwhile."""

    def test_other_requests_flow_during_slow_token_exchange(self):
        s = Stack(idp_env={"GH_IDP_TOKEN_DELAY_MS": "3000"}, workers=1)
        try:
            b = Browser()
            done = {}

            def login():
                t0 = time.time()
                done["r"] = b.login(s.base, "/slow-login")
                done["t"] = time.time() - t0

            th = threading.Thread(target=login)
            th.start()
            self.assertTrue(wait_for(lambda: "sign-in started" in s.log(), 15))
            time.sleep(0.8)  # the browser is now in the 3 s token exchange
            lat = []
            for i in range(5):
                t0 = time.time()
                c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
                c.request("GET", f"/pub/quick{i}")
                self.assertEqual(c.getresponse().status, 200)
                c.close()
                lat.append(time.time() - t0)
                r = Browser().request(s.base + "/.gatehouse/login")
                self.assertEqual(r.status, 302)
            self.assertTrue(th.is_alive(), "the token exchange was not slow")
            th.join(20)
            self.assertEqual(done["r"].status, 200, done.get("r"))
            self.assertGreater(done["t"], 3.0)
            self.assertLess(max(lat), 1.0, lat)  # vs 3 s if the worker were blocked
        finally:
            s.stop()


class SlowIdPClientGone(unittest.TestCase):
    def test_client_leaves_during_token_exchange(self):
        # The browser gives up while Gatehouse waits for the token endpoint:
        # the late answer must find nothing to write to, and nothing breaks.
        s = Stack(idp_env={"GH_IDP_TOKEN_DELAY_MS": "1500"}, workers=1)
        try:
            for _ in range(3):
                b = Browser()
                r = b.request(s.base + "/.gatehouse/login?rd=%2Fgone")
                cb = urllib.parse.urlsplit(b.to_callback(
                    urllib.parse.urljoin(s.base, r.header("Location")), s.base, user="bob"))
                jar = b.jar(cb.netloc)
                sock = socket.create_connection(("127.0.0.1", s.port))
                sock.sendall((f"GET {cb.path}?{cb.query} HTTP/1.1\r\nHost: {cb.netloc}\r\n"
                              f"Cookie: gatehouse_login={jar['gatehouse_login']}\r\n"
                              "Accept: text/html\r\n\r\n").encode())
                time.sleep(0.3)
                sock.close()  # gone mid-exchange
            time.sleep(1.8)  # the token answers arrive
            self.assertIsNone(s.gh.proc.poll(), s.log()[-3000:])
            b = Browser()
            self.assertEqual(b.login(s.base, "/after", "alice").status, 200)
        finally:
            s.stop()


class ManySignIns(unittest.TestCase):
    def test_parallel_sign_ins_get_distinct_sessions(self):
        s = Stack(workers=1)
        try:
            def one(i):
                b = Browser()
                user = "alice" if i % 2 else "bob"
                r = b.login(s.base, f"/p{i}", user)
                me = b.request(s.base + "/.gatehouse/me", headers={"Accept": "application/json"})
                return r.status, me.json()["user"], user, b.session_cookie(s.base)

            with concurrent.futures.ThreadPoolExecutor(12) as ex:
                res = list(ex.map(one, range(24)))
            self.assertTrue(all(st == 200 for st, _, _, _ in res), res)
            self.assertTrue(all(seen == want for _, seen, want, _ in res), res)
            self.assertEqual(len({c for _, _, _, c in res}), 24)
        finally:
            s.stop()


class ReloadKeepsSignIn(unittest.TestCase):
    def test_sessions_and_sign_in_in_flight_survive_sighup(self):
        """A reloaded configuration shares the running sign-in state: the session
        store, the login cookie key (a sign-in started before the reload
        finishes after it) and the assertion key."""
        s = Stack()
        try:
            b = Browser()
            self.assertEqual(b.login(s.base, "/u").status, 200)
            jwks_before = b.request(s.base + "/.gatehouse/jwks.json").json()
            b2 = Browser()
            r = b2.request(s.base + "/.gatehouse/login?rd=%2Fafter")
            callback = b2.to_callback(urllib.parse.urljoin(s.base, r.header("Location")), s.base,
                                      user="bob")
            mark = len(s.log())
            s.gh.signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "configuration" in s.log()[mark:] and
                                     "loaded" in s.log()[mark:], 5), s.log()[mark:])
            # The session made before the reload is still known.
            self.assertEqual(b.request(s.base + "/u").status, 200)
            # The sign-in started before the reload completes after it.
            r = b2.request(callback)
            self.assertEqual(r.status, 302, r)
            self.assertEqual(r.header("Location"), "/after")
            me = b2.request(s.base + "/.gatehouse/me", headers={"Accept": "application/json"})
            self.assertEqual(me.json()["user"], "bob")
            # Same assertion key.
            self.assertEqual(b.request(s.base + "/.gatehouse/jwks.json").json(), jwks_before)
        finally:
            s.stop()


class AssertionKeyRotation(unittest.TestCase):
    def test_reload_with_a_new_key_rotates_and_keeps_the_old_one_published(self):
        """upstream_identity.assertion.key pointing at a new file + SIGHUP: new
        assertions carry the new kid, /.gatehouse/jwks.json lists both keys (the
        old one for `keep`), and both assertions verify against it."""
        s = Stack(gh_extra={"upstream_identity": {"assertion": {"key": "key-1.pem"}}})
        try:
            b = Browser()
            self.assertEqual(b.login(s.base, "/before").status, 200)
            old_tok = {k.lower(): v for k, v in s.backend.last("/before")["headers"]}[
                "x-gatehouse-assertion"]
            old_kid = jwt_parts(old_tok)[0]["kid"]
            cfg = s.config()
            cfg["upstream_identity"] = {"assertion": {"key": "key-2.pem", "keep": "10m"}}
            s.gh.write_config(cfg)
            mark = len(s.log())
            s.gh.signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "assertion key rotated" in s.log()[mark:], 15),
                            s.log()[mark:])
            # A new session: the assertion cache is keyed by the session's claims.
            b2 = Browser()
            self.assertEqual(b2.login(s.base, "/after", user="bob").status, 200)
            new_tok = {k.lower(): v for k, v in s.backend.last("/after")["headers"]}[
                "x-gatehouse-assertion"]
            new_kid = jwt_parts(new_tok)[0]["kid"]
            self.assertNotEqual(new_kid, old_kid)
            keys = {k["kid"]: k for k in
                    b.request(s.base + "/.gatehouse/jwks.json").json()["keys"]}
            self.assertIn(old_kid, keys)
            self.assertIn(new_kid, keys)
            with tempfile.TemporaryDirectory() as tmp:
                self.assertTrue(es256_verify(keys[old_kid], old_tok, tmp))
                self.assertTrue(es256_verify(keys[new_kid], new_tok, tmp))
            self.assertTrue(os.path.exists(os.path.join(s.gh.dir, "key-2.pem")))
        finally:
            s.stop()


class IdPUnreachable(unittest.TestCase):
    def test_clear_error_page_and_sessions_keep_working(self):
        s = Stack()
        try:
            b = Browser()
            self.assertEqual(b.login(s.base, "/u").status, 200)
            # A second browser gets as far as the callback; then the IdP dies.
            b2 = Browser()
            r = b2.request(s.base + "/.gatehouse/login?rd=%2Fu")
            callback = b2.to_callback(urllib.parse.urljoin(s.base, r.header("Location")), s.base,
                                      user="bob")
            s.idp.stop()
            mark = len(s.log())
            r = b2.request(callback)
            self.assertEqual(r.status, 502, r)
            self.assertIn("text/html", r.header("Content-Type"))
            self.assertIn(b"Sign-in failed", r.body)
            self.assertIn(r.header("X-Request-Id").encode(), r.body)
            new = s.log()[mark:]
            self.assertIn("Sign-in failed", new)
            self.assertIn(r.header("X-Request-Id"), new)
            # JSON callers get JSON.
            r = Browser(accept="application/json").request(callback)
            self.assertIn(r.status, (400, 502))
            self.assertIn("application/json", r.header("Content-Type"))
            # The established session does not need the IdP.
            for _ in range(3):
                self.assertEqual(b.request(s.base + "/u").status, 200)
        finally:
            s.stop()

    def test_idp_down_from_the_start(self):
        s = Stack()
        try:
            s.idp.stop()
            s.gh.cleanup()
            s.start_gh()  # discovery has never succeeded
            r = Browser().request(s.base + "/.gatehouse/login?rd=%2F")
            self.assertEqual(r.status, 502, r)
            self.assertIn("text/html", r.header("Content-Type"))
            self.assertIn(b"Sign-in is unavailable", r.body)
            self.assertIn(r.header("X-Request-Id").encode(), r.body)
            line = wait_for(lambda: [ln for ln in s.log().splitlines()
                                     if "Sign-in is unavailable" in ln], 3)
            self.assertTrue(line, s.log()[-2000:])
            self.assertIn("level=warn", line[0])
            self.assertIn(r.header("X-Request-Id"), line[0])
            self.assertEqual(Browser().request(s.base + "/pub/ok").status, 200)
        finally:
            s.stop()


class TLSCookies(unittest.TestCase):
    def test_host_prefix_and_secure_on_tls(self):
        tmp = tempfile.mkdtemp(prefix="gh-tls-signin-")
        backend = Backend("app")
        port = free_port()
        base = f"https://127.0.0.1:{port}"
        idp = IdP([client_for(base)])
        gh = None
        try:
            certs = CertFactory(tmp)
            crt, key = certs.leaf("gatehouse", ips=["127.0.0.1"])
            cfg = basic_config(
                [{"name": "app", "upstream": {"servers": [backend.url]}}],
                listen=[{"address": f"127.0.0.1:{port}", "tls": {"cert": crt, "key": key}}],
                state={"sqlite": "var/gatehouse.db"},
                identity_providers=[idp_conf(idp)],
            )
            gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET})
            ctx = ssl.create_default_context(cafile=certs.ca_crt)
            b = TLSBrowser(ctx)
            r = b.request(base + "/.gatehouse/login?rd=%2Ftls")
            self.assertEqual(r.status, 302, r)
            name, _, attrs = cookie_attrs(r.header("Set-Cookie"))
            self.assertEqual(name, "__Host-gatehouse_login")
            self.assertIn("secure", attrs)
            self.assertEqual(attrs["path"], "/")
            self.assertNotIn("domain", attrs)
            q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.header("Location")).query))
            self.assertEqual(q["redirect_uri"], base + "/.gatehouse/oidc/callback")
            r = b.request(b.to_callback(r.header("Location"), base))
            self.assertEqual(r.status, 302, r)
            cookies = {cookie_attrs(v)[0]: cookie_attrs(v)[2] for v in r.header_all("Set-Cookie")}
            a = cookies["__Host-gatehouse_session"]
            self.assertIn("secure", a)
            self.assertIn("httponly", a)
            self.assertEqual(a["samesite"], "Lax")
            self.assertEqual(a["path"], "/")
            self.assertNotIn("domain", a)
            r = b.request(base + "/tls")
            self.assertEqual(r.status, 200, r)
            h = {k.lower(): v for k, v in backend.last("/tls")["headers"]}
            self.assertEqual(h["x-gatehouse-email"], "alice@example.com")
            self.assertEqual(h["x-forwarded-proto"], "https")
            # The plain-HTTP cookie name is not accepted on TLS.
            jar = b.jar(f"127.0.0.1:{port}")
            v = jar.pop("__Host-gatehouse_session")
            jar["gatehouse_session"] = v
            self.assertEqual(b.request(base + "/tls").status, 302)
        finally:
            if gh:
                gh.cleanup()
            idp.stop()
            backend.stop()
            shutil.rmtree(tmp, ignore_errors=True)


class TLSBrowser(Browser):
    """The cookie-keeping client over TLS for https:// URLs (plain otherwise);
    the same jar and Set-Cookie handling as oidc.Browser."""

    def __init__(self, ctx, accept="text/html"):
        super().__init__(accept)
        self.ctx = ctx

    def request(self, url, method="GET", body=None, headers=None):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "https":
            return super().request(url, method, body, headers)
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=15, context=self.ctx)
        h = {"Accept": self.accept}
        jar = self.jar(u.netloc)
        if jar:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        if isinstance(body, dict):
            body = urllib.parse.urlencode(body)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        h.update(headers or {})
        conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), body=body,
                     headers=h)
        r = conn.getresponse()
        data = r.read()
        hdrs = r.getheaders()
        conn.close()
        for v in [v for k, v in hdrs if k.lower() == "set-cookie"]:
            name, _, rest = v.partition("=")
            if "max-age=0" in rest.lower():
                jar.pop(name, None)
            else:
                jar[name] = rest.split(";")[0]
        return Resp(r.status, hdrs, data)


if __name__ == "__main__":
    unittest.main()
