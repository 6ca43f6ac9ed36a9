"""Everything the engine knows about a clinic comes through a `Gateway` (DESIGN §5).

`Gateway` is the Protocol bot.engine is written against; `OrmGateway` implements it with
clinics.selectors and clinics.services for one clinic and one conversation, and hands the engine
plain values (bot.messages), never model instances. tests/bot/memory_gateway.py implements it in
memory, so the engine's tests need no database.

Failures a patient can cause raise clinics.errors.BookingError subclasses with stable codes.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from django.utils import timezone

from bot.messages import (
    AppointmentInfo,
    ClinicInfo,
    DoctorInfo,
    FaqInfo,
    OutreachResult,
    PatientInfo,
    SlotFilter,
    SlotInfo,
    SlotPage,
    SpecialtyInfo,
)
from bot.models import Conversation
from clinics import selectors, services
from clinics.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Clinic,
    Doctor,
    Patient,
    PatientPhone,
    Slot,
    SlotHold,
    Specialty,
)
from outreach import reminders, waitlist


def hold_owner(conversation_id: int) -> str:
    """Who holds a slot a conversation is confirming (SlotHold.holder)."""
    return f"conversation:{conversation_id}"


class Gateway(Protocol):
    """Clinic data for one conversation of one clinic. Holds are taken in that conversation's
    name (`hold_owner`); writes are audited with the patient as the actor."""

    @property
    def clinic(self) -> ClinicInfo: ...

    # patients
    def patient(self, patient_id: int) -> PatientInfo | None: ...
    def patient_by_document(self, document: str) -> PatientInfo | None:
        """InvalidInput("invalid_document") when it isn't 8–15 digits."""
        ...

    def patient_by_whatsapp(self, wa_id: str) -> PatientInfo | None: ...
    def patient_register(
        self, *, document: str, full_name: str, birth_date: dt.date, whatsapp_id: str
    ) -> PatientInfo: ...

    # identity: counted and locked per patient and per number, across conversations
    def patient_verified_on(self, *, patient_id: int, wa_id: str) -> bool:
        """Does this number speak for the patient (on file, or verified and not removed)?"""
        ...

    def patients_on_number(self, wa_id: str) -> list[PatientInfo]:
        """Every patient the number speaks for (a parent's phone holds the children too)."""
        ...

    def patient_phone_add(self, *, patient_id: int, wa_id: str) -> None:
        """The number passed the birth-date check: add it (the number on file stays)."""
        ...

    def identity_locked(self, *, wa_id: str, patient_id: int | None = None) -> bool:
        """Is the number, or (when given) the patient, locked out of identity checks?"""
        ...

    def identity_failure_record(self, *, wa_id: str, patient_id: int | None) -> bool:
        """Count a wrong birth date from the number about the patient; True when the number
        is now locked out."""
        ...

    # specialties and slots
    def specialties(self) -> list[SpecialtyInfo]:
        """The clinic's specialties, by name."""
        ...

    def specialty(self, slug: str) -> SpecialtyInfo | None: ...
    def slot_page(
        self,
        *,
        specialty_id: int,
        cursor: str | None,
        page_size: int,
        now: dt.datetime,
        only: SlotFilter | None = None,
    ) -> SlotPage:
        """One keyset page of bookable slots, never inside a blocked period nor overlapping the
        filter's patient's appointments; InvalidInput("invalid_cursor") for a stale cursor."""
        ...

    def doctors(self) -> list[DoctorInfo]:
        """The clinic's active doctors, by name."""
        ...

    def last_doctor(self, *, patient_id: int, now: dt.datetime) -> DoctorInfo | None:
        """The doctor of the patient's latest appointment before `now` ("el de la otra vez")."""
        ...

    def faq_entries(self) -> list[FaqInfo]:
        """The clinic's active FAQ entries, in their order."""
        ...

    def slot(self, slot_id: int) -> SlotInfo | None: ...
    def slot_hold(self, *, slot_id: int, patient_id: int | None) -> SlotInfo: ...
    def slot_release(self, *, slot_id: int) -> bool: ...
    def holds_release(self) -> int:
        """Release every live hold of this conversation; how many were released."""
        ...

    # appointments
    def appointment_book(
        self, *, patient_id: int, slot_id: int, specialty_id: int | None, notes: str
    ) -> AppointmentInfo: ...
    def appointment_reschedule(
        self, *, patient_id: int, appointment_id: int, new_slot_id: int
    ) -> AppointmentInfo: ...
    def appointment_cancel(self, *, patient_id: int, appointment_id: int, reason: str) -> None: ...
    def upcoming_appointments(self, *, patient_id: int, now: dt.datetime) -> list[AppointmentInfo]:
        """The patient's booked or confirmed appointments that have not started, soonest first."""
        ...

    def upcoming_appointments_on_number(
        self, *, wa_id: str, now: dt.datetime
    ) -> list[AppointmentInfo]:
        """Those of every patient the number speaks for (with their names), soonest first."""
        ...

    def rebooking_specialty(self, appointment_id: int) -> SpecialtyInfo | None:
        """Whose slots to offer when moving an appointment: its specialty, else its doctor's."""
        ...

    # reminders and the waitlist (outreach)
    def open_reminder(self, *, now: dt.datetime) -> AppointmentInfo | None:
        """The appointment of the latest reminder sent to this conversation, still ahead."""
        ...

    def reminder_answer(
        self, *, appointment_id: int, confirm: bool, now: dt.datetime
    ) -> OutreachResult:
        """Confirm or cancel the appointment of a reminder this conversation received."""
        ...

    def reminders_set(self, *, wa_id: str, patient_id: int | None, enabled: bool) -> int:
        """STOP / resume reminders for the patients on this number; how many changed."""
        ...

    def waitlist_join(
        self, *, patient_id: int, specialty_id: int, doctor_id: int | None, part_of_day: str
    ) -> bool:
        """Put the patient on the specialty's waitlist (optionally for one doctor, "morning" or
        "afternoon"); False when already on it (their wishes are updated)."""
        ...

    def waitlist_answer(self, *, offer_id: int, accept: bool, now: dt.datetime) -> OutreachResult:
        """Accept or decline a waitlist offer this conversation received."""
        ...


