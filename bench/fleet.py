#!/usr/bin/env python3
"""Fleet benchmark (issue 14): what sharing sessions in PostgreSQL costs.

  cache-hit   signed-in keep-alive requests per CPU-second of Gatehouse, the
              session cookie on every request, state.sqlite vs state.postgres
              (wrk -t1 -c50, interleaved rounds, medians). The request path
              reads the in-memory cache in both: the figures should match.
  revocation  two nodes on one PostgreSQL: sign in through node A, then time
              from starting `gatehouse sessions revoke` (with node B's config)
              to the first refusal on an open keep-alive connection to node A,
              polled every 2 ms; median and p99 over --revocations runs. The
              `sessions revoke` process itself (start, connect, commit) is
              reported apart.
  sign-ins    whole OIDC sign-ins one after another through the test suite's
              real OpenID Provider, state.sqlite vs state.postgres
              (interleaved rounds): sign-ins per second of the whole flow, the
              callback's latency (token exchange at the IdP, the fleet's
              login-state check, the session written), and Gatehouse's CPU
              time per sign-in.

Everything runs on 127.0.0.1: a PostgreSQL 15 of its own (tests/integration/
pgserver.py), the real OpenID Provider of the test suite, an nginx backend
(bench/bench.py). Prints a Markdown section; --write FILE replaces the
fleet section of bench/README.md."""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import bench  # noqa: E402
import pgserver  # noqa: E402
from harness import Gatehouse, RawConn, free_port, gatehouse_bin  # noqa: E402
from oidc import CLIENT_SECRET, Browser, IdP, client_for, idp_conf, wait_for  # noqa: E402


def node_config(port, backend_url, idp, state, shared):
    return {
        "listen": [{"address": f"127.0.0.1:{port}"}],
        "admin": {"address": f"127.0.0.1:{free_port()}"},
        "workers": 1,
        "access_log": "off",
        "log_level": "warn",
        "routes": [{"name": "app", "upstream": {"servers": [backend_url]}}],
        "state": state,
        "identity_providers": [idp_conf(idp)],
        "session": {"key_file": os.path.join(shared, "session.key")},
        "upstream_identity": {"assertion": {"key": os.path.join(shared, "assertion.pem")}},
    }


def sign_in(base):
    b = Browser()
    r = b.login(base, "/", user="alice")
    assert r.status == 200, r
    return b.session_cookie(base)


