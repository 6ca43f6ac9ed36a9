"""Console forms for the integrations pages (clinic admins)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from integrations.models import WEBHOOK_EVENTS, ApiKey

EVENT_LABELS = {
    "cita.creada": _("Appointment booked (cita.creada)"),
    "cita.cancelada": _("Appointment cancelled (cita.cancelada)"),
    "cita.confirmada": _("Appointment confirmed (cita.confirmada)"),
    "cita.reprogramada": _("Appointment rescheduled (cita.reprogramada)"),
    "slot.liberado": _("Slot freed (slot.liberado)"),
}


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        help_text=_("Which system uses it, e.g. “Historia clínica”."),
    )
    scope = forms.ChoiceField(label=_("Permissions"), choices=ApiKey.Scope.choices)


class WebhookEndpointForm(forms.Form):
    url = forms.URLField(
        label=_("URL"), max_length=500, assume_scheme="https", help_text=_("Where Sophia POSTs.")
    )
    description = forms.CharField(label=_("Description"), max_length=200, required=False)
    events = forms.MultipleChoiceField(
        label=_("Events"),
        choices=[(name, EVENT_LABELS[name]) for name in WEBHOOK_EVENTS],
        widget=forms.CheckboxSelectMultiple,
        initial=list(WEBHOOK_EVENTS),
    )


class PatientLookupForm(forms.Form):
    document = forms.RegexField(
        label=_("Document number"),
        regex=r"^\d{8,15}$",
        error_messages={"invalid": _("8 to 15 digits, nothing else.")},
    )


class EraseConfirmForm(forms.Form):
    confirm = forms.BooleanField(
        label=_("I understand: the patient's identity and conversations are erased for good."),
        required=True,
    )
