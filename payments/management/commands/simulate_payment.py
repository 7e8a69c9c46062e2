"""Pay a payment on the development chain, through the same state machine a real chain uses.

manage.py simulate_payment pay_…                       # pay what is due, confirm per policy
manage.py simulate_payment pay_… --amount 0.0001       # pay part (amount in whole coins)
manage.py simulate_payment pay_… --confirmations 0     # seen in the mempool only
manage.py simulate_payment pay_… --txid dev… --confirmations 3   # confirm an earlier one
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from payments.api.serializers import PaymentSerializer
from payments.currencies import crypto
from payments.devchain import SimulationRefused, payment_simulate
from payments.models import Payment
from payments.money import coins_to_base_units


class Command(BaseCommand):
    help = "Simulate an on-chain payment to a payment's development-chain address."

    def add_arguments(self, parser) -> None:
        parser.add_argument("payment_id", help="The payment's id (pay_…).")
        parser.add_argument("--amount", help="Whole coins to send (default: what is still due).")
        parser.add_argument(
            "--confirmations",
            type=int,
            help="Confirmations of the transaction (default: what the payment requires).",
        )
        parser.add_argument("--txid", help="Update the confirmations of this earlier transaction.")

    def handle(self, *args, **options) -> None:
        payment = Payment.objects.filter(public_id=options["payment_id"]).first()
        if payment is None:
            raise CommandError(f"No payment {options['payment_id']!r}.")
        amount = None if options["amount"] is None else self._amount(payment, options["amount"])
        try:
            output = payment_simulate(
                payment=payment,
                amount=amount,
                confirmations=options["confirmations"],
                txid=options["txid"],
            )
        except SimulationRefused as refused:
            raise CommandError(str(refused)) from refused
        payment.refresh_from_db()
        data = PaymentSerializer(payment).data
        self.stdout.write(
            f"txid {output.txid}: {output.amount} base units, "
            f"{output.confirmations} confirmation(s)\n"
            f"payment {payment.public_id}: {data['status']}"
            + (f" ({data['sub_status']})" if data["sub_status"] else "")
            + f", received {data['amount_received']} {payment.crypto_currency}"
        )

    def _amount(self, payment: Payment, raw: str) -> int:
        if not payment.crypto_currency:
            raise CommandError("The buyer has not picked a coin yet (no address to pay).")
        currency = crypto(payment.crypto_currency)
        try:
            return coins_to_base_units(coins=Decimal(raw), currency=currency)
        except InvalidOperation:
            raise CommandError(f"--amount {raw!r} is not a number.")
        except ValueError:
            raise CommandError(
                f"--amount must be positive with at most {currency.decimals} decimals."
            )
