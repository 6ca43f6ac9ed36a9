"""Domain-event subscribers (clinics.events): outgoing webhooks and the bookings counter.

They run after the booking's transaction committed, in the booking's process: they only count
and queue (one small INSERT per subscribed endpoint); the sending happens on a worker.
"""

from django.dispatch import receiver

from clinics.events import domain_event
from integrations import webhooks
from sophia_web import metrics


@receiver(domain_event, dispatch_uid="integrations.on_domain_event")
def on_domain_event(sender, *, clinic_id: int, name: str, payload: dict, **kwargs) -> None:
    if name == "cita.creada":
        metrics.CITAS_AGENDADAS.labels(clinic=str(clinic_id)).inc()
    webhooks.deliveries_create(clinic_id=clinic_id, name=name, payload=payload)
