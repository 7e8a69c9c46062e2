"""What a UTXO chain watcher poll costs with thousands of unrelated transactions in the mempool.

    .venv/bin/python -m bench.utxo_mempool [--mempool 5000] [--payments 3] [--warm-polls 5]
        [--baseline-runs 3]

Runs the real watcher (``payments.chains.watch.chain_watch``) against a Litecoin Core regtest node
started for the run (no -txindex, as merchants run it; killed at the end) and PostgreSQL + Redis
(DATABASE_URL / REDIS_URL, defaulting to the test services) in a scratch database
``cryptopay_utxomempool_<pid>`` that is dropped at the end, with Redis keys under a per-run prefix
that are deleted at the end. Quotes come from the static rates; deposit addresses are derived from
a random BIP84 account xpub.

Setup: ``--mempool`` confirmed coins are fanned out to fresh wallet addresses (``sendmany``, 1,000
outputs a transaction, one block each), then each is spent by its own one-input transaction
(createrawtransaction / signrawtransactionwithwallet / sendrawtransaction, in JSON-RPC batches),
so the mempool holds that many unrelated transactions, none chained to another. One transaction
paying one of ``--payments`` open LTC payments is sent halfway through them.

Measured, with the mempool full (node calls counted and timed by method at the HTTP level, through
httpx event hooks on the watcher's kept client ``payments.chains.rpc.http_client()``; the watcher
itself is not wrapped):

1. The first poll that meets the mempool (cold: the per-process cache of mempool transactions is
   empty). The paying transaction must be recorded by it: the payment must become ``processing``.
2. ``--warm-polls`` following polls with nothing new (warm cache): median time, node calls.
3. Baseline in the same run: what the old watcher paid every poll for the same mempool —
   ``getrawmempool true`` plus one ``getrawtransaction <txid> true`` per mempool transaction — over
   the same kept client (``payments.chains.rpc.json_rpc``); median of ``--baseline-runs``. And
   ``getrawmempool false`` alone (median of ``--warm-polls``): the node call a warm poll cannot
   avoid, the floor under it.

Last, a ``RESULT {json}`` line for bench/report.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from bench.results import emit, figure
from testing.scratch import scratch_environment

CHAIN = "litecoin"
FAN_OUT_PER_TX = 1000  # outputs per sendmany: ~31 kB, well within the 100 kvB standard limit
COIN_AMOUNT = Decimal("0.001")  # each fanned-out coin
FEE = Decimal("0.0001")  # per one-input, one-output transaction (~110 vB)
BATCH = 1000  # JSON-RPC requests per HTTP batch


def chain_settings(node_url: str) -> dict[str, str]:
    chains = {CHAIN: {"kind": "utxo", "currency": "LTC", "hrp": "rltc", "nodes": [node_url]}}
    return {
        "CRYPTOPAY_CHAINS": json.dumps(chains),
        # Real derived addresses only: a dev-chain address would be skipped by the watcher.
        "CRYPTOPAY_DEV_CHAIN": "0",
    }


# --- the node ------------------------------------------------------------------------------


class Wallet:
    """JSON-RPC to the node's funded wallet endpoint, one call or a batch per HTTP request
    (Bitcoin Core takes a JSON array of requests and answers with an array)."""

    def __init__(self, node: Any) -> None:
        import httpx

        self.url = node.wallet_url
        self.http = httpx.Client(timeout=120.0)

    @staticmethod
    def _encode(value: Any) -> Any:
        if isinstance(value, Decimal):
            return format(value, "f")  # amounts as strings, exactly
        raise TypeError(type(value).__name__)

    def _post(self, body: Any) -> Any:
        content = json.dumps(body, default=self._encode)
        reply = self.http.post(
            self.url, content=content, headers={"content-type": "application/json"}
        )
        return json.loads(reply.content, parse_float=Decimal)

    def call(self, method: str, *params: Any) -> Any:
        reply = self._post({"jsonrpc": "1.0", "id": 0, "method": method, "params": list(params)})
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def batch(self, method: str, params: list[list[Any]]) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(params), BATCH):
            chunk = params[start : start + BATCH]
            body = [
                {"jsonrpc": "1.0", "id": i, "method": method, "params": p}
                for i, p in enumerate(chunk)
            ]
            replies = sorted(self._post(body), key=lambda r: r["id"])
            errors = [r["error"] for r in replies if r.get("error")]
            if errors:
                raise RuntimeError(f"{method}: {len(errors)} errors, first {errors[0]}")
            results += [r["result"] for r in replies]
        return results

    def close(self) -> None:
        self.http.close()


def fan_out(node: Any, wallet: Wallet, count: int) -> list[tuple[str, int, str]]:
    """``count`` confirmed coins of COIN_AMOUNT at fresh addresses: (txid, vout, address).

    Each coin is locked as soon as it exists, out of the wallet's coin selection (the next
    ``sendmany``, the paying ``sendtoaddress``): it is spent by its own transaction, built with
    explicit inputs."""
    addresses = wallet.batch("getnewaddress", [["", "bech32"]] * count)
    coins = []
    for start in range(0, count, FAN_OUT_PER_TX):
        chunk = set(addresses[start : start + FAN_OUT_PER_TX])
        txid = wallet.call("sendmany", "", dict.fromkeys(sorted(chunk), COIN_AMOUNT))
        tx = wallet.call("decoderawtransaction", wallet.call("gettransaction", txid)["hex"])
        made = [
            (txid, int(vout["n"]), address)
            for vout in tx["vout"]
            if (address := vout["scriptPubKey"].get("addresses", [None])[0]) in chunk
        ]
        if len(made) != len(chunk):
            raise SystemExit(f"sendmany {txid} made {len(made)} coins, not {len(chunk)}")
        wallet.call("lockunspent", False, [{"txid": t, "vout": v} for t, v, _ in made])
        coins += made
        node.mine(1)
    return coins


def spend_each(wallet: Wallet, coins: list[tuple[str, int, str]]) -> list[str]:
    """One unconfirmed transaction per coin, paying the next coin's address: returns txids."""
    raw = wallet.batch(
        "createrawtransaction",
        [
            [[{"txid": txid, "vout": vout}], {coins[(i + 1) % len(coins)][2]: COIN_AMOUNT - FEE}]
            for i, (txid, vout, _) in enumerate(coins)
        ],
    )
    signed = wallet.batch("signrawtransactionwithwallet", [[hex_] for hex_ in raw])
    if not all(s["complete"] for s in signed):
        raise SystemExit("a transaction could not be signed")
    return wallet.batch("sendrawtransaction", [[s["hex"]] for s in signed])


