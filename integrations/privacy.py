"""A patient's data on request (health-data law): exported as JSON, or erased; both audited.

Erasing anonymises instead of deleting: the clinic keeps its appointment history for statistics
(times, doctor, specialty, status) but nothing that identifies the person — name, document,
birth date, WhatsApp number, reported symptoms, conversations and their raw payloads go.
Upcoming appointments are cancelled first (their slots freed for others).
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from bot import state
from bot.models import Conversation, Message, WebhookEvent
from clinics import services
from clinics.models import UPCOMING_STATUSES, Appointment, AuditEvent, Clinic, Patient

logger = logging.getLogger(__name__)

ERASED_NAME = "Paciente anonimizado"


def _conversations(clinic: Clinic, patient: Patient):
    numbers = Q(patient=patient)
    if patient.whatsapp_id:
        numbers |= Q(wa_id=patient.whatsapp_id)
    return Conversation.objects.filter(numbers, clinic=clinic)


def _audit(clinic: Clinic, actor: services.Actor, action: str, patient_id: int, after: dict):
    AuditEvent.objects.create(
        clinic=clinic,
        actor_type=actor.type,
        actor_id=str(actor.id)[:64],
        actor_label=str(actor.label)[:200],
        action=action,
        object_type="patient",
        object_id=str(patient_id),
        before=None,
        after=after,
        at=timezone.now(),
    )


def patient_export(*, clinic: Clinic, patient_id: int, actor: services.Actor) -> dict:
    """Everything Sophia holds about one of the clinic's patients (Patient.DoesNotExist else)."""
    patient = Patient.objects.get(clinic=clinic, pk=patient_id)
    appointments = (
        Appointment.objects.filter(clinic=clinic, patient=patient)
        .select_related("doctor", "specialty")
        .order_by("start_at", "pk")
    )
    conversations = _conversations(clinic, patient).prefetch_related("messages")
    data = {
        "exported_at": timezone.now().isoformat(),
        "clinic": {"id": clinic.pk, "name": clinic.name},
        "patient": {
            "id": patient.pk,
            "document": patient.document,
            "full_name": patient.full_name,
            "birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
            "whatsapp_id": patient.whatsapp_id,
            "created_at": patient.created_at.isoformat(),
        },
        "appointments": [
            {
                "id": a.pk,
                "start_at": a.start_at.isoformat(),
                "end_at": a.end_at.isoformat(),
                "doctor": a.doctor.full_name,
                "specialty": a.specialty.name if a.specialty else None,
                "status": a.status,
                "reported_symptoms": a.patient_notes,
                "source": a.source,
                "cancel_reason": a.cancel_reason,
                "created_at": a.created_at.isoformat(),
            }
            for a in appointments
        ],
        "conversations": [
            {
                "id": c.pk,
                "whatsapp_id": c.wa_id,
                "created_at": c.created_at.isoformat(),
                "messages": [
                    {
                        "direction": m.direction,
                        "kind": m.kind,
                        "text": m.text,
                        "status": m.status,
                        "created_at": m.created_at.isoformat(),
                    }
                    for m in c.messages.all()
                ],
            }
            for c in conversations
        ],
        "audit": [
            {"at": e.at.isoformat(), "action": e.action, "actor": e.actor_label}
            for e in AuditEvent.objects.filter(
                clinic=clinic, object_type="patient", object_id=str(patient.pk)
            ).order_by("at")
        ],
    }
    _audit(clinic, actor, "patient.export", patient.pk, {"patient": patient.masked_document})
    logger.info("patient %s data exported actor=%s", patient.pk, actor.type)
    return data


def patient_erase(*, clinic: Clinic, patient_id: int, actor: services.Actor) -> Patient:
    """Anonymise one of the clinic's patients; returns the anonymised row."""
    patient = Patient.objects.get(clinic=clinic, pk=patient_id)
    for appointment_id in Appointment.objects.filter(
        clinic=clinic, patient=patient, status__in=UPCOMING_STATUSES, start_at__gt=timezone.now()
    ).values_list("pk", flat=True):
        services.appointment_cancel(
            clinic=clinic, appointment_id=appointment_id, actor=actor, reason="patient data erased"
        )
    numbers = {patient.whatsapp_id} if patient.whatsapp_id else set()
    with transaction.atomic():
        patient = Patient.objects.select_for_update().get(pk=patient.pk)
        conversations = _conversations(clinic, patient)
        numbers |= set(conversations.values_list("wa_id", flat=True))
        event_ids = set(
            Message.objects.filter(conversation__in=conversations)
            .exclude(webhook_event=None)
            .values_list("webhook_event_id", flat=True)
        )
        conversations.delete()  # their messages go with them
        WebhookEvent.objects.filter(pk__in=event_ids).delete()
        Appointment.objects.filter(patient=patient).update(patient_notes="")
        # Earlier audit entries about the patient named them: keep what happened, not who.
        AuditEvent.objects.filter(
            clinic=clinic, object_type="patient", object_id=str(patient.pk)
        ).update(before=None, after=None)
        patient.document = f"000{patient.pk:012d}"
        patient.full_name = ERASED_NAME
        patient.birth_date = None
        patient.whatsapp_id = ""
        patient.save(update_fields=["document", "full_name", "birth_date", "whatsapp_id"])
        _audit(clinic, actor, "patient.erase", patient.pk, {"erased": True})
    for number in numbers:
        state.forget_session(number)
    logger.info("patient %s data erased actor=%s", patient.pk, actor.type)
    return patient
