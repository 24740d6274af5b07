#!/usr/bin/env python3
"""Signed-in benchmark (issue 15): what a signed-in, policy-checked, logged
request costs next to nginx's and HAProxy's plain proxy_pass, in one run with
interleaved rounds through the same backend:

  nginx           nginx, plain proxy_pass (upstream keepalive)
  haproxy         HAProxy, plain (http-reuse always)
  gh-public       Gatehouse, a `public: true` route, no decision log
  gh-signedin     Gatehouse, a route with a 4-rule policy; alice's session cookie;
                  identity headers and the ES256 assertion to the backend;
                  no decision log
  gh-log-batch    the same, decision log on (SQLite + JSON lines), sync: batch
  gh-log-strict   the same, sync: strict (forwarded once the record is committed)
  gh-log-deferred the same as gh-log-batch with `index: deferred`: the JSON-lines
                  file is the log of record, SQLite filled from it by the readers
  gh-bearer       the policy route of gh-signedin with `Authorization: Bearer
                  <ID token>` (an API client) instead of the cookie

One worker each (nginx `worker_processes 1`, HAProxy `nbthread 1`, Gatehouse
`workers: 1`), keep-alive everywhere. The proxies are pinned to CPU 0 and wrk
plus the backend to CPU 1 (sched_setaffinity, inherited by the children), so
the proxies do not fight wrk for a core; the IdP runs unpinned (it is off the
hot path). Requests per proxy CPU-second = requests / (utime + stime of the
proxy's process tree, all threads: the decision log's writer is included).

The OpenID Provider is the test suite's (tests/idp/oidc_idp.mjs); each
Gatehouse signs alice in through it, and the bearer token is an ID token from
an authorization-code flow with PKCE (bench/authn.py). Before and after the
rounds every Gatehouse target must answer 200 with its credential and refuse
a request without one, and the backend must receive the identity headers and
the assertion. After the rounds `gatehouse audit verify` must pass on both
logs, each holding at least as many records as wrk counted responses.

Everything listens on 127.0.0.1 on free ports, in a temp dir."""
import argparse
import datetime
import http.client
import http.server
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import bench  # noqa: E402  (bench/bench.py: backend, nginx, HAProxy, wrk, CPU accounting)
import authn  # noqa: E402  (bench/authn.py: ID token through the code flow, http_get)
import oidc  # noqa: E402  (tests/integration/oidc.py: the real IdP and a browser)

TARGETS = ["nginx", "haproxy", "gh-public", "gh-signedin", "gh-log-batch", "gh-log-strict",
           "gh-log-deferred", "gh-bearer"]
WHAT = {
    "nginx": "plain `proxy_pass`",
    "haproxy": "plain (`http-reuse always`)",
    "gh-public": "`public: true`, no decision log",
    "gh-signedin": "session cookie, 4-rule policy, identity headers + ES256 assertion, "
                   "no decision log",
    "gh-log-batch": "the same + decision log, `sync: batch`",
    "gh-log-strict": "the same + decision log, `sync: strict`",
    "gh-log-deferred": "the same + decision log, `sync: batch`, `index: deferred` (SQLite "
                       "filled by the readers)",
    "gh-bearer": "bearer ID token (API client), 4-rule policy, headers + assertion, "
                 "no decision log",
}
PATH = "/app/page"
PROXY_CPU, CLIENT_CPU = 0, 1
BEGIN = "<!-- signedin:begin -->"
END = "<!-- signedin:end -->"
HEADING = "## Signed-in requests against nginx and HAProxy"

POLICY = """# Four rules, as a small team would write them: two denies, two allows.
mode: enforce
rules:
  - id: deny-admin-area
    effect: deny
    when:
      all:
        - path: {prefix: /app/admin}
        - not: {groups: {contains: admins}}
    reason: Only admins may open the admin area.
  - id: deny-writes-outside-office
    effect: deny
    when:
      all:
        - method: {in: [DELETE, PUT]}
        - not: {domain: example.com}
    reason: Only staff may change things.
  - id: allow-engineers
    effect: allow
    when:
      all:
        - groups: {contains: eng}
        - path: {prefix: /app/}
  - id: allow-staff-reads
    effect: allow
    when:
      all:
        - domain: example.com
        - method: GET
"""


