"""Live rates: ask the providers, each through retries and its own circuit breaker, and aggregate.

How retries and the breaker compose (the order of Microsoft's standard resilience pipeline):

    total budget per provider -> retry (stamina) -> circuit breaker -> one HTTP attempt (timeout)

Every attempt goes through the breaker, so the breaker counts each failed attempt. A rejection by an
open breaker (``BrokenCircuitError``) is not transient, so retrying stops at once and the next
provider in the list is asked instead. Retries happen only on transient errors (timeouts,
connection errors, 5xx, 408, 429); a 429's Retry-After is honoured when it fits the budget,
otherwise we move on to a backup rather than hammer a provider that asked us to wait.
"""

from __future__ import annotations

import logging
import socket
import statistics
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import stamina
from django.conf import settings

from payments.rates.providers import (
    PROVIDER_CLASSES,
    ExchangeProvider,
    PairNotSupported,
    ProviderError,
    ProviderPrice,
    ProviderRateLimited,
    ProviderUnavailable,
    ProviderUnreachable,
    build_provider,
)
from resilience import clock
from resilience.breaker import (
    BrokenCircuitError,
    CircuitBreaker,
    breaker_options_from_settings,
    get_breaker,
)
from resilience.threads import closing_connections

logger = logging.getLogger(__name__)


class RatesUnavailable(Exception):
    """No provider could give a live price for the pair."""


@dataclass(frozen=True)
class LiveRate:
    pair: str
    value: Decimal
    bid: Decimal | None
    ask: Decimal | None
    fetched_at: float  # epoch seconds
    providers: list[dict] = field(default_factory=list)  # name, price, bid, ask, used


