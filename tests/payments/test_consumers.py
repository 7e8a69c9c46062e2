"""Live streams through the real ASGI application, channels-redis and PostgreSQL.

Each scenario is a coroutine run on its own event loop; the consumers' database work runs in
threads, so the tests are transactional (data committed, as in production).
"""

from __future__ import annotations

import asyncio
import faulthandler
import tempfile
import threading
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client

from accounts.models import ApiKeyScope
from cryptopay.asgi import application
from notifications.dispatcher import dispatch_events, stream_position_assign
from notifications.models import Event
from notifications.presence import connection_registry
from notifications.streams import (
    CLOSE_BAD_REQUEST,
    CLOSE_CONNECTION_LIMIT,
    CLOSE_FORBIDDEN,
    CLOSE_UNAUTHENTICATED,
    MAX_POSITION,
)
from payments.models import Payment
from payments.services import payment_transition
from resilience.redis_client import fast_fail_client
from tests.factories import ApiKeyFactory, MerchantFactory, make_payment

pytestmark = pytest.mark.django_db(transaction=True)


# A scenario's own waits are bounded (every receive has a timeout, the whole scenario 30 s); the
# event loop's shutdown after it (cancelling the consumers, joining the executor threads, closing
# the channel layer's pools) is not. So the loop runs in a thread of its own and the test waits for
# it at most this long: a shutdown that hangs fails the test, with every thread's stack, instead of
# stalling the suite until CI gives up on it.
SCENARIO_SECONDS = 30
SHUTDOWN_SECONDS = 30


def run(scenario: Coroutine[Any, Any, None]) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def scenario_then_close_connections() -> None:
        loops.append(asyncio.get_running_loop())
        try:
            await asyncio.wait_for(scenario, timeout=SCENARIO_SECONDS)
        finally:
            # The consumers' database thread keeps a connection; the test database must drop.
            await sync_to_async(connections.close_all)()

    failures: list[BaseException] = []

    def on_its_own_loop() -> None:
        try:
            asyncio.run(scenario_then_close_connections())
        except BaseException as exc:  # re-raised in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=on_its_own_loop, name="websocket-scenario", daemon=True)
    thread.start()
    thread.join(SCENARIO_SECONDS + SHUTDOWN_SECONDS)
    if thread.is_alive():
        with tempfile.TemporaryFile("w+") as stacks:  # faulthandler writes to a real file
            faulthandler.dump_traceback(stacks, all_threads=True)
            print("\nthe loop's tasks:", file=stacks)
            for task in asyncio.all_tasks(loops[0]) if loops else ():
                task.print_stack(file=stacks)
            stacks.seek(0)
            pytest.fail(f"the scenario's event loop did not finish; threads:\n{stacks.read()}")
    if failures:
        raise failures[0]


async def open_socket(
    path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, _ = await communicator.connect(timeout=5)
    assert connected, "the handshake is accepted before any check, so browsers see close codes"
    return communicator


async def closed_with(communicator: WebsocketCommunicator) -> tuple[int, str]:
    message = await communicator.receive_output(timeout=5)
    assert message["type"] == "websocket.close", message
    # The client's side of the closing handshake: the server sees websocket.disconnect and the
    # consumer ends, as it does behind daphne. On its own: one that has to be cancelled (a
    # channel-layer receive that swallowed its cancellation kept them alive) is a leak.
    await communicator.disconnect(code=message.get("code", 1000), timeout=5)
    assert not communicator.future.cancelled(), "the consumer did not end after the disconnect"
    return message.get("code"), message.get("reason", "")


def checkout_path(payment: Payment, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"token": payment.checkout_token, **params}.items())
    return f"/ws/payments/{payment.public_id}/?{query}"


@sync_to_async
def change_status(payment: Payment, to_status: str) -> Event:
    payment_transition(
        payment=Payment.objects.get(pk=payment.pk), to_status=to_status, reason="test"
    )
    event = Event.objects.filter(subject=payment.public_id).order_by("-sequence").first()
    assert event is not None, "a status change is an event"
    return event


