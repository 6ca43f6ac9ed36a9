"""Reminders and waitlist fixtures: a fixed week to travel through, and booking helpers.

Times: Monday 2026-12-07 10:00 in Bogotá (UTC−5) is "now" when a test starts; the agenda has
slots on Wednesday 2026-12-09 from 07:00 to 12:00 local, 20 minutes each.
"""

import datetime as dt
import zoneinfo

import pytest
import time_machine

from clinics import services
from clinics.models import Appointment, AppointmentSource, Patient, Slot
from tests.conftest import make_slots

BOGOTA = zoneinfo.ZoneInfo("America/Bogota")
MONDAY_10AM = dt.datetime(2026, 12, 7, 10, 0, tzinfo=BOGOTA)
WEDNESDAY = dt.date(2026, 12, 9)


def local(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=BOGOTA)


@pytest.fixture
def clock():
    """Time stands still at Monday 10:00 Bogotá until the test moves it (`clock.move_to`)."""
    with time_machine.travel(MONDAY_10AM, tick=False) as traveller:
        yield traveller


@pytest.fixture
def wednesday_slots(clock, doctor) -> list[Slot]:
    """Fifteen 20-minute slots on Wednesday, 07:00–12:00 local."""
    return make_slots(doctor, local(WEDNESDAY, 7), 15)


def slot_at(slots: list[Slot], hour: int, minute: int = 0) -> Slot:
    wanted = local(WEDNESDAY, hour, minute)
    return next(s for s in slots if s.start_at == wanted)


def book(clinic, patient: Patient, slot: Slot) -> Appointment:
    return services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slot.pk,
        actor=services.Actor.patient(patient),
        source=AppointmentSource.BOT,
    )


def make_patient(clinic, n: int, **extra) -> Patient:
    return Patient.objects.create(
        clinic=clinic,
        document=f"{5000000000 + n}",
        full_name=extra.pop("full_name", f"Paciente Número {n}"),
        birth_date=dt.date(1980, 1, 1),
        whatsapp_id=extra.pop("whatsapp_id", f"5730090{n:05d}"),
        **extra,
    )
