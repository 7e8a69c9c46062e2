"""The hosted checkout page a buyer pays on: ``/pay/<id>/?token=<checkout token>``.

Server-rendered, with one small script (``payments/static/payments/checkout.js``) that follows the
payment live over ``/ws/payments/<id>/`` and polls ``/pay/<id>/status`` every
``CHECKOUT_POLL_INTERVAL`` while the socket is down. The checkout token, not the payment id, is
the buyer's credential: the id travels through merchant systems and logs, the token only in the
checkout link.

What the buyer reads is decided here (``checkout_state``: the step, its headline and explanation,
in the buyer's language), so the page and its script never show raw status words. Languages:
``CHECKOUT_LANGUAGES``, picked from ``?lang=`` (remembered in Django's language cookie), else the
browser's Accept-Language. Only the checkout is translated: the API and admin keep English.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import qrcode
import qrcode.image.svg
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import get_script_prefix, get_urlconf, reverse
from django.urls.converters import SlugConverter
from django.utils import translation
from django.utils.crypto import constant_time_compare
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from accounts.api_errors import error_response
from accounts.selectors import merchant_has_logo, merchant_logo
from notifications.destinations import DestinationRefused, address_public, destination_parse
from payments.chains.config import chain_for_currency
from payments.currencies import CRYPTO_CURRENCIES, crypto
from payments.devchain import SimulationRefused, payment_simulate, simulation_allowed
from payments.errors import CurrencyNotSwitchable
from payments.models import Payment, PaymentTransaction
from payments.money import coin_text, crypto_units, format_base_units
from payments.services import (
    payment_currency_switchable,
    payment_select_currency,
    payment_snapshot,
)
from payments.states import FINAL_STATUSES, PaymentStatus, PaymentSubStatus
from resilience import clock

# BIP21 URI schemes of the UTXO coins.
BIP21_SCHEMES = {"BTC": "bitcoin", "LTC": "litecoin"}


def payment_uri(payment: Payment) -> str | None:
    """A wallet link with address and amount: BIP21 for BTC/LTC, EIP-681 for ETH and ERC-20.

    None when a wallet could not act on it (an ERC-20 whose contract is not configured).
    """
    if not payment.crypto_currency:
        return None
    currency = crypto(payment.crypto_currency)
    address = payment.deposit_address
    # What is still due: after a partial payment the link asks for the rest, not the whole.
    due = payment.priced_amount - payment.amount_received
    if due <= 0:
        due = payment.priced_amount
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


CHECKOUT_LANGUAGES = {"en": "English", "de": "Deutsch", "es": "Español"}
# Seconds the page waits on "Paid" before it sends the buyer back to the merchant's redirect_url.
REDIRECT_DELAY_SECONDS = 5
# Host names that never mean a public shop, whatever they resolve to.
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


class ReturnUrlRefused(ValueError):
    """Not a URL the checkout page may send a buyer to; the message says why."""


def return_url_check(url: str) -> None:
    """A redirect_url / cancel_url: http(s), a valid host (parsed as webhook URLs are), no
    credentials, and public: an IP literal must be a public address, a name must not be a
    single label or a local-only name. The gateway never fetches it (the buyer's browser goes
    there), so it is not resolved: that would only make creation wait on DNS."""
    try:
        _scheme, host, _port = destination_parse(url)
    except DestinationRefused as refused:
        raise ReturnUrlRefused(str(refused)) from refused
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ReturnUrlRefused("The URL must not carry a user name or password.")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not address_public(literal):
            raise ReturnUrlRefused(f"{host} is a private or reserved address.")
        return
    name = host.rstrip(".")
    if "." not in name or name == "localhost" or name.endswith(_LOCAL_SUFFIXES):
        raise ReturnUrlRefused(f"{host!r} is not a public host name.")


def _confirmations(payment: Payment) -> int:
    """The fewest confirmations among the transactions that count: what the payment waits on."""
    counts = (
        PaymentTransaction.objects.filter(payment=payment)
        .exclude(state=PaymentTransaction.State.DROPPED)
        .values_list("confirmations", flat=True)
    )
    return min(counts, default=0)


def checkout_step(payment: Payment) -> str:
    """Where the buyer is, in the page's terms (one of STEP_HEADLINES' keys)."""
    status, sub = payment.status, payment.sub_status
    if status == PaymentStatus.PENDING:
        if not payment.crypto_currency:
            return "choose"
        return "underpaid" if sub == PaymentSubStatus.PAID_PARTIAL else "waiting"
    if status == PaymentStatus.PROCESSING:
        return "confirming" if _confirmations(payment) > 0 else "detected"
    if status == PaymentStatus.SETTLED:
        return "paid"
    if status in (PaymentStatus.EXPIRED, PaymentStatus.CANCELLED):
        if sub == PaymentSubStatus.PAID_LATE:
            return "paid_late"
        if sub == PaymentSubStatus.PAID_PARTIAL:
            return "expired_partial" if status == PaymentStatus.EXPIRED else "cancelled"
        return "expired" if status == PaymentStatus.EXPIRED else "cancelled"
    return "invalid"


def _step_texts(payment: Payment, step: str, confirmations: int) -> tuple[str, str]:
    """(headline, explanation) of a step, in the active language."""
    merchant = payment.merchant.name
    unit = payment.crypto_currency
    snapshot = payment_snapshot(payment)
    if step == "choose":
        return _("Choose how to pay"), _(
            "Pick a coin. Its amount is fixed for the time shown once you pick it; you can change "
            "your mind until a payment is detected."
        )
    if step == "waiting":
        return _("Waiting for payment"), _(
            "Send exactly the amount below to the address below, or scan the code with your "
            "wallet. This page updates by itself."
        )
    if step == "underpaid":
        return _("Partly paid: %(due)s %(unit)s still due") % {
            "due": coin_text(snapshot["amount_due"]),
            "unit": unit,
        }, _(
            "We received %(received)s %(unit)s. Send the rest to the same address; the code below "
            "asks for the rest only."
        ) % {"received": coin_text(snapshot["amount_received"]), "unit": unit}
    if step == "detected":
        return _("Payment detected — waiting for confirmations (%(done)s of %(needed)s)") % {
            "done": confirmations,
            "needed": max(payment.required_confirmations, 1),
        }, _(
            "Your payment is on its way. You can close this page; %(merchant)s is notified when "
            "it is confirmed."
        ) % {"merchant": merchant}
    if step == "confirming":
        return _(
            "Payment detected — waiting for confirmations (%(done)s of %(needed)s)"
        ) % {"done": min(confirmations, payment.required_confirmations),
             "needed": payment.required_confirmations}, _(
            "Almost done. You can close this page; %(merchant)s is notified when it is confirmed."
        ) % {"merchant": merchant}  # fmt: skip
    if step == "paid":
        extra = (
            " "
            + _("You sent more than was due: contact %(merchant)s about the difference.")
            % {"merchant": merchant}
            if payment.sub_status == PaymentSubStatus.PAID_OVER
            else ""
        )
        return _("Paid"), _("Thank you. Your payment to %(merchant)s is complete.") % {
            "merchant": merchant
        } + extra
    if step == "expired":
        return _("This payment request has expired"), _(
            "The time to pay has run out. Do not send anything to this address. If you still want "
            "to buy, go back to %(merchant)s and start again."
        ) % {"merchant": merchant}
    if step == "expired_partial":
        return _("Time ran out before the full amount arrived"), _(
            "We received %(received)s of %(total)s %(unit)s. Contact %(merchant)s about what you "
            "sent; do not send more to this address."
        ) % {"received": coin_text(snapshot["amount_received"]),
             "total": coin_text(snapshot["crypto_amount"]), "unit": unit,
             "merchant": merchant}  # fmt: skip
    if step == "paid_late":
        return _("Your payment arrived after the deadline"), _(
            "%(merchant)s will review it and contact you about whether it is accepted or refunded."
        ) % {"merchant": merchant}
    if step == "cancelled":
        return _("This payment was cancelled"), _(
            "%(merchant)s cancelled this payment request. Do not send anything to this address."
        ) % {"merchant": merchant}
    return _("This payment could not be completed"), _("Contact %(merchant)s for help.") % {
        "merchant": merchant
    }


def checkout_state(payment: Payment) -> dict[str, Any]:
    """What the page shows, in the shape of a live event's ``data.payment`` plus the page's extras
    (the step and its texts in the active language)."""
    state = payment_snapshot(payment)
    step = checkout_step(payment)
    confirmations = _confirmations(payment) if payment.status == PaymentStatus.PROCESSING else 0
    headline, detail = _step_texts(payment, step, confirmations)
    state.update(
        step=step,
        headline=headline,
        detail=detail,
        confirmations=confirmations,
        deposit_address=payment.deposit_address,
        expires_at=payment.expires_at.isoformat(),
        required_confirmations=payment.required_confirmations,
        position=payment.event_sequence,
        final=payment.status in FINAL_STATUSES,
        switchable=bool(payment.accepted_currencies) and payment_currency_switchable(payment),
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


# Stands for a payment's id in the checkout path reversed once (a slug, as the route's is).
_PAYMENT_ID_SLOT = "0paymentid0"
_SLUG = re.compile(SlugConverter.regex)  # the route's converter


@functools.lru_cache(maxsize=16)
def _checkout_path_around_id(script_prefix: str, urlconf: str | None) -> tuple[str, str]:
    """The checkout path before and after the payment's id: reversing the route anew for every
    payment an API answer shows was a quarter of what rendering a payment cost."""
    path = reverse("checkout", kwargs={"payment_id": _PAYMENT_ID_SLOT}, urlconf=urlconf)
    before, _, after = path.partition(_PAYMENT_ID_SLOT)
    return before, after


def checkout_url(payment: Payment) -> str:
    """The page's path with its token (prefix with the site's origin for an absolute link)."""
    public_id = payment.public_id
    if _SLUG.fullmatch(public_id):
        before, after = _checkout_path_around_id(get_script_prefix(), get_urlconf())
        path = f"{before}{public_id}{after}"
    else:  # never for an id we issue; reverse() says what is wrong with it
        path = reverse("checkout", kwargs={"payment_id": public_id})
    return f"{path}?{urlencode({'token': payment.checkout_token})}"


def _no_store(response: HttpResponse) -> HttpResponse:
    # The link carries the buyer's token: keep it out of caches and of Referer headers.
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


def checkout_language(request: HttpRequest) -> str:
    """``?lang=`` when it is one of ours, else the language cookie or Accept-Language."""
    asked = request.GET.get("lang", "")
    if asked in CHECKOUT_LANGUAGES:
        return asked
    found = translation.get_language_from_request(request)
    base = (found or "en").split("-")[0]
    return base if base in CHECKOUT_LANGUAGES else "en"


def _in_language(view):
    """Run a checkout view in the buyer's language; remember an explicit ``?lang=``."""

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        language = checkout_language(request)
        with translation.override(language):
            response = view(request, *args, **kwargs)
        response["Content-Language"] = language
        response.headers.setdefault("Vary", "Accept-Language, Cookie")
        if request.GET.get("lang") in CHECKOUT_LANGUAGES:
            response.set_cookie(
                settings.LANGUAGE_COOKIE_NAME, language, max_age=365 * 24 * 3600,
                samesite="Lax", secure=request.is_secure(), httponly=True,
            )  # fmt: skip
        return response

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def _brand_colors(color: str) -> dict[str, str] | None:
    """The merchant's accent and a text colour readable on it (WCAG relative luminance)."""
    if not color:
        return None
    channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    # Contrast with white vs with near-black: pick the larger.
    on_accent = (
        "#ffffff" if (1.05 / (luminance + 0.05)) >= ((luminance + 0.05) / 0.05) else "#111111"
    )
    return {"accent": color.lower(), "on_accent": on_accent}