@sync_to_async
def dispatch(*events: Event) -> None:
    for event in events:
        dispatch_events(event_ids=[event.pk])


async def events_received(communicator: WebsocketCommunicator, count: int) -> list[dict]:
    return [await communicator.receive_json_from(timeout=5) for _ in range(count)]


# --- authorization ----------------------------------------------------------------------------


def test_given_no_checkout_token_when_connecting_then_closed_unauthenticated():
    payment = make_payment()

    async def scenario():
        socket = await open_socket(f"/ws/payments/{payment.public_id}/")
        assert (await closed_with(socket))[0] == CLOSE_UNAUTHENTICATED

    run(scenario())


@pytest.mark.parametrize("which", ["wrong token", "unknown payment"])
def test_given_a_wrong_token_or_unknown_payment_when_connecting_then_closed_forbidden(which):
    payment = make_payment()
    path = (
        f"/ws/payments/{payment.public_id}/?token=not-the-token"
        if which == "wrong token"
        else f"/ws/payments/pay_doesnotexist/?token={payment.checkout_token}"
    )

    async def scenario():
        code, reason = await closed_with(await open_socket(path))
        assert code == CLOSE_FORBIDDEN
        assert reason.startswith("forbidden")

    run(scenario())


MALFORMED_POSITIONS = [
    "x", "", "-1", "+1", " 1", "1.5", "1e3", "0x10",
    "\u00b2", "\u0661\u0662", "\uff11\uff12",  # digits to str.isdigit, not to a client
    str(MAX_POSITION + 1), "9" * 5000,  # past the database's integers; past int()'s digit limit
]  # fmt: skip


def test_given_malformed_resume_positions_when_connecting_then_each_is_closed_bad_request_and_holds_no_slot(
    settings,
):
    settings.WEBSOCKET_MAX_CONNECTIONS_PER_USER = 2
    payment = make_payment()
    user = f"payment:{payment.public_id}"

    async def scenario():
        for after in MALFORMED_POSITIONS:
            socket = await open_socket(checkout_path(payment, after=quote(after)))
            code, reason = await closed_with(socket)
            assert (code, reason.split(":")[0]) == (CLOSE_BAD_REQUEST, "bad_request"), after
        stats = await sync_to_async(connection_registry().stats)()
        assert user not in stats.per_user

        # The cap is whole: two connections fit without evicting each other.
        first = await open_socket(checkout_path(payment, after=str(MAX_POSITION)))
        second = await open_socket(checkout_path(payment, after="1"))
        for socket in (first, second):
            assert (await socket.receive_json_from(timeout=5))["type"] == "subscribed"
        assert (await first.receive_json_from(timeout=5))["reason"] == "beyond_end"
        for socket in (first, second):
            await socket.send_json_to({"type": "ping"})
            assert (await socket.receive_json_from(timeout=5)) == {"type": "pong"}
            await socket.disconnect()

    run(scenario())


def test_given_a_resume_position_beyond_the_end_of_the_stream_when_connecting_then_refetch_then_live_events():
    payment = make_payment()  # its stream holds position 1 (payment.created)

    async def scenario():
        socket = await open_socket(checkout_path(payment, after=50))
        assert (await socket.receive_json_from(timeout=5))["type"] == "subscribed"
        assert await socket.receive_json_from(timeout=5) == {
            "type": "refetch",
            "reason": "beyond_end",
            "position": 1,
            "url": f"/pay/{payment.public_id}/status",
        }
        event = await change_status(payment, "processing")
        await dispatch(event)

        message = await socket.receive_json_from(timeout=5)
        assert (message["position"], message["event"]["id"]) == (2, event.public_id)
        await socket.disconnect()

    run(scenario())


