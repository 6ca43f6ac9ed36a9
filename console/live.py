"""The console's live events: rendered once after commit, fanned out by sophia_web.live.

- `clinic-<id>`, event "inbox.row": the conversation's inbox row (upserted by id, re-sorted);
  event "stats": the stats panel; event "attention": a conversation turned urgent / asks for a
  person (title badge, sound, notification).
- `conversation-<id>`, event "conversation": its header (mode, holder, window), reply box state
  and the newest messages and notes, each upserted by element id, so a replay or a duplicate
  changes nothing.

Rendering runs in sophia_web.live's publisher thread (or inline with the in-process layer);
a burst of changes to one conversation is rendered once, and only for the groups some page
watches (sophia_web.live.watching): a conversation nobody has open costs no render. The
conversations waiting for the publisher are taken together: one "who watches?" round trip for
all of them (under a burst of webhooks that question, once per message, was 8 % of the web
process's Python time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import transaction
from django.template.loader import render_to_string
from django.utils import translation

from bot.models import Conversation, Message
from clinics.models import Clinic
from console import selectors
from console.models import ReplyTemplate
from sophia_web import live

logger = logging.getLogger(__name__)

# Stats are slower to compute than a conversation's fragments: their own thread, at most one
# render per clinic every STATS_EVERY seconds, so they never hold a conversation update up.
STATS_EVERY = 1.0
# Per conversation, the urgent / needs-a-person flags last published (attention on a rise only).
_flags: dict[int, tuple[bool, bool]] = {}


def conversation_changed(conversation_id: int, note_ids: Iterable[int] = ()) -> None:
    """Publish this conversation after the current transaction commits."""
    transaction.on_commit(lambda: publish([conversation_id]), robust=True)


def stats_changed(clinic_id: int) -> None:
    transaction.on_commit(lambda: _stats.add(clinic_id), robust=True)


def publish(
    conversation_ids: Iterable[int] = (),
    wa_message_ids: Iterable[str] = (),
    *,
    clinic_id: int | None = None,
) -> None:
    """Render and send (soon, in order) every conversation given, once each, to whoever
    watches; `clinic_id` is the conversations' clinic when the caller knows it."""
    conversation_ids = list(conversation_ids)
    if clinic_id is not None:
        for conversation_id in conversation_ids:
            _remember_clinic(conversation_id, clinic_id)
    wamids = list(wa_message_ids)
    if wamids:
        live.publisher.submit(_publish_messages, wamids)
    if conversation_ids:
        _conversations.add(None, conversation_ids)


def _send_conversations(_key: None, conversation_ids: list[int]) -> None:
    with translation.override("es"):
        _publish_conversations(conversation_ids)


def _send_stats(clinic_id: int, _items: list) -> None:
    with translation.override("es"):
        _publish_stats(clinic_id)


# Conversations that change while earlier ones wait for the live publisher join them: one "who
# watches?" (a Redis round trip) and one render each for all. After a quiet spell a change goes
# at once; under a burst (a busy clinic, Meta redelivering a backlog) the changes of each
# CONVERSATIONS_EVERY seconds go together, so a webhook or a turn in a burst costs its process no
# round trip of its own (about 0.5 ms of a webhook's 4-5 under the ack benchmark's load), for at
# most that much delay on a console that would not see it. Stats have their own thread, at most
# one render per clinic per interval.
CONVERSATIONS_EVERY = 0.05
_conversations = live.Coalescer(
    _send_conversations, every=CONVERSATIONS_EVERY, publisher=live.publisher
)
_stats = live.Coalescer(_send_stats, every=STATS_EVERY, name="sophia-live-stats")


def _publish_messages(wa_message_ids: list[str]) -> None:
    ids = set(
        Message.objects.filter(wa_message_id__in=wa_message_ids).values_list(
            "conversation_id", flat=True
        )
    )
    if ids:
        _conversations.add(None, ids)


def render_row(row: Conversation) -> str:
    return render_to_string("console/_inbox_row.html", {"row": row, "oob": True})


