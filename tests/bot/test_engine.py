"""The conversation state machine (bot.engine) against the real booking services on PostgreSQL.

The first test walks every row of DESIGN §5; the rest cover identity (§6), registration, red
flags in every state, paging, holds, list/button limits and the LLM staying out of deterministic
paths. Replies are asserted in Spanish (LANGUAGE_CODE is "es").
"""

import datetime as dt

import pytest
from django.utils import timezone

from bot import engine
from bot.engine import State
from bot.gateway import OrmGateway
from bot.messages import Inbound
from bot.models import Conversation
from clinics.models import (
    Appointment,
    AppointmentStatus,
    Clinic,
    IdentityFailure,
    Patient,
    PatientPhone,
    Slot,
    SlotHold,
    SlotStatus,
)
from clinics.services import Actor, appointment_book, slot_hold
from tests.bot.conftest import (
    ANA_WA,
    NEW_WA,
    STRANGER_WA,
    Chat,
    FakeLLM,
    first_list,
    slot_ids,
    texts,
)

pytestmark = pytest.mark.django_db


def book_for(patient: Patient, slot: Slot) -> Appointment:
    return appointment_book(
        clinic=patient.clinic,
        patient=patient,
        slot_id=slot.pk,
        actor=Actor.patient(patient),
        source="bot",
    )


# --- DESIGN §5, row by row -------------------------------------------------------------------

SECTION_5_ROWS = [
    # (state reached by the fixture, message, expected next state)
    ("start", "hola", State.START),
    ("start", "1020304050", State.IDENTIFIED),
    ("identified", "tengo fiebre y dolor de cabeza", State.CHOOSING_SLOT),
    ("choosing", "la 3", State.CONFIRMING),
    ("choosing", "más", State.CHOOSING_SLOT),
    ("confirming", "sí", State.BOOKED),
    ("confirming", "no", State.CHOOSING_SLOT),
    ("booked", "¿dónde quedan?", State.BOOKED),
    ("booked", "cancelar mi cita", State.CANCELLING),
    ("identified", "asesor", State.WAITING_FOR_STAFF),
    ("choosing", "me duele el pecho y no puedo respirar", State.CHOOSING_SLOT),
]


@pytest.fixture
def reach(chat):
    def _reach(where: str) -> Chat:
        if where == "start":
            return chat
        chat.send("1020304050")
        if where == "identified":
            return chat
        chat.send("tengo fiebre y dolor de cabeza")
        if where == "choosing":
            return chat
        chat.send("1")
        if where == "confirming":
            return chat
        chat.send("sí")
        assert where == "booked"
        return chat

    return _reach


@pytest.mark.parametrize(("where", "message", "expected"), SECTION_5_ROWS)
def test_it_follows_every_row_of_the_state_table(reach, where, message, expected):
    conversation = reach(where)
    result = conversation.send(message)
    assert conversation.state == expected
    assert result.replies


def test_it_greets_and_asks_for_the_document(clinic, agenda):
    result = Chat(clinic, NEW_WA).send("hola")
    assert "Clínica Sophia Demo" in texts(result)
    assert "documento" in texts(result)


def test_it_identifies_a_known_patient_from_her_own_number(chat):
    result = chat.send("CC 1.020.304.050")
    assert chat.state == State.IDENTIFIED
    assert chat.snapshot.patient_id is not None
    assert "Hola, Ana María" in texts(result)
    assert "síntomas" in texts(result)


def test_it_greets_a_number_on_file_by_name_but_still_asks_the_document(chat):
    result = chat.send("hola")
    assert chat.state == State.START
    assert "Ana María" in texts(result)
    assert "documento" in texts(result)


@pytest.mark.parametrize("text", ["1234567", "10203A4050", "abc12345xyz"])
def test_it_explains_an_invalid_document(chat, text):
    result = chat.send(text)
    assert chat.state == State.START
    assert "8 a 15 dígitos" in texts(result)


def test_it_shows_page_one_after_confident_triage(identified_chat, agenda):
    result = identified_chat.send("tengo fiebre y dolor de cabeza")
    listing = first_list(result)
    assert identified_chat.state == State.CHOOSING_SLOT
    assert len(listing.rows) == 10
    assert listing.button == "Ver horarios"
    assert listing.rows[0].description == "Dr. Carlos García · Medicina General"
    assert listing.rows[0].title.endswith("8:00 a. m.")  # 13:00 UTC in Bogotá
    data = identified_chat.data
    assert data["specialty"] == "medicina-general"
    assert data["symptoms"] == "tengo fiebre y dolor de cabeza"
    assert data["page"] == 1
    assert data["shown"] == [s.pk for s in agenda["general"][:10]]
    assert data["shown"] == slot_ids(result)


