"""Small helpers shared by the watcher tests."""

from __future__ import annotations

from accounts.models import Merchant
from payments.chains.watch import PollResult, chain_watch
from payments.models import Payment, PaymentEvent
from tests.factories import MerchantFactory


def poll_chain(name: str) -> PollResult:
    result = chain_watch(chain_name=name)
    assert result is not None, f"another watcher holds {name}"
    return result


def address_of(payment: Payment) -> str:
    """The deposit address of a payment that has one."""
    assert payment.deposit_address is not None, f"{payment.public_id} has no address"
    return payment.deposit_address


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


def merchant_sharing_wallet_key(merchant: Merchant, currency: str = "ETH") -> Merchant:
    """Another merchant configured with ``merchant``'s wallet key for ``currency`` (the
    misconfiguration the address check guards against)."""
    other: Merchant = MerchantFactory.create()
    key = merchant.wallets.get(crypto_currency=currency).extended_public_key
    other.wallets.create(crypto_currency=currency, extended_public_key=key)
    return other
