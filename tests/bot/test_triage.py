"""Triage by rules: specialty accuracy on patients' own words, red flags, confidence, child cues."""

from collections import Counter

import pytest

from bot.triage import (
    TriageResult,
    classify,
    detect_red_flag,
    detect_red_flag_in_messages,
    mentions_child,
)
from clinics.demo_data import SPECIALTIES
from clinics.models import Specialty
from tests.bot.triage_cases import (
    HELD_OUT,
    NOT_RED_FLAG_CASES,
    RED_FLAG_CASES,
    SPECIALTY_CASES,
)


def demo_specialties(*only: str) -> list[Specialty]:
    """The demo clinic's specialties as unsaved rows: triage only reads slug and keywords."""
    return [
        Specialty(slug=slug, name=name, triage_keywords=", ".join(keywords))
        for slug, (name, keywords) in SPECIALTIES.items()
        if not only or slug in only
    ]


SPECIALTIES_ROWS = demo_specialties()


def accuracy(cases: list[tuple[str, str]]) -> tuple[float, dict[str, tuple[int, int]], list]:
    hits: Counter = Counter()
    totals: Counter = Counter()
    misses = []
    for text, expected in cases:
        result = classify(text, SPECIALTIES_ROWS)
        totals[expected] += 1
        if result.specialty == expected:
            hits[expected] += 1
        else:
            misses.append((text, expected, result.specialty))
    per = {slug: (hits[slug], totals[slug]) for slug in totals}
    return sum(hits.values()) / len(cases), per, misses


def test_it_has_a_big_enough_colloquial_set():
    per = Counter(expected for _, expected in SPECIALTY_CASES)
    assert len(SPECIALTY_CASES) >= 150
    assert set(per) == set(SPECIALTIES)
    assert min(per.values()) >= 12
    assert len(RED_FLAG_CASES) >= 40
    assert len(NOT_RED_FLAG_CASES) >= 30


def test_it_classifies_at_least_90_percent_of_the_phrases_by_rules_alone():
    overall, per, misses = accuracy(SPECIALTY_CASES)
    print(f"\ntriage accuracy (rules only): {overall:.1%} of {len(SPECIALTY_CASES)}")
    for slug, (hit, total) in sorted(per.items()):
        print(f"  {slug:22} {hit}/{total}")
    for miss in misses:
        print("  miss:", miss)
    assert overall >= 0.90


def test_it_reports_accuracy_on_held_out_phrases():
    overall, _, misses = accuracy(HELD_OUT)
    print(f"\nheld-out accuracy (never tuned on): {overall:.1%} of {len(HELD_OUT)}")
    for miss in misses:
        print("  miss:", miss)
    assert overall >= 0.75


def test_it_flags_every_red_flag_phrase():
    missed = [text for text in RED_FLAG_CASES if detect_red_flag(text) is None]
    false_alarms = [text for text in NOT_RED_FLAG_CASES if detect_red_flag(text)]
    in_specialty = [text for text, _ in SPECIALTY_CASES if detect_red_flag(text)]
    recall = 1 - len(missed) / len(RED_FLAG_CASES)
    fp_rate = len(false_alarms) / len(NOT_RED_FLAG_CASES)
    print(f"\nred-flag recall {recall:.1%} of {len(RED_FLAG_CASES)}")
    print(f"false alarms {fp_rate:.1%} of {len(NOT_RED_FLAG_CASES)} look-alikes: {false_alarms}")
    print(f"false alarms on {len(SPECIALTY_CASES)} ordinary phrases: {in_specialty}")
    assert missed == []
    assert fp_rate <= 0.10


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("me duele mucho el pecho", "chest_pain"),
        ("No puedo respirar!!", "breathing"),
        ("mi hijo está convulsionando", "seizure"),
        ("se me durmió medio cuerpo", "stroke"),
        ("ya no quiero vivir", "suicide"),
        ("no para de sangrar", "heavy_bleeding"),
        ("mi abuela no responde", "unconscious"),
        ("se tomó unas pastillas", "poisoning"),
        ("tuvo un accidente de tránsito", "trauma"),
        ("estoy embarazada y tengo sangrado", "pregnancy"),
    ],
)
def test_it_names_the_kind_of_red_flag(text, code):
    assert detect_red_flag(text) == code


