#!/usr/bin/env bash
# End-to-end policy benchmark (hooked into `make bench`): wrk through Gatehouse
# with alice's session cookie on a route guarded by the realistic 100-rule policy
# (bench/policy/policy-100.yaml) with the decision log on, versus a `public: true`
# route to the same backend; decision_log.sync batch and strict. Prints a
# markdown table and writes it into bench/README.md ("Policy and decision log").
# Target (issue 4): policy route >= 85% of the public route's throughput in batch.
# Options go to bench_policy_e2e.py (--rounds, --duration, --write -).
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in wrk nginx node; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
BIN=${GATEHOUSE_BIN:-$PWD/build/gatehouse}
[ -x "$BIN" ] || { echo "bench: $BIN not built (make build)" >&2; exit 1; }
exec python3 bench/policy_e2e/bench_policy_e2e.py --gatehouse "$BIN" "$@"
