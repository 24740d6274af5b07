#!/usr/bin/env bash
# Runs every policy test file under policies/ with the given gatehouse binary and
# ends with the line "policy: N passed, N failed" (test cases), which tests/run.sh
# adds to the totals. Usage: tests/policy/run.sh path/to/gatehouse
set -u
cd "$(dirname "$0")/../.."
bin=${1:-build/gatehouse}
if [ ! -x "$bin" ]; then
    echo "tests/policy/run.sh: no gatehouse binary at $bin"
    echo "policy: 0 passed, 1 failed"
    exit 1
fi
out=$("$bin" policy test policies/ 2>&1)
rc=$?
echo "$out"
line=$(echo "$out" | grep -E '^policy: [0-9]+ passed, [0-9]+ failed$' | tail -1)
if [ -z "$line" ]; then
    echo "policy: 0 passed, 1 failed"
    exit 1
fi
exit $rc
