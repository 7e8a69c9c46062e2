"""The EVM watcher against real anvil nodes: ETH and ERC-20 payments, reorgs, node failover."""

from __future__ import annotations

import pytest

from payments.models import PaymentTransaction
from payments.states import PaymentStatus as S
from testing.rpc_interposer import MethodNotFound, interposed
from tests.factories import make_payment
from tests.payments.chains.helpers import address_of, poll_chain, refresh, statuses

pytestmark = pytest.mark.django_db

CONFIRMATIONS = 3


def configure(settings, nodes, token: str | None = None) -> None:
    chain = {"kind": "evm", "currency": "ETH", "confirmations": CONFIRMATIONS,
             "nodes": [node.url for node in nodes]}  # fmt: skip
    if token:
        chain["tokens"] = {"USDC": {"address": token, "decimals": 6}}
    settings.CHAINS = {"ethereum": chain}


def poll():
    return poll_chain("ethereum")


def test_an_eth_transfer_settles_after_the_chains_confirmations(settings, anvil, wallet_merchant):
    configure(settings, [anvil])
    payment = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="30.00")
    poll()
    assert payment.required_confirmations == CONFIRMATIONS

    anvil.send_eth(payment.deposit_address, payment.crypto_amount)
    poll()
    assert refresh(payment).status == S.PROCESSING

    anvil.mine(CONFIRMATIONS - 1)
    poll()

    assert refresh(payment).status == S.SETTLED
    tx = PaymentTransaction.objects.get(payment=payment)
    assert (tx.kind, tx.confirmations) == ("native", CONFIRMATIONS)


def test_an_erc20_transfer_settles(settings, anvil, wallet_merchant):
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, [anvil], token=token)
    payment = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="25.00")
    poll()

    anvil.erc20_transfer(token, payment.deposit_address, payment.crypto_amount)
    anvil.mine(CONFIRMATIONS - 1)
    poll()

    assert refresh(payment).status == S.SETTLED
    tx = PaymentTransaction.objects.get(payment=payment)
    assert (tx.kind, tx.amount) == ("log", payment.crypto_amount)


def test_a_transfer_of_another_token_to_the_address_is_ignored(settings, anvil, wallet_merchant):
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    other = anvil.deploy_erc20(decimals=6, symbol="FAKE")
    configure(settings, [anvil], token=token)
    payment = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="5.00")
    poll()

    anvil.erc20_transfer(other, payment.deposit_address, payment.crypto_amount)
    anvil.mine(CONFIRMATIONS)
    poll()

    assert refresh(payment).status == S.PENDING
    assert not PaymentTransaction.objects.filter(payment=payment).exists()


@pytest.mark.parametrize("has_block_receipts", [True, False], ids=["geth-like", "without"])
def test_given_a_block_paying_several_payments_then_their_receipts_come_in_one_call_where_the_node_can(
    settings, anvil, wallet_merchant, has_block_receipts
):
    with interposed(anvil.url) as node:
        if not has_block_receipts:

            def lacks_the_method(params: list) -> None:
                raise MethodNotFound

            node.before("eth_getBlockReceipts", lacks_the_method, once=False)
        configure(settings, [node])
        payments = [
            make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount=amount)
            for amount in ("10.00", "20.00", "30.00")
        ]
        poll()
        anvil.set_automine(False)
        for payment in payments:
            anvil.send_eth(payment.deposit_address, payment.crypto_amount)
        anvil.mine(CONFIRMATIONS)

        result = poll()

        # One call for the block; a node without it is asked once a poll, then per transaction.
        assert node.calls["eth_getBlockReceipts"] == 1
        assert node.calls["eth_getTransactionReceipt"] == (0 if has_block_receipts else 3)
    assert result.recorded == 3
    # Each payment re-evaluated once for the block: it moves straight through to settled.
    assert all(statuses(refresh(p)) == [S.PROCESSING, S.SETTLED] for p in payments)


