"""Symmetric encryption for values the gateway must read back but never keep in the clear
(webhook signing secrets, replayable answers that carry one): Fernet, AES-128-CBC + HMAC-SHA256,
under a key derived per purpose from a configured secret."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet


def fernet(*, purpose: bytes, material: str) -> Fernet:
    """A Fernet for ``purpose``: one purpose's tokens never decrypt as another's."""
    key = hashlib.sha256(purpose + b"\0" + material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))
