"""Staff lift identity lock-outs and remove a patient's numbers in the admin — their clinic's
only; another clinic's staff get 404 and change nothing."""

from django.contrib.admin import helpers
from django.urls import reverse

from clinics import services
from clinics.models import AuditEvent, IdentityLockout, Patient, PatientPhone
from clinics.services import Actor
from tests.conftest import PASSWORD

ATTACKER = "573119998877"


def login(client, user) -> None:
    user.is_staff = True  # may enter the admin site; memberships decide the rest
    user.save(update_fields=["is_staff"])
    assert client.login(username=user.username, password=PASSWORD)


def lock_out(clinic, patient) -> IdentityLockout:
    for _ in range(3):
        services.identity_failure_record(clinic=clinic, wa_id=ATTACKER, patient=patient)
    return IdentityLockout.objects.get(patient=patient)


def add_phone(clinic, patient, wa_id="573154443322") -> PatientPhone:
    return services.patient_phone_add(
        clinic=clinic,
        patient=patient,
        wa_id=wa_id,
        how=PatientPhone.How.BIRTH_DATE,
        actor=Actor.patient(patient),
    )


def test_it_lets_a_receptionist_lift_a_lock_out(client, clinic, patient, receptionist):
    lockout = lock_out(clinic, patient)
    login(client, receptionist)
    changelist = reverse("admin:clinics_identitylockout_changelist")
    assert client.get(changelist).status_code == 200
    client.post(changelist, {"action": "lift", helpers.ACTION_CHECKBOX_NAME: [lockout.pk]})
    lockout.refresh_from_db()
    assert lockout.lifted_by == receptionist
    assert AuditEvent.objects.filter(action="identity.lockout_lift").exists()


def test_it_hides_lock_outs_from_another_clinics_staff(client, clinic, patient, other_staff):
    lockout = lock_out(clinic, patient)
    login(client, other_staff)
    change = reverse("admin:clinics_identitylockout_change", args=[lockout.pk])
    assert client.get(change).status_code in (302, 404)
    changelist = reverse("admin:clinics_identitylockout_changelist")
    client.post(changelist, {"action": "lift", helpers.ACTION_CHECKBOX_NAME: [lockout.pk]})
    assert IdentityLockout.objects.get(pk=lockout.pk).lifted_at is None


def test_it_shows_a_patients_numbers_and_lets_staff_remove_one(
    client, clinic, patient, receptionist
):
    phone = add_phone(clinic, patient)
    login(client, receptionist)
    page = client.get(reverse("admin:clinics_patient_change", args=[patient.pk]))
    assert page.status_code == 200 and phone.wa_id in page.content.decode()
    changelist = reverse("admin:clinics_patientphone_changelist")
    client.post(changelist, {"action": "remove_numbers", helpers.ACTION_CHECKBOX_NAME: [phone.pk]})
    assert not PatientPhone.objects.exists()
    assert Patient.objects.get(pk=patient.pk).whatsapp_id == "573001234567"  # on file stays


def test_it_keeps_another_clinics_numbers_out_of_reach(client, clinic, patient, other_staff):
    phone = add_phone(clinic, patient)
    login(client, other_staff)
    change = reverse("admin:clinics_patientphone_change", args=[phone.pk])
    assert client.get(change).status_code in (302, 404)
    changelist = reverse("admin:clinics_patientphone_changelist")
    client.post(changelist, {"action": "remove_numbers", helpers.ACTION_CHECKBOX_NAME: [phone.pk]})
    assert PatientPhone.objects.filter(pk=phone.pk).exists()
