"""Reads shared by several callers (bot engine, views, API, benchmark)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
from dataclasses import dataclass

from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from clinics import scheduling
from clinics.models import (
    OCCUPYING_STATUSES,
    UPCOMING_STATUSES,
    Appointment,
    AppointmentStatus,
    AuditEvent,
    BlockedPeriod,
    Clinic,
    Doctor,
    FaqEntry,
    Patient,
    PatientPhone,
    Slot,
    SlotHold,
    SlotStatus,
    Specialty,
    StaffMembership,
)
from clinics.services import InvalidInput, clean_document
from sophia_web import inserts, model_rows

MAX_PAGE_SIZE = 100
# A window by weekday or time of day looks this many days ahead when it has no end of its own:
# "después de las 5" at a clinic that closes at 4 must not walk a year of slots to say "none".
WINDOW_HORIZON_DAYS = 62


@dataclass
class SlotPage:
    slots: list[Slot]  # doctor is select_related
    next_cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class SlotWindow:
    """When the patient wants the appointment, all bounds optional.

    `start`/`end` are instants (aware datetimes; `end` exclusive). `time_from`/`time_to` are the
    clinic's wall-clock times of the slot's start (`time_to` exclusive), and `weekdays` the local
    days (0 = Monday) — "el viernes en la tarde", "después de las 5".
    """

    start: dt.datetime | None = None
    end: dt.datetime | None = None
    time_from: dt.time | None = None
    time_to: dt.time | None = None
    weekdays: frozenset[int] | None = None

    @property
    def by_day(self) -> bool:
        return self.time_from is not None or self.time_to is not None or self.weekdays is not None

    def day_ranges(
        self, lower: dt.datetime, upper: dt.datetime | None, tz
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """The UTC intervals, one per local day from `lower` on, that the window allows."""
        last = (upper or lower + dt.timedelta(days=WINDOW_HORIZON_DAYS)).astimezone(tz).date()
        last = min(last, lower.astimezone(tz).date() + dt.timedelta(days=WINDOW_HORIZON_DAYS))
        day = lower.astimezone(tz).date()
        ranges = []
        while day <= last:
            if self.weekdays is None or day.weekday() in self.weekdays:
                begin = dt.datetime.combine(day, self.time_from or dt.time.min, tzinfo=tz)
                if self.time_to is not None:
                    finish = dt.datetime.combine(day, self.time_to, tzinfo=tz)
                else:
                    finish = _local_midnight(day + dt.timedelta(days=1), tz)
                begin, finish = max(begin, lower), min(finish, upper) if upper else finish
                if begin < finish:
                    ranges.append((begin, finish))
            day += dt.timedelta(days=1)
        return ranges


def encode_cursor(slot: Slot) -> str:
    raw = json.dumps({"s": slot.start_at.isoformat(), "i": slot.pk}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    """(start_at, id) of the last slot shown, or InvalidInput("invalid_cursor")."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        start_at = dt.datetime.fromisoformat(data["s"])
        slot_id = data["i"]
        if start_at.tzinfo is None or isinstance(slot_id, bool) or not isinstance(slot_id, int):
            raise ValueError("incomplete cursor")
    except (
        TypeError,
        ValueError,
        KeyError,
        UnicodeError,
        binascii.Error,
        AttributeError,
    ) as exc:
        raise InvalidInput("the page cursor is not valid", code="invalid_cursor") from exc
    return start_at, slot_id


def _local_midnight(day: dt.date, tz) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=tz)


# The page query is hand-written SQL: it is the hottest read of the product (every list the
# bot shows), and building it through the ORM cost more than running it (~1.2 ms of ~2 ms).
# It reads exactly like the ORM query would, and stays portable (PostgreSQL and SQLite).
_SLOT_FIELDS = Slot._meta.concrete_fields
_DOCTOR_FIELDS = Doctor._meta.concrete_fields
_SELECT = ", ".join(
    [f"s.{f.column}" for f in _SLOT_FIELDS] + [f"d.{f.column}" for f in _DOCTOR_FIELDS]
)
_FROM = f"{Slot._meta.db_table} s JOIN {Doctor._meta.db_table} d ON d.id = s.doctor_id"
_DOCTOR_SPECIALTY = Doctor.specialties.through._meta.db_table


def _converters(model, fields) -> list[tuple[int, list, object]]:
    """Backend value converters per column (none on PostgreSQL; datetimes on SQLite)."""
    result = []
    for index, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            result.append((index, found, col))
    return result


