"""The conversation state machine (DESIGN §5, §6 Identity).

`step(snapshot, inbound, ctx)` is pure: no HTTP, no Redis, no ORM. It reaches clinic data only
through the gateway in its context (bot.gateway: clinics.selectors/services behind a Protocol,
an in-memory one in the tests) and triage through bot.triage. bot.processing persists the
returned state and data, queues the replies in the outbox and mirrors page mappings to Redis.

Every message first passes the red-flag check, then the "talk to a person" check; then the
handler of the current state (one per state, in `HANDLERS`) decides. Deterministic paths —
documents, dates, numbers, yes/no, list and button replies — never call an LLM.

Keys in `Snapshot.data` (JSON):
    specialty        slug of the specialty whose slots are shown / being booked
    symptoms         what the patient reported (→ Appointment.patient_notes)
    page             1-based number of the slot page shown last
    cursors          cursors[i] fetches page i + 1 (cursors[0] is None): "anterior" works
    has_more         whether a next slot page exists
    shown            slot ids of the page shown last, in display order
    shown_times      their local "HH:MM", same order (for "el de las 10")
    held_slot        slot id held while CONFIRMING
    reschedule_id    appointment being moved (reschedule flow)
    options          appointment ids offered in CANCELLING / RESCHEDULING
    cancel_id        appointment awaiting the cancel confirmation
    specialty_options slugs offered in CHOOSING_SPECIALTY, in order
    verify           {"document", "patient_id"} while the birth date is asked (patient_id, or
                     None for a document on file nowhere, is never shown to the sender)
    register         {"document", "birth_date", "on_file"} while the name is asked
    pending          what the patient asked before identifying ("cancel", "reschedule", …)
    pending_symptoms symptoms written before identifying (or before saying whose they are)
    whose_options    patient ids offered in CHOOSING_PATIENT
    whose_chosen     the writer said whose appointment it is: don't ask again
    want             what the patient asked for: {"from", "to": ISO local dates, "time_from",
                     "time_to": "HH:MM", "weekdays", "part", "doctor_id", "doctor_name"}
    pending_want     `want` of a rescheduling request while the appointment is being picked
    shown_day        local ISO date of the first slot shown ("no puedo ese día")
    recent           [[ISO time, text], …] the last few messages, read together for red flags
    handoff_reason   why staff were asked to take over (asked_for_person, red_flag,
                     identity_lockout, unsure); cleared by `resume_after_staff`
    queue_noticed    the patient was told once that they are in the queue
    offered_person   the bot said "no sé" and offered a person: "sí" accepts
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from bot import nlu, replies, triage
from bot.messages import (
    MAX_LIST_ROWS,
    AppointmentInfo,
    ClinicInfo,
    Inbound,
    PatientInfo,
    Reply,
    SlotFilter,
    SlotInfo,
    SpecialtyInfo,
)
from bot.nlu import Intent
from bot.text import normalize
from clinics.errors import BookingError
from outreach import replies as outreach_replies

if TYPE_CHECKING:
    from bot.gateway import Gateway

logger = logging.getLogger(__name__)


class State(StrEnum):
    START = "START"  # INICIAL
    IDENTIFIED = "IDENTIFIED"  # VALIDADO
    TRIAGED = "TRIAGED"  # SINTOMAS_CLASIFICADOS (transient: slots are shown in the same turn)
    CHOOSING_SLOT = "CHOOSING_SLOT"  # CITAS_MOSTRADAS
    CONFIRMING = "CONFIRMING"  # CITA_SELECCIONADA
    BOOKED = "BOOKED"  # CITA_AGENDADA
    CANCELLING = "CANCELLING"  # CANCELACION_INICIADA
    CLOSED = "CLOSED"  # FINALIZADO
    # Added by the engine (not in the seed):
    VERIFYING = "VERIFYING"  # a document this number doesn't speak for: asking the birth date
    LOCKED_OUT = "LOCKED_OUT"  # the number is locked out of identity checks until staff lift it
    REGISTERING_NAME = "REGISTERING_NAME"  # after a birth date that opened nothing: the name
    CHOOSING_PATIENT = "CHOOSING_PATIENT"  # one phone, several patients: whose appointment
    CHOOSING_SPECIALTY = "CHOOSING_SPECIALTY"  # triage unsure: patient picks from a list
    RESCHEDULING = "RESCHEDULING"  # picking which appointment to move
    WAITING_FOR_STAFF = "WAITING_FOR_STAFF"  # handed to a person: only red flags are answered


@dataclass
class Snapshot:
    """What the engine remembers of a conversation between turns (Conversation row)."""

    state: State = State.START
    data: dict = field(default_factory=dict)  # JSON-serialisable; persisted in Conversation.context
    patient_id: int | None = None


@dataclass
class Context:
    gateway: Gateway  # the clinic's data, for this conversation (holds are taken in its name)
    conversation_id: int  # for log lines
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
    handoff_reason: str = ""  # why staff should look (HandoffReason), "" when they needn't


class HandoffReason(StrEnum):
    """Why a conversation waits for staff: shown on the console's handoff card."""

    ASKED_FOR_PERSON = "asked_for_person"
    RED_FLAG = "red_flag"
    IDENTITY_LOCKOUT = "identity_lockout"
    RATE_LIMIT = "rate_limit"  # set by bot.processing, not by the engine
    UNSURE = "unsure"


# --- the machine ------------------------------------------------------------------------------

PAGE_SIZE = 10
LOOKAHEAD_PAGES = 5  # how many pages "el de las 10" searches, from the first
# Data that survives the end of a flow (a booking, a cancellation, a goodbye).
_IDENTITY_KEYS = ("recent", "handoff_reason", "queue_noticed")
RECENT_WINDOW = dt.timedelta(minutes=15)  # messages read together for red flags
# Ids of the rows and buttons the engine sends ("slot:42", "confirm:yes", …).
_REPLY_PREFIXES = (
    "slot:",
    "spec:",
    "appt:",
    "confirm:",
    "cancel:",
    "human:",
    "reminder:",
    "waitlist:",
    "who:",
)
_FAQ_INTENTS = (Intent.ADDRESS, Intent.HOURS, Intent.WHAT_TO_BRING, Intent.PHONE)


def _faq(intent: Intent, clinic: ClinicInfo) -> Reply:
    """Questions answered from the clinic's own data, never by an LLM."""
    build = {
        Intent.ADDRESS: replies.address,
        Intent.HOURS: replies.hours,
        Intent.WHAT_TO_BRING: replies.what_to_bring,
        Intent.PHONE: replies.phone,
    }[intent]
    return build(clinic)


@dataclass
class Request:
    """What one message asked for: the new `want`, an exact time, and what to tell first."""

    want: dict
    at: nlu.TimeRequest | None = None
    earliest: bool = False
    changed: bool = False  # a day, a time of day or a doctor was asked for
    notice: Reply | None = None  # "no encontré a la Dra. …", "¿con cuál?"


_DATE_KEYS = ("from", "to", "weekdays")
_TIME_KEYS = ("time_from", "time_to", "part")


@dataclass
class Turn:
    """One run of `step`: the snapshot being changed and everything the turn will answer."""

    snap: Snapshot
    inbound: Inbound
    ctx: Context
    replies: list[Reply] = field(default_factory=list)
    needs_staff: bool = False
    urgent: bool = False
    closed: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    handoff_reason: str = ""
    request: Request | None = None  # the day/time/doctor this message asked for
    pending_want: dict | None = None  # a rescheduling's request, until the appointment is known
    _patient: PatientInfo | None = None

    @property
    def text(self) -> str:
        return self.inbound.text or ""

    @property
    def reply_id(self) -> str:
        return self.inbound.reply_id or ""

    @property
    def data(self) -> dict:
        return self.snap.data

    @property
    def gateway(self) -> Gateway:
        return self.ctx.gateway

    @property
    def clinic(self) -> ClinicInfo:
        return self.ctx.gateway.clinic

    @property
    def today(self) -> dt.date:
        return self.ctx.now.astimezone(self.clinic.tz).date()

    def say(self, reply: Reply) -> None:
        self.replies.append(reply)

    def go(self, state: State) -> None:
        self.snap.state = state

    def patient(self) -> PatientInfo | None:
        """The verified patient of this conversation, or None."""
        if self.snap.patient_id is None:
            return None
        if self._patient is None or self._patient.id != self.snap.patient_id:
            self._patient = self.gateway.patient(self.snap.patient_id)
        return self._patient

    def result(self) -> StepResult:
        reason = self.handoff_reason
        if not reason and self.urgent:
            reason = HandoffReason.RED_FLAG
        elif not reason and self.needs_staff:
            reason = HandoffReason.UNSURE
        if reason:
            # The first reason stays until staff hand the chat back (resume_after_staff).
            reason = self.snap.data.setdefault("handoff_reason", str(reason))
        return StepResult(
            handoff_reason=reason,
            replies=self.replies,
            snapshot=self.snap,
            needs_staff=self.needs_staff,
            urgent=self.urgent,
            closed=self.closed,
            llm_prompt_tokens=self.prompt_tokens,
            llm_completion_tokens=self.completion_tokens,
        )


