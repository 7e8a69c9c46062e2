"""Money is judged from chain evidence, against a real Litecoin Core in regtest without -txindex
(as merchants run it): lateness, lagging failover nodes, blocks arriving mid-poll, RBF
replacements, a watcher that starts late, mempool scanning and cursor progress."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone

from payments import services
from payments.models import ChainCursor, PaymentEvent, PaymentTransaction
from payments.states import PaymentStatus as S
from testing.exchanges import refused_url
from testing.rpc_interposer import Refused, interposed
from tests.factories import make_payment
from tests.payments.chains.helpers import poll_chain, refresh, statuses

pytestmark = pytest.mark.django_db

LTC = "litecoin"


def use_nodes(settings, *urls: str) -> None:
    settings.CHAINS = {LTC: {"kind": "utxo", "currency": "LTC", "hrp": "rltc", "nodes": list(urls)}}


@pytest.fixture
def chain(settings, litecoind):
    use_nodes(settings, litecoind.url)
    return litecoind


def coins(payment, units: int | None = None) -> Decimal:
    return Decimal(payment.crypto_amount if units is None else units) / Decimal(10**8)


def sub_statuses(payment) -> list[str]:
    return [
        e.data["to"]["sub_status"] or ""
        for e in PaymentEvent.objects.filter(payment=payment).order_by("sequence")
        if "to" in e.data
    ]


def poll():
    return poll_chain(LTC)


# --- 1. Late is late -----------------------------------------------------------------------


def test_given_the_sweep_has_not_run_when_paid_and_mined_after_expiry_then_paid_late_never_settled(
    chain, wallet_merchant, frozen_clock
):
    # Given a payment that expired an hour ago by our clock, the sweep not having run yet
    frozen_clock.set(timezone.now() - timedelta(hours=1))
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="2.00")
    poll()
    frozen_clock.set(timezone.now())
    assert refresh(payment).status == S.PENDING

    # When the buyer's transaction is first seen and then mined, both after the expiry
    chain.send(payment.deposit_address, coins(payment))
    poll()
    chain.mine(2)
    poll()

    # Then the payment is expired and paid late: the old quote is not honoured
    assert (refresh(payment).status, payment.sub_status) == (S.EXPIRED, "paid_late")
    assert S.SETTLED not in statuses(payment) and S.PROCESSING not in statuses(payment)
    assert payment.amount_confirmed == payment.crypto_amount
    services.payments_expire_due()
    assert (refresh(payment).status, payment.sub_status) == (S.EXPIRED, "paid_late")


def test_given_the_nodes_are_down_and_the_payment_expires_when_mined_after_expiry_and_the_nodes_return_then_paid_late(
    settings, litecoind, wallet_merchant, frozen_clock
):
    # Given the chain's only node is unreachable when the payment expires
    frozen_clock.set(timezone.now() - timedelta(hours=1))
    use_nodes(settings, litecoind.url)
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="2.50")
    poll()
    frozen_clock.set(timezone.now())
    use_nodes(settings, refused_url())
    with pytest.raises(Exception):  # noqa: B017 - any node failure: the poll cannot run
        poll()
    services.payments_expire_due()
    assert refresh(payment).status == S.PENDING  # paused: nobody looked past the expiry

    # When the buyer pays after the expiry and the node returns
    litecoind.send(payment.deposit_address, coins(payment))
    litecoind.mine(1)
    use_nodes(settings, litecoind.url)
    poll()

    # Then the pause did not make the late payment an on-time one
    assert (refresh(payment).status, payment.sub_status) == (S.EXPIRED, "paid_late")
    assert S.SETTLED not in statuses(payment)


def test_given_the_watcher_has_not_looked_past_expiry_when_the_sweep_runs_then_no_payment_expired_event(
    chain, wallet_merchant, frozen_clock
):
    # Given a payment paid on time, which the watcher has not seen yet (it last polled before)
    frozen_clock.set(timezone.now())
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.25")
    poll()
    chain.send(payment.deposit_address, coins(payment))
    frozen_clock.advance(timedelta(minutes=16))

    # When the sweep runs, though the node answers its health probe
    services.payments_expire_due()

    # Then nothing expires; the next poll finds the on-time payment
    assert refresh(payment).status == S.PENDING
    poll()
    assert refresh(payment).status == S.PROCESSING
    assert not payment.events.filter(type="payment.expired").exists()


def test_given_the_watcher_looked_past_expiry_and_saw_nothing_when_the_sweep_runs_then_it_expires(
    chain, wallet_merchant, frozen_clock
):
    frozen_clock.set(timezone.now() - timedelta(hours=1))
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
    poll()
    frozen_clock.set(timezone.now())

    poll()
    services.payments_expire_due()

    assert (refresh(payment).status, payment.sub_status) == (S.EXPIRED, "")
    synced_at = ChainCursor.objects.get(chain=LTC).synced_at
    assert synced_at is not None and synced_at > payment.expires_at


# --- 4. A lagging node is behind, not forked ----------------------------------------------


def copy_blocks(source, target, heights) -> None:
    for height in heights:
        block = source.node_rpc("getblock", source.node_rpc("getblockhash", height), 0)
        assert target.node_rpc("submitblock", block) is None


def test_given_the_first_node_dies_when_the_second_is_two_blocks_behind_then_no_settled_payment_leaves_settled(
    settings, litecoind_factory, wallet_merchant
):
    # Given two nodes on one chain, the second two blocks behind, and settled payments whose
    # paying blocks the second node has not got yet
    first = litecoind_factory()
    second = litecoind_factory(initial_blocks=0)
    use_nodes(settings, first.url, second.url)
    payments = [
        make_payment(
            merchant=wallet_merchant, crypto_currency="LTC", amount="3.00", order_id=str(n)
        )
        for n in range(3)
    ]
    poll()
    for payment in payments:
        first.send(payment.deposit_address, coins(payment))
    first.mine(1)
    poll()
    first.mine(1)
    poll()
    assert [refresh(p).status for p in payments] == [S.SETTLED] * 3
    tip = first.block_count()
    copy_blocks(first, second, range(1, tip - 1))
    missing = [
        first.node_rpc("getblock", first.node_rpc("getblockhash", h), 0) for h in (tip - 1, tip)
    ]
    events_before = PaymentEvent.objects.count()

    # When the first node is killed and the watcher fails over to the lagging one
    first.kill()
    for _ in range(3):
        result = poll()
        # Then it waits for the node instead of rolling anything back
        assert result.behind == 2 and result.reorged_from is None
        assert [refresh(p).status for p in payments] == [S.SETTLED] * 3
    assert PaymentEvent.objects.count() == events_before
    assert ChainCursor.objects.get(chain=LTC).height == tip

    # And once the node catches up, the watcher carries on from where it was
    for block in missing:
        assert second.node_rpc("submitblock", block) is None
    second.mine(1)
    result = poll()
    assert result.behind == 0 and result.reorged_from is None and result.to_height == tip + 1
    assert [refresh(p).status for p in payments] == [S.SETTLED] * 3
    assert all(
        tx.state == "confirmed" for tx in PaymentTransaction.objects.filter(payment__in=payments)
    )


def test_given_the_first_node_dies_mid_poll_when_the_second_is_behind_then_nothing_loses_confirmations(
    settings, litecoind_factory, wallet_merchant
):
    # Given a settled payment and a paid one waiting in the first node's mempool; the second
    # node is two blocks behind and never saw the mempool transaction
    first = litecoind_factory()
    second = litecoind_factory(initial_blocks=0)
    with interposed(first.url) as proxy:
        use_nodes(settings, proxy.url, second.url)
        settled, waiting = (
            make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="2.00", order_id=n)
            for n in ("settled", "waiting")
        )
        poll()
        first.send(settled.deposit_address, coins(settled))
        first.mine(2)
        first.send(waiting.deposit_address, coins(waiting))
        poll()
        assert (refresh(settled).status, refresh(waiting).status) == (S.SETTLED, S.PROCESSING)
        copy_blocks(first, second, range(1, first.block_count() - 1))
        events_before = PaymentEvent.objects.count()

        # When the first node fails right after the block scan, the rest of the poll asking the
        # lagging second node
        dead = {"from": False}

        def die(params: list) -> None:
            dead["from"] = True

        def fail(params: list) -> None:
            if dead["from"]:
                raise Refused

        proxy.before("getrawmempool", die)
        proxy.before("*", fail, once=False)
        result = poll()
        assert result.behind == 0 and result.node == f"127.0.0.1:{second.rpc_port}"
        assert poll().behind == 2

    # Then nothing lost a confirmation or was dropped
    assert (refresh(settled).status, refresh(waiting).status) == (S.SETTLED, S.PROCESSING)
    assert PaymentEvent.objects.count() == events_before
    assert not PaymentTransaction.objects.filter(state="dropped").exists()


# --- 5. A block arriving mid-poll ---------------------------------------------------------


@pytest.mark.parametrize("between", ["getrawmempool", "getmempoolentry"])
def test_given_a_block_arrives_between_two_node_calls_then_the_transaction_is_found_in_it(
    settings, litecoind, wallet_merchant, between
):
    # Given an unconfirmed payment the watcher has recorded
    with interposed(litecoind.url) as node:
        use_nodes(settings, node.url)
        payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.75")
        poll()
        litecoind.send(payment.deposit_address, coins(payment))
        poll()
        assert refresh(payment).status == S.PROCESSING

        # When a block mining it arrives mid-poll, after the block scan
        node.before(between, lambda params: litecoind.mine(1))
        poll()

    # Then it is found in that block: no transient drop, no "underpaid again"
    assert refresh(payment).status == S.SETTLED
    assert statuses(payment) == [S.PROCESSING, S.SETTLED]
    tx = PaymentTransaction.objects.get(payment=payment)
    assert (tx.state, tx.confirmations) == ("confirmed", 1)
    assert not payment.events.filter(data__state="dropped").exists()


def test_given_a_payment_created_and_paid_mid_poll_then_the_block_that_arrived_meanwhile_records_it(
    settings, litecoind, transactional_db, wallet_merchant
):
    # Given a poll under way, past its first block scan
    created = {}

    def a_buyer_pays_a_new_payment_in_a_new_block(params: list) -> None:
        from django.db import connection

        try:
            payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.40")
            litecoind.send(payment.deposit_address, coins(payment))
            litecoind.mine(1)
            created["payment"] = payment
        finally:
            connection.close()

    with interposed(litecoind.url) as node:
        use_nodes(settings, node.url)
        make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
        poll()

        # When a payment is created, paid and mined while the poll reads the mempool
        node.before("getrawmempool", a_buyer_pays_a_new_payment_in_a_new_block)
        poll()

    # Then the same poll scans that block with the new payment watched
    assert refresh(created["payment"]).status == S.SETTLED


# --- 6. RBF replacements are atomic -------------------------------------------------------


@pytest.mark.parametrize("replacement_seen_in", ["mempool", "block"])
def test_given_an_rbf_payment_when_it_is_fee_bumped_then_the_replaced_one_stops_counting_in_the_same_step(
    chain, wallet_merchant, replacement_seen_in
):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.10")
    poll()
    original = chain.send_rbf(payment.deposit_address, coins(payment))
    poll()
    assert refresh(payment).status == S.PROCESSING

    replacement = chain.bump_fee(original)
    if replacement_seen_in == "block":
        chain.mine(1)
    poll()

    txs = {tx.txid: tx.state for tx in PaymentTransaction.objects.filter(payment=payment)}
    assert txs[original] == "dropped"
    assert txs[replacement] in ("mempool", "confirmed")
    assert refresh(payment).amount_received == payment.crypto_amount
    # Never counted twice: no paid_over, no status change for the transient double count
    assert "paid_over" not in sub_statuses(payment)
    expected = [S.PROCESSING] + ([S.SETTLED] if replacement_seen_in == "block" else [])
    assert statuses(payment) == expected
    dropped = payment.events.get(data__state="dropped")
    assert dropped.data["reason"] == f"replaced by {replacement}"


def test_given_a_double_spend_away_from_the_payment_then_the_transaction_is_dropped(
    chain, wallet_merchant
):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.30")
    poll()
    original = chain.send_rbf(payment.deposit_address, coins(payment))
    poll()
    assert refresh(payment).status == S.PROCESSING

    # The buyer's wallet replaces it with a transaction paying itself instead
    raw = chain.rpc("getrawtransaction", original, True)
    inputs = [{"txid": vin["txid"], "vout": vin["vout"]} for vin in raw["vin"]]
    total = sum(_value(chain, i) for i in inputs)
    refund = chain.new_address()
    unsigned = chain.rpc(
        "createrawtransaction", inputs, {refund: str(total - Decimal("0.01"))}, 0, True
    )
    signed = chain.rpc("signrawtransactionwithwallet", unsigned)["hex"]
    chain.rpc("sendrawtransaction", signed)
    poll()

    assert PaymentTransaction.objects.get(payment=payment).state == "dropped"
    assert (refresh(payment).status, payment.amount_received) == (S.PENDING, 0)


def _value(chain, outpoint: dict) -> Decimal:
    tx = chain.rpc("gettransaction", outpoint["txid"])
    decoded = chain.rpc("decoderawtransaction", tx["hex"])
    return Decimal(decoded["vout"][outpoint["vout"]]["value"])


# --- 7. A watcher that starts late misses nothing -----------------------------------------


def test_given_a_payment_paid_before_the_watcher_ever_ran_when_it_first_polls_then_it_is_found(
    chain, wallet_merchant
):
    assert not ChainCursor.objects.filter(chain=LTC).exists()
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="2.20")
    chain.send(payment.deposit_address, coins(payment))
    chain.mine(6)  # the paying block is six deep when the watcher first looks

    poll()

    assert refresh(payment).status == S.SETTLED
    assert PaymentTransaction.objects.get(payment=payment).confirmations == 6


def test_a_configured_start_height_is_where_a_new_watcher_starts(settings, chain):
    settings.CHAINS[LTC]["start_height"] = 5

    result = poll()

    assert result.from_height == 4
    assert ChainCursor.objects.get(chain=LTC).height == chain.block_count()


# --- 9. Mempool scanning scales; progress is saved per block -------------------------------


def test_a_poll_never_refetches_mempool_transactions_it_has_already_seen(
    settings, litecoind, wallet_merchant
):
    with interposed(litecoind.url) as node:
        use_nodes(settings, node.url)
        payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
        poll()
        for _ in range(15):
            litecoind.send(litecoind.new_address(), Decimal("0.01"))
        poll()
        assert node.calls["getrawtransaction"] >= 15

        node.calls.clear()
        litecoind.send(payment.deposit_address, coins(payment))
        poll()

        # Only the one new transaction is fetched, and it is recorded
        assert node.calls["getrawtransaction"] == 1
        assert refresh(payment).status == S.PROCESSING
        node.calls.clear()
        poll()
        assert node.calls["getrawtransaction"] == 0
    litecoind.mine(1)


def test_a_poll_cut_off_by_its_time_budget_still_advances_block_by_block(chain, wallet_merchant):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
    poll()
    start = ChainCursor.objects.get(chain=LTC).height
    chain.send(payment.deposit_address, coins(payment))
    chain.mine(3)

    with override_settings(CHAIN_POLL_BUDGET=timedelta(0)):
        heights = [poll().to_height for _ in range(3)]

    assert heights == [start + 1, start + 2, start + 3]
    assert refresh(payment).status == S.SETTLED


def test_a_poll_that_fails_midway_keeps_the_blocks_it_finished(
    settings, litecoind, wallet_merchant
):
    with interposed(litecoind.url) as node:
        use_nodes(settings, node.url)
        payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
        poll()
        start = ChainCursor.objects.get(chain=LTC).height
        litecoind.send(payment.deposit_address, coins(payment))
        litecoind.mine(4)
        calls = {"n": 0}

        def fail_from_the_third_block(params: list) -> None:
            calls["n"] += 1
            if calls["n"] >= 3:
                raise Refused

        node.before("getblock", fail_from_the_third_block, once=False)
        with pytest.raises(Exception):  # noqa: B017 - the node went away mid-poll
            poll()

    assert ChainCursor.objects.get(chain=LTC).height == start + 2
    assert refresh(payment).status == S.SETTLED