# --- the ORM implementation ------------------------------------------------------------------


def clinic_info(clinic: Clinic) -> ClinicInfo:
    return ClinicInfo(
        id=clinic.pk,
        name=clinic.name,
        time_zone=clinic.time_zone,
        address=clinic.address,
        opening_hours=clinic.opening_hours,
        what_to_bring=clinic.what_to_bring,
        emergency_line=clinic.emergency_line,
        self_registration=clinic.self_registration,
    )


def specialty_info(specialty: Specialty) -> SpecialtyInfo:
    return SpecialtyInfo(
        id=specialty.pk,
        slug=specialty.slug,
        name=specialty.name,
        keywords=tuple(specialty.keyword_list()),
    )


def patient_info(patient: Patient) -> PatientInfo:
    return PatientInfo(
        id=patient.pk,
        full_name=patient.full_name,
        birth_date=patient.birth_date,
        whatsapp_id=patient.whatsapp_id,
    )


def slot_info(slot: Slot) -> SlotInfo:
    return SlotInfo(
        id=slot.pk,
        start_at=slot.start_at,
        doctor_name=slot.doctor.full_name,
        doctor_id=slot.doctor_id,
    )


def appointment_info(appointment: Appointment, *, with_patient: bool = False) -> AppointmentInfo:
    return AppointmentInfo(
        id=appointment.pk,
        start_at=appointment.start_at,
        doctor_name=appointment.doctor.full_name,
        specialty=specialty_info(appointment.specialty) if appointment.specialty else None,
        patient_id=appointment.patient_id,
        patient_name=appointment.patient.full_name if with_patient else "",
    )


