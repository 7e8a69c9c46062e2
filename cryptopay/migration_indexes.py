"""Dropping, in a migration, an index that another index of its table leads with.

Django's ``AlterField(db_index=False)`` on a foreign key drops the constraint, drops the index and
adds the constraint back, and adding it back checks every row under a lock that blocks writes to
both tables: minutes on a gateway's payments or deliveries. Only the index goes, so a migration
says so with ``SeparateDatabaseAndState``: the field's new state, and ``indexes_drop`` for the
database (``DROP INDEX``, a moment's lock and no scan). Backwards it builds them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import migrations


@dataclass(frozen=True)
class Redundant:
    name: str
    table: str
    column: str
    # PostgreSQL's twin of a varchar index for LIKE 'prefix%' (Django's ``_like``): none elsewhere.
    pattern_ops: bool = False


def indexes_drop(*indexes: Redundant) -> migrations.RunPython:
    def forward(apps: Any, schema_editor: Any) -> None:
        quote = schema_editor.quote_name
        for index in indexes:
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(index.name)}")

    def backward(apps: Any, schema_editor: Any) -> None:
        quote = schema_editor.quote_name
        for index in indexes:
            if index.pattern_ops and schema_editor.connection.vendor != "postgresql":
                continue
            operator_class = " varchar_pattern_ops" if index.pattern_ops else ""
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(index.name)} ON {quote(index.table)} "
                f"({quote(index.column)}{operator_class})"
            )

    return migrations.RunPython(forward, backward)
