"""Reads shared by several callers (bot engine, views, API, benchmark)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import QuerySet

from clinics.models import Appointment, Clinic, Doctor, Patient, Slot, Specialty


@dataclass
class SlotPage:
    slots: list[Slot]  # doctor is select_related
    next_cursor: str | None
    has_more: bool


def available_slots(
    *,
    clinic: Clinic,
    specialty: Specialty | None = None,
    doctor: Doctor | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    min_notice: dt.timedelta | None = None,
    cursor: str | None = None,
    page_size: int = 10,
    now: dt.datetime | None = None,
    include_held_by: str | None = None,
) -> SlotPage:
    """One keyset page of bookable slots ordered by (start_at, id)."""
    raise NotImplementedError


def patient_upcoming_appointments(
    *, clinic: Clinic, patient: Patient, now: dt.datetime | None = None
) -> list[Appointment]:
    raise NotImplementedError


def patient_by_document(*, clinic: Clinic, document: str) -> Patient | None:
    raise NotImplementedError


def staff_clinics(user) -> QuerySet[Clinic]:
    raise NotImplementedError
