"""Idempotent writes: a retried request never executes twice and always gets the first answer.

Semantics follow the IETF draft (draft-ietf-httpapi-idempotency-key-header) and Stripe:

* ``Idempotency-Key`` (a structured-field string ``"..."`` or bare, at most 255 printable ASCII
  characters) scoped by owner (the merchant). Without it, a key is derived from SHA-256 over
  owner, method, path and the canonical body ONLY when the body names its business object
  (IDEMPOTENCY_AUTOMATIC_KEY_FIELD, ``order_id``): two customers ordering the same thing send
  identical bodies, and merging them would hand the second the first's payment. Without a key
  and without that field, every request executes.
* The first execution's status, body and selected headers are stored and replayed with
  ``Idempotent-Replayed: true``. Same key, different payload (method, path, body) -> 422
  ``idempotency_key_reused``. Same key while the first is still running -> wait the conflict
  retry delay once, then 409 ``idempotency_key_in_use`` with ``Retry-After``.
* Requests rejected before execution (400 validation, 404) are not stored; a 5xx rolls its
  transaction back and releases the key so a retry can execute.
* An answer that carries a secret (``@idempotent(response_has_secret=True)``: a webhook signing
  secret) is stored sealed (Fernet under IDEMPOTENCY_SEALING_KEY, default SECRET_KEY) in
  PostgreSQL and Redis alike, and opened only to replay it; the admin shows that it is sealed.

Where correctness lives: PostgreSQL. The ``IdempotencyKey`` row is unique on (owner, key) and is
inserted (in the same statement that takes a transaction-scoped advisory lock on the key), the
request executed and the row completed in ONE transaction with the request's own writes (the
payment), while that lock is held. A duplicate
waits the conflict retry delay once for that lock, then replays the committed answer or gets a
409. A crash rolls the payment and the key back together, so a retry simply executes. ``version``
is a fencing token for taking a row over (an expired key, or an in-progress row whose ``locked_at``
lease ran out, which only a crash between statements of a future multi-step endpoint could leave):
the take-over is a compare-and-set on it, and completing bumps it.

Redis is a fast path only: a stored response is cached there by its first replay (from the
row), so later replays skip the database; an execution costs it one read, which the caller may
make together with its own reads (``request_cache_read``: authentication does, with its throttle
check). The middleware answers a cached replay of a request with an ``Idempotency-Key`` before the
rest of the stack and the view run (``IdempotencyMiddleware``); a view may answer one before any
work of its own (``cached_replay``: an automatic key, a key this process had not authenticated
yet). A Redis error skips the fast path; it is never taken as permission to execute.

Why our own: django-idempotency-key locks only the lookup (concurrent duplicates both execute) and
djangorestframework-idempotency-key runs before authentication, so keys are not scoped per client.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Field
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from prometheus_client import Counter

from resilience import clock
from resilience.errors import error_response
from resilience.models import IdempotencyKey
from resilience.redis_client import fast_fail_client
from resilience.sealing import fernet

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Response headers worth replaying; others (Date, Vary...) are the server's to set again.
REPLAYED_HEADERS = ("Content-Type", "Location", "Retry-After")

OUTCOMES = Counter(
    "cryptopay_idempotency_requests",
    "Idempotent requests by outcome: executed, replayed, conflict, mismatch, released.",
    ["outcome"],
)


class InvalidKey(ValueError):
    pass


def parse_key(raw: str) -> str:
    """The key of an ``Idempotency-Key`` header: an sf-string ``"..."`` or the bare value."""
    value = raw.strip(" \t")
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise InvalidKey("an Idempotency-Key that starts with a quote must end with one")
        chars, i, inner = [], 0, value[1:-1]
        while i < len(inner):
            char = inner[i]
            if char == "\\":
                if i + 1 >= len(inner) or inner[i + 1] not in '"\\':
                    raise InvalidKey('only \\" and \\\\ may be escaped in an Idempotency-Key')
                chars.append(inner[i + 1])
                i += 2
                continue
            if char == '"':
                raise InvalidKey("an unescaped quote inside an Idempotency-Key")
            chars.append(char)
            i += 1
        value = "".join(chars)
    if not value:
        raise InvalidKey("the Idempotency-Key is empty")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidKey(f"the Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
    if not (value.isascii() and value.isprintable()):  # printable ASCII: 0x20 to 0x7E
        raise InvalidKey("the Idempotency-Key must be printable ASCII")
    return value


def json_body(raw: bytes) -> Any:
    """A JSON body as the API's parser reads it (numbers with a fraction as ``Decimal``), so its
    canonical form is the one the view fingerprinted."""
    return json.loads(raw, parse_float=Decimal)


def canonical_body(data: Any) -> bytes:
    """One byte string per meaning: sorted keys, no whitespace, decimals as their text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def fingerprint(*, method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def automatic_key(*, owner: str, method: str, path: str, body: bytes) -> str:
    return "auto-" + fingerprint(method=method, path=f"{owner} {path}", body=body)


def _sealer() -> Fernet:
    material = settings.IDEMPOTENCY_SEALING_KEY or settings.SECRET_KEY
    return fernet(purpose=b"cryptopay idempotent responses", material=material)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    sealed: bool = False  # body is a Fernet token: the answer carries a secret

    def seal(self) -> StoredResponse:
        return StoredResponse(self.status, self.headers, _sealer().encrypt(self.body), True)

    def opened(self) -> StoredResponse:
        """The answer to replay; raises ``InvalidToken`` when the sealing key has changed."""
        if not self.sealed:
            return self
        return StoredResponse(self.status, self.headers, _sealer().decrypt(self.body))

    def to_http(self) -> HttpResponse:
        response = HttpResponse(self.body, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        response[REPLAYED_HEADER] = "true"
        return response

    @classmethod
    def of(cls, response: HttpResponse) -> StoredResponse:
        headers = {name: response[name] for name in REPLAYED_HEADERS if response.has_header(name)}
        return cls(status=response.status_code, headers=headers, body=bytes(response.content))


def _is_lock_timeout(exc: OperationalError) -> bool:
    """PostgreSQL's lock_timeout (SQLSTATE 55P03), or SQLite's busy timeout."""
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) == "55P03" or "database is locked" in str(exc)


def default_should_store(status: int) -> bool:
    """Store what execution produced; not what was refused before it (400, 404) nor 5xx."""
    return status < 500 and status not in (400, 404)


@dataclass
class CacheRead:
    """One request's read of its key's cached answer, made ahead of the gate: by authentication
    together with its own Redis read (one round trip for both), or by ``cached_replay``. The
    gate uses the value (``done``) instead of reading again; a read that failed (not ``done``)
    skips the fast path, as a failed read of the gate's own would."""

    owner: str
    key: str
    prefix: str
    redis_key: str
    done: bool = False
    value: bytes | str | None = None

    def deliver(self, value: bytes | str | None) -> None:
        self.value, self.done = value, True

    def matches(self, *, owner: str, key: str, prefix: str) -> bool:
        return (self.owner, self.key, self.prefix) == (owner, key, prefix)


# Where a request carries its CacheRead (on Django's request, under DRF's wrapper).
_CACHE_READ = "_idempotency_cache_read"


@dataclass(frozen=True)
class _Claimed:
    pk: int
    version: int


@dataclass(frozen=True)
class _Replay:
    stored: StoredResponse


class _Mismatch:
    pass


class _InProgress:
    pass


@functools.cache
def _complete_statement(vendor: str, names: tuple[str, ...]) -> tuple[str, tuple[Field, ...]]:
    """``UPDATE ... SET <names> WHERE id = %s AND version = %s`` with the fields it sets, in the
    order of its placeholders. Built once per process, database vendor and set of fields: its
    text holds nothing but the model's table and column names, and every value is a parameter.
    Django's update compiler, run on every request, cost more than the statement did."""
    quote = connection.ops.quote_name
    meta = IdempotencyKey._meta
    fields = tuple(_concrete(meta.get_field(name)) for name in names)
    # "%s" for every value: also the binary body's placeholder on PostgreSQL and SQLite.
    assignments = ", ".join(f"{quote(_column_of(f))} = %s" for f in fields)
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {assignments} "  # noqa: S608 (names are the model's)
        f"WHERE {quote(_column_of(meta.pk))} = %s "
        f"AND {quote(_column_of(meta.get_field('version')))} = %s"
    )
    return sql, fields


