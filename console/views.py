"""The receptionist's console: inbox, conversation, staff actions, quick bookings, stats.

Pages render with the sequence numbers of their live groups *before* reading data, and count as
watching those groups from then on (`live.page_sequences`), so the websocket's first resync
replays anything that committed while the page was being built or its socket was joining.
Actions answer htmx with the same out-of-band fragments the websocket sends (idempotent), so
the acting user's screen is right even if the socket is down.
"""

from __future__ import annotations

import json
import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_POST

from bot.models import Conversation
from clinics import access
from clinics import selectors as clinic_selectors
from clinics import services as clinic_services
from clinics.models import AppointmentSource
from console import live as console_live
from console import selectors, services
from sophia_web import live

logger = logging.getLogger(__name__)

VIEW_LABELS = [
    ("open", gettext_lazy("Open")),
    ("urgent", gettext_lazy("Urgent")),
    ("needs", gettext_lazy("Needs a person")),
    ("mine", gettext_lazy("Mine")),
    ("bot", gettext_lazy("Bot")),
    ("closed", gettext_lazy("Closed")),
]

ERRORS = {
    "not_found": gettext_lazy("This conversation does not exist in this clinic."),
    "not_taken": gettext_lazy("Take the conversation over before replying."),
    "held_by_other": gettext_lazy(
        "Another staff member holds this conversation: take it over first."
    ),
    "window_closed": gettext_lazy(
        "The 24-hour window is closed: only an approved template can be sent."
    ),
    "empty": gettext_lazy("Write something first."),
    "too_long": gettext_lazy("The text is too long."),
    "no_template": gettext_lazy("Choose one of the clinic's approved templates."),
    "missing_variables": gettext_lazy("Fill in every value of the template."),
}


def home(request: HttpRequest) -> HttpResponse:
    """`/`: the console for staff, the login page for anyone else."""
    if not request.user.is_authenticated:
        return redirect("login")
    if access.membership_for(request) is None:
        return render(request, "registration/no_clinic.html", status=403)
    return inbox(request)


def _live_seq(groups: list[str]) -> str:
    return json.dumps(live.page_sequences(groups))


def _inbox_context(request: HttpRequest) -> dict:
    view = request.GET.get("view", "open")
    if view not in selectors.VIEWS:
        view = "open"
    query = request.GET.get("q", "")[:80]
    cursor = request.GET.get("cursor") or None
    try:
        page = selectors.inbox_page(
            clinic=request.clinic, user=request.user, view=view, query=query, cursor=cursor
        )
    except selectors.InvalidCursor:
        page = selectors.inbox_page(
            clinic=request.clinic, user=request.user, view=view, query=query
        )
    return {"page": page, "view": view, "query": query, "views": VIEW_LABELS}


