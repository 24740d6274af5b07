"""SAML helpers for integration tests: the real SAML IdP (npm `samlify`, from
tests/idp/saml_idp.mjs) on a free loopback port, RSA keys and certificates made
by openssl at test time, and the HTTP-Redirect / HTTP-POST walk a browser does
(the IdP's auto-submit form read and posted by hand, so each hop can be
asserted or tampered with)."""
import html
import os
import re
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request

from harness import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
IDP_SCRIPT = os.path.join(TESTS, "idp", "saml_idp.mjs")


_KEY_CACHE = {}  # (name, cn) -> (key PEM, cert PEM), made once per test process


def make_key_cert(dirpath, name, cn):
    """An RSA key and a self-signed certificate as dirpath/name.key and .crt.
    The same (name, cn) gets the same pair within one test process (a 2048-bit
    key takes about a second of CPU on a busy machine, and each SAML stack
    needs three); pairs of different names always differ."""
    key = os.path.join(dirpath, name + ".key")
    crt = os.path.join(dirpath, name + ".crt")
    pair = _KEY_CACHE.get((name, cn))
    if pair is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", crt, "-days", "2", "-subj", "/CN=" + cn],
                       check=True, capture_output=True)
        _KEY_CACHE[(name, cn)] = (read(key), read(crt))
    else:
        for path, pem in zip((key, crt), pair):
            with open(path, "w") as f:
                f.write(pem)
        os.chmod(key, 0o600)
    return key, crt


def read(path):
    with open(path) as f:
        return f.read()


class SamlIdP:
    """The samlify IdP on 127.0.0.1. sp_metadata_url: where it fetches the SP
    metadata (Gatehouse's /.gatehouse/saml/metadata) on first use."""

    def __init__(self, sp_metadata_url, want_signed_requests=False):
        self.dir = tempfile.mkdtemp(prefix="gh-saml-idp-")
        self.key, self.crt = make_key_cert(self.dir, "idp", "Test SAML IdP")
        self.other_key, self.other_crt = make_key_cert(self.dir, "other", "Test SAML IdP")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.entity_id = self.base + "/metadata"
        env = dict(os.environ)
        env.update({
            "GH_SAML_PORT": str(self.port),
            "GH_SAML_KEY": self.key, "GH_SAML_CERT": self.crt,
            "GH_SAML_OTHER_KEY": self.other_key, "GH_SAML_OTHER_CERT": self.other_crt,
            "GH_SAML_SP_METADATA": sp_metadata_url,
            "GH_SAML_WANT_SIGNED_REQUESTS": "1" if want_signed_requests else "0",
        })
        self.lines = []
        self.proc = subprocess.Popen(["node", IDP_SCRIPT], cwd=TESTS, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            self.stop()
            raise RuntimeError("SAML IdP did not start:\n" + self.log())

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if line.startswith("GH_SAML_READY "):
                self.ready.set()

    def log(self):
        return "\n".join(self.lines)

    def metadata(self):
        with urllib.request.urlopen(self.base + "/metadata", timeout=10) as r:
            return r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def sp_files(idp, dirpath):
    """The files Gatehouse needs for a SAML IdP: its metadata and our key pair."""
    key, crt = make_key_cert(dirpath, "sp", "Gatehouse SP")
    return {"idp.xml": idp.metadata(), "sp.key": read(key), "sp.crt": read(crt)}


def saml_conf(gh_base, id="partners", **extra):
    d = {
        "id": id,
        "type": "saml",
        "metadata": "idp.xml",
        "sp_key": "sp.key",
        "sp_cert": "sp.crt",
        "entity_id": gh_base + "/.gatehouse/saml/metadata",
        "attributes": {"email": "email", "name": "displayName", "groups": "groups"},
    }
    d.update(extra)
    return d


def read_form(body):
    """The IdP's auto-submit form: (action, {name: value})."""
    text = body.decode()
    action = html.unescape(re.search(r'action="([^"]*)"', text).group(1))
    fields = {html.unescape(n): html.unescape(v) for n, v in
              re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', text)}
    return action, fields


def to_idp(browser, gh_base, path="/"):
    """Starts sign-in at gh_base and returns the IdP SSO URL Gatehouse redirected to."""
    r = browser.request(gh_base + "/.gatehouse/login?rd=" + urllib.parse.quote(path, safe=""))
    loc = r.header("Location") or ""
    if r.status != 302 or "/sso?" not in loc:
        raise AssertionError(f"expected a redirect to the SAML IdP, got {r!r}")
    return loc


def idp_form(browser, sso_url, **params):
    """GETs the IdP's SSO URL (plus test params: user, case, aid, relay) and
    returns (action, fields) of its POST form."""
    if params:
        sso_url += "&" + urllib.parse.urlencode(params)
    r = browser.request(sso_url)
    if r.status != 200:
        raise AssertionError(f"IdP refused: {r!r}")
    return read_form(r.body)
