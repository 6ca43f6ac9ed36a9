"""The only code that books, holds, cancels and reschedules (DESIGN §4). Keyword-only functions.

Every failure a caller can cause raises a `BookingError` subclass with a stable `code`; callers
(bot engine, views, API) map codes to messages. Nothing is half-written: each service runs in one
transaction, and database constraint violations become `BookingError`s inside a savepoint.

Lock order, to stay deadlock-free: slots (by id) first, then appointments.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.text import slugify

from clinics import events, scheduling
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
from clinics.identifiers import DOCUMENT_RE, WHATSAPP_ID_RE, mask
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
    ExtraHours,
    IdentityFailure,
    IdentityLockout,
    Patient,
    PatientPhone,
    Schedule,
    Slot,
    SlotHold,
    SlotStatus,
    Specialty,
)
from sophia_web import inserts, metrics

logger = logging.getLogger(__name__)

MAX_HOLD_MINUTES = 60
MAX_NOTES = 2000
# The choices' `.values` build a new list on every read (~4 % of a booking's Python).
ACTOR_TYPES = frozenset(AuditEvent.ActorType.values)
APPOINTMENT_SOURCES = frozenset(AppointmentSource.values)


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


def _counts_conflicts(service: Callable) -> Callable:
    """Count refusals because someone else got there first (/metrics), whoever called."""

    @functools.wraps(service)
    def counted(*args, **kwargs):
        try:
            return service(*args, **kwargs)
        except (SlotTaken, PatientOverlap) as exc:
            metrics.BOOKING_CONFLICTS.labels(code=exc.code).inc()
            raise

    return counted


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
    cursor: CursorWrapper | None = None,
) -> None:
    """One audit row, through the caller's `cursor` when it has one open."""
    values = {
        "clinic_id": clinic.pk,
        "actor_type": actor.type,
        "actor_id": str(actor.id)[:64],
        "actor_label": str(actor.label)[:200],
        "action": action,
        "object_type": object_type,
        "object_id": str(object_id),
        "before": before,
        "after": after,
        "at": at,
    }
    # Every service writes one; the booking path counts its statements' cost (see LockedSlot).
    if cursor is not None:
        inserts.insert(cursor, AuditEvent, [values], at)
        return
    with connection.cursor() as own:
        inserts.insert(own, AuditEvent, [values], at)


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


def _check_actor(actor: Actor) -> None:
    if not isinstance(actor, Actor) or actor.type not in ACTOR_TYPES:
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


def _blocked_period_over_slot() -> Exists:
    """For a Slot queryset: does a blocked period (holiday, absence, block set by hand) cover
    any part of the slot's time? Such a time is never held or booked, whatever the slot's
    status says: the period may have been entered after the slot was generated or booked."""
    return Exists(
        BlockedPeriod.objects.covering(
            clinic_id=OuterRef("clinic_id"),
            doctor_id=OuterRef("doctor_id"),
            start_at=OuterRef("start_at"),
            end_at=OuterRef("end_at"),
        )
    )


@functools.cache
def _lock_slots_base(with_specialty: bool) -> QuerySet[Slot]:
    """What `_lock_slots` reads, locked, for any slots: built once per process (building these
    annotations costs more Python than running the statement), then cloned and narrowed to the
    slots of each call. Only the parts that hold per-call values are added per call."""
    rows = (
        Slot.objects.select_for_update(of=("self",))
        .annotate(in_blocked_period=_blocked_period_over_slot(), doctor_active=F("doctor__active"))
        .order_by("pk")
    )
    if with_specialty:
        one_specialty = (
            Doctor.specialties.through.objects.filter(doctor_id=OuterRef("doctor_id"))
            .values("doctor_id")
            .annotate(count=Count("pk"), first=Min("specialty_id"))
            .filter(count=1)
            .values("first")
        )
        rows = rows.annotate(only_specialty_id=Subquery(one_specialty))
    return rows


def _lock_slots(
    clinic: Clinic,
    slot_ids: list[int],
    also: list[int] = (),
    *,
    now: dt.datetime | None = None,
    holder: str | None = None,
    patient: Patient | None = None,
    with_specialty: bool = False,
) -> dict[int, Slot]:
    """Lock `slot_ids` (which must be this clinic's) and `also` in one statement, in id order,
    so two services never deadlock. Booking is the write many people race for, and its cost is
    how long the slot stays locked: so the same statement reads all the booking rules need —
    whether `holder` has a live hold on each slot (`holder_holds_it`), whether a blocked period
    covers it (`in_blocked_period`), with `with_specialty` the doctor's specialty when the doctor
    has exactly one (`only_specialty_id`) and, with `patient`, that the patient still exists (the
    foreign key is only checked at COMMIT, too late for a clean error)."""
    rows = _lock_slots_base(with_specialty).filter(pk__in={*slot_ids, *also})
    if holder:
        live_hold = SlotHold.objects.filter(
            slot=OuterRef("pk"), holder=holder, released_at=None, expires_at__gt=now or Now()
        )
        rows = rows.annotate(holder_holds_it=Exists(live_hold))
    if patient is not None:
        rows = rows.annotate(
            patient_exists=Exists(Patient.objects.filter(pk=patient.pk, clinic_id=clinic.pk))
        )
    locked = {s.pk: s for s in rows}
    if not holder:
        for slot in locked.values():
            slot.holder_holds_it = False
    for slot_id in slot_ids:
        slot = locked.get(slot_id)
        if slot is None:
            raise SlotUnavailable(f"slot {slot_id} does not exist", code="slot_not_found")
        if slot.clinic_id != clinic.pk:
            raise WrongClinic(f"slot {slot_id} belongs to another clinic")
        if patient is not None and not slot.patient_exists:
            raise PatientNotFound("the patient does not exist")
    return locked


def _check_bookable(slot: Slot | LockedSlot, *, now: dt.datetime) -> None:
    """Raise unless the holder the lock was taken for (`_lock_slots`, `_lock_slot_to_book`) may
    take this locked slot now. The one home of the booking rules."""
    if slot.start_at <= now:
        raise SlotUnavailable("the slot has already started", code="slot_in_past")
    if slot.status == SlotStatus.BLOCKED or not slot.doctor_active or slot.in_blocked_period:
        raise SlotUnavailable("the slot is blocked", code="slot_blocked")
    if slot.status == SlotStatus.BOOKED:
        raise SlotTaken("the slot is already booked")
    held_live = slot.status == SlotStatus.HELD and slot.held_until and slot.held_until > now
    if held_live and not slot.holder_holds_it:
        raise SlotTaken("someone else is holding the slot")


def _free_slot(slot: Slot) -> bool:
    """Give a slot locked by `_lock_slots` back: free, or blocked when a blocked period covers
    it. True when it became free (callers emit slot.liberado only then)."""
    slot.status = SlotStatus.BLOCKED if slot.in_blocked_period else SlotStatus.FREE
    slot.held_until = None
    slot.save(update_fields=["status", "held_until", "updated_at"])
    return not slot.in_blocked_period


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


@dataclass(frozen=True, slots=True)
class LockedSlot:
    """A slot row locked for a booking (`_lock_slot_to_book`), with what the rules read."""

    pk: int
    clinic_id: int
    doctor_id: int
    start_at: dt.datetime
    end_at: dt.datetime
    status: str
    held_until: dt.datetime | None
    doctor_active: bool
    in_blocked_period: bool
    holder_holds_it: bool
    patient_exists: bool
    only_specialty_id: int | None