def _keyset_page(
    *,
    clinic_id: int,
    earliest: dt.datetime,
    now: dt.datetime,
    held_by_me: int | None,
    after: tuple[dt.datetime, int] | None,
    upper: dt.datetime | None,
    doctor_id: int | None,
    specialty_id: int | None,
    limit: int,
    day_ranges: list[tuple[dt.datetime, dt.datetime]] | None = None,
    busy_upper: dt.datetime | None = None,
    patient_id: int | None = None,
) -> list[Slot]:
    adapt = connection.ops.adapt_datetimefield_value
    lower = max(earliest, after[0]) if after else earliest
    if day_ranges:
        # The index range scan starts at the first allowed day, not at today.
        lower = max(lower, day_ranges[0][0])
    where = [
        "s.clinic_id = %s",
        # Literally the partial index's predicate, so PostgreSQL walks slot_bookable_keyset.
        "s.status IN ('free', 'held')",
        # The plain lower bound is where the index range scan starts.
        "s.start_at >= %s",
        "d.active = %s",
    ]
    params: list = [clinic_id, adapt(lower), True]
    bookable = "s.status = 'free' OR s.held_until IS NULL OR s.held_until <= %s"
    params.append(adapt(now))
    if held_by_me is not None:
        bookable += " OR s.id = %s"
        params.append(held_by_me)
    where.append(f"({bookable})")
    if after is not None:
        # Ties on start_at are broken by id: the key is (start_at, id).
        where.append("(s.start_at > %s OR (s.start_at = %s AND s.id > %s))")
        params += [adapt(after[0]), adapt(after[0]), after[1]]
    if upper is not None:
        where.append("s.start_at < %s")
        params.append(adapt(upper))
    if day_ranges is not None:
        if not day_ranges:
            return []
        # Ranges are few (one per day of the window) and ascending: the walk stays on the index
        # and each walked row costs a handful of comparisons.
        where.append(
            "(" + " OR ".join("(s.start_at >= %s AND s.start_at < %s)" for _ in day_ranges) + ")"
        )
        for begin, finish in day_ranges:
            params += [adapt(begin), adapt(finish)]
    # No slot that overlaps busy time: a blocked period (the whole clinic's or the slot's
    # doctor's) or one of the patient's active appointments.
    where.append(
        "NOT EXISTS (SELECT 1 FROM busy WHERE busy.starts_at < s.end_at "
        "AND busy.ends_at > s.start_at "
        "AND (busy.doctor_id IS NULL OR busy.doctor_id = s.doctor_id))"
    )
    if doctor_id is not None:
        where.append("s.doctor_id = %s")
        params.append(doctor_id)
    if specialty_id is not None:
        # A subquery of doctor ids keeps the walk on the keyset index (no join reordering).
        where.append(
            f"s.doctor_id IN (SELECT doctor_id FROM {_DOCTOR_SPECIALTY} WHERE specialty_id = %s)"  # noqa: S608
        )
        params.append(specialty_id)
    params.append(limit)
    # The busy time still to come is small (holidays, absences, a patient's few appointments):
    # read once into a materialised CTE, each walked row checks it without another index probe.
    busy_sql = [
        f"SELECT b.doctor_id AS doctor_id, b.starts_at AS starts_at, b.ends_at AS ends_at "  # noqa: S608
        f"FROM {BlockedPeriod._meta.db_table} b WHERE b.clinic_id = %s AND b.ends_at > %s"
    ]
    busy_params: list = [clinic_id, adapt(lower)]
    if busy_upper is not None:
        busy_sql[0] += " AND b.starts_at < %s"
        busy_params.append(adapt(busy_upper))
    if doctor_id is not None:
        busy_sql[0] += " AND (b.doctor_id IS NULL OR b.doctor_id = %s)"
        busy_params.append(doctor_id)
    if patient_id is not None:
        statuses = ", ".join(f"'{status}'" for status in UPCOMING_STATUSES)
        busy_sql.append(
            f"SELECT NULL, a.start_at, a.end_at FROM {Appointment._meta.db_table} a "  # noqa: S608
            f"WHERE a.patient_id = %s AND a.status IN ({statuses}) AND a.end_at > %s"
        )
        busy_params += [patient_id, adapt(lower)]
        if busy_upper is not None:
            busy_sql[-1] += " AND a.start_at < %s"
            busy_params.append(adapt(busy_upper))
    # Only table and column names from the models and fixed fragments are interpolated; every
    # value is a parameter.
    sql = (
        f"WITH busy AS MATERIALIZED ({' UNION ALL '.join(busy_sql)}) "  # noqa: S608
        f"SELECT {_SELECT} FROM {_FROM} WHERE {' AND '.join(where)} "
        "ORDER BY s.start_at, s.id LIMIT %s"
    )
    params = busy_params + params
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    split = len(_SLOT_FIELDS)
    slot_names = [f.attname for f in _SLOT_FIELDS]
    doctor_names = [f.attname for f in _DOCTOR_FIELDS]
    slot_conv = _converters(Slot, _SLOT_FIELDS)
    doctor_conv = _converters(Doctor, _DOCTOR_FIELDS)
    slots = []
    for row in rows:
        slot_values, doctor_values = list(row[:split]), list(row[split:])
        for values, conv in ((slot_values, slot_conv), (doctor_values, doctor_conv)):
            for index, functions, col in conv:
                for function in functions:
                    values[index] = function(values[index], col, connection)
        slot = Slot.from_db(connection.alias, slot_names, slot_values)
        Slot.doctor.field.set_cached_value(
            slot, Doctor.from_db(connection.alias, doctor_names, doctor_values)
        )
        slots.append(slot)
    return slots


