"""Clinic admin pages: settings, specialties (with a triage tester), doctors, weekly schedules
and exceptions. Receptionists and other clinics' staff get 404 (clinic_admin_required).

Changes that can strand booked appointments go in two steps: "preview" shows the slots the
change produces and the bookings it strands; "save" applies it with the admin's decision.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from babel import Locale
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from clinics import access, scheduling, selectors, services
from clinics.forms import (
    ClinicSettingsForm,
    DoctorForm,
    ExtraHoursForm,
    GenerateRangeForm,
    HolidayYearForm,
    PeriodForm,
    ScheduleFormSet,
    SpecialtyForm,
    TriagePhraseForm,
    clinic_today,
)
from clinics.models import BlockedPeriod, Doctor, ExtraHours, Specialty
from clinics.services import BookingError, StrandedDecisionNeeded
from clinics.views import ERROR_MESSAGES, actor_for, admin_page, error_text

PREVIEW_DAYS = 14


# --- settings ---------------------------------------------------------------------------------


@admin_page
def clinic_settings(request: HttpRequest) -> HttpResponse:
    clinic = request.clinic
    form = ClinicSettingsForm(request.POST or None, instance=clinic)
    if request.method == "POST":
        if form.is_valid():
            values = {name: form.cleaned_data[name] for name in services.CLINIC_SETTINGS_FIELDS}
            try:
                services.clinic_update_settings(
                    clinic=clinic, values=values, actor=actor_for(request)
                )
            except BookingError as error:
                form.add_error(None, error_text(error))
            else:
                messages.success(request, _("Settings saved."))
                return redirect(reverse("clinics:settings"))
        clinic.refresh_from_db()
    return render(
        request,
        "clinics/settings.html",
        {"form": form, "tab": "settings"},
        status=422 if form.errors else 200,
    )


# --- specialties ------------------------------------------------------------------------------


@admin_page
def specialties(request: HttpRequest) -> HttpResponse:
    clinic = request.clinic
    form = SpecialtyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            specialty = services.specialty_create(
                clinic=clinic, actor=actor_for(request), **form.cleaned_data
            )
        except BookingError as error:
            form.add_error("name", error_text(error))
        else:
            messages.success(request, _("Specialty %(name)s created.") % {"name": specialty.name})
            return redirect(reverse("clinics:specialty", args=[specialty.pk]))
    rows = Specialty.objects.filter(clinic=clinic).order_by("name")
    return render(
        request,
        "clinics/specialties.html",
        {"form": form, "rows": rows, "tab": "specialties"},
        status=422 if form.errors else 200,
    )


@admin_page
def specialty_edit(request: HttpRequest, specialty_id: int) -> HttpResponse:
    specialty = access.get_object_for_clinic(Specialty.objects, request, pk=specialty_id)
    form = SpecialtyForm(
        request.POST or None,
        initial={"name": specialty.name, "triage_keywords": specialty.triage_keywords},
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.specialty_update(
                clinic=request.clinic,
                specialty_id=specialty.pk,
                actor=actor_for(request),
                **form.cleaned_data,
            )
        except BookingError as error:
            form.add_error("name", error_text(error))
        else:
            messages.success(request, _("Specialty saved."))
            return redirect(reverse("clinics:specialty", args=[specialty.pk]))
    return render(
        request,
        "clinics/specialty.html",
        {
            "form": form,
            "specialty": specialty,
            "try_form": TriagePhraseForm(),
            "doctors": specialty.doctors.order_by("full_name"),
            "tab": "specialties",
        },
        status=422 if form.errors else 200,
    )


# --- doctors ----------------------------------------------------------------------------------


@admin_page
def doctors(request: HttpRequest) -> HttpResponse:
    clinic = request.clinic
    form = DoctorForm(request.POST or None, clinic=clinic)
    if request.method == "POST" and form.is_valid():
        try:
            doctor = services.doctor_create(
                clinic=clinic,
                full_name=form.cleaned_data["full_name"],
                specialty_ids=[s.pk for s in form.cleaned_data["specialties"]],
                actor=actor_for(request),
            )
        except BookingError as error:
            form.add_error(None, error_text(error))
        else:
            messages.success(
                request,
                _("Doctor %(name)s created. Now set the weekly schedule.")
                % {"name": doctor.full_name},
            )
            return redirect(reverse("clinics:doctor-schedule", args=[doctor.pk]))
    rows = Doctor.objects.filter(clinic=clinic).prefetch_related("specialties", "schedules")
    return render(
        request,
        "clinics/doctors.html",
        {"form": form, "rows": rows.order_by("-active", "full_name"), "tab": "doctors"},
        status=422 if form.errors else 200,
    )


@admin_page
def doctor_edit(request: HttpRequest, doctor_id: int) -> HttpResponse:
    doctor = access.get_object_for_clinic(Doctor.objects, request, pk=doctor_id)
    form = DoctorForm(
        request.POST or None,
        clinic=request.clinic,
        initial={
            "full_name": doctor.full_name,
            "specialties": list(doctor.specialties.all()),
            "active": doctor.active,
        },
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.doctor_update(
                clinic=request.clinic,
                doctor_id=doctor.pk,
                full_name=form.cleaned_data["full_name"],
                specialty_ids=[s.pk for s in form.cleaned_data["specialties"]],
                active=form.cleaned_data["active"],
                actor=actor_for(request),
            )
        except BookingError as error:
            form.add_error(None, error_text(error))
        else:
            messages.success(request, _("Doctor saved."))
            return redirect(reverse("clinics:doctors"))
    upcoming = selectors.appointments_filtered(
        clinic=request.clinic, doctor=doctor, date_from=clinic_today(request.clinic)
    ).filter(status__in=["booked", "confirmed"])
    return render(
        request,
        "clinics/doctor.html",
        {"form": form, "doctor": doctor, "upcoming": upcoming.count(), "tab": "doctors"},
        status=422 if form.errors else 200,
    )


def _initial_blocks(doctor: Doctor, today: dt.date) -> list[dict]:
    return [
        {
            "weekdays": s.weekdays,
            "start_time": s.start_time,
            "end_time": s.end_time,
            "slot_minutes": s.slot_minutes,
            "valid_from": s.valid_from,
            "valid_to": s.valid_to,
            "every_n_weeks": s.every_n_weeks,
        }
        for s in doctor.schedules.order_by("start_time", "pk")
    ] or [
        {
            "weekdays": [0, 1, 2, 3, 4],
            "start_time": dt.time(8),
            "end_time": dt.time(12),
            "slot_minutes": 20,
            "valid_from": today,
            "every_n_weeks": 1,
        }
    ]


def _preview_days(clinic, diff: scheduling.AgendaDiff, days: int) -> list[tuple[dt.date, list]]:
    """The first `days` local days of the planned agenda: (day, [local start times])."""
    tz = clinic.tz
    by_day: dict[dt.date, list] = defaultdict(list)
    last = diff.date_from + dt.timedelta(days=days - 1)
    for start, _end in diff.planned:
        local = start.astimezone(tz)
        if local.date() <= last:
            by_day[local.date()].append(local)
    return [
        (
            diff.date_from + dt.timedelta(days=i),
            by_day.get(diff.date_from + dt.timedelta(days=i), []),
        )
        for i in range(days)
    ]


@admin_page
def doctor_schedule(request: HttpRequest, doctor_id: int) -> HttpResponse:
    """The doctor's weekly blocks: edit, preview (slots + stranded bookings), then save."""
    clinic = request.clinic
    doctor = access.get_object_for_clinic(Doctor.objects, request, pk=doctor_id)
    today = clinic_today(clinic)
    if request.method == "POST":
        formset = ScheduleFormSet(request.POST, clinic=clinic, doctor=doctor, prefix="blocks")
    else:
        formset = ScheduleFormSet(
            initial=_initial_blocks(doctor, today), clinic=clinic, doctor=doctor, prefix="blocks"
        )
    context = {"formset": formset, "doctor": doctor, "tab": "doctors", "today": today}
    status = 200
    if request.method == "POST":
        if not formset.is_valid():
            status = 422
        else:
            schedules = formset.schedules()
            diff = selectors.schedule_preview(clinic=clinic, doctor=doctor, schedules=schedules)
            context.update(
                diff=diff,
                preview_days=_preview_days(clinic, diff, PREVIEW_DAYS),
                decision=request.POST.get("stranded_action", ""),
            )
            if request.POST.get("action") == "save":
                decision = request.POST.get("stranded_action") or None
                if diff.stranded and decision not in services.STRANDED_ACTIONS:
                    context["error"] = str(ERROR_MESSAGES["stranded_decision_needed"])
                    status = 422
                else:
                    try:
                        change = services.schedule_replace(
                            clinic=clinic,
                            doctor_id=doctor.pk,
                            blocks=formset.blocks(),
                            actor=actor_for(request),
                            stranded_action=decision,
                            user=request.user,
                        )
                    except StrandedDecisionNeeded:
                        context["error"] = str(ERROR_MESSAGES["stranded_decision_needed"])
                        status = 422
                    except BookingError as error:
                        context["error"] = error_text(error)
                        status = 422
                    else:
                        messages.success(request, _change_message(change))
                        return redirect(reverse("clinics:doctor-schedule", args=[doctor.pk]))
    return render(request, "clinics/schedule.html", context, status=status)