def test_it_writes_slot_rows_in_spanish_in_the_clinic_time_zone(identified_chat, agenda):
    result = identified_chat.send("tengo fiebre")
    start = agenda["general"][0].start_at.astimezone(identified_chat.clinic.tz)
    weekday = ["Lun", "Mar", "Mié", "Jue", "Vie", "Sáb", "Dom"][start.weekday()]
    month = ["ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sep", "oct", "nov", "dic"]
    assert first_list(result).rows[0].title == (
        f"{weekday} {start.day} {month[start.month - 1]} 8:00 a. m."
    )


def test_it_asks_to_pick_a_specialty_when_triage_is_unsure(identified_chat, specialties):
    result = identified_chat.send("me siento muy raro desde ayer")
    listing = first_list(result)
    assert identified_chat.state == State.CHOOSING_SPECIALTY
    assert {row.id for row in listing.rows} == {f"spec:{slug}" for slug in specialties}
    result = identified_chat.tap("spec:odontologia", "Odontología")
    assert identified_chat.state == State.CHOOSING_SLOT
    assert identified_chat.data["specialty"] == "odontologia"
    assert len(slot_ids(result)) == 3


def test_it_takes_a_specialty_name_typed_directly(identified_chat):
    identified_chat.send("quiero cita con el odontólogo")
    assert identified_chat.state == State.CHOOSING_SLOT
    assert identified_chat.data["specialty"] == "odontologia"


def test_it_offers_other_specialties_when_one_has_no_slots(identified_chat):
    result = identified_chat.send("dermatología")
    listing = first_list(result)
    assert identified_chat.state == State.CHOOSING_SPECIALTY
    assert "no hay horarios disponibles en Dermatología" in listing.text
    assert "spec:dermatologia" not in {row.id for row in listing.rows}


# --- choosing a slot --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("1", 0),
        ("3", 2),
        ("10", 9),
        ("la 3", 2),
        ("La 3", 2),
        ("la tercera", 2),
        ("el tercero", 2),
        ("el último", 9),
        ("el de las 9", 3),  # 8:00, 8:20, 8:40, 9:00 …
        ("9:20", 4),
        ("a las 10 y 20", 7),
    ],
)
def test_it_holds_the_slot_the_patient_picks(choosing_chat, agenda, text, index):
    result = choosing_chat.send(text)
    expected = agenda["general"][index]
    assert choosing_chat.state == State.CONFIRMING
    assert choosing_chat.data["held_slot"] == expected.pk
    hold = SlotHold.objects.get(slot=expected, released_at=None)
    assert hold.holder == choosing_chat.holder
    buttons = result.replies[-1]
    assert buttons.kind == "buttons"
    assert [b.id for b in buttons.buttons] == ["confirm:yes", "confirm:other", "confirm:cancel"]
    assert [b.title for b in buttons.buttons] == ["Sí, confirmar", "Otra hora", "Cancelar"]


def test_it_holds_a_tapped_row(choosing_chat, agenda):
    slot = agenda["general"][4]
    choosing_chat.tap(f"slot:{slot.pk}", "Jue 26 nov 9:20 a. m.")
    assert choosing_chat.state == State.CONFIRMING
    assert choosing_chat.data["held_slot"] == slot.pk


def test_it_pages_forward_and_back(choosing_chat, agenda):
    general = [s.pk for s in agenda["general"]]
    page2 = choosing_chat.send("siguente")  # typo on purpose
    assert choosing_chat.data["page"] == 2
    assert slot_ids(page2) == general[10:20]
    assert "anterior" in first_list(page2).text
    page3 = choosing_chat.send("ver más")
    assert slot_ids(page3) == general[20:30]
    assert not choosing_chat.data["has_more"]
    result = choosing_chat.send("más")
    assert "todos los horarios" in texts(result)
    back = choosing_chat.send("anterior")
    assert choosing_chat.data["page"] == 2
    assert slot_ids(back) == general[10:20]
    choosing_chat.send("la 2")
    assert choosing_chat.data["held_slot"] == general[11]


def test_it_says_when_it_is_already_on_the_first_page(choosing_chat):
    result = choosing_chat.send("atrás")
    assert "primera página" in texts(result)
    assert choosing_chat.state == State.CHOOSING_SLOT


