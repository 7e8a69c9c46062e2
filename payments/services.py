"""Writes: every change to payments goes through a function here (merchants and API keys: in
``accounts.services``).

Each payment state change locks the payment row, applies the change and appends its event in the
same transaction, so the event log and the payment never disagree.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connection,
    connections,
    transaction,
)
from django.db.models import NOT_PROVIDED, Field, Model, Q

from accounts.models import Merchant
from cryptopay.bulk_writes import rows_insert, rows_update
from cryptopay.currencies import fiat_exponent
from notifications.models import Event
from notifications.outbox import event_prepare, event_publish, event_queue_on_commit, events_publish
from payments import states
from payments.addresses import (
    AllocatedAddress,
    SqlCondition,
    address_allocate,
    address_allocate_unless,
    address_release,
)
from payments.chains.config import chain_for_currency
from payments.currencies import crypto
from payments.errors import (
    AddressUnavailable,
    CurrencyNotSwitchable,
    DuplicateOrderId,
    InvalidTransition,
)
from payments.models import (
    Payment,
    PaymentEvent,
    PaymentOption,
    PaymentTransaction,
    UnmatchedTransfer,
)
from payments.money import fiat_to_base_units, format_base_units, format_fiat
from payments.rates import Quote, rate_quote, rate_quote_admissible, rate_quote_for_payment
from payments.states import PaymentStatus, PaymentSubStatus
from resilience import clock

logger = logging.getLogger(__name__)

# --- Payments -----------------------------------------------------------------------------------


def payment_snapshot(payment: Payment) -> dict[str, Any]:
    snapshot = {
        "id": payment.public_id,
        "livemode": payment.livemode,
        "status": payment.status,
        "sub_status": payment.sub_status or None,
        "amount": format_fiat(
            amount=payment.fiat_amount, exponent=fiat_exponent(payment.fiat_currency)
        ),
        "currency": payment.fiat_currency,
        # None until the buyer picks one of the payment's options.
        "crypto_currency": payment.crypto_currency or None,
    }
    if not payment.crypto_currency:
        return snapshot | dict.fromkeys(
            ("crypto_amount", "amount_received", "amount_confirmed", "amount_due")
        )
    currency = crypto(payment.crypto_currency)
    amount = payment.priced_amount
    return snapshot | {
        "crypto_amount": format_base_units(amount=amount, currency=currency),
        "amount_received": format_base_units(amount=payment.amount_received, currency=currency),
        "amount_confirmed": format_base_units(amount=payment.amount_confirmed, currency=currency),
        "amount_due": format_base_units(
            amount=max(amount - payment.amount_received, 0), currency=currency
        ),
    }


@dataclass
class _Writes:
    """Payment writes held back and made in bulk: a chain block changes many payments at once,
    and one INSERT of all their events (and outbox rows) and one UPDATE of all the payments cost
    what one payment's writes would, statement for statement."""

    payments: dict[int, Payment] = field(default_factory=dict)
    events: list[PaymentEvent] = field(default_factory=list)

    def save(self, payment: Payment) -> None:
        self.payments[payment.pk] = payment

    def flush(self, *, at: datetime) -> None:
        if self.payments:
            for payment in self.payments.values():
                payment.updated_at = at  # bulk_update skips auto_now
            rows_update(
                list(self.payments.values()),
                ["event_sequence", "status", "sub_status", "amount_received", "amount_confirmed",
                 "settled_at", "updated_at"],
            )  # fmt: skip
        if self.events:
            rows_insert(self.events)
            events_publish(
                events=[
                    Event(owner=e.payment.merchant.public_id, type=e.type,
                          subject=e.payment.public_id, sequence=e.sequence, data=e.data,
                          livemode=e.payment.livemode)
                    for e in self.events
                ]
            )  # fmt: skip
        self.payments, self.events = {}, []


def _event_append(
    *,
    payment: Payment,
    event_type: str,
    data: dict[str, Any],
    at: datetime,
    writes: _Writes | None = None,
) -> PaymentEvent:
    """Append the next event; the caller holds the payment row lock. With ``writes`` the rows are
    written when it is flushed, in the same transaction."""
    payment.event_sequence += 1
    event = PaymentEvent(
        payment=payment,
        sequence=payment.event_sequence,
        type=event_type,
        data={**data, "payment": payment_snapshot(payment)},
        created_at=at,
    )
    if writes is not None:
        writes.save(payment)
        writes.events.append(event)
        return event
    Payment.objects.filter(pk=payment.pk).update(event_sequence=payment.event_sequence)
    event.save(force_insert=True)
    _event_publish(payment=payment, event=event)
    return event


def _event_publish(*, payment: Payment, event: PaymentEvent) -> None:
    """The outbox row for browsers and webhooks, in the same transaction."""
    event_publish(**_outbox_fields(payment=payment, event=event))


def _outbox_fields(*, payment: Payment, event: PaymentEvent) -> dict[str, Any]:
    return {
        "owner": payment.merchant.public_id,
        "type": event.type,
        "subject": payment.public_id,
        "sequence": event.sequence,
        "livemode": payment.livemode,
        "data": event.data,
    }


# The outbox row repeats its event's type, sequence and data: the statement copies them from the
# event's row instead of sending them twice (the data, a quote and a payment snapshot, is its
# largest value). That also keeps it within what psycopg caches parsed (at most 50 parameters):
# a statement with more is split into its placeholders again on every call.
_OUTBOX_FROM_EVENT = ("type", "sequence", "data")
_EVENT_COLUMNS = ("sequence", "type", "data", "created_at")


@dataclass(frozen=True)
class _PaymentInsert:
    """``_payment_insert``'s statement and the fields whose values it takes, in order."""

    sql: str
    payment_fields: tuple[Field, ...]
    event_fields: tuple[Field, ...]
    outbox_fields: tuple[Field, ...]


