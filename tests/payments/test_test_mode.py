"""Test mode, as Stripe does it: test keys (``cpk_test_…``) beside live keys; a test key's payments
are test payments (``livemode`` false) on the development chain whatever chains are configured,
paid with ``POST /payments/{id}/simulate``; each mode sees only its own payments, events and
webhook endpoints; webhooks and events say ``"livemode": false``; the admin keeps test objects
out of its default lists; live webhook metrics leave test endpoints out."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import Client
from prometheus_client import REGISTRY

from accounts.models import ApiKey
from accounts.services import api_key_split
from notifications import queues, signing
from notifications.dispatcher import Dispatcher, dispatch_events
from notifications.endpoints import webhook_endpoint_create
from notifications.metrics import sample_webhook_backlog
from notifications.models import Event, WebhookDelivery
from payments.management.commands.bootstrap_demo import demo_api_key
from payments.models import MerchantWallet, Payment
from payments.states import PaymentStatus, PaymentSubStatus
from testing.receivers import Receiver
from tests.conftest import api_client_for
from tests.factories import ApiKeyFactory, MerchantFactory, make_payment
from tests.payments.chains.conftest import random_account_xpub
from tests.payments.chains.helpers import poll_chain
from tests.payments.test_consumers import open_socket, run

pytestmark = pytest.mark.django_db

PAYMENT = {"amount": "30.00", "currency": "USD", "crypto_currency": "BTC"}


@pytest.fixture
def test_api(merchant):
    """``merchant``'s client with a test key (``api`` is its live one)."""
    return api_client_for(merchant, livemode=False)


