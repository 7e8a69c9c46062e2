import payments.models
from django.db import migrations, models

from cryptopay.migration_indexes import Redundant, indexes_drop


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_merchant_logo_table"),
        ("payments", "0011_indexes_led_by_constraints"),
    ]

    # The unique constraints exist already under these names (unique=True made them): the state
    # moves to them, and only the LIKE twins of their indexes go.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="payment",
                    name="checkout_token",
                    field=models.CharField(
                        default=payments.models.new_checkout_token, editable=False, max_length=64
                    ),
                ),
                migrations.AlterField(
                    model_name="payment",
                    name="public_id",
                    field=models.CharField(
                        default=payments.models.new_payment_id, editable=False, max_length=32
                    ),
                ),
                migrations.AddConstraint(
                    model_name="payment",
                    constraint=models.UniqueConstraint(
                        fields=("public_id",), name="payments_payment_public_id_key"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="payment",
                    constraint=models.UniqueConstraint(
                        fields=("checkout_token",),
                        name="payments_payment_checkout_token_1f66c4ed_uniq",
                    ),
                ),
            ],
            database_operations=[
                indexes_drop(
                    Redundant(
                        "payments_payment_public_id_0c37c47c_like",
                        "payments_payment",
                        "public_id",
                        pattern_ops=True,
                    ),
                    Redundant(
                        "payments_payment_checkout_token_1f66c4ed_like",
                        "payments_payment",
                        "checkout_token",
                        pattern_ops=True,
                    ),
                )
            ],
        ),
    ]
