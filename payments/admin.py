from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from import_export.admin import ExportMixin
from import_export.formats.base_formats import CSV

from accounts import admin as accounts_admin
from accounts.models import Merchant
from cryptopay.admin_modes import (
    ModeAdminMixin,
    mode_badge,
    mode_filter,
)
from payments import services
from payments.addresses import GapRun, unpaid_address_run, wallet_gap_runs
from payments.admin_money import crypto_html, fiat_text, rate_text
from payments.chains.derivation import GAP_LIMIT, InvalidExtendedKey, wallet_validate
from payments.checkout import checkout_url
from payments.errors import InvalidTransition
from payments.exports import PaymentResource, PaymentTransactionResource
from payments.models import (
    ChainCursor,
    ExchangeRateEvent,
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


# The merchant page is the accounts app's; payments adds what its wallets need watched: how many
# unpaid addresses in a row each has issued, against the wallets' gap limit.
admin.site.unregister(Merchant)


@admin.register(Merchant)
class MerchantAdmin(accounts_admin.MerchantAdmin):
    readonly_fields = ["public_id", "created_at", "address_gap", "logo_preview"]

    @admin.display(description=f"Unpaid addresses in a row (gap limit {GAP_LIMIT})")
    def address_gap(self, merchant: Merchant) -> str:
        if merchant.pk is None:
            return "-"
        runs = wallet_gap_runs(merchant=merchant)
        return (
            "; ".join(f"{'/'.join(gap.currencies)}: {gap.run} of {gap.limit}" for gap in runs)
            or "no wallets"
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        merchant = self.get_object(request, object_id)
        if merchant is not None and request.method == "GET":
            for gap in wallet_gap_runs(merchant=merchant):
                if gap.over:
                    self.message_user(request, gap_warning(gap), messages.WARNING)
        return super().change_view(request, object_id, form_url, extra_context)


class PaymentEventInline(admin.TabularInline):
    model = PaymentEvent
    fields = readonly_fields = ("sequence", "type", "created_at", "data")
    extra = 0
    can_delete = False
    ordering = ["sequence"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class UnmatchedTransferInline(admin.TabularInline):
    model = UnmatchedTransfer
    fields = readonly_fields = ("chain", "txid", "currency", "amount", "block_height", "seen_at")
    extra = 0
    can_delete = False
    verbose_name_plural = "Unmatched transfers (another asset; not credited)"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class _ReadOnlyInline(admin.TabularInline):
    """Rows shown as they are: none added, changed or deleted from the payment's page."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class PaymentTransactionInline(_ReadOnlyInline):
    model = PaymentTransaction
    fields = readonly_fields = (
        "chain", "txid", "output_index", "coin_amount", "confirmations", "first_seen_at"
    )  # fmt: skip

    @admin.display(description="Amount")
    def coin_amount(self, row: PaymentTransaction) -> str:
        return crypto_html(row.amount, row.payment.crypto_currency)


# Money fields of a payment as the detail page shows them (PaymentAdmin's display methods).
PAYMENT_MONEY_FIELDS = {
    "fiat_amount": "amount",
    "crypto_amount": "crypto_due",
    "amount_received": "received",
    "amount_confirmed": "confirmed",
    "rate": "rate_shown",
    "rate_bid": "rate_bid_shown",
    "rate_ask": "rate_ask_shown",
}


class PaymentOptionInline(_ReadOnlyInline):
    """The coins the buyer could pick from, with the quote each was priced at (read-only)."""

    model = PaymentOption
    fields = readonly_fields = (
        "crypto_currency", "crypto_amount", "rate", "rate_source", "rate_fetched_at",
        "deposit_address", "selected_at",
    )  # fmt: skip


@admin.register(Payment)
class PaymentAdmin(ModeAdminMixin, ExportMixin, admin.ModelAdmin):
    mode_things = "payments"
    # Seven narrow columns: the list fits a 1280 px screen (amounts carry their currency). The
    # mode is the list's filter (live by default) and a banner on test lists, not a column.
    list_display = [
        "public_id", "merchant_shown", "order_shown", "amount", "crypto_due", "status_shown",
        "created",
    ]  # fmt: skip
    list_filter = [
        mode_filter(), "status", "sub_status", "crypto_currency", "fiat_currency", "created_at"
    ]  # fmt: skip
    search_fields = ["public_id", "order_id", "deposit_address"]
    inlines = [
        PaymentOptionInline, PaymentTransactionInline, UnmatchedTransferInline, PaymentEventInline,
    ]  # fmt: skip
    actions = ["mark_settled", "mark_invalid"]
    list_select_related = ["merchant"]
    resource_classes = [PaymentResource]
    formats = [CSV]

    def get_readonly_fields(self, request, obj=None):
        # Payments change only through the state machine (the actions below), never by editing.
        # The checkout token stays out of the form; the link carries it for operators to pass on.
        fields = [
            PAYMENT_MONEY_FIELDS.get(f.name, f.name)
            for f in Payment._meta.fields
            if f.name != "checkout_token"
        ]
        return [*fields, "checkout_link"]

    class Media:
        css = {"all": ["payments/admin.css"]}

    @admin.display(description="Merchant", ordering="merchant__name")
    def merchant_shown(self, payment: Payment) -> str:
        return format_html('<span class="clip" title="{0}">{0}</span>', payment.merchant.name)

    @admin.display(description="Order id", ordering="order_id")
    def order_shown(self, payment: Payment) -> str:
        order_id = payment.order_id or "-"
        return format_html('<span class="clip" title="{0}">{0}</span>', order_id)

    @admin.display(description="Amount", ordering="fiat_amount")
    def amount(self, payment: Payment) -> str:
        return fiat_text(payment.fiat_amount, payment.fiat_currency)

    @admin.display(description="Crypto due", ordering="crypto_amount")
    def crypto_due(self, payment: Payment) -> str:
        return crypto_html(payment.crypto_amount, payment.crypto_currency)

    @admin.display(description="Received")
    def received(self, payment: Payment) -> str:
        return crypto_html(payment.amount_received, payment.crypto_currency)

    @admin.display(description="Confirmed")
    def confirmed(self, payment: Payment) -> str:
        return crypto_html(payment.amount_confirmed, payment.crypto_currency)

    @admin.display(description="Rate")
    def rate_shown(self, payment: Payment) -> str:
        if not payment.crypto_currency:
            return "-"
        return f"{rate_text(payment.rate)} {payment.fiat_currency}/{payment.crypto_currency}"

    @admin.display(description="Rate bid")
    def rate_bid_shown(self, payment: Payment) -> str:
        return rate_text(payment.rate_bid)

    @admin.display(description="Rate ask")
    def rate_ask_shown(self, payment: Payment) -> str:
        return rate_text(payment.rate_ask)

    @admin.display(description="Created (UTC)", ordering="created_at")
    def created(self, payment: Payment) -> str:
        return f"{payment.created_at:%Y-%m-%d %H:%M}"

    @admin.display(description="Status", ordering="status")
    def status_shown(self, payment: Payment) -> SafeString | str:
        status = (
            f"{payment.status} ({payment.sub_status})" if payment.sub_status else payment.status
        )
        # A test payment (shown when the Mode filter asks for them) carries the TEST badge here:
        # a Mode column of its own would not fit the list in 1280 px.
        return status if payment.livemode else format_html("{} {}", mode_badge(False), status)

    def get_exclude(self, request, obj=None):
        # The money fields show through their display methods (read-only), not as inputs.
        return ["checkout_token", *PAYMENT_MONEY_FIELDS]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        payment = self.get_object(request, object_id)
        if payment is not None and not payment.livemode and request.method == "GET":
            self.message_user(
                request,
                "Test mode: this payment was made with a test key and is paid on the development "
                "chain only (simulate); no real coins moved.",
                messages.WARNING,
            )
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="Checkout page")
    def checkout_link(self, payment: Payment) -> str:
        url = checkout_url(payment)
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, url)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def _mark(self, request: HttpRequest, queryset, to_status: str) -> None:
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
    def mark_settled(self, request: HttpRequest, queryset) -> None:
        self._mark(request, queryset, PaymentStatus.SETTLED)

    @admin.action(description="Mark selected payments invalid", permissions=["change"])
    def mark_invalid(self, request: HttpRequest, queryset) -> None:
        self._mark(request, queryset, PaymentStatus.INVALID)


@admin.register(PaymentTransaction)
class PaymentTransactionAdmin(ExportMixin, admin.ModelAdmin):
    """Every output and transfer credited to a payment, for accounting (CSV export); read-only."""

    list_display = [
        "payment", "chain", "txid", "output_index", "amount_shown", "confirmations", "state",
        "first_seen_at",
    ]  # fmt: skip
    list_filter = ["chain", "state", "payment__crypto_currency", "first_seen_at"]
    search_fields = ["txid", "payment__public_id", "payment__order_id"]
    list_select_related = ["payment"]
    resource_classes = [PaymentTransactionResource]
    formats = [CSV]
    exclude = ["amount"]  # shown read-only in coin units

    def get_readonly_fields(self, request, obj=None):
        return [
            "amount_shown" if f.name == "amount" else f.name
            for f in PaymentTransaction._meta.fields
        ]

    @admin.display(description="Amount", ordering="amount")
    def amount_shown(self, row: PaymentTransaction) -> str:
        return crypto_html(row.amount, row.payment.crypto_currency)

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(PaymentEvent)
class PaymentEventAdmin(admin.ModelAdmin):
    list_display = ["payment", "sequence", "type", "created_at"]
    list_filter = [mode_filter("payment__livemode"), "type"]
    search_fields = ["payment__public_id"]
    list_select_related = ["payment"]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in PaymentEvent._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ExchangeRateEvent)
class ExchangeRateEventAdmin(admin.ModelAdmin):
    list_display = ["pair", "rate_shown", "previous_rate_shown", "fetched_at", "created_at"]
    list_filter = ["pair"]

    exclude = ["rate", "previous_rate"]  # shown read-only, without trailing zeros

    def get_readonly_fields(self, request, obj=None):
        shown = {"rate": "rate_shown", "previous_rate": "previous_rate_shown"}
        return [shown.get(f.name, f.name) for f in ExchangeRateEvent._meta.fields]

    @admin.display(description="Rate", ordering="rate")
    def rate_shown(self, event: ExchangeRateEvent) -> str:
        return rate_text(event.rate)

    @admin.display(description="Previous rate")
    def previous_rate_shown(self, event: ExchangeRateEvent) -> str:
        return rate_text(event.previous_rate)

    def has_add_permission(self, request) -> bool:
        return False


class MerchantWalletForm(forms.ModelForm):
    class Meta:
        model = MerchantWallet
        fields = ["merchant", "crypto_currency", "extended_public_key"]

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data
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

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in UnmatchedTransfer._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ChainCursor)
class ChainCursorAdmin(admin.ModelAdmin):
    list_display = ["chain", "height", "tip_height", "lag", "node", "polled_at"]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in ChainCursor._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
