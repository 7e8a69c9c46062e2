"""Chain watchers: follow a node from a stored cursor, record payments, confirmations and reorgs.

How it runs: Celery beat starts ``chains_watch`` every CHAIN_POLL_INTERVAL; each run polls every
configured chain once and returns. A database advisory lock per chain keeps two runs (two workers,
or a slow run and the next tick) from watching the same chain at once. We chose short scheduled
polls over a long-running watcher process because all state lives in the database (the cursor,
recent block hashes, recorded transactions): any worker can take over after a crash, there is no
extra process to supervise, and a run is bounded (at most MAX_BLOCKS_PER_POLL blocks). For a
foreground view, ``manage.py watch_chain <chain>`` runs the same poll in a loop.

Each poll, per chain:
1. Behind or forked: a node whose tip is below our cursor is behind (a lagging failover node, one
   that restarted and is still loading blocks), not forked: the poll waits for it and changes
   nothing. Otherwise the stored hash at the cursor (and below, through ``ChainBlock``) is
   compared with the node's; only a mismatch at a height the node has is a reorg: the cursor walks
   back to the fork point and every transaction recorded in the abandoned blocks loses its block
   (it will be found again in the new chain or the mempool, or it is dropped).
2. New blocks from the cursor to the tip: outputs (UTXO) or native transfers and ERC-20 ``Transfer``
   logs (EVM) paying a watched deposit address are recorded once (unique on chain, txid, kind,
   index) with the block's time, so a payment found late is judged by when it was mined. Each
   block is written in one transaction: what it paid, in bulk (each payment re-evaluated once,
   however many of its outputs the block holds), its hash and the cursor, so a poll cut off by
   its time budget still advances, block by block.
3. Mempool (UTXO): unconfirmed outputs, with their RBF flag and the node's first-seen time.
4. Blocks that arrived during the poll are scanned too, so a transaction that left the mempool
   meanwhile is found in its block before anything is judged missing.
5. Every recorded, still-relevant transaction gets its confirmations re-counted; one that
   vanished is dropped only on evidence (another transaction spent its inputs).
6. When the poll saw everything the node knew (blocks to the tip and the mempool), the cursor's
   ``synced_at`` moves to the time of that view: the expiry sweep only expires a payment once the
   watcher has looked past its expiry, so the health probe's and the watcher's ideas of "the
   chain is reachable" cannot disagree.

The first poll of a chain (no cursor yet) starts at the configured ``start_height`` or at the block
at or before the oldest open payment's creation, so a payment paid before the watcher ever ran is
found. Node calls go through a failover pool: a breaker per node, the next node on failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from payments.chains.config import ChainConfig, chains
from payments.chains.rpc import NodeClient
from payments.models import ChainBlock, ChainCursor, Payment, PaymentTransaction
from payments.services import (
    ObservedOutput,
    payment_transaction_drop,
    payment_transactions_apply,
    unmatched_transfer_record,
)
from resilience import clock

logger = logging.getLogger(__name__)

# How far before the oldest open payment a new watcher starts reading, by chain kind. Bitcoin's
# consensus lets a block's timestamp run up to two hours ahead of the time it was mined (and trail
# it by about an hour, the median-time-past rule): start two hours early rather than one block
# late. EVM block timestamps are set by the proposer within seconds of the slot time.
START_MARGIN_SECONDS = {"utxo": 7200, "evm": 60}
# Re-counted transactions written per transaction: bounds how long payment rows stay locked.
RECOUNT_BATCH = 500


@dataclass
class PollResult:
    chain: str
    from_height: int
    to_height: int
    tip: int
    reorged_from: int | None = None
    recorded: int = 0
    dropped: int = 0
    node: str = ""
    behind: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return max(0, self.tip - self.to_height)


class NodeBehind(Exception):
    """The node answering does not have blocks we already processed: it is behind, not forked."""


_process_locks: dict[str, threading.Lock] = {}


@contextmanager
def chain_lock(name: str) -> Iterator[bool]:
    """One watcher per chain: a PostgreSQL advisory lock (a process lock on SQLite)."""
    if connection.vendor == "postgresql":
        key = int.from_bytes(f"chain:{name}".encode()[:8].ljust(8, b"\0"), "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            acquired = cursor.fetchone()[0]
        try:
            yield acquired
        finally:
            if acquired:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        return
    lock = _process_locks.setdefault(name, threading.Lock())
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


class Watcher:
    def __init__(self, chain: ChainConfig, client: NodeClient | None = None) -> None:
        self.chain = chain
        self.client = client or NodeClient(chain)
        self.cursor: ChainCursor | None = None
        self._on_our_chain: bool | None = None  # asked at most once a poll
        # What a scan found, written by ``_write_found`` in one transaction (a block's).
        self._found: list[tuple[int, ObservedOutput]] = []
        self._found_unmatched: list[tuple[Payment, ObservedOutput, str, str]] = []

    def _answering_node_on_our_chain(self) -> bool:
        if self._on_our_chain is None:
            self._on_our_chain = self.on_our_chain()
        return self._on_our_chain

    def on_our_chain(self) -> bool:
        """Whether the node answering now has the block at our cursor (a failover node that is
        behind, or on another branch, cannot give evidence about our transactions)."""
        cursor = self.cursor
        if cursor is None or cursor.height < 0:
            return True
        return self.block_hash(cursor.height) == cursor.block_hash

    # --- to implement per chain kind --------------------------------------------------------

    def tip(self) -> int:
        raise NotImplementedError

    def block_hash(self, height: int) -> str | None:
        raise NotImplementedError

    def scan_block(
        self, height: int, watched: dict[tuple[str, str], Payment], *, tip: int, parent: str
    ) -> tuple[str, str, int | None]:
        """Find what pays ``watched`` in block ``height`` (``record``: written with the block);
        returns (hash, parent hash, 0), or None instead of 0 when its parent is not ``parent``."""
        raise NotImplementedError

    def scan_mempool(
        self, watched: dict[tuple[str, str], Payment], tip: int, *, deadline: float
    ) -> int:
        return 0

    def recount(self, tx: PaymentTransaction, tip: int) -> ObservedOutput | None:
        """The transaction as the node sees it now, or None when it is gone."""
        raise NotImplementedError

    def address_key(self, address: str) -> str:
        return address

    # --- the poll ---------------------------------------------------------------------------

    def open_payments(self):
        """Payments on this chain's own addresses still within their monitoring window."""
        return Payment.objects.filter(
            crypto_currency__in=self.chain.currencies, monitoring_until__gte=clock.now()
        ).exclude(deposit_address__startswith="dev")

    def watched(self) -> dict[tuple[str, str], Payment]:
        """(currency, address) of payments still within their monitoring window."""
        payments = self.open_payments().only("pk", "crypto_currency", "deposit_address")
        return {(p.crypto_currency, self.address_key(p.deposit_address)): p for p in payments}

    def block_time_at(self, height: int) -> datetime:
        raise NotImplementedError

    def start_height(self, tip: int) -> int:
        """The last block to treat as processed when a chain is watched for the first time."""
        if self.chain.start_height is not None:
            return max(-1, min(self.chain.start_height - 1, tip))
        oldest = self.open_payments().order_by("created_at").values_list("created_at", flat=True)
        created_at = oldest.first()
        if created_at is None:
            return tip  # nothing open: anything paid from now on arrives after the tip
        since = created_at - timedelta(seconds=START_MARGIN_SECONDS[self.chain.kind])
        # Highest block with a timestamp at or before ``since`` (binary search; -1 when none).
        low, high = -1, tip
        while low < high:
            middle = (low + high + 1) // 2
            if self.block_time_at(middle) <= since:
                low = middle
            else:
                high = middle - 1
        return low

    def poll(self) -> PollResult:
        deadline = time.monotonic() + settings.CHAIN_POLL_BUDGET.total_seconds()
        cursor, _ = ChainCursor.objects.get_or_create(chain=self.chain.name)
        tip = self.tip()
        if cursor.height < 0 and not cursor.block_hash:
            cursor.height = self.start_height(tip)
            cursor.block_hash = (self.block_hash(cursor.height) or "") if cursor.height >= 0 else ""
            cursor.save(update_fields=["height", "block_hash"])
        result = PollResult(
            chain=self.chain.name, from_height=cursor.height, to_height=cursor.height, tip=tip
        )
        self.cursor, self._on_our_chain = cursor, None
        try:
            if tip < cursor.height:
                raise NodeBehind(f"node at {tip}")
            fork = self._find_fork(cursor)
        except NodeBehind:
            # Behind, not forked: blocks we processed are simply not there yet. Nothing it says
            # about our transactions can be trusted until it catches up (or another node answers).
            result.behind = max(1, cursor.height - tip)
            result.to_height = cursor.height
            result.notes.append(f"node at {tip} is {result.behind} blocks behind our cursor")
            logger.warning(
                "%s: node %s is at block %d, %d behind the %d already processed; waiting for it",
                self.chain.name, self.client.node, tip, result.behind, cursor.height,
            )  # fmt: skip
            ChainCursor.objects.filter(pk=cursor.pk).update(
                node=self.client.node, polled_at=clock.now()
            )
            result.node = self.client.node
            return result
        if fork is not None:
            result.reorged_from = fork
            self._rewind(cursor, fork)
        # Read after the tip: every payment that could be paid in a block up to it is watched.
        watched = self.watched()
        complete = self._scan_blocks(cursor, tip, watched, result, deadline)
        # What the node knew at this moment is recorded once the mempool and every block up to
        # a tip read after the mempool are scanned.
        view_at = clock.now()
        if complete:
            self.scan_mempool(watched, tip, deadline=deadline)
            with transaction.atomic():
                result.recorded += self._write_found()
            # A block that arrived during the poll holds what left the mempool meanwhile. The
            # watched set is read again after that tip: a payment created since the first read
            # may already be paid in one of those blocks.
            new_tip = self.tip()
            if new_tip > cursor.height:
                tip = max(tip, new_tip)
                complete = self._scan_blocks(cursor, tip, self.watched(), result, deadline)
        result.tip = tip
        result.to_height = cursor.height
        result.dropped = self._recount_all(tip)
        cursor.tip_height = tip
        cursor.node = self.client.node
        cursor.polled_at = clock.now()
        if complete and cursor.height >= tip:
            cursor.synced_at = view_at
        cursor.save()
        ChainBlock.objects.filter(
            chain=self.chain.name, height__lt=cursor.height - self.chain.reorg_depth
        ).delete()
        result.node = cursor.node
        return result

    def _scan_blocks(
        self,
        cursor: ChainCursor,
        tip: int,
        watched: dict[tuple[str, str], Payment],
        result: PollResult,
        deadline: float,
    ) -> bool:
        """Scan the blocks after the cursor up to ``tip``, saving the cursor after each one.

        Returns False when the poll stopped early (time budget, or the chain changed under us).
        """
        cursor_start = cursor.height
        for height in range(cursor.height + 1, tip + 1):
            if height > cursor_start + 1 and time.monotonic() > deadline:
                # At least one block a poll, so a chain always advances.
                result.notes.append(f"time budget spent at {cursor.height}")
                return False
            block_hash, parent_hash, count = self.scan_block(
                height, watched, tip=tip, parent=cursor.block_hash
            )
            if count is None:
                # The chain changed under us mid-poll: stop; the next poll finds the fork.
                self._found, self._found_unmatched = [], []
                result.notes.append(f"parent mismatch at {height}")
                return False
            # One transaction per block: what it paid, its hash and the cursor move together, so
            # a poll cut off anywhere resumes at a block boundary.
            with transaction.atomic():
                count += self._write_found()
                ChainBlock.objects.bulk_create(
                    [ChainBlock(chain=self.chain.name, height=height, block_hash=block_hash,
                                parent_hash=parent_hash)],
                    update_conflicts=True, unique_fields=["chain", "height"],
                    update_fields=["block_hash", "parent_hash"],
                )  # fmt: skip
                ChainCursor.objects.filter(pk=cursor.pk).update(
                    height=height, block_hash=block_hash
                )
            cursor.height, cursor.block_hash = height, block_hash
            result.recorded += count
        return True

    def _write_found(self) -> int:
        """Write what the last scan found (in the caller's transaction); returns how much of it
        was new or changed."""
        found, unmatched = self._found, self._found_unmatched
        self._found, self._found_unmatched = [], []
        count = payment_transactions_apply(observations=found)
        for payment, output, currency, to in unmatched:
            count += int(
                unmatched_transfer_record(
                    payment=payment, output=output, currency=currency, to_address=to
                )
            )
        return count

    def _find_fork(self, cursor: ChainCursor) -> int | None:
        """Height of the last block we processed that is still on the node's chain, if ours diverged."""
        if cursor.height < 0 or not cursor.block_hash:
            return None
        current = self.block_hash(cursor.height)
        if current is None:
            raise NodeBehind(f"no block at {cursor.height}")
        if current == cursor.block_hash:
            return None
        known = {
            b.height: b.block_hash
            for b in ChainBlock.objects.filter(
                chain=self.chain.name, height__gte=cursor.height - self.chain.reorg_depth
            )
        }
        height = cursor.height - 1
        while height >= cursor.height - self.chain.reorg_depth and height >= 0:
            if height in known:
                theirs = self.block_hash(height)
                if theirs is None:
                    raise NodeBehind(f"no block at {height}")
                if theirs == known[height]:
                    return height
            height -= 1
        logger.error(
            "%s: reorg deeper than %d blocks; rescanning from there",
            self.chain.name,
            self.chain.reorg_depth,
        )
        return max(-1, cursor.height - self.chain.reorg_depth)

    def _rewind(self, cursor: ChainCursor, fork: int) -> None:
        logger.warning("%s: reorg, blocks after %d were replaced", self.chain.name, fork)
        orphaned = PaymentTransaction.objects.filter(
            chain=self.chain.name, block_height__gt=fork
        ).exclude(state=PaymentTransaction.State.DROPPED)
        # Until found again (new chain or mempool) they have no confirmations.
        payment_transactions_apply(
            observations=[
                (tx.payment_id, ObservedOutput(
                    chain=tx.chain, txid=tx.txid, kind=tx.kind, output_index=tx.output_index,
                    amount=tx.amount, confirmations=0, replaceable=tx.replaceable,
                ))
                for tx in orphaned
            ]
        )  # fmt: skip
        ChainBlock.objects.filter(chain=self.chain.name, height__gt=fork).delete()
        cursor.height = fork
        cursor.block_hash = ChainBlock.objects.filter(
            chain=self.chain.name, height=fork
        ).values_list("block_hash", flat=True).first() or (
            self.block_hash(fork) or "" if fork >= 0 else ""
        )

    def _recount_all(self, tip: int) -> int:
        """Bring recorded transactions up to date.

        Unconfirmed ones are asked about (still in the mempool? mined? gone?). Confirmed ones in
        blocks we still track need no node call: their confirmations follow from the tip, and a
        reorg of their block is caught by the fork check, which sends them back here as
        unconfirmed. Only payments still short of their confirmations are touched.
        """
        dropped = 0
        observations: list[tuple[int, ObservedOutput]] = []
        relevant = (
            PaymentTransaction.objects.filter(
                chain=self.chain.name, payment__monitoring_until__gte=clock.now()
            )
            .exclude(state=PaymentTransaction.State.DROPPED)
            # Mined and deep enough for its payment: nothing left to follow (reorgs come back
            # through the fork check).
            .exclude(
                state=PaymentTransaction.State.CONFIRMED,
                confirmations__gte=F("payment__required_confirmations"),
            )
            .select_related("payment")
        )
        for tx in relevant:
            observed: ObservedOutput | None
            if tx.state == PaymentTransaction.State.CONFIRMED and tx.block_height is not None:
                confirmations = max(0, tip - tx.block_height + 1)
                if tx.confirmations >= tx.payment.required_confirmations or (
                    confirmations == tx.confirmations
                ):
                    continue
                observed = ObservedOutput(
                    chain=tx.chain, txid=tx.txid, kind=tx.kind, output_index=tx.output_index,
                    amount=tx.amount, confirmations=confirmations, block_hash=tx.block_hash,
                    block_height=tx.block_height, mined_at=tx.mined_at, replaceable=tx.replaceable,
                )  # fmt: skip
            else:
                observed = self.recount(tx, tip)
                losing = observed is None or observed.confirmations < tx.confirmations
                if losing and not self._answering_node_on_our_chain():
                    # A failover node that switched in mid-poll and lacks our blocks cannot
                    # take confirmations away; the next poll asks again.
                    continue
            if observed is None:
                if payment_transaction_drop(
                    transaction_id=tx.pk, reason="no longer in chain or mempool"
                ):
                    dropped += 1
                continue
            observations.append((tx.payment_id, observed))
        # Each payment is re-evaluated once for all its transactions.
        for start in range(0, len(observations), RECOUNT_BATCH):
            payment_transactions_apply(observations=observations[start : start + RECOUNT_BATCH])
        return dropped

    def record(self, payment: Payment, output: ObservedOutput) -> int:
        """Note an output paying ``payment``; it is written with the rest of its block (or of
        the mempool scan) by ``_write_found``, which counts it. Returns 0."""
        self._found.append((payment.pk, output))
        return 0

    def record_unmatched(
        self, payment: Payment, output: ObservedOutput, *, currency: str, to_address: str
    ) -> int:
        """Note a transfer of another asset to ``payment``'s address (see ``record``)."""
        self._found_unmatched.append((payment, output, currency, to_address))
        return 0


