"""The only code that books, holds, cancels and reschedules (DESIGN §4). Keyword-only functions.

Every failure a caller can cause raises a `BookingError` subclass with a stable `code`; callers
(bot engine, views, API) map codes to messages. Nothing is half-written: each service runs in one
transaction, and database constraint violations become `BookingError`s inside a savepoint.

Lock order, to stay deadlock-free: slots (by id) first, then appointments.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Exists, OuterRef, Q, Value, When
from django.utils import timezone

from clinics import events
from clinics.errors import (  # noqa: F401  (re-exported: callers catch services.X)
    AppointmentNotFound,
    BookingError,
    InvalidInput,
    NotCancellable,
    NotHolder,
    PatientExists,
    PatientNotFound,
    PatientOverlap,
    RegistrationClosed,
    SlotTaken,
    SlotUnavailable,
    WrongClinic,
)
from clinics.models import (
    OCCUPYING_STATUSES,
    UPCOMING_STATUSES,
    Appointment,
    AppointmentSource,
    AppointmentStatus,
    AuditEvent,
    BlockedPeriod,
    Clinic,
    Doctor,
    IdentityFailure,
    IdentityLockout,
    Patient,
    PatientPhone,
    Slot,
    SlotHold,
    SlotStatus,
    Specialty,
)
from clinics.scheduling import generate_slots

logger = logging.getLogger(__name__)

DOCUMENT_RE = re.compile(r"^\d{8,15}$")
WHATSAPP_ID_RE = re.compile(r"^\d{6,20}$")
MAX_HOLD_MINUTES = 60
MAX_NOTES = 2000


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit trail. `type` is an AuditEvent.ActorType value."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def patient(cls, patient: Patient) -> Actor:
        return cls(
            AuditEvent.ActorType.PATIENT, str(patient.pk), f"patient {patient.masked_document}"
        )

    @classmethod
    def staff(cls, user) -> Actor:
        return cls(AuditEvent.ActorType.STAFF, str(user.pk), user.get_username())

    @classmethod
    def api(cls, key_id: str | int, label: str = "") -> Actor:
        return cls(AuditEvent.ActorType.API, str(key_id), label)

    @classmethod
    def system(cls, label: str) -> Actor:
        return cls(AuditEvent.ActorType.SYSTEM, "", label)


# --- helpers ---------------------------------------------------------------------------------


def _audit(
    *,
    clinic: Clinic,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: object,
    before: dict | None,
    after: dict | None,
    at: dt.datetime,
) -> None:
    AuditEvent.objects.create(
        clinic=clinic,
        actor_type=actor.type,
        actor_id=str(actor.id)[:64],
        actor_label=str(actor.label)[:200],
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        before=before,
        after=after,
        at=at,
    )


def _appointment_state(appointment: Appointment) -> dict:
    return {
        "id": appointment.pk,
        "status": appointment.status,
        "slot_id": appointment.slot_id,
        "doctor_id": appointment.doctor_id,
        "patient_id": appointment.patient_id,
        "specialty_id": appointment.specialty_id,
        "start_at": appointment.start_at.isoformat(),
        "end_at": appointment.end_at.isoformat(),
        "source": appointment.source,
        "cancel_reason": appointment.cancel_reason,
        "rescheduled_from_id": appointment.rescheduled_from_id,
    }


def _event_payload(appointment: Appointment) -> dict:
    return {
        "appointment_id": appointment.pk,
        "slot_id": appointment.slot_id,
        "patient_id": appointment.patient_id,
        "doctor_id": appointment.doctor_id,
        "specialty_id": appointment.specialty_id,
        "start_at": appointment.start_at.isoformat(),
        "end_at": appointment.end_at.isoformat(),
        "status": appointment.status,
        "source": appointment.source,
    }


def _mask(value: str) -> str:
    return f"…{value[-4:]}" if value else ""


def _check_actor(actor: Actor) -> None:
    if not isinstance(actor, Actor) or actor.type not in AuditEvent.ActorType.values:
        raise InvalidInput("actor must be an Actor with a known type")


def _check_id(value: object, what: str) -> int:
    # bool is an int subclass; a stray True must not book slot 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        try:
            value = int(str(value))
        except ValueError:
            raise InvalidInput(f"{what} must be a positive integer") from None
        if value <= 0:
            raise InvalidInput(f"{what} must be a positive integer")
    return value


def _check_patient(clinic: Clinic, patient: Patient | None, *, query: bool = True) -> Patient:
    """The patient object is this clinic's; with `query`, it still exists in the database."""
    if patient is None or patient.pk is None:
        raise PatientNotFound("no patient given")
    if patient.clinic_id != clinic.pk:
        raise WrongClinic("the patient belongs to another clinic")
    if query and not Patient.objects.filter(pk=patient.pk, clinic=clinic).exists():
        raise PatientNotFound("the patient does not exist")
    return patient


def _lock_slots(
    clinic: Clinic, slot_ids: list[int], also: list[int] = (), patient: Patient | None = None
) -> dict[int, Slot]:
    """Lock `slot_ids` (which must be this clinic's) and `also` in one statement, in id order,
    so two services never deadlock. With `patient`, the same statement checks the patient
    still exists (the foreign key is only checked at COMMIT, too late for a clean error)."""
    rows = (
        Slot.objects.select_for_update(of=("self",))
        .select_related("doctor")
        .filter(pk__in={*slot_ids, *also})
        .order_by("pk")
    )
    if patient is not None:
        rows = rows.annotate(
            patient_exists=Exists(Patient.objects.filter(pk=patient.pk, clinic=clinic))
        )
    locked = {s.pk: s for s in rows}
    for slot_id in slot_ids:
        slot = locked.get(slot_id)
        if slot is None:
            raise SlotUnavailable(f"slot {slot_id} does not exist", code="slot_not_found")
        if slot.clinic_id != clinic.pk:
            raise WrongClinic(f"slot {slot_id} belongs to another clinic")
        if patient is not None and not slot.patient_exists:
            raise PatientNotFound("the patient does not exist")
    return locked