def step(snapshot: Snapshot, inbound: Inbound, ctx: Context) -> StepResult:
    """One inbound message → replies and the next snapshot (the given one is not modified)."""
    snap = Snapshot(
        state=snapshot.state if isinstance(snapshot.state, State) else _state(snapshot.state),
        data=_copy(snapshot.data or {}),
        patient_id=snapshot.patient_id,
    )
    if inbound.reply_id and not inbound.reply_id.startswith(_REPLY_PREFIXES):
        # Not one of ours (a template button's payload, an old menu): read its title as text.
        inbound = Inbound(
            kind="text",
            text=inbound.text,
            wa_id=inbound.wa_id,
            contact_name=inbound.contact_name,
        )
    turn = Turn(snap=snap, inbound=inbound, ctx=ctx)
    if snap.patient_id is not None and not ctx.gateway.patient_verified_on(
        patient_id=snap.patient_id, wa_id=ctx.wa_id
    ):
        # Staff removed this number from the patient: it speaks for them no more.
        snap.patient_id = None
        snap.data = {}
        snap.state = State.START
    if inbound.kind == "unsupported":
        turn.say(replies.unsupported())
        return turn.result()
    # Red flags first, in every state, judged over the last few messages together ("me duele
    # el pecho" … "y se me duerme el brazo izquierdo"): an emergency message, never a list.
    if inbound.kind == "text" and _red_flag(turn):
        turn.say(replies.emergency(turn.clinic))
        turn.urgent = True
        turn.data.pop("recent", None)  # answered: the same signs must not fire again
        logger.info("conversation %s: red flag, urgent", ctx.conversation_id)
        return turn.result()
    if turn.snap.state == State.WAITING_FOR_STAFF:
        _on_waiting_for_staff(turn)
        return turn.result()
    if (
        not turn.reply_id and nlu.detect_intent(turn.text) == Intent.HUMAN
    ) or turn.reply_id == replies.HUMAN_YES:
        _hand_off(turn, HandoffReason.ASKED_FOR_PERSON)
        return turn.result()
    if turn.data.pop("offered_person", False) and not turn.reply_id:
        if nlu.is_yes(turn.text):
            _hand_off(turn, HandoffReason.UNSURE)
            return turn.result()
        if nlu.is_no(turn.text) and len(normalize(turn.text).split()) <= 3:
            turn.say(replies.person_declined())
            return turn.result()
    if turn.reply_id == replies.HUMAN_NO:
        turn.say(replies.person_declined())
        return turn.result()
    if _outreach(turn):
        return turn.result()
    HANDLERS[turn.snap.state](turn)
    return turn.result()


def resume_after_staff(snapshot: Snapshot) -> Snapshot:
    """The snapshot to store when staff hand a conversation back to the bot: the patient stays
    identified (IDENTIFIED) or the bot starts over (START); the handoff is forgotten. (Failed
    identity checks are kept by the gateway, not here.)"""
    state = State.IDENTIFIED if snapshot.patient_id else State.START
    return Snapshot(state=state, data={}, patient_id=snapshot.patient_id)


def _hand_off(turn: Turn, reason: HandoffReason) -> None:
    """A person takes it from here: the bot says so and steers no more (only red flags)."""
    _release_hold(turn)
    _reset_flow(turn)
    turn.data["handoff_reason"] = str(reason)
    turn.handoff_reason = reason
    turn.needs_staff = True
    turn.go(State.WAITING_FOR_STAFF)
    turn.say(replies.human_requested())
    logger.info("conversation %s: handed to staff (%s)", turn.ctx.conversation_id, reason)


def _on_waiting_for_staff(turn: Turn) -> None:
    """Nothing but one reminder that a person will write; red flags are answered before this."""
    turn.needs_staff = True
    if not turn.data.get("queue_noticed"):
        turn.data["queue_noticed"] = True
        turn.say(replies.queue_notice())


def _state(value: object) -> State:
    try:
        return State(str(value))
    except ValueError:
        return State.START


def _copy(data: dict) -> dict:
    return copy.deepcopy(data)


def _red_flag(turn: Turn) -> bool:
    """Remember this message among the recent ones, and judge them together."""
    now = turn.ctx.now
    recent = []
    for item in turn.data.get("recent") or []:
        try:
            at, text = dt.datetime.fromisoformat(item[0]), str(item[1])
        except (TypeError, ValueError, IndexError):
            continue
        if now - at <= RECENT_WINDOW:
            recent.append([at.isoformat(), text])
    if turn.text.strip():
        recent.append([now.isoformat(), turn.text[:500]])
    turn.data["recent"] = recent[-triage.RECENT_MESSAGES :]
    texts = [text for _, text in turn.data["recent"]]
    return bool(texts) and triage.detect_red_flag_in_messages(texts) is not None


def _reply_value(turn: Turn, prefix: str) -> str | None:
    """The part after `prefix:` of a list/button reply id ("slot:42" → "42")."""
    if turn.reply_id.startswith(f"{prefix}:"):
        return turn.reply_id.split(":", 1)[1]
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _reset_flow(turn: Turn) -> None:
    """Forget the current flow (slots, options, holds…) but not who the patient is."""
    kept = {k: turn.data[k] for k in _IDENTITY_KEYS if k in turn.data}
    turn.data.clear()
    turn.data.update(kept)


def _release_hold(turn: Turn) -> None:
    slot_id = turn.data.pop("held_slot", None)
    if slot_id is None:
        return
    try:
        turn.gateway.slot_release(slot_id=slot_id)
    except BookingError as exc:
        logger.info("conversation %s: release failed: %s", turn.ctx.conversation_id, exc.code)


# --- START and identity ------------------------------------------------------------------------
#
# A document alone proves nothing (DESIGN §6). From a number that does not speak for it, every
# document — on file or not — gets the same questions, birth date first: whether a document
# belongs to a patient of this clinic is itself health data. The right date for a patient on
# file adds the number to them; anything else continues as a registration (the name next),
# which for a document on file then ends in the same "I couldn't confirm those details" a
# refused registration gets. Wrong dates are counted by the gateway per patient and per number,
# across conversations, and lock out until staff lift it.


def _on_start(turn: Turn) -> None:
    patient = turn.patient()
    if patient is not None:
        # A session after a closed one, from a number that speaks for the patient.
        turn.go(State.IDENTIFIED)
        _on_idle(turn, expecting_symptoms=True)
        return
    document = nlu.parse_document(turn.text)
    if document.document:
        _keep_what_else_was_said(turn)
        _identify(turn, document.document)
        return
    if document.invalid:
        turn.say(replies.invalid_document())
        return
    intent = nlu.detect_intent(turn.text)
    if _answer_faq(turn):
        turn.say(replies.identify_first())
        return
    if intent in _FAQ_INTENTS:
        turn.say(_faq(intent, turn.clinic))
        turn.say(replies.identify_first())
        return
    if intent == Intent.GOODBYE:
        turn.say(replies.goodbye())
        return
    if intent in (Intent.CANCEL, Intent.RESCHEDULE, Intent.MY_APPOINTMENTS, Intent.BOOK):
        turn.data["pending"] = intent.value
        turn.say(replies.identify_first())
        return
    if intent is None and len(normalize(turn.text).split()) >= 3:
        turn.data["pending_symptoms"] = turn.text.strip()[:500]
    known = turn.gateway.patient_by_whatsapp(turn.ctx.wa_id)
    turn.say(replies.greeting(turn.clinic, nlu.first_names(known.full_name) if known else ""))


def _keep_what_else_was_said(turn: Turn) -> None:
    """ "1020304050 me duele una muela": the symptoms (or the request) wait for the identity
    check, so a returning patient needs no second message for them."""
    rest = nlu.without_document(turn.text)
    if not rest:
        return
    intent = nlu.detect_intent(rest)
    if intent in (Intent.CANCEL, Intent.RESCHEDULE, Intent.MY_APPOINTMENTS):
        turn.data["pending"] = intent.value
    elif intent not in (Intent.GREETING, Intent.GOODBYE, Intent.MENU) and len(rest.split()) >= 2:
        turn.data["pending_symptoms"] = rest[:500]