def _concrete(field: Any) -> Field:
    assert isinstance(field, Field) and field.column is not None, f"{field} has no column"
    return field


_ANSWER_FIELDS = (
    "fingerprint", "response_status", "response_headers", "response_body", "response_sealed",
    "expires_at",
)  # fmt: skip


def _completed_answer(
    *, owner: str, key: str, now: datetime
) -> tuple[str, StoredResponse, datetime] | None:
    """The fingerprint, answer and expiry of the key's completed, unexpired row, or None. Every
    create with a key asks (its cache read missed: most are new), so on PostgreSQL it is one
    plain statement: the ORM's queryset took three times the database's time."""
    if connection.vendor == "postgresql":
        meta = IdempotencyKey._meta
        columns = ", ".join(
            connection.ops.quote_name(_column_of(meta.get_field(name))) for name in _ANSWER_FIELDS
        )
        # Names come from the model's metadata; values are parameters.
        sql = (
            f"SELECT {columns} FROM {connection.ops.quote_name(meta.db_table)} "  # noqa: S608
            "WHERE owner = %s AND key = %s AND status = %s AND expires_at > %s"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [owner, key, IdempotencyKey.Status.COMPLETED, now])
            row = cursor.fetchone()
        if row is None:
            return None
        fp, status, headers, body, sealed, expires_at = row
        if isinstance(headers, str):  # Django reads jsonb as text and decodes it in the field
            headers = json.loads(headers)
    else:
        rows = list(
            IdempotencyKey.objects.filter(
                owner=owner, key=key, status=IdempotencyKey.Status.COMPLETED, expires_at__gt=now
            ).values_list(*_ANSWER_FIELDS)[:1]
        )
        if not rows:
            return None
        fp, status, headers, body, sealed, expires_at = rows[0]
    return fp, _stored_response(status, headers, body, sealed), expires_at


def _stored_response(status: int | None, headers: Any, body: Any, sealed: Any) -> StoredResponse:
    """An answer as a key's row holds it (columns that are empty while it runs)."""
    return StoredResponse(
        status=status or 500, headers=headers, body=bytes(body or b""), sealed=bool(sealed)
    )


def _column_of(field: Any) -> str:
    column = _concrete(field).column
    assert column is not None
    return column