def _change_message(change: services.AgendaChange) -> str:
    text = _("Saved: %(created)d slots created, %(removed)d removed.") % {
        "created": change.created,
        "removed": change.removed,
    }
    if change.cancelled:
        text += " " + _(
            "%(count)d appointments cancelled; %(sent)d patients will get a WhatsApp message."
        ) % {"count": len(change.cancelled), "sent": change.notified}
        if change.unreachable:
            text += " " + _("%(count)d have no WhatsApp number: call them.") % {
                "count": change.unreachable
            }
    elif change.stranded:
        text += " " + _("%(count)d booked appointments were kept.") % {
            "count": len(change.stranded)
        }
    return text


# --- exceptions -------------------------------------------------------------------------------


def _exceptions_context(request: HttpRequest, **forms) -> dict:
    clinic = request.clinic
    today = clinic_today(clinic)
    start, _end = scheduling.local_day_bounds(today, today, clinic.tz)
    periods = list(
        BlockedPeriod.objects.filter(clinic=clinic, ends_at__gt=start)
        .select_related("doctor")
        .order_by("starts_at", "pk")
    )
    context = {
        "tab": "exceptions",
        "absences": [p for p in periods if p.kind == BlockedPeriod.Kind.ABSENCE],
        "holidays": [p for p in periods if p.kind == BlockedPeriod.Kind.HOLIDAY],
        "blocks": [p for p in periods if p.kind == BlockedPeriod.Kind.BLOCK],
        "extras": ExtraHours.objects.filter(doctor__clinic=clinic, date__gte=today)
        .select_related("doctor")
        .order_by("date", "start_time"),
        "absence_form": PeriodForm(clinic=clinic, kind="absence", prefix="absence"),
        "holiday_form": PeriodForm(clinic=clinic, kind="holiday", prefix="holiday"),
        "extra_form": ExtraHoursForm(clinic=clinic, prefix="extra"),
        "year_form": HolidayYearForm(initial={"year": today.year + 1}, prefix="year"),
        "generate_form": GenerateRangeForm(
            clinic=clinic,
            prefix="generate",
            initial={"date_from": today, "date_to": today + dt.timedelta(days=28)},
        ),
        "country_name": Locale("es").territories.get(clinic.country, clinic.country),
        "years_loaded": clinic.holiday_years_loaded,
        "today": today,
    }
    context.update(forms)
    return context


