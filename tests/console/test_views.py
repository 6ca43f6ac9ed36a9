"""The console's pages and actions, for staff of the clinic and (404) for anyone else."""

import datetime as dt

import pytest
from django.utils import timezone

from bot.models import Conversation, ConversationMode, Direction, Message, MessageStatus, Takeover
from clinics.models import Appointment, AuditEvent
from console.models import Note, ReplyTemplate
from tests.conftest import make_user
from tests.console.conftest import add_message, logged_in

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


def test_it_shows_the_inbox_with_the_conversation(staff_client, conversation):
    response = staff_client.get("/")
    assert response.status_code == 200
    html = response.text
    assert "Ana María Gómez" in html
    assert "¡Hola Ana! ¿Qué síntomas tienes?" in html
    assert f'ws-connect="/ws/live/{conversation.clinic_id}/"' in html
    assert "data-live-seq" in html


def test_it_opens_a_conversation_with_its_stream_and_side_card(staff_client, conversation):
    response = staff_client.get(f"/conversaciones/{conversation.pk}/")
    assert response.status_code == 200
    html = response.text
    assert "Hola, necesito una cita" in html
    assert "1020304050" in html  # the patient's document, in the side card
    assert "Tomar el control" in html
    assert f"/ws/live/{conversation.clinic_id}/conversation/{conversation.pk}/" in html


def test_it_answers_404_to_another_clinics_staff(other_client, conversation):
    assert other_client.get(f"/conversaciones/{conversation.pk}/").status_code == 404
    for action in ("tomar", "responder", "nota", "cerrar", "devolver", "agendar", "cancelar"):
        response = other_client.post(f"/conversaciones/{conversation.pk}/{action}/", {"text": "x"})
        assert response.status_code == 404, action
    assert other_client.get(f"/conversaciones/{conversation.pk}/horarios/").status_code == 404
    assert not Takeover.objects.exists()
    assert not Note.objects.exists()


def test_it_keeps_other_clinics_conversations_out_of_the_inbox(
    staff_client, other_client, conversation
):
    assert "Ana María Gómez" not in other_client.get("/").text
    assert "Ana María Gómez" not in other_client.get("/bandeja/filas/?q=Ana").text


def test_it_filters_and_searches_the_inbox(staff_client, clinic, conversation):
    other = Conversation.objects.create(
        clinic=clinic, wa_id="573119998877", contact_name="Pedro", urgent=True
    )
    add_message(other, Direction.IN, "Me duele el pecho")
    urgent = staff_client.get("/bandeja/filas/?view=urgent").text
    assert "Pedro" in urgent and "Ana María" not in urgent
    assert "Ana María" in staff_client.get("/bandeja/filas/?q=ana").text
    assert "Ana María" in staff_client.get("/bandeja/filas/?q=102030").text
    assert "Pedro" in staff_client.get("/bandeja/filas/?q=998877").text
    assert "Pedro" not in staff_client.get("/bandeja/filas/?q=ana").text
    everything = staff_client.get("/").text
    assert everything.index("Pedro") < everything.index("Ana María")  # urgent on top


def test_it_pages_the_inbox_by_keyset(staff_client, clinic):
    now = timezone.now()
    Conversation.objects.bulk_create(
        Conversation(
            clinic=clinic, wa_id=f"5730000{i:05d}", contact_name=f"Paciente {i:02d}",
            last_activity_at=now - dt.timedelta(minutes=i),
        )
        for i in range(30)
    )  # fmt: skip
    first = staff_client.get("/bandeja/filas/").text
    assert "Paciente 00" in first and "Paciente 24" in first and "Paciente 25" not in first
    cursor = first.split("cursor=")[1].split('"')[0]
    second = staff_client.get(f"/bandeja/filas/?cursor={cursor}").text
    assert "Paciente 25" in second and "Paciente 29" in second and "Paciente 24" not in second
    assert staff_client.get("/bandeja/filas/?cursor=garbage").status_code == 200


def test_it_takes_over_replies_and_hands_back(staff_client, receptionist, conversation, fake_graph):
    response = staff_client.post(f"/conversaciones/{conversation.pk}/tomar/", headers=HTMX)
    assert response.status_code == 200
    conversation.refresh_from_db()
    assert conversation.mode == ConversationMode.HUMAN
    assert conversation.assigned_to == receptionist
    assert Takeover.objects.get(ended_at=None).taken_by == receptionist

    response = staff_client.post(
        f"/conversaciones/{conversation.pk}/responder/",
        {"text": "Hola Ana, soy Laura"},
        headers=HTMX,
    )
    assert response.status_code == 200
    sent = Message.objects.get(text="Hola Ana, soy Laura")
    assert sent.sent_by == receptionist
    assert sent.status == MessageStatus.SENT
    assert fake_graph.messages_to(conversation.wa_id)[-1].text == "Hola Ana, soy Laura"

    response = staff_client.post(f"/conversaciones/{conversation.pk}/devolver/", headers=HTMX)
    conversation.refresh_from_db()
    assert conversation.mode == ConversationMode.BOT
    assert conversation.assigned_to is None
    assert conversation.state == "IDENTIFIED"
    assert len(fake_graph.messages_to(conversation.wa_id)) == 1  # hand-back sent nothing
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"conversation.take_over", "conversation.reply", "conversation.hand_back"} <= actions


