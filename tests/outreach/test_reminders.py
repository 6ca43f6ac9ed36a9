"""Reminders: when they go (time travel), never twice, never for cancelled appointments, never
outside the sending hours, and what the patient's answers do."""

import datetime as dt
import threading

import pytest
from django.db import connection

from bot.models import Conversation, Message, MessageStatus
from clinics import services
from clinics.models import AppointmentStatus, AuditEvent, Patient, SlotStatus
from outreach import reminders
from outreach.models import OutreachSettings, ReminderDispatch
from outreach.reminders import Answer
from tests.fakes import graph_server
from tests.outreach.conftest import WEDNESDAY, book, local, make_patient, slot_at

fake_graph = graph_server.fake_graph  # the fixture

TUESDAY = WEDNESDAY - dt.timedelta(days=1)


def run_job(now=None) -> int:
    """What the worker does: plan what fell due, then send it (inline instead of as tasks)."""
    reminders.reminders_plan(now)
    return reminders.reminders_send(limit=500, now=now)


def templates_sent(fake_graph) -> list:
    return [r for r in fake_graph.requests if r.json.get("type") == "template"]


@pytest.fixture
def booked(clinic, patient, wednesday_slots):
    """Ana María's appointment on Wednesday 09:00, booked on Monday."""
    return book(clinic, patient, slot_at(wednesday_slots, 9))


@pytest.mark.django_db
def test_it_sends_the_reminder_24_hours_before_and_only_once(clock, booked, fake_graph, patient):
    clock.move_to(local(TUESDAY, 8, 59))
    assert run_job() == 0
    clock.move_to(local(TUESDAY, 9, 0))
    assert run_job() == 1

    (sent,) = templates_sent(fake_graph)
    assert sent.to == patient.whatsapp_id
    template = sent.json["template"]
    assert template["name"] == "recordatorio_cita"
    assert template["language"] == {"code": "es"}
    body, confirm, cancel = template["components"]
    assert [p["text"] for p in body["parameters"]] == [
        "Ana",
        "miércoles 9 de diciembre",
        "9:00 a. m.",
        "Dr. Carlos García",
    ]
    assert confirm["parameters"][0]["payload"] == f"reminder:confirm:{booked.pk}"
    assert cancel["parameters"][0]["payload"] == f"reminder:cancel:{booked.pk}"
    message = Message.objects.get(reminder__appointment=booked)
    assert message.status == MessageStatus.SENT
    assert "Confirmar" in message.text  # what staff read in the conversation

    clock.move_to(local(TUESDAY, 15, 0))
    assert run_job() == 0
    assert len(templates_sent(fake_graph)) == 1


@pytest.mark.django_db
def test_it_defers_a_reminder_due_outside_the_sending_hours_to_the_window_start(
    clock, clinic, patient, wednesday_slots, fake_graph
):
    appointment = book(clinic, patient, slot_at(wednesday_slots, 7))  # due Tuesday 07:00
    clock.move_to(local(TUESDAY, 7, 0))
    assert run_job() == 0
    clock.move_to(local(TUESDAY, 7, 59))
    assert run_job() == 0
    clock.move_to(local(TUESDAY, 8, 0))
    assert run_job() == 1
    dispatch = ReminderDispatch.objects.get(appointment=appointment)
    assert dispatch.due_at == local(TUESDAY, 7, 0)
    assert dispatch.queued_at == local(TUESDAY, 8, 0)


