"""Weekly schedules and extra hours → slots, in the clinic's time zone. Written through services.

Times are built from local wall-clock times with zoneinfo, so an 08:00–12:00 schedule stays 08:00
local on both sides of a DST change (the UTC instant moves instead). Start times that do not exist
(the hour skipped in spring) are left out; repeated ones (autumn) take their first occurrence.

`plan_intervals` is pure (it also previews unsaved schedules); `agenda_diff` compares a plan with
the slots already in the database, which is what both the admin's preview and the save use.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import holidays
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from clinics.models import (
    OCCUPYING_STATUSES,
    Appointment,
    BlockedPeriod,
    Clinic,
    Doctor,
    ExtraHours,
    Schedule,
    Slot,
    SlotStatus,
)

UTC = dt.UTC
Interval = tuple[dt.datetime, dt.datetime]
MIN_SLOT_MINUTES = 5
MAX_SLOT_MINUTES = 480
MAX_EVERY_N_WEEKS = 8


def _local_instant(day: dt.date, time: dt.time, tz) -> dt.datetime | None:
    """The UTC instant of a local wall-clock time, or None when DST skips it."""
    local = dt.datetime.combine(day, time, tzinfo=tz)
    as_utc = local.astimezone(UTC)
    if as_utc.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
        return None
    return as_utc


def local_day_bounds(day_from: dt.date, day_to: dt.date, tz) -> Interval:
    """UTC instants of local midnight at day_from and after day_to (DST-correct)."""
    start = dt.datetime.combine(day_from, dt.time.min, tzinfo=tz).astimezone(UTC)
    end = dt.datetime.combine(day_to + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
    return start, end.astimezone(UTC)


def block_times(
    day: dt.date, start_time: dt.time, end_time: dt.time, slot_minutes: int, tz
) -> list[Interval]:
    step = dt.timedelta(minutes=slot_minutes)
    start = dt.datetime.combine(day, start_time)
    end = dt.datetime.combine(day, end_time)
    times = []
    while start + step <= end:
        begins = _local_instant(day, start.time(), tz)
        if begins is not None:
            # A slot lasts `step` of real time even when the clock jumps inside it.
            times.append((begins, begins + step))
        start += step
    return times


def _overlaps(a: Interval, b: Interval) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def plan_intervals(
    *,
    schedules: Iterable[Schedule],
    extras: Iterable[ExtraHours],
    date_from: dt.date,
    date_to: dt.date,
    tz,
) -> dict[int, list[Interval]]:
    """doctor id → the slot intervals the schedules and extra hours give over local dates
    [date_from, date_to], sorted, without overlaps (the earlier block wins)."""
    planned: dict[int, list[Interval]] = defaultdict(list)
    for schedule in schedules:
        day = max(date_from, schedule.valid_from)
        last = min(date_to, schedule.valid_to) if schedule.valid_to else date_to
        while day <= last:
            if schedule.applies_on(day):
                planned[schedule.doctor_id].extend(
                    block_times(
                        day, schedule.start_time, schedule.end_time, schedule.slot_minutes, tz
                    )
                )
            day += dt.timedelta(days=1)
    for extra in extras:
        if date_from <= extra.date <= date_to:
            planned[extra.doctor_id].extend(
                block_times(extra.date, extra.start_time, extra.end_time, extra.slot_minutes, tz)
            )
    result = {}
    for doctor_id, intervals in planned.items():
        intervals.sort()
        kept: list[Interval] = []
        for interval in intervals:
            if not kept or interval[0] >= kept[-1][1]:
                kept.append(interval)
        result[doctor_id] = kept
    return result


# --- validation shared by forms (Spanish messages) and services (the last word) ---------------


@dataclass(frozen=True)
class BlockProblem:
    index: int  # which block (position in the list)
    field: str | None
    message: str


def _date_ranges_meet(a: Schedule, b: Schedule) -> bool:
    a_end = a.valid_to or dt.date.max
    b_end = b.valid_to or dt.date.max
    return a.valid_from <= b_end and b.valid_from <= a_end


def check_schedule_blocks(blocks: list[Schedule], today: dt.date) -> list[BlockProblem]:
    """Every problem of a doctor's weekly blocks, as (block index, field, message)."""
    problems = []
    for index, block in enumerate(blocks):
        if not block.weekdays or not all(
            isinstance(d, int) and 0 <= d <= 6 for d in block.weekdays
        ):
            problems.append(BlockProblem(index, "weekdays", _("Choose at least one weekday.")))
        if block.end_time <= block.start_time:
            problems.append(
                BlockProblem(index, "end_time", _("The end time must be after the start time."))
            )
        if not MIN_SLOT_MINUTES <= block.slot_minutes <= MAX_SLOT_MINUTES:
            problems.append(
                BlockProblem(
                    index, "slot_minutes", _("The slot length must be between 5 and 480 minutes.")
                )
            )
        elif block.end_time > block.start_time:
            length = dt.datetime.combine(today, block.end_time) - dt.datetime.combine(
                today, block.start_time
            )
            if dt.timedelta(minutes=block.slot_minutes) > length:
                problems.append(
                    BlockProblem(
                        index, "slot_minutes", _("The slot length is longer than the block.")
                    )
                )
        if not 1 <= block.every_n_weeks <= MAX_EVERY_N_WEEKS:
            problems.append(BlockProblem(index, "every_n_weeks", _("Repeat every 1 to 8 weeks.")))
        if block.valid_to is not None:
            if block.valid_to < block.valid_from:
                problems.append(
                    BlockProblem(index, "valid_to", _("The end date is before the start date."))
                )
            elif block.valid_to < today:
                problems.append(BlockProblem(index, "valid_to", _("The end date is in the past.")))
    for i, a in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            b = blocks[j]
            if (
                set(a.weekdays or ()) & set(b.weekdays or ())
                and a.start_time < b.end_time
                and b.start_time < a.end_time
                and _date_ranges_meet(a, b)
            ):
                problems.append(
                    BlockProblem(j, None, _("This block overlaps another block on the same day."))
                )
    return problems


