"""How fast the EVM chain watcher keeps up, and how long a mined payment waits for its status.

    .venv/bin/python bench/chain_watch.py [--payments 1000] [--blocks 10] [--per-block 100]
                                          [--latency-samples 50] [--confirmations 2]

Runs the real watcher (``payments.chains.watch.chain_watch``) against an anvil node started for the
run (automine off, killed at the end) and PostgreSQL + Redis (DATABASE_URL / REDIS_URL, defaulting
to the test services) in a scratch database ``cryptopay_chainwatch_<pid>`` that is dropped at the
end, with Redis keys under a per-run prefix that are deleted at the end. Quotes come from the
static rates; addresses are derived from a random BIP44 account xpub.

1. Catch-up throughput. ``--payments`` open ETH payments; ``--blocks`` blocks of ``--per-block``
   transfers each (every transfer pays a distinct payment, sent with eth_sendTransaction from
   anvil's funded accounts with explicit nonces, then one ``anvil_mine``; every block is checked to
   hold all of them). The watcher then polls until its cursor reaches the tip: blocks/s and
   transfers recorded/s, with a breakdown (block scanning vs re-counting recorded transactions,
   node calls by method, SQL queries). Baseline in the same run: the node calls alone that the
   same blocks need (``eth_getBlockByNumber`` full + a receipt per matching transaction), over a
   keep-alive httpx client and over one connection per call (what ``payments/chains/rpc.py``
   does).
2. Mined-to-status latency. For ``--latency-samples`` payments, one at a time: send one transfer,
   ``anvil_mine`` one block, note the time right after it returns, then call ``chain_watch`` in a
   tight loop until the payment is ``processing``. Part 1's payments are aged out of their
   monitoring window first (``monitoring_until`` moved to the past), so this measures a watcher
   with only these payments in view. Production polls every CHAIN_POLL_INTERVAL (5 s by
   default): a real payment also waits for the next tick, up to one interval; the per-poll cost
   with nothing new is printed so the total can be worked out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CHAIN = "ethereum"
TRANSFER_GAS = 21_000


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def setup_django(
    database_url: str, redis_url: str, redis_prefix: str, anvil_url: str, confirmations: int
) -> None:
    chains = {
        CHAIN: {
            "kind": "evm",
            "currency": "ETH",
            "confirmations": confirmations,
            "nodes": [anvil_url],
        }
    }
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "cryptopay.settings",
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "SECURE_SSL_REDIRECT": "0",
            "LOG_LEVEL": "WARNING",
            "CACHE_KEY_PREFIX": redis_prefix,
            "CRYPTOPAY_BREAKER_KEY_PREFIX": f"{redis_prefix}:breaker",
            "CRYPTOPAY_IDEMPOTENCY_REDIS_PREFIX": f"{redis_prefix}:idempotency",
            "CRYPTOPAY_CHAINS": json.dumps(chains),
            # Priced from the static rates, as in the tests: no exchange is asked.
            "CRYPTOPAY_RATE_PROVIDERS": "",
            "CRYPTOPAY_RATES_ALLOW_STATIC_FALLBACK": "1",
            # Real derived addresses only: a dev-chain address would be skipped by the watcher.
            "CRYPTOPAY_DEV_CHAIN": "0",
        }
    )
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "x" * 40)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    # 1,000 unpaid addresses in a row is the point of the bench, not a wallet problem.
    logging.getLogger("payments.addresses").setLevel(logging.ERROR)


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

        def scan_block(watcher: Any, height: int, watched: dict) -> Any:
            start = time.perf_counter()
            try:
                return original_scan(watcher, height, watched)
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
        EvmWatcher.scan_block = scan_block
        Watcher._recount_all = recount_all
        try:
            with connection.execute_wrapper(count_query):
                yield self
        finally:
            rpc.json_rpc = original_rpc
            EvmWatcher.scan_block = original_scan
            Watcher._recount_all = original_recount

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


def baseline(
    url: str, heights: list[int], watched: set[str], *, keep_alive: bool
) -> tuple[float, int]:
    """Seconds for the node calls alone: each block in full, a receipt per transaction paying a
    watched address. ``keep_alive`` False: a new connection per call, as ``httpx.post`` makes."""
    import httpx

    client = httpx.Client(timeout=30.0) if keep_alive else None

    def call(method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        response = client.post(url, json=body) if client else httpx.post(url, json=body)
        return json.loads(response.text, parse_float=Decimal)["result"]

    matched = 0
    start = time.perf_counter()
    for height in heights:
        block = call("eth_getBlockByNumber", hex(height), True)
        for tx in block["transactions"]:
            if (tx.get("to") or "").lower() in watched and int(tx["value"], 16) > 0:
                receipt = call("eth_getTransactionReceipt", tx["hash"])
                matched += receipt is not None
    elapsed = time.perf_counter() - start
    if client:
        client.close()
    return elapsed, matched


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

    from payments.models import MerchantWallet, Payment, PaymentTransaction
    from payments.services import merchant_create
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

        # --- 1. catch-up throughput --------------------------------------------------------
        start = time.perf_counter()
        payments = create_payments(merchant, total, "bench")
        created_in = time.perf_counter() - start
        assert len({p.deposit_address for p in payments}) == total
        poll()  # first poll: the cursor starts at the tip
        idle_open = idle_poll_ms(args.idle_polls)

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

        polls: list[tuple[float, Any]] = []
        with probe.active():
            start = time.perf_counter()
            while True:
                poll_start = time.perf_counter()
                result = poll()
                polls.append((time.perf_counter() - poll_start, result))
                if result.to_height >= tip:
                    break
            catch_up = time.perf_counter() - start
            catch_up_rpc, catch_up_queries = Counter(probe.rpc), probe.queries
            scan_s, recount_s = probe.scan_seconds, probe.recount_seconds
        recorded = sum(r.recorded for _, r in polls)
        blocks = sum(r.to_height - r.from_height for _, r in polls)
        stored = PaymentTransaction.objects.filter(chain=CHAIN).count()
        by_status = dict(
            Payment.objects.filter(pk__in=[p.pk for p in payments])
            .values_list("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )

        watched = {p.deposit_address.lower() for p in payments}
        base_keep, matched = baseline(anvil.url, heights, watched, keep_alive=True)
        assert matched == transfers, f"baseline found {matched} receipts, not {transfers}"
        base_new, matched = baseline(anvil.url, heights, watched, keep_alive=False)
        assert matched == transfers, f"baseline found {matched} receipts, not {transfers}"

        probe.reset()
        with probe.active():
            idle_recorded = idle_poll_ms(args.busy_idle_polls)
            busy_rpc, busy_queries = Counter(probe.rpc), probe.queries

        # --- 2. mined-to-status latency ----------------------------------------------------
        aged = Payment.objects.filter(merchant=merchant).update(
            monitoring_until=clock.now() - settings.CHAIN_POLL_INTERVAL
        )
        singles = create_payments(merchant, args.latency_samples, "latency")
        idle_clean = idle_poll_ms(args.idle_polls)
        latencies, polls_needed, found_polls = [], [], []
        for payment in singles:
            sender.pay([payment])
            sender.mine_one()
            mined = time.perf_counter()
            tries = 0
            while True:
                poll_start = time.perf_counter()
                poll()
                tries += 1
                status = Payment.objects.values_list("status", flat=True).get(pk=payment.pk)
                if status == PaymentStatus.PROCESSING:
                    done = time.perf_counter()
                    found_polls.append(done - poll_start)
                    latencies.append(done - mined)
                    polls_needed.append(tries)
                    break
                if time.perf_counter() - mined > 30:
                    raise SystemExit(f"payment {payment.public_id} still {status} after 30 s")
        probe.reset()
        with probe.active():
            idle_after = idle_poll_ms(args.idle_polls)
            after_rpc, after_queries = Counter(probe.rpc), probe.queries
    finally:
        sender.close()

    # --- report ----------------------------------------------------------------------------
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms"

    def rpc_line(counter: Counter[str], per: int) -> str:
        return ", ".join(f"{m} {n / per:g}" for m, n in counter.most_common())

    ordered = sorted(latencies)
    print(
        f"EVM chain watcher on anvil ({args.confirmations} confirmations), PostgreSQL + Redis, "
        "one process"
    )
    print(
        f"setup: {total} ETH payments created in {created_in:.1f} s; {args.blocks} blocks x "
        f"{args.per_block} transfers produced in {produced_in:.1f} s (each block checked to hold "
        "all its transfers)"
    )
    print()
    print(f"1. catch-up: {blocks} blocks, {transfers} transfers to {total} open payments")
    print(
        f"  watcher        {catch_up:7.2f} s in {len(polls)} poll(s): "
        f"{blocks / catch_up:8.1f} blocks/s  {recorded / catch_up:8.1f} transfers recorded/s"
    )
    print(
        f"    scanning blocks      {scan_s:7.2f} s  ({blocks / scan_s:.1f} blocks/s, "
        f"{ms(scan_s / blocks)} per block, {ms(scan_s / max(1, recorded))} per transfer)"
    )
    print(
        f"    re-counting recorded {recount_s:7.2f} s  ({stored} transactions: "
        f"{ms(recount_s / max(1, stored))} each)"
    )
    print(f"    rest of the poll     {catch_up - scan_s - recount_s:7.2f} s")
    print(f"    node calls: {sum(catch_up_rpc.values())} ({rpc_line(catch_up_rpc, 1)})")
    print(
        f"    SQL queries: {catch_up_queries} ({catch_up_queries / max(1, recorded):.1f} per transfer)"
    )
    print(
        f"  baseline, node calls alone (1 block + {transfers // args.blocks} receipts per block):"
    )
    for label, seconds in (("keep-alive client", base_keep), ("new connection/call", base_new)):
        print(
            f"    {label:20} {seconds:7.2f} s: {blocks / seconds:8.1f} blocks/s  "
            f"{transfers / seconds:8.1f} transfers/s   watcher takes {catch_up / seconds:5.1f}x "
            f"(scanning alone {scan_s / seconds:4.1f}x)"
        )
    print(
        f"  result: {recorded} recorded, {stored} stored; payments by status: "
        + ", ".join(f"{s} {n}" for s, n in sorted(by_status.items()))
    )
    print()
    print(
        f"2. mined-to-processing latency: {len(latencies)} single payments, chain_watch in a "
        f"tight loop (part 1's {aged} payments aged out of the monitoring window first)"
    )
    print(
        f"  p50 {ms(statistics.median(ordered))}   p99 {ms(percentile(ordered, 0.99))}   "
        f"mean {ms(statistics.fmean(ordered))}   max {ms(ordered[-1])}"
    )
    print(
        f"  polls until seen: {Counter(polls_needed).most_common()}  (the finding poll took "
        f"{ms(statistics.median(found_polls))} at p50)"
    )
    print(
        f"  Production polls every CHAIN_POLL_INTERVAL = "
        f"{settings.CHAIN_POLL_INTERVAL.total_seconds():g} s (Celery beat): a real payment "
        "also waits up to one interval (half on average) for the next poll, on top of these "
        "figures."
    )
    print()
    print("per-poll cost, chain_watch with no new block (mean / max):")
    rows = (
        (f"{total} open payments, nothing recorded", idle_open, None, None),
        (
            f"{total} payments, {stored} recorded txs in window",
            idle_recorded,
            busy_rpc,
            busy_queries / args.busy_idle_polls,
        ),
        (f"{len(singles)} open payments, nothing recorded", idle_clean, None, None),
        (
            f"{len(singles)} payments, {len(singles)} recorded txs in window",
            idle_after,
            after_rpc,
            after_queries / args.idle_polls,
        ),
    )
    for label, (mean, worst), rpc_calls, queries in rows:
        line = f"  {label:42} {mean:9.1f} / {worst:9.1f} ms"
        if rpc_calls is not None:
            per = args.busy_idle_polls if rpc_calls is busy_rpc else args.idle_polls
            line += f"   per poll: {rpc_line(rpc_calls, per)}; {queries:g} SQL queries"
        print(line)
    print(
        "  (every transaction recorded for a payment still in its monitoring window, "
        f"{settings.PAYMENT_MONITORING_WINDOW_DEFAULT} after expiry by default, is re-counted "
        "on every poll)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=100)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--confirmations", type=int, default=2)
    parser.add_argument("--idle-polls", type=int, default=20)
    parser.add_argument("--busy-idle-polls", type=int, default=3)
    args = parser.parse_args()

    from tests.nodes import Anvil

    server_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    name = f"cryptopay_chainwatch_{os.getpid()}"
    redis_prefix = f"cryptopay-chainwatch-{os.getpid()}"
    anvil = None
    create_database(server_url, name)
    try:
        # 100 plain transfers take 2.1 M gas, far below the default 30 M block gas limit; the
        # explicit limit keeps that true whatever anvil's default becomes.
        anvil = Anvil(automine=False, extra_args=["--gas-limit", "100000000"]).start()
        setup_django(
            with_database(server_url, name), redis_url, redis_prefix, anvil.url, args.confirmations
        )
        run(anvil, args)
    finally:
        if anvil is not None:
            anvil.kill()
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        drop_database(server_url, name)
        import redis

        client = redis.Redis.from_url(redis_url)
        stale = list(client.scan_iter(match=f"{redis_prefix}*", count=1000))
        if stale:
            client.delete(*stale)


if __name__ == "__main__":
    main()
