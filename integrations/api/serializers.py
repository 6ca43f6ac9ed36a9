"""Request and response shapes of /api/v1/ (also the OpenAPI schema's components)."""

from __future__ import annotations

from django.utils import timezone
from rest_framework import serializers

from clinics.models import Appointment, Patient, Slot
from clinics.selectors import MAX_PAGE_SIZE as SELECTOR_MAX_PAGE_SIZE

MAX_PAGE_SIZE = min(50, SELECTOR_MAX_PAGE_SIZE)


def local(value, clinic) -> str:
    return timezone.localtime(value, clinic.tz).isoformat()


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class DoctorRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class SpecialtyRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    slug = serializers.CharField()
    name = serializers.CharField()


class SlotSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    start_at = serializers.CharField(help_text="ISO 8601 in the clinic's time zone")
    end_at = serializers.CharField()
    doctor = DoctorRefSerializer()

    @staticmethod
    def of(slot: Slot, clinic) -> dict:
        return {
            "id": slot.pk,
            "start_at": local(slot.start_at, clinic),
            "end_at": local(slot.end_at, clinic),
            "doctor": {"id": slot.doctor_id, "name": slot.doctor.full_name},
        }


class SlotPageSerializer(serializers.Serializer):
    results = SlotSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class AvailableQuerySerializer(serializers.Serializer):
    specialty = serializers.CharField(required=False, help_text="specialty slug or id")
    doctor = serializers.IntegerField(required=False, min_value=1, max_value=2**62)
    date_from = serializers.DateField(required=False)
    date_to = serializers.DateField(required=False)
    cursor = serializers.CharField(required=False, max_length=500)
    page_size = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_PAGE_SIZE, default=10
    )

    def validate(self, data: dict) -> dict:
        if data.get("date_from") and data.get("date_to") and data["date_to"] < data["date_from"]:
            raise serializers.ValidationError({"date_to": "must not be before date_from"})
        return data


class HoldRequestSerializer(serializers.Serializer):
    holder = serializers.CharField(
        required=False,
        max_length=60,
        default="default",
        help_text="your own name for who holds it; book with the same holder",
    )
    minutes = serializers.IntegerField(required=False, min_value=1, max_value=60)


class HoldSerializer(serializers.Serializer):
    slot_id = serializers.IntegerField()
    holder = serializers.CharField()
    held_until = serializers.DateTimeField()


class AppointmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    start_at = serializers.CharField()
    end_at = serializers.CharField()
    slot_id = serializers.IntegerField()
    patient_id = serializers.IntegerField()
    doctor = DoctorRefSerializer()
    specialty = SpecialtyRefSerializer(allow_null=True)
    source = serializers.CharField()
    notes = serializers.CharField()
    cancel_reason = serializers.CharField()
    rescheduled_from_id = serializers.IntegerField(allow_null=True)

    @staticmethod
    def of(appointment: Appointment, clinic) -> dict:
        specialty = appointment.specialty
        return {
            "id": appointment.pk,
            "status": appointment.status,
            "start_at": local(appointment.start_at, clinic),
            "end_at": local(appointment.end_at, clinic),
            "slot_id": appointment.slot_id,
            "patient_id": appointment.patient_id,
            "doctor": {"id": appointment.doctor_id, "name": appointment.doctor.full_name},
            "specialty": (
                {"id": specialty.pk, "slug": specialty.slug, "name": specialty.name}
                if specialty
                else None
            ),
            "source": appointment.source,
            "notes": appointment.patient_notes,
            "cancel_reason": appointment.cancel_reason,
            "rescheduled_from_id": appointment.rescheduled_from_id,
        }


class AppointmentPageSerializer(serializers.Serializer):
    results = AppointmentSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class AppointmentCreateSerializer(serializers.Serializer):
    slot_id = serializers.IntegerField(min_value=1, max_value=2**62)
    patient_id = serializers.IntegerField(required=False, min_value=1, max_value=2**62)
    patient_document = serializers.RegexField(r"^\d{8,15}$", required=False)
    specialty = serializers.CharField(required=False, help_text="specialty slug or id")
    notes = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    holder = serializers.CharField(required=False, max_length=60)

    def validate(self, data: dict) -> dict:
        if ("patient_id" in data) == ("patient_document" in data):
            raise serializers.ValidationError("give exactly one of patient_id, patient_document")
        return data


class CancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=300, default="")


class RescheduleSerializer(serializers.Serializer):
    slot_id = serializers.IntegerField(min_value=1, max_value=2**62)
    holder = serializers.CharField(required=False, max_length=60)


class UpcomingQuerySerializer(serializers.Serializer):
    dias = serializers.IntegerField(required=False, min_value=1, max_value=90, default=7)
    cursor = serializers.CharField(required=False, max_length=500)
    page_size = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_PAGE_SIZE, default=20
    )


class PatientQuerySerializer(serializers.Serializer):
    documento = serializers.RegexField(r"^\d{8,15}$", help_text="document number, 8–15 digits")


class PatientSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    full_name = serializers.CharField()
    birth_date = serializers.DateField(allow_null=True)
    whatsapp = serializers.CharField(help_text="masked")
    upcoming = AppointmentSerializer(many=True)

    @staticmethod
    def of(patient: Patient, upcoming: list[Appointment], clinic) -> dict:
        return {
            "id": patient.pk,
            "full_name": patient.full_name,
            "birth_date": patient.birth_date,
            "whatsapp": f"…{patient.whatsapp_id[-4:]}" if patient.whatsapp_id else "",
            "upcoming": [AppointmentSerializer.of(a, clinic) for a in upcoming],
        }


class PatientCreateSerializer(serializers.Serializer):
    document = serializers.RegexField(r"^\d{8,15}$")
    full_name = serializers.CharField(min_length=3, max_length=200)
    birth_date = serializers.DateField()
    whatsapp_id = serializers.RegexField(r"^\d{6,20}$", required=False, default="")


class ServiceStatusSerializer(serializers.Serializer):
    status = serializers.CharField()
    latency_ms = serializers.FloatField(required=False)


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField()
    timestamp = serializers.DateTimeField()
    services = serializers.DictField(child=ServiceStatusSerializer())


class DetailedHealthSerializer(HealthSerializer):
    outbox = serializers.DictField()
    outgoing_webhooks = serializers.DictField()
    worker = serializers.DictField()
    metrics = serializers.DictField()


class RealtimeStatsSerializer(serializers.Serializer):
    timestamp = serializers.DateTimeField()
    conversaciones_activas = serializers.IntegerField()
    conversaciones_con_personal = serializers.IntegerField()
    piden_asesor = serializers.IntegerField()
    citas_hoy = serializers.DictField(child=serializers.IntegerField())
    slots_libres_hoy = serializers.IntegerField()
    citas_agendadas_ultima_hora = serializers.IntegerField()
