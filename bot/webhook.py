"""Inbound WhatsApp webhook (DESIGN §7): the one way patient messages enter Sophia.

The request only verifies, stores and acknowledges. The raw body is kept as a `WebhookEvent`
in the same transaction as its messages; each message is stored once (unique WhatsApp id, so
Meta's redeliveries are no-ops); conversations with new messages get a turn queued in that
transaction too. The bot itself never runs inside this request.

One statement per table for the whole payload, through one cursor: the event row, the
conversations' upsert, the messages' insert (ON CONFLICT DO NOTHING … RETURNING says which are
new), the new messages' conversations touched, the turns' task rows. All but the touch are
written with sophia_web.inserts (the ORM cost more than the database here, see there); all
run on PostgreSQL and on SQLite ≥ 3.35 (the embedded demo). On PostgreSQL the usual payload
(a new event, messages only) writes the same rows in one statement, a data-modifying WITH
(`_store_at_once`): its round trips were most of what a webhook request cost. SQLite has no
such statement; tests/bot/test_webhook_dedup.py holds the two ways to the same rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import math
import re
import time
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
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

    try:
        _process(payload, body=raw)
    except Exception:
        # Most likely the turn's enqueue (or a clinic deleted under the cache): store the
        # messages again without it. Nothing is lost: the stranded-turn sweeper of
        # bot.periodic runs received messages that have no queued turn.
        logger.exception("webhook: storing the event failed, retrying without queueing turns")
        _clinic_cache.clear()
        try:
            _process(payload, body=raw, schedule=False)
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
    return _process(payload, replay=event)


class _Parsed(NamedTuple):
    """What a payload asks to store, read before anything is written."""

    clinic_id: int | None  # the event's clinic: that of its first known phone number
    inbound: list[_Inbound]
    statuses: list[tuple[int, dict]]  # (clinic id, WhatsApp status object)
    problems: list[str]  # logged with the event's id once it has one


def _process(
    payload: dict,
    *,
    body: str | None = None,
    replay: WebhookEvent | None = None,
    schedule: bool = True,
) -> list[int]:
    """Store the event, every message and status of the payload, and the turns, atomically;
    the conversations that got new messages, in payload order.

    `body`: a new event's raw body; `replay`: an event stored before (process_event), so what
    it stored then is not new. The turns' task rows (django-tasks-db keeps its queue in this
    same database) commit with the messages: the worker sees both or neither. With
    `schedule=False` the messages wait for the stranded-turn sweeper.

    On PostgreSQL a new event with messages only (the usual payload) is one statement
    (`_store_at_once`): one round trip instead of seven, which is most of what the webhook
    costs (bench/README.md, "Seventh session"). Everything else, and every payload on SQLite,
    goes through one transaction of a statement per table (`_store_in_steps`).
    """
    now = timezone.now()
    parsed = _parse(payload, now)
    unique = _unique(parsed.inbound)
    if replay is None and _can_store_at_once(parsed, unique):
        # One statement is atomic by itself. Inside a caller's transaction (a test, a shell)
        # a savepoint keeps a failure from aborting that transaction.
        inside = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
        with inside, connection.cursor() as cursor:
            event_id, new = _store_at_once(
                cursor, body or "", parsed.clinic_id, unique, now, schedule
            )
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            event_id, new = _store_in_steps(cursor, body, replay, parsed, unique, now, schedule)
    for problem in parsed.problems:
        logger.warning("webhook event %s: %s", event_id, problem)
    duplicates = len(parsed.inbound) - len(new)
    if duplicates:
        logger.info("webhook event %s: %d duplicate message(s) ignored", event_id, duplicates)
        metrics.WEBHOOK_DUPLICATES.inc(duplicates)
    new_conversations = _conversations_of(new)
    # A payload is one clinic's (one phone number) in practice: then the live views need not
    # look the conversations' clinic up. (After the commit: on_commit runs it at once.)
    only = {item.values["clinic_id"] for item in parsed.inbound}
    only.update(clinic_id for clinic_id, _ in parsed.statuses)
    live.touch(
        new_conversations,
        [str(status.get("id") or "") for _, status in parsed.statuses],
        clinic_id=only.pop() if len(only) == 1 else None,
    )
    return new_conversations


def _parse(payload: dict, now: dt.datetime) -> _Parsed:
    values = list(_values(payload))
    clinics = _clinics_by_number({_phone_number_id(v) for v in values})
    known = [clinics[_phone_number_id(v)] for v in values if _phone_number_id(v) in clinics]
    parsed = _Parsed(known[0] if known else None, [], [], [])
    for value in values:
        clinic_id = clinics.get(_phone_number_id(value))
        if clinic_id is None:
            number = _phone_number_id(value)[:40]
            parsed.problems.append(f"unknown phone_number_id {number!r}, ignored")
            continue
        names = _contact_names(value)
        for raw in _list(value.get("messages")):
            message = _inbound(clinic_id, raw, names, now, parsed.problems)
            if message is not None:
                parsed.inbound.append(message)
        parsed.statuses.extend((clinic_id, status) for status in _list(value.get("statuses")))
    return parsed


def _store_in_steps(
    cursor: CursorWrapper,
    body: str | None,
    replay: WebhookEvent | None,
    parsed: _Parsed,
    unique: list[_Inbound],
    now: dt.datetime,
    schedule: bool,
) -> tuple[int, list[_Inbound]]:
    """Inside the caller's transaction, a statement per table: the event row (or the replayed
    one marked processed), each status, the conversations' upsert, the messages' insert, the
    touch and the turns' task rows. The event's id and the new messages."""
    if replay is None:
        event = _event_row(body or "", parsed.clinic_id, now)
        event_id = inserts.insert(cursor, WebhookEvent, [event], now)[0][0]
    else:
        WebhookEvent.objects.filter(pk=replay.pk).update(
            clinic_id=parsed.clinic_id, processed_at=now, error=""
        )
        event_id = replay.pk
    for clinic_id, status in parsed.statuses:
        _apply_status(clinic_id, status)
    for item in unique:
        item.values["webhook_event_id"] = event_id
    if replay is not None:
        unique = _not_stored_before(event_id, unique)
    new = _store_messages(cursor, parsed.inbound, unique, now)
    conversations = _conversations_of(new)
    if schedule and conversations:
        schedule_turns(cursor, conversations, now)
    return event_id, new


def _event_row(body: str, clinic_id: int | None, now: dt.datetime) -> dict:
    """A new event's row: its raw body, checked signature and clinic, processed now."""
    return {"body": body, "signature_valid": True, "clinic_id": clinic_id, "processed_at": now}


