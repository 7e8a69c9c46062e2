"""Assets on one EVM chain against real anvil nodes: a token is priced, linked and counted in its own
decimals; ETH and its tokens on one wallet key never share an address; a wrong asset is recorded,
never credited; ETH that arrives through a contract counts once."""

from __future__ import annotations

import logging
import math
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from notifications.models import Event, Priority
from payments.checkout import payment_uri, qr_svg
from payments.models import Payment, PaymentEvent, PaymentTransaction, UnmatchedTransfer
from payments.services import payment_snapshot
from payments.states import PaymentStatus as S
from payments.states import PaymentSubStatus
from testing.rpc_interposer import MethodNotFound, interposed
from tests.factories import make_payment, staff_client
from tests.payments.chains.helpers import (
    address_of,
    merchant_sharing_wallet_key,
    poll_chain,
    refresh,
    statuses,
)

pytestmark = pytest.mark.django_db

CONFIRMATIONS = 3
JSON: dict[str, Any] = {"HTTP_ACCEPT": "application/json"}


def configure(
    settings,
    node,
    *,
    tokens: dict | None = None,
    traces: bool | None = None,
    chain_id: int | None = None,
) -> None:
    chain = {"kind": "evm", "currency": "ETH", "confirmations": CONFIRMATIONS,
             "chain_id": node.CHAIN_ID if chain_id is None else chain_id,
             "nodes": [node.url]}  # fmt: skip
    if tokens:
        chain["tokens"] = {
            code: {"address": address, "decimals": decimals}
            for code, (address, decimals) in tokens.items()
        }
    if traces is not None:
        chain["traces"] = traces
    settings.CHAINS = {"ethereum": chain}


def poll():
    return poll_chain("ethereum")


# --- token decimals -----------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [6, 18])
def test_a_token_payment_is_priced_linked_and_counted_in_the_tokens_own_decimals(
    settings, anvil, wallet_merchant, decimals
):
    # Given a USDC contract with `decimals` decimals, configured as such
    token = anvil.deploy_erc20(decimals=decimals, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, decimals)})

    # When a 25.00 USD payment is created in it
    payment = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="25.00")

    # Then its amount, its wallet link and QR code are in the token's base units
    assert payment.crypto_amount == math.ceil(Decimal("25.00") * 10**decimals / payment.rate)
    link = (
        f"ethereum:{token.lower()}@{anvil.CHAIN_ID}/transfer"
        f"?address={payment.deposit_address}&uint256={payment.crypto_amount}"
    )
    assert payment_uri(payment) == link
    qr = Client().get(f"/pay/{payment.public_id}/qr.svg?token={payment.checkout_token}")
    assert qr.content.decode() == qr_svg(link)
    shown = payment_snapshot(payment)["crypto_amount"]
    assert len(shown.split(".")[1]) == decimals

    # And paying it in full settles it
    poll()
    anvil.erc20_transfer(token, payment.deposit_address, payment.crypto_amount)
    anvil.mine(CONFIRMATIONS - 1)
    poll()
    assert refresh(payment).status == S.SETTLED
    assert payment.amount_confirmed == payment.crypto_amount