@functools.cache
def _payment_insert_statement() -> _PaymentInsert:
    """Built once per process (PostgreSQL only): its text holds nothing but the models' table and
    column names, which do not change while the process runs; every value is a parameter.
    Building it on every call (Django's insert compiler) cost more than PostgreSQL did running it."""
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    payment_fields = tuple(f for f in Payment._meta.local_concrete_fields if not f.primary_key)
    event_fields = tuple(
        f for name in _EVENT_COLUMNS if isinstance(f := PaymentEvent._meta.get_field(name), Field)
    )
    outbox_all = [f for f in Event._meta.local_concrete_fields if not f.primary_key]
    for f in (*payment_fields, *event_fields, *outbox_all):
        # Such a field would need SQL of its own, not "%s" (Django's insert compiler writes
        # it: the field's placeholder, DEFAULT, or nothing for a generated column).
        assert not hasattr(f, "get_placeholder"), f"{f} has its own placeholder"
        assert f.db_default is NOT_PROVIDED and not f.generated, f"{f} is written by the database"
    outbox_sql = ", ".join(
        f"e.{_column(PaymentEvent, f.name)}" if f.name in _OUTBOX_FROM_EVENT else "%s"
        for f in outbox_all
    )
    payment_table = quote(Payment._meta.db_table)
    # Names are the models'; every value is a parameter.
    sql = (
        f"WITH p AS (INSERT INTO {payment_table} "  # noqa: S608
        f"({', '.join(_column(Payment, f.name) for f in payment_fields)}) "
        f"VALUES ({', '.join(['%s'] * len(payment_fields))}) "
        f"ON CONFLICT DO NOTHING RETURNING {payment_table}.{_column(Payment)}), "
        f"e AS (INSERT INTO {quote(PaymentEvent._meta.db_table)} "
        f"({_column(PaymentEvent, 'payment')}, "
        f"{', '.join(_column(PaymentEvent, f.name) for f in event_fields)}) "
        f"SELECT p.{_column(Payment)}, %s, %s, %s, %s FROM p "
        f"RETURNING {_column(PaymentEvent)}, {_column(PaymentEvent, 'payment')}, "
        f"{', '.join(_column(PaymentEvent, name) for name in _OUTBOX_FROM_EVENT)}), "
        f"o AS (INSERT INTO {quote(Event._meta.db_table)} "
        f"({', '.join(_column(Event, f.name) for f in outbox_all)}) "
        f"SELECT {outbox_sql} FROM e RETURNING {_column(Event)}) "
        f"SELECT e.{_column(PaymentEvent)}, e.{_column(PaymentEvent, 'payment')}, "
        f"o.{_column(Event)} FROM e CROSS JOIN o"
    )
    return _PaymentInsert(
        sql=sql,
        payment_fields=payment_fields,
        event_fields=event_fields,
        outbox_fields=tuple(f for f in outbox_all if f.name not in _OUTBOX_FROM_EVENT),
    )


def _payment_insert(*, payment: Payment, event: PaymentEvent) -> bool:
    """Insert a new payment, its first event and that event's outbox row; False, writing
    nothing, when the merchant already has a payment with its ``order_id``.

    On PostgreSQL one statement does all three (the payment's INSERT ... ON CONFLICT DO NOTHING
    in a CTE feeding the event's INSERT, which feeds the outbox's): no savepoint, no error that
    would poison the caller's transaction, one round trip instead of four.
    """
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql":
        try:
            with transaction.atomic():
                payment.save(force_insert=True)
                event.payment = payment
                event.save(force_insert=True)
        except IntegrityError:
            if _order_id_taken(payment):
                return False
            raise
        _event_publish(payment=payment, event=event)
        return True
    statement = _payment_insert_statement()
    outbox = event_prepare(Event(**_outbox_fields(payment=payment, event=event)))
    # Each value prepared as Django's insert prepares it (pre_save: auto_now, then the field's
    # conversion for the database).
    values = [f.get_db_prep_save(f.pre_save(payment, True), db) for f in statement.payment_fields]
    values += [f.get_db_prep_save(getattr(event, f.attname), db) for f in statement.event_fields]
    values += [f.get_db_prep_save(f.pre_save(outbox, True), db) for f in statement.outbox_fields]
    with db.cursor() as cursor:
        cursor.execute(statement.sql, values)
        row = cursor.fetchone()
    if row is None:
        if _order_id_taken(payment):
            return False
        raise IntegrityError(f"payment {payment.public_id} conflicts with an existing one")
    event.pk, payment.pk, outbox.pk = row
    event.payment = payment
    for instance in (payment, event, outbox):
        instance._state.adding, instance._state.db = False, db.alias
    event_queue_on_commit(outbox)
    return True


def _column(model: type[Model], name: str | None = None) -> str:
    """The quoted column of ``model``'s field ``name`` (its primary key without), for raw SQL."""
    field = model._meta.pk if name is None else model._meta.get_field(name)
    if not isinstance(field, Field) or field.column is None:
        raise LookupError(f"{model.__name__}.{name or 'pk'} has no column")
    return connection.ops.quote_name(field.column)


def _order_id_taken(payment: Payment) -> bool:
    return payment.order_id is not None and (
        Payment.objects.filter(
            merchant=payment.merchant, livemode=payment.livemode, order_id=payment.order_id
        ).exists()
    )


def payment_price(*, crypto_currency: str, fiat_currency: str) -> Quote:
    """The quote a new payment would be priced from, fetched now: before the caller opens a
    transaction or holds an idempotency key, so a slow provider holds neither and the rate's
    change record outlives a request that fails later. The policy is applied at creation."""
    return rate_quote(crypto_currency=crypto_currency, fiat_currency=fiat_currency)


