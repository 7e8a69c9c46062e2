"""Webhook delivery against a real HTTP receiver on 127.0.0.1: signatures, the retry schedule
(driven by the frozen clock), final versus retryable answers, High-priority immediate retries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import uvloop
from django.db import connection

from cryptopay.bulk_writes import array_literal
from notifications import signing
from notifications.delivery import deliveries_claim_new, webhooks_deliver_due
from notifications.dispatcher import dispatch_events
from notifications.endpoints import webhook_endpoint_create, webhook_endpoint_rotate_secret
from notifications.models import Event, WebhookAttempt, WebhookDelivery
from notifications.outbox import event_publish
from notifications.sender import (
    FAST_LANE_SECONDS,
    USER_AGENT,
    Claim,
    ClaimQueue,
    Lane,
    Target,
    deliver_now,
    new_event_loop,
)
from testing.receivers import Receiver
from tests.factories import make_payment

pytestmark = pytest.mark.django_db

OWNER = "mer_delivery"


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def publish(*, type: str = "payment.created", owner: str = OWNER) -> Event:
    return event_publish(owner=owner, type=type, subject="pay_test", data={"n": 1})


def attempt_codes(event: Event) -> list[int | None]:
    return list(
        WebhookAttempt.objects.filter(delivery__event=event)
        .order_by("attempted_at", "pk")
        .values_list("status_code", flat=True)
    )


def delivery_of(event: Event) -> WebhookDelivery:
    return WebhookDelivery.objects.get(event=event)


# --- signatures ---------------------------------------------------------------------------------


def test_a_webhook_names_its_sender_and_asks_for_an_uncompressed_answer(
    merchant, frozen_clock, receiver
):
    # Given an endpoint and a payment event for it
    webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)
    event = publish(owner=merchant.public_id)

    # When it is delivered
    assert dispatch_events(event_ids=[event.pk]) == 1

    # Then the request says who sends it, that its body is JSON, and that the answer (drained,
    # never read) should come as it is
    (received,) = receiver.requests
    assert received.headers["user-agent"] == USER_AGENT
    assert received.headers["content-type"] == "application/json"
    assert received.headers["accept-encoding"] == "identity"


def test_receiver_verifies_the_signature_with_the_endpoint_secret(merchant, frozen_clock, receiver):
    _, secret = webhook_endpoint_create(owner=merchant.public_id, url=receiver.url)
    payment = make_payment(merchant=merchant)  # emits payment.created through the outbox
    event = Event.objects.get(owner=merchant.public_id, subject=payment.public_id)

    assert dispatch_events(event_ids=[event.pk]) == 1

    (received,) = receiver.requests
    now = int(frozen_clock.now().timestamp())
    assert signing.verify(body=received.body, header=received.signature, secret=secret, now=now)
    assert received.webhook_id == event.public_id
    envelope = json.loads(received.body)
    assert (envelope["id"], envelope["type"]) == (event.public_id, "payment.created")
    assert envelope["subject"] == payment.public_id

    tampered = received.body.replace(b'"payment.created"', b'"payment.confirmed"')
    assert tampered != received.body
    with pytest.raises(signing.SignatureError, match="no signature matches"):
        signing.verify(body=tampered, header=received.signature, secret=secret, now=now)
    with pytest.raises(signing.SignatureError, match="no signature matches"):
        signing.verify(body=received.body, header=received.signature, secret="whsec_other", now=now)
    # Replay protection: 300 s is the edge; older (or as far in the future) is refused.
    assert signing.verify(
        body=received.body, header=received.signature, secret=secret, now=now + 300
    )
    for skewed in (now + 301, now - 301):
        with pytest.raises(signing.SignatureError, match="tolerance"):
            signing.verify(body=received.body, header=received.signature, secret=secret, now=skewed)


def test_rotated_secret_signs_with_both_until_the_overlap_ends(frozen_clock, receiver):
    endpoint, old = webhook_endpoint_create(owner=OWNER, url=receiver.url)
    new = webhook_endpoint_rotate_secret(endpoint=endpoint, overlap=timedelta(hours=1))
    dispatch_events(event_ids=[publish().pk])
    frozen_clock.advance(timedelta(hours=1, seconds=1))
    dispatch_events(event_ids=[publish().pk])

    during, after = receiver.requests
    now = int(frozen_clock.now().timestamp())
    assert during.signature.count("v1=") == 2
    for secret in (old, new):
        signing.verify(body=during.body, header=during.signature, secret=secret, now=now - 3601)
    assert after.signature.count("v1=") == 1
    signing.verify(body=after.body, header=after.signature, secret=new, now=now)
    with pytest.raises(signing.SignatureError):
        signing.verify(body=after.body, header=after.signature, secret=old, now=now)


# --- retries ------------------------------------------------------------------------------------


def test_500_then_200_is_delivered_on_the_retry(frozen_clock, receiver):
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.answer(500)  # then the default 200
    event = publish()

    dispatch_events(event_ids=[event.pk])
    delivery = delivery_of(event)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    wait = delivery.next_attempt_at - frozen_clock.now()
    assert timedelta(seconds=5) <= wait <= timedelta(seconds=10)  # 10 s with full jitter

    assert webhooks_deliver_due() == 0  # not due yet
    frozen_clock.advance(timedelta(seconds=10, milliseconds=1))
    assert webhooks_deliver_due() == 1

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert delivery.delivered_at == frozen_clock.now()
    assert attempt_codes(event) == [500, 200]
    assert receiver.ids() == [event.public_id, event.public_id]  # same id: receivers dedupe


def test_receiver_down_then_up_is_delivered(frozen_clock, receiver):
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.down()
    event = publish()

    dispatch_events(event_ids=[event.pk])
    delivery = delivery_of(event)
    assert delivery.status == "pending"
    assert delivery.last_status_code is None
    assert "ClientConnectorError" in delivery.last_error

    receiver.up()  # the same port again
    frozen_clock.advance(timedelta(seconds=10, milliseconds=1))
    assert webhooks_deliver_due() == 1
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert attempt_codes(event) == [None, 200]
    assert receiver.ids() == [event.public_id]


@pytest.mark.parametrize("code", [400, 401, 404, 410])
def test_a_client_error_fails_the_delivery_without_retries(frozen_clock, receiver, code):
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.answer(code)
    event = publish(type="payment.status_changed")  # High: no immediate retries either

    dispatch_events(event_ids=[event.pk])
    delivery = delivery_of(event)
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 1, None)

    frozen_clock.advance(timedelta(days=1))
    assert webhooks_deliver_due() == 0
    assert attempt_codes(event) == [code]
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("code", [408, 429, 502, 503])
def test_timeouts_rate_limits_and_server_errors_are_retried(frozen_clock, receiver, code):
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.answer(code)
    event = publish()

    dispatch_events(event_ids=[event.pk])
    assert delivery_of(event).status == "pending"
    frozen_clock.advance(timedelta(seconds=10, milliseconds=1))
    assert webhooks_deliver_due() == 1
    assert delivery_of(event).status == "succeeded"
    assert attempt_codes(event) == [code, 200]


def test_retries_back_off_and_give_up_after_the_retry_window(frozen_clock, receiver, settings):
    settings.WEBHOOK_RETRY_FOR = timedelta(minutes=2)
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.default_status = 503
    event = publish()

    dispatch_events(event_ids=[event.pk])
    waits = []
    delivery = delivery_of(event)
    while delivery.status == "pending":
        waits.append(delivery.next_attempt_at - frozen_clock.now())
        frozen_clock.set(delivery.next_attempt_at)
        assert webhooks_deliver_due() == 1
        delivery.refresh_from_db()
    assert delivery.status == "gave_up"
    assert delivery.next_attempt_at is None
    # Exponential with full jitter: attempt n waits between half and all of 10 s * 2^(n-1).
    for n, wait in enumerate(waits, start=1):
        full = 10 * 2 ** (n - 1)
        assert full / 2 <= wait.total_seconds() <= full
    assert len(waits) >= 3
    assert attempt_codes(event) == [503] * delivery.attempts


# --- High priority: immediate retries -----------------------------------------------------------


def test_high_priority_is_retried_immediately_within_one_dispatch(frozen_clock, receiver):
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.answer(500, 500)  # then 200
    event = publish(type="payment.status_changed")
    assert event.priority == "high"

    assert dispatch_events(event_ids=[event.pk]) == 1  # one dispatch, no sweep, no clock change

    delivery = delivery_of(event)
    assert (delivery.status, delivery.attempts) == ("succeeded", 3)
    assert attempt_codes(event) == [500, 500, 200]


def test_high_priority_immediate_retries_stop_after_three(frozen_clock, receiver, settings):
    assert settings.NOTIFY_HIGH_PRIORITY_RETRIES == 3
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.answer(500, 500, 500, 500)  # 1 + 3 immediate retries, all failing; then 200
    event = publish(type="transaction.detected")

    dispatch_events(event_ids=[event.pk])
    delivery = delivery_of(event)
    assert (delivery.status, delivery.attempts) == ("pending", 4)
    assert delivery.next_attempt_at > frozen_clock.now()  # then the ordinary schedule

    frozen_clock.set(delivery.next_attempt_at)
    webhooks_deliver_due()
    assert attempt_codes(event) == [500, 500, 500, 500, 200]


def test_normal_priority_gets_no_immediate_retries(frozen_clock, receiver):
    webhook_endpoint_create(owner=OWNER, url=receiver.url)
    receiver.answer(500)
    event = publish(type="payment.created")

    dispatch_events(event_ids=[event.pk])
    assert attempt_codes(event) == [500]
    assert delivery_of(event).status == "pending"


# --- bulk statements ----------------------------------------------------------------------------


def test_array_literals_read_back_as_the_values_they_were_made_from():
    at = datetime(2026, 12, 3, 13, 54, 59, 358267, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT CAST(%s AS bigint[]), CAST(%s AS timestamptz[])",
            [array_literal([1, None, 2**62]), array_literal([at, None])],
        )
        numbers, times = cursor.fetchone()
    assert numbers == [1, None, 2**62]
    assert times == [at, None]
    assert array_literal([]) == "{}"


# --- requests in flight per endpoint ------------------------------------------------------------


def most_in_flight(receiver: Receiver) -> int:
    """The most requests that arrived within one answer's delay of each other: each of them was
    still waiting for its answer when the last one came."""
    arrivals = sorted(received.at for received in receiver.requests)
    return max(
        sum(1 for earlier in arrivals[: n + 1] if at - earlier < receiver.delay)
        for n, at in enumerate(arrivals)
    )


def test_an_endpoint_gets_more_requests_in_flight_only_while_it_answers_fast(settings):
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 4
    settings.WEBHOOK_ENDPOINT_FAST_CONCURRENCY = 16
    with Receiver(delay=0.01) as fast, Receiver(delay=0.12) as slow:
        webhook_endpoint_create(owner="mer_fast", url=fast.url)
        webhook_endpoint_create(owner="mer_slow", url=slow.url)
        events = [publish(owner=owner) for owner in ("mer_fast", "mer_slow") for _ in range(40)]
        claims = deliveries_claim_new(events=events)
        outcomes = deliver_now(claims)

        assert len(outcomes) == 80 and all(outcome.attempts[-1].ok for outcome in outcomes)
        # Answering in 10 ms: after its first answers the fast endpoint has up to 16 at once,
        assert 4 < most_in_flight(fast) <= 16
        # while one answering in 120 ms (over FAST_ANSWER_SECONDS) keeps the configured four.
        assert most_in_flight(slow) <= 4


def test_given_fast_concurrency_set_to_the_limit_then_a_fast_endpoint_never_gets_more(settings):
    # Given an operator who wants a hard limit of four per endpoint
    settings.WEBHOOK_ENDPOINT_CONCURRENCY = 4
    settings.WEBHOOK_ENDPOINT_FAST_CONCURRENCY = 4
    with Receiver(delay=0.01) as fast:
        webhook_endpoint_create(owner="mer_fast", url=fast.url)
        claims = deliveries_claim_new(events=[publish(owner="mer_fast") for _ in range(40)])

        # When forty webhooks go to an endpoint answering in 10 ms
        outcomes = deliver_now(claims)

        # Then all arrive, never more than four at once
        assert len(outcomes) == 40 and all(outcome.attempts[-1].ok for outcome in outcomes)
        assert most_in_flight(fast) <= 4


def _lane_holding(count: int, *, answers: list[float], ok: bool) -> Lane:
    lane = Lane(
        Target(public_id="we_lane", url="http://127.0.0.1:9/hooks", secrets=("whsec_x",)),
        backlog=1000,
        concurrency=4,
        fast_concurrency=16,
    )
    until = datetime(2030, 1, 1, tzinfo=UTC)
    for n in range(count):
        claim = Claim(n, 1, until, 2, lane.target, f"evt_{n}", b"{}")
        lane.queue.put_nowait((2, n, claim))
    for seconds in answers:
        lane.slow(seconds, ok=ok)
    return lane


def test_a_fast_lane_judges_its_drain_by_the_requests_it_may_have_in_flight():
    # Given 2,000 queued behind a fast endpoint (40 ms answers: 16 in flight), which drains
    # them in 5 s; the configured 4 would take 20 s.
    lane = _lane_holding(2000, answers=[0.04] * 5, ok=True)
    assert lane.limit() == 16
    assert 2000 * 0.04 / 16 < FAST_LANE_SECONDS < 2000 * 0.04 / 4

    # Then it takes more rather than releasing them to the sweep.
    assert not lane.full()


def test_a_lane_hands_out_high_before_normal_before_low_and_each_in_arrival_order():
    # Given claims queued in a mixed order of priorities (0 High, 1 Normal, 2 Low)
    queue = ClaimQueue()
    until = datetime(2030, 1, 1, tzinfo=UTC)
    target = Target(public_id="we_lane", url="http://127.0.0.1:9/hooks", secrets=("whsec_x",))
    queued = [2, 1, 0, 2, 0, 1]
    for arrival, priority in enumerate(queued):
        claim = Claim(arrival, 1, until, priority, target, f"evt_{arrival}", b"{}")
        queue.put_nowait((priority, arrival, claim))
    assert queue.qsize() == len(queued) and not queue.empty()

    # When the lane's workers take them
    taken = [queue.get_nowait()[2].delivery_id for _ in queued]

    # Then High comes first, then Normal, then Low, each in the order it arrived
    assert taken == [2, 4, 1, 5, 0, 3]
    assert queue.empty()


def test_webhooks_are_sent_on_uvloop():
    # uvloop is a runtime requirement: without it the sender falls back to asyncio's loop, which
    # works but costs a tenth more per delivery.
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_a_slow_lane_holds_one_backlog_and_releases_the_rest_to_the_sweep():
    # Given a full backlog behind an endpoint answering in 500 ms (4 in flight: 125 s to drain).
    lane = _lane_holding(1000, answers=[0.5] * 5, ok=True)
    assert lane.limit() == 4

    # Then it is full: what comes next waits in the database, not in memory.
    assert lane.full()
