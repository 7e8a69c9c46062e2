"""Django's PostgreSQL backend with a pool that recovers from a lost database at once.

psycopg_pool's own behaviour after a failover or a restart (every pooled connection dead):

* a request checks pooled connections one by one, sleeping 1, 2, 4... s between failed checks
  (the pool's backoff), so with a few dead connections it waits out its whole timeout (10 s) and
  the next request does the same;
* reconnection attempts back off exponentially up to minutes, so a database that is back may wait
  for the next attempt.

Here the first failed check resets the whole pool (``drain``: idle connections closed, fresh ones
opened by the pool's workers; connections in use are replaced when returned) and reconnection is
retried at a fixed short interval (``reconnect_interval``, settings ``DATABASE_RECONNECT_INTERVAL``).

With server-side binding (``OPTIONS["server_side_binding"]``, settings
``DATABASE_PREPARED_STATEMENTS``) psycopg prepares a statement a connection has run
``prepare_threshold`` times. A migration run meanwhile by another process that changes what such a
statement returns (a column's type, even a varchar's length) makes the server refuse it ("cached
plan must not change result type") for as long as the connection keeps it. Inside a transaction
the rollback that follows makes psycopg deallocate them all; outside one nothing would, so the
cursor here does it and runs the statement again, once.

Timestamps are read by psycopg's compiled loader where the connection's time zone is UTC (the
project's: settings ``TIME_ZONE``). Django registers a loader of its own, in Python, that parses
each value and then sets its zone to the connection's; in UTC the compiled one gives the same
aware datetime (``datetime.timezone.utc``) for about a tenth of the cost: 0.7 µs a value where
Django's took 5-7 µs, paid for every timestamp column of every row read.

A transaction's first and last statements (or queries of several statements) may carry its BEGIN
and COMMIT in the same query (``execute_beginning``, ``execute_committing`` and their variants): a
short transaction, such as the idempotency gate's around a payment create or the webhook
dispatcher's per batch, spends two round trips fewer, each a wait for the database and for the
thread's turn at the GIL after it.

Everything else is Django's backend. Engine: ``resilience.postgresql``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, tzinfo
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg import adapt, adapters, postgres, pq
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff


class _ShortBackoff(AttemptWithBackoff):
    """psycopg_pool's reconnection attempt with its delay capped."""

    def __init__(self, *, timeout: float, cap: float) -> None:
        super().__init__(timeout=timeout)
        self.cap = cap

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.cap)


class ResilientConnectionPool(ConnectionPool):
    def __init__(self, *args: Any, reconnect_interval: float = 0.2, **kwargs: Any) -> None:
        checked = kwargs.pop("check", None) is not None
        self.reconnect_interval = reconnect_interval
        self._drain_lock = threading.Lock()
        self._last_drain = float("-inf")
        super().__init__(*args, check=self._check_or_drain if checked else None, **kwargs)

    def _check_or_drain(self, conn: Any) -> None:
        try:
            ConnectionPool.check_connection(conn)
        except Exception:
            # One dead connection in a pool almost always means they all are (the server
            # restarted or failed over): replace them all now rather than one per request.
            with self._drain_lock:
                # Requests failing together drain once; the fresh connections are kept.
                if time.monotonic() - self._last_drain >= self.reconnect_interval:
                    self._last_drain = time.monotonic()
                    self.drain()
            raise

    # psycopg-pool is pinned (requirements.txt): this overrides one of its internals, the only
    # place its reconnection backoff can be set.
    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        if attempt is None:
            attempt = _ShortBackoff(timeout=self.reconnect_timeout, cap=self.reconnect_interval)
        super()._add_connection(attempt, growing=growing)


_TextTimestamptzLoader: Any = adapters.get_loader(postgres.types["timestamptz"].oid, pq.Format.TEXT)


class UtcTimestamptzLoader(adapt.Loader):
    """psycopg's own text ``timestamptz`` loader (compiled where psycopg's binary package is
    installed, and then final: hence a wrapper), in a session whose time zone is UTC.
    ``timezone`` is what Django's backend compares with its own before registering its loader
    again on a cursor."""

    timezone: tzinfo = UTC

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self.load = _TextTimestamptzLoader(oid, context).load  # type: ignore[method-assign]

    def load(self, data: Any) -> Any:  # replaced per instance by psycopg's
        raise NotImplementedError


@functools.cache
def _utc_adapters(template: adapt.AdaptersMap) -> adapt.AdaptersMap:
    """Django's adapters for its connections (one map per time zone), with psycopg's own
    timestamp loader in place of Django's (module docstring)."""
    utc = adapt.AdaptersMap(template)
    utc.register_loader("timestamptz", UtcTimestamptzLoader)
    return utc


STALE_PLAN = "cached plan must not change result type"
# Django's psycopg 3 cursors, typed loosely: its type stubs describe them as psycopg 2's.
_DjangoServerBindingCursor: Any = base.ServerBindingCursor
_DjangoClientBindingCursor: Any = base.Cursor


