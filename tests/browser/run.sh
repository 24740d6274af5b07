#!/bin/sh
# Browser test: signs in through the real pages with Debian's chromium driven
# by npm playwright-core; saves tests/out/me.png. Ends with
# "browser: N passed, N failed".
#   tests/browser/run.sh [GATEHOUSE_BINARY]   (else $GATEHOUSE_BIN, else build/gatehouse)
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
GATEHOUSE_BIN=${1:-${GATEHOUSE_BIN:-$root/build/gatehouse}}
export GATEHOUSE_BIN
exec python3 "$here/run.py"
