"""Ethereum JSON-RPC watcher: native ETH transfers and ERC-20 ``Transfer`` logs, confirmations and
reorgs (detected by parent hash)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from payments.chains.watch import Watcher, block_time
from payments.models import Payment, PaymentTransaction
from payments.services import ObservedOutput

# keccak256("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _int(value: str | int) -> int:
    return value if isinstance(value, int) else int(value, 16)


class EvmWatcher(Watcher):
    def address_key(self, address: str) -> str:
        return address.lower()

    def tip(self) -> int:
        return _int(self.client.call("eth_blockNumber"))

    def _block(self, height: int, full: bool) -> dict[str, Any] | None:
        return self.client.call("eth_getBlockByNumber", hex(height), full)

    def block_time_at(self, height: int) -> datetime:
        block = self._block(height, False)
        if block is None:
            raise LookupError(f"block {height} not found")
        return block_time(_int(block["timestamp"]))

    def block_hash(self, height: int) -> str | None:
        block = self._block(height, False)
        return None if block is None else block["hash"]

    def scan_block(
        self, height: int, watched: dict[tuple[str, str], Payment], *, tip: int, parent: str
    ) -> tuple[str, str, int | None]:
        block = self._block(height, True)
        if block is None:
            raise LookupError(f"block {height} not found")
        block_hash, mined_at = block["hash"], block_time(_int(block["timestamp"]))
        if parent and block["parentHash"] != parent:
            return block_hash, block["parentHash"], None
        count = 0
        for tx in block.get("transactions", []):
            payment = watched.get((self.chain.currency, (tx.get("to") or "").lower()))
            value = _int(tx.get("value", "0x0"))
            if payment is not None and value > 0:
                receipt = self.client.call("eth_getTransactionReceipt", tx["hash"])
                if receipt is None or _int(receipt.get("status", "0x1")) != 1:
                    continue  # reverted: no value moved
                count += self.record(
                    payment,
                    ObservedOutput(
                        chain=self.chain.name, txid=tx["hash"], kind=PaymentTransaction.Kind.NATIVE,
                        output_index=0, amount=value, confirmations=tip - height + 1,
                        block_hash=block_hash, block_height=height, mined_at=mined_at,
                    ),
                )  # fmt: skip
        count += self._scan_logs(height, block_hash, mined_at, tip, watched)
        return block_hash, block["parentHash"], count

    def _scan_logs(self, height, block_hash, mined_at, tip, watched) -> int:  # type: ignore[no-untyped-def]
        tokens = {t.address: t for t in self.chain.tokens.values()}
        token_payments = {k: p for k, p in watched.items() if k[0] in self.chain.tokens}
        if not tokens or not token_payments:
            return 0
        recipients = ["0x" + address[2:].rjust(64, "0") for _, address in token_payments]
        logs = self.client.call(
            "eth_getLogs",
            {
                "blockHash": block_hash,
                "address": list(tokens),
                "topics": [TRANSFER_TOPIC, None, sorted(set(recipients))],
            },
        )
        count = 0
        for log in logs:
            if log.get("removed"):
                continue
            token = tokens.get(log["address"].lower())
            if token is None or len(log["topics"]) != 3:
                continue
            to = "0x" + log["topics"][2][-40:].lower()
            payment = token_payments.get((token.currency, to))
            amount = _int(log["data"]) if log["data"] not in ("0x", "") else 0
            if payment is None or amount <= 0:
                continue
            count += self.record(
                payment,
                ObservedOutput(
                    chain=self.chain.name, txid=log["transactionHash"], kind=PaymentTransaction.Kind.LOG,
                    output_index=_int(log["logIndex"]), amount=amount,
                    confirmations=tip - height + 1, block_hash=block_hash, block_height=height,
                    mined_at=mined_at,
                ),
            )  # fmt: skip
        return count

    def recount(self, tx: PaymentTransaction, tip: int) -> ObservedOutput | None:
        same = {"chain": tx.chain, "txid": tx.txid, "kind": tx.kind,
                "output_index": tx.output_index, "amount": tx.amount}  # fmt: skip
        receipt = self.client.call("eth_getTransactionReceipt", tx.txid)
        if receipt is None:
            pending = self.client.call("eth_getTransactionByHash", tx.txid)
            if pending is None:
                return None
            return ObservedOutput(**same, confirmations=0)
        if _int(receipt.get("status", "0x1")) != 1:
            return None
        height = _int(receipt["blockNumber"])
        block = self._block(height, False)
        if block is None or block["hash"] != receipt["blockHash"]:
            return ObservedOutput(**same, confirmations=0)  # its block is being replaced
        return ObservedOutput(
            **same, confirmations=max(0, tip - height + 1), block_hash=receipt["blockHash"],
            block_height=height, mined_at=block_time(_int(block["timestamp"])),
        )  # fmt: skip
