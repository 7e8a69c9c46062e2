"""The Django admin for notifications: operators create webhook endpoints (the signing secret is
shown once), rotate secrets, read events and deliveries with their attempt logs, and redeliver."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from accounts.selectors import merchant_choices
from cryptopay.admin_modes import ModeAdminMixin, form_livemode, mode_choice, mode_filter
from notifications import endpoint_secrets, endpoints
from notifications.delivery import webhook_redeliver
from notifications.destinations import DestinationRefused
from notifications.event_types import event_type_choices
from notifications.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint

CREATED_TEMPLATE = "admin/notifications/webhookendpoint/created.html"
# Each redelivery is a synchronous HTTP attempt (up to WEBHOOK_TIMEOUT): keep the request short.
REDELIVER_MAX = 25
UNREADABLE_WARNING = (
    "⚠ unreadable: no configured key decrypts it; deliveries fail. Restore the old key "
    "(CRYPTOPAY_ENCRYPTION_KEYS / SECRET_KEY_FALLBACKS) or rotate the secret."
)


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _owners() -> list[tuple[str, str]]:
    # Endpoints belong to merchants: a select of the existing ones, not a free-text id.
    return [("", "---------"), *merchant_choices()]


class WebhookEndpointForm(forms.ModelForm):
    # A select of the existing owners, not a free-text id that could name nobody.
    owner = forms.TypedChoiceField(choices=_owners, label="Merchant")
    url = forms.URLField(max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=event_type_choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every type of the owner's events (system-wide events such as "
        "exchange_rate.updated only when ticked).",
    )

    mode = mode_choice(
        live="Live",
        test="Test",
        help_text="A test endpoint gets the merchant's test-mode events (test keys' payments) "
        "and no live ones; a live endpoint never gets test events.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["owner", "url", "description", "event_types", "enabled"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            endpoints.webhook_url_check(url)
        except (DestinationRefused, ValueError) as exc:
            # ValueError: urlsplit refuses the port (e.g. 99999).
            raise forms.ValidationError(str(exc), code="url_not_allowed")
        return url

    def clean_event_types(self) -> list[str]:
        return sorted(set(self.cleaned_data.get("event_types") or []))


# A new endpoint's signing secret, between saving it and rendering the one page that shows it.
_created_secrets: WeakKeyDictionary[HttpRequest, list[tuple[WebhookEndpoint, str]]] = (
    WeakKeyDictionary()
)


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ModeAdminMixin, admin.ModelAdmin):
    mode_things = "webhook endpoints"
    form = WebhookEndpointForm
    list_display = [
        "public_id", "owner", "mode", "url", "enabled", "types", "signing_secret", "created_at",
    ]  # fmt: skip
    list_filter = [mode_filter(), "enabled"]
    search_fields = ["public_id", "owner", "url"]
    actions = ["rotate_secret"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["owner", "mode", "url", "description", "event_types", "enabled"]
        return [
            "public_id",
            "owner",
            "mode",
            "url",
            "description",
            "event_types",
            "enabled",
            "created_at",
            "signing_secret",
            "previous_secret_expires_at",
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        # The owner and mode never change: the endpoint would start receiving events that were
        # never meant for it (another merchant's, or live ones at a test receiver).
        return [
            "public_id",
            "owner",
            "mode",
            "created_at",
            "signing_secret",
            "previous_secret_expires_at",
        ]

    @admin.display(description="Event types")
    def types(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.event_types) or "all"

    @admin.display(description="Signing secret")
    def signing_secret(self, endpoint: WebhookEndpoint) -> str:
        if endpoint_secrets.readable(endpoint.secret_encrypted):
            return "ok"
        return UNREADABLE_WARNING

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            endpoints.webhook_endpoint_update(
                endpoint=obj,
                url=data["url"],
                description=data["description"],
                event_types=data["event_types"],
                enabled=data["enabled"],
            )
            return
        endpoint, secret = endpoints.webhook_endpoint_create(
            owner=data["owner"],
            url=data["url"],
            event_types=data["event_types"],
            description=data["description"],
            enabled=data["enabled"],
            livemode=form_livemode(data),
        )
        # The admin logs and redirects with ``obj``: make it the endpoint the service created.
        obj.__dict__.update(
            {f.attname: getattr(endpoint, f.attname) for f in WebhookEndpoint._meta.fields}
        )
        obj._state.adding = False
        _created_secrets[request] = [(endpoint, secret)]

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        endpoints.webhook_endpoint_delete(endpoint=obj)

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        for endpoint in queryset:
            endpoints.webhook_endpoint_delete(endpoint=endpoint)

    def response_add(self, request: HttpRequest, obj, post_url_continue=None) -> HttpResponse:
        return self._secrets_page(request, _created_secrets.pop(request), rotated=False)

    def _secrets_page(
        self, request: HttpRequest, created: list[tuple[WebhookEndpoint, str]], *, rotated: bool
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Signing secret rotated" if rotated else "Webhook endpoint created",
            "rotated": rotated,
            "endpoints": created,
            "opts": self.model._meta,
        }
        return _no_store(TemplateResponse(request, CREATED_TEMPLATE, context))

    @admin.action(
        description="Rotate the signing secret (the old one stays valid 24 h)",
        permissions=["change"],
    )
    def rotate_secret(self, request: HttpRequest, queryset) -> HttpResponse:
        rotated = [
            (endpoint, endpoints.webhook_endpoint_rotate_secret(endpoint=endpoint))
            for endpoint in queryset.order_by("pk")
        ]
        return self._secrets_page(request, rotated, rotated=True)


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class WebhookDeliveryInline(_ReadOnlyInline):
    model = WebhookDelivery
    fields = readonly_fields = (
        "endpoint", "status", "attempts", "last_status_code", "last_error", "next_attempt_at",
        "delivered_at",
    )  # fmt: skip
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("endpoint")


class WebhookAttemptInline(_ReadOnlyInline):
    model = WebhookAttempt
    fields = readonly_fields = ("attempted_at", "status_code", "latency_ms", "error")
    ordering = ["attempted_at", "pk"]


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ModeAdminMixin, _ReadOnlyAdmin):
    mode_things = "events"
    list_display = [
        "public_id",
        "type",
        "mode",
        "priority",
        "owner",
        "subject",
        "sequence",
        "created_at",
        "dispatched_at",
    ]
    list_filter = [mode_filter(), "type", "priority"]
    search_fields = ["public_id", "subject", "owner"]
    inlines = [WebhookDeliveryInline]
    date_hierarchy = "created_at"


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ModeAdminMixin, _ReadOnlyAdmin):
    mode_field = "endpoint__livemode"
    mode_things = "webhook deliveries"
    list_display = [
        "event_id_",
        "event_type",
        "endpoint_id_",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = [mode_filter("endpoint__livemode"), "status"]
    search_fields = ["event__public_id", "endpoint__public_id"]
    list_select_related = ["event", "endpoint"]
    inlines = [WebhookAttemptInline]
    actions = ["redeliver"]

    @admin.display(description="Event", ordering="event__public_id")
    def event_id_(self, delivery: WebhookDelivery) -> str:
        return delivery.event.public_id

    @admin.display(description="Type", ordering="event__type")
    def event_type(self, delivery: WebhookDelivery) -> str:
        return delivery.event.type

    @admin.display(description="Endpoint", ordering="endpoint__public_id")
    def endpoint_id_(self, delivery: WebhookDelivery) -> str:
        return delivery.endpoint.public_id

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        # Deliveries are read-only rows (has_change_permission is False for everyone), so the
        # action checks the model permission itself rather than the admin's change flag.
        return request.user.has_perm("notifications.change_webhookdelivery")

    @admin.action(description="Redeliver selected", permissions=["redeliver"])
    def redeliver(self, request: HttpRequest, queryset) -> None:
        selected = list(queryset.order_by("pk")[: REDELIVER_MAX + 1])
        if len(selected) > REDELIVER_MAX:
            self.message_user(
                request,
                f"Select at most {REDELIVER_MAX} deliveries: each is attempted now, in this "
                "request. Nothing was redelivered.",
                messages.WARNING,
            )
            return
        outcomes: dict[str, int] = {}
        for delivery in selected:
            status = webhook_redeliver(delivery=delivery).status
            outcomes[status] = outcomes.get(status, 0) + 1
        summary = ", ".join(f"{count} {status}" for status, count in sorted(outcomes.items()))
        level = messages.SUCCESS if set(outcomes) == {"succeeded"} else messages.WARNING
        self.message_user(request, f"Redelivered {len(selected)}: {summary}.", level)
