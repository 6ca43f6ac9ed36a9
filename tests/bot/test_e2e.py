"""End to end: the real app under daphne and a real worker, on the test database.

Signed webhook payloads go over real HTTP to daphne; the worker runs the real engine; replies
arrive over real HTTP at the fake Graph API; the LLM is the fake OpenAI-compatible server.
"""

import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from bot.models import Conversation, Direction, Message, MessageStatus
from bot.webhook import signature_for
from clinics import services
from clinics.models import Appointment, AppointmentStatus, Patient, Slot, SlotStatus
from tests.bot.test_processing import reply_message, text_message, webhook_body
from tests.conftest import eventually
from tests.fakes import graph_server, openai_server

fake_graph = graph_server.fake_graph  # the fixtures
fake_openai = openai_server.fake_openai

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
APP_SECRET = "e2e-app-secret"
ANA_WA = "573001234567"
STRANGER_WA = "573119998877"
NEW_WA = "573205556677"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """daphne + run_worker subprocesses; `post()` sends a webhook body over HTTP."""

    def __init__(self, tmp_path: Path, graph_url: str, openai_url: str) -> None:
        db = connection.settings_dict
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
            "DATABASE_URL": (
                f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
            ),
            "REDIS_URL": settings.REDIS_URL,
            "SECRET_KEY": "e2e-tests",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "WHATSAPP_API_URL": graph_url,
            "WHATSAPP_ACCESS_TOKEN": "e2e-access-token",
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": "e2e-verify",
            "OPENAI_API_KEY": "e2e-key",
            "OPENAI_BASE_URL": openai_url,
            "OPENAI_TIMEOUT_SECONDS": "1",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        return proc

    def start(self) -> "App":
        self.web = self._spawn(
            "web", "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
            "sophia_web.asgi:application",
        )  # fmt: skip
        self.worker = self._spawn(
            "worker", "manage.py", "run_worker", "--interval", "0.05", "--processes", "1"
        )

        def up() -> bool:
            try:
                return self.client.get("/health/").status_code == 200
            except httpx.TransportError:
                return False

        eventually(up, what="daphne serving /health/")
        return self

    def stop(self) -> None:
        self.client.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def post(self, body: bytes, signature: str | None = None) -> httpx.Response:
        """Signed with the app secret unless `signature` is given ("" sends no header)."""
        headers = {"Content-Type": "application/json"}
        signature = signature_for(body, APP_SECRET) if signature is None else signature
        if signature:
            headers["X-Hub-Signature-256"] = signature
        return self.client.post("/whatsapp/webhook/", content=body, headers=headers)


@pytest.fixture
def app(transactional_db, fake_graph, fake_openai, tmp_path):
    running = App(tmp_path, fake_graph.url, fake_openai.base_url).start()
    yield running
    running.stop()  # before the test database is flushed


class Phone:
    """One WhatsApp number talking to the running app."""

    def __init__(self, app: App, graph, clinic, wa_id: str) -> None:
        self.app, self.graph, self.clinic, self.wa_id = app, graph, clinic, wa_id

    def send(self, message: dict) -> list:
        """Post one message; wait until its turn ran and its replies arrived; those replies."""
        before = len(self.graph.messages_to(self.wa_id))
        response = self.app.post(webhook_body(self.clinic.phone_number_id, [message]))
        assert response.status_code == 200

        def answered() -> bool:
            turn_done = Message.objects.filter(
                wa_message_id=message["id"], status=MessageStatus.PROCESSED
            ).exists()
            unsent = Message.objects.filter(
                conversation__wa_id=self.wa_id,
                direction=Direction.OUT,
                status__in=[MessageStatus.QUEUED, MessageStatus.SENDING],
            ).exists()
            return turn_done and not unsent

        eventually(answered, what=f"the turn for {message.get('text', message)}")
        return self.graph.messages_to(self.wa_id)[before:]

    def say(self, text: str) -> list:
        return self.send(text_message(text, wa_id=self.wa_id))

    def tap_row(self, replies: list, index: int = 0) -> list:
        listing = next(r for r in reversed(replies) if r.rows)
        row = listing.rows[index]
        return self.send(reply_message(row["id"], row["title"], wa_id=self.wa_id))

    def tap_button(self, replies: list, button_id: str) -> list:
        buttons = next(r for r in reversed(replies) if r.buttons).buttons
        button = next(b for b in buttons if b["id"] == button_id)
        return self.send(
            reply_message(button["id"], button["title"], kind="button_reply", wa_id=self.wa_id)
        )


def texts(replies: list) -> str:
    return "\n".join(r.text for r in replies)


def book_from_symptoms(phone: Phone, symptoms: str) -> list:
    listing = phone.say(symptoms)
    assert any(r.rows for r in listing), texts(listing)
    confirm = phone.tap_row(listing)
    assert any(r.buttons for r in confirm), texts(confirm)
    return phone.tap_button(confirm, "confirm:yes")


