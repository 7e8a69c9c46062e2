from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html

from payments import services
from payments.addresses import GapRun, unpaid_address_run, wallet_gap_runs
from payments.chains.derivation import GAP_LIMIT, InvalidExtendedKey, wallet_validate
from payments.checkout import checkout_url
from payments.errors import InvalidTransition
from payments.models import (
    ApiKey,
    ApiKeyScope,
    ChainCursor,
    ExchangeRateEvent,
    Merchant,
    MerchantWallet,
    Payment,
    PaymentEvent,
    PaymentOption,
    PaymentTransaction,
    UnmatchedTransfer,
)
from payments.states import PaymentStatus

GAP_ADVICE = (
    "A wallet restored from this key stops looking after {limit} unused addresses in a row, so it "
    "may not show later payments: raise the wallet's gap limit (Electrum: wallet.change_gap_limit"
    "({want}) in the console; Sparrow: Settings, Advanced, Gap limit), or have buyers pay. "
    "Addresses keep being issued."
)


def gap_warning(gap: GapRun) -> str:
    return f"{'/'.join(gap.currencies)} wallet: {gap.run} unpaid addresses in a row, over the " + (
        f"gap limit of {gap.limit}. " + GAP_ADVICE.format(limit=gap.limit, want=gap.run + gap.limit)
    )


class MerchantForm(forms.ModelForm):
    """The merchant with its checkout branding: the logo arrives as an upload, is checked
    (``services.merchant_logo_read``) and stored as bytes."""

    logo_upload = forms.FileField(
        required=False,
        label="Logo",
        help_text="PNG, JPEG or WebP, at most the configured size (CRYPTOPAY_MERCHANT_LOGO_MAX_BYTES)."
        " Shown on the checkout page.",
    )
    logo_clear = forms.BooleanField(required=False, label="Remove the logo")
    support_url = forms.URLField(
        required=False,
        assume_scheme="https",
        help_text="Where buyers can reach you (shown when a payment needs help).",
    )

    class Meta:
        model = Merchant
        fields = [
            "name", "default_fiat_currency", "payment_expiry", "monitoring_window",
            "underpayment_tolerance_percent", "speed_policy", "brand_color", "support_url",
        ]  # fmt: skip

    def clean_logo_upload(self):  # type: ignore[no-untyped-def]
        upload = self.cleaned_data.get("logo_upload")
        if not upload:
            return None
        try:
            return services.merchant_logo_read(upload)
        except services.LogoRefused as refused:
            raise forms.ValidationError(str(refused)) from refused


@admin.register(Merchant)
class MerchantAdmin(admin.ModelAdmin):
    form = MerchantForm
    list_display = ["name", "public_id", "default_fiat_currency", "speed_policy", "created_at"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "created_at", "address_gap", "logo_preview"]

    @admin.display(description="Current logo")
    def logo_preview(self, merchant: Merchant) -> str:
        if not merchant.logo_content_type:
            return "none"
        return f"{merchant.logo_content_type}, {len(bytes(merchant.logo or b''))} bytes"

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        logo = form.cleaned_data.get("logo_upload")
        if logo is not None:
            obj.logo, obj.logo_content_type = logo
        elif form.cleaned_data.get("logo_clear"):
            obj.logo, obj.logo_content_type = None, ""
        super().save_model(request, obj, form, change)

    @admin.display(description=f"Unpaid addresses in a row (gap limit {GAP_LIMIT})")
    def address_gap(self, merchant: Merchant) -> str:
        if merchant.pk is None:
            return "-"
        runs = wallet_gap_runs(merchant=merchant)
        return (
            "; ".join(f"{'/'.join(gap.currencies)}: {gap.run} of {gap.limit}" for gap in runs)
            or "no wallets"
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):  # type: ignore[no-untyped-def]
        merchant = self.get_object(request, object_id)
        if merchant is not None and request.method == "GET":
            for gap in wallet_gap_runs(merchant=merchant):
                if gap.over:
                    self.message_user(request, gap_warning(gap), messages.WARNING)
        return super().change_view(request, object_id, form_url, extra_context)


class ApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiKeyScope.PAYMENTS_READ, ApiKeyScope.PAYMENTS_WRITE],
    )

    class Meta:
        model = ApiKey
        fields = ["merchant", "name", "scopes"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "merchant",
        "scopes",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "merchant__name"]
    actions = ["revoke"]

    def get_form(self, request, obj=None, change=False, **kwargs):  # type: ignore[no-untyped-def]
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return ["merchant", "name", "scopes"]
        return ["merchant", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return []
        return ["merchant", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if change:
            obj.save(update_fields=["name"])
            return
        api_key, secret = services.api_key_create(
            merchant=form.cleaned_data["merchant"],
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
        )
        # The admin logs and redirects with ``obj``: make it the key the service created.
        obj.__dict__.update({f.attname: getattr(api_key, f.attname) for f in ApiKey._meta.fields})
        # Kept on the request only long enough to render the one page that shows it.
        request._created_api_key = (api_key, secret)

    def response_add(self, request: HttpRequest, obj, post_url_continue=None) -> HttpResponse:  # type: ignore[no-untyped-def]
        api_key, secret = request._created_api_key
        context = {**self.admin_site.each_context(request), "api_key": api_key, "secret": secret}
        response = TemplateResponse(request, "admin/payments/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        revoked = sum(services.api_key_revoke(api_key=api_key) for api_key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


class PaymentEventInline(admin.TabularInline):
    model = PaymentEvent
    fields = ["sequence", "type", "created_at", "data"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["sequence"]

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


class UnmatchedTransferInline(admin.TabularInline):
    model = UnmatchedTransfer
    fields = ["chain", "txid", "currency", "amount", "block_height", "seen_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "Unmatched transfers (another asset; not credited)"

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


class PaymentTransactionInline(admin.TabularInline):
    model = PaymentTransaction
    fields = ["chain", "txid", "output_index", "amount", "confirmations", "first_seen_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


class PaymentOptionInline(PaymentTransactionInline):
    """The coins the buyer could pick from, with the quote each was priced at (read-only)."""

    model = PaymentOption
    fields = ["crypto_currency", "crypto_amount", "rate", "rate_source", "rate_fetched_at",
              "deposit_address", "selected_at"]  # fmt: skip
    readonly_fields = fields


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = [
        "public_id", "merchant", "order_id", "fiat_amount", "fiat_currency", "crypto_currency",
        "status", "sub_status", "created_at",
    ]  # fmt: skip
    list_filter = ["status", "sub_status", "crypto_currency", "fiat_currency"]
    search_fields = ["public_id", "order_id", "deposit_address"]
    inlines = [
        PaymentOptionInline, PaymentTransactionInline, UnmatchedTransferInline, PaymentEventInline,
    ]  # fmt: skip
    actions = ["mark_settled", "mark_invalid"]
    list_select_related = ["merchant"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        # Payments change only through the state machine (the actions below), never by editing.
        # The checkout token stays out of the form; the link carries it for operators to pass on.
        fields = [f.name for f in Payment._meta.fields if f.name != "checkout_token"]
        return [*fields, "checkout_link"]

    def get_exclude(self, request, obj=None):  # type: ignore[no-untyped-def]
        return ["checkout_token"]

    @admin.display(description="Checkout page")
    def checkout_link(self, payment: Payment) -> str:
        url = checkout_url(payment)
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url)

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def _mark(self, request: HttpRequest, queryset, to_status: str) -> None:  # type: ignore[no-untyped-def]
        moved, refused = 0, []
        for payment in queryset:
            try:
                if services.payment_mark(payment=payment, to_status=to_status):
                    moved += 1
            except InvalidTransition as exc:
                refused.append(f"{payment.public_id}: {exc.message}")
        if moved:
            self.message_user(request, f"Marked {moved} payment(s) {to_status}.", messages.SUCCESS)
        for line in refused:
            self.message_user(request, line, messages.WARNING)

    @admin.action(description="Mark selected payments settled", permissions=["change"])
    def mark_settled(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        self._mark(request, queryset, PaymentStatus.SETTLED)

    @admin.action(description="Mark selected payments invalid", permissions=["change"])
    def mark_invalid(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        self._mark(request, queryset, PaymentStatus.INVALID)


@admin.register(PaymentEvent)
class PaymentEventAdmin(admin.ModelAdmin):
    list_display = ["payment", "sequence", "type", "created_at"]
    list_filter = ["type"]
    search_fields = ["payment__public_id"]
    list_select_related = ["payment"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [field.name for field in PaymentEvent._meta.fields]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(ExchangeRateEvent)
class ExchangeRateEventAdmin(admin.ModelAdmin):
    list_display = ["pair", "rate", "previous_rate", "fetched_at", "created_at"]
    list_filter = ["pair"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [field.name for field in ExchangeRateEvent._meta.fields]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False


class MerchantWalletForm(forms.ModelForm):
    class Meta:
        model = MerchantWallet
        fields = ["merchant", "crypto_currency", "extended_public_key"]

    def clean(self):  # type: ignore[no-untyped-def]
        cleaned = super().clean()
        currency, key = cleaned.get("crypto_currency"), cleaned.get("extended_public_key")
        if currency and key:
            try:
                cleaned["extended_public_key"] = wallet_validate(currency=currency, raw_key=key)
            except InvalidExtendedKey as exc:
                self.add_error("extended_public_key", str(exc))
        return cleaned


@admin.register(MerchantWallet)
class MerchantWalletAdmin(admin.ModelAdmin):
    form = MerchantWalletForm
    list_display = ["merchant", "crypto_currency", "key_prefix", "unpaid_in_a_row", "created_at"]
    list_filter = ["crypto_currency"]
    search_fields = ["merchant__name", "merchant__public_id"]

    @admin.display(description="Key")
    def key_prefix(self, wallet: MerchantWallet) -> str:
        return wallet.extended_public_key[:16] + "…"

    @admin.display(description=f"Unpaid addresses in a row (gap limit {GAP_LIMIT})")
    def unpaid_in_a_row(self, wallet: MerchantWallet) -> str:
        gap = unpaid_address_run(merchant=wallet.merchant, wallet=wallet)
        if gap.over:
            return f"{gap.run} of {gap.limit} ⚠ over the gap limit: raise the wallet's gap limit"
        return f"{gap.run} of {gap.limit}"


@admin.register(UnmatchedTransfer)
class UnmatchedTransferAdmin(admin.ModelAdmin):
    """Transfers of another asset to a deposit address: credited to nothing, here for the merchant
    to refund or to mark the payment by hand."""

    list_display = [
        "seen_at", "chain", "currency", "amount", "to_address", "payment", "txid", "block_height",
    ]  # fmt: skip
    list_filter = ["chain", "currency"]
    search_fields = ["txid", "to_address", "payment__public_id"]
    list_select_related = ["payment"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [field.name for field in UnmatchedTransfer._meta.fields]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(ChainCursor)
class ChainCursorAdmin(admin.ModelAdmin):
    list_display = ["chain", "height", "tip_height", "lag", "node", "polled_at"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [field.name for field in ChainCursor._meta.fields]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False
