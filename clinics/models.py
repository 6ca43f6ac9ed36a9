"""The scheduling domain (DESIGN §3). Only clinics.services changes bookings."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import holidays
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from clinics.identifiers import DOCUMENT_PATTERN, mask

document_validator = RegexValidator(
    DOCUMENT_PATTERN, _("The document number must have 8 to 15 digits, with no other characters.")
)


def default_hold_minutes() -> int:
    return settings.SOPHIA_HOLD_MINUTES


def default_min_notice_minutes() -> int:
    return settings.SOPHIA_MIN_NOTICE_MINUTES


def default_booking_horizon_days() -> int:
    return settings.SOPHIA_SLOT_DAYS_AHEAD


def validate_country(value: str) -> None:
    if value not in holidays.list_supported_countries():
        raise ValidationError(_("Unknown country code: %(code)s"), params={"code": value})


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(_("Unknown time zone: %(tz)s"), params={"tz": value}) from exc


class Clinic(models.Model):
    slug = models.SlugField(unique=True, verbose_name=_("slug"))
    name = models.CharField(_("name"), max_length=200)
    phone_number_id = models.CharField(_("WhatsApp phone number id"), max_length=32, unique=True)
    whatsapp_access_token = models.CharField(
        _("WhatsApp access token (overrides the global one)"), max_length=512, blank=True
    )
    time_zone = models.CharField(
        _("time zone"), max_length=64, default="America/Bogota", validators=[validate_time_zone]
    )
    address = models.CharField(_("address"), max_length=300, blank=True)
    opening_hours = models.TextField(_("opening hours"), blank=True)
    what_to_bring = models.TextField(_("what to bring"), blank=True)
    emergency_line = models.CharField(_("emergency line"), max_length=40, default="123")
    self_registration = models.BooleanField(_("patients may self-register"), default=True)
    whatsapp_number = models.CharField(
        _("WhatsApp number shown to patients"), max_length=20, blank=True
    )
    # ISO 3166 code for the `holidays` calendar that clinic-wide holidays are loaded from.
    country = models.CharField(
        _("country"), max_length=2, default="CO", validators=[validate_country]
    )
    hold_minutes = models.PositiveSmallIntegerField(_("hold minutes"), default=default_hold_minutes)
    min_notice_minutes = models.PositiveIntegerField(
        _("minimum notice (minutes)"), default=default_min_notice_minutes
    )
    booking_horizon_days = models.PositiveSmallIntegerField(
        _("booking horizon (days)"), default=default_booking_horizon_days
    )
    # Years whose holidays were loaded from the calendar once; a holiday an admin deleted
    # afterwards stays deleted.
    holiday_years_loaded = models.JSONField(_("holiday years loaded"), default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("clinic")
        verbose_name_plural = _("clinics")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)


class Specialty(models.Model):
    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="specialties", verbose_name=_("clinic")
    )
    slug = models.SlugField(verbose_name=_("slug"))
    name = models.CharField(_("name"), max_length=120)
    triage_keywords = models.TextField(
        _("triage keywords"),
        blank=True,
        help_text=_(
            "Words or phrases, one per line or comma separated, that point to this specialty."
        ),
    )

    class Meta:
        verbose_name = _("specialty")
        verbose_name_plural = _("specialties")
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["clinic", "slug"], name="specialty_unique_slug")
        ]

    def __str__(self) -> str:
        return self.name

    def keyword_list(self) -> list[str]:
        raw = self.triage_keywords.replace("\n", ",")
        return [k.strip() for k in raw.split(",") if k.strip()]


class Doctor(models.Model):
    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="doctors", verbose_name=_("clinic")
    )
    full_name = models.CharField(_("full name"), max_length=200)
    specialties = models.ManyToManyField(
        Specialty, related_name="doctors", verbose_name=_("specialties")
    )
    active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("doctor")
        verbose_name_plural = _("doctors")
        ordering = ["full_name"]

    def __str__(self) -> str:
        return self.full_name


class Schedule(models.Model):
    """A doctor's weekly template; slots are generated from it in the clinic's time zone."""

    doctor = models.ForeignKey(
        Doctor, on_delete=models.CASCADE, related_name="schedules", verbose_name=_("doctor")
    )
    # ISO weekdays as Python counts them: 0 = Monday … 6 = Sunday.
    weekdays = models.JSONField(_("weekdays (0 = Monday)"), default=list)
    start_time = models.TimeField(_("start time"))
    end_time = models.TimeField(_("end time"))
    slot_minutes = models.PositiveSmallIntegerField(_("slot minutes"), default=20)
    valid_from = models.DateField(_("valid from"))
    valid_to = models.DateField(_("valid to"), null=True, blank=True)
    # 2 = every other week, counted from the week (Monday) of valid_from.
    every_n_weeks = models.PositiveSmallIntegerField(_("every N weeks"), default=1)

    class Meta:
        verbose_name = _("weekly schedule")
        verbose_name_plural = _("weekly schedules")
        ordering = ["doctor", "start_time"]
        constraints = [
            models.CheckConstraint(
                condition=Q(end_time__gt=models.F("start_time")), name="schedule_end_after_start"
            ),
            models.CheckConstraint(
                condition=Q(slot_minutes__gte=5) & Q(slot_minutes__lte=480),
                name="schedule_slot_minutes_range",
            ),
            models.CheckConstraint(
                condition=Q(every_n_weeks__gte=1) & Q(every_n_weeks__lte=8),
                name="schedule_every_n_weeks_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.doctor} {self.weekdays} {self.start_time}-{self.end_time}"

    def clean(self) -> None:
        if not isinstance(self.weekdays, list) or not all(
            isinstance(d, int) and 0 <= d <= 6 for d in self.weekdays
        ):
            raise ValidationError({"weekdays": _("Weekdays must be a list of numbers 0–6.")})
        if self.valid_to and self.valid_to < self.valid_from:
            raise ValidationError({"valid_to": _("The end date is before the start date.")})

    def applies_on(self, day: dt.date) -> bool:
        if not (
            day.weekday() in self.weekdays
            and day >= self.valid_from
            and (self.valid_to is None or day <= self.valid_to)
        ):
            return False
        if self.every_n_weeks <= 1:
            return True
        first_monday = self.valid_from - dt.timedelta(days=self.valid_from.weekday())
        return ((day - first_monday).days // 7) % self.every_n_weeks == 0


class ExtraHours(models.Model):
    """Hours a doctor works on one date on top of (or instead of a missing) weekly schedule."""

    doctor = models.ForeignKey(
        Doctor, on_delete=models.CASCADE, related_name="extra_hours", verbose_name=_("doctor")
    )
    date = models.DateField(_("date"))
    start_time = models.TimeField(_("start time"))
    end_time = models.TimeField(_("end time"))
    slot_minutes = models.PositiveSmallIntegerField(_("slot minutes"), default=20)
    note = models.CharField(_("note"), max_length=200, blank=True)

    class Meta:
        verbose_name = _("extra hours")
        verbose_name_plural = _("extra hours")
        ordering = ["date", "start_time"]
        indexes = [models.Index(fields=["doctor", "date"], name="extra_hours_doctor_date")]
        constraints = [
            models.CheckConstraint(
                condition=Q(end_time__gt=models.F("start_time")), name="extra_end_after_start"
            ),
            models.CheckConstraint(
                condition=Q(slot_minutes__gte=5) & Q(slot_minutes__lte=480),
                name="extra_slot_minutes_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.doctor} {self.date} {self.start_time}-{self.end_time}"


class BlockedPeriodQuerySet(models.QuerySet):
    def covering(self, *, clinic_id, doctor_id, start_at, end_at) -> BlockedPeriodQuerySet:
        """Periods that overlap [start_at, end_at) for that doctor: theirs or the whole clinic's.

        The arguments may be values or expressions (`OuterRef("start_at")`), so one definition
        serves a single slot (clinics.services) and an availability query (clinics.selectors).
        """
        return self.filter(
            Q(doctor__isnull=True) | Q(doctor_id=doctor_id),
            clinic_id=clinic_id,
            starts_at__lt=end_at,
            ends_at__gt=start_at,
        )


class BlockedPeriod(models.Model):
    """A holiday (whole clinic, doctor empty), a doctor's absence or a block set by hand on a
    slot or range; no bookable slot inside it."""

    class Kind(models.TextChoices):
        ABSENCE = "absence", _("absence")
        HOLIDAY = "holiday", _("holiday")
        BLOCK = "block", _("blocked by hand")

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="blocked_periods", verbose_name=_("clinic")
    )
    doctor = models.ForeignKey(
        Doctor,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="blocked_periods",
        verbose_name=_("doctor"),
    )
    starts_at = models.DateTimeField(_("starts at"))
    ends_at = models.DateTimeField(_("ends at"))
    reason = models.CharField(_("reason"), max_length=200, blank=True)
    kind = models.CharField(_("kind"), max_length=8, choices=Kind.choices, default=Kind.ABSENCE)

    objects = BlockedPeriodQuerySet.as_manager()

    class Meta:
        verbose_name = _("blocked period")
        verbose_name_plural = _("blocked periods")
        ordering = ["starts_at"]
        indexes = [models.Index(fields=["clinic", "starts_at", "ends_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(ends_at__gt=models.F("starts_at")), name="blocked_end_after_start"
            )
        ]

    def __str__(self) -> str:
        return f"{self.reason or 'blocked'} {self.starts_at:%Y-%m-%d %H:%M}"


class SlotStatus(models.TextChoices):
    FREE = "free", _("free")
    HELD = "held", _("held")
    BOOKED = "booked", _("booked")
    BLOCKED = "blocked", _("blocked")


class Slot(models.Model):
    """A bookable time of one doctor, stored in UTC.

    `held_until` mirrors the live SlotHold so availability is one indexed query: a held slot whose
    hold has expired counts as free without any job having to run.
    """

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="slots", verbose_name=_("clinic")
    )
    doctor = models.ForeignKey(
        Doctor, on_delete=models.CASCADE, related_name="slots", verbose_name=_("doctor")
    )
    start_at = models.DateTimeField(_("starts at"))
    end_at = models.DateTimeField(_("ends at"))
    status = models.CharField(
        max_length=8, choices=SlotStatus.choices, default=SlotStatus.FREE, verbose_name=_("status")
    )
    held_until = models.DateTimeField(null=True, blank=True, verbose_name=_("held until"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("slot")
        verbose_name_plural = _("slots")
        ordering = ["start_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["doctor", "start_at"], name="slot_unique_doctor_start"),
            models.CheckConstraint(
                condition=Q(end_at__gt=models.F("start_at")), name="slot_end_after_start"
            ),
        ]
        indexes = [
            # Available-slot pages: keyset on (start_at, id) over bookable slots only.
            models.Index(
                fields=["clinic", "start_at", "id"],
                name="slot_bookable_keyset",
                condition=Q(status__in=["free", "held"]),
            ),
            models.Index(
                fields=["doctor", "start_at", "id"],
                name="slot_doctor_bookable_keyset",
                condition=Q(status__in=["free", "held"]),
            ),
            models.Index(fields=["clinic", "start_at"], name="slot_clinic_start"),
        ]

    def __str__(self) -> str:
        return f"{self.doctor} {self.start_at:%Y-%m-%d %H:%M} ({self.status})"

    def is_bookable(self, now: dt.datetime | None = None) -> bool:
        now = now or timezone.now()
        if self.status == SlotStatus.FREE:
            return True
        return self.status == SlotStatus.HELD and (
            self.held_until is None or self.held_until <= now
        )


class SlotHold(models.Model):
    """A short reservation while a patient confirms; expires by itself."""

    slot = models.ForeignKey(
        Slot, on_delete=models.CASCADE, related_name="holds", verbose_name=_("slot")
    )
    holder = models.CharField(
        max_length=120, help_text="who holds it, e.g. conversation:42", verbose_name=_("holder")
    )
    patient = models.ForeignKey(
        "Patient",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="holds",
        verbose_name=_("patient"),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    expires_at = models.DateTimeField(verbose_name=_("expires at"))
    released_at = models.DateTimeField(null=True, blank=True, verbose_name=_("released at"))

    class Meta:
        verbose_name = _("slot hold")
        verbose_name_plural = _("slot holds")
        indexes = [
            models.Index(
                fields=["expires_at"], name="hold_live_expiry", condition=Q(released_at=None)
            ),
            models.Index(fields=["holder", "slot"], name="hold_holder_slot"),
        ]

    def __str__(self) -> str:
        return f"hold {self.slot_id} by {self.holder} until {self.expires_at:%H:%M:%S}"


class Patient(models.Model):
    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="patients", verbose_name=_("clinic")
    )
    document = models.CharField(
        _("document number"), max_length=15, validators=[document_validator]
    )
    full_name = models.CharField(_("full name"), max_length=200)
    birth_date = models.DateField(_("date of birth"), null=True, blank=True)
    whatsapp_id = models.CharField(_("WhatsApp number"), max_length=20, blank=True)
    # Set when the patient wrote "STOP" / "no quiero recordatorios"; staff see it on the card.
    reminders_opted_out_at = models.DateTimeField(_("stopped reminders at"), null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))

    class Meta:
        verbose_name = _("patient")
        verbose_name_plural = _("patients")
        ordering = ["full_name"]
        constraints = [
            models.UniqueConstraint(fields=["clinic", "document"], name="patient_unique_document"),
            models.CheckConstraint(
                condition=Q(document__regex=r"^[0-9]{8,15}$"), name="patient_document_digits"
            ),
        ]
        indexes = [models.Index(fields=["clinic", "whatsapp_id"], name="patient_clinic_wa")]

    def __str__(self) -> str:
        return self.full_name

    @property
    def masked_document(self) -> str:
        """For logs and lists: never the whole document."""
        return mask(self.document, keep=3)


class PatientPhone(models.Model):
    """A WhatsApp number verified for a patient besides the one on file (Patient.whatsapp_id).

    A patient may have several (a new phone); a number may serve several patients (a parent
    and the children). Adding one never replaces the number on file; staff may remove any.
    """

    class How(models.TextChoices):
        BIRTH_DATE = "birth_date", _("birth date checked by the bot")
        REGISTRATION = "registration", _("registered from this number")
        STAFF = "staff", _("added by staff")

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="patient_phones", verbose_name=_("clinic")
    )
    patient = models.ForeignKey(
        Patient, on_delete=models.CASCADE, related_name="phones", verbose_name=_("patient")
    )
    wa_id = models.CharField(_("WhatsApp number"), max_length=20)
    how = models.CharField(_("verified by"), max_length=16, choices=How.choices)
    verified_at = models.DateTimeField(_("verified at"), default=timezone.now)

    class Meta:
        verbose_name = _("patient's WhatsApp number")
        verbose_name_plural = _("patients' WhatsApp numbers")
        ordering = ["verified_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["patient", "wa_id"], name="patient_phone_unique")
        ]
        indexes = [models.Index(fields=["clinic", "wa_id"], name="patient_phone_clinic_wa")]

    def __str__(self) -> str:
        return f"{self.patient} …{self.wa_id[-4:]}"


class IdentityFailure(models.Model):
    """One wrong answer to an identity check (a birth date that did not match a document).

    Counted per patient (across numbers and conversations) and per number (across patients)
    until staff lift the lock-out they led to, which clears them.
    """

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="identity_failures", verbose_name=_("clinic")
    )
    patient = models.ForeignKey(
        Patient,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="identity_failures",
        verbose_name=_("patient"),
    )
    wa_id = models.CharField(_("WhatsApp number"), max_length=20)
    at = models.DateTimeField(_("at"), default=timezone.now)
    cleared_at = models.DateTimeField(_("cleared at"), null=True, blank=True)

    class Meta:
        verbose_name = _("failed identity check")
        verbose_name_plural = _("failed identity checks")
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(
                fields=["patient"], name="idfail_patient_open", condition=Q(cleared_at=None)
            ),
            models.Index(
                fields=["clinic", "wa_id"], name="idfail_number_open", condition=Q(cleared_at=None)
            ),
        ]

    def __str__(self) -> str:
        return f"identity failure …{self.wa_id[-4:]} {self.at:%Y-%m-%d %H:%M}"


class IdentityLockout(models.Model):
    """No identity check is accepted for this patient (from any new number), or from this number
    (for any patient), until staff lift it. A patient's own verified numbers keep working."""

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="identity_lockouts", verbose_name=_("clinic")
    )
    patient = models.ForeignKey(
        Patient,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="identity_lockouts",
        verbose_name=_("patient"),
    )
    wa_id = models.CharField(_("WhatsApp number"), max_length=20, blank=True)
    locked_at = models.DateTimeField(_("locked at"), default=timezone.now)
    lifted_at = models.DateTimeField(_("lifted at"), null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("lifted by"),
    )

    class Meta:
        verbose_name = _("identity lock-out")
        verbose_name_plural = _("identity lock-outs")
        ordering = ["-locked_at", "-id"]
        constraints = [
            # Either a patient's lock-out or a number's, never both nor neither.
            models.CheckConstraint(
                condition=(Q(patient__isnull=False) & Q(wa_id=""))
                | (Q(patient__isnull=True) & ~Q(wa_id="")),
                name="lockout_patient_xor_number",
            ),
            models.UniqueConstraint(
                fields=["patient"],
                condition=Q(lifted_at=None, patient__isnull=False),
                name="lockout_one_active_per_patient",
            ),
            models.UniqueConstraint(
                fields=["clinic", "wa_id"],
                condition=Q(lifted_at=None, patient=None),
                name="lockout_one_active_per_number",
            ),
        ]

    def __str__(self) -> str:
        who = str(self.patient) if self.patient_id else f"…{self.wa_id[-4:]}"
        return f"lock-out {who} {self.locked_at:%Y-%m-%d %H:%M}"

    @property
    def active(self) -> bool:
        return self.lifted_at is None


