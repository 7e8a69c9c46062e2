"""API capacity on the production server: payment creates and reads against a minimal insert
endpoint, with one and two web workers; SQL statements and Redis round trips per create; peak RSS
per worker.

    .venv/bin/python -m bench.api_capacity [--clients 16] [--warmup 2] [--duration 10]
        [--rounds 3] [--workers 1,2] [--quick]

Needs wrk (``make wrk``), PostgreSQL and Redis (DATABASE_URL / REDIS_URL, defaulting to the test
services). Runs in a scratch database ``cryptopay_apicapacity_<pid>`` created, migrated and
dropped, with Redis keys under a per-run prefix deleted at the end (testing/scratch.py).

Server: ``manage.py serve`` (uvicorn with cryptopay/server.py, what the Procfile runs: Django's
WSGI handler in a thread pool for HTTP, a listening socket per worker) with
``WEB_CONCURRENCY`` = 1 or 2 and everything else production: DEBUG off, the database pool sized
by settings.py from the worker count, ``PROMETHEUS_MULTIPROC_DIR`` set (as the README asks for more
than one worker), live rates from a fake exchange on 127.0.0.1 through the tiered cache with
static fallback refused, development-chain addresses. Its settings module is
bench/api_throughput_settings.py (the production settings with bench/api_throughput_urls.py as
URLconf: every production route plus the minimal endpoint).

Loads, each wrk with ``--clients`` keep-alive connections (closed loop), all as one merchant:

  minimal   POST /api/bench/v1/minimal: the same middleware, DRF, Bearer authentication and scope
            check, then one row inserted and a small 201: the floor of a write on this stack.
  create    POST /api/v1/payments, a unique Idempotency-Key and order_id per request: the gate,
            a quote from the rate cache, an address, the payment, its events, in one transaction.
  create, wallet key
            the same for a merchant receiving BTC on its own wallet key (an account xpub), what
            a live merchant runs: the address derived from the key and checked against other
            payments' and the gap limit. The merchant has 20,000 payments on the key before the
            run, and a buyer pays one of its payments every 20 ms meanwhile, as buyers do: the
            key stays within the gap limit.
  read      GET /api/v1/payments/{id}, cycling over 200 payments made beforehand.
  read, 1 client per worker
            the same reads from one keep-alive connection per worker: the latency of a server
            that is not queueing (with 2 workers it was 48 ms while the workers' connections
            waited for the client's delayed ACKs; see cryptopay/server.py).

Each round starts one server per worker count and runs the four loads on it (a warm-up of
``--warmup`` s, then ``--duration`` s measured) in an order that rotates from round to round;
rounds alternate which worker count goes first. Reported: the median over rounds of requests/s,
p50 and p99, each load against the minimal one with the same workers, and two workers against one.
CPU per request (workers, PostgreSQL, the whole machine, from ``/proc``) is printed for each
load: two workers can only outrun one by as much as the machine's idle cores allow, and what a
request costs outside the worker takes from them. Peak RSS per worker is each worker process's
high-water mark (VmHWM) at the end of its server's run, the largest of them. With 2 workers, each
run also shows how wrk's connections were spread over the workers half-way through (from /proc).

SQL statements and Redis round trips per create (and per read) are counted in this process, on
the same database and Redis, through the same Django stack (DRF's APIClient): every statement
Django sends (``connection.execute_wrapper``) plus each transaction's BEGIN and COMMIT where
psycopg sends them on their own (not when the first and last statements carry them), and every
request redis-py writes to a socket (one per command, one per pipeline). The median over 20
creates after a warm one is reported, with the commands by name; the same for creates on the
wallet key.

Checked (a failed check is printed and makes the exit status 1): every answer of a load was its
expected status (201, 201, 201, 200) without socket errors; the creates stored as many payments as
they answered 201 (up to ``--clients`` more still in flight at the stop), each with its key row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api_throughput import (
    PROVIDERS,
    WRK_THREADS,
    WRK_TIMEOUT,
    cpu_seconds_of,
    machine_busy_seconds,
    wrk_binary,
)
from bench.results import emit, figure
from testing.scratch import scratch_environment
from testing.servers import established_connections

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
WALLET_CREATE = "create, wallet key"
LOADS = ("minimal", "create", WALLET_CREATE, "read")
LIGHT = "read, 1 client per worker"
REPORTED = (*LOADS, LIGHT)
EXPECTED = {"minimal": "201", "create": "201", WALLET_CREATE: "201", "read": "200"}
# What each load's wrk script sends, and in which coin.
KINDS = {"minimal": "minimal", "create": "create", WALLET_CREATE: "create", "read": "read"}
CURRENCIES = {WALLET_CREATE: "BTC"}
# The wallet-key load's chain: its addresses are derived from the merchant's key, and no node is
# asked at create time, so the node's URL is a closed port.
WALLET_CHAINS = json.dumps(
    {"bitcoin": {"kind": "utxo", "currency": "BTC", "hrp": "bcrt", "nodes": ["http://127.0.0.1:9"]}}
)
# The wallet merchant's payments before the run (wallet_history).
WALLET_HISTORY = 20_000
# A buyer pays one of the wallet merchant's payments this often during its load, as buyers do:
# the key stays within the gap limit, so a create asks the short check only (payments.addresses).
PAYER_INTERVAL = 0.02
READ_PAYMENTS = 200

WRK_SCRIPT = r"""
-- Generated by bench/api_capacity.py.
local kind, secret, prefix, coin = "%(kind)s", "%(secret)s", "%(prefix)s", "%(coin)s"
local ids = {%(ids)s}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  n = 0
  statuses = {}
