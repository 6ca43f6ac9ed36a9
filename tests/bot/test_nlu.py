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