def payment_create(
    *,
    merchant: Merchant,
    fiat_amount: Decimal,
    fiat_currency: str,
    crypto_currency: str,
    order_id: str | None = None,
    description: str = "",
    metadata: dict[str, Any] | None = None,
    quote: Quote | None = None,
    redirect_url: str = "",
    cancel_url: str = "",
    livemode: bool = True,
    address: AllocatedAddress | None = None,
) -> Payment:
    """``quote``: fetched beforehand (``payment_price``) by a caller about to open a transaction
    or hold an idempotency key; without it the rate is fetched here. ``livemode`` False (a test
    key's payment): an address on the development chain, whatever chains are configured.
    ``address``: reserved beforehand (``payment_address_reservation``) for this merchant, mode and
    currency; its reservation, not this function, gives it back if no payment is made."""
    if quote is None:
        quote = rate_quote_for_payment(crypto_currency=crypto_currency, fiat_currency=fiat_currency)
    else:
        quote = rate_quote_admissible(quote=quote)
    crypto_amount = fiat_to_base_units(
        fiat_amount=fiat_amount, rate=quote.value, currency=crypto(crypto_currency)
    )
    now = clock.now()
    expires_at = now + merchant.payment_expiry
    payment = Payment(
        merchant=merchant,
        livemode=livemode,
        order_id=order_id,
        description=description,
        metadata=metadata or {},
        redirect_url=redirect_url,
        cancel_url=cancel_url,
        fiat_amount=fiat_amount,
        fiat_currency=fiat_currency,
        crypto_currency=crypto_currency,
        crypto_amount=crypto_amount,
        rate=quote.value,
        rate_bid=quote.bid,
        rate_ask=quote.ask,
        rate_source=quote.source,
        rate_providers=quote.providers,
        rate_fetched_at=quote.fetched_at,
        rate_age_seconds=quote.age_seconds,
        required_confirmations=_required_confirmations(merchant, crypto_currency),
        underpayment_tolerance_percent=merchant.underpayment_tolerance_percent,
        expires_at=expires_at,
        monitoring_until=expires_at + merchant.monitoring_window,
        created_at=now,
        event_sequence=1,  # its creation event, written with it: inserted once, never updated
    )
    # No savepoint (inside a caller's transaction, e.g. the idempotency gate's): nothing in the
    # block raises on purpose, so a refusal leaves the caller's transaction usable; the address
    # is allocated as late as possible, so the counter's row lock is held only to the commit.
    refused: AddressUnavailable | None = None
    created = False
    reserved = address is not None
    with transaction.atomic(savepoint=False):
        try:
            if address is None:
                address = address_allocate(
                    merchant=merchant, crypto_currency=crypto_currency, livemode=livemode
                )
        except AddressUnavailable as exc:
            refused = exc  # nothing was written; raised past the block, which must exit cleanly
        else:
            payment.deposit_address = address.address
            payment.derivation_index = address.index
            payment.key_space = address.key_space
            event = PaymentEvent(
                sequence=1,
                type=PaymentEvent.Type.CREATED,
                data={
                    "quote": quote.provenance(),
                    "deposit_address": address.address,
                    "payment": payment_snapshot(payment),
                },
                created_at=now,
            )
            created = _payment_insert(payment=payment, event=event)
            if not created and not reserved:
                address_release(merchant=merchant, allocated=address)
    if refused is not None:
        raise refused
    if not created:
        raise DuplicateOrderId(
            f"A payment with order_id {order_id!r} already exists.", param="order_id"
        )
    logger.info(
        "payment %s created: %s %s = %s base units of %s at %s (%s)",
        payment.public_id,
        fiat_amount,
        fiat_currency,
        crypto_amount,
        crypto_currency,
        quote.value,
        quote.source,
    )
    return payment


class AddressReservation:
    """An address taken for a payment about to be created; given back on leaving the block
    unless ``keep`` was called (its payment was committed)."""

    def __init__(
        self, *, merchant: Merchant, address: AllocatedAddress | None, answered: bool = False
    ) -> None:
        self.merchant = merchant
        self.address = address
        # The caller's ``unless`` held: nothing was taken (``address`` is None).
        self.answered = answered
        self._kept = False

    def keep(self) -> None:
        self._kept = True


@contextmanager
def payment_address_reservation(
    *, merchant: Merchant, crypto_currency: str, livemode: bool, unless: SqlCondition | None = None
) -> Iterator[AddressReservation]:
    """An address for a payment the block creates in a transaction of its own, taken now in its
    own statement: the counter's row is locked for that statement only, not until the block's
    commit, so a merchant's creations do not queue behind each other's transactions (across
    workers too). The block calls ``keep()`` once its payment is committed; otherwise the index
    is given back if it is still the last one handed out, or stays a gap (never reused).
    ``address`` is None when none can be allocated now: ``payment_create`` then allocates, and
    refuses, inside the block's transaction as it would have. Call it outside any transaction.
    ``unless`` (PostgreSQL): asked in the statement that takes the index; while it holds nothing
    is taken and the reservation is ``answered`` (a retried create whose key has its answer)."""
    answered = False
    try:
        address = address_allocate_unless(
            merchant=merchant, crypto_currency=crypto_currency, livemode=livemode, unless=unless
        )
        answered = address is None
    except AddressUnavailable:
        address = None
    reservation = AddressReservation(merchant=merchant, address=address, answered=answered)
    try:
        yield reservation
    finally:
        if address is not None and not reservation._kept:
            try:
                address_release(merchant=merchant, allocated=address)
            except DatabaseError:
                # Its transaction failed already (the error is on its way); the index stays a gap.
                logger.warning("address index %d not given back", address.index, exc_info=True)


