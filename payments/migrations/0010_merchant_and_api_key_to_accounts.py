# Merchant and ApiKey now belong to accounts (accounts 0001 adds them to its state, on the same
# tables): payments forgets them and its foreign keys point at accounts.Merchant. State only:
# the tables, columns and constraints are unchanged.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("payments", "0009_test_mode_keys_and_payments"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="merchantwallet",
                    name="merchant",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="wallets",
                        to="accounts.merchant",
                    ),
                ),
                migrations.AlterField(
                    model_name="addressindex",
                    name="merchant",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, to="accounts.merchant"
                    ),
                ),
                migrations.AlterField(
                    model_name="payment",
                    name="merchant",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="payments",
                        to="accounts.merchant",
                    ),
                ),
                migrations.DeleteModel(
                    name="ApiKey",
                ),
                migrations.DeleteModel(
                    name="Merchant",
                ),
            ],
        ),
    ]
