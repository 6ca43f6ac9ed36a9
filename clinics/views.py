"""Staff console pages for the front desk: calendar, slot panel, appointments, patients.

Views parse input and call clinics.services / clinics.selectors; access comes from
clinics.access (404 outside the current clinic or role). Every page renders in the clinic's time
zone, whatever the server's or the browser's.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
from collections.abc import Callable

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from clinics import access, selectors, services
from clinics.forms import (
    AppointmentFilterForm,
    BlockRangeForm,
    CancelForm,
    PatientContactForm,
    PatientRegisterForm,
    clinic_today,
)
from clinics.models import (
    Appointment,
    AppointmentSource,
    Doctor,
    Patient,
    Slot,
    SlotStatus,
)
from clinics.services import Actor, BookingError
from sophia_web import live

# Spanish for the errors services report by code (their `message` is English, for logs/APIs).
ERROR_MESSAGES = {
    "slot_taken": gettext_lazy("Someone else just took this slot. Choose another one."),
    "slot_not_found": gettext_lazy("This slot no longer exists."),
    "slot_in_past": gettext_lazy("This slot has already started."),
    "slot_blocked": gettext_lazy("This slot is blocked."),
    "patient_overlap": gettext_lazy("The patient already has an appointment at that time."),
    "patient_not_found": gettext_lazy("Choose a patient of this clinic."),
    "patient_exists": gettext_lazy("A patient with that document number already exists."),
    "not_cancellable": gettext_lazy("Only upcoming booked or confirmed appointments can change."),
    "appointment_not_found": gettext_lazy("This appointment no longer exists."),
    "invalid_status": gettext_lazy("That change of status is not possible now."),
    "slot_in_absence": gettext_lazy(
        "This slot is inside an absence or holiday: remove that instead."
    ),
    "not_blocked": gettext_lazy("This slot is not blocked."),
    "stranded_decision_needed": gettext_lazy(
        "There are booked appointments in this period: choose whether to keep them or to "
        "cancel them and tell the patients."
    ),
    "overlaps_agenda": gettext_lazy("These hours overlap slots the doctor already has."),
    "date_in_past": gettext_lazy("The date is in the past."),
    "doctor_not_found": gettext_lazy("Choose a doctor of this clinic."),
    "specialty_exists": gettext_lazy("A specialty with that name already exists."),
}


# The audit trail in words (AuditEvent.action codes written by clinics.services).
ACTION_LABELS = {
    "appointment.book": gettext_lazy("Booked"),
    "appointment.cancel": gettext_lazy("Cancelled"),
    "appointment.reschedule": gettext_lazy("Rescheduled"),
    "appointment.confirmed": gettext_lazy("Confirmed"),
    "appointment.attended": gettext_lazy("Attended"),
    "appointment.no_show": gettext_lazy("No show"),
}


def error_text(error: BookingError) -> str:
    return str(ERROR_MESSAGES.get(error.code, _("The change could not be made. Check the data.")))


def in_clinic_time(view: Callable) -> Callable:
    """Render with the clinic's time zone active (the access decorator has set request.clinic)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        with timezone.override(request.clinic.tz):
            return view(request, *args, **kwargs)

    return wrapper


def staff_page(view: Callable) -> Callable:
    return access.staff_required(in_clinic_time(view))


def admin_page(view: Callable) -> Callable:
    return access.clinic_admin_required(in_clinic_time(view))


def actor_for(request: HttpRequest) -> Actor:
    return Actor.staff(request.user)


def is_admin(request: HttpRequest) -> bool:
    return access.is_clinic_admin(request.membership)


def parse_date(value: str | None, default: dt.date) -> dt.date:
    try:
        return dt.date.fromisoformat(value) if value else default
    except ValueError:
        return default


def live_group(clinic) -> str:
    return f"agenda-{clinic.pk}"


def _live_context(request: HttpRequest) -> dict:
    group = live_group(request.clinic)
    return {"live_group": group, "live_seq": live.page_sequences([group])[group]}


# --- calendar ---------------------------------------------------------------------------------


