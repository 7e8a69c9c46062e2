"""Periodic refresh of the rates in use, so payment creation rarely waits on a provider."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db.models import Q

from payments.models import Payment
from payments.rates.live import providers_for
from payments.rates.quotes import rate_cache, rate_quote
from payments.states import PaymentStatus
from resilience import clock

logger = logging.getLogger(__name__)


def rate_pairs_in_use() -> list[str]:
    """Pairs of open payments and of payments created within RATES_IN_USE_WINDOW."""
    since = clock.now() - settings.RATES_IN_USE_WINDOW
    rows = (
        Payment.objects.filter(Q(created_at__gte=since) | Q(status=PaymentStatus.PENDING))
        .values_list("crypto_currency", "fiat_currency")
        .distinct()
    )
    return sorted({f"{crypto}-{fiat}" for crypto, fiat in rows})


def rates_refresh_in_use() -> dict[str, str]:
    """Refresh each pair in use; returns pair -> the level its quote came from."""
    levels: dict[str, str] = {}
    for pair in rate_pairs_in_use():
        if not providers_for(pair):
            continue
        crypto_currency, fiat_currency = pair.split("-")
        quote = rate_quote(
            crypto_currency=crypto_currency, fiat_currency=fiat_currency, force_refresh=True
        )
        levels[pair] = quote.source
    rate_cache().emergency.cleanup()
    if levels:
        logger.info("rates refreshed: %s", levels)
    return levels
