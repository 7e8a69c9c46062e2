#!/usr/bin/env bash
# Installs the HTTP load generator of the API throughput bench (bench/api_throughput.py): Debian's
# wrk (C, event loop, Lua scripting: a unique Idempotency-Key and order_id per request, and a small
# CPU footprint next to the server on a 2-core machine). Idempotent and quick when wrk is there.
set -euo pipefail

WRK="${WRK:-/usr/bin/wrk}"
if [ -x "$WRK" ]; then
  echo "install_wrk: $("$WRK" --version 2>&1 | head -n 1) ($WRK)"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_wrk: ERROR: apt-get needs root (or sudo) to install wrk" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "install_wrk: installing wrk (Debian package)"
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends wrk; then
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends wrk
fi
[ -x "$WRK" ] || { echo "install_wrk: ERROR: $WRK missing after apt-get install wrk" >&2; exit 1; }
echo "install_wrk: $("$WRK" --version 2>&1 | head -n 1) ($WRK)"
