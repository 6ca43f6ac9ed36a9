"""Who may see which clinic: the one home of the console's access rules.

A staff user belongs to clinics through StaffMembership (receptionist or clinic admin); a
superuser sees every clinic. The console works on one clinic at a time, the *current clinic*,
chosen in the header and kept in the session. Everything outside the current clinic answers
404, never 403, so another clinic's ids reveal nothing.

Views:

    @staff_required                      # any role in the current clinic (login first)
    def inbox(request): request.clinic, request.membership ...

    @clinic_admin_required               # the clinic admin role (or superuser)
    def settings_page(request): ...

    conversation = get_object_for_clinic(Conversation.objects, request, pk=pk)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest

from clinics import selectors
from clinics.models import Clinic, StaffMembership

SESSION_KEY = "sophia_clinic_id"


def staff_clinics(user: Any) -> QuerySet[Clinic]:
    """The clinics this user works for (all of them for a superuser), by name."""
    return selectors.staff_clinics(user).order_by("name")


def clinic_for_user(user: Any, clinic_id: Any) -> Clinic | None:
    """The clinic with this id if the user works for it (the websocket consumers' check)."""
    try:
        clinic_id = int(clinic_id)
    except (TypeError, ValueError):
        return None
    return staff_clinics(user).filter(pk=clinic_id).first()


def current_clinic(request: HttpRequest) -> Clinic | None:
    """The clinic the user chose in the header, else their first one; None for non-staff."""
    if hasattr(request, "_sophia_clinic"):
        return request._sophia_clinic
    clinics = staff_clinics(request.user)
    chosen = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    clinic = clinics.filter(pk=chosen).first() if chosen else None
    if clinic is None:
        clinic = clinics.first()
        if clinic is not None and hasattr(request, "session"):
            request.session[SESSION_KEY] = clinic.pk
    request._sophia_clinic = clinic
    return clinic


def choose_clinic(request: HttpRequest, clinic_id: Any) -> Clinic | None:
    """Make this clinic the current one if the user works for it; None (unchanged) otherwise."""
    clinic = clinic_for_user(request.user, clinic_id)
    if clinic is not None:
        request.session[SESSION_KEY] = clinic.pk
        request._sophia_clinic = clinic
        if hasattr(request, "_sophia_membership"):
            del request._sophia_membership
    return clinic


def membership_for(request: HttpRequest) -> StaffMembership | None:
    """The user's membership in the current clinic.

    A superuser without a membership gets an unsaved admin membership, so role checks read
    the same for everyone.
    """
    if hasattr(request, "_sophia_membership"):
        return request._sophia_membership
    clinic = current_clinic(request)
    membership = None
    if clinic is not None:
        membership = (
            StaffMembership.objects.filter(user=request.user, clinic=clinic)
            .select_related("clinic")
            .first()
        )
        if membership is None and request.user.is_superuser:
            membership = StaffMembership(
                user=request.user, clinic=clinic, role=StaffMembership.Role.ADMIN
            )
    request._sophia_membership = membership
    return membership


def is_clinic_admin(membership: StaffMembership | None) -> bool:
    return membership is not None and membership.role == StaffMembership.Role.ADMIN


def _require(check: Callable[[StaffMembership | None], bool]) -> Callable:
    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any):
            membership = membership_for(request)
            if not check(membership):
                raise Http404("no such page in this clinic")
            request.clinic = membership.clinic
            request.membership = membership
            return view(request, *args, **kwargs)

        return login_required(wrapper)

    return decorator


staff_required = _require(lambda membership: membership is not None)
staff_required.__doc__ = "Login, then any role in the current clinic; 404 otherwise."

clinic_admin_required = _require(is_clinic_admin)
clinic_admin_required.__doc__ = "Login, then the clinic admin role in the current clinic; 404."


def get_object_for_clinic[M: Model](
    queryset: QuerySet[M] | type[M], request: HttpRequest, clinic_field: str = "clinic", **lookup
) -> M:
    """The object matching `lookup` inside the current clinic; 404 outside it or when absent.

    `clinic_field` is the path to the clinic for models that reach it through another row
    (e.g. "doctor__clinic" for a Schedule).
    """
    clinic = current_clinic(request)
    if clinic is None:
        raise Http404("no clinic")
    if isinstance(queryset, type):
        queryset = queryset._default_manager.all()
    try:
        return queryset.get(**{clinic_field: clinic}, **lookup)
    except (queryset.model.DoesNotExist, ValueError, TypeError) as exc:
        raise Http404("no such object in this clinic") from exc


def console_context(request: HttpRequest) -> dict[str, Any]:
    """The header's clinic switcher data, computed only when a template reads it."""
    return {
        "console_clinic": lambda: current_clinic(request),
        "console_clinics": lambda: list(staff_clinics(request.user)),
        "console_membership": lambda: membership_for(request),
    }
