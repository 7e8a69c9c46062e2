from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("resilience", "0002_dependency_state"),
    ]

    operations = [
        migrations.CreateModel(
            name="BreakerIsolation",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=300, unique=True)),
                ("isolated_at", models.DateTimeField()),
            ],
        ),
    ]
