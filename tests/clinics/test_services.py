"""The booking core: book, hold, cancel, reschedule, statuses, patients — and refusals."""

import datetime as dt

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clinics import services
from clinics.events import domain_event
from clinics.models import (
    Appointment,
    AuditEvent,
    BlockedPeriod,
    Patient,
    Slot,
    SlotHold,
    SlotStatus,
)
from clinics.selectors import available_slots
from clinics.services import Actor, BookingError
from tests.clinics.conftest import row_counts
from tests.conftest import make_slots, run_on_sqlite

# PostgreSQL's exclusion constraints (migration 0002): the embedded SQLite demo has none.
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL's exclusion constraints"
)


@pytest.fixture
def captured_events():
    seen = []

    def receiver(sender, clinic_id, name, payload, **kwargs):
        seen.append((clinic_id, name, payload))

    domain_event.connect(receiver, dispatch_uid="test-capture")
    yield seen
    domain_event.disconnect(dispatch_uid="test-capture")


def book(clinic, patient, slot, actor, **extra):
    return services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slot.pk, actor=actor, source="bot", **extra
    )


# --- booking -----------------------------------------------------------------------------------


def test_it_books_a_free_slot_audits_and_emits_after_commit(
    clinic,
    patient,
    slots,
    patient_actor,
    specialty,
    captured_events,
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        appointment = book(clinic, patient, slots[0], patient_actor, notes="  fiebre  ")
        assert captured_events == []  # nothing leaves before commit
    slot = Slot.objects.get(pk=slots[0].pk)
    assert slot.status == SlotStatus.BOOKED
    assert appointment.doctor_id == slot.doctor_id
    assert (appointment.start_at, appointment.end_at) == (slot.start_at, slot.end_at)
    assert appointment.patient_notes == "fiebre"
    assert appointment.specialty == specialty  # the doctor's only specialty
    audit = AuditEvent.objects.get(action="appointment.book")
    assert audit.actor_type == "patient" and audit.actor_id == str(patient.pk)
    assert audit.before is None and audit.after["status"] == "booked"
    assert "1020304050" not in audit.actor_label
    assert [(c, n) for c, n, _ in captured_events] == [(clinic.pk, "cita.creada")]
    assert captured_events[0][2]["appointment_id"] == appointment.pk


def test_it_refuses_a_booked_slot_with_slot_taken(
    clinic, patient, other_patient, slots, staff_actor
):
    book(clinic, patient, slots[0], staff_actor)
    before = row_counts()
    with pytest.raises(services.SlotTaken) as err:
        book(clinic, other_patient, slots[0], staff_actor)
    assert err.value.code == "slot_taken"
    assert row_counts() == before


@pytest.mark.parametrize(
    "case, error, code",
    [
        ("past", services.SlotUnavailable, "slot_in_past"),
        ("blocked", services.SlotUnavailable, "slot_blocked"),
        ("missing_slot", services.SlotUnavailable, "slot_not_found"),
        ("other_clinic_slot", services.WrongClinic, "wrong_clinic"),
        ("unknown_patient", services.PatientNotFound, "patient_not_found"),
        ("other_clinic_patient", services.WrongClinic, "wrong_clinic"),
        ("bad_source", services.InvalidInput, "invalid_input"),
        ("bad_slot_id", services.InvalidInput, "invalid_input"),
    ],
)
def test_it_refuses_bad_bookings_cleanly(
    case, error, code, clinic, other_clinic, patient, slots, other_slots, past_slot, staff_actor
):
    slot_id, who, source = slots[0].pk, patient, "staff"
    if case == "past":
        slot_id = past_slot.pk
    elif case == "blocked":
        Slot.objects.filter(pk=slot_id).update(status=SlotStatus.BLOCKED)
    elif case == "missing_slot":
        slot_id = 999_999_999
    elif case == "other_clinic_slot":
        slot_id = other_slots[0].pk
    elif case == "unknown_patient":
        who = Patient(clinic=clinic, document="12345678", full_name="Nadie")
    elif case == "other_clinic_patient":
        who = Patient.objects.create(clinic=other_clinic, document="12345678", full_name="Otra")
    elif case == "bad_source":
        source = "fax"
    elif case == "bad_slot_id":
        slot_id = "abc"
    before = row_counts()
    with pytest.raises(error) as err:
        services.appointment_book(
            clinic=clinic, patient=who, slot_id=slot_id, actor=staff_actor, source=source
        )
    assert isinstance(err.value, BookingError)
    assert err.value.code == code and err.value.message
    assert row_counts() == before


def test_it_refuses_a_patient_overlap(clinic, patient, doctor, slots, staff_actor):
    second = services_doctor_slot(clinic, slots[0].start_at + dt.timedelta(minutes=10))
    book(clinic, patient, slots[0], staff_actor)
    before = row_counts()
    with pytest.raises(services.PatientOverlap) as err:
        book(clinic, patient, second, staff_actor)
    assert err.value.code == "patient_overlap"
    assert row_counts() == before
    assert Slot.objects.get(pk=second.pk).status == SlotStatus.FREE


def services_doctor_slot(clinic, start):
    from clinics.models import Doctor

    other = Doctor.objects.create(clinic=clinic, full_name="Dra. Ruiz")
    return make_slots(other, start, 1)[0]


@on_postgresql
def test_it_turns_a_database_overlap_into_a_clean_error(
    clinic, patient, other_patient, doctor, slots, staff_actor
):
    """Two slots of one doctor overlap (say, a changed slot length): the database refuses."""
    overlapping = Slot.objects.create(
        clinic=clinic,
        doctor=doctor,
        start_at=slots[0].start_at + dt.timedelta(minutes=10),
        end_at=slots[0].end_at + dt.timedelta(minutes=10),
    )
    book(clinic, patient, slots[0], staff_actor)
    before = row_counts()
    with pytest.raises(services.SlotTaken):
        book(clinic, other_patient, overlapping, staff_actor)
    assert row_counts() == before
    assert Slot.objects.get(pk=overlapping.pk).status == SlotStatus.FREE


@on_postgresql
def test_it_refuses_overlapping_doctor_appointments_in_the_database(
    clinic, patient, other_patient, doctor, slots
):
    start = slots[0].start_at
    Appointment.objects.create(
        clinic=clinic, patient=patient, slot=slots[0], doctor=doctor,
        start_at=start, end_at=start + dt.timedelta(minutes=20), source="staff",
    )  # fmt: skip
    with pytest.raises(IntegrityError), transaction.atomic():
        Appointment.objects.create(
            clinic=clinic, patient=other_patient, slot=slots[1], doctor=doctor,
            start_at=start + dt.timedelta(minutes=10), end_at=start + dt.timedelta(minutes=30),
            source="staff",
        )  # fmt: skip


@on_postgresql
def test_it_refuses_overlapping_patient_appointments_in_the_database(clinic, patient, slots):
    other = services_doctor_slot(clinic, slots[0].start_at)
    Appointment.objects.create(
        clinic=clinic, patient=patient, slot=slots[0], doctor=slots[0].doctor,
        start_at=slots[0].start_at, end_at=slots[0].end_at, source="staff",
    )  # fmt: skip
    with pytest.raises(IntegrityError), transaction.atomic():
        Appointment.objects.create(
            clinic=clinic, patient=patient, slot=other, doctor=other.doctor,
            start_at=other.start_at, end_at=other.end_at, source="staff",
        )  # fmt: skip


def test_it_allows_back_to_back_appointments(clinic, patient, slots, staff_actor):
    book(clinic, patient, slots[0], staff_actor)
    book(clinic, patient, slots[1], staff_actor)
    assert Appointment.objects.filter(patient=patient).count() == 2


class _GenericDatabase:
    """Stands in for `services.connection` so `appointment_book` takes its generic ORM path
    (the one the embedded SQLite demo runs) while the data stays on PostgreSQL."""

    vendor = "sqlite"

    def __getattr__(self, name: str):
        return getattr(connection, name)


@pytest.fixture(params=["postgresql", "generic"])
def booking_path(request, monkeypatch):
    if request.param == "generic":
        monkeypatch.setattr(services, "connection", _GenericDatabase())
    return request.param


def _booked_rows(appointment):
    fresh = Appointment.objects.get(pk=appointment.pk)
    audit = AuditEvent.objects.get(action="appointment.book", object_id=str(appointment.pk))
    return fresh, audit


def test_it_books_the_same_rows_on_both_booking_paths(
    booking_path, clinic, patient, other_patient, slots, patient_actor, specialty
):
    hold = services.slot_hold(
        clinic=clinic, slot_id=slots[0].pk, holder="conversation:1", patient=patient
    )
    appointment = book(
        clinic, patient, slots[0], patient_actor, holder="conversation:1", notes=" tos ",
        specialty=specialty,
    )  # fmt: skip
    fresh, audit = _booked_rows(appointment)
    # The returned instance is the row as stored, and a saved one (it can be updated).
    for field in Appointment._meta.concrete_fields:
        assert getattr(appointment, field.attname) == getattr(fresh, field.attname), field.name
    assert not appointment._state.adding
    assert audit.before is None and audit.after == services._appointment_state(fresh)
    assert audit.after["id"] == appointment.pk and audit.actor_id == str(patient.pk)
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.BOOKED
    assert SlotHold.objects.get(pk=hold.pk).released_at is not None
    # A free slot has no hold to close; the other holder's open hold stays open.
    other = services.slot_hold(clinic=clinic, slot_id=slots[2].pk, holder="conversation:2")
    book(clinic, other_patient, slots[1], patient_actor)
    assert SlotHold.objects.get(pk=other.pk).released_at is None
    cancelled = services.appointment_cancel(
        clinic=clinic, appointment_id=appointment.pk, actor=patient_actor
    )
    assert cancelled.status == "cancelled"


@on_postgresql
def test_it_books_a_held_slot_in_three_statements(clinic, patient, slots, patient_actor):
    """The slot's lock and rules, then the appointment with the slot marked booked and its
    hold released (one data-modifying WITH), then the audit row."""
    hold = services.slot_hold(
        clinic=clinic, slot_id=slots[0].pk, holder="conversation:1", patient=patient
    )
    with CaptureQueriesContext(connection) as queries:
        appointment = book(clinic, patient, slots[0], patient_actor, holder="conversation:1")
    # (The test's own transaction makes the booking's a savepoint.)
    statements = [q["sql"] for q in queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 3, statements
    assert "FOR UPDATE" in statements[0]
    assert statements[1].startswith("WITH a AS (INSERT INTO")
    assert '"clinics_slothold"' in statements[1] and '"clinics_slot"' in statements[1]
    assert '"clinics_auditevent"' in statements[2]
    assert Appointment.objects.get(pk=appointment.pk).slot_id == slots[0].pk
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.BOOKED
    assert SlotHold.objects.get(pk=hold.pk).released_at is not None


def test_it_refuses_the_same_way_on_both_booking_paths(
    booking_path, clinic, patient, other_patient, doctor, slots, staff_actor
):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    book(clinic, patient, slots[1], staff_actor)
    Slot.objects.filter(pk=slots[2].pk).update(status=SlotStatus.BLOCKED)
    before = row_counts()
    cases = [
        (slots[0], other_patient, {"holder": "conversation:2"}, "slot_taken"),
        (slots[0], other_patient, {}, "slot_taken"),
        (slots[1], other_patient, {}, "slot_taken"),
        (slots[2], other_patient, {}, "slot_blocked"),
        (services_doctor_slot(clinic, slots[1].start_at), patient, {}, "patient_overlap"),
    ]
    for slot, who, extra, code in cases:
        with pytest.raises(BookingError) as err:
            book(clinic, who, slot, staff_actor, **extra)
        assert err.value.code == code, (slot.pk, code)
    assert row_counts() == {**before, "slots": before["slots"] + 1}  # the extra doctor's slot
    doctor.active = False
    doctor.save(update_fields=["active"])
    with pytest.raises(services.SlotUnavailable) as err:
        book(clinic, other_patient, slots[5], staff_actor)
    assert err.value.code == "slot_blocked"


def test_it_leaves_the_specialty_empty_when_the_doctor_has_several(
    booking_path, clinic, patient, doctor, slots, staff_actor
):
    from clinics.models import Specialty

    doctor.specialties.add(Specialty.objects.create(clinic=clinic, slug="pediatria", name="P"))
    appointment = book(clinic, patient, slots[0], staff_actor)
    assert appointment.specialty_id is None
    assert Appointment.objects.get(pk=appointment.pk).specialty_id is None


# --- holds -------------------------------------------------------------------------------------


def test_it_holds_a_slot_and_hides_it_from_others(
    clinic, patient, slots, other_patient, staff_actor
):
    hold = services.slot_hold(
        clinic=clinic, slot_id=slots[0].pk, holder="conversation:1", patient=patient
    )
    slot = Slot.objects.get(pk=slots[0].pk)
    assert slot.status == SlotStatus.HELD and slot.held_until == hold.expires_at
    assert dt.timedelta(minutes=4) < hold.expires_at - timezone.now() <= dt.timedelta(minutes=5)
    shown = available_slots(clinic=clinic, page_size=50, min_notice=dt.timedelta(0)).slots
    assert slots[0] not in shown
    mine = available_slots(
        clinic=clinic, page_size=50, min_notice=dt.timedelta(0), include_held_by="conversation:1"
    ).slots
    assert slots[0] in mine
    with pytest.raises(services.SlotTaken):
        services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:2")
    with pytest.raises(services.SlotTaken):
        book(clinic, other_patient, slots[0], staff_actor, holder="conversation:2")
    appointment = book(clinic, patient, slots[0], staff_actor, holder="conversation:1")
    assert appointment.slot_id == slots[0].pk
    assert SlotHold.objects.get(pk=hold.pk).released_at is not None


def test_it_treats_an_expired_hold_as_free(clinic, slots, patient, other_patient, staff_actor):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1", minutes=5)
    later = timezone.now() + dt.timedelta(minutes=6)
    page = available_slots(clinic=clinic, page_size=50, min_notice=dt.timedelta(0), now=later)
    assert slots[0] in page.slots
    # Booking needs no tidy-up job: it compares held_until with the clock. Pretend the hold
    # started six minutes ago instead of sleeping.
    past = timezone.now() - dt.timedelta(seconds=1)
    Slot.objects.filter(pk=slots[0].pk).update(held_until=past)
    SlotHold.objects.filter(slot=slots[0]).update(expires_at=past)
    appointment = book(clinic, other_patient, slots[0], staff_actor, holder="conversation:2")
    assert appointment.patient == other_patient


def test_it_expires_holds_in_the_tidy_up_job(clinic, slots):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    services.slot_hold(clinic=clinic, slot_id=slots[1].pk, holder="conversation:2", minutes=30)
    freed = services.holds_expire(now=timezone.now() + dt.timedelta(minutes=10))
    assert freed == 1
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE
    assert Slot.objects.get(pk=slots[1].pk).status == SlotStatus.HELD
    assert SlotHold.objects.get(slot=slots[0]).released_at is not None


def test_it_keeps_one_hold_per_holder(clinic, slots):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    services.slot_hold(clinic=clinic, slot_id=slots[1].pk, holder="conversation:1")
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE
    assert Slot.objects.get(pk=slots[1].pk).status == SlotStatus.HELD
    assert SlotHold.objects.filter(holder="conversation:1", released_at=None).count() == 1
    # Holding the same slot again renews it.
    services.slot_hold(clinic=clinic, slot_id=slots[1].pk, holder="conversation:1")
    assert SlotHold.objects.filter(holder="conversation:1", released_at=None).count() == 1


def test_it_releases_only_the_holders_hold(clinic, slots):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    assert (
        services.slot_release(clinic=clinic, slot_id=slots[0].pk, holder="conversation:2") is False
    )
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.HELD
    assert (
        services.slot_release(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1") is True
    )
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"holder": ""}, "invalid_input"),
        ({"minutes": 0}, "invalid_input"),
        ({"minutes": 1000}, "invalid_input"),
        ({"slot_id": -1}, "invalid_input"),
        ({"slot_id": 999_999_999}, "slot_not_found"),
    ],
)
def test_it_refuses_bad_holds_cleanly(kwargs, code, clinic, slots):
    args = {"clinic": clinic, "slot_id": slots[0].pk, "holder": "conversation:1", **kwargs}
    before = row_counts()
    with pytest.raises(BookingError) as err:
        services.slot_hold(**args)
    assert err.value.code == code
    assert row_counts() == before


