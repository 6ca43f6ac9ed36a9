"""The engine's ORM gateway for reminders and the waitlist: the wishes a bot join carries, STOP
for the conversation's number, and the open reminder a plain "confirmo" answers."""

import pytest

from bot.gateway import OrmGateway
from bot.models import Conversation
from clinics.models import Doctor
from outreach.models import WaitlistEntry

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(clinic, patient):
    return Conversation.objects.create(clinic=clinic, wa_id=patient.whatsapp_id, patient=patient)


def test_it_joins_the_waitlist_with_the_doctor_and_part_of_the_day_asked_for(
    clinic, specialty, doctor, patient, conversation
):
    gateway = OrmGateway(clinic, conversation.pk)
    assert gateway.waitlist_join(
        patient_id=patient.pk,
        specialty_id=specialty.pk,
        doctor_id=doctor.pk,
        part_of_day="morning",
    )
    entry = WaitlistEntry.objects.get(patient=patient)
    assert (entry.doctor, entry.part_of_day, entry.conversation) == (
        doctor,
        "morning",
        conversation,
    )


def test_it_widens_a_wish_it_cannot_honour(clinic, other_clinic, specialty, patient, conversation):
    elsewhere = Doctor.objects.create(clinic=other_clinic, full_name="Dr. Otro")
    gateway = OrmGateway(clinic, conversation.pk)
    gateway.waitlist_join(
        patient_id=patient.pk,
        specialty_id=specialty.pk,
        doctor_id=elsewhere.pk,
        part_of_day="evening",
    )
    entry = WaitlistEntry.objects.get(patient=patient)
    assert (entry.doctor, entry.part_of_day) == (None, "any")


def test_it_stops_reminders_for_the_conversations_number(clinic, patient, conversation):
    gateway = OrmGateway(clinic, conversation.pk)
    assert gateway.reminders_set(wa_id=conversation.wa_id, patient_id=None, enabled=False) == 1
    patient.refresh_from_db()
    assert patient.reminders_opted_out_at is not None
