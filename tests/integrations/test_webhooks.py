"""Outgoing webhooks against a local HTTP receiver: signature, retries, delivery log."""

import datetime as dt
import json
import socket
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from clinics import services
from clinics.events import emit
from clinics.models import AppointmentSource
from integrations import webhooks
from integrations.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from sophia_web import metrics

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _allow_http(settings):
    settings.SOPHIA_WEBHOOKS_ALLOW_HTTP = True
    settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE = True


@pytest.fixture
def endpoint(clinic, receiver):
    ep = webhooks.endpoint_create(
        clinic=clinic, url=receiver.url, events=list(webhooks.WEBHOOK_EVENTS)
    )
    receiver.secret = ep.secret
    return ep


def book(clinic, patient, slot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.appointment_book(
            clinic=clinic,
            patient=patient,
            slot_id=slot.pk,
            actor=services.Actor.system("test"),
            source=AppointmentSource.STAFF,
        )


def counter(metric, **labels) -> float:
    metric = metric.labels(**labels) if labels else metric
    return metric._value.get()


def test_it_queues_one_delivery_per_subscribed_endpoint_once_the_booking_commits(
    clinic, other_clinic, patient, slots, receiver, django_capture_on_commit_callbacks
):
    mine = webhooks.endpoint_create(clinic=clinic, url=receiver.url, events=["cita.creada"])
    webhooks.endpoint_create(clinic=clinic, url=receiver.url, events=["cita.cancelada"])
    webhooks.endpoint_create(clinic=other_clinic, url=receiver.url, events=["cita.creada"])
    WebhookEndpoint.objects.create(
        clinic=clinic, url=receiver.url, events=["cita.creada"], secret="x", active=False
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        appointment = services.appointment_book(
            clinic=clinic,
            patient=patient,
            slot_id=slots[0].pk,
            actor=services.Actor.system("test"),
            source=AppointmentSource.STAFF,
        )
        assert not WebhookDelivery.objects.exists()  # nothing before the commit
    for callback in callbacks:
        callback()
    delivery = WebhookDelivery.objects.get()
    assert delivery.endpoint == mine and delivery.event == "cita.creada"
    body = json.loads(delivery.body)
    assert body["id"] == str(delivery.event_id)
    assert body["data"]["appointment_id"] == appointment.pk
    assert body["clinic"] == {"id": clinic.pk, "slug": clinic.slug}
    # …and a task to send it on a worker.
    task = DBTaskResult.objects.get(task_path="integrations.webhooks.deliver_webhook")
    assert task.args_kwargs["args"][:2] == [delivery.pk, 0]


def test_it_costs_a_booking_one_query_when_the_clinic_has_no_endpoint(clinic):
    with CaptureQueriesContext(connection) as queries:
        assert webhooks.deliveries_create(clinic_id=clinic.pk, name="cita.creada", payload={}) == []
    assert len(queries) == 1


def test_it_delivers_a_signed_event_with_a_timestamp_and_event_id(
    clinic, patient, slots, endpoint, receiver, django_capture_on_commit_callbacks
):
    book(clinic, patient, slots[0], django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    before = counter(metrics.OUTGOING_WEBHOOK_DELIVERIES, outcome="delivered")

    assert webhooks.delivery_attempt(delivery.pk, 0) is True

    [request] = receiver.requests
    assert request.signature_ok
    assert request.headers[webhooks.EVENT_HEADER] == "cita.creada"
    assert request.headers[webhooks.EVENT_ID_HEADER] == str(delivery.event_id)
    assert request.headers[webhooks.SIGNATURE_HEADER].startswith("sha256=")
    assert request.json["event"] == "cita.creada"
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert delivery.attempts == 1 and delivery.last_status_code == 200
    assert counter(metrics.OUTGOING_WEBHOOK_DELIVERIES, outcome="delivered") == before + 1
    # Delivered is final: the same attempt again sends nothing.
    assert webhooks.delivery_attempt(delivery.pk, 0) is None
    assert len(receiver.requests) == 1


def test_it_retries_failures_with_growing_backoff_then_delivers(
    clinic, patient, slots, endpoint, receiver, django_capture_on_commit_callbacks
):
    receiver.fail_next(3, status=503)
    book(clinic, patient, slots[0], django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    failures = counter(metrics.OUTGOING_WEBHOOK_FAILURES)
    delays = []
    for attempt in range(3):
        assert webhooks.delivery_attempt(delivery.pk, attempt) is False
        delivery.refresh_from_db()
        assert delivery.status == WebhookDelivery.Status.PENDING
        assert delivery.last_status_code == 503
        delays.append((delivery.next_attempt_at - timezone.now()).total_seconds())
    assert 25 < delays[0] < 35 and delays[0] < delays[1] < delays[2]
    assert counter(metrics.OUTGOING_WEBHOOK_FAILURES) == failures + 3

    # Not due yet: the sweeper leaves it alone; once due it queues the next attempt.
    assert webhooks.deliveries_redrive() == 0
    later = delivery.next_attempt_at + dt.timedelta(seconds=1)
    assert webhooks.deliveries_redrive(now=later) == 1
    assert webhooks.delivery_attempt(delivery.pk, 3) is True
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED and delivery.attempts == 4
    # Every try is in the delivery log, and every one carried the same event id.
    log = list(WebhookAttempt.objects.filter(delivery=delivery).order_by("at"))
    assert [a.status_code for a in log] == [503, 503, 503, 200]
    assert {r.event_id for r in receiver.requests} == {str(delivery.event_id)}
    assert len(receiver.applied) == 1


def test_it_gives_up_after_24_hours_and_staff_can_send_it_again(
    clinic, patient, slots, endpoint, receiver, django_capture_on_commit_callbacks
):
    book(clinic, patient, slots[0], django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - dt.timedelta(hours=23, minutes=59), attempts=12
    )
    receiver.fail_next(1, status=500)
    failed = counter(metrics.OUTGOING_WEBHOOK_DELIVERIES, outcome="failed")

    assert webhooks.delivery_attempt(delivery.pk, 12) is False

    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert counter(metrics.OUTGOING_WEBHOOK_DELIVERIES, outcome="failed") == failed + 1
    assert webhooks.deliveries_redrive(now=timezone.now() + dt.timedelta(days=2)) == 0

    webhooks.delivery_send_again(clinic=clinic, delivery_id=delivery.pk)
    task = DBTaskResult.objects.filter(task_path="integrations.webhooks.deliver_webhook").latest(
        "enqueued_at"
    )
    assert task.args_kwargs["args"] == [delivery.pk, 13, True]
    assert webhooks.delivery_attempt(delivery.pk, 13, manual=True) is True
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert WebhookAttempt.objects.filter(delivery=delivery, manual=True).count() == 1


def test_it_refuses_to_send_another_clinics_delivery_again(
    clinic, other_clinic, patient, slots, endpoint, django_capture_on_commit_callbacks
):
    book(clinic, patient, slots[0], django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    with pytest.raises(WebhookDelivery.DoesNotExist):
        webhooks.delivery_send_again(clinic=other_clinic, delivery_id=delivery.pk)


@pytest.mark.django_db(transaction=True)
def test_it_sends_one_attempt_once_however_many_workers_try(
    clinic, patient, slots, endpoint, receiver, django_capture_on_commit_callbacks
):
    book(clinic, patient, slots[0], django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    results = []
    start = threading.Barrier(4)

    def worker():
        start.wait()
        try:
            results.append(webhooks.delivery_attempt(delivery.pk, 0))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [None, None, None, True]
    assert len(receiver.requests) == 1


def test_it_redrives_an_attempt_whose_worker_died_mid_request(
    clinic, patient, slots, endpoint, receiver, django_capture_on_commit_callbacks
):
    book(clinic, patient, slots[0], django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()
    now = timezone.now()
    # What a worker killed during the POST leaves: a lease, the attempt not counted.
    lease = dt.timedelta(seconds=webhooks.lease_seconds())
    WebhookDelivery.objects.filter(pk=delivery.pk).update(leased_until=now + lease)
    assert webhooks.deliveries_redrive(now=now) == 0  # the lease still runs
    assert webhooks.delivery_attempt(delivery.pk, 0) is None
    # Once the lease has run out the sweeper queues the same attempt again, at once.
    after_lease = now + lease + dt.timedelta(seconds=1)
    assert webhooks.deliveries_redrive(now=after_lease) == 1
    delivery.refresh_from_db()
    assert delivery.leased_until is None and delivery.attempts == 0
    assert webhooks.delivery_attempt(delivery.pk, 0) is True
    assert len(receiver.applied) == 1


def test_it_subscribes_only_to_the_five_booking_events(clinic, receiver):
    with pytest.raises(webhooks.WebhookError):
        webhooks.endpoint_create(clinic=clinic, url=receiver.url, events=["cita.atendida"])
    with pytest.raises(webhooks.WebhookError):
        webhooks.endpoint_create(clinic=clinic, url=receiver.url, events=[])
    ep = webhooks.endpoint_create(clinic=clinic, url=receiver.url, events=["cita.creada"])
    emit(clinic_id=clinic.pk, name="slot.retenido", payload={})
    assert webhooks.deliveries_create(clinic_id=clinic.pk, name="slot.retenido", payload={}) == []
    assert ep.secret.startswith("whsec_")


def test_it_requires_https_unless_allowed(clinic, settings):
    settings.SOPHIA_WEBHOOKS_ALLOW_HTTP = False
    with pytest.raises(webhooks.WebhookError):
        webhooks.endpoint_create(clinic=clinic, url="http://example.org/x", events=["cita.creada"])
    webhooks.endpoint_create(clinic=clinic, url="https://example.org/x", events=["cita.creada"])


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.9:8443/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://localhost/hook",
        "https://redis.internal/hook",
        "https:///no-host",
    ],
)
def test_it_refuses_endpoints_inside_the_network_unless_allowed(clinic, settings, url):
    settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE = False
    with pytest.raises(webhooks.WebhookError):
        webhooks.endpoint_create(clinic=clinic, url=url, events=["cita.creada"])
    assert not WebhookEndpoint.objects.exists()


def test_it_does_not_post_to_a_name_that_resolves_inside_the_network(
    clinic, patient, slots, endpoint, receiver, settings, monkeypatch,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    """A public-looking name saved earlier that now resolves to a private address (or the
    receiver itself, on loopback): the attempt fails before any connection, and is retried."""
    settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE = False
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(url="https://hooks.example.org/x")
    resolved = []

    def getaddrinfo(host, port, *args, **kwargs):
        resolved.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", getaddrinfo)
    book(clinic, patient, slots[0], django_capture_on_commit_callbacks)
    delivery = WebhookDelivery.objects.get()

    assert webhooks.delivery_attempt(delivery.pk, 0) is False

    assert resolved == ["hooks.example.org"] and receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert "non-public address" in delivery.last_error


def test_receivers_can_reject_replays_and_forgeries():
    body = b'{"id":"1"}'
    now = 1_800_000_000
    header = webhooks.signature("whsec_a", now, body)
    assert webhooks.signature_verify(
        secret="whsec_a", body=body, header=header, timestamp=str(now), now=now + 10
    )
    assert not webhooks.signature_verify(
        secret="whsec_a", body=body, header=header, timestamp=str(now), now=now + 3600
    )
    assert not webhooks.signature_verify(
        secret="whsec_b", body=body, header=header, timestamp=str(now), now=now
    )
    assert not webhooks.signature_verify(
        secret="whsec_a", body=body + b" ", header=header, timestamp=str(now), now=now
    )
    assert not webhooks.signature_verify(
        secret="whsec_a", body=body, header=header, timestamp="soon", now=now
    )