def test_given_undispatched_events_when_a_merchant_client_resumes_at_the_end_then_no_refetch():
    """Events waiting for the dispatcher have no stream position yet: the end of the stream is
    the highest position given, not 0 (found by the chaos run: every resume under a backlog got
    ``beyond_end`` and started over)."""
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    auth = [(b"authorization", f"Bearer {secret}".encode())]
    dispatched = make_payment(merchant=merchant)
    dispatch_events(event_ids=[Event.objects.get(subject=dispatched.public_id).pk])
    waiting = make_payment(merchant=merchant)  # its payment.created is not dispatched yet
    waiting_event = Event.objects.get(subject=waiting.public_id)
    assert waiting_event.stream_position is None

    async def scenario():
        socket = await open_socket("/ws/merchant/?after=1", auth)
        assert (await socket.receive_json_from(timeout=5))["position"] == 1
        await dispatch(waiting_event)

        message = await socket.receive_json_from(timeout=5)
        assert (message["type"], message["position"]) == ("event", 2)
        assert message["event"]["id"] == waiting_event.public_id
        await socket.disconnect()

    run(scenario())


def test_given_a_resume_message_beyond_the_end_of_the_stream_then_refetch_then_live_events():
    payment = make_payment()

    async def scenario():
        socket = await open_socket(checkout_path(payment))
        assert (await socket.receive_json_from(timeout=5))["position"] == 1
        await socket.send_json_to({"type": "resume", "after": 7})
        assert (await socket.receive_json_from(timeout=5))["type"] == "subscribed"
        refetch = await socket.receive_json_from(timeout=5)
        assert (refetch["reason"], refetch["position"]) == ("beyond_end", 1)
        event = await change_status(payment, "processing")
        await dispatch(event)

        assert (await socket.receive_json_from(timeout=5))["position"] == 2
        await socket.send_json_to({"type": "resume", "after": MAX_POSITION + 1})
        assert (await socket.receive_json_from(timeout=5))["code"] == "bad_request"
        await socket.disconnect()

    run(scenario())


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([], CLOSE_UNAUTHENTICATED),
        ([(b"authorization", b"Bearer cpk_not_a_real_key")], CLOSE_UNAUTHENTICATED),
        ([(b"authorization", b"Basic abc")], CLOSE_UNAUTHENTICATED),
    ],
)
def test_given_missing_or_bad_api_key_when_opening_merchant_stream_then_unauthenticated(
    headers, code
):
    async def scenario():
        assert (await closed_with(await open_socket("/ws/merchant/", headers)))[0] == code

    run(scenario())


def test_given_a_key_without_payments_read_when_opening_merchant_stream_then_forbidden():
    _, secret = ApiKeyFactory.create_with_secret(scopes=[ApiKeyScope.WEBHOOKS_MANAGE])

    async def scenario():
        socket = await open_socket(
            "/ws/merchant/", [(b"authorization", f"Bearer {secret}".encode())]
        )
        assert (await closed_with(socket))[0] == CLOSE_FORBIDDEN

    run(scenario())


def _session_cookie(*, staff: bool) -> bytes:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(
        username=f"user{staff}", password="x" * 12, is_staff=staff
    )
    # What a staff member needs to read merchants' streams (tests/security/test_staff_permissions.py)
    user.user_permissions.add(Permission.objects.get(codename="view_event"))
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def test_given_a_non_staff_session_when_opening_merchant_stream_then_forbidden():
    merchant = MerchantFactory.create()
    cookie = _session_cookie(staff=False)

    async def scenario():
        socket = await open_socket(
            f"/ws/merchant/?merchant={merchant.public_id}", [(b"cookie", cookie)]
        )
        assert (await closed_with(socket))[0] == CLOSE_FORBIDDEN

    run(scenario())


