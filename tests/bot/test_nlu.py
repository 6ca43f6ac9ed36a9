"""How the bot reads what patients write (bot.nlu): pure functions, no database."""

import datetime as dt

import pytest

from bot import nlu
from bot.nlu import DateProblem, Intent, ShownTime

TODAY = dt.date(2026, 11, 25)

# Ten shown slots: 8:00, 8:20 … like a morning agenda, plus afternoon times.
TIMES = [
    ShownTime(8, 0),
    ShownTime(8, 20),
    ShownTime(8, 40),
    ShownTime(9, 0),
    ShownTime(10, 0),
    ShownTime(10, 30),
    ShownTime(14, 0),
    ShownTime(15, 0),
    ShownTime(15, 20),
    ShownTime(16, 40),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1020304050", "1020304050"),
        ("1.020.304.050", "1020304050"),
        ("1 020 304 050", "1020304050"),
        ("CC 1020304050", "1020304050"),
        ("cc1020304050", "1020304050"),
        ("C.C. 1020304050", "1020304050"),
        ("mi cédula es 1020304050", "1020304050"),
        ("12345678", "12345678"),
        ("123456789012345", "123456789012345"),
    ],
)
def test_it_reads_documents_as_people_write_them(text, expected):
    assert nlu.parse_document(text).document == expected


@pytest.mark.parametrize("text", ["1234567", "10203A4050", "1234567890123456", "12-34-56"])
def test_it_flags_failed_document_attempts(text):
    result = nlu.parse_document(text)
    assert result.document is None
    assert result.invalid


@pytest.mark.parametrize(
    "text",
    ["hola", "buenos días", "quiero una cita", "tengo 2 hijos", "", "1985-03-14", "14.03.1985"],
)
def test_it_ignores_text_without_a_document(text):
    result = nlu.parse_document(text)
    assert result.document is None
    assert not result.invalid


@pytest.mark.parametrize(
    "text",
    [
        "14/03/1985",
        "14-03-1985",
        "1985-03-14",
        "14.03.1985",
        "14 de marzo de 1985",
        "14 marzo 1985",
        "14 de Marzo del 1985",
        "marzo 14 de 1985",
        "14 de marso de 1985",
        "nací el 14/03/1985",
        "14/03/85",
    ],
)
def test_it_reads_birth_dates(text):
    assert nlu.parse_birth_date(text, TODAY).date == dt.date(1985, 3, 14)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("01/01/2030", DateProblem.FUTURE),
        ("31/02/1990", DateProblem.IMPOSSIBLE),
        ("14/03/1850", DateProblem.TOO_OLD),
        ("no me acuerdo", DateProblem.NOT_A_DATE),
        ("1985", DateProblem.INCOMPLETE),
    ],
)
def test_it_rejects_bad_birth_dates(text, problem):
    result = nlu.parse_birth_date(text, TODAY)
    assert result.date is None
    assert result.problem == problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ana María Gómez", "Ana María Gómez"),
        ("ana maría gómez", "Ana María Gómez"),
        ("Me llamo Pedro Ruiz", "Pedro Ruiz"),
        ("JUAN PÉREZ", "Juan Pérez"),
    ],
)
def test_it_reads_full_names(text, expected):
    assert nlu.parse_full_name(text) == expected


@pytest.mark.parametrize("text", ["Ana", "1020304050", "ana123 gomez", "", "?? !!"])
def test_it_rejects_implausible_names(text):
    assert nlu.parse_full_name(text) is None


@pytest.mark.parametrize(
    ("full", "greeting"),
    [("Ana María Gómez", "Ana María"), ("Pedro Ruiz", "Pedro"), ("Luz", "Luz")],
)
def test_it_greets_by_first_names(full, greeting):
    assert nlu.first_names(full) == greeting


@pytest.mark.parametrize(
    "text",
    [
        "sí",
        "si",
        "Si",
        "SI",
        "sii",
        "si dale",
        "Sí, confirmar",
        "dale",
        "confirmo",
        "confimo",
        "ok",
        "OK 👍",
        "👍",
        "listo",
        "de una",
        "bueno",
        "perfecto",
        "claro que sí",
        "está bien",
    ],
)
def test_it_understands_yes(text):
    assert nlu.is_yes(text)
    assert not nlu.is_no(text)


@pytest.mark.parametrize(
    "text", ["no", "No", "NO", "no gracias", "mejor otra", "otra hora", "mejor no", "👎", "nop"]
)
def test_it_understands_no(text):
    assert nlu.is_no(text)
    assert not nlu.is_yes(text)


