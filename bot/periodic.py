"""Periodic jobs of the background worker, and how workers share them.

Each job is a small function returning a count, so tests call it directly. `run_due_jobs()` is
what every `run_worker` process calls in its loop: a job runs when its `PeriodicJob` row is claimed
by a conditional UPDATE (`next_run_at <= now` → `now + interval`), so however many workers run,
each job runs once per interval. The jobs only re-drive business rows (PostgreSQL is the truth),
so one killed half-way is simply run again next time without doubling anything.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bot import processing, state, whatsapp
from bot.models import (
    Conversation,
    ConversationMode,
    Direction,
    Message,
    MessageStatus,
    PeriodicJob,
)
from clinics import services
from clinics.models import Clinic
from integrations import retention, webhooks
from outreach import reminders, waitlist

logger = logging.getLogger(__name__)

# Runs of one message's turn (counted as each starts) before it is set aside for staff.
STRANDED_GIVE_UP_AFTER = processing.MAX_TURN_ATTEMPTS
# How long a received message may wait before the sweeper re-drives its conversation.
STRANDED_AFTER = dt.timedelta(seconds=float(os.getenv("SOPHIA_STRANDED_TURN_SECONDS", "15")))


def deliver_outbox(now: dt.datetime | None = None) -> int:
    """Send (and retry, with the client's backoff) outbound messages that are due."""
    return whatsapp.deliver_due(100)


def pick_up_stranded_turns(now: dt.datetime | None = None, limit: int = 200) -> int:
    """Schedule conversations whose inbound messages wait too long (crashed or lost task).

    Skips conversations whose lock is held (a live worker is on them), those waiting out their
    rate limit, and those that already have a queued `run_turns` task. Scheduling twice is
    harmless: the row lock serialises turns and a processed message is never taken again.

    This is also what sets aside a message whose turn kills or hangs its worker, without that
    worker: once the lock has expired, a message whose runs (counted as each starts) reached
    STRANDED_GIVE_UP_AFTER goes to staff, and the conversation's next message gets its turn.
    """
    now = now or timezone.now()
    waiting = (
        Message.objects.filter(
            direction=Direction.IN,
            status=MessageStatus.RECEIVED,
            created_at__lt=now - STRANDED_AFTER,
        )
        .exclude(conversation__rate_limited_until__gt=now)
        .order_by()  # DISTINCT over these two columns only, not the default ordering's
        .values_list("conversation_id", "conversation__wa_id")
        .distinct()[:limit]
    )
    waiting = list(waiting)
    if not waiting:
        return 0
    # One read of the queue, not one per conversation: under a backlog every waiting message
    # is older than STRANDED_AFTER and nearly all of them have their turn queued.
    queued = set(
        DBTaskResult.objects.ready()
        .filter(task_path=processing.run_turns.module_path)
        .values_list("args_kwargs__args__0", flat=True)
    )
    scheduled = 0
    for conversation_id, wa_id in waiting:
        if conversation_id in queued or state.is_locked(wa_id):
            continue
        oldest = processing.oldest_pending(conversation_id)
        if oldest is not None and oldest.attempts >= STRANDED_GIVE_UP_AFTER:
            try:
                processing.give_up_on(oldest.pk)
            except OperationalError:
                # Its row is still held by the worker that hung on it: next sweep.
                logger.warning("conversation %s is held by a hung turn", conversation_id)
                continue
        processing.schedule_turns(conversation_id)
        scheduled += 1
    if scheduled:
        logger.info("picked up %d conversations with stranded turns", scheduled)
    return scheduled


def close_idle_conversations(now: dt.datetime | None = None, limit: int = 500) -> int:
    """Close bot conversations idle for SOPHIA_SESSION_IDLE_MINUTES (FINALIZADO), freeing holds."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(minutes=settings.SOPHIA_SESSION_IDLE_MINUTES)
    idle = Conversation.objects.filter(
        closed_at=None, last_activity_at__lt=cutoff, mode=ConversationMode.BOT
    )
    closed = 0
    for conversation_id in list(idle.values_list("pk", flat=True)[:limit]):
        with transaction.atomic():
            # SKIP LOCKED: a conversation in the middle of a turn is not idle.
            conversation = (
                idle.select_for_update(skip_locked=True, of=("self",))
                .select_related("clinic")
                .filter(pk=conversation_id)
                .first()
            )
            if conversation is None:
                continue
            processing.close_conversation(conversation, now)
            conversation.save(update_fields=["state", "closed_at", "context", "updated_at"])
            closed += 1
    if closed:
        logger.info("closed %d idle conversations", closed)
    return closed


def expire_holds(now: dt.datetime | None = None) -> int:
    return services.holds_expire(now=now)


def prune_task_results(now: dt.datetime | None = None) -> int:
    """Delete finished task results, and RUNNING ones left behind by killed workers."""
    now = now or timezone.now()
    keep = dt.timedelta(hours=getattr(settings, "SOPHIA_TASK_RESULTS_KEEP_HOURS", 6))
    finished, _ = DBTaskResult.objects.finished().filter(finished_at__lt=now - keep).delete()
    # Our tasks take seconds; one "running" for a day belonged to a worker that died. Its work
    # was re-driven by the sweepers from the business rows.
    stale, _ = (
        DBTaskResult.objects.running().filter(started_at__lt=now - dt.timedelta(days=1)).delete()
    )
    return finished + stale


def keep_agendas_generated(now: dt.datetime | None = None) -> int:
    """Each clinic's slots stay generated over its rolling booking horizon (and its country's
    holidays loaded); idempotent, so a run cut short is simply done again next time."""
    created = 0
    for clinic in Clinic.objects.order_by("pk"):
        try:
            created += services.agenda_keep_generated(clinic=clinic)
        except Exception:
            # One clinic's bad data must not keep the others' agendas from rolling forward.
            logger.exception("keeping the agenda of clinic %s generated failed", clinic.pk)
    return created


def redrive_webhooks(now: dt.datetime | None = None) -> int:
    return webhooks.deliveries_redrive(now)


def purge_expired(now: dt.datetime | None = None) -> int:
    return retention.purge_expired(now)


@dataclass(frozen=True)
class Job:
    name: str
    every: dt.timedelta
    run: Callable[[dt.datetime | None], int]


JOBS = (
    Job("deliver_outbox", dt.timedelta(seconds=1), deliver_outbox),
    Job("pick_up_stranded_turns", dt.timedelta(seconds=5), pick_up_stranded_turns),
    Job("expire_holds", dt.timedelta(seconds=30), expire_holds),
    Job("close_idle_conversations", dt.timedelta(seconds=60), close_idle_conversations),
    Job("prune_task_results", dt.timedelta(hours=1), prune_task_results),
    Job("keep_agendas_generated", dt.timedelta(hours=1), keep_agendas_generated),
    Job("plan_reminders", dt.timedelta(seconds=30), reminders.reminders_job),
    Job("waitlist_sweep", dt.timedelta(seconds=30), waitlist.waitlist_sweep),
    # Outgoing webhooks: due retries and attempts whose worker died (integrations.webhooks).
    Job("redrive_webhooks", dt.timedelta(seconds=5), redrive_webhooks),
    Job("purge_expired", dt.timedelta(hours=1), purge_expired),
)


def ensure_jobs(jobs: tuple[Job, ...] = JOBS) -> None:
    """Create the PeriodicJob rows (due now) that don't exist yet; safe with many workers."""
    PeriodicJob.objects.bulk_create(
        [PeriodicJob(name=job.name) for job in jobs], ignore_conflicts=True
    )


