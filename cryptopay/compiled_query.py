"""A model query of a hot path compiled to SQL once per process and database, then run through the
connection's cursor with new parameter values, its rows mapped to model instances as Django maps
them (the same columns, converters, ``select_related`` objects and deferred fields).

Building a queryset and compiling it (``filter``, ``as_sql``) cost more than PostgreSQL spent
answering the primary-key-sized lookups that every API request makes (its key, its payment). Only
the SQL text is kept here: every call asks the database. A caller may keep a ``Row`` (immutable)
and make instances of it later; whether a kept row may stand in for a call is the caller's
decision (accounts/api_key_cache.py).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import connections, models
from django.db.models.query import get_related_populators

M = TypeVar("M", bound=models.Model)

# Parameter values that reach the database as they are given on both backends (no per-field
# preparation is repeated when the compiled SQL is run with new ones).
PLAIN_TYPES = (str, int, bool)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameter of each placeholder, in order
    model: type[models.Model]
    init_list: list[str]
    model_columns: slice
    converters: list[tuple[int, list[Callable[..., Any]], Any]]
    related_populators: list[Any]


class CompiledQuery(Generic[M]):
    """``build(**examples)`` is the queryset (one row at most: it is sliced to one); calls pass
    values of the same names and types. Each str or int example must be told apart from the
    others in the compiled parameters (distinct values), which is checked when compiling. Django
    writes a boolean lookup into the SQL itself (``NOT "livemode"``), so each combination of the
    bool parameters is compiled on its own."""

    def __init__(self, build: Callable[..., models.QuerySet[M]], **examples: Any) -> None:
        for name, value in examples.items():
            if type(value) not in PLAIN_TYPES:
                raise TypeError(f"{name}: only str, int and bool parameters, not {type(value)}")
        self._build = build
        self._examples = examples
        self._flags = tuple(name for name, value in examples.items() if type(value) is bool)
        self._compiled: dict[tuple[str, tuple[bool, ...]], _Compiled] = {}
        self._lock = threading.Lock()

    def _compile(self, using: str, flags: tuple[bool, ...]) -> _Compiled:
        given = {name: value for name, value in self._examples.items() if name not in self._flags}
        queryset = self._build(**given, **dict(zip(self._flags, flags, strict=True)))[:1]
        compiler = queryset.query.get_compiler(using=using)
        sql, params = compiler.as_sql()
        names = []
        for param in params:
            found = [
                name
                for name, value in given.items()
                if type(value) is type(param) and value == param
            ]
            if len(found) != 1:
                raise ValueError(f"parameter {param!r} matches {found or 'no example'}")
            names.append(found[0])
        if set(names) != set(given):
            raise ValueError(f"parameters {sorted(set(given) - set(names))} not in the SQL")
        klass_info, select = compiler.klass_info, compiler.select
        assert klass_info is not None
        fields = klass_info["select_fields"]
        columns = slice(fields[0], fields[-1] + 1)
        expressions = [column[0] for column in select[: compiler.col_count]]
        return _Compiled(
            sql=sql,
            names=tuple(names),
            model=klass_info["model"],
            init_list=[column[0].target.attname for column in select[columns]],
            model_columns=columns,
            converters=[
                (position, converters, expression)
                for position, (converters, expression) in compiler.get_converters(
                    expressions
                ).items()
            ],
            # The stubs describe a later Django (a fetch_mode argument); 5.2 takes three.
            related_populators=get_related_populators(klass_info, select, using),  # type: ignore[call-arg]
        )

    def first(self, *, using: str = "default", **values: Any) -> M | None:
        """The row for these values as a model instance, or None."""
        fetched = self.row(using=using, **values)
        return None if fetched is None else fetched.instance()

    def row(self, *, using: str = "default", **values: Any) -> Row[M] | None:
        """The row for these values, converted as Django converts it, or None: each
        ``instance()`` of it is a new model instance (a caller may keep the row, not an instance
        that requests could share and change)."""
        if values.keys() != self._examples.keys():
            raise TypeError(f"give {sorted(self._examples)}, not {sorted(values)}")
        for name, value in values.items():
            if type(value) is not type(self._examples[name]):
                raise TypeError(f"{name}: {type(value)}, compiled for {type(self._examples[name])}")
        key = (using, tuple(values[name] for name in self._flags))
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(key) or self._compile(using, key[1])
                self._compiled[key] = compiled
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(compiled.sql, [values[name] for name in compiled.names])
            fetched = cursor.fetchone()
        if fetched is None:
            return None
        row = list(fetched)
        for position, converters, expression in compiled.converters:
            value = row[position]
            for converter in converters:
                value = converter(value, expression, connection)
            row[position] = value
        return Row(compiled=compiled, values=tuple(row), using=using)


@dataclass(frozen=True)
class Row(Generic[M]):
    """One row of a compiled query, as read: immutable, so it can be kept and shared."""

    compiled: _Compiled
    values: tuple[Any, ...]
    using: str

    def instance(self) -> M:
        compiled = self.compiled
        # Lists and dicts (JSON fields) copied: an instance's must not be another's.
        row = [copy.deepcopy(v) if isinstance(v, list | dict) else v for v in self.values]
        obj = compiled.model.from_db(self.using, compiled.init_list, row[compiled.model_columns])
        for populator in compiled.related_populators:
            populator.populate(row, obj)
        return obj  # type: ignore[return-value]  # the model of the built queryset