def test_paying_a_trillionth_of_an_18_decimals_token_price_does_not_settle(
    settings, anvil, wallet_merchant
):
    # Given a payment priced in an 18-decimals token
    token = anvil.deploy_erc20(decimals=18, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 18)})
    payment = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="25.00")
    poll()

    # When the buyer sends 10^-12 of it (the price read as if the token had 6 decimals)
    anvil.erc20_transfer(token, payment.deposit_address, payment.priced_amount // 10**12)
    anvil.mine(CONFIRMATIONS)
    poll()

    # Then it is a partial payment, nowhere near settled
    assert (refresh(payment).status, payment.sub_status) == (
        S.PENDING,
        PaymentSubStatus.PAID_PARTIAL,
    )
    assert payment.amount_received == payment.priced_amount // 10**12
    assert S.SETTLED not in statuses(payment)


def test_a_token_whose_contract_disagrees_on_decimals_is_not_watched_and_reported_unhealthy(
    settings, anvil, wallet_merchant, caplog
):
    # Given a 6-decimals contract configured as 18 decimals
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 18)})
    payment = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="25.00")
    with caplog.at_level(logging.ERROR, logger="payments.chains.evm"):
        poll()

        # When a transfer of it reaches the payment's address and the watcher polls
        anvil.erc20_transfer(token, payment.deposit_address, payment.priced_amount // 10**12)
        anvil.mine(CONFIRMATIONS)
        poll()

    # Then nothing is counted, an ERROR names token and both decimals (once, not every poll),
    # and the dependency is down
    assert refresh(payment).amount_received == 0
    assert not PaymentTransaction.objects.filter(payment=payment).exists()
    assert not UnmatchedTransfer.objects.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    expected = (
        f"token USDC at {token.lower()} is configured with 18 decimals but its contract says 6"
    )
    assert [m for m in errors if expected in m] == [errors[0]] and len(errors) == 1, errors
    response = staff_client().get("/health/external", **JSON)
    assert response.status_code == 503
    check = response.json()["checks"]["token:ethereum:USDC"]
    assert check["status"] == "unavailable"
    assert check["diagnostics"] == {"token": token.lower(), "configured": 18, "onchain": 6}


def test_a_token_whose_contract_agrees_on_decimals_is_healthy(settings, anvil, wallet_merchant):
    token = anvil.deploy_erc20(decimals=18, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 18)})

    check = staff_client().get("/health/external", **JSON).json()["checks"]["token:ethereum:USDC"]

    assert (check["status"], check["diagnostics"]["onchain"]) == ("ok", 18)


# --- one deposit address, one payment -----------------------------------------------------------


def test_eth_and_usdc_wallets_on_one_key_give_two_payments_different_addresses(
    settings, anvil, wallet_merchant
):
    # Given ETH and USDC wallets holding the same account key (the fixture's normal setup)
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 6)})

    # When an ETH payment and a USDC payment are created
    eth = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="10.00")
    usdc = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="10.00")

    # Then they take consecutive indexes of the one key, so two different addresses
    assert (eth.derivation_index, usdc.derivation_index) == (0, 1)
    assert eth.deposit_address != usdc.deposit_address
    assert eth.key_space == usdc.key_space


def test_two_merchants_sharing_one_wallet_key_never_get_the_same_address(
    settings, anvil, wallet_merchant
):
    # Given a second merchant configured with the first one's ETH key (a misconfiguration)
    configure(settings, anvil)
    other = merchant_sharing_wallet_key(wallet_merchant)
    first = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")

    # When the second merchant creates payments
    second = make_payment(merchant=other, crypto_currency="ETH", amount="5.00")
    third = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")

    # Then each takes an address nobody else has, instead of failing
    addresses = [address_of(p).lower() for p in (first, second, third)]
    assert len(set(addresses)) == 3
    assert (first.derivation_index, second.derivation_index) == (0, 1)


def test_usdc_sent_to_an_eth_payments_address_is_recorded_once_as_unmatched_and_credits_nothing(
    settings, anvil, wallet_merchant
):
    # Given an ETH payment and a USDC payment of one merchant
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 6)})
    eth = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="10.00")
    usdc = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="10.00")
    poll()

    # When the buyer sends the USDC amount to the ETH payment's address
    txid = anvil.erc20_transfer(token, eth.deposit_address, usdc.crypto_amount)
    anvil.mine(CONFIRMATIONS)
    poll()

    # Then neither payment is credited
    assert (refresh(eth).status, eth.amount_received) == (S.PENDING, 0)
    assert (refresh(usdc).status, usdc.amount_received) == (S.PENDING, 0)
    assert not PaymentTransaction.objects.exists()
    # And the transfer is recorded once, against the payment whose address it hit
    unmatched = UnmatchedTransfer.objects.get()
    assert (unmatched.txid, unmatched.kind, unmatched.currency, unmatched.amount) == (
        txid, "log", "USDC", usdc.crypto_amount,
    )  # fmt: skip
    assert (unmatched.payment, unmatched.to_address) == (eth, address_of(eth).lower())
    # And the merchant hears of it: a payment event (no status change) and a High notification
    event = PaymentEvent.objects.get(payment=eth, type="transaction.unmatched")
    assert event.data["currency"] == "USDC" and event.data["credited"] is False
    assert event.data["payment"]["status"] == "pending"
    assert statuses(eth) == []
    notice = Event.objects.get(type="transaction.unmatched")
    assert (notice.owner, notice.subject, notice.priority) == (
        wallet_merchant.public_id, eth.public_id, Priority.HIGH,
    )  # fmt: skip

    # When the watcher polls again, with more blocks
    anvil.mine(1)
    poll()
    poll()

    # Then nothing new is recorded
    assert UnmatchedTransfer.objects.count() == 1
    assert PaymentEvent.objects.filter(type="transaction.unmatched").count() == 1


