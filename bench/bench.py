#!/usr/bin/env python3
"""Gatehouse benchmark: wrk against the backend directly, nginx, HAProxy and
Gatehouse, in one run with interleaved rounds, one worker each, same backend
(an nginx instance answering a small static response). Variants: keep-alive,
connection-per-request, TLS. Then RSS with 10,000 idle keep-alive connections
per proxy. Writes a markdown report (bench/README.md results section) and prints it.

Everything listens on 127.0.0.1 on free ports, configs live in a temp dir; the
system nginx/haproxy services are never touched."""
import argparse
import datetime
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def proc_tree(pid):
    pids = [pid]
    for c in children(pid):
        pids += proc_tree(c)
    return pids


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def rss_kb(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Server:
    def __init__(self, name, argv, port, tls_port=None, cwd=None):
        self.name = name
        self.port = port
        self.tls_port = tls_port
        logpath = os.path.join(cwd, f"{name}.log")
        self.log = open(logpath, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, cwd=cwd)
        try:
            wait_port(port, self.proc)
            if tls_port:
                wait_port(tls_port, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}: {open(logpath).read()[-1500:]}") from None

    def pids(self):
        return proc_tree(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def make_cert(d):
    crt, key = os.path.join(d, "bench.crt"), os.path.join(d, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "1", "-subj", "/CN=bench.test", "-addext",
                    "subjectAltName=DNS:bench.test,IP:127.0.0.1"],
                   check=True, capture_output=True)
    pem = os.path.join(d, "bench.pem")
    with open(pem, "w") as out:
        out.write(open(crt).read() + open(key).read())
    return crt, key, pem


NGINX_COMMON = """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{body}
}}
"""


def start_backend(d):
    port = free_port()
    body = f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "hello from the backend\\n"; }}
    }}"""
    conf = os.path.join(d, "backend.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=d, name="backend", body=body))
    return Server("backend", ["nginx", "-c", conf, "-p", d], port, cwd=d)


def start_nginx(d, backend_port, crt, key):
    port, tport = free_port(), free_port()
    body = f"""
    upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tport} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=d, name="nginx", body=body))
    return Server("nginx", ["nginx", "-c", conf, "-p", d], port, tport, cwd=d)


HAPROXY_MAXCONN = 9900


def start_haproxy(d, backend_port, pem):
    port, tport = free_port(), free_port()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    maxconn = HAPROXY_MAXCONN if hard == resource.RLIM_INFINITY else \
        min(HAPROXY_MAXCONN + 1000, (hard - 100) // 2)
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
    nbthread 1
    # HAProxy reserves 2 descriptors per connection and refuses to start when
    # 2 x maxconn exceeds the hard fd limit (20000 on the test machine).
    maxconn {maxconn}
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    http-reuse always
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    bind 127.0.0.1:{tport} ssl crt {pem} alpn http/1.1 ssl-min-ver TLSv1.2
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port} maxconn 10000
""")
    srv = Server("haproxy", ["haproxy", "-db", "-f", conf], port, tport, cwd=d)
    srv.maxconn = maxconn
    return srv


def start_gatehouse(d, binary, backend_port, crt, key):
    port, tport, aport = free_port(), free_port(), free_port()
    conf = os.path.join(d, "gatehouse.yaml")
    with open(conf, "w") as f:
        f.write(f"""listen:
  - address: 127.0.0.1:{port}
  - address: 127.0.0.1:{tport}
    tls: {{cert: {crt}, key: {key}}}