def test_given_a_staff_session_when_opening_a_merchant_stream_then_it_receives_that_merchants_events():
    merchant = MerchantFactory.create()
    other = MerchantFactory.create()
    cookie = _session_cookie(staff=True)
    mine = make_payment(merchant=merchant)
    theirs = make_payment(merchant=other)

    async def scenario():
        socket = await open_socket(
            f"/ws/merchant/?merchant={merchant.public_id}", [(b"cookie", cookie)]
        )
        subscribed = await socket.receive_json_from(timeout=5)
        assert subscribed["type"] == "subscribed"
        assert subscribed["stream"] == f"merchant:{merchant.public_id}"
        their_event = await change_status(theirs, "expired")
        my_event = await change_status(mine, "processing")
        await dispatch(their_event, my_event)

        message = await socket.receive_json_from(timeout=5)

        assert message["type"] == "event"
        assert message["event"]["id"] == my_event.public_id
        await sync_to_async(my_event.refresh_from_db)()
        assert message["position"] == my_event.stream_position
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    run(scenario())


# --- live events, ordering and replay ----------------------------------------------------------


def test_given_a_buyer_connected_when_the_status_changes_then_the_event_arrives_with_its_position():
    payment = make_payment()

    async def scenario():
        socket = await open_socket(checkout_path(payment))
        subscribed = await socket.receive_json_from(timeout=5)
        assert subscribed == {
            "type": "subscribed",
            "stream": f"payment:{payment.public_id}",
            "position": 1,
        }

        await dispatch(await change_status(payment, "processing"))

        message = await socket.receive_json_from(timeout=5)
        assert message["type"] == "event"
        assert message["position"] == 2
        assert message["event"]["data"]["payment"]["status"] == "processing"
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(timeout=5) == {"type": "pong"}
        await socket.disconnect()

    run(scenario())


def test_given_events_dispatched_out_of_order_then_the_buyer_gets_each_once_in_order():
    payment = make_payment()

    async def scenario():
        socket = await open_socket(checkout_path(payment))
        await socket.receive_json_from(timeout=5)
        second = await change_status(payment, "processing")
        third = await change_status(payment, "settled")

        await dispatch(third, second)  # a High event overtaking a Normal one

        received = await events_received(socket, 2)
        assert [m["position"] for m in received] == [2, 3]
        assert [m["event"]["id"] for m in received] == [second.public_id, third.public_id]
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    run(scenario())


def test_given_a_reconnect_after_position_1_then_the_gap_is_replayed_exactly_in_order_then_live():
    payment = make_payment()
    missed = []
    for status in ("processing", "pending", "processing"):
        payment_transition(
            payment=Payment.objects.get(pk=payment.pk), to_status=status, reason="test"
        )
    missed = list(
        Event.objects.filter(subject=payment.public_id, sequence__gt=1).order_by("sequence")
    )
    assert [e.sequence for e in missed] == [2, 3, 4]

    async def scenario():
        socket = await open_socket(checkout_path(payment, after=1))
        assert (await socket.receive_json_from(timeout=5))["position"] == 1
        replayed = await events_received(socket, 3)
        assert [(m["position"], m["event"]["id"]) for m in replayed] == [
            (e.sequence, e.public_id) for e in missed
        ]
        # The dispatcher delivering an already replayed event does not repeat it.
        await dispatch(missed[-1])
        live = await change_status(payment, "settled")
        await dispatch(live)
        message = await socket.receive_json_from(timeout=5)
        assert (message["position"], message["event"]["id"]) == (5, live.public_id)
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    run(scenario())


def test_given_a_resume_message_then_the_stream_replays_after_that_position():
    payment = make_payment()
    payment_transition(
        payment=Payment.objects.get(pk=payment.pk), to_status="processing", reason="test"
    )

    async def scenario():
        socket = await open_socket(checkout_path(payment))
        assert (await socket.receive_json_from(timeout=5))["position"] == 2
        await socket.send_json_to({"type": "resume", "after": 0})
        assert (await socket.receive_json_from(timeout=5))["type"] == "subscribed"
        assert [m["position"] for m in await events_received(socket, 2)] == [1, 2]
        await socket.send_json_to({"type": "resume", "after": "1"})
        assert (await socket.receive_json_from(timeout=5))["code"] == "bad_request"
        await socket.disconnect()

    run(scenario())


