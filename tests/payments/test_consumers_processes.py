"""Live streams across real daphne processes sharing Redis, with real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from django.db import connections
from websockets.exceptions import ConnectionClosed

from notifications.dispatcher import dispatch_events
from notifications.models import Event
from notifications.presence import ConnectionRegistry
from payments.models import Payment
from payments.services import payment_transition
from testing.servers import asgi_server
from tests.factories import ApiKeyFactory, MerchantFactory, make_payment

pytestmark = pytest.mark.django_db(transaction=True)


async def open_stream(url: str, headers: dict[str, str] | None = None):
    socket = await websockets.connect(url, additional_headers=headers or {}, open_timeout=10)
    first = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
    assert first["type"] == "subscribed", first
    return socket


async def close_code(socket) -> int | None:
    try:
        while True:
            await asyncio.wait_for(socket.recv(), timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def test_given_five_connections_on_process_a_when_the_sixth_opens_on_process_b_then_the_oldest_on_a_is_evicted(
    tmp_path, settings
):
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    auth = {"Authorization": f"Bearer {secret}"}

    with asgi_server(tmp_path) as a, asgi_server(tmp_path) as b:

        async def scenario() -> None:
            on_a = []
            for _ in range(5):
                on_a.append(await open_stream(f"{a.ws_url}/ws/merchant/", auth))
            sixth = await open_stream(f"{b.ws_url}/ws/merchant/", auth)

            assert await close_code(on_a[0]) == 4509
            for socket in [*on_a[1:], sixth]:
                await socket.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(socket.recv(), timeout=10)) == {
                    "type": "pong"
                }
                await socket.close()

        asyncio.run(scenario())
        assert "Traceback" not in a.output() + b.output()


def test_given_a_process_sigkilled_holding_a_users_connections_when_the_user_connects_again_then_it_is_accepted_and_no_live_connection_is_closed(
    tmp_path, settings
):
    merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    auth = {"Authorization": f"Bearer {secret}"}
    user = f"merchant:{merchant.public_id}"
    # Processes beat fast so the dead one is noticed within the test; the cap is small.
    env = {
        "CRYPTOPAY_WS_MAX_CONNECTIONS_PER_USER": "3",
        "CRYPTOPAY_WS_PROCESS_HEARTBEAT_SECONDS": "0.2",
        "CRYPTOPAY_WS_PROCESS_TTL_SECONDS": "1",
    }
    registry = ConnectionRegistry(redis_url=settings.REDIS_URL)

    def counted() -> int:
        return registry.stats().per_user.get(user, 0)

    def evictions() -> int:
        return registry.stats().evictions_per_user.get(user, 0)

    with asgi_server(tmp_path, env=env) as killed, asgi_server(tmp_path, env=env) as survivor:

        async def scenario() -> None:
            live = await open_stream(f"{survivor.ws_url}/ws/merchant/", auth)  # the oldest
            on_killed = [await open_stream(f"{killed.ws_url}/ws/merchant/", auth) for _ in range(2)]
            assert (counted(), evictions()) == (3, 0)

            killed.process.kill()
            killed.process.wait(timeout=10)
            deadline = time.monotonic() + 15
            while counted() != 1:  # the dead process's two stop counting once its beat lapses
                assert time.monotonic() < deadline, f"still counted: {counted()}"
                await asyncio.sleep(0.05)

            fresh = [await open_stream(f"{survivor.ws_url}/ws/merchant/", auth) for _ in range(2)]

            for socket in [live, *fresh]:
                await socket.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(socket.recv(), timeout=10)) == {
                    "type": "pong"
                }
            assert (counted(), evictions()) == (3, 0)
            for socket in [live, *fresh]:
                await socket.close()
            for socket in on_killed:
                socket.transport.abort()  # its server is gone; no closing handshake to wait for

        asyncio.run(scenario())
        assert "Traceback" not in survivor.output()


def test_given_a_connection_idle_longer_than_10_s_when_an_event_is_dispatched_then_it_arrives(
    tmp_path,
):
    """channels-redis with redis-py 8: a socket timeout above the layer's 5 s blocking receive
    keeps the idle receive alive (channels_redis issue #422)."""
    payment = make_payment()
    url = f"/ws/payments/{payment.public_id}/?token={payment.checkout_token}"

    with asgi_server(tmp_path) as server:

        async def scenario() -> None:
            socket = await open_stream(server.ws_url + url)
            idle_until = time.monotonic() + 11
            while time.monotonic() < idle_until:  # the point of the test is idle time
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(socket.recv(), timeout=idle_until - time.monotonic())

            event = await asyncio.to_thread(_change_and_dispatch, payment, "processing")
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
            assert message["type"] == "event"
            assert message["event"]["id"] == event.public_id
            await socket.close()

        asyncio.run(scenario())
        assert "Traceback" not in server.output()


# More tabs of one checkout link than the default cap (5 per payment) allows, in every process.
MANY = {"CRYPTOPAY_WS_MAX_CONNECTIONS_PER_USER": "20"}


def _change_and_dispatch(payment: Payment, to_status: str) -> Event:
    try:
        payment_transition(
            payment=Payment.objects.get(pk=payment.pk), to_status=to_status, reason="test"
        )
        event = Event.objects.filter(subject=payment.public_id).order_by("-sequence").first()
        assert event is not None
        assert dispatch_events(event_ids=[event.pk]) == 1
        return event
    finally:
        connections.close_all()  # this thread's connection would pin the test database


async def next_event(socket) -> tuple[int, str]:
    message = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
    assert message["type"] == "event", message
    return message["position"], message["event"]["id"]


def test_given_buyers_of_two_payments_on_two_processes_when_one_payment_changes_then_each_of_its_buyers_gets_it_once_and_no_other_buyer_does(
    tmp_path,
):
    """Each process is in the payment's group once (its hub) and hands the event to its own
    connections of that payment only; uvicorn (``manage.py serve``) and daphne alike."""
    merchant = MerchantFactory.create()
    watched, other = make_payment(merchant=merchant), make_payment(merchant=merchant)

    def path(payment: Payment) -> str:
        return f"/ws/payments/{payment.public_id}/?token={payment.checkout_token}"

    with asgi_server(tmp_path, env=MANY) as a, asgi_server(tmp_path, kind="daphne", env=MANY) as b:

        async def scenario() -> None:
            buyers = [await open_stream(s.ws_url + path(watched)) for s in (a, b) for _ in range(4)]
            others = [await open_stream(s.ws_url + path(other)) for s in (a, b) for _ in range(2)]

            first = await asyncio.to_thread(_change_and_dispatch, watched, "processing")
            second = await asyncio.to_thread(_change_and_dispatch, watched, "pending")
            for socket in buyers:
                assert [await next_event(socket) for _ in range(2)] == [
                    (2, first.public_id),
                    (3, second.public_id),
                ]
            # The other payment's buyers got nothing of it: their next frame is their own event.
            theirs = await asyncio.to_thread(_change_and_dispatch, other, "processing")
            for socket in others:
                assert await next_event(socket) == (2, theirs.public_id)
            for socket in [*buyers, *others]:
                await socket.close()

        asyncio.run(scenario())
        assert "Traceback" not in a.output() + b.output()


def test_given_buyers_whose_connections_die_when_the_payment_changes_then_every_other_buyer_still_gets_it(
    tmp_path,
):
    """Connections cut without a closing handshake (a browser killed, a network gone) are still
    perhaps in their process's room when the event comes; the others of that room and of the other
    process get it, and the next one too."""
    payment = make_payment()
    path = f"/ws/payments/{payment.public_id}/?token={payment.checkout_token}"

    with asgi_server(tmp_path, env=MANY) as a, asgi_server(tmp_path, kind="daphne", env=MANY) as b:

        async def scenario() -> None:
            on_a = [await open_stream(a.ws_url + path) for _ in range(6)]
            on_b = [await open_stream(b.ws_url + path) for _ in range(3)]
            dying, living = on_a[::2], [*on_a[1::2], *on_b]
            for socket in dying:
                socket.transport.abort()

            first = await asyncio.to_thread(_change_and_dispatch, payment, "processing")
            for socket in living:
                assert await next_event(socket) == (2, first.public_id)
            second = await asyncio.to_thread(_change_and_dispatch, payment, "pending")
            for socket in living:
                assert await next_event(socket) == (3, second.public_id)
            # Heard of since: a new buyer on the process that lost three joins the same room.
            late = await open_stream(a.ws_url + path)
            third = await asyncio.to_thread(_change_and_dispatch, payment, "processing")
            for socket in [*living, late]:
                assert await next_event(socket) == (4, third.public_id)
                await socket.close()

        asyncio.run(scenario())
