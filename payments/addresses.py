"""Deposit address allocation: one fresh address per payment, never reused.

The derivation index is taken from a counter per merchant and wallet key (``key_space``) by one
increment-and-return statement, so concurrent creations never share an index. The counter is
per key, not per currency, because ETH and every ERC-20 of one chain are normally received on one
BIP44 account key: a counter per currency would hand ETH payment #0 and USDC payment #0 the same
address.

Inside a transaction the counter's row stays locked until that transaction ends, which serialises
a merchant's creations: the API therefore takes the index in its own statement (autocommit) before
its transaction opens (``payments.services.payment_address_reservation``). An index whose payment
is then not made is given back only while it is still the last one handed out; otherwise it stays
a gap. A gap is an unused address, never a reused one: it counts against the gap limit
(``unpaid_address_run``) like the address of a payment nobody paid.

Sources, in order: the merchant's wallet for the currency (an extended public key, derived at the
allocated index on the chain configured for the currency), else the development chain when it is
enabled: deterministic, obviously fake addresses (``dev<currency>1…``) that
``manage.py simulate_payment`` can pay. Test payments (``livemode`` False) always take the
development chain.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists

from accounts.models import Merchant
from cryptopay.compiled_query import CompiledQuery
from payments.chains.config import chain_for_currency
from payments.chains.derivation import GAP_LIMIT, derive_address, extract_key
from payments.currencies import CRYPTO_CURRENCIES
from payments.errors import AddressUnavailable
from payments.models import AddressIndex, MerchantWallet, Payment, PaymentOption

logger = logging.getLogger(__name__)

DEV_CHAIN = "dev"
# Addresses of a wallet key another merchant also uses that one allocation may skip.
MAX_SKIPPED_ADDRESSES = 1000

# A PostgreSQL boolean expression and its parameters (``unless`` below).
SqlCondition = tuple[str, list[Any]]


# Every live create reads its merchant's wallet for the coin (one row: unique per merchant and
# coin): compiled once, as the queryset's building and compiling cost several times the lookup.
_WALLET = CompiledQuery(
    lambda merchant_id, crypto_currency: MerchantWallet.objects.filter(
        merchant_id=merchant_id, crypto_currency=crypto_currency
    ),
    merchant_id=987654321,
    crypto_currency="EXAMPLE",
)


@dataclass(frozen=True)
class AllocatedAddress:
    address: str
    index: int
    chain: str
    key_space: str


def dev_chain_address(*, merchant_public_id: str, crypto_currency: str, index: int) -> str:
    digest = hashlib.sha256(f"{merchant_public_id}/{crypto_currency}/{index}".encode()).hexdigest()
    return f"dev{crypto_currency.lower()}1{digest[:38]}"


def key_space(*, extended_public_key: str | None, crypto_currency: str) -> str:
    """The derivation space an index counts in: one per wallet key (a digest, so the key itself is
    not copied onto every payment), or per currency on the development chain."""
    if not extended_public_key:
        return f"dev:{crypto_currency}"
    digest = hashlib.sha256(extract_key(extended_public_key).encode()).hexdigest()
    return f"key:{digest[:64]}"


def wallet_key_space(wallet: MerchantWallet) -> str:
    return key_space(
        extended_public_key=wallet.extended_public_key, crypto_currency=wallet.crypto_currency
    )


def _next_index(
    *, merchant: Merchant, space: str, unless: SqlCondition | None = None
) -> int | None:
    """Take the counter's next index in one statement (an upsert that increments and returns).
    Outside a transaction it commits at once; inside one the counter row stays locked to the
    caller's commit, so such callers allocate as late in their transaction as they can: a
    concurrent allocation of the same counter waits for that commit (or rollback, which gives
    the index back) and then reads the incremented value. ``unless`` (PostgreSQL): in the same
    statement, nothing is taken while it holds, and None is returned."""
    if unless is not None:
        assert connection.vendor == "postgresql", "a condition is PostgreSQL's SQL"
    if connection.vendor != "postgresql":
        with transaction.atomic():  # its own when the caller has none (a reservation)
            counter, _ = AddressIndex.objects.select_for_update().get_or_create(
                merchant=merchant, key_space=space
            )
            index = counter.next_index
            AddressIndex.objects.filter(pk=counter.pk).update(next_index=index + 1)
        return index
    table = connection.ops.quote_name(AddressIndex._meta.db_table)
    condition, condition_params = unless if unless is not None else ("false", [])
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (merchant_id, key_space, next_index)
            SELECT %s, %s, 1 WHERE NOT {condition}
            ON CONFLICT (merchant_id, key_space)
            DO UPDATE SET next_index = {table}.next_index + 1
            RETURNING next_index - 1
            """,  # the table name and the condition are ours; every value is a parameter
            [merchant.pk, space, *condition_params],
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


