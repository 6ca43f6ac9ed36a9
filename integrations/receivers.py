"""Domain-event subscribers (clinics.events): outgoing webhooks and the bookings counter.

They run after the booking's transaction committed, in the booking's process: they only count
and queue (one small INSERT per subscribed endpoint); the sending happens on a worker.

Most clinics subscribe no endpoint to most events, so which events a clinic's active endpoints
subscribe to is kept in the shared cache (Redis), and for LOCAL_CACHE_SECONDS in each process's
memory on top: an event nobody subscribes to costs a dictionary look-up, and each process reads
Redis at most once a second per clinic (a Redis read per booking was ~15 % of a booking's
Python: py-spy of 4,000 bookings in one process). Saving or deleting an endpoint forgets its
clinic's entry in Redis and in the saving process once that commits; the other processes notice
within LOCAL_CACHE_SECONDS — a new subscription receives the events of every process from at
most a second after it is saved. The Redis entry also expires after SUBSCRIPTIONS_CACHE_SECONDS,
which bounds the one race left (a read of the old endpoints stored after the change's own
forgetting). A stale entry never delivers to a switched-off endpoint: `deliveries_create` reads
the active endpoints itself. Without Redis (the embedded demo, where processes share no cache to
forget) nothing is cached: every event asks the database.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from clinics.events import domain_event
from integrations import webhooks
from integrations.models import WEBHOOK_EVENTS, WebhookEndpoint
from sophia_web import metrics

logger = logging.getLogger(__name__)

SUBSCRIPTIONS_CACHE_SECONDS = 300
LOCAL_CACHE_SECONDS = 1.0

# clinic id → (monotonic deadline, its subscribed events): this process's copy of the Redis entry.
# A plain dict (reads and writes are atomic under the GIL): no cache library is a dependency, and
# the entries are a handful of clinics' small frozensets.
_local: dict[int, tuple[float, frozenset[str]]] = {}


def _cache_key(clinic_id: int) -> str:
    return f"integrations:webhook-events:{clinic_id}"


def subscribed_events(clinic_id: int) -> frozenset[str] | None:
    """The events some active endpoint of the clinic subscribes to; None when not cached (no
    shared cache), and the caller must ask the database."""
    if not settings.REDIS_URL:
        return None
    now = time.monotonic()
    held = _local.get(clinic_id)
    if held is not None and held[0] > now:
        return held[1]
    events = _shared_subscribed_events(clinic_id)
    if events is not None:
        _local[clinic_id] = (now + LOCAL_CACHE_SECONDS, events)
    return events


def _shared_subscribed_events(clinic_id: int) -> frozenset[str] | None:
    key = _cache_key(clinic_id)
    try:
        events = cache.get(key)
    except Exception:  # Redis blinked: the database answers, no event is lost
        logger.warning("webhook subscriptions of clinic %s: cache unreadable", clinic_id)
        return None
    if events is None:
        events = frozenset(
            name
            for endpoint_events in WebhookEndpoint.objects.filter(
                clinic_id=clinic_id, active=True
            ).values_list("events", flat=True)
            if isinstance(endpoint_events, list)
            for name in endpoint_events
            if isinstance(name, str)
        )
        try:
            cache.set(key, events, SUBSCRIPTIONS_CACHE_SECONDS)
        except Exception:
            logger.warning("webhook subscriptions of clinic %s: not cached", clinic_id)
    return events


@receiver(post_save, sender=WebhookEndpoint, dispatch_uid="integrations.endpoint_saved")
@receiver(post_delete, sender=WebhookEndpoint, dispatch_uid="integrations.endpoint_deleted")
def forget_subscriptions(sender, instance: WebhookEndpoint, **kwargs) -> None:
    """An endpoint changed: its clinic's subscriptions are read again once this commits."""
    if not settings.REDIS_URL:
        return
    clinic_id = instance.clinic_id

    def forget() -> None:
        # Redis first: a read in between refills this process's copy from the database.
        cache.delete(_cache_key(clinic_id))
        _local.pop(clinic_id, None)

    transaction.on_commit(forget, robust=True)


def forget_local() -> None:
    """Drop this process's copies (tests: a flushed Redis must not leave them behind)."""
    _local.clear()


@receiver(domain_event, dispatch_uid="integrations.on_domain_event")
def on_domain_event(sender, *, clinic_id: int, name: str, payload: dict, **kwargs) -> None:
    if name == "cita.creada":
        metrics.CITAS_AGENDADAS.labels(clinic=str(clinic_id)).inc()
    if name not in WEBHOOK_EVENTS:
        return
    subscribed = subscribed_events(clinic_id)
    if subscribed is not None and name not in subscribed:
        return
    webhooks.deliveries_create(clinic_id=clinic_id, name=name, payload=payload)
