#!/usr/bin/env python3
"""SAML sign-in benchmark: SAML Responses processed per second at the ACS
(base64 + XML parse + XML-DSig RSA-SHA256 verification + every check + a new
session), Gatehouse against Apache httpd + mod_auth_mellon (the lasso-based SAML
SP of Debian), with responses of the same shape signed by the same IdP key.

Every ACS POST carries its own fresh Response (IdP-initiated: no AuthnRequest
round trip; each assertion ID used once, so Gatehouse's replay check passes):
bench/saml_responses.mjs makes them with npm samlify before the rounds. A
client with C threads (keep-alive) posts them and counts the answers that set
a session cookie; req per CPU-s divides by the server's CPU time (utime +
stime of its process tree) during the run. Before measuring, each target must
refuse a tampered response and accept a good one.

Everything listens on 127.0.0.1 on free ports in a temp dir; the system apache2
service is never touched. Results go between the `saml` markers of
bench/README.md (or stdout with --write -)."""
import argparse
import base64
import datetime
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench  # noqa: E402  (bench/bench.py: backend, CPU accounting, Server)

APACHE_BIN = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"
IDP_ENTITY = "https://idp.bench.test/metadata"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"


def key_cert(d, name):
    key, crt = os.path.join(d, name + ".key"), os.path.join(d, name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", crt, "-days", "2", "-subj", "/CN=" + name], check=True,
                   capture_output=True)
    os.chmod(key, 0o644)  # the Apache child (www-data) reads it; a temp dir of this run
    return key, crt


def cert_body(crt):
    return "".join(l for l in open(crt).read().splitlines() if "-----" not in l)


def idp_metadata(d, crt):
    path = os.path.join(d, "idp.xml")
    with open(path, "w") as f:
        f.write(f'<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" '
                f'entityID="{IDP_ENTITY}"><md:IDPSSODescriptor protocolSupportEnumeration='
                f'"urn:oasis:names:tc:SAML:2.0:protocol"><md:KeyDescriptor use="signing"><ds:KeyInfo>'
                f'<ds:X509Data><ds:X509Certificate>{cert_body(crt)}</ds:X509Certificate></ds:X509Data>'
                f'</ds:KeyInfo></md:KeyDescriptor><md:SingleSignOnService Binding='
                f'"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
                f'Location="https://idp.bench.test/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>')
    return path


def responses(d, idp_key, idp_crt, sp_entity, acs, n):
    r = subprocess.run(["node", os.path.join(HERE, "saml_responses.mjs"), idp_key, idp_crt,
                        IDP_ENTITY, sp_entity, acs, str(n)], capture_output=True, text=True,
                       check=True, timeout=600)
    return r.stdout.split()


def start_gatehouse(d, binary, backend_port, sp_key, sp_crt, md):
    port, aport = bench.free_port(), bench.free_port()
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    conf = os.path.join(d, "gatehouse.yaml")
    with open(conf, "w") as f:
        f.write(f"""listen:
  - address: 127.0.0.1:{port}
admin: {{address: 127.0.0.1:{aport}}}
workers: 1
access_log: off
log_level: warn
timeouts: {{idle: 300s}}
state: {{sqlite: state/gatehouse.db}}
identity_providers:
  - id: bench
    type: saml
    metadata: {md}
    sp_key: {sp_key}
    sp_cert: {sp_crt}
    entity_id: http://127.0.0.1:{port}/.gatehouse/saml/metadata
    allow_unsolicited: true
routes:
  - name: app
    match: {{path_prefix: /}}
    upstream: {{servers: [http://127.0.0.1:{backend_port}]}}
""")
    s = bench.Server("gatehouse", [binary, "serve", "-c", conf], port, cwd=d)
    s.entity = f"http://127.0.0.1:{port}/.gatehouse/saml/metadata"
    s.acs = f"http://127.0.0.1:{port}/.gatehouse/saml/acs"
    s.acs_path = "/.gatehouse/saml/acs"
    s.cookie = "gatehouse_session="
    return s


