"""The only code that books, holds, cancels and reschedules (DESIGN §4). Keyword-only functions.

Every failure a caller can cause raises a `BookingError` subclass with a stable `code`; callers
(bot engine, views, API) map codes to messages. Nothing is half-written: each service runs in one
transaction and database constraint violations become `BookingError`s inside a savepoint.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from clinics.models import Appointment, AuditEvent, Clinic, Doctor, Patient, SlotHold


@dataclass(frozen=True)
class Actor:
    """Who makes a change, for the audit trail. `type` is an AuditEvent.ActorType value."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def patient(cls, patient: Patient) -> Actor:
        return cls(
            AuditEvent.ActorType.PATIENT, str(patient.pk), f"patient {patient.masked_document}"
        )

    @classmethod
    def staff(cls, user) -> Actor:
        return cls(AuditEvent.ActorType.STAFF, str(user.pk), user.get_username())

    @classmethod
    def api(cls, key_id: str | int, label: str = "") -> Actor:
        return cls(AuditEvent.ActorType.API, str(key_id), label)

    @classmethod
    def system(cls, label: str) -> Actor:
        return cls(AuditEvent.ActorType.SYSTEM, "", label)


class BookingError(Exception):
    """A refusal the caller caused; `code` is stable, `message` is English for logs and APIs."""

    code = "booking_error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        if code:
            self.code = code
        self.message = message or self.code.replace("_", " ")
        super().__init__(self.message)


class SlotTaken(BookingError):
    code = "slot_taken"  # someone else holds or booked it first


class SlotUnavailable(BookingError):
    code = "slot_not_found"  # also "slot_in_past", "slot_blocked"


class PatientOverlap(BookingError):
    code = "patient_overlap"  # the patient already has an appointment at that time


class PatientNotFound(BookingError):
    code = "patient_not_found"


class AppointmentNotFound(BookingError):
    code = "appointment_not_found"


class WrongClinic(BookingError):
    code = "wrong_clinic"


class InvalidInput(BookingError):
    code = "invalid_input"  # also "invalid_document", "invalid_cursor", "invalid_status"


class NotHolder(BookingError):
    code = "hold_not_yours"


class NotCancellable(BookingError):
    code = "not_cancellable"


def slots_generate(
    *, clinic: Clinic, date_from: dt.date, date_to: dt.date, doctor: Doctor | None = None
) -> int:
    """Create slots from Schedule rows for [date_from, date_to] (local dates); return how many."""
    raise NotImplementedError


def slot_hold(
    *,
    clinic: Clinic,
    slot_id: int,
    holder: str,
    patient: Patient | None = None,
    minutes: int | None = None,
) -> SlotHold:
    """Hold a bookable slot for `holder` (default SOPHIA_HOLD_MINUTES); drops their other hold."""
    raise NotImplementedError


def slot_release(*, clinic: Clinic, slot_id: int, holder: str) -> bool:
    """Release `holder`'s live hold on the slot; False when there was none."""
    raise NotImplementedError


def holds_expire(*, now: dt.datetime | None = None) -> int:
    """Tidy up expired holds (availability never depends on this running)."""
    raise NotImplementedError


def appointment_book(
    *,
    clinic: Clinic,
    patient: Patient,
    slot_id: int,
    actor: Actor,
    source: str,
    specialty=None,
    notes: str = "",
    holder: str | None = None,
) -> Appointment:
    raise NotImplementedError


def appointment_cancel(
    *,
    clinic: Clinic,
    appointment_id: int,
    actor: Actor,
    reason: str = "",
    patient: Patient | None = None,
) -> Appointment:
    raise NotImplementedError


def appointment_reschedule(
    *,
    clinic: Clinic,
    appointment_id: int,
    new_slot_id: int,
    actor: Actor,
    holder: str | None = None,
    patient: Patient | None = None,
) -> Appointment:
    """Book the new slot and cancel the old appointment atomically; return the new appointment."""
    raise NotImplementedError


def appointment_set_status(
    *, clinic: Clinic, appointment_id: int, status: str, actor: Actor
) -> Appointment:
    """confirmed / attended / no_show."""
    raise NotImplementedError


def patient_register(
    *,
    clinic: Clinic,
    document: str,
    full_name: str,
    birth_date: dt.date,
    whatsapp_id: str = "",
    actor: Actor,
) -> Patient:
    raise NotImplementedError


def patient_link_whatsapp(
    *, clinic: Clinic, patient: Patient, whatsapp_id: str, actor: Actor
) -> Patient:
    raise NotImplementedError
