"""REST API for webhooks and events: endpoints (create with a secret shown once, list, read,
change, delete), secret rotation with two signatures, delivery logs, reconciliation of events by
delivery outcome and redelivery, each merchant seeing only its own. Deliveries go over real HTTP
to a receiver on 127.0.0.1."""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from openapi_schema_validator import OAS30Validator

from notifications import endpoint_secrets, signing
from notifications.dispatcher import dispatch_events
from notifications.models import Event, WebhookDelivery, WebhookEndpoint
from notifications.outbox import event_publish
from resilience import clock
from testing.receivers import Receiver
from tests.conftest import api_client_for
from tests.factories import MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

URL = "/api/v1/webhook-endpoints"
# Never contacted: only endpoints on the receiver get events dispatched in these tests (and
# port 9 on loopback would refuse at once anyway).
NOWHERE = "http://127.0.0.1:9/hooks"


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def create(api, **body):
    return api.post(URL, {"url": NOWHERE, **body}, format="json")


def assert_error(response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) >= {"type", "code", "message", "param"}
    assert error["code"] == code
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def event_of(payment) -> Event:
    return Event.objects.get(subject=payment.public_id, type="payment.created")


def paid_event(merchant, *, dispatch: bool = True) -> Event:
    """A payment.created event of ``merchant``, fanned out synchronously unless told not to."""
    event = event_of(make_payment(merchant=merchant))
    if dispatch:
        dispatch_events(event_ids=[event.pk])
    return event


def delivery(event: Event) -> WebhookDelivery:
    return WebhookDelivery.objects.get(event=event)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["data"]]


# --- create, read, list, change, delete ---------------------------------------------------------


