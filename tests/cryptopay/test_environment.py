"""The suite itself runs on the real services, never silently on the embedded fallbacks."""

from django.conf import settings
from django.db import connection


def test_the_suite_runs_on_postgresql_and_redis():
    assert connection.vendor == "postgresql"
    assert settings.CACHES["default"]["BACKEND"] == "django_redis.cache.RedisCache"
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert settings.DEBUG is False