def _identify(turn: Turn, document: str) -> None:
    try:
        patient = turn.gateway.patient_by_document(document)
    except BookingError:
        turn.say(replies.invalid_document())
        return
    turn.data.pop("register", None)
    turn.data.pop("verify", None)
    wa_id = turn.ctx.wa_id
    if patient is not None and turn.gateway.patient_verified_on(patient_id=patient.id, wa_id=wa_id):
        _identified(turn, patient, replies.identified(nlu.first_names(patient.full_name)))
        return
    if turn.gateway.identity_locked(wa_id=wa_id):
        _lock_out(turn)
        return
    # Until the birth date matches, this conversation speaks for nobody.
    turn.snap.patient_id = None
    turn.data["verify"] = {"document": document, "patient_id": patient.id if patient else None}
    turn.go(State.VERIFYING)
    turn.say(replies.ask_birth_date_to_verify())


def _identified(turn: Turn, patient: PatientInfo, greeting: Reply) -> None:
    pending = turn.data.pop("pending", None)
    symptoms = turn.data.pop("pending_symptoms", None)
    chosen = turn.data.pop("whose_chosen", False)
    _reset_flow(turn)
    turn.snap.patient_id = patient.id
    turn._patient = patient
    turn.go(State.IDENTIFIED)
    logger.info("conversation %s: patient %s identified", turn.ctx.conversation_id, patient.id)
    name = nlu.first_names(patient.full_name)
    if pending == Intent.CANCEL:
        _start_pick_appointment(turn, to_cancel=True)
    elif pending == Intent.RESCHEDULE:
        _start_pick_appointment(turn, to_cancel=False)
    elif pending == Intent.MY_APPOINTMENTS:
        _list_appointments(turn)
    elif symptoms:
        # "1020304050, me duele una muela, ¿tienen el viernes con la dra Rojas?"
        turn.request = _read_request(turn, symptoms, base=None)
        turn.data["want"] = turn.request.want
        if turn.request.notice is not None:
            turn.say(turn.request.notice)
        # "1020304050 quiero una cita": no symptoms yet, the greeting asks for them.
        asking = nlu.detect_intent(symptoms) == Intent.BOOK
        handled = (
            turn.request.want.get("doctor_id") and _book_with_doctor(turn, symptoms)
        ) or _triage(
            turn,
            symptoms,
            expecting_symptoms=not asking,
            quiet_if_unsure=True,
            use_llm=not asking,
            ask_whose=not chosen,
        )
        if not handled:
            turn.say(replies.booking_for(name) if chosen else greeting)
        elif chosen and name:
            turn.replies.insert(0, replies.booking_for(name))
        elif greeting.text and name and turn.snap.state != State.CHOOSING_PATIENT:
            turn.replies.insert(0, replies.thanks(name))
    else:
        turn.say(replies.booking_for(name) if chosen else greeting)


def _lock_out(turn: Turn) -> None:
    turn.data.pop("verify", None)
    turn.data.pop("register", None)
    turn.snap.patient_id = None
    turn.go(State.LOCKED_OUT)
    turn.needs_staff = True
    turn.handoff_reason = HandoffReason.IDENTITY_LOCKOUT
    turn.say(replies.identity_failed())
    logger.warning(
        "conversation %s: number locked out of identity checks", turn.ctx.conversation_id
    )


def _on_verifying(turn: Turn) -> None:
    parsed = nlu.parse_birth_date(turn.text, turn.today)
    document = nlu.parse_document(turn.text)
    if document.document and parsed.date is None:
        _identify(turn, document.document)
        return
    verify = turn.data.get("verify") or {}
    if not isinstance(verify, dict) or not verify.get("document"):
        _reset_flow(turn)
        turn.go(State.START)
        turn.say(replies.identify_first())
        return
    if parsed.date is None and nlu.detect_intent(turn.text) is not None:
        turn.say(replies.birth_date_first())  # nothing is shown or done before verification
        return
    if parsed.date is None:
        turn.say(_date_problem(parsed))
        return
    wa_id = turn.ctx.wa_id
    patient_id = verify.get("patient_id")
    patient = turn.gateway.patient(patient_id) if isinstance(patient_id, int) else None
    if patient is not None:
        matches = patient.birth_date is not None and parsed.date == patient.birth_date
        if matches and not turn.gateway.identity_locked(wa_id=wa_id, patient_id=patient.id):
            try:
                turn.gateway.patient_phone_add(patient_id=patient.id, wa_id=wa_id)
            except BookingError as exc:
                # The number could not be stored (odd wa_id): verified for this session only.
                logger.warning(
                    "conversation %s: number not added: %s", turn.ctx.conversation_id, exc.code
                )
            _identified(turn, patient, replies.identified(nlu.first_names(patient.full_name)))
            return
        counts = not matches and patient.birth_date is not None
        if counts and turn.gateway.identity_failure_record(wa_id=wa_id, patient_id=patient.id):
            _lock_out(turn)
            return
    _continue_as_registration(turn, verify["document"], parsed.date, on_file=patient is not None)


def _continue_as_registration(
    turn: Turn, document: str, birth_date: dt.date, *, on_file: bool
) -> None:
    """What follows a birth date that opened nothing, alike for a document on file or not."""
    turn.data.pop("verify", None)
    if not turn.clinic.self_registration:
        _not_confirmed(turn)
        return
    turn.data["register"] = {
        "document": document,
        "birth_date": birth_date.isoformat(),
        "on_file": on_file,
    }
    turn.go(State.REGISTERING_NAME)
    turn.say(replies.register_ask_name())


def _not_confirmed(turn: Turn) -> None:
    _reset_flow(turn)
    turn.snap.patient_id = None
    turn.go(State.START)
    turn.needs_staff = True
    turn.say(replies.identity_not_confirmed())


def _date_problem(parsed: nlu.DateParse) -> Reply:
    if parsed.problem == nlu.DateProblem.AMBIGUOUS and parsed.candidates:
        return replies.birth_date_ambiguous(parsed.candidates)
    return replies.date_problem(parsed.problem or "")


def _on_locked_out(turn: Turn) -> None:
    document = nlu.parse_document(turn.text)
    if document.document:
        _identify(turn, document.document)  # a patient this number already speaks for
        return
    if not turn.gateway.identity_locked(wa_id=turn.ctx.wa_id):
        # Staff lifted the lock-out: start again.
        _reset_flow(turn)
        turn.go(State.START)
        _on_start(turn)
        return
    turn.say(replies.identity_needs_staff())
    turn.needs_staff = True


def _on_registering_name(turn: Turn) -> None:
    document = nlu.parse_document(turn.text)
    if document.document:
        _identify(turn, document.document)
        return
    name = nlu.parse_full_name(turn.text)
    if name is None and nlu.looks_like_symptoms(turn.text):
        # "me duele el oído y me zumba" is what brings them, not their name: keep it for the
        # booking and ask the name again.
        turn.data["pending_symptoms"] = turn.text.strip()[:500]
        turn.say(replies.symptoms_kept_ask_name())
        return
    if name is None:
        turn.say(replies.register_bad_name())
        return
    register = turn.data.get("register") or {}
    try:
        birth_date = dt.date.fromisoformat(register.get("birth_date") or "")
    except (TypeError, ValueError):
        birth_date = None
    if not register.get("document") or birth_date is None or register.get("on_file"):
        _not_confirmed(turn)
        return
    try:
        patient = turn.gateway.patient_register(
            document=register["document"],
            full_name=name,
            birth_date=birth_date,
            whatsapp_id=turn.ctx.wa_id,
        )
    except BookingError as exc:
        logger.warning(
            "conversation %s: registration failed: %s", turn.ctx.conversation_id, exc.code
        )
        _not_confirmed(turn)
        return
    _identified(turn, patient, replies.registered(nlu.first_names(patient.full_name)))


# --- whose appointment: one phone, several patients -------------------------------------------


def _is_adult(patient: PatientInfo, today: dt.date) -> bool:
    born = patient.birth_date
    if born is None:
        return True
    return (today.year - born.year - ((today.month, today.day) < (born.month, born.day))) >= 18


def _ask_whose_first(turn: Turn, text: str, specialty: SpecialtyInfo) -> bool:
    """ "es para mi hijo…", or a child's specialty asked for by an adult: whose is it? True when
    the question was asked (the symptoms wait for the answer)."""
    patient = turn.patient()
    if patient is None or turn.data.get("reschedule_id"):
        return False
    childs = specialty.slug.startswith("pediatr") and _is_adult(patient, turn.today)
    if not (nlu.for_someone_else(text) or childs):
        return False
    on_number = turn.gateway.patients_on_number(turn.ctx.wa_id)
    turn.data["pending_symptoms"] = text.strip()[:500]
    turn.data["whose_options"] = [p.id for p in on_number[: MAX_LIST_ROWS - 1]]
    turn.go(State.CHOOSING_PATIENT)
    turn.say(replies.whose_appointment(on_number))
    return True