def _complete(claimed: _Claimed, *, committing: bool = False, **values: Any) -> None:
    """``IdempotencyKey.objects.filter(pk=..., version=...).update(**values)`` on the claimed
    row (fenced on its version), each value prepared by its field as Django's update does.
    ``committing``: the gate's transaction ends with it, and on PostgreSQL its COMMIT is sent in
    the same query (``resilience.postgresql``'s ``execute_committing``)."""
    db = transaction.get_connection()
    sql, fields = _complete_statement(db.vendor, tuple(values))
    params = [
        *(f.get_db_prep_save(values[f.name], db) for f in fields),
        claimed.pk,
        claimed.version,
    ]
    if committing and hasattr(db, "execute_committing"):
        db.execute_committing(sql, params)
        return
    with db.cursor() as cursor:
        cursor.execute(sql, params)


class IdempotencyGate:
    def __init__(
        self,
        *,
        expiry: timedelta,
        conflict_retry_delay: timedelta,
        lease: timedelta,
        redis_client: redis.Redis | None,
        redis_prefix: str = "cryptopay:idempotency",
    ) -> None:
        self.expiry = expiry
        self.conflict_retry_delay = conflict_retry_delay
        self.lease = lease
        self._redis = redis_client
        self._prefix = redis_prefix
        self._next_redis_warning = 0.0

    # --- entry point ----------------------------------------------------------------------------

    def run(
        self,
        *,
        owner: str,
        key: str,
        automatic: bool,
        method: str,
        path: str,
        request_fingerprint: str,
        execute: Callable[[], HttpResponse],
        should_store: Callable[[int], bool] = default_should_store,
        response_has_secret: bool = False,
        cache_read: CacheRead | None = None,
    ) -> HttpResponse:
        """``cache_read``: this request's Redis read of the key, already made (``CacheRead``):
        the gate does not read it again."""
        cached = self._replay_from_cache(owner, key, request_fingerprint, cache_read)
        if cached is not None:
            return cached
        # No Redis lock around the execution: the database claim below decides on its own, and
        # a lock would cost two more round trips on every request for the rare duplicate.
        return self._run_in_transaction(
            owner=owner,
            key=key,
            automatic=automatic,
            method=method,
            path=path,
            request_fingerprint=request_fingerprint,
            execute=execute,
            should_store=should_store,
            response_has_secret=response_has_secret,
        )

    def owns(self, read: CacheRead, *, owner: str, key: str) -> bool:
        """Is ``read`` the read of this owner's key in this gate's cache?"""
        return read.matches(owner=owner, key=key, prefix=self._prefix)

    def replay_cached(
        self, *, owner: str, key: str, request_fingerprint: str, read: CacheRead | None = None
    ) -> HttpResponse | None:
        """The answer the cache holds for the key (a 422 for another request's), or None: the
        database decides. ``read``: made already (reused when it is this key's)."""
        return self._replay_from_cache(owner, key, request_fingerprint, read)

    def replay_stored(
        self, *, owner: str, key: str, request_fingerprint: str
    ) -> HttpResponse | None:
        """The answer the database holds for a completed key, read without claiming it (a 422
        for another request's), or None: the gate decides as usual (no row, still running,
        expired, or sealed under a lost key). For a caller whose cache read missed and that
        would otherwise do costly work before the gate (pricing, an address reservation it must
        give back): the first replay of a key (answers are cached on their first replay) or
        any replay after Redis lost its copy. A completed row never changes until it expires,
        so reading it outside the gate's lock is safe."""
        completed = _completed_answer(owner=owner, key=key, now=clock.now())
        if completed is None:
            return None
        stored_fingerprint, stored, expires_at = completed
        if stored_fingerprint != request_fingerprint:
            return self._mismatch(owner, key)
        try:
            opened = stored.opened()
        except InvalidToken:
            return None  # the gate answers that it cannot be replayed
        self._count(owner, key, "replays")
        self._cache_put(owner, key, stored_fingerprint, stored, expires_at)
        OUTCOMES.labels("replayed").inc()
        return opened.to_http()

    def answer_for(
        self, *, owner: str, key: str, request_fingerprint: str, read: CacheRead
    ) -> StoredResponse | None:
        """The answer ``read`` found for exactly this request (same fingerprint), or None: never
        a refusal, for a caller that leaves those to the gate. ``replay`` it."""
        cached = self._cache_decode(read.value) if self.owns(read, owner=owner, key=key) else None
        if cached is None or cached[0] != request_fingerprint:
            return None
        return cached[1]

    def replay(self, stored: StoredResponse) -> HttpResponse | None:
        """The replayed answer, or None when it is sealed under a lost key."""
        try:
            opened = stored.opened()
        except InvalidToken:
            return None  # sealed under another key: the database answers
        # The fast path stays free of database writes: counted in Prometheus only.
        OUTCOMES.labels("replayed").inc()
        return opened.to_http()

    def _replay_from_cache(
        self, owner: str, key: str, fp: str, read: CacheRead | None = None
    ) -> HttpResponse | None:
        if read is not None and self.owns(read, owner=owner, key=key):
            cached = self._cache_decode(read.value) if read.done else None
        else:
            cached = self._cache_get(owner, key)
        if cached is None:
            return None
        cached_fingerprint, stored = cached
        if cached_fingerprint != fp:
            return self._mismatch(owner, key)
        return self.replay(stored)

    # --- database: the arbiter ------------------------------------------------------------------

    def _run_in_transaction(
        self,
        *,
        owner: str,
        key: str,
        automatic: bool,
        method: str,
        path: str,
        request_fingerprint: str,
        execute: Callable[[], HttpResponse],
        should_store: Callable[[int], bool],
        response_has_secret: bool,
    ) -> HttpResponse:
        """Claim the key, run the request and complete the key in ONE transaction.

        On PostgreSQL the key is held by a transaction-scoped advisory lock: a concurrent duplicate
        waits the conflict retry delay once; if we have committed by then it replays our answer,
        otherwise it answers 409. (On SQLite the unique index does the same job.) A crash rolls
        back the payment and the key together, so a retry simply executes. One commit per
        request, not two.
        """
        stored: StoredResponse | None = None
        with transaction.atomic():
            outcome = self._claim(
                owner=owner,
                key=key,
                automatic=automatic,
                method=method,
                path=path,
                request_fingerprint=request_fingerprint,
            )
            if isinstance(outcome, _Replay):
                try:
                    opened = outcome.stored.opened()
                except InvalidToken:
                    return self._unreadable()
                OUTCOMES.labels("replayed").inc()
                return opened.to_http()
            if isinstance(outcome, _Mismatch):
                return self._mismatch(owner, key)
            if isinstance(outcome, _InProgress):
                self._count(owner, key, "conflicts")
                OUTCOMES.labels("conflict").inc()
                return self._in_use()
            response = execute()
            if response.status_code >= 500:
                transaction.set_rollback(True)  # the request's writes and the key, together
                OUTCOMES.labels("released").inc()
                return response
            if not should_store(response.status_code):
                IdempotencyKey.objects.filter(pk=outcome.pk, version=outcome.version).delete()
                OUTCOMES.labels("released").inc()
                return response
            stored = StoredResponse.of(response)
            if response_has_secret:
                stored = stored.seal()
            # Both stores count the window from this one moment, so Redis can neither replay an
            # answer the database has expired nor forget one it still holds.
            completed_at = clock.now()
            expires_at = completed_at + self.expiry
            # The transaction's last statement: the block must do no more database work.
            _complete(
                outcome,
                committing=True,
                status=IdempotencyKey.Status.COMPLETED,
                response_status=stored.status,
                response_headers=stored.headers,
                response_body=stored.body,
                response_sealed=stored.sealed,
                completed_at=completed_at,
                expires_at=expires_at,
                locked_at=None,
                # Completing bumps the fencing token: a take-over that read the row before can
                # no longer match it.
                version=outcome.version + 1,
            )
            OUTCOMES.labels("executed").inc()
            # Not copied to Redis here: most answers are never asked for again, and the copy
            # would cost every request a round trip. The first replay (from this row) caches it.
        return response

    @contextmanager
    def _bounded_wait(self) -> Iterator[None]:
        """Row and index waits inside the block give up after the conflict retry delay."""
        if connection.vendor != "postgresql":
            yield  # SQLite serialises writers itself (embedded mode: one process)
            return
        milliseconds = max(1, int(self.conflict_retry_delay.total_seconds() * 1000))
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = {milliseconds}")
        try:
            yield
        finally:
            if not connection.needs_rollback:
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = DEFAULT")

    def _claim_new(
        self,
        *,
        owner: str,
        key: str,
        automatic: bool,
        method: str,
        path: str,
        request_fingerprint: str,
    ) -> _Claimed | _InProgress | None:
        """Hold the key for this transaction and insert its row if it has none, in ONE statement
        (PostgreSQL). ``_Claimed``: the row is ours; ``_InProgress``: another transaction holds
        the key (its request still runs) after waiting the conflict retry delay once; None: we
        hold the key and a row already exists (the caller judges it).

        The hold is a transaction-scoped advisory lock tried without waiting (released at commit
        or rollback, or when a crashed process's connection drops), taken in the same statement
        as ``INSERT ... ON CONFLICT DO NOTHING``: a duplicate never waits on the unique index for
        an unbounded time, and a claim costs one round trip, not a lock, a read and an insert.
        """
        digest = hashlib.sha256(f"{owner}\0{key}".encode()).digest()
        lock_id = int.from_bytes(digest[:8], "big", signed=True)
        now = clock.now()
        table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
        sql = f"""
            WITH held AS (SELECT pg_try_advisory_xact_lock(%s) AS ok),
            inserted AS (
                INSERT INTO {table} (owner, key, automatic, method, path, fingerprint, status,
                    version, locked_at, response_headers, response_sealed, replays, conflicts,
                    mismatches, created_at, expires_at)
                SELECT %s, %s, %s, %s, %s, %s, %s, 1, %s, '{{}}'::jsonb, false, 0, 0, 0, %s, %s
                FROM held WHERE held.ok
                ON CONFLICT (owner, key) DO NOTHING
                RETURNING id
            )
            SELECT held.ok, (SELECT id FROM inserted) FROM held
        """  # noqa: S608 (the table name is ours; every value is a parameter)
        params = (
            lock_id, owner, key, automatic, method, path, request_fingerprint,
            IdempotencyKey.Status.IN_PROGRESS, now, now, now + self.expiry,
        )  # fmt: skip
        for attempt in range(2):
            if hasattr(connection, "execute_beginning"):
                # The gate's first statement: the transaction's BEGIN goes with it.
                ((held, pk),) = connection.execute_beginning(sql, params)
            else:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    held, pk = cursor.fetchone()
            if held:
                return None if pk is None else _Claimed(pk=pk, version=1)
            if attempt == 0:
                time.sleep(self.conflict_retry_delay.total_seconds())
        return _InProgress()

    def _claim(
        self,
        *,
        owner: str,
        key: str,
        automatic: bool,
        method: str,
        path: str,
        request_fingerprint: str,
    ) -> _Claimed | _Replay | _Mismatch | _InProgress:
        postgres = connection.vendor == "postgresql"
        if postgres:
            first = self._claim_new(
                owner=owner, key=key, automatic=automatic, method=method, path=path,
                request_fingerprint=request_fingerprint,
            )  # fmt: skip
            if first is not None:
                return first  # claimed, or its first request is still running
            # We hold the key and a row exists: judged below.
        for _ in range(3):  # a row may vanish or be taken over between our statements
            now = clock.now()
            fresh = {
                "automatic": automatic,
                "method": method,
                "path": path,
                "fingerprint": request_fingerprint,
                "status": IdempotencyKey.Status.IN_PROGRESS,
                "locked_at": now,
                "response_status": None,
                "response_headers": {},
                "response_body": None,
                "response_sealed": False,
                "created_at": now,
                "completed_at": None,
                "expires_at": now + self.expiry,
            }
            row = IdempotencyKey.objects.filter(owner=owner, key=key).first() if postgres else None
            if row is None:
                try:
                    if postgres:  # we hold the key: no concurrent insert can conflict
                        row = IdempotencyKey.objects.create(owner=owner, key=key, **fresh)
                    else:
                        with transaction.atomic(), self._bounded_wait():
                            row = IdempotencyKey.objects.create(owner=owner, key=key, **fresh)
                    return _Claimed(pk=row.pk, version=row.version)
                except IntegrityError:
                    row = IdempotencyKey.objects.filter(owner=owner, key=key).first()
                except OperationalError as exc:
                    if _is_lock_timeout(exc):
                        return _InProgress()
                    raise
            if row is None:
                continue
            if row.expires_at <= now or (
                row.status == IdempotencyKey.Status.IN_PROGRESS
                and (row.locked_at is None or row.locked_at + self.lease <= now)
            ):
                try:
                    claimed = self._take_over(row, fresh)
                except OperationalError as exc:
                    if _is_lock_timeout(exc):
                        return _InProgress()  # someone else is taking it over right now
                    raise
                if claimed:
                    return claimed
                continue
            if row.fingerprint != request_fingerprint:
                return _Mismatch()
            if row.status == IdempotencyKey.Status.COMPLETED:
                self._count(owner, key, "replays")
                stored = _stored_response(
                    row.response_status, row.response_headers, row.response_body,
                    row.response_sealed,
                )  # fmt: skip
                self._cache_put(owner, key, row.fingerprint, stored, row.expires_at)
                return _Replay(stored)
            return _InProgress()
        return _InProgress()

    def _take_over(self, row: IdempotencyKey, fresh: dict[str, Any]) -> _Claimed | None:
        # Compare-and-set on everything we judged by: a row completed (or re-leased) since we
        # read it no longer matches, and the caller re-reads it.
        version = row.version + 1
        with transaction.atomic(), self._bounded_wait():
            updated = IdempotencyKey.objects.filter(
                pk=row.pk, version=row.version, status=row.status, locked_at=row.locked_at
            ).update(version=version, **fresh)
        return _Claimed(pk=row.pk, version=version) if updated else None

    def _count(self, owner: str, key: str, field: str) -> None:
        """Best-effort per-key counter for the admin. Never waits: while the first request still
        holds the row (exactly when conflicts happen) the count is skipped; Prometheus counts all.
        One statement on PostgreSQL (a replay answered from the database pays for it)."""
        if connection.vendor == "postgresql":
            table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
            column = connection.ops.quote_name(_column_of(IdempotencyKey._meta.get_field(field)))
            # Names come from the model's metadata; values are parameters.
            sql = (
                f"UPDATE {table} SET {column} = {column} + 1 WHERE id = ("  # noqa: S608
                f"SELECT id FROM {table} WHERE owner = %s AND key = %s FOR UPDATE SKIP LOCKED)"
            )
            with connection.cursor() as cursor:
                cursor.execute(sql, [owner, key])
            return
        with transaction.atomic():
            locked = list(
                IdempotencyKey.objects.select_for_update(skip_locked=True)
                .filter(owner=owner, key=key)
                .values_list("pk", flat=True)
            )
            if locked:
                IdempotencyKey.objects.filter(pk__in=locked).update(**{field: F(field) + 1})

    def _mismatch(self, owner: str, key: str) -> HttpResponse:
        self._count(owner, key, "mismatches")
        OUTCOMES.labels("mismatch").inc()
        return error_response(
            status_code=422,
            code="idempotency_key_reused",
            message=(
                "This Idempotency-Key was already used with a different request "
                "(method, path or body). Use a new key for a new request."
            ),
            param=HEADER,
        )

    def _unreadable(self) -> HttpResponse:
        response = error_response(
            status_code=409,
            code="idempotency_response_unavailable",
            message=(
                "This request was executed, but its answer carried a secret that can no longer "
                "be decrypted (the sealing key changed). Fetch the object instead."
            ),
            param=HEADER,
        )
        return response

    def _in_use(self) -> HttpResponse:
        response = error_response(
            status_code=409,
            code="idempotency_key_in_use",
            message="A request with this Idempotency-Key is still being processed; retry shortly.",
            param=HEADER,
        )
        response["Retry-After"] = "1"
        return response

    # --- Redis: the fast path -------------------------------------------------------------------

    def _redis_key(self, kind: str, owner: str, key: str) -> str:
        return f"{self._prefix}:{kind}:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    def cache_read(self, *, owner: str, key: str) -> CacheRead | None:
        """The read of the key's cached answer, for a caller to make with its own Redis reads
        (one round trip for both) and hand back through ``CacheRead.deliver``; None without
        Redis."""
        if self._redis is None:
            return None
        return CacheRead(
            owner=owner,
            key=key,
            prefix=self._prefix,
            redis_key=self._redis_key("response", owner, key),
        )

    def cache_fetch(self, read: CacheRead) -> None:
        """Make ``read`` now, on its own (left not ``done`` when Redis fails)."""
        if self._redis is None:
            return
        try:
            read.deliver(self._redis.get(read.redis_key))
        except redis.RedisError as exc:
            self._cache_unavailable(exc)

    def _cache_get(self, owner: str, key: str) -> tuple[str, StoredResponse] | None:
        if self._redis is None:
            return None
        try:
            raw = self._redis.get(self._redis_key("response", owner, key))
        except redis.RedisError as exc:
            self._cache_unavailable(exc)
            return None
        return self._cache_decode(raw)

    def _cache_unavailable(self, exc: Exception) -> None:
        now = time.monotonic()
        if now >= self._next_redis_warning:  # one line per 10 s, not one per request
            self._next_redis_warning = now + 10
            logger.warning("idempotency cache unavailable (%s); the database decides", exc)

    def _cache_decode(self, raw: bytes | str | None) -> tuple[str, StoredResponse] | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return data["fingerprint"], StoredResponse(
                status=int(data["status"]),
                headers=dict(data["headers"]),
                body=base64.b64decode(data["body"]),
                sealed=bool(data.get("sealed", False)),
            )
        except (ValueError, KeyError, TypeError):
            return None  # undecodable: the database has the truth

    def _cache_put(
        self, owner: str, key: str, fp: str, stored: StoredResponse, expires_at: datetime
    ) -> None:
        if self._redis is None:
            return
        ttl_ms = (expires_at - clock.now()) // timedelta(milliseconds=1)
        if ttl_ms <= 0:
            return
        payload = json.dumps(
            {
                "fingerprint": fp,
                "status": stored.status,
                "headers": stored.headers,
                "body": base64.b64encode(stored.body).decode(),
                "sealed": stored.sealed,
            }
        )
        try:
            self._redis.set(self._redis_key("response", owner, key), payload, px=ttl_ms)
        except redis.RedisError:
            pass

    def forget(self, owner: str, key: str) -> None:
        """Drop the cached response (cleanup of expired keys)."""
        if self._redis is None:
            return
        try:
            self._redis.delete(self._redis_key("response", owner, key))
        except redis.RedisError:
            pass


