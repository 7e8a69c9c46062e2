"""Real blockchain nodes for tests: Litecoin Core in regtest (Bitcoin Core's JSON-RPC) and anvil
(Ethereum JSON-RPC, chain id 31337).

Install them with ``bash scripts/install_nodes.sh`` (Debian ``litecoind``; npm ``@foundry-rs/anvil``
and ``solc`` into ./node_modules). Each controller starts its own process on free loopback ports
in a temporary directory, in its own session; fixtures stop it at teardown and an ``atexit`` hook
(plus, on Linux, a parent-death signal) makes sure no node outlives the test run.

Fixtures: ``litecoind`` (session), ``litecoind_factory``, ``anvil``, ``anvil_factory``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO_ROOT / "node_modules"
CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
INSTALL_HINT = "run `bash scripts/install_nodes.sh` first"

# keccak256("Transfer(address,address,uint256)"), the ERC-20 Transfer event's topic0.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
SELECTOR_TRANSFER = "a9059cbb"  # transfer(address,uint256)
SELECTOR_BALANCE_OF = "70a08231"  # balanceOf(address)
SELECTOR_DECIMALS = "313ce567"  # decimals()

LITOSHI = Decimal("0.00000001")


class NodeError(RuntimeError):
    """A node could not be started, or misbehaved."""


class RPCError(NodeError):
    """A JSON-RPC call answered with an error object."""

    def __init__(self, method: str, code: int | None, message: str) -> None:
        super().__init__(f"{method}: [{code}] {message}")
        self.method = method
        self.code = code
        self.message = message


# --- process bookkeeping -------------------------------------------------------------------

_LIVE: set[_Node] = set()


@atexit.register
def _kill_leftovers() -> None:
    for node in list(_LIVE):
        with contextlib.suppress(Exception):
            node.kill()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; a race is retried by callers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(cmd: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # On Linux the child also gets SIGKILL when this process dies (even by SIGKILL), so a killed
    # pytest leaves no node behind. setpriv execs the node, so the pid is the node's own.
    # Start nodes from the main thread: the signal follows the *thread* that spawned the child.
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv:
        cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Node:
    """Process lifecycle shared by the controllers: a temp dir, a process, kill and cleanup."""

    name = "node"
    process: subprocess.Popen | None = None
    workdir: Path | None = None
    _own_workdir = False

    def _make_workdir(self, given: Path | None) -> Path:
        if given is not None:
            given.mkdir(parents=True, exist_ok=True)
            return given
        self._own_workdir = True
        return Path(tempfile.mkdtemp(prefix=f"cryptopay-{self.name}-"))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _started(self) -> subprocess.Popen:
        """The node's process, once ``start`` has spawned it."""
        assert self.process is not None, f"{self.name} not started"
        return self.process

    def _signal(self, sig: int) -> None:
        if self.is_running():
            # The node leads its own session; signal its group (it and anything it spawned).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._started().pid, sig)

    def kill(self, *, keep_data: bool = False) -> None:
        """SIGKILL the node and wait for it; the port refuses connections afterwards.

        ``keep_data`` keeps its data directory for a ``restart`` (a crash, not a teardown)."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        if not keep_data:
            self._closed()

    def _closed(self) -> None:
        _LIVE.discard(self)
        client = getattr(self, "_http", None)
        if client is not None:
            client.close()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:  # overridden where a node has a graceful stop
        self.kill()


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")  # Bitcoin Core takes amounts as strings, exactly
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class _JsonRpc:
    def __init__(
        self,
        client: httpx.Client,
        url: str,
        *,
        version: str,
        parse_float: Callable[[str], Any] = float,
    ) -> None:
        self._client = client
        self._url = url
        self._version = version
        self._parse_float = parse_float
        self._ids = itertools.count(1)

    def __call__(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        payload = {"jsonrpc": self._version, "id": next(self._ids), "method": method}
        payload["params"] = list(params)
        body = json.dumps(payload, default=_json_default)
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        response = self._client.post(
            self._url, content=body, headers={"content-type": "application/json"}, **kwargs
        )
        if response.status_code == 401:
            raise RPCError(method, 401, "unauthorized")
        try:
            data = json.loads(response.content, parse_float=self._parse_float)
        except ValueError:
            raise RPCError(
                method, response.status_code, response.text[:200] or "empty response"
            ) from None
        error = data.get("error")
        if error:
            raise RPCError(method, error.get("code"), error.get("message", str(error)))
        return data.get("result")


# --- Litecoin Core (Bitcoin Core RPC) ---------------------------------------------------------


def litecoind_binary() -> str | None:
    """The litecoind executable. Debian's ``/usr/bin/litecoind`` is a shell wrapper that writes
    ``~/.litecoin/litecoin.conf`` and ``DB_CONFIG`` before exec'ing the real daemon in
    ``/usr/lib/litecoin``: run the daemon directly. ``CRYPTOPAY_LITECOIND_BIN`` overrides."""
    override = os.environ.get("CRYPTOPAY_LITECOIND_BIN")
    if override:
        return override
    debian = Path("/usr/lib/litecoin/litecoind")
    if debian.is_file() and os.access(debian, os.X_OK):
        return str(debian)
    return shutil.which("litecoind")


class Litecoind(_Node):
    """Litecoin Core 0.21 in regtest with a funded legacy wallet.

    Amounts come back as ``Decimal`` (RPC floats are parsed exactly); pass ``Decimal`` amounts.
    ``rpc`` talks to the wallet endpoint (``/wallet/<wallet>``), which also serves every node
    RPC. Regtest addresses are bech32 with HRP ``rltc``.
    """

    name = "litecoind"
    WALLET = "miner"

    def __init__(
        self,
        *,
        datadir: Path | None = None,
        initial_blocks: int = 101,
        extra_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = 30.0,
        txindex: bool = False,
    ) -> None:
        self._datadir_arg = datadir
        # Off by default, as merchants run Litecoin/Bitcoin Core: getrawtransaction then only
        # finds mempool transactions, and the watcher must not depend on it.
        self.txindex = txindex
        self.initial_blocks = initial_blocks
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.rpc_user = "u" + secrets.token_hex(8)
        self.rpc_password = secrets.token_hex(16)
        self.rpc_port = 0
        self.p2p_port = 0
        self.mining_address = ""
        self.wallet = self.WALLET

    # addresses and urls
    @property
    def datadir(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir

    @property
    def url(self) -> str:
        """``http://user:pass@127.0.0.1:port`` — the node endpoint, for a Bitcoin Core RPC client."""
        return f"http://{self.rpc_user}:{self.rpc_password}@127.0.0.1:{self.rpc_port}"

    @property
    def wallet_url(self) -> str:
        """The funded wallet's endpoint (``<url>/wallet/<wallet>``)."""
        return f"{self.url}/wallet/{self.wallet}"

    @property
    def debug_log(self) -> Path:
        return self.datadir / "regtest" / "debug.log"

    # lifecycle
    def start(self) -> Litecoind:
        self.binary = litecoind_binary()
        if self.binary is None:
            raise NodeError(f"litecoind is not installed: {INSTALL_HINT}")
        self.workdir = self._make_workdir(self._datadir_arg)
        started = time.monotonic()
        for attempt in range(3):
            self.rpc_port, self.p2p_port = free_port(), free_port()
            self._launch()
            try:
                self._wait_ready(started + self.start_timeout)
                break
            except _EarlyExit as exit_:
                self._http.close()
                if attempt == 2 or "bind" not in exit_.log.lower():
                    self.kill()
                    raise NodeError(f"litecoind exited at startup:\n{exit_.log}") from None
            except BaseException:
                self.kill()
                raise
        try:
            self._setup_wallet()
        except BaseException:
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _launch(self) -> None:
        assert self.binary is not None, "start() finds the binary first"
        cmd = [
            self.binary,
            "-regtest",
            "-daemon=0",
            "-server=1",
            f"-datadir={self.datadir}",
            f"-rpcport={self.rpc_port}",
            f"-port={self.p2p_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            f"-rpcuser={self.rpc_user}",
            f"-rpcpassword={self.rpc_password}",
            # No P2P at all: no listening socket, no outbound peers, no DNS seeds, no UPnP.
            "-listen=0",
            "-connect=0",
            "-dnsseed=0",
            "-upnp=0",
            "-discover=0",
            "-listenonion=0",
            "-fallbackfee=0.0001",
            f"-txindex={int(self.txindex)}",
            "-printtoconsole=0",
            "-shrinkdebugfile=1",
            "-persistmempool=0",
            # Litecoin Core ships with BIP125 replacement off (Bitcoin Core has it on): turn it
            # on so RBF flows behave as on Bitcoin.
            "-mempoolreplacement=1",
            # Litecoin 0.21.2 activates MWEB at regtest height 432, and from then on
            # generatetoaddress fails (bad-txns-vin-empty: the first MWEB block needs a peg-in;
            # litecoin-project/litecoin#807). Keep MWEB never-active so mining works at any
            # height (it also keeps HogEx transactions out of blocks).
            "-vbparams=mweb:-2:0",
            "-keypool=20",  # the default 1000 keys makes wallet creation slow
            *self.extra_args,
        ]
        self.process = spawn(cmd, log=self.datadir / "stdout.log")
        _LIVE.add(self)
        self._http = httpx.Client(auth=(self.rpc_user, self.rpc_password), timeout=60.0)
        base = f"http://127.0.0.1:{self.rpc_port}"
        self._node_rpc = _JsonRpc(self._http, base, version="1.0", parse_float=Decimal)
        self._wallet_rpc = _JsonRpc(
            self._http, f"{base}/wallet/{self.wallet}", version="1.0", parse_float=Decimal
        )

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if self._started().poll() is not None:
                log = _tail(self.datadir / "stdout.log") + "\n" + _tail(self.debug_log)
                raise _EarlyExit(log)
            try:
                self._node_rpc("getblockcount", timeout=2.0)
                return
            except httpx.TransportError:
                pass
            except RPCError as exc:
                if exc.code != -28:  # -28: still warming up
                    raise
            if time.monotonic() > deadline:
                raise NodeError(f"litecoind RPC did not answer in time:\n{_tail(self.debug_log)}")
            time.sleep(0.05)

    def _setup_wallet(self) -> None:
        # 0.21 creates no default wallet; descriptor wallets are not compiled into Debian's
        # build, so a legacy (BDB) wallet: createwallet name disable_private_keys blank
        # passphrase avoid_reuse descriptors load_on_startup.
        try:
            self._node_rpc("createwallet", self.wallet, False, False, "", False, False, False)
        except RPCError as exc:
            if "already exists" not in exc.message:
                raise
            with contextlib.suppress(RPCError):  # already loaded is fine
                self._node_rpc("loadwallet", self.wallet)
        self.mining_address = self.rpc("getnewaddress", "mining")
        if self.initial_blocks:
            self.mine(self.initial_blocks)

    def restart(self) -> Litecoind:
        """Start a killed or stopped node again on the same datadir, ports and credentials: its
        chain and wallet are kept, and clients configured with ``url`` reach it again."""
        self._http.close()
        self._launch()
        self._wait_ready(time.monotonic() + self.start_timeout)
        with contextlib.suppress(RPCError):  # already loaded (load_on_startup) is fine
            self._node_rpc("loadwallet", self.wallet)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """RPC ``stop``, wait for the process to exit; SIGKILL if it hangs."""
        if self.is_running():
            with contextlib.suppress(httpx.TransportError, RPCError):
                self._node_rpc("stop", timeout=5.0)
            try:
                self._started().wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    # RPC
    def rpc(self, method: str, *params: Any) -> Any:
        """A JSON-RPC call on the wallet endpoint (node RPCs work there too)."""
        return self._wallet_rpc(method, *params)

    def node_rpc(self, method: str, *params: Any) -> Any:
        """A JSON-RPC call on the node endpoint (``url``), as a client without a wallet path."""
        return self._node_rpc(method, *params)

    def create_wallet(self, name: str, *, watch_only: bool = False) -> str:
        """Create (legacy) wallet ``name``; returns its URL. Watch-only wallets are blank and
        take ``importaddress``/``importpubkey``/``importmulti``. With a second wallet loaded,
        wallet RPCs on ``url`` (no wallet path) fail: use the wallet URLs."""
        self._node_rpc("createwallet", name, watch_only, watch_only, "", False, False, False)
        return f"{self.url}/wallet/{name}"

    def new_address(self, label: str = "") -> str:
        return self.rpc("getnewaddress", label)

    def block_count(self) -> int:
        return self.rpc("getblockcount")

    def best_block_hash(self) -> str:
        return self.rpc("getbestblockhash")

    def mine(self, n: int = 1, address: str | None = None) -> list[str]:
        """Mine ``n`` blocks (to the wallet unless ``address``); returns their hashes."""
        return self.rpc("generatetoaddress", n, address or self.mining_address)

    def send(self, address: str, amount: Decimal | str | int, *, replaceable: bool = False) -> str:
        """``sendtoaddress`` from the funded wallet; returns the txid (unconfirmed)."""
        return self.rpc("sendtoaddress", address, _coins(amount), "", "", False, bool(replaceable))

    def send_rbf(self, address: str, amount: Decimal | str | int) -> str:
        """A BIP125-replaceable send; replace it with ``bump_fee(txid)``."""
        return self.send(address, amount, replaceable=True)

    def bump_fee(self, txid: str) -> str:
        """``bumpfee``: replaces an RBF transaction with a higher fee one; returns the new txid."""
        return self.rpc("bumpfee", txid)["txid"]

    def invalidate(self, block_hash: str) -> None:
        self.rpc("invalidateblock", block_hash)

    def reconsider(self, block_hash: str) -> None:
        self.rpc("reconsiderblock", block_hash)

    def reorg(self, depth: int, new_blocks: int | None = None) -> list[str]:
        """Replace the last ``depth`` blocks with ``new_blocks`` (default ``depth + 1``) new ones.

        The disconnected blocks' transactions go back to the mempool and land in the new blocks
        unless something conflicts. New blocks pay a fresh address so they never repeat an
        invalidated block's hash. Returns the new blocks' hashes.
        """
        tip = self.block_count()
        if not 0 < depth <= tip:
            raise ValueError(f"depth must be in 1..{tip}")
        self.invalidate(self.rpc("getblockhash", tip - depth + 1))
        return self.mine(depth + 1 if new_blocks is None else new_blocks, self.new_address())


