"""Reminders and the waitlist in the admin: scoped per clinic, changed only through services."""

import pytest
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.urls import reverse

from clinics.models import AuditEvent, Specialty
from outreach import waitlist
from outreach.models import WaitlistEntry
from tests.conftest import PASSWORD
from tests.outreach.conftest import make_patient


def login(client, user) -> None:
    get_user_model().objects.filter(pk=user.pk).update(is_staff=True)
    assert client.login(username=user.username, password=PASSWORD)


@pytest.fixture
def entries(clinic, other_clinic, specialty):
    other_specialty = Specialty.objects.create(clinic=other_clinic, slug="norte", name="Norte")
    mine, _ = waitlist.waitlist_join(
        clinic=clinic, patient=make_patient(clinic, 1), specialty=specialty
    )
    theirs, _ = waitlist.waitlist_join(
        clinic=other_clinic, patient=make_patient(other_clinic, 2), specialty=other_specialty
    )
    return mine, theirs


@pytest.mark.django_db
@pytest.mark.parametrize("user_fixture", ["receptionist", "other_staff"])
def test_it_lists_and_removes_only_the_users_clinic_waitlist(
    client, request, entries, user_fixture
):
    user = request.getfixturevalue(user_fixture)
    login(client, user)
    mine, theirs = entries
    own, foreign = (mine, theirs) if user_fixture == "receptionist" else (theirs, mine)
    changelist = reverse("admin:outreach_waitlistentry_changelist")
    page = client.get(changelist)
    assert page.status_code == 200
    assert own.patient.full_name in page.text
    assert foreign.patient.full_name not in page.text
    assert client.get(
        reverse("admin:outreach_waitlistentry_change", args=[foreign.pk])
    ).status_code in (302, 403, 404)

    client.post(
        changelist,
        {"action": "remove", helpers.ACTION_CHECKBOX_NAME: [own.pk, foreign.pk]},
    )
    assert WaitlistEntry.objects.get(pk=own.pk).status == "removed"
    assert WaitlistEntry.objects.get(pk=foreign.pk).status == "waiting"


@pytest.mark.django_db
def test_it_resumes_reminders_from_the_patient_list_with_an_audit_row(
    client, receptionist, other_staff, patient, clinic
):
    patient.reminders_opted_out_at = patient.created_at
    patient.save()
    changelist = reverse("admin:clinics_patient_changelist")
    form = {"action": "resume_reminders", helpers.ACTION_CHECKBOX_NAME: [patient.pk]}

    login(client, other_staff)
    client.post(changelist, form)
    patient.refresh_from_db()
    assert patient.reminders_opted_out_at is not None  # not theirs to change

    login(client, receptionist)
    client.post(changelist, form)
    patient.refresh_from_db()
    assert patient.reminders_opted_out_at is None
    audit = AuditEvent.objects.get(action="patient.reminders_on")
    assert (audit.actor_type, audit.actor_id) == ("staff", str(receptionist.pk))
