"""Bearer JWTs for API clients through the proxy: an ID token from the real
OpenID Provider (obtained with the code flow, PKCE, by this test), tokens
minted by the stand-in OP (rogue_op.py) configured as a second identity
provider; valid ones reach the backend with the identity headers, expired,
wrong-audience, unsigned, unknown-kid, tampered and garbage ones get a 401
JSON answer with WWW-Authenticate and a log line, and never a session."""
import base64
import hashlib
import http.client
import json
import os
import re
import time
import unittest
import urllib.parse

from oidc import API_RESOURCE, CLIENT_ID, CLIENT_SECRET, PASSWORDS, Browser
from rogue_op import b64u
from two_idp import TwoProviderCase

API_REDIRECT = "http://127.0.0.1:9/api-cb"  # never visited: the code is read off the Location


def real_tokens(idp, user="alice", resource=None):
    """The code flow against the real IdP, as an API client would do it: the
    token response (id_token, and with resource a JWT access_token for it)."""
    verifier = b64u(os.urandom(32))
    challenge = b64u(hashlib.sha256(verifier.encode()).digest())
    params = {
        "client_id": CLIENT_ID, "response_type": "code", "redirect_uri": API_REDIRECT,
        "scope": "openid email profile groups" + (" api" if resource else ""), "state": "s1",
        "nonce": b64u(os.urandom(8)), "code_challenge": challenge,
        "code_challenge_method": "S256"}
    if resource:
        params["resource"] = resource
    q = urllib.parse.urlencode(params)
    b = Browser()
    url, method, body = f"{idp.issuer}/auth?{q}", "GET", None
    for _ in range(12):
        r = b.request(url, method, body)
        if r.status == 200 and b"<form" in r.body:
            url = urllib.parse.urljoin(url, re.search(rb'action="([^"]+)"', r.body)
                                       .group(1).decode())
            method, body = "POST", {"login": user, "password": PASSWORDS[user]}
            continue
        loc = urllib.parse.urljoin(url, r.header("Location"))
        if loc.startswith(API_REDIRECT):
            code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query))["code"]
            break
        url, method, body = loc, "GET", None
    else:
        raise AssertionError("no code from the IdP")
    c = http.client.HTTPConnection("127.0.0.1", idp.port, timeout=10)
    auth = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": API_REDIRECT,
            "code_verifier": verifier}
    if resource:
        form["resource"] = resource
    c.request("POST", "/token", urllib.parse.urlencode(form),
        {"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic " + auth})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    if r.status != 200:
        raise AssertionError(f"token endpoint: {r.status} {data}")
    return data


def real_id_token(idp, user="alice"):
    return real_tokens(idp, user)["id_token"]


def real_access_token(idp, user="alice"):
    """A JWT access token (RFC 9068, typ at+jwt) for the API resource."""
    return real_tokens(idp, user, API_RESOURCE)["access_token"]