def test_it_refuses_to_hold_past_blocked_or_foreign_slots(clinic, past_slot, other_slots, slots):
    Slot.objects.filter(pk=slots[1].pk).update(status=SlotStatus.BLOCKED)
    before = row_counts()
    for slot_id, code in [
        (past_slot.pk, "slot_in_past"),
        (slots[1].pk, "slot_blocked"),
        (other_slots[0].pk, "wrong_clinic"),
    ]:
        with pytest.raises(BookingError) as err:
            services.slot_hold(clinic=clinic, slot_id=slot_id, holder="conversation:1")
        assert err.value.code == code
    assert row_counts() == before


# --- cancel / reschedule / status --------------------------------------------------------------


def test_it_cancels_and_frees_the_slot_at_once(
    clinic, patient, slots, patient_actor, captured_events, django_capture_on_commit_callbacks
):
    appointment = book(clinic, patient, slots[0], patient_actor)
    with django_capture_on_commit_callbacks(execute=True):
        services.appointment_cancel(
            clinic=clinic, appointment_id=appointment.pk, actor=patient_actor,
            reason="viaje", patient=patient,
        )  # fmt: skip
    appointment.refresh_from_db()
    assert appointment.status == "cancelled" and appointment.cancel_reason == "viaje"
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE
    assert [n for _, n, _ in captured_events] == ["cita.cancelada", "slot.liberado"]
    audit = AuditEvent.objects.get(action="appointment.cancel")
    assert audit.before["status"] == "booked" and audit.after["status"] == "cancelled"
    # The freed slot can be booked again.
    assert book(clinic, patient, slots[0], patient_actor).status == "booked"