@pytest.mark.parametrize("text", ["mi nombre", "tal vez", "¿a qué hora es?", ""])
def test_it_reads_neither_yes_nor_no(text):
    assert not nlu.is_yes(text)
    assert not nlu.is_no(text)


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("1", 0),
        ("3", 2),
        ("10", 9),
        ("la 3", 2),
        ("el 3", 2),
        ("La 3", 2),
        ("opción 4", 3),
        ("#2", 1),
        ("la tercera", 2),
        ("el tercero", 2),
        ("la terecra", 2),
        ("la primera", 0),
        ("el último", 9),
        ("tres", 2),
        ("quiero la 5 por favor", 4),
        ("el de las 10", 4),
        ("la de las 10", 4),
        ("10:30", 5),
        ("a las 8:20", 1),
        ("la de las 3 de la tarde", 7),
        ("las 3", 7),
        ("3 pm", 7),
        ("3 p. m.", 7),
        ("2:00 p.m.", 6),
        ("a las 4 y 40", 9),
        ("las 9 de la mañana", 3),
        ("3️⃣", 2),
        ("LA 3!!", 2),
    ],
)
def test_it_reads_choices_from_a_shown_list(text, index):
    assert nlu.parse_choice(text, TIMES) == index


@pytest.mark.parametrize(
    "text", ["11", "0", "la 12", "tengo 3 hijos", "a las 7", "hola", "1020304050", "más"]
)
def test_it_refuses_choices_that_are_not_shown(text):
    assert nlu.parse_choice(text, TIMES) is None


@pytest.mark.parametrize(
    "text",
    [
        "más",
        "mas",
        "MÁS",
        "siguiente",
        "siguente",
        "otras",
        "ver más",
        "más opciones",
        "ninguna me sirve",
    ],
)
def test_it_understands_next_page(text):
    assert nlu.wants_next_page(text)


@pytest.mark.parametrize("text", ["anterior", "atrás", "volver"])
def test_it_understands_previous_page(text):
    assert nlu.wants_previous_page(text)
    assert not nlu.wants_next_page(text)


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("asesor", Intent.HUMAN),
        ("quiero hablar con una persona", Intent.HUMAN),
        ("un humano por favor", Intent.HUMAN),
        ("cancelar mi cita", Intent.CANCEL),
        ("Cancelar", Intent.CANCEL),
        ("quiero cancelar", Intent.CANCEL),
        ("reprogramar", Intent.RESCHEDULE),
        ("cambiar mi cita", Intent.RESCHEDULE),
        ("mis citas", Intent.MY_APPOINTMENTS),
        ("¿cuándo es mi cita?", Intent.MY_APPOINTMENTS),
        ("quiero agendar una cita", Intent.BOOK),
        ("¿Dónde quedan?", Intent.ADDRESS),
        ("cual es la dirección", Intent.ADDRESS),
        ("horario", Intent.HOURS),
        ("¿a qué hora abren?", Intent.HOURS),
        ("qué debo llevar", Intent.WHAT_TO_BRING),
        ("teléfono", Intent.PHONE),
        ("gracias", Intent.GOODBYE),
        ("muchas gracias!", Intent.GOODBYE),
        ("chao", Intent.GOODBYE),
        ("no gracias", Intent.GOODBYE),
        ("hola", Intent.GREETING),
        ("buenos días", Intent.GREETING),
        ("menú", Intent.MENU),
    ],
)
def test_it_detects_global_intents(text, intent):
    assert nlu.detect_intent(text) == intent


@pytest.mark.parametrize(
    "text", ["tengo fiebre y dolor de cabeza", "me duele la muela", "1020304050", "sí"]
)
def test_it_finds_no_intent_in_symptoms_or_answers(text):
    assert nlu.detect_intent(text) is None


NAMES = {
    "medicina-general": "Medicina General",
    "odontologia": "Odontología",
    "dermatologia": "Dermatología",
    "pediatria": "Pediatría",
}


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("odontología", "odontologia"),
        ("quiero cita con el odontólogo", "odontologia"),
        ("DERMATOLOGIA", "dermatologia"),
        ("pediatra para mi hijo", "pediatria"),
        ("medicina general", "medicina-general"),
        ("me duele la muela", None),
    ],
)
def test_it_matches_specialty_names_typed_directly(text, slug):
    assert nlu.match_specialty_name(text, NAMES) == slug


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("el de las 10", nlu.TimeRequest(10, None, None)),
        ("10:30", nlu.TimeRequest(10, 30, None)),
        ("la de las 3 de la tarde", nlu.TimeRequest(3, None, True)),
        ("3 pm", nlu.TimeRequest(3, None, True)),
        ("a las 9 y media de la mañana", nlu.TimeRequest(9, 30, False)),
        ("a la una", nlu.TimeRequest(1, None, None)),
    ],
)
def test_it_reads_named_times(text, request_):
    assert nlu.parse_time(text) == request_