def test_create_returns_the_endpoint_and_its_secret_which_is_stored_encrypted_and_never_shown_again(
    api, merchant
):
    response = create(
        api,
        event_types=["payment.status_changed", "payment.created", "payment.created"],
        description="orders service",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"].startswith("we_") and body["object"] == "webhook_endpoint"
    assert body["url"] == NOWHERE
    assert body["event_types"] == ["payment.created", "payment.status_changed"]
    assert (body["description"], body["enabled"]) == ("orders service", True)
    assert body["previous_secret_expires_at"] is None
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    endpoint = WebhookEndpoint.objects.get(public_id=body["id"])
    assert endpoint.owner == merchant.public_id
    assert endpoint_secrets.decrypt(endpoint.secret_encrypted) == secret
    row = WebhookEndpoint.objects.filter(pk=endpoint.pk).values().get()
    assert not [column for column, value in row.items() if secret in str(value)]

    for shown in (api.get(f"{URL}/{endpoint.public_id}"), api.get(URL)):
        assert shown.status_code == 200
        assert secret not in shown.content.decode()
        assert "secret" not in shown.content.decode().replace("previous_secret_expires_at", "")


def test_create_defaults_to_every_type_enabled_and_can_start_disabled(api):
    default = create(api).json()
    disabled = create(api, url=NOWHERE + "/2", enabled=False).json()

    assert (default["event_types"], default["enabled"], default["description"]) == ([], True, "")
    assert disabled["enabled"] is False
    assert WebhookEndpoint.objects.get(public_id=disabled["id"]).enabled is False


def test_list_is_newest_first_with_cursor_pagination_and_only_the_merchants_own(api):
    first, second, third = (create(api, url=f"{NOWHERE}/{i}").json()["id"] for i in range(3))
    theirs = create(api_client_for(MerchantFactory())).json()["id"]

    page = api.get(URL, {"limit": 2})
    rest = api.get(URL, {"limit": 2, "starting_after": second})

    assert ids(page) == [third, second] and page.json()["has_more"] is True
    assert page.json()["object"] == "list"
    assert ids(rest) == [first] and rest.json()["has_more"] is False
    assert theirs not in ids(api.get(URL, {"limit": 100}))
    for cursor in ("we_missing", theirs):
        assert_error(api.get(URL, {"starting_after": cursor}), 400, "invalid_cursor")
    assert_error(api.get(URL, {"limit": 0}), 400, "min_value", "limit")


def test_patch_changes_only_what_is_sent(api):
    endpoint_id = create(api, event_types=["payment.created"], description="before").json()["id"]
    path = f"{URL}/{endpoint_id}"

    described = api.patch(path, {"description": "after"}, format="json")
    retyped = api.patch(
        path, {"event_types": ["transaction.detected", "payment.expired"]}, format="json"
    )
    moved = api.patch(path, {"url": NOWHERE + "/moved", "enabled": False}, format="json")

    assert described.status_code == 200, described.content
    assert described.json()["description"] == "after"
    assert described.json()["event_types"] == ["payment.created"]
    assert retyped.json()["event_types"] == ["payment.expired", "transaction.detected"]
    assert (moved.json()["url"], moved.json()["enabled"]) == (NOWHERE + "/moved", False)
    stored = api.get(path).json()
    assert stored["description"] == "after"
    assert stored["event_types"] == ["payment.expired", "transaction.detected"]
    assert (stored["url"], stored["enabled"]) == (NOWHERE + "/moved", False)
    endpoint = WebhookEndpoint.objects.get(public_id=endpoint_id)
    assert (endpoint.url, endpoint.enabled) == (NOWHERE + "/moved", False)


def test_patching_back_and_forth_runs_each_time_and_a_repeated_key_replays(api):
    """Without an Idempotency-Key a repeated body must run again (enabled false, true, false),
    not replay the first answer; with the same key, a retry replays."""
    path = f"{URL}/{create(api).json()['id']}"

    states = [
        api.patch(path, {"enabled": enabled}, format="json").json()["enabled"]
        for enabled in (False, True, False)
    ]
    first = api.patch(path, {"enabled": True}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    api.patch(path, {"enabled": False}, format="json")
    retried = api.patch(path, {"enabled": True}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert states == [False, True, False]
    assert first.json()["enabled"] is True
    assert retried["Idempotent-Replayed"] == "true"
    assert api.get(path).json()["enabled"] is False  # the replay did not run again


def test_delete_removes_the_endpoint_and_its_deliveries(api, merchant, receiver):
    endpoint_id = create(api, url=receiver.url).json()["id"]
    event = paid_event(merchant)
    assert delivery(event).status == WebhookDelivery.Status.SUCCEEDED

    response = api.delete(f"{URL}/{endpoint_id}")

    assert response.status_code == 204
    assert_error(api.get(f"{URL}/{endpoint_id}"), 404, "not_found")
    assert not WebhookDelivery.objects.filter(event=event).exists()


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/", "http://10.0.0.1/", "http://[::1]/hooks", "ftp://10.0.0.1/x"]
)
def test_a_private_or_non_http_destination_is_refused(api, settings, url):
    endpoint_id = create(api).json()["id"]  # made while private destinations were allowed
    settings.WEBHOOK_ALLOW_PRIVATE_DESTINATIONS = False

    created = create(api, url=url)
    patched = api.patch(f"{URL}/{endpoint_id}", {"url": url}, format="json")

    for response in (created, patched):
        error = assert_error(response, 400, "url_not_allowed", "url")
        assert error["type"] == "invalid_request_error"
        assert "10.0.0.1" not in error["message"]  # where a host resolves is not told
    assert WebhookEndpoint.objects.count() == 1
    assert WebhookEndpoint.objects.get().url == NOWHERE


def test_invalid_fields_are_refused_with_their_param(api):
    assert_error(create(api, event_types=["payment.nope"]), 400, "invalid_choice", "event_types[0]")
    assert_error(create(api, event_types="payment.created"), 400, "not_a_list", "event_types")
    assert_error(create(api, url="not a url"), 400, "invalid", "url")
    assert_error(create(api, url="http://127.0.0.1:99999/"), 400, "invalid_port", "url")
    assert_error(create(api, description="x" * 201), 400, "max_length", "description")
    assert_error(api.post(URL, {}, format="json"), 400, "required", "url")
    endpoint_id = create(api).json()["id"]
    assert_error(
        api.patch(f"{URL}/{endpoint_id}", {"event_types": ["nope"]}, format="json"),
        400,
        "invalid_choice",
        "event_types[0]",
    )
    assert WebhookEndpoint.objects.count() == 1


# --- who may see what ---------------------------------------------------------------------------


def test_another_merchants_endpoints_and_events_do_not_exist(api, merchant):
    other = MerchantFactory()
    other_api = api_client_for(other)
    theirs = create(other_api).json()["id"]
    their_event = paid_event(other, dispatch=False)
    mine = create(api).json()["id"]
    my_event = paid_event(merchant, dispatch=False)

    attempts = [
        api.get(f"{URL}/{theirs}"),
        api.patch(f"{URL}/{theirs}", {"description": "mine now"}, format="json"),
        api.delete(f"{URL}/{theirs}"),
        api.post(f"{URL}/{theirs}/rotate-secret"),
        api.get(f"{URL}/{theirs}/deliveries"),
        api.get(f"/api/v1/events/{their_event.public_id}"),
        api.post(f"/api/v1/events/{their_event.public_id}/redeliver", {}, format="json"),
    ]

    for response in attempts:
        assert_error(response, 404, "not_found")
    endpoint = WebhookEndpoint.objects.get(public_id=theirs)
    assert endpoint.description == "" and endpoint.previous_secret_encrypted == ""
    assert their_event.public_id not in ids(api.get("/api/v1/events"))
    # Naming their endpoint in a redelivery of my event does not reach it either.
    assert_error(
        api.post(
            f"/api/v1/events/{my_event.public_id}/redeliver", {"endpoint": theirs}, format="json"
        ),
        400,
        "resource_missing",
        "endpoint",
    )
    assert mine not in ids(other_api.get(URL))


def test_system_wide_events_are_not_listed_as_a_merchants(api):
    rate = event_publish(owner="", type="exchange_rate.updated", subject="BTC-USD", data={})

    assert rate.public_id not in ids(api.get("/api/v1/events"))
    assert_error(api.get(f"/api/v1/events/{rate.public_id}"), 404, "not_found")


@pytest.mark.parametrize(
    ("scopes", "method", "path"),
    [
        (["payments:read", "payments:write"], "get", URL),
        (["payments:read", "payments:write"], "post", URL),
        (["payments:read"], "get", URL + "/we_x"),
        (["payments:read"], "patch", URL + "/we_x"),
        (["payments:read"], "delete", URL + "/we_x"),
        (["payments:read"], "post", URL + "/we_x/rotate-secret"),
        (["payments:read"], "get", URL + "/we_x/deliveries"),
        (["payments:read"], "post", "/api/v1/events/evt_x/redeliver"),
        (["webhooks:manage"], "get", "/api/v1/events"),
        (["webhooks:manage"], "get", "/api/v1/events/evt_x"),
    ],
)
def test_a_key_without_the_scope_is_refused(merchant, scopes, method, path):
    client = api_client_for(merchant, scopes=scopes)

    response = getattr(client, method)(path, {}, format="json")

    error = assert_error(response, 403, "insufficient_scope")
    assert error["type"] == "permission_error"


# --- secret rotation ----------------------------------------------------------------------------


def _signatures(header: str) -> tuple[str, list[str]]:
    parts = [item.partition("=") for item in header.split(",")]
    timestamp = next(value for name, _, value in parts if name == "t")
    return timestamp, [value for name, _, value in parts if name == "v1"]


def test_rotation_gives_a_new_secret_and_deliveries_carry_a_signature_for_each(
    api, merchant, receiver
):
    created = create(api, url=receiver.url).json()
    old_secret, path = created["secret"], f"{URL}/{created['id']}"

    rotated = api.post(f"{path}/rotate-secret")

    assert rotated.status_code == 200, rotated.content
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != old_secret
    expires = rotated.json()["previous_secret_expires_at"]
    assert expires == api.get(path).json()["previous_secret_expires_at"]
    endpoint = WebhookEndpoint.objects.get(public_id=created["id"])
    assert endpoint.previous_secret_expires_at is not None
    assert abs(endpoint.previous_secret_expires_at - clock.now() - timedelta(hours=24)) < timedelta(
        minutes=1
    )

    event = paid_event(merchant)

    (request,) = receiver.requests
    assert request.webhook_id == event.public_id
    timestamp, signatures = _signatures(request.signature)
    assert len(signatures) == 2
    now = int(time.time())
    for secret, signature in zip((new_secret, old_secret), signatures, strict=True):
        # Each v1 alone verifies with its own secret...
        one = f"t={timestamp},v1={signature}"
        assert signing.verify(body=request.body, header=one, secret=secret, now=now)
    for secret in (new_secret, old_secret):
        # ...and a receiver holding either secret accepts the delivery as sent.
        signing.verify(body=request.body, header=request.signature, secret=secret, now=now)
    with pytest.raises(signing.SignatureError):
        signing.verify(body=request.body, header=request.signature, secret="whsec_x", now=now)


def test_rotating_again_rotates_again_unless_the_same_idempotency_key_is_sent(api):
    path = f"{URL}/{create(api).json()['id']}/rotate-secret"

    plain = {api.post(path).json()["secret"] for _ in range(2)}
    keyed = [api.post(path, HTTP_IDEMPOTENCY_KEY="rotate-1") for _ in range(2)]

    assert len(plain) == 2
    assert keyed[0].json()["secret"] == keyed[1].json()["secret"]
    assert keyed[1]["Idempotent-Replayed"] == "true"
    assert keyed[0].json()["secret"] not in plain


# --- deliveries, reconciliation, redelivery -----------------------------------------------------


def test_reconciliation_lists_what_was_not_delivered_and_redelivery_fixes_it(
    api, merchant, receiver
):
    endpoint_id = create(api, url=receiver.url).json()["id"]
    delivered = paid_event(merchant)
    receiver.answer(500)
    retrying = paid_event(merchant)
    receiver.answer(400)
    refused = paid_event(merchant)
    undispatched = paid_event(merchant, dispatch=False)
    assert delivery(delivered).status == WebhookDelivery.Status.SUCCEEDED
    assert (delivery(retrying).status, delivery(retrying).attempts) == ("pending", 1)
    assert delivery(refused).status == WebhookDelivery.Status.FAILED

    missed = api.get("/api/v1/events", {"delivery_success": "false"})
    ok = api.get("/api/v1/events", {"delivery_success": "true"})
    everything = api.get("/api/v1/events")

    assert ids(missed) == [undispatched.public_id, refused.public_id, retrying.public_id]
    assert ids(ok) == [delivered.public_id]
    assert len(ids(everything)) == 4
    by_id = {item["id"]: item for item in missed.json()["data"]}
    assert by_id[undispatched.public_id]["deliveries"] == []
    pending = by_id[retrying.public_id]["deliveries"][0]
    assert (pending["endpoint"], pending["status"], pending["attempts"]) == (
        endpoint_id,
        "pending",
        1,
    )
    assert pending["last_status_code"] == 500 and pending["next_attempt_at"] is not None
    assert [a["status_code"] for a in pending["attempt_log"]] == [500]

    # The receiver has recovered: redeliver the one being retried, to its endpoint.
    redelivered = api.post(
        f"/api/v1/events/{retrying.public_id}/redeliver", {"endpoint": endpoint_id}, format="json"
    )

    assert redelivered.status_code == 200, redelivered.content
    (after,) = redelivered.json()["data"]
    assert (after["event"], after["status"], after["attempts"]) == (
        retrying.public_id,
        "succeeded",
        2,
    )
    assert after["delivered_at"] is not None and after["next_attempt_at"] is None
    assert [a["status_code"] for a in after["attempt_log"]] == [500, 200]
    assert receiver.ids()[-1] == retrying.public_id
    # The refused one, without naming the endpoint: every delivery of the event.
    every = api.post(f"/api/v1/events/{refused.public_id}/redeliver", {}, format="json")
    assert [d["status"] for d in every.json()["data"]] == ["succeeded"]
    assert ids(api.get("/api/v1/events", {"delivery_success": "false"})) == [undispatched.public_id]
    assert ids(api.get("/api/v1/events", {"delivery_success": "true"})) == [
        refused.public_id,
        retrying.public_id,
        delivered.public_id,
    ]
    # Never dispatched: no delivery to redeliver (the dispatcher will make it).
    assert_error(
        api.post(f"/api/v1/events/{undispatched.public_id}/redeliver", {}, format="json"),
        409,
        "no_delivery",
    )


def test_redelivering_twice_attempts_twice(api, merchant, receiver):
    endpoint_id = create(api, url=receiver.url).json()["id"]
    event = paid_event(merchant)
    path = f"/api/v1/events/{event.public_id}/redeliver"

    for _ in range(2):
        assert api.post(path, {"endpoint": endpoint_id}, format="json").status_code == 200

    assert receiver.ids() == [event.public_id] * 3
    assert delivery(event).attempts == 3


def test_events_without_a_wanting_endpoint_are_not_missed(api, merchant):
    before = paid_event(merchant, dispatch=False)  # no endpoint at all yet
    create(api, event_types=["payment.status_changed"])
    unwanted = paid_event(merchant, dispatch=False)
    create(api, url=NOWHERE + "/off", enabled=False)
    still_unwanted = paid_event(merchant, dispatch=False)

    missed = ids(api.get("/api/v1/events", {"delivery_success": "false"}))

    assert missed == []
    assert set(ids(api.get("/api/v1/events"))) == {
        before.public_id,
        unwanted.public_id,
        still_unwanted.public_id,
    }


def test_redelivery_to_a_disabled_endpoint_is_refused(api, merchant, receiver):
    endpoint_id = create(api, url=receiver.url).json()["id"]
    event = paid_event(merchant)
    api.patch(f"{URL}/{endpoint_id}", {"enabled": False}, format="json")

    named = api.post(
        f"/api/v1/events/{event.public_id}/redeliver", {"endpoint": endpoint_id}, format="json"
    )
    every = api.post(f"/api/v1/events/{event.public_id}/redeliver", {}, format="json")

    assert_error(named, 409, "endpoint_disabled", "endpoint")
    assert_error(every, 409, "no_delivery")
    assert len(receiver.requests) == 1


def test_an_endpoints_deliveries_are_listed_newest_first_with_their_log(api, merchant, receiver):
    endpoint_id = create(api, url=receiver.url).json()["id"]
    other_id = create(api, url=receiver.url + "/other").json()["id"]
    receiver.answer(503)
    first = paid_event(merchant)  # to both endpoints: one 503, one 200
    second = paid_event(merchant)
    third = paid_event(merchant)
    path = f"{URL}/{endpoint_id}/deliveries"

    page = api.get(path, {"limit": 2})
    rest = api.get(path, {"limit": 2, "starting_after": page.json()["data"][-1]["event"]})

    assert page.status_code == 200, page.content
    data = page.json()["data"] + rest.json()["data"]
    assert [d["event"] for d in data] == [third.public_id, second.public_id, first.public_id]
    assert page.json()["has_more"] is True and rest.json()["has_more"] is False
    assert {d["endpoint"] for d in data} == {endpoint_id}
    assert {d["event_type"] for d in data} == {"payment.created"}
    oldest = data[-1]
    attempt_logs = [
        oldest["attempt_log"],
        api.get(f"{URL}/{other_id}/deliveries").json()["data"][-1]["attempt_log"],
    ]
    assert sorted(log[0]["status_code"] for log in attempt_logs) == [200, 503]
    for log in attempt_logs:
        assert log[0]["latency_ms"] is not None and log[0]["attempted_at"]
    assert_error(api.get(path, {"starting_after": "evt_missing"}), 400, "invalid_cursor")


def test_events_filter_by_type_subject_and_time_and_paginate(api, merchant):
    payments = [make_payment(merchant=merchant) for _ in range(3)]
    events = [event_of(payment) for payment in payments]
    Event.objects.filter(pk=events[0].pk).update(created_at=clock.now() - timedelta(days=2))

    by_subject = api.get("/api/v1/events", {"subject": payments[1].public_id})
    by_type = api.get("/api/v1/events", {"type": "payment.expired"})
    recent = api.get(
        "/api/v1/events", {"created_gte": (clock.now() - timedelta(days=1)).isoformat()}
    )
    old = api.get("/api/v1/events", {"created_lt": (clock.now() - timedelta(days=1)).isoformat()})
    page = api.get("/api/v1/events", {"limit": 2})
    rest = api.get("/api/v1/events", {"limit": 2, "starting_after": ids(page)[-1]})
    detail = api.get(f"/api/v1/events/{events[1].public_id}")

    assert ids(by_subject) == [events[1].public_id]
    assert ids(by_type) == []
    assert set(ids(recent)) == {events[1].public_id, events[2].public_id}
    assert ids(old) == [events[0].public_id]
    assert ids(page) + ids(rest) == [events[2].public_id, events[1].public_id, events[0].public_id]
    assert page.json()["has_more"] is True
    body = detail.json()
    assert (body["id"], body["object"], body["type"]) == (
        events[1].public_id,
        "event",
        "payment.created",
    )
    assert body["subject"] == payments[1].public_id and body["priority"] == "normal"
    assert body["data"]["payment"]["id"] == payments[1].public_id
    assert body["deliveries"] == []
    assert_error(api.get("/api/v1/events", {"starting_after": "evt_nope"}), 400, "invalid_cursor")
    assert_error(api.get("/api/v1/events", {"delivery_success": "maybe"}), 400, "invalid")


# --- the schema describes these answers ---------------------------------------------------------


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict:
    out = StringIO()
    with django_db_blocker.unblock():
        call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    return yaml.safe_load(out.getvalue())


def validate(schema: dict, component: str, instance) -> None:
    wrapper = {"$ref": f"#/components/schemas/{component}", "components": schema["components"]}
    OAS30Validator(wrapper).validate(instance)


def test_the_schema_lists_these_endpoints_and_matches_real_answers(schema, api, merchant, receiver):
    paths = schema["paths"]
    assert set(paths[URL]) == {"get", "post"}
    assert set(paths[URL + "/{public_id}"]) == {"get", "patch", "delete"}
    assert set(paths[URL + "/{public_id}/rotate-secret"]) == {"post"}
    assert set(paths[URL + "/{public_id}/deliveries"]) == {"get"}
    assert set(paths["/api/v1/events"]) == {"get"}
    assert set(paths["/api/v1/events/{public_id}"]) == {"get"}
    assert set(paths["/api/v1/events/{public_id}/redeliver"]) == {"post"}
    assert "secret_encrypted" not in str(schema["components"])

    created = create(api, url=receiver.url, event_types=["payment.created"])
    endpoint_id = created.json()["id"]
    receiver.answer(500)
    event = paid_event(merchant)
    paid_event(merchant, dispatch=False)
    rotated = api.post(f"{URL}/{endpoint_id}/rotate-secret")
    redelivered = api.post(f"/api/v1/events/{event.public_id}/redeliver", {}, format="json")
    receiver.answer(500)
    api.post(f"/api/v1/events/{event.public_id}/redeliver", {}, format="json")  # pending again

    validate(schema, "WebhookEndpointWithSecret", created.json())
    validate(schema, "WebhookEndpointWithSecret", rotated.json())
    validate(schema, "WebhookEndpoint", api.get(f"{URL}/{endpoint_id}").json())
    validate(
        schema,
        "WebhookEndpoint",
        api.patch(f"{URL}/{endpoint_id}", {"description": "d"}, format="json").json(),
    )
    validate(schema, "WebhookEndpointList", api.get(URL).json())
    validate(schema, "WebhookDeliveryList", api.get(f"{URL}/{endpoint_id}/deliveries").json())
    validate(schema, "WebhookDeliveryList", redelivered.json())
    validate(schema, "EventList", api.get("/api/v1/events").json())
    validate(schema, "Event", api.get(f"/api/v1/events/{event.public_id}").json())
    for error in (
        api.get(f"{URL}/we_missing"),
        create(api, url="nope"),
        api.get("/api/v1/events", {"starting_after": "evt_missing"}),
        api.post("/api/v1/events/evt_missing/redeliver", {}, format="json"),
    ):
        validate(schema, "Error", error.json())