def _links(payment: Payment) -> dict[str, str]:
    kwargs = {"payment_id": payment.public_id}
    return {
        "page": reverse("checkout", kwargs=kwargs),
        "status": reverse("checkout-status", kwargs=kwargs),
        "qr": reverse("checkout-qr", kwargs=kwargs),
        "simulate": reverse("checkout-simulate", kwargs=kwargs),
        "select": reverse("checkout-select", kwargs=kwargs),
        "logo": reverse("checkout-logo", kwargs=kwargs),
        "socket": f"/ws/payments/{payment.public_id}/",
    }


def _options(payment: Payment) -> list[dict[str, Any]]:
    """The coins the buyer may pick, with their amounts."""
    from payments.selectors import payment_options

    return [
        {
            "code": option.crypto_currency,
            "name": CRYPTO_CURRENCIES[option.crypto_currency].name,
            "amount": crypto_units(
                amount=option.crypto_amount, currency=crypto(option.crypto_currency)
            ),
            "selected": option.crypto_currency == payment.crypto_currency,
        }
        for option in (payment_options(payment=payment) if payment.accepted_currencies else [])
    ]


def _script_texts() -> dict[str, str]:
    """The few strings the script writes itself (the rest comes translated in the state)."""
    return {
        "copied": _("Copied"),
        "copy": _("Copy"),
        "copied_value": _("Copied %(value)s"),
        "live": _("Live"),
        "connecting": _("Connecting…"),
        "polling": _("Checking every %(seconds)s s"),
        "minutes_left": _("%(minutes)s minutes left to pay"),
        "one_minute_left": _("Less than a minute left to pay"),
        "time_up": _("Time is up"),
        "redirecting": _("Taking you back to %(merchant)s in %(seconds)s s…"),
    }