def test_it_hides_other_patients_appointments_when_cancelling(
    clinic, other_clinic, patient, other_patient, slots, other_slots, staff_actor
):
    appointment = book(clinic, patient, slots[0], staff_actor)
    before = row_counts()
    with pytest.raises(services.AppointmentNotFound) as err:
        services.appointment_cancel(
            clinic=clinic, appointment_id=appointment.pk, actor=staff_actor, patient=other_patient
        )
    assert isinstance(err.value, services.NotCancellable)
    with pytest.raises(services.AppointmentNotFound):
        services.appointment_cancel(
            clinic=other_clinic, appointment_id=appointment.pk, actor=staff_actor
        )
    with pytest.raises(services.AppointmentNotFound):
        services.appointment_cancel(clinic=clinic, appointment_id=987654, actor=staff_actor)
    assert row_counts() == before


def test_it_cancels_only_upcoming_active_appointments(clinic, patient, slots, staff_actor):
    appointment = book(clinic, patient, slots[0], staff_actor)
    services.appointment_cancel(clinic=clinic, appointment_id=appointment.pk, actor=staff_actor)
    with pytest.raises(services.NotCancellable) as err:
        services.appointment_cancel(clinic=clinic, appointment_id=appointment.pk, actor=staff_actor)
    assert err.value.code == "not_cancellable"
    started = book(clinic, patient, slots[1], staff_actor)
    Appointment.objects.filter(pk=started.pk).update(
        start_at=timezone.now() - dt.timedelta(minutes=5)
    )
    with pytest.raises(services.NotCancellable):
        services.appointment_cancel(clinic=clinic, appointment_id=started.pk, actor=staff_actor)


