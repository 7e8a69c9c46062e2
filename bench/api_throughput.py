"""API throughput over HTTP: payments created per second and p50/p99, with and without the
resilience layers, on daphne and on uvicorn, in one run.

    .venv/bin/python -m bench.api_throughput [--clients 16] [--warmup 5] [--duration 20]
        [--latency-clients 1] [--latency-duration 10] [--servers daphne,uvicorn]
        [--conn-max-age N] [--quick]

Needs wrk (``make bench`` installs Debian's with ``make wrk``), PostgreSQL and Redis
(DATABASE_URL / REDIS_URL, defaulting to the test services). Runs in a scratch database
``cryptopay_apithroughput_<pid>`` created, migrated and dropped, with Redis keys under a per-run
prefix deleted at the end (testing/scratch.py). One merchant and one API key (all scopes) are made
with ``payments.services`` in that database.

For each server kind (daphne, then uvicorn) and each variant, ONE server process is started on
``cryptopay.asgi:application`` with the commands of testing/servers.py (daphne with its defaults, as
the Procfile runs it; uvicorn ``--ws websockets --lifespan off --log-level warning``, one worker),
DEBUG=0, LOG_LEVEL=WARNING, dev-chain deposit addresses, and the bench-only settings module
bench/api_throughput_settings.py: ``cryptopay.settings`` unchanged except its URLconf
(bench/api_throughput_urls.py), which serves every production route plus one bench route. Then
wrk loads it (2 threads): a warm-up of ``--warmup`` s, a measured run of ``--duration`` s with
``--clients`` keep-alive connections (closed loop: each sends its next request when the previous
answer arrives), and an unloaded run of ``--latency-duration`` s with ``--latency-clients``.
Every request is ``POST {"amount": "19.99", "crypto_currency": "LTC", "order_id": <unique>}``
with a Bearer key.

The two variants, an honest comparison (same server, same database, same settings and middleware,
same authentication, serializer and service code; one server process at a time):

  with      POST /api/v1/payments, the production route: a unique ``Idempotency-Key`` per request,
            so every request goes through the idempotency gate (Redis claim, PostgreSQL key row in
            the payment's transaction, response cached) and executes; quotes priced from live rates
            through the tiered rate cache (a fake exchange on 127.0.0.1 answers kraken, coinbase
            and bitstamp; the first quote is fetched live through each provider's retries and
            circuit breaker, later ones are Redis cache hits) under the production policy
            (RATES_ALLOW_STATIC_FALLBACK off).
  without   POST /api/bench/v1/payments: the same view class with ``post`` replaced by the function
            the ``@idempotent()`` decorator wraps (no gate: no Redis claim, no key row, no cached
            response), and no rate providers configured, so the quote is the static fallback rate
            straight from settings (no tiered cache, no breaker, no Redis read).
            The IdempotencyMiddleware stays installed in both (it only acts on
            CRYPTOPAY_IDEMPOTENCY_PATHS, empty by default: a pass-through).

The circuit breakers on this path guard the rate providers: with a warm cache (RATE_CACHE_TTL
300 s) they run once per pair per TTL, not per request, so "with" costs them nothing per request
after the first; bench/breaker_overhead.py measures a breaker call itself. Nothing in production
code was changed or toggled for this bench.

Checked after each run (a failed check is printed and makes the exit status 1): every answer
was a 201 and no socket error occurred; in the database, payments of the run >= 201 answers (and
at most ``--clients`` more: requests still in flight when wrk stopped), every "with" payment
priced from ``live``/``cache`` and owning an idempotency key row, every "without" payment priced
from ``fallback``; the server logged no warning or error (the most common ones are printed). Also
printed: the quotes by level and the peak number of PostgreSQL connections to the scratch
database while each server ran (sampled every 0.25 s).

``--conn-max-age N`` runs the servers with CONN_MAX_AGE=N instead of the production setting (60 s):
a declared deviation, printed as such, for measuring a candidate fix. Under ASGI, Django runs each
request's sync code in a thread of its own, so a persistent connection is tied to a thread that
ends with the request and is never reused: with 60 s one server process held ~97 connections under
16 clients here and met PostgreSQL's max_connections (100): 503 "database briefly unavailable".

Reading the figures: the server is one Python process (the GIL: about one core of this 2-core
machine), PostgreSQL and wrk share the other core. All payments belong to one merchant, so the
per-merchant address index (a row lock held until commit) serializes their inserts, as it would for
one busy shop. Under ``--clients`` concurrent clients latency is mostly queueing (clients /
throughput); the unloaded run shows what one request costs end to end, where the specification's
"< 5 ms resilience overhead" is judged.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.results import emit, figure
from testing.scratch import scratch_environment

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SERVERS = ("daphne", "uvicorn")
VARIANTS = ("without", "with")
PATHS = {"with": "/api/v1/payments", "without": "/api/bench/v1/payments"}
PROVIDERS = ("kraken", "coinbase", "bitstamp")
WRK_THREADS = 2
WRK_TIMEOUT = "10s"

WRK_SCRIPT = r"""
-- Generated by bench/api_throughput.py: one payment per request, unique order_id (and key).
local path, secret, prefix, keyed = "%(path)s", "%(secret)s", "%(prefix)s", %(keyed)s
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  n = 0
  statuses = {}
  samples = {}
