"""The checkout page end to end: Debian's Chromium driven by Playwright against a real daphne and
a real dispatcher process, on PostgreSQL and Redis.

No ORM call runs while Playwright's (sync) driver is active in this thread: Django refuses
database access from a thread with a running event loop. Server-side changes made during a browser
session run in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import Page, expect, sync_playwright

from payments.checkout import checkout_url
from payments.devchain import payment_simulate
from payments.models import Payment
from testing.servers import Server, asgi_server, dispatcher
from tests.factories import make_payment

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
SERVER_ENV = {"CRYPTOPAY_DEV_CHAIN": "1", "CRYPTOPAY_CHECKOUT_POLL_SECONDS": "2"}


@pytest.fixture
def gateway(tmp_path) -> Iterator[Server]:
    assert CHROMIUM.exists(), (
        "make test installs Debian chromium (make browser: scripts/install_debian_tool.sh)"
    )
    with asgi_server(tmp_path, env=SERVER_ENV) as server, dispatcher(tmp_path, env=SERVER_ENV):
        yield server


@pytest.fixture
def btc_payment(db) -> Payment:
    return make_payment(amount="25.00", crypto_currency="BTC")


@pytest.fixture
def ltc_payment(db) -> Payment:
    return make_payment(amount="10.00", crypto_currency="LTC")


@pytest.fixture
def browser_page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        # A phone-sized viewport: the page must be usable there.
        page = browser.new_page(viewport={"width": 390, "height": 844})
        try:
            yield page
        finally:
            browser.close()


def in_worker_thread(work) -> None:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors, errors


def test_given_the_checkout_page_when_simulate_is_pressed_then_it_shows_settled_live_without_reload(
    gateway, btc_payment, browser_page
):
    payment, page = btc_payment, browser_page
    frames: list[str] = []
    page.on(
        "websocket", lambda socket: socket.on("framereceived", lambda frame: frames.append(frame))
    )
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    page.goto(gateway.base_url + checkout_url(payment))
    root = page.locator("#checkout")
    expect(root).to_have_attribute("data-transport", "websocket", timeout=10_000)
    expect(page.locator("#status")).to_have_text("pending")
    expect(page.get_by_role("button", name="Copy address")).to_be_visible()
    expect(page.locator("#qr")).to_be_visible()

    page.get_by_role("button", name="Simulate payment").click()

    expect(page.locator("#status")).to_have_text("settled", timeout=10_000)
    expect(page.locator("#final-message")).to_contain_text("payment is complete")
    assert len(navigations) == 1, f"the page reloaded: {navigations}"
    # The socket carried the change too (the dispatcher process fanned it out through Redis).
    page.wait_for_function("() => window.cryptopayCheckout.lastSocketStatus() === 'settled'")
    assert any('"status": "settled"' in frame for frame in frames)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "checkout-settled.png"), full_page=True)


def test_given_the_websocket_failing_then_the_page_still_updates_by_polling(
    gateway, ltc_payment, browser_page
):
    payment, page = ltc_payment, browser_page
    refused: list[str] = []

    def refuse(route) -> None:  # type: ignore[no-untyped-def]
        refused.append(route.url)
        route.close(code=1011, reason="test: the socket fails")

    page.route_web_socket("**/ws/**", refuse)

    page.goto(gateway.base_url + checkout_url(payment))
    expect(page.locator("#checkout")).to_have_attribute("data-transport", "polling", timeout=10_000)
    expect(page.locator("#transport")).to_contain_text("every 2 s")

    in_worker_thread(lambda: payment_simulate(payment=Payment.objects.get(pk=payment.pk)))

    expect(page.locator("#status")).to_have_text("settled", timeout=10_000)
    assert refused, "the page tried the WebSocket first"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "checkout-settled-by-polling.png"), full_page=True)