def test_it_reschedules_atomically(
    clinic, patient, slots, patient_actor, captured_events, django_capture_on_commit_callbacks
):
    old = book(clinic, patient, slots[0], patient_actor, notes="tos")
    services.slot_hold(clinic=clinic, slot_id=slots[5].pk, holder="conversation:1")
    with django_capture_on_commit_callbacks(execute=True):
        new = services.appointment_reschedule(
            clinic=clinic, appointment_id=old.pk, new_slot_id=slots[5].pk, actor=patient_actor,
            holder="conversation:1", patient=patient,
        )  # fmt: skip
    old.refresh_from_db()
    assert old.status == "cancelled"
    assert new.rescheduled_from == old and new.patient_notes == "tos" and new.source == "bot"
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE
    assert Slot.objects.get(pk=slots[5].pk).status == SlotStatus.BOOKED
    assert {"appointment.cancel", "appointment.reschedule"} <= set(
        AuditEvent.objects.values_list("action", flat=True)
    )
    assert "cita.reprogramada" in [n for _, n, _ in captured_events]


def test_it_reschedules_keeping_the_specialty_without_reading_it_again(
    clinic, patient, slots, staff_actor, specialty
):
    old = book(clinic, patient, slots[0], staff_actor, specialty=specialty)
    with CaptureQueriesContext(connection) as queries:
        new = services.appointment_reschedule(
            clinic=clinic, appointment_id=old.pk, new_slot_id=slots[3].pk, actor=staff_actor
        )
    assert new.specialty_id == old.specialty_id == specialty.pk
    assert not [q for q in queries if '"clinics_specialty"' in q["sql"]]


