#!/usr/bin/env python3
"""Sign-in benchmark (issue 3): what checking an identity on every request
costs, in one run with interleaved rounds through the same backend:

  gh-public      Gatehouse, a `public: true` route (no identity)
  gh-cookie      Gatehouse, a route open to any signed-in user, every request
                 carrying a valid session cookie (signed in through the real IdP)
  gh-bearer      Gatehouse, same route, `Authorization: Bearer <ID token>`
  apache-public  Apache httpd + mod_proxy, no authentication (reference)
  apache-bearer  Apache httpd + mod_auth_openidc as an OAuth 2.0 resource
                 server verifying the same bearer JWT against the IdP's JWKS

The OpenID Provider is the real one of the test suite (npm oidc-provider,
tests/idp/oidc_idp.mjs). The ID token for the bearer runs comes from an
authorization-code flow with PKCE that this script runs itself. Before any
measurement the script asserts that every target really checks: no credential
or a tampered token gets 401, the valid ones get 200.

Everything listens on 127.0.0.1 on free ports; configs live in a temp dir; the
system apache2 service is never touched. Helpers (backend, wrk, CPU accounting,
process trees) come from bench/bench.py."""
import argparse
import base64
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import bench  # noqa: E402  (bench/bench.py: backend, wrk, CPU accounting)
import oidc  # noqa: E402  (tests/integration/oidc.py: the real IdP and a browser)

APACHE_BIN = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"
TARGETS = ["gh-public", "gh-cookie", "gh-bearer", "apache-public", "apache-bearer"]
USER = "alice"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def tamper(token):
    """The same JWT with one character of the signature changed (a character in
    the middle, so base64url padding bits cannot hide the change)."""
    head, body, sig = token.split(".")
    i = len(sig) // 2
    c = "A" if sig[i] != "A" else "B"
    return f"{head}.{body}.{sig[:i]}{c}{sig[i + 1:]}"