def _raise_if_duplicate_order(
    *, merchant: Merchant, livemode: bool, order_id: str | None, error: IntegrityError
) -> None:
    if (
        order_id is not None
        and Payment.objects.filter(merchant=merchant, livemode=livemode, order_id=order_id).exists()
    ):
        raise DuplicateOrderId(
            f"A payment with order_id {order_id!r} already exists.", param="order_id"
        ) from error


def _quote_fields(quote: Quote) -> dict[str, Any]:
    return {
        "rate": quote.value, "rate_bid": quote.bid, "rate_ask": quote.ask,
        "rate_source": quote.source, "rate_providers": quote.providers,
        "rate_fetched_at": quote.fetched_at, "rate_age_seconds": quote.age_seconds,
    }  # fmt: skip


def option_quote(option: PaymentOption) -> dict[str, Any]:
    """The provenance of the quote an option was priced from."""
    return Quote(
        pair=f"{option.crypto_currency}-{option.payment.fiat_currency}",
        value=option.rate,
        source=option.rate_source,
        fetched_at=option.rate_fetched_at,
        age_seconds=option.rate_age_seconds,
        providers=option.rate_providers,
        bid=option.rate_bid,
        ask=option.rate_ask,
    ).provenance()


def payment_create_with_choice(
    *,
    merchant: Merchant,
    fiat_amount: Decimal,
    fiat_currency: str,
    accepted_currencies: list[str],
    quotes: dict[str, Quote] | None = None,
    order_id: str | None = None,
    description: str = "",
    metadata: dict[str, Any] | None = None,
    redirect_url: str = "",
    cancel_url: str = "",
    livemode: bool = True,
) -> Payment:
    """A payment the buyer pays in the coin they pick on the checkout page.

    Every accepted coin is priced now (its quote kept on its PaymentOption); no address is
    allocated until the buyer picks one (``payment_select_currency``), so coins never picked use
    no address of the merchant's wallets. ``quotes``: fetched beforehand, as for payment_create.
    """
    quotes = quotes or {}
    priced = []
    for code in accepted_currencies:
        quote = quotes.get(code)
        quote = (
            rate_quote_for_payment(crypto_currency=code, fiat_currency=fiat_currency)
            if quote is None
            else rate_quote_admissible(quote=quote)
        )
        amount = fiat_to_base_units(
            fiat_amount=fiat_amount, rate=quote.value, currency=crypto(code)
        )
        priced.append((code, quote, amount))
    now = clock.now()
    expires_at = now + merchant.payment_expiry
    try:
        with transaction.atomic():
            payment = Payment.objects.create(
                merchant=merchant, livemode=livemode, order_id=order_id, description=description,
                metadata=metadata or {}, redirect_url=redirect_url, cancel_url=cancel_url,
                fiat_amount=fiat_amount, fiat_currency=fiat_currency,
                accepted_currencies=[code for code, _, _ in priced],
                required_confirmations=merchant.speed_policy,
                underpayment_tolerance_percent=merchant.underpayment_tolerance_percent,
                expires_at=expires_at, monitoring_until=expires_at + merchant.monitoring_window,
                created_at=now,
            )  # fmt: skip
            PaymentOption.objects.bulk_create(
                PaymentOption(
                    payment=payment,
                    crypto_currency=code,
                    crypto_amount=amount,
                    **_quote_fields(quote),
                )
                for code, quote, amount in priced
            )
            _event_append(
                payment=payment,
                event_type=PaymentEvent.Type.CREATED,
                data={
                    "accepted_currencies": [code for code, _, _ in priced],
                    "options": [
                        {
                            "crypto_currency": code,
                            "crypto_amount": format_base_units(
                                amount=amount, currency=crypto(code)
                            ),
                            "quote": quote.provenance(),
                        }
                        for code, quote, amount in priced
                    ],
                },
                at=now,
            )
    except IntegrityError as exc:
        _raise_if_duplicate_order(
            merchant=merchant, livemode=livemode, order_id=order_id, error=exc
        )
        raise
    logger.info(
        "payment %s created: %s %s, the buyer picks from %s",
        payment.public_id, fiat_amount, fiat_currency, ", ".join(accepted_currencies),
    )  # fmt: skip
    return payment


def payment_currency_switchable(payment: Payment) -> bool:
    """Whether the buyer may still pick or change the coin: the payment is pending, unexpired
    and nothing has been seen paying it (a transaction in flight to one address must not be
    stranded by a switch to another)."""
    return (
        payment.status == PaymentStatus.PENDING
        and not payment.sub_status
        and payment.amount_received == 0
        and clock.now() < payment.expires_at
        and not PaymentTransaction.objects.filter(payment=payment).exists()
    )


def payment_select_currency(*, payment: Payment, crypto_currency: str) -> Payment:
    """The buyer picks (or switches to) one of the payment's coins: its quote becomes the
    payment's and its deposit address is allocated, once, under the payment's row lock.

    Picking the coin already selected changes nothing and writes no event."""
    with transaction.atomic():
        locked = _lock(payment.pk)
        option = (
            PaymentOption.objects.select_for_update()
            .select_related("payment")
            .filter(payment=locked, crypto_currency=crypto_currency)
            .first()
            if crypto_currency in locked.accepted_currencies
            else None
        )
        if option is None:
            if locked.crypto_currency == crypto_currency:
                payment.refresh_from_db()
                return payment  # a single-coin payment: nothing to choose
            raise CurrencyNotSwitchable(
                f"This payment cannot be paid in {crypto_currency}.",
                code="currency_not_accepted",
                param="crypto_currency",
                status_code=400,
            )
        if locked.crypto_currency == crypto_currency:
            payment.refresh_from_db()
            return payment
        if not payment_currency_switchable(locked):
            raise CurrencyNotSwitchable(
                "The coin can no longer be changed: the payment has been paid or has closed.",
                param="crypto_currency",
            )
        now = clock.now()
        if option.deposit_address is None:
            address = address_allocate(
                merchant=locked.merchant, crypto_currency=crypto_currency, livemode=locked.livemode
            )
            option.deposit_address = address.address
            option.derivation_index = address.index
            option.key_space = address.key_space
        option.selected_at = now
        option.save(
            update_fields=["deposit_address", "derivation_index", "key_space", "selected_at"]
        )
        previous = locked.crypto_currency or None
        for name in ("crypto_currency", "crypto_amount", "deposit_address", "derivation_index",
                     "key_space", *_QUOTE_FIELDS):  # fmt: skip
            setattr(locked, name, getattr(option, name))
        locked.required_confirmations = _required_confirmations(locked.merchant, crypto_currency)
        locked.save()
        _event_append(
            payment=locked,
            event_type=PaymentEvent.Type.CURRENCY_SELECTED,
            data={
                "crypto_currency": crypto_currency,
                "previous_crypto_currency": previous,
                "deposit_address": option.deposit_address,
                "quote": option_quote(option),
            },
            at=now,
        )
    logger.info("payment %s: the buyer picked %s", payment.public_id, crypto_currency)
    payment.refresh_from_db()
    return payment