@pytest.mark.parametrize("text", ["10", "la 3", "la tercera", "más", "25:99"])
def test_it_reads_no_time_in_positions_or_words(text):
    assert nlu.parse_time(text) is None


# --- issue 7: when, which doctor, birth dates as people write them, names vs symptoms --------

WEDNESDAY = dt.date(2026, 12, 2)
D = dt.date
T = dt.time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "el viernes en la tarde",
            dict(
                date_from=D(2026, 12, 4),
                date_to=D(2026, 12, 4),
                time_from=T(12),
                time_to=T(18),
                part_of_day=nlu.PartOfDay.AFTERNOON,
            ),
        ),
        ("mañana", dict(date_from=D(2026, 12, 3), date_to=D(2026, 12, 3))),
        ("hoy", dict(date_from=WEDNESDAY, date_to=WEDNESDAY)),
        ("pasado mañana", dict(date_from=D(2026, 12, 4), date_to=D(2026, 12, 4))),
        (
            "el martes 8 a las 3pm",
            dict(
                date_from=D(2026, 12, 8), date_to=D(2026, 12, 8), at=nlu.TimeRequest(3, None, True)
            ),
        ),
        ("la próxima semana", dict(date_from=D(2026, 12, 7), date_to=D(2026, 12, 13))),
        ("la semana que viene", dict(date_from=D(2026, 12, 7), date_to=D(2026, 12, 13))),
        ("lo más pronto posible", dict(earliest=True)),
        ("la más temprana", dict(earliest=True)),
        ("no puedo ese día", dict(not_that_day=True)),
        ("después de las 5", dict(time_from=T(17))),
        ("a partir de las 2:30 pm", dict(time_from=T(14, 30))),
        ("antes de las 10", dict(time_to=T(10))),
        ("entre las 2 y las 4", dict(time_from=T(14), time_to=T(16))),
        (
            "mañana en la mañana",
            dict(
                date_from=D(2026, 12, 3),
                date_to=D(2026, 12, 3),
                time_from=T(0),
                time_to=T(12),
                part_of_day=nlu.PartOfDay.MORNING,
            ),
        ),
        ("el 15 de diciembre", dict(date_from=D(2026, 12, 15), date_to=D(2026, 12, 15))),
        ("diciembre 15", dict(date_from=D(2026, 12, 15), date_to=D(2026, 12, 15))),
        ("15/12", dict(date_from=D(2026, 12, 15), date_to=D(2026, 12, 15))),
        ("el 1 de enero", dict(date_from=D(2027, 1, 1), date_to=D(2027, 1, 1))),
        ("el fin de semana", dict(date_from=D(2026, 12, 5), date_to=D(2026, 12, 6))),
        ("los martes o los jueves", dict(weekdays=frozenset({1, 3}))),
        ("a las 9", dict(at=nlu.TimeRequest(9, None, False))),
        ("a las 3 de la tarde", dict(at=nlu.TimeRequest(3, None, True))),
        ("a las 10 y media", dict(at=nlu.TimeRequest(10, 30, False))),
        (
            "quiero cambiar la cita para el viernes en la tarde",
            dict(
                date_from=D(2026, 12, 4),
                date_to=D(2026, 12, 4),
                time_from=T(12),
                time_to=T(18),
                part_of_day=nlu.PartOfDay.AFTERNOON,
            ),
        ),
    ],
)
def test_it_understands_when_the_patient_wants_to_come(text, expected):
    assert nlu.parse_when(text, WEDNESDAY) == nlu.When(**expected)


@pytest.mark.parametrize(
    "text",
    ["8", "la 8", "el 8", "buenas tardes", "tengo fiebre desde el lunes", "sí", "más", ""],
)
def test_it_finds_no_date_in_rows_greetings_or_symptom_histories(text):
    assert nlu.parse_when(text, WEDNESDAY).empty


DOCTORS = {
    1: "Dra. Luisa Fernanda Rojas",
    2: "Dr. Carlos García",
    3: "Dra. Laura Méndez",
    4: "Dr. Luis Rojas",
}