def _paid_up_to(*, merchant: Merchant, space: str, handed_out: int) -> SqlCondition:
    """``EXISTS`` a paid payment among the key's GAP_LIMIT + 1 indexes up to ``handed_out``, and
    its parameters. The indexes are named one by one, not as a range: a prepared statement's
    generic plan, not knowing the range is short, read the whole table for it
    (bench/live_create.py)."""
    indexes = list(range(max(0, handed_out - GAP_LIMIT), handed_out + 1))
    payments = connection.ops.quote_name(Payment._meta.db_table)
    sql = (
        f"EXISTS (SELECT 1 FROM {payments} WHERE merchant_id = %s AND key_space = %s"  # noqa: S608
        f" AND derivation_index IN ({', '.join(['%s'] * len(indexes))})"
        " AND amount_received > 0)"
    )
    return sql, [merchant.pk, space, *indexes]


def _ask(condition: SqlCondition, *more: SqlCondition) -> tuple[Any, ...]:
    """The truth of each condition, in one statement."""
    conditions = (condition, *more)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(sql for sql, _ in conditions)}",
            [param for _, params in conditions for param in params],
        )
        row = cursor.fetchone()
    return tuple(row)


@dataclass(frozen=True)
class _AddressCheck:
    in_use: bool
    paid_up_to: bool | None  # None: not asked (an index below the gap limit)


def _address_check(*, merchant: Merchant, space: str, address: str, index: int) -> _AddressCheck:
    """Is the derived address another payment's (its own, or one its buyer picked and then
    left, which only its option keeps), and (from the gap limit on) was one of the key's
    GAP_LIMIT + 1 indexes up to it paid (``_paid_up_to``): all in one statement, a live create's
    only read of payments when its buyers pay.

    Answered from indexes, never by reading the table: the address is compared in the casings
    it is written in, not case-insensitively (``iexact`` matched no index, and every live create
    read every payment: bench/live_create.py). Payments with a key space are under the unique
    index on their address; older ones (no key space) under (currency, address); options under
    their address.

    Written as SQL: the same statement built through the ORM (``Exists`` annotated on the
    merchant's row) cost more of the create's CPU than the queries it replaced."""
    quote = connection.ops.quote_name
    payments, options = quote(Payment._meta.db_table), quote(PaymentOption._meta.db_table)
    forms = [address, address.lower(), address.upper()]
    currencies = sorted(CRYPTO_CURRENCIES)
    # Table names are ours; every value is a parameter.
    in_use = (
        f"EXISTS (SELECT 1 FROM {payments} WHERE"  # noqa: S608
        " (key_space IS NOT NULL AND deposit_address IN (%s, %s, %s))"
        f" OR (key_space IS NULL AND crypto_currency IN ({', '.join(['%s'] * len(currencies))})"
        " AND deposit_address IN (%s, %s, %s)))"
        f" OR EXISTS (SELECT 1 FROM {options} WHERE deposit_address IN (%s, %s, %s))"
    )
    in_use_params = [*forms, *currencies, *forms, *forms]
    if index < GAP_LIMIT:
        (found,) = _ask((in_use, in_use_params))
        return _AddressCheck(in_use=bool(found), paid_up_to=None)
    found, paid = _ask(
        (in_use, in_use_params), _paid_up_to(merchant=merchant, space=space, handed_out=index)
    )
    return _AddressCheck(in_use=bool(found), paid_up_to=bool(paid))