def test_it_apologises_when_the_slot_was_taken_meanwhile(choosing_chat, agenda):
    taken = agenda["general"][0]
    slot_hold(clinic=taken.clinic, slot_id=taken.pk, holder="conversation:other")
    result = choosing_chat.send("1")
    assert choosing_chat.state == State.CHOOSING_SLOT
    assert "alguien acaba de tomar ese horario" in texts(result)
    assert taken.pk not in slot_ids(result)


def test_it_helps_when_the_choice_is_not_understood(choosing_chat):
    result = choosing_chat.send("hmm no sé")
    assert choosing_chat.state == State.CHOOSING_SLOT
    assert "del 1 al 10" in texts(result)


# --- confirming -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer", ["sí", "Si", "SI", "si dale", "confirmo", "confimo", "ok", "listo", "de una", "👍"]
)
def test_it_books_on_every_way_of_saying_yes(confirming_chat, agenda, answer):
    result = confirming_chat.send(answer)
    assert confirming_chat.state == State.BOOKED
    appointment = Appointment.objects.get(slot=agenda["general"][0])
    assert appointment.source == "bot"
    assert appointment.patient_notes == "tengo fiebre y dolor de cabeza"
    assert appointment.specialty.slug == "medicina-general"
    body = texts(result)
    for part in ("8:00 a. m.", "Dr. Carlos García", "Medicina General", "Calle 100 # 15-20"):
        assert part in body


def test_it_books_on_the_confirm_button(confirming_chat, agenda):
    confirming_chat.tap("confirm:yes", "Sí, confirmar")
    assert confirming_chat.state == State.BOOKED
    assert Appointment.objects.filter(slot=agenda["general"][0]).exists()


def test_it_names_what_to_bring_when_the_clinic_set_it(confirming_chat, clinic):
    Clinic.objects.filter(pk=clinic.pk).update(what_to_bring="tu documento y tu carné")
    confirming_chat.clinic.refresh_from_db()
    result = confirming_chat.send("sí")
    assert "tu documento y tu carné" in texts(result)


@pytest.mark.parametrize("answer", ["no", "mejor otra", "otra hora", "no gracias"])
def test_it_releases_the_hold_and_shows_the_page_again_on_no(confirming_chat, agenda, answer):
    slot = agenda["general"][0]
    result = confirming_chat.send(answer)
    assert confirming_chat.state == State.CHOOSING_SLOT
    assert not SlotHold.objects.filter(slot=slot, released_at=None).exists()
    assert slot.pk in slot_ids(result)


def test_it_switches_slot_when_the_patient_picks_another_while_confirming(confirming_chat, agenda):
    confirming_chat.send("mejor la 4")
    assert confirming_chat.state == State.CONFIRMING
    assert confirming_chat.data["held_slot"] == agenda["general"][3].pk
    assert not SlotHold.objects.filter(slot=agenda["general"][0], released_at=None).exists()


def test_it_drops_the_booking_on_the_cancel_button(confirming_chat, agenda):
    result = confirming_chat.tap("confirm:cancel", "Cancelar")
    assert confirming_chat.state == State.IDENTIFIED
    assert "no agendé nada" in texts(result)
    assert not SlotHold.objects.filter(slot=agenda["general"][0], released_at=None).exists()


def test_it_starts_over_with_a_fresh_page_when_the_hold_expired_and_the_slot_went(
    confirming_chat, agenda, patient
):
    slot = agenda["general"][0]
    # The hold runs out and someone else books the slot before the patient says yes.
    SlotHold.objects.filter(slot=slot).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    Slot.objects.filter(pk=slot.pk).update(held_until=timezone.now() - dt.timedelta(minutes=1))
    other = Patient.objects.create(
        clinic=patient.clinic, document="79111222", full_name="Luis Pérez"
    )
    book_for(other, slot)
    result = confirming_chat.send("sí")
    assert confirming_chat.state == State.CHOOSING_SLOT
    assert "ya no está disponible" in texts(result)
    assert slot.pk not in slot_ids(result)
    assert not Appointment.objects.filter(patient=patient).exists()


def test_it_asks_again_when_the_confirmation_is_unclear(confirming_chat):
    result = confirming_chat.send("mmm")
    assert confirming_chat.state == State.CONFIRMING
    assert result.replies[-1].kind == "buttons"
    assert "«sí» o «no»" in result.replies[-1].text


# --- identity (DESIGN §6) ----------------------------------------------------------------------


@pytest.fixture
def ana_booked(agenda, patient) -> Appointment:
    return book_for(patient, agenda["general"][5])


@pytest.fixture
def stranger(clinic, agenda, patient) -> Chat:
    return Chat(clinic, STRANGER_WA, conversation_id=777)


