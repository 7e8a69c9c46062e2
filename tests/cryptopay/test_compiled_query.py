"""CompiledQuery: the SQL of a queryset compiled once, its rows mapped to the same instances the
queryset gives, and the database asked on every call."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts import services
from accounts.auth import _API_KEY_BY_PREFIX
from accounts.models import ApiKey
from cryptopay.compiled_query import CompiledQuery
from payments.models import Payment
from payments.selectors import _PAYMENT_BY_PUBLIC_ID
from tests.factories import ApiKeyFactory, MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

# The two the API runs on every request: its key, and one payment.
KEYS = _API_KEY_BY_PREFIX
PAYMENTS = _PAYMENT_BY_PUBLIC_ID


def fields_of(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if k not in {"_state", "_prefetched_objects_cache"}}


def test_given_a_key_then_the_instance_is_the_querysets_with_its_merchant():
    key, _ = ApiKeyFactory.create_with_secret(scopes=["payments:read"])
    expected = ApiKey.objects.select_related("merchant").get(pk=key.pk)

    found = KEYS.first(prefix=key.prefix)

    assert found is not None and fields_of(found) == fields_of(expected)
    assert fields_of(found.merchant) == fields_of(expected.merchant)
    assert found._state.db == "default" and not found._state.adding
    assert found.scopes == ["payments:read"]  # the JSON column went through its converter


def test_given_a_deferred_field_of_the_related_row_then_it_stays_deferred_as_in_the_queryset():
    key, _ = ApiKeyFactory.create_with_secret()
    build = lambda prefix: (  # noqa: E731
        ApiKey.objects.select_related("merchant")
        .defer("merchant__support_url")
        .filter(prefix=prefix)
    )
    expected = build(key.prefix).get()

    found = CompiledQuery(build, prefix="cpk_deferred_example").first(prefix=key.prefix)

    assert found is not None and fields_of(found.merchant) == fields_of(expected.merchant)
    assert found.merchant.get_deferred_fields() == {"support_url"}


def test_given_no_such_row_then_none():
    assert KEYS.first(prefix="cpk_nothing") is None


def test_given_each_mode_then_each_finds_only_its_own_payment():
    merchant = MerchantFactory.create()
    live = make_payment(merchant=merchant)
    test = make_payment(merchant=merchant, livemode=False)

    assert PAYMENTS.first(merchant_id=merchant.pk, livemode=True, public_id=live.public_id) == live
    assert PAYMENTS.first(merchant_id=merchant.pk, livemode=False, public_id=live.public_id) is None
    assert PAYMENTS.first(merchant_id=merchant.pk, livemode=False, public_id=test.public_id) == test
    assert (
        PAYMENTS.first(merchant_id=merchant.pk + 1, livemode=True, public_id=live.public_id) is None
    )
    found = PAYMENTS.first(merchant_id=merchant.pk, livemode=True, public_id=live.public_id)
    assert fields_of(found) == fields_of(Payment.objects.get(pk=live.pk))


def test_given_a_revoked_key_then_the_next_call_reads_it_revoked():
    key, _ = ApiKeyFactory.create_with_secret()
    before = KEYS.first(prefix=key.prefix)
    assert before is not None and before.revoked_at is None

    services.api_key_revoke(api_key=key)

    with CaptureQueriesContext(connection) as queries:
        after = KEYS.first(prefix=key.prefix)
    assert after is not None and after.revoked_at is not None
    assert len(queries) == 1  # asked again, never remembered


def test_given_a_value_of_another_type_or_name_then_it_is_refused():
    with pytest.raises(TypeError):
        KEYS.first(prefix=5)
    with pytest.raises(TypeError):
        PAYMENTS.first(merchant_id="1", livemode=True, public_id="x")
    with pytest.raises(TypeError):
        KEYS.first(prefix="x", other="y")


def test_given_an_example_that_is_not_a_parameter_then_compiling_says_so():
    unused = CompiledQuery(
        lambda prefix, name: ApiKey.objects.filter(prefix=prefix), prefix="a", name="b"
    )

    with pytest.raises(ValueError, match="not in the SQL"):
        unused.first(prefix="a", name="b")
