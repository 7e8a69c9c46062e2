"""Concurrent creations on real PostgreSQL: fresh addresses and unique order ids hold."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from payments import services
from payments.errors import DuplicateOrderId
from payments.models import AddressIndex, Payment
from tests.factories import MerchantFactory

pytestmark = pytest.mark.django_db(transaction=True)


def run_concurrently(count: int, work) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def runner(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # collected and asserted on by the caller
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def create(merchant, order_id=None):
    return services.payment_create(
        merchant=merchant,
        fiat_amount=Decimal("10.00"),
        fiat_currency="USD",
        crypto_currency="LTC",
        order_id=order_id,
    )


def test_concurrent_creations_never_share_an_address_or_index():
    merchant = MerchantFactory()

    results = run_concurrently(8, lambda i: create(merchant))

    assert all(isinstance(r, Payment) for r in results), results
    payments = Payment.objects.filter(merchant=merchant)
    assert sorted(payments.values_list("derivation_index", flat=True)) == list(range(8))
    assert payments.values("deposit_address").distinct().count() == 8
    assert AddressIndex.objects.get(merchant=merchant, key_space="dev:LTC").next_index == 8


def test_concurrent_creations_with_one_order_id_make_exactly_one_payment():
    merchant = MerchantFactory()

    results = run_concurrently(6, lambda i: create(merchant, order_id="same-order"))

    created = [r for r in results if isinstance(r, Payment)]
    refused = [r for r in results if isinstance(r, DuplicateOrderId)]
    assert len(created) == 1
    assert len(refused) == 5
    assert Payment.objects.filter(merchant=merchant, order_id="same-order").count() == 1