def available_slots(
    *,
    clinic: Clinic,
    specialty: Specialty | None = None,
    doctor: Doctor | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    min_notice: dt.timedelta | None = None,
    cursor: str | None = None,
    page_size: int = 10,
    now: dt.datetime | None = None,
    include_held_by: str | None = None,
    window: SlotWindow | None = None,
    patient: Patient | None = None,
) -> SlotPage:
    """One keyset page of bookable slots ordered by (start_at, id).

    Bookable: free, or held with the hold expired, or held by `include_held_by` (so a patient
    still sees the slot they are confirming), and never inside a blocked period (a holiday or
    the doctor's absence), whatever the slot's own status says. With `patient`, slots that
    overlap one of their booked or confirmed appointments are left out too. `window` narrows
    to instants, weekdays and times of day. The query walks the partial index
    `slot_bookable_keyset` (clinic, start_at, id) from the cursor on: page 100 costs what page 1
    costs. Dates are local to the clinic; `date_to` is inclusive.
    """
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise InvalidInput("page_size must be an integer")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    if specialty is not None and specialty.clinic_id != clinic.pk:
        raise InvalidInput("the specialty belongs to another clinic")
    if doctor is not None and doctor.clinic_id != clinic.pk:
        raise InvalidInput("the doctor belongs to another clinic")
    if patient is not None and patient.clinic_id != clinic.pk:
        raise InvalidInput("the patient belongs to another clinic")
    now = now or timezone.now()
    if min_notice is None:
        min_notice = dt.timedelta(minutes=clinic.min_notice_minutes)
    tz = clinic.tz

    earliest = now + min_notice
    if date_from is not None:
        earliest = max(earliest, _local_midnight(date_from, tz))

    mine = None
    if include_held_by:
        mine = (
            SlotHold.objects.filter(
                holder=include_held_by, released_at=None, expires_at__gt=now, slot__clinic=clinic
            )
            .values_list("slot_id", flat=True)
            .first()
        )
    after = decode_cursor(cursor) if cursor else None
    upper = _local_midnight(date_to + dt.timedelta(days=1), tz) if date_to is not None else None
    window = window or SlotWindow()
    if window.start is not None:
        earliest = max(earliest, window.start)
    if window.end is not None:
        upper = min(upper, window.end) if upper is not None else window.end
    if doctor is not None and specialty is not None:
        if not doctor.specialties.filter(pk=specialty.pk).exists():
            return SlotPage(slots=[], next_cursor=None, has_more=False)
        specialty = None  # the doctor filter already implies it
    lower = max(earliest, after[0]) if after else earliest
    if upper is not None and lower >= upper:
        return SlotPage(slots=[], next_cursor=None, has_more=False)
    day_ranges = window.day_ranges(lower, upper, tz) if window.by_day else None
    page = _keyset_page(
        clinic_id=clinic.pk,
        earliest=earliest,
        now=now,
        held_by_me=mine,
        after=after,
        upper=upper,
        doctor_id=doctor.pk if doctor is not None else None,
        specialty_id=specialty.pk if specialty is not None else None,
        limit=page_size + 1,
        day_ranges=day_ranges,
        busy_upper=day_ranges[-1][1] if day_ranges else upper,
        patient_id=patient.pk if patient is not None else None,
    )
    has_more = len(page) > page_size
    page = page[:page_size]
    return SlotPage(
        slots=page,
        next_cursor=encode_cursor(page[-1]) if has_more else None,
        has_more=has_more,
    )


