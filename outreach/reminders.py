"""Appointment reminders (issue 10): planned, claimed and queued by the worker, answered by the bot.

1. `reminders_plan()` (periodic) creates one `ReminderDispatch` per (appointment, ordinal) that is
   due — N hours before the start — for clinics inside their sending hours. The unique
   constraint makes this idempotent however many workers plan at once; outside the window
   nothing is planned, so a due reminder waits for the window to open.
2. `reminders_send()` (tasks on the "outreach" queue) takes a batch of due rows (FOR UPDATE SKIP
   LOCKED, so workers share the backlog), re-checks each appointment (not cancelled, not started,
   patient not opted out, clinic inside its window) and queues the approved template in the
   outbox, all in one transaction; then the outbox delivers them. A worker killed half-way rolls
   back: its rows are still pending for the next run, and the outbox's own claim sends each
   message once.
3. The patient's answer (template button or "confirmo" / "cancelar") goes through
   `reminder_respond()`, which confirms or cancels with clinics.services.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.tasks import task
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from bot import whatsapp
from bot.models import Conversation, Message, MessageStatus
from clinics import services
from clinics.models import (
    UPCOMING_STATUSES,
    Appointment,
    AppointmentStatus,
    Clinic,
    Patient,
)
from outreach import replies
from outreach.models import OutreachSettings, ReminderDispatch
from sophia_web import metrics

logger = logging.getLogger(__name__)

# A reminder closer than this to the start is not worth sending any more.
MIN_LEAD = dt.timedelta(minutes=30)
CLAIM_BATCH = 50
DELIVERY_THREADS = 4
PLAN_BATCH = 5000
# One send task stops after this long and queues a follow-up, so a worker stays responsive.
TASK_BUDGET_SECONDS = 20.0
# Send tasks queued at once: how many workers can share a large backlog.
MAX_PARALLEL_TASKS = 8
# "confirmo" / "cancelar" as plain text answer the latest reminder of this age at most.
TEXT_ANSWER_WINDOW = dt.timedelta(days=3)
TASK_PATH = "outreach.reminders.send_reminders"


def clinic_settings(clinic: Clinic) -> OutreachSettings:
    """The clinic's settings row, or the defaults (unsaved) when it has none."""
    found = OutreachSettings.objects.filter(clinic=clinic).first()
    return found if found is not None else OutreachSettings(clinic=clinic)


def _all_settings() -> list[OutreachSettings]:
    rows = {s.clinic_id: s for s in OutreachSettings.objects.select_related("clinic")}
    result = []
    for clinic in Clinic.objects.all():
        found = rows.get(clinic.pk) or OutreachSettings(clinic=clinic)
        found.clinic = clinic
        result.append(found)
    return result


# --- planning --------------------------------------------------------------------------------


def due_appointments(
    settings: OutreachSettings, ordinal: int, lead: dt.timedelta, now: dt.datetime
):
    """Appointments whose reminder `ordinal` is due now and not yet planned.

    Due: the start is within `lead` (and more than MIN_LEAD away); the appointment was booked
    before the reminder fell due; a later reminder is not due yet (it would supersede this one);
    the patient has a WhatsApp number and has not stopped reminders.
    """
    later = [d for o, d in settings.leads() if o > ordinal]
    found = Appointment.objects.filter(
        clinic_id=settings.clinic_id,
        status__in=UPCOMING_STATUSES,
        start_at__gt=now + MIN_LEAD,
        start_at__lte=now + lead,
        created_at__lte=F("start_at") - lead,
        patient__reminders_opted_out_at__isnull=True,
    ).exclude(patient__whatsapp_id="")
    if later:
        found = found.filter(start_at__gt=now + max(later))
    return found.exclude(
        Exists(ReminderDispatch.objects.filter(appointment=OuterRef("pk"), ordinal=ordinal))
    )


def reminders_plan(now: dt.datetime | None = None) -> int:
    """Create the due reminder rows of every clinic inside its sending hours; how many."""
    now = now or timezone.now()
    created = 0
    for settings in _all_settings():
        if not settings.reminders_enabled or not settings.in_window(now):
            continue
        for ordinal, lead in settings.leads():
            rows = list(
                due_appointments(settings, ordinal, lead, now)
                .order_by("start_at", "pk")
                .values_list("pk", "start_at")[:PLAN_BATCH]
            )
            if not rows:
                continue
            # ignore_conflicts: another worker planning at the same moment is harmless.
            ReminderDispatch.objects.bulk_create(
                [
                    ReminderDispatch(
                        clinic_id=settings.clinic_id,
                        appointment_id=pk,
                        ordinal=ordinal,
                        due_at=start_at - lead,
                        created_at=now,
                    )
                    for pk, start_at in rows
                ],
                batch_size=1000,
                ignore_conflicts=True,
            )
            created += len(rows)
    if created:
        logger.info("planned %d reminders", created)
    return created


