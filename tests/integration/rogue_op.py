"""A stand-in OpenID Provider for tests (NOT a real OP): Python stdlib plus the
openssl CLI. It serves discovery, a JWKS, an authorization endpoint that
answers at once with a code (no login form), and a token endpoint that hands
out an ID token crafted for the scenario the test picked, so the relying party
can be fed tokens a real provider would never issue: alg "none", HS256 keyed
with the provider's public key, a wrong nonce, iss or aud, an expired token,
an unknown kid. The RSA key is made with `openssl genpkey` at start and every
RS256 signature is made with `openssl dgst -sha256 -sign`.

    op = RogueOP(client_id="gatehouse", client_secret="s")
    op.scenario = "wrong_nonce"      # see SCENARIOS
    ...                              # the browser walks Gatehouse's login
    op.stop()

`op.mint(claims, ...)` signs any claims (bearer-token tests)."""
import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse

SCENARIOS = ("good", "wrong_nonce", "no_nonce", "alg_none", "hs256_public_key", "expired",
             "wrong_iss", "wrong_aud", "unknown_kid", "bad_signature", "future_iat",
             "nbf_future", "multi_aud_no_azp", "multi_aud_azp", "wrong_azp")


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_json(obj):
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


class RSAKey:
    """An RSA key made by `openssl genpkey`; signs with `openssl dgst`."""

    def __init__(self, dirpath, name):
        self.path = os.path.join(dirpath, f"{name}.pem")
        self.pub_path = os.path.join(dirpath, f"{name}.pub.pem")
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", self.path)
        _openssl("pkey", "-in", self.path, "-pubout", "-out", self.pub_path)
        with open(self.pub_path, "rb") as f:
            self.public_pem = f.read()
        text = _openssl("rsa", "-in", self.path, "-noout", "-modulus").stdout.decode()
        modulus = int(text.strip().split("=", 1)[1], 16)
        self.n = modulus.to_bytes((modulus.bit_length() + 7) // 8, "big")
        self.e = 65537  # genpkey's default public exponent

    def sign(self, data):
        return _openssl("dgst", "-sha256", "-sign", self.path, input=data).stdout

    def jwk(self, kid):
        return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": b64u(self.n),
                "e": b64u(self.e.to_bytes(3, "big"))}


def _openssl(*args, input=None):
    r = subprocess.run(["openssl", *args], input=input, capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr.decode()}")
    return r


