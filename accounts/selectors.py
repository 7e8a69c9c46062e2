"""Reads of merchants and their keys."""

from __future__ import annotations

from django.db.models.functions import Length

from accounts.models import Merchant, MerchantLogo


def merchant_choices() -> list[tuple[str, str]]:
    """(public id, "name (public id)") of every merchant, by name: the webhook endpoint admin's
    owner select."""
    return [
        (public_id, f"{name} ({public_id})")
        for public_id, name in Merchant.objects.order_by("name", "pk").values_list(
            "public_id", "name"
        )
    ]


def merchant_logo(*, merchant_id: int) -> MerchantLogo | None:
    """The logo with its bytes: for the logo view only."""
    return MerchantLogo.objects.filter(merchant_id=merchant_id).first()


def merchant_has_logo(*, merchant_id: int) -> bool:
    return MerchantLogo.objects.filter(merchant_id=merchant_id).exists()


def merchant_logo_summary(*, merchant_id: int) -> tuple[str, int] | None:
    """(content type, size in bytes) of the logo, measured by the database without reading it."""
    return (
        MerchantLogo.objects.filter(merchant_id=merchant_id)
        .annotate(size=Length("image"))
        .values_list("content_type", "size")
        .first()
    )