def http_get(url, headers=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body


# ------------------------------------------------------------------ the IdP


def fetch_id_token(idp, client_id, client_secret, redirect_uri):
    """Runs the authorization-code flow with PKCE (S256) against the IdP as
    client_id, signing in as USER through the IdP's login form, and returns
    the ID token after checking state and nonce."""
    _, _, body = http_get(idp.issuer + "/.well-known/openid-configuration")
    disc = json.loads(body)
    verifier = secrets.token_urlsafe(48)
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
        "scope": "openid email profile groups", "state": state, "nonce": nonce,
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    })
    browser = oidc.Browser()
    url, method, form = disc["authorization_endpoint"] + "?" + query, "GET", None
    code = None
    for _ in range(12):
        r = browser.request(url, method, form)
        method, form = "GET", None
        if r.status in (302, 303):
            loc = urllib.parse.urljoin(url, r.header("Location"))
            if loc.startswith(redirect_uri + "?"):
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(loc).query)
                if q.get("state") != [state]:
                    raise RuntimeError(f"IdP returned state {q.get('state')}, sent {state}")
                if "code" not in q:
                    raise RuntimeError(f"IdP refused the authorization request: {loc}")
                code = q["code"][0]
                break
            url = loc
        elif r.status == 200 and b"<form" in r.body:
            action = re.search(rb'action="([^"]+)"', r.body).group(1).decode()
            url, method = urllib.parse.urljoin(url, action), "POST"
            form = {"login": USER, "password": oidc.PASSWORDS[USER]}
        else:
            raise RuntimeError(f"unexpected IdP answer at {url}: {r!r}")
    if code is None:
        raise RuntimeError("the IdP never redirected back with a code")
    u = urllib.parse.urlsplit(disc["token_endpoint"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    basic = base64.b64encode(
        f"{urllib.parse.quote(client_id, safe='')}:"
        f"{urllib.parse.quote(client_secret, safe='')}".encode()).decode()
    conn.request("POST", u.path, body=urllib.parse.urlencode({
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
        "code_verifier": verifier}),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Authorization": f"Basic {basic}"})
    r = conn.getresponse()
    tok = json.loads(r.read())
    conn.close()
    if r.status != 200 or "id_token" not in tok:
        raise RuntimeError(f"token request failed: {r.status} {tok}")
    claims = jwt_claims(tok["id_token"])
    if claims.get("nonce") != nonce or claims.get("sub") != USER:
        raise RuntimeError(f"unexpected ID token claims {claims}")
    return tok["id_token"], disc


# ------------------------------------------------------------------ servers


def start_gatehouse(d, binary, port, backend_port, idp):
    """Gatehouse with one worker, sessions in SQLite and no decision log, so
    that only the identity check is measured: /public is `public: true`, the
    rest is open to any signed-in user of the one IdP."""
    aport = bench.free_port()
    with open(os.path.join(d, "oidc-secret"), "w") as f:
        f.write(oidc.CLIENT_SECRET)
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    upstream = f"{{servers: [http://127.0.0.1:{backend_port}], max_idle: 64}}"
    conf = os.path.join(d, "gatehouse.yaml")
    with open(conf, "w") as f:
        f.write(f"""listen:
  - address: 127.0.0.1:{port}
    public_url: http://127.0.0.1:{port}
admin: {{address: 127.0.0.1:{aport}}}
workers: 1
access_log: off
log_level: warn
limits: {{connections: 30000}}
timeouts: {{idle: 300s}}
state: {{sqlite: state/gatehouse.db}}
identity_providers:
  - id: bench
    type: oidc
    issuer: {idp.issuer}
    client_id: {oidc.CLIENT_ID}
    client_secret_file: oidc-secret
    allow_insecure_issuer: true
    scopes: [openid, email, profile, groups]
    # The bench compares with mod_auth_openidc verifying the same ID token.
    accept_id_tokens: true
    bare_user_ids: true
routes:
  - name: public
    match: {{path_prefix: /public}}
    upstream: {upstream}
    public: true
  - name: app
    match: {{path_prefix: /}}
    upstream: {upstream}
""")
    return bench.Server("gatehouse", [binary, "serve", "-c", conf], port, cwd=d)


def start_idp_tls(d, idp_port, crt, key):
    """mod_auth_openidc only fetches a JWKS over https: an nginx TLS front for
    the IdP (self-signed certificate, which Apache trusts through
    OIDCCABundlePath). It is off the hot path: the module caches the JWKS."""
    port = bench.free_port()
    body = f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        location / {{ proxy_pass http://127.0.0.1:{idp_port}; }}
    }}"""
    for sub in ("idp-tls-body", "idp-tls-proxy"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    conf = os.path.join(d, "idp-tls.conf")
    with open(conf, "w") as f:
        f.write(bench.NGINX_COMMON.format(dir=d, name="idp-tls", body=body))
    return bench.Server("idp-tls", ["nginx", "-c", conf, "-p", d], port, cwd=d)


def start_apache(d, backend_port, jwks_uri, ca_file):
    """Apache httpd, mpm_event with one process of 64 threads, mod_proxy_http to
    the backend; / requires a bearer JWT verified by mod_auth_openidc against
    the IdP's JWKS, /public is open."""
    ad = os.path.join(d, "apache")
    os.makedirs(os.path.join(ad, "run"), exist_ok=True)
    # The child runs as www-data and must reach its runtime dir (mutexes, shm).
    os.chmod(d, 0o755)
    os.chmod(ad, 0o777)
    os.chmod(os.path.join(ad, "run"), 0o777)
    port = bench.free_port()
    mods = ["mpm_event", "authn_core", "authz_core", "authz_user", "proxy", "proxy_http"]
    load = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in mods)
    conf = os.path.join(ad, "httpd.conf")
    with open(conf, "w") as f:
        f.write(f"""ServerRoot "{ad}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{ad}/httpd.pid"
DefaultRuntimeDir "{ad}/run"
Mutex file:{ad}/run default
ErrorLog "{ad}/error.log"
LogLevel warn
{load}
LoadModule auth_openidc_module {APACHE_MODULES}/mod_auth_openidc.so
User www-data
Group www-data

# One process, like one Gatehouse worker: never more, never recycled.
StartServers 1
ServerLimit 1
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64
MaxConnectionsPerChild 0

KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 300
Timeout 60

ProxyPass / http://127.0.0.1:{backend_port}/ keepalive=On
ProxyPassReverse / http://127.0.0.1:{backend_port}/

# OAuth 2.0 resource server: every request's bearer JWT is verified locally
# against the provider's JWKS (fetched and cached by the module).
OIDCOAuthVerifyJwksUri {jwks_uri}
OIDCCABundlePath {ca_file}
OIDCOAuthRemoteUserClaim sub

<Location />
    AuthType oauth20
    Require valid-user
</Location>
<Location /public>
    AuthType None
    Require all granted
</Location>
""")
    return bench.Server("apache", [APACHE_BIN, "-f", conf, "-DFOREGROUND"], port, cwd=ad)


def apache_version():
    try:
        out = subprocess.run([APACHE_BIN, "-v"], capture_output=True, text=True).stdout
        ver = out.splitlines()[0].split(":", 1)[1].strip()
    except (OSError, IndexError):
        ver = "apache2 ?"
    try:
        mod = subprocess.run(["dpkg-query", "-W", "-f=${Version}",
                              "libapache2-mod-auth-openidc"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        mod = "?"
    return f"{ver}, mod_auth_openidc {mod or '?'}"


# ------------------------------------------------------------------ checks


def expect(what, url, headers, want):
    status, _, body = http_get(url, headers)
    if status != want:
        raise RuntimeError(f"{what}: {url} answered {status}, expected {want}: {body[:300]!r}")


def check_targets(urls, cookie, token):
    """Each target must let the valid credential through and refuse a missing
    or tampered one, or the numbers would measure nothing."""
    api = {"Accept": "application/json"}
    bad = tamper(token)
    expect("gh-public, no credential", urls["gh-public"], api, 200)
    expect("gh, no credential", urls["gh-cookie"], api, 401)
    expect("gh-cookie", urls["gh-cookie"], {**api, "Cookie": cookie}, 200)
    name, _, val = cookie.partition("=")
    expect("gh, tampered cookie", urls["gh-cookie"],
           {**api, "Cookie": f"{name}={val[:-1]}{'0' if val[-1] != '0' else '1'}"}, 401)
    expect("gh-bearer", urls["gh-bearer"], {**api, "Authorization": f"Bearer {token}"}, 200)
    expect("gh, tampered bearer", urls["gh-bearer"], {**api, "Authorization": f"Bearer {bad}"},
           401)
    if "apache-bearer" in urls:
        expect("apache-public", urls["apache-public"], {}, 200)
        expect("apache, no credential", urls["apache-bearer"], {}, 401)
        expect("apache-bearer", urls["apache-bearer"], {"Authorization": f"Bearer {token}"}, 200)
        expect("apache, tampered bearer", urls["apache-bearer"],
               {"Authorization": f"Bearer {bad}"}, 401)


# ------------------------------------------------------------------ report


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def paired(results, num, den, key):
    """Median of the per-round ratios num/den. The targets of one round run
    back to back, so each round's ratio sees one machine state; the median of
    those is steadier on a shared machine than a ratio of two medians taken
    from different moments. None when either target was not measured."""
    a, b = results.get(num), results.get(den)
    if not a or not b:
        return None
    rs = [x[key] / y[key] for x, y in zip(a, b) if x.get(key) and y.get(key)]
    return statistics.median(rs) if rs else None


def ratio_line(label, num, den, target):
    """One row of the ratio table; target "≥ 90%" or "≥ 3×", or "" to only
    show the ratio (as a percentage)."""
    if num is None or not den:
        return f"| {label} | – | {target or '–'} | not measured |"
    r = num / den
    if not target:
        return f"| {label} | {r * 100:.0f}% | – | (what the req/s ratio tends to when the " \
               f"proxy is CPU-bound) |"
    ok = "met" if r >= float(target.strip("≥ ×%")) / (100 if "%" in target else 1) else "MISSED"
    shown = f"{r * 100:.0f}%" if "%" in target else f"{r:.2f}×"
    return f"| {label} | {shown} | {target} | {ok} |"


def render(results, targets, args, versions):
    m = bench.machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run: {now}, `python3 bench/authn.py` ({args.rounds} interleaved rounds, "
        f"wrk -t1 -c{args.connections} -d{args.duration}s --latency, medians).",
        f"Machine: {m['cpu']}, {m['mem']}, Linux {m['kernel']}; {versions}; {m['wrk']}.",
        "",
        "| target | what is checked per request | req/s | p50 ms | p99 ms | "
        "req per CPU-s (proxy) | CPU µs per req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    what = {
        "gh-public": "nothing (`public: true`)",
        "gh-cookie": "session cookie (hash, in-memory cache)",
        "gh-bearer": "bearer ID token (RS256 and claims checked on first sight, then "
                     "Gatehouse's verified-token cache)",
        "apache-public": "nothing (mod_proxy_http only)",
        "apache-bearer": "bearer ID token (mod_auth_openidc oauth20: RS256 verified on "
                         "every request)",
    }
    for t in targets:
        runs = results.get(t)
        if not runs:
            continue
        rpc = med(runs, "rpcpu")
        errs = "; ".join(sorted({r["errors"].strip("; ") for r in runs if r["errors"]}))
        lines.append(f"| {t} | {what[t]} | {med(runs, 'rps'):.0f} | {med(runs, 'p50'):.3f} | "
                     f"{med(runs, 'p99'):.3f} | {'–' if rpc is None else f'{rpc:.0f}'} | "
                     f"{'–' if not rpc else f'{1e6 / rpc:.1f}'} | {errs or '0'} |")

    def pr(num, den, key):
        r = paired(results, num, den, key)
        return (r, 1.0) if r is not None else (None, None)
    lines += [
        "",
        "Ratios are the median over the rounds of each round's ratio (the targets of a round "
        "run back to back).",
        "",
        "| ratio | measured | target | |",
        "|---|---:|---:|---|",
        ratio_line("gh-cookie / gh-public, req/s", *pr("gh-cookie", "gh-public", "rps"),
                   "≥ 90%"),
        ratio_line("gh-bearer / gh-public, req/s", *pr("gh-bearer", "gh-public", "rps"),
                   "≥ 90%"),
        ratio_line("gh-cookie / gh-public, req per CPU-s",
                   *pr("gh-cookie", "gh-public", "rpcpu"), ""),
        ratio_line("gh-bearer / gh-public, req per CPU-s",
                   *pr("gh-bearer", "gh-public", "rpcpu"), ""),
        ratio_line("gh-cookie / apache-bearer, req per CPU-s",
                   *pr("gh-cookie", "apache-bearer", "rpcpu"), "≥ 3×"),
        ratio_line("gh-bearer / apache-bearer, req per CPU-s",
                   *pr("gh-bearer", "apache-bearer", "rpcpu"), "≥ 3×"),
        "",
    ]
    return "\n".join(lines)


BEGIN = "<!-- authn:begin -->"
END = "<!-- authn:end -->"


def write_readme(path, report):
    """Rewrites only what lies between this benchmark's markers (the rest of
    bench/README.md belongs to bench.py and its authors)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Sign-in\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(head + BEGIN + "\n" + report + "\n" + END + tail)


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gatehouse", default=os.environ.get(
        "GATEHOUSE_BIN", os.path.join(ROOT, "build", "gatehouse")))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", help="comma-separated targets (" + ",".join(TARGETS) + ")")
    ap.add_argument("--no-apache", action="store_true",
                    help="skip Apache + mod_auth_openidc (e.g. where it is not installed)")
    ap.add_argument("--write", default=os.path.join(HERE, "README.md"),
                    help="README to update between the sign-in markers ('-' = stdout only)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = ap.parse_args()
    args.gatehouse = os.path.abspath(args.gatehouse)  # servers run in the temp dir
    for tool in ("wrk", "nginx", "node"):
        if shutil.which(tool) is None:
            sys.exit(f"authn bench: {tool} is missing (scripts/deps.sh installs it)")
    if not os.access(args.gatehouse, os.X_OK):
        sys.exit(f"authn bench: {args.gatehouse} is not built (make build)")
    use_apache = not args.no_apache and os.path.exists(
        os.path.join(APACHE_MODULES, "mod_auth_openidc.so"))
    if not args.no_apache and not use_apache:
        sys.exit("authn bench: mod_auth_openidc is missing (apt-get install apache2 "
                 "libapache2-mod-auth-openidc) or pass --no-apache")

    d = tempfile.mkdtemp(prefix="gh-authn-bench-")
    os.makedirs(os.path.join(d, "backend-body"), exist_ok=True)
    servers, idp = {}, None
    try:
        backend = bench.start_backend(d)
        servers["backend"] = backend
        gh_port = bench.free_port()
        base = f"http://127.0.0.1:{gh_port}"
        # The bench's own code flow returns to a URL nobody serves: only the
        # Location header carrying the code is read.
        bench_cb = f"http://127.0.0.1:{bench.free_port()}/cb"
        client = oidc.client_for(base)
        client["redirect_uris"] = client["redirect_uris"] + [bench_cb]
        idp = oidc.IdP([client], env={"GH_IDP_ID_TTL": "3600", "GH_IDP_ACCESS_TTL": "3600"})
        token, disc = fetch_id_token(idp, oidc.CLIENT_ID, oidc.CLIENT_SECRET, bench_cb)
        servers["gatehouse"] = start_gatehouse(d, args.gatehouse, gh_port, backend.port, idp)
        browser = oidc.Browser()
        for attempt in range(20):  # Gatehouse may still be fetching the discovery document
            try:
                r = browser.login(base, "/app/")
                if r.status == 200:
                    break
            except AssertionError:
                if attempt == 19:
                    raise
            time.sleep(0.25)
        sid = browser.session_cookie(base)
        if not sid:
            raise RuntimeError(f"no session cookie after signing in: {browser.jars}")
        cookie = f"gatehouse_session={sid}"
        urls = {"gh-public": base + "/public/", "gh-cookie": base + "/app/",
                "gh-bearer": base + "/app/"}
        creds = {"gh-cookie": [f"Cookie: {cookie}"],
                 "gh-bearer": [f"Authorization: Bearer {token}"],
                 "apache-bearer": [f"Authorization: Bearer {token}"]}
        versions = "Apache + mod_auth_openidc not measured"
        if use_apache:
            crt, key, _ = bench.make_cert(d)
            try:
                front = start_idp_tls(d, idp.port, crt, key)
                servers["idp-tls"] = front
                jwks = urllib.parse.urlsplit(disc["jwks_uri"])._replace(
                    scheme="https", netloc=f"127.0.0.1:{front.port}").geturl()
                servers["apache"] = start_apache(d, backend.port, jwks, crt)
            except (RuntimeError, OSError) as e:
                # The Gatehouse rows still stand; the Apache ratios say "not measured".
                print(f"authn bench: Apache + mod_auth_openidc did not start: {e}",
                      file=sys.stderr)
            else:
                urls["apache-public"] = f"http://127.0.0.1:{servers['apache'].port}/public/"
                urls["apache-bearer"] = f"http://127.0.0.1:{servers['apache'].port}/app/"
                versions = apache_version()
        check_targets(urls, cookie, token)
        targets = [t for t in TARGETS if t in urls]
        if args.only:
            targets = [t for t in targets if t in args.only.split(",")]
        owner = {t: servers["gatehouse" if t.startswith("gh-") else "apache"] for t in targets}
        # Warm-up: connection pools, the JWKS cache of mod_auth_openidc, page cache.
        for t in targets:
            bench.run_wrk(urls[t], 1, args.connections, 1, headers=creds.get(t, ()))
        results = {}
        for rnd in range(args.rounds):
            for t in targets:
                pids = owner[t].pids()
                c0 = bench.cpu_seconds(pids)
                r = bench.run_wrk(urls[t], args.duration, args.connections, 1,
                                  headers=creds.get(t, ()))
                r["cpu"] = bench.cpu_seconds(pids) - c0
                r["rpcpu"] = r["requests"] / r["cpu"] if r["cpu"] > 0 else None
                results.setdefault(t, []).append(r)
                print(f"round {rnd + 1} {t:14s} {r['rps']:9.0f} req/s "
                      f"p50 {r.get('p50', 0):7.3f} ms p99 {r.get('p99', 0):7.3f} ms "
                      f"cpu {r['cpu']:5.2f} s {r['errors']}", flush=True)
        # The credentials must still be accepted at the end (no expiry mid-run).
        check_targets(urls, cookie, token)
        report = render(results, targets, args, versions)
    finally:
        for s in reversed(list(servers.values())):
            s.stop()
        if idp:
            idp.stop()
        if args.keep:
            print(f"authn bench: temp dir kept: {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)
    print(report)
    if args.write != "-":
        write_readme(args.write, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
