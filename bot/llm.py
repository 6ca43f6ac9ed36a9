"""The optional LLM helper: any OpenAI-compatible server, used only where rules are unsure.

It may pick a specialty among the clinic's own (structured output with an enum of their slugs) and
word a short free-conversation reply grounded in the clinic's data. It never decides documents,
numbers, confirmations or bookings, never diagnoses, and every failure — server down, slow, 5xx,
invalid output — returns None so the caller falls back to rules. Logs never carry patient text.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import openai
from django.conf import settings

from bot import network
from sophia_web import metrics

if TYPE_CHECKING:
    from bot.messages import ClinicInfo, FaqInfo, SpecialtyInfo

logger = logging.getLogger(__name__)

Usage = tuple[int, int]  # (prompt_tokens, completion_tokens)

NO_SPECIALTY = "ninguna"
MAX_INPUT_CHARS = 1000  # a patient message longer than this adds cost, not meaning
MAX_ANSWER_CHARS = 600

_CLASSIFY_SYSTEM = (
    "Eres el asistente de triage administrativo de una clínica en Colombia. Lee el mensaje del "
    "paciente y elige la especialidad de la clínica que debe atenderlo, solo entre las opciones "
    "dadas. Si el mensaje no describe síntomas ni un motivo de consulta, responde "
    f'"{NO_SPECIALTY}". '
    "No des diagnósticos. Responde solo con JSON: "
    '{"specialty": "<slug>", "confidence": <0 a 1>}.'
)

_ANSWER_SYSTEM = (
    "Eres Sophia, la asistente de WhatsApp de {name}. Responde en español de Colombia, tuteando, "
    "con calidez y en máximo tres frases cortas. Usa SOLO estos datos de la clínica:\n"
    "{facts}\n"
    "Si la respuesta no está en esos datos, di que no tienes esa información y que puede escribir "
    '"asesor" para hablar con una persona. Nunca des diagnósticos, ni nombres de medicamentos, ni '
    "dosis, ni consejos de tratamiento: para eso está la cita con el médico. No inventes precios, "
    "horarios ni direcciones. No agendes, canceles ni confirmes citas tú mismo: eso lo hace el "
    "menú del chat. Ante una urgencia, indica la línea de emergencias."
)

# Dosage or prescription advice slips past a system prompt sometimes; such replies are dropped.
_DOSAGE = re.compile(
    r"\b\d+(?:[.,]\d+)?\s*(?:mg|mcg|ml|g|gr|gotas|miligramos|mililitros|tabletas|pastillas|"
    r"c[aá]psulas|cucharadas)\b|\bcada\s+\d+\s+horas\b|\b(?:acetaminof[eé]n|ibuprofeno|"
    r"paracetamol|naproxeno|amoxicilina|diclofenaco|dipirona|loratadina|omeprazol)\b",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class LLMHelper:
    def __init__(self, *, api_key: str, base_url: str | None, model: str, timeout: float) -> None:
        self.model = model
        # One attempt: a patient is waiting, and the rules already have an answer.
        self.client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
        )

    def _complete(self, purpose: str, **request):
        """One chat completion, counted and timed for /metrics (calls, errors, tokens)."""
        network.check("the LLM")  # before the SDK, which would turn it into a connection error
        metrics.LLM_CALLS.labels(purpose=purpose).inc()
        started = time.perf_counter()
        try:
            response = self.client.chat.completions.create(**request)
        except openai.OpenAIError:
            metrics.LLM_ERRORS.labels(purpose=purpose).inc()
            raise
        finally:
            metrics.LLM_LATENCY.labels(purpose=purpose).observe(time.perf_counter() - started)
        prompt, completion = _usage(response)
        metrics.LLM_TOKENS.labels(kind="prompt").inc(prompt)
        metrics.LLM_TOKENS.labels(kind="completion").inc(completion)
        return response

    def classify(
        self, text: str, specialties: Sequence[SpecialtyInfo]
    ) -> tuple[str | None, float, Usage] | None:
        """(slug or None, confidence, usage) with the slug one of `specialties`; None on error."""
        slugs = [s.slug for s in specialties]
        if not slugs:
            return None
        options = "\n".join(f"- {s.slug}: {s.name}" for s in specialties)
        schema = {
            "type": "object",
            "properties": {
                "specialty": {"type": "string", "enum": [*slugs, NO_SPECIALTY]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["specialty", "confidence"],
            "additionalProperties": False,
        }
        try:
            response = self._complete(
                "classify",
                model=self.model,
                messages=[
                    {"role": "system", "content": f"{_CLASSIFY_SYSTEM}\nOpciones:\n{options}"},
                    {"role": "user", "content": text[:MAX_INPUT_CHARS]},
                ],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "triage", "strict": True, "schema": schema},
                },
                temperature=0,
                max_tokens=60,
            )
            usage = _usage(response)
            data = _json_content(response)
            slug = data["specialty"]
            confidence = float(data.get("confidence", 0.5))
        except openai.OpenAIError as exc:
            logger.warning("llm classify failed: %s", type(exc).__name__)
            return None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            logger.warning("llm classify returned unusable output: %s", type(exc).__name__)
            return None
        if slug == NO_SPECIALTY:
            return None, 0.0, usage
        if slug not in slugs:
            logger.warning("llm classify returned a specialty outside the clinic's list")
            return None
        return slug, max(0.0, min(1.0, confidence)), usage

    def answer(
        self,
        question: str,
        clinic: ClinicInfo,
        specialties: Sequence[SpecialtyInfo],
        faq: Sequence[FaqInfo] = (),
    ) -> tuple[str, Usage] | None:
        """A short Spanish reply grounded only in the clinic's data and its FAQ answers (what
        its admins wrote); None on error or bad output."""
        system = _ANSWER_SYSTEM.format(
            name=clinic.name, facts=clinic_facts(clinic, specialties, faq)
        )
        try:
            response = self._complete(
                "answer",
                model=self.model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": question[:MAX_INPUT_CHARS]},
                ],
                temperature=0.2,
                max_tokens=200,
            )
            usage = _usage(response)
            reply = (response.choices[0].message.content or "").strip()
        except openai.OpenAIError as exc:
            logger.warning("llm answer failed: %s", type(exc).__name__)
            return None
        except (TypeError, IndexError, AttributeError) as exc:
            logger.warning("llm answer returned unusable output: %s", type(exc).__name__)
            return None
        if not reply:
            logger.warning("llm answer was empty")
            return None
        if _DOSAGE.search(reply):
            logger.warning("llm answer dropped: it gave medication or dosage advice")
            return None
        return reply[:MAX_ANSWER_CHARS], usage


def clinic_facts(
    clinic: ClinicInfo, specialties: Sequence[SpecialtyInfo], faq: Sequence[FaqInfo] = ()
) -> str:
    """The only things the helper may say about a clinic: its data and its FAQ answers."""
    facts = [
        ("Nombre", clinic.name),
        ("Dirección", clinic.address),
        ("Horario", clinic.opening_hours),
        ("Qué traer a la cita", clinic.what_to_bring),
        ("Especialidades", ", ".join(s.name for s in specialties) or "—"),
        ("Línea de emergencias", clinic.emergency_line),
    ]
    facts += [(entry.question, entry.answer) for entry in faq]
    return "\n".join(f"- {label}: {value or 'no disponible'}" for label, value in facts)


def _usage(response) -> Usage:
    usage = getattr(response, "usage", None)
    if usage is None:
        return 0, 0
    return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)


def _json_content(response) -> dict:
    """The JSON object in the reply; servers without structured output may wrap it in a fence."""
    content = (response.choices[0].message.content or "").strip()
    data = json.loads(_FENCE.sub("", content))
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return data


@lru_cache(maxsize=4)
def _helper(api_key: str, base_url: str | None, model: str, timeout: float) -> LLMHelper:
    return LLMHelper(api_key=api_key, base_url=base_url, model=model, timeout=timeout)


def get_helper() -> LLMHelper | None:
    """The configured helper, or None when OPENAI_API_KEY is not set (rules only)."""
    if not settings.OPENAI_API_KEY:
        return None
    return _helper(
        settings.OPENAI_API_KEY,
        settings.OPENAI_BASE_URL,
        settings.OPENAI_MODEL,
        float(settings.OPENAI_TIMEOUT_SECONDS),
    )