def sign_in_timed(base):
    """One whole sign-in; returns the callback request's latency (s)."""
    b = Browser()
    r = b.request(base + "/.gatehouse/login?rd=%2F")
    assert r.status == 302, r
    cb = b.to_callback(r.header("Location"), base)
    t0 = time.monotonic()
    r = b.request(cb)
    dt = time.monotonic() - t0
    assert r.status == 302 and b.session_cookie(base), r
    return dt


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--revocations", type=int, default=30)
    ap.add_argument("--signins", type=int, default=100, help="sign-ins per round and store")
    ap.add_argument("--write", default="-")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="gh-bench-fleet-")
    shared = os.path.join(d, "shared")
    os.mkdir(shared)
    pg = pgserver.PgServer()
    backend = bench.start_backend(d)
    ports = [free_port() for _ in range(3)]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    client = client_for(bases[0])
    for b in bases[1:]:
        client["redirect_uris"] += client_for(b)["redirect_uris"]
    idp = IdP([client])
    nodes = []
    try:
        burl = f"http://127.0.0.1:{backend.port}"
        pgstate = lambda i: {"postgres": pg.uri(application_name=f"bench{i}"),  # noqa: E731
                             "password_file": pg.pwfile}
        files = {"oidc-secret": CLIENT_SECRET}
        nodes.append(Gatehouse(node_config(ports[0], burl, idp, {"sqlite": "var/g.db"}, shared),
                               files=files))
        nodes.append(Gatehouse(node_config(ports[1], burl, idp, pgstate(1), shared), files=files))
        nodes.append(Gatehouse(node_config(ports[2], burl, idp, pgstate(2), shared), files=files))
        cookies = {"sqlite": sign_in(bases[0]), "postgres": sign_in(bases[1])}
        targets = {"sqlite": (nodes[0], bases[0]), "postgres": (nodes[1], bases[1])}

        runs = {t: [] for t in targets}
        for _ in range(args.rounds):
            for t, (gh, base) in targets.items():
                hdr = [f"Cookie: gatehouse_session={cookies[t]}"]
                cpu0 = bench.cpu_seconds([gh.pid])
                r = bench.run_wrk(base + "/", args.duration, args.connections, 1, headers=hdr)
                cpu = bench.cpu_seconds([gh.pid]) - cpu0
                if r["errors"]:
                    raise SystemExit(f"{t}: wrk saw errors (not signed in?): {r['errors']}")
                r["per_cpu"] = r["requests"] / cpu if cpu > 0 else 0
                runs[t].append(r)

        signins = {t: {"rate": [], "cb": [], "cpu_ms": []} for t in targets}
        for _ in range(args.rounds):
            for t, (gh, base) in targets.items():
                cpu0 = bench.cpu_seconds([gh.pid])
                t0 = time.monotonic()
                for _ in range(args.signins):
                    signins[t]["cb"].append(sign_in_timed(base) * 1000)
                wall = time.monotonic() - t0
                cpu = bench.cpu_seconds([gh.pid]) - cpu0
                signins[t]["rate"].append(args.signins / wall)
                signins[t]["cpu_ms"].append(cpu * 1000 / args.signins)

        lat, cli_ms = [], []
        a, b_cfg = nodes[2], nodes[1].config_path
        for _ in range(args.revocations):
            cookie = sign_in(bases[1])
            hdrs = [("Cookie", f"gatehouse_session={cookie}")]
            assert wait_for(lambda: RawConn(ports[2]).request("GET", "/", "b.test", hdrs
                                                               + [("Connection", "close")])
                            .status == 200, 2)
            with RawConn(ports[2]) as c:
                assert c.request("GET", "/", "b.test", hdrs).status == 200
                t0 = time.monotonic()
                p = subprocess.Popen([gatehouse_bin(), "sessions", "revoke", "-c", b_cfg,
                                      "--user", "alice"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                t_end = None
                while True:
                    if t_end is None and p.poll() is not None:
                        t_end = time.monotonic()
                    if c.request("GET", "/", "b.test", hdrs).status != 200:
                        break
                    if time.monotonic() - t0 > 5:
                        raise SystemExit("revocation did not arrive within 5 s")
                    time.sleep(0.002)
                lat.append((time.monotonic() - t0) * 1000)
                p.wait()
                cli_ms.append(((t_end or time.monotonic()) - t0) * 1000)

        med = lambda t, k: statistics.median(r[k] for r in runs[t])  # noqa: E731
        m = bench.machine()
        out = [
            f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python3 bench/fleet.py` "
            f"({args.rounds} interleaved rounds, wrk -t1 -c{args.connections} -d{args.duration}s, "
            f"medians; {args.revocations} revocations). Machine: {m['cpu']}, Linux {m['kernel']}; "
            "PostgreSQL 15 on the same machine (fsync off).",
            "",
            "| signed-in keep-alive | req/s | req per CPU-s | p50 | p99 |",
            "|---|---|---|---|---|",
        ]
        for t in targets:
            out.append(f"| state.{t} | {med(t, 'rps'):.0f} | {med(t, 'per_cpu'):.0f} | "
                       f"{med(t, 'p50'):.2f} ms | {med(t, 'p99'):.2f} ms |")
        ratio = med("postgres", "per_cpu") / med("sqlite", "per_cpu")
        out += [
            "",
            f"PostgreSQL / SQLite req per CPU-s: {ratio:.2f} (the request path reads the "
            "in-memory cache in both).",
            "",
            f"| OIDC sign-in, one at a time ({args.signins} per round) | sign-ins/s (whole "
            "flow) | callback p50 | callback p99 | Gatehouse CPU per sign-in |",
            "|---|---|---|---|---|",
        ]
        for t in targets:
            s = signins[t]
            out.append(f"| state.{t} | {statistics.median(s['rate']):.1f} | "
                       f"{statistics.median(s['cb']):.1f} ms | {pct(s['cb'], 99):.1f} ms | "
                       f"{statistics.median(s['cpu_ms']):.2f} ms |")
        out += [
            "",
            "The whole flow is mostly the identity provider (a Node.js server on the same "
            "machine); the callback includes the token exchange with it, and on PostgreSQL "
            "the fleet's login-state check (one INSERT on the node's one-time value thread) "
            "while the request waits off the event loop.",
            "",
            "| revocation across two nodes | median | p99 | max |",
            "|---|---|---|---|",
            f"| `sessions revoke` started → refused on the other node's open connection | "
            f"{statistics.median(lat):.0f} ms | {pct(lat, 99):.0f} ms | {max(lat):.0f} ms |",
            f"| of which the `sessions revoke` process (start, connect, commit, exit) | "
            f"{statistics.median(cli_ms):.0f} ms | {pct(cli_ms, 99):.0f} ms | "
            f"{max(cli_ms):.0f} ms |",
        ]
        report = "\n".join(out) + "\n"
        if args.write == "-":
            print(report)
        else:
            text = open(args.write).read()
            begin, end = "<!-- fleet:begin -->", "<!-- fleet:end -->"
            if begin in text:
                pre, rest = text.split(begin, 1)
                text = pre + begin + "\n" + report + end + rest.split(end, 1)[1]
            else:
                text += f"\n## Fleet (PostgreSQL)\n\n{begin}\n{report}{end}\n"
            with open(args.write, "w") as f:
                f.write(text)
            print(report)
    finally:
        for n in nodes:
            n.cleanup()
        idp.stop()
        backend.stop()
        pg.stop()


if __name__ == "__main__":
    main()