def _on_choosing_patient(turn: Turn) -> None:
    options = [i for i in turn.data.get("whose_options") or [] if isinstance(i, int)]
    value = _reply_value(turn, "who")
    if turn.reply_id == replies.WHO_SOMEONE_ELSE or (
        not turn.reply_id and nlu.means_someone_else_option(turn.text)
    ):
        turn.data["whose_chosen"] = True
        turn.go(State.IDENTIFIED)
        turn.say(replies.ask_other_document())
        return
    document = nlu.parse_document(turn.text) if not turn.reply_id else None
    if document is not None and document.document:
        turn.data["whose_chosen"] = True
        _identify(turn, document.document)
        return
    chosen = _int(value) if value else _patient_named(turn, options)
    if chosen is None and not turn.reply_id and nlu.means_myself(turn.text):
        chosen = turn.snap.patient_id
    if chosen in options and turn.gateway.patient_verified_on(
        patient_id=chosen, wa_id=turn.ctx.wa_id
    ):
        patient = turn.gateway.patient(chosen)
        if patient is not None:
            turn.data["whose_chosen"] = True
            _identified(turn, patient, replies.booking_for(nlu.first_names(patient.full_name)))
            return
    intent = nlu.detect_intent(turn.text) if not turn.reply_id else None
    if _global_intent(turn, intent):
        return
    turn.say(replies.whose_appointment_help())


def _patient_named(turn: Turn, options: list[int]) -> int | None:
    """The offered patient whose first name the message is ("Tomás", "la niña no": no)."""
    said = normalize(turn.text)
    if not said:
        return None
    for patient_id in options:
        patient = turn.gateway.patient(patient_id)
        if patient is None:
            continue
        names = normalize(patient.full_name).split()
        if said in (names[0], " ".join(names[:2]), normalize(patient.full_name)):
            return patient_id
    return None


# --- idle states: IDENTIFIED, BOOKED, CHOOSING_SPECIALTY -----------------------------------------


def _on_identified(turn: Turn) -> None:
    _on_idle(turn, expecting_symptoms=True)


def _on_booked(turn: Turn) -> None:
    _on_idle(turn, expecting_symptoms=False)


def _on_idle(turn: Turn, *, expecting_symptoms: bool) -> None:
    patient = turn.patient()
    if patient is None:
        _reset_flow(turn)
        turn.go(State.START)
        _on_start(turn)
        return
    if slug := _reply_value(turn, "spec"):
        _choose_specialty(turn, slug)
        return
    if turn.reply_id:
        # A row or button of an older message that no longer applies here.
        turn.say(replies.menu())
        return
    document = nlu.parse_document(turn.text)
    if document.document:
        # Someone else's document (booking for a relative) goes through the same checks.
        _identify(turn, document.document)
        return
    intent = nlu.detect_intent(turn.text)
    if intent not in (Intent.CANCEL, Intent.RESCHEDULE) and _answer_faq(turn):
        return
    if _global_intent(turn, intent):
        return
    if intent == Intent.GREETING:
        turn.say(replies.identified(nlu.first_names(patient.full_name)))
        return
    # "quiero una cita para el viernes" … "me duele una muela": the day asked first still holds.
    turn.request = _read_request(turn, turn.text, base=turn.data.get("want"))
    turn.data["want"] = turn.request.want
    if turn.request.notice is not None:
        turn.say(turn.request.notice)
    if turn.request.want.get("doctor_id") and _book_with_doctor(turn, turn.text):
        return
    if intent == Intent.MENU:
        turn.say(replies.menu())
        return
    if intent == Intent.BOOK:
        # "quiero una cita (con el dermatólogo)": a named specialty or clear symptoms go
        # straight to slots, otherwise ask for the symptoms.
        if not _triage(
            turn, turn.text, expecting_symptoms=False, quiet_if_unsure=True, use_llm=False
        ):
            turn.go(State.IDENTIFIED)
            turn.say(replies.ask_symptoms())
        return
    if turn.request.changed and not nlu.looks_like_symptoms(turn.text):
        # "el viernes en la tarde" before any symptoms: remember it, ask what brings them.
        if not _triage(
            turn, turn.text, expecting_symptoms=False, quiet_if_unsure=True, use_llm=False
        ):
            turn.go(State.IDENTIFIED)
            turn.say(replies.ask_symptoms())
        return
    if nlu.is_question(turn.text) and not turn.request.changed:
        # A question the FAQ doesn't cover: symptoms ("¿es normal que me duela…?") still go to
        # triage, anything else gets an honest answer, never the menu.
        if _triage(turn, turn.text, expecting_symptoms=False, quiet_if_unsure=True, use_llm=False):
            return
        _free_answer(turn)
        return
    if expecting_symptoms:
        _triage(turn, turn.text, expecting_symptoms=True)
        return
    if _triage(turn, turn.text, expecting_symptoms=False, quiet_if_unsure=True, use_llm=False):
        return
    _free_answer(turn)


def _global_intent(turn: Turn, intent: Intent | None) -> bool:
    """Intents that work from any state once identified; True when handled."""
    if intent is None:
        return False
    if intent in _FAQ_INTENTS:
        turn.say(_faq(intent, turn.clinic))
        return True
    if intent == Intent.GOODBYE:
        _release_hold(turn)
        _reset_flow(turn)
        turn.go(State.CLOSED)
        turn.closed = True
        turn.say(replies.goodbye())
        return True
    if intent in (Intent.CANCEL, Intent.RESCHEDULE, Intent.MY_APPOINTMENTS):
        if turn.patient() is None:
            turn.data["pending"] = intent.value
            turn.say(replies.identify_first())
            return True
        if intent == Intent.MY_APPOINTMENTS:
            _list_appointments(turn)
        else:
            _release_hold(turn)
            if intent == Intent.RESCHEDULE:
                # "quiero cambiar la cita para el viernes en la tarde"
                request = _read_request(turn, turn.text, base=None)
                turn.pending_want = request.want if request.changed else None
            _start_pick_appointment(turn, to_cancel=intent == Intent.CANCEL)
        return True
    return False


def _is_free_text(text: str) -> bool:
    """Words worth an LLM's time: not a number, a date, a yes/no or a one-word reply.

    Deterministic answers (documents, numbers, yes/no, list and button replies) never reach it.
    """
    words = normalize(text).split()
    alphabetic = [w for w in words if w.isalpha()]
    short_answer = len(words) <= 3 and (nlu.is_yes(text) or nlu.is_no(text))
    return len(alphabetic) >= 2 and not short_answer


def _free_answer(turn: Turn) -> None:
    """A message the rules can't place. A question: the LLM may answer from the clinic's data
    and FAQ answers only; without it, an honest "no sé" and a person offered. Else the menu."""
    llm = turn.ctx.llm
    if llm is not None and not turn.reply_id and _is_free_text(turn.text):
        try:
            answer = llm.answer(
                turn.text, turn.clinic, _specialties(turn), turn.gateway.faq_entries()
            )
        except Exception:  # the LLM is optional: any failure falls back to the rules' answer
            logger.exception("conversation %s: llm answer failed", turn.ctx.conversation_id)
            answer = None
        text = _answer_text(turn, answer)
        if text:
            turn.say(replies.text(text))
            return
    if nlu.is_question(turn.text):
        turn.data["offered_person"] = True
        turn.say(replies.unknown_question())
        return
    turn.say(replies.menu())


def _answer_faq(turn: Turn) -> bool:
    """A question about the clinic answered from its FAQ entries (what its admins wrote)."""
    if turn.reply_id or not turn.text.strip():
        return False
    entries = turn.gateway.faq_entries()
    if not entries:
        return False
    found = nlu.match_faq(
        turn.text, [nlu.FaqCandidate(e.id, e.question, e.keywords) for e in entries]
    )
    entry = next((e for e in entries if e.id == found), None)
    if entry is None:
        return False
    turn.say(replies.text(entry.answer))
    return True


def _answer_text(turn: Turn, answer: object) -> str:
    """bot.llm answers `(text, (prompt_tokens, completion_tokens))` or None."""
    if isinstance(answer, str):
        return answer.strip()
    if not isinstance(answer, tuple) or len(answer) != 2:
        return ""
    reply, usage = answer
    if isinstance(usage, tuple) and len(usage) == 2:
        turn.prompt_tokens += int(usage[0] or 0)
        turn.completion_tokens += int(usage[1] or 0)
    return str(reply or "").strip()


def _specialties(turn: Turn) -> list[SpecialtyInfo]:
    return turn.gateway.specialties()


