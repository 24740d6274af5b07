"""The cache of verified bearer tokens (an API client's next requests skip the
signature check) through the real binary: whatever the full check refuses,
the cache refuses too. A token cached while valid is refused once its exp has
passed (clock_skew: 0s here), once the provider's key set no longer has its
key, and no other token stands in for it: one differing in a byte of its
signature or of its claims, or with the same claims signed by another key.
Tokens over 4 KiB are not cached and are checked in full every time."""
import base64
import json
import time
import unittest

from rogue_op import RSAKey, b64u
from two_idp import TwoProviderCase


def with_payload(tok, claims):
    """tok with its claims replaced, its header and signature kept."""
    h, _, s = tok.split(".")
    return h + "." + b64u(json.dumps(claims).encode()) + "." + s


class BearerCacheCase(TwoProviderCase):
    backend_name = "api"
    rogue_id = "partner"

    @classmethod
    def rogue_settings(cls):
        return {"audiences": ["partner-api"], "accept_id_tokens": True, "clock_skew": "0s"}

    @classmethod
    def routes(cls):
        return [{"name": "api", "upstream": {"servers": [cls.backend.url]},
                 "identity_providers": ["partner"]}]

    def call(self, path, token):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.gh.port, timeout=10)
        c.request("GET", path, headers={"Accept": "application/json",
                                        "Authorization": f"Bearer {token}"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def assertServed(self, path, token, times=3):
        for _ in range(times):  # the first verifies, the next ones are cache hits
            before = self.backend.hits(path)
            st, body = self.call(path, token)
            self.assertEqual(st, 200, body)
            self.assertEqual(self.backend.hits(path), before + 1)
            seen = {k.lower(): v for k, v in self.backend.last(path)["headers"]}
            self.assertEqual(seen["x-gatehouse-user"], "partner:mallory")

    def assertRefused(self, path, token, needle):
        self.mark_log()
        before = self.backend.hits(path)
        for _ in range(3):  # every time, not only the first
            st, body = self.call(path, token)
            self.assertEqual(st, 401, body)
        self.assertEqual(self.backend.hits(path), before, "a refused token reached the backend")
        deadline = time.time() + 3
        while needle not in self.new_log():
            if time.time() > deadline:
                self.fail(f"log lacks {needle!r}:\n{self.new_log()[-2000:]}")
            time.sleep(0.05)


class BearerCacheRefuses(BearerCacheCase):

    def test_expired_after_caching(self):
        exp = int(time.time()) + 3
        tok = self.rogue.mint(self.rogue.claims(exp=exp))
        self.assertServed("/v1/exp", tok)
        while time.time() < exp + 0.2:
            time.sleep(0.1)
        self.assertRefused("/v1/exp", tok, "token expired")

    def test_no_stand_in_for_a_cached_token(self):
        claims = self.rogue.claims()
        tok = self.rogue.mint(claims)
        self.assertServed("/v1/stand-in", tok)
        h, p, s = tok.split(".")
        # One byte of the signature changed (its last character keeps the
        # decoded length: base64url's final bits are flipped in the middle).
        sig = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        sig[len(sig) // 2] ^= 1
        self.assertRefused("/v1/stand-in", f"{h}.{p}.{b64u(bytes(sig))}", "signature")
        # The same signature over other claims: another user, more groups.
        forged = dict(claims, sub="admin", groups=["admins"])
        self.assertRefused("/v1/stand-in", with_payload(tok, forged), "signature")
        # The same claims and kid, signed by a key the provider does not publish.
        other = RSAKey(self.rogue.tmp, "cache-other")
        self.assertRefused("/v1/stand-in", self.rogue.mint(claims, key=other), "signature")
        # The cached token itself still works.
        self.assertServed("/v1/stand-in", tok, times=1)

    def test_large_token_checked_every_time(self):
        # Over 4 KiB: not cached; still accepted, and refused after its exp.
        exp = int(time.time()) + 3
        tok = self.rogue.mint(self.rogue.claims(exp=exp, pad="x" * 5000))
        self.assertGreater(len(tok), 4096)
        self.assertServed("/v1/large", tok)
        while time.time() < exp + 0.2:
            time.sleep(0.1)
        self.assertRefused("/v1/large", tok, "token expired")


class BearerCacheKeyRemoved(BearerCacheCase):
    """Its own Gatehouse: the provider's signing key is rotated."""

    def test_refused_once_the_key_set_drops_its_key(self):
        old = self.rogue.mint(self.rogue.claims())
        self.assertServed("/v1/rotate", old)
        time.sleep(1.1)  # jwks_refresh_min_interval: 1s
        self.rogue.rotate()  # the published set now holds the new key only
        fresh = self.rogue.mint(self.rogue.claims())
        n = self.rogue.jwks_fetches
        self.assertServed("/v1/rotate", fresh)  # its unknown kid fetched the new set
        self.assertEqual(self.rogue.jwks_fetches, n + 1)
        self.assertRefused("/v1/rotate", old, "kid")


if __name__ == "__main__":
    unittest.main()
