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

import dataclasses
import datetime as dt
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from django.tasks import task
from django.utils import timezone
from django.utils.translation import gettext as _

from bot import engine, llm, state, whatsapp
from bot.gateway import OrmGateway
from bot.messages import Inbound, Reply
from bot.models import Conversation, ConversationMode, Direction, Message, MessageStatus
from sophia_web import live, metrics

logger = logging.getLogger(__name__)

# Lock busy: try again this much later, up to a bound (past the lock's TTL the sweeper takes over).
LOCK_RETRY_DELAY_SECONDS = 0.5
LOCK_RETRY_LIMIT = 150
RATE_WINDOW = dt.timedelta(seconds=state.RATE_WINDOW_SECONDS)
# How long the replies wait for the typing indicator's call (it has its own short timeout).
TYPING_WAIT_SECONDS = 5.0
# Context keys that outlive a closed session.
KEPT_ON_CLOSE = frozenset({"identity_misses"})

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


def _pending(conversation_id: int):
    return Message.objects.filter(
        conversation_id=conversation_id, direction=Direction.IN, status=MessageStatus.RECEIVED
    ).order_by(F("wa_timestamp").asc(nulls_last=True), "id")


def warm_up() -> None:
    """Import and build what the first turn would (engine, outbound client, LLM client), so a
    freshly started worker doesn't make its first patient wait for it."""
    whatsapp.client()
    _llm_helper()


# --- the loop --------------------------------------------------------------------------------


def process_conversation(conversation_id: int, *, attempt: int = 0) -> int:
    """Run every pending turn of the conversation; return how many messages were processed."""
    conversation = Conversation.objects.select_related("clinic").filter(pk=conversation_id).first()
    if conversation is None:
        return 0
    session_id = conversation.session_id
    lock = state.acquire_lock(session_id)
    if lock.status is state.LockStatus.BUSY:
        # Its holder processes everything pending before letting go; this retry only matters if
        # that holder dies with the lock (it expires after 60 s).
        if attempt < LOCK_RETRY_LIMIT and has_pending(conversation_id):
            schedule_turns(conversation_id, delay=LOCK_RETRY_DELAY_SECONDS, attempt=attempt + 1)
        return 0

    processed = 0
    try:
        while (message := _pending(conversation_id).first()) is not None:
            if processed:
                state.extend_lock(session_id, lock.token)
            typing = None
            if conversation.mode == ConversationMode.BOT:
                # The indicator's HTTP call overlaps the turn instead of delaying it.
                typing = _side_calls.submit(_typing_started, conversation, message.wa_message_id)
            try:
                outcome = _run_one_turn(conversation_id, message)
            finally:
                if typing is not None:
                    _finish(typing)  # so "typing…" never lands after the reply
                    _typing_stopped(conversation)
            if outcome is None:
                continue  # another worker (Redis down) took that message first
            processed += 1
            conversation = outcome.conversation
            _deliver(outcome.outbound)
            live.touch([conversation_id])
            _mirror_session(conversation)
    finally:
        if lock.status is state.LockStatus.ACQUIRED:
            state.release_lock(session_id, lock.token)
    # A message stored while we were finishing found the lock still held: run it now.
    if has_pending(conversation_id):
        schedule_turns(conversation_id)
    return processed


@dataclasses.dataclass
class _Outcome:
    conversation: Conversation
    outbound: list[Message]


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


def _run_one_turn(conversation_id: int, message: Message) -> _Outcome | None:
    """Run the turn of `message`, the conversation's oldest pending one when it was read."""
    helper = _llm_helper()
    answers: dict[tuple, object] = {}
    counted: dict[int, bool] = {}  # message id → over the rate limit (counted once per message)
    while True:
        llm = _ReplayLLM(helper, answers) if helper is not None else None
        try:
            return _run_one_turn_once(conversation_id, message, llm, counted)
        except _LLMNeeded as needed:  # rolled back: no transaction is open here
            answers[needed.key] = _ask(needed) if len(answers) < MAX_LLM_CALLS_PER_TURN else None


def _ask(needed: _LLMNeeded) -> object:
    try:
        return needed.ask()
    except Exception:  # the LLM is optional: any failure means "no answer"
        logger.exception("llm %s failed; rules only", needed.key[0])
        return None


def _run_one_turn_once(
    conversation_id: int, message: Message, llm: _ReplayLLM | None, counted: dict[int, bool]
) -> _Outcome | None:
    now = timezone.now()
    started = time.perf_counter()
    with transaction.atomic():
        # NO KEY: staff can still commit a takeover (a row pointing at this one) mid-turn.
        conversation = (
            Conversation.objects.select_for_update(of=("self",), no_key=True)
            .select_related("clinic", "patient")
            .get(pk=conversation_id)
        )
        # Under the row lock, claim the message: 0 rows when another worker (Redis down) ran it.
        claimed = Message.objects.filter(pk=message.pk, status=MessageStatus.RECEIVED).update(
            status=MessageStatus.PROCESSED, processed_at=now
        )
        if not claimed:
            return None
        replies = _turn(conversation, message, now, llm, counted)
        conversation.last_activity_at = now
        conversation.save()
        rows = whatsapp.queue_replies(conversation, replies) if replies else []
    metrics.BOT_TURN_LATENCY.observe(time.perf_counter() - started)
    return _Outcome(conversation, rows)