@functools.cache
def default_gate() -> IdempotencyGate:
    return IdempotencyGate(
        expiry=settings.IDEMPOTENCY_EXPIRY,
        conflict_retry_delay=settings.IDEMPOTENCY_CONFLICT_RETRY_DELAY,
        lease=settings.IDEMPOTENCY_LEASE,
        redis_client=fast_fail_client(settings.REDIS_URL) if settings.REDIS_URL else None,
        redis_prefix=settings.IDEMPOTENCY_REDIS_PREFIX,
    )


def _bad_key(message: str, code: str = "invalid_idempotency_key") -> HttpResponse:
    return error_response(status_code=400, code=code, message=message, param=HEADER)


def names_its_object(data: Any) -> bool:
    """Does the body carry the field that identifies the business object (``order_id``)?"""
    field = settings.IDEMPOTENCY_AUTOMATIC_KEY_FIELD
    return bool(field) and isinstance(data, dict) and data.get(field) not in (None, "")


def _key_for(
    request: HttpRequest, *, owner: str, data: Any, body: bytes, required: bool
) -> tuple[str, bool] | HttpResponse | None:
    """(key, automatic), an error answer, or None: no key, so the request simply executes."""
    raw = request.headers.get(HEADER)
    if raw is None:
        if required:
            return _bad_key(
                f"This endpoint requires an {HEADER} header.", "idempotency_key_required"
            )
        if not names_its_object(data):
            return None
        return automatic_key(
            owner=owner, method=request.method or "", path=request.path, body=body
        ), True
    try:
        return parse_key(raw), False
    except InvalidKey as exc:
        return _bad_key(f"Invalid {HEADER}: {exc}.")


