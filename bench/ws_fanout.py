"""Live WebSocket fan-out: one payment's status change to 1,000 connected buyers, daphne vs uvicorn vs
the gateway (``manage.py serve``).

    .venv/bin/python -m bench.ws_fanout [--clients 1000] [--rounds 20] [--concurrency 100]
        [--timeout 5] [--servers daphne,uvicorn,gateway] [--no-compression] [--log-dir DIR]
        [--quick]

``--quick`` is a smoke run: 50 clients, 3 rounds. About 90 s for the default run on 2 cores.

Runs against PostgreSQL and Redis (DATABASE_URL / REDIS_URL, defaulting to the test services) in a
scratch database ``cryptopay_wsfanout_<pid>`` created for the run and dropped at the end, with Redis
keys under a per-run prefix (channel layer, connection registry, queues, cache) deleted at the end.

For each server kind, daphne first, then uvicorn, then the gateway, in the same run:

1. ONE server process is started on ``cryptopay.asgi:application`` (daphne with its defaults;
   uvicorn's bare command line with ``--ws websockets --lifespan off``, as testing/servers.py; the
   gateway, ``manage.py serve`` with ``WEB_CONCURRENCY=1``: uvicorn with the production settings of
   cryptopay/server.py, which is what the Procfile and the container run), with
   the scratch database and the run's Redis prefixes, DEBUG=0, LOG_LEVEL=WARNING and
   ``CRYPTOPAY_WS_MAX_CONNECTIONS_PER_USER=100000``: the per-user cap (default 5) is keyed per
   payment for buyer streams, so with the default every connection after the 5th would evict an
   older one. The cap's bookkeeping (a Redis Lua script per connect, a heartbeat) still runs.
2. A payment is created (a fresh one per server, so its Channels group holds that server's
   connections only) and ``--clients`` WebSocket clients (the ``websockets`` library, asyncio, in
   this process) open ``/ws/payments/<id>/?token=<checkout token>``, at most ``--concurrency`` at a
   time; a client counts as connected once it has read ``{"type": "subscribed"}``. Reported: how
   many connected, the wall time until all had, and each client's own connect time (p50/p99).
   The clients offer permessage-deflate as browsers do (``--no-compression``: they do not);
   the extension each server negotiated is printed.
3. One warm-up round, not counted, then ``--rounds`` rounds. In a worker thread of this process:
   t0, then ``payment_transition`` (pending <-> processing, alternating; the event is written to
   the outbox in the same transaction), then ``dispatch_events`` on that event: the real path of
   the dispatcher, ``channel_layer.group_send`` through channels-redis to the groups
   ``payment.<id>`` and ``merchant.<id>``. The server process is in the group once (its hub,
   ``notifications/hub.py``), so channels-redis puts ONE message on that process's Redis key;
   the hub hands it to the process's consumers of that payment, each of which sends
   ``{"type": "event", "position": P, "event": {...}}`` as the frame the hub encoded once. Each
   client timestamps every frame as it reads it and matches it to the round by the event's id.
   Latency = receipt - t0, for every client and round (``--clients`` x ``--rounds`` samples,
   nearest-rank percentiles). Messages/s = received / (last receipt - t0), averaged over rounds.
   Lost = connected clients that had not received a round's event within ``--timeout`` s (must be
   0); duplicates and unexpected closes are counted too. The next round starts when every client
   has the event (or the timeout passed), after a 0.1 s pause.

Where the time goes is printed per server as medians over rounds, in ms from t0: the status
change committed (write), ``dispatch_events`` returned (dispatched: its group_send, then the
webhook-delivery rows (none here) and ``dispatched_at``, so a first receipt can come before it),
the first and the last receipt; and the mean CPU time per round of this bench process
(getrusage) and of the server process (/proc/<pid>/stat, in 10 ms clock ticks), from just before
t0 until the last receipt.

Caveat: the clients live in this one Python process, and on a small machine (2 cores here) 1,000
sockets of the ``websockets`` library cost real CPU: reading and decoding 1,000 frames is serial
work in one event loop, so the last receipts include client-side queueing. If the bench's CPU per
round comes close to the round's span (last receipt - t0), the client is the bottleneck and the
spread (p99 - p50) says more about the client than about the server; compare the two servers'
server-CPU figures then. The rounds in which this process ran a full garbage collection are
listed with its length and the round's last receipt: such a pause makes every receipt of that
round late, and one late round of twenty is the p99. The worker thread (ORM, a fresh event loop and Redis connection per
``async_to_sync`` call in ``dispatch_events``, as in the dispatcher) shares the client's GIL.

Also printed: what each server logged (daphne's access log is on by default and counted apart),
by phase (start, connect, rounds, close: the bench writes a marker line into the log), with
exception summaries first; and a warning if Redis restarted during a server's run (its run_id
changed), which voids that server's figures. Last, a ``RESULT {json}`` line (bench/results.py)
when that module is present: uvicorn's and the gateway's figures against daphne's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bench.results import emit, figure
from testing.nodes import free_port
from testing.scratch import scratch_environment
from testing.servers import server_command

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("daphne", "uvicorn", "gateway")
MAX_CONNECTIONS_PER_USER = "100000"
PAUSE = 0.1  # seconds between rounds
# daphne's access log (on by default): "127.0.0.1:5555 - - [date] "WSCONNECT /ws/…" - -"
ACCESS_LOG = re.compile(r"^\S+:\d+ - - \[")
MARK = "### ws_fanout phase: "
PHASES = ("start", "connect", "rounds", "close")
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b.*:")


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (the servers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds_of(pid: int) -> float:
    """utime + stime of another process, from /proc (Linux); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, see proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    process: subprocess.Popen
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def mark(self, phase: str) -> None:
        """A line in the server's log (opened for appending by both) where a phase begins."""
        with open(self.log, "a") as log:
            log.write(f"{MARK}{phase}\n")

    def log_by_phase(self) -> list[tuple[str, str]]:
        """(phase, line) for every non-empty line the server logged."""
        phase, lines = "start", []
        for line in self.output().splitlines():
            if line.startswith(MARK):
                phase = line.removeprefix(MARK)
            elif line.strip():
                lines.append((phase, line))
        return lines