def test_it_asks_the_birth_date_before_anything_from_another_number(stranger):
    result = stranger.send("1020304050")
    assert stranger.state == State.VERIFYING
    assert stranger.snapshot.patient_id is None
    assert "fecha de nacimiento" in texts(result)
    assert "Ana" not in texts(result)


def test_it_adds_the_new_number_when_the_birth_date_matches(stranger, patient):
    stranger.send("1020304050")
    result = stranger.send("14 de marzo de 1985")
    assert stranger.state == State.IDENTIFIED
    assert stranger.snapshot.patient_id == patient.pk
    assert "Ana María" in texts(result)
    patient.refresh_from_db()
    assert patient.whatsapp_id == ANA_WA  # the number on file is never replaced
    assert PatientPhone.objects.get(patient=patient).wa_id == STRANGER_WA


def test_it_never_shows_or_cancels_appointments_for_a_stranger(stranger, ana_booked):
    stranger.send("1020304050")
    for message in ("mis citas", "cancelar mi cita", "reprogramar", "1"):
        result = stranger.send(message)
        assert stranger.snapshot.patient_id is None
        assert not any(reply.rows for reply in result.replies)
        assert "Dr. Carlos García" not in texts(result)
    ana_booked.refresh_from_db()
    assert ana_booked.status == AppointmentStatus.BOOKED


def test_it_locks_out_after_three_wrong_birth_dates(stranger, ana_booked, patient):
    for guess in ("01/01/1990", "02/02/1990"):
        stranger.send("1020304050")
        result = stranger.send(guess)
        assert "nombre completo" in texts(result)  # as for a document nobody has
    stranger.send("1020304050")
    result = stranger.send("03/03/1990")
    assert result.needs_staff
    assert stranger.state == State.LOCKED_OUT
    assert "una persona de la clínica" in texts(result).lower()
    # Nothing more works: not the right date now, not the document again.
    for message in ("14/03/1985", "1020304050", "mis citas"):
        result = stranger.send(message)
        assert stranger.snapshot.patient_id is None
        assert result.needs_staff
    patient.refresh_from_db()
    assert patient.whatsapp_id == ANA_WA


def test_it_counts_iso_dates_as_birth_date_misses_not_as_documents(stranger, patient):
    for guess in ("1990-01-01", "1991-02-02"):
        stranger.send("1020304050")
        stranger.send(guess)
    stranger.send("1020304050")
    result = stranger.send("1985-01-01")
    assert stranger.state == State.LOCKED_OUT
    assert result.needs_staff
    assert not Patient.objects.exclude(pk=patient.pk).exists()


def test_it_flags_staff_when_the_patient_has_no_birth_date_on_file(stranger, patient):
    Patient.objects.filter(pk=patient.pk).update(birth_date=None)
    stranger.send("1020304050")
    stranger.send("14/03/1985")  # nothing to check it against: it opens nothing
    result = stranger.send("Ana María Gómez")
    assert result.needs_staff
    assert stranger.snapshot.patient_id is None
    assert "no pude confirmar" in texts(result).lower()


def test_it_does_not_count_unreadable_dates_as_misses(stranger):
    stranger.send("1020304050")
    result = stranger.send("no me acuerdo")
    assert "No entendí la fecha" in texts(result)
    assert not IdentityFailure.objects.exists()


def test_it_remembers_what_was_asked_before_identification(chat, ana_booked):
    result = chat.send("quiero cancelar mi cita")
    assert "documento" in texts(result)
    result = chat.send("1020304050")
    assert chat.state == State.CANCELLING
    assert "¿Quieres cancelar tu cita" in texts(result)


def test_it_books_from_symptoms_written_before_identification(chat):
    chat.send("hola, me duele mucho la muela")
    result = chat.send("1020304050")
    assert chat.state == State.CHOOSING_SLOT
    assert chat.data["specialty"] == "odontologia"
    assert "Gracias, Ana María" in texts(result)


# --- self-registration ----------------------------------------------------------------------


@pytest.fixture
def newcomer(clinic, agenda) -> Chat:
    return Chat(clinic, NEW_WA, conversation_id=888)