@pytest.mark.django_db
def test_it_keeps_a_claimed_reminder_waiting_when_the_window_closes_before_it_is_queued(
    clock, clinic, booked, fake_graph
):
    OutreachSettings.objects.create(clinic=clinic, window_start=dt.time(8), window_end=dt.time(19))
    clock.move_to(local(TUESDAY, 18, 59))
    # Planned inside the window, but the worker only gets to it after closing time.
    assert reminders.reminders_plan() == 1
    clock.move_to(local(TUESDAY, 19, 0))
    assert reminders.reminders_send() == 0
    assert templates_sent(fake_graph) == []
    dispatch = ReminderDispatch.objects.get(appointment=booked)
    assert dispatch.status == ReminderDispatch.Status.PENDING
    assert dispatch.not_before == local(WEDNESDAY, 8, 0)
    clock.move_to(local(WEDNESDAY, 7, 59))
    assert reminders.reminders_send() == 0
    clock.move_to(local(WEDNESDAY, 8, 0))
    assert reminders.reminders_send() == 1


@pytest.mark.django_db
def test_it_sends_a_second_reminder_when_the_clinic_wants_one(clock, clinic, booked, fake_graph):
    OutreachSettings.objects.create(clinic=clinic, hours_before=24, second_hours_before=2)
    clock.move_to(local(TUESDAY, 9, 0))
    assert run_job() == 1
    clock.move_to(local(WEDNESDAY, 6, 59))
    assert run_job() == 0
    clock.move_to(local(WEDNESDAY, 7, 59))  # 09:00 − 2 h = 07:00, deferred to 08:00
    assert run_job() == 0
    clock.move_to(local(WEDNESDAY, 8, 0))
    assert run_job() == 1
    assert sorted(
        ReminderDispatch.objects.filter(appointment=booked).values_list("ordinal", flat=True)
    ) == [1, 2]
    assert len(templates_sent(fake_graph)) == 2


@pytest.mark.django_db
def test_it_sends_only_the_latest_reminder_when_an_earlier_one_was_missed(
    clock, clinic, booked, fake_graph
):
    OutreachSettings.objects.create(clinic=clinic, hours_before=24, second_hours_before=2)
    clock.move_to(local(WEDNESDAY, 8, 0))  # the worker was down since Tuesday morning
    assert run_job() == 1
    (dispatch,) = ReminderDispatch.objects.filter(appointment=booked)
    assert dispatch.ordinal == 2


@pytest.mark.django_db
def test_it_does_not_remind_an_appointment_booked_after_the_reminder_was_due(
    clock, clinic, patient, wednesday_slots, fake_graph
):
    clock.move_to(local(TUESDAY, 12, 0))
    book(clinic, patient, slot_at(wednesday_slots, 9))  # 21 hours ahead: they just booked
    clock.move_to(local(TUESDAY, 13, 0))
    assert run_job() == 0


@pytest.mark.django_db
def test_it_never_reminds_a_cancelled_appointment(clock, clinic, booked, patient, fake_graph):
    services.appointment_cancel(
        clinic=clinic, appointment_id=booked.pk, actor=services.Actor.patient(patient)
    )
    clock.move_to(local(TUESDAY, 9, 0))
    assert run_job() == 0
    assert not ReminderDispatch.objects.exists()


@pytest.mark.django_db
def test_it_drops_a_planned_reminder_whose_appointment_was_cancelled_meanwhile(
    clock, clinic, booked, patient, fake_graph
):
    clock.move_to(local(TUESDAY, 9, 0))
    assert reminders.reminders_plan() == 1
    services.appointment_cancel(
        clinic=clinic, appointment_id=booked.pk, actor=services.Actor.patient(patient)
    )
    assert reminders.reminders_send() == 0
    dispatch = ReminderDispatch.objects.get(appointment=booked)
    assert (dispatch.status, dispatch.skip_reason) == ("skipped", "cancelled")
    assert templates_sent(fake_graph) == []


@pytest.mark.django_db
def test_it_withdraws_a_queued_reminder_when_the_appointment_is_cancelled(
    clock, clinic, booked, patient, fake_graph
):
    clock.move_to(local(TUESDAY, 9, 0))
    fake_graph.fail_next(1, status=500)  # the first try fails: the message waits in the outbox
    assert run_job() == 1
    services.appointment_cancel(
        clinic=clinic, appointment_id=booked.pk, actor=services.Actor.patient(patient)
    )
    assert reminders.withdraw(booked.pk) == 1
    message = Message.objects.get(reminder__appointment=booked)
    assert message.status == MessageStatus.FAILED
    assert "cancelled" in message.error