@never_cache
@require_GET
@_in_language
def checkout_page(request: HttpRequest, payment_id: str) -> HttpResponse:
    payment = _payment_for(request, payment_id)
    state = checkout_state(payment)
    links = _links(payment)
    merchant = payment.merchant
    config = {
        "token": payment.checkout_token,
        "state": state,
        "links": links,
        "poll_ms": int(settings.CHECKOUT_POLL_INTERVAL.total_seconds() * 1000),
        "decimals": crypto(payment.crypto_currency).decimals if payment.crypto_currency else 0,
        "texts": _script_texts(),
        "merchant": merchant.name,
        "redirect_url": payment.redirect_url,
        "redirect_seconds": REDIRECT_DELAY_SECONDS,
        "duration_seconds": max(int((payment.expires_at - payment.created_at).total_seconds()), 1),
    }
    language = translation.get_language()
    context = {
        "payment": payment,
        "merchant": merchant,
        "state": state,
        # The page's crypto amounts as people read them; the script trims live updates alike.
        "coin": {
            field: coin_text(state[field]) if state[field] else state[field]
            for field in ("crypto_amount", "amount_due")
        },
        "step": state["step"],
        "payment_uri": payment_uri(payment),
        "currency": crypto(payment.crypto_currency) if payment.crypto_currency else None,
        "token": payment.checkout_token,
        "links": links,
        "config": config,
        "options": _options(payment),
        "seconds_left": seconds_left(payment.expires_at),
        "brand": _brand_colors(merchant.brand_color),
        "has_logo": merchant_has_logo(merchant_id=merchant.pk),
        "language": language,
        "languages": [
            {"code": code, "name": name, "current": code == language}
            for code, name in CHECKOUT_LANGUAGES.items()
        ],
        "return_url": payment.cancel_url or payment.redirect_url,
        "simulate": simulation_allowed(payment),
    }
    return _no_store(render(request, "payments/checkout.html", context))


