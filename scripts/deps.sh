#!/usr/bin/env bash
# Installs what Gatehouse needs on Debian 12, by profile (each includes the one before):
#   build  compiler, meson, and the libraries the binary links
#   run    + what `make run` needs for the demo (Python app, Node.js demo IdP)
#   test   + test-only tools (cmocka, clang for the fuzz targets, clang-format, Chromium,
#          curl, sqlite3)
#   bench  + the benchmark peers (wrk, nginx, HAProxy, Apache with mod_auth_openidc)
# Usage: deps.sh [build|run|test|bench]          install what is missing (default: build)
#        deps.sh --print [build|run|test|bench]  print the profile's packages, one a line
# Idempotent: packages already present are skipped; npm uses the committed lock file.
set -euo pipefail
cd "$(dirname "$0")/.."

# The libraries the binary links (meson.build): OpenSSL, libev, libyaml, SQLite,
# libcurl, cjose, jansson, PCRE2, lasso, libpq
# (state.postgres); llhttp is compiled from node-llhttp's sources.
BUILD=(
  build-essential meson ninja-build pkg-config
  libssl-dev openssl libev-dev libyaml-dev libsqlite3-dev
  libpq-dev libcurl4-openssl-dev libcjose-dev libjansson-dev node-llhttp libpcre2-dev
  liblasso3-dev
)
# The demo: demo/app.py and the demo IdP (tests/idp, npm oidc-provider).
RUN=(python3 ca-certificates nodejs npm)
# postgresql-15: the fleet tests start their own server (initdb, pg_ctl).
TEST=(libcmocka-dev clang clang-format chromium curl sqlite3 postgresql-15)
BENCH=(wrk nginx-light haproxy apache2 libapache2-mod-auth-openidc libapache2-mod-auth-mellon)

print=false
if [ "${1:-}" = "--print" ]; then
  print=true
  shift
fi
profile=${1:-build}
case "$profile" in
  build) PKGS=("${BUILD[@]}") ;;
  run) PKGS=("${BUILD[@]}" "${RUN[@]}") ;;
  test) PKGS=("${BUILD[@]}" "${RUN[@]}" "${TEST[@]}") ;;
  bench) PKGS=("${BUILD[@]}" "${RUN[@]}" "${BENCH[@]}") ;;
  *)
    echo "usage: deps.sh [--print] [build|run|test|bench]" >&2
    exit 2
    ;;
esac
if $print; then
  printf '%s\n' "${PKGS[@]}"
  exit 0
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    # nodejs/npm may come from elsewhere on a machine; accept a working binary.
    case "$p" in
      nodejs) command -v node >/dev/null && continue ;;
      npm) command -v npm >/dev/null && continue ;;
    esac
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps ($profile): installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$profile" = bench ]; then
    # Debian's nginx/haproxy/apache packages start system services; the
    # benchmarks run their own instances on other ports, so stop these.
    for s in nginx haproxy apache2; do
      $SUDO systemctl stop "$s" 2>/dev/null || $SUDO service "$s" stop 2>/dev/null || true
    done
  fi
fi

# The demo IdP and the browser test need tests/node_modules; a bare build does not.
if [ "$profile" != build ] && [ -f tests/package.json ]; then
  if [ ! -d tests/node_modules ] || [ tests/package-lock.json -nt tests/node_modules/.stamp ]; then
    echo "deps: npm ci (tests/)"
    (cd tests && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.stamp)
  fi
fi
