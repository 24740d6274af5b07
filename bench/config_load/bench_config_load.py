#!/usr/bin/env python3
"""Configuration loading is linear in the number of routes (issue 11): loads
configurations of 1,000, 5,000 and 10,000 routes with `gatehouse check` and
reports the CPU time (utime + stime of the child) per route, in interleaved
rounds so that other load on the machine hits every size alike. Linear loading
keeps the time per route flat; a lookup per route that scans every route would
make it grow ten times from 1k to 10k routes.

    python3 bench/config_load/bench_config_load.py [--rounds 5] [--sizes 1000,5000,10000]
                                                   [--callgrind]

--callgrind also counts the instructions of one load of each size under
valgrind (steady on a loaded machine; slow: about a minute for 10k routes).
Half the routes are public, a quarter let any signed-in user in and a quarter
use one of two policy files, so every way a route gets its policy is loaded.
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_config(d, n):
    path = os.path.join(d, f"g{n}.yaml")
    with open(path, "w") as f:
        f.write("listen: [{address: 127.0.0.1:8080}]\n"
                "state: {sqlite: gh.db}\n"
                "identity_providers:\n"
                "  - {id: corp, type: oidc, issuer: 'https://idp.example.com',\n"
                "     client_id: gh, client_secret: s3cret}\n"
                "routes:\n")
        for i in range(n):
            kind = ("public: true" if i % 2 == 0 else
                    "allow_any_authenticated: true" if i % 4 == 1 else
                    f"policy: p{i % 8 // 4}.yaml")
            f.write(f"  - {{name: r{i}, match: {{host: h{i}.example.com, path_prefix: /{i}}}, "
                    f"{kind}, upstream: {{servers: [\"http://127.0.0.1:{9000 + i % 1000}\"]}}}}\n")
    return path


def cpu_of(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[:2000]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def instructions(binary, cfg, d):
    out = os.path.join(d, "callgrind.out")
    p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        binary, "check", "-c", cfg], capture_output=True, text=True)
    m = re.search(r"Collected : (\d+)", p.stderr)
    os.unlink(out)
    return int(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--gatehouse", default=os.environ.get("GATEHOUSE_BIN",
                                                          os.path.join(ROOT, "build", "gatehouse")))
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        for k in (0, 1):
            with open(os.path.join(d, f"p{k}.yaml"), "w") as f:
                f.write(f"rules:\n  - id: eng{k}\n    effect: allow\n    when: {{groups: eng}}\n")
        cfgs = {n: write_config(d, n) for n in sizes}
        times = {n: [] for n in sizes}
        for _ in range(a.rounds):
            for n in sizes:  # interleaved: each round loads every size once
                times[n].append(cpu_of([a.gatehouse, "check", "-c", cfgs[n]]))
        base = sizes[0]
        base_per = statistics.median(times[base]) / base
        print(f"gatehouse check, CPU time (utime + stime), median of {a.rounds} interleaved rounds")
        print(f"{'routes':>8} {'CPU s':>8} {'us/route':>9} {'vs ' + str(base):>8}")
        for n in sizes:
            med = statistics.median(times[n])
            print(f"{n:>8} {med:>8.3f} {med / n * 1e6:>9.1f} {med / n / base_per:>8.2f}")
        if a.callgrind:
            print("instructions (callgrind, one load each)")
            first = None
            for n in sizes:
                ins = instructions(a.gatehouse, cfgs[n], d)
                if ins is None:
                    print(f"{n:>8} (valgrind gave no count)")
                    continue
                first = first or ins / n
                print(f"{n:>8} {ins:>14,} {ins / n:>10,.0f}/route {ins / n / first:>6.2f}")


if __name__ == "__main__":
    main()
