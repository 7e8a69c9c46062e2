"""Paying on the development chain: what `manage.py simulate_payment`, the checkout page's
"simulate payment" button and ``POST /api/v1/payments/{id}/simulate`` (test mode) do, through the
same ``payment_apply_transaction`` real watchers use.

Test payments (``livemode`` False) are always on the development chain and can always be
simulated; live payments only when the development chain is on (embedded mode)."""

from __future__ import annotations

import secrets

from django.conf import settings
from rest_framework import status

from accounts.api_errors import ApiError
from payments.addresses import DEV_CHAIN
from payments.models import Payment, PaymentTransaction
from payments.services import ObservedOutput, payment_apply_transaction


class SimulationRefused(ApiError, ValueError):
    """The payment cannot be paid that way (an API 409, like the checkout button's)."""

    status_code = status.HTTP_409_CONFLICT
    code = "simulation_refused"


def simulation_allowed(payment: Payment) -> bool:
    """Whether ``payment_simulate`` may pay this payment (the checkout shows its button then)."""
    return (payment.deposit_address or "").startswith(DEV_CHAIN) and (
        not payment.livemode or settings.DEV_CHAIN_ENABLED
    )


def payment_simulate(
    *,
    payment: Payment,
    amount: int | None = None,
    confirmations: int | None = None,
    txid: str | None = None,
) -> ObservedOutput:
    """Pay ``amount`` base units (default: what is still due) to the payment's dev-chain address,
    or, given ``txid``, change an earlier simulated transaction's confirmations."""
    if payment.livemode and not settings.DEV_CHAIN_ENABLED:
        raise SimulationRefused(
            "The development chain is off for live payments (set CRYPTOPAY_DEV_CHAIN=1); "
            "test payments can always be simulated."
        )
    if not payment.crypto_currency:
        raise SimulationRefused("The buyer has not picked a coin yet (no address to pay).")
    if not (payment.deposit_address or "").startswith(DEV_CHAIN):
        raise SimulationRefused("This payment's address is not on the development chain.")
    if confirmations is None:
        confirmations = payment.required_confirmations
    if confirmations < 0:
        raise SimulationRefused("confirmations must be 0 or more.")
    if txid:
        tx = PaymentTransaction.objects.filter(payment=payment, chain=DEV_CHAIN, txid=txid).first()
        if tx is None:
            raise SimulationRefused(f"No transaction {txid!r} for this payment.")
        output = ObservedOutput(
            chain=DEV_CHAIN,
            txid=tx.txid,
            output_index=tx.output_index,
            amount=tx.amount,
            confirmations=confirmations,
        )
    else:
        if amount is None:
            amount = payment.priced_amount - payment.amount_received
            if amount <= 0:
                raise SimulationRefused("Nothing is due; give an amount to pay more.")
        if amount <= 0:
            raise SimulationRefused("The amount must be positive.")
        output = ObservedOutput(
            chain=DEV_CHAIN,
            txid="dev" + secrets.token_hex(30),
            output_index=0,
            amount=amount,
            confirmations=confirmations,
        )
    payment_apply_transaction(payment=payment, output=output)
    return output
