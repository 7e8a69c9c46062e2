"""The buyer picks the coin: accepted_currencies at creation, payment_options and
selected_currency in the API, the pick (and switch) on the checkout, redirect and cancel URLs."""

from __future__ import annotations

import pytest
from django.test import Client

from notifications.models import Event
from payments.models import AddressIndex, Payment, PaymentEvent, PaymentOption
from payments.services import ObservedOutput, payment_apply_transaction
from tests.conftest import api_client_for
from tests.factories import MerchantFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/payments"


def create(api, **body):
    return api.post(URL, {"amount": "30.00", **body}, format="json")


def pick(payment_id: str, token: str, code: str, client: Client | None = None):
    return (client or Client()).post(
        f"/pay/{payment_id}/select?token={token}",
        {"crypto_currency": code},
        HTTP_ACCEPT="application/json",
    )


def token_of(body: dict) -> str:
    return body["checkout_url"].split("token=")[1]


def test_given_accepted_currencies_then_every_coin_is_priced_and_no_address_is_allocated(api):
    response = create(api, accepted_currencies=["BTC", "ETH", "LTC"])

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["selected_currency"] is None and body["crypto_currency"] is None
    assert body["accepted_currencies"] == ["BTC", "ETH", "LTC"]
    assert body["deposit_address"] is None
    assert body["crypto_amount"] is None and body["amount_due"] is None and body["quote"] is None
    options = {option["crypto_currency"]: option for option in body["payment_options"]}
    assert list(options) == ["BTC", "ETH", "LTC"]
    assert options["BTC"]["crypto_amount"] == "0.00050000"  # 30 USD at the test rate of 60 000
    assert options["BTC"]["quote"]["rate"] == "60000"
    assert all(o["deposit_address"] is None and not o["selected"] for o in options.values())
    assert not AddressIndex.objects.exists()  # no address used for coins nobody picked
    created = PaymentEvent.objects.get(payment__public_id=body["id"])
    assert created.data["accepted_currencies"] == ["BTC", "ETH", "LTC"]
    assert [o["quote"]["pair"] for o in created.data["options"]] == [
        "BTC-USD",
        "ETH-USD",
        "LTC-USD",
    ]


def test_given_no_coin_named_then_the_buyer_picks_from_every_coin_the_merchant_can_take(api):
    body = create(api).json()

    assert body["accepted_currencies"] == ["BTC", "LTC", "ETH", "USDC", "USDT"]  # the dev chain
    assert body["selected_currency"] is None


def test_given_no_wallet_and_no_dev_chain_then_creation_without_a_coin_is_refused(api, settings):
    settings.DEV_CHAIN_ENABLED = False

    response = create(api)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "wallet_not_configured"


def test_given_one_coin_then_it_is_the_payment_with_no_choice(api):
    body = create(api, crypto_currency="LTC").json()

    assert body["selected_currency"] == "LTC"
    assert body["accepted_currencies"] == ["LTC"]
    [option] = body["payment_options"]
    assert option["selected"] and option["deposit_address"] == body["deposit_address"]
    assert option["crypto_amount"] == body["crypto_amount"]
    assert option["quote"] == body["quote"]
    assert not PaymentOption.objects.exists()
    # One accepted coin is no choice either.
    single = create(api, accepted_currencies=["ETH"]).json()
    assert single["selected_currency"] == "ETH" and single["deposit_address"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"crypto_currency": "BTC", "accepted_currencies": ["ETH", "LTC"]}, "accepted_currencies"),
        ({"accepted_currencies": ["BTC", "BTC"]}, "accepted_currencies"),
        ({"accepted_currencies": []}, "accepted_currencies"),
        ({"accepted_currencies": ["DOGE", "BTC"]}, "accepted_currencies"),
        ({"accepted_currencies": "BTC"}, "accepted_currencies"),
    ],
)
def test_invalid_accepted_currencies_are_refused_in_the_error_shape(api, body, param):
    response = create(api, **body)

    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"].startswith(param)
    assert not Payment.objects.exists()


