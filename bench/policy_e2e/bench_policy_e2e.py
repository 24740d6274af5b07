#!/usr/bin/env python3
"""End-to-end cost of policies and the decision log (issue 4 benchmark).

One nginx backend (bench/bench.py's, a 23-byte static answer) behind one
Gatehouse (workers: 1, access log off) per decision_log.sync mode. Each
Gatehouse has two routes to the same backend:

- "wiki" (every other path): the realistic 100-rule policy bench/policy/policy-100.yaml;
  requests carry alice's session cookie (signed in through the real OpenID
  Provider, tests/idp) and Host wiki.example.com, and are allowed by rule
  allow-eng-wiki-0 after the 20 deny rules were evaluated;
- "public" (path /pub/): `public: true` (no identity, still logged).

Both write every decision to the decision log (SQLite + JSON lines). wrk runs
interleaved rounds of [public, policy] per mode; medians are reported, with the
policy route's throughput as a share of the public route's (target >= 85% in
batch mode). After the runs, `gatehouse audit verify` must pass and the log
must hold at least as many records as wrk counted responses (nothing dropped).

Everything listens on 127.0.0.1 on free ports, in a temp dir."""
import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import bench as common  # noqa: E402  (bench/bench.py: backend, Server, run_wrk)
from oidc import CLIENT_SECRET, IdP, Browser, client_for  # noqa: E402

POLICY = os.path.join(BENCH, "policy", "policy-100.yaml")
POLICY_PATH = "/wiki/eng/page"
TARGET = 0.85
BEGIN = "<!-- policy-e2e:begin -->"
END = "<!-- policy-e2e:end -->"
HEADING = "## Policy and decision log"


def gatehouse_config(port, admin, backend_port, idp, sync):
    up = f"{{servers: [http://127.0.0.1:{backend_port}], max_idle: 64}}"
    # A deep queue: on a busy shared machine the writer thread may fall behind
    # for a moment; the records wait instead of turning requests into 503s, and
    # the run's CPU is read once the writer has caught up (Instance.drain).
    log = "" if sync == "off" else (f"decision_log: {{file: var/decisions.jsonl, sync: {sync}, "
                                    "queue: 500000}\n")
    return f"""listen: [{{address: 127.0.0.1:{port}, public_url: "http://127.0.0.1:{port}"}}]
admin: {{address: 127.0.0.1:{admin}}}
workers: 1
access_log: "off"
state: {{sqlite: var/gatehouse.db}}
identity_providers:
  - {{id: corp, type: oidc, issuer: "{idp.issuer}", client_id: gatehouse,
     client_secret_file: oidc-secret, allow_insecure_issuer: true,
     scopes: [openid, email, profile, groups]}}
{log}routes:
  - {{name: public, match: {{path_prefix: /pub/}}, public: true, upstream: {up}}}
  - {{name: wiki, policy: policy-100.yaml, upstream: {up}}}
"""


class Instance:
    def __init__(self, d, binary, backend_port, idp, port, sync, label="now"):
        self.dir = os.path.join(d, f"gatehouse-{label}-{sync}")
        os.makedirs(self.dir)
        self.port = port
        self.sync = sync
        shutil.copy(POLICY, os.path.join(self.dir, "policy-100.yaml"))
        with open(os.path.join(self.dir, "oidc-secret"), "w") as f:
            f.write(CLIENT_SECRET)
        self.config = os.path.join(self.dir, "gatehouse.yaml")
        with open(self.config, "w") as f:
            self.admin = common.free_port()
            f.write(gatehouse_config(port, self.admin, backend_port, idp, sync))
        self.binary = binary
        self.server = common.Server(f"gatehouse-{label}-{sync}",
                                    [binary, "serve", "-c", self.config],
                                    port, cwd=self.dir)
        try:
            self.sign_in(port)
        except BaseException:
            self.server.stop()
            raise

    def sign_in(self, port):
        b = Browser()
        # Signing in through a policy path: the IdP round trip sets the session
        # cookie (the answer itself is a 403: Host is not wiki.example.com here).
        b.login(f"http://127.0.0.1:{port}", POLICY_PATH)
        jar = b.jar(f"127.0.0.1:{port}")
        if "gatehouse_session" not in jar:
            raise RuntimeError("sign-in did not give a session cookie")
        self.cookie = "Cookie: gatehouse_session=" + jar["gatehouse_session"]
        check = b.request(f"http://127.0.0.1:{port}{POLICY_PATH}",
                          headers={"Host": "wiki.example.com", "Accept": "application/json"})
        if check.status != 200:
            raise RuntimeError(f"the policy route does not allow alice: {check!r}")

    def drain(self, timeout=60):
        """Waits until the decision log writer has committed everything queued."""
        end = time.time() + timeout
        while self.sync != "off" and time.time() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics",
                                            timeout=5) as r:
                    m = r.read().decode()
            except OSError:
                return
            depth = [ln.split()[1] for ln in m.splitlines()
                     if ln.startswith(("gatehouse_decision_log_pending ",
                                       "gatehouse_decision_log_queue_depth "))]
            if all(v == "0" for v in depth):
                return
            time.sleep(0.05)

    def records(self):
        with open(os.path.join(self.dir, "var", "decisions.jsonl"), "rb") as f:
            return sum(1 for _ in f)

    def verify(self):
        p = subprocess.run([self.binary, "audit", "verify", "-c", self.config],
                           capture_output=True, text=True, timeout=300)
        return p.returncode == 0, (p.stdout + p.stderr).strip().splitlines()[-1:]

    def stop(self):
        self.server.stop()