def test_given_a_gap_larger_than_the_replay_limit_then_the_client_is_told_to_refetch(settings):
    settings.WEBSOCKET_REPLAY_LIMIT = 2
    payment = make_payment()
    for status in ("processing", "pending", "processing"):
        payment_transition(
            payment=Payment.objects.get(pk=payment.pk), to_status=status, reason="test"
        )

    async def scenario():
        socket = await open_socket(checkout_path(payment, after=0))
        await socket.receive_json_from(timeout=5)
        refetch = await socket.receive_json_from(timeout=5)
        assert refetch == {
            "type": "refetch",
            "reason": "gap_too_large",
            "position": 4,
            "url": f"/pay/{payment.public_id}/status",
        }
        await socket.disconnect()

    run(scenario())


def test_given_a_gap_older_than_the_replay_window_then_the_client_is_told_to_refetch(frozen_clock):
    payment = make_payment()
    frozen_clock.advance(timedelta(hours=2))

    async def scenario():
        socket = await open_socket(checkout_path(payment, after=0))
        await socket.receive_json_from(timeout=5)
        refetch = await socket.receive_json_from(timeout=5)
        assert (refetch["type"], refetch["reason"]) == ("refetch", "history_expired")
        await socket.disconnect()

    run(scenario())


# --- the per-user cap ----------------------------------------------------------------------------


def test_given_five_connections_of_one_merchant_when_a_sixth_opens_then_the_first_is_evicted(
    settings,
):
    settings.WEBSOCKET_MAX_CONNECTIONS_PER_USER = 5
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    auth = [(b"authorization", f"Bearer {secret}".encode())]
    before = connection_registry().stats().evictions_total

    async def scenario():
        sockets = []
        for _ in range(5):
            socket = await open_socket("/ws/merchant/", auth)
            await socket.receive_json_from(timeout=5)
            sockets.append(socket)
        assert all(await asyncio.gather(*(s.receive_nothing(timeout=0.1) for s in sockets)))

        sixth = await open_socket("/ws/merchant/", auth)
        assert (await sixth.receive_json_from(timeout=5))["type"] == "subscribed"

        code, reason = await closed_with(sockets[0])
        assert code == CLOSE_CONNECTION_LIMIT
        assert reason.startswith("connection_limit")
        for socket in [*sockets[1:], sixth]:
            await socket.send_json_to({"type": "ping"})
            assert await socket.receive_json_from(timeout=5) == {"type": "pong"}
        stats = await sync_to_async(connection_registry().stats)()
        assert stats.per_user[f"merchant:{merchant.public_id}"] == 5
        assert stats.evictions_total == before + 1
        for socket in [*sockets[1:], sixth]:
            await socket.disconnect()
        stats = await sync_to_async(connection_registry().stats)()
        assert f"merchant:{merchant.public_id}" not in stats.per_user

    run(scenario())


def test_given_the_group_membership_lost_when_an_event_is_dispatched_then_the_heartbeat_delivers_it(
    settings,
):
    """A Redis restart empties the Channels groups: the heartbeat rejoins and catches up."""
    settings.WEBSOCKET_HEARTBEAT = timedelta(seconds=0.3)
    payment = make_payment()

    async def scenario():
        socket = await open_socket(checkout_path(payment))
        await socket.receive_json_from(timeout=5)
        group_key = get_channel_layer()._group_key(f"payment.{payment.public_id}")
        assert fast_fail_client(django_settings.REDIS_URL).delete(group_key) == 1

        event = await change_status(payment, "processing")
        await dispatch(event)

        message = await socket.receive_json_from(timeout=5)
        assert (message["position"], message["event"]["id"]) == (2, event.public_id)
        assert await socket.receive_nothing(timeout=0.5)  # caught up once, not repeated
        await socket.disconnect()

    run(scenario())