def _live_hold_by(slot: Slot, holder: str | None, now: dt.datetime) -> SlotHold | None:
    if not holder:
        return None
    return (
        SlotHold.objects.filter(slot=slot, holder=holder, released_at=None, expires_at__gt=now)
        .order_by("-expires_at")
        .first()
    )


def slot_in_blocked_period(
    *, clinic_id: int, doctor_id: int, start_at: dt.datetime, end_at: dt.datetime
) -> bool:
    """Does a blocked period (holiday, absence) cover any part of this time of this doctor?

    The rule that such a time is never held or booked, whatever the slot's status says: a
    period entered after the slot was generated, or one whose booked slot was cancelled since.
    """
    return BlockedPeriod.objects.covering(
        clinic_id=clinic_id, doctor_id=doctor_id, start_at=start_at, end_at=end_at
    ).exists()


def _check_slot_state(
    *,
    start_at: dt.datetime,
    status: str,
    held_until: dt.datetime | None,
    doctor_active: bool,
    now: dt.datetime,
    holder_holds_it: Callable[[], bool],
    in_blocked_period: Callable[[], bool],
) -> None:
    """The booking rules for a locked slot, on plain values so both booking paths (the ORM one
    and the PostgreSQL fast path of `appointment_book`) share them. `holder_holds_it` is only
    asked when the slot is held live and `in_blocked_period` when the slot is otherwise
    bookable, so callers may make them lazy."""
    if start_at <= now:
        raise SlotUnavailable("the slot has already started", code="slot_in_past")
    if status == SlotStatus.BLOCKED or not doctor_active:
        raise SlotUnavailable("the slot is blocked", code="slot_blocked")
    if status == SlotStatus.BOOKED:
        raise SlotTaken("the slot is already booked")
    held_live = status == SlotStatus.HELD and held_until is not None and held_until > now
    if held_live and not holder_holds_it():
        raise SlotTaken("someone else is holding the slot")
    if in_blocked_period():
        raise SlotUnavailable("the slot is inside a blocked period", code="slot_blocked")


def _check_bookable(slot: Slot, *, holder: str | None, now: dt.datetime) -> None:
    """Raise unless `holder` may take this (locked) slot now."""
    _check_slot_state(
        start_at=slot.start_at,
        status=slot.status,
        held_until=slot.held_until,
        doctor_active=slot.doctor.active,
        now=now,
        holder_holds_it=lambda: _live_hold_by(slot, holder, now) is not None,
        in_blocked_period=lambda: slot_in_blocked_period(
            clinic_id=slot.clinic_id,
            doctor_id=slot.doctor_id,
            start_at=slot.start_at,
            end_at=slot.end_at,
        ),
    )


def _free_slot(slot: Slot) -> bool:
    """Give a (locked) slot back: free, or blocked when a blocked period covers it now.

    True when it became free (callers emit slot.liberado only then).
    """
    blocked = slot_in_blocked_period(
        clinic_id=slot.clinic_id, doctor_id=slot.doctor_id, start_at=slot.start_at,
        end_at=slot.end_at,
    )  # fmt: skip
    slot.status = SlotStatus.BLOCKED if blocked else SlotStatus.FREE
    slot.held_until = None
    slot.save(update_fields=["status", "held_until", "updated_at"])
    return not blocked


def _integrity_to_booking_error(exc: IntegrityError) -> BookingError:
    cause = exc.__cause__
    diag = getattr(cause, "diag", None)
    name = (getattr(diag, "constraint_name", None) or str(exc)).lower()
    if "patient" in name:
        return PatientOverlap("the patient already has an appointment at that time")
    if "doctor" in name:
        return SlotTaken("the doctor already has an appointment at that time")
    return SlotTaken("the slot was booked by someone else")


def _source_for(actor: Actor) -> str:
    return {
        AuditEvent.ActorType.PATIENT: AppointmentSource.BOT,
        AuditEvent.ActorType.API: AppointmentSource.API,
    }.get(actor.type, AppointmentSource.STAFF)


def _book_locked(
    *,
    clinic: Clinic,
    patient: Patient,
    slot: Slot,
    actor: Actor,
    source: str,
    specialty: Specialty | None,
    notes: str,
    holder: str | None,
    now: dt.datetime,
    rescheduled_from: Appointment | None = None,
) -> Appointment:
    """Book a slot the caller has locked, inside the caller's transaction."""
    _check_bookable(slot, holder=holder, now=now)
    # On PostgreSQL the exclusion constraint answers this at the INSERT (no extra query); the
    # embedded SQLite demo has no such constraint, so it asks first.
    if (
        connection.vendor != "postgresql"
        and Appointment.objects.filter(
            patient=patient,
            status__in=OCCUPYING_STATUSES,
            start_at__lt=slot.end_at,
            end_at__gt=slot.start_at,
        ).exists()
    ):
        raise PatientOverlap("the patient already has an appointment at that time")
    if specialty is None:
        only = list(slot.doctor.specialties.values_list("pk", flat=True)[:2])
        specialty_id = only[0] if len(only) == 1 else None
    else:
        specialty_id = specialty.pk
    appointment = Appointment(
        clinic=clinic,
        patient=patient,
        slot=slot,
        doctor_id=slot.doctor_id,
        specialty_id=specialty_id,
        start_at=slot.start_at,
        end_at=slot.end_at,
        status=AppointmentStatus.BOOKED,
        patient_notes=notes,
        source=source,
        rescheduled_from=rescheduled_from,
    )
    # No inner savepoint needed: the caller's atomic block (itself a savepoint when nested in an
    # outer transaction) is left by the BookingError raised here and rolls everything back.
    try:
        appointment.save(force_insert=True)
    except IntegrityError as exc:
        raise _integrity_to_booking_error(exc) from exc
    was_held = slot.status == SlotStatus.HELD
    slot.status = SlotStatus.BOOKED
    slot.held_until = None
    slot.save(update_fields=["status", "held_until", "updated_at"])
    if was_held:
        SlotHold.objects.filter(slot=slot, released_at=None).update(released_at=now)
    return appointment


