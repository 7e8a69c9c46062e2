"""Bitcoin Core JSON-RPC watcher (BTC, LTC): blocks, mempool, confirmations, RBF, reorgs."""

from __future__ import annotations

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

    def _outputs(
        self, tx: dict, watched: dict[tuple[str, str], Payment]
    ) -> list[tuple[Payment, int, int]]:
        found = []
        for vout in tx.get("vout", []):
            payment = watched.get((self.chain.currency, _address(vout.get("scriptPubKey", {}))))
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
        tip_confirmations = int(block.get("confirmations", 1))
        count = 0
        for tx in block["tx"]:
            for payment, index, amount in self._outputs(tx, watched):
                count += self.record(
                    payment,
                    ObservedOutput(
                        chain=self.chain.name, txid=tx["txid"], output_index=index, amount=amount,
                        confirmations=max(1, tip_confirmations), block_hash=block_hash,
                        block_height=height, mined_at=block_time(block["time"]),
                    ),
                )  # fmt: skip
        return block_hash, block.get("previousblockhash", ""), count

    def scan_mempool(self, watched: dict[tuple[str, str], Payment], tip: int) -> int:
        if not watched:
            return 0
        known = set(
            PaymentTransaction.objects.filter(chain=self.chain.name).values_list("txid", flat=True)
        )
        count = 0
        for txid, entry in self.client.call("getrawmempool", True).items():
            if txid in known:
                continue
            try:
                tx = self.client.call("getrawtransaction", txid, True)
            except RpcError:
                continue  # left the mempool meanwhile
            for payment, index, amount in self._outputs(tx, watched):
                count += self.record(
                    payment,
                    ObservedOutput(
                        chain=self.chain.name, txid=txid, output_index=index, amount=amount,
                        confirmations=0, replaceable=bool(entry.get("bip125-replaceable")),
                    ),
                )  # fmt: skip
        return count

    def recount(self, tx: PaymentTransaction, tip: int) -> ObservedOutput | None:
        """Works without -txindex: a mined transaction is followed through its block's header."""
        same = {"chain": tx.chain, "txid": tx.txid, "kind": tx.kind,
                "output_index": tx.output_index, "amount": tx.amount}  # fmt: skip
        block_hash = tx.block_hash
        if not block_hash:
            try:
                entry = self.client.call("getmempoolentry", tx.txid)
                return ObservedOutput(
                    **same, confirmations=0, replaceable=bool(entry.get("bip125-replaceable"))
                )
            except RpcError:
                pass
            try:  # mined since the block scan (or found through -txindex)
                block_hash = self.client.call("getrawtransaction", tx.txid, True).get("blockhash")
            except RpcError:
                return None
            if not block_hash:
                return None
        try:
            header = self.client.call("getblockheader", block_hash)
        except RpcError as exc:
            if exc.code != BLOCK_NOT_FOUND:
                raise
            # The node does not know the block at all (it lost its last blocks in a crash, or a
            # failover node never had them): the same as a block that left the active chain.
            header = {"confirmations": -1}
        confirmations = int(header.get("confirmations", -1))
        if confirmations < 1:
            # Its block left the active chain: back in the mempool, mined again, or gone.
            try:
                entry = self.client.call("getmempoolentry", tx.txid)
            except RpcError:
                entry = None
            if entry is not None:
                return ObservedOutput(
                    **same, confirmations=0, replaceable=bool(entry.get("bip125-replaceable"))
                )
            try:  # mined again in another block (found through -txindex)
                again = self.client.call("getrawtransaction", tx.txid, True).get("blockhash")
            except RpcError:
                return None
            if not again or again == block_hash:
                return None
            header = self.client.call("getblockheader", again)
            block_hash, confirmations = again, int(header.get("confirmations", -1))
            if confirmations < 1:
                return None
        return ObservedOutput(
            **same, confirmations=confirmations, block_hash=block_hash,
            block_height=int(header["height"]), mined_at=block_time(header["time"]),
            replaceable=tx.replaceable,
        )  # fmt: skip
