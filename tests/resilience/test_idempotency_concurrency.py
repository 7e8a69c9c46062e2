"""One Idempotency-Key, many concurrent requests, over real HTTP: the payment is created once.

Every request goes through the live server (a real threaded HTTP server: one thread and one
PostgreSQL connection per client connection) with real Redis, from threads and from separate OS
processes.
Whatever the interleaving, the answers may only be: the one execution (201), a replay of it
(201, ``Idempotent-Replayed: true``, the same bytes), or ``409 idempotency_key_in_use`` with
``Retry-After``.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from accounts.models import Merchant
from payments.models import Payment
from resilience.models import IdempotencyKey
from testing.service_control import redis_alive, redis_stopped
from tests.factories import ApiKeyFactory, MerchantFactory

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps({"amount": "25.00", "crypto_currency": "LTC", "description": "one sofa"})

# httpx builds and loads a TLS context per client (~40 ms); the live server speaks plain HTTP, so
# every client shares this one.
TLS = ssl.create_default_context()

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Answer:
    status: int
    replayed: str | None
    retry_after: str | None
    body: bytes

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        return cls(
            status=response.status_code,
            replayed=response.headers.get("Idempotent-Replayed"),
            retry_after=response.headers.get("Retry-After"),
            body=response.content,
        )

    @property
    def error_code(self) -> str | None:
        try:
            return json.loads(self.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def __repr__(self) -> str:
        return f"<{self.status} replayed={self.replayed} {self.body[:80]!r}>"


def merchant_with_secret() -> tuple[Merchant, str]:
    merchant: Merchant = MerchantFactory.create()
    _, secret = ApiKeyFactory.create_with_secret(merchant=merchant)
    return merchant, secret


def client_for(url: str, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        timeout=30,
        verify=TLS,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )


def connected_clients(url: str, secrets: list[str]) -> list[httpx.Client]:
    """Clients whose keep-alive connection is already open, opened one after the other.

    The test server listens with Django's backlog of 10 (``WSGIServer.request_queue_size``): 50
    simultaneous connects overflow it and the kernel resets some. Connected beforehand, the
    released requests all reach their server threads at once, as from a client's pool.
    """
    clients = []
    for secret in secrets:
        client = client_for(url, secret)
        warm_up = client.get("/api/v1/payments", params={"limit": 1})
        assert warm_up.status_code == 200
        assert warm_up.headers.get("Connection") != "close"
        clients.append(client)
    return clients


def post(client: httpx.Client, key: str, body: str = BODY) -> Answer:
    response = client.post("/api/v1/payments", content=body, headers={"Idempotency-Key": key})
    return Answer.of(response)


def burst(url: str, senders: list[tuple[str, str]], body: str = BODY) -> list[Answer]:
    """One request per (secret, key), each from its own thread and client, released together."""
    clients = connected_clients(url, [secret for secret, _ in senders])
    barrier = threading.Barrier(len(senders))
    answers: list[Answer | BaseException | None] = [None] * len(senders)

    def send(i: int, client: httpx.Client, key: str) -> None:
        with closing(client):
            barrier.wait(timeout=30)
            try:
                answers[i] = post(client, key, body)
            except BaseException as exc:  # collected and asserted on below
                answers[i] = exc

    threads = [
        threading.Thread(target=send, args=(i, client, key))
        for i, (client, (_, key)) in enumerate(zip(clients, senders, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    failed = [a for a in answers if not isinstance(a, Answer)]
    assert not failed, failed
    return answers  # type: ignore[return-value]


def the_one_execution(answers: list[Answer]) -> Answer:
    """Asserts the allowed kinds of answers and returns the single executed 201."""
    executed = [a for a in answers if a.status == 201 and a.replayed is None]
    assert len(executed) == 1, answers
    first = executed[0]
    not_allowed = [
        a
        for a in answers
        if a is not first
        and not (a.status == 201 and a.replayed == "true" and a.body == first.body)
        and not (a.status == 409 and a.error_code == "idempotency_key_in_use" and a.retry_after)
    ]
    assert not_allowed == [], not_allowed
    return first


def assert_one_payment(merchant: Merchant, executed: Answer) -> None:
    payments = list(Payment.objects.filter(merchant=merchant))
    assert len(payments) == 1
    assert json.loads(executed.body)["id"] == payments[0].public_id


def test_given_50_concurrent_posts_with_one_key_when_they_race_then_one_payment_is_created(
    live_server,
):
    merchant, secret = merchant_with_secret()
    key = f"key-{uuid.uuid4()}"

    answers = burst(live_server.url, [(secret, key)] * 50)

    executed = the_one_execution(answers)
    assert_one_payment(merchant, executed)
    with client_for(live_server.url, secret) as client:
        retry = post(client, key)
    assert (retry.status, retry.replayed, retry.body) == (201, "true", executed.body)
    row = IdempotencyKey.objects.get(owner=merchant.public_id, key=key)
    assert row.status == IdempotencyKey.Status.COMPLETED


def spawn_client(url: str, secret: str, key: str, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.resilience.idempotency_client",
            url,
            secret,
            key,
            str(count),
            BODY,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_given_4_processes_sending_one_key_concurrently_then_one_payment_is_created(
    live_server,
):
    merchant, secret = merchant_with_secret()
    key = f"key-{uuid.uuid4()}"
    processes = [spawn_client(live_server.url, secret, key, 10) for _ in range(4)]
    for process in processes:  # every process has its threads and clients ready
        assert process.stdout is not None and process.stdin is not None
        assert json.loads(process.stdout.readline()) == {"ready": True}

    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=60)[0] for process in processes]

    assert [process.returncode for process in processes] == [0] * 4
    raw = [a for out in outputs for a in json.loads(out)["answers"]]
    assert len(raw) == 40 and not [a for a in raw if "error" in a], raw
    answers = [
        Answer(a["status"], a["replayed"], a["retry_after"], base64.b64decode(a["body"]))
        for a in raw
    ]
    executed = the_one_execution(answers)
    assert_one_payment(merchant, executed)
    with client_for(live_server.url, secret) as client:
        retry = post(client, key)
    assert (retry.status, retry.replayed, retry.body) == (201, "true", executed.body)


@dataclass(frozen=True)
class Timed:
    sent: str  # the Redis phase when the request left
    received: str  # the Redis phase when its answer arrived
    answer: Answer


def test_given_redis_stops_and_restarts_during_a_burst_then_one_payment_and_no_errors(
    live_server,
):
    """30 requests on one key, paced 35 ms apart (~1 s): Redis is shut down once three answers
    are in, while the first ten are still arriving; requests 10-24 go out only once it is down
    and 25-29 only once it is back (empty: the restart loses the cached response and the lock).
    """
    merchant, secret = merchant_with_secret()
    key = f"key-{uuid.uuid4()}"
    count, spacing = 30, 0.035
    phase = ["up"]
    down, back = threading.Event(), threading.Event()
    arrived = threading.Condition()
    timed: list[Timed] = []
    failures: list[BaseException] = []
    clients = connected_clients(live_server.url, [secret] * count)
    barrier = threading.Barrier(count + 1)

    def send(i: int) -> None:
        with closing(clients[i]) as client:
            barrier.wait(timeout=30)
            start = time.monotonic()
            gate = back if i >= 25 else down if i >= 10 else None
            if gate is not None:
                gate.wait(timeout=30)
            time.sleep(max(0.0, start + i * spacing - time.monotonic()))  # a caller's pace
            sent = phase[0]
            try:
                answer = post(client, key)
            except BaseException as exc:  # collected and asserted on below
                failures.append(exc)
                answer = None
            with arrived:
                if answer is not None:
                    timed.append(Timed(sent, phase[0], answer))
                arrived.notify_all()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=30)
    try:
        with arrived:
            assert arrived.wait_for(lambda: len(timed) + len(failures) >= 3, timeout=30)
        with redis_stopped(settings.REDIS_URL):
            phase[0] = "down"
            down.set()
            with arrived:
                assert arrived.wait_for(lambda: len(timed) + len(failures) >= 25, timeout=30)
            phase[0] = "restarting"
        phase[0] = "back"
    finally:
        down.set()
        back.set()
        for thread in threads:
            thread.join(timeout=60)

    assert redis_alive(settings.REDIS_URL)
    assert failures == []
    assert len(timed) == count
    executed = the_one_execution([t.answer for t in timed])
    assert_one_payment(merchant, executed)
    assert len([t for t in timed if t.sent == t.received == "down"]) >= 15
    assert len([t for t in timed if t.sent == "back"]) == 5


def test_given_redis_is_down_when_a_new_key_is_raced_then_postgres_alone_executes_it_once(
    live_server,
):
    merchant, secret = merchant_with_secret()
    key = f"key-{uuid.uuid4()}"

    with redis_stopped(settings.REDIS_URL):
        answers = burst(live_server.url, [(secret, key)] * 20)

    executed = the_one_execution(answers)
    assert_one_payment(merchant, executed)


def test_given_two_merchants_race_the_same_key_then_each_gets_its_own_payment(live_server):
    (merchant_a, secret_a), (merchant_b, secret_b) = merchant_with_secret(), merchant_with_secret()
    key = "the-same-key-for-both"

    answers = burst(live_server.url, [(secret_a, key), (secret_b, key)] * 12)

    executed_a = the_one_execution(answers[0::2])
    executed_b = the_one_execution(answers[1::2])
    assert_one_payment(merchant_a, executed_a)
    assert_one_payment(merchant_b, executed_b)
    assert json.loads(executed_a.body)["id"] != json.loads(executed_b.body)["id"]
    assert sorted(IdempotencyKey.objects.filter(key=key).values_list("owner", flat=True)) == sorted(
        [merchant_a.public_id, merchant_b.public_id]
    )
