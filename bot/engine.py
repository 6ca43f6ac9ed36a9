"""The conversation state machine (DESIGN §5). CONTRACT STUB — the engine helper fills it in.

`step(snapshot, inbound, ctx)` is pure: no HTTP, no Redis. It reaches clinic data only through
clinics.services / clinics.selectors and triage through bot.triage. bot.processing persists the
returned state and data, queues the replies in the outbox and mirrors page mappings to Redis.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from clinics.models import Clinic


class State(StrEnum):
    START = "START"  # INICIAL
    IDENTIFIED = "IDENTIFIED"  # VALIDADO
    TRIAGED = "TRIAGED"  # SINTOMAS_CLASIFICADOS
    CHOOSING_SLOT = "CHOOSING_SLOT"  # CITAS_MOSTRADAS
    CONFIRMING = "CONFIRMING"  # CITA_SELECCIONADA
    BOOKED = "BOOKED"  # CITA_AGENDADA
    CANCELLING = "CANCELLING"  # CANCELACION_INICIADA
    CLOSED = "CLOSED"  # FINALIZADO


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


@dataclass
class Snapshot:
    """What the engine remembers of a conversation between turns (Conversation row)."""

    state: State = State.START
    data: dict = field(default_factory=dict)  # JSON-serialisable; persisted in Conversation.context
    patient_id: int | None = None


@dataclass
class Context:
    clinic: Clinic
    conversation_id: int  # holds are taken as f"conversation:{conversation_id}"
    wa_id: str
    now: dt.datetime
    llm: object | None = None  # bot.llm helper when OPENAI_API_KEY is set, else None


@dataclass
class StepResult:
    replies: list[Reply]
    snapshot: Snapshot
    needs_staff: bool = False  # the patient asked for a person / identity checks failed
    urgent: bool = False  # red flag: staff must look now
    closed: bool = False
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0


def step(snapshot: Snapshot, inbound: Inbound, ctx: Context) -> StepResult:
    raise NotImplementedError
