"""The demo simulator shows a template's quick replies (reminders, waitlist offers) as buttons and
sends a tap back as WhatsApp does: a "button" message carrying the payload."""

import pytest

from bot import simulator, whatsapp
from bot.models import Message
from bot.processing import to_inbound
from outreach.reminders import template_components
from tests.bot.test_simulator import PHONE, graph_post, login, send

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _simulator_on(settings):
    settings.DEBUG = False
    settings.SOPHIA_SIMULATOR = True
    settings.WHATSAPP_APP_SECRET = "sim-secret"
    settings.WHATSAPP_ACCESS_TOKEN = "sim-token"


def test_it_shows_a_reminders_quick_replies_and_sends_a_tap_as_a_button_message(
    client, clinic, receptionist
):
    login(client, receptionist)
    components = template_components(
        "reminder:confirm:7",
        "reminder:cancel:7",
        ["Ana", "jueves 3 de diciembre", "9:00 a. m.", "Dr. García"],
    )
    body = whatsapp.template_payload(PHONE, "recordatorio_cita", "es", components)
    assert graph_post(client, clinic.phone_number_id, body).status_code == 200
    (item,) = simulator.items_after(clinic.phone_number_id, PHONE, 0)
    assert "recordatorio_cita" in item["text"] and "jueves 3 de diciembre" in item["text"]
    assert item["kind"] == "buttons"
    assert [b["title"] for b in item["buttons"]] == ["Confirmar", "Cancelar"]
    assert "template_button" in item["buttons"][1]["vals"]

    send(
        client,
        clinic,
        reply_type="template_button",
        reply_id="reminder:confirm:7",
        reply_title="Confirmar",
    )
    inbound = to_inbound(Message.objects.get(direction="in"))
    assert (inbound.kind, inbound.reply_id, inbound.text) == (
        "button",
        "reminder:confirm:7",
        "Confirmar",
    )
