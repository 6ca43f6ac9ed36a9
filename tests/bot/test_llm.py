"""The LLM helper through the real openai SDK against a local OpenAI-compatible server."""

import logging

import pytest

from bot import gateway, llm, triage
from clinics.demo_data import SPECIALTIES
from clinics.models import FaqEntry, Specialty
from tests.fakes import openai_server

fake_openai = openai_server.fake_openai  # the fixtures
openai_down = openai_server.openai_down

# Rules are unsure here (acne vs sinusitis tie), so the helper is asked.
UNSURE = "tengo acné y sinusitis"


@pytest.fixture
def specialties(clinic) -> list[Specialty]:
    return [
        Specialty.objects.create(
            clinic=clinic, slug=slug, name=name, triage_keywords=", ".join(keywords)
        )
        for slug, (name, keywords) in SPECIALTIES.items()
    ]


@pytest.fixture
def use_llm(settings):
    def configure(base_url: str, timeout: float = 2.0) -> llm.LLMHelper:
        settings.OPENAI_API_KEY = "test-key"
        settings.OPENAI_BASE_URL = base_url
        settings.OPENAI_MODEL = "fake-model"
        settings.OPENAI_TIMEOUT_SECONDS = timeout
        helper = llm.get_helper()
        assert helper is not None
        return helper

    return configure


def test_it_has_no_helper_without_an_api_key(settings):
    settings.OPENAI_API_KEY = ""
    assert llm.get_helper() is None


def test_it_classifies_with_a_schema_restricted_to_the_clinics_slugs(
    fake_openai, use_llm, specialties
):
    helper = use_llm(fake_openai.base_url)
    fake_openai.reply_json(
        {"specialty": "dermatologia", "confidence": 0.8}, prompt_tokens=120, completion_tokens=9
    )

    result = triage.classify(UNSURE, specialties, llm=helper)

    assert result.source == "llm"
    assert result.specialty == "dermatologia"
    assert result.confidence == 0.8
    assert (result.prompt_tokens, result.completion_tokens) == (120, 9)
    assert result.as_json() == {
        "specialty": "dermatologia",
        "confidence": 0.8,
        "red_flag": False,
        "source": "llm",
    }
    (request,) = fake_openai.requests
    assert fake_openai.headers[0]["authorization"] == "Bearer test-key"
    assert request["model"] == "fake-model"
    schema = request["response_format"]["json_schema"]["schema"]
    assert set(schema["properties"]["specialty"]["enum"]) == {*SPECIALTIES, llm.NO_SPECIALTY}


def test_it_accepts_plain_json_content_from_servers_without_structured_output(
    fake_openai, use_llm, specialties
):
    helper = use_llm(fake_openai.base_url)
    fake_openai.reply_text('```json\n{"specialty": "otorrinolaringologia", "confidence": 0.7}\n```')
    assert helper.classify(UNSURE, specialties) == ("otorrinolaringologia", 0.7, (42, 7))


def test_it_does_not_ask_the_llm_when_rules_are_sure_or_on_a_red_flag(
    fake_openai, use_llm, specialties
):
    helper = use_llm(fake_openai.base_url)
    sure = triage.classify("me duele la muela desde ayer", specialties, llm=helper)
    flagged = triage.classify("tengo acné, sinusitis y dolor en el pecho", specialties, llm=helper)
    assert sure.source == "rules" and sure.specialty == "odontologia"
    assert flagged.source == "rules" and flagged.red_flag == "chest_pain"
    assert fake_openai.requests == []


def test_it_falls_back_to_rules_when_the_server_is_down(openai_down, use_llm, specialties, caplog):
    helper = use_llm(openai_down)
    with caplog.at_level(logging.WARNING, logger="bot.llm"):
        result = triage.classify(UNSURE, specialties, llm=helper)
    assert result == triage.classify_rules(UNSURE, specialties)
    assert "llm classify failed: APIConnectionError" in caplog.text
    assert "acné" not in caplog.text and "sinusitis" not in caplog.text


def test_it_falls_back_to_rules_when_the_server_is_slow(fake_openai, use_llm, specialties):
    helper = use_llm(fake_openai.base_url, timeout=0.2)
    fake_openai.delay = 30.0  # released when the test ends
    fake_openai.reply_json({"specialty": "dermatologia", "confidence": 0.9})
    result = triage.classify(UNSURE, specialties, llm=helper)
    assert result.source == "rules"
    assert len(fake_openai.requests) == 1  # no retry: the patient is waiting


