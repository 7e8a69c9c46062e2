"""Every write endpoint of /api/v1 refuses a request field it does not know, as Stripe does
("Received unknown parameter: amout", with `param` naming it), instead of silently ignoring a
misspelling; and nothing changes."""

from __future__ import annotations

import pytest

from notifications.endpoints import webhook_endpoint_create
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from payments.models import Payment
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

NOWHERE = "http://127.0.0.1:9/hooks"


def assert_unknown(response, name: str) -> None:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "parameter_unknown"
    assert error["param"] == name
    assert error["message"] == f"Received unknown parameter: {name}"


def endpoint_of(merchant) -> WebhookEndpoint:
    endpoint, _ = webhook_endpoint_create(owner=merchant.public_id, url=NOWHERE)
    return endpoint


def test_given_a_misspelt_amount_when_creating_a_payment_then_400_names_it_and_nothing_is_stored(
    api,
):
    response = api.post(
        "/api/v1/payments", {"amout": "10.00", "crypto_currency": "BTC"}, format="json"
    )

    assert_unknown(response, "amout")
    assert Payment.objects.count() == 0


def test_given_several_unknown_fields_when_creating_a_payment_then_each_is_listed(api):
    response = api.post(
        "/api/v1/payments",
        {"amount": "10.00", "crypto_currency": "BTC", "amout": "1", "colour": "red"},
        format="json",
    )

    assert_unknown(response, "amout")
    assert [e["param"] for e in response.json()["error"]["errors"]] == ["amout", "colour"]
    assert Payment.objects.count() == 0


def test_given_a_field_when_cancelling_a_payment_then_400_names_it_and_it_stays_pending(
    api, merchant
):
    payment = make_payment(merchant=merchant)

    response = api.post(
        f"/api/v1/payments/{payment.public_id}/cancel", {"reason": "dup"}, format="json"
    )

    assert_unknown(response, "reason")
    payment.refresh_from_db()
    assert payment.status == "pending"


def test_given_no_field_when_cancelling_a_payment_then_it_is_cancelled(api, merchant):
    payment = make_payment(merchant=merchant)

    response = api.post(f"/api/v1/payments/{payment.public_id}/cancel", {}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"


def test_given_a_misspelt_field_when_creating_a_webhook_endpoint_then_400_and_nothing_is_stored(
    api,
):
    response = api.post(
        "/api/v1/webhook-endpoints", {"url": NOWHERE, "event_type": ["x"]}, format="json"
    )

    assert_unknown(response, "event_type")
    assert WebhookEndpoint.objects.count() == 0


def test_given_a_misspelt_field_when_updating_a_webhook_endpoint_then_400_and_it_is_unchanged(
    api, merchant
):
    endpoint = endpoint_of(merchant)

    response = api.patch(
        f"/api/v1/webhook-endpoints/{endpoint.public_id}",
        {"url": "http://127.0.0.1:8/other", "enabeld": False},
        format="json",
    )

    assert_unknown(response, "enabeld")
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.enabled) == (NOWHERE, True)


def test_given_a_field_when_rotating_a_webhook_secret_then_400_and_the_secret_is_unchanged(
    api, merchant
):
    endpoint = endpoint_of(merchant)
    secret_before = endpoint.secret_encrypted

    response = api.post(
        f"/api/v1/webhook-endpoints/{endpoint.public_id}/rotate-secret",
        {"keep_old": True},
        format="json",
    )

    assert_unknown(response, "keep_old")
    endpoint.refresh_from_db()
    assert endpoint.secret_encrypted == secret_before
    assert endpoint.previous_secret_encrypted == ""


def test_given_a_field_when_deleting_a_webhook_endpoint_then_400_and_it_still_exists(api, merchant):
    endpoint = endpoint_of(merchant)

    response = api.delete(
        f"/api/v1/webhook-endpoints/{endpoint.public_id}", {"force": True}, format="json"
    )

    assert_unknown(response, "force")
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk).exists()


def test_given_a_misspelt_field_when_redelivering_an_event_then_400_and_nothing_is_attempted(
    api, merchant
):
    event = Event.objects.get(
        subject=make_payment(merchant=merchant).public_id, type="payment.created"
    )

    response = api.post(
        f"/api/v1/events/{event.public_id}/redeliver", {"endpiont": "we_x"}, format="json"
    )

    assert_unknown(response, "endpiont")
    assert WebhookDelivery.objects.count() == 0