def _conversations_of(messages: list[_Inbound]) -> list[int]:
    """The conversations of these stored messages, once each, in order."""
    return list(dict.fromkeys(item.values["conversation_id"] for item in messages))


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
    calls = [(pk, *_TURN_REST) for pk in conversation_ids]
    task_rows.enqueue_many(cursor, processing.run_turns, calls, now)


# run_turns(conversation_id, attempt): a first attempt.
_TURN_REST = (0,)


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
    clinic_id: int, raw: dict, names: dict[str, str], now: dt.datetime, problems: list[str]
) -> _Inbound | None:
    """The message row of a WhatsApp message object; None when it has no sender. Its event's
    id (webhook_event_id) is set when the event has one."""
    wa_id = str(raw.get("from") or "")[:20]
    if not wa_id:
        problems.append("message without a sender, ignored")
        return None
    wa_message_id = str(raw.get("id") or "")[:128] or None
    if wa_message_id is None:
        problems.append("message without an id, stored without dedup")
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
    }
    return _Inbound(values, wa_id, names.get(wa_id, ""))


def _unique(inbound: list[_Inbound]) -> list[_Inbound]:
    """The same WhatsApp id twice in one payload is one message. Messages without an id never
    conflict (NULLs are distinct in a unique index): each is stored."""
    unique: list[_Inbound] = []
    wa_message_ids: set[str] = set()
    for item in inbound:
        wa_message_id = item.values["wa_message_id"]
        if wa_message_id in wa_message_ids:
            continue
        if wa_message_id is not None:
            wa_message_ids.add(wa_message_id)
        unique.append(item)
    return unique


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


def _stored(unique: list[_Inbound], written: set[str]) -> list[_Inbound]:
    """The messages an insert stored: those it returned (by WhatsApp id), and every id-less one."""
    return [
        item
        for item in unique
        if item.values["wa_message_id"] is None or item.values["wa_message_id"] in written
    ]


def _store_messages(
    cursor: CursorWrapper, inbound: list[_Inbound], unique: list[_Inbound], now: dt.datetime
) -> list[_Inbound]:
    """Store the payload's messages (`unique`, of `inbound`) once each; the new ones.

    Statements per payload, not per message: the conversations' upsert, the messages' insert
    (ON CONFLICT DO NOTHING on the unique WhatsApp id, so a redelivery, even a concurrent one
    or a replayed event, is a no-op without an exception or a savepoint; RETURNING gives the
    rows it wrote) and one touch per conversation with new messages.
    """
    if not unique:
        return []
    conversation_ids = _upsert_conversations(cursor, inbound, now)
    for item in unique:
        item.values["conversation_id"] = conversation_ids[item.values["clinic_id"], item.wa_id]
    written = inserts.insert(
        cursor,
        Message,
        [item.values for item in unique],
        now,
        on_conflict=f"ON CONFLICT ({connection.ops.quote_name('wa_message_id')}) DO NOTHING",
        returning=("wa_message_id",),
    )
    new = _stored(unique, {wa_message_id for (wa_message_id,) in written})
    _touch_conversations(cursor, new, now)
    return new


