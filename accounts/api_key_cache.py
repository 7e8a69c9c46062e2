"""This process's memory of the API keys it authenticated: the key's row and its merchant's, so a
request is not a database round trip before it is anything else (a cached idempotent replay is
then answered from Redis alone), without letting a revoked key through.

A remembered row stands in for the database only while the **epoch** token in Redis, read in the
request's one Redis round trip (the auth throttle's MGET, which every request makes anyway), is
the token that was read before the row was fetched. Every change to an API key or a merchant
(a revocation, new scopes, a merchant's settings) sets a new token, once at once and once after
its commit, so every process asks the database again on the next request: a revoked key is
refused on its next request, as when every request asked.

Where that cannot hold:
* Redis unreachable, or its token lost (a restart that kept nothing): no token read, so the
  database answers.
* The process that changed a key could not reach Redis while the others can: they would trust
  what they remember, so a row is never trusted longer than ``CRYPTOPAY_API_KEY_CACHE_SECONDS``
  after it was read, whatever the token. That bounds a revocation's delay in this double fault
  only. ``CRYPTOPAY_API_KEY_CACHE_SECONDS=0`` turns the memory off.

Written here rather than with Django's cache framework: the check has to ride in the throttle's
MGET (a cache lookup would be the round trip saved), and rows must become new model instances per
request (a shared instance could be changed by one request under another).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

import redis
from django.conf import settings
from django.db import transaction

from accounts import auth_throttle
from cryptopay.compiled_query import Row
from resilience import clock
from resilience.redis_client import reply_text

logger = logging.getLogger(__name__)

# Enough for every key a deployment has; past it the memory starts over (it only saves reads).
MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class Remembered:
    row: Row
    epoch: str  # the token read before the row was
    read_at: datetime
    idempotency_scope: str  # the owner's, for the replay read made before authentication


_remembered: dict[str, Remembered] = {}


def epoch_key() -> str:
    return f"{settings.API_KEY_CACHE_REDIS_PREFIX}:epoch"


def remembered(prefix: str) -> Remembered | None:
    """What this process remembers of the key with this prefix, trusted or not."""
    return _remembered.get(prefix) if prefix else None


def trusted(entry: Remembered | None, *, epoch: bytes | str | None) -> Row | None:
    """The remembered row, if it may stand in for the database: ``epoch`` is the token this
    request read from Redis (None when it could not be read or was missing)."""
    if entry is None or epoch is None or not settings.API_KEY_CACHE_TTL:
        return None
    if reply_text(epoch) != entry.epoch:
        return None
    if clock.now() - entry.read_at >= settings.API_KEY_CACHE_TTL:
        return None
    return entry.row


def remember(prefix: str, *, row: Row, epoch: bytes | str | None, idempotency_scope: str) -> None:
    """Keep ``row``, read after this request read ``epoch`` from Redis. Redis had no token (a
    restart lost it): one is set for the next requests to read before they ask the database, and
    this row is not kept (a change renewing the token after this row was read and before it was
    kept would go unseen)."""
    if epoch is None:
        _epoch_set(only_if_missing=True)  # NX: a token another process set meanwhile stands
        return
    if len(_remembered) >= MAX_REMEMBERED:
        _remembered.clear()
    _remembered[prefix] = Remembered(
        row=row, epoch=reply_text(epoch), read_at=clock.now(), idempotency_scope=idempotency_scope
    )


def api_keys_changed() -> None:
    """An API key or a merchant changed: no process may trust what it remembers of any key.
    A new token now (a request reading the database before the commit keeps the row under it)
    and again after the commit (that row is then distrusted too)."""
    _remembered.clear()
    _epoch_renew()
    transaction.on_commit(_epoch_renew)


def _epoch_renew() -> None:
    if not _epoch_set(only_if_missing=False):
        logger.warning(
            "API keys changed while Redis was unreachable: other processes may trust the "
            "keys they remember for up to %s s",
            settings.API_KEY_CACHE_TTL.total_seconds(),
        )


def _epoch_set(*, only_if_missing: bool) -> bool:
    """A new token in Redis; False when Redis could not be written. Without Redis there is
    nothing to tell: no process remembers a key without a token to trust it by."""
    client = auth_throttle.redis_client()
    if client is None:
        return True
    try:
        client.set(epoch_key(), secrets.token_hex(8), nx=only_if_missing)
    except redis.RedisError:
        return False
    return True