def request_cache_read(request: HttpRequest, *, owner: str) -> CacheRead | None:
    """The cache read of the answer stored for this request's ``Idempotency-Key`` header (unsafe
    methods only), attached to the request for the gate; the caller makes it together with its
    own Redis reads and ``deliver``s the value. ``owner``: the authenticated caller's scope, so a
    read can only ever find that owner's answer. None: nothing to read."""
    raw = request.headers.get(HEADER)
    if raw is None or request.method not in IdempotencyMiddleware.UNSAFE:
        return None
    try:
        key = parse_key(raw)
    except InvalidKey:
        return None  # the gate answers 400
    read = default_gate().cache_read(owner=owner, key=key)
    setattr(request, _CACHE_READ, read)
    return read


def _attached_read(request: Any) -> CacheRead | None:
    django_request = getattr(request, "_request", request)  # DRF wraps Django's request
    read = getattr(django_request, _CACHE_READ, None)
    return read if isinstance(read, CacheRead) else None


@dataclass(frozen=True)
class StoredReplay:
    """A request's key whose answer Redis did not hold: the database may still hold one (the
    key's first replay: answers are cached on it; or Redis lost its copy). Left to the view to
    ask in its own first statement (``answered_sql``) rather than in a read of its own: nearly
    every such request is a new create, and that read was a tenth of a create's CPU."""

    owner: str
    key: str
    fingerprint: str

    def answered_sql(self) -> tuple[str, list[Any]]:
        """A PostgreSQL condition, and its parameters, true while the key has a completed and
        unexpired answer: a statement that takes something for a new request (an address) runs
        its write under ``NOT`` this, so a replay takes nothing it must give back."""
        table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
        sql = (
            f"EXISTS (SELECT 1 FROM {table} WHERE owner = %s AND key = %s "  # noqa: S608
            "AND status = %s AND expires_at > %s)"
        )
        return sql, [self.owner, self.key, IdempotencyKey.Status.COMPLETED, clock.now()]

    def replay(self) -> HttpResponse | None:
        """The database's answer (a 422 for another request's), or None: the gate decides."""
        return default_gate().replay_stored(
            owner=self.owner, key=self.key, request_fingerprint=self.fingerprint
        )


