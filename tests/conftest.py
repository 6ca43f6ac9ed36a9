"""Shared fixtures: two clinics with staff each, an outsider, a bookable agenda.

Tests run on real PostgreSQL and Redis (`make test` sets DATABASE_URL / REDIS_URL and starts
both with scripts/ensure-services).
"""

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from clinics.models import (
    Clinic,
    Doctor,
    Patient,
    Schedule,
    Slot,
    Specialty,
    StaffMembership,
)

PASSWORD = "test-password-123"


def run_on_sqlite(tmp_path: Path, *test_files: str) -> None:
    """Run test files again on SQLite, the embedded demo's database (no DATABASE_URL or
    REDIS_URL: SQLite and in-process layers), in a pytest of their own; fail with its output.
    Skips when this run is on SQLite already."""
    if connection.vendor == "sqlite":
        pytest.skip("already on SQLite")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["SQLITE_PATH"] = str(tmp_path / "sophia.sqlite3")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *test_files],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in run.stdout


def eventually(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until predicate() holds (for other processes' work); fail after `timeout` seconds."""
    deadline = timezone.now() + dt.timedelta(seconds=timeout)
    pause = threading.Event()
    while not predicate():
        if timezone.now() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        pause.wait(0.05)


@pytest.fixture(autouse=True)
def _flush_redis():
    """Each test starts with an empty Redis database (tests use their own db number)."""
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        client.flushdb()
        client.close()
    yield


def make_clinic(slug: str, phone_number_id: str, **extra) -> Clinic:
    return Clinic.objects.create(
        slug=slug,
        name=extra.pop("name", f"Clínica {slug.title()}"),
        phone_number_id=phone_number_id,
        address=extra.pop("address", "Calle 100 # 15-20, Bogotá"),
        opening_hours=extra.pop("opening_hours", "Lunes a sábado, 7:00 a 18:00"),
        emergency_line=extra.pop("emergency_line", "123"),
        **extra,
    )


def make_user(username: str, clinic: Clinic | None = None, role: str = "receptionist"):
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    if clinic is not None:
        StaffMembership.objects.create(user=user, clinic=clinic, role=role)
    return user


def make_slots(doctor: Doctor, start: dt.datetime, count: int, minutes: int = 20) -> list[Slot]:
    return Slot.objects.bulk_create(
        Slot(
            clinic=doctor.clinic,
            doctor=doctor,
            start_at=start + dt.timedelta(minutes=minutes * i),
            end_at=start + dt.timedelta(minutes=minutes * (i + 1)),
        )
        for i in range(count)
    )


@pytest.fixture
def clinic(db) -> Clinic:
    return make_clinic("demo", "100000000000001", name="Clínica Sophia Demo")


@pytest.fixture
def other_clinic(db) -> Clinic:
    return make_clinic("norte", "100000000000002", name="Clínica Norte")


@pytest.fixture
def specialty(clinic) -> Specialty:
    return Specialty.objects.create(
        clinic=clinic,
        slug="medicina-general",
        name="Medicina General",
        triage_keywords="fiebre, gripa, dolor de cabeza, malestar",
    )


@pytest.fixture
def doctor(clinic, specialty) -> Doctor:
    doc = Doctor.objects.create(clinic=clinic, full_name="Dr. Carlos García")
    doc.specialties.add(specialty)
    Schedule.objects.create(
        doctor=doc,
        weekdays=[0, 1, 2, 3, 4, 5],
        start_time=dt.time(8, 0),
        end_time=dt.time(12, 0),
        slot_minutes=20,
        valid_from=timezone.localdate() - dt.timedelta(days=1),
    )
    return doc


@pytest.fixture
def slots(doctor) -> list[Slot]:
    """Thirty free 20-minute slots from tomorrow 08:00 in the clinic (Bogotá: 13:00 UTC).

    Tomorrow in the clinic's time zone: from 00:00 to 05:00 UTC, UTC's tomorrow is the day
    after Bogotá's, and tests that ask for "tomorrow" there would find no slot."""
    tz = doctor.clinic.tz
    tomorrow = timezone.localdate(timezone=tz) + dt.timedelta(days=1)
    return make_slots(doctor, dt.datetime.combine(tomorrow, dt.time(8), tzinfo=tz), 30)


@pytest.fixture
def patient(clinic) -> Patient:
    return Patient.objects.create(
        clinic=clinic,
        document="1020304050",
        full_name="Ana María Gómez",
        birth_date=dt.date(1985, 3, 14),
        whatsapp_id="573001234567",
    )


@pytest.fixture
def receptionist(clinic):
    return make_user("recepcion", clinic, "receptionist")


@pytest.fixture
def clinic_admin(clinic):
    return make_user("admin", clinic, "admin")


@pytest.fixture
def other_staff(other_clinic):
    """Another clinic's receptionist: must never see this clinic's rows."""
    return make_user("norte", other_clinic, "receptionist")


@pytest.fixture
def outsider(db):
    """A logged-in user with no clinic at all."""
    return make_user("outsider")
