"""Reads: keyset pages of available slots, a patient's appointments, staff scoping."""

import datetime as dt
import zoneinfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clinics import selectors, services
from clinics.models import BlockedPeriod, Doctor, Patient, Slot, SlotStatus, Specialty
from clinics.selectors import WINDOW_HORIZON_DAYS, SlotWindow, available_slots
from clinics.services import Actor
from tests.conftest import make_clinic, make_slots

NO_NOTICE = dt.timedelta(0)
TZ = zoneinfo.ZoneInfo("America/Bogota")


def all_pages(**kwargs) -> list[list[Slot]]:
    pages, cursor = [], None
    while True:
        page = available_slots(cursor=cursor, min_notice=NO_NOTICE, **kwargs)
        pages.append(page.slots)
        if not page.has_more:
            assert page.next_cursor is None
            return pages
        cursor = page.next_cursor


@pytest.fixture
def pediatrics(clinic) -> Specialty:
    return Specialty.objects.create(clinic=clinic, slug="pediatria", name="Pediatría")


@pytest.fixture
def pediatrician(clinic, pediatrics, slots) -> Doctor:
    """Same start times as `slots` (ties on start_at exercise the id part of the key)."""
    doc = Doctor.objects.create(clinic=clinic, full_name="Dra. Niños")
    doc.specialties.add(pediatrics)
    make_slots(doc, slots[0].start_at, 30)
    return doc


def test_it_pages_without_gaps_or_repeats_while_slots_are_booked(
    clinic, patient, other_patient, slots, pediatrician
):
    actor = Actor.system("test")
    expected = list(
        Slot.objects.filter(clinic=clinic).order_by("start_at", "pk").values_list("pk", flat=True)
    )
    seen, cursor, booked = [], None, set()
    while True:
        page = available_slots(clinic=clinic, cursor=cursor, page_size=7, min_notice=NO_NOTICE)
        assert len(page.slots) <= 7
        seen.extend(s.pk for s in page.slots)
        if not page.has_more:
            break
        cursor = page.next_cursor
        # Between page reads, someone books a slot already shown and one not shown yet.
        shown = page.slots[0]
        upcoming = Slot.objects.filter(
            clinic=clinic, status=SlotStatus.FREE, pk__in=set(expected) - set(seen)
        ).order_by("start_at", "pk")
        for slot, who in [(shown, patient), (upcoming.last(), other_patient)]:
            if slot is None or slot.pk in booked:
                continue
            try:
                services.appointment_book(
                    clinic=clinic, patient=who, slot_id=slot.pk, actor=actor, source="staff"
                )
                booked.add(slot.pk)
            except services.PatientOverlap:
                pass
    assert len(seen) == len(set(seen)), "a slot was shown twice"
    booked_later = {pk for pk in booked if pk not in seen}
    assert [pk for pk in expected if pk not in booked_later] == seen, "a slot was skipped"


def test_it_filters_by_specialty_doctor_and_local_dates(
    clinic, specialty, pediatrics, doctor, pediatrician, slots
):
    kids = [s for page in all_pages(clinic=clinic, specialty=pediatrics) for s in page]
    assert {s.doctor_id for s in kids} == {pediatrician.pk}
    assert len(kids) == 30
    general = [s for page in all_pages(clinic=clinic, doctor=doctor, page_size=50) for s in page]
    assert {s.doctor_id for s in general} == {doctor.pk} and len(general) == 30
    assert (
        available_slots(
            clinic=clinic, doctor=doctor, specialty=pediatrics, min_notice=NO_NOTICE
        ).slots
        == []
    )
    day = timezone.localdate(slots[0].start_at, clinic.tz)
    next_day = [
        s for page in all_pages(clinic=clinic, date_from=day + dt.timedelta(days=1)) for s in page
    ]
    assert next_day == []
    same_day = all_pages(clinic=clinic, date_from=day, date_to=day, page_size=100)
    assert len(same_day[0]) == 60
    assert same_day[0][0].doctor.full_name  # select_related: no extra query


