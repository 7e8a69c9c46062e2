"""The ISO 4217 fiat currencies we price in, with their minor-unit exponents.

Neutral ground: merchants (``accounts``) default to one and payments price in them, so neither
app imports the other for it. Adding a currency is a one-line change.
"""

from __future__ import annotations

# ISO 4217 code -> number of minor-unit digits.
FIAT_EXPONENTS: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CAD": 2, "AUD": 2, "NZD": 2, "SEK": 2, "NOK": 2,
    "DKK": 2, "PLN": 2, "CZK": 2, "HUF": 2, "RON": 2, "BGN": 2, "TRY": 2, "BRL": 2, "MXN": 2,
    "ARS": 2, "CLP": 0, "COP": 2, "PEN": 2, "ZAR": 2, "NGN": 2, "KES": 2, "EGP": 2, "INR": 2,
    "IDR": 2, "PHP": 2, "THB": 2, "MYR": 2, "SGD": 2, "HKD": 2, "CNY": 2, "TWD": 2, "JPY": 0,
    "KRW": 0, "VND": 0, "ILS": 2, "AED": 2, "SAR": 2, "QAR": 2, "KWD": 3, "BHD": 3, "OMR": 3,
    "JOD": 3, "UAH": 2, "ISK": 0,
}  # fmt: skip

FIAT_CHOICES = [(code, code) for code in sorted(FIAT_EXPONENTS)]


def fiat_exponent(code: str) -> int:
    return FIAT_EXPONENTS[code]