_STORED_REPLAY = "_idempotency_stored_replay"
_REQUEST_BODY = "_idempotency_request_body"


def _request_body(request: Any) -> tuple[Any, bytes, str]:
    """A DRF request's data, its canonical body and the request's fingerprint, computed once per
    request: the view's early replay check and its gate both need them."""
    data = request.data
    django_request = getattr(request, "_request", request)  # DRF wraps Django's request
    kept = getattr(django_request, _REQUEST_BODY, None)
    if kept is not None and kept[0] is data:
        return kept
    body = canonical_body(data)
    kept = (data, body, fingerprint(method=request.method or "", path=request.path, body=body))
    setattr(django_request, _REQUEST_BODY, kept)
    return kept


def stored_replay(request: Any) -> StoredReplay | None:
    """The key ``cached_replay(request, ask_database=False)`` left for the view to ask about."""
    django_request = getattr(request, "_request", request)  # DRF wraps Django's request
    pending = getattr(django_request, _STORED_REPLAY, None)
    return pending if isinstance(pending, StoredReplay) else None


def cached_replay(request: Any, *, ask_database: bool = True) -> HttpResponse | None:
    """The stored answer to this DRF request, before the view validates, prices or reads
    anything: all of that is wasted on a replay. From Redis if it holds it, else from the key's
    completed row in the database (one read: a first replay cost more than an execution when it
    went through the gate after pricing and reserving an address). Authentication has run, and
    the answer is looked up under the caller's own scope. None: the gate decides as usual (the
    Redis read made here is kept for it, so it costs no second round trip).

    ``ask_database`` False (PostgreSQL only): the database is not read here; ``stored_replay``
    gives the view the key to ask about in its own first statement, and to replay from."""
    owner = getattr(request.user, "idempotency_scope", None)
    if owner is None:
        return None
    data, body, request_fingerprint = _request_body(request)  # a parse error: DRF's 400
    key = _key_for(request, owner=owner, data=data, body=body, required=False)
    if key is None or isinstance(key, HttpResponse):
        return None
    key_value, _ = key
    gate = default_gate()
    read = _attached_read(request)
    if read is None or not gate.owns(read, owner=owner, key=key_value):
        read = gate.cache_read(owner=owner, key=key_value)
        if read is not None:
            gate.cache_fetch(read)
            setattr(getattr(request, "_request", request), _CACHE_READ, read)
    if read is not None:
        replay = gate.replay_cached(
            owner=owner, key=key_value, request_fingerprint=request_fingerprint, read=read
        )
        if replay is not None:
            return replay
    pending = StoredReplay(owner=owner, key=key_value, fingerprint=request_fingerprint)
    if not ask_database and connection.vendor == "postgresql":
        setattr(getattr(request, "_request", request), _STORED_REPLAY, pending)
        return None
    return pending.replay()


