import secrets
import string

from django.db import migrations, models

import payments.models

_ALPHABET = string.ascii_letters + string.digits


def fill_tokens(apps, schema_editor):
    # AddField evaluates a callable default once: give every existing payment its own token.
    Payment = apps.get_model("payments", "Payment")
    for payment in Payment.objects.filter(checkout_token__isnull=True).only("pk").iterator():
        token = "".join(secrets.choice(_ALPHABET) for _ in range(32))
        Payment.objects.filter(pk=payment.pk).update(checkout_token=token)


class Migration(migrations.Migration):
    dependencies = [("payments", "0003_chains")]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="checkout_token",
            field=models.CharField(max_length=64, null=True, editable=False),
        ),
        migrations.RunPython(fill_tokens, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="payment",
            name="checkout_token",
            field=models.CharField(
                max_length=64,
                unique=True,
                default=payments.models.new_checkout_token,
                editable=False,
            ),
        ),
    ]
