"""The sign-in flow's edges through the real binary and the real OpenID
Provider (tests/idp): IdP mix-up with the stand-in OP bouncing a victim to the
real provider, per-provider redirect URIs and RFC 9207 iss; sign-out as a
confirmed POST (CSRF); redirect and post-logout URIs from configuration, not
from the Host header; the return after sign-out on the listener the user is
on (HTTP and HTTPS), and "No, stay signed in" at the IdP; "Sign in as someone
else" on the denied page; display names on the chooser."""
import http.client
import re
import shutil
import ssl
import tempfile
import unittest
import urllib.parse

from harness import Backend, CertFactory, Gatehouse, basic_config, free_port
from oidc import CLIENT_SECRET, PASSWORDS, Browser, IdP, client_for, idp_conf
from test_signin import TLSBrowser
from two_idp import TwoProviderCase

CALLBACK = "/.gatehouse/oidc/callback"
SALES_ONLY = """mode: enforce
rules:
  - id: sales-only
    effect: allow
    when:
      groups: {contains: sales}
"""


def qs(url):
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def with_params(url, **changes):
    """url with query parameters replaced (None removes one)."""
    u = urllib.parse.urlsplit(url)
    q = [(k, v) for k, v in urllib.parse.parse_qsl(u.query) if k not in changes]
    q += [(k, v) for k, v in changes.items() if v is not None]
    return urllib.parse.urlunsplit(u._replace(query=urllib.parse.urlencode(q)))


def walk_to_gatehouse(b, url, gh_base, user="alice"):
    """Follows url (through the IdP's login form when it shows one) until the
    next redirect to Gatehouse; returns that URL without requesting it."""
    method, body = "GET", None
    for _ in range(16):
        r = b.request(url, method, body)
        if r.status == 200 and b"<form" in r.body and b'name="password"' in r.body:
            action = re.search(rb'action="([^"]+)"', r.body).group(1).decode()
            url, method = urllib.parse.urljoin(url, action), "POST"
            body = {"login": user, "password": PASSWORDS[user]}
            continue
        if r.status == 200 and b"Submitting Callback" in r.body:
            # The IdP's self-submitting form (it ends the previous account's
            # session when another one signs in), submitted as a browser would.
            action = re.search(rb'action="([^"]+)"', r.body).group(1).decode()
            url, method = urllib.parse.urljoin(url, action.replace("&amp;", "&")), "POST"
            body = {k.decode(): v.decode() for k, v in
                    re.findall(rb'name="([^"]+)" value="([^"]*)"', r.body)}
            continue
        if r.status not in (302, 303):
            raise AssertionError(f"no redirect to Gatehouse: {r!r} at {url}")
        url = urllib.parse.urljoin(url, r.header("Location"))
        method, body = "GET", None
        if url.startswith(gh_base):
            return url
    raise AssertionError("never came back to Gatehouse")


def confirm_at_idp(b, url, logout):
    """The IdP's sign-out question, answered: logout=True is "Yes, sign me
    out", False is "No, stay signed in". Returns the redirect's target."""
    r = b.request(url)
    assert r.status == 200, r
    form = {k.decode(): v.decode()
            for k, v in re.findall(rb'name="([^"]+)" value="([^"]*)"', r.body)}
    action = urllib.parse.urljoin(url, re.search(rb'action="([^"]+)"', r.body).group(1).decode())
    if logout:
        form["logout"] = "yes"
    else:
        form.pop("logout", None)
    r = b.request(action, "POST", form)
    assert r.status in (302, 303), r
    return urllib.parse.urljoin(action, r.header("Location"))