def test_it_falls_back_to_rules_on_a_server_error(fake_openai, use_llm, specialties, caplog):
    helper = use_llm(fake_openai.base_url)
    fake_openai.fail_next(status=500)
    with caplog.at_level(logging.WARNING, logger="bot.llm"):
        result = triage.classify(UNSURE, specialties, llm=helper)
    assert result.source == "rules"
    assert len(fake_openai.requests) == 1
    assert "InternalServerError" in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        '{"specialty": "neurocirugia", "confidence": 0.99}',
        '{"specialty": "pediatria"',
        "la especialidad es dermatología",
        '["dermatologia"]',
        '{"confidence": 0.5}',
    ],
)
def test_it_falls_back_to_rules_on_invalid_output(fake_openai, use_llm, specialties, content):
    helper = use_llm(fake_openai.base_url)
    fake_openai.reply_text(content)
    assert helper.classify(UNSURE, specialties) is None
    fake_openai.reply_text(content)
    assert triage.classify(UNSURE, specialties, llm=helper).source == "rules"


def test_it_keeps_the_rules_answer_but_counts_tokens_when_the_llm_has_no_specialty(
    fake_openai, use_llm, specialties
):
    helper = use_llm(fake_openai.base_url)
    fake_openai.reply_json({"specialty": "ninguna", "confidence": 0.1}, prompt_tokens=50)
    result = triage.classify(UNSURE, specialties, llm=helper)
    assert result.source == "rules"
    assert result.specialty in {"dermatologia", "otorrinolaringologia"}
    assert result.prompt_tokens == 50


def test_it_answers_from_the_clinics_data_only(fake_openai, use_llm, clinic, specialties):
    clinic.what_to_bring = "Documento de identidad y carné de la EPS."
    clinic.save()
    helper = use_llm(fake_openai.base_url)
    fake_openai.reply_text(
        "Estamos en la Calle 100 # 15-20, Bogotá.", prompt_tokens=300, completion_tokens=15
    )

    answer = helper.answer(
        "¿dónde quedan?",
        gateway.clinic_info(clinic),
        [gateway.specialty_info(s) for s in specialties],
    )

    assert answer == ("Estamos en la Calle 100 # 15-20, Bogotá.", (300, 15))
    system, user = fake_openai.requests[0]["messages"]
    assert user == {"role": "user", "content": "¿dónde quedan?"}
    for fact in ("Calle 100 # 15-20", "Lunes a sábado", "carné de la EPS", "Pediatría", "123"):
        assert fact in system["content"]
    assert "diagnóstico" in system["content"]


def test_it_grounds_answers_in_the_clinics_faq_entries(fake_openai, use_llm, clinic, specialties):
    """Issue 7: the LLM may phrase answers, but only from what the clinic's admins wrote."""
    FaqEntry.objects.create(
        clinic=clinic,
        question="¿Tienen parqueadero?",
        keywords="parqueadero",
        answer="Sí, en el sótano, gratis dos horas.",
    )
    helper = use_llm(fake_openai.base_url)
    fake_openai.reply_text("Claro: hay parqueadero en el sótano, gratis por dos horas.")
    orm = gateway.OrmGateway(clinic, 1)

    answer = helper.answer(
        "¿dónde dejo el carro?", orm.clinic, orm.specialties(), orm.faq_entries()
    )

    assert answer is not None and "sótano" in answer[0]
    system = fake_openai.requests[0]["messages"][0]["content"]
    assert "¿Tienen parqueadero?: Sí, en el sótano, gratis dos horas." in system
    assert "SOLO" in system


@pytest.mark.parametrize(
    "content",
    [
        "Puedes tomar acetaminofén mientras llega tu cita.",
        "Toma 500 mg cada 8 horas.",
        "",
    ],
)
def test_it_drops_answers_with_medication_advice_or_nothing_in_them(
    fake_openai, use_llm, clinic, content
):
    helper = use_llm(fake_openai.base_url)
    fake_openai.reply_text(content)
    question = "me duele la cabeza, ¿qué me tomo?"
    assert helper.answer(question, gateway.clinic_info(clinic), []) is None


def test_it_gives_no_answer_when_the_server_is_down(openai_down, use_llm, clinic):
    helper = use_llm(openai_down)
    assert helper.answer("¿a qué hora abren?", gateway.clinic_info(clinic), []) is None