def start_apache(d, backend_port, sp_key, sp_crt, md):
    """Apache httpd, mpm_event with one process of 64 threads (like one
    Gatehouse worker), mod_auth_mellon protecting / with its ACS at
    /mellon/postResponse, mod_proxy_http to the backend."""
    ad = os.path.join(d, "apache")
    os.makedirs(os.path.join(ad, "run"), exist_ok=True)
    os.chmod(d, 0o755)
    os.chmod(ad, 0o777)
    os.chmod(os.path.join(ad, "run"), 0o777)
    port = bench.free_port()
    entity = f"http://127.0.0.1:{port}/mellon/metadata"
    acs = f"http://127.0.0.1:{port}/mellon/postResponse"
    spmd = os.path.join(ad, "sp.xml")
    with open(spmd, "w") as f:
        body = cert_body(sp_crt)
        f.write(f'<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" '
                f'entityID="{entity}"><md:SPSSODescriptor AuthnRequestsSigned="true" '
                f'WantAssertionsSigned="true" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
                f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{body}'
                f'</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>'
                f'<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
                f'Location="{acs}" index="0"/></md:SPSSODescriptor></md:EntityDescriptor>')
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
LoadModule auth_mellon_module {APACHE_MODULES}/mod_auth_mellon.so
User www-data
Group www-data

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

MellonCacheSize 2000

ProxyPass /mellon !
ProxyPass / http://127.0.0.1:{backend_port}/ keepalive=On

<Location />
    MellonEnable "auth"
    AuthType "Mellon"
    Require valid-user
    MellonEndpointPath "/mellon"
    MellonSPPrivateKeyFile {sp_key}
    MellonSPCertFile {sp_crt}
    MellonSPMetadataFile {spmd}
    MellonIdPMetadataFile {md}
    MellonSecureCookie Off
    MellonDefaultLoginPath /