class Flow(TwoProviderCase):
    """The real IdP as "corp" (display name "Corporate SSO") and the stand-in
    OP as "rogue"; /corp/ accepts only corp; /sales/ is for the sales group."""

    @classmethod
    def corp_settings(cls):
        return {"display_name": "Corporate SSO"}

    @classmethod
    def rogue_settings(cls):
        return {"scopes": ["openid", "email"], "display_name": "Partner <Login>"}

    @classmethod
    def files(cls):
        return {"sales.yaml": SALES_ONLY}

    @classmethod
    def routes(cls):
        up = {"servers": [cls.backend.url]}
        return [{"name": "corp-only", "match": {"path_prefix": "/corp/"}, "upstream": up,
                 "identity_providers": ["corp"]},
                {"name": "sales", "match": {"path_prefix": "/sales/"}, "upstream": up,
                 "policy": "sales.yaml", "identity_providers": ["corp"]},
                {"name": "app", "upstream": up, "identity_providers": ["corp", "rogue"]}]

    def setUp(self):
        super().setUp()
        self.rogue.bounce = None
        self.rogue.scenario = "good"

    def start(self, b, idp, rd="/"):
        r = b.request(f"{self.base}/.gatehouse/login?idp={idp}&rd={urllib.parse.quote(rd, '')}")
        self.assertEqual(r.status, 302, r)
        return r.header("Location")

    def refused(self, b, url, needle):
        r = b.request(url)
        self.assertTrue(400 <= r.status < 500, r)
        self.assertIn(b"Sign-in failed", r.body)
        self.assertIsNone(b.session_cookie(self.base))
        self.assertIn(needle, self.new_log())

    # -- 9.5 IdP mix-up

    def mixup_attack(self, drop_iss):
        """The attacker starts a sign-in with the real provider and keeps its
        authorization URL; the victim is sent to sign in with the rogue one,
        which bounces them to the real provider with the attacker's request
        (only the state is the victim's); the victim signs in there as alice.
        Whatever code the rogue then receives, the attacker injects into its
        own flow at the callback. Returns the attacker's browser."""
        attacker = Browser()
        auth_a = self.start(attacker, "corp", "/corp/secret")
        self.rogue.bounce = lambda q: with_params(auth_a, state=q.get("state", ""))
        seen = len(self.rogue.token_requests)
        victim = Browser()
        cb = walk_to_gatehouse(victim, self.start(victim, "rogue"), self.base)
        code = qs(cb)["code"]
        if drop_iss:  # a provider that does not send iss (RFC 9207 is optional)
            cb = with_params(cb, iss=None)
        r = victim.request(cb)
        self.assertNotEqual(r.status, 302, r)  # the victim's sign-in fails either way
        stolen = [f["code"] for f in self.rogue.token_requests[seen:] if f.get("code") == code]
        self.assertEqual(stolen, [], "the real provider's code reached the rogue provider")
        redirect_uri = qs(auth_a)["redirect_uri"]
        for c in stolen:
            attacker.request(with_params(redirect_uri, code=c, state=qs(auth_a)["state"],
                                         iss=self.idp.issuer))
        return attacker

    def test_mixup_attack_fails(self):
        for drop_iss in (False, True):
            with self.subTest(drop_iss=drop_iss):
                attacker = self.mixup_attack(drop_iss)
                self.assertIsNone(attacker.session_cookie(self.base))
                r = attacker.request(self.base + "/corp/secret")
                self.assertEqual(r.status, 302, r)  # still sent to sign in
                self.assertIn("sign-in refused: login state was issued for identity provider "
                              '"rogue", not "corp"', self.new_log())
                self.mark_log()

    def test_each_provider_has_its_redirect_uri(self):
        b = Browser()
        self.assertEqual(qs(self.start(b, "corp"))["redirect_uri"],
                         f"{self.base}{CALLBACK}/corp")
        self.assertEqual(qs(self.start(b, "rogue"))["redirect_uri"],
                         f"{self.base}{CALLBACK}/rogue")
        # The stand-in answers at its own path, and that signs in.
        cb = walk_to_gatehouse(b, self.start(b, "rogue"), self.base)
        self.assertTrue(cb.startswith(f"{self.base}{CALLBACK}/rogue?"), cb)
        self.assertEqual(b.request(cb).status, 302)
        self.assertIsNotNone(b.session_cookie(self.base))

    def test_state_of_one_provider_at_anothers_callback(self):
        b = Browser()
        cb = walk_to_gatehouse(b, self.start(b, "rogue"), self.base)
        self.refused(b, cb.replace(f"{CALLBACK}/rogue?", f"{CALLBACK}/corp?"),
                     'login state was issued for identity provider "rogue", not "corp"')
        b = Browser()
        cb = walk_to_gatehouse(b, self.start(b, "corp"), self.base)
        self.refused(b, cb.replace(f"{CALLBACK}/corp?", f"{CALLBACK}/rogue?"),
                     'login state was issued for identity provider "corp", not "rogue"')
        # The shared path serves a single provider only.
        b = Browser()
        cb = walk_to_gatehouse(b, self.start(b, "corp"), self.base)
        self.refused(b, cb.replace(f"{CALLBACK}/corp?", f"{CALLBACK}?"),
                     "callback at the shared path while several identity providers")

    def test_iss_required_when_the_provider_advertises_it(self):
        b = Browser()
        cb = walk_to_gatehouse(b, self.start(b, "corp"), self.base)
        self.assertEqual(qs(cb).get("iss"), self.idp.issuer)  # oidc-provider sends it
        self.refused(b, with_params(cb, iss=None),
                     'callback has no iss although identity provider "corp" advertises it')
        b = Browser()
        cb = walk_to_gatehouse(b, self.start(b, "corp"), self.base)
        self.refused(b, with_params(cb, iss=self.rogue.issuer), "is not the configured issuer")
        # The stand-in advertises nothing and sends no iss: accepted.
        b = Browser()
        cb = walk_to_gatehouse(b, self.start(b, "rogue"), self.base)
        self.assertNotIn("iss", qs(cb))
        self.assertEqual(b.request(cb).status, 302)

    # -- 10.12 display names

    def test_chooser_shows_display_names(self):
        r = Browser().request(self.base + "/.gatehouse/login?rd=%2F")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b">Sign in with Corporate SSO</a>", r.body)
        self.assertIn(b">Sign in with Partner &lt;Login&gt;</a>", r.body)
        self.assertNotIn(b"Sign in with corp<", r.body)
        self.assertIn(b'href="/.gatehouse/login?idp=corp&amp;rd=%2F"', r.body)

    # -- 10.11 sign in as someone else

    def test_denied_page_signs_in_as_someone_else(self):
        b = Browser()
        r = b.request(walk_to_gatehouse(b, self.start(b, "corp", "/corp/start"), self.base))
        self.assertEqual(r.status, 302, r)
        r = b.request(self.base + "/sales/report?q=1")
        self.assertEqual(r.status, 403, r)
        link = re.search(rb'href="([^"]+)">Sign in as someone else', r.body).group(1).decode()
        link = link.replace("&amp;", "&")
        self.assertEqual(qs(link), {"prompt": "select_account", "rd": "/sales/report?q=1"})
        r = b.request(self.base + link)
        # /.gatehouse/login is on the route that offers both providers: the
        # chooser, whose links keep the prompt and the return.
        self.assertEqual(r.status, 200, r)
        pick = re.search(rb'href="([^"]+)">Sign in with Corporate SSO', r.body).group(1).decode()
        pick = pick.replace("&amp;", "&")
        self.assertEqual(qs(pick), {"idp": "corp", "prompt": "select_account",
                                    "rd": "/sales/report?q=1"})
        r = b.request(self.base + pick)
        self.assertEqual(r.status, 302, r)
        auth = r.header("Location")
        # The IdP has no account picker (prompt_values_supported): it asks who.
        self.assertEqual(qs(auth)["prompt"], "login")
        cb = walk_to_gatehouse(b, auth, self.base, user="bob")
        r = b.request(cb)
        self.assertEqual((r.status, r.header("Location")), (302, "/sales/report?q=1"))
        r = b.request(self.base + "/sales/report?q=1")
        self.assertEqual(r.status, 200, r)
        h = {k.lower(): v for k, v in self.backend.last("/sales/report")["headers"]}
        self.assertEqual(h["x-gatehouse-email"], "bob@example.com")