@access.staff_required
def inbox(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    clinic = request.clinic
    groups = [f"clinic-{clinic.pk}"]
    ws_path = f"/ws/live/{clinic.pk}/"
    context: dict = {"section": "inbox"}
    if conversation_id is not None:
        found = access.get_object_for_clinic(Conversation.objects, request, pk=conversation_id)
        groups.append(f"conversation-{found.pk}")
        ws_path += f"conversation/{found.pk}/"
    context["live_seq"] = _live_seq(groups)  # before any read: see the module docstring
    context["ws_path"] = ws_path
    context.update(_inbox_context(request))
    if conversation_id is None:
        context["stats"] = selectors.clinic_stats(clinic)
    else:
        conversation = selectors.inbox_row(conversation_id)
        context.update(console_live.conversation_context(conversation))
        context["stream"] = selectors.stream(conversation)
        context["active_id"] = conversation.pk
    return render(request, "console/inbox.html", context)


@require_GET
@access.staff_required
def inbox_rows(request: HttpRequest) -> HttpResponse:
    """Filters, search and "load more": just the rows."""
    return render(request, "console/_inbox_rows.html", _inbox_context(request))


@require_GET
@access.staff_required
def stats(request: HttpRequest) -> HttpResponse:
    group = f"clinic-{request.clinic.pk}"
    context = {
        "section": "stats",
        "live_seq": _live_seq([group]),
        "ws_path": f"/ws/live/{request.clinic.pk}/",
    }
    context["stats"] = selectors.clinic_stats(request.clinic)
    return render(request, "console/stats.html", context)


# --- actions ----------------------------------------------------------------------------------


def _conversation_or_404(request: HttpRequest, conversation_id: int) -> Conversation:
    return access.get_object_for_clinic(Conversation.objects, request, pk=conversation_id)


def _after_action(request: HttpRequest, conversation_id: int, error: str = "") -> HttpResponse:
    """htmx: the conversation's fresh fragments (and the error, if any); else back to the page."""
    if not request.htmx:
        if error:
            messages.error(request, error)
        return redirect("console:conversation", conversation_id)
    row = selectors.inbox_row(conversation_id)
    html = console_live.render_conversation_update(row) + console_live.render_row(row)
    html += format_html(
        '<div id="compose-error" class="compose-error" role="alert" hx-swap-oob="true">{}</div>',
        error,
    )
    return HttpResponse(html)


def _action(fn):
    """POST only, staff of the current clinic, the conversation inside it; ConsoleError → the
    reason in Spanish next to the reply box."""

    def view(request: HttpRequest, conversation_id: int) -> HttpResponse:
        conversation = _conversation_or_404(request, conversation_id)
        try:
            fn(request, conversation)
        except services.ConsoleError as exc:
            return _after_action(request, conversation.pk, str(ERRORS.get(exc.code, exc.code)))
        except clinic_services.BookingError as exc:
            logger.info("console booking refused: %s", exc.code)
            return _after_action(request, conversation.pk, _booking_error(exc))
        return _after_action(request, conversation.pk)

    view.__name__ = fn.__name__
    view.__doc__ = fn.__doc__
    return require_POST(access.staff_required(view))


def _booking_error(exc: clinic_services.BookingError) -> str:
    if isinstance(exc, clinic_services.SlotTaken | clinic_services.SlotUnavailable):
        return _("That time was just taken. Choose another one.")
    if isinstance(exc, clinic_services.PatientOverlap):
        return _("The patient already has an appointment at that time.")
    if isinstance(exc, clinic_services.NotCancellable):
        return _("This appointment can no longer be changed.")
    return _("The booking could not be completed.")


@_action
def take_over(request: HttpRequest, conversation: Conversation) -> None:
    services.conversation_take_over(
        clinic=request.clinic, conversation_id=conversation.pk, user=request.user
    )


@_action
def hand_back(request: HttpRequest, conversation: Conversation) -> None:
    services.conversation_hand_back(
        clinic=request.clinic,
        conversation_id=conversation.pk,
        user=request.user,
        message=request.POST.get("message", ""),
    )


@_action
def reply(request: HttpRequest, conversation: Conversation) -> None:
    services.conversation_reply(
        clinic=request.clinic,
        conversation_id=conversation.pk,
        user=request.user,
        text=request.POST.get("text", ""),
    )


@_action
def send_template(request: HttpRequest, conversation: Conversation) -> None:
    template_id = request.POST.get("template", "")
    if not template_id.isdigit():
        raise services.ConsoleError("no_template")
    services.conversation_send_template(
        clinic=request.clinic,
        conversation_id=conversation.pk,
        user=request.user,
        template_id=int(template_id),
        values=request.POST.getlist("values"),
    )


@_action
def note(request: HttpRequest, conversation: Conversation) -> None:
    services.conversation_add_note(
        clinic=request.clinic,
        conversation_id=conversation.pk,
        user=request.user,
        text=request.POST.get("text", ""),
    )


@_action
def close(request: HttpRequest, conversation: Conversation) -> None:
    services.conversation_close(
        clinic=request.clinic, conversation_id=conversation.pk, user=request.user
    )


# --- quick actions: book, cancel, reschedule (clinics.services, audited as the staff user) -----


@require_GET
@access.staff_required
def slots(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """The slot picker: one keyset page of bookable times (optionally one specialty)."""
    conversation = _conversation_or_404(request, conversation_id)
    specialty = None
    specialty_id = request.GET.get("specialty", "")
    if specialty_id.isdigit():
        specialty = request.clinic.specialties.filter(pk=int(specialty_id)).first()
    reschedule = request.GET.get("reschedule", "")
    try:
        page = clinic_selectors.available_slots(
            clinic=request.clinic,
            specialty=specialty,
            cursor=request.GET.get("cursor") or None,
            page_size=8,
        )
    except clinic_services.InvalidInput:
        page = clinic_selectors.available_slots(
            clinic=request.clinic, specialty=specialty, page_size=8
        )
    context = {
        "conversation": conversation,
        "page": page,
        "specialties": list(request.clinic.specialties.all()),
        "specialty": specialty,
        "reschedule": reschedule if reschedule.isdigit() else "",
    }
    return render(request, "console/_slot_picker.html", context)


@_action
def book(request: HttpRequest, conversation: Conversation) -> None:
    if conversation.patient_id is None:
        raise services.ConsoleError("not_found")
    slot_id = request.POST.get("slot", "")
    specialty_id = request.POST.get("specialty", "")
    specialty = (
        request.clinic.specialties.filter(pk=int(specialty_id)).first()
        if specialty_id.isdigit()
        else None
    )
    reschedule = request.POST.get("reschedule", "")
    actor = clinic_services.Actor.staff(request.user)
    if reschedule.isdigit():
        clinic_services.appointment_reschedule(
            clinic=request.clinic,
            appointment_id=int(reschedule),
            new_slot_id=slot_id,
            actor=actor,
            patient=conversation.patient,
        )
    else:
        clinic_services.appointment_book(
            clinic=request.clinic,
            patient=conversation.patient,
            slot_id=slot_id,
            actor=actor,
            source=AppointmentSource.STAFF,
            specialty=specialty,
        )
    console_live.conversation_changed(conversation.pk)


@_action
def cancel(request: HttpRequest, conversation: Conversation) -> None:
    if conversation.patient_id is None:
        raise services.ConsoleError("not_found")
    clinic_services.appointment_cancel(
        clinic=request.clinic,
        appointment_id=request.POST.get("appointment", ""),
        actor=clinic_services.Actor.staff(request.user),
        reason=_("Cancelled by the clinic from the console"),
        patient=conversation.patient,
    )
    console_live.conversation_changed(conversation.pk)


# --- clinic switch ------------------------------------------------------------------------------


@require_POST
@login_required
def switch_clinic(request: HttpRequest) -> HttpResponse:
    """The header's clinic switcher: another of the user's clinics becomes the current one."""
    if access.choose_clinic(request, request.POST.get("clinic")) is None:
        raise Http404("not one of this user's clinics")
    target = request.POST.get("next") or ""
    if "/conversaciones/" in target or not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = "console:home"  # a conversation of the previous clinic would be a 404
    return redirect(target)
