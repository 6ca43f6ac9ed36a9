"""Weekly schedules → slots: clinic time zone, DST, holidays, idempotence."""

import datetime as dt
import itertools
import zoneinfo

import pytest
from django.utils import timezone

from clinics import services
from clinics.models import AuditEvent, BlockedPeriod, Doctor, Schedule, Slot, SlotStatus
from tests.conftest import make_clinic

EVERY_DAY = [0, 1, 2, 3, 4, 5, 6]


def next_dst_change(tz: zoneinfo.ZoneInfo, after: dt.date) -> tuple[dt.date, dt.date]:
    """(last day on the old offset, first day on the new one), the next change after `after`."""
    day = after
    for _ in range(400):
        noon = dt.datetime.combine(day, dt.time(12), tzinfo=tz)
        next_noon = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(12), tzinfo=tz)
        if noon.utcoffset() != next_noon.utcoffset():
            return day, day + dt.timedelta(days=1)
        day += dt.timedelta(days=1)
    raise AssertionError("no DST change within a year")


@pytest.fixture
def madrid(db):
    return make_clinic("madrid", "100000000000009", time_zone="Europe/Madrid")


def add_doctor(clinic, name="Dra. Vidal", **schedule) -> Doctor:
    doctor = Doctor.objects.create(clinic=clinic, full_name=name)
    Schedule.objects.create(
        doctor=doctor,
        weekdays=schedule.pop("weekdays", EVERY_DAY),
        start_time=schedule.pop("start_time", dt.time(8, 0)),
        end_time=schedule.pop("end_time", dt.time(12, 0)),
        slot_minutes=schedule.pop("slot_minutes", 30),
        valid_from=schedule.pop("valid_from", dt.date(2000, 1, 1)),
        **schedule,
    )
    return doctor


def local_starts(clinic, day: dt.date) -> list[dt.time]:
    tz = clinic.tz
    start = dt.datetime.combine(day, dt.time.min, tzinfo=tz)
    rows = Slot.objects.filter(
        clinic=clinic, start_at__gte=start, start_at__lt=start + dt.timedelta(days=1)
    ).order_by("start_at")
    return [s.start_at.astimezone(tz).time() for s in rows]


@pytest.mark.parametrize("tz_name", ["Europe/Madrid", "America/New_York"])
def test_it_keeps_local_hours_across_a_dst_change(db, tz_name):
    clinic = make_clinic("dst", "100000000000010", time_zone=tz_name)
    add_doctor(clinic)
    before, after = next_dst_change(clinic.tz, timezone.localdate() + dt.timedelta(days=1))
    created = services.slots_generate(clinic=clinic, date_from=before, date_to=after)
    assert created == 16
    expected = [dt.time(h, m) for h in range(8, 12) for m in (0, 30)]
    assert local_starts(clinic, before) == expected
    assert local_starts(clinic, after) == expected
    first_before = Slot.objects.filter(clinic=clinic).order_by("start_at").first()
    first_after = Slot.objects.filter(clinic=clinic).order_by("start_at")[8]
    # Same local 08:00, different UTC hour: the offset moved by an hour.
    assert abs(first_before.start_at.hour - first_after.start_at.hour) == 1
    for slot in Slot.objects.filter(clinic=clinic):
        assert slot.end_at - slot.start_at == dt.timedelta(minutes=30)


def test_it_skips_start_times_the_spring_change_removes(db):
    clinic = make_clinic("ny", "100000000000011", time_zone="America/New_York")
    add_doctor(clinic, start_time=dt.time(1, 0), end_time=dt.time(4, 0), slot_minutes=30)
    day = timezone.localdate() + dt.timedelta(days=1)
    while True:
        _before, after = next_dst_change(clinic.tz, day)
        march_like = dt.datetime.combine(after, dt.time(12), tzinfo=clinic.tz).dst()
        if march_like:  # the change into summer time: 02:00–03:00 does not exist
            break
        day = after + dt.timedelta(days=1)
    # The clock jumps on the night between `before` and `after`, i.e. early on `after`.
    services.slots_generate(clinic=clinic, date_from=after, date_to=after)
    starts = local_starts(clinic, after)
    assert dt.time(2, 0) not in starts and dt.time(2, 30) not in starts
    assert starts == [dt.time(1, 0), dt.time(1, 30), dt.time(3, 0), dt.time(3, 30)]


