#!/usr/bin/env python3
"""Device-trust benchmark (issue 12): what client-certificate verification and a
device policy cost, side by side with nginx `ssl_verify_client on`, in one run
with interleaved rounds through the same backend (bench/bench.py's nginx
answering a small static body). One worker each.

  handshakes   full TLS handshakes with a client certificate that the proxy
               verifies against the device CA (`openssl s_time -new`, two
               clients in parallel): handshakes per proxy CPU-second.
  keep-alive   HTTP/1.1 requests over open mTLS connections (16 connections,
               8 pipelined requests per write, a stdlib client): Gatehouse on a
               route whose policy is `allow when {device: {trusted: true}}` (the
               certificate is enrolled, so every request runs the device check:
               registry answer through the per-worker cache, validity, policy,
               X-Gatehouse-Device to the backend); nginx with `ssl_verify_client
               on` and `proxy_pass`. Requests per proxy CPU-second. A third row,
               gatehouse-public, is the same listener and client on a
               `public: true` route (the device check still runs, no policy and
               no sign-in check): what the policy path adds.

`--baseline OLD` adds a second Gatehouse binary (an older build) to the same
interleaved rounds, so that a change is measured before/after against the same
nginx and machine load.

Before measuring, the script checks that both really verify: a certificate from
a rogue CA of the same name is refused by both (nginx answers 400, Gatehouse
fails the handshake) and the enrolled one gets 200. Everything listens on 127.0.0.1 on free ports; configs in a temp dir."""
import argparse
import datetime
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench  # noqa: E402

CA_EXT = ["-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"]


def sh(*argv, cwd=None):
    subprocess.run(argv, check=True, capture_output=True, cwd=cwd)


def make_pki(d):
    """Server certificate (bench.make_cert), a device CA with a CRL, a device
    certificate, and one from a rogue CA of the same name."""
    p = {}
    p["crt"], p["key"], _ = bench.make_cert(d)
    for who in ("ca", "rogue"):
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-keyout", f"{d}/{who}.key", "-out", f"{d}/{who}.crt", "-days", "1",
           "-subj", "/CN=Bench Device CA", *CA_EXT)
    ext = f"{d}/dev.ext"
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
                "subjectAltName=email:alice@example.com\n")
    for who, ca in (("dev", "ca"), ("bad", "rogue")):
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-keyout", f"{d}/{who}.key", "-out", f"{d}/{who}.csr",
           "-subj", f"/CN={who}-laptop")
        sh("openssl", "x509", "-req", "-in", f"{d}/{who}.csr", "-CA", f"{d}/{ca}.crt",
           "-CAkey", f"{d}/{ca}.key", "-CAcreateserial", "-days", "1", "-extfile", ext,
           "-out", f"{d}/{who}.crt")
    with open(f"{d}/ca.cnf", "w") as f:
        f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
                "default_md = sha256\ndefault_crl_days = 2\n")
    open(f"{d}/index.txt", "w").close()
    with open(f"{d}/crlnumber", "w") as f:
        f.write("1000\n")
    sh("openssl", "ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt",
       "-gencrl", "-out", "devices.crl", cwd=d)
    p.update(ca=f"{d}/ca.crt", crl=f"{d}/devices.crl", dev=(f"{d}/dev.crt", f"{d}/dev.key"),
             bad=(f"{d}/bad.crt", f"{d}/bad.key"))
    return p


def start_nginx(d, backend_port, p):
    tport, port = bench.free_port(), bench.free_port()
    body = f"""
    upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tport} ssl;
        ssl_certificate {p['crt']};
        ssl_certificate_key {p['key']};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_client_certificate {p['ca']};
        ssl_crl {p['crl']};
        ssl_verify_client on;
        ssl_verify_depth 1;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Client-Cert-Fingerprint $ssl_client_fingerprint;
        }}
    }}"""
    conf = os.path.join(d, "nginx-mtls.conf")
    with open(conf, "w") as f:
        f.write(bench.NGINX_COMMON.format(dir=d, name="nginx-mtls", body=body))
    srv = bench.Server("nginx", ["nginx", "-c", conf, "-p", d], port, tport, cwd=d)
    return srv


