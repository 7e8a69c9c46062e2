from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _register_sqlite_functions(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor == "sqlite":
        from payments.models import SQLITE_BASE_UNITS_SUM, SqliteBaseUnitsSum

        connection.connection.create_aggregate(SQLITE_BASE_UNITS_SUM, 1, SqliteBaseUnitsSum)


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        from payments import event_types, probes

        probes.register()
        event_types.register()
        # Exact sums of crypto amounts on SQLite (payments.models.BaseUnitsSum).
        connection_created.connect(_register_sqlite_functions, dispatch_uid="payments-sqlite")
        # Rate age and watcher lag samplers for /metrics.
        from payments import metrics  # noqa: F401
