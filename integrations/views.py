"""Console pages for clinic admins: API keys, webhook endpoints and their delivery log, and a
patient's data on request (export / erase). Views parse input and call the services."""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clinics import selectors, services
from clinics.access import clinic_admin_required, get_object_for_clinic
from clinics.models import Appointment, Patient
from integrations import privacy, webhooks
from integrations.forms import (
    ApiKeyForm,
    EraseConfirmForm,
    PatientLookupForm,
    WebhookEndpointForm,
)
from integrations.keys import ApiKeyError, api_key_create, api_key_revoke
from integrations.models import ApiKey, WebhookAttempt, WebhookDelivery, WebhookEndpoint

DELIVERIES_PER_PAGE = 50


def _home(request: HttpRequest, **extra) -> HttpResponse:
    clinic = request.clinic
    context = {
        "keys": ApiKey.objects.filter(clinic=clinic),
        "endpoints": WebhookEndpoint.objects.filter(clinic=clinic),
        "key_form": extra.pop("key_form", None) or ApiKeyForm(),
        "endpoint_form": extra.pop("endpoint_form", None) or WebhookEndpointForm(),
        "docs_url": "/api/v1/docs/",
        **extra,
    }
    return render(request, "integrations/home.html", context)


@require_GET
@clinic_admin_required
def home(request: HttpRequest) -> HttpResponse:
    return _home(request)


@require_POST
@clinic_admin_required
def key_create(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    if not form.is_valid():
        return _home(request, key_form=form)
    try:
        key, raw = api_key_create(
            clinic=request.clinic,
            name=form.cleaned_data["name"],
            scope=form.cleaned_data["scope"],
            created_by=request.user,
        )
    except ApiKeyError as exc:
        form.add_error("name", str(exc))
        return _home(request, key_form=form)
    # Shown in this response only: the key is not stored, so it cannot be shown again.
    return _home(request, new_key=key, new_key_raw=raw)


@require_POST
@clinic_admin_required
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_for_clinic(ApiKey.objects, request, pk=key_id)
    api_key_revoke(clinic=request.clinic, key_id=key.pk)
    messages.success(request, _("API key “%(name)s” revoked.") % {"name": key.name})
    return redirect("integrations:home")


@require_POST
@clinic_admin_required
def endpoint_create(request: HttpRequest) -> HttpResponse:
    form = WebhookEndpointForm(request.POST)
    if not form.is_valid():
        return _home(request, endpoint_form=form)
    try:
        endpoint = webhooks.endpoint_create(
            clinic=request.clinic,
            url=form.cleaned_data["url"],
            events=form.cleaned_data["events"],
            description=form.cleaned_data["description"],
        )
    except webhooks.WebhookError as exc:
        form.add_error("url", str(exc))
        return _home(request, endpoint_form=form)
    return _home(request, new_endpoint=endpoint)


@require_POST
@clinic_admin_required
def endpoint_toggle(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = get_object_for_clinic(WebhookEndpoint.objects, request, pk=endpoint_id)
    endpoint.active = not endpoint.active
    endpoint.save(update_fields=["active"])
    if endpoint.active:
        messages.success(request, _("Endpoint enabled: new events are sent to it."))
    else:
        messages.success(request, _("Endpoint paused: no new events are sent to it."))
    return redirect("integrations:home")


@require_POST
@clinic_admin_required
def endpoint_delete(request: HttpRequest, endpoint_id: int) -> HttpResponse:
    endpoint = get_object_for_clinic(WebhookEndpoint.objects, request, pk=endpoint_id)
    endpoint.delete()
    messages.success(request, _("Endpoint deleted with its delivery log."))
    return redirect("integrations:home")


@require_GET
@clinic_admin_required
def deliveries(request: HttpRequest) -> HttpResponse:
    """The delivery log, newest first, by pages of ids (keyset: ?before=<id>)."""
    rows = WebhookDelivery.objects.filter(clinic=request.clinic).select_related("endpoint")
    before = request.GET.get("before", "")
    if before.isdigit() and len(before) < 19:
        rows = rows.filter(pk__lt=int(before))
    status = request.GET.get("status", "")
    if status in WebhookDelivery.Status.values:
        rows = rows.filter(status=status)
    page = list(rows.order_by("-pk")[: DELIVERIES_PER_PAGE + 1])
    more = len(page) > DELIVERIES_PER_PAGE
    page = page[:DELIVERIES_PER_PAGE]
    attempts: dict[int, list[WebhookAttempt]] = {}
    for attempt in WebhookAttempt.objects.filter(delivery__in=page).order_by("at"):
        attempts.setdefault(attempt.delivery_id, []).append(attempt)
    for delivery in page:
        delivery.log = attempts.get(delivery.pk, [])
    return render(
        request,
        "integrations/deliveries.html",
        {
            "deliveries": page,
            "next_before": page[-1].pk if more else None,
            "status": status,
            "statuses": WebhookDelivery.Status.choices,
        },
    )


@require_POST
@clinic_admin_required
def delivery_send_again(request: HttpRequest, delivery_id: int) -> HttpResponse:
    delivery = get_object_for_clinic(WebhookDelivery.objects, request, pk=delivery_id)
    delivery = webhooks.delivery_send_again(clinic=request.clinic, delivery_id=delivery.pk)
    delivery.log = list(WebhookAttempt.objects.filter(delivery=delivery).order_by("at"))
    if request.htmx:
        return render(
            request,
            "integrations/deliveries.html#row",
            {"delivery": delivery, "queued": True},
        )
    messages.success(request, _("Queued to be sent again."))
    return redirect("integrations:deliveries")


# --- a patient's data on request -------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@clinic_admin_required
def patient_data(request: HttpRequest) -> HttpResponse:
    form = PatientLookupForm(request.POST or None)
    patient = None
    searched = False
    if request.method == "POST" and form.is_valid():
        searched = True
        patient = selectors.patient_by_document(
            clinic=request.clinic, document=form.cleaned_data["document"]
        )
    context = {"form": form, "patient": patient, "searched": searched}
    if patient is not None:
        context["appointments"] = Appointment.objects.filter(patient=patient).count()
        context["erase_form"] = EraseConfirmForm()
    return render(request, "integrations/patient_data.html", context)


@require_POST
@clinic_admin_required
def patient_export(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = get_object_for_clinic(Patient.objects, request, pk=patient_id)
    data = privacy.patient_export(
        clinic=request.clinic, patient_id=patient.pk, actor=services.Actor.staff(request.user)
    )
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response = HttpResponse(
        json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False, indent=2),
        content_type="application/json; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="paciente-{patient.pk}-{stamp}.json"'
    return response


@require_POST
@clinic_admin_required
def patient_erase(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = get_object_for_clinic(Patient.objects, request, pk=patient_id)
    form = EraseConfirmForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Tick the confirmation to erase the patient's data."))
        return redirect("integrations:patient-data")
    privacy.patient_erase(
        clinic=request.clinic, patient_id=patient.pk, actor=services.Actor.staff(request.user)
    )
    messages.success(
        request,
        _("The patient's data was erased. Their appointments remain, anonymised, for statistics."),
    )
    return redirect("integrations:patient-data")
