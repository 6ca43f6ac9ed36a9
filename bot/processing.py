"""The turn runner (DESIGN §6): one conversation's messages, one at a time, in arrival order.

The webhook stores each inbound message (status `received`) and, after commit, calls
`schedule_turns()`, which enqueues the `run_turns` task. The task calls `process_conversation()`:

- it takes the Redis lock `sophia:lock:{session_id}` (owner-only release); if someone else holds it
  the task is re-enqueued a moment later, so nothing waits in a worker and nothing is lost;
- each turn runs in ONE transaction that first locks the Conversation row (`select_for_update`):
  that row lock is the real serialisation, so with Redis down the bot still answers in order;
- the oldest `received` message is taken (by WhatsApp timestamp, then id), the engine runs, the
  conversation and the message are saved, replies go to the outbox — all or nothing. A crash
  mid-turn rolls back: the message stays `received` and a retry or the sweeper runs it again;
- no network call runs inside that transaction (bot.network guards both clients). When the
  engine asks the LLM, the transaction is rolled back, the LLM is asked with no transaction open,
  and the turn runs again from the start with the answer at hand (the engine is deterministic, so
  it takes the same path up to that question). The typing indicator goes out from a side thread
  that holds no transaction; the replies are sent after commit, and the worker's `deliver_due`
  retries failures.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import functools
import heapq
import itertools
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, QuerySet
from django.tasks import task
from django.utils import timezone
from django.utils.translation import gettext as _

from bot import engine, llm, nlu, state, whatsapp
from bot.gateway import OrmGateway
from bot.messages import Inbound, Reply
from bot.models import Conversation, ConversationMode, Direction, Message, MessageStatus
from bot.text import MAX_TEXT
from clinics.models import Clinic, Patient
from sophia_web import inserts, live, metrics, model_rows
from sophia_web import logging as sophia_logging

logger = logging.getLogger(__name__)

# Lock busy: try again this much later, up to a bound (past the lock's TTL the sweeper takes over).
LOCK_RETRY_DELAY_SECONDS = 0.5
LOCK_RETRY_LIMIT = 150
RATE_WINDOW = dt.timedelta(seconds=state.RATE_WINDOW_SECONDS)
# How long the replies wait for the typing indicator's call (it has its own short timeout).
TYPING_WAIT_SECONDS = 5.0
# Runs of one message's turn before it is set aside for staff. Each run is counted before it
# starts, in its own commit, so a run that kills or hangs its worker counts too, and whichever
# worker (or the stranded-turn sweeper) meets the message next sets it aside.
MAX_TURN_ATTEMPTS = 3
# The longest a turn waits for its conversation's row lock (see _bound_lock_waits).
LOCK_WAIT_LIMIT = "5s"

# The columns a turn may change, saved by name: fewer to build and send than the whole row, and
# the others (the webhook's contact name, staff's mode…) are not written back as they were read.
_TURN_FIELDS = (
    "state",
    "context",
    "patient",
    "needs_staff",
    "urgent",
    "llm_prompt_tokens",
    "llm_completion_tokens",
    "closed_at",
    "last_inbound_at",
    "last_activity_at",
    "updated_at",
)
_COALESCED_FIELDS = ("last_activity_at", "updated_at")

# Engine states under the seed's names, for the session hash (`estado_flujo`).
SEED_STATE_NAMES = {
    engine.State.START: "INICIAL",
    engine.State.IDENTIFIED: "VALIDADO",
    engine.State.TRIAGED: "SINTOMAS_CLASIFICADOS",
    engine.State.CHOOSING_SLOT: "CITAS_MOSTRADAS",
    engine.State.CONFIRMING: "CITA_SELECCIONADA",
    engine.State.BOOKED: "CITA_AGENDADA",
    engine.State.CANCELLING: "CANCELACION_INICIADA",
    engine.State.CLOSED: "FINALIZADO",
}


# --- scheduling ------------------------------------------------------------------------------


@task(queue_name="turns")
def run_turns(conversation_id: int, attempt: int = 0) -> int:
    """The background task (django-tasks-db, `manage.py run_worker`): every pending inbound
    message of one conversation, in order."""
    return process_conversation(conversation_id, attempt=attempt)


def schedule_turns(conversation_id: int, *, delay: float = 0.0, attempt: int = 0) -> None:
    """Enqueue `run_turns` for the conversation (queue "turns"); `delay` in seconds."""
    turns = run_turns
    if delay:
        turns = turns.using(run_after=timezone.now() + dt.timedelta(seconds=delay))
    turns.enqueue(conversation_id, attempt)


async def aschedule_turns(conversation_id: int) -> None:
    """`schedule_turns` for async callers."""
    await run_turns.aenqueue(conversation_id, 0)


def oldest_pending(conversation_id: int) -> Message | None:
    return _pending(conversation_id).first()


def has_pending(conversation_id: int) -> bool:
    return _pending(conversation_id).exists()


@functools.cache
def _pending_base() -> QuerySet[Message]:
    """Inbound messages still to be run, oldest first: built once per process (building the
    filter and ordering costs more Python than running the query), narrowed per call."""
    return Message.objects.filter(direction=Direction.IN, status=MessageStatus.RECEIVED).order_by(
        F("wa_timestamp").asc(nulls_last=True), "id"
    )


def _pending(conversation_id: int) -> QuerySet[Message]:
    return _pending_base().filter(conversation_id=conversation_id)


def warm_up() -> None:
    """Import and build what the first turn would (engine, outbound client, LLM client), so a
    freshly started worker doesn't make its first patient wait for it."""
    whatsapp.client()
    _llm_helper()


