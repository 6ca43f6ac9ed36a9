"""Reads: keyset pages of available slots, a patient's appointments, staff scoping."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from clinics import selectors, services
from clinics.models import Doctor, Slot, SlotStatus, Specialty
from clinics.selectors import available_slots
from clinics.services import Actor
from tests.conftest import make_slots

NO_NOTICE = dt.timedelta(0)


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
