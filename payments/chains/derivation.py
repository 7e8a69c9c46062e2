"""Deposit addresses from merchant extended public keys (bip-utils; the server never sees a
private key).

* BTC, LTC: BIP84 native segwit (P2WPKH), account-level xpub/zpub (or a ``wpkh(...)`` descriptor
  wrapping one); receive addresses at ``0/i`` encoded with the chain's bech32 prefix.
* ETH and ERC-20 tokens: BIP44 account xpub (m/44'/60'/0'); addresses at ``0/i``, EIP-55 checksummed.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from bip_utils import (
    Base58ChecksumError,
    Bip32KeyError,
    Bip44,
    Bip44Changes,
    Bip44Coins,
    Bip84,
    Bip84Coins,
    EthAddrEncoder,
    P2WPKHAddrEncoder,
)

# Gap limit that wallets scan (BIP44): more unpaid addresses in a row and a restored wallet may not
# see later payments.
GAP_LIMIT = 20

_DESCRIPTOR = re.compile(
    r"^wpkh\((?:\[[0-9a-fA-F]{8}(?:/[0-9]+['h]?)*\])?([1-9A-HJ-NP-Za-km-z]+)(?:/[0-9]+/\*)?\)(?:#[a-z0-9]{8})?$"
)
_KEY_ERRORS = (Bip32KeyError, Base58ChecksumError, ValueError, TypeError)
_UTXO_COINS = {"BTC": Bip84Coins.BITCOIN, "LTC": Bip84Coins.LITECOIN}
_EVM = {"ETH", "USDC", "USDT"}


class InvalidExtendedKey(ValueError):
    pass


def extract_key(raw: str) -> str:
    """The extended key of a bare key or a ``wpkh([fingerprint/path]xpub/0/*)`` descriptor."""
    value = raw.strip()
    match = _DESCRIPTOR.match(value)
    return match.group(1) if match else value


def _utxo_account(currency: str, key: str):
    for coin in (_UTXO_COINS[currency], Bip84Coins.BITCOIN, Bip84Coins.LITECOIN):
        try:
            return Bip84.FromExtendedKey(key, coin)
        except _KEY_ERRORS:
            continue
    raise InvalidExtendedKey("not a BIP84 account extended public key (xpub/zpub/Ltub…)")


def wallet_validate(*, currency: str, raw_key: str) -> str:
    """Check a wallet key at entry; returns the normalised key. Raises InvalidExtendedKey."""
    key = extract_key(raw_key)
    if key[1:4] == "prv" or key.startswith(("xprv", "zprv", "yprv", "tprv", "vprv", "Ltpv")):
        raise InvalidExtendedKey("that is a private key: give the extended PUBLIC key only")
    try:
        if currency in _UTXO_COINS:
            account = _utxo_account(currency, key)
        elif currency in _EVM:
            account = Bip44.FromExtendedKey(key, Bip44Coins.ETHEREUM)
        else:
            raise InvalidExtendedKey(f"no wallet support for {currency}")
    except _KEY_ERRORS as exc:
        raise InvalidExtendedKey(f"not a valid extended public key: {exc}") from exc
    if not account.IsPublicOnly():
        raise InvalidExtendedKey("that is a private key: give the extended PUBLIC key only")
    if account.Level() != 3:
        raise InvalidExtendedKey(
            f"expected an account-level key (depth 3, m/purpose'/coin'/account'), got depth "
            f"{account.Level()}"
        )
    return key


@functools.lru_cache(maxsize=256)
def _receiving_chain(currency: str, key: str) -> Any:
    """The key's receiving chain (``0``): every address of a wallet is derived from it. Kept per
    key, as parsing the key and deriving the chain was two thirds of deriving an address (a live
    create derives one). Derivation returns new nodes and never changes this one."""
    if currency in _UTXO_COINS:
        return _utxo_account(currency, key).Change(Bip44Changes.CHAIN_EXT)
    return Bip44.FromExtendedKey(key, Bip44Coins.ETHEREUM).Change(Bip44Changes.CHAIN_EXT)


def derive_address(*, currency: str, key: str, index: int, hrp: str = "") -> str:
    if currency in _UTXO_COINS:
        node = _receiving_chain(currency, key).AddressIndex(index)
        pubkey = node.PublicKey().RawCompressed().ToBytes()
        return P2WPKHAddrEncoder.EncodeKey(
            pubkey, hrp=hrp or ("bc" if currency == "BTC" else "ltc"), wit_ver=0
        )
    if currency in _EVM:
        node = _receiving_chain("ETH", key).AddressIndex(index)
        pubkey = node.PublicKey().RawUncompressed().ToBytes()
        return EthAddrEncoder.EncodeKey(pubkey)
    raise InvalidExtendedKey(f"no wallet support for {currency}")
