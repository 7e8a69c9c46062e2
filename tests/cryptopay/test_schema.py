"""The OpenAPI schema is valid, lists every endpoint, and describes what the API really returns."""

from __future__ import annotations

from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from openapi_schema_validator import OAS30Validator

from tests.conftest import api_client_for
from tests.factories import make_payment
from tests.routes import api_url_patterns

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    out = StringIO()
    with django_db_blocker.unblock():
        call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    return yaml.safe_load(out.getvalue())


def api_routes() -> set[str]:
    """Every /api/v1/ route Django knows, in OpenAPI path syntax."""
    return {path for path, _ in api_url_patterns()}


def validate(schema: dict, component: str, instance) -> None:
    wrapper = {"$ref": f"#/components/schemas/{component}", "components": schema["components"]}
    OAS30Validator(wrapper).validate(instance)


def test_the_schema_lists_every_api_endpoint_with_its_methods(schema):
    assert set(schema["paths"]) == api_routes()
    assert set(schema["paths"]["/api/v1/payments"]) == {"get", "post"}
    assert set(schema["paths"]["/api/v1/payments/{public_id}/cancel"]) == {"post"}
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_real_responses_match_the_schema(schema, merchant):
    api = api_client_for(merchant)
    created = api.post(
        "/api/v1/payments", {"amount": "5.00", "crypto_currency": "USDC"}, format="json"
    )
    make_payment(merchant=merchant, order_id="o-1", description="d", metadata={"a": "b"})
    listed = api.get("/api/v1/payments")
    cancelled = api.post(f"/api/v1/payments/{created.json()['id']}/cancel")
    not_found = api.get("/api/v1/payments/pay_missing")
    invalid = api.post("/api/v1/payments", {}, format="json")

    validate(schema, "Payment", created.json())
    validate(schema, "PaymentList", listed.json())
    validate(schema, "Payment", cancelled.json())
    validate(schema, "Error", not_found.json())
    validate(schema, "Error", invalid.json())


def test_an_invalid_payment_does_not_match_the_schema(schema, merchant):
    """The check above can fail: a response missing a field is rejected."""
    api = api_client_for(merchant)
    body = api.post(
        "/api/v1/payments", {"amount": "5.00", "crypto_currency": "BTC"}, format="json"
    ).json()
    del body["status"]

    with pytest.raises(Exception, match="status"):
        validate(schema, "Payment", body)


def test_the_schema_and_docs_are_served(client):
    assert client.get("/api/schema/").status_code == 200
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"redoc" in docs.content.lower()


def test_every_request_body_refuses_unknown_fields_as_the_api_does(schema):
    bodies = [
        media["schema"]["$ref"].rsplit("/", 1)[-1]
        for operations in schema["paths"].values()
        for operation in operations.values()
        for media in operation.get("requestBody", {}).get("content", {}).values()
    ]

    assert "PaymentCreateRequest" in bodies
    for name in bodies:
        assert schema["components"]["schemas"][name]["additionalProperties"] is False, name


def test_the_amount_pattern_admits_ascii_digits_only(schema):
    amount = schema["components"]["schemas"]["PaymentCreateRequest"]["properties"]["amount"]
    (string,) = [option for option in amount["oneOf"] if option["type"] == "string"]

    assert "\\d" not in string["pattern"]