class OrmGateway:
    """`Gateway` over clinics.selectors/services for one clinic and one conversation."""

    def __init__(self, clinic: Clinic, conversation_id: int) -> None:
        self._clinic = clinic
        self._info = clinic_info(clinic)
        self.holder = hold_owner(conversation_id)
        self._conversation_id = conversation_id
        self._patients: dict[int, Patient] = {}
        self._specialties: list[Specialty] | None = None

    @property
    def clinic(self) -> ClinicInfo:
        return self._info

    # patients

    def _patient(self, patient_id: int | None) -> Patient | None:
        if patient_id is None:
            return None
        if patient_id not in self._patients:
            found = Patient.objects.filter(pk=patient_id, clinic=self._clinic).first()
            if found is None:
                return None
            self._patients[patient_id] = found
        return self._patients[patient_id]

    def loaded_patient(self, patient_id: int) -> Patient | None:
        """The patient row this gateway read during the turn, if it read that one: the turn
        keeps it on the conversation instead of reading it again."""
        return self._patients.get(patient_id)

    def _remember(self, patient: Patient) -> PatientInfo:
        self._patients[patient.pk] = patient
        return patient_info(patient)

    def patient(self, patient_id: int) -> PatientInfo | None:
        patient = self._patient(patient_id)
        return patient_info(patient) if patient else None

    def patient_by_document(self, document: str) -> PatientInfo | None:
        patient = selectors.patient_by_document(clinic=self._clinic, document=document)
        return self._remember(patient) if patient else None

    def patient_by_whatsapp(self, wa_id: str) -> PatientInfo | None:
        patient = selectors.patient_by_whatsapp(clinic=self._clinic, wa_id=wa_id)
        return self._remember(patient) if patient else None

    def patient_register(
        self, *, document: str, full_name: str, birth_date: dt.date, whatsapp_id: str
    ) -> PatientInfo:
        patient = services.patient_register(
            clinic=self._clinic,
            document=document,
            full_name=full_name,
            birth_date=birth_date,
            whatsapp_id=whatsapp_id,
            actor=services.Actor(AuditEvent.ActorType.PATIENT, "", "patient via WhatsApp"),
        )
        return self._remember(patient)

    def patient_verified_on(self, *, patient_id: int, wa_id: str) -> bool:
        return selectors.patient_verified_on(
            clinic=self._clinic, patient_id=patient_id, wa_id=wa_id
        )

    def patients_on_number(self, wa_id: str) -> list[PatientInfo]:
        return [
            self._remember(p)
            for p in selectors.patients_on_number(clinic=self._clinic, wa_id=wa_id)
        ]

    def patient_phone_add(self, *, patient_id: int, wa_id: str) -> None:
        patient = self._required_patient(patient_id)
        services.patient_phone_add(
            clinic=self._clinic,
            patient=patient,
            wa_id=wa_id,
            how=PatientPhone.How.BIRTH_DATE,
            actor=services.Actor.patient(patient),
        )

    def identity_locked(self, *, wa_id: str, patient_id: int | None = None) -> bool:
        status = services.identity_status(
            clinic=self._clinic, wa_id=wa_id, patient=self._patient(patient_id)
        )
        return status.locked

    def identity_failure_record(self, *, wa_id: str, patient_id: int | None) -> bool:
        status = services.identity_failure_record(
            clinic=self._clinic, wa_id=wa_id, patient=self._patient(patient_id)
        )
        return status.number_locked

    def _required_patient(self, patient_id: int | None) -> Patient:
        patient = self._patient(patient_id)
        if patient is None:
            raise services.PatientNotFound("no such patient in this clinic")
        return patient

    # specialties and slots

    def _specialty_rows(self) -> list[Specialty]:
        if self._specialties is None:
            self._specialties = list(Specialty.objects.filter(clinic=self._clinic).order_by("name"))
        return self._specialties

    def specialties(self) -> list[SpecialtyInfo]:
        return [specialty_info(s) for s in self._specialty_rows()]

    def specialty(self, slug: str) -> SpecialtyInfo | None:
        found = next((s for s in self._specialty_rows() if s.slug == slug), None)
        return specialty_info(found) if found else None

    def slot_page(
        self,
        *,
        specialty_id: int,
        cursor: str | None,
        page_size: int,
        now: dt.datetime,
        only: SlotFilter | None = None,
    ) -> SlotPage:
        specialty = next((s for s in self._specialty_rows() if s.pk == specialty_id), None)
        if specialty is None:
            return SlotPage(slots=(), next_cursor=None, has_more=False)
        only = only or SlotFilter()
        doctor = (
            Doctor.objects.filter(pk=only.doctor_id, clinic=self._clinic).first()
            if only.doctor_id
            else None
        )
        if only.doctor_id and doctor is None:
            return SlotPage(slots=(), next_cursor=None, has_more=False)
        page = selectors.available_slots(
            clinic=self._clinic,
            specialty=specialty,
            doctor=doctor,
            cursor=cursor,
            page_size=page_size,
            now=now,
            window=selectors.SlotWindow(
                start=only.start,
                end=only.end,
                time_from=only.time_from,
                time_to=only.time_to,
                weekdays=frozenset(only.weekdays) if only.weekdays is not None else None,
            ),
            patient=self._patient(only.patient_id),
        )
        return SlotPage(
            slots=tuple(slot_info(s) for s in page.slots),
            next_cursor=page.next_cursor,
            has_more=page.has_more,
        )

    def doctors(self) -> list[DoctorInfo]:
        rows = Doctor.objects.filter(clinic=self._clinic, active=True).prefetch_related(
            "specialties"
        )
        return [
            DoctorInfo(d.pk, d.full_name, tuple(s.pk for s in d.specialties.all())) for d in rows
        ]

    def last_doctor(self, *, patient_id: int, now: dt.datetime) -> DoctorInfo | None:
        latest = (
            Appointment.objects.filter(clinic=self._clinic, patient_id=patient_id, start_at__lt=now)
            .exclude(status=AppointmentStatus.CANCELLED)
            .select_related("doctor")
            .order_by("-start_at")
            .first()
        )
        if latest is None:
            return None
        doctor = latest.doctor
        return DoctorInfo(
            doctor.pk, doctor.full_name, tuple(doctor.specialties.values_list("pk", flat=True))
        )

    def faq_entries(self) -> list[FaqInfo]:
        return [
            FaqInfo(e.pk, e.question, tuple(e.keyword_list()), e.answer)
            for e in selectors.active_faq_entries(clinic=self._clinic)
        ]

    def slot(self, slot_id: int) -> SlotInfo | None:
        slot = Slot.objects.select_related("doctor").filter(pk=slot_id, clinic=self._clinic).first()
        return slot_info(slot) if slot else None

    def slot_hold(self, *, slot_id: int, patient_id: int | None) -> SlotInfo:
        hold = services.slot_hold(
            clinic=self._clinic,
            slot_id=slot_id,
            holder=self.holder,
            patient=self._patient(patient_id),
        )
        return slot_info(hold.slot)

    def slot_release(self, *, slot_id: int) -> bool:
        return services.slot_release(clinic=self._clinic, slot_id=slot_id, holder=self.holder)

    def holds_release(self) -> int:
        slot_ids = SlotHold.objects.filter(
            holder=self.holder,
            released_at=None,
            expires_at__gt=timezone.now(),
            slot__clinic=self._clinic,
        ).values_list("slot_id", flat=True)
        return sum(self.slot_release(slot_id=slot_id) for slot_id in list(slot_ids))

    # appointments

    def _appointment(self, appointment: Appointment) -> AppointmentInfo:
        fresh = (
            Appointment.objects.select_related("doctor", "specialty")
            .filter(pk=appointment.pk)
            .first()
        )
        return appointment_info(fresh or appointment)

    def appointment_book(
        self, *, patient_id: int, slot_id: int, specialty_id: int | None, notes: str
    ) -> AppointmentInfo:
        patient = self._required_patient(patient_id)
        specialty = next((s for s in self._specialty_rows() if s.pk == specialty_id), None)
        appointment = services.appointment_book(
            clinic=self._clinic,
            patient=patient,
            slot_id=slot_id,
            actor=services.Actor.patient(patient),
            source="bot",
            specialty=specialty,
            notes=notes,
            holder=self.holder,
        )
        return self._appointment(appointment)

    def appointment_reschedule(
        self, *, patient_id: int, appointment_id: int, new_slot_id: int
    ) -> AppointmentInfo:
        patient = self._required_patient(patient_id)
        appointment = services.appointment_reschedule(
            clinic=self._clinic,
            appointment_id=appointment_id,
            new_slot_id=new_slot_id,
            actor=services.Actor.patient(patient),
            holder=self.holder,
            patient=patient,
        )
        return self._appointment(appointment)

    def appointment_cancel(self, *, patient_id: int, appointment_id: int, reason: str) -> None:
        patient = self._required_patient(patient_id)
        services.appointment_cancel(
            clinic=self._clinic,
            appointment_id=appointment_id,
            actor=services.Actor.patient(patient),
            reason=reason,
            patient=patient,
        )

    def upcoming_appointments(self, *, patient_id: int, now: dt.datetime) -> list[AppointmentInfo]:
        patient = self._patient(patient_id)
        if patient is None:
            return []
        return [
            appointment_info(a)
            for a in selectors.patient_upcoming_appointments(
                clinic=self._clinic, patient=patient, now=now
            )
        ]

    def upcoming_appointments_on_number(
        self, *, wa_id: str, now: dt.datetime
    ) -> list[AppointmentInfo]:
        return [
            appointment_info(a, with_patient=True)
            for a in selectors.upcoming_appointments_on_number(
                clinic=self._clinic, wa_id=wa_id, now=now
            )
        ]

    def rebooking_specialty(self, appointment_id: int) -> SpecialtyInfo | None:
        appointment = (
            Appointment.objects.select_related("specialty", "doctor")
            .filter(pk=appointment_id, clinic=self._clinic)
            .first()
        )
        if appointment is None:
            return None
        specialty = appointment.specialty or appointment.doctor.specialties.order_by("name").first()
        return specialty_info(specialty) if specialty else None

    # reminders and the waitlist

    def open_reminder(self, *, now: dt.datetime) -> AppointmentInfo | None:
        found = reminders.open_reminder(
            clinic=self._clinic, conversation_id=self._conversation_id, now=now
        )
        return appointment_info(found.appointment) if found else None

    def reminder_answer(
        self, *, appointment_id: int, confirm: bool, now: dt.datetime
    ) -> OutreachResult:
        answer = reminders.reminder_respond(
            clinic=self._clinic,
            conversation_id=self._conversation_id,
            appointment_id=appointment_id,
            confirm=confirm,
            now=now,
        )
        found = answer.appointment
        return OutreachResult(str(answer.outcome), appointment_info(found) if found else None)

    def reminders_set(self, *, wa_id: str, patient_id: int | None, enabled: bool) -> int:
        return reminders.reminders_opt(
            clinic=self._clinic, wa_id=wa_id, patient_id=patient_id, enabled=enabled
        )

    def waitlist_join(
        self, *, patient_id: int, specialty_id: int, doctor_id: int | None, part_of_day: str
    ) -> bool:
        patient = self._required_patient(patient_id)
        specialty = Specialty.objects.filter(pk=specialty_id, clinic=self._clinic).first()
        if specialty is None:
            raise services.InvalidInput("no such specialty in this clinic")
        # A doctor who no longer sees the specialty (or a stale id) just widens the wish.
        doctor = Doctor.objects.filter(
            pk=doctor_id or 0, clinic=self._clinic, specialties=specialty
        ).first()
        _entry, created = waitlist.waitlist_join(
            clinic=self._clinic,
            patient=patient,
            specialty=specialty,
            doctor=doctor,
            part_of_day=part_of_day if part_of_day in ("morning", "afternoon") else "any",
            conversation=Conversation.objects.filter(pk=self._conversation_id).first(),
        )
        return created

    def waitlist_answer(self, *, offer_id: int, accept: bool, now: dt.datetime) -> OutreachResult:
        respond = waitlist.waitlist_accept if accept else waitlist.waitlist_decline
        answer = respond(
            clinic=self._clinic, offer_id=offer_id, conversation_id=self._conversation_id, now=now
        )
        found = answer.appointment
        return OutreachResult(str(answer.outcome), appointment_info(found) if found else None)