def _load_appointment(
    clinic: Clinic, appointment_id: object, patient: Patient | None
) -> Appointment:
    appointment_id = _check_id(appointment_id, "appointment_id")
    appointment = Appointment.objects.filter(pk=appointment_id, clinic=clinic).first()
    if appointment is None:
        raise AppointmentNotFound("no such appointment in this clinic")
    if patient is not None and appointment.patient_id != patient.pk:
        raise AppointmentNotFound("no such appointment for this patient")
    return appointment


# --- slots -----------------------------------------------------------------------------------


def slots_generate(
    *,
    clinic: Clinic,
    date_from: dt.date,
    date_to: dt.date,
    doctor: Doctor | None = None,
    actor: Actor | None = None,
) -> int:
    """Create slots from Schedule rows for local dates [date_from, date_to]; return how many.

    Idempotent. Skips inactive doctors and blocked periods; free slots that now fall inside a
    blocked period are marked blocked.
    """
    if not isinstance(date_from, dt.date) or not isinstance(date_to, dt.date):
        raise InvalidInput("date_from and date_to must be dates")
    if date_to < date_from:
        raise InvalidInput("date_to is before date_from")
    if (date_to - date_from).days > 366:
        raise InvalidInput("at most one year of slots at a time")
    if doctor is not None and doctor.clinic_id != clinic.pk:
        raise WrongClinic("the doctor belongs to another clinic")
    actor = actor or Actor.system("slots_generate")
    with transaction.atomic():
        created, blocked = generate_slots(
            clinic=clinic, date_from=date_from, date_to=date_to, doctor=doctor
        )
        if created or blocked:
            _audit(
                clinic=clinic,
                actor=actor,
                action="slots.generate",
                object_type="doctor" if doctor else "clinic",
                object_id=doctor.pk if doctor else clinic.pk,
                before=None,
                after={
                    "date_from": date_from.isoformat(),
                    "date_to": date_to.isoformat(),
                    "created": created,
                    "blocked": blocked,
                },
                at=timezone.now(),
            )
    logger.info(
        "slots generated clinic=%s doctor=%s %s..%s created=%d blocked=%d",
        clinic.pk,
        doctor.pk if doctor else "*",
        date_from,
        date_to,
        created,
        blocked,
    )
    return created


def slot_hold(
    *,
    clinic: Clinic,
    slot_id: int,
    holder: str,
    patient: Patient | None = None,
    minutes: int | None = None,
) -> SlotHold:
    """Hold a bookable slot for `holder` (default SOPHIA_HOLD_MINUTES); drops their other hold.

    Holding the slot you already hold renews it.
    """
    slot_id = _check_id(slot_id, "slot_id")
    if not isinstance(holder, str) or not holder.strip() or len(holder) > 120:
        raise InvalidInput("holder must be a non-empty string of at most 120 characters")
    if minutes is None:
        minutes = settings.SOPHIA_HOLD_MINUTES
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidInput("minutes must be an integer")
    if not 1 <= minutes <= MAX_HOLD_MINUTES:
        raise InvalidInput(f"minutes must be between 1 and {MAX_HOLD_MINUTES}")
    if patient is not None:
        _check_patient(clinic, patient)
    with transaction.atomic():
        now = timezone.now()
        previous = list(
            SlotHold.objects.filter(holder=holder, released_at=None).values_list(
                "slot_id", flat=True
            )
        )
        others = [i for i in previous if i != slot_id]
        locked = _lock_slots(clinic, [slot_id], also=others)
        slot = locked[slot_id]
        _check_bookable(slot, holder=holder, now=now)
        released = []
        for prev_id in others:
            prev = locked.get(prev_id)
            if prev is not None and prev.status == SlotStatus.HELD and _free_slot(prev):
                released.append(prev)
        SlotHold.objects.filter(Q(holder=holder) | Q(slot=slot), released_at=None).update(
            released_at=now
        )
        expires = now + dt.timedelta(minutes=minutes)
        slot.status = SlotStatus.HELD
        slot.held_until = expires
        slot.save(update_fields=["status", "held_until", "updated_at"])
        hold = SlotHold.objects.create(
            slot=slot, holder=holder, patient=patient, expires_at=expires
        )
        for prev in released:
            events.emit(
                clinic_id=prev.clinic_id,
                name="slot.liberado",
                payload={"slot_id": prev.pk, "doctor_id": prev.doctor_id, "reason": "rehold"},
            )
        events.emit(
            clinic_id=clinic.pk,
            name="slot.retenido",
            payload={
                "slot_id": slot.pk,
                "doctor_id": slot.doctor_id,
                "holder": holder,
                "held_until": expires.isoformat(),
            },
        )
    logger.info("slot %s held by %s until %s", slot.pk, holder, expires.isoformat())
    return hold


def slot_release(*, clinic: Clinic, slot_id: int, holder: str) -> bool:
    """Release `holder`'s live hold on the slot; False when they had none (nothing changes)."""
    slot_id = _check_id(slot_id, "slot_id")
    if not isinstance(holder, str) or not holder:
        raise InvalidInput("holder must be a non-empty string")
    with transaction.atomic():
        now = timezone.now()
        slot = _lock_slots(clinic, [slot_id])[slot_id]
        hold = _live_hold_by(slot, holder, now)
        if hold is None:
            return False
        SlotHold.objects.filter(slot=slot, holder=holder, released_at=None).update(released_at=now)
        if slot.status == SlotStatus.HELD and _free_slot(slot):
            events.emit(
                clinic_id=clinic.pk,
                name="slot.liberado",
                payload={"slot_id": slot.pk, "doctor_id": slot.doctor_id, "reason": "released"},
            )
    logger.info("slot %s released by %s", slot_id, holder)
    return True


