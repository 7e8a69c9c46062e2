"""Currency registries: the crypto assets we accept and the ISO 4217 fiat currencies we price in.

Kept as plain tables: the fiat list is the ISO 4217 minor-unit exponents of the currencies a
merchant is likely to price in; adding one is a one-line change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from payments.chains.config import token_for_currency


@dataclass(frozen=True)
class CryptoCurrency:
    code: str
    name: str
    chain: str
    decimals: int

    @property
    def unit(self) -> Decimal:
        """One base unit (1 satoshi, 1 wei...) as a Decimal of the whole coin."""
        return Decimal(f"1e-{self.decimals}")


CRYPTO_CURRENCIES: dict[str, CryptoCurrency] = {
    c.code: c
    for c in (
        CryptoCurrency(code="BTC", name="Bitcoin", chain="bitcoin", decimals=8),
        CryptoCurrency(code="LTC", name="Litecoin", chain="litecoin", decimals=8),
        CryptoCurrency(code="ETH", name="Ether", chain="ethereum", decimals=18),
        # Tokens: 6 is mainnet USDC/USDT's and only the default for the development chain; a
        # configured token's own decimals win (see ``crypto``).
        CryptoCurrency(code="USDC", name="USD Coin (ERC-20)", chain="ethereum", decimals=6),
        CryptoCurrency(code="USDT", name="Tether USD (ERC-20)", chain="ethereum", decimals=6),
    )
}

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
CRYPTO_CHOICES = [(code, c.name) for code, c in CRYPTO_CURRENCIES.items()]
CRYPTO_CODES = sorted(CRYPTO_CURRENCIES)


def fiat_exponent(code: str) -> int:
    return FIAT_EXPONENTS[code]


def crypto(code: str) -> CryptoCurrency:
    """The currency as this deployment has it: for an ERC-20 configured on a chain, the configured
    token's decimals (the same contract on another chain, or a bridged copy, may have others).
    Pricing, formatting, the checkout link and QR code, and the watcher all read decimals here."""
    currency = CRYPTO_CURRENCIES[code]
    token = token_for_currency(code)
    if token is not None and token.decimals != currency.decimals:
        return replace(currency, decimals=token.decimals)
    return currency