def gatehouse_config(port, idp, backend_port, log):
    up = f"{{servers: [http://127.0.0.1:{backend_port}], max_idle: 64}}"
    dl = f"decision_log: {{file: var/decisions.jsonl, sync: {log}}}\n" if log else ""
    if log == "deferred":
        dl = "decision_log: {file: var/decisions.jsonl, sync: batch, index: deferred}\n"
    return f"""listen:
  - address: 127.0.0.1:{port}
    public_url: http://127.0.0.1:{port}
admin: {{address: 127.0.0.1:{bench.free_port()}}}
workers: 1
access_log: "off"
log_level: warn
limits: {{connections: 30000}}
timeouts: {{idle: 300s}}
state: {{sqlite: var/gatehouse.db}}
identity_providers:
  - id: corp
    type: oidc
    issuer: {idp.issuer}
    client_id: {oidc.CLIENT_ID}
    client_secret_file: oidc-secret
    allow_insecure_issuer: true
    scopes: [openid, email, profile, groups]
    accept_id_tokens: true
    bare_user_ids: true
upstream_identity:
  assertion: {{key: assertion-es256.pem, ttl: 60s}}
{dl}routes:
  - name: public
    match: {{path_prefix: /public}}
    public: true
    upstream: {up}
  - name: app
    match: {{path_prefix: /}}
    policy: policy-4.yaml
    upstream: {up}
"""


class Gatehouse:
    """One Gatehouse (its own dir, state and log mode), alice signed in."""

    def __init__(self, d, binary, port, idp, backend_port, log, wrap=()):
        self.name = "gatehouse-" + (log or "nolog")
        self.dir = os.path.join(d, self.name)
        os.makedirs(os.path.join(self.dir, "var"))
        self.binary, self.port, self.log = binary, port, log
        self.base = f"http://127.0.0.1:{port}"
        with open(os.path.join(self.dir, "oidc-secret"), "w") as f:
            f.write(oidc.CLIENT_SECRET)
        with open(os.path.join(self.dir, "policy-4.yaml"), "w") as f:
            f.write(POLICY)
        self.config = os.path.join(self.dir, "gatehouse.yaml")
        with open(self.config, "w") as f:
            f.write(gatehouse_config(port, idp, backend_port, log))
        self.server = bench.Server(self.name, [*wrap, binary, "serve", "-c", self.config], port,
                                   cwd=self.dir)

    def sign_in(self):
        browser = oidc.Browser()
        for attempt in range(20):  # Gatehouse may still be fetching the discovery document
            try:
                if browser.login(self.base, PATH).status == 200:
                    break
            except AssertionError:
                if attempt == 19:
                    raise
            time.sleep(0.25)
        sid = browser.session_cookie(self.base)
        if not sid:
            raise RuntimeError(f"{self.name}: no session cookie after signing in")
        self.cookie = f"Cookie: gatehouse_session={sid}"

    def pids(self):
        return self.server.pids()

    def records(self):
        with open(os.path.join(self.dir, "var", "decisions.jsonl"), "rb") as f:
            return sum(1 for _ in f)

    def verify(self):
        p = subprocess.run([self.binary, "audit", "verify", "-c", self.config],
                           capture_output=True, text=True, timeout=600, cwd=self.dir)
        return p.returncode == 0, (p.stdout + p.stderr).strip().splitlines()[-1:]

    def stop(self):
        self.server.stop()


