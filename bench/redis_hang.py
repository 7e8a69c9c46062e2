"""Payment creates through the production server while Redis hangs, with and without the hold.

    .venv/bin/python -m bench.redis_hang [--clients 4] [--seconds 8] [--quick]

A Redis that hangs accepts connections and answers nothing (a frozen host, a partition that drops
packets). The gateway's Redis clients then wait out their socket timeouts; with the hold
(resilience/redis_client.py), the first timeout makes every later call of that process fail at
once for CRYPTOPAY_REDIS_TIMEOUT_HOLD_SECONDS, and the callers' fallbacks answer.

One server (``manage.py serve``, one worker, production settings, live rates from a fake exchange
on 127.0.0.1 through the tiered cache) reaches Redis through testing/faultproxy.py. ``--clients``
threads create payments (a unique Idempotency-Key and order_id each) for ``--seconds`` in each
phase, each thread waiting for its answer before sending the next:

  healthy     Redis answers (the baseline);
  hung        Redis black-holed, the server with its default hold;
  hung, no hold
              Redis black-holed, a server whose hold is 0 s: every call waits out its own
              timeout, as before holds existed.

Each hung phase starts on a server that has made a payment while Redis answered (rates cached,
connections open). Printed per phase: creates/s, p50, p99 and the answers' statuses; figures for
bench/report.py compare each hung phase with the healthy one. Needs PostgreSQL and Redis
(DATABASE_URL / REDIS_URL, defaulting to the test services); a scratch database is created,
migrated and dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.api_capacity import server_env
from bench.results import emit, figure
from testing.scratch import DEFAULT_REDIS_URL, scratch_environment

PHASES = ("healthy", "hung", "hung, no hold")


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000


def create(http: httpx.Client, base_url: str, secret: str) -> int:
    key = uuid.uuid4().hex
    answer = http.post(
        f"{base_url}/api/v1/payments",
        json={"amount": "19.99", "crypto_currency": "LTC", "order_id": key},
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": key},
    )
    return answer.status_code


def load(phase: Phase, *, base_url: str, secret: str, clients: int, seconds: float) -> None:
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop:
                started = time.perf_counter()
                status: int | str
                try:
                    status = create(http, base_url, secret)
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    phase.latencies.append(elapsed)
                    phase.statuses[status] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.monotonic() - started


def run_phase(
    name: str, *, proxy: object, env: dict[str, str], secret: str, args: argparse.Namespace
) -> Phase:
    from testing.servers import asgi_server

    phase = Phase(name)
    with tempfile.TemporaryDirectory() as logs, asgi_server(Path(logs), env=env) as server:
        with httpx.Client(timeout=30) as http:
            first = create(http, server.base_url, secret)  # rates cached, connections open
        if first != 201:
            raise SystemExit(f"{name}: the first create answered {first}:\n{server.output()}")
        if name != "healthy":
            proxy.black_hole()  # type: ignore[attr-defined]
        try:
            load(
                phase,
                base_url=server.base_url,
                secret=secret,
                clients=args.clients,
                seconds=args.seconds,
            )
        finally:
            proxy.pass_through()  # type: ignore[attr-defined]
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8, help="load per phase")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 clients, 2 s a phase")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = 2, 2.0

    from testing.exchanges import FakeExchanges
    from testing.faultproxy import FaultProxy

    redis_url = urlsplit(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    with (
        FakeExchanges() as exchange,
        FaultProxy(redis_url.hostname or "127.0.0.1", redis_url.port or 6379) as proxy,
        contextlib.ExitStack() as stack,
    ):
        extra = server_env(exchange.base_url, Path(tempfile.gettempdir()), 1)
        for name in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "WEB_CONCURRENCY"):
            extra.pop(name)
        extra.pop("CRYPTOPAY_WEB_WORKERS")
        extra.pop("PROMETHEUS_MULTIPROC_DIR")
        with scratch_environment("redishang", extra):
            from django.db import connections

            from accounts import services as accounts_services
            from accounts.models import ApiKeyScope

            merchant = accounts_services.merchant_create(name="bench")
            _, secret = accounts_services.api_key_create(
                merchant=merchant, name="bench", scopes=list(ApiKeyScope.values)
            )
            connections.close_all()
            metrics = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="metrics-")))
            env = server_env(exchange.base_url, metrics, 1) | {
                "DATABASE_URL": os.environ["DATABASE_URL"],
                "REDIS_URL": f"redis://127.0.0.1:{proxy.port}{redis_url.path or '/0'}",
                "CRYPTOPAY_REDIS_PREFIX": os.environ["CRYPTOPAY_REDIS_PREFIX"],
                "LOG_LEVEL": "ERROR",
            }
            phases = [
                run_phase(
                    name,
                    proxy=proxy,
                    env=env
                    | ({"CRYPTOPAY_REDIS_TIMEOUT_HOLD_SECONDS": "0"} if "no" in name else {}),
                    secret=secret,
                    args=args,
                )
                for name in PHASES
            ]

    print(f"{args.clients} clients, {args.seconds:g} s a phase, one worker")
    print(f"{'phase':<16}{'creates/s':>10}{'p50 ms':>10}{'p99 ms':>10}  answers")
    for phase in phases:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(phase.statuses.items(), key=str))
        print(
            f"{phase.name:<16}{phase.rate:>10.1f}{phase.percentile(0.5):>10.1f}"
            f"{phase.percentile(0.99):>10.1f}  {statuses}"
        )
    problems = [
        f"{phase.name}: {status} answers"
        for phase in phases
        for status in phase.statuses
        if status != 201
    ]
    for problem in problems:
        print("CHECK FAILED", problem)
    labels = {
        "healthy": "Redis healthy",
        "hung": "Redis hung (hold)",
        "hung, no hold": "Redis hung (no hold)",
    }
    measures = (
        ("creates/s", "1/s", "higher", lambda phase: phase.rate),
        ("create p50", "ms", "lower", lambda phase: phase.percentile(0.5)),
        ("create p99", "ms", "lower", lambda phase: phase.percentile(0.99)),
    )
    emit(
        "redis_hang",
        [
            figure(
                f"{measure}, {labels[phase.name]}",
                value(phase),
                unit,
                baseline=None if phase.name == "healthy" else f"{measure}, {labels['healthy']}",
                better=better,
            )
            for measure, unit, better, value in measures
            for phase in phases
        ],
    )
    if problems or not all(phase.latencies for phase in phases):
        raise SystemExit("checks failed")


if __name__ == "__main__":
    main()