# Booking is the write many patients race for, and its cost is how long the slot row stays
# locked and how much CPU each attempt takes: through the ORM a booking cost 3–5× the same
# statements in plain SQL (`make bench BENCH_ARGS=booking`, bench/README.md). So its statements
# are written here, in SQL that PostgreSQL and SQLite (the embedded demo) both run: the
# lock-and-read below, the appointment and audit INSERTs (sophia_web.inserts), the slot UPDATE.
# The read mirrors `_lock_slots` (`_blocked_period_over_slot`, the live hold, the doctor's only
# specialty); tests/clinics/test_booking_read.py holds the two to the same answers.
@functools.cache
def _lock_slot_to_book_sql() -> str:
    q = connection.ops.quote_name
    slot, doctor = q(Slot._meta.db_table), q(Doctor._meta.db_table)
    period, hold = q(BlockedPeriod._meta.db_table), q(SlotHold._meta.db_table)
    patient = q(Patient._meta.db_table)
    specialties = q(Doctor.specialties.through._meta.db_table)
    lock = " FOR UPDATE OF s" if connection.features.has_select_for_update_of else ""
    return (
        # Identifiers come from the models; every value is a parameter.
        "SELECT s.id, s.clinic_id, s.doctor_id, s.start_at, s.end_at, s.status, s.held_until,"  # noqa: S608
        " d.active,"
        f" EXISTS (SELECT 1 FROM {period} b WHERE b.clinic_id = s.clinic_id"
        "   AND (b.doctor_id IS NULL OR b.doctor_id = s.doctor_id)"
        "   AND b.starts_at < s.end_at AND b.ends_at > s.start_at),"
        f" EXISTS (SELECT 1 FROM {hold} h WHERE h.slot_id = s.id AND h.holder = %s"
        "   AND h.released_at IS NULL AND h.expires_at > %s),"
        f" EXISTS (SELECT 1 FROM {patient} p WHERE p.id = %s AND p.clinic_id = %s),"
        " (SELECT CASE WHEN COUNT(*) = 1 THEN MIN(ds.specialty_id) END"
        f"   FROM {specialties} ds WHERE ds.doctor_id = s.doctor_id)"
        f" FROM {slot} s INNER JOIN {doctor} d ON d.id = s.doctor_id"
        f" WHERE s.id = %s{lock}"
    )


@contextmanager
def _prepared() -> Iterator[None]:
    """Statements run inside are prepared by psycopg on PostgreSQL at their first run: parsed
    and planned once per connection, then only bound and executed. The connection prepares a
    statement the 5th time it runs it (settings, DB_PREPARE_THRESHOLD), but psycopg forgets
    every prepared statement at each ROLLBACK, and a refused booking (slot taken, patient
    overlap: a third of the booking benchmark's attempts) is one: with the connection's
    threshold the booking's statements would rarely be prepared under contention. Planning them
    cost PostgreSQL ~0.5 ms of its ~1.2 ms of CPU per booking (its backend's CPU over 2,000
    bookings). Only the statements of the block are prepared at once (a booking's or a
    reschedule's: the same few texts every time); any other query of the connection keeps the
    connection's threshold. SQLite (its own statement cache) and other backends: nothing
    changes."""
    raw = connection.connection
    if connection.vendor != "postgresql" or raw is None:
        yield
        return
    previous = raw.prepare_threshold
    raw.prepare_threshold = 0
    try:
        yield
    finally:
        raw.prepare_threshold = previous


def _aware(value: dt.datetime | str | None) -> dt.datetime | None:
    """A datetime column read by a raw cursor, as the ORM would give it: Django's own converter
    on backends that store text or naive UTC (SQLite); psycopg already returns it aware."""
    convert = getattr(connection.ops, "convert_datetimefield_value", None)
    return convert(value, None, connection) if convert is not None else value


def _lock_slot_to_book(
    cursor: CursorWrapper,
    clinic: Clinic,
    slot_id: int,
    patient: Patient,
    holder: str | None,
    now: dt.datetime,
) -> LockedSlot:
    """Lock one slot to book it and read what the booking rules need, in one statement."""
    at = connection.ops.adapt_datetimefield_value(now)
    cursor.execute(
        _lock_slot_to_book_sql(),
        [holder, at, patient.pk, clinic.pk, slot_id],
    )
    row = cursor.fetchone()
    if row is None:
        raise SlotUnavailable(f"slot {slot_id} does not exist", code="slot_not_found")
    slot = LockedSlot(
        pk=row[0],
        clinic_id=row[1],
        doctor_id=row[2],
        start_at=_aware(row[3]),
        end_at=_aware(row[4]),
        status=row[5],
        held_until=_aware(row[6]),
        doctor_active=bool(row[7]),
        in_blocked_period=bool(row[8]),
        holder_holds_it=bool(row[9]),
        patient_exists=bool(row[10]),
        only_specialty_id=row[11],
    )
    if slot.clinic_id != clinic.pk:
        raise WrongClinic(f"slot {slot_id} belongs to another clinic")
    if not slot.patient_exists:
        raise PatientNotFound("the patient does not exist")
    return slot


@functools.cache
def _mark_booked_sql() -> str:
    q = connection.ops.quote_name
    return (
        f"UPDATE {q(Slot._meta.db_table)} SET status = %s, held_until = NULL, updated_at = %s"  # noqa: S608
        " WHERE id = %s"
    )


def _book_locked(
    cursor: CursorWrapper,
    *,
    clinic: Clinic,
    patient: Patient,
    slot: Slot | LockedSlot,
    actor: Actor,
    source: str,
    specialty_id: int | None,
    notes: str,
    now: dt.datetime,
    rescheduled_from: Appointment | None = None,
) -> Appointment:
    """Book a slot the caller has locked and found bookable (`_check_bookable`), inside the
    caller's transaction (the caller audits). Without `specialty_id`, the doctor's only
    specialty (if they have exactly one): the caller read it with the lock."""
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
    if specialty_id is None:
        specialty_id = getattr(slot, "only_specialty_id", None)
    appointment = Appointment(
        clinic=clinic,
        patient=patient,
        slot_id=slot.pk,
        doctor_id=slot.doctor_id,
        specialty_id=specialty_id,
        start_at=slot.start_at,
        end_at=slot.end_at,
        status=AppointmentStatus.BOOKED,
        patient_notes=notes,
        source=source,
        rescheduled_from=rescheduled_from,
        created_at=now,
        updated_at=now,
    )
    values = inserts.values_of(appointment)
    at = connection.ops.adapt_datetimefield_value(now)
    mark_booked = [SlotStatus.BOOKED.value, at, slot.pk]
    held = slot.status == SlotStatus.HELD
    # No inner savepoint needed: the caller's atomic block (itself a savepoint when nested in an
    # outer transaction) is left by the BookingError raised here and rolls everything back.
    try:
        if connection.vendor == "postgresql":
            # The appointment, the slot marked booked and its hold released: one statement,
            # one round trip instead of two or three (booking benchmark, P3). SQLite has no
            # data-modifying WITH: the same three writes one by one below.
            params = inserts.row_params(Appointment, values, now, cursor.db) + mark_booked
            cursor.execute(_book_sql(held), [*params, at, slot.pk] if held else params)
            appointment.pk = cursor.fetchone()[0]
        else:
            appointment.pk = inserts.insert(cursor, Appointment, [values], now)[0][0]
    except IntegrityError as exc:
        raise _integrity_to_booking_error(exc) from exc
    appointment._state.adding = False
    appointment._state.db = connection.alias
    if connection.vendor != "postgresql":
        cursor.execute(_mark_booked_sql(), mark_booked)
        if held:
            cursor.execute(_release_hold_sql(), [at, slot.pk])
    return appointment


