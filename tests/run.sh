#!/usr/bin/env bash
# Runs every suite and ends with one line totalling them: "N passed, N failed".
# Suites: unit + fuzz corpus replay (meson, normal build), integration (real
# binary, real sockets, Python stdlib), policy (gatehouse policy test), browser
# (Chromium via playwright-core), and unit + fuzz + integration again under
# AddressSanitizer + UBSan.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PASS=0
FAIL=0
SUMMARY=()

add() { # suite passed failed
    PASS=$((PASS + $2)); FAIL=$((FAIL + $3))
    SUMMARY+=("$(printf '%-22s %5d passed, %d failed' "$1" "$2" "$3")")
}

meson_suite() { # label builddir
    local out ok bad
    out=$(meson test -C "$2" --no-rebuild --print-errorlogs --suite unit --suite fuzz 2>&1)
    echo "$out" | grep -E '^ *[0-9]+/[0-9]+ ' || true
    ok=$(echo "$out" | awk '/^Ok:/{print $2}')
    bad=$(echo "$out" | awk '/^(Fail|Timeout|Unexpected Pass):/{s+=$NF} END{print s+0}')
    if [ -z "$ok" ]; then
        echo "$out" | tail -20
        ok=0; bad=$((bad + 1))
    fi
    add "$1" "$ok" "$bad"
}

py_suite() { # label binary [pattern]
    local out line
    out=$(mktemp)
    # Two modules at a time by default (about half the time of one after another
    # on a 2-core machine; the tests wait for conditions, not for fixed times, so
    # a loaded machine only makes them slower). IT_JOBS=1 runs them in order.
    GATEHOUSE_BIN="$2" python3 tests/integration/run.py -j "${IT_JOBS:-2}" --times 10 \
        ${3:+--pattern "$3"} 2>&1 | tee "$out" |
        grep -E '^(FAIL|ERROR|ok|skip|module times|integration:|  +[0-9.]+  test_)' || true
    line=$(grep -E '^integration: [0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
    if [ -z "$line" ]; then
        tail -30 "$out"
        add "$1" 0 1
    else
        add "$1" "$(echo "$line" | awk '{print $2}')" "$(echo "$line" | awk '{print $4}')"
        # A failure's traceback (and the servers' output the test printed with it),
        # which the filter above leaves out.
        if [ "$(echo "$line" | awk '{print $4}')" != 0 ]; then
            grep -A60 -E '^(FAIL|ERROR): ' "$out" | head -400
        fi
    fi
    rm -f "$out"
}

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0

echo "== unit + fuzz corpus (build)"
meson_suite "unit+fuzz" build
echo "== integration (build)"
py_suite "integration" "$ROOT/build/gatehouse"
if [ -x tests/policy/run.sh ]; then
    echo "== policy tests"
    out=$(bash tests/policy/run.sh "$ROOT/build/gatehouse" 2>&1); echo "$out" | tail -5
    line=$(echo "$out" | grep -E '^policy: [0-9]+ passed, [0-9]+ failed' | tail -1)
    if [ -n "$line" ]; then add "policy" "$(echo "$line" | awk '{print $2}')" "$(echo "$line" | awk '{print $4}')"; else add "policy" 0 1; fi
fi
if [ -x tests/browser/run.sh ]; then
    echo "== browser"
    out=$(bash tests/browser/run.sh "$ROOT/build/gatehouse" 2>&1); echo "$out" | tail -5
    line=$(echo "$out" | grep -E '^browser: [0-9]+ passed, [0-9]+ failed' | tail -1)
    if [ -n "$line" ]; then add "browser" "$(echo "$line" | awk '{print $2}')" "$(echo "$line" | awk '{print $4}')"; else add "browser" 0 1; fi
fi
echo "== unit + fuzz corpus (ASan + UBSan)"
meson_suite "unit+fuzz (asan)" build-san
echo "== integration (ASan + UBSan)"
ASAN_OPTIONS=detect_leaks=0 py_suite "integration (asan)" "$ROOT/build-san/gatehouse"

echo
for s in "${SUMMARY[@]}"; do echo "$s"; done
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
