"""Rate quotes: "fiat per one coin" with provenance, from the best level that can answer.

Levels (each quote says which one and how old it is):
``live`` fetched for this request -> ``cache`` shared Redis copy no older than RATE_CACHE_TTL ->
``emergency`` up to RATE_EMERGENCY_CACHE_MAX_AGE old -> ``fallback`` the static rates in settings.

Payment creation applies a policy on top (``rate_quote_for_payment``): a fallback quote is refused
unless RATES_ALLOW_STATIC_FALLBACK, and a quote older than RATES_MAX_QUOTE_AGE is refused, both as
503 ``rate_unavailable`` (like BTCPay, no payment without a rate it can stand behind).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache

from django.conf import settings
from django.db import DatabaseError, transaction
from prometheus_client import Counter

from payments.errors import RateUnavailable
from payments.rates.live import LiveRate, RatesUnavailable, providers_for, rate_fetch_live
from payments.rates.records import exchange_rate_record
from resilience import clock
from resilience.cache import TieredCache

logger = logging.getLogger(__name__)

LIVE, CACHE, EMERGENCY, FALLBACK = "live", "cache", "emergency", "fallback"

QUOTES = Counter(
    "cryptopay_rate_quotes",
    "Rate quotes served, by pair and the level that answered.",
    ["pair", "level"],
)


@dataclass(frozen=True)
class Quote:
    pair: str
    value: Decimal
    source: str  # live, cache, emergency or fallback
    fetched_at: datetime
    age_seconds: int
    providers: list[dict] = field(default_factory=list)
    bid: Decimal | None = None
    ask: Decimal | None = None

    def provenance(self) -> dict:
        return {
            "pair": self.pair,
            "rate": f"{self.value.normalize():f}",
            "bid": None if self.bid is None else f"{self.bid.normalize():f}",
            "ask": None if self.ask is None else f"{self.ask.normalize():f}",
            "source": self.source,
            "providers": self.providers,
            "fetched_at": self.fetched_at.isoformat(),
            "age_seconds": self.age_seconds,
        }


@cache
def rate_cache() -> TieredCache[LiveRate]:
    """One per process: its emergency level is this process's memory."""
    return TieredCache(
        namespace="rates",
        ttl=settings.RATE_CACHE_TTL.total_seconds(),
        emergency_max_age=settings.RATE_EMERGENCY_CACHE_MAX_AGE.total_seconds(),
        lock_lease=settings.RATE_REFRESH_LEASE.total_seconds(),
        # A cold pair's callers wait for the one refresh rather than answer 503 at once.
        wait_timeout=settings.RATE_PROVIDER_BUDGET.total_seconds(),
        local_ttl=settings.RATE_CACHE_LOCAL_TTL.total_seconds(),
        clock=lambda: clock.now().timestamp(),
    )


def _pair(crypto_currency: str, fiat_currency: str) -> str:
    return f"{crypto_currency}-{fiat_currency}"


def _refresh(pair: str) -> LiveRate:
    previous = rate_cache().peek(pair)
    live = rate_fetch_live(pair=pair)
    try:
        # Its own transaction: the change happened whatever becomes of the request that asked.
        # (Callers fetch before opening theirs; inside one this is a savepoint, so a failed
        # record never poisons the caller's transaction.)
        with transaction.atomic():
            exchange_rate_record(live=live, previous=None if previous is None else previous.value)
    except DatabaseError:
        # The quote matters more than its change record; the next change is recorded again.
        logger.exception("could not record the %s rate change", pair)
    return live


def _fallback_quote(pair: str) -> Quote | None:
    value = settings.FALLBACK_RATES.get(pair)
    if value is None or not value.is_finite() or value <= 0:
        return None
    return Quote(pair=pair, value=value, source=FALLBACK, fetched_at=clock.now(), age_seconds=0)


def rate_quote(*, crypto_currency: str, fiat_currency: str, force_refresh: bool = False) -> Quote:
    """The best quote available now. Never raises for provider or Redis trouble; raises
    ``RateUnavailable`` only when not even a fallback rate exists for the pair."""
    pair = _pair(crypto_currency, fiat_currency)
    if providers_for(pair):
        answer = rate_cache().get(pair, lambda: _refresh(pair), force_refresh=force_refresh)
        if answer is not None:
            live = answer.value
            QUOTES.labels(pair, answer.level).inc()
            return Quote(
                pair=pair,
                value=live.value,
                source=answer.level,
                fetched_at=datetime.fromtimestamp(live.fetched_at, tz=UTC),
                age_seconds=int(answer.age),
                providers=live.providers,
                bid=live.bid,
                ask=live.ask,
            )
        logger.warning("%s: no live, cached or emergency rate; using the static fallback", pair)
    quote = _fallback_quote(pair)
    if quote is None:
        raise RateUnavailable(f"No exchange rate is available for {pair}.", param="currency")
    QUOTES.labels(pair, FALLBACK).inc()
    return quote


def rate_quote_for_payment(*, crypto_currency: str, fiat_currency: str) -> Quote:
    """A quote a payment may be priced from, under the configured policy."""
    return rate_quote_admissible(
        quote=rate_quote(crypto_currency=crypto_currency, fiat_currency=fiat_currency)
    )


def rate_quote_admissible(*, quote: Quote) -> Quote:
    """``quote`` if the policy lets a payment be priced from it; ``RateUnavailable`` if not."""
    if quote.source == FALLBACK and not settings.RATES_ALLOW_STATIC_FALLBACK:
        raise RateUnavailable(
            f"No current exchange rate is available for {quote.pair}; try again shortly.",
            param="currency",
        )
    if quote.age_seconds > settings.RATES_MAX_QUOTE_AGE.total_seconds():
        raise RateUnavailable(
            f"The newest exchange rate for {quote.pair} is {quote.age_seconds} s old, older "
            "than this gateway accepts for new payments; try again shortly.",
            param="currency",
        )
    return quote


__all__ = [
    "CACHE",
    "EMERGENCY",
    "FALLBACK",
    "LIVE",
    "Quote",
    "RatesUnavailable",
    "rate_cache",
    "rate_quote",
    "rate_quote_admissible",
    "rate_quote_for_payment",
]