def _turn(
    conversation: Conversation,
    message: Message,
    now: dt.datetime,
    llm: _ReplayLLM | None = None,
    counted: dict[int, bool] | None = None,
) -> list[Reply]:
    """One inbound message against the locked conversation; returns the replies to queue."""
    if conversation.last_inbound_at is None or conversation.last_inbound_at < message.created_at:
        conversation.last_inbound_at = message.created_at
    if conversation.mode == ConversationMode.HUMAN:
        return []  # staff hold the conversation: stored and streamed, the bot stays quiet

    if conversation.closed_at is None and _idle_before(conversation, message):
        close_conversation(conversation, now)

    counted = {} if counted is None else counted
    if message.pk not in counted:  # a turn run again after an LLM question counts once
        counted[message.pk] = _over_rate_limit(conversation, message, now)
        if counted[message.pk]:
            metrics.RATE_LIMIT_HITS.labels(scope="bot").inc()
    if counted[message.pk]:
        if conversation.rate_limited_until is None or conversation.rate_limited_until <= now:
            conversation.rate_limited_until = now + RATE_WINDOW
            return [Reply(kind="text", text=_("Please wait a moment…"))]
        return []

    return _run_engine(conversation, message, now, llm)


def give_up_on(message_id: int) -> bool:
    """Set aside an inbound message whose turn keeps dying: processed, staff flagged, the patient
    told a person will continue. False if it was processed meanwhile."""
    with transaction.atomic():
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
    previous = (
        Message.objects.filter(conversation=conversation, created_at__lt=message.created_at)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    idle_limit = dt.timedelta(minutes=settings.SOPHIA_SESSION_IDLE_MINUTES)
    return previous is not None and message.created_at - previous > idle_limit


def _over_rate_limit(conversation: Conversation, message: Message, now: dt.datetime) -> bool:
    count = state.count_message(conversation.session_id)
    if count is None:
        # Redis unusable: count this conversation's inbound messages of the last minute instead.
        count = Message.objects.filter(
            conversation=conversation,
            direction=Direction.IN,
            created_at__gt=now - RATE_WINDOW,
            created_at__lte=message.created_at,
        ).count()
    return count > settings.SOPHIA_RATE_LIMIT_PER_MINUTE


def _run_engine(
    conversation: Conversation, message: Message, now: dt.datetime, llm: _ReplayLLM | None
) -> list[Reply]:
    snapshot = engine.Snapshot(
        state=_state_of(conversation),
        data=dict(conversation.context or {}),
        patient_id=conversation.patient_id,
    )
    ctx = engine.Context(
        gateway=OrmGateway(conversation.clinic, conversation.pk),
        conversation_id=conversation.pk,
        wa_id=conversation.wa_id,
        now=now,
        llm=llm,
    )
    try:
        # A savepoint: whatever the engine wrote before failing is undone, the turn goes on.
        with transaction.atomic():
            result = engine.step(snapshot, _inbound(message, conversation), ctx)
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
    return to_inbound(message)


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
    fact about this phone, not session state), and so do failed identity checks: waiting half an
    hour must not buy a stranger three more guesses at someone's date of birth.
    """
    OrmGateway(conversation.clinic, conversation.pk).holds_release()
    kept = {k: v for k, v in (conversation.context or {}).items() if k in KEPT_ON_CLOSE}
    conversation.state = engine.State.CLOSED
    conversation.closed_at = now
    conversation.context = kept
    session_id = conversation.session_id
    transaction.on_commit(lambda: state.forget_session(session_id))


# --- side effects outside the transaction ----------------------------------------------------

# Best-effort calls (typing indicator) that run while the turn does.
_side_calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sophia-typing")


def _finish(future: Future) -> None:
    try:
        future.result(timeout=TYPING_WAIT_SECONDS)
    except Exception:
        logger.warning("typing indicator still pending after %s s", TYPING_WAIT_SECONDS)


def _deliver(rows: list[Message]) -> None:
    """Send the turn's replies now, in order; the first failure leaves the rest to the worker."""
    try:
        whatsapp.send_queued(rows)
    except Exception:
        logger.exception("delivering %d message(s) failed; the outbox will retry", len(rows))


def _typing_started(conversation: Conversation, wa_message_id: str | None) -> None:
    if wa_message_id:
        try:
            whatsapp.send_typing(conversation.clinic, wa_message_id)
        except Exception:
            logger.warning("typing indicator failed for conversation %s", conversation.pk)
    _broadcast_typing(conversation, state.set_typing(conversation.session_id, True))


def _typing_stopped(conversation: Conversation) -> None:
    _broadcast_typing(conversation, state.set_typing(conversation.session_id, False))


def _broadcast_typing(conversation: Conversation, event: dict) -> None:
    """The same typing event to the console (best effort; sophia_web.live sends it from its
    publisher thread: the turn goes on while it is sent)."""
    if settings.REDIS_URL and not state.is_available():
        return  # Redis is known to be down: don't wait on it
    data = {"who": "bot", "conversation": conversation.pk, **event}
    live.send_ephemeral(f"conversation-{conversation.pk}", "typing", data)
    live.send_ephemeral(f"clinic-{conversation.clinic_id}", "typing", data)  # the inbox row


def _mirror_session(conversation: Conversation) -> None:
    """Mirror the conversation into `sophia:session:{id}` and its shown page (seed fields)."""
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
    state.save_session(conversation.session_id, fields)
    page = page_mapping(conversation)
    if page is not None:
        state.save_page(conversation.session_id, page["page"], page)


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