def test_it_reschedules_to_an_overlapping_time_of_the_same_patient(
    clinic, patient, slots, staff_actor
):
    """Moving 20 minutes later overlaps only the appointment being replaced: allowed."""
    other = services_doctor_slot(clinic, slots[0].start_at + dt.timedelta(minutes=10))
    old = book(clinic, patient, slots[0], staff_actor)
    new = services.appointment_reschedule(
        clinic=clinic, appointment_id=old.pk, new_slot_id=other.pk, actor=staff_actor
    )
    assert new.start_at == other.start_at


def test_it_leaves_everything_as_it_was_when_a_reschedule_fails(
    clinic, patient, other_patient, slots, past_slot, staff_actor
):
    old = book(clinic, patient, slots[0], staff_actor)
    book(clinic, other_patient, slots[1], staff_actor)
    before = row_counts()
    for new_slot_id, code in [
        (slots[1].pk, "slot_taken"),
        (past_slot.pk, "slot_in_past"),
        (999_999_999, "slot_not_found"),
        (slots[0].pk, "invalid_input"),
    ]:
        with pytest.raises(BookingError) as err:
            services.appointment_reschedule(
                clinic=clinic, appointment_id=old.pk, new_slot_id=new_slot_id, actor=staff_actor
            )
        assert err.value.code == code
    assert row_counts() == before
    old.refresh_from_db()
    assert old.status == "booked"


