"""Fixtures for the booking core: services' actors and a second clinic's agenda."""

import datetime as dt

import pytest
from django.utils import timezone

from clinics.models import Appointment, AuditEvent, Doctor, Patient, Slot, SlotHold
from clinics.services import Actor
from tests.conftest import make_slots


@pytest.fixture
def staff_actor(receptionist) -> Actor:
    return Actor.staff(receptionist)


@pytest.fixture
def patient_actor(patient) -> Actor:
    return Actor.patient(patient)


@pytest.fixture
def other_patient(clinic) -> Patient:
    return Patient.objects.create(
        clinic=clinic,
        document="79111222",
        full_name="Luis Pérez",
        birth_date=dt.date(1970, 1, 2),
        whatsapp_id="573009998877",
    )


@pytest.fixture
def other_doctor(other_clinic) -> Doctor:
    return Doctor.objects.create(clinic=other_clinic, full_name="Dra. Norte")


@pytest.fixture
def other_slots(other_doctor) -> list[Slot]:
    start = (timezone.now() + dt.timedelta(days=1)).replace(
        hour=13, minute=0, second=0, microsecond=0
    )
    return make_slots(other_doctor, start, 3)


@pytest.fixture
def past_slot(doctor) -> Slot:
    start = (timezone.now() - dt.timedelta(days=1)).replace(second=0, microsecond=0)
    return make_slots(doctor, start, 1)[0]


def row_counts() -> dict[str, int]:
    """Counts of every table a service writes, to prove nothing was half-written."""
    return {
        "appointments": Appointment.objects.count(),
        "holds": SlotHold.objects.count(),
        "audit": AuditEvent.objects.count(),
        "patients": Patient.objects.count(),
        "slots": Slot.objects.count(),
        "booked_slots": Slot.objects.filter(status="booked").count(),
        "held_slots": Slot.objects.filter(status="held").count(),
    }
