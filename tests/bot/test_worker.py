"""The background worker: periodic jobs, and `run_worker` as a real process on the test database.

Subprocess workers run the echo engine below (so these tests don't depend on the engine's
wording); everything else — webhook, tasks, Redis lock, outbox, fake Graph API over HTTP — is real.
"""

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bot import engine, periodic, processing, state, whatsapp
from bot.management.commands.run_worker import SophiaWorker
from bot.messages import Reply
from bot.models import Conversation, Direction, Message, MessageStatus, PeriodicJob
from clinics import services
from clinics.models import SlotHold
from tests.bot.test_processing import APP_SECRET, WA_ID, receive, text_message
from tests.conftest import eventually
from tests.fakes import graph_server

fake_graph = graph_server.fake_graph  # the fixture

ROOT = Path(__file__).resolve().parents[2]


def echo_step(snapshot, inbound, ctx) -> engine.StepResult:
    """The subprocess workers' engine: answers "eco: <text>"."""
    return engine.StepResult(
        replies=[Reply(kind="text", text=f"eco: {inbound.text}")],
        snapshot=engine.Snapshot(state=engine.State.IDENTIFIED, data={}),
    )


ECHO_WORKER = (
    "import sys, django; django.setup()\n"
    "from bot import engine\n"
    "from tests.bot.test_worker import echo_step\n"
    "engine.step = echo_step\n"
    "from django.core.management import call_command\n"
    "call_command('run_worker', *sys.argv[1:])\n"
)


