"""Merchant isolation over every /api/v1 route, enumerated from the URL resolver so a new endpoint
is covered the day it is added: merchant B's key on merchant A's objects answers 404 for every
method, and A's objects are exactly as they were. Lists and cursors never show A's objects. The
same in test mode: B's test key on A's test objects. (Routes for test mode only answer a live key
403 ``test_mode_only`` before looking anything up.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest
from django.forms.models import model_to_dict
from django.urls import resolve

from accounts.models import ApiKey
from notifications.dispatcher import dispatch_events
from notifications.endpoints import webhook_endpoint_create
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from payments.models import Payment
from tests.conftest import api_client_for
from tests.factories import MerchantFactory, make_payment
from tests.routes import api_url_patterns

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")
# A body the owner could send, so B's 404 is the object's absence, not a validation error.
BODIES = {"patch": {"description": "taken over", "enabled": False}, "post": {}}
# Test helpers: a live key is refused whatever the object.
TEST_MODE_ONLY = {"/api/v1/payments/{public_id}/simulate"}


@dataclass(frozen=True)
class Route:
    template: str  # /api/v1/payments/{public_id}/cancel
    methods: tuple[str, ...]

    @property
    def collection(self) -> str:
        return self.template.split("/")[3]

    @property
    def has_id(self) -> bool:
        return "{" in self.template

    def __str__(self) -> str:
        return self.template


def api_routes() -> list[Route]:
    return [
        Route(path, tuple(m for m in METHODS if hasattr(cast(Any, pattern.callback).view_class, m)))
        for path, pattern in api_url_patterns()
    ]


ROUTES = api_routes()
OBJECT_ROUTES = [(route, method) for route in ROUTES if route.has_id for method in route.methods]
LIST_ROUTES = [route for route in ROUTES if not route.has_id and "get" in route.methods]


@dataclass
class Owner:
    """Merchant A with one object of every kind, and what they look like in the database."""

    payment: Payment
    endpoint: WebhookEndpoint
    event: Event

    @classmethod
    def create(cls, *, livemode: bool = True) -> Owner:
        """In one mode: a test payment, endpoint and event when ``livemode`` is False."""
        merchant = MerchantFactory.create()
        payment = make_payment(merchant=merchant, livemode=livemode)
        endpoint, _ = webhook_endpoint_create(
            owner=merchant.public_id, url="http://127.0.0.1:9/hooks", livemode=livemode
        )
        event = Event.objects.get(subject=payment.public_id, type="payment.created")
        dispatch_events(event_ids=[event.pk])  # a delivery exists: redelivery could act
        return cls(payment=payment, endpoint=endpoint, event=event)

    def id_for(self, collection: str) -> str:
        ids = {
            "payments": self.payment.public_id,
            "webhook-endpoints": self.endpoint.public_id,
            "events": self.event.public_id,
        }
        assert collection in ids, f"add an object of /api/v1/{collection} to Owner.create"
        return ids[collection]

    def snapshot(self) -> dict:
        merchant = self.payment.merchant
        return {
            "payments": [model_to_dict(p) for p in Payment.objects.filter(merchant=merchant)],
            "endpoints": [
                model_to_dict(e)
                for e in WebhookEndpoint.objects.filter(owner=merchant.public_id).order_by("pk")
            ],
            "events": Event.objects.filter(owner=merchant.public_id).count(),
            "deliveries": [
                model_to_dict(d)
                for d in WebhookDelivery.objects.filter(endpoint=self.endpoint).order_by("pk")
            ],
            "keys": ApiKey.objects.filter(merchant=merchant).count(),
        }


@pytest.fixture(params=[True, False], ids=["live", "test"])
def livemode(request) -> bool:
    return request.param


@pytest.fixture
def owner(livemode) -> Owner:
    return Owner.create(livemode=livemode)


def test_the_matrix_covers_every_api_route():
    """The enumeration works: it finds the routes we know of (and every one added later)."""
    templates = {route.template for route in ROUTES}

    assert {"/api/v1/payments/{public_id}", "/api/v1/events/{public_id}/redeliver"} <= templates
    assert len(OBJECT_ROUTES) >= 9  # 6 routes with an id, 9 methods on them today


@pytest.mark.parametrize(("route", "method"), OBJECT_ROUTES, ids=lambda v: str(v))
def test_given_merchant_bs_key_when_it_reads_or_writes_merchant_as_object_then_404_and_nothing_changes(
    owner, livemode, route, method
):
    path = route.template.format(public_id=owner.id_for(route.collection))
    assert resolve(path).url_name  # routed: the 404 below is the object's absence
    before = owner.snapshot()
    intruder = api_client_for(MerchantFactory.create(), livemode=livemode)

    response = getattr(intruder, method)(path, BODIES.get(method), format="json")

    if livemode and route.template in TEST_MODE_ONLY:
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "test_mode_only"
    else:
        assert response.status_code == 404, response.content
        assert response.json()["error"]["code"] == "not_found"
        assert "exists in" not in response.json()["error"]["message"]  # no hint about others
    assert owner.snapshot() == before


@pytest.mark.parametrize(
    "route", [route for route, method in OBJECT_ROUTES if method == "get"], ids=str
)
def test_given_the_owners_key_when_it_reads_its_object_then_it_is_found(owner, livemode, route):
    """The other half of the matrix: the same paths are no 404 for their owner's key of the
    objects' mode (its writes are the feature tests' business)."""
    path = route.template.format(public_id=owner.id_for(route.collection))

    response = api_client_for(owner.payment.merchant, livemode=livemode).get(path)

    assert response.status_code == 200, response.content


@pytest.mark.parametrize("route", LIST_ROUTES, ids=str)
def test_given_merchant_bs_key_when_it_lists_then_none_of_merchant_as_objects_appear(
    owner, livemode, route
):
    intruder_merchant = MerchantFactory.create()
    make_payment(merchant=intruder_merchant, livemode=livemode)
    intruder = api_client_for(intruder_merchant, livemode=livemode)
    theirs = {owner.payment.public_id, owner.endpoint.public_id, owner.event.public_id}

    listed = intruder.get(route.template, {"crypto": "BTC"})  # rates needs a pair

    assert listed.status_code == 200, listed.content
    assert not theirs & {item.get("id") for item in listed.json().get("data", [])}
    assert not any(public_id in listed.content.decode() for public_id in theirs)
    if listed.json().get("object") == "list":  # paginated: A's id is no cursor for B
        cursor = intruder.get(route.template, {"starting_after": owner.id_for(route.collection)})
        assert cursor.status_code == 400, cursor.content
        assert cursor.json()["error"]["code"] == "invalid_cursor"
