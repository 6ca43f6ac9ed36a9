"""Identity checks that hold across numbers and conversations: failures counted per patient and
per number, lock-outs that last until staff lift them, numbers added (never replaced)."""

import pytest

from clinics import selectors, services
from clinics.models import (
    AuditEvent,
    IdentityFailure,
    IdentityLockout,
    Patient,
    PatientPhone,
)
from clinics.services import Actor

ATTACKER = "573119998877"
ATTACKER_2 = "573220001111"
PARENT = "573154443322"


def fail(clinic, wa_id, patient):
    return services.identity_failure_record(clinic=clinic, wa_id=wa_id, patient=patient)


def test_it_locks_a_patient_after_three_failures_from_any_numbers(clinic, patient):
    assert not fail(clinic, ATTACKER, patient).locked
    assert not fail(clinic, ATTACKER_2, patient).locked
    status = fail(clinic, "573330002222", patient)  # a third number: the patient's count
    assert status.patient_locked and not status.number_locked
    assert IdentityLockout.objects.get(lifted_at=None).patient == patient
    # Locked for every new number, not only the ones that failed.
    assert services.identity_status(clinic=clinic, wa_id="573440003333", patient=patient).locked


def test_it_locks_a_number_after_three_failures_about_anyone(clinic, patient, other_patient):
    fail(clinic, ATTACKER, patient)
    fail(clinic, ATTACKER, other_patient)
    status = fail(clinic, ATTACKER, None)  # even a document that is nobody's counts
    assert status.number_locked
    assert services.identity_status(clinic=clinic, wa_id=ATTACKER).number_locked
    assert not services.identity_status(clinic=clinic, wa_id=ATTACKER_2).locked
    assert not services.identity_status(clinic=clinic, wa_id=ATTACKER_2, patient=patient).locked


def test_it_keeps_lock_outs_per_clinic(clinic, other_clinic, patient):
    for _ in range(3):
        fail(clinic, ATTACKER, patient)
    assert not services.identity_status(clinic=other_clinic, wa_id=ATTACKER).locked


def test_it_keeps_one_lock_out_however_many_failures_follow(clinic, patient):
    for _ in range(6):
        fail(clinic, ATTACKER, patient)
    assert IdentityLockout.objects.filter(lifted_at=None).count() == 2  # patient + number
    assert IdentityFailure.objects.count() == 6


def test_it_lets_staff_lift_a_lock_out_audited(clinic, patient, receptionist):
    for _ in range(3):
        fail(clinic, ATTACKER, patient)
    lockout = IdentityLockout.objects.get(patient=patient)
    lifted = services.identity_lockout_lift(
        clinic=clinic, lockout_id=lockout.pk, actor=Actor.staff(receptionist)
    )
    assert lifted.lifted_at is not None and lifted.lifted_by == receptionist
    status = services.identity_status(clinic=clinic, wa_id=ATTACKER_2, patient=patient)
    assert not status.locked
    # The failures that led to it no longer count: three fresh ones lock again.
    assert not fail(clinic, ATTACKER_2, patient).patient_locked
    audit = AuditEvent.objects.get(action="identity.lockout_lift")
    assert audit.actor_id == str(receptionist.pk) and audit.after["failures_cleared"] == 3
    assert ATTACKER not in str(audit.before) + str(audit.after)  # masked numbers only
    again = services.identity_lockout_lift(
        clinic=clinic, lockout_id=lockout.pk, actor=Actor.staff(receptionist)
    )
    assert again.lifted_at == lifted.lifted_at


def test_it_refuses_to_lift_from_the_bot_or_another_clinic(
    clinic, other_clinic, patient, other_staff
):
    for _ in range(3):
        fail(clinic, ATTACKER, patient)
    lockout = IdentityLockout.objects.get(patient=patient)
    with pytest.raises(services.InvalidInput):
        services.identity_lockout_lift(
            clinic=clinic, lockout_id=lockout.pk, actor=Actor.patient(patient)
        )
    with pytest.raises(services.InvalidInput) as err:
        services.identity_lockout_lift(
            clinic=other_clinic, lockout_id=lockout.pk, actor=Actor.staff(other_staff)
        )
    assert err.value.code == "lockout_not_found"
    assert IdentityLockout.objects.get(pk=lockout.pk).lifted_at is None


