"""A live payment (a merchant's own wallet key, a chain node) is created without reading the
payments table through: every query of the create that reads payments is answered from an index,
so a merchant's thousandth and millionth payment cost the same (anvil, PostgreSQL).

Asked of PostgreSQL's planner with sequential scans and sorts priced out (``enable_seqscan``,
``enable_sort`` off): on a small table it may well choose either, but it still plans one only
where no index can answer, or give the rows in order."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from payments.addresses import gap_limit_check, unpaid_address_run, wallet_key_space
from payments.models import AddressIndex, Payment, PaymentOption
from tests.factories import MerchantFactory, make_payment
from tests.payments.chains.helpers import merchant_sharing_wallet_key

pytestmark = pytest.mark.django_db

PAYMENTS = Payment._meta.db_table
OPTIONS = PaymentOption._meta.db_table


def configure(settings, node) -> None:
    settings.CHAINS = {
        "ethereum": {"kind": "evm", "currency": "ETH", "confirmations": 1,
                     "chain_id": node.CHAIN_ID, "nodes": [node.url]},
    }  # fmt: skip


def reads_of_payments(queries: list[dict]) -> list[str]:
    return [
        query["sql"]
        for query in queries
        if query["sql"].lstrip("(").startswith("SELECT") and f'FROM "{PAYMENTS}"' in query["sql"]
    ]


def unbounded_reads(sql: str) -> list[str]:
    """The plan's steps that read payments without an index condition to bound them (a
    sequential scan, or a whole index walked and filtered), and its sorts."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        try:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
            (document,) = cursor.fetchone()
        finally:
            cursor.execute("SET LOCAL enable_seqscan = on")
            cursor.execute("SET LOCAL enable_sort = on")
    found: list[str] = []

    def walk(node: dict) -> None:
        kind = node["Node Type"]
        if kind == "Sort":
            found.append(f"Sort by {node.get('Sort Key')}")
        if node.get("Relation Name") in (PAYMENTS, OPTIONS) and kind == "Seq Scan":
            found.append("Seq Scan")
        if "Index Name" in node and "Index Cond" not in node:
            found.append(f"{kind} on {node['Index Name']} without a condition")
        for child in node.get("Plans", []):
            walk(child)

    walk((json.loads(document) if isinstance(document, str) else document)[0]["Plan"])
    return found


def test_a_live_create_reads_payments_only_through_indexes_and_never_sorts_them(
    settings, anvil, wallet_merchant
):
    # Given a merchant's ETH wallet whose first address was paid and whose counter has since
    # handed out a hundred, and another merchant's payments
    configure(settings, anvil)
    paid = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")
    Payment.objects.filter(pk=paid.pk).update(amount_received=1)
    make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")
    make_payment(merchant=MerchantFactory.create(), crypto_currency="LTC", amount="5.00")
    AddressIndex.objects.filter(merchant=wallet_merchant, key_space=paid.key_space).update(
        next_index=100
    )

    # When the merchant creates one more live payment
    with CaptureQueriesContext(connection) as captured:
        created = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")

    # Then it has the next address of its key, and every read of payments it took (is that
    # address anybody's and was one of the last indexes paid, in one statement; which index was
    # paid last: the gap limit, over here) is an index scan that stops at what it looks for: no
    # sequential scan, no sort of the payments
    assert created.livemode and created.derivation_index == 100
    reads = reads_of_payments(captured.captured_queries)
    assert len(reads) == 2, reads
    assert {sql: unbounded_reads(sql) for sql in reads} == {sql: [] for sql in reads}


def test_an_address_another_merchant_holds_in_another_casing_is_still_skipped(
    settings, anvil, wallet_merchant
):
    # Given another merchant with the same ETH key (a misconfiguration) whose payment holds the
    # key's first address written in lower case (as an EVM address may be)
    configure(settings, anvil)
    other = merchant_sharing_wallet_key(wallet_merchant)
    theirs = make_payment(merchant=other, crypto_currency="ETH", amount="5.00")
    assert theirs.deposit_address is not None
    Payment.objects.filter(pk=theirs.pk).update(deposit_address=theirs.deposit_address.lower())

    # When the merchant creates its first payment, whose counter starts at that same index
    mine = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")

    # Then it skips the address the other payment holds and takes the next one
    assert theirs.derivation_index == 0
    assert mine.derivation_index == 1
    assert mine.deposit_address is not None
    assert mine.deposit_address.lower() != theirs.deposit_address.lower()


def test_an_address_only_a_payment_option_keeps_is_still_skipped(settings, anvil, wallet_merchant):
    # Given another merchant with the same ETH key (a misconfiguration) whose buyer picked ETH,
    # which took the key's first address, then switched to another coin: that address is now
    # kept only by the payment's ETH option
    configure(settings, anvil)
    other = merchant_sharing_wallet_key(wallet_merchant)
    theirs = make_payment(merchant=other, crypto_currency="ETH", amount="5.00")
    assert theirs.derivation_index == 0 and theirs.deposit_address is not None
    assert theirs.rate is not None and theirs.rate_fetched_at is not None
    PaymentOption.objects.create(
        payment=theirs,
        crypto_currency="ETH",
        crypto_amount=theirs.priced_amount,
        rate=theirs.rate,
        rate_source=theirs.rate_source,
        rate_fetched_at=theirs.rate_fetched_at,
        deposit_address=theirs.deposit_address,
        derivation_index=0,
        key_space=theirs.key_space,
    )
    Payment.objects.filter(pk=theirs.pk).update(
        crypto_currency="LTC", deposit_address="ltc-address-of-the-coin-picked-next"
    )

    # When the merchant creates its first payment, whose counter starts at that same index
    mine = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")

    # Then it skips the address the option keeps and takes the next one
    assert mine.derivation_index == 1
    assert mine.deposit_address is not None
    assert mine.deposit_address.lower() != theirs.deposit_address.lower()


@pytest.mark.parametrize(("paid_at", "over"), [(80, False), (79, True)])
def test_the_short_gap_limit_check_agrees_with_the_counted_run_at_the_limits_edge(
    settings, anvil, wallet_merchant, paid_at, over
):
    # Given the merchant's ETH key with one paid address, at `paid_at`, and index 100 just taken
    configure(settings, anvil)
    wallet = wallet_merchant.wallets.get(crypto_currency="ETH")
    space = wallet_key_space(wallet)
    AddressIndex.objects.update_or_create(
        merchant=wallet_merchant, key_space=space, defaults={"next_index": paid_at}
    )
    paid = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")
    Payment.objects.filter(pk=paid.pk).update(amount_received=1)
    AddressIndex.objects.filter(merchant=wallet_merchant, key_space=space).update(next_index=100)
    last = make_payment(merchant=wallet_merchant, crypto_currency="ETH", amount="5.00")
    assert (paid.derivation_index, last.derivation_index) == (paid_at, 100)

    # When the create's check asks about the index it took, and the run is counted in full
    checked = gap_limit_check(merchant=wallet_merchant, wallet=wallet, handed_out=100)
    counted = unpaid_address_run(merchant=wallet_merchant, wallet=wallet)

    # Then both say the same: 20 unpaid after the paid one is the limit, 21 is over it
    assert counted.run == 100 - paid_at
    assert checked is counted.over is over