# --- the loop --------------------------------------------------------------------------------


def process_conversation(conversation_id: int, *, attempt: int = 0) -> int:
    """Run every pending turn of the conversation; return how many messages were processed."""
    # Nothing pending is common: a patient's second message of a burst is usually answered by
    # the first message's task.
    pending = _next_pending(conversation_id)
    if not pending:
        return 0
    conversation = pending[0].conversation
    session_id = conversation.session_id
    lock = state.acquire_lock(session_id)
    if lock.status is state.LockStatus.BUSY:
        # Its holder processes everything pending before letting go; this retry only matters if
        # that holder dies with the lock (it expires after 60 s).
        if attempt < LOCK_RETRY_LIMIT:
            schedule_turns(conversation_id, delay=LOCK_RETRY_DELAY_SECONDS, attempt=attempt + 1)
        return 0

    processed = 0
    retry_after = 0.0
    released: state.Released | None = None
    # Every log line of these turns carries the clinic and the masked session id.
    log_context = sophia_logging.bind(
        clinic=conversation.clinic_id,
        session=sophia_logging.mask_session(session_id),
        action="bot.turn",
    )
    try:
        while pending:  # read before the lock or the last turn: each claim below re-checks it
            message, more_behind = pending[0], len(pending) > 1
            if message.attempts >= MAX_TURN_ATTEMPTS:
                give_up_on(message.pk)  # its earlier runs never finished
                pending = _pending_after(conversation)
                continue
            if processed:
                state.extend_lock(session_id, lock.token)
            _count_attempt(message.pk)
            # "hola" "hola" "hola": the answer to the last message greets once for all. Such a
            # greeting gets no typing indicator either (reading the next message marks it read).
            coalesce = more_behind and conversation.mode == ConversationMode.BOT
            coalesce = coalesce and _is_greeting(message)
            typing = None
            if conversation.mode == ConversationMode.BOT and not coalesce:
                # The indicator's HTTP call overlaps the turn instead of delaying it.
                typing = _side_calls.submit(_typing_started, conversation, message.wa_message_id)
            try:
                outcome = _run_one_turn(conversation_id, message, coalesce)
            except BaseException:
                if typing is not None:
                    _typing_stopped(conversation, _finish(typing))
                raise
            # So "typing…" never lands after the reply.
            watched = _finish(typing) if typing is not None else []
            if outcome is None:  # another worker (Redis down) took that message first
                if typing is not None:
                    _typing_stopped(conversation, watched)
                pending = _pending_after(conversation)
                continue
            conversation = outcome.conversation
            _end_turn(
                conversation,
                typing=typing is not None,
                watched=watched,
                # A coalesced greeting's session is mirrored by the next message's turn.
                mirror=not outcome.retry_after and not outcome.coalesced,
            )
            _deliver(outcome.outbound)
            live.touch([conversation_id], clinic_id=conversation.clinic_id)
            if outcome.retry_after:
                retry_after = outcome.retry_after
                break  # over the rate limit: the rest waits for the window, in order
            processed += 1
            pending = _pending_after(conversation)
    finally:
        if lock.status is state.LockStatus.ACQUIRED:
            released = state.release_lock_checked(session_id, lock.token)
        sophia_logging.reset(log_context)
    if retry_after:
        schedule_turns(conversation_id, delay=retry_after)
    elif released is not state.Released.FREE and has_pending(conversation_id):
        # A message stored while we were finishing found the lock still held (the release
        # says so; without Redis nothing tells): run it now.
        schedule_turns(conversation_id)
    return processed


