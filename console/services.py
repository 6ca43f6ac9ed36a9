"""What staff do to a conversation: take over, reply, send a template, note, hand back, close.

Keyword-only `conversation_<action>` functions, each audited as the staff user (AuditEvent) and
followed by a live update after commit. Outbound messages go through bot.whatsapp's outbox like
the bot's own; nothing here calls WhatsApp inside a transaction.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from bot import engine, processing, state, whatsapp
from bot.gateway import OrmGateway
from bot.messages import Reply
from bot.models import Conversation, ConversationMode, Direction, Message, MessageStatus, Takeover
from clinics.models import AuditEvent, Clinic
from clinics.services import Actor
from console import live
from console.models import Note, ReplyTemplate
from console.selectors import reply_window

logger = logging.getLogger(__name__)

MAX_REPLY = whatsapp.MAX_TEXT_BODY
MAX_NOTE = 4000
MAX_VARIABLE = 200


class ConsoleError(Exception):
    """A refusal the user caused; `code` is stable (the views map it to Spanish text)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


def open_takeover(conversation_id: int) -> Takeover | None:
    return (
        Takeover.objects.filter(conversation_id=conversation_id, ended_at=None)
        .select_related("taken_by")
        .first()
    )


def _audit(clinic: Clinic, user, action: str, conversation_id: int, after: dict | None = None):
    actor = Actor.staff(user)
    AuditEvent.objects.create(
        clinic=clinic,
        actor_type=actor.type,
        actor_id=str(actor.id)[:64],
        actor_label=str(actor.label)[:200],
        action=action,
        object_type="conversation",
        object_id=str(conversation_id),
        before=None,
        after=after,
        at=timezone.now(),
    )


def _conversation(clinic: Clinic, conversation_id: int) -> Conversation:
    conversation = (
        Conversation.objects.select_related("clinic").filter(clinic=clinic, pk=conversation_id)
    ).first()
    if conversation is None:
        raise ConsoleError("not_found", "no such conversation in this clinic")
    return conversation


def _suppress_queued_bot_replies(conversation_id: int) -> int:
    return (
        Message.objects.filter(
            conversation_id=conversation_id,
            direction=Direction.OUT,
            status=MessageStatus.QUEUED,
            sent_by__isnull=True,
        )
        .exclude(kind="template")
        .update(
            status=MessageStatus.SUPPRESSED,
            next_attempt_at=None,
            error="not sent: staff took the conversation over",
        )
    )


def _require_holder(conversation_id: int, user) -> Takeover:
    takeover = open_takeover(conversation_id)
    if takeover is None:
        raise ConsoleError("not_taken", "take the conversation over first")
    if takeover.taken_by_id != user.pk:
        raise ConsoleError("held_by_other", "another staff member holds this conversation")
    return takeover


def conversation_take_over(*, clinic: Clinic, conversation_id: int, user) -> Takeover:
    """Hold the conversation: from this commit on the bot releases nothing more to the patient.

    Two steps on purpose. The takeover row commits at once, even while a bot turn holds the
    conversation row (the turn's replies are then refused where the outbox releases them); the
    conversation's mode/assignee are mirrored afterwards, once the turn lets go of the row.
    Taking over from another staff member is explicit: it moves the hold to this user.
    """
    conversation = _conversation(clinic, conversation_id)
    with transaction.atomic():
        current = (
            Takeover.objects.select_for_update()
            .filter(conversation_id=conversation.pk, ended_at=None)
            .first()
        )
        if current is not None and current.taken_by_id == user.pk:
            takeover = current
        else:
            now = timezone.now()
            if current is not None:
                current.ended_at, current.ended_by = now, user
                current.save(update_fields=["ended_at", "ended_by"])
            try:
                with transaction.atomic():
                    takeover = Takeover.objects.create(
                        conversation=conversation, taken_by=user, taken_at=now
                    )
            except IntegrityError as exc:
                raise ConsoleError("held_by_other", "someone took it at the same moment") from exc
            _suppress_queued_bot_replies(conversation.pk)
            _audit(
                clinic,
                user,
                "conversation.take_over",
                conversation.pk,
                {"from": current.taken_by_id if current else None},
            )
    _mirror_takeover(conversation.pk, user)
    logger.info("conversation %s taken over by staff %s", conversation.pk, user.pk)
    return takeover


def _mirror_takeover(conversation_id: int, user) -> None:
    """Mode and assignee on the conversation row: waits for a running turn to let go of it."""
    with transaction.atomic():
        # needs_staff stays: the handoff card keeps saying why; hand back or close clear it.
        Conversation.objects.filter(pk=conversation_id).update(
            mode=ConversationMode.HUMAN, assigned_to=user, updated_at=timezone.now()
        )
        # Replies a running turn queued before the mirror could be written.
        _suppress_queued_bot_replies(conversation_id)
        live.conversation_changed(conversation_id)


