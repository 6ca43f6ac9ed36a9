"""Symptoms → one of the clinic's specialties, and red flags (API published; rules being filled in)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from clinics.models import Specialty

CONFIDENT_AT = 0.6


@dataclass(frozen=True)
class TriageResult:
    specialty: str | None  # slug of the clinic's specialty, None when nothing matched
    confidence: float  # 0..1
    red_flag: str | None  # a code such as "chest_pain"; decided by rules only
    source: Literal["rules", "llm"]
    alternatives: tuple[str, ...] = ()  # other candidate slugs, best first
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def confident(self) -> bool:
        return self.specialty is not None and self.confidence >= CONFIDENT_AT

    def as_json(self) -> dict:
        return {
            "specialty": self.specialty,
            "confidence": round(self.confidence, 2),
            "red_flag": self.red_flag is not None,
            "source": self.source,
        }


def detect_red_flag(text: str) -> str | None:
    return None


def classify(text: str, specialties: Sequence[Specialty], *, llm=None) -> TriageResult:
    return TriageResult(None, 0.0, detect_red_flag(text), "rules")
