import django.db.models.deletion
from django.db import migrations, models

from cryptopay.migration_indexes import Redundant, indexes_drop


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0006_webhook_delivery_verbose_name_plural"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="owner",
                    field=models.CharField(blank=True, max_length=64),
                ),
                migrations.AlterField(
                    model_name="webhookdelivery",
                    name="endpoint",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="deliveries",
                        to="notifications.webhookendpoint",
                    ),
                ),
            ],
            database_operations=[
                indexes_drop(
                    Redundant("notifications_event_owner_3930d399", "notifications_event", "owner"),
                    Redundant(
                        "notifications_event_owner_3930d399_like",
                        "notifications_event",
                        "owner",
                        pattern_ops=True,
                    ),
                    Redundant(
                        "notifications_webhookdelivery_endpoint_id_92faf2d0",
                        "notifications_webhookdelivery",
                        "endpoint_id",
                    ),
                )
            ],
        ),
    ]
