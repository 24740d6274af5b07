#!/usr/bin/env python3
"""Runs every tests/integration/test_*.py (unittest, Python stdlib only) against
the binary in $GATEHOUSE_BIN and ends with "integration: N passed, N failed".

--jobs N runs test modules in N parallel processes (each module's classes start
their own gatehouse and backends on free ports, so modules are independent),
the slowest modules first so that no long one is left alone at the end; the
default is 1, one process, in order. Either way the wall time of each module is
printed before the total (--times N: only the N slowest)."""
import argparse
import concurrent.futures
import fnmatch
import io
import os
import re
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

# Modules that take longest (normal and ASan builds, two at a time): started first
# with --jobs so that the pool ends evenly. Only an ordering hint: a module not
# named here is simply started after these.
SLOW_FIRST = [
    "test_signin", "test_fleet", "test_saml", "test_decision_log_deferred", "test_check",
    "test_decision_log_integrity", "test_signin_attacks", "test_tls_reload", "test_upstream",
    "test_signin_flows", "test_devices", "test_identity", "test_decision_log",
    "test_access_log", "test_lifecycle",
]


def modules(pattern):
    return sorted(f[:-3] for f in os.listdir(HERE)
                  if fnmatch.fnmatch(f, pattern) and f.endswith(".py"))


def counts(res):
    failed = len(res.failures) + len(res.errors) + len(res.unexpectedSuccesses)
    return res.testsRun - failed - len(res.skipped), failed


def run_serial(pattern):
    sys.path.insert(0, HERE)
    passed = failed = 0
    times = []
    for mod in modules(pattern):
        t0 = time.monotonic()
        try:
            suite = unittest.defaultTestLoader.loadTestsFromName(mod)
        except Exception as e:  # an import error counts as one failure
            print(f"ERROR: {mod} does not load: {e!r}")
            failed += 1
            continue
        res = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, failfast=False).run(suite)
        p, f = counts(res)
        passed += p
        failed += f
        times.append((time.monotonic() - t0, mod))
    return passed, failed, times


def run_module(mod):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "unittest", "-v", mod], cwd=HERE,
                       capture_output=True, text=True)
    took = time.monotonic() - t0
    out = r.stderr + r.stdout
    ran = re.search(r"^Ran (\d+) tests?", out, re.M)
    ran = int(ran.group(1)) if ran else 0
    n = {k: 0 for k in ("failures", "errors", "skipped", "unexpected successes")}
    last = re.search(r"^(OK|FAILED)(?: \((.*)\))?$", out, re.M)
    if last and last.group(2):
        for part in last.group(2).split(","):
            k, _, v = part.strip().partition("=")
            n[k] = int(v)
    failed = n["failures"] + n["errors"] + n["unexpected successes"]
    if not last or (r.returncode != 0 and failed == 0):
        failed += 1  # the module did not even finish: count it
    return mod, out, ran - failed - n["skipped"], failed, took


def run_parallel(pattern, jobs):
    mods = modules(pattern)
    rank = {m: i for i, m in enumerate(SLOW_FIRST)}
    order = sorted(mods, key=lambda m: rank.get(m, len(rank)))
    passed = failed = 0
    times = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
        futs = {ex.submit(run_module, m): m for m in order}
        for fut in concurrent.futures.as_completed(futs):
            mod, out, p, f, took = fut.result()
            sys.stdout.write(f"==== {mod} ({took:.1f}s)\n{out}\n")
            sys.stdout.flush()
            passed += max(p, 0)
            failed += f
            times.append((took, mod))
    return passed, failed, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", default="test_*.py")
    ap.add_argument("--jobs", "-j", type=int, default=1)
    ap.add_argument("--times", type=int, default=0,
                    help="print only the N slowest modules' times (0: all)")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    if args.jobs > 1:
        passed, failed, times = run_parallel(args.pattern, args.jobs)
    else:
        passed, failed, times = run_serial(args.pattern)
    times.sort(reverse=True)
    print("module times (wall, seconds):")
    for took, mod in times[:args.times or None]:
        print(f"  {took:7.1f}  {mod}")
    print(f"integration: {passed} passed, {failed} failed in {time.monotonic() - t0:.0f}s "
          f"({args.jobs} at a time)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
