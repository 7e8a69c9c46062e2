"""Crypto amounts on SQLite become exact: embedded installs created before this migration hold them
in NUMERIC ("decimal") columns, where an amount beyond 64 bits turns into an 8-byte REAL. Their
tables are rebuilt with the zero-padded text columns BaseUnitsField now declares there, and every
amount is rewritten in that form.

Nothing to do on PostgreSQL: NUMERIC(78, 0) is exact. Reversing leaves the text columns (going
back to NUMERIC would lose digits again).
"""

from decimal import Decimal

from django.db import migrations

from payments.models import base_units_to_sqlite

AMOUNT_COLUMNS = {
    "Payment": ["crypto_amount", "amount_received", "amount_confirmed"],
    "PaymentTransaction": ["amount"],
}


def _exact(value):
    if isinstance(value, float):
        # A REAL already lost its digits when it was written; its nearest integer is all there is.
        return int(Decimal(value))
    return int(Decimal(str(value)))


def rebuild_amount_columns(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "sqlite":
        return
    for model_name, columns in AMOUNT_COLUMNS.items():
        model = apps.get_model("payments", model_name)
        table = model._meta.db_table
        with connection.cursor() as cursor:
            declared = {
                row.name: row.type_code
                for row in connection.introspection.get_table_description(cursor, table)
            }
        if any(declared[column].lower() != "text" for column in columns):
            # Django's own way of changing a SQLite column: a new table, the rows copied over.
            schema_editor._remake_table(model)
        quoted = ", ".join(schema_editor.quote_name(column) for column in columns)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, {quoted} FROM {schema_editor.quote_name(table)}")  # noqa: S608
            rows = cursor.fetchall()
            assignments = ", ".join(f"{schema_editor.quote_name(c)} = %s" for c in columns)
            for pk, *values in rows:
                cursor.execute(
                    f"UPDATE {schema_editor.quote_name(table)} SET {assignments} WHERE id = %s",  # noqa: S608
                    [*(base_units_to_sqlite(_exact(v)) for v in values), pk],
                )


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0006_watcher_evidence"),
    ]

    operations = [
        migrations.RunPython(rebuild_amount_columns, migrations.RunPython.noop),
    ]
