"""Bitcoin Core JSON-RPC watcher (BTC, LTC): blocks, mempool, confirmations, RBF, reorgs."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from payments.chains.rpc import RpcError
from payments.chains.watch import Watcher, block_time
from payments.currencies import crypto
from payments.models import Payment, PaymentTransaction
from payments.services import ObservedOutput

# Bitcoin Core's RPC_INVALID_ADDRESS_OR_KEY, what getblockheader answers for an unknown hash.
BLOCK_NOT_FOUND = -5


def _address(script_pub_key: dict[str, Any]) -> str | None:
    # Core 22+ gives "address"; 0.21 (Litecoin Core) gives "addresses": [...].
    if "address" in script_pub_key:
        return script_pub_key["address"]
    addresses = script_pub_key.get("addresses") or []
    return addresses[0] if len(addresses) == 1 else None


class UtxoWatcher(Watcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = 10 ** crypto(self.chain.currency).decimals

    def units(self, value: Decimal) -> int:
        units = Decimal(value) * self.scale
        if units != units.to_integral_value():
            raise ValueError(f"amount {value} has more decimals than {self.chain.currency}")
        return int(units)

    def tip(self) -> int:
        return int(self.client.call("getblockcount"))

    def block_hash(self, height: int) -> str | None:
        try:
            return self.client.call("getblockhash", height)
        except RpcError:
            return None  # beyond the tip after a reorg shortened the chain

    def block_time_at(self, height: int) -> datetime:
        # The median time past only grows with height, so a binary search over it is sound.
        header = self.client.call("getblockheader", self.client.call("getblockhash", height))
        return block_time(header.get("mediantime", header["time"]))

    def _outputs(
        self, tx: dict, watched: dict[tuple[str, str], Payment]
    ) -> list[tuple[Payment, int, int]]:
        found = []
        for vout in tx.get("vout", []):
            address = _address(vout.get("scriptPubKey", {}))
            if address is None:
                continue  # no single address (bare multisig, OP_RETURN): pays no deposit address
            payment = watched.get((self.chain.currency, address))
            if payment is not None:
                found.append((payment, int(vout["n"]), self.units(vout["value"])))
        return found

    def scan_block(
        self, height: int, watched: dict[tuple[str, str], Payment], *, tip: int, parent: str
    ) -> tuple[str, str, int | None]:
        block_hash = self.client.call("getblockhash", height)
        block = self.client.call("getblock", block_hash, 2)
        if parent and block.get("previousblockhash", parent) != parent:
            return block_hash, block.get("previousblockhash", ""), None
        # Counted from the block's height, not from the node's answer: a failover node may be at
        # another height than the tip this poll read.
        confirmations = max(1, tip - height + 1)
        count = 0
        for tx in block["tx"]:
            for payment, index, amount in self._outputs(tx, watched):
                count += self.record(
                    payment,
                    ObservedOutput(
                        chain=self.chain.name, txid=tx["txid"], output_index=index, amount=amount,
                        confirmations=confirmations, block_hash=block_hash,
                        block_height=height, mined_at=block_time(block["time"]),
                        spends=_spends(tx),
                    ),
                )  # fmt: skip
        return block_hash, block.get("previousblockhash", ""), count

    def scan_mempool(
        self, watched: dict[tuple[str, str], Payment], tip: int, *, deadline: float
    ) -> int:
        """Record unconfirmed outputs paying watched addresses.

        Each mempool transaction is fetched once per process: what it pays is kept (``_seen``)
        while it stays in the mempool, so a poll only fetches what arrived since the last one
        (thousands of unrelated transactions cost one ``getrawmempool`` after the first poll).
        An address is never handed out before its payment exists, so a transaction seen before
        its payment was watched cannot pay it — the kept outputs are still matched against each
        poll's watched set, which costs no node call.
        """
        if not watched:
            return 0
        seen = _seen.setdefault(self.chain.name, {})
        mempool = self.client.call("getrawmempool", False)
        present = set(mempool)
        for txid in [t for t in seen if t not in present]:
            del seen[txid]
        hits: list[tuple[str, list[tuple[Payment, int, int]], tuple[str, ...]]] = []
        for txid in mempool:
            if txid not in seen:
                if time.monotonic() > deadline:
                    break  # the next poll fetches the rest
                try:
                    tx = self.client.call("getrawtransaction", txid, True)
                except RpcError:
                    continue  # left the mempool meanwhile (mined: the block scan finds it)
                seen[txid] = (
                    tuple(
                        (address, int(vout["n"]), self.units(vout["value"]))
                        for vout in tx.get("vout", [])
                        if (address := _address(vout.get("scriptPubKey", {}))) is not None
                    ),
                    _spends(tx),
                )
            outputs, spends = seen[txid]
            paying = [
                (payment, index, amount)
                for address, index, amount in outputs
                if (payment := watched.get((self.chain.currency, address))) is not None
            ]
            if paying:
                hits.append((txid, paying, spends))
        if not hits:
            return 0
        recorded = set(
            PaymentTransaction.objects.filter(
                chain=self.chain.name, txid__in=[txid for txid, _, _ in hits]
            )
            .exclude(state=PaymentTransaction.State.DROPPED)
            .values_list("txid", flat=True)
        )
        count = 0
        for txid, paying, spends in hits:
            if txid in recorded:
                continue  # followed by the recount
            try:
                entry = self.client.call("getmempoolentry", txid)
            except RpcError:
                continue  # mined or replaced meanwhile: the block scan or the recount sees it
            for payment, index, amount in paying:
                count += self.record(
                    payment,
                    ObservedOutput(
                        chain=self.chain.name, txid=txid, output_index=index, amount=amount,
                        confirmations=0, replaceable=bool(entry.get("bip125-replaceable")),
                        spends=spends, seen_at=_entry_time(entry),
                    ),
                )  # fmt: skip
        return count

    def recount(self, tx: PaymentTransaction, tip: int) -> ObservedOutput | None:
        """Works without -txindex: a mined transaction is followed through its block's header,
        an unconfirmed one through the mempool; blocks are scanned by the poll before this, so a
        transaction that left the mempool for a block has already been found there."""
        # As recorded, unconfirmed; what the node says now replaces the rest.
        same = ObservedOutput(
            chain=tx.chain, txid=tx.txid, kind=tx.kind, output_index=tx.output_index,
            amount=tx.amount, confirmations=0,
        )  # fmt: skip
        if tx.block_hash:
            try:
                header = self.client.call("getblockheader", tx.block_hash)
            except RpcError as exc:
                if exc.code != BLOCK_NOT_FOUND:
                    raise
                # The node does not know the block (it lost its last blocks in a crash): the
                # same as a block that left the active chain.
                header = {"confirmations": -1}
            confirmations = int(header.get("confirmations", -1))
            if confirmations >= 1:
                return replace(
                    same, confirmations=confirmations, block_hash=tx.block_hash,
                    block_height=int(header["height"]), mined_at=block_time(header["time"]),
                    replaceable=tx.replaceable,
                )  # fmt: skip
        try:
            entry = self.client.call("getmempoolentry", tx.txid)
        except RpcError:
            entry = None
        if entry is not None:
            return replace(same, replaceable=bool(entry.get("bip125-replaceable")))
        # The UTXO set knows an unspent output's depth without -txindex: mined in a block we
        # have not tied it to (the node lost the block we recorded, then mined it again).
        unspent = self.client.call("gettxout", tx.txid, tx.output_index, True)
        if unspent is not None and int(unspent.get("confirmations", 0)) >= 1:
            best = self.client.call("getblockheader", unspent["bestblock"])
            height = int(best["height"]) - int(unspent["confirmations"]) + 1
            block_hash = self.client.call("getblockhash", height)
            header = self.client.call("getblockheader", block_hash)
            return replace(
                same, confirmations=int(unspent["confirmations"]), block_hash=block_hash,
                block_height=height, mined_at=block_time(header["time"]),
                replaceable=tx.replaceable,
            )  # fmt: skip
        if unspent is None and self._spent_elsewhere(tx):
            return None
        # Not in the mempool, not in a block we know, and nothing else spent its inputs: evicted
        # or not relayed to this node. It may still confirm; it counts as unconfirmed meanwhile
        # and the monitoring window decides.
        return replace(same, replaceable=tx.replaceable)

    def _spent_elsewhere(self, tx: PaymentTransaction) -> bool:
        """Evidence that ``tx`` can never confirm: another transaction spent one of its inputs.

        ``gettxout`` reads the UTXO set (and the mempool), which every node has without -txindex.
        """
        if not tx.spends:
            return False  # recorded without its inputs: no evidence either way
        for outpoint in tx.spends:
            txid, _, vout = outpoint.rpartition(":")
            if self.client.call("gettxout", txid, int(vout), True) is None:
                # Spent by someone else, if the node answering is on our chain (a lagging node
                # lacks the block that created the input, which looks the same).
                return self._answering_node_on_our_chain()
        return False


# Per process and chain: mempool txid -> (its (address, vout, amount) outputs, its inputs).
_seen: dict[str, dict[str, tuple[tuple[tuple[str, int, int], ...], tuple[str, ...]]]] = {}


def _spends(tx: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f"{vin['txid']}:{vin['vout']}" for vin in tx.get("vin", []) if "txid" in vin)


def _entry_time(entry: dict[str, Any]) -> datetime | None:
    return block_time(entry["time"]) if entry.get("time") else None