def address_allocate(
    *, merchant: Merchant, crypto_currency: str, livemode: bool = True
) -> AllocatedAddress:
    """``livemode`` False (a test payment): always the development chain, even when the
    merchant's wallet and the chain are configured and the development chain is off for live
    payments, so test payments never use (or skip) a real address."""
    allocated = address_allocate_unless(
        merchant=merchant, crypto_currency=crypto_currency, livemode=livemode, unless=None
    )
    assert allocated is not None  # without a condition an index is always taken
    return allocated


def address_allocate_unless(
    *, merchant: Merchant, crypto_currency: str, livemode: bool, unless: SqlCondition | None
) -> AllocatedAddress | None:
    """``address_allocate``, asking ``unless`` in the statement that takes the index: None,
    with nothing taken, while it holds."""
    if not livemode:
        return _dev_chain_allocate(
            merchant=merchant, crypto_currency=crypto_currency, unless=unless
        )
    chain = chain_for_currency(crypto_currency)
    # Without a chain for the currency a wallet cannot be used, and with the development chain
    # on its absence does not matter either: no query.
    wallet = (
        _WALLET.first(merchant_id=merchant.pk, crypto_currency=crypto_currency)
        if chain is not None or not settings.DEV_CHAIN_ENABLED
        else None
    )
    if wallet is not None and chain is not None:
        space = wallet_key_space(wallet)
        # No transaction around the loop: each index is taken in its own statement, which
        # commits at once, so the counter row is not held locked over the check (a merchant's
        # other creates wait for nothing), and an index skipped here stays skipped.
        for attempt in range(MAX_SKIPPED_ADDRESSES + 1):
            index = _next_index(
                merchant=merchant, space=space, unless=unless if attempt == 0 else None
            )
            if index is None:
                return None
            address = derive_address(
                currency=crypto_currency,
                key=wallet.extended_public_key,
                index=index,
                hrp=chain.hrp,
            )
            check = _address_check(merchant=merchant, space=space, address=address, index=index)
            if not check.in_use:
                break
            # The same key is another merchant's wallet too (a misconfiguration, but money
            # must not meet the wrong payment): skip what the other counter handed out.
            logger.warning(
                "merchant %s %s: address index %d is already another payment's; its wallet "
                "key is shared with another merchant, skipping",
                merchant.public_id,
                crypto_currency,
                index,
            )
        else:
            raise AddressUnavailable(
                f"Cannot accept {crypto_currency}: the wallet's next addresses are all in "
                "use by another merchant's payments.",
                param="crypto_currency",
            )
        gap_limit_check(
            merchant=merchant, wallet=wallet, handed_out=index, paid_up_to=check.paid_up_to
        )
        return AllocatedAddress(address=address, index=index, chain=chain.name, key_space=space)
    if not settings.DEV_CHAIN_ENABLED:
        reason = (
            "no chain node is configured for it"
            if wallet is not None
            else "no wallet is configured to receive it for this merchant"
        )
        raise AddressUnavailable(
            f"Cannot accept {crypto_currency}: {reason}.", param="crypto_currency"
        )
    return _dev_chain_allocate(merchant=merchant, crypto_currency=crypto_currency, unless=unless)


def _dev_chain_allocate(
    *, merchant: Merchant, crypto_currency: str, unless: SqlCondition | None
) -> AllocatedAddress | None:
    space = key_space(extended_public_key=None, crypto_currency=crypto_currency)
    # One statement: no savepoint needed.
    index = _next_index(merchant=merchant, space=space, unless=unless)
    if index is None:
        return None
    address = dev_chain_address(
        merchant_public_id=merchant.public_id, crypto_currency=crypto_currency, index=index
    )
    return AllocatedAddress(address=address, index=index, chain=DEV_CHAIN, key_space=space)


def address_release(*, merchant: Merchant, allocated: AllocatedAddress) -> bool:
    """Give back an index no payment was made with, when it is still the last one handed out (a
    compare-and-set on the counter) and no committed payment holds it (after an ambiguous commit).
    Otherwise it stays a gap. Call it at most once per allocation, from its allocator: once given
    back, the index may be handed out again. True when given back."""
    taken = Payment.objects.filter(
        merchant=merchant, key_space=allocated.key_space, derivation_index=allocated.index
    )
    return bool(
        AddressIndex.objects.filter(
            merchant=merchant, key_space=allocated.key_space, next_index=allocated.index + 1
        )
        .filter(~Exists(taken))
        .update(next_index=allocated.index)
    )


