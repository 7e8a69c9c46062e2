"""Writes: every change to merchants, keys and payments goes through a function here.

Each payment state change locks the payment row, applies the change and appends its event in the
same transaction, so the event log and the payment never disagree.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q

from notifications.services import event_publish
from payments import states
from payments.addresses import address_allocate
from payments.chains.config import chain_for_currency
from payments.currencies import crypto, fiat_exponent
from payments.errors import DuplicateOrderId, InvalidTransition
from payments.models import (
    ApiKey,
    ApiKeyScope,
    BaseUnitsSum,
    Merchant,
    Payment,
    PaymentEvent,
    PaymentTransaction,
    UnmatchedTransfer,
    random_token,
)
from payments.money import fiat_to_base_units, format_base_units, format_fiat
from payments.rates import Quote, rate_quote, rate_quote_admissible, rate_quote_for_payment
from payments.states import PaymentStatus, PaymentSubStatus
from resilience import clock

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "cpk_"
# Test keys (Stripe's sk_test_): their payments are test payments (``Payment.livemode`` False).
TEST_API_KEY_PREFIX = "cpk_test_"
API_KEY_PREFIX_LENGTH = 12  # random characters after "cpk_" that are stored and shown
API_KEY_SECRET_LENGTH = 32  # random characters only the merchant ever sees


# --- Merchants and API keys ---------------------------------------------------------------------


def merchant_create(*, name: str, **fields: Any) -> Merchant:
    return Merchant.objects.create(name=name, **fields)


def api_key_hash(raw_key: str) -> str:
    """SHA-256 of the whole key. Keys carry ~190 random bits, so a fast hash is enough (as GitHub
    and Stripe do); a slow password hash would only add latency to every request."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_head(*, livemode: bool) -> str:
    """What a key of that mode starts with: ``cpk_`` (live) or ``cpk_test_``."""
    return API_KEY_PREFIX if livemode else TEST_API_KEY_PREFIX


def api_key_split(raw_key: str) -> str | None:
    """The stored prefix of a presented key, or None when it cannot be one of ours.

    Unambiguous: what follows a live key's ``cpk_`` is alphanumeric, so never ``test_``."""
    head = api_key_head(livemode=not raw_key.startswith(TEST_API_KEY_PREFIX))
    if not raw_key.startswith(head):
        return None
    if len(raw_key) != len(head) + API_KEY_PREFIX_LENGTH + API_KEY_SECRET_LENGTH:
        return None
    if not raw_key[len(head) :].isalnum() or not raw_key.isascii():
        return None
    return raw_key[: len(head) + API_KEY_PREFIX_LENGTH]