def test_eth_sent_to_a_usdc_payments_address_is_unmatched_not_credited(
    settings, anvil, wallet_merchant
):
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 6)})
    usdc = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="10.00")
    poll()

    txid = anvil.send_eth(usdc.deposit_address, 10**16)
    anvil.mine(CONFIRMATIONS)
    poll()

    assert refresh(usdc).amount_received == 0
    unmatched = UnmatchedTransfer.objects.get()
    assert (unmatched.txid, unmatched.kind, unmatched.currency, unmatched.amount) == (
        txid, "native", "ETH", 10**16,
    )  # fmt: skip


def test_unmatched_transfers_are_shown_read_only_in_the_admin(
    settings, anvil, wallet_merchant, django_user_model
):
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 6)})
    eth = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="10.00")
    poll()
    txid = anvil.erc20_transfer(token, eth.deposit_address, 5_000_000)
    poll()
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", None))

    listing = client.get("/admin/payments/unmatchedtransfer/")
    payment_page = client.get(f"/admin/payments/payment/{eth.pk}/change/")

    assert listing.status_code == 200 and txid in listing.content.decode()
    assert txid in payment_page.content.decode()
    assert client.get("/admin/payments/unmatchedtransfer/add/").status_code == 403


# --- ETH that arrives through a contract --------------------------------------------------------


@pytest.mark.parametrize("traces", [None, False], ids=["call-traces", "balance-check"])
def test_eth_forwarded_by_a_contract_settles_the_payment_counted_once(
    settings, anvil, wallet_merchant, traces
):
    # Given an ETH payment, and a contract that passes ETH on (a smart-contract wallet)
    configure(settings, anvil, traces=traces)
    forwarder = anvil.deploy_forwarder()
    payment = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="30.00")
    poll()

    # When the contract forwards the amount to the payment's address (an internal transaction)
    txid = anvil.forward_eth(forwarder, payment.deposit_address, payment.crypto_amount)
    block = anvil.block_hash()
    poll()
    anvil.mine(CONFIRMATIONS - 1)
    poll()
    poll()

    # Then the payment settles, on one credit of the whole amount
    assert refresh(payment).status == S.SETTLED
    assert payment.amount_received == payment.crypto_amount
    credit = PaymentTransaction.objects.get(payment=payment)
    assert (credit.kind, credit.amount, credit.confirmations) == (
        "internal", payment.crypto_amount, CONFIRMATIONS,
    )  # fmt: skip
    expected = txid if traces is None else f"internal:{block}:{address_of(payment).lower()}"
    assert credit.txid == expected


@pytest.mark.parametrize("trace_block", [True, False], ids=["trace_block", "debug-tracer"])
def test_a_forwarded_credit_has_the_same_key_from_trace_block_or_the_debug_tracer(
    settings, anvil, wallet_merchant, trace_block
):
    # Given a node that has trace_block (the cheap way), or one that lacks it (geth)
    with interposed(anvil.url) as node:
        if not trace_block:

            def lacks_the_method(params: list) -> None:
                raise MethodNotFound

            node.before("trace_block", lacks_the_method, once=False)
        configure(settings, node, chain_id=anvil.CHAIN_ID)  # the interposer's node's
        forwarder = anvil.deploy_forwarder()
        payment = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="30.00")
        poll()

        # When a contract forwards the amount, after a sub-call that reverted in another tx
        anvil.forward_eth(forwarder, payment.deposit_address, 1, revert=True)
        txid = anvil.forward_eth(forwarder, payment.deposit_address, payment.crypto_amount)
        anvil.mine(CONFIRMATIONS - 1)
        poll()

        # Then one credit, keyed by the transaction and its sub-call's place in the call tree
        assert (node.calls["debug_traceBlockByHash"] > 0) is not trace_block
    credit = PaymentTransaction.objects.get(payment=payment)
    assert (credit.txid, credit.kind, credit.output_index) == (txid, "internal", 1)
    assert refresh(payment).status == S.SETTLED