class AppointmentStatus(models.TextChoices):
    BOOKED = "booked", _("booked")
    CONFIRMED = "confirmed", _("confirmed")
    CANCELLED = "cancelled", _("cancelled")
    ATTENDED = "attended", _("attended")
    NO_SHOW = "no_show", _("no show")


# Statuses that occupy the slot: everything but cancelled.
OCCUPYING_STATUSES = [
    AppointmentStatus.BOOKED,
    AppointmentStatus.CONFIRMED,
    AppointmentStatus.ATTENDED,
    AppointmentStatus.NO_SHOW,
]
# Statuses a patient can still cancel or reschedule.
UPCOMING_STATUSES = [AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED]


class AppointmentSource(models.TextChoices):
    BOT = "bot", _("WhatsApp bot")
    STAFF = "staff", _("staff")
    API = "api", _("API")


class Appointment(models.Model):
    """A patient's booking of one slot.

    Doctor, patient and times are copied from the slot so the database itself can refuse
    overlaps (exclusion constraints cannot follow joins); see migration 0002.
    """

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="appointments", verbose_name=_("clinic")
    )
    patient = models.ForeignKey(
        Patient, on_delete=models.PROTECT, related_name="appointments", verbose_name=_("patient")
    )
    slot = models.ForeignKey(
        Slot, on_delete=models.PROTECT, related_name="appointments", verbose_name=_("slot")
    )
    doctor = models.ForeignKey(
        Doctor, on_delete=models.PROTECT, related_name="appointments", verbose_name=_("doctor")
    )
    specialty = models.ForeignKey(
        Specialty,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="appointments",
        verbose_name=_("specialty"),
    )
    start_at = models.DateTimeField(verbose_name=_("starts at"))
    end_at = models.DateTimeField(verbose_name=_("ends at"))
    status = models.CharField(
        max_length=10,
        choices=AppointmentStatus.choices,
        default=AppointmentStatus.BOOKED,
        verbose_name=_("status"),
    )
    patient_notes = models.TextField(_("reported symptoms"), blank=True)
    source = models.CharField(
        max_length=8, choices=AppointmentSource.choices, verbose_name=_("source")
    )
    cancel_reason = models.CharField(_("cancel reason"), max_length=300, blank=True)
    rescheduled_from = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="rescheduled_to",
        verbose_name=_("rescheduled from"),
    )
    created_at = models.DateTimeField(auto_now_add=True, verbose_name=_("created at"))
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("appointment")
        verbose_name_plural = _("appointments")
        ordering = ["start_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["slot"],
                condition=~Q(status="cancelled"),
                name="appointment_one_active_per_slot",
            ),
            models.CheckConstraint(
                condition=Q(end_at__gt=models.F("start_at")), name="appointment_end_after_start"
            ),
        ]
        indexes = [
            models.Index(fields=["patient", "status", "start_at"], name="appt_patient_status"),
            models.Index(fields=["clinic", "start_at"], name="appt_clinic_start"),
            models.Index(fields=["clinic", "status", "start_at"], name="appt_clinic_status"),
            models.Index(fields=["doctor", "start_at"], name="appt_doctor_start"),
            models.Index(fields=["created_at"], name="appt_created"),
        ]

    def __str__(self) -> str:
        return f"{self.patient} {self.start_at:%Y-%m-%d %H:%M} ({self.status})"

    @property
    def is_upcoming(self) -> bool:
        return self.status in UPCOMING_STATUSES and self.start_at > timezone.now()