def pending_count(now: dt.datetime | None = None) -> int:
    now = now or timezone.now()
    return _claimable(now).count()


def _claimable(now: dt.datetime):
    return ReminderDispatch.objects.filter(status=ReminderDispatch.Status.PENDING).filter(
        Q(not_before__isnull=True) | Q(not_before__lte=now)
    )


_senders = ThreadPoolExecutor(max_workers=DELIVERY_THREADS, thread_name_prefix="sophia-reminders")


# --- sending ---------------------------------------------------------------------------------


def _skip_reason(dispatch: ReminderDispatch, settings: OutreachSettings, now: dt.datetime) -> str:
    appointment = dispatch.appointment
    if not settings.reminders_enabled:
        return "disabled"
    if appointment.status not in UPCOMING_STATUSES:
        return appointment.status
    if appointment.start_at <= now + MIN_LEAD:
        return "too_late"
    if appointment.patient.reminders_opted_out_at is not None:
        return "opted_out"
    if not appointment.patient.whatsapp_id:
        return "no_whatsapp"
    return ""


def template_components(payload_confirm: str, payload_cancel: str, params: list[str]) -> list:
    """Body parameters plus the two quick-reply buttons' payloads (Graph API template shape)."""
    return [
        {"type": "body", "parameters": [{"type": "text", "text": p} for p in params]},
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": payload_confirm}],
        },
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "1",
            "parameters": [{"type": "payload", "payload": payload_cancel}],
        },
    ]


def _conversations(pairs: set[tuple[int, str]], patients: dict) -> dict:
    """(clinic id, number) → Conversation, creating the missing ones (two workers creating the
    same one at once is harmless: the unique constraint keeps one)."""
    if not pairs:
        return {}
    numbers = {wa_id for _clinic_id, wa_id in pairs}
    clinic_ids = {clinic_id for clinic_id, _wa_id in pairs}

    def existing() -> dict:
        return {
            (c.clinic_id, c.wa_id): c
            for c in Conversation.objects.filter(clinic_id__in=clinic_ids, wa_id__in=numbers)
        }

    found = existing()
    missing = pairs - set(found)
    if missing:
        now = timezone.now()
        Conversation.objects.bulk_create(
            [
                Conversation(
                    clinic_id=clinic_id,
                    wa_id=wa_id,
                    patient=patients[(clinic_id, wa_id)],
                    state="CLOSED",
                    closed_at=now,
                )
                for clinic_id, wa_id in missing
            ],
            ignore_conflicts=True,
        )
        found = existing()
    return found


def _queue_batch(limit: int, now: dt.datetime) -> list[int]:
    """Take up to `limit` due reminders (SKIP LOCKED: other workers take other rows), re-check
    each and queue its template in the outbox — all in one transaction, so a worker killed
    half-way leaves every row pending for the next run. The new messages' ids."""
    with transaction.atomic():
        batch = list(
            _claimable(now)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("clinic", "appointment__patient", "appointment__doctor")
            .order_by("due_at", "id")[:limit]
        )
        if not batch:
            return []
        settings: dict[int, OutreachSettings] = {}
        ready: list[tuple[ReminderDispatch, OutreachSettings]] = []
        for dispatch in batch:
            found = settings.get(dispatch.clinic_id)
            if found is None:
                found = settings[dispatch.clinic_id] = clinic_settings(dispatch.clinic)
            if not found.in_window(now):
                # The window closed while it waited: it goes when the window reopens.
                dispatch.not_before = found.next_window_start(now)
                continue
            reason = _skip_reason(dispatch, found, now)
            if reason:
                dispatch.status = ReminderDispatch.Status.SKIPPED
                dispatch.skip_reason = reason
                continue
            ready.append((dispatch, found))
        patients = {
            (d.clinic_id, d.appointment.patient.whatsapp_id): d.appointment.patient
            for d, _settings in ready
        }
        conversations = _conversations(set(patients), patients)
        message_ids = []
        for dispatch, found in ready:
            appointment = dispatch.appointment
            conversation = conversations[(dispatch.clinic_id, appointment.patient.whatsapp_id)]
            message = whatsapp.queue_template(
                conversation,
                found.template_name,
                language=found.template_language,
                components=template_components(
                    f"{replies.REMINDER_CONFIRM}{appointment.pk}",
                    f"{replies.REMINDER_CANCEL}{appointment.pk}",
                    replies.reminder_parameters(appointment, dispatch.clinic),
                ),
                text=replies.reminder_text(appointment, dispatch.clinic),
            )
            dispatch.status = ReminderDispatch.Status.QUEUED
            dispatch.conversation = conversation
            dispatch.message = message
            dispatch.not_before = None
            dispatch.queued_at = now
            message_ids.append(message.pk)
        ReminderDispatch.objects.bulk_update(
            batch,
            ["status", "skip_reason", "not_before", "conversation", "message", "queued_at"],
        )
    return message_ids


