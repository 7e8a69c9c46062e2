from django.db import migrations, models

RANKS = {"high": 0, "normal": 1, "low": 2}


def rank_existing(apps, schema_editor):
    delivery = apps.get_model("notifications", "WebhookDelivery")
    for name, rank in RANKS.items():
        delivery.objects.filter(event__priority=name).update(priority=rank)


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0003_event_streams"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookdelivery",
            name="priority",
            field=models.PositiveSmallIntegerField(
                default=1,
                help_text="The event's rank (0 High, 1 Normal, 2 Low): the sweep's order.",
            ),
        ),
        migrations.AddField(
            model_name="webhookdelivery",
            name="claim",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="webhookdelivery",
            name="claimed_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(rank_existing, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name="webhookdelivery", name="delivery_due"),
        migrations.AddIndex(
            model_name="webhookdelivery",
            index=models.Index(
                condition=models.Q(("status", "pending")),
                fields=["priority", "next_attempt_at"],
                name="delivery_due_by_priority",
            ),
        ),
    ]