class ServerBindingCursor(_DjangoServerBindingCursor):
    """Django's server-binding cursor that recovers from its connection's stale prepared
    statements outside a transaction (module docstring)."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        try:
            return super().execute(query, params, **kwargs)
        except pg_errors.FeatureNotSupported as error:
            in_transaction = self.connection.info.transaction_status != pq.TransactionStatus.IDLE
            if in_transaction or STALE_PLAN not in str(error):
                raise
            # psycopg is pinned (requirements.txt): its prepared-statement manager is internal.
            # Cleared, it deallocates every statement before the next one and counts afresh.
            self.connection._prepared.clear()
            return super().execute(query, params, **kwargs)


class DatabaseWrapper(base.DatabaseWrapper):
    # Django's PostgreSQL backend has these; its type stubs leave them out.
    _connection_pools: dict[str, ConnectionPool]
    _configure_connection: Callable[[Any], None]
    _prepare_cursor: Callable[[Any], Any]

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if params.get("cursor_factory") is _DjangoServerBindingCursor:
            params["cursor_factory"] = ServerBindingCursor
        # Django sets each session's time zone to its own (``timezone_name``) when it opens it.
        if "context" in params and self.timezone_name == "UTC" and self.timezone == UTC:
            params["context"] = _utc_adapters(params["context"])
        return params

    @property
    def pool(self) -> ConnectionPool | None:
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            connect_kwargs = self.get_connection_params()
            # As Django's: autocommit until Django sets it, its configure function, its checks.
            connect_kwargs["autocommit"] = True
            pool = ResilientConnectionPool(
                kwargs=connect_kwargs,
                open=False,
                configure=self._configure_connection,
                check=ConnectionPool.check_connection
                if self.settings_dict["CONN_HEALTH_CHECKS"]
                else None,
                **({} if pool_options is True else pool_options),
            )
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]

    def client_binding_cursor(self) -> Any:
        """A cursor that binds parameters in the client, whatever ``server_side_binding`` says:
        several statements sent as one query (one round trip) need it, as the server binds
        parameters to one statement at a time. Wrapped as Django wraps its own cursors
        (execute wrappers, query logging)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            return self._prepare_cursor(_DjangoClientBindingCursor(self.connection))

    def _outermost_block(self) -> bool:
        """Inside Django's outermost atomic block and no block nested in it (a nested one holds
        a savepoint), not marked to roll back: where the block's BEGIN and COMMIT are Django's
        to send."""
        return self.in_atomic_block and len(self.atomic_blocks) == 1 and not self.needs_rollback

    def execute_beginning(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """Run ``sql`` (one statement that returns rows) and return its rows. As the first
        statement of the outermost atomic block, the block's BEGIN goes in the same query: one
        round trip where psycopg sends BEGIN on its own first. Anywhere else it runs as it is.

        psycopg sends BEGIN before a statement when its connection is not in autocommit and no
        transaction is open; its autocommit flag decides nothing else once one is (commit and
        rollback go by the server's transaction status), so it is set for the statement that
        opens the transaction itself. Django sets it again when the block ends."""
        return self._beginning(sql, params, statements=1)[0]

    def execute_beginning_each(
        self, sql: str, params: Sequence[Any], *, statements: int
    ) -> list[list[tuple]]:
        """``execute_beginning`` for ``statements`` statements sent as one query (separated by
        semicolons, each returning rows; a client-binding cursor binds them): the rows of each,
        in order."""
        return self._beginning(sql, params, statements=statements)

    def _beginning(self, sql: str, params: Sequence[Any], *, statements: int) -> list[list[tuple]]:
        self.ensure_connection()
        raw = self.connection
        if not (
            self._outermost_block()
            and not raw.autocommit
            and raw.info.transaction_status == pq.TransactionStatus.IDLE
        ):
            if statements == 1:
                with self.cursor() as cursor:
                    cursor.execute(sql, params)
                    return [cursor.fetchall()]
            with self.client_binding_cursor() as cursor:
                cursor.execute(sql, params)
                return _each_result(cursor, statements)
        raw.autocommit = True
        try:
            with self.client_binding_cursor() as cursor:
                cursor.execute(f"BEGIN;\n{sql}", params)
                cursor.nextset()
                return _each_result(cursor, statements)
        finally:
            if raw.info.transaction_status == pq.TransactionStatus.IDLE:
                raw.autocommit = False  # nothing begun: psycopg begins the block as usual

    def execute_committing(self, sql: str, params: Sequence[Any]) -> int:
        """Run ``sql`` (one statement) and return its row count. As the last statement of the
        outermost atomic block, the block's COMMIT goes in the same query; the block's own
        commit then finds no transaction open and sends nothing. The caller does nothing in the
        block after it: a later statement would run outside the committed transaction. A
        COMMIT that fails (a deferred constraint) raises here, inside the block, which then
        rolls back as it would after a failed commit of its own."""
        if not self._committing_here():
            with self.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.rowcount
        with self.client_binding_cursor() as cursor:
            cursor.execute(f"{sql};\nCOMMIT", params)
            return cursor.rowcount

    def execute_committing_rows(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """``execute_committing`` for several statements sent as one query (separated by
        semicolons; a client-binding cursor binds them): the rows the first one returns (none
        when it returns no rows)."""
        committing = self._committing_here()
        with self.client_binding_cursor() as cursor:
            cursor.execute(f"{sql};\nCOMMIT" if committing else sql, params)
            return [] if cursor.description is None else cursor.fetchall()

    def _committing_here(self) -> bool:
        self.ensure_connection()
        return (
            self._outermost_block()
            and self.connection.info.transaction_status == pq.TransactionStatus.INTRANS
        )


def _each_result(cursor: Any, statements: int) -> list[list[tuple]]:
    """The rows of the cursor's current result and of the ``statements - 1`` after it."""
    results = [cursor.fetchall()]
    for _ in range(statements - 1):
        cursor.nextset()
        results.append(cursor.fetchall())
    return results
