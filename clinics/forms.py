"""Forms of the staff console's agenda pages. They parse and explain (in Spanish, via gettext);
the rules they share with services live in clinics.scheduling / clinics.services.

Dates and times are entered as the clinic's local wall-clock values (never converted with the
browser's or server's zone) and turned into instants with the clinic's zone here.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

import holidays
from babel import Locale
from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from clinics import scheduling, services
from clinics.models import (
    AppointmentSource,
    AppointmentStatus,
    BlockedPeriod,
    Clinic,
    Doctor,
    Schedule,
    Specialty,
)

DATE = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
TIME = forms.TimeInput(attrs={"type": "time", "step": 300}, format="%H:%M")
WEEKDAY_CHOICES = [
    (0, capfirst(_("Mon"))),
    (1, capfirst(_("Tue"))),
    (2, capfirst(_("Wed"))),
    (3, capfirst(_("Thu"))),
    (4, capfirst(_("Fri"))),
    (5, capfirst(_("Sat"))),
    (6, capfirst(_("Sun"))),
]
STRANDED_CHOICES = [
    (services.STRANDED_KEEP, _("Keep these appointments")),
    (services.STRANDED_CANCEL, _("Cancel them and tell each patient by WhatsApp")),
]


def local_instant(day: dt.date, time: dt.time, clinic: Clinic) -> dt.datetime:
    return dt.datetime.combine(day, time, tzinfo=clinic.tz)


def clinic_today(clinic: Clinic) -> dt.date:
    return timezone.localdate(timezone.now(), clinic.tz)


def _time_zone_choices() -> list[tuple[str, str]]:
    zones = sorted(zoneinfo.available_timezones())
    americas = [z for z in zones if z.startswith("America/")]
    others = [z for z in zones if not z.startswith("America/") and "/" in z]
    return [(z, z.replace("_", " ")) for z in americas + others]


def _country_choices() -> list[tuple[str, str]]:
    names = Locale("es").territories
    codes = holidays.list_supported_countries()
    return sorted(((c, names.get(c, c)) for c in codes if len(c) == 2), key=lambda p: p[1])


class ClinicSettingsForm(forms.ModelForm):
    time_zone = forms.ChoiceField(label=capfirst(_("time zone")), choices=_time_zone_choices)
    country = forms.ChoiceField(label=capfirst(_("country")), choices=_country_choices)
    hold_minutes = forms.IntegerField(label=capfirst(_("hold minutes")), min_value=1, max_value=60)
    min_notice_minutes = forms.IntegerField(
        label=capfirst(_("minimum notice (minutes)")), min_value=0, max_value=60 * 24 * 30
    )
    booking_horizon_days = forms.IntegerField(
        label=capfirst(_("booking horizon (days)")), min_value=7, max_value=366
    )
    whatsapp_number = forms.RegexField(
        label=capfirst(_("WhatsApp number shown to patients")),
        regex=r"^\+?[0-9 ]{7,20}$",
        required=False,
        error_messages={"invalid": _("Write the number with digits only, e.g. +57 300 1234567.")},
    )

    class Meta:
        model = Clinic
        fields = list(services.CLINIC_SETTINGS_FIELDS)
        widgets = {
            "opening_hours": forms.Textarea(attrs={"rows": 3}),
            "what_to_bring": forms.Textarea(attrs={"rows": 3}),
        }


class SpecialtyForm(forms.Form):
    name = forms.CharField(label=capfirst(_("name")), min_length=2, max_length=120)
    triage_keywords = forms.CharField(
        label=capfirst(_("triage keywords")),
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text=_(
            "Words or phrases, one per line or comma separated, that point to this specialty."
        ),
    )


class TriagePhraseForm(forms.Form):
    phrase = forms.CharField(
        label=capfirst(_("Try a phrase")),
        max_length=500,
        widget=forms.TextInput(
            attrs={"placeholder": _("e.g. my son has had a fever since yesterday")}
        ),
    )


class DoctorForm(forms.Form):
    full_name = forms.CharField(label=capfirst(_("full name")), min_length=2, max_length=120)
    specialties = forms.ModelMultipleChoiceField(
        label=capfirst(_("specialties")),
        queryset=Specialty.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one specialty.")},
    )
    active = forms.BooleanField(label=capfirst(_("active")), required=False, initial=True)

    def __init__(self, *args, clinic: Clinic, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["specialties"].queryset = Specialty.objects.filter(clinic=clinic)


class ScheduleBlockForm(forms.Form):
    weekdays = forms.TypedMultipleChoiceField(
        label=capfirst(_("days")),
        choices=WEEKDAY_CHOICES,
        coerce=int,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one weekday.")},
    )
    start_time = forms.TimeField(label=capfirst(_("from")), widget=TIME)
    end_time = forms.TimeField(label=capfirst(_("to")), widget=TIME)
    slot_minutes = forms.IntegerField(label=capfirst(_("minutes per appointment")), initial=20)
    valid_from = forms.DateField(label=capfirst(_("valid from")), widget=DATE)
    valid_to = forms.DateField(label=capfirst(_("valid to")), widget=DATE, required=False)
    every_n_weeks = forms.IntegerField(label=capfirst(_("every N weeks")), initial=1)


class BaseScheduleFormSet(forms.BaseFormSet):
    """The doctor's weekly blocks; checked together (overlaps) with scheduling's rules."""

    def __init__(self, *args, clinic: Clinic, doctor: Doctor, **kwargs) -> None:
        self.clinic = clinic
        self.doctor = doctor
        super().__init__(*args, **kwargs)

    def blocks(self) -> list[dict]:
        return [
            f.cleaned_data
            for f in self.forms
            if f.cleaned_data and not f.cleaned_data.get("DELETE")
        ]

    def schedules(self) -> list[Schedule]:
        schedules, _problems = services.schedule_blocks_check(
            clinic=self.clinic, doctor=self.doctor, blocks=self.blocks()
        )
        return schedules

    def clean(self) -> None:
        if any(self.errors):
            return
        live = [f for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        if not live:
            raise ValidationError(_("Add at least one block, or deactivate the doctor instead."))
        _schedules, problems = services.schedule_blocks_check(
            clinic=self.clinic, doctor=self.doctor, blocks=[f.cleaned_data for f in live]
        )
        for problem in problems:
            live[problem.index].add_error(problem.field, problem.message)
        if problems:
            raise ValidationError(_("Correct the marked blocks."))


ScheduleFormSet = forms.formset_factory(
    ScheduleBlockForm,
    formset=BaseScheduleFormSet,
    extra=0,
    can_delete=True,
    max_num=14,
    validate_max=True,
)


class DecisionMixin(forms.Form):
    """What to do with bookings a change strands; required only when there are some."""

    stranded_action = forms.ChoiceField(
        label=capfirst(_("Booked appointments affected")),
        choices=STRANDED_CHOICES,
        required=False,
        widget=forms.RadioSelect,
    )


class ExtraHoursForm(forms.Form):
    doctor = forms.ModelChoiceField(
        label=capfirst(_("doctor")), queryset=Doctor.objects.none(), empty_label=_("Choose…")
    )
    date = forms.DateField(label=capfirst(_("date")), widget=DATE)
    start_time = forms.TimeField(label=capfirst(_("from")), widget=TIME)
    end_time = forms.TimeField(label=capfirst(_("to")), widget=TIME)
    slot_minutes = forms.IntegerField(label=capfirst(_("minutes per appointment")), initial=20)
    note = forms.CharField(label=capfirst(_("note")), max_length=200, required=False)

    def __init__(self, *args, clinic: Clinic, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clinic = clinic
        self.fields["doctor"].queryset = Doctor.objects.filter(clinic=clinic, active=True)

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        if data["date"] < clinic_today(self.clinic):
            self.add_error("date", _("The date is in the past."))
            return data
        block = Schedule(
            doctor=data["doctor"],
            weekdays=[data["date"].weekday()],
            start_time=data["start_time"],
            end_time=data["end_time"],
            slot_minutes=data["slot_minutes"],
            valid_from=data["date"],
            valid_to=data["date"],
        )
        for problem in scheduling.check_schedule_blocks([block], clinic_today(self.clinic)):
            self.add_error(problem.field, problem.message)
        return data


class PeriodForm(DecisionMixin):
    """An absence (a doctor) or a holiday (every doctor) over whole local days."""

    doctor = forms.ModelChoiceField(
        label=capfirst(_("doctor")), queryset=Doctor.objects.none(), empty_label=_("Choose…")
    )
    date_from = forms.DateField(label=capfirst(_("from")), widget=DATE)
    date_to = forms.DateField(label=capfirst(_("to (inclusive)")), widget=DATE)
    reason = forms.CharField(label=capfirst(_("reason")), max_length=200, required=False)

    def __init__(self, *args, clinic: Clinic, kind: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clinic = clinic
        self.kind = kind
        if kind == BlockedPeriod.Kind.HOLIDAY:
            del self.fields["doctor"]
            self.fields["reason"].required = True
            self.fields["reason"].label = capfirst(_("holiday name"))
        else:
            self.fields["doctor"].queryset = Doctor.objects.filter(clinic=clinic)

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        if data["date_to"] < data["date_from"]:
            self.add_error("date_to", _("The end date is before the start date."))
        elif data["date_from"] < clinic_today(self.clinic):
            self.add_error("date_from", _("The start date is in the past."))
        elif (data["date_to"] - data["date_from"]).days >= services.MAX_PERIOD_DAYS:
            self.add_error("date_to", _("At most one year at a time."))
        return data

    def instants(self) -> tuple[dt.datetime, dt.datetime]:
        data = self.cleaned_data
        return scheduling.local_day_bounds(data["date_from"], data["date_to"], self.clinic.tz)


class BlockRangeForm(DecisionMixin):
    """Block a doctor's slots by hand over part of one day."""

    doctor = forms.ModelChoiceField(
        label=capfirst(_("doctor")), queryset=Doctor.objects.none(), empty_label=_("Choose…")
    )
    date = forms.DateField(label=capfirst(_("date")), widget=DATE)
    start_time = forms.TimeField(label=capfirst(_("from")), widget=TIME)
    end_time = forms.TimeField(label=capfirst(_("to")), widget=TIME)
    reason = forms.CharField(label=capfirst(_("reason")), max_length=200, required=False)

    def __init__(self, *args, clinic: Clinic, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clinic = clinic
        self.fields["doctor"].queryset = Doctor.objects.filter(clinic=clinic)

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        if data["end_time"] <= data["start_time"]:
            self.add_error("end_time", _("The end time must be after the start time."))
        elif local_instant(data["date"], data["end_time"], self.clinic) <= timezone.now():
            self.add_error("date", _("The date is in the past."))
        return data

    def instants(self) -> tuple[dt.datetime, dt.datetime]:
        data = self.cleaned_data
        return (
            local_instant(data["date"], data["start_time"], self.clinic),
            local_instant(data["date"], data["end_time"], self.clinic),
        )


class GenerateRangeForm(forms.Form):
    date_from = forms.DateField(label=capfirst(_("from")), widget=DATE)
    date_to = forms.DateField(label=capfirst(_("to (inclusive)")), widget=DATE)

    def __init__(self, *args, clinic: Clinic, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clinic = clinic

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        if data["date_to"] < data["date_from"]:
            self.add_error("date_to", _("The end date is before the start date."))
        elif data["date_from"] < clinic_today(self.clinic):
            self.add_error("date_from", _("The start date is in the past."))
        elif (data["date_to"] - data["date_from"]).days > 366:
            self.add_error("date_to", _("At most one year at a time."))
        return data


class HolidayYearForm(forms.Form):
    year = forms.IntegerField(label=capfirst(_("year")), min_value=2000, max_value=2100)


class PatientRegisterForm(forms.Form):
    document = forms.RegexField(
        label=capfirst(_("document number")),
        regex=r"^\d{8,15}$",
        error_messages={
            "invalid": _("The document number must have 8 to 15 digits, with no other characters.")
        },
    )
    full_name = forms.CharField(label=capfirst(_("full name")), min_length=3, max_length=200)
    birth_date = forms.DateField(label=capfirst(_("date of birth")), widget=DATE)
    whatsapp_id = forms.RegexField(
        label=capfirst(_("WhatsApp number")),
        regex=r"^\+?\d{6,20}$",
        required=False,
        error_messages={"invalid": _("Write the number with digits only, e.g. 573001234567.")},
    )

    def clean_birth_date(self) -> dt.date:
        value = self.cleaned_data["birth_date"]
        if not dt.date(1900, 1, 1) <= value <= timezone.localdate():
            raise ValidationError(_("The date of birth is not valid."))
        return value


class PatientContactForm(forms.Form):
    full_name = forms.CharField(label=capfirst(_("full name")), min_length=3, max_length=200)
    whatsapp_id = forms.RegexField(
        label=capfirst(_("WhatsApp number")),
        regex=r"^\+?\d{6,20}$",
        required=False,
        error_messages={"invalid": _("Write the number with digits only, e.g. 573001234567.")},
    )


class CancelForm(forms.Form):
    reason = forms.CharField(
        label=capfirst(_("reason")),
        max_length=300,
        error_messages={"required": _("Write why the appointment is cancelled.")},
    )


class AppointmentFilterForm(forms.Form):
    date_from = forms.DateField(label=capfirst(_("from")), widget=DATE, required=False)
    date_to = forms.DateField(label=capfirst(_("to")), widget=DATE, required=False)
    doctor = forms.ModelChoiceField(
        label=capfirst(_("doctor")), queryset=Doctor.objects.none(), required=False, empty_label="—"
    )
    specialty = forms.ModelChoiceField(
        label=capfirst(_("specialty")),
        queryset=Specialty.objects.none(),
        required=False,
        empty_label="—",
    )
    status = forms.ChoiceField(
        label=capfirst(_("status")), choices=[("", "—"), *AppointmentStatus.choices], required=False
    )
    source = forms.ChoiceField(
        label=capfirst(_("source")), choices=[("", "—"), *AppointmentSource.choices], required=False
    )

    def __init__(self, *args, clinic: Clinic, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["doctor"].queryset = Doctor.objects.filter(clinic=clinic)
        self.fields["specialty"].queryset = Specialty.objects.filter(clinic=clinic)

    def clean(self) -> dict:
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_to"] < data["date_from"]:
            self.add_error("date_to", _("The end date is before the start date."))
        return data