def test_it_applies_minimum_notice(clinic, slots):
    now = slots[0].start_at - dt.timedelta(minutes=30)
    page = available_slots(clinic=clinic, now=now, min_notice=dt.timedelta(hours=1))
    assert page.slots[0] == slots[2]  # 08:00 and 08:20 are less than an hour away
    assert page.slots[0].start_at == slots[2].start_at and page.slots[0].doctor == slots[2].doctor
    default = available_slots(clinic=clinic, now=now)  # settings: 60 minutes
    assert default.slots[0] == slots[2]


def test_it_hides_inactive_doctors_and_booked_blocked_slots(clinic, doctor, slots, patient):
    Slot.objects.filter(pk=slots[0].pk).update(status=SlotStatus.BLOCKED)
    services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slots[1].pk, actor=Actor.system("t"), source="api"
    )
    page = available_slots(clinic=clinic, min_notice=NO_NOTICE)
    assert page.slots[0] == slots[2]
    doctor.active = False
    doctor.save()
    assert available_slots(clinic=clinic, min_notice=NO_NOTICE).slots == []
    assert available_slots(clinic=clinic, doctor=doctor, min_notice=NO_NOTICE).slots == []


def test_it_never_shows_another_clinics_slots(clinic, other_clinic, slots):
    other = Doctor.objects.create(clinic=other_clinic, full_name="Dr. Norte")
    make_slots(other, slots[0].start_at, 5)
    pages = all_pages(clinic=other_clinic)
    assert {s.clinic_id for page in pages for s in page} == {other_clinic.pk}


@pytest.mark.parametrize(
    "cursor",
    ["nonsense", "", "e30", "eyJzIjoxfQ", "eyJzIjoiMjAyNi0wMS0wMVQwMDowMDowMCIsImkiOjF9", "%%%"],
)
def test_it_refuses_a_bad_cursor(clinic, slots, cursor):
    if cursor == "":
        # An empty cursor means "first page".
        assert available_slots(clinic=clinic, cursor=cursor, min_notice=NO_NOTICE).slots
        return
    with pytest.raises(services.InvalidInput) as err:
        available_slots(clinic=clinic, cursor=cursor)
    assert err.value.code == "invalid_cursor"


def test_it_refuses_bad_page_sizes_and_foreign_filters(clinic, other_clinic, slots):
    foreign = Specialty.objects.create(clinic=other_clinic, slug="x", name="X")
    for kwargs in [{"page_size": 0}, {"page_size": 1000}, {"specialty": foreign}]:
        with pytest.raises(services.InvalidInput):
            available_slots(clinic=clinic, **kwargs)


def test_it_reads_a_page_in_one_query_without_offset(clinic, slots, pediatrician):
    first = available_slots(clinic=clinic, page_size=5, min_notice=NO_NOTICE)
    with CaptureQueriesContext(connection) as queries:
        page = available_slots(
            clinic=clinic, page_size=5, min_notice=NO_NOTICE, cursor=first.next_cursor
        )
        [s.doctor.full_name for s in page.slots]
    assert len(queries) == 1
    sql = queries[0]["sql"].upper()
    assert "OFFSET" not in sql and "LIMIT 6" in sql


def test_it_finds_patients_by_document_in_their_clinic_only(clinic, other_clinic, patient):
    assert selectors.patient_by_document(clinic=clinic, document=" 1020304050 ") == patient
    assert selectors.patient_by_document(clinic=other_clinic, document="1020304050") is None
    assert selectors.patient_by_document(clinic=clinic, document="99999999") is None
    for bad in ["10.203.040", "abc", "123", None]:
        with pytest.raises(services.InvalidInput) as err:
            selectors.patient_by_document(clinic=clinic, document=bad)
        assert err.value.code == "invalid_document"


def test_it_lists_only_upcoming_active_appointments(clinic, other_clinic, patient, slots):
    actor = Actor.patient(patient)
    first = services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slots[3].pk, actor=actor, source="bot"
    )
    second = services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slots[0].pk, actor=actor, source="bot"
    )
    cancelled = services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slots[6].pk, actor=actor, source="bot"
    )
    services.appointment_cancel(clinic=clinic, appointment_id=cancelled.pk, actor=actor)
    upcoming = selectors.patient_upcoming_appointments(clinic=clinic, patient=patient)
    assert upcoming == [second, first]
    later = slots[1].start_at
    assert selectors.patient_upcoming_appointments(clinic=clinic, patient=patient, now=later) == [
        first
    ]
    assert selectors.patient_upcoming_appointments(clinic=other_clinic, patient=patient) == []