def _next_pending(conversation_id: int) -> list[Message]:
    """The two oldest pending messages, with their conversation and its clinic: one read tells
    both what to run next and whether another message waits behind it.

    The ORM's `select_related` for this read was a turn's largest Python cost (bench/README.md,
    sixth session): it is written once per process instead, loaded by sophia_web.model_rows
    exactly as the ORM loads it."""
    with connection.cursor() as cursor:
        cursor.execute(_next_pending_sql(), [conversation_id])
        rows = cursor.fetchall()
        db = cursor.db  # the thread's connection itself: `connection` looks it up per use
    if not rows:
        return []
    m, c = model_rows.width(Message), model_rows.width(Conversation)
    conversation = model_rows.load(Conversation, rows[0][m : m + c], db)
    conversation.clinic = model_rows.load(Clinic, rows[0][m + c :], db)
    messages = []
    for row in rows:
        message = model_rows.load(Message, row[:m], db)
        message.conversation = conversation
        messages.append(message)
    return messages


@functools.cache
def _next_pending_sql(*, joined: bool = True) -> str:
    """The conversation's two oldest pending messages; `joined`: with its conversation and
    clinic (columns in sophia_web.model_rows' order)."""
    quote = connection.ops.quote_name
    tables = ((Message, "m"), (Conversation, "c"), (Clinic, "k")) if joined else ((Message, "m"),)
    columns = ", ".join(model_rows.select_list(model, a, connection) for model, a in tables)
    m = {name: f"m.{column}" for name, column in inserts.columns(Message).items()}
    joins = (
        f"JOIN {quote(Conversation._meta.db_table)} c ON c.{quote('id')} = {m['conversation_id']} "
        f"JOIN {quote(Clinic._meta.db_table)} k ON k.{quote('id')} = c.{quote('clinic_id')} "
        if joined
        else ""
    )
    # The constants are in the text, so the partial index of pending messages serves it.
    direction, status = Direction.IN.value, MessageStatus.RECEIVED.value
    assert direction.isalpha() and status.isalpha()  # our own constants, never input
    return (
        f"SELECT {columns} FROM {quote(Message._meta.db_table)} m {joins}"  # noqa: S608
        f"WHERE {m['conversation_id']} = %s AND {m['direction']} = '{direction}' "
        f"AND {m['status']} = '{status}' "
        f"ORDER BY {m['wa_timestamp']} ASC NULLS LAST, {m['id']} ASC LIMIT 2"
    )


def _pending_after(conversation: Conversation) -> list[Message]:
    """`_next_pending` once a turn has read the conversation (and its clinic) under its lock:
    the messages alone."""
    with connection.cursor() as cursor:
        cursor.execute(_next_pending_sql(joined=False), [conversation.pk])
        rows = cursor.fetchall()
        db = cursor.db
    messages = [model_rows.load(Message, row, db) for row in rows]
    for message in messages:
        message.conversation = conversation
    return messages


# Every turn counts its run and claims its message: two UPDATEs written by hand (the ORM spent
# more Python building them than PostgreSQL spent running them; bench/README.md), the same SQL
# on PostgreSQL and SQLite, from the model's names.


@functools.cache
def _message_sql(kind: str) -> str:
    quote = connection.ops.quote_name
    table = quote(Message._meta.db_table)
    c = inserts.columns(Message)
    if kind == "attempt":
        return f"UPDATE {table} SET {c['attempts']} = {c['attempts']} + 1 WHERE {c['id']} = %s"  # noqa: S608
    return (
        f"UPDATE {table} SET {c['status']} = %s, {c['processed_at']} = %s, {c['error']} = %s "  # noqa: S608
        f"WHERE {c['id']} = %s AND {c['status']} = %s"
    )


def _count_attempt(message_id: int) -> None:
    """One more run of the message's turn, in its own commit (autocommit) before it starts."""
    with connection.cursor() as cursor:
        cursor.execute(_message_sql("attempt"), [message_id])


def _claim(message_id: int, now: dt.datetime, error: str) -> bool:
    """received → processed; False when another worker (Redis down) ran it first."""
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(
            _message_sql("claim"),
            [MessageStatus.PROCESSED, at, error, message_id, MessageStatus.RECEIVED],
        )
        return cursor.rowcount == 1


def _is_greeting(message: Message) -> bool:
    if message.kind != "text" or len(message.text) > 100:
        return False
    return nlu.detect_intent(message.text) == nlu.Intent.GREETING


@dataclasses.dataclass
class _Outcome:
    conversation: Conversation
    outbound: list[Message]
    retry_after: float = 0.0  # seconds: the message waits for the rate-limit window
    coalesced: bool = False  # a greeting answered by the next message's turn


class _LLMNeeded(BaseException):
    """The engine asked the LLM a question not answered yet: unwind the turn's transaction.

    A BaseException because the engine and triage treat any Exception from the LLM as "no
    answer, use the rules" — and this is not an LLM failure.
    """

    def __init__(self, key: tuple, ask: Callable[[], object]) -> None:
        super().__init__(key[0])
        self.key = key
        self.ask = ask


