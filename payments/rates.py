"""Rate quotes: the boundary payment creation asks for "fiat per one coin".

This level serves the configured static fallback rates (the seed's last resort), always marked
``source: "fallback"``. The exchange-rate issue puts live providers and cache levels in front of
it; the quote's shape (value plus provenance) stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings

from payments.errors import RateUnavailable
from resilience import clock


@dataclass(frozen=True)
class Quote:
    pair: str
    value: Decimal
    source: str
    fetched_at: datetime
    providers: list[dict[str, str]] = field(default_factory=list)
    bid: Decimal | None = None
    ask: Decimal | None = None


def rate_quote(*, crypto_currency: str, fiat_currency: str) -> Quote:
    pair = f"{crypto_currency}-{fiat_currency}"
    value = settings.FALLBACK_RATES.get(pair)
    if value is None or not value.is_finite() or value <= 0:
        raise RateUnavailable(f"No exchange rate is available for {pair}.", param="currency")
    return Quote(pair=pair, value=value, source="fallback", fetched_at=clock.now())
