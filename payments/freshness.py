"""How fresh the payments' outside data is: rate age per pair in use and watcher lag per chain.
Read by the admin resilience dashboard (``cryptopay.dashboard_views``) and by the ``/metrics``
samplers (``payments.metrics``), which set gauges from them at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from payments.models import ChainCursor
from payments.rates.live import providers_for
from payments.rates.quotes import rate_cache
from payments.rates.refresh import rate_pairs_in_use
from resilience import clock


@dataclass(frozen=True)
class RateAge:
    pair: str
    providers: tuple[str, ...]  # live providers for the pair; none: priced from static rates
    age_seconds: float | None  # of the rate a quote would get now; None: no rate held
    level: str  # cache or emergency (what a quote would be served from), "" when none


def rate_age_list() -> list[RateAge]:
    """Every pair in use (open payments, recent ones). The shared cache is read through the
    tiered cache, which falls back to this process's emergency copy when Redis fails."""
    cache = rate_cache()
    ages = []
    for pair in rate_pairs_in_use():
        providers = tuple(provider.name for provider in providers_for(pair))
        answer = cache.peek(pair) if providers else None
        ages.append(
            RateAge(
                pair=pair,
                providers=providers,
                age_seconds=None if answer is None else answer.age,
                level="" if answer is None else answer.level,
            )
        )
    return ages


@dataclass(frozen=True)
class WatcherLag:
    chain: str
    height: int | None  # last processed block; None before the watcher's first run
    tip_height: int | None
    lag_blocks: int | None
    node: str
    polled_at: datetime | None
    poll_age_seconds: float | None  # None: never polled


def watcher_lag_list() -> list[WatcherLag]:
    """Every configured chain, from its cursor."""
    configured = list(settings.CHAINS)
    cursors = {c.chain: c for c in ChainCursor.objects.filter(chain__in=configured)}
    now = clock.now()
    lags = []
    for chain in configured:
        cursor = cursors.get(chain)
        polled_at = cursor.polled_at if cursor else None
        known_tip = cursor if cursor is not None and cursor.tip_height >= 0 else None
        lags.append(
            WatcherLag(
                chain=chain,
                height=cursor.height if cursor and cursor.height >= 0 else None,
                tip_height=known_tip.tip_height if known_tip else None,
                lag_blocks=known_tip.lag if known_tip else None,
                node=cursor.node if cursor else "",
                polled_at=polled_at,
                poll_age_seconds=None
                if polled_at is None
                else max(0.0, (now - polled_at).total_seconds()),
            )
        )
    return lags
