"""Horizontal scale, end to end: a WhatsApp booking processed by a worker reaches a receptionist's
live agenda websocket open on the OTHER web process.

Two daphne processes (a, b) and two workers share PostgreSQL and Redis (tests/test_scale.py's
Cluster). The patient's messages go to web a; a worker runs the turns and books; the booking's
domain event is broadcast on the Redis channel layer; the receptionist's browser, logged in on
web b, holds `/ws/agenda/` there and receives the slot's new cell.
"""

import json

import httpx
import pytest

from bot.models import Direction, Message, MessageStatus
from bot.webhook import signature_for
from tests.bot.test_e2e import Phone, book_from_symptoms
from tests.bot.test_processing import webhook_body
from tests.conftest import eventually
from tests.fakes import graph_server
from tests.test_scale import ANA_WA, APP_SECRET, Cluster

fake_graph = graph_server.fake_graph  # the fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class PatientPhone(Phone):
    """tests.bot.test_e2e.Phone with more patience: four servers share two busy cores here."""

    def send(self, message: dict) -> list:
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

        eventually(answered, timeout=120, what=f"the turn for {message.get('text', message)}")
        return self.graph.messages_to(self.wa_id)[before:]


class WebA:
    """What tests.bot.test_e2e.Phone needs of an app: signed webhook POSTs (to web a)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def post(self, body: bytes) -> httpx.Response:
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature_for(body, APP_SECRET),
        }
        return self.client.post("/whatsapp/webhook/", content=body, headers=headers)


@pytest.fixture
def cluster(transactional_db, fake_graph, tmp_path):
    running = Cluster(tmp_path, fake_graph.url).start()
    yield running
    running.stop()


def test_a_booking_by_whatsapp_on_web_a_reaches_the_agenda_socket_on_web_b(
    cluster, page, fake_graph, clinic, slots, patient, receptionist
):
    web_b = str(cluster.web["b"].base_url).rstrip("/")
    page.goto(f"{web_b}/cuenta/entrar/")
    page.get_by_label("Nombre de usuario").fill(receptionist.get_username())
    page.get_by_label("Contraseña").fill("test-password-123")
    page.get_by_role("button", name="Entrar").click()
    page.wait_for_url(f"{web_b}/")
    ws_url = web_b.replace("http://", "ws://") + f"/ws/agenda/?clinic={clinic.pk}"
    page.evaluate(
        """url => new Promise((resolve, reject) => {
            window.frames_seen = [];
            const socket = new WebSocket(url);
            socket.onmessage = event => window.frames_seen.push(event.data);
            socket.onopen = () => resolve(true);
            socket.onerror = () => reject(new Error("websocket refused"));
        })""",
        ws_url,
    )

    ana = PatientPhone(WebA(cluster.web["a"]), fake_graph, clinic, ANA_WA)
    ana.say("hola")
    ana.say(patient.document)
    book_from_symptoms(ana, "tengo fiebre y dolor de cabeza")
    booked = patient.appointments.get()

    def cell_arrived() -> bool:
        frames = [json.loads(f) for f in page.evaluate("window.frames_seen")]
        return any(
            f.get("event") == "agenda-cell"
            and f'id=\\"slot-{booked.slot_id}\\"' in json.dumps(f)
            and "appt-booked" in json.dumps(f)
            for f in frames
        )

    eventually(cell_arrived, timeout=60, what="the booked slot's cell on web b's socket")