def block_time(timestamp: int) -> datetime:
    return datetime.fromtimestamp(int(timestamp), tz=UTC)


def watcher_for(chain: ChainConfig) -> Watcher:
    from payments.chains.evm import EvmWatcher
    from payments.chains.utxo import UtxoWatcher

    return UtxoWatcher(chain) if chain.kind == "utxo" else EvmWatcher(chain)


def chain_watch(*, chain_name: str) -> PollResult | None:
    """One poll of one chain; None when another runner holds it."""
    chain = chains()[chain_name]
    with chain_lock(chain_name) as acquired:
        if not acquired:
            return None
        result = watcher_for(chain).poll()
    if result.recorded or result.dropped or result.reorged_from is not None:
        logger.info(
            "%s: blocks %d..%d of %d via %s, %d recorded, %d dropped%s",
            chain_name, result.from_height, result.to_height, result.tip, result.node,
            result.recorded, result.dropped,
            f", reorg after {result.reorged_from}" if result.reorged_from is not None else "",
        )  # fmt: skip
    return result


def chains_watch_all() -> dict[str, int | None]:
    """Poll every configured chain once; returns each chain's lag (None when skipped or failed)."""
    lags: dict[str, int | None] = {}
    for name in chains():
        try:
            result = chain_watch(chain_name=name)
        except Exception:
            logger.exception("%s: watch failed; the next poll resumes from the cursor", name)
            lags[name] = None
            continue
        lags[name] = None if result is None else result.lag
    return lags
