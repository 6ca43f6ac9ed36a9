"""WhatsApp messages a clinic sends on its own initiative: an agenda change (a doctor's absence,
a new schedule) cancelled a booking and the admin chose to tell the patient.

clinics.services marks such cancellations in the `cita.cancelada` domain event
(`payload["notify_patient"]`); this receiver, run once the cancellation has committed, queues one
outbox row per patient (bot.whatsapp) and the worker delivers and retries it. Inside WhatsApp's
24-hour customer-service window a free text goes; outside it only an approved template may, so the
template named by SOPHIA_CANCEL_TEMPLATE is used, with the same facts as its parameters.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.dispatch import receiver
from django.utils import formats, timezone, translation
from django.utils.translation import gettext as _

from bot import whatsapp
from bot.models import Conversation
from clinics.events import domain_event
from clinics.models import Appointment, Clinic

logger = logging.getLogger(__name__)

SERVICE_WINDOW = dt.timedelta(hours=24)


def in_service_window(conversation: Conversation, now: dt.datetime) -> bool:
    """True while free text may still reach the patient (24 h after their last message)."""
    last = conversation.last_inbound_at
    return last is not None and now - last < SERVICE_WINDOW


def _facts(clinic: Clinic, appointment: Appointment) -> dict[str, str]:
    local = appointment.start_at.astimezone(clinic.tz)
    return {
        "name": appointment.patient.full_name.split()[0],
        "date": formats.date_format(local, "l j \\d\\e F"),
        "time": formats.time_format(local, "H:i"),
        "doctor": appointment.doctor.full_name,
    }


def cancellation_text(clinic: Clinic, appointment: Appointment) -> str:
    facts = _facts(clinic, appointment)
    return (
        _(
            "Hello %(name)s. We are sorry: your appointment on %(date)s at %(time)s with "
            "%(doctor)s has been cancelled because the doctor will not be available. "
            'Reply "quiero una cita" and we will offer you another time right away.'
        )
        % facts
    )


def cancellation_queue(
    *, clinic: Clinic, appointment: Appointment, sent_by=None, now: dt.datetime
) -> bool:
    """Queue the message for one cancelled appointment; False when the patient has no WhatsApp."""
    patient = appointment.patient
    if not patient.whatsapp_id:
        return False
    with translation.override(settings.LANGUAGE_CODE):
        conversation, _created = Conversation.objects.get_or_create(
            clinic=clinic, wa_id=patient.whatsapp_id, defaults={"patient": patient}
        )
        text = cancellation_text(clinic, appointment)
        if in_service_window(conversation, now):
            whatsapp.queue_payloads(
                conversation,
                [
                    {
                        "messaging_product": "whatsapp",
                        "recipient_type": "individual",
                        "to": conversation.wa_id,
                        "type": "text",
                        "text": {"preview_url": False, "body": text},
                    }
                ],
                sent_by=sent_by,
            )
        else:
            facts = _facts(clinic, appointment)
            whatsapp.queue_template(
                conversation,
                settings.SOPHIA_CANCEL_TEMPLATE,
                language=settings.SOPHIA_CANCEL_TEMPLATE_LANGUAGE,
                components=[
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": facts[key]}
                            for key in ("name", "date", "time", "doctor")
                        ],
                    }
                ],
                text=text,
            )
    return True


@receiver(domain_event, dispatch_uid="bot.notices.cancellations")
def tell_patients_of_cancellations(
    sender, clinic_id: int, name: str, payload: dict, **kwargs
) -> None:
    if name != "cita.cancelada" or not payload.get("notify_patient"):
        return
    appointment = (
        Appointment.objects.select_related("clinic", "patient", "doctor")
        .filter(pk=payload.get("appointment_id"), clinic_id=clinic_id)
        .first()
    )
    if appointment is None:
        return
    user_id = payload.get("notified_by")
    sent_by = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    queued = cancellation_queue(
        clinic=appointment.clinic, appointment=appointment, sent_by=sent_by, now=timezone.now()
    )
    logger.info(
        "clinic %s: cancellation of appointment %s %s",
        clinic_id,
        appointment.pk,
        "queued for WhatsApp" if queued else "not sent (no WhatsApp number)",
    )
