"""API availability: p95 of /api/v1/citas/disponibles/ over HTTP, beside floors of the same run.

Runs against its own database `sophia_bench_api` (dropped and recreated) on the PostgreSQL of
DATABASE_URL, and the Redis of REDIS_URL. Loads one clinic with 40 doctors over 4 specialties and
40,000 slots, starts one daphne process (as production runs it: DEBUG off, JSON logs at WARNING,
the API's throttle backed by Redis) and times, interleaved so machine noise hits all alike:

- `available_p1`: GET /api/v1/citas/disponibles/?page_size=10 (a key, its throttle, the keyset
  selector, serialisation);
- `available_p20`: the same at page 20 (cursor), and `available_specialty` filtered;
- `health`: GET /api/v1/health/ (DRF, no key, a SELECT 1 and a Redis PING inside);
- floors: `noop` — GET /bench/noop/ on the same server (daphne + Django, nothing else), and
  `select1` — SELECT 1 on a psycopg connection from this process (the database round trip).

Figures → bench/results/api.json. Goals, as ratios to floors of the same run (these machines are
small and shared, absolute times move with the load): available_p1 p95 ≤ 4 × the noop p95 (what
daphne + Django cost with nothing to do), page 20 / page 1 (p95) ≤ 1.5 (keyset: no OFFSET), every
timed request answered 200, and none of 100 concurrent requests (4 threads) fails. The p95 of
SELECT 1 is reported beside them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "api.json"
BENCH_DB = "sophia_bench_api"
DOCTORS = 40
SPECIALTIES = 4
SLOTS_PER_DOCTOR = 1000
SAMPLES = int(os.getenv("BENCH_SAMPLES", "400"))
GOAL_NOOP_RATIO = 4.0
GOAL_PAGE_RATIO = 1.5


def server_url() -> str:
    url = os.getenv("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        sys.exit("bench_api needs DATABASE_URL pointing at PostgreSQL (use `make bench`)")
    return url


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def recreate_database(url: str) -> None:
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")


def drop_database(url: str) -> None:
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def setup_django(bench_url: str) -> None:
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sophia_web.settings")
    os.environ.setdefault("SECRET_KEY", "sophia-bench-only")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def load_data() -> dict:
    from django.core.management import call_command
    from django.db import connection

    from clinics.models import Clinic, Doctor, Specialty
    from integrations.keys import api_key_create

    call_command("migrate", verbosity=0)
    clinic = Clinic.objects.create(
        slug="bench", name="Clínica Benchmark", phone_number_id="199999999999998"
    )
    specialties = Specialty.objects.bulk_create(
        Specialty(clinic=clinic, slug=f"especialidad-{i}", name=f"Especialidad {i}")
        for i in range(SPECIALTIES)
    )
    doctors = Doctor.objects.bulk_create(
        Doctor(clinic=clinic, full_name=f"Dr. Bench {i:03d}") for i in range(DOCTORS)
    )
    Doctor.specialties.through.objects.bulk_create(
        Doctor.specialties.through(doctor_id=d.pk, specialty_id=specialties[i % SPECIALTIES].pk)
        for i, d in enumerate(doctors)
    )
    base = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(
        hour=13, minute=0, second=0, microsecond=0
    )
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO clinics_slot (clinic_id, doctor_id, start_at, end_at, status, updated_at)
            SELECT %(clinic)s, d.id, s.start_at, s.start_at + interval '20 minutes',
                   CASE WHEN n %% 7 = 3 THEN 'booked' ELSE 'free' END, now()
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
        cursor.execute("VACUUM ANALYZE clinics_slot")
    _key, raw = api_key_create(clinic=clinic, name="bench", scope="read")
    return {"slots": slots, "key": raw, "specialty": specialties[0].slug}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bench_url: str, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "SECRET_KEY": "sophia-bench-only",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SOPHIA_BENCH": "1",
        "SOPHIA_API_RATE": "1000000/min",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port),
         "sophia_web.asgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(samples_ms: list[float]) -> dict:
    return {
        "samples": len(samples_ms),
        "p50_ms": round(statistics.median(samples_ms), 3),
        "p95_ms": round(percentile(samples_ms, 0.95), 3),
        "p99_ms": round(percentile(samples_ms, 0.99), 3),
        "max_ms": round(max(samples_ms), 3),
    }


def measure(base: str, bench_url: str, key: str, specialty: str) -> dict:
    import httpx
    import psycopg

    headers = {"Authorization": f"Bearer {key}"}
    client = httpx.Client(base_url=base, timeout=10, headers=headers)
    cursor = None
    for _ in range(19):  # walk to page 20 once; that page is then fetched repeatedly
        body = client.get("/api/v1/citas/disponibles/", params={"page_size": 10, **(
            {"cursor": cursor} if cursor else {})}).json()  # fmt: skip
        cursor = body["next_cursor"]
    requests = {
        "available_p1": ("/api/v1/citas/disponibles/", {"page_size": 10}),
        "available_p20": ("/api/v1/citas/disponibles/", {"page_size": 10, "cursor": cursor}),
        "available_specialty": (
            "/api/v1/citas/disponibles/",
            {"page_size": 10, "specialty": specialty},
        ),
        "health": ("/api/v1/health/", {}),
        "noop": ("/bench/noop/", {}),
    }
    samples: dict[str, list[float]] = {name: [] for name in [*requests, "select1"]}
    statuses: dict[str, set[int]] = {name: set() for name in requests}
    with psycopg.connect(bench_url, autocommit=True) as conn:
        for path, params in requests.values():  # warm-up
            for _ in range(20):
                client.get(path, params=params)
        for _ in range(SAMPLES):
            for name, (path, params) in requests.items():
                started = time.perf_counter()
                response = client.get(path, params=params)
                samples[name].append((time.perf_counter() - started) * 1000)
                statuses[name].add(response.status_code)
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            samples["select1"].append((time.perf_counter() - started) * 1000)

    def hit(_: int) -> int:
        return client.get("/api/v1/citas/disponibles/", params={"page_size": 10}).status_code

    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(hit, range(100)))
    client.close()
    return {
        "latency": {name: summary(values) for name, values in samples.items()},
        "statuses": {name: sorted(codes) for name, codes in statuses.items()},
        "concurrent_failures": sum(1 for code in concurrent if code != 200),
    }


def main() -> int:
    url = server_url()
    bench_url = with_database(url, BENCH_DB)
    recreate_database(url)
    proc = None
    try:
        setup_django(bench_url)
        data = load_data()
        port = free_port()
        proc = start_server(bench_url, port)
        base = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/v1/health/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("daphne did not come up")
            time.sleep(0.2)
        figures = measure(base, bench_url, data["key"], data["specialty"])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        if not os.getenv("BENCH_KEEP_DB"):
            drop_database(url)
    from machine_info import machine

    latency = figures["latency"]
    p1 = latency["available_p1"]["p95_ms"]
    ratios = {
        "available_p1_over_noop_p95": round(p1 / latency["noop"]["p95_ms"], 2),
        "available_p1_over_select1_p95": round(p1 / latency["select1"]["p95_ms"], 2),
        "available_p20_over_p1_p95": round(latency["available_p20"]["p95_ms"] / p1, 2),
    }
    goals = {
        "available_p1_over_noop_p95": {
            "goal": GOAL_NOOP_RATIO,
            "value": ratios["available_p1_over_noop_p95"],
            "met": ratios["available_p1_over_noop_p95"] <= GOAL_NOOP_RATIO,
        },
        "page20_over_page1": {
            "goal": GOAL_PAGE_RATIO,
            "value": ratios["available_p20_over_p1_p95"],
            "met": ratios["available_p20_over_p1_p95"] <= GOAL_PAGE_RATIO,
        },
        "concurrent_failures": {
            "goal": 0,
            "value": figures["concurrent_failures"],
            "met": figures["concurrent_failures"] == 0,
        },
        "all_200": {
            "goal": "every timed request answered 200",
            "met": all(codes == [200] for codes in figures["statuses"].values()),
        },
    }
    result = {
        "benchmark": "api",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "data": {"slots": data["slots"], "doctors": DOCTORS, "specialties": SPECIALTIES},
        "latency": latency,
        "ratios": ratios,
        "goals": goals,
        "statuses": figures["statuses"],
    }
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"{'request':24} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, row in latency.items():
        print(f"{name:24} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['p99_ms']:8.2f}")
    print("ratios:", ratios)
    for name, goal in goals.items():
        print(f"goal {name}: {'met' if goal['met'] else 'MISSED'} ({goal.get('value')})")
    print(f"results: {RESULTS.relative_to(ROOT)}")
    return 0 if all(goal["met"] for goal in goals.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
