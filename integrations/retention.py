"""Retention: what is kept only for a while is purged by a periodic job (bot.periodic).

- raw WhatsApp webhook payloads (bot.WebhookEvent) after SOPHIA_RAW_WEBHOOK_KEEP_DAYS — the
  messages themselves stay, they are the conversation record;
- finished outgoing webhook deliveries (and their attempts) after
  SOPHIA_WEBHOOK_DELIVERIES_KEEP_DAYS;
- stored API responses for idempotency keys after SOPHIA_IDEMPOTENCY_KEEP_HOURS.
Finished task results are pruned by bot.periodic.prune_task_results
(SOPHIA_TASK_RESULTS_KEEP_HOURS).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from bot.models import WebhookEvent
from integrations.models import IdempotentResponse, WebhookDelivery

logger = logging.getLogger(__name__)

BATCH = 5000


def _delete_in_batches(queryset) -> int:
    """Delete in slices so one purge never holds a long transaction on a big table."""
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:BATCH])
        if not ids:
            return total
        deleted, _ = queryset.model.objects.filter(pk__in=ids).delete()
        total += deleted


def purge_expired(now: dt.datetime | None = None) -> int:
    """Delete everything past its retention time; returns how many rows went."""
    now = now or timezone.now()
    raw = WebhookEvent.objects.filter(
        received_at__lt=now - dt.timedelta(days=settings.SOPHIA_RAW_WEBHOOK_KEEP_DAYS)
    )
    deliveries = WebhookDelivery.objects.exclude(status=WebhookDelivery.Status.PENDING).filter(
        created_at__lt=now - dt.timedelta(days=settings.SOPHIA_WEBHOOK_DELIVERIES_KEEP_DAYS)
    )
    responses = IdempotentResponse.objects.filter(
        created_at__lt=now - dt.timedelta(hours=settings.SOPHIA_IDEMPOTENCY_KEEP_HOURS)
    )
    counts = {
        "raw_webhooks": _delete_in_batches(raw),
        "webhook_deliveries": _delete_in_batches(deliveries),
        "idempotent_responses": _delete_in_batches(responses),
    }
    if any(counts.values()):
        logger.info("retention purge: %s", counts, extra={"action": "retention.purge"})
    return sum(counts.values())
