#!/usr/bin/env python3
"""Runs every tests/integration/test_*.py (unittest, Python stdlib only) against
the binary in $GATEHOUSE_BIN and ends with "integration: N passed, N failed".

--jobs N runs test modules in N parallel processes (each module's classes start
their own gatehouse and backends on free ports, so modules are independent); the
default is 1, one process, in order."""
import argparse
import concurrent.futures
import fnmatch
import os
import re
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_serial(pattern):
    sys.path.insert(0, HERE)
    suite = unittest.defaultTestLoader.discover(HERE, pattern=pattern, top_level_dir=HERE)
    res = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, failfast=False).run(suite)
    failed = len(res.failures) + len(res.errors) + len(res.unexpectedSuccesses)
    passed = res.testsRun - failed - len(res.skipped)
    return passed, failed


def run_module(mod):
    r = subprocess.run([sys.executable, "-m", "unittest", "-v", mod], cwd=HERE,
                       capture_output=True, text=True)
    out = r.stderr + r.stdout
    ran = re.search(r"^Ran (\d+) tests?", out, re.M)
    ran = int(ran.group(1)) if ran else 0
    counts = {k: 0 for k in ("failures", "errors", "skipped", "unexpected successes")}
    last = re.search(r"^(OK|FAILED)(?: \((.*)\))?$", out, re.M)
    if last and last.group(2):
        for part in last.group(2).split(","):
            k, _, v = part.strip().partition("=")
            counts[k] = int(v)
    failed = counts["failures"] + counts["errors"] + counts["unexpected successes"]
    if not last or (r.returncode != 0 and failed == 0):
        failed += 1  # the module did not even finish: count it
    return mod, out, ran - failed - counts["skipped"], failed


def run_parallel(pattern, jobs):
    mods = sorted(f[:-3] for f in os.listdir(HERE)
                  if fnmatch.fnmatch(f, pattern) and f.endswith(".py"))
    passed = failed = 0
    with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
        for mod, out, p, f in ex.map(run_module, mods):
            sys.stdout.write(f"==== {mod}\n{out}\n")
            sys.stdout.flush()
            passed += max(p, 0)
            failed += f
    return passed, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", default="test_*.py")
    ap.add_argument("--jobs", "-j", type=int, default=1)
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    if args.jobs > 1:
        passed, failed = run_parallel(args.pattern, args.jobs)
    else:
        passed, failed = run_serial(args.pattern)
    print(f"integration: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
