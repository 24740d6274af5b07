#!/usr/bin/env bash
# Policy evaluator microbenchmark (hooked into `make bench`): builds the bench
# program in the given build dir and prints the median ns per decision on the
# realistic 100-rule policy in this folder, measured in thread CPU time so a busy
# shared machine does not distort it (wall time is printed too). Target: median <= 1000 ns.
# Usage: bench/policy/run.sh [builddir]   (default: build)
set -eu
cd "$(dirname "$0")/../.."
b=${1:-build}
ninja -C "$b" tests/unit/policy/bench_policy_eval >/dev/null
out=$("$b/tests/unit/policy/bench_policy_eval" bench/policy/policy-100.yaml "${RUNS:-101}" "${PER:-20000}")
echo "$out"
median=$(echo "$out" | sed -n 's/.*: median \([0-9]*\) ns\/decision CPU time.*/\1/p')
if [ "$median" -le 1000 ]; then
    echo "policy eval: PASS (median ${median} ns <= 1000 ns)"
else
    echo "policy eval: FAIL (median ${median} ns > 1000 ns)"
    exit 1
fi
