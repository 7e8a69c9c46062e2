from __future__ import annotations

import os

import pytest
from bip_utils import Bip44, Bip44Coins, Bip84, Bip84Coins

from payments.models import MerchantWallet
from resilience.breaker import breakers
from tests.factories import MerchantFactory


def random_account_xpub(kind: str) -> str:
    """A fresh account key per test: addresses never collide with another test's on shared nodes."""
    seed = os.urandom(64)
    if kind == "utxo":
        account = Bip84.FromSeed(seed, Bip84Coins.LITECOIN).Purpose().Coin().Account(0)
    else:
        account = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)
    return account.PublicKey().ToExtended()


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breakers.forget(close=True)
    yield
    breakers.forget(close=True)


@pytest.fixture
def wallet_merchant(db):
    """A merchant with fresh LTC and ETH/USDC wallets."""
    merchant = MerchantFactory.create()
    ltc, eth = random_account_xpub("utxo"), random_account_xpub("evm")
    for currency, key in (("LTC", ltc), ("ETH", eth), ("USDC", eth)):
        MerchantWallet.objects.create(
            merchant=merchant, crypto_currency=currency, extended_public_key=key
        )
    return merchant
