"""How fast the EVM chain watcher keeps up, and how long a mined payment waits for its status.

    .venv/bin/python -m bench.chain_watch [--payments 1000] [--blocks 10] [--per-block 100]
        [--latency-samples 50] [--confirmations 2]

Runs the real watcher (``payments.chains.watch.chain_watch``) against an anvil node started for the
run (automine off, killed at the end) and PostgreSQL + Redis (DATABASE_URL / REDIS_URL, defaulting
to the test services) in a scratch database ``cryptopay_chainwatch_<pid>`` that is dropped at the
end, with Redis keys under a per-run prefix that are deleted at the end. Quotes come from the
static rates; addresses are derived from a random BIP44 account xpub.

1. Catch-up throughput. ``--payments`` open ETH payments; ``--blocks`` blocks of ``--per-block``
   transfers each (every transfer pays a distinct payment; sent in one JSON-RPC batch of
   eth_sendTransaction from anvil's ten funded accounts with explicit nonces, then one
   ``anvil_mine``; every block is checked to hold all of them). The watcher then polls until its
   cursor reaches the tip: blocks/s and transfers recorded/s, with a breakdown (block scanning vs
   re-counting recorded transactions, node calls by method, SQL queries). Baseline in the same
   run: the node calls alone that the same blocks need (``eth_getBlockByNumber`` full + a receipt
   per matching transaction) over one kept httpx client, as ``payments/chains/rpc.py`` uses;
   and the fewest node calls they need (each block in full + one ``eth_getBlockReceipts``).
   SQL queries and this process's CPU time per transfer are printed too: unlike the rates, they
   hardly depend on what else the machine is running.
2. Mined-to-status latency. For ``--latency-samples`` payments, one at a time: send one transfer,
   ``anvil_mine`` one block, note the time right after it returns, then call ``chain_watch`` in a
   tight loop until the payment is ``processing`` (and, from its event, when the status change
   was written). Part 1's payments are moved out of their monitoring window first, and each
   sample's payment after it is measured, so every sample meets the same watcher. Production
   polls every CHAIN_POLL_INTERVAL (5 s by default): a real payment also waits for the next
   tick, up to one interval.

Then the per-poll cost of ``chain_watch`` with nothing new: with part 1's open payments, with part
1's recorded transactions in their window, with part 2's open payments, and with part 2's recorded
transactions back in their window. Last, a ``RESULT {json}`` line for bench/report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from bench.results import emit, figure
from testing.scratch import scratch_environment

CHAIN = "ethereum"
TRANSFER_GAS = 21_000


def chain_settings(anvil_url: str, confirmations: int) -> dict[str, str]:
    chains = {
        CHAIN: {
            "kind": "evm",
            "currency": "ETH",
            "confirmations": confirmations,
            "nodes": [anvil_url],
        }
    }
    return {
        "CRYPTOPAY_CHAINS": json.dumps(chains),
        # Real derived addresses only: a dev-chain address would be skipped by the watcher.
        "CRYPTOPAY_DEV_CHAIN": "0",
    }


def quiet_logs() -> None:
    # 1,000 unpaid addresses in a row is the point of the bench, not a wallet problem.
    logging.getLogger("payments.addresses").setLevel(logging.ERROR)
    for name in ("resilience.breaker", "notifications.queues"):
        logging.getLogger(name).addFilter(REDIS_TROUBLE)


class RedisTrouble(logging.Filter):
    """Counts (and silences) warnings that Redis was unreachable (another process restarting
    it): breakers fall back to local state and notification ids stay in the outbox, which
    changes what a poll costs."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "unavailable" in message or "not queued" in message:
            self.count += 1
            return False
        return True


REDIS_TROUBLE = RedisTrouble()


