"""Domain events → outreach tasks. Receivers only enqueue: the work runs in the worker.

Imported from OutreachConfig.ready(), once the models are loaded."""

from __future__ import annotations

import logging

from clinics.events import domain_event
from outreach import reminders, waitlist

logger = logging.getLogger(__name__)


def on_domain_event(sender, *, clinic_id: int, name: str, payload: dict, **kwargs) -> None:
    if name == "slot.liberado" and payload.get("slot_id"):
        waitlist.offer_freed_slot.enqueue(int(payload["slot_id"]))
    elif name == "cita.cancelada" and payload.get("appointment_id"):
        reminders.withdraw_reminders.enqueue(int(payload["appointment_id"]))


def connect() -> None:
    domain_event.connect(on_domain_event, dispatch_uid="outreach.on_domain_event")
