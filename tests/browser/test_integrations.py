"""The Integraciones pages in a real browser: a key shown once, an endpoint, send again."""

import shutil

import pytest
from playwright.sync_api import expect

from clinics import services
from clinics.models import AppointmentSource
from integrations.models import ApiKey, WebhookDelivery, WebhookEndpoint
from tests.browser.conftest import login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_creates_a_key_adds_an_endpoint_and_sends_a_delivery_again(
    live_app, page, clinic_admin, clinic, patient, slots, tmp_path
):
    login(page, live_app, clinic_admin)
    page.get_by_role("link", name="Integraciones").click()
    expect(page.get_by_role("heading", name="Integraciones", exact=True)).to_be_visible()

    page.get_by_label("Nombre").fill("Historia clínica")
    page.get_by_label("Permisos").select_option("write")
    page.get_by_role("button", name="Crear clave").click()
    key = ApiKey.objects.get(clinic=clinic)
    expect(page.locator("#new-key")).to_contain_text(f"sk_{key.prefix}_")
    shot(page, tmp_path, "integrations-key")

    page.get_by_label("URL").fill("https://his.example.org/sophia")
    page.get_by_role("button", name="Agregar destino").click()
    endpoint = WebhookEndpoint.objects.get(clinic=clinic)
    expect(page.locator("#new-secret")).to_have_text(endpoint.secret)

    # A booking queues a delivery; the receiver does not exist, so it fails and waits to retry.
    services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slots[0].pk,
        actor=services.Actor.system("test"),
        source=AppointmentSource.STAFF,
    )
    delivery = WebhookDelivery.objects.get()
    page.get_by_role("link", name="Registro de entregas").first.click()
    row = page.locator(f"#delivery-{delivery.pk}")
    expect(row).to_contain_text("cita.creada")
    row.get_by_role("button", name="Enviar de nuevo").click()
    expect(page.locator(f"#delivery-{delivery.pk}")).to_contain_text("en cola de nuevo")
    path = shot(page, tmp_path, "integrations-deliveries")
    shutil.copy(path, "/tmp/api-integrations-deliveries.png")
    shutil.copy(tmp_path / "integrations-key.png", "/tmp/api-integrations-key.png")
