"""The Spanish conversation set (issue 7): how patients really write, with the outcome each
conversation must reach. Played by tests/bot/test_conversations.py through
tests/bot/conversation_runner.py, on the demo clinic (seed_demo's specialties, doctors and FAQ;
slots every day 8–12 and 14–18, every 30 minutes, from today on).

Ana María Gómez (CC 1020304050, born 14/03/1985) writes from her own number unless a
conversation says otherwise. Days are counted from the day the test runs; texts that name a
date are functions of the world.
"""

import datetime as dt

from tests.bot.conversation_runner import (
    NEW_NUMBER,
    Booked,
    BookedRow,
    CancelledOne,
    Conversation,
    DoesNotSay,
    Emergency,
    HandedOff,
    InState,
    Msg,
    NothingBooked,
    Registered,
    Says,
    Silent,
    World,
)

DOC = "1020304050"
STRANGER = "573119998877"
MONTH_NAMES = [
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
]
WEEKDAY_NAMES = ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"]


def in_days(world: World, days: int) -> dt.date:
    return world.today + dt.timedelta(days=days)


def day_and_month(days: int):
    """ "el 7 de diciembre", `days` from the day the test runs."""

    def text(world: World) -> str:
        day = in_days(world, days)
        return f"mejor el {day.day} de {MONTH_NAMES[day.month - 1]}"

    return text


def weekday_and_number(days: int, rest: str):
    """ "el martes 8 a las 3pm", `days` from the day the test runs."""

    def text(world: World) -> str:
        day = in_days(world, days)
        return f"el {WEEKDAY_NAMES[day.weekday()]} {day.day} {rest}"

    return text


def next_week_days(world: World) -> tuple[int, int]:
    monday = 7 - world.today.weekday()
    return monday, monday + 6


