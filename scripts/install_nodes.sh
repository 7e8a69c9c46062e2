#!/usr/bin/env bash
# Installs the blockchain nodes the test suite runs against:
#   - litecoind (Debian package; Litecoin Core 0.21, Bitcoin Core's RPC) for BTC/LTC in regtest
#   - anvil (npm @foundry-rs/anvil, binary in @foundry-rs/anvil-<platform>) for Ethereum/ERC-20
#   - solc-js (npm solc) to compile the ERC-20 test token
#   - axe-core (npm), which the checkout page's browser tests inject to check accessibility
# Idempotent and quick when everything is already there. Needs root (or sudo) for apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

die() {
  echo "install_nodes: ERROR: $*" >&2
  exit 1
}

apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "apt-get needs root (or sudo) to install $*"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@"; then
    echo "install_nodes: apt-get install failed; running apt-get update and retrying" >&2
    "${sudo[@]}" apt-get update -q || die "apt-get update failed"
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" \
      || die "apt-get install $* failed"
  fi
}

# --- litecoind ---------------------------------------------------------------------------
# Debian's /usr/bin/litecoind is a wrapper script that writes ~/.litecoin/litecoin.conf before
# exec'ing the daemon in /usr/lib/litecoin; the tests (testing/nodes.py) run the daemon directly.
litecoind_bin() {
  if [ -x /usr/lib/litecoin/litecoind ]; then
    echo /usr/lib/litecoin/litecoind
  else
    command -v litecoind || true
  fi
}
if [ -z "$(litecoind_bin)" ]; then
  echo "install_nodes: installing litecoind (Debian package)"
  apt_install litecoind
fi
LITECOIND="$(litecoind_bin)"
[ -n "$LITECOIND" ] || die "litecoind is not installed after apt-get install litecoind"

# --- node / npm packages -----------------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node is not installed (needed for anvil's npm package and solc-js)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"

anvil_pkg_dir() {
  # The platform package holding the real binary (see testing/nodes.py:anvil_binary()).
  local os arch
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) die "unsupported OS $(uname -s) for anvil" ;;
  esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "unsupported CPU $(uname -m) for anvil" ;;
  esac
  echo "node_modules/@foundry-rs/anvil-${os}-${arch}"
}
ANVIL_PKG="$(anvil_pkg_dir)"
ANVIL_BIN="$ANVIL_PKG/bin/anvil"

if [ ! -x "$ANVIL_BIN" ] || [ ! -f node_modules/solc/package.json ] \
  || [ ! -f node_modules/axe-core/axe.min.js ]; then
  echo "install_nodes: installing npm packages (anvil, solc, axe-core)"
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed"
  else
    npm install --no-audit --no-fund --loglevel=error || die "npm install failed"
  fi
fi

[ -x "$ANVIL_BIN" ] || die "anvil binary not found at $ROOT/$ANVIL_BIN after npm install"
[ -f node_modules/solc/package.json ] || die "solc-js not found in node_modules after npm install"
[ -f node_modules/axe-core/axe.min.js ] || die "axe-core (checkout accessibility tests) not found after npm install"

# --- verify --------------------------------------------------------------------------------
ltc_version="$("$LITECOIND" -version 2>&1 | head -n 1)" \
  || die "$LITECOIND -version failed: $ltc_version"
case "$ltc_version" in
  "Litecoin Core"*) ;;
  *) die "unexpected output from $LITECOIND -version: $ltc_version" ;;
esac
anvil_version="$("$ANVIL_BIN" --version 2>&1 | head -n 1)" \
  || die "$ANVIL_BIN --version failed: $anvil_version"
case "$anvil_version" in
  anvil*) ;;
  *) die "unexpected output from $ANVIL_BIN --version: $anvil_version" ;;
esac
solc_version="$(node -p 'require("solc/package.json").version' 2>&1)" \
  || die "solc-js is broken: $solc_version"
echo "install_nodes: $ltc_version ($LITECOIND)"
echo "install_nodes: $anvil_version ($ROOT/$ANVIL_BIN)"
echo "install_nodes: solc-js $solc_version"