class EchoBackend:
    """A tiny backend that records the headers of the one request sent to it,
    to check that Gatehouse forwards the identity headers and the assertion
    (the nginx backend of the runs cannot tell)."""

    def __init__(self):
        seen = self.seen = {}

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.update({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def check(urls, creds):
    """Every Gatehouse target answers 200 with its credential, and refuses the
    request without it (401 for an API client, a redirect to sign-in for a browser)."""
    for t, url in urls.items():
        hdrs = dict(h.split(": ", 1) for h in creds.get(t, ()))
        status, _, body = authn.http_get(url, {**hdrs, "Accept": "application/json"})
        if status != 200:
            raise RuntimeError(f"{t}: {url} answered {status}: {body[:300]!r}")
        if t.startswith("gh-") and t != "gh-public":
            status, _, _ = authn.http_get(url, {"Accept": "application/json"})
            if status not in (302, 401):
                raise RuntimeError(f"{t}: {url} without a credential answered {status}")


def check_identity(d, binary, idp, cookie_for):
    """One Gatehouse of the same configuration in front of the echo backend:
    the backend must get X-Gatehouse-User, -Email, -Groups and the assertion."""
    echo = EchoBackend()
    g = None
    try:
        g = Gatehouse(os.path.join(d, "echo"), binary, cookie_for, idp, echo.port, None)
        g.sign_in()
        status, _, _ = authn.http_get(g.base + PATH, dict([g.cookie.split(": ", 1)]))
        want = ("x-gatehouse-user", "x-gatehouse-email", "x-gatehouse-groups",
                "x-gatehouse-assertion")
        missing = [h for h in want if h not in echo.seen]
        if status != 200 or missing or echo.seen.get("x-gatehouse-user") != "alice":
            raise RuntimeError(f"identity check: status {status}, missing {missing}, "
                               f"got {sorted(echo.seen)}")
    finally:
        if g:
            g.stop()
        echo.stop()


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def paired(results, num, den, key):
    """Median over the rounds of num/den, each pair from one round (one state
    of a shared machine per ratio)."""
    rs = [a[key] / b[key] for a, b in zip(results.get(num, []), results.get(den, []))
          if a.get(key) and b.get(key)]
    return statistics.median(rs) if rs else float("nan")


def versions():
    def first(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return argv[0] + " ?"
    return "; ".join([first(["nginx", "-v"]), first(["haproxy", "-v"]), first(["wrk", "-v"])])


def render(a, results, targets, integrity, load0, load1, commit):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python3 bench/signedin.py" + (f" --rounds {a.rounds}" if a.rounds != 9 else "") + \
        (f" --duration {a.duration}" if a.duration != 5 else "") + \
        (f" --only {a.only}" if a.only else "") + \
        (f" --baseline {os.path.basename(a.baseline)}" if a.baseline else "")
    lines = [
        f"Run: {now}, `{cmd}` (Gatehouse {commit}; {a.rounds} interleaved rounds, "
        f"wrk -t1 -c{a.connections} -d{a.duration}s --latency, keep-alive, medians).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
        f"{versions()}.",
        f"Load average (1 min) at start/end: {load0:.1f} / {load1:.1f} (the machine is shared: "
        "other work adds noise; the rounds are interleaved so it hits every target alike, and "
        "each ratio is the median of per-round ratios).",
        f"Pinning: every proxy on CPU {PROXY_CPU}, wrk and the nginx backend (23-byte body) on "
        f"CPU {CLIENT_CPU}. **req per CPU-s** = requests ÷ the proxy's own utime + stime "
        "(process tree, all threads: the decision log's writer is included).",
        "",
        "| target | what | req/s | p50 ms | ×nginx | p99 ms | ×nginx | req per CPU-s | ×nginx "
        "| CPU µs per req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in targets:
        rs = results[t]
        errs = "; ".join(sorted({r["errors"].strip("; ") for r in rs if r["errors"]})) or "0"
        pc = med(rs, "rpcpu")
        lines.append(
            f"| {t} | {WHAT[t.rpartition(':')[2]]} | {med(rs, 'rps'):.0f} | {med(rs, 'p50'):.3f} | "
            f"{paired(results, t, 'nginx', 'p50'):.2f} | {med(rs, 'p99'):.3f} | "
            f"{paired(results, t, 'nginx', 'p99'):.2f} | {pc:.0f} | "
            f"{paired(results, t, 'nginx', 'rpcpu'):.2f} | {1e6 / pc:.1f} | {errs} |")
    lines.append("")
    checks = [
        ("gh-log-batch", "rpcpu", ">=", 0.9, "signed-in + policy + log (batch), req per CPU-s"),
        ("gh-log-batch", "p99", "<=", 1.0, "signed-in + policy + log (batch), p99"),
        ("gh-log-deferred", "rpcpu", ">=", 0.9,
         "signed-in + policy + log (batch, `index: deferred`), req per CPU-s"),
        ("gh-log-deferred", "p99", "<=", 1.0, "signed-in + policy + log (batch, `index: deferred`), p99"),
        ("gh-public", "rpcpu", ">=", 1.1, "public, req per CPU-s"),
    ]
    for t, key, op, goal, label in checks:
        if t not in results or "nginx" not in results:
            continue
        v = paired(results, t, "nginx", key)
        ok = v >= goal if op == ">=" else v <= goal
        lines.append(f"- {label}: {v:.2f}× nginx (target {op.replace('>=', '≥').replace('<=', '≤')} "
                     f"{goal}×): {'met' if ok else 'MISSED'}")
    # The log's own cost per decision, end to end: CPU per request with the log minus
    # without it (gh-signedin), paired per round, writer thread included.
    for side in ("", "before:"):
        base = side + "gh-signedin"
        for t in ("gh-log-batch", "gh-log-deferred", "gh-log-strict"):
            if side + t not in results or base not in results:
                continue
            d = [1e6 / a["rpcpu"] - 1e6 / b["rpcpu"]
                 for a, b in zip(results[side + t], results[base]) if a.get("rpcpu") and b.get("rpcpu")]
            if d:
                lines.append(f"- {side}{t}: the decision log costs {statistics.median(d):.1f} µs of "
                             f"CPU per decision (CPU per request minus {base}'s, paired per round; "
                             f"rounds: {', '.join(f'{x:.1f}' for x in d)})")
    for t in targets:
        if "before:" + t in results:
            lines.append(f"- {t}: {paired(results, t, 'before:' + t, 'rpcpu'):.2f}× the requests "
                         f"per CPU-second of `{os.path.basename(a.baseline)}` (before), p99 "
                         f"{paired(results, t, 'before:' + t, 'p99'):.2f}× (paired per round)")
    for mode, (ok, recs, served, last) in integrity.items():
        lines.append(f"- decision log {mode}: {recs} records for {served} responses wrk counted "
                     f"(warm-up included; sign-in and checks add a few); `audit verify`: "
                     f"{'OK' if ok else 'FAILED ' + ' '.join(last)}")
    return "\n".join(lines)


def write_readme(path, report):
    bench.write_block(path, BEGIN, END, report, HEADING)


def binary_label(binary):
    if os.path.realpath(binary) != os.path.realpath(os.path.join(ROOT, "build", "gatehouse")):
        return os.path.basename(binary)
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def perf_top(data, user_only):
    """Top 10 symbols by self time (percent of all samples) from perf report."""
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,symbol",
                          "--stdio", "-g", "none"], capture_output=True, text=True).stdout
    rows = []
    for ln in out.splitlines():
        f = ln.split()
        if len(f) < 4 or not f[0].endswith("%") or ln.lstrip().startswith("#"):
            continue
        dso, kind, sym = f[1], f[2], f[3]
        if user_only and (kind == "[k]" or dso.startswith("[kernel")):
            continue
        rows.append(f"| {f[0]} | {kind} | `{sym}` | {dso} |")
        if len(rows) == 10:
            break
    return rows


def profile(args, t, g, url, headers):
    """perf record -e cpu-clock -g on Gatehouse's process for the length of
    one wrk run; writes DIR/<t>.data and the top 10 symbols (self time), all
    and user space only, to DIR/<t>.txt."""
    data = os.path.join(args.perf, t.replace(":", "-") + ".data")
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o", data,
                            "-p", str(g.server.proc.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = bench.run_wrk(url, args.duration, args.connections, 1, headers=headers)
    rec.send_signal(2)
    rec.wait()
    head = ["| self | | symbol | object |", "|---:|---|---|---|"]
    text = "\n".join([f"{t}: {r['rps']:.0f} req/s during the profile", "", "All samples:", ""] +
                     head + perf_top(data, False) +
                     ["", "User space only:", ""] + head + perf_top(data, True)) + "\n"
    with open(os.path.join(args.perf, t.replace(":", "-") + ".txt"), "w") as f:
        f.write(text)
    print(text, flush=True)


def callgrind(args, d, idp, backend_port, token, ports):
    """Instructions per request of each Gatehouse thread, steady whatever the
    load of the machine: Gatehouse under `valgrind --tool=callgrind`, 200
    sequential keep-alive requests to warm up, then instrumentation on for
    args.callgrind requests (callgrind_control -i on, -d at the end)."""
    rows = []
    logs = {"gh-log-batch": "batch", "gh-log-deferred": "deferred"}
    for t in ("gh-public", "gh-signedin", "gh-log-batch", "gh-log-deferred", "gh-bearer"):
        if args.only and t not in args.only.split(","):
            continue
        out = os.path.join(d, "cg", t)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        wrap = ["valgrind", "--tool=callgrind", "--separate-threads=yes", "--instr-atstart=no",
                f"--callgrind-out-file={out}"]
        port = ports[logs.get(t, "nolog")]
        orig = bench.wait_port
        bench.wait_port = lambda p, proc, timeout=10: orig(p, proc, 120)
        try:
            g = Gatehouse(os.path.join(d, "cg-" + t), args.gatehouse, port, idp, backend_port,
                          logs.get(t), wrap)
        finally:
            bench.wait_port = orig
        try:
            g.sign_in()
            path, hdrs = PATH, {"Accept": "application/json"}
            if t == "gh-public":
                path = "/public/page"
            elif t == "gh-bearer":
                hdrs["Authorization"] = "Bearer " + token
            else:
                hdrs["Cookie"] = g.cookie.split(": ", 1)[1]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

            def go(n):
                for _ in range(n):
                    conn.request("GET", path, headers=hdrs)
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        raise RuntimeError(f"callgrind {t}: {r.status}")
            go(200)
            pid = str(g.server.proc.pid)
            subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            go(args.callgrind)
            time.sleep(0.5)  # the decision log's writer catches up
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            conn.close()
        finally:
            g.stop()
        per = []
        for f in sorted(x for x in os.listdir(os.path.dirname(out)) if x.startswith(t + ".1-")):
            with open(os.path.join(os.path.dirname(out), f)) as fh:
                m = re.search(r"^summary: (\d+)", fh.read(), re.M)
            if m and int(m.group(1)) > 100 * args.callgrind:  # busy threads only
                per.append(int(m.group(1)) / args.callgrind)
        per.sort(reverse=True)
        rows.append(f"| {t} | {' + '.join(f'{x:,.0f}' for x in per)} | {sum(per):,.0f} |")
    return "\n".join([f"Instructions per request (callgrind, {args.callgrind} requests, "
                      f"`{os.path.basename(args.gatehouse)}`), per busy thread (worker first "
                      "or, with the log, the larger of worker and writer) and in all:", "",
                      "| target | per thread | all |", "|---|---:|---:|"] + rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gatehouse", default=os.environ.get(
        "GATEHOUSE_BIN", os.path.join(ROOT, "build", "gatehouse")))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", help="comma-separated targets (" + ",".join(TARGETS) + ")")
    ap.add_argument("--write", default=os.path.join(HERE, "README.md"),
                    help="README to update between the signedin markers ('-' = stdout only)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("--callgrind", metavar="N", type=int,
                    help="instead of the rounds: instructions per request of each Gatehouse "
                    "target under callgrind, over N sequential keep-alive requests")
    ap.add_argument("--baseline", metavar="BIN",
                    help="another gatehouse binary whose targets run in the same rounds, "
                    "right after the --gatehouse ones (rows 'before:gh-...')")
    ap.add_argument("--perf", metavar="DIR",
                    help="instead of the rounds: `perf record -e cpu-clock -g` on each "
                    "Gatehouse target for --duration seconds of wrk, top 10 symbols of each "
                    "in DIR/<target>.txt (nothing written to the README)")
    args = ap.parse_args()
    if args.callgrind:
        args.write = "-"
    if args.perf:
        args.write = "-"
        args.perf = os.path.abspath(args.perf)
        os.makedirs(args.perf, exist_ok=True)
    args.gatehouse = os.path.abspath(args.gatehouse)
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
    for tool in ("wrk", "nginx", "haproxy", "node"):
        if shutil.which(tool) is None:
            sys.exit(f"signedin bench: {tool} is missing (scripts/deps.sh bench installs it)")
    if not os.access(args.gatehouse, os.X_OK):
        sys.exit(f"signedin bench: {args.gatehouse} is not built (make build)")
    if os.cpu_count() < 2:
        sys.exit("signedin bench: needs 2 CPUs (proxy on one, wrk and the backend on the other)")
    targets = TARGETS if not args.only else [t for t in TARGETS if t in args.only.split(",")]
    if "nginx" not in targets:
        targets = ["nginx"] + targets  # every ratio is to nginx plain
    all_cpus = os.sched_getaffinity(0)
    load0 = os.getloadavg()[0]

    d = tempfile.mkdtemp(prefix="gh-signedin-bench-")
    for sub in ("backend-body", "nginx-body"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    servers, idp = [], None
    try:
        # One set of Gatehouse instances per binary: "" for --gatehouse, "before:"
        # for --baseline (its targets run in the same rounds, right after).
        sides = [("", args.gatehouse)] + ([("before:", args.baseline)] if args.baseline else [])
        gh_ports = {(side, m): bench.free_port() for side, _ in sides
                    for m in ("nolog", "batch", "strict", "deferred")}
        gh_ports[("", "echo")] = bench.free_port()
        bench_cb = f"http://127.0.0.1:{bench.free_port()}/cb"
        client = oidc.client_for(f"http://127.0.0.1:{gh_ports[('', 'nolog')]}")
        del client["backchannel_logout_uri"]
        for port in gh_ports.values():
            client["redirect_uris"].append(f"http://127.0.0.1:{port}/.gatehouse/oidc/callback")
        client["redirect_uris"].append(bench_cb)
        idp = oidc.IdP([client], env={"GH_IDP_ID_TTL": "3600", "GH_IDP_ACCESS_TTL": "3600"})
        token, _ = authn.fetch_id_token(idp, oidc.CLIENT_ID, oidc.CLIENT_SECRET, bench_cb)
        check_identity(d, args.gatehouse, idp, gh_ports[("", "echo")])
        if args.callgrind:
            os.sched_setaffinity(0, {CLIENT_CPU})
            backend = bench.start_backend(d)
            servers.append(backend)
            report = callgrind(args, d, idp, backend.port, token,
                               {m: gh_ports[("", m)] for m in ("nolog", "batch", "deferred")})
            print(report)
            return 0

        os.sched_setaffinity(0, {CLIENT_CPU})
        backend = bench.start_backend(d)
        servers.append(backend)
        os.sched_setaffinity(0, {PROXY_CPU})
        crt, key, pem = bench.make_cert(d)
        owner, urls, creds = {}, {}, {}
        if "nginx" in targets:
            owner["nginx"] = bench.start_nginx(d, backend.port, crt, key)
            servers.append(owner["nginx"])
        if "haproxy" in targets:
            owner["haproxy"] = bench.start_haproxy(d, backend.port, pem)
            servers.append(owner["haproxy"])
        for t in ("nginx", "haproxy"):
            if t in owner:
                urls[t] = f"http://127.0.0.1:{owner[t].port}{PATH}"
        gh = {}
        need = {"nolog": {"gh-public", "gh-signedin", "gh-bearer"},
                "batch": {"gh-log-batch"}, "strict": {"gh-log-strict"},
                "deferred": {"gh-log-deferred"}}
        for side, binary in sides:
            for mode, ts in need.items():
                if ts & set(targets):
                    sd = os.path.join(d, side.rstrip(":") or "after")
                    gh[(side, mode)] = Gatehouse(sd, binary, gh_ports[(side, mode)], idp,
                                                 backend.port, None if mode == "nolog" else mode)
                    servers.append(gh[(side, mode)])
        os.sched_setaffinity(0, {CLIENT_CPU})
        for g in gh.values():
            g.sign_in()
        all_targets = [t for t in targets if not t.startswith("gh-")]
        for side, _ in sides:
            if (side, "nolog") in gh:
                g = gh[(side, "nolog")]
                owner.update({side + t: g for t in ("gh-public", "gh-signedin", "gh-bearer")})
                urls.update({side + "gh-public": g.base + "/public/page",
                             side + "gh-signedin": g.base + PATH, side + "gh-bearer": g.base + PATH})
                creds.update({side + "gh-signedin": [g.cookie],
                              side + "gh-bearer": [f"Authorization: Bearer {token}"]})
            for mode, t in (("batch", "gh-log-batch"), ("strict", "gh-log-strict"),
                            ("deferred", "gh-log-deferred")):
                if (side, mode) in gh:
                    g = gh[(side, mode)]
                    owner[side + t], urls[side + t], creds[side + t] = g, g.base + PATH, [g.cookie]
        for t in targets:
            all_targets += [side + t for side, _ in sides if t.startswith("gh-")]
        targets = [t for t in all_targets if t in urls]
        check({t: urls[t] for t in targets}, creds)

        def log_mode(t):
            side, _, name = t.rpartition(":")
            return (side + ":" if side else "", name[len("gh-log-"):]) \
                if name.startswith("gh-log-") else None

        served = {k: 0 for k in gh}
        for t in targets:  # warm-up: connection pools, caches, the assertion
            r = bench.run_wrk(urls[t], 1, args.connections, 1, headers=creds.get(t, ()))
            if log_mode(t):
                served[log_mode(t)] += r["requests"]
        if args.perf:
            for t in targets:
                if "gh-" in t:
                    profile(args, t, owner[t], urls[t], creds.get(t, ()))
            return 0
        results = {t: [] for t in targets}
        for rnd in range(args.rounds):
            for t in targets:
                pids = owner[t].pids()
                c0 = bench.cpu_seconds(pids)
                r = bench.run_wrk(urls[t], args.duration, args.connections, 1,
                                  headers=creds.get(t, ()))
                r["cpu"] = bench.cpu_seconds(pids) - c0
                r["rpcpu"] = r["requests"] / r["cpu"] if r["cpu"] > 0 else None
                results[t].append(r)
                if log_mode(t):
                    served[log_mode(t)] += r["requests"]
                print(f"round {rnd + 1} {t:21s} {r['rps']:9.0f} req/s "
                      f"p50 {r.get('p50', 0):7.3f} ms p99 {r.get('p99', 0):7.3f} ms "
                      f"cpu {r['cpu']:5.2f} s {r['rpcpu'] or 0:8.0f} req/CPU-s {r['errors']}",
                      flush=True)
        check({t: urls[t] for t in targets}, creds)
        load1 = os.getloadavg()[0]
        time.sleep(1)  # batch mode flushes
        integrity = {}
        for (side, mode), g in gh.items():
            if mode != "nolog":
                g.stop()
                servers.remove(g)
                ok, last = g.verify()
                integrity[side + mode] = (ok, g.records(), served[(side, mode)], last)
        report = render(args, results, targets, integrity, load0, load1,
                        binary_label(args.gatehouse))
    finally:
        os.sched_setaffinity(0, all_cpus)
        for s in reversed(servers):
            s.stop()
        if idp:
            idp.stop()
        if args.keep:
            print(f"signedin bench: temp dir kept: {d}", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)
    print(report)
    if args.write != "-":
        write_readme(args.write, report)
        print(f"written to {args.write}")
    return 0 if all(v[0] for v in integrity.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
