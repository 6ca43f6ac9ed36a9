"""`manage.py run_worker`: django-tasks-db's worker loop plus Sophia's periodic jobs.

A worker process runs queued tasks (turns, outbox…) with django_tasks_db's Worker (its claim
with SKIP LOCKED and its task runner) on `--concurrency` threads (SOPHIA_WORKER_CONCURRENCY; by
default two per CPU shared among the processes: a turn waits on PostgreSQL, Redis and the Graph
API, so threads overlap those waits), and between tasks its first thread claims and runs the
periodic jobs of bot.periodic.

A turn's own work is Python (the ORM, the engine) and one process runs Python on one core at a
time, so `run_worker` starts `--processes` worker processes (SOPHIA_WORKER_PROCESSES; by default
one per CPU, at most MAX_DEFAULT_PROCESSES) and supervises them: a process that dies is started
again, SIGTERM/SIGINT are passed on and waited for. Any number of `run_worker` commands may run
(on one machine or several): claims and periodic jobs are shared through the database.

SIGTERM/SIGINT set a flag: the current task or job finishes, then the process exits 0 (a second
signal exits at once). Errors around the loop (database restarting…) back off exponentially
instead of crash-looping.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from argparse import ArgumentParser
from pathlib import Path
from types import FrameType

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, close_old_connections, connections
from django.tasks import TaskResultStatus
from django.utils import timezone
from django.utils.crypto import get_random_string
from django_tasks_db.management.commands.db_worker import Worker, valid_interval
from django_tasks_db.models import DBTaskResult, get_date_max
from django_tasks_db.utils import exclusive_transaction, is_locked_database_exception, retry

from bot import periodic, processing
from sophia_web import inserts, model_rows

logger = logging.getLogger("bot.worker")

MAX_BACKOFF_SECONDS = 30.0
MAX_CONCURRENCY = 64
MAX_PROCESSES = 64
MAX_DEFAULT_PROCESSES = 4
# How long a stopping supervisor waits for its processes to finish their current task.
STOP_TIMEOUT_SECONDS = 60.0
RESTART_COUNT_RESET_SECONDS = 60.0


def machine_concurrency(processes: int = 1) -> int:
    """Threads per worker process when not configured: two per CPU shared by the processes, at
    most 8 (more threads than that only wait for each other's share of the CPU)."""
    return max(1, min(8, 2 * (os.cpu_count() or 1) // processes))


def machine_processes() -> int:
    """Worker processes when not configured: one per CPU, at most MAX_DEFAULT_PROCESSES.

    On SQLite (the embedded demo) one: it takes one writer at a time, so more processes only
    wait for each other.
    """
    if connections["default"].vendor == "sqlite":
        return 1
    return max(1, min(MAX_DEFAULT_PROCESSES, os.cpu_count() or 1))


class SophiaWorker(Worker):
    def __init__(
        self, *, periodic_jobs: bool, periodic_every: float, concurrency: int = 1, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.periodic_jobs = periodic_jobs
        self.periodic_every = periodic_every
        self.concurrency = concurrency
        self._next_periodic = 0.0
        self._jobs_ready = False
        # One thread looks for a task at a time; idle threads wait here instead of each polling.
        self._claiming = threading.Lock()

    def shutdown(self, signum: int, frame: FrameType | None) -> None:
        if not self.running:
            logger.warning("received %s again: exiting now", signal.strsignal(signum))
            self.reset_signals()
            sys.exit(1)
        logger.info(
            "received %s: finishing the current task, then exiting", signal.strsignal(signum)
        )
        self.running = False

    def run(self) -> None:
        logger.info(
            "worker %s started (queues %s, %d threads)",
            self.worker_id,
            ",".join(self.queue_names),
            self.concurrency,
        )
        # Daemon threads: a second signal's sys.exit() must not wait for them.
        threads = [
            threading.Thread(
                target=self.loop, kwargs={"periodic_jobs": False}, name=f"worker-{i}", daemon=True
            )
            for i in range(1, self.concurrency)
        ]
        for thread in threads:
            thread.start()
        self.loop(periodic_jobs=self.periodic_jobs)  # the main thread, which gets the signals
        for thread in threads:
            thread.join()
        logger.info("worker %s stopped", self.worker_id)

    def loop(self, *, periodic_jobs: bool) -> None:
        """One thread's loop: tasks (and the periodic jobs, on one thread) until shutdown."""
        backoff = 0.0
        while self.running:
            try:
                close_old_connections()
                if periodic_jobs and time.monotonic() >= self._next_periodic:
                    self._next_periodic = time.monotonic() + self.periodic_every
                    if not self._jobs_ready:
                        periodic.ensure_jobs()
                        self._jobs_ready = True
                    periodic.run_due_jobs(keep_going=lambda: self.running)
                with self._claiming:
                    task_result = self.claim_one()
                    if task_result is None:
                        self.pause(self.interval)  # still holding: the others stay asleep
                if task_result is not None:
                    self.run_task(task_result)
                backoff = 0.0
            except Exception:
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2 or 0.5)
                logger.exception("worker loop failed; retrying in %.1f s", backoff)
                close_old_connections()
                self.pause(backoff)
        connections.close_all()  # this thread's connections

    def run_task(self, db_task_result: DBTaskResult) -> None:
        """django-tasks-db's run_task (signals, failures), a success recorded by one
        hand-written UPDATE on PostgreSQL: its `save()` cost a turn more Python than the
        statement cost PostgreSQL (see `_claim_sql`)."""
        if connections[DBTaskResult.objects.db].vendor == "postgresql":
            db_task_result.set_successful = functools.partial(record_success, db_task_result)
        super().run_task(db_task_result)

    def run_one(self) -> bool:
        """Claim one ready task and run it; False when there was none (tests call this)."""
        task_result = self.claim_one()
        if task_result is None:
            return False
        self.run_task(task_result)
        return True

    def claim_one(self) -> DBTaskResult | None:
        """Claim one ready task (SKIP LOCKED, so any number of workers may claim)."""
        if connections[DBTaskResult.objects.db].vendor == "postgresql":
            return claim_ready_task(
                backend_name=self.backend_name,
                queue_names=None if self.process_all_queues else self.queue_names,
                worker_id=self.worker_id,
            )
        tasks = DBTaskResult.objects.ready().filter(backend_name=self.backend_name)
        if not self.process_all_queues:
            tasks = tasks.filter(queue_name__in=self.queue_names)
        with exclusive_transaction(tasks.db):
            try:
                task_result = tasks.get_locked()
                if task_result is not None:
                    task_result.claim(self.worker_id)
            except OperationalError as exc:
                if not is_locked_database_exception(exc):
                    raise
                task_result = None  # SQLite busy: try again next round
        return task_result

    def pause(self, seconds: float) -> None:
        """Sleep in short steps so a shutdown signal is honoured promptly."""
        deadline = time.monotonic() + seconds
        while self.running and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))


@functools.cache
def _claim_sql(queues: int) -> str:
    """One statement that claims the first ready task as django-tasks-db's Worker does (its
    order, SKIP LOCKED, RUNNING with a start time and this worker's id) and returns its row.

    The Worker's own claim is four round trips (BEGIN, the locking SELECT, the UPDATE, COMMIT)
    per task; a burst's turns are one task each, so that was a fifth of a turn's statements.
    """
    c = inserts.columns(DBTaskResult)
    table = connections[DBTaskResult.objects.db].ops.quote_name(DBTaskResult._meta.db_table)
    pk, status, run_after, worker_ids = c["id"], c["status"], c["run_after"], c["worker_ids"]
    in_queues = f"AND {c['queue_name']} IN ({', '.join(['%s'] * queues)})" if queues else ""
    returning = ", ".join(c.values())
    return (
        f"UPDATE {table} SET {status} = %s, {c['started_at']} = %s, "  # noqa: S608
        f"{worker_ids} = {worker_ids} || %s::jsonb "
        f"WHERE {pk} = (SELECT {pk} FROM {table} "
        f"WHERE {status} = %s AND {c['backend_name']} = %s {in_queues} "
        f"AND ({run_after} = %s OR {run_after} <= %s) "
        f"ORDER BY {c['priority']} DESC, {run_after} ASC, {c['enqueued_at']} ASC "
        f"LIMIT 1 FOR UPDATE SKIP LOCKED) "
        f"RETURNING {returning}"
    )


def claim_ready_task(
    *, backend_name: str, queue_names: list[str] | None, worker_id: str
) -> DBTaskResult | None:
    """Claim the first ready task of these queues (None: all) in one statement (PostgreSQL)."""
    now = timezone.now()
    queues = list(queue_names or [])
    params = [
        TaskResultStatus.RUNNING,
        now,
        json.dumps([worker_id]),
        TaskResultStatus.READY,
        backend_name,
        *queues,
        get_date_max(),
        now,
    ]
    # Loaded by model_rows: a RawQuerySet resolved its columns again for every claim.
    claimed = model_rows.fetch(
        DBTaskResult, _claim_sql(len(queues)), params, using=DBTaskResult.objects.db
    )
    return claimed[0] if claimed else None


@functools.cache
def _success_sql() -> str:
    c = inserts.columns(DBTaskResult)
    table = connections[DBTaskResult.objects.db].ops.quote_name(DBTaskResult._meta.db_table)
    assignments = ", ".join(f"{c[name]} = %s" for name in _SUCCESS_FIELDS)
    return f"UPDATE {table} SET {assignments} WHERE {c['id']} = %s"  # noqa: S608


_SUCCESS_FIELDS = ("status", "finished_at", "return_value", "exception_class_path", "traceback")


@retry()  # as django-tasks-db's own set_successful
def record_success(db_task_result: DBTaskResult, return_value: object) -> None:
    """What `DBTaskResult.set_successful` writes, in one statement built once per process."""
    db_task_result.status = TaskResultStatus.SUCCESSFUL
    db_task_result.finished_at = timezone.now()
    db_task_result.return_value = return_value
    db_task_result.exception_class_path = ""
    db_task_result.traceback = ""
    connection = connections[DBTaskResult.objects.db]
    params = [
        DBTaskResult._meta.get_field(name).get_db_prep_save(
            getattr(db_task_result, name), connection
        )
        for name in _SUCCESS_FIELDS
    ]
    with connection.cursor() as cursor:
        cursor.execute(_success_sql(), [*params, db_task_result.pk])


def _terminate_with_parent() -> None:
    """In a child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class Supervisor:
    """Runs `count` worker processes (each `manage.py run_worker --processes 1 …`), starts again
    one that dies, and on SIGTERM/SIGINT passes the signal on and waits for them to finish."""

    def __init__(self, count: int, child_args: list[str], worker_id: str = "") -> None:
        manage = Path(settings.BASE_DIR) / "manage.py"
        self.command = [sys.executable, str(manage), "run_worker", "--processes", "1", *child_args]
        self.worker_id = worker_id
        self.count = count
        self.running = True
        self.children: dict[int, subprocess.Popen] = {}
        self.started_at: dict[int, float] = {}
        self.restarts: dict[int, int] = {}

    def stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.running:
            logger.warning("received %s again: stopping the worker processes now", signum)
            for child in self.children.values():
                if child.poll() is None:
                    child.kill()
            return
        logger.info(
            "received %s: stopping %d worker processes", signal.strsignal(signum), self.count
        )
        self.running = False
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def start(self, slot: int) -> None:
        # Their own process group: a terminal's Ctrl-C reaches the supervisor only, which passes
        # one SIGTERM on (a second signal would make them drop their task at once). If the
        # supervisor itself is killed, Linux sends them SIGTERM (no orphaned workers).
        command = self.command
        if self.worker_id:  # each process needs its own id: the given one, numbered
            command = [*command, f"--worker-id={self.worker_id}-{slot + 1}"]
        self.children[slot] = subprocess.Popen(  # noqa: S603 - our interpreter and manage.py
            command, process_group=0, preexec_fn=_terminate_with_parent
        )
        self.started_at[slot] = time.monotonic()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        logger.info("starting %d worker processes", self.count)
        for slot in range(self.count):
            self.start(slot)
        restart_at: dict[int, float] = {}
        while self.running:
            for slot, child in self.children.items():
                code = child.poll()
                if code is None or slot in restart_at:
                    continue
                # Crash-looping (a database away at start-up…) backs off instead of spinning; a
                # process that had run a while starts a fresh count.
                if time.monotonic() - self.started_at[slot] > RESTART_COUNT_RESET_SECONDS:
                    self.restarts[slot] = 0
                self.restarts[slot] = self.restarts.get(slot, 0) + 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (self.restarts[slot] - 1))
                logger.error(
                    "worker process %s exited with %s; starting it again in %.1f s",
                    child.pid,
                    code,
                    delay,
                )
                restart_at[slot] = time.monotonic() + delay
            for slot, when in list(restart_at.items()):
                if time.monotonic() >= when and self.running:
                    del restart_at[slot]
                    self.start(slot)
            time.sleep(0.2)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker process %s did not stop in time: killed", child.pid)
                child.kill()
                child.wait()
        logger.info("worker processes stopped")
        return 0


class Command(BaseCommand):
    help = "Run Sophia's background worker: queued tasks and periodic jobs."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--interval",
            type=valid_interval,
            default=0.1,
            help="Seconds to wait when no task is ready (default: %(default)s).",
        )
        parser.add_argument(
            "--queue-name",
            default="*",
            help="Queues to process, comma-separated; '*' for all (default: %(default)s).",
        )
        parser.add_argument(
            "--no-periodic",
            action="store_false",
            dest="periodic_jobs",
            help="Run queued tasks only, no periodic jobs.",
        )
        parser.add_argument(
            "--periodic-every",
            type=valid_interval,
            default=0.5,
            help="How often to look for due periodic jobs, in seconds (default: %(default)s).",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="Worker processes to run and supervise (default: SOPHIA_WORKER_PROCESSES, or "
            "one per CPU up to 4).",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Tasks run at once, on threads (default: SOPHIA_WORKER_CONCURRENCY, or two "
            "per CPU up to 8).",
        )
        parser.add_argument("--worker-id", default="", help="Unique id (default: random).")
        parser.add_argument("--backend", default="default", dest="backend_name")

    def handle(
        self,
        *,
        interval: float,
        queue_name: str,
        periodic_jobs: bool,
        periodic_every: float,
        worker_id: str,
        backend_name: str,
        concurrency: int | None,
        processes: int | None,
        **options,
    ) -> None:
        if processes is None:
            processes = settings.SOPHIA_WORKER_PROCESSES or machine_processes()
        if not 1 <= processes <= MAX_PROCESSES:
            raise CommandError(f"--processes must be between 1 and {MAX_PROCESSES}")
        if concurrency is None:
            concurrency = settings.SOPHIA_WORKER_CONCURRENCY or machine_concurrency(processes)
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise CommandError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
        if processes > 1:
            child_args = [
                f"--interval={interval}",
                f"--queue-name={queue_name}",
                f"--periodic-every={periodic_every}",
                f"--concurrency={concurrency}",
                f"--backend={backend_name}",
            ]
            if not periodic_jobs:
                child_args.append("--no-periodic")
            sys.exit(Supervisor(processes, child_args, worker_id).run())
        worker = SophiaWorker(
            queue_names=queue_name.split(","),
            interval=interval,
            batch=False,
            backend_name=backend_name,
            startup_delay=False,
            max_tasks=None,
            worker_id=worker_id or get_random_string(32),
            excluded_queue_names=[],
            periodic_jobs=periodic_jobs,
            periodic_every=periodic_every,
            concurrency=concurrency,
        )
        worker.configure_signals()
        try:
            processing.warm_up()
        except Exception:
            logger.exception("warm-up failed; the first turn will do it")
        worker.run()
