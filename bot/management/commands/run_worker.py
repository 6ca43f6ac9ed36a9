"""`manage.py run_worker`: django-tasks-db's worker loop plus Sophia's periodic jobs.

One process runs queued tasks (turns, outbox…) with django_tasks_db's Worker (its claim with
SKIP LOCKED and its task runner) on `--concurrency` threads (SOPHIA_WORKER_CONCURRENCY; by default
two per CPU: a turn mostly waits on PostgreSQL, Redis and the Graph API, so threads overlap those
waits), and between tasks the first thread claims and runs the periodic jobs of bot.periodic.
Any number of these processes may run.

SIGTERM/SIGINT set a flag: the current task or job finishes, then the process exits 0 (a second
signal exits at once). Errors around the loop (database restarting…) back off exponentially
instead of crash-looping.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from argparse import ArgumentParser
from types import FrameType

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, close_old_connections, connections
from django.utils.crypto import get_random_string
from django_tasks_db.management.commands.db_worker import Worker, valid_interval
from django_tasks_db.models import DBTaskResult
from django_tasks_db.utils import exclusive_transaction, is_locked_database_exception

from bot import periodic, processing

logger = logging.getLogger("bot.worker")

MAX_BACKOFF_SECONDS = 30.0
MAX_CONCURRENCY = 64


def machine_concurrency() -> int:
    """Threads per worker process when not configured: two per CPU, at most 8."""
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


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

    def run_one(self) -> bool:
        """Claim one ready task and run it; False when there was none (tests call this)."""
        task_result = self.claim_one()
        if task_result is None:
            return False
        self.run_task(task_result)
        return True

    def claim_one(self) -> DBTaskResult | None:
        """Claim one ready task (SKIP LOCKED, so any number of workers may claim)."""
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
        **options,
    ) -> None:
        if concurrency is None:
            concurrency = settings.SOPHIA_WORKER_CONCURRENCY or machine_concurrency()
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise CommandError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
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