def test_given_the_buyer_picks_a_coin_then_its_quote_and_a_fresh_address_become_the_payments(api):
    body = create(api, accepted_currencies=["BTC", "ETH"]).json()

    state = pick(body["id"], token_of(body), "ETH").json()

    assert state["crypto_currency"] == "ETH" and state["step"] == "waiting"
    again = api.get(f"{URL}/{body['id']}").json()
    assert again["selected_currency"] == "ETH"
    assert again["deposit_address"].startswith("deveth1")
    eth = next(o for o in again["payment_options"] if o["crypto_currency"] == "ETH")
    btc = next(o for o in again["payment_options"] if o["crypto_currency"] == "BTC")
    assert eth["selected"] and eth["deposit_address"] == again["deposit_address"]
    assert btc["deposit_address"] is None and not btc["selected"]
    assert again["crypto_amount"] == eth["crypto_amount"] and again["quote"] == eth["quote"]
    assert again["required_confirmations"] == 1
    # The event (and so the webhook and the live stream) says which coin was picked.
    event = Event.objects.get(subject=body["id"], type="payment.currency_selected")
    assert event.data["crypto_currency"] == "ETH"
    assert event.data["previous_crypto_currency"] is None
    assert event.data["deposit_address"] == again["deposit_address"]
    assert event.data["quote"]["pair"] == "ETH-USD"
    assert event.data["payment"]["crypto_currency"] == "ETH"


def test_the_buyer_can_switch_until_a_payment_is_detected_and_each_coin_keeps_its_address(api):
    body = create(api, accepted_currencies=["BTC", "ETH"]).json()
    token = token_of(body)
    pick(body["id"], token, "ETH")
    eth_address = Payment.objects.get(public_id=body["id"]).deposit_address

    pick(body["id"], token, "BTC")
    btc_address = Payment.objects.get(public_id=body["id"]).deposit_address
    pick(body["id"], token, "ETH")
    payment = Payment.objects.get(public_id=body["id"])

    assert btc_address is not None and btc_address.startswith("devbtc1")
    assert payment.deposit_address == eth_address
    assert AddressIndex.objects.count() == 2  # one address per coin picked, however often
    switches = PaymentEvent.objects.filter(payment=payment, type="payment.currency_selected")
    assert [e.data["crypto_currency"] for e in switches] == ["ETH", "BTC", "ETH"]
    assert pick(body["id"], token, "ETH").json()["position"] == payment.event_sequence  # no-op

    payment_apply_transaction(
        payment=payment,
        output=ObservedOutput(chain="dev", txid="dev" + "1" * 60, output_index=0, amount=5,
                              confirmations=0),
    )  # fmt: skip
    refused = pick(body["id"], token, "BTC")

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "currency_locked"
    assert Payment.objects.get(pk=payment.pk).crypto_currency == "ETH"


def test_a_coin_not_offered_cannot_be_picked(api):
    body = create(api, accepted_currencies=["BTC", "ETH"]).json()

    refused = pick(body["id"], token_of(body), "LTC")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "currency_not_accepted"
    assert Payment.objects.get(public_id=body["id"]).crypto_currency == ""


def test_picking_needs_the_checkout_token():
    merchant = MerchantFactory()
    body = create(api_client_for(merchant), accepted_currencies=["BTC", "ETH"]).json()

    assert pick(body["id"], "wrong", "BTC").status_code == 404
    assert Payment.objects.get(public_id=body["id"]).crypto_currency == ""


def test_an_unpicked_payment_can_be_cancelled_and_expires_like_any_other(api):
    body = create(api, accepted_currencies=["BTC", "ETH"]).json()

    cancelled = api.post(f"{URL}/{body['id']}/cancel")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["amount_received"] is None


def test_redirect_and_cancel_urls_are_stored_and_returned(api):
    body = create(
        api, crypto_currency="BTC", redirect_url="https://shop.example/thanks?order=7",
        cancel_url="https://shop.example/cart",
    ).json()  # fmt: skip

    assert body["redirect_url"] == "https://shop.example/thanks?order=7"
    assert body["cancel_url"] == "https://shop.example/cart"


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "ftp://shop.example/",
        "http://127.0.0.1/thanks",
        "http://10.0.0.5/thanks",
        "http://[::1]/thanks",
        "http://localhost:8000/thanks",
        "https://intranet/thanks",
        "https://printer.local/",
        "https://user:secret@shop.example/",
        "https://shop.example/a b",
        "//shop.example/thanks",
        "https://" + "a" * 2000 + ".example/",
    ],
)
@pytest.mark.parametrize("field", ["redirect_url", "cancel_url"])
def test_return_urls_must_be_public_http_or_https(api, field, url):
    response = create(api, crypto_currency="BTC", **{field: url})

    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == field
    assert not Payment.objects.exists()