class Workers:
    """Start `run_worker` processes against the test database; stops them all at teardown."""

    def __init__(self, tmp_path: Path, graph_url: str) -> None:
        self.tmp_path = tmp_path
        self.graph_url = graph_url
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def env(self) -> dict[str, str]:
        db = connection.settings_dict
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="sophia_web.settings",
            DATABASE_URL=(
                f"postgresql://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
            ),
            REDIS_URL=settings.REDIS_URL,
            SECRET_KEY="worker-tests",
            WHATSAPP_API_URL=self.graph_url,
            WHATSAPP_ACCESS_TOKEN="test-access-token",
            WHATSAPP_APP_SECRET=APP_SECRET,
            SOPHIA_STRANDED_TURN_SECONDS="0.5",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        log = self.tmp_path / f"worker-{len(self.procs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", ECHO_WORKER, "--interval", "0.05", "--processes", "1", *args],
            cwd=ROOT,
            env={**self.env(), **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append((proc, log))
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return next(log for p, log in self.procs if p is proc).read_text()

    def all_logs(self) -> str:
        return "".join(log.read_text() for _, log in self.procs)

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def workers(transactional_db, fake_graph, tmp_path, settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    pool = Workers(tmp_path, fake_graph.url)
    yield pool
    pool.stop_all()  # before the database is flushed


# --- periodic jobs, called directly ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_gives_a_due_periodic_job_to_exactly_one_of_many_claimers():
    periodic.ensure_jobs()
    job = periodic.JOBS[0]
    now = timezone.now()
    wins = []
    barrier = threading.Barrier(8)

    def contend() -> None:
        try:
            barrier.wait()
            wins.append(periodic.claim(job, now))
        finally:
            connection.close()

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    assert PeriodicJob.objects.get(name=job.name).next_run_at == now + job.every


@pytest.mark.django_db
def test_it_runs_only_due_jobs(monkeypatch):
    ran = []
    jobs = (
        periodic.Job("due", dt.timedelta(minutes=1), lambda now: ran.append("due") or 3),
        periodic.Job("later", dt.timedelta(minutes=1), lambda now: ran.append("later") or 0),
    )
    periodic.ensure_jobs(jobs)
    PeriodicJob.objects.filter(name="later").update(
        next_run_at=timezone.now() + dt.timedelta(minutes=5)
    )
    assert periodic.run_due_jobs(jobs) == {"due": 3}
    assert periodic.run_due_jobs(jobs) == {}  # claimed for the next minute
    assert ran == ["due"]


@pytest.mark.django_db
def test_it_survives_a_failing_job():
    def broken(now):
        raise RuntimeError("boom")

    jobs = (periodic.Job("broken", dt.timedelta(seconds=30), broken),)
    periodic.ensure_jobs(jobs)
    assert periodic.run_due_jobs(jobs) == {}
    # It backs off by its interval instead of spinning.
    assert PeriodicJob.objects.get(name="broken").next_run_at > timezone.now()


@pytest.mark.django_db(transaction=True)
def test_it_delivers_the_due_outbox(clinic, fake_graph):
    conversation = Conversation.objects.create(clinic=clinic, wa_id=WA_ID)
    whatsapp.queue_replies(conversation, [Reply(kind="text", text="hola de nuevo")])
    assert periodic.deliver_outbox() == 1
    assert [m.text for m in fake_graph.wait_for_messages(1)] == ["hola de nuevo"]
    assert periodic.deliver_outbox() == 0


@pytest.mark.django_db(transaction=True)
def test_it_picks_up_stranded_turns_but_not_locked_ones(clinic, fake_graph, settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    conversation = receive(clinic, text_message("hola"))
    DBTaskResult.objects.all().delete()  # the task was lost
    later = timezone.now() + dt.timedelta(minutes=1)

    assert periodic.pick_up_stranded_turns(now=timezone.now()) == 0  # too recent
    lock = state.acquire_lock(WA_ID)
    assert periodic.pick_up_stranded_turns(now=later) == 0  # a live worker holds it
    state.release_lock(WA_ID, lock.token)
    assert periodic.pick_up_stranded_turns(now=later) == 1
    (task,) = DBTaskResult.objects.ready()
    assert task.args_kwargs["args"][0] == conversation.pk


@pytest.mark.django_db(transaction=True)
def test_it_schedules_a_conversation_once_however_many_messages_wait(clinic, settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    for text in ("uno", "dos", "tres"):
        receive(clinic, text_message(text))
    DBTaskResult.objects.all().delete()
    later = timezone.now() + dt.timedelta(minutes=1)
    assert periodic.pick_up_stranded_turns(now=later) == 1
    assert DBTaskResult.objects.ready().count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_sets_aside_a_message_whose_turn_keeps_dying(clinic, fake_graph, settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    conversation = receive(clinic, text_message("uno"))
    receive(clinic, text_message("dos"))
    DBTaskResult.objects.all().delete()
    first = conversation.messages.order_by("id").first()
    Message.objects.filter(pk=first.pk).update(attempts=periodic.STRANDED_GIVE_UP_AFTER)

    later = timezone.now() + dt.timedelta(minutes=1)
    assert periodic.pick_up_stranded_turns(now=later) == 1
    first.refresh_from_db()
    assert first.status == MessageStatus.PROCESSED
    assert "failed attempts" in first.error
    conversation.refresh_from_db()
    assert conversation.needs_staff
    (apology,) = fake_graph.wait_for_messages(1)
    assert "equipo" in apology.text
    # The next message still gets its turn.
    assert conversation.messages.filter(status=MessageStatus.RECEIVED).count() == 1
    assert DBTaskResult.objects.ready().count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_closes_idle_conversations_and_frees_their_holds(clinic, slots, r):
    idle = Conversation.objects.create(
        clinic=clinic,
        wa_id=WA_ID,
        state="CONFIRMING",
        context={"held_slot": slots[0].pk, "specialty": "medicina-general"},
    )
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder=f"conversation:{idle.pk}")
    state.save_session(WA_ID, {"estado_flujo": "CITA_SELECCIONADA"})
    recent = Conversation.objects.create(clinic=clinic, wa_id="573009999999", state="IDENTIFIED")
    staff = Conversation.objects.create(clinic=clinic, wa_id="573008888888", mode="human")
    long_ago = timezone.now() - dt.timedelta(minutes=31)
    Conversation.objects.filter(pk__in=[idle.pk, staff.pk]).update(last_activity_at=long_ago)

    assert periodic.close_idle_conversations() == 1
    idle.refresh_from_db()
    assert idle.state == "CLOSED"
    assert idle.closed_at is not None
    assert idle.context == {}  # identity failures live in the database, not here
    assert not SlotHold.objects.filter(released_at=None).exists()
    assert r.exists(f"sophia:session:{WA_ID}") == 0
    recent.refresh_from_db()
    staff.refresh_from_db()
    assert recent.closed_at is None and staff.closed_at is None
    assert periodic.close_idle_conversations() == 0


@pytest.mark.django_db
def test_it_prunes_old_task_results():
    run_turns = processing.run_turns

    old, fresh, ready = (run_turns.enqueue(n, 0) for n in (1, 2, 3))
    long_ago = timezone.now() - dt.timedelta(days=2)
    DBTaskResult.objects.filter(pk__in=[old.id, fresh.id]).update(
        status="SUCCESSFUL", finished_at=timezone.now()
    )
    DBTaskResult.objects.filter(pk=old.id).update(finished_at=long_ago)
    assert periodic.prune_task_results() == 1
    assert set(DBTaskResult.objects.values_list("pk", flat=True)) == {
        DBTaskResult.objects.get(pk=fresh.id).pk,
        DBTaskResult.objects.get(pk=ready.id).pk,
    }


@pytest.mark.django_db
def test_it_expires_holds_through_the_booking_core(clinic, slots):
    services.slot_hold(clinic=clinic, slot_id=slots[0].pk, holder="conversation:1")
    later = timezone.now() + dt.timedelta(hours=1)
    assert periodic.expire_holds(now=later) == 1


# --- run_worker as a process -----------------------------------------------------------------


def test_it_runs_turns_and_exits_cleanly_on_sigterm(workers, clinic, fake_graph):
    proc = workers.start()
    receive(clinic, text_message("hola"))
    fake_graph.wait_for_messages(1, timeout=20)
    assert fake_graph.messages_to(WA_ID)[0].text == "eco: hola"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert "stopped" in workers.log(proc)


def test_it_loses_and_doubles_nothing_when_a_worker_is_killed_mid_turn(
    workers, clinic, fake_graph, r
):
    receive(clinic, text_message("uno"))
    conversation = receive(clinic, text_message("dos"))
    db = connection.settings_dict
    params = {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "dbname": db["NAME"],
    }
    blocker = psycopg.connect(**params)
    try:
        # Hold the conversation row so the worker's turn stops inside its transaction.
        blocker.execute(
            "SELECT id FROM bot_conversation WHERE id = %s FOR UPDATE", [conversation.pk]
        )
        first = workers.start()

        def worker_waits_on_the_row() -> bool:
            # From a second connection: statistics views are frozen inside a transaction.
            with psycopg.connect(**params, autocommit=True) as watcher:
                row = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    [blocker.info.backend_pid],
                ).fetchone()
            return row[0] > 0

        eventually(worker_waits_on_the_row, what="the worker blocked mid-turn")
        first.kill()
        first.wait(timeout=10)
    finally:
        blocker.rollback()
        blocker.close()

    assert conversation.messages.filter(status=MessageStatus.RECEIVED).count() == 2
    assert DBTaskResult.objects.running().exists()  # left behind by the dead worker
    r.delete(f"sophia:lock:{WA_ID}")  # what its 60-second TTL would do

    second = workers.start()
    fake_graph.wait_for_messages(2, timeout=30)
    eventually(
        lambda: not conversation.messages.filter(status=MessageStatus.RECEIVED).exists(),
        what="every message processed",
    )
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=15) == 0
    assert [m.text for m in fake_graph.messages_to(WA_ID)] == ["eco: uno", "eco: dos"]
    assert Message.objects.filter(direction=Direction.OUT).count() == 2


def test_it_runs_each_periodic_job_once_across_two_workers(workers):
    procs = [workers.start(), workers.start()]
    eventually(
        lambda: (
            all("started" in workers.log(p) for p in procs)
            and PeriodicJob.objects.filter(last_run_at__isnull=False).count() == len(periodic.JOBS)
        ),
        what="both workers up and every job run",
    )
    # Make every job due again while both are running: each must run exactly once more.
    before = timezone.now()
    PeriodicJob.objects.update(next_run_at=before)
    eventually(
        lambda: not PeriodicJob.objects.filter(next_run_at__lte=before).exists(),
        what="every job claimed again",
    )
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=15) for p in procs] == [0, 0]
    logs = workers.all_logs()
    assert logs.count("periodic close_idle_conversations:") == 2
    assert logs.count("periodic prune_task_results:") == 2