@admin_page
def exceptions(request: HttpRequest) -> HttpResponse:
    return render(request, "clinics/exceptions.html", _exceptions_context(request))


@require_POST
@admin_page
def period_add(request: HttpRequest, kind: str) -> HttpResponse:
    """An absence or a holiday: preview its impact, then save with the admin's decision."""
    if kind not in ("absence", "holiday"):
        kind = "absence"
    clinic = request.clinic
    form = PeriodForm(request.POST, clinic=clinic, kind=kind, prefix=kind)
    extra = {f"{kind}_form": form, "open": kind}
    if not form.is_valid():
        return render(
            request, "clinics/exceptions.html", _exceptions_context(request, **extra), status=422
        )
    starts_at, ends_at = form.instants()
    doctor = form.cleaned_data.get("doctor")
    impact = selectors.period_impact(
        clinic=clinic, doctor=doctor, starts_at=starts_at, ends_at=ends_at
    )
    extra.update(impact=impact, impact_kind=kind)
    decision = form.cleaned_data["stranded_action"] or None
    if request.POST.get("action") != "save":
        return render(request, "clinics/exceptions.html", _exceptions_context(request, **extra))
    if impact.stranded and decision is None:
        extra["error"] = str(ERROR_MESSAGES["stranded_decision_needed"])
        return render(
            request, "clinics/exceptions.html", _exceptions_context(request, **extra), status=422
        )
    try:
        _period, change = services.blocked_period_add(
            clinic=clinic,
            kind=kind,
            doctor_id=doctor.pk if doctor else None,
            starts_at=starts_at,
            ends_at=ends_at,
            reason=form.cleaned_data["reason"],
            actor=actor_for(request),
            stranded_action=decision,
            user=request.user,
        )
    except BookingError as error:
        extra["error"] = error_text(error)
        return render(
            request, "clinics/exceptions.html", _exceptions_context(request, **extra), status=422
        )
    text = _("Saved: %(blocked)d slots blocked.") % {"blocked": change.blocked}
    if change.cancelled:
        text += " " + _(
            "%(count)d appointments cancelled; %(sent)d patients will get a WhatsApp message."
        ) % {"count": len(change.cancelled), "sent": change.notified}
    elif change.stranded:
        text += " " + _("%(count)d booked appointments were kept.") % {
            "count": len(change.stranded)
        }
    messages.success(request, text)
    return redirect(reverse("clinics:exceptions"))