class _EarlyExit(Exception):
    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.log = log


def _coins(amount: Decimal | str | int) -> Decimal:
    if isinstance(amount, float):
        raise TypeError("pass amounts as Decimal or str, not float")
    value = Decimal(amount)
    if value != value.quantize(LITOSHI):
        raise ValueError(f"{amount} has more than 8 decimal places")
    return value.quantize(LITOSHI)


# --- anvil (Ethereum JSON-RPC) --------------------------------------------------------------


def anvil_binary() -> Path:
    """The anvil executable inside ``node_modules/@foundry-rs/anvil-<os>-<arch>/bin/``.

    ``@foundry-rs/anvil`` only carries a node launcher (``bin.mjs``); the native binary ships in
    the platform package npm picks as an optional dependency. ``CRYPTOPAY_ANVIL_BIN`` overrides.
    """
    override = os.environ.get("CRYPTOPAY_ANVIL_BIN")
    if override:
        return Path(override)
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform)
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if system is None or arch is None:
        raise NodeError(f"anvil: unsupported platform {sys.platform}/{machine}")
    exe = "anvil.exe" if system == "win32" else "anvil"
    return NODE_MODULES / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / exe


def _hex(value: int) -> str:
    return hex(value)


def _word(value: int) -> str:
    if value < 0 or value >= 1 << 256:
        raise ValueError(f"{value} does not fit a uint256")
    return format(value, "064x")