@functools.cache
def _release_hold_sql() -> str:
    q = connection.ops.quote_name
    h = inserts.columns(SlotHold)
    return (
        f"UPDATE {q(SlotHold._meta.db_table)} SET {h['released_at']} = %s "  # noqa: S608
        f"WHERE {h['slot_id']} = %s AND {h['released_at']} IS NULL"
    )


@functools.cache
def _book_sql(release_hold: bool) -> str:
    """PostgreSQL: INSERT the appointment, mark the slot booked (`_mark_booked_sql`) and, for a
    held slot, release its hold (`_release_hold_sql`), in one statement; it returns the
    appointment's id. Every sub-statement runs once, read or not (data-modifying WITH)."""
    q = connection.ops.quote_name
    release = f", h AS ({_release_hold_sql()})" if release_hold else ""
    return (
        f"WITH a AS ({inserts.one_row_sql(Appointment)} RETURNING {q('id')}), "  # noqa: S608
        f"s AS ({_mark_booked_sql()}){release} SELECT {q('id')} FROM a"
    )


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
        # The doctors' rows are locked so that a schedule being replaced right now is either
        # wholly before or wholly after this run.
        doctors = Doctor.objects.select_for_update().filter(clinic=clinic).order_by("pk")
        if doctor is not None:
            doctors = doctors.filter(pk=doctor.pk)
        list(doctors.values_list("pk", flat=True))
        created, blocked = scheduling.generate_slots(
            clinic=clinic, date_from=date_from, date_to=date_to, doctor=doctor
        )
        if created or blocked:
            start, end = scheduling.local_day_bounds(date_from, date_to, clinic.tz)
            _emit_agenda(clinic, [doctor.pk] if doctor else None, start, end)
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


