"""Schemathesis against the OpenAPI schema the gateway serves at /api/schema/, every operation,
with a valid API key: no 5xx, and every answer (status, headers, body) matches the schema.

Requests go through Django's WSGI handler in this process, inside the test's transaction. Half
of the examples aim at objects that exist (a pending payment, a webhook endpoint, an event of the
merchant) so the fuzzer gets past the 404s into the handlers. Short and deterministic here
(FUZZ_EXAMPLES, default 5 per operation); `make fuzz` runs many more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from accounts.models import ApiKeyScope, Merchant, random_token
from accounts.services import (
    API_KEY_PREFIX,
    API_KEY_PREFIX_LENGTH,
    API_KEY_SECRET_LENGTH,
    api_key_create,
)
from cryptopay.currencies import FIAT_EXPONENTS
from notifications.endpoints import webhook_endpoint_create
from notifications.models import Event
from payments.currencies import CRYPTO_CURRENCIES
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))

APP = WSGIHandler()
schema = schemathesis.openapi.from_wsgi("/api/schema/", APP)


@pytest.fixture(autouse=True)
def _requests_share_the_test_transaction() -> Iterator[None]:
    """Django closes the connection after each request; inside the test's transaction that would
    throw the transaction away. Its test client does the same as this."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _every_pair_priced(settings) -> None:
    """The suite has no live providers; with a static rate for every pair a 503 rate_unavailable
    is an outage the fuzzer did not cause, so it is not one to count against the API."""
    settings.RATES_ALLOW_STATIC_FALLBACK = True
    settings.FALLBACK_RATES = {
        f"{crypto}-{fiat}": Decimal("1234.5")
        for crypto in CRYPTO_CURRENCIES
        for fiat in FIAT_EXPONENTS
    }


# The key every case carries; each test installs it for a merchant of its own. Cases are built
# when the tests are collected (before any database), so the key is fixed up front.
FUZZ_KEY = API_KEY_PREFIX + random_token(API_KEY_PREFIX_LENGTH + API_KEY_SECRET_LENGTH)


@schema.auth(refresh_interval=None)
class MerchantKey:
    """Sent on every case except those that drop the header on purpose (to check the 401)."""

    def get(self, case, context) -> str:
        return FUZZ_KEY

    def set(self, case, data: str, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@dataclass
class Caller:
    merchant: Merchant

    def existing_ids(self) -> dict[str, str]:
        """A fresh pending payment, webhook endpoint and event of this merchant (an example may
        have cancelled or deleted the previous ones)."""
        payment = make_payment(merchant=self.merchant)
        endpoint, _ = webhook_endpoint_create(
            owner=self.merchant.public_id, url="http://127.0.0.1:9/hooks"
        )
        event = Event.objects.get(subject=payment.public_id, type="payment.created")
        return {
            "payments": payment.public_id,
            "webhook-endpoints": endpoint.public_id,
            "events": event.public_id,
        }


@pytest.fixture
def caller(merchant) -> Caller:
    api_key_create(
        merchant=merchant, name="fuzz", scopes=list(ApiKeyScope.values), raw_key=FUZZ_KEY
    )
    return Caller(merchant=merchant)


def aim_at_existing_objects(case, ids: dict[str, str]) -> None:
    collection = case.path.split("/")[3]  # /api/v1/<collection>/...
    if "public_id" in (case.path_parameters or {}):
        case.path_parameters["public_id"] = ids[collection]
    if case.query and "starting_after" in case.query:
        case.query["starting_after"] = ids[collection]
    if isinstance(case.body, dict) and "endpoint" in case.body:
        case.body["endpoint"] = ids["webhook-endpoints"]


# 400s for schema-valid requests that break a rule the schema cannot state. Each is documented
# in the operation's description or the field's help text; anything else is a finding.
RULES_BEYOND_THE_SCHEMA = {
    # `starting_after` must name an object of this merchant: the schema cannot say which exist.
    ("starting_after", "invalid_cursor"),
    # Decimal places depend on the currency sent beside the amount (JPY 0, USD 2, KWD 3).
    ("amount", "invalid_amount_precision"),
    # A decimal string has no maximum in JSON Schema.
    ("amount", "amount_too_large"),
    # Metadata limits on key length and total size (OpenAPI 3.0 has no propertyNames).
    ("metadata", "invalid_metadata_key"),
    ("metadata", "metadata_too_large"),
    # `format: uri` admits hosts Django's URL validator refuses (labels over 63 characters...).
    ("url", "invalid"),
    # Return URLs must be public http(s) (help text): the schema cannot say "public".
    ("redirect_url", "invalid_url"),
    ("cancel_url", "invalid_url"),
    # One coin or a list of coins, not both; each coin once (help text).
    ("accepted_currencies", "conflict"),
    ("accepted_currencies", "duplicate_currency"),
    # A key is one request: the fuzzer reusing an Idempotency-Key with another body gets a 422.
    ("Idempotency-Key", "idempotency_key_reused"),
}


def breaks_a_rule_beyond_the_schema(response) -> bool:
    if response.status_code not in (400, 422):
        return False
    error = response.json()["error"]
    return (error["param"], error["code"]) in RULES_BEYOND_THE_SCHEMA


@schema.parametrize()
@pytest.mark.parametrize("existing", [False, True], ids=["generated-ids", "existing-ids"])
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_given_a_valid_key_when_fuzzing_every_operation_then_no_5xx_and_answers_match_the_schema(
    case, existing, caller
):
    if existing:
        aim_at_existing_objects(case, caller.existing_ids())

    response = case.call()

    excluded = [positive_data_acceptance] if breaks_a_rule_beyond_the_schema(response) else []
    case.validate_response(response, excluded_checks=excluded)