@pytest.mark.django_db
def test_it_skips_patients_who_stopped_reminders_or_have_no_whatsapp(
    clock, clinic, booked, patient, wednesday_slots, fake_graph
):
    services.patient_set_reminders(
        clinic=clinic, patient=patient, enabled=False, actor=services.Actor.system("test")
    )
    no_phone = make_patient(clinic, 1, whatsapp_id="")
    book(clinic, no_phone, slot_at(wednesday_slots, 10))
    clock.move_to(local(TUESDAY, 10, 0))
    assert run_job() == 0


@pytest.mark.django_db
def test_it_sends_nothing_for_a_clinic_that_turned_reminders_off(clock, clinic, booked, fake_graph):
    OutreachSettings.objects.create(clinic=clinic, reminders_enabled=False)
    clock.move_to(local(TUESDAY, 9, 0))
    assert run_job() == 0


@pytest.mark.django_db
def test_it_uses_the_clinics_own_template_and_language(clock, clinic, booked, fake_graph):
    OutreachSettings.objects.create(
        clinic=clinic, template_name="cita_recordatorio_v2", template_language="es_CO"
    )
    clock.move_to(local(TUESDAY, 9, 0))
    assert run_job() == 1
    (sent,) = templates_sent(fake_graph)
    assert sent.json["template"]["name"] == "cita_recordatorio_v2"
    assert sent.json["template"]["language"] == {"code": "es_CO"}


@pytest.mark.django_db(transaction=True)
def test_it_never_sends_a_reminder_twice_when_two_workers_race(clinic, doctor, fake_graph):
    import time_machine

    from tests.conftest import make_slots
    from tests.outreach.conftest import MONDAY_10AM

    with time_machine.travel(MONDAY_10AM, tick=False) as clock:
        slots = make_slots(doctor, local(WEDNESDAY, 7), 15)
        for n, slot in enumerate(slots):
            book(clinic, make_patient(clinic, n), slot)
        clock.move_to(local(TUESDAY, 13, 0))
        barrier = threading.Barrier(2)
        counts = []

        def worker() -> None:
            try:
                barrier.wait()
                reminders.reminders_plan()
                total = 0
                while sent := reminders.reminders_send(limit=3):
                    total += sent
                counts.append(total)
            finally:
                connection.close()

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert sum(counts) == 15
    assert ReminderDispatch.objects.filter(status="queued").count() == 15
    recipients = [r.to for r in templates_sent(fake_graph)]
    assert len(recipients) == len(set(recipients)) == 15


# --- answers ---------------------------------------------------------------------------------


@pytest.fixture
def reminded(clock, booked, fake_graph):
    clock.move_to(local(TUESDAY, 9, 0))
    assert run_job() == 1
    return ReminderDispatch.objects.select_related("conversation").get(appointment=booked)


@pytest.mark.django_db
def test_it_confirms_the_appointment_when_the_patient_taps_confirm(clinic, reminded, patient):
    answer = reminders.reminder_respond(
        clinic=clinic,
        conversation_id=reminded.conversation_id,
        appointment_id=reminded.appointment_id,
        confirm=True,
    )
    assert answer.outcome == Answer.CONFIRMED
    assert answer.appointment.status == AppointmentStatus.CONFIRMED
    audit = AuditEvent.objects.get(action="appointment.confirmed")
    assert (audit.actor_type, audit.actor_id) == ("patient", str(patient.pk))
    reminded.refresh_from_db()
    assert reminded.response == "confirmed"
    again = reminders.reminder_respond(
        clinic=clinic,
        conversation_id=reminded.conversation_id,
        appointment_id=reminded.appointment_id,
        confirm=True,
    )
    assert again.outcome == Answer.ALREADY_CONFIRMED


