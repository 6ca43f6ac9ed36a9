"""Reads of reminders and the waitlist shared by the console, the API and the stats."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import CharField, Count, Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Cast

from clinics.models import Appointment, AppointmentStatus, AuditEvent, Clinic, Specialty
from outreach.models import ReminderDispatch, WaitlistEntry, WaitlistOffer


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True)
class Attendance:
    """A clinic's attendance over appointments that started in a period (local dates)."""

    date_from: dt.date
    date_to: dt.date
    appointments: int  # not cancelled
    cancelled: int
    confirmed: int  # confirmed by the patient or staff at some point (audited)
    attended: int
    no_show: int
    reminders_sent: int
    confirmed_by_reminder: int
    cancelled_by_reminder: int

    @property
    def confirmed_rate(self) -> float | None:
        return _rate(self.confirmed, self.appointments)

    @property
    def attended_rate(self) -> float | None:
        """Of the appointments whose outcome was recorded (attended or no-show)."""
        return _rate(self.attended, self.attended + self.no_show)

    @property
    def no_show_rate(self) -> float | None:
        return _rate(self.no_show, self.attended + self.no_show)

    @property
    def cancelled_rate(self) -> float | None:
        return _rate(self.cancelled, self.appointments + self.cancelled)

    def as_dict(self) -> dict:
        return {
            "date_from": self.date_from.isoformat(),
            "date_to": self.date_to.isoformat(),
            "appointments": self.appointments,
            "cancelled": self.cancelled,
            "confirmed": self.confirmed,
            "attended": self.attended,
            "no_show": self.no_show,
            "reminders_sent": self.reminders_sent,
            "confirmed_by_reminder": self.confirmed_by_reminder,
            "cancelled_by_reminder": self.cancelled_by_reminder,
            "confirmed_rate": self.confirmed_rate,
            "attended_rate": self.attended_rate,
            "no_show_rate": self.no_show_rate,
            "cancelled_rate": self.cancelled_rate,
        }


def attendance_figures(*, clinic: Clinic, date_from: dt.date, date_to: dt.date) -> Attendance:
    """Confirmed, attended and no-show counts and rates of appointments starting on local dates
    [date_from, date_to]; one query for the appointments, one for the reminders."""
    tz = clinic.tz
    start = dt.datetime.combine(date_from, dt.time.min, tzinfo=tz)
    end = dt.datetime.combine(date_to + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
    ever_confirmed = AuditEvent.objects.filter(
        clinic=clinic,
        object_type="appointment",
        action="appointment.confirmed",
        object_id=Cast(OuterRef("pk"), CharField()),
    )
    cancelled = Q(status=AppointmentStatus.CANCELLED)
    counts = (
        Appointment.objects.filter(clinic=clinic, start_at__gte=start, start_at__lt=end)
        .annotate(was_confirmed=Exists(ever_confirmed))
        .aggregate(
            appointments=Count("pk", filter=~cancelled),
            cancelled=Count("pk", filter=cancelled),
            confirmed=Count(
                "pk",
                filter=~cancelled & (Q(was_confirmed=True) | Q(status=AppointmentStatus.CONFIRMED)),
            ),
            attended=Count("pk", filter=Q(status=AppointmentStatus.ATTENDED)),
            no_show=Count("pk", filter=Q(status=AppointmentStatus.NO_SHOW)),
        )
    )
    reminders = ReminderDispatch.objects.filter(
        clinic=clinic,
        status=ReminderDispatch.Status.QUEUED,
        appointment__start_at__gte=start,
        appointment__start_at__lt=end,
    ).aggregate(
        sent=Count("pk"),
        confirmed=Count(
            "appointment", distinct=True, filter=Q(response=ReminderDispatch.Response.CONFIRMED)
        ),
        cancelled=Count(
            "appointment", distinct=True, filter=Q(response=ReminderDispatch.Response.CANCELLED)
        ),
    )
    return Attendance(
        date_from=date_from,
        date_to=date_to,
        reminders_sent=reminders["sent"],
        confirmed_by_reminder=reminders["confirmed"],
        cancelled_by_reminder=reminders["cancelled"],
        **counts,
    )


def waitlist_entries(
    *, clinic: Clinic, specialty: Specialty | None = None, include_closed: bool = False
) -> QuerySet[WaitlistEntry]:
    """The clinic's waitlist, longest waiting first, with each entry's latest offer status."""
    entries = WaitlistEntry.objects.filter(clinic=clinic)
    if specialty is not None:
        entries = entries.filter(specialty=specialty)
    if not include_closed:
        entries = entries.filter(status=WaitlistEntry.Status.WAITING)
    open_offer = WaitlistOffer.objects.filter(
        entry=OuterRef("pk"), status=WaitlistOffer.Status.PENDING
    )
    return (
        entries.select_related("patient", "specialty", "doctor", "appointment")
        .annotate(
            has_open_offer=Exists(open_offer),
            offers_made=Count("offers"),
        )
        .order_by("created_at", "id")
    )


def waitlist_counts(*, clinic: Clinic) -> dict[int, int]:
    """{specialty id: patients waiting} for the clinic's nav and specialty list."""
    return dict(
        WaitlistEntry.objects.filter(clinic=clinic, status=WaitlistEntry.Status.WAITING)
        .values_list("specialty_id")
        .annotate(n=Count("pk"))
        .values_list("specialty_id", "n")
    )