def holds_expire(*, now: dt.datetime | None = None, batch_size: int = 1000) -> int:
    """Tidy up expired holds; return how many slots went back to free.

    Availability never depends on this running: a held slot past `held_until` is already free to
    every reader. Rows being booked right now are skipped (SKIP LOCKED), not waited for.
    """
    now = now or timezone.now()
    freed = 0
    while True:
        with transaction.atomic():
            batch = list(
                Slot.objects.select_for_update(skip_locked=True)
                .filter(status=SlotStatus.HELD, held_until__lte=now)
                .values_list("pk", "clinic_id", "doctor_id")[:batch_size]
            )
            if not batch:
                break
            ids = [pk for pk, _, _ in batch]
            # Back to free, or to blocked where a blocked period covers the slot by now.
            in_blocked_period = Exists(
                BlockedPeriod.objects.covering(
                    clinic_id=OuterRef("clinic_id"),
                    doctor_id=OuterRef("doctor_id"),
                    start_at=OuterRef("start_at"),
                    end_at=OuterRef("end_at"),
                )
            )
            Slot.objects.filter(pk__in=ids).update(
                status=Case(
                    When(in_blocked_period, then=Value(SlotStatus.BLOCKED)),
                    default=Value(SlotStatus.FREE),
                ),
                held_until=None,
                updated_at=timezone.now(),
            )
            SlotHold.objects.filter(slot_id__in=ids, released_at=None).update(released_at=now)
            blocked = set(
                Slot.objects.filter(pk__in=ids, status=SlotStatus.BLOCKED).values_list(
                    "pk", flat=True
                )
            )
            batch = [row for row in batch if row[0] not in blocked]
            for pk, clinic_id, doctor_id in batch:
                events.emit(
                    clinic_id=clinic_id,
                    name="slot.liberado",
                    payload={"slot_id": pk, "doctor_id": doctor_id, "reason": "hold_expired"},
                )
            freed += len(batch)
        if len(ids) < batch_size:
            break
    # Holds whose slot was booked or re-held already: just close them.
    SlotHold.objects.filter(released_at=None, expires_at__lte=now).update(released_at=now)
    if freed:
        logger.info("expired holds freed %d slots", freed)
    return freed


# --- appointments ----------------------------------------------------------------------------


def _book_generic(
    *,
    clinic: Clinic,
    patient: Patient,
    slot_id: int,
    actor: Actor,
    source: str,
    specialty: Specialty | None,
    notes: str,
    holder: str | None,
    now: dt.datetime,
) -> Appointment:
    """The ORM booking path (SQLite; the benchmark's same-run comparison on PostgreSQL).

    Call inside a transaction; the caller emits the event.
    """
    slot = _lock_slots(clinic, [slot_id], patient=patient)[slot_id]
    appointment = _book_locked(
        clinic=clinic,
        patient=patient,
        slot=slot,
        actor=actor,
        source=source,
        specialty=specialty,
        notes=notes,
        holder=holder,
        now=now,
    )
    _audit(
        clinic=clinic,
        actor=actor,
        action="appointment.book",
        object_type="appointment",
        object_id=appointment.pk,
        before=None,
        after=_appointment_state(appointment),
        at=now,
    )
    return appointment


def appointment_book(
    *,
    clinic: Clinic,
    patient: Patient,
    slot_id: int,
    actor: Actor,
    source: str,
    specialty: Specialty | None = None,
    notes: str = "",
    holder: str | None = None,
) -> Appointment:
    """Book a slot for a patient: one transaction, the slot row locked, audited, cita.creada."""
    _check_actor(actor)
    slot_id = _check_id(slot_id, "slot_id")
    if source not in AppointmentSource.values:
        raise InvalidInput(f"unknown source {source!r}")
    if specialty is not None and specialty.clinic_id != clinic.pk:
        raise WrongClinic("the specialty belongs to another clinic")
    if not isinstance(notes, str):
        raise InvalidInput("notes must be text")
    _check_patient(clinic, patient, query=False)
    notes = notes.strip()[:MAX_NOTES]
    with transaction.atomic():
        now = timezone.now()
        if connection.vendor == "postgresql":
            appointment = _book_postgresql(
                clinic=clinic,
                patient=patient,
                slot_id=slot_id,
                actor=actor,
                source=source,
                specialty=specialty,
                notes=notes,
                holder=holder,
                now=now,
            )
        else:
            appointment = _book_generic(
                clinic=clinic,
                patient=patient,
                slot_id=slot_id,
                actor=actor,
                source=source,
                specialty=specialty,
                notes=notes,
                holder=holder,
                now=now,
            )
        events.emit(clinic_id=clinic.pk, name="cita.creada", payload=_event_payload(appointment))
    logger.info(
        "appointment %s booked slot=%s patient=%s source=%s actor=%s",
        appointment.pk,
        slot_id,
        patient.pk,
        source,
        actor.type,
    )
    return appointment


# The PostgreSQL booking path, in SQL: booking is the one write that many people race for, and
# under contention its cost is the time the slot row stays locked. The ORM path spent ~2 ms of
# Python per booking (query compilation, model saves) mostly inside that window. Here the same
# work is two statements: lock-and-read, then one write statement for appointment + slot +
# holds + audit. The rules are shared with the ORM path (`_check_slot_state`); the database
# constraints stay the final guarantee (their violations map to the same errors).

# Lock the slot (FOR UPDATE, as select_for_update) and read everything the rules need in the
# same round trip: the doctor's active flag, whether the patient still exists in this clinic
# (its foreign key is only checked at COMMIT, too late for a clean error), whether `holder` has
# a live hold, and the doctor's specialty when the doctor has exactly one.
_BOOK_LOCK_SQL = """
SELECT s.clinic_id, s.doctor_id, s.start_at, s.end_at, s.status, s.held_until, d.active,
       EXISTS (SELECT 1 FROM clinics_patient p
               WHERE p.id = %(patient)s AND p.clinic_id = %(clinic)s),
       %(holder)s::varchar IS NOT NULL AND EXISTS (
           SELECT 1 FROM clinics_slothold h
           WHERE h.slot_id = s.id AND h.holder = %(holder)s AND h.released_at IS NULL
             AND h.expires_at > %(now)s),
       (SELECT CASE WHEN count(*) = 1 THEN min(ds.specialty_id) END
        FROM clinics_doctor_specialties ds WHERE ds.doctor_id = s.doctor_id)
FROM clinics_slot s JOIN clinics_doctor d ON d.id = s.doctor_id
WHERE s.id = %(slot)s
FOR UPDATE OF s
"""

