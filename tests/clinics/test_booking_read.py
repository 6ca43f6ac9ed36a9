"""The booking path's hand-written lock-and-read (`_lock_slot_to_book`) answers what the ORM's
`_lock_slots` answers, slot situation by slot situation: the rules read the same inputs on
both, whichever service locked the slot."""

import datetime as dt

import pytest
from django.db import connection, transaction
from django.utils import timezone

from clinics import services
from clinics.models import (
    BlockedPeriod,
    Doctor,
    Patient,
    Slot,
    SlotHold,
    SlotStatus,
    Specialty,
)
from tests.conftest import make_slots

HOLDER = "conversation:7"
FIELDS = (
    "clinic_id",
    "doctor_id",
    "start_at",
    "end_at",
    "status",
    "held_until",
    "doctor_active",
    "in_blocked_period",
    "holder_holds_it",
    "patient_exists",
    "only_specialty_id",
)


def both_reads(clinic, slot, patient, holder=HOLDER) -> tuple[dict, dict]:
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        raw = services._lock_slot_to_book(cursor, clinic, slot.pk, patient, holder, now)
    with transaction.atomic():
        orm = services._lock_slots(
            clinic, [slot.pk], now=now, holder=holder, patient=patient, with_specialty=True
        )[slot.pk]
    return {f: getattr(raw, f) for f in FIELDS}, {f: getattr(orm, f) for f in FIELDS}


def hold(slot, holder, minutes):
    until = timezone.now() + dt.timedelta(minutes=minutes)
    Slot.objects.filter(pk=slot.pk).update(status=SlotStatus.HELD, held_until=until)
    SlotHold.objects.create(slot=slot, holder=holder, expires_at=until)


@pytest.mark.parametrize(
    "situation",
    [
        "free",
        "held by the holder",
        "held by someone else",
        "hold expired",
        "blocked",
        "clinic holiday",
        "the doctor's absence",
        "another doctor's absence",
        "doctor inactive",
        "doctor with two specialties",
        "booked",
    ],
)
def test_it_reads_what_the_orm_reads(situation, clinic, doctor, slots, patient):
    slot = slots[0]
    if situation == "held by the holder":
        hold(slot, HOLDER, 5)
    elif situation == "held by someone else":
        hold(slot, "conversation:8", 5)
    elif situation == "hold expired":
        hold(slot, HOLDER, -5)
    elif situation in ("blocked", "booked"):
        Slot.objects.filter(pk=slot.pk).update(status=situation)
    elif situation == "clinic holiday":
        BlockedPeriod.objects.create(
            clinic=clinic, starts_at=slot.start_at, ends_at=slot.start_at + dt.timedelta(hours=1)
        )
    elif situation == "the doctor's absence":
        BlockedPeriod.objects.create(
            clinic=clinic,
            doctor=doctor,
            starts_at=slot.start_at - dt.timedelta(hours=1),
            ends_at=slot.start_at + dt.timedelta(minutes=1),
        )
    elif situation == "another doctor's absence":
        other = Doctor.objects.create(clinic=clinic, full_name="Dra. Otra")
        BlockedPeriod.objects.create(
            clinic=clinic, doctor=other, starts_at=slot.start_at, ends_at=slot.end_at
        )
    elif situation == "doctor inactive":
        Doctor.objects.filter(pk=doctor.pk).update(active=False)
    elif situation == "doctor with two specialties":
        doctor.specialties.add(Specialty.objects.create(clinic=clinic, slug="peds", name="Peds"))
    raw, orm = both_reads(clinic, slot, patient)
    assert raw == orm


def test_it_reads_a_patient_of_another_clinic_as_missing(clinic, other_clinic, slots, patient):
    stranger = Patient.objects.create(
        clinic=other_clinic, document="55512345", full_name="X", birth_date=dt.date(1990, 1, 1)
    )
    with (
        transaction.atomic(),
        connection.cursor() as cursor,
        pytest.raises(services.PatientNotFound),
    ):
        services._lock_slot_to_book(cursor, clinic, slots[0].pk, stranger, None, timezone.now())


def test_it_refuses_another_clinics_slot_and_a_missing_one(clinic, other_clinic, patient):
    other_doctor = Doctor.objects.create(clinic=other_clinic, full_name="Dra. Norte")
    theirs = make_slots(other_doctor, timezone.now() + dt.timedelta(days=1), 1)[0]
    with transaction.atomic(), connection.cursor() as cursor:
        with pytest.raises(services.WrongClinic):
            services._lock_slot_to_book(cursor, clinic, theirs.pk, patient, None, timezone.now())
        with pytest.raises(services.SlotUnavailable):
            services._lock_slot_to_book(cursor, clinic, 10**9, patient, None, timezone.now())
