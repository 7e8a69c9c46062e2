"""The Django admin: operators see everything, create keys whose secret is shown once, revoke keys,
find payments, and move payments only through the state machine."""

from __future__ import annotations

import re

import pytest
from django.contrib import messages
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from accounts import services as accounts_services
from accounts.models import ApiKey, ApiKeyScope, Merchant, MerchantLogo
from payments import services
from payments.models import Payment, PaymentEvent
from payments.states import PaymentStatus, PaymentSubStatus
from tests.factories import ApiKeyFactory, MerchantFactory, make_payment

pytestmark = pytest.mark.django_db

SECRET = re.compile(r"cpk_[A-Za-z0-9]{44}")


@pytest.fixture
def admin_client_(django_user_model) -> Client:
    # No password (force_login needs none): hashing one would dominate the test's run time.
    user = django_user_model.objects.create_superuser("operator", "ops@example.com", None)
    client = Client()
    client.force_login(user)
    return client


def expired(payment: Payment) -> Payment:
    services.payment_transition(payment=payment, to_status=PaymentStatus.EXPIRED, reason="test")
    return payment


# Merchants and API keys belong to the accounts app (so do their admin URLs); the rest to payments.
APP_OF = {"merchant": "accounts", "apikey": "accounts"}


def admin_name(model: str, view: str) -> str:
    return f"admin:{APP_OF.get(model, 'payments')}_{model}_{view}"


def changelist(model: str) -> str:
    return reverse(admin_name(model, "changelist"))


def results(response) -> list[int]:
    assert response.status_code == 200
    return sorted(obj.pk for obj in response.context["cl"].result_list)


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def run_action(client: Client, model: str, action: str, *objects):
    return client.post(
        changelist(model), {"action": action, "_selected_action": [obj.pk for obj in objects]}
    )


# --- pages render -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["merchant", "apikey", "payment", "paymentevent"])
def test_given_a_superuser_when_opening_each_changelist_and_change_page_then_they_render(
    admin_client_, model
):
    merchant = MerchantFactory.create(name="Rendering Shop")
    api_key, _ = ApiKeyFactory.create_with_secret(merchant=merchant, name="render-key")
    payment = make_payment(merchant=merchant)
    shown = {
        "merchant": (merchant, merchant.name),
        "apikey": (api_key, api_key.prefix),
        "payment": (payment, payment.public_id),
        "paymentevent": (payment.events.get(), payment.public_id),
    }
    obj, text = shown[model]

    listing = admin_client_.get(changelist(model))
    change = admin_client_.get(reverse(admin_name(model, "change"), args=[obj.pk]))

    assert listing.status_code == 200
    assert text in listing.content.decode()
    assert change.status_code == 200
    assert text in change.content.decode()


# --- API keys -----------------------------------------------------------------------------------


def test_given_the_add_form_when_an_api_key_is_added_then_its_secret_is_shown_once_and_only_hashed(
    admin_client_, client
):
    merchant = MerchantFactory.create()

    response = admin_client_.post(
        reverse("admin:accounts_apikey_add"),
        {
            "merchant": merchant.pk,
            "name": "checkout",
            "scopes": [ApiKeyScope.PAYMENTS_READ, ApiKeyScope.PAYMENTS_WRITE],
        },
    )

    assert response.status_code == 200
    page = response.content.decode()
    secrets_shown = SECRET.findall(page)
    assert len(secrets_shown) == 1, "the secret appears exactly once on the page"
    secret = secrets_shown[0]
    assert len(secret) == 48
    assert "no-store" in response["Cache-Control"].replace(" ", "").split(",")

    api_key = ApiKey.objects.get(merchant=merchant, name="checkout")
    assert api_key.key_hash == accounts_services.api_key_hash(secret)
    assert api_key.prefix == secret[:16]
    assert api_key.scopes == ["payments:read", "payments:write"]
    private_part = secret[16:]
    row = ApiKey.objects.filter(pk=api_key.pk).values().get()
    assert not [column for column, value in row.items() if private_part in str(value)]

    # Never shown again...
    change_page = admin_client_.get(reverse("admin:accounts_apikey_change", args=[api_key.pk]))
    assert change_page.status_code == 200
    assert private_part not in change_page.content.decode()
    # ...and it works as a Bearer key.
    assert client.get("/api/v1/payments", **bearer(secret)).status_code == 200