@pytest.mark.django_db
def test_it_cancels_the_appointment_and_frees_the_slot_when_the_patient_taps_cancel(
    clinic, reminded
):
    answer = reminders.reminder_respond(
        clinic=clinic,
        conversation_id=reminded.conversation_id,
        appointment_id=reminded.appointment_id,
        confirm=False,
    )
    assert answer.outcome == Answer.CANCELLED
    appointment = answer.appointment
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.CANCELLED
    assert appointment.slot.status == SlotStatus.FREE
    again = reminders.reminder_respond(
        clinic=clinic,
        conversation_id=reminded.conversation_id,
        appointment_id=reminded.appointment_id,
        confirm=True,
    )
    assert again.outcome == Answer.ALREADY_CANCELLED


@pytest.mark.django_db
def test_it_ignores_a_reminder_answer_from_a_conversation_that_never_got_it(
    clinic, other_clinic, reminded
):
    stranger = Conversation.objects.create(clinic=clinic, wa_id="573119998877")
    for clinic_, conversation_id in (
        (clinic, stranger.pk),
        (other_clinic, reminded.conversation_id),
    ):
        answer = reminders.reminder_respond(
            clinic=clinic_,
            conversation_id=conversation_id,
            appointment_id=reminded.appointment_id,
            confirm=False,
        )
        assert answer.outcome == Answer.NOT_FOUND
    reminded.appointment.refresh_from_db()
    assert reminded.appointment.status == AppointmentStatus.BOOKED


@pytest.mark.django_db
def test_it_answers_too_late_once_the_appointment_started(clock, clinic, reminded):
    clock.move_to(local(WEDNESDAY, 9, 5))
    answer = reminders.reminder_respond(
        clinic=clinic,
        conversation_id=reminded.conversation_id,
        appointment_id=reminded.appointment_id,
        confirm=False,
    )
    assert answer.outcome == Answer.TOO_LATE


@pytest.mark.django_db
def test_it_finds_the_open_reminder_for_a_plain_text_answer(clock, clinic, reminded):
    found = reminders.open_reminder(clinic=clinic, conversation_id=reminded.conversation_id)
    assert found == reminded
    clock.move_to(local(WEDNESDAY, 9, 1))
    assert reminders.open_reminder(clinic=clinic, conversation_id=reminded.conversation_id) is None


@pytest.mark.django_db
def test_it_stops_and_resumes_reminders_for_every_patient_on_the_number(
    clock, clinic, patient, booked, wednesday_slots, fake_graph
):
    child = make_patient(clinic, 7, full_name="Sofía Gómez", whatsapp_id=patient.whatsapp_id)
    book(clinic, child, slot_at(wednesday_slots, 10))
    stranger = make_patient(clinic, 8)
    assert (
        reminders.reminders_opt(
            clinic=clinic, wa_id=patient.whatsapp_id, patient_id=None, enabled=False
        )
        == 2
    )
    assert set(
        Patient.objects.filter(reminders_opted_out_at__isnull=False).values_list("pk", flat=True)
    ) == {patient.pk, child.pk}
    stranger.refresh_from_db()
    assert stranger.reminders_opted_out_at is None
    audits = AuditEvent.objects.filter(action="patient.reminders_off")
    assert sorted(audits.values_list("object_id", flat=True)) == sorted(
        [str(patient.pk), str(child.pk)]
    )
    clock.move_to(local(TUESDAY, 10, 0))
    assert run_job() == 0

    assert (
        reminders.reminders_opt(
            clinic=clinic, wa_id=patient.whatsapp_id, patient_id=None, enabled=True
        )
        == 2
    )
    assert run_job() == 2
    assert AuditEvent.objects.filter(action="patient.reminders_on").count() == 2