def _gate_request(
    request: Any,
    *,
    owner: str,
    data: Any,
    body: bytes,
    required: bool,
    execute: Callable[[], HttpResponse],
    should_store: Callable[[int], bool],
    response_has_secret: bool = False,
    request_fingerprint: str | None = None,
) -> HttpResponse:
    """Key the request (header or automatic), mark it handled, and run it through the gate.
    ``request_fingerprint``: computed already from ``body``."""
    key = _key_for(request, owner=owner, data=data, body=body, required=required)
    if isinstance(key, HttpResponse):
        return key
    django_request = getattr(request, "_request", request)  # DRF wraps Django's request
    django_request._idempotency_applied = True
    if key is None:
        return execute()
    key_value, automatic = key
    method = request.method or ""
    return default_gate().run(
        owner=owner,
        key=key_value,
        automatic=automatic,
        method=method,
        path=request.path,
        execute=execute,
        should_store=should_store,
        response_has_secret=response_has_secret,
        request_fingerprint=request_fingerprint
        or fingerprint(method=method, path=request.path, body=body),
        cache_read=_attached_read(request),
    )


def idempotent(
    *,
    required: bool = False,
    should_store: Callable[[int], bool] = default_should_store,
    response_has_secret: bool = False,
) -> Callable:
    """Make a DRF view method idempotent. The caller's ``request.user.idempotency_scope`` is the
    owner that keys are scoped by; authentication has run before the method is called.
    ``response_has_secret``: the answer carries a secret, so it is stored sealed."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            owner = getattr(request.user, "idempotency_scope", None)
            if owner is None or getattr(request._request, "_idempotency_applied", False):
                return handler(view, request, *args, **kwargs)
            data, body, request_fingerprint = _request_body(request)  # a parse error: DRF's 400

            def execute() -> HttpResponse:
                try:
                    response = handler(view, request, *args, **kwargs)
                except Exception as exc:
                    response = view.handle_exception(exc)
                response = view.finalize_response(request, response, *args, **kwargs)
                response.render()
                return response

            return _gate_request(
                request,
                owner=owner,
                data=data,
                body=body,
                required=required,
                execute=execute,
                should_store=should_store,
                response_has_secret=response_has_secret,
                request_fingerprint=request_fingerprint,
            )

        return wrapper

    return decorate


class IdempotencyMiddleware:
    """Answers replays early, and gates unsafe requests on IDEMPOTENCY_MIDDLEWARE_PATHS (regexes).

    The owner comes from IDEMPOTENCY_OWNER_RESOLVER (a dotted path to ``f(request) -> str | None``);
    a request without an owner passes through (the view will refuse it). Views that carry the
    decorator are not wrapped twice.

    Early replay: an unsafe request with an ``Idempotency-Key`` whose answer the cache holds, for
    exactly this method, path and body, is answered here, before the session, CSRF, auth and
    message middleware, the URL resolver and the view: a retry storm costs the server as little
    as it can. The cache read is the one the owner resolver made with its own (authentication's)
    round trip, so a new request pays no extra read for it. It is answered only where
    IDEMPOTENCY_REPLAY_AUTHORIZER (``f(request) -> bool``) says the view would have let the
    caller in; anything else (no cached answer, another body under the key, a sealed answer,
    a caller the view would refuse) goes on to the view, which decides as before.
    """

    UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        import re

        self.get_response = get_response
        self.paths = [re.compile(pattern) for pattern in settings.IDEMPOTENCY_MIDDLEWARE_PATHS]
        self.resolve_owner = import_string(settings.IDEMPOTENCY_OWNER_RESOLVER)
        authorizer = settings.IDEMPOTENCY_REPLAY_AUTHORIZER
        self.replay_permitted = import_string(authorizer) if authorizer else None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method not in self.UNSAFE:
            return self.get_response(request)
        if any(p.match(request.path) for p in self.paths):
            return self._gate(request)
        replay = self._early_replay(request)
        return replay if replay is not None else self.get_response(request)

    def _gate(self, request: HttpRequest) -> HttpResponse:
        owner = self.resolve_owner(request)
        if owner is None:
            return self.get_response(request)
        try:
            data = json.loads(request.body or b"null")
            body = canonical_body(data)
        except (ValueError, RecursionError):  # too deep: the view's parser answers 400
            data, body = None, request.body  # not JSON: the raw bytes are the canonical form
        return _gate_request(
            request,
            owner=owner,
            data=data,
            body=body,
            required=False,
            execute=lambda: self.get_response(request),
            should_store=default_should_store,
        )

    def _early_replay(self, request: HttpRequest) -> HttpResponse | None:
        raw_key = request.headers.get(HEADER)
        if raw_key is None or self.replay_permitted is None:
            return None
        charset = (request.content_params or {}).get("charset", "utf-8").lower()
        if request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
            return None  # read otherwise by the view's parser (or refused): it answers these
        owner = self.resolve_owner(request)
        read = _attached_read(request)
        if owner is None or read is None or not read.done or read.value is None:
            return None  # nothing cached for the key (a new request), or no read to trust
        try:
            key = parse_key(raw_key)
            body = canonical_body(json_body(request.body))
        except (InvalidKey, ValueError, RecursionError):
            return None  # the view answers these as it always has
        gate = default_gate()
        answer = gate.answer_for(
            owner=owner,
            key=key,
            request_fingerprint=fingerprint(
                method=request.method or "", path=request.path, body=body
            ),
            read=read,
        )
        if answer is None or not self.replay_permitted(request):
            return None
        return gate.replay(answer)


def idempotency_keys_cleanup(*, limit: int = 10_000) -> int:
    """Delete expired keys from PostgreSQL and their cached responses from Redis."""
    gate = default_gate()
    expired = list(
        IdempotencyKey.objects.filter(expires_at__lte=clock.now()).values_list(
            "pk", "owner", "key"
        )[:limit]
    )
    for _, owner, key in expired:
        gate.forget(owner, key)
    deleted, _ = IdempotencyKey.objects.filter(
        pk__in=[pk for pk, _, _ in expired], expires_at__lte=clock.now()
    ).delete()
    if deleted:
        logger.info("idempotency cleanup: %d expired keys deleted", deleted)
    return deleted
