"""Writes for exchange rates: a changed live rate is recorded as an event.

``ExchangeRateEvent`` rows are the durable record of ExchangeRateUpdated (low priority); the
outbox event published with each (``notifications.outbox``) fans it out to browsers and webhooks.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

from notifications.outbox import event_publish
from payments.models import ExchangeRateEvent
from payments.rates.live import LiveRate

logger = logging.getLogger(__name__)


def exchange_rate_record(*, live: LiveRate, previous: LiveRate | None) -> ExchangeRateEvent | None:
    """Record ``live`` when it differs from the previous value; returns the event or None."""
    if previous is not None and previous.value == live.value:
        return None
    previous_value: Decimal | None = None if previous is None else previous.value
    event = ExchangeRateEvent.objects.create(
        pair=live.pair,
        rate=live.value,
        previous_rate=previous_value,
        bid=live.bid,
        ask=live.ask,
        providers=live.providers,
        fetched_at=datetime.fromtimestamp(live.fetched_at, tz=UTC),
    )
    event_publish(
        owner="",
        type=ExchangeRateEvent.type,
        subject=live.pair,
        data={
            "pair": live.pair,
            "rate": f"{live.value.normalize():f}",
            "previous_rate": None if previous_value is None else f"{previous_value.normalize():f}",
            "providers": live.providers,
        },
    )
    logger.info("rate %s: %s -> %s", live.pair, previous_value, live.value)
    return event