def test_given_an_active_key_when_the_revoke_action_runs_then_the_api_refuses_it(
    admin_client_, client
):
    api_key, secret = ApiKeyFactory.create_with_secret()
    other_key, other_secret = ApiKeyFactory.create_with_secret(merchant=api_key.merchant)
    assert client.get("/api/v1/payments", **bearer(secret)).status_code == 200

    response = run_action(admin_client_, "apikey", "revoke", api_key)

    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Revoked 1 key(s)."]
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    refused = client.get("/api/v1/payments", **bearer(secret))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_revoked"
    # Only the selected key.
    other_key.refresh_from_db()
    assert other_key.revoked_at is None
    assert client.get("/api/v1/payments", **bearer(other_secret)).status_code == 200


# --- payment search and filters -----------------------------------------------------------------


@pytest.fixture
def payments_to_find():
    merchant = MerchantFactory.create()
    return {
        "btc": make_payment(merchant=merchant, order_id="order-alpha-7731"),
        "eth": make_payment(merchant=merchant, crypto_currency="ETH", order_id="order-beta-5529"),
        "expired": expired(make_payment(merchant=merchant, order_id="order-gamma-1184")),
    }


@pytest.mark.parametrize("field", ["public_id", "order_id", "deposit_address"])
def test_given_payments_when_searching_by_an_identifier_then_only_that_payment_is_found(
    admin_client_, payments_to_find, field
):
    target = payments_to_find["eth"]

    response = admin_client_.get(changelist("payment"), {"q": getattr(target, field)})

    assert results(response) == [target.pk]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status__exact": "expired"}, ["expired"]),
        ({"status__exact": "pending"}, ["btc", "eth"]),
        ({"crypto_currency__exact": "ETH"}, ["eth"]),
        ({"crypto_currency__exact": "BTC"}, ["btc", "expired"]),
        ({"crypto_currency__exact": "BTC", "status__exact": "pending"}, ["btc"]),
    ],
)
def test_given_payments_when_filtering_by_status_or_currency_then_only_matching_ones_are_listed(
    admin_client_, payments_to_find, query, expected
):
    response = admin_client_.get(changelist("payment"), query)

    assert results(response) == sorted(payments_to_find[name].pk for name in expected)


# --- payment actions ----------------------------------------------------------------------------


def test_given_an_expired_payment_when_marked_settled_then_it_settles_as_marked_with_an_event(
    admin_client_,
):
    payment = expired(make_payment())

    response = run_action(admin_client_, "payment", "mark_settled", payment)

    assert response.status_code == 302
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SETTLED
    assert payment.sub_status == PaymentSubStatus.MARKED
    assert payment.settled_at is not None
    last = payment.events.order_by("sequence").last()
    assert last is not None
    assert last.type == PaymentEvent.Type.STATUS_CHANGED
    assert last.data["from"] == {"status": "expired", "sub_status": None}
    assert last.data["to"] == {"status": "settled", "sub_status": "marked"}
    assert last.data["reason"] == "marked by operator"
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Marked 1 payment(s) settled."]


def test_given_a_pending_payment_when_marked_settled_then_it_stays_pending_with_a_warning(
    admin_client_,
):
    payment = make_payment()
    events_before = payment.events.count()

    response = run_action(admin_client_, "payment", "mark_settled", payment)

    assert response.status_code == 302
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    assert payment.sub_status == PaymentSubStatus.NONE
    assert payment.events.count() == events_before
    warnings = [str(m) for m in get_messages(response.wsgi_request) if m.level == messages.WARNING]
    assert len(warnings) == 1
    assert payment.public_id in warnings[0]
    assert "cannot become settled" in warnings[0]


def test_given_the_payment_admin_then_payments_cannot_be_added_or_deleted(admin_client_):
    payment = make_payment()

    add = admin_client_.get(reverse("admin:payments_payment_add"))
    delete = admin_client_.get(reverse("admin:payments_payment_delete", args=[payment.pk]))
    delete_post = admin_client_.post(
        reverse("admin:payments_payment_delete", args=[payment.pk]), {"post": "yes"}
    )

    assert add.status_code == 403
    assert delete.status_code == 403
    assert delete_post.status_code == 403
    assert Payment.objects.filter(pk=payment.pk).exists()