# --- counting and timing -------------------------------------------------------------------


class NodeCalls:
    """Node calls by JSON-RPC method, counted and timed in httpx event hooks on the watcher's kept
    client (the watcher itself is not touched): from the request hook to the response body read
    in the response hook."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._started: dict[int, tuple[str, float]] = {}

    def install(self) -> None:
        from payments.chains.rpc import http_client

        client = http_client()
        client.event_hooks["request"].append(self.on_request)
        client.event_hooks["response"].append(self.on_response)

    def on_request(self, request: Any) -> None:
        body = json.loads(request.content)
        method = body["method"] if isinstance(body, dict) else "batch"
        self.count[method] += 1
        self._started[id(request)] = (method, time.perf_counter())

    def on_response(self, response: Any) -> None:
        response.read()
        method, start = self._started.pop(id(response.request), ("?", time.perf_counter()))
        self.seconds[method] += time.perf_counter() - start

    def take(self) -> tuple[Counter[str], defaultdict[str, float]]:
        taken = self.count, self.seconds
        self.count, self.seconds = Counter(), defaultdict(float)
        return taken


def summary(calls: Counter[str]) -> str:
    return ", ".join(f"{m} {c}" for m, c in calls.most_common()) or "none"


def poll() -> tuple[float, Any]:
    from payments.chains.watch import chain_watch

    start = time.perf_counter()
    result = chain_watch(chain_name=CHAIN)
    elapsed = time.perf_counter() - start
    assert result is not None, "another runner holds the chain lock"
    return elapsed, result


def old_poll(url: str) -> int:
    """The old watcher's mempool work for one poll: returns the transactions fetched."""
    from django.conf import settings

    from payments.chains.rpc import json_rpc

    timeout = settings.CHAIN_RPC_TIMEOUT.total_seconds()
    mempool = json_rpc(url, "getrawmempool", [True], timeout=timeout)
    for txid in mempool:
        json_rpc(url, "getrawtransaction", [txid, True], timeout=timeout)
    return len(mempool)


