"""The console's waiting list page: per specialty, longest waiting first; add and remove through
the service; another clinic's staff get 404 for this clinic's entries."""

import datetime as dt

import pytest
from django.urls import reverse

from clinics import services
from clinics.models import Specialty
from outreach import waitlist
from outreach.models import WaitlistEntry
from tests.outreach.conftest import make_patient

pytestmark = pytest.mark.django_db


@pytest.fixture
def entries(clock, clinic, specialty):
    first, second = make_patient(clinic, 1), make_patient(clinic, 2, full_name="Bruno Díaz")
    made = []
    for patient in (first, second):
        made.append(waitlist.waitlist_join(clinic=clinic, patient=patient, specialty=specialty)[0])
        clock.shift(dt.timedelta(minutes=10))
    return made


def test_it_lists_the_specialtys_waitlist_longest_waiting_first(client, receptionist, entries):
    client.force_login(receptionist)
    page = client.get(reverse("waitlist:list"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Lista de espera" in html
    assert html.index("Paciente Número 1") < html.index("Bruno Díaz")
    assert 'href="/lista-de-espera/"' in html  # the console's nav shows the section


def test_it_shows_that_a_patient_stopped_reminders(client, receptionist, entries):
    patient = entries[0].patient
    patient.reminders_opted_out_at = patient.created_at
    patient.save()
    client.force_login(receptionist)
    assert "Sin recordatorios" in client.get(reverse("waitlist:list")).content.decode()


def test_it_adds_a_patient_by_document_from_the_front_desk(client, receptionist, clinic, specialty):
    patient = make_patient(clinic, 5)
    client.force_login(receptionist)
    response = client.post(
        reverse("waitlist:add"),
        {"document": patient.document, "specialty": specialty.pk, "part_of_day": "morning"},
    )
    assert response.status_code == 302
    entry = WaitlistEntry.objects.get(patient=patient)
    assert (entry.source, entry.part_of_day, entry.status) == ("staff", "morning", "waiting")


def test_it_refuses_an_unknown_document_or_another_clinics_specialty(
    client, receptionist, clinic, other_clinic, specialty, other_staff
):
    elsewhere = Specialty.objects.create(clinic=other_clinic, slug="norte", name="Norte")
    patient = make_patient(clinic, 6)
    client.force_login(receptionist)
    unknown = client.post(
        reverse("waitlist:add"),
        {"document": "99999999", "specialty": specialty.pk, "part_of_day": "any"},
    )
    assert unknown.status_code == 400
    assert "Ningún paciente de esta clínica" in unknown.content.decode()
    foreign = client.post(
        reverse("waitlist:add"),
        {"document": patient.document, "specialty": elsewhere.pk, "part_of_day": "any"},
    )
    assert foreign.status_code == 400
    assert not WaitlistEntry.objects.exists()


def test_it_removes_an_entry_of_this_clinic_only(client, receptionist, other_staff, entries):
    entry = entries[0]
    client.force_login(other_staff)
    assert client.post(reverse("waitlist:remove", args=[entry.pk])).status_code == 404
    page = client.get(reverse("waitlist:list"))
    assert "Paciente Número 1" not in page.content.decode()
    entry.refresh_from_db()
    assert entry.status == "waiting"

    client.force_login(receptionist)
    assert client.post(reverse("waitlist:remove", args=[entry.pk])).status_code == 302
    entry.refresh_from_db()
    assert entry.status == "removed"


def test_it_keeps_the_page_from_anonymous_visitors_and_users_without_a_clinic(
    client, outsider, entries
):
    assert client.get(reverse("waitlist:list")).status_code == 302
    client.force_login(outsider)
    assert client.get(reverse("waitlist:list")).status_code == 404
    assert client.post(reverse("waitlist:remove", args=[entries[0].pk])).status_code == 404


def test_it_shows_on_the_patient_card_that_reminders_were_stopped(
    client, receptionist, other_staff, patient, clinic
):
    card = reverse("clinics:patient", args=[patient.pk])
    client.force_login(receptionist)
    assert "Activos" in client.get(card).content.decode()
    services.patient_set_reminders(
        clinic=clinic, patient=patient, enabled=False, actor=services.Actor.patient(patient)
    )
    html = client.get(card).content.decode()
    assert "Detenidos" in html and "pidió el" in html
    client.force_login(other_staff)
    assert client.get(card).status_code == 404
