"""The waiting list page in a real browser: a receptionist sees who waits, adds and removes."""

import pytest
from playwright.sync_api import expect

from outreach import waitlist
from outreach.models import WaitlistEntry
from tests.browser.conftest import login, shot
from tests.outreach.conftest import make_patient

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_shows_adds_and_removes_patients_on_the_waiting_list(
    live_app, page, receptionist, clinic, specialty, doctor, tmp_path
):
    waiting = make_patient(clinic, 1, full_name="Marta Lucía Rincón")
    waitlist.waitlist_join(clinic=clinic, patient=waiting, specialty=specialty)
    newcomer = make_patient(clinic, 2, full_name="Jorge Iván Peña")

    login(page, live_app, receptionist)
    page.get_by_role("link", name="Lista de espera").click()
    expect(page.get_by_role("heading", name="Lista de espera")).to_be_visible()
    expect(page.locator("#waitlist-entries")).to_contain_text("Marta Lucía Rincón")

    page.get_by_label("Número de documento del paciente").fill(newcomer.document)
    page.get_by_label("Franja del día").select_option("afternoon")
    page.get_by_role("button", name="Agregar a la lista de espera").click()
    expect(page.locator(".flash")).to_contain_text("Jorge Iván Peña quedó en la lista de espera")
    rows = page.locator("#waitlist-entries tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("Tarde")
    shot(page, tmp_path, "waitlist")

    rows.nth(0).get_by_role("button", name="Quitar").click()
    expect(page.locator(".flash")).to_contain_text("Marta Lucía Rincón salió de la lista de espera")
    expect(page.locator("#waitlist-entries tbody tr")).to_have_count(1)
    assert WaitlistEntry.objects.get(patient=waiting).status == "removed"