class RogueOP:
    def __init__(self, client_id="gatehouse", client_secret="gatehouse-test-secret"):
        self.client_id = client_id
        self.client_secret = client_secret
        self.scenario = "good"
        self.sub = "mallory"
        self.email = "mallory@example.com"
        self.email_verified = True  # None: the claim is left out
        self.name = "Mallory Stand-in"
        self.groups = ["rogue"]
        self.tmp = tempfile.mkdtemp(prefix="gh-rogue-")
        self.key = RSAKey(self.tmp, "op")
        self.other_key = None  # made lazily for unknown_kid
        self.kid = "rogue-1"
        self.refresh = False      # hand out (rotating) refresh tokens
        self.access_ttl = 300     # expires_in of access tokens
        self.refresh_sub = None   # sub of the ID token a refresh returns (None: same user)
        self.refresh_groups = None
        self.refresh_tokens = set()
        self.jwks_fetches = 0
        self.sid = None           # sid claim of the ID tokens (back-channel logout tests)
        # IdP mix-up: a function of the authorization request's parameters that
        # returns a URL (another provider's authorization endpoint) to bounce
        # the browser to instead of answering; None answers as usual.
        self.bounce = None
        self.codes = {}        # code -> (nonce, code_challenge, redirect_uri)
        self.reuse_codes = False  # a lax OP: a code may be redeemed again
        self.refresh_delay = 0.0  # seconds a refresh grant takes to answer
        self.token_requests = []
        self.lock = threading.Lock()
        op = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body, ctype="application/json", headers=()):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query))
                if u.path == "/.well-known/openid-configuration":
                    return self._send(200, op.discovery())
                if u.path == "/jwks":
                    with op.lock:
                        op.jwks_fetches += 1
                    return self._send(200, {"keys": [op.key.jwk(op.kid)]})
                if u.path == "/authorize":
                    return self._authorize(q)
                if u.path == "/session/end":
                    return self._send(200, b"<!doctype html><p>signed out</p>", "text/html")
                return self._send(404, {"error": "not_found"})

            def _authorize(self, q):
                if op.bounce is not None:
                    return self._send(302, b"", "text/plain", [("Location", op.bounce(q))])
                if q.get("client_id") != op.client_id or q.get("response_type") != "code" \
                        or q.get("code_challenge_method") != "S256" or "redirect_uri" not in q:
                    return self._send(400, {"error": "invalid_request"})
                code = b64u(os.urandom(24))
                with op.lock:
                    op.codes[code] = (q.get("nonce"), q.get("code_challenge"), q["redirect_uri"])
                sep = "&" if "?" in q["redirect_uri"] else "?"
                loc = (q["redirect_uri"] + sep + urllib.parse.urlencode(
                    {"code": code, "state": q.get("state", "")}))
                self._send(302, b"", "text/plain", [("Location", loc)])

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode()
                if urllib.parse.urlsplit(self.path).path != "/token":
                    return self._send(404, {"error": "not_found"})
                form = dict(urllib.parse.parse_qsl(body))
                form["_authorization"] = self.headers.get("Authorization") or ""
                with op.lock:
                    op.token_requests.append(form)
                    code = form.get("code", "")
                    entry = op.codes.get(code) if op.reuse_codes else op.codes.pop(code, None)
                if not op._client_ok(self.headers.get("Authorization"), form):
                    return self._send(401, {"error": "invalid_client"})
                if form.get("grant_type") == "refresh_token":
                    return self._refresh(form)
                if form.get("grant_type") != "authorization_code" or entry is None:
                    return self._send(400, {"error": "invalid_grant"})
                nonce, challenge, redirect_uri = entry
                verifier = form.get("code_verifier", "")
                if b64u(hashlib.sha256(verifier.encode()).digest()) != challenge \
                        or form.get("redirect_uri") != redirect_uri:
                    return self._send(400, {"error": "invalid_grant"})
                out = {"access_token": b64u(os.urandom(24)), "token_type": "Bearer",
                       "expires_in": op.access_ttl, "id_token": op.id_token(nonce)}
                if op.refresh:
                    out["refresh_token"] = op.new_refresh_token()
                self._send(200, out)

            def _refresh(self, form):
                time.sleep(op.refresh_delay)
                with op.lock:
                    known = form.get("refresh_token") in op.refresh_tokens
                    op.refresh_tokens.discard(form.get("refresh_token"))  # rotation
                if not known:
                    return self._send(400, {"error": "invalid_grant"})
                over = {}
                if op.refresh_sub:
                    over["sub"] = op.refresh_sub
                if op.refresh_groups is not None:
                    over["groups"] = op.refresh_groups
                self._send(200, {"access_token": b64u(os.urandom(24)), "token_type": "Bearer",
                                 "expires_in": op.access_ttl,
                                 "refresh_token": op.new_refresh_token(),
                                 "id_token": op.mint(op.claims(None, **over))})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def rotate(self):
        """A new signing key with a new kid replaces the published one."""
        with self.lock:
            n = getattr(self, "_rotations", 0) + 1
            self._rotations = n
        self.key = RSAKey(self.tmp, f"rotated-{n}")
        self.kid = f"rogue-rotated-{n}"

    def new_refresh_token(self):
        rt = b64u(os.urandom(24))
        with self.lock:
            self.refresh_tokens.add(rt)
        return rt

    def refreshes(self):
        return sum(1 for f in self.token_requests if f.get("grant_type") == "refresh_token")

    def discovery(self):
        i = self.issuer
        return {
            "issuer": i, "authorization_endpoint": i + "/authorize", "token_endpoint": i + "/token",
            "jwks_uri": i + "/jwks", "end_session_endpoint": i + "/session/end",
            "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }

    def _client_ok(self, authz, form):
        if authz and authz.startswith("Basic "):
            raw = base64.b64decode(authz[6:]).decode()
            cid, _, secret = raw.partition(":")
            cid, secret = urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)
        else:
            cid, secret = form.get("client_id"), form.get("client_secret")
        return cid == self.client_id and hmac.compare_digest(secret or "", self.client_secret)

    def claims(self, nonce=None, **over):
        now = int(time.time())
        c = {"iss": self.issuer, "sub": self.sub, "aud": self.client_id, "iat": now,
             "exp": now + 300, "email": self.email, "name": self.name,
             "groups": list(self.groups)}
        if self.email_verified is not None:
            c["email_verified"] = self.email_verified
        if nonce is not None:
            c["nonce"] = nonce
        if self.sid:
            c["sid"] = self.sid
        c.update(over)
        return c

    def logout_token(self, **over):
        """A back-channel logout token (OIDC Back-Channel Logout 1.0 §2.4)."""
        c = {"iss": self.issuer, "aud": self.client_id, "iat": int(time.time()),
             "jti": b64u(os.urandom(12)),
             "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}
        c.update(over)
        for k in [k for k, v in c.items() if v is None]:
            del c[k]
        return self.mint(c)

    def mint(self, claims, alg="RS256", kid=None, key=None, hmac_key=None):
        """A compact JWS over claims. alg "none" gives an unsigned token;
        "HS256" uses hmac_key; "RS256" uses key (default: the published one)."""
        header = {"alg": alg, "typ": "JWT"}
        if alg != "none":
            header["kid"] = kid or self.kid
        signing_input = (b64u_json(header) + "." + b64u_json(claims)).encode()
        if alg == "none":
            return signing_input.decode() + "."
        if alg == "HS256":
            sig = hmac.new(hmac_key, signing_input, hashlib.sha256).digest()
        else:
            sig = (key or self.key).sign(signing_input)
        return signing_input.decode() + "." + b64u(sig)

    def id_token(self, nonce):
        s = self.scenario
        now = int(time.time())
        if s == "good":
            return self.mint(self.claims(nonce))
        if s == "wrong_nonce":
            return self.mint(self.claims("not-the-nonce-" + b64u(os.urandom(6))))
        if s == "no_nonce":
            return self.mint(self.claims(None))
        if s == "alg_none":
            return self.mint(self.claims(nonce), alg="none")
        if s == "hs256_public_key":
            return self.mint(self.claims(nonce), alg="HS256", hmac_key=self.key.public_pem)
        if s == "expired":
            return self.mint(self.claims(nonce, iat=now - 3600, exp=now - 1800))
        if s == "future_iat":
            return self.mint(self.claims(nonce, iat=now + 3600, exp=now + 7200))
        if s == "wrong_iss":
            return self.mint(self.claims(nonce, iss="https://evil.example"))
        if s == "wrong_aud":
            return self.mint(self.claims(nonce, aud="someone-else"))
        if s == "unknown_kid":
            if self.other_key is None:
                self.other_key = RSAKey(self.tmp, "other")
            return self.mint(self.claims(nonce), kid="not-published", key=self.other_key)
        if s == "nbf_future":
            return self.mint(self.claims(nonce, nbf=now + 3600))
        if s == "multi_aud_no_azp":
            return self.mint(self.claims(nonce, aud=[self.client_id, "other-rp"]))
        if s == "multi_aud_azp":
            return self.mint(self.claims(nonce, aud=[self.client_id, "other-rp"],
                                         azp=self.client_id))
        if s == "wrong_azp":
            return self.mint(self.claims(nonce, azp="other-rp"))
        if s == "bad_signature":
            tok = self.mint(self.claims(nonce))
            head, payload, sig = tok.split(".")
            forged = b64u_json(self.claims(nonce, sub="admin"))
            return f"{head}.{forged}.{sig}"
        raise ValueError(f"unknown scenario {s!r}")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def token_parts(tok):
    """(header, claims) of a compact JWS, unverified."""
    h, p = tok.split(".")[:2]
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(h))),
            json.loads(base64.urlsafe_b64decode(pad(p))))


__all__ = ["RogueOP", "RSAKey", "SCENARIOS", "b64u", "b64u_json", "token_parts"]