end

function request()
  n = n + 1
  local headers = {["Authorization"] = "Bearer " .. secret}
  if kind == "read" then
    return wrk.format("GET", "/api/v1/payments/" .. ids[(n + tid * 7) %% #ids + 1], headers)
  end
  local id = prefix .. "-" .. tid .. "-" .. n
  headers["Content-Type"] = "application/json"
  local body = '{"amount":"19.99","crypto_currency":"' .. coin .. '","order_id":"' .. id .. '"}'
  if kind == "create" then
    headers["Idempotency-Key"] = id
    return wrk.format("POST", "/api/v1/payments", headers, body)
  end
  return wrk.format("POST", "/api/bench/v1/minimal", headers, body)
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses") or {}) do counts[k] = (counts[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%%s":%%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us":%%d,"errors":%%d,"statuses":{%%s},' ..
    '"p50_us":%%d,"p99_us":%%d}\n',
    summary.duration, e.connect + e.read + e.write + e.timeout, table.concat(parts, ","),
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Run:
    """One measured wrk load."""

    load: str
    workers: int
    round_: int
    rate: float
    p50_ms: float
    p99_ms: float
    answered: int
    cpu_share: float
    prefix: str
    connections: list[int] = field(default_factory=list)  # per worker, mid-run
    # CPU per answered request, in µs: the workers, PostgreSQL's processes, the whole machine.
    cpu_us: dict[str, float] = field(default_factory=dict)
    # The workers' threads' context switches per answered request (see context_switches_of).
    switches: float = float("nan")
    problems: list[str] = field(default_factory=list)


def account_xpub() -> str:
    """A BTC account key (BIP84) of a fresh seed: the wallet-key load's merchant receives on it."""
    from bip_utils import Bip84, Bip84Coins

    account = Bip84.FromSeed(os.urandom(64), Bip84Coins.BITCOIN).Purpose().Coin().Account(0)
    return account.PublicKey().ToExtended()


def postgres_cpu_seconds() -> float:
    """CPU time PostgreSQL's processes (backends, WAL writer, checkpointer...) have used so far:
    what a request costs outside the workers bounds how far a second worker can scale here."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
    return sum(cpu for cpu in map(cpu_seconds_of, pids) if not math.isnan(cpu))  # NaN: ended


def context_switches_of(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far (voluntary and not, from /proc): each
    hop of a request between the event loop and a pool thread, each wait on a round trip and on
    the GIL is one or two. Per request they show what the server's handoffs cost beside the
    request's own work (0 once the process ended)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split(":")[1])
    return total


def peak_rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_wrk(
    *, base_url: str, pids: list[int], load: str, workers: int, secret: str, ids: list[str],
    clients: int, seconds: int, scripts: Path, round_: int = 0,
) -> Run:  # fmt: skip
    import subprocess

    prefix = f"{load[0]}{workers}-{uuid.uuid4().hex[:10]}"
    script = scripts / f"{prefix}.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "kind": KINDS[load],
            "coin": CURRENCIES.get(load, "LTC"),
            "secret": secret,
            "prefix": prefix,
            "ids": ",".join(json.dumps(i) for i in ids),
        }
    )
    command = [
        wrk_binary(), "-t", str(max(1, min(WRK_THREADS, clients))), "-c", str(clients),
        "-d", f"{seconds}s", "--timeout", WRK_TIMEOUT, "-s", str(script), base_url,
    ]  # fmt: skip
    cpu_before = sum(cpu_seconds_of(pid) for pid in pids)
    switches_before = sum(context_switches_of(pid) for pid in pids)
    postgres_before, machine_before = postgres_cpu_seconds(), machine_busy_seconds()
    wrk = subprocess.Popen(  # noqa: S603 (our own command line, no shell)
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # Half-way: how the kernel spread wrk's keep-alive connections over the workers.
    with contextlib.suppress(subprocess.TimeoutExpired):
        wrk.wait(timeout=seconds / 2)
    port = int(base_url.rsplit(":", 1)[1])
    connections = [established_connections(pid, port) for pid in pids]
    stdout, stderr = wrk.communicate(timeout=seconds + 120)
    cpu_after = sum(cpu_seconds_of(pid) for pid in pids)
    switches_after = sum(context_switches_of(pid) for pid in pids)
    postgres_after, machine_after = postgres_cpu_seconds(), machine_busy_seconds()
    line = next((x for x in stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if wrk.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({wrk.returncode}):\n{stdout}\n{stderr}")
    data = json.loads(line[len("WRK_JSON ") :])
    seconds_run = data["duration_us"] / 1e6
    answered = data["statuses"].get(EXPECTED[load], 0)
    run = Run(
        load=load,
        workers=workers,
        round_=round_,
        rate=answered / seconds_run,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        answered=answered,
        cpu_share=(cpu_after - cpu_before) / seconds_run,
        prefix=prefix,
        connections=connections,
        cpu_us={
            part: used / max(1, answered) * 1e6
            for part, used in (
                ("workers", cpu_after - cpu_before),
                ("postgres", postgres_after - postgres_before),
                ("machine", machine_after - machine_before),
            )
        },
        switches=(switches_after - switches_before) / max(1, answered),
    )
    run.problems += [
        f"{count} x HTTP {status}"
        for status, count in sorted(data["statuses"].items())
        if status != EXPECTED[load]
    ]
    if data["errors"]:
        run.problems.append(f"{data['errors']} socket errors")
    return run


def check_creates(run: Run, clients: int) -> None:
    from django.db import connection

    from payments.models import Payment
    from resilience.models import IdempotencyKey

    # One statement, one snapshot: requests still in flight when wrk stopped commit meanwhile.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT count(*) FROM {Payment._meta.db_table} WHERE order_id LIKE %s), "  # noqa: S608
            f"(SELECT count(*) FROM {IdempotencyKey._meta.db_table} WHERE key LIKE %s)",
            [f"{run.prefix}-%", f"{run.prefix}-%"],
        )
        stored, keys = cursor.fetchone()
    if not run.answered <= stored <= run.answered + clients:
        run.problems.append(f"{stored} payments stored, {run.answered} answered 201")
    if keys != stored:
        run.problems.append(f"{keys} idempotency keys for {stored} payments")


# --- counting statements and round trips in process ----------------------------------------


class Counts:
    """SQL round trips (statements, and each transaction's BEGIN and COMMIT where they are sent
    on their own) and Redis requests made while active, in this process."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.redis: list[str] = []
        self._transaction_start = 0

    def __enter__(self) -> Counts:
        import redis
        from django.db import connections

        counts = self
        connection = connections["default"]
        self._wrapper = connection.execute_wrapper(self._statement)
        self._wrapper.__enter__()
        # The backend class as Any: _commit/_rollback are privates the type stubs do not declare.
        backend: Any = type(connection)
        self._backend = backend
        self._original_send = redis.connection.AbstractConnection.send_packed_command
        self._original_commit = backend._commit
        self._original_rollback = backend._rollback
        original_send, original_commit = self._original_send, self._original_commit
        original_rollback = self._original_rollback

        def send(conn: Any, command: Any, check_health: bool = True) -> None:
            packed = command if isinstance(command, (bytes, str)) else b"".join(command)
            if isinstance(packed, str):
                packed = packed.encode()
            # The first command's name: "*<n>\r\n$<len>\r\n<NAME>\r\n...".
            parts = packed.split(b"\r\n")
            counts.redis.append(
                parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"
            )
            return original_send(conn, command, check_health)

        def commit(wrapper: Any) -> None:
            counts.statements += counts._ending(wrapper, "COMMIT")
            return original_commit(wrapper)

        def rollback(wrapper: Any) -> None:
            counts.statements += counts._ending(wrapper, "ROLLBACK")
            return original_rollback(wrapper)

        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        backend._commit = commit
        backend._rollback = rollback
        return self

    def _statement(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.statements.append(" ".join(sql.split())[:70])
        return execute(sql, params, many, context)

    def _ending(self, wrapper: Any, command: str) -> list[str]:
        """The transaction's BEGIN and its COMMIT (or ROLLBACK), each counted where psycopg
        sends it on its own: not when the transaction's first statement carried its BEGIN, nor
        when its last one carried its COMMIT (resilience/postgresql: no transaction is open)."""
        from psycopg import pq

        since = self.statements[self._transaction_start :]
        raw = wrapper.connection
        open_ = raw is not None and raw.info.transaction_status != pq.TransactionStatus.IDLE
        begun = any(statement.startswith("BEGIN;") for statement in since)
        ending = ([] if begun else ["BEGIN"]) + ([command] if open_ else [])
        self._transaction_start = len(self.statements) + len(ending)
        return ending

    def __exit__(self, *exc: object) -> None:
        import redis

        redis.connection.AbstractConnection.send_packed_command = self._original_send  # type: ignore[method-assign]
        self._backend._commit = self._original_commit
        self._backend._rollback = self._original_rollback
        self._wrapper.__exit__(None, None, None)


def count_per_request(secrets: dict[str, str], read_id: str, samples: int = 20) -> dict[str, Any]:
    from rest_framework.test import APIClient

    def client_of(load: str) -> APIClient:
        client = APIClient(HTTP_HOST="127.0.0.1")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secrets[load]}")
        return client

    def creator(load: str) -> Any:
        client = client_of(load)

        def create() -> Any:
            key = f"count-{uuid.uuid4().hex}"
            coin = CURRENCIES.get(load, "LTC")
            body = {"amount": "19.99", "crypto_currency": coin, "order_id": key}
            return client.post(
                "/api/v1/payments", body, format="json", headers={"Idempotency-Key": key}
            )

        assert create().status_code == 201  # warm: the rate cache, connections, imports
        return create

    reader = client_of("read")
    result: dict[str, Any] = {}
    for label, call, status in (
        ("create", creator("create"), 201),
        (WALLET_CREATE, creator(WALLET_CREATE), 201),
        ("read", lambda: reader.get(f"/api/v1/payments/{read_id}"), 200),
    ):
        sql_counts, redis_counts, example = [], [], None
        for _ in range(samples):
            with Counts() as counts:
                answer = call()
            assert answer.status_code == status, answer.content
            sql_counts.append(len(counts.statements))
            redis_counts.append(len(counts.redis))
            example = counts
        assert example is not None
        result[label] = {
            "sql": statistics.median(sql_counts),
            "redis": statistics.median(redis_counts),
            "sql_list": example.statements,
            "redis_list": example.redis,
        }
    return result


# --- the run -----------------------------------------------------------------------------------


def server_env(exchange_url: str, metrics_dir: Path, workers: int) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.api_throughput_settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "CRYPTOPAY_DEV_CHAIN": "1",
        "WEB_CONCURRENCY": str(workers),
        "CRYPTOPAY_WEB_WORKERS": str(workers),  # the name before WEB_CONCURRENCY
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "CRYPTOPAY_RATE_PROVIDERS": ",".join(PROVIDERS),
        "CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK": "0",
        "CRYPTOPAY_CHAINS": WALLET_CHAINS,
    }
    for name in PROVIDERS:
        env[f"CRYPTOPAY_RATE_{name.upper()}_URL"] = exchange_url
    return env


@contextlib.contextmanager
def buyers_paying(*, merchant_id: int, key_space: str) -> Iterator[None]:
    """While the block runs, the merchant's newest payment on the key is paid every
    PAYER_INTERVAL s (in a thread of this process, with its own connection)."""
    import threading

    from django.db import connection
    from django.db.models import F

    from payments.models import Payment

    newest = Payment.objects.filter(merchant_id=merchant_id, key_space=key_space).order_by(
        "-derivation_index"
    )
    stop = threading.Event()

    def pay() -> None:
        try:
            while not stop.wait(PAYER_INTERVAL):
                Payment.objects.filter(pk__in=newest.values("pk")[:1]).update(
                    amount_received=F("crypto_amount")
                )
        finally:
            connection.close()

    payer = threading.Thread(target=pay, name="buyers", daemon=True)
    payer.start()
    try:
        yield
    finally:
        stop.set()
        payer.join(timeout=30)


@dataclass(frozen=True)
class Wallet:
    """The merchant of the wallet-key load: its payments' key space, for the buyers."""

    merchant_id: int
    key_space: str


def wallet_history(wallet: Wallet, *, secret: str, count: int) -> None:
    """``count`` payments of the wallet merchant on its key before the run (one in a thousand
    paid; bench/live_create.py's seed, which ANALYZEs the table): a live merchant has a history,
    and PostgreSQL's statistics then describe a table of that size. On a table that had just
    grown from nothing, stale statistics led the planner to read all the merchant's payments
    for the gap limit's check, where fresh ones take the key's index."""
    from rest_framework.test import APIClient

    from bench.live_create import seed
    from payments.models import AddressIndex, Payment

    client = APIClient(HTTP_HOST="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    first = client.post(
        "/api/v1/payments", {"amount": "19.99", "crypto_currency": "BTC"}, format="json"
    )
    assert first.status_code == 201, first.content
    template = Payment.objects.get(public_id=first.json()["id"])
    assert template.derivation_index is not None
    seed(
        merchant_id=wallet.merchant_id, template_id=template.pk, count=count, space=wallet.key_space
    )
    # The counter goes on after the seeded indexes, as it would have handed them out.
    AddressIndex.objects.filter(merchant_id=wallet.merchant_id, key_space=wallet.key_space).update(
        next_index=template.derivation_index + count + 1
    )


def run_round(
    *, round_: int, workers_list: list[int], args: argparse.Namespace, secrets: dict[str, str],
    wallet: Wallet, ids: list[str], exchange_url: str, logs: Path, rss: dict[int, list[float]],
) -> list[Run]:  # fmt: skip
    import httpx

    from testing.servers import asgi_server, wait_for_workers

    runs = []
    order = workers_list if round_ % 2 == 0 else list(reversed(workers_list))
    for workers in order:
        metrics_dir = Path(tempfile.mkdtemp(prefix="metrics-", dir=logs))
        env = server_env(exchange_url, metrics_dir, workers)
        # Spawned workers each set Django up: on a busy machine that takes a while.
        with asgi_server(logs, kind="gateway", env=env, start_timeout=180) as server:
            pids = wait_for_workers(server.process.pid, workers)
            # One create alone first: the first quote is fetched live (later ones are cached).
            first = httpx.post(
                f"{server.base_url}/api/v1/payments",
                json={"amount": "19.99", "crypto_currency": "LTC"},
                headers={
                    "Authorization": f"Bearer {secrets['create']}",
                    "Idempotency-Key": uuid.uuid4().hex,
                },
                timeout=30,
            )
            if first.status_code != 201:
                raise SystemExit(f"first create: HTTP {first.status_code} {first.text[:300]}")
            shift = round_ % len(LOADS)
            for load in LOADS[shift:] + LOADS[:shift]:
                common = {
                    "base_url": server.base_url, "pids": pids, "load": load, "workers": workers,
                    "secret": secrets[load], "ids": ids, "clients": args.clients,
                    "scripts": logs, "round_": round_,
                }  # fmt: skip
                with (
                    buyers_paying(merchant_id=wallet.merchant_id, key_space=wallet.key_space)
                    if load == WALLET_CREATE
                    else contextlib.nullcontext()
                ):
                    if args.warmup > 0:
                        run_wrk(seconds=args.warmup, **common)
                    run = run_wrk(seconds=args.duration, **common)
                if KINDS[load] == "create":
                    check_creates(run, args.clients)
                if load == "create":
                    rss[workers].append(max(peak_rss_mib(pid) for pid in pids))
                runs.append(run)
            # Latency, not capacity: half the duration is plenty for one client per worker.
            light = {**common, "load": "read", "secret": secrets["read"], "clients": workers}
            light_run = run_wrk(seconds=max(1, args.duration // 2), **light)
            light_run.load = LIGHT
            runs.append(light_run)
            if server.process.poll() is not None:
                raise SystemExit(f"the server exited with {server.process.returncode}")
    return runs


def median_of(runs: list[Run], load: str, workers: int, attribute: str) -> float:
    values = [getattr(r, attribute) for r in runs if r.load == load and r.workers == workers]
    return statistics.median(values) if values else float("nan")


def report(
    runs: list[Run], counts: dict[str, Any], rss: dict[int, list[float]], args: argparse.Namespace,
    workers_list: list[int], load_start: str,
) -> None:  # fmt: skip
    from bench.api_throughput import machine_load

    print(
        f"\nAPI capacity on manage.py serve: wrk {WRK_THREADS} threads, {args.clients} clients, "
        f"{args.duration} s per load (after {args.warmup} s warm-up), {args.rounds} round(s), "
        "medians over rounds"
    )
    print(f"Machine: {os.cpu_count()} CPUs; {load_start} at start, {machine_load()} at end")
    print(
        f"  {'workers':>7} {'load':26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU':>6}  rounds"
        "  (connections per worker)"
    )
    for workers in workers_list:
        for load in REPORTED:
            mine = [r for r in runs if r.load == load and r.workers == workers]
            print(
                f"  {workers:7d} {load:26} {median_of(runs, load, workers, 'rate'):8.1f} "
                f"{median_of(runs, load, workers, 'p50_ms'):8.1f} "
                f"{median_of(runs, load, workers, 'p99_ms'):8.1f} "
                f"{median_of(runs, load, workers, 'cpu_share') * 100:5.0f}%  "
                + ", ".join(f"{r.rate:.0f}" for r in mine)
                + (
                    "  (" + ", ".join("/".join(map(str, r.connections)) for r in mine) + ")"
                    if workers > 1
                    else ""
                )
            )
    print(
        "CPU per request, µs (medians over rounds; machine = every core's busy time, wrk and "
        "Redis included)"
    )
    print(
        f"  {'workers':>7} {'load':26} {'workers':>8} {'postgres':>8} {'machine':>8}"
        f"  {'switches':>8} (the workers' context switches per request)"
    )
    for workers in workers_list:
        for load in REPORTED:
            mine = [r for r in runs if r.load == load and r.workers == workers and r.cpu_us]
            if mine:
                cpu = {
                    part: statistics.median(r.cpu_us[part] for r in mine)
                    for part in ("workers", "postgres", "machine")
                }
                print(
                    f"  {workers:7d} {load:26} {cpu['workers']:8.0f} {cpu['postgres']:8.0f} "
                    f"{cpu['machine']:8.0f}  {median_of(runs, load, workers, 'switches'):8.0f}"
                )
    for line in paired_ratios(runs, workers_list):
        print(line)
    for run in runs:
        for problem in run.problems:
            print(f"  CHECK FAILED {run.workers} worker(s) {run.load}: {problem}")
    for label in ("create", WALLET_CREATE, "read"):
        c = counts[label]
        print(
            f"per {label}, in process: {c['sql']:g} SQL round trips (with BEGIN/COMMIT where "
            "sent alone), "
            f"{c['redis']:g} Redis round trips"
        )
        print("    SQL: " + " | ".join(c["sql_list"]))
        print("    Redis: " + ", ".join(f"{k} x{n}" for k, n in Counter(c["redis_list"]).items()))
    for workers in workers_list:
        if rss[workers]:
            print(
                f"peak RSS per worker under the create load, {workers} worker(s): "
                f"{max(rss[workers]):.0f} MiB (largest worker, largest round)"
            )
    figures = []
    for workers in workers_list:
        for load in REPORTED:
            name = f"{workers} worker(s) {load}"
            for metric, attribute, unit, better in (
                ("req/s", "rate", "req/s", "higher"),
                ("p50", "p50_ms", "ms", "lower"),
                ("p99", "p99_ms", "ms", "lower"),
            ):
                baselines = []
                if load in LOADS and load != "minimal":
                    baselines.append(f"{workers} worker(s) minimal: {metric}")
                if workers != workers_list[0]:
                    baselines.append(f"{workers_list[0]} worker(s) {load}: {metric}")
                figures.append(
                    figure(
                        f"{name}: {metric}",
                        median_of(runs, load, workers, attribute),
                        unit,
                        baseline=baselines or None,
                        better=better,
                    )
                )
        if rss[workers]:
            figures.append(
                figure(
                    f"{workers} worker(s): peak RSS per worker, create load",
                    max(rss[workers]),
                    "MiB",
                    baseline=None,
                )
            )
    for label in ("create", WALLET_CREATE, "read"):
        figures.append(
            figure(
                f"per {label}: SQL statements", counts[label]["sql"], "statements", baseline=None
            )
        )
        figures.append(
            figure(
                f"per {label}: Redis round trips",
                counts[label]["redis"],
                "round trips",
                baseline=None,
            )
        )
    goals = goal_lines(runs, counts, rss, workers_list)
    for line in goals:
        print(line)
    emit("api_capacity", figures)


def paired_ratios(runs: list[Run], workers_list: list[int]) -> list[str]:
    """Each round's create and read rates over the same round's minimal rate: runs seconds apart
    on the same server, so the machine's drift (its speed moves by a quarter within minutes
    here) weighs less on them than on the medians' ratio, and their spread shows how far one
    run's ratio can be trusted."""
    lines = []
    for workers in workers_list:
        for load in ("create", WALLET_CREATE, "read"):
            ratios = []
            for round_ in sorted({r.round_ for r in runs}):
                minimal = [
                    r.rate
                    for r in runs
                    if (r.load, r.workers, r.round_) == ("minimal", workers, round_)
                ]
                mine = [
                    r.rate for r in runs if (r.load, r.workers, r.round_) == (load, workers, round_)
                ]
                if minimal and mine and minimal[0] > 0:
                    ratios.append(mine[0] / minimal[0])
            if ratios:
                lines.append(
                    f"{load} / minimal, {workers} worker(s), per round: "
                    + ", ".join(f"{ratio:.2f}" for ratio in ratios)
                    + f" (median {statistics.median(ratios):.2f})"
                )
    return lines


def goal_lines(
    runs: list[Run], counts: dict[str, Any], rss: dict[int, list[float]], workers_list: list[int]
) -> list[str]:
    def rate(load: str, workers: int) -> float:
        return median_of(runs, load, workers, "rate")

    def p99(load: str, workers: int) -> float:
        return median_of(runs, load, workers, "p99_ms")

    one = workers_list[0]
    checks = [
        (
            f"create req/s >= 0.6x minimal ({one} worker(s))",
            rate("create", one) / rate("minimal", one),
            ">=",
            0.6,
        ),
        (
            f"create p99 <= 3x minimal p99 ({one} worker(s))",
            p99("create", one) / p99("minimal", one),
            "<=",
            3.0,
        ),
        ("SQL statements per create <= 8", counts["create"]["sql"], "<=", 8),
        ("SQL statements per create, wallet key <= 8", counts[WALLET_CREATE]["sql"], "<=", 8),
        ("Redis round trips per create <= 2", counts["create"]["redis"], "<=", 2),
        (
            f"read req/s >= 0.8x minimal ({one} worker(s))",
            rate("read", one) / rate("minimal", one),
            ">=",
            0.8,
        ),
    ]
    if len(workers_list) > 1:
        two = workers_list[1]
        for load in ("create", "read"):
            checks.append(
                (
                    f"{load} req/s, {two} workers >= 1.5x {one}",
                    rate(load, two) / rate(load, one),
                    ">=",
                    1.5,
                )
            )
    peak = max((max(v) for v in rss.values() if v), default=float("nan"))
    checks.append(("peak RSS per web worker, create load <= 150 MiB", peak, "<=", 150))
    lines = []
    for name, value, sense, goal in checks:
        met = value >= goal if sense == ">=" else value <= goal
        lines.append(f"goal: {name}: {value:.2f} -> {'met' if met else 'MISSED'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2, help="seconds per load, not measured")
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 worker, 4 clients, 1 round, 1 s"
    )
    args = parser.parse_args()
    if args.quick:
        # make test runs every bench this way within minutes: spawned workers are the slow part.
        args.clients, args.warmup, args.duration, args.rounds = 4, 0, 1, 1
        args.workers = "1"
    workers_list = [int(w) for w in args.workers.split(",") if w.strip()]
    wrk_binary()
    from bench.api_throughput import machine_load

    load_start = machine_load()
    from testing.exchanges import FakeExchanges

    with FakeExchanges() as exchange:
        extra = server_env(exchange.base_url, Path(tempfile.gettempdir()), 1)
        for name in (
            "DJANGO_SETTINGS_MODULE",
            "PYTHONPATH",
            "WEB_CONCURRENCY",
            "CRYPTOPAY_WEB_WORKERS",
        ):
            extra.pop(name)
        extra.pop("PROMETHEUS_MULTIPROC_DIR")
        with scratch_environment("apicapacity", extra), tempfile.TemporaryDirectory() as logs:
            from django.db import connections

            from accounts import services as accounts_services
            from accounts.models import ApiKeyScope
            from payments import services
            from payments.addresses import wallet_key_space
            from payments.models import MerchantWallet

            merchant = accounts_services.merchant_create(name="bench")
            _, secret = accounts_services.api_key_create(
                merchant=merchant, name="bench", scopes=list(ApiKeyScope.values)
            )
            wallet_merchant = accounts_services.merchant_create(name="bench wallet")
            _, wallet_secret = accounts_services.api_key_create(
                merchant=wallet_merchant, name="bench", scopes=list(ApiKeyScope.values)
            )
            key = MerchantWallet.objects.create(
                merchant=wallet_merchant, crypto_currency="BTC", extended_public_key=account_xpub()
            )
            wallet = Wallet(merchant_id=wallet_merchant.pk, key_space=wallet_key_space(key))
            secrets = {load: secret for load in LOADS} | {WALLET_CREATE: wallet_secret}
            ids = [
                services.payment_create(
                    merchant=merchant,
                    fiat_amount=__import__("decimal").Decimal("19.99"),
                    fiat_currency="USD",
                    crypto_currency="LTC",
                ).public_id
                for _ in range(READ_PAYMENTS if not args.quick else 20)
            ]
            history = WALLET_HISTORY if not args.quick else 1_000
            wallet_history(wallet, secret=wallet_secret, count=history)
            with buyers_paying(merchant_id=wallet.merchant_id, key_space=wallet.key_space):
                counts = count_per_request(secrets, ids[0], samples=5 if args.quick else 20)
            connections.close_all()
            runs: list[Run] = []
            rss: dict[int, list[float]] = {w: [] for w in workers_list}
            for round_ in range(args.rounds):
                print(f"round {round_ + 1} ...", flush=True)
                runs += run_round(
                    round_=round_, workers_list=workers_list, args=args, secrets=secrets,
                    wallet=wallet, ids=ids, exchange_url=exchange.base_url, logs=Path(logs),
                    rss=rss,
                )  # fmt: skip
            connections.close_all()
            report(runs, counts, rss, args, workers_list, load_start)
    if any(run.problems for run in runs):
        raise SystemExit("checks failed")


if __name__ == "__main__":
    main()
