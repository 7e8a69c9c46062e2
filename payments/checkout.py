"""The hosted checkout page a buyer pays on: ``/pay/<id>/?token=<checkout token>``.

Server-rendered, with one small script (``payments/static/payments/checkout.js``) that follows the
payment live over ``/ws/payments/<id>/`` and polls ``/pay/<id>/status`` every
``CHECKOUT_POLL_INTERVAL`` while the socket is down. The checkout token, not the payment id, is
the buyer's credential: the id travels through merchant systems and logs, the token only in the
checkout link.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import qrcode
import qrcode.image.svg
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from cryptopay.api_errors import error_response
from payments.chains.config import chain_for_currency
from payments.currencies import crypto
from payments.devchain import SimulationRefused, payment_simulate, simulation_allowed
from payments.models import Payment
from payments.money import format_base_units
from payments.services import payment_snapshot
from payments.states import FINAL_STATUSES, PaymentStatus
from resilience import clock

# BIP21 URI schemes of the UTXO coins.
BIP21_SCHEMES = {"BTC": "bitcoin", "LTC": "litecoin"}


def payment_uri(payment: Payment) -> str | None:
    """A wallet link with address and amount: BIP21 for BTC/LTC, EIP-681 for ETH and ERC-20.

    None when a wallet could not act on it (an ERC-20 whose contract is not configured).
    """
    currency = crypto(payment.crypto_currency)
    address = payment.deposit_address
    # What is still due: after a partial payment the link asks for the rest, not the whole.
    due = payment.crypto_amount - payment.amount_received
    if due <= 0:
        due = payment.crypto_amount
    if payment.crypto_currency in BIP21_SCHEMES:
        # BIP21 amounts are decimal coins; trailing zeros are noise to a wallet.
        amount = format_base_units(amount=due, currency=currency).rstrip("0").rstrip(".")
        return f"{BIP21_SCHEMES[payment.crypto_currency]}:{address}?{urlencode({'amount': amount})}"
    chain = chain_for_currency(payment.crypto_currency)
    at_chain = f"@{chain.chain_id}" if chain and chain.chain_id else ""
    if payment.crypto_currency == "ETH":
        return f"ethereum:{address}{at_chain}?value={due}"
    token = chain.tokens.get(payment.crypto_currency) if chain else None
    if token is None:
        return None
    query = urlencode({"address": address, "uint256": due}, quote_via=quote)
    return f"ethereum:{token.address}{at_chain}/transfer?{query}"


def qr_svg(data: str) -> str:
    """An inline SVG QR code (medium error correction, quiet zone of 4 modules)."""
    image = qrcode.make(
        data,
        image_factory=qrcode.image.svg.SvgPathImage,
        error_correction=qrcode.constants.ERROR_CORRECT_M,
        border=4,
    )
    return image.to_string(encoding="unicode")


def checkout_state(payment: Payment) -> dict[str, Any]:
    """What the page shows, in the shape of a live event's ``data.payment`` plus the page's extras."""
    state = payment_snapshot(payment)
    state.update(
        expires_at=payment.expires_at.isoformat(),
        required_confirmations=payment.required_confirmations,
        position=payment.event_sequence,
        final=payment.status in FINAL_STATUSES,
        server_time=clock.now().isoformat(),
    )
    return state


def _payment_for(request: HttpRequest, payment_id: str) -> Payment:
    token = request.GET.get("token", "")
    payment = Payment.objects.select_related("merchant").filter(public_id=payment_id).first()
    # One answer for "no such payment" and "wrong token": the page must not confirm ids.
    if payment is None or not token or not constant_time_compare(payment.checkout_token, token):
        raise Http404("No such checkout.")
    return payment


def checkout_url(payment: Payment) -> str:
    """The page's path with its token (prefix with the site's origin for an absolute link)."""
    path = reverse("checkout", kwargs={"payment_id": payment.public_id})
    return f"{path}?{urlencode({'token': payment.checkout_token})}"


STATUS_HEADLINES = {
    PaymentStatus.PENDING: "Waiting for your payment",
    PaymentStatus.PROCESSING: "Payment received, waiting for confirmations",
    PaymentStatus.SETTLED: "Payment complete",
    PaymentStatus.EXPIRED: "This payment request has expired",
    PaymentStatus.INVALID: "This payment is invalid",
    PaymentStatus.CANCELLED: "This payment was cancelled",
}


def _no_store(response: HttpResponse) -> HttpResponse:
    # The link carries the buyer's token: keep it out of caches and of Referer headers.
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


@never_cache
@require_GET
def checkout_page(request: HttpRequest, payment_id: str) -> HttpResponse:
    payment = _payment_for(request, payment_id)
    state = checkout_state(payment)
    links = {
        "status": reverse("checkout-status", kwargs={"payment_id": payment.public_id}),
        "qr": reverse("checkout-qr", kwargs={"payment_id": payment.public_id}),
        "simulate": reverse("checkout-simulate", kwargs={"payment_id": payment.public_id}),
        "socket": f"/ws/payments/{payment.public_id}/",
    }
    config = {
        "token": payment.checkout_token,
        "state": state,
        "links": links,
        "poll_ms": int(settings.CHECKOUT_POLL_INTERVAL.total_seconds() * 1000),
        "headlines": STATUS_HEADLINES,
        "decimals": crypto(payment.crypto_currency).decimals,
    }
    context = {
        "payment": payment,
        "state": state,
        "headline": STATUS_HEADLINES[payment.status],
        "payment_uri": payment_uri(payment),
        "currency": crypto(payment.crypto_currency),
        "token": payment.checkout_token,
        "links": links,
        "config": config,
        "seconds_left": seconds_left(payment.expires_at),
        "simulate": simulation_allowed(payment),
    }
    return _no_store(render(request, "payments/checkout.html", context))


@never_cache
@require_GET
def checkout_qr(request: HttpRequest, payment_id: str) -> HttpResponse:
    """The QR code of what is due now (the page reloads it after a partial payment)."""
    payment = _payment_for(request, payment_id)
    response = HttpResponse(
        qr_svg(payment_uri(payment) or payment.deposit_address), content_type="image/svg+xml"
    )
    return _no_store(response)


@never_cache
@require_GET
def checkout_status(request: HttpRequest, payment_id: str) -> HttpResponse:
    try:
        payment = _payment_for(request, payment_id)
    except Http404:
        return _no_store(
            error_response(
                status_code=404,
                error_type="invalid_request_error",
                code="resource_missing",
                message="No such checkout.",
            )
        )
    return _no_store(JsonResponse(checkout_state(payment)))


@require_POST
def checkout_simulate(request: HttpRequest, payment_id: str) -> HttpResponse:
    """The development chain's "simulate payment" button (CSRF-protected form post)."""
    payment = _payment_for(request, payment_id)
    try:
        payment_simulate(payment=payment)
    except SimulationRefused as refused:
        return _no_store(
            error_response(
                status_code=409,
                error_type="invalid_request_error",
                code="simulation_refused",
                message=str(refused),
            )
        )
    payment.refresh_from_db()
    if request.headers.get("Accept", "").startswith("application/json"):
        return _no_store(JsonResponse(checkout_state(payment)))
    return redirect(checkout_url(payment))


def seconds_left(expires_at: datetime) -> int:
    return max(int((expires_at - clock.now()).total_seconds()), 0)