def test_given_a_payment_with_events_when_its_change_page_opens_then_the_events_are_inline(
    admin_client_,
):
    payment = expired(make_payment())

    response = admin_client_.get(reverse("admin:payments_payment_change", args=[payment.pk]))

    assert response.status_code == 200
    (events_inline,) = [
        inline
        for inline in response.context["inline_admin_formsets"]
        if inline.formset.model is PaymentEvent
    ]
    assert [form.instance.type for form in events_inline.formset.forms] == [
        PaymentEvent.Type.CREATED,
        PaymentEvent.Type.EXPIRED,
    ]
    page = response.content.decode()
    assert "Payment created" in page
    assert "Payment expired" in page


# --- access -------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["non-staff user", "anonymous"])
def test_given_someone_not_staff_when_opening_the_admin_then_they_are_sent_to_the_login_page(
    django_user_model, who
):
    client = Client()
    if who == "non-staff user":
        client.force_login(django_user_model.objects.create_user("shopper", password=None))
    url = changelist("payment")

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('admin:login')}?next={url}"


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def merchant_form(merchant, **extra) -> dict:
    return {
        "name": merchant.name, "default_fiat_currency": "USD", "payment_expiry": "00:15:00",
        "monitoring_window": "01:00:00", "underpayment_tolerance_percent": "0",
        "speed_policy": "1", "brand_color": "#1a7f5a", "support_url": "", **extra,
    }  # fmt: skip


def test_a_merchant_logo_is_uploaded_sniffed_and_size_limited(admin_client_, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    merchant = MerchantFactory.create()
    url = reverse("admin:accounts_merchant_change", args=[merchant.pk])

    saved = admin_client_.post(
        url, merchant_form(merchant, logo_upload=SimpleUploadedFile("logo.svg", PNG, "image/svg+xml"))
    )  # fmt: skip
    merchant.refresh_from_db()
    assert saved.status_code == 302
    logo = merchant.checkout_logo
    assert (bytes(logo.image), logo.content_type) == (PNG, "image/png")
    assert merchant.brand_color == "#1a7f5a"
    page = admin_client_.get(url).content.decode()
    assert f"image/png, {len(PNG)} bytes" in page

    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    refused = admin_client_.post(
        url, merchant_form(merchant, logo_upload=SimpleUploadedFile("logo.png", svg, "image/png"))
    )  # fmt: skip
    assert refused.status_code == 200 and "must be a PNG, JPEG or WebP" in refused.content.decode()
    settings.MERCHANT_LOGO_MAX_BYTES = 32
    too_big = admin_client_.post(
        url, merchant_form(merchant, logo_upload=SimpleUploadedFile("logo.png", PNG, "image/png"))
    )  # fmt: skip
    assert "larger than 32 bytes" in too_big.content.decode()
    bad_colour = admin_client_.post(url, merchant_form(merchant, brand_color="red;}"))
    assert bad_colour.status_code == 200 and "#1a7f5a" in bad_colour.content.decode()
    merchant = Merchant.objects.get(pk=merchant.pk)
    assert (bytes(merchant.checkout_logo.image), merchant.brand_color) == (PNG, "#1a7f5a")

    removed = admin_client_.post(url, merchant_form(merchant, logo_clear="on"))
    assert removed.status_code == 302
    assert not MerchantLogo.objects.filter(merchant=merchant).exists()
    assert re.search(
        r"Current logo:</label>\s*<div class=\"readonly\">none</div>",
        admin_client_.get(url).content.decode(),
    )


def test_a_payment_with_a_choice_shows_its_coins_and_quotes_before_and_after_the_pick(
    admin_client_,
):
    from decimal import Decimal

    payment = services.payment_create_with_choice(
        merchant=MerchantFactory.create(), fiat_amount=Decimal("12.00"), fiat_currency="USD",
        accepted_currencies=["BTC", "LTC"],
    )  # fmt: skip
    url = reverse("admin:payments_payment_change", args=[payment.pk])

    before = admin_client_.get(url).content.decode()
    services.payment_select_currency(payment=payment, crypto_currency="LTC")
    after = admin_client_.get(url).content.decode()

    assert "Bitcoin" in before and "Litecoin" in before
    assert payment.deposit_address not in before
    assert payment.deposit_address in after
    assert admin_client_.get(changelist("payment")).status_code == 200
