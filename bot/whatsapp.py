"""The one outbound choke point to the WhatsApp Cloud API (DESIGN §7).

Every outbound message is first a `Message` row (the outbox: status `queued`); `deliver` claims a
row with a conditional UPDATE, POSTs it and records the outcome, so any number of workers can send
without doubling a message, and a crashed sender's row is picked up again when its lease expires.
Messages of one conversation leave in the order they were queued: a row waits while an earlier
row of the same conversation is still pending.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import random
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from bot import network
from bot.messages import (
    MAX_BUTTON_ID,
    MAX_BUTTON_TITLE,
    MAX_BUTTONS,
    MAX_INTERACTIVE_BODY,
    MAX_LIST_BUTTON,
    MAX_LIST_ROWS,
    MAX_ROW_DESCRIPTION,
    MAX_ROW_ID,
    MAX_ROW_TITLE,
    MAX_TEXT_BODY,
    clip,
)
from bot.models import Conversation, Direction, Message, MessageStatus, Takeover
from clinics.identifiers import mask
from sophia_web import inserts, live

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from bot.messages import Reply
    from clinics.models import Clinic

logger = logging.getLogger(__name__)

# Outbox policy.
LEASE = dt.timedelta(seconds=60)  # a 'sending' row older than this belongs to a crashed sender
MAX_ATTEMPTS = 8
RETRY_BASE_SECONDS = 5.0  # 5, 10, 20 … seconds, jittered, capped
RETRY_CAP_SECONDS = 15 * 60.0
RATE_LIMIT_BASE_SECONDS = 60.0  # throttled by Meta: wait much longer before trying again
TYPING_TIMEOUT_SECONDS = 3.0  # the typing indicator is cosmetic: never hold a turn up for long

# Graph API error codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes).
NEEDS_TEMPLATE_CODES = {"131047", "470"}  # outside the 24-hour window: only a template may go
PERMANENT_CODES = NEEDS_TEMPLATE_CODES | {
    "100",  # invalid parameter
    "131008",  # required parameter missing
    "131009",  # parameter value invalid
    "131021",  # recipient cannot be the sender
    "131026",  # message undeliverable (not on WhatsApp, old app, blocked)
    "131030",  # recipient not in the allowed list (test numbers)
    "131051",  # unsupported message type
    "131052",  # media download error
    "131053",  # media upload error
    "132000",  # template parameter count mismatch
    "132001",  # template does not exist
    "132005",  # template hydrated text too long
    "132007",  # template format character policy violated
    "132012",  # template parameter format mismatch
    "132015",  # template paused
    "132016",  # template disabled
    "133010",  # phone number not registered
}
RATE_LIMIT_CODES = {"4", "80007", "130429", "131048", "131056", "133016"}
# Temporary trouble on Meta's side, or credentials an operator can still fix.
RETRYABLE_CODES = {"0", "1", "2", "10", "190", "200", "131000", "131016", "133004"}


class WhatsAppError(Exception):
    """A Graph API call that did not succeed.

    `permanent`: trying again cannot help (bad recipient, outside the 24-hour window…).
    `retry_after`: seconds the API asked us to wait, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        permanent: bool = False,
        retry_after: float | None = None,
        rate_limited: bool = False,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.http_status = http_status

    @property
    def needs_template(self) -> bool:
        return self.code in NEEDS_TEMPLATE_CODES


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def client() -> httpx.Client:
    """The process-wide HTTP client: one connection pool, reused by every send."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = httpx.Client(
                    timeout=_timeout(),
                    limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
                    headers={"User-Agent": "sophia-whatsapp/1"},
                    event_hooks={"request": [network.guard]},
                )
    return _client


def _timeout(total: float | None = None) -> httpx.Timeout:
    seconds = total if total is not None else settings.WHATSAPP_TIMEOUT_SECONDS
    return httpx.Timeout(seconds, connect=min(seconds, 5.0))


def _access_token(clinic: Clinic) -> str:
    return clinic.whatsapp_access_token or settings.WHATSAPP_ACCESS_TOKEN


def post_message(clinic: Clinic, body: dict, *, timeout: float | None = None) -> dict:
    """POST one body to the clinic's /messages endpoint; the JSON answer, or WhatsAppError."""
    url = f"{settings.WHATSAPP_API_URL}/{clinic.phone_number_id}/messages"
    token = _access_token(clinic)
    if not token:
        # A configuration problem an operator can fix: keep the message and retry later.
        raise WhatsAppError("no WhatsApp access token configured", code="no_token")
    try:
        response = client().post(
            url,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=_timeout(timeout),
        )
    except httpx.TimeoutException as exc:
        raise WhatsAppError(f"timeout: {exc.__class__.__name__}") from exc
    except httpx.HTTPError as exc:
        raise WhatsAppError(f"network error: {exc.__class__.__name__}: {exc}") from exc
    if response.is_success:
        try:
            data = response.json()
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}
    raise _error_from_response(response)