@require_GET
@staff_page
def agenda(request: HttpRequest) -> HttpResponse:
    """Day view: the doctors of one specialty side by side."""
    clinic = request.clinic
    today = clinic_today(clinic)
    day = parse_date(request.GET.get("fecha"), today)
    specialties = selectors.specialties(clinic=clinic)
    specialty = None
    chosen = request.GET.get("especialidad")
    if chosen:
        # From the clinic's own list (no extra query); anything else is a 404.
        specialty = next((s for s in specialties if str(s.pk) == chosen), None)
        if specialty is None:
            raise Http404("no such specialty in this clinic")
    elif specialties:
        specialty = specialties[0]
    columns = selectors.calendar_day(clinic=clinic, day=day, specialty=specialty)
    context = {
        "view": "day",
        "day": day,
        "today": today,
        "previous": day - dt.timedelta(days=1),
        "next": day + dt.timedelta(days=1),
        "specialties": specialties,
        "specialty": specialty,
        "columns": columns,
        "is_admin": is_admin(request),
        "query": f"especialidad={specialty.pk}" if specialty else "",
        **_live_context(request),
    }
    template = "clinics/agenda.html"
    if request.htmx:
        template += "#grid"
    return render(request, template, context)


@require_GET
@staff_page
def agenda_week(request: HttpRequest, doctor_id: int) -> HttpResponse:
    """Week view of one doctor, Monday to Sunday."""
    clinic = request.clinic
    doctor = access.get_object_for_clinic(Doctor.objects, request, pk=doctor_id)
    today = clinic_today(clinic)
    day = parse_date(request.GET.get("fecha"), today)
    monday = day - dt.timedelta(days=day.weekday())
    columns = selectors.calendar_week(clinic=clinic, doctor=doctor, week_start=monday)
    context = {
        "view": "week",
        "doctor": doctor,
        "doctors": selectors.clinic_doctors(clinic=clinic),
        "day": monday,
        "today": today,
        "previous": monday - dt.timedelta(days=7),
        "next": monday + dt.timedelta(days=7),
        "columns": columns,
        "is_admin": is_admin(request),
        **_live_context(request),
    }
    template = "clinics/agenda.html"
    if request.htmx:
        template += "#grid"
    return render(request, template, context)


def _slot_panel_context(request: HttpRequest, slot: Slot) -> dict:
    clinic = request.clinic
    cell = selectors.calendar_cell(clinic=clinic, slot_id=slot.pk)
    appointment = None
    trail = []
    if cell and cell.appointment_id:
        appointment = (
            Appointment.objects.select_related("patient", "doctor", "specialty", "slot")
            .filter(pk=cell.appointment_id, clinic=clinic)
            .first()
        )
        trail = selectors.appointment_trail(clinic=clinic, appointment=appointment)
        for event in trail:
            event.label = ACTION_LABELS.get(event.action, event.action)
    return {
        "slot": slot,
        "cell": cell,
        "appointment": appointment,
        "trail": trail,
        "is_admin": is_admin(request),
        "cancel_form": CancelForm(),
        "register_form": PatientRegisterForm(),
        "now": timezone.now(),
    }


@require_GET
@staff_page
def slot_panel(request: HttpRequest, slot_id: int) -> HttpResponse:
    """The side panel of one cell: book a free slot, manage a booked one, unblock a blocked one."""
    slot = access.get_object_for_clinic(Slot.objects.select_related("doctor"), request, pk=slot_id)
    return render(request, "clinics/slot_panel.html", _slot_panel_context(request, slot))


def _panel_with_error(request: HttpRequest, slot: Slot, text: str, **extra) -> HttpResponse:
    context = _slot_panel_context(request, slot)
    context.update(error=text, **extra)
    return render(request, "clinics/slot_panel.html", context, status=422)


@require_GET
@staff_page
def patient_picker(request: HttpRequest) -> HttpResponse:
    """Search results for the booking panel (by document or name)."""
    slot = access.get_object_for_clinic(Slot.objects, request, pk=request.GET.get("slot"))
    results = selectors.patients_search(clinic=request.clinic, query=request.GET.get("q", ""))
    return render(
        request,
        "clinics/slot_panel.html#patient-results",
        {"results": results, "slot": slot, "q": request.GET.get("q")},
    )


