"""The console shell in a real browser: Spanish login, the console, htmx and its ws extension."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_it_logs_in_and_shows_the_console_with_htmx_loaded(live_app, page, receptionist, clinic):
    page.goto(live_app.url + "/")
    expect(page.get_by_role("heading", name="Entra a la consola")).to_be_visible()
    login(page, live_app, receptionist)
    expect(page.get_by_role("navigation", name="Secciones")).to_contain_text("Bandeja")
    expect(page.locator(".topbar")).to_contain_text(clinic.name)
    # htmx and its ws extension come from django-htmx's static files (no CDN).
    assert page.evaluate("typeof htmx.createWebSocket") == "function"
    assert page.evaluate("typeof window.SophiaLive") == "object"


def test_it_shows_the_spanish_error_for_a_wrong_password(live_app, page, receptionist):
    page.goto(live_app.url + "/cuenta/entrar/")
    page.get_by_label("Nombre de usuario").fill(receptionist.username)
    page.get_by_label("Contraseña").fill("no-es-esta")
    page.get_by_role("button", name="Entrar").click()
    expect(page.get_by_role("alert")).to_contain_text("clave correctos")
