"""The dispatcher: adaptive batching, priorities under a flood, surviving a kill and a lost queue,
and endpoints that must not hold each other back. Real Redis queues (this run's key prefix),
real PostgreSQL commits (``transaction=True``: ids are queued on commit, and a dispatcher
subprocess must see the rows), real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import queues
from notifications.delivery import (
    attempts_record,
    deliveries_claim_due,
    deliveries_claim_new,
    deliveries_create,
    webhooks_deliver_due,
)
from notifications.dispatcher import (
    AdaptiveBatching,
    Batching,
    Dispatcher,
    dispatch_events,
)
from notifications.endpoints import webhook_endpoint_create
from notifications.models import (
    Event,
    Priority,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from notifications.outbox import event_publish, events_requeue_lost
from notifications.sender import AttemptResult, Outcome
from testing.fast_receiver import FastReceiver
from testing.receivers import Receiver, stripe_verified
from testing.service_control import redis_stopped
from tests.resilience.test_transaction_round_trips import traced

ROOT = Path(__file__).resolve().parents[2]


def queue_sizes() -> dict[str, int]:
    return queues.sizes()


def redis_queues() -> redis.Redis:
    """The queues' Redis client: these tests need Redis up."""
    client = queues.client()
    assert client is not None, "Redis is not reachable"
    return client


def clear_queues() -> None:
    """What "Redis flushed" means for us, without touching anyone else's keys."""
    redis_queues().delete(*(queues.key(priority) for priority in queues.ORDER))


@pytest.fixture(autouse=True)
def _empty_queues():
    clear_queues()
    yield
    clear_queues()


@pytest.fixture
def receiver():
    with Receiver() as running:
        yield running


def publish_many(owner: str, count: int, type: str = "payment.created") -> list[Event]:
    """Committed events, queued by on_commit as in production."""
    with transaction.atomic():
        return [
            event_publish(owner=owner, type=type, subject=f"pay_{owner}_{n}", data={"n": n})
            for n in range(count)
        ]


