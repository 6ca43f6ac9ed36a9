"""Reads shared by several callers (bot engine, views, API, benchmark)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from clinics.models import (
    UPCOMING_STATUSES,
    Appointment,
    Clinic,
    Doctor,
    Patient,
    Slot,
    SlotHold,
    SlotStatus,
    Specialty,
    StaffMembership,
)
from clinics.services import InvalidInput, clean_document

MAX_PAGE_SIZE = 100


@dataclass
class SlotPage:
    slots: list[Slot]  # doctor is select_related
    next_cursor: str | None
    has_more: bool


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
) -> SlotPage:
    """One keyset page of bookable slots ordered by (start_at, id).

    Bookable: free, or held with the hold expired, or held by `include_held_by` (so a patient
    still sees the slot they are confirming). The query walks the partial index
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
    now = now or timezone.now()
    if min_notice is None:
        min_notice = dt.timedelta(minutes=settings.SOPHIA_MIN_NOTICE_MINUTES)
    tz = clinic.tz

    earliest = now + min_notice
    if date_from is not None:
        earliest = max(earliest, _local_midnight(date_from, tz))

    bookable = Q(status=SlotStatus.FREE) | Q(held_until__isnull=True) | Q(held_until__lte=now)
    if include_held_by:
        mine = (
            SlotHold.objects.filter(
                holder=include_held_by, released_at=None, expires_at__gt=now, slot__clinic=clinic
            )
            .values_list("slot_id", flat=True)
            .first()
        )
        if mine is not None:
            bookable |= Q(pk=mine)

    lower = earliest
    conditions = [bookable]
    if cursor:
        after_start, after_id = decode_cursor(cursor)
        # The plain start_at bound is where the index range scan starts; the OR breaks ties.
        lower = max(lower, after_start)
        conditions.append(Q(start_at__gt=after_start) | Q(start_at=after_start, pk__gt=after_id))
    filters = {
        "clinic": clinic,
        # Literally the partial index's predicate, so PostgreSQL can use it.
        "status__in": [SlotStatus.FREE, SlotStatus.HELD],
        "start_at__gte": lower,
        # Joined anyway for select_related; inactive doctors offer nothing.
        "doctor__active": True,
    }
    if date_to is not None:
        filters["start_at__lt"] = _local_midnight(date_to + dt.timedelta(days=1), tz)
    if doctor is not None:
        filters["doctor"] = doctor
        if specialty is not None and not doctor.specialties.filter(pk=specialty.pk).exists():
            return SlotPage(slots=[], next_cursor=None, has_more=False)
    elif specialty is not None:
        # A subquery of doctor ids keeps the walk on slot_bookable_keyset (no join reordering).
        filters["doctor_id__in"] = Doctor.specialties.through.objects.filter(
            specialty_id=specialty.pk
        ).values("doctor_id")
    rows = Slot.objects.filter(*conditions, **filters)
    page = list(rows.select_related("doctor").order_by("start_at", "pk")[: page_size + 1])
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


def patient_by_document(*, clinic: Clinic, document: str) -> Patient | None:
    """This clinic's patient with that document; InvalidInput("invalid_document") if malformed."""
    return Patient.objects.filter(clinic=clinic, document=clean_document(document)).first()


def staff_clinics(user) -> QuerySet[Clinic]:
    """Clinics a user is a member of (a superuser: all). Anonymous or inactive: none."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return Clinic.objects.none()
    if user.is_superuser:
        return Clinic.objects.all()
    return Clinic.objects.filter(
        pk__in=StaffMembership.objects.filter(user=user).values("clinic_id")
    )