# Every write of a booking in one statement (data-modifying CTEs all run, in one snapshot).
# The audit row's `after` is the state built in Python (`_appointment_state`) plus the new id.
_BOOK_WRITE_SQL = """
WITH appointment AS (
    INSERT INTO clinics_appointment (
        clinic_id, patient_id, slot_id, doctor_id, specialty_id, start_at, end_at, status,
        patient_notes, source, cancel_reason, rescheduled_from_id, created_at, updated_at)
    VALUES (%(clinic)s, %(patient)s, %(slot)s, %(doctor)s, %(specialty)s, %(start_at)s,
            %(end_at)s, %(status)s, %(notes)s, %(source)s, '', NULL, %(now)s, %(now)s)
    RETURNING id
), booked_slot AS (
    UPDATE clinics_slot SET status = %(booked)s, held_until = NULL, updated_at = %(now)s
    WHERE id = %(slot)s
), released_holds AS (
    -- Only when the slot was held: a free slot has no open hold to close.
    UPDATE clinics_slothold SET released_at = %(now)s
    WHERE %(was_held)s AND slot_id = %(slot)s AND released_at IS NULL
), audit AS (
    INSERT INTO clinics_auditevent (
        clinic_id, actor_type, actor_id, actor_label, action, object_type, object_id,
        before, after, at)
    SELECT %(clinic)s, %(actor_type)s, %(actor_id)s, %(actor_label)s, 'appointment.book',
           'appointment', a.id::text, NULL, %(after)s::jsonb || jsonb_build_object('id', a.id),
           %(now)s
    FROM appointment a
)
SELECT id FROM appointment
"""


def _book_postgresql(
    *,
    clinic: Clinic,
    patient: Patient,
    slot_id: int,
    actor: Actor,
    source: str,
    specialty: Specialty | None,
    notes: str,
    holder: str | None,
    now: dt.datetime,
) -> Appointment:
    """`appointment_book`'s work inside its transaction, on PostgreSQL (see the SQL above)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _BOOK_LOCK_SQL,
            {"slot": slot_id, "clinic": clinic.pk, "patient": patient.pk, "holder": holder or None,
             "now": now},
        )  # fmt: skip
        row = cursor.fetchone()
        if row is None:
            raise SlotUnavailable(f"slot {slot_id} does not exist", code="slot_not_found")
        (slot_clinic_id, doctor_id, start_at, end_at, status, held_until, doctor_active,
         patient_exists, holder_holds_it, only_specialty_id) = row  # fmt: skip
        if slot_clinic_id != clinic.pk:
            raise WrongClinic(f"slot {slot_id} belongs to another clinic")
        if not patient_exists:
            raise PatientNotFound("the patient does not exist")
        _check_slot_state(
            start_at=start_at,
            status=status,
            held_until=held_until,
            doctor_active=doctor_active,
            now=now,
            holder_holds_it=lambda: holder_holds_it,
            in_blocked_period=lambda: slot_in_blocked_period(
                clinic_id=slot_clinic_id, doctor_id=doctor_id, start_at=start_at, end_at=end_at
            ),
        )
        appointment = Appointment(
            clinic=clinic,
            patient=patient,
            slot_id=slot_id,
            doctor_id=doctor_id,
            specialty_id=specialty.pk if specialty is not None else only_specialty_id,
            start_at=start_at,
            end_at=end_at,
            status=AppointmentStatus.BOOKED,
            patient_notes=notes,
            source=source,
            cancel_reason="",
            rescheduled_from=None,
            created_at=now,
            updated_at=now,
        )
        if specialty is not None:
            appointment.specialty = specialty
        try:
            cursor.execute(
                _BOOK_WRITE_SQL,
                {
                    "clinic": clinic.pk,
                    "patient": patient.pk,
                    "slot": slot_id,
                    "doctor": doctor_id,
                    "specialty": appointment.specialty_id,
                    "start_at": start_at,
                    "end_at": end_at,
                    "status": AppointmentStatus.BOOKED,
                    "notes": notes,
                    "source": source,
                    "now": now,
                    "booked": SlotStatus.BOOKED,
                    "was_held": status == SlotStatus.HELD,
                    "actor_type": actor.type,
                    "actor_id": str(actor.id)[:64],
                    "actor_label": str(actor.label)[:200],
                    "after": json.dumps(_appointment_state(appointment)),
                },
            )
        except IntegrityError as exc:
            # The exclusion/unique constraints refused it (a race the lock could not see, e.g.
            # the same patient booking another slot at that time): the atomic block rolls back.
            raise _integrity_to_booking_error(exc) from exc
        appointment.pk = cursor.fetchone()[0]
    # The instance mirrors the row just written: no re-read.
    appointment._state.adding = False
    appointment._state.db = connection.alias
    return appointment


def _cancel_locked(
    *, clinic: Clinic, appointment: Appointment, slot: Slot, reason: str, actor: Actor, now
) -> bool:
    """Cancel inside the caller's transaction; True when the slot became free (not blocked)."""
    if appointment.status not in UPCOMING_STATUSES or appointment.start_at <= now:
        raise NotCancellable(
            f"only upcoming booked or confirmed appointments can change "
            f"(this one is {appointment.status})"
        )
    before = _appointment_state(appointment)
    appointment.status = AppointmentStatus.CANCELLED
    appointment.cancel_reason = reason
    appointment.save(update_fields=["status", "cancel_reason", "updated_at"])
    freed = slot.status == SlotStatus.BOOKED and _free_slot(slot)
    _audit(
        clinic=clinic,
        actor=actor,
        action="appointment.cancel",
        object_type="appointment",
        object_id=appointment.pk,
        before=before,
        after=_appointment_state(appointment),
        at=now,
    )
    return freed