def drain(dispatcher: Dispatcher, *, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while sum(queue_sizes().values()):
        assert time.monotonic() < deadline, "queues did not drain"
        dispatcher.run_once()
    assert dispatcher.wait_idle(timeout=timeout), "background deliveries did not finish"


# --- adaptive batching --------------------------------------------------------------------------


def test_adaptive_batching_levels_follow_the_rolling_load(settings):
    assert settings.NOTIFY_LOAD_WINDOW == 10
    batching = AdaptiveBatching()
    assert batching.current() == Batching("low", 5.0, 10)  # no samples yet: idle

    assert batching.observe(0) == Batching("low", 5.0, 10)
    for _ in range(9):
        batching.observe(0)
    # The mean over the last 10 samples decides: one spike of 10,000 is a mean of exactly 1,000.
    assert batching.observe(10_000) == Batching("high", 0.1, 200)
    # The window is rolling: nine more quiet samples keep the spike in, and the mean at 1,000.
    for _ in range(8):
        assert batching.observe(0).level == "high"
    assert batching.observe(0).level == "high"
    # The tenth quiet sample pushes the spike out of the window: back to idle.
    assert batching.observe(0) == Batching("low", 5.0, 10)

    for _ in range(10):
        level = batching.observe(100)
    assert level == Batching("normal", 1.0, 50)
    # Boundaries: mean 10 is normal (low is below 10), mean 999.9 is normal, 1,000 high.
    assert AdaptiveBatching().observe(9).level == "low"
    assert AdaptiveBatching().observe(10).level == "normal"
    assert AdaptiveBatching().observe(999).level == "normal"
    assert AdaptiveBatching().observe(1000).level == "high"

    # Load that grows, then stays, then stops: low -> normal -> high -> normal -> low.
    ramp = AdaptiveBatching()
    levels = [ramp.observe(queued).level for queued in [0] * 10 + [5000] * 10 + [0] * 10]
    assert levels[:10] == ["low"] * 10
    assert levels[10] == "normal"  # one 5,000 sample: mean 500
    assert levels[11] == "high"  # two: mean 1,000
    assert levels[19] == "high"
    # Draining: the mean falls by 500 a sample; normal until the last 5,000 leaves the window.
    assert levels[20] == "high"  # mean 4,500
    assert levels[28] == "normal"  # one 5,000 left: mean 500
    assert levels[29] == "low"


def test_adaptive_batching_window_comes_from_settings(settings):
    settings.NOTIFY_LOAD_WINDOW = 3
    batching = AdaptiveBatching()
    for queued in (3000, 0, 0):
        batching.observe(queued)
    assert batching.current().level == "high"  # mean 1,000
    assert batching.observe(0).level == "low"  # the 3,000 left a 3-sample window


# --- the queues ---------------------------------------------------------------------------------


def pop_batch(*, size: int, wait: float) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """The dispatcher's blocking pop, on a loop of its own."""

    async def pop() -> tuple[list[tuple[str, int]], dict[str, int]]:
        popper = queues.Popper()
        try:
            return await popper.pop_batch(size=size, wait=wait)
        finally:
            await popper.close()

    return asyncio.run(pop())


def pop_available(*, size: int) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """The dispatcher's pop of what is queued, on a loop of its own."""

    async def pop() -> tuple[list[tuple[str, int]], dict[str, int]]:
        popper = queues.Popper()
        try:
            return await popper.pop_available(size=size)
        finally:
            await popper.close()

    return asyncio.run(pop())


def test_idle_blocking_pop_waits_quietly_and_wakes_for_a_new_event():
    # An idle pop longer than the Redis client's socket timeout answers "nothing", not an error.
    started = time.monotonic()
    assert pop_batch(size=10, wait=1.5) == ([], {"high": 0, "normal": 0, "low": 0})
    assert time.monotonic() - started >= 1.4

    # A blocking pop returns as soon as an id arrives, long before its wait is over.
    pusher = threading.Timer(0.2, lambda: queues.enqueue(event_id=42, priority="high"))
    started = time.monotonic()
    pusher.start()
    assert pop_batch(size=10, wait=5.0) == (
        [("high", 42)],
        {"high": 0, "normal": 0, "low": 0},
    )
    assert time.monotonic() - started < 1.0


def test_a_pop_takes_high_then_normal_then_low_up_to_its_size_and_tells_the_lengths_before():
    # Given ids in all three queues
    for priority, ids in (("low", [1, 2, 3]), ("normal", [4, 5]), ("high", [6])):
        for event_id in ids:
            queues.enqueue(event_id=event_id, priority=priority)

    # When four are taken without waiting, then High's, Normal's and one Low, in queue order,
    # with every queue's length before the pop
    assert pop_available(size=4) == (
        [("high", 6), ("normal", 4), ("normal", 5), ("low", 1)],
        {"high": 1, "normal": 2, "low": 3},
    )
    # and the rest stays queued; an empty pop takes nothing
    assert pop_available(size=10) == (
        [("low", 2), ("low", 3)],
        {"high": 0, "normal": 0, "low": 2},
    )
    assert pop_available(size=10) == ([], {"high": 0, "normal": 0, "low": 0})


# --- priorities under a flood -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_high_event_overtakes_a_queued_flood_of_10000_low_events(receiver):
    now = timezone.now()
    lows = Event.objects.bulk_create(
        [
            Event(
                owner="",
                type="exchange_rate.updated",
                priority=Priority.LOW,
                subject="BTC/USD",
                data={"n": n},
                created_at=now,
            )
            for n in range(10_000)
        ],
        batch_size=2000,
    )
    pipe = redis_queues().pipeline(transaction=False)
    for index in range(0, len(lows), 1000):
        pipe.rpush(queues.key("low"), *(event.pk for event in lows[index : index + 1000]))
    pipe.execute()

    webhook_endpoint_create(owner="mer_flood", url=receiver.url)
    (high,) = publish_many("mer_flood", 1, type="payment.status_changed")
    assert high.priority == "high"
    assert queue_sizes() == {"high": 1, "normal": 0, "low": 10_000}

    seen: list[Batching] = []
    dispatcher = Dispatcher(on_batch=lambda batching, size: seen.append(batching))
    dispatcher.run_once()
    dispatcher.close()  # after the webhooks it holds are sent and recorded

    assert seen == [Batching("high", 0.1, 200)]  # 10,001 queued: the big batches
    high.refresh_from_db()
    assert high.dispatched_at is not None
    assert receiver.ids() == [high.public_id]
    first_lows = Event.objects.filter(priority="low", dispatched_at__isnull=False)
    assert first_lows.count() == 199  # the rest of the first batch
    assert all(
        low.dispatched_at is not None and high.dispatched_at <= low.dispatched_at
        for low in first_lows
    )
    assert queue_sizes() == {"high": 0, "normal": 0, "low": 10_000 - 199}


# --- losing the queue or the dispatcher ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_requeue_rebuilds_the_queues_after_redis_lost_them(receiver, settings):
    webhook_endpoint_create(owner="mer_flushed", url=receiver.url)
    events = publish_many("mer_flushed", 20) + publish_many(
        "mer_flushed", 5, type="payment.status_changed"
    )
    assert queue_sizes() == {"high": 5, "normal": 20, "low": 0}

    clear_queues()  # Redis flushed (or restarted without persistence)
    assert sum(queue_sizes().values()) == 0

    assert events_requeue_lost() == 0  # younger than NOTIFY_REQUEUE_AFTER: maybe still queued
    settings.NOTIFY_REQUEUE_AFTER = timedelta(0)
    assert events_requeue_lost() == 25
    assert queue_sizes() == {"high": 5, "normal": 20, "low": 0}

    dispatcher = Dispatcher()
    drain(dispatcher)
    dispatcher.close()
    assert not Event.objects.filter(dispatched_at__isnull=True).exists()
    assert sorted(receiver.ids()) == sorted(event.public_id for event in events)
    assert events_requeue_lost() == 0  # nothing left to rebuild


def _subprocess_env() -> dict[str, str]:
    """The test database and this run's Redis prefixes, for a dispatcher process."""
    db = connection.settings_dict
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    database_url = (
        f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    env = dict(os.environ)  # REDIS_URL, SECRET_KEY, DEBUG, ALLOWED_HOSTS, CRYPTOPAY_* prefixes
    env.update(DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    return env


class DispatcherProcess(subprocess.Popen):
    log: Path  # where its stderr goes


def _start_dispatcher(**env: str) -> DispatcherProcess:
    """``manage.py run_dispatcher`` with these settings on top; its log goes to a file (a pipe
    nobody reads would fill up and stall it)."""
    log = tempfile.NamedTemporaryFile(prefix="dispatcher-", suffix=".log", delete=False)
    process = DispatcherProcess(
        [sys.executable, "manage.py", "run_dispatcher", "--max-seconds", "120"],
        cwd=ROOT,
        env=_subprocess_env() | env,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    process.log = Path(log.name)
    # Started once it says so: Django is set up and the loop runs.
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"dispatcher running", process.log.read_text()
    return process


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.django_db(transaction=True)
def test_dispatcher_killed_mid_batch_then_restarted_delivers_every_event(receiver, settings):
    receiver.delay = 0.01  # each delivery takes a little: the kill lands inside a batch
    webhook_endpoint_create(owner="mer_kill", url=receiver.url)
    events = publish_many("mer_kill", 200)
    expected = {event.public_id for event in events}

    first = _start_dispatcher()
    try:
        receiver.wait_for(lambda r: len(r.ids()) >= 30, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        _stop(first, signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL

    seen = set(receiver.ids())
    assert 30 <= len(seen) < 200
    assert seen <= expected
    # What the dead dispatcher held: ids off the queue it never dispatched (only the outbox has
    # them) and deliveries it claimed but never finished (their lease keeps others off).
    settings.NOTIFY_REQUEUE_AFTER = timedelta(0)
    events_requeue_lost()
    held = WebhookDelivery.objects.filter(status="pending", claimed_until__isnull=False).count()
    assert held > 0

    second = _start_dispatcher()
    try:
        deadline = time.monotonic() + 30
        while Event.objects.filter(dispatched_at__isnull=True).exists():
            assert second.poll() is None, second.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the second dispatcher did not finish"
            time.sleep(0.1)
    finally:
        _stop(second)
    # The second dispatcher does not touch what the first one still holds: its lease decides.
    assert len(set(receiver.ids())) < 200

    # Once the leases have passed, the sweep sends the deliveries the dead dispatcher held.
    from resilience import clock
    from resilience.clock import FrozenClock

    previous = clock.use(FrozenClock(timezone.now() + settings.WEBHOOK_CLAIM))
    try:
        while webhooks_deliver_due():
            pass
    finally:
        clock.use(previous)
    assert not WebhookDelivery.objects.exclude(status="succeeded").exists()
    received = receiver.ids()
    assert set(received) == expected  # every event, with its own id; none missing
    # Duplicates: only retries of what the dead dispatcher had POSTed and not yet recorded (its
    # recorder writes outcomes in batches), each at most once more, with the same Webhook-Id.
    twice = {webhook_id for webhook_id, n in Counter(received).items() if n > 1}
    assert twice <= seen
    assert max(Counter(received).values()) <= 2


# --- a failing endpoint holds no one back -------------------------------------------------------


def _arrival(receiver: Receiver, event: Event) -> float:
    (request,) = [r for r in receiver.requests if r.webhook_id == event.public_id]
    return request.at


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("failure", ["hanging", "down"])
def test_a_failing_endpoint_does_not_delay_another_endpoint_of_the_same_event(settings, failure):
    settings.WEBHOOK_TIMEOUT = timedelta(seconds=0.5)
    with Receiver() as bad, Receiver() as good:
        # The bad endpoint is created first, so it is first in line.
        webhook_endpoint_create(owner="mer_hol", url=bad.url)
        webhook_endpoint_create(owner="mer_hol", url=good.url)
        if failure == "hanging":
            bad.hang()
        else:
            bad.down()
        # High: the bad endpoint also gets its 3 immediate retries (4 timeouts: 2 s).
        (event,) = publish_many("mer_hol", 1, type="payment.status_changed")

        started = time.monotonic()
        dispatch_events(event_ids=[event.pk])
        took = time.monotonic() - started

        assert _arrival(good, event) - started < 0.4  # before the bad one's first timeout
        assert WebhookDelivery.objects.get(event=event, endpoint__url=good.url).status == (
            "succeeded"
        )
        bad_delivery = WebhookDelivery.objects.get(event=event, endpoint__url=bad.url)
        assert (bad_delivery.status, bad_delivery.attempts) == ("pending", 4)
        errors = WebhookAttempt.objects.filter(delivery=bad_delivery).values_list(
            "error", flat=True
        )
        expected_error = "Timeout" if failure == "hanging" else "ClientConnectorError"
        assert all(expected_error in error for error in errors)
        if failure == "hanging":
            assert len(bad.requests) == 4
            assert 4 * 0.5 <= took < 4 * 0.5 + 1.5


@pytest.mark.django_db(transaction=True)
def test_a_hanging_endpoint_delays_no_later_event_and_its_breaker_then_refuses_at_once(settings):
    """Each endpoint has its own lane: a later event to a healthy endpoint does not wait for an
    earlier event's attempts to a hanging one. Once that endpoint's breaker opens (timeouts
    count as failures), its attempts fail at once."""
    settings.WEBHOOK_TIMEOUT = timedelta(seconds=0.5)
    settings.BREAKER_MINIMUM_THROUGHPUT = 2  # breakers are built per endpoint on first use
    with Receiver() as bad, Receiver() as good, Receiver() as other:
        bad.hang()
        webhook_endpoint_create(owner="mer_bad", url=bad.url)
        webhook_endpoint_create(owner="mer_bad", url=good.url)
        webhook_endpoint_create(owner="mer_other", url=other.url)
        (first,) = publish_many("mer_bad", 1)
        (later,) = publish_many("mer_other", 1)

        started = time.monotonic()
        dispatch_events(event_ids=[first.pk, later.pk])
        assert _arrival(good, first) - started < 0.4
        assert _arrival(other, later) - started < 0.4  # before the bad one's first timeout

        # A second failure opens the bad endpoint's circuit (2 calls, all failing)...
        (second,) = publish_many("mer_bad", 1)
        dispatch_events(event_ids=[second.pk])
        # ...after which it costs nothing: the whole dispatch is over long before a timeout.
        (third,) = publish_many("mer_bad", 1)
        (after,) = publish_many("mer_other", 1)
        started = time.monotonic()
        dispatch_events(event_ids=[third.pk, after.pk])
        assert time.monotonic() - started < 0.4
        assert _arrival(good, third) - started < 0.4
        assert _arrival(other, after) - started < 0.4
        assert len(bad.requests) == 2
        third_bad = WebhookDelivery.objects.get(event=third, endpoint__url=bad.url)
        assert "circuit open" in third_bad.last_error


# --- isolation, priority end to end, one POST per attempt ------------------------------


def _latencies_ms(receiver: Receiver, published: dict[str, float]) -> list[float]:
    arrivals = {r.webhook_id: r.at for r in receiver.requests if r.webhook_id in published}
    return sorted((arrivals[i] - at) * 1000 for i, at in published.items() if i in arrivals)


def _p(ordered: list[float], q: float) -> float:
    return ordered[max(0, int(len(ordered) * q + 0.999999) - 1)]


def _publish_paced(owners: list[str], count: int, *, gap: float, type: str = "payment.created"):
    """``count`` events per owner, one every ``gap`` seconds; the publish time of each."""
    published: dict[str, dict[str, float]] = {owner: {} for owner in owners}
    for n in range(count):
        for owner in owners:
            at = time.monotonic()
            with transaction.atomic():
                event = event_publish(
                    owner=owner, type=type, subject=f"pay_{owner}_{n}", data={"n": n}
                )
            published[owner][event.public_id] = at
        time.sleep(gap)  # the pace of the traffic itself, not a wait for a condition
    return published


@pytest.mark.django_db(transaction=True)
def test_given_hanging_slow_failing_and_refusing_endpoints_when_events_flow_then_healthy_endpoints_keep_their_latency():
    timeout = {"CRYPTOPAY_WEBHOOK_TIMEOUT_SECONDS": "1", "CRYPTOPAY_WEBHOOK_SLOW_SECONDS": "0.3"}
    with (
        Receiver() as hanging, Receiver(delay=0.9) as slow, Receiver(default_status=500) as failing,
        Receiver() as refusing, Receiver() as healthy, Receiver() as other,
    ):  # fmt: skip
        hanging.hang()
        refusing.down()
        # The bad endpoints share a merchant (and so every event) with a healthy one.
        for receiver in (hanging, slow, failing, refusing, healthy):
            webhook_endpoint_create(owner="mer_mixed", url=receiver.url)
        _, other_secret = webhook_endpoint_create(owner="mer_calm", url=other.url)
        dispatcher = _start_dispatcher(**timeout)
        try:
            # Given the healthy endpoints' latency with nothing failing,
            baseline = _publish_paced(["mer_calm"], 40, gap=0.02)["mer_calm"]
            other.wait_for(lambda r: set(baseline) <= set(r.ids()), timeout=10)
            before = _p(_latencies_ms(other, baseline), 0.95)
            # when every event also goes to four bad endpoints for several timeouts,
            during = _publish_paced(["mer_mixed", "mer_calm"], 150, gap=0.02)
            healthy.wait_for(lambda r: set(during["mer_mixed"]) <= set(r.ids()), timeout=20)
            other.wait_for(lambda r: set(during["mer_calm"]) <= set(r.ids()), timeout=20)
        finally:
            _stop(dispatcher)
        # then the healthy endpoints' p95 stays within twice the baseline (plus 10 ms: a
        # loopback baseline of a few ms is within scheduler noise on a 2-core machine),
        limit = 2 * before + 10
        for receiver, published in ((other, during["mer_calm"]), (healthy, during["mer_mixed"])):
            latencies = _latencies_ms(receiver, published)
            assert len(latencies) == len(published)
            assert _p(latencies, 0.95) <= limit, (_p(latencies, 0.95), before)
            assert all(n == 1 for n in Counter(receiver.ids()).values())  # never twice
        # each bad endpoint held only its own lane: never more than 4 requests at once,
        assert len(hanging.requests) <= 2 * 4  # until its breaker opened on timeouts
        # and slowness counts: the slow-but-200 endpoint's breaker opened too.
        slow_errors = WebhookDelivery.objects.filter(endpoint__url=slow.url).values_list(
            "last_error", flat=True
        )
        assert any("circuit open" in error for error in slow_errors)
        assert len(slow.requests) < 150
        for received in other.requests[:5]:
            assert stripe_verified(received, other_secret)


# Queued Low webhooks ahead of the High ones: thousands, so that the flood lasts while the 20
# High events are published. Once one dispatcher dispatched on its sending loop, 32 requests in
# flight, it sent 2,000 in 0.22 s, and publishing the 20 High events on a busy machine took
# about as long.
LOW_FLOOD = 5000


@pytest.mark.django_db(transaction=True)
def test_given_a_flood_of_queued_low_webhooks_when_high_events_are_published_then_they_arrive_first():
    # The receiver in a process of its own: its work must not slow this one's publishing.
    with FastReceiver() as receiver:
        webhook_endpoint_create(
            owner="mer_prio", url=receiver.url,
            event_types=["exchange_rate.updated", "payment.status_changed"],
        )  # fmt: skip
        now = timezone.now()
        lows = Event.objects.bulk_create(
            [
                Event(owner="", type="exchange_rate.updated", priority=Priority.LOW,
                      subject="BTC/USD", data={"n": n}, created_at=now)
                for n in range(LOW_FLOOD)
            ]
        )  # fmt: skip
        redis_queues().rpush(queues.key("low"), *(event.pk for event in lows))
        # The whole flood held for the endpoint (by default past 1,000 the rest waits for the
        # retry sweep, which this test does not run).
        dispatcher = _start_dispatcher(CRYPTOPAY_WEBHOOK_ENDPOINT_BACKLOG=str(2 * LOW_FLOOD))
        try:
            deadline = time.monotonic() + 20
            # Polled every 10 ms, not in a busy loop: the latencies are the receiver's arrival
            # times, and a busy poll took CPU from the dispatcher on this 2-core machine.
            while receiver.received() < 20:  # the Low burst is on
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # 5 ms apart: all of them while the Low burst lasts.
            highs = _publish_paced(["mer_prio"], 20, gap=0.005, type="payment.status_changed")
            highs = highs["mer_prio"]
            while receiver.received() < LOW_FLOOD + len(highs):  # the whole flood, to its end
                assert time.monotonic() < deadline + 20
                time.sleep(0.01)
            report = receiver.report()
        finally:
            _stop(dispatcher)
    arrivals = report["arrivals"]
    latencies = sorted((arrivals[i] - at) * 1000 for i, at in highs.items())
    last_low = max(at for i, at in arrivals.items() if i not in highs)
    # The High events published while Low ones were still waiting, and early enough to arrive
    # within the 250 ms goal before the last Low one, overtook them: sent in order, they would
    # have come after the last Low one.
    behind_lows = [i for i, at in highs.items() if at < last_low - 0.25]
    assert len(behind_lows) >= 5, (len(behind_lows), last_low, highs)
    assert all(arrivals[i] < last_low for i in behind_lows)
    assert _p(latencies, 0.99) <= 250, latencies


@pytest.mark.django_db(transaction=True)
def test_given_the_sweep_running_alongside_the_dispatcher_then_a_healthy_endpoint_gets_each_event_once(
    receiver,
):
    receiver.delay = 0.02  # every delivery is in flight a while: the sweep has its chance
    _, secret = webhook_endpoint_create(owner="mer_once", url=receiver.url)
    events = publish_many("mer_once", 150)
    dispatcher = _start_dispatcher()
    try:
        deadline = time.monotonic() + 30
        while WebhookDelivery.objects.filter(status="succeeded").count() < 150:
            assert time.monotonic() < deadline, "not delivered"
            webhooks_deliver_due()  # the beat's sweep, as often as it can run
    finally:
        _stop(dispatcher)
    counts = Counter(receiver.ids())
    assert set(counts) == {event.public_id for event in events}
    assert set(counts.values()) == {1}
    assert WebhookAttempt.objects.count() == 150
    assert all(stripe_verified(received, secret) for received in receiver.requests)


@pytest.mark.django_db
def test_the_sweep_claims_high_before_normal_before_low_then_by_due_time(frozen_clock, receiver):
    webhook_endpoint_create(
        owner="mer_sweep", url=receiver.url,
        event_types=["exchange_rate.updated", "payment.created", "payment.status_changed"],
    )  # fmt: skip
    order = []
    for type in ("exchange_rate.updated", "payment.created", "payment.status_changed"):
        owner = "" if type == "exchange_rate.updated" else "mer_sweep"
        event = event_publish(owner=owner, type=type, subject="pay_x", data={})
        deliveries_create(event=event)  # due now, oldest first: Low, Normal, High
        order.append(event.public_id)
        frozen_clock.advance(timedelta(seconds=1))

    while webhooks_deliver_due(limit=1):
        pass

    assert receiver.ids() == order[::-1]


@pytest.mark.django_db
def test_a_claimed_delivery_is_not_swept_until_its_lease_has_passed(
    frozen_clock, receiver, settings
):
    webhook_endpoint_create(owner="mer_lease", url=receiver.url)
    (event,) = [event_publish(owner="mer_lease", type="payment.created", data={})]
    (claim,) = deliveries_claim_new(events=[event])  # a dispatcher holds it, then dies

    assert webhooks_deliver_due() == 0
    frozen_clock.advance(settings.WEBHOOK_CLAIM - timedelta(seconds=1))
    assert webhooks_deliver_due() == 0
    frozen_clock.advance(timedelta(seconds=1))
    assert webhooks_deliver_due() == 1
    assert receiver.ids() == [event.public_id]
    # The dead holder's late report (same token, a claim later) decides nothing.
    attempts_record(outcomes=[Outcome(claim, [AttemptResult(500, "", 1, frozen_clock.now())])])
    assert WebhookDelivery.objects.get().status == "succeeded"


@pytest.mark.django_db
def test_a_late_success_from_a_replaced_holder_is_logged_but_only_the_holder_finishes_it(
    frozen_clock, receiver, settings
):
    webhook_endpoint_create(owner="mer_late", url=receiver.url)
    (event,) = [event_publish(owner="mer_late", type="payment.created", data={})]
    (stale,) = deliveries_claim_new(events=[event])
    frozen_clock.advance(settings.WEBHOOK_CLAIM)
    (current,) = deliveries_claim_due(limit=10)  # the lease passed: the sweep holds it now

    attempts_record(outcomes=[Outcome(stale, [AttemptResult(200, "", 1, frozen_clock.now())])])

    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.claim, delivery.log.count()) == ("pending", current.token, 1)
    assert delivery.claimed_until is not None

    attempts_record(outcomes=[Outcome(current, [AttemptResult(200, "", 1, frozen_clock.now())])])

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.log.count()) == ("succeeded", 2, 2)
    assert delivery.claimed_until is None


def claimed_then_retaken(owner, receiver, frozen_clock, settings, *, count, retaken):
    """``count`` deliveries claimed by a first holder, then, once its lease passed, at most
    ``retaken`` of them claimed again (the sweep): (first claims, new claims), each by id."""
    webhook_endpoint_create(owner=owner, url=receiver.url)
    events = [
        event_publish(owner=owner, type="payment.created", subject=f"pay_{n}", data={})
        for n in range(count)
    ]
    stale = sorted(deliveries_claim_new(events=events), key=lambda claim: claim.delivery_id)
    frozen_clock.advance(settings.WEBHOOK_CLAIM)
    current = sorted(deliveries_claim_due(limit=retaken), key=lambda claim: claim.delivery_id)
    return stale, current


@pytest.mark.django_db
def test_a_batch_of_successes_finishes_the_holders_deliveries_and_logs_every_attempt_once(
    frozen_clock, receiver, settings
):
    stale, current = claimed_then_retaken(
        "mer_batch", receiver, frozen_clock, settings, count=5, retaken=10
    )
    assert [claim.delivery_id for claim in current] == [claim.delivery_id for claim in stale]

    # Two late reports from the replaced holder and three from the current one, in one batch.
    now = frozen_clock.now()
    attempts_record(
        outcomes=[
            Outcome(claim, [AttemptResult(200, "", 1, now)]) for claim in stale[:2] + current[2:]
        ]
    )

    rows = sorted(WebhookDelivery.objects.all(), key=lambda row: row.pk)
    assert [row.status for row in rows] == ["pending"] * 2 + ["succeeded"] * 3
    assert [row.claimed_until is None for row in rows] == [False] * 2 + [True] * 3
    assert [(row.attempts, row.log.count()) for row in rows] == [(1, 1)] * 5


@pytest.mark.django_db
def test_deliveries_given_back_unattempted_are_released_in_one_statement_only_where_the_claim_holds(
    frozen_clock, receiver, settings
):
    # Given five claimed deliveries whose lease passed, two of them claimed again since.
    stale, current = claimed_then_retaken(
        "mer_shed", receiver, frozen_clock, settings, count=5, retaken=2
    )
    retaken = {claim.delivery_id for claim in current}

    # When the first holder gives all five back unattempted (a lane over its bound).
    with CaptureQueriesContext(connection) as queries:
        attempts_record(outcomes=[Outcome(claim, released=True) for claim in stale])

    # Then the three it still held are free for the sweep at once, the two retaken stay with
    # their new holder, nothing is logged or counted, and it took one statement.
    rows = sorted(WebhookDelivery.objects.all(), key=lambda row: row.pk)
    assert [(row.pk in retaken, row.claimed_until is None) for row in rows] == [
        (row.pk in retaken, row.pk not in retaken) for row in rows
    ]
    assert sorted(row.claim for row in rows if row.pk in retaken) == sorted(
        claim.token for claim in current
    )
    assert {(row.status, row.attempts, row.log.count()) for row in rows} == {("pending", 0, 0)}
    assert len(queries.captured_queries) == 1, [q["sql"][:80] for q in queries.captured_queries]


@pytest.mark.django_db
def test_dispatching_an_event_claims_new_deliveries_and_existing_unattempted_ones_once(receiver):
    webhook_endpoint_create(owner="mer_again", url=receiver.url)
    (event,) = [event_publish(owner="mer_again", type="payment.created", data={})]
    (existing,) = deliveries_create(event=event)  # e.g. created before its dispatcher died
    webhook_endpoint_create(owner="mer_again", url=receiver.url + "?second")

    claims = deliveries_claim_new(events=[event])

    deliveries = {delivery.pk: delivery for delivery in WebhookDelivery.objects.all()}
    assert len(deliveries) == 2
    assert sorted((claim.delivery_id, claim.token) for claim in claims) == sorted(
        (pk, 1) for pk in deliveries
    )
    assert all(delivery.claim == 1 and delivery.claimed_until for delivery in deliveries.values())
    assert existing.pk in deliveries
    assert deliveries_claim_new(events=[event]) == []  # claimed: nobody claims them again


@pytest.mark.django_db(transaction=True)
def test_given_redis_restarted_mid_delivery_then_every_event_arrives_once(receiver, settings):
    _, secret = webhook_endpoint_create(owner="mer_redis", url=receiver.url)
    before = publish_many("mer_redis", 50)
    dispatcher = _start_dispatcher()
    try:
        receiver.wait_for(lambda r: len(r.ids()) >= 10, timeout=20)
        with redis_stopped(settings.REDIS_URL):
            during = publish_many("mer_redis", 50)  # not queued: the outbox has them
        after = publish_many("mer_redis", 50)
        settings.NOTIFY_REQUEUE_AFTER = timedelta(0)
        events_requeue_lost()
        expected = {event.public_id for event in before + during + after}
        receiver.wait_for(lambda r: set(r.ids()) >= expected, timeout=30)
    finally:
        _stop(dispatcher)
    counts = Counter(receiver.ids())
    assert set(counts) == expected
    assert set(counts.values()) == {1}  # the endpoint never failed: no duplicate
    assert all(stripe_verified(received, secret) for received in receiver.requests)


# --- requeue under load, stream positions -----------------------------------------------------


@pytest.mark.django_db
def test_a_lost_event_is_requeued_after_the_requeue_delay_even_behind_a_backlog(frozen_clock):
    backlog = publish_many("mer_busy", 1000, type="exchange_rate.updated")
    redis_queues().rpush(queues.key("low"), *(event.pk for event in backlog))
    (lost,) = publish_many("mer_busy", 1, type="payment.status_changed")  # its id never queued

    frozen_clock.advance(settings_requeue_after())
    assert events_requeue_lost() == 1
    assert queue_sizes() == {"high": 1, "normal": 0, "low": 1000}  # the backlog not twice
    assert pop_batch(size=1, wait=0.01)[0] == [("high", lost.pk)]


def settings_requeue_after() -> timedelta:
    from django.conf import settings

    return settings.NOTIFY_REQUEUE_AFTER


@pytest.mark.django_db
def test_an_event_whose_stream_position_cannot_be_written_stays_undispatched(receiver):
    webhook_endpoint_create(owner="mer_pos", url=receiver.url)
    (first,) = publish_many("mer_pos", 1)
    assert dispatch_events(event_ids=[first.pk]) == 1  # position 1
    (second,) = publish_many("mer_pos", 1)
    (squatter,) = publish_many("mer_other_pos", 1)
    # Position 2 of the owner is taken already (a broken write elsewhere): assigning fails.
    Event.objects.filter(pk=squatter.pk).update(owner="mer_pos", stream_position=2)

    assert dispatch_events(event_ids=[second.pk]) == 0
    second.refresh_from_db()
    assert (second.dispatched_at, second.stream_position) == (None, None)
    assert receiver.ids() == [first.public_id]  # nothing sent without a position

    Event.objects.filter(pk=squatter.pk).update(owner="mer_other_pos", stream_position=None)
    assert dispatch_events(event_ids=[second.pk]) == 1  # retried: the requeue sweep's job
    second.refresh_from_db()
    assert second.stream_position == 2
    assert receiver.ids() == [first.public_id, second.public_id]


@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_holds_back_only_the_owner_whose_stream_position_cannot_be_written(
    receiver, caplog
):
    # Given two merchants whose first events the dispatcher sent (each stream was new), and a
    # third event that takes the first merchant's position 2 (a broken write elsewhere)
    for owner in ("mer_stuck", "mer_fine"):
        webhook_endpoint_create(owner=owner, url=f"{receiver.url}?{owner}")
    firsts = publish_many("mer_stuck", 1) + publish_many("mer_fine", 1)
    (squatter,) = publish_many("mer_squatter", 1)
    dispatcher = Dispatcher()
    try:
        drain(dispatcher)
        Event.objects.filter(pk=squatter.pk).update(owner="mer_stuck", stream_position=2)

        # When one batch holds an event of each merchant
        (stuck,) = publish_many("mer_stuck", 1)
        fine = publish_many("mer_fine", 2)
        drain(dispatcher)

        # Then the batch failed on the dispatcher's loop and was dispatched again, each merchant
        # apart: the second merchant's events went out with their positions, the first's did not
        assert "dispatching them the general way" in caplog.text
        assert [Event.objects.get(pk=e.pk).stream_position for e in fine] == [2, 3]
        stuck.refresh_from_db()
        assert (stuck.dispatched_at, stuck.stream_position) == (None, None)
        receiver.wait_for(lambda r: len(r.ids()) >= 4, timeout=20)
        assert stuck.public_id not in receiver.ids()

        # and once the position is free, the requeued event goes out once, with it
        Event.objects.filter(pk=squatter.pk).update(owner="mer_squatter", stream_position=None)
        queues.enqueue(event_id=stuck.pk, priority=stuck.priority)
        drain(dispatcher)
        stuck.refresh_from_db()
        assert stuck.stream_position == 2
        receiver.wait_for(lambda r: len(r.ids()) >= 5, timeout=20)
        assert Counter(receiver.ids()) == Counter(
            {event.public_id: 1 for event in [*firsts, *fine, stuck]}
        )
    finally:
        dispatcher.close()


@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_carries_on_after_the_database_ended_its_sessions(receiver):
    # Given a dispatcher that has dispatched and delivered, its database connections open
    webhook_endpoint_create(owner="mer_severed", url=receiver.url)
    before = publish_many("mer_severed", 2)
    dispatcher = Dispatcher()
    try:
        drain(dispatcher)

        # When the database ends every other session (a restart, an operator's
        # pg_terminate_backend) and more events come
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            (ended,) = cursor.fetchone()
        assert ended >= 1
        after = publish_many("mer_severed", 3)
        drain(dispatcher)
        more = publish_many("mer_severed", 3)
        drain(dispatcher)

        # Then every event was delivered once, with its stream position in order
        receiver.wait_for(lambda r: len(r.ids()) >= 8, timeout=20)
        assert Counter(receiver.ids()) == Counter(
            {event.public_id: 1 for event in [*before, *after, *more]}
        )
        positions = [Event.objects.get(pk=event.pk).stream_position for event in after + more]
        assert positions == [3, 4, 5, 6, 7, 8]
    finally:
        dispatcher.close()


@pytest.mark.django_db
def test_one_dispatch_sends_each_event_to_exactly_the_endpoints_that_want_it(receiver):
    """Merchant events go to their owner's endpoints of their mode that take their type; a
    system event (no owner) to every endpoint naming its type, whoever owns it."""
    every = webhook_endpoint_create(owner="mer_pick", url=receiver.url + "?every")[0]
    named = webhook_endpoint_create(
        owner="mer_pick", url=receiver.url + "?named", event_types=["exchange_rate.updated"]
    )[0]
    other = webhook_endpoint_create(
        owner="mer_pick", url=receiver.url + "?other", event_types=["payment.status_changed"]
    )[0]
    test = webhook_endpoint_create(owner="mer_pick", url=receiver.url + "?test", livemode=False)[0]
    stranger = webhook_endpoint_create(
        owner="mer_stranger", url=receiver.url + "?stranger", event_types=["exchange_rate.updated"]
    )[0]
    with transaction.atomic():
        live = event_publish(owner="mer_pick", type="payment.created", data={})
        test_mode = event_publish(owner="mer_pick", type="payment.created", data={}, livemode=False)
        rate = event_publish(owner="", type="exchange_rate.updated", data={})

    assert dispatch_events(event_ids=[live.pk, test_mode.pk, rate.pk]) == 3

    sent = Counter(WebhookDelivery.objects.values_list("event_id", "endpoint_id"))
    assert sent == {
        (live.pk, every.pk): 1,
        (test_mode.pk, test.pk): 1,
        (rate.pk, named.pk): 1,
        (rate.pk, stranger.pk): 1,
    }
    assert other.pk not in {endpoint for _, endpoint in sent}
    assert Counter(receiver.ids()) == {live.public_id: 1, test_mode.public_id: 1, rate.public_id: 2}
    live.refresh_from_db()
    test_mode.refresh_from_db()
    rate.refresh_from_db()
    # Each mode numbers its own stream; a system event is in none.
    assert (live.stream_position, test_mode.stream_position, rate.stream_position) == (1, 1, None)


@pytest.mark.django_db
def test_a_redispatched_event_sends_its_unattempted_deliveries_once_and_keeps_its_position(
    receiver,
):
    webhook_endpoint_create(owner="mer_redo", url=receiver.url)
    (event,) = publish_many("mer_redo", 1)
    (existing,) = deliveries_create(event=event)  # its dispatcher died before committing
    webhook_endpoint_create(owner="mer_redo", url=receiver.url + "?second")

    assert dispatch_events(event_ids=[event.pk]) == 1
    assert dispatch_events(event_ids=[event.pk]) == 0  # dispatched: nothing twice

    assert Counter(receiver.ids()) == {event.public_id: 2}
    statuses = dict(WebhookDelivery.objects.values_list("pk", "status"))
    assert len(statuses) == 2 and existing.pk in statuses
    assert set(statuses.values()) == {"succeeded"}
    event.refresh_from_db()
    assert event.stream_position == 1 and event.dispatched_at is not None


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_numbering_one_merchants_stream_at_once_leave_no_gap_and_no_repeat(
    receiver, settings
):
    # Given one merchant's 400 events (an endpoint too: deliveries are inserted in the same
    # trip), its stream started, and two dispatchers taking alternate chunks of 50 at once.
    # Their sends at most 8 at a time each: the numbering is under test, and this process's
    # threaded test receiver, with 2 x 32 requests at once, let some time out (clean-clone run).
    settings.WEBHOOK_ENDPOINT_FAST_CONCURRENCY = 8
    webhook_endpoint_create(owner="mer_race", url=receiver.url)
    publish_many("mer_race", 1)
    dispatch_events(event_ids=list(Event.objects.values_list("pk", flat=True)))
    events = publish_many("mer_race", 400)
    chunks = [[event.pk for event in events[at : at + 50]] for at in range(0, 400, 50)]
    start = threading.Barrier(2)
    dispatched: list[int] = []
    failures: list[BaseException] = []

    def dispatcher(mine: list[list[int]]) -> None:
        try:
            start.wait()
            for chunk in mine:
                dispatched.append(dispatch_events(event_ids=chunk))
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)
        finally:
            connection.close()

    # When both number the stream at the same time.
    threads = [threading.Thread(target=dispatcher, args=(chunks[n::2],)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then every event has its own place, 2..401, each chunk in one run of positions.
    assert not failures and sum(dispatched) == 400
    rows = Event.objects.filter(pk__in=[event.pk for event in events]).values_list(
        "pk", "stream_position"
    )
    positions = {pk: position for pk, position in rows if position is not None}
    assert sorted(positions.values()) == list(range(2, 402))
    for chunk in chunks:
        ordered = [positions[pk] for pk in chunk]
        assert ordered == list(range(ordered[0], ordered[0] + 50))
    receiver.wait_for(lambda r: len(set(r.ids())) == 401, timeout=30)


def rows_read(table: str) -> int:
    """Rows this transaction has read from ``table`` so far, by any scan."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
            "WHERE relname = %s",
            [table],
        )
        (read,) = cursor.fetchone()
    return read


def analyze(table: str) -> None:
    """Statistics as autovacuum takes them on a quiet day (rolled back with the test)."""
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")


def burst(owner: str, count: int, **fields) -> list[Event]:
    """``count`` events of one merchant, undispatched unless ``fields`` say otherwise."""
    now = timezone.now()
    return Event.objects.bulk_create(
        Event(owner=owner, type="payment.created", priority=Priority.NORMAL,
              subject=f"pay_b{n}", sequence=1, data={}, created_at=now, **fields)
        for n in range(count)
    )  # fmt: skip


@pytest.mark.django_db
def test_dispatching_a_batch_reads_its_own_events_not_the_whole_burst_waiting():
    # Given statistics taken while every event was dispatched, then a burst of 20,000 (the
    # partial index of undispatched events looks empty to the planner)
    burst("mer_quiet", 2_000, dispatched_at=timezone.now())
    analyze(Event._meta.db_table)
    events = burst("mer_burst", 20_000)
    before = rows_read(Event._meta.db_table)

    # When a batch of ten is dispatched
    assert dispatch_events(event_ids=[event.pk for event in events[:10]]) == 10

    # Then the dispatch looked its ten events up, it did not read the twenty thousand
    assert rows_read(Event._meta.db_table) - before < 200


@pytest.mark.django_db
def test_recording_successes_reads_their_deliveries_not_the_backlog_of_pending_ones(receiver):
    # Given statistics taken while no delivery was pending, then a backlog of 20,000 claimed
    # pending deliveries (a failing endpoint's)
    webhook_endpoint_create(owner="mer_backlog", url=receiver.url)
    quiet = deliveries_claim_new(events=burst("mer_backlog", 2_000))
    now = timezone.now()
    attempts_record(outcomes=[Outcome(claim, [AttemptResult(200, "", 1, now)]) for claim in quiet])
    analyze(WebhookDelivery._meta.db_table)
    claims = deliveries_claim_new(events=burst("mer_backlog", 20_000))
    before = rows_read(WebhookDelivery._meta.db_table)

    # When ten successes are recorded
    attempts_record(
        outcomes=[Outcome(claim, [AttemptResult(200, "", 1, now)]) for claim in claims[:10]]
    )

    # Then only those ten deliveries were read, each finished and logged once
    assert rows_read(WebhookDelivery._meta.db_table) - before < 200
    ten = [claim.delivery_id for claim in claims[:10]]
    finished = WebhookDelivery.objects.filter(pk__in=ten, status="succeeded")
    assert finished.count() == 10
    assert WebhookAttempt.objects.filter(delivery__in=ten).count() == 10
    assert WebhookDelivery.objects.filter(status="pending").count() == 20_000 - 10


@pytest.mark.django_db
def test_a_sweep_with_a_budget_sends_batch_after_full_batch_until_the_due_backlog_is_gone(
    receiver,
):
    # Given 150 deliveries due to a healthy endpoint (a burst a dispatcher's lane gave back)
    webhook_endpoint_create(owner="mer_backlog", url=receiver.url)
    for event in burst("mer_backlog", 150):
        deliveries_create(event=event)

    # When one sweep runs with no budget, then one with a budget of a minute
    first = webhooks_deliver_due(limit=64)
    rest = webhooks_deliver_due(limit=64, budget_seconds=60)

    # Then the first sent one batch, the second the other two (a full one, then the rest), and
    # every event arrived once
    assert (first, rest) == (64, 86)
    assert Counter(Counter(receiver.ids()).values()) == {1: 150}
    assert not WebhookDelivery.objects.exclude(status="succeeded").exists()


@pytest.mark.django_db
def test_a_sweep_stops_after_the_batch_that_spends_its_budget(frozen_clock):
    # Given 150 deliveries due to an endpoint that takes a fifth of a second per answer (the
    # test's clock moves as it answers)
    slow = Receiver(on_request=lambda: frozen_clock.advance(timedelta(seconds=0.2)))
    with slow:
        webhook_endpoint_create(owner="mer_backlog", url=slow.url)
        for event in burst("mer_backlog", 150):
            deliveries_create(event=event)

        # When a sweep with a budget of five seconds runs: its first batch takes about twelve
        sent = webhooks_deliver_due(limit=64, budget_seconds=5)

        # Then it sent that one batch and left the rest to the next sweep
        assert sent == 64
        assert len(slow.requests) == 64
    assert WebhookDelivery.objects.filter(status="pending").count() == 150 - 64


@pytest.mark.django_db(transaction=True)
def test_a_batch_is_dispatched_in_a_transaction_its_first_query_begins_and_its_second_commits(
    receiver,
):
    # Given a merchant with an endpoint whose stream exists (its first event was dispatched)
    webhook_endpoint_create(owner="mer_trips", url=receiver.url)
    (first,) = publish_many("mer_trips", 1)
    assert dispatch_events(event_ids=[first.pk]) == 1
    events = publish_many("mer_trips", 5)

    # When a batch of five is dispatched (sent here: no dispatcher loop)
    with traced() as wire:
        assert dispatch_events(event_ids=[event.pk for event in events]) == 5

    # Then its transaction was two queries: one that began it, one that committed it
    begun, committed = wire.queries[:2]
    assert begun.startswith('"BEGIN;') and "FOR UPDATE SKIP LOCKED" in begun, wire.queries
    assert committed.rstrip('"').endswith("COMMIT") and "INSERT INTO" in committed
    # and everything it wrote is committed: positions, claims, and each webhook received once
    positions = {
        event.pk: event.stream_position
        for event in Event.objects.filter(pk__in=[e.pk for e in events])
    }
    assert sorted(positions.values(), key=lambda p: p or 0) == [2, 3, 4, 5, 6]
    receiver.wait_for(lambda r: len(r.ids()) >= 6, timeout=20)
    assert Counter(receiver.ids()) == Counter({e.public_id: 1 for e in [first, *events]})


@pytest.mark.django_db(transaction=True)
def test_a_redispatched_event_does_not_claim_a_delivery_to_an_endpoint_that_no_longer_wants_it(
    receiver,
):
    # Given an event with a delivery made before its endpoint was disabled, and a second endpoint
    old, _ = webhook_endpoint_create(owner="mer_moved", url=receiver.url + "?old")
    (event,) = publish_many("mer_moved", 1)
    (stale,) = deliveries_create(event=event)
    WebhookEndpoint.objects.filter(pk=old.pk).update(enabled=False)
    webhook_endpoint_create(owner="mer_moved", url=receiver.url + "?new")

    # When the event is dispatched
    assert dispatch_events(event_ids=[event.pk]) == 1

    # Then only the wanted endpoint's delivery was claimed and sent; the other is untouched
    receiver.wait_for(lambda r: len(r.requests) >= 1, timeout=20)
    stale.refresh_from_db()
    assert (stale.claim, stale.claimed_until, stale.attempts) == (0, None, 0)
    sent = WebhookDelivery.objects.exclude(pk=stale.pk).get(event=event)
    assert sent.status == WebhookDelivery.Status.SUCCEEDED


@pytest.mark.django_db
def test_a_merchant_s_events_without_endpoints_get_their_positions_inside_an_open_transaction():
    # Given a merchant whose stream exists and who has no webhook endpoint, inside a transaction
    # that is already open (the dispatch cannot carry its own BEGIN and COMMIT)
    (first,) = publish_many("mer_quietly", 1)
    assert dispatch_events(event_ids=[first.pk]) == 1
    events = publish_many("mer_quietly", 2)

    # When they are dispatched
    assert dispatch_events(event_ids=[event.pk for event in events]) == 2

    # Then the stream moved on and each event has its position
    positions = Event.objects.filter(owner="mer_quietly").values_list("stream_position", flat=True)
    assert sorted(position or 0 for position in positions) == [1, 2, 3]