def test_it_books_ana_from_her_own_number(app, fake_graph, fake_openai, clinic, slots, patient):
    started = timezone.now()
    ana = Phone(app, fake_graph, clinic, ANA_WA)
    ana.say("hola")
    identified = ana.say("1020304050")
    assert "Ana" in texts(identified)
    done = book_from_symptoms(ana, "tengo fiebre y dolor de cabeza")

    appointment = Appointment.objects.get(patient=patient)
    assert appointment.status == AppointmentStatus.BOOKED
    # The first row offered is the earliest bookable time: the fixture's slots, or today's ones
    # when the worker's agenda job generated them from the doctor's schedule first.
    earliest = (
        Slot.objects.filter(
            doctor_id=slots[0].doctor_id,
            start_at__gte=started + dt.timedelta(minutes=clinic.min_notice_minutes),
        )
        .exclude(status=SlotStatus.BLOCKED)
        .order_by("start_at", "id")
        .first()
    )
    assert appointment.slot_id == earliest.pk
    assert "fiebre" in appointment.patient_notes
    assert "Dr. Carlos García" in texts(done)
    assert fake_openai.requests == []  # the deterministic path never asks the LLM
    assert any(r.is_typing for r in fake_graph.requests)


def test_it_registers_a_new_patient_then_books(app, fake_graph, clinic, slots):
    newcomer = Phone(app, fake_graph, clinic, NEW_WA)
    newcomer.say("buenas tardes")
    asked_birth_date = newcomer.say("55667788")  # the question any document gets
    assert "fecha de nacimiento" in texts(asked_birth_date)
    asked_name = newcomer.say("14/03/1990")
    assert "nombre" in texts(asked_name).lower()
    newcomer.say("Pedro Ruiz Gómez")
    book_from_symptoms(newcomer, "tengo gripa y malestar")

    pedro = Patient.objects.get(clinic=clinic, document="55667788")
    assert pedro.full_name == "Pedro Ruiz Gómez"
    assert pedro.whatsapp_id == NEW_WA
    assert Appointment.objects.get(patient=pedro).status == AppointmentStatus.BOOKED


def test_it_stops_a_stranger_typing_anas_document(app, fake_graph, clinic, slots, patient):
    services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slots[3].pk,
        actor=services.Actor.system("test"),
        source="staff",
        notes="control de psicología",
    )
    stranger = Phone(app, fake_graph, clinic, STRANGER_WA)
    asked = stranger.say("1020304050")
    assert "fecha de nacimiento" in texts(asked)
    looked = stranger.say("mis citas")
    for wrong in ("01/01/1990", "02/02/1990", "03/03/1990"):
        looked += stranger.say(wrong)
        looked += stranger.say("1020304050")  # the counts hold across tries

    seen = texts(asked + looked)
    assert "Ana" not in seen and "Gómez" not in seen
    assert "Dr. Carlos García" not in seen and "psicolog" not in seen.lower()
    assert not any(r.rows for r in asked + looked)
    conversation = Conversation.objects.get(clinic=clinic, wa_id=STRANGER_WA)
    assert conversation.needs_staff
    assert conversation.patient_id is None
    patient.refresh_from_db()
    assert patient.whatsapp_id == ANA_WA


def test_it_answers_from_rules_when_the_llm_is_slow(
    app, fake_graph, fake_openai, clinic, slots, patient
):
    fake_openai.delay = 5.0  # the app gives up after OPENAI_TIMEOUT_SECONDS=1
    ana = Phone(app, fake_graph, clinic, ANA_WA)
    ana.say("1020304050")
    replies = ana.say("quisiera saber si tienen parqueadero para carros grandes")
    assert replies and all(r.text for r in replies)
    assert fake_openai.requests  # it did ask, and did not wait for the answer


def test_it_answers_from_rules_when_the_llm_is_down(app, fake_graph, fake_openai, clinic, patient):
    fake_openai.stop()  # nothing listens any more
    ana = Phone(app, fake_graph, clinic, ANA_WA)
    ana.say("1020304050")
    replies = ana.say("quisiera saber si tienen parqueadero para carros grandes")
    assert replies and all(r.text for r in replies)


def test_it_keeps_serving_after_bad_requests(app, fake_graph, clinic, patient):
    body = webhook_body(clinic.phone_number_id, [text_message("hola", wa_id=ANA_WA)])
    assert app.post(body, signature="sha256=" + "0" * 64).status_code == 403
    assert app.post(body, signature="").status_code == 403
    malformed = b'{"entry": [ {"changes": '
    assert app.post(malformed).status_code == 400
    unknown = webhook_body("999999999999999", [text_message("hola", wa_id=ANA_WA)])
    assert app.post(unknown).status_code == 200
    assert app.post(b"x" * (3 * 1024 * 1024)).status_code == 413
    assert not Message.objects.filter(direction=Direction.IN).exists()

    ana = Phone(app, fake_graph, clinic, ANA_WA)
    assert ana.say("hola")  # still serving, still answering
    assert app.web.poll() is None and app.worker.poll() is None
