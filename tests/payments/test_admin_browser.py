"""The payments list in Debian's Chromium at 1280 px: it fits without a horizontal scrollbar.
A real server (manage.py serve) and a real admin login; the screenshot is kept in test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import sync_playwright

from testing.servers import Server, asgi_server
from tests.factories import MerchantFactory, make_payment
from tests.payments.test_checkout_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-operator-password-1280"


@pytest.fixture
def gateway(tmp_path) -> Iterator[Server]:
    assert CHROMIUM.exists(), "make test installs Debian chromium (make browser)"
    with asgi_server(tmp_path, env={"CRYPTOPAY_DEV_CHAIN": "1"}) as server:
        yield server


def test_given_payments_when_the_list_is_shown_at_1280_px_then_it_needs_no_horizontal_scroll(
    gateway, django_user_model
):
    django_user_model.objects.create_superuser("operator", "ops@example.com", PASSWORD)
    merchant = MerchantFactory.create(name="A merchant with a rather long trading name, Ltd.")
    for n, currency in enumerate(("BTC", "LTC", "ETH", "USDC", "USDT")):
        make_payment(
            merchant=merchant, amount="1234567.89", crypto_currency=currency,
            order_id=f"order-2026-12-{n:04d}-with-a-long-reference",
        )  # fmt: skip

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{gateway.base_url}/admin/login/?next=/admin/payments/payment/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_selector("#result_list")
            # The page, and the results' own scroll box (the admin scrolls a wide table there).
            widths = page.evaluate(
                """() => [document.documentElement, document.querySelector('#changelist .results')]
                    .map(e => [e.scrollWidth, e.clientWidth])"""
            )
            text = page.inner_text("#result_list")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "admin-payments-1280.png"), full_page=True)
        finally:
            browser.close()

    (page_scroll, page_width), (table_scroll, table_width) = widths
    assert page_width <= 1280
    assert page_scroll <= page_width, f"the page is {page_scroll - page_width} px too wide"
    assert table_scroll <= table_width, f"the list is {table_scroll - table_width} px too wide"
    assert "1234567.89 USD" in text and " BTC" in text
