"""The production web server (``manage.py serve``: uvicorn with cryptopay/server.py) under attacks
that need no credentials: one huge body, slow headers, oversized headers, bodies where none belong.
Each test starts the real server process and talks to it over real sockets; memory is read from
/proc of the server and its workers (the daphne figures: bench/body_flood.py)."""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import time
from contextlib import ExitStack

import httpx
import pytest
import websockets

from testing.attacks import MIB, multipart_flood, probing
from testing.servers import Server, asgi_server
from tests.factories import ApiKeyFactory, make_payment

pytestmark = pytest.mark.django_db(transaction=True)

HEADER_TIMEOUT = 2.0  # seconds, for the server under test (production default: 10)


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def test_given_the_server_when_one_300_mib_multipart_post_hits_health_live_then_peak_rss_stays_under_256_mib_and_others_keep_being_served(
    tmp_path,
):
    with asgi_server(tmp_path) as server:
        baseline = server.peak_rss_bytes()
        with probing(server.base_url) as prober:
            with_length = multipart_flood(server.port, "/health/live", 300 * MIB)
            chunked = multipart_flood(server.port, "/health/live", 300 * MIB, chunked=True)
            # The API takes bodies: a chunked one is counted as it arrives and cut at the cap.
            api = multipart_flood(server.port, "/api/v1/payments", 300 * MIB, chunked=True)
            prober.wait_for_answers(20)  # enough answers to speak of "others are served"
        peak = server.peak_rss_bytes()
        latencies = prober.latencies

    print(
        f"\ngateway: peak RSS {baseline / MIB:.0f} -> {peak / MIB:.0f} MiB; other clients "
        f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} requests"
    )
    assert peak < 256 * MIB
    assert max(latencies) < 1.0
    for answer in (with_length, chunked):
        assert answer.startswith("HTTP/1.1 413") or answer in ("closed", "reset"), answer
    assert api.startswith("HTTP/1.1 4") or api in ("closed", "reset"), api


