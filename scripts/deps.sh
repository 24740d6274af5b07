#!/usr/bin/env bash
# Installs everything Gatehouse needs to build, test and benchmark on Debian 12.
# Idempotent: packages already present are skipped; npm uses the committed lock file.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  build-essential meson ninja-build pkg-config clang
  libssl-dev openssl libev-dev libyaml-dev libsqlite3-dev sqlite3
  libcurl4-openssl-dev libcjose-dev libjansson-dev liboauth2-dev
  liblasso3-dev libcmocka-dev node-llhttp
  python3 curl ca-certificates
  nodejs npm chromium
  wrk nginx-light haproxy apache2 libapache2-mod-auth-openidc libapache2-mod-auth-mellon
)

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
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's nginx/haproxy/apache packages start system services; the
  # benchmarks run their own instances on other ports, so stop these.
  for s in nginx haproxy apache2; do
    $SUDO systemctl stop "$s" 2>/dev/null || $SUDO service "$s" stop 2>/dev/null || true
  done
fi

if [ -f tests/package.json ]; then
  if [ ! -d tests/node_modules ] || [ tests/package-lock.json -nt tests/node_modules/.stamp ]; then
    echo "deps: npm ci (tests/)"
    (cd tests && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.stamp)
  fi
fi