def appointment_cancel(
    *,
    clinic: Clinic,
    appointment_id: int,
    actor: Actor,
    reason: str = "",
    patient: Patient | None = None,
) -> Appointment:
    """Cancel an upcoming appointment and free its slot at once (slot.liberado).

    With `patient`, only that patient's appointment: any other id answers AppointmentNotFound.
    """
    _check_actor(actor)
    if not isinstance(reason, str):
        raise InvalidInput("reason must be text")
    if patient is not None:
        _check_patient(clinic, patient)
    with transaction.atomic():
        now = timezone.now()
        found = _load_appointment(clinic, appointment_id, patient)
        slot = _lock_slots(clinic, [found.slot_id])[found.slot_id]
        appointment = Appointment.objects.select_for_update().get(pk=found.pk)
        freed = _cancel_locked(
            clinic=clinic,
            appointment=appointment,
            slot=slot,
            reason=reason.strip()[:300],
            actor=actor,
            now=now,
        )
        events.emit(clinic_id=clinic.pk, name="cita.cancelada", payload=_event_payload(appointment))
        if freed:
            events.emit(
                clinic_id=clinic.pk,
                name="slot.liberado",
                payload={"slot_id": slot.pk, "doctor_id": slot.doctor_id, "reason": "cancelled"},
            )
    logger.info("appointment %s cancelled actor=%s", appointment.pk, actor.type)
    return appointment


def appointment_reschedule(
    *,
    clinic: Clinic,
    appointment_id: int,
    new_slot_id: int,
    actor: Actor,
    holder: str | None = None,
    patient: Patient | None = None,
) -> Appointment:
    """Book the new slot and cancel the old appointment atomically; return the new appointment."""
    _check_actor(actor)
    new_slot_id = _check_id(new_slot_id, "new_slot_id")
    if patient is not None:
        _check_patient(clinic, patient)
    with transaction.atomic():
        now = timezone.now()
        found = _load_appointment(clinic, appointment_id, patient)
        if found.slot_id == new_slot_id:
            raise InvalidInput("the new slot is the current one")
        slots = _lock_slots(clinic, [found.slot_id, new_slot_id])
        old = Appointment.objects.select_for_update().select_related("patient").get(pk=found.pk)
        new_slot = slots[new_slot_id]
        # Check the new slot before touching the old appointment, for the clearer error.
        _check_bookable(new_slot, holder=holder, now=now)
        freed = _cancel_locked(
            clinic=clinic,
            appointment=old,
            slot=slots[old.slot_id],
            reason="rescheduled",
            actor=actor,
            now=now,
        )
        new = _book_locked(
            clinic=clinic,
            patient=old.patient,
            slot=new_slot,
            actor=actor,
            source=_source_for(actor),
            specialty=old.specialty,
            notes=old.patient_notes,
            holder=holder,
            now=now,
            rescheduled_from=old,
        )
        _audit(
            clinic=clinic,
            actor=actor,
            action="appointment.reschedule",
            object_type="appointment",
            object_id=new.pk,
            before=_appointment_state(old),
            after=_appointment_state(new),
            at=now,
        )
        payload = _event_payload(new)
        payload["previous"] = _event_payload(old)
        events.emit(clinic_id=clinic.pk, name="cita.reprogramada", payload=payload)
        if freed:
            events.emit(
                clinic_id=clinic.pk,
                name="slot.liberado",
                payload={
                    "slot_id": old.slot_id,
                    "doctor_id": old.doctor_id,
                    "reason": "rescheduled",
                },
            )
    logger.info("appointment %s rescheduled to %s actor=%s", old.pk, new.pk, actor.type)
    return new


STATUS_EVENTS = {
    AppointmentStatus.CONFIRMED: "cita.confirmada",
    AppointmentStatus.ATTENDED: "cita.atendida",
    AppointmentStatus.NO_SHOW: "cita.no_asistio",
}


def appointment_set_status(
    *, clinic: Clinic, appointment_id: int, status: str, actor: Actor
) -> Appointment:
    """confirmed (an upcoming booking), attended (from its day on) or no_show (once started).

    Setting the status it already has changes nothing. attended ↔ no_show may be corrected.
    """
    _check_actor(actor)
    if status not in STATUS_EVENTS:
        raise InvalidInput(f"status must be one of {sorted(STATUS_EVENTS)}", code="invalid_status")
    with transaction.atomic():
        now = timezone.now()
        found = _load_appointment(clinic, appointment_id, None)
        appointment = Appointment.objects.select_for_update().get(pk=found.pk)
        if appointment.status == status:
            return appointment
        local_today = timezone.localdate(now, clinic.tz)
        if status == AppointmentStatus.CONFIRMED:
            allowed = appointment.status == AppointmentStatus.BOOKED and appointment.start_at > now
        elif status == AppointmentStatus.ATTENDED:
            allowed = (
                appointment.status != AppointmentStatus.CANCELLED
                and timezone.localdate(appointment.start_at, clinic.tz) <= local_today
            )
        else:
            allowed = (
                appointment.status != AppointmentStatus.CANCELLED and appointment.start_at <= now
            )
        if not allowed:
            raise InvalidInput(
                f"cannot go from {appointment.status} to {status} now", code="invalid_status"
            )
        before = _appointment_state(appointment)
        appointment.status = status
        appointment.save(update_fields=["status", "updated_at"])
        _audit(
            clinic=clinic,
            actor=actor,
            action=f"appointment.{status}",
            object_type="appointment",
            object_id=appointment.pk,
            before=before,
            after=_appointment_state(appointment),
            at=now,
        )
        events.emit(
            clinic_id=clinic.pk, name=STATUS_EVENTS[status], payload=_event_payload(appointment)
        )
    logger.info("appointment %s → %s actor=%s", appointment.pk, status, actor.type)
    return appointment


# --- patients --------------------------------------------------------------------------------


def clean_document(document: object) -> str:
    """The document as stored (8–15 digits, surrounding spaces dropped) or InvalidInput."""
    value = document.strip() if isinstance(document, str) else ""
    if not DOCUMENT_RE.fullmatch(value):
        raise InvalidInput("the document must have 8 to 15 digits", code="invalid_document")
    return value


def _clean_whatsapp_id(whatsapp_id: object) -> str:
    value = whatsapp_id.strip().lstrip("+") if isinstance(whatsapp_id, str) else None
    if value is None or not WHATSAPP_ID_RE.fullmatch(value):
        raise InvalidInput("the WhatsApp id must be 6 to 20 digits")
    return value