def _upsert_conversations(
    cursor: CursorWrapper, inbound: list[_Inbound], now: dt.datetime
) -> dict[tuple[int, str], int]:
    """(clinic id, wa_id) → conversation id for every sender, creating the missing ones.

    The conflict "updates" wa_id to itself: a no-op that leaves an existing conversation as it
    is (its touch comes with a new message) yet makes RETURNING give its id, even when another
    request inserted it concurrently (DO NOTHING would return nothing for that row).
    """
    rows = [
        _sender_row(clinic_id, wa_id, name, now)
        for (clinic_id, wa_id), name in _senders(inbound).items()
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


def _senders(inbound: list[_Inbound]) -> dict[tuple[int, str], str]:
    """(clinic id, wa_id) → the name WhatsApp last sent for them ("" if none), one entry per
    sender (a statement may not upsert a row twice), sorted so that two requests lock the
    conversations they share in the same order: no deadlock."""
    names: dict[tuple[int, str], str] = {}
    for item in inbound:
        key = (item.values["clinic_id"], item.wa_id)
        names[key] = item.contact_name or names.get(key, "")
    return dict(sorted(names.items()))


def _sender_row(clinic_id: int, wa_id: str, name: str, now: dt.datetime) -> dict:
    """A sender's conversation row for the upsert (the model's defaults for the rest)."""
    return {"clinic_id": clinic_id, "wa_id": wa_id, "contact_name": name, "last_activity_at": now}


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


def _store_at_once(
    cursor: CursorWrapper,
    body: str,
    clinic_id: int | None,
    unique: list[_Inbound],
    now: dt.datetime,
    schedule: bool,
) -> tuple[int, list[_Inbound]]:
    """PostgreSQL: a new event's messages stored in one statement (`_at_once_sql`); the event's
    id and the new messages. The same rows as `_store_in_steps`, with one difference: the touch
    is part of the conversations' upsert (a statement cannot update a row twice), so a
    conversation counts as touched when one of its messages had not been stored when the
    statement began. Only a redelivery racing its first delivery sees a difference: both touch.
    """
    db = cursor.db
    message_ids: dict[tuple[int, str], list[str | None]] = {}
    for item in unique:
        message_ids.setdefault((item.values["clinic_id"], item.wa_id), []).append(
            item.values["wa_message_id"]
        )
    at = Conversation._meta.get_field("last_inbound_at").get_db_prep_save(now, db)
    params = inserts.row_params(WebhookEvent, _event_row(body, clinic_id, now), now, db)
    senders = [
        (_sender_row(sender_clinic, wa_id, name, now), message_ids[sender_clinic, wa_id])
        for (sender_clinic, wa_id), name in _senders(unique).items()
    ]
    # The columns left to a default of None are NULL in the statement, not parameters (see
    # inserts.nulls); which they are follows from the rows themselves, so the SQL and the
    # parameters always agree.
    sender_given = frozenset({*senders[0][0], "last_inbound_at"})
    message_given = frozenset({*unique[0].values, "conversation_id", "webhook_event_id"})
    conversation_nulls = dict.fromkeys(inserts.nulls(Conversation, sender_given), ())
    message_nulls = dict.fromkeys(inserts.nulls(Message, message_given), ())
    for row, ids in senders:
        expressions = {**conversation_nulls, "last_inbound_at": [ids, at]}
        params += inserts.row_params(Conversation, row, now, db, expressions)
    for item in unique:
        sender = [item.values["clinic_id"], item.wa_id]
        expressions = {"conversation_id": sender, "webhook_event_id": (), **message_nulls}
        params += inserts.row_params(Message, item.values, now, db, expressions)
    turns = _turn_rows_sql(now, db) if schedule else None
    if turns is not None:
        params += turns[1]
    sql = _at_once_sql(len(senders), len(unique), turns and turns[0], sender_given, message_given)
    cursor.execute(sql, params)
    rows = cursor.fetchall()
    conversation_ids = {(row[2], row[3]): row[1] for row in rows}
    for item in unique:
        item.values["conversation_id"] = conversation_ids[item.values["clinic_id"], item.wa_id]
    return rows[0][0], _stored(unique, {row[4] for row in rows if row[4] is not None})


def _turn_rows_sql(now: dt.datetime, db: BaseDatabaseWrapper) -> tuple[str, list] | None:
    """The task rows of `schedule_turns` for every conversation the statement stored a message
    of (its WITH query `m`), or None when the turns' task is not on the database backend."""
    return task_rows.enqueue_each_sql(
        processing.run_turns,
        "(SELECT DISTINCT conversation_id FROM m)",
        "conversation_id",
        _TURN_REST,
        now,
        db,
    )


def _can_store_at_once(parsed: _Parsed, unique: list[_Inbound]) -> bool:
    """A new event's payload `_store_at_once` takes: on PostgreSQL, messages and no statuses,
    within the statement's parameter limit (an upper bound of its parameters here)."""
    return (
        bool(unique)
        and not parsed.statuses
        and 64 + len(unique) * _params_per_message() <= inserts.MAX_PARAMS
        and connection.vendor == "postgresql"
    )


@functools.cache
def _params_per_message() -> int:
    return len(inserts.columns(Conversation)) + len(inserts.columns(Message))


@functools.lru_cache(maxsize=64)
def _at_once_sql(
    senders: int,
    messages: int,
    turns: str | None,
    sender_given: frozenset[str],
    message_given: frozenset[str],
) -> str:
    """ev: the event row; c: the conversations' upsert and touch (a sender's conversation is
    touched when one of its messages is not in the table yet); m: the messages' insert, each
    with its conversation and event from c and ev; the turns' task rows (`turns`) for the
    conversations m stored a message of. `sender_given`, `message_given`: the columns the
    conversation and message rows give (the others left to a default of None are NULL). The
    result: a row per conversation and stored message (a conversation without one: a null
    message), each with the event's id."""
    q = connection.ops.quote_name
    conv, msg = inserts.columns(Conversation), inserts.columns(Message)
    table = q(Conversation._meta.db_table)
    message_table = q(Message._meta.db_table)
    fresh = (
        f"CASE WHEN EXISTS (SELECT FROM unnest(%s::varchar[]) AS w(id) WHERE w.id IS NULL OR "  # noqa: S608
        f"NOT EXISTS (SELECT FROM {message_table} AS x WHERE x.{msg['wa_message_id']} = w.id)) "
        f"THEN %s::timestamptz END"
    )
    conversation_row = inserts.row_sql(
        Conversation, {**inserts.nulls(Conversation, sender_given), "last_inbound_at": fresh}
    )
    touched = f"excluded.{conv['last_inbound_at']} IS NULL"
    upsert = (
        f"ON CONFLICT ({conv['clinic_id']}, {conv['wa_id']}) DO UPDATE SET "
        f"{conv['last_inbound_at']} = COALESCE(excluded.{conv['last_inbound_at']}, "
        f"{table}.{conv['last_inbound_at']}), "
        f"{conv['last_activity_at']} = CASE WHEN {touched} THEN {table}.{conv['last_activity_at']} "
        f"ELSE excluded.{conv['last_activity_at']} END, "
        # The name only changes with a new message, and when WhatsApp sent one.
        f"{conv['contact_name']} = CASE WHEN {touched} OR excluded.{conv['contact_name']} = '' "
        f"THEN {table}.{conv['contact_name']} ELSE excluded.{conv['contact_name']} END"
    )
    of_sender = f"(SELECT id FROM c WHERE {conv['clinic_id']} = %s AND {conv['wa_id']} = %s)"  # noqa: S608
    message_row = inserts.row_sql(
        Message,
        {
            "conversation_id": of_sender,
            "webhook_event_id": "(SELECT id FROM ev)",
            **inserts.nulls(Message, message_given),
        },
    )
    turn_rows = f", t AS ({turns})" if turns else ""
    return (
        f"WITH ev AS ({inserts.one_row_sql(WebhookEvent)} RETURNING id), "  # noqa: S608
        f"c AS ({inserts.into_sql(Conversation)} VALUES {', '.join([conversation_row] * senders)} "
        f"{upsert} RETURNING id, {conv['clinic_id']}, {conv['wa_id']}), "
        f"m AS ({inserts.into_sql(Message)} VALUES {', '.join([message_row] * messages)} "
        f"ON CONFLICT ({msg['wa_message_id']}) DO NOTHING "
        f"RETURNING {msg['conversation_id']}, {msg['wa_message_id']}){turn_rows} "
        f"SELECT (SELECT id FROM ev), c.id, c.{conv['clinic_id']}, c.{conv['wa_id']}, "
        f"m.{msg['wa_message_id']} FROM c LEFT JOIN m ON m.{msg['conversation_id']} = c.id"
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
