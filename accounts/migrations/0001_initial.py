# Merchant and ApiKey move here from payments (payments 0010 removes them from its state). Their
# tables stay where they are (payments_merchant, payments_apikey): state only, no SQL, no data
# moved. Their content types follow them, so permissions granted on them and admin log entries
# stay attached.

import accounts.models
import django.core.validators
import django.db.models.deletion
from decimal import Decimal
from django.db import migrations, models


def _move_content_types(apps, schema_editor, *, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in ("merchant", "apikey"):
        if not ContentType.objects.filter(app_label=target, model=model).exists():
            ContentType.objects.filter(app_label=source, model=model).update(app_label=target)


def content_types_to_accounts(apps, schema_editor) -> None:
    _move_content_types(apps, schema_editor, source="payments", target="accounts")


def content_types_to_payments(apps, schema_editor) -> None:
    _move_content_types(apps, schema_editor, source="accounts", target="payments")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        # The tables are created by payments' migrations up to here.
        ("payments", "0009_test_mode_keys_and_payments"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Merchant",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        (
                            "public_id",
                            models.CharField(
                                default=accounts.models.new_merchant_id,
                                editable=False,
                                max_length=32,
                                unique=True,
                            ),
                        ),
                        ("name", models.CharField(max_length=200)),
                        (
                            "default_fiat_currency",
                            models.CharField(
                                choices=[
                                    ("AED", "AED"),
                                    ("ARS", "ARS"),
                                    ("AUD", "AUD"),
                                    ("BGN", "BGN"),
                                    ("BHD", "BHD"),
                                    ("BRL", "BRL"),
                                    ("CAD", "CAD"),
                                    ("CHF", "CHF"),
                                    ("CLP", "CLP"),
                                    ("CNY", "CNY"),
                                    ("COP", "COP"),
                                    ("CZK", "CZK"),
                                    ("DKK", "DKK"),
                                    ("EGP", "EGP"),
                                    ("EUR", "EUR"),
                                    ("GBP", "GBP"),
                                    ("HKD", "HKD"),
                                    ("HUF", "HUF"),
                                    ("IDR", "IDR"),
                                    ("ILS", "ILS"),
                                    ("INR", "INR"),
                                    ("ISK", "ISK"),
                                    ("JOD", "JOD"),
                                    ("JPY", "JPY"),
                                    ("KES", "KES"),
                                    ("KRW", "KRW"),
                                    ("KWD", "KWD"),
                                    ("MXN", "MXN"),
                                    ("MYR", "MYR"),
                                    ("NGN", "NGN"),
                                    ("NOK", "NOK"),
                                    ("NZD", "NZD"),
                                    ("OMR", "OMR"),
                                    ("PEN", "PEN"),
                                    ("PHP", "PHP"),
                                    ("PLN", "PLN"),
                                    ("QAR", "QAR"),
                                    ("RON", "RON"),
                                    ("SAR", "SAR"),
                                    ("SEK", "SEK"),
                                    ("SGD", "SGD"),
                                    ("THB", "THB"),
                                    ("TRY", "TRY"),
                                    ("TWD", "TWD"),
                                    ("UAH", "UAH"),
                                    ("USD", "USD"),
                                    ("VND", "VND"),
                                    ("ZAR", "ZAR"),
                                ],
                                default="USD",
                                max_length=3,
                            ),
                        ),
                        (
                            "payment_expiry",
                            models.DurationField(
                                default=accounts.models._default_expiry,
                                help_text="How long a buyer has to pay a new payment.",
                            ),
                        ),
                        (
                            "monitoring_window",
                            models.DurationField(
                                default=accounts.models._default_monitoring_window,
                                help_text="After expiry, how long an unconfirmed payment is watched before it is invalid.",
                            ),
                        ),
                        (
                            "underpayment_tolerance_percent",
                            models.DecimalField(
                                decimal_places=2,
                                default=accounts.models._default_tolerance,
                                help_text="A payment short by at most this percentage counts as paid in full.",
                                max_digits=5,
                                validators=[
                                    django.core.validators.MinValueValidator(Decimal("0")),
                                    django.core.validators.MaxValueValidator(Decimal("100")),
                                ],
                            ),
                        ),
                        (
                            "speed_policy",
                            models.PositiveSmallIntegerField(
                                choices=[
                                    (0, "High speed (0 confirmations)"),
                                    (1, "Medium speed (1 confirmation)"),
                                    (2, "Low-medium speed (2 confirmations)"),
                                    (6, "Low speed (6 confirmations)"),
                                ],
                                default=1,
                            ),
                        ),
                        (
                            "brand_color",
                            models.CharField(
                                blank=True,
                                help_text="Accent colour of the checkout page, #rrggbb (empty: the default green).",
                                max_length=7,
                                validators=[
                                    django.core.validators.RegexValidator(
                                        "^#[0-9a-fA-F]{6}$", "A colour such as #1a7f5a."
                                    )
                                ],
                            ),
                        ),
                        ("logo", models.BinaryField(blank=True, null=True)),
                        (
                            "logo_content_type",
                            models.CharField(blank=True, editable=False, max_length=20),
                        ),
                        (
                            "support_url",
                            models.URLField(
                                blank=True,
                                help_text="Where buyers can reach you (shown when a payment needs help).",
                            ),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "db_table": "payments_merchant",
                    },
                ),
                migrations.CreateModel(
                    name="ApiKey",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("name", models.CharField(max_length=100)),
                        ("prefix", models.CharField(editable=False, max_length=32, unique=True)),
                        ("key_hash", models.CharField(editable=False, max_length=64)),
                        ("scopes", models.JSONField(default=list)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        ("last_used_at", models.DateTimeField(blank=True, null=True)),
                        ("livemode", models.BooleanField(default=True, editable=False)),
                        (
                            "merchant",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="api_keys",
                                to="accounts.merchant",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "API key",
                        "db_table": "payments_apikey",
                    },
                ),
            ],
        ),
        migrations.RunPython(content_types_to_accounts, content_types_to_payments),
    ]
