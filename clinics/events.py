"""Domain events (cita.creada, slot.liberado, …) fanned out after commit.

Services call `emit()` inside their transaction; the Django signal `domain_event` fires only once
the transaction commits, so receivers (dashboard fan-out, outgoing webhooks, reminders) never see
a booking that was rolled back. Signals carry no business logic: receivers only notify.
"""

import logging

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)

# Receivers get: sender (the string "clinics"), clinic_id: int, name: str, payload: dict.
domain_event = Signal()

EVENT_NAMES = frozenset(
    {
        "cita.creada",
        "cita.cancelada",
        "cita.confirmada",
        "cita.reprogramada",
        "cita.atendida",
        "cita.no_asistio",
        "slot.liberado",
        "slot.retenido",
        # Slots of some doctors changed in bulk (schedule, absence, holiday, block):
        # payload {"doctor_ids": [...] or None for all, "starts_at", "ends_at"}.
        "agenda.actualizada",
    }
)


def emit(*, clinic_id: int, name: str, payload: dict) -> None:
    """Send `domain_event` after the current transaction commits (at once outside one)."""
    if name not in EVENT_NAMES:
        raise ValueError(f"unknown domain event {name!r}")

    def send() -> None:
        # A failing receiver must not break the others nor the caller: the data is committed.
        for receiver, result in domain_event.send_robust(
            sender="clinics", clinic_id=clinic_id, name=name, payload=payload
        ):
            if isinstance(result, Exception):
                logger.error(
                    "domain event receiver %r failed on %s",
                    receiver,
                    name,
                    exc_info=(type(result), result, result.__traceback__),
                )

    transaction.on_commit(send, robust=True)