def test_it_registers_an_unknown_document(newcomer, clinic):
    newcomer.send("55667788")
    assert newcomer.state == State.VERIFYING  # the same question a known document gets
    newcomer.send("14-03-1990")
    assert newcomer.state == State.REGISTERING_NAME
    result = newcomer.send("pedro")
    assert "nombre completo" in texts(result)
    result = newcomer.send("pedro ruiz gómez")
    assert newcomer.state == State.IDENTIFIED
    assert "Pedro Ruiz" in texts(result)
    created = Patient.objects.get(clinic=clinic, document="55667788")
    assert created.full_name == "Pedro Ruiz Gómez"
    assert created.birth_date == dt.date(1990, 3, 14)
    assert created.whatsapp_id == NEW_WA
    assert newcomer.snapshot.patient_id == created.pk


@pytest.mark.parametrize(
    ("answer", "phrase"),
    [
        ("01/01/2090", "todavía no ha llegado"),
        ("31/02/1990", "no existe"),
        ("14/03/1800", "muy antigua"),
        ("ayer", "No entendí la fecha"),
    ],
)
def test_it_rejects_bad_birth_dates_politely(newcomer, clinic, answer, phrase):
    newcomer.send("55667788")
    result = newcomer.send(answer)
    assert phrase in texts(result)
    assert newcomer.state == State.VERIFYING
    assert not Patient.objects.filter(clinic=clinic, document="55667788").exists()


def test_it_sends_to_the_front_desk_when_self_registration_is_off(newcomer, clinic):
    Clinic.objects.filter(pk=clinic.pk).update(self_registration=False)
    newcomer.clinic.refresh_from_db()
    newcomer.send("55667788")
    result = newcomer.send("14/03/1990")  # asked as for any document: no leak
    assert result.needs_staff
    assert newcomer.state == State.START
    assert "una persona de la clínica" in texts(result).lower()


# --- anywhere ----------------------------------------------------------------------------------

RED_FLAG_STATES = ["start", "identified", "choosing", "confirming", "booked"]


@pytest.mark.parametrize("where", RED_FLAG_STATES)
@pytest.mark.parametrize(
    "message",
    ["me duele el pecho y no puedo respirar", "mi papá se desmayó y no responde"],
)
def test_it_answers_red_flags_first_in_every_state(reach, where, message):
    conversation = reach(where)
    before = conversation.state
    result = conversation.send(message)
    assert result.urgent
    assert conversation.state == before
    assert len(result.replies) == 1
    assert result.replies[0].kind == "text"
    assert "123" in result.replies[0].text


def test_it_answers_red_flags_while_verifying_and_registering(stranger, newcomer):
    stranger.send("1020304050")
    newcomer.send("55667788")
    for conversation in (stranger, newcomer):
        before = conversation.state
        result = conversation.send("creo que me está dando un infarto")
        assert result.urgent
        assert conversation.state == before


@pytest.mark.parametrize("where", ["start", "choosing", "confirming"])
def test_it_explains_what_it_understands_for_unsupported_messages(reach, where):
    conversation = reach(where)
    before = conversation.state
    result = conversation.unsupported()
    assert conversation.state == before
    assert "mensajes de texto" in texts(result)


@pytest.mark.parametrize("message", ["asesor", "quiero hablar con una persona", "un humano"])
def test_it_flags_staff_when_asked_for_a_person(identified_chat, message):
    result = identified_chat.send(message)
    assert result.needs_staff
    assert "persona" in texts(result)


@pytest.mark.parametrize(
    ("message", "phrase"),
    [
        ("¿dónde quedan?", "Calle 100 # 15-20"),
        ("horario", "Lunes a sábado"),
        ("qué debo llevar", "documento de identidad"),
        ("teléfono", "123"),
    ],
)
def test_it_answers_clinic_questions_from_its_data(reach, message, phrase):
    conversation = reach("booked")
    result = conversation.send(message)
    assert phrase in texts(result)
    assert conversation.state == State.BOOKED


def test_it_lists_upcoming_appointments(identified_chat, ana_booked):
    result = identified_chat.send("mis citas")
    assert "Tus próximas citas" in texts(result)
    assert "Dr. Carlos García" in texts(result)


def test_it_cancels_after_confirmation(identified_chat, ana_booked, agenda):
    result = identified_chat.send("cancelar mi cita")
    assert identified_chat.state == State.CANCELLING
    assert [b.id for b in result.replies[-1].buttons] == ["cancel:yes", "cancel:no"]
    result = identified_chat.tap("cancel:yes", "Sí, cancelarla")
    assert identified_chat.state == State.CLOSED
    assert result.closed
    ana_booked.refresh_from_db()
    assert ana_booked.status == AppointmentStatus.CANCELLED
    assert Slot.objects.get(pk=ana_booked.slot_id).status == SlotStatus.FREE


