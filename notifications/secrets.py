"""Webhook signing secrets: generated here, shown once, stored encrypted (Fernet, AES-128-CBC +
HMAC-SHA256) under a key derived from WEBHOOK_SECRETS_KEY (default: SECRET_KEY). They must stay
recoverable to sign deliveries, so they are encrypted rather than hashed."""

from __future__ import annotations

import secrets

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from cryptopay.sealing import fernet

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def _fernet() -> Fernet:
    material = settings.WEBHOOK_SECRETS_KEY or settings.SECRET_KEY
    return fernet(purpose=b"cryptopay webhook secrets", material=material)


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError(
            "webhook secret cannot be decrypted (was the secrets key changed?)"
        ) from exc