def test_it_ignores_a_denied_red_flag_but_not_a_later_one():
    assert detect_red_flag("no tengo dolor en el pecho") is None
    assert detect_red_flag("sin dolor de pecho, solo tos") is None
    assert detect_red_flag("no tengo fiebre pero me duele el pecho") == "chest_pain"
    assert detect_red_flag("no sé si es dolor en el pecho") == "chest_pain"
    assert detect_red_flag("no me duele el pecho") is None
    assert detect_red_flag("No, me duele mucho el pecho") == "chest_pain"
    assert detect_red_flag("nunca he convulsionado") is None
    assert detect_red_flag("ya no puedo respirar") == "breathing"


def test_it_flags_red_flags_in_classify_and_still_guesses_the_specialty():
    result = classify("tengo palpitaciones y dolor en el pecho", SPECIALTIES_ROWS)
    assert result.red_flag == "chest_pain"
    assert result.specialty == "cardiologia"
    assert result.as_json()["red_flag"] is True


def test_it_matches_without_accents_case_or_plural():
    rows = demo_specialties()
    for text in ("ME DUELEN LAS MUELAS", "dolor de muela", "Me duele una muélita 😭"):
        assert classify(text, rows).specialty == "odontologia", text
    for text in ("tengo manchas", "una mancha rara en la piel", "me arden los ojos"):
        assert classify(text, rows).specialty in {"dermatologia", "oftalmologia"}, text
    assert classify("me pica el ojo", rows).specialty == "oftalmologia"
    assert classify("me pican los ojos", rows).specialty == "oftalmologia"


def test_it_tolerates_common_typos():
    rows = demo_specialties()
    assert classify("tengo palpitasiones", rows).specialty == "cardiologia"
    assert classify("me duele la cabesa", rows).specialty == "medicina-general"
    assert classify("tengo ansiedaad", rows).specialty == "psicologia"
    assert classify("conjuntivits", rows).specialty == "oftalmologia"
    assert classify("me duele la rodila", rows).specialty == "ortopedia"
    assert classify("mestruacion irregular", rows).specialty == "ginecologia"
    assert classify("cita con el sicologo", rows).specialty == "psicologia"
    assert classify("jinecologo", rows).specialty == "ginecologia"
    # A keyword is not a typo of another: citología ≠ psicología.
    assert classify("citologia", rows).confident


def test_it_weighs_a_phrase_above_a_single_word():
    rows = [
        Specialty(slug="a", name="A", triage_keywords="dolor de oído"),
        Specialty(slug="b", name="B", triage_keywords="oído"),
    ]
    result = classify("me duele el oído", rows)
    assert result.specialty == "a"
    assert result.alternatives == ("b",)


def test_it_is_unsure_when_nothing_matches():
    result = classify("hola buenas tardes", SPECIALTIES_ROWS)
    assert result == TriageResult(None, 0.0, None, "rules")
    assert not result.confident
    assert result.as_json() == {
        "specialty": None,
        "confidence": 0.0,
        "red_flag": False,
        "source": "rules",
    }


def test_it_is_unsure_when_two_specialties_tie():
    result = classify("tengo acné y sinusitis", SPECIALTIES_ROWS)
    assert not result.confident
    assert {result.specialty, *result.alternatives} >= {"dermatologia", "otorrinolaringologia"}


def test_it_is_confident_on_a_clear_case():
    result = classify("me duele la muela desde ayer", SPECIALTIES_ROWS)
    assert result.confident
    assert 0 < result.confidence <= 1