@contextmanager
def asgi_server(kind: str, log_dir: Path) -> Iterator[Server]:
    """One server process with this process's (scratch) environment; stopped afterwards."""
    port = free_port()
    log = log_dir / f"{kind}.log"
    environment = {
        **os.environ,
        "CRYPTOPAY_WS_MAX_CONNECTIONS_PER_USER": MAX_CONNECTIONS_PER_USER,
        "PYTHONUNBUFFERED": "1",
        # The gateway runs one worker per core by default; the bench measures ONE process.
        "WEB_CONCURRENCY": "1",
    }
    command = server_command(kind, port)
    # On Linux the server also gets SIGKILL if this process dies, so none outlives a killed bench.
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv:
        command = [setpriv, "--pdeathsig", "KILL", "--", *command]
    with open(log, "ab") as out:
        process = subprocess.Popen(  # noqa: S603 (our own command line, no shell)
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    server = Server(kind=kind, process=process, port=port, log=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{kind} exited with {process.returncode}:\n{server.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not answer within 30 s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- Django work (in one worker thread; Django is set up by scratch_environment) ------------------


def create_payment():
    from decimal import Decimal

    from accounts.services import merchant_create
    from payments.services import payment_create

    merchant = merchant_create(name="WebSocket fan-out bench")
    return payment_create(
        merchant=merchant, fiat_amount=Decimal("100.00"), fiat_currency="USD", crypto_currency="BTC"
    )


@dataclass
class Change:
    event_id: str
    t0: float
    written: float
    sent: float


def change_and_dispatch(payment, to_status: str) -> Change:
    from notifications.dispatcher import dispatch_events
    from notifications.models import Event
    from payments.services import payment_transition

    t0 = time.perf_counter()
    payment_transition(payment=payment, to_status=to_status, reason="websocket fan-out bench")
    written = time.perf_counter()
    event = Event.objects.get(
        owner=payment.merchant.public_id, subject=payment.public_id, sequence=payment.event_sequence
    )
    dispatched = dispatch_events(event_ids=[event.pk])
    sent = time.perf_counter()
    assert dispatched == 1, f"event {event.public_id} was not dispatched"
    return Change(event_id=event.public_id, t0=t0, written=written, sent=sent)


def close_db() -> None:
    from django.db import connections

    connections.close_all()


# --- the clients ----------------------------------------------------------------------------------


@dataclass
class Receipts:
    """Every event frame any client read, by event id, as (client, perf_counter at read)."""

    expected: int = 0
    arrivals: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    clients: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    complete: dict[str, asyncio.Event] = field(default_factory=dict)
    closed: list[tuple[int, int | None, str]] = field(default_factory=list)
    other: list[dict] = field(default_factory=list)

    def done(self, event_id: str) -> asyncio.Event:
        if event_id not in self.complete:
            self.complete[event_id] = asyncio.Event()
            if len(self.clients[event_id]) >= self.expected:
                self.complete[event_id].set()
        return self.complete[event_id]

    def record(self, client: int, at: float, message: dict) -> None:
        if message.get("type") != "event":
            self.other.append(message)
            return
        event_id = message["event"]["id"]
        self.arrivals[event_id].append((client, at))
        self.clients[event_id].add(client)
        if len(self.clients[event_id]) >= self.expected and event_id in self.complete:
            self.complete[event_id].set()


async def open_client(url: str, index: int, gate: asyncio.Semaphore, compression: str | None):
    from websockets.asyncio.client import connect

    async with gate:
        started = time.perf_counter()
        ws = await connect(url, open_timeout=60, ping_interval=None, compression=compression)
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            if first.get("type") != "subscribed":
                raise RuntimeError(f"client {index}: expected subscribed, got {first}")
        except BaseException:
            await ws.close()
            raise
        return ws, time.perf_counter() - started


async def read_client(ws, index: int, receipts: Receipts) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        # Ends without an exception on a normal close (1000, 1001), raises on any other.
        async for raw in ws:
            at = time.perf_counter()
            receipts.record(index, at, json.loads(raw))
    except ConnectionClosed:
        pass
    # Only the server closes during the rounds (the readers are cancelled before the bench does).
    receipts.closed.append((index, ws.close_code, ws.close_reason or ""))


# --- one server -----------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    clients: int
    connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_wall: float = 0.0
    connect_each: list[float] = field(default_factory=list)
    extensions: str = ""
    latencies: list[float] = field(default_factory=list)  # ms, sorted
    rates: list[float] = field(default_factory=list)
    lost: int = 0
    duplicates: int = 0
    closed: list[tuple[int, int | None, str]] = field(default_factory=list)
    other_messages: list[dict] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)
    last_ms: list[float] = field(default_factory=list)
    bench_cpu_ms: list[float] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)
    log_lines: list[tuple[str, str]] = field(default_factory=list)  # (phase, line)
    redis_restarted: bool = False
    # Per measured round with a pause: (round, ms in full collections of this process, last rx ms)
    client_gc: list[tuple[int, float, float]] = field(default_factory=list)


class FullCollections:
    """Time this process spends in full (generation 2) garbage collections: the clients live
    here, and a pause of theirs makes every receipt of the round late."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def start(self) -> None:
        gc.callbacks.append(self._note)

    def stop(self) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


async def measure(server: Server, args: argparse.Namespace, db: ThreadPoolExecutor) -> Result:
    loop = asyncio.get_running_loop()
    result = Result(kind=server.kind, clients=args.clients)
    payment = await loop.run_in_executor(db, create_payment)
    url = (
        f"ws://127.0.0.1:{server.port}/ws/payments/{payment.public_id}/"
        f"?token={payment.checkout_token}"
    )
    compression = None if args.no_compression else "deflate"

    gate = asyncio.Semaphore(args.concurrency)
    server.mark("connect")
    started = time.perf_counter()
    opened = await asyncio.gather(
        *(open_client(url, i, gate, compression) for i in range(args.clients)),
        return_exceptions=True,
    )
    result.connect_wall = time.perf_counter() - started
    sockets = []
    for outcome in opened:
        if isinstance(outcome, BaseException):
            result.connect_errors.append(f"{type(outcome).__name__}: {outcome}")
        else:
            sockets.append(outcome[0])
            result.connect_each.append(outcome[1])
    result.connected = len(sockets)
    if sockets:
        offered = sockets[0].response.headers.get("Sec-WebSocket-Extensions")
        result.extensions = offered or "none"

    receipts = Receipts(expected=len(sockets))
    readers = [asyncio.create_task(read_client(ws, i, receipts)) for i, ws in enumerate(sockets)]
    status = ("processing", "pending")
    server.mark("rounds")
    collections = FullCollections()
    collections.start()
    try:
        for n in range(args.rounds + 1):  # round 0 warms up and is not counted
            collected_before = collections.total
            cpu_before = cpu_seconds_self()
            server_before = cpu_seconds_of(server.process.pid)
            change = await loop.run_in_executor(db, change_and_dispatch, payment, status[n % 2])
            with suppress(TimeoutError):
                await asyncio.wait_for(receipts.done(change.event_id).wait(), args.timeout)
            cpu = cpu_seconds_self() - cpu_before
            server_cpu = cpu_seconds_of(server.process.pid) - server_before
            arrivals = receipts.arrivals[change.event_id]
            by_client = {client for client, _ in arrivals}
            if n == 0:
                await asyncio.sleep(PAUSE)
                continue
            result.lost += len(sockets) - len(by_client)
            result.duplicates += len(arrivals) - len(by_client)
            times = [at for _, at in arrivals]
            result.latencies.extend((at - change.t0) * 1000 for at in times)
            result.write_ms.append((change.written - change.t0) * 1000)
            result.send_ms.append((change.sent - change.t0) * 1000)
            if times:
                first, last = min(times), max(times)
                result.first_ms.append((first - change.t0) * 1000)
                result.last_ms.append((last - change.t0) * 1000)
                result.rates.append(len(by_client) / (last - change.t0))
            result.bench_cpu_ms.append(cpu * 1000)
            result.server_cpu_ms.append(server_cpu * 1000)
            paused = (collections.total - collected_before) * 1000
            if paused:
                last_rx = result.last_ms[-1] if times else math.nan
                result.client_gc.append((n, paused, last_rx))
            await asyncio.sleep(PAUSE)
    finally:
        collections.stop()
        result.closed = list(receipts.closed)
        result.other_messages = list(receipts.other)
        server.mark("close")
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(
            *(asyncio.wait_for(ws.close(), 10) for ws in sockets), return_exceptions=True
        )
    result.latencies.sort()
    return result


def redis_run_id() -> str:
    """Redis's run id: it changes when Redis restarts (which loses the channel layer's groups)."""
    import redis

    try:
        return str(redis.Redis.from_url(os.environ["REDIS_URL"]).info("server")["run_id"])
    except redis.RedisError as exc:
        return f"unreachable ({exc})"


def run_server(
    kind: str, args: argparse.Namespace, log_dir: Path, db: ThreadPoolExecutor
) -> Result:
    redis_before = redis_run_id()
    with asgi_server(kind, log_dir) as server:
        result = asyncio.run(measure(server, args, db))
        time.sleep(0.5)  # let the server log what the closes did
    result.redis_restarted = redis_run_id() != redis_before
    result.log_lines = server.log_by_phase()
    return result


# --- report ---------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def summary(result: Result) -> dict[str, float]:
    lat = result.latencies
    each = sorted(result.connect_each)
    return {
        "connect_s": result.connect_wall,
        "connect_p50": percentile(each, 0.50) * 1000 if each else float("nan"),
        "connect_p99": percentile(each, 0.99) * 1000 if each else float("nan"),
        "p50": percentile(lat, 0.50) if lat else float("nan"),
        "p95": percentile(lat, 0.95) if lat else float("nan"),
        "p99": percentile(lat, 0.99) if lat else float("nan"),
        "max": lat[-1] if lat else float("nan"),
        "rate": statistics.mean(result.rates) if result.rates else float("nan"),
    }


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\nWebSocket fan-out: one payment's status change to {args.clients:,} clients of its "
        f"stream, {args.rounds} rounds (+1 warm-up), one server process each; "
        f"cap raised to {MAX_CONNECTIONS_PER_USER}"
    )
    print(
        f"Machine: {os.cpu_count()} CPUs, 1-min load average {args.load_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end (other work on the machine skews every figure)"
    )
    print(f"Connect (bounded to {args.concurrency} at a time; connected = read 'subscribed')")
    print(
        f"  {'server':8} {'connected':>10} {'wall s':>7} {'conn/s':>7} {'each p50 ms':>12} "
        f"{'each p99 ms':>12}  negotiated extension"
    )
    sums = {r.kind: summary(r) for r in results}
    for r in results:
        s = sums[r.kind]
        print(
            f"  {r.kind:8} {r.connected:>5}/{r.clients:<4} {s['connect_s']:7.2f} "
            f"{r.connected / s['connect_s']:7.0f} {s['connect_p50']:12.1f} "
            f"{s['connect_p99']:12.1f}  {r.extensions}"
        )
    print("Latency, status change (t0, before the transaction) -> each client's receipt, ms")
    print(
        f"  {'server':8} {'samples':>8} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} "
        f"{'msgs/s':>8} {'lost':>5} {'dup':>4} {'closed':>6}"
    )
    for r in results:
        s = sums[r.kind]
        print(
            f"  {r.kind:8} {len(r.latencies):8d} {s['p50']:8.1f} {s['p95']:8.1f} {s['p99']:8.1f} "
            f"{s['max']:8.1f} {s['rate']:8.0f} {r.lost:5d} {r.duplicates:4d} {len(r.closed):6d}"
        )
    base = results[0]

    def ratio(other: Result, key: str) -> str:
        a, b = sums[base.kind][key], sums[other.kind][key]
        return f"{b / a:.2f}x" if a else "n/a"

    for compared in results[1:]:
        # /proc counts CPU in 10 ms ticks: a quick run's rounds can cost the base server none.
        base_cpu = mean(base.server_cpu_ms)
        cpu = f"{mean(compared.server_cpu_ms) / base_cpu:.2f}x" if base_cpu else "n/a"
        print(
            f"  {compared.kind}/{base.kind}: p50 {ratio(compared, 'p50')}, "
            f"p95 {ratio(compared, 'p95')}, p99 {ratio(compared, 'p99')}, "
            f"max {ratio(compared, 'max')}, msgs/s {ratio(compared, 'rate')}, "
            f"connect wall {ratio(compared, 'connect_s')}, server CPU per round {cpu}"
        )
    print("Where the time goes: median per round, ms from t0; CPU ms per round (mean)")
    print(
        f"  {'server':8} {'write':>7} {'dispatched':>10} {'first rx':>9} {'last rx':>8} "
        f"{'bench CPU':>10} {'server CPU':>11}"
    )
    for r in results:
        print(
            f"  {r.kind:8} {median(r.write_ms):7.1f} {median(r.send_ms):10.1f} "
            f"{median(r.first_ms):9.1f} {median(r.last_ms):8.1f} "
            f"{mean(r.bench_cpu_ms):10.1f} {mean(r.server_cpu_ms):11.1f}"
        )
    print("  (bench CPU close to 'last rx' = the client process was saturated; see the docstring)")
    print("The clients' own full garbage collections during measured rounds (this process)")
    for r in results:
        rounds = ", ".join(
            f"round {n}: {ms:.0f} ms, last rx {last:.0f} ms" for n, ms, last in r.client_gc
        )
        print(f"  {r.kind:8} {len(r.client_gc)} of {len(r.bench_cpu_ms)} rounds  {rounds}")
    for r in results:
        notes = []
        if r.redis_restarted:
            notes.append("REDIS RESTARTED during this server's run (something else did it): void")
        if r.connect_errors:
            kinds = sorted(set(r.connect_errors))
            notes.append(f"{len(r.connect_errors)} connect errors, e.g. {kinds[0][:200]}")
        if r.other_messages:
            types = Counter(str(m.get("type")) for m in r.other_messages)
            notes.append(f"non-event messages after 'subscribed': {dict(types)}")
        if r.closed:
            codes = sorted({code for _, code, _ in r.closed}, key=str)
            notes.append(f"{len(r.closed)} connections closed by the server (codes {codes})")
        access = [line for _, line in r.log_lines if ACCESS_LOG.match(line)]
        other = [(phase, line) for phase, line in r.log_lines if not ACCESS_LOG.match(line)]
        phases = Counter(phase for phase, _ in other)
        by_phase = ", ".join(f"{phase} {phases[phase]}" for phase in PHASES if phases[phase])
        notes.append(
            f"server log: {len(access)} access-log lines; other lines by phase: {by_phase or 0}"
        )
        # Exception summaries ("KeyError: …") first, then the rest, each distinct line once.
        counts = Counter(other)
        shown = [item for item in counts if EXCEPTION_LINE.match(item[1])][:5]
        shown += [item for item in counts if item not in shown][: max(0, 5 - len(shown))]
        for phase, line in shown:
            notes.append(
                f"  | [{phase}] {line[:150]}"
                + (f"  (x{counts[phase, line]})" if counts[phase, line] > 1 else "")
            )
        for note in notes:
            print(f"  {r.kind}: {note}")


def emit_result(results: list[Result]) -> None:
    """The machine-readable line (bench/results.py): each server's figures against daphne's."""
    base = results[0].kind
    figures = []
    for r in results:
        s = summary(r)
        for metric, value, unit, better in (
            ("p50 latency", s["p50"], "ms", "lower"),
            ("p99 latency", s["p99"], "ms", "lower"),
            ("messages per second", s["rate"], "msg/s", "higher"),
            ("connect wall time", s["connect_s"], "s", "lower"),
        ):
            baseline = None if r.kind == base else f"{base}: {metric}"
            figures.append(
                figure(f"{r.kind}: {metric}", value, unit, baseline=baseline, better=better)
            )
        figures.append(figure(f"{r.kind}: lost messages", r.lost, "messages", baseline=None))
    emit("ws_fanout", figures, clients=results[0].clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients per server")
    parser.add_argument("--rounds", type=int, default=20, help="status changes measured")
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight at most")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait per round")
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated: daphne,uvicorn,gateway"
    )
    parser.add_argument(
        "--no-compression", action="store_true", help="clients do not offer permessage-deflate"
    )
    parser.add_argument(
        "--log-dir", help="keep the servers' logs here (default: a temporary directory, removed)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 clients, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rounds = 50, 3
    kinds = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    unknown = set(kinds) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")

    args.load_start = os.getloadavg()[0]
    limit = raise_fd_limit(args.clients * 2 + 256)
    if limit < args.clients + 64:
        print(f"warning: open-files limit {limit} is low for {args.clients} clients")

    # A dev-chain address for the payment (no node is needed; nothing is watched).
    with scratch_environment("wsfanout", {"CRYPTOPAY_DEV_CHAIN": "1"}):
        db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-db")
        try:
            with tempfile.TemporaryDirectory(prefix="ws_fanout-") as temporary:
                logs = Path(args.log_dir or temporary)
                logs.mkdir(parents=True, exist_ok=True)
                results = []
                for kind in kinds:
                    print(f"{kind}: {args.clients} clients, {args.rounds} rounds ...", flush=True)
                    results.append(run_server(kind, args, logs, db))
                report(results, args)
                emit_result(results)
                if args.log_dir:
                    print(f"Server logs: {logs}/<server>.log")
        finally:
            db.submit(close_db).result()
            db.shutdown()


if __name__ == "__main__":
    main()