def _deliver(message_ids: list[int]) -> None:
    try:
        whatsapp.deliver_many(message_ids)
    except Exception:
        # The rows stay in the outbox: the outbox's own retries take it from here.
        logger.exception("reminder messages: delivery failed; the outbox retries")


def _deliver_in_threads(message_ids: list[int]) -> None:
    """Each send waits on the network; a few threads overlap those waits."""

    def deliver_slice(part: list[int]) -> None:
        try:
            _deliver(part)
        finally:
            connection.close()  # this thread's connection goes back to the pool

    parts = [message_ids[i::DELIVERY_THREADS] for i in range(DELIVERY_THREADS)]
    for future in [_senders.submit(deliver_slice, part) for part in parts if part]:
        future.result()


def reminders_send(limit: int = CLAIM_BATCH, now: dt.datetime | None = None) -> int:
    """Queue up to `limit` due reminders, then deliver them; how many were queued."""
    now = now or timezone.now()
    message_ids = _queue_batch(limit, now)
    # Other threads only see committed rows: inside a caller's transaction, deliver here.
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        _deliver_in_threads(message_ids)
    else:
        _deliver(message_ids)
    metrics.REMINDERS_SENT.inc(len(message_ids))
    return len(message_ids)


def reminders_send_for(budget_seconds: float = TASK_BUDGET_SECONDS) -> tuple[int, bool]:
    """Send batches until none is due or the budget is spent; (queued, more left)."""
    deadline = time.monotonic() + budget_seconds
    total = 0
    while time.monotonic() < deadline:
        if not _claimable(timezone.now()).exists():
            return total, False
        total += reminders_send()
    return total, _claimable(timezone.now()).exists()


@task(queue_name="outreach")
def send_reminders() -> int:
    """Send due reminders for a while; if some are left, queue a follow-up and stop."""
    queued, more = reminders_send_for()
    if more:
        send_reminders.enqueue()
    return queued


