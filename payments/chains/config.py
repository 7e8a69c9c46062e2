"""Which chains are watched, through which nodes, read from settings.CHAINS.

``CRYPTOPAY_CHAINS`` is a JSON object, one entry per chain:

    {"litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "ltc",
                  "nodes": ["http://user:pass@127.0.0.1:9332"]},
     "ethereum": {"kind": "evm", "currency": "ETH", "confirmations": 12,
                  "chain_id": 1, "nodes": ["http://127.0.0.1:8545", "http://10.0.0.2:8545"],
                  "tokens": {"USDC": {"address": "0xA0b8...", "decimals": 6}},
                  "traces": false}}

Nodes are in failover order. A token's ``decimals`` are what amounts of it are priced, shown and
counted in; the EVM watcher checks them against the contract's ``decimals()`` and does not watch a
token whose contract disagrees. ``hrp`` is the bech32 prefix of the network (bc/tb/bcrt for Bitcoin,
ltc/tltc/rltc for Litecoin). ``confirmations`` is the EVM chain's settlement depth; UTXO chains use
the merchant's speed policy. ``start_height`` (optional) is the first block a new watcher reads.
``traces`` (EVM, optional) says how ETH sent by contracts is seen:
absent tries the node's call traces and falls back to a balance check, ``false`` checks balances
only, ``true`` requires traces (see payments/chains/evm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Token:
    currency: str
    address: str  # lower-case 0x…
    decimals: int


@dataclass(frozen=True)
class ChainConfig:
    name: str
    kind: str  # "utxo" or "evm"
    currency: str
    nodes: tuple[str, ...]
    hrp: str = ""
    confirmations: int = 12
    tokens: dict[str, Token] = field(default_factory=dict)
    # How many blocks back a reorg is looked for; deeper ones need an operator.
    reorg_depth: int = 100
    # EIP-155 chain id of an EVM chain, put in EIP-681 payment links so wallets pick the network.
    chain_id: int | None = None
    # First block the watcher reads when it has no cursor yet; None: the block at or before the
    # oldest open payment's creation (the tip when no payment is open).
    start_height: int | None = None
    # EVM: how ETH sent by contracts is seen (payments/chains/evm.py): None tries call traces and
    # falls back to a balance check, False checks balances only, True requires traces.
    traces: bool | None = None

    @property
    def currencies(self) -> list[str]:
        return [self.currency, *self.tokens]


def chains() -> dict[str, ChainConfig]:
    result = {}
    for name, raw in settings.CHAINS.items():
        try:
            kind = raw["kind"]
            if kind not in ("utxo", "evm"):
                raise ImproperlyConfigured(f"chain {name}: kind must be utxo or evm")
            tokens = {
                code: Token(
                    currency=code, address=t["address"].lower(), decimals=int(t["decimals"])
                )
                for code, t in raw.get("tokens", {}).items()
            }
            result[name] = ChainConfig(
                name=name,
                kind=kind,
                currency=raw["currency"],
                nodes=tuple(raw["nodes"]),
                hrp=raw.get("hrp", ""),
                confirmations=int(raw.get("confirmations", 12)),
                tokens=tokens,
                reorg_depth=int(raw.get("reorg_depth", 100)),
                chain_id=int(raw["chain_id"]) if raw.get("chain_id") is not None else None,
                start_height=(
                    int(raw["start_height"]) if raw.get("start_height") is not None else None
                ),
                traces=_optional_bool(raw.get("traces"), f"chain {name}: traces"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"CRYPTOPAY_CHAINS entry {name!r} is invalid: {exc}"
            ) from exc
    return result


def _optional_bool(value: object, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ImproperlyConfigured(f"{what} must be true, false or absent")


def chain_for_currency(currency: str) -> ChainConfig | None:
    for chain in chains().values():
        if currency in chain.currencies:
            return chain
    return None


def token_for_currency(currency: str) -> Token | None:
    """The configured ERC-20 contract of ``currency``, if it is one (on the chain that has it)."""
    chain = chain_for_currency(currency)
    return chain.tokens.get(currency) if chain is not None else None
