"""REST API for payments: create, read, list (cursor pagination, filters), cancel, validation."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from payments.models import Payment, PaymentEvent
from payments.states import PaymentStatus as S
from tests.conftest import api_client_for
from tests.factories import MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

URL = "/api/v1/payments"


def create(api, **body):
    payload = {"amount": "19.99", "crypto_currency": "BTC", **body}
    return api.post(URL, payload, format="json")


def assert_error(response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"type", "code", "message", "param"}
    assert error["code"] == code
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_create_returns_the_payment_with_exact_amounts_and_its_provenance(api, merchant):
    response = create(api, order_id="order-1", description="Mug", metadata={"sku": "mug-1"})

    assert response.status_code == 201
    body = response.json()
    assert body["id"].startswith("pay_") and len(body["id"]) == 28
    assert body["object"] == "payment"
    assert (body["amount"], body["currency"]) == ("19.99", "USD")
    assert (body["crypto_currency"], body["crypto_amount"]) == ("BTC", "0.00033317")
    assert body["crypto_amount_base_units"] == "33317"
    assert body["amount_due"] == "0.00033317"
    assert body["amount_received"] == "0.00000000"
    assert body["quote"]["source"] == "fallback"
    assert body["quote"]["rate"] == "60000"
    assert body["status"] == "pending" and body["sub_status"] is None
    assert body["deposit_address"].startswith("devbtc1")
    assert body["metadata"] == {"sku": "mug-1"}
    assert body["required_confirmations"] == 1
    payment = Payment.objects.get(public_id=body["id"])
    assert payment.merchant == merchant
    assert payment.expires_at - payment.created_at == timedelta(minutes=15)


def test_a_json_number_amount_is_read_exactly_not_as_float(api):
    # 0.1 + 0.2 style: as a float 19.99 would be 19.989999...; it must stay 19.99.
    response = api.post(
        URL, data='{"amount": 19.99, "crypto_currency": "ETH"}', content_type="application/json"
    )

    assert response.status_code == 201
    assert response.json()["amount"] == "19.99"


def test_each_payment_gets_a_fresh_address(api):
    addresses = {create(api, order_id=f"o-{i}").json()["deposit_address"] for i in range(5)}

    assert len(addresses) == 5


def test_the_currency_defaults_to_the_merchants_and_respects_its_exponent(db):
    merchant = MerchantFactory(default_fiat_currency="EUR")
    api = api_client_for(merchant)

    response = create(api, amount="10")

    assert response.status_code == 201
    assert (response.json()["amount"], response.json()["currency"]) == ("10.00", "EUR")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"amount": "0"}, "not_positive", "amount"),
        ({"amount": "-5"}, "not_positive", "amount"),
        ({"amount": "abc"}, "invalid", "amount"),
        ({"amount": "NaN"}, "invalid", "amount"),
        ({"amount": "Infinity"}, "invalid", "amount"),
        ({"amount": True}, "invalid", "amount"),
        ({"amount": "1.001"}, "invalid_amount_precision", "amount"),
        ({"amount": "1000000.01"}, "amount_too_large", "amount"),
        ({"crypto_currency": "DOGE"}, "invalid_choice", "crypto_currency"),
        ({"currency": "XYZ"}, "invalid_choice", "currency"),
        ({"metadata": "not an object"}, "not_a_dict", "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata_too_large", "metadata"),
        ({"metadata": {"k" * 41: "v"}}, "invalid_metadata_key", "metadata"),
        ({"metadata": {"k": "v" * 501}}, "max_length", "metadata[k]"),
        ({"description": "d" * 501}, "max_length", "description"),
        ({"order_id": "o" * 201}, "max_length", "order_id"),
    ],
)
def test_invalid_payloads_get_a_400_naming_the_field_and_store_nothing(api, body, code, param):
    response = create(api, **body)

    error = assert_error(response, 400, code, param)
    assert error["type"] == "invalid_request_error"
    assert Payment.objects.count() == 0


def test_missing_required_fields_are_all_listed(api):
    response = api.post(URL, {}, format="json")

    error = assert_error(response, 400, "required")
    # crypto_currency is optional: without it the buyer picks from the accepted coins.
    assert {e["param"] for e in error["errors"]} == {"amount"}


def test_japanese_yen_has_no_decimals(api):
    assert_error(create(api, amount="100.5", currency="JPY"), 400, "invalid_amount_precision")


def test_a_pair_without_a_rate_is_refused_with_503_and_nothing_is_stored(api):
    response = create(api, currency="JPY", amount="1000")

    error = assert_error(response, 503, "rate_unavailable")
    assert error["type"] == "api_error"
    assert Payment.objects.count() == 0


def test_without_an_address_source_creation_is_refused_clearly(api, settings):
    settings.DEV_CHAIN_ENABLED = False

    assert_error(create(api), 422, "wallet_not_configured", "crypto_currency")
    assert Payment.objects.count() == 0


def test_a_duplicate_order_id_is_refused_and_the_first_payment_is_untouched(api):
    first = create(api, order_id="A-1").json()

    assert_error(create(api, order_id="A-1", amount="5.00"), 409, "order_id_already_exists")

    stored = Payment.objects.get(order_id="A-1")
    assert (stored.public_id, str(stored.fiat_amount)) == (first["id"], "19.990")


def test_two_merchants_may_use_the_same_order_id(api, db):
    other = api_client_for(MerchantFactory())

    assert create(api, order_id="same").status_code == 201
    assert create(other, order_id="same").status_code == 201


def test_get_returns_the_payment(api):
    created = create(api).json()

    response = api.get(f"{URL}/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created | {"updated_at": response.json()["updated_at"]}


def test_list_pages_through_every_payment_newest_first_without_gaps_or_repeats(
    api, merchant, frozen_clock
):
    ids = []
    for _ in range(7):
        ids.append(make_payment(merchant=merchant).public_id)
        frozen_clock.advance(timedelta(seconds=1))
    # Same created_at for two payments: the id breaks the tie.
    ids.append(make_payment(merchant=merchant).public_id)
    ids.append(make_payment(merchant=merchant).public_id)
    make_payment()  # another merchant's payment never shows up
    expected = list(
        Payment.objects.filter(public_id__in=ids)
        .order_by("-created_at", "-id")
        .values_list("public_id", flat=True)
    )
    assert expected[:2] == ids[7:][::-1]  # the tie is broken by id, newest first

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 4} | ({"starting_after": cursor} if cursor else {})
        body = api.get(URL, params).json()
        pages += 1
        seen += [p["id"] for p in body["data"]]
        if not body["has_more"]:
            break
        cursor = body["data"][-1]["id"]

    assert seen == expected
    assert pages == 3


def test_list_filters_by_status_order_id_and_created_range(api, merchant, frozen_clock):
    early = make_payment(merchant=merchant, order_id="early")
    frozen_clock.advance(timedelta(hours=1))
    late = make_payment(merchant=merchant, order_id="late")
    api.post(f"{URL}/{late.public_id}/cancel")

    def ids(**params):
        return [p["id"] for p in api.get(URL, params).json()["data"]]

    assert ids(status="cancelled") == [late.public_id]
    assert ids(status="pending") == [early.public_id]
    assert ids(order_id="early") == [early.public_id]
    assert ids(created_gte=late.created_at.isoformat()) == [late.public_id]
    assert ids(created_lt=late.created_at.isoformat()) == [early.public_id]


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({"limit": 0}, "min_value", "limit"),
        ({"limit": 101}, "max_value", "limit"),
        ({"limit": "x"}, "invalid", "limit"),
        ({"status": "paid"}, "invalid_choice", "status"),
        ({"created_gte": "yesterday"}, "invalid", "created_gte"),
        ({"starting_after": "pay_unknown"}, "invalid_cursor", "starting_after"),
    ],
)
def test_bad_list_parameters_get_a_400(api, params, code, param):
    assert_error(api.get(URL, params), 400, code, param)


def test_cancel_moves_a_pending_payment_to_cancelled_once(api):
    payment_id = create(api).json()["id"]

    first = api.post(f"{URL}/{payment_id}/cancel")
    again = api.post(f"{URL}/{payment_id}/cancel")

    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == again.json()["status"] == "cancelled"
    types = list(
        PaymentEvent.objects.filter(payment__public_id=payment_id).values_list("type", flat=True)
    )
    assert types == ["payment.created", "payment.status_changed"]


def test_cancel_is_refused_for_a_payment_that_received_funds(api):
    payment_id = create(api).json()["id"]
    call_command("simulate_payment", payment_id, "--amount", "0.0001", stdout=StringIO())

    assert_error(api.post(f"{URL}/{payment_id}/cancel"), 409, "payment_has_funds")
    assert Payment.objects.get(public_id=payment_id).status == S.PENDING


def test_cancel_is_refused_for_a_settled_payment(api):
    payment_id = create(api).json()["id"]
    call_command("simulate_payment", payment_id, stdout=StringIO())

    assert_error(api.post(f"{URL}/{payment_id}/cancel"), 409, "invalid_state_transition")
    assert Payment.objects.get(public_id=payment_id).status == S.SETTLED


def test_an_address_reserved_for_a_create_that_made_no_payment_is_given_back(
    api, merchant, django_capture_on_commit_callbacks
):
    from payments.models import AddressIndex

    def post(order_id: str, key: str):
        body = {"amount": "10.00", "crypto_currency": "LTC", "order_id": order_id}
        with django_capture_on_commit_callbacks(execute=True):
            return api.post("/api/v1/payments", body, format="json", HTTP_IDEMPOTENCY_KEY=key)

    first = post("o-1", "k-1")
    refused = post("o-1", "k-2")  # the same order: a 409 after an address was taken for it
    replayed = post("o-1", "k-1")  # a replay from the database, past the reservation
    second = post("o-2", "k-3")

    assert (first.status_code, refused.status_code, second.status_code) == (201, 409, 201)
    assert replayed["Idempotent-Replayed"] == "true"
    indexes = [
        Payment.objects.get(public_id=r.json()["id"]).derivation_index for r in (first, second)
    ]
    assert indexes == [0, 1]  # the refused and the replayed request's addresses came back
    assert AddressIndex.objects.get(merchant=merchant, key_space="dev:LTC").next_index == 2


def test_each_create_serializer_validates_with_fields_of_its_own():
    # PaymentCreateSerializer copies its declared fields shallowly, not as DRF's deep copies:
    # each instance must still get fields of its own, bound to it, the declared ones untouched.
    from payments.api.serializers import PaymentCreateSerializer

    merchant = MerchantFactory.create()
    context = {"merchant": merchant, "livemode": True}
    valid = PaymentCreateSerializer(data={"amount": "5", "crypto_currency": "BTC"}, context=context)
    refused = PaymentCreateSerializer(data={"amount": "x", "accepted_currencies": ["?"]})

    for name, declared in PaymentCreateSerializer._declared_fields.items():
        assert valid.fields[name] is not refused.fields[name]
        assert valid.fields[name].parent is valid and refused.fields[name].parent is refused
        assert declared.parent is None and declared.field_name is None
    assert valid.is_valid(), valid.errors
    assert not refused.is_valid()
    assert set(refused.errors) == {"amount", "accepted_currencies"}
    assert valid.validated_data["currency"] == merchant.default_fiat_currency