def med(runs, key):
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else float("nan")


def paired(results, mode, key, label="now"):
    """Median over the rounds of policy/public, each pair measured back to back
    (one machine state per ratio): steadier on a shared machine than a ratio
    of two medians taken at different moments."""
    rs = [x[key] / y[key] for x, y in zip(results[(label, mode, "policy")],
                                          results[(label, mode, "public")])
          if x.get(key) and y.get(key)]
    return statistics.median(rs) if rs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gatehouse", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--before", help="another gatehouse binary measured in the same rounds "
                    "(e.g. one built from an earlier commit), for before/after figures")
    ap.add_argument("--modes", default="batch,strict,off",
                    help="decision_log.sync modes; off = no decision log")
    ap.add_argument("--write", default=os.path.join(BENCH, "README.md"),
                    help="README to update between the policy-e2e markers ('-' = stdout only)")
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="gh-bench-policy-")
    servers = []
    idp = None
    try:
        for sub in ("backend-body",):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        backend = common.start_backend(d)
        servers.append(backend)
        modes = a.modes.split(",")
        bins = [("now", a.gatehouse)] + ([("before", a.before)] if a.before else [])
        keys = [(lbl, m) for lbl, _ in bins for m in modes]
        ports = {k: common.free_port() for k in keys}
        first = ports[keys[0]]
        client = client_for(f"http://127.0.0.1:{first}")
        for k in keys[1:]:
            client["redirect_uris"].append(
                f"http://127.0.0.1:{ports[k]}/.gatehouse/oidc/callback")
        del client["backchannel_logout_uri"]
        idp = IdP([client])
        inst = {}
        for lbl, binary in bins:
            for mode in modes:
                inst[(lbl, mode)] = Instance(d, binary, backend.port, idp, ports[(lbl, mode)],
                                             mode, lbl)
                servers.append(inst[(lbl, mode)])
        results = {k + (t,): [] for k in inst for t in ("public", "policy")}
        served = {k: 0 for k in inst}
        for rnd in range(a.rounds):
            for k, g in inst.items():
                for target in ("public", "policy"):
                    if target == "public":
                        url, headers = f"http://127.0.0.1:{g.port}/pub/page", ()
                    else:
                        url = f"http://127.0.0.1:{g.port}{POLICY_PATH}"
                        headers = (g.cookie, "Host: wiki.example.com")
                    cpu0 = common.cpu_seconds(g.server.pids())
                    r = common.run_wrk(url, a.duration, a.connections, 1, headers=headers)
                    g.drain()  # the writer's work for these requests counts too
                    cpu = common.cpu_seconds(g.server.pids()) - cpu0
                    r["per_cpu"] = r["requests"] / cpu if cpu > 0 else float("nan")
                    r["us_cpu"] = cpu * 1e6 / r["requests"] if r["requests"] else float("nan")
                    results[k + (target,)].append(r)
                    served[k] += r["requests"]
                    print(f"round {rnd + 1} {k[0]:6} {k[1]:6} {target:6} {r['rps']:9.0f} req/s "
                          f"{r['us_cpu']:6.1f} us CPU/req "
                          f"p50 {r.get('p50', 0):.2f} ms p99 {r.get('p99', 0):.2f} ms "
                          f"{r['errors']}", flush=True)
        # Let batch mode flush, then check nothing was dropped and the chain holds.
        time.sleep(1)
        integrity = {}
        for k, g in inst.items():
            g.stop()
            servers.remove(g)
            if k[1] != "off":
                ok, last = g.verify()
                integrity[k] = (ok, g.records(), served[k], last)
        report = render(a, results, integrity)
    finally:
        for s in servers:
            s.stop()
        if idp:
            idp.stop()
        shutil.rmtree(d, ignore_errors=True)
    print(report)
    if a.write != "-":
        write_readme(a.write, report)
        print(f"written to {a.write}")
    batch_ratio = paired(results, "batch", "rps") if ("now", "batch", "policy") in results else 1

    return 0 if batch_ratio >= TARGET and all(v[0] for v in integrity.values()) else 1


