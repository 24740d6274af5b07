#!/usr/bin/env bash
# `make bench`: wrk against the backend directly, nginx, HAProxy and Gatehouse
# (one worker each, interleaved rounds), then RSS with 10,000 idle keep-alive
# connections. Results are printed and written into bench/README.md.
# Options are passed to bench/bench.py (--rounds, --duration, --only, --write -).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk nginx haproxy openssl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
BIN=${GATEHOUSE_BIN:-$PWD/build/gatehouse}
[ -x "$BIN" ] || { echo "bench: $BIN not built (make build)" >&2; exit 1; }
# 10,000 idle connections need more descriptors than the usual default.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 12000 ]; then
    echo "bench: ulimit -n is $(ulimit -n); the idle-connection test needs about 11000" >&2
fi
exec python3 bench/bench.py --gatehouse "$BIN" "$@"
