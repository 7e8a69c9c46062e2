"""Many rows in one statement: PostgreSQL ``INSERT … SELECT FROM unnest(…)`` and ``UPDATE … FROM
unnest(…)``, with Django's ``bulk_create``/``bulk_update`` elsewhere (embedded SQLite).

Written here rather than taken from a library: Django's bulk methods compile and bind every value
(``bulk_update`` builds a CASE per field per row), which measured as most of the webhook
dispatcher's recording time and of the chain watcher's per-block writes; the packages that do
``unnest`` upserts (django-postgres-extra and the like) replace the model manager, more than these
three functions need.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.options import Options


def _arrays(
    connection: BaseDatabaseWrapper, fields: list[models.Field], rows: list[list]
) -> tuple[str, list]:
    """``unnest(CAST(%s AS type[]), …)`` with one array per column: a statement of a few
    placeholders whatever the rows, so psycopg does not parse and bind thousands of them (with
    ``VALUES (%s, …), …`` that was most of the recorder's time)."""
    casts = ", ".join(f"CAST(%s AS {field.cast_db_type(connection)}[])" for field in fields)
    return f"unnest({casts})", [list(column) for column in zip(*rows, strict=True)]


def array_literal(values: Iterable[int | datetime | None]) -> str:
    """A PostgreSQL array literal (``{1,2,NULL}``) of integers or aware timestamps, for
    ``CAST(%s AS bigint[])``: one string to bind. A list is dumped element by element, each
    checked for quoting, which cost the dispatcher more than the database spent on the rows.
    Neither an integer nor an ISO timestamp holds a character that needs quoting."""
    return (
        "{"
        + ",".join(
            "NULL" if value is None
            else value.isoformat() if isinstance(value, datetime)
            else str(int(value))
            for value in values
        )
        + "}"
    )  # fmt: skip


def rows_by_key(table: str, columns: str, *, alias: str, lock: str = "") -> str:
    """A FROM item: the rows of ``table`` whose ``id`` is in the array bound to its one ``%s``,
    each looked up by primary key (and locked by ``lock``, ``FOR UPDATE…``, as it is found).
    The caller filters them in its own WHERE, outside.

    For statements that take a batch's ids and a condition a partial index also states
    (``dispatched_at IS NULL``, ``status = 'pending'``). Written as ``id = ANY(…) AND …``, or
    with the condition inside the lookup, the planner, going by statistics taken before a burst,
    believed that partial index nearly empty and read every row in it: the whole burst, or the
    whole backlog of a failing endpoint, for each batch (for each id, inside the lookup). The
    lookup holds nothing but the key, and cannot be flattened (``OFFSET 0``), so it has one plan."""
    # Identifiers and the lock clause come from the caller's code, the ids are a parameter.
    lookup = f"SELECT {columns} FROM {table} WHERE {table}.id = batch.id OFFSET 0 {lock}"  # noqa: S608
    return f"unnest(CAST(%s AS bigint[])) AS batch(id) CROSS JOIN LATERAL ({lookup}) AS {alias}"


def rows_insert(objs: Sequence[models.Model], *, suffix: str = "") -> list[tuple]:
    """Insert many new rows in one statement and return what ``suffix`` (``ON CONFLICT …``,
    ``RETURNING …``, appended as is) returns. On PostgreSQL an ``INSERT … SELECT FROM unnest``:
    ``bulk_create`` spends more on compiling and binding each value than the database spends on
    the rows. Elsewhere ``bulk_create`` (no suffix)."""
    if not objs:
        return []
    model = type(objs[0])
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        if suffix:
            raise NotImplementedError("rows_insert with a suffix needs PostgreSQL")
        model._default_manager.bulk_create(objs, batch_size=1000)
        return []
    meta = model._meta
    fields = [field for field in meta.concrete_fields if not field.primary_key]
    table = connection.ops.quote_name(meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    source, params = _arrays(
        connection,
        fields,
        [
            [field.get_db_prep_save(field.pre_save(obj, add=True), connection) for field in fields]
            for obj in objs
        ],
    )
    # Identifiers come from the model's metadata, values are parameters.
    sql = f"INSERT INTO {table} ({columns}) SELECT * FROM {source} {suffix}"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []


def rows_update(objs: Sequence[models.Model], fields: list[str]) -> None:
    """Write these fields of many rows in one statement. On PostgreSQL an ``UPDATE … FROM
    unnest(…)``: Django's ``bulk_update`` builds a CASE per field whose cost grows with the
    square of the rows, which made recording 500 outcomes the dispatcher's slowest step."""
    if not objs:
        return
    model = type(objs[0])
    connection = transaction.get_connection()
    if connection.vendor != "postgresql":
        model._default_manager.bulk_update(objs, fields, batch_size=200)
        return
    meta = model._meta
    columns = [_concrete_field(meta, name) for name in fields]
    pk = meta.pk
    table = connection.ops.quote_name(meta.db_table)
    names = ["id"] + [f"c{n}" for n in range(len(columns))]
    assignments = ", ".join(
        f"{connection.ops.quote_name(field.column)} = v.c{n}" for n, field in enumerate(columns)
    )
    source, params = _arrays(
        connection,
        [pk, *columns],
        [
            [obj.pk]
            + [field.get_db_prep_save(getattr(obj, field.attname), connection) for field in columns]
            for obj in objs
        ],
    )
    # Identifiers come from the model's metadata, values are parameters.
    sql = (
        f"UPDATE {table} SET {assignments} FROM {source} AS v({', '.join(names)}) "  # noqa: S608
        f"WHERE {table}.{connection.ops.quote_name(pk.column)} = v.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _concrete_field(meta: Options, name: str) -> models.Field:
    """The model's field ``name``, one with a column (what raw SQL can write)."""
    field = meta.get_field(name)
    if not isinstance(field, models.Field) or not field.concrete:
        raise LookupError(f"{meta.label}.{name} has no column")
    return field