def _patient_state(patient: Patient) -> dict:
    # Audit keeps masked identifiers only: the audit log is read more widely than patient files.
    return {
        "id": patient.pk,
        "document": patient.masked_document,
        "full_name": patient.full_name,
        "whatsapp_id": _mask(patient.whatsapp_id),
    }


def patient_register(
    *,
    clinic: Clinic,
    document: str,
    full_name: str,
    birth_date: dt.date,
    whatsapp_id: str = "",
    actor: Actor,
) -> Patient:
    """Create a patient of this clinic. Patients registering themselves need self_registration."""
    _check_actor(actor)
    document = clean_document(document)
    name = " ".join(full_name.split()) if isinstance(full_name, str) else ""
    if len(name) < 3 or len(name) > 200:
        raise InvalidInput("the full name must have 3 to 200 characters")
    if isinstance(birth_date, dt.datetime) or not isinstance(birth_date, dt.date):
        raise InvalidInput("the birth date must be a date")
    if not dt.date(1900, 1, 1) <= birth_date <= timezone.localdate(timezone.now(), clinic.tz):
        raise InvalidInput("the birth date is out of range")
    whatsapp_id = _clean_whatsapp_id(whatsapp_id) if whatsapp_id else ""
    if actor.type == AuditEvent.ActorType.PATIENT and not clinic.self_registration:
        raise RegistrationClosed("this clinic registers patients at the front desk")
    with transaction.atomic():
        now = timezone.now()
        patient = Patient(
            clinic=clinic,
            document=document,
            full_name=name,
            birth_date=birth_date,
            whatsapp_id=whatsapp_id,
        )
        try:
            with transaction.atomic():
                patient.save(force_insert=True)
        except IntegrityError as exc:
            raise PatientExists("a patient with that document already exists") from exc
        if actor.type == AuditEvent.ActorType.PATIENT and not actor.id:
            actor = Actor.patient(patient)
        _audit(
            clinic=clinic,
            actor=actor,
            action="patient.register",
            object_type="patient",
            object_id=patient.pk,
            before=None,
            after=_patient_state(patient),
            at=now,
        )
    logger.info("patient %s registered (%s) actor=%s", patient.pk, _mask(document), actor.type)
    return patient


# --- identity: failed checks, lock-outs, a patient's numbers ---------------------------------

# Wrong birth dates before a lock-out: per patient (over every number and conversation) and
# per number (over every patient it tries).
IDENTITY_MAX_FAILURES_PER_PATIENT = 3
IDENTITY_MAX_FAILURES_PER_NUMBER = 3


@dataclass(frozen=True)
class IdentityStatus:
    """Which identity lock-outs stand in the way of a check (see IdentityLockout)."""

    patient_locked: bool = False
    number_locked: bool = False

    @property
    def locked(self) -> bool:
        return self.patient_locked or self.number_locked


def identity_status(
    *, clinic: Clinic, wa_id: str, patient: Patient | None = None
) -> IdentityStatus:
    """The active lock-outs for this number and, when given, this patient."""
    active = IdentityLockout.objects.filter(clinic=clinic, lifted_at=None)
    number = active.filter(patient=None, wa_id=wa_id).exists()
    locked_patient = patient is not None and active.filter(patient=patient).exists()
    return IdentityStatus(patient_locked=locked_patient, number_locked=number)


def _lock_out(clinic: Clinic, *, patient: Patient | None, wa_id: str, now: dt.datetime) -> None:
    """Create the active lock-out unless one stands (the partial unique constraints decide)."""
    try:
        with transaction.atomic():
            IdentityLockout.objects.create(
                clinic=clinic, patient=patient, wa_id="" if patient else wa_id, locked_at=now
            )
    except IntegrityError:
        return  # already locked out
    _audit(
        clinic=clinic,
        actor=Actor.system("identity checks"),
        action="identity.lockout",
        object_type="patient" if patient else "whatsapp_number",
        object_id=patient.pk if patient else _mask(wa_id),
        before=None,
        after={"patient_id": patient.pk if patient else None, "whatsapp_id": _mask(wa_id)},
        at=now,
    )


def identity_failure_record(
    *, clinic: Clinic, wa_id: str, patient: Patient | None
) -> IdentityStatus:
    """Count one wrong answer to an identity check from `wa_id` about `patient`'s document.

    It counts for the number and for the patient, across conversations and idle closes; the
    one that reaches its limit is locked out until staff lift it (identity_lockout_lift).
    Returns the status after this failure.
    """
    wa_id = _clean_whatsapp_id(wa_id)
    if patient is not None:
        _check_patient(clinic, patient, query=False)
    with transaction.atomic():
        now = timezone.now()
        if patient is not None:
            # Serialises failures about one patient arriving from several numbers at once.
            Patient.objects.select_for_update().filter(pk=patient.pk).first()
        IdentityFailure.objects.create(clinic=clinic, patient=patient, wa_id=wa_id, at=now)
        open_failures = IdentityFailure.objects.filter(clinic=clinic, cleared_at=None)
        if open_failures.filter(wa_id=wa_id).count() >= IDENTITY_MAX_FAILURES_PER_NUMBER:
            _lock_out(clinic, patient=None, wa_id=wa_id, now=now)
        if (
            patient is not None
            and open_failures.filter(patient=patient).count() >= IDENTITY_MAX_FAILURES_PER_PATIENT
        ):
            _lock_out(clinic, patient=patient, wa_id=wa_id, now=now)
        _audit(
            clinic=clinic,
            actor=Actor.system("identity checks"),
            action="identity.failure",
            object_type="patient" if patient else "whatsapp_number",
            object_id=patient.pk if patient else _mask(wa_id),
            before=None,
            after={"patient_id": patient.pk if patient else None, "whatsapp_id": _mask(wa_id)},
            at=now,
        )
        status = identity_status(clinic=clinic, wa_id=wa_id, patient=patient)
    logger.warning(
        "identity check failed from %s for patient %s (locked: patient=%s number=%s)",
        _mask(wa_id),
        patient.pk if patient else "-",
        status.patient_locked,
        status.number_locked,
    )
    return status


