"""Agenda benchmark (issue 9): the staff calendar over 1,000,000 slots.

Runs on its own database `sophia_bench_agenda` (dropped and recreated; dropped afterwards unless
BENCH_KEEP_DB=1) on the PostgreSQL server of DATABASE_URL (the Makefile's test server).

Load: one clinic, 200 doctors in 10 specialties of 20, 1,000,000 slots (5,000 per doctor,
24 a day), ~14 % booked with an appointment and a patient name, ~7 % held, ~1 % blocked.

Measured, interleaved, BENCH_SAMPLES times each (default 300):
- `day_selector`: clinics.selectors.calendar_day for one specialty (20 doctors side by side);
- `week_selector`: clinics.selectors.calendar_week for one doctor;
- `day_page` / `week_page`: the whole HTTP response of /agenda/ and /agenda/semana/<id>/
  through Django's test client (routing, access checks, selectors, template), when the pages exist;
- `floor_select1`: `SELECT 1` through the same Django connection, the floor of the same run.
Goal: p95 ≤ 50 ms for the day view and the week view (pages when present, else selectors).
Figures → bench/results/agenda.json, with the EXPLAIN ANALYZE of the slot query.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from machine_info import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "agenda.json"
BENCH_DB = "sophia_bench_agenda"
SPECIALTIES = 10
DOCTORS_PER_SPECIALTY = 20
SLOTS_PER_DOCTOR = 5_000
PATIENTS = 20_000
SAMPLES = int(os.getenv("BENCH_SAMPLES", "300"))
GOAL_P95_MS = 50.0


def server_url() -> str:
    url = os.getenv("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("bench_agenda needs DATABASE_URL pointing at PostgreSQL (use `make bench`)")
    return url


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin_sql(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(statement)


def setup_django(bench_url: str) -> None:
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sophia_web.settings")
    os.environ.setdefault("SECRET_KEY", "sophia-bench-only")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def load_data() -> dict:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from clinics.models import Clinic, Doctor, Patient, Specialty, StaffMembership

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    migrated = time.perf_counter()
    clinic = Clinic.objects.create(
        slug="bench", name="Clínica Benchmark", phone_number_id="199999999999998"
    )
    specialties = Specialty.objects.bulk_create(
        Specialty(clinic=clinic, slug=f"especialidad-{i}", name=f"Especialidad {i}")
        for i in range(SPECIALTIES)
    )
    doctors = Doctor.objects.bulk_create(
        Doctor(clinic=clinic, full_name=f"Dr. Bench {i:03d}")
        for i in range(SPECIALTIES * DOCTORS_PER_SPECIALTY)
    )
    Doctor.specialties.through.objects.bulk_create(
        Doctor.specialties.through(doctor_id=d.pk, specialty_id=specialties[i % SPECIALTIES].pk)
        for i, d in enumerate(doctors)
    )
    Patient.objects.bulk_create(
        Patient(clinic=clinic, document=f"{10_000_000 + i}", full_name=f"Paciente Número {i}")
        for i in range(PATIENTS)
    )
    user = get_user_model().objects.create_user("bench-admin", password="bench-only-password")
    StaffMembership.objects.create(user=user, clinic=clinic, role="admin")
    # Day 0 = tomorrow 08:00 Bogotá (13:00 UTC); 24 slots of 20 minutes a day.
    base = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(
        hour=13, minute=0, second=0, microsecond=0
    )
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '256MB'")
        cursor.execute("SET synchronous_commit = off")
        cursor.execute(
            """
            INSERT INTO clinics_slot (clinic_id, doctor_id, start_at, end_at, status, held_until,
                                      updated_at)
            SELECT %(clinic)s, d.id, s.start_at, s.start_at + interval '20 minutes',
                   CASE WHEN n %% 7 = 3 THEN 'booked'
                        WHEN n %% 13 = 5 THEN 'held'
                        WHEN n %% 97 = 11 THEN 'blocked'
                        ELSE 'free' END,
                   CASE WHEN n %% 7 <> 3 AND n %% 13 = 5 THEN now() + interval '1 day' END,
                   now()
            FROM clinics_doctor d
            CROSS JOIN generate_series(0, %(per_doctor)s - 1) AS n
            CROSS JOIN LATERAL (
                SELECT %(base)s::timestamptz + (n / 24) * interval '1 day'
                       + (n %% 24) * interval '20 minutes' AS start_at
            ) s
            WHERE d.clinic_id = %(clinic)s
            """,
            {"clinic": clinic.pk, "per_doctor": SLOTS_PER_DOCTOR, "base": base},
        )
        slots = cursor.rowcount
        # One appointment per booked slot; patients spread so no patient overlaps themself.
        cursor.execute(
            """
            INSERT INTO clinics_appointment (clinic_id, patient_id, slot_id, doctor_id,
                specialty_id, start_at, end_at, status, patient_notes, source, cancel_reason,
                created_at, updated_at)
            SELECT s.clinic_id, p.id, s.id, s.doctor_id, NULL, s.start_at, s.end_at, 'booked',
                   '', 'bot', '', now(), now()
            FROM (SELECT s.*, row_number() OVER (PARTITION BY s.start_at ORDER BY s.id) AS k
                  FROM clinics_slot s WHERE s.status = 'booked') s
            JOIN (SELECT id, row_number() OVER (ORDER BY id) AS k FROM clinics_patient) p
              ON p.k = s.k
            """
        )
        appointments = cursor.rowcount
        cursor.execute("VACUUM ANALYZE")
    loaded = time.perf_counter()
    busiest = specialties[0]
    return {
        "clinic_id": clinic.pk,
        "specialty_id": busiest.pk,
        "doctor_id": busiest.doctors.order_by("pk").first().pk,
        "user_id": user.pk,
        "day": (base + dt.timedelta(days=3)).date().isoformat(),
        "slots": slots,
        "appointments": appointments,
        "doctors": len(doctors),
        "migrate_s": round(migrated - started, 2),
        "load_s": round(loaded - migrated, 2),
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(samples_ns: list[int]) -> dict:
    ms = [s / 1e6 for s in samples_ns]
    return {
        "samples": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 0.95), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
    }


def explain_slots(fn) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        fn()
    sql = next(q["sql"] for q in captured.captured_queries if "clinics_slot" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql)
        return [row[0] for row in cursor.fetchall()]


def measure(data: dict) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.urls import NoReverseMatch, reverse

    from clinics import selectors
    from clinics.models import Clinic, Doctor, Specialty

    clinic = Clinic.objects.get(pk=data["clinic_id"])
    specialty = Specialty.objects.get(pk=data["specialty_id"])
    doctor = Doctor.objects.get(pk=data["doctor_id"])
    day = dt.date.fromisoformat(data["day"])

    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    variants = {
        "day_selector": lambda: selectors.calendar_day(clinic=clinic, day=day, specialty=specialty),
        "week_selector": lambda: selectors.calendar_week(
            clinic=clinic, doctor=doctor, week_start=day
        ),
        "floor_select1": select_one,
    }
    pages = {}
    try:
        pages["day_page"] = (
            reverse("clinics:agenda") + f"?fecha={day.isoformat()}&especialidad={specialty.pk}"
        )
        pages["week_page"] = (
            reverse("clinics:agenda-week", args=[doctor.pk]) + f"?fecha={day.isoformat()}"
        )
    except NoReverseMatch:
        pages = {}
    if pages:
        client = Client(HTTP_HOST="127.0.0.1")  # an ALLOWED_HOSTS name
        client.force_login(get_user_model().objects.get(pk=data["user_id"]))
        for name, url in pages.items():

            def get(url=url, name=name) -> None:
                response = client.get(url)
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status_code}")

            variants[name] = get
    counts = {
        "day_doctors": len(variants["day_selector"]()),
        "day_cells": sum(len(c.cells) for c in variants["day_selector"]()),
        "week_cells": sum(len(c.cells) for c in variants["week_selector"]()),
    }
    for fn in variants.values():
        for _ in range(10):
            fn()
    plans = {
        "day_selector": explain_slots(variants["day_selector"]),
        "week_selector": explain_slots(variants["week_selector"]),
    }
    samples: dict[str, list[int]] = {name: [] for name in variants}
    gc.collect()
    for _ in range(SAMPLES):
        for name, fn in variants.items():
            started = time.perf_counter_ns()
            fn()
            samples[name].append(time.perf_counter_ns() - started)
    return {
        "counts": counts,
        "latency": {name: summary(s) for name, s in samples.items()},
        "plans": plans,
    }


def main() -> int:
    url = server_url()
    bench_url = with_database(url, BENCH_DB)
    admin_sql(url, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    admin_sql(url, f"CREATE DATABASE {BENCH_DB}")
    try:
        setup_django(bench_url)
        data = load_data()
        figures = measure(data)
    finally:
        if os.getenv("BENCH_KEEP_DB") != "1":
            from django.db import connections

            connections.close_all()
            admin_sql(url, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    latency = figures["latency"]
    floor = latency["floor_select1"]["p95_ms"]
    day_key = "day_page" if "day_page" in latency else "day_selector"
    week_key = "week_page" if "week_page" in latency else "week_selector"
    result = {
        "goal": {"day_view_p95_ms_max": GOAL_P95_MS, "week_view_p95_ms_max": GOAL_P95_MS},
        "data": data,
        **figures,
        "ratios_to_select1_p95": {
            name: round(s["p95_ms"] / floor, 1) if floor else None
            for name, s in latency.items()
            if name != "floor_select1"
        },
        "judged": {"day_view": day_key, "week_view": week_key},
        "met": latency[day_key]["p95_ms"] <= GOAL_P95_MS
        and latency[week_key]["p95_ms"] <= GOAL_P95_MS,
        "machine": machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"{'variant':<16}{'p50 ms':>10}{'p95 ms':>10}{'× SELECT 1':>12}")
    for name, s in latency.items():
        ratio = result["ratios_to_select1_p95"].get(name, 1.0)
        print(f"{name:<16}{s['p50_ms']:>10.2f}{s['p95_ms']:>10.2f}{ratio:>12}")
    print(f"counts {figures['counts']}; goals met: {result['met']}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
