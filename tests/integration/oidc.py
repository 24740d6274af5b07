"""Sign-in helpers for integration tests: the real OpenID Provider (npm
`oidc-provider`, OpenID Certified) started from tests/idp/oidc_idp.mjs on a free
loopback port, and a small cookie-keeping HTTP client that walks the
authorization-code flow through Gatehouse and the IdP's login form, the way a
browser would (redirects followed by hand so each hop can be asserted)."""
import http.client
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse

from harness import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
IDP_SCRIPT = os.path.join(TESTS, "idp", "oidc_idp.mjs")

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3"}
API_RESOURCE = "https://api.gatehouse.test"  # the IdP's JWT access token audience
CLIENT_ID = "gatehouse"
CLIENT_SECRET = "gatehouse-test-secret"


class IdP:
    """The real OpenID Provider on 127.0.0.1. clients: list of client dicts
    (client_id, client_secret, redirect_uris, post_logout_redirect_uris,
    backchannel_logout_uri ...). env: GH_IDP_* lifetimes."""

    def __init__(self, clients, env=None, port=None):
        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        penv = dict(os.environ)
        penv.update({
            "GH_IDP_PORT": str(self.port),
            "GH_IDP_CLIENT": json.dumps(clients),
            "GH_IDP_ALICE_PASSWORD": PASSWORDS["alice"],
            "GH_IDP_BOB_PASSWORD": PASSWORDS["bob"],
            "GH_IDP_CAROL_PASSWORD": PASSWORDS["carol"],
        })
        penv.update(env or {})
        self.lines = []
        self.proc = subprocess.Popen(["node", IDP_SCRIPT], cwd=TESTS, env=penv,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(30):
            self.stop()
            raise RuntimeError("IdP did not start:\n" + "\n".join(self.lines))

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if line.startswith("GH_IDP_READY "):
                self.ready.set()

    def log(self):
        return "\n".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client_for(gh_base, **extra):
    """The IdP client registration for a Gatehouse reachable at gh_base
    (e.g. "http://127.0.0.1:PORT")."""
    c = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        # The plain path serves a single provider; with several, each has its
        # own (this IdP is "corp" in the tests).
        "redirect_uris": [f"{gh_base}/.gatehouse/oidc/callback",
                          f"{gh_base}/.gatehouse/oidc/callback/corp"],
        "post_logout_redirect_uris": [f"{gh_base}/.gatehouse/signed-out"],
        "backchannel_logout_uri": f"{gh_base}/.gatehouse/oidc/backchannel-logout",
    }
    c.update(extra)
    return c


def idp_conf(idp, id="corp", **extra):
    """An identity_providers[] entry for Gatehouse (secret read from a file the
    Gatehouse harness writes: pass files={"oidc-secret": CLIENT_SECRET})."""
    d = {
        "id": id,
        "type": "oidc",
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret_file": "oidc-secret",
        "allow_insecure_issuer": True,
        "scopes": ["openid", "email", "profile", "groups", "offline_access"],
        # The organisation's own IdP: its users keep bare ids ("alice"); any
        # other provider's are "<id>:<sub>".
        "bare_user_ids": True,
    }
    d.update(extra)
    for k in [k for k, v in d.items() if v is None]:
        del d[k]
    return d


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Resp {self.status} {self.headers} {self.body[:200]!r}>"


class Browser:
    """A cookie jar per origin (host:port) plus plain http.client requests."""

    def __init__(self, accept="text/html", ssl_context=None):
        self.jars = {}
        self.accept = accept
        self.ssl_context = ssl_context  # https:// URLs: e.g. with a client certificate

    def jar(self, origin):
        return self.jars.setdefault(origin, {})

    def request(self, url, method="GET", body=None, headers=None):
        u = urllib.parse.urlsplit(url)
        origin = u.netloc
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=15,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
        h = {"Accept": self.accept}
        jar = self.jar(origin)
        if jar:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
        if body is not None and isinstance(body, dict):
            body = urllib.parse.urlencode(body)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        h.update(headers or {})
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        hdrs = r.getheaders()
        conn.close()
        for v in [v for k, v in hdrs if k.lower() == "set-cookie"]:
            name, _, rest = v.partition("=")
            val = rest.split(";")[0]
            attrs = rest.lower()
            if "max-age=0" in attrs or "expires=thu, 01 jan 1970" in attrs:
                jar.pop(name, None)
            else:
                jar[name] = val
        return Resp(r.status, hdrs, data)

    def follow(self, url, method="GET", body=None, limit=12):
        """Follows redirects (relative ones against the current URL); returns
        (final response, final url, list of visited urls)."""
        visited = []
        for _ in range(limit):
            visited.append(url)
            r = self.request(url, method, body)
            if r.status not in (301, 302, 303, 307, 308):
                return r, url, visited
            url = urllib.parse.urljoin(url, r.header("Location"))
            if r.status in (301, 302, 303):
                method, body = "GET", None
        raise AssertionError(f"too many redirects: {visited}")

    def login(self, gh_base, path="/", user="alice", password=None):
        """Signs in through Gatehouse at gh_base starting from path; returns the
        final response (the app's answer for path)."""
        r, url, _ = self.follow(gh_base + path)
        if r.status != 200 or b"<form" not in r.body:
            raise AssertionError(f"expected the IdP login form, got {r!r} at {url}")
        action = re.search(rb'action="([^"]+)"', r.body).group(1).decode()
        action = urllib.parse.urljoin(url, action)
        r, url, _ = self.follow(action, "POST",
                                {"login": user, "password": password or PASSWORDS[user]})
        return r

    def to_callback(self, auth_url, gh_base, user="alice", password=None):
        """From the IdP's authorization URL through its login form, up to the
        redirect back to Gatehouse at gh_base: returns that callback URL without
        following it (so a test can replay, delay or tamper with it)."""
        r, url, _ = self.follow(auth_url)
        if r.status != 200 or b"<form" not in r.body:
            raise AssertionError(f"expected the IdP login form, got {r!r} at {url}")
        action = urllib.parse.urljoin(url, re.search(rb'action="([^"]+)"', r.body)
                                      .group(1).decode())
        r = self.request(action, "POST",
                         {"login": user, "password": password or PASSWORDS[user]})
        while not r.header("Location", "").startswith(gh_base):
            action = urllib.parse.urljoin(action, r.header("Location"))
            r = self.request(action)
        return r.header("Location")

    def session_cookie(self, gh_base, name="gatehouse_session"):
        return self.jar(urllib.parse.urlsplit(gh_base).netloc).get(name)


def wait_for(pred, timeout=5.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()