def test_it_refuses_a_reply_without_taking_over(staff_client, clinic, conversation):
    colleague = make_user("colega", clinic)
    logged_in(colleague).post(f"/conversaciones/{conversation.pk}/tomar/")
    response = staff_client.post(
        f"/conversaciones/{conversation.pk}/responder/", {"text": "hola"}, headers=HTMX
    )
    assert "Otra persona del equipo tiene esta conversación" in response.text
    assert not Message.objects.filter(text="hola").exists()


def test_it_allows_only_templates_outside_the_24_hour_window(
    staff_client, clinic, conversation, fake_graph
):
    Conversation.objects.filter(pk=conversation.pk).update(
        last_inbound_at=timezone.now() - dt.timedelta(hours=25)
    )
    template = ReplyTemplate.objects.create(
        clinic=clinic,
        name="seguimiento",
        label="Seguimiento",
        body="Hola {{1}}, ¿seguimos con tu cita del {{2}}?",
    )
    staff_client.post(f"/conversaciones/{conversation.pk}/tomar/")
    page = staff_client.get(f"/conversaciones/{conversation.pk}/").text
    assert "solo entrega las plantillas aprobadas" in page
    assert "Seguimiento" in page
    refused = staff_client.post(
        f"/conversaciones/{conversation.pk}/responder/", {"text": "hola"}, headers=HTMX
    )
    assert "ventana de 24 horas está cerrada" in refused.text
    staff_client.post(
        f"/conversaciones/{conversation.pk}/plantilla/",
        {"template": template.pk, "values": ["Ana", "lunes"]},
        headers=HTMX,
    )
    sent = Message.objects.get(kind="template")
    assert sent.text == "Hola Ana, ¿seguimos con tu cita del lunes?"
    body = fake_graph.messages_to(conversation.wa_id)[-1].json
    assert body["template"]["name"] == "seguimiento"
    assert body["template"]["components"][0]["parameters"][1]["text"] == "lunes"


def test_it_keeps_notes_private(staff_client, conversation, fake_graph):
    staff_client.post(f"/conversaciones/{conversation.pk}/nota/", {"text": "Llamar a la mamá"})
    assert Note.objects.get().text == "Llamar a la mamá"
    assert fake_graph.messages == []
    assert "Llamar a la mamá" in staff_client.get(f"/conversaciones/{conversation.pk}/").text


def test_it_closes_a_conversation(staff_client, conversation):
    Conversation.objects.filter(pk=conversation.pk).update(urgent=True, needs_staff=True)
    staff_client.post(f"/conversaciones/{conversation.pk}/cerrar/")
    conversation.refresh_from_db()
    assert conversation.closed_at is not None
    assert not conversation.urgent and not conversation.needs_staff
    assert "Ana María" in staff_client.get("/bandeja/filas/?view=closed").text


def test_it_books_cancels_and_reschedules_for_the_patient(
    staff_client, receptionist, conversation, slots
):
    picker = staff_client.get(f"/conversaciones/{conversation.pk}/horarios/").text
    assert "Dr. Carlos García" in picker
    staff_client.post(f"/conversaciones/{conversation.pk}/agendar/", {"slot": slots[5].pk})
    booked = Appointment.objects.get()
    assert booked.source == "staff"
    assert AuditEvent.objects.filter(
        action="appointment.book", actor_id=str(receptionist.pk)
    ).exists()
    staff_client.post(
        f"/conversaciones/{conversation.pk}/agendar/",
        {"slot": slots[7].pk, "reschedule": booked.pk},
    )
    moved = Appointment.objects.exclude(pk=booked.pk).get()
    assert moved.slot == slots[7]
    staff_client.post(f"/conversaciones/{conversation.pk}/cancelar/", {"appointment": moved.pk})
    moved.refresh_from_db()
    assert moved.status == "cancelled"


def test_it_shows_live_stats(staff_client, conversation):
    response = staff_client.get("/estadisticas/")
    assert response.status_code == 200
    assert "Reservas por hora hoy" in response.text
    assert "<svg" in response.text