def _error_from_response(response: httpx.Response) -> WhatsAppError:
    status = response.status_code
    code: str | None = None
    detail = response.text[:300]
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if isinstance(error, dict) and error:
        code = str(error["code"]) if error.get("code") is not None else None
        error_data = error.get("error_data")
        details = error_data.get("details") if isinstance(error_data, dict) else None
        detail = " — ".join(str(p) for p in (error.get("message"), details) if p)[:300]
    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
    rate_limited = status == 429 or code in RATE_LIMIT_CODES
    if code in PERMANENT_CODES:
        permanent = True
    elif rate_limited or code in RETRYABLE_CODES or status >= 500 or status in (401, 403, 408):
        # Server trouble, throttling, or a credential an operator can still fix: try again later.
        permanent = False
    else:
        # Any other 4xx is a request the API will refuse again.
        permanent = 400 <= status < 500
    return WhatsAppError(
        f"HTTP {status}" + (f" code {code}" if code else "") + (f": {detail}" if detail else ""),
        code=code or str(status),
        permanent=permanent,
        retry_after=retry_after,
        rate_limited=rate_limited,
        http_status=status,
    )


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# Payloads -------------------------------------------------------------------------------------


def _base(to: str) -> dict:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}


def build_payload(to: str, reply: Reply) -> dict:
    """The Graph API body for one engine reply, clipped to WhatsApp's limits so it is never refused.

    A list without rows or a buttons reply without buttons degrades to plain text.
    """
    if reply.kind == "list" and reply.rows:
        rows = list(reply.rows)
        if len(rows) > MAX_LIST_ROWS:
            logger.warning("list reply has %d rows; sending the first %d", len(rows), MAX_LIST_ROWS)
            rows = rows[:MAX_LIST_ROWS]
        wa_rows = []
        for index, row in enumerate(rows, start=1):
            wa_row = {
                "id": clip(row.id, MAX_ROW_ID) or str(index),
                "title": clip(row.title, MAX_ROW_TITLE) or str(index),
            }
            if row.description:
                wa_row["description"] = clip(row.description, MAX_ROW_DESCRIPTION)
            wa_rows.append(wa_row)
        return {
            **_base(to),
            "type": "interactive",
            "interactive": {
                "type": "list",
                "body": {"text": clip(reply.text, MAX_INTERACTIVE_BODY) or "…"},
                "action": {
                    "button": clip(reply.button, MAX_LIST_BUTTON)
                    or clip(_("See options"), MAX_LIST_BUTTON),
                    "sections": [{"rows": wa_rows}],
                },
            },
        }
    if reply.kind == "buttons" and reply.buttons:
        buttons = list(reply.buttons)
        if len(buttons) > MAX_BUTTONS:
            logger.warning("reply has %d buttons; sending the first %d", len(buttons), MAX_BUTTONS)
            buttons = buttons[:MAX_BUTTONS]
        return {
            **_base(to),
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": clip(reply.text, MAX_INTERACTIVE_BODY) or "…"},
                "action": {
                    "buttons": [
                        {
                            "type": "reply",
                            "reply": {
                                "id": clip(b.id, MAX_BUTTON_ID) or str(i),
                                "title": clip(b.title, MAX_BUTTON_TITLE) or str(i),
                            },
                        }
                        for i, b in enumerate(buttons, start=1)
                    ]
                },
            },
        }
    return {
        **_base(to),
        "type": "text",
        "text": {"preview_url": False, "body": clip(reply.text, MAX_TEXT_BODY) or "…"},
    }


def template_payload(
    to: str, name: str, language: str = "es", components: list[dict] | None = None
) -> dict:
    """A template message: the only kind WhatsApp delivers outside the 24-hour window."""
    template: dict = {"name": name, "language": {"code": language}}
    if components:
        template["components"] = components
    return {**_base(to), "type": "template", "template": template}