def create(client, **fields) -> dict:
    response = client.post("/api/v1/payments", {**PAYMENT, **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def simulate(client, payment_id: str, body: dict | None = None, status: int = 200) -> dict:
    response = client.post(f"/api/v1/payments/{payment_id}/simulate", body or {}, format="json")
    assert response.status_code == status, response.content
    return response.json()


# --- keys ---------------------------------------------------------------------------------------


def test_given_a_test_key_then_it_reads_cpk_test_and_is_stored_as_test_mode(merchant):
    key, raw = ApiKeyFactory.create_with_secret(merchant=merchant, livemode=False)

    assert raw.startswith("cpk_test_") and len(raw) == len("cpk_test_") + 44
    assert key.livemode is False
    assert key.prefix == raw[: len("cpk_test_") + 12] == api_key_split(raw)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/payments").status_code == 200


def test_given_a_live_key_with_test_in_its_secret_then_it_is_still_a_live_key():
    """What follows a live key's cpk_ is alphanumeric: it can never be read as a test key."""
    assert api_key_split("cpk_" + "test" * 11) == "cpk_test" + "test" * 2
    assert api_key_split("cpk_test_" + "a" * 43) is None  # one short


def test_bootstrap_demo_creates_and_prints_a_test_key_beside_the_live_one_once():
    first, second = StringIO(), StringIO()
    call_command("bootstrap_demo", stdout=first)
    call_command("bootstrap_demo", stdout=second)

    live, test = demo_api_key(), demo_api_key(livemode=False)
    assert test.startswith("cpk_test_") and f"test API key   {test}" in first.getvalue()
    assert f"API key        {live}" in first.getvalue()
    assert first.getvalue() == second.getvalue()
    keys = ApiKey.objects.filter(prefix__in=[api_key_split(live), api_key_split(test)])
    assert sorted(keys.values_list("livemode", flat=True)) == [False, True]


def test_create_api_key_command_makes_a_working_test_key(merchant):
    out = StringIO()
    call_command("create_api_key", merchant.public_id, "--name", "ci", "--test", stdout=out)

    raw = out.getvalue().strip().splitlines()[-1]
    assert raw.startswith("cpk_test_")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    created = client.post("/api/v1/payments", PAYMENT, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["livemode"] is False


def test_the_admin_adds_a_test_key_when_test_mode_is_chosen(merchant, admin_client):
    response = admin_client.post(
        "/admin/accounts/apikey/add/",
        {"merchant": merchant.pk, "name": "staging", "mode": "test", "scopes": ["payments:read"]},
    )

    assert response.status_code == 200, response.content
    key = ApiKey.objects.get(merchant=merchant, name="staging")
    assert key.livemode is False and key.prefix.startswith("cpk_test_")
    assert "cpk_test_" in response.content.decode()  # the secret, shown once


# --- payments per mode --------------------------------------------------------------------------


def test_given_real_chains_and_a_wallet_then_a_test_payment_still_gets_a_dev_chain_address(
    settings, merchant, api, test_api
):
    settings.DEV_CHAIN_ENABLED = False
    settings.CHAINS = {"litecoin": {"kind": "utxo", "currency": "LTC", "hrp": "rltc",
                                    "nodes": ["http://127.0.0.1:1"]}}  # fmt: skip
    MerchantWallet.objects.create(
        merchant=merchant, crypto_currency="LTC", extended_public_key=random_account_xpub("utxo")
    )

    live = create(api, crypto_currency="LTC")
    test = create(test_api, crypto_currency="LTC")

    assert (live["livemode"], live["deposit_address"][:6]) == (True, "rltc1q")
    assert (test["livemode"], test["deposit_address"][:6]) == (False, "devltc")
    # The wallet's address counter is untouched by test payments: the next live one is index 1.
    assert create(api, crypto_currency="LTC")["deposit_address"] != live["deposit_address"]
    assert Payment.objects.get(public_id=test["id"]).derivation_index == 0


def test_each_mode_lists_and_finds_only_its_own_payments(api, test_api):
    live = create(api)
    test = create(test_api)

    assert [p["id"] for p in api.get("/api/v1/payments").json()["data"]] == [live["id"]]
    assert [p["id"] for p in test_api.get("/api/v1/payments").json()["data"]] == [test["id"]]
    for client, other in ((api, test), (test_api, live)):
        missing = client.get(f"/api/v1/payments/{other['id']}")
        assert missing.status_code == 404
        error = missing.json()["error"]
        # Stripe's hint for a key mix-up: the merchant's own payment, in the other mode.
        assert error["code"] == "not_found" and "exists in" in error["message"]
        cursor = client.get("/api/v1/payments", {"starting_after": other["id"]})
        assert cursor.json()["error"]["code"] == "invalid_cursor"
        cancelled = client.post(f"/api/v1/payments/{other['id']}/cancel", format="json")
        assert cancelled.status_code == 404
    assert Payment.objects.get(public_id=live["id"]).status == PaymentStatus.PENDING


def test_an_order_id_tried_in_test_mode_stays_free_for_the_live_order(api, test_api):
    """Also no idempotent replay across modes: the key derived from the order id is per mode."""
    test = create(test_api, order_id="1001")
    live = create(api, order_id="1001")

    assert live["id"] != test["id"]
    assert (live["livemode"], test["livemode"]) == (True, False)
    again = test_api.post("/api/v1/payments", {**PAYMENT, "order_id": "1001"}, format="json")
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == test["id"]


# --- simulate -----------------------------------------------------------------------------------


def test_a_live_key_cannot_simulate_even_its_own_dev_chain_payment(api):
    payment = create(api)

    error = simulate(api, payment["id"], status=403)["error"]

    assert (error["type"], error["code"]) == ("permission_error", "test_mode_only")
    assert "cpk_test_" in error["message"]
    assert Payment.objects.get(public_id=payment["id"]).amount_received == 0


def test_simulate_pays_in_parts_then_confirms_an_earlier_transaction(settings, test_api):
    settings.DEV_CHAIN_ENABLED = False  # test payments do not need it
    payment = create(test_api)  # 30 USD at 60000 = 0.00050000 BTC, one confirmation required
    assert payment["crypto_amount"] == "0.00050000"

    part = simulate(test_api, payment["id"], {"amount": "0.0002"})
    assert (part["amount_base_units"], part["confirmations"]) == ("20000", 1)
    assert part["payment"]["sub_status"] == PaymentSubStatus.PAID_PARTIAL
    rest = simulate(test_api, payment["id"], {"amount_base_units": 30000, "confirmations": 0})
    assert rest["payment"]["status"] == PaymentStatus.PROCESSING
    assert rest["payment"]["livemode"] is False

    done = simulate(test_api, payment["id"], {"txid": rest["txid"], "confirmations": 1})

    assert done["payment"]["status"] == PaymentStatus.SETTLED
    assert done["payment"]["amount_confirmed"] == "0.00050000"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"amount": "0.000000001"}, "amount", "invalid_amount"),  # more than BTC's 8 decimals
        ({"amount": "-1"}, "amount", "invalid_amount"),
        ({"amount": "1e-4"}, "amount", "invalid"),
        ({"amount": 0.0001}, "amount", "invalid"),  # a JSON number is not a coin string
        ({"amount_base_units": 0}, "amount_base_units", "not_positive"),
        ({"amount_base_units": 1.5}, "amount_base_units", "invalid"),
        ({"amount_base_units": True}, "amount_base_units", "invalid"),
        ({"amount_base_units": "12ab"}, "amount_base_units", "invalid"),
        ({"amount": "0.1", "amount_base_units": 1}, "amount", "parameter_conflict"),
        ({"txid": "dev00", "amount": "0.1"}, "txid", "parameter_conflict"),
        ({"confirmations": -1}, "confirmations", "invalid"),
        ({"confirmations": 10**7}, "confirmations", "invalid"),
        ({"amout": "0.1"}, "amout", "parameter_unknown"),
    ],
)
def test_bad_simulate_bodies_are_400s_in_the_error_shape(test_api, body, param, code):
    payment = create(test_api)

    error = simulate(test_api, payment["id"], body, status=400)["error"]

    assert (error["param"], error["code"]) == (param, code)
    assert Payment.objects.get(public_id=payment["id"]).amount_received == 0