def reminders_enqueue(now: dt.datetime | None = None) -> int:
    """Queue enough send tasks for the due backlog (several workers share it); how many."""
    now = now or timezone.now()
    backlog = _claimable(now).count()
    if not backlog:
        return 0
    wanted = min(MAX_PARALLEL_TASKS, -(-backlog // (CLAIM_BATCH * 4)))
    waiting = DBTaskResult.objects.ready().filter(task_path=TASK_PATH).count()
    for _ in range(wanted - waiting):
        send_reminders.enqueue()
    return max(0, wanted - waiting)


def reminders_job(now: dt.datetime | None = None) -> int:
    """The periodic job: plan what fell due, then queue send tasks for the backlog."""
    planned = reminders_plan(now)
    reminders_enqueue()
    return planned


@task(queue_name="outreach")
def withdraw_reminders(appointment_id: int) -> int:
    return withdraw(appointment_id)


def withdraw(appointment_id: int) -> int:
    """An appointment was cancelled: its reminders not yet handed to WhatsApp are dropped."""
    with transaction.atomic():
        skipped = ReminderDispatch.objects.filter(
            appointment_id=appointment_id, status=ReminderDispatch.Status.PENDING
        ).update(status=ReminderDispatch.Status.SKIPPED, skip_reason="cancelled", not_before=None)
        # Only rows no sender has claimed yet: `queued`, never `sending`.
        failed = Message.objects.filter(
            reminder__appointment_id=appointment_id, status=MessageStatus.QUEUED
        ).update(
            status=MessageStatus.FAILED,
            next_attempt_at=None,
            error="not sent: the appointment was cancelled first",
        )
    return skipped + failed


# --- answers ---------------------------------------------------------------------------------


class Answer(StrEnum):
    CONFIRMED = "confirmed"
    ALREADY_CONFIRMED = "already_confirmed"
    CANCELLED = "cancelled"
    ALREADY_CANCELLED = "already_cancelled"
    TOO_LATE = "too_late"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class ReminderAnswer:
    outcome: Answer
    appointment: Appointment | None = None


def _sent_reminder(clinic: Clinic, conversation_id: int, appointment_id: int):
    return (
        ReminderDispatch.objects.filter(
            clinic=clinic,
            conversation_id=conversation_id,
            appointment_id=appointment_id,
            status=ReminderDispatch.Status.QUEUED,
        )
        .select_related("appointment__patient", "appointment__doctor")
        .order_by("-ordinal")
        .first()
    )


def open_reminder(
    *, clinic: Clinic, conversation_id: int, now: dt.datetime | None = None
) -> ReminderDispatch | None:
    """The latest reminder sent to this conversation whose appointment is still ahead (for a
    plain-text "confirmo" / "cancelar")."""
    now = now or timezone.now()
    return (
        ReminderDispatch.objects.filter(
            clinic=clinic,
            conversation_id=conversation_id,
            status=ReminderDispatch.Status.QUEUED,
            queued_at__gt=now - TEXT_ANSWER_WINDOW,
            appointment__start_at__gt=now,
            appointment__status__in=UPCOMING_STATUSES,
        )
        .select_related("appointment__patient", "appointment__doctor")
        .order_by("-queued_at", "-id")
        .first()
    )


def reminder_respond(
    *,
    clinic: Clinic,
    conversation_id: int,
    appointment_id: int,
    confirm: bool,
    now: dt.datetime | None = None,
) -> ReminderAnswer:
    """Confirm or cancel the appointment a reminder sent to this conversation was about.

    Only a conversation that received the reminder may answer it: a payload typed by hand
    from another number finds nothing (NOT_FOUND), whatever appointment id it names.
    """
    now = now or timezone.now()
    dispatch = _sent_reminder(clinic, conversation_id, appointment_id)
    if dispatch is None:
        return ReminderAnswer(Answer.NOT_FOUND)
    appointment = dispatch.appointment
    patient = appointment.patient
    actor = services.Actor.patient(patient)
    if appointment.status == AppointmentStatus.CANCELLED:
        return ReminderAnswer(Answer.ALREADY_CANCELLED, appointment)
    if appointment.start_at <= now:
        return ReminderAnswer(Answer.TOO_LATE, appointment)
    try:
        if confirm:
            if appointment.status == AppointmentStatus.CONFIRMED:
                outcome = Answer.ALREADY_CONFIRMED
            else:
                appointment = services.appointment_set_status(
                    clinic=clinic,
                    appointment_id=appointment.pk,
                    status=AppointmentStatus.CONFIRMED,
                    actor=actor,
                )
                outcome = Answer.CONFIRMED
        else:
            appointment = services.appointment_cancel(
                clinic=clinic,
                appointment_id=appointment.pk,
                actor=actor,
                reason="cancelled from the reminder",
                patient=patient,
            )
            outcome = Answer.CANCELLED
    except services.BookingError as exc:
        logger.info("reminder answer for appointment %s refused: %s", appointment.pk, exc.code)
        appointment.refresh_from_db()
        if appointment.status == AppointmentStatus.CANCELLED:
            return ReminderAnswer(Answer.ALREADY_CANCELLED, appointment)
        return ReminderAnswer(Answer.TOO_LATE, appointment)
    if outcome in (Answer.CONFIRMED, Answer.CANCELLED):
        response = ReminderDispatch.Response
        ReminderDispatch.objects.filter(appointment_id=appointment.pk).update(
            response=response.CONFIRMED if confirm else response.CANCELLED, responded_at=now
        )
    appointment.patient = patient
    return ReminderAnswer(outcome, appointment)


def reminders_opt(*, clinic: Clinic, wa_id: str, patient_id: int | None, enabled: bool) -> int:
    """STOP / "no quiero recordatorios" (enabled=False) or "quiero recordatorios" from a number:
    the conversation's patient and every patient of the clinic on that number; how many changed.

    Reminders go to a number, so its owner decides for all the patients they receive them for.
    """
    patients = Patient.objects.filter(clinic=clinic).filter(
        Q(whatsapp_id=wa_id) | Q(pk=patient_id or 0)
    )
    changed = 0
    for patient in patients:
        before = patient.reminders_opted_out_at
        services.patient_set_reminders(
            clinic=clinic, patient=patient, enabled=enabled, actor=services.Actor.patient(patient)
        )
        changed += (before is None) != (patient.reminders_opted_out_at is None)
    return changed