class _ReplayLLM:
    """Stands for bot.llm's helper inside the turn's transaction: answers asked outside it are
    replayed; a new question raises _LLMNeeded."""

    def __init__(self, helper, answers: dict) -> None:
        self._helper = helper
        self._answers = answers

    def _replay(self, key: tuple, ask: Callable[[], object]) -> object:
        if key not in self._answers:
            raise _LLMNeeded(key, ask)
        return self._answers[key]

    def classify(self, text, specialties):
        key = ("classify", text, tuple(s.slug for s in specialties))
        return self._replay(key, lambda: self._helper.classify(text, specialties))

    def answer(self, question, clinic, specialties, faq=()):
        key = ("answer", question, clinic.name)
        return self._replay(key, lambda: self._helper.answer(question, clinic, specialties, faq))


# More questions than this in one turn and the rules answer the rest.
MAX_LLM_CALLS_PER_TURN = 3


def _run_one_turn(
    conversation_id: int, message: Message, coalesce: bool = False
) -> _Outcome | None:
    """Run the turn of `message`, the conversation's oldest pending one when it was read;
    `coalesce`: a greeting with another message behind it, answered by that message's turn."""
    helper = _llm_helper()
    answers: dict[tuple, object] = {}
    counted: dict[int, float] = {}  # message id → seconds to wait (counted once per message)
    while True:
        llm = _ReplayLLM(helper, answers) if helper is not None else None
        try:
            return _run_one_turn_once(conversation_id, message, llm, counted, coalesce)
        except _LLMNeeded as needed:  # rolled back: no transaction is open here
            answers[needed.key] = _ask(needed) if len(answers) < MAX_LLM_CALLS_PER_TURN else None


def _ask(needed: _LLMNeeded) -> object:
    try:
        return needed.ask()
    except Exception:  # the LLM is optional: any failure means "no answer"
        logger.exception("llm %s failed; rules only", needed.key[0])
        return None


def _run_one_turn_once(
    conversation_id: int,
    message: Message,
    llm: _ReplayLLM | None,
    counted: dict[int, float],
    coalesce: bool = False,
) -> _Outcome | None:
    now = timezone.now()
    started = time.perf_counter()
    with transaction.atomic():
        _bound_lock_waits()
        conversation = _lock_conversation(conversation_id, message.conversation.clinic)
        coalesced = coalesce and conversation.mode == ConversationMode.BOT
        if conversation.mode == ConversationMode.BOT and not coalesced:
            if message.pk not in counted:  # a turn run again after an LLM question counts once
                counted[message.pk] = _rate_limit_wait(conversation, now)
            if counted[message.pk]:
                return _defer(conversation, message, now, counted[message.pk])
        # Under the row lock, claim the message: 0 rows when another worker (Redis down) ran it.
        if not _claim(message.pk, now, "coalesced with the next message" if coalesced else ""):
            return None
        replies = [] if coalesced else _turn(conversation, message, now, llm)
        conversation.last_activity_at = now
        fields = _COALESCED_FIELDS if coalesced else _TURN_FIELDS
        # Conversation.save's rule, then its UPDATE without the ORM's compiler (model_rows).
        model_rows.save_fields(conversation, conversation.mirror_handoff_reason(fields))
        rows = whatsapp.queue_replies(conversation, replies) if replies else []
    elapsed = time.perf_counter() - started
    metrics.BOT_TURN_LATENCY.observe(elapsed)
    logger.info(
        "turn for message %s: state %s, %d replies",
        message.pk,
        conversation.state,
        len(rows),
        extra={"duration_ms": round(elapsed * 1000, 1)},
    )
    return _Outcome(conversation, rows, coalesced=coalesced)


def _lock_conversation(conversation_id: int, clinic: Clinic) -> Conversation:
    """The conversation row, locked for the turn, with its patient. Its clinic is the one read
    with the message this task started from (a few milliseconds ago): not read again."""
    with connection.cursor() as cursor:
        cursor.execute(_lock_conversation_sql(), [conversation_id])
        row = cursor.fetchone()
        db = cursor.db
    if row is None:
        raise Conversation.DoesNotExist(f"conversation {conversation_id} does not exist")
    c = model_rows.width(Conversation)
    conversation = model_rows.load(Conversation, row[:c], db)
    conversation.patient = (
        model_rows.load(Patient, row[c:], db) if conversation.patient_id is not None else None
    )
    if conversation.clinic_id == clinic.pk:
        conversation.clinic = clinic
    return conversation