def test_a_reorg_removing_the_paying_block_returns_the_payment_to_pending(
    settings, anvil, wallet_merchant
):
    configure(settings, [anvil])
    payment = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="10.00")
    poll()
    anvil.send_eth(payment.deposit_address, payment.crypto_amount)
    poll()
    assert refresh(payment).status == S.PROCESSING

    anvil.reorg(1)  # the paying block is replaced by one without the transfer
    poll()
    anvil.mine(CONFIRMATIONS)
    poll()

    assert refresh(payment).status == S.PENDING
    assert payment.amount_received == 0
    assert S.SETTLED not in statuses(payment)
    assert PaymentTransaction.objects.get(payment=payment).state == "dropped"


def _mirrored_send(nodes, to: str, wei: int, nonce: int) -> str:
    """The same signed transaction on every node (same nonce and fees give the same hash)."""
    hashes = {
        node.send_transaction(
            {
                "to": to,
                "value": hex(wei),
                "nonce": hex(nonce),
                "gas": hex(21000),
                "gasPrice": hex(2 * 10**9),
            }
        )
        for node in nodes
    }
    assert len(hashes) == 1
    return hashes.pop()


def test_when_the_first_node_dies_the_second_serves_and_no_payment_is_missed(
    settings, anvil_factory, wallet_merchant
):
    first, second = anvil_factory(), anvil_factory()
    configure(settings, [first, second])
    before = make_payment(
        merchant=wallet_merchant, crypto_currency="ETH", amount="10.00", order_id="a"
    )
    during = make_payment(
        merchant=wallet_merchant, crypto_currency="ETH", amount="12.00", order_id="b"
    )
    poll()
    _mirrored_send([first, second], address_of(before), before.priced_amount, nonce=0)
    poll()
    assert refresh(before).status == S.PROCESSING
    assert poll().node == f"127.0.0.1:{first.port}"

    first.kill()
    second.send_transaction(
        {"to": during.deposit_address, "value": hex(during.priced_amount), "nonce": hex(1),
         "gas": hex(21000), "gasPrice": hex(2 * 10**9)}
    )  # fmt: skip
    second.mine(CONFIRMATIONS)
    result = poll()

    assert result.node == f"127.0.0.1:{second.port}"
    assert refresh(before).status == S.SETTLED
    assert refresh(during).status == S.SETTLED
    assert PaymentTransaction.objects.filter(payment=before).exclude(state="dropped").count() == 1


def test_given_a_choice_only_the_coin_the_buyer_picked_is_watched(settings, anvil, wallet_merchant):
    from decimal import Decimal

    from payments.chains.config import chains
    from payments.chains.watch import watcher_for
    from payments.services import payment_create_with_choice, payment_select_currency

    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, [anvil], token=token)
    payment = payment_create_with_choice(
        merchant=wallet_merchant, fiat_amount=Decimal("25.00"), fiat_currency="USD",
        accepted_currencies=["ETH", "USDC"],
    )  # fmt: skip
    watcher = watcher_for(chains()["ethereum"])
    assert payment.pk not in {p.pk for p in watcher.watched().values()}  # nothing picked yet

    payment = payment_select_currency(payment=payment, crypto_currency="ETH")
    eth_address = payment.deposit_address
    payment = payment_select_currency(payment=payment, crypto_currency="USDC")
    poll()

    assert [key for key, p in watcher.watched().items() if p.pk == payment.pk] == [
        ("USDC", watcher.address_key(address_of(payment)))
    ]
    # ETH to the address of the coin the buyer left is not watched: nothing is credited.
    anvil.send_eth(eth_address, 10**16)
    anvil.mine(CONFIRMATIONS)
    poll()
    assert refresh(payment).amount_received == 0
    assert not PaymentTransaction.objects.filter(payment=payment).exists()

    anvil.erc20_transfer(token, payment.deposit_address, payment.crypto_amount)
    anvil.mine(CONFIRMATIONS - 1)
    poll()

    assert refresh(payment).status == S.SETTLED
    assert PaymentTransaction.objects.get(payment=payment).kind == "log"