def test_it_backs_off_instead_of_crashing_when_the_database_is_away(workers):
    # A database that cannot be opened (PostgreSQL's pool would wait 30 s before failing).
    proc = workers.start(DATABASE_URL="sqlite:////nonexistent/dir/sophia.sqlite3")
    eventually(lambda: "retrying in" in workers.log(proc), what="a backoff logged")
    assert proc.poll() is None  # still alive, waiting for the database
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def child_pids(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def test_it_runs_and_supervises_one_worker_process_per_cpu(workers, clinic, fake_graph):
    log = workers.tmp_path / "supervisor.log"
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--processes", "2", "--interval", "0.05"],
        cwd=ROOT,
        env=workers.env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        eventually(lambda: len(child_pids(proc.pid)) == 2, what="two worker processes")
        receive(clinic, text_message("hola"))
        fake_graph.wait_for_messages(1, timeout=30)  # a real engine's greeting

        first = min(child_pids(proc.pid))
        os.kill(first, signal.SIGKILL)  # a worker process dies: another takes its place
        eventually(
            lambda: first not in child_pids(proc.pid) and len(child_pids(proc.pid)) == 2,
            what="the dead worker process replaced",
        )
        assert "exited with -9" in log.read_text()
        survivors = child_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0  # each finishes its task first (slow on a busy machine)
        assert not any(Path(f"/proc/{pid}").exists() for pid in survivors)
        assert "worker processes stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def make_worker(queue_names: list[str]) -> SophiaWorker:
    return SophiaWorker(
        queue_names=queue_names,
        interval=0,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="claimer",
        excluded_queue_names=[],
        periodic_jobs=False,
        periodic_every=1,
    )


@pytest.mark.django_db(transaction=True)
def test_it_claims_ready_tasks_in_their_order_and_records_their_success():
    later = processing.run_turns.using(run_after=timezone.now() + dt.timedelta(minutes=5))
    later.enqueue(1, 0)  # not ready yet
    low = processing.run_turns.using(priority=-10).enqueue(2, 0)
    high = processing.run_turns.using(priority=10).enqueue(3, 0)
    assert make_worker(["other-queue"]).claim_one() is None

    worker = make_worker(["*"])
    with CaptureQueriesContext(connection) as claim:
        claimed = worker.claim_one()
    assert str(claimed.pk) == high.id
    if connection.vendor == "postgresql":
        assert len(claim) == 1  # one UPDATE … RETURNING, not BEGIN/SELECT/UPDATE/COMMIT
    stored = DBTaskResult.objects.get(pk=claimed.pk)
    assert (stored.status, stored.worker_ids) == ("RUNNING", ["claimer"])
    assert stored.started_at is not None
    assert claimed.args_kwargs["args"] == [3, 0]

    worker.run_task(claimed)
    stored.refresh_from_db()
    assert (stored.status, stored.return_value, stored.traceback) == ("SUCCESSFUL", 0, "")
    assert stored.finished_at >= stored.started_at
    assert str(make_worker(["turns"]).claim_one().pk) == low.id
    assert worker.claim_one() is None