admin: {{address: 127.0.0.1:{aport}}}
workers: 1
access_log: off
log_level: warn
limits: {{connections: 30000}}
timeouts: {{idle: 300s}}
routes:
  - name: bench
    upstream: {{servers: [http://127.0.0.1:{backend_port}], max_idle: 64}}
    public: true
""")
    return Server("gatehouse", [binary, "serve", "-c", conf], port, tport, cwd=d)


WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(\w+)")
WRK_ERR = re.compile(r"(Non-2xx or 3xx responses|Socket errors):?\s*(.*)")


def parse_latency(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000.0 if unit == "us" else v * 1000.0 if unit == "s" else v


def run_wrk(url, duration, conns, threads, close=False, headers=()):
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    for h in headers:  # extra request headers ("Name: value"), e.g. a cookie or bearer token
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    res = {"rps": float(WRK_RPS.search(out).group(1)),
           "requests": int(WRK_TOTAL.search(out).group(1)), "errors": ""}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("50%"):
            res["p50"] = parse_latency(line.split()[1])
        elif line.startswith("99%"):
            res["p99"] = parse_latency(line.split()[1])
        m = WRK_ERR.match(line)
        if m:
            res["errors"] += line + "; "
    return res


def idle_connections(port, n, hold_s=3.0):
    """Opens n keep-alive connections, sends one request on each, reads the
    answer, keeps them open; returns the list of sockets (caller closes)."""
    sel = selectors.DefaultSelector()
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n"
    pending = {}
    i = 0
    while i < n or pending:
        # Keep at most 500 handshakes/requests in flight.
        while i < n and len(pending) < 500:
            s = socket.socket()
            # Spread source addresses so 10k connections never run out of ports.
            s.bind((f"127.0.{1 + i % 50}.1", 0))
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            sel.register(s, selectors.EVENT_WRITE, "connect")
            pending[s] = b""
            socks.append(s)
            i += 1
        for key, ev in sel.select(timeout=10):
            s = key.fileobj
            if key.data == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, "connect failed")
                s.send(req)
                sel.modify(s, selectors.EVENT_READ, "read")
            else:
                data = s.recv(65536)
                if not data:
                    raise OSError("connection closed before the answer")
                pending[s] += data
                buf = pending[s]
                if b"\r\n\r\n" in buf:
                    head, _, body = buf.partition(b"\r\n\r\n")
                    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                    if m and len(body) >= int(m.group(1)):
                        sel.unregister(s)
                        del pending[s]
    time.sleep(hold_s)
    return socks


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB RAM"
    except OSError:
        pass

    def ver(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {"cpu": f"{model} x {os.cpu_count()}", "mem": mem,
            "kernel": platform.release(), "nginx": ver(["nginx", "-v"]),
            "haproxy": ver(["haproxy", "-v"]), "wrk": ver(["wrk", "--version"])}


def fmt_ratio(v, ref):
    if v is None or ref in (None, 0):
        return "–"
    return f"{v / ref:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gatehouse", default=os.path.join(ROOT, "build", "gatehouse"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--only", help="comma-separated targets (direct,nginx,haproxy,gatehouse)")
    ap.add_argument("--write", default=os.path.join(HERE, "README.md"),
                    help="README to update between the results markers ('-' = stdout only)")
    args = ap.parse_args()
    args.load_start = os.getloadavg()[0]

    d = tempfile.mkdtemp(prefix="gh-bench-")
    for sub in ("backend-body", "nginx-body"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    crt, key, pem = make_cert(d)
    servers = {}
    try:
        backend = start_backend(d)
        servers["backend"] = backend
        servers["nginx"] = start_nginx(d, backend.port, crt, key)
        servers["haproxy"] = start_haproxy(d, backend.port, pem)
        targets = ["direct", "nginx", "haproxy", "gatehouse"]
        try:
            servers["gatehouse"] = start_gatehouse(d, args.gatehouse, backend.port, crt, key)
        except (RuntimeError, OSError) as e:
            log = os.path.join(d, "gatehouse.log")
            print(f"bench: gatehouse did not start ({e}):\n"
                  + (open(log).read()[-2000:] if os.path.exists(log) else ""), file=sys.stderr)
            targets.remove("gatehouse")
        if args.only:
            targets = [t for t in targets if t in args.only.split(",")]
        variants = [("keep-alive", False, False), ("connection-per-request", True, False),
                    ("TLS keep-alive", False, True)]
        results = {}  # (variant, target) -> list of runs
        for rnd in range(args.rounds):
            for vname, close, tls in variants:
                for t in targets:
                    if t == "direct" and tls:
                        continue  # the backend has no TLS listener
                    srv = backend if t == "direct" else servers[t]
                    port = srv.tls_port if tls else srv.port
                    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
                    pids = srv.pids()
                    c0 = cpu_seconds(pids)
                    r = run_wrk(url, args.duration, args.connections, 1, close)
                    r["cpu"] = cpu_seconds(pids) - c0
                    r["rpcpu"] = r["requests"] / r["cpu"] if r["cpu"] > 0 else None
                    results.setdefault((vname, t), []).append(r)
                    print(f"round {rnd + 1} {vname:24s} {t:10s} {r['rps']:9.0f} req/s "
                          f"p50 {r.get('p50', 0):7.3f} ms p99 {r.get('p99', 0):7.3f} ms "
                          f"cpu {r['cpu']:5.2f} s {r['errors']}", flush=True)
        idle = {}
        for t in [t for t in targets if t != "direct"]:
            srv = servers[t]
            before = rss_kb(srv.pids())
            n = args.idle
            if getattr(srv, "maxconn", None) and srv.maxconn < n + 10:
                n = srv.maxconn - 10  # leave room for the pool
            try:
                socks = idle_connections(srv.port, n)
                after = rss_kb(srv.pids())
                for s in socks:
                    s.close()
                idle[t] = (before, after, None if n == args.idle else
                           f"{n} connections (maxconn capped by the fd limit)")
            except OSError as e:
                idle[t] = (before, rss_kb(srv.pids()), f"failed after opening some: {e}")
            print(f"idle {t:10s} RSS {before} kB -> {idle[t][1]} kB {idle[t][2] or ''}",
                  flush=True)
            time.sleep(1)
        report = render(results, idle, targets, variants, args)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(d, ignore_errors=True)
    print(report)
    if args.write != "-":
        write_readme(args.write, report)


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def render(results, idle, targets, variants, args):
    m = machine()
    lines = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"Run: {now}, `bash bench/run.sh` ({args.rounds} interleaved rounds, "
                 f"wrk -t1 -c{args.connections} -d{args.duration}s --latency, medians).")
    lines.append(f"Machine: {m['cpu']}, {m['mem']}, Linux {m['kernel']}; {m['nginx']}; "
                 f"{m['haproxy']}; {m['wrk']}. Load average (1 min) at start/end: "
                 f"{args.load_start:.1f} / {os.getloadavg()[0]:.1f} (other work on the machine "
                 f"adds noise; the rounds are interleaved so it hits every target alike).")
    lines.append("Backend: nginx (1 worker) returning a 23-byte static body. Every proxy: one "
                 "worker (nginx `worker_processes 1` + upstream keepalive 64, HAProxy "
                 "`nbthread 1` + `http-reuse always`, Gatehouse `workers: 1`). wrk, the backend "
                 "and the proxy share the same 2 cores, so absolute numbers are low; compare "
                 "the ratios.")
    lines.append("")
    for vname, _, tls in variants:
        lines.append(f"### {vname}")
        lines.append("")
        lines.append("| target | req/s | ×nginx | p50 ms | ×nginx | p99 ms | ×nginx | "
                     "req per CPU-s (proxy) | ×nginx | errors |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        ref = results.get((vname, "nginx"), [])
        for t in targets:
            runs = results.get((vname, t))
            if not runs:
                continue
            rps, p50, p99 = med(runs, "rps"), med(runs, "p50"), med(runs, "p99")
            rpc = med(runs, "rpcpu") if t != "direct" else None
            errs = "; ".join(sorted({r["errors"].strip("; ") for r in runs if r["errors"]}))
            lines.append(
                f"| {t} | {rps:.0f} | {fmt_ratio(rps, med(ref, 'rps'))} | {p50:.3f} | "
                f"{fmt_ratio(p50, med(ref, 'p50'))} | {p99:.3f} | "
                f"{fmt_ratio(p99, med(ref, 'p99'))} | "
                f"{'–' if rpc is None else f'{rpc:.0f}'} | "
                f"{fmt_ratio(rpc, med(ref, 'rpcpu')) if rpc else '–'} | {errs or '0'} |")
        lines.append("")
    lines.append(f"### RSS with {args.idle} idle keep-alive connections")
    lines.append("")
    lines.append("| proxy | RSS before | RSS with idle connections | growth | ×nginx | note |")
    lines.append("|---|---:|---:|---:|---:|---|")
    ref = idle.get("nginx")
    for t, (b, a, err) in idle.items():
        lines.append(f"| {t} | {b / 1024:.1f} MB | {a / 1024:.1f} MB | {(a - b) / 1024:.1f} MB | "
                     f"{fmt_ratio(a, ref[1] if ref else None)} | {err or ''} |")
    lines.append("")
    return "\n".join(lines)


BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"


def write_block(path, begin, end, report, section=""):
    """Rewrites what lies between one benchmark's markers in path (the rest of
    bench/README.md belongs to the other benchmarks); without the markers,
    appends section (its heading and description) and the marked block."""
    text = open(path).read() if os.path.exists(path) else "# Benchmark\n"
    block = f"{begin}\n{report}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + (section + "\n\n" if section else "") + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_readme(path, report):
    text = open(path).read() if os.path.exists(path) else f"# Benchmark\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(head + BEGIN + "\n" + report + "\n" + END + tail)


if __name__ == "__main__":
    sys.exit(main())