def patient_upcoming_appointments(
    *, clinic: Clinic, patient: Patient, now: dt.datetime | None = None
) -> list[Appointment]:
    """The patient's booked or confirmed appointments that have not started, soonest first."""
    now = now or timezone.now()
    return list(
        Appointment.objects.filter(
            clinic=clinic, patient=patient, status__in=UPCOMING_STATUSES, start_at__gt=now
        )
        .select_related("doctor", "specialty")
        .order_by("start_at", "pk")
    )


# The bot's identity reads run in nearly every turn: each is a statement written once per
# process and loaded by sophia_web.model_rows as the ORM would load it (through the ORM these
# three reads and the FAQ's were a fifth of a turn's Python; bench/README.md, sixth session).


@functools.cache
def _first_patient_sql(column: str) -> str:
    """This clinic's first patient (the model's order: by name) with `column` = a value."""
    quote = connection.ops.quote_name
    c = inserts.columns(Patient)
    return (
        f"SELECT {model_rows.select_list(Patient, 'p', connection)} "  # noqa: S608
        f"FROM {quote(Patient._meta.db_table)} p WHERE p.{c['clinic_id']} = %s "
        f"AND p.{c[column]} = %s ORDER BY p.{c['full_name']} ASC LIMIT 1"
    )


def patient_by_document(*, clinic: Clinic, document: str) -> Patient | None:
    """This clinic's patient with that document; InvalidInput("invalid_document") if malformed."""
    found = model_rows.fetch(
        Patient, _first_patient_sql("document"), [clinic.pk, clean_document(document)]
    )
    return found[0] if found else None


def patient_by_whatsapp(*, clinic: Clinic, wa_id: str) -> Patient | None:
    """This clinic's patient whose number on file is `wa_id` (the first by name, if several)."""
    found = model_rows.fetch(Patient, _first_patient_sql("whatsapp_id"), [clinic.pk, wa_id])
    return found[0] if found else None


@functools.cache
def _faq_sql() -> str:
    quote = connection.ops.quote_name
    c = inserts.columns(FaqEntry)
    return (
        f"SELECT {model_rows.select_list(FaqEntry, 'f', connection)} "  # noqa: S608
        f"FROM {quote(FaqEntry._meta.db_table)} f "
        f"WHERE f.{c['clinic_id']} = %s AND f.{c['active']} = %s "
        f"ORDER BY f.{c['position']} ASC, f.{c['id']} ASC"
    )


def active_faq_entries(*, clinic: Clinic) -> list[FaqEntry]:
    """The clinic's FAQ entries the bot answers from, in the admins' order."""
    return model_rows.fetch(FaqEntry, _faq_sql(), [clinic.pk, True])


def patients_on_number(*, clinic: Clinic, wa_id: str) -> list[Patient]:
    """The patients this WhatsApp number speaks for: its number on file or a verified one
    (a parent's phone holds the children too). Oldest registration first."""
    if not wa_id:
        return []
    verified = PatientPhone.objects.filter(clinic=clinic, wa_id=wa_id).values("patient_id")
    return list(
        Patient.objects.filter(clinic=clinic)
        .filter(Q(whatsapp_id=wa_id) | Q(pk__in=verified))
        .order_by("created_at", "pk")
    )


def patient_verified_on(*, clinic: Clinic, patient_id: int, wa_id: str) -> bool:
    """Does `wa_id` still speak for this patient (staff may have removed the number)?"""
    if not wa_id or not patient_id:
        return False
    with connection.cursor() as cursor:
        cursor.execute(_verified_on_sql(), [int(patient_id), clinic.pk, wa_id, wa_id])
        return cursor.fetchone() is not None


