"""The domain-event receiver of outgoing webhooks: which events a clinic subscribes to is cached,
and saving or deleting an endpoint makes the next event read them again."""

from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations import receivers, webhooks
from integrations.models import WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _allow_http(settings):
    settings.SOPHIA_WEBHOOKS_ALLOW_HTTP = True
    settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE = True


@pytest.fixture(autouse=True)
def _shared_cache(settings):
    if not settings.REDIS_URL:
        pytest.skip("the subscriptions cache needs Redis (TEST_REDIS_URL)")
    receivers.forget_local()
    yield
    receivers.forget_local()


@pytest.fixture
def clock(monkeypatch):
    """The receivers' monotonic clock, moved by hand."""
    now = [1000.0]
    monkeypatch.setattr(receivers, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def event(clinic, name="cita.creada") -> None:
    receivers.on_domain_event(
        "clinics", clinic_id=clinic.pk, name=name, payload={"appointment_id": 1}
    )


def test_it_asks_the_database_once_for_a_clinic_that_subscribes_to_nothing(clinic):
    with CaptureQueriesContext(connection) as first:
        event(clinic)
    with CaptureQueriesContext(connection) as then:
        event(clinic)
        event(clinic, "slot.liberado")
    assert len(first) == 1 and len(then) == 0
    assert not WebhookDelivery.objects.exists()


def test_it_asks_redis_at_most_once_a_second_per_clinic(clinic, clock, monkeypatch):
    reads = []
    real_get = cache.get
    monkeypatch.setattr(cache, "get", lambda *a, **k: reads.append(a[0]) or real_get(*a, **k))
    for _ in range(5):
        event(clinic)
    clock[0] += receivers.LOCAL_CACHE_SECONDS / 2
    event(clinic)
    assert len(reads) == 1
    clock[0] += receivers.LOCAL_CACHE_SECONDS
    event(clinic)
    assert len(reads) == 2


def test_it_sees_an_endpoint_another_process_saved_within_a_second(clinic, clock):
    event(clinic)  # this process keeps "nothing subscribed"
    # Another process saves an endpoint: its commit forgets the Redis entry, and this process's
    # copy is left as it was (no on-commit callback of the save runs here).
    endpoint = WebhookEndpoint.objects.create(
        clinic=clinic, url="http://127.0.0.1:9/hook", events=["cita.creada"], secret="s"
    )
    cache.delete(receivers._cache_key(clinic.pk))
    clock[0] += receivers.LOCAL_CACHE_SECONDS
    event(clinic)
    assert list(WebhookDelivery.objects.values_list("endpoint_id", flat=True)) == [endpoint.pk]
    # Switched off in another process: until this process notices, the stale copy still says
    # "subscribed", and the delivery reads the active endpoints itself — nothing is queued.
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(active=False)
    cache.delete(receivers._cache_key(clinic.pk))
    event(clinic)
    assert WebhookDelivery.objects.count() == 1


def test_it_queues_for_an_endpoint_added_after_the_subscriptions_were_cached(
    clinic, django_capture_on_commit_callbacks
):
    event(clinic)  # cached: nothing subscribed
    with django_capture_on_commit_callbacks(execute=True):
        endpoint = webhooks.endpoint_create(
            clinic=clinic, url="http://127.0.0.1:9/hook", events=["cita.creada"]
        )
    event(clinic)
    event(clinic, "cita.cancelada")  # not subscribed: no delivery
    assert list(WebhookDelivery.objects.values_list("endpoint_id", "event")) == [
        (endpoint.pk, "cita.creada")
    ]


def test_it_reads_the_subscriptions_again_when_an_endpoint_is_switched_or_deleted(
    clinic, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        endpoint = webhooks.endpoint_create(
            clinic=clinic, url="http://127.0.0.1:9/hook", events=["cita.creada"]
        )
    event(clinic)
    with django_capture_on_commit_callbacks(execute=True):
        endpoint.active = False
        endpoint.save(update_fields=["active"])
    with CaptureQueriesContext(connection) as off:
        event(clinic)
        event(clinic)
    assert len(off) == 1  # read again once, then nothing is subscribed
    with django_capture_on_commit_callbacks(execute=True):
        endpoint.active = True
        endpoint.save(update_fields=["active"])
    event(clinic)
    assert WebhookDelivery.objects.filter(endpoint=endpoint).count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        endpoint.delete()
    with CaptureQueriesContext(connection) as deleted:
        event(clinic)
        event(clinic)
    assert len(deleted) == 1 and not WebhookDelivery.objects.exists()


def test_it_asks_the_database_every_time_without_a_shared_cache(clinic, settings):
    settings.REDIS_URL = ""  # the embedded demo: each process has its own memory cache
    with CaptureQueriesContext(connection) as queries:
        event(clinic)
        event(clinic)
    assert len(queries) == 2
