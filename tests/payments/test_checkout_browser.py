"""The checkout page end to end: Debian's Chromium driven by Playwright against a real daphne and
a real dispatcher process, on PostgreSQL and Redis.

No ORM call runs while Playwright's (sync) driver is active in this thread: Django refuses
database access from a thread with a running event loop. Server-side changes made during a browser
session run in a worker thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from django.db import connections
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

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


def in_worker_thread(work: Callable[[], object]) -> None:
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
    expect(page.locator("#headline")).to_have_text("Waiting for payment")
    expect(page.get_by_role("button", name="Copy address")).to_be_visible()
    expect(page.locator("#qr")).to_be_visible()

    page.get_by_role("button", name="Simulate payment").click()

    expect(root).to_have_attribute("data-step", "paid", timeout=10_000)
    expect(page.locator("#headline")).to_have_text("Paid")
    expect(page.locator("#detail")).to_contain_text("payment to")
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

    def refuse(route: Any) -> None:
        refused.append(route.url)
        route.close(code=1011, reason="test: the socket fails")

    page.route_web_socket("**/ws/**", refuse)

    page.goto(gateway.base_url + checkout_url(payment))
    expect(page.locator("#checkout")).to_have_attribute("data-transport", "polling", timeout=10_000)
    expect(page.locator("#transport")).to_contain_text("every 2 s")

    in_worker_thread(lambda: payment_simulate(payment=Payment.objects.get(pk=payment.pk)))

    expect(page.locator("#checkout")).to_have_attribute("data-step", "paid", timeout=10_000)
    assert refused, "the page tried the WebSocket first"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "checkout-settled-by-polling.png"), full_page=True)


# --- every state, on a desktop and a 360 px phone, checked by axe-core -----------------------

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = ARTIFACTS / "checkout"
VIEWS: dict[str, tuple[ViewportSize, Literal["light", "dark"]]] = {
    "desktop": ({"width": 1280, "height": 900}, "light"),
    "phone": ({"width": 360, "height": 740}, "light"),
    "phone-dark": ({"width": 360, "height": 740}, "dark"),
}


@pytest.fixture
def browser_context() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(
    browser: Browser, *, locale: str = "en-US", viewport: ViewportSize | None = None
) -> Page:
    context = browser.new_context(
        locale=locale, viewport=viewport or VIEWS["desktop"][0], extra_http_headers={}
    )
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    violations: list[str] = []
    page.csp_violations = violations  # type: ignore[attr-defined]

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    return page


def axe_violations(page: Page) -> list[dict]:
    """Serious and critical axe-core findings (run through DevTools: the page's own CSP allows
    no injected script, and it must not be loosened for the test)."""
    assert AXE.exists(), "npm axe-core (package.json; make nodes installs it)"
    page.evaluate(AXE.read_text())
    results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def capture_state(page: Page, url: str, step: str, check=lambda page: None) -> list[str]:
    """Open ``url`` in every view, expect ``step``, run ``check``, save screenshots and run axe
    in each."""
    saved = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    for view, (viewport, scheme) in VIEWS.items():
        page.set_viewport_size(viewport)
        page.emulate_media(color_scheme=scheme)
        page.goto(url)
        expect(page.locator("#checkout")).to_have_attribute("data-step", step, timeout=10_000)
        expect(page.locator("#checkout")).not_to_have_attribute("data-transport", "connecting")
        check(page)
        # Fits the phone: nothing wider than the viewport.
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], view
        path = SHOTS / f"{step}-{view}.png"
        page.screenshot(path=str(path), full_page=True)
        saved.append(str(path))
        assert axe_violations(page) == [], f"{step} {view}"
    assert page.csp_violations == []  # type: ignore[attr-defined]
    # Off the page before the test changes the payment (the live page would reload itself).
    page.goto("about:blank")
    return saved


def choice_payment(**fields: Any) -> Payment:
    from decimal import Decimal

    from payments.services import payment_create_with_choice
    from tests.factories import MerchantFactory

    merchant = fields.pop("merchant", None) or MerchantFactory.create(
        name="Bean & Leaf Coffee", brand_color="#6d3b1f", support_url="https://shop.example/help"
    )
    return payment_create_with_choice(
        merchant=merchant,
        fiat_amount=Decimal("24.50"),
        fiat_currency="EUR",
        accepted_currencies=fields.pop("accepted_currencies", ["BTC", "ETH", "USDC"]),
        description="2x Ethiopia Yirgacheffe, 250 g",
        **fields,
    )


def test_every_checkout_state_reads_plainly_fits_a_phone_and_passes_axe(gateway, browser_context):
    from datetime import timedelta

    from accounts.models import Merchant, SpeedPolicy
    from payments.services import payment_select_currency, payment_transition
    from resilience import clock

    page = open_page(browser_context)
    merchant_ids: list[int] = []

    def make(**fields: Any) -> Payment:
        holder: list[Payment] = []

        def work() -> None:
            merchant = Merchant.objects.create(
                name="Bean & Leaf Coffee", brand_color="#6d3b1f",
                support_url="https://shop.example/help", speed_policy=SpeedPolicy.LOW_MEDIUM,
            )  # fmt: skip
            merchant_ids.append(merchant.pk)
            holder.append(
                choice_payment(
                    merchant=merchant,
                    redirect_url="https://shop.example/thanks",
                    cancel_url="https://shop.example/cart",
                    **fields,
                )
            )

        in_worker_thread(work)
        return holder[0]

    def change(payment: Payment, work: Callable[[Payment], object]) -> None:
        in_worker_thread(lambda: work(Payment.objects.get(pk=payment.pk)))

    def pick(p: Payment) -> None:
        payment_select_currency(payment=p, crypto_currency="BTC")

    shots: dict[str, list[str]] = {}
    url = lambda p: gateway.base_url + checkout_url(p)  # noqa: E731

    payment = make()
    shots["choose"] = capture_state(
        page,
        url(payment),
        "choose",
        check=lambda page: [expect(page.get_by_role("button", name="Bitcoin")).to_be_visible()],
    )

    change(payment, pick)
    shots["waiting"] = capture_state(
        page,
        url(payment),
        "waiting",
        check=lambda page: [expect(page.locator("#headline")).to_have_text("Waiting for payment")],
    )

    def pay_half(chosen: Payment) -> None:
        assert chosen.crypto_amount is not None  # the coin is picked: the payment is priced
        payment_simulate(payment=chosen, amount=chosen.crypto_amount // 2)

    change(payment, pay_half)
    shots["underpaid"] = capture_state(
        page,
        url(payment),
        "underpaid",
        check=lambda page: [expect(page.locator("#headline")).to_contain_text("still due")],
    )

    change(payment, lambda p: payment_simulate(payment=p, confirmations=0))
    shots["detected"] = capture_state(
        page,
        url(payment),
        "detected",
        check=lambda page: [
            expect(page.locator("#headline")).to_have_text(
                "Payment detected — waiting for confirmations (0 of 2)"
            )
        ],
    )

    def confirm_once(p: Payment) -> None:
        for tx in p.transactions.all():
            payment_simulate(payment=p, txid=tx.txid, confirmations=1)

    change(payment, confirm_once)
    shots["confirming"] = capture_state(
        page,
        url(payment),
        "confirming",
        check=lambda page: [
            expect(page.locator("#headline")).to_have_text(
                "Payment detected — waiting for confirmations (1 of 2)"
            )
        ],
    )

    def confirm_twice(p: Payment) -> None:
        for tx in p.transactions.all():
            payment_simulate(payment=p, txid=tx.txid, confirmations=2)

    change(payment, confirm_twice)
    # The redirect would leave before the screenshots: the shop's page is stubbed to stay put.
    page.route("https://shop.example/**", lambda route: route.abort())
    shots["paid"] = capture_state(
        page,
        url(payment),
        "paid",
        check=lambda page: [
            expect(page.get_by_role("link", name="Return to Bean & Leaf Coffee")).to_be_visible()
        ],
    )

    expired = make()
    change(expired, pick)
    change(
        expired,
        lambda p: payment_transition(payment=p, to_status="expired", reason="test: time ran out"),
    )
    shots["expired"] = capture_state(
        page,
        url(expired),
        "expired",
        check=lambda page: [
            expect(page.get_by_role("link", name="Contact Bean & Leaf Coffee")).to_be_visible(),
            expect(page.get_by_role("link", name="Back to Bean & Leaf Coffee")).to_be_visible(),
        ],
    )

    late = make()
    change(late, pick)

    def pay_after_expiry(p: Payment) -> None:
        Payment.objects.filter(pk=p.pk).update(expires_at=clock.now() - timedelta(minutes=1))
        payment_simulate(payment=Payment.objects.get(pk=p.pk))

    change(late, pay_after_expiry)
    shots["paid_late"] = capture_state(
        page,
        url(late),
        "paid_late",
        check=lambda page: [expect(page.locator("#detail")).to_contain_text("will review it")],
    )

    index = "\n".join(f"{step}: {', '.join(paths)}" for step, paths in shots.items())
    (SHOTS / "index.txt").write_text(index + "\n")


def test_given_a_choice_the_buyer_picks_a_coin_by_keyboard_and_can_switch_until_paid(
    gateway, browser_context
):
    holder: list[Payment] = []
    in_worker_thread(lambda: holder.append(choice_payment()))
    payment = holder[0]
    page = open_page(browser_context, viewport=VIEWS["phone"][0])

    page.goto(gateway.base_url + checkout_url(payment))
    expect(page.locator("#checkout")).to_have_attribute("data-step", "choose")
    expect(page.locator("#pay-section")).to_have_count(0)  # no address before a coin is picked
    # Keyboard only: Tab to Ether, Enter.
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.coin") == "ETH":
            break
    page.keyboard.press("Enter")
    expect(page.locator("#checkout")).to_have_attribute("data-step", "waiting")
    eth_address = page.locator("#address").inner_text()
    assert eth_address.startswith("deveth1")
    expect(page.locator("#crypto-line")).to_contain_text("ETH")

    # Copy feedback, by keyboard.
    page.get_by_role("button", name="Copy address").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Copy address")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == eth_address

    # Switch to Bitcoin: a new address of its own; the quote of each coin is the one priced.
    page.get_by_role("button", name="Pay with a different coin").click()
    page.get_by_role("button", name="Bitcoin").click()
    expect(page.locator("#checkout")).to_have_attribute("data-step", "waiting")
    expect(page.locator("#address")).to_contain_text("devbtc1")
    expect(page.locator("#qr")).to_have_attribute("src", re.compile(r"qr\.svg"))

    in_worker_thread(
        lambda: payment_simulate(
            payment=Payment.objects.get(pk=payment.pk), amount=1, confirmations=0
        )
    )
    page.reload()
    expect(page.locator("#checkout")).to_have_attribute("data-step", "underpaid")
    # Once something is detected the coin is fixed: no switch offered, and the server refuses.
    expect(page.get_by_role("button", name="Pay with a different coin")).to_have_count(0)
    refused = page.request.post(
        gateway.base_url + f"/pay/{payment.public_id}/select?token={payment.checkout_token}",
        form={"crypto_currency": "ETH"},
        headers={"Accept": "application/json"},
    )
    assert refused.status == 409 and refused.json()["error"]["code"] == "currency_locked"


def test_given_a_redirect_url_when_paid_the_page_returns_the_buyer_to_the_shop(
    gateway, browser_context
):
    holder: list[Payment] = []
    in_worker_thread(
        lambda: holder.append(
            make_payment(amount="5.00", crypto_currency="LTC",
                         redirect_url="https://shop.example/thanks?order=42")
        )
    )  # fmt: skip
    payment = holder[0]
    page = open_page(browser_context)
    arrived: list[str] = []

    def shop(route: Any) -> None:
        arrived.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<title>Thanks</title>thanks")

    page.route("https://shop.example/**", shop)
    page.goto(gateway.base_url + checkout_url(payment))
    expect(page.locator("#checkout")).to_have_attribute("data-transport", "websocket")

    page.get_by_role("button", name="Simulate payment").click()

    expect(page.get_by_role("link", name=re.compile("Return to"))).to_be_visible(timeout=10_000)
    expect(page.locator("#redirect-note")).to_contain_text("Taking you back")
    page.wait_for_url("https://shop.example/thanks?order=42", timeout=10_000)
    assert arrived == ["https://shop.example/thanks?order=42"]


def test_given_a_german_browser_the_checkout_speaks_german_and_the_switcher_changes_it(
    gateway, browser_context
):
    holder: list[Payment] = []
    in_worker_thread(lambda: holder.append(choice_payment()))
    payment = holder[0]
    page = open_page(browser_context, locale="de-DE")

    page.goto(gateway.base_url + checkout_url(payment))

    expect(page.locator("html")).to_have_attribute("lang", "de")
    expect(page.locator("#headline")).to_have_text("Zahlungsart wählen")
    page.get_by_role("button", name="Bitcoin").click()
    expect(page.locator("#headline")).to_have_text("Warten auf Zahlung")
    expect(page.get_by_role("button", name="Adresse kopieren")).to_be_visible()
    expect(page.locator("#transport")).to_have_text("Live")
    assert axe_violations(page) == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "waiting-desktop-de.png"), full_page=True)

    page.get_by_role("link", name="Español").click()
    expect(page.locator("#headline")).to_have_text("Esperando el pago")
    page.reload()  # remembered
    expect(page.locator("#headline")).to_have_text("Esperando el pago")


def test_given_embedded_mode_when_another_process_pays_then_the_open_page_shows_it_within_2_s(
    tmp_path, browser_context
):
    import os
    import subprocess
    import sys
    import time

    import httpx

    from testing.servers import ROOT

    env = {
        name: value for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "REDIS_URL", "CRYPTOPAY_DEV_CHAIN", "DEBUG")
    } | {"CRYPTOPAY_STATE_DIR": str(tmp_path / "state"), "DATABASE_URL": "", "REDIS_URL": ""}  # fmt: skip

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "--noinput", "-v0")
    found = re.search(r"API key\s+(cpk_\S+)", manage("bootstrap_demo"))
    assert found is not None, "bootstrap_demo prints the API key"
    key = found.group(1)
    with asgi_server(tmp_path, env=env) as server:
        created = httpx.post(
            server.base_url + "/api/v1/payments",
            json={"amount": "12.00", "crypto_currency": "BTC"},
            headers={"Authorization": f"Bearer {key}"},
        ).json()
        page = open_page(browser_context)
        page.goto(created["checkout_url"])
        expect(page.locator("#checkout")).to_have_attribute("data-transport", "websocket")

        manage("simulate_payment", created["id"])
        paid_by_other_process = time.monotonic()

        expect(page.locator("#checkout")).to_have_attribute("data-step", "paid", timeout=2_000)
        assert time.monotonic() - paid_by_other_process < 2.0
        # Live over the socket, not by polling (that stays the fallback when the socket is down).
        assert page.evaluate("window.cryptopayCheckout.lastSocketStatus()") == "settled"
