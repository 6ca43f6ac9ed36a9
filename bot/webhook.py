"""Inbound WhatsApp webhook (DESIGN §7): the one way patient messages enter Sophia.

The request only verifies, stores and acknowledges. The raw body is kept as a `WebhookEvent`
before anything else; each message is stored once (unique WhatsApp id, so Meta's redeliveries
are no-ops); conversations with new messages get a turn queued in the same transaction. The bot
itself never runs inside this request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from bot.engine import Inbound
from bot.models import (
    OUTBOUND_STATUS_RANK,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    WebhookEvent,
)
from clinics.models import Clinic

logger = logging.getLogger(__name__)

UNSUPPORTED_KINDS = {
    "audio",
    "image",
    "video",
    "document",
    "location",
    "sticker",
    "contacts",
    "reaction",
    "order",
    "system",
    "unknown",
    "unsupported",
}


@csrf_exempt
def webhook(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _verify(request)
    if request.method == "POST":
        return _receive(request)
    return HttpResponseNotAllowed(["GET", "POST"])


def _verify(request: HttpRequest) -> HttpResponse:
    """Meta's subscription handshake: echo hub.challenge when the verify token matches."""
    token = request.GET.get("hub.verify_token", "")
    expected = settings.WHATSAPP_VERIFY_TOKEN
    if (
        request.GET.get("hub.mode") == "subscribe"
        and expected
        and hmac.compare_digest(token.encode(), expected.encode())
    ):
        return HttpResponse(request.GET.get("hub.challenge", ""), content_type="text/plain")
    logger.warning("webhook verification refused (mode=%r)", request.GET.get("hub.mode"))
    return HttpResponse("verification failed", status=403, content_type="text/plain")


def signature_for(body: bytes, secret: str | None = None) -> str:
    """The `X-Hub-Signature-256` header value Meta sends for `body` (used by the simulator)."""
    key = (secret if secret is not None else settings.WHATSAPP_APP_SECRET).encode()
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _signature_ok(body: bytes, header: str) -> bool:
    if not header.startswith("sha256="):
        return False
    return hmac.compare_digest(signature_for(body).encode(), header.strip().encode())


