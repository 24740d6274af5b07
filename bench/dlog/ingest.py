#!/usr/bin/env python3
"""How fast `index: deferred` catches up: the CPU time `gatehouse audit query` spends
bringing SQLite up to date with a JSON-lines decision log of N records.

The log is made once by the writer itself (bench_dlog ... batch-deferred: realistic
records, node "bench-node"). Each round copies it and its empty index to a fresh
directory, runs `audit query -c CFG --limit 1` (which ingests every line first), then
runs it again on the filled index: the difference is the ingest. CPU time is the
child's user + system time (wait4), so other load on the machine does not count.
Several binaries are interleaved round by round (before/after); medians reported.

Usage: bench/dlog/ingest.py [--n N] [--rounds R] [--builddir build] GATEHOUSE [GATEHOUSE...]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def cpu_of(argv):
    """Runs argv, returns its CPU seconds (user + system) and wall seconds."""
    import time
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("%s failed:\n%s" % (" ".join(argv), err))
    return ru.ru_utime + ru.ru_stime, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--builddir", default="build")
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="gh-ingest-")
    try:
        src = os.path.join(tmp, "log")
        os.mkdir(src)
        bench = os.path.join(a.builddir, "tests", "unit", "policy", "bench_dlog")
        subprocess.run([bench, src, str(a.n), "0", "batch-deferred"], check=True,
                       stdout=subprocess.DEVNULL)
        run = os.path.join(tmp, "run")
        cfg = os.path.join(tmp, "gatehouse.yaml")
        with open(cfg, "w") as f:
            f.write("listen: [{address: \"127.0.0.1:1\"}]\n"
                    "state: {sqlite: %s/state.db, node: bench-node}\n"
                    "decision_log: {file: %s/decisions.jsonl, index: deferred, retain: 0}\n"
                    "routes:\n  - {name: wiki, match: {path_prefix: /}, public: true,\n"
                    "     upstream: {servers: [\"http://127.0.0.1:9\"]}}\n" % (run, run))
        size = os.path.getsize(os.path.join(src, "decisions.jsonl"))
        res = {b: [] for b in a.bins}
        for _ in range(a.rounds):
            for b in a.bins:
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(src, run)
                argv = [b, "audit", "query", "-c", cfg, "--limit", "1"]
                cold, wall = cpu_of(argv)
                warm, _ = cpu_of(argv)
                res[b].append((cold - warm, cold, wall))
        print("%d records, %.0f bytes/line, %d rounds interleaved, medians:" %
              (a.n, size / a.n, a.rounds))
        for b in a.bins:
            net = statistics.median(r[0] for r in res[b])
            cold = statistics.median(r[1] for r in res[b])
            wall = statistics.median(r[2] for r in res[b])
            print("  %s: ingest %.2f s CPU = %.2f us/line, %.0f lines/s "
                  "(whole first query %.2f s CPU, %.2f s wall)" %
                  (b, net, net * 1e6 / a.n, a.n / net if net > 0 else 0, cold, wall))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