def payload_text(payload: dict) -> str:
    """Plain text of an outbound body for the dashboard: the body, then the offered choices."""
    kind = payload.get("type")
    if kind == "text":
        return payload.get("text", {}).get("body", "")
    if kind == "template":
        return f"[{payload.get('template', {}).get('name', '')}]"
    if kind == "interactive":
        interactive = payload.get("interactive", {})
        lines = [interactive.get("body", {}).get("text", "")]
        action = interactive.get("action", {})
        for section in action.get("sections", []):
            for row in section.get("rows", []):
                desc = f" — {row['description']}" if row.get("description") else ""
                lines.append(f"• {row.get('title', '')}{desc}")
        for button in action.get("buttons", []):
            lines.append(f"[{button.get('reply', {}).get('title', '')}]")
        return "\n".join(lines)
    return ""


def _payload_kind(payload: dict) -> str:
    if payload.get("type") == "interactive":
        return "list" if payload["interactive"]["type"] == "list" else "buttons"
    return payload.get("type", "text")


# The outbox -----------------------------------------------------------------------------------


def _outbox_row(
    conversation: Conversation,
    payload: dict,
    now: dt.datetime,
    sent_by: AbstractBaseUser | None = None,
    text: str = "",
) -> Message:
    return Message(
        clinic_id=conversation.clinic_id,
        conversation=conversation,
        direction=Direction.OUT,
        kind=_payload_kind(payload),
        text=text or payload_text(payload),
        payload=payload,
        status=MessageStatus.QUEUED,
        created_at=now,
        next_attempt_at=now,
        sent_by=sent_by,
    )


def queue_payloads(
    conversation: Conversation, payloads: list[dict], *, sent_by: AbstractBaseUser | None = None
) -> list[Message]:
    """Outbox rows for ready-made Graph API bodies, due now, in the given order.

    One INSERT by sophia_web.inserts (every turn with a reply comes here: `bulk_create` cost
    the turn more Python than the statement cost PostgreSQL). The ids come back in the rows'
    order, as `bulk_create` relies on too (PostgreSQL and SQLite ≥ 3.35 return them so)."""
    now = timezone.now()
    rows = [_outbox_row(conversation, payload, now, sent_by) for payload in payloads]
    if not rows:
        return rows
    with connection.cursor() as cursor:
        ids = inserts.insert(cursor, Message, [inserts.values_of(row) for row in rows], now)
        alias = cursor.db.alias
    for row, (pk,) in zip(rows, ids, strict=True):
        row.pk = pk
        row._state.adding = False
        row._state.db = alias
    return rows


def queue_replies(
    conversation: Conversation, replies: list[Reply], *, sent_by: AbstractBaseUser | None = None
) -> list[Message]:
    """Queue engine (or staff) replies for `conversation`; the caller delivers them after commit."""
    return queue_payloads(
        conversation, [build_payload(conversation.wa_id, r) for r in replies], sent_by=sent_by
    )


def queue_template(
    conversation: Conversation,
    name: str,
    *,
    language: str = "es",
    components: list[dict] | None = None,
    text: str = "",
) -> Message:
    """Queue a template message (reminders outside the 24-hour window); `text` is for staff."""
    payload = template_payload(conversation.wa_id, name, language, components)
    message = _outbox_row(conversation, payload, timezone.now(), text=text)
    message.save()
    return message


_PENDING = [MessageStatus.QUEUED, MessageStatus.SENDING]


def _due(now: dt.datetime) -> Q:
    return Q(next_attempt_at__lte=now) | Q(next_attempt_at__isnull=True)


def _claim(message_id: int) -> bool:
    """queued (due) or sending-with-expired-lease → sending with a fresh lease; True if we won."""
    now = timezone.now()
    earlier_pending = Message.objects.filter(
        conversation_id=OuterRef("conversation_id"),
        direction=Direction.OUT,
        status__in=_PENDING,
        id__lt=OuterRef("id"),
    )
    claimed = (
        Message.objects.filter(id=message_id, direction=Direction.OUT, status__in=_PENDING)
        .filter(_due(now))
        .exclude(Exists(earlier_pending))
        .exclude(_held_by_staff())
        .update(status=MessageStatus.SENDING, next_attempt_at=now + LEASE)
    )
    if claimed == 0:
        _suppress_if_held(message_id)
    return claimed == 1


