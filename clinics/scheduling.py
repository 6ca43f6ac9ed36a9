"""Weekly schedules → slots, in the clinic's time zone. Called only through services.slots_generate.

Times are built from local wall-clock times with zoneinfo, so an 08:00–12:00 schedule stays 08:00
local on both sides of a DST change (the UTC instant moves instead). Start times that do not exist
(the hour skipped in spring) are left out; repeated ones (autumn) take their first occurrence.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from django.db.models import Q
from django.utils import timezone

from clinics.models import BlockedPeriod, Clinic, Doctor, Schedule, Slot, SlotStatus

UTC = dt.UTC


def _local_instant(day: dt.date, time: dt.time, tz) -> dt.datetime | None:
    """The UTC instant of a local wall-clock time, or None when DST skips it."""
    local = dt.datetime.combine(day, time, tzinfo=tz)
    as_utc = local.astimezone(UTC)
    if as_utc.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
        return None
    return as_utc


def _schedule_times(schedule: Schedule, day: dt.date, tz) -> list[tuple[dt.datetime, dt.datetime]]:
    step = dt.timedelta(minutes=schedule.slot_minutes)
    start = dt.datetime.combine(day, schedule.start_time)
    end = dt.datetime.combine(day, schedule.end_time)
    times = []
    while start + step <= end:
        begins = _local_instant(day, start.time(), tz)
        if begins is not None:
            # A slot lasts `step` of real time even when the clock jumps inside it.
            times.append((begins, begins + step))
        start += step
    return times


def _overlaps(a: tuple[dt.datetime, dt.datetime], b: tuple[dt.datetime, dt.datetime]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def generate_slots(
    *, clinic: Clinic, date_from: dt.date, date_to: dt.date, doctor: Doctor | None = None
) -> tuple[int, int]:
    """Create missing slots for local dates [date_from, date_to]; return (created, blocked).

    A slot is skipped when it overlaps a blocked period (clinic-wide or the doctor's) or an
    existing slot of the same doctor (a changed slot length must not produce overlapping offers).
    Free slots inside blocked periods are marked blocked.
    """
    tz = clinic.tz
    range_start = dt.datetime.combine(date_from, dt.time.min, tzinfo=tz).astimezone(UTC)
    range_end = dt.datetime.combine(
        date_to + dt.timedelta(days=1), dt.time.min, tzinfo=tz
    ).astimezone(UTC)

    doctors = Doctor.objects.filter(clinic=clinic, active=True)
    if doctor is not None:
        doctors = doctors.filter(pk=doctor.pk)
    doctor_ids = list(doctors.values_list("pk", flat=True))

    blocks = list(
        BlockedPeriod.objects.filter(
            Q(doctor__isnull=True) | Q(doctor_id__in=doctor_ids),
            clinic=clinic,
            starts_at__lt=range_end,
            ends_at__gt=range_start,
        ).values_list("doctor_id", "starts_at", "ends_at")
    )
    blocked = _block_free_slots(clinic, blocks, doctor)
    if not doctor_ids:
        return 0, blocked

    # Existing and new slots per (doctor, UTC day), to refuse overlaps without an O(n²) scan.
    taken: dict[tuple[int, dt.date], list[tuple[dt.datetime, dt.datetime]]] = defaultdict(list)
    for doctor_id, start_at, end_at in Slot.objects.filter(
        doctor_id__in=doctor_ids, start_at__lt=range_end, end_at__gt=range_start
    ).values_list("doctor_id", "start_at", "end_at"):
        taken[doctor_id, start_at.astimezone(UTC).date()].append((start_at, end_at))

    new_slots = []
    schedules = Schedule.objects.filter(doctor_id__in=doctor_ids).order_by(
        "doctor_id", "start_time"
    )
    for schedule in schedules:
        doctor_blocks = [
            (b_start, b_end)
            for b_doctor, b_start, b_end in blocks
            if b_doctor is None or b_doctor == schedule.doctor_id
        ]
        day = date_from
        while day <= date_to:
            if schedule.applies_on(day):
                for interval in _schedule_times(schedule, day, tz):
                    if any(_overlaps(interval, b) for b in doctor_blocks):
                        continue
                    utc_day = interval[0].date()
                    if any(
                        _overlaps(interval, t)
                        for offset in (-1, 0, 1)
                        for t in taken.get(
                            (schedule.doctor_id, utc_day + dt.timedelta(days=offset)), ()
                        )
                    ):
                        continue
                    taken[schedule.doctor_id, utc_day].append(interval)
                    new_slots.append(
                        Slot(
                            clinic=clinic,
                            doctor_id=schedule.doctor_id,
                            start_at=interval[0],
                            end_at=interval[1],
                        )
                    )
            day += dt.timedelta(days=1)
    # ignore_conflicts: a concurrent run may have created the same (doctor, start) already.
    Slot.objects.bulk_create(new_slots, batch_size=1000, ignore_conflicts=True)
    return len(new_slots), blocked


def _block_free_slots(clinic: Clinic, blocks: list, doctor: Doctor | None) -> int:
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
