"""The UTXO watcher against a real Litecoin Core in regtest (Bitcoin Core's RPC)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from payments import services
from payments.models import ChainCursor, PaymentTransaction
from payments.states import PaymentStatus as S
from testing.exchanges import refused_url
from tests.factories import make_payment
from tests.payments.chains.helpers import address_of, poll_chain, refresh, statuses

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(settings, litecoind):
    settings.CHAINS = {
        "litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc", "nodes": [litecoind.url]}
    }
    return litecoind


def poll():
    return poll_chain("litecoin")


def coins(payment, units: int | None = None) -> Decimal:
    return Decimal(payment.crypto_amount if units is None else units) / Decimal(10**8)


def test_a_payment_goes_pending_processing_settled_at_the_policy(chain, wallet_merchant):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="7.00")
    poll()
    assert address_of(payment).startswith("rltc1q")

    chain.send(payment.deposit_address, coins(payment))
    poll()
    assert refresh(payment).status == S.PROCESSING

    chain.mine(1)
    poll()

    assert refresh(payment).status == S.SETTLED
    assert payment.amount_confirmed == payment.crypto_amount
    assert statuses(payment) == [S.PROCESSING, S.SETTLED]


def test_a_slow_policy_needs_six_confirmations(chain, wallet_merchant):
    wallet_merchant.speed_policy = 6
    wallet_merchant.save()
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="3.00")
    poll()
    chain.send(payment.deposit_address, coins(payment))

    chain.mine(5)
    poll()
    assert refresh(payment).status == S.PROCESSING
    chain.mine(1)
    poll()

    assert refresh(payment).status == S.SETTLED


def test_partial_and_over_payments_take_their_sub_statuses(chain, wallet_merchant):
    partial = make_payment(
        merchant=wallet_merchant, crypto_currency="LTC", amount="2.00", order_id="p"
    )
    over = make_payment(
        merchant=wallet_merchant, crypto_currency="LTC", amount="2.00", order_id="o"
    )
    poll()

    chain.send(partial.deposit_address, coins(partial, partial.priced_amount // 2))
    chain.send(over.deposit_address, coins(over, over.priced_amount + 1000))
    chain.mine(1)
    poll()

    assert (refresh(partial).status, partial.sub_status) == (S.PENDING, "paid_partial")
    assert (refresh(over).status, over.sub_status) == (S.SETTLED, "paid_over")


def test_a_full_payment_after_expiry_is_paid_late(chain, wallet_merchant, frozen_clock):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
    poll()
    frozen_clock.advance(timedelta(minutes=16))
    services.payments_expire_due()

    chain.send(payment.deposit_address, coins(payment))
    chain.mine(1)
    poll()

    assert (refresh(payment).status, payment.sub_status) == (S.EXPIRED, "paid_late")


def test_a_payment_mined_before_expiry_but_found_after_it_is_on_time(
    chain, wallet_merchant, frozen_clock
):
    """Given the watcher was down while the buyer paid and the payment's expiry passed, when the
    sweep runs it does not expire the payment (the watcher has not looked past the expiry), and
    when the watcher polls the payment settles: no spurious payment.expired."""
    frozen_clock.set(timezone.now())  # block times are real: start the frozen clock at now
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.50")
    poll()
    chain.send(payment.deposit_address, coins(payment))
    chain.mine(1)  # mined now, well before the expiry
    frozen_clock.advance(timedelta(minutes=20))  # the watcher was down meanwhile
    services.payments_expire_due()
    assert refresh(payment).status == S.PENDING

    poll()

    assert (refresh(payment).status, payment.sub_status) == (S.SETTLED, "")
    assert statuses(payment) == [S.PROCESSING, S.SETTLED]
    assert not payment.events.filter(type="payment.expired").exists()


def test_a_reorg_that_removes_the_paying_block_unsettles_and_mining_it_again_resettles(
    chain, wallet_merchant
):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="4.00")
    poll()
    chain.send(payment.deposit_address, coins(payment))
    (block,) = chain.mine(1)
    poll()
    assert refresh(payment).status == S.SETTLED

    # A competing block at the same height without the transaction: a real reorg.
    chain.invalidate(block)
    chain.rpc("generateblock", chain.new_address(), [])
    poll()
    assert refresh(payment).status == S.PROCESSING  # back in the mempool, unconfirmed
    assert payment.amount_confirmed == 0
    chain.reconsider(block)  # same height as the new tip: the node stays where it is
    chain.mine(1)  # and mines the transaction again
    poll()

    assert refresh(payment).status == S.SETTLED
    assert statuses(payment) == [S.PROCESSING, S.SETTLED, S.PROCESSING, S.SETTLED]
    assert PaymentTransaction.objects.filter(payment=payment).count() == 1


def test_the_same_transaction_seen_many_times_is_counted_once(chain, wallet_merchant):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
    poll()
    chain.send(payment.deposit_address, coins(payment))

    for _ in range(3):
        poll()
    chain.mine(1)
    for _ in range(3):
        poll()

    assert PaymentTransaction.objects.filter(payment=payment).count() == 1
    assert refresh(payment).amount_received == payment.crypto_amount


def test_a_dead_first_node_fails_over_to_the_next(settings, litecoind, wallet_merchant):
    settings.CHAINS = {
        "litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc",
                     "nodes": [refused_url(), litecoind.url]}
    }  # fmt: skip
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
    poll()

    litecoind.send(payment.deposit_address, coins(payment))
    litecoind.mine(1)
    result = poll()

    assert refresh(payment).status == S.SETTLED
    assert result.node == f"127.0.0.1:{litecoind.rpc_port}"
    assert ChainCursor.objects.get(chain="litecoin").lag == 0


def test_zero_confirmations_settle_unless_the_transaction_signals_rbf(chain, wallet_merchant):
    wallet_merchant.speed_policy = 0
    wallet_merchant.save()
    plain = make_payment(
        merchant=wallet_merchant, crypto_currency="LTC", amount="1.00", order_id="a"
    )
    rbf = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00", order_id="b")
    poll()

    chain.send(plain.deposit_address, coins(plain))
    chain.send_rbf(rbf.deposit_address, coins(rbf))
    poll()

    assert refresh(plain).status == S.SETTLED
    assert refresh(rbf).status == S.PROCESSING
    assert PaymentTransaction.objects.get(payment=rbf).replaceable is True
    chain.mine(1)
    poll()
    assert refresh(rbf).status == S.SETTLED


def test_a_replaced_transaction_is_dropped_and_its_replacement_counted(chain, wallet_merchant):
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="1.00")
    poll()
    original = chain.send_rbf(payment.deposit_address, coins(payment))
    poll()
    assert refresh(payment).status == S.PROCESSING

    replacement = chain.bump_fee(original)
    poll()

    txs = {tx.txid: tx.state for tx in PaymentTransaction.objects.filter(payment=payment)}
    assert txs == {original: "dropped", replacement: "mempool"}
    assert refresh(payment).amount_received == payment.crypto_amount
    assert payment.status == S.PROCESSING


def test_a_block_the_node_no_longer_knows_does_not_stall_the_watcher(chain, wallet_merchant):
    """A node that lost its last blocks in a crash answers "Block not found" (-5) for the hash we
    recorded: the transaction is looked up again instead of failing every poll (found by the
    chaos suite: litecoind SIGKILLed)."""
    wallet_merchant.speed_policy = 3
    wallet_merchant.save()
    payment = make_payment(merchant=wallet_merchant, crypto_currency="LTC", amount="5.00")
    poll()
    chain.send(payment.deposit_address, coins(payment))
    chain.mine(1)
    poll()
    assert refresh(payment).status == S.PROCESSING
    PaymentTransaction.objects.filter(payment=payment).update(
        block_hash="ab" * 32, block_height=None
    )

    chain.mine(2)
    poll()

    assert refresh(payment).status == S.SETTLED
    tx = PaymentTransaction.objects.get(payment=payment)
    assert tx.block_hash != "ab" * 32 and tx.confirmations == 3
