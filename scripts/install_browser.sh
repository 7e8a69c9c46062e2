#!/usr/bin/env bash
# Installs the browser the end-to-end tests drive: Debian's chromium (REFERENCE.md §8; Playwright's
# own `playwright install` cannot download browsers here). The Python driver, playwright, comes
# from requirements-dev.txt. Idempotent and quick when chromium is already there.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  echo "install_browser: $("$CHROMIUM" --version 2>/dev/null | head -n 1) ($CHROMIUM)"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_browser: ERROR: apt-get needs root (or sudo) to install chromium" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "install_browser: installing chromium (Debian package)"
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium; then
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium
fi
[ -x "$CHROMIUM" ] || { echo "install_browser: ERROR: $CHROMIUM missing after apt-get install chromium" >&2; exit 1; }
echo "install_browser: $("$CHROMIUM" --version 2>/dev/null | head -n 1) ($CHROMIUM)"
