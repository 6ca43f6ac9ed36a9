"""A patient's data exported and erased on request; audited; appointments kept anonymously."""

import datetime as dt

import pytest
from django.utils import timezone

from bot.models import Conversation, Direction, Message, MessageStatus, WebhookEvent
from clinics import services
from clinics.models import Appointment, AppointmentSource, AppointmentStatus, AuditEvent, Patient
from integrations import privacy

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(clinic, patient, slots, receptionist):
    actor = services.Actor.staff(receptionist)
    past = services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slots[0].pk,
        actor=actor,
        source=AppointmentSource.STAFF,
        notes="dolor de cabeza fuerte",
    )
    Appointment.objects.filter(pk=past.pk).update(
        start_at=timezone.now() - dt.timedelta(days=3),
        end_at=timezone.now() - dt.timedelta(days=3, minutes=-20),
        status=AppointmentStatus.ATTENDED,
    )
    upcoming = services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slots[3].pk, actor=actor,
        source=AppointmentSource.STAFF,
    )  # fmt: skip
    event = WebhookEvent.objects.create(body='{"from": "573001234567"}', clinic=clinic)
    conversation = Conversation.objects.create(
        clinic=clinic, wa_id=patient.whatsapp_id, patient=patient
    )
    Message.objects.create(
        clinic=clinic,
        conversation=conversation,
        direction=Direction.IN,
        text=f"mi documento es {patient.document}",
        status=MessageStatus.PROCESSED,
        webhook_event=event,
    )
    return past, upcoming


def test_it_exports_everything_about_the_patient_and_audits_it(
    clinic, patient, history, clinic_admin
):
    data = privacy.patient_export(
        clinic=clinic, patient_id=patient.pk, actor=services.Actor.staff(clinic_admin)
    )
    assert data["patient"]["document"] == patient.document
    assert {a["id"] for a in data["appointments"]} == {a.pk for a in history}
    assert any(a["reported_symptoms"] == "dolor de cabeza fuerte" for a in data["appointments"])
    [conversation] = data["conversations"]
    assert conversation["messages"][0]["text"].endswith(patient.document)
    audit = AuditEvent.objects.get(action="patient.export")
    assert audit.actor_id == str(clinic_admin.pk) and audit.object_id == str(patient.pk)
    assert patient.document not in str(audit.after)


def test_it_erases_the_person_but_keeps_anonymous_appointments(
    clinic, patient, history, clinic_admin, django_capture_on_commit_callbacks
):
    past, upcoming = history
    with django_capture_on_commit_callbacks(execute=True):
        erased = privacy.patient_erase(
            clinic=clinic, patient_id=patient.pk, actor=services.Actor.staff(clinic_admin)
        )
    assert erased.full_name == privacy.ERASED_NAME
    assert erased.document != patient.document and erased.birth_date is None
    assert erased.whatsapp_id == ""
    assert not Conversation.objects.filter(clinic=clinic).exists()
    assert not Message.objects.exists() and not WebhookEvent.objects.exists()
    past.refresh_from_db()
    upcoming.refresh_from_db()
    assert past.status == AppointmentStatus.ATTENDED and past.patient_notes == ""
    assert upcoming.status == AppointmentStatus.CANCELLED  # its slot is free for others
    assert not Patient.objects.filter(document=patient.document).exists()
    everything = str(list(AuditEvent.objects.values("before", "after", "actor_label")))
    assert patient.document not in everything and "Ana María" not in everything
    assert AuditEvent.objects.filter(action="patient.erase", actor_id=str(clinic_admin.pk)).exists()


def test_it_refuses_another_clinics_patient(other_clinic, patient, clinic_admin):
    actor = services.Actor.staff(clinic_admin)
    with pytest.raises(Patient.DoesNotExist):
        privacy.patient_export(clinic=other_clinic, patient_id=patient.pk, actor=actor)
    with pytest.raises(Patient.DoesNotExist):
        privacy.patient_erase(clinic=other_clinic, patient_id=patient.pk, actor=actor)
    assert Patient.objects.get(pk=patient.pk).full_name == "Ana María Gómez"
