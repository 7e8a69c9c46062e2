"""Ethereum JSON-RPC watcher: native ETH transfers, ETH sent by contracts, ERC-20 ``Transfer``
logs, confirmations and reorgs (detected by parent hash).

Every configured asset is looked at for every watched address of the chain: a transfer in the
asset its payment asks for is credited; one in another asset (USDC sent to an ETH payment's
address) is recorded as an ``UnmatchedTransfer`` and credits nothing. Only *configured* tokens
count: any contract can emit ``Transfer`` logs, and unknown tokens sent to deposit addresses are
mostly spam airdrops.

Token decimals: amounts of a token are priced and counted in its configured ``decimals``; each
poll first reads ``decimals()`` from every configured contract and a token whose contract
disagrees is not watched at all (an ERROR log line, and the ``token:<chain>:<code>`` health
dependency is unavailable), because counting in the wrong unit is off by a factor of 10^12.

ETH that arrives through a contract (a Safe or another smart-contract wallet, an exchange's
payout contract) is an internal call: no top-level transaction has the address as ``to``. Two ways
to see it, in this order:

1. Call traces: ``trace_block`` (the ``trace`` namespace: Erigon, Reth, Nethermind, anvil), else
   ``debug_traceBlockByHash`` with the ``callTracer`` (geth too). Each value-moving sub-call that
   did not revert is one credit keyed by its transaction hash and its position in the call tree
   (counted the same way from either answer), so it is exact, survives reorgs like any
   transaction (the same key when re-mined) and names the transaction to the merchant.
   ``trace_block`` comes first because it is cheap where both exist: on anvil a block of 100
   transfers takes ~5 ms against ~3.7 s with the ``callTracer``, which re-executes the block.
2. Without traces (many hosted and pruned nodes disable the ``debug`` namespace), a balance check
   per scanned block: each watched address's balance at the block against its parent (by block
   hash, so a reorg mid-scan cannot mix blocks), minus what the block's top-level transfers
   explain. The unexplained increase is one credit keyed ``internal:<block hash>:<address>``: a
   block can only be counted once, and after a reorg its block is gone, so the credit is dropped
   and the replacing block gets its own. It costs one ``eth_getBalance`` per watched address per
   block, and cannot name the transaction.

Chain config ``"traces"``: absent = try traces and fall back when the node refuses them; ``false``
= balance check only; ``true`` = traces required (a node refusing them fails the poll). Give all
nodes of a chain the same trace support: a failover between a tracing and a non-tracing node in
the middle of a reorg could count one internal transfer under both kinds of key.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from payments.chains.config import Token
from payments.chains.rpc import RpcError
from payments.chains.watch import Watcher, block_time
from payments.models import Payment, PaymentTransaction
from payments.services import ObservedOutput

logger = logging.getLogger(__name__)

# keccak256("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
DECIMALS_CALL = "0x313ce567"  # decimals()
# Call-frame types that move value to their ``to`` (DELEGATECALL and STATICCALL show a value they
# do not move).
VALUE_CALLS = frozenset({"CALL", "CREATE", "CREATE2", "SELFDESTRUCT"})
BALANCE_DIFF_PREFIX = "internal:"


def _int(value: str | int) -> int:
    return value if isinstance(value, int) else int(value, 16)


def token_decimals_onchain(*, token: Token, call: Callable[..., Any]) -> int | None:
    """What the contract's ``decimals()`` answers; None when it cannot (no contract there)."""
    try:
        raw = call("eth_call", {"to": token.address, "data": DECIMALS_CALL}, "latest")
    except RpcError:
        return None
    if not raw or raw == "0x":
        return None
    return _int(raw)


def token_decimals_problem(*, chain: str, token: Token, onchain: int | None) -> str | None:
    if onchain == token.decimals:
        return None
    said = "has no decimals()" if onchain is None else f"says {onchain}"
    return (
        f"{chain}: token {token.currency} at {token.address} is configured with "
        f"{token.decimals} decimals but its contract {said}; not watched until CRYPTOPAY_CHAINS "
        "or the address is fixed"
    )


# (chain, token) -> (the problem last logged, when): a misconfigured token is checked every poll
# (5 s), and an ERROR line that often would bury everything else; it is repeated every
# TOKEN_PROBLEM_REPEAT_SECONDS while it lasts (the health dependency shows it all along).
_token_problems_reported: dict[tuple[str, str], tuple[str, float]] = {}
TOKEN_PROBLEM_REPEAT_SECONDS = 600


def _report_token_problem(*, key: tuple[str, str], problem: str) -> None:
    last = _token_problems_reported.get(key)
    now = time.monotonic()
    if last is None or last[0] != problem or now - last[1] >= TOKEN_PROBLEM_REPEAT_SECONDS:
        logger.error("%s", problem)
        _token_problems_reported[key] = (problem, now)


