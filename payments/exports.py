"""CSV exports of payments and their transactions for accounting (django-import-export, from the
admin's changelists: the rows the list's filters and search select). Amounts as people and
spreadsheets read them, each beside its exact machine form: fiat at the currency's exponent,
crypto in coin units and in integer base units, rates without trailing zeros."""

from __future__ import annotations

from import_export import fields, resources

from cryptopay.currencies import fiat_exponent
from payments.admin_money import crypto_text, fiat_text, rate_text
from payments.currencies import crypto
from payments.models import Payment, PaymentTransaction
from payments.money import crypto_units, format_fiat


def _column(name: str, header: str) -> fields.Field:
    return fields.Field(attribute=name, column_name=header, readonly=True)


class PaymentResource(resources.ModelResource):
    id = fields.Field(attribute="public_id", column_name="id")
    merchant = fields.Field(attribute="merchant__public_id", column_name="merchant")
    merchant_name = fields.Field(attribute="merchant__name", column_name="merchant_name")
    amount = _column("fiat_amount", "amount")
    amount_text = fields.Field(column_name="amount_text", readonly=True)
    crypto_amount = fields.Field(column_name="crypto_amount", readonly=True)
    crypto_amount_base_units = _column("crypto_amount", "crypto_amount_base_units")
    amount_received = fields.Field(column_name="amount_received", readonly=True)
    amount_received_base_units = _column("amount_received", "amount_received_base_units")
    rate = fields.Field(column_name="rate", readonly=True)

    class Meta:
        model = Payment
        fields = (
            "id", "merchant", "merchant_name", "order_id", "description", "status",
            "sub_status", "amount", "fiat_currency", "amount_text", "crypto_currency",
            "crypto_amount", "crypto_amount_base_units", "amount_received",
            "amount_received_base_units", "rate", "rate_source", "deposit_address",
            "created_at", "expires_at", "settled_at",
        )  # fmt: skip
        export_order = fields

    def dehydrate_amount(self, payment: Payment) -> str:
        return format_fiat(
            amount=payment.fiat_amount, exponent=fiat_exponent(payment.fiat_currency)
        )

    def dehydrate_amount_text(self, payment: Payment) -> str:
        return fiat_text(payment.fiat_amount, payment.fiat_currency)

    # A coin-choice payment whose buyer has not picked the coin has no crypto amount yet: its
    # crypto cells are empty (nothing can have been received either).
    def dehydrate_crypto_amount(self, payment: Payment) -> str:
        if not payment.currency_selected:
            return ""
        return crypto_units(amount=payment.priced_amount, currency=crypto(payment.crypto_currency))

    def dehydrate_crypto_amount_base_units(self, payment: Payment) -> str:
        return str(payment.priced_amount) if payment.currency_selected else ""

    def dehydrate_amount_received(self, payment: Payment) -> str:
        if not payment.currency_selected:
            return ""
        return crypto_units(
            amount=int(payment.amount_received), currency=crypto(payment.crypto_currency)
        )

    def dehydrate_amount_received_base_units(self, payment: Payment) -> str:
        return str(int(payment.amount_received))

    def dehydrate_rate(self, payment: Payment) -> str:
        return rate_text(payment.rate)


class PaymentTransactionResource(resources.ModelResource):
    payment = fields.Field(attribute="payment__public_id", column_name="payment")
    merchant = fields.Field(attribute="payment__merchant__public_id", column_name="merchant")
    currency = fields.Field(attribute="payment__crypto_currency", column_name="currency")
    amount = fields.Field(column_name="amount", readonly=True)
    amount_base_units = fields.Field(column_name="amount_base_units", readonly=True)
    amount_text = fields.Field(column_name="amount_text", readonly=True)

    class Meta:
        model = PaymentTransaction
        fields = (
            "payment", "merchant", "chain", "txid", "output_index", "kind", "currency",
            "amount", "amount_base_units", "amount_text", "confirmations", "state",
            "block_height", "mined_at", "first_seen_at",
        )  # fmt: skip
        export_order = fields

    def dehydrate_amount(self, row: PaymentTransaction) -> str:
        return crypto_units(amount=int(row.amount), currency=crypto(row.payment.crypto_currency))

    def dehydrate_amount_base_units(self, row: PaymentTransaction) -> str:
        return str(int(row.amount))

    def dehydrate_amount_text(self, row: PaymentTransaction) -> str:
        return crypto_text(row.amount, row.payment.crypto_currency)
