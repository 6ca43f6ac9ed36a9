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
    AppointmentInfo,
    ClinicInfo,
    Inbound,
    PatientInfo,
    Reply,
    SlotInfo,
    SpecialtyInfo,
)
from bot.nlu import Intent
from bot.text import normalize
from clinics.errors import BookingError

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


# --- the machine ------------------------------------------------------------------------------

PAGE_SIZE = 10
LOOKAHEAD_PAGES = 5  # how many pages "el de las 10" searches, from the first
# Ids of the rows and buttons the engine sends ("slot:42", "confirm:yes", …).
_REPLY_PREFIXES = ("slot:", "spec:", "appt:", "confirm:", "cancel:", "who:")
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
        return StepResult(
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
    # Red flags first, in every state: an emergency message, never a slot list first.
    if inbound.kind == "text" and _red_flag(turn.text):
        turn.say(replies.emergency(turn.clinic))
        turn.urgent = True
        logger.info("conversation %s: red flag, urgent", ctx.conversation_id)
        return turn.result()
    if not turn.reply_id and nlu.detect_intent(turn.text) == Intent.HUMAN:
        turn.say(replies.human_requested())
        turn.needs_staff = True
        return turn.result()
    HANDLERS[turn.snap.state](turn)
    return turn.result()


def _state(value: object) -> State:
    try:
        return State(str(value))
    except ValueError:
        return State.START


def _copy(data: dict) -> dict:
    return copy.deepcopy(data)


def _red_flag(text: str) -> bool:
    return bool(text.strip()) and triage.detect_red_flag(text) is not None


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
    turn.data.clear()


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
        _identify(turn, document.document)
        return
    if document.invalid:
        turn.say(replies.invalid_document())
        return
    intent = nlu.detect_intent(turn.text)
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
        if not _triage(
            turn, symptoms, expecting_symptoms=True, quiet_if_unsure=True, ask_whose=not chosen
        ):
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
        turn.say(replies.date_problem(parsed.problem or ""))
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
    turn.data["whose_options"] = [p.id for p in on_number[: replies.MAX_ROWS - 1]]
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
    if _global_intent(turn, intent):
        return
    if intent == Intent.GREETING:
        turn.say(replies.identified(nlu.first_names(patient.full_name)))
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
    """A question the rules can't place: the LLM grounded in clinic data, else the menu."""
    llm = turn.ctx.llm
    if llm is not None and not turn.reply_id and _is_free_text(turn.text):
        try:
            answer = llm.answer(turn.text, turn.clinic, _specialties(turn))
        except Exception:  # the LLM is optional: any failure falls back to the menu
            logger.exception("conversation %s: llm answer failed", turn.ctx.conversation_id)
            answer = None
        text = _answer_text(turn, answer)
        if text:
            turn.say(replies.text(text))
            return
    turn.say(replies.menu())


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
        turn.go(State.TRIAGED)
        _show_page(turn, specialty, page=1, intro=replies.triaged_intro(specialty.name))
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
    )[: replies.MAX_ROWS]
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
    """Fetch and show slot page `page` of `specialty` (keyset cursor kept per page)."""
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
    if not slot_page.slots:
        if page > 1:
            # The later page emptied meanwhile: go back to the first one.
            _show_page(turn, specialty, page=1, intro=intro)
            return
        for key in ("shown", "shown_times", "page", "cursors", "has_more"):
            turn.data.pop(key, None)
        others = [s for s in _specialties(turn) if s.slug != specialty.slug]
        if others and not turn.data.get("reschedule_id"):
            _offer_specialties(turn, others, no_slots_for=specialty.name)
        else:
            _reset_flow(turn)
            turn.go(State.IDENTIFIED if turn.snap.patient_id else State.START)
            turn.say(replies.no_slots_at_all(specialty.name))
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
    )
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
        specialty_id=specialty.id, cursor=cursor, page_size=PAGE_SIZE, now=turn.ctx.now
    )


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


def _slot_at_time(turn: Turn, request: nlu.TimeRequest) -> int | None:
    """For "el de las 10" when 10:00 isn't on the page shown: the first slot at that time from
    page 1 on, a few pages deep; failing that exact time, the first one within that hour."""
    specialty = _current_specialty(turn)
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
    for slots, times in pages:
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
    if _global_intent(turn, intent):
        return
    if intent == Intent.MENU:
        turn.say(replies.menu())
        return
    # New symptoms or another specialty named ("mejor odontología")? Rules only: no LLM here.
    if (
        intent is None
        and not turn.data.get("reschedule_id")
        and _triage(turn, turn.text, expecting_symptoms=False, quiet_if_unsure=True, use_llm=False)
    ):
        return
    turn.say(replies.choose_slot_help(len(turn.data.get("shown") or []) or PAGE_SIZE))


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
    if _global_intent(turn, intent):
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
    turn.data["options"] = [a.id for a in appointments[: replies.MAX_ROWS]]
    if len(appointments) == 1:
        _picked_appointment(turn, appointments[0], to_cancel=to_cancel)
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
    _reset_flow(turn)
    if appointment.patient_id is not None:
        turn.snap.patient_id = appointment.patient_id  # moving a child's: booked for the child
    turn.data["reschedule_id"] = appointment.id
    turn.data["specialty"] = specialty.slug
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
    return offered[index] if index is not None else None


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
