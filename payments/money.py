"""Money arithmetic. Crypto amounts are integers in base units, fiat amounts are ``Decimal``.

Conversions use exact rational arithmetic (``fractions.Fraction``) so no precision or rounding
context can leak in, and a float can never appear on the path.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

from payments.currencies import CryptoCurrency


def fiat_to_base_units(*, fiat_amount: Decimal, rate: Decimal, currency: CryptoCurrency) -> int:
    """Smallest whole number of base units whose value at ``rate`` covers ``fiat_amount``.

    ``rate`` is fiat per one whole coin. Rounding up favours the merchant by less than one base
    unit: the buyer never underpays because of rounding.
    """
    if not fiat_amount.is_finite() or not rate.is_finite():
        raise ValueError("amounts must be finite")
    if rate <= 0:
        raise ValueError("rate must be positive")
    if fiat_amount < 0:
        raise ValueError("fiat amount must not be negative")
    exact = Fraction(fiat_amount) * (10**currency.decimals) / Fraction(rate)
    return math.ceil(exact)


def base_units_to_decimal(*, amount: int, currency: CryptoCurrency) -> Decimal:
    """Exact whole-coin value of ``amount`` base units (the constructor is exact; arithmetic
    would round to the context's 28 digits)."""
    return Decimal(f"{amount}e-{currency.decimals}")


def coins_to_base_units(*, coins: Decimal, currency: CryptoCurrency) -> int:
    """Base units of an amount given in whole coins ("0.0004" BTC -> 40000), exactly; ValueError
    when it is not positive or has more decimals than the currency."""
    if not coins.is_finite() or coins <= 0:
        raise ValueError("must be positive")
    with localcontext(prec=200):  # exact for any amount a person could type
        units = coins.scaleb(currency.decimals)
    if units != units.to_integral_value():
        raise ValueError(f"at most {currency.decimals} decimals")
    return int(units)


def format_base_units(*, amount: int, currency: CryptoCurrency) -> str:
    """Exact decimal string with all the currency's digits, e.g. 12345 sat -> "0.00012345"."""
    sign = "-" if amount < 0 else ""
    digits = str(abs(amount)).rjust(currency.decimals + 1, "0")
    if currency.decimals == 0:
        return sign + digits
    return f"{sign}{digits[: -currency.decimals]}.{digits[-currency.decimals :]}"


def format_fiat(*, amount: Decimal, exponent: int) -> str:
    return str(amount.quantize(Decimal(1).scaleb(-exponent)))


# --- for people (the admin, CSV exports): the API keeps its exact strings ---------------------

# Crypto amounts show at least this many decimals (satoshi precision) and more only when needed:
# "0.00081667 BTC", "0.01234500 ETH" rather than 18 digits of trailing zeros.
DISPLAY_MIN_DECIMALS = 8


def crypto_units(*, amount: int, currency: CryptoCurrency) -> str:
    """``amount`` base units in whole coins, exact, trailing zeros trimmed down to
    DISPLAY_MIN_DECIMALS (or the currency's decimals when it has fewer)."""
    return coin_text(format_base_units(amount=amount, currency=currency))


def coin_text(amount: str) -> str:
    """An exact amount string for people (``crypto_units``): "0.008909090909090910" (ETH) ->
    "0.00890909090909091", "0.00050000" (BTC) unchanged. Only zeros past DISPLAY_MIN_DECIMALS go,
    so the value is unchanged (what a buyer copies is still exactly what is due)."""
    if "." not in amount:
        return amount
    whole, fraction = amount.split(".")
    if len(fraction) <= DISPLAY_MIN_DECIMALS:
        return amount
    kept = fraction[:DISPLAY_MIN_DECIMALS] + fraction[DISPLAY_MIN_DECIMALS:].rstrip("0")
    return f"{whole}.{kept}"


def plain_decimal(value: Decimal) -> str:
    """A rate without trailing zeros or exponent: 60000.000000 -> "60000", 0.0000165 stays."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
