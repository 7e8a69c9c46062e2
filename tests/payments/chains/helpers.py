"""Small helpers shared by the watcher tests."""

from __future__ import annotations

from payments.chains.watch import PollResult, chain_watch
from payments.models import Payment, PaymentEvent


def poll_chain(name: str) -> PollResult:
    result = chain_watch(chain_name=name)
    assert result is not None, f"another watcher holds {name}"
    return result


def refresh(payment: Payment) -> Payment:
    payment.refresh_from_db()
    return payment


def statuses(payment: Payment) -> list[str]:
    """The statuses a payment moved to, in order."""
    return [
        e.data["to"]["status"]
        for e in PaymentEvent.objects.filter(payment=payment).order_by("sequence")
        if "to" in e.data
    ]
