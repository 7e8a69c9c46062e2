"""The suite itself runs on the real services, never silently on the embedded fallbacks."""

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection


def test_the_suite_runs_on_postgresql_and_redis():
    assert connection.vendor == "postgresql"
    assert settings.CACHES["default"]["BACKEND"] == "django_redis.cache.RedisCache"
    assert (
        settings.CHANNEL_LAYERS["default"]["BACKEND"] == "cryptopay.channel_layer.RedisChannelLayer"
    )
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert settings.DEBUG is False


@pytest.mark.django_db
def test_every_model_change_has_a_migration():
    out = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out)
    except SystemExit:
        pytest.fail(f"models changed without a migration:\n{out.getvalue()}")
