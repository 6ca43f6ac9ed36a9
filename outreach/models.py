"""Reminders and the waitlist (issue 10): per-clinic settings, one row per reminder sent, the
waitlist's entries and the offers made to them.

Idempotency lives in the database: a reminder is one `ReminderDispatch` row per (appointment,
ordinal), a waitlist offer one `WaitlistOffer` row per (entry, slot). Workers claim rows with
conditional updates, so two workers never send the same reminder or offer.
"""

import datetime as dt

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from bot.models import Conversation, Message
from clinics.models import Appointment, Clinic, Doctor, Patient, Slot, Specialty

DEFAULT_REMINDER_TEMPLATE = "recordatorio_cita"
DEFAULT_WAITLIST_TEMPLATE = "cupo_lista_espera"


def default_window_start() -> dt.time:
    return dt.time(8, 0)


def default_window_end() -> dt.time:
    return dt.time(20, 0)


class OutreachSettings(models.Model):
    """One clinic's reminder and waitlist policy. A clinic without a row uses the defaults."""

    clinic = models.OneToOneField(
        Clinic, on_delete=models.CASCADE, related_name="outreach_settings", verbose_name=_("clinic")
    )
    reminders_enabled = models.BooleanField(_("send appointment reminders"), default=True)
    hours_before = models.PositiveSmallIntegerField(
        _("reminder: hours before the appointment"),
        default=24,
        validators=[MinValueValidator(1), MaxValueValidator(168)],
    )
    second_hours_before = models.PositiveSmallIntegerField(
        _("second reminder: hours before (optional)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(168)],
    )
    template_name = models.CharField(
        _("approved reminder template"), max_length=512, default=DEFAULT_REMINDER_TEMPLATE
    )
    template_language = models.CharField(_("template language"), max_length=16, default="es")
    # Callables: Django warns about fixed time defaults (fields.W161).
    window_start = models.TimeField(_("send messages from"), default=default_window_start)
    window_end = models.TimeField(_("send messages until"), default=default_window_end)
    waitlist_batch = models.PositiveSmallIntegerField(
        _("waitlist: patients offered a freed slot at once"),
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
    )
    waitlist_offer_minutes = models.PositiveSmallIntegerField(
        _("waitlist: minutes to answer an offer"),
        default=30,
        validators=[MinValueValidator(5), MaxValueValidator(24 * 60)],
    )
    waitlist_template_name = models.CharField(
        _("approved waitlist offer template"), max_length=512, default=DEFAULT_WAITLIST_TEMPLATE
    )

    class Meta:
        verbose_name = _("reminder and waitlist settings")
        verbose_name_plural = _("reminder and waitlist settings")
        constraints = [
            models.CheckConstraint(
                condition=Q(second_hours_before__isnull=True)
                | Q(second_hours_before__lt=models.F("hours_before")),
                name="outreach_second_reminder_later",
            ),
            models.CheckConstraint(
                condition=~Q(window_start=models.F("window_end")), name="outreach_window_not_empty"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.clinic}: {self.hours_before} h"

    def clean(self) -> None:
        if self.second_hours_before is not None and self.second_hours_before >= self.hours_before:
            raise ValidationError(
                {"second_hours_before": _("The second reminder must come after the first one.")}
            )
        if self.window_start == self.window_end:
            raise ValidationError({"window_end": _("The sending window cannot be empty.")})

    def leads(self) -> list[tuple[int, dt.timedelta]]:
        """(ordinal, time before the appointment) of each reminder, the earliest first."""
        found = [(1, dt.timedelta(hours=self.hours_before))]
        if self.second_hours_before:
            found.append((2, dt.timedelta(hours=self.second_hours_before)))
        return found

    def in_window(self, moment: dt.datetime) -> bool:
        """Whether `moment` falls inside the clinic's sending hours (local time)."""
        local = timezone.localtime(moment, self.clinic.tz).time()
        if self.window_start < self.window_end:
            return self.window_start <= local < self.window_end
        return local >= self.window_start or local < self.window_end  # overnight window

    def next_window_start(self, moment: dt.datetime) -> dt.datetime:
        """`moment` itself when inside the window, else when the window next opens."""
        if self.in_window(moment):
            return moment
        tz = self.clinic.tz
        local = timezone.localtime(moment, tz)
        opens = dt.datetime.combine(local.date(), self.window_start, tzinfo=tz)
        if opens <= local:
            opens = dt.datetime.combine(
                local.date() + dt.timedelta(days=1), self.window_start, tzinfo=tz
            )
        return opens


class ReminderDispatch(models.Model):
    """One reminder of one appointment: created once (unique), then queued once in the outbox."""

    class Status(models.TextChoices):
        PENDING = "pending", _("due")
        QUEUED = "queued", _("sent to the outbox")
        SKIPPED = "skipped", _("not sent")

    class Response(models.TextChoices):
        NONE = "", _("no answer")
        CONFIRMED = "confirmed", _("confirmed")
        CANCELLED = "cancelled", _("cancelled")

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="reminders", verbose_name=_("clinic")
    )
    appointment = models.ForeignKey(
        Appointment,
        on_delete=models.CASCADE,
        related_name="reminders",
        verbose_name=_("appointment"),
    )
    ordinal = models.PositiveSmallIntegerField(_("reminder number"), default=1)
    due_at = models.DateTimeField(_("due at"))
    status = models.CharField(
        _("status"), max_length=8, choices=Status.choices, default=Status.PENDING
    )
    skip_reason = models.CharField(_("why not sent"), max_length=32, blank=True)
    # Not before then: the sending window closed while the reminder waited to be queued.
    not_before = models.DateTimeField(_("not before"), null=True, blank=True)
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reminders",
        verbose_name=_("conversation"),
    )
    message = models.OneToOneField(
        Message,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reminder",
        verbose_name=_("message"),
    )
    response = models.CharField(
        _("answer"), max_length=10, choices=Response.choices, default=Response.NONE, blank=True
    )
    responded_at = models.DateTimeField(_("answered at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    queued_at = models.DateTimeField(_("queued at"), null=True, blank=True)

    class Meta:
        verbose_name = _("reminder")
        verbose_name_plural = _("reminders")
        ordering = ["-due_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["appointment", "ordinal"], name="reminder_once_per_appointment"
            )
        ]
        indexes = [
            models.Index(
                fields=["due_at", "id"], name="reminder_pending", condition=Q(status="pending")
            ),
            models.Index(fields=["conversation", "-queued_at"], name="reminder_conversation"),
        ]

    def __str__(self) -> str:
        return f"reminder {self.ordinal} of appointment {self.appointment_id} ({self.status})"


class PartOfDay(models.TextChoices):
    ANY = "any", _("any time")
    MORNING = "morning", _("morning")
    AFTERNOON = "afternoon", _("afternoon")


# Local hour where the afternoon starts (the bot's "en la tarde").
AFTERNOON_FROM = dt.time(12, 0)


class WaitlistEntry(models.Model):
    """A patient waiting for a slot of a specialty (optionally one doctor, one part of the day)."""

    class Status(models.TextChoices):
        WAITING = "waiting", _("waiting")
        BOOKED = "booked", _("got an appointment")
        REMOVED = "removed", _("removed")

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="waitlist", verbose_name=_("clinic")
    )
    specialty = models.ForeignKey(
        Specialty, on_delete=models.CASCADE, related_name="waitlist", verbose_name=_("specialty")
    )
    patient = models.ForeignKey(
        Patient, on_delete=models.CASCADE, related_name="waitlist", verbose_name=_("patient")
    )
    doctor = models.ForeignKey(
        Doctor,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="waitlist",
        verbose_name=_("doctor"),
    )
    part_of_day = models.CharField(
        _("part of the day"), max_length=10, choices=PartOfDay.choices, default=PartOfDay.ANY
    )
    conversation = models.ForeignKey(
        Conversation,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="waitlist",
        verbose_name=_("conversation"),
    )
    status = models.CharField(
        _("status"), max_length=8, choices=Status.choices, default=Status.WAITING
    )
    appointment = models.ForeignKey(
        Appointment,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("appointment"),
    )
    source = models.CharField(_("added by"), max_length=8, default="bot")
    created_at = models.DateTimeField(_("waiting since"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("waitlist entry")
        verbose_name_plural = _("waitlist entries")
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "specialty"],
                condition=Q(status="waiting"),
                name="waitlist_one_per_patient_specialty",
            )
        ]
        indexes = [
            models.Index(
                fields=["clinic", "specialty", "created_at", "id"],
                name="waitlist_waiting",
                condition=Q(status="waiting"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.patient} · {self.specialty} ({self.status})"

    def matches(self, slot: Slot, tz) -> bool:
        """Whether this entry's doctor and part of the day accept `slot` (specialty aside)."""
        if self.doctor_id is not None and self.doctor_id != slot.doctor_id:
            return False
        if self.part_of_day == PartOfDay.ANY:
            return True
        afternoon = timezone.localtime(slot.start_at, tz).time() >= AFTERNOON_FROM
        return afternoon == (self.part_of_day == PartOfDay.AFTERNOON)


class WaitlistOffer(models.Model):
    """A freed slot offered to one waiting patient; the first of them to accept books it."""

    class Status(models.TextChoices):
        PENDING = "pending", _("waiting for an answer")
        ACCEPTED = "accepted", _("accepted")
        DECLINED = "declined", _("declined")
        EXPIRED = "expired", _("unanswered")
        TAKEN = "taken", _("taken by someone else")

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="waitlist_offers", verbose_name=_("clinic")
    )
    entry = models.ForeignKey(
        WaitlistEntry, on_delete=models.CASCADE, related_name="offers", verbose_name=_("entry")
    )
    slot = models.ForeignKey(
        Slot, on_delete=models.CASCADE, related_name="waitlist_offers", verbose_name=_("slot")
    )
    status = models.CharField(
        _("status"), max_length=8, choices=Status.choices, default=Status.PENDING
    )
    message = models.ForeignKey(
        Message,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("message"),
    )
    created_at = models.DateTimeField(_("offered at"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires at"))
    responded_at = models.DateTimeField(_("answered at"), null=True, blank=True)

    class Meta:
        verbose_name = _("waitlist offer")
        verbose_name_plural = _("waitlist offers")
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["entry", "slot"], name="waitlist_offer_once")
        ]
        indexes = [
            models.Index(
                fields=["expires_at"], name="waitlist_offer_pending", condition=Q(status="pending")
            ),
            models.Index(fields=["slot", "status"], name="waitlist_offer_slot"),
        ]

    def __str__(self) -> str:
        return f"offer of slot {self.slot_id} to entry {self.entry_id} ({self.status})"