def test_given_several_connections_behind_on_one_stream_then_one_heartbeat_catches_each_up_once(
    settings,
):
    """The process's heartbeat reads where the stream is once and the missed events once, for
    every connection behind on it; each gets what it lacks, in order, and nothing twice."""
    settings.WEBSOCKET_HEARTBEAT = timedelta(seconds=0.3)
    payment = make_payment()

    async def scenario():
        early = await open_socket(checkout_path(payment))
        assert (await early.receive_json_from(timeout=5))["position"] == 1
        group_key = get_channel_layer()._group_key(f"payment.{payment.public_id}")
        assert fast_fail_client(django_settings.REDIS_URL).delete(group_key) == 1
        first = await change_status(payment, "processing")
        await dispatch(first)
        late = await open_socket(checkout_path(payment) + "&after=1")
        assert (await late.receive_json_from(timeout=5))["position"] == 1
        # The late one replayed the first event on connecting; both miss the second live.
        assert (await late.receive_json_from(timeout=5))["event"]["id"] == first.public_id
        assert fast_fail_client(django_settings.REDIS_URL).delete(group_key) == 1
        second = await change_status(payment, "pending")
        await dispatch(second)

        early_got = [await early.receive_json_from(timeout=5) for _ in range(2)]
        late_got = await late.receive_json_from(timeout=5)
        assert [(m["position"], m["event"]["id"]) for m in early_got] == [
            (2, first.public_id),
            (3, second.public_id),
        ]
        assert (late_got["position"], late_got["event"]["id"]) == (3, second.public_id)
        assert await early.receive_nothing(timeout=0.5) and await late.receive_nothing(timeout=0.1)
        await early.disconnect()
        await late.disconnect()

    run(scenario())


def test_given_a_lost_message_on_the_merchant_stream_when_the_next_arrives_then_the_gap_is_filled():
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    first, second = make_payment(merchant=merchant), make_payment(merchant=merchant)

    async def scenario():
        socket = await open_socket(
            "/ws/merchant/", [(b"authorization", f"Bearer {secret}".encode())]
        )
        assert (await socket.receive_json_from(timeout=5))["position"] == 0
        lost = await change_status(first, "processing")
        # Dispatched, but its channel-layer message never arrived (Redis failed mid-send).
        await sync_to_async(stream_position_assign)(event=lost)
        arrived = await change_status(second, "processing")
        await dispatch(arrived)

        received = await events_received(socket, 2)
        assert [(m["position"], m["event"]["id"]) for m in received] == [
            (1, lost.public_id),
            (2, arrived.public_id),
        ]
        await socket.disconnect()

    run(scenario())


def test_given_three_buyers_on_one_process_then_the_process_is_in_the_payments_group_once_until_the_last_leaves():
    """The process's hub holds the group membership for all its connections of the stream."""
    payment = make_payment()

    async def scenario():
        group_key = get_channel_layer()._group_key(f"payment.{payment.public_id}")
        redis = fast_fail_client(django_settings.REDIS_URL)
        sockets = [await open_socket(checkout_path(payment)) for _ in range(3)]
        for socket in sockets:
            assert (await socket.receive_json_from(timeout=5))["type"] == "subscribed"
        assert redis.zcard(group_key) == 1

        event = await change_status(payment, "processing")
        await dispatch(event)
        for socket in sockets:
            message = await socket.receive_json_from(timeout=5)
            assert (message["position"], message["event"]["id"]) == (2, event.public_id)

        for socket in sockets[:2]:
            await socket.disconnect()
        assert redis.zcard(group_key) == 1
        await sockets[2].disconnect()
        assert redis.zcard(group_key) == 0

    run(scenario())