end

function request()
  n = n + 1
  local id = prefix .. "-" .. tid .. "-" .. n
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. secret}
  if keyed then headers["Idempotency-Key"] = id end
  local body = '{"amount":"19.99","crypto_currency":"LTC","order_id":"' .. id .. '"}'
  return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if status ~= 201 and not samples[k] then
    samples[k] = string.gsub(string.sub(body or "", 1, 300), '[%%c"\\]', " ")
  end
end

function done(summary, latency, requests)
  local counts, bodies = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses") or {}) do counts[k] = (counts[k] or 0) + v end
    for k, v in pairs(thread:get("samples") or {}) do bodies[k] = v end
  end
  local parts, examples = {}, {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%%s":%%d', k, v)) end
  for k, v in pairs(bodies) do table.insert(examples, string.format('"%%s":"%%s"', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us":%%d,"requests":%%d,"errors":{"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d},"statuses":{%%s},"examples":{%%s},"latency_us":{"min":%%d,' ..
    '"max":%%d,"mean":%%.1f,"p50":%%d,"p90":%%d,"p99":%%d}}\n',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ","), table.concat(examples, ","), latency.min, latency.max, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass
class Load:
    """One wrk run."""

    clients: int
    seconds: float
    requests: int
    created: int
    statuses: dict[str, int]
    examples: dict[str, str]
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    server_cpu_s: float
    prefix: str
    rate_sources: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.created / self.seconds

    @property
    def server_cpu_share(self) -> float:
        """Server CPU time / wall time: 1.0 = one core busy all along."""
        return self.server_cpu_s / self.seconds

    def problems(self) -> list[str]:
        found = [
            f"{count} x HTTP {s} (e.g. {self.examples.get(s, '')[:160]!r})"
            for s, count in sorted(self.statuses.items())
            if s != "201"
        ]
        found += [f"{count} socket {kind} errors" for kind, count in self.errors.items() if count]
        return found


@dataclass
class Phase:
    server: str
    variant: str
    loaded: Load | None = None
    unloaded: Load | None = None
    checks: list[str] = field(default_factory=list)
    peak_connections: int = 0


class ConnectionWatch:
    """Peak number of PostgreSQL connections to the scratch database while active, sampled
    every 0.25 s over a connection of its own (counted in; so is the bench's own one)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg
        from django.db import connection

        params = connection.get_connection_params()
        with psycopg.connect(**params, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                ).fetchone()
                self.peak = max(self.peak, row[0] if row else 0)
                self._stop.wait(0.25)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def cpu_seconds_of(pid: int) -> float:
    """utime + stime of a process from /proc (Linux); NaN elsewhere."""
    try:
        # The fields after the command name (which may hold spaces), utime and stime: 14 and 15.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy so far (Linux ``/proc/stat``): with
    the server, PostgreSQL, Redis and the load generator in it, whether a process is limited by
    itself or by the machine."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: run `make wrk` (or `make bench`)")
    return found


def run_wrk(
    *,
    base_url: str,
    server_pid: int,
    path: str,
    secret: str,
    prefix: str,
    keyed: bool,
    clients: int,
    seconds: int,
    scripts: Path,
) -> Load:
    script = scripts / f"{prefix}.lua"
    script.write_text(
        WRK_SCRIPT
        % {"path": path, "secret": secret, "prefix": prefix, "keyed": "true" if keyed else "false"}
    )
    threads = max(1, min(WRK_THREADS, clients))
    command = [
        wrk_binary(), "-t", str(threads), "-c", str(clients), "-d", f"{seconds}s",
        "--timeout", WRK_TIMEOUT, "-s", str(script), base_url,
    ]  # fmt: skip
    cpu_before = cpu_seconds_of(server_pid)
    done = subprocess.run(  # noqa: S603 (our own command line, no shell)
        command, capture_output=True, text=True, timeout=seconds + 120
    )
    cpu_after = cpu_seconds_of(server_pid)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line[len("WRK_JSON ") :])
    latency = data["latency_us"]
    duration = data["duration_us"] / 1e6
    return Load(
        clients=clients,
        seconds=duration,
        requests=data["requests"],
        created=data["statuses"].get("201", 0),
        statuses=data["statuses"],
        examples=data["examples"],
        errors=data["errors"],
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        mean_ms=latency["mean"] / 1000,
        server_cpu_s=cpu_after - cpu_before,
        prefix=prefix,
    )


def variant_environment(
    variant: str, exchange_url: str, conn_max_age: int | None = None
) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.api_throughput_settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "CRYPTOPAY_DEV_CHAIN": "1",
    }
    if conn_max_age is not None:
        env["BENCH_CONN_MAX_AGE"] = str(conn_max_age)
    if variant == "with":
        env["CRYPTOPAY_RATE_PROVIDERS"] = ",".join(PROVIDERS)
        env["CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK"] = "0"
        for name in PROVIDERS:
            env[f"CRYPTOPAY_RATE_{name.upper()}_URL"] = exchange_url
    else:
        env["CRYPTOPAY_RATE_PROVIDERS"] = ""
        env["CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK"] = "1"
    return env


def check_phase(phase: Phase, merchant: Any, clients: int) -> list[str]:
    """Database-side checks of what the loads reported; returns the failures."""
    from django.db.models import Count

    from payments.models import Payment
    from resilience.models import IdempotencyKey

    failures = []
    for load in filter(None, (phase.loaded, phase.unloaded)):
        rows = Payment.objects.filter(merchant=merchant, order_id__startswith=f"{load.prefix}-")
        stored = rows.count()
        if not load.created <= stored <= load.created + load.clients:
            failures.append(f"{load.prefix}: {stored} payments stored, {load.created} answered 201")
        counts = dict(
            rows.values("rate_source").annotate(n=Count("id")).values_list("rate_source", "n")
        )
        load.rate_sources = counts
        sources = set(counts)
        expected = {"live", "cache"} if phase.variant == "with" else {"fallback"}
        if not sources <= expected:
            failures.append(f"{load.prefix}: rate sources {sorted(sources)}, not {expected}")
        keys = IdempotencyKey.objects.filter(key__startswith=f"{load.prefix}-").count()
        if phase.variant == "with" and keys != stored:
            failures.append(f"{load.prefix}: {keys} idempotency keys for {stored} payments")
        if phase.variant == "without" and keys:
            failures.append(f"{load.prefix}: {keys} idempotency keys without the layer")
    return failures


def prime(base_url: str, path: str, secret: str, *, keyed: bool, order_id: str) -> None:
    """One request alone before the load: the first quote of a "with" server is fetched live,
    and concurrent creates meanwhile would find neither a cached nor an emergency rate (a
    retryable 503 under the production policy); the bench measures the warm path."""
    import httpx

    headers = {"Authorization": f"Bearer {secret}"}
    if keyed:
        headers["Idempotency-Key"] = order_id
    body = {"amount": "19.99", "crypto_currency": "LTC", "order_id": order_id}
    answer = httpx.post(base_url + path, json=body, headers=headers, timeout=30)
    if answer.status_code != 201:
        raise SystemExit(f"first request: HTTP {answer.status_code} {answer.text[:300]}")


def run_phase(
    phase: Phase, *, args: argparse.Namespace, secret: str, exchange_url: str, logs: Path
) -> None:
    from testing.servers import asgi_server

    env = variant_environment(phase.variant, exchange_url, args.conn_max_age)
    keyed = phase.variant == "with"
    tag = f"{phase.server[0]}-{phase.variant}-{os.getpid()}-"
    with asgi_server(logs, kind=phase.server, env=env) as server, ConnectionWatch() as watch:
        load = functools.partial(
            run_wrk,
            base_url=server.base_url,
            server_pid=server.process.pid,
            path=PATHS[phase.variant],
            secret=secret,
            keyed=keyed,
            scripts=logs,
        )
        prime(server.base_url, PATHS[phase.variant], secret, keyed=keyed, order_id=f"{tag}p")
        if args.warmup > 0:
            warm = load(prefix=f"{tag}w", clients=args.clients, seconds=args.warmup)
            if warm.problems():
                phase.checks.append(f"warm-up: {', '.join(warm.problems())}")
        phase.loaded = load(prefix=f"{tag}l", clients=args.clients, seconds=args.duration)
        phase.unloaded = load(
            prefix=f"{tag}u", clients=args.latency_clients, seconds=args.latency_duration
        )
        phase.peak_connections = watch.peak
        for label, run in (("loaded", phase.loaded), ("unloaded", phase.unloaded)):
            if run.problems():
                phase.checks.append(f"{label}: {', '.join(run.problems())}")
        if server.process.poll() is not None:
            phase.checks.append(f"{phase.server} exited with {server.process.returncode}")
        troubles = server_log_troubles(server.output())
        if troubles:
            total = sum(troubles.values())
            most = "; ".join(f"{n} x {m}" for m, n in troubles.most_common(3))
            phase.checks.append(f"server log: {total} warnings/errors, most common: {most}")


def server_log_troubles(output: str) -> Counter[str]:
    """WARNING and ERROR lines of a server's log by message (JSON log lines; the exception's
    own text where the message carries it), numbers and ids blanked so alike ones add up."""
    found: Counter[str] = Counter()
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line or "ERROR" in line:
                found[line[:200]] += 1
            continue
        if not isinstance(record, dict) or record.get("level") not in ("WARNING", "ERROR"):
            continue
        message = str(record.get("message", ""))
        found[re.sub(r"\b[0-9a-f]{8,}\b|\d+", "N", message)[:200]] += 1
    return found


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min)"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def report(phases: list[Phase], args: argparse.Namespace, load_start: str) -> None:
    print(
        f"\nAPI throughput: POST payments over HTTP, wrk {WRK_THREADS} threads, "
        f"{args.clients} clients x {args.duration:g} s (after {args.warmup:g} s warm-up), then "
        f"{args.latency_clients} client(s) x {args.latency_duration:g} s; one server process"
    )
    print(f"Machine: {os.cpu_count()} CPUs; {load_start} at start, {machine_load()} at end")
    if args.conn_max_age is not None:
        print(
            f"DEVIATION from production settings: CONN_MAX_AGE={args.conn_max_age} (--conn-max-age)"
        )
    header = (
        f"  {'server':8} {'variant':8} {'clients':>7} {'created/s':>10} {'p50 ms':>8} "
        f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'server CPU':>10}  quotes by level"
    )
    print(header)
    for phase in phases:
        for load in (phase.loaded, phase.unloaded):
            assert load is not None
            print(
                f"  {phase.server:8} {phase.variant:8} {load.clients:7d} {load.rate:10.1f} "
                f"{load.p50_ms:8.2f} {load.p90_ms:8.2f} {load.p99_ms:8.2f} {load.max_ms:8.1f} "
                f"{load.server_cpu_share * 100:9.0f}%  "
                + ", ".join(f"{k} {v}" for k, v in sorted(load.rate_sources.items()))
            )
    print(
        "  peak PostgreSQL connections to the scratch database while each server ran (2 are "
        "the bench's own; the server's max_connections is shared by everything on it): "
        + ", ".join(f"{p.server}/{p.variant} {p.peak_connections}" for p in phases)
    )
    for phase in phases:
        for note in phase.checks:
            print(f"  CHECK FAILED {phase.server}/{phase.variant}: {note}")
    by = {(p.server, p.variant): p for p in phases}
    print("With the layers / without (same server):")
    for server in dict.fromkeys(p.server for p in phases):
        with_, without = by.get((server, "with")), by.get((server, "without"))
        if not (with_ and without):
            continue
        a, b = with_.loaded, without.loaded
        ua, ub = with_.unloaded, without.unloaded
        assert a and b and ua and ub
        print(
            f"  {server:8} {args.clients} clients: created/s {ratio(a.rate, b.rate)}, "
            f"p50 {ratio(a.p50_ms, b.p50_ms)}, p99 {ratio(a.p99_ms, b.p99_ms)}; "
            f"{args.latency_clients} client(s): overhead p50 {ua.p50_ms - ub.p50_ms:+.2f} ms, "
            f"p99 {ua.p99_ms - ub.p99_ms:+.2f} ms (goal: < 5 ms)"
        )
    if all((s, v) in by for s in SERVERS for v in VARIANTS):
        print("uvicorn / daphne (same variant):")
        for variant in VARIANTS:
            u, d = by[("uvicorn", variant)].loaded, by[("daphne", variant)].loaded
            assert u and d
            print(
                f"  {variant:8} created/s {ratio(u.rate, d.rate)}, "
                f"p50 {ratio(u.p50_ms, d.p50_ms)}, p99 {ratio(u.p99_ms, d.p99_ms)}"
            )
    emit("api_throughput", result_figures(phases, args))


def result_figures(phases: list[Phase], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each "with" figure against "without" on the same server; uvicorn against daphne."""
    figures = []
    servers = [p.server for p in phases]
    for phase in phases:
        loaded, unloaded = phase.loaded, phase.unloaded
        assert loaded and unloaded
        name = f"{phase.server} {phase.variant}"

        def baselines(metric: str, phase: Phase = phase) -> list[str] | None:
            found = []
            if phase.variant == "with":
                found.append(f"{phase.server} without: {metric}")
            if phase.server == "uvicorn" and "daphne" in servers:
                found.append(f"daphne {phase.variant}: {metric}")
            return found or None

        c, u = args.clients, args.latency_clients
        for metric, value, unit, better in (
            (f"created/s, {c} clients", loaded.rate, "payments/s", "higher"),
            (f"p50, {c} clients", loaded.p50_ms, "ms", "lower"),
            (f"p99, {c} clients", loaded.p99_ms, "ms", "lower"),
            (f"p50, {u} client", unloaded.p50_ms, "ms", "lower"),
            (f"p99, {u} client", unloaded.p99_ms, "ms", "lower"),
        ):
            figures.append(
                figure(f"{name}: {metric}", value, unit, baseline=baselines(metric), better=better)
            )
        metric = "peak DB connections"
        figures.append(
            figure(
                f"{name}: {metric}",
                phase.peak_connections,
                "connections",
                baseline=baselines(metric),
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    # wrk takes whole seconds.
    parser.add_argument("--warmup", type=int, default=5, help="seconds, not measured")
    parser.add_argument("--duration", type=int, default=20, help="seconds measured")
    parser.add_argument("--latency-clients", type=int, default=1)
    parser.add_argument("--latency-duration", type=int, default=10, help="seconds measured")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument(
        "--conn-max-age",
        type=int,
        help="override the servers' CONN_MAX_AGE (a deviation from production, printed; for "
        "measuring a candidate fix)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 4 clients, no warm-up, 2 s + 1 s"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.warmup, args.duration, args.latency_duration = 4, 0, 2, 1
    kinds = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    if set(kinds) - set(SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(set(kinds) - set(SERVERS)))}")
    wrk_binary()
    load_start = machine_load()

    with scratch_environment("apithroughput", {"CRYPTOPAY_DEV_CHAIN": "1"}):
        from django.db import connections

        from accounts import services
        from accounts.models import ApiKeyScope
        from testing.exchanges import FakeExchanges

        merchant = services.merchant_create(name="bench")
        _, secret = services.api_key_create(
            merchant=merchant, name="bench", scopes=list(ApiKeyScope.values)
        )
        # Order alternates between servers, so drift (table growth, the machine's other work)
        # does not always favour the same variant.
        phases = []
        for i, kind in enumerate(kinds):
            order = VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))
            phases += [Phase(server=kind, variant=variant) for variant in order]
        with FakeExchanges() as exchange, tempfile.TemporaryDirectory(prefix="api-") as logs:
            for phase in phases:
                print(f"{phase.server} {phase.variant} ...", flush=True)
                run_phase(
                    phase, args=args, secret=secret, exchange_url=exchange.base_url, logs=Path(logs)
                )
                phase.checks += check_phase(phase, merchant, args.clients)
        connections.close_all()
        phases.sort(key=lambda p: (kinds.index(p.server), VARIANTS.index(p.variant)))
        report(phases, args, load_start)
        failed = [note for phase in phases for note in phase.checks]
    if failed:
        raise SystemExit(f"{len(failed)} check(s) failed")


if __name__ == "__main__":
    main()
