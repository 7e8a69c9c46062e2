"""Deposit address allocation: one fresh address per payment, never reused.

The derivation index is taken from a per-(merchant, currency) counter under a row lock in the
caller's transaction, so concurrent creations never share an index. A creation that rolls back
gives its index back together with its payment, so no address a buyer has seen is ever reused.

Sources, in order: the merchant's wallet for the currency (an extended public key, derived at the
allocated index on the chain configured for the currency), else the development chain when it is
enabled: deterministic, obviously fake addresses (``dev<currency>1…``) that
``manage.py simulate_payment`` can pay.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction

from payments.chains.config import chain_for_currency
from payments.chains.derivation import GAP_LIMIT, derive_address
from payments.errors import AddressUnavailable
from payments.models import AddressIndex, Merchant, MerchantWallet, Payment

logger = logging.getLogger(__name__)

DEV_CHAIN = "dev"


@dataclass(frozen=True)
class AllocatedAddress:
    address: str
    index: int
    chain: str


def dev_chain_address(*, merchant_public_id: str, crypto_currency: str, index: int) -> str:
    digest = hashlib.sha256(f"{merchant_public_id}/{crypto_currency}/{index}".encode()).hexdigest()
    return f"dev{crypto_currency.lower()}1{digest[:38]}"


def _next_index(*, merchant: Merchant, crypto_currency: str) -> int:
    counter, _ = AddressIndex.objects.select_for_update().get_or_create(
        merchant=merchant, crypto_currency=crypto_currency
    )
    index = counter.next_index
    counter.next_index = index + 1
    counter.save(update_fields=["next_index"])
    return index


def address_allocate(*, merchant: Merchant, crypto_currency: str) -> AllocatedAddress:
    wallet = MerchantWallet.objects.filter(
        merchant=merchant, crypto_currency=crypto_currency
    ).first()
    chain = chain_for_currency(crypto_currency)
    if wallet is not None and chain is not None:
        with transaction.atomic():
            index = _next_index(merchant=merchant, crypto_currency=crypto_currency)
            address = derive_address(
                currency=crypto_currency, key=wallet.extended_public_key, index=index, hrp=chain.hrp
            )
        gap_limit_check(merchant=merchant, crypto_currency=crypto_currency, index=index)
        return AllocatedAddress(address=address, index=index, chain=chain.name)
    if not settings.DEV_CHAIN_ENABLED:
        reason = (
            "no chain node is configured for it"
            if wallet is not None
            else "no wallet is configured to receive it for this merchant"
        )
        raise AddressUnavailable(
            f"Cannot accept {crypto_currency}: {reason}.", param="crypto_currency"
        )
    with transaction.atomic():
        index = _next_index(merchant=merchant, crypto_currency=crypto_currency)
    address = dev_chain_address(
        merchant_public_id=merchant.public_id, crypto_currency=crypto_currency, index=index
    )
    return AllocatedAddress(address=address, index=index, chain=DEV_CHAIN)


def unpaid_address_run(*, merchant: Merchant, crypto_currency: str) -> int:
    """How many addresses were handed out after the last one that received anything."""
    last_paid = (
        Payment.objects.filter(
            merchant=merchant, crypto_currency=crypto_currency, amount_received__gt=0
        )
        .order_by("-derivation_index")
        .values_list("derivation_index", flat=True)
        .first()
    )
    counter = AddressIndex.objects.filter(
        merchant=merchant, crypto_currency=crypto_currency
    ).first()
    next_index = counter.next_index if counter else 0
    return next_index - (last_paid + 1 if last_paid is not None else 0)


def gap_limit_check(*, merchant: Merchant, crypto_currency: str, index: int) -> bool:
    """Warn when unpaid addresses exceed the gap limit wallets scan (a restored wallet would not
    see payments beyond it). Returns True when over the limit."""
    run = unpaid_address_run(merchant=merchant, crypto_currency=crypto_currency)
    if run > GAP_LIMIT:
        logger.warning(
            "merchant %s %s: %d unpaid addresses in a row (gap limit %d); the wallet must scan "
            "further than its default to see later payments",
            merchant.public_id, crypto_currency, run, GAP_LIMIT,
        )  # fmt: skip
        return True
    return False
