"""Migration 0005 on real PostgreSQL: per-currency address counters become one counter per wallet
key, at the highest of the counters sharing the key, so no index handed out is handed out again."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from payments.addresses import key_space
from tests.payments.chains.conftest import random_account_xpub

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("payments", "0004_checkout_token")]
AFTER = [("payments", "0005_wallet_address_index_unmatched_transfers")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def at_0004():
    try:
        yield migrate(BEFORE)
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_counters_sharing_a_wallet_key_merge_at_their_highest_index(at_0004):
    # Given per-currency counters: ETH and USDC on one key, LTC on another, BTC without a wallet
    apps = at_0004
    merchant = apps.get_model("payments", "Merchant").objects.create(name="Shop")
    wallets = apps.get_model("payments", "MerchantWallet").objects
    evm, utxo = random_account_xpub("evm"), random_account_xpub("utxo")
    for currency, key in (("ETH", evm), ("USDC", evm), ("LTC", utxo)):
        wallets.create(merchant=merchant, crypto_currency=currency, extended_public_key=key)
    counters = apps.get_model("payments", "AddressIndex").objects
    for currency, next_index in (("ETH", 5), ("USDC", 3), ("LTC", 2), ("BTC", 4)):
        counters.create(merchant=merchant, crypto_currency=currency, next_index=next_index)

    # When the migration runs
    apps = migrate(AFTER)

    # Then there is one counter per key, at the highest index any currency of it reached
    merged = {
        row.key_space: row.next_index
        for row in apps.get_model("payments", "AddressIndex").objects.filter(merchant=merchant.pk)
    }
    assert merged == {
        key_space(extended_public_key=evm, crypto_currency="ETH"): 5,
        key_space(extended_public_key=utxo, crypto_currency="LTC"): 2,
        key_space(extended_public_key=None, crypto_currency="BTC"): 4,
    }
