"""Deposit addresses derive from merchant extended public keys; keys are validated at entry."""

from __future__ import annotations

import pytest

from payments.chains.derivation import InvalidExtendedKey, derive_address, wallet_validate
from payments.models import MerchantWallet
from tests.factories import MerchantFactory, make_payment

# "abandon abandon ... about": BIP84 account 0 (m/84'/0'/0') and BIP44 Ethereum (m/44'/60'/0').
ZPUB = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
ETH_XPUB = "xpub6DCoCpSuQZB2jawqnGMEPS63ePKWkwWPH4TU45Q7LPXWuNd8TMtVxRrgjtEshuqpK3mdhaWHPFsBngh5GFZaM6si3yZdUsT8ddYM3PwnATt"
ZPRV = "zprvAdG4iTXWBoARxkkzNpNh8r6Qag3irQB8PzEMkAFeTRXxHpbF9z4QgEvBRmfvqWvGp42t42nvgGpNgYSJA9iefm1yYNZKEm7z6qUWCroSQnE"


def test_bip84_receive_addresses_match_the_published_test_vectors():
    addresses = [derive_address(currency="BTC", key=ZPUB, index=i) for i in range(3)]

    assert addresses == [
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
        "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g",
        "bc1qp59yckz4ae5c4efgw2s5wfyvrz0ala7rgvuz8z",
    ]


def test_litecoin_addresses_use_the_network_prefix():
    assert derive_address(currency="LTC", key=ZPUB, index=0, hrp="rltc").startswith("rltc1q")
    assert derive_address(currency="LTC", key=ZPUB, index=0, hrp="ltc").startswith("ltc1q")


def test_bip44_ethereum_address_matches_the_known_vector():
    assert derive_address(currency="ETH", key=ETH_XPUB, index=0) == (
        "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    )


def test_a_wpkh_descriptor_is_accepted():
    descriptor = f"wpkh([73c5da0a/84h/0h/0h]{ZPUB}/0/*)"

    assert wallet_validate(currency="BTC", raw_key=descriptor) == ZPUB


@pytest.mark.parametrize(
    ("currency", "key", "message"),
    [
        ("BTC", ZPUB[:-1] + "x", "not a valid extended public key"),
        ("BTC", "hello", "not a valid extended public key"),
        ("BTC", ZPRV, "private key"),
        ("DOGE", ZPUB, "no wallet support"),
    ],
)
def test_invalid_keys_are_refused_with_a_clear_error(currency, key, message):
    with pytest.raises(InvalidExtendedKey, match=message):
        wallet_validate(currency=currency, raw_key=key)


@pytest.mark.django_db
def test_payments_get_fresh_addresses_from_the_merchant_wallet(settings):
    settings.CHAINS = {"litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc",
                                    "nodes": ["http://127.0.0.1:1"]}}  # fmt: skip
    merchant = MerchantFactory.create()
    MerchantWallet.objects.create(
        merchant=merchant, crypto_currency="LTC", extended_public_key=ZPUB
    )

    payments = [
        make_payment(merchant=merchant, crypto_currency="LTC", order_id=str(i)) for i in range(3)
    ]

    assert [p.derivation_index for p in payments] == [0, 1, 2]
    assert [p.deposit_address for p in payments] == [
        derive_address(currency="LTC", key=ZPUB, index=i, hrp="rltc") for i in range(3)
    ]


@pytest.mark.django_db
def test_exceeding_the_gap_limit_is_warned_about(settings, caplog):
    settings.CHAINS = {"litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc",
                                    "nodes": ["http://127.0.0.1:1"]}}  # fmt: skip
    merchant = MerchantFactory.create()
    MerchantWallet.objects.create(
        merchant=merchant, crypto_currency="LTC", extended_public_key=ZPUB
    )

    for i in range(20):  # a wallet scans 20 unused addresses: all of these are found
        make_payment(merchant=merchant, crypto_currency="LTC", order_id=str(i))
    assert "gap limit" not in caplog.text
    make_payment(merchant=merchant, crypto_currency="LTC", order_id="21st")

    assert "21 unpaid addresses in a row (gap limit 20)" in caplog.text