def _is_breaker_failure(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and not isinstance(exc, PairNotSupported)


def provider_breaker(name: str) -> CircuitBreaker:
    return get_breaker(
        f"rates:{name}", breaker_options_from_settings(is_failure=_is_breaker_failure)
    )


def _retry_hook(exc: Exception) -> bool | float:
    if isinstance(exc, ProviderUnreachable) and settings.RATES_SKIP_UNREACHABLE:
        return False  # provider_fetch trips its breaker: retrying now would fail the same way
    if isinstance(exc, ProviderRateLimited):
        if exc.retry_after is None:
            return True
        if exc.retry_after <= settings.RATE_RETRY_WAIT_MAX.total_seconds():
            return exc.retry_after
        return False
    return isinstance(exc, ProviderUnavailable)


_client_lock = threading.Lock()
_client: httpx.Client | None = None


def http_client() -> httpx.Client:
    """One pooled client per process (httpx clients are thread-safe)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                headers={"User-Agent": "cryptopay/1.0"},
                limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
                follow_redirects=False,
            )
        return _client


def configured_providers() -> list[ExchangeProvider]:
    providers = []
    for name in settings.RATE_PROVIDER_ORDER:
        if name not in PROVIDER_CLASSES:
            logger.error("unknown rate provider %r in CRYPTOPAY_RATE_PROVIDERS; ignored", name)
            continue
        providers.append(
            build_provider(
                name=name,
                base_url=settings.RATE_PROVIDER_URLS.get(name) or None,
                timeout=settings.RATE_PROVIDER_TIMEOUT.total_seconds(),
            )
        )
    return providers


def providers_for(pair: str) -> list[ExchangeProvider]:
    return [provider for provider in configured_providers() if provider.supports(pair)]


def provider_fetch(*, provider, pair: str) -> ProviderPrice:
    """One provider's price, with bounded retries, each attempt through its breaker."""
    breaker = provider_breaker(provider.name)
    client = http_client()
    for attempt in stamina.retry_context(
        on=_retry_hook,
        attempts=1 + settings.OUTSIDE_CALL_MAX_RETRIES,
        timeout=settings.RATE_PROVIDER_BUDGET.total_seconds(),
        wait_initial=settings.RATE_RETRY_WAIT_INITIAL.total_seconds(),
        wait_max=settings.RATE_RETRY_WAIT_MAX.total_seconds(),
        wait_jitter=settings.RATE_RETRY_WAIT_INITIAL.total_seconds(),
    ):
        with attempt:
            try:
                return breaker.call(provider.fetch, pair=pair, client=client)
            except ProviderUnreachable:
                # Offline (embedded mode on a laptop): one try, then skip the provider for the
                # breaker's break instead of paying its retries on every quote.
                if settings.RATES_SKIP_UNREACHABLE:
                    breaker.trip()
                raise
    raise AssertionError("unreachable: stamina re-raises the last error")


def aggregate(
    prices: list[ProviderPrice], *, outlier_percent: Decimal
) -> tuple[Decimal, list[ProviderPrice], list[ProviderPrice]]:
    """Median of the prices; with three or more, prices too far from it are dropped first.

    With two answers there is no majority to say which one lies, so both count. Returns
    (value, used, dropped).
    """
    if not prices:
        raise ValueError("no prices to aggregate")
    median = statistics.median(p.price for p in prices)
    if len(prices) < 3:
        return median, prices, []
    limit = median * outlier_percent / Decimal(100)
    used = [p for p in prices if abs(p.price - median) <= limit]
    dropped = [p for p in prices if abs(p.price - median) > limit]
    if not used:
        return median, prices, []
    return statistics.median(p.price for p in used), used, dropped


def _median_or_none(values: list[Decimal | None]) -> Decimal | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def rate_fetch_live(*, pair: str) -> LiveRate:
    """Ask up to RATE_PROVIDERS_PER_QUOTE providers at once, backups replacing failures."""
    candidates = providers_for(pair)
    if not candidates:
        raise RatesUnavailable(f"no configured provider quotes {pair}")
    width = max(1, settings.RATE_PROVIDERS_PER_QUOTE)
    answers: list[ProviderPrice] = []
    failures: dict[str, str] = {}
    pending = list(candidates)
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="rates") as pool:
        in_flight: dict[Future, ExchangeProvider] = {}

        def submit_next() -> None:
            if pending:
                provider = pending.pop(0)
                fetch = closing_connections(provider_fetch)
                in_flight[pool.submit(fetch, provider=provider, pair=pair)] = provider

        for _ in range(width):
            submit_next()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                provider = in_flight.pop(future)
                try:
                    answers.append(future.result())
                except BrokenCircuitError:
                    # Without its countdown: the line stays the same while the circuit is open,
                    # so repeats of it are recognised (cryptopay.logs.RepeatedWarningFilter).
                    failures[provider.name] = "skipped: circuit open"
                    submit_next()
                except ProviderError as exc:
                    failures[provider.name] = f"{exc.__class__.__name__}: {exc}"
                    submit_next()
    if not answers:
        # In the providers' order, not the order their answers came in: the same failures make
        # the same line, which RepeatedWarningFilter recognises.
        failures = {p.name: failures[p.name] for p in candidates if p.name in failures}
        logger.warning("no live rate for %s: %s", pair, failures)
        raise RatesUnavailable(f"every provider failed for {pair}: {failures}")
    order = {provider.name: i for i, provider in enumerate(candidates)}
    answers.sort(key=lambda p: order[p.provider])
    value, used, dropped = aggregate(answers, outlier_percent=settings.RATE_OUTLIER_PERCENT)
    if dropped:
        logger.warning(
            "%s: dropped outliers %s (median %s)",
            pair,
            {p.provider: str(p.price) for p in dropped},
            value,
        )
    used_names = {p.provider for p in used}
    return LiveRate(
        pair=pair,
        value=value,
        bid=_median_or_none([p.bid for p in used]),
        ask=_median_or_none([p.ask for p in used]),
        fetched_at=clock.now().timestamp(),
        providers=[
            {
                "name": p.provider,
                "price": str(p.price),
                "bid": None if p.bid is None else str(p.bid),
                "ask": None if p.ask is None else str(p.ask),
                "used": p.provider in used_names,
            }
            for p in answers
        ],
    )


@dataclass(frozen=True)
class Reachability:
    reachable: list[str]  # provider names whose host accepted a TCP connection
    unreachable: dict[str, str]  # name -> why (name resolution, refused, no answer)


def _probe(provider, timeout: float) -> str | None:
    url = httpx.URL(provider.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.host, port), timeout=timeout).close()
    except socket.gaierror:
        return "name does not resolve"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return f"no answer ({type(exc).__name__})"
    return None


def rate_providers_reachability(*, timeout: float = 1.0) -> Reachability:
    """Can this machine open a connection to each configured provider? Asked once at start
    (``manage.py serve`` in embedded mode says so); with RATES_SKIP_UNREACHABLE, providers that
    do not resolve or refuse are skipped (their breakers tripped) instead of tried by the first
    payment."""
    providers = configured_providers()
    if not providers:
        return Reachability(reachable=[], unreachable={})
    with ThreadPoolExecutor(max_workers=len(providers), thread_name_prefix="rates-probe") as pool:
        answers = dict(
            zip(providers, pool.map(lambda p: _probe(p, timeout), providers), strict=True)
        )
    unreachable = {p.name: why for p, why in answers.items() if why is not None}
    if settings.RATES_SKIP_UNREACHABLE:
        for provider, why in answers.items():
            if why is not None and not why.startswith("no answer"):
                provider_breaker(provider.name).trip()
    return Reachability(
        reachable=[p.name for p, why in answers.items() if why is None], unreachable=unreachable
    )