class Logout(unittest.TestCase):
    """Sign-out on an HTTP and an HTTPS listener of one Gatehouse, with the
    real IdP's RP-initiated logout."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="gh-logout-")
        cls.backend = Backend("app")
        p1, p2 = free_port(), free_port()
        cls.http = f"http://127.0.0.1:{p1}"
        cls.https = f"https://127.0.0.1:{p2}"
        client = client_for(cls.http)
        client["redirect_uris"].append(cls.https + CALLBACK)
        client["post_logout_redirect_uris"].append(cls.https + "/.gatehouse/signed-out")
        cls.idp = IdP([client])
        certs = CertFactory(cls.tmp)
        crt, key = certs.leaf("gatehouse", ips=["127.0.0.1"])
        cls.ctx = ssl.create_default_context(cafile=certs.ca_crt)
        cfg = basic_config(
            [{"name": "app", "upstream": {"servers": [cls.backend.url]}}],
            listen=[{"address": f"127.0.0.1:{p1}"},
                    {"address": f"127.0.0.1:{p2}", "tls": {"cert": crt, "key": key}}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(cls.idp, post_logout_redirect_uri=[
                cls.http + "/.gatehouse/signed-out", cls.https + "/.gatehouse/signed-out"])])
        try:
            cls.gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET})
        except Exception:
            cls.idp.stop()
            cls.backend.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gh.cleanup()
        cls.idp.stop()
        cls.backend.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def signed_in(self, base, path="/start"):
        b = TLSBrowser(self.ctx)
        r = b.request(base + "/.gatehouse/login?rd=" + urllib.parse.quote(path, ""))
        self.assertEqual(r.status, 302, r)
        r = b.request(walk_to_gatehouse(b, r.header("Location"), base))
        self.assertEqual((r.status, r.header("Location")), (302, path))
        self.assertEqual(b.request(base + path).status, 200)
        return b

    def confirmation(self, b, base):
        r = b.request(base + "/.gatehouse/logout")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b'<form method="post" action="/.gatehouse/logout"', r.body)
        self.assertEqual(r.header("X-Frame-Options"), "DENY")
        return re.search(rb'name="csrf_token" value="([^"]+)"', r.body).group(1).decode()

    def still_signed_in(self, b, base):
        self.assertEqual(b.request(base + "/still").status, 200)

    def test_get_asks_and_ends_nothing(self):
        b = self.signed_in(self.http)
        self.confirmation(b, self.http)
        self.still_signed_in(b, self.http)
        self.assertNotIn("signed out", self.gh.stderr())

    def test_cross_site_or_tokenless_post_refused(self):
        b = self.signed_in(self.http)
        token = self.confirmation(b, self.http)
        attempts = [
            ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
            ({"csrf_token": token}, {"Sec-Fetch-Site": "same-site"}),
            ({"csrf_token": token}, {"Origin": "https://evil.example"}),
            ({"csrf_token": token}, {"Origin": "null"}),
            ({}, {"Sec-Fetch-Site": "same-origin", "Origin": self.http}),
            ({"csrf_token": token[:-2] + "AA"}, {"Sec-Fetch-Site": "same-origin"}),
        ]
        for body, headers in attempts:
            with self.subTest(body=body, headers=headers):
                r = b.request(self.http + "/.gatehouse/logout", "POST", body, headers=headers)
                self.assertEqual(r.status, 403, r)
                self.assertIn(b"Sign-out refused", r.body)
                self.assertEqual(r.header_all("Set-Cookie"), [])
                self.still_signed_in(b, self.http)
        # Another session's token does not end this one.
        other = self.signed_in(self.http)
        r = b.request(self.http + "/.gatehouse/logout", "POST",
                      {"csrf_token": self.confirmation(other, self.http)},
                      headers={"Sec-Fetch-Site": "same-origin"})
        self.assertEqual(r.status, 403, r)
        self.still_signed_in(b, self.http)

    def sign_out(self, b, base):
        token = self.confirmation(b, base)
        r = b.request(base + "/.gatehouse/logout", "POST", {"csrf_token": token},
                      headers={"Sec-Fetch-Site": "same-origin", "Origin": base})
        self.assertEqual(r.status, 303, r)
        self.assertEqual(b.request(base + "/gone").status, 302)  # the session ended
        return r.header("Location")

    def test_https_sign_out_returns_to_https(self):
        for base in (self.https, self.http):
            with self.subTest(base=base):
                b = self.signed_in(base)
                loc = self.sign_out(b, base)
                self.assertEqual(qs(loc)["post_logout_redirect_uri"],
                                 base + "/.gatehouse/signed-out")
                back = confirm_at_idp(b, loc, logout=True)
                self.assertTrue(back.startswith(base + "/.gatehouse/signed-out?"), back)
                r, final, _ = b.follow(back)
                self.assertEqual(r.status, 200, r)
                self.assertTrue(final.startswith(base + "/"), final)
                self.assertIn(b"You are signed out", r.body)
                # "Sign in again" stays on this listener and asks for the password.
                again = re.search(rb'href="([^"]+)">Sign in again', r.body).group(1).decode()
                r, url, _ = b.follow(urllib.parse.urljoin(final, again))
                self.assertIn(b'name="password"', r.body)
                self.assertEqual(qs(url).get("redirect_uri") or
                                 qs(b.request(base + "/.gatehouse/login").header("Location"))
                                 ["redirect_uri"], base + CALLBACK)

    def test_stay_signed_in_at_idp_is_not_called_signed_out(self):
        b = self.signed_in(self.https)
        loc = self.sign_out(b, self.https)
        back = confirm_at_idp(b, loc, logout=False)
        r, final, _ = b.follow(back)
        self.assertNotIn(b"You are signed out", r.body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(final, self.https + "/")
        self.still_signed_in(b, self.https)


class PublicUrl(unittest.TestCase):
    """Redirect URIs from configuration: the route's public_url, its
    match.host, the listener's public_url; never a Host no route names."""

    def run_gh(self, listen_extra, routes):
        backend = Backend("app")
        self.addCleanup(backend.stop)
        port = free_port()
        idp = IdP([client_for(f"http://127.0.0.1:{port}")])
        self.addCleanup(idp.stop)
        cfg = basic_config([dict(r, upstream={"servers": [backend.url]}) for r in routes],
                           listen=[{"address": f"127.0.0.1:{port}", **listen_extra}],
                           state={"sqlite": "var/gatehouse.db"},
                           identity_providers=[idp_conf(idp)])
        gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET})
        self.addCleanup(gh.cleanup)
        return gh, port

    def login(self, port, host):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/.gatehouse/login?rd=%2Fx", headers={"Host": host,
                                                                  "Accept": "text/html"})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, r.getheader("Location"), body

    def test_host_header_never_makes_the_redirect_uri(self):
        gh, port = self.run_gh({"public_url": None},
                               [{"name": "app", "match": {"host": "app.test"}},
                                {"name": "any", "public": True}])
        st, loc, _ = self.login(port, f"app.test:{port}")
        self.assertEqual(st, 302)
        self.assertEqual(qs(loc)["redirect_uri"], f"http://app.test:{port}{CALLBACK}")
        # A Host that no route names: no sign-in, a clear page and log line.
        st, loc, body = self.login(port, "evil.example")
        self.assertEqual(st, 400, loc)
        self.assertIn(b"Sign-in is not available at this address", body)
        self.assertIn('sign-in refused for Host "evil.example"', gh.stderr().replace('\\"', '"'))

    def test_public_url_of_route_and_listener(self):
        gh, port = self.run_gh({"public_url": "https://gate.example.com"},
                               [{"name": "wiki", "match": {"host": "wiki.test"},
                                 "public_url": "https://wiki.example.com:8443/"},
                                {"name": "app"}])
        st, loc, _ = self.login(port, "gate.example.com")
        self.assertEqual(qs(loc)["redirect_uri"], f"https://gate.example.com{CALLBACK}")
        # Another Host on that listener continues on the configured origin.
        st, loc, _ = self.login(port, "127.0.0.1")
        self.assertEqual((st, loc), (302, "https://gate.example.com/.gatehouse/login?rd=%2Fx"))
        # The route's public_url wins over its host and the listener's.
        st, loc, _ = self.login(port, "wiki.test")
        self.assertEqual((st, loc),
                         (302, "https://wiki.example.com:8443/.gatehouse/login?rd=%2Fx"))

    def test_bad_public_url_refused_at_start(self):
        backend = Backend("app")
        self.addCleanup(backend.stop)
        for bad in ("app.example.com", "https://app.example.com/path", "ftp://x",
                    "https://user@app.example.com", "https://app.example.com:99999"):
            with self.subTest(bad=bad):
                cfg = basic_config([{"name": "app", "public": True,
                                     "upstream": {"servers": [backend.url]}}],
                                   listen=[{"address": f"127.0.0.1:{free_port()}",
                                            "public_url": bad}])
                with self.assertRaises(Exception) as e:
                    Gatehouse(cfg)
                self.assertIn('"public_url" must be http:// or https://', str(e.exception))


if __name__ == "__main__":
    unittest.main()
