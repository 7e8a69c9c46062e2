#!/usr/bin/env bash
# Installs one Debian package the tests or benches need, if its binary is missing, and prints the
# binary's version: scripts/install_debian_tool.sh <package> <binary path>
#   chromium /usr/bin/chromium  the browser the checkout end-to-end tests drive
#                               (Playwright's own `playwright install` cannot download browsers here)
#   wrk /usr/bin/wrk            the HTTP load generator of bench/api_throughput.py
#   prometheus /usr/bin/promtool  promtool checks deploy/prometheus/alerts.yml (the server it
#                               also installs is not started by the tests)
# Idempotent and quick when the binary is already there. Needs root (or sudo) for apt-get.
set -euo pipefail

package="${1:?usage: install_debian_tool.sh <package> <binary path>}"
binary="${2:?usage: install_debian_tool.sh <package> <binary path>}"
say() { echo "install_debian_tool: $*"; }
version() {
  # Some print their version on stdout (chromium, whose wrapper also warns on stderr), some on
  # stderr (wrk).
  local out
  out="$("$binary" --version 2>/dev/null | head -n 1 || true)"
  [ -n "$out" ] || out="$("$binary" --version 2>&1 | head -n 1 || true)"
  echo "$out"
}

if [ -x "$binary" ]; then
  say "$(version) ($binary)"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { say "ERROR: apt-get needs root (or sudo) to install $package" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
say "installing $package (Debian package)"
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "$package"; then
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "$package"
fi
[ -x "$binary" ] || { say "ERROR: $binary missing after apt-get install $package" >&2; exit 1; }
say "$(version) ($binary)"
