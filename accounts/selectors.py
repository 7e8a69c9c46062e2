"""Reads of merchants and their keys."""

from __future__ import annotations

from accounts.models import Merchant


def merchant_choices() -> list[tuple[str, str]]:
    """(public id, "name (public id)") of every merchant, by name: the webhook endpoint admin's
    owner select."""
    return [
        (public_id, f"{name} ({public_id})")
        for public_id, name in Merchant.objects.order_by("name", "pk").values_list(
            "public_id", "name"
        )
    ]
