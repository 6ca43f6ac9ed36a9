"""The receptionist's console: entry page and clinic switch (inbox and conversation pages too)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from clinics import access


def home(request: HttpRequest) -> HttpResponse:
    """`/`: the console for staff, the login page for anyone else."""
    if not request.user.is_authenticated:
        return redirect("login")
    if access.membership_for(request) is None:
        return render(request, "registration/no_clinic.html", status=403)
    return inbox(request)


@access.staff_required
def inbox(request: HttpRequest) -> HttpResponse:
    return render(request, "bot/inbox.html", {"section": "inbox"})


@require_POST
@login_required
def switch_clinic(request: HttpRequest) -> HttpResponse:
    """The header's clinic switcher: another of the user's clinics becomes the current one."""
    if access.choose_clinic(request, request.POST.get("clinic")) is None:
        raise Http404("not one of this user's clinics")
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = "console:home"
    return redirect(target)