def _address_word(address: str) -> str:
    raw = address.lower().removeprefix("0x")
    if len(raw) != 40:
        raise ValueError(f"not an address: {address}")
    return raw.rjust(64, "0")


def _encode_token_constructor(symbol: str, decimals: int, supply: int) -> str:
    """ABI-encode ``(string symbol, uint8 decimals, uint256 supply)``."""
    data = symbol.encode()
    padded = data.hex().ljust(((len(data) + 31) // 32) * 64, "0")
    return _word(0x60) + _word(decimals) + _word(supply) + _word(len(data)) + padded


def compiled_contract(name: str = "TestToken") -> dict[str, Any]:
    """``testing/contracts/<name>.sol`` compiled by solc-js: ``abi``, ``bytecode``,
    ``methodIdentifiers``. Cached under ``node_modules/.cache`` keyed by the sources and the
    solc version, so only the first run pays for the compile (~2 s)."""
    if name in _COMPILED:
        return _COMPILED[name]
    solc_pkg = NODE_MODULES / "solc" / "package.json"
    if not solc_pkg.exists():
        raise NodeError(f"solc-js is not installed: {INSTALL_HINT}")
    source = CONTRACTS_DIR / f"{name}.sol"
    sources = [source, CONTRACTS_DIR / "compile.js", solc_pkg]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    cache = NODE_MODULES / ".cache" / "cryptopay" / f"{name}-{digest}.json"
    if cache.exists():
        compiled = json.loads(cache.read_text())
    else:
        node = shutil.which("node")
        if node is None:
            raise NodeError(f"node is not installed: {INSTALL_HINT}")
        result = subprocess.run(
            [node, str(CONTRACTS_DIR / "compile.js"), str(source), name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise NodeError(f"compiling {name}.sol failed:\n{result.stderr}")
        compiled = json.loads(result.stdout)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(result.stdout)
        os.replace(tmp, cache)
    _COMPILED[name] = compiled
    return compiled


def compiled_test_token() -> dict[str, Any]:
    return compiled_contract("TestToken")


_COMPILED: dict[str, dict[str, Any]] = {}


class Anvil(_Node):
    """An anvil node on a free loopback port: chain id 31337 and the ten accounts of the
    ``test test ... junk`` mnemonic, unlocked, 10 000 ETH each.

    anvil mines every transaction into its own block as it arrives (automine) unless
    ``automine=False`` (``evm_setAutomine false``); then blocks come from ``mine(n)``.
    Returned numbers are ints; hashes and addresses are 0x-hex strings as anvil gives them.
    """

    name = "anvil"
    CHAIN_ID = 31337

    def __init__(
        self,
        *,
        automine: bool = True,
        chain_id: int = CHAIN_ID,
        extra_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = 15.0,
    ) -> None:
        self.automine = automine
        self.chain_id = chain_id
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.port = 0
        self._accounts: list[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Anvil:
        binary = anvil_binary()
        if not binary.exists():
            raise NodeError(f"anvil binary not found at {binary}: {INSTALL_HINT}")
        self.workdir = self._make_workdir(None)
        started = time.monotonic()
        for attempt in range(3):
            self.port = free_port()
            cmd = [
                str(binary),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--chain-id", str(self.chain_id),
                "--silent",
                *self.extra_args,
            ]  # fmt: skip
            # anvil keeps state snapshots under $HOME/.foundry/anvil/tmp and leaves them behind
            # when killed: give it a HOME inside our temp dir.
            env = {**os.environ, "HOME": str(self.workdir)}
            self.process = spawn(cmd, log=self.workdir / "anvil.log", env=env)
            _LIVE.add(self)
            self._http = httpx.Client(timeout=30.0)
            self._rpc = _JsonRpc(self._http, self.url, version="2.0")
            try:
                self._wait_ready(started + self.start_timeout)
                break
            except _EarlyExit as exit_:
                self._http.close()
                if attempt == 2 or "in use" not in exit_.log.lower():
                    self.kill()
                    raise NodeError(f"anvil exited at startup:\n{exit_.log}") from None
            except BaseException:
                self.kill()
                raise
        if not self.automine:
            self.set_automine(False)
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if self._started().poll() is not None:
                assert self.workdir is not None, "start() made it"
                raise _EarlyExit(_tail(self.workdir / "anvil.log"))
            try:
                self._rpc("eth_chainId", timeout=1.0)
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise NodeError("anvil did not answer in time")
            time.sleep(0.01)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if anvil has not exited within ``timeout``."""
        if self.is_running():
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._started().wait(timeout=timeout)
        self.kill()

    # RPC
    def rpc(self, method: str, *params: Any) -> Any:
        return self._rpc(method, *params)

    @property
    def accounts(self) -> list[str]:
        """``eth_accounts``: the ten funded, unlocked dev accounts (lower-case hex)."""
        if self._accounts is None:
            self._accounts = self.rpc("eth_accounts")
        return self._accounts

    def set_automine(self, enabled: bool) -> None:
        self.rpc("evm_setAutomine", enabled)
        self.automine = enabled

    def mine(self, n: int = 1) -> int:
        """``anvil_mine`` ``n`` blocks (pending transactions go in the first); returns the new
        head's number."""
        self.rpc("anvil_mine", _hex(n))
        return self.block_number()

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def block(self, number: int | str = "latest", *, full: bool = False) -> dict | None:
        tag = _hex(number) if isinstance(number, int) else number
        return self.rpc("eth_getBlockByNumber", tag, full)

    def block_hash(self, number: int | str = "latest") -> str | None:
        block = self.block(number)
        return block["hash"] if block else None

    def balance(self, address: str, block: int | str = "latest") -> int:
        tag = _hex(block) if isinstance(block, int) else block
        return int(self.rpc("eth_getBalance", address, tag), 16)

    def receipt(self, tx_hash: str) -> dict | None:
        return self.rpc("eth_getTransactionReceipt", tx_hash)

    def call(self, to: str, data: str, block: int | str = "latest") -> str:
        tag = _hex(block) if isinstance(block, int) else block
        return self.rpc("eth_call", {"to": to, "data": data}, tag)

    def wait_receipt(self, tx_hash: str, timeout: float = 10.0) -> dict:
        """Poll until ``tx_hash`` has a receipt (it must get mined: automine or ``mine``)."""
        deadline = time.monotonic() + timeout
        while (receipt := self.receipt(tx_hash)) is None:
            if time.monotonic() > deadline:
                raise NodeError(f"no receipt for {tx_hash} after {timeout} s")
            time.sleep(0.005)
        return receipt

    def send_transaction(self, tx: dict[str, Any], *, wait: bool | None = None) -> str:
        """``eth_sendTransaction`` (``from`` defaults to account 0); returns the tx hash.

        anvil answers before its automined block is in place, so by default (``wait=None``)
        this waits for the receipt when automine is on; with it off the tx stays pending."""
        tx_hash = self.rpc("eth_sendTransaction", {"from": self.accounts[0], **tx})
        if self.automine if wait is None else wait:
            self.wait_receipt(tx_hash)
        return tx_hash

    def send_eth(
        self, to: str, wei: int, *, sender: str | None = None, wait: bool | None = None
    ) -> str:
        """Send ``wei`` from ``sender`` (account 0); tx hash (mined, when automining)."""
        tx = {"to": to, "value": _hex(wei)}
        if sender:
            tx["from"] = sender
        return self.send_transaction(tx, wait=wait)

    def deploy_erc20(
        self,
        decimals: int = 6,
        symbol: str = "USDC",
        supply: int | None = None,
        *,
        sender: str | None = None,
    ) -> str:
        """Deploy ``TestToken`` (ERC-20: transfer, transferFrom, approve, balanceOf, decimals,
        Transfer/Approval events); the whole ``supply`` (default 10^9 tokens) goes to ``sender``
        (account 0). Returns the contract address. With automine off this mines one block."""
        compiled = compiled_test_token()
        supply = 10**9 * 10**decimals if supply is None else supply
        data = compiled["bytecode"] + _encode_token_constructor(symbol, decimals, supply)
        return self._deploy("TestToken", data, sender=sender)

    def _deploy(self, name: str, data: str, *, sender: str | None) -> str:
        tx: dict[str, Any] = {"data": data}
        if sender:
            tx["from"] = sender
        tx_hash = self.send_transaction(tx, wait=False)
        if not self.automine:
            self.rpc("evm_mine")
        receipt = self.wait_receipt(tx_hash)
        if int(receipt["status"], 16) != 1:
            raise NodeError(f"{name} deployment failed: {receipt}")
        return receipt["contractAddress"]

    def erc20_transfer(
        self,
        token: str,
        to: str,
        amount_units: int,
        *,
        sender: str | None = None,
        wait: bool | None = None,
    ) -> str:
        """``transfer(to, amount_units)`` on ``token`` from ``sender`` (account 0); tx hash."""
        data = "0x" + SELECTOR_TRANSFER + _address_word(to) + _word(amount_units)
        tx: dict[str, Any] = {"to": token, "data": data}
        if sender:
            tx["from"] = sender
        return self.send_transaction(tx, wait=wait)

    def erc20_balance(self, token: str, address: str, block: int | str = "latest") -> int:
        return int(self.call(token, "0x" + SELECTOR_BALANCE_OF + _address_word(address), block), 16)

    def erc20_decimals(self, token: str) -> int:
        return int(self.call(token, "0x" + SELECTOR_DECIMALS), 16)

    def deploy_forwarder(self, *, sender: str | None = None) -> str:
        """Deploy ``Forwarder`` (``forward(to)`` passes the ETH it gets on to ``to`` in an
        internal call; ``forwardAndRevert(to)`` does so in a sub-call that reverts). Returns its
        address. With automine off this mines one block."""
        return self._deploy("Forwarder", compiled_contract("Forwarder")["bytecode"], sender=sender)

    def forward_eth(
        self, forwarder: str, to: str, wei: int, *, revert: bool = False, wait: bool | None = None
    ) -> str:
        """Send ``wei`` to ``forwarder`` for ``to`` (account 0 pays); tx hash. ``revert``: through
        the sub-call that reverts, so ``to`` gets nothing."""
        method = "forwardAndRevert(address)" if revert else "forward(address)"
        selector = compiled_contract("Forwarder")["methodIdentifiers"][method]
        data = "0x" + selector + _address_word(to)
        tx = {"to": forwarder, "value": _hex(wei), "data": data, "gas": _hex(200_000)}
        return self.send_transaction(tx, wait=wait)

    def snapshot(self) -> str:
        """``evm_snapshot``: an id for ``revert`` (each id can be reverted to once)."""
        return self.rpc("evm_snapshot")

    def revert(self, snapshot_id: str) -> bool:
        return bool(self.rpc("evm_revert", snapshot_id))

    def reorg(self, depth: int) -> None:
        """``anvil_reorg [depth, []]``: replace the last ``depth`` blocks with as many new empty
        ones (same height, new hashes); their transactions are dropped, not re-queued."""
        self.rpc("anvil_reorg", depth, [])

    def rollback(self, depth: int = 1) -> None:
        """``anvil_rollback``: drop the last ``depth`` blocks (the height goes down)."""
        self.rpc("anvil_rollback", depth)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def litecoind() -> Iterator[Litecoind]:
    """One funded regtest Litecoin Core for the whole session (shared: tests must not assume
    heights or balances, and must undo invalidations)."""
    node = Litecoind().start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def litecoind_factory() -> Iterator[Callable[..., Litecoind]]:
    """``litecoind_factory(**Litecoind kwargs) -> Litecoind``: extra nodes, killed at teardown
    (their data directories go with them, so a graceful stop buys nothing; a node fed blocks by
    ``submitblock`` could take its whole 15 s stop timeout)."""
    nodes: list[Litecoind] = []

    def start(**kwargs: Any) -> Litecoind:
        node = Litecoind(**kwargs)
        nodes.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    """A fresh anvil per test (starts in ~0.1 s), automining."""
    node = Anvil().start()
    try:
        yield node
    finally:
        node.kill()


@pytest.fixture
def anvil_factory() -> Iterator[Callable[..., Anvil]]:
    """``anvil_factory(automine=True, **Anvil kwargs) -> Anvil``: more anvils (failover tests);
    all killed at teardown."""
    nodes: list[Anvil] = []

    def start(**kwargs: Any) -> Anvil:
        node = Anvil(**kwargs)
        nodes.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in nodes:
            node.kill()
