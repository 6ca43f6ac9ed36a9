"""Reminder and waitlist answers end to end: the patient's template button arrives at the
webhook, the turn runs through bot.processing and the engine's ORM gateway, and the reply goes
out through the fake Graph API."""

import datetime as dt
import itertools

import pytest
from django.utils import timezone

from clinics import services
from clinics.models import Appointment, AppointmentStatus, AuditEvent
from outreach import reminders, waitlist
from outreach.models import OutreachSettings, WaitlistOffer
from tests.bot.test_processing import APP_SECRET, WA_ID, receive, run_ready_tasks, text_message
from tests.conftest import make_slots
from tests.fakes import graph_server
from tests.outreach.conftest import book, make_patient

fake_graph = graph_server.fake_graph  # the fixture
_ids = itertools.count(1)


def template_button(payload: str, title: str, wa_id: str = WA_ID) -> dict:
    return {
        "from": wa_id,
        "id": f"wamid.OUTREACH{next(_ids):06d}",
        "timestamp": str(int(timezone.now().timestamp())),
        "type": "button",
        "button": {"payload": payload, "text": title},
    }


def texts_to(fake_graph, wa_id: str) -> list[str]:
    return [r.text for r in fake_graph.messages_to(wa_id) if r.json.get("type") != "template"]


@pytest.fixture
def reminded(clinic, doctor, patient, fake_graph, settings) -> Appointment:
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    OutreachSettings.objects.create(
        clinic=clinic, window_start=dt.time(0, 0), window_end=dt.time(23, 59, 59)
    )
    start = (timezone.now() + dt.timedelta(hours=23)).replace(second=0, microsecond=0)
    appointment = book(clinic, patient, make_slots(doctor, start, 1)[0])
    Appointment.objects.filter(pk=appointment.pk).update(
        created_at=timezone.now() - dt.timedelta(days=2)
    )
    reminders.reminders_plan()
    assert reminders.reminders_send() == 1
    return appointment


@pytest.mark.django_db(transaction=True)
def test_it_confirms_from_the_reminder_template_button(clinic, reminded, fake_graph):
    receive(clinic, template_button(f"reminder:confirm:{reminded.pk}", "Confirmar"))
    run_ready_tasks()
    reminded.refresh_from_db()
    assert reminded.status == AppointmentStatus.CONFIRMED
    fake_graph.wait_for(lambda requests: texts_to(fake_graph, WA_ID), timeout=10)
    assert "quedó confirmada" in texts_to(fake_graph, WA_ID)[-1]


@pytest.mark.django_db(transaction=True)
def test_it_cancels_when_the_patient_writes_cancelar_after_a_reminder(clinic, reminded, fake_graph):
    receive(clinic, text_message("Cancelar"))
    run_ready_tasks()
    reminded.refresh_from_db()
    assert reminded.status == AppointmentStatus.CANCELLED
    assert reminded.slot.status == "free"
    fake_graph.wait_for(lambda requests: texts_to(fake_graph, WA_ID), timeout=10)
    assert "quedó cancelada" in texts_to(fake_graph, WA_ID)[-1]


@pytest.mark.django_db(transaction=True)
def test_it_stops_reminders_when_the_patient_writes_stop(clinic, reminded, patient, fake_graph):
    receive(clinic, text_message("STOP"))
    run_ready_tasks()
    patient.refresh_from_db()
    assert patient.reminders_opted_out_at is not None
    assert AuditEvent.objects.filter(action="patient.reminders_off", object_id=str(patient.pk))
    fake_graph.wait_for(lambda requests: texts_to(fake_graph, WA_ID), timeout=10)
    assert "no te enviaremos más recordatorios" in texts_to(fake_graph, WA_ID)[-1]


@pytest.mark.django_db(transaction=True)
def test_it_books_a_waitlist_offer_from_its_template_button(
    clinic, specialty, doctor, patient, fake_graph, settings
):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    start = (timezone.now() + dt.timedelta(days=2)).replace(second=0, microsecond=0)
    (slot,) = make_slots(doctor, start, 1)
    other = book(clinic, make_patient(clinic, 1), slot)
    waitlist.waitlist_join(clinic=clinic, patient=patient, specialty=specialty)
    services.appointment_cancel(
        clinic=clinic, appointment_id=other.pk, actor=services.Actor.system("test")
    )
    run_ready_tasks()  # slot.liberado → the offer task
    offer = WaitlistOffer.objects.get(entry__patient=patient)
    receive(clinic, template_button(f"waitlist:accept:{offer.pk}", "Sí, lo quiero"))
    run_ready_tasks()
    offer.refresh_from_db()
    assert offer.status == WaitlistOffer.Status.ACCEPTED
    assert Appointment.objects.get(slot=slot, status="booked").patient == patient
    fake_graph.wait_for(lambda requests: texts_to(fake_graph, WA_ID), timeout=10)
    assert "¡Es tuyo!" in texts_to(fake_graph, WA_ID)[-1]