@functools.cache
def _lock_conversation_sql() -> str:
    """`select_for_update(of=("self",), no_key=True).select_related("patient")`, written once
    per process (like `_next_pending_sql`); no lock clause where the database has none
    (SQLite: one writer at a time, as the ORM does there)."""
    quote = connection.ops.quote_name
    columns = ", ".join(
        model_rows.select_list(model, alias, connection)
        for model, alias in ((Conversation, "c"), (Patient, "p"))
    )
    # NO KEY: staff can still commit a takeover (a row pointing at this one) mid-turn.
    features = connection.features
    lock = ""
    if features.has_select_for_update:
        strength = "NO KEY UPDATE" if features.has_select_for_no_key_update else "UPDATE"
        lock = f" FOR {strength}" + (" OF c" if features.has_select_for_update_of else "")
    return (
        f"SELECT {columns} FROM {quote(Conversation._meta.db_table)} c "  # noqa: S608
        f"LEFT JOIN {quote(Patient._meta.db_table)} p ON p.{quote('id')} = c.{quote('patient_id')} "
        f"WHERE c.{quote('id')} = %s{lock}"
    )


def _turn(
    conversation: Conversation, message: Message, now: dt.datetime, llm: _ReplayLLM | None = None
) -> list[Reply]:
    """One inbound message against the locked conversation; returns the replies to queue."""
    if conversation.last_inbound_at is None or conversation.last_inbound_at < message.created_at:
        conversation.last_inbound_at = message.created_at
    if conversation.mode == ConversationMode.HUMAN:
        return []  # staff hold the conversation: stored and streamed, the bot stays quiet

    if conversation.closed_at is None and _idle_before(conversation, message):
        close_conversation(conversation, now)

    return _run_engine(conversation, message, now, llm)


def _rate_limit_wait(conversation: Conversation, now: dt.datetime) -> float:
    """0 when the conversation may take a turn now (and it is counted), else seconds to wait.

    SOPHIA_RATE_LIMIT_PER_MINUTE turns per window, counted in Redis; with Redis unusable, the
    turns of the last minute are counted in PostgreSQL instead.
    """
    limit = settings.SOPHIA_RATE_LIMIT_PER_MINUTE
    wait = state.take_turn(conversation.session_id, limit)
    if wait is not None:
        return wait
    recent = list(
        Message.objects.filter(
            conversation=conversation,
            direction=Direction.IN,
            status=MessageStatus.PROCESSED,
            processed_at__gt=now - RATE_WINDOW,
        )
        .order_by("-processed_at")
        .values_list("processed_at", flat=True)[:limit]
    )
    if len(recent) < limit:
        return 0.0
    return max((recent[-1] + RATE_WINDOW - now).total_seconds(), 0.1)


def _defer(conversation: Conversation, message: Message, now: dt.datetime, wait: float) -> _Outcome:
    """Over the rate limit: the message stays pending for the next window (never dropped); the
    patient is asked to wait once per window."""
    metrics.RATE_LIMIT_HITS.labels(scope="bot").inc()
    # Waiting is not a failed run.
    Message.objects.filter(pk=message.pk).update(attempts=F("attempts") - 1)
    replies = []
    if conversation.rate_limited_until is None or conversation.rate_limited_until <= now:
        replies = [Reply(kind="text", text=_("Please wait a moment…"))]
    conversation.rate_limited_until = now + dt.timedelta(seconds=wait)
    conversation.save(update_fields=["rate_limited_until", "updated_at"])
    rows = whatsapp.queue_replies(conversation, replies) if replies else []
    logger.info("conversation %s over the rate limit: next turn in %.1f s", conversation.pk, wait)
    return _Outcome(conversation, rows, retry_after=wait)


