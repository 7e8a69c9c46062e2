from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("resilience", "0003_breaker_isolation"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="dependencystate",
            options={"permissions": [("change_breaker", "Can isolate and close circuit breakers")]},
        ),
    ]