def test_it_sets_statuses_with_rules(clinic, patient, slots, staff_actor):
    appointment = book(clinic, patient, slots[0], staff_actor)
    confirmed = services.appointment_set_status(
        clinic=clinic, appointment_id=appointment.pk, status="confirmed", actor=staff_actor
    )
    assert confirmed.status == "confirmed"
    with pytest.raises(services.InvalidInput) as err:
        services.appointment_set_status(
            clinic=clinic, appointment_id=appointment.pk, status="no_show", actor=staff_actor
        )
    assert err.value.code == "invalid_status"  # it has not started yet
    with pytest.raises(services.InvalidInput):
        services.appointment_set_status(
            clinic=clinic, appointment_id=appointment.pk, status="cancelled", actor=staff_actor
        )
    Appointment.objects.filter(pk=appointment.pk).update(
        start_at=timezone.now() - dt.timedelta(minutes=30),
        end_at=timezone.now() - dt.timedelta(minutes=10),
    )
    attended = services.appointment_set_status(
        clinic=clinic, appointment_id=appointment.pk, status="attended", actor=staff_actor
    )
    assert attended.status == "attended"
    assert AuditEvent.objects.filter(action="appointment.attended").count() == 1


# --- patients ----------------------------------------------------------------------------------


def test_it_registers_a_patient_with_an_audit_without_the_document(clinic, caplog):
    with caplog.at_level("DEBUG"):
        patient = services.patient_register(
            clinic=clinic, document=" 52123456 ", full_name="  María   López ",
            birth_date=dt.date(1990, 5, 1), whatsapp_id="573112223344",
            actor=Actor(type="patient"),
        )  # fmt: skip
    assert patient.document == "52123456" and patient.full_name == "María López"
    audit = AuditEvent.objects.get(action="patient.register")
    assert audit.actor_id == str(patient.pk)
    assert "52123456" not in str(audit.after) and "573112223344" not in str(audit.after)
    assert "52123456" not in caplog.text and "573112223344" not in caplog.text


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"document": "52.123.456"}, "invalid_document"),
        ({"document": "1234567"}, "invalid_document"),
        ({"document": "abcdefghij"}, "invalid_document"),
        ({"document": "1020304050"}, "patient_exists"),
        ({"full_name": " "}, "invalid_input"),
        ({"birth_date": dt.date(2999, 1, 1)}, "invalid_input"),
        ({"birth_date": "1990-01-01"}, "invalid_input"),
        ({"whatsapp_id": "call me"}, "invalid_input"),
    ],
)
def test_it_refuses_bad_registrations_cleanly(kwargs, code, clinic, patient, staff_actor):
    args = {
        "clinic": clinic, "document": "52123456", "full_name": "María López",
        "birth_date": dt.date(1990, 5, 1), "actor": staff_actor, **kwargs,
    }  # fmt: skip
    before = row_counts()
    with pytest.raises(BookingError) as err:
        services.patient_register(**args)
    assert err.value.code == code
    assert row_counts() == before


