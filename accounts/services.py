"""Writes on merchants and their API keys (``<entity>_<action>``, keyword-only).

An API key is ``cpk_`` (live) or ``cpk_test_`` (test), then a prefix that is stored and shown,
then a secret only the merchant ever sees: the database keeps the SHA-256 of the whole key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from accounts import api_key_cache
from accounts.models import ApiKey, ApiKeyScope, Merchant, MerchantLogo, random_token
from resilience import clock

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "cpk_"
# Test keys (Stripe's sk_test_): their payments are test payments (``Payment.livemode`` False).
TEST_API_KEY_PREFIX = "cpk_test_"
API_KEY_PREFIX_LENGTH = 12  # random characters after "cpk_" that are stored and shown
API_KEY_SECRET_LENGTH = 32  # random characters only the merchant ever sees


# --- Merchants and API keys ---------------------------------------------------------------------


def merchant_create(*, name: str, **fields: Any) -> Merchant:
    return Merchant.objects.create(name=name, **fields)


class LogoRefused(ValueError):
    pass


# What a logo may be, by its first bytes: raster formats a browser shows and never runs. SVG is
# refused (it can carry script); the stored type is the sniffed one, never the uploader's claim.
_LOGO_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def merchant_logo_read(upload: Any) -> tuple[bytes, str]:
    """(bytes, content type) of an uploaded logo, or LogoRefused saying why not."""
    limit = settings.MERCHANT_LOGO_MAX_BYTES
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise LogoRefused(f"The logo is larger than {limit} bytes.")
    for signature, content_type in _LOGO_SIGNATURES:
        if data.startswith(signature):
            return data, content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    raise LogoRefused("The logo must be a PNG, JPEG or WebP image.")


def merchant_logo_set(*, merchant: Merchant, image: bytes, content_type: str) -> MerchantLogo:
    """Store (or replace) the checkout logo; ``image``/``content_type`` as ``merchant_logo_read``
    returned them."""
    logo, _ = MerchantLogo.objects.update_or_create(
        merchant=merchant, defaults={"image": image, "content_type": content_type}
    )
    return logo


def merchant_logo_remove(*, merchant: Merchant) -> None:
    MerchantLogo.objects.filter(merchant=merchant).delete()


def api_key_hash(raw_key: str) -> str:
    """SHA-256 of the whole key. Keys carry ~190 random bits, so a fast hash is enough (as GitHub
    and Stripe do); a slow password hash would only add latency to every request."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_head(*, livemode: bool) -> str:
    """What a key of that mode starts with: ``cpk_`` (live) or ``cpk_test_``."""
    return API_KEY_PREFIX if livemode else TEST_API_KEY_PREFIX


def api_key_split(raw_key: str) -> str | None:
    """The stored prefix of a presented key, or None when it cannot be one of ours.

    Unambiguous: what follows a live key's ``cpk_`` is alphanumeric, so never ``test_``."""
    head = api_key_head(livemode=not raw_key.startswith(TEST_API_KEY_PREFIX))
    if not raw_key.startswith(head):
        return None
    if len(raw_key) != len(head) + API_KEY_PREFIX_LENGTH + API_KEY_SECRET_LENGTH:
        return None
    if not raw_key[len(head) :].isalnum() or not raw_key.isascii():
        return None
    return raw_key[: len(head) + API_KEY_PREFIX_LENGTH]


def api_key_create(
    *,
    merchant: Merchant,
    name: str,
    scopes: list[str],
    livemode: bool = True,
    raw_key: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored and never shown again.

    ``livemode`` False makes a test key (``cpk_test_…``). ``raw_key`` lets the demo bootstrap
    install a key derived from SECRET_KEY (stable across reruns); its mode must be ``livemode``.
    """
    if raw_key is None:
        raw_key = api_key_head(livemode=livemode) + random_token(
            API_KEY_PREFIX_LENGTH + API_KEY_SECRET_LENGTH
        )
    prefix = api_key_split(raw_key)
    if prefix is None or prefix.startswith(TEST_API_KEY_PREFIX) == livemode:
        raise ValueError("malformed API key")
    unknown = set(scopes) - set(ApiKeyScope.values)
    if unknown:
        raise ValueError(f"unknown scopes: {sorted(unknown)}")
    api_key = ApiKey.objects.create(
        merchant=merchant,
        name=name,
        prefix=prefix,
        key_hash=api_key_hash(raw_key),
        scopes=sorted(set(scopes)),
        livemode=livemode,
    )
    logger.info("API key %s created for merchant %s", prefix, merchant.public_id)
    return api_key, raw_key


def api_key_revoke(*, api_key: ApiKey) -> bool:
    """Revoke the key; returns False when it already was. Every process refuses it from its next
    request on (the update bypasses the save signal that tells them, so it tells them here)."""
    with transaction.atomic():
        revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=clock.now()
        )
        if revoked:
            api_key_cache.api_keys_changed()
    api_key.refresh_from_db(fields=["revoked_at"])
    if revoked:
        logger.info("API key %s revoked", api_key.prefix)
    return bool(revoked)


def api_key_matches(*, api_key: ApiKey, raw_key: str) -> bool:
    return hmac.compare_digest(api_key.key_hash, api_key_hash(raw_key))
