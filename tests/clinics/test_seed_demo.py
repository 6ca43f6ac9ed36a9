"""`manage.py seed_demo` creates the demo data of issue 2; running it again changes nothing."""

import datetime as dt
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from bot.models import Conversation
from clinics.demo_data import SPECIALTIES
from clinics.models import (
    AuditEvent,
    Clinic,
    Doctor,
    FaqEntry,
    Patient,
    Schedule,
    Slot,
    Specialty,
    StaffMembership,
)

pytestmark = pytest.mark.django_db

MODELS = [Clinic, Specialty, Doctor, Schedule, Slot, Patient, StaffMembership, Conversation]


def seed(days: int, settings) -> str:
    settings.SOPHIA_SLOT_DAYS_AHEAD = days
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def snapshot() -> dict:
    counts = {m.__name__: m.objects.count() for m in MODELS}
    counts["users"] = get_user_model().objects.count()
    counts["slot_ids"] = sorted(Slot.objects.values_list("pk", flat=True))
    return counts


def test_it_creates_the_two_demo_clinics(settings):
    output = seed(3, settings)
    demo = Clinic.objects.get(slug="demo")
    assert demo.name == "Clínica Sophia Demo"
    assert demo.phone_number_id == "100000000000001"
    assert demo.time_zone == "America/Bogota"
    assert demo.emergency_line == "123"
    assert "Bogotá" in demo.address
    assert demo.opening_hours and demo.what_to_bring
    assert demo.self_registration is True
    norte = Clinic.objects.get(slug="norte")
    assert norte.name == "Clínica Norte"
    assert norte.phone_number_id == "100000000000002"
    assert norte.specialties.count() >= 1
    assert norte.doctors.count() >= 2
    assert "sophia-demo" in output
    assert "DEMO ONLY" in output


def test_it_gives_every_demo_specialty_its_keywords_and_two_doctors(settings):
    seed(3, settings)
    demo = Clinic.objects.get(slug="demo")
    specialties = {s.slug: s for s in demo.specialties.all()}
    assert set(specialties) == set(SPECIALTIES)
    for slug, (name, keywords) in SPECIALTIES.items():
        specialty = specialties[slug]
        assert specialty.name == name
        assert specialty.triage_keywords == "\n".join(keywords)
        assert specialty.keyword_list() == [k.strip() for k in keywords if k.strip()]
        doctors = list(specialty.doctors.filter(active=True, clinic=demo))
        assert len(doctors) >= 2, slug
        assert all(d.full_name.startswith(("Dr. ", "Dra. ")) for d in doctors)


def test_it_schedules_monday_to_saturday_in_twenty_minute_slots(settings):
    seed(8, settings)
    demo = Clinic.objects.get(slug="demo")
    for doctor in demo.doctors.all():
        days = {d for s in doctor.schedules.all() for d in s.weekdays}
        assert days == {0, 1, 2, 3, 4, 5}
        assert {s.slot_minutes for s in doctor.schedules.all()} == {20}
    slots = Slot.objects.filter(clinic=demo)
    assert slots.exists()
    tz = demo.tz
    today = timezone.now().astimezone(tz).date()
    for slot in slots.iterator():
        local = slot.start_at.astimezone(tz)
        assert slot.end_at - slot.start_at == dt.timedelta(minutes=20)
        assert local.weekday() != 6
        assert dt.time(8) <= local.time() < dt.time(18)
        assert not (dt.time(12) <= local.time() < dt.time(14))
        if local.weekday() == 5:
            assert local.time() < dt.time(12)
        assert today <= local.date() <= today + dt.timedelta(days=8)
    # Every demo doctor has slots.
    assert slots.values("doctor").distinct().count() == demo.doctors.count()


def test_it_creates_the_demo_patient_and_staff(settings):
    seed(1, settings)
    demo, norte = Clinic.objects.get(slug="demo"), Clinic.objects.get(slug="norte")
    ana = Patient.objects.get(clinic=demo, document="1020304050")
    assert ana.full_name == "Ana María Gómez"
    assert ana.birth_date == dt.date(1985, 3, 14)
    assert ana.whatsapp_id == "573001234567"
    expected = {("recepcion", demo, "receptionist"), ("admin", demo, "admin")}
    expected.add(("norte", norte, "receptionist"))
    for username, clinic, role in expected:
        user = get_user_model().objects.get(username=username)
        assert user.is_staff and not user.is_superuser
        assert user.check_password("sophia-demo")
        assert list(user.memberships.values_list("clinic", "role")) == [(clinic.pk, role)]


def test_it_changes_nothing_when_run_twice(settings):
    seed(5, settings)
    before = snapshot()
    audit_before = AuditEvent.objects.count()
    user = get_user_model().objects.get(username="recepcion")
    user.set_password("changed-by-staff")
    user.save()
    output = seed(5, settings)
    assert snapshot() == before
    assert AuditEvent.objects.count() == audit_before
    assert "0 new slots" in output
    user.refresh_from_db()
    assert user.check_password("changed-by-staff")


def test_it_tops_slots_up_to_the_configured_horizon(settings):
    seed(3, settings)
    first = set(Slot.objects.values_list("pk", flat=True))
    seed(10, settings)
    second = set(Slot.objects.values_list("pk", flat=True))
    assert first < second
    demo = Clinic.objects.get(slug="demo")
    latest = Slot.objects.filter(clinic=demo).latest("start_at").start_at.astimezone(demo.tz)
    today = timezone.now().astimezone(demo.tz).date()
    assert today + dt.timedelta(days=7) <= latest.date() <= today + dt.timedelta(days=10)


def test_it_keeps_edits_made_by_staff(settings):
    seed(1, settings)
    Specialty.objects.filter(slug="pediatria", clinic__slug="demo").update(
        triage_keywords="niño\nbebé"
    )
    Clinic.objects.filter(slug="demo").update(opening_hours="24 horas")
    seed(1, settings)
    assert Specialty.objects.get(slug="pediatria", clinic__slug="demo").triage_keywords == (
        "niño\nbebé"
    )
    assert Clinic.objects.get(slug="demo").opening_hours == "24 horas"


def test_it_seeds_faq_answers_for_each_clinic_and_keeps_edited_ones(settings):
    seed(1, settings)
    demo = Clinic.objects.get(slug="demo")
    questions = " ".join(demo.faq_entries.values_list("question", flat=True)).lower()
    for topic in ("cuesta", "eps", "parqueadero", "llevar", "llego"):
        assert topic in questions
    assert all(e.answer and e.keyword_list() for e in FaqEntry.objects.all())
    parking = demo.faq_entries.get(question__icontains="parqueadero")
    parking.answer = "Ya no tenemos parqueadero."
    parking.save()
    count = FaqEntry.objects.count()
    seed(1, settings)
    assert FaqEntry.objects.count() == count
    parking.refresh_from_db()
    assert parking.answer == "Ya no tenemos parqueadero."