def test_it_scopes_staff_to_their_clinics(
    clinic, other_clinic, receptionist, other_staff, outsider, django_user_model
):
    assert list(selectors.staff_clinics(receptionist)) == [clinic]
    assert list(selectors.staff_clinics(other_staff)) == [other_clinic]
    assert list(selectors.staff_clinics(outsider)) == []
    root = django_user_model.objects.create_superuser("root", password="x-long-password")
    assert set(selectors.staff_clinics(root)) == {clinic, other_clinic}
    receptionist.is_active = False
    assert list(selectors.staff_clinics(receptionist)) == []
    from django.contrib.auth.models import AnonymousUser

    assert list(selectors.staff_clinics(AnonymousUser())) == []


# --- slots that fit: blocked periods, the patient's own time, a date/time window ------------


def local(clinic, day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=clinic.tz)


@pytest.fixture
def two_weeks(clinic, doctor, pediatrician) -> list[Slot]:
    """Both doctors, 14 days from tomorrow, hourly 07:00–18:00 Bogotá (12 slots a day each)."""
    first = timezone.localdate(timezone.now(), clinic.tz) + dt.timedelta(days=1)
    Slot.objects.all().delete()
    made = []
    for offset in range(14):
        day = first + dt.timedelta(days=offset)
        for who in (doctor, pediatrician):
            made += make_slots(who, local(clinic, day, 7), 12, minutes=60)
    return made


def every_slot(**kwargs) -> list[Slot]:
    return [s for page in all_pages(page_size=7, **kwargs) for s in page]


def test_it_never_offers_a_slot_inside_a_blocked_period(clinic, doctor, pediatrician, two_weeks):
    day = timezone.localdate(two_weeks[0].start_at, clinic.tz)
    # A holiday for everyone on the first day, and Dr. García away 10:30–12:30 on the second;
    # the slots were generated before, so their own status still says "free".
    BlockedPeriod.objects.create(
        clinic=clinic,
        starts_at=local(clinic, day, 0),
        ends_at=local(clinic, day + dt.timedelta(days=1), 0),
        reason="festivo",
    )
    BlockedPeriod.objects.create(
        clinic=clinic,
        doctor=doctor,
        starts_at=local(clinic, day + dt.timedelta(days=1), 10, 30),
        ends_at=local(clinic, day + dt.timedelta(days=1), 12, 30),
    )
    offered = every_slot(clinic=clinic)
    assert all(timezone.localdate(s.start_at, clinic.tz) != day for s in offered)
    second_day = [
        (s.doctor_id, s.start_at.astimezone(clinic.tz).hour)
        for s in offered
        if timezone.localdate(s.start_at, clinic.tz) == day + dt.timedelta(days=1)
    ]
    assert (doctor.pk, 10) not in second_day  # 10:00–11:00 overlaps the absence
    assert (doctor.pk, 11) not in second_day and (doctor.pk, 12) not in second_day
    assert (doctor.pk, 9) in second_day and (doctor.pk, 13) in second_day
    assert (pediatrician.pk, 10) in second_day  # another doctor's absence hides nothing of hers
    assert len(offered) == len(two_weeks) - 24 - 3
    only_him = every_slot(clinic=clinic, doctor=doctor)
    assert len(only_him) == len(two_weeks) // 2 - 12 - 3


def test_it_keeps_a_cancelled_slot_in_a_blocked_period_hidden(clinic, patient, two_weeks):
    slot = two_weeks[30]
    appointment = services.appointment_book(
        clinic=clinic, patient=patient, slot_id=slot.pk, actor=Actor.system("t"), source="api"
    )
    BlockedPeriod.objects.create(
        clinic=clinic, starts_at=slot.start_at, ends_at=slot.end_at, reason="cerrado"
    )
    services.appointment_cancel(
        clinic=clinic, appointment_id=appointment.pk, actor=Actor.system("t")
    )
    assert slot.pk not in {s.pk for s in every_slot(clinic=clinic)}


