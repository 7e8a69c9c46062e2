from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("resilience", "0004_breaker_permission"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotencykey",
            name="response_sealed",
            field=models.BooleanField(
                default=False, help_text="The body is encrypted: the answer carries a secret."
            ),
        ),
    ]