def _trace_value_calls(traces: list[dict[str, Any]]) -> list[tuple[str, int, str, int]]:
    """``_value_calls`` from ``trace_block``'s flat list (each transaction's calls in the same
    depth-first order, each with its path in the tree): the same positions, so a credit has the
    same key whichever way the node was asked."""
    found = []
    positions: dict[str, int] = defaultdict(int)
    reverted: dict[str, list[tuple[int, ...]]] = defaultdict(list)
    for trace in traces:
        txid = trace.get("transactionHash")
        if not txid:
            continue  # a block reward
        path = tuple(trace.get("traceAddress") or ())
        if any(path[: len(failed)] == failed for failed in reverted[txid]):
            continue  # under a reverted call (``_value_calls`` does not count these either)
        position = positions[txid]
        positions[txid] += 1
        if trace.get("error"):
            reverted[txid].append(path)
            continue
        action, kind = trace.get("action") or {}, trace.get("type")
        if kind == "call" and action.get("callType") == "call":
            to, value = action.get("to"), action.get("value")
        elif kind == "create":
            to, value = (trace.get("result") or {}).get("address"), action.get("value")
        elif kind == "suicide":
            to, value = action.get("refundAddress"), action.get("balance")
        else:
            continue  # delegatecall, staticcall, callcode: no value moves to another account
        wei = _int(value or "0x0")
        if path and to and wei > 0:
            found.append((txid, position, to.lower(), wei))
    return found


class BlockReplaced(Exception):
    """A node answered about another block at the height being scanned (a reorg mid-scan)."""


def _value_calls(
    frames: list[dict[str, Any]], transactions: list[Any]
) -> list[tuple[str, int, str, int]]:
    """(tx hash, position in the call tree, to, wei) of each sub-call that moved ETH and stuck."""
    found: list[tuple[str, int, str, int]] = []
    for number, item in enumerate(frames):
        txid = item.get("txHash")
        if not txid and number < len(transactions):
            entry = transactions[number]
            txid = entry["hash"] if isinstance(entry, dict) else entry
        if not txid:
            continue  # a frame no transaction of the block answers to: nothing to credit it to
        positions = itertools.count()
        stack = [(item.get("result") or {}, 0)]
        while stack:
            frame, depth = stack.pop()
            position = next(positions)
            if frame.get("error"):
                continue  # a reverted call moved nothing, and neither did its sub-calls
            value = _int(frame.get("value") or "0x0")
            if depth > 0 and value > 0 and frame.get("type") in VALUE_CALLS and frame.get("to"):
                found.append((txid, position, frame["to"].lower(), value))
            stack.extend((sub, depth + 1) for sub in reversed(frame.get("calls") or []))
    return found


@dataclass(frozen=True)
class _MinedIn:
    """What every credit found in one scanned block shares."""

    chain: str
    confirmations: int
    block_hash: str
    block_height: int
    mined_at: datetime

    def output(self, *, txid: str, kind: str, output_index: int, amount: int) -> ObservedOutput:
        return ObservedOutput(
            chain=self.chain, txid=txid, kind=kind, output_index=output_index, amount=amount,
            confirmations=self.confirmations, block_hash=self.block_hash,
            block_height=self.block_height, mined_at=self.mined_at,
        )  # fmt: skip


