#!/bin/sh
# Browser test: signs in through the real pages with Debian's chromium driven
# by npm playwright-core; saves tests/out/me.png. Ends with
# "browser: N passed, N failed". GATEHOUSE_BIN defaults to build/gatehouse.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${GATEHOUSE_BIN:=$root/build/gatehouse}"
export GATEHOUSE_BIN
exec python3 "$here/run.py"