def _bound_lock_waits() -> None:
    """In this transaction, wait at most LOCK_WAIT_LIMIT for a row lock (PostgreSQL).

    The conversation row is held for a turn's few milliseconds, and by a webhook's insert for
    less. Only a worker hung inside a turn holds it longer; waiting on it would hang this worker
    too, and with it every other patient. After the limit the statement fails, the turn rolls
    back and is tried again later (the stranded-turn sweeper), and this worker moves on.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [LOCK_WAIT_LIMIT])


def give_up_on(message_id: int) -> bool:
    """Set aside an inbound message whose turn keeps dying: processed, staff flagged, the patient
    told a person will continue. False if it was processed meanwhile."""
    with transaction.atomic():
        _bound_lock_waits()
        message = (
            Message.objects.select_for_update()
            .filter(pk=message_id, direction=Direction.IN, status=MessageStatus.RECEIVED)
            .first()
        )
        if message is None:
            return False
        conversation = (
            Conversation.objects.select_for_update(of=("self",), no_key=True)
            .select_related("clinic")
            .get(pk=message.conversation_id)
        )
        message.status = MessageStatus.PROCESSED
        message.processed_at = timezone.now()
        message.error = f"set aside after {message.attempts} failed attempts"
        message.save(update_fields=["status", "processed_at", "error"])
        conversation.needs_staff = True
        conversation.save(update_fields=["needs_staff", "updated_at"])
        rows = whatsapp.queue_replies(conversation, [_apology()])
    logger.error(
        "message %s of conversation %s set aside after %s failed attempts; staff flagged",
        message_id,
        conversation.pk,
        message.attempts,
    )
    _deliver(rows)
    return True


def _apology() -> Reply:
    return Reply(
        kind="text",
        text=_(
            "Sorry, something went wrong on our side. A member of our team will "
            "continue with you shortly."
        ),
    )


def _idle_before(conversation: Conversation, message: Message) -> bool:
    """Did the session go idle before this message arrived (SOPHIA_SESSION_IDLE_MINUTES)?

    Measured from the conversation's previous message, in or out: the webhook already moved
    `last_activity_at` to this message's arrival.
    """
    idle_limit = dt.timedelta(minutes=settings.SOPHIA_SESSION_IDLE_MINUTES)
    # No message of a conversation is older than the conversation: one younger than the limit
    # (every conversation of a burst of new patients) cannot have gone idle. No query then.
    if message.created_at - conversation.created_at <= idle_limit:
        return False
    previous = (
        Message.objects.filter(conversation=conversation, created_at__lt=message.created_at)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    return previous is not None and message.created_at - previous > idle_limit


def _run_engine(
    conversation: Conversation, message: Message, now: dt.datetime, llm: _ReplayLLM | None
) -> list[Reply]:
    snapshot = engine.Snapshot(
        state=_state_of(conversation),
        data=dict(conversation.context or {}),
        patient_id=conversation.patient_id,
    )
    gateway = OrmGateway(conversation.clinic, conversation.pk)
    ctx = engine.Context(
        gateway=gateway,
        conversation_id=conversation.pk,
        wa_id=conversation.wa_id,
        now=now,
        llm=llm,
    )
    try:
        # A savepoint: whatever the engine wrote before failing is undone, the turn goes on.
        with transaction.atomic(), time_budget(settings.SOPHIA_TURN_BUDGET_SECONDS):
            result = engine.step(snapshot, _inbound(message, conversation), ctx)
    except TurnTimeout:
        logger.error(
            "turn of conversation %s message %s ran past its %s s budget; set aside for staff",
            conversation.pk,
            message.pk,
            settings.SOPHIA_TURN_BUDGET_SECONDS,
        )
        Message.objects.filter(pk=message.pk).update(
            error=f"set aside: the turn ran past {settings.SOPHIA_TURN_BUDGET_SECONDS} s"
        )
        conversation.needs_staff = True
        return [_apology()]
    except (OperationalError, InterfaceError):
        raise  # the database itself is in trouble: roll back the turn, it is retried later
    except Exception as exc:
        # A poison message must not loop forever: apologise, flag staff, mark it processed.
        # Only the exception type and the stack: its message could quote what the patient wrote.
        logger.error(
            "engine failed on conversation %s message %s: %s\n%s",
            conversation.pk,
            message.pk,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        conversation.needs_staff = True
        return [_apology()]

    snap = result.snapshot
    conversation.state = str(snap.state)
    conversation.context = snap.data
    if snap.patient_id != conversation.patient_id:
        # The patient the engine just identified was read by the gateway: kept, not read again
        # (the session mirror wants the name).
        known = gateway.loaded_patient(snap.patient_id) if snap.patient_id else None
        if known is not None:
            conversation.patient = known
        else:
            conversation.patient_id = snap.patient_id
    conversation.needs_staff = conversation.needs_staff or result.needs_staff
    conversation.urgent = conversation.urgent or result.urgent
    conversation.llm_prompt_tokens += result.llm_prompt_tokens
    conversation.llm_completion_tokens += result.llm_completion_tokens
    if result.closed or snap.state == engine.State.CLOSED:
        conversation.state = engine.State.CLOSED
        conversation.closed_at = conversation.closed_at or now
    else:
        conversation.closed_at = None  # the engine opened a new session (it handles CLOSED)
    return list(result.replies)


def _inbound(message: Message, conversation: Conversation) -> Inbound:
    message.conversation = conversation  # already loaded and locked: no second query
    inbound = to_inbound(message)
    if len(inbound.text) > MAX_TEXT:
        # Longer than WhatsApp allows (a forged or broken client): stored whole for staff, but
        # no pattern and no LLM ever reads more than this.
        logger.warning(
            "message %s has %d characters; the turn reads the first %d",
            message.pk,
            len(inbound.text),
            MAX_TEXT,
        )
        inbound = dataclasses.replace(inbound, text=inbound.text[:MAX_TEXT])
    return inbound


class TurnTimeout(BaseException):
    """A turn ran past its time budget. A BaseException, so no `except Exception` on the way
    (an optional LLM call's fallback, say) can swallow it."""


@contextlib.contextmanager
def time_budget(seconds: float):
    """Raise TurnTimeout in the block after `seconds`.

    On the main thread (where run_worker's first task thread runs) by SIGALRM, which stops even
    a regular expression: Python's `re` checks for signals as it matches. On other threads by an
    asynchronous exception from the process's watchdog thread, which stops Python code between
    bytecodes but not a C call that never returns; what escapes both is left to
    MAX_TURN_ATTEMPTS and the stranded-turn sweeper of another worker.
    """
    if seconds <= 0:
        yield
        return
    if threading.current_thread() is threading.main_thread():

        def expire(signum, frame):
            raise TurnTimeout

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    token = _watchdog.arm(seconds)
    try:
        yield
    finally:
        _watchdog.disarm(token)


class _Watchdog:
    """Raises TurnTimeout in the task threads whose turn ran past its budget: one daemon
    thread for every turn of the process (a `threading.Timer` per turn started and ended a
    thread for each turn, to fire almost never)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._deadlines: list[tuple[float, int]] = []  # (monotonic deadline, token): a heap
        self._armed: dict[int, int] = {}  # token → the thread it stops
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> int:
        """Stop the calling thread `seconds` from now, unless `disarm`ed first."""
        with self._lock:
            token = next(self._tokens)
            deadline = time.monotonic() + seconds
            earliest = not self._deadlines or deadline < self._deadlines[0][0]
            heapq.heappush(self._deadlines, (deadline, token))
            self._armed[token] = threading.get_ident()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sophia-turn-watchdog", daemon=True
                )
                self._thread.start()
            elif earliest:
                self._changed.notify()
        return token

    def disarm(self, token: int) -> None:
        """The block is over: it is never stopped after this returns."""
        with self._lock:  # the watchdog fires under this lock: not once this is done
            if self._armed.pop(token, None) is None:  # it fired: withdraw it if not delivered
                _async_raise(threading.get_ident(), None)

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                while self._deadlines and (
                    self._deadlines[0][1] not in self._armed or self._deadlines[0][0] <= now
                ):
                    _, token = heapq.heappop(self._deadlines)
                    thread_id = self._armed.pop(token, None)
                    if thread_id is not None:  # still armed and past its deadline
                        _async_raise(thread_id, TurnTimeout)
                wait = self._deadlines[0][0] - now if self._deadlines else None
                self._changed.wait(wait)


_watchdog = _Watchdog()


def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None
    )


def to_inbound(message: Message) -> Inbound:
    """The engine's view of a stored inbound message."""
    raw = message.payload if isinstance(message.payload, dict) else {}
    reply_id = ""
    if message.kind == "interactive":
        interactive = raw.get("interactive") or {}
        reply = interactive.get(interactive.get("type", "")) or {}
        reply_id = str(reply.get("id", "")) if isinstance(reply, dict) else ""
        kind = "interactive"
    elif message.kind == "button":
        button = raw.get("button") or {}
        reply_id = str(button.get("payload", "")) if isinstance(button, dict) else ""
        kind = "button"
    elif message.kind == "text":
        kind = "text"
    else:
        kind = "unsupported"
    return Inbound(
        kind=kind,
        text=message.text,
        reply_id=reply_id,
        wa_id=message.conversation.wa_id,
        contact_name=message.conversation.contact_name,
    )


def _state_of(conversation: Conversation) -> engine.State:
    try:
        return engine.State(conversation.state)
    except ValueError:
        logger.warning("conversation %s had unknown state; starting over", conversation.pk)
        return engine.State.START


def _llm_helper() -> object | None:
    try:
        return llm.get_helper()
    except Exception:
        logger.exception("llm helper unavailable; rules only")
        return None


# --- closing ---------------------------------------------------------------------------------


def close_conversation(conversation: Conversation, now: dt.datetime) -> None:
    """Finish the session (FINALIZADO): clear the engine's memory, free the patient's holds.

    Call inside a transaction with the row locked; the caller saves. The patient link stays (a
    fact about this phone, not session state). Failed identity checks live in the database
    (clinics IdentityFailure), so waiting half an hour buys a stranger no more guesses.
    """
    OrmGateway(conversation.clinic, conversation.pk).holds_release()
    conversation.state = engine.State.CLOSED
    conversation.closed_at = now
    conversation.context = {}
    session_id = conversation.session_id
    transaction.on_commit(lambda: state.forget_session(session_id))


# --- side effects outside the transaction ----------------------------------------------------

# Best-effort calls (typing indicator) that run while the turn does.
_side_calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sophia-typing")


def _finish(future: Future) -> list[str]:
    """Wait for the typing indicator's side call; the console groups it was shown to."""
    try:
        return future.result(timeout=TYPING_WAIT_SECONDS)
    except Exception:
        logger.warning("typing indicator still pending after %s s", TYPING_WAIT_SECONDS)
        return []


def _deliver(rows: list[Message]) -> None:
    """Send the turn's replies now, in order; the first failure leaves the rest to the worker."""
    try:
        whatsapp.send_queued(rows)
    except Exception:
        logger.exception("delivering %d message(s) failed; the outbox will retry", len(rows))


def _typing_started(conversation: Conversation, wa_message_id: str | None) -> list[str]:
    """Mark read and show "typing…" on WhatsApp, set the typing key, tell the console; returns
    the console groups told (those some page watches)."""
    if wa_message_id:
        try:
            whatsapp.send_typing(conversation.clinic, wa_message_id)
        except Exception:
            logger.warning("typing indicator failed for conversation %s", conversation.pk)
    event = state.set_typing(conversation.session_id, True)
    watched = _watching_groups(conversation)
    _broadcast_typing(conversation, event, watched)
    return watched


def _typing_stopped(conversation: Conversation, watched: list[str]) -> None:
    _broadcast_typing(conversation, state.set_typing(conversation.session_id, False), watched)


def _end_turn(
    conversation: Conversation, *, typing: bool, watched: list[str], mirror: bool
) -> None:
    """After a turn: typing stopped (if it was shown) and the session mirrored (seed fields),
    in one Redis round trip."""
    if not typing and not mirror:
        return
    session = page = None
    if mirror:
        session, page = _session_fields(conversation), page_mapping(conversation)
    if not typing:
        # No typing to stop: the session alone (no "stopped" event for a turn that showed none).
        state.save_session(conversation.session_id, session)
        if page is not None:
            state.save_page(conversation.session_id, page["page"], page)
        return
    event = state.end_turn(conversation.session_id, session, page)
    _broadcast_typing(conversation, event, watched)


def _watching_groups(conversation: Conversation) -> list[str]:
    """The console groups a typing event is for that some page watches: asked once per turn
    (from the typing thread), so an unwatched conversation (most of them) costs one question
    instead of one per event, and its "stopped" event none."""
    if settings.REDIS_URL and not state.is_available():
        return []  # Redis is known to be down: don't wait on it
    groups = [f"conversation-{conversation.pk}", f"clinic-{conversation.clinic_id}"]  # + inbox row
    return sorted(live.watching(groups, gap=False))


def _broadcast_typing(conversation: Conversation, event: dict, watched: list[str]) -> None:
    """The same typing event to the console groups that watch (best effort; sophia_web.live
    sends it from its publisher thread: the turn goes on while it is sent)."""
    if not watched:
        return
    data = {"who": "bot", "conversation": conversation.pk, **event}
    live.send_ephemeral(watched, "typing", data)


def _session_fields(conversation: Conversation) -> dict:
    """The conversation as `sophia:session:{id}` mirrors it (the seed's fields)."""
    data = conversation.context or {}
    patient = conversation.patient if conversation.patient_id else None
    fields = {
        "paciente_id": conversation.patient_id,
        "paciente_nombre": patient.full_name if patient else "",
        "entidad_medica_id": conversation.clinic_id,
        "estado_flujo": SEED_STATE_NAMES.get(_state_of(conversation), conversation.state),
        "ultima_actividad": conversation.last_activity_at.isoformat(),
        "conversacion_id": conversation.pk,
        "modo": conversation.mode,
    }
    specialty = data.get("specialty") or data.get("specialty_slug")
    if specialty:
        fields["categoria_identificada"] = specialty
    if data.get("confidence") is not None:
        fields["confianza_ia"] = data["confidence"]
    return fields


def page_mapping(conversation: Conversation) -> dict | None:
    """The seed's `sophia:citas:{id}:page:{n}` JSON for the page the engine last showed."""
    data = conversation.context or {}
    shown = data.get("shown") or data.get("shown_slots") or data.get("page_slots")
    if not shown or not isinstance(shown, list):
        return None
    page = data.get("page") or data.get("page_number") or 1
    if isinstance(page, dict):
        page = page.get("number", 1)
    times = data.get("shown_times") or []
    positions = []
    for position, item in enumerate(shown, start=1):
        slot_id = item.get("slot_id") if isinstance(item, dict) else item
        if slot_id is None:
            continue
        entry = {"posicion": position, "slot_id": slot_id}
        if position <= len(times):
            entry["hora"] = times[position - 1]
        if isinstance(item, dict):
            for source, target in (
                ("date", "fecha"),
                ("time", "hora"),
                ("doctor", "medico"),
                ("specialty", "especialidad"),
            ):
                if item.get(source):
                    entry[target] = item[source]
        positions.append(entry)
    return {
        "categoria": data.get("specialty") or data.get("specialty_slug") or "",
        "entidad_medica_id": conversation.clinic_id,
        "page": int(page) if str(page).isdigit() else 1,
        "citas_mostradas": positions,
        "has_more": bool(data.get("cursor") or data.get("next_cursor") or data.get("has_more")),
        "timestamp": timezone.now().isoformat(),
    }