@_counts_conflicts
def slot_hold(
    *,
    clinic: Clinic,
    slot_id: int,
    holder: str,
    patient: Patient | None = None,
    minutes: int | None = None,
) -> SlotHold:
    """Hold a bookable slot for `holder` (default: the clinic's hold minutes); drops their
    other hold.

    Holding the slot you already hold renews it.
    """
    slot_id = _check_id(slot_id, "slot_id")
    if not isinstance(holder, str) or not holder.strip() or len(holder) > 120:
        raise InvalidInput("holder must be a non-empty string of at most 120 characters")
    if minutes is None:
        minutes = clinic.hold_minutes
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
        locked = _lock_slots(clinic, [slot_id], also=others, now=now, holder=holder)
        slot = locked[slot_id]
        _check_bookable(slot, now=now)
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
        slot = _lock_slots(clinic, [slot_id], now=now, holder=holder)[slot_id]
        if not slot.holder_holds_it:
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
            Slot.objects.filter(pk__in=ids).update(
                status=Case(
                    When(_blocked_period_over_slot(), then=Value(SlotStatus.BLOCKED)),
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


@_counts_conflicts
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
    if source not in APPOINTMENT_SOURCES:
        raise InvalidInput(f"unknown source {source!r}")
    if specialty is not None and specialty.clinic_id != clinic.pk:
        raise WrongClinic("the specialty belongs to another clinic")
    if not isinstance(notes, str):
        raise InvalidInput("notes must be text")
    _check_patient(clinic, patient, query=False)
    notes = notes.strip()[:MAX_NOTES]
    refused: BookingError | None = None
    with transaction.atomic(), connection.cursor() as cursor, _prepared():
        now = timezone.now()
        slot = _lock_slot_to_book(cursor, clinic, slot_id, patient, holder, now)
        try:
            _check_bookable(slot, now=now)
        except BookingError as exc:
            # Nothing is written yet: the transaction ends by COMMIT, not ROLLBACK. psycopg
            # forgets every prepared statement at a ROLLBACK (DEALLOCATE ALL, one more round
            # trip), so each refusal (a third of the booking benchmark's attempts) cost the next
            # booking its preparation again.
            refused = exc
        else:
            appointment = _book_locked(
                cursor,
                clinic=clinic,
                patient=patient,
                slot=slot,
                actor=actor,
                source=source,
                specialty_id=specialty.pk if specialty is not None else None,
                notes=notes,
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
                cursor=cursor,
            )
            events.emit(
                clinic_id=clinic.pk, name="cita.creada", payload=_event_payload(appointment)
            )
    if refused is not None:
        raise refused
    logger.info(
        "appointment %s booked slot=%s patient=%s source=%s actor=%s",
        appointment.pk,
        slot_id,
        patient.pk,
        source,
        actor.type,
    )
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
        slot = _lock_slots(clinic, [found.slot_id], now=now)[found.slot_id]
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


@_counts_conflicts
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
    with transaction.atomic(), _prepared():
        now = timezone.now()
        found = _load_appointment(clinic, appointment_id, patient)
        if found.slot_id == new_slot_id:
            raise InvalidInput("the new slot is the current one")
        slots = _lock_slots(
            clinic,
            [found.slot_id, new_slot_id],
            now=now,
            holder=holder,
            with_specialty=found.specialty_id is None,
        )
        old = Appointment.objects.select_for_update().select_related("patient").get(pk=found.pk)
        new_slot = slots[new_slot_id]
        # Check the new slot before touching the old appointment, for the clearer error.
        _check_bookable(new_slot, now=now)
        freed = _cancel_locked(
            clinic=clinic,
            appointment=old,
            slot=slots[old.slot_id],
            reason="rescheduled",
            actor=actor,
            now=now,
        )
        with connection.cursor() as cursor:
            new = _book_locked(
                cursor,
                clinic=clinic,
                patient=old.patient,
                slot=new_slot,
                actor=actor,
                source=_source_for(actor),
                specialty_id=old.specialty_id,
                notes=old.patient_notes,
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
        "whatsapp_id": mask(patient.whatsapp_id),
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
    logger.info("patient %s registered (%s) actor=%s", patient.pk, mask(document), actor.type)
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
        object_id=patient.pk if patient else mask(wa_id),
        before=None,
        after={"patient_id": patient.pk if patient else None, "whatsapp_id": mask(wa_id)},
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
            object_id=patient.pk if patient else mask(wa_id),
            before=None,
            after={"patient_id": patient.pk if patient else None, "whatsapp_id": mask(wa_id)},
            at=now,
        )
        status = identity_status(clinic=clinic, wa_id=wa_id, patient=patient)
    logger.warning(
        "identity check failed from %s for patient %s (locked: patient=%s number=%s)",
        mask(wa_id),
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
            object_id=lockout.patient_id or mask(lockout.wa_id),
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
                after={"whatsapp_id": mask(wa_id), "how": how},
                at=now,
            )
    if created:
        logger.info("patient %s: number %s added (%s)", patient.pk, mask(wa_id), how)
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
            before={"whatsapp_id": mask(wa_id), "on_file": on_file},
            after=None,
            at=timezone.now(),
        )
    logger.info("patient %s: number %s removed", patient.pk, mask(wa_id))
    return True


# --- agendas: clinic settings, specialties, doctors, schedules and exceptions -----------------
# Admin changes to what can be booked. Each runs in one transaction with the doctor (or, for
# clinic-wide changes, the clinic) locked, so two admins' changes and the periodic generation
# apply one after the other. Bookings a change would strand are never touched silently: the
# caller passes `stranded_action` ("keep" or "cancel_notify") once it has shown them.

STRANDED_KEEP = "keep"
STRANDED_CANCEL = "cancel_notify"
STRANDED_ACTIONS = (STRANDED_KEEP, STRANDED_CANCEL)
MAX_PERIOD_DAYS = 366
CLINIC_SETTINGS_FIELDS = (
    "name",
    "address",
    "opening_hours",
    "what_to_bring",
    "emergency_line",
    "time_zone",
    "country",
    "whatsapp_number",
    "self_registration",
    "hold_minutes",
    "min_notice_minutes",
    "booking_horizon_days",
)


class StrandedDecisionNeeded(BookingError):
    """The change would strand booked appointments and the caller has not said what to do."""

    code = "stranded_decision_needed"

    def __init__(self, appointments: list[Appointment]) -> None:
        super().__init__(f"{len(appointments)} booked appointments would be stranded")
        self.appointments = appointments


@dataclass
class AgendaChange:
    """What an agenda change did, for the admin's confirmation page and the audit."""

    created: int = 0
    removed: int = 0
    blocked: int = 0
    freed: int = 0
    stranded: list[Appointment] = field(default_factory=list)
    cancelled: list[Appointment] = field(default_factory=list)
    notified: int = 0  # WhatsApp messages queued
    unreachable: int = 0  # cancelled patients without a WhatsApp number

    def as_json(self) -> dict:
        return {
            "created": self.created,
            "removed": self.removed,
            "blocked": self.blocked,
            "freed": self.freed,
            "stranded": [a.pk for a in self.stranded],
            "cancelled": [a.pk for a in self.cancelled],
            "notified": self.notified,
            "unreachable": self.unreachable,
        }


def agenda_window(clinic: Clinic, now: dt.datetime | None = None) -> tuple[dt.date, dt.date]:
    """Local dates [today, today + booking horizon]: where slots are kept generated."""
    today = timezone.localdate(now or timezone.now(), clinic.tz)
    return today, today + dt.timedelta(days=clinic.booking_horizon_days)


def _check_stranded_action(action: str | None) -> None:
    if action is not None and action not in STRANDED_ACTIONS:
        raise InvalidInput(f"stranded_action must be one of {STRANDED_ACTIONS}")


def _lock_doctor(clinic: Clinic, doctor_id: object) -> Doctor:
    doctor_id = _check_id(doctor_id, "doctor_id")
    doctor = Doctor.objects.select_for_update().filter(pk=doctor_id).first()
    if doctor is None or doctor.clinic_id != clinic.pk:
        # Another clinic's doctor reads as unknown: ids of other tenants are never confirmed.
        raise InvalidInput("no such doctor in this clinic", code="doctor_not_found")
    return doctor


def _emit_agenda(clinic: Clinic, doctor_ids: list[int] | None, start, end) -> None:
    events.emit(
        clinic_id=clinic.pk,
        name="agenda.actualizada",
        payload={
            "doctor_ids": doctor_ids,
            "starts_at": start.isoformat(),
            "ends_at": end.isoformat(),
        },
    )


def _cancel_stranded(
    *,
    clinic: Clinic,
    appointments: list[Appointment],
    actor: Actor,
    reason: str,
    user=None,
    now: dt.datetime,
) -> tuple[list[Appointment], int, int]:
    """Cancel these appointments (skipping any that stopped being upcoming), each patient to be
    told by WhatsApp with an offer to rebook: (cancelled, to be told, without WhatsApp).

    The message goes from bot.notices once the cancellation commits (the `cita.cancelada` event
    carries `notify_patient`); the worker delivers it.
    """
    if not appointments:
        return [], 0, 0
    slot_ids = sorted({a.slot_id for a in appointments})
    slots = _lock_slots(clinic, slot_ids)
    locked = {
        a.pk: a
        for a in Appointment.objects.select_for_update()
        .select_related("patient", "doctor")
        .filter(pk__in=[a.pk for a in appointments], clinic=clinic)
        .order_by("pk")
    }
    cancelled = []
    for appointment in sorted(locked.values(), key=lambda a: (a.start_at, a.pk)):
        if appointment.status not in UPCOMING_STATUSES or appointment.start_at <= now:
            continue
        _cancel_locked(
            clinic=clinic,
            appointment=appointment,
            slot=slots[appointment.slot_id],
            reason=reason,
            actor=actor,
            now=now,
        )
        events.emit(
            clinic_id=clinic.pk,
            name="cita.cancelada",
            payload={
                **_event_payload(appointment),
                "reason": reason,
                "notify_patient": True,
                "notified_by": user.pk if user is not None else None,
            },
        )
        cancelled.append(appointment)
    reachable = sum(1 for a in cancelled if a.patient.whatsapp_id)
    return cancelled, reachable, len(cancelled) - reachable


def _settle_stranded(
    *,
    clinic: Clinic,
    change: AgendaChange,
    stranded_action: str | None,
    actor: Actor,
    reason: str,
    user,
    now: dt.datetime,
) -> None:
    if not change.stranded:
        return
    if stranded_action is None:
        raise StrandedDecisionNeeded(change.stranded)
    if stranded_action == STRANDED_CANCEL:
        change.cancelled, change.notified, change.unreachable = _cancel_stranded(
            clinic=clinic,
            appointments=change.stranded,
            actor=actor,
            reason=reason,
            user=user,
            now=now,
        )


def _retire_slots(slot_ids: list[int], now: dt.datetime) -> int:
    """Take unbooked slots off the agenda: delete them, or block the ones whose cancelled
    appointments keep them (history); a booking that raced in keeps its slot."""
    if not slot_ids:
        return 0
    rows = list(
        Slot.objects.select_for_update()
        .filter(pk__in=slot_ids)
        .exclude(status=SlotStatus.BOOKED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    with_history = set(
        Appointment.objects.filter(slot_id__in=rows).values_list("slot_id", flat=True)
    )
    Slot.objects.filter(pk__in=with_history).update(
        status=SlotStatus.BLOCKED, held_until=None, updated_at=now
    )
    deletable = [pk for pk in rows if pk not in with_history]
    SlotHold.objects.filter(slot_id__in=deletable).delete()
    Slot.objects.filter(pk__in=deletable).delete()
    return len(rows)


def _apply_plan(
    *,
    clinic: Clinic,
    doctor: Doctor,
    schedules: list[Schedule],
    extras: list[ExtraHours],
    stranded_action: str | None,
    actor: Actor,
    reason: str,
    user,
    now: dt.datetime,
) -> AgendaChange:
    """Make the doctor's slots over the horizon match `schedules` + `extras` (already saved)."""
    date_from, date_to = agenda_window(clinic, now)
    diff = scheduling.agenda_diff(
        clinic=clinic,
        doctor=doctor,
        schedules=schedules,
        extras=extras,
        date_from=date_from,
        date_to=date_to,
        now=now,
    )
    change = AgendaChange(stranded=diff.stranded)
    _settle_stranded(
        clinic=clinic,
        change=change,
        stranded_action=stranded_action,
        actor=actor,
        reason=reason,
        user=user,
        now=now,
    )
    cancelled_slots = [a.slot_id for a in change.cancelled]
    change.removed = _retire_slots(diff.to_remove + cancelled_slots, now)
    if doctor.active:
        change.created, change.blocked = scheduling.generate_slots(
            clinic=clinic, date_from=date_from, date_to=date_to, doctor=doctor
        )
    start, end = scheduling.local_day_bounds(date_from, date_to, clinic.tz)
    _emit_agenda(clinic, [doctor.pk], start, end)
    return change


def _schedule_state(schedule: Schedule) -> dict:
    return {
        "weekdays": schedule.weekdays,
        "start_time": schedule.start_time.isoformat(),
        "end_time": schedule.end_time.isoformat(),
        "slot_minutes": schedule.slot_minutes,
        "valid_from": schedule.valid_from.isoformat(),
        "valid_to": schedule.valid_to.isoformat() if schedule.valid_to else None,
        "every_n_weeks": schedule.every_n_weeks,
    }


def _to_schedules(doctor: Doctor, blocks: list[dict]) -> list[Schedule]:
    schedules = []
    for block in blocks:
        try:
            schedule = Schedule(
                doctor=doctor,
                weekdays=sorted({int(d) for d in block["weekdays"]}),
                start_time=block["start_time"],
                end_time=block["end_time"],
                slot_minutes=int(block["slot_minutes"]),
                valid_from=block["valid_from"],
                valid_to=block.get("valid_to") or None,
                every_n_weeks=int(block.get("every_n_weeks") or 1),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"incomplete schedule block: {exc}") from exc
        if not (
            isinstance(schedule.start_time, dt.time)
            and isinstance(schedule.end_time, dt.time)
            and isinstance(schedule.valid_from, dt.date)
            and (schedule.valid_to is None or isinstance(schedule.valid_to, dt.date))
        ):
            raise InvalidInput("schedule blocks need times and dates")
        schedules.append(schedule)
    return schedules


def schedule_blocks_check(
    *, clinic: Clinic, doctor: Doctor, blocks: list[dict], now: dt.datetime | None = None
) -> tuple[list[Schedule], list[scheduling.BlockProblem]]:
    """The blocks as unsaved Schedule rows and their problems (what the form shows)."""
    if doctor.clinic_id != clinic.pk:
        raise InvalidInput("no such doctor in this clinic", code="doctor_not_found")
    schedules = _to_schedules(doctor, blocks)
    today = timezone.localdate(now or timezone.now(), clinic.tz)
    return schedules, scheduling.check_schedule_blocks(schedules, today)


def schedule_replace(
    *,
    clinic: Clinic,
    doctor_id: int,
    blocks: list[dict],
    actor: Actor,
    stranded_action: str | None = None,
    user=None,
) -> AgendaChange:
    """Replace a doctor's weekly blocks and bring the slots over the horizon in line.

    Unbooked slots that leave the agenda go; new ones are generated; booked appointments outside
    the new agenda are kept or cancelled with a WhatsApp message (`stranded_action`).
    Raises StrandedDecisionNeeded (nothing written) when there are some and no action was given.
    """
    _check_actor(actor)
    _check_stranded_action(stranded_action)
    with transaction.atomic():
        now = timezone.now()
        doctor = _lock_doctor(clinic, doctor_id)
        schedules, problems = schedule_blocks_check(
            clinic=clinic, doctor=doctor, blocks=blocks, now=now
        )
        if problems:
            raise InvalidInput(str(problems[0].message), code="invalid_schedule")
        before = [_schedule_state(s) for s in doctor.schedules.order_by("pk")]
        Schedule.objects.filter(doctor=doctor).delete()
        Schedule.objects.bulk_create(schedules)
        change = _apply_plan(
            clinic=clinic,
            doctor=doctor,
            schedules=schedules,
            extras=list(ExtraHours.objects.filter(doctor=doctor)),
            stranded_action=stranded_action,
            actor=actor,
            reason="schedule_changed",
            user=user,
            now=now,
        )
        _audit(
            clinic=clinic,
            actor=actor,
            action="schedule.replace",
            object_type="doctor",
            object_id=doctor.pk,
            before={"blocks": before},
            after={"blocks": [_schedule_state(s) for s in schedules], **change.as_json()},
            at=now,
        )
    logger.info("schedule of doctor %s replaced: %s", doctor.pk, change.as_json())
    return change


def _check_extra(clinic: Clinic, doctor: Doctor, extra: ExtraHours, today: dt.date) -> None:
    if extra.date < today:
        raise InvalidInput("the date is in the past", code="date_in_past")
    problems = scheduling.check_schedule_blocks(
        [
            Schedule(
                doctor=doctor,
                weekdays=[extra.date.weekday()],
                start_time=extra.start_time,
                end_time=extra.end_time,
                slot_minutes=extra.slot_minutes,
                valid_from=extra.date,
                valid_to=extra.date,
            )
        ],
        today,
    )
    if problems:
        raise InvalidInput(str(problems[0].message), code="invalid_schedule")


def extra_hours_add(
    *,
    clinic: Clinic,
    doctor_id: int,
    date: dt.date,
    start_time: dt.time,
    end_time: dt.time,
    slot_minutes: int,
    actor: Actor,
    note: str = "",
) -> AgendaChange:
    """Hours on one date on top of the weekly schedule; their slots are generated at once."""
    _check_actor(actor)
    with transaction.atomic():
        now = timezone.now()
        doctor = _lock_doctor(clinic, doctor_id)
        extra = ExtraHours(
            doctor=doctor,
            date=date,
            start_time=start_time,
            end_time=end_time,
            slot_minutes=slot_minutes,
            note=(note or "").strip()[:200],
        )
        _check_extra(clinic, doctor, extra, timezone.localdate(now, clinic.tz))
        day_start, day_end = scheduling.local_day_bounds(date, date, clinic.tz)
        planned = scheduling.plan_intervals(
            schedules=[],
            extras=[extra],
            date_from=date,
            date_to=date,
            tz=clinic.tz,
        ).get(doctor.pk, [])
        first, last = (planned[0][0], planned[-1][1]) if planned else (day_start, day_start)
        busy = list(
            Slot.objects.filter(doctor=doctor, start_at__lt=last, end_at__gt=first)
            .exclude(status=SlotStatus.BLOCKED)
            .values_list("start_at", "end_at")
        )
        if any(a < e and s < b for a, b in planned for s, e in busy):
            raise InvalidInput(
                "the extra hours overlap slots the doctor already has", code="overlaps_agenda"
            )
        extra.save()
        change = AgendaChange()
        if doctor.active:
            change.created, change.blocked = scheduling.generate_slots(
                clinic=clinic, date_from=date, date_to=date, doctor=doctor
            )
        _audit(
            clinic=clinic,
            actor=actor,
            action="extra_hours.add",
            object_type="extra_hours",
            object_id=extra.pk,
            before=None,
            after={
                "doctor_id": doctor.pk,
                "date": date.isoformat(),
                "start_time": start_time.isoformat(),
                "end_time": end_time.isoformat(),
                "slot_minutes": slot_minutes,
                **change.as_json(),
            },
            at=now,
        )
        _emit_agenda(clinic, [doctor.pk], day_start, day_end)
    return change


def extra_hours_remove(
    *,
    clinic: Clinic,
    extra_id: int,
    actor: Actor,
    stranded_action: str | None = None,
    user=None,
) -> AgendaChange:
    """Remove extra hours: their unbooked slots go; bookings in them are kept or cancelled."""
    _check_actor(actor)
    _check_stranded_action(stranded_action)
    extra_id = _check_id(extra_id, "extra_id")
    with transaction.atomic():
        now = timezone.now()
        found = ExtraHours.objects.filter(pk=extra_id, doctor__clinic=clinic).first()
        if found is None:
            raise InvalidInput("no such extra hours in this clinic", code="not_found")
        doctor = _lock_doctor(clinic, found.doctor_id)
        remaining = list(ExtraHours.objects.filter(doctor=doctor).exclude(pk=extra_id))
        found.delete()
        change = _apply_plan(
            clinic=clinic,
            doctor=doctor,
            schedules=list(Schedule.objects.filter(doctor=doctor)),
            extras=remaining,
            stranded_action=stranded_action,
            actor=actor,
            reason="schedule_changed",
            user=user,
            now=now,
        )
        _audit(
            clinic=clinic,
            actor=actor,
            action="extra_hours.remove",
            object_type="extra_hours",
            object_id=extra_id,
            before={"doctor_id": doctor.pk, "date": found.date.isoformat()},
            after=change.as_json(),
            at=now,
        )
    return change


def _period_state(period: BlockedPeriod) -> dict:
    return {
        "kind": period.kind,
        "doctor_id": period.doctor_id,
        "starts_at": period.starts_at.isoformat(),
        "ends_at": period.ends_at.isoformat(),
        "reason": period.reason,
    }


def blocked_period_add(
    *,
    clinic: Clinic,
    kind: str,
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    actor: Actor,
    doctor_id: int | None = None,
    reason: str = "",
    stranded_action: str | None = None,
    user=None,
) -> tuple[BlockedPeriod, AgendaChange]:
    """An absence (a doctor), a holiday (the whole clinic) or a block set by hand.

    Its free slots become blocked at once; booked appointments in it are kept or cancelled with
    a WhatsApp message (their slots stay blocked). StrandedDecisionNeeded when there are some
    and no `stranded_action` was given.
    """
    _check_actor(actor)
    _check_stranded_action(stranded_action)
    if kind not in BlockedPeriod.Kind.values:
        raise InvalidInput(f"unknown kind {kind!r}")
    if not isinstance(starts_at, dt.datetime) or not isinstance(ends_at, dt.datetime):
        raise InvalidInput("starts_at and ends_at must be datetimes")
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise InvalidInput("starts_at and ends_at must carry a time zone")
    if ends_at <= starts_at:
        raise InvalidInput("the end is not after the start", code="end_before_start")
    if ends_at - starts_at > dt.timedelta(days=MAX_PERIOD_DAYS):
        raise InvalidInput("at most one year at a time", code="period_too_long")
    if kind != BlockedPeriod.Kind.HOLIDAY and doctor_id is None:
        raise InvalidInput("absences and blocks need a doctor", code="doctor_not_found")
    reason = (reason or "").strip()[:200]
    with transaction.atomic():
        now = timezone.now()
        if ends_at <= now:
            raise InvalidInput("the period is over already", code="date_in_past")
        if doctor_id is not None:
            doctor = _lock_doctor(clinic, doctor_id)
        else:
            doctor = None
            Clinic.objects.select_for_update().filter(pk=clinic.pk).first()
        period = BlockedPeriod.objects.create(
            clinic=clinic,
            doctor=doctor,
            kind=kind,
            starts_at=starts_at,
            ends_at=ends_at,
            reason=reason,
        )
        change = AgendaChange(
            stranded=scheduling.stranded_in_period(
                clinic=clinic, doctor=doctor, starts_at=starts_at, ends_at=ends_at, now=now
            )
        )
        _settle_stranded(
            clinic=clinic,
            change=change,
            stranded_action=stranded_action,
            actor=actor,
            reason=reason or str(BlockedPeriod.Kind(kind).label),
            user=user,
            now=now,
        )
        change.blocked = scheduling.block_free_slots(
            clinic, [(doctor.pk if doctor else None, starts_at, ends_at)], doctor
        )
        _audit(
            clinic=clinic,
            actor=actor,
            action=f"{kind}.add",
            object_type="blocked_period",
            object_id=period.pk,
            before=None,
            after={**_period_state(period), **change.as_json()},
            at=now,
        )
        _emit_agenda(clinic, [doctor.pk] if doctor else None, starts_at, ends_at)
    logger.info("%s %s added: %s", kind, period.pk, change.as_json())
    return period, change


def _free_blocked_slots(
    clinic: Clinic, doctor: Doctor | None, starts_at: dt.datetime, ends_at: dt.datetime
) -> list[Slot]:
    """Blocked slots in [starts_at, ends_at) that no remaining period covers and that the agenda
    still has (not retired) become free again; returns them."""
    candidates = Slot.objects.select_for_update().filter(
        clinic=clinic, status=SlotStatus.BLOCKED, start_at__lt=ends_at, end_at__gt=starts_at
    )
    if doctor is not None:
        candidates = candidates.filter(doctor=doctor)
    candidates = list(candidates.order_by("pk"))
    if not candidates:
        return []
    doctor_ids = sorted({s.doctor_id for s in candidates})
    span_start = min(s.start_at for s in candidates)
    span_end = max(s.end_at for s in candidates)
    blocks = scheduling.blocked_periods(clinic, doctor_ids, span_start, span_end)
    tz = clinic.tz
    day_from = timezone.localdate(span_start, tz)
    day_to = timezone.localdate(span_end, tz)
    plan = scheduling.plan_intervals(
        schedules=Schedule.objects.filter(doctor_id__in=doctor_ids),
        extras=ExtraHours.objects.filter(
            doctor_id__in=doctor_ids, date__gte=day_from, date__lte=day_to
        ),
        date_from=day_from,
        date_to=day_to,
        tz=tz,
    )
    planned = {(d, i) for d, intervals in plan.items() for i in intervals}
    freed = [
        s
        for s in candidates
        if (s.doctor_id, (s.start_at, s.end_at)) in planned
        and not any(
            (b_doctor is None or b_doctor == s.doctor_id)
            and b_start < s.end_at
            and s.start_at < b_end
            for b_doctor, b_start, b_end in blocks
        )
    ]
    now = timezone.now()
    Slot.objects.filter(pk__in=[s.pk for s in freed]).update(
        status=SlotStatus.FREE, held_until=None, updated_at=now
    )
    for slot in freed:
        slot.status = SlotStatus.FREE
        events.emit(
            clinic_id=clinic.pk,
            name="slot.liberado",
            payload={"slot_id": slot.pk, "doctor_id": slot.doctor_id, "reason": "unblocked"},
        )
    return freed


def blocked_period_remove(*, clinic: Clinic, period_id: int, actor: Actor) -> AgendaChange:
    """Remove an absence, holiday or block: the slots it blocked are free again, and slots it
    kept from being generated are generated now."""
    _check_actor(actor)
    period_id = _check_id(period_id, "period_id")
    with transaction.atomic():
        now = timezone.now()
        found = BlockedPeriod.objects.filter(pk=period_id, clinic=clinic).first()
        if found is None:
            raise InvalidInput("no such period in this clinic", code="not_found")
        if found.doctor_id is not None:
            doctor = _lock_doctor(clinic, found.doctor_id)
        else:
            doctor = None
            Clinic.objects.select_for_update().filter(pk=clinic.pk).first()
        period = BlockedPeriod.objects.select_for_update().filter(pk=period_id).first()
        if period is None:
            raise InvalidInput("no such period in this clinic", code="not_found")
        before = _period_state(period)
        period.delete()
        change = AgendaChange()
        change.freed = len(_free_blocked_slots(clinic, doctor, period.starts_at, period.ends_at))
        window_from, window_to = agenda_window(clinic, now)
        day_from = max(window_from, timezone.localdate(period.starts_at, clinic.tz))
        day_to = min(window_to, timezone.localdate(period.ends_at, clinic.tz))
        if day_from <= day_to:
            change.created, _ = scheduling.generate_slots(
                clinic=clinic, date_from=day_from, date_to=day_to, doctor=doctor
            )
        _audit(
            clinic=clinic,
            actor=actor,
            action=f"{before['kind']}.remove",
            object_type="blocked_period",
            object_id=period_id,
            before=before,
            after=change.as_json(),
            at=now,
        )
        _emit_agenda(clinic, [doctor.pk] if doctor else None, period.starts_at, period.ends_at)
    logger.info("blocked period %s removed: %s", period_id, change.as_json())
    return change


def slot_unblock(*, clinic: Clinic, slot_id: int, actor: Actor) -> Slot:
    """Unblock one slot blocked by hand (splitting a hand-set range around it). A slot inside an
    absence or holiday stays blocked: those are lifted by removing them."""
    _check_actor(actor)
    slot_id = _check_id(slot_id, "slot_id")
    with transaction.atomic():
        now = timezone.now()
        found = Slot.objects.filter(pk=slot_id).first()
        if found is None or found.clinic_id != clinic.pk:
            raise SlotUnavailable(f"slot {slot_id} does not exist", code="slot_not_found")
        _lock_doctor(clinic, found.doctor_id)
        slot = _lock_slots(clinic, [slot_id])[slot_id]
        if slot.status != SlotStatus.BLOCKED:
            raise InvalidInput("the slot is not blocked", code="not_blocked")
        covering = list(
            BlockedPeriod.objects.select_for_update()
            .filter(
                Q(doctor__isnull=True) | Q(doctor_id=slot.doctor_id),
                clinic=clinic,
                starts_at__lt=slot.end_at,
                ends_at__gt=slot.start_at,
            )
            .order_by("pk")
        )
        if any(p.kind != BlockedPeriod.Kind.BLOCK for p in covering):
            raise InvalidInput("the slot is inside an absence or holiday", code="slot_in_absence")
        for period in covering:
            period_pk = period.pk
            before = _period_state(period)
            pieces = [
                (period.starts_at, slot.start_at),
                (slot.end_at, period.ends_at),
            ]
            pieces = [(a, b) for a, b in pieces if b > a]
            if pieces:
                period.starts_at, period.ends_at = pieces[0]
                period.save(update_fields=["starts_at", "ends_at"])
                for a, b in pieces[1:]:
                    BlockedPeriod.objects.create(
                        clinic=clinic,
                        doctor_id=period.doctor_id,
                        kind=period.kind,
                        starts_at=a,
                        ends_at=b,
                        reason=period.reason,
                    )
            else:
                period.delete()
            _audit(
                clinic=clinic,
                actor=actor,
                action="block.split" if pieces else "block.remove",
                object_type="blocked_period",
                object_id=period_pk,
                before=before,
                after={"slot_id": slot.pk, "pieces": len(pieces)},
                at=now,
            )
        before_status = slot.status
        # Not _free_slot: its "covered by a period" answer was read when the slot was locked,
        # before the hand block covering it was lifted just above.
        slot.status = SlotStatus.FREE
        slot.held_until = None
        slot.save(update_fields=["status", "held_until", "updated_at"])
        _audit(
            clinic=clinic,
            actor=actor,
            action="slot.unblock",
            object_type="slot",
            object_id=slot.pk,
            before={"status": before_status},
            after={"status": slot.status},
            at=now,
        )
        events.emit(
            clinic_id=clinic.pk,
            name="slot.liberado",
            payload={"slot_id": slot.pk, "doctor_id": slot.doctor_id, "reason": "unblocked"},
        )
        _emit_agenda(clinic, [slot.doctor_id], slot.start_at, slot.end_at)
    return slot


def holidays_load(
    *, clinic: Clinic, year: int, actor: Actor, force: bool = False
) -> list[BlockedPeriod]:
    """Add the public holidays of the clinic's country for `year` as clinic-wide whole-day
    periods, once per year (a holiday an admin removed stays removed unless `force`).
    Bookings on them are kept: the admin sees them in the list and decides."""
    _check_actor(actor)
    if isinstance(year, bool) or not isinstance(year, int) or not 2000 <= year <= 2100:
        raise InvalidInput("year out of range")
    with transaction.atomic():
        now = timezone.now()
        locked = Clinic.objects.select_for_update().get(pk=clinic.pk)
        loaded = list(locked.holiday_years_loaded or [])
        if year in loaded and not force:
            return []
        tz = clinic.tz
        existing = set(
            BlockedPeriod.objects.filter(
                clinic=clinic, kind=BlockedPeriod.Kind.HOLIDAY, doctor__isnull=True
            ).values_list("starts_at", flat=True)
        )
        added = []
        for day, name in scheduling.country_holidays(locked.country, year):
            starts_at, ends_at = scheduling.local_day_bounds(day, day, tz)
            if starts_at in existing or ends_at <= now:
                continue
            added.append(
                BlockedPeriod(
                    clinic=clinic,
                    kind=BlockedPeriod.Kind.HOLIDAY,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    reason=name[:200],
                )
            )
        BlockedPeriod.objects.bulk_create(added)
        if year not in loaded:
            loaded.append(year)
            Clinic.objects.filter(pk=clinic.pk).update(holiday_years_loaded=sorted(loaded))
            clinic.holiday_years_loaded = sorted(loaded)
        for period in added:
            scheduling.block_free_slots(clinic, [(None, period.starts_at, period.ends_at)])
        if added:
            _audit(
                clinic=clinic,
                actor=actor,
                action="holiday.load",
                object_type="clinic",
                object_id=clinic.pk,
                before=None,
                after={
                    "year": year,
                    "country": locked.country,
                    "days": [p.starts_at.astimezone(tz).date().isoformat() for p in added],
                },
                at=now,
            )
            _emit_agenda(clinic, None, added[0].starts_at, added[-1].ends_at)
    return added


def agenda_keep_generated(*, clinic: Clinic, actor: Actor | None = None) -> int:
    """The periodic job's work for one clinic: holidays of the years in the horizon, then slots
    from today to the end of the horizon (idempotent)."""
    actor = actor or Actor.system("agenda_keep_generated")
    date_from, date_to = agenda_window(clinic)
    for year in sorted({date_from.year, date_to.year}):
        holidays_load(clinic=clinic, year=year, actor=actor)
    return slots_generate(clinic=clinic, date_from=date_from, date_to=date_to, actor=actor)


# --- clinic settings, specialties and doctors ------------------------------------------------


def clinic_update_settings(*, clinic: Clinic, values: dict, actor: Actor) -> Clinic:
    """Change the clinic's settings (only CLINIC_SETTINGS_FIELDS), validated by the model."""
    _check_actor(actor)
    unknown = set(values) - set(CLINIC_SETTINGS_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown settings {sorted(unknown)}")
    with transaction.atomic():
        locked = Clinic.objects.select_for_update().get(pk=clinic.pk)
        before = {name: getattr(locked, name) for name in values}
        for name, value in values.items():
            setattr(locked, name, value)
        try:
            locked.full_clean(exclude=["slug", "phone_number_id", "whatsapp_access_token"])
        except ValidationError as exc:
            raise InvalidInput(f"invalid settings: {sorted(exc.message_dict)}") from exc
        locked.save(update_fields=list(values))
        changed = {n: v for n, v in values.items() if before[n] != v}
        if changed:
            _audit(
                clinic=clinic,
                actor=actor,
                action="clinic.settings",
                object_type="clinic",
                object_id=clinic.pk,
                before={n: before[n] for n in changed},
                after=changed,
                at=timezone.now(),
            )
    for name, value in values.items():
        setattr(clinic, name, value)
    return locked


def _unique_slug(clinic: Clinic, name: str, exclude_pk: int | None = None) -> str:
    base = slugify(name)[:45] or "especialidad"
    slug, n = base, 2
    taken = Specialty.objects.filter(clinic=clinic)
    if exclude_pk:
        taken = taken.exclude(pk=exclude_pk)
    while taken.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def _clean_name(value: object, what: str) -> str:
    name = " ".join(value.split()) if isinstance(value, str) else ""
    if not 2 <= len(name) <= 120:
        raise InvalidInput(f"the {what} must have 2 to 120 characters", code="invalid_name")
    return name


def specialty_create(*, clinic: Clinic, name: str, triage_keywords: str, actor: Actor) -> Specialty:
    _check_actor(actor)
    name = _clean_name(name, "name")
    with transaction.atomic():
        if Specialty.objects.filter(clinic=clinic, name__iexact=name).exists():
            raise InvalidInput("a specialty with that name exists", code="specialty_exists")
        specialty = Specialty.objects.create(
            clinic=clinic,
            name=name,
            slug=_unique_slug(clinic, name),
            triage_keywords=(triage_keywords or "").strip(),
        )
        _audit(
            clinic=clinic,
            actor=actor,
            action="specialty.create",
            object_type="specialty",
            object_id=specialty.pk,
            before=None,
            after={"name": name, "keywords": specialty.keyword_list()},
            at=timezone.now(),
        )
    return specialty


def specialty_update(
    *, clinic: Clinic, specialty_id: int, name: str, triage_keywords: str, actor: Actor
) -> Specialty:
    """Rename a specialty or change its triage keywords (the slug stays: the bot keys on it)."""
    _check_actor(actor)
    name = _clean_name(name, "name")
    specialty_id = _check_id(specialty_id, "specialty_id")
    with transaction.atomic():
        specialty = (
            Specialty.objects.select_for_update().filter(pk=specialty_id, clinic=clinic).first()
        )
        if specialty is None:
            raise InvalidInput("no such specialty in this clinic", code="not_found")
        if (
            Specialty.objects.filter(clinic=clinic, name__iexact=name)
            .exclude(pk=specialty.pk)
            .exists()
        ):
            raise InvalidInput("a specialty with that name exists", code="specialty_exists")
        before = {"name": specialty.name, "keywords": specialty.keyword_list()}
        specialty.name = name
        specialty.triage_keywords = (triage_keywords or "").strip()
        specialty.save(update_fields=["name", "triage_keywords"])
        _audit(
            clinic=clinic,
            actor=actor,
            action="specialty.update",
            object_type="specialty",
            object_id=specialty.pk,
            before=before,
            after={"name": name, "keywords": specialty.keyword_list()},
            at=timezone.now(),
        )
    return specialty


def _clinic_specialties(clinic: Clinic, specialty_ids: list) -> list[Specialty]:
    ids = {_check_id(i, "specialty_id") for i in specialty_ids}
    found = list(Specialty.objects.filter(clinic=clinic, pk__in=ids))
    if len(found) != len(ids):
        raise InvalidInput("unknown specialty for this clinic", code="not_found")
    return found


def doctor_create(
    *, clinic: Clinic, full_name: str, specialty_ids: list[int], actor: Actor
) -> Doctor:
    _check_actor(actor)
    full_name = _clean_name(full_name, "full name")
    with transaction.atomic():
        specialties = _clinic_specialties(clinic, specialty_ids)
        doctor = Doctor.objects.create(clinic=clinic, full_name=full_name)
        doctor.specialties.set(specialties)
        _audit(
            clinic=clinic,
            actor=actor,
            action="doctor.create",
            object_type="doctor",
            object_id=doctor.pk,
            before=None,
            after={"full_name": full_name, "specialties": sorted(s.pk for s in specialties)},
            at=timezone.now(),
        )
    return doctor


def doctor_update(
    *,
    clinic: Clinic,
    doctor_id: int,
    full_name: str,
    specialty_ids: list[int],
    active: bool,
    actor: Actor,
) -> Doctor:
    """Edit a doctor. Deactivating stops new bookings (availability and booking both skip
    inactive doctors); appointments already booked stay, listed on the doctor's page."""
    _check_actor(actor)
    full_name = _clean_name(full_name, "full name")
    with transaction.atomic():
        now = timezone.now()
        doctor = _lock_doctor(clinic, doctor_id)
        specialties = _clinic_specialties(clinic, specialty_ids)
        before = {
            "full_name": doctor.full_name,
            "active": doctor.active,
            "specialties": sorted(doctor.specialties.values_list("pk", flat=True)),
        }
        doctor.full_name = full_name
        doctor.active = bool(active)
        doctor.save(update_fields=["full_name", "active"])
        doctor.specialties.set(specialties)
        _audit(
            clinic=clinic,
            actor=actor,
            action="doctor.update",
            object_type="doctor",
            object_id=doctor.pk,
            before=before,
            after={
                "full_name": full_name,
                "active": doctor.active,
                "specialties": sorted(s.pk for s in specialties),
            },
            at=now,
        )
        if before["active"] != doctor.active:
            window_from, window_to = agenda_window(clinic, now)
            if doctor.active:
                scheduling.generate_slots(
                    clinic=clinic, date_from=window_from, date_to=window_to, doctor=doctor
                )
            start, end = scheduling.local_day_bounds(window_from, window_to, clinic.tz)
            _emit_agenda(clinic, [doctor.pk], start, end)
    return doctor


def patient_update_contact(
    *, clinic: Clinic, patient_id: int, full_name: str, whatsapp_id: str, actor: Actor
) -> Patient:
    """Staff correct a patient's name or WhatsApp number (empty: none on file)."""
    _check_actor(actor)
    patient_id = _check_id(patient_id, "patient_id")
    name = " ".join(full_name.split()) if isinstance(full_name, str) else ""
    if not 3 <= len(name) <= 200:
        raise InvalidInput("the full name must have 3 to 200 characters")
    whatsapp_id = _clean_whatsapp_id(whatsapp_id) if whatsapp_id else ""
    with transaction.atomic():
        patient = Patient.objects.select_for_update().filter(pk=patient_id, clinic=clinic).first()
        if patient is None:
            raise PatientNotFound("no such patient in this clinic")
        before = _patient_state(patient)
        if (patient.full_name, patient.whatsapp_id) == (name, whatsapp_id):
            return patient
        patient.full_name = name
        patient.whatsapp_id = whatsapp_id
        patient.save(update_fields=["full_name", "whatsapp_id"])
        _audit(
            clinic=clinic,
            actor=actor,
            action="patient.update_contact",
            object_type="patient",
            object_id=patient.pk,
            before=before,
            after=_patient_state(patient),
            at=timezone.now(),
        )
    logger.info("patient %s contact updated actor=%s", patient.pk, actor.type)
    return patient


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
