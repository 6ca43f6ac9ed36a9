"""Reads for the console: the inbox (keyset pages), one conversation's stream and side card,
and the clinic's live stats."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import statistics
from dataclasses import dataclass, field

from django.db.models import (
    Count,
    DateTimeField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.formats import date_format

from bot import engine, state
from bot.models import (
    Conversation,
    ConversationMode,
    Direction,
    HandoffReason,
    Message,
    MessageStatus,
    Takeover,
)
from clinics.models import (
    Appointment,
    AppointmentSource,
    AppointmentStatus,
    Clinic,
    Slot,
    SlotStatus,
)
from console.models import Note

PAGE_SIZE = 25
MAX_URGENT_ON_TOP = 50
STREAM_LIMIT = 200
WINDOW = dt.timedelta(hours=24)
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

VIEWS = ("open", "urgent", "needs", "mine", "bot", "human", "closed")


class InvalidCursor(ValueError):
    pass


# --- the inbox -----------------------------------------------------------------------------


@dataclass
class InboxPage:
    rows: list[Conversation]
    next_cursor: str | None
    urgent_rows: list[Conversation] = field(default_factory=list)


def encode_cursor(conversation: Conversation) -> str:
    raw = json.dumps(
        {"t": conversation.last_activity_at.isoformat(), "i": conversation.pk},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        at = dt.datetime.fromisoformat(data["t"])
        pk = data["i"]
        if at.tzinfo is None or isinstance(pk, bool) or not isinstance(pk, int):
            raise ValueError("incomplete cursor")
    except (TypeError, ValueError, KeyError, UnicodeError, binascii.Error, AttributeError) as exc:
        raise InvalidCursor("the page cursor is not valid") from exc
    return at, pk


def _last_message(field_name: str):
    return Subquery(
        Message.objects.filter(conversation_id=OuterRef("pk"))
        .order_by("-created_at", "-id")
        .values(field_name)[:1]
    )


def with_row_data(queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
    """What an inbox row shows: last message, messages waiting for an answer, who holds it."""
    last_out = Subquery(
        Message.objects.filter(conversation_id=OuterRef("pk"), direction=Direction.OUT)
        .order_by("-created_at", "-id")
        .values("created_at")[:1],
        output_field=DateTimeField(),
    )
    unanswered = Subquery(
        Message.objects.filter(
            conversation_id=OuterRef("pk"),
            direction=Direction.IN,
            created_at__gt=Coalesce(OuterRef("last_out_at"), Value(EPOCH)),
        )
        .order_by()
        .values("conversation_id")
        .annotate(n=Count("id"))
        .values("n")[:1],
        output_field=IntegerField(),
    )
    return (
        queryset.select_related("clinic", "patient", "assigned_to")
        .annotate(last_message_id=_last_message("id"), last_out_at=last_out)
        .annotate(unanswered=Coalesce(unanswered, Value(0)))
    )


def inbox_queryset(
    *, clinic: Clinic, user, view: str = "open", query: str = ""
) -> QuerySet[Conversation]:
    qs = Conversation.objects.filter(clinic=clinic)
    if view == "closed":
        qs = qs.filter(closed_at__isnull=False)
    else:
        qs = qs.filter(closed_at__isnull=True)
    if view == "urgent":
        qs = qs.filter(urgent=True)
    elif view == "needs":
        qs = qs.filter(needs_staff=True, mode=ConversationMode.BOT)
    elif view == "mine":
        qs = Conversation.objects.filter(clinic=clinic, assigned_to=user)
    elif view == "bot":
        qs = qs.filter(mode=ConversationMode.BOT)
    elif view == "human":
        qs = qs.filter(mode=ConversationMode.HUMAN)
    query = (query or "").strip()[:80]
    if query:
        digits = "".join(ch for ch in query if ch.isdigit())
        if digits and len(digits) >= 3 and len(digits) >= len(query.replace(" ", "")) - 1:
            qs = qs.filter(Q(wa_id__contains=digits) | Q(patient__document__startswith=digits))
        else:
            qs = qs.filter(
                Q(patient__full_name__icontains=query) | Q(contact_name__icontains=query)
            )
    return qs


def inbox_page(
    *,
    clinic: Clinic,
    user,
    view: str = "open",
    query: str = "",
    cursor: str | None = None,
    page_size: int = PAGE_SIZE,
) -> InboxPage:
    """One keyset page ordered by (last activity, id) descending; open urgent ones on top of
    the first page (they are few, and a receptionist must never have to scroll to them)."""
    if view not in VIEWS:
        view = "open"
    base = inbox_queryset(clinic=clinic, user=user, view=view, query=query)
    urgent_rows: list[Conversation] = []
    listed = base
    if view not in ("urgent", "closed") and not query:
        listed = base.filter(urgent=False)
        if cursor is None:
            urgent_rows = list(
                with_row_data(base.filter(urgent=True, closed_at__isnull=True)).order_by(
                    "-last_activity_at", "-id"
                )[:MAX_URGENT_ON_TOP]
            )
    if cursor:
        at, pk = decode_cursor(cursor)
        listed = listed.filter(Q(last_activity_at__lt=at) | Q(last_activity_at=at, id__lt=pk))
    rows = list(with_row_data(listed).order_by("-last_activity_at", "-id")[: page_size + 1])
    has_more = len(rows) > page_size
    rows = rows[:page_size]
    decorate(urgent_rows + rows)
    return InboxPage(
        rows=rows,
        next_cursor=encode_cursor(rows[-1]) if has_more else None,
        urgent_rows=urgent_rows,
    )


def inbox_row(conversation_id: int) -> Conversation | None:
    row = with_row_data(Conversation.objects.filter(pk=conversation_id)).first()
    if row is not None:
        decorate([row])
    return row


def decorate(rows: list[Conversation], now: dt.datetime | None = None) -> None:
    """Facts from outside the row: the processing lock and "typing" in Redis, the window."""
    now = now or timezone.now()
    for row in rows:
        row.flow_label = flow_label(row)
        row.window_closes_at = row.last_inbound_at + WINDOW if row.last_inbound_at else None
        row.window_open = bool(row.window_closes_at and row.window_closes_at > now)
        row.window_seconds = (
            int((row.window_closes_at - now).total_seconds()) if row.window_open else 0
        )
        row.display_name = display_name(row)
        # Precomputed here: an inbox page renders 25 rows, and template filters cost more.
        tz = row.clinic.tz
        local = row.last_activity_at.astimezone(tz)
        row.time_label = (
            local.strftime("%H:%M")
            if local.date() == now.astimezone(tz).date()
            else date_format(local, "j M")
        )
        row.is_urgent = row.urgent and row.closed_at is None
        row.is_waiting = row.needs_staff and row.mode == ConversationMode.BOT
        row.sort_key = f"{int(row.is_urgent)}:{int(local.timestamp()):012d}:{row.pk:012d}"
        row.initials = initials(row.display_name)
        row.deadline = int(row.window_closes_at.timestamp()) if row.window_open else 0
        if row.assigned_to_id and row.assigned_to:
            row.holder_name = row.assigned_to.get_full_name() or row.assigned_to.get_username()
        else:
            row.holder_name = ""
    locked = state.locked_sessions([row.session_id for row in rows]) if rows else set()
    last = {
        m.pk: m
        for m in Message.objects.filter(
            pk__in=[r.last_message_id for r in rows if r.last_message_id]
        ).only("id", "text", "kind", "direction", "created_at")
    }
    for row in rows:
        row.locked = row.session_id in locked
        message = last.get(row.last_message_id)
        row.last_text = message.text if message else ""
        row.last_direction = message.direction if message else ""


def initials(name: str) -> str:
    parts = [p for p in str(name or "").replace("…", "").split() if p[:1].isalpha()]
    return "".join(p[0] for p in parts[:2]).upper() or "#"


def display_name(conversation: Conversation) -> str:
    if conversation.patient_id and conversation.patient:
        return conversation.patient.full_name
    return conversation.contact_name or conversation.masked_wa_id


FLOW_LABELS = {
    engine.State.START: "Greeting",
    engine.State.IDENTIFIED: "Identified",
    engine.State.TRIAGED: "Symptoms classified",
    engine.State.CHOOSING_SLOT: "Choosing a time",
    engine.State.CONFIRMING: "Confirming a time",
    engine.State.BOOKED: "Appointment booked",
    engine.State.CANCELLING: "Cancelling",
    engine.State.CLOSED: "Finished",
    engine.State.VERIFYING: "Verifying identity",
    engine.State.LOCKED_OUT: "Identity locked",
    engine.State.REGISTERING_NAME: "Registering",
    engine.State.CHOOSING_PATIENT: "Choosing whose appointment",
    engine.State.CHOOSING_SPECIALTY: "Choosing a specialty",
    engine.State.RESCHEDULING: "Rescheduling",
    engine.State.WAITING_FOR_STAFF: "Waiting for staff",
}


def flow_label(conversation: Conversation) -> str:
    """The flow state in words (English msgid; templates translate it)."""
    try:
        return FLOW_LABELS.get(engine.State(conversation.state), "In progress")
    except ValueError:
        return "In progress"


# --- one conversation -----------------------------------------------------------------------


@dataclass
class StreamItem:
    kind: str  # "message" | "note"
    at: dt.datetime
    obj: object


def stream(conversation: Conversation, limit: int = STREAM_LIMIT) -> list[StreamItem]:
    """Messages and private notes in time order (the newest `limit` messages)."""
    messages = list(
        Message.objects.filter(conversation=conversation)
        .select_related("sent_by")
        .order_by("-created_at", "-id")[:limit]
    )
    messages.reverse()
    since = messages[0].created_at if messages else EPOCH
    notes = Note.objects.filter(conversation=conversation, created_at__gte=since).select_related(
        "author"
    )
    items = [StreamItem("message", m.created_at, m) for m in messages]
    items += [StreamItem("note", n.created_at, n) for n in notes]
    items.sort(key=lambda item: (item.at, 0 if item.kind == "message" else 1, item.obj.pk))
    return items


def recent_messages(conversation_id: int, limit: int = 30) -> list[Message]:
    rows = list(
        Message.objects.filter(conversation_id=conversation_id)
        .select_related("sent_by")
        .order_by("-created_at", "-id")[:limit]
    )
    rows.reverse()
    return rows


def recent_notes(conversation_id: int, limit: int = 10) -> list[Note]:
    rows = list(
        Note.objects.filter(conversation_id=conversation_id)
        .select_related("author")
        .order_by("-created_at", "-id")[:limit]
    )
    rows.reverse()
    return rows


@dataclass
class Handoff:
    reasons: list[str]
    specialty: str = ""
    symptoms: str = ""
    held_slot: Slot | None = None


# Why the bot handed over, as a receptionist says it (English msgids; templates translate).
HANDOFF_WORDS = {
    HandoffReason.ASKED_FOR_PERSON: "Asked for a person",
    HandoffReason.RED_FLAG: "Red-flag symptoms",
    HandoffReason.IDENTITY_LOCKOUT: "Identity check failed three times",
    HandoffReason.RATE_LIMIT: "Wrote too many messages in a minute",
    HandoffReason.UNSURE: "The bot was unsure of the specialty",
}


def handoff(conversation: Conversation) -> Handoff | None:
    """Why the bot handed over and what it had gathered; None while the bot is fine alone."""
    reasons = []
    if conversation.urgent:
        reasons.append(HANDOFF_WORDS[HandoffReason.RED_FLAG])
    reason = conversation.handoff_reason
    if reason in HANDOFF_WORDS and reason != HandoffReason.RED_FLAG:
        reasons.append(HANDOFF_WORDS[reason])
    if conversation.needs_staff and not reasons:
        reasons.append(HANDOFF_WORDS[HandoffReason.ASKED_FOR_PERSON])
    if not reasons and conversation.mode != ConversationMode.HUMAN:
        return None
    data = conversation.context or {}
    specialty = data.get("specialty_name") or data.get("specialty") or ""
    symptoms = data.get("symptoms") or data.get("pending_symptoms") or ""
    held = data.get("held_slot")
    slot_id = held.get("slot_id") if isinstance(held, dict) else held
    held_slot = (
        Slot.objects.filter(clinic_id=conversation.clinic_id, pk=slot_id)
        .select_related("doctor")
        .first()
        if isinstance(slot_id, int)
        else None
    )
    return Handoff(
        reasons=reasons,
        specialty=str(specialty)[:120],
        symptoms=str(symptoms)[:500],
        held_slot=held_slot,
    )


def patient_appointments(conversation: Conversation, now: dt.datetime | None = None):
    """(upcoming, past) appointments of the conversation's patient (past: the last 5)."""
    if not conversation.patient_id:
        return [], []
    now = now or timezone.now()
    base = Appointment.objects.filter(
        clinic_id=conversation.clinic_id, patient_id=conversation.patient_id
    ).select_related("doctor", "specialty")
    upcoming = list(
        base.filter(
            start_at__gt=now, status__in=[AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED]
        ).order_by("start_at")[:10]
    )
    past = list(base.filter(start_at__lte=now).order_by("-start_at")[:5])
    return upcoming, past


