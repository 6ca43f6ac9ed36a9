"""The specialty page's "prueba una frase" box: what the bot's triage would make of a patient's
phrase with the keywords as the admin typed them (saved or not). In bot because it runs bot.triage
(clinics never imports bot); the page itself is clinics' (clinics/views_admin.py).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from bot import triage
from clinics import access
from clinics.forms import TriagePhraseForm
from clinics.models import Specialty
from clinics.views import admin_page


@require_POST
@admin_page
def specialty_try(request: HttpRequest, specialty_id: int) -> HttpResponse:
    """What the bot would make of a patient's phrase, with the keywords as typed (unsaved)."""
    specialty = access.get_object_for_clinic(Specialty.objects, request, pk=specialty_id)
    form = TriagePhraseForm(request.POST)
    result = None
    if form.is_valid():
        candidates = list(Specialty.objects.filter(clinic=request.clinic))
        for candidate in candidates:
            if candidate.pk == specialty.pk:
                candidate.triage_keywords = request.POST.get("triage_keywords", "")[:4000]
        result = triage.classify_rules(form.cleaned_data["phrase"], candidates)
        names = {s.slug: s.name for s in candidates}
        result = {
            "specialty": names.get(result.specialty or "", ""),
            "is_this": result.specialty == specialty.slug,
            "confidence": round(result.confidence * 100),
            "confident": result.confident,
            "red_flag": result.red_flag,
            "alternatives": [names.get(s, s) for s in result.alternatives],
        }
    return render(
        request,
        "clinics/specialty.html#try-result",
        {"try_form": form, "result": result, "specialty": specialty},
        status=200 if form.is_valid() else 422,
    )