def identity_lockout_lift(*, clinic: Clinic, lockout_id: int, actor: Actor) -> IdentityLockout:
    """Staff lift a lock-out: identity checks are accepted again and the failures that led to
    it no longer count. Lifting a lifted one changes nothing. Audited."""
    _check_actor(actor)
    if actor.type not in (AuditEvent.ActorType.STAFF, AuditEvent.ActorType.API):
        raise InvalidInput("only staff lift identity lock-outs")
    lockout_id = _check_id(lockout_id, "lockout_id")
    with transaction.atomic():
        lockout = (
            IdentityLockout.objects.select_for_update().filter(pk=lockout_id, clinic=clinic).first()
        )
        if lockout is None:
            raise InvalidInput("no such lock-out in this clinic", code="lockout_not_found")
        if lockout.lifted_at is not None:
            return lockout
        now = timezone.now()
        lockout.lifted_at = now
        if actor.type == AuditEvent.ActorType.STAFF:
            lockout.lifted_by_id = _check_id(actor.id, "actor.id")
        lockout.save(update_fields=["lifted_at", "lifted_by"])
        failures = IdentityFailure.objects.filter(clinic=clinic, cleared_at=None)
        if lockout.patient_id:
            failures = failures.filter(patient_id=lockout.patient_id)
        else:
            failures = failures.filter(wa_id=lockout.wa_id)
        cleared = failures.update(cleared_at=now)
        _audit(
            clinic=clinic,
            actor=actor,
            action="identity.lockout_lift",
            object_type="patient" if lockout.patient_id else "whatsapp_number",
            object_id=lockout.patient_id or _mask(lockout.wa_id),
            before={"lockout_id": lockout.pk, "active": True},
            after={"lockout_id": lockout.pk, "active": False, "failures_cleared": cleared},
            at=now,
        )
    logger.info("identity lock-out %s lifted actor=%s", lockout.pk, actor.type)
    return lockout


def patient_phone_add(
    *, clinic: Clinic, patient: Patient, wa_id: str, how: str, actor: Actor
) -> PatientPhone | None:
    """Record `wa_id` as verified for the patient (a new phone, a parent's phone).

    Never replaces the number on file (Patient.whatsapp_id): that one needs no row and changes
    only by staff. Idempotent; None when the number is the one on file. Audited (masked).
    """
    _check_actor(actor)
    _check_patient(clinic, patient)
    wa_id = _clean_whatsapp_id(wa_id)
    if how not in PatientPhone.How.values:
        raise InvalidInput(f"unknown verification {how!r}")
    if patient.whatsapp_id == wa_id:
        return None
    with transaction.atomic():
        now = timezone.now()
        phone, created = PatientPhone.objects.get_or_create(
            patient=patient,
            wa_id=wa_id,
            defaults={"clinic": clinic, "how": how, "verified_at": now},
        )
        if created:
            _audit(
                clinic=clinic,
                actor=actor,
                action="patient.phone_add",
                object_type="patient",
                object_id=patient.pk,
                before=None,
                after={"whatsapp_id": _mask(wa_id), "how": how},
                at=now,
            )
    if created:
        logger.info("patient %s: number %s added (%s)", patient.pk, _mask(wa_id), how)
    return phone


def patient_phone_remove(*, clinic: Clinic, patient: Patient, wa_id: str, actor: Actor) -> bool:
    """Staff remove one of the patient's numbers (also the one on file): from the next message
    on, that number speaks for the patient no more. False when it was not theirs. Audited."""
    _check_actor(actor)
    if actor.type not in (AuditEvent.ActorType.STAFF, AuditEvent.ActorType.API):
        raise InvalidInput("only staff remove a patient's numbers")
    _check_patient(clinic, patient)
    wa_id = _clean_whatsapp_id(wa_id)
    with transaction.atomic():
        locked = Patient.objects.select_for_update().get(pk=patient.pk)
        removed, _ = PatientPhone.objects.filter(patient=locked, wa_id=wa_id).delete()
        on_file = locked.whatsapp_id == wa_id
        if on_file:
            locked.whatsapp_id = ""
            locked.save(update_fields=["whatsapp_id"])
            patient.whatsapp_id = ""
        if not removed and not on_file:
            return False
        _audit(
            clinic=clinic,
            actor=actor,
            action="patient.phone_remove",
            object_type="patient",
            object_id=patient.pk,
            before={"whatsapp_id": _mask(wa_id), "on_file": on_file},
            after=None,
            at=timezone.now(),
        )
    logger.info("patient %s: number %s removed", patient.pk, _mask(wa_id))
    return True


def patient_set_reminders(
    *, clinic: Clinic, patient: Patient, enabled: bool, actor: Actor
) -> Patient:
    """Stop (enabled=False) or resume appointment reminders for a patient; audited.

    Setting what is already set changes nothing and writes no audit row.
    """
    _check_actor(actor)
    _check_patient(clinic, patient, query=False)
    if not isinstance(enabled, bool):
        raise InvalidInput("enabled must be true or false")
    with transaction.atomic():
        locked = Patient.objects.select_for_update().filter(pk=patient.pk, clinic=clinic).first()
        if locked is None:
            raise PatientNotFound("the patient does not exist")
        if (locked.reminders_opted_out_at is None) == enabled:
            patient.reminders_opted_out_at = locked.reminders_opted_out_at
            return patient
        now = timezone.now()
        before = {"reminders": locked.reminders_opted_out_at is None}
        locked.reminders_opted_out_at = None if enabled else now
        locked.save(update_fields=["reminders_opted_out_at"])
        _audit(
            clinic=clinic,
            actor=actor,
            action="patient.reminders_on" if enabled else "patient.reminders_off",
            object_type="patient",
            object_id=patient.pk,
            before=before,
            after={"reminders": enabled},
            at=now,
        )
    patient.reminders_opted_out_at = locked.reminders_opted_out_at
    logger.info(
        "patient %s reminders %s actor=%s", patient.pk, "on" if enabled else "off", actor.type
    )
    return patient
