#!/usr/bin/env python3
"""Runs every tests/integration/test_*.py (unittest, Python stdlib only) against
the binary in $GATEHOUSE_BIN and ends with "integration: N passed, N failed"."""
import argparse
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", default="test_*.py")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    suite = unittest.defaultTestLoader.discover(HERE, pattern=args.pattern, top_level_dir=HERE)
    res = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, failfast=False).run(suite)
    failed = len(res.failures) + len(res.errors) + len(res.unexpectedSuccesses)
    passed = res.testsRun - failed - len(res.skipped)
    print(f"integration: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
