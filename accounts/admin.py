"""Merchants and their API keys in the admin. A new key's secret is shown once, on the page
right after it is created. payments extends the merchant page (``payments.admin``)."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from accounts import selectors, services
from accounts.models import ApiKey, ApiKeyScope, Merchant
from cryptopay.admin_modes import ModeAdminMixin, form_livemode, mode_choice, mode_filter


class MerchantForm(forms.ModelForm):
    """The merchant with its checkout branding: the logo arrives as an upload, is checked
    (``services.merchant_logo_read``) and stored as bytes in its own table."""

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

    def clean_logo_upload(self):
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
    readonly_fields = ["public_id", "created_at", "logo_preview"]

    @admin.display(description="Current logo")
    def logo_preview(self, merchant: Merchant) -> str:
        summary = selectors.merchant_logo_summary(merchant_id=merchant.pk) if merchant.pk else None
        if summary is None:
            return "none"
        content_type, size = summary
        return f"{content_type}, {size} bytes"

    def save_model(self, request, obj, form, change):
        # The admin's change view is one transaction: the merchant and its logo change together.
        super().save_model(request, obj, form, change)
        logo = form.cleaned_data.get("logo_upload")
        if logo is not None:
            image, content_type = logo
            services.merchant_logo_set(merchant=obj, image=image, content_type=content_type)
        elif form.cleaned_data.get("logo_clear"):
            services.merchant_logo_remove(merchant=obj)


class ApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKeyScope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiKeyScope.PAYMENTS_READ, ApiKeyScope.PAYMENTS_WRITE],
    )
    mode = mode_choice(
        live="Live (cpk_…)",
        test="Test (cpk_test_…)",
        help_text="A test key's payments are test payments on the development chain, paid with "
        "POST /api/v1/payments/{id}/simulate; it sees test objects only.",
    )

    class Meta:
        model = ApiKey
        fields = ["merchant", "name", "scopes"]


# A new key's secret, between saving it and rendering the one page that shows it.
_created_keys: WeakKeyDictionary[HttpRequest, tuple[ApiKey, str]] = WeakKeyDictionary()


@admin.register(ApiKey)
class ApiKeyAdmin(ModeAdminMixin, admin.ModelAdmin):
    mode_things = "API keys"
    list_display = [
        "name",
        "prefix",
        "merchant",
        "mode",
        "scopes",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = [mode_filter(), "revoked_at"]
    search_fields = ["name", "prefix", "merchant__name"]
    actions = ["revoke"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["merchant", "name", "mode", "scopes"]
        return [
            "merchant", "name", "prefix", "mode", "scopes", "created_at", "last_used_at",
            "revoked_at",
        ]  # fmt: skip

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["merchant", "prefix", "mode", "scopes", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name"])
            return
        api_key, secret = services.api_key_create(
            merchant=form.cleaned_data["merchant"],
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            livemode=form_livemode(form.cleaned_data),
        )
        # The admin logs and redirects with ``obj``: make it the key the service created.
        obj.__dict__.update({f.attname: getattr(api_key, f.attname) for f in ApiKey._meta.fields})
        _created_keys[request] = (api_key, secret)

    def response_add(self, request: HttpRequest, obj, post_url_continue=None) -> HttpResponse:
        api_key, secret = _created_keys.pop(request)
        context = {**self.admin_site.each_context(request), "api_key": api_key, "secret": secret}
        response = TemplateResponse(request, "admin/accounts/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset) -> None:
        revoked = sum(services.api_key_revoke(api_key=api_key) for api_key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)
