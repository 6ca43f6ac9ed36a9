"""`python manage.py triage --clinic demo "me duele la muela"` → one JSON line.

{"specialty": "<slug>", "confidence": <0..1>, "red_flag": <bool>, "source": "rules"|"llm"}
Uses the LLM helper when OPENAI_API_KEY is set, exactly as the bot does.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from bot import llm, triage
from clinics.models import Clinic


class Command(BaseCommand):
    help = "Classify a patient's symptoms into one of a clinic's specialties (one JSON line)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--clinic", required=True, help="the clinic's slug, e.g. demo")
        parser.add_argument("text", nargs="+", help="the patient's words")

    def handle(self, *args, clinic: str, text: list[str], **options) -> None:
        found = Clinic.objects.filter(slug=clinic).first()
        if found is None:
            known = ", ".join(Clinic.objects.values_list("slug", flat=True)) or "none yet"
            raise CommandError(f"Unknown clinic {clinic!r} (known clinics: {known}).")
        message = " ".join(text).strip()
        if not message:
            raise CommandError("Give the patient's words to classify.")
        result = triage.classify(message, list(found.specialties.all()), llm=llm.get_helper())
        self.stdout.write(json.dumps(result.as_json(), ensure_ascii=False))
