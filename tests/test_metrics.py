"""/metrics: protected, every documented metric present, the numbers move, several processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import Client

from bot.models import Conversation
from clinics import services
from clinics.models import AppointmentSource, Patient
from sophia_web import metrics

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent

DOCUMENTED = [
    "sophia_conversaciones_activas",
    "sophia_citas_agendadas_total",
    "sophia_locks_active",
    "sophia_typing_active",
    "sophia_http_requests_total",
    "sophia_http_request_duration_seconds_bucket",
    "sophia_bot_turn_duration_seconds_bucket",
    "sophia_whatsapp_webhook_duplicates_total",
    "sophia_llm_calls_total",
    "sophia_llm_errors_total",
    "sophia_llm_latency_seconds_bucket",
    "sophia_llm_tokens_total",
    "sophia_outbox_backlog",
    "sophia_outbox_oldest_age_seconds",
    "sophia_reminders_sent_total",
    "sophia_waitlist_offers_total",
    "sophia_booking_conflicts_total",
    "sophia_outgoing_webhook_failures_total",
    "sophia_worker_heartbeat_age_seconds",
    "sophia_locks_orphaned",
    "sophia_conversaciones_stale",
    "sophia_db_connections",
    "sophia_redis_memory_used_bytes",
]


def scrape(**headers) -> str:
    response = Client(headers=headers).get("/metrics")
    assert response.status_code == 200, response.content
    return response.content.decode()


def value(text: str, sample: str) -> float:
    """The value of one sample line (`name{labels}` exactly as exposed); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_it_needs_the_token_when_one_is_set(settings):
    settings.METRICS_TOKEN = "scrape-secret"
    assert Client().get("/metrics").status_code == 403
    wrong = Client(headers={"Authorization": "Bearer nope"}).get("/metrics")
    assert wrong.status_code == 403
    assert "sophia_up" in scrape(Authorization="Bearer scrape-secret")


def test_without_a_token_only_private_addresses_may_scrape(settings):
    settings.METRICS_TOKEN = ""
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="8.8.8.8").get("/metrics").status_code == 403


def test_every_documented_metric_is_exposed(clinic, patient, slots):
    # Counters with labels appear once used; use each once.
    metrics.LLM_CALLS.labels(purpose="classify")
    metrics.LLM_ERRORS.labels(purpose="classify")
    metrics.LLM_LATENCY.labels(purpose="classify")
    metrics.LLM_TOKENS.labels(kind="prompt")
    metrics.BOOKING_CONFLICTS.labels(code="slot_taken")
    metrics.CITAS_AGENDADAS.labels(clinic=str(clinic.pk))
    Client().get("/health/")
    text = scrape()
    missing = [name for name in DOCUMENTED if f"\n{name}" not in text]
    assert not missing


def test_the_numbers_move(clinic, patient, slots, django_capture_on_commit_callbacks):
    before = scrape()
    booked = f'sophia_citas_agendadas_total{{clinic="{clinic.pk}"}}'
    conversation = Conversation.objects.create(clinic=clinic, wa_id="573001234567")
    r = redis.Redis.from_url(settings.REDIS_URL)
    r.set("sophia:lock:573001234567", "token", ex=60)
    r.set("sophia:lock:573009999999", "orphan")  # no TTL: an orphan
    r.set("sophia:typing:573001234567", "1", ex=5)
    with django_capture_on_commit_callbacks(execute=True):
        services.appointment_book(
            clinic=clinic,
            patient=patient,
            slot_id=slots[0].pk,
            actor=services.Actor.system("test"),
            source=AppointmentSource.STAFF,
        )
    Client().get("/api/v1/health/")

    after = scrape()
    assert value(after, booked) == value(before, booked) + 1
    assert value(after, "sophia_conversaciones_activas") == 1
    assert value(after, "sophia_locks_active") == 2
    assert value(after, "sophia_locks_orphaned") == 1
    assert value(after, "sophia_typing_active") == 1
    health = 'sophia_http_requests_total{method="GET",route="/api/v1/health/",status="2xx"}'
    assert value(after, health) == value(before, health) + 1
    assert value(after, "sophia_database_up") == 1 and value(after, "sophia_redis_up") == 1
    conversation.delete()


def test_counters_add_up_across_processes(tmp_path):
    """Two processes count into PROMETHEUS_MULTIPROC_DIR; a third (a web process) sees both."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
        "DATABASE_URL": (
            f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": "metrics-test",
    }
    count = "from sophia_web import metrics; metrics.REMINDERS_SENT.inc({})"
    for n in (2, 3):
        subprocess.run([sys.executable, "-c", count.format(n)], env=env, cwd=ROOT, check=True)
    read = (
        "import django; django.setup(); "
        "from prometheus_client import generate_latest; "
        "from sophia_web import monitoring; "
        "print(generate_latest(monitoring.registry()).decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", read], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    assert value(out, "sophia_reminders_sent_total") == 5
    # One file per process, named by host and pid (replicas in containers share the volume).
    names = [p.name for p in tmp_path.glob("counter_*.db")]
    assert len(names) == 3 and all("-" in name for name in names)


def test_booking_conflicts_count_whoever_books(clinic, patient, slots):
    taken = metrics.BOOKING_CONFLICTS.labels(code="slot_taken")
    before = taken._value.get()
    actor = services.Actor.system("test")
    services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slots[0].pk, actor=actor, source="staff"
    )
    other = Patient.objects.create(clinic=clinic, document="99887766", full_name="Luis Pérez")
    with pytest.raises(services.SlotTaken):
        services.appointment_book(
            clinic=clinic, patient=other, slot_id=slots[0].pk, actor=actor, source="staff"
        )
    with pytest.raises(services.SlotTaken):
        services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="someone")
    assert taken._value.get() == before + 2
