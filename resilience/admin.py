from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, Sum

from resilience.models import IdempotencyKey


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):
    list_display = [
        "owner",
        "key",
        "method",
        "path",
        "status",
        "response_status",
        "replays",
        "conflicts",
        "mismatches",
        "created_at",
        "expires_at",
    ]
    list_filter = ["status", "automatic", "method"]
    search_fields = ["owner", "key", "path"]
    exclude = ["response_body"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in IdempotencyKey._meta.fields if f.name != "response_body"] + [
            "response_text"
        ]

    @admin.display(description="Response body")
    def response_text(self, obj: IdempotencyKey) -> str:
        if obj.response_sealed:
            return "(sealed: the answer carries a secret and is never shown)"
        return bytes(obj.response_body or b"").decode("utf-8", errors="replace")

    def has_add_permission(self, request) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        totals = IdempotencyKey.objects.aggregate(
            executions=Count("id", filter=None),
            replays=Sum("replays"),
            conflicts=Sum("conflicts"),
            mismatches=Sum("mismatches"),
        )
        executions = totals["executions"] or 0
        replays = totals["replays"] or 0
        hits = f"{replays / (replays + executions):.1%}" if replays + executions else "—"
        summary = (
            f"Stored keys {executions} · replays {replays} · conflicts (409) "
            f"{totals['conflicts'] or 0} · mismatches (422) {totals['mismatches'] or 0} · "
            f"hit ratio {hits}"
        )
        return super().changelist_view(request, {**(extra_context or {}), "title": summary})