def test_it_never_offers_a_time_overlapping_the_patients_own_appointment(
    clinic, doctor, pediatrician, patient, other_patient, two_weeks
):
    mine = next(s for s in two_weeks if s.doctor_id == doctor.pk)
    services.appointment_book(
        clinic=clinic, patient=patient, slot_id=mine.pk, actor=Actor.system("t"), source="api"
    )
    same_time = Slot.objects.get(doctor=pediatrician, start_at=mine.start_at)
    for_her = {s.pk for s in every_slot(clinic=clinic, patient=patient)}
    assert same_time.pk not in for_her
    assert len(for_her) == len(two_weeks) - 2
    assert same_time.pk in {s.pk for s in every_slot(clinic=clinic, patient=other_patient)}
    with pytest.raises(services.InvalidInput):
        foreign = Patient.objects.create(
            clinic=Doctor.objects.create(
                clinic=make_clinic("sur", "100000000000009"), full_name="X"
            ).clinic,
            document="55555555",
            full_name="Otra Persona",
        )
        available_slots(clinic=clinic, patient=foreign)


@pytest.mark.parametrize(
    ("window_of", "keep"),
    [
        # "el viernes en la tarde": Friday, 12:00–18:00 local
        (
            lambda day: SlotWindow(
                weekdays=frozenset({4}), time_from=dt.time(12), time_to=dt.time(18)
            ),
            lambda t: t.weekday() == 4 and 12 <= t.hour < 18,
        ),
        # "después de las 5"
        (lambda day: SlotWindow(time_from=dt.time(17)), lambda t: t.hour >= 17),
        # "antes de las 9" on weekdays only
        (
            lambda day: SlotWindow(time_to=dt.time(9), weekdays=frozenset(range(5))),
            lambda t: t.hour < 9 and t.weekday() < 5,
        ),
        # "la próxima semana": from the 3rd day to the 9th, as instants
        (
            lambda day: SlotWindow(
                start=dt.datetime.combine(day + dt.timedelta(days=2), dt.time.min, tzinfo=TZ),
                end=dt.datetime.combine(day + dt.timedelta(days=9), dt.time.min, tzinfo=TZ),
            ),
            None,
        ),
    ],
)
def test_it_filters_by_a_date_and_time_window_page_after_page(
    clinic, doctor, two_weeks, window_of, keep
):
    first_day = timezone.localdate(two_weeks[0].start_at, clinic.tz)
    window = window_of(first_day)
    if keep is None:

        def keep(t, w=window):
            return w.start <= t < w.end

    expected = sorted(
        (s for s in two_weeks if keep(s.start_at.astimezone(clinic.tz))),
        key=lambda s: (s.start_at, s.pk),
    )
    assert expected
    got = every_slot(clinic=clinic, window=window)
    assert [s.pk for s in got] == [s.pk for s in expected]
    with_doctor = every_slot(clinic=clinic, window=window, doctor=doctor)
    assert [s.pk for s in with_doctor] == [s.pk for s in expected if s.doctor_id == doctor.pk]


def test_it_reads_a_window_page_in_one_query(clinic, patient, two_weeks):
    window = SlotWindow(weekdays=frozenset({0, 2}), time_from=dt.time(14))
    with CaptureQueriesContext(connection) as queries:
        page = available_slots(
            clinic=clinic, window=window, patient=patient, min_notice=NO_NOTICE, page_size=5
        )
    assert len(queries) == 1 and len(page.slots) == 5


def test_it_looks_a_bounded_horizon_ahead_for_a_window_without_end(clinic, doctor):
    first = timezone.localdate(timezone.now(), clinic.tz) + dt.timedelta(days=1)
    near = make_slots(doctor, local(clinic, first, 17), 1)
    far_day = first + dt.timedelta(days=WINDOW_HORIZON_DAYS + 5)
    make_slots(doctor, local(clinic, far_day, 17), 1)
    window = SlotWindow(time_from=dt.time(17))
    assert [s.pk for s in every_slot(clinic=clinic, window=window)] == [near[0].pk]
    anchored = SlotWindow(
        time_from=dt.time(17), start=local(clinic, far_day, 0), end=local(clinic, far_day, 23)
    )
    assert len(every_slot(clinic=clinic, window=anchored)) == 1
    assert every_slot(clinic=clinic, window=SlotWindow(time_from=dt.time(20))) == []