def test_it_refuses_self_registration_when_the_clinic_turned_it_off(clinic):
    clinic.self_registration = False
    clinic.save()
    with pytest.raises(services.RegistrationClosed):
        services.patient_register(
            clinic=clinic, document="52123456", full_name="María López",
            birth_date=dt.date(1990, 5, 1), actor=Actor(type="patient"),
        )  # fmt: skip


def test_it_refuses_an_unknown_actor_type(clinic, patient, slots):
    with pytest.raises(services.InvalidInput):
        book(clinic, patient, slots[0], Actor(type="robot"))


def test_it_marks_free_slots_in_a_new_blocked_period_as_blocked(clinic, doctor, slots):
    BlockedPeriod.objects.create(
        clinic=clinic, starts_at=slots[0].start_at, ends_at=slots[3].start_at, reason="Festivo"
    )
    day = timezone.localdate(slots[0].start_at, clinic.tz)
    services.slots_generate(clinic=clinic, date_from=day, date_to=day)
    statuses = list(
        Slot.objects.filter(pk__in=[s.pk for s in slots[:4]]).order_by("start_at")
        .values_list("status", flat=True)
    )  # fmt: skip
    assert statuses == ["blocked", "blocked", "blocked", "free"]


def test_it_emits_hold_events_and_frees_the_previous_hold(
    clinic, slots, captured_events, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    with django_capture_on_commit_callbacks(execute=True):
        services.slot_hold(clinic=clinic, slot_id=slots[1].pk, holder="conversation:1")
    names = [(n, p["slot_id"]) for _, n, p in captured_events]
    assert names == [
        ("slot.retenido", slots[0].pk),
        ("slot.liberado", slots[0].pk),
        ("slot.retenido", slots[1].pk),
    ]


def test_it_drops_events_of_a_rolled_back_transaction(
    clinic, patient, slots, staff_actor, captured_events, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        try:
            with transaction.atomic():
                book(clinic, patient, slots[0], staff_actor)
                raise RuntimeError("the caller failed after booking")
        except RuntimeError:
            pass
    assert captured_events == []
    assert not Appointment.objects.exists()
    assert Slot.objects.get(pk=slots[0].pk).status == SlotStatus.FREE


def test_it_keeps_going_when_an_event_receiver_fails(
    clinic, patient, slots, staff_actor, captured_events, django_capture_on_commit_callbacks
):
    def broken(**kwargs):
        raise ValueError("receiver bug")

    domain_event.connect(broken, dispatch_uid="test-broken")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            book(clinic, patient, slots[0], staff_actor)
    finally:
        domain_event.disconnect(dispatch_uid="test-broken")
    assert [n for _, n, _ in captured_events] == ["cita.creada"]


def test_it_leaves_the_callers_transaction_usable_after_a_database_refusal(
    clinic, patient, slots, staff_actor
):
    """The bot runs a turn in its own transaction and answers a refusal: it must go on."""
    other = services_doctor_slot(clinic, slots[0].start_at)
    book(clinic, patient, slots[0], staff_actor)
    with transaction.atomic():
        with pytest.raises(services.PatientOverlap):
            book(clinic, patient, other, staff_actor)
        # The transaction is not aborted: the caller can keep reading and writing.
        assert Slot.objects.get(pk=other.pk).status == SlotStatus.FREE
        book(clinic, patient, slots[1], staff_actor)
    assert Appointment.objects.filter(patient=patient).count() == 2


def test_it_passes_the_service_tests_on_sqlite(tmp_path):
    """The booking path's hand-written statements run on the embedded demo's database too."""
    run_on_sqlite(tmp_path, __file__)