def holder(conversation_id: int) -> Takeover | None:
    return (
        Takeover.objects.filter(conversation_id=conversation_id, ended_at=None)
        .select_related("taken_by")
        .first()
    )


@dataclass(frozen=True)
class Window:
    """WhatsApp's customer-service window: free text only within 24 h of the patient's last
    message."""

    open: bool
    closes_at: dt.datetime | None

    @property
    def seconds_left(self) -> int:
        if not self.open or self.closes_at is None:
            return 0
        return max(0, int((self.closes_at - timezone.now()).total_seconds()))


def reply_window(conversation: Conversation, now: dt.datetime | None = None) -> Window:
    now = now or timezone.now()
    if conversation.last_inbound_at is None:
        return Window(False, None)
    closes_at = conversation.last_inbound_at + WINDOW
    return Window(closes_at > now, closes_at)


# --- live stats -----------------------------------------------------------------------------


@dataclass
class Stats:
    active: int
    human: int
    waiting: int
    longest_wait_seconds: int
    urgent: int
    booked_today_bot: int
    booked_today_staff: int
    booked_today_other: int
    cancelled_today: int
    pending_confirmation: int
    free_slots_today: int
    median_first_response_seconds: float | None
    bot_share: float | None
    per_hour: list[int]
    hour_labels: list[int]
    max_per_hour: int
    current_hour: int

    @property
    def booked_today(self) -> int:
        return self.booked_today_bot + self.booked_today_staff + self.booked_today_other

    @property
    def chart(self) -> dict:
        """Geometry of the bookings-per-hour bar chart (server-rendered SVG)."""
        width, height, left, bottom, top = 640, 180, 8, 22, 18
        slot = (width - left) / max(1, len(self.per_hour))  # a float: bars share the width
        bar_width = max(4, int(slot * 0.62))
        base = height - bottom
        usable = base - top
        bars = []
        for i, (hour, count) in enumerate(zip(self.hour_labels, self.per_hour, strict=True)):
            h = round(usable * count / self.max_per_hour) if count else 0
            # Whole numbers: a localised "22,5" would be two coordinates to SVG.
            x = round(left + i * slot + (slot - bar_width) / 2)
            bars.append(
                {
                    "hour": hour,
                    "count": count,
                    "x": x,
                    "y": base - h,
                    "h": h,
                    "cx": round(x + bar_width / 2),
                    "label_y": base - h - 4,
                    "now": hour == self.current_hour,
                }
            )
        return {
            "width": width,
            "height": height,
            "left": left,
            "base": base,
            "bar_width": bar_width,
            "bars": bars,
        }


