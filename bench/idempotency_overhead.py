"""What the idempotency layer costs POST /api/v1/payments, side by side with the bare view.

    .venv/bin/python -m bench.idempotency_overhead [--rounds 10] [--per-round 50]

Runs against PostgreSQL and Redis (DATABASE_URL / REDIS_URL, defaulting to the test services) in a
scratch database ``cryptopay_bench_<pid>`` created for the run and dropped at the end, with Redis
keys under a per-run prefix that are deleted at the end. One process, in-process requests through
the whole Django stack (middleware, DRF authentication, parsing, serialization) with DRF's
APIClient; the only difference between the first two variants is the ``@idempotent()`` decorator:

  without        a view whose ``_create`` is ``PaymentListCreateView._create.__wrapped__``
  with           the real view, a fresh Idempotency-Key per request (it executes: the price a
                 merchant pays on every create)
  replay-redis   the same key and body again: answered from the Redis response cache
  replay-db      the same, with the cached copy dropped before each call (untimed): answered
                 from the PostgreSQL row

Each request has its own order_id (the automatic key and the order_id constraint never turn a
"without" or "with" call into a replay or a conflict). Variants alternate in rounds, in a rotating
order, to spread drift (other load, cache warmth, table growth) evenly. Printed per variant: p50,
p99 and mean latency in ms and requests per second; then the with-vs-without overhead at p50 and
p99 and the throughput ratio; last, a ``RESULT {json}`` line for bench/report.py.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import uuid

from bench.results import emit, figure, rotating_rounds, timed
from testing.scratch import scratch_environment

# The real routes plus the same create view without the idempotency decorator.
URLCONF = "bench.api_throughput_urls"
WITHOUT_IDEMPOTENCY = "/api/bench/v1/payments"


class RedisTrouble(logging.Filter):
    """Counts (and silences) the gate's "Redis unavailable" warnings: a run during which Redis
    went away (another process restarting it) measured the database-only path in part."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "unavailable" in record.getMessage():
            self.count += 1
            return False
        return True


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": percentile(ordered, 0.99) * 1000,
        "mean": mean * 1000,
        "rate": 1 / mean,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=50)
    args = parser.parse_args()

    with scratch_environment("idempotency", {"CRYPTOPAY_DEV_CHAIN": "1"}):
        run(args.rounds, args.per_round)


def run(rounds: int, per_round: int) -> None:
    from django.test import override_settings
    from rest_framework.test import APIClient

    from accounts import services
    from accounts.models import ApiKeyScope
    from payments.models import Payment
    from resilience.idempotency import default_gate

    override_settings(ROOT_URLCONF=URLCONF).enable()
    redis_trouble = RedisTrouble()
    logging.getLogger("resilience.idempotency").addFilter(redis_trouble)
    merchant = services.merchant_create(name="bench")
    _, secret = services.api_key_create(
        merchant=merchant, name="bench", scopes=list(ApiKeyScope.values)
    )
    client = APIClient(HTTP_HOST="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    orders = iter(range(10**9))

    def body(order: int) -> dict:
        return {"amount": "19.99", "crypto_currency": "LTC", "order_id": f"bench-{order}"}

    def without() -> None:
        response = client.post(WITHOUT_IDEMPOTENCY, body(next(orders)), format="json")
        assert response.status_code == 201, response.content
        assert not response.has_header("Idempotent-Replayed")

    def with_key() -> None:
        response = client.post(
            "/api/v1/payments",
            body(next(orders)),
            format="json",
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert response.status_code == 201, response.content
        assert not response.has_header("Idempotent-Replayed")

    replay_key, replay_body = uuid.uuid4().hex, body(next(orders))

    def post_replay_key():
        return client.post(
            "/api/v1/payments",
            replay_body,
            format="json",
            headers={"Idempotency-Key": replay_key},
        )

    def replay() -> None:
        response = post_replay_key()
        assert response.status_code == 201, response.content
        assert response["Idempotent-Replayed"] == "true"

    def drop_cached_replay() -> None:
        default_gate().forget(merchant.public_id, replay_key)

    variants = {
        "without": timed(without),
        "with": timed(with_key),
        "replay-redis": timed(replay),
        "replay-db": timed(replay, before=drop_cached_replay),
    }
    with_key()  # any first call pays for imports and connections
    first = post_replay_key()  # executes once: every later call with this key is a replay
    assert first.status_code == 201 and not first.has_header("Idempotent-Replayed")
    for run_variant in variants.values():  # warm-up
        for _ in range(20):
            run_variant()

    samples = rotating_rounds(variants, rounds=rounds, per_round=per_round)

    executed = 2 + 2 * 20 + 2 * rounds * per_round  # first calls + warm-ups + timed
    assert Payment.objects.filter(merchant=merchant).count() == executed, "a replay executed"

    stats = {label: summary(values) for label, values in samples.items()}
    print(
        f"POST /api/v1/payments, idempotency layer on and off: {rounds} rounds x {per_round} "
        "calls per variant, rotating order, in-process Django + DRF, PostgreSQL + Redis"
    )
    print(f"  {'variant':13} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}")
    for label, figures in stats.items():
        print(
            f"  {label:13} {figures['p50']:8.3f} {figures['p99']:8.3f} {figures['mean']:8.3f} "
            f"{figures['rate']:8.0f}"
        )
    plain, layered = stats["without"], stats["with"]
    print(
        f"overhead of the layer (with - without): p50 {layered['p50'] - plain['p50']:+.3f} ms, "
        f"p99 {layered['p99'] - plain['p99']:+.3f} ms, mean {layered['mean'] - plain['mean']:+.3f} ms"
    )
    print(
        f"throughput with / without: {layered['rate'] / plain['rate']:.3f} "
        f"({layered['rate']:.0f} vs {plain['rate']:.0f} req/s)"
    )
    for label in ("replay-redis", "replay-db"):
        print(
            f"{label} vs executing without the layer: p50 {stats[label]['p50']:.3f} ms is "
            f"{stats[label]['p50'] / plain['p50']:.2f}x"
        )
    if redis_trouble.count:
        print(
            f"CAUTION: Redis was unreachable for {redis_trouble.count} requests of this run; "
            "those skipped the fast path. Run again for representative figures."
        )
    units = {"p50": "ms", "p99": "ms", "mean": "ms", "rate": "req/s"}
    emit(
        "idempotency_overhead",
        [
            figure(
                f"{label}: {metric}",
                figures[metric],
                unit,
                baseline=None if label == "without" else f"without: {metric}",
                better="higher" if metric == "rate" else "lower",
            )
            for label, figures in stats.items()
            for metric, unit in units.items()
        ],
        redis_unreachable=redis_trouble.count,
    )


if __name__ == "__main__":
    main()