def test_it_lets_the_patient_pick_which_appointment_to_cancel(identified_chat, patient, agenda):
    first = book_for(patient, agenda["general"][5])
    second = book_for(patient, agenda["dental"][0])
    result = identified_chat.send("Cancelar")
    listing = first_list(result)
    assert [row.id for row in listing.rows] == [f"appt:{first.pk}", f"appt:{second.pk}"]
    identified_chat.send("la 2")
    assert identified_chat.data["cancel_id"] == second.pk
    identified_chat.send("no")
    assert identified_chat.state == State.BOOKED
    second.refresh_from_db()
    assert second.status == AppointmentStatus.BOOKED


def test_it_never_cancels_an_appointment_that_is_not_offered(identified_chat, patient, agenda):
    mine = [book_for(patient, agenda["general"][5]), book_for(patient, agenda["dental"][0])]
    other = Patient.objects.create(clinic=patient.clinic, document="79111222", full_name="Luis")
    theirs = book_for(other, agenda["general"][6])
    identified_chat.send("cancelar")
    assert identified_chat.state == State.CANCELLING
    result = identified_chat.tap(f"appt:{theirs.pk}")
    assert "Elige una de tus citas" in texts(result)
    identified_chat.send("sí")
    assert "cancel_id" not in identified_chat.data
    for appointment in [*mine, theirs]:
        appointment.refresh_from_db()
        assert appointment.status == AppointmentStatus.BOOKED


def test_it_reschedules_to_a_slot_of_the_same_specialty(identified_chat, ana_booked, agenda):
    result = identified_chat.send("quiero cambiar mi cita")
    assert identified_chat.state == State.CHOOSING_SLOT
    assert identified_chat.data["reschedule_id"] == ana_booked.pk
    assert identified_chat.data["specialty"] == "medicina-general"
    assert "Vamos a cambiar tu cita" in first_list(result).text
    identified_chat.send("la 1")
    result = identified_chat.send("sí")
    assert identified_chat.state == State.BOOKED
    assert "cita quedó cambiada" in texts(result)
    ana_booked.refresh_from_db()
    assert ana_booked.status == AppointmentStatus.CANCELLED
    moved = Appointment.objects.get(rescheduled_from=ana_booked)
    assert moved.slot_id == agenda["general"][0].pk


def test_it_says_so_when_there_is_nothing_to_cancel(identified_chat):
    result = identified_chat.send("cancelar mi cita")
    assert "No tienes citas próximas" in texts(result)
    assert identified_chat.state == State.IDENTIFIED


@pytest.mark.parametrize("message", ["gracias", "chao", "muchas gracias!"])
def test_it_closes_friendly_and_comes_back_identified(reach, message):
    conversation = reach("booked")
    result = conversation.send(message)
    assert result.closed
    assert conversation.state == State.CLOSED
    assert "Con gusto" in texts(result)
    result = conversation.send("hola")
    assert conversation.state == State.IDENTIFIED
    assert "Hola, Ana María" in texts(result)


def test_it_starts_over_after_closing_when_the_number_is_not_verified(clinic, agenda, patient):
    closed = Chat(clinic, STRANGER_WA)
    closed.snapshot = engine.Snapshot(state=State.CLOSED, patient_id=patient.pk)
    result = closed.send("hola")
    assert closed.state == State.START
    assert closed.snapshot.patient_id is None
    assert "Ana" not in texts(result)


def test_it_releases_the_hold_when_the_patient_says_goodbye(confirming_chat, agenda):
    confirming_chat.send("gracias, chao")
    assert not SlotHold.objects.filter(slot=agenda["general"][0], released_at=None).exists()


def test_it_answers_free_questions_with_the_llm_when_there_is_one(reach, fake_llm):
    conversation = reach("booked")
    conversation.llm = fake_llm
    result = conversation.send("¿el parqueadero es gratis?")
    assert "parqueadero gratuito" in texts(result)
    assert result.llm_prompt_tokens == 120
    assert result.llm_completion_tokens == 30


def test_it_says_it_does_not_know_and_offers_a_person_without_an_llm(reach):
    """Issue 7: an unknown question gets an honest answer, never the help menu."""
    conversation = reach("booked")
    result = conversation.send("¿el parqueadero es gratis?")
    assert "No sé" in texts(result) and "«mis citas»" not in texts(result)
    assert [b.id for b in result.replies[-1].buttons] == ["human:yes", "human:no"]
    conversation.send("sí")
    assert conversation.state == State.WAITING_FOR_STAFF
    assert conversation.data["handoff_reason"] == "unsure"