@functools.cache
def _verified_on_sql() -> str:
    """The number on file, or one verified for the patient (PatientPhone)."""
    quote = connection.ops.quote_name
    p, ph = inserts.columns(Patient), inserts.columns(PatientPhone)
    return (
        f"SELECT 1 FROM {quote(Patient._meta.db_table)} p "  # noqa: S608
        f"WHERE p.{p['id']} = %s AND p.{p['clinic_id']} = %s AND (p.{p['whatsapp_id']} = %s "
        f"OR EXISTS (SELECT 1 FROM {quote(PatientPhone._meta.db_table)} ph "
        f"WHERE ph.{ph['patient_id']} = p.{p['id']} AND ph.{ph['wa_id']} = %s))"
    )


def upcoming_appointments_on_number(
    *, clinic: Clinic, wa_id: str, now: dt.datetime | None = None
) -> list[Appointment]:
    """ "Mis citas" from a number: the upcoming appointments of every patient verified on it,
    and no one else's. Soonest first."""
    patients = patients_on_number(clinic=clinic, wa_id=wa_id)
    if not patients:
        return []
    now = now or timezone.now()
    return list(
        Appointment.objects.filter(
            clinic=clinic, patient__in=patients, status__in=UPCOMING_STATUSES, start_at__gt=now
        )
        .select_related("doctor", "specialty", "patient")
        .order_by("start_at", "pk")
    )


def staff_clinics(user) -> QuerySet[Clinic]:
    """Clinics a user is a member of (a superuser: all). Anonymous or inactive: none."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return Clinic.objects.none()
    if user.is_superuser:
        return Clinic.objects.all()
    return Clinic.objects.filter(
        pk__in=StaffMembership.objects.filter(user=user).values("clinic_id")
    )


# --- the staff calendar and lists -------------------------------------------------------------


@dataclass(slots=True)
class CalendarCell:
    """One slot as the calendar shows it (times local to the clinic)."""

    slot_id: int
    doctor_id: int
    start: dt.datetime
    end: dt.datetime
    state: str  # free / held / booked / blocked (a lapsed hold reads free)
    appointment_id: int | None = None
    appointment_status: str | None = None
    patient_name: str = ""
    patient_id: int | None = None


@dataclass
class CalendarColumn:
    doctor: Doctor
    day: dt.date
    cells: list[CalendarCell]
    periods: list[BlockedPeriod]  # absences, holidays and hand blocks meeting the day


def _cells(
    clinic: Clinic, doctor_ids: list[int], start: dt.datetime, end: dt.datetime, now
) -> dict[int, list[CalendarCell]]:
    """Slots of these doctors starting in [start, end), with their active appointment.

    Two indexed reads: slots by (doctor, start_at) — the unique index — and active appointments
    by slot (the partial unique index). Cost follows the cells shown, not the table size.
    """
    tz = clinic.tz
    rows = list(
        Slot.objects.filter(
            clinic=clinic, doctor_id__in=doctor_ids, start_at__gte=start, start_at__lt=end
        )
        .order_by("start_at", "pk")
        .values_list("pk", "doctor_id", "start_at", "end_at", "status", "held_until")
    )
    booked = [pk for pk, _d, _s, _e, status, _h in rows if status == SlotStatus.BOOKED]
    appointments = {
        slot_id: (pk, status, name, patient_id)
        for slot_id, pk, status, name, patient_id in Appointment.objects.filter(
            slot_id__in=booked, status__in=OCCUPYING_STATUSES
        ).values_list("slot_id", "pk", "status", "patient__full_name", "patient_id")
    }
    by_doctor: dict[int, list[CalendarCell]] = {d: [] for d in doctor_ids}
    for pk, doctor_id, start_at, end_at, status, held_until in rows:
        state = status
        if status == SlotStatus.HELD and held_until is not None and held_until <= now:
            state = SlotStatus.FREE
        cell = CalendarCell(
            slot_id=pk,
            doctor_id=doctor_id,
            start=start_at.astimezone(tz),
            end=end_at.astimezone(tz),
            state=state,
        )
        found = appointments.get(pk)
        if found:
            cell.appointment_id, cell.appointment_status, cell.patient_name, cell.patient_id = found
        by_doctor[doctor_id].append(cell)
    for doctor_id, cells in by_doctor.items():
        # A retired slot (blocked, kept for history) hidden under a live one is not shown.
        live = [c for c in cells if c.state != SlotStatus.BLOCKED]
        by_doctor[doctor_id] = [
            c
            for c in cells
            if c.state != SlotStatus.BLOCKED
            or not any(c.start < o.end and o.start < c.end for o in live)
        ]
    return by_doctor


def _periods(clinic: Clinic, doctor_ids: list[int], start, end) -> list[BlockedPeriod]:
    return list(
        BlockedPeriod.objects.filter(
            Q(doctor__isnull=True) | Q(doctor_id__in=doctor_ids),
            clinic=clinic,
            starts_at__lt=end,
            ends_at__gt=start,
        ).order_by("starts_at", "pk")
    )


def clinic_doctors(
    *, clinic: Clinic, specialty: Specialty | None = None, active_only: bool = True
) -> list[Doctor]:
    rows = Doctor.objects.filter(clinic=clinic)
    if active_only:
        rows = rows.filter(active=True)
    if specialty is not None:
        rows = rows.filter(specialties=specialty)
    return list(rows.order_by("full_name", "pk"))


def calendar_day(
    *,
    clinic: Clinic,
    day: dt.date,
    specialty: Specialty | None = None,
    now: dt.datetime | None = None,
) -> list[CalendarColumn]:
    """One column per active doctor (of the specialty), side by side, for one local day."""
    if specialty is not None and specialty.clinic_id != clinic.pk:
        raise InvalidInput("the specialty belongs to another clinic")
    now = now or timezone.now()
    doctors = clinic_doctors(clinic=clinic, specialty=specialty)
    start = _local_midnight(day, clinic.tz)
    end = _local_midnight(day + dt.timedelta(days=1), clinic.tz)
    ids = [d.pk for d in doctors]
    cells = _cells(clinic, ids, start, end, now)
    periods = _periods(clinic, ids, start, end)
    return [
        CalendarColumn(
            doctor=d,
            day=day,
            cells=cells[d.pk],
            periods=[p for p in periods if p.doctor_id in (None, d.pk)],
        )
        for d in doctors
    ]


def calendar_week(
    *, clinic: Clinic, doctor: Doctor, week_start: dt.date, now: dt.datetime | None = None
) -> list[CalendarColumn]:
    """One column per local day (Monday first) of one doctor's week."""
    if doctor.clinic_id != clinic.pk:
        raise InvalidInput("the doctor belongs to another clinic")
    now = now or timezone.now()
    monday = week_start - dt.timedelta(days=week_start.weekday())
    start = _local_midnight(monday, clinic.tz)
    end = _local_midnight(monday + dt.timedelta(days=7), clinic.tz)
    cells = _cells(clinic, [doctor.pk], start, end, now)[doctor.pk]
    periods = _periods(clinic, [doctor.pk], start, end)
    columns = []
    for offset in range(7):
        day = monday + dt.timedelta(days=offset)
        day_start = _local_midnight(day, clinic.tz)
        day_end = _local_midnight(day + dt.timedelta(days=1), clinic.tz)
        columns.append(
            CalendarColumn(
                doctor=doctor,
                day=day,
                cells=[c for c in cells if c.start.date() == day],
                periods=[p for p in periods if p.starts_at < day_end and p.ends_at > day_start],
            )
        )
    return columns


