import hashlib
import re

import django.db.models.deletion
from django.db import migrations, models

import payments.models

# payments.chains.derivation.extract_key and payments.addresses.key_space as of this migration.
_DESCRIPTOR = re.compile(
    r"^wpkh\((?:\[[0-9a-fA-F]{8}(?:/[0-9]+['h]?)*\])?([1-9A-HJ-NP-Za-km-z]+)(?:/[0-9]+/\*)?\)(?:#[a-z0-9]{8})?$"
)


def _key_space(key, currency):
    if not key:
        return f"dev:{currency}"
    value = key.strip()
    match = _DESCRIPTOR.match(value)
    extracted = match.group(1) if match else value
    return "key:" + hashlib.sha256(extracted.encode()).hexdigest()[:64]


def counters_per_key(apps, schema_editor):
    """One counter per (merchant, wallet key): the highest of the per-currency counters that share
    the key, so no index any of them handed out is handed out again."""
    AddressIndex = apps.get_model("payments", "AddressIndex")
    MerchantWallet = apps.get_model("payments", "MerchantWallet")
    keys = {
        (w.merchant_id, w.crypto_currency): w.extended_public_key
        for w in MerchantWallet.objects.all()
    }
    kept = {}
    for counter in AddressIndex.objects.order_by("pk"):
        space = _key_space(
            keys.get((counter.merchant_id, counter.crypto_currency)), counter.crypto_currency
        )
        group = (counter.merchant_id, space)
        if group in kept:
            first = kept[group]
            first.next_index = max(first.next_index, counter.next_index)
            first.save(update_fields=["next_index"])
            counter.delete()
        else:
            counter.key_space = space
            counter.save(update_fields=["key_space"])
            kept[group] = counter
    if schema_editor.connection.vendor == "postgresql":
        # The rows changed above leave deferred foreign-key checks pending, and PostgreSQL
        # refuses the ALTER TABLEs that follow in this transaction until they have run.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


class Migration(migrations.Migration):
    dependencies = [("payments", "0004_checkout_token")]

    operations = [
        migrations.AddField(
            model_name="addressindex",
            name="key_space",
            field=models.CharField(max_length=80, null=True),
        ),
        migrations.RemoveConstraint(model_name="addressindex", name="address_index_unique"),
        migrations.RunPython(counters_per_key, migrations.RunPython.noop),
        migrations.RemoveField(model_name="addressindex", name="crypto_currency"),
        migrations.AlterField(
            model_name="addressindex",
            name="key_space",
            field=models.CharField(max_length=80),
        ),
        migrations.AddConstraint(
            model_name="addressindex",
            constraint=models.UniqueConstraint(
                fields=("merchant", "key_space"), name="address_index_unique"
            ),
        ),
        migrations.CreateModel(
            name="UnmatchedTransfer",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("chain", models.CharField(max_length=20)),
                ("txid", models.CharField(max_length=160)),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("output", "UTXO output"),
                            ("native", "Native EVM transfer"),
                            ("log", "ERC-20 Transfer log"),
                            ("internal", "Native EVM transfer by a contract"),
                        ],
                        max_length=10,
                    ),
                ),
                (
                    "output_index",
                    models.PositiveIntegerField(
                        help_text="Log index for logs, call index for calls."
                    ),
                ),
                ("currency", models.CharField(help_text="The asset that arrived.", max_length=8)),
                (
                    "amount",
                    payments.models.BaseUnitsField(help_text="In the arriving asset's base units."),
                ),
                ("to_address", models.CharField(max_length=128)),
                ("block_hash", models.CharField(blank=True, max_length=100)),
                ("block_height", models.PositiveBigIntegerField(blank=True, null=True)),
                ("seen_at", models.DateTimeField()),
            ],
        ),
        migrations.AddField(
            model_name="payment",
            name="key_space",
            field=models.CharField(blank=True, editable=False, max_length=80, null=True),
        ),
        migrations.AlterField(
            model_name="paymentevent",
            name="type",
            field=models.CharField(
                choices=[
                    ("payment.created", "Payment created"),
                    ("payment.status_changed", "Payment status changed"),
                    ("payment.expired", "Payment expired"),
                    ("transaction.detected", "Transaction detected"),
                    ("transaction.unmatched", "Unmatched transfer to the address"),
                ],
                max_length=40,
            ),
        ),
        migrations.AlterField(
            model_name="paymenttransaction",
            name="kind",
            field=models.CharField(
                choices=[
                    ("output", "UTXO output"),
                    ("native", "Native EVM transfer"),
                    ("log", "ERC-20 Transfer log"),
                    ("internal", "Native EVM transfer by a contract"),
                ],
                default="output",
                max_length=10,
            ),
        ),
        migrations.AddConstraint(
            model_name="payment",
            constraint=models.UniqueConstraint(
                condition=models.Q(("key_space__isnull", False)),
                fields=("merchant", "key_space", "derivation_index"),
                name="payment_derivation_index_unique_per_key",
            ),
        ),
        migrations.AddConstraint(
            model_name="payment",
            constraint=models.UniqueConstraint(
                condition=models.Q(("key_space__isnull", False)),
                fields=("deposit_address",),
                name="payment_address_never_shared",
            ),
        ),
        migrations.AddField(
            model_name="unmatchedtransfer",
            name="payment",
            field=models.ForeignKey(
                blank=True,
                help_text="The payment whose deposit address it reached.",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="unmatched_transfers",
                to="payments.payment",
            ),
        ),
        migrations.AddConstraint(
            model_name="unmatchedtransfer",
            constraint=models.UniqueConstraint(
                fields=("chain", "txid", "kind", "output_index"), name="unmatched_transfer_unique"
            ),
        ),
        migrations.AddConstraint(
            model_name="unmatchedtransfer",
            constraint=models.CheckConstraint(
                condition=models.Q(("amount__gt", 0)), name="unmatched_transfer_amount_positive"
            ),
        ),
        migrations.AlterField(
            model_name="paymenttransaction",
            name="txid",
            field=models.CharField(max_length=160),
        ),
    ]
