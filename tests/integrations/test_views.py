"""Console pages for clinic admins: API keys, webhooks and the delivery log, patient data."""

import json

import pytest
from django.test import Client
from django.urls import reverse
from django_tasks_db.models import DBTaskResult

from clinics.models import AuditEvent, Patient
from integrations import webhooks
from integrations.keys import api_key_create
from integrations.models import ApiKey, WebhookDelivery, WebhookEndpoint
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(clinic_admin) -> Client:
    client = Client()
    client.force_login(clinic_admin)
    return client


@pytest.fixture
def other_admin(other_clinic) -> Client:
    client = Client()
    client.force_login(make_user("norte-admin", other_clinic, "admin"))
    return client


@pytest.fixture
def delivery(clinic, settings) -> WebhookDelivery:
    settings.SOPHIA_WEBHOOKS_ALLOW_HTTP = True
    settings.SOPHIA_WEBHOOKS_ALLOW_PRIVATE = True
    endpoint = webhooks.endpoint_create(
        clinic=clinic, url="http://127.0.0.1:9/hook", events=["cita.creada"]
    )
    [created] = webhooks.deliveries_create(
        clinic_id=clinic.pk, name="cita.creada", payload={"appointment_id": 1}
    )
    WebhookDelivery.objects.filter(pk=created.pk).update(status="failed", attempts=15)
    assert endpoint
    return created


def test_only_the_clinics_admins_see_the_pages(
    admin_client, receptionist, other_admin, outsider, clinic
):
    pages = [
        reverse("integrations:home"),
        reverse("integrations:deliveries"),
        reverse("integrations:patient-data"),
    ]
    for url in pages:
        assert admin_client.get(url).status_code == 200
        for user in (receptionist, outsider):
            client = Client()
            client.force_login(user)
            assert client.get(url).status_code == 404, (url, user)
    # Another clinic's admin sees their own (empty) pages, never this clinic's rows.
    api_key_create(clinic=clinic, name="Historia clínica")
    assert "Historia clínica" not in other_admin.get(pages[0]).content.decode()
    assert Client().get(pages[0]).status_code == 302  # to the login page


def test_it_creates_a_key_shows_it_once_and_revokes_it(admin_client, clinic, other_admin):
    response = admin_client.post(
        reverse("integrations:key-create"), {"name": "Historia clínica", "scope": "write"}
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(clinic=clinic)
    html = response.content.decode()
    raw = html.split('<code id="new-key">')[1].split("</code>")[0]
    assert raw.startswith(f"sk_{key.prefix}_") and key.can_write
    assert raw not in admin_client.get(reverse("integrations:home")).content.decode()
    # Another clinic's admin cannot revoke it.
    url = reverse("integrations:key-revoke", args=[key.pk])
    assert other_admin.post(url).status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
    assert admin_client.post(url).status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert (
        Client(headers={"Authorization": f"Bearer {raw}"})
        .get("/api/v1/citas/proximas/")
        .status_code
        == 401
    )


def test_it_adds_pauses_and_deletes_an_endpoint(admin_client, clinic, other_admin):
    response = admin_client.post(
        reverse("integrations:endpoint-create"),
        {"url": "https://his.example.org/sophia", "events": ["cita.creada", "slot.liberado"]},
    )
    endpoint = WebhookEndpoint.objects.get(clinic=clinic)
    assert endpoint.secret in response.content.decode()  # shown at creation
    assert endpoint.events == ["cita.creada", "slot.liberado"]
    toggle = reverse("integrations:endpoint-toggle", args=[endpoint.pk])
    assert other_admin.post(toggle).status_code == 404
    admin_client.post(toggle)
    endpoint.refresh_from_db()
    assert endpoint.active is False
    bad = admin_client.post(reverse("integrations:endpoint-create"), {"url": "nope", "events": []})
    assert bad.status_code == 200 and "field-error" in bad.content.decode()
    delete = reverse("integrations:endpoint-delete", args=[endpoint.pk])
    assert other_admin.post(delete).status_code == 404
    admin_client.post(delete)
    assert not WebhookEndpoint.objects.exists()


def test_the_delivery_log_sends_again_on_request(admin_client, other_admin, delivery):
    html = admin_client.get(reverse("integrations:deliveries")).content.decode()
    assert str(delivery.event_id) in html and "Enviar de nuevo" in html
    assert (
        str(delivery.event_id)
        not in other_admin.get(reverse("integrations:deliveries")).content.decode()
    )
    url = reverse("integrations:delivery-send-again", args=[delivery.pk])
    assert other_admin.post(url).status_code == 404
    response = admin_client.post(url, headers={"HX-Request": "true"})
    assert response.status_code == 200
    fragment = response.content.decode()
    assert fragment.strip().startswith(f'<tr id="delivery-{delivery.pk}"')
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    task = DBTaskResult.objects.filter(task_path="integrations.webhooks.deliver_webhook").latest(
        "enqueued_at"
    )
    assert task.args_kwargs["args"] == [delivery.pk, 15, True]


def test_it_exports_and_erases_a_patient_on_request(
    admin_client, other_admin, clinic, patient, clinic_admin
):
    found = admin_client.post(reverse("integrations:patient-data"), {"document": patient.document})
    assert patient.full_name in found.content.decode()
    assert (
        "Ana"
        not in other_admin.post(
            reverse("integrations:patient-data"), {"document": patient.document}
        ).content.decode()
    )

    export = reverse("integrations:patient-export", args=[patient.pk])
    assert other_admin.post(export).status_code == 404
    response = admin_client.post(export)
    assert response["Content-Disposition"].startswith("attachment;")
    assert json.loads(response.content)["patient"]["document"] == patient.document

    erase = reverse("integrations:patient-erase", args=[patient.pk])
    assert admin_client.post(erase, {}).status_code == 302  # no confirmation: nothing happens
    assert Patient.objects.get(pk=patient.pk).full_name == patient.full_name
    assert other_admin.post(erase, {"confirm": "on"}).status_code == 404
    admin_client.post(erase, {"confirm": "on"})
    assert Patient.objects.get(pk=patient.pk).document != patient.document
    assert set(
        AuditEvent.objects.filter(
            object_id=str(patient.pk), actor_id=str(clinic_admin.pk)
        ).values_list("action", flat=True)
    ) >= {"patient.export", "patient.erase"}