def _held_by_staff() -> Q:
    """A bot reply (no staff sender, not a template) of a conversation staff have taken over.

    Checked here, where messages are released, and not only where a turn starts: a takeover
    that commits while a turn runs stops that turn's replies too (DESIGN §6, human mode).
    """
    open_takeover = Takeover.objects.filter(
        conversation_id=OuterRef("conversation_id"), ended_at=None
    )
    return Q(sent_by__isnull=True) & ~Q(kind="template") & Q(Exists(open_takeover))


def _suppress_if_held(*message_ids: int) -> None:
    suppressed = (
        Message.objects.filter(id__in=message_ids, direction=Direction.OUT, status__in=_PENDING)
        .filter(_held_by_staff())
        .update(
            status=MessageStatus.SUPPRESSED,
            next_attempt_at=None,
            error="not sent: staff took the conversation over",
        )
    )
    if suppressed:
        logger.info("%s outbound message(s) suppressed: staff hold the conversation", suppressed)
        rows = Message.objects.filter(pk__in=message_ids)
        live.touch(set(rows.values_list("conversation_id", flat=True)))


def _backoff_seconds(attempt: int, error: WhatsAppError) -> float:
    base = RATE_LIMIT_BASE_SECONDS if error.rate_limited else RETRY_BASE_SECONDS
    delay = min(RETRY_CAP_SECONDS, base * 2 ** max(0, attempt - 1))
    delay *= random.uniform(0.8, 1.2)  # jitter: retries from many rows don't arrive together
    if error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return delay


def _wamid_of(data: dict, message_id: int) -> str | None:
    """WhatsApp's id of a message the API accepted (None, logged, when it gave none)."""
    wamid = None
    messages = data.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        wamid = messages[0].get("id") or None
    if wamid is None:
        logger.warning("outbound message %s: sent, but the API returned no message id", message_id)
    return wamid


def _deliver_one(message_id: int) -> bool:
    if not _claim(message_id):
        return False
    return _send_claimed(Message.objects.select_related("clinic").get(pk=message_id))


def send_queued(rows: list[Message]) -> int:
    """Send rows just queued together (one turn's replies) in order, right after their
    transaction committed; how many went out. They are claimed in one statement and sent from
    memory; the first failure leaves the rest to the outbox (`deliver_due`)."""
    if not rows:
        return 0
    now = timezone.now()
    ids = [row.pk for row in rows]
    with connection.cursor() as cursor:
        cursor.execute(
            _claim_rows_sql(len(ids)),
            [
                MessageStatus.SENDING,
                connection.ops.adapt_datetimefield_value(now + LEASE),
                *ids,
                MessageStatus.QUEUED,
                Direction.OUT,
                *_PENDING,
                *ids,
                "template",
            ],
        )
        claimed = cursor.rowcount
    if claimed != len(rows):
        _suppress_if_held(*ids)  # staff took over while the turn ran: none of it goes out
        # Behind an older pending row, or a worker took some: one at a time, by the rules.
        Message.objects.filter(id__in=ids, status=MessageStatus.SENDING).update(
            status=MessageStatus.QUEUED, next_attempt_at=now
        )
        return int(deliver(ids[0]))
    sent = 0
    for index, row in enumerate(rows):
        row.clinic = row.conversation.clinic  # loaded with the turn's conversation
        if not _send_claimed(row):
            Message.objects.filter(id__in=ids[index + 1 :], status=MessageStatus.SENDING).update(
                status=MessageStatus.QUEUED, next_attempt_at=now
            )
            break
        sent += 1
    return sent


# A turn's replies are claimed and marked sent on the hot path of every turn: these two
# statements are written by hand (the ORM spent more Python building them than PostgreSQL spent
# running them; bench/README.md) — the same SQL on PostgreSQL and SQLite, from the models' names.


