"""The hosted checkout page, its status endpoint, QR code and the development chain's button."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.urls import get_script_prefix, reverse, set_script_prefix

from payments.checkout import checkout_url, payment_uri
from payments.models import Payment
from payments.services import ObservedOutput, payment_apply_transaction
from tests.factories import make_payment

pytestmark = pytest.mark.django_db


def first_group(pattern: str, text: str, flags: int = 0) -> str:
    """The first group of ``pattern``'s first match in ``text``, which must have one."""
    match = re.search(pattern, text, flags)
    assert match is not None, f"{pattern!r} not found"
    return match.group(1)


def uri_of(payment: Payment) -> str:
    """The payment link of a payment that has one."""
    uri = payment_uri(payment)
    assert uri is not None, f"{payment.public_id} has no payment link"
    return uri


def page(client: Client, payment: Payment, suffix: str = "", token: str | None = None):
    token = payment.checkout_token if token is None else token
    return client.get(f"/pay/{payment.public_id}/{suffix}", {"token": token})


def test_given_the_checkout_link_when_opened_then_amounts_address_qr_and_countdown_are_shown():
    payment = make_payment(amount="25.00", crypto_currency="BTC")

    response = page(Client(), payment)

    assert response.status_code == 200
    html = response.content.decode()
    assert '<span data-field="amount">25.00</span> USD' in html
    assert payment.deposit_address in html
    assert 'id="qr"' in html and "alt=" in html
    assert 'id="countdown"' in html
    assert 'aria-live="polite"' in html
    assert response["Cache-Control"] == "no-store" or "no-store" in response["Cache-Control"]
    assert response["Referrer-Policy"] == "no-referrer"
    config = json.loads(first_group(r'id="checkout-config"[^>]*>(.*?)</script>', html, re.S))
    assert config["state"]["status"] == "pending"
    assert config["state"]["amount_due"] == "0.00041667"
    assert config["links"]["socket"] == f"/ws/payments/{payment.public_id}/"


@pytest.mark.parametrize("token", ["", "wrong"])
def test_given_a_missing_or_wrong_token_then_the_page_and_status_are_404(token):
    payment = make_payment()
    client = Client()

    assert page(client, payment, token=token).status_code == 404
    status = page(client, payment, "status", token=token)
    assert status.status_code == 404
    assert status.json()["error"]["code"] == "resource_missing"


def test_given_a_partial_payment_then_status_and_link_ask_for_what_is_still_due():
    payment = make_payment(amount="100.00", crypto_currency="BTC")  # 166667 sat at 60000
    payment_apply_transaction(
        payment=payment,
        output=ObservedOutput(
            chain="dev", txid="dev" + "a" * 60, output_index=0, amount=66667, confirmations=0
        ),
    )
    payment.refresh_from_db()

    state = page(Client(), payment, "status").json()

    assert (state["status"], state["sub_status"]) == ("pending", "paid_partial")
    assert state["amount_received"] == "0.00066667"
    assert state["amount_due"] == "0.00100000"
    assert payment_uri(payment) == f"bitcoin:{payment.deposit_address}?amount=0.001"


def test_payment_uris_follow_bip21_and_eip681(settings):
    settings.CHAINS = {
        "ethereum": {
            "kind": "evm", "currency": "ETH", "chain_id": 31337, "nodes": ["http://127.0.0.1:1"],
            "tokens": {"USDC": {"address": "0xA0B86991C6218B36C1D19D4A2E9EB0CE3606EB48", "decimals": 6}},
        }
    }  # fmt: skip
    ltc = make_payment(amount="10.00", crypto_currency="LTC")
    eth = make_payment(amount="10.00", crypto_currency="ETH")
    usdc = make_payment(amount="10.00", crypto_currency="USDC")
    usdt = make_payment(amount="10.00", crypto_currency="USDT")

    assert uri_of(ltc).startswith(f"litecoin:{ltc.deposit_address}?amount=")
    assert payment_uri(eth) == f"ethereum:{eth.deposit_address}@31337?value={eth.crypto_amount}"
    assert payment_uri(usdc) == (
        "ethereum:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48@31337/transfer"
        f"?address={usdc.deposit_address}&uint256={usdc.crypto_amount}"
    )
    assert payment_uri(usdt) is None  # no contract configured: no link a wallet could act on


def test_given_an_ether_payment_then_the_page_trims_zeros_past_satoshi_precision_and_the_link_stays_exact():
    from payments.currencies import crypto
    from payments.money import format_base_units

    # Given an ETH payment whose exact amount ends in zeros (18 decimals)
    payment = make_payment(amount="10.00", crypto_currency="ETH")
    Payment.objects.filter(pk=payment.pk).update(crypto_amount=8_909_090_909_090_910)
    payment.refresh_from_db()
    exact = format_base_units(amount=payment.priced_amount, currency=crypto("ETH"))

    # When the buyer opens the page
    html = page(Client(), payment).content.decode()

    # Then the amounts read without the trailing zero, and what the wallet gets is exact
    assert exact == "0.008909090909090910"
    assert (
        '<span id="amount-due" data-field="amount_due" data-coin>0.00890909090909091</span>' in html
    )
    assert '<span data-field="crypto_amount" data-coin>0.00890909090909091</span>' in html
    assert exact not in html.split('id="checkout-config"')[0]
    assert uri_of(payment).endswith("value=8909090909090910")