def test_it_never_calls_the_llm_on_the_deterministic_booking_path(clinic, agenda, patient):
    llm = FakeLLM()
    conversation = Chat(clinic, ANA_WA, llm=llm)
    for message in ("hola", "1020304050", "tengo fiebre y dolor de cabeza", "más", "la 2", "sí"):
        conversation.send(message)
    conversation.send("cancelar mi cita")
    conversation.tap("cancel:yes")
    assert conversation.state == State.CLOSED
    stranger = Chat(clinic, STRANGER_WA, conversation_id=99, llm=llm)
    for message in ("1020304050", "01/01/1990", "14/03/1985", "dónde quedan", "asesor"):
        stranger.send(message)
    assert llm.calls == []


def test_it_does_not_modify_the_snapshot_it_was_given(identified_chat, clinic):
    snapshot = engine.Snapshot(
        state=identified_chat.state,
        data=dict(identified_chat.data),
        patient_id=identified_chat.snapshot.patient_id,
    )
    ctx = engine.Context(
        gateway=OrmGateway(clinic, 1), conversation_id=1, wa_id=ANA_WA, now=timezone.now()
    )
    result = engine.step(snapshot, Inbound(kind="text", text="tengo fiebre"), ctx)
    assert snapshot.state == State.IDENTIFIED
    assert "shown" not in snapshot.data
    assert result.snapshot.state == State.CHOOSING_SLOT


def test_it_survives_a_snapshot_with_stale_data(clinic, agenda, patient):
    broken = Chat(clinic, ANA_WA)
    broken.snapshot = engine.Snapshot(
        state=State.CONFIRMING, data={"held_slot": 999999}, patient_id=patient.pk
    )
    result = broken.send("sí")
    assert result.replies
    assert not Appointment.objects.exists()


# --- WhatsApp limits ----------------------------------------------------------------------------


def test_it_keeps_every_list_and_button_within_whatsapp_limits(
    identified_chat, clinic, patient, agenda
):
    long_name = "Dra. María Fernanda de los Ángeles Rodríguez-Villamizar Echeverri"
    agenda["dentist"].full_name = long_name
    agenda["dentist"].save()
    results = [identified_chat.send("me siento muy raro desde ayer")]
    results.append(identified_chat.tap("spec:odontologia"))
    results.append(identified_chat.send("1"))
    results.append(identified_chat.send("sí"))
    for slot in agenda["general"][:4]:
        book_for(patient, slot)
    results.append(identified_chat.send("cancelar"))
    results.append(identified_chat.send("reprogramar"))
    checked = 0
    for result in results:
        for reply in result.replies:
            assert len(reply.text) <= 1024
            if reply.kind == "list":
                assert 1 <= len(reply.rows) <= 10
                assert len(reply.button) <= 20
                for row in reply.rows:
                    assert len(row.title) <= 24
                    assert len(row.description) <= 72
                    checked += 1
            if reply.kind == "buttons":
                assert 1 <= len(reply.buttons) <= 3
                assert all(len(b.title) <= 20 for b in reply.buttons)
                checked += 1
    assert checked > 10


def test_it_books_when_the_hold_expired_but_nobody_took_the_slot(confirming_chat, agenda):
    slot = agenda["general"][0]
    past = timezone.now() - dt.timedelta(minutes=1)
    SlotHold.objects.filter(slot=slot).update(expires_at=past)
    Slot.objects.filter(pk=slot.pk).update(held_until=past)
    confirming_chat.send("sí")
    assert confirming_chat.state == State.BOOKED
    assert Appointment.objects.filter(slot=slot).exists()


@pytest.mark.parametrize("where", ["identified", "booked"])
@pytest.mark.parametrize("message", ["1", "sí", "ok", "no", "12/05/2026", "👍"])
def test_it_keeps_the_llm_out_of_numbers_and_yes_no_answers(reach, fake_llm, where, message):
    conversation = reach(where)
    conversation.llm = fake_llm
    result = conversation.send(message)
    assert result.replies
    assert fake_llm.calls == []


def test_it_asks_the_llm_only_when_rules_are_unsure_about_real_words(identified_chat, fake_llm):
    identified_chat.llm = fake_llm
    identified_chat.send("me siento muy raro desde ayer")
    assert fake_llm.calls == [("classify", "me siento muy raro desde ayer")]
    assert identified_chat.state == State.CHOOSING_SPECIALTY


def test_it_finds_a_named_time_beyond_the_page_shown(choosing_chat, agenda):
    # Page 1 ends at 11:00 a. m.; 11:20 is the first slot of page 2.
    choosing_chat.send("el de las 11 y 20")
    assert choosing_chat.state == State.CONFIRMING
    assert choosing_chat.data["held_slot"] == agenda["general"][10].pk