@functools.cache
def _claim_rows_sql(rows: int) -> str:
    """`send_queued`'s claim: these queued rows → sending with a lease, unless an earlier row of
    their conversation (not one of them) is still pending or staff hold it (`_held_by_staff`)."""
    quote = connection.ops.quote_name
    table, takeovers = quote(Message._meta.db_table), quote(Takeover._meta.db_table)
    c, t = inserts.columns(Message), inserts.columns(Takeover)
    ids = ", ".join(["%s"] * rows)
    conversation = f"{table}.{c['conversation_id']}"
    return (
        f"UPDATE {table} SET {c['status']} = %s, {c['next_attempt_at']} = %s "  # noqa: S608
        f"WHERE {c['id']} IN ({ids}) AND {c['status']} = %s "
        f"AND NOT EXISTS (SELECT 1 FROM {table} earlier "
        f"WHERE earlier.{c['conversation_id']} = {conversation} "
        f"AND earlier.{c['direction']} = %s AND earlier.{c['status']} IN (%s, %s) "
        f"AND earlier.{c['id']} < {table}.{c['id']} AND earlier.{c['id']} NOT IN ({ids})) "
        f"AND NOT ({table}.{c['sent_by_id']} IS NULL AND {table}.{c['kind']} <> %s "
        f"AND EXISTS (SELECT 1 FROM {takeovers} WHERE {takeovers}.{t['conversation_id']} = "
        f"{conversation} AND {takeovers}.{t['ended_at']} IS NULL))"
    )


@functools.cache
def _sent_sql(with_wamid: bool) -> str:
    """A claimed row went out: sent, one attempt more, no error (and WhatsApp's id)."""
    quote = connection.ops.quote_name
    c = inserts.columns(Message)
    wamid = f"{c['wa_message_id']} = %s, " if with_wamid else ""
    return (
        f"UPDATE {quote(Message._meta.db_table)} SET {wamid}{c['status']} = %s, "  # noqa: S608
        f"{c['attempts']} = {c['attempts']} + 1, {c['next_attempt_at']} = NULL, "
        f"{c['error_code']} = '', {c['error']} = '' WHERE {c['id']} = %s AND {c['status']} = %s"
    )


def _mark_sent(message_id: int, wamid: str | None) -> None:
    params = [MessageStatus.SENT, message_id, MessageStatus.SENDING]
    try:
        # One statement: outside a transaction it needs no savepoint to fail on its own.
        savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
        with savepoint, connection.cursor() as cursor:
            cursor.execute(_sent_sql(True), [wamid, *params])
    except IntegrityError:
        # The message did go out; a reused id only costs us its status updates.
        logger.error("outbound message %s: WhatsApp id %s is already taken", message_id, wamid)
        with connection.cursor() as cursor:
            cursor.execute(_sent_sql(False), params)


def _send_claimed(message: Message) -> bool:
    """POST a row this process claimed and record the outcome on it."""
    message_id = message.pk
    attempt = message.attempts + 1
    try:
        data = post_message(message.clinic, message.payload)
    except Exception as exc:
        if not isinstance(exc, WhatsAppError):
            # A bug must not strand the row in 'sending' for a whole lease, nor kill the worker.
            logger.exception("outbound message %s: unexpected error while sending", message_id)
            exc = WhatsAppError(repr(exc)[:300])
        mine = Message.objects.filter(pk=message_id, status=MessageStatus.SENDING)
        return _record_failure(message, mine, attempt, exc)
    _mark_sent(message_id, _wamid_of(data, message_id))
    live.touch([message.conversation_id], clinic_id=message.clinic_id)
    logger.info(
        "outbound message %s sent to %s (attempt %d)",
        message_id,
        mask(message.payload.get("to", "")),
        attempt,
    )
    return True


def _record_failure(
    message: Message, mine: QuerySet[Message], attempt: int, exc: WhatsAppError
) -> bool:
    code = (exc.code or "")[:16]
    recipient = mask(str(message.payload.get("to", "")))
    live.touch([message.conversation_id], clinic_id=message.clinic_id)
    if exc.permanent or attempt >= MAX_ATTEMPTS:
        reason = "needs a template (outside the 24-hour window): " if exc.needs_template else ""
        mine.update(
            status=MessageStatus.FAILED,
            attempts=F("attempts") + 1,
            next_attempt_at=None,
            error_code=code,
            error=f"{reason}{exc}"[:2000],
        )
        logger.warning(
            "outbound message %s to %s failed for good after %d attempt(s): %s",
            message.pk,
            recipient,
            attempt,
            exc,
        )
        return False
    delay = _backoff_seconds(attempt, exc)
    mine.update(
        status=MessageStatus.QUEUED,
        attempts=F("attempts") + 1,
        next_attempt_at=timezone.now() + dt.timedelta(seconds=delay),
        error_code=code,
        error=str(exc)[:2000],
    )
    logger.warning(
        "outbound message %s to %s: attempt %d failed (%s); retrying in %.0f s",
        message.pk,
        recipient,
        attempt,
        exc,
        delay,
    )
    return False


