"""Correlation ids: X-Request-ID in and out, validated, in every log line of the request, and
carried into the Celery tasks and WebSocket consumers a request starts."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from cryptopay.correlation import (
    HEADER,
    bound_correlation_id,
    correlation_id,
    correlation_id_from_scope,
)
from cryptopay.logs import CorrelationIdFilter, JsonFormatter, RedactSecretsFilter
from payments.models import Payment
from payments.states import PaymentStatus
from tests.cryptopay.test_settings import (
    _test_database_url,
    _wait_until,
    celery_worker,
    require_services_mode,
    subprocess_env,
)
from tests.factories import make_payment

GENERATED = r"[0-9a-f]{32}"


@pytest.fixture
def json_log() -> Iterator[StringIO]:
    """What the console handler would print, as settings.LOGGING configures it."""
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecretsFilter())
    handler.addFilter(CorrelationIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous_level)


def lines(stream: StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        str(uuid.uuid4()),
        "0123456789abcdef0123456789abcdef",  # nginx $request_id
        "Root=1-5759e988-bd862e3fe1be46a994272793",  # AWS load balancers
        "a" * 128,
    ],
)
def test_given_a_plausible_request_id_when_a_request_comes_then_it_is_kept_and_returned(
    client, given
):
    response = client.get("/api/v1/nowhere", HTTP_X_REQUEST_ID=given)

    assert response[HEADER] == given


@pytest.mark.parametrize(
    "given",
    [
        "",
        "a" * 129,
        "has space",
        "<script>alert(1)</script>",
        "line\nbreak",
        'quote"',
        "ünïcode",
    ],
)
def test_given_an_unacceptable_request_id_when_a_request_comes_then_a_new_one_replaces_it(
    client, given
):
    response = client.get("/api/v1/nowhere", HTTP_X_REQUEST_ID=given)

    assert response[HEADER] != given
    assert response[HEADER] and len(response[HEADER]) == 32
    int(response[HEADER], 16)


def test_given_no_request_id_when_two_requests_come_then_each_gets_its_own(client):
    first = client.get("/api/v1/nowhere")[HEADER]
    second = client.get("/api/v1/nowhere")[HEADER]

    assert first != second


def test_given_a_request_id_when_the_request_logs_then_every_line_carries_it_and_none_after(
    client, json_log
):
    client.get("/api/v1/nowhere", HTTP_X_REQUEST_ID="req-lines-1")
    logging.getLogger("tests.after").info("after the request")

    logged = lines(json_log)
    during = [line for line in logged if line["logger"] != "tests.after"]
    # Django's "Not Found" line is logged after the middleware has returned: it still has the id.
    assert any("Not Found" in line["message"] for line in during), logged
    assert {line["correlation_id"] for line in during} == {"req-lines-1"}
    after = [line for line in logged if line["logger"] == "tests.after"]
    assert after[0]["correlation_id"] == "-"
    assert correlation_id() is None


# --- Celery -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.urls("tests.cryptopay.enqueue_urls")
def test_given_a_request_that_enqueues_a_task_when_a_worker_runs_it_then_its_lines_carry_the_id(
    client, tmp_path
):
    require_services_mode()
    payment = make_payment()
    Payment.objects.filter(pk=payment.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    queue = f"cryptopay-test-{uuid.uuid4().hex}"
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    log = tmp_path / "worker.log"
    env = subprocess_env(
        drop=("DATABASE_URL", "REDIS_URL"),
        DATABASE_URL=_test_database_url(),
        REDIS_URL=os.environ["REDIS_URL"],
        CRYPTOPAY_LOG_FORMAT="json",
    )
    with celery_worker(queue=queue, log=log, env=env) as worker:
        response = client.get(f"/enqueue?queue={queue}", HTTP_X_REQUEST_ID=request_id)
        task_id = response.json()["task_id"]

        def task_lines() -> list[dict]:
            found = []
            for raw in log.read_text().splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # Celery's start-up banner is printed, not logged
                if line.get("task_id") == task_id:
                    found.append(line)
            return found

        finished = _wait_until(
            lambda: [ln for ln in task_lines() if "succeeded" in ln["message"]],
            seconds=60,
            worker=worker,
            log=log,
            what="the task to finish",
        )

    assert response[HEADER] == request_id
    ours = task_lines()
    messages = [line["message"] for line in ours]
    # The task's own line (the sweep's report) and Celery's line about the task, both with the id.
    assert any(message.startswith("expiry sweep:") for message in messages), messages
    assert finished
    assert {line["correlation_id"] for line in ours} == {request_id}
    assert {line["task"] for line in ours} == {"payments.tasks.payments_expire_due"}
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.EXPIRED


def test_given_an_id_bound_when_a_task_runs_eagerly_then_it_shares_it_and_the_outer_id_stays(
    json_log,
):
    from celery import shared_task

    @shared_task(name="tests.correlation.eager_probe")
    def probe() -> str:
        logging.getLogger("tests.eager").info("inside")
        return correlation_id() or ""

    with bound_correlation_id("outer-1"):
        inside = probe.apply().get()
        outer_after = correlation_id()

    assert inside == "outer-1"
    assert outer_after == "outer-1"
    line = next(line for line in lines(json_log) if line["logger"] == "tests.eager")
    assert line["correlation_id"] == "outer-1"
    assert line["task"] == "tests.correlation.eager_probe"
    assert correlation_id() is None


# --- WebSockets ---------------------------------------------------------------------------------


class EchoConsumer(AsyncJsonWebsocketConsumer):
    """The way a consumer binds the id of its handshake for its whole life."""

    async def __call__(self, scope, receive, send):
        with bound_correlation_id(correlation_id_from_scope(scope)):
            await super().__call__(scope, receive, send)

    async def receive_json(self, content, **kwargs):
        logging.getLogger("tests.ws").info("received %s", content["say"])
        in_thread = await database_sync_to_async(correlation_id)()
        await self.send_json({"id": correlation_id(), "in_thread": in_thread})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [([(b"x-request-id", b"ws-handshake-7")], "ws-handshake-7"), ([], None)],
)
def test_given_a_websocket_when_its_consumer_logs_then_the_handshake_id_is_bound(
    json_log, headers, expected
):
    async def talk() -> dict:
        communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), "/ws/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        await communicator.send_json_to({"say": "hello"})
        answer = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return answer

    answer = async_to_sync(talk)()

    if expected is None:
        assert len(answer["id"]) == 32  # generated
    else:
        assert answer["id"] == expected
    assert answer["in_thread"] == answer["id"]
    line = next(line for line in lines(json_log) if line["logger"] == "tests.ws")
    assert line["correlation_id"] == answer["id"]


def test_given_an_invalid_handshake_id_when_the_scope_is_read_then_a_new_one_is_made():
    scope = {"type": "websocket", "headers": [(b"x-request-id", b"bad id\r\n")]}

    assert correlation_id_from_scope(scope) != "bad id\r\n"
    assert len(correlation_id_from_scope(scope)) == 32
