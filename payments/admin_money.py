"""How the admin and the accounting exports show money: fiat at its currency's exponent with the
code ("49.00 USD"), crypto in coin units with the symbol ("0.00081667 BTC") and its exact base
units on hover, rates without trailing zeros. The stored values stay integers and Decimals."""

from __future__ import annotations

from decimal import Decimal

from django.utils.html import format_html
from django.utils.safestring import SafeString

from cryptopay.currencies import fiat_exponent
from payments.currencies import crypto
from payments.money import crypto_units, format_fiat, plain_decimal


def fiat_text(amount: Decimal | None, currency: str) -> str:
    if amount is None:
        return "-"
    return f"{format_fiat(amount=amount, exponent=fiat_exponent(currency))} {currency}"


def crypto_text(amount: int | None, currency: str) -> str:
    if amount is None:
        return "-"
    return f"{crypto_units(amount=int(amount), currency=crypto(currency))} {currency}"


def crypto_html(amount: int | None, currency: str) -> SafeString | str:
    """The coin amount, with the exact base units as its title (shown on hover); "-" before the
    buyer of a coin-choice payment has picked the coin."""
    if amount is None or not currency:
        return "-"
    return format_html(
        '<span title="{} base units">{}</span>', int(amount), crypto_text(amount, currency)
    )


def rate_text(rate: Decimal | None) -> str:
    return "-" if rate is None else plain_decimal(rate)
