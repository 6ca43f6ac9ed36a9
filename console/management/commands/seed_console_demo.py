"""Demo data for the console: each clinic's approved WhatsApp templates. Idempotent."""

from django.core.management.base import BaseCommand

from clinics.models import Clinic
from console.models import ReplyTemplate

TEMPLATES = [
    (
        "seguimiento_cita",
        "Seguimiento de la conversación",
        "Hola {{1}}, te escribimos de la clínica para continuar con tu solicitud. "
        "¿Podemos ayudarte con tu cita?",
    ),
    (
        "recordatorio_cita",
        "Recordatorio de cita",
        "Hola {{1}}, te recordamos tu cita del {{2}}. Responde SÍ para confirmar.",
    ),
]


class Command(BaseCommand):
    help = "Create the demo clinics' approved WhatsApp templates (idempotent)."

    def handle(self, *args, **options) -> None:
        created = 0
        for clinic in Clinic.objects.all():
            for name, label, body in TEMPLATES:
                _, new = ReplyTemplate.objects.get_or_create(
                    clinic=clinic, name=name, language="es", defaults={"label": label, "body": body}
                )
                created += new
        self.stdout.write(f"console demo: {created} templates created")