def api_key_create(
    *,
    merchant: Merchant,
    name: str,
    scopes: list[str],
    livemode: bool = True,
    raw_key: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored and never shown again.

    ``livemode`` False makes a test key (``cpk_test_…``). ``raw_key`` lets the demo bootstrap
    install a key derived from SECRET_KEY (stable across reruns); its mode must be ``livemode``.
    """
    if raw_key is None:
        raw_key = api_key_head(livemode=livemode) + random_token(
            API_KEY_PREFIX_LENGTH + API_KEY_SECRET_LENGTH
        )
    prefix = api_key_split(raw_key)
    if prefix is None or prefix.startswith(TEST_API_KEY_PREFIX) == livemode:
        raise ValueError("malformed API key")
    unknown = set(scopes) - set(ApiKeyScope.values)
    if unknown:
        raise ValueError(f"unknown scopes: {sorted(unknown)}")
    api_key = ApiKey.objects.create(
        merchant=merchant,
        name=name,
        prefix=prefix,
        key_hash=api_key_hash(raw_key),
        scopes=sorted(set(scopes)),
        livemode=livemode,
    )
    logger.info("API key %s created for merchant %s", prefix, merchant.public_id)
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> bool:
    """Revoke the key; returns False when it already was."""
    revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
        revoked_at=clock.now()
    )
    api_key.refresh_from_db(fields=["revoked_at"])
    if revoked:
        logger.info("API key %s revoked", api_key.prefix)
    return bool(revoked)


def api_key_matches(*, api_key: ApiKey, raw_key: str) -> bool:
    return hmac.compare_digest(api_key.key_hash, api_key_hash(raw_key))


# --- Payments -----------------------------------------------------------------------------------


def payment_snapshot(payment: Payment) -> dict[str, Any]:
    currency = crypto(payment.crypto_currency)
    return {
        "id": payment.public_id,
        "livemode": payment.livemode,
        "status": payment.status,
        "sub_status": payment.sub_status or None,
        "amount": format_fiat(
            amount=payment.fiat_amount, exponent=fiat_exponent(payment.fiat_currency)
        ),
        "currency": payment.fiat_currency,
        "crypto_currency": payment.crypto_currency,
        "crypto_amount": format_base_units(amount=payment.crypto_amount, currency=currency),
        "amount_received": format_base_units(amount=payment.amount_received, currency=currency),
        "amount_confirmed": format_base_units(amount=payment.amount_confirmed, currency=currency),
        "amount_due": format_base_units(
            amount=max(payment.crypto_amount - payment.amount_received, 0), currency=currency
        ),
    }


def _event_append(
    *, payment: Payment, event_type: str, data: dict[str, Any], at: datetime
) -> PaymentEvent:
    """Append the next event; the caller holds the payment row lock."""
    payment.event_sequence += 1
    Payment.objects.filter(pk=payment.pk).update(event_sequence=payment.event_sequence)
    event = PaymentEvent.objects.create(
        payment=payment,
        sequence=payment.event_sequence,
        type=event_type,
        data={**data, "payment": payment_snapshot(payment)},
        created_at=at,
    )
    # The outbox row for browsers and webhooks, in the same transaction.
    event_publish(
        owner=payment.merchant.public_id,
        type=event_type,
        subject=payment.public_id,
        sequence=event.sequence,
        livemode=payment.livemode,
        data=event.data,
    )
    return event


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
    livemode: bool = True,
) -> Payment:
    """``quote``: fetched beforehand (``payment_price``) by a caller about to open a transaction
    or hold an idempotency key; without it the rate is fetched here. ``livemode`` False (a test
    key's payment): an address on the development chain, whatever chains are configured."""
    if quote is None:
        quote = rate_quote_for_payment(crypto_currency=crypto_currency, fiat_currency=fiat_currency)
    else:
        quote = rate_quote_admissible(quote=quote)
    crypto_amount = fiat_to_base_units(
        fiat_amount=fiat_amount, rate=quote.value, currency=crypto(crypto_currency)
    )
    now = clock.now()
    expires_at = now + merchant.payment_expiry
    try:
        with transaction.atomic():
            address = address_allocate(
                merchant=merchant, crypto_currency=crypto_currency, livemode=livemode
            )
            payment = Payment.objects.create(
                merchant=merchant,
                livemode=livemode,
                order_id=order_id,
                description=description,
                metadata=metadata or {},
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
                deposit_address=address.address,
                derivation_index=address.index,
                key_space=address.key_space,
                required_confirmations=_required_confirmations(merchant, crypto_currency),
                underpayment_tolerance_percent=merchant.underpayment_tolerance_percent,
                expires_at=expires_at,
                monitoring_until=expires_at + merchant.monitoring_window,
                created_at=now,
            )
            _event_append(
                payment=payment,
                event_type=PaymentEvent.Type.CREATED,
                data={
                    "quote": quote.provenance(),
                    "deposit_address": address.address,
                },
                at=now,
            )
    except IntegrityError as exc:
        if (
            order_id is not None
            and Payment.objects.filter(
                merchant=merchant, livemode=livemode, order_id=order_id
            ).exists()
        ):
            raise DuplicateOrderId(
                f"A payment with order_id {order_id!r} already exists.", param="order_id"
            ) from exc
        raise
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
    def state(self) -> str:
        return (
            PaymentTransaction.State.CONFIRMED
            if self.block_hash
            else PaymentTransaction.State.MEMPOOL
        )


def _paid_threshold(payment: Payment) -> int:
    """Base units that count as paid in full under the payment's underpayment tolerance."""
    tolerance = payment.underpayment_tolerance_percent
    return math.ceil(payment.crypto_amount * (Decimal(100) - tolerance) / Decimal(100))


def payment_apply_transaction(*, payment: Payment, output: ObservedOutput) -> bool:
    """Record (once) or update an output paying ``payment`` and move the payment accordingly.

    Idempotent: the same observation again changes nothing and writes no event. Returns True
    when anything changed.
    """
    if output.amount <= 0:
        raise ValueError("output amount must be positive")
    now = clock.now()
    observed = {
        "confirmations": output.confirmations,
        "state": output.state,
        "block_hash": output.block_hash,
        "block_height": output.block_height,
        "mined_at": output.mined_at,
        "replaceable": output.replaceable,
    }
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
                data={
                    "chain": output.chain,
                    "txid": output.txid,
                    "output_index": output.output_index,
                    "amount": format_base_units(
                        amount=output.amount, currency=crypto(locked.crypto_currency)
                    ),
                    "confirmations": output.confirmations,
                    "state": output.state,
                    "block_height": output.block_height,
                },
                at=now,
            )
        _payment_reevaluate(payment=locked, at=now)
        for other in {old.payment_id for old in replaced} - {locked.pk}:
            _payment_reevaluate(payment=_lock(other), at=now)
    payment.refresh_from_db()
    return True


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


def _payment_reevaluate(*, payment: Payment, at: datetime) -> None:
    """Recompute received/confirmed totals and walk the state machine to where they lead."""
    live = PaymentTransaction.objects.filter(payment=payment).exclude(
        state=PaymentTransaction.State.DROPPED
    )
    # 0-conf is never enough for a transaction that signals replace-by-fee.
    confirmed_filter = Q(confirmations__gte=max(payment.required_confirmations, 1)) | Q(
        confirmations__gte=payment.required_confirmations, replaceable=False
    )
    totals = live.aggregate(
        received=BaseUnitsSum("amount"),
        confirmed=BaseUnitsSum("amount", filter=confirmed_filter),
    )
    payment.amount_received = int(totals["received"] or 0)
    payment.amount_confirmed = int(totals["confirmed"] or 0)
    payment.save(update_fields=["amount_received", "amount_confirmed", "updated_at"])

    threshold = _paid_threshold(payment)
    paid_in_full = payment.amount_received >= threshold
    confirmed_in_full = payment.amount_confirmed >= threshold
    over = (
        PaymentSubStatus.PAID_OVER
        if payment.amount_received > payment.crypto_amount
        else PaymentSubStatus.NONE
    )
    partial = (
        PaymentSubStatus.PAID_PARTIAL if payment.amount_received > 0 else PaymentSubStatus.NONE
    )

    def move(to_status: str, sub_status: str, reason: str) -> None:
        _transition(
            payment=payment,
            to_status=to_status,
            sub_status=sub_status,
            reason=reason,
            operator=False,
            at=at,
        )

    if payment.sub_status == PaymentSubStatus.MARKED:
        return  # an operator decided; amounts are still recorded above
    if (
        payment.status == PaymentStatus.PENDING
        and paid_in_full
        and at > payment.expires_at
        and not _paid_before(payment, threshold)
    ):
        # Paid after expiry by the chain's evidence (first seen and mined after it), whether or
        # not the expiry sweep has run yet (it waits for the watcher to look past the expiry):
        # the quote is not honoured; the merchant decides.
        move(PaymentStatus.EXPIRED, PaymentSubStatus.PAID_LATE, "paid after expiry")
        return
    if (
        payment.status == PaymentStatus.EXPIRED
        and paid_in_full
        and _paid_before(payment, threshold)
    ):
        # Paid before expiry but noticed after it (a node outage, a catch-up): on time.
        move(PaymentStatus.PROCESSING, over, "paid before expiry, noticed after it")
    if payment.status == PaymentStatus.SETTLED and not confirmed_in_full:
        move(PaymentStatus.PROCESSING, over, "confirmations lost in a reorg")
    status = payment.status
    if status == PaymentStatus.PENDING:
        if paid_in_full:
            move(PaymentStatus.PROCESSING, over, "paid in full")
        elif payment.amount_received > 0 or payment.sub_status:
            move(PaymentStatus.PENDING, partial, "payment amount changed")
    if payment.status == PaymentStatus.PROCESSING:
        if not paid_in_full:
            move(PaymentStatus.PENDING, partial, "underpaid again")
        elif confirmed_in_full:
            move(PaymentStatus.SETTLED, over, "confirmed")
        else:
            move(PaymentStatus.PROCESSING, over, "payment amount changed")
    elif payment.status == PaymentStatus.SETTLED and status == PaymentStatus.SETTLED:
        move(PaymentStatus.SETTLED, over, "payment amount changed")
    elif payment.status in (PaymentStatus.EXPIRED, PaymentStatus.CANCELLED):
        if payment.amount_received > 0:
            late = PaymentSubStatus.PAID_LATE if paid_in_full else PaymentSubStatus.PAID_PARTIAL
            move(payment.status, late, "paid after the payment closed")
        else:
            move(payment.status, PaymentSubStatus.NONE, "payment no longer counted")


def _paid_before(payment: Payment, threshold: int) -> bool:
    """Whether the payment was paid in full by transactions seen or mined before it expired."""
    on_time = 0
    for tx in PaymentTransaction.objects.filter(payment=payment).exclude(
        state=PaymentTransaction.State.DROPPED
    ):
        paid_at = min(t for t in (tx.first_seen_at, tx.mined_at) if t is not None)
        if paid_at <= payment.expires_at:
            on_time += tx.amount
    return on_time >= threshold


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
    from payments.dependencies import expiry_held_currencies

    now = clock.now()
    # Chain reads' last fallback: while no node of a chain answers, its payments do not expire
    # (a buyer may have paid where we cannot see); they expire once a node answers again.
    held = expiry_held_currencies()
    if held:
        logger.warning("expiry paused for %s: no node of their chain answers", ", ".join(held))
    counts = {
        "expired": _sweep(
            due=Q(status=PaymentStatus.PENDING, expires_at__lte=now)
            # Development-chain payments (test mode) wait for no real chain.
            & (~Q(crypto_currency__in=held) | Q(deposit_address__startswith="dev"))
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
