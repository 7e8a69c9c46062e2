"""Properties of the parsers that read what clients and merchants send: Idempotency-Key headers,
extended public keys, and webhook signature headers. Any input raises nothing but the parser's
documented error; valid input round-trips; a changed one fails.

FUZZ_EXAMPLES sets the examples per property (default 100; `make fuzz` runs more).
"""

from __future__ import annotations

import os

import pytest
from bip_utils import Bip44, Bip44Changes, Bip44Coins, Bip84, Bip84Coins
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from notifications import signing
from payments.chains.derivation import InvalidExtendedKey, derive_address, wallet_validate
from resilience.idempotency import MAX_KEY_LENGTH, InvalidKey, parse_key

EXAMPLES = max(100, int(os.environ.get("FUZZ_EXAMPLES", "100")))
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# bip-utils derivations cost milliseconds each: a tenth of the examples.
KEY_PROPERTY = settings(PROPERTY, max_examples=max(10, EXAMPLES // 10))

printable_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
any_text = st.text(st.characters(codec="utf-8"), max_size=400) | st.text(
    printable_ascii, max_size=400
)


# --- Idempotency-Key ------------------------------------------------------------------------------


def sf_string(key: str) -> str:
    """RFC 8941 sf-string serialisation of a key."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


@PROPERTY
@given(raw=any_text)
@example(raw='"')
@example(raw='"\\')
@example(raw='"a\\x"')
@example(raw='"a"b"')
@example(raw=" \t ")
def test_given_any_header_value_when_parsing_an_idempotency_key_then_only_invalid_key_is_raised(
    raw,
):
    try:
        key = parse_key(raw)
    except InvalidKey:
        return
    assert 1 <= len(key) <= MAX_KEY_LENGTH
    assert all(0x20 <= ord(char) <= 0x7E for char in key)


@PROPERTY
@given(key=st.text(printable_ascii, min_size=1, max_size=MAX_KEY_LENGTH))
def test_given_a_valid_key_when_sent_as_an_sf_string_then_it_parses_back_exactly(key):
    assert parse_key(sf_string(key)) == key


@PROPERTY
@given(key=st.text(printable_ascii, min_size=1, max_size=MAX_KEY_LENGTH))
def test_given_a_valid_key_when_sent_bare_then_it_parses_back_without_surrounding_blanks(key):
    assume(not key.strip(" \t").startswith('"') and key.strip(" \t"))

    assert parse_key(key) == key.strip(" \t")


@PROPERTY
@given(key=st.text(printable_ascii, min_size=MAX_KEY_LENGTH + 1, max_size=MAX_KEY_LENGTH + 50))
def test_given_a_key_longer_than_the_limit_when_parsed_then_it_is_refused(key):
    with pytest.raises(InvalidKey):
        parse_key(sf_string(key))


# --- extended public keys ------------------------------------------------------------------------

seeds = st.binary(min_size=16, max_size=64)
accounts = st.integers(min_value=0, max_value=2**31 - 1)


def utxo_account(seed: bytes, coin, account: int):
    return Bip84.FromSeed(seed, coin).Purpose().Coin().Account(account)


@PROPERTY
@given(raw=any_text, currency=st.sampled_from(["BTC", "LTC", "ETH", "USDC", "USDT", "DOGE"]))
@example(raw="wpkh([deadbeef/84h/0h/0h]xpub/0/*)", currency="BTC")
@example(raw="xprv" + "1" * 107, currency="BTC")
@example(raw="", currency="ETH")
def test_given_any_text_when_validated_as_a_wallet_key_then_only_invalid_extended_key_is_raised(
    raw, currency
):
    try:
        key = wallet_validate(currency=currency, raw_key=raw)
    except InvalidExtendedKey:
        return
    assert key  # accepted: then it derives addresses
    assert derive_address(currency=currency, key=key, index=0)


@KEY_PROPERTY
@given(
    seed=seeds,
    account=accounts,
    index=st.integers(min_value=0, max_value=2**31 - 1),
    coin=st.sampled_from([("BTC", Bip84Coins.BITCOIN, "bc"), ("LTC", Bip84Coins.LITECOIN, "ltc")]),
)
def test_given_an_account_xpub_when_validated_then_it_round_trips_and_derives_the_wallets_address(
    seed, account, index, coin
):
    currency, bip_coin, hrp = coin
    wallet = utxo_account(seed, bip_coin, account)
    xpub = wallet.PublicKey().ToExtended()
    descriptor = f"wpkh([d34db33f/84h/0h/{account}h]{xpub}/0/*)"

    assert wallet_validate(currency=currency, raw_key=xpub) == xpub
    assert wallet_validate(currency=currency, raw_key=f"  {descriptor}\n") == xpub
    expected = wallet.Change(Bip44Changes.CHAIN_EXT).AddressIndex(index).PublicKey().ToAddress()
    assert derive_address(currency=currency, key=xpub, index=index, hrp=hrp) == expected


@KEY_PROPERTY
@given(seed=seeds, account=accounts, index=st.integers(min_value=0, max_value=1000))
def test_given_an_ethereum_account_xpub_when_validated_then_it_derives_the_wallets_address(
    seed, account, index
):
    wallet = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(account)
    xpub = wallet.PublicKey().ToExtended()

    assert wallet_validate(currency="ETH", raw_key=xpub) == xpub
    expected = wallet.Change(Bip44Changes.CHAIN_EXT).AddressIndex(index).PublicKey().ToAddress()
    assert derive_address(currency="USDC", key=xpub, index=index) == expected


@KEY_PROPERTY
@given(seed=seeds, account=accounts)
def test_given_a_private_extended_key_when_validated_then_it_is_refused(seed, account):
    wallet = utxo_account(seed, Bip84Coins.BITCOIN, account)

    with pytest.raises(InvalidExtendedKey, match="private"):
        wallet_validate(currency="BTC", raw_key=wallet.PrivateKey().ToExtended())


@KEY_PROPERTY
@given(seed=seeds, account=accounts, data=st.data())
def test_given_an_xpub_with_one_character_changed_when_validated_then_it_is_refused(
    seed, account, data
):
    xpub = utxo_account(seed, Bip84Coins.BITCOIN, account).PublicKey().ToExtended()
    position = data.draw(st.integers(min_value=4, max_value=len(xpub) - 1))
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    replacement = data.draw(st.sampled_from(alphabet).filter(lambda c: c != xpub[position]))
    changed = xpub[:position] + replacement + xpub[position + 1 :]

    with pytest.raises(InvalidExtendedKey):
        wallet_validate(currency="BTC", raw_key=changed)


# --- webhook signatures --------------------------------------------------------------------------

secrets_ = st.text(st.characters(codec="utf-8"), min_size=1, max_size=64)
bodies = st.binary(max_size=2048)
timestamps = st.integers(min_value=0, max_value=2**40)


@PROPERTY
@given(header=any_text, body=bodies, secret=secrets_, now=timestamps)
@example(header="t=²,v1=00", body=b"", secret="s", now=0)  # a Unicode digit int() refuses
@example(header="t=" + "9" * 5000 + ",v1=00", body=b"", secret="s", now=0)  # past int()'s limit
@example(header="t=1,v1=é", body=b"", secret="s", now=1)  # compare_digest refuses non-ASCII str
def test_given_any_signature_header_when_verified_then_only_signature_error_is_raised(
    header, body, secret, now
):
    try:
        timestamp = signing.verify(body=body, header=header, secret=secret, now=now)
    except signing.SignatureError:
        return
    assert abs(now - timestamp) <= signing.TOLERANCE_SECONDS


@PROPERTY
@given(
    body=bodies,
    secrets=st.lists(secrets_, min_size=1, max_size=3),
    timestamp=timestamps,
    skew=st.integers(min_value=-signing.TOLERANCE_SECONDS, max_value=signing.TOLERANCE_SECONDS),
)
def test_given_a_signed_body_when_verified_with_any_of_its_secrets_then_it_round_trips(
    body, secrets, timestamp, skew
):
    header = signing.sign(body=body, secrets=secrets, timestamp=timestamp)

    for secret in secrets:
        assert (
            signing.verify(body=body, header=header, secret=secret, now=timestamp + skew)
            == timestamp
        )


@PROPERTY
@given(body=bodies, secret=secrets_, timestamp=timestamps, data=st.data())
def test_given_a_signed_body_when_body_secret_or_time_is_changed_then_verification_fails(
    body, secret, timestamp, data
):
    header = signing.sign(body=body, secrets=[secret], timestamp=timestamp)
    other_body = data.draw(bodies.filter(lambda b: b != body), label="other body")
    other_secret = data.draw(secrets_.filter(lambda s: s != secret), label="other secret")
    late = data.draw(st.integers(min_value=signing.TOLERANCE_SECONDS + 1, max_value=10**6))
    forged_time = header.replace(f"t={timestamp}", f"t={timestamp + 1}", 1)

    for changed in (
        dict(body=other_body, header=header, secret=secret, now=timestamp),
        dict(body=body, header=header, secret=other_secret, now=timestamp),
        dict(body=body, header=header, secret=secret, now=timestamp + late),
        dict(body=body, header=forged_time, secret=secret, now=timestamp),
    ):
        with pytest.raises(signing.SignatureError):
            signing.verify(**changed)
