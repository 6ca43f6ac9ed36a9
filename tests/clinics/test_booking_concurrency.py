"""Races on real PostgreSQL: threads with their own connections, committed data."""

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from clinics import services
from clinics.models import Appointment, Patient, Slot, SlotHold, SlotStatus
from clinics.services import Actor
from tests.conftest import make_slots

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 50


def run_together(count: int, work) -> list:
    """Run work(i) in `count` threads released at once; each closes its DB connection."""
    barrier = threading.Barrier(count)

    def one(i: int):
        try:
            barrier.wait()
            return work(i)
        except services.BookingError as exc:
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


@pytest.fixture
def many_patients(clinic) -> list[Patient]:
    return Patient.objects.bulk_create(
        Patient(clinic=clinic, document=f"{10_000_000 + i}", full_name=f"Paciente {i}")
        for i in range(THREADS)
    )


def test_it_books_one_slot_exactly_once_under_50_threads(clinic, slots, many_patients):
    slot = slots[0]

    def work(i: int):
        patient = many_patients[i]
        return services.appointment_book(
            clinic=clinic, patient=patient, slot_id=slot.pk, actor=Actor.patient(patient),
            source="bot",
        )  # fmt: skip

    results = run_together(THREADS, work)
    booked = [r for r in results if isinstance(r, Appointment)]
    refused = [r for r in results if isinstance(r, services.BookingError)]
    assert len(booked) == 1
    assert len(refused) == THREADS - 1
    assert {r.code for r in refused} == {"slot_taken"}
    assert Appointment.objects.filter(slot=slot).count() == 1
    assert Slot.objects.get(pk=slot.pk).status == SlotStatus.BOOKED


def test_it_lets_one_patient_book_only_one_of_two_overlapping_slots(clinic, doctor, patient):
    """Two doctors, same time, same patient, racing: the patient ends with one appointment."""
    from clinics.models import Doctor

    second_doctor = Doctor.objects.create(clinic=clinic, full_name="Dra. Ruiz")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=2)
    a = make_slots(doctor, start, 1)[0]
    b = make_slots(second_doctor, start + dt.timedelta(minutes=10), 1)[0]
    targets = [a, b] * 10

    def work(i: int):
        return services.appointment_book(
            clinic=clinic, patient=patient, slot_id=targets[i].pk,
            actor=Actor.patient(patient), source="bot",
        )  # fmt: skip

    results = run_together(len(targets), work)
    assert sum(isinstance(r, Appointment) for r in results) == 1
    assert {r.code for r in results if isinstance(r, services.BookingError)} <= {
        "slot_taken",
        "patient_overlap",
    }
    assert Appointment.objects.filter(patient=patient).count() == 1
    assert Slot.objects.filter(status=SlotStatus.BOOKED).count() == 1


def test_it_gives_a_contested_hold_to_exactly_one_holder(clinic, slots):
    slot = slots[0]

    def work(i: int):
        return services.slot_hold(clinic=clinic, slot_id=slot.pk, holder=f"conversation:{i}")

    results = run_together(20, work)
    holds = [r for r in results if isinstance(r, SlotHold)]
    assert len(holds) == 1
    assert all(r.code == "slot_taken" for r in results if not isinstance(r, SlotHold))
    assert SlotHold.objects.filter(slot=slot, released_at=None).count() == 1


def test_it_never_deadlocks_holders_swapping_slots(clinic, slots):
    """Holder A moves s0→s1 while B moves s1→s0: slots are locked in id order, so no deadlock."""
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:a")
    services.slot_hold(clinic=clinic, slot_id=slots[1].pk, holder="conversation:b")
    moves = [("conversation:a", slots[1].pk), ("conversation:b", slots[0].pk)] * 5

    def work(i: int):
        holder, slot_id = moves[i]
        return services.slot_hold(clinic=clinic, slot_id=slot_id, holder=holder)

    results = run_together(len(moves), work)
    # Every result is a hold or a clean "taken"; a deadlock would surface as a database error.
    assert all(isinstance(r, SlotHold | services.SlotTaken) for r in results)
    assert SlotHold.objects.filter(released_at=None).count() <= 2