def _triage(
    turn: Turn,
    text: str,
    *,
    expecting_symptoms: bool,
    quiet_if_unsure: bool = False,
    use_llm: bool = True,
    ask_whose: bool = True,
) -> bool:
    """Symptoms → a specialty's slots. True when it answered (slots, list or emergency).

    With `ask_whose`, symptoms that are someone else's ("es para mi hijo…") first ask whose
    appointment it is."""
    specialties = _specialties(turn)
    slug = nlu.match_specialty_name(text, {s.slug: s.name for s in specialties})
    alternatives: tuple[str, ...] = ()
    if slug is None:
        llm = turn.ctx.llm if use_llm and _is_free_text(text) else None
        result = triage.classify(text, specialties, llm=llm)
        turn.prompt_tokens += result.prompt_tokens
        turn.completion_tokens += result.completion_tokens
        if result.red_flag:
            turn.say(replies.emergency(turn.clinic))
            turn.urgent = True
            return True
        if result.confident:
            slug = result.specialty
        alternatives = tuple(a for a in (result.specialty, *result.alternatives) if a)
    if slug is not None:
        specialty = next(s for s in specialties if s.slug == slug)
        if ask_whose and _ask_whose_first(turn, text, specialty):
            return True
        turn.data["symptoms"] = text.strip()[:500]
        turn.data.pop("reschedule_id", None)
        doctor_id = (turn.data.get("want") or {}).get("doctor_id")
        if doctor_id and specialty.id not in _doctor_specialty_ids(turn, doctor_id):
            turn.data["want"].pop("doctor_id", None)  # that doctor doesn't see these symptoms
            turn.data["want"].pop("doctor_name", None)
        turn.go(State.TRIAGED)
        _apply_request(turn, specialty, intro=replies.triaged_intro(specialty.name))
        return True
    if quiet_if_unsure and not expecting_symptoms:
        return False
    if quiet_if_unsure and normalize(text).split() and len(normalize(text).split()) < 3:
        return False
    turn.data["symptoms"] = text.strip()[:500]
    _offer_specialties(turn, specialties, first=alternatives)
    return True


def _offer_specialties(
    turn: Turn,
    specialties: list[SpecialtyInfo],
    first: tuple[str, ...] = (),
    no_slots_for: str = "",
) -> None:
    ordered = sorted(
        specialties, key=lambda s: (first.index(s.slug) if s.slug in first else len(first), s.name)
    )[:MAX_LIST_ROWS]
    turn.data["specialty_options"] = [s.slug for s in ordered]
    turn.go(State.CHOOSING_SPECIALTY)
    turn.say(replies.choose_specialty(ordered, no_slots_for=no_slots_for))


def _on_choosing_specialty(turn: Turn) -> None:
    if slug := _reply_value(turn, "spec"):
        _choose_specialty(turn, slug)
        return
    options = turn.data.get("specialty_options") or []
    index = nlu.parse_position(turn.text, len(options))
    if index is not None:
        _choose_specialty(turn, options[index])
        return
    _on_idle(turn, expecting_symptoms=True)


def _choose_specialty(turn: Turn, slug: str) -> None:
    specialty = turn.gateway.specialty(slug)
    if specialty is None:
        _offer_specialties(turn, _specialties(turn))
        return
    turn.data.pop("reschedule_id", None)
    _show_page(turn, specialty, page=1)


# --- slots: CHOOSING_SLOT, CONFIRMING ------------------------------------------------------------


def _show_page(turn: Turn, specialty: SpecialtyInfo, *, page: int, intro: str = "") -> None:
    """Fetch and show slot page `page` of `specialty` (keyset cursor kept per page), within
    what the patient asked for (`want`) and saying so."""
    cursors: list[str | None] = list(turn.data.get("cursors") or [None])
    if turn.data.get("specialty") != specialty.slug:
        cursors, page = [None], 1
    page = max(1, min(page, len(cursors)))
    try:
        slot_page = _slot_page(turn, specialty, cursors[page - 1])
    except BookingError:  # a stale cursor: start again from the first page
        cursors, page = [None], 1
        slot_page = _slot_page(turn, specialty, None)
    turn.data["specialty"] = specialty.slug
    want = turn.data.get("want") or {}
    if not slot_page.slots and page == 1 and _narrowed(want):
        # Nothing then: say so, and offer the nearest times instead of a dead end.
        turn.say(replies.nothing_in_request(want, turn.clinic))
        if turn.snap.patient_id:
            turn.say(
                outreach_replies.waitlist_invite(specialty.name, _waitlist_id(specialty, want))
            )
        turn.data["want"] = {}
        _show_page(turn, specialty, page=1, intro=intro)
        return
    if not slot_page.slots:
        if page > 1:
            # The later page emptied meanwhile: go back to the first one.
            _show_page(turn, specialty, page=1, intro=intro)
            return
        for key in ("shown", "shown_times", "page", "cursors", "has_more"):
            turn.data.pop(key, None)
        others = [s for s in _specialties(turn) if s.slug != specialty.slug]
        rescheduling = bool(turn.data.get("reschedule_id"))
        if others and not rescheduling:
            _offer_specialties(turn, others, no_slots_for=specialty.name)
        else:
            _reset_flow(turn)
            turn.go(State.IDENTIFIED if turn.snap.patient_id else State.START)
            turn.say(replies.no_slots_at_all(specialty.name))
        if turn.snap.patient_id and not rescheduling:
            turn.say(outreach_replies.waitlist_invite(specialty.name, specialty.slug))
        return
    cursors = cursors[:page]
    cursors.append(slot_page.next_cursor)
    tz = turn.clinic.tz
    turn.data.update(
        page=page,
        cursors=cursors,
        has_more=slot_page.has_more,
        shown=[slot.id for slot in slot_page.slots],
        shown_times=[f"{s.start_at.astimezone(tz):%H:%M}" for s in slot_page.slots],
        shown_day=slot_page.slots[0].start_at.astimezone(tz).date().isoformat(),
    )
    if page == 1 and (said := replies.request_intro(want, turn.clinic)):
        intro = f"{intro} {said}".strip()
    turn.go(State.CHOOSING_SLOT)
    turn.say(
        replies.slot_list(
            slot_page.slots,
            turn.clinic,
            specialty.name,
            page=page,
            has_more=slot_page.has_more,
            intro=intro,
        )
    )


def _slot_page(turn: Turn, specialty: SpecialtyInfo, cursor: str | None):
    return turn.gateway.slot_page(
        specialty_id=specialty.id,
        cursor=cursor,
        page_size=PAGE_SIZE,
        now=turn.ctx.now,
        only=_filter(turn),
    )


# --- what the patient asks for: a day, a time of day, a doctor ----------------------------------


def _narrowed(want: dict) -> bool:
    return any(want.get(k) for k in (*_DATE_KEYS, *_TIME_KEYS, "doctor_id"))


def _filter(turn: Turn) -> SlotFilter:
    """`want` as the gateway's filter; the patient's own appointments are always left out."""
    want = turn.data.get("want") or {}
    tz = turn.clinic.tz
    patient = turn.patient()

    def day_start(key: str, plus: int = 0) -> dt.datetime | None:
        try:
            day = dt.date.fromisoformat(want[key]) + dt.timedelta(days=plus)
        except (KeyError, TypeError, ValueError):
            return None
        return dt.datetime.combine(day, dt.time.min, tzinfo=tz)

    def clock(key: str) -> dt.time | None:
        try:
            return dt.time.fromisoformat(want[key])
        except (KeyError, TypeError, ValueError):
            return None

    weekdays = want.get("weekdays")
    doctor_id = want.get("doctor_id")
    return SlotFilter(
        start=day_start("from"),
        end=day_start("to", plus=1),
        time_from=clock("time_from"),
        time_to=clock("time_to"),
        weekdays=tuple(int(d) for d in weekdays) if isinstance(weekdays, list) else None,
        doctor_id=doctor_id if isinstance(doctor_id, int) else None,
        patient_id=patient.id if patient else None,
    )


def _read_request(turn: Turn, text: str, *, base: dict | None) -> Request:
    """The day, time of day and doctor `text` asks for, over what was asked before (`base`)."""
    want = dict(base or {})
    when = nlu.parse_when(text, turn.today)
    changed = False
    if when.not_that_day and (day := _shown_day(turn)):
        for key in _DATE_KEYS:
            want.pop(key, None)
        want["from"] = (day + dt.timedelta(days=1)).isoformat()
        changed = True
    if when.date_from or when.weekdays:
        for key in _DATE_KEYS:
            want.pop(key, None)
        if when.date_from:
            want["from"] = when.date_from.isoformat()
            want["to"] = (when.date_to or when.date_from).isoformat()
        if when.weekdays:
            want["weekdays"] = sorted(when.weekdays)
        changed = True
    if when.time_from or when.time_to:
        for key in _TIME_KEYS:
            want.pop(key, None)
        if when.time_from:
            want["time_from"] = when.time_from.strftime("%H:%M")
        if when.time_to:
            want["time_to"] = when.time_to.strftime("%H:%M")
        if when.part_of_day:
            want["part"] = str(when.part_of_day)
        changed = True
    if when.earliest:
        for key in (*_DATE_KEYS, *_TIME_KEYS):
            want.pop(key, None)
        changed = True
    want.pop("earliest", None)
    if when.earliest:
        want["earliest"] = True
    notice = None
    if nlu.mentions_doctor(text):
        doctors = turn.gateway.doctors()
        asked = nlu.match_doctor(text, {d.id: d.full_name for d in doctors})
        found = None
        if asked.previous:
            patient = turn.patient()
            found = (
                turn.gateway.last_doctor(patient_id=patient.id, now=turn.ctx.now)
                if patient
                else None
            )
            if found is None:
                notice = replies.no_previous_doctor()
        elif asked.doctor_id is not None:
            found = next((d for d in doctors if d.id == asked.doctor_id), None)
        elif asked.candidates:
            names = [d.full_name for d in doctors if d.id in asked.candidates]
            notice = replies.doctor_ambiguous(names)
        elif asked.titled and asked.said:
            notice = replies.doctor_not_found(asked.said)
        if found is not None:
            want["doctor_id"], want["doctor_name"] = found.id, found.full_name
            changed = True
        elif asked != nlu.DoctorRequest():
            want.pop("doctor_id", None)
            want.pop("doctor_name", None)
    return Request(want=want, at=when.at, earliest=when.earliest, changed=changed, notice=notice)