@pytest.mark.parametrize(
    ("text", "doctor_id"),
    [
        ("con la dra Rojas", 1),
        ("con el doctor rojas", 4),
        ("con la dra luisa a las 9", 1),
        ("con el dr luis", 4),
        ("con el doctor Garcia", 2),
        ("con el DOCTOR GARCÍA", 2),
        ("quiero cita con la dra mendes", 3),  # one letter off
        ("con Laura Méndez por favor", 3),
    ],
)
def test_it_finds_the_named_doctor_fuzzily(text, doctor_id):
    assert nlu.match_doctor(text, DOCTORS).doctor_id == doctor_id


def test_it_asks_between_doctors_it_cannot_tell_apart_and_knows_the_previous_one():
    assert nlu.match_doctor("con rojas", DOCTORS).candidates == (1, 4)
    assert nlu.match_doctor("con el doctor de la otra vez", DOCTORS).previous
    assert nlu.match_doctor("con la misma doctora de la vez pasada", DOCTORS).previous
    unknown = nlu.match_doctor("con la dra Pérez", DOCTORS)
    assert unknown.doctor_id is None and unknown.titled and unknown.said == "perez"
    for text in ("con fiebre y tos", "quiero el dermatólogo", "con mi hijo", "hola"):
        assert nlu.match_doctor(text, DOCTORS) == nlu.DoctorRequest()


@pytest.mark.parametrize(
    "text",
    [
        "14 de marzo del 85",
        "14/3/85",
        "14-03-1985",
        "marzo 14 1985",
        "marzo 14 de 1985",
        "14 marzo 85",
        "14 03 1985",
        "03/14/1985",
        "nací el 14 de marzo de 1985",
    ],
)
def test_it_reads_birth_dates_in_the_forms_people_write(text):
    assert nlu.parse_birth_date(text, WEDNESDAY).date == dt.date(1985, 3, 14)


def test_it_asks_back_when_a_birth_date_is_incomplete_or_ambiguous():
    for text in ("14 de marzo", "marzo del 85", "1985"):
        assert nlu.parse_birth_date(text, WEDNESDAY).problem == DateProblem.INCOMPLETE
    both = nlu.parse_birth_date("3/4/26", WEDNESDAY)
    assert both.problem == DateProblem.AMBIGUOUS
    assert both.candidates == (dt.date(2026, 4, 3), dt.date(1926, 4, 3))


@pytest.mark.parametrize(
    "text", ["me duele el oído y me zumba", "tengo fiebre", "me duele la muela", "quiero una cita"]
)
def test_it_never_takes_a_symptom_sentence_for_a_name(text):
    assert nlu.parse_full_name(text) is None
    assert nlu.looks_like_symptoms(text)


@pytest.mark.parametrize(
    "text", ["María de los Ángeles Pérez", "Juan de la Cruz Rojas", "Ana María Gómez"]
)
def test_it_still_accepts_names_with_particles(text):
    assert nlu.parse_full_name(text) == text
    assert not nlu.looks_like_symptoms(text)


FAQ = [
    nlu.FaqCandidate(
        1, "¿Cuánto cuesta la consulta?", ("precio", "cuanto cuesta", "valor", "costo")
    ),
    nlu.FaqCandidate(2, "¿Qué EPS reciben?", ("eps", "seguro", "prepagada", "sanitas")),
    nlu.FaqCandidate(3, "¿Tienen parqueadero?", ("parqueadero", "parqueo", "donde dejo el carro")),
]


@pytest.mark.parametrize(
    ("text", "entry_id"),
    [
        ("¿cuánto cuesta la consulta?", 1),
        ("qué precio tiene", 1),
        ("¿reciben Sanitas?", 2),
        ("atienden por prepagada?", 2),
        ("hay parqueadero?", 3),
        ("dónde dejo el carro", 3),
        ("tienen parqeadero", 3),  # a typo
    ],
)
def test_it_finds_the_faq_entry_a_question_is_about(text, entry_id):
    assert nlu.match_faq(text, FAQ) == entry_id


@pytest.mark.parametrize("text", ["¿venden helado?", "me duele la muela", "1", "sí"])
def test_it_finds_no_faq_entry_for_other_things(text):
    assert nlu.match_faq(text, FAQ) is None


def test_it_tells_a_question_from_a_statement():
    assert nlu.is_question("¿venden helado?")
    assert nlu.is_question("tienen pediatra los sábados")
    assert not nlu.is_question("me duele la muela")