def mempool_list_ms(url: str, calls: int) -> float:
    """Median ms of ``getrawmempool false`` alone: the one call a warm poll cannot avoid."""
    from django.conf import settings

    from payments.chains.rpc import json_rpc

    timeout = settings.CHAIN_RPC_TIMEOUT.total_seconds()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        json_rpc(url, "getrawmempool", [False], timeout=timeout)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def node_call_ms(url: str, calls: int = 50) -> float:
    """Mean ms of one small call (getblockcount) over the kept client."""
    from payments.chains.rpc import json_rpc

    json_rpc(url, "getblockcount", [], timeout=5)
    start = time.perf_counter()
    for _ in range(calls):
        json_rpc(url, "getblockcount", [], timeout=5)
    return (time.perf_counter() - start) / calls * 1000


# --- the bench -----------------------------------------------------------------------------


def random_ltc_account_xpub() -> str:
    from bip_utils import Bip84, Bip84Coins

    account = Bip84.FromSeed(os.urandom(64), Bip84Coins.LITECOIN).Purpose().Coin().Account(0)
    return account.PublicKey().ToExtended()


def run(node: Any, args: argparse.Namespace) -> None:
    from accounts.services import merchant_create
    from payments.chains import utxo
    from payments.models import MerchantWallet, Payment, PaymentTransaction
    from payments.services import payment_create
    from payments.states import PaymentStatus

    n = args.mempool
    wallet = Wallet(node)
    try:
        merchant = merchant_create(name="bench")
        MerchantWallet.objects.create(
            merchant=merchant, crypto_currency="LTC", extended_public_key=random_ltc_account_xpub()
        )
        payments = [
            payment_create(
                merchant=merchant,
                fiat_amount=Decimal("7.00"),
                fiat_currency="USD",
                crypto_currency="LTC",
                order_id=f"bench-{i}",
            )
            for i in range(args.payments)
        ]
        paid = payments[0]

        start = time.perf_counter()
        coins = fan_out(node, wallet, n)
        fanned_in = time.perf_counter() - start
        # Unmeasured: the watcher's first poll ever reads the blocks since the payments were
        # created and puts its cursor at the tip; the mempool is empty.
        poll()
        utxo._seen.clear()

        start = time.perf_counter()
        half = n // 2
        txids = spend_each(wallet, coins[:half])
        assert paid.crypto_amount is not None  # a single-currency payment is priced
        paying_txid = node.send(paid.deposit_address, Decimal(paid.crypto_amount) / 10**8)
        txids += spend_each(wallet, coins[half:])
        sent_in = time.perf_counter() - start
        mempool_size = int(wallet.call("getmempoolinfo")["size"])
        if mempool_size != n + 1:
            raise SystemExit(f"the mempool holds {mempool_size} transactions, not {n + 1}")
        call_ms = node_call_ms(node.url)

        calls = NodeCalls()
        calls.install()
        calls.take()

        # 1. cold
        cold_s, cold = poll()
        cold_calls, cold_node = calls.take()
        status = Payment.objects.values_list("status", flat=True).get(pk=paid.pk)
        recorded = list(
            PaymentTransaction.objects.filter(payment=paid).values_list("txid", flat=True)
        )
        if status != PaymentStatus.PROCESSING or recorded != [paying_txid]:
            raise SystemExit(
                f"CHECK FAILED: after the cold poll the paid payment is {status}, recorded "
                f"{recorded} (expected processing, {paying_txid})"
            )
        if cold_calls["getrawtransaction"] != mempool_size or cold.notes:
            raise SystemExit(
                f"CHECK FAILED: the cold poll fetched {cold_calls['getrawtransaction']} of "
                f"{mempool_size} mempool transactions (notes: {cold.notes})"
            )

        # 2. warm
        warm: list[tuple[float, Counter[str], defaultdict[str, float]]] = []
        for _ in range(args.warm_polls):
            elapsed, result = poll()
            warm.append((elapsed, *calls.take()))
            assert result.recorded == 0, result
        refetched = sum(c["getrawtransaction"] for _, c, _ in warm)
        if refetched:
            raise SystemExit(f"CHECK FAILED: warm polls re-fetched {refetched} transactions")
        cached = len(utxo._seen.get(CHAIN, {}))
        if cached != mempool_size:
            raise SystemExit(f"CHECK FAILED: the cache holds {cached}, not {mempool_size}")

        # 3. baseline: the old per-poll mempool work
        base: list[float] = []
        for _ in range(args.baseline_runs):
            start = time.perf_counter()
            fetched = old_poll(node.url)
            base.append(time.perf_counter() - start)
            assert fetched == mempool_size, fetched
        base_calls, _ = calls.take()
        base_per_run = Counter({m: c // args.baseline_runs for m, c in base_calls.items()})
        list_ms = mempool_list_ms(node.url, args.warm_polls)
    finally:
        wallet.close()

    def ms(seconds: float) -> float:
        return seconds * 1000

    def timed(count: Counter[str], seconds: Mapping[str, float]) -> str:
        return ", ".join(f"{m} {c} ({ms(seconds[m]):.1f} ms)" for m, c in count.most_common())

    warm.sort(key=lambda w: w[0])
    warm_s, warm_count, warm_node = warm[len(warm) // 2]  # the median poll (odd count)
    warm_ms = ms(statistics.median(w[0] for w in warm))
    base_ms = ms(statistics.median(base))
    cold_ms = ms(cold_s)
    warm_per_poll = statistics.median(sum(c.values()) for _, c, _ in warm)
    base_total = sum(base_per_run.values())

    print(
        f"UTXO chain watcher on Litecoin Core regtest (no -txindex), {args.payments} open LTC "
        "payments, PostgreSQL + Redis, one process"
    )
    print(
        f"setup: {n} coins fanned out in {fanned_in:.1f} s; {n} unrelated one-input "
        f"transactions + 1 paying transaction sent in {sent_in:.1f} s (JSON-RPC batches); "
        f"mempool {mempool_size} transactions; one node call ~{call_ms:.2f} ms"
    )
    print()
    print(
        f"1. cold poll (empty cache): {cold_ms:.1f} ms, of which node calls "
        f"{ms(sum(cold_node.values())):.1f} ms"
    )
    print(f"   node calls {sum(cold_calls.values())}: {timed(cold_calls, cold_node)}")
    print(f"   the paying transaction was recorded: payment {paid.public_id} is {status}")
    print(
        f"2. warm polls: median {warm_ms:.1f} ms of {len(warm)} (min {ms(warm[0][0]):.1f}, "
        f"max {ms(warm[-1][0]):.1f}); the median poll {ms(warm_s):.1f} ms, of which node calls "
        f"{ms(sum(warm_node.values())):.1f} ms"
    )
    print(f"   node calls per poll {warm_per_poll:g}: {timed(warm_count, warm_node)}")
    print(f"   cached mempool transactions: {cached}, none fetched again")
    print(
        f"3. baseline, the old per-poll mempool work: median {base_ms:.1f} ms of {len(base)} "
        f"(min {ms(min(base)):.1f}, max {ms(max(base)):.1f})"
    )
    print(f"   node calls {base_total}: {summary(base_per_run)}")
    print(
        f"   getrawmempool false alone: median {list_ms:.1f} ms of {args.warm_polls} (the node "
        "call a warm poll cannot avoid)"
    )
    print()
    print(
        f"warm poll / baseline: {warm_ms / base_ms:.4f} ({base_ms / warm_ms:.0f}x less time, "
        f"{base_total / warm_per_poll:.0f}x fewer node calls); cold poll / baseline: "
        f"{cold_ms / base_ms:.2f}"
    )

    old = "old per-poll mempool work"
    figures = [
        figure(f"{old}: ms", base_ms, "ms", baseline=None),
        figure(f"{old}: node calls", base_total, "calls", baseline=None),
        figure("getrawmempool false alone", list_ms, "ms", baseline=None),
        figure("cold poll (empty cache): ms", cold_ms, "ms", baseline=f"{old}: ms"),
        figure(
            "cold poll (empty cache): node calls",
            sum(cold_calls.values()),
            "calls",
            baseline=f"{old}: node calls",
        ),
        figure(
            "warm poll: median ms",
            warm_ms,
            "ms",
            baseline=[f"{old}: ms", "getrawmempool false alone"],
        ),
        figure("warm poll: node calls", warm_per_poll, "calls", baseline=f"{old}: node calls"),
    ]
    emit("utxo_mempool", figures, mempool=mempool_size, unrelated=n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mempool", type=int, default=5000, help="unrelated transactions")
    parser.add_argument("--payments", type=int, default=3, help="open LTC payments")
    parser.add_argument("--warm-polls", type=int, default=5)
    parser.add_argument("--baseline-runs", type=int, default=3)
    args = parser.parse_args()
    if args.mempool < 2 or args.payments < 1 or args.warm_polls < 1 or args.baseline_runs < 1:
        parser.error("--mempool >= 2, the others >= 1")

    from testing.nodes import Litecoind

    node = Litecoind(initial_blocks=101).start()
    try:
        with scratch_environment("utxomempool", chain_settings(node.url)):
            logging.getLogger("payments.addresses").setLevel(logging.ERROR)
            run(node, args)
    finally:
        node.kill()


if __name__ == "__main__":
    main()