def _shown_day(turn: Turn) -> dt.date | None:
    """The day "ese día" means: the one asked for, else the first one shown."""
    want = turn.data.get("want") or {}
    for value in (
        want.get("from") if want.get("from") == want.get("to") else None,
        turn.data.get("shown_day"),
    ):
        try:
            return dt.date.fromisoformat(value) if value else None
        except (TypeError, ValueError):
            continue
    return None


def _doctor_specialty_ids(turn: Turn, doctor_id: int) -> tuple[int, ...]:
    doctor = next((d for d in turn.gateway.doctors() if d.id == doctor_id), None)
    return doctor.specialty_ids if doctor else ()


def _book_with_doctor(turn: Turn, text: str) -> bool:
    """ "con la dra Rojas (el viernes)": that doctor's times, in the specialty the symptoms
    point to when she has it, else her first. True when it answered."""
    want = turn.data.get("want") or {}
    own = _doctor_specialty_ids(turn, want["doctor_id"])
    specialties = [s for s in _specialties(turn) if s.id in own]
    if not specialties:
        return False
    result = triage.classify(text, specialties)
    if result.red_flag:
        turn.say(replies.emergency(turn.clinic))
        turn.urgent = True
        return True
    specialty = next((s for s in specialties if s.slug == result.specialty), specialties[0])
    if nlu.looks_like_symptoms(text):
        turn.data["symptoms"] = text.strip()[:500]
    turn.data.pop("reschedule_id", None)
    _apply_request(turn, specialty)
    return True


def _apply_request(turn: Turn, specialty: SpecialtyInfo, *, intro: str = "") -> None:
    """Show `specialty`'s times within `want` from the first page — or, for "a las 3" with a
    day or doctor, or "la más temprana" while choosing, hold that very slot."""
    request = turn.request
    for key in ("cursors", "page"):
        turn.data.pop(key, None)
    if turn.data.get("specialty") != specialty.slug:
        turn.data["specialty"] = specialty.slug
    choosing = turn.snap.state in (State.CHOOSING_SLOT, State.CONFIRMING)
    if request is not None and request.earliest and choosing:
        page = _slot_page(turn, specialty, None)
        if page.slots:
            _hold(turn, page.slots[0].id)
            return
    if request is not None and request.at is not None:
        slot_id = _slot_at_time(turn, request.at, specialty=specialty, strict=True)
        if slot_id is not None:
            _hold(turn, slot_id)
            return
        turn.say(replies.time_not_found())
    _show_page(turn, specialty, page=1, intro=intro)


def _current_specialty(turn: Turn) -> SpecialtyInfo | None:
    slug = turn.data.get("specialty")
    return turn.gateway.specialty(slug) if isinstance(slug, str) and slug else None


def _reshow(turn: Turn, notice: Reply | None = None) -> None:
    specialty = _current_specialty(turn)
    if notice is not None:
        turn.say(notice)
    if specialty is None:
        _reset_flow(turn)
        turn.go(State.IDENTIFIED)
        turn.say(replies.ask_symptoms())
        return
    _show_page(turn, specialty, page=turn.data.get("page", 1))


def _shown_times(turn: Turn) -> list[nlu.ShownTime]:
    times = []
    for value in turn.data.get("shown_times") or []:
        hour, minute = (int(part) for part in value.split(":"))
        times.append(nlu.ShownTime(hour, minute))
    return times


def _picked_slot(turn: Turn) -> int | None:
    """The slot id the patient picked from the shown page (row id, number, ordinal or time)."""
    if value := _reply_value(turn, "slot"):
        return _int(value)
    if turn.reply_id:
        return None
    shown = turn.data.get("shown") or []
    index = nlu.parse_choice(turn.text, _shown_times(turn))
    if index is not None and index < len(shown):
        return shown[index]
    return None


def _slot_at_time(
    turn: Turn,
    request: nlu.TimeRequest,
    *,
    specialty: SpecialtyInfo | None = None,
    strict: bool = False,
) -> int | None:
    """For "el de las 10" when 10:00 isn't on the page shown: the first slot at that time from
    page 1 on (within what was asked: that day, that doctor), a few pages deep; failing that
    exact time and unless `strict`, the first one within that hour."""
    specialty = specialty or _current_specialty(turn)
    if specialty is None:
        return None
    tz = turn.clinic.tz
    pages = []
    cursor = None
    for _ in range(LOOKAHEAD_PAGES):
        try:
            slot_page = _slot_page(turn, specialty, cursor)
        except BookingError:
            return None
        local = [slot.start_at.astimezone(tz) for slot in slot_page.slots]
        times = [nlu.ShownTime(t.hour, t.minute) for t in local]
        index = nlu.match_time(request, times, strict=True)
        if index is not None:
            return slot_page.slots[index].id
        pages.append((slot_page.slots, times))
        if not slot_page.has_more:
            break
        cursor = slot_page.next_cursor
    for slots, times in pages if not strict else ():
        index = nlu.match_time(request, times)
        if index is not None:
            return slots[index].id
    return None


def _on_triaged(turn: Turn) -> None:
    specialty = _current_specialty(turn)
    if specialty is None:
        _on_idle(turn, expecting_symptoms=True)
        return
    _show_page(turn, specialty, page=1)


def _on_choosing_slot(turn: Turn) -> None:
    if turn.patient() is None:
        _reset_flow(turn)
        turn.go(State.START)
        _on_start(turn)
        return
    if _changed_request(turn):
        return
    slot_id = _picked_slot(turn)
    if slot_id is not None:
        _hold(turn, slot_id)
        return
    if slug := _reply_value(turn, "spec"):
        _choose_specialty(turn, slug)
        return
    specialty = _current_specialty(turn)
    if specialty is None:
        _on_idle(turn, expecting_symptoms=True)
        return
    if not turn.reply_id and (request := nlu.parse_time(turn.text)):
        later = _slot_at_time(turn, request)
        if later is None:
            turn.say(replies.time_not_found())
        else:
            _hold(turn, later)
        return
    if nlu.wants_previous_page(turn.text):
        if turn.data.get("page", 1) <= 1:
            turn.say(replies.first_page_already())
        else:
            _show_page(turn, specialty, page=turn.data["page"] - 1)
        return
    if nlu.wants_next_page(turn.text):
        if turn.data.get("has_more"):
            _show_page(turn, specialty, page=turn.data.get("page", 1) + 1)
        else:
            turn.say(replies.no_more_pages())
        return
    intent = nlu.detect_intent(turn.text)
    if intent not in (Intent.CANCEL, Intent.RESCHEDULE) and _answer_faq(turn):
        return
    if _global_intent(turn, intent):
        return
    if intent == Intent.MENU:
        turn.say(replies.menu())
        return
    if _restart_triage(turn, intent):
        return
    turn.say(replies.choose_slot_help(len(turn.data.get("shown") or []) or PAGE_SIZE))


def _changed_request(turn: Turn) -> bool:
    """ "el viernes en la tarde", "con la dra Rojas", "no puedo ese día", "la más temprana"
    while choosing or confirming: the list starts again from there. True when handled."""
    if turn.reply_id:
        return False
    specialty = _current_specialty(turn)
    if specialty is None:
        return False
    turn.request = _read_request(turn, turn.text, base=turn.data.get("want"))
    if not turn.request.changed:
        if turn.request.notice is not None:
            turn.say(turn.request.notice)
        turn.request = None
        return False
    _release_hold(turn)
    if turn.request.notice is not None:
        turn.say(turn.request.notice)
    turn.data["want"] = turn.request.want
    doctor_id = turn.request.want.get("doctor_id")
    if doctor_id and specialty.id not in (own := _doctor_specialty_ids(turn, doctor_id)):
        specialty = next((s for s in _specialties(turn) if s.id in own), specialty)
    _apply_request(turn, specialty)
    return True


