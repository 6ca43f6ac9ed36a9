"""Demo data for README, tests and `make demo`: two clinics, doctors, agendas, a patient, staff.

Idempotent: rows are found by their natural keys and created only when missing, so a second run
adds nothing, keeps whatever staff edited since, and only tops slots up to
SOPHIA_SLOT_DAYS_AHEAD days ahead. Passwords are set when a user is created, never reset.
"""

import datetime as dt

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from clinics import services
from clinics.demo_data import SPECIALTIES
from clinics.models import (
    Clinic,
    Doctor,
    FaqEntry,
    Patient,
    Schedule,
    Specialty,
    StaffMembership,
)

DEMO_PASSWORD = "sophia-demo"

CLINICS = {
    "demo": {
        "name": "Clínica Sophia Demo",
        "phone_number_id": "100000000000001",
        "time_zone": "America/Bogota",
        "emergency_line": "123",
        "address": "Carrera 7 # 72-41, Chapinero, Bogotá",
        "opening_hours": (
            "Lunes a viernes de 8:00 a. m. a 6:00 p. m. y sábados de 8:00 a. m. a 12:00 m."
        ),
        "what_to_bring": (
            "Tu documento de identidad, el carné de tu EPS o seguro y tus exámenes o fórmulas "
            "recientes. Llega 15 minutos antes de tu cita."
        ),
        "self_registration": True,
    },
    "norte": {
        "name": "Clínica Norte",
        "phone_number_id": "100000000000002",
        "time_zone": "America/Bogota",
        "emergency_line": "123",
        "address": "Calle 134 # 9-51, Usaquén, Bogotá",
        "opening_hours": "Lunes a sábado de 7:00 a. m. a 1:00 p. m.",
        "what_to_bring": "Tu documento de identidad y el carné de tu EPS.",
        "self_registration": True,
    },
}

DOCTORS = {
    "demo": {
        "medicina-general": ["Dr. Carlos Andrés Rodríguez", "Dra. Luisa Fernanda Martínez"],
        "pediatria": ["Dra. Natalia Restrepo Gaviria", "Dr. Juan Pablo Ospina"],
        "ginecologia": ["Dra. Catalina Vélez Duque", "Dra. Paola Andrea Cárdenas"],
        "odontologia": ["Dr. Sebastián Herrera Castaño", "Dra. Diana Marcela Rojas"],
        "dermatologia": ["Dra. María Camila Zuluaga", "Dr. Andrés Felipe Salazar"],
        "oftalmologia": ["Dr. Jorge Enrique Cifuentes", "Dra. Valentina Arango Mejía"],
        "cardiologia": ["Dr. Hernán Darío Quintero", "Dra. Claudia Patricia Londoño"],
        "psicologia": ["Dra. Laura Sofía Bermúdez", "Dr. Camilo Ernesto Pardo"],
        "ortopedia": ["Dr. Mauricio Echeverri Lozano", "Dra. Adriana Lucía Moreno"],
        "otorrinolaringologia": ["Dr. Ricardo Alfonso Peña", "Dra. Juliana Betancur Ríos"],
    },
    "norte": {
        "medicina-general": ["Dr. Felipe Guzmán Acosta", "Dra. Sandra Milena Torres"],
        "pediatria": ["Dra. Angélica María Díaz", "Dr. Óscar Iván Villamizar"],
    },
}

# Weekday mornings and afternoons, Saturday mornings (0 = Monday), 20-minute slots.
WEEKLY_HOURS = [
    ([0, 1, 2, 3, 4, 5], dt.time(8, 0), dt.time(12, 0)),
    ([0, 1, 2, 3, 4], dt.time(14, 0), dt.time(18, 0)),
]
SLOT_MINUTES = 20

PATIENT = {
    "document": "1020304050",
    "full_name": "Ana María Gómez",
    "birth_date": dt.date(1985, 3, 14),
    "whatsapp_id": "573001234567",
}

# (question, keywords, answer) per clinic: what patients ask most, answered in the clinic's words.
FAQ = {
    "demo": [
        (
            "¿Cuánto cuesta la consulta?",
            "precio, precios, cuanto cuesta, cuánto vale, valor de la consulta, costo, tarifa, "
            "cuanto cobran, particular, copago, cuota moderadora",
            "La consulta de medicina general particular cuesta $80.000 y la de especialista "
            "$120.000. Con EPS o prepagada pagas solo la cuota moderadora o el copago de tu plan.",
        ),
        (
            "¿Qué seguros o EPS reciben?",
            "eps, seguro, seguros, prepagada, medicina prepagada, convenio, convenios, "
            "aseguradora, sanitas, sura, compensar, nueva eps, colsanitas, reciben mi eps, aceptan",
            "Atendemos Sanitas, Sura, Compensar y Nueva EPS, y las prepagadas Colsanitas y "
            "Sura Prepagada. Si tu plan no está en la lista, puedes venir como particular.",
        ),
        (
            "¿Tienen parqueadero?",
            "parqueadero, parqueo, parquear, estacionamiento, estacionar, donde dejo el carro, "
            "carro, moto, cicla, bicicleta",
            "Sí: parqueadero cubierto en el sótano del edificio, gratis las primeras 2 horas "
            "presentando el ticket en recepción. También hay cicloparqueadero en la entrada.",
        ),
        (
            "¿Qué debo llevar a la cita?",
            "que llevo, que debo llevar, que tengo que llevar, documentos, que traer, examenes, "
            "formula, orden medica, carne",
            "Tu documento de identidad, el carné de tu EPS o seguro y tus exámenes o fórmulas "
            "recientes. Llega 15 minutos antes de tu cita.",
        ),
        (
            "¿Cómo llego a la clínica?",
            "como llego, como llegar, transmilenio, bus, ruta, indicaciones, direccion, donde "
            "quedan, ubicacion, mapa",
            "Estamos en la Carrera 7 # 72-41, Chapinero, Bogotá. En TransMilenio bájate en la "
            "estación Calle 72 y camina dos cuadras hacia los cerros; los buses de la Carrera 7 "
            "paran en la esquina.",
        ),
        (
            "¿Qué medios de pago reciben?",
            "pago, pagar, tarjeta, efectivo, nequi, daviplata, transferencia, datafono, medios de "
            "pago",
            "Recibimos efectivo, tarjetas débito y crédito, Nequi y Daviplata en recepción.",
        ),
    ],
    "norte": [
        (
            "¿Cuánto cuesta la consulta?",
            "precio, cuanto cuesta, valor, costo, tarifa, particular, copago",
            "La consulta particular cuesta $70.000. Con EPS pagas la cuota moderadora de tu plan.",
        ),
        (
            "¿Tienen parqueadero?",
            "parqueadero, parqueo, parquear, estacionamiento, carro, moto",
            "No tenemos parqueadero propio; hay uno público a media cuadra, sobre la Calle 134.",
        ),
    ],
}