def test_the_qr_code_is_an_svg_of_the_payment_link():
    payment = make_payment()

    response = page(Client(), payment, "qr.svg")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response.content.startswith(b"<?xml") or b"<svg" in response.content[:200]


def test_given_the_development_chain_when_simulate_is_pressed_then_the_payment_settles():
    payment = make_payment()
    client = Client(enforce_csrf_checks=True)
    html = page(client, payment).content.decode()
    csrf = first_group(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)

    refused = client.post(f"/pay/{payment.public_id}/simulate?token={payment.checkout_token}")
    assert refused.status_code == 403  # CSRF protected
    response = client.post(
        f"/pay/{payment.public_id}/simulate?token={payment.checkout_token}",
        HTTP_X_CSRFTOKEN=csrf,
        HTTP_ACCEPT="application/json",
    )

    assert response.status_code == 200
    assert response.json()["status"] == "settled"
    payment.refresh_from_db()
    assert payment.status == "settled"


def test_given_the_development_chain_off_then_the_page_has_no_simulate_button(settings):
    payment = make_payment()
    settings.DEV_CHAIN_ENABLED = False

    html = page(Client(), payment).content.decode()

    assert 'id="simulate"' not in html


def test_the_api_returns_the_checkout_url_with_the_buyers_token(api):
    created = api.post(
        "/api/v1/payments", {"amount": "5.00", "crypto_currency": "BTC"}, format="json"
    )

    payment = Payment.objects.get(public_id=created.json()["id"])
    assert created.json()["checkout_url"] == f"http://testserver{checkout_url(payment)}"
    assert payment.checkout_token in created.json()["checkout_url"]


def test_the_checkout_url_is_the_routes_path_under_the_script_prefix_in_use():
    # given a payment, and the gateway served first at the root, then under /gateway/
    payment = make_payment()
    expected = f"/pay/{payment.public_id}/?token={payment.checkout_token}"

    # when its checkout URL is asked for under each
    at_root = checkout_url(payment)
    previous = get_script_prefix()
    set_script_prefix("/gateway/")
    try:
        under_prefix = checkout_url(payment)
    finally:
        set_script_prefix(previous)

    # then each is the page's path where that deployment serves it, and the root's again after
    assert at_root == expected
    assert under_prefix == f"/gateway{expected}"
    assert checkout_url(payment) == expected
    assert reverse("checkout", kwargs={"payment_id": payment.public_id}) == expected.split("?")[0]


@pytest.mark.parametrize("payment_id", ["pay_%00abc", "pay_%C3%A9", "%F0%9F%92%B8"])
def test_given_a_malformed_payment_id_then_the_checkout_answers_404_not_500(payment_id):
    client = Client()

    for suffix in ("", "status", "qr.svg"):
        assert client.get(f"/pay/{payment_id}/{suffix}", {"token": "x"}).status_code == 404


def test_the_merchants_logo_is_served_with_its_sniffed_type_and_never_run():
    from accounts.models import Merchant, MerchantLogo

    payment = make_payment()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    Merchant.objects.filter(pk=payment.merchant_id).update(brand_color="#ffcc00")
    MerchantLogo.objects.create(
        merchant_id=payment.merchant_id, image=png, content_type="image/png"
    )

    html = page(Client(), payment).content.decode()
    logo = page(Client(), payment, "logo")

    assert f"/pay/{payment.public_id}/logo?token=" in html
    # The brand colour arrives in a nonce'd style; yellow gets dark text to stay readable.
    assert "--brand: #ffcc00; --on-brand: #111111;" in html
    assert logo.status_code == 200 and logo.content == png
    assert logo["Content-Type"] == "image/png"
    assert logo["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in logo["Content-Security-Policy"]
    assert page(Client(), payment, "logo", token="wrong").status_code == 404


def test_given_a_german_or_spanish_browser_then_the_page_and_its_status_speak_it():
    payment = make_payment()
    client = Client()

    german = client.get(
        f"/pay/{payment.public_id}/", {"token": payment.checkout_token},
        HTTP_ACCEPT_LANGUAGE="de-CH,de;q=0.9,en;q=0.5",
    )  # fmt: skip
    status = client.get(
        f"/pay/{payment.public_id}/status", {"token": payment.checkout_token},
        HTTP_ACCEPT_LANGUAGE="es-ES,es;q=0.9",
    )  # fmt: skip
    unknown = client.get(
        f"/pay/{payment.public_id}/", {"token": payment.checkout_token},
        HTTP_ACCEPT_LANGUAGE="fr-FR",
    )  # fmt: skip

    assert '<html lang="de">' in german.content.decode()
    assert "Warten auf Zahlung" in german.content.decode()
    assert german["Content-Language"] == "de"
    assert status.json()["headline"] == "Esperando el pago"
    assert "Waiting for payment" in unknown.content.decode()


def test_the_checkout_steps_never_show_raw_status_words():
    payment = make_payment()

    html = page(Client(), payment).content.decode()
    text = re.sub(r"<[^>]+>|\{.*\}", " ", html.split("<body>")[1].split("<script")[0])

    for word in ("pending", "processing", "settled", "paid_partial", "sub_status"):
        assert word not in text