class AuditEvent(models.Model):
    """Who changed what, when, from what to what. Written by services only."""

    class ActorType(models.TextChoices):
        PATIENT = "patient", _("patient (bot)")
        STAFF = "staff", _("staff")
        API = "api", _("API key")
        SYSTEM = "system", _("system")

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="audit_events", verbose_name=_("clinic")
    )
    actor_type = models.CharField(
        max_length=8, choices=ActorType.choices, verbose_name=_("actor type")
    )
    actor_id = models.CharField(max_length=64, blank=True, verbose_name=_("actor id"))
    actor_label = models.CharField(max_length=200, blank=True, verbose_name=_("actor"))
    action = models.CharField(max_length=64, verbose_name=_("action"))
    object_type = models.CharField(max_length=64, verbose_name=_("object type"))
    object_id = models.CharField(max_length=64, verbose_name=_("object id"))
    before = models.JSONField(null=True, blank=True, verbose_name=_("before"))
    after = models.JSONField(null=True, blank=True, verbose_name=_("after"))
    at = models.DateTimeField(default=timezone.now, verbose_name=_("at"))

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["clinic", "at"], name="audit_clinic_at"),
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_type} {self.action} {self.object_type}"


class StaffMembership(models.Model):
    class Role(models.TextChoices):
        RECEPTIONIST = "receptionist", _("receptionist")
        ADMIN = "admin", _("clinic admin")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="memberships",
        verbose_name=_("user"),
    )
    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("clinic")
    )
    role = models.CharField(
        max_length=16, choices=Role.choices, default=Role.RECEPTIONIST, verbose_name=_("role")
    )

    class Meta:
        verbose_name = _("staff membership")
        verbose_name_plural = _("staff memberships")
        constraints = [models.UniqueConstraint(fields=["user", "clinic"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.clinic} ({self.role})"


class FaqEntry(models.Model):
    """A question patients ask about the clinic and the answer the bot gives, edited by admins.

    The bot answers from these entries only (price, insurance, parking, how to get there…); an
    optional LLM may rephrase an entry's answer but never adds facts of its own.
    """

    clinic = models.ForeignKey(
        Clinic, on_delete=models.CASCADE, related_name="faq_entries", verbose_name=_("clinic")
    )
    question = models.CharField(_("patient question"), max_length=200)
    keywords = models.TextField(
        _("question keywords"),
        blank=True,
        help_text=_(
            "Words or phrases patients use for this question, one per line or comma separated "
            "(for example: parqueadero, dónde parqueo, hay parqueo)."
        ),
    )
    answer = models.TextField(_("answer to patients"))
    active = models.BooleanField(_("answered by the bot"), default=True)
    position = models.PositiveSmallIntegerField(_("order in the list"), default=0)
    updated_at = models.DateTimeField(auto_now=True, verbose_name=_("updated at"))

    class Meta:
        verbose_name = _("frequent question")
        verbose_name_plural = _("frequent questions")
        ordering = ["clinic", "position", "id"]
        indexes = [models.Index(fields=["clinic", "active"], name="faq_clinic_active")]

    def __str__(self) -> str:
        return self.question

    def keyword_list(self) -> list[str]:
        raw = self.keywords.replace("\n", ",")
        return [k.strip() for k in raw.split(",") if k.strip()]