def test_it_is_idempotent(madrid):
    add_doctor(madrid)
    day = timezone.localdate() + dt.timedelta(days=3)
    first = services.slots_generate(
        clinic=madrid, date_from=day, date_to=day + dt.timedelta(days=6)
    )
    assert first == 7 * 8
    again = services.slots_generate(
        clinic=madrid, date_from=day, date_to=day + dt.timedelta(days=6)
    )
    assert again == 0
    assert Slot.objects.filter(clinic=madrid).count() == 7 * 8
    assert AuditEvent.objects.filter(action="slots.generate").count() == 1


def test_it_skips_holidays_and_doctor_absences(madrid):
    ana = add_doctor(madrid, "Dra. Ana")
    beto = add_doctor(madrid, "Dr. Beto")
    day = timezone.localdate() + dt.timedelta(days=5)
    tz = madrid.tz
    holiday = day + dt.timedelta(days=1)
    BlockedPeriod.objects.create(
        clinic=madrid,
        starts_at=dt.datetime.combine(holiday, dt.time.min, tzinfo=tz),
        ends_at=dt.datetime.combine(holiday + dt.timedelta(days=1), dt.time.min, tzinfo=tz),
        reason="Festivo",
    )
    BlockedPeriod.objects.create(
        clinic=madrid,
        doctor=ana,
        starts_at=dt.datetime.combine(day, dt.time(9, 0), tzinfo=tz),
        ends_at=dt.datetime.combine(day, dt.time(10, 0), tzinfo=tz),
        reason="Congreso",
    )
    services.slots_generate(clinic=madrid, date_from=day, date_to=holiday)
    assert local_starts(madrid, holiday) == []
    ana_times = [
        s.start_at.astimezone(tz).time()
        for s in Slot.objects.filter(doctor=ana).order_by("start_at")
    ]
    assert dt.time(9, 0) not in ana_times and dt.time(9, 30) not in ana_times
    assert len(ana_times) == 6
    assert Slot.objects.filter(doctor=beto).count() == 8


def test_it_blocks_free_slots_when_a_holiday_is_added_later(madrid):
    add_doctor(madrid)
    day = timezone.localdate() + dt.timedelta(days=5)
    services.slots_generate(clinic=madrid, date_from=day, date_to=day)
    BlockedPeriod.objects.create(
        clinic=madrid,
        starts_at=dt.datetime.combine(day, dt.time.min, tzinfo=madrid.tz),
        ends_at=dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min, tzinfo=madrid.tz),
    )
    assert services.slots_generate(clinic=madrid, date_from=day, date_to=day) == 0
    assert set(Slot.objects.filter(clinic=madrid).values_list("status", flat=True)) == {
        SlotStatus.BLOCKED
    }


def test_it_skips_inactive_doctors_and_weekdays_off_and_validity(madrid):
    day = timezone.localdate() + dt.timedelta(days=7)
    retired = add_doctor(madrid, "Dr. Retirado")
    retired.active = False
    retired.save()
    add_doctor(madrid, "Dra. Lunes", weekdays=[day.weekday()])
    add_doctor(madrid, "Dr. Futuro", valid_from=day + dt.timedelta(days=1))
    created = services.slots_generate(clinic=madrid, date_from=day, date_to=day)
    assert created == 8
    assert not Slot.objects.filter(doctor=retired).exists()


def test_it_never_creates_overlapping_slots_when_the_slot_length_changes(madrid):
    doctor = add_doctor(madrid, slot_minutes=30)
    day = timezone.localdate() + dt.timedelta(days=2)
    services.slots_generate(clinic=madrid, date_from=day, date_to=day)
    Schedule.objects.filter(doctor=doctor).update(slot_minutes=20, end_time=dt.time(13, 0))
    created = services.slots_generate(clinic=madrid, date_from=day, date_to=day)
    # 12:00–13:00 is new and free of overlaps: 12:00, 12:20, 12:40.
    assert created == 3
    rows = list(Slot.objects.filter(doctor=doctor).order_by("start_at"))
    for a, b in itertools.pairwise(rows):
        assert a.end_at <= b.start_at


def test_it_refuses_bad_generation_input(madrid, other_clinic):
    other_doctor = Doctor.objects.create(clinic=other_clinic, full_name="Dr. Norte")
    day = timezone.localdate()
    for kwargs, code in [
        ({"date_from": day, "date_to": day - dt.timedelta(days=1)}, "invalid_input"),
        ({"date_from": "2026-01-01", "date_to": day}, "invalid_input"),
        ({"date_from": day, "date_to": day + dt.timedelta(days=800)}, "invalid_input"),
        ({"date_from": day, "date_to": day, "doctor": other_doctor}, "wrong_clinic"),
    ]:
        with pytest.raises(services.BookingError) as err:
            services.slots_generate(clinic=madrid, **kwargs)
        assert err.value.code == code
    assert not Slot.objects.exists()
