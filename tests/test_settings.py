import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from sophia_web.settings import database_from_url


def test_it_runs_tests_on_postgresql_and_redis(db):
    assert connection.vendor == "postgresql"
    assert settings.REDIS_URL.startswith("redis://")
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"


def test_it_prepares_repeated_statements_on_postgresql(monkeypatch):
    url = "postgresql://sophia@127.0.0.1/sophia"
    assert database_from_url(url)["OPTIONS"]["prepare_threshold"] == 5
    monkeypatch.setenv("DB_PREPARE_THRESHOLD", "none")
    assert database_from_url(url)["OPTIONS"]["prepare_threshold"] is None
    monkeypatch.setenv("DB_PREPARE_THRESHOLD", "0")
    assert database_from_url(url)["OPTIONS"]["prepare_threshold"] == 0


def test_it_refuses_a_prepare_threshold_that_is_not_a_number(monkeypatch):
    monkeypatch.setenv("DB_PREPARE_THRESHOLD", "lots")
    with pytest.raises(ImproperlyConfigured, match="DB_PREPARE_THRESHOLD"):
        database_from_url("postgresql://sophia@127.0.0.1/sophia")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's prepared statements")
def test_it_runs_with_prepared_statements(db):
    connection.ensure_connection()
    assert connection.connection.prepare_threshold == 5