class EvmWatcher(Watcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokens: dict[str, Token] | None = None
        self._traces: bool | None = self.chain.traces
        self._trace_block = True  # until the node says it has no trace_block
        self._balances: dict[tuple[str, str], int] = {}
        self._block_receipts = True  # until the node says it has no eth_getBlockReceipts

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

    def tokens(self) -> dict[str, Token]:
        """Configured tokens whose contract agrees on decimals, by contract address. A watcher
        lives for one poll, so each poll checks once."""
        if self._tokens is None:
            self._tokens = {}
            for token in self.chain.tokens.values():
                onchain = token_decimals_onchain(token=token, call=self.client.call)
                problem = token_decimals_problem(
                    chain=self.chain.name, token=token, onchain=onchain
                )
                if problem:
                    _report_token_problem(key=(self.chain.name, token.currency), problem=problem)
                    continue
                _token_problems_reported.pop((self.chain.name, token.currency), None)
                self._tokens[token.address] = token
        return self._tokens

    def scan_block(
        self, height: int, watched: dict[tuple[str, str], Payment], *, tip: int, parent: str
    ) -> tuple[str, str, int | None]:
        block = self._block(height, True)
        if block is None:
            raise LookupError(f"block {height} not found")
        block_hash = block["hash"]
        if parent and block["parentHash"] != parent:
            return block_hash, block["parentHash"], None
        at: dict[str, dict[str, Payment]] = defaultdict(dict)
        for (currency, address), payment in watched.items():
            at[address][currency] = payment
        if not at:
            return block_hash, block["parentHash"], 0
        found = _MinedIn(
            chain=self.chain.name, confirmations=tip - height + 1, block_hash=block_hash,
            block_height=height, mined_at=block_time(_int(block["timestamp"])),
        )  # fmt: skip
        try:
            calls = self._traced_calls(block)
        except BlockReplaced:
            return block_hash, block["parentHash"], None  # the next poll finds the fork
        # Without traces, what the block's top-level transactions explain of each balance change.
        explained: dict[str, int] = defaultdict(int)
        count = 0
        relevant = []
        for tx in block.get("transactions", []):
            to, sender = (tx.get("to") or "").lower(), tx["from"].lower()
            value = _int(tx.get("value", "0x0"))
            arriving = to in at and value > 0
            leaving = calls is None and sender in at
            if arriving or leaving:
                relevant.append((tx, to, sender, value, arriving, leaving))
        receipts = self._receipts(block_hash, [tx["hash"] for tx, *_ in relevant])
        for tx, to, sender, value, arriving, leaving in relevant:
            receipt = receipts.get(tx["hash"])
            succeeded = receipt is not None and _int(receipt.get("status", "0x1")) == 1
            if leaving and receipt is not None:
                fee = _int(receipt["gasUsed"]) * _int(
                    receipt.get("effectiveGasPrice") or tx.get("gasPrice") or "0x0"
                )
                explained[sender] -= fee + (value if succeeded else 0)
            if not arriving or not succeeded:
                continue  # reverted: no value moved
            explained[to] += value
            output = found.output(
                txid=tx["hash"], kind=PaymentTransaction.Kind.NATIVE, output_index=0, amount=value
            )
            count += self._take(at[to], self.chain.currency, to, output)
        count += self._scan_logs(block_hash, at, found)
        if calls is not None:
            for txid, position, to, value in calls:
                if to in at:
                    output = found.output(
                        txid=txid, kind=PaymentTransaction.Kind.INTERNAL, output_index=position,
                        amount=value,
                    )  # fmt: skip
                    count += self._take(at[to], self.chain.currency, to, output)
        else:
            for withdrawal in block.get("withdrawals") or []:
                # Consensus-layer withdrawals are in gwei; not a buyer's payment.
                explained[withdrawal["address"].lower()] += _int(withdrawal["amount"]) * 10**9
            count += self._scan_balances(block, at, explained, found)
        return block_hash, block["parentHash"], count

    def _take(
        self, payments: dict[str, Payment], currency: str, to: str, output: ObservedOutput
    ) -> int:
        """Credit the payment at ``to`` asking for ``currency``; anything else is unmatched."""
        payment = payments.get(currency)
        if payment is not None:
            return self.record(payment, output)
        # Addresses are per payment; only payments from before that can share one: take the newest.
        hit = max(payments.values(), key=lambda p: p.pk)
        return self.record_unmatched(hit, output, currency=currency, to_address=to)

    def _receipts(self, block_hash: str, txids: list[str]) -> dict[str, dict[str, Any] | None]:
        """Receipts of ``txids`` (transactions of the block ``block_hash``), by hash.

        Two or more come from one ``eth_getBlockReceipts`` (geth, Erigon, Reth, Nethermind,
        anvil): a catch-up block full of payments costs one call instead of one per payment. A
        node without it (JSON-RPC error: method not found) is asked once a poll, then one
        ``eth_getTransactionReceipt`` per transaction, as for a single one.
        """
        if len(txids) >= 2 and self._block_receipts:
            try:
                receipts = self.client.call("eth_getBlockReceipts", block_hash)
            except RpcError as exc:
                logger.info(
                    "%s: no eth_getBlockReceipts from the node (%s); one receipt per transaction",
                    self.chain.name, exc,
                )  # fmt: skip
                self._block_receipts = False
            else:
                if receipts is not None:  # None: the block left the chain meanwhile
                    by_hash = {r["transactionHash"]: r for r in receipts}
                    return {txid: by_hash.get(txid) for txid in txids}
        return {txid: self.client.call("eth_getTransactionReceipt", txid) for txid in txids}

    def _scan_logs(
        self, block_hash: str, at: dict[str, dict[str, Payment]], found: _MinedIn
    ) -> int:
        tokens = self.tokens()
        if not tokens:
            return 0
        recipients = ["0x" + address[2:].rjust(64, "0") for address in at]
        logs = self.client.call(
            "eth_getLogs",
            {
                "blockHash": block_hash,
                "address": sorted(tokens),
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
            amount = _int(log["data"]) if log["data"] not in ("0x", "") else 0
            if to not in at or amount <= 0:
                continue
            output = found.output(
                txid=log["transactionHash"], kind=PaymentTransaction.Kind.LOG,
                output_index=_int(log["logIndex"]), amount=amount,
            )  # fmt: skip
            count += self._take(at[to], token.currency, to, output)
        return count

    def _traced_calls(self, block: dict[str, Any]) -> list[tuple[str, int, str, int]] | None:
        """The block's value-moving sub-calls from call traces; None when traces are off or the
        node refuses them (then the balance check runs)."""
        if self._traces is False:
            return None
        if self._trace_block:
            try:
                traces = self.client.call("trace_block", block["number"])
            except RpcError:
                self._trace_block = False  # no trace namespace: the debug one
            else:
                # By number (it takes no hash): make sure it is the block we are scanning.
                if traces is None or any(
                    t.get("blockHash", block["hash"]) != block["hash"] for t in traces
                ):
                    raise BlockReplaced(block["hash"])
                return _trace_value_calls(traces)
        try:
            frames = self.client.call(
                "debug_traceBlockByHash", block["hash"], {"tracer": "callTracer"}
            )
        except RpcError as exc:
            if self._traces:
                raise  # configured to require traces
            logger.info(
                "%s: no call traces from the node (%s); checking balances for ETH sent by "
                "contracts", self.chain.name, exc,
            )  # fmt: skip
            self._traces = False
            return None
        return _value_calls(frames or [], block.get("transactions", []))

    def _balance(self, address: str, block_hash: str) -> int:
        key = (address, block_hash)
        if key not in self._balances:
            # By hash (EIP-1898): the balance of exactly the block scanned, even mid-reorg.
            self._balances[key] = _int(
                self.client.call("eth_getBalance", address, {"blockHash": block_hash})
            )
        return self._balances[key]

    def _scan_balances(
        self,
        block: dict[str, Any],
        at: dict[str, dict[str, Payment]],
        explained: dict[str, int],
        found: _MinedIn,
    ) -> int:
        if _int(block["number"]) == 0:
            return 0
        count = 0
        for address in sorted(at):
            change = self._balance(address, block["hash"]) - self._balance(
                address, block["parentHash"]
            )
            unexplained = change - explained.get(address, 0)
            if unexplained <= 0:
                continue
            output = found.output(
                txid=f"{BALANCE_DIFF_PREFIX}{block['hash']}:{address}",
                kind=PaymentTransaction.Kind.INTERNAL, output_index=0, amount=unexplained,
            )  # fmt: skip
            count += self._take(at[address], self.chain.currency, address, output)
        return count

    def recount(self, tx: PaymentTransaction, tip: int) -> ObservedOutput | None:
        # As recorded, unconfirmed; what the node says now replaces the rest.
        same = ObservedOutput(
            chain=tx.chain, txid=tx.txid, kind=tx.kind, output_index=tx.output_index,
            amount=tx.amount, confirmations=0,
        )  # fmt: skip
        if tx.txid.startswith(BALANCE_DIFF_PREFIX):
            return self._recount_balance_credit(tx, tip, same)
        receipt = self.client.call("eth_getTransactionReceipt", tx.txid)
        if receipt is None:
            pending = self.client.call("eth_getTransactionByHash", tx.txid)
            if pending is None:
                return None
            return same
        if _int(receipt.get("status", "0x1")) != 1:
            return None
        height = _int(receipt["blockNumber"])
        block = self._block(height, False)
        if block is None or block["hash"] != receipt["blockHash"]:
            return same  # its block is being replaced
        return replace(
            same, confirmations=max(0, tip - height + 1), block_hash=receipt["blockHash"],
            block_height=height, mined_at=block_time(_int(block["timestamp"])),
        )  # fmt: skip

    def _recount_balance_credit(
        self, tx: PaymentTransaction, tip: int, same: ObservedOutput
    ) -> ObservedOutput | None:
        """A balance-check credit lives exactly as long as its block is on the chain."""
        block_hash = tx.txid.split(":")[1]
        block = self.client.call("eth_getBlockByHash", block_hash, False)
        if block is None:
            return None
        height = _int(block["number"])
        canonical = self._block(height, False)
        if canonical is None or canonical["hash"] != block_hash:
            return None  # reorged out; the replacing block was scanned on its own
        return replace(
            same, confirmations=max(0, tip - height + 1), block_hash=block_hash,
            block_height=height, mined_at=block_time(_int(block["timestamp"])),
        )  # fmt: skip
