from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("resilience", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="DependencyState",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=200, unique=True)),
                ("kind", models.CharField(blank=True, max_length=40)),
                ("level", models.CharField(choices=[("healthy", "Healthy"), ("degraded", "Degraded"), ("critical", "Critical"), ("unknown", "Unknown")], default="unknown", max_length=10)),
                ("reason", models.CharField(blank=True, max_length=500)),
                ("level_since", models.DateTimeField(blank=True, null=True)),
                ("checked_at", models.DateTimeField(blank=True, null=True)),
                ("probe_ms", models.PositiveIntegerField(blank=True, null=True)),
                ("diagnostics", models.JSONField(blank=True, default=dict)),
                ("recovery_isolated", models.BooleanField(default=False, help_text="Its breaker was isolated by recovery (switched to a backup).")),
                ("recovery_attempts", models.PositiveIntegerField(default=0)),
                ("recovery_failures", models.PositiveIntegerField(default=0)),
                ("last_recovery_at", models.DateTimeField(blank=True, null=True)),
                ("last_recovery_outcome", models.CharField(blank=True, max_length=20)),
                ("last_recovery_detail", models.CharField(blank=True, max_length=500)),
            ],
        ),
    ]