@require_POST
@staff_page
def slot_book(request: HttpRequest, slot_id: int) -> HttpResponse:
    """Book a free slot for an existing patient or for one registered in the same form."""
    clinic = request.clinic
    slot = access.get_object_for_clinic(Slot.objects.select_related("doctor"), request, pk=slot_id)
    actor = actor_for(request)
    patient_id = request.POST.get("patient")
    notes = request.POST.get("notes", "")[:2000]
    try:
        if patient_id:
            patient = access.get_object_for_clinic(Patient.objects, request, pk=patient_id)
        else:
            form = PatientRegisterForm(request.POST)
            if not form.is_valid():
                return _panel_with_error(
                    request, slot, _("Correct the patient's data."), register_form=form
                )
            patient = services.patient_register(clinic=clinic, actor=actor, **form.cleaned_data)
        services.appointment_book(
            clinic=clinic,
            patient=patient,
            slot_id=slot.pk,
            actor=actor,
            source=AppointmentSource.STAFF,
            notes=notes,
        )
    except BookingError as error:
        return _panel_with_error(request, slot, error_text(error))
    messages.success(request, _("Appointment booked for %(name)s.") % {"name": patient.full_name})
    slot.refresh_from_db()
    context = _slot_panel_context(request, slot)
    context["saved"] = _("Appointment booked for %(name)s.") % {"name": patient.full_name}
    return render(request, "clinics/slot_panel.html", context)


@require_POST
@staff_page
def slot_block(request: HttpRequest, slot_id: int) -> HttpResponse:
    """Block one free slot by hand."""
    slot = access.get_object_for_clinic(Slot.objects.select_related("doctor"), request, pk=slot_id)
    try:
        services.blocked_period_add(
            clinic=request.clinic,
            kind="block",
            doctor_id=slot.doctor_id,
            starts_at=slot.start_at,
            ends_at=slot.end_at,
            reason=request.POST.get("reason", "")[:200],
            actor=actor_for(request),
            user=request.user,
        )
    except BookingError as error:
        return _panel_with_error(request, slot, error_text(error))
    slot.refresh_from_db()
    return render(request, "clinics/slot_panel.html", _slot_panel_context(request, slot))


@require_POST
@staff_page
def slot_unblock(request: HttpRequest, slot_id: int) -> HttpResponse:
    slot = access.get_object_for_clinic(Slot.objects.select_related("doctor"), request, pk=slot_id)
    try:
        services.slot_unblock(clinic=request.clinic, slot_id=slot.pk, actor=actor_for(request))
    except BookingError as error:
        return _panel_with_error(request, slot, error_text(error))
    slot.refresh_from_db()
    return render(request, "clinics/slot_panel.html", _slot_panel_context(request, slot))


@require_http_methods(["GET", "POST"])
@staff_page
def block_range(request: HttpRequest) -> HttpResponse:
    """Block a doctor's slots over part of a day (shows the bookings it would strand first).
    GET: the empty form (loaded when the section is opened, not with every calendar page)."""
    if request.method == "GET":
        return render(
            request,
            "clinics/agenda.html#block-range",
            {"block_form": BlockRangeForm(clinic=request.clinic)},
        )
    form = BlockRangeForm(request.POST, clinic=request.clinic)
    context = {"block_form": form}
    if form.is_valid():
        starts_at, ends_at = form.instants()
        data = form.cleaned_data
        impact = selectors.period_impact(
            clinic=request.clinic, doctor=data["doctor"], starts_at=starts_at, ends_at=ends_at
        )
        context["impact"] = impact
        if request.POST.get("confirm") and (not impact.stranded or data["stranded_action"]):
            try:
                _period, change = services.blocked_period_add(
                    clinic=request.clinic,
                    kind="block",
                    doctor_id=data["doctor"].pk,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    reason=data["reason"],
                    actor=actor_for(request),
                    stranded_action=data["stranded_action"] or None,
                    user=request.user,
                )
            except BookingError as error:
                context["error"] = error_text(error)
            else:
                context["change"] = change
                context["block_form"] = BlockRangeForm(clinic=request.clinic)
                context.pop("impact")
        elif request.POST.get("confirm"):
            context["error"] = str(ERROR_MESSAGES["stranded_decision_needed"])
    status = 422 if form.errors or context.get("error") else 200
    return render(request, "clinics/agenda.html#block-range", context, status=status)