@dataclass(frozen=True)
class GapRun:
    """Unpaid addresses in a row on one wallet key, against the gap limit wallets scan."""

    merchant: Merchant
    currencies: tuple[str, ...]
    run: int
    limit: int = GAP_LIMIT

    @property
    def over(self) -> bool:
        return self.run > self.limit


def unpaid_address_run(*, merchant: Merchant, wallet: MerchantWallet) -> GapRun:
    """How many addresses of the wallet's key were handed out after the last one that received
    anything, whatever the currency that used them."""
    space = wallet_key_space(wallet)
    currencies = tuple(
        sorted(
            w.crypto_currency
            for w in MerchantWallet.objects.filter(merchant=merchant)
            if wallet_key_space(w) == space
        )
    )
    # Payments from before the counter was per key carry no key space: their currency says it.
    # One query in parts (the key space, then each currency), each walking its own index from
    # the top down to the first paid address. As one condition (key space OR currencies) no
    # index could order it, and every live create read all of the merchant's payments.
    paid = (
        Payment.objects.filter(merchant=merchant, amount_received__gt=0)
        .order_by("-derivation_index")
        .values_list("derivation_index", flat=True)
    )
    tops = paid.filter(key_space=space)[:1].union(
        *(paid.filter(key_space__isnull=True, crypto_currency=code)[:1] for code in currencies),
        all=True,
    )
    last_paid = max((index for index in tops if index is not None), default=None)
    counter = AddressIndex.objects.filter(merchant=merchant, key_space=space).first()
    next_index = counter.next_index if counter else 0
    run = max(0, next_index - (last_paid + 1 if last_paid is not None else 0))
    return GapRun(merchant=merchant, currencies=currencies, run=run)


def gap_limit_check(
    *,
    merchant: Merchant,
    wallet: MerchantWallet,
    handed_out: int | None = None,
    paid_up_to: bool | None = None,
) -> bool:
    """Warn when unpaid addresses exceed the gap limit wallets scan (a restored wallet would not
    see payments beyond it). Addresses keep being issued. Returns True when over the limit.

    ``handed_out``: the index just taken (a create asks on every live payment). The run after it
    is over the limit only if none of the GAP_LIMIT + 1 indexes up to it was paid: one of them
    paid (what a merchant whose buyers pay sees) settles it, and only otherwise is the run
    counted. ``paid_up_to``: whether one was, when the caller asked already (``_address_check``)."""
    if handed_out is not None:
        if handed_out < GAP_LIMIT:
            return False  # the run is at most the indexes handed out
        if paid_up_to is None:
            (paid_up_to,) = _ask(
                _paid_up_to(
                    merchant=merchant, space=wallet_key_space(wallet), handed_out=handed_out
                )
            )
        if paid_up_to:
            return False
    gap = unpaid_address_run(merchant=merchant, wallet=wallet)
    if gap.over:
        logger.warning(
            "merchant %s %s wallet: %d unpaid addresses in a row (gap limit %d); the wallet must "
            "scan further than its default to see later payments",
            merchant.public_id,
            "/".join(gap.currencies),
            gap.run,
            gap.limit,
        )
        return True
    return False


def wallet_gap_runs(*, merchant: Merchant | None = None) -> list[GapRun]:
    """One entry per merchant wallet key (wallets sharing a key are one entry)."""
    wallets = MerchantWallet.objects.select_related("merchant").order_by("merchant_id", "pk")
    if merchant is not None:
        wallets = wallets.filter(merchant=merchant)
    seen: set[tuple[int, str]] = set()
    runs = []
    for wallet in wallets:
        space = (wallet.merchant_id, wallet_key_space(wallet))
        if space in seen:
            continue
        seen.add(space)
        runs.append(unpaid_address_run(merchant=wallet.merchant, wallet=wallet))
    return runs
