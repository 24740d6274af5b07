#!/usr/bin/env python3
"""Starts a backend, the real OpenID Provider and Gatehouse ($GATEHOUSE_BIN)
on free loopback ports, runs signin.mjs (chromium + playwright-core) against
them, stops everything, and ends with "browser: N passed, N failed".
The screenshot of /.gatehouse/me goes to tests/out/me.png."""
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "integration"))

from harness import Backend, Gatehouse, basic_config, free_port  # noqa: E402
from oidc import CLIENT_SECRET, PASSWORDS, IdP, client_for, idp_conf  # noqa: E402


def main():
    if not shutil.which("node") or not os.path.exists("/usr/bin/chromium"):
        print("browser: needs node and /usr/bin/chromium")
        print("browser: 0 passed, 1 failed")
        return 1
    backend = Backend("app")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp = IdP([client_for(base)])
    gh = None
    try:
        cfg = basic_config(
            [{"name": "app", "upstream": {"servers": [backend.url]}}],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[idp_conf(idp,
                                         post_logout_redirect_uri=base + "/.gatehouse/signed-out")],
        )
        gh = Gatehouse(cfg, files={"oidc-secret": CLIENT_SECRET})
        env = dict(os.environ, GH_BROWSER_USER="alice", GH_BROWSER_PASSWORD=PASSWORDS["alice"])
        try:
            r = subprocess.run(["node", os.path.join(HERE, "signin.mjs"), base,
                                os.path.join(TESTS, "out")], env=env, capture_output=True,
                               text=True, timeout=180)
            out = r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            out += "\nnot ok browser run timed out"
        print(out.rstrip())
        passed = len(re.findall(r"^ok ", out, re.M))
        failed = len(re.findall(r"^not ok ", out, re.M))
        if passed + failed == 0:
            failed = 1
        if failed and os.environ.get("GH_BROWSER_VERBOSE"):
            print("--- gatehouse stderr:\n" + gh.stderr()[-4000:])
    finally:
        if gh:
            gh.cleanup()
        idp.stop()
        backend.stop()
    p2, f2 = run_saml()
    passed += p2
    failed += f2
    print(f"browser: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def run_saml():
    """The SAML flow in chromium against the samlify IdP (saml_signin.mjs)."""
    from saml import SamlIdP, saml_conf, sp_files  # noqa: E402
    import tempfile
    backend = Backend("app")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="gh-browser-saml-")
    idp = SamlIdP(base + "/.gatehouse/saml/metadata")
    gh = None
    passed = failed = 0
    try:
        cfg = basic_config(
            [{"name": "app", "upstream": {"servers": [backend.url]}}],
            listen=[{"address": f"127.0.0.1:{port}"}],
            state={"sqlite": "var/gatehouse.db"},
            identity_providers=[saml_conf(base)],
        )
        gh = Gatehouse(cfg, files=sp_files(idp, tmp))
        try:
            r = subprocess.run(["node", os.path.join(HERE, "saml_signin.mjs"), base, idp.base,
                                os.path.join(TESTS, "out")], capture_output=True, text=True,
                               timeout=180)
            out = r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            out += "\nnot ok saml browser run timed out"
        print(out.rstrip())
        passed = len(re.findall(r"^ok ", out, re.M))
        failed = len(re.findall(r"^not ok ", out, re.M))
        if passed + failed == 0:
            failed = 1
        if failed and os.environ.get("GH_BROWSER_VERBOSE"):
            print("--- gatehouse stderr:\n" + gh.stderr()[-4000:])
    finally:
        if gh:
            gh.cleanup()
        idp.stop()
        backend.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return passed, failed


if __name__ == "__main__":
    sys.exit(main())