def _read_limited(request: HttpRequest, limit: int) -> bytes | None:
    """The raw body, or None when it is larger than `limit` (read no more than limit + 1 bytes).

    Reading the stream ourselves keeps Django's RequestDataTooBig (a 400/500) out of the way.
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    body = request.read(limit + 1)
    return None if len(body) > limit else body


def _receive(request: HttpRequest) -> HttpResponse:
    limit = settings.WHATSAPP_MAX_BODY_BYTES
    body = _read_limited(request, limit)
    if body is None:
        logger.warning("webhook refused: body larger than %d bytes", limit)
        return HttpResponse("payload too large", status=413, content_type="text/plain")

    if not settings.WHATSAPP_APP_SECRET:
        logger.error(
            "webhook refused: WHATSAPP_APP_SECRET is not configured, so no signature can be "
            "checked and every POST is rejected"
        )
        return HttpResponse("signature check not configured", status=403, content_type="text/plain")
    header = request.headers.get("X-Hub-Signature-256", "")
    if not _signature_ok(body, header):
        logger.warning(
            "webhook refused: %s X-Hub-Signature-256 (%d bytes from %s)",
            "bad" if header else "missing",
            len(body),
            request.META.get("REMOTE_ADDR", "?"),
        )
        return HttpResponse("invalid signature", status=403, content_type="text/plain")

    # PostgreSQL text cannot hold NUL; keep everything else exactly as received.
    raw = body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        reason = f"malformed JSON: {exc}"
    else:
        reason = "" if isinstance(payload, dict) else "malformed payload: expected a JSON object"
    if reason:
        event = WebhookEvent.objects.create(body=raw, signature_valid=True, error=reason[:2000])
        logger.warning("webhook event %s refused: %s", event.pk, reason)
        return JsonResponse({"status": "error", "reason": reason}, status=400)

    if b"\\u0000" in body:
        # PostgreSQL cannot store NUL in text or jsonb: drop it rather than lose the message.
        payload = _without_nul(payload)
    try:
        # The raw event is written in the same transaction as its messages (fewer round trips
        # on the hot path); should processing fail, it is written again on its own below.
        _process(
            payload,
            lambda clinic, now: WebhookEvent.objects.create(
                body=raw, signature_valid=True, clinic=clinic, processed_at=now
            ),
        )
    except Exception as exc:
        # Meta retries anything but 2xx for days: the raw event is kept for a replay instead.
        # (If even this insert fails nothing was kept, and the 500 makes Meta try again.)
        event = WebhookEvent.objects.create(
            body=raw, signature_valid=True, error=f"{exc.__class__.__name__}: {exc}"[:2000]
        )
        logger.exception("webhook event %s could not be processed", event.pk)
    return JsonResponse({"status": "ok"})


def process_event(event: WebhookEvent, payload: dict) -> list[int]:
    """Store the messages and statuses of a stored event (a replay); the conversations to run.

    Idempotent: replaying an event stores nothing twice.
    """

    def mark_processed(clinic: Clinic | None, now: dt.datetime) -> WebhookEvent:
        WebhookEvent.objects.filter(pk=event.pk).update(clinic=clinic, processed_at=now, error="")
        return event

    return _process(payload, mark_processed)


def _process(
    payload: dict, record_event: Callable[[Clinic | None, dt.datetime], WebhookEvent]
) -> list[int]:
    """One transaction: the event row, then every message and status of the payload."""
    now = timezone.now()
    new_conversations: list[int] = []
    with transaction.atomic():
        values = list(_values(payload))
        clinics = _clinics_by_number({_phone_number_id(v) for v in values})
        known = [clinics[_phone_number_id(v)] for v in values if _phone_number_id(v) in clinics]
        event = record_event(known[0] if known else None, now)
        for value in values:
            clinic = clinics.get(_phone_number_id(value))
            if clinic is None:
                logger.warning(
                    "webhook event %s: unknown phone_number_id %r, ignored",
                    event.pk,
                    _phone_number_id(value)[:40],
                )
                continue
            names = _contact_names(value)
            for raw in _list(value.get("messages")):
                conversation_id = _store_message(event, clinic, raw, names, now)
                if conversation_id is not None and conversation_id not in new_conversations:
                    new_conversations.append(conversation_id)
            for status in _list(value.get("statuses")):
                _apply_status(clinic, status)
        if new_conversations:
            schedule_turns(new_conversations)
    return new_conversations


def _phone_number_id(value: dict) -> str:
    metadata = value.get("metadata")
    return str(metadata.get("phone_number_id", "")) if _is_dict(metadata) else ""


def _clinics_by_number(numbers: set[str]) -> dict[str, Clinic]:
    numbers.discard("")
    if not numbers:
        return {}
    return {c.phone_number_id: c for c in Clinic.objects.filter(phone_number_id__in=numbers)}


def schedule_turns(conversation_ids: list[int]) -> None:
    """Hand each conversation to bot.processing, inside the webhook's transaction.

    The job engine (django-tasks-db) keeps its queue in this same database, so the turn's task
    row commits atomically with the messages: the worker sees both or neither, and the request
    pays for one commit (one fsync) instead of two. A failure here loses nothing: the messages
    stay stored and the worker's sweep for stranded turns runs them.
    """
    try:
        from bot import processing
    except ImportError:
        logger.error(
            "bot.processing is not available: %d turn(s) not scheduled", len(conversation_ids)
        )
        return
    for conversation_id in conversation_ids:
        try:
            with transaction.atomic():  # a savepoint: a failed enqueue keeps the messages
                processing.schedule_turns(conversation_id)
        except Exception:
            logger.exception("could not schedule the turn of conversation %s", conversation_id)


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def _is_dict(value: object) -> bool:
    return isinstance(value, dict)


def _list(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _values(payload: dict):
    """Every `value` of every change of every entry with field "messages"."""
    for entry in _list(payload.get("entry")):
        for change in _list(entry.get("changes")):
            value = change.get("value")
            if change.get("field", "messages") == "messages" and _is_dict(value):
                yield value


def _contact_names(value: dict) -> dict[str, str]:
    names = {}
    for contact in _list(value.get("contacts")):
        profile = contact.get("profile")
        name = profile.get("name") if _is_dict(profile) else None
        if contact.get("wa_id") and isinstance(name, str):
            names[str(contact["wa_id"])] = name[:200]
    return names


def parse_message(raw: dict) -> tuple[str, str]:
    """(kind, text) of an inbound message object; unsupported kinds carry no text."""
    kind = str(raw.get("type") or "unknown")[:24]
    if kind == "text":
        text = raw.get("text")
        return "text", str(text.get("body", "")) if _is_dict(text) else ""
    if kind == "interactive":
        interactive = raw.get("interactive")
        if _is_dict(interactive):
            reply = interactive.get(interactive.get("type", ""))
            if interactive.get("type") in ("list_reply", "button_reply") and _is_dict(reply):
                return "interactive", str(reply.get("title", ""))
        return "interactive_other", ""
    if kind == "button":
        button = raw.get("button")
        return "button", str(button.get("text", "")) if _is_dict(button) else ""
    return kind, ""


def _wa_timestamp(raw: dict) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(int(raw.get("timestamp")), tz=dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _store_message(
    event: WebhookEvent, clinic: Clinic, raw: dict, names: dict[str, str], now: dt.datetime
) -> int | None:
    """Insert one inbound message; its conversation id if it is new, None for a duplicate."""
    wa_id = str(raw.get("from") or "")[:20]
    if not wa_id:
        logger.warning("webhook event %s: message without a sender, ignored", event.pk)
        return None
    conversation, _ = Conversation.objects.get_or_create(
        clinic=clinic,
        wa_id=wa_id,
        defaults={"contact_name": names.get(wa_id, ""), "last_activity_at": now},
    )
    wa_message_id = str(raw.get("id") or "")[:128] or None
    kind, text = parse_message(raw)
    fields = {
        "clinic": clinic,
        "conversation": conversation,
        "direction": Direction.IN,
        "wa_message_id": wa_message_id,
        "kind": kind,
        "text": text,
        "payload": raw,
        "status": MessageStatus.RECEIVED,
        "wa_timestamp": _wa_timestamp(raw),
        "created_at": now,
        "webhook_event": event,
    }
    if wa_message_id is None:
        logger.warning("webhook event %s: message without an id, stored without dedup", event.pk)
    elif Message.objects.filter(wa_message_id=wa_message_id).exists():
        logger.info("webhook event %s: duplicate message ignored", event.pk)
        return None
    # ON CONFLICT DO NOTHING: a concurrent redelivery that wins the race leaves one row, and
    # no savepoint is needed (an IntegrityError would abort the whole transaction).
    Message.objects.bulk_create([Message(**fields)], ignore_conflicts=True)
    updates = {"last_inbound_at": now, "last_activity_at": now}
    name = names.get(wa_id, "")
    if name and name != conversation.contact_name:
        updates["contact_name"] = name
    Conversation.objects.filter(pk=conversation.pk).update(**updates)
    return conversation.pk


def _apply_status(clinic: Clinic, status: dict) -> None:
    """sent → delivered → read, never backwards; failed keeps WhatsApp's error."""
    wa_message_id = str(status.get("id") or "")
    new = status.get("status")
    if not wa_message_id:
        return
    rows = Message.objects.filter(
        wa_message_id=wa_message_id, direction=Direction.OUT, clinic=clinic
    )
    if new in (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ):
        rank = OUTBOUND_STATUS_RANK[MessageStatus(new)]
        lower = [s for s, r in OUTBOUND_STATUS_RANK.items() if r < rank]
        rows.filter(status__in=lower).update(status=new)
    elif new == MessageStatus.FAILED:
        errors = _list(status.get("errors"))
        error = errors[0] if errors else {}
        rows.filter(
            status__in=[MessageStatus.QUEUED, MessageStatus.SENDING, MessageStatus.SENT]
        ).update(
            status=MessageStatus.FAILED,
            error_code=str(error.get("code", ""))[:16],
            error=str(error.get("title") or error.get("message") or "failed")[:2000],
        )
    else:
        logger.debug("status %r for an outbound message ignored", new)


def to_inbound(message: Message) -> Inbound:
    """The engine's view of a stored inbound message (bot.processing builds turns with it)."""
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
