"""Pay a payment on the development chain, through the same state machine a real chain uses.

manage.py simulate_payment pay_…                       # pay what is due, confirm per policy
manage.py simulate_payment pay_… --amount 0.0001       # pay part (amount in whole coins)
manage.py simulate_payment pay_… --confirmations 0     # seen in the mempool only
manage.py simulate_payment pay_… --txid dev… --confirmations 3   # confirm an earlier one
"""

from __future__ import annotations

import secrets
from decimal import Decimal, InvalidOperation, localcontext

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from payments.addresses import DEV_CHAIN
from payments.api.serializers import PaymentSerializer
from payments.currencies import crypto
from payments.models import Payment, PaymentTransaction
from payments.services import ObservedOutput, payment_apply_transaction


class Command(BaseCommand):
    help = "Simulate an on-chain payment to a payment's development-chain address."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("payment_id", help="The payment's id (pay_…).")
        parser.add_argument("--amount", help="Whole coins to send (default: what is still due).")
        parser.add_argument(
            "--confirmations",
            type=int,
            help="Confirmations of the transaction (default: what the payment requires).",
        )
        parser.add_argument("--txid", help="Update the confirmations of this earlier transaction.")

    def handle(self, *args, **options) -> None:  # type: ignore[no-untyped-def]
        if not settings.DEV_CHAIN_ENABLED:
            raise CommandError("The development chain is off (set CRYPTOPAY_DEV_CHAIN=1).")
        payment = Payment.objects.filter(public_id=options["payment_id"]).first()
        if payment is None:
            raise CommandError(f"No payment {options['payment_id']!r}.")
        if not payment.deposit_address.startswith("dev"):
            raise CommandError("This payment's address is not on the development chain.")
        confirmations = options["confirmations"]
        if confirmations is None:
            confirmations = payment.required_confirmations
        if confirmations < 0:
            raise CommandError("--confirmations must be 0 or more.")

        if options["txid"]:
            tx = PaymentTransaction.objects.filter(
                payment=payment, chain=DEV_CHAIN, txid=options["txid"]
            ).first()
            if tx is None:
                raise CommandError(f"No transaction {options['txid']!r} for this payment.")
            output = ObservedOutput(
                chain=DEV_CHAIN, txid=tx.txid, output_index=tx.output_index, amount=tx.amount,
                confirmations=confirmations,
            )  # fmt: skip
        else:
            output = ObservedOutput(
                chain=DEV_CHAIN,
                txid="dev" + secrets.token_hex(30),
                output_index=0,
                amount=self._amount(payment, options["amount"]),
                confirmations=confirmations,
            )
        payment_apply_transaction(payment=payment, output=output)
        data = PaymentSerializer(payment).data
        self.stdout.write(
            f"txid {output.txid}: {output.amount} base units, {confirmations} confirmation(s)\n"
            f"payment {payment.public_id}: {data['status']}"
            + (f" ({data['sub_status']})" if data["sub_status"] else "")
            + f", received {data['amount_received']} {payment.crypto_currency}"
        )

    def _amount(self, payment: Payment, raw: str | None) -> int:
        currency = crypto(payment.crypto_currency)
        if raw is None:
            due = payment.crypto_amount - payment.amount_received
            if due <= 0:
                raise CommandError("Nothing is due; pass --amount to pay more.")
            return due
        try:
            coins = Decimal(raw)
        except InvalidOperation:
            raise CommandError(f"--amount {raw!r} is not a number.")
        with localcontext(prec=100):  # exact for any amount a person could type
            units = coins.scaleb(currency.decimals)
        if not units.is_finite() or units <= 0 or units != units.to_integral_value():
            raise CommandError(
                f"--amount must be positive with at most {currency.decimals} decimals."
            )
        return int(units)
