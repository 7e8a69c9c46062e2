"""The Django admin for notifications: operators create webhook endpoints (the signing secret is
shown once), rotate secrets, read events and deliveries with their attempt logs, and redeliver."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from notifications import secrets, services
from notifications.destinations import DestinationRefused
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


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=[(t, t) for t in services.EVENT_TYPES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every type of the owner's events (system-wide events such as "
        "exchange_rate.updated only when ticked).",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["owner", "url", "description", "event_types", "enabled"]
        help_texts = {"owner": "The merchant's public id (mch_…)."}

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            services.webhook_url_check(url)
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
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["public_id", "owner", "url", "enabled", "types", "signing_secret", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["public_id", "owner", "url"]
    actions = ["rotate_secret"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["owner", "url", "description", "event_types", "enabled"]
        return [
            "public_id", "owner", "url", "description", "event_types", "enabled", "created_at",
            "signing_secret", "previous_secret_expires_at",
        ]  # fmt: skip

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        # The owner never changes: the endpoint would start receiving another merchant's events.
        return [
            "public_id", "owner", "created_at", "signing_secret", "previous_secret_expires_at",
        ]  # fmt: skip

    @admin.display(description="Event types")
    def types(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.event_types) or "all"

    @admin.display(description="Signing secret")
    def signing_secret(self, endpoint: WebhookEndpoint) -> str:
        if secrets.readable(endpoint.secret_encrypted):
            return "ok"
        return UNREADABLE_WARNING

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["url", "description", "event_types", "enabled"])
            return
        data = form.cleaned_data
        endpoint, secret = services.webhook_endpoint_create(
            owner=data["owner"],
            url=data["url"],
            event_types=data["event_types"],
            description=data["description"],
        )
        if not data["enabled"]:
            endpoint.enabled = False
            endpoint.save(update_fields=["enabled"])
        # The admin logs and redirects with ``obj``: make it the endpoint the service created.
        obj.__dict__.update(
            {f.attname: getattr(endpoint, f.attname) for f in WebhookEndpoint._meta.fields}
        )
        obj._state.adding = False
        _created_secrets[request] = [(endpoint, secret)]

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
            (endpoint, services.webhook_endpoint_rotate_secret(endpoint=endpoint))
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
class EventAdmin(_ReadOnlyAdmin):
    list_display = [
        "public_id", "type", "priority", "owner", "subject", "sequence", "created_at",
        "dispatched_at",
    ]  # fmt: skip
    list_filter = ["type", "priority"]
    search_fields = ["public_id", "subject", "owner"]
    inlines = [WebhookDeliveryInline]
    date_hierarchy = "created_at"


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(_ReadOnlyAdmin):
    list_display = [
        "event_id_", "event_type", "endpoint_id_", "status", "attempts", "last_status_code",
        "next_attempt_at", "delivered_at",
    ]  # fmt: skip
    list_filter = ["status"]
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
            status = services.webhook_redeliver(delivery=delivery).status
            outcomes[status] = outcomes.get(status, 0) + 1
        summary = ", ".join(f"{count} {status}" for status, count in sorted(outcomes.items()))
        level = messages.SUCCESS if set(outcomes) == {"succeeded"} else messages.WARNING
        self.message_user(request, f"Redelivered {len(selected)}: {summary}.", level)
