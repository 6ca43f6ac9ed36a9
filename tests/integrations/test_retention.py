"""Raw payloads, finished deliveries and stored API responses purged after their time."""

import datetime as dt

import pytest
from django.utils import timezone

from bot import periodic
from bot.models import WebhookEvent
from integrations import retention, webhooks
from integrations.keys import api_key_create
from integrations.models import IdempotentResponse, WebhookDelivery

pytestmark = pytest.mark.django_db


def test_it_purges_only_what_is_past_its_retention(clinic, settings):
    settings.SOPHIA_RAW_WEBHOOK_KEEP_DAYS = 30
    settings.SOPHIA_WEBHOOK_DELIVERIES_KEEP_DAYS = 30
    settings.SOPHIA_IDEMPOTENCY_KEEP_HOURS = 24
    settings.SOPHIA_WEBHOOKS_ALLOW_HTTP = True
    settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE = True
    now = timezone.now()
    old, recent = now - dt.timedelta(days=31), now - dt.timedelta(days=29)
    WebhookEvent.objects.create(body="{}", received_at=old)
    kept_event = WebhookEvent.objects.create(body="{}", received_at=recent)
    endpoint = webhooks.endpoint_create(
        clinic=clinic, url="http://127.0.0.1:9/x", events=["cita.creada"]
    )

    def delivery(status, created_at):
        return WebhookDelivery.objects.create(
            clinic=clinic, endpoint=endpoint, event="cita.creada", body="{}",
            status=status, created_at=created_at,
        )  # fmt: skip

    delivery(WebhookDelivery.Status.DELIVERED, old)
    still_pending = delivery(WebhookDelivery.Status.PENDING, old)  # retried until it ends
    kept_delivery = delivery(WebhookDelivery.Status.FAILED, recent)
    key, _raw = api_key_create(clinic=clinic, name="HIS")
    IdempotentResponse.objects.create(
        api_key=key,
        key="a",
        fingerprint="f",
        status_code=201,
        created_at=now - dt.timedelta(hours=25),
    )
    kept_response = IdempotentResponse.objects.create(
        api_key=key, key="b", fingerprint="f", status_code=201
    )

    assert retention.purge_expired(now) == 3

    assert list(WebhookEvent.objects.all()) == [kept_event]
    assert set(WebhookDelivery.objects.all()) == {still_pending, kept_delivery}
    assert list(IdempotentResponse.objects.all()) == [kept_response]
    assert retention.purge_expired(now) == 0


def test_the_worker_runs_the_purge_and_the_webhook_sweeper():
    names = {job.name: job for job in periodic.JOBS}
    assert names["purge_expired"].every == dt.timedelta(hours=1)
    assert names["redrive_webhooks"].every <= dt.timedelta(seconds=10)
    assert names["prune_task_results"]  # task results (SOPHIA_TASK_RESULTS_KEEP_HOURS)