@csrf_exempt
@require_POST
@_in_language
def checkout_select(request: HttpRequest, payment_id: str) -> HttpResponse:
    """The buyer picks (or changes) the coin: a plain form post, then back to the page.

    Not CSRF-checked: what authorises it is the checkout token in the URL, not a cookie, so a
    forged cross-site post could only do what the token's holder can do anyway. (And the page's
    no-referrer policy makes browsers send ``Origin: null`` with form posts, which Django's
    check refuses.)"""
    payment = _payment_for(request, payment_id)
    code = request.POST.get("crypto_currency", "")
    try:
        payment_select_currency(payment=payment, crypto_currency=code)
    except CurrencyNotSwitchable as refused:
        if request.headers.get("Accept", "").startswith("application/json"):
            return _no_store(
                error_response(
                    status_code=refused.status_code,
                    error_type="invalid_request_error",
                    code=refused.code,
                    message=refused.message,
                    param=refused.param,
                )
            )
    if request.headers.get("Accept", "").startswith("application/json"):
        payment.refresh_from_db()
        return _no_store(JsonResponse(checkout_state(payment)))
    # Refused or not, the page shows where the payment now stands.
    return redirect(checkout_url(payment))


@never_cache
@require_GET
def checkout_logo(request: HttpRequest, payment_id: str) -> HttpResponse:
    """The merchant's logo: sniffed raster bytes only, served so no browser runs them."""
    payment = _payment_for(request, payment_id)
    logo = merchant_logo(merchant_id=payment.merchant_id)
    if logo is None:
        raise Http404("No logo.")
    response = HttpResponse(bytes(logo.image), content_type=logo.content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Content-Disposition"] = "inline; filename=logo"
    return _no_store(response)


@never_cache
@require_GET
def checkout_qr(request: HttpRequest, payment_id: str) -> HttpResponse:
    """The QR code of what is due now (the page reloads it after a partial payment)."""
    payment = _payment_for(request, payment_id)
    if not payment.deposit_address:
        raise Http404("No coin picked yet.")
    response = HttpResponse(
        qr_svg(payment_uri(payment) or payment.deposit_address), content_type="image/svg+xml"
    )
    return _no_store(response)


@never_cache
@require_GET
@_in_language
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
        with translation.override(checkout_language(request)):
            return _no_store(JsonResponse(checkout_state(payment)))
    return redirect(checkout_url(payment))


def seconds_left(expires_at: datetime) -> int:
    return max(int((expires_at - clock.now()).total_seconds()), 0)
