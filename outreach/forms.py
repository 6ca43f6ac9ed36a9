"""Staff forms of the waitlist page."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from clinics.models import Clinic, Doctor, Patient, Specialty
from clinics.services import InvalidInput, clean_document
from outreach.models import PartOfDay


class WaitlistAddForm(forms.Form):
    """Put a patient (found by document) on a specialty's waitlist, from the front desk."""

    document = forms.CharField(label=_("Patient's document number"), max_length=15)
    specialty = forms.ModelChoiceField(label=_("specialty"), queryset=Specialty.objects.none())
    doctor = forms.ModelChoiceField(
        label=_("doctor"), queryset=Doctor.objects.none(), required=False, empty_label=_("Any")
    )
    part_of_day = forms.ChoiceField(
        label=_("part of the day"), choices=PartOfDay.choices, initial=PartOfDay.ANY
    )

    def __init__(self, *args, clinic: Clinic, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clinic = clinic
        self.fields["specialty"].queryset = Specialty.objects.filter(clinic=clinic)
        self.fields["doctor"].queryset = Doctor.objects.filter(clinic=clinic, active=True)

    def clean_document(self) -> Patient:
        try:
            document = clean_document(self.cleaned_data["document"])
        except InvalidInput as exc:
            raise forms.ValidationError(_("The document number must have 8 to 15 digits.")) from exc
        patient = Patient.objects.filter(clinic=self.clinic, document=document).first()
        if patient is None:
            raise forms.ValidationError(_("No patient of this clinic has that document."))
        return patient

    def clean(self) -> dict:
        data = super().clean()
        doctor, specialty = data.get("doctor"), data.get("specialty")
        if doctor and specialty and not doctor.specialties.filter(pk=specialty.pk).exists():
            self.add_error("doctor", _("That doctor does not see this specialty."))
        return data