# --- appointment panel actions ----------------------------------------------------------------


def _appointment(request: HttpRequest, appointment_id: int) -> Appointment:
    return access.get_object_for_clinic(
        Appointment.objects.select_related("slot", "slot__doctor"), request, pk=appointment_id
    )


def _after_appointment_change(request: HttpRequest, appointment: Appointment, slot: Slot):
    """The panel of the slot again, or the list row when the change came from a list."""
    if request.POST.get("from") == "today":
        return HttpResponseClientRefresh()
    slot.refresh_from_db()
    return render(request, "clinics/slot_panel.html", _slot_panel_context(request, slot))


@require_POST
@staff_page
def appointment_status(request: HttpRequest, appointment_id: int) -> HttpResponse:
    """Confirm, attended or no-show (one click from the panel or today's list)."""
    appointment = _appointment(request, appointment_id)
    try:
        services.appointment_set_status(
            clinic=request.clinic,
            appointment_id=appointment.pk,
            status=request.POST.get("status", ""),
            actor=actor_for(request),
        )
    except BookingError as error:
        if request.POST.get("from") == "today":
            messages.error(request, error_text(error))
            return HttpResponseClientRefresh()
        return _panel_with_error(request, appointment.slot, error_text(error))
    return _after_appointment_change(request, appointment, appointment.slot)


@require_POST
@staff_page
def appointment_cancel(request: HttpRequest, appointment_id: int) -> HttpResponse:
    appointment = _appointment(request, appointment_id)
    form = CancelForm(request.POST)
    if not form.is_valid():
        return _panel_with_error(
            request,
            appointment.slot,
            _("Write why the appointment is cancelled."),
            cancel_form=form,
        )
    try:
        services.appointment_cancel(
            clinic=request.clinic,
            appointment_id=appointment.pk,
            reason=form.cleaned_data["reason"],
            actor=actor_for(request),
        )
    except BookingError as error:
        return _panel_with_error(request, appointment.slot, error_text(error))
    return _after_appointment_change(request, appointment, appointment.slot)


@require_GET
@staff_page
def reschedule_options(request: HttpRequest, appointment_id: int) -> HttpResponse:
    """Free slots to move an appointment to: same doctor, or same specialty; keyset pages."""
    appointment = _appointment(request, appointment_id)
    clinic = request.clinic
    scope = request.GET.get("ambito", "doctor")
    kwargs = {"clinic": clinic, "page_size": 12, "min_notice": dt.timedelta(0)}
    if scope == "especialidad" and appointment.specialty_id:
        kwargs["specialty"] = appointment.specialty
    else:
        kwargs["doctor"] = appointment.doctor
    day = request.GET.get("fecha")
    if day:
        kwargs["date_from"] = parse_date(day, clinic_today(clinic))
    try:
        page = selectors.available_slots(cursor=request.GET.get("cursor") or None, **kwargs)
    except BookingError:
        page = selectors.available_slots(**kwargs)
    return render(
        request,
        "clinics/slot_panel.html#reschedule",
        {"appointment": appointment, "page": page, "scope": scope, "day": day or ""},
    )


@require_POST
@staff_page
def appointment_reschedule(request: HttpRequest, appointment_id: int) -> HttpResponse:
    appointment = _appointment(request, appointment_id)
    try:
        new = services.appointment_reschedule(
            clinic=request.clinic,
            appointment_id=appointment.pk,
            new_slot_id=request.POST.get("slot", ""),
            actor=actor_for(request),
        )
    except BookingError as error:
        return _panel_with_error(request, appointment.slot, error_text(error))
    new_slot = Slot.objects.get(pk=new.slot_id)
    context = _slot_panel_context(request, new_slot)
    context["saved"] = _("Appointment moved to %(when)s.") % {
        "when": formats.date_format(new.start_at.astimezone(request.clinic.tz), "l j F, H:i")
    }
    return render(request, "clinics/slot_panel.html", context)


# --- lists ------------------------------------------------------------------------------------