# --- reading what exists ----------------------------------------------------------------------


def blocked_periods(
    clinic: Clinic, doctor_ids: Iterable[int], start: dt.datetime, end: dt.datetime
) -> list[tuple[int | None, dt.datetime, dt.datetime]]:
    """(doctor id or None for clinic-wide, starts, ends) of periods meeting [start, end)."""
    return list(
        BlockedPeriod.objects.filter(
            Q(doctor__isnull=True) | Q(doctor_id__in=list(doctor_ids)),
            clinic=clinic,
            starts_at__lt=end,
            ends_at__gt=start,
        ).values_list("doctor_id", "starts_at", "ends_at")
    )


def _blocked(interval: Interval, doctor_id: int, blocks) -> bool:
    return any(
        (b_doctor is None or b_doctor == doctor_id) and _overlaps(interval, (b_start, b_end))
        for b_doctor, b_start, b_end in blocks
    )


def generate_slots(
    *, clinic: Clinic, date_from: dt.date, date_to: dt.date, doctor: Doctor | None = None
) -> tuple[int, int]:
    """Create missing slots for local dates [date_from, date_to]; return (created, blocked).

    A slot is skipped when it overlaps a blocked period (clinic-wide or the doctor's) or an
    existing slot of the same doctor (a changed slot length must not produce overlapping offers).
    Free slots inside blocked periods are marked blocked.
    """
    tz = clinic.tz
    range_start, range_end = local_day_bounds(date_from, date_to, tz)

    doctors = Doctor.objects.filter(clinic=clinic, active=True)
    if doctor is not None:
        doctors = doctors.filter(pk=doctor.pk)
    doctor_ids = list(doctors.values_list("pk", flat=True))

    blocks = blocked_periods(clinic, doctor_ids, range_start, range_end)
    blocked = block_free_slots(clinic, blocks, doctor)
    if not doctor_ids:
        return 0, blocked

    # Existing and new slots per (doctor, UTC day), to refuse overlaps without an O(n²) scan.
    # A retired slot (blocked outside every blocked period: taken off the agenda but kept for
    # its cancelled appointments' history) does not count, and is reused when a planned slot
    # starts at the same time.
    taken: dict[tuple[int, dt.date], list[Interval]] = defaultdict(list)
    retired: dict[tuple[int, dt.datetime], int] = {}
    for slot_id, doctor_id, start_at, end_at, status in Slot.objects.filter(
        doctor_id__in=doctor_ids, start_at__lt=range_end, end_at__gt=range_start
    ).values_list("pk", "doctor_id", "start_at", "end_at", "status"):
        if status == SlotStatus.BLOCKED and not _blocked((start_at, end_at), doctor_id, blocks):
            retired[doctor_id, start_at] = slot_id
            continue
        taken[doctor_id, start_at.astimezone(UTC).date()].append((start_at, end_at))

    plan = plan_intervals(
        schedules=Schedule.objects.filter(doctor_id__in=doctor_ids),
        extras=ExtraHours.objects.filter(
            doctor_id__in=doctor_ids, date__gte=date_from, date__lte=date_to
        ),
        date_from=date_from,
        date_to=date_to,
        tz=tz,
    )
    new_slots = []
    reused = 0
    for doctor_id, intervals in plan.items():
        for interval in intervals:
            if _blocked(interval, doctor_id, blocks):
                continue
            utc_day = interval[0].date()
            if any(
                _overlaps(interval, t)
                for offset in (-1, 0, 1)
                for t in taken.get((doctor_id, utc_day + dt.timedelta(days=offset)), ())
            ):
                continue
            taken[doctor_id, utc_day].append(interval)
            reuse = retired.get((doctor_id, interval[0]))
            if reuse is not None:
                Slot.objects.filter(pk=reuse, status=SlotStatus.BLOCKED).update(
                    end_at=interval[1], status=SlotStatus.FREE, updated_at=timezone.now()
                )
                reused += 1
                continue
            new_slots.append(
                Slot(clinic=clinic, doctor_id=doctor_id, start_at=interval[0], end_at=interval[1])
            )
    # ignore_conflicts: a concurrent run may have created the same (doctor, start) already.
    Slot.objects.bulk_create(new_slots, batch_size=1000, ignore_conflicts=True)
    return len(new_slots) + reused, blocked