def _restart_triage(turn: Turn, intent: Intent | None) -> bool:
    """New symptoms or another specialty named ("mejor odontología") while choosing: triage
    again, from the start (rules only: no LLM here). True when handled."""
    if intent is not None or turn.data.get("reschedule_id") or turn.reply_id:
        return False
    before = turn.data.get("specialty")
    want = turn.data.pop("want", None)
    if _triage(turn, turn.text, expecting_symptoms=False, quiet_if_unsure=True, use_llm=False):
        return True
    if want is not None:
        turn.data["want"] = want
    turn.data["specialty"] = before
    return False


def _hold(turn: Turn, slot_id: int) -> None:
    patient = turn.patient()
    try:
        slot = turn.gateway.slot_hold(slot_id=slot_id, patient_id=patient.id if patient else None)
    except BookingError as exc:
        logger.info("conversation %s: hold refused: %s", turn.ctx.conversation_id, exc.code)
        turn.data.pop("held_slot", None)
        _reshow(turn, replies.slot_taken())
        return
    turn.data["held_slot"] = slot.id
    turn.go(State.CONFIRMING)
    turn.say(_confirm_reply(turn, slot))


def _confirm_reply(turn: Turn, slot: SlotInfo, *, help_first: bool = False) -> Reply:
    specialty = _current_specialty(turn)
    name = specialty.name if specialty else ""
    build = replies.confirm_help if help_first else replies.confirm_slot
    return build(slot, turn.clinic, name, rescheduling=bool(turn.data.get("reschedule_id")))


def _on_confirming(turn: Turn) -> None:
    patient = turn.patient()
    held = turn.data.get("held_slot")
    slot = turn.gateway.slot(held) if isinstance(held, int) else None
    if patient is None or slot is None:
        turn.data.pop("held_slot", None)
        _reshow(turn)
        return
    rescheduling = bool(turn.data.get("reschedule_id"))
    if turn.reply_id == replies.CONFIRM_YES:
        _book(turn, patient, slot)
        return
    if turn.reply_id == replies.CONFIRM_OTHER:
        _release_hold(turn)
        _reshow(turn)
        return
    if turn.reply_id == replies.CONFIRM_CANCEL:
        _drop_booking(turn, rescheduling)
        return
    if _changed_request(turn):
        return
    picked = _picked_slot(turn)
    if picked is not None and picked != slot.id:
        _hold(turn, picked)  # "mejor la 4": the new hold replaces the old one
        return
    if picked == slot.id or nlu.is_yes(turn.text):
        _book(turn, patient, slot)
        return
    if nlu.is_no(turn.text):
        _release_hold(turn)
        _reshow(turn)
        return
    if not turn.reply_id and (request := nlu.parse_time(turn.text)):
        later = _slot_at_time(turn, request)
        if later is None:
            turn.say(replies.time_not_found())
        elif later != slot.id:
            _hold(turn, later)  # "mejor el de las 10": the new hold replaces this one
        else:
            _book(turn, patient, slot)
        return
    intent = nlu.detect_intent(turn.text)
    if intent == Intent.CANCEL and "cita" not in normalize(turn.text).split():
        _drop_booking(turn, rescheduling)  # the typed twin of the "Cancelar" button
        return
    if intent not in (Intent.CANCEL, Intent.RESCHEDULE) and _answer_faq(turn):
        return
    if _global_intent(turn, intent):
        return
    if intent is None and not rescheduling and not turn.reply_id:
        held = turn.data.get("held_slot")
        if _restart_triage(turn, intent):
            if held is not None and turn.data.get("held_slot") == held:
                turn.data.pop("held_slot")
                turn.gateway.slot_release(slot_id=held)
            return
    turn.say(_confirm_reply(turn, slot, help_first=True))


def _drop_booking(turn: Turn, rescheduling: bool) -> None:
    _release_hold(turn)
    _reset_flow(turn)
    turn.go(State.BOOKED if rescheduling else State.IDENTIFIED)
    turn.say(replies.booking_dropped(rescheduling=rescheduling))


def _book(turn: Turn, patient: PatientInfo, slot: SlotInfo) -> None:
    reschedule_id = turn.data.get("reschedule_id")
    try:
        if reschedule_id:
            appointment = turn.gateway.appointment_reschedule(
                patient_id=patient.id, appointment_id=reschedule_id, new_slot_id=slot.id
            )
        else:
            specialty = _current_specialty(turn)
            appointment = turn.gateway.appointment_book(
                patient_id=patient.id,
                slot_id=slot.id,
                specialty_id=specialty.id if specialty else None,
                notes=turn.data.get("symptoms", ""),
            )
    except BookingError as exc:
        logger.info("conversation %s: booking refused: %s", turn.ctx.conversation_id, exc.code)
        turn.data.pop("held_slot", None)
        if exc.code == "patient_overlap":
            _reshow(turn, replies.patient_overlap())
        elif exc.code in ("appointment_not_found", "not_cancellable"):
            _reset_flow(turn)
            turn.go(State.IDENTIFIED)
            turn.say(replies.cancel_failed())
        else:
            _reshow(turn, replies.hold_expired())
        return
    _reset_flow(turn)
    turn.go(State.BOOKED)
    turn.say(replies.booked(appointment, turn.clinic, rescheduled=bool(reschedule_id)))
    logger.info(
        "conversation %s: appointment %s %s",
        turn.ctx.conversation_id,
        appointment.id,
        "rescheduled" if reschedule_id else "booked",
    )


# --- the patient's appointments: list, cancel, reschedule --------------------------------------


def _upcoming(turn: Turn) -> list[AppointmentInfo]:
    """Of every patient this number speaks for (a parent sees the children's), no one else's."""
    if turn.patient() is None:
        return []
    return turn.gateway.upcoming_appointments_on_number(wa_id=turn.ctx.wa_id, now=turn.ctx.now)


def _list_appointments(turn: Turn) -> None:
    turn.say(replies.upcoming(_upcoming(turn), turn.clinic))


def _start_pick_appointment(turn: Turn, *, to_cancel: bool) -> None:
    appointments = _upcoming(turn)
    if not appointments:
        _reset_flow(turn)
        turn.go(State.IDENTIFIED)
        turn.say(replies.no_upcoming())
        return
    _reset_flow(turn)
    turn.data["options"] = [a.id for a in appointments[:MAX_LIST_ROWS]]
    if turn.pending_want:
        turn.data["pending_want"] = turn.pending_want
    named = _named_appointment(turn, appointments, by_date=to_cancel)
    if len(appointments) == 1 or named is not None:
        _picked_appointment(turn, named or appointments[0], to_cancel=to_cancel)
        return
    turn.go(State.CANCELLING if to_cancel else State.RESCHEDULING)
    turn.say(replies.pick_appointment(appointments, turn.clinic, to_cancel=to_cancel))


def _picked_appointment(turn: Turn, appointment: AppointmentInfo, *, to_cancel: bool) -> None:
    if to_cancel:
        turn.data["cancel_id"] = appointment.id
        turn.go(State.CANCELLING)
        turn.say(replies.confirm_cancel(appointment, turn.clinic))
        return
    specialty = turn.gateway.rebooking_specialty(appointment.id)
    if specialty is None:
        turn.go(State.IDENTIFIED)
        turn.say(replies.cancel_failed())
        turn.needs_staff = True
        return
    want = turn.pending_want or turn.data.get("pending_want")
    _reset_flow(turn)
    if appointment.patient_id is not None:
        turn.snap.patient_id = appointment.patient_id  # moving a child's: booked for the child
    turn.data["reschedule_id"] = appointment.id
    turn.data["specialty"] = specialty.slug
    if isinstance(want, dict):
        turn.data["want"] = want  # "… para el viernes en la tarde": the list starts there
    _show_page(turn, specialty, page=1, intro=replies.reschedule_intro(appointment, turn.clinic))


def _option_picked(turn: Turn, appointments: list[AppointmentInfo]) -> AppointmentInfo | None:
    """The offered appointment the patient chose — only among their own upcoming ones."""
    options = [i for i in turn.data.get("options") or [] if isinstance(i, int)]
    by_id = {a.id: a for a in appointments if a.id in options}
    if value := _reply_value(turn, "appt"):
        return by_id.get(_int(value) or 0)
    if turn.reply_id:
        return None
    offered = [by_id[i] for i in options if i in by_id]
    tz = turn.clinic.tz
    times = [
        nlu.ShownTime(a.start_at.astimezone(tz).hour, a.start_at.astimezone(tz).minute)
        for a in offered
    ]
    index = nlu.parse_choice(turn.text, times)
    if index is not None:
        return offered[index]
    return _named_appointment(turn, offered)


# Words that point to a child's appointment: "la del niño" is the paediatrics one.
_CHILD_WORDS = {"nino", "nina", "niño", "niña", "hijo", "hija", "bebe", "nene", "nena", "pequeño"}


