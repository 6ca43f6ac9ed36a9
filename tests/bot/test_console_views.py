"""The console's entry: login (throttled), `/`, the clinic switcher."""

import pytest
from django.urls import reverse

from clinics import access
from clinics.models import StaffMembership
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def login(client, user):
    response = client.post(
        reverse("login"), {"username": user.username, "password": PASSWORD}, REMOTE_ADDR="10.0.0.1"
    )
    assert response.status_code == 302, response.content[:500]
    return response


def test_it_sends_anonymous_visitors_to_a_spanish_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == reverse("login")
    page = client.get(reverse("login"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Entra a la consola" in html
    assert "Nombre de usuario" in html
    assert 'lang="es"' in html


def test_it_opens_the_console_for_staff_after_login(client, receptionist, clinic):
    response = login(client, receptionist)
    assert response["Location"] == reverse("console:home")
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Bandeja" in html
    assert clinic.name in html
    assert "Cerrar sesión" in html


def test_it_tells_a_user_without_clinic_there_is_no_console(client, outsider):
    login(client, outsider)
    response = client.get("/")
    assert response.status_code == 403
    assert "aún no tiene clínica" in response.content.decode()


def test_it_locks_a_username_out_after_five_failures(client, receptionist):
    for _ in range(5):
        client.post(
            reverse("login"),
            {"username": receptionist.username, "password": "wrong"},
            REMOTE_ADDR="10.0.0.9",
        )
    response = client.post(
        reverse("login"),
        {"username": receptionist.username, "password": PASSWORD},
        REMOTE_ADDR="10.0.0.9",
    )
    assert response.status_code == 429
    assert "Demasiados intentos" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_it_switches_among_the_users_clinics_only(client, clinic, other_clinic, receptionist):
    StaffMembership.objects.create(user=receptionist, clinic=other_clinic)
    login(client, receptionist)
    page = client.get("/").content.decode()
    assert 'id="clinic-switch"' in page
    response = client.post(
        reverse("console:switch-clinic"), {"clinic": clinic.pk, "next": "https://evil.example/"}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("console:home")
    assert client.session[access.SESSION_KEY] == clinic.pk


def test_it_refuses_to_switch_to_another_clinics_console(client, clinic, other_clinic, other_staff):
    login(client, other_staff)
    response = client.post(reverse("console:switch-clinic"), {"clinic": clinic.pk})
    assert response.status_code == 404
    assert client.session[access.SESSION_KEY] == other_clinic.pk


def test_it_changes_the_password_in_spanish(client, receptionist):
    login(client, receptionist)
    page = client.get(reverse("password_change"))
    assert "Contraseña antigua" in page.content.decode()
    response = client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "otra-clave-123",
            "new_password2": "otra-clave-123",
        },
    )
    assert response.status_code == 302
    receptionist.refresh_from_db()
    assert receptionist.check_password("otra-clave-123")
