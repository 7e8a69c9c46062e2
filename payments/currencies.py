"""The crypto assets we accept, as a plain table (the fiat currencies we price in are in
``cryptopay.currencies``: merchants default to one too)."""

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

CRYPTO_CHOICES = [(code, c.name) for code, c in CRYPTO_CURRENCIES.items()]
CRYPTO_CODES = sorted(CRYPTO_CURRENCIES)


def crypto(code: str) -> CryptoCurrency:
    """The currency as this deployment has it: for an ERC-20 configured on a chain, the configured
    token's decimals (the same contract on another chain, or a bridged copy, may have others).
    Pricing, formatting, the checkout link and QR code, and the watcher all read decimals here."""
    currency = CRYPTO_CURRENCIES[code]
    token = token_for_currency(code)
    if token is not None and token.decimals != currency.decimals:
        return replace(currency, decimals=token.decimals)
    return currency
