"""Plain value types the bot passes around: messages in and out, and the clinic data the engine
reads through its gateway (bot.gateway). No Django, no I/O: the engine, the replies, the
WhatsApp client and the tests all build and read these.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Literal

# --- messages --------------------------------------------------------------------------------

# WhatsApp's limits (Cloud API reference, "Interactive messages"): bot.replies words within them,
# bot.whatsapp clips whatever reaches it to them.
MAX_TEXT_BODY = 4096
MAX_INTERACTIVE_BODY = 1024
MAX_LIST_ROWS = 10
MAX_ROW_TITLE = 24
MAX_ROW_DESCRIPTION = 72
MAX_ROW_ID = 200
MAX_LIST_BUTTON = 20
MAX_BUTTONS = 3
MAX_BUTTON_TITLE = 20
MAX_BUTTON_ID = 256


def clip(text: str, limit: int) -> str:
    """Shorten to `limit` characters, ending in "…" when something was cut."""
    text = (text or "").strip()
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"


@dataclass(frozen=True)
class Inbound:
    """One patient message, already parsed from the webhook."""

    kind: Literal["text", "interactive", "button", "unsupported"]
    text: str = ""  # text body, or the title of the chosen row/button
    reply_id: str = ""  # id of an interactive list/button reply or a template button payload
    wa_id: str = ""
    contact_name: str = ""


@dataclass(frozen=True)
class Row:
    id: str
    title: str  # ≤ 24 chars
    description: str = ""  # ≤ 72 chars


@dataclass(frozen=True)
class Button:
    id: str
    title: str  # ≤ 20 chars


@dataclass(frozen=True)
class Reply:
    """One outbound WhatsApp message; bot.whatsapp turns it into a Graph API body."""

    kind: Literal["text", "list", "buttons"]
    text: str
    rows: tuple[Row, ...] = ()  # list: ≤ 10 rows
    button: str = ""  # list: the button label, ≤ 20 chars
    buttons: tuple[Button, ...] = ()  # buttons: ≤ 3


# --- clinic data as the engine sees it -------------------------------------------------------


@dataclass(frozen=True)
class ClinicInfo:
    id: int
    name: str
    time_zone: str = "America/Bogota"
    address: str = ""
    opening_hours: str = ""
    what_to_bring: str = ""
    emergency_line: str = "123"
    self_registration: bool = True

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)


@dataclass(frozen=True)
class SpecialtyInfo:
    id: int
    slug: str
    name: str
    keywords: tuple[str, ...] = ()

    def keyword_list(self) -> list[str]:
        """What bot.triage reads (the same name as on clinics.models.Specialty)."""
        return list(self.keywords)


@dataclass(frozen=True)
class PatientInfo:
    id: int
    full_name: str
    birth_date: dt.date | None = None
    whatsapp_id: str = ""  # the number on file (others may have been linked since)


@dataclass(frozen=True)
class SlotInfo:
    id: int
    start_at: dt.datetime
    doctor_name: str
    doctor_id: int | None = None


@dataclass(frozen=True)
class SlotPage:
    slots: tuple[SlotInfo, ...]
    next_cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class AppointmentInfo:
    id: int
    start_at: dt.datetime
    doctor_name: str
    specialty: SpecialtyInfo | None = None
    patient_id: int | None = None
    patient_name: str = ""  # filled where one number's patients are listed together


@dataclass(frozen=True)
class DoctorInfo:
    id: int
    full_name: str
    specialty_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class FaqInfo:
    """One of the clinic's FAQ entries (clinics.FaqEntry): the bot answers only from these."""

    id: int
    question: str
    keywords: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class SlotFilter:
    """Which slots a patient asked for: instants (`start` inclusive, `end` exclusive), the
    clinic's wall-clock `time_from`/`time_to` of the start, local `weekdays` (0 = Monday), one
    doctor, and the patient whose own appointments no offered slot may overlap."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None
    time_from: dt.time | None = None
    time_to: dt.time | None = None
    weekdays: tuple[int, ...] | None = None
    doctor_id: int | None = None
    patient_id: int | None = None


@dataclass(frozen=True)
class OutreachResult:
    """What answering a reminder or a waitlist offer did. `outcome` is one of the outcome names
    of outreach.reminders.Answer or outreach.waitlist.OfferOutcome ("confirmed", "booked",
    "taken", "not_found", …)."""

    outcome: str
    appointment: AppointmentInfo | None = None