@pytest.mark.parametrize("traces", [None, False], ids=["call-traces", "balance-check"])
def test_eth_a_contract_sends_in_a_reverted_sub_call_credits_nothing(
    settings, anvil, wallet_merchant, traces
):
    configure(settings, anvil, traces=traces)
    forwarder = anvil.deploy_forwarder()
    payment = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="30.00")
    poll()

    anvil.forward_eth(forwarder, payment.deposit_address, payment.crypto_amount, revert=True)
    anvil.mine(CONFIRMATIONS)
    poll()

    assert anvil.balance(payment.deposit_address) == 0
    assert refresh(payment).amount_received == 0
    assert not PaymentTransaction.objects.exists()


def test_with_the_balance_check_a_plain_transfer_is_counted_once(settings, anvil, wallet_merchant):
    # Given the balance check (no traces) and a top-level ETH transfer plus a forwarded one
    configure(settings, anvil, traces=False)
    forwarder = anvil.deploy_forwarder()
    payment = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="30.00")
    poll()
    anvil.set_automine(False)
    amount = payment.crypto_amount
    assert amount is not None  # priced at creation
    half = amount // 2
    direct = anvil.send_eth(payment.deposit_address, half)
    anvil.forward_eth(forwarder, payment.deposit_address, amount - half)

    # When both land in one block
    anvil.mine(CONFIRMATIONS)
    poll()

    # Then each is counted once: the direct one as itself, the rest as the unexplained increase
    assert refresh(payment).status == S.SETTLED
    credits = {
        t.kind: (t.txid, t.amount) for t in PaymentTransaction.objects.filter(payment=payment)
    }
    assert credits["native"] == (direct, half)
    assert credits["internal"][1] == amount - half
    assert payment.amount_received == amount


def test_with_the_balance_check_a_reorg_removing_the_forwarding_block_drops_the_credit(
    settings, anvil, wallet_merchant
):
    # Given a forwarded payment seen by the balance check
    configure(settings, anvil, traces=False)
    forwarder = anvil.deploy_forwarder()
    payment = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="30.00")
    poll()
    anvil.forward_eth(forwarder, payment.deposit_address, payment.crypto_amount)
    poll()
    assert refresh(payment).status == S.PROCESSING

    # When a reorg replaces the block with one without the transfer
    anvil.reorg(1)
    poll()
    anvil.mine(CONFIRMATIONS)
    poll()

    # Then the credit is dropped and nothing is counted twice
    assert (refresh(payment).status, payment.amount_received) == (S.PENDING, 0)
    assert [t.state for t in PaymentTransaction.objects.filter(payment=payment)] == ["dropped"]
    assert S.SETTLED not in statuses(payment)


def test_the_database_refuses_a_second_payment_on_an_address_of_one_key(
    settings, anvil, wallet_merchant
):
    # Given a USDC payment on the merchant's ETH/USDC key
    token = anvil.deploy_erc20(decimals=6, symbol="USDC")
    configure(settings, anvil, tokens={"USDC": (token, 6)})
    usdc = make_payment(merchant=wallet_merchant, crypto_currency="USDC", amount="10.00")
    eth = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="10.00")

    # When anything tries to give an ETH payment the same address, or the same index of the key
    # Then the database refuses it
    for change in ({"deposit_address": usdc.deposit_address}, {"derivation_index": 0}):
        with pytest.raises(IntegrityError), transaction.atomic():
            Payment.objects.filter(pk=eth.pk).update(**change)