def start_gatehouse(d, binary, backend_port, p, name="gatehouse"):
    d = os.path.join(d, name)
    os.makedirs(d, exist_ok=True)
    port, tport, aport = bench.free_port(), bench.free_port(), bench.free_port()
    conf = os.path.join(d, "gatehouse.yaml")
    with open(os.path.join(d, "device.yaml"), "w") as f:
        f.write("rules:\n  - id: trusted-devices\n    effect: allow\n"
                "    when: {device: {trusted: true}}\n")
    with open(conf, "w") as f:
        f.write(f"""listen:
  - address: 127.0.0.1:{port}
  - address: 127.0.0.1:{tport}
    tls: {{cert: {p['crt']}, key: {p['key']}, client_ca: {p['ca']}, client_crl: {p['crl']},
          client_cert: required}}
admin: {{address: 127.0.0.1:{aport}}}
workers: 1
access_log: off
log_level: warn
limits: {{connections: 30000}}
timeouts: {{idle: 300s}}
state: {{sqlite: {d}/gatehouse.db}}
# Never contacted: the device policy lets trusted devices in without a sign-in.
identity_providers:
  - {{id: corp, type: oidc, issuer: "http://127.0.0.1:9", client_id: bench,
     client_secret: bench, allow_insecure_issuer: true}}
routes:
  - name: bench
    upstream: {{servers: [http://127.0.0.1:{backend_port}], max_idle: 64}}
    policy: device.yaml
  - name: pub
    match: {{path_prefix: /pub/}}
    upstream: {{servers: [http://127.0.0.1:{backend_port}], max_idle: 64}}
    public: true
""")
    r = subprocess.run([binary, "devices", "enroll", "-c", conf, "--cert", p["dev"][0],
                        "--owner", "alice@example.com", "--name", "bench"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("enroll: " + r.stderr)
    return bench.Server(name, [binary, "serve", "-c", conf], port, tport, cwd=d)


def ctx_for(p, who):
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.load_cert_chain(*p[who])
    return c


def one_request(port, p, who):
    try:
        with ctx_for(p, who).wrap_socket(socket.create_connection(("127.0.0.1", port), 5),
                                         server_hostname="bench.test") as t:
            t.sendall(b"GET /check HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                b = t.recv(65536)
                if not b:
                    break
                data += b
            return int(data.split(b" ", 2)[1])
    except (ssl.SSLError, OSError, IndexError, ValueError):
        return None


def sanity(srv, p):
    ok = one_request(srv.tls_port, p, "dev")
    bad = one_request(srv.tls_port, p, "bad")
    # nginx answers a certificate that does not verify with 400; Gatehouse
    # (client_cert: required) fails the handshake.
    if ok != 200 or bad not in (None, 400):
        raise RuntimeError(f"{srv.name}: device certificate -> {ok}, rogue -> {bad} "
                           "(want 200, and a failed handshake or 400)")


def handshakes(srv, p, seconds, clients=2):
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{srv.tls_port}", "-new",
            "-cert", p["dev"][0], "-key", p["dev"][1], "-time", str(seconds)]
    pids = srv.pids()
    c0 = bench.cpu_seconds(pids)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(clients)]
    outs = [pr.communicate(timeout=seconds + 60)[0] for pr in procs]
    cpu = bench.cpu_seconds(pids) - c0
    n = 0
    for o in outs:
        m = re.search(r"(\d+) connections in [\d.]+s", o)
        if not m:
            raise RuntimeError("s_time: " + o[-500:])
        n += int(m.group(1))
    return {"n": n, "rate": n / seconds, "cpu": cpu, "per_cpu": n / cpu if cpu else None}


def keepalive(srv, p, seconds, conns=16, depth=8, path="/ka"):
    req = f"GET {path} HTTP/1.1\r\nHost: bench.test\r\n\r\n".encode() * depth
    stop = time.monotonic() + seconds
    counts = [0] * conns
    errors = []

    def client(i):
        try:
            t = ctx_for(p, "dev").wrap_socket(
                socket.create_connection(("127.0.0.1", srv.tls_port), 5),
                server_hostname="bench.test")
            buf = b""
            while time.monotonic() < stop:
                t.sendall(req)
                got = 0
                while got < depth:
                    b = t.recv(262144)
                    if not b:
                        raise OSError("closed")
                    buf += b
                    while True:
                        h = buf.find(b"\r\n\r\n")
                        if h < 0:
                            break
                        head = buf[:h]
                        if not head.startswith(b"HTTP/1.1 200"):
                            raise OSError(head[:60])
                        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                        total = h + 4 + int(m.group(1))
                        if len(buf) < total:
                            break
                        buf = buf[total:]
                        got += 1
                counts[i] += got
            t.close()
        except (OSError, ssl.SSLError) as e:
            errors.append(str(e))

    pids = srv.pids()
    c0 = bench.cpu_seconds(pids)
    th = [threading.Thread(target=client, args=(i,)) for i in range(conns)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    cpu = bench.cpu_seconds(pids) - c0
    n = sum(counts)
    return {"n": n, "rate": n / seconds, "cpu": cpu, "per_cpu": n / cpu if cpu else None,
            "errors": len(errors)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gatehouse", default=os.environ.get(
        "GATEHOUSE_BIN", os.path.join(ROOT, "build", "gatehouse")))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--write", default=os.path.join(HERE, "README.md"),
                    help="README to update, or - to print only")
    ap.add_argument("--baseline", help="a second gatehouse binary (an older build), measured "
                    "in the same interleaved rounds: rows gatehouse-baseline and "
                    "gatehouse-baseline-public")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="gh-bench-dev-")
    servers = []
    try:
        p = make_pki(d)
        backend = bench.start_backend(d)
        servers.append(backend)
        targets = [start_nginx(d, backend.port, p),
                   start_gatehouse(d, args.gatehouse, backend.port, p)]
        if args.baseline:
            targets.append(start_gatehouse(d, args.baseline, backend.port, p,
                                           name="gatehouse-baseline"))
        servers += targets
        for t in targets:
            sanity(t, p)
        load0 = os.getloadavg()[0]
        res = {(t.name, v): [] for t in targets for v in ("hs", "ka")}
        for t in targets[1:]:
            res[(t.name + "-public", "ka")] = []
        for _ in range(args.rounds):
            for t in targets:
                res[(t.name, "hs")].append(handshakes(t, p, args.duration))
            for t in targets:
                res[(t.name, "ka")].append(keepalive(t, p, args.duration))
            for t in targets[1:]:
                res[(t.name + "-public", "ka")].append(
                    keepalive(t, p, args.duration, path="/pub/ka"))
        load1 = os.getloadavg()[0]
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(d, True)
    report = render(res, args, load0, load1)
    print(report)
    if args.write != "-":
        bench_write(args.write, report)
    return 0