def _local_day(clinic: Clinic, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    local = now.astimezone(clinic.tz)
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + dt.timedelta(days=1)


def clinic_stats(clinic: Clinic, now: dt.datetime | None = None) -> Stats:
    now = now or timezone.now()
    day_start, day_end = _local_day(clinic, now)
    open_conversations = Conversation.objects.filter(clinic=clinic, closed_at__isnull=True)
    counts = open_conversations.aggregate(
        active=Count("id", filter=Q(last_activity_at__gte=now - dt.timedelta(hours=24))),
        human=Count("id", filter=Q(mode=ConversationMode.HUMAN)),
        waiting=Count("id", filter=Q(needs_staff=True, mode=ConversationMode.BOT)),
        urgent=Count("id", filter=Q(urgent=True)),
    )
    oldest_waiting = (
        open_conversations.filter(needs_staff=True, mode=ConversationMode.BOT)
        .order_by("last_inbound_at")
        .values_list("last_inbound_at", flat=True)
        .first()
    )
    booked_today = Appointment.objects.filter(
        clinic=clinic, created_at__gte=day_start, created_at__lt=day_end
    )
    by_source = dict(
        booked_today.values_list("source").annotate(n=Count("id")).values_list("source", "n")
    )
    cancelled = Appointment.objects.filter(
        clinic=clinic,
        status=AppointmentStatus.CANCELLED,
        updated_at__gte=day_start,
        updated_at__lt=day_end,
    ).count()
    pending = Appointment.objects.filter(
        clinic=clinic, status=AppointmentStatus.BOOKED, start_at__gt=now
    ).count()
    free_today = Slot.objects.filter(
        clinic=clinic,
        start_at__gte=max(now, day_start),
        start_at__lt=day_end,
        status=SlotStatus.FREE,
    ).count()
    hours = [0] * 24
    for created in booked_today.values_list("created_at", flat=True):
        hours[created.astimezone(clinic.tz).hour] += 1
    first_hour = min([h for h, n in enumerate(hours) if n] + [7])
    last_hour = max([h for h, n in enumerate(hours) if n] + [18, now.astimezone(clinic.tz).hour])
    labels = list(range(first_hour, last_hour + 1))
    bot = by_source.get(AppointmentSource.BOT, 0)
    staff = by_source.get(AppointmentSource.STAFF, 0)
    total = sum(by_source.values())
    return Stats(
        active=counts["active"],
        human=counts["human"],
        waiting=counts["waiting"],
        longest_wait_seconds=int((now - oldest_waiting).total_seconds()) if oldest_waiting else 0,
        urgent=counts["urgent"],
        booked_today_bot=bot,
        booked_today_staff=staff,
        booked_today_other=total - bot - staff,
        cancelled_today=cancelled,
        pending_confirmation=pending,
        free_slots_today=free_today,
        median_first_response_seconds=median_first_response(clinic, day_start, now),
        bot_share=(bot / total) if total else None,
        per_hour=[hours[h] for h in labels],
        hour_labels=labels,
        max_per_hour=max([hours[h] for h in labels] + [1]),
        current_hour=now.astimezone(clinic.tz).hour,
    )


def median_first_response(
    clinic: Clinic, since: dt.datetime, now: dt.datetime, limit: int = 2000
) -> float | None:
    """Median seconds from a conversation's first message today to the first answer to it."""
    first_in = Subquery(
        Message.objects.filter(
            conversation_id=OuterRef("pk"), direction=Direction.IN, created_at__gte=since
        )
        .order_by("created_at")
        .values("created_at")[:1]
    )
    rows = (
        Conversation.objects.filter(clinic=clinic, last_activity_at__gte=since)
        .annotate(first_in=first_in)
        .filter(first_in__isnull=False)
        .annotate(
            first_out=Subquery(
                Message.objects.filter(
                    conversation_id=OuterRef("pk"),
                    direction=Direction.OUT,
                    created_at__gte=OuterRef("first_in"),
                )
                .exclude(status=MessageStatus.SUPPRESSED)
                .order_by("created_at")
                .values("created_at")[:1]
            )
        )
        .filter(first_out__isnull=False)
        .values_list("first_in", "first_out")[:limit]
    )
    waits = [(out - inb).total_seconds() for inb, out in rows]
    return statistics.median(waits) if waits else None
