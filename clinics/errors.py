"""Why a booking service refused: plain exceptions with stable codes (DESIGN §4).

A module of their own, free of Django, so callers that must not import the ORM (bot.engine)
can catch them. clinics.services raises them and re-exports them.
"""

from __future__ import annotations


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


class PatientExists(BookingError):
    code = "patient_exists"


class RegistrationClosed(BookingError):
    code = "self_registration_disabled"


class WrongClinic(BookingError):
    code = "wrong_clinic"


class InvalidInput(BookingError):
    code = "invalid_input"  # also "invalid_document", "invalid_cursor", "invalid_status"


class NotHolder(BookingError):
    code = "hold_not_yours"


class NotCancellable(BookingError):
    code = "not_cancellable"


class AppointmentNotFound(NotCancellable):
    """Unknown, another clinic's, or another patient's: callers can't tell which (no leak)."""

    code = "appointment_not_found"