class BearerTest(TwoProviderCase):
    backend_name = "api"
    rogue_id = "partner"
    extra_redirect_uris = (API_REDIRECT,)

    @classmethod
    def corp_settings(cls):
        return {"audiences": [API_RESOURCE]}

    @classmethod
    def rogue_settings(cls):
        # The partner issues only ID-token-like JWTs (aud = our client id):
        # the explicit opt-in, plus an API audience of its own.
        return {"audiences": ["partner-api"], "accept_id_tokens": True}

    @classmethod
    def routes(cls):
        return [{"name": "corp-only", "match": {"path_prefix": "/corp/"},
                 "upstream": {"servers": [cls.backend.url]}, "identity_providers": ["corp"]},
                {"name": "api", "upstream": {"servers": [cls.backend.url]},
                 "identity_providers": ["corp", "partner"]}]

    def call(self, path, token, accept="application/json"):
        c = http.client.HTTPConnection("127.0.0.1", self.gh.port, timeout=10)
        h = {"Accept": accept}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        c.request("GET", path, headers=h)
        r = c.getresponse()
        body = r.read()
        out = (r.status, {k.lower(): v for k, v in r.getheaders()}, body)
        c.close()
        return out

    def assertRefused(self, path, token, *needles, accept="application/json"):
        before = self.backend.hits(path)
        st, h, body = self.call(path, token, accept)
        self.assertEqual(st, 401, body)
        self.assertTrue(h["www-authenticate"].startswith("Bearer"), h)
        self.assertIn('error="invalid_token"', h["www-authenticate"])  # RFC 6750 §3.1
        self.assertIn("application/json", h["content-type"])
        self.assertEqual(json.loads(body)["error"], "unauthenticated")
        self.assertNotIn("set-cookie", h)
        self.assertEqual(self.backend.hits(path), before, "a refused token reached the backend")
        deadline = time.time() + 3
        while not all(n in self.new_log() for n in ("bearer token refused", *needles)):
            if time.time() > deadline:
                self.fail(f"log lacks {needles!r}:\n{self.new_log()[-2000:]}")
            time.sleep(0.05)

    def assertAccepted(self, path, token, user, email):
        st, h, body = self.call(path, token)
        self.assertEqual(st, 200, body)
        self.assertNotIn("set-cookie", h)  # no session for API clients
        seen = {k.lower(): v for k, v in self.backend.last(path)["headers"]}
        self.assertEqual(seen["x-gatehouse-user"], user)
        self.assertEqual(seen["x-gatehouse-email"], email)
        return seen

    def test_real_idp_access_token(self):
        tok = real_access_token(self.idp, "bob")
        hdr = json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))
        self.assertEqual(hdr["typ"], "at+jwt")
        seen = self.assertAccepted("/v1/items", tok, "bob", "bob@example.com")
        self.assertEqual(seen["x-gatehouse-groups"], "sales")
        self.assertEqual(len(seen["x-gatehouse-assertion"].split(".")), 3)
        self.assertAccepted("/corp/items", tok, "bob", "bob@example.com")
        # Even a browser-like Accept gets the bearer identity, not a redirect.
        st, _, _ = self.call("/v1/items", tok, accept="text/html")
        self.assertEqual(st, 200)

    def test_real_idp_id_token_refused(self):
        # The sign-in client's ID token is no access token (it rides in logout
        # URLs): refused by default, for its audience and its nonce.
        tok = real_id_token(self.idp, "bob")
        self.assertRefused("/v1/idt", tok, "audience")

    def test_real_token_tampered(self):
        tok = real_access_token(self.idp, "alice")
        h, p, s = tok.split(".")
        claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        claims["groups"] = ["admins", "root"]
        forged = h + "." + b64u(json.dumps(claims).encode()) + "." + s
        self.assertRefused("/v1/forged", forged, "signature")

    def test_stand_in_valid_token(self):
        tok = self.rogue.mint(self.rogue.claims())
        self.assertAccepted("/v1/partner", tok, "partner:mallory", "mallory@example.com")
        # A second configured audience is accepted too.
        tok = self.rogue.mint(self.rogue.claims(aud="partner-api"))
        self.assertAccepted("/v1/partner2", tok, "partner:mallory", "mallory@example.com")

    def test_provider_not_accepted_on_route(self):
        tok = self.rogue.mint(self.rogue.claims())
        self.assertRefused("/corp/x", tok)

    def test_expired(self):
        now = int(time.time())
        self.assertRefused("/v1/exp", self.rogue.mint(self.rogue.claims(iat=now - 7200,
                                                                      exp=now - 3600)),
                           "token expired")

    def test_wrong_audience(self):
        self.assertRefused("/v1/aud", self.rogue.mint(self.rogue.claims(aud="other-app")),
                           "audience")

    def test_wrong_issuer(self):
        tok = self.rogue.mint(self.rogue.claims(iss="https://evil.example"))
        self.assertRefused("/v1/iss", tok)

    def test_alg_none_and_hs256(self):
        self.assertRefused("/v1/none", self.rogue.mint(self.rogue.claims(), alg="none"))
        self.assertRefused("/v1/hs", self.rogue.mint(self.rogue.claims(), alg="HS256",
                                                     hmac_key=self.rogue.key.public_pem),
                           "not allowed")

    def test_unknown_kid(self):
        from rogue_op import RSAKey
        other = RSAKey(self.rogue.tmp, "bearer-other")
        self.assertRefused("/v1/kid", self.rogue.mint(self.rogue.claims(), kid="nope", key=other),
                           "kid")

    def test_garbage(self):
        for tok in ("garbage", "a.b.c", "", "...", "e30.e30.e30", "x" * 20000):
            with self.subTest(tok=tok[:20]):
                self.mark_log()
                st, h, body = self.call("/v1/garbage", tok)
                self.assertIn(st, (400, 401, 431), body)
                if st == 401:
                    self.assertTrue(h["www-authenticate"].startswith("Bearer"))
        self.assertEqual(self.backend.hits("/v1/garbage"), 0)
        self.assertIsNone(self.gh.proc.poll())

    def test_no_token_api_client(self):
        st, h, body = self.call("/v1/none-given", None)
        self.assertEqual(st, 401)
        self.assertIn("Bearer", h["www-authenticate"])
        self.assertNotIn("error=", h["www-authenticate"])  # no token, no token error
        self.assertEqual(json.loads(body)["error"], "unauthenticated")


if __name__ == "__main__":
    unittest.main()