def conversation_hand_back(
    *, clinic: Clinic, conversation_id: int, user, message: str = ""
) -> Conversation:
    """Give the conversation back to the bot at a sane state (DESIGN §5, the engine's
    resume_after_staff): the flow in progress is dropped (holds released), an identified
    patient goes back to IDENTIFIED, anyone else to START. The patient gets nothing unless
    `message` is given.
    """
    conversation = _conversation(clinic, conversation_id)
    message = (message or "").strip()
    if len(message) > MAX_REPLY:
        raise ConsoleError("too_long")
    rows: list[Message] = []
    with transaction.atomic():
        locked = (
            Conversation.objects.select_for_update(of=("self",), no_key=True)
            .select_related("clinic")
            .get(pk=conversation.pk)
        )
        takeover = open_takeover(locked.pk)
        if takeover is not None:
            takeover.ended_at, takeover.ended_by = timezone.now(), user
            takeover.save(update_fields=["ended_at", "ended_by"])
        OrmGateway(locked.clinic, locked.pk).holds_release()
        resumed = engine.resume_after_staff(
            engine.Snapshot(
                state=locked.state, data=dict(locked.context or {}), patient_id=locked.patient_id
            )
        )
        locked.state = str(resumed.state)
        locked.context = resumed.data
        locked.mode = ConversationMode.BOT
        locked.assigned_to = None
        locked.needs_staff = False
        locked.save()
        if message:
            if not reply_window(locked).open:
                raise ConsoleError("window_closed")
            rows = whatsapp.queue_replies(locked, [Reply(kind="text", text=message)], sent_by=user)
        _audit(clinic, user, "conversation.hand_back", locked.pk, {"state": locked.state})
        live.conversation_changed(locked.pk)
        session_id = locked.session_id
        transaction.on_commit(lambda: state.forget_session(session_id))
    _send(rows)
    return locked


def conversation_reply(*, clinic: Clinic, conversation_id: int, user, text: str) -> Message:
    """Free text from the staff member holding the conversation (inside the 24-hour window)."""
    conversation = _conversation(clinic, conversation_id)
    text = (text or "").strip()
    if not text:
        raise ConsoleError("empty")
    if len(text) > MAX_REPLY:
        raise ConsoleError("too_long")
    _require_holder(conversation.pk, user)
    if not reply_window(conversation).open:
        raise ConsoleError("window_closed")
    with transaction.atomic():
        (row,) = whatsapp.queue_replies(conversation, [Reply(kind="text", text=text)], sent_by=user)
        Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now())
        _audit(clinic, user, "conversation.reply", conversation.pk, {"message_id": row.pk})
        live.conversation_changed(conversation.pk)
    _send([row])
    return row


def conversation_send_template(
    *, clinic: Clinic, conversation_id: int, user, template_id: int, values: list[str]
) -> Message:
    """One of the clinic's approved templates, its variables filled: allowed at any time."""
    conversation = _conversation(clinic, conversation_id)
    _require_holder(conversation.pk, user)
    template = ReplyTemplate.objects.filter(clinic=clinic, pk=template_id, active=True).first()
    if template is None:
        raise ConsoleError("no_template")
    values = [(v or "").strip() for v in values][: template.variable_count]
    if len(values) < template.variable_count or not all(values):
        raise ConsoleError("missing_variables")
    if any(len(v) > MAX_VARIABLE for v in values):
        raise ConsoleError("too_long")
    components = (
        [{"type": "body", "parameters": [{"type": "text", "text": v} for v in values]}]
        if values
        else None
    )
    with transaction.atomic():
        payload = whatsapp.template_payload(
            conversation.wa_id, template.name, template.language, components
        )
        (row,) = whatsapp.queue_payloads(conversation, [payload], sent_by=user)
        row.text = template.render(values)
        row.save(update_fields=["text"])
        Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now())
        _audit(
            clinic,
            user,
            "conversation.template",
            conversation.pk,
            {"message_id": row.pk, "template": template.name},
        )
        live.conversation_changed(conversation.pk)
    _send([row])
    return row


def conversation_add_note(*, clinic: Clinic, conversation_id: int, user, text: str) -> Note:
    """A private note: stored and shown to staff, never sent."""
    conversation = _conversation(clinic, conversation_id)
    text = (text or "").strip()
    if not text:
        raise ConsoleError("empty")
    if len(text) > MAX_NOTE:
        raise ConsoleError("too_long")
    with transaction.atomic():
        note = Note.objects.create(clinic=clinic, conversation=conversation, author=user, text=text)
        _audit(clinic, user, "conversation.note", conversation.pk, {"note_id": note.pk})
        live.conversation_changed(conversation.pk, note_ids=[note.pk])
    return note


def conversation_close(*, clinic: Clinic, conversation_id: int, user) -> Conversation:
    """Resolve: the session ends (holds released), flags cleared, any takeover handed back."""
    conversation = _conversation(clinic, conversation_id)
    with transaction.atomic():
        locked = (
            Conversation.objects.select_for_update(of=("self",), no_key=True)
            .select_related("clinic")
            .get(pk=conversation.pk)
        )
        takeover = open_takeover(locked.pk)
        if takeover is not None:
            takeover.ended_at, takeover.ended_by = timezone.now(), user
            takeover.save(update_fields=["ended_at", "ended_by"])
        processing.close_conversation(locked, timezone.now())
        locked.mode = ConversationMode.BOT
        locked.assigned_to = None
        locked.needs_staff = False
        locked.urgent = False
        locked.save()
        _audit(clinic, user, "conversation.close", locked.pk)
        live.conversation_changed(locked.pk)
    return locked


def _send(rows: list[Message]) -> None:
    """Deliver staff messages right away (the worker's outbox retries any failure)."""
    for row in rows:
        try:
            whatsapp.deliver(row.pk)
        except Exception:
            logger.exception("staff message %s not sent now; the outbox will retry", row.pk)