@require_POST
@admin_page
def period_remove(request: HttpRequest, period_id: int) -> HttpResponse:
    period = access.get_object_for_clinic(BlockedPeriod.objects, request, pk=period_id)
    try:
        change = services.blocked_period_remove(
            clinic=request.clinic, period_id=period.pk, actor=actor_for(request)
        )
    except BookingError as error:
        messages.error(request, error_text(error))
    else:
        messages.success(
            request,
            _("Removed: %(freed)d slots free again, %(created)d created.")
            % {"freed": change.freed, "created": change.created},
        )
    return redirect(reverse("clinics:exceptions"))


@require_POST
@admin_page
def extra_add(request: HttpRequest) -> HttpResponse:
    form = ExtraHoursForm(request.POST, clinic=request.clinic, prefix="extra")
    if form.is_valid():
        data = form.cleaned_data
        try:
            change = services.extra_hours_add(
                clinic=request.clinic,
                doctor_id=data["doctor"].pk,
                date=data["date"],
                start_time=data["start_time"],
                end_time=data["end_time"],
                slot_minutes=data["slot_minutes"],
                note=data["note"],
                actor=actor_for(request),
            )
        except BookingError as error:
            form.add_error(None, error_text(error))
        else:
            messages.success(
                request, _("Extra hours saved: %(count)d slots.") % {"count": change.created}
            )
            return redirect(reverse("clinics:exceptions"))
    context = _exceptions_context(request, extra_form=form, open="extra")
    return render(request, "clinics/exceptions.html", context, status=422)


@require_POST
@admin_page
def extra_remove(request: HttpRequest, extra_id: int) -> HttpResponse:
    extra = access.get_object_for_clinic(
        ExtraHours.objects, request, clinic_field="doctor__clinic", pk=extra_id
    )
    decision = request.POST.get("stranded_action") or None
    try:
        services.extra_hours_remove(
            clinic=request.clinic,
            extra_id=extra.pk,
            actor=actor_for(request),
            stranded_action=decision if decision in services.STRANDED_ACTIONS else None,
            user=request.user,
        )
    except BookingError as error:
        messages.error(request, error_text(error))
    else:
        messages.success(request, _("Extra hours removed."))
    return redirect(reverse("clinics:exceptions"))


@require_POST
@admin_page
def holidays_load(request: HttpRequest) -> HttpResponse:
    form = HolidayYearForm(request.POST, prefix="year")
    if not form.is_valid():
        context = _exceptions_context(request, year_form=form, open="holiday")
        return render(request, "clinics/exceptions.html", context, status=422)
    added = services.holidays_load(
        clinic=request.clinic,
        year=form.cleaned_data["year"],
        actor=actor_for(request),
        force=True,
    )
    messages.success(
        request,
        _("%(count)d holidays of %(year)d added.")
        % {"count": len(added), "year": form.cleaned_data["year"]},
    )
    return redirect(reverse("clinics:exceptions"))


@require_POST
@admin_page
def generate_now(request: HttpRequest) -> HttpResponse:
    """Generate slots for a range now (the periodic job does the rolling horizon by itself)."""
    form = GenerateRangeForm(request.POST, clinic=request.clinic, prefix="generate")
    if not form.is_valid():
        context = _exceptions_context(request, generate_form=form, open="generate")
        return render(request, "clinics/exceptions.html", context, status=422)
    created = services.slots_generate(
        clinic=request.clinic,
        date_from=form.cleaned_data["date_from"],
        date_to=form.cleaned_data["date_to"],
        actor=actor_for(request),
    )
    messages.success(request, _("%(count)d slots generated.") % {"count": created})
    return redirect(reverse("clinics:exceptions"))