def test_given_100_sockets_sending_headers_slowly_when_others_connect_then_they_are_served_and_the_slow_ones_are_closed_after_the_timeout(
    tmp_path,
):
    env = {"CRYPTOPAY_SERVER_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)}
    with asgi_server(tmp_path, env=env) as server, ExitStack() as stack:
        selector = selectors.DefaultSelector()
        stack.callback(selector.close)
        opened = time.monotonic()
        for number in range(100):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            selector.register(sock, selectors.EVENT_READ, number)
        closed_after: dict[int, float] = {}
        with probing(server.base_url) as prober:
            # Each slow socket sends one more header line every 0.5 s, never the blank line.
            next_trickle = time.monotonic()
            while len(closed_after) < 100 and time.monotonic() - opened < HEADER_TIMEOUT + 10:
                if time.monotonic() >= next_trickle:
                    for key in selector.get_map().values():
                        try:
                            key.fileobj.sendall(b"X-Slow: 1\r\n")  # type: ignore[union-attr]
                        except OSError:
                            pass  # closed by the server: the read below records it
                    next_trickle += 0.5
                for key, _ in selector.select(timeout=max(0.0, next_trickle - time.monotonic())):
                    try:
                        data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                    except ConnectionResetError:
                        data = b""
                    assert data == b"", f"socket {key.data} got an answer: {data[:100]!r}"
                    closed_after[key.data] = time.monotonic() - opened
                    selector.unregister(key.fileobj)

    assert len(closed_after) == 100, f"{100 - len(closed_after)} slow sockets still open"
    assert min(closed_after.values()) >= HEADER_TIMEOUT - 0.1  # trickling did not extend it...
    assert max(closed_after.values()) < HEADER_TIMEOUT + 3  # ...and nothing outlived it long
    assert prober.latencies and max(prober.latencies) < 1.0


def test_given_a_kept_alive_connection_when_the_next_request_trickles_in_then_it_is_closed_after_the_header_timeout(
    tmp_path,
):
    env = {
        "CRYPTOPAY_SERVER_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "CRYPTOPAY_SERVER_KEEP_ALIVE_SECONDS": "5",
    }
    with asgi_server(tmp_path, env=env) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            sock.settimeout(0.5)
            closed = False
            while not closed and time.monotonic() - started < HEADER_TIMEOUT + 5:
                try:
                    sock.sendall(b"G" if time.monotonic() - started < 0.1 else b"X")
                    closed = sock.recv(4096) == b""
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True

    assert closed
    assert HEADER_TIMEOUT - 0.1 <= time.monotonic() - started < HEADER_TIMEOUT + 2


def test_given_the_server_when_headers_exceed_the_cap_then_400(
    tmp_path,
):
    with asgi_server(tmp_path) as server:
        huge = httpx.get(f"{server.base_url}/health/live", headers={"X-Big": "a" * 20_000})
        normal = httpx.get(f"{server.base_url}/health/live", headers={"X-Big": "a" * 4_000})

    assert huge.status_code == 400
    assert normal.status_code == 200


def test_given_bodies_where_the_route_takes_none_or_not_json_when_posted_then_the_error_shape_before_django_reads(
    tmp_path,
):
    with asgi_server(tmp_path) as server, httpx.Client(base_url=server.base_url) as client:
        on_health = client.post("/health/live", content=b"x" * 10)
        form_on_api = client.post("/api/v1/payments", data={"amount": "5.00"})
        too_big = client.post(
            "/api/v1/payments",
            content=b"{}" + b" " * 70_000,
            headers={"Content-Type": "application/json"},
        )
        json_on_api = client.post(
            "/api/v1/payments",
            content=json.dumps({"amount": "5.00"}),
            headers={"Content-Type": "application/json"},
        )
        get_page = client.get("/health/live")

    assert (on_health.status_code, error_of(on_health)["code"]) == (413, "payload_too_large")
    assert (form_on_api.status_code, error_of(form_on_api)["code"]) == (
        415,
        "unsupported_media_type",
    )
    assert (too_big.status_code, error_of(too_big)["code"]) == (413, "payload_too_large")
    # A JSON body within the cap reaches Django (which wants credentials for it).
    assert (json_on_api.status_code, error_of(json_on_api)["type"]) == (
        401,
        "authentication_error",
    )
    assert get_page.status_code == 200


def test_given_chunked_json_bodies_when_posted_to_the_api_then_over_the_cap_is_413_and_within_it_reaches_django(
    tmp_path,
):
    def chunks(total: int):
        for start in range(0, total, 16_384):
            yield b" " * min(16_384, total - start)

    with asgi_server(tmp_path) as server, httpx.Client(base_url=server.base_url) as client:
        headers = {"Content-Type": "application/json"}
        over = client.post("/api/v1/payments", content=chunks(70_000), headers=headers)
        within = client.post(
            "/api/v1/payments", content=iter([b'{"amount": ', b'"5.00"}']), headers=headers
        )

    assert over.request.headers["transfer-encoding"] == "chunked"
    assert (over.status_code, error_of(over)["code"]) == (413, "payload_too_large")
    assert (within.status_code, error_of(within)["type"]) == (401, "authentication_error")


def test_given_clients_stalled_in_their_bodies_when_others_call_then_no_request_thread_is_held(
    tmp_path,
):
    # Given: two request threads, and four merchants' clients that sent their headers and half a
    # body, then stopped (the API reads the body of an authenticated request: a thread reading it
    # would wait on the client).
    _, secret = ApiKeyFactory.create_with_secret()
    env = {"CRYPTOPAY_WEB_THREADS": "2"}
    with asgi_server(tmp_path, env=env) as server, ExitStack() as stack:
        for _ in range(4):
            stalled = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            stalled.sendall(
                b"POST /api/v1/payments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + secret.encode() + b"\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"amount"'
            )
        # When: others call, with and without a body.
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            started = time.monotonic()
            page = client.get("/health/live")
            posted = client.post(
                "/api/v1/payments",
                json={"amount": "not a number"},
                headers={"Authorization": f"Bearer {secret}"},
            )
            took = time.monotonic() - started

    # Then: both are answered at once.
    assert page.status_code == 200
    assert (posted.status_code, error_of(posted)["type"]) == (400, "invalid_request_error")
    assert took < 2.0, took


def test_given_a_websocket_opened_through_the_server_when_idle_past_the_header_timeout_then_it_stays_open(
    tmp_path,
):
    payment = make_payment()
    path = f"/ws/payments/{payment.public_id}/?token={payment.checkout_token}"
    env = {"CRYPTOPAY_SERVER_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)}

    async def scenario(server: Server) -> dict:
        async with websockets.connect(server.ws_url + path, open_timeout=10) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"
            with pytest.raises(TimeoutError):  # idle past the header deadline: the point
                await asyncio.wait_for(ws.recv(), HEADER_TIMEOUT + 1)
            await ws.send(json.dumps({"type": "ping"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    with asgi_server(tmp_path, env=env) as server:
        assert asyncio.run(scenario(server)) == {"type": "pong"}
