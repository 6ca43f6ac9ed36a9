"""Reminders benchmark (issue 10): 10,000 appointments' reminders sent inside the clinic's sending
window by one worker, then by two, none twice, against a floor measured in the same run.

Runs on its own database `sophia_bench_reminders_<pid>` (created on the PostgreSQL of
DATABASE_URL, dropped afterwards unless BENCH_KEEP_DB=1), with real `run_worker` processes and
the fake Graph API of tests/fakes in a child process (its own GIL) that reports every template it
receives.

Per round (BENCH_REMINDERS appointments, default 10,000, all due — they start in 2–23 hours and
were booked two days ago): the clinic's sending window opens a few seconds after the workers
start and closes BENCH_WINDOW_MINUTES (default 60) later. Checked: nothing is sent before the
window opens; every appointment gets exactly one reminder; the last one arrives before the
window closes. Round 1 runs one worker, round 2 two workers (the reminders, messages and
conversations of round 1 are deleted in between).

Floor: one process POSTing the same number of template bodies straight to the same fake Graph
API with httpx (no database, no outbox): what the WhatsApp calls alone cost on this machine at
this moment. Measured before round 1 and after round 2; the higher rate is the floor (a quiet
moment for the floor can't flatter the ratio). Reported: reminders/s ÷ floor/s per round.

Figures → bench/results/reminders.json.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from machine_info import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "reminders.json"
BENCH_DB = f"sophia_bench_reminders_{os.getpid()}"
RUN = os.getpid() % 1000
PHONE_ID = "177777777777701"
APPOINTMENTS = int(os.getenv("BENCH_REMINDERS", "10000"))
WINDOW_MINUTES = int(os.getenv("BENCH_WINDOW_MINUTES", "60"))
OPENS_AFTER_SECONDS = 8
DOCTORS = 50

GOALS = {"within_window": True, "duplicates_max": 0, "missing_max": 0, "sent_early_max": 0}


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def admin_sql(server: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(with_database(server, "postgres"), autocommit=True) as conn:
        conn.execute(statement)


def app_env(db_url: str, redis_url: str, graph_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sophia_web.settings",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "sophia-bench-only",
        "DEBUG": "False",
        "WHATSAPP_API_URL": graph_url,
        "WHATSAPP_ACCESS_TOKEN": "bench-token",
        "WHATSAPP_APP_SECRET": "bench-app-secret",
        "LOG_LEVEL": "WARNING",
        "TASKS_LOG_LEVEL": "WARNING",
    }


# --- the fake Graph API in its own process ----------------------------------------------------


def serve_graph(receipts, ready) -> None:
    """Child process: the fake Graph API; reports (monotonic time, payload) of every template."""
    import signal
    from http.server import ThreadingHTTPServer

    from tests.fakes.graph_server import FakeGraphServer, _Handler

    class CountingGraph(FakeGraphServer):
        def start(self) -> FakeGraphServer:
            fake = self

            class Handler(_Handler):
                server_fake = fake

            self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self._server.daemon_threads = True
            threading.Thread(target=self._server.serve_forever, daemon=True).start()
            return self

        def _handle(self, path, headers, raw):
            at = time.monotonic()
            answer = super()._handle(path, headers, raw)
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                body = json.loads(raw or b"{}")
                if body.get("type") == "template" and answer[0] == 200:
                    button = body["template"]["components"][1]
                    receipts.put((at, button["parameters"][0]["payload"]))
            return answer

        def _answer(self, headers, body):
            status, answer, extra, wamid = super()._answer(headers, body)
            self.requests.clear()  # nothing reads them here
            return status, answer, extra, wamid

    server = CountingGraph().start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    ready.put(server.url)
    stopped.wait()
    server.stop()


class Graph:
    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._queue = context.Queue()
        ready = context.Queue()
        self._process = context.Process(target=serve_graph, args=(self._queue, ready), daemon=True)
        self._process.start()
        self.url = ready.get(timeout=60)
        self.receipts: list[tuple[float, str]] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._arrived:
                self.receipts.append(item)
                self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.receipts) >= count, timeout)

    def take(self) -> list[tuple[float, str]]:
        with self._arrived:
            taken, self.receipts = self.receipts, []
        return taken

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(timeout=10)
        self._queue.put(None)


# --- data ------------------------------------------------------------------------------------


def load_data() -> None:
    """One clinic, DOCTORS doctors, APPOINTMENTS patients each with one appointment due."""
    from django.core.management import call_command
    from django.utils import timezone

    from clinics.models import Appointment, Clinic, Doctor, Patient, Slot, Specialty

    call_command("migrate", verbosity=0)
    clinic = Clinic.objects.create(
        slug="bench", name="Clínica Recordatorios", phone_number_id=PHONE_ID
    )
    specialty = Specialty.objects.create(clinic=clinic, slug="general", name="Medicina General")
    doctors = Doctor.objects.bulk_create(
        Doctor(clinic=clinic, full_name=f"Dr. Bench {d + 1}") for d in range(DOCTORS)
    )
    for doctor in doctors:
        doctor.specialties.add(specialty)
    per_doctor = -(-APPOINTMENTS // DOCTORS)
    minutes = max(1, (21 * 60) // per_doctor)  # spread over 2 h … 23 h from now
    first = (timezone.now() + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    slots = Slot.objects.bulk_create(
        (
            Slot(
                clinic=clinic,
                doctor=doctors[n % DOCTORS],
                start_at=first + dt.timedelta(minutes=minutes * (n // DOCTORS)),
                end_at=first + dt.timedelta(minutes=minutes * (n // DOCTORS + 1)),
                status="booked",
            )
            for n in range(APPOINTMENTS)
        ),
        batch_size=2000,
    )
    patients = Patient.objects.bulk_create(
        (
            Patient(
                clinic=clinic,
                document=f"{60000000 + n}",
                full_name=f"Paciente Recordatorio {n}",
                birth_date=dt.date(1980, 1, 1),
                whatsapp_id=f"574{RUN:03d}{n:06d}",
            )
            for n in range(APPOINTMENTS)
        ),
        batch_size=2000,
    )
    Appointment.objects.bulk_create(
        (
            Appointment(
                clinic=clinic,
                patient=patient,
                slot=slot,
                doctor_id=slot.doctor_id,
                specialty=specialty,
                start_at=slot.start_at,
                end_at=slot.end_at,
                source="bot",
            )
            for patient, slot in zip(patients, slots, strict=True)
        ),
        batch_size=2000,
    )
    Appointment.objects.update(created_at=timezone.now() - dt.timedelta(days=2))


def reset_round(open_at: dt.datetime) -> None:
    """Forget what the previous round sent; the window opens at `open_at` (clinic time)."""
    from django_tasks_db.models import DBTaskResult

    from bot.models import Conversation, Message, PeriodicJob
    from clinics.models import Clinic
    from outreach.models import OutreachSettings, ReminderDispatch

    ReminderDispatch.objects.all().delete()
    Message.objects.all().delete()
    Conversation.objects.all().delete()
    DBTaskResult.objects.all().delete()
    PeriodicJob.objects.all().delete()
    clinic = Clinic.objects.get()
    local = open_at.astimezone(clinic.tz)
    closes = local + dt.timedelta(minutes=WINDOW_MINUTES)
    OutreachSettings.objects.update_or_create(
        clinic=clinic,
        defaults={"window_start": local.time(), "window_end": closes.time()},
    )
    # The reminders job's first run is due when the window opens (then every 30 s).
    PeriodicJob.objects.create(name="plan_reminders", next_run_at=open_at)


# --- measuring -------------------------------------------------------------------------------


def floor(graph_url: str, bodies: list[dict]) -> dict:
    """Templates POSTed by one process straight to the fake Graph API."""
    import httpx

    with httpx.Client(timeout=30, headers={"Authorization": "Bearer bench-token"}) as client:
        started = time.monotonic()
        for body in bodies:
            client.post(f"{graph_url}/{PHONE_ID}/messages", json=body).raise_for_status()
        seconds = time.monotonic() - started
    return {
        "posts": len(bodies),
        "seconds": round(seconds, 2),
        "per_second": round(len(bodies) / seconds, 1),
    }


def floor_bodies() -> list[dict]:
    from bot.whatsapp import template_payload
    from outreach.reminders import template_components

    return [
        template_payload(
            f"575{RUN:03d}{n:06d}",
            "recordatorio_cita",
            "es",
            template_components(
                f"floor:confirm:{n}",
                f"floor:cancel:{n}",
                ["Ana", "jueves 3 de diciembre", "9:00 a. m.", "Dr. Bench"],
            ),
        )
        for n in range(APPOINTMENTS)
    ]


def start_worker(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--interval", "0.05"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_round(workers: int, env: dict, graph: Graph, logs: Path) -> dict:
    from django.utils import timezone

    from bot.models import Message
    from outreach.models import ReminderDispatch

    open_at = (timezone.now() + dt.timedelta(seconds=OPENS_AFTER_SECONDS)).replace(microsecond=0)
    reset_round(open_at)
    graph.take()
    opens_in = (open_at - timezone.now()).total_seconds()
    opens_mono = time.monotonic() + opens_in
    closes_mono = opens_mono + WINDOW_MINUTES * 60
    procs = [start_worker(env, logs / f"round{workers}-worker{i}.log") for i in range(workers)]
    try:
        done = graph.wait_for(APPOINTMENTS, timeout=opens_in + WINDOW_MINUTES * 60)
        # Anything more (a second copy) would arrive right behind: give it a moment.
        time.sleep(3)
    finally:
        stop(procs)
    receipts = graph.take()
    ids = [payload.rsplit(":", 1)[1] for _at, payload in receipts]
    times = sorted(at for at, _payload in receipts)
    first, last = (times[0], times[-1]) if times else (opens_mono, opens_mono)
    sending_seconds = max(last - first, 1e-6)
    return {
        "workers": workers,
        "appointments": APPOINTMENTS,
        "all_sent": done,
        "received": len(receipts),
        "distinct_appointments": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "missing": APPOINTMENTS - len(set(ids)),
        "sent_before_window_opened": sum(1 for at in times if at < opens_mono),
        "first_after_open_s": round(first - opens_mono, 2),
        "last_after_open_s": round(last - opens_mono, 2),
        "window_s": WINDOW_MINUTES * 60,
        "within_window": bool(times) and last < closes_mono,
        "sending_seconds": round(sending_seconds, 2),
        "per_second": round(len(receipts) / sending_seconds, 1),
        "reminder_rows_queued": ReminderDispatch.objects.filter(status="queued").count(),
        "outbox_messages": Message.objects.count(),
    }


def main() -> int:
    server = os.getenv("DATABASE_URL", "")
    if not server.startswith(("postgres://", "postgresql://")):
        sys.exit("bench_reminders needs DATABASE_URL pointing at PostgreSQL (use `make bench`)")
    redis_url = urlunsplit(
        urlsplit(os.getenv("REDIS_URL", "redis://127.0.0.1:6379/15"))._replace(
            path=f"/{os.getenv('BENCH_REDIS_DB', '11')}"
        )
    )
    admin_sql(server, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    admin_sql(server, f"CREATE DATABASE {BENCH_DB}")
    graph = Graph()
    env = app_env(with_database(server, BENCH_DB), redis_url, graph.url)
    for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "LOG_LEVEL", "DJANGO_SETTINGS_MODULE"):
        os.environ[key] = env[key]
    import django

    django.setup()
    logs = Path(os.getenv("BENCH_LOG_DIR", "/tmp")) / "sophia-bench-reminders"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        print(f"loading {APPOINTMENTS} appointments", flush=True)
        load_data()
        bodies = floor_bodies()
        floor_before = floor(graph.url, bodies)
        graph.take()
        print(f"floor: {floor_before['per_second']}/s; round 1: one worker", flush=True)
        one = run_round(1, env, graph, logs)
        print(f"  {one['per_second']}/s; round 2: two workers", flush=True)
        two = run_round(2, env, graph, logs)
        print(f"  {two['per_second']}/s", flush=True)
        floor_after = floor(graph.url, bodies)
        graph.take()
    finally:
        graph.stop()
        from django.db import connections

        connections.close_all()
        if os.getenv("BENCH_KEEP_DB") != "1":
            admin_sql(server, f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")

    floor_rate = max(floor_before["per_second"], floor_after["per_second"])
    for result in (one, two):
        result["ratio_to_floor"] = round(result["per_second"] / floor_rate, 3)
    goals_met = {
        f"{name}_{check}": ok
        for name, r in (("one_worker", one), ("two_workers", two))
        for check, ok in (
            ("within_window", r["within_window"]),
            ("no_duplicates", r["duplicates"] == 0),
            ("none_missing", r["missing"] == 0),
            ("nothing_early", r["sent_before_window_opened"] == 0),
        )
    }
    results = {
        "benchmark": "reminders",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "goals": GOALS,
        "floor": {"before": floor_before, "after": floor_after, "per_second": floor_rate},
        "one_worker": one,
        "two_workers": two,
        "two_over_one": round(two["per_second"] / one["per_second"], 3)
        if one["per_second"]
        else None,
        "goals_met": goals_met,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(
        f"{'':14}{'sent':>8}{'dup':>6}{'miss':>6}{'early':>7}{'last s':>9}{'/s':>9}{'÷ floor':>9}"
    )
    for name, r in (("one worker", one), ("two workers", two)):
        print(
            f"{name:14}{r['received']:>8}{r['duplicates']:>6}{r['missing']:>6}"
            f"{r['sent_before_window_opened']:>7}{r['last_after_open_s']:>9}{r['per_second']:>9}"
            f"{r['ratio_to_floor']:>9}"
        )
    print(
        f"floor (httpx straight to the fake Graph API): {floor_rate}/s; window {WINDOW_MINUTES} min"
    )
    print(f"results → {RESULTS.relative_to(ROOT)}")
    return 0 if all(goals_met.values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
