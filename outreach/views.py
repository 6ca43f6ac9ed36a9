"""The waitlist page of the staff console: per specialty, longest waiting first; add and remove."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from clinics import access
from clinics.models import Specialty
from outreach import selectors, waitlist
from outreach.forms import WaitlistAddForm
from outreach.models import WaitlistEntry


def _page_url(specialty: Specialty | None) -> str:
    url = reverse("waitlist:list")
    return f"{url}?especialidad={specialty.slug}" if specialty else url


@access.staff_required
def waitlist_list(request: HttpRequest) -> HttpResponse:
    clinic = request.clinic
    counts = selectors.waitlist_counts(clinic=clinic)
    specialties = list(Specialty.objects.filter(clinic=clinic).order_by("name"))
    wanted = request.GET.get("especialidad")
    current = next((s for s in specialties if s.slug == wanted), None)
    if current is None and specialties:
        current = next((s for s in specialties if counts.get(s.pk)), specialties[0])
    form = WaitlistAddForm(clinic=clinic, initial={"specialty": current})
    return _render(request, current, specialties, counts, form)


def _render(request, current, specialties, counts, form, status: int = 200) -> HttpResponse:
    entries = (
        list(selectors.waitlist_entries(clinic=request.clinic, specialty=current))
        if current
        else []
    )
    template = "outreach/waitlist.html"
    if request.htmx:
        template += "#entries"
    return render(
        request,
        template,
        {
            "section": "waitlist",
            "clinic_tz": request.clinic.time_zone,
            "specialties": [(s, counts.get(s.pk, 0)) for s in specialties],
            "current": current,
            "entries": entries,
            "form": form,
        },
        status=status,
    )


@require_POST
@access.staff_required
def waitlist_add(request: HttpRequest) -> HttpResponse:
    form = WaitlistAddForm(request.POST, clinic=request.clinic)
    if not form.is_valid():
        specialties = list(Specialty.objects.filter(clinic=request.clinic).order_by("name"))
        current = form.cleaned_data.get("specialty") or (specialties[0] if specialties else None)
        counts = selectors.waitlist_counts(clinic=request.clinic)
        request.htmx = False  # the whole page, with the form's errors
        return _render(request, current, specialties, counts, form, status=400)
    data = form.cleaned_data
    entry, created = waitlist.waitlist_join(
        clinic=request.clinic,
        patient=data["document"],
        specialty=data["specialty"],
        doctor=data["doctor"],
        part_of_day=data["part_of_day"],
        source="staff",
    )
    if created:
        messages.success(
            request,
            _("%(patient)s is on the waitlist for %(specialty)s.")
            % {"patient": entry.patient.full_name, "specialty": entry.specialty.name},
        )
    else:
        messages.info(request, _("That patient was already waiting; their wishes were updated."))
    return redirect(_page_url(entry.specialty))


@require_POST
@access.staff_required
def waitlist_remove(request: HttpRequest, pk: int) -> HttpResponse:
    entry = access.get_object_for_clinic(
        WaitlistEntry.objects.select_related("specialty"), request, pk=pk
    )
    waitlist.waitlist_remove(clinic=request.clinic, entry_id=entry.pk)
    messages.success(
        request, _("%(patient)s left the waitlist.") % {"patient": entry.patient.full_name}
    )
    return redirect(_page_url(entry.specialty))