def calendar_cell(*, clinic: Clinic, slot_id: int, now: dt.datetime | None = None):
    """One cell (for a live update or a panel); None when the slot is not this clinic's."""
    slot = Slot.objects.filter(pk=slot_id, clinic=clinic).values_list("doctor_id", "start_at")
    found = slot.first()
    if found is None:
        return None
    doctor_id, start_at = found
    until = start_at + dt.timedelta(microseconds=1)
    cells = _cells(clinic, [doctor_id], start_at, until, now or timezone.now())[doctor_id]
    return cells[0] if cells else None


@dataclass
class AppointmentPage:
    rows: list[Appointment]
    next_cursor: str | None


def _encode_key(start_at: dt.datetime, pk: int) -> str:
    raw = json.dumps({"s": start_at.isoformat(), "i": pk}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def appointments_filtered(
    *,
    clinic: Clinic,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    doctor: Doctor | None = None,
    specialty: Specialty | None = None,
    status: str | None = None,
    source: str | None = None,
) -> QuerySet[Appointment]:
    """This clinic's appointments matching the filters (local dates, `date_to` inclusive),
    ordered by (start_at, id)."""
    rows = Appointment.objects.filter(clinic=clinic)
    tz = clinic.tz
    if date_from is not None:
        rows = rows.filter(start_at__gte=_local_midnight(date_from, tz))
    if date_to is not None:
        rows = rows.filter(start_at__lt=_local_midnight(date_to + dt.timedelta(days=1), tz))
    if doctor is not None:
        rows = rows.filter(doctor=doctor)
    if specialty is not None:
        rows = rows.filter(specialty=specialty)
    if status:
        rows = rows.filter(status=status)
    if source:
        rows = rows.filter(source=source)
    return rows.select_related("patient", "doctor", "specialty").order_by("start_at", "pk")


def appointments_page(
    *, rows: QuerySet[Appointment], cursor: str | None = None, page_size: int = 50
) -> AppointmentPage:
    """A keyset page of `rows` (from appointments_filtered) after `cursor`."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    if cursor:
        start_at, pk = decode_cursor(cursor)
        rows = rows.filter(Q(start_at__gt=start_at) | Q(start_at=start_at, pk__gt=pk))
    page = list(rows[: page_size + 1])
    more = len(page) > page_size
    page = page[:page_size]
    return AppointmentPage(
        rows=page, next_cursor=_encode_key(page[-1].start_at, page[-1].pk) if more else None
    )


def appointments_today(*, clinic: Clinic, now: dt.datetime | None = None) -> list[Appointment]:
    """Today's (local) appointments that are not cancelled, for the front desk."""
    today = timezone.localdate(now or timezone.now(), clinic.tz)
    return list(
        appointments_filtered(clinic=clinic, date_from=today, date_to=today).exclude(
            status=AppointmentStatus.CANCELLED
        )
    )


def appointment_trail(*, clinic: Clinic, appointment: Appointment) -> list[AuditEvent]:
    """The audit events of an appointment and of those it was rescheduled from, newest first."""
    ids = []
    current: Appointment | None = appointment
    while current is not None and len(ids) < 20:
        ids.append(str(current.pk))
        current = current.rescheduled_from
    return list(
        AuditEvent.objects.filter(
            clinic=clinic, object_type="appointment", object_id__in=ids
        ).order_by("-at", "-pk")[:100]
    )


def patients_search(*, clinic: Clinic, query: str, limit: int = 20) -> list[Patient]:
    """By document (its start, digits only) or by any part of the name."""
    query = " ".join((query or "").split())[:100]
    if not query:
        return []
    rows = Patient.objects.filter(clinic=clinic)
    if query.isdigit():
        rows = rows.filter(document__startswith=query)
    else:
        for word in query.split():
            rows = rows.filter(full_name__icontains=word)
    return list(rows.order_by("full_name", "pk")[:limit])


def specialties(*, clinic: Clinic) -> list[Specialty]:
    return list(Specialty.objects.filter(clinic=clinic).order_by("name"))


@dataclass
class PeriodImpact:
    stranded: list[Appointment]  # upcoming bookings the period would strand
    free_slots: int  # bookable slots it would block


def period_impact(
    *,
    clinic: Clinic,
    doctor: Doctor | None,
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    now: dt.datetime | None = None,
) -> PeriodImpact:
    """What an absence (a doctor) or holiday (None: every doctor) over the range would do."""
    if doctor is not None and doctor.clinic_id != clinic.pk:
        raise InvalidInput("the doctor belongs to another clinic")
    return PeriodImpact(
        stranded=scheduling.stranded_in_period(
            clinic=clinic,
            doctor=doctor,
            starts_at=starts_at,
            ends_at=ends_at,
            now=now or timezone.now(),
        ),
        free_slots=scheduling.free_slots_in_period(
            clinic=clinic, doctor=doctor, starts_at=starts_at, ends_at=ends_at
        ),
    )


def schedule_preview(
    *,
    clinic: Clinic,
    doctor: Doctor,
    schedules: list,
    extras: list | None = None,
    now: dt.datetime | None = None,
) -> scheduling.AgendaDiff:
    """What saving these (unsaved) weekly blocks would do over the booking horizon."""
    if doctor.clinic_id != clinic.pk:
        raise InvalidInput("the doctor belongs to another clinic")
    now = now or timezone.now()
    today = timezone.localdate(now, clinic.tz)
    return scheduling.agenda_diff(
        clinic=clinic,
        doctor=doctor,
        schedules=schedules,
        extras=list(doctor.extra_hours.all()) if extras is None else extras,
        date_from=today,
        date_to=today + dt.timedelta(days=clinic.booking_horizon_days),
        now=now,
    )
