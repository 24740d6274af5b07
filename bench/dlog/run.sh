#!/usr/bin/env bash
# Decision log microbenchmark (hooked into `make bench`): pushes records through
# the real writer into real SQLite + JSON-lines files (bench/dlog/bench_dlog.c)
# and reports CPU microseconds per record, the writer thread included, as the
# median of interleaved rounds: batch mode as fast as the queue takes records,
# batch mode at 20000 records/s (the batch sizes a busy proxy makes), and strict
# mode (one appender waiting for each commit). Rewrites the dlog block of
# bench/README.md (WRITE=0 leaves it alone).
# Usage: bench/dlog/run.sh [builddir]   (ROUNDS, N change the defaults)
set -eu
cd "$(dirname "$0")/../.."
b=${1:-build}
ninja -C "$b" tests/unit/policy/bench_dlog >/dev/null
bin="$b/tests/unit/policy/bench_dlog"
rounds=${ROUNDS:-5}
n=${N:-200000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl genpkey -algorithm ed25519 -out "$tmp/ckpt.pem" 2>/dev/null
run() { # mode n rate -> "total thread"
    rm -rf "$tmp/d" && mkdir "$tmp/d"
    "$bin" "$tmp/d" "$2" "$3" "$1" "$tmp/ckpt.pem" |
        sed -n 's/.*: \([0-9.]*\) us CPU\/record.*, \([0-9.]*\) us\/record appending.*/\1 \2/p'
}
: >"$tmp/fast"; : >"$tmp/paced"; : >"$tmp/strict"
: >"$tmp/dfast"; : >"$tmp/dpaced"; : >"$tmp/dstrict"
for _ in $(seq "$rounds"); do
    run batch "$n" 0 >>"$tmp/fast"
    run batch-deferred "$n" 0 >>"$tmp/dfast"
    run batch "$((n / 2))" 20000 >>"$tmp/paced"
    run batch-deferred "$((n / 2))" 20000 >>"$tmp/dpaced"
    run strict 5000 0 >>"$tmp/strict"
    run strict-deferred 5000 0 >>"$tmp/dstrict"
done
med() { sort -n -k"$2" "$1" | awk -v k="$2" '{v[NR]=$k} END {print v[int((NR+1)/2)]}'; }
# index: deferred moves SQLite to the readers: how fast they catch up.
ingest=$(python3 bench/dlog/ingest.py --rounds 3 --builddir "$b" "$b/gatehouse" | tail -1 |
    sed 's/^ *[^:]*: //')
load=$(cut -d' ' -f1 /proc/loadavg)
block=$(cat <<MD
Run: $(date -u '+%Y-%m-%d %H:%M UTC'), \`bash bench/dlog/run.sh\` ($rounds interleaved rounds, medians; load average (1 min) at the end: $load on $(nproc) cores). CPU µs per record from getrusage (the whole process: the appending thread, which fills the record as a worker does and queues it, plus the writer thread: chain, SQLite, JSON lines, checkpoints every 1000 records); "appending" is the appending thread alone (CLOCK_THREAD_CPUTIME_ID).

| mode | records | CPU µs/record (writer included) | appending thread µs/record |
|---|---:|---:|---:|
| batch, as fast as queued | $n | $(med "$tmp/fast" 1) | $(med "$tmp/fast" 2) |
| batch, 20000 records/s | $((n / 2)) | $(med "$tmp/paced" 1) | $(med "$tmp/paced" 2) |
| strict, one appender waiting for each commit | 5000 | $(med "$tmp/strict" 1) | $(med "$tmp/strict" 2) |
| \`index: deferred\`, batch, as fast as queued | $n | $(med "$tmp/dfast" 1) | $(med "$tmp/dfast" 2) |
| \`index: deferred\`, batch, 20000 records/s | $((n / 2)) | $(med "$tmp/dpaced" 1) | $(med "$tmp/dpaced" 2) |
| \`index: deferred\`, strict, one appender waiting for each commit | 5000 | $(med "$tmp/dstrict" 1) | $(med "$tmp/dstrict" 2) |

\`index: deferred\` leaves SQLite to the readers: the cost of indexing moves to \`audit query\`/\`verify\` (not counted above). How fast a reader catches up (\`bench/dlog/ingest.py\`, 200000 records, 3 rounds): $ingest.
MD
)
echo "$block"
if [ "${WRITE:-1}" = 1 ]; then
    python3 - "$block" <<'PY'
import re, sys
p = "bench/README.md"
t = open(p).read()
new = "<!-- dlog:begin -->\n" + sys.argv[1] + "\n<!-- dlog:end -->"
t = re.sub(r"<!-- dlog:begin -->.*?<!-- dlog:end -->", lambda m: new, t, flags=re.S)
open(p, "w").write(t)
PY
fi
