"""A time inside a blocked period (holiday, absence) is never held or booked — whatever the
slot's status says, and also after the appointment that was in it is cancelled."""

import datetime as dt

import pytest
from django.utils import timezone

from clinics import services
from clinics.events import domain_event
from clinics.models import Appointment, BlockedPeriod, Slot, SlotHold, SlotStatus
from clinics.services import Actor
from tests.clinics.conftest import row_counts


@pytest.fixture
def captured_events():
    seen = []

    def receiver(sender, clinic_id, name, payload, **kwargs):
        seen.append((name, payload.get("slot_id")))

    domain_event.connect(receiver, dispatch_uid="test-blocked-capture")
    yield seen
    domain_event.disconnect(dispatch_uid="test-blocked-capture")


def block(slot: Slot, *, doctor=None, reason: str = "Vacaciones") -> BlockedPeriod:
    """A period over the slot entered after it was generated (its status still says free)."""
    return BlockedPeriod.objects.create(
        clinic=slot.clinic,
        doctor=doctor,
        starts_at=slot.start_at - dt.timedelta(minutes=5),
        ends_at=slot.start_at + dt.timedelta(minutes=5),
        reason=reason,
    )


def book(clinic, patient, slot, **extra):
    return services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slot.pk,
        actor=Actor.system("test"),
        source="staff",
        **extra,
    )


@pytest.mark.parametrize("whose", ["doctor", "clinic"])
def test_it_refuses_to_book_a_free_slot_inside_a_blocked_period(
    whose, clinic, doctor, patient, slots
):
    block(slots[0], doctor=doctor if whose == "doctor" else None)
    before = row_counts()
    with pytest.raises(services.SlotUnavailable) as err:
        book(clinic, patient, slots[0])
    assert err.value.code == "slot_blocked"
    assert row_counts() == before
    # Only the covered time: the next slot books as usual.
    assert book(clinic, patient, slots[1]).slot_id == slots[1].pk


def test_it_ignores_another_doctors_absence(clinic, doctor, patient, slots):
    from clinics.models import Doctor

    colleague = Doctor.objects.create(clinic=clinic, full_name="Dra. Rojas")
    block(slots[0], doctor=colleague)
    assert book(clinic, patient, slots[0]).status == "booked"


def test_it_refuses_to_hold_a_slot_inside_a_blocked_period(clinic, doctor, slots):
    block(slots[0], doctor=doctor)
    with pytest.raises(services.SlotUnavailable) as err:
        services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    assert err.value.code == "slot_blocked"
    assert not SlotHold.objects.exists()
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE


def test_it_refuses_a_hold_taken_before_the_period_was_entered(clinic, doctor, patient, slots):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    block(slots[0], doctor=doctor)
    with pytest.raises(services.SlotUnavailable):
        book(clinic, patient, slots[0], holder="conversation:1")
    assert not Appointment.objects.exists()


def test_it_keeps_a_cancelled_appointments_slot_blocked(
    clinic,
    doctor,
    patient,
    other_patient,
    slots,
    captured_events,
    django_capture_on_commit_callbacks,
):
    appointment = book(clinic, patient, slots[0])
    block(slots[0], doctor=doctor)  # the doctor's absence is entered after the booking
    with django_capture_on_commit_callbacks(execute=True):
        services.appointment_cancel(
            clinic=clinic, appointment_id=appointment.pk, actor=Actor.system("test")
        )
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.BLOCKED
    # Nobody is told the time came free (a waiting list must not offer it).
    assert ("slot.liberado", slots[0].pk) not in captured_events
    assert ("cita.cancelada", slots[0].pk) in captured_events
    with pytest.raises(services.SlotUnavailable):
        book(clinic, other_patient, slots[0])
    with pytest.raises(services.SlotUnavailable):
        services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:9")


def test_it_still_frees_a_cancelled_slot_outside_any_blocked_period(
    clinic, patient, slots, captured_events, django_capture_on_commit_callbacks
):
    appointment = book(clinic, patient, slots[0])
    with django_capture_on_commit_callbacks(execute=True):
        services.appointment_cancel(
            clinic=clinic, appointment_id=appointment.pk, actor=Actor.system("test")
        )
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE
    assert ("slot.liberado", slots[0].pk) in captured_events


def test_it_keeps_the_old_slot_blocked_when_rescheduling_out_of_a_holiday(
    clinic, patient, slots, captured_events, django_capture_on_commit_callbacks
):
    appointment = book(clinic, patient, slots[0])
    block(slots[0])  # a clinic-wide holiday
    with django_capture_on_commit_callbacks(execute=True):
        new = services.appointment_reschedule(
            clinic=clinic,
            appointment_id=appointment.pk,
            new_slot_id=slots[3].pk,
            actor=Actor.system("test"),
        )
    assert new.slot_id == slots[3].pk
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.BLOCKED
    assert ("slot.liberado", slots[0].pk) not in captured_events


def test_it_refuses_to_reschedule_into_a_blocked_period(clinic, doctor, patient, slots):
    appointment = book(clinic, patient, slots[0])
    block(slots[3], doctor=doctor)
    with pytest.raises(services.SlotUnavailable):
        services.appointment_reschedule(
            clinic=clinic,
            appointment_id=appointment.pk,
            new_slot_id=slots[3].pk,
            actor=Actor.system("test"),
        )
    assert Appointment.objects.get(pk=appointment.pk).status == "booked"


def test_it_blocks_released_and_expired_holds_inside_a_blocked_period(
    clinic, doctor, slots, captured_events, django_capture_on_commit_callbacks
):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    services.slot_hold(clinic=clinic, slot_id=slots[1].pk, holder="conversation:2")
    services.slot_hold(clinic=clinic, slot_id=slots[2].pk, holder="conversation:3")
    for slot in slots[:2]:
        block(slot, doctor=doctor)
    with django_capture_on_commit_callbacks(execute=True):
        services.slot_release(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.BLOCKED
    later = timezone.now() + dt.timedelta(hours=1)
    with django_capture_on_commit_callbacks(execute=True):
        freed = services.holds_expire(now=later)
    assert freed == 1  # slots[2]; slots[1] went back to blocked
    statuses = dict(
        Slot.objects.filter(pk__in=[s.pk for s in slots[:3]]).values_list("pk", "status")
    )
    assert statuses == {
        slots[0].pk: SlotStatus.BLOCKED,
        slots[1].pk: SlotStatus.BLOCKED,
        slots[2].pk: SlotStatus.FREE,
    }
    liberated = {slot_id for name, slot_id in captured_events if name == "slot.liberado"}
    assert liberated == {slots[2].pk}
