import django.db.models.deletion
from django.db import migrations, models

from cryptopay.migration_indexes import Redundant, indexes_drop


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_merchant_logo_table"),
        ("payments", "0010_merchant_and_api_key_to_accounts"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="addressindex",
                    name="merchant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        to="accounts.merchant",
                    ),
                ),
                migrations.AlterField(
                    model_name="merchantwallet",
                    name="merchant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="wallets",
                        to="accounts.merchant",
                    ),
                ),
                migrations.AlterField(
                    model_name="payment",
                    name="merchant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="payments",
                        to="accounts.merchant",
                    ),
                ),
                migrations.AlterField(
                    model_name="paymentevent",
                    name="payment",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to="payments.payment",
                    ),
                ),
                migrations.AlterField(
                    model_name="paymentoption",
                    name="payment",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="options",
                        to="payments.payment",
                    ),
                ),
            ],
            database_operations=[
                indexes_drop(
                    Redundant(
                        "payments_addressindex_merchant_id_69196d72",
                        "payments_addressindex",
                        "merchant_id",
                    ),
                    Redundant(
                        "payments_merchantwallet_merchant_id_9045d48c",
                        "payments_merchantwallet",
                        "merchant_id",
                    ),
                    Redundant(
                        "payments_payment_merchant_id_2ca42133", "payments_payment", "merchant_id"
                    ),
                    Redundant(
                        "payments_paymentevent_payment_id_1fde19d5",
                        "payments_paymentevent",
                        "payment_id",
                    ),
                    Redundant(
                        "payments_paymentoption_payment_id_586d4240",
                        "payments_paymentoption",
                        "payment_id",
                    ),
                )
            ],
        ),
    ]
