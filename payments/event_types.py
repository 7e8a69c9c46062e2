"""The events payments publishes and the priority of their notifications, registered with the
notifications app's registry in ``PaymentsConfig.ready``."""

from __future__ import annotations

from notifications.event_types import event_type_register
from notifications.models import Priority
from payments.models import ExchangeRateEvent, PaymentEvent

PRIORITIES: dict[str, str] = {
    PaymentEvent.Type.STATUS_CHANGED: Priority.HIGH,
    PaymentEvent.Type.TRANSACTION_DETECTED: Priority.HIGH,
    # A wrong asset reached a payment's address: the merchant has to act (refund or mark).
    PaymentEvent.Type.TRANSACTION_UNMATCHED: Priority.HIGH,
    PaymentEvent.Type.CREATED: Priority.NORMAL,
    # The buyer picked (or switched) the coin: its amount, quote and deposit address.
    PaymentEvent.Type.CURRENCY_SELECTED: Priority.NORMAL,
    PaymentEvent.Type.EXPIRED: Priority.NORMAL,
    ExchangeRateEvent.type: Priority.LOW,
}


def register() -> None:
    for type, priority in PRIORITIES.items():
        event_type_register(type=str(type), priority=str(priority))