def test_it_adds_a_verified_number_and_never_replaces_the_one_on_file(clinic, patient):
    phone = services.patient_phone_add(
        clinic=clinic,
        patient=patient,
        wa_id=PARENT,
        how=PatientPhone.How.BIRTH_DATE,
        actor=Actor.patient(patient),
    )
    assert phone is not None and phone.wa_id == PARENT
    assert Patient.objects.get(pk=patient.pk).whatsapp_id == "573001234567"
    again = services.patient_phone_add(
        clinic=clinic,
        patient=patient,
        wa_id=PARENT,
        how=PatientPhone.How.BIRTH_DATE,
        actor=Actor.patient(patient),
    )
    assert again.pk == phone.pk and PatientPhone.objects.count() == 1
    on_file = services.patient_phone_add(
        clinic=clinic,
        patient=patient,
        wa_id=patient.whatsapp_id,
        how=PatientPhone.How.BIRTH_DATE,
        actor=Actor.patient(patient),
    )
    assert on_file is None
    assert AuditEvent.objects.filter(action="patient.phone_add").count() == 1


def test_it_lists_the_patients_a_number_speaks_for(clinic, patient, other_patient):
    child = Patient.objects.create(
        clinic=clinic, document="1122334455", full_name="Tomás Gómez", whatsapp_id=PARENT
    )
    services.patient_phone_add(
        clinic=clinic,
        patient=patient,
        wa_id=PARENT,
        how=PatientPhone.How.BIRTH_DATE,
        actor=Actor.patient(patient),
    )
    on_parent = selectors.patients_on_number(clinic=clinic, wa_id=PARENT)
    assert {p.pk for p in on_parent} == {patient.pk, child.pk}
    assert other_patient not in on_parent
    assert selectors.patient_verified_on(clinic=clinic, patient_id=patient.pk, wa_id=PARENT)
    assert not selectors.patient_verified_on(
        clinic=clinic, patient_id=other_patient.pk, wa_id=PARENT
    )
    assert selectors.patients_on_number(clinic=clinic, wa_id="") == []


def test_it_lets_staff_remove_a_number(clinic, patient, receptionist):
    services.patient_phone_add(
        clinic=clinic,
        patient=patient,
        wa_id=PARENT,
        how=PatientPhone.How.BIRTH_DATE,
        actor=Actor.patient(patient),
    )
    staff = Actor.staff(receptionist)
    assert services.patient_phone_remove(clinic=clinic, patient=patient, wa_id=PARENT, actor=staff)
    assert not selectors.patient_verified_on(clinic=clinic, patient_id=patient.pk, wa_id=PARENT)
    assert not services.patient_phone_remove(
        clinic=clinic, patient=patient, wa_id=PARENT, actor=staff
    )
    # Also the number on file.
    assert services.patient_phone_remove(
        clinic=clinic, patient=patient, wa_id="573001234567", actor=staff
    )
    assert Patient.objects.get(pk=patient.pk).whatsapp_id == ""
    assert AuditEvent.objects.filter(action="patient.phone_remove").count() == 2
    with pytest.raises(services.InvalidInput):
        services.patient_phone_remove(
            clinic=clinic, patient=patient, wa_id=PARENT, actor=Actor.patient(patient)
        )


def test_it_shows_a_number_the_appointments_of_its_patients_only(
    clinic, patient, other_patient, slots
):
    child = Patient.objects.create(
        clinic=clinic, document="1122334455", full_name="Tomás Gómez", whatsapp_id=PARENT
    )
    services.patient_phone_add(
        clinic=clinic,
        patient=patient,
        wa_id=PARENT,
        how=PatientPhone.How.BIRTH_DATE,
        actor=Actor.patient(patient),
    )
    staff = Actor.system("test")
    mine = [
        services.appointment_book(
            clinic=clinic, patient=who, slot_id=slot.pk, actor=staff, source="staff"
        )
        for who, slot in ((patient, slots[0]), (child, slots[1]))
    ]
    services.appointment_book(
        clinic=clinic, patient=other_patient, slot_id=slots[2].pk, actor=staff, source="staff"
    )
    shown = selectors.upcoming_appointments_on_number(clinic=clinic, wa_id=PARENT)
    assert [a.pk for a in shown] == [a.pk for a in mine]
