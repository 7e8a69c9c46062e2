"""Deposit address allocation: one fresh address per payment, never reused.

The derivation index is taken from a per-(merchant, currency) counter under a row lock in the
caller's transaction, so concurrent creations never share an index. A creation that rolls back
gives its index back together with its payment, so no address a buyer has seen is ever reused.

The only address source here is the development chain: deterministic, obviously fake addresses
(``dev<currency>1…``) that ``manage.py simulate_payment`` can pay. The chain-watching issue adds
real derivation from merchant extended public keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from payments.errors import AddressUnavailable
from payments.models import AddressIndex, Merchant

DEV_CHAIN = "dev"


@dataclass(frozen=True)
class AllocatedAddress:
    address: str
    index: int
    chain: str


def dev_chain_address(*, merchant_public_id: str, crypto_currency: str, index: int) -> str:
    digest = hashlib.sha256(f"{merchant_public_id}/{crypto_currency}/{index}".encode()).hexdigest()
    return f"dev{crypto_currency.lower()}1{digest[:38]}"


def address_allocate(*, merchant: Merchant, crypto_currency: str) -> AllocatedAddress:
    if not settings.DEV_CHAIN_ENABLED:
        raise AddressUnavailable(
            f"No wallet is configured to receive {crypto_currency} for this merchant.",
            param="crypto_currency",
        )
    with transaction.atomic():
        counter, _ = AddressIndex.objects.select_for_update().get_or_create(
            merchant=merchant, crypto_currency=crypto_currency
        )
        index = counter.next_index
        counter.next_index = index + 1
        counter.save(update_fields=["next_index"])
    address = dev_chain_address(
        merchant_public_id=merchant.public_id, crypto_currency=crypto_currency, index=index
    )
    return AllocatedAddress(address=address, index=index, chain=DEV_CHAIN)