STAFF = [
    ("recepcion", "demo", StaffMembership.Role.RECEPTIONIST),
    ("admin", "demo", StaffMembership.Role.ADMIN),
    ("norte", "norte", StaffMembership.Role.RECEPTIONIST),
]


class Command(BaseCommand):
    help = "Create the demo clinics, agendas, patient and staff (idempotent; tops slots up)."

    def handle(self, *args, **options) -> None:
        with transaction.atomic():
            clinics = {slug: self.clinic(slug) for slug in CLINICS}
            for slug, clinic in clinics.items():
                self.agenda(clinic, DOCTORS[slug])
            Patient.objects.get_or_create(
                clinic=clinics["demo"], document=PATIENT["document"], defaults=PATIENT
            )
            for slug, clinic in clinics.items():
                self.faq(clinic, FAQ[slug])
            new_users = self.staff(clinics)
            slots = {slug: self.slots(clinic) for slug, clinic in clinics.items()}

        for slug, clinic in clinics.items():
            self.stdout.write(
                f"{clinic.name} ({slug}): {clinic.specialties.count()} specialties, "
                f"{clinic.doctors.count()} doctors, {slots[slug]} new slots"
            )
        self.stdout.write(
            "Logins: "
            + ", ".join(f"{u} ({role}, {c})" for u, c, role in STAFF)
            + f" — password {DEMO_PASSWORD!r}"
            + (f" (created now: {', '.join(new_users)})" if new_users else "")
        )
        self.stdout.write(
            self.style.WARNING(
                "DEMO ONLY: these accounts share a published password. Never run seed_demo on a "
                "production database."
            )
        )

    def clinic(self, slug: str) -> Clinic:
        clinic, _ = Clinic.objects.get_or_create(slug=slug, defaults=CLINICS[slug])
        return clinic

    def agenda(self, clinic: Clinic, doctors_by_specialty: dict[str, list[str]]) -> None:
        today = timezone.now().astimezone(clinic.tz).date()
        for specialty_slug, doctor_names in doctors_by_specialty.items():
            name, keywords = SPECIALTIES[specialty_slug]
            specialty, _ = Specialty.objects.get_or_create(
                clinic=clinic,
                slug=specialty_slug,
                defaults={"name": name, "triage_keywords": "\n".join(keywords)},
            )
            # Keywords may have been published after an earlier run; never overwrite edited ones.
            if not specialty.triage_keywords and keywords:
                specialty.triage_keywords = "\n".join(keywords)
                specialty.save(update_fields=["triage_keywords"])
            for full_name in doctor_names:
                doctor, _ = Doctor.objects.get_or_create(clinic=clinic, full_name=full_name)
                doctor.specialties.add(specialty)
                for weekdays, start, end in WEEKLY_HOURS:
                    Schedule.objects.get_or_create(
                        doctor=doctor,
                        start_time=start,
                        end_time=end,
                        defaults={
                            "weekdays": weekdays,
                            "slot_minutes": SLOT_MINUTES,
                            "valid_from": today,
                        },
                    )

    def faq(self, clinic: Clinic, entries: list[tuple[str, str, str]]) -> None:
        # Found by question: answers staff edited since the last run are kept.
        for position, (question, keywords, answer) in enumerate(entries):
            FaqEntry.objects.get_or_create(
                clinic=clinic,
                question=question,
                defaults={"keywords": keywords, "answer": answer, "position": position},
            )

    def staff(self, clinics: dict[str, Clinic]) -> list[str]:
        created_names = []
        users = get_user_model().objects
        for username, clinic_slug, role in STAFF:
            user, created = users.get_or_create(username=username, defaults={"is_staff": True})
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save(update_fields=["password"])
                created_names.append(username)
            StaffMembership.objects.get_or_create(
                user=user, clinic=clinics[clinic_slug], defaults={"role": role}
            )
        return created_names

    def slots(self, clinic: Clinic) -> int:
        today = timezone.now().astimezone(clinic.tz).date()
        return services.slots_generate(
            clinic=clinic,
            date_from=today,
            date_to=today + dt.timedelta(days=settings.SOPHIA_SLOT_DAYS_AHEAD),
        )
