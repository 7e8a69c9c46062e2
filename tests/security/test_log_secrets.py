"""No API key and no webhook secret in any log line: a realistic flow (create a key, use it, send
it wrong, create a webhook endpoint, rotate its secret, deliver an event) logged at DEBUG. The
code never logs a secret (raw messages), and what the handlers write holds none either."""

from __future__ import annotations

import logging

import pytest
from rest_framework.test import APIClient

from accounts import services
from notifications.dispatcher import dispatch_events
from notifications.models import Event
from testing.receivers import Receiver
from tests.security.log_secrets import SECRET, SecretScanner, app_handlers

pytestmark = pytest.mark.django_db


def test_given_a_flow_that_handles_every_kind_of_secret_when_logged_at_debug_then_no_line_holds_one(
    merchant, caplog
):
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    with Receiver() as receiver, SecretScanner() as scanner:
        _, key = services.api_key_create(
            merchant=merchant,
            name="flow",
            scopes=["payments:read", "payments:write", "webhooks:manage"],
        )
        shown.append(key)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        wrong = APIClient()
        # A different last character: a key that happens to end in "x" must not stay valid.
        forged = key[:-1] + ("y" if key.endswith("x") else "x")
        wrong.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")
        assert wrong.get("/api/v1/payments").status_code == 401

        created = api.post("/api/v1/webhook-endpoints", {"url": receiver.url}, format="json")
        shown.append(created.json()["secret"])
        rotated = api.post(f"/api/v1/webhook-endpoints/{created.json()['id']}/rotate-secret")
        shown.append(rotated.json()["secret"])
        payment = api.post(
            "/api/v1/payments", {"amount": "5.00", "crypto_currency": "BTC"}, format="json"
        ).json()
        event = Event.objects.get(subject=payment["id"], type="payment.created")
        dispatch_events(event_ids=[event.pk])
        assert len(receiver.requests) == 1  # delivered, signed with both secrets

    assert caplog.records  # the flow logged (the check below is not vacuous)
    assert app_handlers()  # and the lines were rendered by the application's own handlers
    raw = "\n".join(record.getMessage() for record in caplog.records)
    for secret in shown:
        assert secret not in raw
        assert secret[:-4] not in raw
    assert scanner.leaks == []


def test_given_a_line_holding_a_secret_when_scanned_then_it_is_caught():
    """The scanner can fail: a secret logged where no redaction runs is reported."""
    key = "cpk_" + "a1B2" * 11
    secret = "whsec_" + "Z9y8" * 8

    assert SECRET.search(f"created {key}") and SECRET.search(f"rotated to {secret}")
    assert not SECRET.search(f"API key {key[:16]} created")  # the prefix names a key
    assert not SECRET.search("whsec_[REDACTED] and cpk_abcdefghijkl[REDACTED]")