# --- figures -------------------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Probe:
    """While active: node calls by method, SQL queries, and time spent scanning blocks and
    re-counting recorded transactions, through thin wrappers (a clock read per call)."""

    def __init__(self) -> None:
        self.rpc: Counter[str] = Counter()
        self.queries = 0
        self.scan_seconds = 0.0
        self.recount_seconds = 0.0

    def reset(self) -> None:
        self.rpc.clear()
        self.queries = 0
        self.scan_seconds = self.recount_seconds = 0.0

    @contextlib.contextmanager
    def active(self) -> Iterator[Probe]:
        from django.db import connection

        from payments.chains import rpc
        from payments.chains.evm import EvmWatcher
        from payments.chains.watch import Watcher

        original_rpc = rpc.json_rpc
        original_scan = EvmWatcher.scan_block
        original_recount = Watcher._recount_all

        def json_rpc(url: str, method: str, params: list[Any], *, timeout: float) -> Any:
            self.rpc[method] += 1
            return original_rpc(url, method, params, timeout=timeout)

        def scan_block(watcher: Any, height: int, watched: dict, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original_scan(watcher, height, watched, **kwargs)
            finally:
                self.scan_seconds += time.perf_counter() - start

        def recount_all(watcher: Any, tip: int) -> int:
            start = time.perf_counter()
            try:
                return original_recount(watcher, tip)
            finally:
                self.recount_seconds += time.perf_counter() - start

        def count_query(execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
            self.queries += 1
            return execute(sql, params, many, context)

        rpc.json_rpc = json_rpc
        # Timing wrappers around two of the watcher's own methods, put back below.
        EvmWatcher.scan_block = scan_block  # type: ignore[method-assign,assignment]
        Watcher._recount_all = recount_all  # type: ignore[method-assign,assignment]
        try:
            with connection.execute_wrapper(count_query):
                yield self
        finally:
            rpc.json_rpc = original_rpc
            EvmWatcher.scan_block = original_scan  # type: ignore[method-assign]
            Watcher._recount_all = original_recount  # type: ignore[method-assign]

    def rpc_summary(self) -> str:
        return ", ".join(f"{method} {count}" for method, count in self.rpc.most_common())


# --- the node ------------------------------------------------------------------------------


class Sender:
    """eth_sendTransaction from anvil's unlocked accounts with locally tracked nonces, in one
    JSON-RPC batch per block."""

    def __init__(self, anvil: Any) -> None:
        import httpx

        self.url = anvil.url
        self.http = httpx.Client(timeout=30.0)
        self.accounts: list[str] = self.call("eth_accounts")
        self.nonces = {
            account: int(self.call("eth_getTransactionCount", account, "pending"), 16)
            for account in self.accounts
        }

    def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        reply = self.http.post(self.url, json=body).json()
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        replies = sorted(self.http.post(self.url, json=body).json(), key=lambda r: r["id"])
        errors = [r["error"] for r in replies if r.get("error")]
        if errors:
            raise RuntimeError(f"batch: {len(errors)} errors, first {errors[0]}")
        return [r["result"] for r in replies]

    def pay(self, payments: list[Any]) -> list[str]:
        """One transfer of exactly ``crypto_amount`` to each payment, senders taken in turn."""
        calls = []
        for i, payment in enumerate(payments):
            sender = self.accounts[i % len(self.accounts)]
            tx = {
                "from": sender,
                "to": payment.deposit_address,
                "value": hex(int(payment.crypto_amount)),
                "nonce": hex(self.nonces[sender]),
                "gas": hex(TRANSFER_GAS),
            }
            self.nonces[sender] += 1
            calls.append(("eth_sendTransaction", [tx]))
        return self.batch(calls)

    def mine_one(self) -> None:
        self.call("anvil_mine", "0x1")

    def tip(self) -> int:
        return int(self.call("eth_blockNumber"), 16)

    def block_tx_count(self, height: int) -> int:
        return int(self.call("eth_getBlockTransactionCountByNumber", hex(height)), 16)

    def close(self) -> None:
        self.http.close()


def baseline(url: str, heights: list[int], watched: set[str]) -> tuple[float, int]:
    """Seconds for the node calls alone, over one keep-alive client: each block in full, a
    receipt per transaction paying a watched address. Returns (seconds, receipts)."""
    import httpx

    with httpx.Client(timeout=30.0) as client:

        def call(method: str, *params: Any) -> Any:
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
            return json.loads(client.post(url, json=body).text, parse_float=Decimal)["result"]

        matched = 0
        start = time.perf_counter()
        for height in heights:
            block = call("eth_getBlockByNumber", hex(height), True)
            for tx in block["transactions"]:
                if (tx.get("to") or "").lower() in watched and int(tx["value"], 16) > 0:
                    matched += call("eth_getTransactionReceipt", tx["hash"]) is not None
        return time.perf_counter() - start, matched


def baseline_block_receipts(url: str, heights: list[int]) -> float:
    """Seconds for the fewest node calls the same blocks need: each block in full and all its
    receipts in one ``eth_getBlockReceipts`` (what the watcher asks a node that has it)."""
    import httpx

    with httpx.Client(timeout=30.0) as client:

        def call(method: str, *params: Any) -> Any:
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
            return json.loads(client.post(url, json=body).text, parse_float=Decimal)["result"]

        start = time.perf_counter()
        for height in heights:
            block = call("eth_getBlockByNumber", hex(height), True)
            call("eth_getBlockReceipts", block["hash"])
        return time.perf_counter() - start


def node_call_ms(url: str, calls: int = 50) -> float:
    """Mean ms of one small call (eth_blockNumber) over a kept client."""
    import httpx

    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    with httpx.Client(timeout=30.0) as client:
        client.post(url, json=body)
        start = time.perf_counter()
        for _ in range(calls):
            client.post(url, json=body)
        return (time.perf_counter() - start) / calls * 1000


# --- the bench -----------------------------------------------------------------------------


def random_eth_account_xpub() -> str:
    from bip_utils import Bip44, Bip44Coins

    account = Bip44.FromSeed(os.urandom(64), Bip44Coins.ETHEREUM).Purpose().Coin().Account(0)
    return account.PublicKey().ToExtended()


def poll() -> Any:
    from payments.chains.watch import chain_watch

    result = chain_watch(chain_name=CHAIN)
    assert result is not None, "another runner holds the chain lock"
    return result


def idle_poll_ms(polls: int) -> tuple[float, float]:
    """Mean and max ms of ``chain_watch`` with no new block."""
    samples = []
    for _ in range(polls):
        start = time.perf_counter()
        result = poll()
        samples.append(time.perf_counter() - start)
        assert result.recorded == 0 and result.from_height == result.to_height
    return statistics.fmean(samples) * 1000, max(samples) * 1000


def create_payments(merchant: Any, count: int, prefix: str) -> list[Any]:
    from payments.services import payment_create

    return [
        payment_create(
            merchant=merchant,
            fiat_amount=Decimal("10.00"),
            fiat_currency="USD",
            crypto_currency="ETH",
            order_id=f"{prefix}-{i}",
        )
        for i in range(count)
    ]


def run(anvil: Any, args: argparse.Namespace) -> None:
    from django.conf import settings
    from django.db.models import Count

    from accounts.services import merchant_create
    from payments.models import MerchantWallet, Payment, PaymentEvent, PaymentTransaction
    from payments.states import PaymentStatus
    from resilience import clock

    probe = Probe()
    sender = Sender(anvil)
    try:
        merchant = merchant_create(name="bench")
        MerchantWallet.objects.create(
            merchant=merchant, crypto_currency="ETH", extended_public_key=random_eth_account_xpub()
        )
        transfers = args.blocks * args.per_block
        total = max(args.payments, transfers)
        past = clock.now() - settings.CHAIN_POLL_INTERVAL

        # --- 1. catch-up throughput --------------------------------------------------------
        start = time.perf_counter()
        payments = create_payments(merchant, total, "bench")
        created_in = time.perf_counter() - start
        assert len({p.deposit_address for p in payments}) == total
        poll()  # first poll: the cursor starts at the tip
        idle_open = idle_poll_ms(args.idle_polls)
        call_ms = node_call_ms(anvil.url)

        heights = []
        start = time.perf_counter()
        for b in range(args.blocks):
            batch = payments[b * args.per_block : (b + 1) * args.per_block]
            sender.pay(batch)
            sender.mine_one()
            height = sender.tip()
            count = sender.block_tx_count(height)
            if count != len(batch):
                raise SystemExit(f"block {height} holds {count} transactions, not {len(batch)}")
            heights.append(height)
        produced_in = time.perf_counter() - start
        tip = heights[-1]

        polls: list[Any] = []
        with probe.active():
            start, cpu_start = time.perf_counter(), time.process_time()
            while True:
                result = poll()
                polls.append(result)
                if result.to_height >= tip:
                    break
            catch_up = time.perf_counter() - start
            catch_up_cpu = time.process_time() - cpu_start
            catch_up_rpc, catch_up_queries = Counter(probe.rpc), probe.queries
            scan_s, recount_s = probe.scan_seconds, probe.recount_seconds
        recorded = sum(r.recorded for r in polls)
        blocks = sum(r.to_height - r.from_height for r in polls)
        stored = PaymentTransaction.objects.filter(chain=CHAIN).count()
        by_status = dict(
            Payment.objects.filter(merchant=merchant)
            .values("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        watched = {p.deposit_address.lower() for p in payments}
        base_s, matched = baseline(anvil.url, heights, watched)
        assert matched == transfers, f"baseline found {matched} receipts, not {transfers}"
        block_receipts_s = baseline_block_receipts(anvil.url, heights)

        probe.reset()
        with probe.active():
            idle_busy = idle_poll_ms(args.idle_polls)
            busy_rpc, busy_queries = Counter(probe.rpc), probe.queries

        # --- 2. mined-to-status latency ----------------------------------------------------
        aged = Payment.objects.filter(merchant=merchant).update(monitoring_until=past)
        singles = create_payments(merchant, args.latency_samples, "latency")
        idle_clean = idle_poll_ms(args.idle_polls)
        latencies, committed, polls_needed = [], [], []
        for payment in singles:
            sender.pay([payment])
            sender.mine_one()
            mined, mined_wall = time.perf_counter(), time.time()
            tries = 0
            while True:
                poll()
                tries += 1
                status = Payment.objects.values_list("status", flat=True).get(pk=payment.pk)
                if status == PaymentStatus.PROCESSING:
                    latencies.append(time.perf_counter() - mined)
                    break
                if time.perf_counter() - mined > 30:
                    raise SystemExit(f"payment {payment.public_id} still {status} after 30 s")
            polls_needed.append(tries)
            changed = PaymentEvent.objects.filter(
                payment=payment,
                type=PaymentEvent.Type.STATUS_CHANGED,
                data__to__status=PaymentStatus.PROCESSING,
            ).values_list("created_at", flat=True)
            committed.append(changed.get().timestamp() - mined_wall)
            # Out of view, so every sample meets the same watcher (see the report).
            Payment.objects.filter(pk=payment.pk).update(monitoring_until=past)

        # The same payments back in their window: what N recorded txs cost a poll.
        Payment.objects.filter(pk__in=[p.pk for p in singles]).update(
            monitoring_until=clock.now() + settings.PAYMENT_MONITORING_WINDOW_DEFAULT
        )
        poll()  # brings their confirmations up to date (writes); the measured polls do not
        probe.reset()
        with probe.active():
            idle_recorded = idle_poll_ms(args.idle_polls)
            recorded_rpc, recorded_queries = Counter(probe.rpc), probe.queries
    finally:
        sender.close()

    report(
        args=args,
        settings=settings,
        total=total,
        transfers=transfers,
        created_in=created_in,
        produced_in=produced_in,
        call_ms=call_ms,
        polls=polls,
        blocks=blocks,
        recorded=recorded,
        stored=stored,
        by_status=by_status,
        catch_up=catch_up,
        catch_up_cpu=catch_up_cpu,
        block_receipts_s=block_receipts_s,
        scan_s=scan_s,
        recount_s=recount_s,
        catch_up_rpc=catch_up_rpc,
        catch_up_queries=catch_up_queries,
        base_s=base_s,
        idle_busy=idle_busy,
        busy_rpc=busy_rpc,
        busy_queries=busy_queries,
        aged=aged,
        latencies=latencies,
        committed=committed,
        polls_needed=polls_needed,
        idle_open=idle_open,
        idle_clean=idle_clean,
        idle_recorded=idle_recorded,
        recorded_rpc=recorded_rpc,
        recorded_queries=recorded_queries,
    )


def report(**f: Any) -> None:
    args, settings = f["args"], f["settings"]
    blocks, recorded, stored, catch_up = f["blocks"], f["recorded"], f["stored"], f["catch_up"]
    scan_s, recount_s, base_s = f["scan_s"], f["recount_s"], f["base_s"]
    n = len(f["latencies"])
    interval = settings.CHAIN_POLL_INTERVAL.total_seconds()

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms"

    def spread(samples: list[float]) -> str:
        ordered = sorted(samples)
        return (
            f"p50 {ms(statistics.median(ordered)):>9}   p99 {ms(percentile(ordered, 0.99)):>9}   "
            f"mean {ms(statistics.fmean(ordered)):>9}   max {ms(ordered[-1]):>9}"
        )

    def per_poll(counter: Counter[str], polls: int) -> str:
        return ", ".join(f"{m} {c / polls:g}" for m, c in counter.most_common()) or "none"

    rpc_total = sum(f["catch_up_rpc"].values())
    print(
        f"EVM chain watcher on anvil, confirmations {args.confirmations}, PostgreSQL + Redis, "
        "one process"
    )
    print(
        f"setup: {f['total']} ETH payments created in {f['created_in']:.1f} s; {args.blocks} "
        f"blocks x {args.per_block} transfers produced in {f['produced_in']:.1f} s (every block "
        f"checked to hold all its transfers); one node call ~{f['call_ms']:.2f} ms"
    )
    print()
    print(
        f"1. catch-up: {blocks} blocks, {f['transfers']} transfers paying {f['transfers']} of "
        f"{f['total']} open payments"
    )
    print(
        f"  watcher            {catch_up:7.2f} s in {len(f['polls'])} poll(s): "
        f"{blocks / catch_up:7.2f} blocks/s  {recorded / catch_up:7.1f} transfers recorded/s"
    )
    print(
        f"    scanning blocks  {scan_s:7.2f} s: {blocks / scan_s:7.2f} blocks/s, "
        f"{ms(scan_s / blocks)} per block, {ms(scan_s / max(1, recorded))} per transfer"
    )
    print(f"    re-counting      {recount_s:7.2f} s: the {stored} transactions just recorded")
    print(f"    rest             {catch_up - scan_s - recount_s:7.2f} s")
    print(
        f"    node calls {rpc_total} ({per_poll(f['catch_up_rpc'], 1)}); SQL queries "
        f"{f['catch_up_queries']} ({f['catch_up_queries'] / max(1, recorded):.1f} per transfer)"
    )
    cpu = f["catch_up_cpu"]
    print(
        f"    CPU time of this process {cpu:.2f} s: {ms(cpu / max(1, recorded))} per transfer "
        "(load-independent, unlike the wall times; the database's and the node's CPU not included)"
    )
    print(
        f"  baseline           {base_s:7.2f} s: {blocks / base_s:7.2f} blocks/s  "
        f"{f['transfers'] / base_s:7.1f} transfers/s  (node calls alone: each block in full + "
        "a receipt per transfer, kept client)"
    )
    receipts_s = f["block_receipts_s"]
    print(
        f"  fewest node calls  {receipts_s:7.2f} s: {blocks / receipts_s:7.2f} blocks/s  "
        f"{f['transfers'] / receipts_s:7.1f} transfers/s  (each block in full + "
        "eth_getBlockReceipts)"
    )
    print(
        f"  watcher throughput / baseline's: {base_s / catch_up:.2f}x overall, "
        f"{base_s / scan_s:.2f}x for the scanning alone; / fewest node calls': "
        f"{receipts_s / catch_up:.2f}x"
    )
    print(
        f"  outcome: {recorded} recorded, {stored} stored; payments by status: "
        + ", ".join(f"{s} {c}" for s, c in sorted(f["by_status"].items()))
    )
    print()
    print(
        f"2. mined-to-processing latency, {n} single payments, chain_watch called in a tight "
        "loop right after anvil_mine returns"
    )
    print(f"  status seen by the poller   {spread(f['latencies'])}")
    print(f"  status change committed     {spread(f['committed'])}  (its event's time)")
    print(f"  polls until seen: {dict(sorted(Counter(f['polls_needed']).items()))}")
    print(
        f"  (part 1's {f['aged']} payments were moved out of their monitoring window first, and "
        "each sample's payment after it was measured: every sample met a watcher with "
        f"{n} open payments and no other recorded transaction)"
    )
    print(
        f"  PRODUCTION: the watcher runs every CHAIN_POLL_INTERVAL = {interval:g} s (Celery "
        f"beat), not in a tight loop: add up to {interval:g} s ({interval / 2:g} s on average) "
        "of waiting for the next poll to these figures."
    )
    print()
    print(
        f"per-poll cost of chain_watch with no new block (mean / max of {args.idle_polls} polls):"
    )
    rows = [
        (f"{f['total']} open payments, 0 recorded txs", f["idle_open"], None, 0),
        (
            f"{f['total']} payments, {stored} recorded txs",
            f["idle_busy"],
            f["busy_rpc"],
            f["busy_queries"],
        ),
        (f"{n} open payments, 0 recorded txs", f["idle_clean"], None, 0),
        (
            f"{n} payments, {n} recorded txs",
            f["idle_recorded"],
            f["recorded_rpc"],
            f["recorded_queries"],
        ),
    ]
    for label, (mean, worst), calls, queries in rows:
        line = f"  {label:36} {mean:8.1f} / {worst:8.1f} ms"
        if calls is not None:
            line += (
                f"   per poll: node calls {per_poll(calls, args.idle_polls)}; "
                f"{queries / args.idle_polls:g} SQL"
            )
        print(line)
    print(
        "  (recorded: in their payment's monitoring window, "
        f"{settings.PAYMENT_EXPIRY_DEFAULT} + {settings.PAYMENT_MONITORING_WINDOW_DEFAULT} after "
        "creation by default, and past their confirmations)"
    )
    if REDIS_TROUBLE.count:
        print(
            f"CAUTION: Redis was unreachable during this run ({REDIS_TROUBLE.count} warnings "
            "silenced): some polls ran without it. Run again for representative figures."
        )

    # Baselines: the node calls alone for the catch-up; one node call for a poll that finds
    # nothing; a poll that finds nothing (same open payments) for one that finds the payment.
    node, call = "node calls alone", "one node call (eth_blockNumber)"
    idle_clean = f"idle poll, {n} open payments, 0 recorded txs: mean"
    figures = [
        figure(f"{node}: blocks/s", blocks / base_s, "1/s", baseline=None, better="higher"),
        figure(
            f"{node}: transfers/s", f["transfers"] / base_s, "1/s", baseline=None, better="higher"
        ),
        figure(
            "watcher catch-up: blocks/s",
            blocks / catch_up,
            "1/s",
            baseline=f"{node}: blocks/s",
            better="higher",
        ),
        figure(
            "watcher catch-up: transfers recorded/s",
            recorded / catch_up,
            "1/s",
            baseline=f"{node}: transfers/s",
            better="higher",
        ),
        figure(call, f["call_ms"], "ms", baseline=None),
        figure(
            "watcher catch-up: SQL per transfer",
            f["catch_up_queries"] / max(1, recorded),
            "queries",
            baseline=None,
        ),
        figure(
            "watcher catch-up: CPU ms per transfer",
            f["catch_up_cpu"] * 1000 / max(1, recorded),
            "ms",
            baseline=None,
        ),
        figure(
            f"{node}, eth_getBlockReceipts: transfers/s",
            f["transfers"] / f["block_receipts_s"],
            "1/s",
            baseline=None,
            better="higher",
        ),
    ]
    for label, (mean, _worst), _, _ in rows:
        figures.append(figure(f"idle poll, {label}: mean", mean, "ms", baseline=call))
    for name, key in (("status seen by the poller", "latencies"), ("committed", "committed")):
        ordered = sorted(f[key])
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            value = percentile(ordered, q) * 1000
            figures.append(figure(f"mined -> {name}: {label}", value, "ms", baseline=idle_clean))
    emit("chain_watch", figures, redis_unreachable=REDIS_TROUBLE.count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=100)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--confirmations", type=int, default=2)
    parser.add_argument("--idle-polls", type=int, default=20)
    args = parser.parse_args()

    from testing.nodes import Anvil

    # 100 plain transfers take 2.1 M gas, far below the default 30 M block gas limit; the
    # explicit limit keeps that true whatever anvil's default becomes.
    anvil = Anvil(automine=False, extra_args=["--gas-limit", "100000000"]).start()
    try:
        with scratch_environment("chainwatch", chain_settings(anvil.url, args.confirmations)):
            quiet_logs()
            run(anvil, args)
    finally:
        anvil.kill()


if __name__ == "__main__":
    main()