def render_conversation_update(conversation: Conversation) -> str:
    context = conversation_context(conversation)
    context["oob"] = True
    return render_to_string("console/_conversation_live.html", context)


def conversation_context(conversation: Conversation) -> dict:
    """What the conversation pane shows besides its full stream (page view and live updates).

    `conversation` comes from selectors.inbox_row (decorated with its display name and flow).
    """
    upcoming, past = selectors.patient_appointments(conversation)
    return {
        "conversation": conversation,
        "patient": conversation.patient if conversation.patient_id else None,
        "takeover": selectors.holder(conversation.pk),
        "window": selectors.reply_window(conversation),
        "handoff": selectors.handoff(conversation),
        "recent_messages": selectors.recent_messages(conversation.pk),
        "notes": selectors.recent_notes(conversation.pk),
        "upcoming": upcoming,
        "past": past,
        "templates": list(
            ReplyTemplate.objects.filter(clinic_id=conversation.clinic_id, active=True)
        ),
    }


# conversation id → clinic id (a conversation never changes clinic); bounded.
_CLINIC_OF_LIMIT = 20_000
_clinic_of_cache: dict[int, int] = {}


def _remember_clinic(conversation_id: int, clinic_id: int) -> None:
    if len(_clinic_of_cache) >= _CLINIC_OF_LIMIT:
        _clinic_of_cache.clear()
    _clinic_of_cache[conversation_id] = clinic_id


def _clinic_of(conversation_id: int) -> int | None:
    clinic_id = _clinic_of_cache.get(conversation_id)
    if clinic_id is None:
        clinic_id = (
            Conversation.objects.filter(pk=conversation_id)
            .values_list("clinic_id", flat=True)
            .first()
        )
        if clinic_id is not None:
            _remember_clinic(conversation_id, clinic_id)
    return clinic_id


def _publish_conversations(conversation_ids: list[int]) -> None:
    """Ask once who watches these conversations and their inboxes; publish the watched ones."""
    groups: dict[int, tuple[str, str]] = {}
    for conversation_id in conversation_ids:
        clinic_id = _clinic_of(conversation_id)
        if clinic_id is not None:
            groups[conversation_id] = (f"clinic-{clinic_id}", f"conversation-{conversation_id}")
    if not groups:
        return
    watched = live.watching(group for pair in groups.values() for group in pair)
    for conversation_id, pair in groups.items():
        if watched.intersection(pair):
            try:
                _publish_conversation(conversation_id, *pair, watched)
            except Exception:  # one conversation's failure must not keep the others back
                logger.exception("live: publishing conversation %s failed", conversation_id)


def _publish_conversation(
    conversation_id: int, clinic_group: str, conversation_group: str, watched: set[str]
) -> None:
    row = selectors.inbox_row(conversation_id)
    if row is None:
        return
    if clinic_group in watched:
        live.send_now(clinic_group, "inbox.row", render_row(row))
    if conversation_group in watched:
        live.send_now(conversation_group, "conversation", render_conversation_update(row))
    if clinic_group not in watched:
        return
    flags = (row.urgent and row.closed_at is None, row.needs_staff and row.mode == "bot")
    before = _flags.get(row.pk, (False, False))
    _flags[row.pk] = flags
    if (flags[0] and not before[0]) or (flags[1] and not before[1]):
        live.send_now(
            f"clinic-{row.clinic_id}",
            "attention",
            {
                "conversation": row.pk,
                "name": row.display_name,
                "urgent": flags[0],
                "needs_staff": flags[1],
            },
        )
    _stats.add(row.clinic_id)


def _publish_stats(clinic_id: int) -> None:
    if not live.watching([f"clinic-{clinic_id}"]):
        return
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None:
        return
    html = render_to_string(
        "console/_stats.html", {"stats": selectors.clinic_stats(clinic), "oob": True}
    )
    live.send_now(f"clinic-{clinic_id}", "stats", html)
