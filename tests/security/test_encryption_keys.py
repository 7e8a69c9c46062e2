"""Webhook secrets survive key rotation. They are encrypted with MultiFernet over
CRYPTOPAY_ENCRYPTION_KEYS (first encrypts, all decrypt), or SECRET_KEY plus SECRET_KEY_FALLBACKS;
``manage.py rotate_encryption_key`` re-encrypts them under the first key. A secret no key decrypts
fails its deliveries with a clear reason (never an exception), logs an ERROR naming the endpoint
(never the secret), degrades ``webhooks:secrets`` on /health/external and is flagged in the admin.
Deliveries go to a real HTTP receiver and are verified with the secret the merchant was shown."""

from __future__ import annotations

import io
import logging

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.test import Client

from notifications import endpoint_secrets, signing
from notifications.delivery import signing_secrets
from notifications.dispatcher import dispatch_events
from notifications.endpoints import webhook_endpoint_create, webhook_endpoint_rotate_secret
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from testing.receivers import Receiver
from tests.factories import make_payment, staff_client

pytestmark = pytest.mark.django_db

OLD_SECRET_KEY = "old-secret-key-" + "o" * 40
NEW_SECRET_KEY = "new-secret-key-" + "n" * 40


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


@pytest.fixture
def keys(settings):
    """Start from SECRET_KEY alone, as every install before CRYPTOPAY_ENCRYPTION_KEYS did."""
    settings.SECRET_KEY = OLD_SECRET_KEY
    settings.SECRET_KEY_FALLBACKS = []
    settings.ENCRYPTION_KEYS = []
    settings.WEBHOOK_SECRETS_KEY = ""
    return settings


def deliver_one(merchant) -> WebhookDelivery:
    payment = make_payment(merchant=merchant)
    event = Event.objects.get(owner=merchant.public_id, subject=payment.public_id)
    dispatch_events(event_ids=[event.pk])
    return WebhookDelivery.objects.get(event=event)


def assert_verifies(receiver: Receiver, secret: str, now: int) -> None:
    received = receiver.requests[-1]
    assert signing.verify(body=received.body, header=received.signature, secret=secret, now=now)


def test_given_secrets_under_the_old_secret_key_when_it_rotates_with_a_fallback_then_they_sign(
    keys, merchant, receiver, frozen_clock
):
    _, secret = webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)

    keys.SECRET_KEY, keys.SECRET_KEY_FALLBACKS = NEW_SECRET_KEY, [OLD_SECRET_KEY]
    delivery = deliver_one(merchant)

    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert_verifies(receiver, secret, int(frozen_clock.now().timestamp()))


def test_given_dedicated_keys_when_secret_key_rotates_without_fallback_then_secrets_still_sign(
    keys, merchant, receiver, frozen_clock
):
    keys.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    _, secret = webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)

    keys.SECRET_KEY = NEW_SECRET_KEY  # no fallback: sessions reset, webhook signing does not
    delivery = deliver_one(merchant)

    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert_verifies(receiver, secret, int(frozen_clock.now().timestamp()))


def test_given_a_new_key_first_when_rotate_encryption_key_runs_then_the_old_keys_can_go(
    keys, merchant, receiver, frozen_clock
):
    endpoint, first = webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)
    second = webhook_endpoint_rotate_secret(endpoint=endpoint)  # the first is in its overlap
    generated = io.StringIO()
    call_command("rotate_encryption_key", "--generate-key", stdout=generated)
    new_key = generated.getvalue().strip()
    Fernet(new_key)  # a real Fernet key
    keys.ENCRYPTION_KEYS = [new_key]

    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    keys.SECRET_KEY = NEW_SECRET_KEY  # the old key is gone everywhere
    endpoint.refresh_from_db()

    assert "re-encrypted 2 secret(s)" in out.getvalue()
    assert signing_secrets(endpoint) == [second, first]
    assert deliver_one(merchant).status == WebhookDelivery.Status.SUCCEEDED
    now = int(frozen_clock.now().timestamp())
    assert_verifies(receiver, second, now)
    assert_verifies(receiver, first, now)


def test_given_a_secret_no_key_decrypts_when_delivering_then_an_operator_is_told_not_a_crash(
    keys, merchant, receiver, caplog, django_user_model
):
    endpoint, secret = webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)
    keys.SECRET_KEY = NEW_SECRET_KEY  # rotated without a fallback: the old key is lost

    with caplog.at_level(logging.ERROR, logger="notifications.delivery"):
        delivery = deliver_one(merchant)

    # The delivery failed with a clear reason; nothing reached the receiver unsigned.
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert "cannot be decrypted" in delivery.last_error
    assert receiver.requests == []
    # An ERROR line names the endpoint and its merchant, never the secret.
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(endpoint.public_id in line and merchant.public_id in line for line in errors)
    assert not any(secret in line or "whsec_" in line for line in errors)
    # /health/external: webhooks:secrets degraded, naming the endpoint.
    check = staff_client().get("/health/external", HTTP_ACCEPT="application/json").json()["checks"]
    assert check["webhooks:secrets"]["status"] == "degraded"
    assert endpoint.public_id in check["webhooks:secrets"]["message"]
    # The admin flags it on the list and the endpoint's page.
    admin = Client()
    admin.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", None))
    listing = admin.get("/admin/notifications/webhookendpoint/").content.decode()
    page = admin.get(f"/admin/notifications/webhookendpoint/{endpoint.pk}/change/")
    assert "unreadable" in listing
    assert "unreadable" in page.content.decode()


def test_given_a_lost_key_when_the_webhook_secret_is_rotated_then_the_next_delivery_signs_at_once(
    keys, merchant, receiver, frozen_clock
):
    endpoint, _ = webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)
    keys.SECRET_KEY = NEW_SECRET_KEY  # the old secret is unreadable from now on

    fresh = webhook_endpoint_rotate_secret(endpoint=endpoint)  # its overlap lasts 24 h
    delivery = deliver_one(merchant)

    assert delivery.status == WebhookDelivery.Status.SUCCEEDED  # not after the 24 h overlap
    assert_verifies(receiver, fresh, int(frozen_clock.now().timestamp()))
    check = staff_client().get("/health/external", HTTP_ACCEPT="application/json").json()["checks"]
    assert check["webhooks:secrets"]["status"] == "ok"


def test_given_unreadable_secrets_when_rotate_encryption_key_runs_then_it_names_them_and_fails(
    keys, merchant
):
    lost, _ = webhook_endpoint_create(owner=merchant.public_id, url="http://127.0.0.1:9/a")
    keys.SECRET_KEY = NEW_SECRET_KEY
    kept, kept_secret = webhook_endpoint_create(
        owner=merchant.public_id, url="http://127.0.0.1:9/b"
    )
    before = WebhookEndpoint.objects.get(pk=lost.pk).secret_encrypted
    keys.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    with pytest.raises(CommandError, match=lost.public_id) as failed:
        call_command("rotate_encryption_key", stdout=io.StringIO())

    assert kept.public_id not in str(failed.value)
    assert WebhookEndpoint.objects.get(pk=lost.pk).secret_encrypted == before
    keys.SECRET_KEY = "yet-another-" + "y" * 40
    assert (
        endpoint_secrets.decrypt(WebhookEndpoint.objects.get(pk=kept.pk).secret_encrypted)
        == kept_secret
    )
