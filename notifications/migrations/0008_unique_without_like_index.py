import notifications.models
from django.db import migrations, models

from cryptopay.migration_indexes import Redundant, indexes_drop


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0007_indexes_led_by_constraints"),
    ]

    # The unique constraints exist already under these names (unique=True made them): the state
    # moves to them, and only the LIKE twins of their indexes go.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="public_id",
                    field=models.CharField(
                        default=notifications.models.new_event_id, editable=False, max_length=32
                    ),
                ),
                migrations.AddConstraint(
                    model_name="event",
                    constraint=models.UniqueConstraint(
                        fields=("public_id",), name="notifications_event_public_id_key"
                    ),
                ),
            ],
            database_operations=[
                indexes_drop(
                    Redundant(
                        "notifications_event_public_id_7cd32cfc_like",
                        "notifications_event",
                        "public_id",
                        pattern_ops=True,
                    ),
                )
            ],
        ),
    ]