def test_it_takes_las_10_as_ten_oclock_even_from_a_later_page(choosing_chat, agenda):
    choosing_chat.send("más")  # page 2 starts at 11:20 a. m.; 10:00 was on page 1
    choosing_chat.send("el de las 10")
    assert choosing_chat.data["held_slot"] == agenda["general"][6].pk


def test_it_settles_for_the_same_hour_when_that_exact_time_is_gone(identified_chat, agenda):
    Slot.objects.filter(pk=agenda["general"][6].pk).update(status="blocked")  # 10:00
    identified_chat.send("tengo fiebre y dolor de cabeza")
    identified_chat.send("el de las 10")
    assert identified_chat.data["held_slot"] == agenda["general"][7].pk  # 10:20


def test_it_says_so_when_no_slot_is_free_at_the_named_time(choosing_chat):
    result = choosing_chat.send("a las 7 de la noche")
    assert choosing_chat.state == State.CHOOSING_SLOT
    assert "No encontré horarios libres a esa hora" in texts(result)


def test_it_moves_the_hold_to_a_named_time_while_confirming(confirming_chat, agenda):
    confirming_chat.send("mejor el de las 9")
    assert confirming_chat.state == State.CONFIRMING
    assert confirming_chat.data["held_slot"] == agenda["general"][3].pk


def test_it_weaves_the_clinics_own_text_into_sentences(reach, clinic):
    Clinic.objects.filter(pk=clinic.pk).update(what_to_bring="Tu documento y el carné de la EPS.")
    conversation = reach("booked")
    conversation.clinic.refresh_from_db()
    result = conversation.send("qué debo llevar")
    assert texts(result) == "🧾 Para tu cita, trae tu documento y el carné de la EPS."


def test_it_drops_the_current_identity_while_another_document_is_verified(identified_chat, clinic):
    Patient.objects.create(
        clinic=clinic,
        document="79111222",
        full_name="Luis Pérez",
        birth_date=dt.date(1970, 1, 2),
        whatsapp_id="573009998877",
    )
    identified_chat.send("79111222")
    assert identified_chat.state == State.VERIFYING
    assert identified_chat.snapshot.patient_id is None
    result = identified_chat.send("mis citas")
    assert "fecha de nacimiento" in texts(result)
    identified_chat.send("1020304050")  # back to her own document: her own number, no questions
    assert identified_chat.state == State.IDENTIFIED


def test_it_reads_an_unknown_button_payload_as_its_title(identified_chat, ana_booked):
    result = identified_chat.tap("REMINDER_CANCEL", "Cancelar mi cita", kind="button")
    assert identified_chat.state == State.CANCELLING
    assert "¿Quieres cancelar tu cita" in texts(result)


# --- issue 7: after "quiero hablar con una persona" the bot stops steering ------------------


def test_it_hands_over_to_a_person_and_only_answers_red_flags_then(chat, clinic):
    chat.send("1020304050")
    result = chat.send("quiero hablar con una persona")
    assert result.needs_staff and result.handoff_reason == "asked_for_person"
    assert "persona" in texts(result)
    assert chat.state == State.WAITING_FOR_STAFF
    again = chat.send("hola? me duele la muela")
    assert "fila" in texts(again)  # told once that they are in the queue…
    assert chat.send("tengo fiebre").replies == []  # …and then nothing steers the chat
    assert chat.send("1").replies == []
    emergency = chat.send("me duele mucho el pecho y no puedo respirar")
    assert emergency.urgent and "123" in texts(emergency)
    assert chat.state == State.WAITING_FOR_STAFF
    assert chat.data["handoff_reason"] == "asked_for_person"  # the first reason stays


def test_it_mirrors_the_handoff_reason_on_the_conversation_and_clears_it_on_hand_back(chat, clinic):
    chat.send("1020304050")
    chat.send("asesor")
    conversation = Conversation.objects.create(
        clinic=clinic, wa_id=ANA_WA, context=chat.data, needs_staff=True
    )
    conversation.refresh_from_db()
    assert conversation.handoff_reason == "asked_for_person"
    resumed = engine.resume_after_staff(chat.snapshot)
    assert resumed.state == State.IDENTIFIED and "handoff_reason" not in resumed.data
    conversation.context, conversation.needs_staff = resumed.data, False
    conversation.save(update_fields=["context", "needs_staff"])
    conversation.refresh_from_db()
    assert conversation.handoff_reason == ""