def claim(job: Job, now: dt.datetime) -> bool:
    """True if this caller won the job's current run (exactly one caller per interval does)."""
    return (
        PeriodicJob.objects.filter(name=job.name, next_run_at__lte=now).update(
            next_run_at=now + job.every, last_run_at=now
        )
        == 1
    )


def run_due_jobs(
    jobs: tuple[Job, ...] = JOBS,
    now: dt.datetime | None = None,
    keep_going: Callable[[], bool] = lambda: True,
) -> dict[str, int]:
    """Claim and run every due job; returns {name: count} for those this caller ran."""
    now = now or timezone.now()
    due = set(
        PeriodicJob.objects.filter(
            name__in=[job.name for job in jobs], next_run_at__lte=now
        ).values_list("name", flat=True)
    )
    ran: dict[str, int] = {}
    for job in jobs:
        if job.name not in due or not keep_going() or not claim(job, now):
            continue
        try:
            ran[job.name] = job.run(None)
        except Exception:
            # The claim already moved next_run_at forward: a failing job backs off by its interval
            # instead of spinning.
            logger.exception("periodic job %s failed", job.name)
            continue
        # The frequent sweeps are quiet when they find nothing.
        level = (
            logging.INFO if ran[job.name] or job.every >= dt.timedelta(minutes=1) else logging.DEBUG
        )
        logger.log(level, "periodic %s: %d", job.name, ran[job.name])
    return ran
