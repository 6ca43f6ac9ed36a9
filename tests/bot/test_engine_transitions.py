"""Every transition of bot.engine, without a database: the engine against tests/bot/memory_gateway.

No `django_db` mark here, so pytest-django refuses any query: a test that passes proves the engine
reached clinic data only through its gateway. One table row per transition — DESIGN §5 and the
states the engine adds (identity check, lock-out, registration, specialty choice, rescheduling) —
each with where it starts, what the patient sends, where it must end, what it must have written
through the gateway and a phrase of the Spanish reply.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from bot import engine
from bot.engine import State
from bot.messages import FaqInfo, Inbound, SpecialtyInfo
from tests.bot.memory_gateway import MemoryGateway

ANA_WA = "573001234567"
STRANGER_WA = "573119998877"
NEW_WA = "573205556677"
ANA_DOCUMENT = "1020304050"
ANA_BIRTH = dt.date(1985, 3, 14)


class FakeLLM:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def classify(self, text, specialties):
        self.calls.append("classify")
        return None

    def answer(self, question, clinic, specialties, faq=()):
        self.calls.append("answer")
        return "Sí, tenemos parqueadero gratuito.", (120, 30)


@dataclass
class World:
    """The clinic of tests/bot/conftest.py, in memory, and one chat driving the engine."""

    gateway: MemoryGateway
    general: SpecialtyInfo
    dental: SpecialtyInfo
    general_slots: list[int]
    dental_slots: list[int]
    ana_id: int
    wa_id: str = ANA_WA
    llm: FakeLLM | None = None
    snapshot: engine.Snapshot = field(default_factory=engine.Snapshot)
    result: engine.StepResult | None = None

    def step(self, inbound: Inbound) -> engine.StepResult:
        ctx = engine.Context(
            gateway=self.gateway,
            conversation_id=self.gateway.conversation_id,
            wa_id=self.wa_id,
            now=dt.datetime.now(dt.UTC),
            llm=self.llm,
        )
        self.result = engine.step(self.snapshot, inbound, ctx)
        self.snapshot = self.result.snapshot
        return self.result

    def send(self, text: str) -> engine.StepResult:
        return self.step(Inbound(kind="text", text=text, wa_id=self.wa_id))

    def tap(self, reply_id: str, title: str = "") -> engine.StepResult:
        return self.step(Inbound(kind="interactive", text=title, reply_id=reply_id))

    @property
    def state(self) -> State:
        return self.snapshot.state

    @property
    def text(self) -> str:
        return "\n".join(r.text for r in self.result.replies) if self.result else ""


def tomorrow_utc(hour: int, minute: int = 0) -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(
        hour=hour, minute=minute, second=0, microsecond=0
    )


@pytest.fixture
def world() -> World:
    gateway = MemoryGateway()
    general = gateway.add_specialty(
        "medicina-general", "Medicina General", "fiebre, gripa, dolor de cabeza, malestar"
    )
    dental = gateway.add_specialty("odontologia", "Odontología", "muela, diente, dientes, caries")
    gateway.add_specialty("dermatologia", "Dermatología", "piel, acné, manchas, granos")
    general_slots = gateway.add_slots(general, "Dr. Carlos García", tomorrow_utc(13), 30)
    dental_slots = gateway.add_slots(dental, "Dra. Laura Méndez", tomorrow_utc(19), 3, 30)
    ana = gateway.add_patient(ANA_DOCUMENT, "Ana María Gómez", ANA_BIRTH, ANA_WA)
    return World(gateway, general, dental, general_slots, dental_slots, ana.id)


# --- getting to a state: each step is a real turn through the engine ----------------------------


def at_start(w: World) -> None:
    pass


def at_start_stranger(w: World) -> None:
    w.wa_id = STRANGER_WA


def at_start_new_number(w: World) -> None:
    w.wa_id = NEW_WA


def at_start_closed_registration(w: World) -> None:
    w.wa_id = NEW_WA
    w.gateway.clinic = dataclasses.replace(w.gateway.clinic, self_registration=False)


def at_identified(w: World) -> None:
    w.send(ANA_DOCUMENT)


def at_identified_with_appointment(w: World) -> None:
    w.gateway.book(w.ana_id, w.dental_slots[2], w.dental.id)
    at_identified(w)


def at_choosing(w: World) -> None:
    at_identified(w)
    w.send("tengo fiebre y dolor de cabeza")


def at_choosing_page_2(w: World) -> None:
    at_choosing(w)
    w.send("más")


def at_choosing_last_page(w: World) -> None:
    at_choosing_page_2(w)
    w.send("más")


def at_choosing_dental(w: World) -> None:
    at_identified(w)
    w.send("me duele una muela")


def at_choosing_slot_taken(w: World) -> None:
    at_choosing(w)
    w.gateway.holds[w.general_slots[0]] = ("conversation:1", tomorrow_utc(23))


def at_confirming(w: World) -> None:
    at_choosing(w)
    w.send("1")


def at_confirming_with_overlap(w: World) -> None:
    at_confirming(w)
    # Booked meanwhile (by staff, say) at the time being confirmed: a time that overlaps one of
    # the patient's appointments is never offered, so it can only happen after the offer.
    other = w.gateway.add_slots(w.dental, "Dra. Laura Méndez", tomorrow_utc(13), 1)[0]
    w.gateway.book(w.ana_id, other, w.dental.id)


def at_identified_with_faq(w: World) -> None:
    w.gateway.faq.append(
        FaqInfo(1, "¿Tienen parqueadero?", ("parqueadero", "parqueo"), "Sí, en el sótano.")
    )
    at_identified(w)


def at_choosing_two_dentists(w: World) -> None:
    w.gateway.add_slots(w.dental, "Dr. Pedro Rojas", tomorrow_utc(19), 3, 30)
    at_identified(w)
    w.send("me duele una muela")


def at_waiting_for_staff(w: World) -> None:
    at_identified(w)
    w.send("quiero hablar con una persona")


def at_confirming_hold_stolen(w: World) -> None:
    at_confirming(w)
    w.gateway.holds[w.general_slots[0]] = ("conversation:1", tomorrow_utc(23))


def at_confirming_slot_gone(w: World) -> None:
    at_confirming(w)
    del w.gateway.slots[w.general_slots[0]]


def at_booked(w: World) -> None:
    at_confirming(w)
    w.send("sí")


def at_booked_with_llm(w: World) -> None:
    w.llm = FakeLLM()
    at_booked(w)


def at_booked_twice(w: World) -> None:
    w.gateway.book(w.ana_id, w.dental_slots[2], w.dental.id)
    at_booked(w)


def at_cancelling_pick(w: World) -> None:
    at_booked_twice(w)
    w.send("cancelar mi cita")


def at_cancelling_confirm(w: World) -> None:
    at_booked(w)
    w.send("cancelar mi cita")


def at_cancelling_confirm_vanished(w: World) -> None:
    at_cancelling_confirm(w)
    for appointment in w.gateway.appointments.values():
        appointment.status = "cancelled"  # staff cancelled it meanwhile


def at_rescheduling(w: World) -> None:
    at_booked_twice(w)
    w.send("reprogramar mi cita")


def at_rescheduling_confirming(w: World) -> None:
    at_booked(w)
    w.send("quiero reprogramar mi cita")
    w.send("3")


def at_verifying(w: World) -> None:
    w.wa_id = STRANGER_WA
    w.send(ANA_DOCUMENT)


def at_verifying_twice_missed(w: World) -> None:
    """Two wrong dates for Ana's document already counted (this number's third try next)."""
    at_verifying(w)
    w.send("01/01/1990")
    w.send(ANA_DOCUMENT)
    w.send("02/02/1991")
    w.send(ANA_DOCUMENT)


def at_locked_out(w: World) -> None:
    at_verifying_twice_missed(w)
    w.send("03/03/1992")


def at_verifying_unknown_closed(w: World) -> None:
    at_start_closed_registration(w)
    w.send("5544332211")


def at_registering_name(w: World) -> None:
    w.wa_id = NEW_WA
    w.send("5544332211")
    w.send("02/05/1990")


def at_registering_name_taken(w: World) -> None:
    at_registering_name(w)
    w.gateway.add_patient("5544332211", "Pedro Pablo Pérez", None)  # registered meanwhile


def at_registering_name_on_file(w: World) -> None:
    """Ana's document from a stranger's number, with a wrong birth date."""
    at_verifying(w)
    w.send("01/01/1990")


def at_choosing_patient(w: World) -> None:
    at_identified(w)
    w.send("es para mi hijo, tiene fiebre")


def at_choosing_specialty(w: World) -> None:
    at_identified(w)
    w.send("me siento muy raro desde ayer")


def at_triaged(w: World) -> None:
    at_identified(w)
    w.snapshot.state = State.TRIAGED
    w.snapshot.data["specialty"] = "odontologia"


def at_closed(w: World) -> None:
    at_booked(w)
    w.send("gracias, chao")


def at_closed_stranger(w: World) -> None:
    at_closed(w)
    w.wa_id = STRANGER_WA


@dataclass(frozen=True)
class Row:
    start: Callable[[World], None]
    message: str  # text, or "tap:<reply id>"
    expected: State
    says: str = ""  # a phrase of the Spanish reply
    writes: tuple[str, ...] = ()  # gateway writes made by this turn, in order
    needs_staff: bool = False
    urgent: bool = False
    closed: bool = False


TRANSITIONS: dict[str, Row] = {
    # any state, before the state's handler
    "any: unsupported message": Row(
        at_choosing, "<audio>", State.CHOOSING_SLOT, "solo entiendo mensajes de texto"
    ),
    "any: red flag in START": Row(
        at_start, "me duele el pecho y no puedo respirar", State.START, "emergencia", urgent=True
    ),
    "any: red flag in CONFIRMING": Row(
        at_confirming, "me estoy desmayando", State.CONFIRMING, "123", urgent=True
    ),
    "any: asks for a person": Row(
        at_identified,
        "quiero hablar con un asesor",
        State.WAITING_FOR_STAFF,
        "persona",
        needs_staff=True,
    ),
    "IDENTIFIED: a question the clinic's FAQ answers": Row(
        at_identified_with_faq, "¿hay parqueadero?", State.IDENTIFIED, "sótano"
    ),
    "IDENTIFIED: a day before the symptoms": Row(
        at_identified, "el viernes en la tarde", State.IDENTIFIED, "síntomas"
    ),
    "CHOOSING_SLOT: a named doctor narrows the list and says so": Row(
        at_choosing_two_dentists, "con el dr Rojas", State.CHOOSING_SLOT, "con el Dr. Pedro Rojas"
    ),
    "CHOOSING_SLOT: that doctor at that time is held": Row(
        at_choosing_two_dentists,
        "con el dr rojas a las 2:30 pm",
        State.CONFIRMING,
        "Pedro Rojas",
        ("slot_hold",),
    ),
    # WAITING_FOR_STAFF: a person will write; the bot only reminds once and answers red flags
    "WAITING_FOR_STAFF: writes again": Row(
        at_waiting_for_staff, "hola?", State.WAITING_FOR_STAFF, "fila", needs_staff=True
    ),
    "WAITING_FOR_STAFF: a red flag": Row(
        at_waiting_for_staff,
        "me duele mucho el pecho",
        State.WAITING_FOR_STAFF,
        "123",
        urgent=True,
    ),
    # START
    "START: greeting": Row(at_start, "hola", State.START, "documento"),
    "START: own document from own number": Row(
        at_start, ANA_DOCUMENT, State.IDENTIFIED, "Hola, Ana María"
    ),
    "START: known document from another number": Row(
        at_start_stranger, ANA_DOCUMENT, State.VERIFYING, "fecha de nacimiento"
    ),
    # An unknown document gets the same question as a known one (no leak).
    "START: unknown document, self-registration": Row(
        at_start_new_number, "5544332211", State.VERIFYING, "fecha de nacimiento"
    ),
    "START: unknown document, registration closed": Row(
        at_start_closed_registration, "5544332211", State.VERIFYING, "fecha de nacimiento"
    ),
    "START: invalid document": Row(at_start, "1234567", State.START, "8 a 15 dígitos"),
    "START: a question about the clinic": Row(at_start, "¿dónde quedan?", State.START, "Calle 100"),
    "START: goodbye": Row(at_start, "chao, gracias", State.START, "Cuídate"),
    "START: cancel before identifying": Row(at_start, "cancelar mi cita", State.START, "documento"),
    # VERIFYING
    "VERIFYING: the right birth date": Row(
        at_verifying, "14/03/1985", State.IDENTIFIED, "Ana María", ("patient_phone_add",)
    ),
    "VERIFYING: a wrong birth date": Row(
        at_verifying,
        "01/01/1990",
        State.REGISTERING_NAME,
        "nombre completo",
        ("identity_failure_record",),
    ),
    "VERIFYING: a third wrong birth date": Row(
        at_verifying_twice_missed,
        "03/03/1992",
        State.LOCKED_OUT,
        "persona",
        ("identity_failure_record",),
        needs_staff=True,
    ),
    "VERIFYING: a date for a document nobody has, registration closed": Row(
        at_verifying_unknown_closed, "02/05/1990", State.START, "confirmar", needs_staff=True
    ),
    "VERIFYING: something else than a date": Row(
        at_verifying, "cancelar mi cita", State.VERIFYING, "fecha de nacimiento"
    ),
    "VERIFYING: an unreadable date": Row(at_verifying, "ayer", State.VERIFYING, "14/03/1985"),
    # LOCKED_OUT
    "LOCKED_OUT: anything": Row(
        at_locked_out, "14/03/1985", State.LOCKED_OUT, "persona", needs_staff=True
    ),
    # REGISTERING_NAME (after a birth date that opened nothing)
    "REGISTERING_NAME: a full name": Row(
        at_registering_name,
        "Pedro Pablo Pérez",
        State.IDENTIFIED,
        "ya estás en nuestro registro",
        ("patient_register",),
    ),
    "REGISTERING_NAME: not a name": Row(
        at_registering_name, "x", State.REGISTERING_NAME, "nombre completo"
    ),
    "REGISTERING_NAME: registration refused": Row(
        at_registering_name_taken,
        "Pedro Pablo Pérez",
        State.START,
        "persona",
        ("patient_register",),
        needs_staff=True,
    ),
    "REGISTERING_NAME: a document on file, its date was wrong": Row(
        at_registering_name_on_file, "Mario Mendoza", State.START, "confirmar", needs_staff=True
    ),
    # CHOOSING_PATIENT (one phone, several patients)
    "CHOOSING_PATIENT: someone else's symptoms": Row(
        at_identified, "es para mi hijo, tiene fiebre", State.CHOOSING_PATIENT, "Para quién"
    ),
    "CHOOSING_PATIENT: someone else": Row(
        at_choosing_patient, "tap:who:new", State.IDENTIFIED, "documento de la persona"
    ),
    "CHOOSING_PATIENT: a patient on the number": Row(
        at_choosing_patient, "tap:who:{ana}", State.CHOOSING_SLOT, "será para Ana María"
    ),
    "CHOOSING_PATIENT: the child's document": Row(
        at_choosing_patient, "5544332211", State.VERIFYING, "fecha de nacimiento"
    ),
    "CHOOSING_PATIENT: not understood": Row(
        at_choosing_patient, "mmm", State.CHOOSING_PATIENT, "Elige de la lista"
    ),
    # IDENTIFIED
    "IDENTIFIED: clear symptoms": Row(
        at_identified, "tengo fiebre y dolor de cabeza", State.CHOOSING_SLOT, "Medicina General"
    ),
    "IDENTIFIED: unclear symptoms": Row(
        at_identified, "me siento muy raro desde ayer", State.CHOOSING_SPECIALTY, "especialidad"
    ),
    "IDENTIFIED: a specialty without slots": Row(
        at_identified, "dermatología", State.CHOOSING_SPECIALTY, "no hay horarios"
    ),
    "IDENTIFIED: wants a booking": Row(
        at_identified, "quiero una cita", State.IDENTIFIED, "síntomas"
    ),
    "IDENTIFIED: greeting": Row(at_identified, "hola", State.IDENTIFIED, "Ana María"),
    "IDENTIFIED: menu": Row(at_identified, "menú", State.IDENTIFIED, "asesor"),
    "IDENTIFIED: my appointments": Row(
        at_identified_with_appointment, "mis citas", State.IDENTIFIED, "próximas citas"
    ),
    "IDENTIFIED: cancel with nothing booked": Row(
        at_identified, "cancelar mi cita", State.IDENTIFIED, "No tienes citas próximas"
    ),
    "IDENTIFIED: an old button": Row(at_identified, "tap:confirm:yes", State.IDENTIFIED, "asesor"),
    "IDENTIFIED: goodbye": Row(
        at_identified, "gracias, chao", State.CLOSED, "Cuídate", closed=True
    ),
    # CHOOSING_SPECIALTY
    "CHOOSING_SPECIALTY: taps one": Row(
        at_choosing_specialty, "tap:spec:odontologia", State.CHOOSING_SLOT, "Odontología"
    ),
    "CHOOSING_SPECIALTY: writes its number": Row(
        at_choosing_specialty, "2", State.CHOOSING_SLOT, "horarios"
    ),
    # TRIAGED (transient: slots in the same turn)
    "TRIAGED: shows page one": Row(at_triaged, "ok", State.CHOOSING_SLOT, "Odontología"),
    # CHOOSING_SLOT
    "CHOOSING_SLOT: a number": Row(
        at_choosing, "la 3", State.CONFIRMING, "¿Te la agendo?", ("slot_hold",)
    ),
    "CHOOSING_SLOT: a row": Row(
        at_choosing_dental, "tap:slot:{dental0}", State.CONFIRMING, "Laura", ("slot_hold",)
    ),
    "CHOOSING_SLOT: a time": Row(
        at_choosing, "el de las 9:20", State.CONFIRMING, "9:20", ("slot_hold",)
    ),
    "CHOOSING_SLOT: a time not offered": Row(
        at_choosing, "a las 3 de la madrugada", State.CHOOSING_SLOT, "No encontré horarios"
    ),
    "CHOOSING_SLOT: next page": Row(at_choosing, "más", State.CHOOSING_SLOT, "anterior"),
    "CHOOSING_SLOT: next page at the end": Row(
        at_choosing_last_page, "más", State.CHOOSING_SLOT, "todos los horarios"
    ),
    "CHOOSING_SLOT: previous page": Row(at_choosing_page_2, "anterior", State.CHOOSING_SLOT, "más"),
    "CHOOSING_SLOT: previous page on the first": Row(
        at_choosing, "anterior", State.CHOOSING_SLOT, "primera página"
    ),
    "CHOOSING_SLOT: another specialty named": Row(
        at_choosing, "mejor odontología", State.CHOOSING_SLOT, "Odontología"
    ),
    "CHOOSING_SLOT: a slot someone took": Row(
        at_choosing_slot_taken, "1", State.CHOOSING_SLOT, "alguien", ("slot_hold",)
    ),
    "VERIFYING: a document instead": Row(
        at_verifying, "5544332211", State.VERIFYING, "fecha de nacimiento"
    ),
    "CHOOSING_SLOT: not understood": Row(at_choosing, "mmm", State.CHOOSING_SLOT, "del 1 al 10"),
    "CHOOSING_SLOT: goodbye": Row(at_choosing, "chao", State.CLOSED, "Cuídate", closed=True),
    # CONFIRMING
    "CONFIRMING: yes": Row(at_confirming, "sí", State.BOOKED, "agendada", ("appointment_book",)),
    "CONFIRMING: the yes button": Row(
        at_confirming, "tap:confirm:yes", State.BOOKED, "agendada", ("appointment_book",)
    ),
    "CONFIRMING: no": Row(at_confirming, "no", State.CHOOSING_SLOT, "horarios", ("slot_release",)),
    "CONFIRMING: another time button": Row(
        at_confirming, "tap:confirm:other", State.CHOOSING_SLOT, "horarios", ("slot_release",)
    ),
    "CONFIRMING: the cancel button": Row(
        at_confirming, "tap:confirm:cancel", State.IDENTIFIED, "no agendé", ("slot_release",)
    ),
    "CONFIRMING: typed cancel": Row(
        at_confirming, "cancelar", State.IDENTIFIED, "no agendé", ("slot_release",)
    ),
    "CONFIRMING: another number": Row(
        at_confirming, "mejor la 4", State.CONFIRMING, "¿Te la agendo?", ("slot_hold",)
    ),
    "CONFIRMING: another time": Row(
        at_confirming, "mejor el de las 10", State.CONFIRMING, "10:00", ("slot_hold",)
    ),
    "CONFIRMING: the patient is busy then": Row(
        at_confirming_with_overlap,
        "sí",
        State.CHOOSING_SLOT,
        "Ya tienes una cita a esa hora",
        ("appointment_book",),
    ),
    "CONFIRMING: the hold was lost": Row(
        at_confirming_hold_stolen,
        "sí",
        State.CHOOSING_SLOT,
        "ya no está disponible",
        ("appointment_book",),
    ),
    "CONFIRMING: the slot vanished": Row(
        at_confirming_slot_gone, "sí", State.CHOOSING_SLOT, "horarios"
    ),
    "CONFIRMING: not understood": Row(at_confirming, "mmm", State.CONFIRMING, "botón"),
    # BOOKED
    "BOOKED: a question about the clinic": Row(
        at_booked, "¿dónde quedan?", State.BOOKED, "Calle 100"
    ),
    "BOOKED: a free question, rules only": Row(
        at_booked, "tienen parqueadero para carros grandes", State.BOOKED, "una persona"
    ),
    "BOOKED: a free question, with the LLM": Row(
        at_booked_with_llm, "tienen parqueadero para carros grandes", State.BOOKED, "parqueadero"
    ),
    "BOOKED: new symptoms": Row(
        at_booked, "me duele una muela", State.CHOOSING_SLOT, "Odontología"
    ),
    "BOOKED: cancel the only appointment": Row(
        at_booked, "cancelar mi cita", State.CANCELLING, "¿Quieres cancelar"
    ),
    "BOOKED: cancel, two appointments": Row(
        at_booked_twice, "cancelar mi cita", State.CANCELLING, "¿Qué cita quieres cancelar?"
    ),
    "BOOKED: reschedule the only appointment": Row(
        at_booked, "quiero reprogramar mi cita", State.CHOOSING_SLOT, "Vamos a cambiar tu cita"
    ),
    "BOOKED: reschedule, two appointments": Row(
        at_booked_twice, "reprogramar mi cita", State.RESCHEDULING, "¿Qué cita quieres cambiar?"
    ),
    "BOOKED: goodbye": Row(at_booked, "gracias, chao", State.CLOSED, "Cuídate", closed=True),
    # CANCELLING
    "CANCELLING: picks one": Row(at_cancelling_pick, "2", State.CANCELLING, "¿Quieres cancelar"),
    "CANCELLING: says no before picking": Row(
        at_cancelling_pick, "no", State.BOOKED, "sigue igual"
    ),
    "CANCELLING: not understood": Row(
        at_cancelling_pick, "mmm", State.CANCELLING, "Elige una de tus citas"
    ),
    "CANCELLING: confirms": Row(
        at_cancelling_confirm, "sí", State.CLOSED, "cancelada", ("appointment_cancel",), closed=True
    ),
    "CANCELLING: the yes button": Row(
        at_cancelling_confirm,
        "tap:cancel:yes",
        State.CLOSED,
        "cancelada",
        ("appointment_cancel",),
        closed=True,
    ),
    "CANCELLING: keeps it": Row(
        at_cancelling_confirm, "tap:cancel:no", State.BOOKED, "sigue igual"
    ),
    "CANCELLING: the appointment is gone": Row(
        at_cancelling_confirm_vanished, "sí", State.IDENTIFIED, "no pude"
    ),
    # RESCHEDULING
    "RESCHEDULING: picks one": Row(
        at_rescheduling, "1", State.CHOOSING_SLOT, "Vamos a cambiar tu cita"
    ),
    "RESCHEDULING: says no": Row(at_rescheduling, "no", State.BOOKED, "sigue igual"),
    "RESCHEDULING: not understood": Row(
        at_rescheduling, "mmm", State.RESCHEDULING, "Elige una de tus citas"
    ),
    "RESCHEDULING: confirms the new time": Row(
        at_rescheduling_confirming,
        "sí",
        State.BOOKED,
        "quedó cambiada",
        ("appointment_reschedule",),
    ),
    "RESCHEDULING: drops the move": Row(
        at_rescheduling_confirming,
        "tap:confirm:cancel",
        State.BOOKED,
        "sigue como estaba",
        ("slot_release",),
    ),
    # CLOSED: a new session
    "CLOSED: the patient's own number": Row(at_closed, "hola", State.IDENTIFIED, "Ana María"),
    "CLOSED: another number": Row(at_closed_stranger, "hola", State.START, "documento"),
}


@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_it_makes_each_transition_without_a_database(world, name):
    row = TRANSITIONS[name]
    row.start(world)
    writes_before = len(world.gateway.calls)
    message = row.message.format(
        dental0=world.dental_slots[0], general0=world.general_slots[0], ana=world.ana_id
    )
    if message == "<audio>":
        result = world.step(Inbound(kind="unsupported"))
    elif message.startswith("tap:"):
        result = world.tap(message.removeprefix("tap:"))
    else:
        result = world.send(message)

    assert world.state == row.expected
    assert result.replies
    assert row.says in world.text
    assert tuple(n for n, _ in world.gateway.calls[writes_before:]) == row.writes
    assert (result.needs_staff, result.urgent, result.closed) == (
        row.needs_staff,
        row.urgent,
        row.closed,
    )


def test_every_engine_state_has_a_transition_row():
    starts = {name.split(":")[0] for name in TRANSITIONS}
    assert {state.value for state in State} <= starts | {"any"}


def test_it_books_through_the_gateway_and_frees_nothing_else(world):
    at_confirming(world)
    held = world.snapshot.data["held_slot"]
    world.send("sí")
    (appointment,) = world.gateway.appointments.values()
    assert appointment.slot_id == held
    assert appointment.patient_id == world.ana_id
    assert appointment.notes == "tengo fiebre y dolor de cabeza"
    assert held not in world.gateway.free_slot_ids()
    assert world.gateway.holds == {}


def test_it_moves_the_appointment_it_was_asked_to_move(world):
    at_rescheduling_confirming(world)
    (appointment,) = world.gateway.appointments.values()
    target = world.snapshot.data["held_slot"]
    world.send("sí")
    assert appointment.slot_id == target
    assert appointment.status == "booked"


def test_it_never_calls_the_llm_on_deterministic_paths(world):
    world.llm = FakeLLM()
    for text in (
        ANA_DOCUMENT,
        "tengo fiebre y dolor de cabeza",
        "3",
        "sí",
        "cancelar mi cita",
        "no",
    ):
        world.send(text)
    assert world.llm.calls == []


def test_it_does_not_change_the_snapshot_it_was_given(world):
    at_choosing(world)
    before = engine.Snapshot(
        state=world.snapshot.state, data=dict(world.snapshot.data), patient_id=world.ana_id
    )
    ctx = engine.Context(
        gateway=world.gateway, conversation_id=1, wa_id=ANA_WA, now=dt.datetime.now(dt.UTC)
    )
    engine.step(before, Inbound(kind="text", text="2"), ctx)
    assert before.state == State.CHOOSING_SLOT
    assert "held_slot" not in before.data