def med(runs, k):
    vals = [r[k] for r in runs if r.get(k) is not None]
    return statistics.median(vals) if vals else None


def render(res, args, load0, load1):
    m = bench.machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python3 bench/devices.py" + (" --baseline OLD" if args.baseline else "")
    lines = [f"Run: {now}, `{cmd}` ({args.rounds} interleaved rounds of "
             f"{args.duration} s, medians). Machine: {m['cpu']}, {m['kernel']}; {m['nginx']}. "
             f"Load average at start/end: {load0:.1f} / {load1:.1f}.", ""]
    for v, title, unit in (("hs", "Full handshakes with client-certificate verification "
                            "(`openssl s_time -new`, 2 clients)", "handshakes"),
                           ("ka", "Keep-alive requests over mTLS (16 connections, 8 pipelined; "
                            "Gatehouse with a device policy)", "requests")):
        lines += [f"### {title}", "",
                  f"| target | {unit}/s | {unit} per CPU-s (proxy) | ×nginx |",
                  "|---|---:|---:|---:|"]
        ref = med(res[("nginx", v)], "per_cpu")
        for name in ("nginx", "gatehouse", "gatehouse-public", "gatehouse-baseline",
                     "gatehouse-baseline-public"):
            if (name, v) not in res:
                continue
            runs = res[(name, v)]
            pc = med(runs, "per_cpu")
            errs = sum(r.get("errors", 0) for r in runs)
            lines.append(f"| {name} | {med(runs, 'rate'):.0f} | {pc:.0f} | "
                         f"{bench.fmt_ratio(pc, ref)} |" + (f" errors: {errs}" if errs else ""))
        lines.append("")
    return "\n".join(lines)


BEGIN = "<!-- devices:begin -->"
END = "<!-- devices:end -->"


def bench_write(path, report):
    text = open(path).read()
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(head + BEGIN + "\n" + report + "\n" + END + tail)


if __name__ == "__main__":
    sys.exit(main())