_QUOTE_FIELDS = ("rate", "rate_bid", "rate_ask", "rate_source", "rate_providers",
                 "rate_fetched_at", "rate_age_seconds")  # fmt: skip


def _required_confirmations(merchant: Merchant, crypto_currency: str) -> int:
    """The merchant's speed policy on UTXO chains; the chain's settlement depth on EVM chains."""
    chain = chain_for_currency(crypto_currency)
    if chain is not None and chain.kind == "evm":
        return chain.confirmations
    return merchant.speed_policy


def _lock(payment_id: int) -> Payment:
    return (
        Payment.objects.select_for_update(of=("self",))
        .select_related("merchant")
        .get(pk=payment_id)
    )


def _transition(
    *,
    payment: Payment,
    to_status: str,
    sub_status: str | None,
    reason: str,
    operator: bool,
    at: datetime,
    writes: _Writes | None = None,
) -> bool:
    """Move a locked payment. Returns False (and writes nothing) when nothing would change."""
    new_sub = payment.sub_status if sub_status is None else sub_status
    if payment.status == to_status and payment.sub_status == new_sub:
        return False
    from_status = payment.status
    if from_status != to_status:
        if not states.is_allowed(from_status, to_status):
            raise InvalidTransition(
                f"A {from_status} payment cannot become {to_status}.", param="status"
            )
        if (from_status, to_status) in states.OPERATOR_TRANSITIONS and not operator:
            raise InvalidTransition(
                f"Only an operator can move a {from_status} payment to {to_status}.",
                param="status",
            )
    from_sub = payment.sub_status
    payment.status = to_status
    payment.sub_status = new_sub
    update_fields = ["status", "sub_status", "updated_at"]
    if to_status == PaymentStatus.SETTLED and from_status != to_status:
        payment.settled_at = at
        update_fields.append("settled_at")
    if writes is not None:
        writes.save(payment)
    else:
        payment.save(update_fields=update_fields)
    event_type = (
        PaymentEvent.Type.EXPIRED
        if to_status == PaymentStatus.EXPIRED and from_status != to_status
        else PaymentEvent.Type.STATUS_CHANGED
    )
    _event_append(
        payment=payment,
        event_type=event_type,
        data={
            "from": {"status": from_status, "sub_status": from_sub or None},
            "to": {"status": to_status, "sub_status": new_sub or None},
            "reason": reason,
        },
        at=at,
        writes=writes,
    )
    logger.info(
        "payment %s: %s/%s -> %s/%s (%s)",
        payment.public_id,
        from_status,
        from_sub or "-",
        to_status,
        new_sub or "-",
        reason,
    )
    return True


def payment_transition(
    *,
    payment: Payment,
    to_status: str,
    sub_status: str | None = None,
    reason: str,
    operator: bool = False,
) -> bool:
    """Apply one transition of the state machine.

    Raises ``InvalidTransition`` for an illegal move; repeating the current state is a no-op that
    writes no event. ``payment`` is refreshed in place.
    """
    with transaction.atomic():
        locked = _lock(payment.pk)
        changed = _transition(
            payment=locked,
            to_status=to_status,
            sub_status=sub_status,
            reason=reason,
            operator=operator,
            at=clock.now(),
        )
    payment.refresh_from_db()
    return changed


def payment_cancel(*, payment: Payment) -> Payment:
    """Merchant cancellation: only a pending payment with nothing received can be cancelled."""
    with transaction.atomic():
        locked = _lock(payment.pk)
        if locked.status == PaymentStatus.PENDING and locked.amount_received > 0:
            raise InvalidTransition(
                "This payment has already received funds and cannot be cancelled.",
                code="payment_has_funds",
            )
        _transition(
            payment=locked,
            to_status=PaymentStatus.CANCELLED,
            sub_status=None,
            reason="cancelled by merchant",
            operator=False,
            at=clock.now(),
        )
    payment.refresh_from_db()
    return payment


def payment_mark(*, payment: Payment, to_status: str) -> bool:
    """An operator marks a payment settled or invalid (sub-status ``marked``)."""
    return payment_transition(
        payment=payment,
        to_status=to_status,
        sub_status=PaymentSubStatus.MARKED,
        reason="marked by operator",
        operator=True,
    )


