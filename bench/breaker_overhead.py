"""Per-call overhead of our circuit breaker (closed state) against pybreaker and no breaker.

    .venv/bin/python -m bench.breaker_overhead [--calls 200000] [--redis redis://127.0.0.1:6379/0]

All variants run side by side in one process on the same trivial function, several rounds each,
best round kept (the least disturbed by the rest of the machine). Printed per variant: ns per
call, overhead over the bare call, and that overhead as a ratio of pybreaker's.

Variants:
  bare           the function itself
  pybreaker      pybreaker.CircuitBreaker (in-memory storage), the reference
  ours-local     resilience.breaker.CircuitBreaker with no shared store
  ours-shared    the same with the Redis shared store (reads Redis at most every 0.25 s)

Then the cost of a quote served from each level of the rate cache (needs --redis for the shared
level): a cache hit (Redis), an emergency hit (process memory, Redis down), and a fallback.
Last, a ``RESULT {json}`` line for bench/report.py (bench/results.py).
"""

from __future__ import annotations

import argparse
import os
import time
from decimal import Decimal

from bench.results import emit, figure


def best_ns_per_call(fn, calls: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cryptopay.settings")
    import django

    django.setup()
    import pybreaker

    from resilience.breaker import CircuitBreaker, SharedStore
    from resilience.redis_client import fast_fail_client

    def work() -> int:
        return 1

    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    local = CircuitBreaker("bench-local")
    shared = CircuitBreaker(
        "bench-shared", store=SharedStore(fast_fail_client(args.redis), prefix="bench:breaker")
    )
    variants = {
        "bare": work,
        "pybreaker": lambda: theirs.call(work),
        "ours-local": lambda: local.call(work),
        "ours-shared": lambda: shared.call(work),
    }
    results = {name: best_ns_per_call(fn, args.calls) for name, fn in variants.items()}
    bare = results["bare"]
    reference = results["pybreaker"] - bare
    print(f"circuit breaker, closed state, {args.calls} calls x 5 rounds (best round)")
    figures = []
    for name, ns in results.items():
        overhead = ns - bare
        ratio = "" if name == "bare" else f"   {overhead / reference:5.2f}x pybreaker's overhead"
        print(f"  {name:12} {ns:8.0f} ns/call   overhead {overhead:7.0f} ns{ratio}")
        figures.append(
            figure(
                f"{name}: ns/call", ns, "ns", baseline=None if name == "bare" else "bare: ns/call"
            )
        )
        if name not in ("bare", "pybreaker"):
            figures.append(
                figure(
                    f"{name}: overhead over bare",
                    overhead,
                    "ns",
                    baseline="pybreaker: overhead over bare",
                )
            )
        elif name == "pybreaker":
            figures.append(figure(f"{name}: overhead over bare", overhead, "ns", baseline=None))

    figures += quote_levels(args.calls // 100)
    emit("breaker_overhead", figures)


def quote_levels(calls: int) -> list[dict]:
    from django.core.cache import cache
    from django.test import override_settings

    from payments.rates import quotes
    from payments.rates.live import LiveRate
    from resilience.cache import Entry

    print(f"\nquote from each cache level, {calls} quotes x 5 rounds (best round)")
    pair, now = "BTC-USD", time.time()
    live = LiveRate(
        pair=pair, value=Decimal(60000), bid=None, ask=None, fetched_at=now, providers=[]
    )
    with override_settings(
        RATE_PROVIDER_ORDER=["kraken"],
        RATE_PROVIDER_URLS={"kraken": "http://127.0.0.1:9"},
        RATES_ALLOW_STATIC_FALLBACK=True,
    ):
        quotes.rate_cache.cache_clear()
        tiered = quotes.rate_cache()
        tiered._write_shared(pair, Entry(value=live, stored_at=now, compute_seconds=0.05))
        cache_ns = best_ns_per_call(
            lambda: quotes.rate_quote(crypto_currency="BTC", fiat_currency="USD"), calls
        )
        assert quotes.rate_quote(crypto_currency="BTC", fiat_currency="USD").source == "cache"
        tiered.invalidate(pair)
        tiered.emergency.put(pair, Entry(value=live, stored_at=now, compute_seconds=0.05))
        # Emergency: shared copy gone and the refresh lock held by "someone else".
        cache.set(f"rates:{pair}:refreshing", "1", 600)
        emergency_ns = best_ns_per_call(
            lambda: quotes.rate_quote(crypto_currency="BTC", fiat_currency="USD"), calls
        )
        assert quotes.rate_quote(crypto_currency="BTC", fiat_currency="USD").source == "emergency"
        cache.delete(f"rates:{pair}:refreshing")
    with override_settings(RATE_PROVIDER_ORDER=[], RATES_ALLOW_STATIC_FALLBACK=True):
        fallback_ns = best_ns_per_call(
            lambda: quotes.rate_quote(crypto_currency="BTC", fiat_currency="USD"), calls
        )
    figures = []
    for name, ns in (("cache", cache_ns), ("emergency", emergency_ns), ("fallback", fallback_ns)):
        print(f"  {name:12} {ns / 1000:8.1f} us/quote")
        # The static fallback is the floor: a quote with no cache level asked at all.
        baseline = None if name == "fallback" else "quote from fallback: us"
        figures.append(figure(f"quote from {name}: us", ns / 1000, "us", baseline=baseline))
    return figures


if __name__ == "__main__":
    main()
