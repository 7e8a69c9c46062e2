"""Chain watchers: follow a node from a stored cursor, record payments, confirmations and reorgs.

How it runs: Celery beat starts ``chains_watch`` every CHAIN_POLL_INTERVAL; each run polls every
configured chain once and returns. A database advisory lock per chain keeps two runs (two workers,
or a slow run and the next tick) from watching the same chain at once. We chose short scheduled
polls over a long-running watcher process because all state lives in the database (the cursor,
recent block hashes, recorded transactions): any worker can take over after a crash, there is no
extra process to supervise, and a run is bounded (at most MAX_BLOCKS_PER_POLL blocks). For a
foreground view, ``manage.py watch_chain <chain>`` runs the same poll in a loop.

Each poll, per chain:
1. Reorg check: the stored hash at the cursor (and below, through ``ChainBlock``) is compared with
   the node's; on a mismatch the cursor walks back to the fork point and every transaction recorded
   in the abandoned blocks loses its block (it will be found again in the new chain or the mempool,
   or it is dropped).
2. New blocks from the cursor to the tip: outputs (UTXO) or native transfers and ERC-20 ``Transfer``
   logs (EVM) paying a watched deposit address are recorded once (unique on chain, txid, kind,
   index) with the block's time, so a payment found late is judged by when it was mined.
3. Mempool (UTXO): unconfirmed outputs, with their RBF flag.
4. Every recorded, still-relevant transaction gets its confirmations re-counted; one that vanished
   from chain and mempool is dropped.
Node calls go through a failover pool: a breaker per node, the next node on failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import connection
from django.db.models import F

from payments.chains.config import ChainConfig, chains
from payments.chains.rpc import NodeClient
from payments.models import ChainBlock, ChainCursor, Payment, PaymentTransaction
from payments.services import ObservedOutput, payment_apply_transaction, payment_transaction_drop
from resilience import clock

logger = logging.getLogger(__name__)

MAX_BLOCKS_PER_POLL = 200


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
    notes: list[str] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return max(0, self.tip - self.to_height)


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

    # --- to implement per chain kind --------------------------------------------------------

    def tip(self) -> int:
        raise NotImplementedError

    def block_hash(self, height: int) -> str | None:
        raise NotImplementedError

    def scan_block(
        self, height: int, watched: dict[tuple[str, str], Payment]
    ) -> tuple[str, str, int]:
        """Record what pays ``watched`` in block ``height``; returns (hash, parent hash, count)."""
        raise NotImplementedError

    def scan_mempool(self, watched: dict[tuple[str, str], Payment], tip: int) -> int:
        return 0

    def recount(self, tx: PaymentTransaction, tip: int) -> ObservedOutput | None:
        """The transaction as the node sees it now, or None when it is gone."""
        raise NotImplementedError

    def address_key(self, address: str) -> str:
        return address

    # --- the poll ---------------------------------------------------------------------------

    def watched(self) -> dict[tuple[str, str], Payment]:
        """(currency, address) of payments still within their monitoring window."""
        payments = (
            Payment.objects.filter(
                crypto_currency__in=self.chain.currencies, monitoring_until__gte=clock.now()
            )
            .exclude(deposit_address__startswith="dev")
            .only("pk", "crypto_currency", "deposit_address")
        )
        return {(p.crypto_currency, self.address_key(p.deposit_address)): p for p in payments}

    def poll(self) -> PollResult:
        cursor, _ = ChainCursor.objects.get_or_create(chain=self.chain.name)
        tip = self.tip()
        if cursor.height < 0:
            # First run: start at the tip; payments are created after the watcher is set up.
            cursor.height = max(-1, tip - 1)
            cursor.block_hash = self.block_hash(cursor.height) or "" if cursor.height >= 0 else ""
        result = PollResult(
            chain=self.chain.name, from_height=cursor.height, to_height=cursor.height, tip=tip
        )
        fork = self._find_fork(cursor)
        if fork is not None:
            result.reorged_from = fork
            self._rewind(cursor, fork)
        watched = self.watched()
        last = min(tip, cursor.height + MAX_BLOCKS_PER_POLL)
        for height in range(cursor.height + 1, last + 1):
            block_hash, parent_hash, count = self.scan_block(
                height, watched, tip=tip, parent=cursor.block_hash
            )
            if count is None:
                # The chain changed under us mid-poll: stop; the next poll finds the fork.
                result.notes.append(f"parent mismatch at {height}")
                break
            ChainBlock.objects.update_or_create(
                chain=self.chain.name,
                height=height,
                defaults={"block_hash": block_hash, "parent_hash": parent_hash},
            )
            cursor.height, cursor.block_hash = height, block_hash
            result.recorded += count
        result.to_height = cursor.height
        result.recorded += self.scan_mempool(watched, tip)
        result.dropped = self._recount_all(tip)
        cursor.tip_height = tip
        cursor.node = self.client.node
        cursor.polled_at = clock.now()
        cursor.save()
        ChainBlock.objects.filter(
            chain=self.chain.name, height__lt=cursor.height - self.chain.reorg_depth
        ).delete()
        result.node = cursor.node
        return result

    def _find_fork(self, cursor: ChainCursor) -> int | None:
        """Height of the last block we processed that is still on the node's chain, if ours diverged."""
        if cursor.height < 0 or not cursor.block_hash:
            return None
        if self.block_hash(cursor.height) == cursor.block_hash:
            return None
        known = {
            b.height: b.block_hash
            for b in ChainBlock.objects.filter(
                chain=self.chain.name, height__gte=cursor.height - self.chain.reorg_depth
            )
        }
        height = cursor.height - 1
        while height >= cursor.height - self.chain.reorg_depth and height >= 0:
            if height in known and self.block_hash(height) == known[height]:
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
        for tx in orphaned:
            # Until found again (new chain or mempool) it has no confirmations.
            payment_apply_transaction(
                payment=tx.payment,
                output=ObservedOutput(
                    chain=tx.chain, txid=tx.txid, kind=tx.kind, output_index=tx.output_index,
                    amount=tx.amount, confirmations=0, replaceable=tx.replaceable,
                ),
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
            if observed is None:
                if payment_transaction_drop(
                    transaction_id=tx.pk, reason="no longer in chain or mempool"
                ):
                    dropped += 1
                continue
            payment_apply_transaction(payment=tx.payment, output=observed)
        return dropped

    def record(self, payment: Payment, output: ObservedOutput) -> int:
        return int(payment_apply_transaction(payment=payment, output=output))


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