@dataclass(frozen=True)
class ObservedOutput:
    """One output (or token transfer) paying a deposit address, as a chain reports it now."""

    chain: str
    txid: str
    output_index: int
    amount: int
    confirmations: int
    kind: str = PaymentTransaction.Kind.OUTPUT
    block_hash: str = ""
    block_height: int | None = None
    mined_at: datetime | None = None
    replaceable: bool = False
    # Outpoints (txid:vout) it spends: what a replacement or double spend has in common with it.
    spends: tuple[str, ...] = ()
    # When the node first saw it (its mempool entry time), if it says.
    seen_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What it is recorded under (unique): chain, txid, kind, output index."""
        return (self.chain, self.txid, self.kind, self.output_index)

    @property
    def state(self) -> str:
        return (
            PaymentTransaction.State.CONFIRMED
            if self.block_hash
            else PaymentTransaction.State.MEMPOOL
        )


def payment_apply_transaction(*, payment: Payment, output: ObservedOutput) -> bool:
    """Record (once) or update an output paying ``payment`` and move the payment accordingly.

    Idempotent: the same observation again changes nothing and writes no event. Returns True
    when anything changed.
    """
    if output.amount <= 0:
        raise ValueError("output amount must be positive")
    now = clock.now()
    observed = _observed_fields(output)
    first_seen_at = min(now, output.seen_at) if output.seen_at else now
    with transaction.atomic():
        locked = _lock(payment.pk)
        tx, created = PaymentTransaction.objects.select_for_update().get_or_create(
            chain=output.chain,
            txid=output.txid,
            kind=output.kind,
            output_index=output.output_index,
            defaults={
                "payment": locked,
                "amount": output.amount,
                "first_seen_at": first_seen_at,
                "spends": list(output.spends),
                **observed,
            },
        )
        replaced = _conflicting(output) if created else []
        for old in replaced:
            # A replacement (RBF fee bump) or double spend: the transaction it replaces stops
            # counting in the same step, so the payment never counts both.
            _transaction_drop(
                tx=old,
                reason=f"replaced by {output.txid}",
                at=now,
                payment=locked if old.payment_id == locked.pk else None,
                reevaluate=False,
            )
        if (
            replaced
            and (inherited := min(old.first_seen_at for old in replaced)) < tx.first_seen_at
        ):
            # The replacement inherits when the buyer first paid, for lateness.
            tx.first_seen_at = inherited
            tx.save(update_fields=["first_seen_at"])
        if tx.payment_id != locked.pk or tx.amount != output.amount:
            raise ValueError(f"output {tx} is already recorded with other details")
        if not tx.spends and output.spends:
            tx.spends = list(output.spends)
            tx.save(update_fields=["spends"])
        changes = {name: value for name, value in observed.items() if getattr(tx, name) != value}
        if tx.mined_at is not None and output.mined_at is None:
            changes.pop("mined_at", None)  # keep when it was first mined, for lateness
        if not created and not changes:
            payment.refresh_from_db()
            return False
        if not created:
            for name, value in changes.items():
                setattr(tx, name, value)
            tx.save(update_fields=list(changes))
        if created or "state" in changes:
            _event_append(
                payment=locked,
                event_type=PaymentEvent.Type.TRANSACTION_DETECTED,
                data=_detected_data(output, locked.crypto_currency),
                at=now,
            )
        _payment_reevaluate(payment=locked, at=now)
        for other in {old.payment_id for old in replaced} - {locked.pk}:
            _payment_reevaluate(payment=_lock(other), at=now)
    payment.refresh_from_db()
    return True


def _observed_fields(output: ObservedOutput) -> dict[str, Any]:
    return {
        "confirmations": output.confirmations,
        "state": output.state,
        "block_hash": output.block_hash,
        "block_height": output.block_height,
        "mined_at": output.mined_at,
        "replaceable": output.replaceable,
    }


def _detected_data(output: ObservedOutput, currency: str) -> dict[str, Any]:
    return {
        "chain": output.chain,
        "txid": output.txid,
        "output_index": output.output_index,
        "amount": format_base_units(amount=output.amount, currency=crypto(currency)),
        "confirmations": output.confirmations,
        "state": output.state,
        "block_height": output.block_height,
    }


def payment_transactions_apply(*, observations: Sequence[tuple[int, ObservedOutput]]) -> int:
    """``payment_apply_transaction`` for many outputs at once (a block's, a poll's re-count), by
    payment id, in one transaction (the caller's, if it has one): the payments are locked in one
    statement, their transactions read in one, new ones inserted in one, and each payment is
    re-evaluated once after all its outputs are in, its events and updates written in bulk.

    The same observations again change nothing. A new output that replaces a recorded one (it
    spends the same input: RBF, a double spend) takes the one-by-one path, which drops the
    replaced transaction in the same step. Returns how many outputs were new or changed.
    """
    if not observations:
        return 0
    if any(output.amount <= 0 for _, output in observations):
        raise ValueError("output amount must be positive")
    now = clock.now()
    payment_ids = sorted({payment_id for payment_id, _ in observations})
    with transaction.atomic(savepoint=False):
        locked = {
            payment.pk: payment
            for payment in Payment.objects.select_for_update(of=("self",))
            .select_related("merchant")
            .filter(pk__in=payment_ids)
            .order_by("pk")
        }
        # Every transaction of these payments (for their totals) and any already recorded under
        # an observed key (to update it, or to refuse an output claimed by another payment).
        rows = PaymentTransaction.objects.select_for_update().filter(
            Q(payment_id__in=payment_ids)
            | Q(
                chain__in={output.chain for _, output in observations},
                txid__in={output.txid for _, output in observations},
            )
        )
        recorded = {(tx.chain, tx.txid, tx.kind, tx.output_index): tx for tx in rows}
        spending = [o for _, o in observations if o.spends]
        replacing = _replacing_txids(spending, recorded) if spending else set()
        writes = _Writes()
        new: list[PaymentTransaction] = []
        dirty: dict[int, PaymentTransaction] = {}
        changed_fields: set[str] = set()
        touched: set[int] = set()
        one_by_one: list[tuple[int, ObservedOutput]] = []
        count = 0
        for payment_id, output in observations:
            payment, key = locked[payment_id], output.key
            observed = _observed_fields(output)
            tx = recorded.get(key)
            if tx is None and output.txid in replacing:
                one_by_one.append((payment_id, output))
                continue
            if tx is None:
                tx = PaymentTransaction(
                    payment=payment, chain=output.chain, txid=output.txid, kind=output.kind,
                    output_index=output.output_index, amount=output.amount,
                    first_seen_at=min(now, output.seen_at) if output.seen_at else now,
                    spends=list(output.spends), **observed,
                )  # fmt: skip
                recorded[key] = tx
                new.append(tx)
                state_changed = True
            else:
                if tx.payment_id != payment_id or tx.amount != output.amount:
                    raise ValueError(f"output {tx} is already recorded with other details")
                changes = {n: v for n, v in observed.items() if getattr(tx, n) != v}
                if tx.mined_at is not None and output.mined_at is None:
                    changes.pop("mined_at", None)  # keep when it was first mined, for lateness
                if not tx.spends and output.spends:
                    changes["spends"] = list(output.spends)
                if not changes:
                    continue
                for name, value in changes.items():
                    setattr(tx, name, value)
                if tx.pk is not None:
                    dirty[tx.pk] = tx
                    changed_fields.update(changes)
                state_changed = "state" in changes
            count += 1
            touched.add(payment_id)
            if state_changed:
                _event_append(
                    payment=payment,
                    event_type=PaymentEvent.Type.TRANSACTION_DETECTED,
                    data=_detected_data(output, payment.crypto_currency),
                    at=now,
                    writes=writes,
                )
        PaymentTransaction.objects.bulk_create(new)
        if dirty:
            rows_update(list(dirty.values()), sorted(changed_fields))
        live: dict[int, list[PaymentTransaction]] = defaultdict(list)
        for tx in recorded.values():
            if tx.payment_id in locked and tx.state != PaymentTransaction.State.DROPPED:
                live[tx.payment_id].append(tx)
        for payment_id in sorted(touched):
            _payment_reevaluate(
                payment=locked[payment_id], at=now, writes=writes, live=live[payment_id]
            )
        writes.flush(at=now)
        for payment_id, output in one_by_one:
            count += int(payment_apply_transaction(payment=locked[payment_id], output=output))
    return count


def _replacing_txids(
    outputs: list[ObservedOutput], recorded: dict[tuple[str, str, str, int], PaymentTransaction]
) -> set[str]:
    """Txids of new ``outputs`` that spend an input of a recorded unconfirmed transaction."""
    new = [o for o in outputs if o.key not in recorded]
    if not new:
        return set()
    pending = PaymentTransaction.objects.filter(
        chain__in={o.chain for o in new}, state=PaymentTransaction.State.MEMPOOL
    ).values_list("txid", "spends")
    spent: dict[str, set[str]] = defaultdict(set)
    for txid, spends in pending:
        for outpoint in spends:
            spent[outpoint].add(txid)
    return {o.txid for o in new if any(spent[p] - {o.txid} for p in o.spends)}


def _conflicting(output: ObservedOutput) -> list[PaymentTransaction]:
    """Unconfirmed recorded transactions that spend an input ``output``'s transaction spends."""
    if not output.spends:
        return []
    spends = set(output.spends)
    candidates = (
        PaymentTransaction.objects.select_for_update()
        .filter(chain=output.chain, state=PaymentTransaction.State.MEMPOOL)
        .exclude(txid=output.txid)
    )
    return [tx for tx in candidates if spends.intersection(tx.spends)]


def _transaction_drop(
    *,
    tx: PaymentTransaction,
    reason: str,
    at: datetime,
    payment: Payment | None = None,
    reevaluate: bool = True,
) -> None:
    """Stop counting ``tx`` (locked by the caller). ``payment``: its payment, when the caller
    already holds that row lock (its event sequence then advances on the same object)."""
    locked = payment if payment is not None else _lock(tx.payment_id)
    tx.state = PaymentTransaction.State.DROPPED
    tx.confirmations = 0
    tx.block_hash, tx.block_height = "", None
    tx.save(update_fields=["state", "confirmations", "block_hash", "block_height"])
    _event_append(
        payment=locked,
        event_type=PaymentEvent.Type.TRANSACTION_DETECTED,
        data={"chain": tx.chain, "txid": tx.txid, "output_index": tx.output_index,
              "state": tx.state, "reason": reason},
        at=at,
    )  # fmt: skip
    if reevaluate:
        _payment_reevaluate(payment=locked, at=at)
    logger.warning("transaction %s dropped: %s", tx, reason)


def unmatched_transfer_record(
    *, payment: Payment, output: ObservedOutput, currency: str, to_address: str
) -> bool:
    """Record (once) a transfer of ``currency`` that reached ``payment``'s deposit address but is
    not what the payment asks for. It credits nothing and changes no status; the payment gets a
    ``transaction.unmatched`` event (the merchant's notification) under its row lock. Returns True
    when it was new."""
    if output.amount <= 0:
        raise ValueError("transfer amount must be positive")
    now = clock.now()
    with transaction.atomic():
        locked = _lock(payment.pk)
        _, created = UnmatchedTransfer.objects.get_or_create(
            chain=output.chain,
            txid=output.txid,
            kind=output.kind,
            output_index=output.output_index,
            defaults={
                "currency": currency, "amount": output.amount, "to_address": to_address,
                "payment": locked, "block_hash": output.block_hash,
                "block_height": output.block_height, "seen_at": now,
            },
        )  # fmt: skip
        if not created:
            return False
        _event_append(
            payment=locked,
            event_type=PaymentEvent.Type.TRANSACTION_UNMATCHED,
            data={
                "chain": output.chain,
                "txid": output.txid,
                "kind": output.kind,
                "output_index": output.output_index,
                "currency": currency,
                "amount": format_base_units(amount=output.amount, currency=crypto(currency)),
                "to_address": to_address,
                "block_height": output.block_height,
                "credited": False,
            },
            at=now,
        )
    logger.warning(
        "payment %s: %s %s arrived at its %s address in %s; recorded as unmatched, not credited",
        payment.public_id, output.amount, currency, payment.crypto_currency, output.txid,
    )  # fmt: skip
    return True


def payment_transaction_drop(*, transaction_id: int, reason: str) -> bool:
    """A recorded transaction is gone (reorged out and not in the mempool, replaced, double spent):
    it stops counting and the payment is re-evaluated. Idempotent."""
    now = clock.now()
    with transaction.atomic():
        tx = PaymentTransaction.objects.select_related("payment").get(pk=transaction_id)
        locked = _lock(tx.payment_id)
        tx = PaymentTransaction.objects.select_for_update().get(pk=transaction_id)
        if tx.state == PaymentTransaction.State.DROPPED:
            return False
        _transaction_drop(tx=tx, reason=reason, at=now, payment=locked)
    return True


def _payment_reevaluate(
    *,
    payment: Payment,
    at: datetime,
    writes: _Writes | None = None,
    live: list[PaymentTransaction] | None = None,
) -> None:
    """Record the totals the live transactions add up to and apply the transitions they lead to
    (``states.payment_evaluate`` computes both).

    ``live``: the payment's transactions that are not dropped, when the caller has them all (a
    batch read them under lock), which saves the query. With ``writes`` the rows are written when
    it is flushed, in the same transaction."""
    if live is not None:
        received = [
            states.Received(
                tx.amount, tx.confirmations, tx.replaceable, tx.first_seen_at, tx.mined_at
            )
            for tx in live
        ]
    else:
        received = [
            states.Received(*row)
            for row in PaymentTransaction.objects.filter(payment=payment)
            .exclude(state=PaymentTransaction.State.DROPPED)
            .values_list("amount", "confirmations", "replaceable", "first_seen_at", "mined_at")
        ]
    evaluation = states.payment_evaluate(
        status=payment.status,
        sub_status=payment.sub_status,
        received=received,
        policy=states.Policy(
            amount_due=payment.priced_amount,
            underpayment_tolerance_percent=payment.underpayment_tolerance_percent,
            required_confirmations=payment.required_confirmations,
            expires_at=payment.expires_at,
        ),
        at=at,
    )
    payment.amount_received = evaluation.amount_received
    payment.amount_confirmed = evaluation.amount_confirmed
    if writes is not None:
        writes.save(payment)
    else:
        payment.save(update_fields=["amount_received", "amount_confirmed", "updated_at"])
    for step in evaluation.steps:
        _transition(
            payment=payment,
            to_status=step.status,
            sub_status=step.sub_status,
            reason=step.reason,
            operator=False,
            at=at,
            writes=writes,
        )


def _sweep(*, due: Q, to_status: str, reason: str, at: datetime) -> int:
    moved = 0
    for payment_id in Payment.objects.filter(due).values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            locked = (
                Payment.objects.select_for_update(skip_locked=True)
                .filter(due, pk=payment_id)
                .first()
            )
            if locked and _transition(
                payment=locked,
                to_status=to_status,
                sub_status=None,
                reason=reason,
                operator=False,
                at=at,
            ):
                moved += 1
    return moved


def _expiry_seen() -> Q:
    """Payments whose chain the watcher has seen past their expiry.

    A payment on a watched chain expires only once a poll that saw everything its node knew
    (blocks and mempool) started after the expiry: until then a transaction paying it on time
    may exist where we have not looked (a node outage, a lagging or stalled watcher), and an
    expiry now would be a spurious ``payment.expired``. The watcher's own record decides, so the
    health probe and the watcher cannot disagree about whether the chain is reachable.
    Development-chain payments are not watched and expire on time.
    """
    from payments.chains.config import chains
    from payments.models import ChainCursor

    configured = chains()
    if not configured:
        return Q()
    synced = dict(
        ChainCursor.objects.filter(chain__in=list(configured)).values_list("chain", "synced_at")
    )
    seen = Q(deposit_address__startswith="dev")
    watched_currencies: list[str] = []
    for chain in configured.values():
        watched_currencies += chain.currencies
        if synced.get(chain.name) is not None:
            seen |= Q(crypto_currency__in=chain.currencies, expires_at__lt=synced[chain.name])
    return seen | ~Q(crypto_currency__in=watched_currencies)


def payments_expire_due() -> dict[str, int]:
    """Expire unpaid payments past their expiry; invalidate unconfirmed ones past monitoring.

    Each payment moves in its own short transaction and rows another worker holds are skipped,
    so several sweepers can run at once. At most 1000 of each per run; the next run takes the rest.
    """
    from payments.probes import expiry_held_currencies

    now = clock.now()
    # Chain reads' last fallback: while no node of a chain answers, its payments do not expire
    # (a buyer may have paid where we cannot see); they expire once a node answers again.
    held = expiry_held_currencies()
    if held:
        logger.warning("expiry paused for %s: no node of their chain answers", ", ".join(held))
    counts = {
        "expired": _sweep(
            due=Q(status=PaymentStatus.PENDING, expires_at__lte=now)
            # Test payments are on the development chain: they wait for no real chain (a live
            # payment on it stays held like any other of its currency).
            & (~Q(crypto_currency__in=held) | Q(livemode=False))
            & _expiry_seen(),
            to_status=PaymentStatus.EXPIRED,
            reason="expired",
            at=now,
        ),
        "invalidated": _sweep(
            due=Q(status=PaymentStatus.PROCESSING, monitoring_until__lte=now),
            to_status=PaymentStatus.INVALID,
            reason="not confirmed within the monitoring window",
            at=now,
        ),
    }
    if any(counts.values()):
        logger.info("expiry sweep: %s", counts)
    return counts