def _next_in_conversation(message_id: int) -> int | None:
    message = Message.objects.filter(pk=message_id).values("conversation_id").first()
    if message is None:
        return None
    return (
        Message.objects.filter(
            conversation_id=message["conversation_id"],
            direction=Direction.OUT,
            status=MessageStatus.QUEUED,
            id__gt=message_id,
        )
        .filter(_due(timezone.now()))
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )


def deliver(message_id: int) -> bool:
    """Send one outbox row now if it is due and nobody else is sending it; True if it went out.

    After a success the conversation's next due rows follow, so replies that waited behind this
    one leave at once, in order. Never raises for HTTP problems: failures are recorded on the row.
    """
    sent = _deliver_one(message_id)
    if sent:
        current = message_id
        while (following := _next_in_conversation(current)) is not None and _deliver_one(following):
            current = following
    return sent


def deliver_many(message_ids: Sequence[int]) -> int:
    """Send several outbox rows of different conversations (reminders, waitlist offers) with
    one claim for all and one write for all that went out, instead of `deliver`'s two per row.

    Same rules as `deliver`: only due rows nobody else is sending and with no earlier pending
    row in their conversation (the others stay for the outbox); failures are recorded row by
    row. How many went out.
    """
    if not message_ids:
        return 0
    now = timezone.now()
    earlier_pending = Message.objects.filter(
        conversation_id=OuterRef("conversation_id"),
        direction=Direction.OUT,
        status__in=_PENDING,
        id__lt=OuterRef("id"),
    )
    with transaction.atomic():
        claimed = list(
            Message.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("clinic")
            .filter(id__in=list(message_ids), direction=Direction.OUT, status__in=_PENDING)
            .filter(_due(now))
            .exclude(Exists(earlier_pending))
            .exclude(_held_by_staff())
            .order_by("id")
        )
        Message.objects.filter(pk__in=[m.pk for m in claimed]).update(
            status=MessageStatus.SENDING, next_attempt_at=now + LEASE
        )
    sent: list[Message] = []
    for message in claimed:
        mine = Message.objects.filter(pk=message.pk, status=MessageStatus.SENDING)
        attempt = message.attempts + 1
        try:
            data = post_message(message.clinic, message.payload)
        except WhatsAppError as exc:
            _record_failure(message, mine, attempt, exc)
            continue
        except Exception as exc:
            logger.exception("outbound message %s: unexpected error while sending", message.pk)
            _record_failure(message, mine, attempt, WhatsAppError(repr(exc)[:300]))
            continue
        message.wa_message_id = _wamid_of(data, message.pk)
        message.status = MessageStatus.SENT
        message.attempts = attempt
        message.next_attempt_at = None
        message.error_code = message.error = ""
        sent.append(message)
    fields = ["wa_message_id", "status", "attempts", "next_attempt_at", "error_code", "error"]
    try:
        with transaction.atomic():
            Message.objects.bulk_update(sent, fields)
    except IntegrityError:
        # A reused WhatsApp id: record the others one by one (they did go out).
        for message in sent:
            try:
                with transaction.atomic():
                    message.save(update_fields=fields)
            except IntegrityError:
                logger.error("outbound message %s: its WhatsApp id is already taken", message.pk)
                message.wa_message_id = None
                message.save(update_fields=fields)
    for message in sent:
        logger.info(
            "outbound message %s sent to …%s (attempt %d)",
            message.pk,
            str(message.payload.get("to", ""))[-4:],
            message.attempts,
        )
    return len(sent)


def deliver_due(limit: int = 100) -> int:
    """Deliver every due outbox row (and rows whose sender crashed); how many went out."""
    now = timezone.now()
    ids = list(
        Message.objects.filter(direction=Direction.OUT, status__in=_PENDING)
        .filter(_due(now))
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    # Oldest first, so a conversation's rows go out in the order they were queued.
    return sum(1 for message_id in sorted(ids) if _deliver_one(message_id))


def send_typing(clinic: Clinic, inbound_wa_message_id: str) -> None:
    """Mark the patient's message read and show "typing…" (best effort: never raises)."""
    body = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": inbound_wa_message_id,
        "typing_indicator": {"type": "text"},
    }
    try:
        post_message(
            clinic, body, timeout=min(TYPING_TIMEOUT_SECONDS, settings.WHATSAPP_TIMEOUT_SECONDS)
        )
    except Exception as exc:
        logger.warning("typing indicator for clinic %s not sent: %s", clinic.pk, exc)
