#!/usr/bin/env bash
# `make run`: the demo app (demo/app.py) behind Gatehouse (demo/gatehouse.yaml).
# Prints the URLs to open; Ctrl-C stops both. State and logs: var/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${GATEHOUSE_BIN:-$ROOT/build/gatehouse}
CONF=$ROOT/demo/gatehouse.yaml
STATE=$ROOT/var/demo
APP_PORT=9001
IDP_PORT=9400
PORTS="8080 8443 9901 $APP_PORT $IDP_PORT"

[ -x "$BIN" ] || { echo "demo: $BIN is not built (run: make build)" >&2; exit 1; }
mkdir -p "$STATE/tls"

for p in $PORTS; do
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.3); sys.exit(0 if s.connect_ex(('127.0.0.1', $p)) == 0 else 1)"; then
        echo "demo: port $p on 127.0.0.1 is already in use (another 'make run'?)" >&2
        exit 1
    fi
done

# A self-signed certificate for the HTTPS listener, made once.
if [ ! -s "$STATE/tls/server.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
        -keyout "$STATE/tls/server.key" -out "$STATE/tls/server.crt" -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi

"$BIN" check -c "$CONF" >/dev/null || { "$BIN" check -c "$CONF"; exit 1; }

PIDS=()
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "demo: stopping"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM EXIT

port_open() {
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.3); sys.exit(0 if s.connect_ex(('127.0.0.1', $1)) == 0 else 1)"
}
wait_port() {
    for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.1; done
    echo "demo: nothing listens on port $1 (see $STATE/*.log)" >&2
    return 1
}

python3 "$ROOT/demo/app.py" --port "$APP_PORT" >"$STATE/app.log" 2>&1 &
PIDS+=($!)
wait_port "$APP_PORT"

# The demo identity provider (npm oidc-provider, OpenID Certified) with two
# demo users; their passwords are printed below.
( cd "$ROOT/tests" && exec node idp/oidc_idp.mjs --port "$IDP_PORT" \
    --client "$ROOT/demo/idp-clients.json" ) >"$STATE/idp.log" 2>&1 &
PIDS+=($!)
wait_port "$IDP_PORT"
for _ in $(seq 50); do grep -q '^GH_IDP_READY' "$STATE/idp.log" && break; sleep 0.1; done

# Its log goes to the terminal and to a file; $! stays Gatehouse's own pid.
"$BIN" serve -c "$CONF" > >(tee "$STATE/gatehouse.log") 2>&1 &
PIDS+=($!)

wait_port 8080

cat <<MSG

  Gatehouse demo is running.

    open      http://127.0.0.1:8080/          (the demo app, through Gatehouse)
    or        https://localhost:8443/         (self-signed certificate: $STATE/tls/server.crt)
    sign in   as alice (groups eng, admins) or bob (sales); passwords:
$(grep -E '^  user ' "$STATE/idp.log" | sed 's/^/            /')
    try       http://127.0.0.1:8080/admin     (bob is denied, alice gets in)
              http://127.0.0.1:8080/.gatehouse/me   http://127.0.0.1:8080/.gatehouse/logout
              http://127.0.0.1:8080/public/   (no sign-in, still in the decision log)
    admin     http://127.0.0.1:9901/metrics   /healthz   /readyz
    logs      $STATE/access.jsonl  $STATE/decisions.jsonl  $STATE/gatehouse.log
    audit     build/gatehouse audit query -c demo/gatehouse.yaml    (and: audit verify)

  Press Ctrl-C to stop.

MSG
wait
