"""The buyer's checkout token never reaches a log line: not in the server's
access lines, not in the request Django attaches to its "Not Found" warnings, not through the
WebSocket's URL. In process, under the session-wide scanner's rules; and in the output of a real
server process, access log included."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import websockets
from django.test import Client

from testing.servers import asgi_server
from tests.factories import make_payment
from tests.security.log_secrets import SECRET, SecretScanner


@pytest.mark.django_db
def test_given_a_checkout_link_when_a_wrong_path_under_it_is_asked_then_the_404_warning_holds_no_token(
    caplog,
):
    payment = make_payment()
    caplog.set_level(logging.INFO)
    with SecretScanner() as scanner:
        page = Client().get(f"/pay/{payment.public_id}/?token={payment.checkout_token}")
        missing = Client().get(f"/pay/{payment.public_id}/nothing?token={payment.checkout_token}")

    assert (page.status_code, missing.status_code) == (200, 404)
    warnings = [r for r in caplog.records if r.name == "django.request"]
    # Django hands its handlers the request, whose repr is the full path with the query string;
    # the handler's filter rewrote it (the record is shared with caplog).
    assert warnings and "token=[REDACTED]" in str(warnings[0].request)
    assert payment.checkout_token not in repr(warnings[0].__dict__)
    assert scanner.leaks == []


@pytest.mark.django_db(transaction=True)
def test_given_a_real_server_when_a_buyer_uses_the_checkout_then_its_log_holds_no_token(tmp_path):
    payment = make_payment()
    token = payment.checkout_token
    query = f"?token={token}"

    async def stream(url: str) -> str | bytes:
        async with websockets.connect(url, open_timeout=10) as socket:
            return await asyncio.wait_for(socket.recv(), 10)

    with asgi_server(tmp_path, env={"LOG_LEVEL": "INFO"}) as server:
        with httpx.Client(base_url=server.base_url) as client:
            statuses = [
                client.get(f"/pay/{payment.public_id}/{query}").status_code,
                client.get(f"/pay/{payment.public_id}/status{query}").status_code,
                client.get(f"/pay/{payment.public_id}/qr.svg{query}").status_code,
                client.get(f"/pay/{payment.public_id}/nothing{query}").status_code,
                client.get(f"/pay/pay_doesnotexist/{query}").status_code,
            ]
        asyncio.run(stream(f"{server.ws_url}/ws/payments/{payment.public_id}/{query}"))
        output = server.output()

    assert statuses == [200, 200, 200, 404, 404]
    assert "uvicorn.access" in output and "token=[REDACTED]" in output  # the lines were written
    assert token not in output
    assert not SECRET.search(output)


def test_given_a_line_holding_a_checkout_token_when_scanned_then_it_is_caught():
    token = "aB3" * 10 + "xY"

    assert SECRET.search(f'"GET /pay/pay_x/?token={token} HTTP/1.1" 200')
    assert not SECRET.search('"GET /pay/pay_x/?token=[REDACTED] HTTP/1.1" 200')