@require_GET
@staff_page
def appointments(request: HttpRequest) -> HttpResponse:
    """Filtered list with keyset pages (dates, doctor, specialty, status, source)."""
    clinic = request.clinic
    form = AppointmentFilterForm(request.GET or None, clinic=clinic)
    filters = form.cleaned_data if form.is_bound and form.is_valid() else {}
    rows = selectors.appointments_filtered(clinic=clinic, **_filters(filters))
    try:
        page = selectors.appointments_page(rows=rows, cursor=request.GET.get("cursor") or None)
    except BookingError:
        page = selectors.appointments_page(rows=rows)
    query = request.GET.copy()
    query.pop("cursor", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    template = "clinics/appointments.html"
    if request.htmx and request.GET.get("cursor"):
        template += "#rows"
    return render(request, template, context)


def _filters(data: dict) -> dict:
    return {
        key: data.get(key) or None
        for key in ("date_from", "date_to", "doctor", "specialty", "status", "source")
    }


class _Echo:
    def write(self, value: str) -> str:
        return value


@require_GET
@staff_page
def appointments_csv(request: HttpRequest) -> StreamingHttpResponse:
    """The filtered list as CSV, streamed (any size), times in the clinic's zone."""
    clinic = request.clinic
    form = AppointmentFilterForm(request.GET or None, clinic=clinic)
    filters = form.cleaned_data if form.is_bound and form.is_valid() else {}
    rows = selectors.appointments_filtered(clinic=clinic, **_filters(filters))
    tz = clinic.tz
    writer = csv.writer(_Echo())
    header = [
        _("date"),
        _("time"),
        _("doctor"),
        _("specialty"),
        _("patient"),
        _("document number"),
        _("status"),
        _("source"),
    ]

    def lines():
        with timezone.override(tz):
            yield writer.writerow([str(h) for h in header])
            for a in rows.iterator(chunk_size=2000):
                local = a.start_at.astimezone(tz)
                yield writer.writerow(
                    [
                        local.date().isoformat(),
                        local.strftime("%H:%M"),
                        a.doctor.full_name,
                        a.specialty.name if a.specialty else "",
                        a.patient.full_name,
                        a.patient.document,
                        a.get_status_display(),
                        a.get_source_display(),
                    ]
                )

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    stamp = clinic_today(clinic).isoformat()
    response["Content-Disposition"] = f'attachment; filename="citas-{clinic.slug}-{stamp}.csv"'
    return response


@require_GET
@staff_page
def appointments_today(request: HttpRequest) -> HttpResponse:
    rows = selectors.appointments_today(clinic=request.clinic)
    return render(
        request,
        "clinics/today.html",
        {"rows": rows, "today": clinic_today(request.clinic), "now": timezone.now()},
    )


@require_GET
@staff_page
def patients(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")
    results = selectors.patients_search(clinic=request.clinic, query=query, limit=50)
    template = "clinics/patients.html"
    if request.htmx:
        template += "#results"
    return render(request, template, {"q": query, "results": results})


@staff_page
def patient_card(request: HttpRequest, patient_id: int) -> HttpResponse:
    """A patient's card: contact details (editable), appointments and conversations."""
    patient = access.get_object_for_clinic(Patient.objects, request, pk=patient_id)
    form = PatientContactForm(
        initial={"full_name": patient.full_name, "whatsapp_id": patient.whatsapp_id}
    )
    status = 200
    if request.method == "POST":
        form = PatientContactForm(request.POST)
        if form.is_valid():
            try:
                services.patient_update_contact(
                    clinic=request.clinic,
                    patient_id=patient.pk,
                    actor=actor_for(request),
                    **form.cleaned_data,
                )
            except BookingError as error:
                form.add_error(None, error_text(error))
            else:
                messages.success(request, _("Contact details saved."))
                return redirect(reverse("clinics:patient", args=[patient.pk]))
        status = 422
    elif request.method != "GET":
        raise Http404
    appointments_list = list(
        Appointment.objects.filter(clinic=request.clinic, patient=patient)
        .select_related("doctor", "specialty")
        .order_by("-start_at")[:100]
    )
    conversations = list(patient.conversations.order_by("-last_activity_at")[:10])
    return render(
        request,
        "clinics/patient.html",
        {
            "patient": patient,
            "form": form,
            "appointments": appointments_list,
            "conversations": conversations,
            "now": timezone.now(),
            "upcoming_statuses": {"booked", "confirmed"},
            "free": SlotStatus.FREE,
        },
        status=status,
    )