def test_simulating_what_cannot_be_paid_is_a_409(test_api):
    payment = create(test_api)
    simulate(test_api, payment["id"])  # paid in full

    nothing_due = simulate(test_api, payment["id"], status=409)["error"]
    unknown_tx = simulate(test_api, payment["id"], {"txid": "dev" + "0" * 60}, status=409)

    assert (
        nothing_due["code"] == "simulation_refused" and "Nothing is due" in nothing_due["message"]
    )
    assert unknown_tx["error"]["code"] == "simulation_refused"


def test_simulating_a_coin_choice_payment_before_the_buyer_picks_is_a_409(settings, test_api):
    settings.DEV_CHAIN_ENABLED = False  # test payments still take every coin
    response = test_api.post(
        "/api/v1/payments",
        {"amount": "30.00", "currency": "USD", "accepted_currencies": ["BTC", "ETH"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    payment = response.json()

    error = simulate(test_api, payment["id"], {"amount": "0.0001"}, status=409)["error"]

    assert error["code"] == "simulation_refused" and "not picked a coin" in error["message"]


def test_simulate_with_an_idempotency_key_pays_once(test_api):
    payment = create(test_api)
    body, headers = {"amount": "0.0001"}, {"HTTP_IDEMPOTENCY_KEY": "sim-1"}
    url = f"/api/v1/payments/{payment['id']}/simulate"

    first = test_api.post(url, body, format="json", **headers)
    second = test_api.post(url, body, format="json", **headers)

    assert second.headers.get("Idempotent-Replayed") == "true"
    assert first.json()["txid"] == second.json()["txid"]
    assert Payment.objects.get(public_id=payment["id"]).amount_received == 10000


def test_the_checkout_of_a_test_payment_says_test_mode_and_can_simulate(settings, merchant):
    settings.DEV_CHAIN_ENABLED = False
    payment = make_payment(merchant=merchant, livemode=False)
    page = f"/pay/{payment.public_id}/?token={payment.checkout_token}"

    html = Client().get(page).content.decode()
    paid = Client().post(
        f"/pay/{payment.public_id}/simulate?token={payment.checkout_token}",
        HTTP_ACCEPT="application/json",
    )

    assert 'id="test-mode"' in html and 'id="simulate"' in html
    assert paid.status_code == 200 and paid.json()["status"] == PaymentStatus.SETTLED


# --- events, endpoints, deliveries --------------------------------------------------------------


def test_events_and_webhook_endpoints_are_per_mode(merchant, api, test_api):
    live_payment, test_payment = create(api), create(test_api)
    created = test_api.post(
        "/api/v1/webhook-endpoints", {"url": "http://127.0.0.1:9/test"}, format="json"
    )
    assert created.status_code == 201, created.content
    endpoint = created.json()
    assert endpoint["livemode"] is False

    test_events = test_api.get("/api/v1/events").json()["data"]
    live_events = api.get("/api/v1/events").json()["data"]

    assert {e["subject"] for e in test_events} == {test_payment["id"]}
    assert {e["livemode"] for e in test_events} == {False}
    assert test_events[0]["data"]["payment"]["livemode"] is False
    assert {e["subject"] for e in live_events} == {live_payment["id"]}
    assert api.get("/api/v1/webhook-endpoints").json()["data"] == []
    assert api.get(f"/api/v1/webhook-endpoints/{endpoint['id']}").status_code == 404
    assert api.get(f"/api/v1/events/{test_events[0]['id']}").status_code == 404
    assert test_api.get(f"/api/v1/events/{live_events[0]['id']}").status_code == 404


def test_a_test_event_goes_to_test_endpoints_only_and_has_its_own_stream_positions(merchant):
    with Receiver() as live_receiver, Receiver() as test_receiver:
        webhook_endpoint_create(owner=merchant.public_id, url=live_receiver.url)
        webhook_endpoint_create(owner=merchant.public_id, url=test_receiver.url, livemode=False)
        live = make_payment(merchant=merchant)
        test = make_payment(merchant=merchant, livemode=False)
        events = list(Event.objects.filter(owner=merchant.public_id).order_by("pk"))

        dispatch_events(event_ids=[event.pk for event in events])

        assert [json.loads(r.body)["subject"] for r in live_receiver.requests] == [live.public_id]
        (received,) = test_receiver.requests
        envelope = json.loads(received.body)
        assert (envelope["subject"], envelope["livemode"]) == (test.public_id, False)
    for event in events:
        event.refresh_from_db()
    # Each mode's stream counts from 1 without gaps: a client of one never waits for the other's.
    assert [(e.livemode, e.stream_position) for e in events] == [(True, 1), (False, 1)]


@pytest.mark.django_db(transaction=True)
def test_a_test_keys_merchant_stream_carries_the_test_events_only():
    merchant = MerchantFactory.create()
    _, test_key = ApiKeyFactory.create_with_secret(merchant=merchant, livemode=False)
    make_payment(merchant=merchant)
    test = make_payment(merchant=merchant, livemode=False)
    events = list(Event.objects.filter(owner=merchant.public_id).order_by("pk"))

    async def scenario() -> None:
        socket = await open_socket(
            "/ws/merchant/", [(b"authorization", f"Bearer {test_key}".encode())]
        )
        subscribed = await socket.receive_json_from(timeout=5)
        assert subscribed["stream"] == f"merchant:{merchant.public_id}:test"
        await sync_to_async(dispatch_events)(event_ids=[event.pk for event in events])

        message = await socket.receive_json_from(timeout=5)

        assert message["position"] == 1
        assert (message["event"]["subject"], message["event"]["livemode"]) == (
            test.public_id,
            False,
        )
        assert await socket.receive_nothing(timeout=0.3)  # the live payment's event is not here
        await socket.disconnect()

    run(scenario())


def test_live_webhook_metrics_leave_test_endpoints_out(merchant):
    webhook_endpoint_create(owner=merchant.public_id, url="http://127.0.0.1:9/live")
    webhook_endpoint_create(owner=merchant.public_id, url="http://127.0.0.1:9/t", livemode=False)
    make_payment(merchant=merchant)
    make_payment(merchant=merchant, livemode=False)
    dispatch_events(event_ids=list(Event.objects.values_list("pk", flat=True)))
    assert WebhookDelivery.objects.filter(status="pending").count() == 2  # both refused, retrying

    sample_webhook_backlog()

    assert REGISTRY.get_sample_value("cryptopay_webhook_backlog") == 1


# --- admin --------------------------------------------------------------------------------------


def test_the_admin_lists_live_payments_unless_test_ones_are_asked_for(merchant, admin_client):
    live = make_payment(merchant=merchant)
    test = make_payment(merchant=merchant, livemode=False)

    default = admin_client.get("/admin/payments/payment/").content.decode()
    tests = admin_client.get("/admin/payments/payment/?mode=test").content.decode()
    page = admin_client.get(f"/admin/payments/payment/{test.pk}/change/").content.decode()

    assert live.public_id in default and test.public_id not in default
    assert test.public_id in tests and live.public_id not in tests
    assert 'class="cp-test-badge"' in tests and "Test mode: these payments" in tests
    assert re.search(r"cryptopay/admin_test_mode\.(?:[0-9a-f]{12}\.)?css", tests)
    assert "Test mode: this payment was made with a test key" in page


def test_the_payments_export_holds_live_payments_unless_test_ones_are_asked_for(
    merchant, admin_client
):
    # Given a live and a test payment
    live = make_payment(merchant=merchant)
    test = make_payment(merchant=merchant, livemode=False)
    export = "/admin/payments/payment/export/"

    # When an operator exports the list as it opens, and then the test list
    def exported(query: str) -> list[str]:
        response = admin_client.get(export + query)
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        return [
            row["id"] for row in csv.DictReader(io.StringIO(response.content.decode("utf-8-sig")))
        ]

    # Then accounting's default export has the live payment only
    assert exported("") == [live.public_id]
    assert exported("?mode=test") == [test.public_id]


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_merchant_integrates_end_to_end_with_test_keys_while_a_real_chain_is_configured(
    settings, anvil
):
    """Create with a test key, simulate, receive the webhooks at a real receiver: livemode false,
    signed with the test endpoint's secret. The real chain (anvil) and the merchant's wallet are
    configured and the development chain is off for live payments; the live endpoint hears
    nothing of it, and the chain's watcher leaves the test payment alone."""
    settings.DEV_CHAIN_ENABLED = False
    settings.CHAINS = {"ethereum": {"kind": "evm", "currency": "ETH", "confirmations": 3,
                                    "nodes": [anvil.url]}}  # fmt: skip
    merchant = MerchantFactory.create()
    MerchantWallet.objects.create(
        merchant=merchant, crypto_currency="ETH", extended_public_key=random_account_xpub("evm")
    )
    live_api, test_api = api_client_for(merchant), api_client_for(merchant, livemode=False)
    with Receiver() as live_receiver, Receiver() as test_receiver:
        live_api.post("/api/v1/webhook-endpoints", {"url": live_receiver.url}, format="json")
        secret = test_api.post(
            "/api/v1/webhook-endpoints", {"url": test_receiver.url}, format="json"
        ).json()["secret"]
        live = create(live_api, crypto_currency="ETH")
        payment = create(test_api, crypto_currency="ETH", order_id="order-1")
        assert live["deposit_address"].startswith("0x")
        assert payment["deposit_address"].startswith("deveth")

        paid = simulate(test_api, payment["id"])  # what is due, at the chain's 3 confirmations
        poll_chain("ethereum")  # the real watcher runs beside it and leaves the test payment be
        dispatcher = Dispatcher()
        while sum(queues.sizes().values()):
            dispatcher.run_once()
        assert dispatcher.wait_idle(timeout=20)
        dispatcher.close()

    assert (paid["confirmations"], paid["payment"]["status"]) == (3, PaymentStatus.SETTLED)
    assert test_api.get(f"/api/v1/payments/{payment['id']}").json()["status"] == "settled"
    assert Payment.objects.get(public_id=payment["id"]).transactions.get().chain == "dev"
    now = int(time.time())
    for received in test_receiver.requests:
        assert signing.verify(body=received.body, header=received.signature, secret=secret, now=now)
    envelopes = sorted(
        (json.loads(r.body) for r in test_receiver.requests), key=lambda e: e["sequence"]
    )
    assert [e["type"] for e in envelopes] == [
        "payment.created", "transaction.detected", "payment.status_changed",
        "payment.status_changed",
    ]  # fmt: skip
    assert {(e["subject"], e["livemode"]) for e in envelopes} == {(payment["id"], False)}
    assert {e["data"]["payment"]["livemode"] for e in envelopes} == {False}
    assert envelopes[-1]["data"]["to"]["status"] == "settled"
    heard_live = [json.loads(r.body) for r in live_receiver.requests]
    assert [(e["subject"], e["livemode"]) for e in heard_live] == [(live["id"], True)]