def block_free_slots(clinic: Clinic, blocks: list, doctor: Doctor | None = None) -> int:
    """Mark free (or expired-hold) slots inside blocked periods as blocked; return how many."""
    count = 0
    now = timezone.now()
    for b_doctor, b_start, b_end in blocks:
        rows = Slot.objects.filter(
            clinic=clinic,
            status__in=[SlotStatus.FREE, SlotStatus.HELD],
            start_at__lt=b_end,
            end_at__gt=b_start,
        )
        # A live hold stays until it ends or is booked; the next run blocks it if still free.
        rows = rows.filter(
            Q(status=SlotStatus.FREE) | Q(held_until__isnull=True) | Q(held_until__lte=now)
        )
        if b_doctor is not None:
            rows = rows.filter(doctor_id=b_doctor)
        elif doctor is not None:
            rows = rows.filter(doctor=doctor)
        count += rows.update(status=SlotStatus.BLOCKED, held_until=None, updated_at=now)
    return count


# --- previews: what a change produces and whom it strands -------------------------------------


@dataclass
class AgendaDiff:
    """What replacing a doctor's schedules would do from now to the end of the horizon."""

    date_from: dt.date
    date_to: dt.date
    planned: list[Interval] = field(default_factory=list)  # bookable times after the change
    to_create: list[Interval] = field(default_factory=list)
    to_remove: list[int] = field(default_factory=list)  # ids of unbooked slots outside the plan
    stranded: list[Appointment] = field(default_factory=list)  # bookings outside the plan


def agenda_diff(
    *,
    clinic: Clinic,
    doctor: Doctor,
    schedules: list[Schedule],
    extras: list[ExtraHours],
    date_from: dt.date,
    date_to: dt.date,
    now: dt.datetime,
) -> AgendaDiff:
    tz = clinic.tz
    range_start, range_end = local_day_bounds(date_from, date_to, tz)
    range_start = max(range_start, now)
    blocks = blocked_periods(clinic, [doctor.pk], range_start, range_end)
    plan = plan_intervals(
        schedules=schedules, extras=extras, date_from=date_from, date_to=date_to, tz=tz
    ).get(doctor.pk, [])
    plan = [i for i in plan if i[0] >= range_start and i[0] < range_end]
    diff = AgendaDiff(date_from=date_from, date_to=date_to)
    diff.planned = [i for i in plan if not _blocked(i, doctor.pk, blocks)]
    wanted = set(plan)
    existing = list(
        Slot.objects.filter(
            doctor=doctor, start_at__gte=range_start, start_at__lt=range_end
        ).values_list("pk", "start_at", "end_at", "status")
    )
    booked_ids = {pk for pk, _s, _e, status in existing if status == SlotStatus.BOOKED}
    appointments = {
        a.slot_id: a
        for a in Appointment.objects.filter(
            slot_id__in=booked_ids, status__in=OCCUPYING_STATUSES
        ).select_related("patient")
    }
    kept: list[Interval] = []
    for pk, start_at, end_at, _status in existing:
        if (start_at, end_at) in wanted:
            kept.append((start_at, end_at))
        elif pk in appointments:
            diff.stranded.append(appointments[pk])
            kept.append((start_at, end_at))
        else:
            diff.to_remove.append(pk)
    kept.sort()
    diff.to_create = [
        i for i in diff.planned if (i not in kept) and not any(_overlaps(i, k) for k in kept)
    ]
    diff.stranded.sort(key=lambda a: (a.start_at, a.pk))
    return diff


def stranded_in_period(
    *, clinic: Clinic, doctor: Doctor | None, starts_at: dt.datetime, ends_at: dt.datetime, now
) -> list[Appointment]:
    """Upcoming booked or confirmed appointments a blocked period over [starts_at, ends_at)
    would strand (all doctors when `doctor` is None)."""
    rows = Appointment.objects.filter(
        clinic=clinic,
        status__in=["booked", "confirmed"],
        start_at__lt=ends_at,
        end_at__gt=max(starts_at, now),
    )
    if doctor is not None:
        rows = rows.filter(doctor=doctor)
    return list(rows.select_related("patient", "doctor").order_by("start_at", "pk"))


def free_slots_in_period(
    *, clinic: Clinic, doctor: Doctor | None, starts_at: dt.datetime, ends_at: dt.datetime
) -> int:
    rows = Slot.objects.filter(
        clinic=clinic,
        status__in=[SlotStatus.FREE, SlotStatus.HELD],
        start_at__lt=ends_at,
        end_at__gt=starts_at,
    )
    if doctor is not None:
        rows = rows.filter(doctor=doctor)
    return rows.count()


# --- holidays -----------------------------------------------------------------------------------


def country_holidays(country: str, year: int) -> list[tuple[dt.date, str]]:
    """(date, Spanish name) of the public holidays of `country` in `year`, from `holidays`."""
    try:
        calendar = holidays.country_holidays(country, years=year, language="es")
    except NotImplementedError:
        return []
    return sorted(calendar.items())