CONVERSATIONS = [
    # --- dates and times ----------------------------------------------------------------------
    Conversation(
        "doc and symptoms, then friday afternoon",
        [f"{DOC} me duele una muela", "el viernes en la tarde", "1", "sí"],
        expect=(Booked(specialty="odontologia", weekday=4, after=12, before=18),),
        topic="dates",
    ),
    Conversation(
        "friday afternoon in the first message",
        [
            Msg(
                f"{DOC}, me duele una muela, ¿tienen el viernes en la tarde?",
                (Says("viernes"), Says("en la tarde")),
            ),
            "1",
            "sí",
        ],
        expect=(Booked(specialty="odontologia", weekday=4, after=12, before=18),),
        topic="dates",
        booking="doc+symptoms",
    ),
    Conversation(
        "tomorrow while choosing",
        [f"{DOC} tengo gripa y fiebre", Msg("mañana", (Says("te muestro citas"),)), "2", "sí"],
        expect=(Booked(specialty="medicina-general", day=1),),
        topic="dates",
    ),
    Conversation(
        "weekday and day number at 3pm holds that slot",
        [
            f"{DOC} me duele la muela",
            Msg(weekday_and_number(3, "a las 3pm"), (InState("CONFIRMING"),)),
            "sí",
        ],
        expect=(Booked(specialty="odontologia", day=3, hour=15, minute=0),),
        topic="dates",
    ),
    Conversation(
        "next week",
        [f"{DOC} tengo acné y manchas en la piel", "la próxima semana", "1", "sí"],
        expect=(Booked(specialty="dermatologia"),),
        topic="dates",
    ),
    Conversation(
        "as soon as possible with the symptoms",
        [f"{DOC} me duele una muela, lo más pronto posible", "1", "sí"],
        expect=(Booked(specialty="odontologia", earliest=True),),
        topic="dates",
        booking="doc+symptoms",
    ),
    Conversation(
        "the earliest one while choosing",
        [
            f"{DOC} me duele una muela",
            "el viernes",
            Msg("la más temprana", (InState("CONFIRMING"),)),
            "sí",
        ],
        expect=(Booked(specialty="odontologia", earliest=True),),
        topic="dates",
    ),
    Conversation(
        "cannot that day",
        [f"{DOC} tengo gripa", "mañana", Msg("no puedo ese día", (Says("te muestro"),)), "1", "sí"],
        expect=(Booked(specialty="medicina-general", day=2),),
        topic="dates",
    ),
    Conversation(
        "after five",
        [
            f"{DOC} tengo tos y fiebre",
            Msg("después de las 5", (Says("despues de las"),)),
            "1",
            "sí",
        ],
        expect=(Booked(specialty="medicina-general", after=17),),
        topic="dates",
    ),
    Conversation(
        "before ten",
        [f"{DOC} me duele la muela", "antes de las 10", "1", "sí"],
        expect=(Booked(specialty="odontologia", before=10),),
        topic="dates",
    ),
    Conversation(
        "the day after tomorrow in the morning",
        [f"{DOC} me duele el oído", "pasado mañana en la mañana", "1", "sí"],
        expect=(Booked(specialty="otorrinolaringologia", day=2, before=12),),
        topic="dates",
    ),
    Conversation(
        "between two and four",
        [f"{DOC} me duele la muela", "entre las 2 y las 4", "1", "sí"],
        expect=(Booked(specialty="odontologia", after=14, before=16),),
        topic="dates",
    ),
    Conversation(
        "a date with day and month",
        [f"{DOC} tengo gripa", Msg(day_and_month(5)), "1", "sí"],
        expect=(Booked(specialty="medicina-general", day=5),),
        topic="dates",
    ),
    Conversation(
        "the weekend",
        [f"{DOC} tengo gripa", "el fin de semana", "1", "sí"],
        expect=(Booked(specialty="medicina-general", weekdays=(5, 6)),),
        topic="dates",
    ),
    Conversation(
        "tuesdays in the morning",
        [f"{DOC} me duele la muela", "los martes en la mañana", "1", "sí"],
        expect=(Booked(specialty="odontologia", weekday=1, before=12),),
        topic="dates",
    ),
    Conversation(
        "tomorrow at ten holds it",
        [f"{DOC} me duele la muela", Msg("mañana a las 10", (InState("CONFIRMING"),)), "sí"],
        expect=(Booked(specialty="odontologia", day=1, hour=10, minute=0),),
        topic="dates",
    ),
    Conversation(
        "friday, no, better monday",
        [f"{DOC} me duele la muela", "el viernes", "mejor el lunes", "1", "sí"],
        expect=(Booked(specialty="odontologia", weekday=0),),
        topic="dates",
    ),
    Conversation(
        "a holiday tomorrow is never offered",
        [f"{DOC} tengo gripa", Msg("mañana", (Says("no encontre citas"),)), "1", "sí"],
        expect=(Booked(specialty="medicina-general", not_day=1),),
        setup=("holiday_tomorrow",),
        topic="dates",
    ),
    Conversation(
        "her own appointment's time is never offered",
        [f"{DOC} me duele la muela", "pasado mañana a las 10", "1", "sí"],
        expect=(Booked(specialty="odontologia", not_hour=10),),
        setup=("upcoming_general",),
        topic="dates",
    ),
    Conversation(
        "a day asked before the symptoms still holds",
        [
            DOC,
            Msg("quiero una cita para el viernes", (Says("sintomas"),)),
            "me duele una muela",
            "1",
            "sí",
        ],
        expect=(Booked(specialty="odontologia", weekday=4),),
        topic="dates",
        booking="returning",
    ),
    Conversation(
        "first thing in the morning in three days",
        [f"{DOC} me duele la muela", "en 3 días a primera hora", "1", "sí"],
        expect=(Booked(specialty="odontologia", day=3, before=12),),
        topic="dates",
    ),
    Conversation(
        "after lunch",
        [f"{DOC} tengo gripa", "después del almuerzo", "1", "sí"],
        expect=(Booked(specialty="medicina-general", after=12, before=18),),
        topic="dates",
    ),
    Conversation(
        "a specialty and a day in the booking request",
        [DOC, "necesito una cita de odontología para mañana en la tarde", "1", "sí"],
        expect=(Booked(specialty="odontologia", day=1, after=12),),
        topic="dates",
        booking="returning",
    ),
    # --- doctors --------------------------------------------------------------------------------
    Conversation(
        "with dra rojas",
        [
            f"{DOC} me duele una muela",
            Msg("con la dra Rojas", (Says("con la Dra. Diana Marcela Rojas"),)),
            "1",
            "sí",
        ],
        expect=(Booked(doctor="Diana Marcela Rojas"),),
        topic="doctors",
    ),
    Conversation(
        "with dra luisa at nine is luisa's nine",
        [f"{DOC} tengo gripa", Msg("con la dra luisa a las 9", (InState("CONFIRMING"),)), "sí"],
        expect=(Booked(doctor="Luisa Fernanda", hour=9, minute=0),),
        topic="doctors",
    ),
    Conversation(
        "with dra luisa at nine when hers is taken tomorrow",
        [f"{DOC} tengo gripa", "con la dra luisa a las 9", "sí"],
        expect=(Booked(doctor="Luisa Fernanda", hour=9, minute=0, not_day=1),),
        setup=("luisa_nine_taken_tomorrow",),
        topic="doctors",
    ),
    Conversation(
        "the doctor of last time",
        [
            f"{DOC} me duele una muela",
            Msg("con el doctor de la otra vez", (Says("Diana Marcela Rojas"),)),
            "1",
            "sí",
        ],
        expect=(Booked(doctor="Diana Marcela Rojas"),),
        setup=("past_dentist",),
        topic="doctors",
    ),
    Conversation(
        "a doctor in capitals without accents",
        [f"{DOC} me duele una muela", "con el DOCTOR HERRERA", "1", "sí"],
        expect=(Booked(doctor="Herrera Castaño"),),
        topic="doctors",
    ),
    Conversation(
        "a doctor the clinic doesn't have",
        [f"{DOC} me duele una muela", Msg("con la dra Pérez", (Says("no encontre"),)), "1", "sí"],
        expect=(Booked(specialty="odontologia"),),
        topic="doctors",
    ),
    Conversation(
        "an appointment with a doctor, no symptoms",
        ["1020304050", "quiero una cita con la dra Zuluaga", "1", "sí"],
        expect=(Booked(doctor="Zuluaga", specialty="dermatologia"),),
        topic="doctors",
        booking="returning",
    ),
    Conversation(
        "doctor and day in one message",
        [f"{DOC} me duele la muela", "con la dra Rojas el viernes en la tarde", "1", "sí"],
        expect=(Booked(doctor="Diana Marcela Rojas", weekday=4, after=12, before=18),),
        topic="doctors",
    ),
    Conversation(
        "the child's doctor by name",
        [
            Msg(f"{DOC} mi hijo tiene fiebre y tos", (Says("Para quién"),)),
            "otra persona",
            "1122334455",
            "05/05/2018",
            "Tomás Gómez Pardo",
            "con el dr ospina",
            "1",
            "sí",
        ],
        expect=(Booked(doctor="Ospina", specialty="pediatria", patient="Tomás Gómez"),),
        topic="doctors",
    ),
    Conversation(
        "row eight is the eighth row",
        [f"{DOC} tengo gripa", "8", "sí"],
        expect=(BookedRow(8),),
        topic="doctors",
    ),
    Conversation(
        "at eight is eight o'clock",
        [f"{DOC} tengo gripa", Msg("a las 8", (InState("CONFIRMING"),)), "sí"],
        expect=(Booked(hour=8, minute=0),),
        topic="doctors",
    ),
    # --- changes of course ------------------------------------------------------------------------
    Conversation(
        "better dermatology while choosing",
        [f"{DOC} me duele la muela", "mejor dermatología", "1", "sí"],
        expect=(Booked(specialty="dermatologia"),),
        topic="changes",
    ),
    Conversation(
        "new symptoms while choosing restart triage",
        [f"{DOC} me duele la muela", "ah no, es que me duele mucho el oído y me zumba", "1", "sí"],
        expect=(Booked(specialty="otorrinolaringologia"),),
        topic="changes",
    ),
    Conversation(
        "another day while confirming",
        [f"{DOC} me duele la muela", "1", "no, mejor el viernes", "1", "sí"],
        expect=(Booked(specialty="odontologia", weekday=4),),
        topic="changes",
    ),
    Conversation(
        "new symptoms while confirming",
        [f"{DOC} me duele la muela", "1", "espera, mejor por la picazón en la piel", "1", "sí"],
        expect=(Booked(specialty="dermatologia"),),
        topic="changes",
    ),
    Conversation(
        "cancel the pediatrics one",
        [DOC, Msg("cancela la de pediatría", (Says("Natalia"),)), "sí"],
        expect=(CancelledOne("Natalia Restrepo"),),
        setup=("upcoming_two",),
        topic="changes",
    ),
    Conversation(
        "cancel the child's one",
        [DOC, "quiero cancelar la cita del niño", "sí"],
        expect=(CancelledOne("Natalia Restrepo"),),
        setup=("upcoming_two",),
        topic="changes",
    ),
    Conversation(
        "cancel the dermatology one after the list",
        [DOC, "cancelar una cita", "la de dermatología", "sí"],
        expect=(CancelledOne("Zuluaga"),),
        setup=("upcoming_two",),
        topic="changes",
    ),
    Conversation(
        "move the appointment to friday afternoon",
        [DOC, "quiero cambiar la cita para el viernes en la tarde", "1", "sí"],
        expect=(Booked(rescheduled=True, weekday=4, after=12, before=18, doctor="Rodríguez"),),
        setup=("upcoming_general",),
        topic="changes",
    ),
    Conversation(
        "move the appointment to tomorrow",
        [DOC, "necesito reprogramar mi cita", "mañana", "1", "sí"],
        expect=(Booked(rescheduled=True, day=1),),
        setup=("upcoming_general",),
        topic="changes",
    ),
    Conversation(
        "more times then pick",
        [f"{DOC} tengo gripa", "más", "3", "sí"],
        expect=(BookedRow(3),),
        topic="changes",
    ),
    # --- questions about the clinic -------------------------------------------------------------
    Conversation(
        "price",
        [DOC, Msg("¿cuánto cuesta la consulta?", (Says("$80.000"),))],
        expect=(NothingBooked(),),
        topic="faq",
    ),
    Conversation(
        "insurance",
        [DOC, Msg("¿reciben Sanitas?", (Says("Sanitas"), DoesNotSay("mis citas")))],
        topic="faq",
    ),
    Conversation(
        "parking before identifying",
        [Msg("hola, ¿tienen parqueadero?", (Says("sotano"), Says("documento")))],
        topic="faq",
    ),
    Conversation(
        "what to bring",
        [DOC, Msg("¿qué debo llevar a la cita?", (Says("documento de identidad"),))],
        topic="faq",
    ),
    Conversation(
        "how to get there",
        [DOC, Msg("¿cómo llego en transmilenio?", (Says("Calle 72"),))],
        topic="faq",
    ),
    Conversation(
        "payment methods",
        [DOC, Msg("¿puedo pagar con nequi?", (Says("Nequi"),))],
        topic="faq",
    ),
    Conversation(
        "an unknown question gets an honest answer and a person",
        [
            DOC,
            Msg("¿venden helado en la cafetería?", (Says("no sé"), DoesNotSay("mis citas"))),
            Msg("sí", (Says("persona"),)),
        ],
        expect=(HandedOff("unsure"), InState("WAITING_FOR_STAFF")),
        topic="faq",
    ),
    Conversation(
        "a question while choosing keeps the list",
        [f"{DOC} me duele la muela", Msg("¿cuánto vale?", (Says("$80.000"),)), "1", "sí"],
        expect=(Booked(specialty="odontologia"),),
        topic="faq",
    ),
    # --- birth dates ----------------------------------------------------------------------------
    *[
        Conversation(
            f"verifying with {written}",
            [DOC, written, "me duele la muela", "1", "sí"],
            expect=(Booked(specialty="odontologia"),),
            wa_id=STRANGER,
            topic="birth dates",
        )
        for written in (
            "14 de marzo del 85",
            "14/3/85",
            "14-03-1985",
            "marzo 14 1985",
            "14 del 3 del 85",
            "14031985",
        )
    ],
    Conversation(
        "verifying without the year",
        [DOC, Msg("14 de marzo", (Says("año"),)), "14/03/1985", Msg("hola", (Says("Ana María"),))],
        expect=(InState("IDENTIFIED"),),
        wa_id=STRANGER,
        topic="birth dates",
    ),
    Conversation(
        "registering with a written date",
        ["5566778899", "12 de octubre del 90", "Pedro Pérez Gómez"],
        expect=(Registered("Pedro Pérez Gómez", dt.date(1990, 10, 12)),),
        wa_id=NEW_NUMBER,
        topic="birth dates",
    ),
    Conversation(
        "registering with a two-century year",
        [
            "5566778899",
            Msg("7/5/26", (Says("1926"), Says("2026"))),
            "7/5/2026",
            "Sofía Gómez Ruiz",
        ],
        expect=(Registered("Sofía Gómez Ruiz", dt.date(2026, 5, 7)),),
        wa_id=NEW_NUMBER,
        topic="birth dates",
    ),
    # --- red flags ------------------------------------------------------------------------------
    Conversation(
        "chest pain",
        [DOC, Msg("me duele el pecho", (Emergency(),))],
        expect=(NothingBooked(),),
        topic="red flags",
    ),
    Conversation(
        "chest then left arm, split",
        [
            DOC,
            Msg("tengo una molestia en el pecho desde hace rato", ()),
            Msg("y se me duerme el brazo izquierdo", (Emergency(),)),
        ],
        topic="red flags",
    ),
    Conversation(
        "chest then cold sweat, split",
        [DOC, "siento una presión rara en el pecho", Msg("y estoy sudando frío", (Emergency(),))],
        topic="red flags",
    ),
    Conversation(
        "an overdose in everyday words",
        [Msg("me tomé todo el frasco de las pastillas de dormir", (Emergency(),))],
        topic="red flags",
    ),
    Conversation(
        "self-harm said sideways",
        [DOC, Msg("ya no quiero despertar mañana", (Emergency(),))],
        topic="red flags",
    ),
    Conversation(
        "a stroke sign while choosing",
        [f"{DOC} me duele la cabeza", Msg("y se me durmió la mitad de la cara", (Emergency(),))],
        expect=(NothingBooked(),),
        topic="red flags",
    ),
    Conversation(
        "fever then a stiff neck, split",
        [DOC, "mi hijo tiene fiebre", Msg("y tiene el cuello rígido", (Emergency(),))],
        topic="red flags",
    ),
    Conversation(
        "a person, then the queue once, then only red flags",
        [
            DOC,
            Msg("quiero hablar con una persona", (Says("persona"),)),
            Msg("hola?", (Says("fila"),)),
            Msg("me duele la muela", (Silent(),)),
            Msg("me duele mucho el pecho", (Emergency(),)),
        ],
        expect=(HandedOff("asked_for_person"), NothingBooked()),
        topic="red flags",
    ),
    # --- names during registration --------------------------------------------------------------
    Conversation(
        "symptoms where the name was asked",
        [
            "5566778899",
            "10/10/1990",
            Msg("me duele el oído y me zumba", (Says("nombre"),)),
            "Pedro Pérez Gómez",
            "1",
            "sí",
        ],
        expect=(
            Registered("Pedro Pérez Gómez", dt.date(1990, 10, 10)),
            Booked(specialty="otorrinolaringologia", patient="Pedro Pérez"),
        ),
        wa_id=NEW_NUMBER,
        topic="names",
    ),
    Conversation(
        "a name with 'me llamo'",
        ["5566778899", "1/2/2000", "me llamo Juana Ríos"],
        expect=(Registered("Juana Ríos", dt.date(2000, 2, 1)),),
        wa_id=NEW_NUMBER,
        topic="names",
    ),
    Conversation(
        "a name with particles",
        ["5566778899", "3 de mayo de 1970", "María de los Ángeles Pérez"],
        expect=(Registered("María de los Ángeles Pérez", dt.date(1970, 5, 3)),),
        wa_id=NEW_NUMBER,
        topic="names",
    ),
    Conversation(
        "a one-word answer is asked again",
        ["5566778899", "1/1/1980", Msg("Pedro", (Says("nombre completo"),)), "Pedro Páez"],
        expect=(Registered("Pedro Páez", dt.date(1980, 1, 1)),),
        wa_id=NEW_NUMBER,
        topic="names",
    ),
    # --- returning patients: messages per booking ----------------------------------------------
    Conversation(
        "returning patient, step by step",
        ["hola", DOC, "me duele la muela", "1", "sí"],
        expect=(Booked(specialty="odontologia"),),
        topic="booking",
        booking="returning",
    ),
    Conversation(
        "returning patient, document and symptoms together",
        [f"{DOC} tengo gripa y fiebre", "1", "sí"],
        expect=(Booked(specialty="medicina-general"),),
        topic="booking",
        booking="doc+symptoms",
    ),
    Conversation(
        "returning patient, greeting with the document and symptoms",
        ["hola buenas, mi cédula es 1.020.304.050 y me duele mucho un oído", "1", "sí"],
        expect=(Booked(specialty="otorrinolaringologia"),),
        topic="booking",
        booking="doc+symptoms",
    ),
    Conversation(
        "returning patient, symptoms first then the document",
        ["me salieron unas manchas en la piel que pican", DOC, "1", "sí"],
        expect=(Booked(specialty="dermatologia"),),
        topic="booking",
        booking="returning",
    ),
    Conversation(
        "returning patient asks for an appointment with the document",
        [Msg(f"{DOC} quiero una cita", (Says("sintomas"),)), "me duele una muela", "1", "sí"],
        expect=(Booked(specialty="odontologia"),),
        topic="booking",
        booking="returning",
    ),
    Conversation(
        "returning patient picks by time",
        [f"{DOC} me duele la muela", "el de las 9", "sí"],
        expect=(Booked(specialty="odontologia", hour=9, minute=0),),
        topic="booking",
        booking="doc+symptoms",
    ),
    Conversation(
        "returning patient with a day and a doctor in one go",
        [DOC, "quiero cita con la dra Rojas el viernes", "1", "sí"],
        expect=(Booked(doctor="Diana Marcela Rojas", weekday=4),),
        topic="booking",
        booking="returning",
    ),
]
