# A merchant's logo moves from two columns of payments_merchant to a table of its own, so that no
# join of a merchant carries the image. Existing logos are copied before the columns go.

import django.db.models.deletion
from django.db import migrations, models


def logos_to_table(apps, schema_editor) -> None:
    Merchant = apps.get_model("accounts", "Merchant")
    MerchantLogo = apps.get_model("accounts", "MerchantLogo")
    branded = Merchant.objects.exclude(logo=None).exclude(logo_content_type="")
    for merchant in branded.only("pk", "logo", "logo_content_type").iterator(chunk_size=50):
        MerchantLogo.objects.create(
            merchant_id=merchant.pk,
            image=bytes(merchant.logo),
            content_type=merchant.logo_content_type,
        )


def logos_to_columns(apps, schema_editor) -> None:
    Merchant = apps.get_model("accounts", "Merchant")
    MerchantLogo = apps.get_model("accounts", "MerchantLogo")
    for logo in MerchantLogo.objects.iterator(chunk_size=50):
        Merchant.objects.filter(pk=logo.merchant_id).update(
            logo=bytes(logo.image), logo_content_type=logo.content_type
        )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        # payments 0010 hands Merchant's state to accounts.
        ("payments", "0010_merchant_and_api_key_to_accounts"),
    ]

    operations = [
        migrations.CreateModel(
            name="MerchantLogo",
            fields=[
                (
                    "merchant",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="checkout_logo",
                        serialize=False,
                        to="accounts.merchant",
                    ),
                ),
                ("image", models.BinaryField()),
                ("content_type", models.CharField(max_length=20)),
            ],
        ),
        migrations.RunPython(logos_to_table, logos_to_columns),
        migrations.RemoveField(model_name="merchant", name="logo"),
        migrations.RemoveField(model_name="merchant", name="logo_content_type"),
    ]