</Location>
""")
    s = bench.Server("apache", [APACHE_BIN, "-f", conf, "-DFOREGROUND"], port, cwd=ad)
    s.entity, s.acs, s.acs_path, s.cookie = entity, acs, "/mellon/postResponse", "mellon-cookie="
    return s


def post(conn, path, b64):
    body = urllib.parse.urlencode({"SAMLResponse": b64})
    conn.request("POST", path, body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "text/html",
        "Cookie": "mellon-cookie=cookietest"})
    r = conn.getresponse()
    r.read()
    return r.status, [v for k, v in r.getheaders() if k.lower() == "set-cookie"]


def signed_in(status, cookies, server):
    return status in (302, 303) and any(c.startswith(server.cookie) and "cookietest" not in c
                                        for c in cookies)


def check(server, good, tampered):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    st, ck = post(conn, server.acs_path, tampered)
    if signed_in(st, ck, server):
        sys.exit(f"saml bench: {server.name} accepted a tampered response")
    st, ck = post(conn, server.acs_path, good)
    if not signed_in(st, ck, server):
        sys.exit(f"saml bench: {server.name} refused a good response ({st} {ck}); "
                 f"see its log in the temp dir")
    conn.close()


def tamper(b64):
    xml = base64.b64decode(b64).replace(b">Alice Liddell<", b">Mallory Liddell<")
    return base64.b64encode(xml).decode()


def run(server, items, threads):
    ok = [0] * threads
    bad = [0] * threads
    chunks = [items[i::threads] for i in range(threads)]

    def worker(i):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for b64 in chunks[i]:
            try:
                st, ck = post(conn, server.acs_path, b64)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                bad[i] += 1
                continue
            if signed_in(st, ck, server):
                ok[i] += 1
            else:
                bad[i] += 1
        conn.close()

    pids = server.pids()
    cpu0 = bench.cpu_seconds(pids)
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    cpu = bench.cpu_seconds(pids) - cpu0
    n = sum(ok)
    return {"n": n, "errors": sum(bad), "rps": n / wall, "rpcpu": n / cpu if cpu > 0 else 0,
            "wall": wall, "cpu": cpu}


def render(results, args, versions):
    lines = [f"Run: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, `python3 bench/saml.py "
             f"--rounds {args.rounds} --n {args.n} --threads {args.threads}` "
             f"({args.rounds} interleaved rounds of {args.n} sign-ins each, medians).",
             f"Versions: {versions}. Load average (1 min) at start/end: "
             f"{results['load'][0]:.1f} / {results['load'][1]:.1f}.", "",
             "| target | sign-ins/s | req per CPU-s (server) | × mellon (per CPU-s) | errors |",
             "|---|---:|---:|---:|---:|"]
    ref = statistics.median(r["rpcpu"] for r in results["mellon"]) if results.get("mellon") else 0
    for t in ("gatehouse", "mellon"):
        if not results.get(t):
            continue
        rps = statistics.median(r["rps"] for r in results[t])
        rpcpu = statistics.median(r["rpcpu"] for r in results[t])
        errs = sum(r["errors"] for r in results[t])
        x = f"{rpcpu / ref:.2f}" if ref else "–"
        lines.append(f"| {t} | {rps:.0f} | {rpcpu:.0f} | {x} | {errs} |")
    return "\n".join(lines) + "\n"


def write_readme(report):
    path = os.path.join(HERE, "README.md")
    text = open(path).read()
    begin, end = "<!-- saml:begin -->", "<!-- saml:end -->"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), begin + "\n" + report + end, text,
                  flags=re.S)
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gatehouse", default=os.environ.get("GATEHOUSE_BIN",
                                                          os.path.join(ROOT, "build", "gatehouse")))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--write", default=None, help="'-' prints instead of rewriting README.md")
    ap.add_argument("--no-mellon", action="store_true")
    args = ap.parse_args()
    use_mellon = not args.no_mellon and os.path.exists(
        os.path.join(APACHE_MODULES, "mod_auth_mellon.so"))
    d = tempfile.mkdtemp(prefix="gh-bench-saml-")
    servers = {}
    try:
        idp_key, idp_crt = key_cert(d, "idp")
        sp_key, sp_crt = key_cert(d, "sp")
        md = idp_metadata(d, idp_crt)
        backend = bench.start_backend(d)
        servers["backend"] = backend
        servers["gatehouse"] = start_gatehouse(d, args.gatehouse, backend.port, sp_key, sp_crt, md)
        if use_mellon:
            servers["mellon"] = start_apache(d, backend.port, sp_key, sp_crt, md)
        targets = [t for t in ("gatehouse", "mellon") if t in servers]
        total = args.n * args.rounds + 2
        pools = {}
        for t in targets:
            s = servers[t]
            pools[t] = responses(d, idp_key, idp_crt, s.entity, s.acs, total)
            check(s, pools[t].pop(), tamper(pools[t].pop()))
        load0 = os.getloadavg()[0]
        results = {t: [] for t in targets}
        for rnd in range(args.rounds):
            for t in targets:
                items = pools[t][rnd * args.n:(rnd + 1) * args.n]
                r = run(servers[t], items, args.threads)
                results[t].append(r)
                print(f"round {rnd + 1} {t}: {r['rps']:.0f}/s, {r['rpcpu']:.0f} per CPU-s, "
                      f"{r['errors']} errors", flush=True)
        results["load"] = (load0, os.getloadavg()[0])
        lasso = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "liblasso3"],
                               capture_output=True, text=True).stdout.strip()
        mellon = subprocess.run(["dpkg-query", "-W", "-f=${Version}",
                                 "libapache2-mod-auth-mellon"],
                                capture_output=True, text=True).stdout.strip()
        report = render(results, args, f"liblasso3 {lasso}, mod_auth_mellon {mellon or '-'}")
        if args.write == "-":
            print(report)
        else:
            write_readme(report)
            print(report)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
