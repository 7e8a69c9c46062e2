"""Webhook signing secrets: generated here, shown once, stored encrypted (Fernet, AES-128-CBC +
HMAC-SHA256). They must stay recoverable to sign deliveries, so they are encrypted rather than
hashed.

Keys (``MultiFernet``: the first encrypts, every one decrypts):

1. ``CRYPTOPAY_ENCRYPTION_KEYS``, newest first: a dedicated key, so rotating SECRET_KEY (sessions,
   CSRF, demo credentials) leaves webhook signing alone;
2. without it, the legacy ``CRYPTOPAY_WEBHOOK_SECRETS_KEY``, then ``SECRET_KEY``;
3. always able to decrypt as well: the legacy key, ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``, so
   secrets written before a key change stay readable until ``manage.py rotate_encryption_key``
   has re-encrypted them under the first key.

Each configured value is key material, not a Fernet key: it is hashed with a label into one, so a
passphrase, a ``Fernet.generate_key()`` output and SECRET_KEY all work the same way.
"""

from __future__ import annotations

import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from resilience.sealing import fernet

PREFIX = "whsec_"


class SecretUndecryptable(Exception):
    """No configured key decrypts this stored secret: an operator must restore the key it was
    encrypted under (CRYPTOPAY_ENCRYPTION_KEYS or SECRET_KEY_FALLBACKS) or rotate the secret."""


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def _key(material: str) -> Fernet:
    return fernet(purpose=b"cryptopay webhook secrets", material=material)


def key_materials() -> list[str]:
    """Every configured key, the encrypting one first, without repeats."""
    dedicated = list(settings.ENCRYPTION_KEYS)
    legacy = [settings.WEBHOOK_SECRETS_KEY] if settings.WEBHOOK_SECRETS_KEY else []
    django_keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    return list(dict.fromkeys(m for m in [*dedicated, *legacy, *django_keys] if m))


def _fernet() -> MultiFernet:
    return MultiFernet([_key(material) for material in key_materials()])


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUndecryptable(
            "webhook secret cannot be decrypted with any configured key (CRYPTOPAY_ENCRYPTION_KEYS, "
            "SECRET_KEY, SECRET_KEY_FALLBACKS): restore the old key or rotate the secret"
        ) from exc


def readable(token: str) -> bool:
    try:
        decrypt(token)
    except SecretUndecryptable:
        return False
    return True


def reencrypt(token: str) -> str:
    """The same secret under the first key (``MultiFernet.rotate``); raises SecretUndecryptable."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUndecryptable("webhook secret cannot be decrypted") from exc
