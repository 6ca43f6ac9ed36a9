"""WhatsApp messages the clinic sends on its own initiative (an agenda change cancelled a booking).

Messages are outbox rows (bot.whatsapp) written inside the caller's transaction: the patient is
told exactly when the cancellation commits, and the worker delivers and retries. Inside WhatsApp's
24-hour customer-service window a free text goes; outside it only an approved template may, so the
template named by SOPHIA_CANCEL_TEMPLATE is used, with the same facts as its parameters.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import formats, translation
from django.utils.translation import gettext as _

from bot import whatsapp
from bot.models import Conversation
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


def cancellations_queue(
    *,
    clinic: Clinic,
    appointments: list[Appointment],
    reason: str,
    sent_by=None,
    now: dt.datetime,
) -> tuple[int, int]:
    """Queue one message per cancelled appointment; (queued, patients without WhatsApp)."""
    queued = unreachable = 0
    with translation.override(settings.LANGUAGE_CODE):
        for appointment in appointments:
            patient = appointment.patient
            if not patient.whatsapp_id:
                unreachable += 1
                continue
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
            queued += 1
    if queued or unreachable:
        logger.info(
            "clinic %s: %d cancellation messages queued, %d patients without WhatsApp (%s)",
            clinic.pk,
            queued,
            unreachable,
            reason[:40],
        )
    return queued, unreachable
