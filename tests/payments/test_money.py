"""Money: crypto amounts cover the fiat price by less than one base unit; no float on the path."""

from __future__ import annotations

import ast
import inspect
from decimal import Decimal
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from payments import money
from payments.currencies import CRYPTO_CURRENCIES, crypto
from payments.money import fiat_to_base_units, format_base_units

fiat_amounts = st.decimals(
    min_value=Decimal("0.01"), max_value=Decimal("1000000"), places=2, allow_nan=False
)
rates = st.decimals(
    min_value=Decimal("0.000001"), max_value=Decimal("10000000"), places=6, allow_nan=False
).filter(lambda r: r > 0)
currencies = st.sampled_from(sorted(CRYPTO_CURRENCIES))


@given(fiat=fiat_amounts, rate=rates, code=currencies)
def test_base_units_cover_price_and_exceed_it_by_less_than_one_unit(fiat, rate, code):
    currency = crypto(code)

    units = fiat_to_base_units(fiat_amount=fiat, rate=rate, currency=currency)

    assert isinstance(units, int)
    scale = 10**currency.decimals
    value_of = lambda n: Fraction(n) * Fraction(rate) / scale  # noqa: E731
    assert value_of(units) >= Fraction(fiat)
    assert value_of(units - 1) < Fraction(fiat)


@given(units=st.integers(min_value=0, max_value=10**30), code=currencies)
def test_formatting_base_units_round_trips_exactly(units, code):
    currency = crypto(code)

    text = format_base_units(amount=units, currency=currency)

    whole, fraction = text.split(".")
    assert int(whole + fraction) == units
    assert money.base_units_to_decimal(amount=units, currency=currency) == Decimal(text)
    assert len(text.split(".")[1]) == currency.decimals


def test_known_conversion_rounds_up_to_the_next_satoshi():
    # 19.99 USD at 60 000 USD/BTC = 33 316.666... sat -> 33 317 sat
    units = fiat_to_base_units(
        fiat_amount=Decimal("19.99"), rate=Decimal("60000"), currency=crypto("BTC")
    )
    assert units == 33317


def test_money_module_never_uses_float():
    tree = ast.parse(inspect.getsource(money))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    floats = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, float)
    ]
    assert "float" not in names
    assert floats == []


@given(units=st.integers(min_value=0, max_value=10**30), code=currencies)
def test_crypto_units_keep_the_value_and_satoshi_precision_and_no_zeros_beyond(units, code):
    currency = crypto(code)
    exact = format_base_units(amount=units, currency=currency)

    shown = money.crypto_units(amount=units, currency=currency)

    assert Decimal(shown) == Decimal(exact)
    decimals = shown.partition(".")[2]
    assert len(decimals) >= min(currency.decimals, money.DISPLAY_MIN_DECIMALS)
    assert len(decimals) <= money.DISPLAY_MIN_DECIMALS or not decimals.endswith("0")


def test_coin_text_trims_only_zeros_past_eight_decimals():
    assert money.coin_text("0.008909090909090910") == "0.00890909090909091"
    assert money.coin_text("1.000000000000000000") == "1.00000000"
    assert money.coin_text("0.00050000") == "0.00050000"
    assert money.coin_text("26.630435") == "26.630435"
