"""Inbound WhatsApp webhook (DESIGN §7): the one way patient messages enter Sophia.

The request only verifies, stores and acknowledges. The raw body is kept as a `WebhookEvent`
in the same transaction as its messages; each message is stored once (unique WhatsApp id, so
Meta's redeliveries are no-ops); conversations with new messages get a turn queued in that
transaction too. The bot itself never runs inside this request.

One statement per table for the whole payload, through one cursor: the event row, the
conversations' upsert, the messages' insert (ON CONFLICT DO NOTHING … RETURNING says which are
new), the new messages' conversations touched, the turns' task rows. All but the touch are
written with sophia_web.inserts (the ORM cost more than the database here, see there); all
run on PostgreSQL and on SQLite ≥ 3.35 (the embedded demo).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from bot import processing
from bot.models import (
    OUTBOUND_STATUS_RANK,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    WebhookEvent,
)
from clinics.models import Clinic
from sophia_web import inserts, live, metrics, task_rows

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
    payload, reason = parse_payload(raw, escapes=b"\\u" in body)
    if reason:
        event = WebhookEvent.objects.create(body=raw, signature_valid=True, error=reason[:2000])
        logger.warning("webhook event %s refused: %s", event.pk, reason)
        return JsonResponse({"status": "error", "reason": reason}, status=400)

    def record(cursor: CursorWrapper, clinic_id: int | None, now: dt.datetime) -> int:
        # The raw event is written in the same transaction as its messages (one commit).
        event = {"body": raw, "signature_valid": True, "clinic_id": clinic_id, "processed_at": now}
        return inserts.insert(cursor, WebhookEvent, [event], now)[0][0]

    try:
        _process(payload, record)
    except Exception:
        # Most likely the turn's enqueue (or a clinic deleted under the cache): store the
        # messages again without it. Nothing is lost: the stranded-turn sweeper of
        # bot.periodic runs received messages that have no queued turn.
        logger.exception("webhook: storing the event failed, retrying without queueing turns")
        _clinic_cache.clear()
        try:
            _process(payload, record, schedule=False)
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

    def mark_processed(cursor: CursorWrapper, clinic_id: int | None, now: dt.datetime) -> int:
        WebhookEvent.objects.filter(pk=event.pk).update(
            clinic_id=clinic_id, processed_at=now, error=""
        )
        return event.pk

    return _process(payload, mark_processed, replay=True)


def _process(
    payload: dict,
    record_event: Callable[[CursorWrapper, int | None, dt.datetime], int],
    *,
    schedule: bool = True,
    replay: bool = False,
) -> list[int]:
    """One transaction: the event row, every message and status of the payload, the turns.

    The turns' task rows (django-tasks-db keeps its queue in this same database) commit
    atomically with the messages: the worker sees both or neither, and the request pays for one
    commit (one fsync). With `schedule=False` the messages wait for the stranded-turn sweeper.
    `replay`: the event row existed before (process_event), and what it stored then is not new.
    """
    now = timezone.now()
    inbound: list[_Inbound] = []
    status_ids: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        values = list(_values(payload))
        clinics = _clinics_by_number({_phone_number_id(v) for v in values})
        known = [clinics[_phone_number_id(v)] for v in values if _phone_number_id(v) in clinics]
        event_id = record_event(cursor, known[0] if known else None, now)
        for value in values:
            clinic_id = clinics.get(_phone_number_id(value))
            if clinic_id is None:
                logger.warning(
                    "webhook event %s: unknown phone_number_id %r, ignored",
                    event_id,
                    _phone_number_id(value)[:40],
                )
                continue
            names = _contact_names(value)
            for raw in _list(value.get("messages")):
                message = _inbound(event_id, clinic_id, raw, names, now)
                if message is not None:
                    inbound.append(message)
            for status in _list(value.get("statuses")):
                _apply_status(clinic_id, status)
                status_ids.append(str(status.get("id") or ""))
        if replay:
            inbound = _not_stored_before(event_id, inbound)
        new_conversations = _store_messages(cursor, event_id, inbound, now)
        if schedule and new_conversations:
            schedule_turns(cursor, new_conversations, now)
        # A payload is one clinic's (one phone number) in practice: then the live views need
        # not look the conversations' clinic up.
        only = set(known)
        live.touch(new_conversations, status_ids, clinic_id=only.pop() if len(only) == 1 else None)
    return new_conversations


def _phone_number_id(value: dict) -> str:
    metadata = value.get("metadata")
    return str(metadata.get("phone_number_id", "")) if _is_dict(metadata) else ""


# phone_number_id → (clinic id, monotonic expiry). Clinics are rarely re-numbered; saving or
# deleting one in this process clears the cache at once, elsewhere (a shell, the seed) it ages
# out. Unknown numbers are not cached, so a new clinic is served at once.
CLINIC_CACHE_SECONDS = 30.0
_clinic_cache: dict[str, tuple[int, float]] = {}


@receiver(post_save, sender=Clinic, dispatch_uid="bot.webhook.clinic_saved")
@receiver(post_delete, sender=Clinic, dispatch_uid="bot.webhook.clinic_deleted")
def _forget_clinics(**kwargs) -> None:
    _clinic_cache.clear()


def _clinics_by_number(numbers: set[str]) -> dict[str, int]:
    """phone_number_id → clinic id for the numbers that belong to a clinic."""
    numbers.discard("")
    now = time.monotonic()
    found: dict[str, int] = {}
    for number in numbers:
        hit = _clinic_cache.get(number)
        if hit is not None and hit[1] > now:
            found[number] = hit[0]
    missing = numbers - found.keys()
    if missing:
        rows = Clinic.objects.filter(phone_number_id__in=missing).values_list(
            "phone_number_id", "id"
        )
        for number, clinic_id in rows:
            _clinic_cache[number] = (clinic_id, now + CLINIC_CACHE_SECONDS)
            found[number] = clinic_id
    return found


def schedule_turns(cursor: CursorWrapper, conversation_ids: list[int], now: dt.datetime) -> None:
    """Queue a turn for each conversation, inside the webhook's transaction: one INSERT of the
    task rows (sophia_web.task_rows: the library's ORM enqueue was the request's largest cost).

    No savepoint: if an enqueue fails the transaction is retried without turns (see _receive).
    """
    task_rows.enqueue_many(cursor, processing.run_turns, [(pk, 0) for pk in conversation_ids], now)


# WhatsApp's payloads nest about ten levels; anything far deeper is not a message.
MAX_JSON_DEPTH = 64
# A lone (unpaired) surrogate: JSON can escape one ("\\ud800"), UTF-8 cannot encode it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _TooDeep(Exception):
    pass


def _finite_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def parse_payload(raw: str, *, escapes: bool = True) -> tuple[dict | None, str]:
    """The webhook body as a JSON object ready to store, or (None, reason) for a 400.

    Readable beats rejected, so a signed body whose message can still be read is kept:
    NaN/±Infinity (not JSON, but Python's parser accepts them) and numbers too large for a
    float become null, which PostgreSQL's jsonb can hold; NUL characters are dropped and lone
    surrogates become U+FFFD, since neither can be stored as UTF-8 text. Refused: malformed
    JSON, anything but an object, and nesting deeper than MAX_JSON_DEPTH (a 2,000-level body
    makes the parser itself overflow: RecursionError, caught here, not a 500). `escapes` False
    (no "\\u" in the body) skips the string clean-up, which only \\u escapes make necessary.
    """
    try:
        payload = json.loads(raw, parse_constant=lambda _: None, parse_float=_finite_float)
    except RecursionError:
        return None, f"malformed payload: nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as exc:
        return None, f"malformed JSON: {exc}"
    if not isinstance(payload, dict):
        return None, "malformed payload: expected a JSON object"
    if not escapes and raw.count("{") + raw.count("[") <= MAX_JSON_DEPTH:
        # Nothing to clean and too few brackets to nest too deep: no need to walk it.
        return payload, ""
    try:
        return _clean_json(payload, 1, escapes), ""
    except _TooDeep:
        return None, f"malformed payload: nested deeper than {MAX_JSON_DEPTH} levels"


def _clean_json(value, depth: int, strings: bool):
    """Check the depth and make every string storable; recursion bounded by MAX_JSON_DEPTH."""
    if isinstance(value, str):
        if strings and ("\x00" in value or _LONE_SURROGATE.search(value)):
            return _LONE_SURROGATE.sub("\ufffd", value.replace("\x00", ""))
        return value
    if isinstance(value, dict | list) and depth > MAX_JSON_DEPTH:
        raise _TooDeep
    if isinstance(value, list):
        return [_clean_json(v, depth + 1, strings) for v in value]
    if isinstance(value, dict):
        return {
            _clean_json(k, depth, strings): _clean_json(v, depth + 1, strings)
            for k, v in value.items()
        }
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


class _Inbound(NamedTuple):
    """An inbound message ready to store, with what its conversation needs."""

    values: dict  # Message fields by attname; conversation_id is set after the upsert
    wa_id: str
    contact_name: str  # "" when WhatsApp sent no name


def _inbound(
    event_id: int, clinic_id: int, raw: dict, names: dict[str, str], now: dt.datetime
) -> _Inbound | None:
    """The message row of a WhatsApp message object; None when it has no sender."""
    wa_id = str(raw.get("from") or "")[:20]
    if not wa_id:
        logger.warning("webhook event %s: message without a sender, ignored", event_id)
        return None
    wa_message_id = str(raw.get("id") or "")[:128] or None
    if wa_message_id is None:
        logger.warning("webhook event %s: message without an id, stored without dedup", event_id)
    kind, text = parse_message(raw)
    values = {
        "clinic_id": clinic_id,
        "direction": Direction.IN.value,
        "wa_message_id": wa_message_id,
        "kind": kind,
        "text": text,
        "payload": raw,
        "status": MessageStatus.RECEIVED.value,
        "wa_timestamp": _wa_timestamp(raw),
        "created_at": now,
        "webhook_event_id": event_id,
    }
    return _Inbound(values, wa_id, names.get(wa_id, ""))


def _not_stored_before(event_id: int, inbound: list[_Inbound]) -> list[_Inbound]:
    """A replayed event's messages less the id-less ones it stored the first time.

    Messages with a WhatsApp id are deduplicated by the insert itself; those without one (rare,
    a broken client) can only be told apart by the event that brought them: if it stored any,
    it stored them all (one transaction).
    """
    if (
        any(item.values["wa_message_id"] is None for item in inbound)
        and Message.objects.filter(webhook_event_id=event_id, wa_message_id=None).exists()
    ):
        return [item for item in inbound if item.values["wa_message_id"] is not None]
    return inbound


def _store_messages(
    cursor: CursorWrapper, event_id: int, inbound: list[_Inbound], now: dt.datetime
) -> list[int]:
    """Store the payload's messages once each; the conversations that got new ones, in order.

    Statements per payload, not per message: the conversations' upsert, the messages' insert
    (ON CONFLICT DO NOTHING on the unique WhatsApp id, so a redelivery, even a concurrent one
    or a replayed event, is a no-op without an exception or a savepoint; RETURNING gives the
    rows it wrote) and one touch per conversation with new messages.
    """
    if not inbound:
        return []
    conversation_ids = _upsert_conversations(cursor, inbound, now)
    unique: list[_Inbound] = []
    wa_message_ids: set[str] = set()
    for item in inbound:
        item.values["conversation_id"] = conversation_ids[item.values["clinic_id"], item.wa_id]
        wa_message_id = item.values["wa_message_id"]
        # The same WhatsApp id twice in one payload is one message. Messages without an id
        # never conflict (NULLs are distinct in a unique index): each is stored.
        if wa_message_id in wa_message_ids:
            continue
        if wa_message_id is not None:
            wa_message_ids.add(wa_message_id)
        unique.append(item)

    written = inserts.insert(
        cursor,
        Message,
        [item.values for item in unique],
        now,
        on_conflict=f"ON CONFLICT ({connection.ops.quote_name('wa_message_id')}) DO NOTHING",
        returning=("wa_message_id",),
    )
    stored = {wa_message_id for (wa_message_id,) in written}
    new = [
        item
        for item in unique
        if item.values["wa_message_id"] is None or item.values["wa_message_id"] in stored
    ]

    duplicates = len(inbound) - len(new)
    if duplicates:
        logger.info("webhook event %s: %d duplicate message(s) ignored", event_id, duplicates)
        metrics.WEBHOOK_DUPLICATES.inc(duplicates)
    _touch_conversations(cursor, new, now)
    return list(dict.fromkeys(item.values["conversation_id"] for item in new))


def _upsert_conversations(
    cursor: CursorWrapper, inbound: list[_Inbound], now: dt.datetime
) -> dict[tuple[int, str], int]:
    """(clinic id, wa_id) → conversation id for every sender, creating the missing ones.

    The conflict "updates" wa_id to itself: a no-op that leaves an existing conversation as it
    is (its touch comes with a new message) yet makes RETURNING give its id, even when another
    request inserted it concurrently (DO NOTHING would return nothing for that row).
    """
    names: dict[tuple[int, str], str] = {}
    for item in inbound:
        key = (item.values["clinic_id"], item.wa_id)
        names[key] = item.contact_name or names.get(key, "")
    # One row per sender (a statement may not upsert a row twice), in a fixed order so two
    # requests lock the conversations they share in the same order: no deadlock.
    rows = [
        {"clinic_id": clinic_id, "wa_id": wa_id, "contact_name": name, "last_activity_at": now}
        for (clinic_id, wa_id), name in sorted(names.items())
    ]
    quote = connection.ops.quote_name
    wa_id = quote("wa_id")
    returned = inserts.insert(
        cursor,
        Conversation,
        rows,
        now,
        on_conflict=(
            f"ON CONFLICT ({quote('clinic_id')}, {wa_id}) DO UPDATE SET {wa_id} = excluded.{wa_id}"
        ),
        returning=("id", "clinic_id", "wa_id"),
    )
    return {(clinic_id, wa_id): pk for pk, clinic_id, wa_id in returned}


def _touch_conversations(cursor: CursorWrapper, new: list[_Inbound], now: dt.datetime) -> None:
    """The conversations with new messages: last inbound and activity now; the name WhatsApp
    sent, if any (the payload's last non-empty one). One UPDATE per conversation (a payload
    is one sender's message in practice)."""
    names: dict[int, str] = {}
    for item in new:
        conversation_id = item.values["conversation_id"]
        names[conversation_id] = item.contact_name or names.get(conversation_id, "")
    if not names:
        return
    at = connection.ops.adapt_datetimefield_value(now)
    for conversation_id, name in names.items():
        cursor.execute(_touch_sql(), [at, at, name, name, conversation_id])


@functools.cache
def _touch_sql() -> str:
    quote = connection.ops.quote_name
    name = quote("contact_name")
    # The name only changes when WhatsApp sent one.
    return (
        f"UPDATE {quote(Conversation._meta.db_table)} SET {quote('last_inbound_at')} = %s, "  # noqa: S608
        f"{quote('last_activity_at')} = %s, {name} = CASE WHEN %s = '' THEN {name} ELSE %s END "
        f"WHERE {quote('id')} = %s"
    )


def _apply_status(clinic_id: int, status: dict) -> None:
    """sent → delivered → read, never backwards; failed keeps WhatsApp's error.

    One conditional UPDATE per status: the rank condition is in its WHERE clause.
    """
    wa_message_id = str(status.get("id") or "")
    new = status.get("status")
    if not wa_message_id:
        return
    rows = Message.objects.filter(
        wa_message_id=wa_message_id, direction=Direction.OUT, clinic_id=clinic_id
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