def test_it_sends_children_to_pediatrics_only_when_the_clinic_has_it():
    assert mentions_child("mi niña de 3 años")
    assert mentions_child("mi bebé")
    assert mentions_child("el niño tiene 8 meses")
    assert not mentions_child("tengo 35 años")
    assert not mentions_child("mi hijo de 30 años")
    assert classify("mi hijo tiene fiebre", SPECIALTIES_ROWS).specialty == "pediatria"
    without = demo_specialties("medicina-general", "odontologia")
    assert classify("mi hijo tiene fiebre", without).specialty == "medicina-general"
    # A specialist complaint still goes to the specialist.
    assert classify("mi hija tiene caries y le duele la muela", SPECIALTIES_ROWS).specialty == (
        "odontologia"
    )


def test_it_uses_the_clinics_edited_keywords():
    rows = [
        Specialty(slug="nutricion", name="Nutrición", triage_keywords="dieta\nbajar de peso"),
        Specialty(slug="medicina-general", name="Medicina General", triage_keywords="fiebre"),
    ]
    assert classify("quiero bajar de peso", rows).specialty == "nutricion"
    assert classify("necesito una dieta", rows).specialty == "nutricion"


def test_it_survives_odd_input():
    for text in ("", "   ", "🙂🙂🙂", "1234567890", "x" * 5000, "¿¿??"):
        result = classify(text, SPECIALTIES_ROWS)
        assert result.red_flag is None
        assert isinstance(result, TriageResult)
    assert classify("me duele la muela", []).specialty is None


# --- issue 7: red flags over several messages, self-harm and overdoses said sideways ---------

SPLIT_RED_FLAGS = [
    (["me duele el pecho", "y se me duerme el brazo izquierdo"], "chest_pain"),
    (["tengo una molestia en el pecho desde hace rato", "y estoy sudando frío"], "chest_pain"),
    (["siento una presión rara en el pecho", "y me duele la mandíbula"], "chest_pain"),
    (["se me durmió la cara", "y el brazo derecho no lo siento bien"], "stroke"),
    (["mi hijo tiene fiebre", "y tiene el cuello rígido"], "meningitis"),
    (["hola", "buenas", "ya no quiero despertar mañana"], "suicide"),
]


@pytest.mark.parametrize(("messages", "code"), SPLIT_RED_FLAGS)
def test_it_judges_red_flags_over_the_recent_messages_together(messages, code):
    assert detect_red_flag_in_messages(messages) == code


@pytest.mark.parametrize(
    "messages",
    [
        ["tengo tos con flema", "y me duele la garganta"],
        ["me salió un grano en la cara", "y otro en el brazo"],
        ["mi hijo tiene fiebre", "quiero cita con el pediatra"],
        ["me duele la espalda", "desde el lunes"],
    ],
)
def test_it_does_not_add_up_ordinary_complaints_into_an_emergency(messages):
    assert detect_red_flag_in_messages(messages) is None


INDIRECT_SELF_HARM = [
    "me tomé todo el frasco de las pastillas para dormir",
    "me tomé 30 pastillas de acetaminofén",
    "me tome las pepas de mi mamá todas de una",
    "me pasé con las pastillas a propósito",
    "me tomé el límpido",
    "se tomó algo de la cocina y está raro",
    "ya no quiero despertar",
    "quiero dormir y no despertar nunca",
    "todos estarían mejor sin mí",
    "siento que soy una carga para mi familia",
    "esta es mi despedida, gracias por todo",
    "ya no le encuentro sentido a nada",
    "me corté a propósito otra vez",
    "estoy pensando en quitarme la vida",
    "tengo unas pastillas guardadas para no despertar",
    "me quiero ir de este mundo",
]


@pytest.mark.parametrize("text", INDIRECT_SELF_HARM)
def test_it_catches_self_harm_and_overdoses_in_everyday_words(text):
    assert detect_red_flag(text) in ("suicide", "poisoning")


@pytest.mark.parametrize(
    "text",
    [
        "me tomé la pastilla para la presión y me mareé un poco",
        "ya no aguanto el dolor de muela",
        "quiero dormir mejor, tengo insomnio",
        "me tomé un acetaminofén para el dolor de cabeza",
        "me pasé de peso y quiero nutricionista",
    ],
)
def test_it_does_not_mistake_ordinary_medication_talk_for_an_overdose(text):
    assert detect_red_flag(text) is None