def _named_appointment(
    turn: Turn, appointments: list[AppointmentInfo], *, by_date: bool = True
) -> AppointmentInfo | None:
    """ "cancela la de pediatría", "la del niño", "la de la dra Rojas", "la del viernes": the one
    appointment the words point to, else None."""
    if turn.reply_id or len(appointments) < 2:
        return None
    words = set(normalize(turn.text).split())
    tz = turn.clinic.tz
    when = nlu.parse_when(turn.text, turn.today)

    def points_to(appointment: AppointmentInfo) -> bool:
        specialty = appointment.specialty
        stem = nlu.specialty_stem(specialty.name) if specialty else ""
        if stem and len(stem) >= 5 and any(w.startswith(stem) for w in words):
            return True
        if specialty and specialty.slug == triage.PEDIATRICS and words & _CHILD_WORDS:
            return True
        doctor_words = {w for w in normalize(appointment.doctor_name).split() if len(w) > 3}
        if doctor_words & words:
            return True
        day = appointment.start_at.astimezone(tz).date()
        return (
            by_date
            and when.date_from is not None
            and when.date_from <= day <= (when.date_to or day)
        )

    matching = [a for a in appointments if points_to(a)]
    return matching[0] if len(matching) == 1 else None


def _on_cancelling(turn: Turn) -> None:
    patient = turn.patient()
    if patient is None:
        _reset_flow(turn)
        turn.go(State.START)
        _on_start(turn)
        return
    appointments = _upcoming(turn)
    cancel_id = turn.data.get("cancel_id")
    if cancel_id is None:
        picked = _option_picked(turn, appointments)
        if picked is not None:
            _picked_appointment(turn, picked, to_cancel=True)
            return
        if _global_intent(turn, nlu.detect_intent(turn.text)):
            return
        if nlu.is_no(turn.text):
            _cancel_kept(turn)
            return
        turn.say(replies.pick_appointment_help())
        return
    appointment = next((a for a in appointments if a.id == cancel_id), None)
    if appointment is None:
        _reset_flow(turn)
        turn.go(State.IDENTIFIED)
        turn.say(replies.cancel_failed())
        return
    if turn.reply_id == replies.CANCEL_YES or (not turn.reply_id and nlu.is_yes(turn.text)):
        _cancel(turn, patient, appointment)
        return
    if turn.reply_id == replies.CANCEL_NO or (not turn.reply_id and nlu.is_no(turn.text)):
        _cancel_kept(turn)
        return
    if _global_intent(turn, nlu.detect_intent(turn.text)):
        return
    turn.say(replies.confirm_cancel(appointment, turn.clinic))


def _cancel_kept(turn: Turn) -> None:
    _reset_flow(turn)
    turn.go(State.BOOKED)
    turn.say(replies.cancel_kept())


def _cancel(turn: Turn, patient: PatientInfo, appointment: AppointmentInfo) -> None:
    try:
        turn.gateway.appointment_cancel(
            patient_id=appointment.patient_id or patient.id,
            appointment_id=appointment.id,
            reason="cancelled by the patient on WhatsApp",
        )
    except BookingError as exc:
        logger.info("conversation %s: cancel refused: %s", turn.ctx.conversation_id, exc.code)
        _reset_flow(turn)
        turn.go(State.IDENTIFIED)
        turn.say(replies.cancel_failed())
        return
    _reset_flow(turn)
    turn.go(State.CLOSED)
    turn.closed = True
    turn.say(replies.cancelled(appointment, turn.clinic))


def _on_rescheduling(turn: Turn) -> None:
    if turn.patient() is None:
        _reset_flow(turn)
        turn.go(State.START)
        _on_start(turn)
        return
    picked = _option_picked(turn, _upcoming(turn))
    if picked is not None:
        _picked_appointment(turn, picked, to_cancel=False)
        return
    if _global_intent(turn, nlu.detect_intent(turn.text)):
        return
    if nlu.is_no(turn.text):
        _cancel_kept(turn)
        return
    turn.say(replies.pick_appointment_help())


# --- CLOSED -------------------------------------------------------------------------------------


def _on_closed(turn: Turn) -> None:
    """A new session: known number → straight to IDENTIFIED, anyone else → START."""
    _reset_flow(turn)
    patient = turn.patient()
    if patient is not None:
        turn.go(State.IDENTIFIED)
        _on_idle(turn, expecting_symptoms=True)
        return
    turn.snap.patient_id = None
    turn.go(State.START)
    _on_start(turn)


# --- reminders and the waitlist (outreach) -------------------------------------------------------

_STOP_REMINDERS = {"stop", "no quiero recordatorios", "no mas recordatorios", "parar recordatorios"}
_RESUME_REMINDERS = {"start", "quiero recordatorios", "activar recordatorios"}
# A plain-text answer to a reminder, in states where these words mean nothing else.
_REMINDER_WORDS = {"confirmo": True, "cancelar": False, "cancelo": False}
_REMINDER_TEXT_STATES = (State.START, State.IDENTIFIED, State.BOOKED, State.CLOSED)


def _waitlist_id(specialty: SpecialtyInfo, want: dict) -> str:
    """ "<slug>:<doctor id>:<part of day>" of a waitlist join for what the patient asked for."""
    doctor_id = want.get("doctor_id") if isinstance(want.get("doctor_id"), int) else ""
    part = {"morning": "morning", "afternoon": "afternoon", "evening": "afternoon"}.get(
        str(want.get("part", "")), "any"
    )
    return f"{specialty.slug}:{doctor_id}:{part}"


def _outreach(turn: Turn) -> bool:
    """Reminder and waitlist buttons, STOP, and "confirmo" / "cancelar" after a reminder; True
    when handled. The gateway checks the reminder or offer was sent to this conversation."""
    gateway, now = turn.gateway, turn.ctx.now
    kind, _, rest = turn.reply_id.partition(":")
    action, _, raw_id = rest.partition(":")
    if kind == "reminder" and action in ("confirm", "cancel") and _int(raw_id):
        result = gateway.reminder_answer(
            appointment_id=_int(raw_id), confirm=action == "confirm", now=now
        )
        turn.say(outreach_replies.reminder_result(result, turn.clinic))
        return True
    if kind == "waitlist" and action in ("accept", "decline") and _int(raw_id):
        result = gateway.waitlist_answer(offer_id=_int(raw_id), accept=action == "accept", now=now)
        turn.say(outreach_replies.offer_result(result, turn.clinic))
        return True
    if kind == "waitlist" and action == "join":
        slug, _, wishes = raw_id.partition(":")
        doctor_id, _, part = wishes.partition(":")
        specialty = gateway.specialty(slug)
        if specialty is None or turn.patient() is None:
            turn.say(replies.identify_first())
            return True
        joined = gateway.waitlist_join(
            patient_id=turn.snap.patient_id,
            specialty_id=specialty.id,
            doctor_id=_int(doctor_id),
            part_of_day=part or "any",
        )
        turn.say(outreach_replies.waitlist_joined(specialty.name, already=not joined))
        return True
    if kind == "waitlist":  # "waitlist:no"
        turn.say(outreach_replies.waitlist_not_joined())
        return True
    if turn.inbound.kind != "text":
        return False
    said = normalize(turn.text)
    if said in _STOP_REMINDERS or said in _RESUME_REMINDERS:
        enabled = said in _RESUME_REMINDERS
        gateway.reminders_set(
            wa_id=turn.ctx.wa_id, patient_id=turn.snap.patient_id, enabled=enabled
        )
        turn.say(
            outreach_replies.reminders_resumed()
            if enabled
            else outreach_replies.reminders_stopped()
        )
        return True
    if said in _REMINDER_WORDS and turn.snap.state in _REMINDER_TEXT_STATES:
        appointment = gateway.open_reminder(now=now)
        if appointment is None:
            return False
        result = gateway.reminder_answer(
            appointment_id=appointment.id, confirm=_REMINDER_WORDS[said], now=now
        )
        turn.say(outreach_replies.reminder_result(result, turn.clinic))
        return True
    return False


HANDLERS: dict[State, Callable[[Turn], None]] = {
    State.START: _on_start,
    State.VERIFYING: _on_verifying,
    State.LOCKED_OUT: _on_locked_out,
    State.REGISTERING_NAME: _on_registering_name,
    State.CHOOSING_PATIENT: _on_choosing_patient,
    State.IDENTIFIED: _on_identified,
    State.CHOOSING_SPECIALTY: _on_choosing_specialty,
    State.TRIAGED: _on_triaged,
    State.CHOOSING_SLOT: _on_choosing_slot,
    State.CONFIRMING: _on_confirming,
    State.BOOKED: _on_booked,
    State.CANCELLING: _on_cancelling,
    State.RESCHEDULING: _on_rescheduling,
    State.CLOSED: _on_closed,
}
