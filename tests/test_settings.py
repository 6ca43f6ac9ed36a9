from django.conf import settings
from django.db import connection


def test_it_runs_tests_on_postgresql_and_redis(db):
    assert connection.vendor == "postgresql"
    assert settings.REDIS_URL.startswith("redis://")
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
