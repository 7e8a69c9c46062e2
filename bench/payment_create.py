"""Payment creation cost: the full API path against a bare ORM insert, side by side.

    .venv/bin/python -m bench.payment_create [--count 300]

Runs in embedded mode (SQLite in a temporary directory) so it needs no services and leaves
nothing behind. Prints payments per second and per-call latency percentiles for
  baseline  — one Payment row inserted with the ORM (the floor: what storage alone costs),
  service   — payments.services.payment_create (quote, address allocation, event, one transaction),
  api       — POST /api/v1/payments through DRF with Bearer authentication, the idempotency
              layer (automatic key: the bodies differ) and serialization,
and the ratio of each to the baseline; last, a ``RESULT {json}`` line (bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta
from decimal import Decimal

from bench.results import emit, figure


def setup_django(state_dir: str) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"):
        os.environ.pop(name, None)
    os.environ["CRYPTOPAY_STATE_DIR"] = state_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "cryptopay.settings"
    os.environ["LOG_LEVEL"] = "WARNING"
    # Creation cost, not rate fetching: static rates, and no outside network.
    os.environ["CRYPTOPAY_RATE_PROVIDERS"] = ""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def measure(label: str, count: int, call) -> list[float]:
    for _ in range(min(20, count)):  # warm-up: imports, caches, prepared paths
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def report(label: str, samples: list[float], baseline: list[float] | None) -> list[dict]:
    total = sum(samples)
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000
    rate = len(samples) / total
    ratio = f"{total / sum(baseline):5.2f}x baseline" if baseline else "     (baseline)"
    print(f"{label:9} {rate:9.0f}/s   p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   {ratio}")
    metrics = (
        ("payments/s", rate, "1/s", "higher"),
        ("p50", p50, "ms", "lower"),
        ("p99", p99, "ms", "lower"),
    )
    return [
        figure(
            f"{label}: {metric}",
            value,
            unit,
            baseline=f"baseline: {metric}" if baseline else None,
            better=better,
        )
        for metric, value, unit, better in metrics
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as state_dir:
        setup_django(state_dir)
        from django.utils import timezone
        from rest_framework.test import APIClient

        from accounts import services as accounts_services
        from accounts.models import ApiKeyScope
        from payments import services
        from payments.models import Payment

        merchant = accounts_services.merchant_create(name="bench")
        _, secret = accounts_services.api_key_create(
            merchant=merchant, name="bench", scopes=list(ApiKeyScope.values)
        )
        client = APIClient(HTTP_HOST="127.0.0.1")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        counter = iter(range(10**9))

        def baseline() -> None:
            now = timezone.now()
            Payment.objects.create(
                merchant=merchant,
                fiat_amount=Decimal("19.99"),
                fiat_currency="USD",
                crypto_currency="ETH",
                crypto_amount=6_663_333_333_333_334,
                rate=Decimal("3000"),
                rate_source="fallback",
                rate_fetched_at=now,
                deposit_address=f"bench{next(counter)}",
                derivation_index=next(counter),
                required_confirmations=1,
                underpayment_tolerance_percent=Decimal("0"),
                expires_at=now + timedelta(minutes=15),
                monitoring_until=now + timedelta(days=1),
                created_at=now,
            )

        def service() -> None:
            services.payment_create(
                merchant=merchant,
                fiat_amount=Decimal("19.99"),
                fiat_currency="USD",
                crypto_currency="BTC",
            )

        def api() -> None:
            body = {"amount": "19.99", "crypto_currency": "LTC", "order_id": f"o{next(counter)}"}
            response = client.post("/api/v1/payments", body, format="json")
            assert response.status_code == 201, response.content
            assert not response.has_header("Idempotent-Replayed")

        print(f"payment creation, {args.count} calls each, embedded SQLite, one process")
        base = measure("baseline", args.count, baseline)
        figures = report("baseline", base, None)
        figures += report("service", measure("service", args.count, service), base)
        figures += report("api", measure("api", args.count, api), base)
        emit("payment_create", figures)


if __name__ == "__main__":
    main()
