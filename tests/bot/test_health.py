"""/health/ (database and Redis with latencies) and the benchmark's do-nothing endpoint."""

import pytest
from django.test import Client

from bot import state


@pytest.fixture(autouse=True)
def _fresh_state():
    state.reset()
    yield
    state.reset()


@pytest.mark.django_db
def test_it_reports_database_and_redis_up():
    response = Client().get("/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["services"]["database"]["status"] == "up"
    assert body["services"]["redis"]["status"] == "up"
    assert body["services"]["redis"]["latency_ms"] >= 0


@pytest.mark.django_db
def test_it_stays_healthy_with_redis_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/health/")
    assert response.status_code == 200  # the bot answers without Redis
    assert response.json()["services"]["redis"] == {"status": "down"}


@pytest.mark.django_db
def test_it_says_when_redis_is_not_configured(settings):
    settings.REDIS_URL = ""
    assert Client().get("/health/").json()["services"]["redis"] == {"status": "not configured"}


def test_it_refuses_other_methods_on_health():
    assert Client().post("/health/").status_code == 405


def test_it_hides_the_noop_endpoint_in_production(settings, monkeypatch):
    settings.DEBUG = False
    monkeypatch.delenv("SOPHIA_BENCH", raising=False)
    assert Client().post("/bench/noop/").status_code == 404


def test_it_serves_the_noop_endpoint_for_benchmarks(settings, monkeypatch):
    settings.DEBUG = False
    monkeypatch.setenv("SOPHIA_BENCH", "1")
    response = Client().post("/bench/noop/", b"{}", content_type="application/json")
    assert response.status_code == 200
    assert response.content == b"ok"
