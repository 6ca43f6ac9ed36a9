"""Horizontal scale for real: two daphne processes and two workers on one PostgreSQL and Redis.

- A message taken in by web A and processed by a worker reaches a subscriber of the dashboard's
  channel-layer group through Redis (the channel layer every web process listens on).
- Bookings made through the API on both web processes are delivered to the clinic's webhook
  endpoint once each, whichever worker sends them; /metrics on either web process sums the
  counters of all four processes.
- Reminders falling due are sent once each, whichever of the two workers claims them.
- A worker killed (SIGKILL) in the middle of a delivery: after the restart the same event (same
  id) is delivered again and the receiver, deduplicating by event id, applies it once.
"""

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.utils import timezone

from bot.models import Conversation
from bot.webhook import signature_for
from clinics import services
from clinics.models import AppointmentSource, Doctor, Patient
from integrations import webhooks
from integrations.keys import api_key_create
from integrations.models import ApiKey, WebhookDelivery
from outreach.models import OutreachSettings
from sophia_web import live
from tests.bot.test_processing import text_message, webhook_body
from tests.conftest import eventually, make_slots
from tests.fakes import graph_server, webhook_receiver

fake_graph = graph_server.fake_graph  # fixtures
receiver = webhook_receiver.receiver

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
APP_SECRET = "scale-app-secret"
ANA_WA = "573001234567"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Two daphne processes (a, b) and two workers, sharing the database, Redis and metrics."""

    def __init__(self, tmp_path: Path, graph_url: str) -> None:
        db = connection.settings_dict
        (tmp_path / "metrics").mkdir()
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
            "DATABASE_URL": (
                f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
            ),
            "REDIS_URL": settings.REDIS_URL,
            "SECRET_KEY": "scale-tests",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "WHATSAPP_API_URL": graph_url,
            "WHATSAPP_ACCESS_TOKEN": "scale-token",
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": "scale-verify",
            "OPENAI_API_KEY": "",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "SOPHIA_WEBHOOKS_ALLOW_HTTP": "1",
            "SOPHIA_WEBHOOKS_ALLOW_PRIVATE": "1",
            "SOPHIA_WEBHOOK_TIMEOUT_SECONDS": "1",
            "SOPHIA_WEBHOOK_LEASE_SECONDS": "3",
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.web: dict[str, httpx.Client] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.tmp_path / f"{name}.log").open("a")
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str) -> None:
        self.spawn(
            name,
            "manage.py",
            "run_worker",
            "--interval",
            "0.05",
            "--processes",
            "1",
            "--worker-id",
            name,
        )

    def start(self) -> "Cluster":
        try:
            return self._start()
        except BaseException:
            self.stop()  # never leave servers behind a failed start
            raise

    def _start(self) -> "Cluster":
        for name in ("a", "b"):
            port = free_port()
            self.spawn(
                f"web-{name}", "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                "sophia_web.asgi:application",
            )  # fmt: skip
            self.web[name] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        self.start_worker("worker-1")
        self.start_worker("worker-2")
        for client in self.web.values():

            def up(client=client) -> bool:
                try:
                    return client.get("/health/").status_code == 200
                except httpx.TransportError:
                    return False

            eventually(up, timeout=120, what="daphne serving /health/")
        return self

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for client in self.web.values():
            client.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(autouse=True)
def _allow_http(settings):
    settings.SOPHIA_WEBHOOKS_ALLOW_HTTP = True
    settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE = True


@pytest.fixture
def cluster(transactional_db, fake_graph, tmp_path):
    running = Cluster(tmp_path, fake_graph.url).start()
    yield running
    running.stop()  # before the test database is flushed


def metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_turn_processed_by_a_worker_reaches_the_dashboard_group_via_redis(
    cluster, clinic, patient
):
    conversation = Conversation.objects.create(clinic=clinic, wa_id=ANA_WA)
    layer = get_channel_layer()

    async def listen() -> list[dict]:
        channel = await layer.new_channel()
        await layer.group_add(f"conversation-{conversation.pk}", channel)
        # What the console's socket does: only watched groups get events.
        await asyncio.to_thread(live.watch, [f"conversation-{conversation.pk}"], channel)
        body = webhook_body(clinic.phone_number_id, [text_message("hola", wa_id=ANA_WA)])
        response = await asyncio.to_thread(
            cluster.web["a"].post,
            "/whatsapp/webhook/",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": signature_for(body, APP_SECRET),
            },
        )
        assert response.status_code == 200
        events = []
        while not any(e.get("data", {}).get("status") == "stopped" for e in events):
            events.append(await asyncio.wait_for(layer.receive(channel), timeout=60))
        return events

    # The typing events of the worker's turn, as sophia_web.live sends them to the console.
    events = [e for e in asyncio.run(listen()) if e.get("event") == "typing"]
    assert [e["data"]["status"] for e in events] == ["typing", "stopped"]
    assert all(e["type"] == "live.event" for e in events)
    assert all(e["data"]["conversation"] == conversation.pk for e in events)

    # The four processes' logs: JSON lines, the turn's lines tagged with the clinic and the
    # masked session id, and the patient's number in none of them.
    lines = [
        json.loads(line)
        for log in cluster.tmp_path.glob("*.log")
        for line in log.read_text().splitlines()
        if line.startswith("{")
    ]
    turn_lines = [line for line in lines if line.get("action") == "bot.turn"]
    assert turn_lines and all(line["session"] == "…4567" for line in turn_lines)
    assert all(line["clinic"] == clinic.pk for line in turn_lines)
    for log in cluster.tmp_path.glob("*.log"):
        assert ANA_WA not in log.read_text()


def test_bookings_on_both_web_processes_are_delivered_once_each_by_two_workers(
    cluster, clinic, patient, slots, receiver
):
    endpoint = webhooks.endpoint_create(clinic=clinic, url=receiver.url, events=["cita.creada"])
    receiver.secret = endpoint.secret
    _key, raw = api_key_create(clinic=clinic, name="HIS", scope=ApiKey.Scope.WRITE)
    headers = {"Authorization": f"Bearer {raw}"}
    for i, slot in enumerate(slots[:10]):
        web = cluster.web["a" if i % 2 else "b"]
        response = web.post(
            "/api/v1/citas/",
            json={"slot_id": slot.pk, "patient_id": patient.pk},
            headers={**headers, "Idempotency-Key": f"booking-{i}"},
        )
        assert response.status_code == 201, response.text
        # …and a client retry on the other web process books nothing more.
        other = cluster.web["b" if i % 2 else "a"]
        retry = other.post(
            "/api/v1/citas/",
            json={"slot_id": slot.pk, "patient_id": patient.pk},
            headers={**headers, "Idempotency-Key": f"booking-{i}"},
        )
        assert retry.status_code == 201 and retry.json() == response.json()

    receiver.wait_for(lambda requests: len(requests) >= 10)
    eventually(
        lambda: WebhookDelivery.objects.filter(status="delivered").count() == 10,
        what="10 deliveries recorded",
    )
    assert len(receiver.requests) == 10  # none twice
    assert len({r.event_id for r in receiver.requests}) == 10
    assert all(r.signature_ok for r in receiver.requests)
    assert set(WebhookDelivery.objects.values_list("attempts", flat=True)) == {1}

    # Counters from all four processes, read on either web process.
    token_free = {}  # loopback may scrape without METRICS_TOKEN
    for name in ("a", "b"):
        text = cluster.web[name].get("/metrics", headers=token_free).text
        assert metric(text, f'sophia_citas_agendadas_total{{clinic="{clinic.pk}"}}') == 10
        delivered = 'sophia_outgoing_webhook_deliveries_total{outcome="delivered"}'
        assert metric(text, delivered) == 10


def test_two_workers_send_each_due_reminder_once(cluster, clinic, fake_graph):
    """Reminders due in a few seconds for 12 appointments: both workers run the reminder jobs."""
    OutreachSettings.objects.create(
        clinic=clinic, hours_before=24, window_start=dt.time(0, 0), window_end=dt.time(23, 59, 59)
    )
    # All due at the same moment: twelve doctors, twelve patients, one slot each.
    start = (timezone.now() + dt.timedelta(hours=24, seconds=20)).replace(microsecond=0)
    appointments = []
    for n in range(12):
        other = Doctor.objects.create(clinic=clinic, full_name=f"Dr. Escala {n}")
        someone = Patient.objects.create(
            clinic=clinic,
            document=f"{70000000 + n}",
            full_name=f"Paciente Escala {n}",
            whatsapp_id=f"5730055{n:05d}",
        )
        [slot] = make_slots(other, start, 1)
        appointments.append(
            services.appointment_book(
                clinic=clinic,
                patient=someone,
                slot_id=slot.pk,
                actor=services.Actor.system("scale test"),
                source=AppointmentSource.STAFF,
            )
        )

    def reminded() -> list[str]:
        return [
            button["parameters"][0]["payload"]
            for r in fake_graph.requests
            if r.json.get("type") == "template"
            for button in r.json["template"]["components"][1:2]
        ]

    eventually(lambda: len(reminded()) >= 12, timeout=120, what="12 reminders sent")
    time.sleep(1)  # anything sent twice would arrive now
    assert sorted(reminded()) == sorted(f"reminder:confirm:{a.pk}" for a in appointments)


def test_a_worker_killed_mid_delivery_is_retried_and_the_event_lands_once(
    cluster, clinic, patient, slots, receiver
):
    endpoint = webhooks.endpoint_create(clinic=clinic, url=receiver.url, events=["cita.creada"])
    receiver.secret = endpoint.secret
    receiver.hang_next(1)
    _key, raw = api_key_create(clinic=clinic, name="HIS", scope=ApiKey.Scope.WRITE)
    response = cluster.web["a"].post(
        "/api/v1/citas/",
        json={"slot_id": slots[0].pk, "patient_id": patient.pk},
        headers={"Authorization": f"Bearer {raw}"},
    )
    assert response.status_code == 201
    receiver.wait_for(lambda requests: len(requests) == 1)  # a worker is mid-request
    cluster.kill("worker-1")
    cluster.kill("worker-2")
    receiver.release()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.leased_until is not None

    cluster.start_worker("worker-3")  # the restart
    receiver.wait_for(lambda requests: len(requests) == 2)
    eventually(
        lambda: WebhookDelivery.objects.filter(status="delivered").exists(),
        what="the delivery recorded",
    )
    first, second = receiver.requests
    assert first.event_id == second.event_id == str(delivery.event_id)
    assert list(receiver.applied) == [str(delivery.event_id)]  # the effect landed once