def render(a, results, integrity):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        f"Run: {now}, `bash bench/policy_e2e/run.sh` ({a.rounds} interleaved rounds, "
        f"wrk -t1 -c{a.connections} -d{a.duration}s --latency, medians). Load average (1 min) "
        f"at the end: {load:.1f} on {os.cpu_count()} cores shared by wrk, the backend and "
        "Gatehouse (and anyone else on the machine), so compare ratios, not absolutes.",
        "",
        "Gatehouse `workers: 1`, access log off, decision log on (SQLite + JSON lines). "
        "**policy**: route with the realistic 100-rule policy (`bench/policy/policy-100.yaml`), "
        "alice's session cookie, allowed by `allow-eng-wiki-0` after the 20 deny rules. "
        "**public**: `public: true` route, same backend, no identity (its decisions are logged "
        "too). Share = policy ÷ public of the same mode, the median over the rounds of each round's "
        "ratio (the two routes of a round run back to back); target ≥ 85% of the throughput in "
        "batch. The req/s share only means something when Gatehouse is the bottleneck; on a "
        "busy shared machine wrk and the backend (and other load) set the pace, so the "
        "requests per CPU-second of Gatehouse (its own utime + stime) is the steadier figure: "
        "it is the throughput share Gatehouse would reach if it were CPU-bound.",
        "",
        "| sync | route | req/s | share of public | p50 ms | p99 ms | req per CPU-s (Gatehouse) "
        "| share of public | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    modes = [m for m in ("batch", "strict") if ("now", m, "policy") in results]
    for mode in modes:
        for target in ("public", "policy"):
            rs = results[("now", mode, target)]
            rps, cpu = med(rs, "rps"), med(rs, "per_cpu")
            errs = "; ".join(sorted({r["errors"].strip("; ") for r in rs if r["errors"]})) or "0"
            share = paired(results, mode, "rps") if target == "policy" else 1.0
            cpu_share = paired(results, mode, "per_cpu") if target == "policy" else 1.0
            lines.append(f"| {mode} | {target} | {rps:.0f} | {share:.0%} | "
                         f"{med(rs, 'p50'):.3f} | {med(rs, 'p99'):.3f} | "
                         f"{cpu:.0f} | {cpu_share:.0%} | {errs} |")
        share = paired(results, mode, "rps")
        cpu_share = paired(results, mode, "per_cpu")
        if mode == "batch":
            verdicts.append(f"batch: policy route at {share:.0%} of the public route's "
                            f"throughput ({'meets' if share >= TARGET else 'MISSES'} the 85% "
                            f"target); per CPU-second of Gatehouse it does {cpu_share:.0%} as "
                            "many requests (session lookup, policy input, "
                            "assertion header, larger records)")
        else:
            verdicts.append(f"strict: policy route at {share:.0%} of the public route's "
                            f"throughput in strict mode (every request, public ones too, waits "
                            f"for its record's group commit)")
    lines.append("")
    lines += log_cost_table(results)
    for (lbl, mode), (ok, recs, served, last) in integrity.items():
        verdicts.append(f"{lbl} {mode}: {recs} records logged for {served} responses wrk counted "
                        f"(sign-in and checks add a few); `audit verify`: "
                        f"{'OK' if ok else 'FAILED ' + ' '.join(last)}")
    lines += ["- " + v for v in verdicts]
    return "\n".join(lines)


def log_cost_table(results):
    """Gatehouse CPU per request (utime + stime of all its threads, the log writer
    included) with the decision log in each mode and without it; the log's cost is
    the difference, per round (both measured in the same round), median."""
    labels = sorted({k[0] for k in results}, key=lambda x: x != "before")
    modes = [m for m in ("batch", "strict") if ("now", m, "policy") in results]
    if ("now", "off", "policy") not in results:
        return []
    out = ["Decision log cost: Gatehouse CPU µs per request (all threads, the writer "
           "included), median over rounds; cost = the mode minus `off` (no decision log) "
           "in the same round.", "",
           "| binary | route | log off µs/req | " +
           " | ".join(f"{m} µs/req | {m} log cost µs | {m} p50 ms | {m} p99 ms"
                      for m in modes) + " |",
           "|---|---|---:|" + "---:|---:|---:|---:|" * len(modes)]
    for lbl in labels:
        for target in ("policy", "public"):
            off = results[(lbl, "off", target)]
            row = [lbl, target, f"{med(off, 'us_cpu'):.1f}"]
            for m in modes:
                rs = results[(lbl, m, target)]
                cost = [x["us_cpu"] - y["us_cpu"] for x, y in zip(rs, off)]
                row += [f"{med(rs, 'us_cpu'):.1f}",
                        f"{statistics.median(cost):.1f}" if cost else "nan",
                        f"{med(rs, 'p50'):.3f}", f"{med(rs, 'p99'):.3f}"]
            out.append("| " + " | ".join(row) + " |")
    out.append("")
    return out


def write_readme(path, report):
    common.write_block(
        path, BEGIN, END, report,
        f"{HEADING}\n\n"
        "`bash bench/policy_e2e/run.sh` (part of `make bench`) measures what route policies "
        "and the decision log cost end to end: wrk through Gatehouse on a route guarded by "
        "a realistic 100-rule policy with a signed-in user's session cookie, against a "
        "`public: true` route to the same backend, in `decision_log.sync: batch` and "
        "`strict`. It rewrites the block below.")


if __name__ == "__main__":
    sys.exit(main())
